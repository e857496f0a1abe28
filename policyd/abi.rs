//! Rust mirrors of the types policyd shares with its BPF policies
//! (`bpf/policies/policyd.h`), and a check of their layout against a policy
//! object's BTF.
//!
//! [`check_layout`] runs when a policy is loaded (a mismatch refuses to load)
//! and in the host tests against every compiled policy, so the C header and
//! these structs cannot drift apart unnoticed.

use std::fmt;
use std::mem::{offset_of, size_of};

use libbpf_rs::btf::types::{MemberAttr, Struct};
use libbpf_rs::btf::BtfType;
use libbpf_rs::{Btf, HasSize};

use crate::policy::PolicyName;

/// `POLICYD_MAX_CGROUPS`: entries of the rules map.
pub const MAX_CGROUPS: u32 = 65536;
/// `POLICYD_DEFAULTS_KEY`: the rules map key of the defaults entry.
pub const DEFAULTS_KEY: u64 = 0;
/// `POLICYD_USAGE_SHIFT`: candidates' usage is compared in units of
/// `1 << USAGE_SHIFT` bytes (1 MiB).
pub const USAGE_SHIFT: u32 = 20;
/// `POLICYD_EVENT_CANDIDATES`: ranked candidates per event.
pub const EVENT_CANDIDATES: usize = 4;

/// `enum policyd_kill`.
pub const KILL_TASK: u8 = 0;
pub const KILL_CGROUP: u8 = 1;

/// `struct policyd_rule`: the rules map value, keyed by cgroup id.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicydRule {
    pub priority: u32,
    pub protect: u8,
    /// `KILL_TASK` or `KILL_CGROUP`.
    pub kill: u8,
    pub pad: [u8; 2],
}

/// `struct policyd_candidate`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicydCandidate {
    pub cgroup_id: u64,
    /// Bytes charged to the cgroup's memcg.
    pub usage: u64,
    pub priority: u32,
    /// `KILL_TASK` or `KILL_CGROUP`.
    pub kill: u8,
    pub pad: [u8; 3],
}

/// `struct policyd_event`: one per OOM, through the `events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicydEvent {
    /// CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
    pub handler_ns: u64,
    /// The OOMing memcg's cgroup; 0: global OOM.
    pub oom_cgroup_id: u64,
    /// 0: none.
    pub victim_cgroup_id: u64,
    pub victim_usage: u64,
    /// Bytes, of `victim_pid`.
    pub victim_task_rss: u64,
    /// 0: none.
    pub victim_pid: u32,
    pub victim_priority: u32,
    pub tasks_killed: u32,
    /// Eligible cgroups (tasks for `badness`) seen.
    pub candidates: u32,
    /// Last error of `bpf_oom_kill_process()` (negative errno).
    pub kill_err: i32,
    /// Candidates looked into, the victim's included.
    pub tried: u32,
    /// Candidates before the victim passed over: only unkillable tasks,
    pub passed_unkillable: u32,
    /// only exiting tasks,
    pub passed_exiting: u32,
    /// emptied or removed since ranked,
    pub passed_empty: u32,
    /// every kill refused by the kernel.
    pub passed_refused: u32,
    /// Eligible cgroups beyond `MAX_CGROUPS`, never considered.
    pub over_cap: u32,
    /// [`PolicyName::abi`] of the policy.
    pub policy: u8,
    pub scope_global: u8,
    /// [`Reason`] as a number.
    pub reason: u8,
    /// [`Outcome`] as a number.
    pub outcome: u8,
    pub victim_comm: [u8; 16],
    /// The candidate ranked right after the victim; cgroup id 0: none.
    pub runner_up: PolicydCandidate,
    /// The best-ranked candidates, best first (a report: the victim is not
    /// among them when more candidates than these were passed over).
    pub ranked: [PolicydCandidate; EVENT_CANDIDATES],
}

/// `struct policyd_stats`: counters in each policy's `.bss` (variable `stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicydStats {
    pub ooms: u64,
    /// Tasks killed.
    pub kills: u64,
    pub awaited: u64,
    pub deferred: u64,
    pub dry_runs: u64,
    pub kill_failures: u64,
    /// Events lost because the ring buffer was full.
    pub events_dropped: u64,
    pub handler_ns_total: u64,
    pub handler_ns_max: u64,
}

/// Plain data shared with BPF: any bit pattern is a valid value and there is
/// no implicit padding.
///
/// # Safety
/// Only for `#[repr(C)]` structs of integers and arrays of them, without
/// padding bytes.
pub unsafe trait Pod: Copy + Default {
    /// A value from the first `size_of::<Self>()` bytes, or `None` if
    /// `bytes` is shorter.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<Self>() {
            return None;
        }
        // SAFETY: length checked; any bit pattern is valid (trait contract);
        // read_unaligned copes with the ring buffer's 8-byte alignment.
        Some(unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() })
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: no padding (trait contract), so every byte is initialised.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

// SAFETY: repr(C), integer fields only, explicit padding (checked against
// BTF, which has no hidden holes for these, by the layout test).
unsafe impl Pod for PolicydRule {}
unsafe impl Pod for PolicydCandidate {}
unsafe impl Pod for PolicydEvent {}
unsafe impl Pod for PolicydStats {}

/// `enum policyd_reason`: why the victim was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    LowestPriority,
    LargerUsage,
    LargestUsage,
    Badness,
    VictimExiting,
    NoCandidate,
    ObserveOnly,
    Unknown(u8),
}

impl From<u8> for Reason {
    fn from(v: u8) -> Self {
        match v {
            0 => Reason::None,
            1 => Reason::LowestPriority,
            2 => Reason::LargerUsage,
            3 => Reason::LargestUsage,
            4 => Reason::Badness,
            5 => Reason::VictimExiting,
            6 => Reason::NoCandidate,
            7 => Reason::ObserveOnly,
            v => Reason::Unknown(v),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::None => "none",
            Reason::LowestPriority => "lowest-priority",
            Reason::LargerUsage => "larger-usage",
            Reason::LargestUsage => "largest-usage",
            Reason::Badness => "badness",
            Reason::VictimExiting => "victim-exiting",
            Reason::NoCandidate => "no-candidate",
            Reason::ObserveOnly => "observe-only",
            Reason::Unknown(v) => return write!(f, "reason#{v}"),
        })
    }
}

/// `enum policyd_outcome`: what the handler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Killed; the OOM is handled.
    Killed,
    /// An earlier victim is still exiting: memory is on its way.
    Awaited,
    /// Left to the kernel's own killer.
    Deferred,
    /// Decided, but the kill was left to the kernel (`--dry-run`).
    DryRun,
    /// Every kill attempt failed; deferred to the kernel.
    KillFailed,
    Unknown(u8),
}

impl From<u8> for Outcome {
    fn from(v: u8) -> Self {
        match v {
            0 => Outcome::Killed,
            1 => Outcome::Awaited,
            2 => Outcome::Deferred,
            3 => Outcome::DryRun,
            4 => Outcome::KillFailed,
            v => Outcome::Unknown(v),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Killed => "killed",
            Outcome::Awaited => "awaited",
            Outcome::Deferred => "deferred",
            Outcome::DryRun => "dry-run",
            Outcome::KillFailed => "kill-failed",
            Outcome::Unknown(v) => return write!(f, "outcome#{v}"),
        })
    }
}

impl PolicydEvent {
    /// The policy, or its number if this policyd does not know it.
    pub fn policy(&self) -> Result<PolicyName, u8> {
        PolicyName::from_abi(self.policy).ok_or(self.policy)
    }
    pub fn reason(&self) -> Reason {
        self.reason.into()
    }
    pub fn outcome(&self) -> Outcome {
        self.outcome.into()
    }
    /// `victim_comm` up to its NUL.
    pub fn comm(&self) -> String {
        let end = self.victim_comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.victim_comm[..end]).into_owned()
    }
    /// The ranked candidates actually filled in (cgroup id 0 ends the list).
    pub fn ranked(&self) -> impl Iterator<Item = &PolicydCandidate> {
        self.ranked.iter().take_while(|c| c.cgroup_id != 0)
    }
}

/// Name, size and member offsets of a Rust mirror, as the C side must have them.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: &'static str,
    pub size: usize,
    pub members: Vec<(&'static str, usize)>,
}

macro_rules! layout {
    ($rust:ty, $c:literal, [$($field:ident),* $(,)?]) => {
        Layout {
            name: $c,
            size: size_of::<$rust>(),
            members: vec![$((stringify!($field), offset_of!($rust, $field))),*],
        }
    };
}

/// The layouts of every shared struct.
pub fn layouts() -> Vec<Layout> {
    vec![
        layout!(PolicydRule, "policyd_rule", [priority, protect, kill, pad]),
        layout!(
            PolicydCandidate,
            "policyd_candidate",
            [cgroup_id, usage, priority, kill, pad]
        ),
        layout!(
            PolicydEvent,
            "policyd_event",
            [
                timestamp_ns,
                handler_ns,
                oom_cgroup_id,
                victim_cgroup_id,
                victim_usage,
                victim_task_rss,
                victim_pid,
                victim_priority,
                tasks_killed,
                candidates,
                kill_err,
                tried,
                passed_unkillable,
                passed_exiting,
                passed_empty,
                passed_refused,
                over_cap,
                policy,
                scope_global,
                reason,
                outcome,
                victim_comm,
                runner_up,
                ranked,
            ]
        ),
        layout!(
            PolicydStats,
            "policyd_stats",
            [
                ooms,
                kills,
                awaited,
                deferred,
                dry_runs,
                kill_failures,
                events_dropped,
                handler_ns_total,
                handler_ns_max,
            ]
        ),
    ]
}

/// The complete (not forward-declared) struct `name` in `btf`.
pub fn find_struct<'b>(btf: &'b Btf<'_>, name: &str) -> Option<Struct<'b>> {
    btf.type_by_kind::<Struct<'b>>()
        .find(|s| s.name().is_some_and(|n| n == name))
}

/// Differences between one layout and its C struct in `btf`.
fn compare(btf: &Btf<'_>, layout: &Layout) -> Vec<String> {
    let Some(st) = find_struct(btf, layout.name) else {
        return vec![format!(
            "struct {} is not (completely) described in the object's BTF",
            layout.name
        )];
    };
    let mut problems = Vec::new();
    if st.size() != layout.size {
        problems.push(format!(
            "struct {}: {} bytes in C, {} in policyd",
            layout.name,
            st.size(),
            layout.size
        ));
    }
    let c_members: Vec<(String, Option<u32>)> = st
        .iter()
        .map(|m| {
            let name = m
                .name
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let offset = match m.attr {
                MemberAttr::Normal { offset } if offset % 8 == 0 => Some(offset / 8),
                _ => None,
            };
            (name, offset)
        })
        .collect();
    for (name, offset) in &c_members {
        match layout.members.iter().find(|(n, _)| n == name) {
            None => problems.push(format!(
                "struct {}: member {name} exists in C but not in policyd",
                layout.name
            )),
            Some(&(_, rust)) if *offset != Some(rust as u32) => problems.push(format!(
                "struct {}: member {name} at byte {} in C, {rust} in policyd",
                layout.name,
                offset.map_or("?(bitfield)".to_owned(), |o| o.to_string())
            )),
            Some(_) => {}
        }
    }
    for (name, _) in &layout.members {
        if !c_members.iter().any(|(n, _)| n == name) {
            problems.push(format!(
                "struct {}: member {name} exists in policyd but not in C",
                layout.name
            ));
        }
    }
    problems
}

/// Check every shared struct against a policy object's BTF. The error lists
/// every difference.
pub fn check_layout(btf: &Btf<'_>) -> Result<(), Vec<String>> {
    let problems: Vec<String> = layouts().iter().flat_map(|l| compare(btf, l)).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Offset and type name of the global variable `var` in the data section
/// `datasec` (".bss", ".rodata", ...) of `btf`.
pub fn datasec_var(btf: &Btf<'_>, datasec_type: BtfType<'_>, var: &str) -> Option<(u32, String)> {
    use libbpf_rs::btf::types::{DataSec, Var};
    use libbpf_rs::ReferencesType;
    let sec = DataSec::try_from(datasec_type).ok()?;
    (0..sec.len()).filter_map(|i| sec.get(i)).find_map(|info| {
        let v: Var<'_> = btf.type_by_id(info.ty)?;
        if v.name()? != var {
            return None;
        }
        let ty: BtfType<'_> = btf.type_by_id(v.referenced_type_id())?;
        let ty = ty.skip_mods_and_typedefs();
        let tname = ty
            .name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some((info.offset, tname))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_header() {
        // The numbers policyd.h implies on x86_64 (checked against BTF below).
        assert_eq!(size_of::<PolicydRule>(), 8);
        assert_eq!(size_of::<PolicydCandidate>(), 24);
        assert_eq!(size_of::<PolicydEvent>(), 232);
        assert_eq!(size_of::<PolicydStats>(), 72);
    }

    #[test]
    fn round_trips_bytes() {
        let rule = PolicydRule {
            priority: 10,
            protect: 1,
            kill: KILL_CGROUP,
            pad: [0; 2],
        };
        assert_eq!(rule.as_bytes(), &[10, 0, 0, 0, 1, 1, 0, 0]);
        assert_eq!(PolicydRule::from_bytes(rule.as_bytes()), Some(rule));
        assert_eq!(PolicydRule::from_bytes(&[0; 7]), None);

        let mut ev = PolicydEvent {
            victim_pid: 42,
            outcome: 3,
            ..Default::default()
        };
        ev.victim_comm[..4].copy_from_slice(b"job2");
        // Ring buffer records are longer than the struct only by alignment.
        let mut bytes = ev.as_bytes().to_vec();
        bytes.extend_from_slice(&[0xff; 8]);
        let back = PolicydEvent::from_bytes(&bytes[..]).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.comm(), "job2");
        assert_eq!(back.outcome(), Outcome::DryRun);
        assert_eq!(back.ranked().count(), 0);
    }

    #[test]
    fn enums_name_unknown_values() {
        assert_eq!(Outcome::from(9).to_string(), "outcome#9");
        assert_eq!(Reason::from(1).to_string(), "lowest-priority");
        let ev = PolicydEvent {
            policy: 3,
            ..Default::default()
        };
        assert_eq!(ev.policy(), Ok(PolicyName::Observe));
        let ev = PolicydEvent {
            policy: 9,
            ..Default::default()
        };
        assert_eq!(ev.policy(), Err(9));
    }

    /// The compiled BPF object agrees with the Rust mirrors.
    #[test]
    fn layout_matches_the_bpf_object() {
        let path = std::path::Path::new(env!("OUT_DIR")).join("policyd.bpf.o");
        let btf = Btf::from_path(&path).unwrap();
        if let Err(problems) = check_layout(&btf) {
            panic!("{}:\n  {}", path.display(), problems.join("\n  "));
        }
        // `stats` is where `policyd status` reads it: in .bss.
        let bss = btf
            .type_by_kind::<libbpf_rs::btf::types::DataSec<'_>>()
            .find(|s| s.name().is_some_and(|n| n == ".bss"))
            .expect(".bss");
        let (_, tname) = datasec_var(&btf, *bss, "stats").expect("stats in .bss");
        assert_eq!(tname, "policyd_stats");
    }

    #[test]
    fn layout_check_reports_differences() {
        // A struct the policies lack altogether is named.
        let obj = std::path::Path::new(env!("OUT_DIR")).join("policyd.bpf.o");
        let btf = Btf::from_path(&obj).unwrap();
        let bogus = Layout {
            name: "policyd_stats",
            size: 80,
            members: vec![("ooms", 0), ("kills", 16), ("extra", 72)],
        };
        let problems = compare(&btf, &bogus);
        let text = problems.join("\n");
        assert!(text.contains("72 bytes in C, 80 in policyd"), "{text}");
        assert!(
            text.contains("member kills at byte 8 in C, 16 in policyd"),
            "{text}"
        );
        assert!(
            text.contains("member awaited exists in C but not in policyd"),
            "{text}"
        );
        assert!(
            text.contains("member extra exists in policyd but not in C"),
            "{text}"
        );
        let missing = Layout {
            name: "no_such_struct",
            size: 1,
            members: vec![],
        };
        assert!(compare(&btf, &missing)[0].contains("not (completely) described"));
    }
}
