//! The partition primary's in-sync state machine (`replicated` ack mode).
//!
//! [`InSyncTracker`] decides, per partition on its primary, up to which sequence number writes
//! may be acknowledged to clients, and which metadata commands the primary must commit first.
//! The invariant it keeps: **every acknowledged write is on every copy in the committed in-sync
//! set**, so any copy failover may promote holds it.
//!
//! - `Replicated` (the replica is in the committed in-sync set): acknowledge what the replica
//!   has acknowledged. If it lags past the bound, propose `ShrinkInSync` and keep waiting.
//! - `ShrinkPending`: still wait for the replica; once the shrink commits, go `Alone`.
//! - `Alone` (in-sync set = {primary}): acknowledge after the local fsync. When the replica has
//!   caught up with everything written, propose `ExpandInSync` and go `ExpandPending`.
//! - `ExpandPending`: acknowledge only what the replica has acknowledged *from the moment of the
//!   proposal*, because the command may commit at any time; once it commits, `Replicated`.
//! - `Fenced`: the committed metadata moved the partition to another epoch or primary;
//!   acknowledge nothing more.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::failover::ReplicaLag;
use crate::state::{Command, NodeId, PartitionId, PartitionInfo};
use crate::timing::{MonoTime, Timings};

/// See the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replicated,
    ShrinkPending,
    Alone,
    ExpandPending,
    Fenced { current: u64 },
}

/// What the primary may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// Writes with a sequence number up to here may be acknowledged to clients.
    pub ackable_up_to: u64,
    /// Propose this command through the metadata group.
    pub propose: Option<Command>,
}

/// Per-partition in-sync bookkeeping on the primary. See the module doc.
#[derive(Debug, Clone)]
pub struct InSyncTracker {
    partition: PartitionId,
    me: NodeId,
    epoch: u64,
    replica: Option<NodeId>,
    mode: Mode,
    lag: ReplicaLag,
    last_written: u64,
    replica_acked: u64,
    /// When the pending shrink/expand was last proposed (to re-propose a lost one).
    proposed_at: Option<MonoTime>,
    retry_after: Duration,
}

impl InSyncTracker {
    /// Start tracking `p` on its primary `me`, with `last_written` the highest sequence number
    /// already durable locally (and, at a new epoch, the point replication starts from).
    pub fn new(
        p: &PartitionInfo,
        me: NodeId,
        last_written: u64,
        timings: &Timings,
    ) -> Result<InSyncTracker> {
        if p.primary != me {
            return Err(Error::NotPrimary {
                partition: p.id,
                epoch: p.epoch,
                primary: Some(p.primary),
            });
        }
        let mut t = InSyncTracker {
            partition: p.id,
            me,
            epoch: p.epoch,
            replica: p.replica,
            mode: Mode::Alone,
            lag: ReplicaLag::new(timings.replica_lag_bound),
            last_written,
            replica_acked: 0,
            proposed_at: None,
            retry_after: timings.max_election_timeout(),
        };
        t.mode = t.committed_mode(p);
        Ok(t)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn replica_in_sync(&self, p: &PartitionInfo) -> bool {
        self.replica.is_some_and(|r| p.in_sync.contains(&r))
    }

    fn committed_mode(&self, p: &PartitionInfo) -> Mode {
        if self.replica_in_sync(p) {
            Mode::Replicated
        } else {
            Mode::Alone
        }
    }

    /// Write `seq` is durable locally and was sent to the replica at `now`.
    pub fn on_local_write(&mut self, seq: u64, now: MonoTime) {
        self.last_written = self.last_written.max(seq);
        if self.replica.is_some() {
            self.lag.on_sent(seq, now);
        }
    }

    /// The replica acknowledged (fsynced) everything up to `seq`.
    pub fn on_replica_ack(&mut self, seq: u64) {
        self.replica_acked = self.replica_acked.max(seq);
        self.lag.on_acked(seq);
    }

    /// The committed metadata changed: follow it.
    pub fn on_committed(&mut self, p: &PartitionInfo) {
        if p.epoch != self.epoch || p.primary != self.me {
            self.mode = Mode::Fenced { current: p.epoch };
            return;
        }
        if p.replica != self.replica {
            // A different replica starts from nothing.
            self.replica = p.replica;
            self.replica_acked = 0;
            self.lag.reset();
        }
        let committed = self.committed_mode(p);
        self.mode = match (self.mode, committed) {
            (Mode::Fenced { current }, _) => Mode::Fenced { current },
            // Still waiting for our expand to commit.
            (Mode::ExpandPending, Mode::Alone) => Mode::ExpandPending,
            // Still waiting for our shrink to commit.
            (Mode::ShrinkPending, Mode::Replicated) => Mode::ShrinkPending,
            (_, m) => m,
        };
        if matches!(self.mode, Mode::Replicated | Mode::Alone) {
            self.proposed_at = None;
        }
    }

    /// What may be acknowledged at `now`, and what to propose.
    pub fn poll(&mut self, now: MonoTime) -> Result<Poll> {
        let waiting_ack = self.replica_acked.min(self.last_written);
        let (ackable_up_to, propose) = match self.mode {
            Mode::Fenced { current } => {
                return Err(Error::Fenced {
                    partition: self.partition,
                    epoch: self.epoch,
                    current,
                })
            }
            Mode::Replicated => {
                if self.lag.is_lagging(now) {
                    self.mode = Mode::ShrinkPending;
                    (waiting_ack, self.propose_now(now, self.shrink()))
                } else {
                    (waiting_ack, None)
                }
            }
            Mode::ShrinkPending => (waiting_ack, self.repropose(now, self.shrink())),
            Mode::Alone => match self.replica {
                Some(r) if self.replica_acked >= self.last_written => {
                    // Caught up: from now on wait for the replica, then ask to expand.
                    self.mode = Mode::ExpandPending;
                    (self.last_written, self.propose_now(now, self.expand(r)))
                }
                _ => (self.last_written, None),
            },
            Mode::ExpandPending => {
                let cmd = self.replica.map(|r| self.expand(r));
                (waiting_ack, cmd.and_then(|c| self.repropose(now, c)))
            }
        };
        Ok(Poll {
            ackable_up_to,
            propose,
        })
    }

    fn shrink(&self) -> Command {
        crate::failover::shrink_in_sync(self.partition, self.epoch, self.me)
    }

    fn expand(&self, replica: NodeId) -> Command {
        Command::ExpandInSync {
            partition: self.partition,
            epoch: self.epoch,
            node: replica,
        }
    }

    fn propose_now(&mut self, now: MonoTime, cmd: Command) -> Option<Command> {
        self.proposed_at = Some(now);
        Some(cmd)
    }

    fn repropose(&mut self, now: MonoTime, cmd: Command) -> Option<Command> {
        let due = self
            .proposed_at
            .is_none_or(|at| now.saturating_since(at) >= self.retry_after);
        if due {
            self.propose_now(now, cmd)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ClusterState, NodeState};

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_millis(ms)
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

    /// Commit `cmd` and tell the tracker.
    fn commit(s: &mut ClusterState, t: &mut InSyncTracker, cmd: &Command) {
        s.apply(cmd).unwrap();
        t.on_committed(s.partition(0).unwrap());
    }

    #[test]
    fn lagging_replica_is_shrunk_out_before_acking_alone_and_expanded_back() {
        let timings = Timings::defaults(); // lag bound 3 s
        let mut s = state();
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        assert_eq!(t.mode(), Mode::Replicated);
        t.on_local_write(1, at(0));
        t.on_local_write(2, at(10));
        t.on_replica_ack(1);
        let p = t.poll(at(100)).unwrap();
        assert_eq!(p.ackable_up_to, 1, "write 2 waits for the replica");
        assert_eq!(p.propose, None);
        // The replica stops answering: past the bound the primary asks to shrink...
        let p = t.poll(at(3_011)).unwrap();
        let shrink = p.propose.clone().unwrap();
        assert_eq!(shrink, crate::failover::shrink_in_sync(0, 1, 1));
        assert_eq!(p.ackable_up_to, 1, "...but still does not ack alone");
        assert_eq!(t.poll(at(3_100)).unwrap().propose, None, "proposed once");
        assert!(
            t.poll(at(5_100)).unwrap().propose.is_some(),
            "re-proposed after the retry interval"
        );
        commit(&mut s, &mut t, &shrink);
        assert_eq!(t.mode(), Mode::Alone);
        t.on_local_write(3, at(5_200));
        assert_eq!(
            t.poll(at(5_200)).unwrap().ackable_up_to,
            3,
            "alone: ack after local fsync"
        );

        // The replica catches up with everything written: expand, and wait for it from now on.
        t.on_replica_ack(3);
        let p = t.poll(at(6_000)).unwrap();
        let expand = p.propose.clone().unwrap();
        assert_eq!(
            expand,
            Command::ExpandInSync {
                partition: 0,
                epoch: 1,
                node: 2
            }
        );
        assert_eq!(t.mode(), Mode::ExpandPending);
        t.on_local_write(4, at(6_010));
        assert_eq!(
            t.poll(at(6_020)).unwrap().ackable_up_to,
            3,
            "write 4 waits: the expand may commit any moment"
        );
        commit(&mut s, &mut t, &expand);
        assert_eq!(t.mode(), Mode::Replicated);
        t.on_replica_ack(4);
        assert_eq!(t.poll(at(6_030)).unwrap().ackable_up_to, 4);
    }

    #[test]
    fn promotion_elsewhere_fences_the_old_primary() {
        let timings = Timings::defaults();
        let mut s = state();
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 7, &timings).unwrap();
        s.apply(&Command::SetNodeState {
            id: 1,
            state: NodeState::Dead,
        })
        .unwrap();
        commit(
            &mut s,
            &mut t,
            &Command::Promote {
                partition: 0,
                new_primary: 2,
                expected_epoch: 1,
            },
        );
        assert_eq!(t.mode(), Mode::Fenced { current: 2 });
        assert!(matches!(
            t.poll(at(0)),
            Err(Error::Fenced {
                partition: 0,
                epoch: 1,
                current: 2
            })
        ));
        // And a node that is not the primary cannot start a tracker.
        assert!(matches!(
            InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings),
            Err(Error::NotPrimary {
                primary: Some(2),
                ..
            })
        ));
    }

    #[test]
    fn a_new_replica_starts_out_of_sync_and_without_a_replica_writes_ack_alone() {
        let timings = Timings::defaults();
        let mut s = state();
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        t.on_replica_ack(5);
        commit(
            &mut s,
            &mut t,
            &Command::SetReplica {
                partition: 0,
                expected_epoch: 1,
                replica: None,
            },
        );
        assert_eq!(t.mode(), Mode::Alone);
        t.on_local_write(9, at(0));
        let p = t.poll(at(0)).unwrap();
        assert_eq!((p.ackable_up_to, p.propose), (9, None));
        // A fresh replica has acknowledged nothing: no expand until it has caught up.
        let mut s2 = s.clone();
        s2.apply(&Command::AddNode {
            id: 3,
            http_addr: String::new(),
            grpc_addr: String::new(),
        })
        .unwrap();
        commit(
            &mut s2,
            &mut t,
            &Command::SetReplica {
                partition: 0,
                expected_epoch: 1,
                replica: Some(3),
            },
        );
        assert_eq!(t.poll(at(1)).unwrap().propose, None);
        t.on_replica_ack(9);
        assert!(matches!(
            t.poll(at(2)).unwrap().propose,
            Some(Command::ExpandInSync { node: 3, .. })
        ));
    }
}
