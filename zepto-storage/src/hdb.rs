//! HDB: sealed chunks as Arrow IPC files (uncompressed, 64-byte aligned buffers), written
//! atomically and read back zero-copy through mmap.
//!
//! Layout: `hdb/<table>/<partition>/<bucket>_<seq>.arrow`. The file is a plain Arrow IPC
//! file: pyarrow, polars or DuckDB open it as it is. Its schema metadata carries
//! `zepto.min_ts`, `zepto.max_ts` and `zepto.rows`; the checkpoint manifest repeats them so
//! that pruning never opens a file. Rows inside a file are sorted by timestamp.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A chunk stored in an HDB file, mapped into memory.
#[derive(Debug)]
pub(crate) struct DiskChunk {
    pub(crate) bucket: i64,
    pub(crate) seq: u32,
    /// Path relative to the data directory.
    pub(crate) rel_path: String,
    pub(crate) pieces: Vec<Piece>,
    pub(crate) min: i64,
    pub(crate) max: i64,
    pub(crate) rows: u64,
    pub(crate) file_bytes: u64,
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
    let mut w = FileWriter::try_new_with_options(std::io::BufWriter::new(file), &schema, opts)?;
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
    w.finish()?;
    let file = w
        .into_inner()?
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

/// Map an IPC file and decode its batches without copying: every array points into the
/// mapping, which lives as long as any array does.
pub(crate) fn read_ipc_file_mmap(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).ctx(|| format!("open {}", path.display()))?;
    // SAFETY: chunk files are written once, renamed into place and never modified or
    // truncated while the engine runs; the mapping is read-only.
    let map = unsafe { memmap2::Mmap::map(&file) }.ctx(|| format!("mmap {}", path.display()))?;
    let buffer = Buffer::from(bytes::Bytes::from_owner(map));
    decode_ipc_file(path, &buffer)
}

fn decode_ipc_file(path: &Path, buffer: &Buffer) -> Result<Vec<RecordBatch>> {
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
    Ok(out)
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
        let raw = read_ipc_file_mmap(&path)?;
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
        })
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
        assert!(c.pieces.len() >= 2, "written in several record batches");
        let back = crate::batch::concat_batches(
            &c.pieces.iter().map(|p| p.batch.clone()).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(back, b);
        // Zero-copy: the f64 values point into the mapping, 64-byte aligned.
        let col = c.pieces[0].batch.column(2).to_data();
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
}
