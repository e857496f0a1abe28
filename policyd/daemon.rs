//! `policyd load`: load a policy, attach it to a cgroup and keep it fed.
//!
//! [`Daemon::start`] does everything that can fail before the handler is
//! attached (kernel check, load and verify, rules map, ring buffer, cgroup
//! watch), then attaches: a failure leaves nothing attached. The daemon then
//! runs a single-threaded poll loop ([`Daemon::handle_one_round`]) over
//!
//! * the policy's ring buffer: each OOM event becomes one log line;
//! * the OOM kill tracer's ([`crate::kills`]): kills the handler did not
//!   decide (the kernel's, after a deferral; memory.oom.group's; another
//!   handler's) get a line of their own, in order with the decisions;
//! * inotify on the cgroup tree: new cgroups get their resolved entry among
//!   the current rules ([`KernelRules`]), removed ones lose it (no reload, no
//!   reattach);
//! * a signalfd: SIGHUP reloads the config (new rules swapped in with one
//!   store each, or a new policy swapped into the link with
//!   `bpf_link_update`, never a moment unprotected); SIGINT/SIGTERM detach
//!   and exit;
//! * the link: if the kernel detaches it (the cgroup was removed), exit;
//! * PSI triggers of `[[pressure]]` rules and of the `[swap]` limit
//!   ([`crate::pressure`]): a limit that held declares an OOM, once per
//!   pressure episode.
//!
//! It blocks in poll(2) with no timeout: an idle daemon never wakes up (once,
//! a second after a run of awaits, to log how many there were; once at the end
//! of a pressure episode, to log relief; and, under a systemd unit with
//! `WatchdogSec=`, to ping the watchdog). Under systemd it
//! reports its state through [`Notifier`]: ready once attached, reloading
//! around a SIGHUP, stopping before it detaches.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{RingBuffer, RingBufferBuilder};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::abi::{Pod, PolicydEvent, PolicydRule};
use crate::cgroup_names::CgroupNames;
use crate::cgroupfs::{CgroupTree, Detail};
use crate::config::{Config, Ownership};
use crate::config_watch::ConfigWatcher;
use crate::events::{Awaits, Decision};
use crate::guard::OwnCgroup;
use crate::kernel_rules::{Added, KernelRules};
use crate::kills::{Kill, KillStream, KillTracer, Traced};
use crate::loader::{self, HandlerLink, OomOpsLayout, PolicyObject, Settings};
use crate::logging::LogFormat;
use crate::metrics::{self, MetricsFile};
use crate::notify::{self, Notifier};
use crate::oom_group;
use crate::order::{Entry, EventOrder, TimedDecision, TimedKill};
use crate::policy::PolicyName;
use crate::pressure::{Declared, Pressure};
use crate::resolve::{resolve_tree, Effective, Resolver};
use crate::rules;
use crate::tree_walk;
use crate::watch::{CgroupWatcher, Change};

/// Everything `policyd load` decided before touching the kernel.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// When the process started: the start-up is accounted from there.
    pub started: Instant,
    pub policy: PolicyName,
    /// The command line named the policy: a reload keeps it, whatever the
    /// config's `policy` says.
    pub policy_from_cli: bool,
    /// The validated configuration.
    pub config: Config,
    /// The file `config` was read from (re-read on SIGHUP).
    pub config_path: PathBuf,
    /// What the file's owner and mode must be, on every reload too.
    pub ownership: Ownership,
    /// policyd's own cgroup, protected whatever the rules say (`None`: the
    /// root cgroup, or not found).
    pub own_cgroup: Option<OwnCgroup>,
    /// The cgroup2 mount.
    pub cgroup_root: PathBuf,
    /// Cgroup to attach to, relative to the cgroup2 mount ("/" = system-wide).
    pub cgroup: String,
    /// Attach and decide, but leave every kill to the kernel's own killer.
    pub dry_run: bool,
    /// Room in the handler's per-cgroup tables (`--max-cgroups`).
    pub max_cgroups: u32,
    /// Steps of the handler's walk of the tree (`--walk-steps`, a test seam).
    pub walk_steps: u32,
    /// How decisions are written (the rest of the log follows the subscriber).
    pub log_format: LogFormat,
    /// Where to keep the handler's counters for Prometheus (`--metrics-file`).
    pub metrics_file: Option<PathBuf>,
    /// Reload by itself when the config file is replaced (`--watch-config`).
    pub watch_config: bool,
}

/// What [`Daemon::handle_one_round`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    Continue,
    /// SIGINT or SIGTERM: time to drop the daemon (which detaches).
    Stop,
}

/// Block SIGINT, SIGTERM and SIGHUP in this thread and return a signalfd
/// that reads them. Call before starting threads that should inherit it.
pub fn block_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    mask.thread_block()
        .context("blocking SIGINT/SIGTERM/SIGHUP")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .context("creating a signalfd")
}

/// `policyd load`: start, run until SIGINT/SIGTERM, detach.
pub fn run(req: LoadRequest) -> Result<()> {
    let signals = block_signals()?;
    let mut daemon = Daemon::start(req)?;
    daemon.watch_signals(signals);
    // Only now, attached: a unit ordered after policyd.service starts protected.
    let status = daemon.status_text();
    daemon.notifier.ready(&status);
    while daemon.handle_one_round(None)? == Round::Continue {}
    let cgroup = daemon.req.cgroup.clone();
    let metrics_file = daemon.metrics_file.take();
    daemon.notifier.stopping();
    drop(daemon);
    if let Some(mut file) = metrics_file {
        if let Err(e) = file.remove() {
            tracing::warn!("{e:#}");
        }
    }
    tracing::info!(cgroup = %cgroup, "detached");
    Ok(())
}

/// How long the OOM events stay quiet before counted awaits are logged.
const AWAITS_QUIET: Duration = Duration::from_secs(1);

/// How long cgroups must have stopped coming before a rules table crowded
/// by new ones is rebuilt ([`KernelRules::crowded`]).
const REBUILD_QUIET: Duration = Duration::from_secs(1);

type Pending = Rc<RefCell<Vec<PolicydEvent>>>;

/// A ring buffer on `obj`'s `events` map whose records land in the returned queue.
fn event_ring(obj: &PolicyObject) -> Result<(RingBuffer<'static>, Pending)> {
    let pending: Pending = Rc::default();
    let sink = pending.clone();
    let map = obj.events_map()?;
    let mut builder = RingBufferBuilder::new();
    builder
        .add(&map, move |data: &[u8]| {
            match PolicydEvent::from_bytes(data) {
                Some(ev) => sink.borrow_mut().push(ev),
                None => tracing::warn!(
                    "short event from the policy ({} bytes, expected {})",
                    data.len(),
                    std::mem::size_of::<PolicydEvent>()
                ),
            }
            0
        })
        .context("the policy's `events` map is not a ring buffer")?;
    let ring = builder
        .build()
        .context("setting up the event ring buffer")?;
    Ok((ring, pending))
}

/// Read the cgroup tree (calling `before_listing` for each cgroup, see
/// [`CgroupTree::read_with`]), resolve `config` over it and make the result
/// `obj`'s rules ([`KernelRules::install`]); what the daemon keeps of it,
/// and whether the tree came from a walk.
fn install_tree_rules(
    obj: &PolicyObject,
    config: &Config,
    req: &LoadRequest,
    phases: &mut Phases,
    before_listing: &mut dyn FnMut(&str),
) -> Result<(CgroupTree, Vec<Effective>, KernelRules, bool)> {
    let (tree, walked) = read_tree(obj, &req.cgroup_root, phases, before_listing)?;
    phases.done("tree read, watches");
    let effective = resolve_tree(config, &tree);
    let entries = entries_for(config, &effective, req.own_cgroup.as_ref());
    phases.done("resolve");
    let serials = cgroup_serials(obj, &req.cgroup_root);
    phases.done("serial numbers");
    let rules = KernelRules::build(obj, &entries, &serials)?;
    phases.done("rules map");
    oom_group::apply(config, &req.cgroup_root, &effective);
    phases.done("memory.oom.group");
    rules.install(obj)?;
    Ok((tree, effective, rules, walked))
}

/// The css serial numbers of the cgroups below `root` (by id), which key the
/// rules table. Without them (a warning says why) every cgroup's entry goes
/// into the hash: the same decisions, each cgroup ranked a little slower.
fn cgroup_serials(obj: &PolicyObject, root: &Path) -> HashMap<u64, u64> {
    let listed = std::fs::metadata(root)
        .with_context(|| format!("reading {}", root.display()))
        .and_then(|m| obj.cgroup_serials(m.ino()));
    listed.unwrap_or_else(|e| {
        tracing::warn!(
            "listing the cgroups' serial numbers: {e:#}; the handler finds their rules in a hash \
             instead of the rules table, a little slower"
        );
        HashMap::new()
    })
}

/// The cgroup tree below `root` as `obj`'s BPF iterator walks it, or where
/// it has none (not a cgroup2 mount, a kernel without cgroup iterators) or
/// the walk fails (a warning says why), as the file system lists it; true
/// for a walk.
fn read_tree(
    obj: &PolicyObject,
    root: &Path,
    phases: &mut Phases,
    before_listing: &mut dyn FnMut(&str),
) -> Result<(CgroupTree, bool)> {
    if let Some(walk) = obj.walk_tree() {
        phases.done("tree walk");
        let tree = walk.and_then(|records| {
            CgroupTree::from_walk(root, records, before_listing).map_err(anyhow::Error::from)
        });
        match tree {
            Ok(tree) => return Ok((tree, true)),
            Err(e) => tracing::warn!(
                "walking the cgroup tree: {e:#}; reading it from the file system instead"
            ),
        }
    }
    let tree = CgroupTree::read_with(root, Detail::Rules, before_listing)
        .with_context(|| format!("reading the cgroup tree at {}", root.display()))?;
    Ok((tree, false))
}

/// `policy`'s object, loaded for `req` (its ring for tree walks sized to the
/// tree below the cgroup2 mount) with its tree walker attached there.
fn open_policy(req: &LoadRequest, policy: PolicyName) -> Result<PolicyObject> {
    let mut obj = PolicyObject::open_load(&Settings {
        policy,
        dry_run: req.dry_run,
        max_cgroups: req.max_cgroups,
        walk_steps: req.walk_steps,
        tree_cgroups: tree_walk::cgroups_below(&req.cgroup_root),
    })?;
    obj.attach_tree_walker(&req.cgroup_root);
    Ok(obj)
}

/// What a walk of the tree, made after every cgroup of `tree` is watched,
/// finds that no watch will report: cgroups made under a cgroup of `tree`
/// after the walk passed it but before its watch (with their own children),
/// and xattrs that changed in that time.
fn missed_by_watches(
    obj: &PolicyObject,
    root: &Path,
    tree: &CgroupTree,
    watcher: &mut CgroupWatcher,
) -> Vec<Change> {
    let Some(walk) = obj.walk_tree() else {
        return Vec::new(); // no walker, no walked tree to compare with
    };
    let again = match walk.and_then(|records| {
        CgroupTree::from_walk(root, records, &mut |_| {}).map_err(anyhow::Error::from)
    }) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(
                "walking the cgroup tree after watching it: {e:#}; re-reading it from the file \
                 system"
            );
            return vec![Change::Overflow];
        }
    };
    let before: HashMap<u64, &crate::cgroupfs::Cgroup> =
        tree.nodes().iter().map(|n| (n.id, n)).collect();
    let mut changes = Vec::new();
    for node in again.nodes() {
        match before.get(&node.id) {
            Some(old) if old.xattrs != node.xattrs => {
                changes.push(Change::Attrib(node.path.clone()));
            }
            Some(_) => {}
            // New below a new parent: adopting the parent covered it.
            None if node
                .parent
                .is_some_and(|p| !before.contains_key(&again.get(p).id)) => {}
            None => changes.extend(watcher.adopt(node.path.clone())),
        }
    }
    changes
}

/// A tree read allocates a few hundred bytes per cgroup, all freed once its
/// settings are in the rules map; glibc keeps freed memory for reuse, so at
/// 10,000 cgroups the daemon would hold the peak of its last reload for
/// good. Give it back to the system.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns memory that malloc holds free.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Where the time of a start-up or reload went, for one debug line: at
/// 10,000 cgroups it is seconds, and which step grows is what to fix.
struct Phases {
    started: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Self {
        Phases::since(Instant::now())
    }

    fn since(started: Instant) -> Self {
        Phases {
            started,
            last: started,
            steps: Vec::new(),
        }
    }

    /// `step` ended now; it began where the previous one ended.
    fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }

    fn log(&self, what: &str, cgroups: usize) {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(step, d)| format!("{step} {:.3} s", d.as_secs_f64()))
            .collect();
        tracing::debug!(
            "{what} with {cgroups} cgroups took {:.3} s: {}",
            self.started.elapsed().as_secs_f64(),
            steps.join(", ")
        );
    }
}

/// The cgroups the daemon knows, with their resolved settings.
struct Cgroups {
    root: PathBuf,
    /// By path.
    effective: HashMap<String, Effective>,
    names: CgroupNames,
}

impl Cgroups {
    fn from_tree(root: &Path, tree: &CgroupTree, effective: Vec<Effective>) -> Self {
        Cgroups {
            root: root.to_owned(),
            effective: effective.into_iter().map(|e| (e.path.clone(), e)).collect(),
            names: CgroupNames::from_tree(tree),
        }
    }

    /// The tree was read again: its settings replace the old ones.
    fn refresh(&mut self, tree: &CgroupTree, effective: Vec<Effective>) {
        self.effective = effective.into_iter().map(|e| (e.path.clone(), e)).collect();
        self.names.refresh(tree);
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Every known cgroup as (path, id, directory), for the pressure triggers.
    fn dirs(&self) -> Vec<(&str, u64, PathBuf)> {
        self.effective
            .values()
            .map(|e| (e.path.as_str(), e.id, self.dir(&e.path)))
            .collect()
    }

    fn snapshot(&self) -> rules::Snapshot {
        self.effective
            .values()
            .map(|e| (e.path.clone(), rules::own_rule(e)))
            .collect()
    }

    /// Resolve `path` (and any ancestors not known yet) under `config`.
    fn resolve(&mut self, config: &Config, path: &str) -> Option<Effective> {
        if let Some(e) = self.effective.get(path) {
            return Some(e.clone());
        }
        let parent = if path == "/" {
            None
        } else {
            let p = match path.rfind('/') {
                Some(0) => "/".to_owned(),
                Some(i) => path[..i].to_owned(),
                None => return None,
            };
            Some(self.resolve(config, &p)?)
        };
        let id = std::fs::metadata(self.dir(path)).ok()?.ino();
        let own = crate::xattrs::read(&self.dir(path), path);
        let e = Resolver::new(config).resolve(path, id, parent.as_ref(), &own);
        self.names.insert(id, path);
        self.effective.insert(path.to_owned(), e.clone());
        Some(e)
    }
}

/// The rules map entries for `effective` under `config`, with policyd's
/// own cgroup protected: with policyd unkillable (oom_score_adj -1000) the
/// policy would otherwise pick its cgroup and find nothing to kill there,
/// or kill what shares the cgroup with it.
fn entries_for<'a>(
    config: &Config,
    effective: impl IntoIterator<Item = &'a Effective>,
    own: Option<&OwnCgroup>,
) -> Vec<(u64, PolicydRule)> {
    let mut entries = rules::rule_entries(config, effective);
    if let Some(own) = own {
        rules::force_protect(&mut entries, own.id, config);
    }
    entries
}

/// The configuration as SIGHUP re-reads it: through the same checks as at
/// start. `None` (logged) when it cannot be used: the caller keeps the
/// running policy and rules.
fn reread_config(req: &LoadRequest) -> Option<Config> {
    match crate::config::load_logged(&req.config_path, req.ownership) {
        Ok(c) => Some(c),
        Err(e) => {
            for line in format!("{e:#}").lines() {
                tracing::error!("{line}");
            }
            tracing::warn!(
                "{} is not valid: keeping the running policy and rules",
                req.config_path.display()
            );
            None
        }
    }
}

/// A running policy: loaded, attached, fed.
pub struct Daemon {
    // Fields drop in order: the link first (the handler detaches), then the
    // ring buffer, then the object it reads from.
    link: HandlerLink,
    link_id: u32,
    ring: RingBuffer<'static>,
    pending: Pending,
    /// Kills as the kernel marks them; `None` where the tracer cannot load.
    kills: Option<KillStream>,
    /// Kills of ours that came before their decision wait there.
    order: EventOrder<Traced>,
    obj: PolicyObject,
    /// The rules the handler reads.
    rules: KernelRules,
    /// When to build them a new table: cgroups created since the last one
    /// are many, and none has come for [`REBUILD_QUIET`].
    rebuild_at: Option<Instant>,
    req: LoadRequest,
    cgroups: Cgroups,
    watcher: Option<CgroupWatcher>,
    signals: Option<SignalFd>,
    awaits: Awaits,
    /// Events the handler could not send (ring buffer full), as last logged.
    dropped: u64,
    /// `--metrics-file`, rewritten when the counters change.
    metrics_file: Option<MetricsFile>,
    /// `--watch-config`: the config file's directory.
    config_watch: Option<ConfigWatcher>,
    /// The service manager, when there is one.
    notifier: Notifier,
    /// PSI triggers of the `[[pressure]]` rules.
    pressure: Pressure,
}

impl Daemon {
    /// Load `req.policy`, fill its rules, attach it to `req.cgroup` and log
    /// one line saying so. Nothing is attached if this fails.
    pub fn start(req: LoadRequest) -> Result<Daemon> {
        loader::route_libbpf_log();
        let mut phases = Phases::since(req.started);
        phases.done("config, checks");
        let cgroup_dir = req.cgroup_root.join(req.cgroup.trim_start_matches('/'));
        if !cgroup_dir.is_dir() {
            anyhow::bail!(
                "cgroup {} does not exist (no directory {})",
                req.cgroup,
                cgroup_dir.display()
            );
        }

        // Before the tree is read: a fanotify mark reports every cgroup made
        // from now on; inotify watches each cgroup just before its children
        // are listed (in install_tree_rules). Either way a cgroup created in
        // between is both read and reported (applying it twice is harmless).
        let mut watcher = match CgroupWatcher::new(&req.cgroup_root) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for new cgroups ({e}): new cgroups inherit their parent's \
                     settings until the next reload (SIGHUP)",
                    req.cgroup_root.display()
                );
                None
            }
        };
        let metrics_file = req
            .metrics_file
            .as_deref()
            .map(MetricsFile::new)
            .transpose()?;
        let config_watch = req
            .watch_config
            .then(|| ConfigWatcher::new(&req.config_path))
            .transpose()?;
        // Another BPF object: the kernel verifies it while it verifies the
        // policy's (the verifier runs in the loading thread).
        let tracer = std::thread::spawn(KillTracer::attach);
        let obj = match open_policy(&req, req.policy) {
            Ok(obj) => obj,
            // On a kernel without BPF OOM support say that, not how the
            // object failed.
            Err(e) => return Err(OomOpsLayout::of_running_kernel().err().unwrap_or(e)),
        };
        phases.done("policy load");
        let (tree, effective, rules, walked) =
            install_tree_rules(&obj, &req.config, &req, &mut phases, &mut |path| {
                if let Some(w) = watcher.as_mut() {
                    w.watch(path);
                }
            })?;
        let (ring, pending) = event_ring(&obj)?;
        let kills = match tracer
            .join()
            .map_err(|_| anyhow::anyhow!("the thread loading it panicked"))
            .and_then(|attached| attached)
            .and_then(KillStream::of)
        {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("kills the handler did not decide will not be logged: {e:#}");
                None
            }
        };
        phases.done("kill tracer");
        obj.prepare_ops()?;

        let link = HandlerLink::attach(obj.ops_map()?.as_fd(), &cgroup_dir, &req.cgroup)?;
        phases.done("attach");
        let link_id = link.id().unwrap_or(0);
        tracing::info!(
            policy = %req.policy,
            cgroup = %req.cgroup,
            rules = req.config.rules.len(),
            cgroups = effective.len(),
            dry_run = req.dry_run,
            handler = %obj.handler_name(),
            link_id,
            cgroup_watch = watcher.as_ref().map_or("none", |w| w.kind()),
            "attached"
        );
        let cgroups = Cgroups::from_tree(&req.cgroup_root, &tree, effective);
        let mut pressure = Pressure::new(&req.cgroup, req.dry_run);
        pressure.arm_all(&req.config, cgroups.dirs());
        phases.done("names, pressure triggers");
        phases.log("start-up", cgroups.effective.len());
        // The file system read watches each cgroup before listing it, and a
        // fanotify mark was there before the walk.
        let missed = match watcher.as_mut() {
            Some(w) if walked && w.watches_after_reading() => {
                missed_by_watches(&obj, &req.cgroup_root, &tree, w)
            }
            _ => Vec::new(),
        };
        drop(tree);
        release_freed_memory();
        let mut daemon = Daemon {
            link,
            link_id,
            ring,
            pending,
            kills,
            order: EventOrder::default(),
            obj,
            rules,
            rebuild_at: None,
            awaits: Awaits::new(req.log_format),
            req,
            cgroups,
            watcher,
            signals: None,
            dropped: 0,
            metrics_file,
            config_watch,
            notifier: Notifier::from_env(),
            pressure,
        };
        daemon.apply_changes(missed);
        daemon.write_metrics();
        if let Some(file) = &daemon.metrics_file {
            tracing::info!("metrics in {}", file.path().display());
        }
        Ok(daemon)
    }

    /// The handler's counters as `policyd metrics` shows them.
    pub fn metrics_text(&mut self) -> Result<String> {
        let counters = self.obj.counters()?;
        let policy = self.obj.policy().to_string();
        let handler = self.obj.handler_name();
        let shown = metrics::HandlerMetrics {
            attach: &self.req.cgroup,
            handler: &handler,
            policy: Some(&policy),
            dry_run: Some(self.req.dry_run),
            counters: Some(&counters),
        };
        let cgroups = &mut self.cgroups;
        Ok(metrics::render(&[shown], &mut |id| cgroups.names.name(id)))
    }

    /// Bring `--metrics-file` up to date (written only if the text changed).
    fn write_metrics(&mut self) {
        if self.metrics_file.is_none() {
            return;
        }
        let text = match self.metrics_text() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("reading the handler's counters for --metrics-file: {e:#}");
                return;
            }
        };
        if let Some(file) = self.metrics_file.as_mut() {
            if let Err(e) = file.update(&text) {
                tracing::warn!("{e:#}");
            }
        }
    }

    /// Handle SIGINT/SIGTERM/SIGHUP from `signals` (see [`block_signals`]).
    pub fn watch_signals(&mut self, signals: SignalFd) {
        self.signals = Some(signals);
    }

    pub fn policy(&self) -> PolicyName {
        self.obj.policy()
    }

    /// The kernel's id of the link (`policyd status` shows it).
    pub fn link_id(&self) -> u32 {
        self.link_id
    }

    /// Cgroups with an entry in the rules map.
    pub fn cgroups(&self) -> usize {
        self.cgroups.effective.len()
    }

    /// What is attached, for the service manager's `STATUS=`.
    pub fn status_text(&self) -> String {
        notify::status_text(
            self.policy(),
            self.req.config.rules.len(),
            self.cgroups(),
            &self.req.cgroup,
        )
    }

    /// Wait for something to happen (at most `timeout`; `None`: as long as
    /// it takes) and handle it.
    pub fn handle_one_round(&mut self, timeout: Option<Duration>) -> Result<Round> {
        let now = Instant::now();
        let until = |deadline: Option<Instant>| deadline.map(|d| d.saturating_duration_since(now));
        let timeout = [
            timeout,
            // Counted awaits are logged once the OOM has been quiet for a
            // second: a single wake-up after a burst, none when idle.
            self.awaits.pending().then_some(AWAITS_QUIET),
            self.notifier.next_ping_in(),
            // During a pressure episode only: its end, once quiet, is logged.
            until(self.pressure.next_deadline()),
            // Kills waiting for their decision, after an OOM only.
            until(self.order.deadline()),
            until(self.rebuild_at),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        };
        let mut fired = Vec::new();
        let mut gone = Vec::new();
        let (ring_ready, watch_ready, signal_ready, link_gone, config_ready) = {
            // SAFETY: the ring buffer's epoll fd lives as long as `self.ring`.
            let ring_fd = unsafe { BorrowedFd::borrow_raw(self.ring.epoll_fd()) };
            let mut fds = vec![
                PollFd::new(ring_fd, PollFlags::POLLIN),
                // No events asked: POLLHUP comes when the kernel detaches it.
                PollFd::new(self.link.as_fd(), PollFlags::empty()),
            ];
            let kills_idx = self.kills.as_ref().map(|k| {
                fds.push(PollFd::new(k.fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let watch_idx = self.watcher.as_ref().map(|w| {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let signal_idx = self.signals.as_ref().map(|s| {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let config_idx = self.config_watch.as_ref().map(|w| {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let pressure_from = fds.len();
            let mut pressure_paths = Vec::new();
            for (path, fd) in self.pressure.fds() {
                fds.push(PollFd::new(fd, PollFlags::POLLPRI));
                pressure_paths.push(path.to_owned());
            }
            let polled = poll(&mut fds, timeout);
            self.notifier.ping_if_due();
            match polled {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(Round::Continue),
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds[i].revents())
                    .is_some_and(|r| !r.is_empty())
            };
            // POLLERR: the trigger's cgroup was removed (kernfs says so).
            for (fd, path) in fds[pressure_from..].iter().zip(pressure_paths) {
                let revents = fd.revents().unwrap_or(PollFlags::empty());
                if revents.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL) {
                    gone.push(path);
                } else if revents.contains(PollFlags::POLLPRI) {
                    fired.push(path);
                }
            }
            (
                ready(Some(0)) || ready(kills_idx),
                ready(watch_idx),
                ready(signal_idx),
                ready(Some(1)),
                ready(config_idx),
            )
        };

        if ring_ready {
            self.consume_events();
        } else {
            self.log_held_kills(false);
            self.flush_awaits();
        }
        if watch_ready {
            self.apply_cgroup_changes();
        }
        if self.rebuild_at.is_some_and(|at| at <= Instant::now()) {
            self.rebuild_rules();
        }
        for path in gone {
            self.pressure.cgroup_removed(&path);
        }
        for path in fired {
            self.pressure_fired(&path);
        }
        self.pressure.expire(Instant::now());
        if link_gone {
            self.consume_events();
            self.log_held_kills(true);
            self.flush_awaits();
            anyhow::bail!(
                "the handler on {} was detached by the kernel (was the cgroup removed?)",
                self.req.cgroup
            );
        }
        if config_ready {
            self.config_changed();
        }
        if signal_ready {
            return self.handle_signals();
        }
        Ok(Round::Continue)
    }

    /// The pressure trigger `path` (a cgroup's, or the `[swap]` limit's)
    /// fired: declare an OOM if its limit has held long enough (under
    /// --dry-run, say what would happen).
    fn pressure_fired(&mut self, path: &str) {
        let Some(d) = self.pressure.fired(path, Instant::now()) else {
            return;
        };
        if self.req.dry_run {
            let prediction = self.predict(&d.path);
            tracing::info!(
                cgroup = %d.path,
                limit = %d.limit,
                "dry run: {}: would declare an OOM ({}); the policy would: {prediction}",
                d.source.held(),
                if d.cgroup_id == 0 { "system-wide" } else { "of this memory cgroup" }
            );
            return;
        }
        let result = match self.obj.declare_oom(d.cgroup_id, d.trigger) {
            Ok(ret) => Declared::Ret(ret),
            Err(e) => Declared::Failed(e),
        };
        self.pressure.declared(&d, result);
        // The handler reported during the declaration: log its decision now,
        // while the limit that declared it is known.
        self.consume_events();
        self.pressure.forget(d.trigger);
    }

    /// What the policy would do on an OOM of `path`, as `policyd explain`
    /// predicts it.
    fn predict(&self, path: &str) -> String {
        let tree = match CgroupTree::read(&self.req.cgroup_root) {
            Ok(t) => t,
            Err(e) => return format!("(cannot read the cgroup tree: {e})"),
        };
        let Some(scope) = tree.find(path) else {
            return format!("(cgroup {path} is gone)");
        };
        let effective = resolve_tree(&self.req.config, &tree);
        let proc_root = Path::new("/proc");
        let totalpages =
            crate::rank::oom_totalpages(&tree.fs_path(scope), tree.get(scope).is_root(), proc_root);
        crate::rank::explain(
            self.obj.policy(),
            &tree,
            &effective,
            scope,
            &crate::procfs::ProcFs::new(proc_root),
            totalpages,
        )
        .outcome
        .to_string()
    }

    /// `--watch-config` saw the file's directory change: reload as SIGHUP
    /// does, if it concerns the file.
    /// Reload the config (SIGHUP, or `--watch-config` saw it change), with
    /// systemd told that a reload is under way and when it is over.
    fn reload_and_notify(&mut self) {
        self.notifier.reloading();
        if let Err(e) = self.reload() {
            tracing::error!("reload failed, the running policy and rules stay: {e:#}");
        }
        // Ready again either way: the old or the new rules are in.
        let status = self.status_text();
        self.notifier.ready(&status);
    }

    fn config_changed(&mut self) {
        let Some(watch) = self.config_watch.as_mut() else {
            return;
        };
        match watch.changed() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!("{} changed: reloading", self.req.config_path.display());
                self.reload_and_notify();
            }
            Err(e) => tracing::warn!(
                "--watch-config: reading changes of {}: {e}",
                self.req.config_path.display()
            ),
        }
    }

    fn handle_signals(&mut self) -> Result<Round> {
        let mut round = Round::Continue;
        while let Some(info) = self
            .signals
            .as_ref()
            .map(|s| s.read_signal())
            .transpose()
            .context("reading the signalfd")?
            .flatten()
        {
            let signo = info.ssi_signo as i32;
            match Signal::try_from(signo) {
                Ok(Signal::SIGHUP) => {
                    tracing::info!("SIGHUP: reloading {}", self.req.config_path.display());
                    self.reload_and_notify();
                }
                Ok(sig @ (Signal::SIGINT | Signal::SIGTERM)) => {
                    tracing::info!("{sig}: detaching from {}", self.req.cgroup);
                    self.consume_events();
                    self.log_held_kills(true);
                    self.flush_awaits();
                    round = Round::Stop;
                }
                _ => tracing::debug!("ignoring signal {signo}"),
            }
        }
        Ok(round)
    }

    /// Log every decision waiting in the ring buffer, and the kills the
    /// handler did not decide, in the order they happened ([`crate::order`]).
    pub fn consume_events(&mut self) {
        if let Err(e) = self.ring.consume() {
            tracing::warn!("reading OOM events: {e}");
        }
        let decisions = std::mem::take(&mut *self.pending.borrow_mut())
            .into_iter()
            .map(|d| TimedDecision {
                start_ns: d.timestamp_ns,
                end_ns: d.timestamp_ns.saturating_add(d.handler_ns),
                decision: d,
            })
            .collect();
        let handler = self.obj.handler_name();
        let kills = self
            .kills
            .as_mut()
            .map(|s| s.take(|ev| !ev.chosen_by(&handler)))
            .unwrap_or_default()
            .into_iter()
            .map(|k| TimedKill {
                at_ns: k.event.timestamp_ns,
                by_our_handler: k.event.handler().as_deref() == Some(handler.as_str()),
                kill: k,
            })
            .collect();
        for entry in self.order.order(decisions, kills, Instant::now()) {
            match entry {
                Entry::Decision(d) => {
                    let trigger = self.pressure.trigger_name(d.trigger);
                    self.awaits.log(
                        d.seq,
                        d.repeats_before,
                        Decision::new(&d, |id| self.cgroups.names.name(id)).with_trigger(trigger),
                    )
                }
                Entry::Kill(k) => self.log_kill(&k, &handler),
            }
        }
        let mut decision_lost = false;
        match self.obj.stats() {
            Ok(stats) => {
                if let Some(lost) = newly_dropped(&mut self.dropped, stats.events_dropped) {
                    decision_lost = true;
                    tracing::warn!(
                        lost,
                        total = stats.events_dropped,
                        "OOM decisions not logged: the event ring buffer was full (the OOMs \
                         were handled; `policyd status` counts them)"
                    );
                }
            }
            Err(e) => tracing::warn!("reading the handler's counters: {e:#}"),
        }
        self.log_held_kills(decision_lost);
        self.write_metrics();
    }

    /// Logs the awaits the handler counted and policyd did not log yet.
    /// Its counters moved without an event meanwhile: the metrics file
    /// follows them.
    fn flush_awaits(&mut self) {
        if self.awaits.pending() {
            self.write_metrics();
            match self.obj.await_run() {
                Ok(Some(word)) => self.awaits.update(word),
                // Changing: read again after the next quiet second.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("reading the handler's count of awaits: {e:#}");
                    self.awaits.end_run();
                }
            }
        }
        self.awaits.flush();
    }

    /// Kills that waited for a decision which did not come in time (or
    /// `anyway`): logged without it.
    fn log_held_kills(&mut self, anyway: bool) {
        let held = self.order.release(Instant::now(), anyway);
        if held.is_empty() {
            return;
        }
        let handler = self.obj.handler_name();
        for k in held {
            self.log_kill(&k, &handler);
        }
    }

    /// A kill line, unless `handler` chose this victim: its decision line
    /// says so already.
    fn log_kill(&mut self, k: &Traced, handler: &str) {
        if k.event.chosen_by(handler) {
            return;
        }
        let kill = Kill::new(k, &mut self.cgroups.names);
        self.flush_awaits();
        kill.log(self.req.log_format);
    }

    fn apply_cgroup_changes(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let names = &self.cgroups.names;
        let changes = match watcher.read(&|id| names.get(id).map(str::to_owned)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading cgroup changes: {e}");
                return;
            }
        };
        self.apply_changes(changes);
    }

    fn apply_changes(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Created(path) => {
                    // Read and reported both: it has its entry.
                    if self.cgroups.effective.contains_key(&path) {
                        continue;
                    }
                    let Some(e) = self.cgroups.resolve(&self.req.config, &path) else {
                        continue; // gone already
                    };
                    oom_group::apply_one(&self.req.config, &self.req.cgroup_root, &e);
                    self.pressure.cgroup_added(
                        &self.req.config,
                        &path,
                        e.id,
                        &self.cgroups.dir(&path),
                    );
                    let rule = rules::rule_of(&self.req.config, &e);
                    match self.rules.add(e.id, &rule) {
                        Ok(Added::Added) => tracing::debug!(
                            "new cgroup {path} (id {}): priority {} protect {} kill {}",
                            e.id,
                            e.priority,
                            e.protect,
                            e.kill
                        ),
                        // Full: say so once, not for every cgroup of a burst.
                        Ok(Added::Full { first }) => {
                            if first {
                                tracing::warn!(
                                    "the rules map is full ({} entries, --max-cgroups): new \
                                     cgroups, {path} first, take their nearest ancestor's \
                                     entry in the kernel until cgroups are removed",
                                    self.obj.inner_spec().max_entries
                                );
                            }
                            tracing::debug!("new cgroup {path}: no room for its rules entry");
                        }
                        Err(err) => tracing::warn!(
                            "new cgroup {path}: {err:#}; it inherits from its parent in the \
                             kernel"
                        ),
                    }
                }
                Change::Removed(path) => {
                    self.pressure.cgroup_removed(&path);
                    if let Some(e) = self.cgroups.effective.remove(&path) {
                        // Children are gone first (rmdir needs an empty cgroup).
                        self.rules.remove(e.id);
                        self.cgroups.names.forget_later(e.id);
                        tracing::debug!("cgroup {path} (id {}) removed", e.id);
                    }
                }
                Change::Attrib(path) => self.apply_xattr_change(&path),
                Change::Overflow => {
                    tracing::warn!(
                        "missed cgroup changes (the event queue overflowed): re-reading the tree"
                    );
                    let config = self.req.config.clone();
                    if let Err(e) = self.replace_rules(&config) {
                        tracing::error!("re-reading the cgroup tree: {e:#}");
                    }
                    release_freed_memory();
                    self.pressure.arm_all(&config, self.cgroups.dirs());
                }
            }
        }
        if self.rules.outdated() {
            self.rebuild_rules();
        } else if self.rules.crowded() {
            // After the burst: from the last change on, every time.
            self.rebuild_at = Some(Instant::now() + REBUILD_QUIET);
        }
    }

    /// A new rules table of every known cgroup's settings, swapped in with
    /// an empty hash of new cgroups: see [`KernelRules`]. The tree is not
    /// read again. On failure the handler keeps the rules it has.
    fn rebuild_rules(&mut self) {
        let mut phases = Phases::start();
        let created = self.rules.created_since();
        let mut effective: Vec<&Effective> = self.cgroups.effective.values().collect();
        // Parents first, as a tree read lists them: which cgroups fit does
        // not depend on the order of a hash map.
        effective.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let entries = entries_for(&self.req.config, effective, self.req.own_cgroup.as_ref());
        let serials = cgroup_serials(&self.obj, &self.req.cgroup_root);
        phases.done("entries, serial numbers");
        self.rebuild_at = None;
        match KernelRules::build(&self.obj, &entries, &serials).and_then(|r| {
            phases.done("build");
            r.install(&self.obj)?;
            phases.done("install");
            Ok(r)
        }) {
            Ok(rules) => {
                self.rules = rules;
                tracing::debug!(
                    "rules table rebuilt: {} cgroups, {created} of them created since the last",
                    entries.len() - 1
                );
                phases.log("rules table rebuild", entries.len() - 1);
            }
            Err(e) => tracing::error!(
                "rebuilding the rules table: {e:#}; cgroups whose settings changed keep their \
                 old ones in the handler until the next reload"
            ),
        }
    }

    /// The xattrs or owner of the cgroup at `path` may have changed: resolve
    /// it and its descendants (which inherit its xattrs) again, and update the
    /// rules entries that changed, each with a log line.
    fn apply_xattr_change(&mut self, path: &str) {
        let below = |p: &str| {
            path == "/" || p == path || p.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
        };
        let mut paths: Vec<String> = (self.cgroups.effective.keys())
            .filter(|p| below(p))
            .cloned()
            .collect();
        // Parents first: each resolves from its parent's new settings.
        paths.sort();
        let old: Vec<(String, Effective)> = paths
            .into_iter()
            .filter_map(|p| self.cgroups.effective.remove(&p).map(|e| (p, e)))
            .collect();
        let own = self.req.own_cgroup.as_ref().map(|o| o.id);
        let mut changed = 0;
        for (p, before) in old {
            let Some(after) = self.cgroups.resolve(&self.req.config, &p) else {
                continue; // gone meanwhile
            };
            let config = &self.req.config;
            let (mut rb, mut ra) = (
                rules::rule_of(config, &before),
                rules::rule_of(config, &after),
            );
            if Some(after.id) == own {
                (rb.protect, ra.protect) = (1, 1);
            }
            if rb == ra {
                continue;
            }
            changed += 1;
            let xattrs: Vec<String> = after.xattrs.iter().map(ToString::to_string).collect();
            tracing::info!(
                "cgroup {p}: xattrs changed: {} -> {} ({})",
                rules::describe(&rb),
                rules::describe(&ra),
                if xattrs.is_empty() {
                    "no xattr in force".to_owned()
                } else {
                    xattrs.join(", ")
                }
            );
            if let Err(err) = self.rules.change(after.id, &ra) {
                tracing::warn!(
                    "cgroup {p}: {err:#}; the handler keeps its old settings until the next \
                     reload"
                );
            }
        }
        if changed == 0 {
            tracing::debug!("cgroup {path}: attributes changed, settings did not");
        }
    }

    /// Resolve the whole tree under `config` and swap in new rules.
    /// Returns the new effective settings' snapshot.
    fn replace_rules(&mut self, config: &Config) -> Result<()> {
        let mut phases = Phases::start();
        let (tree, effective, rules, _) =
            install_tree_rules(&self.obj, config, &self.req, &mut phases, &mut |_| {})?;
        self.rules = rules;
        self.rebuild_at = None;
        self.cgroups.refresh(&tree, effective);
        phases.done("names");
        phases.log("new rules", self.cgroups.effective.len());
        Ok(())
    }

    /// What SIGHUP does: re-read the config. Invalid → log why, keep
    /// everything. Same policy → new rules swapped in ([`KernelRules`]).
    /// Another policy → load it, fill its rules, swap it into the link
    /// (`bpf_link_update`: the old handler stays until the new one is in).
    pub fn reload(&mut self) -> Result<()> {
        let Some(config) = reread_config(&self.req) else {
            return Ok(());
        };
        let policy = if self.req.policy_from_cli {
            if config.policy != self.req.policy {
                tracing::info!(
                    "the config names policy {}; keeping {} from the command line",
                    config.policy,
                    self.req.policy
                );
            }
            self.req.policy
        } else {
            config.policy
        };
        let old = self.cgroups.snapshot();
        let old_policy = self.obj.policy();
        let old_default = self.req.config.default_priority;

        if policy == old_policy {
            self.replace_rules(&config)?;
        } else {
            self.switch_policy(policy, &config)?;
        }

        let new = self.cgroups.snapshot();
        let (changed, changes) = rules::describe_changes(&old, &new, 20);
        let cgroups = new.len();
        // Both generations and their snapshots are gone only now.
        drop((old, new));
        release_freed_memory();
        tracing::info!(
            policy = %policy,
            rules = config.rules.len(),
            cgroups,
            changed,
            "reloaded"
        );
        if policy != old_policy {
            tracing::info!("policy {old_policy} -> {policy} (handler swapped, never detached)");
        }
        if config.default_priority != old_default {
            tracing::info!(
                "default_priority {old_default} -> {}",
                config.default_priority
            );
        }
        for line in changes {
            tracing::info!("  {line}");
        }
        self.req.config = config;
        self.req.policy = policy;
        self.pressure.arm_all(&self.req.config, self.cgroups.dirs());
        self.write_metrics();
        Ok(())
    }

    fn switch_policy(&mut self, policy: PolicyName, config: &Config) -> Result<()> {
        let obj = open_policy(&self.req, policy)?;
        let mut phases = Phases::start();
        let (tree, effective, rules, _) =
            install_tree_rules(&obj, config, &self.req, &mut phases, &mut |_| {})?;
        let (ring, pending) = event_ring(&obj)?;
        obj.prepare_ops()?;
        self.link
            .update(obj.ops_map()?.as_fd(), self.obj.ops_map()?.as_fd())
            .map_err(|e| anyhow::anyhow!("swapping the handler to policy {policy}: {e}"))?;
        // The old handler is out: log what it still reported, then drop it.
        // The new one counts its lost events from zero.
        self.consume_events();
        self.flush_awaits();
        self.awaits.end_run();
        self.dropped = 0;
        self.ring = ring;
        self.pending = pending;
        self.obj = obj;
        self.rules = rules;
        self.rebuild_at = None;
        self.cgroups.refresh(&tree, effective);
        phases.done("swap, names");
        phases.log("policy switch", self.cgroups.effective.len());
        Ok(())
    }
}

/// Events lost since `seen` was last updated, if any: `now` is the
/// handler's running count.
fn newly_dropped(seen: &mut u64, now: u64) -> Option<u64> {
    let lost = now.checked_sub(*seen).filter(|&n| n > 0)?;
    *seen = now;
    Some(lost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeCgroupfs;

    #[test]
    fn lost_events_are_reported_once_each() {
        let mut seen = 0;
        assert_eq!(newly_dropped(&mut seen, 0), None);
        assert_eq!(newly_dropped(&mut seen, 3), Some(3));
        assert_eq!(newly_dropped(&mut seen, 3), None);
        assert_eq!(newly_dropped(&mut seen, 10), Some(7));
        // A new handler after a policy swap starts again at zero.
        seen = 0;
        assert_eq!(newly_dropped(&mut seen, 2), Some(2));
    }

    #[test]
    fn a_reload_checks_the_file_as_the_start_did() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "default_priority = 7\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let mut req = LoadRequest {
            started: Instant::now(),
            policy: PolicyName::Priority,
            policy_from_cli: false,
            config: Config::default(),
            config_path: path.clone(),
            ownership: Ownership::Root,
            own_cgroup: None,
            cgroup_root: dir.path().to_owned(),
            cgroup: "/".into(),
            dry_run: false,
            max_cgroups: crate::abi::MAX_CGROUPS,
            walk_steps: crate::abi::WALK_STEPS,
            log_format: LogFormat::Text,
            metrics_file: None,
            watch_config: false,
        };
        // World-writable: refused, so the running rules stay.
        assert_eq!(reread_config(&req), None);
        // Started with --insecure-config: its reloads skip the owner check too.
        req.ownership = Ownership::Any;
        assert_eq!(reread_config(&req).map(|c| c.default_priority), Some(7));
        // Whatever the ownership, a FIFO is refused, never waited on.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(reread_config(&req), None);
    }

    #[test]
    fn its_own_cgroup_is_protected_in_every_generation_of_rules() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        fake.cgroup("/system.slice/policyd.service", 0, &[]).cgroup(
            "/system.slice/other.service",
            0,
            &[],
        );
        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        std::fs::write(
            proc_root.join("self/cgroup"),
            "0::/system.slice/policyd.service\n",
        )
        .unwrap();
        let own = crate::guard::own_cgroup(&proc_root, dir.path())
            .unwrap()
            .unwrap();
        // A rule that would make policyd's cgroup the first victim.
        let config = Config::parse(
            "[[rule]]\ncgroup = \"/system.slice/**\"\npriority = 1\n",
            "t.toml",
        )
        .unwrap();
        let tree = CgroupTree::read(dir.path()).unwrap();
        let eff = resolve_tree(&config, &tree);
        let protect_of = |entries: &[(u64, PolicydRule)], path: &str| {
            let id = tree.get(tree.find(path).unwrap()).id;
            entries.iter().find(|(k, _)| *k == id).unwrap().1.protect
        };
        let entries = entries_for(&config, &eff, Some(&own));
        assert_eq!(protect_of(&entries, "/system.slice/policyd.service"), 1);
        assert_eq!(protect_of(&entries, "/system.slice/other.service"), 0);
        assert_eq!(protect_of(&entries, "/system.slice"), 0);
        let entries = entries_for(&config, &eff, None);
        assert_eq!(protect_of(&entries, "/system.slice/policyd.service"), 0);
    }

    #[test]
    fn resolves_new_cgroups_and_missing_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeCgroupfs::new(dir.path());
        fake.cgroup("/demo/batch", 0, &[]);
        let config = Config::parse(
            "[[rule]]\ncgroup = \"/demo/batch/**\"\npriority = 10\nkill = \"cgroup\"\n",
            "t.toml",
        )
        .unwrap();
        let tree = CgroupTree::read(dir.path()).unwrap();
        let eff = resolve_tree(&config, &tree);
        let mut cg = Cgroups::from_tree(dir.path(), &tree, eff);
        assert_eq!(cg.effective.len(), 3);

        // A job and its step appear; the step is resolved with its parent.
        fake.cgroup("/demo/batch/j9/step", 0, &[]);
        let e = cg.resolve(&config, "/demo/batch/j9/step").unwrap();
        assert_eq!((e.priority, e.kill), (10, crate::config::KillMode::Cgroup));
        assert!(cg.effective.contains_key("/demo/batch/j9"));
        let id = std::fs::metadata(dir.path().join("demo/batch/j9/step"))
            .unwrap()
            .ino();
        assert_eq!(e.id, id);
        assert_eq!(cg.names.name(id), "/demo/batch/j9/step");
        // Gone before we looked: nothing.
        assert!(cg.resolve(&config, "/demo/nope").is_none());
        assert_eq!(cg.names.name(123_456_789), "cgroup#123456789");
    }
}
