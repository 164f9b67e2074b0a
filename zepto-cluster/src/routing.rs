//! Request routing from a node's cached, versioned copy of the partition map.
//!
//! Every node keeps a [`Router`] built from the metadata it has applied. A write is split by
//! partition ([`Router::partition_of`]), each part goes to its primary with the epoch the router
//! knows ([`Router::route`]), and a query's per-partition plans are grouped by primary
//! ([`Router::scatter`]). When the receiver refuses with `NotPrimary`, `Fenced` or
//! `StaleMetadata`, [`retry_decision`] says: refresh the map and retry once; a second refusal
//! goes back to the client as `Unavailable` with a retry hint. The router never routes to a
//! primary the metadata says cannot serve: the request fails fast with the reason instead of
//! timing out against a dead node.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::failover::{self, UnavailableReason};
use crate::state::{ClusterState, NodeId, PartitionId};

/// Where to send a partition-scoped request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub partition: PartitionId,
    pub primary: NodeId,
    /// The epoch to put on the request (fencing).
    pub epoch: u64,
    pub grpc_addr: String,
}

#[derive(Debug, Clone)]
enum Slot {
    Serving(Route),
    /// `None`: failover is pending (it will be promoted); `Some`: why it cannot be.
    Unavailable(Option<UnavailableReason>),
}

/// A node's routing view of one version of the metadata. See the module doc.
#[derive(Debug, Clone)]
pub struct Router {
    version: u64,
    slots: Vec<Slot>,
}

impl Router {
    pub fn new(state: &ClusterState) -> Router {
        let unavailable: BTreeMap<PartitionId, Option<UnavailableReason>> = failover::assess(state)
            .into_iter()
            .map(|(p, u)| (p, u.map(|u| u.reason)))
            .collect();
        let slots = state
            .partitions
            .iter()
            .map(|p| match unavailable.get(&p.id) {
                Some(reason) => Slot::Unavailable(reason.clone()),
                None => Slot::Serving(Route {
                    partition: p.id,
                    primary: p.primary,
                    epoch: p.epoch,
                    grpc_addr: state
                        .nodes
                        .get(&p.primary)
                        .map(|n| n.grpc_addr.clone())
                        .unwrap_or_default(),
                }),
            })
            .collect();
        Router {
            version: state.version,
            slots,
        }
    }

    /// Rebuild from `state` if it is newer than what the router holds. Returns whether it
    /// changed; an older state (applied out of order by a caller) is ignored.
    pub fn update(&mut self, state: &ClusterState) -> bool {
        if state.version <= self.version && !self.slots.is_empty() {
            return false;
        }
        *self = Router::new(state);
        true
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn partitions(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// The partition a row with partition-key `key` of `table` belongs to.
    pub fn partition_of(&self, table: &str, key: &str) -> PartitionId {
        zepto_storage::partition_for(table, key, self.partitions())
    }

    /// Where to send a request for `partition`.
    pub fn route(&self, partition: PartitionId) -> Result<&Route> {
        match self.slots.get(partition as usize) {
            Some(Slot::Serving(r)) => Ok(r),
            Some(Slot::Unavailable(reason)) => Err(Error::PartitionUnavailable {
                partition,
                reason: reason.clone(),
            }),
            None => Err(Error::InvalidInput(format!(
                "partition {partition} does not exist (the map has {})",
                self.slots.len()
            ))),
        }
    }

    /// Group partitions by the primary that serves them (one request per node for a
    /// scatter-gather query). Fails, naming the partition, if any of them cannot be served:
    /// a query never silently skips a partition.
    pub fn scatter(
        &self,
        partitions: impl IntoIterator<Item = PartitionId>,
    ) -> Result<BTreeMap<NodeId, Vec<Route>>> {
        let mut out: BTreeMap<NodeId, Vec<Route>> = BTreeMap::new();
        for p in partitions {
            let r = self.route(p)?;
            out.entry(r.primary).or_default().push(r.clone());
        }
        Ok(out)
    }
}

/// What to do after a partition-scoped request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait for a newer map (version above the one used), then retry once.
    RefreshAndRetry { newer_than: u64 },
    /// Give up: answer the client (with `Unavailable` + retry hint for routing refusals).
    GiveUp,
}

/// The routing retry rule: a refusal that means "your map is stale" is retried once after
/// the map moved past `used_version`; anything else, or a second refusal, is final.
pub fn retry_decision(err: &Error, attempt: u32, used_version: u64) -> RetryDecision {
    let stale = matches!(
        err,
        Error::NotPrimary { .. }
            | Error::Fenced { .. }
            | Error::StaleMetadata { .. }
            | Error::PartitionUnavailable { reason: None, .. }
    );
    if stale && attempt == 0 {
        RetryDecision::RefreshAndRetry {
            newer_than: used_version,
        }
    } else {
        RetryDecision::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::state::{Command, NodeState};

    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=3 {
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
            assignments: vec![(1, Some(2)), (2, Some(3)), (3, Some(1)), (1, None)],
        })
        .unwrap();
        s
    }

    #[test]
    fn routes_follow_the_map_and_its_epochs() {
        let mut s = cluster();
        let mut r = Router::new(&s);
        assert_eq!(r.partitions(), 4);
        let route = r.route(1).unwrap();
        assert_eq!(
            (route.primary, route.epoch, route.grpc_addr.as_str()),
            (2, 1, "n2:8124")
        );
        assert!(r.route(9).is_err());
        let p = r.partition_of("trades", "AAPL");
        assert_eq!(p, zepto_storage::partition_for("Trades", "AAPL", 4));

        // Node 1 dies: partition 0 is pending failover, 3 cannot fail over (no replica).
        s.apply(&Command::SetNodeState {
            id: 1,
            state: NodeState::Dead,
        })
        .unwrap();
        assert!(r.update(&s));
        assert!(!r.update(&cluster()), "an older map is ignored");
        let e = r.route(0).unwrap_err();
        assert!(matches!(
            e,
            Error::PartitionUnavailable {
                partition: 0,
                reason: None
            }
        ));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(matches!(
            r.route(3),
            Err(Error::PartitionUnavailable {
                reason: Some(UnavailableReason::NoReplica),
                ..
            })
        ));
        // After the promotion the partition routes to the new primary at the new epoch.
        s.apply(&Command::Promote {
            partition: 0,
            new_primary: 2,
            expected_epoch: 1,
        })
        .unwrap();
        r.update(&s);
        let route = r.route(0).unwrap();
        assert_eq!((route.primary, route.epoch), (2, 2));
        assert_eq!(r.version(), s.version);
    }

    #[test]
    fn scatter_groups_by_primary_and_never_skips_a_partition() {
        let mut s = cluster();
        let r = Router::new(&s);
        let plan = r.scatter(0..4).unwrap();
        let by: Vec<(NodeId, Vec<PartitionId>)> = plan
            .into_iter()
            .map(|(n, rs)| (n, rs.into_iter().map(|r| r.partition).collect()))
            .collect();
        assert_eq!(by, vec![(1, vec![0, 3]), (2, vec![1]), (3, vec![2])]);
        s.apply(&Command::SetNodeState {
            id: 3,
            state: NodeState::Dead,
        })
        .unwrap();
        let r = Router::new(&s);
        assert!(matches!(
            r.scatter(0..4),
            Err(Error::PartitionUnavailable { partition: 2, .. })
        ));
        assert!(r.scatter([0, 1, 3]).is_ok());
    }

    #[test]
    fn stale_map_refusals_are_retried_once() {
        let fenced = Error::Fenced {
            partition: 0,
            epoch: 1,
            current: 2,
        };
        assert_eq!(
            retry_decision(&fenced, 0, 7),
            RetryDecision::RefreshAndRetry { newer_than: 7 }
        );
        assert_eq!(retry_decision(&fenced, 1, 8), RetryDecision::GiveUp);
        let np = Error::NotPrimary {
            partition: 0,
            epoch: 2,
            primary: Some(2),
        };
        assert!(matches!(
            retry_decision(&np, 0, 1),
            RetryDecision::RefreshAndRetry { .. }
        ));
        let hopeless = Error::PartitionUnavailable {
            partition: 3,
            reason: Some(UnavailableReason::NoReplica),
        };
        assert_eq!(retry_decision(&hopeless, 0, 1), RetryDecision::GiveUp);
        assert_eq!(
            retry_decision(&Error::LeaseExpired { partition: 0 }, 0, 1),
            RetryDecision::GiveUp
        );
    }
}
