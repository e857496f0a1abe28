//! The benchmark records a guest scenario sends the host, one `VMTEST-JSON` line each
//! (guest::util::emit_json), typed on both sides: a field renamed or retyped on one side
//! fails to build, or fails the run when the host reads it, instead of reading as missing.
//! The host keeps them, as sent, in bench.json's `scenarios[].records`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Env(Env),
    StormSetup(StormSetup),
    Storm(Storm),
    StormDone(StormDone),
    DecisionSetup(DecisionSetup),
    Decision(DecisionSize),
    Footprint(Footprint),
    ChargeCost(ChargeCost),
    Metrics(MetricsText),
    KernelCost(KernelCost),
    ThrashSetup(ThrashSetup),
    Thrash(Thrash),
}

/// bench-thrash: the guest, the two processes and what each contender was told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrashSetup {
    pub mem_total_mib: u64,
    pub zram_mib: u64,
    pub service_mib: u64,
    /// The job's size when it starts, then its growth per step and the pause between.
    pub job_start_mib: u64,
    pub job_step_kib: u64,
    pub job_delay_ms: u64,
    /// The pressure limit systemd-oomd, nohang and policyd share: `full` stall of the
    /// job's slice, as a percentage, held for `duration_s`.
    pub limit_pct: u64,
    pub duration_s: u64,
    pub trial_timeout_s: u64,
    pub trials_per_contender: usize,
    /// Per contender, how it was configured.
    pub contenders: BTreeMap<String, String>,
}

/// bench-thrash: every trial of one contender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thrash {
    pub contender: String,
    pub trials: Vec<ThrashTrial>,
}

/// One thrash episode. Times are from the job's start (systemd-run spawned for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrashTrial {
    pub service_survived: bool,
    /// Every process that died: "service", "job", or "comm(pid)" from a kernel kill line.
    pub victims: Vec<String>,
    /// When the slice's `full` stall over the last `duration_s` first reached the limit.
    pub limit_reached_ms: Option<f64>,
    pub job_dead_ms: Option<f64>,
    /// When that stall went under the limit for good (it stayed under until the trial
    /// ended), or the job's death if it never reached the limit; None if the trial ended
    /// above it or timed out.
    pub relieved_ms: Option<f64>,
    /// Nobody killed the job within the trial's timeout (then the bench did).
    pub timed_out: bool,
    /// The trial's length: from the job's start to the end of the watch after its death.
    pub watched_ms: f64,
    /// /proc/pressure/memory `full` total over the trial, and the slice's.
    pub stall_full_us: u64,
    pub slice_stall_full_us: u64,
    /// At the trial's first death the bench did not cause (job or service): the slice's
    /// `full` stall since the job's start, and the highest share of a sampled window
    /// before it, in percent (None if no window was complete). The host judges from
    /// them whether the kill came on pressure at all.
    pub slice_stall_at_kill_us: Option<u64>,
    pub slice_peak_pct_before_kill: Option<f64>,
    /// /proc/vmstat oom_kill and pswpout over the trial.
    pub kernel_oom_kills: u64,
    pub pages_swapped_out: u64,
    pub job_peak_rss_mib: u64,
}

/// bench-charge: `guest churn` with and without `policyd trace`, in alternating blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeCost {
    pub churn_mib: u64,
    pub rounds: u32,
    pub pairs: usize,
    pub per_block: usize,
    /// Each churn's CPU time (utime + stime) and wall time, without the tracer and with it.
    pub off_cpu_ns: Vec<u64>,
    pub on_cpu_ns: Vec<u64>,
    pub off_wall_ns: Vec<u64>,
    pub on_wall_ns: Vec<u64>,
    /// Per pair of blocks: median CPU time with the tracer over median without.
    pub pair_ratios: Vec<f64>,
    /// The tracer's voluntary context switches during each traced block, and its length.
    pub tracer_wakeups: Vec<u64>,
    pub tracer_block_s: Vec<f64>,
    /// The traced block with kernel.bpf_stats_enabled: the churns' CPU time, the pages
    /// they charged, and the tracer's programs' run time and run count.
    pub stats_cpu_ns: u64,
    pub stats_pages: u64,
    pub bpf_run_ns: u64,
    pub bpf_run_cnt: u64,
}

/// A test scenario's `policyd metrics` output, for the host to read with a real
/// Prometheus parser (host/validate.rs): the guest has no Python.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsText {
    /// What produced it, e.g. "the --metrics-file after two OOMs".
    pub what: String,
    pub text: String,
}

/// The guest a benchmark scenario ran in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Env {
    pub scenario: String,
    pub quick: bool,
    pub kernel_release: String,
    pub kernel_version: String,
    pub guest_cpus: usize,
    pub guest_mem_total_kib: u64,
    pub clocksource: String,
}

/// bench-storm: the service, the hogs and the contenders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormSetup {
    pub mem_total_mib: u64,
    pub service_mib: u64,
    pub mem_available_with_service_mib: u64,
    /// Whether the kernel alone would kill the service (it is the bigger task).
    pub kernel_would_pick_service: bool,
    pub hog_touch_rate_mib_s: f64,
    pub slow_delay_us: u64,
    pub memcg_limit_mib: u64,
    pub variants: Vec<StormVariant>,
    /// Per storm variant.
    pub trials_per_contender: BTreeMap<String, usize>,
    pub earlyoom_args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormVariant {
    pub name: String,
    /// How the hog allocates.
    pub hog: String,
    /// Global or memcg OOM.
    pub scope: String,
    pub alloc_rate_mib_s: f64,
}

/// bench-storm: every trial of one variant and one contender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storm {
    pub variant: String,
    pub hog: String,
    pub scope: String,
    pub contender: String,
    pub trials: Vec<StormTrial>,
}

/// One storm: a hog allocating until something dies. Times are from the hog's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormTrial {
    pub service_survived: bool,
    pub service_killed_by: Option<String>,
    /// The kernel's or policyd's OOM killer, "earlyoom", "timeout", or how it ended.
    pub hog_killed_by: Option<String>,
    /// Every process that died: "service", "hog", or "comm(pid)".
    pub victims: Vec<String>,
    /// /proc/vmstat oom_kill during the trial.
    pub kernel_oom_kills: u64,
    /// "SIGNAL PID" for each signal earlyoom sent.
    pub earlyoom_signals: Vec<String>,
    pub policyd_decisions: usize,
    pub policyd_handler_us: Vec<u64>,
    pub hog_dead_ms: Option<f64>,
    pub service_dead_ms: Option<f64>,
    /// When the room was back to 90% of the baseline; None if never.
    pub recovered_ms: Option<f64>,
    pub timed_out: bool,
    pub baseline_available_mib: u64,
    pub available_at_hog_death_mib: u64,
    /// /proc/meminfo fields (KiB) when the hog died, and when the room was back.
    pub meminfo_at_hog_death_kib: BTreeMap<String, Option<u64>>,
    pub meminfo_at_recovery_kib: Option<BTreeMap<String, Option<u64>>>,
    pub hog_peak_rss_mib: u64,
    /// Seconds the contender took to start (policyd: to attach).
    pub contender_setup_s: f64,
}

/// bench-storm's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormDone {
    pub service_starts: u32,
}

/// bench-decision: the grid and the contenders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSetup {
    pub victim_mib: u64,
    pub oom_spacing_ms: u64,
    pub rounds: usize,
    pub per_block: usize,
    pub samples_per_contender: usize,
    pub cgroups: Vec<usize>,
    pub tasks: Vec<usize>,
    /// When not empty: only these (cgroups, tasks) pairs of the grid.
    pub only: Vec<(usize, usize)>,
    /// Sizes measured under a global OOM too (absent before it was).
    #[serde(default)]
    pub global: Vec<(usize, usize)>,
    /// The rounds of those sizes.
    #[serde(default)]
    pub global_rounds: usize,
    pub contenders: Vec<String>,
}

/// bench-decision: the samples of one grid point (cgroups × tasks), per contender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSize {
    pub cgroups: usize,
    pub tasks: usize,
    /// A global OOM (the root's handler); otherwise a memcg OOM of the bench's parent.
    #[serde(default)]
    pub global: bool,
    /// Blocks per contender (absent before sizes had their own).
    #[serde(default)]
    pub rounds: usize,
    /// By contender name ("kernel", "priority", ...).
    pub results: BTreeMap<String, DecisionSamples>,
    pub policyd_start_s: Vec<f64>,
    /// What went wrong in a sample (wrong victim, no decision line, ...).
    pub problems: Vec<String>,
    pub sleepers_in_scope: u64,
    pub spawn_s: f64,
    pub added_tasks: usize,
    pub mem_per_added_task_kib: f64,
    pub mem_available_mib: u64,
}

/// One value per OOM, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionSamples {
    /// bpf_out_of_memory() from call to return.
    pub oom_ns: Vec<u64>,
    /// From the call to the victim killed: marked by mark_oom_victim(), on the
    /// stopwatch's clock (before 2026-11-30: the "Killed process" line's log time).
    pub to_kill_ns: Vec<Option<u64>>,
    /// From the call to the "Killed process" line, by the kernel log's timestamps;
    /// absent in records from before it was kept apart.
    #[serde(default)]
    pub kill_line_ns: Vec<Option<u64>>,
    pub report_start_ns: Vec<Option<u64>>,
    /// The OOM report's printing.
    pub report_ns: Vec<Option<u64>>,
    /// policyd's handler time, from its decision line.
    pub handler_us: Vec<Option<u64>>,
    pub report_printed: Vec<bool>,
    /// The right victim, killed by the right killer.
    pub ok: Vec<bool>,
}

/// bench-footprint: policyd's own cost, idle and in a burst of OOMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Footprint {
    pub cgroups: usize,
    pub populated_cgroups: usize,
    pub policyd_start_s: f64,
    pub clock_ticks_per_s: u64,
    pub idle: FootprintIdle,
    pub burst: FootprintBurst,
    pub after_burst_idle: FootprintAfter,
    /// Absent in records from before it was measured.
    #[serde(default)]
    pub new_cgroups: Option<FootprintNewCgroups>,
    /// By number of cgroups; absent in records from before it was measured.
    #[serde(default)]
    pub startup: Vec<FootprintStartup>,
}

/// `policyd load priority` at a number of cgroups, and one SIGHUP reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootprintStartup {
    pub cgroups: usize,
    /// From the process's start to its "attached" line.
    pub attach_s: f64,
    /// Its CPU time (utime + stime) by then, and its RSS.
    pub start_cpu_ms: f64,
    pub rss_kib: u64,
    /// SIGHUP to the "reloaded" line, and the CPU time it took.
    pub reload_s: f64,
    pub reload_cpu_ms: f64,
    pub rss_after_reload_kib: u64,
    /// policyd's own account of where the time went (its `-vv` lines: the policy
    /// object's open and load, the start-up's and the reload's phases), where it ran
    /// with `-vv`.
    #[serde(default)]
    pub phases: Vec<String>,
    /// Of `attach_s`, the bench's own spawn: fork, the move into the root cgroup
    /// and exec, until `Command::spawn` returned.
    #[serde(default)]
    pub spawn_s: Option<f64>,
}

/// A burst of mkdirs while policyd runs: how long each new cgroup waits for its own
/// entry in the rules map (judged by its nearest ancestor's until then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootprintNewCgroups {
    pub count: usize,
    /// The mkdirs' wall time.
    pub burst_s: f64,
    /// Per cgroup: mkdir's return to its entry found, polled every millisecond.
    pub delays_us: Vec<u64>,
    /// Cgroups judged exactly from mkdir on: right after mkdir, their nearest
    /// ancestor with an entry had a known template for cgroups below it (absent in
    /// records from before templates).
    #[serde(default)]
    pub exact_at_mkdir: Option<usize>,
    pub poll_sweeps: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootprintIdle {
    pub seconds: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub cpu_ms: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootprintBurst {
    pub ooms: usize,
    pub kills: usize,
    pub decisions_logged: usize,
    pub wall_s: f64,
    pub all_logged_s: f64,
    pub cpu_ms: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub oom_ns: Vec<u64>,
    pub handler_us: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FootprintAfter {
    pub seconds: f64,
    pub cpu_ms: f64,
    pub voluntary_switches: u64,
}

/// bench-kernel-cost: one boot's rounds of the fork+exit and mmap loops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCost {
    /// "vanilla" (Linux 7.3 without the series) or "patched", as the kernel's BTF says.
    pub kernel: String,
    pub forks_per_round: usize,
    pub mmaps_per_round: usize,
    pub mmap_pages: usize,
    /// In the order they ran; on the patched kernel "none" and "priority" alternate.
    pub rounds: Vec<KernelCostRound>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCostRound {
    /// "none", or "priority": `policyd load priority` attached and idle.
    pub handler: String,
    /// Per fork()+_exit()+waitpid().
    pub fork_exit_ns: f64,
    /// Per mmap()+touch of every page+munmap().
    pub mmap_touch_ns: f64,
}
