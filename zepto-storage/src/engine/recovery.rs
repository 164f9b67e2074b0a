//! Opening a data directory: identity and catalog, the newest complete checkpoint, HDB
//! files it references (files only the older kept checkpoint names are kept until it is
//! pruned; others are leftovers of work after it and are removed), then WAL replay from the
//! checkpoint's position and repair of the log's tail.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::catalog::{check_identity, prepare_data_dir, Catalog};
use crate::checkpoint::{list_checkpoints, load_manifest, ChunkKind, Manifest};
use crate::codec::{decode_rows, payload_table_id};
use crate::engine::{Config, Counters, RecoveryInfo, Shared};
use crate::error::{Error, IoContext, Result};
use crate::faults::Faults;
use crate::fsutil::create_dir_durable;
use crate::hdb::DiskChunk;
use crate::rdb::{Chunk, MemChunk, TableData};
use crate::wal::{repair, replay, segment_path, WalPosition, WalStats, WalWriter};

pub(super) struct Recovered {
    pub(super) shared: Arc<Shared>,
    pub(super) wal: WalWriter,
    pub(super) next_seq: super::writer::Sequences,
}

pub(super) fn recover(config: &Config, faults: Arc<Faults>) -> Result<Recovered> {
    let started = Instant::now();
    let dir = config.data_dir.clone();
    prepare_data_dir(&dir)?;
    let partitions = check_identity(&dir, config.partitions, &faults)?;
    let catalog = Catalog::load(&dir)?;
    let mut tables: HashMap<String, Arc<TableData>> = HashMap::new();
    for e in catalog.entries() {
        tables.insert(
            e.schema.name.to_ascii_lowercase(),
            Arc::new(TableData::new(e.id, e.schema.clone(), partitions)),
        );
    }
    let by_id: HashMap<u32, Arc<TableData>> = tables.values().map(|t| (t.id, t.clone())).collect();
    let now = config.clock.now_ms();
    let next_chunk_id = AtomicU64::new(1);
    let mut info = RecoveryInfo::default();

    // 1. The newest checkpoint that loads: its manifest parses, the files it names exist,
    // and its memory chunks read back and match their checksums.
    let list = list_checkpoints(&dir)?;
    let next_checkpoint_id = list.first().map(|(id, _)| id + 1).unwrap_or(1);
    let mut chosen: Option<(Manifest, PathBuf)> = None;
    let mut memory_chunks = HashMap::new();
    let mut fell_back = false;
    for (id, path) in &list {
        let loaded = load_manifest(path).and_then(|m| {
            let mem = read_memory_chunks(path, &m, &by_id)?;
            Ok((m, mem))
        });
        match loaded {
            Ok((m, mem)) => {
                chosen = Some((m, path.clone()));
                memory_chunks = mem;
                break;
            }
            Err(e) => {
                tracing::error!(checkpoint = id, error = %e, "checkpoint is unusable; trying an older one");
                let aside = path.with_extension("corrupt");
                fs::rename(path, &aside).ctx(|| format!("move {} aside", path.display()))?;
                fell_back = true;
            }
        }
    }
    // Without a checkpoint, replay starts at the WAL's first segment. Segments are recycled
    // only once a checkpoint covers them, so a WAL that no longer starts at segment 1 means
    // the rows before it lived only in checkpoints that are gone or unusable: refuse to open
    // rather than come up without them.
    if chosen.is_none() {
        if let Some((first, path)) = crate::wal::list_segments(&dir.join("wal"))?.first() {
            if *first > 1 {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "no usable checkpoint, and the WAL starts at segment {first}: the rows \
                         of the recycled segments before it were only in a checkpoint \
                         (unusable ones are kept as checkpoints/*.corrupt); restore a backup \
                         or repair that checkpoint"
                    ),
                });
            }
        }
    }
    let mut next_seq = vec![0u64; partitions as usize];
    let mut epochs = vec![0u64; partitions as usize];
    let mut last_epoch = vec![0u64; partitions as usize];
    // 0 where unknown (older manifests): a replica comparing against it is conservatively
    // treated as divergent by the cluster, never as a prefix it is not.
    let mut epoch_start = vec![0u64; partitions as usize];
    let mut from = WalPosition::default();
    let mut wal_floors = std::collections::BTreeMap::new();
    let mut referenced: HashSet<PathBuf> = HashSet::new();
    if let Some((m, cdir)) = &chosen {
        info.checkpoint_id = Some(m.id);
        from = m.wal_position;
        wal_floors.clone_from(&m.wal_floors);
        if m.epochs.len() == partitions as usize {
            epochs.clone_from(&m.epochs);
        }
        // Older manifests lack record epochs: the fencing epoch is the closest known bound.
        if m.last_record_epochs.len() == partitions as usize {
            last_epoch.clone_from(&m.last_record_epochs);
        } else if m.epochs.len() == partitions as usize {
            last_epoch.clone_from(&m.epochs);
        }
        if m.last_epoch_starts.len() == partitions as usize {
            epoch_start.clone_from(&m.last_epoch_starts);
        }
        if m.next_seq.len() == partitions as usize {
            next_seq.clone_from(&m.next_seq);
        } else {
            return Err(Error::Corrupt {
                path: cdir.join("MANIFEST.json"),
                offset: 0,
                reason: format!(
                    "manifest has {} partitions, the directory has {partitions}",
                    m.next_seq.len()
                ),
            });
        }
        for mt in &m.tables {
            let Some(t) = by_id.get(&mt.id) else {
                continue; // dropped since
            };
            for c in &mt.chunks {
                let Some(part) = t.partitions.get(c.partition as usize) else {
                    return Err(Error::Corrupt {
                        path: cdir.join("MANIFEST.json"),
                        offset: 0,
                        reason: format!("chunk of partition {} out of range", c.partition),
                    });
                };
                let chunk = match c.kind {
                    ChunkKind::Memory => {
                        let batches = memory_chunks.remove(&c.file).ok_or_else(|| {
                            Error::Internal(format!("memory chunk {} was not read", c.file))
                        })?;
                        let batches = batches
                            .into_iter()
                            .map(|b| {
                                RecordBatch::try_new(t.arrow_schema.clone(), b.columns().to_vec())
                                    .map_err(|e| Error::Corrupt {
                                        path: cdir.join(&c.file),
                                        offset: 0,
                                        reason: format!(
                                            "does not match table '{}': {e}",
                                            t.schema.name
                                        ),
                                    })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let id = next_chunk_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Chunk::Mem(MemChunk::restore(
                            id,
                            c.bucket,
                            c.seq,
                            batches,
                            t.ts_col(),
                            now,
                        ))
                    }
                    ChunkKind::Disk => {
                        referenced.insert(dir.join(&c.file));
                        let chunk = match DiskChunk::open(&dir, &c.file, &t.schema, c.bucket, c.seq)
                        {
                            Ok(d) => d,
                            // A file that does not decode fails the reads that need it, not
                            // the whole database (ADR 0015); its rows are in the manifest.
                            Err(Error::Corrupt {
                                path,
                                offset,
                                reason,
                            }) => {
                                tracing::error!(file = %path.display(), offset, %reason, "HDB file is corrupt; opening without it");
                                DiskChunk::broken(
                                    &dir, &c.file, c.bucket, c.seq, c.min_ts, c.max_ts, c.rows,
                                    offset, reason,
                                )
                            }
                            Err(e) => return Err(e),
                        };
                        Chunk::Disk(Arc::new(chunk))
                    }
                };
                info.rows += c.rows;
                part.write().insert(chunk);
            }
        }
    }
    // Files only the older kept checkpoint names (chunks an import or a release replaced)
    // stay until it is pruned, so that recovery could still fall back to it; new chunks are
    // numbered above them.
    let mut retired = Vec::new();
    if let Some((m, _)) = &chosen {
        for (file, (table, partition, bucket, seq)) in
            crate::checkpoint::files_named_by_kept(&dir, Some(m.id)).unwrap_or_default()
        {
            let path = dir.join(&file);
            if referenced.contains(&path) || !path.is_file() {
                continue;
            }
            // A dropped table's files are of no use to any checkpoint (recovery skips its
            // chunks): they go now, before a new table of the same name numbers its own.
            let Some(part) = by_id
                .get(&table)
                .and_then(|t| t.partitions.get(partition as usize))
            else {
                continue;
            };
            part.write().retire_number(bucket, seq);
            referenced.insert(path);
            retired.push(file);
        }
    }
    // Files no kept checkpoint names were flushed after the chosen one: their rows come back
    // from the WAL. When recovery had to fall back past an unusable newer checkpoint, they
    // are moved aside instead (that checkpoint may have been their only reference).
    let orphans = fell_back.then(|| dir.join("hdb-orphans"));
    remove_unreferenced_hdb(&dir.join("hdb"), &referenced, orphans.as_deref())?;
    // Partition imports that never committed: their staged files are of no use.
    super::transfer::remove_staging(&dir)?;

    // 2. WAL replay.
    let wal_dir = dir.join("wal");
    create_dir_durable(&wal_dir)?;
    let recycle = collect_recycled(&wal_dir)?;
    let checkpoint_seq = next_seq.clone();
    let width = config.chunk_duration_ns;
    let outcome = replay(&wal_dir, from, |meta, payload, pos| {
        let p = meta.partition as usize;
        let corrupt = |reason: String| Error::Corrupt {
            path: segment_path(&wal_dir, pos.segment),
            offset: pos.offset,
            reason,
        };
        if p >= partitions as usize {
            return Err(corrupt(format!("record for partition {p} of {partitions}")));
        }
        if meta.seq < checkpoint_seq[p] {
            return Ok(()); // already in the checkpoint
        }
        next_seq[p] = next_seq[p].max(meta.seq + 1);
        epochs[p] = epochs[p].max(meta.epoch);
        if last_epoch[p] != meta.epoch {
            epoch_start[p] = meta.seq;
        }
        last_epoch[p] = meta.epoch;
        let Some(t) = payload_table_id(payload).and_then(|id| by_id.get(&id)) else {
            return Ok(()); // a table dropped since
        };
        let (_, batch) = decode_rows(payload, &t.types, &t.arrow_schema).map_err(corrupt)?;
        let mut next_id = || next_chunk_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        t.append(meta.partition, &batch, width, now, &mut next_id)?;
        info.rows += batch.num_rows() as u64;
        Ok(())
    })?;
    info.wal_records_replayed = outcome.records;
    info.wal_bytes_replayed = outcome.bytes;
    if let Some(d) = &outcome.damage {
        let msg = format!("{} at offset {}: {}", d.path.display(), d.offset, d.reason);
        if d.torn_tail {
            tracing::info!(segment = d.segment, offset = d.offset, reason = %d.reason, "WAL ends with a torn or stale tail; truncated there");
        } else {
            tracing::error!(segment = d.segment, offset = d.offset, reason = %d.reason, discarded = ?outcome.discarded_segments, "WAL is damaged: keeping every record before the damage; damaged files kept as *.wal.damaged");
        }
        info.wal_damage = Some(msg);
    }
    let next_segment = repair(&wal_dir, &outcome)?;
    let wal_stats = Arc::new(WalStats::default());
    let recycle = Arc::new(Mutex::new(recycle));
    let wal = WalWriter::create(
        &wal_dir,
        next_segment,
        config.wal_segment_bytes,
        faults.clone(),
        wal_stats.clone(),
        recycle.clone(),
    )?;
    info.tables = tables.len();
    info.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        checkpoint = ?info.checkpoint_id,
        wal_records = info.wal_records_replayed,
        rows = info.rows,
        ms = info.duration_ms as u64,
        "recovered data directory {}",
        dir.display()
    );
    let shared = Arc::new(Shared {
        config: config.clone(),
        dir,
        faults,
        catalog: Mutex::new(catalog),
        tables: RwLock::new(tables),
        wal_stats,
        recycle,
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        poisoned: Mutex::new(None),
        next_chunk_id,
        next_checkpoint_id: AtomicU64::new(next_checkpoint_id),
        checkpoint_lock: Mutex::new(HashMap::new()),
        flush_lock: Mutex::new(()),
        last_checkpoint: Mutex::new(None),
        last_checkpoint_ms: AtomicU64::new(now),
        writer_busy_since: AtomicU64::new(0),
        wal_position: Mutex::new(wal.position()),
        counters: Counters::default(),
        stop: AtomicBool::new(false),
        wake: (Mutex::new(false), Condvar::new()),
        scrub_wake: (Mutex::new(()), Condvar::new()),
        recovery: Mutex::new(info),
        epochs: epochs.into_iter().map(AtomicU64::new).collect(),
        next_seq: next_seq.iter().map(|&s| AtomicU64::new(s)).collect(),
        last_epochs: last_epoch.iter().map(|&s| AtomicU64::new(s)).collect(),
        epoch_starts: epoch_start.iter().map(|&s| AtomicU64::new(s)).collect(),
        commit_listener: RwLock::new(None),
        importing: (0..partitions)
            .map(|_| std::sync::atomic::AtomicU8::new(super::IMPORT_IDLE))
            .collect(),
        wal_floors: Mutex::new(wal_floors),
        retired: Mutex::new(retired),
    });
    Ok(Recovered {
        shared,
        wal,
        next_seq: super::writer::Sequences {
            next: next_seq,
            last_epoch,
            epoch_start,
        },
    })
}

/// The memory chunks checkpoint `cdir` saved for tables that still exist, by file name, read
/// and checked against their checksums: one that fails makes the checkpoint unusable.
fn read_memory_chunks(
    cdir: &Path,
    m: &Manifest,
    live: &HashMap<u32, Arc<TableData>>,
) -> Result<HashMap<String, Vec<RecordBatch>>> {
    let mut out = HashMap::new();
    for mt in m.tables.iter().filter(|t| live.contains_key(&t.id)) {
        for c in mt.chunks.iter().filter(|c| c.kind == ChunkKind::Memory) {
            let batches = crate::hdb::read_ipc_file_checked(&cdir.join(&c.file))?;
            out.insert(c.file.clone(), batches);
        }
    }
    Ok(out)
}

/// Remove HDB files (and temp files) the checkpoint does not reference: they were written
/// after it, and WAL replay brings their rows back into memory.
fn remove_unreferenced_hdb(
    root: &Path,
    keep: &HashSet<PathBuf>,
    aside: Option<&Path>,
) -> Result<()> {
    if !root.is_dir() {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).ctx(|| format!("list {}", d.display()))? {
            let entry = entry.ctx(|| format!("list {}", d.display()))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !keep.contains(&path) {
                match aside {
                    Some(to) => {
                        let rel = path.strip_prefix(root).unwrap_or(&path);
                        let target = to.join(rel);
                        if let Some(parent) = target.parent() {
                            fs::create_dir_all(parent)
                                .ctx(|| format!("create {}", parent.display()))?;
                        }
                        tracing::warn!(path = %path.display(), to = %target.display(), "moving an HDB file no usable checkpoint names aside");
                        fs::rename(&path, &target)
                            .ctx(|| format!("move {} aside", path.display()))?;
                    }
                    None => {
                        tracing::debug!(path = %path.display(), "removing HDB file written after the checkpoint");
                        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Obsolete segments left in the reuse pool by a previous run.
fn collect_recycled(wal_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(wal_dir).ctx(|| format!("list {}", wal_dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", wal_dir.display()))?;
        if entry.path().extension().is_some_and(|e| e == "recycle") {
            out.push(entry.path());
        }
    }
    Ok(out)
}
