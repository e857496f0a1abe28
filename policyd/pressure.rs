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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::pressure_rules::PressureRule;

/// Where the system-wide pressure is when the cgroup2 root has no
/// `memory.pressure` of its own.
const PROC_PRESSURE: &str = "/proc/pressure/memory";

/// What the daemon must do for a trigger that held long enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declare {
    /// The cgroup's path; "/" declares a system-wide OOM.
    pub path: String,
    /// Its id; 0 for the root (the system-wide OOM).
    pub cgroup_id: u64,
    /// Marks the OOM's decision ([`Pressure::trigger_name`]).
    pub trigger: u64,
    /// "memory.pressure some 40%/10s".
    pub limit: String,
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

struct Trigger {
    file: File,
    rule: PressureRule,
    cgroup_id: u64,
    state: State,
}

impl Trigger {
    /// How long without an event means the pressure is under the limit: a
    /// window, plus another for the kernel's update period and scheduling
    /// delays (psimon is a kernel thread like any other under load).
    fn quiet_after(&self) -> Duration {
        self.rule.window() * 2
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
    /// Declarations whose decision is not logged yet: trigger id → limit.
    declared: HashMap<u64, String>,
    next_trigger: u64,
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
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(&file_path)?;
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
        }
    }

    /// Arm a trigger on the cgroup `path` (id `id`, directory `dir`) if a
    /// `[[pressure]]` table of `config` matches it (the first that does).
    pub fn cgroup_added(&mut self, config: &Config, path: &str, id: u64, dir: &Path) {
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
                        rule: rule.clone(),
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
        if self.triggers.remove(path).is_some() {
            tracing::debug!("pressure trigger on {path} removed with its cgroup");
        }
    }

    /// At start and on reload: [`Pressure::rearm`], unless the kernel could
    /// not act on the triggers (no `bpf_out_of_memory()`): then none is
    /// armed, and the log says why.
    pub fn arm_all<'a>(
        &mut self,
        config: &Config,
        cgroups: impl IntoIterator<Item = (&'a str, u64, std::path::PathBuf)>,
    ) {
        if !config.pressure.is_empty() && !self.dry_run && kernel_can_declare() == Some(false) {
            self.triggers.clear();
            tracing::error!(
                "the running kernel ({}) has no bpf_out_of_memory() kfunc (policyd's kernel \
                 patches, kernel-patches/v7.3/0008): its {} [[pressure]] table(s) cannot \
                 declare OOMs and are not armed; boot a patched kernel, or remove them (real \
                 OOMs are handled either way)",
                crate::loader::kernel_release(),
                config.pressure.len()
            );
            return;
        }
        self.rearm(config, cgroups);
    }

    /// Every trigger armed again from `config` (episodes start over).
    /// `cgroups` lists every (path, id, directory) known.
    pub fn rearm<'a>(
        &mut self,
        config: &Config,
        cgroups: impl IntoIterator<Item = (&'a str, u64, std::path::PathBuf)>,
    ) {
        self.triggers.clear();
        for (path, id, dir) in cgroups {
            self.cgroup_added(config, path, id, &dir);
        }
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
        if windows < t.rule.windows() {
            tracing::debug!(
                "pressure on {path} over {} for {windows} of {} window(s)",
                t.rule.describe(),
                t.rule.windows()
            );
            t.state = State::Building { windows, last: now };
            return None;
        }
        // The episode began when the first of these windows did.
        let since = now.checked_sub(t.rule.window() * windows).unwrap_or(now);
        t.state = State::BackOff { since, last: now };
        let d = Declare {
            path: path.to_owned(),
            cgroup_id: t.cgroup_id,
            trigger: self.next_trigger,
            limit: t.rule.describe(),
        };
        self.next_trigger += 1;
        if !self.dry_run {
            self.declared.insert(d.trigger, d.limit.clone());
        }
        Some(d)
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
                "pressure limit held: declared an OOM ({scope}); memory was freed, back-off \
                 until the pressure is under the limit"
            ),
            Declared::Ret(0) => {
                tracing::warn!(
                    cgroup = %d.path,
                    limit = %d.limit,
                    "pressure limit held: declared an OOM ({scope}) but nothing was killed \
                     (nothing killable in scope); back-off until the pressure is under the limit"
                );
            }
            Declared::Ret(ret) if ret == -nix::libc::EBUSY => {
                // A real OOM is being handled: it is this episode's action,
                // or, if it freed nothing here, the next event declares.
                if let Some(t) = self.triggers.get_mut(&d.path) {
                    let last = match t.state {
                        State::BackOff { last, .. } => last,
                        _ => Instant::now(),
                    };
                    t.state = State::Building {
                        windows: t.rule.windows().saturating_sub(1),
                        last,
                    };
                }
                tracing::info!(
                    cgroup = %d.path,
                    limit = %d.limit,
                    "pressure limit held, but another OOM is being handled: declaring again at \
                     the trigger's next event if the pressure stays"
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
                tracing::error!(cgroup = %d.path, limit = %d.limit, "pressure limit held: {what}");
            }
            Declared::Failed(e) => {
                tracing::error!(
                    cgroup = %d.path,
                    limit = %d.limit,
                    "pressure limit held, but declaring the OOM failed: {e:#}"
                );
            }
        }
    }

    /// The limit that declared the OOM of a decision marked `trigger`, as
    /// decision lines show it ("pressure memory.pressure some 40%/10s").
    pub fn trigger_name(&mut self, trigger: u64) -> Option<String> {
        if trigger == 0 {
            return None;
        }
        Some(match self.declared.get(&trigger) {
            Some(limit) => format!("pressure {limit}"),
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
            if let State::BackOff { since, last } = t.state {
                tracing::info!(
                    cgroup = %path,
                    limit = %t.rule.describe(),
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
