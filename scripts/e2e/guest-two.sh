#!/bin/sh
# /init of the guest for two vfio-user devices in one VM (runs under busybox
# sh, with the helpers of guest-lib.sh): the PCI-IDIO-16 GPIO card (494f:0dc8)
# and the NVMe controller (1de5:4e56), each bound to its Linux driver and used
# once. Console lines:
#   MUSER-CHECK gpio <BDF> driver=<name>
#   MUSER-CHECK gpio-iin0 <6 values read through the driver>
#   MUSER-CHECK nvme <BDF> driver=<name> disk=<name>
#   MUSER-CHECK nvme-read ok|differs      1 MiB at 8 MiB against /pattern-a.bin
#   MUSER-CHECK done
# A failure prints "MUSER-CHECK fail <what>" and powers off; so does the
# watchdog after muser.timeout seconds (default 60).

if [ ! -r /lib/muser/guest-lib.sh ]; then
  echo "MUSER-CHECK fail no /lib/muser/guest-lib.sh (build the initramfs with initramfs.sh)"
  poweroff -f
fi
# shellcheck source=scripts/e2e/guest-lib.sh
. /lib/muser/guest-lib.sh
log_pattern='idio|gpio|nvme|pci 0000|vfio'

guest_start

load() {
  while read -r module; do
    insmod "/lib/modules/$module" || fail "insmod $module"
  done <"/lib/modules/$1.order"
}

# ------------------------------------------------------------------- GPIO --
find_pci_device 0x494f 0x0dc8
gpio_dev=$dev
gpio_bdf=$bdf
load gpio-pci-idio-16
wait_for 50 -e "$gpio_dev/driver" || fail "pci-idio-16 did not bind to $gpio_bdf"
check "gpio $gpio_bdf driver=$(basename "$(readlink "$gpio_dev/driver")")"
chip=
for dir in /sys/class/gpio/gpiochip*; do
  [ "$(cat "$dir/label" 2>/dev/null)" = "$gpio_bdf" ] && chip=$dir
done
[ -n "$chip" ] || fail "no gpiochip labelled $gpio_bdf"
gpio=$(($(cat "$chip/base") + 16))
echo "$gpio" >/sys/class/gpio/export || fail "export of IIN0"
value=/sys/class/gpio/IIN0/value
[ -e "$value" ] || value=/sys/class/gpio/gpio$gpio/value
values=
i=0
while [ "$i" -lt 6 ]; do
  values="$values $(dd if="$value" bs=64 count=1 2>/dev/null | tr -d ' \n')"
  i=$((i + 1))
done
check "gpio-iin0$values"

# ------------------------------------------------------------------- NVMe --
find_pci_device 0x1de5 0x4e56
load nvme
wait_for 100 -e "$dev/driver" || fail "nvme did not bind to $bdf"
disk=
tries=300
while [ -z "$disk" ] && [ "$tries" -gt 0 ]; do
  for d in /sys/block/nvme*n1; do
    [ -e "$d/size" ] && disk=${d##*/}
  done
  sleep 0.1
  tries=$((tries - 1))
done
[ -n "$disk" ] || fail "no nvme namespace"
wait_for 50 -b "/dev/$disk" || fail "no /dev/$disk"
check "nvme $bdf driver=$(basename "$(readlink "$dev/driver")") disk=$disk"
dd if="/dev/$disk" of=/tmp/readback bs=65536 skip=128 count=16 iflag=direct 2>/dev/null || fail "reading /dev/$disk"
if cmp -s /tmp/readback /pattern-a.bin; then line=ok; else line=differs; fi
check "nvme-read $line"

check "done"
finish
