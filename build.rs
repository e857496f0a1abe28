//! Compiles policyd's BPF OOM handler, bpf/policies/policyd.bpf.c (one object
//! for every policy), into a libbpf-rs skeleton `policyd.skel.rs` in OUT_DIR
//! (included by policyd/bpf.rs); the object `policyd.bpf.o` stays there too:
//! host tests read its BTF. build-support holds the clang setup vm-tests shares;
//! `POLICYD_CLANG` overrides the compiler.

use build_support::BpfCompiler;

fn main() {
    let bpf = BpfCompiler::new(
        "POLICYD_CLANG",
        "policyd's BPF OOM handler",
        "bpf/vmlinux/x86_64",
        "bpf/policies",
    );
    bpf.skeleton(
        "policyd",
        "bpf/policies/policyd.bpf.c",
        &["bpf/policies/policyd.h"],
    );
}
