//! The scan API that `zepto-sql` reads through: given a table, the partitions and time range a
//! query needs, and the columns it reads, yield Arrow record batches from RDB (memory) and HDB
//! (mmapped files) chunks without copying rows.
//!
//! Pruning happens here: partitions not asked for and chunks whose `[min_ts, max_ts]` does not
//! overlap the time range are never touched. Inside a chunk that is in time order the range
//! is found by binary search and the batches are sliced (zero-copy); a chunk that received
//! out-of-order rows is filtered instead. Batches returned hold exactly the rows inside the
//! range.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::schema::TableSchema;

/// A half-open range of timestamps `[start, end)` in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start: i64,
    pub end: i64,
}

impl TimeRange {
    /// Every timestamp.
    pub const ALL: TimeRange = TimeRange {
        start: i64::MIN,
        end: i64::MAX,
    };

    /// `[start, end)`.
    pub fn new(start: i64, end: i64) -> TimeRange {
        TimeRange { start, end }
    }

    /// True when no timestamp is inside.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// True when `[min, max]` (inclusive) overlaps this range.
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        min < self.end && max >= self.start && !self.is_empty()
    }

    /// True when `[min, max]` (inclusive) lies entirely inside this range.
    pub fn covers(&self, min: i64, max: i64) -> bool {
        min >= self.start && max < self.end
    }

    /// True when `ts` is inside.
    pub fn contains(&self, ts: i64) -> bool {
        ts >= self.start && ts < self.end
    }

    /// The intersection of two ranges.
    pub fn intersect(&self, other: &TimeRange) -> TimeRange {
        TimeRange {
            start: self.start.max(other.start),
            end: self.end.min(other.end),
        }
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// Table name.
    pub table: String,
    /// Column indexes (into the table schema) to read, in this order; `None` = all columns.
    pub columns: Option<Vec<usize>>,
    /// Partitions to read; `None` = all.
    pub partitions: Option<Vec<u32>>,
    /// Timestamp range of the designated timestamp column.
    pub time_range: TimeRange,
}

impl ScanRequest {
    /// Every row and column of a table.
    pub fn all(table: impl Into<String>) -> ScanRequest {
        ScanRequest {
            table: table.into(),
            columns: None,
            partitions: None,
            time_range: TimeRange::ALL,
        }
    }
}

/// Where a chunk's data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSource {
    /// In memory (RDB), still receiving rows or waiting to be flushed.
    Memory,
    /// An Arrow IPC file in the HDB directory, read through mmap.
    Disk,
}

/// The rows of one chunk that matched the request.
#[derive(Debug, Clone)]
pub struct ScanChunk {
    pub partition: u32,
    /// Start of the chunk's time bucket (aligned to the chunk duration).
    pub bucket_start: i64,
    /// Smallest and largest timestamp of the whole chunk (before range slicing).
    pub min_ts: i64,
    pub max_ts: i64,
    /// True when the rows in `batches`, taken in order, are sorted by timestamp.
    pub sorted: bool,
    pub source: ChunkSource,
    /// The matching rows, projected to the requested columns.
    pub batches: Vec<RecordBatch>,
}

impl ScanChunk {
    /// Number of rows returned for this chunk.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// What pruning did, for `EXPLAIN` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub partitions_total: u32,
    pub partitions_scanned: u32,
    pub chunks_total: u64,
    pub chunks_scanned: u64,
    pub rows_scanned: u64,
}

/// The answer to a [`ScanRequest`].
#[derive(Debug, Clone)]
pub struct TableScan {
    pub table: Arc<TableSchema>,
    /// Arrow schema of the returned batches (the projection).
    pub schema: SchemaRef,
    /// Column indexes (into the table schema) of `schema`'s fields.
    pub columns: Vec<usize>,
    pub chunks: Vec<ScanChunk>,
    pub stats: ScanStats,
}

impl TableScan {
    /// Total number of rows returned.
    pub fn num_rows(&self) -> usize {
        self.chunks.iter().map(|c| c.num_rows()).sum()
    }

    /// All batches, chunk after chunk.
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.chunks.iter().flat_map(|c| c.batches.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_overlap_and_cover() {
        let r = TimeRange::new(10, 20);
        assert!(r.overlaps(5, 10));
        assert!(!r.overlaps(20, 30));
        assert!(!r.overlaps(0, 9));
        assert!(r.covers(10, 19));
        assert!(!r.covers(10, 20));
        assert!(TimeRange::ALL.covers(i64::MIN, i64::MAX - 1));
        assert!(TimeRange::new(5, 5).is_empty());
        assert!(!TimeRange::new(5, 5).overlaps(0, 10));
    }
}
