//! What each subcommand does. Output is returned as text so tests can check
//! it; `main.rs` prints it and turns errors into exit codes.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::cgroup_names::CgroupNames;
use crate::cgroupfs::{self, CgroupTree};
use crate::cli::{CheckArgs, ExplainArgs, LoadArgs};
use crate::config::{Config, ConfigError, Ownership};
use crate::daemon::{self, LoadRequest};
use crate::guard;
use crate::kills::{Kill, KillStream};
use crate::logging::LogFormat;
use crate::policy::POLICIES;
use crate::procfs::ProcFs;
use crate::rank::{self, Explanation};
use crate::resolve::{resolve_tree, Effective, Resolver};
use crate::rules;
use crate::sizes::format_bytes;

/// `policyd list`.
pub fn list() -> String {
    let width = POLICIES
        .iter()
        .map(|p| p.name.as_str().len())
        .max()
        .unwrap_or(0);
    POLICIES
        .iter()
        .map(|p| format!("{:width$}  {}\n", p.name.as_str(), p.description))
        .collect()
}

/// Result of `policyd check`.
#[derive(Debug)]
pub struct CheckReport {
    pub ok: bool,
    /// For stdout: "ok: N rules, policy X".
    pub stdout: String,
    /// For stderr: warnings and errors, one per line.
    pub stderr: String,
}

/// `policyd check FILE`.
pub fn check(args: &CheckArgs) -> CheckReport {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let ok = match Config::load(&args.file) {
        Ok(config) => {
            for w in &config.warnings {
                let _ = writeln!(stderr, "{w}");
            }
            let n = config.rules.len();
            let _ = writeln!(
                stdout,
                "ok: {n} rule{}, policy {}",
                if n == 1 { "" } else { "s" },
                config.policy
            );
            for p in &config.pressure {
                let _ = writeln!(
                    stdout,
                    "pressure: {} declares an OOM when {} holds (PSI trigger \"{}\"{})",
                    p.pattern,
                    p.describe(),
                    p.trigger_spec(),
                    match p.windows() {
                        1 => String::new(),
                        n => format!(", {n} windows in a row"),
                    }
                );
            }
            if let Some(s) = &config.swap {
                let _ = writeln!(
                    stdout,
                    "swap: declares an OOM of {} when {} (checked at each PSI event \"{}\" of \
                     the system)",
                    s.cgroup,
                    s.describe(),
                    crate::pressure::SWAP_WAKE
                );
            }
            true
        }
        Err(e @ ConfigError::Invalid(_)) => {
            let _ = writeln!(stderr, "{e}");
            let n = e.diagnostics().len();
            let _ = writeln!(
                stderr,
                "{}: {n} error{}",
                args.file.display(),
                if n == 1 { "" } else { "s" }
            );
            false
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            false
        }
    };
    CheckReport { ok, stdout, stderr }
}

/// `policyd load`: validate, check where we run, then hand over to the
/// daemon. `proc_root` is /proc but for tests.
pub fn load(
    args: &LoadArgs,
    cgroup_root: Option<&Path>,
    proc_root: &Path,
    started: Instant,
) -> Result<()> {
    let ownership = if args.insecure_config {
        tracing::warn!(
            "--insecure-config: not checking that only root can write {}",
            args.config.display()
        );
        Ownership::Any
    } else {
        Ownership::Root
    };
    let config = crate::config::load_logged(&args.config, ownership)?;
    guard::require_host_cgroup_namespace(proc_root)?;
    let policy = args.policy.unwrap_or(config.policy);
    if args.policy.is_some_and(|p| p != config.policy) {
        tracing::info!(
            "loading policy {policy} (command line) instead of {} (config)",
            config.policy
        );
    }
    let cgroup_root = cgroupfs::root(cgroup_root)?;
    guard::protect_self(proc_root)?;
    let own_cgroup = match guard::own_cgroup(proc_root, &cgroup_root) {
        Ok(Some(own)) => {
            tracing::info!("protecting policyd's own cgroup {}", own.path);
            Some(own)
        }
        Ok(None) => None,
        Err(why) => {
            tracing::warn!(
                "cannot find policyd's own cgroup ({why}), so it is not protected: policyd \
                 itself is never killed, but what shares its cgroup may be"
            );
            None
        }
    };
    let req = LoadRequest {
        started,
        policy,
        policy_from_cli: args.policy.is_some(),
        config,
        config_path: args.config.clone(),
        ownership,
        own_cgroup,
        cgroup_root,
        cgroup: cgroupfs::normalise_path(&args.cgroup),
        dry_run: args.dry_run,
        max_cgroups: args.max_cgroups,
        walk_steps: args.walk_steps,
        log_format: args.log_format,
        metrics_file: args.metrics_file.clone(),
        watch_config: args.watch_config,
    };
    daemon::run(req)
}

/// `policyd trace`: log every OOM kill until SIGINT/SIGTERM.
pub fn trace(cgroup_root: Option<&Path>, format: LogFormat) -> Result<()> {
    let cgroup_root = cgroupfs::root(cgroup_root)?;
    let tree = CgroupTree::read(&cgroup_root)
        .with_context(|| format!("reading the cgroup tree at {}", cgroup_root.display()))?;
    let mut names = CgroupNames::from_tree(&tree);
    let signals = daemon::block_signals()?;
    let mut kills = KillStream::start()?;
    tracing::info!(
        with_context = kills.has_context(),
        with_culprits = kills.tracks_growth(),
        "tracing OOM kills"
    );
    loop {
        let (kills_ready, signal_ready) = {
            let mut fds = [
                PollFd::new(kills.fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e).context("poll"),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            (ready(0), ready(1))
        };
        if kills_ready || signal_ready {
            for traced in kills.take(|_| true) {
                Kill::new(&traced, &mut names).log(format);
            }
        }
        if signal_ready {
            while let Some(info) = signals.read_signal().context("reading the signalfd")? {
                let signal = Signal::try_from(info.ssi_signo as i32);
                if let Ok(sig @ (Signal::SIGINT | Signal::SIGTERM)) = signal {
                    tracing::info!("{sig}: stopped tracing");
                    return Ok(());
                }
            }
        }
    }
}

/// `policyd explain`: the prediction, as text or JSON.
pub fn explain(args: &ExplainArgs, cgroup_root: Option<&Path>, proc_root: &Path) -> Result<String> {
    let config = crate::config::load_logged(&args.config, Ownership::Any)?;
    let root = cgroupfs::root(cgroup_root)?;
    warn_without_memory_controller(&root);
    let tree = CgroupTree::read(&root)
        .with_context(|| format!("reading the cgroup tree at {}", root.display()))?;
    let scope = tree.lookup(&args.cgroup)?;
    let effective = resolve_tree(&config, &tree);
    if !nix::unistd::geteuid().is_root() {
        tracing::warn!(
            "not root: {} xattrs are hidden from this user and not taken into account",
            crate::xattrs::PRIORITY
        );
    }
    let policy = args.policy.unwrap_or(config.policy);
    let totalpages =
        rank::oom_totalpages(&tree.fs_path(scope), tree.get(scope).is_root(), proc_root);
    let ex = rank::explain(
        policy,
        &tree,
        &effective,
        scope,
        &ProcFs::new(proc_root),
        totalpages,
    );
    if args.json {
        let mut s = serde_json::to_string_pretty(&ex)?;
        s.push('\n');
        Ok(s)
    } else {
        let new_below = new_cgroups_line(&config, &effective[scope]);
        Ok(render_explanation(&ex, &config, &new_below))
    }
}

/// How the handler judges a cgroup created below `e` until policyd has
/// resolved it.
fn new_cgroups_line(config: &Config, e: &Effective) -> String {
    match Resolver::new(config).below(e) {
        Ok(t) => format!(
            "new:    cgroups created below {} are judged as {} from their mkdir on ({})",
            e.path,
            rules::describe(&rules::own_rule(&t)),
            t.source
        ),
        Err(rule) => format!(
            "new:    cgroups created below {} are judged by its own settings until policyd \
             resolves them (some ms): rule {} (line {}) matches some of their paths only",
            e.path, rule.pattern, rule.line
        ),
    }
}

/// On a hybrid (v1 + v2) system the cgroup2 hierarchy has no memory
/// controller: no memory.current, no memcg OOMs, usage shows as "-".
fn warn_without_memory_controller(root: &Path) {
    let file = root.join("cgroup.controllers");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if !text.split_whitespace().any(|c| c == "memory") {
            tracing::warn!(
                "the memory controller is not enabled on the cgroup2 hierarchy at {} (is it \
                 bound to cgroup v1?); memory usage is unknown and no memcg OOM can happen",
                root.display()
            );
        }
    }
}

/// Lay out rows as left-aligned columns; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:w$}  ", w = widths[c]);
            }
        }
        out.push_str("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human-readable form of an [`Explanation`].
pub fn render_explanation(ex: &Explanation, config: &Config, new_below: &str) -> String {
    let mut out = String::new();
    let n = config.rules.len();
    let _ = writeln!(
        out,
        "policy: {} (config {}, {n} rule{})",
        ex.policy,
        config.path.display(),
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "model:  the handler's ranking, in {} (vm-tests hold the two equal)",
        ex.model
    );
    let _ = match ex.scope.kind {
        rank::ScopeKind::Global => writeln!(
            out,
            "scope:  global OOM, all of / (cgroup id {})",
            ex.scope.id
        ),
        rank::ScopeKind::Memcg => writeln!(
            out,
            "scope:  memcg OOM of {} and its descendants (cgroup id {})",
            ex.scope.path, ex.scope.id
        ),
    };
    let _ = writeln!(out, "{new_below}");

    if !ex.candidates.is_empty() {
        let _ = writeln!(out, "\ncandidates (victim first):");
        // Units, pods and containers get a column where the tree has any.
        let owners = ex.candidates.iter().any(|c| !c.owner.is_empty());
        let mut header = [
            "RANK", "CGROUP", "PRIO", "PROTECT", "KILL", "USAGE", "PROCS", "SOURCE", "REASON",
        ]
        .map(String::from)
        .to_vec();
        if owners {
            header.insert(2, "OWNER".to_owned());
        }
        let mut rows = vec![header];
        for c in &ex.candidates {
            let mut row = vec![
                c.rank.map_or("-".to_owned(), |r| r.to_string()),
                c.path.clone(),
                c.priority.to_string(),
                if c.protect { "yes" } else { "no" }.to_owned(),
                c.kill.to_string(),
                c.memory_current.map_or("-".to_owned(), format_bytes),
                c.nr_procs.to_string(),
                std::iter::once(c.source.to_string())
                    .chain(c.xattrs.iter().map(ToString::to_string))
                    .collect::<Vec<_>>()
                    .join("; "),
                c.why.to_string(),
            ];
            if owners {
                let owner = c.owner.to_string();
                row.insert(
                    2,
                    if owner.is_empty() {
                        "-".to_owned()
                    } else {
                        owner
                    },
                );
            }
            rows.push(row);
        }
        out.push_str(&table(&rows));
    }

    if !ex.tasks.is_empty() {
        let _ = writeln!(
            out,
            "\ntasks by badness (the kernel's oom_badness(): pages of RSS, swap and page tables, \
             plus oom_score_adj thousandths of the OOM's pages):"
        );
        let mut rows = vec![[
            "RANK",
            "PID",
            "COMM",
            "CGROUP",
            "BADNESS",
            "OOM_SCORE",
            "ADJ",
            "RSS",
            "REASON",
        ]
        .map(String::from)
        .to_vec()];
        for t in &ex.tasks {
            rows.push(vec![
                t.rank.map_or("-".to_owned(), |r| r.to_string()),
                t.task.pid.to_string(),
                t.task.comm.clone(),
                t.cgroup.clone(),
                t.points.to_string(),
                t.task.oom_score.map_or("-".to_owned(), |s| s.to_string()),
                t.task.oom_score_adj.to_string(),
                format_bytes(t.task.rss_bytes),
                t.why.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
    }

    for s in &ex.skipped {
        let _ = writeln!(out, "\nskipped {}: {}", s.path, s.why);
    }

    match &ex.victim {
        Some(v) => {
            let _ = writeln!(
                out,
                "\nvictim: {} (cgroup id {}), kill = {}",
                v.cgroup, v.cgroup_id, v.kill
            );
            for t in &v.tasks {
                let _ = writeln!(
                    out,
                    "  kill  pid {} ({}), RSS {}",
                    t.pid,
                    t.comm,
                    format_bytes(t.rss_bytes)
                );
            }
            for s in &v.spared {
                let _ = writeln!(out, "  spare pid {}: {}", s.pid, s.why);
            }
            let _ = writeln!(out, "  why:  {}", v.why);
        }
        None => {
            let _ = writeln!(out, "\nvictim: none");
        }
    }
    let _ = writeln!(out, "outcome: {}", ex.outcome);
    out
}
