//! The order of `policyd load`'s log lines: a decision before the kills it
//! made.
//!
//! Decisions and kills come through two ring buffers. The handler publishes
//! its decision as it returns, after the kernel has already marked its
//! victims (and, under memory.oom.group, the victim's whole cgroup): the
//! daemon can wake up on the kills' ring while the handler still runs.
//! Sorting each batch by time is not enough then: the decision that made
//! those kills is in the next batch. A kill made by our handler after the
//! end of every decision seen so far waits here for its decision, and so do
//! the kills after it. It waits at most [`HOLD_MAX`]: a decision lost to a
//! full ring buffer never comes.

use std::time::{Duration, Instant};

/// How long a kill waits for its decision before it is logged without it.
pub const HOLD_MAX: Duration = Duration::from_secs(1);

/// One line to log: a decision or a kill.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<D, K> {
    Decision(D),
    Kill(K),
}

/// A decision as it came: when the handler started and ended.
pub struct TimedDecision<D> {
    pub start_ns: u64,
    pub end_ns: u64,
    pub decision: D,
}

/// A kill as it came: when, and whether our handler made it.
pub struct TimedKill<K> {
    pub at_ns: u64,
    pub by_our_handler: bool,
    pub kill: K,
}

pub struct EventOrder<K> {
    /// The end of the latest decision seen: a kill by our handler before it
    /// has had its decision logged (or in the same batch).
    decided_until_ns: u64,
    held: Vec<TimedKill<K>>,
    held_since: Option<Instant>,
}

impl<K> Default for EventOrder<K> {
    fn default() -> Self {
        EventOrder {
            decided_until_ns: 0,
            held: Vec::new(),
            held_since: None,
        }
    }
}

impl<K> EventOrder<K> {
    /// The lines of one batch that can be logged now, in time order; the
    /// kills still waiting for their decision are kept for a later batch.
    pub fn order<D>(
        &mut self,
        decisions: Vec<TimedDecision<D>>,
        kills: Vec<TimedKill<K>>,
        now: Instant,
    ) -> Vec<Entry<D, K>> {
        if let Some(end) = decisions.iter().map(|d| d.end_ns).max() {
            self.decided_until_ns = self.decided_until_ns.max(end);
        }
        let mut kills: Vec<TimedKill<K>> = std::mem::take(&mut self.held)
            .into_iter()
            .chain(kills)
            .collect();
        kills.sort_by_key(|k| k.at_ns);
        let waiting_from = kills
            .iter()
            .position(|k| k.by_our_handler && k.at_ns > self.decided_until_ns)
            .unwrap_or(kills.len());
        self.held = kills.split_off(waiting_from);
        self.held_since = match (self.held.is_empty(), self.held_since) {
            (true, _) => None,
            (false, since) => Some(since.unwrap_or(now)),
        };
        let mut out: Vec<(u64, Entry<D, K>)> = decisions
            .into_iter()
            .map(|d| (d.start_ns, Entry::Decision(d.decision)))
            .chain(kills.into_iter().map(|k| (k.at_ns, Entry::Kill(k.kill))))
            .collect();
        // Stable: a decision and a kill at the same nanosecond keep that order.
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, e)| e).collect()
    }

    /// When the kills held now must be logged without their decision.
    pub fn deadline(&self) -> Option<Instant> {
        self.held_since.map(|t| t + HOLD_MAX)
    }

    /// The held kills, if their wait is over at `now`, or `anyway` (a
    /// decision was lost to a full ring buffer, or the daemon stops).
    pub fn release(&mut self, now: Instant, anyway: bool) -> Vec<K> {
        let due = self.deadline().is_some_and(|d| now >= d);
        if !due && !anyway {
            return Vec::new();
        }
        self.held_since = None;
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|k| k.kill)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(start_ns: u64, end_ns: u64, name: &'static str) -> TimedDecision<&'static str> {
        TimedDecision {
            start_ns,
            end_ns,
            decision: name,
        }
    }

    fn kill(at_ns: u64, by_our_handler: bool, name: &'static str) -> TimedKill<&'static str> {
        TimedKill {
            at_ns,
            by_our_handler,
            kill: name,
        }
    }

    type Lines = Vec<Entry<&'static str, &'static str>>;

    #[test]
    fn one_batch_is_sorted_by_time() {
        let mut order = EventOrder::default();
        let out: Lines = order.order(
            vec![decision(100, 200, "d")],
            vec![kill(150, true, "group-sibling"), kill(50, false, "kernel")],
            Instant::now(),
        );
        assert_eq!(
            out,
            vec![
                Entry::Kill("kernel"),
                Entry::Decision("d"),
                Entry::Kill("group-sibling")
            ]
        );
        assert_eq!(order.deadline(), None);
    }

    #[test]
    fn a_kill_waits_for_the_decision_that_made_it() {
        let mut order = EventOrder::default();
        let t0 = Instant::now();
        // The handler (started at 100) is still running: its kills came first.
        let out: Lines = order.order(
            vec![],
            vec![kill(150, true, "sidecar"), kill(160, true, "pause")],
            t0,
        );
        assert_eq!(out, vec![]);
        assert_eq!(order.deadline(), Some(t0 + HOLD_MAX));
        assert_eq!(order.release(t0, false), Vec::<&str>::new());
        let out: Lines = order.order(vec![decision(100, 170, "d")], vec![], t0);
        assert_eq!(
            out,
            vec![
                Entry::Decision("d"),
                Entry::Kill("sidecar"),
                Entry::Kill("pause")
            ]
        );
        assert_eq!(order.deadline(), None);
    }

    #[test]
    fn kills_after_a_waiting_one_wait_too() {
        let mut order = EventOrder::default();
        let t0 = Instant::now();
        let out: Lines = order.order(
            vec![decision(10, 20, "old")],
            vec![
                kill(15, true, "old victim's sibling"),
                kill(150, true, "sibling"),
                kill(300, false, "another handler's"),
            ],
            t0,
        );
        assert_eq!(
            out,
            vec![Entry::Decision("old"), Entry::Kill("old victim's sibling")]
        );
        let out: Lines = order.order(vec![decision(100, 200, "new")], vec![], t0);
        assert_eq!(
            out,
            vec![
                Entry::Decision("new"),
                Entry::Kill("sibling"),
                Entry::Kill("another handler's")
            ]
        );
    }

    #[test]
    fn kills_of_others_never_wait() {
        let mut order = EventOrder::default();
        let out: Lines = order.order(vec![], vec![kill(150, false, "kernel")], Instant::now());
        assert_eq!(out, vec![Entry::Kill("kernel")]);
        assert_eq!(order.deadline(), None);
    }

    #[test]
    fn a_lost_decision_releases_its_kills() {
        let mut order = EventOrder::<&str>::default();
        let t0 = Instant::now();
        let _: Lines = order.order(vec![], vec![kill(150, true, "sibling")], t0);
        assert_eq!(order.release(t0, true), vec!["sibling"]);
        assert_eq!(order.deadline(), None);
    }

    #[test]
    fn a_kill_waits_at_most_hold_max() {
        let mut order = EventOrder::<&str>::default();
        let t0 = Instant::now();
        let _: Lines = order.order(vec![], vec![kill(150, true, "sibling")], t0);
        // A later batch with nothing new keeps the first kill's deadline.
        let _: Lines = order.order(vec![], vec![kill(170, true, "pause")], t0 + HOLD_MAX / 2);
        assert_eq!(order.deadline(), Some(t0 + HOLD_MAX));
        assert_eq!(
            order.release(t0 + HOLD_MAX - Duration::from_millis(1), false),
            Vec::<&str>::new()
        );
        assert_eq!(
            order.release(t0 + HOLD_MAX, false),
            vec!["sibling", "pause"]
        );
    }
}
