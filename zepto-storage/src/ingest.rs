//! The producer side of the write path, run on the caller's thread: check and convert an
//! incoming batch to the table's types, split it by partition, encode the WAL payloads,
//! and hand the request to the ingest ring.
//!
//! Hot path: the work here is per column and per partition, never per row beyond the
//! partition assignment; the payloads of one request share one buffer.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Int32Array, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Int32Type};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use crate::batch::compact_dictionary;
use crate::codec::encode_rows;
use crate::error::{Error, Result};
use crate::rdb::TableData;
use crate::schema::ColumnType;

/// Which partition a partition-key value of a table belongs to: a stable hash (xxh3-64 of
/// the lower-case table name, a 0xFF separator and the key bytes) modulo the partition count.
/// Persisted placement depends on it: never change it for an existing format version.
pub fn partition_for(table: &str, key: &str, partitions: u32) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(table.to_ascii_lowercase().as_bytes());
    h.update(&[0xFF]);
    h.update(key.as_bytes());
    (h.digest() % u64::from(partitions.max(1))) as u32
}

/// The acknowledgement of a durable write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Rows written.
    pub rows: u64,
    /// `(partition, seq)` of every WAL record the write became (what replication waits for).
    pub records: Vec<(u32, u64)>,
}

/// A WAL record as shipped from a partition's primary to its replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedRecord {
    pub partition: u32,
    /// The epoch the record was written at (part of its identity in the log).
    pub epoch: u64,
    pub seq: u64,
    /// The epoch at which the sender is the partition's primary: fencing compares this, not
    /// the record's own epoch, so a primary can ship history written under older epochs
    /// (catching up a new replica) while a deposed primary is refused. At least `epoch`.
    pub sender_epoch: u64,
    /// The epoch of the sender's record `seq - 1`, when the sender knows it (raft's
    /// prevLogTerm): a replica appending this record refuses it as `Diverged` when its own
    /// record `seq - 1` has another epoch. `None`: not checked.
    pub prev_epoch: Option<u64>,
    /// The encoded rows, exactly as in the primary's WAL.
    pub payload: bytes::Bytes,
}

/// A record that has just become durable and visible, as handed to the commit listener
/// (replication, WAL archiving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedRecord {
    pub partition: u32,
    pub epoch: u64,
    pub seq: u64,
    pub payload: bytes::Bytes,
    /// True when it came from a primary through [`crate::Db::write_replicated`].
    pub replicated: bool,
}

/// One partition's share of a write.
#[derive(Debug)]
pub(crate) struct WritePiece {
    pub(crate) partition: u32,
    pub(crate) table: Arc<TableData>,
    /// The rows, in the table's types.
    pub(crate) batch: RecordBatch,
    /// The encoded rows inside the request's payload.
    pub(crate) range: Range<usize>,
    /// `(epoch, seq, sender_epoch, prev_epoch)` fixed by the primary for a replicated record;
    /// `None` for a local write.
    pub(crate) replicated: Option<(u64, u64, u64, Option<u64>)>,
}

/// A write waiting in the ring or being made durable.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    pub(crate) pieces: Vec<WritePiece>,
    /// Encoded WAL payloads of all pieces, back to back.
    pub(crate) payload: bytes::Bytes,
    pub(crate) done: oneshot::Sender<Result<WriteReceipt>>,
}

impl WriteRequest {
    pub(crate) fn queued_bytes(&self) -> usize {
        self.payload.len()
    }
}

/// What travels through the ingest ring to the WAL writer.
#[derive(Debug)]
pub(crate) enum Request {
    Write(WriteRequest),
    /// Take a consistent cut of the in-memory state at the current WAL position.
    Capture(crossbeam_channel::Sender<crate::checkpoint::Capture>),
    /// Answer once everything queued before it is committed or refused.
    Barrier(crossbeam_channel::Sender<()>),
    /// The chunks of one partition at the current cut (partition export).
    ExportCut {
        partition: u32,
        reply: crossbeam_channel::Sender<crate::checkpoint::PartitionCut>,
    },
    /// Replace one partition's chunks and position (partition import), then cut.
    Import(crate::checkpoint::ImportSwap),
    /// Stop after everything queued before this.
    Shutdown,
}

/// Waits for a write to become durable. Await it, or call [`WriteTicket::wait`] from a
/// thread that is not running async code.
#[derive(Debug)]
pub struct WriteTicket {
    rx: oneshot::Receiver<Result<WriteReceipt>>,
}

impl WriteTicket {
    /// Block until the write is durable (or failed).
    pub fn wait(self) -> Result<WriteReceipt> {
        self.rx.blocking_recv().unwrap_or(Err(Error::Shutdown))
    }
}

impl std::future::IntoFuture for WriteTicket {
    type Output = Result<WriteReceipt>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.rx.await.unwrap_or(Err(Error::Shutdown)) })
    }
}

/// The bounded, multi-producer ingest ring in front of the WAL writer: a bounded channel
/// (request slots) plus a byte budget. Full means a typed `Backpressure` error, never a
/// silent drop and never an unbounded queue.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    tx: Sender<Request>,
    max_bytes: usize,
    pub(crate) queued_bytes: Arc<AtomicUsize>,
}

impl Ring {
    pub(crate) fn new(
        tx: Sender<Request>,
        max_bytes: usize,
        queued_bytes: Arc<AtomicUsize>,
    ) -> Ring {
        Ring {
            tx,
            max_bytes,
            queued_bytes,
        }
    }

    pub(crate) fn depth(&self) -> usize {
        self.tx.len()
    }

    /// Queue a write; `Backpressure` when the ring is full or over its byte budget. A
    /// request larger than the whole budget is still admitted into an empty ring, so a big
    /// batch cannot starve.
    pub(crate) fn push(&self, req: WriteRequest) -> Result<WriteTicket> {
        let bytes = req.queued_bytes();
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.max_bytes {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Error::Backpressure {
                queued_requests: self.tx.len(),
                queued_bytes: before,
            });
        }
        let (done, rx) = oneshot::channel();
        let req = WriteRequest { done, ..req };
        match self.tx.try_send(Request::Write(req)) {
            Ok(()) => Ok(WriteTicket { rx }),
            Err(TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                Err(Error::Backpressure {
                    queued_requests: self.tx.len(),
                    queued_bytes: before,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                Err(Error::Shutdown)
            }
        }
    }

    /// Send a control request, waiting for a slot.
    pub(crate) fn send_control(&self, req: Request) -> Result<()> {
        self.tx.send(req).map_err(|_| Error::Shutdown)
    }
}

/// Convert `batch` to the table's types, split it by partition and encode the payloads.
/// Errors are client errors naming the column and row.
pub(crate) fn prepare_write(
    table: &Arc<TableData>,
    batch: RecordBatch,
    partitions: u32,
) -> Result<WriteRequest> {
    let batch = conform(table, batch)?;
    let pieces = split_by_partition(table, &batch, partitions)?;
    encode_pieces(table, pieces, batch.get_array_memory_size())
}

/// Convert `batch` to the table's types and split it by partition, as [`prepare_write`]
/// does, without encoding: a cluster router sends each piece to its partition's primary,
/// which writes it with [`prepare_split`] (no second conversion or split).
pub(crate) fn split_write(
    table: &TableData,
    batch: RecordBatch,
    partitions: u32,
) -> Result<Vec<(u32, RecordBatch)>> {
    let batch = conform(table, batch)?;
    split_by_partition(table, &batch, partitions)
}

/// Encode pieces already split by partition (by [`split_write`], possibly on another node).
/// Every piece is converted to the table's types and checked to hold only rows of its
/// partition: from the partition of each distinct key value (hashed once per dictionary
/// value, not per row). A piece whose key dictionary holds values of other partitions (not
/// the shape [`split_write`] makes) is split again and must come out as that one partition.
pub(crate) fn prepare_split(
    table: &Arc<TableData>,
    pieces: Vec<(u32, RecordBatch)>,
    partitions: u32,
) -> Result<WriteRequest> {
    let mut checked = Vec::with_capacity(pieces.len());
    let mut bytes = 0;
    for (p, piece) in pieces {
        if p >= partitions {
            return Err(Error::InvalidInput(format!(
                "rows sent for partition {p} of {partitions}"
            )));
        }
        let piece = conform(table, piece)?;
        if piece.num_rows() == 0 {
            continue;
        }
        bytes += piece.get_array_memory_size();
        let key = piece
            .column(table.schema.partition_key)
            .as_dictionary::<Int32Type>();
        let dict = key.values().as_string::<i32>();
        let clean = (0..dict.len())
            .all(|i| partition_for(&table.schema.name, dict.value(i), partitions) == p);
        if clean {
            checked.push((p, compact_symbols(table, piece, None)?));
            continue;
        }
        let mut again = split_by_partition(table, &piece, partitions)?;
        match (again.pop(), again.is_empty()) {
            (Some((q, piece)), true) if q == p => checked.push((p, piece)),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "rows sent for partition {p} include rows of other partitions"
                )))
            }
        }
    }
    encode_pieces(table, checked, bytes)
}

/// Encode the WAL payloads of pieces in the table's types, one per partition share.
fn encode_pieces(
    table: &Arc<TableData>,
    pieces: Vec<(u32, RecordBatch)>,
    size_hint: usize,
) -> Result<WriteRequest> {
    let mut payload = Vec::with_capacity(size_hint + 64 * pieces.len());
    let mut out = Vec::with_capacity(pieces.len());
    for (partition, piece) in pieces {
        let start = payload.len();
        encode_rows(table.id, &table.types, &piece, &mut payload)?;
        if payload.len() - start > crate::wal::MAX_RECORD_LEN {
            return Err(Error::InvalidInput(format!(
                "one partition's share of this write is {} bytes; send batches under {} bytes",
                payload.len() - start,
                crate::wal::MAX_RECORD_LEN
            )));
        }
        out.push(WritePiece {
            partition,
            table: table.clone(),
            batch: piece,
            range: start..payload.len(),
            replicated: None,
        });
    }
    // The sender is replaced when the request enters the ring.
    let (done, _) = oneshot::channel();
    Ok(WriteRequest {
        pieces: out,
        payload: bytes::Bytes::from(payload),
        done,
    })
}

/// One request holding the pieces of several (a write to several tables, atomic).
pub(crate) fn merge_requests(reqs: Vec<WriteRequest>) -> WriteRequest {
    let total: usize = reqs.iter().map(|r| r.payload.len()).sum();
    let mut payload = Vec::with_capacity(total);
    let mut pieces = Vec::new();
    for r in reqs {
        let base = payload.len();
        payload.extend_from_slice(&r.payload);
        pieces.extend(r.pieces.into_iter().map(|p| WritePiece {
            range: p.range.start + base..p.range.end + base,
            ..p
        }));
    }
    let (done, _) = oneshot::channel();
    WriteRequest {
        pieces,
        payload: bytes::Bytes::from(payload),
        done,
    }
}

/// Decode records shipped by a primary into a write request (all or nothing). The
/// tables are looked up by the id inside each payload.
pub(crate) fn prepare_replicated(
    records: Vec<ReplicatedRecord>,
    partitions: u32,
    table_by_id: impl Fn(u32) -> Option<Arc<TableData>>,
) -> Result<WriteRequest> {
    let total: usize = records.iter().map(|r| r.payload.len()).sum();
    let mut payload = Vec::with_capacity(total);
    let mut pieces = Vec::with_capacity(records.len());
    for r in records {
        if r.partition >= partitions {
            return Err(Error::InvalidInput(format!(
                "replicated record for partition {} of {partitions}",
                r.partition
            )));
        }
        let id = crate::codec::payload_table_id(&r.payload).ok_or_else(|| {
            Error::InvalidInput(format!(
                "replicated record {}/{} has no valid payload header",
                r.partition, r.seq
            ))
        })?;
        let table = table_by_id(id).ok_or_else(|| {
            Error::InvalidInput(format!(
                "replicated record {}/{} names table id {id}, which this node does not have",
                r.partition, r.seq
            ))
        })?;
        let (_, batch) = crate::codec::decode_rows(&r.payload, &table.types, &table.arrow_schema)
            .map_err(|e| {
            Error::InvalidInput(format!(
                "replicated record {}/{} does not decode: {e}",
                r.partition, r.seq
            ))
        })?;
        let start = payload.len();
        payload.extend_from_slice(&r.payload);
        pieces.push(WritePiece {
            partition: r.partition,
            table,
            batch,
            range: start..payload.len(),
            replicated: Some((r.epoch, r.seq, r.sender_epoch.max(r.epoch), r.prev_epoch)),
        });
    }
    let (done, _) = oneshot::channel();
    Ok(WriteRequest {
        pieces,
        payload: bytes::Bytes::from(payload),
        done,
    })
}

/// Make a batch exactly of the table's Arrow schema, casting what can be cast safely.
pub(crate) fn conform(table: &TableData, batch: RecordBatch) -> Result<RecordBatch> {
    let schema = &table.schema;
    if batch.num_columns() != schema.columns.len() {
        return Err(Error::InvalidInput(format!(
            "table '{}' has {} columns, the data has {}",
            schema.name,
            schema.columns.len(),
            batch.num_columns()
        )));
    }
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (i, (col, def)) in batch.columns().iter().zip(&schema.columns).enumerate() {
        let want = def.ty.arrow_type();
        let col = if col.data_type() == &want {
            col.clone()
        } else if castable(col.data_type(), def.ty) {
            let cast_to = match (def.ty, col.data_type()) {
                // Integers are nanoseconds already: reinterpret, do not scale.
                (ColumnType::Timestamp, DataType::Int64) => Arc::new(
                    col.as_primitive::<arrow::datatypes::Int64Type>()
                        .reinterpret_cast::<arrow::datatypes::TimestampNanosecondType>(),
                ) as ArrayRef,
                _ => cast(col, &want).map_err(|e| {
                    Error::InvalidInput(format!(
                        "column '{}' ({}): cannot convert {} values: {e}",
                        def.name,
                        def.ty,
                        col.data_type()
                    ))
                })?,
            };
            if cast_to.null_count() != col.null_count() {
                return Err(Error::InvalidInput(format!(
                    "column '{}' ({}): some {} values do not fit",
                    def.name,
                    def.ty,
                    col.data_type()
                )));
            }
            cast_to
        } else {
            return Err(Error::InvalidInput(format!(
                "column '{}' is {} but the data has {}",
                def.name,
                def.ty,
                col.data_type()
            )));
        };
        if (i == schema.timestamp || i == schema.partition_key) && col.null_count() > 0 {
            let row = (0..rows).find(|&r| col.is_null(r)).unwrap_or(0);
            return Err(Error::InvalidInput(format!(
                "column '{}' may not be NULL (row {})",
                def.name,
                row + 1
            )));
        }
        columns.push(col);
    }
    Ok(RecordBatch::try_new_with_options(
        table.arrow_schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

fn castable(from: &DataType, to: ColumnType) -> bool {
    use DataType::*;
    let string = matches!(from, Utf8 | LargeUtf8 | Utf8View)
        || matches!(from, Dictionary(_, v) if matches!(v.as_ref(), Utf8 | LargeUtf8));
    let int = matches!(
        from,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64
    );
    match to {
        ColumnType::Symbol | ColumnType::String => string,
        ColumnType::Timestamp => matches!(from, Int64 | Timestamp(_, _)),
        ColumnType::BigInt | ColumnType::Int => int,
        ColumnType::Double => int || matches!(from, Float16 | Float32 | Float64),
        ColumnType::Boolean => false,
    }
}

/// Split rows by partition of their key: one piece per partition present. The key column
/// of each piece gets a dictionary of that partition's values only (computed once per
/// distinct value, not per row); other SYMBOL columns are compacted.
fn split_by_partition(
    table: &TableData,
    batch: &RecordBatch,
    partitions: u32,
) -> Result<Vec<(u32, RecordBatch)>> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let key_col = table.schema.partition_key;
    let key = batch.column(key_col).as_dictionary::<Int32Type>();
    let dict = key.values().as_string::<i32>();
    let dict_parts: Vec<u32> = (0..dict.len())
        .map(|i| partition_for(&table.schema.name, dict.value(i), partitions))
        .collect();
    let keys = key.keys().values();
    let part_of = |row: usize| dict_parts.get(keys[row] as usize).copied().unwrap_or(0);
    let first = part_of(0);
    if (1..keys.len()).all(|r| part_of(r) == first) {
        return Ok(vec![(first, compact_symbols(table, batch.clone(), None)?)]);
    }
    // Per partition: its dictionary values, and each value's index among them.
    let mut local_index = vec![0i32; dict.len()];
    let mut local_values: Vec<Vec<usize>> = vec![Vec::new(); partitions as usize];
    for (v, &p) in dict_parts.iter().enumerate() {
        let list = &mut local_values[p as usize];
        local_index[v] = list.len() as i32;
        list.push(v);
    }
    // Counting sort of row indexes by partition.
    let mut counts = vec![0u32; partitions as usize + 1];
    for r in 0..keys.len() {
        counts[part_of(r) as usize + 1] += 1;
    }
    for p in 0..partitions as usize {
        counts[p + 1] += counts[p];
    }
    let starts = counts.clone();
    let mut order = vec![0u32; keys.len()];
    for r in 0..keys.len() {
        let p = part_of(r) as usize;
        order[counts[p] as usize] = r as u32;
        counts[p] += 1;
    }
    let order = UInt32Array::from(order);
    let mut out = Vec::new();
    for p in 0..partitions as usize {
        let (s, e) = (starts[p] as usize, starts[p + 1] as usize);
        if e == s {
            continue;
        }
        let idx = order.slice(s, e - s);
        let piece = take_record_batch(batch, &idx)?;
        // Rebuild the key column on the partition's own dictionary.
        let taken = piece.column(key_col).as_dictionary::<Int32Type>();
        let new_keys: Vec<i32> = taken
            .keys()
            .values()
            .iter()
            .map(|&k| local_index.get(k as usize).copied().unwrap_or(0))
            .collect();
        let values = arrow::array::StringArray::from_iter_values(
            local_values[p].iter().map(|&v| dict.value(v)),
        );
        let new_key = DictionaryArray::<Int32Type>::try_new(
            Int32Array::new(new_keys.into(), taken.keys().nulls().cloned()),
            Arc::new(values),
        )?;
        out.push((
            p as u32,
            compact_symbols(table, piece, Some(Arc::new(new_key)))?,
        ));
    }
    Ok(out)
}

/// Re-encode SYMBOL columns (other than the partition key, which the caller may replace
/// with `key`) whose dictionary holds values the rows do not use.
fn compact_symbols(
    table: &TableData,
    batch: RecordBatch,
    key: Option<ArrayRef>,
) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    let mut changed = false;
    if let Some(k) = key {
        columns[table.schema.partition_key] = k;
        changed = true;
    }
    for (i, ty) in table.types.iter().enumerate() {
        if *ty == ColumnType::Symbol && i != table.schema.partition_key {
            let d = columns[i].as_dictionary::<Int32Type>();
            if d.values().len() > d.len() || d.values().len() > 1 {
                let c = compact_dictionary(d)?;
                if c.as_dictionary::<Int32Type>().values().len() < d.values().len() {
                    columns[i] = c;
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return Ok(batch);
    }
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}
