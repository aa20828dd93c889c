#!/usr/bin/env bash
# Restarts the device of a running `muser serve --restartable` while its VM
# works: every INTERVAL seconds, COUNT times, it SIGKILLs the device process,
# or (with --upgrade-every N) sends the supervisor SIGHUP instead on every Nth
# turn, so that the module is loaded again from disk. One line per event on
# stdout: "<time> kill <pid>" or "<time> upgrade". The supervisor's log (at
# --log info) gives the pause each caused: "serves again after a pause of ..".
#
# Usage: scripts/restart-chaos.sh <supervisor pid> [--interval S] [--count N] [--upgrade-every N]
set -euo pipefail

supervisor=${1:?usage: $0 <supervisor pid> [--interval S] [--count N] [--upgrade-every N]}
shift
interval=1 count=8 upgrade_every=0
while (($# > 0)); do
  case $1 in
    --interval) interval=$2; shift 2 ;;
    --count) count=$2; shift 2 ;;
    --upgrade-every) upgrade_every=$2; shift 2 ;;
    *) echo "restart-chaos: unknown argument $1" >&2; exit 2 ;;
  esac
done

# The supervisor's child titled "muser: device process" (its spare is "muser: spare device process").
device_pid() {
  local c
  for c in $(cat "/proc/$supervisor/task/$supervisor/children" 2>/dev/null); do
    if tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null | grep -q '^muser: device process'; then
      echo "$c"
      return
    fi
  done
}

for ((n = 1; n <= count; n++)); do
  sleep "$interval"
  kill -0 "$supervisor" 2>/dev/null || exit 0
  if ((upgrade_every > 0 && n % upgrade_every == 0)); then
    kill -HUP "$supervisor"
    echo "$(date +%T.%N) upgrade"
  else
    pid=$(device_pid)
    [[ -n $pid ]] || continue
    kill -KILL "$pid"
    echo "$(date +%T.%N) kill $pid"
  fi
done
