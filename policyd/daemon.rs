//! Loading a policy into the kernel and running the daemon.
//!
//! TEMPORARY STUB: the BPF-loading side replaces this module. The CLI has
//! already parsed and validated the configuration when it calls [`run`].

use std::path::PathBuf;

use anyhow::bail;

use crate::config::Config;
use crate::policy::PolicyName;

/// Everything `policyd load` decided before touching the kernel.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub policy: PolicyName,
    /// The validated configuration.
    pub config: Config,
    /// The file `config` was read from.
    pub config_path: PathBuf,
    /// Cgroup to attach to, relative to the cgroup2 mount ("/" = system-wide).
    pub cgroup: String,
    /// Load and verify, but do not attach.
    pub dry_run: bool,
}

pub fn run(req: LoadRequest) -> anyhow::Result<()> {
    let _ = req;
    bail!("load is not wired to the kernel yet")
}
