//! The skeleton of policyd's BPF OOM handler (bpf/policies/policyd.bpf.c), as
//! build.rs generates it. `skel::types` holds Rust for every type in the
//! object's BTF, those of bpf/policies/policyd.h among them ([`crate::abi`]).

#[rustfmt::skip]
pub mod skel { include!(concat!(env!("OUT_DIR"), "/policyd.skel.rs")); }
