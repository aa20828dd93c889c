#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The real-VM end-to-end test (npm run test:e2e): provisions QEMU and a guest
# kernel (cached), builds the initramfses, then boots a Linux guest three times,
# each time against a freshly started muser server on a socket in a temporary
# folder:
#
#   gpio    the PCI-IDIO-16 sample (dist/samples/gpio-pci-idio-16/index.js),
#           driven by Linux's gpio-pci-idio-16 driver (guest-gpio.sh); then the
#           server must log the disconnect, be back to its descriptor count from
#           before QEMU connected, and still serve a new client.
#   config  test/fixtures/fidelity-device.ts; the guest prints its config space
#           (guest-config.sh) and host-check.js compares it with the declared one.
#   nvme    the NVMe sample (dist/samples/nvme/index.js) on a 64 MiB backing file
#           holding a host-written pattern; Linux's nvme driver binds, and the
#           guest (guest-nvme.sh) reads that pattern, writes another with
#           O_DIRECT in 1 MiB and 4 KiB requests, discards half a MiB, syncs and
#           powers off (the driver's shutdown makes the device fsync); then
#           the backing file must hold what the guest wrote, and the server
#           checks of gpio follow.
#
# Prints one "ok <what>" or "FAIL <what>: expected .. got .." line per check and
# the time of each phase. On a failure it prints the guest console, the
# server's stderr, QEMU's messages and the tail of QEMU's vfio-user trace, keeps
# the work folder, and exits 1.
#
# It needs what npm install makes (dist/ and the native addon) and does not
# build: run npm run build after changing TypeScript sources. When the host
# cannot run the test at all (not x86_64 Linux; no apt-get/dpkg-deb to fill an
# empty cache) it says so loudly and exits 0, except in CI (CI=true), where that
# is a failure: in CI it never skips.
#
# Usage: scripts/e2e/run.sh [--keep] [--only gpio|config|nvme]
#   --keep    keep the work folder (logs, initramfses) even when all checks pass
#   --only T  run one of the three guest tests (npm run demo -- --vm runs gpio)
# Environment:
#   MUSER_CACHE          cache folder of provision.sh (default: ~/.cache/muser)
#   MUSER_E2E_TIMEOUT    seconds one boot may take before QEMU is killed (default 300)
#   CI                   "true" in CI: never skip
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
root=$(cd -- "$here/../.." && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() {
  sed -n '3,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

keep=0
tests=(gpio config nvme)
while (($#)); do
  case $1 in
    --keep) keep=1 ;;
    --only)
      [[ ${2:-} == gpio || ${2:-} == config || ${2:-} == nvme ]] || die "--only takes gpio, config or nvme" "usage: $0 [--keep] [--only gpio|config|nvme]"
      tests=("$2")
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1" "usage: $0 [--keep] [--only gpio|config|nvme]" ;;
  esac
  shift
done

boot_timeout=${MUSER_E2E_TIMEOUT:-300}
[[ $boot_timeout =~ ^[0-9]+$ && $boot_timeout -ge 30 ]] || die "MUSER_E2E_TIMEOUT must be a number of seconds, at least 30"
# The guest's own watchdog fires first, so that a stuck guest still says where it was.
guest_timeout=$((boot_timeout - 20))

in_ci=0
case ${CI:-} in
  '' | false | 0) ;;
  *) in_ci=1 ;;
esac

# ------------------------------------------------------------------ output --
failures=0
test_failures=0
passes=0

ok() {
  printf 'ok %s\n' "$*"
  passes=$((passes + 1))
}

# FAIL line: what, expected, got.
failed() {
  printf 'FAIL %s: expected %s got %s\n' "$1" "$2" "${3:-(nothing)}"
  failures=$((failures + 1))
  test_failures=$((test_failures + 1))
}

# One comparison of strings; after an ok comes the evidence (a console line,
# say), by default what was found.
expect() {
  local what=$1 expected=$2 got=$3 evidence=${4:-$3}
  if [[ $expected == "$got" ]]; then
    ok "$what: $evidence"
  else
    failed "$what" "$expected" "$got"
  fi
}

# Times in milliseconds.
now_ms() {
  local t=${EPOCHREALTIME/./}
  printf '%d\n' $((t / 1000))
}
seconds() {
  printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100))
}
run_start=$(now_ms)
phase_names=()
phase_times=()
phase_start=0
phase_begin() {
  phase_start=$(now_ms)
  printf '\n=== %s\n' "$1"
}
phase_end() {
  local ms=$(($(now_ms) - phase_start))
  phase_names+=("$1")
  phase_times+=("$ms")
  printf 'time %s %s\n' "$1" "$(seconds "$ms")"
}

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
gpio_module=$root/dist/samples/gpio-pci-idio-16/index.js
fidelity_module=$root/dist/test/fixtures/fidelity-device.js
nvme_module=$root/dist/samples/nvme/index.js
host_check_js=$root/dist/scripts/e2e/host-check.js

if [[ ! -f $cli ]]; then
  printf 'FAIL e2e: %s is missing: run npm install first (it builds dist/ and the native addon)\n' "${cli#"$root"/}"
  exit 1
fi
if [[ ! -f $root/build/Release/muser.node ]]; then
  printf 'FAIL e2e: the native addon build/Release/muser.node is missing: run npm install first\n'
  exit 1
fi
for file in "$gpio_module" "$fidelity_module" "$nvme_module" "$host_check_js"; do
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
done < <(find "$root/src" "$root/samples" "$root/test/fixtures" "$root/scripts/e2e" -name '*.ts' ! -name '*.d.ts' -print0)
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

work=$(mktemp -d "${TMPDIR:-/tmp}/muser-e2e.XXXXXX")
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'printf "interrupted; the work folder %s is kept\n" "$work"; exit 130' INT TERM

printf 'muser real-VM e2e: work folder %s, cache %s%s\n' "$work" "$MUSER_CACHE" "$( ((in_ci)) && echo ', CI')"

# --------------------------------------------------------------- provision --
phase_begin provision
if ! "$here/provision.sh"; then
  failed "provisioning" "a complete cache in $MUSER_CACHE" "provision.sh failing (see its messages above)"
  exit 1
fi
ok "cache $MUSER_CACHE: $(muser_stamp_get qemu_reports); kernel $(muser_stamp_get kernel_release)"
phase_end provision

# --------------------------------------------------------------- initramfs --
phase_begin initramfs
for t in "${tests[@]}"; do
  extra=()
  if [[ $t == nvme ]]; then
    # Two 1 MiB patterns: A goes into the backing file before boot, for the
    # guest to read; B is what the guest writes.
    head -c 1048576 /dev/urandom >"$work/pattern-a.bin"
    head -c 1048576 /dev/urandom >"$work/pattern-b.bin"
    extra=("$work/pattern-a.bin:/pattern-a.bin" "$work/pattern-b.bin:/pattern-b.bin")
  fi
  if ! "$here/initramfs.sh" "$here/guest-$t.sh" "$work/$t.cpio.gz" "${extra[@]}"; then
    failed "building the $t initramfs" "an archive" "initramfs.sh failing (see its messages above)"
    exit 1
  fi
done
ok "initramfses: ${tests[*]/%/.cpio.gz} in $work"
phase_end initramfs

# ------------------------------------------------------------------ server --
# Starts `muser serve $1 --socket $2 --log info` with its stdout and stderr in
# $server_out and $server_err; sets server_pid; waits for its "serving" line.
start_server() {
  local module=$1 socket=$2 i
  node "$cli" serve "$module" --socket "$socket" --log info >"$server_out" 2>"$server_err" &
  server_pid=$!
  for ((i = 0; i < 150; i++)); do
    grep -q '^muser: serving ' "$server_out" && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q '^muser: serving ' "$server_out" && [[ -S $socket ]]; then
    ok "server pid $server_pid: $(grep -m1 '^muser: serving ' "$server_out")"
    return 0
  fi
  failed "starting the server" "a 'muser: serving' line and a socket at $socket within 15s" \
    "$(kill -0 "$server_pid" 2>/dev/null && echo 'neither' || echo 'the server exiting')"
  return 1
}

count_fds() {
  local fds=("/proc/$1/fd"/*)
  printf '%d\n' "${#fds[@]}"
}

# The descriptor count once it stopped moving (the server may still be setting up).
steady_fds() {
  local a b i
  a=$(count_fds "$1")
  for ((i = 0; i < 20; i++)); do
    sleep 0.2
    b=$(count_fds "$1")
    [[ $a == "$b" ]] && break
    a=$b
  done
  printf '%d\n' "$a"
}

fd_listing() {
  local fd
  for fd in "/proc/$1/fd"/*; do
    printf '%s -> %s\n' "${fd##*/}" "$(readlink "$fd" 2>/dev/null || echo '?')"
  done
}

# After QEMU exited: the server logged the disconnect and is back to $1 descriptors.
check_server_after_qemu() {
  local fds_before=$1 name=$2 i fds
  if ! kill -0 "$server_pid" 2>/dev/null; then
    failed "server after QEMU exited" "still running" "it exited"
    return 0
  fi
  if grep -q "client connected to " "$server_err"; then
    ok "server log: $(grep -m1 'client connected to ' "$server_err")"
  else
    failed "server log" "'client connected to ...'" "no such line"
  fi
  for ((i = 0; i < 50; i++)); do
    grep -q "client disconnected from " "$server_err" && break
    sleep 0.1
  done
  if grep -q "client disconnected from " "$server_err"; then
    ok "server log: $(grep -m1 'client disconnected from ' "$server_err")"
  else
    failed "server log after QEMU exited" "'client disconnected from ...' within 5s" "no such line"
  fi
  fds=$(count_fds "$server_pid")
  for ((i = 0; i < 50 && fds != fds_before; i++)); do
    sleep 0.1
    fds=$(count_fds "$server_pid")
  done
  if ((fds == fds_before)); then
    ok "server descriptors after QEMU exited: $fds, as before QEMU connected"
  else
    failed "server descriptors after QEMU exited (/proc/$server_pid/fd, waited 5s)" "$fds_before (as before QEMU connected)" "$fds"
    fd_listing "$server_pid" >"$work/$name-fds-after.txt"
    printf 'descriptors before QEMU connected:\n'
    cat "$work/$name-fds-before.txt"
    printf 'descriptors after QEMU exited:\n'
    cat "$work/$name-fds-after.txt"
  fi
}

# SIGTERM: the server exits 0 and removes its socket.
stop_server() {
  local socket=$1 i status=0
  kill -TERM "$server_pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    failed "server exit on SIGTERM" "exit within 5s" "still running (killed)"
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  wait "$server_pid" || status=$?
  server_pid=
  expect "server exit status on SIGTERM" 0 "$status"
  if [[ -e $socket ]]; then
    failed "socket removed on SIGTERM" "no $socket" "it still exists"
  else
    ok "socket removed on SIGTERM"
  fi
}

# ------------------------------------------------------------------- guest --
# Boots the guest with initramfs $work/$1.cpio.gz against socket $2, with the
# console in $console, QEMU's messages in $qemu_log and its trace in $trace;
# sets boot_status.
boot_guest() {
  local name=$1 socket=$2
  boot_status=0
  "$here/boot.sh" --socket "$socket" --initrd "$work/$name.cpio.gz" --console "$console" \
    --trace "$trace" --timeout "$boot_timeout" --append "muser.timeout=$guest_timeout" \
    >/dev/null 2>"$qemu_log" || boot_status=$?
  case $boot_status in
    0) ok "guest powered off, QEMU exit status 0, no kernel panic ($(grep -m1 'powered off after' "$qemu_log" | sed 's/.*\] //'))" ;;
    124) failed "guest power-off" "QEMU exiting within ${boot_timeout}s" "QEMU killed at the timeout" ;;
    125) failed "guest power-off" "no kernel panic" "$(grep -m1 'Kernel panic' "$console" | tr -d '\r')" ;;
    *) failed "guest power-off" "QEMU exit status 0" "$boot_status" ;;
  esac
}

# The text after "MUSER-CHECK $1 " of the first such console line (without CR).
console_check() {
  [[ -f $console ]] || return 0
  sed -n "s/\r\$//; /MUSER-CHECK $1 /{s/^.*MUSER-CHECK $1 //p;q}" "$console"
}

# Checks that the guest assigned BAR $1 with `size=.. type=..` ($2), e.g.
# expect_bar 2 "size=0x100 type=io" "256 bytes of I/O".
expect_bar() {
  local line start size type
  line=$(console_check "bar $1")
  start=$(sed -n 's/.*start=\([^ ]*\).*/\1/p' <<<"$line")
  size=$(sed -n 's/.*size=\([^ ]*\).*/\1/p' <<<"$line")
  type=$(sed -n 's/.*type=\([^ ]*\).*/\1/p' <<<"$line")
  if [[ -n $start && $start != 0x0 ]]; then start=assigned; fi
  expect "guest: BAR$1 assigned, $3" "assigned $2" "${start:-none} size=${size:-none} type=${type:-none}" "MUSER-CHECK bar $1 $line"
}

# Whether the guest got to its last check.
console_done() {
  [[ -f $console ]] && grep -q -E $'MUSER-CHECK done\r?$' "$console"
}

# Runs dist/scripts/e2e/host-check.js with these arguments, shows its lines and
# counts its FAIL lines (or its failing without one) as failures.
host_check() {
  local out status=0 n
  out=$(node "$host_check_js" "$@" 2>&1) || status=$?
  printf '%s\n' "$out"
  n=$(grep -c '^FAIL' <<<"$out" || true)
  passes=$((passes + $(grep -c '^ok' <<<"$out" || true)))
  failures=$((failures + n))
  test_failures=$((test_failures + n))
  if ((status != 0 && n == 0)); then
    failed "host-check.js $1" "exit status 0" "$status"
  fi
}

# Prints a log file (without CRs), or says that there is none.
show() {
  if [[ -s $1 ]]; then
    tr -d '\r' <"$1"
  else
    printf '(%s)\n' "$([[ -e $1 ]] && echo empty || echo 'not written')"
  fi
}

# Shows what is needed to debug a failed test.
dump_logs() {
  local name=$1
  printf '\n----- %s: guest console (%s)\n' "$name" "$console"
  show "$console"
  printf '\n----- %s: server stdout (%s)\n' "$name" "$server_out"
  show "$server_out"
  printf '\n----- %s: server stderr (%s)\n' "$name" "$server_err"
  show "$server_err"
  printf '\n----- %s: QEMU and boot.sh messages (%s)\n' "$name" "$qemu_log"
  show "$qemu_log"
  printf '\n----- %s: last 60 lines of the QEMU vfio-user trace (%s)\n' "$name" "$trace"
  if [[ -s $trace ]]; then
    tail -n 60 "$trace"
  else
    show "$trace"
  fi
  printf -- '----- end of %s logs\n' "$name"
}

# ------------------------------------------------------------ test: gpio --
gpio_test() {
  local socket=$work/gpio.sock fds_before line
  start_server "$gpio_module" "$socket" || return 0
  fds_before=$(steady_fds "$server_pid")
  fd_listing "$server_pid" >"$work/gpio-fds-before.txt"
  printf 'note server descriptors before QEMU connects: %s\n' "$fds_before"

  boot_guest gpio "$socket"

  line=$(console_check pci)
  expect "guest: device enumerated as 494f:0dc8" "vendor=0x494f device=0x0dc8" \
    "$(sed -n 's/^[^ ]* \(vendor=[^ ]* device=[^ ]*\).*/\1/p' <<<"$line")" "MUSER-CHECK pci $line"
  expect_bar 2 "size=0x100 type=io" "256 bytes of I/O"
  expect "guest: driver bound" "pci-idio-16" "$(console_check driver)" "MUSER-CHECK driver $(console_check driver)"
  line=$(console_check iin0)
  expect "guest: IIN0 read 12 times" "0 0 0 1 1 1 0 0 0 1 1 1" "$line" "MUSER-CHECK iin0 $line"
  line=$(console_check out0)
  expect "guest: OUT0 written 1 then 0" "1 0" "$line" "MUSER-CHECK out0 $line"
  if console_done; then
    ok "guest: MUSER-CHECK done"
  else
    guest_failure=$(console_check fail)
    failed "guest" "MUSER-CHECK done" "${guest_failure:+MUSER-CHECK fail }${guest_failure:-no done line}"
  fi

  check_server_after_qemu "$fds_before" gpio
  host_check client "$socket" 0x494f
  stop_server "$socket"
}

# ---------------------------------------------------------- test: config --
config_test() {
  local socket=$work/config.sock fds_before
  start_server "$fidelity_module" "$socket" || return 0
  fds_before=$(steady_fds "$server_pid")
  fd_listing "$server_pid" >"$work/config-fds-before.txt"
  printf 'note server descriptors before QEMU connects: %s\n' "$fds_before"

  boot_guest config "$socket"
  if console_done; then
    ok "guest: MUSER-CHECK $(console_check caps | sed 's/^/caps /')"
    ok "guest: MUSER-CHECK $(console_check ecaps | sed 's/^/ecaps /')"
    ok "guest: MUSER-CHECK done"
  else
    guest_failure=$(console_check fail)
    failed "guest" "MUSER-CHECK done" "${guest_failure:+MUSER-CHECK fail }${guest_failure:-no done line}"
  fi

  host_check config "$fidelity_module" "$console"

  check_server_after_qemu "$fds_before" config
  stop_server "$socket"
}

# ------------------------------------------------------------ test: nvme --
# Whether $2 bytes of file $1 at byte $3 equal those of file $4 at byte $5 (offsets and sizes in 64 KiB units).
same_bytes() {
  cmp -s <(dd if="$1" bs=65536 skip=$(($3 / 65536)) count=$(($2 / 65536)) status=none) \
    <(dd if="$4" bs=65536 skip=$(($5 / 65536)) count=$(($2 / 65536)) status=none)
}

nvme_test() {
  local socket=$work/nvme.sock disk=$work/nvme-disk.img fds_before line mib=1048576
  # The backing file: 64 MiB, sparse, with pattern A at 8 MiB.
  rm -f "$disk"
  truncate -s $((64 * mib)) "$disk"
  dd if="$work/pattern-a.bin" of="$disk" bs=$mib seek=8 conv=notrunc status=none
  export MUSER_NVME_FILE=$disk MUSER_NVME_SIZE=64M
  start_server "$nvme_module" "$socket" || { unset MUSER_NVME_FILE MUSER_NVME_SIZE; return 0; }
  unset MUSER_NVME_FILE MUSER_NVME_SIZE
  fds_before=$(steady_fds "$server_pid")
  fd_listing "$server_pid" >"$work/nvme-fds-before.txt"
  printf 'note server descriptors before QEMU connects: %s\n' "$fds_before"

  boot_guest nvme "$socket"

  line=$(console_check pci)
  expect "guest: device enumerated as 1de5:4e56, class 010802" "vendor=0x1de5 device=0x4e56 class=0x010802" \
    "$(sed -n 's/^[^ ]* \(vendor=[^ ]* device=[^ ]* class=[^ ]*\).*/\1/p' <<<"$line")" "MUSER-CHECK pci $line"
  expect_bar 0 "size=0x4000 type=mem64" "16 KiB of 64-bit memory"
  expect "guest: driver bound" "nvme" "$(console_check driver)" "MUSER-CHECK driver $(console_check driver)"
  line=$(console_check disk)
  expect "guest: namespace of 64 MiB in 512-byte blocks" "size=67108864 logical-block=512" \
    "$(sed -n 's/^[^ ]* \(size=[^ ]* logical-block=[^ ]*\).*/\1/p' <<<"$line")" "MUSER-CHECK disk $line"
  line=$(console_check irqs)
  if [[ $line =~ ^[0-9]+\ .*nvme0q0:PCI-MSIX.*nvme0q1:PCI-MSIX ]]; then
    ok "guest: admin and I/O queue interrupts are MSI-X: MUSER-CHECK irqs $line"
  else
    failed "guest: queue interrupts" "nvme0q0 and nvme0q1 on PCI-MSIX" "${line:-no irqs line}"
  fi
  for what in read-host write-1m write-4k discard; do
    line=$(console_check "$what")
    expect "guest: $what" ok "$line" "MUSER-CHECK $what $line"
  done
  if console_done; then
    ok "guest: MUSER-CHECK done"
  else
    guest_failure=$(console_check fail)
    failed "guest" "MUSER-CHECK done" "${guest_failure:+MUSER-CHECK fail }${guest_failure:-no done line}"
  fi

  if grep -q '^nvme: shutdown complete' "$server_out"; then
    ok "server: the guest shut the controller down: $(grep -m1 '^nvme: shutdown complete' "$server_out")"
  else
    failed "server: controller shutdown" "a 'nvme: shutdown complete' line" "none"
  fi
  # What the guest wrote is in the backing file.
  expect "backing file: pattern B at 16 MiB (1 MiB writes)" same "$(same_bytes "$disk" $mib $((16 * mib)) "$work/pattern-b.bin" 0 && echo same || echo different)"
  expect "backing file: pattern B at 32 MiB (4 KiB writes)" same "$(same_bytes "$disk" $mib $((32 * mib)) "$work/pattern-b.bin" 0 && echo same || echo different)"
  expect "backing file: zeros at 40 MiB (discarded half)" same "$(same_bytes "$disk" $((mib / 2)) $((40 * mib)) /dev/zero 0 && echo same || echo different)"
  expect "backing file: pattern B's second half at 40.5 MiB" same \
    "$(same_bytes "$disk" $((mib / 2)) $((40 * mib + mib / 2)) "$work/pattern-b.bin" $((mib / 2)) && echo same || echo different)"
  expect "backing file: pattern A still at 8 MiB" same "$(same_bytes "$disk" $mib $((8 * mib)) "$work/pattern-a.bin" 0 && echo same || echo different)"

  check_server_after_qemu "$fds_before" nvme
  host_check client "$socket" 0x1de5
  stop_server "$socket"
}

for t in "${tests[@]}"; do
  phase_begin "boot-$t"
  test_failures=0
  # Where this test's logs go (dump_logs shows them all, present or not).
  console=$work/$t-console.log
  trace=$work/$t-qemu-trace.log
  qemu_log=$work/$t-qemu.log
  server_out=$work/$t-server.out
  server_err=$work/$t-server.err
  "${t}_test"
  if ((test_failures)); then
    dump_logs "$t"
  fi
  phase_end "boot-$t"
done

# ----------------------------------------------------------------- summary --
total=$(($(now_ms) - run_start))
printf '\n=== summary\n'
for i in "${!phase_names[@]}"; do
  printf 'time %-12s %s\n' "${phase_names[$i]}" "$(seconds "${phase_times[$i]}")"
done
printf 'time %-12s %s\n' total "$(seconds "$total")"
printf 'e2e: %d passed, %d failed\n' "$passes" "$failures"
if ((failures)); then
  printf 'e2e FAILED: logs and initramfses kept in %s\n' "$work"
  exit 1
fi
if ((keep)); then
  printf 'work folder kept: %s\n' "$work"
else
  rm -rf "$work"
fi
