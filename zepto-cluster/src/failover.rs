//! Failover decisions of the metadata leader and the in-sync rule of a partition primary.
//!
//! [`plan`] looks at the committed state and returns the `Promote` commands the leader should
//! propose, plus a structured reason for every partition it cannot fail over (what
//! `/admin/cluster` shows). It is idempotent: a new leader calls it again after its election and
//! finishes a failover its predecessor started. The rule: a partition whose primary is DEAD gets
//! its replica promoted, with epoch + 1, only if that replica is in the in-sync set and can serve;
//! otherwise the partition stays unavailable for writes, because promoting a replica that missed
//! acknowledged writes would lose them silently.
//!
//! The other half of the rule lives on the primary ([`ReplicaLag`], [`ack_decision`]): a primary
//! whose replica lags past the bound first commits `ShrinkInSync` through raft, and only then
//! acknowledges writes that only it holds. Raft orders that command against a concurrent
//! `Promote`: whichever commits first wins and the other is rejected on its epoch or in-sync
//! check, so an acknowledged write is never on a copy that is not in the in-sync set.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::state::{ClusterState, Command, NodeId, NodeState, PartitionId, PartitionInfo};
use crate::timing::MonoTime;
use std::time::Duration;

/// Why a partition cannot take writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum UnavailableReason {
    /// The primary is dead and the partition has no replica.
    NoReplica,
    /// The replica missed writes the dead primary acknowledged alone.
    ReplicaNotInSync {
        replica: NodeId,
        in_sync: BTreeSet<NodeId>,
    },
    /// The replica is in sync but is itself not serving (dead, joining, draining).
    ReplicaNotServing { replica: NodeId, state: NodeState },
    /// The replica is not a known member.
    ReplicaUnknown { replica: NodeId },
}

/// A partition left without a writable primary, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unavailable {
    pub partition: PartitionId,
    pub epoch: u64,
    pub primary: NodeId,
    pub primary_state: NodeState,
    #[serde(flatten)]
    pub reason: UnavailableReason,
}

/// What the leader should do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailoverPlan {
    pub commands: Vec<Command>,
    pub unavailable: Vec<Unavailable>,
}

/// Plan failover for every partition whose primary is DEAD.
pub fn plan(state: &ClusterState) -> FailoverPlan {
    plan_filtered(state, |p| primary_state(state, p) == Some(NodeState::Dead))
}

/// Plan failover for the partitions whose primary is `dead` (call after committing its DEAD
/// state; if the committed state does not say DEAD, nothing is planned).
pub fn on_node_dead(state: &ClusterState, dead: NodeId) -> FailoverPlan {
    plan_filtered(state, |p| {
        p.primary == dead && primary_state(state, p) == Some(NodeState::Dead)
    })
}

/// A drain: hand every primary of `node` to its in-sync replica (epoch + 1). Partitions that
/// cannot be handed over are reported; the caller decides whether to wait or go anyway.
pub fn drain(state: &ClusterState, node: NodeId) -> FailoverPlan {
    plan_filtered(state, |p| p.primary == node)
}

fn primary_state(state: &ClusterState, p: &PartitionInfo) -> Option<NodeState> {
    state.nodes.get(&p.primary).map(|n| n.state)
}

fn plan_filtered(state: &ClusterState, pick: impl Fn(&PartitionInfo) -> bool) -> FailoverPlan {
    let mut out = FailoverPlan::default();
    for p in state.partitions.iter().filter(|p| pick(p)) {
        match promotable(state, p) {
            Ok(new_primary) => out.commands.push(Command::Promote {
                partition: p.id,
                new_primary,
                expected_epoch: p.epoch,
            }),
            Err(reason) => out.unavailable.push(Unavailable {
                partition: p.id,
                epoch: p.epoch,
                primary: p.primary,
                // A primary missing from the node table is treated as dead.
                primary_state: primary_state(state, p).unwrap_or(NodeState::Dead),
                reason,
            }),
        }
    }
    out
}

fn promotable(state: &ClusterState, p: &PartitionInfo) -> Result<NodeId, UnavailableReason> {
    let replica = p.replica.ok_or(UnavailableReason::NoReplica)?;
    if !p.in_sync.contains(&replica) {
        return Err(UnavailableReason::ReplicaNotInSync {
            replica,
            in_sync: p.in_sync.clone(),
        });
    }
    let node = state
        .nodes
        .get(&replica)
        .ok_or(UnavailableReason::ReplicaUnknown { replica })?;
    if !node.state.can_serve() {
        return Err(UnavailableReason::ReplicaNotServing {
            replica,
            state: node.state,
        });
    }
    Ok(replica)
}

/// Every partition that cannot take writes right now (its primary is not serving), with the
/// reason failover cannot fix it or, if it can, `None` (failover is pending).
pub fn assess(state: &ClusterState) -> Vec<(PartitionId, Option<Unavailable>)> {
    state
        .partitions
        .iter()
        .filter(|p| !primary_state(state, p).is_some_and(NodeState::can_serve))
        .map(|p| {
            let plan = plan_filtered(state, |q| q.id == p.id);
            (p.id, plan.unavailable.into_iter().next())
        })
        .collect()
}

/// Tracks, on a primary, how far its replica is behind: the time of the oldest replicated
/// record the replica has not acknowledged yet.
#[derive(Debug, Clone)]
pub struct ReplicaLag {
    bound: Duration,
    /// `(seq, sent_at)` of records sent and not yet acknowledged, oldest first.
    unacked: std::collections::VecDeque<(u64, MonoTime)>,
}

impl ReplicaLag {
    pub fn new(bound: Duration) -> ReplicaLag {
        ReplicaLag {
            bound,
            unacked: Default::default(),
        }
    }

    /// A record with sequence number `seq` was sent to the replica at `now`. At most
    /// [`ReplicaLag::MAX_TRACKED`] records are tracked: past that (a replica down for long
    /// under heavy ingest) newer records are not recorded, which keeps the oldest — the
    /// one the lag is measured from — and bounds memory.
    pub fn on_sent(&mut self, seq: u64, now: MonoTime) {
        if self.unacked.len() < Self::MAX_TRACKED {
            self.unacked.push_back((seq, now));
        }
    }

    /// Most unacknowledged records tracked.
    pub const MAX_TRACKED: usize = 1 << 20;

    /// Whether no sent record is waiting for the replica.
    pub fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// The replica acknowledged (fsynced) everything up to and including `seq`.
    pub fn on_acked(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|&(s, _)| s <= seq) {
            self.unacked.pop_front();
        }
    }

    /// Whether `seq` has been acknowledged by the replica.
    pub fn is_acked(&self, seq: u64) -> bool {
        self.unacked.front().is_none_or(|&(s, _)| s > seq)
    }

    /// Whether the oldest unacknowledged record has waited longer than the bound.
    pub fn is_lagging(&self, now: MonoTime) -> bool {
        self.unacked
            .front()
            .is_some_and(|&(_, sent)| now.saturating_since(sent) > self.bound)
    }

    /// Forget everything (new epoch, replica replaced).
    pub fn reset(&mut self) {
        self.unacked.clear();
    }
}

/// What a primary does with a write whose local fsync is done (`replicated` ack mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckDecision {
    /// Acknowledge the client.
    Ack,
    /// Wait for the replica's acknowledgement.
    Wait,
    /// Propose this command and wait for it to commit before acknowledging alone.
    ProposeShrink(Command),
}

/// The in-sync rule for one write on the primary `me` of partition `p`.
pub fn ack_decision(
    p: &PartitionInfo,
    me: NodeId,
    replica_acked: bool,
    lagging: bool,
) -> AckDecision {
    let replica_in_sync = p.replica.is_some_and(|r| p.in_sync.contains(&r));
    if !replica_in_sync || replica_acked {
        // Alone in the in-sync set (committed), or both copies have the write.
        AckDecision::Ack
    } else if lagging {
        AckDecision::ProposeShrink(shrink_in_sync(p.id, p.epoch, me))
    } else {
        AckDecision::Wait
    }
}

/// Re-replication: every partition whose replica is one of `gone` (nodes dead for longer than
/// the replace time) and whose primary can serve gets a new replica: the ACTIVE node, other
/// than its primary and not gone, that holds the fewest copies (ties: the lowest id), so the
/// placement stays balanced. The new replica is not in the in-sync set; its primary copies
/// the partition to it and expands the set once it has caught up.
pub fn rereplicate(state: &ClusterState, gone: &BTreeSet<NodeId>) -> Vec<Command> {
    let mut load: std::collections::BTreeMap<NodeId, usize> = state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Active && !gone.contains(&n.id))
        .map(|n| (n.id, state.partitions_of(n.id).len()))
        .collect();
    let mut out = Vec::new();
    for p in &state.partitions {
        let Some(old) = p.replica.filter(|r| gone.contains(r)) else {
            continue;
        };
        if !primary_state(state, p).is_some_and(NodeState::can_serve) || gone.contains(&p.primary) {
            continue;
        }
        let Some((&to, _)) = load
            .iter()
            .filter(|(id, _)| **id != p.primary && **id != old)
            .min_by_key(|(id, n)| (**n, **id))
        else {
            continue;
        };
        if let Some(n) = load.get_mut(&to) {
            *n += 1;
        }
        out.push(Command::SetReplica {
            partition: p.id,
            expected_epoch: p.epoch,
            replica: Some(to),
        });
    }
    out
}

/// The command a primary commits before it acknowledges writes alone.
pub fn shrink_in_sync(partition: PartitionId, epoch: u64, primary: NodeId) -> Command {
    Command::ShrinkInSync {
        partition,
        epoch,
        primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
            s.apply(&Command::AddNode {
                id,
                http_addr: format!("h{id}"),
                grpc_addr: format!("g{id}"),
            })
            .unwrap();
            s.apply(&Command::SetNodeState {
                id,
                state: NodeState::Active,
            })
            .unwrap();
        }
        // 0: 1->2, 1: 2->3, 2: 3->1, 3: 1->3, 4: 1 alone
        s.apply(&Command::InitPartitions {
            assignments: vec![
                (1, Some(2)),
                (2, Some(3)),
                (3, Some(1)),
                (1, Some(3)),
                (1, None),
            ],
        })
        .unwrap();
        s
    }

    fn kill(s: &mut ClusterState, id: NodeId) {
        s.apply(&Command::SetNodeState {
            id,
            state: NodeState::Dead,
        })
        .unwrap();
    }

    #[test]
    fn replicas_on_a_node_gone_for_good_move_to_the_least_loaded_other_node() {
        let mut s = cluster();
        kill(&mut s, 3);
        let gone = BTreeSet::from([3]);
        // 1: 2->3 and 3: 1->3 lose their replica; 2: 3->1 has a dead primary (failover
        // first); 0 and 4 do not involve node 3.
        let cmds = rereplicate(&s, &gone);
        assert_eq!(
            cmds,
            vec![
                Command::SetReplica {
                    partition: 1,
                    expected_epoch: 1,
                    replica: Some(1)
                },
                Command::SetReplica {
                    partition: 3,
                    expected_epoch: 1,
                    replica: Some(2)
                },
            ]
        );
        for c in &cmds {
            s.apply(c).unwrap();
        }
        // After failover of partition 2 (3 -> 1, epoch 2), its replica (node 3) moves too.
        for c in plan(&s).commands {
            s.apply(&c).unwrap();
        }
        let next = rereplicate(&s, &gone);
        assert_eq!(
            next,
            vec![Command::SetReplica {
                partition: 2,
                expected_epoch: 2,
                replica: Some(2)
            }]
        );
        s.apply(&next[0]).unwrap();
        assert!(rereplicate(&s, &gone).is_empty(), "nothing left on node 3");
        assert!(s.partitions_of(3).is_empty());
        assert!(s
            .partitions
            .iter()
            .all(|p| p.replica.is_some() && p.replica != Some(p.primary) || p.id == 4));
    }

    #[test]
    fn dead_primary_promotes_in_sync_replicas_only() {
        let mut s = cluster();
        // Partition 3's primary acked alone before dying.
        s.apply(&shrink_in_sync(3, 1, 1)).unwrap();
        assert!(
            on_node_dead(&s, 1).commands.is_empty(),
            "not dead yet: nothing to do"
        );
        kill(&mut s, 1);
        let first = on_node_dead(&s, 1);
        assert_eq!(
            first.commands,
            vec![Command::Promote {
                partition: 0,
                new_primary: 2,
                expected_epoch: 1
            }]
        );
        assert_eq!(
            first.unavailable,
            vec![
                Unavailable {
                    partition: 3,
                    epoch: 1,
                    primary: 1,
                    primary_state: NodeState::Dead,
                    reason: UnavailableReason::ReplicaNotInSync {
                        replica: 3,
                        in_sync: [1].into()
                    }
                },
                Unavailable {
                    partition: 4,
                    epoch: 1,
                    primary: 1,
                    primary_state: NodeState::Dead,
                    reason: UnavailableReason::NoReplica
                },
            ]
        );
        // Applying the plan moves partition 0 and bumps its epoch.
        for c in &first.commands {
            s.apply(c).unwrap();
        }
        let p0 = s.partition(0).unwrap();
        assert_eq!((p0.primary, p0.epoch), (2, 2));
        // Idempotent: a new leader re-planning proposes nothing new for partition 0.
        let again = plan(&s);
        assert!(again.commands.is_empty());
        assert_eq!(again.unavailable.len(), 2);
        let json = serde_json::to_string(&again.unavailable[0]).unwrap();
        assert!(
            json.contains("\"reason\":\"replica_not_in_sync\""),
            "{json}"
        );
    }

    #[test]
    fn replica_that_is_dead_too_is_not_promoted() {
        let mut s = cluster();
        kill(&mut s, 3);
        kill(&mut s, 2);
        let plan = on_node_dead(&s, 2);
        assert!(plan.commands.is_empty());
        assert_eq!(
            plan.unavailable[0].reason,
            UnavailableReason::ReplicaNotServing {
                replica: 3,
                state: NodeState::Dead
            }
        );
        let a = assess(&s);
        // Partitions 1 (primary 2) and 2 (primary 3) cannot serve; 2's replica (1) is fine.
        assert_eq!(a.len(), 2);
        assert!(a[0].1.is_some());
        assert_eq!(a[1].0, 2);
        assert!(a[1].1.is_none(), "partition 2 can fail over to node 1");
    }

    #[test]
    fn concurrent_shrink_and_promote_are_ordered_by_the_log() {
        // Promote commits first: the primary's shrink is refused, so it never acks alone.
        let mut s = cluster();
        kill(&mut s, 1);
        let promote = on_node_dead(&s, 1).commands[0].clone();
        s.apply(&promote).unwrap();
        assert!(s.apply(&shrink_in_sync(0, 1, 1)).is_err());
        // Shrink commits first: the promotion is refused, the partition is unavailable.
        let mut s = cluster();
        kill(&mut s, 1);
        let promote = on_node_dead(&s, 1).commands[0].clone();
        s.apply(&shrink_in_sync(0, 1, 1)).unwrap();
        assert!(s.apply(&promote).is_err());
        assert!(matches!(
            on_node_dead(&s, 1).unavailable[0].reason,
            UnavailableReason::ReplicaNotInSync { .. }
        ));
    }

    #[test]
    fn drain_hands_over_live_primaries() {
        let s = cluster();
        let plan = drain(&s, 1);
        assert_eq!(plan.commands.len(), 2, "partitions 0 and 3");
        assert_eq!(plan.unavailable.len(), 1, "partition 4 has no replica");
    }

    #[test]
    fn replica_lag_and_ack_decisions() {
        let s = cluster();
        let p = s.partition(0).unwrap().clone();
        let mut lag = ReplicaLag::new(Duration::from_millis(3_000));
        let t = MonoTime::from_millis;
        lag.on_sent(1, t(0));
        lag.on_sent(2, t(100));
        assert!(!lag.is_acked(1));
        assert!(!lag.is_lagging(t(3_000)));
        assert_eq!(
            ack_decision(&p, 1, lag.is_acked(1), lag.is_lagging(t(3_000))),
            AckDecision::Wait
        );
        lag.on_acked(1);
        assert!(lag.is_acked(1) && !lag.is_acked(2));
        assert_eq!(
            ack_decision(&p, 1, lag.is_acked(1), false),
            AckDecision::Ack
        );
        assert!(!lag.is_lagging(t(3_100)));
        assert!(lag.is_lagging(t(3_101)));
        assert_eq!(
            ack_decision(&p, 1, lag.is_acked(2), lag.is_lagging(t(3_101))),
            AckDecision::ProposeShrink(shrink_in_sync(0, 1, 1))
        );
        // Once the shrink is committed the primary acks alone.
        let mut s2 = s.clone();
        s2.apply(&shrink_in_sync(0, 1, 1)).unwrap();
        assert_eq!(
            ack_decision(s2.partition(0).unwrap(), 1, false, true),
            AckDecision::Ack
        );
        lag.reset();
        assert!(lag.is_acked(2));
    }
}
