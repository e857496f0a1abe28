//! The rules the handler reads, as policyd keeps them in the kernel: a table
//! of the cgroups known when it was built ([`crate::rule_table`]), and a
//! hash of the cgroups created since, where the handler looks when the table
//! has no entry. A cgroup has its entry in one of the two.
//!
//! A table is never written once it is installed. When the settings of a
//! cgroup in it change ([`KernelRules::outdated`]), policyd builds a new
//! table of them all at once and swaps it in with an empty hash; when so
//! many cgroups were created since that the handler spends long in the hash
//! ([`KernelRules::crowded`]), it does so once cgroups have stopped coming:
//! a new table costs some 50 ms under TCG (most of it the kernel allocating
//! and mapping 4 MiB), which new cgroups of a burst would wait behind.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};

use crate::abi::{self, Pod, PolicydRule};
use crate::loader::PolicyObject;
use crate::rule_table;

/// Cgroups created since the table was built that make policyd build a new
/// one: this many, or a quarter of the table's, whichever is more. Each
/// costs the handler a hash lookup more than a cgroup of the table.
pub const REBUILD_MIN_CREATED: usize = 256;

/// The rules maps of one generation, built and installed or ready to be.
pub struct KernelRules {
    table: MapHandle,
    created: MapHandle,
    /// Cgroups of `table` that are still there: those known to the daemon
    /// and not in `in_created`, but for any left out for want of room.
    in_table: usize,
    /// Cgroups with an entry in `created`.
    in_created: HashSet<u64>,
    /// Of them, cgroups known when the table was built but not listed with
    /// a serial number: not new, they do not call for a new table.
    unlisted: HashSet<u64>,
    /// Entries there is room for, the defaults' included (`--max-cgroups`).
    room: usize,
    /// The settings of a cgroup of `table` changed: `table` is out of date.
    outdated: bool,
    /// A new cgroup found no room (warned once, until room is made).
    full: bool,
}

/// What became of a new cgroup's entry.
pub enum Added {
    Added,
    /// No room; `first`: the first cgroup to find none since there was.
    Full {
        first: bool,
    },
}

impl KernelRules {
    /// The rules maps of `entries` (the defaults' entry first, then each
    /// cgroup's, parents before children), not installed yet. The table is
    /// keyed by the cgroups' css serial numbers, `serials` (cgroup id →
    /// serial number, [`PolicyObject::cgroup_serials`]); a cgroup with none
    /// there (gone since, or past the room the listing had) gets its entry
    /// in the hash instead. Past the room there is, cgroups are left out with
    /// a warning: the handler gives them their nearest ancestor's entry (or
    /// the defaults).
    pub fn build(
        obj: &PolicyObject,
        entries: &[(u64, PolicydRule)],
        serials: &HashMap<u64, u64>,
    ) -> Result<Self> {
        let room = obj.inner_spec().max_entries as usize;
        if entries.len() > room {
            tracing::warn!(
                "more cgroups than the rules map holds ({room}): {} cgroups inherit from their \
                 nearest ancestor with an entry",
                entries.len() - room
            );
        }
        let fit = &entries[..entries.len().min(room)];
        let defaults = fit
            .iter()
            .find(|(id, _)| *id == abi::DEFAULTS_KEY)
            .map(|(_, rule)| *rule)
            .context("the rules have no defaults entry")?;
        let mut cgroups = Vec::with_capacity(fit.len());
        let mut unlisted = Vec::new();
        for &(id, rule) in fit.iter().filter(|(id, _)| *id != abi::DEFAULTS_KEY) {
            match serials.get(&id) {
                Some(&serial) => cgroups.push(rule_table::Entry { serial, id, rule }),
                None => unlisted.push((id, rule)),
            }
        }
        let (table, built) =
            obj.new_table(|bytes| rule_table::build(bytes, &defaults, &cgroups))?;
        tracing::debug!(
            "rules table: {} cgroups in {} slots{}; {} cgroups with no serial number in the hash",
            built.entries,
            built.slots,
            if built.ordered { ", in order" } else { "" },
            unlisted.len()
        );
        let mut rules = KernelRules {
            table,
            created: obj.inner_spec().create()?,
            in_table: cgroups.len(),
            in_created: HashSet::new(),
            unlisted: HashSet::new(),
            room,
            outdated: false,
            full: false,
        };
        for (id, rule) in unlisted {
            if matches!(rules.add(id, &rule)?, Added::Added) {
                rules.unlisted.insert(id);
            }
        }
        Ok(rules)
    }

    /// Make these the rules `obj`'s handler reads.
    pub fn install(&self, obj: &PolicyObject) -> Result<()> {
        obj.install_rules(&self.table, &self.created)
    }

    fn entries(&self) -> usize {
        1 + self.in_table + self.in_created.len()
    }

    /// Give the new cgroup `id`, not known when the table was built, its
    /// entry.
    pub fn add(&mut self, id: u64, rule: &PolicydRule) -> Result<Added> {
        if self.entries() >= self.room {
            let first = !self.full;
            self.full = true;
            return Ok(Added::Full { first });
        }
        match self
            .created
            .update(&id.to_ne_bytes(), rule.as_bytes(), MapFlags::ANY)
        {
            Ok(()) => {
                self.in_created.insert(id);
                Ok(Added::Added)
            }
            Err(e) if e.kind() == ErrorKind::TooBig => {
                let first = !self.full;
                self.full = true;
                Ok(Added::Full { first })
            }
            Err(e) => Err(e).context("adding its rules entry"),
        }
    }

    /// The cgroup `id` is gone. Its entry in a table stays until the next
    /// table: no other cgroup gets its id, and the room is free already.
    pub fn remove(&mut self, id: u64) {
        if self.in_created.remove(&id) {
            self.unlisted.remove(&id);
            // Failing, it stays: a stale entry of an id no cgroup takes again.
            let _ = self.created.delete(&id.to_ne_bytes());
        } else {
            // Or a cgroup left out for want of room: then the count is one
            // short until the next table, and the hash's own size still
            // bounds the entries.
            self.in_table = self.in_table.saturating_sub(1);
        }
        self.full = false;
    }

    /// The settings of the cgroup `id` changed to `rule`.
    pub fn change(&mut self, id: u64, rule: &PolicydRule) -> Result<()> {
        if !self.in_created.contains(&id) {
            // In the table (or left out for want of room, which a new table
            // may mend).
            self.outdated = true;
            return Ok(());
        }
        self.created
            .update(&id.to_ne_bytes(), rule.as_bytes(), MapFlags::ANY)
            .context("updating its rules entry")
    }

    /// The settings of a cgroup of the table changed: a new table is due.
    pub fn outdated(&self) -> bool {
        self.outdated
    }

    /// So many cgroups were created since the table was built that a new one
    /// is worth its cost.
    pub fn crowded(&self) -> bool {
        self.created_since() >= REBUILD_MIN_CREATED.max(self.in_table / 4)
    }

    /// Cgroups created since the table was built.
    pub fn created_since(&self) -> usize {
        // Every unlisted cgroup is in `in_created`: added and removed together.
        self.in_created.len() - self.unlisted.len()
    }
}
