//! The partition assignors a group leader runs: Kafka's `range` and `roundrobin`, with the
//! same results as Kafka's Java `RangeAssignor` and `RoundRobinAssignor`, so members of one
//! group may mix Quiver and other Kafka clients.

use std::collections::{BTreeMap, BTreeSet};

/// How the leader of a consumer group splits partitions among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Per topic, consecutive ranges of partitions to the members subscribed to it, in member
    /// id order; the first `partitions % members` members get one more. Kafka's default.
    #[default]
    Range,
    /// Every subscribed partition (by topic, then partition) dealt in turn to the members
    /// subscribed to its topic, in member id order.
    RoundRobin,
}

impl Assignor {
    /// The protocol name Kafka uses for it in JoinGroup.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }

    /// The assignor named `name` in JoinGroup, if this client has it.
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            "range" => Some(Assignor::Range),
            "roundrobin" => Some(Assignor::RoundRobin),
            _ => None,
        }
    }

    /// Assigns the partitions of the topics `members` subscribe to (`partitions`: the count of
    /// each topic; a topic missing from it has none). Every member gets an entry, possibly
    /// empty; topics come sorted, and so do partitions within a topic.
    pub fn assign(
        self,
        members: &BTreeMap<String, Vec<String>>,
        partitions: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<(String, Vec<i32>)>> {
        let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
            .keys()
            .map(|m| (m.clone(), BTreeMap::new()))
            .collect();
        // Subscribers of each topic, in member id order (BTreeMap keys are sorted).
        let mut subscribers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (member, topics) in members {
            let unique: BTreeSet<&str> = topics.iter().map(String::as_str).collect();
            for topic in unique {
                subscribers.entry(topic).or_default().push(member);
            }
        }
        match self {
            Assignor::Range => {
                for (topic, consumers) in &subscribers {
                    let count = partitions.get(*topic).copied().unwrap_or(0).max(0);
                    let n = consumers.len() as i32;
                    let (each, extra) = (count / n, count % n);
                    for (i, member) in consumers.iter().enumerate() {
                        let i = i as i32;
                        let start = each * i + i.min(extra);
                        let len = each + i32::from(i < extra);
                        if len > 0
                            && let Some(assigned) = out.get_mut(*member)
                        {
                            assigned.insert((*topic).to_owned(), (start..start + len).collect());
                        }
                    }
                }
            }
            Assignor::RoundRobin => {
                let all: Vec<&str> = members.keys().map(String::as_str).collect();
                let mut next = 0usize;
                for (topic, consumers) in &subscribers {
                    let count = partitions.get(*topic).copied().unwrap_or(0).max(0);
                    for partition in 0..count {
                        // The next member in the ring that subscribes to this topic.
                        while !consumers.contains(&all[next % all.len()]) {
                            next += 1;
                        }
                        let member = all[next % all.len()];
                        next += 1;
                        if let Some(assigned) = out.get_mut(member) {
                            assigned
                                .entry((*topic).to_owned())
                                .or_default()
                                .push(partition);
                        }
                    }
                }
            }
        }
        out.into_iter()
            .map(|(m, topics)| (m, topics.into_iter().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        spec.iter()
            .map(|(m, ts)| {
                (
                    (*m).to_owned(),
                    ts.iter().map(|t| (*t).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn counts(spec: &[(&str, i32)]) -> BTreeMap<String, i32> {
        spec.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    fn of<'a>(
        result: &'a BTreeMap<String, Vec<(String, Vec<i32>)>>,
        member: &str,
    ) -> Vec<(&'a str, &'a [i32])> {
        result
            .get(member)
            .map(|ts| ts.iter().map(|(t, p)| (t.as_str(), p.as_slice())).collect())
            .unwrap_or_default()
    }

    /// Kafka's RangeAssignor documentation example: t0 and t1 of 3 partitions, C0 and C1.
    #[test]
    fn range_gives_each_member_consecutive_partitions_per_topic() {
        let m = members(&[("C0", &["t0", "t1"]), ("C1", &["t0", "t1"])]);
        let r = Assignor::Range.assign(&m, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(of(&r, "C0"), [("t0", &[0, 1][..]), ("t1", &[0, 1][..])]);
        assert_eq!(of(&r, "C1"), [("t0", &[2][..]), ("t1", &[2][..])]);
    }

    /// Kafka's RoundRobinAssignor documentation example.
    #[test]
    fn round_robin_deals_partitions_across_topics() {
        let m = members(&[("C0", &["t0", "t1"]), ("C1", &["t0", "t1"])]);
        let r = Assignor::RoundRobin.assign(&m, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(of(&r, "C0"), [("t0", &[0, 2][..]), ("t1", &[1][..])]);
        assert_eq!(of(&r, "C1"), [("t0", &[1][..]), ("t1", &[0, 2][..])]);
    }

    /// The unequal-subscriptions example: C0 on t0; C1 on t0, t1; C2 on t0, t1, t2.
    #[test]
    fn round_robin_skips_members_not_subscribed_to_a_topic() {
        let m = members(&[
            ("C0", &["t0"]),
            ("C1", &["t0", "t1"]),
            ("C2", &["t0", "t1", "t2"]),
        ]);
        let r = Assignor::RoundRobin.assign(&m, &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]));
        assert_eq!(of(&r, "C0"), [("t0", &[0][..])]);
        assert_eq!(of(&r, "C1"), [("t1", &[0][..])]);
        assert_eq!(of(&r, "C2"), [("t1", &[1][..]), ("t2", &[0, 1, 2][..])]);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_empty_and_every_partition_once() {
        let m = members(&[("a", &["t"]), ("b", &["t"]), ("c", &["t", "missing"])]);
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let r = assignor.assign(&m, &counts(&[("t", 2)]));
            assert_eq!(r.len(), 3, "{assignor:?}: every member has an entry");
            let mut all: Vec<i32> = r
                .values()
                .flat_map(|ts| ts.iter().flat_map(|(_, p)| p.iter().copied()))
                .collect();
            all.sort_unstable();
            assert_eq!(all, [0, 1], "{assignor:?}");
            assert_eq!(Assignor::from_name(assignor.name()), Some(assignor));
        }
    }
}
