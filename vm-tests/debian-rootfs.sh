#!/usr/bin/env bash
# Builds the root filesystem of the systemd-* scenarios: Debian 12 (bookworm) from
# Debian's packages (mmdebstrap, minbase + systemd), booted with systemd as PID 1.
#
#   vm-tests/debian-rootfs.sh     build, or reuse the cached image; the last stdout
#                                 line is its path
#
# Cache: target/vm-tests/debian-rootfs/<key>/rootfs.img (ext4), where <key> hashes this
# script: the image changes only with it. The guest boots it read-write on a QEMU
# snapshot (nothing it writes survives the run), and at multi-user.target vmtest.service
# unpacks the run's files from its second disk, a tar archive (the vm-tests binary,
# policyd's .deb and a `run` script: see vm-tests/src/host/debian.rs), and runs them on
# the serial console.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
out=$top/target/vm-tests/debian-rootfs
key=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
img=$out/$key/rootfs.img
mirror=${VMTESTS_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "debian-rootfs: $*" >&2; }

if [ -f "$img" ]; then
	echo "$img"
	exit 0
fi
command -v mmdebstrap >/dev/null || {
	log "error: mmdebstrap is missing (Debian package mmdebstrap; vm-tests/deps.sh installs it)"
	exit 1
}
[ "$(id -u)" -eq 0 ] || {
	log "error: building the root filesystem needs root (mmdebstrap --mode=root, mke2fs -d)"
	exit 1
}

tmp=$out/tmp.$$
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp" && mkdir -p "$tmp"
started=$(date +%s)
log "building Debian bookworm (minbase + systemd) from $mirror"

# The unit that runs a scenario once the system is up. The run's files come on
# /dev/vdb, a tar archive written by the host for each boot.
cat >"$tmp/vmtest.service" <<'UNIT'
[Unit]
Description=vm-tests: the scenario named on the kernel command line
After=multi-user.target

[Service]
Type=oneshot
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c "mkdir -p /run/vmtest && tar -xf /dev/vdb -C /run/vmtest && exec /run/vmtest/run"

[Install]
WantedBy=multi-user.target
UNIT

# procps: /bin/kill, which policyd.service reloads with. systemd-oomd, nohang and
# earlyoom: bench-thrash's contenders, installed by Debian's packages but disabled, so
# that only the contender a trial starts acts in it (and none in the systemd-* tests);
# dbus for systemd-oomd and oomctl. No udev: devtmpfs has every device the guest uses,
# and without udev nothing waits for device units (the serial getty would: masked, the
# console is the scenario's).
mmdebstrap --mode=root --variant=minbase --format=directory \
	--include=systemd,systemd-sysv,procps,dbus,systemd-oomd,nohang,earlyoom \
	--customize-hook='echo vmtest >"$1/etc/hostname"' \
	--customize-hook="copy-in $tmp/vmtest.service /etc/systemd/system" \
	--customize-hook='systemctl --root="$1" enable vmtest.service' \
	--customize-hook='systemctl --root="$1" disable systemd-oomd.service systemd-oomd.socket nohang.service nohang-desktop.service earlyoom.service' \
	--customize-hook='systemctl --root="$1" mask getty.target serial-getty@ttyS0.service console-getty.service apt-daily.timer apt-daily-upgrade.timer' \
	--customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*' \
	bookworm "$tmp/root" "$mirror" >&2

# Room for the .deb, the journal and a test's files; the snapshot keeps the image itself
# unchanged.
mke2fs -q -t ext4 -L root -d "$tmp/root" "$tmp/rootfs.img" 1G
mkdir -p "$out/$key"
mv "$tmp/rootfs.img" "$img"
log "built $img in $(($(date +%s) - started)) s ($(du -sh "$img" | cut -f1) used)"
echo "$img"
