//! The write-ahead log: numbered segment files of checksummed records, one writer.
//!
//! Hot path: the writer appends a whole group of records with one `write` and makes them
//! durable with one `fdatasync` (group commit); the frame buffer is reused between groups.
//!
//! ```text
//! segment := header record* END [zero or stale bytes]
//! header  := "ZWAL" | format_version:u32 | segment_id:u64 | created_unix_ms:u64 | crc32c:u32 | 0:u32   (32 bytes)
//! record  := len:u32 | crc32c:u32 | partition:u32 | epoch:u64 | seq:u64 | payload[len]             (28 + len bytes)
//!            crc32c covers segment_id:u64 | partition | epoch | seq | payload
//!            partition bit 31 set: more records of the same write follow (a write that spans
//!            partitions is several records, delivered by replay only when its last is read)
//! END     := a record with partition = u32::MAX and payload "END": the segment ended cleanly
//! ```
//! Seeding the checksum with the segment id makes records left in a recycled segment from
//! its previous life invalid, so a reused file needs no zeroing. A segment other than the
//! last one that stops without an END record was damaged; the last one may stop anywhere
//! (a torn tail from a crash). Replay keeps every record before the first damage, reports
//! the file and offset, writes END there, and moves any later segments aside.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::faults::Faults;
use crate::fsutil::fsync_dir;

pub(crate) const SEGMENT_HEADER_LEN: u64 = 32;
pub(crate) const RECORD_HEADER_LEN: usize = 28;
const MAGIC: &[u8; 4] = b"ZWAL";
/// WAL format version written in every segment header.
pub(crate) const WAL_FORMAT_VERSION: u32 = 1;
const CONTROL_PARTITION: u32 = u32::MAX;
const END_PAYLOAD: &[u8] = b"END";
const END_RECORD_LEN: u64 = RECORD_HEADER_LEN as u64 + 3;
/// No record may be larger than this (a length field above it is damage, not data).
pub(crate) const MAX_RECORD_LEN: usize = 1 << 30;

/// A place in the log: the byte offset inside a segment.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WalPosition {
    pub segment: u64,
    pub offset: u64,
}

/// The fixed fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    /// More records of the same write follow this one.
    pub(crate) continues: bool,
}

/// Bit 31 of the partition field: `continues`.
const CONTINUES_BIT: u32 = 1 << 31;

impl RecordMeta {
    fn partition_field(&self) -> u32 {
        if self.partition == CONTROL_PARTITION {
            return CONTROL_PARTITION;
        }
        self.partition | if self.continues { CONTINUES_BIT } else { 0 }
    }

    fn from_fields(field: u32, epoch: u64, seq: u64) -> RecordMeta {
        let (partition, continues) = if field == CONTROL_PARTITION {
            (CONTROL_PARTITION, false)
        } else {
            (field & !CONTINUES_BIT, field & CONTINUES_BIT != 0)
        };
        RecordMeta {
            partition,
            epoch,
            seq,
            continues,
        }
    }
}

/// Counters the writer keeps for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct WalStats {
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_nanos_total: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) records_written: AtomicU64,
    pub(crate) segments_created: AtomicU64,
    pub(crate) segments_recycled: AtomicU64,
    /// Histogram of fsync latencies: bucket i counts fsyncs <= FSYNC_BUCKETS_US[i] µs.
    pub(crate) fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len()],
}

/// Upper bounds (µs) of the fsync latency histogram buckets.
pub(crate) const FSYNC_BUCKETS_US: [u64; 12] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    100_000,
    1_000_000,
    u64::MAX,
];

impl WalStats {
    fn record_fsync(&self, nanos: u64) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos_total.fetch_add(nanos, Ordering::Relaxed);
        let us = nanos / 1_000;
        let i = FSYNC_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(FSYNC_BUCKETS_US.len() - 1);
        self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:08}.wal"))
}

/// The segment files in `dir`, by id.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(Error::io(
                format!("list WAL directory {}", dir.display()),
                e,
            ))
        }
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("list WAL directory {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".wal") {
            if let Ok(id) = stem.parse::<u64>() {
                out.push((id, entry.path()));
            }
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

fn segment_header(id: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&id.to_le_bytes());
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    h[16..24].copy_from_slice(&ms.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

fn check_segment_header(h: &[u8], id: u64) -> std::result::Result<(), String> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err("segment shorter than its header".into());
    }
    if &h[0..4] != MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc != crc32c::crc32c(&h[0..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if version > WAL_FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}; this build reads up to {WAL_FORMAT_VERSION}"
        ));
    }
    let found = u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]));
    if found != id {
        return Err(format!("segment header names segment {found}"));
    }
    Ok(())
}

/// The format version of a segment header that is intact but newer than this build.
fn newer_version(h: &[u8]) -> Option<u32> {
    if h.len() < SEGMENT_HEADER_LEN as usize || &h[0..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    let version = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (crc == crc32c::crc32c(&h[0..24]) && version > WAL_FORMAT_VERSION).then_some(version)
}

fn record_crc(segment: u64, meta: &RecordMeta, payload: &[u8]) -> u32 {
    let mut fixed = [0u8; 28];
    fixed[0..8].copy_from_slice(&segment.to_le_bytes());
    fixed[8..12].copy_from_slice(&meta.partition_field().to_le_bytes());
    fixed[12..20].copy_from_slice(&meta.epoch.to_le_bytes());
    fixed[20..28].copy_from_slice(&meta.seq.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&fixed), payload)
}

/// Append one framed record to `out`.
pub(crate) fn frame_record(out: &mut Vec<u8>, segment: u64, meta: &RecordMeta, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record_crc(segment, meta, payload).to_le_bytes());
    out.extend_from_slice(&meta.partition_field().to_le_bytes());
    out.extend_from_slice(&meta.epoch.to_le_bytes());
    out.extend_from_slice(&meta.seq.to_le_bytes());
    out.extend_from_slice(payload);
}

const END_META: RecordMeta = RecordMeta {
    partition: CONTROL_PARTITION,
    epoch: 0,
    seq: 0,
    continues: false,
};

/// The single appender of the log. Owned by the writer thread.
#[derive(Debug)]
pub(crate) struct WalWriter {
    dir: PathBuf,
    segment_size: u64,
    faults: Arc<Faults>,
    stats: Arc<WalStats>,
    /// Obsolete segment files that may be reused as new segments.
    recycle: Arc<Mutex<Vec<PathBuf>>>,
    file: File,
    segment: u64,
    offset: u64,
    buf: Vec<u8>,
}

impl WalWriter {
    /// Start a new segment `id` and append there.
    pub(crate) fn create(
        dir: &Path,
        id: u64,
        segment_size: u64,
        faults: Arc<Faults>,
        stats: Arc<WalStats>,
        recycle: Arc<Mutex<Vec<PathBuf>>>,
    ) -> Result<WalWriter> {
        let file = new_segment_file(dir, id, segment_size, &recycle, &stats, &faults)?;
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            segment_size,
            faults,
            stats,
            recycle,
            file,
            segment: id,
            offset: SEGMENT_HEADER_LEN,
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// Where the next record will go (the end of everything written).
    pub(crate) fn position(&self) -> WalPosition {
        WalPosition {
            segment: self.segment,
            offset: self.offset,
        }
    }

    /// Write a group of records after the current position. They are NOT durable until
    /// [`WalWriter::sync`] returns. On error nothing of the group counts as written and the
    /// position is unchanged (later groups overwrite whatever partial bytes landed).
    pub(crate) fn append_unsynced(&mut self, records: &[(RecordMeta, &[u8])]) -> Result<()> {
        let total: u64 = records
            .iter()
            .map(|(_, p)| (RECORD_HEADER_LEN + p.len()) as u64)
            .sum();
        if self.offset > SEGMENT_HEADER_LEN
            && self.offset + total + END_RECORD_LEN > self.segment_size
        {
            self.roll()?;
        }
        self.buf.clear();
        for (meta, payload) in records {
            frame_record(&mut self.buf, self.segment, meta, payload);
        }
        self.faults.check("wal::write")?;
        self.file.write_all_at(&self.buf, self.offset).ctx(|| {
            format!(
                "write {} bytes to WAL segment {}",
                self.buf.len(),
                self.segment
            )
        })?;
        self.offset += self.buf.len() as u64;
        self.stats
            .bytes_written
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.stats
            .records_written
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Make everything written so far durable (fdatasync).
    pub(crate) fn sync(&mut self) -> Result<()> {
        let t = Instant::now();
        self.faults.check("wal::fsync")?;
        self.file
            .sync_data()
            .ctx(|| format!("fdatasync WAL segment {}", self.segment))?;
        self.stats.record_fsync(t.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Close the current segment with END and continue in a new one.
    pub(crate) fn roll(&mut self) -> Result<()> {
        self.buf.clear();
        frame_record(&mut self.buf, self.segment, &END_META, END_PAYLOAD);
        self.file
            .write_all_at(&self.buf, self.offset)
            .ctx(|| format!("write END to WAL segment {}", self.segment))?;
        self.sync()?;
        let next = self.segment + 1;
        let file = new_segment_file(
            &self.dir,
            next,
            self.segment_size,
            &self.recycle,
            &self.stats,
            &self.faults,
        )?;
        self.file = file;
        self.segment = next;
        self.offset = SEGMENT_HEADER_LEN;
        Ok(())
    }
}

/// Create segment `id`, reusing a recycled file when there is one, with its header
/// written and fsynced and its directory entry durable.
fn new_segment_file(
    dir: &Path,
    id: u64,
    size: u64,
    recycle: &Mutex<Vec<PathBuf>>,
    stats: &WalStats,
    faults: &Faults,
) -> Result<File> {
    faults.check("wal::new_segment")?;
    let path = segment_path(dir, id);
    faults.check("wal::preallocate")?;
    let reused = recycle.lock().pop();
    let file = match reused {
        Some(old) => {
            fs::rename(&old, &path)
                .ctx(|| format!("reuse {} as {}", old.display(), path.display()))?;
            stats.segments_recycled.fetch_add(1, Ordering::Relaxed);
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .ctx(|| format!("open WAL segment {}", path.display()))?
        }
        None => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .ctx(|| format!("create WAL segment {}", path.display()))?;
            stats.segments_created.fetch_add(1, Ordering::Relaxed);
            f
        }
    };
    let ready = preallocate(&file, size)
        .ctx(|| format!("preallocate WAL segment {}", path.display()))
        .and_then(|()| {
            file.write_all_at(&segment_header(id), 0)
                .ctx(|| format!("write header of WAL segment {}", path.display()))
        })
        .and_then(|()| {
            file.sync_all()
                .ctx(|| format!("fsync WAL segment {}", path.display()))
        })
        .and_then(|()| fsync_dir(dir));
    if let Err(e) = ready {
        // Leave nothing half-made behind: the next roll tries again from scratch (e.g. once
        // the disk has room).
        drop(file);
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

fn preallocate(f: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size).unwrap_or(libc::off_t::MAX);
    // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate (tmpfs on old kernels, some overlays): sparse file.
        libc::EOPNOTSUPP | libc::EINVAL => f.set_len(size),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Where replay found the log damaged or torn.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    pub(crate) path: PathBuf,
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) reason: String,
    /// True for the expected shape of a crash: the last segment stops mid-record.
    pub(crate) torn_tail: bool,
}

/// What replay found.
#[derive(Debug)]
pub(crate) struct ReplayOutcome {
    /// Position after the last good record (where the log continues).
    pub(crate) end: WalPosition,
    /// True when the segment at `end` is already closed with END.
    pub(crate) end_closed: bool,
    pub(crate) damage: Option<Damage>,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    /// Segment ids after the damage, which repair moves aside.
    pub(crate) discarded_segments: Vec<u64>,
    /// The highest segment id present on disk (0 = none).
    pub(crate) max_segment: u64,
    /// Writes whose records were only partly in the log (never acknowledged; dropped).
    pub(crate) incomplete_writes: u64,
}

/// Read every record from `from` on, in order, and hand it to `apply`.
/// `from.segment == 0` means "from the first segment".
pub(crate) fn replay(
    dir: &Path,
    from: WalPosition,
    mut apply: impl FnMut(RecordMeta, &[u8], WalPosition) -> Result<()>,
) -> Result<ReplayOutcome> {
    let segments = list_segments(dir)?;
    let max_segment = segments.last().map(|(id, _)| *id).unwrap_or(0);
    let mut out = ReplayOutcome {
        end: from,
        end_closed: false,
        damage: None,
        records: 0,
        bytes: 0,
        discarded_segments: Vec::new(),
        max_segment,
        incomplete_writes: 0,
    };
    let todo: Vec<&(u64, PathBuf)> = segments
        .iter()
        .filter(|(id, _)| from.segment == 0 || *id >= from.segment)
        .collect();
    if from.segment != 0 && todo.first().is_some_and(|(id, _)| *id != from.segment) {
        // The checkpoint's segment is gone but later ones exist: we cannot know what was in it.
        let (id, path) = todo[0];
        out.damage = Some(Damage {
            path: path.clone(),
            segment: *id,
            offset: 0,
            reason: format!(
                "WAL segment {} is missing before segment {id}",
                from.segment
            ),
            torn_tail: false,
        });
        out.discarded_segments = todo.iter().map(|(id, _)| *id).collect();
        return Ok(out);
    }
    let mut buf = Vec::new();
    let mut prev_id: Option<u64> = None;
    for (i, (id, path)) in todo.iter().enumerate() {
        let id = *id;
        let is_last = i + 1 == todo.len();
        if let Some(p) = prev_id {
            if id != p + 1 {
                out.damage = Some(Damage {
                    path: path.clone(),
                    segment: id,
                    offset: 0,
                    reason: format!("WAL segments {} to {} are missing", p + 1, id - 1),
                    torn_tail: false,
                });
                out.discarded_segments = todo[i..].iter().map(|(id, _)| *id).collect();
                return Ok(out);
            }
        }
        prev_id = Some(id);
        buf.clear();
        let mut f = File::open(path).ctx(|| format!("open WAL segment {}", path.display()))?;
        std::io::Read::read_to_end(&mut f, &mut buf)
            .ctx(|| format!("read WAL segment {}", path.display()))?;
        if let Some(found) = newer_version(&buf) {
            return Err(Error::UnsupportedVersion {
                path: path.clone(),
                found,
                supported: WAL_FORMAT_VERSION,
            });
        }
        if let Err(reason) = check_segment_header(&buf, id) {
            // A crash while creating the newest segment leaves a bad header: the previous
            // segment ended with END, so nothing is lost.
            let zero_header = buf
                .iter()
                .take(SEGMENT_HEADER_LEN as usize)
                .all(|&b| b == 0);
            let torn = is_last && (zero_header || out.end_closed);
            out.damage = Some(Damage {
                path: path.clone(),
                segment: id,
                offset: 0,
                reason,
                torn_tail: torn,
            });
            out.discarded_segments = todo[i..].iter().map(|(id, _)| *id).collect();
            return Ok(out);
        }
        let mut pos = if id == from.segment {
            from.offset.max(SEGMENT_HEADER_LEN)
        } else {
            SEGMENT_HEADER_LEN
        } as usize;
        out.end = WalPosition {
            segment: id,
            offset: pos as u64,
        };
        out.end_closed = false;
        // Records of a write that is not complete yet: (meta, record offset, payload range).
        let mut pending: Vec<(RecordMeta, usize, std::ops::Range<usize>)> = Vec::new();
        loop {
            let rec = read_record(&buf, pos, id);
            if let Ok(Some((meta, payload, next))) = rec {
                if meta.partition == CONTROL_PARTITION {
                    if payload == END_PAYLOAD {
                        if drop_incomplete(&mut pending, &mut out, id, path) {
                            // END after half a write: repair closes the segment earlier.
                            out.end_closed = false;
                        } else {
                            out.end_closed = true;
                            out.end.offset = next as u64;
                        }
                        break;
                    }
                    // Unknown control records are skipped (forward compatible).
                } else {
                    let start = next - payload.len();
                    pending.push((meta, pos, start..next));
                    if !meta.continues {
                        for (m, at, range) in pending.drain(..) {
                            let at = WalPosition {
                                segment: id,
                                offset: at as u64,
                            };
                            apply(m, &buf[range.clone()], at)?;
                            out.records += 1;
                            out.bytes += range.len() as u64;
                        }
                    }
                }
                pos = next;
                if pending.is_empty() {
                    out.end.offset = pos as u64;
                }
                continue;
            }
            let reason = rec.err();
            drop_incomplete(&mut pending, &mut out, id, path);
            if is_last {
                // The newest segment may stop anywhere: a crash tore its tail.
                if let Some(reason) = reason {
                    out.damage = Some(Damage {
                        path: path.clone(),
                        segment: id,
                        offset: pos as u64,
                        reason,
                        torn_tail: true,
                    });
                }
                break;
            }
            out.damage = Some(Damage {
                path: path.clone(),
                segment: id,
                offset: pos as u64,
                reason: reason.unwrap_or_else(|| "segment ends without END record".to_string()),
                torn_tail: false,
            });
            out.discarded_segments = todo[i + 1..].iter().map(|(id, _)| *id).collect();
            return Ok(out);
        }
    }
    Ok(out)
}

/// Forget the records of a write whose last record never made it: the write was never
/// acknowledged and must not be half applied. `out.end` still points at its first record,
/// so repair cuts them off. Returns true when there were such records.
fn drop_incomplete(
    pending: &mut Vec<(RecordMeta, usize, std::ops::Range<usize>)>,
    out: &mut ReplayOutcome,
    segment: u64,
    path: &Path,
) -> bool {
    let Some((_, first, _)) = pending.first() else {
        return false;
    };
    tracing::info!(
        segment,
        offset = first,
        records = pending.len(),
        path = %path.display(),
        "dropping the records of an incomplete write at the end of the WAL"
    );
    out.incomplete_writes += 1;
    pending.clear();
    true
}

/// A decoded record: its fields, its payload, and the offset just after it.
type RecordAt<'a> = (RecordMeta, &'a [u8], usize);

/// Decode the record at `pos`: `Ok(None)` at a clean end (zeros or no room for a header),
/// `Err(reason)` for a record that is torn or fails its checksum.
fn read_record(
    buf: &[u8],
    pos: usize,
    segment: u64,
) -> std::result::Result<Option<RecordAt<'_>>, String> {
    let Some(h) = buf.get(pos..pos + RECORD_HEADER_LEN) else {
        return if buf[pos.min(buf.len())..].iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err("torn record header".into())
        };
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 && crc == 0 {
        return Ok(None);
    }
    if len > MAX_RECORD_LEN {
        return Err(format!("record length {len} is impossible"));
    }
    let meta = RecordMeta::from_fields(
        u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
        u64::from_le_bytes(h[12..20].try_into().unwrap_or([0; 8])),
        u64::from_le_bytes(h[20..28].try_into().unwrap_or([0; 8])),
    );
    let start = pos + RECORD_HEADER_LEN;
    let Some(payload) = buf.get(start..start + len) else {
        return Err(format!(
            "torn record: {len} payload bytes announced, {} present",
            buf.len() - start
        ));
    };
    if record_crc(segment, &meta, payload) != crc {
        return Err("record checksum mismatch".into());
    }
    Ok(Some((meta, payload, start + len)))
}

/// Make the log well formed after replay: close the last good segment with END right after
/// its last good record (cutting off the torn or damaged tail, kept in a `.damaged` copy when
/// it was not a plain torn tail), and move segments after a damage aside. Returns the id the
/// next segment must take.
pub(crate) fn repair(dir: &Path, outcome: &ReplayOutcome) -> Result<u64> {
    if let Some(d) = &outcome.damage {
        if !d.torn_tail && d.path.exists() {
            let copy = d.path.with_extension("wal.damaged");
            fs::copy(&d.path, &copy)
                .ctx(|| format!("keep a copy of damaged {}", d.path.display()))?;
        }
    }
    for id in &outcome.discarded_segments {
        let path = segment_path(dir, *id);
        if path.exists() && outcome.end.segment != *id {
            let aside = path.with_extension("wal.damaged");
            fs::rename(&path, &aside).ctx(|| format!("move {} aside", path.display()))?;
        }
    }
    let end = outcome.end;
    let path = segment_path(dir, end.segment);
    if end.segment != 0 && path.exists() && !outcome.end_closed {
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .ctx(|| format!("open {} to close it", path.display()))?;
        let mut buf = Vec::new();
        frame_record(&mut buf, end.segment, &END_META, END_PAYLOAD);
        f.write_all_at(&buf, end.offset)
            .ctx(|| format!("write END to {}", path.display()))?;
        f.set_len(end.offset + buf.len() as u64)
            .ctx(|| format!("truncate {}", path.display()))?;
        f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
    }
    fsync_dir(dir)?;
    Ok(outcome.max_segment.max(end.segment) + 1)
}

/// The records of `partition` with `seq >= from_seq`, read from the segments up to `until`
/// (the durable end), about `max_bytes` of payload at most (at least one record). Records
/// of the partition before `floor` (the cut of a partition import) are ignored: they belong
/// to the history the import replaced.
pub(crate) fn read_partition(
    dir: &Path,
    partition: u32,
    from_seq: u64,
    until: WalPosition,
    floor: Option<WalPosition>,
    max_bytes: usize,
) -> Result<Vec<crate::ingest::ReplicatedRecord>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut oldest: Option<u64> = None;
    let mut buf = Vec::new();
    for (id, path) in list_segments(dir)? {
        if id > until.segment {
            break;
        }
        if floor.is_some_and(|f| id < f.segment) {
            continue;
        }
        buf.clear();
        match File::open(&path) {
            Ok(mut f) => {
                std::io::Read::read_to_end(&mut f, &mut buf)
                    .ctx(|| format!("read WAL segment {}", path.display()))?;
            }
            // Recycled by a checkpoint while we looked: treat as gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
        }
        if check_segment_header(&buf, id).is_err() {
            continue;
        }
        let end = if id == until.segment {
            (until.offset as usize).min(buf.len())
        } else {
            buf.len()
        };
        let mut pos = SEGMENT_HEADER_LEN as usize;
        while pos < end {
            let at = WalPosition {
                segment: id,
                offset: pos as u64,
            };
            let Ok(Some((meta, payload, next))) = read_record(&buf[..end], pos, id) else {
                break;
            };
            pos = next;
            if meta.partition != partition || floor.is_some_and(|f| at < f) {
                continue;
            }
            oldest.get_or_insert(meta.seq);
            if meta.seq >= from_seq {
                bytes += payload.len();
                out.push(crate::ingest::ReplicatedRecord {
                    partition,
                    epoch: meta.epoch,
                    seq: meta.seq,
                    // The caller (the primary) sets its current epoch.
                    sender_epoch: meta.epoch,
                    prev_epoch: None,
                    payload: bytes::Bytes::copy_from_slice(payload),
                });
                if bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
    }
    match (out.first(), oldest) {
        (Some(r), _) if r.seq == from_seq => Ok(out),
        (None, None) => Ok(out),
        (first, oldest) => Err(Error::WalTruncated {
            partition,
            from_seq,
            oldest: first.map(|r| r.seq).or(oldest).unwrap_or(from_seq),
        }),
    }
}

/// Segments whose every record lies before `pos`: safe to delete or recycle.
pub(crate) fn obsolete_segments(dir: &Path, pos: WalPosition) -> Result<Vec<(u64, PathBuf)>> {
    Ok(list_segments(dir)?
        .into_iter()
        .filter(|(id, _)| *id < pos.segment)
        .collect())
}

#[cfg(test)]
mod tests;
