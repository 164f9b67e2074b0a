//! The partition primary's in-sync state machine (`replicated` ack mode).
//!
//! [`InSyncTracker`] decides, per partition on its primary, which writes may be acknowledged
//! to clients, and which metadata commands the primary must commit first. The invariant it
//! keeps: **every acknowledged write is on every copy in the committed in-sync set**, so any
//! copy failover may promote holds it.
//!
//! Positions are exclusive, like the storage engine's `next_seq`: a replica at position `n`
//! holds every record with a sequence number below `n`.
//!
//! - `Replicated` (the replica is in the committed in-sync set): acknowledge what the replica
//!   has acknowledged. If it lags past the bound, propose `ShrinkInSync` and keep waiting.
//! - `ShrinkPending`: still wait for the replica; once the shrink commits, go `Alone`.
//! - `Alone` (in-sync set = {primary}): acknowledge after the local fsync, remembering the
//!   highest position so acknowledged. When the replica makes progress and is no longer
//!   lagging (or holds everything written), go `ExpandPending`.
//! - `ExpandPending`: acknowledge only what the replica has acknowledged, so the set of writes
//!   acknowledged alone stops growing; once the replica holds all of them, propose
//!   `ExpandInSync` (it may commit at any time from then on). Until it is proposed, a replica
//!   that lags again sends the tracker back to `Alone`; once proposed, only its commit (then
//!   `Replicated`, and a shrink if the replica is lagging) moves on.
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

/// Per-partition in-sync bookkeeping on the primary. See the module doc.
#[derive(Debug, Clone)]
pub struct InSyncTracker {
    partition: PartitionId,
    me: NodeId,
    epoch: u64,
    replica: Option<NodeId>,
    mode: Mode,
    lag: ReplicaLag,
    bound: Duration,
    /// Local durable position.
    written: u64,
    /// The replica's confirmed position.
    replica_pos: u64,
    /// When the replica's position last moved forward.
    replica_progress: Option<MonoTime>,
    /// Highest position acknowledged to a client while alone.
    alone_acked: u64,
    /// `ExpandPending` only: the expand has been proposed.
    expand_proposed: bool,
    /// The replica's node is leaving (DRAINING): it is not taken back into the in-sync set,
    /// however close it is, since it is about to stop confirming anything.
    replica_leaving: bool,
    /// When the pending shrink/expand was last proposed (to re-propose a lost one).
    proposed_at: Option<MonoTime>,
    retry_after: Duration,
}

impl InSyncTracker {
    /// Start tracking `p` on its primary `me`, with `written` the local durable position
    /// (at a new epoch, the point replication starts from).
    pub fn new(
        p: &PartitionInfo,
        me: NodeId,
        written: u64,
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
            bound: timings.replica_lag_bound,
            written,
            replica_pos: 0,
            replica_progress: None,
            // Whatever is durable at the start may have been acknowledged alone.
            alone_acked: written,
            expand_proposed: false,
            replica_leaving: false,
            proposed_at: None,
            retry_after: timings.max_election_timeout(),
        };
        t.mode = t.committed_mode(p);
        Ok(t)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The replica's confirmed position as last reported.
    pub fn replica_position(&self) -> u64 {
        self.replica_pos
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

    /// Record `seq` is durable locally and was handed to replication at `now`. Telling the
    /// tracker again about a record it knows (a write confirming its own records) changes
    /// nothing: only new records start a lag measurement, and never one the replica holds.
    pub fn on_local_write(&mut self, seq: u64, now: MonoTime) {
        if seq < self.written {
            return;
        }
        self.written = seq.saturating_add(1);
        if self.replica.is_some() && seq >= self.replica_pos {
            self.lag.on_sent(seq, now);
        }
    }

    /// The replica confirmed position `pos` (everything below it is durable there) at `now`.
    pub fn on_replica_ack(&mut self, pos: u64, now: MonoTime) {
        if pos > self.replica_pos {
            self.replica_pos = pos;
            self.replica_progress = Some(now);
        }
        if let Some(last) = pos.checked_sub(1) {
            self.lag.on_acked(last);
        }
    }

    /// Whether the write that became record `seq` (durable locally, passed to
    /// [`InSyncTracker::on_local_write`]) may be acknowledged now. `Err(Fenced)` when the
    /// partition moved on: it never will be.
    pub fn may_ack(&mut self, seq: u64) -> Result<bool> {
        match self.mode {
            Mode::Fenced { current } => Err(Error::Fenced {
                partition: self.partition,
                epoch: self.epoch,
                current,
            }),
            Mode::Alone if seq < self.written => {
                self.alone_acked = self.alone_acked.max(seq + 1);
                Ok(true)
            }
            Mode::Alone => Ok(false),
            Mode::Replicated | Mode::ShrinkPending | Mode::ExpandPending => {
                Ok(seq < self.replica_pos.min(self.written))
            }
        }
    }

    /// The committed metadata changed: follow it.
    pub fn on_committed(&mut self, p: &PartitionInfo) {
        if p.epoch != self.epoch || p.primary != self.me {
            self.mode = Mode::Fenced { current: p.epoch };
            return;
        }
        if matches!(self.mode, Mode::Fenced { .. }) {
            return;
        }
        let committed = self.committed_mode(p);
        if p.replica != self.replica {
            // A different replica starts from nothing; what was pending concerned the old one.
            self.replica = p.replica;
            self.replica_pos = 0;
            self.replica_progress = None;
            self.lag.reset();
            self.mode = committed;
        } else {
            let before = self.mode;
            self.mode = match (self.mode, committed) {
                // Still waiting for our expand to commit (or to be proposed).
                (Mode::ExpandPending, Mode::Alone) => Mode::ExpandPending,
                // Still waiting for our shrink to commit.
                (Mode::ShrinkPending, Mode::Replicated) => Mode::ShrinkPending,
                (_, m) => m,
            };
            if before == Mode::Replicated && self.mode == Mode::Alone {
                // Shrunk without our asking: the replica gave up its membership because it
                // lost what it held (a wiped disk, ADR 0012). What it confirmed before no
                // longer counts; its position is learned again from its next answer.
                self.replica_pos = 0;
                self.replica_progress = None;
            }
        }
        if matches!(self.mode, Mode::Replicated | Mode::Alone) {
            self.proposed_at = None;
            self.expand_proposed = false;
        }
    }

    /// Whether the replica's node is leaving the cluster (DRAINING). A draining node gives
    /// up its in-sync memberships before it exits (so its primaries do not wait for it until
    /// the lag bound once it is gone) but keeps answering replication until then: without
    /// this, the primary would see it caught up and take it back in. An expand not proposed
    /// yet is dropped; one already proposed may commit, and is shrunk as usual once the node
    /// is gone.
    pub fn set_replica_leaving(&mut self, leaving: bool) {
        self.replica_leaving = leaving;
        if leaving && self.mode == Mode::ExpandPending && !self.expand_proposed {
            self.mode = Mode::Alone;
        }
    }

    /// Advance the state machine at `now`; returns the command to propose, if any.
    pub fn poll(&mut self, now: MonoTime) -> Result<Option<Command>> {
        match self.mode {
            Mode::Fenced { current } => Err(Error::Fenced {
                partition: self.partition,
                epoch: self.epoch,
                current,
            }),
            Mode::Replicated => {
                if self.lag.is_lagging(now) {
                    self.mode = Mode::ShrinkPending;
                    Ok(self.propose_now(now, self.shrink()))
                } else {
                    Ok(None)
                }
            }
            Mode::ShrinkPending => Ok(self.repropose(now, self.shrink())),
            Mode::Alone => {
                if self.replica.is_some() && !self.replica_leaving && self.replica_close(now) {
                    self.mode = Mode::ExpandPending;
                    self.expand_proposed = false;
                    self.expand_step(now)
                } else {
                    Ok(None)
                }
            }
            Mode::ExpandPending => self.expand_step(now),
        }
    }

    /// The replica holds everything written, or is making progress and is not lagging.
    fn replica_close(&self, now: MonoTime) -> bool {
        let recent = self
            .replica_progress
            .is_some_and(|t| now.saturating_since(t) <= self.bound);
        self.replica_pos >= self.written
            || (recent && !self.lag.is_empty() && !self.lag.is_lagging(now))
    }

    fn expand_step(&mut self, now: MonoTime) -> Result<Option<Command>> {
        let Some(r) = self.replica else {
            self.mode = Mode::Alone;
            return Ok(None);
        };
        if self.expand_proposed {
            return Ok(self.repropose(now, self.expand(r)));
        }
        if self.lag.is_lagging(now) {
            // Not proposed yet: going back is safe.
            self.mode = Mode::Alone;
            return Ok(None);
        }
        if self.replica_pos >= self.alone_acked {
            self.expand_proposed = true;
            return Ok(self.propose_now(now, self.expand(r)));
        }
        Ok(None)
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
        t.on_local_write(0, at(0));
        t.on_local_write(1, at(10));
        t.on_replica_ack(1, at(20));
        assert!(t.may_ack(0).unwrap());
        assert!(!t.may_ack(1).unwrap(), "record 1 waits for the replica");
        assert_eq!(t.poll(at(100)).unwrap(), None);
        // The replica stops answering: past the bound the primary asks to shrink...
        let shrink = t.poll(at(3_011)).unwrap().unwrap();
        assert_eq!(shrink, crate::failover::shrink_in_sync(0, 1, 1));
        assert!(!t.may_ack(1).unwrap(), "...but still does not ack alone");
        assert_eq!(t.poll(at(3_100)).unwrap(), None, "proposed once");
        assert!(
            t.poll(at(5_100)).unwrap().is_some(),
            "re-proposed after the retry interval"
        );
        commit(&mut s, &mut t, &shrink);
        assert_eq!(t.mode(), Mode::Alone);
        t.on_local_write(2, at(5_200));
        assert!(
            t.may_ack(1).unwrap() && t.may_ack(2).unwrap(),
            "alone: ack after local fsync"
        );
        // A dead replica makes no progress: the primary stays alone.
        assert_eq!(t.poll(at(9_000)).unwrap(), None);
        assert_eq!(t.mode(), Mode::Alone);

        // The replica catches up with everything written: expand, and wait for it from now on.
        t.on_replica_ack(3, at(9_100));
        let expand = t.poll(at(9_100)).unwrap().unwrap();
        assert_eq!(
            expand,
            Command::ExpandInSync {
                partition: 0,
                epoch: 1,
                node: 2
            }
        );
        assert_eq!(t.mode(), Mode::ExpandPending);
        t.on_local_write(3, at(9_110));
        assert!(
            !t.may_ack(3).unwrap(),
            "record 3 waits: the expand may commit any moment"
        );
        commit(&mut s, &mut t, &expand);
        assert_eq!(t.mode(), Mode::Replicated);
        t.on_replica_ack(4, at(9_130));
        assert!(t.may_ack(3).unwrap());
    }

    #[test]
    fn a_leaving_replica_is_not_taken_back_into_the_in_sync_set() {
        let timings = Timings::defaults();
        let mut s = state();
        let shrink = crate::failover::shrink_in_sync(0, 1, 1);
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        // The draining replica gave up its membership but still confirms everything.
        commit(&mut s, &mut t, &shrink);
        t.set_replica_leaving(true);
        t.on_local_write(0, at(10));
        assert!(t.may_ack(0).unwrap(), "alone: acked after the local fsync");
        t.on_replica_ack(1, at(20));
        assert_eq!(t.poll(at(30)).unwrap(), None);
        assert_eq!(t.mode(), Mode::Alone);
        // Back (ACTIVE again, e.g. restarted): expanded as usual.
        t.set_replica_leaving(false);
        assert!(matches!(
            t.poll(at(40)).unwrap(),
            Some(Command::ExpandInSync { node: 2, .. })
        ));
        // An expand that was about to be proposed is dropped when the node starts leaving.
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 1, &timings).unwrap();
        t.on_local_write(1, at(50));
        t.on_replica_ack(1, at(50));
        t.mode = Mode::ExpandPending;
        t.set_replica_leaving(true);
        assert_eq!(t.mode(), Mode::Alone);
        assert!(t.may_ack(1).unwrap());
    }

    #[test]
    fn under_continuous_load_a_close_replica_is_expanded_after_the_alone_acks_reach_it() {
        let timings = Timings::defaults(); // lag bound 3 s
        let mut s = state();
        let shrink = crate::failover::shrink_in_sync(0, 1, 1);
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        commit(&mut s, &mut t, &shrink);
        assert_eq!(t.mode(), Mode::Alone);
        // Writes 0..100 acknowledged alone while the replica was away.
        for seq in 0..100 {
            t.on_local_write(seq, at(seq));
            assert!(t.may_ack(seq).unwrap());
        }
        // It comes back and catches up, but writes keep coming: it is never fully caught up.
        let mut now = 10_000;
        t.on_replica_ack(50, at(now));
        assert_eq!(
            t.poll(at(now)).unwrap(),
            None,
            "records 50.. are old: lagging"
        );
        for seq in 100..110 {
            t.on_local_write(seq, at(now));
            assert!(t.may_ack(seq).unwrap(), "still alone");
        }
        now += 10;
        t.on_replica_ack(100, at(now));
        // Close (only recent records unacked): stop acking alone, wait for the replica.
        assert_eq!(t.poll(at(now)).unwrap(), None, "0..110 were acked alone");
        assert_eq!(t.mode(), Mode::ExpandPending);
        t.on_local_write(110, at(now));
        assert!(!t.may_ack(110).unwrap(), "no more acks alone");
        // Once it holds every write acknowledged alone, the expand is proposed.
        now += 10;
        t.on_replica_ack(110, at(now));
        let expand = t.poll(at(now)).unwrap().unwrap();
        assert!(matches!(expand, Command::ExpandInSync { node: 2, .. }));
        commit(&mut s, &mut t, &expand);
        assert_eq!(t.mode(), Mode::Replicated);
        assert!(t.may_ack(109).unwrap() && !t.may_ack(110).unwrap());
    }

    #[test]
    fn an_expand_not_yet_proposed_is_abandoned_when_the_replica_lags_again() {
        let timings = Timings::defaults();
        let mut s = state();
        let shrink = crate::failover::shrink_in_sync(0, 1, 1);
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        commit(&mut s, &mut t, &shrink);
        for seq in 0..10 {
            t.on_local_write(seq, at(0));
            assert!(t.may_ack(seq).unwrap());
        }
        for seq in 10..20 {
            t.on_local_write(seq, at(4_000));
            assert!(t.may_ack(seq).unwrap());
        }
        t.on_replica_ack(10, at(4_000)); // only 0..10 of the 0..20 acked alone
        assert_eq!(t.poll(at(4_000)).unwrap(), None);
        assert_eq!(t.mode(), Mode::ExpandPending);
        t.on_local_write(20, at(4_000));
        assert!(!t.may_ack(20).unwrap(), "waits for the replica now");
        // It stalls: past the bound the tracker goes back to acking alone (nothing proposed).
        assert_eq!(t.poll(at(7_100)).unwrap(), None);
        assert_eq!(t.mode(), Mode::Alone);
        assert!(t.may_ack(20).unwrap());
    }

    #[test]
    fn a_shrink_the_primary_did_not_ask_for_forgets_the_replica_position() {
        let timings = Timings::defaults();
        let mut s = state();
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        for seq in 0..10 {
            t.on_local_write(seq, at(0));
        }
        t.on_replica_ack(10, at(5));
        assert!(t.may_ack(9).unwrap());
        // The replica came back empty and took itself out of the in-sync set.
        commit(&mut s, &mut t, &crate::failover::shrink_in_sync(0, 1, 1));
        assert_eq!(t.mode(), Mode::Alone);
        // Its old confirmation must not bring it back: nothing to expand until it answers.
        for ms in [10, 100, 1_000, 10_000] {
            assert_eq!(
                t.poll(at(ms)).unwrap(),
                None,
                "expanded on a stale position"
            );
        }
        t.on_replica_ack(0, at(10_001));
        assert_eq!(t.poll(at(10_002)).unwrap(), None);
        // Caught up for real: expanded.
        t.on_replica_ack(10, at(10_003));
        assert!(matches!(
            t.poll(at(10_004)).unwrap(),
            Some(Command::ExpandInSync { .. })
        ));
    }

    #[test]
    fn repeating_a_known_record_never_makes_a_caught_up_replica_look_lagging() {
        let timings = Timings::defaults(); // lag bound 3 s
        let s = state();
        let mut t = InSyncTracker::new(s.partition(0).unwrap(), 1, 0, &timings).unwrap();
        for seq in 0..5 {
            t.on_local_write(seq, at(0));
        }
        t.on_replica_ack(5, at(10));
        assert!(t.may_ack(4).unwrap());
        // A waiting write tells the tracker about its (already confirmed) record again.
        t.on_local_write(3, at(20));
        assert_eq!(
            t.poll(at(10_000)).unwrap(),
            None,
            "no shrink: nothing is unconfirmed"
        );
        assert_eq!(t.mode(), Mode::Replicated);
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
        assert!(matches!(t.may_ack(3), Err(Error::Fenced { .. })));
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
        t.on_replica_ack(5, at(0));
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
        assert!(t.may_ack(9).unwrap());
        assert_eq!(t.poll(at(0)).unwrap(), None);
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
        assert_eq!(t.poll(at(1)).unwrap(), None);
        t.on_replica_ack(10, at(2));
        assert!(matches!(
            t.poll(at(2)).unwrap(),
            Some(Command::ExpandInSync { node: 3, .. })
        ));
    }
}
