#!/bin/sh
# /init of the guest benchmark (bench/guest-nvme.ts; runs under busybox sh with
# scripts/e2e/guest-lib.sh). Two NVMe controllers: the muser sample (1de5:4e56)
# and QEMU's own -device nvme (1b36:0010). Loads Linux's nvme driver, finds
# both namespaces, then takes orders from the host on /dev/ttyS1 (a second
# serial port whose other end is the host's socket), one line each:
#
#   <case> muser|qemu   runs the case on that disk, answers "ok" or "fail <why>"
#   quit                powers off
#
# so that the host times each case and reads the CPU its processes used
# around it. The cases (dd with O_DIRECT, so every byte goes to the device):
#
#   read4k     16 MiB in 4 KiB reads from 0
#   read128k   64 MiB in 128 KiB reads from 0
#   write128k  64 MiB of zeros in 128 KiB writes from 64 MiB
#
# Console lines: MUSER-CHECK disks muser=<dev> qemu=<dev>, then ready; a
# failure before that is MUSER-CHECK fail <what>.

if [ ! -r /lib/muser/guest-lib.sh ]; then
  echo "MUSER-CHECK fail no /lib/muser/guest-lib.sh (build the initramfs with initramfs.sh)"
  poweroff -f
fi
# shellcheck source=scripts/e2e/guest-lib.sh
. /lib/muser/guest-lib.sh
log_pattern='nvme|pci 0000'

guest_start

while read -r module; do
  insmod "/lib/modules/$module" || fail "insmod $module"
done </lib/modules/nvme.order

# Prints /dev/<namespace> of the NVMe controller with vendor $1 and device $2 once it is up.
nvme_disk() {
  find_pci_device "$1" "$2"
  tries=600
  while [ "$tries" -gt 0 ]; do
    for d in "$dev"/nvme/nvme*/nvme*n1; do
      if [ -e "$d/size" ] && [ -b "/dev/${d##*/}" ]; then
        echo "/dev/${d##*/}"
        return 0
      fi
    done
    sleep 0.1
    tries=$((tries - 1))
  done
  return 1
}
muser=$(nvme_disk 0x1de5 0x4e56) || fail "no namespace of the muser controller"
qemu=$(nvme_disk 0x1b36 0x0010) || fail "no namespace of QEMU's controller"
check "disks muser=$muser qemu=$qemu"

[ -c /dev/ttyS1 ] || fail "no /dev/ttyS1 (the host's control port)"
stty -F /dev/ttyS1 raw -echo || fail "stty on /dev/ttyS1"
exec 3<>/dev/ttyS1
check "ready"
echo ready >&3

while read -r what disk <&3; do
  case $disk in
    muser) blk=$muser ;;
    qemu) blk=$qemu ;;
    *) blk= ;;
  esac
  case $what in
    quit) break ;;
    read4k) set -- if="$blk" of=/dev/null bs=4096 count=4096 iflag=direct ;;
    read128k) set -- if="$blk" of=/dev/null bs=131072 count=512 iflag=direct ;;
    write128k) set -- if=/dev/zero of="$blk" bs=131072 count=512 seek=512 oflag=direct ;;
    *)
      echo "fail unknown order: $what $disk" >&3
      continue
      ;;
  esac
  if [ -z "$blk" ]; then
    echo "fail unknown disk: $disk" >&3
  elif dd "$@" 2>/tmp/dd.err; then
    echo ok >&3
  else
    echo "fail dd $*: $(tail -n 1 /tmp/dd.err)" >&3
  fi
done
sync
check "done"
finish
