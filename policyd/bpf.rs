//! The skeletons of policyd's BPF objects, as build.rs generates them:
//! `skel` for the OOM handler (bpf/policies/policyd.bpf.c), `kills_skel` for
//! the OOM kill tracer (bpf/trace/kills.bpf.c). Their `types` modules hold
//! Rust for every type in each object's BTF, those of the shared headers
//! among them ([`crate::abi`]).

#[rustfmt::skip]
pub mod skel { include!(concat!(env!("OUT_DIR"), "/policyd.skel.rs")); }

#[rustfmt::skip]
pub mod kills_skel { include!(concat!(env!("OUT_DIR"), "/kills.skel.rs")); }
