//! Compiles policyd's two BPF objects into libbpf-rs skeletons in OUT_DIR
//! (included by policyd/bpf.rs); the objects themselves (`<name>.bpf.o`) stay
//! there too: policyd embeds them, host tests read their BTF.
//!
//! * `policyd`: the BPF OOM handler, bpf/policies/policyd.bpf.c (one object
//!   for every policy); needs the BPF OOM patches;
//! * `kills`: the OOM kill tracer, bpf/trace/kills.bpf.c; loads on any
//!   kernel with BTF.
//!
//! build-support holds the clang setup vm-tests shares; `POLICYD_CLANG`
//! overrides the compiler.

use build_support::BpfCompiler;

fn main() {
    BpfCompiler::new(
        "POLICYD_CLANG",
        "policyd's BPF OOM handler",
        "bpf/vmlinux/x86_64",
        "bpf/policies",
    )
    .skeleton(
        "policyd",
        "bpf/policies/policyd.bpf.c",
        &["bpf/policies/policyd.h", "bpf/per_cpu.bpf.h"],
    );
    BpfCompiler::new(
        "POLICYD_CLANG",
        "policyd's OOM kill tracer",
        "bpf/vmlinux/x86_64",
        "bpf/trace",
    )
    .skeleton(
        "kills",
        "bpf/trace/kills.bpf.c",
        &["bpf/trace/kills.h", "bpf/per_cpu.bpf.h"],
    );
}
