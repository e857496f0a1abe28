#!/usr/bin/env bash
# Builds the policyd test kernel: Linux 7.3 + kernel-patches/v7.3/ + vm-tests/kernel.config
# merged onto tinyconfig. Everything lives under target/vm-tests/.
#
#   vm-tests/kernel.sh                    build, or reuse a cached build; the last stdout line
#                                         is the bzImage path
#   vm-tests/kernel.sh vmlinux-h          regenerate bpf/vmlinux/x86_64/vmlinux.h from its BTF
#   vm-tests/kernel.sh vmlinux-h --check  fail if the committed vmlinux.h differs from it
#   vm-tests/kernel.sh vanilla            the same source and config without the series, for
#                                         the benchmark's baseline; last line: its bzImage
#
# Source: Debian's linux-source-7.3 (downloaded through vm-tests/deps.sh), or
# KERNEL_SRC=/path/to/linux-7.3 for a tree of your own. That tree is never modified: the
# patches go onto a copy in target/vm-tests/kernel/src (unless the tree already has them).
#
# Cache: target/vm-tests/kernel/<key>/{bzImage,vmlinux,config,build.log,info,test_memcontrol,
# test_progs}, where <key> hashes the source version, the patches, kernel.config, this script
# and bpf-selftests.sh, which builds test_progs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")
out=$top/target/vm-tests
kdir=$out/kernel
work=$kdir/src
build=$kdir/build
patch_dir=$top/kernel-patches/v7.3
fragment=$here/kernel.config
touched_list=$kdir/touched-files
applied=$kdir/applied # the patched files of the last applied series, mtimes kept
keep_builds=4

log() { echo "kernel: $*" >&2; }
die() {
	echo "kernel: error: $1" >&2
	shift
	for line in "$@"; do echo "kernel:   $line" >&2; done
	exit 1
}

# A fixed identity makes the build reproducible; for pahole older than 1.27 it also keeps
# BTF generation single-threaded and so its type order stable.
export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=policyd KBUILD_BUILD_HOST=vm-tests

# git must never mistake the kernel trees under target/ for part of this repository.
git_in() {
	local dir=$1
	shift
	(cd "$dir" && GIT_CEILING_DIRECTORIES=$(dirname "$dir") git "$@")
}

# The series, in order, without the cover letter.
patches=()
shopt -s nullglob
for p in "$patch_dir"/[0-9][0-9][0-9][0-9]-*.patch; do
	case $(basename "$p") in 0000-*) ;; *) patches+=("$p") ;; esac
done
shopt -u nullglob

# --- source selection: sets pristine, src_version, src_desc, tree_id -------------------

debian_source() {
	local deb_dir=$out/linux-source
	if ! "$here/deps.sh" fetch_deb trixie-backports linux-source-7.3 "$deb_dir" >&2; then
		die "could not download Debian's linux-source-7.3 from trixie-backports." \
			"It needs the Debian archive (deb.debian.org) and about 170 MB." \
			"Without it, build from a tree of your own: KERNEL_SRC=/path/to/linux-7.3 $0"
	fi
	local changelog=$deb_dir/usr/share/doc/linux-source-7.3/changelog.Debian.gz
	local version
	version=$(zcat "$changelog" 2>/dev/null | sed -n '1s/^linux (\([^)]*\)).*/\1/p')
	[ -n "$version" ] || die "cannot read the package version from $changelog"
	src_version="debian:linux-source-7.3:$version"
	src_desc="Debian linux-source-7.3 $version"
	# A new package version unpacks with the archive's (old) mtimes: build it from scratch.
	tree_id=$src_version
	pristine=$out/linux-source-7.3
}

# Unpacks the Debian tarball once per package version.
debian_untar() {
	local stamp=$pristine/.vm-tests-source
	[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$src_version" ] && return 0
	local tarball=$out/linux-source/usr/src/linux-source-7.3.tar.xz
	[ -f "$tarball" ] || die "$tarball is missing; remove $out/linux-source and retry"
	log "unpacking $(basename "$tarball")"
	rm -rf "$pristine" "$pristine.tmp"
	mkdir -p "$pristine.tmp"
	tar -xf "$tarball" -C "$pristine.tmp" --strip-components=1
	echo "$src_version" >"$pristine.tmp/.vm-tests-source"
	mv "$pristine.tmp" "$pristine"
}

user_source() {
	pristine=$(cd "$KERNEL_SRC" 2>/dev/null && pwd) || die "KERNEL_SRC=$KERNEL_SRC is not a directory"
	if [ ! -f "$pristine/Makefile" ] || [ ! -f "$pristine/Kconfig" ] || [ ! -d "$pristine/arch/x86" ]; then
		die "KERNEL_SRC=$pristine does not look like a Linux source tree"
	fi
	if [ -f "$pristine/.config" ] || [ -d "$pristine/include/config" ]; then
		die "KERNEL_SRC=$pristine holds in-tree build output; we build with O=." \
			"Run 'make mrproper' in it, or point KERNEL_SRC at a clean tree."
	fi
	local kv listing
	kv=$(make -s -C "$pristine" kernelversion 2>/dev/null) || die "cannot read the kernel version of $pristine"
	# Names, sizes and mtimes of every file: any edit to the tree changes the key.
	listing=$(cd "$pristine" && find . -path ./.git -prune -o -type f -printf '%P %s %T@\n' |
		LC_ALL=C sort | sha256sum | cut -c1-16)
	src_version="tree:$pristine:$kv:$listing"
	src_desc="KERNEL_SRC=$pristine ($kv)"
	# Edits to the tree give newer mtimes, which make handles; another tree needs a new build.
	tree_id=$pristine
}

# --- build ------------------------------------------------------------------------------

# Files a set of patches touches (both sides of renames), one per line.
patched_files() {
	[ $# -gt 0 ] || return 0
	sed -n 's|^diff --git a/\([^ ]*\) b/\([^ ]*\)$|\1\n\2|p' "$@" | LC_ALL=C sort -u
}

# Whether tree $1 already holds the whole series: un-apply it, newest patch first, on a
# scratch copy of the files it touches. (A single `git apply --reverse --check` of all the
# patches fails as soon as two of them touch the same file.)
series_contained() {
	local tree=$1 scratch f i ok=0
	scratch=$(mktemp -d)
	while IFS= read -r f; do
		if [ -f "$tree/$f" ]; then
			mkdir -p "$scratch/$(dirname "$f")"
			cp "$tree/$f" "$scratch/$f"
		fi
	done < <(patched_files "${patches[@]}")
	for ((i = ${#patches[@]} - 1; i >= 0; i--)); do
		if ! git_in "$scratch" apply --reverse "${patches[i]}" 2>/dev/null; then
			ok=1
			break
		fi
	done
	rm -rf "$scratch"
	return $ok
}

# Fragment lines missing from the final .config, one per line.
missing_options() {
	local config=$1 line sym
	while IFS= read -r line; do
		case $line in
		CONFIG_*=*)
			grep -qxF -- "$line" "$config" || echo "$line"
			;;
		"# CONFIG_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			! grep -q "^$sym=" "$config" || echo "$line"
			;;
		esac
	done <"$fragment"
}

# What the .config says about the symbol of a fragment line.
config_has() {
	local sym=${1#\# }
	sym=${sym%%[= ]*}
	grep -E "^($sym=|# $sym is not set)" "$2" || echo "($sym absent: its dependencies are not met or it does not exist)"
}

check_config() {
	local config=$build/.config missing=() line fatal=()
	mapfile -t missing < <(missing_options "$config")
	[ ${#missing[@]} -eq 0 ] && return 0
	for line in "${missing[@]}"; do
		log "warning: $line did not stick; .config has: $(config_has "$line" "$config")"
		if [ ${#patches[@]} -gt 0 ] || [[ $line != CONFIG_BPF_OOM=* ]]; then
			fatal+=("$line")
		fi
	done
	if [ ${#fatal[@]} -gt 0 ]; then
		die "these kernel.config options did not stick (see the warnings above):" "${fatal[@]}"
	fi
	log "warning: no patches in ${patch_dir#"$top"/}, so CONFIG_BPF_OOM cannot exist yet"
}

build_kernel() {
	local start=$SECONDS
	if [ -z "${KERNEL_SRC:-}" ]; then
		debian_source
	else
		user_source
	fi

	local key
	key=$({
		echo "$src_version"
		for p in "${patches[@]}"; do cat "$p"; done
		echo "--- kernel.config"
		cat "$fragment"
		echo "--- kernel.sh"
		cat "${BASH_SOURCE[0]}"
		echo "--- bpf-selftests.sh"
		cat "$here/bpf-selftests.sh" "$here/selftests/test_progs_shims.c"
	} | sha256sum | cut -c1-16)
	result=$kdir/$key
	if [ -f "$result/bzImage" ]; then
		log "cached $key"
		return 0
	fi

	mkdir -p "$kdir" "$build"
	exec 9>"$kdir/.lock"
	if ! flock -n 9; then
		log "waiting for another kernel build in $kdir"
		flock 9
	fi
	if [ -f "$result/bzImage" ]; then
		log "cached $key"
		return 0
	fi
	log "building $key from $src_desc, ${#patches[@]} patch(es)"
	if [ -z "${KERNEL_SRC:-}" ]; then debian_untar; fi

	local apply=1
	if [ ${#patches[@]} -eq 0 ]; then
		apply=0
		log "no patches in ${patch_dir#"$top"/}: building the source as it is"
	elif [ -n "${KERNEL_SRC:-}" ]; then
		if series_contained "$pristine"; then
			apply=0
			log "KERNEL_SRC already contains the ${#patches[@]} patches: not applying them again"
		else
			log "KERNEL_SRC lacks the patches: applying them to a copy"
		fi
	fi

	# make trusts mtimes only within one source tree.
	if [ -f "$kdir/tree" ] && [ "$(cat "$kdir/tree")" != "$tree_id" ]; then
		log "the source tree changed (was $(cat "$kdir/tree")): building from scratch"
		rm -rf "$build" "$applied" "$touched_list"
		mkdir -p "$build"
	fi
	echo "$tree_id" >"$kdir/tree"

	# Work tree = pristine tree, keeping mtimes so that make rebuilds only what changed.
	# Files an earlier series touched get back their pristine content with an old mtime;
	# touching them makes make rebuild their objects.
	log "syncing the work tree"
	mkdir -p "$work"
	rsync -a --delete --exclude=/.git --exclude=/.vm-tests-source "$pristine"/ "$work"/
	if [ -f "$touched_list" ]; then
		(cd "$work" && xargs -r touch -c -- <"$touched_list")
	fi
	if [ $apply -eq 1 ]; then
		local files=() p f
		mapfile -t files < <(patched_files "${patches[@]}")
		# Recorded before applying, so a failed apply or build still gets undone next time.
		{ [ -f "$touched_list" ] && cat "$touched_list"; printf '%s\n' "${files[@]}"; } |
			LC_ALL=C sort -u >"$touched_list.new"
		mv "$touched_list.new" "$touched_list"
		for p in "${patches[@]}"; do
			git_in "$work" apply --whitespace=nowarn "$p" ||
				die "$(basename "$p") does not apply to $src_desc" \
					"(a KERNEL_SRC tree must hold either the whole series or none of it)"
		done
		# A patched file whose content is what the last applied series produced gets that
		# series' mtime back: changing one patch rebuilds only what that patch changes.
		rm -rf "$applied.new"
		for f in "${files[@]}"; do
			[ -f "$work/$f" ] || continue
			if [ -f "$applied/$f" ] && cmp -s "$applied/$f" "$work/$f"; then
				touch -r "$applied/$f" "$work/$f"
			fi
			mkdir -p "$(dirname "$applied.new/$f")"
			cp -p "$work/$f" "$applied.new/$f"
		done
		rm -rf "$applied"
		mkdir -p "$applied.new"
		mv "$applied.new" "$applied"
		log "applied ${#patches[@]} patches"
	fi

	local blog=$kdir/build.log
	: >"$blog"
	log "configuring (tinyconfig + ${fragment#"$top"/})"
	{
		make -C "$work" O="$build" tinyconfig &&
			"$work/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" &&
			make -C "$work" O="$build" olddefconfig
	} >>"$blog" 2>&1 || {
		tail -n 30 "$blog" >&2
		die "configuration failed (log: $blog)"
	}
	check_config

	local jobs make_start
	jobs=$(nproc)
	make_start=$SECONDS
	log "make -j$jobs bzImage (a few minutes on 2 cores; log: $blog)"
	if ! make -C "$work" O="$build" -j"$jobs" bzImage >>"$blog" 2>&1; then
		grep -E 'error|Error' "$blog" | tail -n 20 >&2 || true
		tail -n 20 "$blog" >&2
		die "make bzImage failed (log: $blog)"
	fi
	local wall=$((SECONDS - start)) make_time=$((SECONDS - make_start))

	local tmp=$kdir/.$key.tmp
	rm -rf "$tmp"
	mkdir "$tmp"
	# The kernel's own memcg selftests, from the same tree, for the memcg-selftests
	# scenario; static, as the guest has no libc. kselftest's make would build them all.
	# Its flags, no optimisation: -O2 drops the tests' stores into memory that is freed
	# unread, and their allocations would charge nothing.
	local cg=$work/tools/testing/selftests/cgroup
	log "building test_memcontrol from ${cg#"$work"/}"
	if ! gcc -static -Wall -pthread -I"$cg/.." -I"$cg/lib/include" -o "$tmp/test_memcontrol" \
		"$cg/test_memcontrol.c" "$cg/lib/cgroup_util.c" >>"$blog" 2>&1; then
		tail -n 20 "$blog" >&2
		die "building test_memcontrol failed (log: $blog)"
	fi
	# The series' own BPF selftests, for the kernel-selftests-bpf-oom scenario.
	local selftests_start=$SECONDS
	log "building the series' BPF selftests (test_progs with prog_tests/bpf_oom.c)"
	if ! "$here/bpf-selftests.sh" "$work" "$build" "$tmp" >>"$blog" 2>&1; then
		tail -n 30 "$blog" >&2
		die "building the BPF selftests failed (log: $blog)"
	fi
	local selftests_time=$((SECONDS - selftests_start))
	log "built test_progs in ${selftests_time} s"
	cp "$build/arch/x86/boot/bzImage" "$build/vmlinux" "$tmp/"
	cp "$build/.config" "$tmp/config"
	cp "$blog" "$tmp/build.log"
	{
		echo "source: $src_desc"
		echo "source-version: $src_version"
		echo "patches-applied-by-kernel.sh: $apply"
		for p in "${patches[@]}"; do echo "patch: $(basename "$p")"; done
		echo "make-seconds: $make_time"
		echo "bpf-selftests-seconds: $selftests_time"
		echo "wall-seconds: $wall"
	} >"$tmp/info"
	rm -rf "$result"
	mv "$tmp" "$result"
	# The series that produced the build is what the next sync must undo.
	if [ $apply -eq 1 ]; then patched_files "${patches[@]}"; fi >"$touched_list"
	log "built $key in ${wall} s (make ${make_time} s)"

	# Keep the newest few builds; each holds a vmlinux with debug info.
	local old
	{ ls -1dt "$kdir"/[0-9a-f][0-9a-f][0-9a-f][0-9a-f]*/ 2>/dev/null || true; } | tail -n +$((keep_builds + 1)) |
		while IFS= read -r old; do rm -rf "$old"; done
}

# The baseline the series' cost is measured against: the same source, tinyconfig + the same
# fragment, no patches (so CONFIG_BPF_OOM, which the series adds, is absent). It builds from
# the pristine tree with O= into its own directory, leaving the patched build's objects alone,
# and its key leaves out the patches and this script, so editing the series does not rebuild it.
build_vanilla() {
	local start=$SECONDS
	if [ -z "${KERNEL_SRC:-}" ]; then
		debian_source
	else
		user_source
	fi
	local vdir=$out/kernel-vanilla key
	key=$({
		echo "$src_version"
		echo "--- kernel.config"
		cat "$fragment"
	} | sha256sum | cut -c1-16)
	result=$vdir/$key
	if [ -f "$result/bzImage" ]; then
		log "cached vanilla $key"
		return 0
	fi
	mkdir -p "$vdir"
	exec 9>"$vdir/.lock"
	flock 9
	[ -f "$result/bzImage" ] && return 0
	if [ -z "${KERNEL_SRC:-}" ]; then debian_untar; fi
	local vbuild=$vdir/build blog=$vdir/build.log
	mkdir -p "$vbuild"
	: >"$blog"
	log "building vanilla $key from $src_desc without the series (log: $blog)"
	{
		make -C "$pristine" O="$vbuild" tinyconfig &&
			"$pristine/scripts/kconfig/merge_config.sh" -m -O "$vbuild" "$vbuild/.config" "$fragment" &&
			make -C "$pristine" O="$vbuild" olddefconfig
	} >>"$blog" 2>&1 || {
		tail -n 30 "$blog" >&2
		die "vanilla configuration failed (log: $blog)"
	}
	# Every fragment line must stick but CONFIG_BPF_OOM, which only the series defines.
	local missing=() line
	mapfile -t missing < <(missing_options "$vbuild/.config" | grep -v '^CONFIG_BPF_OOM=' || true)
	if [ ${#missing[@]} -gt 0 ]; then
		for line in "${missing[@]}"; do
			log "warning: $line: .config has $(config_has "$line" "$vbuild/.config")"
		done
		die "these kernel.config options did not stick in the vanilla build:" "${missing[@]}"
	fi
	if ! make -C "$pristine" O="$vbuild" -j"$(nproc)" bzImage >>"$blog" 2>&1; then
		grep -E 'error|Error' "$blog" | tail -n 20 >&2 || true
		die "vanilla make bzImage failed (log: $blog)"
	fi
	local tmp=$vdir/.$key.tmp
	rm -rf "$tmp"
	mkdir "$tmp"
	cp "$vbuild/arch/x86/boot/bzImage" "$tmp/"
	cp "$vbuild/.config" "$tmp/config"
	{
		echo "source: $src_desc (vanilla: no patches)"
		echo "source-version: $src_version"
		echo "wall-seconds: $((SECONDS - start))"
	} >"$tmp/info"
	rm -rf "$result"
	mv "$tmp" "$result"
	log "built vanilla $key in $((SECONDS - start)) s"
}

vmlinux_h() {
	local check=0
	case ${1:-} in
	"") ;;
	--check) check=1 ;;
	*) die "usage: $0 vmlinux-h [--check]" ;;
	esac
	build_kernel
	"$here/deps.sh" fetch_deb bookworm-backports bpftool "$out/bpftool" >&2 ||
		die "could not download bpftool from bookworm-backports"
	local bpftool=$out/bpftool/usr/sbin/bpftool
	local dest=$top/bpf/vmlinux/x86_64/vmlinux.h
	local regen="./vm-tests/run vmlinux-h"
	vmlinux_tmp=$(mktemp) # global: the EXIT trap runs after this function has returned
	trap 'rm -f "$vmlinux_tmp"' EXIT
	"$bpftool" btf dump file "$result/vmlinux" format c >"$vmlinux_tmp" ||
		die "bpftool btf dump failed for $result/vmlinux"

	if [ $check -eq 0 ]; then
		mkdir -p "$(dirname "$dest")"
		chmod 644 "$vmlinux_tmp"
		mv "$vmlinux_tmp" "$dest"
		log "wrote ${dest#"$top"/} ($(wc -l <"$dest") lines) from kernel $(basename "$result")"
		return 0
	fi
	[ -f "$dest" ] || die "${dest#"$top"/} is missing; generate it with: $regen"
	if cmp -s "$vmlinux_tmp" "$dest"; then
		log "${dest#"$top"/} matches kernel $(basename "$result")"
		return 0
	fi
	local added removed
	added=$(diff "$dest" "$vmlinux_tmp" | grep -c '^>' || true)
	removed=$(diff "$dest" "$vmlinux_tmp" | grep -c '^<' || true)
	echo "kernel: ${dest#"$top"/} differs from the BTF of kernel $(basename "$result"):" \
		"$added line(s) would be added, $removed removed. First differences:" >&2
	diff -u "$dest" "$vmlinux_tmp" --label committed --label regenerated | head -n 40 >&2 || true
	die "${dest#"$top"/} is stale; regenerate it with: $regen"
}

case ${1:-} in
"")
	build_kernel
	echo "$result/bzImage"
	;;
vmlinux-h)
	shift
	vmlinux_h "$@"
	;;
vanilla)
	build_vanilla
	echo "$result/bzImage"
	;;
*)
	die "usage: $0 [vmlinux-h [--check] | vanilla]"
	;;
esac
