#!/usr/bin/env bash
# Checks the kernel series the way a maintainer would before taking it:
#   - the whole series builds with the test kernel's config (tinyconfig +
#     vm-tests/kernel.config), and with CONFIG_BPF_OOM=n, CONFIG_MEMCG=n and
#     CONFIG_CGROUPS=n (BPF_JIT stays on in each);
#   - every shorter prefix of kernel-patches/v7.3 (1-(N-1), ..., 1-2, patch 1) builds with
#     the test config (patches before the one that adds CONFIG_BPF_OOM simply lack it),
#     built in that order; a prefix ending with a patch that touches only Documentation/,
#     tools/ or MAINTAINERS is the same kernel as the prefix before it and is not rebuilt;
#   - scripts/checkpatch.pl --strict on each patch.
# Slow (one incremental build per prefix and variant, on top of a first full build) and not
# part of `./vm-tests/run test`. The summary goes to stdout and to
# target/vm-tests/kernel-check/result.txt; the build logs sit next to it.
#
#   vm-tests/kernel-check.sh             everything above
#   vm-tests/kernel-check.sh prefixes    checkpatch and the prefix builds only (after a
#                                        series change that a full run already covered)
#   KERNEL_SRC=/path/to/linux-7.3 ...    a tree of your own, as for vm-tests/kernel.sh
set -euo pipefail

what=${1:-all}
case $what in
all | prefixes) ;;
*)
	echo "usage: vm-tests/kernel-check.sh [prefixes]" >&2
	exit 2
	;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
out=$top/target/vm-tests
cdir=$out/kernel-check
src=$cdir/src
build=$cdir/build
fragment=$here/kernel.config
result=$cdir/result.txt

log() { echo "kernel-check: $*" >&2; }
die() {
	echo "kernel-check: error: $*" >&2
	exit 1
}

export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=policyd KBUILD_BUILD_HOST=vm-tests

patches=()
for p in "$top"/kernel-patches/v7.3/[0-9][0-9][0-9][0-9]-*.patch; do
	case $(basename "$p") in 0000-*) ;; *) patches+=("$p") ;; esac
done
[ ${#patches[@]} -gt 0 ] || die "no patches in kernel-patches/v7.3"

# The pristine source: KERNEL_SRC, or Debian's, which kernel.sh downloads and unpacks
# (building the test kernel on the way, or finding it cached).
if [ -n "${KERNEL_SRC:-}" ]; then
	pristine=$(cd "$KERNEL_SRC" && pwd)
else
	"$here/kernel.sh" >/dev/null
	pristine=$out/linux-source-7.3
fi
[ -f "$pristine/Makefile" ] || die "no kernel source at $pristine"

mkdir -p "$cdir"
exec 9>"$cdir/.lock"
flock -n 9 || die "another kernel-check runs in $cdir"

log "copying $pristine to ${src#"$top"/}"
rsync -a --delete --exclude=/.git --exclude=/.vm-tests-source "$pristine"/ "$src"/
# The copy has the pristine mtimes, older than a previous run's objects of the patched
# files: make them new, so that make rebuilds what depends on them.
sed -n 's|^diff --git a/\([^ ]*\) b/\([^ ]*\)$|\1\n\2|p' "${patches[@]}" | LC_ALL=C sort -u |
	(cd "$src" && xargs -r touch -c --)
mkdir -p "$build"

jobs=$(nproc)
summary=()
failed=0

# configure VARIANT: tinyconfig + the fragment, then the variant's change.
configure() {
	local variant=$1
	make -C "$src" O="$build" tinyconfig >/dev/null
	"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
	case $variant in
	test) ;;
	BPF_OOM=n) "$src/scripts/config" --file "$build/.config" --disable BPF_OOM ;;
	MEMCG=n) "$src/scripts/config" --file "$build/.config" --disable MEMCG ;;
	CGROUPS=n) "$src/scripts/config" --file "$build/.config" --disable CGROUPS ;;
	esac
	make -C "$src" O="$build" olddefconfig >/dev/null
	# A variant that olddefconfig undid, or that lost the JIT, would check nothing.
	local sym=${variant%=n}
	if [ "$variant" != test ] && grep -q "^CONFIG_$sym=y" "$build/.config"; then
		echo "kernel-check: CONFIG_$sym is still set after disabling it" >&2
		return 1
	fi
	if ! grep -q '^CONFIG_BPF_JIT=y' "$build/.config"; then
		echo "kernel-check: config $variant lost CONFIG_BPF_JIT" >&2
		return 1
	fi
}

# note LINE: a result, for the summary and, as it comes, for the log.
note() {
	summary+=("$1")
	log "$1"
}

# build LABEL VARIANT: one bzImage build, its result appended to the summary.
build_one() {
	local label=$1 variant=$2 blog start oom
	blog=$cdir/build-${label// /_}-${variant//=/_}.log
	start=$SECONDS
	if ! configure "$variant" >"$blog" 2>&1; then
		note "$label, config $variant: CONFIG FAILED (log: ${blog#"$top"/})"
		failed=1
		return
	fi
	oom=$(grep -E '^(CONFIG_BPF_OOM=|# CONFIG_BPF_OOM is not set)' "$build/.config" || echo "no CONFIG_BPF_OOM")
	log "$label, config $variant ($oom): make -j$jobs bzImage"
	if make -C "$src" O="$build" -j"$jobs" bzImage >>"$blog" 2>&1; then
		note "$label, config $variant ($oom): ok in $((SECONDS - start)) s"
	else
		grep -E 'error|Error' "$blog" | tail -n 5 >&2 || true
		note "$label, config $variant ($oom): BUILD FAILED (log: ${blog#"$top"/})"
		failed=1
	fi
}

# Cheap, so first: a cut-short run still has it.
for p in "${patches[@]}"; do
	# checkpatch exits non-zero on errors; its summary line says what it found.
	total=$({ "$src/scripts/checkpatch.pl" --strict "$p" 2>&1 || true; } | grep -E '^total:' ||
		echo "total: no summary from checkpatch")
	note "checkpatch --strict $(basename "$p"): ${total#total: }"
done

# Kernel builds read neither Documentation/ nor tools/ (nor MAINTAINERS): a patch that
# touches only those cannot change what a prefix ending with it builds.
kernel_neutral() {
	! sed -n 's|^diff --git a/\([^ ]*\) b/.*$|\1|p' "$1" |
		grep -qvE '^(Documentation/|tools/|MAINTAINERS$)'
}

# The whole series first, then its config variants, then each shorter prefix, newest
# patch reverted first: every build is incremental on the one before, and a run cut
# short has the results that matter most.
for p in "${patches[@]}"; do
	(cd "$src" && patch -p1 -s --no-backup-if-mismatch <"$p") ||
		die "$(basename "$p") does not apply on top of the patches before it"
done
n=${#patches[@]}
if [ "$what" = all ]; then
	build_one "patches 1-$n" test
	for variant in BPF_OOM=n MEMCG=n CGROUPS=n; do
		build_one "patches 1-$n" "$variant"
	done
fi
for ((i = n - 1; i >= 1; i--)); do
	last=${patches[i]}
	(cd "$src" && patch -p1 -R -s --no-backup-if-mismatch <"$last") ||
		die "$(basename "$last") does not revert from the top of the series"
	if kernel_neutral "${patches[i - 1]}"; then
		note "patches 1-$i, config test: not built: $(basename "${patches[i - 1]}") touches only Documentation/, tools/ or MAINTAINERS, so the build of patches 1-$((i - 1)) stands for it"
		continue
	fi
	build_one "patches 1-$i" test
done

{
	echo "kernel-check ($what) of kernel-patches/v7.3 ($(date -u '+%Y-%m-%d %H:%M UTC'), source $pristine)"
	printf '%s\n' "${summary[@]}"
} | tee "$result"
[ $failed -eq 0 ] || die "some builds failed (see above)"
