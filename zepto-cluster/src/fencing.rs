//! Fencing: `(partition, epoch)` checks at every write entry point, and the primary's write
//! lease.
//!
//! Every replicated record, forwarded write and partition-scoped RPC carries the
//! `(partition, epoch)` its sender believes in. [`EpochFence`] holds, per partition, the highest
//! epoch this node has seen committed (it only goes up) and refuses anything older with a typed
//! [`Error::Fenced`]: that is how a zombie primary's writes die after its replica was promoted.
//!
//! The epoch check alone cannot stop a primary that is cut off from everyone (it would not hear
//! of the promotion, and its clients may still reach it). [`WriteLease`] closes that gap: the
//! primary accepts writes only while its lease from the metadata majority is valid, and the
//! lease is shorter than the dead time (see [`crate::timing`] for the arithmetic), so it stops
//! on its own before anyone can promote its replica.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::state::{ClusterState, NodeId, PartitionId};
use crate::timing::{MonoTime, Timings};

/// Per-partition epoch high-water marks of this node. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct EpochFence {
    known: BTreeMap<PartitionId, u64>,
}

impl EpochFence {
    pub fn new() -> EpochFence {
        EpochFence::default()
    }

    /// Learn the epochs of a committed state. Epochs never go down here, even if an older
    /// state is observed after a newer one.
    pub fn observe_state(&mut self, state: &ClusterState) {
        for p in &state.partitions {
            self.observe(p.id, p.epoch);
        }
    }

    /// Learn one committed epoch.
    pub fn observe(&mut self, partition: PartitionId, epoch: u64) {
        let e = self.known.entry(partition).or_insert(0);
        *e = (*e).max(epoch);
    }

    pub fn current(&self, partition: PartitionId) -> Option<u64> {
        self.known.get(&partition).copied()
    }

    /// Refuse a request carrying an epoch older than the one we know. A request from the
    /// future (the sender saw a newer map) is refused too, as `StaleMetadata`, so the caller
    /// refreshes its own map before acting on it.
    pub fn check(&self, partition: PartitionId, epoch: u64) -> Result<()> {
        let current = self.current(partition).unwrap_or(0);
        if epoch < current {
            return Err(Error::Fenced {
                partition,
                epoch,
                current,
            });
        }
        if epoch > current {
            return Err(Error::StaleMetadata {
                partition,
                known: current,
                seen: epoch,
            });
        }
        Ok(())
    }
}

/// The checks a node makes before serving a partition-scoped request as primary: the epoch
/// matches and, per the committed map, this node is the primary.
pub fn check_primary(
    state: &ClusterState,
    fence: &EpochFence,
    me: NodeId,
    partition: PartitionId,
    epoch: u64,
) -> Result<()> {
    fence.check(partition, epoch)?;
    let p = state
        .partition(partition)
        .ok_or(Error::InvalidInput(format!(
            "unknown partition {partition}"
        )))?;
    if p.primary != me {
        return Err(Error::NotPrimary {
            partition,
            epoch: p.epoch,
            primary: Some(p.primary),
        });
    }
    Ok(())
}

/// The checks a replica makes before taking a replicated record: the epoch matches, this node
/// is the partition's replica and the sender is its primary.
pub fn check_replica(
    state: &ClusterState,
    fence: &EpochFence,
    me: NodeId,
    from: NodeId,
    partition: PartitionId,
    epoch: u64,
) -> Result<()> {
    fence.check(partition, epoch)?;
    let p = state
        .partition(partition)
        .ok_or(Error::InvalidInput(format!(
            "unknown partition {partition}"
        )))?;
    if p.primary != from {
        return Err(Error::NotPrimary {
            partition,
            epoch: p.epoch,
            primary: Some(p.primary),
        });
    }
    if p.replica != Some(me) {
        return Err(Error::InvalidInput(format!(
            "node {me} is not the replica of partition {partition} at epoch {epoch}"
        )));
    }
    Ok(())
}

/// A primary's permission to accept writes, renewed by contact with the metadata majority.
#[derive(Debug, Clone)]
pub struct WriteLease {
    lease: Duration,
    valid_until: Option<MonoTime>,
}

impl WriteLease {
    pub fn new(timings: &Timings) -> WriteLease {
        WriteLease {
            lease: timings.write_lease,
            valid_until: None,
        }
    }

    /// The metadata leader acknowledged a heartbeat this node sent at `sent_at`. Pass the
    /// *send* time, not the time the answer arrived: the leader's failure detector counts from
    /// when it received the heartbeat, which is later, so the lease always ends first.
    /// A late answer to an old heartbeat never shortens the lease.
    pub fn on_majority_contact(&mut self, sent_at: MonoTime) {
        let until = sent_at + self.lease;
        self.valid_until = Some(self.valid_until.map_or(until, |v| v.max(until)));
    }

    /// Whether a write may be accepted at `now`. Never before the first contact.
    pub fn may_accept_writes(&self, now: MonoTime) -> bool {
        self.valid_until.is_some_and(|v| now < v)
    }

    /// `may_accept_writes` as a typed refusal.
    pub fn check(&self, partition: PartitionId, now: MonoTime) -> Result<()> {
        if self.may_accept_writes(now) {
            Ok(())
        } else {
            Err(Error::LeaseExpired { partition })
        }
    }

    /// Drop the lease (the node learned it was fenced, or is shutting down).
    pub fn revoke(&mut self) {
        self.valid_until = None;
    }

    pub fn valid_until(&self) -> Option<MonoTime> {
        self.valid_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::state::{Command, NodeState};

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_millis(ms)
    }

    #[test]
    fn older_epochs_are_fenced_with_a_typed_error() {
        let mut f = EpochFence::new();
        f.observe(3, 2);
        f.observe(3, 1); // out of order: ignored
        assert_eq!(f.current(3), Some(2));
        assert!(f.check(3, 2).is_ok());
        let e = f.check(3, 1).unwrap_err();
        assert!(matches!(
            e,
            Error::Fenced {
                partition: 3,
                epoch: 1,
                current: 2
            }
        ));
        assert_eq!(e.kind(), ErrorKind::Fenced);
        assert!(matches!(
            f.check(3, 5),
            Err(Error::StaleMetadata {
                known: 2,
                seen: 5,
                ..
            })
        ));
        assert!(matches!(
            f.check(9, 1),
            Err(Error::StaleMetadata { known: 0, .. })
        ));
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for id in 1..=2 {
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
        s.apply(&Command::InitPartitions {
            assignments: vec![(1, Some(2))],
        })
        .unwrap();
        s
    }

    #[test]
    fn zombie_primary_is_fenced_after_promotion() {
        let mut s = state();
        let mut fence_on_2 = EpochFence::new();
        fence_on_2.observe_state(&s);
        assert!(check_replica(&s, &fence_on_2, 2, 1, 0, 1).is_ok());
        assert!(matches!(
            check_primary(&s, &fence_on_2, 2, 0, 1),
            Err(Error::NotPrimary {
                primary: Some(1),
                ..
            })
        ));
        s.apply(&Command::SetNodeState {
            id: 1,
            state: NodeState::Dead,
        })
        .unwrap();
        s.apply(&Command::Promote {
            partition: 0,
            new_primary: 2,
            expected_epoch: 1,
        })
        .unwrap();
        fence_on_2.observe_state(&s);
        // The zombie (node 1) still replicates at epoch 1: refused.
        assert!(matches!(
            check_replica(&s, &fence_on_2, 2, 1, 0, 1),
            Err(Error::Fenced { current: 2, .. })
        ));
        // A forwarded write at the new epoch is served by node 2.
        assert!(check_primary(&s, &fence_on_2, 2, 0, 2).is_ok());
        // Node 1, rejoining as replica, takes records from 2 at epoch 2.
        let mut fence_on_1 = EpochFence::new();
        fence_on_1.observe_state(&s);
        assert!(check_replica(&s, &fence_on_1, 1, 2, 0, 2).is_ok());
        assert!(check_replica(&s, &fence_on_1, 1, 1, 0, 2).is_err());
        assert!(check_primary(&s, &fence_on_1, 1, 7, 0).is_err());
    }

    #[test]
    fn lease_runs_from_send_time_and_never_shrinks() {
        let t = Timings::defaults(); // lease 5 s
        let mut l = WriteLease::new(&t);
        assert!(!l.may_accept_writes(at(0)), "no lease before first contact");
        l.on_majority_contact(at(1_000));
        assert!(l.may_accept_writes(at(5_999)));
        assert!(!l.may_accept_writes(at(6_000)));
        assert!(matches!(
            l.check(4, at(6_000)),
            Err(Error::LeaseExpired { partition: 4 })
        ));
        l.on_majority_contact(at(500)); // a late answer to an older heartbeat
        assert_eq!(l.valid_until(), Some(at(6_000)));
        l.on_majority_contact(at(7_000));
        assert!(l.check(4, at(11_999)).is_ok());
        l.revoke();
        assert!(!l.may_accept_writes(at(7_001)));
    }

    #[test]
    fn cut_off_primary_stops_before_it_can_be_declared_dead() {
        // Scenario: the primary's last acknowledged heartbeat was sent at t = 10 s; the leader
        // received it at 10.05 s. The leader declares it dead no earlier than 20.05 s.
        let t = Timings::defaults();
        let mut lease = WriteLease::new(&t);
        lease.on_majority_contact(at(10_000));
        let mut d = crate::detector::Detector::new(&t);
        d.start_term([(1, crate::detector::Liveness::Active)], at(0));
        d.on_heartbeat(1, at(10_050));
        let mut declared_dead = None;
        let mut stopped = None;
        for ms in (10_000..30_000).step_by(10) {
            if stopped.is_none() && !lease.may_accept_writes(at(ms)) {
                stopped = Some(ms);
            }
            if declared_dead.is_none()
                && d.tick(at(ms))
                    .iter()
                    .any(|t| t.to == crate::detector::Liveness::Dead)
            {
                declared_dead = Some(ms);
            }
        }
        let (stopped, dead) = (stopped.unwrap(), declared_dead.unwrap());
        assert_eq!(stopped, 15_000);
        assert_eq!(dead, 20_050);
        assert!(stopped < dead);
    }
}
