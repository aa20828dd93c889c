# shellcheck shell=sh
# Helpers shared by the guest /init scripts (guest-*.sh), run under busybox sh.
# initramfs.sh puts this file at /lib/muser/guest-lib.sh; an init sources it:
#   . /lib/muser/guest-lib.sh
#
# Every result is one console line starting with "MUSER-CHECK " (see check);
# raw data for the host to parse starts with "MUSER-CONFIG " or
# "MUSER-RESOURCE ". The guest always powers off: after "done", after a
# "fail ...", or when the watchdog fires (muser.timeout=SECONDS on the kernel
# command line, default 60).

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

# dmesg lines matching this (grep -E) are shown after a failure.
log_pattern='pci 0000|vfio'

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
    dmesg | grep -i -E "$log_pattern" | tail -n 20 | sed 's/^/MUSER-LOG /'
  fi
  finish
}

# Value of "name=value" on the kernel command line, or $2 if absent.
cmdline_get() {
  value=$2
  for word in $cmdline; do
    case $word in
      "$1"=*) value=${word#*=} ;;
    esac
  done
  echo "$value"
}

# Mounts /proc, /sys and /dev, quiets the console, reads the command line into
# $cmdline and starts the watchdog.
guest_start() {
  mount -t proc proc /proc || fail "mount /proc"
  mount -t sysfs sysfs /sys || fail "mount /sys"
  mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
  # Keep the console for warnings and errors, so that check lines stay whole.
  echo 4 >/proc/sys/kernel/printk
  read -r cmdline </proc/cmdline
  timeout=$(cmdline_get muser.timeout 60)
  # Watchdog: nothing may keep the guest up for longer than this.
  (
    sleep "$timeout"
    check "fail watchdog: no result after ${timeout}s"
    finish
  ) &
}

# Waits up to $1 tenths of a second for the test command "$2 $3 ..." to succeed.
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

# Finds the PCI device with vendor $1 and device $2 (0x-prefixed, lower case)
# and sets $bdf and $dev (its sysfs folder); fails if there is none.
find_pci_device() {
  bdf=
  # PCI enumeration is over before /init runs; the retries only cover a late hotplug.
  tries=10
  while [ "$tries" -gt 0 ]; do
    for dir in /sys/bus/pci/devices/*; do
      [ -r "$dir/vendor" ] || continue
      if [ "$(cat "$dir/vendor")" = "$1" ] && [ "$(cat "$dir/device")" = "$2" ]; then
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
    fail "no PCI device $1:$2 (found:$found)"
  fi
  dev=/sys/bus/pci/devices/$bdf
}

# Config space as Linux reads it, one hex byte a line, for cfg8/cfg16/cfg32.
load_config() {
  od -An -v -tx1 "$dev/config" | tr ' ' '\n' | sed '/^$/d' >/tmp/config.hex
  config_size=$(wc -l </tmp/config.hex)
  [ "$config_size" -ge 64 ] || fail "config space read gave $config_size bytes"
}
cfg8() {
  echo $((0x$(sed -n "$(($1 + 1))p" /tmp/config.hex)))
}
cfg16() {
  echo $(($(cfg8 "$1") | ($(cfg8 $(($1 + 1))) << 8)))
}
cfg32() {
  echo $(($(cfg16 "$1") | ($(cfg16 $(($1 + 2))) << 16)))
}

# Prints what the guest sees of $dev:
#   pci <BDF> vendor=.. device=.. class=.. subsystem=..:.. revision=..
#   config size=<bytes> command=.. status=.. header=..
#   bar <n> start=.. size=.. flags=.. type=io|mem32|mem64[-pref]|unused   (n = 0..5, rom)
#   irq pin=.. line=.. irq=<linux irq>
#   cap <offset> id=..        then   caps <id@offset ...|none>
#   ecap <offset> id=.. ver=..   then   ecaps <id@offset ...|none>   (PCIe config only)
# and sets bar0_start .. bar5_start, barrom_start (decimal).
report_pci_device() {
  check "pci $bdf vendor=$(cat "$dev/vendor") device=$(cat "$dev/device") class=$(cat "$dev/class")" \
    "subsystem=$(cat "$dev/subsystem_vendor"):$(cat "$dev/subsystem_device") revision=$(cat "$dev/revision")"

  load_config
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
    eval "bar${name}_start=\$start"
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
}

# Raw data for the host, read straight from sysfs (not from load_config's copy):
#   MUSER-CONFIG <offset> <16 hex bytes>       the whole config file, 16 bytes a line
#   MUSER-CONFIG-END <size in bytes>
#   MUSER-RESOURCE <n> <start> <end> <flags>   resource lines 0-5 (BARs) and 6 (ROM)
dump_config_space() {
  od -Ax -v -tx1 "$dev/config" >/tmp/config.od || fail "reading $dev/config"
  sed -n '/^[0-9a-f]* [0-9a-f]/s/^/MUSER-CONFIG /p' /tmp/config.od
  # od's last line is the offset after the last byte: the size read.
  echo "MUSER-CONFIG-END $((0x$(tail -n 1 /tmp/config.od)))"
  n=0
  while read -r start end flags; do
    [ "$n" -le 6 ] || break
    echo "MUSER-RESOURCE $n $start $end $flags"
    n=$((n + 1))
  done <"$dev/resource"
}
