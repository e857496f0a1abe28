//! `policyd status`: what is attached where, and recent OOM decisions.
//!
//! TEMPORARY STUB: the BPF-loading side replaces this module.

use anyhow::bail;

pub fn run(json: bool) -> anyhow::Result<()> {
    let _ = json;
    bail!("status is not wired to the kernel yet")
}
