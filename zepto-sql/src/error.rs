//! The one error type of `zepto-sql`, and the small set of kinds the HTTP layer maps to status
//! codes.

use zepto_storage::Error as StorageError;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is, for the public edge (HTTP status + machine code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The statement is wrong: syntax, unknown column, type mismatch (400).
    BadRequest,
    /// A table that does not exist (404).
    NotFound,
    /// The query ran past its deadline (408).
    Timeout,
    /// The query needed more memory than its budget (413).
    TooLarge,
    /// Storage is overloaded; retry later (503).
    Unavailable,
    /// A bug or an I/O failure (500).
    Internal,
}

impl ErrorKind {
    /// A stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "BAD_REQUEST",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::TooLarge => "TOO_LARGE",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

/// Everything that can go wrong between SQL text and record batches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL text does not parse; the message carries the line and column.
    #[error("syntax error: {0}")]
    Syntax(String),

    /// Valid SQL that zeptodb does not implement.
    #[error("not supported: {0}")]
    Unsupported(String),

    /// A table that does not exist.
    #[error("table '{0}' does not exist")]
    TableNotFound(String),

    /// A column name that resolves to nothing in scope.
    #[error("column '{0}' does not exist")]
    ColumnNotFound(String),

    /// A column name that resolves to more than one column in scope.
    #[error("column reference '{0}' is ambiguous")]
    AmbiguousColumn(String),

    /// An expression applied to types it does not accept.
    #[error("type mismatch: {0}")]
    TypeMismatch(String),

    /// Any other invalid statement (bad literal, wrong argument count, bad INSERT shape).
    #[error("{0}")]
    Invalid(String),

    /// The query's intermediate results exceed its memory budget.
    #[error("query exceeded its memory budget of {limit} bytes (needed at least {needed} bytes while {during}); add filters or a LIMIT, or raise memory_limit")]
    MemoryLimit {
        limit: usize,
        needed: usize,
        during: &'static str,
    },

    /// The query ran longer than its timeout.
    #[error("query exceeded its timeout of {timeout_ms} ms")]
    Timeout { timeout_ms: u128 },

    /// An error from the storage engine.
    #[error(transparent)]
    Storage(#[from] StorageError),

    /// An Arrow kernel failed; usually a type problem in the query.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// An invariant that does not hold: a bug, reported rather than a panic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The kind of this error, for the HTTP status code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Syntax(_)
            | Error::Unsupported(_)
            | Error::ColumnNotFound(_)
            | Error::AmbiguousColumn(_)
            | Error::TypeMismatch(_)
            | Error::Invalid(_) => ErrorKind::BadRequest,
            Error::TableNotFound(_) => ErrorKind::NotFound,
            Error::MemoryLimit { .. } => ErrorKind::TooLarge,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Storage(e) => match e {
                StorageError::TableNotFound(_) => ErrorKind::NotFound,
                StorageError::Backpressure { .. } => ErrorKind::Unavailable,
                e if e.is_client_error() => ErrorKind::BadRequest,
                _ => ErrorKind::Internal,
            },
            // Arrow errors raised while evaluating user expressions (overflow, bad cast)
            // are the statement's fault; the planner type-checks everything else.
            Error::Arrow(e) => match e {
                arrow::error::ArrowError::ComputeError(_)
                | arrow::error::ArrowError::CastError(_)
                | arrow::error::ArrowError::ParseError(_)
                | arrow::error::ArrowError::ArithmeticOverflow(_)
                | arrow::error::ArrowError::DivideByZero => ErrorKind::BadRequest,
                _ => ErrorKind::Internal,
            },
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Shorthand for a type mismatch error.
pub(crate) fn type_err(msg: impl Into<String>) -> Error {
    Error::TypeMismatch(msg.into())
}

/// Shorthand for an invalid-statement error.
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// Shorthand for an unsupported-feature error.
pub(crate) fn unsupported(msg: impl Into<String>) -> Error {
    Error::Unsupported(msg.into())
}
