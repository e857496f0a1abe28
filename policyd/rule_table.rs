//! The rules table the handler reads (`struct policyd_rule_table` in
//! policyd.h): each cgroup's rules entry in a slot the handler finds from
//! the cgroup's id with a few plain loads, where a hash map lookup cost it
//! a call and most of a microsecond per cgroup ranked.
//!
//! Open addressing with linear probing: the entry of `id` is in one of the
//! [`PROBES`] slots from [`home`] on, and every slot between is taken. The
//! handler stops at an empty slot or after [`PROBES`] slots; so that it
//! never stops short of an entry, [`build`] places every entry within
//! [`PROBES`] slots of its home, trying other multipliers (and more slots)
//! until it can, and fails loudly if it cannot. The table is built here
//! whole and never written once the handler may read it: policyd swaps in
//! a new one.

use std::mem::{offset_of, size_of};

use anyhow::{bail, Result};

use crate::abi::{self, Pod, PolicydRule};
use crate::bpf::skel::types::{policyd_rule_slot, policyd_rule_table};

/// Bytes of a table: the rules table map's value size.
pub const SIZE: usize = size_of::<policyd_rule_table>();

/// `POLICYD_RULE_SLOTS`: slots of a table.
pub const SLOTS: usize = abi::RULE_SLOTS;

/// `POLICYD_RULE_PROBES`: slots the handler looks at, from an id's home on.
pub const PROBES: usize = abi::RULE_PROBES;

/// Slots in use in a table of a few cgroups: a power of two.
const MIN_SLOTS: usize = 64;

/// Multipliers tried per table size before the table grows.
const ATTEMPTS: u64 = 16;

/// Where the handler starts looking for `id` (policyd.bpf.c's table_rule()):
/// the id folded to mix its generation into its inode number, times `mul`,
/// bits 32 and up, in the table's `mask`.
pub fn home(id: u64, mul: u64, mask: u32) -> u32 {
    (((id ^ (id >> 32)).wrapping_mul(mul)) >> 32) as u32 & mask
}

/// The `attempt`th multiplier: odd, with its bits spread (splitmix64).
fn multiplier(attempt: u64) -> u64 {
    let mut z = attempt.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// What [`build`] wrote.
#[derive(Debug)]
pub struct Built {
    /// Cgroups in the table.
    pub entries: usize,
    /// Slots in use (`mask` + 1).
    pub slots: usize,
}

/// Write into `table` (a table's [`SIZE`] bytes, zeroed: a new rules table
/// map's value) the table of `entries` (cgroup id → rule; a later entry of an
/// id replaces an earlier one), with `defaults` for cgroups it has no entry
/// for.
pub fn build(
    table: &mut [u8],
    defaults: &PolicydRule,
    entries: &[(u64, PolicydRule)],
) -> Result<Built> {
    assert_eq!(table.len(), SIZE, "a rules table's bytes");
    let mut slots = (2 * entries.len()).max(MIN_SLOTS).next_power_of_two();
    if slots > SLOTS {
        bail!(
            "{} cgroups do not fit the rules table ({} at most)",
            entries.len(),
            SLOTS / 2
        );
    }
    loop {
        for attempt in 0..ATTEMPTS {
            let mul = multiplier(attempt);
            if let Some(placed) = place(entries, mul, slots) {
                return Ok(write(table, defaults, entries, &placed, mul, slots));
            }
        }
        if slots == SLOTS {
            bail!(
                "cannot place {} cgroups in the rules table within {PROBES} slots of their \
                 hash with any of {ATTEMPTS} multipliers: their ids collide unusually; please \
                 report this",
                entries.len()
            );
        }
        slots *= 2;
    }
}

/// The slot of each entry (`None`: replaced by a later entry of its id), or
/// `None` if one cannot be placed within [`PROBES`] slots of its home.
fn place(entries: &[(u64, PolicydRule)], mul: u64, slots: usize) -> Option<Vec<Option<u32>>> {
    let mask = (slots - 1) as u32;
    // Index into `entries` + 1 of each slot's occupant; 0: empty.
    let mut taken = vec![0u32; slots];
    let mut at = vec![None; entries.len()];
    for (i, (id, _)) in entries.iter().enumerate() {
        let start = home(*id, mul, mask);
        let slot = (0..PROBES as u32)
            .map(|n| start.wrapping_add(n) & mask)
            .find(|&s| {
                let o = taken[s as usize];
                o == 0 || entries[o as usize - 1].0 == *id
            })?;
        let o = taken[slot as usize];
        if o != 0 {
            at[o as usize - 1] = None;
        }
        taken[slot as usize] = i as u32 + 1;
        at[i] = Some(slot);
    }
    Some(at)
}

fn write(
    table: &mut [u8],
    defaults: &PolicydRule,
    entries: &[(u64, PolicydRule)],
    placed: &[Option<u32>],
    mul: u64,
    slots: usize,
) -> Built {
    let mut put = |offset: usize, b: &[u8]| table[offset..offset + b.len()].copy_from_slice(b);
    put(
        offset_of!(policyd_rule_table, defaults),
        defaults.as_bytes(),
    );
    put(offset_of!(policyd_rule_table, mul), &mul.to_ne_bytes());
    put(
        offset_of!(policyd_rule_table, mask),
        &(slots as u32 - 1).to_ne_bytes(),
    );
    let mut n = 0;
    for ((id, rule), slot) in entries.iter().zip(placed) {
        let Some(slot) = slot else { continue };
        let at =
            offset_of!(policyd_rule_table, slots) + *slot as usize * size_of::<policyd_rule_slot>();
        put(
            at + offset_of!(policyd_rule_slot, cgroup_id),
            &id.to_ne_bytes(),
        );
        put(at + offset_of!(policyd_rule_slot, rule), rule.as_bytes());
        n += 1;
    }
    put(
        offset_of!(policyd_rule_table, entries),
        &(n as u32).to_ne_bytes(),
    );
    Built { entries: n, slots }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(priority: u32) -> PolicydRule {
        PolicydRule {
            priority,
            ..Default::default()
        }
    }

    /// A table built into fresh bytes, as a new map's value is.
    struct Table {
        bytes: Vec<u8>,
        entries: usize,
        slots: usize,
    }

    fn build(defaults: &PolicydRule, entries: &[(u64, PolicydRule)]) -> Result<Table> {
        let mut bytes = vec![0; SIZE];
        let built = super::build(&mut bytes, defaults, entries)?;
        Ok(Table {
            bytes,
            entries: built.entries,
            slots: built.slots,
        })
    }

    fn read<T: Pod>(t: &Table, offset: usize) -> T {
        T::from_bytes(&t.bytes[offset..]).unwrap()
    }

    /// The handler's search (table_rule() in policyd.bpf.c), over the bytes.
    fn find(t: &Table, id: u64) -> Option<PolicydRule> {
        let u64_at = |at: usize| u64::from_ne_bytes(t.bytes[at..at + 8].try_into().unwrap());
        let mul = u64_at(offset_of!(policyd_rule_table, mul));
        let at = offset_of!(policyd_rule_table, mask);
        let mask = u32::from_ne_bytes(t.bytes[at..at + 4].try_into().unwrap());
        let start = home(id, mul, mask);
        for n in 0..PROBES as u32 {
            let slot = (start.wrapping_add(n) & mask & (SLOTS as u32 - 1)) as usize;
            let at = offset_of!(policyd_rule_table, slots) + slot * size_of::<policyd_rule_slot>();
            let got = u64_at(at);
            if got == id {
                return Some(read(t, at + offset_of!(policyd_rule_slot, rule)));
            }
            if got == 0 {
                return None;
            }
        }
        None
    }

    /// Cgroup ids as kernfs makes them: generation 1, inode numbers some
    /// files apart.
    fn kernfs_ids(n: u64, stride: u64) -> Vec<u64> {
        (0..n).map(|i| 1 << 32 | (1000 + i * stride)).collect()
    }

    #[test]
    fn finds_every_entry_and_nothing_else() {
        for (n, stride) in [
            (0, 1),
            (1, 1),
            (10, 37),
            (1000, 1),
            (10_000, 64),
            (65_536, 41),
        ] {
            let ids = kernfs_ids(n, stride);
            let entries: Vec<_> = ids.iter().map(|&id| (id, rule(id as u32))).collect();
            let t = build(&rule(7), &entries).unwrap();
            assert_eq!(t.entries, n as usize);
            assert_eq!(t.bytes.len(), SIZE);
            assert!(t.slots >= 2 * n as usize && t.slots <= SLOTS);
            for &id in &ids {
                assert_eq!(find(&t, id), Some(rule(id as u32)), "{n} ids: {id:#x}");
            }
            // Ids not in it: other generations, and inode numbers between.
            for &id in ids.iter().take(500) {
                assert_eq!(find(&t, id + (1 << 32)), None);
            }
            let defaults: PolicydRule = read(&t, offset_of!(policyd_rule_table, defaults));
            assert_eq!(defaults, rule(7));
        }
    }

    #[test]
    fn a_later_entry_of_an_id_replaces_an_earlier_one() {
        let entries = [(5 << 32 | 9, rule(1)), (6, rule(2)), (5 << 32 | 9, rule(3))];
        let t = build(&rule(0), &entries).unwrap();
        assert_eq!(t.entries, 2);
        assert_eq!(find(&t, 5 << 32 | 9), Some(rule(3)));
        assert_eq!(find(&t, 6), Some(rule(2)));
    }

    /// Ids that all share one home under the first multiplier: more than
    /// PROBES of them cannot sit within PROBES slots of it, so the build
    /// takes another multiplier, and the handler still finds them all.
    #[test]
    fn takes_another_multiplier_when_a_run_would_pass_the_probes() {
        let mul = multiplier(0);
        let mask = (MIN_SLOTS - 1) as u32;
        let ids: Vec<u64> = (1u64..)
            .filter(|&id| home(id, mul, mask) == 3)
            .take(PROBES + 1)
            .collect();
        let entries: Vec<_> = ids.iter().map(|&id| (id, rule(1))).collect();
        assert!(place(&entries, mul, MIN_SLOTS).is_none());
        let t = build(&rule(0), &entries).unwrap();
        for &id in &ids {
            assert_eq!(find(&t, id), Some(rule(1)));
        }
    }

    /// Ids whose folded values differ by multiples of 2^49 share a home
    /// under every multiplier and table size: past PROBES of them the build
    /// fails, saying so. (Kernfs ids would need generations 2^17 apart.)
    #[test]
    fn fails_loudly_when_no_multiplier_places_them() {
        let ids: Vec<u64> = (0..=PROBES as u64)
            .map(|g| g << 49 | ((g << 17) ^ 77))
            .collect();
        for (attempt, mask) in [(0, 63), (5, 1023), (ATTEMPTS - 1, SLOTS as u32 - 1)] {
            let h = |id| home(id, multiplier(attempt), mask);
            assert!(ids.iter().all(|&id| h(id) == h(ids[0])));
        }
        let entries: Vec<_> = ids.iter().map(|&id| (id, rule(1))).collect();
        let Err(err) = build(&rule(0), &entries) else {
            panic!("{} colliding ids placed", entries.len());
        };
        let err = err.to_string();
        assert!(err.contains("cannot place 33 cgroups"), "{err}");
        // At the cap exactly, they fit.
        assert!(build(&rule(0), &entries[..PROBES]).is_ok());
    }

    #[test]
    fn more_cgroups_than_slots_is_an_error() {
        let entries: Vec<_> = (1..=SLOTS as u64 / 2 + 1).map(|id| (id, rule(1))).collect();
        assert!(build(&rule(0), &entries).is_err());
    }
}
