#!/bin/sh
# /init of the guest for the config space fidelity test (runs under busybox sh,
# with the helpers of guest-lib.sh, which initramfs.sh adds as
# /lib/muser/guest-lib.sh).
#
# Finds the PCI device served over vfio-user (by default the fixture
# test/fixtures/fidelity-device.ts: vendor 0x1de5, device 0xf1de), binds no
# driver to it, and prints its configuration space as Linux reads it, for the
# host (run-e2e.sh, through host-check.ts) to compare with what the device
# declares:
#   MUSER-CHECK pci/config/bar/irq/cap/caps/ecap/ecaps lines (see guest-lib.sh)
#   MUSER-CONFIG <offset> <16 hex bytes>       /sys/bus/pci/devices/<BDF>/config
#   MUSER-CONFIG-END <bytes read>              4096 for a PCI Express function
#   MUSER-RESOURCE <n> <start> <end> <flags>   /sys/bus/pci/devices/<BDF>/resource
#   MUSER-CHECK done
# A failure prints "MUSER-CHECK fail <what>" and powers off; so does the
# watchdog after muser.timeout seconds (default 60). The guest always powers off.
#
# Kernel command line options:
#   muser.timeout=SECONDS   watchdog (default 60)
#   muser.id=VVVV:DDDD      the device to look at (default 1de5:f1de), e.g.
#                           1b36:0005 to try this script on -device pci-testdev

if [ ! -r /lib/muser/guest-lib.sh ]; then
  echo "MUSER-CHECK fail no /lib/muser/guest-lib.sh (build the initramfs with initramfs.sh)"
  poweroff -f
fi
# shellcheck source=scripts/e2e/guest-lib.sh
. /lib/muser/guest-lib.sh

guest_start
id=$(cmdline_get muser.id 1de5:f1de | tr 'A-F' 'a-f')

find_pci_device "0x${id%%:*}" "0x${id#*:}"
report_pci_device
dump_config_space
check "done"
finish
