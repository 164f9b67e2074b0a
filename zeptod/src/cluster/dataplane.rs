//! The data plane of cluster mode: what the write router ([`super::route`]) and WAL
//! replication ([`super::replicate`]) share — this node's id, the committed partition map
//! (through the driver's [`View`]), the peer clients, the timings, the ack policy and the
//! open database.
//!
//! Once the database is open ([`DataPlane::set_node`]) it installs the commit listener, starts
//! one replication sender per peer, and keeps the storage engine's partition epochs (and the
//! listener's "where does partition p replicate to" table and the in-sync trackers) in line
//! with the committed map.
//!
//! It also holds this node's **write lease**: a primary accepts a write only while the
//! metadata leader acknowledged one of its heartbeats within `Timings::write_lease` (counted
//! from the heartbeat's send time, and only once this node applied the metadata version the
//! leader had). The lease is shorter than the dead time, so a primary cut off from the
//! majority stops writing before the leader can declare it dead and promote its replicas.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::watch;
use zepto_cluster::{MonoTime, NodeId, Timings, WriteLease};

use super::driver::View;
use super::replicate::Replication;
use crate::config::AckPolicy;
use crate::db::Node;
use crate::error::{Error, Result};
use crate::rpc::client::PeerClients;

/// See the module doc.
#[derive(Debug)]
pub(crate) struct DataPlane {
    pub(crate) me: NodeId,
    pub(crate) view: watch::Receiver<View>,
    pub(crate) peers: Arc<PeerClients>,
    pub(crate) timings: Timings,
    pub(crate) ack: AckPolicy,
    pub(crate) repl: Arc<Replication>,
    node: OnceLock<Arc<Node>>,
    clock: Instant,
    lease: Mutex<WriteLease>,
    /// Set by a drain: this node takes no new writes as a primary.
    draining: std::sync::atomic::AtomicBool,
    /// Local primary writes between their admission and their answer.
    inflight: std::sync::atomic::AtomicUsize,
    /// Woken when `inflight` drops to zero.
    idle: tokio::sync::Notify,
    /// Per partition: admitted local primary writes, and the partitions whose primary is
    /// being handed over by the rebalancer (their writes are refused and retried on the new
    /// primary, as during a drain).
    handoff: Mutex<Handoff>,
    /// Woken when a partition's admitted writes drop to zero.
    partition_idle: tokio::sync::Notify,
    /// Whole-partition copies this node is sending (for `/admin/cluster`).
    pub(crate) copies: Mutex<std::collections::BTreeMap<u32, super::copy::Progress>>,
    /// `--migration-bandwidth` in bytes/s (0: unlimited).
    bandwidth: std::sync::atomic::AtomicU64,
    /// Bytes sent by whole-partition copies since start.
    pub(crate) copy_bytes: std::sync::atomic::AtomicU64,
    /// WAL payload bytes sent to catch replicas up (not the live stream) since start.
    pub(crate) catch_up_bytes: std::sync::atomic::AtomicU64,
    /// Partitions released here since start (copies the map put elsewhere, ADR 0016).
    pub(crate) released: std::sync::atomic::AtomicU64,
    /// When the release of each leftover copy held here is due (for `/admin/cluster`).
    pub(crate) release_due: Mutex<std::collections::BTreeMap<u32, Instant>>,
    /// Set while this node may have lost data the map says it holds (it started with an
    /// empty data directory and has not yet made sure it is no longer primary or in-sync
    /// replica of anything): it serves no write and no query part.
    lost_data: std::sync::atomic::AtomicBool,
    /// Partitions with an HDB file known to be corrupt here, and when that was looked up
    /// (see [`DataPlane::corrupt_partitions`]).
    corrupt: Mutex<(Option<Instant>, std::collections::BTreeSet<u32>)>,
}

#[derive(Debug, Default)]
struct Handoff {
    writes: std::collections::HashMap<u32, usize>,
    handing_off: std::collections::BTreeSet<u32>,
}

/// Counts a local primary write while it runs (see [`DataPlane::admit_write`]).
pub(crate) struct InflightWrite<'a>(&'a DataPlane, Vec<u32>);

impl Drop for InflightWrite<'_> {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            let mut h = self.0.handoff.lock();
            let mut idle = false;
            for p in &self.1 {
                if let Some(n) = h.writes.get_mut(p) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        h.writes.remove(p);
                        idle = true;
                    }
                }
            }
            drop(h);
            if idle {
                self.0.partition_idle.notify_waiters();
            }
        }
        if self
            .0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl DataPlane {
    pub(crate) fn new(
        me: NodeId,
        partitions: u32,
        view: watch::Receiver<View>,
        peers: Arc<PeerClients>,
        timings: Timings,
        ack: AckPolicy,
    ) -> Arc<DataPlane> {
        let clock = Instant::now();
        let repl = Arc::new(Replication::new(
            me,
            partitions,
            peers.ids(),
            timings,
            clock,
        ));
        Arc::new(DataPlane {
            me,
            view,
            peers,
            timings,
            ack,
            repl,
            node: OnceLock::new(),
            clock,
            lease: Mutex::new(WriteLease::new(&timings)),
            draining: std::sync::atomic::AtomicBool::new(false),
            inflight: std::sync::atomic::AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            handoff: Mutex::new(Handoff::default()),
            partition_idle: tokio::sync::Notify::new(),
            copies: Mutex::new(std::collections::BTreeMap::new()),
            bandwidth: std::sync::atomic::AtomicU64::new(0),
            copy_bytes: std::sync::atomic::AtomicU64::new(0),
            catch_up_bytes: std::sync::atomic::AtomicU64::new(0),
            released: std::sync::atomic::AtomicU64::new(0),
            release_due: Mutex::new(std::collections::BTreeMap::new()),
            lost_data: std::sync::atomic::AtomicBool::new(false),
            corrupt: Mutex::new((None, std::collections::BTreeSet::new())),
        })
    }

    /// Partitions whose copy here has an HDB file known to be corrupt (ADR 0015), looked up
    /// at most once a second (once a file was found corrupt the lookup walks every chunk, and
    /// replication asks on every call).
    pub(crate) fn corrupt_partitions(&self, node: &Node) -> std::collections::BTreeSet<u32> {
        let mut c = self.corrupt.lock();
        if c.0
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(1))
        {
            *c = (Some(Instant::now()), node.storage().corrupt_partitions());
        }
        c.1.clone()
    }

    /// Look the corrupt partitions up afresh next time (a copy just replaced a partition).
    pub(crate) fn forget_corrupt_partitions(&self) {
        self.corrupt.lock().0 = None;
    }

    /// Admit a write this node applies as a primary: refused when the lease ran out
    /// (`FENCED`, see [`DataPlane::check_lease`]) or while draining (503, retry: the
    /// partitions are being handed to their replicas). The guard counts it until dropped.
    pub(crate) fn admit_write(&self, partitions: &[u32]) -> Result<InflightWrite<'_>> {
        use std::sync::atomic::Ordering;
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let mut guard = InflightWrite(self, Vec::new());
        self.check_data_intact()?;
        {
            let mut h = self.handoff.lock();
            if let Some(p) = partitions.iter().find(|p| h.handing_off.contains(p)) {
                return Err(Error::Unavailable {
                    message: format!(
                        "partition {p} is being handed to another node by the rebalancer; the \
                         write was not applied, retry"
                    ),
                    retry_after: Some(1),
                });
            }
            for p in partitions {
                *h.writes.entry(*p).or_insert(0) += 1;
            }
            guard.1 = partitions.to_vec();
        }
        if self.draining.load(Ordering::Acquire) {
            return Err(Error::Unavailable {
                message: format!(
                    "node {} is draining: partitions {partitions:?} are being handed to their \
                     replicas; the write was not applied, retry",
                    self.me
                ),
                retry_after: Some(1),
            });
        }
        self.check_lease(partitions)?;
        Ok(guard)
    }

    /// Stop admitting primary writes (a drain began).
    pub(crate) fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// See the `lost_data` field.
    pub(crate) fn set_lost_data(&self, lost: bool) {
        self.lost_data
            .store(lost, std::sync::atomic::Ordering::Release);
    }

    /// Whether this node's data directory holds what the map says it does, i.e. it may act
    /// on its roles: a node that came back with an empty directory must neither ship, copy
    /// nor catch up anything as a primary (its empty log would overwrite the replica that
    /// holds every acknowledged row), nor propose in-sync or placement changes, until it
    /// gave those roles up.
    pub(crate) fn data_intact(&self) -> bool {
        !self.lost_data.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `Unavailable` while this node may have lost data the map says it holds.
    pub(crate) fn check_data_intact(&self) -> Result<()> {
        if !self.data_intact() {
            return Err(Error::Unavailable {
                message: format!(
                    "node {} started with an empty data directory and is giving up the \
                     copies the map still assigns to it; ask another copy",
                    self.me
                ),
                retry_after: Some(1),
            });
        }
        Ok(())
    }

    /// Set `--migration-bandwidth` (bytes/s; `None`: unlimited).
    pub(crate) fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        self.bandwidth.store(
            bytes_per_sec.unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `--migration-bandwidth` (bytes/s), `None` when unlimited.
    pub(crate) fn bandwidth(&self) -> Option<u64> {
        Some(self.bandwidth.load(std::sync::atomic::Ordering::Relaxed)).filter(|b| *b > 0)
    }

    /// Stop admitting writes of `partition` (the rebalancer hands its primary over) and
    /// wait, until `deadline`, for its admitted writes to finish. Returns whether they did.
    /// [`DataPlane::end_handoff`] admits them again.
    pub(crate) async fn begin_handoff(&self, partition: u32, deadline: Instant) -> bool {
        self.handoff.lock().handing_off.insert(partition);
        loop {
            let woken = self.partition_idle.notified();
            if !self.handoff.lock().writes.contains_key(&partition) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, woken).await.is_err() {
                return false;
            }
        }
    }

    pub(crate) fn end_handoff(&self, partition: u32) {
        self.handoff.lock().handing_off.remove(&partition);
    }

    /// Whether any of `partitions` is being handed over (its writes retry elsewhere).
    pub(crate) fn is_handing_off(&self, partitions: &[u32]) -> bool {
        let h = self.handoff.lock();
        partitions.iter().any(|p| h.handing_off.contains(p))
    }

    /// Whether a drain began on this node.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait until no admitted primary write is running, at most until `deadline`.
    pub(crate) async fn writes_idle(&self, deadline: std::time::Instant) {
        loop {
            let woken = self.idle.notified();
            if self.inflight.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, woken).await.is_err() {
                return;
            }
        }
    }

    /// Monotonic time of this process (the clock of the lease and the in-sync trackers).
    pub(crate) fn now(&self) -> MonoTime {
        mono(self.clock)
    }

    /// The leader acknowledged a heartbeat sent at `sent_at`.
    pub(crate) fn renew_lease(&self, sent_at: MonoTime) {
        self.lease.lock().on_majority_contact(sent_at);
    }

    /// Whether this node may accept writes as a primary now.
    pub(crate) fn lease_valid(&self) -> bool {
        self.lease.lock().may_accept_writes(self.now())
    }

    /// Bring this node's metadata (and its local catalog) up to what the metadata leader has
    /// applied now: one heartbeat round trip, then a bounded wait for the local apply (the
    /// heartbeat renews the write lease like any other). A statement that failed with
    /// NOT_FOUND calls this before the answer goes out, so a table created and acknowledged
    /// through another node a moment ago is never "not found" here (followers learn a commit
    /// only with the leader's next raft message); a node without a lease calls it before it
    /// answers a query from its own copy. Returns whether this node was behind and has caught
    /// up.
    pub(crate) async fn catch_up_with_leader(&self) -> bool {
        // A node whose storage failed stays silent (see the heartbeat loop): the leader must
        // declare it dead and fail its partitions over, and this heartbeat would count.
        if self
            .node
            .get()
            .is_some_and(|n| n.storage().health().is_err())
        {
            return false;
        }
        let (leader, req, version) = {
            let v = self.view.borrow();
            (
                v.leader,
                crate::rpc::pb::HeartbeatRequest {
                    meta_last_index: v.last_index,
                    meta_fresh: v.fresh,
                },
                v.state.version,
            )
        };
        let Some(leader) = leader.filter(|l| *l != self.me) else {
            return false; // the leader applies what it commits before anyone else hears of it
        };
        let Some(client) = self.peers.get(leader) else {
            return false;
        };
        let sent_at = self.now();
        let leader_version = match client.heartbeat(req).await {
            Ok(r) if r.acknowledged => r.version,
            _ => return false,
        };
        let mut view = self.view.clone();
        let caught_up = tokio::time::timeout(
            self.timings.peer_call_timeout(),
            view.wait_for(|v| v.state.version >= leader_version && v.catalog_applied >= v.applied),
        )
        .await;
        if !matches!(caught_up, Ok(Ok(_))) {
            return false;
        }
        // The leader counted the heartbeat and this node applied the version it answered.
        self.renew_lease(sent_at);
        leader_version > version
    }

    /// Whether this node may answer reads of its partitions from its own copy: only while
    /// it holds the write lease, i.e. it applied the metadata leader's map within the lease
    /// (shorter than the dead time), so no failover it has not heard of can have moved a
    /// partition away from it. A node without the lease (just restarted, or cut off from the
    /// majority) first tries to catch up with the leader; until it can, the query reads
    /// another copy, and a partial answer from a stale map is never returned.
    pub(crate) async fn may_serve_reads(&self) -> Result<()> {
        if self.lease_valid() {
            return Ok(());
        }
        self.catch_up_with_leader().await;
        if self.lease_valid() {
            return Ok(());
        }
        Err(Error::Unavailable {
            message: format!(
                "node {} has no contact with the metadata majority, so its partition map may \
                 be stale; it does not answer from its own copy",
                self.me
            ),
            retry_after: Some(1),
        })
    }

    /// Resolves once the write lease has run out (at once when there is none).
    async fn lease_lost(&self) {
        loop {
            let until = self.lease.lock().valid_until();
            let now = self.now();
            match until {
                Some(u) if now < u => tokio::time::sleep(u.saturating_since(now)).await,
                _ => return,
            }
        }
    }

    /// Wait until this primary may acknowledge `records` in `--ack replicated` mode (see
    /// [`Replication::wait_replicated`]). When the write lease runs out first the answer is
    /// an unknown outcome at once instead of at the end of the bound: a primary cut off
    /// from the metadata majority cannot commit an in-sync shrink, and its partitions are
    /// about to fail over, so waiting longer would only hold the client.
    pub(crate) async fn wait_acknowledgeable(&self, records: &[(u32, u64)]) -> Result<()> {
        let bound = super::replicate::ack_wait_bound(&self.timings);
        tokio::select! {
            // A write confirmed just as the lease ends is acknowledged.
            biased;
            r = self.repl.wait_replicated(&self.view, records, bound) => r,
            () = self.lease_lost() => {
                let partitions: std::collections::BTreeSet<u32> =
                    records.iter().map(|&(p, _)| p).collect();
                Err(Error::Unavailable {
                    message: format!(
                        "the write is durable on node {} but its write lease ran out (no \
                         contact with the metadata majority) before the replica confirmed it \
                         for partitions {partitions:?}; the outcome is unknown (it may or may \
                         not survive a failover)",
                        self.me
                    ),
                    retry_after: Some(1),
                })
            }
        }
    }

    /// `FENCED` unless the write lease is valid: the write is not applied.
    pub(crate) fn check_lease(&self, partitions: &[u32]) -> Result<()> {
        if self.lease_valid() {
            return Ok(());
        }
        Err(Error::Fenced(format!(
            "LEASE_EXPIRED node {} has not heard from the metadata majority within its write \
             lease ({:?}) and may have been replaced as primary of partitions {partitions:?}; \
             the write was not applied",
            self.me, self.timings.write_lease
        )))
    }

    /// The open database, or 503 while it is still opening.
    pub(crate) fn node(&self) -> Result<Arc<Node>> {
        self.node.get().cloned().ok_or_else(|| Error::Unavailable {
            message: "the database is still opening".into(),
            retry_after: Some(1),
        })
    }

    /// The database is open: install the commit listener, start the replication senders
    /// and the epoch follower. Only the first call does anything.
    pub(crate) fn set_node(self: &Arc<Self>, node: Arc<Node>, shutdown: watch::Receiver<bool>) {
        if self.node.set(node.clone()).is_err() {
            return;
        }
        self.repl.install_listener(&node);
        tokio::spawn(follow_map(self.clone(), node, shutdown.clone()));
        super::replicate::start_senders(self, shutdown);
    }
}

/// Milliseconds since `clock` as a [`MonoTime`].
pub(crate) fn mono(clock: Instant) -> MonoTime {
    MonoTime::from_millis(u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// Apply every committed partition map to the storage engine's epochs and to the
/// replication targets, until shutdown.
async fn follow_map(dp: Arc<DataPlane>, node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let mut view = dp.view.clone();
    let mut warned = std::collections::BTreeSet::new();
    loop {
        let state = view.borrow_and_update().state.clone();
        for p in &state.partitions {
            if let Err(e) = node.storage().set_partition_epoch(p.id, p.epoch) {
                if warned.insert((p.id, p.epoch)) {
                    tracing::warn!(partition = p.id, epoch = p.epoch, error = %e, "cannot set the partition epoch from the committed map");
                }
            }
        }
        for n in state.nodes.values() {
            // A node that joined after this one started (ADR 0012).
            dp.peers.ensure(n.id, &n.grpc_addr);
            super::replicate::ensure_sender(&dp, n.id, shutdown.clone());
        }
        dp.repl.set_targets(&state);
        dp.repl.follow_trackers(&state, &node, dp.now());
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A data plane for unit tests: node `me` of a cluster whose committed map is `state` (the
/// returned sender publishes later maps), with `partitions` storage partitions, default
/// timings, replicated acks, no peers and no database.
#[cfg(test)]
pub(crate) fn test_plane(
    me: NodeId,
    partitions: u32,
    state: zepto_cluster::ClusterState,
) -> (watch::Sender<View>, Arc<DataPlane>) {
    let view = View {
        state: Arc::new(state),
        ..Default::default()
    };
    let (tx, rx) = watch::channel(view);
    let (events, _erx) = tokio::sync::mpsc::channel(1);
    let (fatal, _frx) = tokio::sync::mpsc::channel(1);
    let identity = crate::rpc::Identity {
        node_id: me,
        advertise_addr: format!("n:{me}"),
        token: None,
    };
    let peers = PeerClients::start(
        &identity,
        &std::collections::BTreeMap::new(),
        std::time::Duration::from_secs(1),
        events,
        fatal,
    );
    let dp = DataPlane::new(
        me,
        partitions,
        rx,
        peers,
        Timings::defaults(),
        AckPolicy::Replicated,
    );
    (tx, dp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn plane() -> Arc<DataPlane> {
        let (_tx, dp) = test_plane(1, 2, zepto_cluster::ClusterState::default());
        dp.renew_lease(dp.now());
        dp
    }

    #[tokio::test]
    async fn a_handoff_waits_for_the_partitions_writes_and_refuses_new_ones() {
        let dp = plane();
        let running = dp.admit_write(&[0]).unwrap();
        let other = dp.clone();
        let handoff = tokio::spawn(async move {
            other
                .begin_handoff(0, Instant::now() + Duration::from_secs(10))
                .await
        });
        // Refused (to be retried on the new primary) once the handoff began; the other
        // partition is not affected.
        let refused = loop {
            match dp.admit_write(&[0]) {
                Err(e) => break e,
                Ok(g) => drop(g),
            }
            tokio::task::yield_now().await;
        };
        assert!(
            matches!(&refused, Error::Unavailable { message, .. } if message.contains("handed")),
            "{refused:?}"
        );
        assert!(dp.is_handing_off(&[1, 0]) && !dp.is_handing_off(&[1]));
        drop(dp.admit_write(&[1]).unwrap());
        assert!(!handoff.is_finished(), "the admitted write still runs");
        drop(running);
        assert!(tokio::time::timeout(Duration::from_secs(5), handoff)
            .await
            .unwrap()
            .unwrap());
        dp.end_handoff(0);
        drop(dp.admit_write(&[0]).unwrap());
    }

    #[tokio::test]
    async fn a_handoff_gives_up_at_its_deadline() {
        let dp = plane();
        let _running = dp.admit_write(&[1]).unwrap();
        let idle = dp
            .begin_handoff(1, Instant::now() + Duration::from_millis(50))
            .await;
        assert!(!idle);
    }
}
