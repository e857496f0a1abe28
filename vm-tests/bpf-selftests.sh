#!/usr/bin/env bash
# Builds the series' own BPF selftests (tools/testing/selftests/bpf: prog_tests/bpf_oom.c and
# progs/test_bpf_oom*.c, from kernel-patches/v7.3) into a static test_progs that runs only
# them, for the kernel-selftests-bpf-oom scenario. kernel.sh calls it after building the
# kernel, and caches the binary next to the kernel.
#
#   vm-tests/bpf-selftests.sh SRC KBUILD OUT
#
# SRC is the patched kernel tree, KBUILD its build directory (vmlinux, include/generated),
# OUT where test_progs goes. Building the whole of test_progs (about 800 BPF objects and
# every test) would take far longer on two cores than the kernel itself, so this builds
# what `make -C tools/testing/selftests/bpf test_progs` would build for these two files:
# libbpf (static), vmlinux.h from the kernel's BTF, the BPF object and its skeleton (clang,
# bpftool), and the test_progs harness with the helpers it links. The compiler flags are
# the selftests Makefile's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")

[ $# -eq 3 ] || { echo "usage: $0 SRC KBUILD OUT" >&2; exit 2; }
src=$1
kbuild=$2
out=$3
sb=$src/tools/testing/selftests/bpf
obj=$out/bpf-selftests.obj
clang=${VMTESTS_CLANG:-clang-19}
jobs=$(nproc)

log() { echo "bpf-selftests: $*" >&2; }
die() {
	echo "bpf-selftests: error: $*" >&2
	exit 1
}

# The BPF objects prog_tests/bpf_oom.c loads, each with its skeleton.
bpf_objs=(test_bpf_oom test_bpf_oom_v3)
for f in "$sb/prog_tests/bpf_oom.c" "${bpf_objs[@]/%/.c}"; do
	case $f in /*) ;; *) f=$sb/progs/$f ;; esac
	[ -f "$f" ] || die "$f is missing: is the series (0011) applied to $src?"
done
[ -f "$kbuild/vmlinux" ] || die "no vmlinux in $kbuild"

"$here/deps.sh" fetch_deb bookworm-backports bpftool "$top/target/vm-tests/bpftool" >&2 ||
	die "could not download bpftool from bookworm-backports"
bpftool=$top/target/vm-tests/bpftool/usr/sbin/bpftool

rm -rf "$obj"
mkdir -p "$obj/prog_tests" "$obj/include" "$obj/libbpf"

log "libbpf (static) from tools/lib/bpf"
make -s -C "$src/tools/lib/bpf" -j"$jobs" OUTPUT="$obj/libbpf/" DESTDIR="$obj" \
	prefix= EXTRA_CFLAGS="-O2" "$obj/libbpf/libbpf.a" install_headers >&2

log "vmlinux.h from the kernel's BTF"
"$bpftool" btf dump file "$kbuild/vmlinux" format c >"$obj/include/vmlinux.h"

# The selftests Makefile's BPF_CFLAGS and CLANG_BPF_BUILD_RULE; clang looks for the
# host's headers (errno.h) only where told, as in its get_sys_includes.
sys_includes=$("$clang" -v -E - </dev/null 2>&1 |
	sed -n '/<...> search starts here:/,/End of search list./{ s| \(/.*\)|-idirafter \1|p }')
for b in "${bpf_objs[@]}"; do
	log "progs/$b.c"
	# shellcheck disable=SC2086 # sys_includes is a list of options
	"$clang" -g -Wall -Werror -D__TARGET_ARCH_x86 -mlittle-endian \
		-I"$obj/include" -I"$sb" -I"$src/tools/include/uapi" -I"$src/tools/include" \
		-std=gnu11 -fno-strict-aliasing -Wno-microsoft-anon-tag -fms-extensions \
		-Wno-compare-distinct-pointer-types -Wno-initializer-overrides $sys_includes \
		-O2 --target=bpfel -mcpu=v3 -c "$sb/progs/$b.c" -o "$obj/$b.bpf.o"
	"$bpftool" gen object "$obj/$b.linked.o" "$obj/$b.bpf.o"
	"$bpftool" gen skeleton "$obj/$b.linked.o" name "$b" >"$obj/$b.skel.h"
done

# The runner's list of tests, as the Makefile generates it from prog_tests/*.c.
{
	echo '/* Generated header, do not edit */'
	sed -n -E 's/^void (serial_)?test_([a-zA-Z0-9_]+)\((void)?\).*/DEFINE_TEST(\2)/p' \
		"$sb/prog_tests/bpf_oom.c"
} >"$obj/prog_tests/tests.h"
grep -q DEFINE_TEST "$obj/prog_tests/tests.h" || die "no test function in prog_tests/bpf_oom.c"
# The certificate of the signed-program tests, none of which is linked here.
printf 'unsigned char test_progs_verification_cert[] = {};\nunsigned int test_progs_verification_cert_len;\n' \
	>"$obj/verification_cert.h"

log "test_progs (static) with prog_tests/bpf_oom.c"
cflags=(-O0 -std=gnu11 -D_GNU_SOURCE= -DHAVE_GENHDR -Wall -Wno-unused-but-set-variable
	-fno-omit-frame-pointer -I"$obj" -I"$sb" -I"$obj/include" -I"$kbuild/include/generated"
	-I"$src/tools/lib" -I"$src/tools/include" -I"$src/tools/arch/x86/include"
	-I"$src/tools/include/uapi")
harness=(test_progs.c cgroup_helpers.c testing_helpers.c trace_helpers.c network_helpers.c
	json_writer.c disasm.c)
objs=()
for c in "$sb/prog_tests/bpf_oom.c" "${harness[@]/#/$sb/}" "$here/selftests/test_progs_shims.c"; do
	o=$obj/$(basename "${c%.c}").o
	gcc "${cflags[@]}" -c "$c" -o "$o"
	objs+=("$o")
done
# test_progs needs a session key (CONFIG_KEYS) and network namespaces (CONFIG_NET_NS)
# for tests not linked here, which the test kernel lacks: see test_progs_shims.c.
gcc -static -Wl,--wrap=syscall,--wrap=open,--wrap=setns -o "$out/test_progs.tmp" "${objs[@]}" "$obj/libbpf/libbpf.a" \
	-lelf -lz -lzstd -lrt -lpthread
mv "$out/test_progs.tmp" "$out/test_progs"
rm -rf "$obj"
log "built $out/test_progs"
