#!/bin/sh
# /init of the guest for the NVMe end-to-end test (runs under busybox sh, with
# the helpers of guest-lib.sh, which initramfs.sh adds as /lib/muser/guest-lib.sh).
#
# Finds the NVMe controller served over vfio-user (samples/nvme: vendor 0x1de5,
# device 0x4e56, class 010802), reports what the guest sees of it, loads
# Linux's in-tree nvme driver (nvme-auth, nvme-core, nvme), and does block I/O
# on /dev/nvme0n1 with O_DIRECT, so that every byte goes through the device:
#
#   read-host   1 MiB at 8 MiB, which the host wrote into the backing file
#               before boot, must equal /pattern-a.bin
#   write       /pattern-b.bin (1 MiB) at 16 MiB in 1 MiB writes (the driver
#               splits them at the device's 256 KiB limit: PRP lists), and at
#               32 MiB in 4 KiB writes; both read back and compared
#   discard     /pattern-b.bin at 40 MiB, then blkdiscard of its first 512 KiB
#               (Dataset Management, deallocate): reads back as zeros, the
#               second half unchanged
# then syncs and powers off; the kernel's shutdown of the nvme driver sets
# CC.SHN, which makes the device fsync its file. The host then checks the
# backing file. Console lines (besides those of guest-lib.sh's report):
#   MUSER-CHECK insmod <module> ok
#   MUSER-CHECK driver <name|none>
#   MUSER-CHECK disk <name> size=<bytes> logical-block=<bytes> model=.. serial=.. firmware=..
#   MUSER-CHECK irqs <count> <names>      the nvme interrupts in /proc/interrupts, with their type
#   MUSER-CHECK read-host ok|differs
#   MUSER-CHECK write-1m ok|differs
#   MUSER-CHECK write-4k ok|differs
#   MUSER-CHECK discard ok|differs
#   MUSER-CHECK parallel-read ok|failed   4 MiB read by four readers at once, 4 KiB a request
#   MUSER-CHECK interrupts <count>        the nvme interrupts taken, from /proc/interrupts
#   MUSER-CHECK done
# A failure prints "MUSER-CHECK fail <what>" and powers off; so does the
# watchdog after muser.timeout seconds (default 60). The guest always powers off.
#
# Kernel command line options:
#   muser.timeout=SECONDS   watchdog (default 60)
#   muser.nvme_wait=SECONDS wait this long for the controller to appear (hot-add):
#                           prints "MUSER-CHECK waiting-for-device" first
#   muser.nvme_mode=MODE    after the writes, one of:
#                 reset     unbind the driver, reset the function through sysfs
#                           (MUSER-CHECK reset-method <methods>, reset ok), bind
#                           it again and check the I/O again (reset-io ok|differs)
#                 loop      MUSER-CHECK looping, then I/O until the host kills QEMU
#                 reboot    on the first boot write a marker at 60 MiB and reboot;
#                           on the second (marker found: MUSER-CHECK rebooted) go on
#                 verify    MUSER-CHECK verifying, then rounds until the host says
#                           stop: round n writes pattern A (n odd) or B (n even)
#                           at 48 + n % 4 MiB with O_DIRECT and reads it back
#                           (MUSER-CHECK verify-fail <n> <what> for each failure),
#                           then reads the host's word in the block at 60 MiB:
#                           "MUSER-RESET-<k>" (new k) resets the controller through
#                           sysfs and reports MUSER-CHECK firmware <k> <revision>,
#                           "MUSER-STOP" ends the rounds: MUSER-CHECK verify
#                           rounds=<n> failures=<count>, and MUSER-CHECK
#                           kernel-errors <count> (timeouts, resets, I/O errors)
#   muser.nvme_id=VVVV:DDDD the controller to look for (default 1de5:4e56), e.g.
#                           1b36:0010 to try this script on QEMU's own -device nvme

if [ ! -r /lib/muser/guest-lib.sh ]; then
  echo "MUSER-CHECK fail no /lib/muser/guest-lib.sh (build the initramfs with initramfs.sh)"
  poweroff -f
fi
# shellcheck source=scripts/e2e/guest-lib.sh
. /lib/muser/guest-lib.sh
log_pattern='nvme|pci 0000|vfio'

guest_start
id=$(cmdline_get muser.nvme_id 1de5:4e56 | tr 'A-F' 'a-f')
mode=$(cmdline_get muser.nvme_mode none)
MIB=1048576

wait_s=$(cmdline_get muser.nvme_wait 0)
if [ "$wait_s" -gt 0 ]; then
  check "waiting-for-device"
  tries=$((wait_s * 10))
  while [ "$tries" -gt 0 ] && ! grep -l -q "0x${id%%:*}" /sys/bus/pci/devices/*/vendor 2>/dev/null; do
    sleep 0.1
    tries=$((tries - 1))
  done
fi

# ------------------------------------------------------------- the device --
find_pci_device "0x${id%%:*}" "0x${id#*:}"
report_pci_device
[ "${bar0_start:-0}" -ne 0 ] || fail "BAR0 is not assigned (start 0)"
for f in /pattern-a.bin /pattern-b.bin; do
  [ "$(wc -c <"$f")" -eq "$MIB" ] || fail "$f is not 1 MiB (build the initramfs with the patterns)"
done

# ----------------------------------------------------------------- driver --
while read -r module; do
  insmod "/lib/modules/$module" || fail "insmod $module"
  check "insmod ${module%%.ko*} ok"
done </lib/modules/nvme.order
# Sets $driver once the nvme driver bound, and $disk, $ctrl and $blk once its namespace is up.
nvme_up() {
  wait_for 100 -e "$dev/driver" || true
  driver=none
  [ -e "$dev/driver" ] && driver=$(basename "$(readlink "$dev/driver")")
  [ "$driver" = nvme ] || fail "nvme did not bind to $bdf"
  # The namespace shows up once the controller is up and scanned (slow under TCG).
  disk=
  tries=300
  while [ -z "$disk" ] && [ "$tries" -gt 0 ]; do
    for d in "$dev"/nvme/nvme*/nvme*n1 /sys/block/nvme*n1; do
      [ -e "$d/size" ] && disk=${d##*/}
    done
    [ -n "$disk" ] && break
    sleep 0.1
    tries=$((tries - 1))
  done
  [ -n "$disk" ] || fail "no nvme namespace in /sys/block ($(cd /sys/block && echo *))"
  ctrl=
  for c in "$dev"/nvme/nvme*; do
    [ -d "$c" ] && ctrl=$c && break
  done
  [ -n "$ctrl" ] || fail "no nvme controller under $dev/nvme"
  blk=/dev/$disk
  wait_for 50 -b "$blk" || fail "no $blk"
}
nvme_up
check "driver $driver"
size=$(($(cat "/sys/block/$disk/size") * 512))
trim() {
  sed 's/^ *//; s/ *$//' "$1" | tr ' ' '_'
}
check "disk $disk size=$size logical-block=$(cat "/sys/block/$disk/queue/logical_block_size")" \
  "model=$(trim "$ctrl/model") serial=$(trim "$ctrl/serial") firmware=$(trim "$ctrl/firmware_rev")"

# Which interrupts the driver got: "nvme0q0" (admin) and one per I/O queue.
irqs=$(grep -E 'nvme[0-9]+q[0-9]+' /proc/interrupts | awk '{ printf "%s:%s ", $NF, $(NF-2) }')
check "irqs $(grep -c -E 'nvme[0-9]+q[0-9]+' /proc/interrupts) ${irqs% }"

# ------------------------------------------------------------------- I/O --
# Compares $2 bytes of $1 read with O_DIRECT at byte $3 with file $4 at byte $5.
same() {
  dd if="$1" of=/tmp/readback bs=65536 skip=$(($3 / 65536)) count=$(($2 / 65536)) iflag=direct 2>/tmp/dd.err ||
    fail "reading $1 at $3: $(tail -n 1 /tmp/dd.err)"
  dd if="$4" of=/tmp/expected bs=65536 skip=$(($5 / 65536)) count=$(($2 / 65536)) 2>/dev/null
  cmp -s /tmp/readback /tmp/expected
}
# Sets $line to ok when the command succeeds, else differs.
result() {
  if "$@"; then line=ok; else line=differs; fi
}

result same "$blk" "$MIB" $((8 * MIB)) /pattern-a.bin 0
check "read-host $line"
[ "$line" = ok ] || fail "the guest read something else than the host wrote at 8 MiB"

if [ "$mode" = loop ]; then
  check "looping"
  while :; do
    dd if=/pattern-b.bin of="$blk" bs=65536 seek=$((48 * 16)) oflag=direct 2>/dev/null
    dd if="$blk" of=/dev/null bs=65536 skip=$((8 * 16)) count=16 iflag=direct 2>/dev/null
  done
fi
if [ "$mode" = verify ]; then
  check "verifying"
  round=0 failures=0 seen=
  while :; do
    round=$((round + 1))
    pattern=/pattern-b.bin
    [ $((round % 2)) -eq 1 ] && pattern=/pattern-a.bin
    at=$((48 + round % 4))
    if ! dd if=$pattern of="$blk" bs=65536 seek=$((at * 16)) oflag=direct 2>/tmp/dd.err; then
      check "verify-fail $round write at $at MiB: $(tail -n 1 /tmp/dd.err)"
      failures=$((failures + 1))
    elif ! same "$blk" "$MIB" $((at * MIB)) $pattern 0; then
      check "verify-fail $round differs at $at MiB"
      failures=$((failures + 1))
    fi
    dd if="$blk" of=/tmp/word bs=512 skip=$((60 * 2048)) count=1 iflag=direct 2>/dev/null || fail "reading the host's word at 60 MiB"
    word=$(head -c 32 /tmp/word | tr -d '\000')
    case $word in
      MUSER-STOP) break ;;
      MUSER-RESET-*)
        if [ "$word" != "$seen" ]; then
          seen=$word
          echo 1 >"$ctrl/reset_controller" || fail "resetting the controller through $ctrl/reset_controller"
          tries=100
          while [ "$(cat "$ctrl/state")" != live ] && [ "$tries" -gt 0 ]; do
            sleep 0.1
            tries=$((tries - 1))
          done
          [ "$(cat "$ctrl/state")" = live ] || fail "the controller is $(cat "$ctrl/state") 10 s after its reset"
          check "firmware ${word#MUSER-RESET-} $(trim "$ctrl/firmware_rev")"
        fi
        ;;
    esac
  done
  check "verify rounds=$round failures=$failures"
  errors=$(dmesg | grep -i -E 'nvme.*(timeout|reset controller|controller is down|abort|error)|I/O error' || true)
  check "kernel-errors $(printf '%s' "$errors" | grep -c .)"
  printf '%s\n' "$errors" | grep . | sed 's/^/MUSER-LOG /'
fi
if [ "$mode" = reboot ]; then
  dd if="$blk" of=/tmp/marker bs=512 skip=$((60 * 2048)) count=1 iflag=direct 2>/dev/null
  if [ "$(head -c 14 /tmp/marker)" = MUSER-REBOOTED ]; then
    check "rebooted"
  else
    printf 'MUSER-REBOOTED' | dd of=/tmp/marker conv=notrunc 2>/dev/null
    dd if=/tmp/marker of="$blk" bs=512 seek=$((60 * 2048)) count=1 oflag=direct 2>/dev/null || fail "writing the reboot marker"
    sync
    check "rebooting"
    reboot -f
  fi
fi

dd if=/pattern-b.bin of="$blk" bs=$MIB seek=16 oflag=direct 2>/tmp/dd.err || fail "1 MiB write at 16 MiB: $(tail -n 1 /tmp/dd.err)"
result same "$blk" "$MIB" $((16 * MIB)) /pattern-b.bin 0
check "write-1m $line"

dd if=/pattern-b.bin of="$blk" bs=4096 seek=$((32 * 256)) oflag=direct 2>/tmp/dd.err || fail "4 KiB writes at 32 MiB: $(tail -n 1 /tmp/dd.err)"
result same "$blk" "$MIB" $((32 * MIB)) /pattern-b.bin 0
check "write-4k $line"

dd if=/pattern-b.bin of="$blk" bs=$MIB seek=40 oflag=direct 2>/tmp/dd.err || fail "1 MiB write at 40 MiB: $(tail -n 1 /tmp/dd.err)"
blkdiscard -o $((40 * MIB)) -l $((MIB / 2)) "$blk" || fail "blkdiscard at 40 MiB"
dd if=/dev/zero of=/tmp/zeros bs=65536 count=8 2>/dev/null
discarded() {
  same "$blk" $((MIB / 2)) $((40 * MIB)) /tmp/zeros 0 && same "$blk" $((MIB / 2)) $((40 * MIB + MIB / 2)) /pattern-b.bin $((MIB / 2))
}
result discarded
check "discard $line"

if [ "$mode" = reset ]; then
  check "reset-method $(cat "$dev/reset_method" 2>/dev/null || echo none)"
  echo "$bdf" >/sys/bus/pci/drivers/nvme/unbind || fail "unbinding nvme from $bdf"
  if echo 1 >"$dev/reset" 2>/tmp/reset.err; then
    check "reset ok"
  else
    fail "echo 1 > $dev/reset: $(cat /tmp/reset.err)"
  fi
  echo "$bdf" >/sys/bus/pci/drivers/nvme/bind || fail "binding nvme to $bdf again"
  nvme_up
  dd if=/pattern-a.bin of="$blk" bs=$MIB seek=24 oflag=direct 2>/tmp/dd.err || fail "1 MiB write at 24 MiB after the reset: $(tail -n 1 /tmp/dd.err)"
  result same "$blk" "$MIB" $((24 * MIB)) /pattern-a.bin 0
  check "reset-io $line"
fi

# Four readers at once, 4 KiB a request: completions come while the interrupt is up.
pids=
for i in 0 1 2 3; do
  dd if="$blk" of=/dev/null bs=4096 skip=$(((16 + i) * 256)) count=256 iflag=direct 2>/dev/null &
  pids="$pids $!"
done
line=ok
for pid in $pids; do
  wait "$pid" || line=failed
done
check "parallel-read $line"

sync
check "interrupts $(awk '/nvme[0-9]+q[0-9]+/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i } END { print n + 0 }' /proc/interrupts)"
check "done"
finish
