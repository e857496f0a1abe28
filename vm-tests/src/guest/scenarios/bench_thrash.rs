//! Thrash (issue #12): a machine short of memory with swap on zram stalls long before the
//! kernel declares an OOM, if it ever does. Who ends the stall, how soon, and at whose
//! expense, in the Debian guest (systemd as PID 1), every contender as its users run it,
//! a systemd service started and stopped around each trial:
//!
//! - kernel: nothing but the kernel's OOM killer;
//! - earlyoom: earlyoom.service with its memory and swap thresholds (`-m 10 -s 10`) and
//!   `--prefer '^job$' --avoid '^service$'` in /etc/default/earlyoom;
//! - nohang: nohang.service in PSI mode on the job's slice, at the shared limit;
//! - systemd-oomd: `ManagedOOMMemoryPressure=kill` on the job's slice at the shared limit;
//! - policyd: policyd.service with a `[[pressure]]` rule at the shared limit on that slice.
//!
//! Layout: a "service" (a scope in service.slice) touching its memory every 250 ms, and
//! a "job" (a scope in thrash.slice) that starts just under what is left of RAM and then
//! grows while touching all it holds: its working set outgrows RAM, pages go to zram and
//! come back, and the job's slice stalls. Trials go round-robin over the contenders.
//! Measured per trial: service alive, victims, when the slice's `full` stall over the
//! last `DURATION_S` first reached the limit and when it went under it for good (relief),
//! and the guest's whole `full` stall (/proc/pressure/memory) over the trial; and at the
//! first kill, the slice's stall so far, from which the host tells a kill on pressure
//! from one that came before it (premature).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::guest::bench::{self as bc, emit_env, kill_reap, meminfo_kib, parse_kill_line, vmstat};
use crate::guest::util::{self, describe_status, HogSpec, Kmsg, ZramSwap, HOG_READY};
use crate::guest::Scenario;
use crate::records::{Record, Thrash, ThrashSetup, ThrashTrial};

pub fn scenario() -> Scenario {
    Scenario::new("bench-thrash", run)
        .debian()
        .mem_mb(512)
        .timeout_s(3600)
}

/// The pressure limit systemd-oomd, nohang and policyd share: the job slice's `full`
/// stall, in percent, held this many seconds. systemd-oomd's defaults (60% for 30 s)
/// would make every trial minutes long under TCG.
const LIMIT_PCT: u64 = 20;
const DURATION_S: u64 = 2;
const ZRAM_MIB: u64 = 384;
const SERVICE_MIB: u64 = 48;
/// The job starts this far under MemAvailable, then grows a step per pause.
const JOB_HEADROOM_MIB: u64 = 16;
const JOB_STEP_KIB: u64 = 1024;
const JOB_DELAY_MS: u64 = 100;
/// After the job died: the watch for late kills and for relief (two windows and a bit).
const LINGER: Duration = Duration::from_secs(2 * DURATION_S + 1);
/// systemd starting a unit and, where it says so, the daemon becoming ready, under TCG.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// nohang acts on PSI only this long after its start (`psi_post_action_delay`, at the
/// minimum nohang accepts); its trials start the job only once it has passed.
const NOHANG_ARMED_S: u64 = 10;

const SERVICE_SLICE: &str = "service.slice";
const JOB_SLICE: &str = "thrash.slice";
const EARLYOOM_ARGS: &str = "-m 10 -s 10 --prefer '^job$' --avoid '^service$'";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Kernel,
    Earlyoom,
    Nohang,
    SystemdOomd,
    Policyd,
}

impl Contender {
    const ALL: [Contender; 5] = [
        Contender::Kernel,
        Contender::Earlyoom,
        Contender::Nohang,
        Contender::SystemdOomd,
        Contender::Policyd,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Kernel => "kernel",
            Contender::Earlyoom => "earlyoom",
            Contender::Nohang => "nohang",
            Contender::SystemdOomd => "systemd-oomd",
            Contender::Policyd => "policyd",
        }
    }

    /// Its systemd unit, and a text its journal shows once it watches memory (for units
    /// that are not Type=notify).
    fn unit(self) -> Option<(&'static str, Option<&'static str>)> {
        match self {
            Contender::Kernel => None,
            Contender::Earlyoom => Some(("earlyoom.service", Some("mem avail"))),
            Contender::Nohang => Some(("nohang.service", Some("Monitoring has started"))),
            Contender::SystemdOomd => Some(("systemd-oomd.service", None)),
            Contender::Policyd => Some(("policyd.service", Some("pressure trigger armed"))),
        }
    }

    fn configured(self) -> String {
        match self {
            Contender::Kernel => "no handler, no daemon: the kernel's OOM killer".into(),
            Contender::Earlyoom => format!(
                "earlyoom.service (Debian 1.7), /etc/default/earlyoom: EARLYOOM_ARGS=\"{EARLYOOM_ARGS}\""
            ),
            Contender::Nohang => format!(
                "nohang.service (Debian 0.2.0), the shipped nohang.conf with \
                 psi_checking_enabled = True, psi_path = /sys/fs/cgroup/{JOB_SLICE}/memory.pressure, \
                 psi_metrics = full_avg10, soft_threshold_max_psi = {LIMIT_PCT}, \
                 psi_excess_duration = {DURATION_S}, psi_post_action_delay = {NOHANG_ARMED_S}, \
                 @BADNESS_ADJ_RE_NAME 300 /// ^job$ (its memory thresholds as shipped)"
            ),
            Contender::SystemdOomd => format!(
                "systemd-oomd.service (Debian 252), {JOB_SLICE}: ManagedOOMMemoryPressure=kill, \
                 ManagedOOMMemoryPressureLimit={LIMIT_PCT}% (systemctl set-property --runtime, \
                 for its trials only); oomd.conf.d: \
                 DefaultMemoryPressureDurationSec={DURATION_S}s (systemd 252 has no per-unit duration)"
            ),
            Contender::Policyd => format!(
                "policyd.service (this tree's .deb), policies.toml: /{SERVICE_SLICE} protect, \
                 /{JOB_SLICE} priority 10, [[pressure]] cgroup = \"/{JOB_SLICE}\", stall = \"full\", \
                 limit = \"{LIMIT_PCT}%\", duration = \"{DURATION_S}s\""
            ),
        }
    }
}

fn run() -> Result<()> {
    emit_env("bench-thrash")?;
    bc::quiet_kernel(false)?;
    // No quick variant: `bench --quick` leaves this benchmark out.
    let trials = 10;
    let trial_timeout = Duration::from_secs(45);

    let _swap = ZramSwap::on(ZRAM_MIB)?;
    configure()?;
    let mut units = Units::default();
    let mut service = units.service()?;
    thread::sleep(Duration::from_millis(500));
    let total_mib = meminfo_kib("MemTotal")? / 1024;
    util::emit_json(&Record::ThrashSetup(ThrashSetup {
        mem_total_mib: total_mib,
        zram_mib: ZRAM_MIB,
        service_mib: SERVICE_MIB,
        job_start_mib: job_start_mib()?,
        job_step_kib: JOB_STEP_KIB,
        job_delay_ms: JOB_DELAY_MS,
        limit_pct: LIMIT_PCT,
        duration_s: DURATION_S,
        trial_timeout_s: trial_timeout.as_secs(),
        trials_per_contender: trials,
        contenders: Contender::ALL
            .iter()
            .map(|c| (c.name().to_string(), c.configured()))
            .collect(),
    }));

    let started = Instant::now();
    let mut results: Vec<(Contender, Vec<ThrashTrial>)> =
        Contender::ALL.iter().map(|c| (*c, Vec::new())).collect();
    for trial in 0..trials {
        for (contender, out) in results.iter_mut() {
            if service.try_wait()?.is_some() {
                service = units.service()?;
            }
            let rec = run_trial(*contender, &mut units, &mut service, trial_timeout)
                .with_context(|| format!("{} trial {trial}", contender.name()))?;
            println!(
                "thrash {} #{trial}: {} ({:.0} s in)",
                contender.name(),
                serde_json::to_string(&rec)?,
                started.elapsed().as_secs_f64()
            );
            out.push(rec);
        }
    }
    kill_reap(&mut service);
    for (contender, trials) in results {
        util::emit_json(&Record::Thrash(Thrash {
            contender: contender.name().to_string(),
            trials,
        }));
    }
    Ok(())
}

/// Runs `program args`; fails with its output unless it exits 0.
fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}{}",
        args.join(" "),
        describe_status(out.status),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The slices, every contender's configuration, and policyd installed (then stopped:
/// it acts only in its own trials).
fn configure() -> Result<()> {
    util::write_file(
        format!("/run/systemd/system/{SERVICE_SLICE}"),
        "[Slice]\nMemoryAccounting=yes\n",
    )?;
    // ManagedOOM* only in systemd-oomd's trials: systemd starts systemd-oomd (socket
    // activation) as soon as any unit has them.
    util::write_file(
        format!("/run/systemd/system/{JOB_SLICE}"),
        "[Slice]\nMemoryAccounting=yes\n",
    )?;
    std::fs::create_dir_all("/etc/systemd/oomd.conf.d")?;
    util::write_file(
        "/etc/systemd/oomd.conf.d/bench-thrash.conf",
        format!("[OOM]\nDefaultMemoryPressureDurationSec={DURATION_S}s\n"),
    )?;
    util::write_file(
        "/etc/default/earlyoom",
        format!("EARLYOOM_ARGS=\"{EARLYOOM_ARGS}\"\n"),
    )?;
    let nohang = util::read_file("/etc/nohang/nohang.conf")?;
    util::write_file(
        "/etc/nohang/nohang.conf",
        nohang_conf(
            &nohang,
            &format!("/sys/fs/cgroup/{JOB_SLICE}/memory.pressure"),
        )?,
    )?;
    command("systemctl", &["daemon-reload"])?;
    command("systemctl", &["start", SERVICE_SLICE, JOB_SLICE])?;

    command("dpkg", &["-i", "/run/vmtest/policyd.deb"])?;
    command("systemctl", &["stop", "policyd.service"])?;
    util::write_file(
        "/etc/policyd/policies.toml",
        format!(
            "policy = \"priority\"\n\n\
             [[rule]]\ncgroup = \"/{SERVICE_SLICE}\"\nprotect = true\n\n\
             [[rule]]\ncgroup = \"/{JOB_SLICE}\"\npriority = 10\n\n\
             [[pressure]]\ncgroup = \"/{JOB_SLICE}\"\nstall = \"full\"\n\
             limit = \"{LIMIT_PCT}%\"\nduration = \"{DURATION_S}s\"\n"
        ),
    )?;
    command("policyd", &["check", "/etc/policyd/policies.toml"])?;
    Ok(())
}

/// The shipped nohang.conf with PSI mode on `psi_path` at the shared limit, and the job
/// preferred by name (as earlyoom's --prefer). Every key set must be there already.
fn nohang_conf(shipped: &str, psi_path: &str) -> Result<String> {
    let mut set: BTreeMap<&str, String> = BTreeMap::from([
        ("psi_checking_enabled", "True".to_string()),
        ("psi_path", psi_path.to_string()),
        ("psi_metrics", "full_avg10".to_string()),
        ("soft_threshold_max_psi", LIMIT_PCT.to_string()),
        ("psi_excess_duration", DURATION_S.to_string()),
        ("psi_post_action_delay", NOHANG_ARMED_S.to_string()),
    ]);
    let mut out = String::new();
    for line in shipped.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match set.remove(key) {
            Some(value) if !line.starts_with('#') => out.push_str(&format!("{key} = {value}\n")),
            Some(value) => {
                set.insert(key, value);
                out.push_str(line);
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    ensure!(
        set.is_empty(),
        "nohang.conf has no {:?}: not the nohang this bench knows",
        set.keys().collect::<Vec<_>>()
    );
    out.push_str("@BADNESS_ADJ_RE_NAME 300 /// ^job$\n");
    Ok(out)
}

/// Lines of `unit`'s journal (this boot) that contain `text`.
fn journal_count(unit: &str, text: &str) -> Result<usize> {
    let out = command("journalctl", &["-b", "-u", unit, "-o", "cat", "--no-pager"])?;
    Ok(out.lines().filter(|l| l.contains(text)).count())
}

/// Starts the contender's unit and waits until it watches memory.
fn start(contender: Contender) -> Result<()> {
    let Some((unit, marker)) = contender.unit() else {
        return Ok(());
    };
    let before = match marker {
        Some(m) => journal_count(unit, m)?,
        None => 0,
    };
    command("systemctl", &["start", unit])?;
    if let Some(m) = marker {
        let waited = util::wait_until(START_TIMEOUT, &format!("{unit}: {m:?}"), || {
            journal_count(unit, m).is_ok_and(|n| n > before)
        });
        if let Err(e) = waited {
            let log = command("journalctl", &["-b", "-u", unit, "--no-pager", "-n", "40"]);
            bail!(
                "{e:#}; its journal:\n{}",
                log.unwrap_or_else(|e| format!("{e:#}"))
            );
        }
    }
    if contender == Contender::Nohang {
        thread::sleep(Duration::from_secs(NOHANG_ARMED_S));
    }
    if contender == Contender::SystemdOomd {
        // After the start: systemd sends the slice's settings to systemd-oomd's socket
        // when they change, and a change with nothing listening is lost.
        command(
            "systemctl",
            &[
                "set-property",
                "--runtime",
                JOB_SLICE,
                "ManagedOOMMemoryPressure=kill",
                &format!("ManagedOOMMemoryPressureLimit={LIMIT_PCT}%"),
            ],
        )?;
        let watched = util::wait_until(START_TIMEOUT, "systemd-oomd to monitor the slice", || {
            command("oomctl", &["dump"]).is_ok_and(|d| d.contains(&format!("/{JOB_SLICE}")))
        });
        if let Err(e) = watched {
            bail!(
                "{e:#}; oomctl dump:\n{}",
                command("oomctl", &["dump"]).unwrap_or_else(|e| format!("{e:#}"))
            );
        }
    }
    Ok(())
}

fn stop(contender: Contender) -> Result<()> {
    if contender == Contender::SystemdOomd {
        command(
            "systemctl",
            &[
                "set-property",
                "--runtime",
                JOB_SLICE,
                "ManagedOOMMemoryPressure=auto",
            ],
        )?;
        command("systemctl", &["stop", "systemd-oomd.socket"])?;
    }
    if let Some((unit, _)) = contender.unit() {
        command("systemctl", &["stop", unit])?;
    }
    Ok(())
}

/// Names for the scopes of each trial (a dead scope's name may linger a moment).
#[derive(Default)]
struct Units {
    next: u32,
}

impl Units {
    /// `spec` as `comm` in a new scope of `slice`.
    fn spawn(&mut self, slice: &str, comm: &str, spec: &HogSpec) -> Result<Child> {
        self.next += 1;
        Command::new("systemd-run")
            .args(["--scope", "--quiet", "--collect"])
            .arg(format!("--slice={slice}"))
            .arg(format!("--unit=bench-{comm}-{}", self.next))
            .arg("--")
            .arg(bc::named_exe(comm)?)
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("running systemd-run --scope")
    }

    /// The service, once its memory is resident.
    fn service(&mut self) -> Result<Child> {
        let spec = HogSpec::fixed(SERVICE_MIB).working_set().delay_us(250_000);
        let mut child = self.spawn(SERVICE_SLICE, "service", &spec)?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .context("reading the service's ready line")?;
        if line.trim() != HOG_READY {
            let status = child.wait()?;
            bail!(
                "the service ended before it was ready: {}",
                describe_status(status)
            );
        }
        Ok(child)
    }

    /// The job, at once: its episode starts with its first page, and a contender may
    /// end it before its initial memory is resident.
    fn job(&mut self, start_mib: u64) -> Result<Child> {
        let spec = HogSpec::growing(start_mib)
            .working_set()
            .step_kib(JOB_STEP_KIB)
            .delay_us(JOB_DELAY_MS * 1000);
        self.spawn(JOB_SLICE, "job", &spec)
    }
}

fn job_start_mib() -> Result<u64> {
    Ok((meminfo_kib("MemAvailable")? / 1024).saturating_sub(JOB_HEADROOM_MIB))
}

/// The `full` total of a pressure file, in µs.
fn full_total(path: &str) -> Result<u64> {
    let text = util::read_file(path)?;
    text.lines()
        .find(|l| l.starts_with("full"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("total=")))
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("no full total in {path}: {text:?}"))
}

/// The stall over the last window, from samples of a `full` total.
#[derive(Default)]
struct Window {
    samples: VecDeque<(Instant, u64)>,
}

impl Window {
    /// Adds a sample; the stall share over the window it completes, once one is full.
    fn push(&mut self, at: Instant, total_us: u64) -> Option<f64> {
        self.samples.push_back((at, total_us));
        let span = Duration::from_secs(DURATION_S);
        while self.samples.len() > 2 && at - self.samples[1].0 >= span {
            self.samples.pop_front();
        }
        let (t0, v0) = *self.samples.front()?;
        let dt = at - t0;
        (dt >= span).then(|| (total_us - v0) as f64 / dt.as_micros() as f64)
    }
}

/// Waits until the previous trial's stall is over: the guest's `full` stall under 1%
/// over a window, or 30 s (said, and the trial goes on).
fn settle() -> Result<()> {
    let started = Instant::now();
    let mut w = Window::default();
    while started.elapsed() < Duration::from_secs(30) {
        if w.push(Instant::now(), full_total("/proc/pressure/memory")?)
            .is_some_and(|share| share < 0.01)
        {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!("the guest still stalls 30 s after the previous trial; going on");
    Ok(())
}

fn run_trial(
    contender: Contender,
    units: &mut Units,
    service: &mut Child,
    timeout: Duration,
) -> Result<ThrashTrial> {
    settle()?;
    start(contender)?;
    let service_pid = service.id();
    let slice_pressure = format!("/sys/fs/cgroup/{JOB_SLICE}/memory.pressure");
    let mut kmsg = Kmsg::mark()?;
    let oom_kills_before = vmstat("oom_kill")?;
    let swapped_before = ZramSwap::pages_out()?;

    let mut job = units.job(job_start_mib()?)?;
    let job_pid = job.id();
    let t0 = Instant::now();
    let stall_before = full_total("/proc/pressure/memory")?;
    let slice_before = full_total(&slice_pressure)?;
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
    let limit = LIMIT_PCT as f64 / 100.0;

    let mut window = Window::default();
    let mut limit_reached = None;
    let mut above = false;
    let mut relieved = None;
    let mut job_dead = None;
    let mut service_dead = false;
    let mut timed_out = false;
    let mut peak_rss_kib = 0;
    let mut watch_until = None;
    let mut peak_share: Option<f64> = None;
    let mut at_kill = None;
    loop {
        let now = Instant::now();
        let slice_total = full_total(&slice_pressure)?;
        if let Some(share) = window.push(now, slice_total) {
            peak_share = Some(peak_share.map_or(share, |p| p.max(share)));
            if share >= limit {
                limit_reached.get_or_insert(now);
                above = true;
                relieved = None;
            } else if above {
                above = false;
                relieved = Some(now);
            }
        }
        if job_dead.is_none() {
            if let Ok(u) = bc::proc_usage(job_pid) {
                peak_rss_kib = peak_rss_kib.max(u.rss_kib);
            }
            if job.try_wait()?.is_some() {
                job_dead = Some(now);
                watch_until = Some(now + LINGER);
            } else if now - t0 > timeout {
                timed_out = true;
                kill_reap(&mut job);
                job_dead = Some(now);
                watch_until = Some(now + LINGER);
            }
        }
        if !service_dead && service.try_wait()?.is_some() {
            service_dead = true;
        }
        if at_kill.is_none() && (service_dead || (job_dead.is_some() && !timed_out)) {
            at_kill = Some((slice_total - slice_before, peak_share));
        }
        if watch_until.is_some_and(|w| now >= w) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let watched = Instant::now();
    let stall_full_us = full_total("/proc/pressure/memory")? - stall_before;
    // The slice goes when its last scope does: its stall then ended with the job.
    let slice_stall_full_us = full_total(&slice_pressure).map_or(0, |t| t - slice_before);
    stop(contender)?;

    let mut victims = Vec::new();
    if service_dead {
        victims.push("service".to_string());
    }
    if !timed_out {
        victims.push("job".to_string());
    }
    for (_, pid, comm) in kmsg.since()?.iter().filter_map(|l| parse_kill_line(l)) {
        if pid != job_pid && pid != service_pid {
            victims.push(format!("{comm}({pid})"));
        }
    }
    if let Some(st) = job.try_wait()? {
        if !timed_out && st.signal().is_none() {
            bail!("the job exited by itself ({})", describe_status(st));
        }
    }
    Ok(ThrashTrial {
        service_survived: !service_dead,
        victims,
        limit_reached_ms: limit_reached.map(ms),
        job_dead_ms: if timed_out { None } else { job_dead.map(ms) },
        // Relief the bench's own kill brought is none of the contender's; a stall that
        // never reached the limit was over when the job died.
        relieved_ms: if timed_out || above {
            None
        } else {
            relieved.or(job_dead).map(ms)
        },
        timed_out,
        watched_ms: ms(watched),
        stall_full_us,
        slice_stall_full_us,
        slice_stall_at_kill_us: at_kill.map(|(us, _)| us),
        slice_peak_pct_before_kill: at_kill.and_then(|(_, share)| share).map(|s| s * 100.0),
        kernel_oom_kills: vmstat("oom_kill")? - oom_kills_before,
        pages_swapped_out: ZramSwap::pages_out()? - swapped_before,
        job_peak_rss_mib: peak_rss_kib / 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nohang_conf_sets_psi_mode_and_refuses_an_unknown_file() {
        let shipped = "## PSI\npsi_checking_enabled = False\n##  psi_path default\n\
                       psi_path = /proc/pressure/memory\npsi_metrics = some_avg10\n\
                       soft_threshold_max_psi  = 40\npsi_excess_duration = 30\n\
                       psi_post_action_delay = 15\n";
        let conf = nohang_conf(shipped, "/sys/fs/cgroup/x/memory.pressure").unwrap();
        assert!(conf.contains("psi_checking_enabled = True\n"));
        assert!(conf.contains("psi_path = /sys/fs/cgroup/x/memory.pressure\n"));
        assert!(conf.contains(&format!("soft_threshold_max_psi = {LIMIT_PCT}\n")));
        assert!(conf.contains("##  psi_path default\n"));
        assert!(conf.ends_with("@BADNESS_ADJ_RE_NAME 300 /// ^job$\n"));
        let err = nohang_conf("psi_path = /x\n", "/y").unwrap_err();
        assert!(format!("{err}").contains("psi_checking_enabled"), "{err}");
    }

    #[test]
    fn window_share() {
        let mut w = Window::default();
        let t = Instant::now();
        assert_eq!(w.push(t, 0), None);
        assert_eq!(w.push(t + Duration::from_secs(1), 500_000), None);
        let share = w
            .push(t + Duration::from_secs(DURATION_S), 1_000_000)
            .unwrap();
        assert!((share - 1.0 / DURATION_S as f64).abs() < 1e-9, "{share}");
    }
}
