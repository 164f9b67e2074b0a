//! The failure detector the metadata leader runs: heartbeats in, state transitions out.
//!
//! A pure state machine: [`Detector::on_heartbeat`] records a heartbeat at a time the caller
//! passes, [`Detector::tick`] returns the transitions that became due. The leader turns each
//! transition into a raft proposal (`SetNodeState`), so only the side of a network partition
//! that holds the raft majority can ever declare a node dead.
//!
//! A freshly elected leader has no heartbeat history it can trust (the previous leader saw the
//! heartbeats), so [`Detector::start_term`] starts every node's clock at the election time:
//! nobody is declared dead from stale data, at the cost of detecting a node that died just
//! before the election one dead-time after the election.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::state::NodeId;
use crate::timing::{MonoTime, Timings};

/// What the detector believes about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Liveness {
    Active,
    Suspect,
    Dead,
}

/// A change of a node's liveness that the leader should commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub node: NodeId,
    pub from: Liveness,
    pub to: Liveness,
    /// When the last heartbeat (or the clock start) was.
    pub last_heard: MonoTime,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    last_heard: MonoTime,
    liveness: Liveness,
}

/// Heartbeat-based failure detector. See the module doc.
#[derive(Debug, Clone)]
pub struct Detector {
    suspect_after: Duration,
    dead_after: Duration,
    nodes: BTreeMap<NodeId, Tracked>,
}

impl Detector {
    pub fn new(timings: &Timings) -> Detector {
        Detector {
            suspect_after: timings.suspect_after,
            dead_after: timings.dead_after,
            nodes: BTreeMap::new(),
        }
    }

    /// Start a new leadership term at `now`: track exactly `nodes`, each with its clock starting
    /// at `now` and with the liveness the committed metadata says it has (a node already DEAD
    /// stays dead until it heartbeats).
    pub fn start_term(
        &mut self,
        nodes: impl IntoIterator<Item = (NodeId, Liveness)>,
        now: MonoTime,
    ) {
        self.nodes = nodes
            .into_iter()
            .map(|(id, liveness)| {
                (
                    id,
                    Tracked {
                        last_heard: now,
                        liveness,
                    },
                )
            })
            .collect();
    }

    /// Start tracking a node (a new member) as ACTIVE from `now`; no-op if already tracked.
    pub fn track(&mut self, node: NodeId, now: MonoTime) {
        self.nodes.entry(node).or_insert(Tracked {
            last_heard: now,
            liveness: Liveness::Active,
        });
    }

    /// Stop tracking a node (removed from the cluster).
    pub fn untrack(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    /// Keep tracking only the nodes for which `keep` is true (members that were removed go).
    pub fn retain(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        self.nodes.retain(|&id, _| keep(id));
    }

    /// Record a heartbeat from `node` at `now`. Returns the transition back to ACTIVE if the node
    /// was SUSPECT or DEAD. A heartbeat from an untracked node starts tracking it. A heartbeat
    /// older than the last one does not move the clock back.
    pub fn on_heartbeat(&mut self, node: NodeId, now: MonoTime) -> Option<Transition> {
        let t = self.nodes.entry(node).or_insert(Tracked {
            last_heard: now,
            liveness: Liveness::Active,
        });
        t.last_heard = t.last_heard.max(now);
        if t.liveness == Liveness::Active {
            return None;
        }
        let from = t.liveness;
        t.liveness = Liveness::Active;
        Some(Transition {
            node,
            from,
            to: Liveness::Active,
            last_heard: t.last_heard,
        })
    }

    /// The transitions due at `now`, in node order. ACTIVE goes to SUSPECT after the suspect
    /// time and to DEAD after the dead time (directly, if the caller ticked late).
    pub fn tick(&mut self, now: MonoTime) -> Vec<Transition> {
        let mut out = Vec::new();
        for (&node, t) in self.nodes.iter_mut() {
            let silent = now.saturating_since(t.last_heard);
            let due = if silent >= self.dead_after {
                Liveness::Dead
            } else if silent >= self.suspect_after {
                Liveness::Suspect
            } else {
                Liveness::Active
            };
            // Only ever move towards DEAD here; recovery happens on a heartbeat.
            if due > t.liveness {
                out.push(Transition {
                    node,
                    from: t.liveness,
                    to: due,
                    last_heard: t.last_heard,
                });
                t.liveness = due;
            }
        }
        out
    }

    pub fn liveness(&self, node: NodeId) -> Option<Liveness> {
        self.nodes.get(&node).map(|t| t.liveness)
    }

    /// When the node was last heard from (for `/admin/cluster`'s heartbeat age).
    pub fn last_heard(&self, node: NodeId) -> Option<MonoTime> {
        self.nodes.get(&node).map(|t| t.last_heard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_millis(ms)
    }

    fn detector() -> Detector {
        let mut d = Detector::new(&Timings::defaults());
        d.start_term([(1, Liveness::Active), (2, Liveness::Active)], at(0));
        d
    }

    #[test]
    fn silent_node_goes_suspect_then_dead_at_the_derived_times() {
        let mut d = detector();
        d.on_heartbeat(2, at(9_000));
        assert!(d.tick(at(2_999)).is_empty());
        let t = d.tick(at(3_000));
        assert_eq!(
            t,
            vec![Transition {
                node: 1,
                from: Liveness::Active,
                to: Liveness::Suspect,
                last_heard: at(0)
            }]
        );
        assert!(d.tick(at(9_999)).is_empty(), "suspect is reported once");
        let t = d.tick(at(10_000));
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].node, t[0].from, t[0].to),
            (1, Liveness::Suspect, Liveness::Dead)
        );
        assert!(
            d.tick(at(50_000)).iter().all(|t| t.node != 1),
            "dead is reported once"
        );
        assert_eq!(d.liveness(2), Some(Liveness::Dead));
    }

    #[test]
    fn late_tick_goes_straight_to_dead() {
        let mut d = detector();
        let t = d.tick(at(12_000));
        assert_eq!(t.len(), 2);
        assert!(t
            .iter()
            .all(|t| t.from == Liveness::Active && t.to == Liveness::Dead));
    }

    #[test]
    fn heartbeat_brings_a_node_back_to_active() {
        let mut d = detector();
        d.tick(at(3_500));
        assert_eq!(d.liveness(1), Some(Liveness::Suspect));
        let back = d.on_heartbeat(1, at(3_600)).unwrap();
        assert_eq!((back.from, back.to), (Liveness::Suspect, Liveness::Active));
        assert_eq!(d.on_heartbeat(1, at(3_700)), None, "active stays quiet");
        d.tick(at(20_000));
        assert_eq!(d.liveness(1), Some(Liveness::Dead));
        let back = d.on_heartbeat(1, at(20_001)).unwrap();
        assert_eq!((back.from, back.to), (Liveness::Dead, Liveness::Active));
        assert!(d.tick(at(20_002)).is_empty());
    }

    #[test]
    fn new_term_restarts_every_clock_so_stale_data_kills_nobody() {
        let mut d = detector();
        // The previous leader's data: node 1 silent since 0. A new leader elected at 9 s must
        // not declare it dead at 10 s; it waits a full dead time from its election.
        d.start_term([(1, Liveness::Active), (2, Liveness::Active)], at(9_000));
        assert!(d.tick(at(10_000)).is_empty());
        assert!(d.tick(at(18_999)).iter().all(|t| t.to != Liveness::Dead));
        assert!(d
            .tick(at(19_000))
            .iter()
            .any(|t| t.node == 1 && t.to == Liveness::Dead));
    }

    #[test]
    fn dead_nodes_stay_dead_across_terms_until_they_heartbeat() {
        let mut d = detector();
        d.start_term([(1, Liveness::Dead)], at(0));
        assert!(d.tick(at(100_000)).is_empty());
        assert!(d.on_heartbeat(1, at(100_001)).is_some());
    }

    #[test]
    fn old_heartbeats_do_not_move_the_clock_back_and_unknown_nodes_are_tracked() {
        let mut d = detector();
        d.on_heartbeat(1, at(5_000));
        d.on_heartbeat(1, at(1_000));
        assert_eq!(d.last_heard(1), Some(at(5_000)));
        assert_eq!(d.on_heartbeat(7, at(5_000)), None);
        assert_eq!(d.liveness(7), Some(Liveness::Active));
        d.untrack(7);
        assert_eq!(d.liveness(7), None);
        d.on_heartbeat(9, at(5_000));
        d.retain(|id| id != 9);
        assert_eq!(d.liveness(9), None);
        assert_eq!(d.liveness(1), Some(Liveness::Active));
        d.track(8, at(0));
        d.track(8, at(4_000)); // no-op: keeps its first clock
        assert_eq!(d.last_heard(8), Some(at(0)));
    }
}
