//! The host side: `test`, `demo`, `bench`, and the kernel build steps they share.

mod bench_report;
mod debian;
mod initramfs;
mod qemu;
mod validate;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};

use crate::guest::{self, Boots, Kind, Scenario};
use qemu::{Verdict, Vm};

/// The repository root: $VMTESTS_TOP, else the workspace this binary was built from.
fn top() -> PathBuf {
    match std::env::var_os("VMTESTS_TOP") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("vm-tests lives in the workspace")
            .into(),
    }
}

/// target/vm-tests: everything the harness downloads, builds and logs.
fn out_dir() -> PathBuf {
    top().join("target/vm-tests")
}

/// Runs vm-tests/kernel.sh with `args`, output passed through; Ok(false) when it fails.
pub fn kernel_command(args: &[&str]) -> Result<bool> {
    let script = top().join("vm-tests/kernel.sh");
    let status = Command::new(&script)
        .args(args)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    Ok(status.success())
}

/// Runs `script` with `args` (its stderr passed through) and returns the existing file
/// its last stdout line names: how the shell steps hand over what they built or fetched.
pub(crate) fn last_line_path(script: &Path, args: &[&std::ffi::OsStr]) -> Result<PathBuf> {
    let output = Command::new(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if !path.is_file() {
        bail!(
            "{} printed no file path (stdout: {stdout:?})",
            script.display()
        );
    }
    Ok(path)
}

/// Builds the kernel (or reuses the cached build) and returns the bzImage path.
fn build_kernel() -> Result<PathBuf> {
    last_line_path(&top().join("vm-tests/kernel.sh"), &[])
}

/// Debian's stock kernel (downloaded once by vm-tests/deps.sh into target/vm-tests).
fn stock_kernel() -> Result<PathBuf> {
    let dest = out_dir().join("stock-kernel");
    last_line_path(
        &top().join("vm-tests/deps.sh"),
        &["stock_kernel".as_ref(), dest.as_os_str()],
    )
}

/// Linux 7.3 from the same source and config without the series, built or cached by
/// vm-tests/kernel.sh vanilla: the baseline of bench-kernel-cost.
fn vanilla_kernel() -> Result<PathBuf> {
    last_line_path(&top().join("vm-tests/kernel.sh"), &["vanilla".as_ref()])
}

/// Boots of each kernel in a [`Boots::VanillaAndTest`] benchmark, taken by turns
/// (vanilla first): the spread between boots of one kernel is part of the noise. Under
/// TCG it counts instructions, where boots of one kernel differ by a few percent: one
/// each is enough for a quick look, two for the full run.
fn alternating_boots(quick: bool) -> usize {
    if quick {
        1
    } else {
        2
    }
}

/// Kernel, initramfs and accelerator: what every VM run needs.
fn prepare_vm() -> Result<Vm> {
    let bzimage = build_kernel().context("building the kernel")?;
    prepare_vm_with(bzimage)
}

fn prepare_vm_with(bzimage: PathBuf) -> Result<Vm> {
    // The kernel's build directory holds the selftests built from its tree.
    let kernel_dir = bzimage
        .parent()
        .context("the bzImage path has no directory")?;
    let initramfs =
        initramfs::build(&top(), &out_dir(), kernel_dir).context("building the initramfs")?;
    let logs = out_dir().join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    Vm::new(bzimage, initramfs, logs)
}

pub fn list() {
    for s in guest::scenarios::all() {
        let policyd = if s.needs_policyd {
            ", needs policyd"
        } else {
            ""
        };
        let bench = match s.kind {
            Kind::Test => "",
            Kind::Bench => ", benchmark",
        };
        let stock = match s.boots {
            Boots::TestKernel => "",
            Boots::StockKernel => ", Debian's stock kernel",
            Boots::VanillaAndTest => ", vanilla 7.3 and the test kernel by turns",
        };
        let debian = if s.debian {
            ", Debian guest (systemd)"
        } else {
            ""
        };
        println!(
            "{:<32} {:>4} s, {:>5} MiB{policyd}{bench}{stock}{debian}",
            s.name, s.timeout_s, s.mem_mb
        );
    }
}

/// Outcome of one step of `test`, printed as PASS/FAIL and counted in the summary.
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn pass(&mut self, name: &str, started: Instant) {
        self.passed += 1;
        println!("PASS {name} ({:.1} s)", started.elapsed().as_secs_f64());
    }

    fn fail(&mut self, name: &str, reason: &str) {
        self.failed += 1;
        println!("FAIL {name}: {reason}");
    }

    fn record(&mut self, name: &str, started: Instant, result: Result<()>) {
        match result {
            Ok(()) => self.pass(name, started),
            Err(e) => self.fail(name, &format!("{e:#}")),
        }
    }

    /// Prints the closing line; true when nothing failed.
    fn finish(self) -> bool {
        println!("{} passed, {} failed", self.passed, self.failed);
        self.failed == 0
    }
}

/// Runs `cargo` with `args` in the repository root (where .cargo/config.toml applies).
fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(top())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The scenarios whose names contain `filter` (all for "").
fn select(filter: &str) -> Result<Vec<Scenario>> {
    let all = guest::scenarios::all();
    let chosen: Vec<Scenario> = all
        .iter()
        .filter(|s| s.name.contains(filter))
        .copied()
        .collect();
    if chosen.is_empty() {
        bail!(
            "no scenario name contains {filter:?}; known: {}",
            all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(chosen)
}

pub fn test(filter: &str, verbose: bool) -> Result<bool> {
    let scenarios: Vec<Scenario> = select(filter)?
        .into_iter()
        .filter(|s| s.kind == Kind::Test)
        .collect();
    if scenarios.is_empty() {
        bail!("only benchmark scenarios match {filter:?}: run them with ./vm-tests/run bench {filter}");
    }
    let mut tally = Tally {
        passed: 0,
        failed: 0,
    };

    let started = Instant::now();
    tally.record("host-tests", started, cargo(&["test", "--workspace"]));
    let started = Instant::now();
    tally.record(
        "kubernetes-manifests",
        started,
        validate::kubernetes_manifests(),
    );

    let bzimage = match build_kernel() {
        Ok(path) => path,
        Err(e) => {
            tally.fail("kernel", &format!("{e:#}"));
            return Ok(tally.finish());
        }
    };

    let started = Instant::now();
    let check = kernel_command(&["vmlinux-h", "--check"]).and_then(|ok| {
        if ok {
            Ok(())
        } else {
            bail!("bpf/vmlinux/x86_64/vmlinux.h does not match the kernel; run ./vm-tests/run vmlinux-h")
        }
    });
    tally.record("vmlinux-h", started, check);

    let mut vm = match prepare_vm_with(bzimage) {
        Ok(vm) => vm,
        Err(e) => {
            tally.fail("vm", &format!("{e:#}"));
            return Ok(tally.finish());
        }
    };
    // The .deb (with its systemd-analyze verify and lintian checks) and the Debian root
    // filesystem; without them the Debian scenarios fail, each saying so.
    if scenarios.iter().any(|s| s.debian) {
        let started = Instant::now();
        match debian::prepare(&top()) {
            Ok(d) => {
                vm.with_debian(d);
                tally.pass("debian-package-and-rootfs", started);
            }
            Err(e) => tally.fail("debian-package-and-rootfs", &format!("{e:#}")),
        }
    }
    let mut stock_vm = None;
    for s in &scenarios {
        let started = Instant::now();
        let vm = match s.boots {
            Boots::TestKernel => &vm,
            Boots::StockKernel => {
                if stock_vm.is_none() {
                    match stock_kernel() {
                        Ok(vmlinuz) => stock_vm = Some(vm.with_kernel(vmlinuz).one_tcg_thread()),
                        Err(e) => {
                            tally.fail(s.name, &format!("fetching Debian's kernel: {e:#}"));
                            continue;
                        }
                    }
                }
                stock_vm.as_ref().expect("set above")
            }
            Boots::VanillaAndTest => {
                tally.fail(s.name, "boots two kernels by turns, which only bench does");
                continue;
            }
        };
        let run = vm.run_scenario(s, &[], |line| {
            if verbose {
                println!("  | {line}");
            }
        });
        match run {
            Ok(run) if run.verdict == Verdict::Pass => {
                tally.record(s.name, started, validate::scenario_records(&run.json))
            }
            Ok(run) => tally.fail(
                s.name,
                &format!("{} (log: {})", run.verdict, run.log.display()),
            ),
            Err(e) => tally.fail(s.name, &format!("{e:#}")),
        }
    }
    Ok(tally.finish())
}

/// `demo`, or `demo NAME`: the scenario demo-NAME.
pub fn demo(name: Option<&str>) -> Result<bool> {
    let scenario_name = name.map_or_else(|| "demo".to_owned(), |n| format!("demo-{n}"));
    let scenario = guest::find(&scenario_name)
        .with_context(|| format!("there is no demo scenario {scenario_name}"))?;
    let vm = prepare_vm()?;
    println!();
    let run = vm.run_scenario(&scenario, &[], |line| {
        if let Some(story) = qemu::after_marker(line, crate::protocol::STORY) {
            println!("{story}");
        }
    })?;
    println!();
    if run.verdict != Verdict::Pass {
        println!("demo FAILED: {} (log: {})", run.verdict, run.log.display());
        return Ok(false);
    }
    println!("(full console log: {})", run.log.display());
    Ok(true)
}

pub fn bench(filter: &str, quick: bool, leave_out: &[String]) -> Result<bool> {
    let benches: Vec<Scenario> = guest::scenarios::all()
        .into_iter()
        .filter(|s| s.kind == Kind::Bench)
        .collect();
    for name in leave_out {
        ensure!(
            benches.iter().any(|s| s.name == name),
            "--leave-out {name}: no such benchmark; known: {}",
            benches
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let why = |s: &Scenario| {
        if leave_out.iter().any(|n| n == s.name) {
            Some(bench_report::LEFT_OUT_BY_REQUEST)
        } else if quick && s.debian {
            Some(bench_report::QUICK_LEAVES_OUT_WHY)
        } else {
            None
        }
    };
    let (left_out, scenarios): (Vec<Scenario>, Vec<Scenario>) = benches
        .into_iter()
        .filter(|s| s.name.contains(filter))
        .partition(|s| why(s).is_some());
    let left_out: Vec<bench_report::LeftOut> = left_out
        .iter()
        .map(|s| bench_report::LeftOut {
            name: s.name.to_string(),
            why: why(s).unwrap_or_default().to_string(),
        })
        .collect();
    for l in &left_out {
        println!(
            "bench leaves out {} ({}): run it with ./vm-tests/run bench {}",
            l.name, l.why, l.name
        );
    }
    if scenarios.is_empty() {
        bail!(
            "no benchmark scenario name contains {filter:?}{}",
            if left_out.is_empty() {
                ""
            } else {
                " that --quick runs"
            }
        );
    }
    let bench_started = Instant::now();
    let machine = bench_report::Machine::probe(&top());
    let mut vm = prepare_vm()?;
    if scenarios.iter().any(|s| s.debian) {
        vm.with_debian(debian::prepare(&top()).context("preparing the Debian guest")?);
    }
    let mut extra: Vec<String> = Vec::new();
    if quick {
        extra.push(crate::protocol::QUICK_ARG.to_string());
    }
    // Only these sizes of bench-decision's plan ("10000x10000,10000x50000"): the guest
    // checks them against its plan.
    if let Some(only) = std::env::var_os("VMTEST_DECISION_ONLY") {
        let only = only
            .into_string()
            .map_err(|v| anyhow::anyhow!("VMTEST_DECISION_ONLY is not UTF-8: {v:?}"))?;
        ensure!(
            !only.is_empty() && !only.contains(char::is_whitespace),
            "VMTEST_DECISION_ONLY={only:?}: want CGROUPSxTASKS[,CGROUPSxTASKS...], no spaces"
        );
        extra.push(format!("{}{only}", crate::protocol::DECISION_ONLY_ARG));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut runs = Vec::new();
    let mut ok = true;
    for s in &scenarios {
        println!(
            "bench {} ({}) ...",
            s.name,
            if quick { "quick" } else { "full" }
        );
        let load_before = bench_report::loadavg();
        let started = Instant::now();
        let vanilla_vm;
        let boots: Vec<&Vm> = match s.boots {
            Boots::TestKernel => vec![&vm],
            Boots::StockKernel => bail!(
                "{}: benchmarks on Debian's kernel are not supported",
                s.name
            ),
            Boots::VanillaAndTest => {
                let bzimage = vanilla_kernel().context("building the vanilla 7.3 kernel")?;
                vanilla_vm = vm.with_kernel(bzimage);
                (0..alternating_boots(quick))
                    .flat_map(|_| [&vanilla_vm, &vm])
                    .collect()
            }
        };
        let mut records = Vec::new();
        let mut verdicts = Vec::new();
        let mut log = String::new();
        for boot in boots {
            let run = boot.run_scenario(s, &extra, |line| {
                if let Some(json) = qemu::after_marker(line, crate::protocol::JSON) {
                    println!("  {}", bench_report::short(json, 160));
                }
            })?;
            for json in &run.json {
                match serde_json::from_str::<crate::records::Record>(json) {
                    Ok(v) => records.push(v),
                    Err(e) => {
                        ok = false;
                        println!(
                            "FAIL {}: a record the host cannot read ({e}): {json}",
                            s.name
                        );
                    }
                }
            }
            if run.verdict != Verdict::Pass {
                ok = false;
                println!(
                    "FAIL {}: {} (log: {})",
                    s.name,
                    run.verdict,
                    run.log.display()
                );
            }
            verdicts.push(run.verdict.to_string());
            log = run.log.display().to_string();
        }
        let wall_s = started.elapsed().as_secs_f64();
        // One verdict per boot when they differ, so that a failed boot is not hidden.
        verdicts.dedup();
        let verdict = verdicts.join("; ");
        if verdict == Verdict::Pass.to_string() {
            println!("done {} in {wall_s:.0} s", s.name);
        }
        runs.push(bench_report::ScenarioRun {
            name: s.name.to_string(),
            mem_mb: s.mem_mb,
            wall_s,
            verdict,
            log,
            load_before,
            load_after: bench_report::loadavg(),
            records,
        });
    }
    let (json_path, md_path) = bench_report::write(
        &out_dir(),
        &machine,
        &vm.accel().to_string(),
        quick,
        &left_out,
        bench_started.elapsed().as_secs_f64(),
        &runs,
    )?;
    println!(
        "bench report: {} ({})",
        md_path.display(),
        json_path.display()
    );
    Ok(ok)
}

/// `bench --report-only`: bench.md again from bench.json (after a change to the report).
pub fn bench_report_only() -> Result<bool> {
    let md = bench_report::rerender(&out_dir())?;
    println!("bench report: {}", md.display());
    Ok(true)
}
