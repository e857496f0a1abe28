#!/usr/bin/env bash
# Installs what building and running the VM tests needs, without touching
# the machine's apt sources: backports come through a private apt state
# under target/vm-tests/apt.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
apt_dir="$top/target/vm-tests/apt"

debian_packages=(
	build-essential bc bison flex cpio kmod libelf-dev libssl-dev dwarves
	zlib1g-dev libzstd-dev pkg-config
	clang-19 llvm-19 busybox-static qemu-system-x86 rsync python3-venv
	# policyd's .deb and its checks (deb.sh); the systemd guest's root (debian-rootfs.sh)
	debhelper lintian mmdebstrap
)

need=()
for p in "${debian_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "vm-tests: missing Debian packages: ${need[*]}" >&2
		echo "vm-tests: run as root, or: sudo apt-get install ${need[*]}" >&2
		exit 1
	fi
	echo "vm-tests: installing ${need[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python tools the tests check policyd's output with, from PyPI, pinned, in a private
# venv: prometheus-client's text parser reads `policyd metrics` (host/validate.rs), and
# kubernetes-validate checks deploy/kubernetes/ against the Kubernetes API's schemas
# (which it ships: no cluster needed).
pyvenv="$top/target/vm-tests/pyvenv"
python_packages=(prometheus-client==0.26.0 kubernetes-validate==1.37.0)
if [ "$(cat "$pyvenv/.installed" 2>/dev/null)" != "${python_packages[*]}" ]; then
	echo "vm-tests: installing ${python_packages[*]} into $pyvenv" >&2
	rm -rf "$pyvenv"
	/usr/bin/python3 -m venv "$pyvenv"
	"$pyvenv/bin/pip" install -q --disable-pip-version-check "${python_packages[@]}"
	echo "${python_packages[*]}" >"$pyvenv/.installed"
fi

# apt_private SUITE: an apt command line that sees only SUITE, with its own
# lists and cache.
apt_private() {
	local suite=$1 dir="$apt_dir/$1"
	mkdir -p "$dir/lists/partial" "$dir/archives/partial"
	if [ ! -f "$dir/sources.list" ]; then
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
			>"$dir/sources.list"
	fi
	APT_PRIVATE=(apt-get -qq
		-o "Dir::Etc::SourceList=$dir/sources.list"
		-o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$dir/lists"
		-o "Dir::Cache::Archives=$dir/archives"
		-o APT::Get::List-Cleanup=0
		-o APT::Sandbox::User=root)
}

# fetch_deb SUITE PACKAGE DEST: download PACKAGE from SUITE and unpack it in DEST.
fetch_deb() {
	local suite=$1 pkg=$2 dest=$3
	[ -f "$dest/.done" ] && return 0
	apt_private "$suite"
	"${APT_PRIVATE[@]}" update
	rm -rf "$dest" && mkdir -p "$dest"
	(cd "$apt_dir/$suite" && rm -f "$pkg"_*.deb && "${APT_PRIVATE[@]}" download "$pkg")
	dpkg -x "$apt_dir/$suite/$pkg"_*.deb "$dest"
	touch "$dest/.done"
}

# apt-cache with the private state of SUITE: the dependency named PATTERN
# (a sed regex) of PACKAGE.
dependency() {
	local suite=$1 pkg=$2 pattern=$3
	apt_private "$suite"
	apt-cache "${APT_PRIVATE[@]:1}" depends "$pkg" |
		sed -n "s/^  Depends: \($pattern\)\$/\1/p" | head -n 1
}

# stock_kernel DEST: Debian's own Linux 7.3 (from trixie-backports, the
# source the test kernel is built from, without our patches) unpacked in
# DEST; prints its vmlinuz. `policyd trace` is tested on it.
stock_kernel() {
	local dest=$1 suite=trixie-backports image binary
	if [ ! -f "$dest/.done" ]; then
		apt_private "$suite"
		"${APT_PRIVATE[@]}" update
		image=$(dependency "$suite" linux-image-amd64 'linux-image-[0-9][^ ]*-amd64')
		[ -n "$image" ] || { echo "vm-tests: no linux-image package in $suite" >&2; exit 1; }
		binary=$(dependency "$suite" "$image" 'linux-binary-[^ ]*')
		[ -n "$binary" ] || { echo "vm-tests: $image has no linux-binary package" >&2; exit 1; }
		fetch_deb "$suite" "$binary" "$dest"
	fi
	local vmlinuz
	vmlinuz=$(find "$dest/" -name "vmlinuz*" -type f | head -n 1)
	[ -n "$vmlinuz" ] || { echo "vm-tests: no vmlinuz in $dest" >&2; exit 1; }
	echo "$vmlinuz"
}

"$@"
