//! Scale-out and scale-in (ADR 0012): carrying out the plan of
//! [`zepto_cluster::rebalance`], decommissioning data nodes, and what `/admin/cluster` and
//! `/metrics` show of migrations.
//!
//! Every node runs [`run`]: each heartbeat interval (or metadata change) it derives the plan
//! from its committed map. The metadata leader commits replica moves (`SetReplica`; the
//! partition's primary then copies / catches the new replica up with the existing
//! replication machinery and expands the in-sync set) and removes decommissioned nodes that
//! hold nothing any more. A partition's primary carries out its own handoff, exactly like a
//! drain but for one partition: it stops admitting the partition's writes (they are retried
//! on the new primary), waits for the admitted ones, waits until the replica confirmed every
//! record, then commits `Promote` (epoch + 1).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use zepto_cluster::rebalance::{self, Move, Plan};
use zepto_cluster::{Command, NodeId};

use super::Cluster;
use crate::error::{Error, Result};

/// Refusals kept for `/admin/cluster`.
const REFUSALS_KEPT: usize = 8;

/// This node's rebalancer bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Rebalancer {
    /// The last move this node committed (or tried to), and when: not proposed again until
    /// the state moved on or a retry interval passed.
    proposed: Mutex<Option<(String, Instant)>>,
    /// Moves this node committed (replica moves on the leader, handoffs on primaries).
    pub(crate) moves: AtomicU64,
    /// Recent refusals (decommission requests), newest last.
    refusals: Mutex<Vec<serde_json::Value>>,
    /// The last handoff failure.
    last_error: Mutex<Option<String>>,
    /// The last disk report proposed, and when.
    disk_reported: Mutex<Option<(String, Instant)>>,
    /// The last corrupt-copy report proposed, and when.
    corrupt_reported: Mutex<Option<(String, Instant)>>,
    started: std::sync::OnceLock<Instant>,
}

impl Rebalancer {
    fn refused(&self, node: NodeId, reason: &str) {
        let at = self.started.get_or_init(Instant::now).elapsed();
        let mut r = self.refusals.lock();
        r.push(serde_json::json!({
            "node": node,
            "reason": reason,
            "at_ms": u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
        }));
        if r.len() > REFUSALS_KEPT {
            r.remove(0);
        }
    }

    /// Whether `key` should be proposed now (not proposed within `retry`).
    fn due(&self, key: &str, retry: Duration) -> bool {
        Self::due_in(&self.proposed, key, retry)
    }

    fn due_in(slot: &Mutex<Option<(String, Instant)>>, key: &str, retry: Duration) -> bool {
        let mut p = slot.lock();
        let due = match p.as_ref() {
            Some((k, at)) if k == key => at.elapsed() >= retry,
            _ => true,
        };
        if due {
            *p = Some((key.to_string(), Instant::now()));
        }
        due
    }
}

/// See the module doc.
pub(crate) async fn run(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let hb = cluster.cfg.timings.heartbeat_interval;
    let mut view = cluster.view.clone();
    let mut last_log = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(hb) => {}
            r = view.changed() => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // A draining node moves nothing; nor does one that came back with an empty data
        // directory and still holds roles in the map (its handoffs would promote copies
        // made from nothing).
        if cluster.data.is_draining() || !cluster.data.data_intact() {
            continue;
        }
        let v = view.borrow_and_update().clone();
        let me = cluster.cfg.node_id;
        if v.applied < v.commit || !v.state.nodes.contains_key(&me) {
            continue;
        }
        let leading = v.leader == Some(me);
        report_disk(&cluster, &v.state).await;
        report_corrupt(&cluster, &v.state).await;
        if last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            for (p, progress) in cluster.data.copies.lock().iter() {
                tracing::info!(migration = %progress.to_json(*p), "migration progress");
            }
        }
        match rebalance::plan(&v.state) {
            Plan::Move(m @ Move::Replica { .. }) if leading => {
                let retry = cluster.cfg.timings.metadata_change_timeout();
                if cluster.rebalancer.due(&format!("{m:?}"), retry) {
                    tracing::info!(?m, "rebalance: migrating a replica");
                    match cluster.propose(&m.command()).await {
                        Ok(o) if o.rejected.is_none() => {
                            cluster.rebalancer.moves.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(o) => {
                            tracing::info!(?m, rejected = ?o.rejected, "rebalance move refused")
                        }
                        Err(e) => tracing::warn!(?m, error = %e, "rebalance move not committed"),
                    }
                }
            }
            Plan::Move(Move::Primary {
                partition,
                epoch,
                from,
                to,
            }) if from == me => {
                if rebalance::corrupt_copies(&v.state)
                    .get(&me)
                    .is_some_and(|c| c.contains(&partition))
                {
                    tracing::warn!(
                        partition,
                        to,
                        "handing the primary over: this node's copy has a corrupt HDB file (it gets a whole copy back as the replica)"
                    );
                }
                let retry = cluster.cfg.timings.metadata_change_timeout();
                if cluster
                    .rebalancer
                    .due(&format!("handoff {partition}@{epoch}->{to}"), retry)
                {
                    match hand_off(&cluster, partition, epoch, to).await {
                        Ok(took) => {
                            cluster.rebalancer.moves.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(partition, to, ?took, "rebalance: primary handed over");
                        }
                        Err(e) => {
                            tracing::warn!(partition, to, error = %e, "rebalance handoff failed; retried");
                            *cluster.rebalancer.last_error.lock() = Some(e);
                        }
                    }
                }
            }
            _ => {}
        }
        if leading {
            finish_decommissions(&cluster, &v.state).await;
        }
    }
}

/// Free bytes (for unprivileged users) on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and outlives the call; `st` is a valid out pointer.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

/// Report in the metadata (`disk_low.<id>`) when this node's free disk falls below
/// `--min-free-disk` or recovers, so the rebalancer moves nothing to a node that cannot take
/// it (and says why in `/admin/cluster`).
async fn report_disk(cluster: &Cluster, state: &zepto_cluster::ClusterState) {
    let min = cluster.cfg.min_free_disk;
    let me = cluster.cfg.node_id;
    let want = if min == 0 {
        String::new()
    } else {
        match free_bytes(&cluster.data_dir) {
            Ok(free) if free < min => format!(
                "node {me} has {free} bytes free on {}, below --min-free-disk {min}: no \
                 migration to it",
                cluster.data_dir.display()
            ),
            Ok(_) => String::new(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the free disk space");
                return;
            }
        }
    };
    let key = rebalance::disk_low_key(me);
    // Reported once (a node that never reported is no migration target), then on every
    // change of state (the byte count in the reason is from its start).
    if let Some(have) = state.settings.get(&key) {
        if have.is_empty() == want.is_empty() {
            return;
        }
    }
    let tag = format!("disk low: {}", !want.is_empty());
    propose_report(cluster, &cluster.rebalancer.disk_reported, &tag, key, want, |want| {
        if want.is_empty() {
            tracing::info!("free disk is above --min-free-disk again: migrations to this node allowed");
        } else {
            tracing::warn!(reason = %want, "free disk is below --min-free-disk: refusing migrations to this node");
        }
    })
    .await;
}

/// Propose this node's report `key = value`, unless the same report (`tag`, remembered in
/// `slot`) was proposed less than a metadata change's timeout ago; `announce` logs it.
async fn propose_report(
    cluster: &Cluster,
    slot: &Mutex<Option<(String, Instant)>>,
    tag: &str,
    key: String,
    value: String,
    announce: impl FnOnce(&str),
) {
    let retry = cluster.cfg.timings.metadata_change_timeout();
    if !Rebalancer::due_in(slot, tag, retry) {
        return;
    }
    announce(&value);
    let cmd = Command::SetSetting { key, value };
    if let Err(e) = cluster.propose(&cmd).await {
        tracing::warn!(error = %e, ?cmd, "report not committed; retried");
    }
}

/// Report in the metadata (`corrupt.<id>`) the partitions this node holds a copy of (as
/// primary or replica) whose copy has an HDB file known to be corrupt (ADR 0017): the plan
/// hands such a primary to its clean in-sync replica and gives such a copy no primary, and
/// the partition's primary replaces such a replica copy whole. Cleared once the copies are
/// replaced.
async fn report_corrupt(cluster: &Cluster, state: &zepto_cluster::ClusterState) {
    let Ok(node) = cluster.data.node() else {
        return;
    };
    let me = cluster.cfg.node_id;
    let held: std::collections::BTreeSet<u32> = state
        .partitions
        .iter()
        .filter(|p| p.primary == me || p.replica == Some(me))
        .map(|p| p.id)
        .collect();
    let corrupt: std::collections::BTreeSet<u32> = cluster
        .data
        .corrupt_partitions(&node)
        .intersection(&held)
        .copied()
        .collect();
    let key = rebalance::corrupt_key(me);
    let want = rebalance::corrupt_value(&corrupt);
    if state.settings.get(&key).map_or("", String::as_str) == want {
        return;
    }
    let tag = want.clone();
    propose_report(cluster, &cluster.rebalancer.corrupt_reported, &tag, key, want, |want| {
        if want.is_empty() {
            tracing::info!("no copy held here has a known corrupt HDB file any more");
        } else {
            tracing::warn!(partitions = %want, "copies held here have corrupt HDB files: reporting them so that they are replaced");
        }
    })
    .await;
}

/// Leader: remove every decommissioned node that holds nothing any more, and mark it
/// removed (also a removal an earlier leader committed without its mark).
async fn finish_decommissions(cluster: &Cluster, state: &zepto_cluster::ClusterState) {
    let mark_removed = |id: NodeId| async move {
        let done = Command::SetSetting {
            key: rebalance::decommission_key(id),
            value: rebalance::DECOMMISSION_REMOVED.into(),
        };
        if let Err(e) = cluster.propose(&done).await {
            tracing::warn!(node = id, error = %e, "decommission: not marked removed");
        }
    };
    for id in rebalance::unmarked_removals(state) {
        mark_removed(id).await;
    }
    for id in rebalance::leaving(state) {
        if !state.partitions_of(id).is_empty() {
            continue;
        }
        tracing::info!(
            node = id,
            "decommission: the node holds nothing; removing it"
        );
        match cluster.propose(&Command::RemoveNode { id }).await {
            Ok(o) if o.rejected.is_none() => mark_removed(id).await,
            Ok(o) => {
                tracing::info!(node = id, rejected = ?o.rejected, "decommission: removal refused")
            }
            Err(e) => tracing::warn!(node = id, error = %e, "decommission: removal not committed"),
        }
    }
}

/// Hand the primary of `partition` to `to` (see the module doc); how long writes to it
/// waited.
async fn hand_off(
    cluster: &Cluster,
    partition: u32,
    epoch: u64,
    to: NodeId,
) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let node = cluster.data.node().map_err(|e| e.to_string())?;
    let deadline = started + cluster.cfg.timings.metadata_change_timeout();
    let idle = cluster.data.begin_handoff(partition, deadline).await;
    let result = async {
        if !idle {
            return Err("the partition's admitted writes did not finish in time".to_string());
        }
        let mut changes = cluster.data.repl.acked_changes();
        loop {
            changes.borrow_and_update();
            let written = written_now(&node, partition);
            let acked = cluster.data.repl.acked(partition);
            if acked >= written {
                break;
            }
            // The replica's position arrives with its next answer.
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(
                tokio::time::timeout(left, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(format!(
                    "replica {to} had not confirmed every record ({acked} of {written})"
                ));
            }
        }
        // The remembered position may predate a wipe of the replica's disk (it restarted
        // empty and has not given up its in-sync place yet, ADR 0012): the replica's own
        // answer, asked now, decides.
        let fresh = replica_position(cluster, to, partition).await?;
        if fresh < written_now(&node, partition) {
            return Err(format!(
                "replica {to} holds only {fresh} records of partition {partition} (asked just now)"
            ));
        }
        let cmd = Command::Promote {
            partition,
            new_primary: to,
            expected_epoch: epoch,
        };
        let o = cluster.propose(&cmd).await.map_err(|e| e.to_string())?;
        if let Some((_, why)) = o.rejected {
            return Err(format!("handoff refused: {why}"));
        }
        cluster
            .wait_applied(o.index)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
    .await;
    cluster.data.end_handoff(partition);
    result.map(|()| started.elapsed())
}

/// This node's log end for `partition`.
fn written_now(node: &crate::db::Node, partition: u32) -> u64 {
    node.storage()
        .partition_position(partition)
        .map_or(u64::MAX, |(_, n)| n)
}

/// Ask `to` where its log of `partition` ends (a replication probe with no records).
async fn replica_position(
    cluster: &Cluster,
    to: NodeId,
    partition: u32,
) -> std::result::Result<u64, String> {
    let client = cluster
        .data
        .peers
        .get(to)
        .ok_or_else(|| format!("no client for node {to}"))?;
    let resp = client
        .replicate(crate::rpc::pb::ReplicateRequest {
            records: Vec::new(),
            probe: vec![partition],
        })
        .await
        .map_err(|s| format!("node {to} did not answer a probe: {}", s.message()))?;
    if resp.diverged.contains(&partition) {
        return Err(format!("replica {to} diverged on partition {partition}"));
    }
    resp.positions
        .iter()
        .find(|p| p.partition == partition)
        .map(|p| p.next_seq)
        .ok_or_else(|| format!("node {to} did not report partition {partition}"))
}

impl Cluster {
    /// `POST /admin/decommission?node=N`: refuse (409) with the reason, or commit the
    /// request; the rebalancer then moves everything off N and the leader removes it.
    /// Returns `(started, body)`; asking again reports progress.
    pub(crate) async fn decommission(&self, node: NodeId) -> Result<(bool, serde_json::Value)> {
        let state = self.view.borrow().state.clone();
        let key = rebalance::decommission_key(node);
        if rebalance::decommissioned(&state).contains(&node) {
            return Ok((
                false,
                serde_json::json!({ "node": node, "status": "removed" }),
            ));
        }
        if rebalance::leaving(&state).contains(&node) {
            return Ok((
                false,
                serde_json::json!({
                    "node": node,
                    "status": "in progress",
                    "holds": state.partitions_of(node),
                }),
            ));
        }
        let voters = self.cfg.peers.keys().copied().collect();
        if let Some(why) =
            rebalance::decommission_refusal(&state, node, &voters, self.cfg.replication_factor)
        {
            tracing::warn!(node, reason = %why, "decommission refused");
            self.rebalancer.refused(node, &why);
            return Err(Error::Conflict(format!(
                "decommission of node {node} refused: {why}"
            )));
        }
        let cmd = Command::SetSetting {
            key,
            value: rebalance::DECOMMISSION_REQUESTED.into(),
        };
        let o = self.propose(&cmd).await?;
        if let Some((_, why)) = o.rejected {
            return Err(Error::Conflict(format!(
                "decommission of node {node} refused: {why}"
            )));
        }
        // So that asking again through this node reports the progress.
        self.wait_applied(o.index).await?;
        tracing::info!(node, "decommission started");
        Ok((
            true,
            serde_json::json!({
                "node": node,
                "status": "started",
                "holds": state.partitions_of(node),
            }),
        ))
    }

    /// The `rebalance` object of `/admin/cluster`: the plan, running migrations (with this
    /// node's progress where it is the source), decommissions and recent refusals.
    pub(crate) fn rebalance_view(&self) -> serde_json::Value {
        let state = self.view.borrow().state.clone();
        let me = self.cfg.node_id;
        let plan = match rebalance::plan(&state) {
            Plan::Balanced => serde_json::json!("balanced"),
            Plan::Waiting(why) => serde_json::json!({ "waiting": why }),
            Plan::Move(m) => serde_json::json!({ "next_move": format!("{m:?}") }),
        };
        let copies = self.data.copies.lock().clone();
        let node = self.data.node().ok();
        let migrations: Vec<serde_json::Value> = state
            .partitions
            .iter()
            .filter_map(|p| {
                let target = p.replica.filter(|r| !p.in_sync.contains(r))?;
                let mut m = serde_json::json!({
                    "partition": p.id,
                    "source": p.primary,
                    "target": target,
                    "phase": if copies.contains_key(&p.id) { "whole copy" } else { "catching up" },
                });
                if p.primary == me {
                    if let (Some(obj), Some(node)) = (m.as_object_mut(), node.as_ref()) {
                        let next = node
                            .storage()
                            .partition_position(p.id)
                            .map_or(0, |(_, n)| n);
                        let acked = self.data.repl.acked(p.id);
                        obj.insert("lag_records".into(), next.saturating_sub(acked).into());
                        obj.insert("rows".into(), node.local_rows(p.id).into());
                        if let Some(c) = copies.get(&p.id) {
                            obj.insert("copy".into(), c.to_json(p.id));
                        }
                        if let Some(note) = self.data.repl.note(p.id).last_error {
                            obj.insert("error".into(), note.into());
                        }
                    }
                }
                Some(m)
            })
            .collect();
        let ids = |ids: std::collections::BTreeSet<NodeId>| -> Vec<String> {
            ids.iter().map(NodeId::to_string).collect()
        };
        serde_json::json!({
            "plan": plan,
            "refused_targets": rebalance::disk_low(&state)
                .into_iter()
                .map(|(id, why)| (id.to_string(), serde_json::Value::from(why)))
                .collect::<serde_json::Map<_, _>>(),
            "migrations": migrations,
            "corrupt_copies": rebalance::corrupt_copies(&state)
                .into_iter()
                .map(|(id, parts)| (id.to_string(), serde_json::json!(parts)))
                .collect::<serde_json::Map<_, _>>(),
            "decommissioning": ids(rebalance::leaving(&state)),
            "decommissioned": ids(rebalance::decommissioned(&state)),
            "moves_committed_here": self.rebalancer.moves.load(Ordering::Relaxed),
            "copy_bytes_sent_here": self.data.copy_bytes.load(Ordering::Relaxed),
            "catch_up_bytes_sent_here": self.data.catch_up_bytes.load(Ordering::Relaxed),
            "migration_bandwidth": self.data.bandwidth(),
            "last_handoff_error": self.rebalancer.last_error.lock().clone(),
            "refusals": self.rebalancer.refusals.lock().clone(),
        })
    }
}
