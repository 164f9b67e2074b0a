//! HDB: sealed chunks as Arrow IPC files (uncompressed, 64-byte aligned buffers), written
//! atomically and read back zero-copy through mmap.
//!
//! Layout: `hdb/<table>/<partition>/<bucket>_<seq>.arrow`. The file is a plain Arrow IPC
//! file: pyarrow, polars or DuckDB open it as it is. Its schema metadata carries
//! `zepto.min_ts`, `zepto.max_ts` and `zepto.rows`; the checkpoint manifest repeats them so
//! that pruning never opens a file. Rows inside a file are sorted by timestamp.
//!
//! Content checksum: the footer's custom metadata carries `zepto.crc32c` (CRC-32C of the
//! file's first `zepto.crc32c_bytes` bytes: the schema and every record batch, so every
//! value). Opening a file checks only its structure (the footer and the batches' metadata,
//! which the mapping serves without reading the values); the values are checked once, the
//! first time anything reads them (a scan, an export for a copy or a backup) or when
//! [`crate::Db::verify_files`] is asked to. A mismatch is [`Error::Corrupt`] naming the file,
//! for every read of it from then on. Files written before the checksum existed have none
//! and are read unchecked (counted as such by `verify_files`).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::buffer::Buffer;
use arrow::ipc::convert::try_fb_to_schema;
use arrow::ipc::reader::{read_footer_length, FileDecoder};
use arrow::ipc::writer::{FileWriter, IpcWriteOptions};
use arrow::ipc::{root_as_footer, Block};
use arrow::record_batch::RecordBatch;

use crate::batch::timestamps;
use crate::error::{Error, IoContext, Result};
use crate::faults::Faults;
use crate::fsutil::{create_dir_durable, fsync_dir};
use crate::rdb::Piece;
use crate::schema::TableSchema;

/// Rows per record batch inside an HDB file.
const FILE_BATCH_ROWS: usize = 128 * 1024;

/// Footer metadata key: the CRC-32C of the file's first `CRC_BYTES_KEY` bytes, 8 hex digits.
const CRC_KEY: &str = "zepto.crc32c";
/// Footer metadata key: how many bytes from the file's start [`CRC_KEY`] covers.
const CRC_BYTES_KEY: &str = "zepto.crc32c_bytes";

/// A file's recorded content checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checksum {
    crc: u32,
    len: usize,
}

impl Checksum {
    /// Check `file` (the whole file) against the checksum.
    fn check(&self, path: &Path, file: &[u8]) -> Result<()> {
        let Some(content) = file.get(..self.len) else {
            return Err(corrupt(
                path,
                0,
                format!(
                    "content checksum covers {} bytes, the file has {}",
                    self.len,
                    file.len()
                ),
            ));
        };
        let got = crc32c::crc32c(content);
        if got != self.crc {
            return Err(corrupt(
                path,
                0,
                format!(
                    "content checksum mismatch (recorded {:08x}, computed {got:08x}): the \
                     file changed after it was written",
                    self.crc
                ),
            ));
        }
        Ok(())
    }
}

/// A writer that keeps the CRC-32C and the count of the bytes written through it.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
    len: usize,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Set once any chunk file in this process was found corrupt: until then a lookup of the
/// corrupt files (replication asks on every call) needs no walk over every chunk.
static ANY_CORRUPT: AtomicBool = AtomicBool::new(false);

/// Whether any chunk file in this process was ever found corrupt.
pub(crate) fn any_corrupt() -> bool {
    ANY_CORRUPT.load(Ordering::Relaxed)
}

/// What checking a file's values found (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verified {
    /// The values match the file's checksum (or this process wrote the file).
    Good,
    /// The file predates checksums: nothing to check against.
    NoChecksum,
    /// The file is damaged (its values do not match, or it does not decode): where and why,
    /// for every read from now on.
    Corrupt { offset: u64, reason: String },
}

/// A chunk stored in an HDB file, mapped into memory.
#[derive(Debug)]
pub(crate) struct DiskChunk {
    pub(crate) bucket: i64,
    pub(crate) seq: u32,
    /// Path relative to the data directory.
    pub(crate) rel_path: String,
    /// The batches, pointing into `file`: read them through [`DiskChunk::pieces`], which
    /// checks the values first.
    pieces: Vec<Piece>,
    pub(crate) min: i64,
    pub(crate) max: i64,
    pub(crate) rows: u64,
    pub(crate) file_bytes: u64,
    /// The whole mapped file.
    file: Buffer,
    path: PathBuf,
    checksum: Option<Checksum>,
    verified: OnceLock<Verified>,
    /// Set when a later check ([`DiskChunk::recheck`]) of a file found good before found it
    /// changed: from then on it is corrupt for every read.
    damaged: OnceLock<Verified>,
}

/// The relative path of a chunk file.
pub(crate) fn chunk_rel_path(table: &str, partition: u32, bucket: i64, seq: u32) -> String {
    format!("hdb/{table}/{partition}/{bucket}_{seq}.arrow")
}

/// Write a sorted batch as an IPC file at `data_dir/rel_path`, durably and atomically.
/// Returns the file size.
pub(crate) fn write_chunk_file(
    data_dir: &Path,
    rel_path: &str,
    batch: &RecordBatch,
    min: i64,
    max: i64,
    faults: &Faults,
) -> Result<u64> {
    let path = data_dir.join(rel_path);
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal(format!("chunk path {rel_path} has no parent")))?;
    create_dir_durable(dir)?;
    let tmp = path.with_extension("arrow.tmp");
    write_ipc_file(&tmp, batch, min, max)?;
    faults.check("hdb::before_rename")?;
    fs::rename(&tmp, &path).ctx(|| format!("rename {} into place", tmp.display()))?;
    fsync_dir(dir)?;
    let size = fs::metadata(&path)
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    Ok(size)
}

/// Write `batch` to `path` as an Arrow IPC file and fsync it (no rename).
pub(crate) fn write_ipc_file(path: &Path, batch: &RecordBatch, min: i64, max: i64) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("zepto.min_ts".to_string(), min.to_string());
    meta.insert("zepto.max_ts".to_string(), max.to_string());
    meta.insert("zepto.rows".to_string(), batch.num_rows().to_string());
    meta.insert("zepto.format".to_string(), "1".to_string());
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    let opts = IpcWriteOptions::default(); // 64-byte alignment, metadata V5, no compression
    let out = CrcWriter {
        inner: std::io::BufWriter::new(file),
        crc: 0,
        len: 0,
    };
    let mut w = FileWriter::try_new_with_options(out, &schema, opts)?;
    let mut off = 0;
    while off < batch.num_rows() || off == 0 {
        let n = FILE_BATCH_ROWS.min(batch.num_rows() - off);
        let part = batch.slice(off, n);
        let part = RecordBatch::try_new(schema.clone(), part.columns().to_vec())?;
        w.write(&part)?;
        off += n;
        if n == 0 {
            break;
        }
    }
    // Everything written so far (schema, dictionaries, batches) is covered; `finish` adds
    // the end-of-stream marker and the footer that records the checksum.
    let (crc, len) = (w.get_ref().crc, w.get_ref().len);
    w.write_metadata(CRC_KEY, format!("{crc:08x}"));
    w.write_metadata(CRC_BYTES_KEY, len.to_string());
    w.finish()?;
    let file = w
        .into_inner()?
        .inner
        .into_inner()
        .map_err(|e| Error::io(format!("flush {}", path.display()), e.into_error()))?;
    file.sync_all()
        .ctx(|| format!("fsync {}", path.display()))?;
    Ok(())
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Map an IPC file: every array decoded from the buffer points into the mapping, which
/// lives as long as any array does.
fn map_file(path: &Path) -> Result<Buffer> {
    let file = File::open(path).ctx(|| format!("open {}", path.display()))?;
    // SAFETY: chunk files are written once, renamed into place and never modified or
    // truncated while the engine runs; the mapping is read-only.
    let map = unsafe { memmap2::Mmap::map(&file) }.ctx(|| format!("mmap {}", path.display()))?;
    Ok(Buffer::from(bytes::Bytes::from_owner(map)))
}

/// Read a whole IPC file into memory (64-byte aligned), check its content checksum (when it
/// has one) and decode its batches, which point into that memory.
pub(crate) fn read_ipc_file_checked(path: &Path) -> Result<Vec<RecordBatch>> {
    let mut f = File::open(path).ctx(|| format!("open {}", path.display()))?;
    let len = f
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len();
    let len = usize::try_from(len).map_err(|_| corrupt(path, 0, "file too large"))?;
    let mut bytes = arrow::buffer::MutableBuffer::from_len_zeroed(len);
    std::io::Read::read_exact(&mut f, bytes.as_slice_mut())
        .ctx(|| format!("read {}", path.display()))?;
    let buffer: Buffer = bytes.into();
    let (batches, checksum) = decode_ipc_file(path, &buffer)?;
    if let Some(sum) = checksum {
        sum.check(path, &buffer)?;
    }
    Ok(batches)
}

/// Decode an IPC file's batches (checking its structure, not its values) and its recorded
/// content checksum, if it has one.
fn decode_ipc_file(path: &Path, buffer: &Buffer) -> Result<(Vec<RecordBatch>, Option<Checksum>)> {
    let len = buffer.len();
    if len < 6 + 2 + 10 || &buffer[..6] != b"ARROW1" || &buffer[len - 6..] != b"ARROW1" {
        return Err(corrupt(path, 0, "not an Arrow IPC file (magic missing)"));
    }
    let trailer: [u8; 10] = buffer[len - 10..]
        .try_into()
        .map_err(|_| corrupt(path, (len - 10) as u64, "short trailer"))?;
    let footer_len =
        read_footer_length(trailer).map_err(|e| corrupt(path, (len - 10) as u64, e.to_string()))?;
    if footer_len > len - 10 - 8 {
        return Err(corrupt(path, (len - 10) as u64, "footer length too large"));
    }
    let footer_start = len - 10 - footer_len;
    let footer = root_as_footer(&buffer[footer_start..len - 10])
        .map_err(|e| corrupt(path, footer_start as u64, format!("bad footer: {e}")))?;
    let checksum = footer_checksum(path, &footer, footer_start)?;
    let fb_schema = footer
        .schema()
        .ok_or_else(|| corrupt(path, footer_start as u64, "footer has no schema"))?;
    let schema = Arc::new(
        try_fb_to_schema(fb_schema)
            .map_err(|e| corrupt(path, footer_start as u64, format!("bad schema: {e}")))?,
    );
    let mut decoder = FileDecoder::new(schema, footer.version()).with_require_alignment(true);
    let block_data = |b: &Block| -> Result<Buffer> {
        let off = usize::try_from(b.offset()).ok();
        let n = usize::try_from(b.metaDataLength())
            .ok()
            .zip(usize::try_from(b.bodyLength()).ok())
            .and_then(|(m, body)| m.checked_add(body));
        match (off, n) {
            (Some(off), Some(n)) if off.checked_add(n).is_some_and(|e| e <= footer_start) => {
                Ok(buffer.slice_with_length(off, n))
            }
            _ => Err(corrupt(path, b.offset() as u64, "block outside the file")),
        }
    };
    for block in footer.dictionaries().iter().flatten() {
        let data = block_data(block)?;
        decoder
            .read_dictionary(block, &data)
            .map_err(|e| corrupt(path, block.offset() as u64, format!("dictionary: {e}")))?;
    }
    let mut out = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        let data = block_data(block)?;
        let batch = decoder
            .read_record_batch(block, &data)
            .map_err(|e| corrupt(path, block.offset() as u64, format!("record batch: {e}")))?;
        if let Some(b) = batch {
            out.push(b);
        }
    }
    Ok((out, checksum))
}

/// The content checksum recorded in a footer (none in files written before it existed).
fn footer_checksum(
    path: &Path,
    footer: &arrow::ipc::Footer<'_>,
    footer_start: usize,
) -> Result<Option<Checksum>> {
    let (mut crc, mut len) = (None, None);
    for kv in footer.custom_metadata().iter().flatten() {
        match (kv.key(), kv.value()) {
            (Some(CRC_KEY), Some(v)) => crc = Some(v),
            (Some(CRC_BYTES_KEY), Some(v)) => len = Some(v),
            _ => {}
        }
    }
    let bad = |what: String| corrupt(path, footer_start as u64, what);
    match (crc, len) {
        (None, None) => Ok(None),
        (Some(crc), Some(len)) => {
            let crc = u32::from_str_radix(crc, 16)
                .map_err(|_| bad(format!("bad {CRC_KEY} {crc:?} in the footer")))?;
            let len = len
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= footer_start)
                .ok_or_else(|| bad(format!("bad {CRC_BYTES_KEY} {len:?} in the footer")))?;
            Ok(Some(Checksum { crc, len }))
        }
        _ => Err(bad(format!(
            "the footer has one of {CRC_KEY} and {CRC_BYTES_KEY} without the other"
        ))),
    }
}

impl DiskChunk {
    /// Map a chunk file written by [`write_chunk_file`] and check it against the table.
    pub(crate) fn open(
        data_dir: &Path,
        rel_path: &str,
        schema: &TableSchema,
        bucket: i64,
        seq: u32,
    ) -> Result<DiskChunk> {
        let path: PathBuf = data_dir.join(rel_path);
        let file_bytes = fs::metadata(&path)
            .ctx(|| format!("stat HDB file {}", path.display()))?
            .len();
        let file = map_file(&path)?;
        let (raw, checksum) = decode_ipc_file(&path, &file)?;
        let want = schema.arrow_schema();
        let ts = schema.timestamp;
        let mut pieces = Vec::with_capacity(raw.len());
        let (mut min, mut max, mut rows) = (i64::MAX, i64::MIN, 0u64);
        for b in raw {
            let got = b.schema();
            let same = got.fields().len() == want.fields().len()
                && got
                    .fields()
                    .iter()
                    .zip(want.fields())
                    .all(|(g, w)| g.name() == w.name() && g.data_type() == w.data_type());
            if !same {
                return Err(corrupt(&path, 0, "file schema does not match the table"));
            }
            let b = RecordBatch::try_new(want.clone(), b.columns().to_vec())
                .map_err(|e| corrupt(&path, 0, e.to_string()))?;
            let t = timestamps(&b, ts);
            let (Some(&lo), Some(&hi)) = (t.first(), t.last()) else {
                continue;
            };
            if lo > hi {
                return Err(corrupt(&path, 0, "rows are not sorted by timestamp"));
            }
            min = min.min(lo);
            max = max.max(hi);
            rows += b.num_rows() as u64;
            pieces.push(Piece {
                batch: b,
                min: lo,
                max: hi,
                sorted: true,
            });
        }
        Ok(DiskChunk {
            bucket,
            seq,
            rel_path: rel_path.to_string(),
            pieces,
            min,
            max,
            rows,
            file_bytes,
            file,
            path,
            checksum,
            verified: OnceLock::new(),
            damaged: OnceLock::new(),
        })
    }

    /// A chunk whose file does not even decode (found at recovery): known from the checkpoint
    /// manifest (`min`, `max`, `rows`), so pruning and whole-file counts still work, and
    /// corrupt for every read, like a file whose values fail their checksum. The database
    /// opens and serves everything else.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn broken(
        data_dir: &Path,
        rel_path: &str,
        bucket: i64,
        seq: u32,
        min: i64,
        max: i64,
        rows: u64,
        offset: u64,
        reason: String,
    ) -> DiskChunk {
        let path = data_dir.join(rel_path);
        let file_bytes = fs::metadata(&path).map_or(0, |m| m.len());
        ANY_CORRUPT.store(true, Ordering::Relaxed);
        DiskChunk {
            bucket,
            seq,
            rel_path: rel_path.to_string(),
            pieces: Vec::new(),
            min,
            max,
            rows,
            file_bytes,
            file: Buffer::from_vec(Vec::<u8>::new()),
            path,
            checksum: None,
            verified: OnceLock::from(Verified::Corrupt { offset, reason }),
            damaged: OnceLock::new(),
        }
    }

    /// The chunk's batches, once its values have been checked against the file's checksum
    /// (the first call checks; a corrupt file is an error for every call).
    pub(crate) fn pieces(&self) -> Result<&[Piece]> {
        match self.verify() {
            Verified::Good | Verified::NoChecksum => Ok(&self.pieces),
            Verified::Corrupt { offset, reason } => {
                Err(corrupt(&self.path, *offset, reason.clone()))
            }
        }
    }

    /// Check the values against the checksum, once: what was found (or what a later
    /// [`DiskChunk::recheck`] found wrong).
    pub(crate) fn verify(&self) -> &Verified {
        if let Some(d) = self.damaged.get() {
            return d;
        }
        self.verified
            .get_or_init(|| self.check_now("HDB file is corrupt"))
    }

    /// Check the values against the checksum again, whatever an earlier check found (the
    /// periodic background pass): a file found changed since is corrupt from now on.
    pub(crate) fn recheck(&self) -> &Verified {
        let unchecked = self.verified.get().is_none();
        let first = self.verify();
        if unchecked || matches!(first, Verified::Corrupt { .. }) {
            return first; // checked just now, or damaged already
        }
        match self.check_now("HDB file is corrupt: it changed since it was last checked") {
            bad @ Verified::Corrupt { .. } => self.damaged.get_or_init(|| bad),
            _ => first,
        }
    }

    fn check_now(&self, what: &str) -> Verified {
        let Some(sum) = &self.checksum else {
            return Verified::NoChecksum;
        };
        match sum.check(&self.path, &self.file) {
            Ok(()) => Verified::Good,
            Err(e) => {
                ANY_CORRUPT.store(true, Ordering::Relaxed);
                tracing::error!(file = %self.path.display(), error = %e, "{what}");
                match e {
                    Error::Corrupt { offset, reason, .. } => Verified::Corrupt { offset, reason },
                    other => Verified::Corrupt {
                        offset: 0,
                        reason: other.to_string(),
                    },
                }
            }
        }
    }

    /// Whether the values have been checked (and what was found, a later check's damage
    /// first).
    pub(crate) fn verified(&self) -> Option<&Verified> {
        self.damaged.get().or_else(|| self.verified.get())
    }

    /// Mark a file this process has just written (from the values in memory, with the
    /// checksum of the bytes it wrote) as checked.
    pub(crate) fn written_here(self) -> DiskChunk {
        let _ = self.verified.set(Verified::Good);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnDef, ColumnType};
    use arrow::array::{
        DictionaryArray, Float64Array, Int32Array, StringArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::Int32Type;

    fn schema() -> TableSchema {
        TableSchema::new(
            "t",
            vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("symbol", ColumnType::Symbol),
                ColumnDef::new("price", ColumnType::Double),
            ],
            None,
            None,
        )
        .unwrap()
    }

    fn batch(s: &TableSchema, n: usize) -> RecordBatch {
        let keys = Int32Array::from((0..n).map(|i| (i % 2) as i32).collect::<Vec<_>>());
        RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from(
                    (0..n as i64).collect::<Vec<_>>(),
                )),
                Arc::new(
                    DictionaryArray::<Int32Type>::try_new(
                        keys,
                        Arc::new(StringArray::from(vec!["A", "B"])),
                    )
                    .unwrap(),
                ),
                Arc::new(Float64Array::from(
                    (0..n).map(|i| i as f64 * 0.5).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_is_equal_and_zero_copy() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema();
        let b = batch(&s, 300_000);
        let rel = chunk_rel_path("t", 3, 0, 0);
        let size = write_chunk_file(dir.path(), &rel, &b, 0, 299_999, &Faults::default()).unwrap();
        assert!(size > 300_000 * 16);
        let c = DiskChunk::open(dir.path(), &rel, &s, 0, 0).unwrap();
        assert_eq!((c.min, c.max, c.rows), (0, 299_999, 300_000));
        let pieces = c.pieces().unwrap();
        assert!(pieces.len() >= 2, "written in several record batches");
        let back = crate::batch::concat_batches(
            &pieces.iter().map(|p| p.batch.clone()).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(back, b);
        assert_eq!(c.verified(), Some(&Verified::Good));
        // Zero-copy: the f64 values point into the mapping, 64-byte aligned.
        let col = pieces[0].batch.column(2).to_data();
        let ptr = col.buffers()[0].as_ptr() as usize;
        assert_eq!(ptr % 64, 0);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema();
        let rel = chunk_rel_path("t", 0, 0, 0);
        write_chunk_file(
            dir.path(),
            &rel,
            &batch(&s, 1000),
            0,
            999,
            &Faults::default(),
        )
        .unwrap();
        let path = dir.path().join(&rel);
        let good = fs::read(&path).unwrap();
        for cut in [0, 5, 100, good.len() / 2, good.len() - 11, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            let e = DiskChunk::open(dir.path(), &rel, &s, 0, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&rel) || e.contains("0_0.arrow"), "{e}");
        }
        // Garbage in the footer.
        let mut bad = good.clone();
        let n = bad.len();
        for b in &mut bad[n - 200..n - 10] {
            *b = 0xAB;
        }
        fs::write(&path, &bad).unwrap();
        assert!(DiskChunk::open(dir.path(), &rel, &s, 0, 0).is_err());
    }

    /// Write a 1,000-row chunk file; returns its path and bytes.
    fn written(dir: &Path, s: &TableSchema) -> (String, PathBuf, Vec<u8>) {
        let rel = chunk_rel_path("t", 0, 0, 0);
        write_chunk_file(dir, &rel, &batch(s, 1000), 0, 999, &Faults::default()).unwrap();
        let path = dir.join(&rel);
        let bytes = fs::read(&path).unwrap();
        (rel, path, bytes)
    }

    /// Where the f64 value of row `i` (`i * 0.5`) is stored in the file.
    fn value_offset(file: &[u8], i: usize) -> usize {
        let needle = (i as f64 * 0.5).to_le_bytes();
        let at: Vec<usize> = file
            .windows(8)
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(o, _)| o)
            .collect();
        assert_eq!(at.len(), 1, "value of row {i} stored once");
        at[0]
    }

    #[test]
    fn a_changed_value_opens_but_fails_every_read_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema();
        let (rel, path, mut bytes) = written(dir.path(), &s);
        // Opening a good file checks nothing yet; the first read checks once.
        let c = DiskChunk::open(dir.path(), &rel, &s, 0, 0).unwrap();
        assert_eq!(c.verified(), None);
        assert_eq!(c.pieces().unwrap()[0].batch.num_rows(), 1000);
        assert_eq!(c.verified(), Some(&Verified::Good));
        // A file this process has just written is known good without reading it back.
        let c = DiskChunk::open(dir.path(), &rel, &s, 0, 0)
            .unwrap()
            .written_here();
        assert_eq!(c.verified(), Some(&Verified::Good));
        // One bit of one value flipped: the structure is intact, so the file opens (with
        // its row count and time range), but its values are refused.
        let at = value_offset(&bytes, 777);
        bytes[at] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let c = DiskChunk::open(dir.path(), &rel, &s, 0, 0).unwrap();
        assert_eq!((c.rows, c.min, c.max), (1000, 0, 999));
        for _ in 0..2 {
            let e = c.pieces().unwrap_err().to_string();
            assert!(
                e.contains("0_0.arrow") && e.contains("checksum mismatch"),
                "{e}"
            );
        }
        assert!(matches!(c.verified(), Some(Verified::Corrupt { .. })));
    }

    #[test]
    fn checkpoint_files_are_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema();
        let (_, path, mut bytes) = written(dir.path(), &s);
        let back = read_ipc_file_checked(&path).unwrap();
        assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 1000);
        let at = value_offset(&bytes, 5);
        bytes[at + 7] ^= 0x80;
        fs::write(&path, &bytes).unwrap();
        let e = read_ipc_file_checked(&path).unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
    }

    #[test]
    fn files_without_a_checksum_are_read_unchecked_and_half_a_checksum_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = schema();
        let rel = chunk_rel_path("t", 0, 0, 0);
        let path = dir.path().join(&rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // As written before checksums existed: a plain IPC file.
        let write = |extra: Option<(&str, &str)>| {
            let b = batch(&s, 100);
            let f = File::create(&path).unwrap();
            let mut w = FileWriter::try_new(f, &b.schema()).unwrap();
            w.write(&b).unwrap();
            if let Some((k, v)) = extra {
                w.write_metadata(k, v);
            }
            w.finish().unwrap();
        };
        write(None);
        let c = DiskChunk::open(dir.path(), &rel, &s, 0, 0).unwrap();
        assert_eq!(c.pieces().unwrap()[0].batch.num_rows(), 100);
        assert_eq!(c.verified(), Some(&Verified::NoChecksum));
        write(Some((CRC_KEY, "0badc0de")));
        let e = DiskChunk::open(dir.path(), &rel, &s, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without the other"), "{e}");
        write(Some((CRC_KEY, "not hex")));
        assert!(DiskChunk::open(dir.path(), &rel, &s, 0, 0).is_err());
    }
}
