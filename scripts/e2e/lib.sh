# shellcheck shell=bash
# Helpers shared by the scripts in scripts/e2e/. Sourced, never run directly.
#
# Cache layout (see provision.sh):
#   $MUSER_CACHE/qemu/                  extracted Debian packages (QEMU + libraries + firmware)
#   $MUSER_CACHE/bin/qemu-system-x86_64 wrapper running that QEMU through its own loader
#   $MUSER_CACHE/guest/vmlinuz          guest kernel
#   $MUSER_CACHE/guest/modules/         needed kernel modules (.ko.xz) and load-order lists
#   $MUSER_CACHE/guest/busybox          static busybox for the initramfs
#   $MUSER_CACHE/stamp                  key=value versions; written last, so it marks a complete cache

MUSER_CACHE=${MUSER_CACHE:-${HOME:-/root}/.cache/muser}
[[ $MUSER_CACHE == /* ]] || MUSER_CACHE=$PWD/$MUSER_CACHE
MUSER_STAMP_FORMAT=1

# Start of the calling script, in microseconds, for the elapsed-time prefix.
_muser_t0=${EPOCHREALTIME/./}

muser_elapsed() {
  local now=${EPOCHREALTIME/./}
  local us=$((now - _muser_t0))
  printf '%d.%01ds' $((us / 1000000)) $(((us % 1000000) / 100000))
}

# Progress message on stderr: "==> [  1.2s] text".
log() {
  printf '==> [%6s] %s\n' "$(muser_elapsed)" "$*" >&2
}

# Fatal error: what failed and what to do about it.
die() {
  printf '==> [%6s] ERROR: %s\n' "$(muser_elapsed)" "$1" >&2
  shift
  local line
  for line in "$@"; do
    printf '==>          %s\n' "$line" >&2
  done
  exit 1
}

# Reads one value from the stamp file; prints nothing if absent.
muser_stamp_get() {
  local key=$1 k v
  [[ -f $MUSER_CACHE/stamp ]] || return 0
  while IFS='=' read -r k v; do
    if [[ $k == "$key" ]]; then
      printf '%s\n' "$v"
      return 0
    fi
  done <"$MUSER_CACHE/stamp"
}

# True when the cache holds everything provision.sh produces.
muser_cache_complete() {
  [[ -f $MUSER_CACHE/stamp ]] || return 1
  [[ $(muser_stamp_get format) == "$MUSER_STAMP_FORMAT" ]] || return 1
  [[ -x $MUSER_CACHE/bin/qemu-system-x86_64 ]] || return 1
  [[ -f $MUSER_CACHE/qemu/usr/bin/qemu-system-x86_64 ]] || return 1
  [[ -f $MUSER_CACHE/guest/vmlinuz ]] || return 1
  [[ -x $MUSER_CACHE/guest/busybox ]] || return 1
  [[ -f $MUSER_CACHE/guest/modules/modules.order ]] || return 1
}

muser_require_cache() {
  muser_cache_complete || die "the e2e cache at $MUSER_CACHE is missing or incomplete" \
    "run scripts/e2e/provision.sh first (or set MUSER_CACHE to where it put the cache)"
}
