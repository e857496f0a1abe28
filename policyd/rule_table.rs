//! The rules table the handler reads (`struct policyd_rule_table` in
//! policyd.h): each cgroup's rules entry, and its id, in a slot the handler
//! finds from the cgroup's css serial number with a few plain loads, where
//! a hash map lookup by id cost it a call and most of a microsecond per
//! cgroup ranked. The serial number is in the memory the handler's walk of
//! the tree reads anyway; the id is a pointer further.
//!
//! Open addressing with linear probing: the entry of `serial` is in one of
//! the [`PROBES`] slots from [`home`] on, and every slot between is taken.
//! The handler stops at an empty slot or after [`PROBES`] slots; so that it
//! never stops short of an entry, [`build`] places every entry within
//! [`PROBES`] slots of its home, trying other multipliers (and more slots)
//! until it can, and fails loudly if it cannot. The first multiplier tried
//! keeps the order of the serial numbers ([`ordered_multiplier`]): cgroups
//! get them as they are created, in the order the handler's walk visits
//! most of them, which then reads the table nearly in order, a few pages in
//! all instead of one per cgroup. The table is built here whole and never
//! written once the handler may read it: policyd swaps in a new one.

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

/// Where the handler starts looking for `serial` (policyd.bpf.c's
/// table_rule()): the serial number folded to 32 bits, times `mul`, bits 32
/// and up, in the table's `mask`.
pub fn home(serial: u64, mul: u64, mask: u32) -> u32 {
    (fold(serial).wrapping_mul(mul) >> 32) as u32 & mask
}

fn fold(serial: u64) -> u64 {
    serial ^ (serial >> 32)
}

/// The multiplier that spreads the serial numbers of `entries`, folded, in
/// order over the `slots`: from the smallest to the largest, once round the
/// table. Evenly spread numbers then each find their home free or nearly;
/// crowded ones may not fit, and the build tries [`multiplier`]s instead.
fn ordered_multiplier(entries: &[Entry], slots: usize) -> u64 {
    let folded = entries.iter().map(|e| fold(e.serial) as u32);
    let (Some(lo), Some(hi)) = (folded.clone().min(), folded.max()) else {
        return 1;
    };
    let span = u128::from(hi - lo) + 1;
    ((slots as u128) << 32).div_ceil(span).min(u64::MAX as u128) as u64
}

/// The `attempt`th multiplier: odd, with its bits spread (splitmix64).
fn multiplier(attempt: u64) -> u64 {
    let mut z = attempt.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// A cgroup's entry in the table.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its css serial number: the key, never 0.
    pub serial: u64,
    pub id: u64,
    pub rule: PolicydRule,
}

/// What [`build`] wrote.
#[derive(Debug)]
pub struct Built {
    /// Cgroups in the table.
    pub entries: usize,
    /// Slots in use (`mask` + 1).
    pub slots: usize,
    /// Whether the slots are in the order of the serial numbers.
    pub ordered: bool,
}

/// Write into `table` (a table's [`SIZE`] bytes, zeroed: a new rules table
/// map's value) the table of `entries` (a later entry of a serial number
/// replaces an earlier one), with `defaults` for cgroups it has no entry for.
pub fn build(table: &mut [u8], defaults: &PolicydRule, entries: &[Entry]) -> Result<Built> {
    assert_eq!(table.len(), SIZE, "a rules table's bytes");
    let mut slots = (2 * entries.len()).max(MIN_SLOTS).next_power_of_two();
    if slots > SLOTS {
        bail!(
            "{} cgroups do not fit the rules table ({} at most)",
            entries.len(),
            SLOTS / 2
        );
    }
    if entries.iter().any(|e| e.serial == 0) {
        bail!("a rules table entry without a serial number");
    }
    loop {
        let mul = ordered_multiplier(entries, slots);
        if let Some(placed) = place(entries, mul, slots) {
            return Ok(write(table, defaults, entries, &placed, mul, slots, true));
        }
        for attempt in 0..ATTEMPTS {
            let mul = multiplier(attempt);
            if let Some(placed) = place(entries, mul, slots) {
                return Ok(write(table, defaults, entries, &placed, mul, slots, false));
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

/// The slot of each entry (`None`: replaced by a later entry of its serial
/// number), or `None` if one cannot be placed within [`PROBES`] slots of its
/// home.
fn place(entries: &[Entry], mul: u64, slots: usize) -> Option<Vec<Option<u32>>> {
    let mask = (slots - 1) as u32;
    // Index into `entries` + 1 of each slot's occupant; 0: empty.
    let mut taken = vec![0u32; slots];
    let mut at = vec![None; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        let start = home(e.serial, mul, mask);
        let slot = (0..PROBES as u32)
            .map(|n| start.wrapping_add(n) & mask)
            .find(|&s| {
                let o = taken[s as usize];
                o == 0 || entries[o as usize - 1].serial == e.serial
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
    entries: &[Entry],
    placed: &[Option<u32>],
    mul: u64,
    slots: usize,
    ordered: bool,
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
    for (e, slot) in entries.iter().zip(placed) {
        let Some(slot) = slot else { continue };
        let at =
            offset_of!(policyd_rule_table, slots) + *slot as usize * size_of::<policyd_rule_slot>();
        put(
            at + offset_of!(policyd_rule_slot, serial),
            &e.serial.to_ne_bytes(),
        );
        put(
            at + offset_of!(policyd_rule_slot, cgroup_id),
            &e.id.to_ne_bytes(),
        );
        put(at + offset_of!(policyd_rule_slot, rule), e.rule.as_bytes());
        n += 1;
    }
    put(
        offset_of!(policyd_rule_table, entries),
        &(n as u32).to_ne_bytes(),
    );
    Built {
        entries: n,
        slots,
        ordered,
    }
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

    /// The entry of serial number `serial`, with an id and rule derived
    /// from it.
    fn entry(serial: u64) -> Entry {
        Entry {
            serial,
            id: 1 << 32 | serial.wrapping_mul(7),
            rule: rule(serial as u32),
        }
    }

    /// A table built into fresh bytes, as a new map's value is.
    struct Table {
        bytes: Vec<u8>,
        built: Built,
    }

    fn build(defaults: &PolicydRule, entries: &[Entry]) -> Result<Table> {
        let mut bytes = vec![0; SIZE];
        let built = super::build(&mut bytes, defaults, entries)?;
        Ok(Table { bytes, built })
    }

    fn read<T: Pod>(t: &Table, offset: usize) -> T {
        T::from_bytes(&t.bytes[offset..]).unwrap()
    }

    /// The handler's search (table_rule() in policyd.bpf.c), over the bytes:
    /// the slot, id and rule of `serial`.
    fn find(t: &Table, serial: u64) -> Option<(usize, u64, PolicydRule)> {
        let u64_at = |at: usize| u64::from_ne_bytes(t.bytes[at..at + 8].try_into().unwrap());
        let mul = u64_at(offset_of!(policyd_rule_table, mul));
        let at = offset_of!(policyd_rule_table, mask);
        let mask = u32::from_ne_bytes(t.bytes[at..at + 4].try_into().unwrap());
        let start = home(serial, mul, mask);
        for n in 0..PROBES as u32 {
            let slot = (start.wrapping_add(n) & mask & (SLOTS as u32 - 1)) as usize;
            let at = offset_of!(policyd_rule_table, slots) + slot * size_of::<policyd_rule_slot>();
            let got = u64_at(at + offset_of!(policyd_rule_slot, serial));
            if got == serial {
                let id = u64_at(at + offset_of!(policyd_rule_slot, cgroup_id));
                return Some((slot, id, read(t, at + offset_of!(policyd_rule_slot, rule))));
            }
            if got == 0 {
                return None;
            }
        }
        None
    }

    fn found(t: &Table, serial: u64) -> Option<(u64, PolicydRule)> {
        find(t, serial).map(|(_, id, rule)| (id, rule))
    }

    /// Serial numbers as cgroups get them: `stride` apart (a cgroup takes one
    /// for itself and one per controller enabled in it).
    fn serials(n: u64, stride: u64) -> Vec<u64> {
        (0..n).map(|i| 40 + i * stride).collect()
    }

    #[test]
    fn finds_every_entry_and_nothing_else() {
        for (n, stride) in [
            (0, 1),
            (1, 1),
            (10, 37),
            (1000, 1),
            (10_000, 3),
            (65_536, 6),
        ] {
            let keys = serials(n, stride);
            let entries: Vec<_> = keys.iter().map(|&s| entry(s)).collect();
            let t = build(&rule(7), &entries).unwrap();
            assert_eq!(t.built.entries, n as usize);
            assert_eq!(t.bytes.len(), SIZE);
            assert!(t.built.slots >= 2 * n as usize && t.built.slots <= SLOTS);
            for e in &entries {
                assert_eq!(
                    found(&t, e.serial),
                    Some((e.id, e.rule)),
                    "{n}: {}",
                    e.serial
                );
            }
            // Serial numbers not in it: between and past them.
            for &s in keys.iter().take(500) {
                if stride > 1 {
                    assert_eq!(found(&t, s + 1), None);
                }
                assert_eq!(found(&t, s + (1 << 32)), None);
            }
            let defaults: PolicydRule = read(&t, offset_of!(policyd_rule_table, defaults));
            assert_eq!(defaults, rule(7));
        }
    }

    /// Evenly spread serial numbers take the ordered multiplier, and a walk
    /// in their order reads the slots in order: forward, round the table
    /// once at most.
    #[test]
    fn serial_order_is_slot_order() {
        for (n, stride) in [(1000, 1), (10_000, 3), (10_000, 7), (65_536, 6)] {
            let keys = serials(n, stride);
            let entries: Vec<_> = keys.iter().map(|&s| entry(s)).collect();
            let t = build(&rule(0), &entries).unwrap();
            assert!(t.built.ordered, "{n} serial numbers {stride} apart");
            let slots: Vec<usize> = keys.iter().map(|&s| find(&t, s).unwrap().0).collect();
            let backwards = slots.windows(2).filter(|w| w[1] < w[0]).count();
            assert!(backwards <= 1, "{n}/{stride}: {backwards} steps back");
        }
    }

    /// A few cgroups from boot and a crowd made much later: no order keeps
    /// the crowd within PROBES slots of their homes, and the build takes
    /// another multiplier, where the handler still finds them all.
    #[test]
    fn crowded_serials_take_another_multiplier() {
        let mut keys = serials(10, 500_000);
        keys.extend((0..2000).map(|i| 10_000_000 + i));
        let entries: Vec<_> = keys.iter().map(|&s| entry(s)).collect();
        let t = build(&rule(0), &entries).unwrap();
        assert!(!t.built.ordered);
        for e in &entries {
            assert_eq!(found(&t, e.serial), Some((e.id, e.rule)));
        }
    }

    #[test]
    fn a_later_entry_of_a_serial_replaces_an_earlier_one() {
        let mut again = entry(9);
        again.rule = rule(3);
        let entries = [entry(9), entry(6), again];
        let t = build(&rule(0), &entries).unwrap();
        assert_eq!(t.built.entries, 2);
        assert_eq!(found(&t, 9), Some((again.id, rule(3))));
        assert_eq!(found(&t, 6), Some((entry(6).id, rule(6))));
    }

    #[test]
    fn an_entry_without_a_serial_is_an_error() {
        assert!(build(&rule(0), &[entry(3), entry(0)]).is_err());
    }

    /// Serial numbers that all share one home under the first random
    /// multiplier (and not in order): more than PROBES of them cannot sit
    /// within PROBES slots of it, so the build takes another multiplier, and
    /// the handler still finds them all.
    #[test]
    fn takes_another_multiplier_when_a_run_would_pass_the_probes() {
        let mul = multiplier(0);
        let mask = (MIN_SLOTS - 1) as u32;
        let keys: Vec<u64> = (1u64..)
            .filter(|&s| home(s, mul, mask) == 3)
            .take(PROBES + 1)
            .collect();
        let entries: Vec<_> = keys.iter().map(|&s| entry(s)).collect();
        assert!(place(&entries, mul, MIN_SLOTS).is_none());
        let t = build(&rule(0), &entries).unwrap();
        for e in &entries {
            assert_eq!(found(&t, e.serial), Some((e.id, e.rule)));
        }
    }

    /// Serial numbers whose folded values differ by multiples of 2^49 share
    /// a home under every multiplier, the ordered one's included, and every
    /// table size: past PROBES of them the build fails, saying so.
    #[test]
    fn fails_loudly_when_no_multiplier_places_them() {
        let keys: Vec<u64> = (0..=PROBES as u64)
            .map(|g| g << 49 | ((g << 17) ^ 77))
            .collect();
        let entries: Vec<_> = keys.iter().map(|&s| entry(s)).collect();
        for (attempt, mask) in [(0, 63), (5, 1023), (ATTEMPTS - 1, SLOTS as u32 - 1)] {
            let h = |s| home(s, multiplier(attempt), mask);
            assert!(keys.iter().all(|&s| h(s) == h(keys[0])));
            let slots = mask as usize + 1;
            let h = |s| home(s, ordered_multiplier(&entries, slots), mask);
            assert!(keys.iter().all(|&s| h(s) == h(keys[0])));
        }
        let Err(err) = build(&rule(0), &entries) else {
            panic!("{} colliding serial numbers placed", entries.len());
        };
        let err = err.to_string();
        assert!(err.contains("cannot place 33 cgroups"), "{err}");
        // At the cap exactly, they fit.
        assert!(build(&rule(0), &entries[..PROBES]).is_ok());
    }

    #[test]
    fn more_cgroups_than_slots_is_an_error() {
        let entries: Vec<_> = (1..=SLOTS as u64 / 2 + 1).map(entry).collect();
        assert!(build(&rule(0), &entries).is_err());
    }
}
