//! The skeleton of policyd's BPF OOM handler (bpf/policies/policyd.bpf.c), as
//! build.rs generates it.

#[rustfmt::skip]
pub mod skel { include!(concat!(env!("OUT_DIR"), "/policyd.skel.rs")); }
