//! `policyd metrics` and `policyd load --metrics-file`: the attached
//! handlers' counters in the Prometheus text exposition format (0.0.4, the
//! format node_exporter's textfile collector and every Prometheus scraper
//! read).
//!
//! Everything comes from the handler's own maps (`stats` and `metrics` in its
//! `.bss`, its `decisions` hash; see `bpf/policies/policyd.h`), so
//! `policyd metrics` run by anyone with root shows the same numbers as the
//! daemon's file, and a restarted daemon's new handler counts from zero, as
//! a Prometheus counter may.
//!
//! The daemon writes its file only when the text changes, and it looks only
//! after reading OOM events or reloading: an idle daemon never wakes up for
//! it. Each write goes to a hidden file in the same directory, renamed over
//! the target, so a reader sees the old or the new file, never half of one;
//! the temporary name does not end in `.prom`, which the textfile collector
//! skips.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::abi::{Outcome, HANDLER_BUCKET0_SHIFT, HANDLER_BUCKETS};
use crate::cgroupfs::{self, CgroupTree};
use crate::loader::{self, OomOpsLayout, RawCounters};
use crate::status::discover;

/// What the metrics say of one attached handler.
#[derive(Debug, Clone, Copy)]
pub struct HandlerMetrics<'a> {
    /// The cgroup it is attached to, relative to the cgroup2 mount ("/":
    /// system-wide).
    pub attach: &'a str,
    /// `bpf_oom_ops.name`, e.g. "policyd_priority".
    pub handler: &'a str,
    /// The policy, for policyd's handlers.
    pub policy: Option<&'a str>,
    pub dry_run: Option<bool>,
    /// policyd's counters; `None` for another tool's handler.
    pub counters: Option<&'a RawCounters>,
}

/// A label value, escaped as the text format requires.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{k="v",...}` from label pairs.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Nanoseconds as seconds, as the text format writes a float.
fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

/// The upper bound of histogram bucket `i` (all but the last), in ns.
fn bucket_bound_ns(i: usize) -> u64 {
    1u64 << (HANDLER_BUCKET0_SHIFT as usize + i)
}

/// The counters of `policyd_stats` as metric families: name, help, value.
type CounterOf = fn(&RawCounters) -> u64;
const COUNTERS: &[(&str, &str, CounterOf)] = &[
    (
        "policyd_ooms_total",
        "OOMs the handler was called for.",
        |c| c.stats.ooms,
    ),
    ("policyd_kills_total", "Tasks the handler killed.", |c| {
        c.stats.kills
    }),
    (
        "policyd_awaits_total",
        "OOMs the handler answered by waiting for an earlier victim to exit.",
        |c| c.stats.awaited,
    ),
    (
        "policyd_deferrals_total",
        "OOMs the handler left to the kernel's own killer (kill failures included).",
        |c| c.stats.deferred,
    ),
    (
        "policyd_kill_failures_total",
        "OOMs where the handler chose victims but every kill failed (then deferred).",
        |c| c.stats.kill_failures,
    ),
    (
        "policyd_dry_runs_total",
        "OOMs decided in dry-run mode (the kernel killed).",
        |c| c.stats.dry_runs,
    ),
    (
        "policyd_events_dropped_total",
        "OOM decisions not handed to policyd's log: the event ring buffer was full.",
        |c| c.stats.events_dropped,
    ),
    (
        "policyd_decisions_untracked_total",
        "OOM decisions missing from policyd_decisions_total: its table was full.",
        |c| c.metrics.decisions_untracked,
    ),
    (
        "policyd_victim_walks_total",
        "Walks of every process for an exiting victim: at the first OOM, and while more \
         victims were pending than the handler's list of 128 holds.",
        |c| c.metrics.victim_walks,
    ),
];

/// The exposition of `handlers`; `cgroup_path` names a victim cgroup by id.
pub fn render(
    handlers: &[HandlerMetrics<'_>],
    cgroup_path: &mut dyn FnMut(u64) -> String,
) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "policyd_handlers",
        "gauge",
        "BPF OOM handlers attached (policyd's and other tools').",
    );
    let _ = writeln!(out, "policyd_handlers {}", handlers.len());

    family(
        &mut out,
        "policyd_handler_info",
        "gauge",
        "One attached BPF OOM handler: its cgroup, name, policy and dry-run mode.",
    );
    for h in handlers {
        let dry_run = h.dry_run.map(|d| d.to_string()).unwrap_or_default();
        let l = labels(&[
            ("attach", h.attach),
            ("handler", h.handler),
            ("policy", h.policy.unwrap_or("")),
            ("dry_run", &dry_run),
        ]);
        let _ = writeln!(out, "policyd_handler_info{l} 1");
    }

    let ours: Vec<(&HandlerMetrics<'_>, &RawCounters)> = handlers
        .iter()
        .filter_map(|h| Some((h, h.counters?)))
        .collect();
    for (name, help, value) in COUNTERS {
        family(&mut out, name, "counter", help);
        for (h, c) in &ours {
            let _ = writeln!(
                out,
                "{name}{} {}",
                labels(&[("attach", h.attach)]),
                value(c)
            );
        }
    }

    family(
        &mut out,
        "policyd_handler_seconds",
        "histogram",
        "Time the handler took per OOM (log2 buckets).",
    );
    for (h, c) in &ours {
        let buckets = &c.metrics.handler_ns_log2;
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = if i + 1 == HANDLER_BUCKETS {
                "+Inf".to_owned()
            } else {
                seconds(bucket_bound_ns(i))
            };
            let l = labels(&[("attach", h.attach), ("le", &le)]);
            let _ = writeln!(out, "policyd_handler_seconds_bucket{l} {cumulative}");
        }
        let l = labels(&[("attach", h.attach)]);
        let _ = writeln!(
            out,
            "policyd_handler_seconds_sum{l} {}",
            seconds(c.stats.handler_ns_total)
        );
        let _ = writeln!(out, "policyd_handler_seconds_count{l} {cumulative}");
    }

    family(
        &mut out,
        "policyd_handler_max_seconds",
        "gauge",
        "The longest the handler took for one OOM.",
    );
    for (h, c) in &ours {
        let l = labels(&[("attach", h.attach)]);
        let _ = writeln!(
            out,
            "policyd_handler_max_seconds{l} {}",
            seconds(c.stats.handler_ns_max)
        );
    }

    family(
        &mut out,
        "policyd_decisions_total",
        "counter",
        "OOM decisions that named a victim, by victim cgroup and outcome.",
    );
    for (h, c) in &ours {
        for (key, n) in &c.decisions {
            let path = cgroup_path(key.cgroup_id);
            let id = key.cgroup_id.to_string();
            let outcome = Outcome::from(key.outcome).to_string();
            let l = labels(&[
                ("attach", h.attach),
                ("cgroup", &path),
                ("cgroup_id", &id),
                ("outcome", &outcome),
            ]);
            let _ = writeln!(out, "policyd_decisions_total{l} {n}");
        }
    }
    out
}

/// `policyd metrics`: every attached handler, as [`render`] shows them.
pub fn run(cgroup_root: Option<&Path>, proc_root: &Path) -> Result<String> {
    loader::route_libbpf_log();
    if OomOpsLayout::supported() == Some(false) {
        tracing::warn!(
            "no BPF OOM handlers can be attached: {}",
            loader::no_oom_support_message()
        );
        return Ok(render(&[], &mut |id| format!("cgroup#{id}")));
    }
    let handlers = discover::handlers(cgroup_root, proc_root)
        .context("finding the attached BPF OOM handlers")?;
    let tree = cgroupfs::root(cgroup_root)
        .ok()
        .and_then(|root| CgroupTree::read(&root).ok());
    let shown: Vec<HandlerMetrics<'_>> = handlers
        .iter()
        .map(|h| HandlerMetrics {
            attach: &h.cgroup,
            handler: &h.name,
            policy: h.policy.as_deref(),
            dry_run: h.dry_run,
            counters: h.raw.as_ref(),
        })
        .collect();
    let mut path = |id: u64| {
        tree.as_ref()
            .and_then(|t| t.find_id(id).map(|i| t.get(i).path.clone()))
            .unwrap_or_else(|| format!("cgroup#{id}"))
    };
    Ok(render(&shown, &mut path))
}

/// A textfile-collector file kept up to date by `policyd load`.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    tmp: PathBuf,
    /// What the file holds, as last written.
    last: Option<String>,
}

impl MetricsFile {
    /// Checks that `path` can be written there (its directory exists);
    /// writes nothing yet.
    pub fn new(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .with_context(|| format!("--metrics-file {}: not a file name", path.display()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "--metrics-file {}: directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        Ok(MetricsFile {
            path: path.to_owned(),
            tmp: dir.join(tmp_name),
            last: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the file with `text` unless it holds that already. Returns
    /// whether it wrote.
    pub fn update(&mut self, text: &str) -> Result<bool> {
        if self.last.as_deref() == Some(text) {
            return Ok(false);
        }
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&self.tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o644))?;
            f.write_all(text.as_bytes())?;
            fs::rename(&self.tmp, &self.path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&self.tmp);
            return Err(e).with_context(|| format!("writing metrics to {}", self.path.display()));
        }
        self.last = Some(text.to_owned());
        Ok(true)
    }

    /// Remove the file: the handler is detached, its counters are gone.
    pub fn remove(&mut self) -> Result<()> {
        self.last = None;
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{PolicydDecisionKey, PolicydMetrics, PolicydStats};

    fn counters() -> RawCounters {
        let mut metrics = PolicydMetrics::default();
        metrics.handler_ns_log2[0] = 1; // < 1.024 us
        metrics.handler_ns_log2[12] = 2; // 2.1 ms .. 4.2 ms
        metrics.handler_ns_log2[HANDLER_BUCKETS - 1] = 1; // > 4.3 s
        metrics.decisions_untracked = 5;
        RawCounters {
            stats: PolicydStats {
                ooms: 4,
                kills: 6,
                awaited: 1,
                deferred: 1,
                dry_runs: 0,
                kill_failures: 1,
                events_dropped: 2,
                handler_ns_total: 5_000_000_500,
                handler_ns_max: 4_999_000_000,
            },
            metrics,
            decisions: vec![
                (
                    PolicydDecisionKey {
                        cgroup_id: 77,
                        outcome: 0,
                        pad: [0; 7],
                    },
                    3,
                ),
                (
                    PolicydDecisionKey {
                        cgroup_id: 78,
                        outcome: 1,
                        pad: [0; 7],
                    },
                    1,
                ),
            ],
        }
    }

    fn sample<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn renders_counters_histogram_and_decisions() {
        let c = counters();
        let h = HandlerMetrics {
            attach: "/",
            handler: "policyd_priority",
            policy: Some("priority"),
            dry_run: Some(false),
            counters: Some(&c),
        };
        let other = HandlerMetrics {
            attach: "/odd\"\\\ncg",
            handler: "vm-tests",
            policy: None,
            dry_run: None,
            counters: None,
        };
        let text = render(&[h, other], &mut |id| match id {
            77 => "/kubepods.slice/be\"x".to_owned(),
            _ => format!("cgroup#{id}"),
        });
        assert_eq!(sample(&text, "policyd_handlers "), ["policyd_handlers 2"]);
        assert_eq!(
            sample(&text, "policyd_handler_info{"),
            [
                "policyd_handler_info{attach=\"/\",handler=\"policyd_priority\",\
                 policy=\"priority\",dry_run=\"false\"} 1",
                "policyd_handler_info{attach=\"/odd\\\"\\\\\\ncg\",handler=\"vm-tests\",\
                 policy=\"\",dry_run=\"\"} 1",
            ]
        );
        // Counters only for the handler that has them.
        assert_eq!(
            sample(&text, "policyd_kills_total"),
            ["policyd_kills_total{attach=\"/\"} 6"]
        );
        assert_eq!(
            sample(&text, "policyd_kill_failures_total{"),
            ["policyd_kill_failures_total{attach=\"/\"} 1"]
        );
        assert_eq!(
            sample(&text, "policyd_decisions_untracked_total{"),
            ["policyd_decisions_untracked_total{attach=\"/\"} 5"]
        );
        let buckets = sample(&text, "policyd_handler_seconds_bucket");
        assert_eq!(buckets.len(), HANDLER_BUCKETS);
        assert_eq!(
            buckets[0],
            "policyd_handler_seconds_bucket{attach=\"/\",le=\"0.000001024\"} 1"
        );
        assert_eq!(
            buckets[11],
            "policyd_handler_seconds_bucket{attach=\"/\",le=\"0.002097152\"} 1"
        );
        assert_eq!(
            buckets[12],
            "policyd_handler_seconds_bucket{attach=\"/\",le=\"0.004194304\"} 3"
        );
        assert_eq!(
            buckets[HANDLER_BUCKETS - 1],
            "policyd_handler_seconds_bucket{attach=\"/\",le=\"+Inf\"} 4"
        );
        assert_eq!(
            sample(&text, "policyd_handler_seconds_sum"),
            ["policyd_handler_seconds_sum{attach=\"/\"} 5.0000005"]
        );
        assert_eq!(
            sample(&text, "policyd_handler_seconds_count"),
            ["policyd_handler_seconds_count{attach=\"/\"} 4"]
        );
        assert_eq!(
            sample(&text, "policyd_decisions_total{"),
            [
                "policyd_decisions_total{attach=\"/\",cgroup=\"/kubepods.slice/be\\\"x\",\
                 cgroup_id=\"77\",outcome=\"killed\"} 3",
                "policyd_decisions_total{attach=\"/\",cgroup=\"cgroup#78\",cgroup_id=\"78\",\
                 outcome=\"awaited\"} 1",
            ]
        );
        // Every family is declared once, before its samples.
        let types: Vec<&str> = sample(&text, "# TYPE ");
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "{text}");
    }

    #[test]
    fn no_handler_is_a_valid_exposition_too() {
        let text = render(&[], &mut |id| id.to_string());
        assert_eq!(sample(&text, "policyd_handlers "), ["policyd_handlers 0"]);
        assert!(text
            .lines()
            .all(|l| l.starts_with('#') || l == "policyd_handlers 0"));
    }

    #[test]
    fn the_file_is_replaced_only_when_the_text_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policyd.prom");
        let mut file = MetricsFile::new(&path).unwrap();
        assert!(file.update("a 1\n").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let first = inode(&path);
        assert!(!file.update("a 1\n").unwrap());
        assert_eq!(inode(&path), first, "unchanged text: not rewritten");
        assert!(file.update("a 2\n").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        // Renamed over, not written in place: a reader holding the old file
        // still reads the old text.
        assert_ne!(inode(&path), first);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Only the target is left, no temporary file.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("policyd.prom")]);
        file.remove().unwrap();
        assert!(!path.exists());
        file.remove().unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_at_start() {
        let err = MetricsFile::new(Path::new("/nonexistent-policyd-dir/x.prom")).unwrap_err();
        assert!(
            err.to_string()
                .contains("directory /nonexistent-policyd-dir does not exist"),
            "{err}"
        );
    }
}
