//! The storage crate's error type. Variants carry the identifiers a caller needs
//! (file, offset, table, versions) so that an operator can act on the message.

use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ingest ring is full (or over its byte budget): retry after a short wait.
    /// The HTTP layer turns this into `503` with `Retry-After`.
    #[error("ingest queue is full ({queued_requests} requests, {queued_bytes} bytes queued); retry later")]
    Backpressure {
        queued_requests: usize,
        queued_bytes: usize,
    },

    /// A table that does not exist.
    #[error("table '{0}' does not exist")]
    TableNotFound(String),

    /// A table that already exists.
    #[error("table '{0}' already exists")]
    TableExists(String),

    /// A column that does not exist.
    #[error("column '{column}' does not exist in table '{table}'")]
    ColumnNotFound { table: String, column: String },

    /// Input that does not fit the schema or is otherwise invalid (a client error).
    #[error("{0}")]
    InvalidInput(String),

    /// A file on disk that does not decode (bad checksum, bad magic, truncated).
    #[error("corrupt file {}: {reason} at offset {offset}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A data directory written by a newer (or unknown) format version.
    #[error("data directory {} has format version {found}; this zeptod reads versions up to {supported}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// The data directory was created with different fixed settings.
    #[error("data directory {} was created with {what} = {found}, but {requested} was requested", path.display())]
    Incompatible {
        path: PathBuf,
        what: &'static str,
        found: u64,
        requested: u64,
    },

    /// An I/O error, with what we were doing when it happened.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The WAL cannot accept writes any more (an fsync failed: the state of the
    /// page cache is unknown, so nothing further may be acknowledged until restart).
    #[error("WAL is unavailable: {0}")]
    WalPoisoned(String),

    /// A replicated record from an older epoch than this node knows for the partition:
    /// it comes from a deposed primary and is refused.
    #[error("partition {partition}: epoch {epoch} is older than the current epoch {current}")]
    Fenced {
        partition: u32,
        epoch: u64,
        current: u64,
    },

    /// A replicated record that skips sequence numbers: the replica missed records and
    /// must catch up first.
    #[error("partition {partition}: expected WAL sequence {expected}, got {got}")]
    SeqGap {
        partition: u32,
        expected: u64,
        got: u64,
    },

    /// A primary sent a record at a sequence number this node already used, under a newer
    /// epoch than this node's own record there: this node's tail of the partition was never
    /// replicated (it was a deposed primary) and differs from the new primary's. It must be
    /// replaced by a copy of the partition, never merged.
    #[error("partition {partition}: this node's records from sequence {seq} (epoch {local_epoch}) diverge from the primary's (epoch {epoch}); the partition needs a full copy")]
    Diverged {
        partition: u32,
        seq: u64,
        epoch: u64,
        local_epoch: u64,
    },

    /// The WAL no longer holds the records asked for (a checkpoint covered and recycled
    /// them): the reader needs a copy of the partition instead.
    #[error("partition {partition}: WAL records from sequence {from_seq} are gone (oldest kept: {oldest})")]
    WalTruncated {
        partition: u32,
        from_seq: u64,
        oldest: u64,
    },

    /// The partition is being replaced by an import ([`crate::Db::begin_partition_import`]):
    /// writes to it (local and replicated) are refused until the import finishes, and a
    /// second import of it cannot start. Also answered after an import failed once it had
    /// replaced the partition in memory but could not make that durable: retry the import.
    #[error("partition {partition} is being replaced by a partition import; writes to it are refused until it finishes")]
    PartitionImporting { partition: u32 },

    /// The engine is shutting down or has shut down.
    #[error("storage engine is shut down")]
    Shutdown,

    /// An Arrow error while building or decoding arrays.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// An invariant inside the engine does not hold: a bug, reported rather than a panic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wrap an I/O error with a verb phrase saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error is the client's fault (bad input, unknown table...).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::TableNotFound(_)
                | Error::TableExists(_)
                | Error::ColumnNotFound { .. }
                | Error::InvalidInput(_)
        )
    }
}

/// Extension to attach a context to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
