//! The data behind `GET /admin/cluster`: nodes with their state and heartbeat age, the raft
//! leader and term, and every partition with its owners, epoch, in-sync set and, when it
//! cannot take writes, why. Built from committed metadata plus what the local coordinator
//! knows; serialised as JSON by the HTTP layer.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::coordinator::Coordinator;
use crate::failover::{self, UnavailableReason};
use crate::state::{ClusterState, NodeId, NodeState, PartitionId};
use crate::timing::MonoTime;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: NodeId,
    pub http_addr: String,
    pub grpc_addr: String,
    pub state: NodeState,
    /// Milliseconds since the leader last heard from the node; only known on the leader.
    pub last_heartbeat_age_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    pub id: PartitionId,
    pub primary: NodeId,
    pub replica: Option<NodeId>,
    pub epoch: u64,
    pub in_sync: BTreeSet<NodeId>,
    /// Whether the primary can take writes per the committed metadata.
    pub writable: bool,
    /// Not writable, and failover will fix it (the promotion is pending).
    pub failover_pending: bool,
    /// Not writable, and failover cannot fix it: why.
    pub unavailable: Option<UnavailableReason>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub metadata_version: u64,
    pub raft_leader: Option<NodeId>,
    pub raft_term: u64,
    pub nodes: Vec<NodeView>,
    pub partitions: Vec<PartitionView>,
}

/// Build the view. `coordinator` is this node's (it knows heartbeat ages only while leading).
pub fn cluster_view(
    state: &ClusterState,
    raft_leader: Option<NodeId>,
    raft_term: u64,
    coordinator: Option<&Coordinator>,
    now: MonoTime,
) -> ClusterView {
    let leading = coordinator.filter(|c| c.is_leading());
    let nodes = state
        .nodes
        .values()
        .map(|n| NodeView {
            id: n.id,
            http_addr: n.http_addr.clone(),
            grpc_addr: n.grpc_addr.clone(),
            state: n.state,
            last_heartbeat_age_ms: leading
                .and_then(|c| c.last_heard(n.id))
                .map(|t| u64::try_from(now.saturating_since(t).as_millis()).unwrap_or(u64::MAX)),
        })
        .collect();
    let assessed = failover::assess(state);
    let partitions = state
        .partitions
        .iter()
        .map(|p| {
            let a = assessed.iter().find(|(id, _)| *id == p.id);
            PartitionView {
                id: p.id,
                primary: p.primary,
                replica: p.replica,
                epoch: p.epoch,
                in_sync: p.in_sync.clone(),
                writable: a.is_none(),
                failover_pending: matches!(a, Some((_, None))),
                unavailable: a.and_then(|(_, u)| u.as_ref().map(|u| u.reason.clone())),
            }
        })
        .collect();
    ClusterView {
        metadata_version: state.version,
        raft_leader,
        raft_term,
        nodes,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::timing::Timings;

    #[test]
    fn view_shows_heartbeat_ages_and_why_partitions_are_down() {
        let mut s = ClusterState::default();
        for id in 1..=2 {
            s.apply(&Command::AddNode {
                id,
                http_addr: format!("n{id}:8123"),
                grpc_addr: format!("n{id}:8124"),
            })
            .unwrap();
            s.apply(&Command::SetNodeState {
                id,
                state: NodeState::Active,
            })
            .unwrap();
        }
        s.apply(&Command::InitPartitions {
            assignments: vec![(1, Some(2)), (2, Some(1)), (1, None)],
        })
        .unwrap();
        let mut c = Coordinator::new(&Timings::defaults());
        c.observe_leadership(true, 4, &s, MonoTime::from_millis(0));
        c.on_heartbeat(2, MonoTime::from_millis(1_500));
        s.apply(&Command::SetNodeState {
            id: 1,
            state: NodeState::Dead,
        })
        .unwrap();
        let v = cluster_view(&s, Some(2), 4, Some(&c), MonoTime::from_millis(2_000));
        assert_eq!(v.nodes[0].last_heartbeat_age_ms, Some(2_000));
        assert_eq!(v.nodes[1].last_heartbeat_age_ms, Some(500));
        assert!(v.partitions[0].failover_pending && !v.partitions[0].writable);
        assert!(v.partitions[1].writable && v.partitions[1].unavailable.is_none());
        assert_eq!(
            v.partitions[2].unavailable,
            Some(UnavailableReason::NoReplica)
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["nodes"][0]["state"], "DEAD");
        assert_eq!(json["partitions"][2]["unavailable"]["reason"], "no_replica");
        assert_eq!(json["raft_term"], 4);
        // A follower does not know heartbeat ages.
        let v = cluster_view(&s, Some(2), 4, None, MonoTime::from_millis(2_000));
        assert!(v.nodes.iter().all(|n| n.last_heartbeat_age_ms.is_none()));
    }
}
