//! policyd: cgroup-aware OOM victim selection with BPF OOM struct_ops.
//!
//! The kernel-independent parts live here so the CLI, the BPF loader and the
//! test harness share them:
//!
//! * [`config`]: the TOML configuration (schema, parsing, validation);
//! * [`matcher`]: cgroup path patterns used by rules;
//! * [`policy`]: the selectable policies;
//! * [`cgroupfs`]: reading a cgroup v2 tree; [`procfs`]: per-task facts;
//! * [`resolve`]: effective settings per cgroup (rules + inheritance), with
//!   [`xattrs`]: systemd's, oomd's and orchestrators' preferences on cgroups;
//! * [`rank`]: candidates and victim choice (what `explain` predicts), and
//!   [`reason`]: why, as data, and the sentences made from it;
//! * [`cli`] and [`commands`]: the command line;
//! * [`daemon`], [`status`]: the kernel-facing side: [`loader`] loads and
//!   attaches the one BPF handler with a policy chosen ([`bpf`]: its
//!   generated skeleton), [`rules`] turns resolved settings into rules map
//!   entries, [`abi`] names the types shared with BPF, [`events`] logs OOM
//!   decisions ([`sizes`] formats them) through [`logging`] (text or
//!   JSON) or, under systemd, [`journal`] (structured fields), [`watch`]
//!   follows the cgroup tree, [`metrics`] shows the handler's counters to
//!   Prometheus, [`notify`] tells systemd when the handler is attached;
//! * [`pressure_rules`]: `[[pressure]]` tables, and [`pressure`]: their PSI
//!   triggers, which declare an OOM when a pressure limit holds;
//! * [`swap_limit`]: the `[swap]` table, which [`pressure`] checks at each
//!   system-wide memory stall;
//! * [`kills`]: every OOM kill, whoever decided it (`policyd trace`),
//!   through its own tracer, which needs no BPF OOM patches, with
//!   [`culprit`]: who grew most before it;
//!   [`cgroup_names`] names the cgroups events carry by id, and [`order`]
//!   puts a decision before the kills it made;
//! * [`guard`]: what `load` checks and does to itself before attaching;
//! * [`testing`]: fake cgroup and proc trees for tests.

pub mod abi;
pub mod bpf;
pub mod cgroup_names;
pub mod cgroupfs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod config_watch;
pub mod culprit;
pub mod daemon;
pub mod events;
pub mod guard;
pub mod journal;
pub mod kernel_rules;
pub mod kills;
pub mod loader;
pub mod logging;
pub mod matcher;
pub mod metrics;
pub mod notify;
pub mod oom_group;
pub mod order;
pub mod owner;
pub mod policy;
pub mod pressure;
pub mod pressure_rules;
pub mod procfs;
pub mod rank;
pub mod reason;
pub mod resolve;
pub mod rule_table;
pub mod rules;
pub mod sizes;
pub mod status;
pub mod swap_limit;
pub mod testing;
pub mod tree_walk;
pub mod watch;
pub mod xattrs;

pub use config::{Config, ConfigError, KillMode, Rule};
pub use matcher::CgroupPattern;
pub use policy::PolicyName;
pub use resolve::{resolve_tree, Effective, Resolver, Source};
