//! The series' own in-tree BPF selftests (kernel-patches/v7.3 0011:
//! tools/testing/selftests/bpf/prog_tests/bpf_oom.c), built by vm-tests/bpf-selftests.sh
//! into a test_progs that holds only them, run as upstream runs them: `test_progs -t
//! bpf_oom`. Every subtest must be reported, and pass; a skip or a missing subtest fails.

use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use crate::guest::util::{describe_status, spawn_in, Cgroup};
use crate::guest::Scenario;

const TEST_PROGS: &str = "/bin/test_progs";

/// The subtests of prog_tests/bpf_oom.c, in the order it runs them.
const SUBTESTS: [&str; 8] = [
    "attach_root",
    "attach_cgroup",
    "detach_on_rmdir",
    "kill_refusals",
    "await_victim",
    "hierarchy",
    "v3_style",
    "v3_unnamed_not_sleepable",
];

pub fn scenario() -> Scenario {
    Scenario::new("kernel-selftests-bpf-oom", run).timeout_s(240)
}

/// test_progs' subtest lines, "#1/2     bpf_oom/attach_cgroup:OK": (subtest, result).
fn parse_subtests(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('#')?;
            let (_number, rest) = rest.split_once(char::is_whitespace)?;
            let (name, result) = rest
                .trim_start()
                .strip_prefix("bpf_oom/")?
                .split_once(':')?;
            Some((name.to_owned(), result.trim().to_owned()))
        })
        .collect()
}

fn run() -> Result<()> {
    // With oom_score_adj 0, as from a shell: the runner's -1000 would be inherited by
    // the test's children, and bpf_oom_kill_process() would refuse every one of them.
    let mut cmd = Command::new(TEST_PROGS);
    cmd.args(["-t", "bpf_oom"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = spawn_in(&Cgroup::root(), &mut cmd, Some(0))
        .and_then(|child| Ok(child.wait_with_output()?))
        .with_context(|| format!("running {TEST_PROGS} -t bpf_oom"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    println!("test_progs: {}", describe_status(out.status));

    let results = parse_subtests(&stdout);
    let mut wrong = Vec::new();
    for name in SUBTESTS {
        match results.iter().find(|(n, _)| n == name) {
            Some((_, r)) if r == "OK" => {}
            Some((_, r)) => wrong.push(format!("{name}: {r}")),
            None => wrong.push(format!("{name}: not reported")),
        }
    }
    for (name, _) in &results {
        if !SUBTESTS.contains(&name.as_str()) {
            wrong.push(format!(
                "{name}: unknown to this scenario (add it to SUBTESTS)"
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "bpf_oom subtests that did not pass: {}",
        wrong.join(", ")
    );
    ensure!(
        out.status.success(),
        "test_progs ended with {} although every subtest passed",
        describe_status(out.status)
    );
    println!(
        "all {} bpf_oom subtests passed: {}",
        SUBTESTS.len(),
        SUBTESTS.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_test_progs_results() {
        let out = "#1/1     bpf_oom/attach_root:OK\n\
                   #1/2     bpf_oom/attach_cgroup:FAIL\n\
                   #1/3     bpf_oom/detach_on_rmdir:SKIP\n\
                   #1       bpf_oom:FAIL\n\
                   Summary: 0/1 PASSED, 1 SKIPPED, 1/1 FAILED\n";
        assert_eq!(
            parse_subtests(out),
            vec![
                ("attach_root".to_owned(), "OK".to_owned()),
                ("attach_cgroup".to_owned(), "FAIL".to_owned()),
                ("detach_on_rmdir".to_owned(), "SKIP".to_owned()),
            ]
        );
    }
}
