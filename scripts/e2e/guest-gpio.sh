#!/bin/sh
# /init of the guest for the GPIO end-to-end test (runs under busybox sh, with
# the helpers of guest-lib.sh, which initramfs.sh adds as /lib/muser/guest-lib.sh).
#
# Finds the PCI device served over vfio-user (an ACCES PCI-IDIO-16: vendor
# 0x494f, device 0x0dc8), reports what the guest sees of it, loads Linux's
# in-tree gpio-pci-idio-16 driver, and drives two GPIO lines through sysfs:
# input IIN0 (BAR2 offset 1, bit 0) and output OUT0 (BAR2 offset 0, bit 0).
# Every result is one console line starting with "MUSER-CHECK ":
#   pci <BDF> vendor=.. device=.. class=.. subsystem=..:.. revision=..
#   config size=<bytes> command=.. status=.. header=..
#   bar <n> start=.. size=.. flags=.. type=io|mem32|mem64[-pref]|unused   (n = 0..5, rom)
#   irq pin=.. line=.. irq=<linux irq>
#   cap <offset> id=..        then   caps <id@offset ...|none>
#   ecap <offset> id=.. ver=..   then   ecaps <id@offset ...|none>   (PCIe config only)
#   insmod <module> ok
#   driver <name|none>
#   gpiochip <name> base=.. ngpio=.. label=..
#   iin0-line <sysfs name> direction=<in|out|fixed>
#   iin0 <12 values read with one read(2) each>
#   out0-line <sysfs name> direction=<in|out|fixed>
#   out0 <value read back after writing 1> <after writing 0>
#   done
# A failure prints "MUSER-CHECK fail <what>" and powers off; so does the
# watchdog after muser.timeout seconds (default 60). The guest always powers off.
#
# Kernel command line options:
#   muser.timeout=SECONDS   watchdog (default 60)
#   muser.gpio_replug=1     before done: MUSER-CHECK unplug-me, wait for the card
#                           to go (unplugged), MUSER-CHECK plug-me, wait for it to
#                           come back, and read IIN0 through the driver again:
#                           MUSER-CHECK replug-iin0 <6 values>
#   muser.gpio_pause=SECONDS after each of the 12 reads of IIN0, MUSER-CHECK
#                           iin0-read <n> <value> (n = 1..12) and a pause of this
#                           long, in which the host may restart the device
#   muser.gpio_id=VVVV:DDDD use another vendor:device, and bind pci-idio-16 to
#                           it through the driver's new_id (to try this script
#                           on an emulated device whose BAR2 is plain memory)

if [ ! -r /lib/muser/guest-lib.sh ]; then
  echo "MUSER-CHECK fail no /lib/muser/guest-lib.sh (build the initramfs with initramfs.sh)"
  poweroff -f
fi
# shellcheck source=scripts/e2e/guest-lib.sh
. /lib/muser/guest-lib.sh
log_pattern='idio|gpio|pci 0000|vfio'

guest_start
gpio_id=$(cmdline_get muser.gpio_id 494f:0dc8 | tr 'A-F' 'a-f')
want_vendor=0x${gpio_id%%:*}
want_device=0x${gpio_id#*:}

# ------------------------------------------------------------- the device --
find_pci_device "$want_vendor" "$want_device"
report_pci_device
[ "${bar2_start:-0}" -ne 0 ] || fail "BAR2 is not assigned (start 0)"

# ----------------------------------------------------------------- driver --
while read -r module; do
  insmod "/lib/modules/$module" || fail "insmod $module"
  check "insmod ${module%%.ko*} ok"
done </lib/modules/gpio-pci-idio-16.order
if [ "$gpio_id" != 494f:0dc8 ]; then
  echo "${gpio_id%%:*} ${gpio_id#*:}" >/sys/bus/pci/drivers/pci-idio-16/new_id ||
    fail "adding $gpio_id to pci-idio-16's new_id"
fi
wait_for 20 -e "$dev/driver" || true
driver=none
[ -e "$dev/driver" ] && driver=$(basename "$(readlink "$dev/driver")")
check "driver $driver"
[ "$driver" = pci-idio-16 ] || fail "pci-idio-16 did not bind to $bdf"

# Sets $chip and $base: the gpiochip the driver made for $bdf.
find_chip() {
  chip=
  tries=50
  while [ -z "$chip" ] && [ "$tries" -gt 0 ]; do
    for dir in /sys/class/gpio/gpiochip*; do
      if [ -r "$dir/label" ] && [ "$(cat "$dir/label")" = "$bdf" ]; then
        chip=$dir
        break
      fi
    done
    [ -n "$chip" ] && break
    sleep 0.1
    tries=$((tries - 1))
  done
  [ -n "$chip" ] || fail "no gpiochip labelled $bdf in /sys/class/gpio ($(cd /sys/class/gpio && echo *))"
  base=$(cat "$chip/base")
}
find_chip
check "gpiochip ${chip##*/} base=$base ngpio=$(cat "$chip/ngpio") label=$(cat "$chip/label")"

# Exports line <offset> named <name>; sets $line to its sysfs folder.
export_line() {
  echo $((base + $1)) >/sys/class/gpio/export || fail "export of $2 (gpio $((base + $1)))"
  line=/sys/class/gpio/$2
  # Lines without a name would show up as gpio<N>.
  wait_for 20 -e "$line/value" || line=/sys/class/gpio/gpio$((base + $1))
  wait_for 20 -e "$line/value" || fail "no sysfs folder for $2 after export ($(cd /sys/class/gpio && echo *))"
}

# A line's direction; sysfs has no direction file for lines that cannot change
# direction, as on this card (OUT0-15 are outputs, IIN0-15 inputs).
direction() {
  if [ -r "$1/direction" ]; then
    cat "$1/direction"
  else
    echo fixed
  fi
}

# One read(2) of a line's value, so one device access.
read_value() {
  dd if="$1/value" bs=64 count=1 2>/dev/null | tr -d ' \n'
}

# ------------------------------------------------------------- input IIN0 --
export_line 16 IIN0
check "iin0-line ${line##*/} direction=$(direction "$line")"
pause=$(cmdline_get muser.gpio_pause 0)
values=
i=0
while [ "$i" -lt 12 ]; do
  value=$(read_value "$line")
  [ -n "$value" ] || value=error
  values="$values $value"
  i=$((i + 1))
  if [ "$pause" != 0 ]; then
    check "iin0-read $i $value"
    sleep "$pause"
  fi
done
check "iin0$values"
case $values in *error*) fail "reading IIN0" ;; esac
echo $((base + 16)) >/sys/class/gpio/unexport || fail "unexport of IIN0"

# ------------------------------------------------------------ output OUT0 --
export_line 0 OUT0
check "out0-line ${line##*/} direction=$(direction "$line")"
echo 1 >"$line/value" || fail "writing 1 to OUT0"
after_1=$(read_value "$line")
echo 0 >"$line/value" || fail "writing 0 to OUT0"
after_0=$(read_value "$line")
check "out0 ${after_1:-error} ${after_0:-error}"
echo "$base" >/sys/class/gpio/unexport || fail "unexport of OUT0"

if [ "$(cmdline_get muser.gpio_replug 0)" = 1 ]; then
  check "unplug-me"
  wait_for 300 ! -e "$dev" || fail "$bdf is still there 30 s after asking for its unplug"
  check "unplugged"
  check "plug-me"
  wait_for 300 -e "$dev/driver" || fail "no driver bound to $bdf 30 s after asking for its replug"
  find_chip
  export_line 16 IIN0
  values=
  i=0
  while [ "$i" -lt 6 ]; do
    values="$values $(read_value "$line")"
    i=$((i + 1))
  done
  check "replug-iin0$values"
fi

check "done"
finish
