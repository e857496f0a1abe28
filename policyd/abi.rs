//! The types policyd shares with its BPF handler (`bpf/policies/policyd.h`)
//! and its OOM kill tracer (`bpf/trace/kills.h`).
//!
//! Nothing is mirrored here by hand. libbpf-cargo generates Rust for every
//! type in the BTF of `policyd.bpf.o`, the very object [`crate::loader`]
//! embeds, into the skeleton ([`crate::bpf::skel::types`]): each struct as a
//! `#[repr(C)]` struct, each enum as a `u32` newtype with one associated
//! const per enumerator. policyd.bpf.c anchors every enum of the header in
//! its BTF (`policyd_abi`), and the header's constants are the enumerators
//! of `enum policyd_limits`. Both sides come from one build of the header,
//! so they cannot drift apart.
//!
//! This module gives the structs names, byte access ([`Pod`]), equality and
//! helpers that read their fields, and takes the constants and the enum
//! values of [`Reason`] and [`Outcome`] from the generated types, as
//! [`PolicyName::abi`] and [`crate::KillMode::abi`] do for theirs.

use std::fmt;
use std::mem::size_of;

use libbpf_rs::btf::types::Struct;
use libbpf_rs::btf::BtfType;
use libbpf_rs::Btf;

use crate::bpf::kills_skel::types::{
    self as kills_types, kills_constraint, kills_kind, kills_limits,
};
use crate::bpf::skel::types::{self, policyd_limits, policyd_outcome, policyd_reason};
use crate::policy::PolicyName;

/// `POLICYD_MAX_CGROUPS`: entries of the rules map.
pub const MAX_CGROUPS: u32 = policyd_limits::POLICYD_MAX_CGROUPS.0;

/// `POLICYD_RULE_SLOTS`: slots of the rules table ([`crate::rule_table`]).
pub const RULE_SLOTS: usize = policyd_limits::POLICYD_RULE_SLOTS.0 as usize;
/// `POLICYD_RULE_PROBES`: slots the handler looks at for a cgroup's entry.
pub const RULE_PROBES: usize = policyd_limits::POLICYD_RULE_PROBES.0 as usize;

/// `POLICYD_WALK_STEPS`: steps of the handler's walk of the cgroup tree, two
/// per cgroup.
pub const WALK_STEPS: u32 = policyd_limits::POLICYD_WALK_STEPS.0;
/// `POLICYD_DEFAULTS_KEY`: the rules map key of the defaults entry.
pub const DEFAULTS_KEY: u64 = policyd_limits::POLICYD_DEFAULTS_KEY.0 as u64;
/// `POLICYD_USAGE_SHIFT`: candidates' usage is compared in units of
/// `1 << USAGE_SHIFT` bytes (1 MiB).
pub const USAGE_SHIFT: u32 = policyd_limits::POLICYD_USAGE_SHIFT.0;
/// `POLICYD_EVENT_CANDIDATES`: ranked candidates per event.
pub const EVENT_CANDIDATES: usize = policyd_limits::POLICYD_EVENT_CANDIDATES.0 as usize;

/// `POLICYD_DECISION_KEYS`: (victim cgroup, outcome) pairs the `decisions`
/// map counts.
pub const DECISION_KEYS: u32 = policyd_limits::POLICYD_DECISION_KEYS.0;
/// `POLICYD_HANDLER_BUCKETS`: buckets of the handler time histogram.
pub const HANDLER_BUCKETS: usize = policyd_limits::POLICYD_HANDLER_BUCKETS.0 as usize;
/// `POLICYD_HANDLER_BUCKET0_SHIFT`: the first bucket holds runs shorter than
/// `1 << HANDLER_BUCKET0_SHIFT` ns.
pub const HANDLER_BUCKET0_SHIFT: u32 = policyd_limits::POLICYD_HANDLER_BUCKET0_SHIFT.0;

/// `POLICYD_AWAIT_RUN_SEQ_SHIFT`: the handler's `await_run` holds the seq of
/// the event that began a run of awaits above this bit, the run's count of
/// unpublished awaits below it.
pub const AWAIT_RUN_SEQ_SHIFT: u32 = policyd_limits::POLICYD_AWAIT_RUN_SEQ_SHIFT.0;

/// `KILLS_GROWTH_CGROUPS`: cgroups the tracer's `growth` map follows.
pub const GROWTH_CGROUPS: u32 = kills_limits::KILLS_GROWTH_CGROUPS.0;
/// `KILLS_GROWTH_HALF_WINDOW_MS`: how often a cgroup's oldest growth sample
/// moves on.
pub const GROWTH_HALF_WINDOW_MS: u32 = kills_limits::KILLS_GROWTH_HALF_WINDOW_MS.0;

/// `struct policyd_rule`: the rules map value, keyed by cgroup id: a
/// cgroup's settings and, `below_known` set, its template for new cgroups
/// below it ([`crate::resolve::Resolver::below`]). `kill` and `below_kill`
/// hold [`crate::KillMode::abi`] numbers.
pub type PolicydRule = types::policyd_rule;

/// `struct policyd_candidate`: a ranked cgroup; `usage` is the bytes charged
/// to its memcg, `kill` as in [`PolicydRule`].
pub type PolicydCandidate = types::policyd_candidate;

/// `struct policyd_event`: one per OOM, through the `events` ring buffer.
/// policyd.h says what each field means; [`PolicydEvent::policy`],
/// [`reason`](PolicydEvent::reason) and [`outcome`](PolicydEvent::outcome)
/// read its enums, [`comm`](PolicydEvent::comm) and
/// [`ranked`](PolicydEvent::ranked) its arrays.
pub type PolicydEvent = types::policyd_event;

/// `struct policyd_declare`: the context of the `declare_oom` program, with
/// which policyd declares an OOM when a pressure limit held.
pub type PolicydDeclare = types::policyd_declare;

/// `struct policyd_find_rule`: the context of the `find_rule_of` program,
/// with which tests read the entry the handler finds for a cgroup.
pub type PolicydFindRule = types::policyd_find_rule;

/// `struct policyd_serials`: the context of the `cgroup_serials` program,
/// which lists the cgroups of a subtree with their css serial numbers.
pub type PolicydSerials = types::policyd_serials;

/// `struct policyd_serial`: a cgroup's id and css serial number, an element
/// of the `serials` map.
pub type PolicydSerial = types::policyd_serial;

/// `struct policyd_tree_record`: one cgroup of the tree walk
/// ([`crate::tree_walk`]); only its header and name_len bytes of name are sent.
pub type PolicydTreeRecord = types::policyd_tree_record;

/// `struct policyd_stats`: the handler's counters in its `.bss` (variable
/// `stats`).
pub type PolicydStats = types::policyd_stats;

/// `struct policyd_ops_layout`: where the running kernel keeps the handler
/// in a `bpf_oom_ops` map's value, as the object's `find_ops_layout()`
/// found it (variable `ops_layout` in `.bss`).
pub type PolicydOpsLayout = types::policyd_ops_layout;

/// `struct kills_event`: one per task the kernel marks as an OOM victim,
/// through the tracer's `kills` ring buffer. kills.h says what each field
/// means.
pub type KillsEvent = kills_types::kills_event;

/// `struct kills_growth`: a cgroup's usage samples in the tracer's `growth`
/// map, keyed by cgroup id; [`crate::culprit`] reads them.
pub type KillsGrowth = kills_types::kills_growth;

/// `struct policyd_metrics`: the handler time histogram and the decisions
/// the `decisions` map had no room for (variable `metrics` in `.bss`).
pub type PolicydMetrics = types::policyd_metrics;

/// `struct policyd_decision_key`: key of the `decisions` map, whose values
/// count OOM decisions (`u64`) by victim cgroup and outcome.
pub type PolicydDecisionKey = types::policyd_decision_key;

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

/// [`Pod`], and equality, for the shared structs. The skeleton derives no
/// `PartialEq`; with plain integers and no padding, equal bytes are equal
/// fields.
macro_rules! shared_structs {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: libbpf-cargo generates these from the object's BTF as
        // #[repr(C)] structs of integers, integer arrays and each other;
        // `no_padding_in_shared_structs` checks the C side has no holes.
        unsafe impl Pod for $t {}

        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl Eq for $t {}
    )*};
}

shared_structs!(
    PolicydRule,
    PolicydCandidate,
    PolicydEvent,
    PolicydStats,
    PolicydMetrics,
    PolicydDecisionKey,
    PolicydDeclare,
    PolicydFindRule,
    PolicydSerials,
    PolicydSerial,
    PolicydTreeRecord,
    PolicydOpsLayout,
    KillsEvent,
    KillsGrowth,
);

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
    Preference,
    Unknown(u8),
}

impl From<u8> for Reason {
    fn from(v: u8) -> Self {
        match policyd_reason(v.into()) {
            policyd_reason::POLICYD_REASON_NONE => Reason::None,
            policyd_reason::POLICYD_REASON_LOWEST_PRIORITY => Reason::LowestPriority,
            policyd_reason::POLICYD_REASON_LARGER_USAGE => Reason::LargerUsage,
            policyd_reason::POLICYD_REASON_LARGEST_USAGE => Reason::LargestUsage,
            policyd_reason::POLICYD_REASON_BADNESS => Reason::Badness,
            policyd_reason::POLICYD_REASON_VICTIM_EXITING => Reason::VictimExiting,
            policyd_reason::POLICYD_REASON_NO_CANDIDATE => Reason::NoCandidate,
            policyd_reason::POLICYD_REASON_OBSERVE_ONLY => Reason::ObserveOnly,
            policyd_reason::POLICYD_REASON_PREFERENCE => Reason::Preference,
            _ => Reason::Unknown(v),
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
            Reason::Preference => "preference",
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
        match policyd_outcome(v.into()) {
            policyd_outcome::POLICYD_OUTCOME_KILLED => Outcome::Killed,
            policyd_outcome::POLICYD_OUTCOME_AWAITED => Outcome::Awaited,
            policyd_outcome::POLICYD_OUTCOME_DEFERRED => Outcome::Deferred,
            policyd_outcome::POLICYD_OUTCOME_DRY_RUN => Outcome::DryRun,
            policyd_outcome::POLICYD_OUTCOME_KILL_FAILED => Outcome::KillFailed,
            _ => Outcome::Unknown(v),
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

/// Reasons and outcomes are written by their log names (`lowest-priority`,
/// `killed`) and read back by finding the value with that name, so the
/// names are spelt in `Display` only.
macro_rules! serde_by_name {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                (0..=u8::MAX)
                    .map(<$t>::from)
                    .find(|v| v.to_string() == name)
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "unknown {} {name:?}",
                            stringify!($t).to_lowercase()
                        ))
                    })
            }
        }
    )*};
}

/// `enum kills_kind`: why the kernel marked a task as an OOM victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillKind {
    /// The victim the kernel's badness or a BPF handler chose.
    Chosen,
    /// Killed along with the chosen one: memory.oom.group, or sharing its mm.
    WithChosen,
    /// The task in the OOM was exiting already: given reserves, not killed.
    Exiting,
    Unknown(u8),
}

impl From<u8> for KillKind {
    fn from(v: u8) -> Self {
        match kills_kind(v.into()) {
            kills_kind::KILLS_KIND_CHOSEN => KillKind::Chosen,
            kills_kind::KILLS_KIND_WITH_CHOSEN => KillKind::WithChosen,
            kills_kind::KILLS_KIND_EXITING => KillKind::Exiting,
            _ => KillKind::Unknown(v),
        }
    }
}

impl fmt::Display for KillKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KillKind::Chosen => "chosen",
            KillKind::WithChosen => "with-chosen",
            KillKind::Exiting => "exiting",
            KillKind::Unknown(v) => return write!(f, "kind#{v}"),
        })
    }
}

/// `enum kills_constraint`: the kernel's `enum oom_constraint`, what the
/// OOM was short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// System-wide memory.
    None,
    Cpuset,
    MemoryPolicy,
    /// A memory cgroup's limit.
    Memcg,
    Unknown(u8),
}

impl From<u8> for Constraint {
    fn from(v: u8) -> Self {
        match kills_constraint(v.into()) {
            kills_constraint::KILLS_CONSTRAINT_NONE => Constraint::None,
            kills_constraint::KILLS_CONSTRAINT_CPUSET => Constraint::Cpuset,
            kills_constraint::KILLS_CONSTRAINT_MEMORY_POLICY => Constraint::MemoryPolicy,
            kills_constraint::KILLS_CONSTRAINT_MEMCG => Constraint::Memcg,
            _ => Constraint::Unknown(v),
        }
    }
}

impl fmt::Display for Constraint {
    /// The kernel's own names, as its OOM report prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Constraint::None => "CONSTRAINT_NONE",
            Constraint::Cpuset => "CONSTRAINT_CPUSET",
            Constraint::MemoryPolicy => "CONSTRAINT_MEMORY_POLICY",
            Constraint::Memcg => "CONSTRAINT_MEMCG",
            Constraint::Unknown(v) => return write!(f, "constraint#{v}"),
        })
    }
}

serde_by_name!(Reason, Outcome, KillKind, Constraint);

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
        // C `char`s: the skeleton has them as i8.
        c_string(self.victim_comm.iter().map(|&c| c as u8))
    }
    /// The ranked candidates actually filled in (cgroup id 0 ends the list).
    pub fn ranked(&self) -> impl Iterator<Item = &PolicydCandidate> {
        self.ranked.iter().take_while(|c| c.cgroup_id != 0)
    }
}

impl KillsEvent {
    pub fn kind(&self) -> KillKind {
        self.kind.into()
    }
    pub fn constraint(&self) -> Constraint {
        self.constraint.into()
    }
    pub fn victim_comm(&self) -> String {
        c_string(self.victim_comm.iter().map(|&c| c as u8))
    }
    pub fn trigger_comm(&self) -> String {
        c_string(self.trigger_comm.iter().map(|&c| c as u8))
    }
    /// The BPF OOM handler that chose the victim; `None`: the kernel.
    pub fn handler(&self) -> Option<String> {
        let name = c_string(self.handler.iter().map(|&c| c as u8));
        (!name.is_empty()).then_some(name)
    }
    /// Whether the BPF OOM handler called `handler` chose this victim (its
    /// own decision line reports it).
    pub fn chosen_by(&self, handler: &str) -> bool {
        self.kind() == KillKind::Chosen && self.handler().as_deref() == Some(handler)
    }
}

/// The complete (not forward-declared) struct `name` in `btf`.
pub fn find_struct<'b>(btf: &'b Btf<'_>, name: &str) -> Option<Struct<'b>> {
    btf.type_by_kind::<Struct<'b>>()
        .find(|s| s.name().is_some_and(|n| n == name))
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

/// A C string from the kernel or BPF (a name, a comm): the bytes up to the
/// first NUL, as UTF-8 with replacement characters.
pub fn c_string(bytes: impl IntoIterator<Item = u8>) -> String {
    let bytes: Vec<u8> = bytes.into_iter().take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::c_comm;
    use crate::KillMode;
    use libbpf_rs::btf::types::MemberAttr;
    use libbpf_rs::btf::TypeId;
    use libbpf_rs::{AsRawLibbpf, HasSize};

    #[test]
    fn sizes_match_the_header() {
        // The numbers policyd.h implies on x86_64 (checked against BTF below).
        assert_eq!(size_of::<PolicydRule>(), 16);
        assert_eq!(size_of::<PolicydCandidate>(), 24);
        assert_eq!(size_of::<PolicydEvent>(), 264);
        assert_eq!(size_of::<PolicydDeclare>(), 24);
        assert_eq!(size_of::<PolicydStats>(), 72);
        assert_eq!(size_of::<PolicydMetrics>(), (HANDLER_BUCKETS + 2) * 8);
        assert_eq!(size_of::<PolicydDecisionKey>(), 16);
        assert_eq!(PolicydEvent::default().ranked.len(), EVENT_CANDIDATES);
    }

    #[test]
    fn round_trips_bytes() {
        let rule = PolicydRule {
            priority: 10,
            protect: 1,
            kill: KillMode::Cgroup.abi(),
            pref: crate::xattrs::Pref::Avoid.abi(),
            below_known: 1,
            below_priority: 3,
            below_kill: KillMode::Cgroup.abi(),
            ..Default::default()
        };
        assert_eq!(
            rule.as_bytes(),
            &[10, 0, 0, 0, 1, 1, 2, 1, 3, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(PolicydRule::from_bytes(rule.as_bytes()), Some(rule));
        assert_eq!(PolicydRule::from_bytes(&[0; 15]), None);

        let mut ev = PolicydEvent {
            victim_pid: 42,
            outcome: 3,
            ..Default::default()
        };
        ev.victim_comm = c_comm("job2");
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
        assert_eq!(Reason::from(8), Reason::Preference);
        assert_eq!(Reason::from(9).to_string(), "reason#9");
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

    #[test]
    fn enum_numbers_round_trip() {
        for p in crate::policy::POLICIES {
            assert_eq!(PolicyName::from_abi(p.name.abi()), Some(p.name));
        }
        for k in [KillMode::Task, KillMode::Cgroup] {
            assert_eq!(KillMode::from_abi(k.abi()), Some(k));
        }
        assert_eq!(KillMode::from_abi(7), None);
    }

    fn object_btf() -> Btf<'static> {
        btf_of("policyd.bpf.o")
    }

    fn btf_of(object: &str) -> Btf<'static> {
        let path = std::path::Path::new(env!("OUT_DIR")).join(object);
        Btf::from_path(&path).unwrap()
    }

    /// What [`Pod`] relies on: each shared struct is as large as in the
    /// object's BTF, and its members fill it without holes (policyd_event's
    /// nested policyd_candidate is checked as a struct of its own).
    #[test]
    fn no_padding_in_shared_structs() {
        no_padding_in(
            "policyd.bpf.o",
            &[
                ("policyd_rule", size_of::<PolicydRule>()),
                ("policyd_candidate", size_of::<PolicydCandidate>()),
                ("policyd_event", size_of::<PolicydEvent>()),
                ("policyd_stats", size_of::<PolicydStats>()),
                ("policyd_declare", size_of::<PolicydDeclare>()),
                ("policyd_find_rule", size_of::<PolicydFindRule>()),
                ("policyd_serials", size_of::<PolicydSerials>()),
                ("policyd_serial", size_of::<PolicydSerial>()),
                ("policyd_rule_slot", size_of::<types::policyd_rule_slot>()),
                ("policyd_rule_table", size_of::<types::policyd_rule_table>()),
                ("policyd_metrics", size_of::<PolicydMetrics>()),
                ("policyd_decision_key", size_of::<PolicydDecisionKey>()),
                ("policyd_tree_record", size_of::<PolicydTreeRecord>()),
                ("policyd_ops_layout", size_of::<PolicydOpsLayout>()),
            ],
        );
        no_padding_in(
            "kills.bpf.o",
            &[
                ("kills_event", size_of::<KillsEvent>()),
                ("kills_growth", size_of::<KillsGrowth>()),
            ],
        );
    }

    fn no_padding_in(object: &str, structs: &[(&str, usize)]) {
        let btf = btf_of(object);
        let type_size = |id: TypeId| {
            // SAFETY: a live BTF object and one of its type ids.
            let n = unsafe {
                libbpf_rs::libbpf_sys::btf__resolve_size(btf.as_libbpf_object().as_ptr(), id.into())
            };
            usize::try_from(n).expect("a sized type")
        };
        for &(name, size) in structs {
            let st = find_struct(&btf, name).unwrap_or_else(|| panic!("struct {name}"));
            assert_eq!(st.size(), size, "struct {name}");
            let mut end = 0;
            for m in st.iter() {
                let member = m.name.unwrap_or_default().to_string_lossy();
                let MemberAttr::Normal { offset } = m.attr else {
                    panic!("{name}.{member} is a bitfield");
                };
                assert_eq!(offset as usize, end * 8, "a hole before {name}.{member}");
                end += type_size(m.ty);
            }
            assert_eq!(end, size, "padding at the end of {name}");
        }
    }

    /// `stats` is where `policyd status` reads it: in .bss.
    #[test]
    fn stats_is_in_bss() {
        let btf = object_btf();
        let bss = btf
            .type_by_kind::<libbpf_rs::btf::types::DataSec<'_>>()
            .find(|s| s.name().is_some_and(|n| n == ".bss"))
            .expect(".bss");
        let (_, tname) = datasec_var(&btf, *bss, "stats").expect("stats in .bss");
        assert_eq!(tname, "policyd_stats");
        let (_, tname) = datasec_var(&btf, *bss, "metrics").expect("metrics in .bss");
        assert_eq!(tname, "policyd_metrics");
    }
}
