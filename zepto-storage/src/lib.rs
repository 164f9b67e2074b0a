//! # zepto-storage
//!
//! The storage engine of zeptodb: everything between "these rows must be stored" and
//! "these Arrow arrays hold the rows you asked for". It owns the ingest ring, the
//! write-ahead log, the in-memory column store (RDB), the on-disk columnar files (HDB),
//! checkpoints and crash recovery.
//!
//! The write path, in order: [`Db::write`] checks and converts the batch, splits it by
//! partition and encodes WAL payloads on the caller's thread (`ingest.rs`); the request
//! waits in the bounded ingest ring; the single WAL writer (`engine/writer.rs`)
//! group-commits it (`wal.rs`: one write, one fdatasync), applies it to memory (`rdb.rs`)
//! and only then acknowledges. The maintenance thread (`engine/maintenance.rs`) merges
//! small pieces, seals chunks into Arrow IPC files (`hdb.rs`) and takes checkpoints
//! (`checkpoint.rs`). Both threads can run below the queries' priority
//! (`Config::background_nice`, `priority.rs`; ADR 0013).
//! Recovery (`engine/recovery.rs`) loads the newest checkpoint and replays the WAL.
//! Whole partitions are copied between nodes with [`Db::export_partition`] and
//! [`Db::begin_partition_import`] (`engine/transfer.rs`).
//!
//! Why this shape: one writer makes the WAL order the only order, so a checkpoint is an
//! exact cut taken between two group commits; immutable Arrow pieces make scans
//! zero-copy and lock-free after a pointer copy.
//!
//! It depends on no other zepto crate and must not: `zepto-sql` reads through
//! [`Db::scan`], `zeptod` writes through [`Db::write`].

mod batch;
mod catalog;
mod checkpoint;
mod codec;
mod engine;
pub mod error;
pub mod faults;
mod fsutil;
mod hdb;
mod ingest;
pub mod priority;
mod rdb;
pub mod scan;
pub mod schema;
pub mod wal;

pub use catalog::FORMAT_VERSION;
pub use checkpoint::CheckpointInfo;
pub use engine::{
    Clock, CommitListenerFn, Config, CorruptFile, Db, DbStats, MonotonicClock, PartitionExport,
    PartitionImport, PartitionLog, RecoveryInfo, TableExport, VerifyReport,
    DEFAULT_IMPORT_BUDGET_BYTES,
};
pub use error::{Error, Result};
pub use ingest::{partition_for, CommittedRecord, ReplicatedRecord, WriteReceipt, WriteTicket};
pub use scan::{ChunkSource, ScanChunk, ScanRequest, ScanStats, TableScan, TimeRange};
pub use schema::{ColumnDef, ColumnType, TableSchema};
pub use wal::WalPosition;

/// The table id of a WAL record payload ([`ReplicatedRecord::payload`]), without decoding
/// it; `None` when it is not a rows payload.
pub fn payload_table_id(payload: &[u8]) -> Option<u32> {
    codec::payload_table_id(payload)
}

/// Decode a WAL record payload ([`ReplicatedRecord::payload`], e.g. from a WAL archive)
/// into its rows, in the Arrow schema of `schema` (the table the payload's id names).
/// Corrupt or mismatched input is [`Error::Corrupt`] naming `what`, never a panic.
pub fn decode_payload(
    payload: &[u8],
    schema: &TableSchema,
    what: &str,
) -> Result<arrow::record_batch::RecordBatch> {
    let types: Vec<ColumnType> = schema.columns.iter().map(|c| c.ty).collect();
    codec::decode_rows(payload, &types, &schema.arrow_schema())
        .map(|(_, b)| b)
        .map_err(|reason| Error::Corrupt {
            path: what.into(),
            offset: 0,
            reason,
        })
}
