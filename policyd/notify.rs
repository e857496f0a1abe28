//! Telling the service manager how `policyd load` is doing (sd_notify(3)),
//! for a `Type=notify` unit: `READY=1` only once the handler is attached (so
//! that `systemctl start` returns when the machine is protected, and units
//! ordered after policyd start protected), `RELOADING=1` then `READY=1`
//! around a SIGHUP reload, `STOPPING=1` before detaching, and `STATUS=` with
//! what is attached.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//! The watchdog is pinged only when the unit sets `WatchdogSec=` (systemd
//! passes `WATCHDOG_USEC`): otherwise nothing here ever wakes policyd up.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::policy::PolicyName;

/// The service manager's end of `policyd load`.
#[derive(Debug)]
pub struct Notifier {
    /// How often to ping the watchdog: half its timeout, as sd_watchdog_enabled(3)
    /// recommends. `None`: no watchdog.
    watchdog: Option<Duration>,
    last_ping: Instant,
}

/// `STATUS=` while attached: what `systemctl status policyd` shows.
pub fn status_text(policy: PolicyName, rules: usize, cgroups: usize, cgroup: &str) -> String {
    let scope = if cgroup == "/" {
        "system-wide".to_owned()
    } else {
        format!("on {cgroup}")
    };
    let rules_word = if rules == 1 { "rule" } else { "rules" };
    format!("policy {policy} attached {scope}: {rules} {rules_word}, {cgroups} cgroups")
}

impl Notifier {
    /// What the environment systemd set up asks for.
    pub fn from_env() -> Notifier {
        Notifier {
            watchdog: sd_notify::watchdog_enabled().map(|t| t / 2),
            last_ping: Instant::now(),
        }
    }

    /// The handler is attached: startup (or a reload) is finished.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.last_ping = Instant::now();
    }

    /// A reload starts. systemd matches `MONOTONIC_USEC` against the time
    /// it asked for the reload, so that it waits for this reload's `READY=1`
    /// and not an earlier one's.
    pub fn reloading(&mut self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading the configuration"),
            ]),
            Err(e) => {
                tracing::warn!("cannot read CLOCK_MONOTONIC for systemd's reload notice: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// policyd is about to detach and exit.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("detaching")]);
    }

    /// How long the poll loop may sleep before the watchdog needs a ping
    /// (`None`: no watchdog, sleep as long as nothing happens).
    pub fn next_ping_in(&self) -> Option<Duration> {
        self.watchdog
            .map(|every| every.saturating_sub(self.last_ping.elapsed()))
    }

    /// Ping the watchdog if it is due. Called after every wake-up of the
    /// loop: the loop is alive, which is what the watchdog checks.
    pub fn ping_if_due(&mut self) {
        if self.next_ping_in() == Some(Duration::ZERO) {
            self.send(&[NotifyState::Watchdog]);
            self.last_ping = Instant::now();
        }
    }

    fn send(&self, states: &[NotifyState]) {
        // The socket vanishing (systemd re-executing) or a full queue must not
        // take the OOM policy down with it: say so and carry on.
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_what_is_attached_where() {
        assert_eq!(
            status_text(PolicyName::Priority, 12, 340, "/"),
            "policy priority attached system-wide: 12 rules, 340 cgroups"
        );
        assert_eq!(
            status_text(PolicyName::Largest, 1, 3, "/demo"),
            "policy largest attached on /demo: 1 rule, 3 cgroups"
        );
    }

    /// Held by the tests that notify: one of them sets NOTIFY_SOCKET for a while.
    static NOTIFY_ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// What a service manager listening on NOTIFY_SOCKET receives from `f`.
    fn notifications(mut n: Notifier, f: impl FnOnce(&mut Notifier)) -> Vec<String> {
        use std::os::unix::net::UnixDatagram;
        let _env = NOTIFY_ENV.lock().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        // The only test in this binary that sets the variable (std's own env lock keeps
        // the other tests' threads safe).
        std::env::set_var("NOTIFY_SOCKET", &path);
        f(&mut n);
        std::env::remove_var("NOTIFY_SOCKET");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(len) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        out
    }

    #[test]
    fn ready_reload_and_stop_as_systemd_reads_them() {
        let n = Notifier {
            watchdog: None,
            last_ping: Instant::now(),
        };
        let got = notifications(n, |n| {
            n.ready("policy priority attached system-wide: 2 rules, 5 cgroups");
            n.reloading();
            n.ready("policy priority attached system-wide: 3 rules, 5 cgroups");
            n.stopping();
        });
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(
            got[0],
            "READY=1\nSTATUS=policy priority attached system-wide: 2 rules, 5 cgroups\n"
        );
        // RELOADING=1 with the time it started, on CLOCK_MONOTONIC in microseconds.
        let lines: Vec<&str> = got[1].lines().collect();
        assert_eq!(lines[0], "RELOADING=1", "{got:?}");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC after RELOADING=1: {got:?}"));
        let Ok(NotifyState::MonotonicUsec(now_usec)) = NotifyState::monotonic_usec_now() else {
            panic!("no CLOCK_MONOTONIC");
        };
        let now_usec = u64::try_from(now_usec).unwrap();
        assert!(
            usec <= now_usec && now_usec - usec < 10_000_000,
            "{usec} vs {now_usec}"
        );
        assert_eq!(lines[2], "STATUS=reloading the configuration");
        assert!(got[2].starts_with("READY=1\nSTATUS=policy priority attached system-wide: 3"));
        assert_eq!(got[3], "STOPPING=1\nSTATUS=detaching\n");
    }

    #[test]
    fn without_a_watchdog_the_loop_is_never_woken() {
        let n = Notifier {
            watchdog: None,
            last_ping: Instant::now(),
        };
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(n.next_ping_in(), None);
    }

    #[test]
    fn the_watchdog_is_pinged_when_due_only() {
        let n = Notifier {
            watchdog: Some(Duration::from_millis(50)),
            last_ping: Instant::now(),
        };
        let got = notifications(n, |n| {
            n.ping_if_due();
            let left = n.next_ping_in().unwrap();
            assert!(left > Duration::from_millis(25), "{left:?}");
            std::thread::sleep(Duration::from_millis(60));
            assert_eq!(n.next_ping_in(), Some(Duration::ZERO));
            n.ping_if_due();
            assert!(n.next_ping_in().unwrap() > Duration::from_millis(25));
        });
        assert_eq!(got, ["WATCHDOG=1\n"]);
    }
}
