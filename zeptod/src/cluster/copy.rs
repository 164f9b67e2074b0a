//! Whole-partition copies: what a primary sends a replica that WAL records cannot bring up to
//! date — a replica whose log diverged from the primary's (a deposed primary's unreplicated
//! tail, ADR 0008), or one the primary's WAL no longer reaches back to (an empty disk, a long
//! absence).
//!
//! - **Primary** ([`send`]): `Db::export_partition` takes a consistent cut of the partition
//!   (zero-copy batches, the position and log end at the cut); a blocking task encodes it
//!   chunk by chunk (Arrow IPC, about [`CHUNK_BYTES`] each) into a small channel that feeds
//!   the client stream of `InstallPartition`, so memory stays bounded by a few chunks.
//!   Replication of the partition's later records resumes from the cut once the replica
//!   answers its position (the caller catches it up from the WAL).
//! - **Replica** ([`serve`]): checks the committed map (the sender is the primary, this node
//!   the replica, the epoch not older), then streams the rows into
//!   `Db::begin_partition_import` on a blocking task and finishes the import only when the
//!   stream ended cleanly and delivered every row the header announced. Anything else drops
//!   the import: the partition stays exactly as it was (storage makes the import atomic,
//!   ADR 0002 point 12). Writes to the partition are refused while it is being replaced.

use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;
use tonic::Status;
use zepto_cluster::NodeId;
use zepto_storage::PartitionLog;

use super::dataplane::DataPlane;
use super::route::{from_ipc, to_ipc};
use crate::rpc::pb::{InstallChunk, InstallHeader, InstallResponse, ReplicaPosition};

/// Target size of one `InstallChunk`'s Arrow IPC payload.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;
/// Chunks encoded ahead of the network.
const AHEAD: usize = 4;
/// The longest a copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A copy being sent (primary side), shown in `/admin/cluster` as a migration.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) peer: NodeId,
    pub(crate) rows: u64,
    /// Estimated from the in-memory size of the exported batches.
    pub(crate) bytes_total: u64,
    pub(crate) bytes_sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(crate) started: Instant,
}

impl Progress {
    /// JSON for `/admin/cluster`.
    pub(crate) fn to_json(&self, partition: u32) -> serde_json::Value {
        let sent = self.bytes_sent.load(std::sync::atomic::Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { sent as f64 / secs } else { 0.0 };
        let left = self.bytes_total.saturating_sub(sent);
        let eta_ms = (rate > 0.0).then(|| (left as f64 / rate * 1000.0) as u64);
        serde_json::json!({
            "partition": partition,
            "target": self.peer,
            "kind": "whole copy",
            "rows": self.rows,
            "bytes_sent": sent,
            "bytes_total": self.bytes_total,
            "bytes_per_sec": rate as u64,
            "eta_ms": eta_ms,
            "running_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// Removes a copy from the progress table when it ends (however it ends).
struct Running<'a>(&'a DataPlane, u32);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.copies.lock().remove(&self.1);
    }
}

/// What a finished copy did (primary side).
#[derive(Debug, Clone)]
pub(crate) struct Copied {
    pub(crate) position: ReplicaPosition,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) took: Duration,
}

/// Copy partition `p` whole to `peer`, its replica. See the module doc.
pub(crate) async fn send(dp: &DataPlane, peer: NodeId, p: u32) -> Result<Copied, Status> {
    let started = Instant::now();
    let node = dp.node().map_err(|e| Status::unavailable(e.to_string()))?;
    let client = dp
        .peers
        .get(peer)
        .ok_or_else(|| Status::internal(format!("no client for node {peer}")))?
        .clone();
    let n = node.clone();
    let exp = tokio::task::spawn_blocking(move || n.storage().export_partition(p))
        .await
        .map_err(|e| Status::internal(format!("export task failed: {e}")))?
        .map_err(|e| Status::internal(format!("export partition {p}: {e}")))?;
    let rows = exp.rows();
    let log = exp.log();
    let mut header = Some(InstallHeader {
        partition: p,
        epoch: exp.epoch,
        next_seq: log.next_seq,
        last_epoch: log.last_epoch,
        last_epoch_start: log.last_epoch_start,
        rows,
    });
    tracing::info!(
        partition = p,
        peer,
        rows,
        next_seq = log.next_seq,
        "copying the whole partition to its replica"
    );
    let bytes_total: u64 = exp
        .tables
        .iter()
        .flat_map(|t| t.batches.iter())
        .map(|b| b.get_array_memory_size() as u64)
        .sum();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    dp.copies.lock().insert(
        p,
        Progress {
            peer,
            rows,
            bytes_total,
            bytes_sent: sent.clone(),
            started,
        },
    );
    let _running = Running(dp, p);
    let bandwidth = dp.bandwidth();
    let (tx, rx) = mpsc::channel::<InstallChunk>(AHEAD);
    let producer = tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let mut bytes = 0u64;
        let began = Instant::now();
        for t in &exp.tables {
            for b in &t.batches {
                for slice in slices(b) {
                    let arrow_ipc = to_ipc(&slice).map_err(|e| e.to_string())?;
                    bytes += arrow_ipc.len() as u64;
                    sent.store(bytes, std::sync::atomic::Ordering::Relaxed);
                    // --migration-bandwidth: never ahead of `rate` bytes per second
                    // (a blocking task, so sleeping here stalls nothing else).
                    if let Some(rate) = bandwidth.filter(|r| *r > 0) {
                        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(began.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let chunk = InstallChunk {
                        header: header.take(),
                        table_id: t.id,
                        arrow_ipc,
                    };
                    if tx.blocking_send(chunk).is_err() {
                        return Err("the copy stream closed early".into());
                    }
                }
            }
        }
        if let Some(h) = header.take() {
            // An empty partition: the header alone replaces what the replica holds.
            let _ = tx.blocking_send(InstallChunk {
                header: Some(h),
                ..Default::default()
            });
        }
        Ok(bytes)
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let answer = client.install_partition(stream, COPY_TIMEOUT).await;
    let produced = producer
        .await
        .map_err(|e| Status::internal(format!("copy encoder failed: {e}")))?;
    let resp = answer?;
    let bytes = produced.map_err(Status::internal)?;
    dp.copy_bytes
        .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    let position = resp
        .position
        .ok_or_else(|| Status::internal("the replica answered the copy without a position"))?;
    Ok(Copied {
        position,
        rows: resp.rows,
        bytes,
        took: started.elapsed(),
    })
}

/// Cut a batch into slices of about [`CHUNK_BYTES`].
fn slices(b: &RecordBatch) -> Vec<RecordBatch> {
    let rows = b.num_rows();
    if rows == 0 {
        return Vec::new();
    }
    let size = b.get_array_memory_size().max(1);
    let per = (CHUNK_BYTES.saturating_mul(rows) / size).clamp(1, rows);
    (0..rows)
        .step_by(per)
        .map(|off| b.slice(off, per.min(rows - off)))
        .collect()
}

/// What the receiving side hands its import task.
enum Part {
    Rows(u32, RecordBatch),
    Finish,
}

/// The `InstallPartition` call on the replica. See the module doc.
pub(crate) async fn serve(
    dp: &DataPlane,
    from: NodeId,
    mut stream: tonic::Streaming<InstallChunk>,
) -> Result<InstallResponse, Status> {
    let first = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("an empty partition copy"))?;
    let h = first
        .header
        .ok_or_else(|| Status::invalid_argument("the first message of a copy has no header"))?;
    let p = h.partition;
    {
        let state = dp.view.borrow().state.clone();
        let info = state
            .partition(p)
            .ok_or_else(|| Status::invalid_argument(format!("unknown partition {p}")))?;
        if h.epoch < info.epoch {
            return Err(Status::aborted(format!(
                "FENCED partition {p}: the copy is of epoch {}, the current epoch is {}",
                h.epoch, info.epoch
            )));
        }
        if info.primary != from || info.replica != Some(dp.me) {
            return Err(Status::failed_precondition(format!(
                "NOT_PRIMARY partition {p}: at epoch {} the primary is {} and the replica \
                 {:?}; node {from} may not copy it to node {}",
                info.epoch, info.primary, info.replica, dp.me
            )));
        }
    }
    let node = dp.node().map_err(|e| Status::unavailable(e.to_string()))?;
    let log = PartitionLog {
        next_seq: h.next_seq,
        last_epoch: h.last_epoch,
        last_epoch_start: h.last_epoch_start,
    };
    let (tx, mut rx) = mpsc::channel::<Part>(AHEAD);
    let n = node.clone();
    let (epoch, expected) = (h.epoch, h.rows);
    let worker = tokio::task::spawn_blocking(move || -> Result<u64, Status> {
        let mut imp = n
            .storage()
            .begin_partition_import(p)
            .map_err(|e| Status::unavailable(format!("start the import of partition {p}: {e}")))?;
        let mut rows = 0u64;
        loop {
            match rx.blocking_recv() {
                Some(Part::Rows(table, batch)) => {
                    rows += batch.num_rows() as u64;
                    imp.add(table, batch).map_err(|e| {
                        Status::invalid_argument(format!("partition {p} copy: {e}"))
                    })?;
                }
                Some(Part::Finish) => break,
                // The stream failed: dropping the import leaves the partition as it was.
                None => return Err(Status::aborted("the copy stream ended early")),
            }
        }
        if rows != expected {
            return Err(Status::data_loss(format!(
                "partition {p} copy: {rows} rows arrived, the header announced {expected}"
            )));
        }
        imp.finish(epoch, log)
            .map_err(|e| Status::internal(format!("finish the import of partition {p}: {e}")))?;
        Ok(rows)
    });
    let fed = async {
        let mut next = Some(first);
        loop {
            let Some(chunk) = next.take() else {
                match stream.message().await? {
                    Some(c) => {
                        next = Some(c);
                        continue;
                    }
                    None => break,
                }
            };
            if chunk.arrow_ipc.is_empty() {
                continue;
            }
            for b in from_ipc(&chunk.arrow_ipc).map_err(Status::invalid_argument)? {
                if tx.send(Part::Rows(chunk.table_id, b)).await.is_err() {
                    // The import task stopped; its error is the answer.
                    return Ok(());
                }
            }
        }
        let _ = tx.send(Part::Finish).await;
        Ok::<(), Status>(())
    }
    .await;
    drop(tx);
    let imported = worker
        .await
        .map_err(|e| Status::internal(format!("import task failed: {e}")))?;
    fed?;
    let rows = imported?;
    let (epoch, _) = node
        .storage()
        .partition_position(p)
        .map_err(|e| Status::internal(e.to_string()))?;
    let log = node
        .storage()
        .partition_log(p)
        .map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(
        partition = p,
        from,
        rows,
        next_seq = log.next_seq,
        "partition replaced by a copy from its primary"
    );
    // The copy replaced every file of the partition, a corrupt one included (ADR 0015).
    dp.forget_corrupt_partitions();
    Ok(InstallResponse {
        position: Some(ReplicaPosition {
            partition: p,
            epoch,
            next_seq: log.next_seq,
            last_record_epoch: log.last_epoch,
        }),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn slices_cover_every_row_once_in_bounded_pieces() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let n = 2_000_000;
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))])
            .unwrap_or_else(|e| panic!("{e}"));
        let parts = slices(&b);
        assert!(parts.len() >= 4, "16 MB in ~4 MB pieces: {}", parts.len());
        assert_eq!(
            parts.iter().map(RecordBatch::num_rows).sum::<usize>(),
            n as usize
        );
        assert!(parts
            .iter()
            .all(|s| s.get_array_memory_size() <= b.get_array_memory_size()));
        assert!(slices(&b.slice(0, 0)).is_empty());
    }
}
