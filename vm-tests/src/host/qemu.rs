//! Booting the test kernel in QEMU, one boot per scenario, and judging the console log.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::debian::DebianGuest;
use super::initramfs::Initramfs;
use crate::guest::Scenario;
use crate::protocol;

/// How long a KVM probe boot may take before TCG is chosen instead. A working KVM boots
/// in about a second; a TCG boot takes ~4.5 s, so past 6 s KVM would not help even if it
/// worked, and where it hangs (it does on some of our machines) we stop waiting early.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(6);
/// A boot with the chosen accelerator that takes longer than this means the kernel or
/// the initramfs is broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// Kernel log lines that fail a scenario, whatever it returned.
const KERNEL_PROBLEMS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "general protection fault",
    "Kernel panic",
    "kernel BUG",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "suspicious RCU usage",
    // Lockdep's reports, not the word: lockdep_*() frames show up in any stack dump.
    "lockdep is turned off",
    "DEBUG_LOCKS_WARN_ON",
    "possible irq lock inversion",
    "trying to register non-static key",
    "blocked for more than",
    "soft lockup",
];

/// Lines that match KERNEL_PROBLEMS but are not problems: boot banners of the debug options.
const KERNEL_BENIGN: &[&str] = &["RCU lockdep checking is enabled"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// `counting`: under TCG, the guest's clock advances one nanosecond per
    /// instruction (and jumps over idle time), so a timed loop counts its
    /// instructions whatever else the host runs. KVM has no such clock.
    /// `one_thread`: both vCPUs run in one host thread (see Vm::one_tcg_thread).
    fn qemu_args(self, counting: bool, one_thread: bool) -> Vec<&'static str> {
        match self {
            Accel::Kvm => vec!["-enable-kvm", "-cpu", "host"],
            Accel::Tcg => {
                let tcg = if one_thread {
                    "tcg,thread=single"
                } else {
                    "tcg"
                };
                let mut args = vec!["-accel", tcg];
                if counting {
                    args.extend(["-icount", "shift=0,sleep=off"]);
                }
                args
            }
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail(reason) => f.write_str(reason),
        }
    }
}

/// The result of one scenario boot.
pub struct Run {
    pub verdict: Verdict,
    /// The console log.
    pub log: PathBuf,
    /// The scenario's JSON lines (see guest::util::emit_json), unparsed.
    pub json: Vec<String>,
}

/// A kernel + initramfs ready to boot, with the accelerator chosen once.
pub struct Vm {
    bzimage: PathBuf,
    initramfs: Initramfs,
    /// For the scenarios that boot Debian under systemd, once prepared.
    debian: Option<DebianGuest>,
    logs: PathBuf,
    accel: Accel,
    /// Run TCG's vCPUs in one host thread instead of one thread each.
    one_tcg_thread: bool,
}

/// What the guest boots: the busybox initramfs, or the Debian root filesystem with the
/// run's files on a second disk.
enum Media<'a> {
    Initramfs,
    Debian { rootfs: &'a Path, disk: &'a Path },
}

impl Media<'_> {
    /// How long a boot may take to reach its scenario before it counts as stalled;
    /// `counting` instructions, TCG runs the guest about half as fast.
    fn stall(&self, counting: bool) -> Duration {
        let stall = match self {
            Media::Initramfs => BOOT_STALL,
            Media::Debian { .. } => DEBIAN_BOOT_STALL,
        };
        if counting {
            stall * 3
        } else {
            stall
        }
    }
}

/// What one QEMU run left behind.
struct Boot {
    console: String,
    timed_out: bool,
    /// Killed because the guest had not reached /init after BOOT_STALL.
    stalled: bool,
    elapsed: Duration,
}

/// A TCG boot reaches /init in a few seconds, in well under a minute on a loaded machine.
const BOOT_STALL: Duration = Duration::from_secs(60);
/// Debian's systemd reaches multi-user.target in tens of seconds under TCG.
const DEBIAN_BOOT_STALL: Duration = Duration::from_secs(240);

impl Vm {
    /// Chooses KVM if a probe boot with it completes in time, else TCG, and says which.
    /// VMTESTS_ACCEL=kvm|tcg skips the choice.
    /// The same VM booting another kernel, with the busybox initramfs only.
    pub fn with_kernel(&self, bzimage: PathBuf) -> Vm {
        Vm {
            bzimage,
            initramfs: self.initramfs.clone(),
            debian: None,
            logs: self.logs.clone(),
            accel: self.accel,
            one_tcg_thread: false,
        }
    }

    /// For a kernel that rewrites its own text while both vCPUs run: Debian's, with
    /// CONFIG_JUMP_LABEL, flips static branches by int3 patching during boot (and BPF
    /// trampolines patch the same way). With a host thread per vCPU, QEMU has let one vCPU
    /// execute the int3 after the other finished the patch, and the kernel dies with
    /// "Oops: int3" in sched_clock_cpu(), with the finished patch at the trapping address:
    /// 2 of 132 bare boots here, and once in CI. One thread switches vCPUs only between
    /// translated blocks, so no vCPU runs code another is rewriting: 0 of 400 boots. The
    /// test kernel is built without CONFIG_JUMP_LABEL and does not need this.
    pub fn one_tcg_thread(mut self) -> Vm {
        self.one_tcg_thread = true;
        self
    }

    pub fn new(bzimage: PathBuf, initramfs: Initramfs, logs: PathBuf) -> Result<Vm> {
        let mut vm = Vm {
            bzimage,
            initramfs,
            debian: None,
            logs,
            accel: Accel::Tcg,
            one_tcg_thread: false,
        };
        let forced = std::env::var("VMTESTS_ACCEL")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (accel, note) = match forced.as_str() {
            "kvm" => (Accel::Kvm, "forced by VMTESTS_ACCEL".to_string()),
            "tcg" => (Accel::Tcg, "forced by VMTESTS_ACCEL".to_string()),
            "" if !Path::new("/dev/kvm").exists() => (Accel::Tcg, "no /dev/kvm".to_string()),
            "" => match vm.probe(Accel::Kvm, KVM_PROBE_TIMEOUT) {
                Ok(boot_time) => {
                    vm.accel = Accel::Kvm;
                    println!("vm: KVM, probe boot {:.1} s", boot_time.as_secs_f64());
                    return Ok(vm);
                }
                Err(e) => {
                    println!("vm: KVM probe failed: {e:#}");
                    (Accel::Tcg, "KVM does not work here".to_string())
                }
            },
            other => bail!("VMTESTS_ACCEL={other}: expected kvm or tcg"),
        };
        let boot_time = vm
            .probe(accel, PROBE_TIMEOUT)
            .with_context(|| format!("the test kernel does not boot under {accel}"))?;
        vm.accel = accel;
        println!(
            "vm: {accel} ({note}), probe boot {:.1} s",
            boot_time.as_secs_f64()
        );
        Ok(vm)
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// Makes the Debian scenarios bootable.
    pub fn with_debian(&mut self, debian: DebianGuest) {
        self.debian = Some(debian);
    }

    /// Boots the `probe` pseudo-scenario (init prints its markers and powers off).
    fn probe(&self, accel: Accel, timeout: Duration) -> Result<Duration> {
        let log = self
            .logs
            .join(format!("probe-{}.log", accel.to_string().to_lowercase()));
        let boot = self.boot(
            &accel.qemu_args(false, false),
            Media::Initramfs.stall(false),
            &Media::Initramfs,
            protocol::PROBE,
            256,
            timeout,
            &[],
            &log,
            &mut |_| {},
        )?;
        if boot.timed_out {
            bail!(
                "no poweroff within {} s (log: {})",
                timeout.as_secs(),
                log.display()
            );
        }
        match judge(&boot.console, false, timeout) {
            Verdict::Pass => Ok(boot.elapsed),
            Verdict::Fail(reason) => bail!("{reason} (log: {})", log.display()),
        }
    }

    /// Boots `scenario` in a fresh VM, passing every console line to `on_line` as it comes.
    pub fn run_scenario(
        &self,
        scenario: &Scenario,
        extra_args: &[&str],
        mut on_line: impl FnMut(&str),
    ) -> Result<Run> {
        if scenario.needs_policyd && !self.initramfs.has_policyd {
            bail!(
                "needs policyd, but {} does not exist (build it: cargo build --release -p policyd)",
                self.initramfs.policyd.display()
            );
        }
        let log = self.logs.join(format!("{}.log", scenario.name));
        let timeout = Duration::from_secs(scenario.timeout_s);
        let disk;
        let media = if scenario.debian {
            let debian = self.debian.as_ref().with_context(|| {
                format!("{} boots Debian, which was not prepared", scenario.name)
            })?;
            disk = debian.run_disk(self.logs.parent().unwrap_or(&self.logs))?;
            Media::Debian {
                rootfs: &debian.rootfs,
                disk: &disk,
            }
        } else {
            Media::Initramfs
        };
        let accel_args = self.accel.qemu_args(
            scenario.counts_instructions,
            self.one_tcg_thread || scenario.one_tcg_thread,
        );
        let mut boot = self.boot(
            &accel_args,
            media.stall(scenario.counts_instructions),
            &media,
            scenario.name,
            scenario.mem_mb,
            timeout,
            extra_args,
            &log,
            &mut on_line,
        )?;
        // A guest that never reached /init ran nothing of the scenario: under TCG on a
        // loaded machine the boot has been seen to stall once in a few hundred boots.
        // Boot again, once, and say so.
        if boot.stalled {
            eprintln!(
                "vm-tests: {}: the guest stalled before /init ({} s without {}); booting again",
                scenario.name,
                media.stall(scenario.counts_instructions).as_secs(),
                protocol::START.trim()
            );
            boot = self.boot(
                &accel_args,
                media.stall(scenario.counts_instructions),
                &media,
                scenario.name,
                scenario.mem_mb,
                timeout,
                extra_args,
                &log,
                &mut on_line,
            )?;
        }
        let verdict = judge(&boot.console, boot.timed_out, timeout);
        if scenario.debian {
            if let Some(s) = super::debian::boot_seconds(&boot.console) {
                println!(
                    "  {}: systemd reached multi-user.target {s:.1} s after the kernel started",
                    scenario.name
                );
            }
        }
        let json = boot
            .console
            .lines()
            .filter_map(|l| after_marker(l, protocol::JSON))
            .map(str::to_string)
            .collect();
        Ok(Run { verdict, log, json })
    }

    #[allow(clippy::too_many_arguments)]
    fn boot(
        &self,
        accel_args: &[&str],
        stall: Duration,
        media: &Media,
        name: &str,
        mem_mb: u32,
        timeout: Duration,
        extra_args: &[&str],
        log: &Path,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<Boot> {
        let mut append = format!(
            "console=ttyS0 panic=-1 log_buf_len=1M {}{name}",
            protocol::NAME_ARG
        );
        let mut media_args: Vec<std::ffi::OsString> = Vec::new();
        match media {
            Media::Initramfs => {
                media_args.extend(["-initrd".into(), self.initramfs.path.clone().into()]);
            }
            Media::Debian { rootfs, disk } => {
                append.push_str(" root=/dev/vda rw");
                // snapshot=on: the guest's writes go to a temporary file, the image stays.
                let mut root = std::ffi::OsString::from("file=");
                root.push(rootfs);
                root.push(",format=raw,if=virtio,snapshot=on");
                let mut run = std::ffi::OsString::from("file=");
                run.push(disk);
                run.push(",format=raw,if=virtio,readonly=on");
                media_args.extend(["-drive".into(), root, "-drive".into(), run]);
            }
        }
        for a in extra_args {
            append.push(' ');
            append.push_str(a);
        }
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut reader = File::open(log)?;
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-nographic", "-no-reboot", "-nic", "none", "-smp", "2"])
            .args(accel_args)
            .arg("-m")
            .arg(mem_mb.to_string())
            .arg("-kernel")
            .arg(&self.bzimage)
            .args(&media_args)
            .arg("-append")
            .arg(&append)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;

        let mut console = String::new();
        let mut pending = Vec::new();
        let mut timed_out = false;
        let mut stalled = false;
        loop {
            let exited = child.try_wait()?.is_some();
            let mut chunk = Vec::new();
            reader.read_to_end(&mut chunk)?;
            pending.extend_from_slice(&chunk);
            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                on_line(line);
                console.push_str(line);
                console.push('\n');
            }
            if exited {
                break;
            }
            if started.elapsed() > timeout {
                timed_out = true;
                child.kill().ok();
                child.wait().ok();
                break;
            }
            if started.elapsed() > stall && !console.contains(protocol::START) {
                stalled = true;
                child.kill().ok();
                child.wait().ok();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if !pending.is_empty() {
            let line = String::from_utf8_lossy(&pending);
            on_line(line.trim_end_matches('\r'));
            console.push_str(&line);
            console.push('\n');
        }
        Ok(Boot {
            console,
            timed_out,
            stalled,
            elapsed: started.elapsed(),
        })
    }
}

/// The text after `marker` if `line` contains it. Guest lines may follow kernel text on
/// the same console line, so the marker need not start the line.
pub fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker)
        .map(|i| line[i + marker.len()..].trim_end())
}

/// Pass or fail for a scenario's console log: VMTEST-EXIT 0 and a clean kernel log.
fn judge(console: &str, timed_out: bool, timeout: Duration) -> Verdict {
    let lines: Vec<&str> = console.lines().collect();
    let mut reasons = Vec::new();
    let exit = lines
        .iter()
        .rev()
        .find_map(|l| after_marker(l, protocol::EXIT));
    if timed_out {
        reasons.push(format!(
            "timeout after {} s; last console lines:{}",
            timeout.as_secs(),
            tail(&lines, 8)
        ));
    } else {
        match exit.map(|rc| rc.trim().parse::<i32>()) {
            None => {
                let when = if lines.iter().any(|l| l.contains(protocol::START)) {
                    "during the scenario"
                } else {
                    "while booting"
                };
                reasons.push(format!(
                    "guest died {when}; last console lines:{}",
                    tail(&lines, 8)
                ))
            }
            Some(Ok(0)) => {}
            Some(Ok(rc)) => {
                let errors: Vec<&str> = lines
                    .iter()
                    .filter_map(|l| after_marker(l, protocol::ERROR))
                    .collect();
                let error = if errors.is_empty() {
                    "no error message".to_string()
                } else {
                    errors.join("; ")
                };
                reasons.push(format!("exit {rc}: {error}"));
            }
            Some(Err(_)) => reasons.push(format!(
                "garbled VMTEST-EXIT line: {:?}",
                exit.unwrap_or_default()
            )),
        }
    }
    let problems = kernel_problems(&lines);
    if !problems.is_empty() {
        let shown: Vec<String> = problems
            .iter()
            .take(10)
            .map(|l| format!("\n    {l}"))
            .collect();
        let more = if problems.len() > 10 {
            format!("\n    ... {} more", problems.len() - 10)
        } else {
            String::new()
        };
        reasons.push(format!(
            "kernel log reports problems:{}{more}",
            shown.concat()
        ));
    }
    if reasons.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(reasons.join("; "))
    }
}

/// Kernel log lines matching KERNEL_PROBLEMS: from the dmesg dump if the guest got that
/// far, else from the whole console.
fn kernel_problems<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let begin = lines.iter().position(|l| l.contains(protocol::DMESG_BEGIN));
    let section = match begin {
        Some(b) => {
            let rest = &lines[b + 1..];
            let end = rest
                .iter()
                .position(|l| l.contains(protocol::DMESG_END))
                .unwrap_or(rest.len());
            &rest[..end]
        }
        None => lines,
    };
    section
        .iter()
        .copied()
        .filter(|l| KERNEL_PROBLEMS.iter().any(|p| l.contains(p)))
        .filter(|l| !KERNEL_BENIGN.iter().any(|b| l.contains(b)))
        .collect()
}

fn tail(lines: &[&str], n: usize) -> String {
    let lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("\n    {l}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(180);

    fn console(exit: &str, dmesg: &[&str]) -> String {
        let mut s =
            String::from("[    0.000000] Linux version 7.3.4\nVMTEST-START x\nsome output\n");
        s += exit;
        s += "VMTEST-DMESG-BEGIN\n";
        for l in dmesg {
            s += l;
            s += "\n";
        }
        s += "VMTEST-DMESG-END\n[    3.000000] reboot: Power down\n";
        s
    }

    #[test]
    fn clean_run_passes() {
        let c = console(
            "VMTEST-EXIT 0\n",
            &[
                "[    0.1] Lock dependency validator",
                "[    0.2] ... MAX_LOCKDEP_KEYS: 8192",
                "[    0.000000] rcu: \tRCU lockdep checking is enabled.",
            ],
        );
        assert_eq!(judge(&c, false, T), Verdict::Pass);
    }

    #[test]
    fn lockdep_frames_in_an_oom_report_pass() {
        let c = console(
            "VMTEST-EXIT 0\n",
            &[
                "[  886.289926] vm-tests invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
                "[  886.290415]  ? lockdep_assert_rq_held+0x12/0x19",
                "[  886.290508]  ? find_held_lock+0x2b/0x6d",
            ],
        );
        assert_eq!(judge(&c, false, T), Verdict::Pass);
        let c = console("VMTEST-EXIT 0\n", &["[    2.0] DEBUG_LOCKS_WARN_ON(1)"]);
        assert!(matches!(judge(&c, false, T), Verdict::Fail(_)));
    }

    #[test]
    fn scenario_error_is_reported() {
        let c = console(
            "VMTEST-ERROR hog 12 ended by exit code 0 instead of SIGKILL\nVMTEST-EXIT 1\n",
            &[],
        );
        assert_eq!(
            judge(&c, false, T),
            Verdict::Fail("exit 1: hog 12 ended by exit code 0 instead of SIGKILL".into())
        );
    }

    #[test]
    fn kernel_warning_fails_a_passing_scenario() {
        let c = console(
            "VMTEST-EXIT 0\n",
            &[
                "[    1.0] ok",
                "[    2.0] WARNING: CPU: 1 PID: 7 at mm/oom_kill.c:100 f+0x1/0x2",
                "[    2.1] INFO: lockdep is turned off.",
            ],
        );
        let Verdict::Fail(reason) = judge(&c, false, T) else {
            panic!("passed")
        };
        assert!(
            reason.contains("mm/oom_kill.c:100") && reason.contains("lockdep is turned off"),
            "{reason}"
        );
    }

    #[test]
    fn problems_outside_dmesg_dump_are_scenario_output() {
        let c = console("the scenario printed BUG: on purpose\nVMTEST-EXIT 0\n", &[]);
        assert_eq!(judge(&c, false, T), Verdict::Pass);
    }

    #[test]
    fn dead_guest_and_timeout() {
        let c = "[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n";
        let Verdict::Fail(reason) = judge(c, false, T) else {
            panic!("passed")
        };
        assert!(
            reason.starts_with("guest died while booting") && reason.contains("Kernel panic"),
            "{reason}"
        );
        let Verdict::Fail(reason) = judge("VMTEST-START x\n", true, T) else {
            panic!("passed")
        };
        assert!(reason.starts_with("timeout after 180 s"), "{reason}");
    }

    #[test]
    fn markers_after_kernel_text() {
        assert_eq!(
            after_marker("[ 3.1] foo VMTEST-STORY the db lives\r", protocol::STORY),
            Some("the db lives\r".trim_end())
        );
        assert_eq!(
            after_marker("VMTEST-JSON {\"a\":1}", protocol::JSON),
            Some("{\"a\":1}")
        );
        assert_eq!(after_marker("nothing", protocol::JSON), None);
    }
}
