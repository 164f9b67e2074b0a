//! Cluster mode (`--peers`): this node's membership in the metadata raft group, as a handle
//! the HTTP layer shares ([`Cluster`]).
//!
//! - [`driver`]: the thread that owns the raft node (ticks, steps, proposes, applies).
//! - [`ddl`]: `CREATE TABLE` / `DROP TABLE` go through the metadata group; every node then
//!   applies the committed tables to its own storage catalog with the metadata's table ids.
//! - here: startup (gRPC listener, peer clients, driver), forwarding proposals to the leader,
//!   registering this node (`AddNode`), heartbeating the leader, and readiness.
//!
//! - [`route`]: bulk writes are split by partition and written on each partition's primary
//!   (forwarded with `Forward`).
//! - [`replicate`]: primaries ship their WAL records to the partitions' replicas; replicated
//!   acks wait for them.
//! - [`dataplane`]: what those two share.
//! - [`query`]: SELECTs through any node: planned once, run on the partitions' owners
//!   (primaries, or in-sync replicas when a primary fails), merged here (ADR 0007).
//!
//! Not yet here: joins and unions across nodes and subqueries in expressions (refused in
//! cluster mode), full partition copies; SQL `INSERT ... VALUES` is refused in cluster mode
//! (ADR 0006).

pub(crate) mod copy;
pub(crate) mod dataplane;
pub(crate) mod ddl;
pub(crate) mod driver;
pub(crate) mod query;
pub(crate) mod rebalance;
pub(crate) mod release;
pub(crate) mod replicate;
pub(crate) mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use zepto_cluster::{Command, NodeId};

use crate::config::{ClusterConfig, Config};
use crate::db::Node;
use crate::error::{Error, Result};
use crate::rpc::client::PeerClients;
use crate::rpc::server::PeerService;
use crate::rpc::Identity;
use driver::{Event, Outcome, ProposeError, RejectKind, View};

/// Depth of the driver's event queue.
const EVENT_QUEUE: usize = 8192;

/// This node's handle on the cluster. See the module doc.
#[derive(Debug)]
pub(crate) struct Cluster {
    cfg: ClusterConfig,
    events: mpsc::Sender<Event>,
    view: watch::Receiver<View>,
    peers: Arc<PeerClients>,
    /// The bound gRPC address.
    pub(crate) grpc_addr: SocketAddr,
    partitions: u32,
    data: Arc<dataplane::DataPlane>,
    shutdown: watch::Receiver<bool>,
    rebalancer: rebalance::Rebalancer,
    /// This process created the metadata store empty (a new node or a replaced disk).
    fresh: bool,
    /// The data directory (its filesystem's free space is checked against
    /// `--min-free-disk`).
    data_dir: std::path::PathBuf,
    /// Set once `/ready` answered 200 in this process: from then on a replica falling out
    /// of sync (lag) does not make the node unready again.
    was_ready: std::sync::atomic::AtomicBool,
}

/// Bind the gRPC listener (printing `zeptod listening on grpc=ADDR`), start the peer clients,
/// the metadata driver, the gRPC service, registration and heartbeats. `shutdown` resolves
/// when the server stops.
pub(crate) async fn start(
    cfg: &Config,
    cluster: &ClusterConfig,
    http_addr: SocketAddr,
    fatal: mpsc::Sender<Error>,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<Cluster>> {
    let listener = TcpListener::bind(cluster.grpc_addr)
        .await
        .map_err(|e| Error::io(format!("bind gRPC listener on {}", cluster.grpc_addr), e))?;
    let grpc_addr = listener
        .local_addr()
        .map_err(|e| Error::io("read the bound gRPC address", e))?;
    println!("zeptod listening on grpc={grpc_addr}");
    tracing::info!(%grpc_addr, node = cluster.node_id, advertise = %cluster.advertise_addr, voters = ?cluster.peers, "cluster mode");

    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (view_tx, view_rx) = watch::channel(View::default());
    let identity = Identity {
        node_id: cluster.node_id,
        advertise_addr: cluster.advertise_addr.clone(),
        token: cluster.token.clone(),
    };
    let call_timeout = cluster.timings.peer_call_timeout();
    let peers = PeerClients::start(
        &identity,
        &cluster.peers,
        call_timeout,
        events_tx.clone(),
        fatal.clone(),
    );
    let fresh = driver::start(
        cfg,
        cluster,
        events_rx,
        view_tx,
        peers.clone(),
        fatal.clone(),
    )?;

    let data = dataplane::DataPlane::new(
        cluster.node_id,
        cfg.partitions,
        view_rx.clone(),
        peers.clone(),
        cluster.timings,
        cfg.ack,
    );
    data.set_bandwidth(cluster.migration_bandwidth);
    // An empty data directory: until registration tells whether this is the node's first
    // life or a replaced disk, it serves nothing (see `register`).
    data.set_lost_data(fresh);
    let svc = PeerService::new(
        cluster.node_id,
        cluster.peers.clone(),
        cluster.token.clone(),
        events_tx.clone(),
        cluster.timings.metadata_change_timeout(),
    )
    .with_data(data.clone())
    .accept_proxied_peers(cluster.accept_proxied_peers);
    {
        let mut shutdown = shutdown.clone();
        let fatal = fatal.clone();
        tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let stop = async move {
                let _ = shutdown.wait_for(|s| *s).await;
            };
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc.into_server())
                .serve_with_incoming_shutdown(incoming, stop)
                .await
            {
                let _ = fatal
                    .send(Error::Internal(format!("gRPC server failed: {e}")))
                    .await;
            }
        });
    }
    let handle = Arc::new(Cluster {
        cfg: cluster.clone(),
        events: events_tx,
        view: view_rx,
        peers,
        grpc_addr,
        partitions: cfg.partitions,
        data,
        shutdown: shutdown.clone(),
        rebalancer: rebalance::Rebalancer::default(),
        fresh,
        data_dir: cfg.data_dir.clone(),
        was_ready: std::sync::atomic::AtomicBool::new(false),
    });
    // The HTTP address peers and /admin/cluster show: the advertised host, the bound port.
    let host = cluster
        .advertise_addr
        .rsplit_once(':')
        .map_or(cluster.advertise_addr.as_str(), |(h, _)| h);
    let http = format!("{host}:{}", http_addr.port());
    tokio::spawn(register(handle.clone(), http, fatal, shutdown.clone()));
    tokio::spawn(heartbeats(handle.clone(), shutdown));
    Ok(handle)
}

impl Cluster {
    /// This node's id.
    /// Drain (SIGTERM, `POST /admin/drain`): hand every primary of this node to its in-sync
    /// replica without losing a write, within `timeout`.
    ///
    /// 1. Stop admitting primary writes here (503 with retry to clients; forwarders retry on
    ///    the new primary) and let the admitted ones finish.
    /// 2. Commit this node as DRAINING (it can no longer be made primary).
    /// 3. For each of its partitions whose replica is in the in-sync set and has confirmed
    ///    every record this node wrote, commit `Promote` (epoch + 1); wait until the map
    ///    shows no partition led by this node.
    ///
    /// Returns what was handed over and what was not (with why). Partitions left over fail
    /// over normally once the node is gone.
    pub(crate) async fn drain(&self, node: &Arc<Node>, timeout: Duration) -> serde_json::Value {
        let started = Instant::now();
        let deadline = started + timeout;
        let me = self.cfg.node_id;
        self.data.start_draining();
        self.data.writes_idle(deadline).await;
        let mut errors: Vec<String> = Vec::new();
        let state = self.view.borrow().state.clone();
        if state
            .nodes
            .get(&me)
            .is_some_and(|n| n.state != zepto_cluster::NodeState::Draining)
        {
            let cmd = Command::SetNodeState {
                id: me,
                state: zepto_cluster::NodeState::Draining,
            };
            match tokio::time::timeout(timeout, self.propose(&cmd)).await {
                Ok(Ok(o)) => {
                    if let Some((_, why)) = o.rejected {
                        errors.push(format!("mark DRAINING: {why}"));
                    }
                }
                Ok(Err(e)) => errors.push(format!("mark DRAINING: {e}")),
                Err(_) => errors.push("mark DRAINING: timed out".into()),
            }
        }
        let mut handed: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
        let mut view = self.view.clone();
        let left = loop {
            let state = view.borrow_and_update().state.clone();
            let mine: Vec<&zepto_cluster::state::PartitionInfo> = state
                .partitions
                .iter()
                .filter(|p| p.primary == me)
                .collect();
            // Nothing left that can be handed over (e.g. every node is being stopped at once,
            // so no replica can serve): stop waiting; these fail over once the node is gone.
            let serving = |n: NodeId| state.nodes.get(&n).is_some_and(|i| i.state.can_serve());
            // (A serving replica that is not in sync yet may still catch up: keep waiting.)
            let possible = mine.iter().any(|p| p.replica.is_some_and(serving));
            if mine.is_empty() || !possible || Instant::now() >= deadline {
                break mine
                    .iter()
                    .map(|p| {
                        let why = match p.replica {
                            None => "no replica".to_string(),
                            Some(r) if !serving(r) => format!(
                                "replica {r} cannot serve ({})",
                                state
                                    .nodes
                                    .get(&r)
                                    .map_or("unknown".to_string(), |n| n.state.to_string())
                            ),
                            Some(r) if !p.in_sync.contains(&r) => {
                                format!("replica {r} is not in the in-sync set")
                            }
                            Some(r) => format!(
                                "replica {r} had not confirmed every record ({} of {})",
                                self.data.repl.acked(p.id),
                                node.storage()
                                    .partition_position(p.id)
                                    .map_or(0, |(_, n)| n)
                            ),
                        };
                        serde_json::json!({ "partition": p.id, "reason": why })
                    })
                    .collect::<Vec<_>>();
            }
            for p in mine {
                let Some(replica) = p.replica.filter(|r| p.in_sync.contains(r)) else {
                    continue;
                };
                let written = node
                    .storage()
                    .partition_position(p.id)
                    .map_or(u64::MAX, |(_, n)| n);
                if self.data.repl.acked(p.id) < written {
                    continue;
                }
                let cmd = Command::Promote {
                    partition: p.id,
                    new_primary: replica,
                    expected_epoch: p.epoch,
                };
                let c = cmd.clone();
                let this = self.propose(&c);
                match tokio::time::timeout(Duration::from_secs(1), this).await {
                    Ok(Ok(o)) if o.rejected.is_none() => {
                        handed.insert(p.id);
                        tracing::info!(
                            partition = p.id,
                            to = replica,
                            "drain: primary handed over"
                        );
                    }
                    Ok(Ok(o)) => {
                        tracing::debug!(partition = p.id, rejected = ?o.rejected, "drain: handoff refused; retrying")
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(partition = p.id, error = %e, "drain: handoff not committed; retrying")
                    }
                    Err(_) => {}
                }
            }
            let _ = tokio::time::timeout(
                self.cfg
                    .timings
                    .heartbeat_interval
                    .min(deadline - Instant::now().min(deadline)),
                view.changed(),
            )
            .await;
        };
        let released = self.leave_in_sync_sets(deadline).await;
        let took = started.elapsed();
        if left.is_empty() {
            tracing::info!(
                handed = handed.len(),
                released,
                ?took,
                "drain: every primary handed to its replica"
            );
        } else {
            tracing::warn!(handed = handed.len(), left = ?left, ?took, "drain: some primaries were not handed over; they fail over once this node is gone");
        }
        serde_json::json!({
            "node": me,
            "handed_over": handed,
            "not_handed_over": left,
            "errors": errors,
            "took_ms": u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// The last step of a drain: leave the in-sync set of every partition replicated here
    /// (`ShrinkInSync`, as its primary would), so that once this process is gone the primaries
    /// (including the ones just handed over, whose replica is now this node) acknowledge
    /// alone at once instead of waiting for this node's confirmations until the replication
    /// bound runs out (a write stalled ~10 s at the default heartbeat). Only where the
    /// primary can serve: a partition whose primary is down keeps this node as the copy
    /// failover will promote. Returns how many partitions were released.
    async fn leave_in_sync_sets(&self, deadline: Instant) -> usize {
        let me = self.cfg.node_id;
        let mut view = self.view.clone();
        let mut released = std::collections::BTreeSet::new();
        // A primary that proposed taking this node back in just before it learned of the
        // drain may still commit that: look again after each round (a few at most).
        for _ in 0..3 {
            let state = view.borrow_and_update().state.clone();
            let serving = |n: NodeId| state.nodes.get(&n).is_some_and(|i| i.state.can_serve());
            let cmds: Vec<Command> = state
                .partitions
                .iter()
                .filter(|p| p.primary != me && p.replica == Some(me) && p.in_sync.contains(&me))
                .filter(|p| serving(p.primary))
                .map(|p| Command::ShrinkInSync {
                    partition: p.id,
                    epoch: p.epoch,
                    primary: p.primary,
                })
                .collect();
            if cmds.is_empty() {
                return released.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let proposed = tokio::time::timeout(
                left,
                futures_util::future::join_all(cmds.iter().map(|c| self.propose(c))),
            )
            .await;
            let Ok(results) = proposed else { break };
            for (cmd, r) in cmds.iter().zip(&results) {
                if let (Command::ShrinkInSync { partition, .. }, Ok(o)) = (cmd, r) {
                    if o.rejected.is_none() {
                        released.insert(*partition);
                    }
                }
            }
            let wait = self
                .cfg
                .timings
                .heartbeat_interval
                .min(deadline.saturating_duration_since(Instant::now()));
            let _ = tokio::time::timeout(wait, view.changed()).await;
        }
        tracing::info!(
            released = released.len(),
            "drain: some in-sync sets may still name this node; their primaries shrink them after the replication bound"
        );
        released.len()
    }

    /// Partitions that would be left without a serving in-sync copy if this node went away
    /// now (a drain refuses to start while there are any): one led here whose replica is not
    /// in sync or cannot serve, or one replicated here whose primary cannot serve.
    pub(crate) fn drain_blockers(&self) -> Vec<serde_json::Value> {
        let state = self.view.borrow().state.clone();
        let me = self.cfg.node_id;
        let serving =
            |n: zepto_cluster::NodeId| state.nodes.get(&n).is_some_and(|i| i.state.can_serve());
        state
            .partitions
            .iter()
            .filter(|p| p.primary == me || p.replica == Some(me))
            .filter(|p| !p.in_sync.iter().any(|&n| n != me && serving(n)))
            .map(|p| {
                serde_json::json!({
                    "partition": p.id,
                    "primary": p.primary,
                    "replica": p.replica,
                    "in_sync": p.in_sync,
                })
            })
            .collect()
    }

    /// Cluster figures in the Prometheus text format (appended to `/metrics`).
    pub(crate) fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let v = self.view.borrow().clone();
        let me = self.cfg.node_id;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, rows: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        gauge(
            "zepto_cluster_is_leader",
            "1 when this node leads the metadata raft group.",
            &[(String::new(), u64::from(v.leader == Some(me)))],
        );
        gauge(
            "zepto_cluster_raft_term",
            "The metadata raft term this node knows.",
            &[(String::new(), v.term)],
        );
        gauge(
            "zepto_cluster_metadata_version",
            "The version of the applied cluster metadata.",
            &[(String::new(), v.state.version)],
        );
        gauge(
            "zepto_cluster_write_lease_valid",
            "1 while this node holds a write lease (a primary without one refuses writes).",
            &[(String::new(), u64::from(self.data.lease_valid()))],
        );
        let primary = v
            .state
            .partitions
            .iter()
            .filter(|p| p.primary == me)
            .count() as u64;
        let replica = v
            .state
            .partitions
            .iter()
            .filter(|p| p.replica == Some(me))
            .count() as u64;
        let alone = v
            .state
            .partitions
            .iter()
            .filter(|p| p.primary == me && p.replica.is_some() && p.in_sync.len() < 2)
            .count() as u64;
        gauge(
            "zepto_cluster_partitions",
            "Partitions this node holds a copy of, by role.",
            &[
                ("{role=\"primary\"}".into(), primary),
                ("{role=\"replica\"}".into(), replica),
            ],
        );
        gauge(
            "zepto_cluster_partitions_alone",
            "Partitions led here whose in-sync set is this node alone (one copy of new writes).",
            &[(String::new(), alone)],
        );
        let lag: Vec<(String, u64)> = match self.data.node() {
            Ok(node) => v
                .state
                .partitions
                .iter()
                .filter(|p| p.primary == me && p.replica.is_some())
                .map(|p| {
                    let next = node
                        .storage()
                        .partition_position(p.id)
                        .map_or(0, |(_, n)| n);
                    (
                        format!("{{partition=\"{}\"}}", p.id),
                        next.saturating_sub(self.data.repl.acked(p.id)),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        gauge(
            "zepto_cluster_replica_lag_records",
            "WAL records of a partition led here that its replica has not confirmed.",
            &lag,
        );
        let migrating = v
            .state
            .partitions
            .iter()
            .filter(|p| p.replica.is_some_and(|r| !p.in_sync.contains(&r)))
            .count() as u64;
        gauge(
            "zepto_cluster_migrations_running",
            "Partitions whose replica is being copied or caught up (not in sync yet).",
            &[(String::new(), migrating)],
        );
        let balanced = matches!(
            zepto_cluster::rebalance::plan(&v.state),
            zepto_cluster::rebalance::Plan::Balanced
        );
        gauge(
            "zepto_cluster_balanced",
            "1 when the rebalancer has nothing left to move.",
            &[(String::new(), u64::from(balanced))],
        );
        let _ = writeln!(
            out,
            "# HELP zepto_cluster_migration_bytes_sent_total Bytes of whole-partition copies sent from this node.\n\
             # TYPE zepto_cluster_migration_bytes_sent_total counter\n\
             zepto_cluster_migration_bytes_sent_total {}\n\
             # HELP zepto_cluster_catch_up_bytes_sent_total WAL bytes sent from this node to catch replicas up.\n\
             # TYPE zepto_cluster_catch_up_bytes_sent_total counter\n\
             zepto_cluster_catch_up_bytes_sent_total {}\n\
             # HELP zepto_cluster_rebalance_moves_total Rebalancer moves committed by this node.\n\
             # TYPE zepto_cluster_rebalance_moves_total counter\n\
             zepto_cluster_rebalance_moves_total {}",
            self.data.copy_bytes.load(std::sync::atomic::Ordering::Relaxed),
            self.data
                .catch_up_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            self.rebalancer.moves.load(std::sync::atomic::Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP zepto_cluster_full_copies_sent_total Whole-partition copies sent to replicas.\n\
             # TYPE zepto_cluster_full_copies_sent_total counter\n\
             zepto_cluster_full_copies_sent_total {}\n\
             # HELP zepto_cluster_partitions_released_total Partitions deleted from this node after the map put all their copies elsewhere (--release-after).\n\
             # TYPE zepto_cluster_partitions_released_total counter\n\
             zepto_cluster_partitions_released_total {}",
            self.full_copies_sent(),
            self.data.released.load(std::sync::atomic::Ordering::Relaxed),
        );
        out
    }

    /// Whole-partition copies this node sent as a primary since it started.
    pub(crate) fn full_copies_sent(&self) -> u64 {
        self.data
            .repl
            .copies
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// See [`dataplane::DataPlane::check_data_intact`].
    pub(crate) fn check_data_intact(&self) -> Result<()> {
        self.data.check_data_intact()
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    pub(crate) fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// The partitions the applied map makes this node the primary of.
    pub(crate) fn primaries_here(&self) -> std::collections::BTreeSet<u32> {
        let me = self.cfg.node_id;
        self.view
            .borrow()
            .state
            .partitions
            .iter()
            .filter(|p| p.primary == me)
            .map(|p| p.id)
            .collect()
    }

    /// Resolves once the applied map makes this node the primary of a partition not in
    /// `known` (a failover or a handoff gave it one); never while the map does not.
    pub(crate) async fn gained_primary(&self, known: &std::collections::BTreeSet<u32>) {
        let me = self.cfg.node_id;
        let mut view = self.view.clone();
        let gained = view
            .wait_for(|v| {
                v.state
                    .partitions
                    .iter()
                    .any(|p| p.primary == me && !known.contains(&p.id))
            })
            .await
            .is_ok();
        if !gained {
            // The driver is gone (shutdown): no map will change any more.
            std::future::pending::<()>().await;
        }
    }

    /// The database finished opening: the driver may now apply tables to it.
    pub(crate) async fn set_db(self: &Arc<Self>, node: Arc<Node>) {
        self.data.set_node(node.clone(), self.shutdown.clone());
        let _ = self.events.send(Event::DbOpen(node.clone())).await;
        tokio::spawn(insync_loop(self.clone(), self.shutdown.clone()));
        tokio::spawn(rebalance::run(self.clone(), self.shutdown.clone()));
        if let Some(after) = self.cfg.release_after {
            tokio::spawn(release::run(
                self.data.clone(),
                node,
                after,
                self.shutdown.clone(),
            ));
        }
    }

    /// Write rows through the cluster: each partition's rows on its primary, acknowledged
    /// per the ack policy (see [`route`]).
    pub(crate) async fn write(
        &self,
        node: &Arc<Node>,
        table: &str,
        batch: arrow::record_batch::RecordBatch,
    ) -> Result<u64> {
        route::write(&self.data, node, table, batch).await
    }

    /// Run a read-only SELECT over the whole cluster (see [`query`]).
    /// SQL `INSERT ... VALUES | SELECT` through the cluster: the rows are computed (a source
    /// reading tables runs as a distributed query), then routed like a bulk insert.
    pub(crate) async fn insert_sql(
        &self,
        node: &Arc<Node>,
        sql: String,
        timeout: Duration,
    ) -> Result<u64> {
        let n = node.clone();
        let prepared = tokio::task::spawn_blocking(move || n.engine().prepare_insert(&sql))
            .await
            .map_err(|e| Error::Internal(format!("INSERT task failed: {e}")))?
            .map_err(crate::db::sql_error)?;
        let rows = match &prepared.source_query {
            None => prepared.rows.clone(),
            Some(q) => {
                let crate::db::SqlOutput::Rows { batches, .. } =
                    self.query(node, q.clone(), timeout).await?
                else {
                    return Err(Error::Internal(
                        "the INSERT's source query produced no rows".into(),
                    ));
                };
                node.engine()
                    .conform_insert(&prepared, &batches)
                    .map_err(crate::db::sql_error)?
            }
        };
        match rows {
            Some(batch) => self.write(node, &prepared.table, batch).await,
            None => Ok(0),
        }
    }

    pub(crate) async fn query(
        &self,
        node: &Arc<Node>,
        sql: String,
        timeout: Duration,
    ) -> Result<crate::db::SqlOutput> {
        query::run(&self.data, node, sql, timeout).await
    }

    /// This node's own data per partition: role, local epoch and next sequence number,
    /// local rows, and (as primary) the replica's confirmed position and notes.
    pub(crate) fn local_partitions(&self) -> serde_json::Value {
        let Ok(node) = self.data.node() else {
            return serde_json::Value::Null;
        };
        let state = self.view.borrow().state.clone();
        let me = self.cfg.node_id;
        let release_due = self.data.release_due.lock().clone();
        let now = std::time::Instant::now();
        let rows: Vec<serde_json::Value> = state
            .partitions
            .iter()
            .map(|p| {
                let (epoch, next_seq) = node.storage().partition_position(p.id).unwrap_or((0, 0));
                let role = if p.primary == me {
                    "primary"
                } else if p.replica == Some(me) {
                    "replica"
                } else {
                    "none"
                };
                let mut v = serde_json::json!({
                    "partition": p.id,
                    "role": role,
                    "epoch": epoch,
                    "next_seq": next_seq,
                    "rows": node.local_rows(p.id),
                });
                // A leftover copy: when it is deleted here (ADR 0016).
                if let (Some(at), Some(obj)) = (release_due.get(&p.id), v.as_object_mut()) {
                    let ms = at.saturating_duration_since(now).as_millis();
                    obj.insert(
                        "release_in_ms".into(),
                        u64::try_from(ms).unwrap_or(u64::MAX).into(),
                    );
                }
                if p.primary == me {
                    let note = self.data.repl.note(p.id);
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("replica".into(), p.replica.into());
                        let acked = self.data.repl.acked(p.id);
                        obj.insert("replica_next_seq".into(), acked.into());
                        obj.insert(
                            "replica_lag_records".into(),
                            next_seq.saturating_sub(acked).into(),
                        );
                        obj.insert(
                            "replica_needs_full_copy".into(),
                            note.needs_full_copy.into(),
                        );
                        obj.insert("replication_error".into(), note.last_error.into());
                        obj.insert(
                            "insync_mode".into(),
                            self.data.repl.insync_mode(p.id).into(),
                        );
                    }
                }
                v
            })
            .collect();
        rows.into()
    }

    /// `Ok` when this node is a member, knows a leader, has applied the committed log it
    /// knows of, and its local catalog holds the committed tables; else why not.
    pub(crate) fn readiness(&self) -> std::result::Result<(), String> {
        let v = self.view.borrow();
        if v.leader.is_none() {
            return Err("no metadata leader known".into());
        }
        if !v.state.nodes.contains_key(&self.cfg.node_id) {
            return Err("this node is not registered in the cluster metadata yet".into());
        }
        if v.applied < v.commit {
            return Err(format!(
                "applying the metadata log ({} of {})",
                v.applied, v.commit
            ));
        }
        if let Some(e) = &v.catalog_error {
            return Err(format!("local catalog: {e}"));
        }
        if v.catalog_applied < v.applied {
            return Err("applying committed tables to the local catalog".into());
        }
        self.data.check_data_intact().map_err(|e| e.to_string())?;
        if !self.data.lease_valid() {
            return Err(format!(
                "no write lease: the metadata leader has not acknowledged a heartbeat of this \
                 node within {:?}",
                self.cfg.timings.write_lease
            ));
        }
        match v.state.partitions.len() {
            0 => {
                return Err(
                    "the partition map is not created yet (every voter must register)".into(),
                )
            }
            n if n != self.partitions as usize => {
                return Err(format!(
                    "the cluster has {n} partitions, this node was started with --partitions {}",
                    self.partitions
                ))
            }
            _ => {}
        }
        // A joining node (new, or back from the dead) serves only once it holds complete
        // copies of everything assigned to it (ADR 0012): no query or write reaches an
        // incomplete copy through it being ready. Checked until the first time it is ready;
        // a replica that lags later is handled by the in-sync set, not by readiness. A
        // partition whose primary cannot serve cannot catch anyone up and does not count.
        use std::sync::atomic::Ordering;
        if !self.was_ready.load(Ordering::Acquire) {
            let me = self.cfg.node_id;
            if let Some(n) = v.state.nodes.get(&me) {
                if n.state == zepto_cluster::NodeState::Joining {
                    return Err(format!(
                        "JOINING: catching up partitions {:?}",
                        v.state
                            .partitions
                            .iter()
                            .filter(|p| p.replica == Some(me) && !p.in_sync.contains(&me))
                            .map(|p| p.id)
                            .collect::<Vec<_>>()
                    ));
                }
            }
            let serving = |id: NodeId| v.state.nodes.get(&id).is_some_and(|n| n.state.can_serve());
            let incomplete: Vec<u32> = v
                .state
                .partitions
                .iter()
                .filter(|p| p.primary == me || p.replica == Some(me))
                .filter(|p| !p.in_sync.contains(&me) && serving(p.primary))
                .map(|p| p.id)
                .collect();
            if !incomplete.is_empty() {
                return Err(format!(
                    "no complete copy yet of partitions {incomplete:?} (copying / catching up)"
                ));
            }
            // A data node (outside --peers: it joined to scale out) or a node that holds
            // nothing yet waits for its share: ready once the rebalancer has nothing left to
            // move (ADR 0012).
            if !self.cfg.is_voter() || v.state.partitions_of(me).is_empty() {
                use zepto_cluster::rebalance;
                if !v.state.settings.contains_key(&rebalance::disk_low_key(me)) {
                    return Err("has not reported its free disk to the rebalancer yet".into());
                }
                match rebalance::plan(&v.state) {
                    rebalance::Plan::Balanced => {}
                    rebalance::Plan::Move(m) => {
                        return Err(format!(
                            "the rebalancer is still moving partitions (next: {m:?})"
                        ))
                    }
                    rebalance::Plan::Waiting(why) => {
                        return Err(format!("the rebalancer is not done: {why}"))
                    }
                }
            }
            self.was_ready.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The `/admin/cluster` JSON, built by the driver (it holds the heartbeat ages).
    pub(crate) async fn admin_view(&self) -> Result<serde_json::Value> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Admin(tx))
            .await
            .map_err(|_| driver_stopped())?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| Error::Unavailable {
                message: "the metadata driver did not answer in time".into(),
                retry_after: Some(1),
            })?
            .map_err(|_| driver_stopped())
    }

    /// Propose a metadata command through the leader (this node, or forwarded over gRPC),
    /// retrying across leader changes until `Timings::metadata_change_timeout`. Returns once the command
    /// committed and the leader applied it.
    pub(crate) async fn propose(&self, cmd: &Command) -> Result<Outcome> {
        let limit = self.cfg.timings.metadata_change_timeout();
        let deadline = Instant::now() + limit;
        let mut view = self.view.clone();
        let mut last_error: String;
        let mut unknown = false;
        loop {
            let leader = view.borrow_and_update().leader;
            let attempt = match leader {
                Some(l) if l == self.cfg.node_id => self.propose_local(cmd).await,
                Some(l) => self.propose_remote(l, cmd).await,
                None => Err(ProposeError::NotLeader(None)),
            };
            match attempt {
                Ok(mut o) => {
                    o.after_unknown = unknown;
                    return Ok(o);
                }
                Err(ProposeError::NotLeader(hint)) => {
                    last_error = format!("not the leader (leader hint {hint:?})");
                }
                Err(ProposeError::Unknown(m)) => {
                    unknown = true;
                    last_error = m;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable {
                    message: format!(
                        "the metadata change was not confirmed within {limit:?} (it may still take effect once a leader is elected): {last_error}"
                    ),
                    retry_after: Some(1),
                });
            }
            // Wait for news (a leader change) or a short while, whichever comes first.
            let pause = (deadline - now).min(self.cfg.timings.election_timeout());
            let _ = tokio::time::timeout(pause, view.changed()).await;
        }
    }

    async fn propose_local(&self, cmd: &Command) -> std::result::Result<Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.events
            .send(Event::Propose {
                cmd: cmd.clone(),
                reply,
            })
            .await
            .map_err(|_| ProposeError::Unknown("the metadata driver is stopped".into()))?;
        match tokio::time::timeout(self.cfg.timings.metadata_change_timeout(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ProposeError::Unknown(
                "the metadata driver is stopped".into(),
            )),
            Err(_) => Err(ProposeError::Unknown(
                "the proposal did not commit in time".into(),
            )),
        }
    }

    async fn propose_remote(
        &self,
        leader: NodeId,
        cmd: &Command,
    ) -> std::result::Result<Outcome, ProposeError> {
        let Some(client) = self.peers.get(leader) else {
            return Err(ProposeError::NotLeader(None));
        };
        match client.propose_meta(cmd.encode()).await {
            Ok(r) => Ok(Outcome {
                after_unknown: false,
                index: r.index,
                version: r.version,
                rejected: (!r.rejected_kind.is_empty())
                    .then(|| (RejectKind::parse(&r.rejected_kind), r.rejected)),
            }),
            Err(s) => Err(ProposeError::Unknown(format!(
                "forward to leader {leader}: {}",
                s.message()
            ))),
        }
    }

    /// Wait until this node has applied log index `index` and its local catalog matches.
    pub(crate) async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut view = self.view.clone();
        let limit = self.cfg.timings.metadata_change_timeout();
        let waited = tokio::time::timeout(limit, async {
            view.wait_for(|v| v.catalog_applied >= index || v.catalog_error.is_some())
                .await
                .map(|v| (v.catalog_applied, v.catalog_error.clone()))
        })
        .await;
        match waited {
            Ok(Ok((applied, error))) => match error {
                Some(e) if applied < index => Err(Error::Internal(format!(
                    "committed, but the local catalog could not apply it: {e}"
                ))),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(driver_stopped()),
            Err(_) => Err(Error::Unavailable {
                message: format!("committed, but not applied on this node within {limit:?}"),
                retry_after: Some(1),
            }),
        }
    }
}

fn driver_stopped() -> Error {
    Error::Unavailable {
        message: "the metadata driver is stopped".into(),
        retry_after: None,
    }
}

/// Register this node (`AddNode`) until the metadata holds it. A node id held by another
/// address is fatal: two processes must never act as one raft member.
async fn register(
    cluster: Arc<Cluster>,
    http_addr: String,
    fatal: mpsc::Sender<Error>,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = cluster.cfg.node_id;
    let grpc = cluster.cfg.advertise_addr.clone();
    let cmd = Command::AddNode {
        id: me,
        http_addr,
        grpc_addr: grpc.clone(),
    };
    let mut view = cluster.view.clone();
    // Whether this process's own `AddNode` registered the node (its first life), and whether
    // its metadata store (and so its data directory) started empty.
    let mut added_here = false;
    let fresh = cluster.fresh;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let existing = view.borrow_and_update().state.nodes.get(&me).cloned();
        if let Some(n) = existing {
            if n.grpc_addr == grpc {
                tracing::info!(node = me, state = %n.state, "registered in the cluster metadata");
                if fresh && !added_here {
                    // Registered by an earlier life, but the data directory is empty: the
                    // disk was replaced. Give up every copy the map still assigns here
                    // before serving anything.
                    tokio::spawn(give_up_lost_copies(cluster.clone(), shutdown.clone()));
                } else {
                    cluster.data.set_lost_data(false);
                }
                if n.state == zepto_cluster::NodeState::Draining {
                    // Drained by an earlier life of this process (a rolling restart): this
                    // one serves again.
                    let cmd = Command::SetNodeState {
                        id: me,
                        state: zepto_cluster::NodeState::Active,
                    };
                    if let Err(e) = cluster.propose(&cmd).await {
                        tracing::warn!(error = %e, "could not leave the DRAINING state");
                    }
                }
                return;
            }
            let e = Error::Config(format!(
                "node id {me} is already a member at {}; refusing to run as a second node {me}",
                n.grpc_addr
            ));
            tracing::error!(error = %e, "duplicate node id");
            let _ = fatal.send(e).await;
            return;
        }
        // A data node (not in --peers) learns of the leader only once it is a raft learner,
        // and becomes one only once it registered: it asks the voters in turn (the leader
        // takes it; the others answer "not the leader"). ADR 0012.
        if !cluster.cfg.is_voter() && view.borrow().leader.is_none() {
            if let Some(added) = join_through_voters(&cluster, &cmd).await {
                added_here |= added;
                tracing::info!(
                    node = me,
                    "join request committed; waiting for the metadata"
                );
            }
            tokio::select! {
                _ = view.changed() => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(cluster.cfg.timings.election_timeout()) => {}
            }
            continue;
        }
        // Only once a leader is known; otherwise wait for the election.
        if view.borrow().leader.is_some() {
            match cluster.propose(&cmd).await {
                Ok(o) => {
                    match o.rejected {
                        Some((kind, reason)) => {
                            if kind != RejectKind::NodeIdInUse {
                                tracing::error!(%reason, "registration refused");
                            } else if o.after_unknown {
                                // Our own first attempt took effect.
                                added_here = true;
                            }
                        }
                        // (After an unknown outcome the first attempt may have registered
                        // it: still this life's own registration.)
                        None => added_here = true,
                    }
                    // Applied on the leader; the next turn of the loop reads our own view.
                    let _ = cluster.wait_applied(o.index).await;
                    continue;
                }
                Err(e) => tracing::debug!(error = %e, "registration not committed yet; retrying"),
            }
        }
        tokio::select! {
            _ = view.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Ask each `--peers` voter in turn to commit `cmd` (this data node's `AddNode`); once one
/// (the leader) committed it, `Some(true)` if this call registered the node, `Some(false)` if
/// it was registered already.
async fn join_through_voters(cluster: &Cluster, cmd: &Command) -> Option<bool> {
    for &voter in cluster.cfg.peers.keys() {
        let Some(client) = cluster.peers.get(voter) else {
            continue;
        };
        match client.propose_meta(cmd.encode()).await {
            Ok(r) if r.rejected_kind.is_empty() => return Some(true),
            Ok(r) if r.rejected_kind == "NODE_ID_IN_USE" => return Some(false),
            Ok(r) => {
                tracing::error!(voter, reason = %r.rejected, "join refused");
            }
            Err(e) => {
                tracing::debug!(voter, error = %e.message(), "join request not taken; trying the next voter");
            }
        }
    }
    None
}

/// A node registered by an earlier life came back with an empty data directory: the map may
/// still make it a primary or an in-sync replica of data it no longer has. Hand each
/// partition it leads to its in-sync replica (`Promote`) and take it out of the in-sync set
/// of each partition it replicates (`ShrinkInSync`, as its primary would); only then serve
/// (the primaries then copy the partitions back). A partition whose only in-sync copy was
/// here is lost with the disk: that is logged, and the partition stays as it is.
async fn give_up_lost_copies(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let me = cluster.cfg.node_id;
    let mut view = cluster.view.clone();
    let mut logged = std::collections::BTreeSet::new();
    // First a write lease: it is renewed only once this node applied the metadata version
    // the leader had when it acknowledged a heartbeat sent after this restart, so the map
    // read below is not an older one from the middle of catching up.
    let hb = cluster.cfg.timings.heartbeat_interval;
    while !cluster.data.lease_valid() {
        tokio::select! {
            _ = tokio::time::sleep(hb) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
    loop {
        let state = view.borrow_and_update().state.clone();
        let serving = |n: NodeId| state.nodes.get(&n).is_some_and(|i| i.state.can_serve());
        let mut pending = Vec::new();
        for p in &state.partitions {
            if p.primary == me {
                match p.replica.filter(|r| p.in_sync.contains(r) && serving(*r)) {
                    Some(r) => pending.push(Command::Promote {
                        partition: p.id,
                        new_primary: r,
                        expected_epoch: p.epoch,
                    }),
                    None => {
                        if logged.insert(p.id) {
                            tracing::error!(partition = p.id, in_sync = ?p.in_sync, "this node lost its data directory and no other in-sync copy can take the partition over");
                        }
                    }
                }
            } else if p.replica == Some(me) && p.in_sync.contains(&me) {
                pending.push(Command::ShrinkInSync {
                    partition: p.id,
                    epoch: p.epoch,
                    primary: p.primary,
                });
            }
        }
        if pending.is_empty() {
            break;
        }
        tracing::warn!(
            commands = pending.len(),
            "empty data directory: giving up the copies the map still assigns to this node"
        );
        for cmd in pending {
            if let Err(e) = cluster.propose(&cmd).await {
                tracing::warn!(?cmd, error = %e, "not committed; retrying");
            }
        }
        tokio::select! {
            _ = view.changed() => {}
            _ = tokio::time::sleep(cluster.cfg.timings.heartbeat_interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
    tracing::info!("no copy is assigned to this node's empty data directory any more; serving");
    cluster.data.set_lost_data(false);
}

/// Heartbeat the metadata leader every `--heartbeat-interval` (ourselves included, through
/// the driver, when we lead). An acknowledged heartbeat renews this node's write lease from
/// its send time, once this node's metadata has caught up with the version the leader had
/// (see [`dataplane::DataPlane::renew_lease`]).
async fn heartbeats(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let hb = cluster.cfg.timings.heartbeat_interval;
    let mut tick = tokio::time::interval(hb);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let me = cluster.cfg.node_id;
    let mut silent = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // A node whose storage failed (the WAL is poisoned after an fsync error) goes silent:
        // the leader then declares it dead and fails its primaries over, instead of the
        // cluster waiting on a copy that can no longer write.
        if let Ok(node) = cluster.data.node() {
            if let Err(e) = node.storage().health() {
                if !silent {
                    tracing::error!(error = %e, "storage failed: heartbeats stop so the cluster fails this node's partitions over");
                    silent = true;
                }
                continue;
            }
        }
        let (leader, req) = {
            let v = cluster.view.borrow();
            (
                v.leader,
                crate::rpc::pb::HeartbeatRequest {
                    meta_last_index: v.last_index,
                    meta_fresh: v.fresh,
                },
            )
        };
        let sent_at = cluster.data.now();
        match leader {
            Some(l) if l == me => {
                let (reply, rx) = oneshot::channel();
                if cluster
                    .events
                    .try_send(Event::Heartbeat {
                        from: me,
                        log: None,
                        reply,
                    })
                    .is_ok()
                {
                    let c = cluster.clone();
                    tokio::spawn(async move {
                        if let Ok(Ok(ack)) = tokio::time::timeout(hb, rx).await {
                            if ack.acknowledged {
                                c.lease_contact(sent_at, ack.version).await;
                            }
                        }
                    });
                }
            }
            Some(l) => {
                if let Some(client) = cluster.peers.get(l) {
                    let client = client.clone();
                    let c = cluster.clone();
                    // Never let a slow leader delay the next heartbeat.
                    tokio::spawn(async move {
                        match client.heartbeat(req).await {
                            Ok(r) if r.acknowledged => c.lease_contact(sent_at, r.version).await,
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(leader = l, error = %e.message(), "heartbeat failed");
                            }
                        }
                    });
                }
            }
            None => {}
        }
    }
}

/// Every raft tick: advance the in-sync trackers of this node's primaries and propose the
/// shrinks and expands they ask for (each in its own task; a lost one is re-proposed by the
/// tracker).
async fn insync_loop(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cluster.cfg.timings.raft_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // A node whose storage failed proposes nothing: a shrink to "this node alone" would
        // make it the only in-sync copy just before it goes silent, and the cluster could
        // then not promote the replica that holds every acknowledged write.
        if let Ok(node) = cluster.data.node() {
            if node.storage().health().is_err() {
                continue;
            }
        }
        // Nor does a node that came back with an empty data directory: as the map's primary
        // it would count an empty replica as caught up with its own empty log.
        if !cluster.data.data_intact() {
            continue;
        }
        for cmd in cluster.data.repl.poll_trackers(cluster.data.now()) {
            tracing::info!(?cmd, "in-sync change proposed");
            let c = cluster.clone();
            tokio::spawn(async move {
                match c.propose(&cmd).await {
                    Ok(o) => {
                        if let Some((_, reason)) = o.rejected {
                            tracing::info!(?cmd, %reason, "in-sync change refused");
                        }
                        // A command that changed nothing (the committed set already was what
                        // it asked for) publishes no new map: tell the trackers the committed
                        // state once this node applied it, or one would wait forever.
                        if c.wait_applied(o.index).await.is_ok() {
                            let state = c.view.borrow().state.clone();
                            c.data.repl.recheck_trackers(&state);
                        }
                    }
                    Err(e) => tracing::warn!(?cmd, error = %e, "in-sync change not committed"),
                }
            });
        }
    }
}

impl Cluster {
    /// See [`DataPlane::catch_up_with_leader`].
    pub(crate) async fn catch_up_with_leader(&self) -> bool {
        self.data.catch_up_with_leader().await
    }

    /// The leader acknowledged a heartbeat sent at `sent_at` while at metadata `version`:
    /// renew the write lease once this node has applied that version (bounded wait).
    async fn lease_contact(&self, sent_at: zepto_cluster::MonoTime, version: u64) {
        let mut view = self.view.clone();
        let caught_up = tokio::time::timeout(
            self.cfg.timings.peer_call_timeout(),
            view.wait_for(|v| v.state.version >= version),
        )
        .await;
        if matches!(caught_up, Ok(Ok(_))) {
            self.data.renew_lease(sent_at);
        }
    }
}
