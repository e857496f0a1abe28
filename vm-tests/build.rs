//! Compiles the test BPF OOM handler vm-tests/bpf/oom_test.bpf.c into a libbpf-rs skeleton
//! `oom_test.skel.rs` in OUT_DIR (included by src/guest/kutil.rs), the benchmarks'
//! stopwatch vm-tests/bpf/bench.bpf.c into `bench.skel.rs` (included by src/guest/bench.rs),
//! and vm-tests/bpf/other_ops.bpf.c, a struct_ops of another subsystem, into
//! `other_ops.skel.rs` (kernel_attach_opt_in.rs), and vm-tests/bpf/denied.bpf.c, handlers
//! the kernel must refuse, into `denied.skel.rs` (kernel_handler_denied.rs), against the patched kernel's vmlinux.h at
//! the repository root. build-support holds the clang setup policyd shares;
//! `VMTESTS_CLANG` overrides the compiler.

use build_support::BpfCompiler;

fn main() {
    let bpf = BpfCompiler::new(
        "VMTESTS_CLANG",
        "vm-tests' BPF code",
        "../bpf/vmlinux/x86_64",
        "bpf",
    );
    bpf.skeleton("oom_test", "bpf/oom_test.bpf.c", &["bpf/oom_test.h"]);
    bpf.skeleton("bench", "bpf/bench.bpf.c", &["bpf/bench.h"]);
    bpf.skeleton("other_ops", "bpf/other_ops.bpf.c", &[]);
    bpf.skeleton("denied", "bpf/denied.bpf.c", &[]);
}
