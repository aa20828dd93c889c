#!/bin/sh
# /init of the guest for the GPIO end-to-end test (runs under busybox sh).
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
#   muser.gpio_id=VVVV:DDDD use another vendor:device, and bind pci-idio-16 to
#                           it through the driver's new_id (to try this script
#                           on an emulated device whose BAR2 is plain memory)

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

check() {
  echo "MUSER-CHECK $*"
}

finish() {
  poweroff -f
  sleep 2
  echo o >/proc/sysrq-trigger
  while :; do sleep 1; done
}

fail() {
  check "fail $*"
  if [ -e /proc/version ]; then
    dmesg | grep -i -E 'idio|gpio|pci 0000|vfio' | tail -n 20 | sed 's/^/MUSER-LOG /'
  fi
  finish
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
# Keep the console for warnings and errors, so that check lines stay whole.
echo 4 >/proc/sys/kernel/printk

timeout=60
gpio_id=494f:0dc8
read -r cmdline </proc/cmdline
for word in $cmdline; do
  case $word in
    muser.timeout=*) timeout=${word#*=} ;;
    muser.gpio_id=*) gpio_id=$(echo "${word#*=}" | tr 'A-F' 'a-f') ;;
  esac
done
want_vendor=0x${gpio_id%%:*}
want_device=0x${gpio_id#*:}

# Watchdog: nothing below may keep the guest up for longer than this.
(
  sleep "$timeout"
  check "fail watchdog: no result after ${timeout}s"
  finish
) &

# Waits up to $1 tenths of a second for the test command "$2 $3" to succeed.
wait_for() {
  tries=$1
  shift
  while [ "$tries" -gt 0 ]; do
    if test "$@"; then
      return 0
    fi
    sleep 0.1
    tries=$((tries - 1))
  done
  test "$@"
}

hex() {
  printf '0x%x' "$1"
}
hex2() {
  printf '0x%02x' "$1"
}
hex3() {
  printf '0x%03x' "$1"
}
hex4() {
  printf '0x%04x' "$1"
}

# ------------------------------------------------------------- the device --
# PCI enumeration is over before /init runs; the retries only cover a late hotplug.
bdf=
tries=10
while [ -z "$bdf" ] && [ "$tries" -gt 0 ]; do
  for dir in /sys/bus/pci/devices/*; do
    [ -r "$dir/vendor" ] || continue
    if [ "$(cat "$dir/vendor")" = "$want_vendor" ] && [ "$(cat "$dir/device")" = "$want_device" ]; then
      bdf=${dir##*/}
      break
    fi
  done
  [ -n "$bdf" ] && break
  sleep 0.1
  tries=$((tries - 1))
done
if [ -z "$bdf" ]; then
  found=
  for dir in /sys/bus/pci/devices/*; do
    found="$found ${dir##*/}=$(cat "$dir/vendor"):$(cat "$dir/device")"
  done
  fail "no PCI device $want_vendor:$want_device (found:$found)"
fi
dev=/sys/bus/pci/devices/$bdf

check "pci $bdf vendor=$(cat "$dev/vendor") device=$(cat "$dev/device") class=$(cat "$dev/class")" \
  "subsystem=$(cat "$dev/subsystem_vendor"):$(cat "$dev/subsystem_device") revision=$(cat "$dev/revision")"

# Config space, one hex byte a line, for cfg8/cfg16/cfg32.
od -An -v -tx1 "$dev/config" | tr ' ' '\n' | sed '/^$/d' >/tmp/config.hex
config_size=$(wc -l </tmp/config.hex)
[ "$config_size" -ge 64 ] || fail "config space read gave $config_size bytes"
cfg8() {
  echo $((0x$(sed -n "$(($1 + 1))p" /tmp/config.hex)))
}
cfg16() {
  echo $(($(cfg8 "$1") | ($(cfg8 $(($1 + 1))) << 8)))
}
cfg32() {
  echo $(($(cfg16 "$1") | ($(cfg16 $(($1 + 2))) << 16)))
}
status=$(cfg16 6)
check "config size=$config_size command=$(hex4 "$(cfg16 4)") status=$(hex4 "$status") header=$(hex2 "$(cfg8 14)")"

# BARs from the resource file: "start end flags" per line; lines 0-5 are the BARs, 6 the ROM.
n=0
while read -r start end flags; do
  [ "$n" -le 6 ] || break
  start=$((start))
  end=$((end))
  flags=$((flags))
  size=0
  if [ "$start" -ne 0 ] || [ "$end" -ne 0 ]; then
    size=$((end - start + 1))
  fi
  type=unused
  if [ $((flags & 0x100)) -ne 0 ]; then
    type=io
  elif [ $((flags & 0x200)) -ne 0 ]; then
    type=mem32
    [ $((flags & 0x100000)) -ne 0 ] && type=mem64
    [ $((flags & 0x2000)) -ne 0 ] && type=$type-pref
  fi
  name=$n
  [ "$n" -eq 6 ] && name=rom
  check "bar $name start=$(hex "$start") size=$(hex "$size") flags=$(hex "$flags") type=$type"
  [ "$n" -eq 2 ] && bar2_start=$start
  n=$((n + 1))
done <"$dev/resource"

check "irq pin=$(hex2 "$(cfg8 0x3d)") line=$(hex2 "$(cfg8 0x3c)") irq=$(cat "$dev/irq")"

# Capability list: status bit 4, first pointer at 0x34; each entry is id, next.
caps=
if [ $((status & 0x10)) -ne 0 ]; then
  ptr=$(($(cfg8 0x34) & 0xfc))
  guard=48
  while [ "$ptr" -ne 0 ] && [ "$guard" -gt 0 ]; do
    if [ "$ptr" -lt 64 ] || [ "$ptr" -gt 252 ]; then
      fail "capability pointer $(hex "$ptr") out of range"
    fi
    id=$(cfg8 "$ptr")
    check "cap $(hex2 "$ptr") id=$(hex2 "$id")"
    caps="$caps $(hex2 "$id")@$(hex2 "$ptr")"
    ptr=$(($(cfg8 $((ptr + 1))) & 0xfc))
    guard=$((guard - 1))
  done
  [ "$guard" -gt 0 ] || fail "capability list does not end"
fi
check "caps${caps:- none}"

# Extended capabilities (PCIe config space only): 32-bit headers from 0x100.
if [ "$config_size" -gt 256 ]; then
  ecaps=
  ptr=256
  guard=64
  while [ "$ptr" -ne 0 ] && [ "$guard" -gt 0 ]; do
    header=$(cfg32 "$ptr")
    if [ "$header" -eq 0 ] || [ "$header" -eq $((0xffffffff)) ]; then
      break
    fi
    id=$((header & 0xffff))
    check "ecap $(hex3 "$ptr") id=$(hex4 "$id") ver=$(((header >> 16) & 0xf))"
    ecaps="$ecaps $(hex4 "$id")@$(hex3 "$ptr")"
    ptr=$(((header >> 20) & 0xffc))
    guard=$((guard - 1))
  done
  check "ecaps${ecaps:- none}"
fi

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
values=
i=0
while [ "$i" -lt 12 ]; do
  value=$(read_value "$line")
  [ -n "$value" ] || value=error
  values="$values $value"
  i=$((i + 1))
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

check "done"
finish
