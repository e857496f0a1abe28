//! Pressure-triggered OOMs: `[[pressure]]` rules ([`crate::pressure_rules`])
//! as PSI triggers on the cgroups they match.
//!
//! Each matched cgroup gets a trigger written to its `memory.pressure`
//! (`<some|full> <stall us> <window us>`, Documentation/accounting/psi.rst).
//! The kernel wakes the daemon's poll(2) with POLLPRI when the stall within
//! the window passes the limit, at most once per window, and only while there
//! is pressure: idle, nothing wakes up. When the limit has held for the rule's
//! duration (one window, or several in a row for durations over 10 s), the
//! daemon declares an OOM of that cgroup (system-wide for the root) through
//! the policy object's `declare_oom` program, and the attached policy picks
//! the victim in that scope as for a real OOM.
//!
//! One declaration per episode: afterwards the trigger is in back-off until
//! it has been quiet for two windows (no event, so pressure stayed under the
//! limit for at least a whole window), which is logged as relief. Only then
//! can the next episode declare again. During an episode the daemon wakes
//! once more at its end, to notice the quiet; never when idle.
//!
//! The `[swap]` limit ([`crate::swap_limit`]) rides on one more trigger, on
//! the system's memory pressure ([`SWAP_WAKE`]): swap use grows only through
//! reclaim, and by the time swap and memory are both nearly full, tasks stall
//! in direct reclaim and on swap-ins. Each event reads /proc/meminfo; when the
//! limit holds, the episode declares an OOM of the table's cgroup, and its
//! back-off ends when the stall is quiet. An idle machine, however full its
//! swap, never wakes the daemon.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::pressure_rules::PressureRule;
use crate::swap_limit::{MemInfo, SwapLimit};

/// Where the system-wide pressure is when the cgroup2 root has no
/// `memory.pressure` of its own.
const PROC_PRESSURE: &str = "/proc/pressure/memory";
const PROC_MEMINFO: &str = "/proc/meminfo";

/// The `[swap]` limit's wake-up: a `some` stall of 10 ms within 1 s,
/// system-wide. Low, so that the limit is checked as soon as reclaim starts
/// to hurt; only a machine that stalls on memory meets it.
pub const SWAP_WAKE: &str = "some 10000 1000000";
const SWAP_WAKE_WINDOW: Duration = Duration::from_secs(1);
/// The swap trigger's key among the cgroup paths (which all begin with "/").
pub const SWAP_KEY: &str = "[swap]";

/// What declared an OOM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Pressure,
    Swap,
}

impl Source {
    /// How log lines say the limit held.
    pub const fn held(self) -> &'static str {
        match self {
            Source::Pressure => "pressure limit held",
            Source::Swap => "swap limit held",
        }
    }
}

/// What the daemon must do for a trigger that held long enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declare {
    /// The cgroup's path; "/" declares a system-wide OOM.
    pub path: String,
    /// Its id; 0 for the root (the system-wide OOM).
    pub cgroup_id: u64,
    /// Marks the OOM's decision ([`Pressure::trigger_name`]).
    pub trigger: u64,
    /// "memory.pressure some 40%/10s"; for swap, what was measured:
    /// "swap 93.1% of 64MiB used, memory 91.2% used, limit 90%".
    pub limit: String,
    pub source: Source,
}

/// What `declare_oom` answered, or why it could not run.
#[derive(Debug)]
pub enum Declared {
    /// bpf_out_of_memory()'s return, or the program's negative errno.
    Ret(i32),
    Failed(anyhow::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Quiet,
    /// Over the limit for `windows` windows in a row, the last event at `last`.
    Building {
        windows: u32,
        last: Instant,
    },
    /// Declared (or, under --dry-run, would have) in the episode that began
    /// at `since`; waiting for relief.
    BackOff {
        since: Instant,
        last: Instant,
    },
}

/// What a trigger watches for.
enum Kind {
    Pressure(PressureRule),
    Swap(SwapLimit),
}

struct Trigger {
    file: File,
    kind: Kind,
    cgroup_id: u64,
    state: State,
}

impl Trigger {
    fn window(&self) -> Duration {
        match &self.kind {
            Kind::Pressure(rule) => rule.window(),
            Kind::Swap(_) => SWAP_WAKE_WINDOW,
        }
    }

    fn describe(&self) -> String {
        match &self.kind {
            Kind::Pressure(rule) => rule.describe(),
            Kind::Swap(s) => s.describe(),
        }
    }

    /// How long without an event means the pressure is under the limit: a
    /// window, plus another for the kernel's update period and scheduling
    /// delays (psimon is a kernel thread like any other under load).
    fn quiet_after(&self) -> Duration {
        self.window() * 2
    }

    fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Quiet => None,
            State::Building { last, .. } | State::BackOff { last, .. } => {
                Some(last + self.quiet_after())
            }
        }
    }
}

/// The armed triggers, by cgroup path.
pub struct Pressure {
    triggers: HashMap<String, Trigger>,
    /// The cgroup the handler is attached to: declared OOMs outside its
    /// subtree would not reach it.
    attach: String,
    dry_run: bool,
    /// Declarations whose decision is not logged yet: trigger id → how the
    /// decision line names it.
    declared: HashMap<u64, String>,
    next_trigger: u64,
    /// The `[swap]` table's cgroup id while it exists (0: the root).
    swap_scope: Option<u64>,
    /// The system's memory.pressure and meminfo (elsewhere in tests).
    system_pressure: std::path::PathBuf,
    meminfo: std::path::PathBuf,
    /// Set by [`Pressure::arm_all`] when no trigger may be armed (the log
    /// said why): cgroups created later get none either.
    disarmed: bool,
}

/// Whether `path` is `attach` or below it.
fn within(attach: &str, path: &str) -> bool {
    attach == "/"
        || path == attach
        || path
            .strip_prefix(attach)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Open `memory.pressure` of the cgroup at `dir` and write `spec` to it.
fn arm(dir: &Path, root: bool, spec: &str) -> io::Result<File> {
    let mut file_path = dir.join("memory.pressure");
    if root && !file_path.exists() {
        file_path = PROC_PRESSURE.into();
    }
    arm_file(&file_path, spec)
}

/// Open the pressure file `file_path` and write the trigger `spec` to it.
fn arm_file(file_path: &Path, spec: &str) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(file_path)?;
    // One write, the whole trigger: the kernel parses each write as one.
    file.write_all(spec.as_bytes())?;
    Ok(file)
}

/// Whether the running kernel has the `bpf_out_of_memory()` kfunc, by its
/// BTF; `None`: it has no BTF to tell (loading the policy then fails anyway).
fn kernel_can_declare() -> Option<bool> {
    let btf = libbpf_rs::Btf::from_vmlinux().ok()?;
    let found = btf
        .type_by_kind::<libbpf_rs::btf::types::Func<'_>>()
        .any(|f| f.name().is_some_and(|n| n == "bpf_out_of_memory"));
    Some(found)
}

/// linux/capability.h: what makes a PSI trigger privileged.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has capability `cap` in effect; `None`: cannot tell.
pub fn process_has_cap(cap: u32) -> Option<bool> {
    cap_in_status(&std::fs::read_to_string("/proc/self/status").ok()?, cap)
}

/// Capability `cap` in the `CapEff:` mask of a /proc/PID/status text.
fn cap_in_status(status: &str, cap: u32) -> Option<bool> {
    let mask = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some(mask & (1u64 << cap) != 0)
}

/// What to do about a trigger that cannot be armed, for the log.
fn arm_error(e: &io::Error, path: &str, spec: &str) -> String {
    let what = match e.raw_os_error() {
        Some(nix::libc::ENOENT) => {
            "no memory.pressure: the kernel has no PSI (build it with CONFIG_PSI=y; with \
             CONFIG_PSI_DEFAULT_DISABLED boot with psi=1)"
                .to_owned()
        }
        Some(nix::libc::EOPNOTSUPP) => {
            "PSI is disabled on this kernel (boot with psi=1, or CONFIG_PSI_DEFAULT_DISABLED=n)"
                .to_owned()
        }
        Some(nix::libc::EPERM | nix::libc::EACCES) => {
            "permission denied: PSI triggers on cgroups need write access to memory.pressure \
             (run policyd load as root)"
                .to_owned()
        }
        _ => format!("{e}"),
    };
    format!("cannot arm the pressure trigger \"{spec}\" on {path}: {what}")
}

impl Pressure {
    pub fn new(attach: &str, dry_run: bool) -> Self {
        Pressure {
            triggers: HashMap::new(),
            attach: attach.to_owned(),
            dry_run,
            declared: HashMap::new(),
            next_trigger: 1,
            swap_scope: None,
            system_pressure: PROC_PRESSURE.into(),
            meminfo: PROC_MEMINFO.into(),
            disarmed: false,
        }
    }

    /// Arm the `[swap]` limit of `config`, if it has one, on the system's
    /// memory pressure.
    fn arm_swap(&mut self, config: &Config) {
        let Some(swap) = &config.swap else {
            return;
        };
        if !within(&self.attach, &swap.cgroup) {
            tracing::warn!(
                "the [swap] table of line {} declares OOMs of {}, outside {} where the policy \
                 is attached: they would not reach the policy, so it is not armed (attach the \
                 policy to a cgroup above it, e.g. policyd load --cgroup /)",
                swap.line,
                swap.cgroup,
                self.attach
            );
            return;
        }
        match arm_file(&self.system_pressure, SWAP_WAKE) {
            Ok(file) => {
                tracing::info!(
                    cgroup = %swap.cgroup,
                    limit = %swap.describe(),
                    trigger = SWAP_WAKE,
                    "swap limit armed: checked whenever the system stalls on memory"
                );
                self.triggers.insert(
                    SWAP_KEY.to_owned(),
                    Trigger {
                        file,
                        kind: Kind::Swap(swap.clone()),
                        cgroup_id: 0,
                        state: State::Quiet,
                    },
                );
            }
            Err(e) => tracing::error!(
                "{}",
                arm_error(&e, &self.system_pressure.display().to_string(), SWAP_WAKE)
            ),
        }
    }

    /// Arm a trigger on the cgroup `path` (id `id`, directory `dir`) if a
    /// `[[pressure]]` table of `config` matches it (the first that does).
    pub fn cgroup_added(&mut self, config: &Config, path: &str, id: u64, dir: &Path) {
        if config.swap.as_ref().is_some_and(|s| s.cgroup == path) {
            self.swap_scope = Some(if path == "/" { 0 } else { id });
        }
        if self.disarmed {
            return;
        }
        let Some(rule) = config.pressure.iter().find(|r| r.pattern.matches(path)) else {
            return;
        };
        if self.triggers.contains_key(path) {
            return;
        }
        if !within(&self.attach, path) {
            tracing::warn!(
                "[[pressure]] of line {} matches {path}, outside {} where the policy is \
                 attached: an OOM declared there would not reach the policy, so none is armed \
                 (attach the policy to a cgroup above it, e.g. policyd load --cgroup /)",
                rule.line,
                self.attach
            );
            return;
        }
        let spec = rule.trigger_spec();
        let root = path == "/";
        match arm(dir, root, &spec) {
            Ok(file) => {
                tracing::info!(
                    cgroup = %path,
                    limit = %rule.describe(),
                    trigger = %spec,
                    windows = rule.windows(),
                    "pressure trigger armed"
                );
                self.triggers.insert(
                    path.to_owned(),
                    Trigger {
                        file,
                        kind: Kind::Pressure(rule.clone()),
                        cgroup_id: if root { 0 } else { id },
                        state: State::Quiet,
                    },
                );
            }
            // Removed before we got to it: nothing to watch.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() => {
                tracing::error!("{}", arm_error(&e, path, &spec));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("{}", arm_error(&e, path, &spec)),
        }
    }

    /// The cgroup at `path` is gone: so is its trigger.
    pub fn cgroup_removed(&mut self, path: &str) {
        if self.swap_scope.is_some()
            && self
                .triggers
                .get(SWAP_KEY)
                .is_some_and(|t| matches!(&t.kind, Kind::Swap(s) if s.cgroup == path))
        {
            self.swap_scope = None;
        }
        if self.triggers.remove(path).is_some() {
            tracing::debug!("pressure trigger on {path} removed with its cgroup");
        }
    }

    /// At start and on reload: [`Pressure::rearm`], unless the triggers
    /// could not be trusted to act (no `bpf_out_of_memory()` in the kernel,
    /// no CAP_SYS_RESOURCE): then none is armed, now or for cgroups created
    /// later, and the log says why.
    pub fn arm_all<'a>(
        &mut self,
        config: &Config,
        cgroups: impl IntoIterator<Item = (&'a str, u64, std::path::PathBuf)>,
    ) {
        let tables = config.pressure.len() + usize::from(config.swap.is_some());
        self.disarmed = false;
        if tables > 0 && !self.dry_run && kernel_can_declare() == Some(false) {
            self.disarm();
            tracing::error!(
                "the running kernel ({}) has no bpf_out_of_memory() kfunc (policyd's kernel \
                 patches, kernel-patches/v7.3/0008): its {tables} [[pressure]] and [swap] \
                 table(s) cannot declare OOMs and are not armed; boot a patched kernel, or \
                 remove them (real OOMs are handled either way)",
                crate::loader::kernel_release(),
            );
            return;
        }
        if tables > 0 && process_has_cap(CAP_SYS_RESOURCE) == Some(false) {
            self.disarm();
            tracing::error!(
                "policyd lacks CAP_SYS_RESOURCE: its {tables} [[pressure]] and [swap] table(s) \
                 are not armed. Without it the kernel's PSI triggers are unprivileged: \
                 aggregated every 2 s, and on Linux 7.3 a new one fires on its cgroup's past \
                 stall (psi_trigger_create() starts its window from total[PSI_POLL], \
                 update_triggers() reads total[PSI_AVGS]), which would declare an OOM with no \
                 pressure. Give policyd CAP_SYS_RESOURCE (the shipped unit keeps it in \
                 CapabilityBoundingSet=); real OOMs are handled either way"
            );
            return;
        }
        self.rearm(config, cgroups);
    }

    /// No trigger now, none for cgroups created later.
    fn disarm(&mut self) {
        self.triggers.clear();
        self.disarmed = true;
    }

    /// Every trigger armed again from `config` (episodes start over).
    /// `cgroups` lists every (path, id, directory) known.
    pub fn rearm<'a>(
        &mut self,
        config: &Config,
        cgroups: impl IntoIterator<Item = (&'a str, u64, std::path::PathBuf)>,
    ) {
        self.triggers.clear();
        self.swap_scope = None;
        for (path, id, dir) in cgroups {
            self.cgroup_added(config, path, id, &dir);
        }
        self.arm_swap(config);
    }

    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty()
    }

    /// The trigger fds to poll for POLLPRI, with their cgroup paths.
    pub fn fds(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.triggers
            .iter()
            .map(|(p, t)| (p.as_str(), t.file.as_fd()))
    }

    /// When the daemon must wake up to notice quiet (the end of an episode).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.triggers.values().filter_map(Trigger::deadline).min()
    }

    /// The trigger of `path` fired at `now`: what to declare, if it has held
    /// long enough and its episode declared nothing yet. The episode is in
    /// back-off from here on, under --dry-run too (the caller then only logs
    /// what it would have declared).
    pub fn fired(&mut self, path: &str, now: Instant) -> Option<Declare> {
        let t = self.triggers.get_mut(path)?;
        let rule = match &t.kind {
            Kind::Pressure(rule) => rule.clone(),
            Kind::Swap(_) => return self.swap_fired(now),
        };
        let quiet_after = t.quiet_after();
        let windows = match t.state {
            State::BackOff { since, .. } => {
                t.state = State::BackOff { since, last: now };
                return None;
            }
            State::Building { windows, last } if now.duration_since(last) <= quiet_after => {
                windows + 1
            }
            _ => 1,
        };
        if windows < rule.windows() {
            tracing::debug!(
                "pressure on {path} over {} for {windows} of {} window(s)",
                rule.describe(),
                rule.windows()
            );
            t.state = State::Building { windows, last: now };
            return None;
        }
        // The episode began when the first of these windows did.
        let since = now.checked_sub(rule.window() * windows).unwrap_or(now);
        t.state = State::BackOff { since, last: now };
        let cgroup_id = t.cgroup_id;
        Some(self.declare(path, cgroup_id, rule.describe(), Source::Pressure))
    }

    /// A new declaration, registered for its decision line unless dry.
    fn declare(&mut self, path: &str, cgroup_id: u64, limit: String, source: Source) -> Declare {
        let d = Declare {
            path: path.to_owned(),
            cgroup_id,
            trigger: self.next_trigger,
            limit,
            source,
        };
        self.next_trigger += 1;
        if !self.dry_run {
            let name = match source {
                Source::Pressure => format!("pressure {}", d.limit),
                Source::Swap => d.limit.clone(),
            };
            self.declared.insert(d.trigger, name);
        }
        d
    }

    /// The system stalled on memory: check the `[swap]` limit. It declares
    /// once per episode; the episode ends when the stall has been quiet for
    /// two windows ([`Pressure::expire`]), as for `[[pressure]]`.
    fn swap_fired(&mut self, now: Instant) -> Option<Declare> {
        let meminfo = MemInfo::read(&self.meminfo);
        let scope = self.swap_scope;
        let t = self.triggers.get_mut(SWAP_KEY)?;
        let Kind::Swap(swap) = &t.kind else {
            return None;
        };
        let swap = swap.clone();
        let m = match meminfo {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("swap limit: cannot check it: {e:#}");
                return None;
            }
        };
        let holds = swap.holds(&m);
        match t.state {
            // Even if the kill freed enough swap: while the stall goes on, a
            // limit that holds again a moment later must not kill again.
            State::BackOff { since, .. } => {
                t.state = State::BackOff { since, last: now };
                return None;
            }
            _ if !holds => {
                tracing::debug!(
                    "the system stalls on memory, under the swap limit: {}",
                    swap.measured(&m)
                );
                t.state = State::Quiet;
                return None;
            }
            _ => {
                t.state = State::BackOff {
                    since: now,
                    last: now,
                }
            }
        }
        let Some(cgroup_id) = scope else {
            tracing::error!(
                cgroup = %swap.cgroup,
                "swap limit held ({}), but the [swap] table's cgroup {} does not exist: no OOM \
                 declared in this episode (create it, or set cgroup = \"/\" for a system-wide \
                 OOM)",
                swap.measured(&m),
                swap.cgroup
            );
            return None;
        };
        Some(self.declare(&swap.cgroup, cgroup_id, swap.measured(&m), Source::Swap))
    }

    /// Record how the declaration `d` went, and log it when the decision
    /// line will not say it.
    pub fn declared(&mut self, d: &Declare, result: Declared) {
        let scope = if d.cgroup_id == 0 {
            "system-wide".to_owned()
        } else {
            format!("memory cgroup {}", d.path)
        };
        match result {
            Declared::Ret(1) => tracing::info!(
                cgroup = %d.path,
                limit = %d.limit,
                "{}: declared an OOM ({scope}); memory was freed, back-off until the pressure \
                 is under the limit",
                d.source.held()
            ),
            Declared::Ret(0) => {
                tracing::warn!(
                    cgroup = %d.path,
                    limit = %d.limit,
                    "{}: declared an OOM ({scope}) but nothing was killed (nothing killable in \
                     scope); back-off until the pressure is under the limit",
                    d.source.held()
                );
            }
            Declared::Ret(ret) if ret == -nix::libc::EBUSY => {
                // A real OOM is being handled: it is this episode's action,
                // or, if it freed nothing here, the next event declares.
                let key = match d.source {
                    Source::Pressure => d.path.as_str(),
                    Source::Swap => SWAP_KEY,
                };
                if let Some(t) = self.triggers.get_mut(key) {
                    let last = match t.state {
                        State::BackOff { last, .. } => last,
                        _ => Instant::now(),
                    };
                    let windows = match &t.kind {
                        Kind::Pressure(rule) => rule.windows().saturating_sub(1),
                        Kind::Swap(_) => 0,
                    };
                    t.state = State::Building { windows, last };
                }
                tracing::info!(
                    cgroup = %d.path,
                    limit = %d.limit,
                    "{}, but another OOM is being handled: declaring again at the trigger's next \
                     event if the limit still holds",
                    d.source.held()
                );
            }
            Declared::Ret(ret) => {
                let what = match -ret {
                    nix::libc::EPERM => "declaring an OOM needs CAP_SYS_ADMIN in the initial \
                                         user namespace: run policyd load as root, outside any \
                                         container's user namespace"
                        .to_owned(),
                    nix::libc::ENOSYS => "the kernel has no bpf_out_of_memory() kfunc (policyd's \
                                          kernel patches, kernel-patches/v7.3/0008): pressure \
                                          rules cannot act on this kernel; remove the \
                                          [[pressure]] tables or boot a patched kernel"
                        .to_owned(),
                    nix::libc::ENOENT => "the cgroup is gone, or has no memory controller \
                                          (enable it in its parent's cgroup.subtree_control)"
                        .to_owned(),
                    e => format!(
                        "bpf_out_of_memory() failed: {}",
                        io::Error::from_raw_os_error(e)
                    ),
                };
                tracing::error!(cgroup = %d.path, limit = %d.limit, "{}: {what}", d.source.held());
            }
            Declared::Failed(e) => {
                tracing::error!(
                    cgroup = %d.path,
                    limit = %d.limit,
                    "{}, but declaring the OOM failed: {e:#}",
                    d.source.held()
                );
            }
        }
    }

    /// The limit that declared the OOM of a decision marked `trigger`, as
    /// decision lines show it ("pressure memory.pressure some 40%/10s",
    /// "swap 93.1% of 64MiB used, memory 91.2% used, limit 90%").
    pub fn trigger_name(&mut self, trigger: u64) -> Option<String> {
        if trigger == 0 {
            return None;
        }
        Some(match self.declared.get(&trigger) {
            Some(name) => name.clone(),
            None => format!("pressure (declaration #{trigger})"),
        })
    }

    /// The decisions of a declaration are logged (the handler reports
    /// during the declaration itself): forget it.
    pub fn forget(&mut self, trigger: u64) {
        self.declared.remove(&trigger);
    }

    /// Episodes quiet since their deadline end: back-offs end with a log
    /// line saying how long the episode lasted.
    pub fn expire(&mut self, now: Instant) {
        for (path, t) in &mut self.triggers {
            let Some(deadline) = t.deadline() else {
                continue;
            };
            if now < deadline {
                continue;
            }
            if let (State::BackOff { since, last }, Kind::Swap(s)) = (t.state, &t.kind) {
                tracing::info!(
                    cgroup = %s.cgroup,
                    limit = %s.describe(),
                    episode_s = format!("{:.1}", last.duration_since(since).as_secs_f64()),
                    "swap limit relieved: the system no longer stalls on memory; the next \
                     episode may declare again"
                );
            } else if let State::BackOff { since, last } = t.state {
                tracing::info!(
                    cgroup = %path,
                    limit = %t.describe(),
                    episode_s = format!("{:.1}", last.duration_since(since).as_secs_f64()),
                    "pressure relieved: under the limit for a whole window; the next episode \
                     may declare again"
                );
            }
            t.state = State::Quiet;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup directory whose memory.pressure is a plain file: arming
    /// writes the trigger into it, as the kernel would read it.
    fn cgroup(root: &Path, path: &str) -> std::path::PathBuf {
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.pressure"), "").unwrap();
        dir
    }

    fn config(text: &str) -> Config {
        Config::parse(text, "p.toml").unwrap()
    }

    const TEN_S: &str = "[[pressure]]\ncgroup = \"/batch/*\"\nstall = \"some\"\nlimit = \"40%\"\n\
                         duration = \"10s\"\n";

    #[test]
    fn arms_the_first_matching_rule_with_its_trigger() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/batch/j1");
        let other = cgroup(tmp.path(), "/web");
        let mut p = Pressure::new("/", false);
        p.rearm(
            &config(TEN_S),
            [("/batch/j1", 7, dir.clone()), ("/web", 8, other.clone())],
        );
        assert_eq!(
            p.fds().map(|(path, _)| path).collect::<Vec<_>>(),
            ["/batch/j1"]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.pressure")).unwrap(),
            "some 4000000 10000000"
        );
        assert_eq!(
            std::fs::read_to_string(other.join("memory.pressure")).unwrap(),
            ""
        );
        p.cgroup_removed("/batch/j1");
        assert!(p.is_empty());
    }

    #[test]
    fn a_disarmed_pressure_arms_no_new_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/batch/j1");
        let mut p = Pressure::new("/", false);
        p.rearm(&config(TEN_S), [("/batch/j1", 7, dir.clone())]);
        assert!(!p.is_empty());
        p.disarm();
        assert!(p.is_empty());
        let later = cgroup(tmp.path(), "/batch/j2");
        p.cgroup_added(&config(TEN_S), "/batch/j2", 9, &later);
        assert!(p.is_empty());
        assert_eq!(
            std::fs::read_to_string(later.join("memory.pressure")).unwrap(),
            ""
        );
    }

    #[test]
    fn capabilities_from_proc_status() {
        // CAP_SYS_ADMIN (21) alone, then with CAP_SYS_RESOURCE (24).
        let admin = "Name:\tpolicyd\nCapPrm:\t0000000000200000\nCapEff:\t0000000000200000\n";
        assert_eq!(cap_in_status(admin, CAP_SYS_RESOURCE), Some(false));
        assert_eq!(cap_in_status(admin, 21), Some(true));
        let both = "CapEff:\t0000000001200000\n";
        assert_eq!(cap_in_status(both, CAP_SYS_RESOURCE), Some(true));
        assert_eq!(cap_in_status("Name:\tx\n", CAP_SYS_RESOURCE), None);
        assert_eq!(cap_in_status("CapEff:\tzz\n", CAP_SYS_RESOURCE), None);
    }

    #[test]
    fn nothing_is_armed_outside_the_attached_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/batch/j1");
        let mut p = Pressure::new("/web", false);
        p.cgroup_added(&config(TEN_S), "/batch/j1", 7, &dir);
        assert!(p.is_empty());
        assert!(within("/batch", "/batch/j1") && !within("/batch", "/batchx/j1"));
    }

    #[test]
    fn one_declaration_per_episode_then_relief() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/batch/j1");
        let mut p = Pressure::new("/", false);
        p.cgroup_added(&config(TEN_S), "/batch/j1", 7, &dir);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(p.next_deadline(), None, "idle: no wake-up");

        let d = p.fired("/batch/j1", t0).expect("one window held: declare");
        assert_eq!(
            (d.cgroup_id, d.limit.as_str()),
            (7, "memory.pressure some 40%/10s")
        );
        assert_eq!(
            p.trigger_name(d.trigger).as_deref(),
            Some("pressure memory.pressure some 40%/10s")
        );
        p.forget(d.trigger);
        // Still over the limit, window after window: back-off, no second OOM.
        for i in 1..5 {
            assert_eq!(p.fired("/batch/j1", t0 + s(11 * i)), None);
        }
        let last = t0 + s(44);
        assert_eq!(p.next_deadline(), Some(last + s(20)));
        p.expire(last + s(19));
        assert_eq!(
            p.fired("/batch/j1", last + s(11)),
            None,
            "not quiet long enough"
        );
        // Quiet for two windows: relief, and the next episode declares.
        p.expire(last + s(11) + s(20));
        assert_eq!(p.next_deadline(), None);
        let again = p.fired("/batch/j1", last + s(60)).expect("a new episode");
        assert_ne!(again.trigger, d.trigger);
    }

    #[test]
    fn long_durations_need_consecutive_windows() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/");
        let cfg = config("[[pressure]]\ncgroup = \"/\"\nlimit = \"60%\"\nduration = \"30s\"\n");
        let mut p = Pressure::new("/", false);
        p.cgroup_added(&cfg, "/", 1, &dir);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(p.fired("/", t0), None);
        assert_eq!(p.fired("/", t0 + s(11)), None);
        // A gap: the pressure was under the limit for a window, start again.
        assert_eq!(p.fired("/", t0 + s(40)), None);
        assert_eq!(p.fired("/", t0 + s(51)), None);
        let d = p.fired("/", t0 + s(62)).expect("three windows in a row");
        assert_eq!(d.cgroup_id, 0, "the root declares a system-wide OOM");
    }

    #[test]
    fn dry_run_backs_off_too_and_registers_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/batch/j1");
        let mut p = Pressure::new("/", true);
        p.cgroup_added(&config(TEN_S), "/batch/j1", 7, &dir);
        let t0 = Instant::now();
        let d = p.fired("/batch/j1", t0).unwrap();
        assert_eq!(
            p.trigger_name(d.trigger).as_deref(),
            Some("pressure (declaration #1)")
        );
        assert_eq!(p.fired("/batch/j1", t0 + Duration::from_secs(11)), None);
    }

    /// A Pressure whose system pressure and meminfo are files in `tmp`;
    /// `cgroups` are known to it as (path, id).
    fn swap_pressure(
        tmp: &Path,
        attach: &str,
        dry_run: bool,
        text: &str,
        cgroups: &[(&str, u64)],
    ) -> Pressure {
        let mut p = Pressure::new(attach, dry_run);
        p.system_pressure = tmp.join("pressure-memory");
        p.meminfo = tmp.join("meminfo");
        std::fs::write(&p.system_pressure, "").unwrap();
        let dirs: Vec<_> = cgroups
            .iter()
            .map(|(path, id)| (*path, *id, cgroup(&tmp.join("cg"), path)))
            .collect();
        p.rearm(&config(text), dirs);
        p
    }

    /// /proc/meminfo with swap and memory `swap_pct` and `mem_pct` used.
    fn meminfo(p: &Pressure, mem_pct: u64, swap_pct: u64) {
        std::fs::write(
            &p.meminfo,
            format!(
                "MemTotal: 100000 kB\nMemFree: 1000 kB\nMemAvailable: {} kB\n\
                 SwapTotal: 65536 kB\nSwapFree: {} kB\n",
                1000 * (100 - mem_pct),
                65536 * (100 - swap_pct) / 100
            ),
        )
        .unwrap();
    }

    const SWAP: &str = "[swap]\nlimit = \"90%\"\n";

    #[test]
    fn the_swap_limit_declares_once_per_episode() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = swap_pressure(tmp.path(), "/", false, SWAP, &[("/", 1)]);
        assert_eq!(
            p.fds().map(|(k, _)| k).collect::<Vec<_>>(),
            [SWAP_KEY],
            "armed on the system's pressure"
        );
        assert_eq!(
            std::fs::read_to_string(&p.system_pressure).unwrap(),
            SWAP_WAKE
        );
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Stalls with swap full but memory to spare: nothing, and no wake-up.
        meminfo(&p, 50, 99);
        assert_eq!(p.fired(SWAP_KEY, t0), None);
        assert_eq!(p.next_deadline(), None);

        meminfo(&p, 95, 97);
        let d = p.fired(SWAP_KEY, t0 + s(1)).expect("the limit holds");
        assert_eq!(
            (d.path.as_str(), d.cgroup_id, d.source),
            ("/", 0, Source::Swap)
        );
        assert_eq!(
            d.limit,
            "swap 97% of 64MiB used, memory 95% used, limit 90%"
        );
        assert_eq!(p.trigger_name(d.trigger), Some(d.limit.clone()));
        p.forget(d.trigger);
        // Still over the limit, still stalling: back-off.
        for i in 2..6 {
            assert_eq!(p.fired(SWAP_KEY, t0 + s(i)), None);
        }
        assert_eq!(p.next_deadline(), Some(t0 + s(5) + s(2)));
        // The kill freed swap, but the stall goes on: still the same
        // episode, even when the limit holds again.
        meminfo(&p, 95, 60);
        assert_eq!(p.fired(SWAP_KEY, t0 + s(6)), None);
        meminfo(&p, 95, 97);
        assert_eq!(p.fired(SWAP_KEY, t0 + s(7)), None);
        // Quiet for two windows: the next stall declares again.
        p.expire(t0 + s(9));
        assert_eq!(p.next_deadline(), None);
        assert!(p.fired(SWAP_KEY, t0 + s(20)).is_some());
    }

    #[test]
    fn a_quiet_stall_ends_a_swap_episode_too() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = swap_pressure(tmp.path(), "/", false, SWAP, &[("/", 1)]);
        let t0 = Instant::now();
        meminfo(&p, 95, 97);
        assert!(p.fired(SWAP_KEY, t0).is_some());
        assert_eq!(p.fired(SWAP_KEY, t0 + Duration::from_secs(1)), None);
        p.expire(t0 + Duration::from_secs(3));
        assert!(p.fired(SWAP_KEY, t0 + Duration::from_secs(10)).is_some());
    }

    #[test]
    fn the_swap_scope_is_the_tables_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let text = "[swap]\ncgroup = \"/user.slice\"\n";
        let mut p = swap_pressure(
            tmp.path(),
            "/",
            false,
            text,
            &[("/", 1), ("/user.slice", 42)],
        );
        meminfo(&p, 95, 97);
        let d = p.fired(SWAP_KEY, Instant::now()).unwrap();
        assert_eq!((d.path.as_str(), d.cgroup_id), ("/user.slice", 42));

        // Gone: the limit holds, nothing to declare, once per episode.
        p.cgroup_removed("/user.slice");
        p.expire(Instant::now() + Duration::from_secs(60));
        assert_eq!(p.fired(SWAP_KEY, Instant::now()), None);
        assert!(p.next_deadline().is_some(), "in back-off all the same");

        // Outside the attached cgroup: not armed at all.
        let p = swap_pressure(tmp.path(), "/system.slice", false, text, &[]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_dry_swap_run_registers_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = swap_pressure(tmp.path(), "/", true, SWAP, &[("/", 1)]);
        meminfo(&p, 95, 97);
        let d = p.fired(SWAP_KEY, Instant::now()).unwrap();
        assert_eq!(
            p.trigger_name(d.trigger).as_deref(),
            Some("pressure (declaration #1)")
        );
    }

    #[test]
    fn busy_retries_at_the_next_event() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = cgroup(tmp.path(), "/batch/j1");
        let mut p = Pressure::new("/", false);
        p.cgroup_added(&config(TEN_S), "/batch/j1", 7, &dir);
        let t0 = Instant::now();
        let d = p.fired("/batch/j1", t0).unwrap();
        p.declared(&d, Declared::Ret(-nix::libc::EBUSY));
        assert!(p.fired("/batch/j1", t0 + Duration::from_secs(11)).is_some());
    }
}
