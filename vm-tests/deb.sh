#!/usr/bin/env bash
# Builds policyd's Debian package and checks it:
#
#   vm-tests/deb.sh     target/deb/policyd_<version>_amd64.deb; the last stdout line is
#                       its path
#
# The package holds what cargo and policyd-dist build here: the static policyd binary,
# man pages and shell completions generated from its clap definitions (so they match
# `policyd --help`), deploy/systemd/policyd.service, policies.toml as the conffile
# /etc/policyd/policies.toml, README.md. debhelper (deploy/debian) packages them; it
# compiles nothing. Then `systemd-analyze verify` checks the unit as installed and
# lintian the package: any error or warning fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
out=$top/target/deb
version=$(dpkg-parsechangelog -l "$top/deploy/debian/changelog" -S Version)
src=$out/policyd-$version
deb=$out/policyd_${version}_amd64.deb
bin=$top/target/x86_64-unknown-linux-gnu/release

log() { echo "deb: $*" >&2; }

# Cargo reads .cargo/config.toml (static target) from the repository root.
(cd "$top" && cargo build --release -p policyd -p policyd-dist >&2)

rm -rf "$src" && mkdir -p "$src"
cp -r "$top/deploy/debian" "$src/debian"
cp "$top/deploy/systemd/policyd.service" "$src/debian/policyd.service"
cp "$bin/policyd" "$top/policies.toml" "$top/README.md" "$src/"
"$bin/policyd-dist" "$src" >/dev/null
log "building $deb"
(cd "$src" && dpkg-buildpackage --build=binary --no-sign >"$out/build.log" 2>&1) || {
	tail -n 30 "$out/build.log" >&2
	log "error: dpkg-buildpackage failed (log: $out/build.log)"
	exit 1
}

# The unit as installed, next to the binary it starts, and /bin/kill (ExecReload=) as the
# package's dependency procps provides it, here the host's.
root=$out/root
rm -rf "$root" && dpkg-deb -x "$deb" "$root"
install -D /bin/kill "$root/bin/kill"
log "systemd-analyze verify policyd.service"
# Its Documentation= pages are looked up among the package's own.
if ! verify=$(MANPATH=$root/usr/share/man systemd-analyze verify --root="$root" \
	/lib/systemd/system/policyd.service 2>&1) ||
	[ -n "$verify" ]; then
	echo "$verify" >&2
	log "error: systemd-analyze verify does not accept policyd.service"
	exit 1
fi

log "lintian"
lintian --fail-on error,warning --info --display-info "$deb" >&2 || {
	log "error: lintian found errors or warnings in $deb"
	exit 1
}
echo "$deb"
