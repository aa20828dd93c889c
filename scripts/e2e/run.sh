#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The real-VM end-to-end test (npm run test:e2e): provisions QEMU and a guest
# kernel (cached in ~/.cache/muser), then runs the host side, the node:test
# files dist/test/e2e/*.test.js (test/e2e/: gpio, config, nvme, two), which
# build initramfses with initramfs.sh, start muser servers, boot guests with
# boot.sh and check what the guests print (guest-*.sh) and what the servers
# do. A failing guest's console, server output, QEMU messages and vfio-user
# trace are printed and its work folder kept.
#
# It needs what npm install makes (dist/ and the native addon) and does not
# build: run npm run build after changing TypeScript sources. When the host
# cannot run the test at all (not x86_64 Linux; no apt-get/dpkg-deb to fill an
# empty cache) it says so loudly and exits 0, except in CI (CI=true), where that
# is a failure: in CI it never skips.
#
# Usage: scripts/e2e/run.sh [--keep] [--only gpio|config|nvme|two] [-- node --test options]
#   --keep    keep every guest's work folder (logs, initramfses), not only failed ones
#   --only T  run one file of guests (npm run demo -- --vm runs gpio)
#   -- ...    passed to node --test, e.g. -- --test-name-pattern=unshared
# Environment:
#   MUSER_CACHE          cache folder of provision.sh (default: ~/.cache/muser)
#   MUSER_E2E_TIMEOUT    seconds one boot may take before QEMU is killed (default 300)
#   MUSER_E2E_JOBS       guest files run at once (default 1: a guest has the cores it finds)
#   CI                   "true" in CI: never skip
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/../.." && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
  sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

files=(gpio config nvme two)
only=()
node_args=()
while (($#)); do
  case $1 in
    --keep) export MUSER_E2E_KEEP=1 ;;
    --only)
      [[ " ${files[*]} " == *" ${2:-} "* ]] || die "--only takes one of: ${files[*]}" "usage: $0 [--keep] [--only ${files[*]// /|}]"
      only+=("$2")
      shift
      ;;
    --) shift; node_args=("$@"); break ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1" "usage: $0 [--keep] [--only ${files[*]// /|}] [-- node --test options]" ;;
  esac
  shift
done
((${#only[@]})) && files=("${only[@]}")

boot_timeout=${MUSER_E2E_TIMEOUT:-300}
[[ $boot_timeout =~ ^[0-9]+$ && $boot_timeout -ge 30 ]] || die "MUSER_E2E_TIMEOUT must be a number of seconds, at least 30"
jobs=${MUSER_E2E_JOBS:-1}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "MUSER_E2E_JOBS must be a positive number"

in_ci=0
case ${CI:-} in
  '' | false | 0) ;;
  *) in_ci=1 ;;
esac

# The host cannot run the test: a failure in CI, a loud skip elsewhere.
cannot_run() {
  if ((in_ci)); then
    printf 'FAIL e2e: %s (CI=%s: the real-VM test never skips in CI)\n' "$1" "$CI"
    exit 1
  fi
  local banner='**********************************************************************'
  printf '%s\nSKIPPED: the real-VM end-to-end test did NOT run: %s\n%s\n' "$banner" "$1" "$banner"
  printf '==> SKIPPED: the real-VM end-to-end test did NOT run: %s\n' "$1" >&2
  exit 0
}

# ------------------------------------------------------------- preflight --
cli=$root/dist/src/cli/main.js

if [[ ! -f $cli ]]; then
  printf 'FAIL e2e: %s is missing: run npm install first (it builds dist/ and the native addon)\n' "${cli#"$root"/}"
  exit 1
fi
if [[ ! -f $root/build/Release/muser.node ]]; then
  printf 'FAIL e2e: the native addon build/Release/muser.node is missing: run npm install first\n'
  exit 1
fi
for t in "${files[@]}"; do
  file=$root/dist/test/e2e/$t.test.js
  if [[ ! -f $file ]]; then
    printf 'FAIL e2e: %s is missing: run npm run build (dist/ is older than the e2e sources)\n' "${file#"$root"/}"
    exit 1
  fi
done
# TypeScript sources changed since the last build: the test would run the old code.
stale=()
while IFS= read -r -d '' ts; do
  rel=${ts#"$root"/}
  js=$root/dist/${rel%.ts}.js
  [[ $ts -nt $js ]] && stale+=("$rel")
done < <(find "$root/src" "$root/samples" "$root/test" -name '*.ts' ! -name '*.d.ts' -print0)
if ((${#stale[@]})); then
  printf 'warning: %d TypeScript file(s) changed after the last build (e.g. %s); this test runs dist/: run npm run build to test them\n' \
    "${#stale[@]}" "${stale[0]}"
fi

[[ $(uname -s) == Linux ]] || cannot_run "it needs a Linux host (this is $(uname -s))"
[[ $(uname -m) == x86_64 ]] || cannot_run "it needs an x86_64 host (this is $(uname -m))"
if ! muser_cache_complete; then
  for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null ||
      cannot_run "the cache $MUSER_CACHE is empty and this host has no $tool to fill it (provision.sh needs a Debian-based host)"
  done
fi
command -v node >/dev/null || die "node is not on PATH"

start=$SECONDS
printf '==> muser real-VM e2e: cache %s%s\n' "$MUSER_CACHE" "$( ((in_ci)) && echo ', CI')"
if ! "$here/provision.sh"; then
  printf 'FAIL e2e: provisioning %s failed (see its messages above)\n' "$MUSER_CACHE"
  exit 1
fi
printf '==> cache: %s; kernel %s; provisioned in %d s\n' "$(muser_stamp_get qemu_reports)" "$(muser_stamp_get kernel_release)" $((SECONDS - start))

tests=()
for t in "${files[@]}"; do tests+=("$root/dist/test/e2e/$t.test.js"); done
export MUSER_E2E_TIMEOUT=$boot_timeout
status=0
node --test --test-concurrency="$jobs" "${node_args[@]}" "${tests[@]}" || status=$?
printf '==> real-VM e2e: %s in %d s\n' "$( ((status)) && echo FAILED || echo passed)" $((SECONDS - start))
exit "$status"
