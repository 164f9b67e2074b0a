//! Copying a whole partition between nodes, for a replica the primary's WAL can no longer
//! catch up (`WalTruncated`), one whose tail diverged (`Diverged`), or an empty disk.
//!
//! **Export** ([`Db::export_partition`]): the WAL writer takes the partition's chunk lists
//! between two group commits (like a checkpoint's cut, but for one partition), so the copy
//! holds exactly the rows of the records with `seq < next_seq`. The batches are the RDB
//! pieces and the mapped HDB record batches themselves: nothing is copied, and ingest only
//! waits for the pointer copy.
//!
//! **Import** ([`Db::begin_partition_import`], [`PartitionImport`]) replaces everything the
//! node holds of a partition; fault points in parentheses:
//! 1. `begin`: writes to the partition (local and replicated) are refused from now on with
//!    [`Error::PartitionImporting`]; a barrier through the ring waits for the writes the
//!    writer had already taken (they belong to the state being replaced). The staging
//!    directory `import/p<partition>/` is created.
//! 2. `add`: rows are checked (table id, column names and types, every row's partition key
//!    hashes to this partition), split by time bucket and buffered. A bucket that reaches
//!    [`STAGE_FILE_ROWS`], or every bucket once the buffers hold the memory budget, is sorted
//!    and written as an HDB-format Arrow IPC file into the staging directory and fsynced
//!    (`import::spill`). Memory stays bounded whatever the partition's size.
//! 3. `finish`: the rest is staged and the staging directory fsynced (`import::after_stage`);
//!    the files are renamed into `hdb/<table>/<partition>/` under chunk numbers above every
//!    chunk and file there (`import::after_rename`). No checkpoint names them yet, so
//!    recovery would delete them as HDB files written after its checkpoint.
//! 4. Commit: holding the checkpoint lock, the WAL writer swaps the partition's chunk lists
//!    for the imported files, sets its position to `(epoch, next_seq)` and records the WAL
//!    position of this cut as the partition's floor, between two group commits; then it cuts
//!    (`import::after_swap`). That cut is written as a checkpoint. **The checkpoint's rename
//!    into place is the commit point**: recovery starts from the newest complete checkpoint,
//!    which either predates the import (old rows, old position; no WAL record of the
//!    partition follows, since writes to it were refused) or is this one (the imported files,
//!    the new position, replay from the cut).
//! 5. Writes to the partition are accepted again, the staging directory is removed
//!    (`import::after_commit`).
//!
//! The floor keeps [`Db::wal_records_since`] from serving the partition's records written
//! before the import (another history, possibly a divergent one at the same sequence
//! numbers); it is kept in every later checkpoint manifest (`wal_floors`, format version 2).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;

use super::{maintenance, Db, PartitionLog, IMPORT_BROKEN, IMPORT_IDLE, IMPORT_RUNNING};
use crate::batch::{concat_batches, sort_by_ts, timestamps, ts_stats};
use crate::checkpoint::{ImportSwap, Swapped};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{create_dir_durable, fsync_dir};
use crate::hdb::{chunk_rel_path, write_ipc_file, DiskChunk};
use crate::ingest::{conform, partition_for, Request};
use crate::rdb::{split_by_bucket, Chunk, TableData};
use crate::schema::TableSchema;

/// A staged file is written once one time bucket of one table has buffered this many rows.
pub(crate) const STAGE_FILE_ROWS: usize = 1 << 20;
/// Default memory budget of an import's buffers (see [`PartitionImport::with_memory_budget`]).
pub const DEFAULT_IMPORT_BUDGET_BYTES: usize = 64 << 20;

/// Where imports stage their files, under the data directory.
const STAGING_DIR: &str = "import";

/// A consistent copy of one partition (see [`Db::export_partition`]).
#[derive(Debug, Clone)]
pub struct PartitionExport {
    pub partition: u32,
    /// The partition's fencing epoch at the cut.
    pub epoch: u64,
    /// The first WAL sequence number not in the copy: the copy holds exactly the rows of
    /// the partition's records with `seq < next_seq`.
    pub next_seq: u64,
    /// The epoch of the newest record in the copy (0 = none).
    pub last_epoch: u64,
    /// The seq where the newest epoch's run of records starts.
    pub last_epoch_start: u64,
    /// Every table of the node, by id (tables with no rows in the partition included).
    pub tables: Vec<TableExport>,
}

impl PartitionExport {
    /// Where the copy's log ends: what [`PartitionImport::finish`] takes.
    pub fn log(&self) -> PartitionLog {
        PartitionLog {
            next_seq: self.next_seq,
            last_epoch: self.last_epoch,
            last_epoch_start: self.last_epoch_start,
        }
    }

    /// Rows in the copy, all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(TableExport::rows).sum()
    }
}

/// One table's share of a [`PartitionExport`].
#[derive(Debug, Clone)]
pub struct TableExport {
    /// The cluster-wide table id (as in WAL records and [`Db::create_table_with_id`]).
    pub id: u32,
    pub schema: Arc<TableSchema>,
    /// The rows, in the table's Arrow schema ([`TableSchema::arrow_schema`]), in no
    /// particular order. Shared with the engine (RDB pieces, mapped HDB files): no copy.
    pub batches: Vec<RecordBatch>,
}

impl TableExport {
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }
}

impl Db {
    /// A consistent copy of partition `partition`: its position and every table's rows,
    /// cut by the WAL writer between two group commits (the checkpoint's cut), so it holds
    /// exactly the rows of the records with `seq < next_seq`. Ingest waits only for the
    /// chunk lists to be cloned; the batches are shared, not copied. Blocking.
    pub fn export_partition(&self, partition: u32) -> Result<PartitionExport> {
        check_partition_index(partition, self.partitions())?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.ring.send_control(Request::ExportCut {
            partition,
            reply: tx,
        })?;
        let cut = rx.recv().map_err(|_| Error::Shutdown)?;
        // An HDB file whose values fail their checksum fails the export: a copy or a backup
        // never carries corrupt values on under a fresh checksum.
        let tables = cut
            .tables
            .into_iter()
            .map(|(id, schema, chunks)| {
                let mut batches = Vec::new();
                for c in &chunks {
                    let pieces = match c {
                        Chunk::Mem(m) => &m.pieces[..],
                        Chunk::Disk(d) => d.pieces()?,
                    };
                    batches.extend(
                        pieces
                            .iter()
                            .map(|p| p.batch.clone())
                            .filter(|b| b.num_rows() > 0),
                    );
                }
                Ok(TableExport {
                    id,
                    schema,
                    batches,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PartitionExport {
            partition,
            epoch: cut.epoch,
            next_seq: cut.next_seq,
            last_epoch: cut.last_epoch,
            last_epoch_start: cut.last_epoch_start,
            tables,
        })
    }

    /// Start replacing everything this node holds of `partition` (see [`PartitionImport`]).
    /// From now until the import is finished or dropped, writes to the partition — local
    /// and replicated — are refused with [`Error::PartitionImporting`]; writes the engine
    /// had already taken when this was called are part of the state the import replaces.
    /// Other partitions keep taking writes throughout. Blocking.
    pub fn begin_partition_import(&self, partition: u32) -> Result<PartitionImport> {
        check_partition_index(partition, self.partitions())?;
        let s = self.shared();
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if let Some(p) = s.poisoned.lock().clone() {
            return Err(Error::WalPoisoned(p));
        }
        let flag = &s.importing[partition as usize];
        let Some(prior) = [IMPORT_IDLE, IMPORT_BROKEN].into_iter().find(|&from| {
            flag.compare_exchange(from, IMPORT_RUNNING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        }) else {
            return Err(Error::PartitionImporting { partition });
        };
        // From here on, dropping `imp` gives the partition back.
        let imp = PartitionImport {
            db: self.clone(),
            partition,
            staging: s.dir.join(STAGING_DIR).join(format!("p{partition}")),
            tables: BTreeMap::new(),
            budget: DEFAULT_IMPORT_BUDGET_BYTES,
            buffered_bytes: 0,
            staged_files: 0,
            prior,
            settled: false,
        };
        // Writes the writer placed before the flag was set are committed after this.
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.inner.ring.send_control(Request::Barrier(tx))?;
        rx.recv().map_err(|_| Error::Shutdown)?;
        if imp.staging.exists() {
            fs::remove_dir_all(&imp.staging)
                .ctx(|| format!("remove stale staging {}", imp.staging.display()))?;
        }
        fs::create_dir_all(&imp.staging)
            .ctx(|| format!("create staging {}", imp.staging.display()))?;
        Ok(imp)
    }
}

fn check_partition_index(partition: u32, partitions: u32) -> Result<()> {
    if partition >= partitions {
        return Err(Error::InvalidInput(format!(
            "partition {partition} out of range (the node has {partitions})"
        )));
    }
    Ok(())
}

/// Remove what imports that never committed left behind (called at open).
pub(super) fn remove_staging(data_dir: &Path) -> Result<()> {
    let dir = data_dir.join(STAGING_DIR);
    if dir.exists() {
        tracing::info!(path = %dir.display(), "removing files of a partition import that did not finish");
        fs::remove_dir_all(&dir).ctx(|| format!("remove {}", dir.display()))?;
    }
    Ok(())
}

/// An import in progress: replaces everything the node holds of one partition with the
/// rows given to [`PartitionImport::add`], atomically and durably, when
/// [`PartitionImport::finish`] returns. Rows are staged on disk as they come (bounded
/// memory). Dropping it unfinished (or a crash before `finish` returns) leaves the partition
/// exactly as it was; the staged files are removed (at the latest at the next open).
///
/// ```text
/// let mut imp = db.begin_partition_import(p)?;
/// for (table_id, batch) in stream { imp.add(table_id, batch)?; }
/// imp.finish(epoch, next_seq)?;
/// ```
#[derive(Debug)]
pub struct PartitionImport {
    db: Db,
    partition: u32,
    staging: PathBuf,
    /// By table id.
    tables: BTreeMap<u32, StagedTable>,
    budget: usize,
    buffered_bytes: usize,
    staged_files: usize,
    /// The partition's import state before this import: what an unfinished import leaves
    /// (a broken one stays broken: memory may not match disk).
    prior: u8,
    /// The partition's import flag was already handed back (or deliberately left broken).
    settled: bool,
}

#[derive(Debug)]
struct StagedTable {
    table: Arc<TableData>,
    /// Rows not yet staged, by time bucket.
    buffers: BTreeMap<i64, Buffer>,
    files: Vec<StagedFile>,
}

#[derive(Debug, Default)]
struct Buffer {
    batches: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

#[derive(Debug)]
struct StagedFile {
    name: String,
    bucket: i64,
}

impl PartitionImport {
    /// The partition being replaced.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Bytes of rows held in memory before they are staged (default
    /// [`DEFAULT_IMPORT_BUDGET_BYTES`]). When the buffers hold more, they are written out.
    pub fn with_memory_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes.max(1);
        self
    }

    /// Bytes of rows buffered in memory right now (at most about the budget plus one batch).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Files staged on disk so far.
    pub fn staged_files(&self) -> usize {
        self.staged_files
    }

    /// Add rows of table `table_id` (the cluster-wide id). The columns must be the table's,
    /// by name and in order, in its types or types that convert safely (as for
    /// [`Db::write`]), and every row's partition key must belong to this partition. Errors
    /// (unknown table id, schema mismatch, a row of another partition, a staging I/O error)
    /// leave the import usable for nothing but dropping; nothing of the partition changed.
    pub fn add(&mut self, table_id: u32, batch: RecordBatch) -> Result<()> {
        let s = self.db.shared();
        let table = match self.tables.get(&table_id) {
            Some(t) => t.table.clone(),
            None => s.table_by_id(table_id).ok_or_else(|| {
                Error::TableNotFound(format!(
                    "table id {table_id} (partition {} import)",
                    self.partition
                ))
            })?,
        };
        check_columns(&table, &batch)?;
        let batch = conform(&table, batch)?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        check_rows_partition(&table, &batch, self.partition, s.config.partitions)?;
        // Bytes of the rows themselves: a slice of a larger batch (a mapped HDB file, a
        // stream's buffer) is not charged for the whole buffer behind it.
        let bytes: usize = batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
            .sum();
        let per_row = bytes / batch.num_rows() + 1;
        let pieces = split_by_bucket(&batch, table.ts_col(), s.config.chunk_duration_ns)?;
        let staged = self.tables.entry(table_id).or_insert_with(|| StagedTable {
            table: table.clone(),
            buffers: BTreeMap::new(),
            files: Vec::new(),
        });
        let mut full = Vec::new();
        for (bucket, rows) in pieces {
            let bytes = rows.num_rows() * per_row;
            let buf = staged.buffers.entry(bucket).or_default();
            buf.rows += rows.num_rows();
            buf.bytes += bytes;
            buf.batches.push(rows);
            self.buffered_bytes += bytes;
            if buf.rows >= STAGE_FILE_ROWS {
                full.push(bucket);
            }
        }
        for bucket in full {
            self.spill(table_id, bucket)?;
        }
        if self.buffered_bytes > self.budget {
            self.spill_all()?;
        }
        Ok(())
    }

    /// Write one buffered bucket of one table as a staged file (sorted, fsynced).
    fn spill(&mut self, table_id: u32, bucket: i64) -> Result<()> {
        let s = self.db.shared();
        let Some(staged) = self.tables.get_mut(&table_id) else {
            return Ok(());
        };
        let Some(buf) = staged.buffers.remove(&bucket) else {
            return Ok(());
        };
        self.buffered_bytes = self.buffered_bytes.saturating_sub(buf.bytes);
        if buf.rows == 0 {
            return Ok(());
        }
        s.faults.check("import::spill")?;
        let ts_col = staged.table.ts_col();
        let batch = sort_by_ts(concat_batches(&buf.batches)?, ts_col)?;
        drop(buf);
        let Some((min, max, _)) = ts_stats(timestamps(&batch, ts_col)) else {
            return Ok(());
        };
        let name = format!("{}.arrow", self.staged_files);
        write_ipc_file(&self.staging.join(&name), &batch, min, max)?;
        staged.files.push(StagedFile { name, bucket });
        self.staged_files += 1;
        Ok(())
    }

    fn spill_all(&mut self) -> Result<()> {
        let todo: Vec<(u32, i64)> = self
            .tables
            .iter()
            .flat_map(|(&id, t)| t.buffers.keys().map(move |&b| (id, b)))
            .collect();
        for (id, bucket) in todo {
            self.spill(id, bucket)?;
        }
        Ok(())
    }

    /// Replace the partition with the rows added, at position `(epoch, next_seq)`, durably
    /// and atomically: when this returns `Ok`, the partition holds exactly these rows (none
    /// of a table that got none), [`Db::partition_position`] is `(epoch, next_seq)`,
    /// replicated records continue from `next_seq`, and so it stays across restarts,
    /// checkpoints and flushes. A crash before it returns leaves the old partition. Refused
    /// with [`Error::Fenced`] when the node already knows a newer epoch for the partition.
    /// Blocking; takes a checkpoint.
    pub fn finish(self, epoch: u64, log: PartitionLog) -> Result<()> {
        self.commit(epoch, log, "partition imported")
    }

    /// Finish as an empty partition with an empty log (`next_seq` 0): what a node does with
    /// a partition it holds no copy of any more. Nothing added so far is kept. The fencing
    /// epoch stays (the node still refuses what older primaries send), writes to the
    /// partition are accepted again afterwards, and its files are deleted once no kept
    /// checkpoint names them (the next checkpoint). A later copy of the partition starts
    /// from nothing: a catch-up from the primary's WAL start or a whole copy. Durable and
    /// atomic like [`PartitionImport::finish`].
    pub fn release(mut self) -> Result<()> {
        self.tables.clear();
        self.buffered_bytes = 0;
        let epoch = self.db.shared().epochs[self.partition as usize].load(Ordering::Acquire);
        self.commit(epoch, PartitionLog::default(), "partition released")
    }

    fn commit(mut self, epoch: u64, log: PartitionLog, done: &'static str) -> Result<()> {
        let next_seq = log.next_seq;
        let db = self.db.clone();
        let s = db.shared();
        let p = self.partition;
        self.spill_all()?;
        fsync_dir(&self.staging)?;
        s.faults.check("import::after_stage")?;

        // Into hdb/, under chunk numbers no file of the partition uses. Unreferenced until
        // the commit checkpoint: a crash from here to there deletes them at open.
        let mut renamed: Vec<PathBuf> = Vec::new();
        let placed = self.place_files(&mut renamed);
        let tables = match placed.and_then(|t| s.faults.check("import::after_rename").map(|()| t)) {
            Ok(t) => t,
            Err(e) => {
                remove_files(&renamed);
                return Err(e);
            }
        };

        // Commit: swap at a cut, then the checkpoint of that cut.
        let mut links = s.checkpoint_lock.lock();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let swapped = db
            .inner
            .ring
            .send_control(Request::Import(ImportSwap {
                partition: p,
                epoch,
                next_seq,
                last_epoch: log.last_epoch,
                last_epoch_start: log.last_epoch_start,
                tables,
                reply: tx,
            }))
            .and_then(|()| rx.recv().map_err(|_| Error::Shutdown)?);
        let Swapped { capture, replaced } = match swapped {
            Ok(c) => c,
            Err(e) => {
                // Nothing was swapped: the partition is as it was.
                drop(links);
                remove_files(&renamed);
                return Err(e);
            }
        };
        let committed = s
            .faults
            .check("import::after_swap")
            .and_then(|()| maintenance::write_out(s, &mut links, &capture));
        drop(links);
        drop(capture);
        if let Err(e) = committed {
            // Memory holds the import, disk may hold either state: keep refusing writes
            // until an import of the partition succeeds (or the node restarts).
            tracing::error!(partition = p, error = %e, "partition import could not be made durable; writes to the partition stay refused until it is imported again");
            s.importing[p as usize].store(IMPORT_BROKEN, Ordering::Release);
            self.settled = true;
            self.remove_staging();
            return Err(e);
        }
        // Committed. (An error armed here is reported, but the import is durable.) The
        // replaced files go once the older kept checkpoint no longer names them.
        let replaced_files = replaced.len();
        s.retired.lock().extend(replaced);
        let after = s.faults.check("import::after_commit");
        s.importing[p as usize].store(IMPORT_IDLE, Ordering::Release);
        self.settled = true;
        self.remove_staging();
        tracing::info!(
            partition = p,
            epoch,
            next_seq,
            files = self.staged_files,
            replaced_files,
            "{done}"
        );
        after
    }

    /// Rename every staged file into the partition's HDB directory and open it.
    fn place_files(&self, renamed: &mut Vec<PathBuf>) -> Result<Vec<(u32, Vec<Chunk>)>> {
        let s = self.db.shared();
        let p = self.partition;
        let mut out = Vec::with_capacity(self.tables.len());
        for (&id, staged) in &self.tables {
            let t = &staged.table;
            if staged.files.is_empty() {
                continue;
            }
            let dir = s.dir.join("hdb").join(&t.schema.name).join(p.to_string());
            create_dir_durable(&dir)?;
            let mut next = next_chunk_seqs(t, p, &dir)?;
            let mut chunks = Vec::with_capacity(staged.files.len());
            for f in &staged.files {
                let seq = next.entry(f.bucket).or_insert(0);
                let rel = chunk_rel_path(&t.schema.name, p, f.bucket, *seq);
                *seq = seq.checked_add(1).ok_or_else(|| {
                    Error::Internal(format!("chunk numbers of {} exhausted", dir.display()))
                })?;
                let from = self.staging.join(&f.name);
                let to = s.dir.join(&rel);
                fs::rename(&from, &to)
                    .ctx(|| format!("move {} to {}", from.display(), to.display()))?;
                renamed.push(to);
                let (bucket, seq) = (f.bucket, *seq - 1);
                // Written by this process (staged from the decoded copy), checksum included.
                chunks.push(Chunk::Disk(Arc::new(
                    DiskChunk::open(&s.dir, &rel, &t.schema, bucket, seq)?.written_here(),
                )));
            }
            fsync_dir(&dir)?;
            out.push((id, chunks));
        }
        fsync_dir(&self.staging)?;
        Ok(out)
    }

    fn remove_staging(&self) {
        if let Err(e) = fs::remove_dir_all(&self.staging) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.staging.display(), error = %e, "could not remove import staging; it is removed at next open");
            }
        }
    }
}

impl Drop for PartitionImport {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Not finished: the partition is untouched; give it back as it was.
        self.remove_staging();
        self.db.shared().importing[self.partition as usize].store(self.prior, Ordering::Release);
    }
}

fn remove_files(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = fs::remove_file(p) {
            tracing::warn!(path = %p.display(), error = %e, "could not remove a staged file of a failed import; it is removed at next open");
        }
    }
}

/// Per time bucket: the first chunk number above every chunk of the partition and every
/// file in its HDB directory (files of chunks an earlier import replaced may still be named
/// by the older kept checkpoint; they are never overwritten).
fn next_chunk_seqs(t: &TableData, p: u32, dir: &Path) -> Result<HashMap<i64, u32>> {
    fn see(next: &mut HashMap<i64, u32>, bucket: i64, seq: u32) {
        let e = next.entry(bucket).or_insert(0);
        *e = (*e).max(seq.saturating_add(1));
    }
    let mut next = HashMap::new();
    if let Some(part) = t.partitions.get(p as usize) {
        for c in &part.read().chunks {
            let (b, s) = c.key();
            see(&mut next, b, s);
        }
    }
    for entry in fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".arrow")) else {
            continue;
        };
        if let Some((b, s)) = stem.rsplit_once('_') {
            if let (Ok(b), Ok(s)) = (b.parse::<i64>(), s.parse::<u32>()) {
                see(&mut next, b, s);
            }
        }
    }
    Ok(next)
}

/// The batch's columns are the table's, by name and in order.
fn check_columns(t: &TableData, batch: &RecordBatch) -> Result<()> {
    let schema = batch.schema();
    let want = &t.schema.columns;
    if schema.fields().len() != want.len() {
        return Err(Error::InvalidInput(format!(
            "import of table '{}' (id {}): the table has {} columns, the data has {}",
            t.schema.name,
            t.id,
            want.len(),
            schema.fields().len()
        )));
    }
    for (i, (f, c)) in schema.fields().iter().zip(want).enumerate() {
        if !f.name().eq_ignore_ascii_case(&c.name) {
            return Err(Error::InvalidInput(format!(
                "import of table '{}' (id {}): column {} is '{}' in the data but '{}' in the table",
                t.schema.name,
                t.id,
                i + 1,
                f.name(),
                c.name
            )));
        }
    }
    Ok(())
}

/// Every row's partition key belongs to partition `p` (checked once per dictionary value).
fn check_rows_partition(t: &TableData, batch: &RecordBatch, p: u32, partitions: u32) -> Result<()> {
    let bad = || {
        Error::Internal(format!(
            "partition key of table '{}' is not a string dictionary after conversion",
            t.schema.name
        ))
    };
    let key = batch
        .column(t.schema.partition_key)
        .as_dictionary_opt::<Int32Type>()
        .ok_or_else(bad)?;
    let values = key.values().as_string_opt::<i32>().ok_or_else(bad)?;
    let parts: Vec<u32> = (0..values.len())
        .map(|i| partition_for(&t.schema.name, values.value(i), partitions))
        .collect();
    for (row, &k) in key.keys().values().iter().enumerate() {
        match parts.get(k as usize) {
            Some(&q) if q == p => {}
            Some(&q) => {
                return Err(Error::InvalidInput(format!(
                    "import into partition {p}: row {} of table '{}' has key '{}', which belongs to partition {q}",
                    row + 1,
                    t.schema.name,
                    values.value(k as usize)
                )))
            }
            None => {
                return Err(Error::InvalidInput(format!(
                    "import into partition {p}: row {} of table '{}' has a dictionary key out of range",
                    row + 1,
                    t.schema.name
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
