//! Backups, continuous WAL archiving and restore to object storage (ADR 0011).
//!
//! - [`store`]: the location (`s3://`, `gs://`, `az://`, `file://`) through `object_store`.
//! - [`format`]: what the location holds (manifests, content-addressed row objects,
//!   archived WAL objects), each checksummed.
//! - [`base`]: base backups (`POST /admin/backup`, coordinated across a cluster).
//! - [`archive`]: continuous WAL archiving (`--archive-url`).
//! - [`restore`]: restore into an empty data directory or an empty running server.
//! - [`cli`]: `zeptod backup [list|prune]` and `zeptod restore`.

pub(crate) mod archive;
pub(crate) mod base;
pub(crate) mod cli;
pub(crate) mod format;
pub(crate) mod restore;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::http::AppState;
use base::{BackupSummary, PartsUploaded};
use store::Store;

/// Backup state of one server process.
#[derive(Debug)]
pub(crate) struct Backups {
    pub(crate) archive: Arc<archive::ArchiveStatus>,
    /// The last base backup this node coordinated: its summary or its error.
    last: parking_lot::Mutex<Option<serde_json::Value>>,
    /// One base backup at a time per node.
    running: tokio::sync::Mutex<()>,
    pub(crate) started_unix_ms: i64,
}

impl Default for Backups {
    fn default() -> Self {
        Backups {
            archive: Arc::default(),
            last: parking_lot::Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
            started_unix_ms: chrono::Utc::now().timestamp_millis(),
        }
    }
}

impl Backups {
    /// For `/admin/cluster` and `GET /admin/backup`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "archive": self.archive.to_json(self.started_unix_ms),
            "last_backup": self.last.lock().clone(),
        })
    }

    pub(crate) fn metrics_text(&self) -> String {
        self.archive.metrics_text(self.started_unix_ms)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// Location; default: the server's `--archive-url`.
    to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionsBody {
    to: String,
    partitions: Vec<u32>,
}

fn parse_body<T: for<'a> Deserialize<'a> + Default>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("request body: {e}")))
}

fn open_store(state: &AppState, url: &str) -> Result<Store> {
    Store::open(url, &state.cfg.store).map_err(|e| Error::BadRequest(e.to_string()))
}

/// `GET /admin/backup`: archive status and the last base backup.
pub(crate) async fn http_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    Ok(json(StatusCode::OK, state.backups.to_json()))
}

/// `POST /admin/backup` (`{"to": URL}` optional): take a base backup of the whole database
/// (in a cluster, every node uploads its primaries); answers when the manifest is written.
pub(crate) async fn http_backup(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    let body: BackupBody = parse_body(&body)?;
    let result = take_backup(&state, &headers, body.to).await;
    let record = match &result {
        Ok(s) => serde_json::to_value(s).unwrap_or_default(),
        Err(e) => {
            serde_json::json!({"error": e.to_string(), "at": chrono::Utc::now().to_rfc3339()})
        }
    };
    *state.backups.last.lock() = Some(record);
    let s = result?;
    Ok(json(
        StatusCode::OK,
        serde_json::to_value(s).unwrap_or_default(),
    ))
}

/// `POST /admin/backup/partitions` (`{"to": URL, "partitions": [..]}`): a coordinator asks
/// this node to upload the partitions it is primary for.
pub(crate) async fn http_backup_partitions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    let body: PartitionsBody = serde_json::from_slice(&body)
        .map_err(|e| Error::BadRequest(format!("request body: {e}")))?;
    let node = state.node()?;
    let me = state.cluster().map(|c| {
        let id = c.node_id();
        let view = c.view();
        (id, view)
    });
    if let Some(c) = state.cluster() {
        // An empty data directory the map still names primary would upload nothing.
        c.check_data_intact()?;
    }
    if let Some((id, view)) = &me {
        for &p in &body.partitions {
            let primary = view.state.partitions.get(p as usize).map(|i| i.primary);
            if primary != Some(*id) {
                return Err(Error::Conflict(format!(
                    "node {id} is not the primary of partition {p} (now {primary:?})"
                )));
            }
        }
    }
    let store = open_store(&state, &body.to)?;
    let up = base::upload_partitions(node, &store, &body.partitions, me.map(|m| m.0)).await?;
    Ok(json(
        StatusCode::OK,
        serde_json::to_value(up).unwrap_or_default(),
    ))
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn take_backup(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    to: Option<String>,
) -> Result<BackupSummary> {
    let url = to
        .or_else(|| state.cfg.archive_url.clone())
        .ok_or_else(|| {
            Error::BadRequest(
                "no backup location: send {\"to\": \"s3://bucket/prefix\"} or start zeptod with \
             --archive-url"
                    .into(),
            )
        })?;
    let store = open_store(state, &url)?;
    let node = state.node()?;
    let Ok(_one) = state.backups.running.try_lock() else {
        return Err(Error::Conflict(
            "a base backup is already running on this node".into(),
        ));
    };
    store.check().await?;
    let started = Instant::now();
    tracing::info!(location = %store.url(), "base backup started");
    let uploaded = match state.cluster() {
        None => {
            let all: Vec<u32> = (0..node.storage().partitions()).collect();
            vec![base::upload_partitions(node.clone(), &store, &all, None).await?]
        }
        Some(c) => {
            let me = c.node_id();
            let view = c.view();
            let mut by_node: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
            for p in &view.state.partitions {
                by_node.entry(p.primary).or_default().push(p.id);
            }
            let auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
            let mut jobs = Vec::new();
            for (id, parts) in by_node {
                let node = node.clone();
                let store = store.clone();
                let addr = view.state.nodes.get(&id).map(|n| n.http_addr.clone());
                let auth = auth.clone();
                let url = url.clone();
                jobs.push(async move {
                    if id == me {
                        return base::upload_partitions(node, &store, &parts, Some(id)).await;
                    }
                    let addr = addr.ok_or_else(|| {
                        Error::Internal(format!("node {id} has no HTTP address in the metadata"))
                    })?;
                    remote_upload(&addr, auth, &url, &parts)
                        .await
                        .map_err(|e| Error::Unavailable {
                            message: format!("backup of node {id}'s partitions failed: {e}"),
                            retry_after: Some(5),
                        })
                });
            }
            let mut out = Vec::new();
            for r in futures_util::future::join_all(jobs).await {
                out.push(r?);
            }
            out
        }
    };
    base::finish_backup(&store, &node, uploaded, started).await
}

async fn remote_upload(
    addr: &str,
    auth: Option<axum::http::HeaderValue>,
    url: &str,
    parts: &[u32],
) -> Result<PartsUploaded> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(6 * 3600))
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
    let target = if addr.starts_with("http") {
        format!("{addr}/admin/backup/partitions")
    } else {
        format!("http://{addr}/admin/backup/partitions")
    };
    let mut req = client
        .post(&target)
        .body(serde_json::json!({"to": url, "partitions": parts}).to_string());
    if let Some(a) = auth {
        req = req.header(reqwest::header::AUTHORIZATION, a.as_bytes());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Error::Internal(format!("POST {target}: {e}")))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| Error::Internal(format!("POST {target}: {e}")))?;
    if !status.is_success() {
        return Err(Error::Internal(format!(
            "POST {target}: {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| Error::Internal(format!("POST {target}: bad answer: {e}")))
}
