#!/usr/bin/env bash
# The package as a user gets it: `npm pack`, installed into a fresh project
# that has only TypeScript, whose device and client compile against muser's
# types and run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
tarball="$(cd "$root" && npm pack --silent --pack-destination "$work" | tail -1)"
echo "==> $tarball: $(tar tzf "$tarball" | wc -l) files, $(du -k "$tarball" | cut -f1) KiB"
mkdir project && cd project
cp "$root/scripts/package/device.ts" .
printf '{ "name": "fresh", "private": true, "type": "module" }\n' > package.json
printf '{ "compilerOptions": { "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext", "strict": true, "outDir": "out" }, "include": ["device.ts"] }\n' > tsconfig.json
npm install --silent --no-audit --no-fund "typescript@$(node -p "require('$root/node_modules/typescript/package.json').version")" "$work/$tarball"
npx tsc -p .
node out/device.js "$work/project/dev.sock"
npx muser --version

# Stopping a backgrounded `npx muser serve` (npm's process) stops the server and removes its socket.
socket="$work/project/gpio.sock"
npx muser serve node_modules/muser/dist/samples/gpio-pci-idio-16/index.js --socket "$socket" &
launcher=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
[ -S "$socket" ] || { echo "npx muser serve did not create $socket"; exit 1; }
kill "$launcher"
for _ in $(seq 50); do [ -e "$socket" ] || break; sleep 0.1; done
if [ -e "$socket" ]; then echo "the server outlived npx: $socket is still there"; exit 1; fi
echo "==> npx muser serve stopped with npm's process and removed its socket"
