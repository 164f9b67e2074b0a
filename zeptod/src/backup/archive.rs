//! Continuous WAL archiving: a task that, every `--archive-interval`, uploads the WAL
//! records of each partition this node is primary for, from where the location's archive of
//! that partition ends. After a failover the new primary reads that end from the location
//! (never past its own log: a deposed primary may have archived records the new primary
//! does not have, and the new primary's records at those sequence numbers win at restore,
//! having the newer epoch). A node that becomes the primary of a partition archives it at
//! once, not at its next tick: the records the dead primary acknowledged but had not
//! uploaded yet are only on this copy, and already older than they should be (the bound
//! in ADR 0011 is the failover plus one round for them). Failures are retried with
//! exponential backoff; ingest and queries never wait on the archive. Counters feed
//! `/metrics`, `/admin/cluster` and `GET /admin/backup`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::format;
use super::store::Store;
use crate::db::storage_error;
use crate::error::{Error, Result};
use crate::http::AppState;

/// Most payload bytes read from the WAL per object.
const OBJECT_BYTES: usize = 4 << 20;
/// Partitions uploaded at the same time (object store requests are latency-bound).
const PARALLEL_UPLOADS: usize = 16;
/// Longest wait between retries after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the archiver has done, for metrics and admin views.
#[derive(Debug, Default)]
pub(crate) struct ArchiveStatus {
    pub(crate) enabled: AtomicBool,
    pub(crate) interval_ms: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) consecutive_failures: AtomicU64,
    /// Wall clock (unix ms) before which every record durable on this node's primaries is
    /// in the location: the start of the last successful round, or earlier while a
    /// partition taken over with records its previous primary had not archived waits for
    /// its first upload (then the time of that primary's last upload). 0 = none yet.
    pub(crate) caught_up_unix_ms: AtomicI64,
    /// Records of this node's primaries not archived yet (as of the last round, plus the
    /// backlog of partitions taken over since).
    pub(crate) pending_records: AtomicU64,
    /// Partitions whose archive has a gap (their WAL no longer reached back).
    pub(crate) gaps: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Per partition this node archives: the next seq to upload.
    pub(crate) positions: Mutex<BTreeMap<u32, u64>>,
}

impl ArchiveStatus {
    /// Seconds since the archive last caught up (0 when disabled; since start when never).
    pub(crate) fn lag_seconds(&self, started_unix_ms: i64) -> f64 {
        if !self.enabled.load(Ordering::Relaxed) {
            return 0.0;
        }
        let last = self.caught_up_unix_ms.load(Ordering::Relaxed);
        let since = if last == 0 { started_unix_ms } else { last };
        ((chrono::Utc::now().timestamp_millis() - since).max(0) as f64) / 1000.0
    }

    pub(crate) fn to_json(&self, started_unix_ms: i64) -> serde_json::Value {
        serde_json::json!({
            "enabled": self.enabled.load(Ordering::Relaxed),
            "interval_ms": self.interval_ms.load(Ordering::Relaxed),
            "lag_seconds": self.lag_seconds(started_unix_ms),
            "caught_up_unix_ms": self.caught_up_unix_ms.load(Ordering::Relaxed),
            "uploads": self.uploads.load(Ordering::Relaxed),
            "records": self.records.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "consecutive_failures": self.consecutive_failures.load(Ordering::Relaxed),
            "pending_records": self.pending_records.load(Ordering::Relaxed),
            "gaps": self.gaps.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().clone(),
            "partitions": self.positions.lock().len(),
        })
    }

    pub(crate) fn metrics_text(&self, started_unix_ms: i64) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: String| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        metric(
            "zepto_archive_enabled",
            "gauge",
            "1 when continuous WAL archiving is configured.",
            u8::from(self.enabled.load(Ordering::Relaxed)).to_string(),
        );
        metric(
            "zepto_archive_lag_seconds",
            "gauge",
            "Age of the oldest record of this node's primaries that may not be archived yet: seconds since the start of the last archive round that succeeded (or, for a partition taken over with records not archived yet, since its previous primary's last upload).",
            format!("{:.3}", self.lag_seconds(started_unix_ms)),
        );
        metric(
            "zepto_archive_pending_records",
            "gauge",
            "WAL records of this node's primaries not archived yet.",
            self.pending_records.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "zepto_archive_uploads_total",
            "counter",
            "WAL archive objects uploaded.",
            self.uploads.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "zepto_archive_records_total",
            "counter",
            "WAL records archived.",
            self.records.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "zepto_archive_bytes_total",
            "counter",
            "Bytes of WAL archive objects uploaded.",
            self.bytes.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "zepto_archive_failures_total",
            "counter",
            "WAL archive rounds that failed (retried with backoff).",
            self.failures.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "zepto_archive_gaps_total",
            "counter",
            "Times a partition's WAL no longer reached back to the archive's end (a base backup is needed to cover the gap).",
            self.gaps.load(Ordering::Relaxed).to_string(),
        );
        s
    }
}

/// Run the archiver until `shutdown` turns true (one last round then).
pub(crate) async fn run(
    state: Arc<AppState>,
    store: Store,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let status = state.backups.archive.clone();
    status.enabled.store(true, Ordering::Relaxed);
    status
        .interval_ms
        .store(interval.as_millis() as u64, Ordering::Relaxed);
    tracing::info!(location = %store.url(), ?interval, "continuous WAL archiving on");
    // Looking every half interval lets a round's upload finish within the interval, so a
    // record is in the location at most `interval` after it became durable.
    let tick = (interval / 2).max(Duration::from_millis(10));
    let mut backoff = interval;
    let mut wait = tick;
    // The partitions this node was primary of at the last round.
    let mut known = BTreeSet::new();
    loop {
        let stopping = {
            let cluster = state.cluster();
            // A partition this node just became the primary of is archived at once.
            let gained = async {
                match &cluster {
                    Some(c) => c.gained_primary(&known).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => false,
                _ = shutdown.changed() => true,
                () = gained => {
                    tracing::info!("primary of a partition now: archiving its records at once");
                    false
                }
            }
        };
        match round(&state, &store, &status, &mut known).await {
            Ok(()) => {
                if status.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
                    tracing::info!("WAL archive caught up again");
                }
                *status.last_error.lock() = None;
                backoff = interval;
                wait = tick;
            }
            Err(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                let n = status.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                backoff = (backoff * 2).min(MAX_BACKOFF).max(interval);
                wait = backoff;
                tracing::warn!(error = %e, failures = n, retry_in = ?wait, "WAL archive upload failed; retrying (ingest is not affected)");
                *status.last_error.lock() = Some(e.to_string());
            }
        }
        if stopping || *shutdown.borrow() {
            break;
        }
    }
}

/// Upload every partition's new records once; `known` becomes the partitions this node is
/// primary of (cluster mode), whether or not the round succeeds.
async fn round(
    state: &AppState,
    store: &Store,
    status: &ArchiveStatus,
    known: &mut BTreeSet<u32>,
) -> Result<()> {
    let started = chrono::Utc::now().timestamp_millis();
    let cluster_primaries = state.cluster().map(|c| c.primaries_here());
    if let Some(p) = &cluster_primaries {
        known.clone_from(p);
    }
    let Ok(node) = state.node() else {
        return Ok(());
    };
    let db = node.storage();
    let primaries: Vec<u32> = match cluster_primaries {
        // A node that came back with an empty data directory archives nothing until it gave
        // up the roles the map still assigns to it (`known` still follows the map, so that
        // does not wake the archiver over and over).
        Some(_)
            if state
                .cluster()
                .is_some_and(|c| c.check_data_intact().is_err()) =>
        {
            Vec::new()
        }
        Some(p) => p.into_iter().collect(),
        None => (0..db.partitions()).collect(),
    };
    // A partition no longer ours is re-read from the location if it comes back.
    status.positions.lock().retain(|p, _| primaries.contains(p));
    let results: Vec<Result<u64>> = futures_util::stream::iter(
        primaries
            .into_iter()
            .map(|p| archive_partition(db, store, status, p)),
    )
    .buffer_unordered(PARALLEL_UPLOADS)
    .collect()
    .await;
    let mut pending = 0u64;
    for r in results {
        pending += r?;
    }
    status.pending_records.store(pending, Ordering::Relaxed);
    status.caught_up_unix_ms.store(started, Ordering::Relaxed);
    Ok(())
}

/// Upload partition `p`'s records up to where its log ended when this started; answers
/// how many records are still not archived.
async fn archive_partition(
    db: &zepto_storage::Db,
    store: &Store,
    status: &ArchiveStatus,
    p: u32,
) -> Result<u64> {
    let target = db.partition_log(p).map_err(storage_error)?.next_seq;
    let known = status.positions.lock().get(&p).copied();
    let mut next = match known {
        Some(n) => n,
        None => {
            // New here (this node started, or took the partition over): its records past
            // the location's end count as pending, and as old as the last upload of them.
            let (end, last_upload_unix_ms) = archived_end(store, p).await?;
            let next = end.min(target);
            if next < target {
                status
                    .pending_records
                    .fetch_add(target - next, Ordering::Relaxed);
                if let Some(t) = last_upload_unix_ms {
                    status.caught_up_unix_ms.fetch_min(t, Ordering::Relaxed);
                }
            }
            next
        }
    };
    status.positions.lock().insert(p, next);
    while next < target {
        let d = db.clone();
        let got = tokio::task::spawn_blocking(move || d.wal_records_since(p, next, OBJECT_BYTES))
            .await
            .map_err(|e| Error::Internal(format!("archive read task failed: {e}")))?;
        let records = match got {
            Ok(r) => r,
            Err(zepto_storage::Error::WalTruncated { oldest, .. }) => {
                status.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::error!(partition = p, from_seq = next, oldest, "the WAL no longer holds records the archive needs: the archive has a gap until the next base backup (POST /admin/backup)");
                next = oldest.max(next + 1);
                status.positions.lock().insert(p, next);
                continue;
            }
            Err(e) => return Err(storage_error(e)),
        };
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            break;
        };
        let (start, end) = (first.seq, last.seq + 1);
        if start > next {
            // The log starts later than the archive ends (e.g. this copy came whole from
            // another node): the records in between are not in the location.
            status.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                partition = p,
                archived_until = next,
                log_from = start,
                "the archive has a gap until the next base backup (POST /admin/backup)"
            );
        }
        let epoch = records.iter().map(|r| r.epoch).max().unwrap_or(0);
        let data = format::encode_wal(p, &records);
        let key = format::wal_key(p, start, end, epoch, chrono::Utc::now().timestamp_millis());
        let bytes = data.len() as u64;
        store.put(&key, Bytes::from(data)).await?;
        status.uploads.fetch_add(1, Ordering::Relaxed);
        status
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        status.bytes.fetch_add(bytes, Ordering::Relaxed);
        next = end;
        status.positions.lock().insert(p, next);
    }
    Ok(db
        .partition_log(p)
        .map_err(storage_error)?
        .next_seq
        .saturating_sub(next))
}

/// Where the location's archive of partition `p` ends (0 when it holds none), and when the
/// object ending there was read from its primary's WAL (unix ms; `None` when there is none).
pub(crate) async fn archived_end(store: &Store, p: u32) -> Result<(u64, Option<i64>)> {
    let last = store
        .list(&format::wal_prefix(p))
        .await?
        .iter()
        .filter_map(|(k, _, _)| format::parse_wal_key(k))
        .max_by_key(|o| (o.end, o.unix_ms));
    Ok(last.map_or((0, None), |o| (o.end, Some(o.unix_ms))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray, TimestampNanosecondArray};
    use arrow::record_batch::RecordBatch;
    use zepto_storage::{ColumnDef, ColumnType, TableSchema};

    use super::*;
    use crate::backup::store::StoreArgs;

    fn schema() -> TableSchema {
        TableSchema::new(
            "t",
            vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("symbol", ColumnType::Symbol),
                ColumnDef::new("id", ColumnType::BigInt),
            ],
            None,
            None,
        )
        .unwrap()
    }

    fn row(id: i64) -> RecordBatch {
        let sym = arrow::compute::cast(
            &StringArray::from(vec!["S"]),
            &ColumnType::Symbol.arrow_type(),
        )
        .unwrap();
        RecordBatch::try_new(
            schema().arrow_schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![id])),
                sym,
                Arc::new(Int64Array::from(vec![id])),
            ],
        )
        .unwrap()
    }

    /// The `[start, end)` ranges archived for partition 0.
    async fn archived(store: &Store) -> Vec<(u64, u64)> {
        store
            .list("wal")
            .await
            .unwrap()
            .iter()
            .filter_map(|(k, _, _)| format::parse_wal_key(k))
            .map(|o| (o.start, o.end))
            .collect()
    }

    #[test]
    fn a_partition_taken_over_uploads_its_backlog_and_counts_it_in_the_lag_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = zepto_storage::Config::new(dir.path().join("data"));
        cfg.partitions = 1;
        cfg.checkpoint_interval = None;
        let db = zepto_storage::Db::open(cfg).unwrap();
        db.create_table(schema()).unwrap();
        for id in 0..5 {
            db.write("t", row(id)).unwrap().wait().unwrap();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(taken_over(&db, dir.path()));
        db.close().unwrap();
    }

    async fn taken_over(db: &zepto_storage::Db, dir: &std::path::Path) {
        let end = db.partition_log(0).unwrap().next_seq;
        let first = end - 5;
        // The previous primary of partition 0 uploaded its first 3 records at t = 1000 ms
        // and died before uploading the 2 others (this copy has them: it was the replica).
        let url = format!("file://{}", dir.join("bucket").display());
        let store = Store::open(&url, &StoreArgs::default()).unwrap();
        let recs = db.wal_records_since(0, first, OBJECT_BYTES).unwrap();
        let key = format::wal_key(0, first, first + 3, recs[2].epoch, 1_000);
        store
            .put(&key, Bytes::from(format::encode_wal(0, &recs[..3])))
            .await
            .unwrap();
        // This node's own partitions were all archived a moment ago.
        let status = ArchiveStatus::default();
        let now = chrono::Utc::now().timestamp_millis();
        status.caught_up_unix_ms.store(now, Ordering::Relaxed);

        let pending = archive_partition(db, &store, &status, 0).await.unwrap();
        assert_eq!(pending, 0);
        assert_eq!(
            archived(&store).await,
            vec![(first, first + 3), (first + 3, end)],
            "the backlog is uploaded from where the location's archive ended"
        );
        // Until the round that uploaded it ends, the lag counts the backlog as old as the
        // previous primary's last upload, and the records as pending.
        assert_eq!(status.caught_up_unix_ms.load(Ordering::Relaxed), 1_000);
        assert_eq!(status.pending_records.load(Ordering::Relaxed), 2);
        assert_eq!(status.positions.lock().get(&0), Some(&end));

        // Known now: the next call continues from its own position and uploads nothing new.
        assert_eq!(archive_partition(db, &store, &status, 0).await.unwrap(), 0);
        assert_eq!(archived(&store).await.len(), 2);
    }
}
