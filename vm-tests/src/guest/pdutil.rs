//! Helpers for the policyd-* scenarios and the demo: running /bin/policyd as the daemon
//! (a child process whose log the scenario follows) and as one-shot commands, reading its
//! `decision` log lines, writing per-scenario configs, and checking who an OOM killed.
//!
//! Every `policyd load` here runs with `--log-format json`: each line of its output is one
//! JSON object with `level` and `message` ([`LogLine`]), and a decision is the daemon's own
//! typed record (`policyd::events::DecisionLine`), read back with serde, not parsed from
//! text:
//!
//! ```text
//! {"level":"INFO","message":"attached","policy":"priority","cgroup":"/app","rules":2,...}
//! {"level":"INFO","message":"decision","policy":"priority","scope":"/app",
//!  "victim_cgroup":"/app/hog","pid":212,...,"reason":"lowest-priority","outcome":"killed",...}
//! {"level":"WARN","message":"/tmp/x.toml is not valid: keeping the running policy ..."}
//! ```
//!
//! (see policyd/events.rs and policyd/daemon.rs). Every line the daemon prints is echoed to
//! the console as `policyd[PID]| ...`, so a failed scenario's log shows what it said.

// A toolbox: not every helper has a user in every scenario.
#![allow(dead_code)]

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::libbpf_sys;
use libbpf_rs::query::ProgInfoIter;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use policyd::abi::PolicydRule;
use policyd::events::DecisionLine;
use policyd::kills::KillLine;

use super::util::{self, describe_status, Cgroup, Hog, HogSpec, Kmsg};

/// The policyd binary in the guest's initramfs.
pub const POLICYD: &str = "/bin/policyd";
/// The shipped configuration, copied from the repository's policies.toml.
pub const SHIPPED_CONFIG: &str = "/etc/policyd/policies.toml";
/// The demo's configuration, copied from vm-tests/demo.toml.
pub const DEMO_CONFIG: &str = "/etc/policyd/demo.toml";

/// How long `policyd load` may take to verify, load and attach a policy under TCG.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a scenario waits for an OOM (a hog growing into its limit) to be resolved.
pub const OOM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a hog may take to touch its initial memory under TCG.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `text` to /tmp/<name>.toml and returns the path.
pub fn write_config(name: &str, text: &str) -> Result<String> {
    let path = format!("/tmp/{name}.toml");
    util::write_file(&path, text)?;
    Ok(path)
}

/// The layout of the service-versus-hog scenarios: /app holds a valuable service
/// (priority 500) and a cheap hog (priority 10). The service is the biggest task, so the
/// kernel's own killer would pick it; `priority` must pick the hog.
pub struct ServiceAndHog {
    pub app: Cgroup,
    pub service_cg: Cgroup,
    pub hog_cg: Cgroup,
    /// The config file holding the two rules.
    pub config: String,
    /// /app's memory.max in MiB, if any.
    memory_max: Option<u64>,
}

const SERVICE_AND_HOG_RULES: &str = r#"
policy = "priority"

[[rule]]
cgroup = "/app/service"
priority = 500

[[rule]]
cgroup = "/app/hog"
priority = 10
"#;

impl ServiceAndHog {
    /// Creates the cgroups and /tmp/<name>.toml. `memory_max` (MiB) limits /app (a memcg
    /// OOM); None leaves it unlimited, for a global OOM.
    pub fn create(name: &str, memory_max: Option<u64>) -> Result<ServiceAndHog> {
        let app = Cgroup::create("app")?;
        if let Some(max) = memory_max {
            app.set("memory.max", format!("{max}M"))?;
        }
        Ok(ServiceAndHog {
            service_cg: app.child("service")?,
            hog_cg: app.child("hog")?,
            app,
            config: write_config(name, SERVICE_AND_HOG_RULES)?,
            memory_max,
        })
    }

    /// Starts the service holding `service_mib`, marks the kernel log, then starts the hog,
    /// growing until an OOM: the returned log holds that OOM and nothing before it.
    pub fn start(&self, service_mib: u64) -> Result<(Hog, Kmsg, Hog)> {
        // A large service takes longer than READY_TIMEOUT to touch its memory under TCG.
        let service = Hog::start(
            &self.service_cg,
            &HogSpec::fixed(service_mib),
            Duration::from_secs(40),
        )?;
        let kmsg = Kmsg::mark()?;
        let mut spec = HogSpec::growing(8);
        if let Some(max) = self.memory_max {
            // Should the service be the one to die, the hog must not refill its memory
            // and run into a second OOM before the scenario has looked.
            let cap = max * 2 / 3;
            ensure!(
                service_mib + cap > max + 8 && cap + 8 < max,
                "a {service_mib} MiB service and a hog capped at {cap} MiB do not make one \
                 OOM under memory.max {max} MiB"
            );
            spec = spec.up_to(cap);
        }
        let hog = Hog::start(&self.hog_cg, &spec, READY_TIMEOUT)?;
        println!(
            "service {} ({service_mib} MiB, priority 500), hog {} (growing, priority 10)",
            service.pid(),
            hog.pid()
        );
        Ok((service, kmsg, hog))
    }
}

/// OOM-heavy scenarios: no task dump in the OOM report (slow on the serial console).
pub fn quiet_oom_reports() -> Result<()> {
    util::write_file("/proc/sys/vm/oom_dump_tasks", "0")
}

/// Runs `policyd ARGS...` to completion (a one-shot command: status, explain, load that
/// is expected to fail, ...) and returns its output, which it also prints.
pub fn run(args: &[&str]) -> Result<Output> {
    run_echo(args, true)
}

/// [`run`] that prints nothing, for a command run again and again while waiting.
pub fn run_quiet(args: &[&str]) -> Result<Output> {
    run_echo(args, false)
}

fn run_echo(args: &[&str], echo: bool) -> Result<Output> {
    let out = Command::new(POLICYD)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {POLICYD} {}", args.join(" ")))?;
    if echo {
        println!(
            "$ policyd {} -> {}\n{}{}",
            args.join(" "),
            describe_status(out.status),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `policyd ARGS...`, requires exit status 0 and parses stdout as JSON.
pub fn run_json(args: &[&str]) -> Result<serde_json::Value> {
    parse_json(args, run(args)?)
}

/// [`run_json`] that prints nothing unless the command fails, for many runs in a row.
pub fn run_json_quiet(args: &[&str]) -> Result<serde_json::Value> {
    parse_json(args, run_echo(args, false)?)
}

fn parse_json(args: &[&str], out: Output) -> Result<serde_json::Value> {
    ensure!(
        out.status.success(),
        "policyd {} failed ({}): {}",
        args.join(" "),
        describe_status(out.status),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("policyd {}: stdout is not JSON", args.join(" ")))
}

/// `policyd status --json`: every attached BPF OOM handler.
pub fn status() -> Result<Vec<serde_json::Value>> {
    match run_json(&["status", "--json"])? {
        serde_json::Value::Array(handlers) => Ok(handlers),
        other => bail!("policyd status --json printed {other}, not an array"),
    }
}

/// The handler `policyd status --json` lists at `cgroup`, if any.
pub fn status_at(cgroup: &str) -> Result<Option<serde_json::Value>> {
    Ok(status()?
        .into_iter()
        .find(|h| h["cgroup"].as_str() == Some(cgroup)))
}

/// One line of policyd's output: a JSON log object, or plain text (stderr, or anything
/// written before logging started), kept with an empty level.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// "INFO", "WARN", "ERROR", ...; empty for a line that is not JSON.
    pub level: String,
    /// The message; the whole line when it is not JSON.
    pub message: String,
    /// Every key of the object, `level` and `message` included.
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub raw: String,
}

impl LogLine {
    pub fn parse(raw: &str) -> LogLine {
        let object = match serde_json::from_str(raw) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        LogLine {
            level: text("level").unwrap_or_default(),
            message: text("message").unwrap_or_else(|| raw.to_owned()),
            fields: object,
            raw: raw.to_owned(),
        }
    }

    /// Whether this is a `level` line whose message contains `text`.
    pub fn is(&self, level: &str, text: &str) -> bool {
        self.level == level && self.message.contains(text)
    }

    /// A field as text: strings as they are, numbers and booleans printed, null as "-".
    pub fn field(&self, key: &str) -> Option<String> {
        self.fields.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".to_owned(),
            other => other.to_string(),
        })
    }
}

impl LogLine {
    /// Fails unless every `(key, value)` of `want` is in the line, as text; `what` names
    /// the line ("decision", "kill") in the error.
    pub fn expect(&self, what: &str, want: &[(&str, &str)]) -> Result<()> {
        let wrong: Vec<String> = want
            .iter()
            .filter_map(|(k, v)| {
                let got = self.field(k);
                (got.as_deref() != Some(*v)).then(|| {
                    format!(
                        "{k}={} (expected {v})",
                        got.as_deref().unwrap_or("<missing>")
                    )
                })
            })
            .collect();
        ensure!(
            wrong.is_empty(),
            "{what} differs: {}\n  {what}: {self}",
            wrong.join(", "),
        );
        Ok(())
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// One OOM decision of the daemon: its typed record (`Deref`), and the line it came in.
#[derive(Clone, Debug)]
pub struct Decision {
    pub record: DecisionLine,
    pub line: LogLine,
}

impl std::ops::Deref for Decision {
    type Target = policyd::events::Decision;
    fn deref(&self) -> &Self::Target {
        &self.record.decision
    }
}

impl Decision {
    /// None for lines that are not decisions; an error for a decision that does not read
    /// as one (a renamed or retyped field), which must never be skipped silently.
    pub fn from_line(line: &LogLine) -> Option<Result<Decision>> {
        (line.message == "decision").then(|| {
            let record = serde_json::from_value(serde_json::Value::Object(line.fields.clone()))
                .with_context(|| format!("a decision policyd's types do not read: {line}"))?;
            Ok(Decision {
                record,
                line: line.clone(),
            })
        })
    }

    /// The value of `key` as text (see [`LogLine::field`]); an error naming the line when
    /// it is missing.
    pub fn get(&self, key: &str) -> Result<String> {
        self.line
            .field(key)
            .with_context(|| format!("no {key} in the decision: {}", self.line))
    }

    /// The victim's cgroup, "-" without one.
    pub fn victim_cgroup(&self) -> &str {
        self.record.decision.victim_cgroup.as_deref().unwrap_or("-")
    }

    /// Fails unless every `(key, value)` of `want` is in the decision, as text.
    pub fn expect(&self, want: &[(&str, &str)]) -> Result<()> {
        self.line.expect("decision", want)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.line.fmt(f)
    }
}

/// One OOM kill that policyd logged (`policyd trace`, or a kill `policyd load`'s handler
/// did not decide): its typed record (`Deref`), and the line it came in.
#[derive(Clone, Debug)]
pub struct Kill {
    pub record: KillLine,
    pub line: LogLine,
}

impl std::ops::Deref for Kill {
    type Target = policyd::kills::Kill;
    fn deref(&self) -> &Self::Target {
        &self.record.kill
    }
}

impl Kill {
    /// None for lines that are not kills; an error for a kill line policyd's types do not
    /// read.
    pub fn from_line(line: &LogLine) -> Option<Result<Kill>> {
        (line.message == "kill").then(|| {
            let record = serde_json::from_value(serde_json::Value::Object(line.fields.clone()))
                .with_context(|| format!("a kill line policyd's types do not read: {line}"))?;
            Ok(Kill {
                record,
                line: line.clone(),
            })
        })
    }

    /// Fails unless every `(key, value)` of `want` is in the kill line, as text.
    pub fn expect(&self, want: &[(&str, &str)]) -> Result<()> {
        self.line.expect("kill", want)
    }
}

impl fmt::Display for Kill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.line.fmt(f)
    }
}

/// A running `policyd load --log-format json`: its log, line by line, and its process. It
/// runs in the root cgroup, with the oom_score_adj a user's shell would give it (0; the
/// runner's -1000 is not inherited), as a user would start it.
pub struct Policyd {
    child: Child,
    pid: i32,
    lines: mpsc::Receiver<LogLine>,
    /// Every line received so far (stdout and stderr, in arrival order).
    log: Vec<LogLine>,
    /// Lines before this index have been looked at by a wait.
    cursor: usize,
    exit: Option<ExitStatus>,
    /// From spawn to the "attached" line.
    attach_time: Option<Duration>,
    /// Of that, the spawn itself (fork, cgroup move, exec).
    spawn_time: Duration,
}

impl Policyd {
    /// Starts `policyd load ARGS...` and waits for its "attached" line; its output is
    /// echoed to the console.
    pub fn load(args: &[&str]) -> Result<Policyd> {
        Policyd::start(args, true)
    }

    /// [`Policyd::load`], echoing its output or not (benchmarks: the serial console is
    /// slow under TCG, and its cost would land in what they measure).
    pub fn start(args: &[&str], echo: bool) -> Result<Policyd> {
        Policyd::start_within(args, echo, ATTACH_TIMEOUT)
    }

    /// [`Policyd::start`] with its own time limit (start-up at scale).
    pub fn start_within(args: &[&str], echo: bool, timeout: Duration) -> Result<Policyd> {
        let started = Instant::now();
        let mut pd = Policyd::spawn_echo(args, echo)?;
        pd.wait_line(timeout, "policyd's \"attached\" line", |l| {
            l.is("INFO", "attached")
        })?;
        pd.attach_time = Some(started.elapsed());
        Ok(pd)
    }

    /// Starts `policyd load ARGS...` without waiting for anything.
    pub fn spawn(args: &[&str]) -> Result<Policyd> {
        Policyd::spawn_echo(args, true)
    }

    /// Starts `policyd trace` and waits until it traces.
    pub fn trace() -> Result<Policyd> {
        let started = Instant::now();
        let mut pd = Policyd::spawn_command("trace", &[], true, &[])?;
        pd.wait_line(
            ATTACH_TIMEOUT,
            "policyd trace's \"tracing OOM kills\" line",
            |l| l.is("INFO", "tracing OOM kills"),
        )?;
        pd.attach_time = Some(started.elapsed());
        Ok(pd)
    }

    /// Starts `policyd load ARGS...` without the capabilities `caps` (dropped from its
    /// bounding set: root keeps the others) and waits for its "attached" line. Its
    /// oom_score_adj is -1000 already, as the unit's OOMScoreAdjust= sets it: policyd
    /// could not lower it without CAP_SYS_RESOURCE.
    pub fn load_without_caps(args: &[&str], caps: &[u32]) -> Result<Policyd> {
        let mut pd = Policyd::spawn_command("load", args, true, caps)?;
        pd.wait_line(ATTACH_TIMEOUT, "policyd's \"attached\" line", |l| {
            l.is("INFO", "attached")
        })?;
        Ok(pd)
    }

    fn spawn_echo(args: &[&str], echo: bool) -> Result<Policyd> {
        Policyd::spawn_command("load", args, echo, &[])
    }

    fn spawn_command(
        command: &str,
        args: &[&str],
        echo: bool,
        drop_caps: &[u32],
    ) -> Result<Policyd> {
        let mut cmd = Command::new(POLICYD);
        cmd.args([command, "--log-format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !drop_caps.is_empty() {
            let caps = drop_caps.to_vec();
            // SAFETY: prctl(2) is async-signal-safe and touches only this process.
            unsafe {
                cmd.pre_exec(move || {
                    for &cap in &caps {
                        let cap = nix::libc::c_ulong::from(cap);
                        if nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let adj = if drop_caps.is_empty() { 0 } else { -1000 };
        let spawning = Instant::now();
        let mut child = util::spawn_in(&Cgroup::root(), &mut cmd, Some(adj))
            .with_context(|| format!("starting {POLICYD} {command} {}", args.join(" ")))?;
        let spawn_time = spawning.elapsed();
        let pid = child.id() as i32;
        println!("started policyd {command} {} (pid {pid})", args.join(" "));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let echo = echo.then_some(pid);
        forward(stdout, tx.clone(), echo);
        forward(stderr, tx, echo);
        Ok(Policyd {
            child,
            pid,
            lines,
            log: Vec::new(),
            cursor: 0,
            exit: None,
            attach_time: None,
            spawn_time,
        })
    }

    /// How long it took from spawn to attached.
    pub fn attach_time(&self) -> Option<Duration> {
        self.attach_time
    }

    /// Of [`Policyd::attach_time`], how long spawning it took.
    pub fn spawn_time(&self) -> Duration {
        self.spawn_time
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Takes what the reader threads have delivered so far into `log`.
    fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// Whether the process still runs (reaping it if not).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Everything logged so far.
    pub fn log(&mut self) -> &[LogLine] {
        self.pump();
        &self.log
    }

    /// Waits for the next line (after the last one a wait matched) that satisfies `pred`,
    /// and moves past it. Fails on timeout, or when policyd exits without printing it.
    pub fn wait_line(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&LogLine) -> bool,
    ) -> Result<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            self.pump();
            if let Some(line) = self.take_match(&pred) {
                return Ok(line);
            }
            if !self.is_running() {
                self.drain();
                if let Some(line) = self.take_match(&pred) {
                    return Ok(line);
                }
                bail!(
                    "policyd (pid {}) ended ({}) before {what}; its output:\n{}",
                    self.pid,
                    self.exit.map_or("?".into(), describe_status),
                    lines_text(&self.log)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {:.1} s waiting for {what}; policyd's output since the \
                     last match:\n{}",
                    timeout.as_secs_f64(),
                    lines_text(&self.log[self.cursor..])
                );
            }
            if let Ok(line) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.log.push(line);
            }
        }
    }

    /// The first line past the cursor that satisfies `pred`; moves the cursor past it.
    fn take_match(&mut self, pred: impl Fn(&LogLine) -> bool) -> Option<LogLine> {
        let i = self.log[self.cursor..].iter().position(pred)?;
        self.cursor += i + 1;
        Some(self.log[self.cursor - 1].clone())
    }

    /// Waits for the next decision.
    pub fn next_decision(&mut self, timeout: Duration) -> Result<Decision> {
        let line = self.wait_line(timeout, "a decision", |l| l.message == "decision")?;
        Decision::from_line(&line).expect("matched as a decision")
    }

    /// Waits for the next kill line.
    pub fn next_kill(&mut self, timeout: Duration) -> Result<Kill> {
        let line = self.wait_line(timeout, "a kill line", |l| l.message == "kill")?;
        Kill::from_line(&line).expect("matched as a kill")
    }

    /// Waits for the next decision that killed, past the awaited ones an OOM's retries
    /// log while its victim exits.
    pub fn next_killing_decision(&mut self, timeout: Duration) -> Result<Decision> {
        let line = self.wait_line(timeout, "a decision that killed", |l| {
            l.message == "decision" && l.field("outcome").as_deref() == Some("killed")
        })?;
        Decision::from_line(&line).expect("matched as a decision")
    }

    /// Where the log is now: for [`Policyd::decisions_since`].
    pub fn mark(&mut self) -> usize {
        self.pump();
        self.log.len()
    }

    /// The decisions logged since `mark`.
    pub fn decisions_since(&mut self, mark: usize) -> Result<Vec<Decision>> {
        self.pump();
        self.log[mark.min(self.log.len())..]
            .iter()
            .filter_map(Decision::from_line)
            .collect()
    }

    /// Waits up to `timeout` for `n` decisions since `mark`; how many came (a benchmark
    /// records a shortfall as a problem of its run rather than failing).
    pub fn wait_decisions(&mut self, mark: usize, n: usize, timeout: Duration) -> usize {
        let count = |pd: &mut Policyd| pd.decisions_since(mark).map_or(0, |d| d.len());
        let _ = util::wait_until(timeout, "decisions", || count(self) >= n);
        count(self)
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid), sig)
            .with_context(|| format!("sending {sig} to policyd {}", self.pid))
    }

    /// SIGHUP, then waits for the outcome of the reload: Ok(true) for "reloaded",
    /// Ok(false) when policyd said the new config is invalid and kept the old one.
    pub fn reload(&mut self) -> Result<bool> {
        self.signal(Signal::SIGHUP)?;
        self.reload_outcome()
    }

    /// Waits for the outcome of a reload, however it was asked for: as [`Policyd::reload`].
    pub fn reload_outcome(&mut self) -> Result<bool> {
        self.reload_outcome_within(Duration::from_secs(30))
    }

    /// [`Policyd::reload_outcome`] with its own time limit (reload at scale).
    pub fn reload_outcome_within(&mut self, timeout: Duration) -> Result<bool> {
        let line = self.wait_line(timeout, "the outcome of the SIGHUP reload", |l| {
            l.is("INFO", "reloaded")
                || l.message.contains("is not valid: keeping")
                || l.message.contains("reload failed")
        })?;
        Ok(line.is("INFO", "reloaded"))
    }

    /// SIGTERM, then requires a clean exit (status 0) within 20 s.
    pub fn stop(mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let status = self.wait_exit(Duration::from_secs(20))?;
        if !status.success() {
            let output = lines_text(self.log());
            bail!(
                "policyd {} exited with {} after SIGTERM; its output:\n{output}",
                self.pid,
                describe_status(status)
            );
        }
        Ok(())
    }

    /// SIGKILL, then waits for it to be gone.
    pub fn kill9(mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        let status = self.wait_exit(Duration::from_secs(10))?;
        ensure!(
            status.signal() == Some(nix::libc::SIGKILL),
            "policyd {} ended by {} instead of SIGKILL",
            self.pid,
            describe_status(status)
        );
        Ok(())
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let pid = self.pid;
        util::wait_until(timeout, &format!("policyd {pid} to exit"), || {
            !self.is_running()
        })?;
        self.drain();
        Ok(self.exit.expect("set once not running"))
    }

    /// Once policyd has exited: takes every line the reader threads still hold, until
    /// both pipes are closed (bounded, should anything else hold them open).
    fn drain(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let left = || deadline.saturating_duration_since(Instant::now());
        while let Ok(line) = self.lines.recv_timeout(left()) {
            self.log.push(line);
        }
    }
}

impl Drop for Policyd {
    /// A scenario that fails half-way: SIGTERM first, so that policyd logs the decisions
    /// still in its ring buffer (they explain the failure), SIGKILL if it hangs.
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is_running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The last lines explain the failure: let them reach the console.
        self.drain();
    }
}

/// Sends each line of `from` to `tx`, echoing it to the console first when `echo` names
/// policyd's pid (so that once `tx` is closed everything has reached the console).
fn forward(from: impl Read + Send + 'static, tx: mpsc::Sender<LogLine>, echo: Option<i32>) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if let Some(pid) = echo {
                println!("policyd[{pid}]| {line}");
            }
            if tx.send(LogLine::parse(&line)).is_err() {
                break;
            }
        }
    });
}

/// Decisions, kills or anything printable for an error message, one per line.
pub fn one_per_line<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines for an error message, one per line.
pub fn lines_text(lines: &[LogLine]) -> String {
    lines
        .iter()
        .map(|l| l.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The OOM kills of `cg` and its descendants so far (memory.events oom_kill).
pub fn oom_kills(cg: &Cgroup) -> Result<u64> {
    Ok(cg.events()?.oom_kill)
}

/// Fails unless `cg` counts exactly `want` OOM kills.
pub fn expect_oom_kills(cg: &Cgroup, want: u64) -> Result<()> {
    let got = cg.events()?;
    ensure!(
        got.oom_kill == want,
        "{}: memory.events oom_kill = {}, expected {want} ({got:?})",
        cg.path(),
        got.oom_kill
    );
    Ok(())
}

/// Lowers `cg`'s memory.max to `below_mib` MiB under its current usage. With no swap and
/// only anonymous memory charged, reclaim frees nothing and the kernel runs the memcg OOM
/// killer inside this write (in this process's context) until the usage fits: one OOM,
/// no hog still growing afterwards, so the layout the policy sees is exactly the one the
/// scenario built. Returns the limit written, in bytes.
///
/// The write retries the OOM path without pause while the victim exits. Scenarios that
/// are not about that give their victim at least 40 MiB: exit_mmap() frees a dying task's
/// pages in mmu_gather batches of up to ~38 MiB, and hides the victim from the OOM killer
/// (MMF_OOM_SKIP) before it frees the last batch; a victim bigger than one batch has
/// given back more than `below_mib` by then. policyd-exiting-victim is about the rest.
pub fn squeeze(cg: &Cgroup, below_mib: u64) -> Result<u64> {
    let current = cg.read_u64("memory.current")?;
    let max = current.saturating_sub(below_mib << 20);
    println!(
        "squeezing {}: memory.current {} MiB, memory.max -> {} MiB",
        cg.path(),
        current >> 20,
        max >> 20
    );
    cg.set("memory.max", max.to_string())?;
    Ok(max)
}

/// MemFree of /proc/meminfo, in MiB.
pub fn mem_free_mib() -> Result<u64> {
    let meminfo = util::read_file("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no MemFree in /proc/meminfo")?;
    Ok(kib / 1024)
}

/// Fails unless `hog` still runs; `role` names it in the error.
pub fn expect_alive(hog: &mut Hog, role: &str) -> Result<()> {
    if let Some(status) = hog.try_status()? {
        bail!(
            "the {role} (pid {}) died ({}), but it should have been spared",
            hog.pid(),
            describe_status(status)
        );
    }
    Ok(())
}

/// The rules of the running policyd as its handler finds them: its object's
/// `find_rule_of` program, the handler's own search of the rules table and of the hash
/// of cgroups created since, run with BPF_PROG_TEST_RUN. It reads whatever rules
/// policyd has installed at the time, across its rebuilds of the table.
pub struct HandlerRules {
    prog: OwnedFd,
}

impl HandlerRules {
    /// The newest loaded `find_rule_of` program: the policyd started last.
    pub fn of_running_policyd() -> Result<HandlerRules> {
        let id = ProgInfoIter::default()
            .filter(|p| p.name == "find_rule_of")
            .map(|p| p.id)
            .max()
            .context("no BPF program find_rule_of: policyd is not running")?;
        // SAFETY: a plain syscall wrapper; the fd it returns is ours.
        let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
        ensure!(
            fd >= 0,
            "opening BPF program {id} (find_rule_of): {}",
            std::io::Error::from_raw_os_error(-fd)
        );
        // SAFETY: a new fd, owned by nothing else.
        let prog = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(HandlerRules { prog })
    }

    /// The rule the handler finds for the cgroup `id`, if any.
    pub fn find(&self, id: u64) -> Result<Option<PolicydRule>> {
        Ok(policyd::loader::find_rule_with(self.prog.as_fd(), id, 0)?.map(|(rule, _)| rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyd::abi::Outcome;

    #[test]
    fn reads_decisions_as_policyd_writes_them() {
        let line = r#"{"level":"INFO","message":"decision","policy":"priority","scope":"/app","trigger":"oom","victim_cgroup":"/app/hog","pid":212,"comm":"vm-tests","priority":10,"usage_bytes":41943040,"rss_bytes":40894464,"reason":"lowest-priority","outcome":"killed","killed":1,"handler_us":41,"candidates":2,"tried":1,"unkillable":0,"exiting":0,"empty":0,"refused":0,"over_cap":0,"unresolved":0,"runner_up":"/app/service","runner_up_priority":500,"runner_up_usage_bytes":58720256,"top":null,"kill_err":0,"summary":"killed pid 212 (vm-tests) of /app/hog: lowest priority (10)"}"#;
        let d = Decision::from_line(&LogLine::parse(line)).unwrap().unwrap();
        assert_eq!(d.victim_cgroup(), "/app/hog");
        assert_eq!(d.pid, 212);
        assert_eq!(d.usage_bytes, 40 << 20);
        assert_eq!(d.outcome, Outcome::Killed);
        assert_eq!(
            d.get("summary").unwrap(),
            "killed pid 212 (vm-tests) of /app/hog: lowest priority (10)"
        );
        d.expect(&[
            ("reason", "lowest-priority"),
            ("scope", "/app"),
            ("top", "-"),
        ])
        .unwrap();
        let err = d.expect(&[("reason", "larger-usage")]).unwrap_err();
        assert!(err
            .to_string()
            .contains("reason=lowest-priority (expected larger-usage)"));

        let attached = LogLine::parse(r#"{"level":"INFO","message":"attached","rules":2}"#);
        assert!(attached.is("INFO", "attached"));
        assert_eq!(attached.field("rules").as_deref(), Some("2"));
        assert!(Decision::from_line(&attached).is_none());
        // A decision whose fields policyd's types do not read is an error, not skipped.
        let renamed = LogLine::parse(r#"{"level":"INFO","message":"decision","pid":"x"}"#);
        assert!(Decision::from_line(&renamed).unwrap().is_err());
        let text = LogLine::parse("policyd: error: no such file");
        assert_eq!(
            (text.level.as_str(), text.message.as_str()),
            ("", text.raw.as_str())
        );
    }
}
