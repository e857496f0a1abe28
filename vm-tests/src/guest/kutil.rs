//! Helpers for the kernel-* scenarios, which drive the BPF OOM interface directly with the
//! purpose-made handler in vm-tests/bpf/oom_test.bpf.c: loading it, attaching it to a
//! cgroup with a BPF_F_CGROUP_FD struct_ops link, steering it through its globals, reading
//! its counters, and declaring OOMs with its SEC("syscall") program.

// A toolbox: not every helper has a user in every scenario.
#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::ptr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, OpenObject, ProgramInput};
use policyd::loader::{LinkInfo, OomOpsLayout};

use super::util::{self, Cgroup, Hog, HogSpec, MemoryEvents};

#[rustfmt::skip]
pub mod oom_test { include!(concat!(env!("OUT_DIR"), "/oom_test.skel.rs")); }

use oom_test::types::oom_test_action;
pub use oom_test::types::oom_test_stats as Stats;
use oom_test::{OomTestSkel, OomTestSkelBuilder};

/// The link_create.flags bit of the patched kernel that makes target_fd a cgroup fd, and
/// BPF_LINK_CREATE for a struct_ops map: policyd's own.
pub use policyd::loader::{link_create, BPF_F_CGROUP_FD};
/// bpf_out_of_memory() flag: wait for a concurrent OOM instead of failing with -EBUSY.
pub const BPF_OOM_FLAGS_WAIT_ON_OOM_LOCK: u64 = 1 << 0;
/// What the handler writes into stats.last_kill_err when target_pid names no task.
pub const KILL_ERR_NO_TASK: i32 = -3;

/// What the test handler does when it is called (`action` in oom_test.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: return `claim`.
    Defer,
    /// Nothing either, but the scenario means to return `claim` = 1 without a kill.
    ClaimOnly,
    /// bpf_oom_kill_process(target_pid), then return `claim`.
    KillTarget,
    /// bpf_oom_await_victim() on an exiting victim of the OOMing memcg, else KillTarget.
    AwaitOrKill,
    /// Busy-waits inside the handler until [`Handler::release_spin`] (or the timeout set
    /// with [`Handler::arm_spin`]), then KillTarget.
    SpinThenKill,
    /// Creates task storage on target_pid (an allocation during the OOM), then KillTarget.
    StoreThenKill,
}

impl Action {
    fn raw(self) -> oom_test_action {
        match self {
            Action::Defer => oom_test_action::OOM_TEST_DEFER,
            Action::ClaimOnly => oom_test_action::OOM_TEST_CLAIM_ONLY,
            Action::KillTarget => oom_test_action::OOM_TEST_KILL_TARGET,
            Action::AwaitOrKill => oom_test_action::OOM_TEST_AWAIT_OR_KILL,
            Action::SpinThenKill => oom_test_action::OOM_TEST_SPIN_THEN_KILL,
            Action::StoreThenKill => oom_test_action::OOM_TEST_STORE_THEN_KILL,
        }
    }
}

/// One loaded, not yet attached instance of the test handler. Every load is independent
/// (own maps, own counters), so a scenario can load it twice for two cgroups.
pub struct Handler {
    skel: OomTestSkel<'static>,
}

impl Handler {
    /// Opens and loads the handler with `action`, `target_pid` and `claim` set.
    pub fn load(action: Action, target_pid: i32, claim: i32) -> Result<Handler> {
        // The skeleton borrows its object storage; a scenario loads a handful of
        // handlers at most and then powers the VM off, so the storage is leaked.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = OomTestSkelBuilder::default()
            .open(storage)
            .context("opening the oom_test BPF object")?;
        let bss = open
            .maps
            .bss_data
            .as_deref_mut()
            .context("oom_test has no .bss")?;
        bss.action = action.raw();
        bss.target_pid = target_pid;
        bss.claim = claim;
        let skel = open
            .load()
            .context("loading the oom_test BPF object (verifier log above)")?;
        prepare_struct_ops(&skel)?;
        Ok(Handler { skel })
    }

    pub fn skel(&self) -> &OomTestSkel<'static> {
        &self.skel
    }

    /// Changes what the handler does from its next call on (.bss is mmapped: no syscall).
    pub fn set(&mut self, action: Action, target_pid: i32, claim: i32) {
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .expect(".bss is mmapped after load");
        // SAFETY: plain stores into the mmapped .bss, which the kernel reads concurrently.
        unsafe {
            ptr::write_volatile(&mut bss.action, action.raw());
            ptr::write_volatile(&mut bss.target_pid, target_pid);
            ptr::write_volatile(&mut bss.claim, claim);
        }
    }

    /// Arms SpinThenKill: the next spin waits for [`Handler::release_spin`] at most
    /// `timeout`.
    pub fn arm_spin(&mut self, timeout: Duration) {
        let bss = self.bss_mut();
        // SAFETY: plain stores into the mmapped .bss, which the kernel reads concurrently.
        unsafe {
            ptr::write_volatile(&mut bss.release_spin, 0);
            ptr::write_volatile(&mut bss.spin_timeout_ns, timeout.as_nanos() as u64);
        }
    }

    /// Lets a spinning SpinThenKill handler go on to its kill.
    pub fn release_spin(&mut self) {
        let bss = self.bss_mut();
        // SAFETY: a plain store into the mmapped .bss, which the kernel reads concurrently.
        unsafe { ptr::write_volatile(&mut bss.release_spin, 1) };
    }

    fn bss_mut(&mut self) -> &mut oom_test::types::bss {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .expect(".bss is mmapped after load")
    }

    /// A snapshot of the handler's counters.
    pub fn stats(&self) -> Stats {
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref()
            .expect(".bss is mmapped after load");
        // SAFETY: a plain load from the mmapped .bss, which the kernel writes concurrently.
        unsafe { ptr::read_volatile(&bss.stats) }
    }

    /// Attaches the handler to `cgroup` (the root cgroup: system-wide).
    pub fn attach(&self, cgroup: &Cgroup) -> Result<OwnedFd> {
        try_attach(&self.skel, cgroup).with_context(|| attach_what(cgroup))
    }

    /// Runs the `declare_oom` syscall program: `times` (1 or 2) back-to-back
    /// bpf_out_of_memory() calls on the memcg of `cgroup_id` (0: system-wide).
    pub fn declare_oom(&self, cgroup_id: u64, flags: u64, times: i32) -> Result<Declared> {
        run_declare_oom(&self.skel, cgroup_id, flags, times)
    }
}

/// Attaches the skeleton's struct_ops map to `cgroup` with a BPF_F_CGROUP_FD link, after
/// storing its value ([`prepare_struct_ops`]) if that was not done yet. The link lives as
/// long as the returned fd (and its duplicates): closing it detaches the handler.
pub fn attach_handler(skel: &OomTestSkel<'_>, cgroup: &Cgroup) -> Result<OwnedFd> {
    prepare_struct_ops(skel)?;
    try_attach(skel, cgroup).with_context(|| attach_what(cgroup))
}

fn attach_what(cgroup: &Cgroup) -> String {
    format!(
        "attaching the test OOM handler to {} (bpf_link_create with BPF_F_CGROUP_FD)",
        cgroup.path()
    )
}

/// [`attach_handler`] for a prepared skeleton (every [`Handler`] is), with the bare errno,
/// for scenarios that expect a failure.
pub fn try_attach(skel: &OomTestSkel<'_>, cgroup: &Cgroup) -> io::Result<OwnedFd> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
        .open(cgroup.dir())?;
    link_create(
        skel.maps.oom_test_ops.as_fd().as_raw_fd(),
        dir.as_raw_fd(),
        BPF_F_CGROUP_FD,
    )
}

/// Attaches a prepared handler the way libbpf's bpf_map__attach_struct_ops() does, with no
/// cgroup: the kernel puts it on the root cgroup (system-wide).
pub fn try_attach_system_wide(skel: &OomTestSkel<'_>) -> io::Result<OwnedFd> {
    link_create(skel.maps.oom_test_ops.as_fd().as_raw_fd(), 0, 0)
}

/// Stores the kernel's value of the struct_ops map (the handler's program and name, laid
/// out as the running kernel's BTF says: policyd's [`OomOpsLayout`]), as a link needs it.
/// A value can be stored only once: EBUSY means it is there already.
pub fn prepare_struct_ops(skel: &OomTestSkel<'_>) -> Result<()> {
    let map = &skel.maps.oom_test_ops;
    // SAFETY: the skeleton points at the struct_ops' user-side value, alive with the object.
    let name = unsafe { &(*skel.struct_ops().oom_test_ops).name };
    let name: Vec<u8> = name.iter().map(|&c| c as u8).collect();
    let value = OomOpsLayout::of_running_kernel()?.value(
        map.value_size() as usize,
        skel.progs.handle_out_of_memory.as_fd().as_raw_fd(),
        &name,
    )?;
    let key = 0u32;
    // SAFETY: key and value are valid for the map's key and value sizes.
    let rc = unsafe {
        libbpf_sys::bpf_map_update_elem(
            map.as_fd().as_raw_fd(),
            (&key as *const u32).cast(),
            value.as_ptr().cast(),
            0,
        )
    };
    if rc < 0 && rc != -nix::libc::EBUSY {
        return Err(io::Error::from_raw_os_error(-rc))
            .context("storing the handler in its struct_ops map");
    }
    Ok(())
}

/// What bpf_link_get_info_by_fd() says about a struct_ops link, as policyd reads it.
pub fn link_info(link: &impl AsFd) -> Result<LinkInfo> {
    policyd::loader::link_info(link.as_fd()).context("bpf_link_get_info_by_fd")
}

/// The link's /proc/self/fdinfo text.
pub fn fdinfo(fd: &impl AsFd) -> Result<String> {
    util::read_file(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
}

/// The value of a `key:\tvalue` line of fdinfo.
pub fn fdinfo_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Waits up to `timeout` for poll(2) on `fd` to report any of `events` (or POLLHUP/POLLERR,
/// which poll always reports); returns the revents, 0 on timeout.
pub fn poll_fd(fd: &impl AsFd, events: i16, timeout: Duration) -> Result<i16> {
    let mut pfd = nix::libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { nix::libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(nix::libc::EINTR) {
                continue;
            }
            return Err(e).context("poll");
        }
        return Ok(if rc == 0 { 0 } else { pfd.revents });
    }
}

/// The context of `declare_oom`, laid out as struct oom_test_declare in oom_test.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DeclareArgs {
    cgroup_id: u64,
    flags: u64,
    times: i32,
    ret: [i32; 2],
}

/// What one run of `declare_oom` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declared {
    /// The program's own return value: 0, or -ENOENT for an unknown cgroup id.
    pub prog_ret: i32,
    /// bpf_out_of_memory()'s result for each OOM declared (1 = memory freed).
    pub ret: [i32; 2],
}

/// Runs the `declare_oom` syscall program through BPF_PROG_TEST_RUN with its context in
/// and out (a syscall program's context is copied back to ctx_in).
pub fn run_declare_oom(
    skel: &OomTestSkel<'_>,
    cgroup_id: u64,
    flags: u64,
    times: i32,
) -> Result<Declared> {
    let mut args = DeclareArgs {
        cgroup_id,
        flags,
        times,
        ret: [i32::MIN; 2],
    };
    // SAFETY: DeclareArgs is repr(C) plain data; the slice covers exactly it.
    let ctx = unsafe {
        std::slice::from_raw_parts_mut(
            (&mut args as *mut DeclareArgs).cast::<u8>(),
            size_of::<DeclareArgs>(),
        )
    };
    let out = skel
        .progs
        .declare_oom
        .test_run(ProgramInput {
            context_in: Some(ctx),
            ..Default::default()
        })
        .context("running the declare_oom syscall program (BPF_PROG_TEST_RUN)")?;
    Ok(Declared {
        prog_ret: out.return_value as i32,
        ret: args.ret,
    })
}

/// Sets /proc/sys/vm/oom_dump_tasks: 0 keeps the serial console short in OOM-heavy runs.
pub fn set_oom_dump_tasks(on: bool) -> Result<()> {
    util::write_file("/proc/sys/vm/oom_dump_tasks", if on { "1" } else { "0" })
}

/// Keeps kernel messages off the serial console (they stay in the kernel log, which the
/// host reads and checks after the scenario) until dropped: under TCG, printing each OOM
/// report on the console takes longer than the OOM itself.
pub struct QuietConsole {
    saved: String,
}

impl QuietConsole {
    pub fn new() -> Result<QuietConsole> {
        let saved = util::read_file("/proc/sys/kernel/printk")?;
        let saved = saved.split_whitespace().next().unwrap_or("7").to_string();
        util::write_file("/proc/sys/kernel/printk", "1")?;
        Ok(QuietConsole { saved })
    }
}

impl Drop for QuietConsole {
    fn drop(&mut self) {
        let _ = util::write_file("/proc/sys/kernel/printk", &self.saved);
    }
}

/// memory.events counters gained since `before`.
pub fn events_since(cgroup: &Cgroup, before: &MemoryEvents) -> Result<MemoryEvents> {
    let now = cgroup.events()?;
    Ok(MemoryEvents {
        low: now.low - before.low,
        high: now.high - before.high,
        max: now.max - before.max,
        oom: now.oom - before.oom,
        oom_kill: now.oom_kill - before.oom_kill,
        oom_group_kill: now.oom_group_kill - before.oom_group_kill,
    })
}

/// Fails unless `cgroup` gained exactly `want` oom_kill events since `before`.
pub fn expect_oom_kills(cgroup: &Cgroup, before: &MemoryEvents, want: u64) -> Result<()> {
    let d = events_since(cgroup, before)?;
    ensure!(
        d.oom_kill == want,
        "{}: memory.events oom_kill grew by {}, expected {want} (delta {d:?})",
        cgroup.path(),
        d.oom_kill
    );
    Ok(())
}

/// Starts a hog that touches `mib` MiB and then sleeps.
pub fn fixed_hog(cgroup: &Cgroup, mib: u64) -> Result<Hog> {
    Hog::start(cgroup, &HogSpec::fixed(mib), Duration::from_secs(30))
}

/// Starts a hog that touches `mib` MiB, then allocates without end.
pub fn growing_hog(cgroup: &Cgroup, mib: u64) -> Result<Hog> {
    Hog::start(cgroup, &HogSpec::growing(mib), Duration::from_secs(30))
}

/// The kernel log lines since `kmsg`'s mark that contain `needle`.
pub fn log_lines_with(log: &[String], needle: &str) -> Vec<String> {
    log.iter().filter(|l| l.contains(needle)).cloned().collect()
}

/// The line the OOM report prints when a BPF handler chose the victim (patch 6). The
/// handler is named "vm_tests" in oom_test.bpf.c: the kernel takes struct_ops names
/// through bpf_obj_name_cpy(), which allows only [A-Za-z0-9_.].
pub const HANDLER_REPORT_LINE: &str = "oom victim chosen by BPF OOM handler \"vm_tests\"";

/// The start of the kill line when the test handler killed: oom_kill_process() prints the
/// message bpf_oom_kill_process() was given instead of "Out of memory".
pub const HANDLER_KILL_LINE: &str = "vm-tests handler: Killed process";

/// Fails with the whole log unless some line contains `needle`.
pub fn expect_log(log: &[String], needle: &str) -> Result<()> {
    if log.iter().any(|l| l.contains(needle)) {
        return Ok(());
    }
    bail!(
        "no {needle:?} in the kernel log; it has:\n{}",
        log.join("\n")
    )
}

/// Fails if some line contains `needle`.
pub fn expect_no_log(log: &[String], needle: &str) -> Result<()> {
    let hits = log_lines_with(log, needle);
    ensure!(
        hits.is_empty(),
        "unexpected {needle:?} in the kernel log:\n{}",
        hits.join("\n")
    );
    Ok(())
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "prog_ret {} ret {:?}", self.prog_ret, self.ret)
    }
}

/// Short form of the counters for scenario output.
pub fn show(stats: &Stats) -> String {
    format!(
        "calls {} kills {} awaits {} victims_seen {} last_oom_memcg {} last_link_cgroup {} \
         last_kill_err {} last_await_err {} last_victim {} freed_before {} freed_after {} \
         last_ns {}",
        stats.calls,
        stats.kills,
        stats.awaits,
        stats.victims_seen,
        stats.last_oom_memcg,
        stats.last_link_cgroup,
        stats.last_kill_err,
        stats.last_await_err,
        stats.last_victim,
        stats.freed_before,
        stats.freed_after,
        stats.last_ns
    )
}

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Leaves the calling thread (capabilities are per thread) with exactly `caps` effective
/// and permitted, nothing inheritable; the other threads keep theirs. For good: a thread
/// cannot regain what it dropped. Checked against /proc/thread-self/status.
pub fn keep_only_caps(caps: &[u32]) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mask: u64 = caps.iter().fold(0, |m, &c| m | 1 << c);
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    for (i, d) in data.iter_mut().enumerate() {
        let word = (mask >> (32 * i)) as u32;
        d.effective = word;
        d.permitted = word;
    }
    // SAFETY: capset(2) with a version 3 header and its two data words.
    let rc = unsafe { libc_capset(&mut hdr as *mut Header as *mut _, data.as_ptr() as *const _) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("capset");
    }
    let status = util::read_file("/proc/thread-self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff in /proc/thread-self/status")?;
    let eff = u64::from_str_radix(eff.trim(), 16).context("parsing CapEff")?;
    ensure!(
        eff == mask,
        "after capset the thread has CapEff {eff:#x}, expected {mask:#x}"
    );
    Ok(())
}

unsafe fn libc_capset(hdr: *mut nix::libc::c_void, data: *const nix::libc::c_void) -> i64 {
    nix::libc::syscall(nix::libc::SYS_capset, hdr, data)
}

/// BPF_LINK_UPDATE of a struct_ops link to the map `new_map_fd`, with the bare errno.
pub fn link_update(link: &impl AsFd, new_map_fd: i32) -> io::Result<()> {
    // SAFETY: plain syscall wrapper; no options.
    let rc =
        unsafe { libbpf_sys::bpf_link_update(link.as_fd().as_raw_fd(), new_map_fd, ptr::null()) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}
