//! Base backups: every partition cut at its own WAL position by the engine's
//! whole-partition export (`Db::export_partition`), its rows uploaded as content-addressed
//! objects (a piece already in the location is not uploaded again), then one manifest,
//! written last. In a cluster the node that receives `POST /admin/backup` coordinates: it
//! asks every node (`POST /admin/backup/partitions`) to upload the partitions it is
//! primary for and writes the manifest once every partition is in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::format::{self, Manifest, ObjectRef, PartBackup, TableEntry};
use super::store::Store;
use crate::db::{storage_error, Node};
use crate::error::{Error, Result};

/// Objects uploaded at the same time (object store requests are latency-bound).
const PARALLEL_UPLOADS: usize = 16;

/// What one node uploaded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct UploadStats {
    pub(crate) objects_uploaded: u64,
    pub(crate) objects_reused: u64,
    pub(crate) bytes_uploaded: u64,
    pub(crate) rows: u64,
}

impl UploadStats {
    fn add(&mut self, o: &UploadStats) {
        self.objects_uploaded += o.objects_uploaded;
        self.objects_reused += o.objects_reused;
        self.bytes_uploaded += o.bytes_uploaded;
        self.rows += o.rows;
    }
}

/// The answer of `POST /admin/backup/partitions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartsUploaded {
    pub(crate) parts: Vec<PartBackup>,
    pub(crate) stats: UploadStats,
}

/// The tables of this node, as a manifest lists them.
pub(crate) fn table_entries(node: &Node) -> Result<Vec<TableEntry>> {
    let db = node.storage();
    let mut out = Vec::new();
    for t in db.tables() {
        let id = db.table_id(&t.name).map_err(storage_error)?;
        out.push(TableEntry {
            id,
            schema: t.as_ref().clone(),
        });
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Export and upload `partitions` of this node. Blocking work runs off the async threads.
pub(crate) async fn upload_partitions(
    node: Arc<Node>,
    store: &Store,
    partitions: &[u32],
    node_id: Option<u64>,
) -> Result<PartsUploaded> {
    let mut stats = UploadStats::default();
    let mut parts = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let n = node.clone();
        // The export shares the engine's batches (RDB pieces, mapped HDB files): nothing is
        // copied until a piece is encoded, and at most PARALLEL_UPLOADS pieces are encoded
        // at a time, so memory stays bounded whatever the partition's size.
        let export = tokio::task::spawn_blocking(move || n.storage().export_partition(p))
            .await
            .map_err(|e| Error::Internal(format!("backup export task failed: {e}")))?
            .map_err(storage_error)?;
        let pieces: Vec<(u32, arrow::record_batch::RecordBatch)> = export
            .tables
            .iter()
            .flat_map(|t| t.batches.iter().map(move |b| (t.id, b.clone())))
            .collect();
        let uploads: Vec<Result<(ObjectRef, bool)>> =
            futures_util::stream::iter(pieces.into_iter().map(|(table_id, batch)| async move {
                let rows = batch.num_rows() as u64;
                let data = tokio::task::spawn_blocking(move || format::encode_batch(&batch))
                    .await
                    .map_err(|e| Error::Internal(format!("backup encode task failed: {e}")))??;
                let hash = format::hash_hex(&data);
                let key = format::content_key(&hash);
                let bytes = data.len() as u64;
                let fresh = !store.exists(&key).await?;
                if fresh {
                    store.put(&key, Bytes::from(data)).await?;
                }
                let o = ObjectRef {
                    key,
                    table_id,
                    rows,
                    bytes,
                    xxh3: hash,
                };
                Ok((o, fresh))
            }))
            .buffered(PARALLEL_UPLOADS)
            .collect()
            .await;
        let mut objects = Vec::with_capacity(uploads.len());
        for u in uploads {
            let (o, fresh) = u?;
            if fresh {
                stats.objects_uploaded += 1;
                stats.bytes_uploaded += o.bytes;
            } else {
                stats.objects_reused += 1;
            }
            stats.rows += o.rows;
            objects.push(o);
        }
        tracing::info!(
            partition = p,
            next_seq = export.next_seq,
            objects = objects.len(),
            "partition backed up"
        );
        parts.push(PartBackup {
            partition: p,
            epoch: export.epoch,
            next_seq: export.next_seq,
            node: node_id,
            objects,
        });
    }
    Ok(PartsUploaded { parts, stats })
}

/// The summary `POST /admin/backup` answers with.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BackupSummary {
    pub(crate) id: String,
    pub(crate) location: String,
    pub(crate) partitions: u32,
    pub(crate) tables: usize,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    #[serde(flatten)]
    pub(crate) stats: UploadStats,
    pub(crate) duration_ms: u64,
}

/// Put the partitions uploaded by every node together and write the manifest (last).
pub(crate) async fn finish_backup(
    store: &Store,
    node: &Node,
    uploaded: Vec<PartsUploaded>,
    started: Instant,
) -> Result<BackupSummary> {
    let partitions = node.storage().partitions();
    let mut stats = UploadStats::default();
    let mut by_partition: BTreeMap<u32, PartBackup> = BTreeMap::new();
    for u in uploaded {
        stats.add(&u.stats);
        for part in u.parts {
            // Two nodes can both hold a partition when its primary changed mid-backup:
            // the newer epoch is the live history.
            match by_partition.get(&part.partition) {
                Some(have) if have.epoch >= part.epoch => {}
                _ => {
                    by_partition.insert(part.partition, part);
                }
            }
        }
    }
    if let Some(missing) = (0..partitions).find(|p| !by_partition.contains_key(p)) {
        return Err(Error::Unavailable {
            message: format!(
                "backup incomplete: no node uploaded partition {missing} (its primary changed \
                 or is unreachable); nothing was listed, retry"
            ),
            retry_after: Some(5),
        });
    }
    let now = chrono::Utc::now();
    let manifest = Manifest {
        format: format::MANIFEST_FORMAT,
        id: format::new_backup_id(now),
        created: now.to_rfc3339(),
        created_unix_ms: now.timestamp_millis(),
        partitions,
        tables: table_entries(node)?,
        parts: by_partition.into_values().collect(),
    };
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("encode manifest: {e}")))?;
    store
        .put(&format::manifest_key(&manifest.id), Bytes::from(body))
        .await?;
    let summary = BackupSummary {
        id: manifest.id.clone(),
        location: store.url().to_string(),
        partitions,
        tables: manifest.tables.len(),
        rows: manifest.total_rows(),
        bytes: manifest.total_bytes(),
        stats,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        id = %summary.id,
        rows = summary.rows,
        bytes = summary.bytes,
        uploaded = summary.stats.objects_uploaded,
        reused = summary.stats.objects_reused,
        duration_ms = summary.duration_ms,
        "base backup complete"
    );
    Ok(summary)
}

/// Every complete backup in the location, oldest first.
pub(crate) async fn list_manifests(store: &Store) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (key, _, _) in store.list("backups").await? {
        if format::backup_id_of(&key).is_some() {
            let data = store.get(&key).await?;
            out.push(Manifest::parse(&key, &data)?);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}
