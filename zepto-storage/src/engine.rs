//! The engine: [`Db`] opens a data directory (recovering it), accepts durable writes,
//! serves scans, and runs three threads:
//! - the WAL writer (`engine/writer.rs`): drains the ingest ring, group-commits, applies to
//!   RDB, acknowledges;
//! - maintenance (`engine/maintenance.rs`): compacts small pieces, seals idle or full
//!   chunks, flushes them to HDB, keeps memory under its limit, and takes the periodic
//!   checkpoint.
//!
//! Recovery (`engine/recovery.rs`) = newest complete checkpoint + WAL replay from its
//! position.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;

use crate::checkpoint::{CheckpointInfo, LinkCache};
use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::hdb::Verified;
use crate::ingest::{
    partition_for, prepare_replicated, prepare_split, prepare_write, split_write, CommittedRecord,
    ReplicatedRecord, Request, Ring, WriteReceipt, WriteTicket,
};
use crate::rdb::{Chunk, TableData};
use crate::scan::{ScanRequest, ScanStats, TableScan};
use crate::schema::TableSchema;
use crate::wal::{WalStats, FSYNC_BUCKETS_US};

mod maintenance;
mod recovery;
mod scrub;
mod transfer;
mod writer;

pub use transfer::{PartitionExport, PartitionImport, TableExport, DEFAULT_IMPORT_BUDGET_BYTES};

/// Import state of a partition (`Shared::importing`): no import, writes flow.
pub(crate) const IMPORT_IDLE: u8 = 0;
/// An import is staging or committing: writes to the partition are refused.
pub(crate) const IMPORT_RUNNING: u8 = 1;
/// An import replaced the partition in memory but could not make it durable: writes stay
/// refused (the durable state may be the old or the new one) until an import succeeds.
pub(crate) const IMPORT_BROKEN: u8 = 2;

/// A monotonic millisecond clock, passed in so that time-based behaviour (sealing idle
/// chunks, checkpoint intervals) can be tested without waiting.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Engine settings. [`Config::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Partition count, fixed when the directory is created.
    pub partitions: u32,
    /// Width of a chunk's time bucket in nanoseconds (1 h).
    pub chunk_duration_ns: i64,
    /// Request slots of the ingest ring.
    pub ring_capacity: usize,
    /// Bytes the ingest ring may hold (encoded payloads).
    pub ring_max_bytes: usize,
    /// Target WAL segment size.
    pub wal_segment_bytes: u64,
    /// Most bytes of payload one group commit gathers.
    pub max_group_bytes: usize,
    /// Automatic checkpoint period; `None` turns it off.
    pub checkpoint_interval: Option<Duration>,
    /// A chunk with no writes for this long is sealed and flushed to HDB.
    pub seal_idle: Duration,
    /// A chunk with this many rows is sealed and flushed.
    pub max_chunk_rows: usize,
    /// When RDB holds more than this, the least recently written chunks are flushed early.
    pub max_memory_bytes: usize,
    /// How often maintenance looks for work when nothing wakes it.
    pub maintenance_interval: Duration,
    /// Niceness the WAL writer, maintenance and background-check threads add to their own
    /// (Linux), so that queries get the cores first while ingest runs (see
    /// [`crate::priority`]); 0 = none.
    pub background_nice: i32,
    /// Average bytes per second the background check of unread HDB files reads (ADR 0015);
    /// 0 = no background check (files are still checked when first read).
    pub scrub_bytes_per_sec: u64,
    /// How often the background check reads every HDB file again, checked before or not,
    /// so that a file changed on disk after its first check is found (bit rot on a node
    /// that runs for weeks); `None` = only the pass after the start.
    pub scrub_recheck_interval: Option<Duration>,
    pub clock: Arc<dyn Clock>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            partitions: 64,
            chunk_duration_ns: 3_600 * 1_000_000_000,
            ring_capacity: 4096,
            ring_max_bytes: 512 << 20,
            wal_segment_bytes: 64 << 20,
            max_group_bytes: 16 << 20,
            checkpoint_interval: Some(Duration::from_secs(60)),
            seal_idle: Duration::from_secs(120),
            max_chunk_rows: 4 << 20,
            max_memory_bytes: 8 << 30,
            maintenance_interval: Duration::from_millis(500),
            background_nice: 0,
            scrub_bytes_per_sec: 64 << 20,
            scrub_recheck_interval: Some(Duration::from_secs(7 * 24 * 3600)),
            clock: Arc::new(MonotonicClock::default()),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidInput(m.to_string()));
        if self.partitions == 0 || self.partitions > 65_536 {
            return bad("partitions must be between 1 and 65536");
        }
        if self.chunk_duration_ns <= 0 {
            return bad("chunk duration must be positive");
        }
        if self.ring_capacity == 0 || self.ring_max_bytes == 0 {
            return bad("the ingest ring needs at least one slot and one byte");
        }
        if self.wal_segment_bytes < 4096 {
            return bad("WAL segments must be at least 4 KiB");
        }
        if self.max_chunk_rows == 0 {
            return bad("max chunk rows must be positive");
        }
        Ok(())
    }
}

/// What recovery did when the directory was opened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryInfo {
    /// The checkpoint recovery started from, if any.
    pub checkpoint_id: Option<u64>,
    pub wal_records_replayed: u64,
    pub wal_bytes_replayed: u64,
    /// Where the WAL was found damaged or torn, if it was.
    pub wal_damage: Option<String>,
    pub duration_ms: f64,
    pub tables: usize,
    pub rows: u64,
}

/// Every HDB chunk with its table's name and partition: the list is taken under each
/// partition's lock (Arc clones), the reading is done after.
fn disk_files(s: &Shared) -> Vec<(String, u32, Arc<crate::hdb::DiskChunk>)> {
    let mut files = Vec::new();
    for t in s.tables.read().values() {
        for (p, part) in t.partitions.iter().enumerate() {
            for c in &part.read().chunks {
                if let Chunk::Disk(d) = c {
                    files.push((t.schema.name.clone(), p as u32, Arc::clone(d)));
                }
            }
        }
    }
    files
}

/// What [`Db::verify_files`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// HDB files the database holds.
    pub files: u64,
    /// Files whose values were read and matched their checksum in this call.
    pub checked_now: u64,
    /// Bytes read by this call.
    pub bytes_checked: u64,
    /// Files already checked (by an earlier read or call, or written by this process).
    pub checked_before: u64,
    /// Files written before content checksums existed: nothing to check against.
    pub without_checksum: u64,
    /// Files whose values do not match their checksum.
    pub corrupt: Vec<CorruptFile>,
}

/// An HDB file whose values do not match its checksum.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptFile {
    pub table: String,
    pub partition: u32,
    /// Relative to the data directory.
    pub path: String,
    pub reason: String,
}

/// Numbers for `/metrics` and `/admin/cluster`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DbStats {
    pub tables: usize,
    pub partitions: u32,
    pub memory_chunks: u64,
    pub memory_rows: u64,
    pub memory_bytes: u64,
    pub disk_chunks: u64,
    pub disk_rows: u64,
    pub disk_bytes: u64,
    /// HDB files whose values have been checked against their checksum (by a read, by
    /// [`Db::verify_files`], or written by this process) and matched.
    pub disk_chunks_verified: u64,
    /// HDB files whose values did not match their checksum: every read of them fails.
    pub disk_chunks_corrupt: u64,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub write_requests: u64,
    pub write_errors: u64,
    pub ring_depth: usize,
    pub ring_bytes: usize,
    pub wal_fsyncs: u64,
    pub wal_fsync_seconds_total: f64,
    /// (upper bound in seconds, cumulative count) for a latency histogram.
    pub wal_fsync_histogram: Vec<(f64, u64)>,
    pub wal_bytes: u64,
    pub wal_records: u64,
    pub wal_segment: u64,
    pub wal_offset: u64,
    pub checkpoints: u64,
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Milliseconds since the last checkpoint finished (since start when none yet).
    pub checkpoint_age_ms: u64,
    pub flushes: u64,
    pub compactions: u64,
    pub poisoned: Option<String>,
}

/// State shared by the handle and the background threads.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) dir: PathBuf,
    pub(crate) faults: Arc<Faults>,
    pub(crate) catalog: Mutex<crate::catalog::Catalog>,
    /// By lower-case name.
    pub(crate) tables: RwLock<HashMap<String, Arc<TableData>>>,
    pub(crate) wal_stats: Arc<WalStats>,
    pub(crate) recycle: Arc<Mutex<Vec<PathBuf>>>,
    pub(crate) queued_bytes: Arc<AtomicUsize>,
    pub(crate) poisoned: Mutex<Option<String>>,
    pub(crate) next_chunk_id: AtomicU64,
    pub(crate) next_checkpoint_id: AtomicU64,
    pub(crate) checkpoint_lock: Mutex<LinkCache>,
    /// Held while sealed chunks are written to HDB: one flusher at a time (the maintenance
    /// thread and `Db::flush` would otherwise write the same chunk twice).
    pub(crate) flush_lock: Mutex<()>,
    pub(crate) last_checkpoint: Mutex<Option<CheckpointInfo>>,
    pub(crate) last_checkpoint_ms: AtomicU64,
    /// Engine-clock ms when the writer started its current group; 0 when idle.
    pub(crate) writer_busy_since: AtomicU64,
    pub(crate) wal_position: Mutex<crate::wal::WalPosition>,
    pub(crate) counters: Counters,
    pub(crate) stop: AtomicBool,
    pub(crate) wake: (Mutex<bool>, Condvar),
    /// Wakes the background check of HDB files (at stop).
    pub(crate) scrub_wake: (Mutex<()>, Condvar),
    pub(crate) recovery: Mutex<RecoveryInfo>,
    /// Per partition: the fencing epoch (raised by the cluster layer and by replicated
    /// records; never lowered).
    pub(crate) epochs: Vec<AtomicU64>,
    /// Per partition: the next WAL sequence number, as of the last group commit.
    pub(crate) next_seq: Vec<AtomicU64>,
    /// Per partition: the epoch of the newest record, as of the last group commit.
    pub(crate) last_epochs: Vec<AtomicU64>,
    /// Per partition: where the newest record epoch's run of records starts.
    pub(crate) epoch_starts: Vec<AtomicU64>,
    pub(crate) commit_listener: RwLock<Option<CommitListener>>,
    /// Per partition: [`IMPORT_IDLE`], [`IMPORT_RUNNING`] or [`IMPORT_BROKEN`].
    pub(crate) importing: Vec<AtomicU8>,
    /// Per partition replaced by an import: the WAL position of its cut (older records of
    /// the partition are another history and are never served by `wal_records_since`).
    pub(crate) wal_floors: Mutex<BTreeMap<u32, crate::wal::WalPosition>>,
    /// HDB files (relative to `dir`) of chunks an import or a release took out of their
    /// partition: deleted once no kept checkpoint names them (a checkpoint later, so that
    /// recovery can still fall back to the older kept checkpoint).
    pub(crate) retired: Mutex<Vec<String>>,
}

/// A function told of every group of records that just became durable (see
/// [`Db::set_commit_listener`]).
pub type CommitListenerFn = Arc<dyn Fn(&[CommittedRecord]) + Send + Sync>;

/// Called by the WAL writer with every group of records that just became durable.
#[derive(Clone)]
pub(crate) struct CommitListener(pub(crate) CommitListenerFn);

impl std::fmt::Debug for CommitListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitListener")
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rows_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) write_requests: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) compactions: AtomicU64,
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    pub(crate) fn table(&self, name: &str) -> Result<Arc<TableData>> {
        self.tables
            .read()
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| Error::TableNotFound(name.to_string()))
    }

    pub(crate) fn table_by_id(&self, id: u32) -> Option<Arc<TableData>> {
        self.tables.read().values().find(|t| t.id == id).cloned()
    }

    pub(crate) fn wake_maintenance(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock() = true;
        cv.notify_one();
    }

    /// Wake the background check of HDB files (it looks at `stop` under the lock).
    pub(crate) fn wake_scrub(&self) {
        let (lock, cv) = &self.scrub_wake;
        let _guard = lock.lock();
        cv.notify_all();
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    ring: Ring,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// False once `close` started: new writes are refused.
    accepting: AtomicBool,
    closed: AtomicBool,
}

impl Inner {
    fn stop_threads(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // The first thread is the WAL writer, the others maintenance and the background check.
        let mut threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        let writer = (!threads.is_empty()).then(|| threads.remove(0));
        // Maintenance stops first: a checkpoint it is taking waits for the writer to answer
        // its cut, and a cut queued behind the writer's Shutdown was never answered (close
        // then waited forever to join it).
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_maintenance();
        self.shared.wake_scrub();
        for t in threads {
            let _ = t.join();
        }
        // The writer finishes everything queued before Shutdown.
        let _ = self.ring.send_control(Request::Shutdown);
        if let Some(w) = writer {
            let _ = w.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// The end of one partition's log (see [`Db::partition_log`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionLog {
    /// Every record below this sequence number is durable.
    pub next_seq: u64,
    /// The epoch of the newest record (0 = no record).
    pub last_epoch: u64,
    /// The sequence number of the first record of `last_epoch`'s run (0 when unknown).
    pub last_epoch_start: u64,
}

impl PartitionLog {
    /// Whether this (a replica's) log holds records the `primary`'s log does not: a tail a
    /// deposed primary wrote and never replicated. Records are identified by
    /// `(epoch, seq)`, and one epoch has one writer, so a log whose newest epoch the primary
    /// also wrote, ending no later than the primary's, is a prefix of it. A log whose newest
    /// epoch is older than the primary's is a prefix only if it ends where the primary's
    /// newest epoch begins or earlier. (With two or more epochs between them that check is
    /// necessary, not sufficient: the primary's older epoch boundaries are not kept.)
    pub fn diverges_from(&self, primary: &PartitionLog) -> bool {
        if self.next_seq == 0 {
            return false;
        }
        if self.next_seq > primary.next_seq || self.last_epoch > primary.last_epoch {
            return true;
        }
        self.last_epoch < primary.last_epoch && self.next_seq > primary.last_epoch_start
    }
}

/// A handle to an open storage engine. Cheap to clone; the engine stops when the last
/// handle is dropped or [`Db::close`] is called.
#[derive(Debug, Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl Db {
    /// Open (creating if needed) and recover a data directory, then start the engine.
    pub fn open(config: Config) -> Result<Db> {
        config.validate()?;
        let faults = Arc::new(Faults::default());
        if let Ok(spec) = std::env::var("ZEPTO_FAILPOINTS") {
            faults.arm_from_spec(&spec)?;
        }
        Db::open_with_faults(config, faults)
    }

    /// Like [`Db::open`], with fault points armed by the caller (tests, the chaos harness).
    pub fn open_with_faults(config: Config, faults: Arc<Faults>) -> Result<Db> {
        config.validate()?;
        let recovered = recovery::recover(&config, faults)?;
        let (tx, rx) = crossbeam_channel::bounded(config.ring_capacity);
        let shared = recovered.shared;
        let ring = Ring::new(tx, config.ring_max_bytes, shared.queued_bytes.clone());
        let mut threads = Vec::new();
        let s = shared.clone();
        let wal = recovered.wal;
        let next_seq = recovered.next_seq;
        let nice = config.background_nice;
        threads.push(
            std::thread::Builder::new()
                .name("zepto-wal".into())
                .spawn(move || {
                    crate::priority::lower_current_thread(nice);
                    writer::run(s, rx, wal, next_seq)
                })
                .map_err(|e| Error::io("start the WAL writer thread", e))?,
        );
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            ring,
            threads: Mutex::new(threads),
            accepting: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        });
        let db = Db { inner };
        let ring = db.inner.ring.clone();
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("zepto-maint".into())
            .spawn(move || {
                crate::priority::lower_current_thread(nice);
                maintenance::run(s, ring)
            })
            .map_err(|e| Error::io("start the maintenance thread", e))?;
        db.inner.threads.lock().push(handle);
        if config.scrub_bytes_per_sec > 0 {
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name("zepto-scrub".into())
                .spawn(move || {
                    crate::priority::lower_current_thread(nice);
                    scrub::run(s)
                })
                .map_err(|e| Error::io("start the HDB check thread", e))?;
            db.inner.threads.lock().push(handle);
        }
        Ok(db)
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// `Ok` while writes are admitted: not closing, WAL not poisoned.
    fn check_accepting(&self) -> Result<()> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if let Some(p) = self.shared().poisoned.lock().clone() {
            return Err(Error::WalPoisoned(p));
        }
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.shared().dir
    }

    /// The partition count.
    pub fn partitions(&self) -> u32 {
        self.shared().config.partitions
    }

    /// The fault points of this engine.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.shared().faults
    }

    /// What recovery found and did when this engine opened.
    pub fn recovery_info(&self) -> RecoveryInfo {
        self.shared().recovery.lock().clone()
    }

    /// Create a table; durable when this returns.
    pub fn create_table(&self, schema: TableSchema) -> Result<Arc<TableSchema>> {
        self.create_table_inner(schema, None)
    }

    fn create_table_inner(&self, schema: TableSchema, id: Option<u32>) -> Result<Arc<TableSchema>> {
        let s = self.shared();
        let mut catalog = s.catalog.lock();
        let entry = catalog.create(schema, id, &s.faults)?;
        // A directory left by a dropped table of the same name holds nothing we reference.
        let hdb = s.dir.join("hdb").join(&entry.schema.name);
        // Its retired files go with the directory; a new table of the same name numbers its
        // chunks from 0 again, and its files must never be taken for retired ones.
        let prefix = format!("hdb/{}/", entry.schema.name);
        s.retired.lock().retain(|f| !f.starts_with(&prefix));
        if hdb.exists() {
            let _ = std::fs::remove_dir_all(&hdb);
        }
        let data = Arc::new(TableData::new(
            entry.id,
            entry.schema.clone(),
            s.config.partitions,
        ));
        s.tables
            .write()
            .insert(entry.schema.name.to_ascii_lowercase(), data);
        Ok(entry.schema)
    }

    /// Create a table with an id chosen by the cluster's metadata (so that every node uses
    /// the same ids in its WAL records); durable when this returns.
    pub fn create_table_with_id(&self, schema: TableSchema, id: u32) -> Result<Arc<TableSchema>> {
        self.create_table_inner(schema, Some(id))
    }

    /// The id of a table (as written in WAL records).
    pub fn table_id(&self, name: &str) -> Result<u32> {
        Ok(self.shared().table(name)?.id)
    }

    /// Drop a table and its files; durable when this returns.
    pub fn drop_table(&self, name: &str) -> Result<()> {
        let s = self.shared();
        let mut catalog = s.catalog.lock();
        let entry = catalog.drop_table(name, &s.faults)?;
        s.tables
            .write()
            .remove(&entry.schema.name.to_ascii_lowercase());
        let hdb = s.dir.join("hdb").join(&entry.schema.name);
        if hdb.exists() {
            if let Err(e) = std::fs::remove_dir_all(&hdb) {
                tracing::warn!(path = %hdb.display(), error = %e, "could not remove files of dropped table; they are removed at next start");
            }
        }
        Ok(())
    }

    /// A table's schema (case-insensitive name).
    pub fn table(&self, name: &str) -> Result<Arc<TableSchema>> {
        Ok(self.shared().table(name)?.schema.clone())
    }

    /// Every table, by name.
    pub fn tables(&self) -> Vec<Arc<TableSchema>> {
        let mut v: Vec<_> = self
            .shared()
            .tables
            .read()
            .values()
            .map(|t| t.schema.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The partition a partition-key value of `table` lives in.
    pub fn partition_of(&self, table: &str, key: &str) -> u32 {
        partition_for(table, key, self.partitions())
    }

    /// Queue rows for a durable write. The rows are checked and converted here (errors
    /// come back at once, nothing is written); the ticket resolves once they are fsynced
    /// and visible to scans. A write is atomic: all its rows or none.
    pub fn write(&self, table: &str, batch: RecordBatch) -> Result<WriteTicket> {
        let s = self.shared();
        self.check_accepting()?;
        let t = s.table(table)?;
        let req = prepare_write(&t, batch, s.config.partitions)?;
        self.inner.ring.push(req)
    }

    /// Convert rows to `table`'s types and split them by partition, as [`Db::write`] does,
    /// without writing: a cluster router sends each piece to its partition's primary, which
    /// writes it with [`Db::write_split`]. Pieces come in partition order.
    pub fn split_write(&self, table: &str, batch: RecordBatch) -> Result<Vec<(u32, RecordBatch)>> {
        let s = self.shared();
        let t = s.table(table)?;
        split_write(&t, batch, s.config.partitions)
    }

    /// Like [`Db::write`] for rows already split by partition (by [`Db::split_write`], here
    /// or on another node): no second split. Each piece is checked to hold only rows of its
    /// partition (`InvalidInput` otherwise, nothing written). Atomic like [`Db::write`].
    pub fn write_split(&self, table: &str, pieces: Vec<(u32, RecordBatch)>) -> Result<WriteTicket> {
        let s = self.shared();
        self.check_accepting()?;
        let t = s.table(table)?;
        let req = prepare_split(&t, pieces, s.config.partitions)?;
        self.inner.ring.push(req)
    }

    /// Like [`Db::write`] for several tables at once, atomic across all of them: after a
    /// crash either every row of every table is there or none is.
    pub fn write_many(&self, batches: Vec<(String, RecordBatch)>) -> Result<WriteTicket> {
        let s = self.shared();
        self.check_accepting()?;
        let mut reqs = Vec::with_capacity(batches.len());
        for (table, batch) in batches {
            let t = s.table(&table)?;
            reqs.push(prepare_write(&t, batch, s.config.partitions)?);
        }
        self.inner.ring.push(crate::ingest::merge_requests(reqs))
    }

    /// Apply records shipped by a partition's primary, with the epochs and sequence numbers
    /// the primary gave them. All or nothing: a record from an older epoch than this node
    /// knows is refused with [`Error::Fenced`], one that skips sequence numbers with
    /// [`Error::SeqGap`]; records this node already has are skipped (idempotent resend).
    pub fn write_replicated(&self, records: Vec<ReplicatedRecord>) -> Result<WriteTicket> {
        let s = self.shared();
        self.check_accepting()?;
        let req = prepare_replicated(records, s.config.partitions, |id| s.table_by_id(id))?;
        self.inner.ring.push(req)
    }

    /// Be told of every record right after it becomes durable and visible (replication,
    /// WAL archiving). The listener runs on the WAL writer thread: it must only hand the
    /// records on (e.g. into a channel), never block. Replaces any previous listener.
    pub fn set_commit_listener(&self, listener: CommitListenerFn) {
        *self.shared().commit_listener.write() = Some(crate::engine::CommitListener(listener));
    }

    /// Raise a partition's fencing epoch (the cluster layer does this on promotion).
    /// Replicated records of older epochs are refused from then on. Lowering is an error.
    pub fn set_partition_epoch(&self, partition: u32, epoch: u64) -> Result<()> {
        let e = self
            .shared()
            .epochs
            .get(partition as usize)
            .ok_or_else(|| Error::InvalidInput(format!("partition {partition} out of range")))?;
        let prev = e.fetch_max(epoch, Ordering::AcqRel);
        if prev > epoch {
            return Err(Error::Fenced {
                partition,
                epoch,
                current: prev,
            });
        }
        Ok(())
    }

    /// Where a partition's log ends: its next sequence number, the epoch of its newest
    /// record and where that epoch's run of records starts. A primary compares a replica's
    /// with its own ([`PartitionLog::diverges_from`]).
    pub fn partition_log(&self, partition: u32) -> Result<PartitionLog> {
        let s = self.shared();
        let p = partition as usize;
        match (
            s.next_seq.get(p),
            s.last_epochs.get(p),
            s.epoch_starts.get(p),
        ) {
            (Some(n), Some(e), Some(st)) => Ok(PartitionLog {
                next_seq: n.load(Ordering::Acquire),
                last_epoch: e.load(Ordering::Acquire),
                last_epoch_start: st.load(Ordering::Acquire),
            }),
            _ => Err(Error::InvalidInput(format!(
                "partition {partition} out of range"
            ))),
        }
    }

    /// A partition's fencing epoch and next WAL sequence number.
    pub fn partition_position(&self, partition: u32) -> Result<(u64, u64)> {
        let s = self.shared();
        let p = partition as usize;
        match (s.epochs.get(p), s.next_seq.get(p)) {
            (Some(e), Some(n)) => Ok((e.load(Ordering::Acquire), n.load(Ordering::Acquire))),
            _ => Err(Error::InvalidInput(format!(
                "partition {partition} out of range"
            ))),
        }
    }

    /// The records of one partition with `seq >= from_seq` still in the WAL, in order, up
    /// to about `max_bytes` of payload (at least one record). What a primary sends a
    /// replica that fell behind. [`Error::WalTruncated`] when the WAL no longer reaches
    /// back to `from_seq`.
    pub fn wal_records_since(
        &self,
        partition: u32,
        from_seq: u64,
        max_bytes: usize,
    ) -> Result<Vec<ReplicatedRecord>> {
        let s = self.shared();
        let (_, next) = self.partition_position(partition)?;
        if from_seq >= next {
            return Ok(Vec::new());
        }
        let until = *s.wal_position.lock();
        let floor = s.wal_floors.lock().get(&partition).copied();
        let mut got = crate::wal::read_partition(
            &s.dir.join("wal"),
            partition,
            from_seq,
            until,
            floor,
            max_bytes,
        )?;
        // This node ships them as the partition's primary at its current epoch.
        let current = s.epochs[partition as usize].load(Ordering::Acquire);
        for r in &mut got {
            r.sender_epoch = current.max(r.epoch);
        }
        if got.is_empty() {
            // Records below `next` exist by definition; none left means they are gone.
            return Err(Error::WalTruncated {
                partition,
                from_seq,
                oldest: next,
            });
        }
        Ok(got)
    }

    /// Write rows and wait until they are durable. Blocking: do not call from async code.
    pub fn insert(&self, table: &str, batch: RecordBatch) -> Result<WriteReceipt> {
        self.write(table, batch)?.wait()
    }

    /// Read rows (see [`ScanRequest`]).
    pub fn scan(&self, req: &ScanRequest) -> Result<TableScan> {
        let s = self.shared();
        let t = s.table(&req.table)?;
        let columns: Vec<usize> = match &req.columns {
            Some(c) => {
                if let Some(bad) = c.iter().find(|&&i| i >= t.schema.columns.len()) {
                    return Err(Error::InvalidInput(format!(
                        "column index {bad} out of range for table '{}'",
                        t.schema.name
                    )));
                }
                c.clone()
            }
            None => (0..t.schema.columns.len()).collect(),
        };
        let schema = Arc::new(t.arrow_schema.project(&columns)?);
        // Each partition once, in order, whatever the caller passed.
        let parts: Vec<u32> = match &req.partitions {
            Some(p) => {
                let mut p = p.clone();
                p.sort_unstable();
                p.dedup();
                p
            }
            None => (0..s.config.partitions).collect(),
        };
        let mut stats = ScanStats {
            partitions_total: s.config.partitions,
            ..ScanStats::default()
        };
        let mut chunks = Vec::new();
        if !req.time_range.is_empty() {
            for &p in &parts {
                if p >= s.config.partitions {
                    continue;
                }
                stats.partitions_scanned += 1;
                let got = t.scan_partition(
                    p,
                    &req.time_range,
                    &columns,
                    &schema,
                    &mut stats.chunks_total,
                )?;
                chunks.extend(got);
            }
        }
        stats.chunks_scanned = chunks.len() as u64;
        stats.rows_scanned = chunks.iter().map(|c| c.num_rows() as u64).sum();
        Ok(TableScan {
            table: t.schema.clone(),
            schema,
            columns,
            chunks,
            stats,
        })
    }

    /// How many rows a scan would return, without building a single batch (`count(*)`).
    /// Uses the same pruning as [`Db::scan`]; `columns` is ignored.
    pub fn count_rows(&self, req: &ScanRequest) -> Result<(u64, ScanStats)> {
        let s = self.shared();
        let t = s.table(&req.table)?;
        let mut parts: Vec<u32> = match &req.partitions {
            Some(p) => p.clone(),
            None => (0..s.config.partitions).collect(),
        };
        parts.sort_unstable();
        parts.dedup();
        let mut stats = ScanStats {
            partitions_total: s.config.partitions,
            ..ScanStats::default()
        };
        if !req.time_range.is_empty() {
            for p in parts.into_iter().filter(|&p| p < s.config.partitions) {
                stats.partitions_scanned += 1;
                let (rows, chunks) =
                    t.count_partition(p, &req.time_range, &mut stats.chunks_total)?;
                stats.rows_scanned += rows;
                stats.chunks_scanned += chunks;
            }
        }
        Ok((stats.rows_scanned, stats))
    }

    /// Check every HDB file's values against its content checksum now (blocking; reads every
    /// file not checked yet, at the disk's speed). `progress` is called after each file. A
    /// corrupt file is reported (and from now on fails every read of it), not an error.
    pub fn verify_files(&self, progress: &mut dyn FnMut(&VerifyReport)) -> Result<VerifyReport> {
        let files = disk_files(self.shared());
        let mut report = VerifyReport {
            files: files.len() as u64,
            ..VerifyReport::default()
        };
        for (table, partition, d) in files {
            let before = d.verified().is_some();
            match d.verify() {
                Verified::Good if before => report.checked_before += 1,
                Verified::Good => {
                    report.checked_now += 1;
                    report.bytes_checked += d.file_bytes;
                }
                Verified::NoChecksum => report.without_checksum += 1,
                Verified::Corrupt { reason, .. } => report.corrupt.push(CorruptFile {
                    table,
                    partition,
                    path: d.rel_path.clone(),
                    reason: reason.clone(),
                }),
            }
            progress(&report);
        }
        Ok(report)
    }

    /// Partitions holding an HDB file known to be corrupt (found by a read, the background
    /// check or [`Db::verify_files`]; nothing is read here). Free while no file in the
    /// process was ever found corrupt; otherwise it walks every chunk under the partitions'
    /// read locks, so callers on a hot path cache the answer.
    pub fn corrupt_partitions(&self) -> std::collections::BTreeSet<u32> {
        if !crate::hdb::any_corrupt() {
            return std::collections::BTreeSet::new();
        }
        disk_files(self.shared())
            .into_iter()
            .filter(|(_, _, d)| matches!(d.verified(), Some(Verified::Corrupt { .. })))
            .map(|(_, p, _)| p)
            .collect()
    }

    /// Take a checkpoint now (blocking). Concurrent calls run one after the other.
    pub fn checkpoint(&self) -> Result<CheckpointInfo> {
        maintenance::checkpoint(&self.inner.shared, &self.inner.ring)
    }

    /// Seal every memory chunk and write it to HDB now (blocking). Returns the number of
    /// chunks flushed.
    pub fn flush(&self) -> Result<usize> {
        maintenance::flush_all(&self.inner.shared)
    }

    /// `Ok` while the engine can accept and make durable writes.
    pub fn health(&self) -> Result<()> {
        let s = self.shared();
        if let Some(p) = s.poisoned.lock().clone() {
            return Err(Error::WalPoisoned(p));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let busy = s.writer_busy_since.load(Ordering::Acquire);
        if busy != 0 && s.now_ms().saturating_sub(busy) > 30_000 {
            return Err(Error::WalPoisoned(format!(
                "the WAL writer has been stuck on one group commit for {} s",
                (s.now_ms() - busy) / 1000
            )));
        }
        Ok(())
    }

    /// Counters and sizes.
    pub fn stats(&self) -> DbStats {
        let s = self.shared();
        let mut st = DbStats {
            partitions: s.config.partitions,
            ..DbStats::default()
        };
        for t in s.tables.read().values() {
            st.tables += 1;
            for p in &t.partitions {
                for c in &p.read().chunks {
                    match c {
                        Chunk::Mem(m) => {
                            st.memory_chunks += 1;
                            st.memory_rows += m.rows as u64;
                            st.memory_bytes += m.bytes as u64;
                        }
                        Chunk::Disk(d) => {
                            st.disk_chunks += 1;
                            st.disk_rows += d.rows;
                            st.disk_bytes += d.file_bytes;
                            match d.verified() {
                                Some(Verified::Good) => st.disk_chunks_verified += 1,
                                Some(Verified::Corrupt { .. }) => st.disk_chunks_corrupt += 1,
                                Some(Verified::NoChecksum) | None => {}
                            }
                        }
                    }
                }
            }
        }
        let c = &s.counters;
        st.rows_written = c.rows_written.load(Ordering::Relaxed);
        st.bytes_written = c.bytes_written.load(Ordering::Relaxed);
        st.write_requests = c.write_requests.load(Ordering::Relaxed);
        st.write_errors = c.write_errors.load(Ordering::Relaxed);
        st.checkpoints = c.checkpoints.load(Ordering::Relaxed);
        st.flushes = c.flushes.load(Ordering::Relaxed);
        st.compactions = c.compactions.load(Ordering::Relaxed);
        st.ring_depth = self.inner.ring.depth();
        st.ring_bytes = s.queued_bytes.load(Ordering::Relaxed);
        let w = &s.wal_stats;
        st.wal_fsyncs = w.fsyncs.load(Ordering::Relaxed);
        st.wal_fsync_seconds_total = w.fsync_nanos_total.load(Ordering::Relaxed) as f64 / 1e9;
        let mut cum = 0;
        st.wal_fsync_histogram = FSYNC_BUCKETS_US
            .iter()
            .zip(&w.fsync_buckets)
            .map(|(&b, n)| {
                cum += n.load(Ordering::Relaxed);
                let le = if b == u64::MAX {
                    f64::INFINITY
                } else {
                    b as f64 / 1e6
                };
                (le, cum)
            })
            .collect();
        st.wal_bytes = w.bytes_written.load(Ordering::Relaxed);
        st.wal_records = w.records_written.load(Ordering::Relaxed);
        let pos = *s.wal_position.lock();
        st.wal_segment = pos.segment;
        st.wal_offset = pos.offset;
        st.last_checkpoint = s.last_checkpoint.lock().clone();
        st.checkpoint_age_ms = s
            .now_ms()
            .saturating_sub(s.last_checkpoint_ms.load(Ordering::Relaxed));
        st.poisoned = s.poisoned.lock().clone();
        st
    }

    /// Stop accepting writes, finish the queued ones, take a final checkpoint and stop the
    /// background threads.
    pub fn close(&self) -> Result<()> {
        if !self.inner.accepting.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let result = if self.shared().poisoned.lock().is_none() {
            self.checkpoint().map(|_| ())
        } else {
            Ok(())
        };
        self.inner.stop_threads();
        result
    }
}

#[cfg(test)]
mod tests;
