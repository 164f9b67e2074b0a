//! Checkpoints: a consistent image of the in-memory state at a WAL position, so recovery
//! replays only the WAL written after it and the WAL before it can be recycled.
//!
//! The WAL writer takes the cut ([`Capture`]) between two group commits, so it is exact;
//! writing it out happens on another thread and never blocks ingest. Layout:
//! ```text
//! checkpoints/<id>.tmp/      while being written; deleted at startup if found
//! checkpoints/<id>/          complete: renamed into place after everything inside is fsynced
//!     MANIFEST.json          WAL position, per-partition next sequence numbers, every chunk
//!     t<table>_p<partition>_<bucket>_<seq>.arrow   each memory chunk, as an Arrow IPC file
//! ```
//! HDB chunks are referenced by path, not copied. A memory chunk that did not change since
//! the previous checkpoint is hard-linked from it instead of written again.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::batch::concat_batches;
use crate::catalog::FORMAT_VERSION;
use crate::error::{Error, IoContext, Result};
use crate::faults::Faults;
use crate::fsutil::{create_dir_durable, fsync_dir, write_atomic};
use crate::hdb::write_ipc_file;
use crate::rdb::Chunk;
use crate::schema::TableSchema;
use crate::wal::WalPosition;

/// How many complete checkpoints are kept (the WAL is kept back to the oldest of them).
pub(crate) const KEEP_CHECKPOINTS: usize = 2;

/// The in-memory state at one WAL position, taken by the WAL writer.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) position: WalPosition,
    pub(crate) next_seq: Vec<u64>,
    pub(crate) last_record_epochs: Vec<u64>,
    pub(crate) last_epoch_starts: Vec<u64>,
    pub(crate) epochs: Vec<u64>,
    /// Per imported partition: where its WAL history restarts (see [`Manifest::wal_floors`]).
    pub(crate) wal_floors: BTreeMap<u32, WalPosition>,
    pub(crate) tables: Vec<CapturedTable>,
}

/// One partition's chunks at a cut taken by the WAL writer (partition export).
#[derive(Debug)]
pub(crate) struct PartitionCut {
    /// The partition's fencing epoch at the cut.
    pub(crate) epoch: u64,
    /// The first sequence number not in the cut.
    pub(crate) next_seq: u64,
    /// The epoch of the newest record, and the seq where its run starts.
    pub(crate) last_epoch: u64,
    pub(crate) last_epoch_start: u64,
    /// Every table: (id, schema, the partition's chunks).
    pub(crate) tables: Vec<(u32, Arc<TableSchema>, Vec<Chunk>)>,
}

/// Ask the WAL writer to replace a partition with imported chunks at a cut: every table's
/// chunk list of `partition` becomes the given chunks (none for a table not named), and the
/// partition's position becomes `(epoch, next_seq)`. The reply is the cut right after the
/// swap, for the checkpoint that makes it durable.
#[derive(Debug)]
pub(crate) struct ImportSwap {
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    pub(crate) next_seq: u64,
    /// The source's log end (`Db::partition_log`): newest record epoch and its run's start.
    pub(crate) last_epoch: u64,
    pub(crate) last_epoch_start: u64,
    /// (table id, chunks)
    pub(crate) tables: Vec<(u32, Vec<Chunk>)>,
    pub(crate) reply: crossbeam_channel::Sender<Result<Swapped>>,
}

/// What an [`ImportSwap`] did: the cut right after it, and the HDB files (paths relative to
/// the data directory) of the chunks it took out of the partition. Those files are retired
/// once the cut is a checkpoint (see [`files_named_by_kept`]), never before: until then the
/// newest checkpoint still names them.
#[derive(Debug)]
pub(crate) struct Swapped {
    pub(crate) capture: Capture,
    pub(crate) replaced: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct CapturedTable {
    pub(crate) id: u32,
    pub(crate) schema: Arc<TableSchema>,
    /// (partition, chunk)
    pub(crate) chunks: Vec<(u32, Chunk)>,
}

/// What a checkpoint wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub id: u64,
    pub wal_segment: u64,
    pub wal_offset: u64,
    #[serde(serialize_with = "ser_duration_ms", rename = "duration_ms")]
    pub duration: Duration,
    /// Rows covered (memory and disk chunks).
    pub rows: u64,
    /// Bytes written into the checkpoint directory (hard links count as 0).
    pub bytes: u64,
    pub memory_chunks: u64,
    pub disk_chunks: u64,
    pub created_unix_ms: u64,
}

fn ser_duration_ms<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChunkKind {
    Memory,
    Disk,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ManifestChunk {
    pub(crate) partition: u32,
    pub(crate) bucket: i64,
    pub(crate) seq: u32,
    pub(crate) kind: ChunkKind,
    /// Memory: file name inside the checkpoint directory. Disk: path relative to the data dir.
    pub(crate) file: String,
    pub(crate) min_ts: i64,
    pub(crate) max_ts: i64,
    pub(crate) rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ManifestTable {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) chunks: Vec<ManifestChunk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format_version: u32,
    pub(crate) id: u64,
    pub(crate) created_unix_ms: u64,
    pub(crate) wal_position: WalPosition,
    pub(crate) next_seq: Vec<u64>,
    /// Per partition: the fencing epoch known at the checkpoint.
    #[serde(default)]
    pub(crate) epochs: Vec<u64>,
    /// Per partition: the epoch of the newest record (absent in older manifests).
    #[serde(default)]
    pub(crate) last_record_epochs: Vec<u64>,
    /// Per partition: the sequence number where the newest record epoch's run starts
    /// (absent in older manifests).
    #[serde(default)]
    pub(crate) last_epoch_starts: Vec<u64>,
    /// Per partition that was replaced by an import (format version 2): the WAL position of
    /// the import's cut. Records of that partition before it belong to the history the
    /// import replaced and are never served for catch-up.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) wal_floors: BTreeMap<u32, WalPosition>,
    pub(crate) tables: Vec<ManifestTable>,
}

/// Memory-chunk files of the previous checkpoint, for hard-linking unchanged chunks:
/// chunk id -> (rows when written, file).
pub(crate) type LinkCache = HashMap<u64, (usize, PathBuf)>;

pub(crate) fn checkpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

fn checkpoint_path(data_dir: &Path, id: u64) -> PathBuf {
    checkpoints_dir(data_dir).join(format!("{id:016}"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write checkpoint `id` from a capture. Fault points: `checkpoint::after_chunks`,
/// `checkpoint::after_manifest`, `checkpoint::after_rename`.
pub(crate) fn write_checkpoint(
    data_dir: &Path,
    id: u64,
    capture: &Capture,
    faults: &Faults,
    links: &mut LinkCache,
) -> Result<(Manifest, CheckpointInfo)> {
    let started = Instant::now();
    let root = checkpoints_dir(data_dir);
    create_dir_durable(&root)?;
    let tmp = root.join(format!("{id:016}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).ctx(|| format!("remove stale {}", tmp.display()))?;
    }
    fs::create_dir(&tmp).ctx(|| format!("create {}", tmp.display()))?;
    let final_dir = checkpoint_path(data_dir, id);
    let mut new_links = LinkCache::new();
    let mut info = CheckpointInfo {
        id,
        wal_segment: capture.position.segment,
        wal_offset: capture.position.offset,
        duration: Duration::ZERO,
        rows: 0,
        bytes: 0,
        memory_chunks: 0,
        disk_chunks: 0,
        created_unix_ms: unix_ms(),
    };
    let mut tables = Vec::with_capacity(capture.tables.len());
    for t in &capture.tables {
        let mut chunks = Vec::with_capacity(t.chunks.len());
        for (partition, chunk) in &t.chunks {
            match chunk {
                Chunk::Mem(m) => {
                    if m.rows == 0 {
                        continue;
                    }
                    let name = format!("t{}_p{}_{}_{}.arrow", t.id, partition, m.bucket, m.seq);
                    let path = tmp.join(&name);
                    let linked = match links.get(&m.id) {
                        Some((rows, prev)) if *rows == m.rows => fs::hard_link(prev, &path).is_ok(),
                        _ => false,
                    };
                    if !linked {
                        let batches: Vec<RecordBatch> =
                            m.pieces.iter().map(|p| p.batch.clone()).collect();
                        let batch = concat_batches(&batches)?;
                        write_ipc_file(&path, &batch, m.min, m.max)?;
                        info.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    }
                    new_links.insert(m.id, (m.rows, final_dir.join(&name)));
                    info.rows += m.rows as u64;
                    info.memory_chunks += 1;
                    chunks.push(ManifestChunk {
                        partition: *partition,
                        bucket: m.bucket,
                        seq: m.seq,
                        kind: ChunkKind::Memory,
                        file: name,
                        min_ts: m.min,
                        max_ts: m.max,
                        rows: m.rows as u64,
                    });
                }
                Chunk::Disk(d) => {
                    info.rows += d.rows;
                    info.disk_chunks += 1;
                    chunks.push(ManifestChunk {
                        partition: *partition,
                        bucket: d.bucket,
                        seq: d.seq,
                        kind: ChunkKind::Disk,
                        file: d.rel_path.clone(),
                        min_ts: d.min,
                        max_ts: d.max,
                        rows: d.rows,
                    });
                }
            }
        }
        tables.push(ManifestTable {
            id: t.id,
            name: t.schema.name.clone(),
            chunks,
        });
    }
    faults.check("checkpoint::after_chunks")?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        id,
        created_unix_ms: info.created_unix_ms,
        wal_position: capture.position,
        next_seq: capture.next_seq.clone(),
        epochs: capture.epochs.clone(),
        last_record_epochs: capture.last_record_epochs.clone(),
        last_epoch_starts: capture.last_epoch_starts.clone(),
        wal_floors: capture.wal_floors.clone(),
        tables,
    };
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| Error::Internal(format!("encode checkpoint manifest: {e}")))?;
    write_atomic(&tmp.join("MANIFEST.json"), &bytes, faults)?;
    faults.check("checkpoint::after_manifest")?;
    fs::rename(&tmp, &final_dir)
        .ctx(|| format!("rename {} to {}", tmp.display(), final_dir.display()))?;
    fsync_dir(&root)?;
    faults.check("checkpoint::after_rename")?;
    *links = new_links;
    info.duration = started.elapsed();
    Ok((manifest, info))
}

/// Complete checkpoints, newest first. Incomplete (`.tmp`) ones are removed.
pub(crate) fn list_checkpoints(data_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = checkpoints_dir(data_dir);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(format!("list {}", root.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", root.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            tracing::info!(path = %entry.path().display(), "removing incomplete checkpoint");
            fs::remove_dir_all(entry.path())
                .ctx(|| format!("remove incomplete checkpoint {}", entry.path().display()))?;
        } else if let Ok(id) = name.parse::<u64>() {
            out.push((id, entry.path()));
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Read and check a checkpoint's manifest: it parses, its version is known, and every file
/// it names exists (what recovery needs before trusting it).
pub(crate) fn load_manifest(dir: &Path) -> Result<Manifest> {
    let m = read_manifest(dir)?;
    let path = dir.join("MANIFEST.json");
    for t in &m.tables {
        for c in &t.chunks {
            let file = match c.kind {
                ChunkKind::Memory => dir.join(&c.file),
                ChunkKind::Disk => dir
                    .parent()
                    .and_then(Path::parent)
                    .map(|d| d.join(&c.file))
                    .unwrap_or_default(),
            };
            if !file.is_file() {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!("checkpoint names {} which is missing", file.display()),
                });
            }
        }
    }
    Ok(m)
}

/// An HDB file a checkpoint names: (table id, partition, bucket, chunk number).
pub(crate) type NamedFile = (u32, u32, i64, u32);

/// The HDB files (by path relative to the data directory) named by the kept checkpoints
/// other than `except`; `None` when one of them cannot be read (then nothing may be
/// deleted on the strength of this answer).
pub(crate) fn files_named_by_kept(
    data_dir: &Path,
    except: Option<u64>,
) -> Option<HashMap<String, NamedFile>> {
    let list = list_checkpoints(data_dir).ok()?;
    let mut out = HashMap::new();
    for (id, dir) in list.iter().take(KEEP_CHECKPOINTS) {
        if Some(*id) == except {
            continue;
        }
        let m = read_manifest(dir).ok()?;
        for t in &m.tables {
            for c in t.chunks.iter().filter(|c| c.kind == ChunkKind::Disk) {
                out.insert(c.file.clone(), (t.id, c.partition, c.bucket, c.seq));
            }
        }
    }
    Some(out)
}

/// Parse a checkpoint's manifest and check its version (no file checks).
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("MANIFEST.json");
    let bytes = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.clone(),
        offset: e.column() as u64,
        reason: format!("invalid manifest: {e}"),
    })?;
    if m.format_version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path,
            found: m.format_version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(m)
}

/// Delete checkpoints beyond the newest [`KEEP_CHECKPOINTS`]; returns the WAL position the
/// oldest kept one needs (everything before it may go).
pub(crate) fn prune_checkpoints(data_dir: &Path) -> Result<Option<WalPosition>> {
    let list = list_checkpoints(data_dir)?;
    for (_, dir) in list.iter().skip(KEEP_CHECKPOINTS) {
        fs::remove_dir_all(dir).ctx(|| format!("remove old checkpoint {}", dir.display()))?;
    }
    let mut oldest = None;
    // Only the WAL positions are needed here: parse, do not stat every chunk file again.
    for (_, dir) in list.iter().take(KEEP_CHECKPOINTS) {
        if let Ok(m) = read_manifest(dir) {
            oldest = Some(match oldest {
                None => m.wal_position,
                Some(p) => std::cmp::min(p, m.wal_position),
            });
        }
    }
    Ok(oldest)
}
