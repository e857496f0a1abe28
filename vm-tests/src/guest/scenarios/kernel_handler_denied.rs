//! A BPF OOM handler runs under oom_lock, and a task can hold its mmap_lock while it waits
//! for oom_lock: a handler must not read another task's memory, which takes that lock. The
//! kernel refuses to load handlers that call the bpf_copy_from_user_task() helper or the
//! bpf_copy_from_user_task_str() kfunc (vm-tests/bpf/denied.bpf.c), while a syscall program
//! calling the same kfunc still loads: the refusal is for OOM handlers only.

use std::mem::MaybeUninit;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::guest::Scenario;

#[rustfmt::skip]
mod denied { include!(concat!(env!("OUT_DIR"), "/denied.skel.rs")); }
use denied::DeniedSkelBuilder;

pub fn scenario() -> Scenario {
    Scenario::new("kernel-handler-denied-calls", run).timeout_s(60)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    HelperHandler,
    KfuncHandler,
    KfuncSyscall,
}

/// Loads only `part` of denied.bpf.c: Ok if the kernel accepted it.
fn load(part: Part) -> Result<std::result::Result<(), String>> {
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = DeniedSkelBuilder::default()
        .open(storage)
        .context("opening the denied BPF object")?;
    open.maps
        .helper_ops
        .set_autocreate(part == Part::HelperHandler)
        .context("helper_ops autocreate")?;
    open.maps
        .kfunc_ops
        .set_autocreate(part == Part::KfuncHandler)
        .context("kfunc_ops autocreate")?;
    open.progs
        .uses_helper
        .set_autoload(part == Part::HelperHandler);
    open.progs
        .uses_kfunc
        .set_autoload(part == Part::KfuncHandler);
    open.progs
        .syscall_uses_kfunc
        .set_autoload(part == Part::KfuncSyscall);
    Ok(open.load().map(drop).map_err(|e| format!("{e:#}")))
}

fn run() -> Result<()> {
    match load(Part::KfuncSyscall)? {
        Ok(()) => println!("a syscall program calling bpf_copy_from_user_task_str() loads"),
        Err(e) => bail!(
            "a syscall program calling bpf_copy_from_user_task_str() was refused ({e}): the \
             refusal must be for OOM handlers only"
        ),
    }
    for (part, call) in [
        (Part::HelperHandler, "the bpf_copy_from_user_task() helper"),
        (
            Part::KfuncHandler,
            "the bpf_copy_from_user_task_str() kfunc",
        ),
    ] {
        match load(part)? {
            Ok(()) => bail!("an OOM handler calling {call} loaded; it must be refused"),
            Err(e) => println!("an OOM handler calling {call} is refused: {e}"),
        }
    }
    Ok(())
}
