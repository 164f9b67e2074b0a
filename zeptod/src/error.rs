//! The server's error type and how each error looks on the wire:
//! `{"error":{"code":"BAD_REQUEST","message":"..."}}` with the matching status code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The result type of this crate.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the server can answer with or fail on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The request is malformed (bad SQL, bad data row, unknown format...).
    #[error("{0}")]
    BadRequest(String),
    /// The method is not allowed for this request (a write sent with GET).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No or an unknown API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The key's role may not do this, or the endpoint is not open to this client.
    #[error("{0}")]
    Forbidden(String),
    /// A table, column or route that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request carried an epoch older than the one this node knows, or reached a primary
    /// that may have been replaced (cluster mode): nothing was applied.
    #[error("{0}")]
    Fenced(String),
    /// The request conflicts with the cluster's current state (e.g. a drain that would leave
    /// a partition without an in-sync copy).
    #[error("{0}")]
    Conflict(String),
    /// Not ready, shutting down, or overloaded; `retry_after` seconds when known.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Option<u64>,
    },
    /// The body or the result is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// The query or the body upload took longer than allowed.
    #[error("{0}")]
    Timeout(String),
    /// A bug or an I/O failure on the server.
    #[error("{0}")]
    Internal(String),
    /// The backup location (object store) failed or holds something unusable: unreachable,
    /// refused credentials, no such bucket, a missing or corrupt object (named).
    #[error("{0}")]
    Backup(String),
    /// Invalid configuration at startup.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O error at startup or shutdown, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wrap an I/O error with a verb phrase.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Status code and machine-readable code.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            Error::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "BAD_REQUEST"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Error::Fenced(_) => (StatusCode::CONFLICT, "FENCED"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE"),
            Error::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "TIMEOUT"),
            Error::Backup(_) => (StatusCode::BAD_GATEWAY, "UNAVAILABLE"),
            Error::Internal(_) | Error::Config(_) | Error::Io { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
            }
        }
    }

    /// The JSON body of this error.
    pub(crate) fn to_json(&self) -> String {
        let (_, code) = self.status_and_code();
        serde_json::json!({"error": {"code": code, "message": self.to_string()}}).to_string()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if status.is_server_error() && !matches!(self, Error::Unavailable { .. }) {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = (status, self.to_json()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Error::Unavailable {
            retry_after: Some(s),
            ..
        } = &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*s));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = Error::NotFound("table 'x' does not exist".into());
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "NOT_FOUND");
        assert_eq!(v["error"]["message"], "table 'x' does not exist");
        assert_eq!(e.status_and_code().0, StatusCode::NOT_FOUND);
        let r = Error::Unavailable {
            message: "busy".into(),
            retry_after: Some(1),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
