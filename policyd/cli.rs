//! Command-line definitions (clap derive). What each command does lives in
//! [`crate::commands`]; `main.rs` only dispatches.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::abi::{MAX_CGROUPS, WALK_STEPS};
use crate::config::DEFAULT_CONFIG_PATH;
use crate::logging::LogFormat;
use crate::policy::PolicyName;

const ABOUT: &str =
    "Choose OOM victims by cgroup priority, inside the kernel's OOM killer (BPF OOM struct_ops)";

const LONG_ABOUT: &str = "\
Choose OOM victims by cgroup priority, inside the kernel's OOM killer.

policyd loads a BPF OOM policy into a kernel with the BPF OOM struct_ops
patches and feeds it one resolved entry per cgroup from a TOML file
(default /etc/policyd/policies.toml): which cgroups are protected, which are
cheap to kill, and whether to kill one task or the whole cgroup. The policy
decides inside out_of_memory(), for global OOMs and for a cgroup's own
memory.max, before the kernel would pick the largest task.";

const MAIN_EXAMPLES: &str = "\
Examples:
  policyd check /etc/policyd/policies.toml    validate a configuration
  policyd explain                             who would die in a global OOM now, and why
  policyd explain --cgroup /demo --json       the same for an OOM of the /demo cgroup
  policyd load priority                       attach the priority policy system-wide
  policyd list                                the available policies";

#[derive(Debug, Parser)]
#[command(name = "policyd", version, about = ABOUT, long_about = LONG_ABOUT, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    /// The cgroup2 mount to read [default: found in /proc/self/mounts]
    #[arg(long, global = true, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    /// The proc filesystem to read tasks from (for tests)
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/proc",
        hide = true
    )]
    pub proc_root: PathBuf,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a policy into the kernel and keep its cgroup table up to date
    #[command(
        long_about = "Load a policy into the kernel and keep its cgroup table up to date.\n\n\
                      The configuration is read and validated first; nothing is loaded if it \
                      has an error. It must be a regular file of at most 1 MiB, owned by root \
                      and not writable by group or others (--insecure-config lifts the last \
                      two, for tests). The policy is attached to --cgroup (default: the root \
                      cgroup, i.e. system-wide) and handles OOMs of that cgroup's subtree. \
                      policyd stays in the foreground: it logs one line per OOM decision, keeps \
                      the policy's cgroup table up to date as cgroups come and go, re-reads the \
                      config on SIGHUP and detaches on SIGINT/SIGTERM.",
        after_help = "Examples:\n  \
                      policyd load                            the config's policy, system-wide\n  \
                      policyd load priority --cgroup /demo    only for OOMs inside /demo\n  \
                      policyd load largest --dry-run          log what it would kill, kill nothing\n  \
                      kill -HUP <pid>                         re-read the config (and policy)"
    )]
    Load(LoadArgs),

    /// Report every OOM kill as it happens, whoever decided it; attaches no policy
    #[command(
        long_about = "Report every OOM kill as it happens, whoever decided it; attaches no policy.\n\n\
                      One line per task the kernel marks as an OOM victim: who died (pid, \
                      command, cgroup, memory), who chose it (the kernel's oom_badness(), a BPF \
                      OOM handler by name, or memory.oom.group), and whose OOM it was (global or \
                      the cgroup at its limit, and the task that ran into it). Works on any \
                      kernel with BTF, without the BPF OOM patches; needs root (CAP_BPF and \
                      CAP_PERFMON). Runs until SIGINT/SIGTERM and wakes up only when an OOM \
                      kill happens.",
        after_help = "Examples:\n  \
                      policyd trace\n  \
                      policyd trace --log-format json | jq 'select(.message == \"kill\") | .cgroup'"
    )]
    Trace(TraceArgs),

    /// Show every attached BPF OOM handler: where, who attached it, counters
    #[command(after_help = "Examples:\n  policyd status\n  policyd status --json")]
    Status(StatusArgs),

    /// Print the attached handlers' counters for Prometheus
    #[command(
        long_about = "Print the attached handlers' counters for Prometheus.\n\n\
                      Every attached BPF OOM handler, in the Prometheus text exposition format \
                      (0.0.4): OOMs, kills, awaits, deferrals, kill failures, dry runs, events \
                      the ring buffer dropped, handler time as a histogram, and decisions by \
                      victim cgroup and outcome. The numbers come from the handler's own BPF \
                      maps; a new handler (a restart, a policy swap) counts from zero. Needs \
                      root. `policyd load --metrics-file` keeps the same text in a file for \
                      node_exporter's textfile collector.",
        after_help = "Examples:\n  \
                      policyd metrics\n  \
                      policyd metrics | grep policyd_kills_total"
    )]
    Metrics,

    /// List the available policies, one per line
    List,

    /// Validate a configuration file
    #[command(
        long_about = "Validate a configuration file.\n\n\
                      Prints \"ok: N rules, policy NAME\" (and any warnings) when the file is \
                      valid; otherwise every error as FILE:LINE:COLUMN: MESSAGE and exits with \
                      status 1.",
        after_help = "Examples:\n  \
                      policyd check\n  \
                      policyd check ./policies.toml"
    )]
    Check(CheckArgs),

    /// Show which cgroup and tasks the policy would kill now, and why
    #[command(
        long_about = "Show which cgroup and tasks the policy would kill now, and why.\n\n\
                      Reads the live cgroup tree and /proc, resolves every cgroup's settings \
                      from the configuration, and ranks the candidates exactly as the BPF \
                      policy does. Lists the eligible candidates in order (victim first), then \
                      the rest of the scope with the reason each one is not a candidate.",
        after_help = "Examples:\n  \
                      policyd explain                               global OOM\n  \
                      policyd explain --cgroup /demo                OOM of the /demo cgroup (memory.max)\n  \
                      policyd explain --policy largest              what another policy would do\n  \
                      policyd explain --json | jq .victim           machine-readable"
    )]
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The output's format: `text` lines of key=value fields, or `json`, one object per line
    /// (as `policyd load --log-format`)
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Policy to load (see `policyd list`) [default: the config's `policy`]
    #[arg(value_name = "POLICY")]
    pub policy: Option<PolicyName>,

    /// Configuration file
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Cgroup to attach to, relative to the cgroup2 mount ("/" = system-wide)
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub cgroup: String,

    /// Attach, decide and log every OOM, but leave the kill to the kernel's own killer
    #[arg(long)]
    pub dry_run: bool,

    /// Room for this many cgroups in the handler's tables (their rules, and the candidates
    /// of one OOM). A cgroup without a rules entry takes its nearest ancestor's; an eligible
    /// cgroup beyond the candidates' room is not considered. Both are logged. Each entry
    /// costs about 40 bytes of kernel memory
    #[arg(long, value_name = "N", default_value_t = MAX_CGROUPS,
          value_parser = clap::value_parser!(u32).range(16..=i64::from(MAX_CGROUPS)))]
    pub max_cgroups: u32,

    /// Test seam, hidden: end the handler's walk of the cgroup tree after N steps (two
    /// per cgroup) instead of POLICYD_WALK_STEPS, so that a test can see what a walk cut
    /// short does and says without 4M cgroups
    #[arg(long, value_name = "N", hide = true, default_value_t = WALK_STEPS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(WALK_STEPS)))]
    pub walk_steps: u32,

    /// Accept a config file that is not owned by root or is writable by group or others
    /// (for tests and development: whoever can write the file decides what dies). Regular
    /// file and 1 MiB limit still apply
    #[arg(long)]
    pub insecure_config: bool,

    /// The log's format: `text` lines of key=value fields, or `json`, one object per line
    /// (every line has "level" and "message"; decisions carry typed fields, sizes in bytes)
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Keep the handler's counters in FILE, as `policyd metrics` prints them, for
    /// node_exporter's textfile collector (e.g.
    /// /var/lib/prometheus/node-exporter/policyd.prom). Replaced atomically (rename) when
    /// they change, after OOMs and reloads only; removed when policyd detaches
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Reload the config by itself, as SIGHUP does, when the file is rewritten or replaced,
    /// including a Kubernetes ConfigMap volume's `..data` symlink swap (policyd watches the
    /// file's directory with inotify)
    #[arg(long)]
    pub watch_config: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file to check
    #[arg(value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Configuration file
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// The OOMing cgroup, relative to the cgroup2 mount ("/" = global OOM)
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub cgroup: String,

    /// Explain this policy instead of the config's `policy`
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<PolicyName>,

    /// Machine-readable output (JSON); each reason is there as its sentence (`reason`,
    /// `outcome`) and as data (`why`, `outcome_why`, with a `kind`)
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::parse_from([
            "policyd",
            "explain",
            "--cgroup",
            "/demo",
            "--json",
            "--cgroup-root",
            "/x",
        ]);
        assert_eq!(cli.cgroup_root, Some(PathBuf::from("/x")));
        let Command::Explain(a) = cli.command else {
            panic!()
        };
        assert_eq!((a.cgroup.as_str(), a.json), ("/demo", true));
        assert_eq!(a.config, PathBuf::from(DEFAULT_CONFIG_PATH));

        let cli = Cli::parse_from(["policyd", "load", "largest", "--dry-run"]);
        let Command::Load(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.policy, Some(PolicyName::Largest));
        assert!(a.dry_run);
        assert_eq!(a.cgroup, "/");

        let err = Cli::try_parse_from(["policyd", "load", "oomd"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("valid policies: priority, largest, badness, observe"),
            "{err}"
        );

        let cli = Cli::parse_from(["policyd", "load", "--metrics-file", "/run/p.prom"]);
        let Command::Load(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.metrics_file, Some(PathBuf::from("/run/p.prom")));
        let Command::Metrics = Cli::parse_from(["policyd", "metrics"]).command else {
            panic!()
        };

        let cli = Cli::parse_from(["policyd", "check"]);
        let Command::Check(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.file, PathBuf::from(DEFAULT_CONFIG_PATH));
    }
}
