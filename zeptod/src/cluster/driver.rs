//! The metadata driver: the one thread that owns this node's [`MetaNode`] and the leader's
//! [`Coordinator`].
//!
//! It runs on its own OS thread with a current-thread tokio runtime, because
//! `MetaNode::advance` fsyncs (and applying DDL to the local catalog fsyncs too): blocking
//! there never stalls the HTTP or gRPC workers. Everything reaches it as an [`Event`] on one
//! channel; it ticks raft on a tokio interval of `Timings::raft_tick`. After every batch of
//! events it `advance`s (durable first), hands outbound raft messages to the per-peer queues,
//! answers proposers whose command committed, lets the coordinator propose node-state changes
//! while leading, proposes the initial partition map once every voter has registered,
//! brings the local storage catalog in line with the committed tables, and publishes a
//! [`View`] for HTTP.
//!
//! An `advance` error is fatal (ADR 0003): raft's durability promise cannot be kept, so the
//! process exits non-zero through the server's fatal channel and restarts from disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use zepto_cluster::coordinator::Coordinator;
use zepto_cluster::raft::{MetaConfig, MetaNode, MetaStorage, ProposalId};
use zepto_cluster::state::{Applied, Rejected};
use zepto_cluster::{placement, ClusterState, Command, MonoTime, NodeId};

use crate::config::{ClusterConfig, Config};
use crate::db::Node;
use crate::error::{Error, Result};
use crate::rpc::client::PeerClients;

/// Most events handled before the next `advance` (bounds the latency of one loop turn).
const EVENT_BATCH: usize = 256;

/// Why a state machine refused a command, in the few kinds callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectKind {
    TableExists,
    UnknownTable,
    NodeIdInUse,
    Other,
}

impl RejectKind {
    pub(crate) fn of(r: &Rejected) -> RejectKind {
        match r {
            Rejected::TableExists { .. } => RejectKind::TableExists,
            Rejected::UnknownTable { .. } => RejectKind::UnknownTable,
            Rejected::NodeIdInUse { .. } => RejectKind::NodeIdInUse,
            _ => RejectKind::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RejectKind::TableExists => "TABLE_EXISTS",
            RejectKind::UnknownTable => "UNKNOWN_TABLE",
            RejectKind::NodeIdInUse => "NODE_ID_IN_USE",
            RejectKind::Other => "OTHER",
        }
    }

    pub(crate) fn parse(s: &str) -> RejectKind {
        match s {
            "TABLE_EXISTS" => RejectKind::TableExists,
            "UNKNOWN_TABLE" => RejectKind::UnknownTable,
            "NODE_ID_IN_USE" => RejectKind::NodeIdInUse,
            _ => RejectKind::Other,
        }
    }
}

/// A committed proposal, as the proposer sees it.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) index: u64,
    pub(crate) version: u64,
    /// The state machine refused the command (deterministically, on every node).
    pub(crate) rejected: Option<(RejectKind, String)>,
    /// An earlier attempt of the same proposal had an unknown outcome (it may have been
    /// applied, so a refusal like "already exists" may be that attempt's doing).
    pub(crate) after_unknown: bool,
}

/// Why a proposal did not (knowingly) commit.
#[derive(Debug, Clone)]
pub(crate) enum ProposeError {
    /// This node does not lead; `leader` is the one it knows of.
    NotLeader(Option<NodeId>),
    /// Leadership changed while the proposal was in flight: it may or may not commit.
    Unknown(String),
}

/// A heartbeat's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeartbeatAck {
    pub(crate) acknowledged: bool,
    pub(crate) leader: Option<NodeId>,
    pub(crate) term: u64,
    /// The metadata version applied when the heartbeat was counted.
    pub(crate) version: u64,
}

/// Everything the driver reacts to.
#[derive(Debug)]
pub(crate) enum Event {
    /// Raft messages from an authenticated peer.
    Raft { from: NodeId, msgs: Vec<Vec<u8>> },
    /// Sending to a peer failed.
    Unreachable(NodeId),
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<Outcome, ProposeError>>,
    },
    Heartbeat {
        from: NodeId,
        /// The sender's metadata log end and whether its store is fresh (remote senders).
        log: Option<(u64, bool)>,
        reply: oneshot::Sender<HeartbeatAck>,
    },
    /// The local database finished opening.
    DbOpen(Arc<Node>),
    /// Build the `/admin/cluster` JSON.
    Admin(oneshot::Sender<serde_json::Value>),
}

/// What the driver publishes after every turn (read-only for HTTP).
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    pub(crate) state: Arc<ClusterState>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) term: u64,
    pub(crate) applied: u64,
    pub(crate) commit: u64,
    /// The applied index the local storage catalog matches (0 until the database is open).
    pub(crate) catalog_applied: u64,
    /// Why the local catalog could not be brought in line, if it could not.
    pub(crate) catalog_error: Option<String>,
    /// The index of the last entry of this node's metadata log.
    pub(crate) last_index: u64,
    /// This process created the metadata store empty (see `HeartbeatRequest.meta_fresh`).
    pub(crate) fresh: bool,
}

/// Open the metadata storage and start the driver thread. Returns whether this process
/// created the metadata store empty (a new node or a replaced disk).
pub(crate) fn start(
    cfg: &Config,
    cluster: &ClusterConfig,
    events: mpsc::Receiver<Event>,
    view_tx: watch::Sender<View>,
    peers: Arc<PeerClients>,
    fatal: mpsc::Sender<Error>,
) -> Result<bool> {
    let dir = cfg.data_dir.join("meta");
    let (storage, report) = MetaStorage::open(&dir)
        .map_err(|e| Error::Internal(format!("open metadata storage {}: {e}", dir.display())))?;
    if report.truncated_bytes > 0 {
        tracing::warn!(?report, "metadata log had a torn tail; truncated");
    }
    let fresh = report.entries == 0 && report.snapshot_index == 0;
    let started = Instant::now();
    let mut meta_cfg = MetaConfig::new(
        cluster.node_id,
        cluster.peers.keys().copied().collect(),
        cluster.timings,
    );
    // Wall-clock ms at start: distinguishes this life's proposals from earlier ones.
    meta_cfg.incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let node = MetaNode::open(meta_cfg, storage)
        .map_err(|e| Error::Internal(format!("start the metadata raft node: {e}")))?;
    tracing::info!(
        node = cluster.node_id,
        applied = node.applied_index(),
        term = node.term(),
        "metadata node open"
    );
    let driver = Driver {
        node,
        coordinator: match cluster.replace_after {
            Some(after) => Coordinator::new(&cluster.timings).with_replace_after(after),
            None => Coordinator::new(&cluster.timings),
        },
        cluster: cluster.clone(),
        partitions: cfg.partitions,
        peers,
        view_tx,
        waiters: HashMap::new(),
        db: None,
        catalog_applied: 0,
        catalog_version: None,
        catalog_error: None,
        started,
        init_proposed_at: None,
        fresh,
        lost_reports: BTreeMap::new(),
        stepped_down_at: None,
        peers_version: None,
    };
    std::thread::Builder::new()
        .name("zepto-meta".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = fatal.blocking_send(Error::io("start the metadata runtime", e));
                    return;
                }
            };
            // A panic in raft-rs (an invariant it cannot keep) must stop the process, not
            // leave it serving with a dead metadata driver.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(driver.run(events))
            }));
            match run {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "metadata driver stopped");
                    let _ = fatal.blocking_send(e);
                }
                Err(_) => {
                    let _ = fatal.blocking_send(Error::Internal(
                        "the metadata driver panicked; restarting from disk".into(),
                    ));
                }
            }
        })
        .map_err(|e| Error::io("spawn the metadata driver thread", e))?;
    Ok(fresh)
}

struct Driver {
    node: MetaNode,
    coordinator: Coordinator,
    cluster: ClusterConfig,
    partitions: u32,
    peers: Arc<PeerClients>,
    view_tx: watch::Sender<View>,
    waiters: HashMap<ProposalId, oneshot::Sender<Result<Outcome, ProposeError>>>,
    db: Option<Arc<Node>>,
    catalog_applied: u64,
    /// The metadata version the local catalog was last reconciled with.
    catalog_version: Option<u64>,
    catalog_error: Option<String>,
    started: Instant,
    init_proposed_at: Option<MonoTime>,
    /// This process created the metadata store empty.
    fresh: bool,
    /// Leader: voters whose heartbeats report a log shorter than what they acknowledged
    /// (since when), see [`Driver::note_log_report`].
    lost_reports: BTreeMap<NodeId, MonoTime>,
    /// When a storage-failed leader last tried to hand the leadership over.
    stepped_down_at: Option<MonoTime>,
    /// The metadata version peer clients were last made for.
    peers_version: Option<u64>,
}

impl Driver {
    /// Leader: a heartbeat from `from` with its log end. A log that ends before what raft
    /// knows the node acknowledged means the node lost entries it had made durable (its disk
    /// was replaced; `fresh` says so outright, but a node restarted again before it was
    /// replaced no longer has a fresh store). Reported for two heartbeat intervals in a row
    /// (not one heartbeat that raced an append), the voter is replaced
    /// ([`MetaNode::reconcile_membership`]).
    fn note_log_report(&mut self, from: NodeId, log: Option<(u64, bool)>, now: MonoTime) {
        let lost = match (log, self.node.matched(from)) {
            (Some((last, _fresh)), Some(matched)) => from != self.cluster.node_id && matched > last,
            _ => false,
        };
        if lost {
            self.lost_reports.entry(from).or_insert(now);
        } else {
            self.lost_reports.remove(&from);
        }
    }

    /// A leader whose storage failed (its WAL is poisoned; it stopped heartbeating and will be
    /// declared dead) hands the metadata leadership to a healthy voter, so the cluster's
    /// decisions are taken by a node that can serve. At most once per election timeout.
    fn step_down_if_storage_failed(&mut self, now: MonoTime) {
        if !self.node.is_leader() {
            return;
        }
        let failed = self
            .db
            .as_ref()
            .is_some_and(|db| db.storage().health().is_err());
        if !failed {
            return;
        }
        let due = self.stepped_down_at.is_none_or(|at| {
            now.saturating_since(at) >= self.cluster.timings.max_election_timeout()
        });
        if due {
            self.stepped_down_at = Some(now);
            if let Some(to) = self.node.transfer_leadership() {
                tracing::warn!(to, "storage failed: handing the metadata leadership over");
            }
        }
    }

    /// Leader: keep every configured voter a voter with an intact log (one raft
    /// configuration change at a time).
    fn reconcile_membership(&mut self, now: MonoTime) {
        if !self.node.is_leader() {
            self.lost_reports.clear();
            return;
        }
        let settle = self.cluster.timings.heartbeat_interval * 2;
        let lost: std::collections::BTreeSet<NodeId> = self
            .lost_reports
            .iter()
            .filter(|(_, since)| now.saturating_since(**since) >= settle)
            .map(|(id, _)| *id)
            .collect();
        let configured: Vec<NodeId> = self.cluster.peers.keys().copied().collect();
        match self.node.reconcile_membership(&configured, &lost) {
            Ok(Some((node, what))) => {
                tracing::warn!(node, "metadata membership: {what}");
                self.lost_reports.remove(&node);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "membership change not proposed"),
        }
        self.reconcile_learners(&lost);
    }

    /// Leader: every registered node outside `--peers` is a raft learner (it receives the
    /// metadata but never votes, ADR 0012); a learner no longer registered (decommissioned)
    /// leaves the group, and so does one whose log was lost (`lost`, a wiped disk: raft would
    /// ignore its rejections forever), to be added back as a fresh learner next.
    /// One configuration change at a time.
    fn reconcile_learners(&mut self, lost: &std::collections::BTreeSet<NodeId>) {
        if !self.node.is_leader() || self.node.has_pending_conf() {
            return;
        }
        let (voters, learners) = self.node.membership();
        if let Some(&id) = lost.iter().find(|id| learners.contains(id)) {
            match self.node.propose_remove_node(id) {
                Ok(()) => {
                    tracing::warn!(
                        node = id,
                        "metadata membership: remove the learner whose log was lost"
                    );
                    self.lost_reports.remove(&id);
                }
                Err(e) => tracing::debug!(error = %e, "learner change not proposed"),
            }
            return;
        }
        let state = self.node.state();
        let add = state.nodes.keys().copied().find(|id| {
            !self.cluster.peers.contains_key(id) && !voters.contains(id) && !learners.contains(id)
        });
        let remove = learners
            .iter()
            .copied()
            .find(|id| !self.cluster.peers.contains_key(id) && !state.nodes.contains_key(id));
        let r = match (add, remove) {
            (Some(id), _) => self
                .node
                .propose_add_learner(id)
                .map(|()| (id, "add the registered data node as a learner")),
            (None, Some(id)) => self
                .node
                .propose_remove_node(id)
                .map(|()| (id, "remove the decommissioned learner")),
            (None, None) => return,
        };
        match r {
            Ok((node, what)) => tracing::info!(node, "metadata membership: {what}"),
            Err(e) => tracing::debug!(error = %e, "learner change not proposed"),
        }
    }

    /// Clients for every registered node (a node that joined after this one started).
    fn sync_peers(&mut self) {
        let version = self.node.state().version;
        if self.peers_version == Some(version) {
            return;
        }
        self.peers_version = Some(version);
        for n in self.node.state().nodes.values() {
            self.peers.ensure(n.id, &n.grpc_addr);
        }
    }

    fn now(&self) -> MonoTime {
        MonoTime::from_millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>) -> Result<()> {
        let mut tick = tokio::time::interval(self.cluster.timings.raft_tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.node.tick();
                    self.coordinate();
                }
                ev = events.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev);
                        for _ in 0..EVENT_BATCH {
                            match events.try_recv() {
                                Ok(ev) => self.handle(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    // Every sender is gone: the server is shutting down.
                    None => return Ok(()),
                },
            }
            self.turn()?;
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Raft { from, msgs } => {
                for m in msgs {
                    if let Err(e) = self.node.step_from(from, &m) {
                        tracing::debug!(from, error = %e, "dropped a raft message");
                    }
                }
            }
            Event::Unreachable(peer) => self.node.report_unreachable(peer),
            Event::Propose { cmd, reply } => match self.node.propose(&cmd) {
                Ok(id) => {
                    self.waiters.insert(id, reply);
                }
                Err(zepto_cluster::Error::NotLeader { leader }) => {
                    let _ = reply.send(Err(ProposeError::NotLeader(leader)));
                }
                Err(e) => {
                    let _ = reply.send(Err(ProposeError::Unknown(e.to_string())));
                }
            },
            Event::Heartbeat { from, log, reply } => {
                let now = self.now();
                let acknowledged = self.coordinator.on_heartbeat(from, now);
                self.note_log_report(from, log, now);
                let _ = reply.send(HeartbeatAck {
                    acknowledged,
                    leader: self.node.leader(),
                    term: self.node.term(),
                    version: self.node.state().version,
                });
            }
            Event::DbOpen(db) => self.db = Some(db),
            Event::Admin(reply) => {
                let _ = reply.send(self.admin_view());
            }
        }
    }

    /// The leader's periodic duties: failure detection and failover proposals, and the
    /// initial partition map.
    fn coordinate(&mut self) {
        let now = self.now();
        self.step_down_if_storage_failed(now);
        self.reconcile_membership(now);
        let cmds = self.coordinator.tick(self.node.state(), now);
        for cmd in cmds {
            tracing::info!(?cmd, "coordinator proposes");
            if let Err(e) = self.node.propose(&cmd) {
                tracing::debug!(error = %e, "coordinator proposal dropped");
            }
        }
        if !self.node.is_leader() || !self.node.state().partitions.is_empty() {
            return;
        }
        let state = self.node.state();
        if !self
            .cluster
            .peers
            .keys()
            .all(|id| state.nodes.contains_key(id))
        {
            return;
        }
        let due = self.init_proposed_at.is_none_or(|at| {
            now.saturating_since(at) >= self.cluster.timings.max_election_timeout()
        });
        if !due {
            return;
        }
        let voters: Vec<NodeId> = self.cluster.peers.keys().copied().collect();
        match placement::place(&voters, self.partitions, self.cluster.replication_factor) {
            Ok(a) => {
                self.init_proposed_at = Some(now);
                tracing::info!(
                    partitions = self.partitions,
                    rf = self.cluster.replication_factor,
                    "proposing the initial partition map"
                );
                if let Err(e) = self.node.propose(&placement::init_command(a)) {
                    tracing::debug!(error = %e, "partition map proposal dropped");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot place partitions"),
        }
    }

    /// Persist and apply what raft has ready, then act on it. An error here is fatal.
    fn turn(&mut self) -> Result<()> {
        let out = self
            .node
            .advance()
            .map_err(|e| Error::Internal(format!("metadata raft storage failed: {e}")))?;
        self.sync_peers();
        for (to, bytes) in out.messages {
            self.peers.send_raft(to, bytes);
        }
        for c in out.committed {
            let Some(id) = c.proposal else { continue };
            let Some(reply) = self.waiters.remove(&id) else {
                continue;
            };
            let outcome = match c.result {
                Ok(Applied::Changed { version }) => Outcome {
                    index: c.index,
                    version,
                    rejected: None,
                    after_unknown: false,
                },
                Ok(Applied::Unchanged) => Outcome {
                    index: c.index,
                    version: self.node.state().version,
                    rejected: None,
                    after_unknown: false,
                },
                Err(r) => Outcome {
                    index: c.index,
                    version: self.node.state().version,
                    rejected: Some((RejectKind::of(&r), r.to_string())),
                    after_unknown: false,
                },
            };
            let _ = reply.send(Ok(outcome));
        }
        if let Some(role) = out.role {
            tracing::info!(leader = ?role.leader, is_leader = role.is_leader, term = role.term, "metadata role changed");
            if !role.is_leader && !self.waiters.is_empty() {
                // Our proposals may still commit under the new leader, or be dropped; the
                // proposer cannot know which. It gets a retryable error.
                for (_, reply) in self.waiters.drain() {
                    let _ = reply.send(Err(ProposeError::Unknown(
                        "the metadata leader changed while the command was in flight; it may or may not have been applied".into(),
                    )));
                }
            }
        }
        let now = self.now();
        self.coordinator.observe_leadership(
            self.node.is_leader(),
            self.node.term(),
            self.node.state(),
            now,
        );
        self.reconcile_catalog();
        self.publish();
        Ok(())
    }

    /// Make the local storage catalog hold exactly the committed tables with their ids.
    fn reconcile_catalog(&mut self) {
        let Some(db) = &self.db else { return };
        // After a restart the state is the snapshot's until the committed log is replayed;
        // reconciling with it would drop tables created after the snapshot. The catalog was
        // only ever reconciled with states at or below the persisted commit index.
        if self.node.applied_index() < self.node.commit_index() {
            return;
        }
        let state = self.node.state();
        if self.catalog_version == Some(state.version) {
            self.catalog_applied = self.node.applied_index();
            return;
        }
        match db.reconcile_catalog(state) {
            Ok(()) => {
                self.catalog_version = Some(state.version);
                self.catalog_applied = self.node.applied_index();
                self.catalog_error = None;
            }
            Err(e) => {
                if self.catalog_error.as_deref() != Some(&e.to_string()) {
                    tracing::error!(error = %e, "cannot apply the committed tables to the local catalog");
                }
                self.catalog_error = Some(e.to_string());
            }
        }
    }

    fn publish(&self) {
        let n = &self.node;
        let changed = {
            let v = self.view_tx.borrow();
            v.applied != n.applied_index()
                || v.commit != n.commit_index()
                || v.leader != n.leader()
                || v.term != n.term()
                || v.catalog_applied != self.catalog_applied
                || v.catalog_error != self.catalog_error
                || v.state.version != n.state().version
                || v.last_index != n.last_index()
        };
        if changed {
            self.view_tx.send_replace(View {
                state: Arc::new(n.state().clone()),
                leader: n.leader(),
                term: n.term(),
                applied: n.applied_index(),
                commit: n.commit_index(),
                catalog_applied: self.catalog_applied,
                catalog_error: self.catalog_error.clone(),
                last_index: n.last_index(),
                fresh: self.fresh,
            });
        }
    }

    fn admin_view(&self) -> serde_json::Value {
        let n = &self.node;
        let view = zepto_cluster::admin::cluster_view(
            n.state(),
            n.leader(),
            n.term(),
            Some(&self.coordinator),
            self.now(),
        );
        let mut v = serde_json::to_value(&view).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("mode".into(), "cluster".into());
            obj.insert("node_id".into(), self.cluster.node_id.into());
            obj.insert("is_leader".into(), n.is_leader().into());
            obj.insert("applied_index".into(), n.applied_index().into());
            obj.insert("commit_index".into(), n.commit_index().into());
            obj.insert("catalog_applied_index".into(), self.catalog_applied.into());
            obj.insert(
                "catalog_error".into(),
                self.catalog_error
                    .clone()
                    .map_or(serde_json::Value::Null, Into::into),
            );
            let tables: Vec<serde_json::Value> = n
                .state()
                .tables
                .keys()
                .map(|k| {
                    serde_json::json!({
                        "name": n.state().tables.get(k).map(|s| s.name.clone()),
                        "id": n.state().table_ids.get(k),
                    })
                })
                .collect();
            obj.insert("tables".into(), tables.into());
            // The local storage catalog, to compare ids across nodes.
            let local: Option<Vec<serde_json::Value>> = self.db.as_ref().map(|db| {
                db.table_ids()
                    .into_iter()
                    .map(|(name, id)| serde_json::json!({ "name": name, "id": id }))
                    .collect()
            });
            obj.insert(
                "local_tables".into(),
                serde_json::to_value(local).unwrap_or_default(),
            );
            obj.insert(
                "heartbeat_ages_known".into(),
                (if n.is_leader() {
                    "here (this node leads)"
                } else {
                    "on the leader only"
                })
                .into(),
            );
            obj.insert(
                "timings_ms".into(),
                serde_json::json!({
                    "heartbeat": ms(self.cluster.timings.heartbeat_interval),
                    "suspect_after": ms(self.cluster.timings.suspect_after),
                    "dead_after": ms(self.cluster.timings.dead_after),
                    "raft_tick": ms(self.cluster.timings.raft_tick),
                    "election_timeout": ms(self.cluster.timings.election_timeout()),
                }),
            );
        }
        v
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
