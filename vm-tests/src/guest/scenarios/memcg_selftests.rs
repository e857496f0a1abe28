//! The kernel's own memcg selftests (tools/testing/selftests/cgroup/test_memcontrol, built
//! from the test kernel's tree) run three times: with no BPF OOM handler, with policyd's
//! `observe` (ranks every OOM, leaves every kill to the kernel), and with `priority` on an
//! empty config (kills every OOM's victim itself). The series must not change what memcg
//! promises: the OOM tests (memory.events `oom` and `oom_kill`, memory.oom.group on a leaf
//! and on a parent, and oom_score_adj -1000 inside a group) pass in all three, and with a
//! handler the handler really decided those OOMs (policyd's decisions say so). No test that
//! passes without a handler may fail with one. Six tests (current_peak, min, low, high, max,
//! reclaim: page cache and reclaim) fail in this guest with or without a handler, for a
//! reason not yet established; every result is printed for each run, side by side.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use policyd::abi::Outcome;

use crate::guest::pdutil::{self, Decision, Policyd};
use crate::guest::util::{describe_status, spawn_in, Cgroup};
use crate::guest::Scenario;

const TEST_MEMCONTROL: &str = "/bin/test_memcontrol";

/// Test name -> "pass", "fail" or "skip".
type Results = BTreeMap<String, &'static str>;

/// The tests about OOM kills: these must pass with and without a handler.
const OOM_TESTS: [&str; 4] = [
    "test_memcg_oom_events",
    "test_memcg_oom_group_leaf_events",
    "test_memcg_oom_group_parent_events",
    "test_memcg_oom_group_score_events",
];

pub fn scenario() -> Scenario {
    Scenario::new("memcg-selftests", run)
        .needs_policyd()
        .timeout_s(900)
}

/// kselftest's result lines: "ok 3 name", "not ok 4 name", "ok 5 # SKIP name".
fn parse_tap(output: &str) -> Results {
    let mut results = BTreeMap::new();
    for line in output.lines() {
        let (verdict, rest) = if let Some(rest) = line.strip_prefix("not ok ") {
            ("fail", rest)
        } else if let Some(rest) = line.strip_prefix("ok ") {
            ("pass", rest)
        } else {
            continue;
        };
        let Some((_number, rest)) = rest.split_once(' ') else {
            continue;
        };
        let (verdict, name) = match rest.strip_prefix("# SKIP ") {
            Some(name) => ("skip", name),
            None => (verdict, rest),
        };
        if let Some(name) = name.split_whitespace().next() {
            results.insert(name.to_owned(), verdict);
        }
    }
    results
}

/// Runs test_memcontrol to completion; its results by test name.
fn run_tests(label: &str) -> Result<Results> {
    println!("test_memcontrol, {label}:");
    // With oom_score_adj 0, as from a shell: the runner's -1000 would make its children
    // unkillable, and every OOM in the tests fail.
    let mut cmd = Command::new(TEST_MEMCONTROL);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = spawn_in(&Cgroup::root(), &mut cmd, Some(0))
        .and_then(|child| Ok(child.wait_with_output()?))
        .with_context(|| format!("running {TEST_MEMCONTROL}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    println!("test_memcontrol, {label}: {}", describe_status(out.status));
    let results = parse_tap(&text);
    ensure!(
        !results.is_empty(),
        "test_memcontrol ({label}) printed no test results"
    );
    let failed: Vec<&str> = OOM_TESTS
        .iter()
        .copied()
        .filter(|t| results.get(*t).copied() != Some("pass"))
        .collect();
    ensure!(
        failed.is_empty(),
        "{label}: the OOM tests {failed:?} did not pass (results: {results:?})"
    );
    Ok(results)
}

/// Runs the tests under `policyd load POLICY` on an empty config; the decisions it logged.
fn run_under(policy: &str, config: &str) -> Result<(Results, Vec<Decision>)> {
    let mut pd = Policyd::load(&[policy, "--config", config])?;
    let mark = pd.mark();
    let results = run_tests(&format!("policyd {policy}"))?;
    // On SIGTERM policyd logs what is left in its ring buffer before it exits.
    pd.signal(Signal::SIGTERM)?;
    let status = pd.wait_exit(Duration::from_secs(20))?;
    ensure!(
        status.success(),
        "policyd {policy} exited with {}",
        describe_status(status)
    );
    Ok((results, pd.decisions_since(mark)?))
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let config = pdutil::write_config("memcg-selftests", "")?;

    let plain = run_tests("no handler")?;

    let (observed, decisions) = run_under("observe", &config)?;
    let deferred = decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Deferred)
        .count();
    ensure!(
        deferred >= OOM_TESTS.len() && deferred == decisions.len(),
        "under observe, {} decisions of which {deferred} deferred; expected one deferral per \
         OOM, at least {}",
        decisions.len(),
        OOM_TESTS.len()
    );

    let (prioritised, decisions) = run_under("priority", &config)?;
    let killed = decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Killed)
        .count();
    ensure!(
        killed >= OOM_TESTS.len(),
        "under priority, {killed} of {} decisions killed; expected the handler to kill in \
         each of the {} OOM tests",
        decisions.len(),
        OOM_TESTS.len()
    );

    println!("test_memcontrol results: no handler / observe / priority");
    for (name, verdict) in &plain {
        let other = |r: &Results| r.get(name).copied().unwrap_or("missing");
        println!(
            "  {name}: {verdict} / {} / {}",
            other(&observed),
            other(&prioritised)
        );
    }
    // Beyond the OOM tests: a handler must not break what passes without one.
    let broken: Vec<String> = plain
        .iter()
        .filter(|(_, verdict)| **verdict == "pass")
        .flat_map(|(name, _)| {
            [("observe", &observed), ("priority", &prioritised)]
                .into_iter()
                .filter(|(_, r)| r.get(name).copied() != Some("pass"))
                .map(move |(policy, _)| format!("{name} under {policy}"))
        })
        .collect();
    ensure!(
        broken.is_empty(),
        "tests that pass with no handler fail with one: {broken:?}"
    );
    println!(
        "the {} OOM tests pass with no handler, under observe ({deferred} OOMs deferred) and \
         under priority ({killed} OOMs killed by the handler); every test that passes without \
         a handler passes with one",
        OOM_TESTS.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kselftest_results() {
        let out = "TAP version 13\n1..3\nok 1 test_memcg_subtree_control\n\
                   not ok 2 test_memcg_min\nok 3 # SKIP test_memcg_sock\n\
                   # Totals: pass:1 fail:1\n";
        let r = parse_tap(out);
        assert_eq!(r["test_memcg_subtree_control"], "pass");
        assert_eq!(r["test_memcg_min"], "fail");
        assert_eq!(r["test_memcg_sock"], "skip");
        assert_eq!(r.len(), 3);
    }
}
