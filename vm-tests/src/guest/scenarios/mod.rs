//! The guest scenarios. Each module has a `pub fn scenario() -> Scenario`; list it in
//! `all()` below. Helpers for writing one are in `super::util` (cgroups, hogs, kernel
//! log), `super::pdutil` (policyd) and `super::kutil` (the test handler); a policyd
//! scenario that builds a layout and makes OOMs in it writes them as data for
//! `super::layout`.

use super::Scenario;

mod bench_charge;
mod bench_decision;
mod bench_footprint;
pub mod bench_kernel_cost;
mod bench_storm;
mod bench_thrash;
mod demo;
mod kernel_alloc_under_oom;
mod kernel_attach_lifecycle;
mod kernel_attach_no_memcg;
mod kernel_attach_opt_in;
mod kernel_attach_privilege;
mod kernel_attach_stress;
mod kernel_await;
mod kernel_await_retry;
mod kernel_declare_oom;
mod kernel_default_exiting;
mod kernel_default_global;
mod kernel_detach_inflight;
mod kernel_handler;
mod kernel_handler_denied;
mod kernel_hierarchy;
mod kernel_kill_refused;
mod kernel_mm_sharers;
mod kernel_one_kill;
mod kernel_oom_storm;
pub mod kernel_psi_unprivileged_trigger;
mod kernel_selftests_bpf_oom;
mod memcg_selftests;
mod oom_default_memcg;
mod policyd_capacity;
mod policyd_cgroup_watch;
mod policyd_deep_new_cgroup;
mod policyd_differential;
mod policyd_dry_run;
mod policyd_explain;
mod policyd_kill_cgroup;
mod policyd_kubelet;
mod policyd_largest_badness;
mod policyd_lifecycle;
mod policyd_metrics;
mod policyd_new_cgroup_template;
mod policyd_ops_layout;
mod policyd_passes_over;
mod policyd_per_cpu;
mod policyd_pressure;
mod policyd_priority;
mod policyd_protect;
mod policyd_reload;
mod policyd_rule_matching;
mod policyd_rule_table;
mod policyd_rules_rebuild;
mod policyd_soak;
mod policyd_swap;
mod policyd_tree_walk;
mod policyd_victim_list;
mod policyd_walk_cut;
mod policyd_watch_config;
mod policyd_xattrs;
mod systemd_preferences;
mod systemd_service;
mod trace_kills;

/// Every scenario, in the order `test` (tests) and `bench` (benchmarks) run them.
pub fn all() -> Vec<Scenario> {
    vec![
        oom_default_memcg::scenario(),
        kernel_default_global::scenario(),
        kernel_default_exiting::scenario(),
        kernel_handler::kills_chosen(),
        kernel_handler::defers(),
        kernel_handler::claims_without_kill(),
        kernel_kill_refused::scenario(),
        kernel_mm_sharers::scenario(),
        kernel_hierarchy::scenario(),
        kernel_attach_lifecycle::scenario(),
        kernel_attach_opt_in::scenario(),
        kernel_attach_privilege::scenario(),
        kernel_attach_no_memcg::scenario(),
        kernel_one_kill::scenario(),
        kernel_await::scenario(),
        kernel_await_retry::scenario(),
        kernel_declare_oom::scenario(),
        kernel_oom_storm::scenario(),
        kernel_attach_stress::scenario(),
        kernel_detach_inflight::scenario(),
        kernel_alloc_under_oom::scenario(),
        kernel_handler_denied::scenario(),
        kernel_selftests_bpf_oom::scenario(),
        kernel_psi_unprivileged_trigger::scenario(),
        policyd_priority::memcg(),
        policyd_priority::global(),
        policyd_protect::scenario(),
        policyd_passes_over::scenario(),
        policyd_capacity::scenario(),
        policyd_kill_cgroup::scenario(),
        policyd_kubelet::scenario(),
        policyd_rule_matching::scenario(),
        policyd_deep_new_cgroup::scenario(),
        policyd_new_cgroup_template::scenario(),
        policyd_reload::scenario(),
        policyd_watch_config::scenario(),
        policyd_dry_run::scenario(),
        policyd_pressure::memcg(),
        policyd_pressure::global(),
        policyd_pressure::backoff(),
        policyd_pressure::dry_run(),
        policyd_pressure::needs_cap(),
        policyd_swap::scenario(),
        policyd_swap::dry_run(),
        policyd_largest_badness::scenario(),
        policyd_lifecycle::scenario(),
        policyd_ops_layout::scenario(),
        policyd_rule_table::scenario(),
        policyd_rules_rebuild::scenario(),
        policyd_per_cpu::scenario(),
        policyd_walk_cut::scenario(),
        policyd_metrics::scenario(),
        policyd_victim_list::scenario(),
        policyd_explain::scenario(),
        policyd_differential::scenario(),
        policyd_xattrs::scenario(),
        policyd_tree_walk::scenario(),
        policyd_cgroup_watch::scenario(),
        policyd_soak::scenario(),
        memcg_selftests::scenario(),
        trace_kills::kernel_kill(),
        trace_kills::oom_group(),
        trace_kills::kubelet_layout(),
        trace_kills::stock_kernel(),
        systemd_service::scenario(),
        systemd_preferences::scenario(),
        demo::scenario(),
        policyd_pressure::demo(),
        bench_storm::scenario().bench(),
        bench_decision::scenario().bench(),
        bench_footprint::scenario().bench(),
        bench_kernel_cost::scenario().bench(),
        bench_charge::scenario().bench(),
        bench_thrash::scenario().bench(),
    ]
}
