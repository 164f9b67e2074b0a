//! The one error type of `zepto-cluster`.
//!
//! Variants carry the identifiers a caller needs to act (which partition, which epoch, who the
//! primary is), never just a string. [`Error::kind`] maps each variant onto the small stable set
//! of kinds the HTTP edge turns into a status code and a machine-readable `code`.

use std::path::PathBuf;

use crate::failover::UnavailableReason;
use crate::state::{NodeId, PartitionId, Rejected};

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cluster logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request carried an epoch older (or newer) than the one this node knows for the
    /// partition. The sender is a zombie or holds a stale partition map.
    #[error("fenced: partition {partition} request at epoch {epoch}, current epoch is {current}")]
    Fenced {
        partition: PartitionId,
        epoch: u64,
        current: u64,
    },
    /// A request carried a newer epoch than this node has seen committed: this node's
    /// metadata is behind; it must catch up before acting on the request.
    #[error("stale metadata: partition {partition} known epoch {known}, request at {seen}")]
    StaleMetadata {
        partition: PartitionId,
        known: u64,
        seen: u64,
    },
    /// This node is not the primary of the partition; `primary` is who is, as far as we know.
    #[error("not primary for partition {partition} at epoch {epoch}; primary is {primary:?}")]
    NotPrimary {
        partition: PartitionId,
        epoch: u64,
        primary: Option<NodeId>,
    },
    /// No node can take requests for the partition: its primary is not serving and failover
    /// is pending (`reason: None`) or impossible (`reason` says why).
    #[error("partition {partition} is unavailable: {}", match reason { Some(r) => format!("{r:?}"), None => "failover in progress".to_string() })]
    PartitionUnavailable {
        partition: PartitionId,
        reason: Option<UnavailableReason>,
    },
    /// The primary's write lease ran out: it has not heard from the raft majority recently
    /// enough to be sure nobody promoted its replica, so it refuses writes on its own.
    #[error("partition {partition}: write lease expired, primary has lost contact with the metadata majority")]
    LeaseExpired { partition: PartitionId },
    /// A metadata command was rejected by the state machine.
    #[error("metadata command rejected: {0}")]
    Rejected(#[from] Rejected),
    /// This node is not the raft leader, so it cannot propose; `leader` is the one it knows of.
    #[error("not the metadata leader; leader is {leader:?}")]
    NotLeader { leader: Option<NodeId> },
    /// Timing settings that contradict each other.
    #[error("invalid cluster timings: {0}")]
    InvalidTimings(String),
    /// Bad input from a caller (placement over zero nodes, an unknown node, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An encoded command, snapshot or raft message could not be decoded.
    #[error("decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// A persisted metadata file is corrupt at a given offset.
    #[error("corrupt {path} at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// An I/O error with a verb-phrase context ("append raft log entries").
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// raft-rs refused an operation (proposal dropped, step of a bad message, ...).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// The stable, public kinds errors are reported as (HTTP status + `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Fenced,
    Unavailable,
    Internal,
}

impl Error {
    /// Which public kind this error is reported as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Fenced { .. } => ErrorKind::Fenced,
            Error::NotPrimary { .. }
            | Error::StaleMetadata { .. }
            | Error::PartitionUnavailable { .. }
            | Error::LeaseExpired { .. }
            | Error::NotLeader { .. } => ErrorKind::Unavailable,
            Error::Rejected(r) => match r {
                Rejected::UnknownNode { .. }
                | Rejected::UnknownPartition { .. }
                | Rejected::UnknownTable { .. } => ErrorKind::NotFound,
                Rejected::EpochMismatch { .. } | Rejected::NotPrimary { .. } => ErrorKind::Fenced,
                _ => ErrorKind::BadRequest,
            },
            Error::InvalidTimings(_) | Error::InvalidInput(_) => ErrorKind::BadRequest,
            Error::Decode { .. } => ErrorKind::BadRequest,
            Error::Corrupt { .. } | Error::Io { .. } | Error::Raft(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
