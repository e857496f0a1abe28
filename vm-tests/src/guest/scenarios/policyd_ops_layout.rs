//! Where the running kernel keeps the handler and its name in a `bpf_oom_ops` struct_ops
//! map's value, which policyd fills itself: `policyd load` takes it from the policy
//! object's find_ops_layout() (CO-RE relocations against the kernel's BTF, resolved as
//! libbpf loads the object), `policyd status` from its own read of the kernel's BTF. The
//! two must agree, for every policy's object.

use anyhow::{ensure, Context, Result};
use policyd::abi;
use policyd::loader::{OomOpsLayout, PolicyObject, Settings};
use policyd::policy::POLICIES;

use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-ops-layout", run)
        .needs_policyd()
        .timeout_s(120)
}

fn run() -> Result<()> {
    let from_btf =
        OomOpsLayout::of_running_kernel().context("reading the layout from the kernel's BTF")?;
    println!("from /sys/kernel/btf/vmlinux: {from_btf:?}");
    for policy in POLICIES.iter().map(|p| p.name) {
        let obj = PolicyObject::open_load(&Settings {
            policy,
            dry_run: false,
            max_cgroups: abi::MAX_CGROUPS,
            walk_steps: abi::WALK_STEPS,
            tree_cgroups: None,
        })
        .with_context(|| format!("loading the {policy} object"))?;
        ensure!(
            obj.ops_layout() == &from_btf,
            "the {policy} object found {:?}, the kernel's BTF says {from_btf:?}",
            obj.ops_layout()
        );
        println!("{policy}: the object found the same");
    }
    Ok(())
}
