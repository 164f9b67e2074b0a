//! RDB: the in-memory part of every table, per partition a list of time-bucket chunks.
//!
//! Hot path (the WAL writer appends here after every group commit): an append pushes an
//! immutable Arrow batch (no copy), so a scan can hand out the same buffers without copying
//! and without holding a lock while it reads. Many small appends leave many small pieces;
//! the maintenance thread merges them in the background ([`compact_pieces`]), off the
//! writer's path. A chunk stops taking rows when it is sealed; it is then sorted by time
//! and flushed to an HDB file, and the file replaces it in the list.
//!
//! Out-of-order rows are kept where they arrive; every piece knows whether it is in time
//! order, scans filter unsorted pieces instead of binary searching them, and flushing sorts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::UInt32Array;
use arrow::buffer::BooleanBuffer;
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use parking_lot::RwLock;

use crate::batch::{concat_batches, sort_by_ts, timestamps, ts_stats};
use crate::error::Result;
use crate::hdb::DiskChunk;
use crate::scan::{ChunkSource, ScanChunk, TimeRange};
use crate::schema::{ColumnType, TableSchema};

/// Pieces smaller than this are merged by compaction.
pub(crate) const COMPACT_TARGET_ROWS: usize = 64 * 1024;
/// How many pieces of one size class are merged into one.
pub(crate) const COMPACT_FANOUT: usize = 8;
/// A chunk asks for compaction when its piece count reaches a multiple of the fan-out
/// at or above this.
pub(crate) const COMPACT_TRIGGER_PIECES: usize = 2 * COMPACT_FANOUT;

/// One immutable batch of rows inside a memory chunk, with its timestamp statistics.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub(crate) batch: RecordBatch,
    pub(crate) min: i64,
    pub(crate) max: i64,
    pub(crate) sorted: bool,
}

impl Piece {
    pub(crate) fn new(batch: RecordBatch, ts_col: usize) -> Option<Piece> {
        let (min, max, sorted) = ts_stats(timestamps(&batch, ts_col))?;
        Some(Piece {
            batch,
            min,
            max,
            sorted,
        })
    }
}

/// A chunk that lives in memory.
#[derive(Debug, Clone)]
pub(crate) struct MemChunk {
    /// Unique in this process, so background work can find the chunk again.
    pub(crate) id: u64,
    pub(crate) bucket: i64,
    pub(crate) seq: u32,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
    pub(crate) min: i64,
    pub(crate) max: i64,
    /// All pieces, in order, are in time order.
    pub(crate) sorted: bool,
    /// Takes no more rows; waiting for (or being) flushed.
    pub(crate) sealed: bool,
    /// Engine clock (ms) of the last append.
    pub(crate) last_write_ms: u64,
}

impl MemChunk {
    fn new(id: u64, bucket: i64, seq: u32, now_ms: u64) -> MemChunk {
        MemChunk {
            id,
            bucket,
            seq,
            pieces: Vec::new(),
            rows: 0,
            bytes: 0,
            min: i64::MAX,
            max: i64::MIN,
            sorted: true,
            sealed: false,
            last_write_ms: now_ms,
        }
    }

    /// A chunk rebuilt from batches saved in a checkpoint.
    pub(crate) fn restore(
        id: u64,
        bucket: i64,
        seq: u32,
        batches: Vec<RecordBatch>,
        ts_col: usize,
        now_ms: u64,
    ) -> MemChunk {
        let mut m = MemChunk::new(id, bucket, seq, now_ms);
        for b in batches {
            if let Some(p) = Piece::new(b, ts_col) {
                m.push(p, now_ms);
            }
        }
        m
    }

    /// Replace runs of pieces by their merged piece (the same rows, compacted). The runs
    /// are ascending, disjoint ranges within the first `n` pieces, planned when the chunk
    /// had `n` pieces: appends since then only added pieces after them.
    pub(crate) fn replace_runs(&mut self, n: usize, merged: Vec<(Range<usize>, Option<Piece>)>) {
        let rest = self.pieces.split_off(n.min(self.pieces.len()));
        let old = std::mem::take(&mut self.pieces);
        let mut runs = merged.into_iter().peekable();
        for (i, p) in old.into_iter().enumerate() {
            // Runs wholly before `i` are done (a run past the prefix never matches).
            while runs.peek().is_some_and(|(r, _)| r.end <= i) {
                runs.next();
            }
            match runs.peek_mut() {
                Some((r, m)) if r.contains(&i) => {
                    if let Some(m) = m.take() {
                        self.pieces.push(m);
                    }
                }
                _ => self.pieces.push(p),
            }
        }
        self.pieces.extend(rest);
        self.bytes = self
            .pieces
            .iter()
            .map(|p| p.batch.get_array_memory_size())
            .sum();
        self.sorted = self.pieces.iter().all(|p| p.sorted)
            && self.pieces.windows(2).all(|w| w[1].min >= w[0].max);
    }

    fn push(&mut self, piece: Piece, now_ms: u64) {
        self.sorted &= piece.sorted && (self.pieces.is_empty() || piece.min >= self.max);
        self.min = self.min.min(piece.min);
        self.max = self.max.max(piece.max);
        self.rows += piece.batch.num_rows();
        self.bytes += piece.batch.get_array_memory_size();
        self.pieces.push(piece);
        self.last_write_ms = now_ms;
    }
}

/// A chunk of a partition: in memory or in an HDB file.
#[derive(Debug, Clone)]
pub(crate) enum Chunk {
    Mem(MemChunk),
    Disk(Arc<DiskChunk>),
}

impl Chunk {
    pub(crate) fn key(&self) -> (i64, u32) {
        match self {
            Chunk::Mem(m) => (m.bucket, m.seq),
            Chunk::Disk(d) => (d.bucket, d.seq),
        }
    }
    pub(crate) fn min_max(&self) -> (i64, i64) {
        match self {
            Chunk::Mem(m) => (m.min, m.max),
            Chunk::Disk(d) => (d.min, d.max),
        }
    }
}

/// The chunks of one partition of one table, ordered by (bucket, seq).
#[derive(Debug, Default)]
pub(crate) struct PartitionData {
    pub(crate) chunks: Vec<Chunk>,
    /// Per time bucket: the first chunk number above every chunk an import or a release
    /// took out of the partition. Their files may still be on disk (a kept checkpoint names
    /// them until they are deleted), so a new chunk never reuses their numbers: its file
    /// would be overwritten by, or deleted as, the retired one.
    retired_below: HashMap<i64, u32>,
}

impl PartitionData {
    /// Insert a chunk at its place in (bucket, seq) order.
    pub(crate) fn insert(&mut self, chunk: Chunk) {
        let key = chunk.key();
        let at = self.chunks.partition_point(|c| c.key() < key);
        self.chunks.insert(at, chunk);
    }

    fn next_seq(&self, bucket: i64) -> u32 {
        self.chunks
            .iter()
            .filter(|c| c.key().0 == bucket)
            .map(|c| c.key().1 + 1)
            .chain(self.retired_below.get(&bucket).copied())
            .max()
            .unwrap_or(0)
    }

    /// Take every chunk out (an import or a release replaces them); returns them. New chunks
    /// are numbered above them from now on.
    pub(crate) fn take_all(&mut self) -> Vec<Chunk> {
        let chunks = std::mem::take(&mut self.chunks);
        for c in &chunks {
            let (bucket, seq) = c.key();
            self.retire_number(bucket, seq);
        }
        chunks
    }

    /// Chunk number `seq` of `bucket` belongs to a retired file: never give it out again.
    pub(crate) fn retire_number(&mut self, bucket: i64, seq: u32) {
        let e = self.retired_below.entry(bucket).or_insert(0);
        *e = (*e).max(seq.saturating_add(1));
    }
}

/// Everything the engine keeps in memory for one table.
#[derive(Debug)]
pub(crate) struct TableData {
    pub(crate) id: u32,
    pub(crate) schema: Arc<TableSchema>,
    pub(crate) arrow_schema: SchemaRef,
    pub(crate) types: Vec<ColumnType>,
    pub(crate) partitions: Vec<RwLock<PartitionData>>,
}

impl TableData {
    pub(crate) fn new(id: u32, schema: Arc<TableSchema>, partitions: u32) -> TableData {
        TableData {
            id,
            arrow_schema: schema.arrow_schema(),
            types: schema.columns.iter().map(|c| c.ty).collect(),
            schema,
            partitions: (0..partitions).map(|_| RwLock::default()).collect(),
        }
    }

    pub(crate) fn ts_col(&self) -> usize {
        self.schema.timestamp
    }

    /// Append rows (already in the table's types, all of partition `p`) to the right
    /// chunks. Returns true when a chunk now wants compaction.
    pub(crate) fn append(
        &self,
        p: u32,
        batch: &RecordBatch,
        bucket_width: i64,
        now_ms: u64,
        next_chunk_id: &mut dyn FnMut() -> u64,
    ) -> Result<bool> {
        let Some(part) = self.partitions.get(p as usize) else {
            return Err(crate::Error::Internal(format!(
                "partition {p} out of range"
            )));
        };
        let mut wants_compaction = false;
        let by_bucket = split_by_bucket(batch, self.ts_col(), bucket_width)?;
        let mut part = part.write();
        for (bucket, rows) in by_bucket {
            let Some(piece) = Piece::new(rows, self.ts_col()) else {
                continue;
            };
            let open = part
                .chunks
                .iter()
                .rposition(|c| matches!(c, Chunk::Mem(m) if m.bucket == bucket && !m.sealed));
            let idx = match open {
                Some(i) => i,
                None => {
                    let seq = part.next_seq(bucket);
                    let chunk = MemChunk::new(next_chunk_id(), bucket, seq, now_ms);
                    part.insert(Chunk::Mem(chunk));
                    part.chunks
                        .iter()
                        .position(|c| c.key() == (bucket, seq))
                        .ok_or_else(|| crate::Error::Internal("chunk vanished".into()))?
                }
            };
            if let Chunk::Mem(m) = &mut part.chunks[idx] {
                m.push(piece, now_ms);
                let n = m.pieces.len();
                wants_compaction |= n >= COMPACT_TRIGGER_PIECES && n % COMPACT_FANOUT == 0;
            }
        }
        Ok(wants_compaction)
    }

    /// How many rows of partition `p` lie inside `range`: `(rows, chunks with rows)`. An
    /// HDB chunk inside the range counts from its metadata; one the range cuts reads its
    /// timestamps, outside the partition's lock (the first read checks the file).
    pub(crate) fn count_partition(
        &self,
        p: u32,
        range: &TimeRange,
        chunks_total: &mut u64,
    ) -> Result<(u64, u64)> {
        let Some(part) = self.partitions.get(p as usize) else {
            return Ok((0, 0));
        };
        let ts = self.ts_col();
        let (mut rows, mut chunks) = (0, 0);
        let mut add = |n: u64| {
            if n > 0 {
                rows += n;
                chunks += 1;
            }
        };
        let mut cut_files = Vec::new();
        {
            let part = part.read();
            *chunks_total += part.chunks.len() as u64;
            for c in &part.chunks {
                let (min, max) = c.min_max();
                if !range.overlaps(min, max) {
                    continue;
                }
                match c {
                    Chunk::Mem(m) => add(m.pieces.iter().map(|pc| count_in(pc, range, ts)).sum()),
                    Chunk::Disk(d) if range.covers(min, max) => add(d.rows),
                    Chunk::Disk(d) => cut_files.push(Arc::clone(d)),
                }
            }
        }
        for d in cut_files {
            add(d.pieces()?.iter().map(|pc| count_in(pc, range, ts)).sum());
        }
        Ok((rows, chunks))
    }

    /// The rows of partition `p` inside `range`, projected to `columns`.
    pub(crate) fn scan_partition(
        &self,
        p: u32,
        range: &TimeRange,
        columns: &[usize],
        projected: &SchemaRef,
        chunks_total: &mut u64,
    ) -> Result<Vec<ScanChunk>> {
        let Some(part) = self.partitions.get(p as usize) else {
            return Ok(Vec::new());
        };
        // Take the chunk list under the lock (Arc clones), read outside it.
        let selected: Vec<Chunk> = {
            let part = part.read();
            *chunks_total += part.chunks.len() as u64;
            part.chunks
                .iter()
                .filter(|c| {
                    let (min, max) = c.min_max();
                    range.overlaps(min, max)
                })
                .cloned()
                .collect()
        };
        let ts = self.ts_col();
        let identity = columns.len() == self.schema.columns.len()
            && columns.iter().enumerate().all(|(i, &c)| i == c);
        let mut out = Vec::with_capacity(selected.len());
        for chunk in selected {
            let (source, bucket, min, max, sorted, pieces): (_, _, _, _, _, Vec<Piece>) =
                match chunk {
                    Chunk::Mem(m) => (
                        ChunkSource::Memory,
                        m.bucket,
                        m.min,
                        m.max,
                        m.sorted,
                        m.pieces,
                    ),
                    Chunk::Disk(d) => (
                        ChunkSource::Disk,
                        d.bucket,
                        d.min,
                        d.max,
                        true,
                        d.pieces()?.to_vec(),
                    ),
                };
            let mut batches = Vec::with_capacity(pieces.len());
            for piece in &pieces {
                if let Some(b) = restrict(piece, range, ts)? {
                    batches.push(if identity {
                        b
                    } else {
                        project_to(&b, columns, projected)?
                    });
                }
            }
            if !batches.is_empty() {
                out.push(ScanChunk {
                    partition: p,
                    bucket_start: bucket,
                    min_ts: min,
                    max_ts: max,
                    sorted,
                    source,
                    batches,
                });
            }
        }
        Ok(out)
    }
}

/// `columns` of `b` as a batch of `projected` (the scan's schema, built once per scan):
/// `RecordBatch::project` would build a new schema for every piece of every chunk. A piece
/// whose columns do not fit that schema (none should) is projected the slow way.
fn project_to(b: &RecordBatch, columns: &[usize], projected: &SchemaRef) -> Result<RecordBatch> {
    let cols = columns.iter().map(|&c| Arc::clone(b.column(c))).collect();
    let opts = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
    match RecordBatch::try_new_with_options(Arc::clone(projected), cols, &opts) {
        Ok(batch) => Ok(batch),
        Err(_) => Ok(b.project(columns)?),
    }
}

/// How many rows of a piece lie inside `range`, without building any batch.
fn count_in(piece: &Piece, range: &TimeRange, ts_col: usize) -> u64 {
    if !range.overlaps(piece.min, piece.max) {
        return 0;
    }
    if range.covers(piece.min, piece.max) {
        return piece.batch.num_rows() as u64;
    }
    let ts = timestamps(&piece.batch, ts_col);
    if piece.sorted {
        let lo = ts.partition_point(|&t| t < range.start);
        let hi = ts.partition_point(|&t| t < range.end);
        return (hi - lo) as u64;
    }
    ts.iter().filter(|&&t| range.contains(t)).count() as u64
}

/// The rows of a piece inside `range`: the whole batch, a zero-copy slice found by binary
/// search when the piece is sorted, or a filtered copy when it is not.
fn restrict(piece: &Piece, range: &TimeRange, ts_col: usize) -> Result<Option<RecordBatch>> {
    if !range.overlaps(piece.min, piece.max) {
        return Ok(None);
    }
    if range.covers(piece.min, piece.max) {
        return Ok(Some(piece.batch.clone()));
    }
    let ts = timestamps(&piece.batch, ts_col);
    if piece.sorted {
        let lo = ts.partition_point(|&t| t < range.start);
        let hi = ts.partition_point(|&t| t < range.end);
        return Ok((hi > lo).then(|| piece.batch.slice(lo, hi - lo)));
    }
    let mask = BooleanBuffer::collect_bool(ts.len(), |i| range.contains(ts[i]));
    let b = filter_record_batch(&piece.batch, &mask.into())?;
    Ok((b.num_rows() > 0).then_some(b))
}

/// Split a batch by time bucket: slices when it is in time order, `take` otherwise.
pub(crate) fn split_by_bucket(
    batch: &RecordBatch,
    ts_col: usize,
    width: i64,
) -> Result<Vec<(i64, RecordBatch)>> {
    let ts = timestamps(batch, ts_col);
    let bucket = |t: i64| t.div_euclid(width) * width;
    let Some((min, max, sorted)) = ts_stats(ts) else {
        return Ok(Vec::new());
    };
    if bucket(min) == bucket(max) {
        return Ok(vec![(bucket(min), batch.clone())]);
    }
    if sorted {
        let mut out = Vec::new();
        let mut start = 0;
        while start < ts.len() {
            let b = bucket(ts[start]);
            let end = start + ts[start..].partition_point(|&t| bucket(t) == b);
            out.push((b, batch.slice(start, end - start)));
            start = end;
        }
        return Ok(out);
    }
    let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, &t) in ts.iter().enumerate() {
        groups.entry(bucket(t)).or_default().push(i as u32);
    }
    groups
        .into_iter()
        .map(|(b, idx)| Ok((b, take_record_batch(batch, &UInt32Array::from(idx))?)))
        .collect()
}

/// Size class of a piece: pieces of one class are merged together, 8 at a time, so a row
/// is copied about log8(target / first piece size) times in all, never once per append.
fn level(rows: usize) -> u32 {
    rows.max(1).ilog(COMPACT_FANOUT)
}

/// The runs of a chunk's pieces that compaction merges, one merged piece each: at least
/// [`COMPACT_FANOUT`] consecutive pieces of the same size class, up to
/// [`COMPACT_TARGET_ROWS`] rows; if there is none and the chunk is `quiet` (no append for
/// [`QUIET_MS`]), every two or more consecutive small pieces (see [`quiet_runs`]). Reads only
/// piece metadata, so the maintenance thread plans under the partition's read lock and
/// copies out only the pieces it merges.
pub(crate) fn plan_compaction(pieces: &[Piece], quiet: bool) -> Vec<Range<usize>> {
    let runs = level_runs(pieces);
    if runs.is_empty() && quiet {
        return quiet_runs(pieces);
    }
    runs
}

/// A chunk with no append for this long is quiet.
pub(crate) const QUIET_MS: u64 = 1_000;
/// Pieces below this many rows are "small" for [`quiet_runs`].
const QUIET_SMALL_ROWS: usize = COMPACT_TARGET_ROWS / COMPACT_FANOUT;

/// Runs of two or more consecutive pieces of fewer than [`QUIET_SMALL_ROWS`] rows each, up
/// to [`COMPACT_TARGET_ROWS`] rows. A bulk load leaves chunks of a few hundred-row pieces,
/// fewer than the level rule ever merges, and every scan paid for each; once nothing is
/// written there they are merged once. Only small pieces take part, so a slow trickle of
/// appends re-copies at most a small piece per merge, never a big one.
fn quiet_runs(pieces: &[Piece]) -> Vec<Range<usize>> {
    let small = |p: &Piece| p.batch.num_rows() < QUIET_SMALL_ROWS;
    let mut runs = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        if !small(&pieces[i]) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut total = pieces[i].batch.num_rows();
        while j < pieces.len()
            && small(&pieces[j])
            && total + pieces[j].batch.num_rows() <= COMPACT_TARGET_ROWS
        {
            total += pieces[j].batch.num_rows();
            j += 1;
        }
        if j - i >= 2 {
            runs.push(i..j);
        }
        i = j;
    }
    runs
}

/// The runs of the size-class rule (see [`plan_compaction`]).
fn level_runs(pieces: &[Piece]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let rows = pieces[i].batch.num_rows();
        let lvl = level(rows);
        // The longest run from i of the same class that fits in one target-sized piece.
        let mut j = i + 1;
        let mut total = rows;
        while j < pieces.len()
            && rows < COMPACT_TARGET_ROWS
            && level(pieces[j].batch.num_rows()) == lvl
            && total + pieces[j].batch.num_rows() <= COMPACT_TARGET_ROWS
        {
            total += pieces[j].batch.num_rows();
            j += 1;
        }
        if j - i >= COMPACT_FANOUT {
            runs.push(i..j);
            i = j;
        } else {
            i += 1;
        }
    }
    runs
}

/// Merge the pieces of one run into one piece sorted by time (`None` if they hold no row).
///
/// Sorted pieces that do not overlap in time, the usual shape of a stream written by several
/// clients at once (each batch in order, batches arriving slightly out of order), are
/// concatenated in time order without sorting a row. Otherwise the concatenation is sorted;
/// either way rows with equal timestamps keep their arrival order, as a stable sort would.
pub(crate) fn merge_run(pieces: &[Piece], ts_col: usize) -> Result<Option<Piece>> {
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&k| (pieces[k].min, k));
    let disjoint = pieces.iter().all(|p| p.sorted)
        && order.windows(2).all(|w| {
            let (a, b) = (&pieces[w[0]], &pieces[w[1]]);
            // A tie at the boundary keeps arrival order only if `a` came first.
            a.max < b.min || (a.max == b.min && w[0] < w[1])
        });
    let merged = if disjoint {
        let batches: Vec<RecordBatch> = order.iter().map(|&k| pieces[k].batch.clone()).collect();
        concat_batches(&batches)?
    } else {
        let batches: Vec<RecordBatch> = pieces.iter().map(|p| p.batch.clone()).collect();
        sort_by_ts(concat_batches(&batches)?, ts_col)?
    };
    Ok(Piece::new(merged, ts_col))
}

/// Merge every run [`plan_compaction`] finds; `None` when there is none (tests).
#[cfg(test)]
pub(crate) fn compact_pieces(pieces: &[Piece], ts_col: usize) -> Result<Option<Vec<Piece>>> {
    let runs = plan_compaction(pieces, false);
    if runs.is_empty() {
        return Ok(None);
    }
    let mut merged = Vec::with_capacity(runs.len());
    for r in runs {
        let piece = merge_run(&pieces[r.clone()], ts_col)?;
        merged.push((r, piece));
    }
    let mut chunk = MemChunk::new(0, 0, 0, 0);
    chunk.pieces = pieces.to_vec();
    chunk.replace_runs(pieces.len(), merged);
    Ok(Some(chunk.pieces))
}

#[cfg(test)]
mod tests;
