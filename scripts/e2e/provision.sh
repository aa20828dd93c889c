#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Provisions what the real-VM end-to-end tests need, outside the repository:
#
#   - QEMU with a vfio-user client (qemu-system-x86 from Debian trixie-backports),
#     unpacked with its libraries into $MUSER_CACHE/qemu and started through the
#     unpacked glibc loader by the wrapper $MUSER_CACHE/bin/qemu-system-x86_64;
#   - a guest kernel (the current dependency of trixie's linux-image-amd64),
#     the modules the tests load (gpio-pci-idio-16, nvme and their dependencies)
#     and a static busybox for the initramfs.
#
# Nothing is installed on the host: a private apt state (own sources.list, lists,
# cache and an empty dpkg status) downloads the packages and dpkg-deb unpacks them.
# The host needs apt-get, dpkg-deb, tar, gzip, find and flock (all on a stock
# Debian) plus Debian's archive keyring with the trixie keys (bookworm's has them).
#
# Idempotent: a complete cache is reused at once. Everything is built in a
# temporary folder inside the cache and moved into place at the end; the stamp
# file, written last, is what marks the cache complete.
#
# Usage: scripts/e2e/provision.sh [--force]
#   --force   provision again even if the cache is complete
# Environment:
#   MUSER_CACHE          cache folder (default: ~/.cache/muser)
#   MUSER_DEBIAN_MIRROR  Debian mirror (default: the one the host's own apt uses)
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
  sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

force=0
while (($#)); do
  case $1 in
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1" "usage: $0 [--force]" ;;
  esac
  shift
done

# The Debian archive the host's apt already uses: the first source URI ending in /debian.
host_mirror() {
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{ for (i = 2; i <= NF; i++) print $i }'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { print $i; break } }'
  } | grep -m 1 -E '/debian/?$' || true
}

MIRROR=${MUSER_DEBIAN_MIRROR:-$(host_mirror)}
[[ -n $MIRROR ]] || die "no Debian archive found in the host's apt sources (/etc/apt)" "set MUSER_DEBIAN_MIRROR to a Debian mirror URL"
MIRROR=${MIRROR%/}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
GUEST_SUITE=trixie
QEMU_SUITE=trixie-backports
QEMU_PACKAGE=qemu-system-x86
# The vfio-user client (device vfio-user-pci) first shipped in QEMU 10.1.
QEMU_MIN_VERSION=1:10.1
KERNEL_META="linux-image-amd64"
BUSYBOX_PACKAGE="busybox-static"
# Modules the tests insmod; their dependencies are added in load order.
TARGET_MODULES=(gpio-pci-idio-16 nvme)

report_cache() {
  log "qemu:   $(muser_stamp_get qemu_package) $(muser_stamp_get qemu_version)"
  log "kernel: $(muser_stamp_get kernel_package) $(muser_stamp_get kernel_version) (release $(muser_stamp_get kernel_release))"
  log "wrapper: $MUSER_CACHE/bin/qemu-system-x86_64"
}

if ((!force)) && muser_cache_complete; then
  log "reusing the complete cache in $MUSER_CACHE (use --force to provision again)"
  report_cache
  exit 0
fi

# ---------------------------------------------------------------- preflight --
for tool in apt-get dpkg-deb tar gzip find flock; do
  command -v "$tool" >/dev/null ||
    die "the host has no '$tool'" "this script needs a Debian-based host (apt-get, dpkg-deb, util-linux)"
done
[[ -f $KEYRING ]] ||
  die "Debian's archive keyring ($KEYRING) is missing" "install it: apt-get install debian-archive-keyring"
[[ -f /usr/share/keyrings/debian-archive-trixie-stable.gpg ]] ||
  die "the archive keyring has no trixie keys, so trixie's package lists cannot be verified" \
    "update it: apt-get update && apt-get install debian-archive-keyring"
[[ $(uname -m) == x86_64 ]] || die "this provisioning is for x86_64 hosts (found $(uname -m))"

mkdir -p "$MUSER_CACHE" || die "cannot create the cache folder $MUSER_CACHE" "set MUSER_CACHE to a writable folder"

# One provisioning at a time per cache; a second run waits, then finds the cache complete.
exec 9>"$MUSER_CACHE/.lock"
if ! flock -n 9; then
  log "another provisioning holds $MUSER_CACHE/.lock; waiting for it (at most 10 minutes)"
  flock -w 600 9 || die "timed out waiting for the lock $MUSER_CACHE/.lock" \
    "if no other provision.sh is running, remove that file and run again"
fi
if ((!force)) && muser_cache_complete; then
  log "another run completed the cache in $MUSER_CACHE meanwhile; reusing it"
  report_cache
  exit 0
fi

# Leftovers of runs that were killed before their cleanup could run.
rm -rf "$MUSER_CACHE"/.work.*
work=$(mktemp -d "$MUSER_CACHE/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'log "interrupted; the cache is left as it was before this run"; exit 130' INT TERM
steplog=$work/step.log

# Runs a command with its output in $steplog; on failure shows the output's tail.
run_step() {
  local what=$1 hint=$2
  shift 2
  if ! "$@" >"$steplog" 2>&1; then
    tail -n 25 "$steplog" >&2 || true
    die "$what failed (command: $1 ... ${*: -1})" "$hint"
  fi
}

log "provisioning $MUSER_CACHE (mirror $MIRROR)"

# --------------------------------------------------------- private apt state --
aptdir=$work/apt
mkdir -p "$aptdir/sources.list.d" "$aptdir/preferences.d" "$aptdir/state/lists/partial" \
  "$aptdir/cache/archives/partial"
: >"$aptdir/status"
: >"$aptdir/preferences"
cat >"$aptdir/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR $GUEST_SUITE main
deb [signed-by=$KEYRING] $MIRROR $QEMU_SUITE main
EOF
APT_OPTS=(
  -o "Dir::Etc::SourceList=$aptdir/sources.list"
  -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
  -o "Dir::Etc::Preferences=$aptdir/preferences"
  -o "Dir::Etc::PreferencesParts=$aptdir/preferences.d"
  -o "Dir::State=$aptdir/state"
  -o "Dir::State::status=$aptdir/status"
  -o "Dir::Cache=$aptdir/cache"
  -o "APT::Architecture=amd64"
  -o "APT::Architectures=amd64"
  -o "Acquire::Languages=none"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=true"
  -o "APT::Get::Assume-Yes=true"
  -q
)

log "fetching the $GUEST_SUITE and $QEMU_SUITE package lists (private apt state)"
run_step "downloading the package lists from $MIRROR" \
  "check that $MIRROR is reachable (or set MUSER_DEBIAN_MIRROR) and run again" \
  apt-get "${APT_OPTS[@]}" -o APT::Update::Error-Mode=any update

# Prints "name=version" for every package apt would install for the given
# request with an empty dpkg status, i.e. the package and all its dependencies.
resolve_closure() {
  local release=$1
  shift
  apt-get "${APT_OPTS[@]}" -s -t "$release" install --no-install-recommends "$@" |
    awk '$1 == "Inst" { v = $3; gsub(/[()]/, "", v); print $2 "=" v }'
}

candidate_version() {
  apt-cache "${APT_OPTS[@]}" -o "APT::Default-Release=$2" policy "$1" |
    awk '$1 == "Candidate:" { print $2 }'
}

log "resolving $QEMU_PACKAGE from $QEMU_SUITE with its dependencies"
qemu_list=$work/qemu-packages.txt
resolve_closure "$QEMU_SUITE" "$QEMU_PACKAGE" >"$qemu_list" 2>"$steplog" || {
  tail -n 25 "$steplog" >&2
  die "apt could not resolve $QEMU_PACKAGE from $QEMU_SUITE" \
    "the archive may be mid-update; run again later, or check $MIRROR"
}
qemu_version=$(sed -n "s/^$QEMU_PACKAGE=//p" "$qemu_list")
[[ -n $qemu_version ]] || die "apt did not select $QEMU_PACKAGE from $QEMU_SUITE" "see $qemu_list"
dpkg --compare-versions "$qemu_version" ge "$QEMU_MIN_VERSION" ||
  die "$QEMU_PACKAGE $qemu_version in $QEMU_SUITE is older than $QEMU_MIN_VERSION and has no vfio-user client" \
    "a newer QEMU is needed; update QEMU_SUITE in $0"
log "qemu: $QEMU_PACKAGE $qemu_version ($(wc -l <"$qemu_list") packages with its dependencies)"

kernel_meta_version=$(candidate_version "$KERNEL_META" "$GUEST_SUITE")
[[ -n $kernel_meta_version && $kernel_meta_version != "(none)" ]] ||
  die "$KERNEL_META is not in $GUEST_SUITE's package list" "check $MIRROR"
kernel_package=$(apt-cache "${APT_OPTS[@]}" show "$KERNEL_META=$kernel_meta_version" |
  sed -n 's/^Depends: *//p' | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n 1)
[[ -n $kernel_package ]] || die "cannot find which kernel $KERNEL_META $kernel_meta_version depends on"
kernel_version=$(candidate_version "$kernel_package" "$GUEST_SUITE")
busybox_version=$(candidate_version "$BUSYBOX_PACKAGE" "$GUEST_SUITE")
[[ -n $kernel_version && $kernel_version != "(none)" ]] || die "no candidate for $kernel_package"
[[ -n $busybox_version && $busybox_version != "(none)" ]] || die "no candidate for $BUSYBOX_PACKAGE"
log "kernel: $kernel_package $kernel_version (via $KERNEL_META $kernel_meta_version); busybox: $busybox_version"

# ------------------------------------------------------------------ download --
debs=$work/debs
mkdir -p "$debs/qemu" "$debs/guest"
log "downloading $(wc -l <"$qemu_list") QEMU packages"
mapfile -t qemu_pkgs <"$qemu_list"
(cd "$debs/qemu" && run_step "downloading the QEMU packages" "check the network and run again" \
  apt-get "${APT_OPTS[@]}" download "${qemu_pkgs[@]}")
log "downloading $kernel_package and $BUSYBOX_PACKAGE"
(cd "$debs/guest" && run_step "downloading the guest kernel and busybox" "check the network and run again" \
  apt-get "${APT_OPTS[@]}" download "$kernel_package=$kernel_version" "$BUSYBOX_PACKAGE=$busybox_version")
log "downloaded $(du -sh "$debs" | cut -f1)"

# ---------------------------------------------------------------------- QEMU --
new=$work/new
mkdir -p "$new/qemu" "$new/bin" "$new/guest/modules"
log "unpacking the QEMU packages"
for deb in "$debs"/qemu/*.deb; do
  run_step "unpacking ${deb##*/}" "the download may be damaged; run again" dpkg-deb -x "$deb" "$new/qemu"
done
rm -rf "$new/qemu/usr/share/doc" "$new/qemu/usr/share/man" "$new/qemu/usr/share/locale" \
  "$new/qemu/usr/share/lintian"

# Paths relative to the unpacked root, baked into the wrapper.
loader=
for candidate in usr/lib64/ld-linux-x86-64.so.2 lib64/ld-linux-x86-64.so.2 \
  usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
  if [[ -e $new/qemu/$candidate ]]; then
    loader=$candidate
    break
  fi
done
[[ -n $loader ]] || die "the unpacked libc6 has no ld-linux-x86-64.so.2" "see $qemu_list; the package layout changed"
libdirs=()
for candidate in usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu; do
  [[ -d $new/qemu/$candidate ]] && libdirs+=("$candidate")
done
firmware=()
for candidate in usr/share/qemu usr/share/seabios usr/lib/ipxe/qemu usr/share/ipxe; do
  [[ -d $new/qemu/$candidate ]] && firmware+=("$candidate")
done
for blob in bios-256k.bin kvmvapic.bin linuxboot_dma.bin; do
  found=0
  for dir in "${firmware[@]}"; do
    [[ -e $new/qemu/$dir/$blob ]] && found=1
  done
  ((found)) || die "no $blob in the unpacked firmware folders (${firmware[*]})" "the package layout changed; fix the firmware list in $0"
done

wrapper=$new/bin/qemu-system-x86_64
# The $ signs below are meant for the wrapper, not expanded here.
# shellcheck disable=SC2016
{
  printf '#!/usr/bin/env bash\n'
  printf '# Written by scripts/e2e/provision.sh: runs the QEMU unpacked in ../qemu through\n'
  printf '# its own glibc loader and libraries, with its firmware folders on the -L path.\n'
  printf 'set -euo pipefail\n'
  printf 'root=$(cd -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/../qemu" && pwd)\n'
  printf 'libs=%s\n' "$(printf '$root/%s:' "${libdirs[@]}" | sed 's/:$//')"
  printf 'export QEMU_MODULE_DIR="$root/usr/lib/x86_64-linux-gnu/qemu"\n'
  printf 'exec "$root/%s" --argv0 qemu-system-x86_64 --library-path "$libs" \\\n' "$loader"
  printf '  "$root/usr/bin/qemu-system-x86_64"'
  for dir in "${firmware[@]}"; do
    printf ' -L "$root/%s"' "$dir"
  done
  printf ' "$@"\n'
} >"$wrapper"
chmod 755 "$wrapper"

log "checking the unpacked QEMU"
run_step "running the unpacked QEMU" "a library may be missing from the dependency list; see the output above" \
  "$wrapper" --version
qemu_reports=$(head -n 1 "$steplog")
run_step "asking QEMU for the vfio-user-pci device" "this QEMU build has no vfio-user client" \
  "$wrapper" -device vfio-user-pci,help
grep -q 'socket=' "$steplog" || die "QEMU's vfio-user-pci has no socket property" "see: $wrapper -device vfio-user-pci,help"
log "$qemu_reports; vfio-user-pci present"

# --------------------------------------------------------------------- guest --
log "unpacking busybox"
bbroot=$work/busybox
busybox_deb=("$debs/guest/${BUSYBOX_PACKAGE}_"*.deb)
kernel_deb=("$debs/guest/${kernel_package}_"*.deb)
[[ -f ${busybox_deb[0]} && -f ${kernel_deb[0]} ]] || die "apt-get download left no $BUSYBOX_PACKAGE or $kernel_package .deb" "run again"
run_step "unpacking $BUSYBOX_PACKAGE" "the download may be damaged; run again" \
  dpkg-deb -x "${busybox_deb[0]}" "$bbroot"
busybox=$new/guest/busybox
cp "$bbroot/usr/bin/busybox" "$busybox"
chmod 755 "$busybox"
run_step "running the static busybox on the host" "the busybox-static package changed layout" "$busybox" true

log "unpacking the kernel and its modules"
kroot=$work/kernel
mkdir -p "$kroot"
unpack_kernel() {
  dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards './boot/vmlinuz-*' './usr/lib/modules/*'
}
run_step "unpacking $kernel_package" "the download may be damaged; run again" \
  unpack_kernel "${kernel_deb[0]}" "$kroot"
vmlinuz=$(find "$kroot/boot" -name 'vmlinuz-*' | head -n 1)
[[ -n $vmlinuz ]] || die "$kernel_package has no /boot/vmlinuz-*" "the package layout changed"
kernel_release=${vmlinuz##*/vmlinuz-}
moddir=$kroot/usr/lib/modules/$kernel_release
[[ -d $moddir/kernel ]] || die "$kernel_package has no modules for $kernel_release" "the package layout changed"
cp "$vmlinuz" "$new/guest/vmlinuz"

# Module name (dashes as underscores) -> file, for every module of the kernel.
declare -A module_file=()
while IFS= read -r -d '' file; do
  name=${file##*/}
  name=${name%%.ko*}
  module_file[${name//-/_}]=$file
done < <(find "$moddir/kernel" -name '*.ko*' -print0)
declare -A builtin=()
if [[ -f $moddir/modules.builtin ]]; then
  while IFS= read -r line; do
    name=${line##*/}
    name=${name%%.ko*}
    builtin[${name//-/_}]=1
  done <"$moddir/modules.builtin"
fi

# The "depends=" entry of a module's .modinfo section, as a space-separated list.
module_depends() {
  local file=$1 info
  case $file in
    *.ko.xz) info=$("$busybox" xzcat "$file" | tr '\0' '\n' | sed -n 's/^depends=//p') ;;
    *.ko) info=$(tr '\0' '\n' <"$file" | sed -n 's/^depends=//p') ;;
    *) die "unsupported module compression: ${file##*/}" "teach module_depends in $0 about it" ;;
  esac
  info=${info%%$'\n'*}
  printf '%s\n' "${info//,/ }"
}

# Appends the module and then its dependencies' chains, dependencies first, to $chain.
declare -A in_chain=()
chain=()
add_with_deps() {
  local name=${1//-/_} dep
  [[ -z ${in_chain[$name]:-} ]] || return 0
  in_chain[$name]=1
  if [[ -n ${builtin[$name]:-} ]]; then
    return 0
  fi
  [[ -n ${module_file[$name]:-} ]] || die "module $name (needed for the tests) is not in $kernel_package" \
    "pick another kernel or drop it from TARGET_MODULES in $0"
  for dep in $(module_depends "${module_file[$name]}"); do
    add_with_deps "$dep"
  done
  chain+=("$name")
}

order_all=()
declare -A in_all=()
module_summary=()
for target in "${TARGET_MODULES[@]}"; do
  key=${target//-/_}
  if [[ -n ${builtin[$key]:-} ]]; then
    module_summary+=("$target:builtin")
    : >"$new/guest/modules/$target.order"
    log "module $target is built into the kernel"
    continue
  fi
  in_chain=()
  chain=()
  add_with_deps "$target"
  : >"$new/guest/modules/$target.order"
  for name in "${chain[@]}"; do
    file=${module_file[$name]}
    printf '%s\n' "${file##*/}" >>"$new/guest/modules/$target.order"
    if [[ -z ${in_all[$name]:-} ]]; then
      in_all[$name]=1
      order_all+=("${file##*/}")
      cp "$file" "$new/guest/modules/"
    fi
  done
  module_summary+=("$target:module")
  log "module $target loads as: $(tr '\n' ' ' <"$new/guest/modules/$target.order")"
done
printf '%s\n' "${order_all[@]}" >"$new/guest/modules/modules.order"
printf '%s\n' "$kernel_release" >"$new/guest/kernel-release"

# ------------------------------------------------------------------- install --
log "moving the new cache into place"
rm -f "$MUSER_CACHE/stamp"
for part in qemu bin guest; do
  if [[ -e $MUSER_CACHE/$part ]]; then
    mv "$MUSER_CACHE/$part" "$work/old-$part"
  fi
  mv "$new/$part" "$MUSER_CACHE/$part"
done
{
  printf 'format=%s\n' "$MUSER_STAMP_FORMAT"
  printf 'created=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  printf 'mirror=%s\n' "$MIRROR"
  printf 'qemu_suite=%s\n' "$QEMU_SUITE"
  printf 'qemu_package=%s\n' "$QEMU_PACKAGE"
  printf 'qemu_version=%s\n' "$qemu_version"
  printf 'qemu_reports=%s\n' "$qemu_reports"
  printf 'guest_suite=%s\n' "$GUEST_SUITE"
  printf 'kernel_meta_version=%s\n' "$kernel_meta_version"
  printf 'kernel_package=%s\n' "$kernel_package"
  printf 'kernel_version=%s\n' "$kernel_version"
  printf 'kernel_release=%s\n' "$kernel_release"
  printf 'busybox_version=%s\n' "$busybox_version"
  printf 'modules=%s\n' "${module_summary[*]}"
} >"$MUSER_CACHE/stamp.tmp"
mv "$MUSER_CACHE/stamp.tmp" "$MUSER_CACHE/stamp"
rm -rf "$work"

log "done: $(du -sh "$MUSER_CACHE" 2>/dev/null | cut -f1) in $MUSER_CACHE"
report_cache
