//! The coordinator's deadline queue: which group is due when, so that a timer pass looks only
//! at groups whose deadline has passed instead of at every group.
//!
//! A group has at most one live entry: the earliest deadline it was scheduled for. A group whose
//! deadline moves later (every heartbeat moves it) keeps its earlier entry; when that entry comes
//! due the coordinator looks at the group, finds nothing to fire, and schedules it again for its
//! real deadline. That costs one extra look per session timeout instead of a heap entry per
//! heartbeat. Entries superseded by an earlier one stay in the heap until they come due or the
//! heap is compacted, so the heap holds at most about twice the live entries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use tokio::time::Instant;

/// Superseded entries tolerated beyond the live ones before the heap is compacted.
const STALE_ENTRIES_SLACK: usize = 64;

/// Deadlines of groups, earliest first. Not thread-safe by itself: the coordinator keeps it
/// under a mutex that is taken last (never held while taking a group's lock).
#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Instant, String)>>,
    /// The live entry of each scheduled group.
    scheduled: HashMap<String, Instant>,
}

impl DeadlineQueue {
    /// Makes sure `group` is looked at no later than `at`. Returns true when that moved its
    /// entry earlier (or added one), so that the timer may need to wake sooner.
    pub(crate) fn schedule(&mut self, group: &str, at: Instant) -> bool {
        if self.scheduled.get(group).is_some_and(|&s| s <= at) {
            return false;
        }
        self.scheduled.insert(group.to_owned(), at);
        self.heap.push(Reverse((at, group.to_owned())));
        if self.heap.len() > 2 * self.scheduled.len() + STALE_ENTRIES_SLACK {
            let scheduled = &self.scheduled;
            self.heap
                .retain(|Reverse((at, id))| scheduled.get(id) == Some(at));
        }
        debug_assert!(self.heap.len() <= 2 * self.scheduled.len() + STALE_ENTRIES_SLACK + 1);
        true
    }

    /// Takes out the groups whose entry is due at `now`; they are no longer scheduled.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Some(Reverse((at, id))) = self.heap.pop() else {
                break;
            };
            if self.scheduled.get(&id) == Some(&at) {
                self.scheduled.remove(&id);
                due.push(id);
            }
        }
        due
    }

    /// The earliest live entry (superseded entries on top are dropped on the way).
    pub(crate) fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.heap.peek() {
            if self.scheduled.get(id) == Some(at) {
                return Some(*at);
            }
            self.heap.pop();
        }
        None
    }

    /// Forgets a group (it was removed).
    pub(crate) fn remove(&mut self, group: &str) {
        self.scheduled.remove(group);
    }

    /// Number of groups scheduled.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.scheduled.len()
    }

    /// Entries in the heap, live or superseded.
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn group_timer_pass_takes_only_the_groups_whose_deadline_passed() {
        let now = Instant::now();
        let mut q = DeadlineQueue::default();
        for i in 0..1000 {
            q.schedule(&format!("idle-{i}"), now + Duration::from_secs(60));
        }
        q.schedule("due", now - Duration::from_millis(1));
        assert_eq!(q.pop_due(now), ["due"]);
        assert_eq!(q.pop_due(now), Vec::<String>::new(), "popped once");
        assert_eq!(q.len(), 1000);
        assert_eq!(q.next(), Some(now + Duration::from_secs(60)));
    }

    #[test]
    fn heartbeats_that_move_a_deadline_later_add_no_entries() {
        let now = Instant::now();
        let mut q = DeadlineQueue::default();
        assert!(q.schedule("g", now + Duration::from_secs(10)));
        for ms in 0..10_000u64 {
            assert!(!q.schedule(
                "g",
                now + Duration::from_secs(10) + Duration::from_millis(ms)
            ));
        }
        assert_eq!(q.heap_len(), 1);
        // The early entry comes due; the coordinator then schedules the real deadline.
        assert_eq!(q.pop_due(now + Duration::from_secs(10)), ["g"]);
        assert!(q.schedule("g", now + Duration::from_secs(20)));
        assert_eq!(q.next(), Some(now + Duration::from_secs(20)));
    }

    #[test]
    fn deadlines_moved_earlier_leave_a_bounded_number_of_stale_entries() {
        let now = Instant::now();
        let mut q = DeadlineQueue::default();
        for ms in (0..10_000u64).rev() {
            assert!(q.schedule("g", now + Duration::from_millis(ms)));
        }
        assert!(
            q.heap_len() <= 2 + STALE_ENTRIES_SLACK + 1,
            "{}",
            q.heap_len()
        );
        assert_eq!(q.next(), Some(now));
        assert_eq!(q.pop_due(now + Duration::from_secs(60)), ["g"]);
        assert_eq!(q.next(), None);
    }

    #[test]
    fn a_removed_group_is_not_due() {
        let now = Instant::now();
        let mut q = DeadlineQueue::default();
        q.schedule("gone", now);
        q.remove("gone");
        assert_eq!(q.pop_due(now), Vec::<String>::new());
        assert_eq!(q.next(), None);
        // A new group of the same name is scheduled afresh.
        assert!(q.schedule("gone", now));
        assert_eq!(q.pop_due(now), ["gone"]);
    }
}
