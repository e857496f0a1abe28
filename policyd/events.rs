//! OOM events from the policies' ring buffer, as log lines.
//!
//! Each event becomes one info-level line. In text (the default), key=value
//! fields meant to be grepped (`decision ... outcome=killed ... pid=310`),
//! one line in the log:
//!
//! ```text
//! INFO decision policy=priority scope=global victim_cgroup=/demo/batch/j2 pid=310 comm=job2
//!   priority=10 usage=300MiB rss=290MiB reason=larger-usage outcome=killed killed=1
//!   handler_us=41 candidates=3 tried=1 unkillable=0 exiting=0 empty=0 refused=0 unresolved=0
//!   runner_up=/demo/batch/j1 runner_up_priority=10 runner_up_usage=100MiB kill_err=0
//!   summary="killed pid 310 (job2) of /demo/batch/j2: ..."
//! ```
//!
//! Values with spaces or quotes are quoted; absent values are "-". With
//! `--log-format json`, one [`DecisionLine`] object: the same names, sizes
//! as `usage_bytes`, `rss_bytes` and `runner_up_usage_bytes`, absent values
//! null, plus `over_cap`, `walk_cut` and `top`.
//!
//! `tried` counts the candidates the handler looked into, the victim's
//! included; `unkillable`, `exiting`, `empty` and `refused` say why each one
//! before the victim was passed over. `unresolved` counts the cgroups
//! created since policyd last resolved the tree whose settings depend on
//! their names ([`crate::resolve::Resolver::below`]): the handler judged
//! them by their nearest resolved ancestor's own settings.
//!
//! An OOM that loops while its victim exits (a memory.max write retries until
//! the usage fits) asks the handler again and again, thousands of times under
//! TCG; each time it awaits the same victim. The handler publishes the first
//! such decision and counts the rest; [`Awaits`] logs the decision and then
//! `awaited again` lines with the count.

use std::fmt;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

use crate::abi::{Outcome, PolicydEvent, Reason, MAX_CGROUPS, WALK_STEPS};
use crate::logging::LogFormat;
use crate::owner::Owner;
use crate::sizes::format_bytes;

/// "300MiB": a size without the space, so it stays one word.
pub fn size(bytes: u64) -> String {
    format_bytes(bytes).replace(' ', "")
}

/// One OOM decision as data: what the handler reported, its cgroup ids
/// resolved to paths. The JSON log writes it as is ([`DecisionLine`]); the
/// text line writes the same fields, with sizes as "300MiB" and "-" for
/// what is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub policy: String,
    /// "global", or the OOMing cgroup's path.
    pub scope: String,
    /// What started the OOM: "oom" (an allocation failed), or "pressure"
    /// and the limit that held ("pressure memory.pressure some 40%/10s").
    pub trigger: String,
    pub victim_cgroup: Option<String>,
    /// The unit, pod or container of the victim's cgroup ([`Owner`]).
    pub owner: Option<String>,
    pub pid: u32,
    pub comm: Option<String>,
    pub priority: u32,
    pub usage_bytes: u64,
    pub rss_bytes: u64,
    pub reason: Reason,
    pub outcome: Outcome,
    /// Tasks killed.
    pub killed: u32,
    pub handler_us: u64,
    pub candidates: u32,
    /// Candidates looked into, the victim's included.
    pub tried: u32,
    /// Why the candidates before the victim were passed over.
    #[serde(flatten)]
    pub passed: PassedOver,
    /// Eligible cgroups the handler had no room for.
    pub over_cap: u32,
    /// The handler's walk of the scope's cgroups stopped short: those past
    /// it were not ranked.
    #[serde(default)]
    pub walk_cut: bool,
    /// Cgroups judged by an ancestor's own settings: new, not resolved yet,
    /// and what their rules give depends on their names.
    pub unresolved: u32,
    /// The candidate ranked after the victim.
    pub runner_up: Option<String>,
    pub runner_up_priority: Option<u32>,
    pub runner_up_usage_bytes: Option<u64>,
    /// The best-ranked candidate when there is no victim (e.g. `observe`).
    pub top: Option<String>,
    pub kill_err: i32,
}

/// A decision as `--log-format json` writes it: one object per line, with
/// the `level` and `message` every JSON log line has, and the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionLine {
    pub level: String,
    /// "decision".
    pub message: String,
    #[serde(flatten)]
    pub decision: Decision,
    pub summary: String,
}

/// Candidates passed over, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassedOver {
    /// Only init, kernel threads or oom_score_adj -1000 tasks.
    pub unkillable: u32,
    /// Only exiting tasks (no memory left to free).
    pub exiting: u32,
    /// Emptied or removed since it was ranked.
    pub empty: u32,
    /// The kernel refused every kill.
    pub refused: u32,
}

impl PassedOver {
    fn total(&self) -> u32 {
        self.unkillable + self.exiting + self.empty + self.refused
    }
}

impl fmt::Display for PassedOver {
    /// "3 with only unkillable tasks, 1 exiting"; the counts that are not 0.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.unkillable, "with only unkillable tasks"),
            (self.exiting, "exiting"),
            (self.empty, "emptied or removed"),
            (self.refused, "refused by the kernel"),
        ];
        let text: Vec<String> = parts
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        f.write_str(&text.join(", "))
    }
}

/// "-" for what is absent, in text.
fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl Decision {
    /// `name` turns a cgroup id into its path.
    pub fn new(ev: &PolicydEvent, mut name: impl FnMut(u64) -> String) -> Self {
        let scope = if ev.scope_global != 0 || ev.oom_cgroup_id == 0 {
            "global".to_owned()
        } else {
            name(ev.oom_cgroup_id)
        };
        let victim_cgroup = (ev.victim_cgroup_id != 0).then(|| name(ev.victim_cgroup_id));
        let runner_up =
            Some(&ev.runner_up).filter(|c| ev.victim_cgroup_id != 0 && c.cgroup_id != 0);
        let top = if ev.victim_cgroup_id == 0 {
            ev.ranked().next().map(|c| name(c.cgroup_id))
        } else {
            None
        };
        let comm = ev.comm();
        Decision {
            policy: match ev.policy() {
                Ok(p) => p.to_string(),
                Err(n) => format!("policy#{n}"),
            },
            scope,
            trigger: match ev.trigger {
                0 => "oom".to_owned(),
                n => format!("pressure (declaration #{n})"),
            },
            owner: victim_cgroup
                .as_deref()
                .map(|p| Owner::of(p).to_string())
                .filter(|o| !o.is_empty()),
            victim_cgroup,
            pid: ev.victim_pid,
            comm: (!comm.is_empty()).then_some(comm),
            priority: ev.victim_priority,
            usage_bytes: ev.victim_usage,
            rss_bytes: ev.victim_task_rss,
            reason: ev.reason(),
            outcome: ev.outcome(),
            killed: ev.tasks_killed,
            handler_us: ev.handler_ns / 1000,
            candidates: ev.candidates,
            tried: ev.tried,
            passed: PassedOver {
                unkillable: ev.passed_unkillable,
                exiting: ev.passed_exiting,
                empty: ev.passed_empty,
                refused: ev.passed_refused,
            },
            over_cap: ev.over_cap,
            walk_cut: ev.walk_cut != 0,
            unresolved: ev.unresolved,
            runner_up: runner_up.map(|c| name(c.cgroup_id)),
            runner_up_priority: runner_up.map(|c| c.priority),
            runner_up_usage_bytes: runner_up.map(|c| c.usage),
            top,
            kill_err: ev.kill_err,
        }
    }

    /// Name what declared the OOM (the daemon knows which pressure limit
    /// did; the event carries only its number).
    pub fn with_trigger(mut self, trigger: Option<String>) -> Self {
        if let Some(t) = trigger {
            self.trigger = t;
        }
        self
    }

    fn why(&self) -> String {
        match self.reason {
            Reason::LowestPriority => format!("lowest priority ({})", self.priority),
            Reason::LargerUsage => format!(
                "lowest priority ({}), tie broken by larger usage ({})",
                self.priority,
                size(self.usage_bytes)
            ),
            Reason::LargestUsage => format!("largest usage ({})", size(self.usage_bytes)),
            Reason::Badness => "highest oom_badness()".to_owned(),
            Reason::VictimExiting => "an earlier victim is still exiting".to_owned(),
            Reason::NoCandidate => "no eligible cgroup in scope".to_owned(),
            Reason::ObserveOnly => "observe policy".to_owned(),
            Reason::Preference => format!(
                "preference (user.oomd_prefer here, or user.oomd_avoid on the runner-up), \
                 priority {}",
                self.priority
            ),
            Reason::None | Reason::Unknown(_) => self.reason.to_string(),
        }
    }

    fn task(&self) -> String {
        format!("pid {} ({})", self.pid, or_dash(self.comm.as_ref()))
    }

    fn victim(&self) -> String {
        or_dash(self.victim_cgroup.as_ref())
    }

    /// One sentence: what happened.
    pub fn summary(&self) -> String {
        let mut text = self.what_happened();
        if let Some(limit) = self.trigger.strip_prefix("pressure ") {
            text = format!("OOM declared on pressure ({limit} held): {text}");
        }
        if self.passed.total() > 0 {
            let before = if matches!(self.outcome, Outcome::Killed | Outcome::DryRun) {
                "before it, "
            } else {
                ""
            };
            text.push_str(&format!(
                "; {before}passed over {} candidate(s): {}",
                self.passed.total(),
                self.passed
            ));
        }
        text
    }

    fn what_happened(&self) -> String {
        match self.outcome {
            Outcome::Killed => {
                let n = self.killed;
                let what = if n > 1 {
                    format!("{n} tasks of {} (largest {})", self.victim(), self.task())
                } else {
                    format!("{} of {}", self.task(), self.victim())
                };
                format!("killed {what}: {}", self.why())
            }
            Outcome::Awaited => format!(
                "{} in {} is still exiting from an earlier OOM kill: killed nothing more",
                self.task(),
                self.victim()
            ),
            Outcome::DryRun => format!(
                "dry run: would have killed {} in {} ({}); left to the kernel's OOM killer",
                self.task(),
                self.victim(),
                self.why()
            ),
            Outcome::KillFailed if self.kill_err != 0 => format!(
                "none of the {} candidate(s) had anything to kill (last kill error {}); left to \
                 the kernel's OOM killer",
                self.tried, self.kill_err
            ),
            Outcome::KillFailed => format!(
                "none of the {} candidate(s) had anything to kill; left to the kernel's OOM \
                 killer",
                self.tried
            ),
            Outcome::Deferred => match &self.top {
                Some(top) => format!(
                    "left to the kernel's OOM killer: {}; ranked first: {top}",
                    self.why()
                ),
                None => format!("left to the kernel's OOM killer: {}", self.why()),
            },
            Outcome::Unknown(_) => format!("unknown outcome {}", self.outcome),
        }
    }

    /// The decision as `--log-format json` writes it (without the newline).
    pub fn json_line(&self) -> String {
        let line = DecisionLine {
            level: "INFO".to_owned(),
            message: "decision".to_owned(),
            decision: self.clone(),
            summary: self.summary(),
        };
        serde_json::to_string(&line).expect("a decision serializes")
    }

    /// Log the decision: one info line (and a warning when eligible cgroups
    /// did not fit the handler's table).
    pub fn log(&self, format: LogFormat) {
        if self.over_cap > 0 {
            tracing::warn!(
                "{} eligible cgroup(s) in scope were not considered for this OOM: more than \
                 the handler has room for (policyd load --max-cgroups, at most {MAX_CGROUPS})",
                self.over_cap
            );
        }
        if self.walk_cut {
            tracing::warn!(
                "the handler's walk of the cgroups in scope stopped short (a cgroup removed \
                 under it, or more than {} cgroups): those past it were not considered for \
                 this OOM",
                WALK_STEPS / 2
            );
        }
        match format {
            LogFormat::Text => tracing::info!(
                policy = %self.policy,
                scope = %self.scope,
                trigger = %self.trigger,
                victim_cgroup = %self.victim(),
                owner = %or_dash(self.owner.as_ref()),
                pid = self.pid,
                comm = %or_dash(self.comm.as_ref()),
                priority = self.priority,
                usage = %size(self.usage_bytes),
                rss = %size(self.rss_bytes),
                reason = %self.reason,
                outcome = %self.outcome,
                killed = self.killed,
                handler_us = self.handler_us,
                candidates = self.candidates,
                tried = self.tried,
                unkillable = self.passed.unkillable,
                exiting = self.passed.exiting,
                empty = self.passed.empty,
                refused = self.passed.refused,
                unresolved = self.unresolved,
                runner_up = %or_dash(self.runner_up.as_ref()),
                runner_up_priority = %or_dash(self.runner_up_priority),
                runner_up_usage = %or_dash(self.runner_up_usage_bytes.map(size)),
                kill_err = self.kill_err,
                summary = %self.summary(),
                "decision"
            ),
            // For `journalctl MESSAGE_ID=... POLICYD_VICTIM_CGROUP=...`: the
            // summary is the message, the facts are fields (sizes in bytes,
            // absent ones left out). See crate::journal.
            LogFormat::Journal => tracing::info!(
                message_id = crate::journal::DECISION_MESSAGE_ID,
                policy = %self.policy,
                scope = %self.scope,
                trigger = %self.trigger,
                victim_cgroup = self.victim_cgroup.as_deref(),
                victim_pid = (self.pid != 0).then_some(self.pid),
                victim_comm = self.comm.as_deref(),
                victim_priority = self.priority,
                usage_bytes = self.usage_bytes,
                rss_bytes = self.rss_bytes,
                reason = %self.reason,
                outcome = %self.outcome,
                killed = self.killed,
                handler_us = self.handler_us,
                candidates = self.candidates,
                tried = self.tried,
                unresolved = self.unresolved,
                runner_up = self.runner_up.as_deref(),
                kill_err = self.kill_err,
                "decision: {}",
                self.summary()
            ),
            // Typed fields (bytes, null) that tracing's fields cannot carry:
            // written whole, under the same level filter as the text line.
            LogFormat::Json => {
                if tracing::enabled!(tracing::Level::INFO) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", self.json_line());
                }
            }
        }
    }
}

/// Logs decisions, and a run of awaits of one victim as its first decision
/// plus `awaited again` lines with counts. The handler publishes only the
/// first await of a run and counts the others (policyd.h, `await_run`); the
/// counts come with the next event, or from the handler's word when the OOM
/// has been quiet.
#[derive(Debug, Default)]
pub struct Awaits {
    format: LogFormat,
    /// The run going on: the seq of the event that began it, and its decision.
    run: Option<(u64, Decision)>,
    /// Awaits of the run after its first, as far as known, and how many of
    /// them are logged.
    counted: u64,
    logged: u64,
    /// The count may have grown since it was last read.
    stale: bool,
}

/// The run an `await_run` word names (the seq of its first event), and its
/// count of awaits after that first one.
pub fn split_await_run(word: u64) -> (u64, u64) {
    let shift = crate::abi::AWAIT_RUN_SEQ_SHIFT;
    (word >> shift, word & ((1 << shift) - 1))
}

impl Awaits {
    pub fn new(format: LogFormat) -> Self {
        Awaits {
            format,
            ..Default::default()
        }
    }

    /// Logs `d`, published as event `seq`; `repeats_before` is the final
    /// count of the run before it, which is logged first.
    pub fn log(&mut self, seq: u64, repeats_before: u64, d: Decision) {
        self.counted = self.counted.max(repeats_before);
        self.flush();
        d.log(self.format);
        self.run = (d.outcome == Outcome::Awaited).then_some((seq, d));
        self.counted = 0;
        self.logged = 0;
        self.stale = self.run.is_some();
    }

    /// Whether a run may have counts not yet read: worth a look at the
    /// handler's word once the OOM is quiet.
    pub fn pending(&self) -> bool {
        self.stale
    }

    /// Takes the count from the handler's `await_run` word if it names the
    /// run going on. Once the count stops growing, nothing is pending.
    pub fn update(&mut self, await_run: u64) {
        let (seq, count) = split_await_run(await_run);
        // The word keeps the seq's low bits only.
        let seq_bits = u64::MAX >> crate::abi::AWAIT_RUN_SEQ_SHIFT;
        if self.run.as_ref().is_some_and(|(s, _)| s & seq_bits == seq) {
            self.stale = count > self.counted;
            self.counted = self.counted.max(count);
        } else {
            // Another run began, or the word was torn: its event tells.
            self.stale = false;
        }
    }

    /// Forgets the run going on: its handler is gone, or its count cannot
    /// be read. Its count so far must be flushed first.
    pub fn end_run(&mut self) {
        self.run = None;
        self.stale = false;
        self.counted = 0;
        self.logged = 0;
    }

    /// Logs the awaits counted and not logged yet, if any.
    pub fn flush(&mut self) {
        let n = self.counted.saturating_sub(self.logged);
        if let (Some((_, d)), 1..) = (&self.run, n) {
            tracing::info!(
                policy = %d.policy,
                scope = %d.scope,
                victim_cgroup = %d.victim(),
                pid = d.pid,
                times = n,
                summary = %format!(
                    "the OOM retried {n} more time(s) while {} exited; killed nothing more",
                    d.task()
                ),
                "awaited again"
            );
        }
        self.logged = self.counted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::PolicydCandidate;
    use crate::logging::tests::logged_by;
    use crate::testing::{c_comm, MIB};

    fn cand(cgroup_id: u64, priority: u32, usage: u64) -> PolicydCandidate {
        PolicydCandidate {
            cgroup_id,
            usage,
            priority,
            kill: 0,
            pref: 0,
            pad: [0; 2],
        }
    }

    fn names(id: u64) -> String {
        match id {
            10 => "/demo".into(),
            11 => "/demo/batch/j1".into(),
            12 => "/demo/batch/j2".into(),
            13 => "/demo/web".into(),
            other => format!("cgroup#{other}"),
        }
    }

    fn killed_event() -> PolicydEvent {
        let mut ev = PolicydEvent {
            handler_ns: 41_500,
            oom_cgroup_id: 0,
            scope_global: 1,
            victim_cgroup_id: 12,
            victim_usage: 300 * MIB,
            victim_task_rss: 290 * MIB,
            victim_pid: 310,
            victim_priority: 10,
            tasks_killed: 1,
            candidates: 3,
            tried: 1,
            policy: 0,
            reason: 2,
            outcome: 0,
            ..Default::default()
        };
        ev.victim_comm = c_comm("job2");
        ev.ranked[0] = cand(12, 10, 300 * MIB);
        ev.ranked[1] = cand(11, 10, 100 * MIB);
        ev.ranked[2] = cand(13, 500, 200 * MIB);
        ev.runner_up = cand(11, 10, 100 * MIB);
        ev
    }

    /// The text line, as `policyd load` writes it.
    fn logged(d: &Decision) -> String {
        logged_by(LogFormat::Text, || d.log(LogFormat::Text))
    }

    #[test]
    fn a_decision_names_the_victims_pod() {
        let ev = killed_event();
        let pod = "/kubepods/besteffort/pod0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab/\
                   3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
        let d = Decision::new(&ev, |id| {
            if id == ev.victim_cgroup_id {
                pod.to_owned()
            } else {
                names(id)
            }
        });
        assert_eq!(
            d.owner.as_deref(),
            Some(
                "pod 0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab (besteffort) container \
                 container:3f2a9c1b7d4e"
            )
        );
        assert_eq!(Decision::new(&ev, names).owner, None);
    }

    #[test]
    fn killed_event_line() {
        let d = Decision::new(&killed_event(), names);
        assert_eq!(
            logged(&d),
            " INFO decision policy=priority scope=global trigger=oom victim_cgroup=/demo/batch/j2 \
             owner=- pid=310 \
             comm=job2 priority=10 usage=300MiB rss=290MiB reason=larger-usage outcome=killed \
             killed=1 handler_us=41 candidates=3 tried=1 unkillable=0 exiting=0 empty=0 \
             refused=0 unresolved=0 runner_up=/demo/batch/j1 runner_up_priority=10 \
             runner_up_usage=100MiB kill_err=0 summary=\"killed pid 310 (job2) of /demo/batch/j2: lowest priority \
             (10), tie broken by larger usage (300MiB)\"\n"
        );
    }

    #[test]
    fn a_pressure_declared_oom_says_which_limit() {
        let mut ev = killed_event();
        ev.trigger = 3;
        let d = Decision::new(&ev, names);
        assert_eq!(d.trigger, "pressure (declaration #3)");
        let d = d.with_trigger(Some("pressure memory.pressure some 40%/10s".into()));
        let line = logged(&d);
        assert!(
            line.contains(" scope=global trigger=\"pressure memory.pressure some 40%/10s\" "),
            "{line}"
        );
        assert!(
            d.summary().starts_with(
                "OOM declared on pressure (memory.pressure some 40%/10s held): killed pid 310"
            ),
            "{}",
            d.summary()
        );
    }

    #[test]
    fn killed_event_in_the_journal() {
        let d = Decision::new(&killed_event(), names);
        let entries = crate::journal::tests::entries_of(|| d.log(LogFormat::Journal));
        assert_eq!(entries.len(), 1, "{entries:?}");
        let e = &entries[0];
        assert_eq!(u8::from(crate::journal::priority(e.level)), 5, "notice");
        assert_eq!(
            e.message,
            "decision: killed pid 310 (job2) of /demo/batch/j2: lowest priority (10), tie broken \
             by larger usage (300MiB)"
        );
        let fields: Vec<(&str, &str)> = e
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for expected in [
            ("MESSAGE_ID", crate::journal::DECISION_MESSAGE_ID),
            ("POLICYD_VICTIM_CGROUP", "/demo/batch/j2"),
            ("POLICYD_VICTIM_PID", "310"),
            ("POLICYD_VICTIM_COMM", "job2"),
            ("POLICYD_REASON", "larger-usage"),
            ("POLICYD_OUTCOME", "killed"),
            ("POLICYD_USAGE_BYTES", "314572800"),
            ("POLICYD_RUNNER_UP", "/demo/batch/j1"),
        ] {
            assert!(fields.contains(&expected), "{expected:?} not in {fields:?}");
        }

        // Nothing killed, nothing ranked: absent facts are absent fields.
        let mut ev = killed_event();
        (ev.victim_cgroup_id, ev.victim_pid, ev.outcome, ev.reason) = (0, 0, 2, 6);
        ev.ranked.iter_mut().for_each(|c| c.cgroup_id = 0);
        let d = Decision::new(&ev, names);
        let entries = crate::journal::tests::entries_of(|| d.log(LogFormat::Journal));
        let names: Vec<&str> = entries[0].fields.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"POLICYD_OUTCOME"), "{names:?}");
        for absent in [
            "POLICYD_VICTIM_CGROUP",
            "POLICYD_VICTIM_PID",
            "POLICYD_RUNNER_UP",
        ] {
            assert!(!names.contains(&absent), "{absent} in {names:?}");
        }
    }

    #[test]
    fn candidates_passed_over_are_counted_by_why() {
        // The victim ranked fifth: four cheaper cgroups had nothing to kill.
        let mut ev = killed_event();
        ev.reason = 1;
        ev.tried = 5;
        ev.passed_unkillable = 2;
        ev.passed_exiting = 1;
        ev.passed_refused = 1;
        ev.unresolved = 2;
        let d = Decision::new(&ev, names);
        assert_eq!(
            d.summary(),
            "killed pid 310 (job2) of /demo/batch/j2: lowest priority (10); before it, passed \
             over 4 candidate(s): 2 with only unkillable tasks, 1 exiting, 1 refused by the kernel"
        );
        let line = logged(&d);
        assert!(
            line.contains(" tried=5 unkillable=2 exiting=1 empty=0 refused=1 unresolved=2 "),
            "{line}"
        );

        // Nothing killable anywhere: the kernel decides, and the line says why.
        ev.outcome = 4;
        ev.tasks_killed = 0;
        ev.victim_cgroup_id = 0;
        ev.victim_pid = 0;
        ev.passed_empty = 1;
        ev.kill_err = -3;
        let d = Decision::new(&ev, names);
        assert_eq!(d.runner_up, None);
        assert_eq!(
            d.summary(),
            "none of the 5 candidate(s) had anything to kill (last kill error -3); left to the \
             kernel's OOM killer; passed over 5 candidate(s): 2 with only unkillable tasks, 1 \
             exiting, 1 emptied or removed, 1 refused by the kernel"
        );
        // No kill was even tried: no error to report.
        ev.kill_err = 0;
        ev.passed_refused = 0;
        ev.tried = 4;
        assert!(Decision::new(&ev, names).summary().starts_with(
            "none of the 4 candidate(s) had anything to kill; left to the kernel's OOM killer; \
             passed over 4"
        ));
    }

    #[test]
    fn candidates_beyond_the_table_are_a_warning() {
        let mut ev = killed_event();
        ev.over_cap = 7;
        let out = logged(&Decision::new(&ev, names));
        assert!(
            out.starts_with(
                " WARN 7 eligible cgroup(s) in scope were not considered for this OOM: more \
                 than the handler has room for (policyd load --max-cgroups, at most 65536)\n \
                 INFO decision "
            ),
            "{out}"
        );
    }

    #[test]
    fn a_cut_walk_is_a_warning() {
        let mut ev = killed_event();
        ev.walk_cut = 1;
        let d = Decision::new(&ev, names);
        assert!(d.walk_cut);
        let out = logged(&d);
        assert!(
            out.starts_with(
                " WARN the handler's walk of the cgroups in scope stopped short (a cgroup \
                 removed under it, or more than 4194304 cgroups): those past it were not \
                 considered for this OOM\n INFO decision "
            ),
            "{out}"
        );
        let json: serde_json::Value = serde_json::from_str(&d.json_line()).unwrap();
        assert_eq!(json["walk_cut"], true);
    }

    #[test]
    fn dry_run_says_what_would_have_died() {
        let mut ev = killed_event();
        ev.outcome = 3;
        ev.tasks_killed = 0;
        ev.scope_global = 0;
        ev.oom_cgroup_id = 10;
        ev.reason = 1;
        let d = Decision::new(&ev, names);
        assert_eq!(d.scope, "/demo");
        assert_eq!(
            d.summary(),
            "dry run: would have killed pid 310 (job2) in /demo/batch/j2 (lowest priority (10)); \
             left to the kernel's OOM killer"
        );
        let line = logged(&d);
        assert!(
            line.contains(" scope=/demo trigger=oom victim_cgroup=/demo/batch/j2 owner=- pid=310 "),
            "{line}"
        );
        assert!(line.contains(" outcome=dry-run killed=0 "), "{line}");
    }

    #[test]
    fn deferred_without_victim() {
        let mut ev = PolicydEvent {
            scope_global: 1,
            policy: 1,
            reason: 6,
            outcome: 2,
            candidates: 0,
            ..Default::default()
        };
        ev.handler_ns = 999;
        let d = Decision::new(&ev, names);
        assert_eq!(d.runner_up, None);
        let line = logged(&d);
        assert!(
            line.contains(
                "policy=largest scope=global trigger=oom victim_cgroup=- owner=- pid=0 comm=- \
                 priority=0 usage=0B"
            ),
            "{line}"
        );
        assert!(line.contains("outcome=deferred"), "{line}");
        assert!(
            line.contains("runner_up=- runner_up_priority=- runner_up_usage=-"),
            "{line}"
        );
        assert!(
            line.ends_with(
                "summary=\"left to the kernel's OOM killer: no eligible cgroup in scope\"\n"
            ),
            "{line}"
        );
    }

    #[test]
    fn observe_names_the_top_candidate() {
        let mut ev = killed_event();
        ev.policy = 3;
        ev.reason = 7;
        ev.outcome = 2;
        ev.victim_cgroup_id = 0;
        ev.victim_pid = 0;
        ev.victim_comm = [0; 16];
        let d = Decision::new(&ev, names);
        assert_eq!(d.runner_up, None);
        assert_eq!(
            d.summary(),
            "left to the kernel's OOM killer: observe policy; ranked first: /demo/batch/j2"
        );
    }

    #[test]
    fn whole_cgroup_kill_and_awaited() {
        let mut ev = killed_event();
        ev.tasks_killed = 3;
        ev.reason = 1;
        assert_eq!(
            Decision::new(&ev, names).summary(),
            "killed 3 tasks of /demo/batch/j2 (largest pid 310 (job2)): lowest priority (10)"
        );
        ev.outcome = 1;
        ev.reason = 5;
        assert_eq!(
            Decision::new(&ev, names).summary(),
            "pid 310 (job2) in /demo/batch/j2 is still exiting from an earlier OOM kill: killed \
             nothing more"
        );
    }

    #[test]
    fn a_run_of_awaits_is_its_first_decision_and_counts() {
        let mut awaited = killed_event();
        awaited.outcome = 1;
        awaited.reason = 5;
        awaited.tasks_killed = 0;
        let other = PolicydEvent {
            victim_pid: 311,
            ..awaited
        };
        let decision = |ev: &PolicydEvent| Decision::new(ev, names);
        let word = |seq: u64, n: u64| seq << crate::abi::AWAIT_RUN_SEQ_SHIFT | n;
        let mut awaits = Awaits::new(LogFormat::Text);
        let out = logged_by(LogFormat::Text, || {
            awaits.log(1, 0, decision(&killed_event()));
            assert!(!awaits.pending(), "a kill begins no run");
            // Event 2 begins a run; the handler counts 300 more while the
            // OOM is quiet for policyd, then 199 after policyd looked.
            awaits.log(2, 0, decision(&awaited));
            assert!(awaits.pending());
            awaits.update(word(2, 300));
            assert!(awaits.pending(), "the count grew");
            awaits.flush();
            awaits.update(word(2, 300));
            assert!(!awaits.pending(), "the count stopped growing");
            awaits.flush();
            // The next event carries the run's final count: 499.
            awaits.log(3, 499, decision(&other));
            // A word of another run (or a torn one) counts for nothing.
            awaits.update(word(2, 7_000));
            assert!(!awaits.pending());
            awaits.log(4, 0, decision(&awaited));
            awaits.update(word(4, 1));
            awaits.flush();
            awaits.log(5, 1, decision(&killed_event()));
        });
        let lines: Vec<&str> = out.lines().collect();
        let outcome = |l: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("outcome="))
                .map(str::to_owned)
        };
        assert_eq!(lines.len(), 8, "{out}");
        assert_eq!(outcome(lines[0]).as_deref(), Some("killed"), "{out}");
        assert_eq!(outcome(lines[1]).as_deref(), Some("awaited"), "{out}");
        assert_eq!(
            lines[2],
            " INFO awaited again policy=priority scope=global victim_cgroup=/demo/batch/j2 \
             pid=310 times=300 summary=\"the OOM retried 300 more time(s) while pid 310 (job2) \
             exited; killed nothing more\""
        );
        assert!(lines[3].contains("awaited again") && lines[3].contains(" times=199 "));
        assert!(lines[4].contains(" pid=311 ") && lines[4].contains("outcome=awaited"));
        assert!(lines[5].contains(" pid=310 ") && lines[5].contains("outcome=awaited"));
        assert!(lines[6].contains("awaited again") && lines[6].contains(" times=1 "));
        assert_eq!(outcome(lines[7]).as_deref(), Some("killed"), "{out}");
    }

    #[test]
    fn json_line_carries_the_decision_typed() {
        let d = Decision::new(&killed_event(), names);
        let line = d.json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "decision");
        assert_eq!(v["victim_cgroup"], "/demo/batch/j2");
        assert_eq!(v["usage_bytes"], 300 * MIB);
        assert_eq!(v["reason"], "larger-usage");
        assert_eq!(v["outcome"], "killed");
        assert_eq!(v["unkillable"], 0);
        assert_eq!(v["runner_up"], "/demo/batch/j1");
        assert_eq!(v["top"], serde_json::Value::Null);
        assert_eq!(v["summary"], d.summary());
        // Read back, it is the same decision.
        let back: DecisionLine = serde_json::from_str(&line).unwrap();
        assert_eq!(back.decision, d);

        // Every field of the text line is in the JSON object, by the same
        // name (sizes as *_bytes).
        let text = logged(&d);
        for word in text.split_whitespace().skip(2) {
            let Some((key, _)) = word.split_once('=') else {
                continue;
            };
            let json_key = match key {
                "usage" | "rss" | "runner_up_usage" => format!("{key}_bytes"),
                k => k.to_owned(),
            };
            assert!(v.get(&json_key).is_some(), "{json_key} missing in {line}");
        }

        // No victim: absent values are null, not "-".
        let mut ev = killed_event();
        ev.victim_cgroup_id = 0;
        ev.outcome = 2;
        ev.victim_comm = [0; 16];
        let v: serde_json::Value =
            serde_json::from_str(&Decision::new(&ev, names).json_line()).unwrap();
        assert_eq!(v["victim_cgroup"], serde_json::Value::Null);
        assert_eq!(v["comm"], serde_json::Value::Null);
        assert_eq!(v["runner_up_priority"], serde_json::Value::Null);
        assert_eq!(v["top"], "/demo/batch/j2");
    }
}
