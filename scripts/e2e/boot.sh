#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Boots the e2e guest (cached kernel + the given initramfs) in QEMU (q35, TCG,
# 512 MiB of shared memfd memory, which vfio-user servers map), with a
# vfio-user-pci device attached to a vfio-user server's UNIX socket.
#
# Usage: scripts/e2e/boot.sh --initrd FILE --console LOG [options] [-- QEMU ARGS...]
#   --socket PATH      vfio-user server socket; without it the guest gets no vfio-user device
#   --initrd FILE      initramfs (see initramfs.sh)
#   --console LOG      the guest's serial console is written here and to stdout
#   --trace LOG        log QEMU's vfio_user_* trace events to LOG
#   --timeout SECONDS  kill QEMU after this long (default 120)
#   --socket-wait SECONDS
#                      wait this long for the socket to appear (default 10)
#   --append TEXT      extra kernel command line (e.g. muser.timeout=30)
#   --memory MIB       guest memory in MiB (default 512)
#   --unshared         plain guest RAM, not shared with the server: its DMA goes
#                      by DMA_READ/DMA_WRITE messages
#   --reboot           let a guest reboot (QEMU resets the machine) instead of
#                      exiting; only power-off ends it
#   -- QEMU ARGS       further arguments for QEMU, e.g. -- -device pci-testdev
#
# Exit status: QEMU's (0 after the guest powers off), except:
#   124  QEMU did not exit before the timeout and was killed
#   125  the guest kernel panicked (QEMU exits 0 then, since panic=-1 and -no-reboot)
#   1    bad usage or setup (cache missing, socket never appeared, ...)
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
  sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

socket='' initrd='' console='' trace='' append=''
timeout=120 socket_wait=10 memory=512 unshared=0 reboot=0
extra=()
need_value() {
  (($# >= 2)) || die "option $1 needs a value" "run $0 --help"
}
while (($#)); do
  case $1 in
    --socket) need_value "$@"; socket=$2; shift ;;
    --initrd) need_value "$@"; initrd=$2; shift ;;
    --console) need_value "$@"; console=$2; shift ;;
    --trace) need_value "$@"; trace=$2; shift ;;
    --timeout) need_value "$@"; timeout=$2; shift ;;
    --socket-wait) need_value "$@"; socket_wait=$2; shift ;;
    --append) need_value "$@"; append=$2; shift ;;
    --memory) need_value "$@"; memory=$2; shift ;;
    --unshared) unshared=1 ;;
    --reboot) reboot=1 ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1" "run $0 --help" ;;
  esac
  shift
done

[[ -n $initrd ]] || die "--initrd is required" "build one with scripts/e2e/initramfs.sh"
[[ -n $console ]] || die "--console is required"
[[ -f $initrd ]] || die "the initramfs $initrd does not exist" "build it with scripts/e2e/initramfs.sh"
[[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || die "--timeout must be a positive number of seconds"
[[ $socket_wait =~ ^[0-9]+$ ]] || die "--socket-wait must be a number of seconds"
[[ $memory =~ ^[0-9]+$ && $memory -ge 64 ]] || die "--memory must be a number of MiB (at least 64)"
muser_require_cache

qemu=$MUSER_CACHE/bin/qemu-system-x86_64
args=(-accel tcg -m "${memory}M")
if ((unshared)); then
  args+=(-machine q35)
else
  args+=(-machine "q35,memory-backend=mem" -object "memory-backend-memfd,id=mem,size=${memory}M,share=on")
fi
args+=(
  -kernel "$MUSER_CACHE/guest/vmlinuz"
  -initrd "$initrd"
  -append "console=ttyS0 panic=-1${append:+ $append}"
  -nodefaults
  -display none
  -nic none
  -chardev "stdio,id=console,logfile=$console,signal=off"
  -serial chardev:console
)
((reboot)) || args+=(-no-reboot)

if [[ -n $socket ]]; then
  if [[ ! -S $socket ]]; then
    log "waiting up to ${socket_wait}s for the vfio-user socket $socket"
    deadline=$((SECONDS + socket_wait))
    while [[ ! -S $socket ]] && ((SECONDS < deadline)); do
      sleep 0.1
    done
    [[ -S $socket ]] || die "no UNIX socket at $socket after ${socket_wait}s" \
      "start the vfio-user server first (QEMU exits at once without its socket)"
  fi
  # JSON string escaping for the path: backslash and double quote.
  json_path=${socket//\\/\\\\}
  json_path=${json_path//\"/\\\"}
  args+=(-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"path\":\"$json_path\",\"type\":\"unix\"}}")
fi
if [[ -n $trace ]]; then
  args+=(-trace 'vfio_user_*' -D "$trace")
fi
args+=("${extra[@]}")

log "booting ${socket:+with vfio-user socket $socket }(console $console${trace:+, trace $trace}, timeout ${timeout}s)"
start=$SECONDS
status=0
# stdin is /dev/null: the console is output only, and QEMU must not touch the terminal.
timeout --kill-after=5 "$timeout" "$qemu" "${args[@]}" </dev/null || status=$?
elapsed=$((SECONDS - start))

if ((status == 124 || status == 137)); then
  log "QEMU was still running after ${timeout}s and was killed; the guest never powered off (see $console)"
  exit 124
fi
if ((status != 0)); then
  log "QEMU exited with status $status after ${elapsed}s (see $console${trace:+ and $trace})"
  exit "$status"
fi
if grep -q 'Kernel panic - not syncing' "$console" 2>/dev/null; then
  log "the guest kernel panicked after ${elapsed}s: $(grep -m1 'Kernel panic - not syncing' "$console")"
  exit 125
fi
log "the guest powered off after ${elapsed}s"
