//! The BPF policy skeletons build.rs generates, one per `bpf/policies/<name>.bpf.c`.
//!
//! Each module is there only if its policy source existed at build time
//! (`--cfg policyd_skel="<name>"`), so the crate builds while a policy is
//! being written; loading a policy that is missing says so.

#[rustfmt::skip]
#[cfg(policyd_skel = "priority")]
pub mod priority { include!(concat!(env!("OUT_DIR"), "/priority.skel.rs")); }
#[rustfmt::skip]
#[cfg(policyd_skel = "largest")]
pub mod largest { include!(concat!(env!("OUT_DIR"), "/largest.skel.rs")); }
#[rustfmt::skip]
#[cfg(policyd_skel = "badness")]
pub mod badness { include!(concat!(env!("OUT_DIR"), "/badness.skel.rs")); }
#[rustfmt::skip]
#[cfg(policyd_skel = "observe")]
pub mod observe { include!(concat!(env!("OUT_DIR"), "/observe.skel.rs")); }
