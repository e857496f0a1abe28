//! The selectable OOM policies: their names and what each one does.
//!
//! One BPF object, `bpf/policies/policyd.bpf.c`, implements them all; the
//! policy is chosen when it is loaded. The userspace twin of its victim
//! choice (used by `policyd explain`) lives in [`crate::rank`].

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::bpf::skel::types::policyd_policy;

/// A selectable OOM policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyName {
    /// Lowest effective priority cgroup dies; protected cgroups never do.
    Priority,
    /// Largest populated leaf cgroup dies; priorities ignored.
    Largest,
    /// The kernel's oom_badness() heuristic, done in BPF.
    Badness,
    /// Kill nothing: record the OOM and let the kernel choose.
    Observe,
}

/// One line of `policyd list`.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInfo {
    pub name: PolicyName,
    pub description: &'static str,
}

/// Every policy, in the order `policyd list` shows them. The first is the default.
pub const POLICIES: &[PolicyInfo] = &[
    PolicyInfo {
        name: PolicyName::Priority,
        description: "kill in the cgroup with the lowest priority from the rules; \
                      protected cgroups are never chosen (default)",
    },
    PolicyInfo {
        name: PolicyName::Largest,
        description: "kill in the populated leaf cgroup using the most memory; \
                      priorities ignored, protect honoured",
    },
    PolicyInfo {
        name: PolicyName::Badness,
        description: "kill the task the kernel's oom_badness() would pick \
                      (/proc/<pid>/oom_score); rules ignored",
    },
    PolicyInfo {
        name: PolicyName::Observe,
        description: "kill nothing: log each OOM and let the kernel's own killer choose",
    },
];

impl PolicyName {
    pub const DEFAULT: PolicyName = PolicyName::Priority;

    /// The name used on the command line, in the config and for the BPF object.
    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyName::Priority => "priority",
            PolicyName::Largest => "largest",
            PolicyName::Badness => "badness",
            PolicyName::Observe => "observe",
        }
    }

    /// `enum policyd_policy` (bpf/policies/policyd.h, through the
    /// skeleton): the number the BPF object's `policy` setting and its
    /// events use.
    pub const fn abi(self) -> u8 {
        let policy = match self {
            PolicyName::Priority => policyd_policy::POLICYD_POLICY_PRIORITY,
            PolicyName::Largest => policyd_policy::POLICYD_POLICY_LARGEST,
            PolicyName::Badness => policyd_policy::POLICYD_POLICY_BADNESS,
            PolicyName::Observe => policyd_policy::POLICYD_POLICY_OBSERVE,
        };
        policy.0 as u8
    }

    pub fn from_abi(v: u8) -> Option<PolicyName> {
        POLICIES.iter().map(|p| p.name).find(|n| n.abi() == v)
    }

    pub fn description(self) -> &'static str {
        POLICIES
            .iter()
            .find(|p| p.name == self)
            .map(|p| p.description)
            .unwrap_or_default()
    }

    /// All names, comma separated, for error messages.
    pub fn valid_names() -> String {
        POLICIES
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Default for PolicyName {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PolicyName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An unknown policy name; the message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy \"{name}\"; valid policies: {}",
    PolicyName::valid_names()
)]
pub struct UnknownPolicy {
    pub name: String,
}

impl FromStr for PolicyName {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        POLICIES
            .iter()
            .map(|p| p.name)
            .find(|n| n.as_str() == s)
            .ok_or_else(|| UnknownPolicy { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in POLICIES {
            assert_eq!(p.name.as_str().parse::<PolicyName>(), Ok(p.name));
            assert_eq!(p.name.to_string(), p.name.as_str());
        }
        assert_eq!(POLICIES[0].name, PolicyName::default());
    }

    #[test]
    fn unknown_name_lists_valid_ones() {
        let err = "oomd".parse::<PolicyName>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown policy \"oomd\"; valid policies: priority, largest, badness, observe"
        );
        // Names are exact: no case folding, no surrounding space.
        assert!("Priority".parse::<PolicyName>().is_err());
        assert!(" priority".parse::<PolicyName>().is_err());
    }
}
