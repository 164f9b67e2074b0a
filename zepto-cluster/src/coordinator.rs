//! The metadata leader's control loop as a pure state machine: heartbeats and time in,
//! commands to propose out.
//!
//! [`Coordinator`] glues the [`Detector`] to the committed [`ClusterState`] and to
//! [`failover::plan`]. Every tick it derives, from the committed state and what the detector
//! believes, the commands that would bring the metadata in line (node state changes, then
//! promotions once a DEAD state has committed), and returns the ones it has not proposed
//! recently. Because it always re-derives from the committed state, it is idempotent and
//! self-healing: a proposal lost with a leader change is simply derived again by the next
//! leader, and a command that committed stops being derived.
//!
//! It only acts while this node leads the metadata group; the detector's clocks restart at
//! every new term (see [`crate::detector`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::detector::{Detector, Liveness};
use crate::failover;
use crate::state::{ClusterState, Command, NodeId, NodeState};
use crate::timing::{MonoTime, Timings};

/// See the module doc.
#[derive(Debug, Clone)]
pub struct Coordinator {
    detector: Detector,
    /// `Some(term)` while this node leads in that term.
    leading: Option<u64>,
    /// Commands proposed and not yet reflected in the state, with when they were proposed.
    in_flight: BTreeMap<String, MonoTime>,
    /// After this long without seeing a proposal's effect, propose it again.
    retry_after: Duration,
    /// A DEAD node unheard of for this long is replaced as a replica (`None`: never).
    replace_after: Option<Duration>,
}

impl Coordinator {
    pub fn new(timings: &Timings) -> Coordinator {
        Coordinator {
            detector: Detector::new(timings),
            leading: None,
            in_flight: BTreeMap::new(),
            // A proposal commits within a round trip or is lost with its leader (then the
            // election takes up to the max election timeout): retry after that.
            retry_after: timings.max_election_timeout(),
            replace_after: None,
        }
    }

    /// Give the replicas of a node that stays DEAD for `after` (counted from its last
    /// heartbeat, or from this leader's election) to other nodes ([`failover::rereplicate`]).
    pub fn with_replace_after(mut self, after: Duration) -> Coordinator {
        self.replace_after = Some(after);
        self
    }

    /// Tell the coordinator whether this node leads, and in which term. Idempotent: call it
    /// after every `MetaNode::advance`. Becoming leader (or a new term) restarts every
    /// failure-detector clock at `now`.
    pub fn observe_leadership(
        &mut self,
        is_leader: bool,
        term: u64,
        state: &ClusterState,
        now: MonoTime,
    ) {
        if !is_leader {
            self.leading = None;
            return;
        }
        if self.leading != Some(term) {
            self.leading = Some(term);
            self.in_flight.clear();
            let nodes = state.nodes.values().map(|n| {
                let l = if n.state == NodeState::Dead {
                    Liveness::Dead
                } else {
                    Liveness::Active
                };
                (n.id, l)
            });
            self.detector.start_term(nodes, now);
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading.is_some()
    }

    /// A heartbeat from `node`, received at `now`. Returns whether to acknowledge it: only a
    /// leader does, and the acknowledgement is what renews the sender's write lease
    /// ([`crate::fencing::WriteLease::on_majority_contact`]). A deposed leader that has not
    /// noticed yet still acknowledges; `Timings` bounds that window (see [`crate::timing`]).
    pub fn on_heartbeat(&mut self, node: NodeId, now: MonoTime) -> bool {
        if self.is_leading() {
            self.detector.on_heartbeat(node, now);
            true
        } else {
            false
        }
    }

    /// When the leader last heard from `node` (for `/admin/cluster`).
    pub fn last_heard(&self, node: NodeId) -> Option<MonoTime> {
        self.detector.last_heard(node)
    }

    /// The commands to propose now. Empty unless leading.
    pub fn tick(&mut self, state: &ClusterState, now: MonoTime) -> Vec<Command> {
        if !self.is_leading() {
            return Vec::new();
        }
        for id in state.nodes.keys() {
            self.detector.track(*id, now);
        }
        self.detector.retain(|id| state.nodes.contains_key(&id));
        self.detector.tick(now);
        let mut wanted = Vec::new();
        for n in state.nodes.values() {
            let Some(l) = self.detector.liveness(n.id) else {
                continue;
            };
            let holds = state.partitions_of(n.id);
            // Caught up: in the in-sync set of every partition it is a copy of.
            let caught_up = holds
                .iter()
                .filter_map(|&p| state.partition(p))
                .all(|p| p.in_sync.contains(&n.id));
            if let Some(to) = target_state(n.state, l, !holds.is_empty(), caught_up) {
                wanted.push(Command::SetNodeState {
                    id: n.id,
                    state: to,
                });
            }
        }
        wanted.extend(failover::plan(state).commands);
        if let Some(after) = self.replace_after {
            let gone: std::collections::BTreeSet<NodeId> = state
                .nodes
                .values()
                .filter(|n| n.state == NodeState::Dead)
                .filter(|n| {
                    self.detector
                        .last_heard(n.id)
                        .is_some_and(|t| now.saturating_since(t) >= after)
                })
                .map(|n| n.id)
                .collect();
            if !gone.is_empty() {
                wanted.extend(failover::rereplicate(state, &gone));
            }
        }

        // Forget in-flight proposals that are no longer wanted (they took effect or became
        // moot); propose wanted ones not proposed within `retry_after`.
        let keys: Vec<String> = wanted.iter().map(|c| format!("{c:?}")).collect();
        self.in_flight.retain(|k, _| keys.contains(k));
        let mut out = Vec::new();
        for (cmd, key) in wanted.into_iter().zip(keys) {
            let due = self
                .in_flight
                .get(&key)
                .is_none_or(|&at| now.saturating_since(at) >= self.retry_after);
            if due {
                self.in_flight.insert(key, now);
                out.push(cmd);
            }
        }
        out
    }
}

/// The node state the metadata should move to, given the committed state and the detector's
/// belief; `None` if it is right as it is.
fn target_state(
    committed: NodeState,
    seen: Liveness,
    holds_partitions: bool,
    caught_up: bool,
) -> Option<NodeState> {
    use NodeState::*;
    let to = match (committed, seen) {
        // A joining node that heartbeats and is in sync everywhere it holds a copy (trivially,
        // if it holds none) can serve.
        (Joining, Liveness::Active) if caught_up => Active,
        (Active, Liveness::Suspect) => Suspect,
        (Suspect, Liveness::Active) => Active,
        (Active | Suspect | Joining | Draining, Liveness::Dead) => Dead,
        // Back from the dead: a node that holds partitions must catch them up first
        // (JOINING; the migrator makes it ACTIVE); one that holds none can serve at once.
        (Dead, Liveness::Active) if holds_partitions => Joining,
        (Dead, Liveness::Active) => Active,
        _ => return None,
    };
    Some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_millis(ms)
    }

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&Command::AddNode {
                id,
                http_addr: String::new(),
                grpc_addr: String::new(),
            })
            .unwrap();
            s.apply(&Command::SetNodeState {
                id,
                state: NodeState::Active,
            })
            .unwrap();
        }
        s.apply(&crate::placement::init_command(
            crate::placement::place(&[1, 2, 3], 6, 2).unwrap(),
        ))
        .unwrap();
        s
    }

    /// Apply what the coordinator proposes, as if each proposal committed at once.
    fn commit(s: &mut ClusterState, cmds: &[Command]) {
        for c in cmds {
            s.apply(c).unwrap();
        }
    }

    #[test]
    fn silent_node_is_suspected_declared_dead_and_failed_over() {
        let t = Timings::defaults();
        let mut c = Coordinator::new(&t);
        let mut s = cluster();
        assert!(c.tick(&s, at(0)).is_empty(), "followers propose nothing");
        assert!(
            !c.on_heartbeat(1, at(0)),
            "followers do not acknowledge heartbeats"
        );
        c.observe_leadership(true, 2, &s, at(0));
        let mut dead_at = None;
        let mut promoted_at = None;
        for ms in (0..15_000).step_by(100) {
            // Nodes 1 and 2 heartbeat every second; node 3 is silent.
            if ms % 1_000 == 0 {
                c.on_heartbeat(1, at(ms));
                c.on_heartbeat(2, at(ms));
            }
            let cmds = c.tick(&s, at(ms));
            commit(&mut s, &cmds);
            if dead_at.is_none() && s.nodes[&3].state == NodeState::Dead {
                dead_at = Some(ms);
            }
            if promoted_at.is_none() && s.partitions.iter().all(|p| p.primary != 3) {
                promoted_at = Some(ms);
            }
        }
        assert_eq!(dead_at, Some(10_000));
        // Promotions follow on the next tick, once DEAD is committed.
        assert_eq!(promoted_at, Some(10_100));
        assert_eq!(s.nodes[&1].state, NodeState::Active);
        assert!(s.partitions.iter().filter(|p| p.epoch == 2).count() == 2);
    }

    #[test]
    fn proposals_are_not_repeated_until_the_retry_interval() {
        let t = Timings::defaults();
        let mut c = Coordinator::new(&t);
        let s = cluster();
        c.observe_leadership(true, 1, &s, at(0));
        assert!(c.on_heartbeat(1, at(2_900)));
        c.on_heartbeat(2, at(2_900));
        let first = c.tick(&s, at(3_000));
        assert_eq!(
            first,
            vec![Command::SetNodeState {
                id: 3,
                state: NodeState::Suspect
            }]
        );
        // Not committed yet (e.g. the proposal was lost): nothing new until the retry interval.
        assert!(c.tick(&s, at(3_100)).is_empty());
        assert_eq!(c.tick(&s, at(3_000 + 2_000)), first);
    }

    #[test]
    fn new_term_restarts_clocks_and_returning_nodes_rejoin() {
        let t = Timings::defaults();
        let mut c = Coordinator::new(&t);
        let mut s = cluster();
        c.observe_leadership(true, 1, &s, at(0));
        c.observe_leadership(false, 1, &s, at(5_000));
        assert!(c.tick(&s, at(50_000)).is_empty());
        // Leader again in term 3 at 50 s: nobody is dead before 60 s.
        c.observe_leadership(true, 3, &s, at(50_000));
        c.observe_leadership(true, 3, &s, at(55_000)); // same term: no restart
        for id in [1, 2] {
            c.on_heartbeat(id, at(59_000));
        }
        let cmds = c.tick(&s, at(59_999));
        assert!(cmds.iter().all(|c| !matches!(
            c,
            Command::SetNodeState {
                state: NodeState::Dead,
                ..
            }
        )));
        commit(&mut s, &cmds);
        let cmds = c.tick(&s, at(60_000));
        assert_eq!(
            cmds,
            vec![Command::SetNodeState {
                id: 3,
                state: NodeState::Dead
            }]
        );
        commit(&mut s, &cmds);
        let cmds = c.tick(&s, at(60_100));
        assert_eq!(cmds.len(), 2, "two promotions: {cmds:?}");
        commit(&mut s, &cmds);
        // Node 3 comes back: it is still the (out-of-sync) replica of its old partitions, so it
        // rejoins as JOINING, not ACTIVE.
        c.on_heartbeat(3, at(61_000));
        let cmds = c.tick(&s, at(61_000));
        assert_eq!(
            cmds,
            vec![Command::SetNodeState {
                id: 3,
                state: NodeState::Joining
            }]
        );
        commit(&mut s, &cmds);
        // It stays JOINING until it is back in the in-sync set of every partition it holds.
        for id in 1..=3 {
            c.on_heartbeat(id, at(62_000));
        }
        let cmds = c.tick(&s, at(62_000));
        assert!(cmds.is_empty(), "{cmds:?}");
        let held: Vec<(u32, u64)> = s
            .partitions
            .iter()
            .filter(|p| p.replica == Some(3) && !p.in_sync.contains(&3))
            .map(|p| (p.id, p.epoch))
            .collect();
        assert!(!held.is_empty());
        for (partition, epoch) in held {
            s.apply(&Command::ExpandInSync {
                partition,
                epoch,
                node: 3,
            })
            .unwrap();
        }
        assert_eq!(
            c.tick(&s, at(62_100)),
            vec![Command::SetNodeState {
                id: 3,
                state: NodeState::Active
            }]
        );
    }

    #[test]
    fn target_states() {
        use NodeState::*;
        assert_eq!(target_state(Active, Liveness::Active, true, true), None);
        assert_eq!(target_state(Draining, Liveness::Suspect, true, true), None);
        assert_eq!(
            target_state(Draining, Liveness::Dead, true, true),
            Some(Dead)
        );
        assert_eq!(
            target_state(Dead, Liveness::Active, false, true),
            Some(Active)
        );
        assert_eq!(
            target_state(Dead, Liveness::Active, true, false),
            Some(Joining)
        );
        assert_eq!(target_state(Dead, Liveness::Dead, true, true), None);
        assert_eq!(target_state(Joining, Liveness::Suspect, false, true), None);
        assert_eq!(target_state(Joining, Liveness::Active, true, false), None);
        assert_eq!(
            target_state(Joining, Liveness::Active, true, true),
            Some(Active)
        );
    }
}
