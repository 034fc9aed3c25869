#!/bin/bash
# Record dmsim real traces under qemu (`make record-real`). Installs what it needs
# from Debian, then runs record/harness.py on configs/record/*.yaml (or the
# scenario files / options given: see `python3 record/harness.py --help`).
# Runs one qemu at a time (software emulation; KVM is not needed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "harness.sh: run as root (apt-get, depmod)" >&2; exit 1; }
pkgs="qemu-system-x86 busybox-static cpio kmod gcc libc6-dev python3 python3-yaml gzip tar e2fsprogs"
[ "${DMSIM_NO_BPFTRACE:-0}" = 1 ] || pkgs="$pkgs bpftrace"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "harness.sh: installing$missing"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
else
    # apt-cache needs a package list to find the kernel version.
    [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v -e lock -e partial)" ] || apt-get update -q
fi
mkdir -p "$here/work"
start=$(date +%s)
status=0
python3 "$here/harness.py" "$@" || status=$?
echo "harness.sh: finished in $(( $(date +%s) - start )) s (status $status)"
exit $status
