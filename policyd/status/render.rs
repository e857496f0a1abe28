//! How `policyd status` shows what [`super::discover`] found: text for
//! people, JSON for tools.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::discover::Handler;

/// "42 s", "5 min 3 s", "2 h 5 min", "3 d 4 h".
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

/// The JSON form: an array of handlers.
pub fn json(handlers: &[Handler]) -> Result<String> {
    serde_json::to_string_pretty(handlers).context("encoding JSON")
}

/// The text form. `now` (seconds since the epoch) dates the owners.
pub fn text(handlers: &[Handler], now: u64) -> String {
    let mut out = String::new();
    if handlers.is_empty() {
        out.push_str("no BPF OOM handlers attached\n");
        return out;
    }
    for (i, h) in handlers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let scope = if h.system_wide {
            format!("{} (system-wide)", h.cgroup)
        } else {
            h.cgroup.clone()
        };
        let _ = writeln!(out, "{scope}: handler {}", h.name);
        let policy = match (&h.policy, h.dry_run) {
            (Some(p), Some(true)) => {
                format!("{p}, dry run (decides and logs; the kernel's killer kills)")
            }
            (Some(p), _) => format!("{p}, enforcing"),
            (None, _) => "- (not loaded by policyd)".to_owned(),
        };
        let _ = writeln!(out, "  policy:   {policy}");
        if h.owners.is_empty() {
            let _ = writeln!(out, "  owner:    no process holds the link (pinned?)");
        }
        for o in &h.owners {
            let since = match (&o.since, o.since_unix) {
                (Some(stamp), Some(s)) => format!(
                    ", since {stamp} ({} ago)",
                    duration_text(now.saturating_sub(s))
                ),
                _ => String::new(),
            };
            let _ = writeln!(out, "  owner:    pid {} ({}){since}", o.pid, o.comm);
        }
        let progs: Vec<String> = h.prog_ids.iter().map(u32::to_string).collect();
        let verified = h
            .verified_insns
            .map(|n| format!(" ({n} instructions verified)"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  link:     id {}, struct_ops map {}, program {}{verified}, cgroup id {}",
            h.link_id,
            h.map_id,
            if progs.is_empty() {
                "-".to_owned()
            } else {
                progs.join(",")
            },
            h.cgroup_id
        );
        match &h.counters {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "  counters: {} OOMs: {} killed, {} awaited, {} deferred, {} dry runs, {} \
                     kill failures, {} events dropped",
                    c.ooms,
                    c.kills,
                    c.awaited,
                    c.deferred,
                    c.dry_runs,
                    c.kill_failures,
                    c.events_dropped
                );
                let _ = writeln!(
                    out,
                    "  handler:  mean {} µs, max {} µs",
                    c.handler_mean_us, c.handler_max_us
                );
            }
            None => {
                let _ = writeln!(out, "  counters: n/a");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::PolicydStats;
    use crate::status::discover::{rfc3339, Counters, Owner};

    #[test]
    fn formats_durations() {
        assert_eq!(duration_text(42), "42 s");
        assert_eq!(duration_text(303), "5 min 3 s");
        assert_eq!(duration_text(7500), "2 h 5 min");
        assert_eq!(duration_text(3 * 86_400 + 4 * 3600 + 5), "3 d 4 h");
    }

    fn handler() -> Handler {
        Handler {
            link_id: 7,
            map_id: 42,
            name: "policyd_priority".into(),
            policy: Some("priority".into()),
            cgroup_id: 1,
            cgroup: "/".into(),
            system_wide: true,
            prog_ids: vec![40],
            verified_insns: Some(4755),
            dry_run: Some(false),
            owners: vec![Owner {
                pid: 4242,
                comm: "policyd".into(),
                since: Some(rfc3339(1_795_682_412)),
                since_unix: Some(1_795_682_412),
            }],
            counters: Some(Counters::from(&PolicydStats {
                ooms: 3,
                kills: 4,
                awaited: 1,
                deferred: 1,
                dry_runs: 0,
                kill_failures: 0,
                events_dropped: 0,
                handler_ns_total: 123_000,
                handler_ns_max: 80_250,
            })),
            raw: None,
        }
    }

    #[test]
    fn renders_text() {
        let other = Handler {
            link_id: 9,
            map_id: 50,
            name: "vm-tests".into(),
            policy: None,
            cgroup_id: 4711,
            cgroup: "/demo".into(),
            system_wide: false,
            prog_ids: vec![51],
            verified_insns: None,
            dry_run: None,
            owners: vec![],
            counters: None,
            raw: None,
        };
        let text = text(&[handler(), other], 1_795_682_412 + 95);
        assert_eq!(
            text,
            "/ (system-wide): handler policyd_priority\n\
             \x20 policy:   priority, enforcing\n\
             \x20 owner:    pid 4242 (policyd), since 2026-11-26T08:40:12Z (1 min 35 s ago)\n\
             \x20 link:     id 7, struct_ops map 42, program 40 (4755 instructions verified), \
             cgroup id 1\n\
             \x20 counters: 3 OOMs: 4 killed, 1 awaited, 1 deferred, 0 dry runs, 0 kill \
             failures, 0 events dropped\n\
             \x20 handler:  mean 41 µs, max 80.3 µs\n\
             \n\
             /demo: handler vm-tests\n\
             \x20 policy:   - (not loaded by policyd)\n\
             \x20 owner:    no process holds the link (pinned?)\n\
             \x20 link:     id 9, struct_ops map 50, program 51, cgroup id 4711\n\
             \x20 counters: n/a\n"
        );
        assert_eq!(super::text(&[], 0), "no BPF OOM handlers attached\n");
    }

    #[test]
    fn renders_json() {
        let json: serde_json::Value = serde_json::from_str(&json(&[handler()]).unwrap()).unwrap();
        assert_eq!(json[0]["cgroup"], "/");
        assert_eq!(json[0]["system_wide"], true);
        assert_eq!(json[0]["policy"], "priority");
        assert_eq!(json[0]["owners"][0]["pid"], 4242);
        assert_eq!(json[0]["owners"][0]["since"], "2026-11-26T08:40:12Z");
        assert_eq!(json[0]["counters"]["ooms"], 3);
        assert_eq!(json[0]["verified_insns"], 4755);
        assert_eq!(json[0]["counters"]["handler_mean_us"], 41.0);
        assert_eq!(json[0]["counters"]["handler_max_us"], 80.3);
    }
}
