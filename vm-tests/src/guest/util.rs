//! Helpers for guest scenarios: cgroups, memory hogs, child processes, the kernel log and
//! swap on zram (one submodule each, re-exported here), waiting, and the lines a scenario
//! sends back to the host (story lines for the demo, JSON for benchmarks).
//!
//! Everything here runs inside the test VM as root, with cgroup v2 mounted at
//! /sys/fs/cgroup and the memory controller enabled in the root (see the /init script).

// A toolbox for scenarios: not every helper has a user at every point in time.
#![allow(dead_code)]

mod cgroup;
mod hog;
mod kmsg;
mod process;
mod zram;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use cgroup::{Cgroup, MemoryEvents, CGROUP_ROOT};
pub use hog::{run_churn, run_hog, Churn, Hog, HogSpec, HOG_READY};
pub use kmsg::{KillLog, Kmsg, KmsgRecord};
pub use process::{describe_status, spawn_in, spawn_sleep};
pub use zram::ZramSwap;

/// Writes `value` to `path` in a single write(2), as sysfs, cgroupfs and procfs expect.
pub fn write_file(path: impl AsRef<Path>, value: impl AsRef<[u8]>) -> Result<()> {
    let path = path.as_ref();
    fs::write(path, value.as_ref()).with_context(|| {
        format!(
            "writing {:?} to {}",
            String::from_utf8_lossy(value.as_ref()),
            path.display()
        )
    })
}

/// Reads the whole of `path` as text.
pub fn read_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Calls `check` every 20 ms until it yields a value; fails on its first error, or after
/// `timeout` with an error naming `what` was awaited.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:.1} s waiting for {what}",
                timeout.as_secs_f64()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// [`poll`] for a condition.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    poll(timeout, what, || Ok(cond().then_some(())))
}

/// A line of the demo's story: the host's `demo` command prints these, in order.
pub fn story(line: impl AsRef<str>) {
    println!("{}{}", crate::protocol::STORY, line.as_ref());
}

/// A benchmark result: the host's `bench` command collects these per scenario.
pub fn emit_json(record: &crate::records::Record) {
    let line = serde_json::to_string(record).expect("a record serializes");
    println!("{}{line}", crate::protocol::JSON);
}

/// True when the host asked for a shortened run (`bench --quick`).
pub fn quick() -> bool {
    fs::read_to_string("/proc/cmdline")
        .map(|c| {
            c.split_whitespace()
                .any(|a| a == crate::protocol::QUICK_ARG)
        })
        .unwrap_or(false)
}
