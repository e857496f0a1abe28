//! systemd-oomd-preferences: `ManagedOOMPreference=` as systemd 252 itself writes it,
//! honoured by policyd run as the packaged service. In the Debian guest, systemd as PID 1,
//! with systemd-oomd installed but not running (the scenario checks it stays inactive:
//! systemd writes the xattrs whether or not systemd-oomd runs):
//!
//! 1. `dpkg -i` the package; policyd.service runs the shipped config, in which no rule
//!    matches /prefs.slice: its units all get the default priority;
//! 2. three units in prefs.slice (MemoryMax=64M): `prefs-avoid`
//!    (`ManagedOOMPreference=avoid` in a unit file, 16 MiB), and transient `prefs-plain`
//!    (4 MiB) and `prefs-omit` (`=omit`), which grows. Once each unit is started its cgroup carries
//!    user.oomd_avoid=1 / user.oomd_omit=1 (and the plain one neither), and `policyd
//!    explain` names them as the source of the settings;
//! 3. the slice's OOM, the omit unit the largest by far: policyd kills prefs-plain
//!    (the kernel would kill the largest); the next one, prefs-avoid; prefs-omit lives.
//!    While a victim exits the OOM may retry, and policyd logs that it awaits the victim:
//!    such decisions are allowed, any other third decision fails.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::systemd_service::{command, field, install, journal, show, show_u64};
use crate::guest::util;
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("systemd-oomd-preferences", run)
        .debian()
        .timeout_s(600)
        .mem_mb(768)
}

const SLICE: &str = "/sys/fs/cgroup/prefs.slice";
const DECISIONS: &str = policyd::journal::DECISION_MESSAGE_ID;
const OOM_TIMEOUT: Duration = Duration::from_secs(120);

/// The value of xattr `name` on `dir`, if set.
fn xattr(dir: &Path, name: &str) -> Result<Option<String>> {
    let mut buf = [0u8; 64];
    match rustix::fs::getxattr(dir, name, &mut buf) {
        Ok(n) => Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned())),
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {name} of {}", dir.display())),
    }
}

/// Starts `unit` in prefs.slice running `guest hog ARGS`, with `props`.
fn start(unit: &str, props: &[&str], hog: &[&str]) -> Result<()> {
    let mut args = vec![format!("--unit={unit}"), "--slice=prefs.slice".to_owned()];
    for p in props {
        args.extend(["-p".to_owned(), (*p).to_owned()]);
    }
    args.extend(
        ["/run/vmtest/vm-tests", "guest", "hog"]
            .iter()
            .chain(hog)
            .map(|s| (*s).to_owned()),
    );
    command(
        "systemd-run",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .map(drop)
}

/// Starts `unit` from a unit file in /run/systemd/system, as an operator's unit with
/// `props` in its [Service] section would run, `guest hog ARGS` in prefs.slice.
fn start_from_file(unit: &str, props: &[&str], hog: &[&str]) -> Result<()> {
    let mut text = format!(
        "[Service]\nSlice=prefs.slice\nExecStart=/run/vmtest/vm-tests guest hog {}\n",
        hog.join(" ")
    );
    for p in props {
        text.push_str(p);
        text.push('\n');
    }
    util::write_file(format!("/run/systemd/system/{unit}.service"), text)?;
    command("systemctl", &["daemon-reload"])?;
    command("systemctl", &["start", unit]).map(drop)
}

/// Waits until `unit`'s cgroup holds at least `mib` MiB.
fn resident(unit: &str, mib: u64) -> Result<()> {
    let file = format!("{SLICE}/{unit}.service/memory.current");
    util::wait_until(OOM_TIMEOUT, &format!("{unit} to hold {mib} MiB"), || {
        util::read_file(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|b| b >= mib << 20)
    })
}

/// The `n`th kill in policyd.service's journal (from 0). Decisions that await a victim
/// still exiting come between kills when the OOM retries; they are checked apart.
fn kill(n: usize) -> Result<serde_json::Value> {
    util::poll(OOM_TIMEOUT, &format!("policyd's kill #{}", n + 1), || {
        Ok(
            journal(&[&format!("MESSAGE_ID={DECISIONS}"), "POLICYD_OUTCOME=killed"])?
                .into_iter()
                .nth(n),
        )
    })
}

/// systemd-oomd is installed (bench-thrash runs it) but must not run here: the scenario
/// shows that systemd writes the xattrs without it.
fn expect_oomd_inactive(when: &str) -> Result<()> {
    let state = show("systemd-oomd.service", "ActiveState")?;
    ensure!(
        state == "inactive",
        "systemd-oomd.service is {state} {when}: the scenario shows systemd writes the \
         xattrs without it"
    );
    Ok(())
}

fn run() -> Result<()> {
    expect_oomd_inactive("at boot")?;
    install()?;
    command("systemctl", &["--version"])?;

    command(
        "systemctl",
        &["set-property", "--runtime", "prefs.slice", "MemoryMax=64M"],
    )?;
    // From a unit file, as operators set it; the others are transient.
    start_from_file(
        "prefs-avoid",
        &["ManagedOOMPreference=avoid"],
        &["--mib", "16"],
    )?;
    start("prefs-plain", &[], &["--mib", "4"])?;
    resident("prefs-avoid", 16)?;
    resident("prefs-plain", 4)?;
    let dir = |unit: &str| Path::new(SLICE).join(format!("{unit}.service"));
    // What systemd wrote, before anything is under pressure.
    ensure!(
        xattr(&dir("prefs-avoid"), "user.oomd_avoid")?.as_deref() == Some("1")
            && xattr(&dir("prefs-avoid"), "user.oomd_omit")?.is_none(),
        "systemd did not set user.oomd_avoid=1 (alone) for ManagedOOMPreference=avoid"
    );
    ensure!(
        xattr(&dir("prefs-plain"), "user.oomd_avoid")?.is_none()
            && xattr(&dir("prefs-plain"), "user.oomd_omit")?.is_none(),
        "a unit without ManagedOOMPreference= has oomd xattrs"
    );
    println!("prefs-avoid.service: user.oomd_avoid=1 once started");

    // The omit unit grows past everyone: 4 MiB at once, then 256 KiB every 20 ms, up to
    // 52 MiB (under MemoryMax once the other two are gone).
    start(
        "prefs-omit",
        &["ManagedOOMPreference=omit"],
        &[
            "--mib",
            "4",
            "--grow",
            "--step-kib",
            "256",
            "--delay-us",
            "20000",
            "--max-mib",
            "52",
        ],
    )?;
    ensure!(
        xattr(&dir("prefs-omit"), "user.oomd_omit")?.as_deref() == Some("1"),
        "systemd did not set user.oomd_omit=1 for ManagedOOMPreference=omit"
    );
    println!("prefs-omit.service: user.oomd_omit=1 once started");
    expect_oomd_inactive("with the three units started")?;

    // explain, before the OOM: the settings' source is systemd's xattr.
    let text = command(
        "/usr/sbin/policyd",
        &["explain", "--cgroup", "/prefs.slice"],
    )?;
    for want in [
        "avoid from user.oomd_avoid on /prefs.slice/prefs-avoid.service",
        "user.oomd_omit on /prefs.slice/prefs-omit.service",
    ] {
        ensure!(
            text.contains(want),
            "policyd explain does not say {want:?}:\n{text}"
        );
    }

    let victims = [
        "/prefs.slice/prefs-plain.service",
        "/prefs.slice/prefs-avoid.service",
    ];
    for (n, victim) in victims.iter().enumerate() {
        let d = kill(n)?;
        println!("kill {}: {}", n + 1, field(&d, "MESSAGE"));
        ensure!(
            field(&d, "POLICYD_VICTIM_CGROUP") == *victim
                && field(&d, "POLICYD_SCOPE") == "/prefs.slice",
            "kill {} is not {victim} in /prefs.slice's OOM: {d}",
            n + 1
        );
    }
    resident("prefs-omit", 52)?;
    ensure!(
        show("prefs-omit.service", "ActiveState")? == "active",
        "prefs-omit.service (ManagedOOMPreference=omit) did not survive"
    );
    let events = util::read_file(format!("{}/memory.events", dir("prefs-omit").display()))?;
    ensure!(
        events.lines().any(|l| l == "oom_kill 0"),
        "prefs-omit.service lost a task: {events}"
    );
    // Two kills, and nothing else decided but waits for those two victims to exit.
    let decisions = journal(&[&format!("MESSAGE_ID={DECISIONS}")])?;
    let mut kills = 0;
    for d in &decisions {
        match field(d, "POLICYD_OUTCOME") {
            "killed" => kills += 1,
            "awaited" if victims.contains(&field(d, "POLICYD_VICTIM_CGROUP")) => {
                println!("awaited: {}", field(d, "MESSAGE"));
            }
            _ => anyhow::bail!("a decision that is neither kill nor await of a victim: {d}"),
        }
    }
    ensure!(kills == 2, "{kills} kills, expected 2");
    println!(
        "omit unit (52 MiB, the largest) lived; plain died first, avoid second; policyd pid {}",
        show_u64("policyd.service", "MainPID")?
    );
    Ok(())
}
