//! Freeing the copies this node no longer holds (ADR 0016).
//!
//! When the committed map moves a partition's copies off this node (a rebalance, a drain, a
//! re-replication while it was dead), the rows, HDB files and log position it had stay: no
//! query or write reaches them again, but they take memory until flushed, disk for good,
//! and room in every snapshot of the volume. Once the map has named other nodes as every
//! copy of the partition, all of them in sync, for `--release-after` without a break, the
//! partition is emptied here by an import of nothing (`PartitionImport::release`: atomic
//! and durable, the fencing epoch kept; its files are deleted at the checkpoint after the
//! release's own, once no kept checkpoint names them).
//!
//! The map is read again after writes to the partition are stopped (the import flag): if
//! this node became a copy again in between, the import is dropped and the partition is
//! exactly as it was. Records a replica accepts are accepted only while its own view names
//! it the replica, and views only move forward, so nothing acknowledged by this node as a
//! current copy is ever released. A later copy of the partition here starts from nothing
//! (WAL catch-up from the start or a whole copy, ADR 0009).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zepto_cluster::{ClusterState, NodeId};

use super::dataplane::DataPlane;
use crate::db::Node;

/// Partitions of `state` whose copies are all on other nodes than `me` and all in sync: a
/// copy `me` still has of them is of no use to the cluster.
pub(crate) fn releasable(state: &ClusterState, me: NodeId) -> BTreeSet<u32> {
    state
        .partitions
        .iter()
        .filter(|p| p.primary != me && p.replica != Some(me))
        .filter(|p| {
            p.in_sync.contains(&p.primary) && p.replica.is_none_or(|r| p.in_sync.contains(&r))
        })
        .map(|p| p.id)
        .collect()
}

/// Release what this node holds of partitions [`releasable`] for `after` without a break,
/// until shutdown.
pub(crate) async fn run(
    dp: Arc<DataPlane>,
    node: Arc<Node>,
    after: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // A release that failed is tried again this much later.
    let retry = after.min(Duration::from_secs(30));
    // When each candidate's release is due (it has been releasable without a break since
    // `after` before that).
    let mut due: BTreeMap<u32, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if dp.data_intact() {
            let candidates = releasable(&dp.view.borrow().state, dp.me);
            // What this node still has of them (row counts: storage calls, off the runtime).
            let n = node.clone();
            let held: BTreeSet<u32> = tokio::task::spawn_blocking(move || {
                candidates.into_iter().filter(|&p| holds(&n, p)).collect()
            })
            .await
            .unwrap_or_default();
            due.retain(|p, _| held.contains(p));
            for p in held {
                let now = Instant::now();
                if now < *due.entry(p).or_insert(now + after) {
                    continue;
                }
                let (n, d) = (node.clone(), dp.clone());
                match tokio::task::spawn_blocking(move || release(&d, &n, p)).await {
                    Ok(Ok(Some(rows))) => {
                        due.remove(&p);
                        dp.released.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            partition = p,
                            rows,
                            "released partition: the cluster map has had its copies on other \
                             nodes, all in sync, for {after:?}; its rows, files and log here \
                             are deleted"
                        );
                    }
                    Ok(Ok(None)) => {
                        due.remove(&p);
                        tracing::info!(
                            partition = p,
                            "partition not released: this node holds a copy of it again"
                        );
                    }
                    Ok(Err(e)) => {
                        due.insert(p, Instant::now() + retry);
                        tracing::warn!(partition = p, error = %e, "could not release partition; trying again in {retry:?}");
                    }
                    Err(e) => {
                        due.insert(p, Instant::now() + retry);
                        tracing::warn!(partition = p, error = %e, "partition release task failed; trying again in {retry:?}");
                    }
                }
            }
        } else {
            due.clear();
        }
        dp.release_due.lock().clone_from(&due);
    }
}

/// Whether this node has anything of partition `p`.
fn holds(node: &Node, p: u32) -> bool {
    node.storage()
        .partition_position(p)
        .is_ok_and(|(_, next)| next > 0)
        || node.local_rows(p) > 0
}

/// Empty partition `p` here unless the map (read after its writes are stopped) names this
/// node a copy again; the rows it held, or `None` when it kept them. Blocking.
fn release(dp: &DataPlane, node: &Node, p: u32) -> zepto_storage::Result<Option<u64>> {
    let import = node.storage().begin_partition_import(p)?;
    if !releasable(&dp.view.borrow().state, dp.me).contains(&p) {
        return Ok(None); // dropping the import gives the partition back untouched
    }
    let rows = node.local_rows(p);
    import.release()?;
    Ok(Some(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zepto_cluster::state::PartitionInfo;

    fn part(
        id: u32,
        primary: NodeId,
        replica: Option<NodeId>,
        in_sync: &[NodeId],
    ) -> PartitionInfo {
        PartitionInfo {
            id,
            primary,
            replica,
            epoch: 1,
            in_sync: in_sync.iter().copied().collect(),
        }
    }

    #[test]
    fn only_partitions_whose_copies_are_all_elsewhere_and_in_sync_are_releasable() {
        let state = ClusterState {
            partitions: vec![
                part(0, 1, Some(2), &[1, 2]), // node 1 is the primary
                part(1, 2, Some(1), &[2]),    // node 1 is the replica (catching up)
                part(2, 2, Some(3), &[2, 3]), // elsewhere, both in sync
                part(3, 2, Some(3), &[2]),    // elsewhere, the replica still being copied
                part(4, 3, None, &[3]),       // one copy, elsewhere
            ],
            ..ClusterState::default()
        };
        assert_eq!(releasable(&state, 1), BTreeSet::from([2, 4]));
        assert_eq!(releasable(&state, 4), BTreeSet::from([0, 2, 4]));
        assert!(releasable(&ClusterState::default(), 1).is_empty());
    }
}
