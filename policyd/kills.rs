//! Every OOM kill, whoever decided it: `policyd trace`, and the kernel's own
//! kills in `policyd load`'s log.
//!
//! The tracer (bpf/trace/kills.bpf.c) reports each task the kernel marks as
//! an OOM victim, with the OOM it belongs to. It needs no BPF OOM patches:
//! the `mark_victim` tracepoint is on every kernel, and an fentry program on
//! `out_of_memory()` adds the OOM's scope, constraint and the task that ran
//! into it where the kernel can attach fentry programs (CONFIG_FUNCTION_TRACER).
//! Elsewhere the kills are still reported, without that context.
//! A third program, fentry on `page_counter_try_charge()`, samples each
//! memcg's usage so that each kill also names who grew most before it (its
//! [`culprit`](crate::culprit)s).
//!
//! One line per kill, message `kill`; in text:
//!
//! ```text
//! INFO kill pid=310 comm=job2 cgroup=/demo/batch/j2 kind=chosen decided_by=kernel
//!   rss=290MiB anon=289MiB file=1MiB shmem=0B swap=0B pgtables=640KiB oom_score_adj=0
//!   scope=/demo constraint=CONSTRAINT_MEMCG trigger_pid=311 trigger_comm=hog
//!   trigger_cgroup=/demo/web order=0 oom_events=3 oom_kill_events=2 oom_group_kill_events=0
//!   culprit="/demo/web (+24MiB/3.1s) != victim" growers=1 summary="..."
//! ```
//!
//! With `--log-format json`, one [`KillLine`]: sizes in bytes, what is
//! unknown null.

use std::cell::RefCell;
use std::fs;
use std::io::{self, Write as _};
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{
    libbpf_sys, ErrorKind, Link, MapCore, MapFlags, Object, ObjectBuilder, RingBuffer,
    RingBufferBuilder,
};
use serde::{Deserialize, Serialize};

use crate::abi::{Constraint, KillKind, KillsEvent, KillsGrowth, Pod, GROWTH_CGROUPS};
use crate::bpf::kills_skel;
use crate::cgroup_names::CgroupNames;
use crate::culprit::{self, Ranking};
use crate::events::size;
use crate::loader;
use crate::logging::LogFormat;
use crate::owner::Owner;

/// The tracer's object (bpf/trace/kills.bpf.c), as build.rs compiled it.
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kills.bpf.o"));

/// Where the kernel publishes its BTF, which the tracer is relocated against.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The tracer, loaded and attached; detached when dropped.
pub struct KillTracer {
    // Links first: they are dropped (detached) before the object.
    _links: Vec<Link>,
    object: Object,
    context: bool,
    growth: bool,
}

impl KillTracer {
    pub fn attach() -> Result<KillTracer> {
        if !Path::new(KERNEL_BTF).exists() {
            bail!(
                "this kernel has no BTF ({KERNEL_BTF} is missing): tracing OOM kills needs a \
                 kernel built with CONFIG_DEBUG_INFO_BTF=y"
            );
        }
        let open = ObjectBuilder::default()
            .name("policyd_kills")
            .and_then(|b| b.open_memory(OBJECT))
            .context("opening the OOM kill tracer")?;
        let mut object = open.load().map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied if !nix::unistd::geteuid().is_root() => {
                anyhow!("tracing OOM kills needs root (CAP_BPF and CAP_PERFMON): {e}")
            }
            ErrorKind::PermissionDenied => anyhow!(
                "the kernel refused the OOM kill tracer although policyd runs as root: a \
                 container without CAP_BPF and CAP_PERFMON, a seccomp filter on bpf(2) or \
                 kernel lockdown can do that: {e}"
            ),
            _ => anyhow!("loading the OOM kill tracer (libbpf's log above says why): {e:#}"),
        })?;
        if let Err(e) = loader::find_per_cpu(&mut object) {
            tracing::warn!(
                "{e:#}: kill reports may show a little less memory than the kernel's own \
                 \"Killed process\" line"
            );
        }
        let mut links = Vec::new();
        let mut context = false;
        let mut growth = false;
        for prog in object.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if name == loader::PER_CPU_PROG {
                continue;
            }
            match (name.as_str(), prog.attach()) {
                (_, Ok(link)) => {
                    context |= name == "oom_enter";
                    growth |= name == "charging";
                    links.push(link);
                }
                ("charging", Err(e)) => tracing::warn!(
                    "OOM kills are reported without the cgroups that grew before them: this \
                     kernel cannot attach an fentry program to page_counter_try_charge() \
                     (CONFIG_FUNCTION_TRACER?): {e}"
                ),
                ("oom_enter", Err(e)) => tracing::warn!(
                    "OOM kills are reported without their OOM's scope, constraint and trigger: \
                     this kernel cannot attach an fentry program to out_of_memory() \
                     (CONFIG_FUNCTION_TRACER?): {e}"
                ),
                (_, Err(e)) => {
                    return Err(anyhow!(e))
                        .with_context(|| format!("attaching the OOM kill tracer's {name} program"))
                }
            }
        }
        Ok(KillTracer {
            _links: links,
            object,
            context,
            growth,
        })
    }

    /// Whether kills come with their OOM's scope, constraint and trigger.
    pub fn has_context(&self) -> bool {
        self.context
    }

    /// The u64 at `at` in the tracer's `.bss`.
    fn bss_u64(&self, at: usize) -> Result<u64> {
        let bss = self
            .object
            .maps()
            .find(|m| m.name().to_string_lossy().ends_with(".bss"))
            .context("the tracer has no .bss")?;
        let value = bss
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .context("the tracer's .bss has no value")?;
        value
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_ne_bytes)
            .context("the tracer's .bss is shorter than its skeleton says")
    }

    /// Events the tracer could not send (its ring buffer was full).
    fn dropped(&self) -> Result<u64> {
        self.bss_u64(offset_of!(kills_skel::types::bss, dropped))
    }

    /// The `growth` map's entries by cgroup id, and how many it evicted.
    fn growth(&self) -> Result<(Vec<(u64, KillsGrowth)>, u64)> {
        let map = self
            .object
            .maps()
            .find(|m| m.name() == "growth")
            .context("the tracer has no `growth` map")?;
        if map.key_size() as usize != size_of::<u64>()
            || map.value_size() as usize != size_of::<KillsGrowth>()
        {
            bail!(
                "the tracer's `growth` map has {}-byte keys and {}-byte values, not a cgroup id \
                 and a struct kills_growth",
                map.key_size(),
                map.value_size()
            );
        }
        let entries = read_growth(map.as_fd())
            .map_err(|e| anyhow!("reading the tracer's `growth` map: {e}"))?;
        let inserts = self.bss_u64(offset_of!(kills_skel::types::bss, growth_inserts))?;
        let evicted = inserts.saturating_sub(entries.len() as u64);
        Ok((entries, evicted))
    }
}

/// Every entry of the tracer's `growth` map, in one BPF_MAP_LOOKUP_BATCH
/// for a map of any fill. Read key by key (two syscalls an entry), the 1100
/// entries of bench-footprint's burst cost policyd 0.8 ms of CPU per kill
/// under TCG.
fn read_growth(map: BorrowedFd<'_>) -> io::Result<Vec<(u64, KillsGrowth)>> {
    let room = GROWTH_CGROUPS as usize;
    let mut keys = vec![0u64; room];
    let mut values = vec![KillsGrowth::default(); room];
    let mut entries = Vec::new();
    // A hash map's batch position is a bucket index, a u32.
    let (mut at, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut count = room as u32;
        // SAFETY: `keys` and `values` have room for `count` of the map's
        // keys and values (their sizes checked by the caller); the
        // positions are u32s, as the kernel reads and writes them.
        let ret = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                map.as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    (&mut at as *mut u32).cast()
                },
                (&mut next as *mut u32).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                std::ptr::null(),
            )
        };
        let err = (ret < 0).then(|| io::Error::from_raw_os_error(-ret));
        let ended = match err {
            None => false,
            // The end of the map; `count` entries came with it.
            Some(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => true,
            Some(e) => return Err(e),
        };
        let got = (count as usize).min(room);
        entries.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        if ended || got == 0 {
            return Ok(entries);
        }
        first = false;
        at = next;
    }
}

/// A kill as the tracer reported it, with who grew before it; `growth`
/// is `None` where charges cannot be traced.
#[derive(Debug, Clone, Default)]
pub struct Traced {
    pub event: KillsEvent,
    pub growth: Option<Ranking>,
}

/// The tracer's events as they arrive: poll [`KillStream::fd`], then
/// [`KillStream::take`].
pub struct KillStream {
    // The ring buffer reads the tracer's map: dropped first.
    ring: RingBuffer<'static>,
    pending: Rc<RefCell<Vec<KillsEvent>>>,
    tracer: KillTracer,
    dropped: u64,
}

impl KillStream {
    pub fn start() -> Result<KillStream> {
        KillStream::of(KillTracer::attach()?)
    }

    /// The events of `tracer`, attached already.
    pub fn of(tracer: KillTracer) -> Result<KillStream> {
        let pending: Rc<RefCell<Vec<KillsEvent>>> = Rc::default();
        let sink = pending.clone();
        let map = tracer
            .object
            .maps()
            .find(|m| m.name() == "kills")
            .context("the tracer has no `kills` map")?;
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&map, move |data: &[u8]| {
                match KillsEvent::from_bytes(data) {
                    Some(ev) => sink.borrow_mut().push(ev),
                    None => tracing::warn!(
                        "short event from the OOM kill tracer ({} bytes)",
                        data.len()
                    ),
                }
                0
            })
            .context("the tracer's `kills` map is not a ring buffer")?;
        let ring = builder
            .build()
            .context("setting up the OOM kill ring buffer")?;
        Ok(KillStream {
            ring,
            pending,
            tracer,
            dropped: 0,
        })
    }

    pub fn has_context(&self) -> bool {
        self.tracer.has_context()
    }

    /// Whether kills come with the cgroups that grew before them.
    pub fn tracks_growth(&self) -> bool {
        self.tracer.growth
    }

    /// Readable when kills are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the ring buffer's epoll fd lives as long as `self.ring`.
        unsafe { BorrowedFd::borrow_raw(self.ring.epoll_fd()) }
    }

    /// The kills waiting, oldest first, each that `logged` says will be
    /// logged with who grew most before it (reading that costs a syscall and
    /// a pass over the tracer's table); warns about kills lost since the
    /// last call.
    pub fn take(&mut self, logged: impl Fn(&KillsEvent) -> bool) -> Vec<Traced> {
        if let Err(e) = self.ring.consume() {
            tracing::warn!("reading OOM kill events: {e}");
        }
        if let Ok(now) = self.tracer.dropped() {
            if now > self.dropped {
                tracing::warn!(
                    lost = now - self.dropped,
                    "OOM kills not reported: the tracer's ring buffer was full"
                );
                self.dropped = now;
            }
        }
        let events = std::mem::take(&mut *self.pending.borrow_mut());
        if events.is_empty() {
            return Vec::new();
        }
        // Read once for the kills of this OOM, milliseconds after it: the
        // culprit's growth since counts too.
        let windows = if self.tracer.growth && events.iter().any(&logged) {
            self.tracer
                .growth()
                .map_err(|e| tracing::warn!("reading who grew before the OOM: {e:#}"))
                .ok()
        } else {
            None
        };
        let traced: Vec<Traced> = events
            .into_iter()
            .map(|event| Traced {
                growth: windows
                    .as_ref()
                    .filter(|_| logged(&event))
                    .map(|(w, evicted)| culprit::rank(w, event.timestamp_ns, *evicted)),
                event,
            })
            .collect();
        if traced
            .iter()
            .any(|t| t.growth.as_ref().is_some_and(|g| g.incomplete))
        {
            tracing::warn!(
                "more than {GROWTH_CGROUPS} cgroups charged memory in the {} s before the OOM: \
                 the tracer follows that many (KILLS_GROWTH_CGROUPS) and forgot the least \
                 recent, so a culprit may be missing",
                culprit::WINDOW_NS / 1_000_000_000
            );
        }
        traced
    }
}

/// A cgroup that grew before a kill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    pub cgroup: String,
    /// Its unit, pod or container, as text.
    pub owner: Option<String>,
    /// How much its memory.current grew in the window before the kill...
    pub growth_bytes: u64,
    /// ...over how long (from its oldest sample in the window to its newest).
    pub growth_ms: u64,
}

impl Culprit {
    /// "/batch/grower (+412MiB/4.9s)", with its owner after the path.
    fn describe(&self, sizes: fn(u64) -> String, sep: &str) -> String {
        format!(
            "{}{} (+{}{sep}{:.1} s)",
            self.cgroup,
            in_parens(self.owner.as_deref().unwrap_or("")),
            sizes(self.growth_bytes),
            self.growth_ms as f64 / 1000.0
        )
    }
}

/// A memcg's memory.events counters, read when the kill is logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEvents {
    /// The memcg hit its limit and its OOM killer ran (`oom`).
    pub oom: u64,
    /// Tasks OOM-killed in it (`oom_kill`).
    pub oom_kill: u64,
    /// Group OOM kills (`oom_group_kill`).
    pub oom_group_kill: u64,
}

impl MemoryEvents {
    /// memory.events of the cgroup directory `dir`; `None` if unreadable.
    pub fn read(dir: &Path) -> Option<MemoryEvents> {
        let text = fs::read_to_string(dir.join("memory.events")).ok()?;
        let mut ev = MemoryEvents::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse() else {
                continue;
            };
            match key {
                "oom" => ev.oom = value,
                "oom_kill" => ev.oom_kill = value,
                "oom_group_kill" => ev.oom_group_kill = value,
                _ => {}
            }
        }
        Some(ev)
    }
}

/// One OOM kill as data: the tracer's event, its cgroup ids resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    /// The victim's process id (its thread id is `tid`).
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup: String,
    /// The unit, pod or container of `cgroup`.
    #[serde(flatten)]
    pub owner: Owner,
    pub oom_score_adj: i16,
    pub kind: KillKind,
    /// "kernel" (its oom_badness()), or the BPF OOM handler's name.
    pub decided_by: String,
    /// anon + file + shmem, as the kernel's "Killed process" line adds them.
    pub rss_bytes: u64,
    pub anon_rss_bytes: u64,
    pub file_rss_bytes: u64,
    pub shmem_rss_bytes: u64,
    pub swap_bytes: u64,
    pub pgtables_bytes: u64,
    /// The OOM: "global", or the OOMing cgroup's path; `None` with what
    /// follows when the kernel gave no context (no fentry).
    pub scope: Option<String>,
    pub constraint: Option<Constraint>,
    /// The task that ran into the OOM (for a declared OOM, the declarer).
    pub trigger_pid: Option<u32>,
    pub trigger_comm: Option<String>,
    pub trigger_cgroup: Option<String>,
    /// The unit, pod or container of `trigger_cgroup`, as text.
    pub trigger_owner: Option<String>,
    /// The allocation's order; -1: sysrq or a declared OOM.
    pub order: Option<i32>,
    pub gfp_mask: Option<String>,
    /// The scope's memory.events after the kill (memcg OOMs).
    pub memory_events: Option<MemoryEvents>,
    /// The cgroups whose memory grew most in the 5 s before the kill, most
    /// first, at most 3; `None` where the kernel cannot trace charges.
    pub culprits: Option<Vec<Culprit>>,
    /// How many cgroups grew by 1 MiB or more in those 5 s.
    pub growers: Option<usize>,
    /// Whether the first culprit is the victim's own cgroup.
    pub culprit_is_victim: Option<bool>,
}

/// A kill as `--log-format json` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillLine {
    pub level: String,
    /// "kill".
    pub message: String,
    #[serde(flatten)]
    pub kill: Kill,
    pub summary: String,
}

/// The unit, pod or container of the cgroup `path`, as text; `None` if
/// none is known.
fn owner_text(path: &str) -> Option<String> {
    Some(Owner::of(path).to_string()).filter(|o| !o.is_empty())
}

/// " (text)", or nothing for no text.
fn in_parens(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

impl Kill {
    pub fn new(traced: &Traced, names: &mut CgroupNames) -> Kill {
        let ev = &traced.event;
        let context = ev.has_context != 0;
        let scope = context.then(|| match ev.scope_cgroup_id {
            0 => "global".to_owned(),
            id => names.name(id),
        });
        let memory_events = match (&scope, ev.scope_cgroup_id) {
            (Some(path), id) if id != 0 => {
                MemoryEvents::read(&names.root().join(path.trim_start_matches('/')))
            }
            _ => None,
        };
        let cgroup = names.name(ev.victim_cgroup_id);
        let trigger_cgroup = context.then(|| names.name(ev.trigger_cgroup_id));
        let culprits: Option<Vec<Culprit>> = traced.growth.as_ref().map(|r| {
            r.top
                .iter()
                .map(|g| {
                    let cgroup = names.name(g.cgroup_id);
                    Culprit {
                        owner: owner_text(&cgroup),
                        cgroup,
                        growth_bytes: g.bytes,
                        growth_ms: g.span_ns / 1_000_000,
                    }
                })
                .collect()
        });
        let culprit_is_victim = culprits
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.cgroup == cgroup);
        Kill {
            pid: ev.victim_tgid,
            tid: ev.victim_pid,
            comm: ev.victim_comm(),
            owner: Owner::of(&cgroup),
            cgroup,
            oom_score_adj: ev.oom_score_adj,
            kind: ev.kind(),
            decided_by: ev.handler().unwrap_or_else(|| "kernel".to_owned()),
            rss_bytes: ev.anon_rss + ev.file_rss + ev.shmem_rss,
            anon_rss_bytes: ev.anon_rss,
            file_rss_bytes: ev.file_rss,
            shmem_rss_bytes: ev.shmem_rss,
            swap_bytes: ev.swap,
            pgtables_bytes: ev.pgtables,
            scope,
            constraint: context.then(|| ev.constraint()),
            trigger_pid: context.then_some(ev.trigger_tgid),
            trigger_comm: context.then(|| ev.trigger_comm()),
            trigger_owner: trigger_cgroup.as_deref().and_then(owner_text),
            trigger_cgroup,
            order: context.then_some(ev.order),
            gfp_mask: context.then(|| format!("{:#x}", ev.gfp_mask)),
            memory_events,
            growers: traced.growth.as_ref().map(|r| r.growers),
            culprits,
            culprit_is_victim,
        }
    }

    /// The first culprit, and whether it is the victim's cgroup:
    /// "/batch/grower (+412MiB/4.9 s) != victim".
    fn culprit_text(&self) -> Option<String> {
        let first = self.culprits.as_ref()?.first()?;
        let is = if self.culprit_is_victim == Some(true) {
            "="
        } else {
            "!="
        };
        Some(format!("{} {is} victim", first.describe(size, "/")))
    }

    /// One sentence: who died, who chose it, whose OOM it was.
    pub fn summary(&self) -> String {
        let victim = format!(
            "pid {} ({}) of {}{}, rss {}",
            self.pid,
            self.comm,
            self.cgroup,
            in_parens(&self.owner.to_string()),
            crate::sizes::format_bytes(self.rss_bytes)
        );
        let what = match (self.kind, self.decided_by.as_str()) {
            (KillKind::Exiting, _) => {
                format!("{victim} was exiting already: given memory reserves, not killed")
            }
            (KillKind::WithChosen, _) => {
                format!("killed {victim} with the chosen victim (memory.oom.group, or its memory is shared)")
            }
            (_, "kernel") => {
                format!("the kernel's OOM killer killed {victim}: largest oom_badness()")
            }
            (_, handler) => format!("BPF OOM handler {handler} killed {victim}"),
        };
        let what = match (
            &self.scope,
            self.trigger_pid,
            &self.trigger_comm,
            &self.trigger_cgroup,
        ) {
            (Some(scope), Some(pid), Some(comm), Some(cgroup)) => {
                let oom = if scope == "global" {
                    "a system-wide OOM".to_owned()
                } else {
                    format!("an OOM of {scope}")
                };
                let owner = in_parens(self.trigger_owner.as_deref().unwrap_or(""));
                format!("{what}; in {oom}, run into by pid {pid} ({comm}) of {cgroup}{owner}")
            }
            _ => what,
        };
        let window_s = culprit::WINDOW_NS / 1_000_000_000;
        match &self.culprits {
            None => what,
            Some(c) if c.is_empty() => format!(
                "{what}; no cgroup grew by {} in the {window_s} s before it",
                crate::sizes::format_bytes(culprit::MIN_GROWTH_BYTES)
            ),
            Some(c) => {
                let whose = if self.culprit_is_victim == Some(true) {
                    "the victim's own cgroup"
                } else {
                    "not the victim's cgroup"
                };
                format!(
                    "{what}; grown most in the {window_s} s before it: {}, {whose}",
                    c[0].describe(crate::sizes::format_bytes, " in ")
                )
            }
        }
    }

    pub fn json_line(&self) -> String {
        let line = KillLine {
            level: "INFO".to_owned(),
            message: "kill".to_owned(),
            kill: self.clone(),
            summary: self.summary(),
        };
        serde_json::to_string(&line).expect("a kill serializes")
    }

    pub fn log(&self, format: LogFormat) {
        match format {
            LogFormat::Text => {
                let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
                let events = self.memory_events;
                tracing::info!(
                    pid = self.pid,
                    comm = %self.comm,
                    cgroup = %self.cgroup,
                    owner = %dash(Some(self.owner.to_string()).filter(|o| !o.is_empty())),
                    kind = %self.kind,
                    decided_by = %self.decided_by,
                    rss = %size(self.rss_bytes),
                    anon = %size(self.anon_rss_bytes),
                    file = %size(self.file_rss_bytes),
                    shmem = %size(self.shmem_rss_bytes),
                    swap = %size(self.swap_bytes),
                    pgtables = %size(self.pgtables_bytes),
                    oom_score_adj = self.oom_score_adj,
                    scope = %dash(self.scope.clone()),
                    constraint = %dash(self.constraint.map(|c| c.to_string())),
                    trigger_pid = %dash(self.trigger_pid.map(|p| p.to_string())),
                    trigger_comm = %dash(self.trigger_comm.clone()),
                    trigger_cgroup = %dash(self.trigger_cgroup.clone()),
                    trigger_owner = %dash(self.trigger_owner.clone()),
                    order = %dash(self.order.map(|o| o.to_string())),
                    oom_events = %dash(events.map(|e| e.oom.to_string())),
                    oom_kill_events = %dash(events.map(|e| e.oom_kill.to_string())),
                    oom_group_kill_events = %dash(events.map(|e| e.oom_group_kill.to_string())),
                    culprit = %dash(self.culprit_text()),
                    growers = %dash(self.growers.map(|n| n.to_string())),
                    summary = %self.summary(),
                    "kill"
                );
            }
            // As decisions are (see events.rs): the summary is the message,
            // the facts are fields, absent ones left out.
            LogFormat::Journal => tracing::info!(
                message_id = crate::journal::KILL_MESSAGE_ID,
                victim_pid = self.pid,
                victim_comm = %self.comm,
                victim_cgroup = %self.cgroup,
                owner = %self.owner,
                kind = %self.kind,
                decided_by = %self.decided_by,
                rss_bytes = self.rss_bytes,
                swap_bytes = self.swap_bytes,
                scope = self.scope.as_deref(),
                constraint = self.constraint.map(|c| c.to_string()),
                trigger_pid = self.trigger_pid,
                trigger_comm = self.trigger_comm.as_deref(),
                trigger_cgroup = self.trigger_cgroup.as_deref(),
                culprit_cgroup = self.culprits.as_ref().and_then(|c| c.first()).map(|c| c.cgroup.as_str()),
                culprit_growth_bytes = self.culprits.as_ref().and_then(|c| c.first()).map(|c| c.growth_bytes),
                culprit_is_victim = self.culprit_is_victim,
                "kill: {}",
                self.summary()
            ),
            LogFormat::Json => {
                if tracing::enabled!(tracing::Level::INFO) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", self.json_line());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::CgroupTree;
    use crate::logging::tests::logged_by;
    use crate::testing::{c_comm, FakeCgroupfs, MIB};

    /// A fake tree with /demo/batch (the victim's) and /demo/web (the
    /// trigger's), and the tracer's event of the kernel killing in /demo.
    fn setup(dir: &Path) -> (CgroupNames, KillsEvent) {
        let cg = FakeCgroupfs::new(dir);
        cg.cgroup("/demo/batch", 0, &[]);
        cg.cgroup("/demo/web", 0, &[]);
        fs::write(
            cg.root().join("demo/memory.events"),
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let tree = CgroupTree::read(cg.root()).unwrap();
        let id = |p: &str| tree.get(tree.find(p).unwrap()).id;
        let mut ev = KillsEvent {
            victim_cgroup_id: id("/demo/batch"),
            anon_rss: 289 * MIB,
            file_rss: MIB,
            pgtables: 640 * 1024,
            scope_cgroup_id: id("/demo"),
            trigger_cgroup_id: id("/demo/web"),
            gfp_mask: 0xcc0,
            victim_pid: 310,
            victim_tgid: 310,
            trigger_pid: 312,
            trigger_tgid: 311,
            constraint: 3,
            has_context: 1,
            ..Default::default()
        };
        ev.victim_comm = c_comm("job2");
        ev.trigger_comm = c_comm("hog");
        (CgroupNames::from_tree(&tree), ev)
    }

    /// `ev` from a kernel that cannot trace charges.
    fn untracked(ev: KillsEvent) -> Traced {
        Traced {
            event: ev,
            growth: None,
        }
    }

    /// `ev` with `grown` (cgroup path, MiB, ms) as the ranking of who grew.
    fn grown(dir: &Path, ev: KillsEvent, grown: &[(&str, u64, u64)], growers: usize) -> Traced {
        let tree = CgroupTree::read(dir).unwrap();
        let top = grown
            .iter()
            .map(|&(path, mib, ms)| crate::culprit::Growth {
                cgroup_id: tree.get(tree.find(path).unwrap()).id,
                bytes: mib * MIB,
                span_ns: ms * 1_000_000,
            })
            .collect();
        Traced {
            event: ev,
            growth: Some(Ranking {
                top,
                growers,
                incomplete: false,
            }),
        }
    }

    #[test]
    fn the_culprit_is_named_next_to_the_victim() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let traced = grown(dir.path(), ev, &[("/demo/web", 24, 3140)], 1);
        let kill = Kill::new(&traced, &mut names);
        assert_eq!(kill.culprit_is_victim, Some(false));
        assert_eq!(kill.growers, Some(1));
        assert!(
            kill.summary().ends_with(
                "; grown most in the 5 s before it: /demo/web (+24 MiB in 3.1 s), not the \
                 victim's cgroup"
            ),
            "{}",
            kill.summary()
        );
        let text = logged_by(LogFormat::Text, || kill.log(LogFormat::Text));
        assert!(
            text.contains(" culprit=\"/demo/web (+24MiB/3.1 s) != victim\" growers=1 "),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&kill.json_line()).unwrap();
        assert_eq!(json["culprits"][0]["cgroup"], "/demo/web");
        assert_eq!(json["culprits"][0]["growth_bytes"], 24 * MIB);
        assert_eq!(json["culprits"][0]["growth_ms"], 3140);
        assert_eq!(json["culprit_is_victim"], false);
        let back: KillLine = serde_json::from_str(&kill.json_line()).unwrap();
        assert_eq!(back.kill, kill);

        let entries = crate::journal::tests::entries_of(|| kill.log(LogFormat::Journal));
        let fields = &entries[0].fields;
        for expected in [
            ("POLICYD_CULPRIT_CGROUP", "/demo/web"),
            ("POLICYD_CULPRIT_GROWTH_BYTES", "25165824"),
            ("POLICYD_CULPRIT_IS_VICTIM", "false"),
        ] {
            assert!(
                fields
                    .iter()
                    .any(|(k, v)| (k.as_str(), v.as_str()) == expected),
                "{expected:?} not in {fields:?}"
            );
        }
    }

    #[test]
    fn a_victim_that_grew_most_is_its_own_culprit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let traced = grown(
            dir.path(),
            ev,
            &[("/demo/batch", 200, 4000), ("/demo/web", 3, 900)],
            4,
        );
        let kill = Kill::new(&traced, &mut names);
        assert_eq!(kill.culprit_is_victim, Some(true));
        assert_eq!(kill.culprits.as_ref().map(Vec::len), Some(2));
        assert!(kill.summary().ends_with(", the victim's own cgroup"));
        let text = logged_by(LogFormat::Text, || kill.log(LogFormat::Text));
        assert!(
            text.contains(" culprit=\"/demo/batch (+200MiB/4.0 s) = victim\" growers=4 "),
            "{text}"
        );
    }

    #[test]
    fn a_pods_culprit_is_named_by_its_pod() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let pod = "/kubepods/burstable/pod0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab";
        FakeCgroupfs::new(dir.path()).cgroup(pod, 0, &[]);
        let traced = grown(dir.path(), ev, &[(pod, 50, 2000)], 1);
        let kill = Kill::new(&traced, &mut names);
        let culprit = &kill.culprits.as_ref().unwrap()[0];
        assert_eq!(
            culprit.owner.as_deref(),
            Some("pod 0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab (burstable)")
        );
        assert!(
            kill.summary().contains(&format!(
                "{pod} (pod 0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab (burstable)) (+50 MiB in 2.0 s)"
            )),
            "{}",
            kill.summary()
        );
    }

    #[test]
    fn nobody_grew() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let kill = Kill::new(&grown(dir.path(), ev, &[], 0), &mut names);
        assert_eq!(kill.culprit_is_victim, None);
        assert!(kill
            .summary()
            .ends_with("; no cgroup grew by 1 MiB in the 5 s before it"));
        let text = logged_by(LogFormat::Text, || kill.log(LogFormat::Text));
        assert!(text.contains(" culprit=- growers=0 "), "{text}");
    }

    #[test]
    fn a_kernel_kill_names_victim_trigger_and_scope() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let kill = Kill::new(&untracked(ev), &mut names);
        assert_eq!(kill.pid, 310);
        assert_eq!(kill.cgroup, "/demo/batch");
        assert_eq!(kill.decided_by, "kernel");
        assert_eq!(kill.kind, KillKind::Chosen);
        assert_eq!(kill.rss_bytes, 290 * MIB);
        assert_eq!(kill.scope.as_deref(), Some("/demo"));
        assert_eq!(kill.constraint, Some(Constraint::Memcg));
        // The process, not the thread, that ran into the OOM.
        assert_eq!(kill.trigger_pid, Some(311));
        assert_eq!(kill.trigger_cgroup.as_deref(), Some("/demo/web"));
        assert_eq!(kill.gfp_mask.as_deref(), Some("0xcc0"));
        assert_eq!(
            kill.memory_events,
            Some(MemoryEvents {
                oom: 2,
                oom_kill: 1,
                oom_group_kill: 0
            })
        );
        assert_eq!(
            kill.summary(),
            "the kernel's OOM killer killed pid 310 (job2) of /demo/batch, rss 290 MiB: largest \
             oom_badness(); in an OOM of /demo, run into by pid 311 (hog) of /demo/web"
        );
        assert!(!ev.chosen_by("policyd_priority"));
    }

    #[test]
    fn a_pods_container_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut ev) = setup(dir.path());
        let pod = "/kubepods/besteffort/pod0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab/\
                   3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        let cg = FakeCgroupfs::new(dir.path());
        cg.cgroup(pod, 0, &[]);
        let tree = CgroupTree::read(cg.root()).unwrap();
        ev.victim_cgroup_id = tree.get(tree.find(pod).unwrap()).id;
        let kill = Kill::new(&untracked(ev), &mut CgroupNames::from_tree(&tree));
        assert_eq!(kill.owner.pod_qos, Some(crate::owner::Qos::BestEffort));
        assert!(
            kill.summary().contains(&format!(
                "of {pod} (pod 0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab (besteffort) container \
                 container:3f2a9c1b7d4e), rss 290 MiB"
            )),
            "{}",
            kill.summary()
        );
        let json: serde_json::Value = serde_json::from_str(&kill.json_line()).unwrap();
        assert_eq!(json["pod_uid"], "0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab");
        assert_eq!(json["trigger_owner"], serde_json::Value::Null);
    }

    #[test]
    fn who_decided() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, mut ev) = setup(dir.path());
        for (i, b) in b"policyd_priority".iter().enumerate() {
            ev.handler[i] = *b as i8;
        }
        let kill = Kill::new(&untracked(ev), &mut names);
        assert_eq!(kill.decided_by, "policyd_priority");
        assert!(ev.chosen_by("policyd_priority"));
        assert!(!ev.chosen_by("policyd_largest"));
        assert!(kill
            .summary()
            .starts_with("BPF OOM handler policyd_priority killed pid 310"));

        ev.kind = 1;
        let kill = Kill::new(&untracked(ev), &mut names);
        assert_eq!(kill.kind, KillKind::WithChosen);
        // Its own decision line names only the chosen victim.
        assert!(!ev.chosen_by("policyd_priority"));
        assert!(kill
            .summary()
            .contains("with the chosen victim (memory.oom.group"));

        ev.kind = 2;
        assert!(Kill::new(&untracked(ev), &mut names)
            .summary()
            .contains("was exiting already: given memory reserves, not killed"));
    }

    #[test]
    fn a_kill_in_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let kill = Kill::new(&untracked(ev), &mut names);
        let entries = crate::journal::tests::entries_of(|| kill.log(LogFormat::Journal));
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].message, format!("kill: {}", kill.summary()));
        let fields: Vec<(&str, &str)> = entries[0]
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for expected in [
            ("MESSAGE_ID", crate::journal::KILL_MESSAGE_ID),
            ("POLICYD_VICTIM_PID", "310"),
            ("POLICYD_VICTIM_CGROUP", "/demo/batch"),
            ("POLICYD_DECIDED_BY", "kernel"),
            ("POLICYD_SCOPE", "/demo"),
            ("POLICYD_TRIGGER_PID", "311"),
        ] {
            assert!(fields.contains(&expected), "{expected:?} not in {fields:?}");
        }
    }

    #[test]
    fn without_context_only_the_victim_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, mut ev) = setup(dir.path());
        ev.has_context = 0;
        ev.scope_cgroup_id = 0;
        let kill = Kill::new(&untracked(ev), &mut names);
        assert_eq!(kill.scope, None);
        assert_eq!(kill.trigger_pid, None);
        assert_eq!(kill.constraint, None);
        assert_eq!(kill.memory_events, None);
        assert!(kill.summary().ends_with("largest oom_badness()"));
        let text = logged_by(LogFormat::Text, || kill.log(LogFormat::Text));
        assert!(
            text.contains(" scope=- constraint=- trigger_pid=- ")
                && text.contains(" culprit=- growers=- "),
            "{text}"
        );
    }

    #[test]
    fn a_global_oom_has_no_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, mut ev) = setup(dir.path());
        ev.scope_cgroup_id = 0;
        ev.constraint = 0;
        let kill = Kill::new(&untracked(ev), &mut names);
        assert_eq!(kill.scope.as_deref(), Some("global"));
        assert_eq!(kill.constraint, Some(Constraint::None));
        assert_eq!(kill.memory_events, None);
        assert!(kill
            .summary()
            .contains("in a system-wide OOM, run into by pid 311"));
    }

    #[test]
    fn text_and_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut names, ev) = setup(dir.path());
        let kill = Kill::new(&untracked(ev), &mut names);
        let text = logged_by(LogFormat::Text, || kill.log(LogFormat::Text));
        assert!(
            text.trim_start().starts_with(
                "INFO kill pid=310 comm=job2 cgroup=/demo/batch owner=- kind=chosen decided_by=kernel \
                 rss=290MiB anon=289MiB file=1MiB shmem=0B swap=0B pgtables=640KiB \
                 oom_score_adj=0 scope=/demo constraint=CONSTRAINT_MEMCG trigger_pid=311 \
                 trigger_comm=hog trigger_cgroup=/demo/web trigger_owner=- order=0 oom_events=2 \
                 oom_kill_events=1 oom_group_kill_events=0 culprit=- growers=- summary=\""
            ),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&kill.json_line()).unwrap();
        assert_eq!(json["message"], "kill");
        assert_eq!(json["rss_bytes"], 290 * MIB);
        assert_eq!(json["kind"], "chosen");
        assert_eq!(json["constraint"], "CONSTRAINT_MEMCG");
        assert_eq!(json["memory_events"]["oom_kill"], 1);
        let back: KillLine = serde_json::from_str(&kill.json_line()).unwrap();
        assert_eq!(back.kill, kill);
        assert_eq!(back.summary, kill.summary());
    }
}
