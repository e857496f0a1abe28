//! The kernel log (/dev/kmsg): what was logged since a mark, and the OOM kills in it.

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::poll;

/// A position in the kernel log; [`Kmsg::since`] returns what was logged after it:
/// `let mut kmsg = Kmsg::mark()?; ...; let lines = kmsg.since()?;`
pub struct Kmsg {
    file: fs::File,
}

impl Kmsg {
    /// Marks the current end of the kernel log.
    pub fn mark() -> Result<Kmsg> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("opening /dev/kmsg")?;
        file.seek(SeekFrom::End(0)).context("seeking /dev/kmsg")?;
        Ok(Kmsg { file })
    }

    /// The messages (text only) logged since the mark or the previous call.
    pub fn since(&mut self) -> Result<Vec<String>> {
        Ok(self.records()?.into_iter().map(|r| r.text).collect())
    }

    /// Waits up to `timeout` for a message that satisfies `pred`, logged since the mark
    /// or the previous call, and returns it; the messages read on the way are consumed.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        poll(timeout, &format!("{what} in the kernel log"), || {
            Ok(self.since()?.into_iter().find(|l| pred(l)))
        })
    }

    /// The records logged since the mark or the previous call, with their timestamps.
    pub fn records(&mut self) -> Result<Vec<KmsgRecord>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                // One record per read: "prio,seq,usec,flags;text\n" plus " KEY=value" lines.
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let first = rec.lines().next().unwrap_or("");
                    if let Some((head, text)) = first.split_once(';') {
                        let usec = head.split(',').nth(2).and_then(|u| u.parse().ok());
                        out.push(KmsgRecord {
                            usec: usec.unwrap_or(0),
                            text: text.to_string(),
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten before we read them; carry on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
                Err(e) => return Err(e).context("reading /dev/kmsg"),
            }
        }
        Ok(out)
    }
}

/// The kernel log since `kmsg`'s mark, for kill checks.
pub struct KillLog {
    pub lines: Vec<String>,
}

impl KillLog {
    /// Reads on until the log reports the kill of every pid in `victims`: the kernel
    /// writes that line just after the SIGKILL, so a victim other than the allocating
    /// task can be dead and reaped before its line is there.
    pub fn read(kmsg: &mut Kmsg, victims: &[i32]) -> Result<KillLog> {
        let mut log = KillLog { lines: Vec::new() };
        let what = format!("the kernel log to report the kill of {victims:?}");
        let reported = poll(Duration::from_secs(10), &what, || {
            log.lines.extend(kmsg.since()?);
            Ok(victims
                .iter()
                .all(|&pid| log.kill_line(pid).is_some())
                .then_some(()))
        });
        match reported {
            Ok(()) => Ok(log),
            Err(e) => bail!("{e:#}; the kernel log since the mark:\n{}", log.text()),
        }
    }

    /// The pids of every "Killed process N" report, in order.
    pub fn killed_pids(&self) -> Vec<i32> {
        self.lines
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("Killed process ")? + "Killed process ".len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect()
    }

    /// The "...: Killed process N (comm) ..." line of `pid`.
    pub fn kill_line(&self, pid: i32) -> Option<&str> {
        let wanted = format!("Killed process {pid} ");
        self.lines
            .iter()
            .find(|l| l.contains(&wanted))
            .map(String::as_str)
    }

    /// Fails unless `pid` (the `role`) is the one and only task the log reports killed.
    pub fn expect_only_killed(&self, pid: i32, role: &str) -> Result<()> {
        ensure!(
            self.killed_pids() == vec![pid],
            "the kernel log reports kills of {:?}, expected only the {role} {pid}:\n{}",
            self.killed_pids(),
            self.text()
        );
        Ok(())
    }

    /// Fails unless the kernel's own memcg OOM killer killed `pid` (the `role`): its kill
    /// report is the memcg OOM killer's, and no OOM report says a BPF handler chose.
    pub fn expect_kernel_killed(&self, pid: i32, role: &str) -> Result<()> {
        ensure!(
            self.kill_line(pid)
                .is_some_and(|l| l.contains("Memory cgroup out of memory: Killed process")),
            "no \"Memory cgroup out of memory: Killed process {pid}\" (the kernel's own kill \
             of the {role}) in the kernel log:\n{}",
            self.text()
        );
        ensure!(
            !self.bpf_chose_any(),
            "the OOM report says a BPF handler chose the victim, where the kernel's own \
             killer should have:\n{}",
            self.text()
        );
        Ok(())
    }

    /// Whether any OOM report says a BPF OOM handler chose the victim.
    pub fn bpf_chose_any(&self) -> bool {
        self.lines
            .iter()
            .any(|l| l.contains("oom victim chosen by BPF OOM handler"))
    }

    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// One kernel log record: its timestamp (local_clock(), µs since boot) and text.
#[derive(Clone, Debug)]
pub struct KmsgRecord {
    pub usec: u64,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_log_pids() {
        let log = KillLog {
            lines: vec![
                "oom victim chosen by BPF OOM handler \"policyd_priority\"".into(),
                "policyd: Killed process 212 (vm-tests) total-vm:1kB".into(),
                "Memory cgroup out of memory: Killed process 215 (vm-tests) total-vm:1kB".into(),
            ],
        };
        assert_eq!(log.killed_pids(), vec![212, 215]);
        assert!(log.bpf_chose_any());
        assert!(log.kill_line(21).is_none());
        assert!(log.kill_line(215).unwrap().starts_with("Memory cgroup"));
    }
}
