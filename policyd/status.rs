//! `policyd status`: every BPF OOM handler attached right now, whoever
//! attached it. [`discover`] asks the kernel and /proc what is attached;
//! [`render`] shows it as text or JSON.

pub mod discover;
pub mod render;

use std::path::Path;

use anyhow::Result;

use crate::cli::StatusArgs;
use crate::loader::{self, OomOpsLayout};

/// `policyd status [--json]`.
pub fn run(args: &StatusArgs, cgroup_root: Option<&Path>, proc_root: &Path) -> Result<()> {
    loader::route_libbpf_log();
    let handlers = match OomOpsLayout::supported() {
        Some(false) => {
            if args.json {
                println!("[]");
            } else {
                println!(
                    "no BPF OOM handlers attached ({})",
                    loader::no_oom_support_message()
                );
            }
            return Ok(());
        }
        _ => discover::handlers(cgroup_root, proc_root)?,
    };
    if args.json {
        println!("{}", render::json(&handlers)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        print!("{}", render::text(&handlers, now));
    }
    Ok(())
}
