//! WAL replication (RF = 2): a partition's primary ships its WAL records to the partition's
//! replica, which applies them with the primary's epochs and sequence numbers.
//!
//! - **Primary side.** The storage engine's commit listener runs on the WAL writer thread; it
//!   only hands each locally written record to the bounded queue of the partition's replica
//!   node (a full queue sets an overflow flag: nothing blocks, nothing is lost — the sender
//!   finds the gap and reads the records back from the WAL). One sender task per peer drains
//!   its queue in batches and calls `Replicate`. It tracks, per partition, the replica's
//!   durable position (`next_seq`); records below it are skipped, and a replica that is
//!   behind (restart, lost batch, overflow) is caught up from `Db::wal_records_since`. Every
//!   heartbeat interval the sender also probes the partitions it serves whose replica
//!   position is unknown or behind and did not advance since the previous probe, so a
//!   replica that returns after writes stopped still catches up (one the live stream is
//!   moving forward is left to it: its missing records are queued, and reading them back
//!   from the WAL would ship them twice while the queue waits). A replica the WAL no longer
//!   reaches back to (`WalTruncated`), or whose log diverged from ours (ADR 0008), gets a
//!   whole copy of the partition ([`super::copy`]) and then continues from the copy's cut.
//! - **Replica side.** [`serve`] checks that the sender is the partition's primary and this
//!   node its replica in the committed map, applies the records with `Db::write_replicated`
//!   (epochs checked, duplicates skipped, gaps refused: all or nothing) and answers its
//!   durable positions.
//! - **Replicated acks and the in-sync set.** On its primary every partition has an
//!   [`InSyncTracker`] (zepto-cluster) fed with every local record and every confirmed replica
//!   position. A write in `--ack replicated` mode waits ([`Replication::wait_replicated`])
//!   until the tracker lets each record it became be acknowledged: while the replica is in
//!   the committed in-sync set, once the replica holds it; after a replica lagging past the
//!   bound was shrunk out of the set through raft (`ShrinkInSync`, proposed by
//!   [`Replication::poll_trackers`]'s caller), after the local fsync alone. A replica that has
//!   caught up is expanded back (`ExpandInSync`). A partition that moved to another primary
//!   answers `FENCED`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use zepto_cluster::{ClusterState, Command, InSyncTracker, MonoTime, NodeId, Timings};
use zepto_storage::{CommittedRecord, ReplicatedRecord};

use super::dataplane::DataPlane;
use crate::db::Node;
use crate::error::{Error, Result};
use crate::rpc::pb::{ReplicaPosition, ReplicateRequest, ReplicateResponse, WalRecord};

/// Records queued per peer before the overflow flag is set.
const QUEUE: usize = 65_536;
/// Most records in one `Replicate` call from the queue.
const BATCH: usize = 4096;
/// Payload bytes read from the WAL per catch-up call.
const CATCH_UP_BYTES: usize = 4 << 20;

/// What a partition's replication looks like from its primary (for `/admin/cluster`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Note {
    /// The replica needs a full copy of the partition (the WAL no longer reaches back).
    pub(crate) needs_full_copy: Option<String>,
    /// The last failure shipping to the replica, if the last attempt failed.
    pub(crate) last_error: Option<String>,
}

/// A peer's record queue and its overflow flag.
type PeerQueue = (mpsc::Sender<CommittedRecord>, Arc<AtomicBool>);

/// Per-node replication state shared by the listener, the senders, the `Replicate` service
/// and the write path. See the module doc.
#[derive(Debug)]
pub(crate) struct Replication {
    me: NodeId,
    /// Per partition: the replica's confirmed next sequence number (primary side).
    acked: Vec<AtomicU64>,
    /// Bumped after every change of `acked`.
    acked_changed: watch::Sender<u64>,
    /// Per partition: where its records go while this node is its primary.
    targets: RwLock<Vec<Option<NodeId>>>,
    /// Per peer: its record queue and overflow flag. Grows when a node joins (ADR 0012); the
    /// listener takes the read lock once per commit group.
    queues: RwLock<BTreeMap<NodeId, PeerQueue>>,
    receivers: Mutex<BTreeMap<NodeId, mpsc::Receiver<CommittedRecord>>>,
    notes: Mutex<BTreeMap<u32, Note>>,
    /// Whole-partition copies sent (for `/admin/cluster` and tests).
    pub(crate) copies: AtomicU64,
    /// Per partition this node is (or was) primary of: the in-sync state machine.
    trackers: Mutex<BTreeMap<u32, InSyncTracker>>,
    timings: Timings,
    clock: std::time::Instant,
}

impl Replication {
    pub(crate) fn new(
        me: NodeId,
        partitions: u32,
        peers: Vec<NodeId>,
        timings: Timings,
        clock: std::time::Instant,
    ) -> Replication {
        let mut queues = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for id in peers {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.insert(id, (tx, Arc::new(AtomicBool::new(false))));
            receivers.insert(id, rx);
        }
        Replication {
            me,
            acked: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            acked_changed: watch::channel(0).0,
            targets: RwLock::new(vec![None; partitions as usize]),
            queues: RwLock::new(queues),
            receivers: Mutex::new(receivers),
            notes: Mutex::new(BTreeMap::new()),
            trackers: Mutex::new(BTreeMap::new()),
            copies: AtomicU64::new(0),
            timings,
            clock,
        }
    }

    fn now(&self) -> MonoTime {
        super::dataplane::mono(self.clock)
    }

    /// Route every locally written record to its partition's replica queue (WAL writer
    /// thread: never blocks).
    pub(crate) fn install_listener(self: &Arc<Self>, node: &Node) {
        let r = self.clone();
        node.storage()
            .set_commit_listener(Arc::new(move |records: &[CommittedRecord]| {
                let now = r.now();
                {
                    let mut trackers = r.trackers.lock();
                    for rec in records.iter().filter(|rec| !rec.replicated) {
                        if let Some(t) = trackers.get_mut(&rec.partition) {
                            t.on_local_write(rec.seq, now);
                        }
                    }
                }
                let targets = r.targets.read();
                let queues = r.queues.read();
                for rec in records.iter().filter(|rec| !rec.replicated) {
                    let Some(Some(to)) = targets.get(rec.partition as usize) else {
                        continue;
                    };
                    if let Some((q, overflow)) = queues.get(to) {
                        if q.try_send(rec.clone()).is_err() {
                            overflow.store(true, Ordering::Release);
                        }
                    }
                }
            }));
    }

    /// Learn, from the committed map, which partitions this node replicates and to whom.
    pub(crate) fn set_targets(&self, state: &ClusterState) {
        let mut t = self.targets.write();
        for p in &state.partitions {
            if let Some(slot) = t.get_mut(p.id as usize) {
                let target = if p.primary == self.me {
                    p.replica
                } else {
                    None
                };
                if *slot != target {
                    // A new replica (or none): its position is unknown until it answers.
                    if let Some(a) = self.acked.get(p.id as usize) {
                        a.store(0, Ordering::Release);
                    }
                    *slot = target;
                }
            }
        }
    }

    /// The replica's confirmed next sequence number of a partition (0 = unknown).
    pub(crate) fn acked(&self, partition: u32) -> u64 {
        self.acked
            .get(partition as usize)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    pub(crate) fn note(&self, partition: u32) -> Note {
        self.notes
            .lock()
            .get(&partition)
            .cloned()
            .unwrap_or_default()
    }

    fn set_acked(&self, partition: u32, next: u64) {
        if let Some(a) = self.acked.get(partition as usize) {
            a.store(next, Ordering::Release);
            if let Some(t) = self.trackers.lock().get_mut(&partition) {
                t.on_replica_ack(next, self.now());
            }
            self.bump();
        }
    }

    /// Changes whenever a replica's confirmed position (or an in-sync decision) changes.
    pub(crate) fn acked_changes(&self) -> watch::Receiver<u64> {
        self.acked_changed.subscribe()
    }

    /// Wake every write waiting for an acknowledgement decision.
    fn bump(&self) {
        self.acked_changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Follow a committed map: a tracker for every partition this node is primary of (a new
    /// one at a new epoch, starting from the local position), and every other tracker told
    /// (a partition that moved elsewhere fences its waiting writes).
    pub(crate) fn follow_trackers(&self, state: &ClusterState, node: &Node, now: MonoTime) {
        let mut trackers = self.trackers.lock();
        for p in &state.partitions {
            let leaving = replica_leaving(state, p.replica);
            let current = trackers.get(&p.id).map(InSyncTracker::epoch);
            if p.primary == self.me && current != Some(p.epoch) {
                let written = node
                    .storage()
                    .partition_position(p.id)
                    .map_or(0, |(_, next)| next);
                match InSyncTracker::new(p, self.me, written, &self.timings) {
                    Ok(mut t) => {
                        let acked = self.acked(p.id);
                        if acked > 0 {
                            t.on_replica_ack(acked, now);
                        }
                        t.set_replica_leaving(leaving);
                        trackers.insert(p.id, t);
                    }
                    Err(e) => {
                        tracing::warn!(partition = p.id, error = %e, "cannot track the in-sync set")
                    }
                }
            } else if let Some(t) = trackers.get_mut(&p.id) {
                t.on_committed(p);
                t.set_replica_leaving(leaving);
            }
        }
        drop(trackers);
        self.bump();
    }

    /// Tell every tracker the committed state again (after a proposal that changed nothing).
    pub(crate) fn recheck_trackers(&self, state: &ClusterState) {
        for t in self.trackers.lock().values_mut() {
            if let Some(p) = state.partition(t.partition()) {
                t.on_committed(p);
                t.set_replica_leaving(replica_leaving(state, p.replica));
            }
        }
        self.bump();
    }

    /// Advance every tracker; the in-sync commands to propose through the metadata group.
    pub(crate) fn poll_trackers(&self, now: MonoTime) -> Vec<Command> {
        let mut out = Vec::new();
        let mut changed = false;
        for t in self.trackers.lock().values_mut() {
            let before = t.mode();
            if let Ok(Some(cmd)) = t.poll(now) {
                out.push(cmd);
            }
            changed |= t.mode() != before;
        }
        if changed {
            self.bump();
        }
        out
    }

    /// The in-sync mode of a partition this node tracks (for `/admin/cluster`).
    pub(crate) fn insync_mode(&self, partition: u32) -> Option<String> {
        self.trackers
            .lock()
            .get(&partition)
            .map(|t| format!("{:?}", t.mode()))
    }

    fn set_note(&self, partition: u32, f: impl FnOnce(&mut Note)) {
        f(self.notes.lock().entry(partition).or_default());
    }

    /// Wait until every record in `records` (durable here) may be acknowledged under the
    /// in-sync rule (see the module doc), at most `bound`. `FENCED` when a partition moved to
    /// another primary (never acknowledged); on timeout 503, saying the write is durable here
    /// but not confirmed by the replica.
    pub(crate) async fn wait_replicated(
        &self,
        view: &watch::Receiver<super::driver::View>,
        records: &[(u32, u64)],
        bound: Duration,
    ) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut changed = self.acked_changed.subscribe();
        let check = |me: &Replication| -> Result<bool> {
            let now = me.now();
            let mut trackers = me.trackers.lock();
            let mut all = true;
            for &(p, seq) in records {
                let Some(t) = trackers.get_mut(&p) else {
                    let state = view.borrow().state.clone();
                    if state.partition(p).is_some_and(|i| i.primary != me.me) {
                        return Err(unknown_outcome(
                            me.me,
                            &format!(
                            "partition {p} moved to another primary before the write was confirmed"
                        ),
                        ));
                    }
                    all = false;
                    continue;
                };
                // The record is durable here: make sure the tracker knows (a write racing
                // the tracker's creation).
                t.on_local_write(seq, now);
                match t.may_ack(seq) {
                    Ok(true) => {}
                    Ok(false) => all = false,
                    Err(e) => return Err(unknown_outcome(me.me, &e.to_string())),
                }
            }
            Ok(all)
        };
        let waited = tokio::time::timeout(bound, async {
            loop {
                changed.borrow_and_update();
                if check(self)? {
                    return Ok(());
                }
                if changed.changed().await.is_err() {
                    return Err(Error::Unavailable {
                        message: "replication stopped".into(),
                        retry_after: Some(1),
                    });
                }
            }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => {
                if check(self)? {
                    return Ok(());
                }
                let missing: BTreeSet<u32> = records.iter().map(|&(p, _)| p).collect();
                tracing::warn!(partitions = ?missing, ?bound, "replicated ack timed out");
                Err(Error::Unavailable {
                    message: format!(
                        "the write is durable on the primary (node {}) but was neither \
                         confirmed by the replica nor allowed alone (in-sync shrink not \
                         committed) within {bound:?} for partitions {missing:?}; it is not \
                         acknowledged as replicated",
                        self.me
                    ),
                    retry_after: Some(1),
                })
            }
        }
    }
}

/// Whether `replica`'s node is leaving the cluster (DRAINING): see
/// [`InSyncTracker::set_replica_leaving`].
fn replica_leaving(state: &ClusterState, replica: Option<NodeId>) -> bool {
    replica
        .and_then(|r| state.nodes.get(&r))
        .is_some_and(|n| n.state == zepto_cluster::NodeState::Draining)
}

/// A write durable on this node whose partition moved to another primary before it could be
/// acknowledged: the new primary may or may not hold it (it may have been replicated before
/// the promotion), so the outcome is unknown — never `FENCED`, which promises "not applied".
fn unknown_outcome(me: NodeId, why: &str) -> Error {
    Error::Unavailable {
        message: format!(
            "{why}: the write is durable on node {me}, which is no longer the primary; it is \
             not acknowledged and may or may not survive (retry it; reads show whether it \
             landed)"
        ),
        retry_after: Some(1),
    }
}

/// Set each record's `prev_epoch` (the epoch of this node's record `seq - 1`) where it is
/// known: from the record before it in the same batch, or from this node's log end when
/// `seq - 1` lies in the newest epoch's run. Unknown (older epochs) stays `None`.
fn fill_prev_epochs(node: &Node, records: &mut [ReplicatedRecord]) {
    let mut last: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut logs: HashMap<u32, Option<zepto_storage::PartitionLog>> = HashMap::new();
    for r in records.iter_mut() {
        let p = r.partition;
        r.prev_epoch = match (last.get(&p), r.seq.checked_sub(1)) {
            (_, None) => None,
            (Some(&(seq, epoch)), Some(prev)) if seq == prev => Some(epoch),
            (_, Some(prev)) => logs
                .entry(p)
                .or_insert_with(|| node.storage().partition_log(p).ok())
                .filter(|l| prev >= l.last_epoch_start && prev < l.next_seq)
                .map(|l| l.last_epoch),
        };
        last.insert(p, (r.seq, r.epoch));
    }
}

/// How long a replicated-ack write may wait for its acknowledgement decision: the replica lag
/// bound (until a silent replica counts as lagging), then room for the shrink to commit
/// through a leader election.
pub(crate) fn ack_wait_bound(t: &Timings) -> Duration {
    t.replica_lag_bound + t.max_election_timeout() * 2 + t.peer_call_timeout()
}

/// Start one replication sender per peer.
pub(crate) fn start_senders(dp: &Arc<DataPlane>, shutdown: watch::Receiver<bool>) {
    let receivers = std::mem::take(&mut *dp.repl.receivers.lock());
    for (peer, rx) in receivers {
        tokio::spawn(sender(dp.clone(), peer, rx, shutdown.clone()));
    }
}

/// Start a replication sender for a node that joined after this one started (ADR 0012), if
/// it has none yet.
pub(crate) fn ensure_sender(dp: &Arc<DataPlane>, peer: NodeId, shutdown: watch::Receiver<bool>) {
    if peer == dp.me || dp.repl.queues.read().contains_key(&peer) {
        return;
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    {
        let mut queues = dp.repl.queues.write();
        if queues.contains_key(&peer) {
            return;
        }
        queues.insert(peer, (tx, Arc::new(AtomicBool::new(false))));
    }
    tokio::spawn(sender(dp.clone(), peer, rx, shutdown));
}

/// Ships records to one peer; see the module doc.
async fn sender(
    dp: Arc<DataPlane>,
    peer: NodeId,
    mut rx: mpsc::Receiver<CommittedRecord>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut s = Sender::new(dp, peer);
    let mut tick = tokio::time::interval(s.dp.timings.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        let probe = tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => {
                if n == 0 { return; }
                false
            }
            _ = tick.tick() => true,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        let records = std::mem::take(&mut buf);
        let overflow =
            s.dp.repl
                .queues
                .read()
                .get(&peer)
                .is_some_and(|(_, f)| f.swap(false, Ordering::AcqRel));
        let result = async {
            if !records.is_empty() {
                s.ship(records).await?;
            }
            if probe || overflow {
                // A periodic probe leaves alone the partitions the live stream is moving
                // forward; after an overflow, records may be missing from the queue: every
                // partition behind is caught up.
                s.probe_and_catch_up(!overflow).await?;
            }
            Ok::<(), Status>(())
        }
        .await;
        match result {
            Ok(()) => {
                if s.failing {
                    tracing::info!(peer, "replication to the peer works again");
                    s.failing = false;
                }
            }
            Err(e) => {
                if !s.failing {
                    tracing::warn!(peer, error = %e.message(), "replication to the peer failed; retrying and catching up from the WAL");
                }
                s.failing = true;
                // Positions are unknown until the next probe answers.
                s.known.clear();
            }
        }
    }
}

struct Sender {
    dp: Arc<DataPlane>,
    peer: NodeId,
    /// Per partition: the replica's next expected sequence number, as last answered.
    known: HashMap<u32, u64>,
    /// The partition's epoch when `known` was learned: a position learned at another epoch
    /// (the partition changed hands since) is forgotten and probed again.
    known_at: HashMap<u32, u64>,
    /// Partitions whose replica holds records this node's log does not (a deposed
    /// primary's tail): nothing is shipped to them; they need a full copy.
    diverged: BTreeSet<u32>,
    /// Of those, the ones the replica itself refused records of: only a copy clears them.
    must_copy: BTreeSet<u32>,
    failing: bool,
    /// Per partition: `known` at the previous periodic probe. A replica whose position
    /// advanced since is being fed by the live stream: the records it lacks are queued or
    /// in flight, and reading them back from the WAL would only ship them twice (and, under
    /// a steady ingest, chase the log end while the queue waits).
    at_last_tick: HashMap<u32, u64>,
}

impl Sender {
    /// A sender to `peer` that knows nothing of its positions yet.
    fn new(dp: Arc<DataPlane>, peer: NodeId) -> Sender {
        Sender {
            dp,
            peer,
            known: HashMap::new(),
            known_at: HashMap::new(),
            diverged: BTreeSet::new(),
            must_copy: BTreeSet::new(),
            failing: false,
            at_last_tick: HashMap::new(),
        }
    }

    /// Forget positions learned at another epoch of their partition.
    fn forget_stale_positions(&mut self, state: &ClusterState) {
        let stale: Vec<u32> = self
            .known_at
            .iter()
            .filter(|(p, e)| state.partition(**p).is_none_or(|i| i.epoch != **e))
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            self.known.remove(&p);
            self.known_at.remove(&p);
        }
    }

    /// Partitions this node is primary of whose replica is the peer; none while this node's
    /// data directory may have lost what the map says it holds (see
    /// [`DataPlane::data_intact`]): a wiped primary's empty log must never reach a replica.
    fn served(&self) -> BTreeSet<u32> {
        if !self.dp.data_intact() {
            return BTreeSet::new();
        }
        let state = self.dp.view.borrow().state.clone();
        state
            .partitions
            .iter()
            .filter(|p| p.primary == self.dp.me && p.replica == Some(self.peer))
            .map(|p| p.id)
            .collect()
    }

    async fn call(
        &mut self,
        records: Vec<ReplicatedRecord>,
        probe: Vec<u32>,
    ) -> Result<bool, Status> {
        let client = self
            .dp
            .peers
            .get(self.peer)
            .ok_or_else(|| Status::internal("no client for the peer"))?
            .clone();
        let req = ReplicateRequest {
            records: records
                .into_iter()
                .map(|r| WalRecord {
                    partition: r.partition,
                    epoch: r.epoch,
                    seq: r.seq,
                    payload: r.payload,
                    sender_epoch: r.sender_epoch,
                    prev_epoch: r.prev_epoch,
                })
                .collect(),
            probe,
        };
        let resp = client.replicate(req).await?;
        let served = self.served();
        let node = self
            .dp
            .node()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // A partition whose records the replica refused as divergent: its position says
        // nothing about holding our records; it is never counted (handled below).
        for pos in resp
            .positions
            .iter()
            .filter(|p| served.contains(&p.partition) && !resp.diverged.contains(&p.partition))
        {
            let replica_log = zepto_storage::PartitionLog {
                next_seq: pos.next_seq,
                last_epoch: pos.last_record_epoch,
                last_epoch_start: 0,
            };
            let own = node
                .storage()
                .partition_log(pos.partition)
                .map_err(|e| Status::internal(e.to_string()))?;
            if replica_log.diverges_from(&own) {
                if self.diverged.insert(pos.partition) {
                    let msg = format!(
                        "replica node {} holds records this primary does not (its log ends at \
                         seq {} of epoch {}; here: seq {} of epoch {} starting at {}): a \
                         deposed primary's unreplicated tail; it needs a full copy",
                        self.peer,
                        pos.next_seq,
                        pos.last_record_epoch,
                        own.next_seq,
                        own.last_epoch,
                        own.last_epoch_start
                    );
                    tracing::error!(partition = pos.partition, peer = self.peer, "{msg}");
                    self.dp
                        .repl
                        .set_note(pos.partition, |n| n.needs_full_copy = Some(msg.clone()));
                }
                self.known.remove(&pos.partition);
                continue;
            }
            if !self.must_copy.contains(&pos.partition) && self.diverged.remove(&pos.partition) {
                self.dp
                    .repl
                    .set_note(pos.partition, |n| n.needs_full_copy = None);
            }
            self.known.insert(pos.partition, pos.next_seq);
            if let Some(info) = self.dp.view.borrow().state.partition(pos.partition) {
                self.known_at.insert(pos.partition, info.epoch);
            }
            self.dp.repl.set_acked(pos.partition, pos.next_seq);
            self.dp
                .repl
                .set_note(pos.partition, |n| n.last_error = None);
        }
        for &p in &resp.diverged {
            if served.contains(&p) {
                tracing::error!(
                    partition = p,
                    peer = self.peer,
                    "the replica refused records as divergent; copying the partition whole"
                );
                self.must_copy.insert(p);
                self.diverged.insert(p);
                self.known.remove(&p);
                let peer = self.peer;
                self.dp.repl.set_note(p, |n| {
                    n.needs_full_copy = Some(format!(
                        "replica node {peer} refused records: its log holds a tail this \
                         primary's does not"
                    ));
                });
            }
        }
        Ok(resp.gap)
    }

    /// Send queued records (those the replica does not have yet); a gap makes the partition
    /// catch up from the WAL first.
    async fn ship(&mut self, records: Vec<CommittedRecord>) -> Result<(), Status> {
        let state = self.dp.view.borrow().state.clone();
        self.forget_stale_positions(&state);
        let served = self.served();
        let mut pending: Vec<ReplicatedRecord> = records
            .into_iter()
            .filter(|r| served.contains(&r.partition) && !self.diverged.contains(&r.partition))
            .map(|r| ReplicatedRecord {
                partition: r.partition,
                epoch: r.epoch,
                seq: r.seq,
                sender_epoch: state
                    .partition(r.partition)
                    .map_or(r.epoch, |p| p.epoch.max(r.epoch)),
                prev_epoch: None,
                payload: r.payload,
            })
            .collect();
        if let Ok(node) = self.dp.node() {
            fill_prev_epochs(&node, &mut pending);
        }
        // Never append to a replica whose log end we have not checked (a new replica, a
        // deposed primary, or after a failed call): a record that fits its position could
        // sit on top of a foreign tail (ADR 0008). Probe those partitions first.
        let unknown: BTreeSet<u32> = pending
            .iter()
            .map(|r| r.partition)
            .filter(|p| !self.known.contains_key(p))
            .collect();
        if !unknown.is_empty() {
            self.call(Vec::new(), unknown.into_iter().collect()).await?;
            for p in self.diverged.clone() {
                if pending.iter().any(|r| r.partition == p) {
                    self.full_copy(p).await?;
                    self.catch_up(p).await?;
                }
            }
        }
        for _ in 0..3 {
            pending.retain(|r| {
                !self.diverged.contains(&r.partition)
                    && self.known.contains_key(&r.partition)
                    && self.known.get(&r.partition).is_some_and(|&k| r.seq >= k)
            });
            if pending.is_empty() {
                return Ok(());
            }
            if !self.call(pending.clone(), Vec::new()).await? {
                return Ok(());
            }
            // Gap: catch up every partition whose first queued record is past the replica.
            let mut firsts: BTreeMap<u32, u64> = BTreeMap::new();
            for r in &pending {
                firsts.entry(r.partition).or_insert(r.seq);
            }
            for (p, first) in firsts {
                if self.known.get(&p).is_some_and(|&k| k < first) {
                    self.catch_up(p).await?;
                }
            }
        }
        Err(Status::aborted(
            "the replica kept refusing the records as a gap",
        ))
    }

    /// Ask the replica where it is for every served partition that is unknown or behind,
    /// then catch up those behind.
    async fn probe_and_catch_up(&mut self, periodic: bool) -> Result<(), Status> {
        let state = self.dp.view.borrow().state.clone();
        self.forget_stale_positions(&state);
        let node = self
            .dp
            .node()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut behind = Vec::new();
        let corrupt = zepto_cluster::rebalance::corrupt_copies(&state)
            .remove(&self.peer)
            .unwrap_or_default();
        for p in self.served() {
            let (_, next) = node
                .storage()
                .partition_position(p)
                .map_err(|e| Status::internal(e.to_string()))?;
            // A replica out of the in-sync set is probed even when its last answer matched
            // our log end: it may have come back with less than it answered (a wiped disk
            // at the same epoch gave up its in-sync membership, ADR 0012), and only a
            // fresh answer tells.
            let out_of_sync = state
                .partition(p)
                .is_some_and(|i| !i.in_sync.contains(&self.peer));
            // A replica that reported its copy corrupt (ADR 0017) is asked now, even with
            // nothing to ship: its answer (divergent) gets it a whole copy.
            let reported_corrupt = corrupt.contains(&p);
            let known = self.known.get(&p).copied();
            let advancing = periodic
                && known
                    .is_some_and(|k| self.at_last_tick.get(&p).is_some_and(|&before| before < k));
            if (known != Some(next) && !advancing) || out_of_sync || reported_corrupt {
                behind.push((p, next));
            }
        }
        if periodic {
            self.at_last_tick = self.known.clone();
        }
        if behind.is_empty() {
            return Ok(());
        }
        self.call(Vec::new(), behind.iter().map(|(p, _)| *p).collect())
            .await?;
        for (p, next) in behind {
            if self.diverged.contains(&p) {
                // Its log holds records ours does not: only a whole copy fixes it.
                self.full_copy(p).await?;
                self.catch_up(p).await?;
            } else if self.known.get(&p).is_some_and(|&k| k < next) {
                self.catch_up(p).await?;
            }
        }
        Ok(())
    }

    /// Replace everything the replica holds of `p` with a copy of this node's (see
    /// [`super::copy`]); on success the replica's position is the copy's cut.
    async fn full_copy(&mut self, p: u32) -> Result<(), Status> {
        let peer = self.peer;
        self.dp.repl.set_note(p, |n| {
            n.needs_full_copy = Some(format!(
                "copying the whole partition to replica node {peer}"
            ));
        });
        let copied = match super::copy::send(&self.dp, peer, p).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("full copy to replica node {peer} failed: {}", e.message());
                tracing::warn!(partition = p, peer, error = %e.message(), "full copy failed; it is retried");
                self.dp.repl.set_note(p, |n| {
                    n.needs_full_copy = Some(msg.clone());
                    n.last_error = Some(msg.clone());
                });
                self.known.remove(&p);
                return Err(e);
            }
        };
        tracing::info!(
            partition = p,
            peer,
            rows = copied.rows,
            bytes = copied.bytes,
            took_ms = u64::try_from(copied.took.as_millis()).unwrap_or(u64::MAX),
            next_seq = copied.position.next_seq,
            "full copy done; the replica continues from the copy's cut"
        );
        self.diverged.remove(&p);
        self.must_copy.remove(&p);
        self.known.insert(p, copied.position.next_seq);
        if let Some(info) = self.dp.view.borrow().state.partition(p) {
            self.known_at.insert(p, info.epoch);
        }
        self.dp.repl.set_acked(p, copied.position.next_seq);
        self.dp.repl.set_note(p, |n| {
            n.needs_full_copy = None;
            n.last_error = None;
        });
        self.dp.repl.copies.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Send a partition's WAL records from the replica's position until it has everything
    /// this node has.
    async fn catch_up(&mut self, p: u32) -> Result<(), Status> {
        let node = self
            .dp
            .node()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        loop {
            let Some(&from) = self.known.get(&p) else {
                return Ok(());
            };
            let n = node.clone();
            let read = tokio::task::spawn_blocking(move || {
                n.storage().wal_records_since(p, from, CATCH_UP_BYTES)
            })
            .await
            .map_err(|e| Status::internal(format!("WAL read task failed: {e}")))?;
            let mut records = match read {
                Ok(r) => r,
                Err(e @ zepto_storage::Error::WalTruncated { .. }) => {
                    // The WAL no longer reaches back to the replica: copy the partition whole,
                    // then go on from the copy's cut.
                    tracing::info!(partition = p, peer = self.peer, error = %e, "the WAL cannot catch the replica up");
                    self.full_copy(p).await?;
                    continue;
                }
                Err(e) => return Err(Status::internal(e.to_string())),
            };
            if records.is_empty() {
                return Ok(());
            }
            fill_prev_epochs(&node, &mut records);
            tracing::info!(
                partition = p,
                peer = self.peer,
                from,
                records = records.len(),
                "catching the replica up from the WAL"
            );
            let bytes: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
            if self.call(records, vec![p]).await? {
                return Err(Status::aborted(format!(
                    "partition {p}: the replica refused WAL records from {from} as a gap"
                )));
            }
            self.dp.catch_up_bytes.fetch_add(bytes, Ordering::Relaxed);
            if self.known.get(&p).is_none_or(|&k| k <= from) {
                return Err(Status::aborted(format!(
                    "partition {p}: the replica did not advance past {from}"
                )));
            }
            self.dp.repl.set_note(p, |n| n.needs_full_copy = None);
        }
    }
}

/// The `Replicate` call on the replica. See the module doc.
pub(crate) async fn serve(
    dp: &DataPlane,
    from: NodeId,
    req: ReplicateRequest,
) -> Result<ReplicateResponse, Status> {
    let node = dp.node().map_err(|e| Status::unavailable(e.to_string()))?;
    let state = dp.view.borrow().state.clone();
    let mut named: BTreeSet<u32> = req.probe.iter().copied().collect();
    named.extend(req.records.iter().map(|r| r.partition));
    for &p in &named {
        let info = state
            .partition(p)
            .ok_or_else(|| Status::invalid_argument(format!("unknown partition {p}")))?;
        if info.primary != from || info.replica != Some(dp.me) {
            return Err(Status::failed_precondition(format!(
                "NOT_PRIMARY partition {p}: at epoch {} the primary is {} and the replica {:?}; \
                 node {from} may not replicate it to node {}",
                info.epoch, info.primary, info.replica, dp.me
            )));
        }
    }
    let mut gap = false;
    let mut diverged = Vec::new();
    // A partition whose copy here has a corrupt HDB file (ADR 0015) answers as divergent:
    // its primary then replaces the copy whole (ADR 0009), corrupt file included. Its
    // records are not applied meanwhile.
    let corrupt = dp.corrupt_partitions(&node);
    for &p in named.iter().filter(|p| corrupt.contains(p)) {
        tracing::error!(
            partition = p,
            "this copy has a corrupt HDB file; asking the primary for a full copy"
        );
        diverged.push(p);
    }
    let records: Vec<_> = req
        .records
        .into_iter()
        .filter(|r| !corrupt.contains(&r.partition))
        .collect();
    if !records.is_empty() {
        let records: Vec<ReplicatedRecord> = records
            .into_iter()
            .map(|r| ReplicatedRecord {
                partition: r.partition,
                epoch: r.epoch,
                seq: r.seq,
                sender_epoch: r.sender_epoch.max(r.epoch),
                prev_epoch: r.prev_epoch,
                payload: r.payload,
            })
            .collect();
        let applied = match node.storage().write_replicated(records) {
            Ok(ticket) => ticket.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => {}
            Err(zepto_storage::Error::SeqGap { .. }) => gap = true,
            Err(e @ zepto_storage::Error::Fenced { .. }) => {
                return Err(Status::aborted(format!("FENCED {e}")))
            }
            Err(e @ zepto_storage::Error::Diverged { partition, .. }) => {
                // This node was a primary whose last writes never reached its replica: its
                // tail differs from the new primary's and must be replaced by a whole copy,
                // never merged. Nothing was applied; the sender is told which partition.
                tracing::error!(error = %e, "replica holds a divergent tail; it needs a full copy of the partition");
                diverged.push(partition);
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
    }
    let mut positions = Vec::with_capacity(named.len());
    for p in named {
        let (epoch, _) = node
            .storage()
            .partition_position(p)
            .map_err(|e| Status::internal(e.to_string()))?;
        let log = node
            .storage()
            .partition_log(p)
            .map_err(|e| Status::internal(e.to_string()))?;
        positions.push(ReplicaPosition {
            partition: p,
            epoch,
            next_seq: log.next_seq,
            last_record_epoch: log.last_epoch,
        });
    }
    Ok(ReplicateResponse {
        positions,
        gap,
        diverged,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use zepto_cluster::state::PartitionInfo;

    use super::*;

    /// Partitions 0..4 alternately led by node 1 (this node) and node 2, each replicated on
    /// the other.
    fn plane() -> Arc<DataPlane> {
        let state = ClusterState {
            partitions: (0..4)
                .map(|id| PartitionInfo {
                    id,
                    primary: if id % 2 == 0 { 1 } else { 2 },
                    replica: Some(if id % 2 == 0 { 2 } else { 1 }),
                    epoch: 2,
                    in_sync: [1, 2].into_iter().collect(),
                })
                .collect(),
            ..Default::default()
        };
        super::super::dataplane::test_plane(1, 4, state).1
    }

    #[tokio::test]
    async fn a_primary_that_lost_its_data_directory_serves_its_replica_nothing() {
        let dp = plane();
        let s = Sender::new(dp.clone(), 2);
        assert_eq!(s.served(), [0, 2].into_iter().collect());
        // Restarted with an empty data directory, still primary in the map: its empty log
        // must not be shipped (or copied whole) over the replica holding every row.
        dp.set_lost_data(true);
        assert!(s.served().is_empty());
        dp.set_lost_data(false);
        assert_eq!(s.served(), [0, 2].into_iter().collect());
    }
}
