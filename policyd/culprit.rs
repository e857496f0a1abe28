//! The allocation culprit: which cgroups grew most just before an OOM.
//!
//! The tracer samples each memcg's usage on the charge path's batched slow
//! path (bpf/trace/kills.bpf.c says why there) into its `growth` map; nothing
//! runs on a timer. When a kill arrives, [`crate::kills::KillStream`] reads
//! the map once and [`rank`] turns it into the cgroups that grew most in the
//! [`WINDOW_NS`] before the kill.

use crate::abi::{KillsGrowth, GROWTH_HALF_WINDOW_MS};

/// The window before a kill in which growth counts: two half windows, as
/// the tracer keeps a sample 1 to 2 half windows old.
pub const WINDOW_NS: u64 = 2 * GROWTH_HALF_WINDOW_MS as u64 * 1_000_000;

/// Less than this is not growth: usage includes what each CPU's charge stock
/// holds (up to 64 pages per CPU), which comes and goes.
pub const MIN_GROWTH_BYTES: u64 = 1 << 20;

/// Cgroups a kill names as culprits; [`Ranking::growers`] counts them all.
pub const TOP: usize = 3;

const PAGE_SIZE: u64 = 4096;

/// One cgroup's growth before a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    pub cgroup_id: u64,
    pub bytes: u64,
    /// How long the growth took: from the oldest sample in the window to
    /// the newest.
    pub span_ns: u64,
}

/// What [`rank`] makes of the `growth` map for one kill.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranking {
    /// The cgroups that grew most, most first; at most [`TOP`].
    pub top: Vec<Growth>,
    /// How many grew by [`MIN_GROWTH_BYTES`] or more.
    pub growers: usize,
    /// The map was full of cgroups that charged in the window and had
    /// evicted some: a grower may be missing.
    pub incomplete: bool,
}

/// `w`'s growth in the window ending at `at_ns`: from its oldest sample in
/// the window to its newest. `None` if it took no sample in the window.
/// A sample taken after `at_ns` (the map is read once the kill arrives)
/// still counts as the newest.
pub fn growth_before(w: &KillsGrowth, at_ns: u64) -> Option<(u64, u64)> {
    let start = at_ns.saturating_sub(WINDOW_NS);
    if w.last_ns < start {
        return None;
    }
    let (base_ns, base_pages) = if w.first_ns >= start {
        (w.first_ns, w.first_pages)
    } else if w.mid_ns >= start {
        (w.mid_ns, w.mid_pages)
    } else {
        (w.last_ns, w.last_pages)
    };
    let bytes = w.last_pages.saturating_sub(base_pages) * PAGE_SIZE;
    Some((bytes, w.last_ns.saturating_sub(base_ns)))
}

/// The cgroups of `windows` (the map, by cgroup id) that grew most in the
/// window before `at_ns`. Ranked by the memory taken, not by rate: a cgroup
/// that began charging a moment ago would otherwise outrank one that took
/// ten times as much over the window. `evicted`: entries the map has
/// evicted so far (entries made minus entries held).
pub fn rank(windows: &[(u64, KillsGrowth)], at_ns: u64, evicted: u64) -> Ranking {
    let mut grown: Vec<Growth> = windows
        .iter()
        .filter_map(|(id, w)| {
            let (bytes, span_ns) = growth_before(w, at_ns)?;
            (bytes >= MIN_GROWTH_BYTES).then_some(Growth {
                cgroup_id: *id,
                bytes,
                span_ns,
            })
        })
        .collect();
    grown.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.cgroup_id.cmp(&b.cgroup_id)));
    let growers = grown.len();
    grown.truncate(TOP);
    // The LRU evicts the least recently charged: if even that one charged
    // in the window, what it evicted may have too.
    let start = at_ns.saturating_sub(WINDOW_NS);
    let incomplete = evicted > 0 && windows.iter().all(|(_, w)| w.last_ns >= start);
    Ranking {
        top: grown,
        growers,
        incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::GROWTH_CGROUPS;

    const S: u64 = 1_000_000_000;
    const MIB_PAGES: u64 = 256;

    fn window(samples: [(u64, u64); 3]) -> KillsGrowth {
        let [(first_ns, first_pages), (mid_ns, mid_pages), (last_ns, last_pages)] = samples;
        KillsGrowth {
            first_ns,
            first_pages,
            mid_ns,
            mid_pages,
            last_ns,
            last_pages,
        }
    }

    #[test]
    fn growth_counts_from_the_oldest_sample_in_the_window() {
        let at = 100 * S;
        // Charging all along: first is in the window.
        let w = window([(96 * S, 0), (98 * S, 100), (100 * S, 300)]);
        assert_eq!(growth_before(&w, at), Some((300 * 4096, 4 * S)));
        // first fell out of the window, mid did not.
        let w = window([(90 * S, 0), (97 * S, 100), (99 * S, 300)]);
        assert_eq!(growth_before(&w, at), Some((200 * 4096, 2 * S)));
        // Only the newest sample is in the window: nothing to compare with.
        let w = window([(80 * S, 0), (90 * S, 100), (99 * S, 300)]);
        assert_eq!(growth_before(&w, at), Some((0, 0)));
        // Shrinking is no growth.
        let w = window([(96 * S, 300), (98 * S, 100), (99 * S, 50)]);
        assert_eq!(growth_before(&w, at), Some((0, 3 * S)));
    }

    #[test]
    fn a_cgroup_idle_in_the_window_did_not_grow() {
        // Took 400 MiB 6 s before the OOM, nothing since.
        let w = window([
            (93 * S, 0),
            (94 * S, 400 * MIB_PAGES),
            (94 * S, 400 * MIB_PAGES),
        ]);
        assert_eq!(growth_before(&w, 100 * S), None);
        assert_eq!(rank(&[(7, w)], 100 * S, 0), Ranking::default());
    }

    #[test]
    fn the_largest_growth_ranks_first_not_the_fastest_rate() {
        let at = 100 * S;
        let windows = [
            // 40 MiB over 4 s.
            (
                10,
                window([(96 * S, 0), (98 * S, 0), (100 * S, 40 * MIB_PAGES)]),
            ),
            // 4 MiB in 0.1 s: a faster rate, less memory.
            (
                11,
                window([(99 * S, 0), (99 * S, 0), (99 * S + S / 10, 4 * MIB_PAGES)]),
            ),
            // Below MIN_GROWTH_BYTES: the charge stock's noise.
            (
                12,
                window([(96 * S, 0), (98 * S, 0), (100 * S, MIB_PAGES - 1)]),
            ),
        ];
        let r = rank(&windows, at, 0);
        assert_eq!(r.growers, 2);
        assert_eq!(
            r.top,
            [
                Growth {
                    cgroup_id: 10,
                    bytes: 40 << 20,
                    span_ns: 4 * S
                },
                Growth {
                    cgroup_id: 11,
                    bytes: 4 << 20,
                    span_ns: S / 10
                },
            ]
        );
        assert!(!r.incomplete);
    }

    #[test]
    fn at_most_top_culprits_are_named_and_all_growers_counted() {
        let windows: Vec<(u64, KillsGrowth)> = (1..=TOP as u64 + 2)
            .map(|id| {
                (
                    id,
                    window([(96 * S, 0), (98 * S, 0), (99 * S, id * MIB_PAGES)]),
                )
            })
            .collect();
        let r = rank(&windows, 100 * S, 0);
        assert_eq!(r.growers, TOP + 2);
        let ids: Vec<u64> = r.top.iter().map(|g| g.cgroup_id).collect();
        assert_eq!(ids, [5, 4, 3]);
    }

    #[test]
    fn a_full_map_of_recent_chargers_that_evicted_is_incomplete() {
        let at = 100 * S;
        let cap = u64::from(GROWTH_CGROUPS);
        let recent = window([(96 * S, 0), (98 * S, 0), (99 * S, 0)]);
        let full: Vec<(u64, KillsGrowth)> = (1..=cap).map(|id| (id, recent)).collect();
        assert!(rank(&full, at, 1).incomplete);
        // Nothing evicted: every cgroup that charged is there.
        assert!(!rank(&full, at, 0).incomplete);
        // The least recently charged one is older than the window: whatever
        // was evicted before it was too.
        let mut old = full.clone();
        old[0].1 = window([(80 * S, 0), (81 * S, 0), (82 * S, 0)]);
        assert!(!rank(&old, at, 1).incomplete);
    }
}
