//! Write routing: a batch of rows reaching any node is converted to the table's types and
//! split by partition once, by the storage engine (`Db::split_write`: its hash of table and
//! partition key, computed once per distinct key value); the parts this node is primary for
//! are written here as they are (`Db::write_split`, no second split), the rest are sent to
//! their primaries with `Forward` (Arrow IPC, one call per node, each part with the epoch the
//! sender believes).
//!
//! The receiver of a `Forward` checks, per part, that it is the primary at that epoch
//! (`FENCED` when the sender's epoch is older, `NOT_PRIMARY` otherwise), writes all parts as
//! one local write through `Db::write_split` (which refuses a part holding rows of another
//! partition, from the partition of each distinct key value), and — when the
//! sender asks for replicated acks — waits for its replica like a local write does. A
//! `NOT_PRIMARY`/`FENCED` refusal makes the sender wait for a newer map (at most a heartbeat
//! interval) and retry that node's parts, within the replication bound. A receiver behind the
//! sender's map waits until it applied it before answering.
//!
//! The client is answered `{"inserted":N}` only when every part is durable (and confirmed
//! by the replica with `--ack replicated`). A failed part fails the request, naming its
//! partitions; parts already written elsewhere stay written: a write spanning nodes is not
//! atomic (ADR 0002, ADR 0006).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use tonic::{Code, Status};
use zepto_cluster::NodeId;

use super::dataplane::DataPlane;
use super::replicate::ack_wait_bound;
use crate::config::AckPolicy;
use crate::db::Node;
use crate::error::{Error, Result};
use crate::rpc::pb::{ForwardPart, ForwardRequest, ForwardResponse, Position};

pub(crate) fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())
        .map_err(|e| Error::Internal(format!("encode Arrow IPC: {e}")))?;
    w.write(batch)
        .and_then(|()| w.finish())
        .map_err(|e| Error::Internal(format!("encode Arrow IPC: {e}")))?;
    drop(w);
    Ok(buf)
}

pub(crate) fn from_ipc(bytes: &[u8]) -> std::result::Result<Vec<RecordBatch>, String> {
    let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("bad Arrow IPC: {e}"))?;
    r.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("bad Arrow IPC: {e}"))
}

/// Most tries of a write's part that reached a node that is not (or no longer) its primary;
/// all of them within the replication bound (see `write`).
const ATTEMPTS: usize = 12;

/// How one node's share of a write ended.
enum PartResult {
    Written(u64),
    /// The map was stale: retry after a refresh.
    Stale(Error),
    Failed(Error),
}

/// Write `batch` into `table` through the cluster. See the module doc.
pub(crate) async fn write(
    dp: &Arc<DataPlane>,
    node: &Arc<Node>,
    table: &str,
    batch: RecordBatch,
) -> Result<u64> {
    // Converted to the table's types and split once, here: the primaries write the pieces
    // as they are (checking, per distinct key value, that each holds only its partition).
    let (n, t) = (node.clone(), table.to_string());
    let mut pending: BTreeMap<u32, RecordBatch> =
        tokio::task::spawn_blocking(move || n.split_write(&t, batch))
            .await
            .map_err(|e| Error::Internal(format!("split task failed: {e}")))??
            .into_iter()
            .collect();
    let mut rows = 0u64;
    let mut written: BTreeSet<u32> = BTreeSet::new();
    let mut failed: Vec<(Vec<u32>, Error)> = Vec::new();
    let deadline = tokio::time::Instant::now() + ack_wait_bound(&dp.timings);
    for attempt in 0..ATTEMPTS {
        let state = dp.view.borrow().state.clone();
        let mut by_node: BTreeMap<NodeId, Vec<(u32, u64, RecordBatch)>> = BTreeMap::new();
        for (p, b) in std::mem::take(&mut pending) {
            match state.partition(p) {
                Some(info) => by_node
                    .entry(info.primary)
                    .or_default()
                    .push((p, info.epoch, b)),
                None => failed.push((
                    vec![p],
                    Error::Unavailable {
                        message: format!("partition {p} is not in the partition map yet"),
                        retry_after: Some(1),
                    },
                )),
            }
        }
        let calls = by_node.into_iter().map(|(to, parts)| {
            let dp = dp.clone();
            let node = node.clone();
            let table = table.to_string();
            async move {
                let ids: Vec<u32> = parts.iter().map(|(p, _, _)| *p).collect();
                let kept: Vec<(u32, RecordBatch)> =
                    parts.iter().map(|(p, _, b)| (*p, b.clone())).collect();
                let r = if to == dp.me {
                    write_local(&dp, &node, &table, parts).await
                } else {
                    forward(&dp, to, &table, parts).await
                };
                (ids, kept, r)
            }
        });
        for (ids, kept, r) in futures_util::future::join_all(calls).await {
            match r {
                PartResult::Written(n) => {
                    rows += n;
                    written.extend(ids);
                }
                PartResult::Stale(e)
                    if attempt + 1 < ATTEMPTS && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(partitions = ?ids, error = %e, "stale partition map; refreshing and retrying");
                    pending.extend(kept);
                }
                PartResult::Stale(e) | PartResult::Failed(e) => failed.push((ids, e)),
            }
        }
        if pending.is_empty() {
            break;
        }
        // Wait until the map moved for the refused partitions (a new primary or epoch: a
        // failover, a drain's handoff, or this node catching up), then retry there; but at
        // most a heartbeat interval: the refusal may come from a primary that is behind this
        // node's map or has no write lease yet (just restarted), and catches up within one,
        // while this node's map, already the newest, would never move (the write then hung
        // for the whole bound and its client saw a timeout).
        let wait = dp
            .timings
            .heartbeat_interval
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let mut view = dp.view.clone();
        let before: Vec<(u32, Option<(NodeId, u64)>)> = pending
            .keys()
            .map(|p| (*p, state.partition(*p).map(|i| (i.primary, i.epoch))))
            .collect();
        let _ = tokio::time::timeout(
            wait,
            view.wait_for(|v| {
                before
                    .iter()
                    .all(|(p, was)| v.state.partition(*p).map(|i| (i.primary, i.epoch)) != *was)
            }),
        )
        .await;
    }
    if failed.is_empty() {
        return Ok(rows);
    }
    let failed_ids: BTreeSet<u32> = failed.iter().flat_map(|(p, _)| p.iter().copied()).collect();
    let mut failures = failed.into_iter();
    let Some((_, first)) = failures.next() else {
        return Ok(rows);
    };
    let message = format!(
        "the write failed for partitions {failed_ids:?}: {first}{}; {}",
        failures
            .map(|(p, e)| format!("; partitions {p:?}: {e}"))
            .collect::<String>(),
        if written.is_empty() {
            "no part of it was acknowledged".to_string()
        } else {
            format!(
                "the rows of partitions {written:?} ({rows} rows) were written and stay written \
                 (a write spanning nodes is not atomic)"
            )
        }
    );
    Err(with_message(first, message))
}

/// The same error kind with another message.
fn with_message(e: Error, message: String) -> Error {
    match e {
        Error::BadRequest(_) => Error::BadRequest(message),
        Error::NotFound(_) => Error::NotFound(message),
        Error::Fenced(_) => Error::Fenced(message),
        Error::Unavailable { retry_after, .. } => Error::Unavailable {
            message,
            retry_after,
        },
        Error::TooLarge(_) => Error::TooLarge(message),
        Error::Timeout(_) => Error::Timeout(message),
        _ => Error::Internal(message),
    }
}

async fn write_local(
    dp: &DataPlane,
    node: &Node,
    table: &str,
    parts: Vec<(u32, u64, RecordBatch)>,
) -> PartResult {
    let ids: Vec<u32> = parts.iter().map(|(p, _, _)| *p).collect();
    // Admission first: a refusal here means nothing was written.
    let admitted = match dp.admit_write(&ids) {
        Ok(guard) => guard,
        // Draining: the partitions are being handed over; retry on their new primary.
        Err(e)
            if dp.is_draining() || dp.is_handing_off(&ids) || dp.check_data_intact().is_err() =>
        {
            return PartResult::Stale(e)
        }
        Err(e) => return PartResult::Failed(e),
    };
    let result = async {
        let pieces = parts.into_iter().map(|(p, _, b)| (p, b)).collect();
        let (rows, records) = node.write_split_with_records(table, pieces).await?;
        if dp.ack == AckPolicy::Replicated {
            dp.wait_acknowledgeable(&records).await?;
        }
        Ok((rows, records))
    }
    .await;
    drop(admitted);
    match result {
        Ok((rows, _)) => PartResult::Written(rows),
        Err(e) => PartResult::Failed(e),
    }
}

async fn forward(
    dp: &DataPlane,
    to: NodeId,
    table: &str,
    parts: Vec<(u32, u64, RecordBatch)>,
) -> PartResult {
    let Some(client) = dp.peers.get(to) else {
        return PartResult::Failed(Error::Unavailable {
            message: format!("node {to} is not a known peer"),
            retry_after: Some(1),
        });
    };
    let mut req = ForwardRequest {
        table: table.to_string(),
        parts: Vec::with_capacity(parts.len()),
        ack_replicated: dp.ack == AckPolicy::Replicated,
    };
    for (partition, epoch, b) in parts {
        match to_ipc(&b) {
            Ok(arrow_ipc) => req.parts.push(ForwardPart {
                partition,
                epoch,
                arrow_ipc: arrow_ipc.into(),
            }),
            Err(e) => return PartResult::Failed(e),
        }
    }
    match client.forward(req, forward_timeout(dp)).await {
        Ok(r) => PartResult::Written(r.rows),
        Err(s) => {
            let m = format!("node {to}: {}", s.message());
            match s.code() {
                Code::FailedPrecondition => PartResult::Stale(Error::Unavailable {
                    message: m,
                    retry_after: Some(1),
                }),
                Code::Aborted => PartResult::Stale(Error::Fenced(m)),
                Code::InvalidArgument => PartResult::Failed(Error::BadRequest(m)),
                Code::NotFound => PartResult::Failed(Error::NotFound(m)),
                Code::ResourceExhausted => PartResult::Failed(Error::TooLarge(m)),
                _ => PartResult::Failed(Error::Unavailable {
                    message: format!(
                        "{m} (the outcome on node {to} is unknown if the call was cut off)"
                    ),
                    retry_after: Some(1),
                }),
            }
        }
    }
}

fn status_of(e: &Error) -> Status {
    let m = e.to_string();
    match e {
        Error::BadRequest(_) => Status::invalid_argument(m),
        Error::NotFound(_) => Status::not_found(m),
        Error::Fenced(_) => Status::aborted(format!("FENCED {m}")),
        Error::TooLarge(_) => Status::resource_exhausted(m),
        Error::Unavailable { .. } | Error::Timeout(_) => Status::unavailable(m),
        _ => Status::internal(m),
    }
}

/// Is this node the primary of `p` at `epoch` (committed map)? `FENCED` (ABORTED) when the
/// sender's epoch is older, `NOT_PRIMARY` (FAILED_PRECONDITION) otherwise.
fn check_part(
    dp: &DataPlane,
    state: &zepto_cluster::ClusterState,
    from: NodeId,
    p: u32,
    epoch: u64,
) -> std::result::Result<(), Status> {
    let info = state
        .partition(p)
        .ok_or_else(|| Status::invalid_argument(format!("unknown partition {p}")))?;
    if epoch < info.epoch {
        return Err(Status::aborted(format!(
            "FENCED partition {p}: epoch {epoch} is older than the current epoch {}",
            info.epoch
        )));
    }
    if epoch > info.epoch || info.primary != dp.me {
        return Err(Status::failed_precondition(format!(
            "NOT_PRIMARY partition {p}: node {} knows primary {} at epoch {} (sender {from} \
             believed epoch {epoch})",
            dp.me, info.primary, info.epoch
        )));
    }
    Ok(())
}

/// The `Forward` call on the partitions' primary. See the module doc.
pub(crate) async fn serve(
    dp: &DataPlane,
    from: NodeId,
    req: ForwardRequest,
) -> std::result::Result<ForwardResponse, Status> {
    // A sender that applied a newer map than this node (a handoff or failover made this node
    // primary a moment ago) is not stale: this node is behind. Wait, bounded, until it applied
    // that epoch too. Answering NOT_PRIMARY instead made the sender wait for its own map to
    // move, which it never would (it already had the newest): the write hung for the whole
    // replication bound, and the client saw a timeout.
    let ahead: Vec<(u32, u64)> = {
        let state = dp.view.borrow().state.clone();
        req.parts
            .iter()
            .filter(|p| {
                state
                    .partition(p.partition)
                    .is_some_and(|i| p.epoch > i.epoch)
            })
            .map(|p| (p.partition, p.epoch))
            .collect()
    };
    if !ahead.is_empty() {
        let mut view = dp.view.clone();
        let _ = tokio::time::timeout(
            dp.timings.max_election_timeout(),
            view.wait_for(|v| {
                ahead
                    .iter()
                    .all(|(p, e)| v.state.partition(*p).is_some_and(|i| i.epoch >= *e))
            }),
        )
        .await;
    }
    let state = dp.view.borrow().state.clone();
    // Fencing first: a stale sender learns it before anything else is looked at.
    for part in &req.parts {
        check_part(dp, &state, from, part.partition, part.epoch)?;
    }
    let ids: Vec<u32> = req.parts.iter().map(|p| p.partition).collect();
    let _admitted = dp.admit_write(&ids).map_err(|e| match e {
        // The sender retries on the new primary once the handoff is committed.
        Error::Unavailable { message, .. } => {
            Status::failed_precondition(format!("NOT_PRIMARY {message}"))
        }
        e => status_of(&e),
    })?;
    let node = dp.node().map_err(|e| status_of(&e))?;
    // The parts come split by the sender; the storage engine checks that each holds only
    // rows of its partition (from the partition of each distinct key value).
    let mut pieces = Vec::with_capacity(req.parts.len());
    for part in &req.parts {
        for b in from_ipc(&part.arrow_ipc).map_err(Status::invalid_argument)? {
            pieces.push((part.partition, b));
        }
    }
    if pieces.is_empty() {
        return Ok(ForwardResponse::default());
    }
    let written = match node
        .write_split_with_records(&req.table, pieces.clone())
        .await
    {
        // A table the sender knows and this node does not yet (created a moment ago, this
        // node's metadata a heartbeat behind): nothing was written; catch up with the
        // leader and try once more, as a query does.
        Err(Error::NotFound(_)) if dp.catch_up_with_leader().await => {
            node.write_split_with_records(&req.table, pieces).await
        }
        r => r,
    };
    let (rows, records) = written.map_err(|e| status_of(&e))?;
    if req.ack_replicated {
        dp.wait_acknowledgeable(&records)
            .await
            .map_err(|e| status_of(&e))?;
    }
    Ok(ForwardResponse {
        rows,
        records: records
            .into_iter()
            .map(|(partition, seq)| Position { partition, seq })
            .collect(),
    })
}

/// How long a forwarded write may take before its sender gives up: room for the remote
/// write, its replica's ack and the transport.
fn forward_timeout(dp: &DataPlane) -> Duration {
    ack_wait_bound(&dp.timings) + dp.timings.peer_call_timeout() * 2
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn forward_is_fenced_per_part_before_anything_else() {
        use zepto_cluster::state::PartitionInfo;
        let state = zepto_cluster::ClusterState {
            partitions: (0..2)
                .map(|id| PartitionInfo {
                    id,
                    primary: if id == 0 { 1 } else { 2 },
                    replica: Some(if id == 0 { 2 } else { 1 }),
                    epoch: 3,
                    in_sync: [1, 2].into_iter().collect(),
                })
                .collect(),
            ..Default::default()
        };
        let (tx, dp) = super::super::dataplane::test_plane(1, 2, state);
        let req = |partition, epoch| ForwardRequest {
            table: "t".into(),
            parts: vec![ForwardPart {
                partition,
                epoch,
                arrow_ipc: Default::default(),
            }],
            ack_replicated: true,
        };
        let code = |r: std::result::Result<ForwardResponse, Status>| r.unwrap_err();
        let older = code(serve(&dp, 2, req(0, 2)).await);
        assert_eq!(older.code(), Code::Aborted);
        assert!(older.message().starts_with("FENCED"), "{}", older.message());
        for (p, e) in [(1, 3), (0, 4)] {
            let s = code(serve(&dp, 2, req(p, e)).await);
            assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
            assert!(s.message().starts_with("NOT_PRIMARY"), "{}", s.message());
        }
        // The right primary at the right epoch gets past fencing, but not without a write
        // lease (no heartbeat was ever acknowledged)...
        let s = code(serve(&dp, 2, req(0, 3)).await);
        assert_eq!(s.code(), Code::Aborted);
        assert!(s.message().contains("LEASE_EXPIRED"), "{}", s.message());
        // ...and with one, to the database (which is not open).
        dp.renew_lease(dp.now());
        assert_eq!(
            code(serve(&dp, 2, req(0, 3)).await).code(),
            Code::Unavailable
        );
        // A sender ahead of this node (epoch 4 of partition 1 makes node 1 its primary, and
        // only the sender applied that yet) is served once this node applied it too...
        let ahead = {
            let dp = dp.clone();
            tokio::spawn(async move { serve(&dp, 2, req(1, 4)).await })
        };
        tokio::task::yield_now().await;
        tx.send_modify(|v| {
            let mut s = (*v.state).clone();
            s.partitions[1].primary = 1;
            s.partitions[1].epoch = 4;
            v.state = Arc::new(s);
        });
        let s = code(ahead.await.unwrap());
        assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    }
}
