//! Child processes: started inside a cgroup, and how they ended.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result};

use super::Cgroup;

/// Spawns `cmd` inside `cgroup` (moved there between fork and exec, so nothing it does is
/// charged elsewhere), with its oom_score_adj set to `adj` when given (children of the
/// runner otherwise inherit its -1000).
pub fn spawn_in(cgroup: &Cgroup, cmd: &mut Command, adj: Option<i32>) -> Result<Child> {
    let procs_path = cgroup.dir().join("cgroup.procs");
    let procs: OwnedFd = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(&procs_path)
        .with_context(|| format!("opening {}", procs_path.display()))?
        .into();
    let fd = procs.as_raw_fd();
    let adj_text = adj.map(|a| a.to_string().into_bytes());
    let adj_path = CString::new("/proc/self/oom_score_adj").unwrap();
    // SAFETY: only open(2), write(2) and close(2) on memory prepared before fork:
    // async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let zero = b"0";
            if nix::libc::write(fd, zero.as_ptr().cast(), zero.len()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(text) = &adj_text {
                let f = nix::libc::open(adj_path.as_ptr(), nix::libc::O_WRONLY);
                if f < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let rc = nix::libc::write(f, text.as_ptr().cast(), text.len());
                nix::libc::close(f);
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?} in {}", cgroup.path()))?;
    drop(procs);
    Ok(child)
}

/// A `busybox sleep` in `cgroup` with oom_score_adj 0: a small process of its own (own
/// memory map), killable like any other. Reap it once killed, or it stays a zombie.
pub fn spawn_sleep(cgroup: &Cgroup) -> Result<Child> {
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(["sleep", "1000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_in(cgroup, &mut cmd, Some(0))
}

/// "exit code 3", "signal 9 (SIGKILL)".
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(sig) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        None => format!("{status}"),
    }
}
