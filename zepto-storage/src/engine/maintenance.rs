//! The maintenance thread: compaction of small pieces, sealing and flushing chunks to HDB,
//! the memory limit, and periodic checkpoints. None of it is on the write path.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::batch::{concat_batches, sort_by_ts};
use crate::checkpoint::{prune_checkpoints, write_checkpoint, CheckpointInfo};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::hdb::{chunk_rel_path, write_chunk_file, DiskChunk};
use crate::ingest::{Request, Ring};
use crate::rdb::{
    merge_run, plan_compaction, Chunk, MemChunk, Piece, TableData, COMPACT_TRIGGER_PIECES, QUIET_MS,
};
use crate::wal::obsolete_segments;

/// How many obsolete WAL segments are kept for reuse.
const RECYCLE_POOL: usize = 2;

pub(super) fn run(shared: Arc<Shared>, ring: Ring) {
    loop {
        {
            let (lock, cv) = &shared.wake;
            let mut woken = lock.lock();
            if !*woken && !shared.stop.load(Ordering::Acquire) {
                cv.wait_for(&mut woken, shared.config.maintenance_interval);
            }
            *woken = false;
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if let Err(e) = compact(&shared) {
            tracing::warn!(error = %e, "compaction failed");
        }
        if let Err(e) = seal_and_flush(&shared, false) {
            tracing::warn!(error = %e, "flushing chunks to HDB failed; will retry");
        }
        if let Some(every) = shared.config.checkpoint_interval {
            let age = shared
                .now_ms()
                .saturating_sub(shared.last_checkpoint_ms.load(Ordering::Relaxed));
            if age >= every.as_millis() as u64 {
                match checkpoint(&shared, &ring) {
                    Ok(info) => tracing::debug!(
                        id = info.id,
                        ms = info.duration.as_millis() as u64,
                        "checkpoint"
                    ),
                    Err(Error::Shutdown) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "automatic checkpoint failed; will retry");
                        // Do not retry in a tight loop.
                        shared
                            .last_checkpoint_ms
                            .store(shared.now_ms(), Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn tables(shared: &Shared) -> Vec<Arc<TableData>> {
    shared.tables.read().values().cloned().collect()
}

/// No append for [`QUIET_MS`] (and not sealed: a sealed chunk goes to HDB, which merges).
fn quiet(m: &MemChunk, now_ms: u64) -> bool {
    !m.sealed && now_ms.saturating_sub(m.last_write_ms) >= QUIET_MS
}

/// Merge small pieces of memory chunks that have many, or a few once nothing is written
/// to the chunk any more.
fn compact(shared: &Shared) -> Result<()> {
    for t in tables(shared) {
        let ts_col = t.ts_col();
        for part in &t.partitions {
            let now = shared.now_ms();
            // Plan under the read lock from piece metadata; copy out only the pieces of
            // the runs to merge (not every chunk's whole piece list, every pass).
            type Todo = (u64, usize, Vec<(Range<usize>, Vec<Piece>)>);
            let todo: Vec<Todo> = part
                .read()
                .chunks
                .iter()
                .filter_map(|c| match c {
                    Chunk::Mem(m) if m.pieces.len() >= 2 => {
                        let quiet = quiet(m, now);
                        if m.pieces.len() < COMPACT_TRIGGER_PIECES && !quiet {
                            return None;
                        }
                        let runs = plan_compaction(&m.pieces, quiet);
                        (!runs.is_empty()).then(|| {
                            let runs = runs
                                .into_iter()
                                .map(|r| (r.clone(), m.pieces[r].to_vec()))
                                .collect();
                            (m.id, m.pieces.len(), runs)
                        })
                    }
                    _ => None,
                })
                .collect();
            for (id, n, runs) in todo {
                let mut merged = Vec::with_capacity(runs.len());
                for (r, pieces) in runs {
                    merged.push((r, merge_run(&pieces, ts_col)?));
                }
                let mut guard = part.write();
                // Only the writer touches chunks meanwhile, and it only appends.
                if let Some(Chunk::Mem(m)) = guard
                    .chunks
                    .iter_mut()
                    .find(|c| matches!(c, Chunk::Mem(m) if m.id == id))
                {
                    if m.pieces.len() >= n {
                        m.replace_runs(n, merged);
                        shared.counters.compactions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Seal chunks that are full, idle, or (with `all`) every one, then write each sealed
/// chunk to HDB. Returns the number flushed.
pub(super) fn seal_and_flush(shared: &Shared, all: bool) -> Result<usize> {
    let _one_flusher = shared.flush_lock.lock();
    let now = shared.now_ms();
    let idle = shared.config.seal_idle.as_millis() as u64;
    let over_memory = !all && memory_bytes(shared) > shared.config.max_memory_bytes;
    let mut oldest: Option<(u64, u32, usize, u64)> = None; // (last_write, table id, partition, chunk id)
    let mut flushed = 0;
    for t in tables(shared) {
        for (p, part) in t.partitions.iter().enumerate() {
            let due = |m: &crate::rdb::MemChunk| {
                !m.sealed
                    && m.rows > 0
                    && (all
                        || m.rows >= shared.config.max_chunk_rows
                        || now.saturating_sub(m.last_write_ms) >= idle)
            };
            let any = part.read().chunks.iter().any(|c| match c {
                Chunk::Mem(m) => m.sealed || due(m) || over_memory,
                Chunk::Disk(_) => false,
            });
            if !any {
                continue;
            }
            let sealed: Vec<(u64, i64, u32, Vec<Piece>, i64, i64)> = {
                let mut guard = part.write();
                for c in guard.chunks.iter_mut() {
                    if let Chunk::Mem(m) = c {
                        if due(m) {
                            m.sealed = true;
                        }
                        if over_memory && !m.sealed && oldest.is_none_or(|o| m.last_write_ms < o.0)
                        {
                            oldest = Some((m.last_write_ms, t.id, p, m.id));
                        }
                    }
                }
                guard
                    .chunks
                    .iter()
                    .filter_map(|c| match c {
                        Chunk::Mem(m) if m.sealed => {
                            Some((m.id, m.bucket, m.seq, m.pieces.clone(), m.min, m.max))
                        }
                        _ => None,
                    })
                    .collect()
            };
            for (id, bucket, seq, pieces, min, max) in sealed {
                flush_chunk(shared, &t, p as u32, id, bucket, seq, &pieces, min, max)?;
                flushed += 1;
            }
        }
    }
    if let Some((_, table_id, p, id)) = oldest {
        // Over the memory limit: seal the least recently written chunk; the next round
        // flushes it (and the next oldest, until under the limit).
        if let Some(t) = shared.table_by_id(table_id) {
            if let Some(Chunk::Mem(m)) = t.partitions[p]
                .write()
                .chunks
                .iter_mut()
                .find(|c| matches!(c, Chunk::Mem(m) if m.id == id))
            {
                m.sealed = true;
            }
            shared.wake_maintenance();
        }
    }
    Ok(flushed)
}

fn memory_bytes(shared: &Shared) -> usize {
    tables(shared)
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            p.read()
                .chunks
                .iter()
                .map(|c| match c {
                    Chunk::Mem(m) => m.bytes,
                    Chunk::Disk(_) => 0,
                })
                .sum::<usize>()
        })
        .sum()
}

#[allow(clippy::too_many_arguments)]
fn flush_chunk(
    shared: &Shared,
    t: &TableData,
    p: u32,
    id: u64,
    bucket: i64,
    seq: u32,
    pieces: &[Piece],
    min: i64,
    max: i64,
) -> Result<()> {
    let batches: Vec<_> = pieces.iter().map(|p| p.batch.clone()).collect();
    let batch = sort_by_ts(concat_batches(&batches)?, t.ts_col())?;
    let rel = chunk_rel_path(&t.schema.name, p, bucket, seq);
    write_chunk_file(&shared.dir, &rel, &batch, min, max, &shared.faults)?;
    let disk = Arc::new(DiskChunk::open(&shared.dir, &rel, &t.schema, bucket, seq)?.written_here());
    let mut guard = t.partitions[p as usize].write();
    if let Some(c) = guard
        .chunks
        .iter_mut()
        .find(|c| matches!(c, Chunk::Mem(m) if m.id == id))
    {
        *c = Chunk::Disk(disk);
        shared.counters.flushes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Seal and flush everything in memory.
pub(super) fn flush_all(shared: &Shared) -> Result<usize> {
    seal_and_flush(shared, true)
}

/// Take a checkpoint: a cut from the writer, written out here, then old checkpoints and
/// the WAL they alone needed are removed (WAL segments are kept for reuse).
pub(super) fn checkpoint(shared: &Shared, ring: &Ring) -> Result<CheckpointInfo> {
    let mut links = shared.checkpoint_lock.lock();
    // A std-style channel: safe to wait on from any thread, async runtime or not.
    let (tx, rx) = crossbeam_channel::bounded(1);
    ring.send_control(Request::Capture(tx))?;
    let capture = rx.recv().map_err(|_| Error::Shutdown)?;
    write_out(shared, &mut links, &capture)
}

/// Write a checkpoint from a cut (the caller holds `checkpoint_lock`, passed as `links`),
/// then remove old checkpoints and the WAL they alone needed.
pub(super) fn write_out(
    shared: &Shared,
    links: &mut crate::checkpoint::LinkCache,
    capture: &crate::checkpoint::Capture,
) -> Result<CheckpointInfo> {
    let id = shared.next_checkpoint_id.fetch_add(1, Ordering::Relaxed);
    let (_, info) = write_checkpoint(&shared.dir, id, capture, &shared.faults, links)?;
    shared.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
    *shared.last_checkpoint.lock() = Some(info.clone());
    shared
        .last_checkpoint_ms
        .store(shared.now_ms(), Ordering::Relaxed);
    if let Some(keep_from) = prune_checkpoints(&shared.dir)? {
        recycle_wal(shared, keep_from)?;
    }
    delete_retired(shared);
    shared.faults.check("checkpoint::after_cleanup")?;
    Ok(info)
}

/// Delete the retired HDB files no kept checkpoint names any more (the caller holds the
/// checkpoint lock, so no checkpoint is being written). A file that cannot be deleted now
/// goes at the next start, as a file no checkpoint names.
fn delete_retired(shared: &Shared) {
    let mut retired = shared.retired.lock();
    if retired.is_empty() {
        return;
    }
    let Some(named) = crate::checkpoint::files_named_by_kept(&shared.dir, None) else {
        return; // a kept manifest did not read: keep everything, try at the next checkpoint
    };
    let (gone, kept): (Vec<String>, Vec<String>) =
        retired.drain(..).partition(|f| !named.contains_key(f));
    *retired = kept;
    drop(retired);
    let mut bytes = 0u64;
    for rel in &gone {
        let path = shared.dir.join(rel);
        bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a replaced HDB file; it is deleted at the next start");
            }
        }
    }
    if !gone.is_empty() {
        tracing::info!(
            files = gone.len(),
            bytes,
            "deleted HDB files of replaced or released partitions"
        );
    }
}

fn recycle_wal(shared: &Shared, keep_from: crate::wal::WalPosition) -> Result<()> {
    let wal_dir = shared.dir.join("wal");
    for (id, path) in obsolete_segments(&wal_dir, keep_from)? {
        let mut pool = shared.recycle.lock();
        if pool.len() < RECYCLE_POOL {
            let to: PathBuf = wal_dir.join(format!("{id:08}.recycle"));
            std::fs::rename(&path, &to)
                .map_err(|e| Error::io(format!("move {} to the reuse pool", path.display()), e))?;
            pool.push(to);
        } else {
            std::fs::remove_file(&path)
                .map_err(|e| Error::io(format!("remove obsolete {}", path.display()), e))?;
        }
    }
    crate::fsutil::fsync_dir(&wal_dir)
}
