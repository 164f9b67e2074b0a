//! The WAL payload codec: one table's rows for one partition, column by column.
//!
//! Hot path (every durable write encodes here): no per-row allocation; buffers reused.
//!
//! ```text
//! payload  := kind:u8 (1 = rows) | version:u8 (1) | table_id:u32 | rows:u32 | ncols:u16 | column*
//! column   := type:u8 | flags:u8 (bit 0: validity bitmap follows) | [validity: ceil(rows/8)] | data
//! data     := TIMESTAMP/BIGINT/DOUBLE: rows x 8 bytes | INT: rows x 4 | BOOLEAN: ceil(rows/8)
//!           | STRING: (rows+1) x u32 offsets from 0 | bytes
//!           | SYMBOL: ndict:u32 | (ndict+1) x u32 offsets | bytes | rows x u32 keys
//! ```
//! All integers little-endian. Decoding checks every length and index and reports a
//! `Corrupt` error (never a panic) naming what was wrong.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array,
    StringArray, TimestampNanosecondArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Int32Type, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::error::{Error, Result};
use crate::schema::ColumnType;

const KIND_ROWS: u8 = 1;
const CODEC_VERSION: u8 = 1;

fn type_tag(t: ColumnType) -> u8 {
    match t {
        ColumnType::Timestamp => 1,
        ColumnType::Symbol => 2,
        ColumnType::String => 3,
        ColumnType::BigInt => 4,
        ColumnType::Int => 5,
        ColumnType::Double => 6,
        ColumnType::Boolean => 7,
    }
}

/// Append the encoding of `batch` (already in the table's Arrow types) to `out`.
pub(crate) fn encode_rows(
    table_id: u32,
    types: &[ColumnType],
    batch: &RecordBatch,
    out: &mut Vec<u8>,
) -> Result<()> {
    let rows = batch.num_rows();
    let rows_u32 = u32::try_from(rows)
        .map_err(|_| Error::InvalidInput(format!("batch of {rows} rows is too large")))?;
    out.push(KIND_ROWS);
    out.push(CODEC_VERSION);
    out.extend_from_slice(&table_id.to_le_bytes());
    out.extend_from_slice(&rows_u32.to_le_bytes());
    out.extend_from_slice(&(types.len() as u16).to_le_bytes());
    for (col, &ty) in batch.columns().iter().zip(types) {
        out.push(type_tag(ty));
        match col.logical_nulls().filter(|n| n.null_count() > 0) {
            Some(nulls) => {
                out.push(1);
                out.extend_from_slice(
                    nulls
                        .inner()
                        .sliced()
                        .as_slice()
                        .get(..rows.div_ceil(8))
                        .unwrap_or(&[]),
                );
            }
            None => out.push(0),
        }
        match ty {
            ColumnType::Timestamp => {
                let a = col.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
                out.extend_from_slice(slice_bytes(a.values()));
            }
            ColumnType::BigInt => out.extend_from_slice(slice_bytes(
                col.as_primitive::<arrow::datatypes::Int64Type>().values(),
            )),
            ColumnType::Double => out.extend_from_slice(slice_bytes(
                col.as_primitive::<arrow::datatypes::Float64Type>().values(),
            )),
            ColumnType::Int => {
                out.extend_from_slice(slice_bytes(col.as_primitive::<Int32Type>().values()))
            }
            ColumnType::Boolean => {
                let b = col.as_boolean().values().sliced();
                out.extend_from_slice(b.as_slice().get(..rows.div_ceil(8)).unwrap_or(&[]));
            }
            ColumnType::String => encode_strings(col.as_string::<i32>(), out),
            ColumnType::Symbol => {
                let d = col.as_dictionary::<Int32Type>();
                let values = d.values().as_string::<i32>();
                out.extend_from_slice(&(values.len() as u32).to_le_bytes());
                encode_strings(values, out);
                out.extend_from_slice(slice_bytes(d.keys().values()));
            }
        }
    }
    Ok(())
}

fn slice_bytes<T: arrow::datatypes::ArrowNativeType>(s: &[T]) -> &[u8] {
    // SAFETY-free: arrow's ToByteSlice gives the little-endian bytes of native values.
    use arrow::datatypes::ToByteSlice;
    s.to_byte_slice()
}

fn encode_strings(a: &StringArray, out: &mut Vec<u8>) {
    let offsets = a.value_offsets();
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    for &o in offsets {
        out.extend_from_slice(&((o - first) as u32).to_le_bytes());
    }
    out.extend_from_slice(&a.value_data()[first as usize..last as usize]);
}

/// The table a payload belongs to, without decoding it.
pub(crate) fn payload_table_id(payload: &[u8]) -> Option<u32> {
    if payload.len() < 6 || payload[0] != KIND_ROWS {
        return None;
    }
    Some(u32::from_le_bytes([
        payload[2], payload[3], payload[4], payload[5],
    ]))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "payload truncated reading {what} ({n} bytes at {} of {})",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> std::result::Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> std::result::Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decode a rows payload into a batch of `schema` (the table's Arrow schema). Errors are
/// plain descriptions; the caller adds file and offset.
pub(crate) fn decode_rows(
    payload: &[u8],
    types: &[ColumnType],
    schema: &SchemaRef,
) -> std::result::Result<(u32, RecordBatch), String> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let kind = r.u8("kind")?;
    if kind != KIND_ROWS {
        return Err(format!("unknown payload kind {kind}"));
    }
    let version = r.u8("version")?;
    if version != CODEC_VERSION {
        return Err(format!(
            "payload codec version {version}, this build reads {CODEC_VERSION}"
        ));
    }
    let table_id = r.u32("table id")?;
    let rows = r.u32("row count")? as usize;
    let ncols = r.u16("column count")? as usize;
    if ncols != types.len() {
        return Err(format!(
            "payload has {ncols} columns, table has {}",
            types.len()
        ));
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(ncols);
    for (i, &ty) in types.iter().enumerate() {
        let tag = r.u8("column type")?;
        if tag != type_tag(ty) {
            return Err(format!(
                "column {i} has type tag {tag}, table column is {ty}"
            ));
        }
        let flags = r.u8("column flags")?;
        let nulls = if flags & 1 == 1 {
            let bits = r.take(rows.div_ceil(8), "validity bitmap")?;
            Some(NullBuffer::new(BooleanBuffer::new(
                Buffer::from(bits.to_vec()),
                0,
                rows,
            )))
        } else {
            None
        };
        let err = |e: arrow::error::ArrowError| format!("column {i}: {e}");
        let array: ArrayRef = match ty {
            ColumnType::Timestamp => Arc::new(
                TimestampNanosecondArray::try_new(scalars::<i64>(&mut r, rows)?, nulls)
                    .map_err(err)?,
            ),
            ColumnType::BigInt => {
                Arc::new(Int64Array::try_new(scalars::<i64>(&mut r, rows)?, nulls).map_err(err)?)
            }
            ColumnType::Double => {
                Arc::new(Float64Array::try_new(scalars::<f64>(&mut r, rows)?, nulls).map_err(err)?)
            }
            ColumnType::Int => {
                Arc::new(Int32Array::try_new(scalars::<i32>(&mut r, rows)?, nulls).map_err(err)?)
            }
            ColumnType::Boolean => {
                let bits = r.take(rows.div_ceil(8), "boolean values")?;
                let values = BooleanBuffer::new(Buffer::from(bits.to_vec()), 0, rows);
                Arc::new(BooleanArray::new(values, nulls))
            }
            ColumnType::String => Arc::new(decode_strings(&mut r, rows, nulls)?),
            ColumnType::Symbol => {
                let ndict = r.u32("dictionary size")? as usize;
                let values = decode_strings(&mut r, ndict, None)?;
                let keys =
                    Int32Array::try_new(scalars::<i32>(&mut r, rows)?, nulls).map_err(err)?;
                Arc::new(
                    DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).map_err(err)?,
                )
            }
        };
        columns.push(array);
    }
    if r.pos != payload.len() {
        return Err(format!(
            "{} trailing bytes after the last column",
            payload.len() - r.pos
        ));
    }
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| format!("rows do not fit the table schema: {e}"))?;
    Ok((table_id, batch))
}

fn scalars<T: arrow::datatypes::ArrowNativeType>(
    r: &mut Reader<'_>,
    n: usize,
) -> std::result::Result<ScalarBuffer<T>, String> {
    let width = std::mem::size_of::<T>();
    let bytes = r.take(
        n.checked_mul(width).ok_or("row count overflows")?,
        "column values",
    )?;
    // Buffer::from copies into an aligned allocation, so the typed view is sound.
    let buf = Buffer::from(bytes);
    Ok(ScalarBuffer::new(buf, 0, n))
}

fn decode_strings(
    r: &mut Reader<'_>,
    n: usize,
    nulls: Option<NullBuffer>,
) -> std::result::Result<StringArray, String> {
    let raw = r.take(
        n.checked_add(1)
            .and_then(|x| x.checked_mul(4))
            .ok_or("string count overflows")?,
        "string offsets",
    )?;
    let mut offsets = Vec::with_capacity(n + 1);
    let mut prev = 0i32;
    for (i, c) in raw.chunks_exact(4).enumerate() {
        let o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let o = i32::try_from(o).map_err(|_| format!("string offset {o} too large"))?;
        if (i == 0 && o != 0) || o < prev {
            return Err(format!("string offsets not increasing at {i}"));
        }
        prev = o;
        offsets.push(o);
    }
    let data = r.take(prev as usize, "string bytes")?;
    StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from(data),
        nulls,
    )
    .map_err(|e| format!("strings: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnDef, TableSchema};

    fn schema() -> TableSchema {
        TableSchema::new(
            "t",
            vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("symbol", ColumnType::Symbol),
                ColumnDef::new("price", ColumnType::Double),
                ColumnDef::new("qty", ColumnType::BigInt),
                ColumnDef::new("n", ColumnType::Int),
                ColumnDef::new("ok", ColumnType::Boolean),
                ColumnDef::new("note", ColumnType::String),
            ],
            None,
            None,
        )
        .unwrap()
    }

    fn batch(s: &TableSchema) -> RecordBatch {
        let keys = Int32Array::from(vec![0, 1, 0, 1, 0]);
        let dict = StringArray::from(vec!["AAPL", "MSFT"]);
        RecordBatch::try_new(
            s.arrow_schema(),
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![5, 1, 3, 2, 4])),
                Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(dict)).unwrap()),
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    None,
                    Some(3.0),
                    Some(-0.0),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4, i64::MAX])),
                Arc::new(Int32Array::from(vec![
                    None,
                    Some(2),
                    Some(3),
                    None,
                    Some(-5),
                ])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    Some(true),
                    Some(true),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some(""),
                    Some("héllo"),
                    Some("x"),
                ])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_including_slices_and_nulls() {
        let s = schema();
        let types: Vec<_> = s.columns.iter().map(|c| c.ty).collect();
        let b = batch(&s);
        for (off, len) in [(0, 5), (1, 3), (3, 2), (2, 0)] {
            let part = b.slice(off, len);
            let mut out = Vec::new();
            encode_rows(7, &types, &part, &mut out).unwrap();
            assert_eq!(payload_table_id(&out), Some(7));
            let (id, back) = decode_rows(&out, &types, &s.arrow_schema()).unwrap();
            assert_eq!(id, 7);
            assert_eq!(back, part, "slice {off}+{len}");
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let s = schema();
        let types: Vec<_> = s.columns.iter().map(|c| c.ty).collect();
        let mut out = Vec::new();
        encode_rows(1, &types, &batch(&s), &mut out).unwrap();
        for cut in 0..out.len() {
            assert!(decode_rows(&out[..cut], &types, &s.arrow_schema()).is_err());
        }
        // Flip every byte once: must never panic (it may decode to something valid).
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0xff;
            let _ = decode_rows(&bad, &types, &s.arrow_schema());
        }
    }
}
