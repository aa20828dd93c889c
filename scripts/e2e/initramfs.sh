#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds a gzip-compressed newc initramfs for the e2e guest from the cache that
# provision.sh filled:
#   /init                  the given init script (mode 755)
#   /bin/busybox           static busybox, with a symlink for each of its applets
#   /lib/modules/          the cached .ko.xz modules, modules.order (all, in load
#                          order), <module>.order (one module's load chain) and
#                          kernel-release
#   /lib/muser/guest-lib.sh the helpers the guest-*.sh inits source
#   /dev/console, /dev/null device nodes (written directly into the archive, so
#                          no root or mknod is needed), /proc, /sys, /tmp, /run
#   extra files            each argument SRC or SRC:DEST; DEST (absolute, inside
#                          the initramfs) defaults to /SRC's base name; a folder
#                          is copied with its contents
#
# Usage: scripts/e2e/initramfs.sh <init-script> <out.cpio.gz> [extra files...]
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
  sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  usage
  exit 0
fi
(($# >= 2)) || die "expected at least 2 arguments, got $#" "usage: $0 <init-script> <out.cpio.gz> [extra files...]"
init_script=$1
out=$2
shift 2
[[ -f $init_script ]] || die "the init script $init_script does not exist"
muser_require_cache

busybox=$MUSER_CACHE/guest/busybox
stage=$(mktemp -d "${TMPDIR:-/tmp}/muser-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib/modules}
chmod 1777 "$stage/tmp"
cp "$busybox" "$stage/bin/busybox"
chmod 755 "$stage/bin/busybox"
# busybox --list-full prints each applet's path, e.g. "sbin/insmod".
while IFS= read -r applet; do
  [[ -n $applet && $applet != bin/busybox ]] || continue
  [[ -d $stage/${applet%/*} ]] || mkdir -p "$stage/${applet%/*}"
  ln -sf /bin/busybox "$stage/$applet"
done < <("$busybox" --list-full)

cp "$MUSER_CACHE"/guest/modules/* "$stage/lib/modules/"
cp "$MUSER_CACHE/guest/kernel-release" "$stage/lib/modules/kernel-release"
cp "$init_script" "$stage/init"
chmod 755 "$stage/init"
mkdir -p "$stage/lib/muser"
cp "$here/guest-lib.sh" "$stage/lib/muser/guest-lib.sh"

for extra in "$@"; do
  src=${extra%%:*}
  if [[ $extra == *:* ]]; then
    dest=${extra#*:}
  else
    dest=/${src##*/}
  fi
  [[ $dest == /* ]] || die "the destination of '$extra' must be an absolute path inside the initramfs"
  [[ -e $src ]] || die "extra file $src does not exist"
  mkdir -p "$stage$(dirname -- "$dest")"
  cp -a -- "$src" "$stage$dest"
done

# One newc entry with no data (a device node here), as the kernel's unpacker reads it.
newc_entry() {
  local name=$1 mode=$2 major=$3 minor=$4 ino=$5
  local namesize=$((${#name} + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$ino" "$mode" 0 0 1 0 0 0 0 "$major" "$minor" "$namesize" 0
  printf '%s\0' "$name"
  # The header (110 bytes) and the name are padded together to a multiple of 4.
  local pad=$(((4 - (110 + namesize) % 4) % 4))
  if ((pad)); then
    printf '%*s' "$pad" '' | tr ' ' '\0'
  fi
}

tmp_out=$out.tmp.$$
{
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null)
  # Character devices: 0020000 | 0600 = 0x2180, 0020000 | 0666 = 0x21b6.
  newc_entry dev/console $((0x2180)) 5 1 900001
  newc_entry dev/null $((0x21b6)) 1 3 900002
  newc_entry 'TRAILER!!!' 0 0 0 0
} | gzip -n -6 >"$tmp_out" || {
  rm -f "$tmp_out"
  die "building the archive $out failed"
}
mv -f "$tmp_out" "$out"
log "initramfs $out ($(du -k "$out" | cut -f1) KiB, init from $init_script)"
