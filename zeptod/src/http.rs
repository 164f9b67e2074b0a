//! The HTTP API on :8123 (ClickHouse conventions): routes, request handling, auth checks,
//! streaming responses. Every data request ends in [`crate::db::Node`]: SQL through
//! `Node::execute`, bulk inserts and line protocol through `Node::write` (durable ack).
//!
//! | route | what |
//! |---|---|
//! | `GET /?query=`, `POST /` | SQL; trailing `FORMAT x` or `?default_format=x` picks the output |
//! | `POST /?query=INSERT INTO t FORMAT CSV` + data | bulk insert (also header + data in one body) |
//! | `POST /write`, `POST /api/v2/write` | InfluxDB line protocol |
//! | `GET /health`, `/ready`, `/ping` | probes |
//! | `GET /metrics` | Prometheus text |
//! | `POST /admin/snapshot`, `POST /admin/drain`, `GET /admin/cluster` | admin (admin key) |
//! | `POST /admin/decommission?node=N` | admin: move everything off data node N, remove it |

pub(crate) mod ilp;
pub(crate) mod input;
pub(crate) mod output;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::auth::{Auth, Role};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::db::{Node, SqlOutput};
use crate::error::{Error, Result};
use crate::ingest_pool::IngestPool;
use crate::metrics::Metrics;
use crate::sql_text;
use input::InputFormat;
use output::{Encoder, OutputFormat, PIECE_ROWS};

/// The client's address, put into each request by the connection loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;
const FAILED: u8 = 3;

/// Shared server state.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) cfg: Config,
    pub(crate) auth: Auth,
    pub(crate) metrics: Metrics,
    /// Base backups and WAL archiving (ADR 0011).
    pub(crate) backups: crate::backup::Backups,
    /// Decodes ingest bodies at a lower priority than queries (`--ingest-nice`).
    pub(crate) ingest: IngestPool,
    node: OnceLock<Arc<Node>>,
    /// Set in cluster mode.
    cluster: OnceLock<Arc<Cluster>>,
    phase: AtomicU8,
    started: Instant,
}

impl AppState {
    pub(crate) fn new(cfg: Config, auth: Auth, ingest: IngestPool) -> AppState {
        AppState {
            cfg,
            auth,
            metrics: Metrics::default(),
            backups: crate::backup::Backups::default(),
            ingest,
            node: OnceLock::new(),
            cluster: OnceLock::new(),
            phase: AtomicU8::new(STARTING),
            started: Instant::now(),
        }
    }

    /// Cluster mode: this node's cluster handle.
    pub(crate) fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Cluster mode: this node's cluster handle.
    pub(crate) fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().cloned()
    }

    /// The database finished opening.
    pub(crate) fn set_ready(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
        let _ = self
            .phase
            .compare_exchange(STARTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Shutdown began: `/ready` turns false.
    pub(crate) fn set_draining(&self) {
        self.phase.store(DRAINING, Ordering::SeqCst);
    }

    /// The database could not be opened.
    pub(crate) fn set_failed(&self) {
        self.phase.store(FAILED, Ordering::SeqCst);
    }

    /// The open database, or 503 while it is opening or closing.
    pub(crate) fn node(&self) -> Result<Arc<Node>> {
        match (self.phase.load(Ordering::SeqCst), self.node.get()) {
            (READY | DRAINING, Some(n)) => Ok(n.clone()),
            (FAILED, _) => Err(Error::Unavailable {
                message: "the database failed to open; see the server log".into(),
                retry_after: None,
            }),
            _ => Err(Error::Unavailable {
                message:
                    "recovering: the database is still opening (checkpoint load and WAL replay)"
                        .into(),
                retry_after: Some(1),
            }),
        }
    }

    /// The node for shutdown, whatever the phase.
    pub(crate) fn node_for_close(&self) -> Option<Arc<Node>> {
        self.node.get().cloned()
    }
}

/// Build the router.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(query_get).post(query_post))
        .route("/write", post(ilp_write))
        .route("/api/v2/write", post(ilp_write))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/ping", get(ping))
        .route("/metrics", get(metrics))
        .route("/admin/snapshot", post(admin_snapshot))
        .route("/admin/verify", post(admin_verify))
        .route("/admin/drain", post(admin_drain))
        .route("/admin/cluster", get(admin_cluster))
        .route(
            "/admin/backup",
            get(crate::backup::http_status).post(crate::backup::http_backup),
        )
        .route(
            "/admin/backup/partitions",
            post(crate::backup::http_backup_partitions),
        )
        .route("/admin/decommission", post(admin_decommission))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            log_request,
        ))
        .with_state(state)
}

async fn log_request(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    state.metrics.http_request(status.as_u16());
    tracing::debug!(%method, %path, status = status.as_u16(), elapsed_us = start.elapsed().as_micros() as u64, "request");
    resp
}

async fn not_found(req: Request) -> Error {
    Error::NotFound(format!(
        "no such endpoint: {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> Error {
    Error::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

fn params(req: &Request) -> Result<HashMap<String, String>> {
    Query::<HashMap<String, String>>::try_from_uri(req.uri())
        .map(|q| q.0)
        .map_err(|e| Error::BadRequest(format!("bad query string: {e}")))
}

fn peer_ip(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<PeerAddr>().map(|p| p.0.ip())
}

/// Read the whole body, enforcing `--max-body-bytes` (413) and the body read timeout (408).
async fn read_body(state: &AppState, req: Request) -> Result<Bytes> {
    let max = state.cfg.max_body_bytes;
    let too_large = || {
        Error::TooLarge(format!(
            "request body is larger than --max-body-bytes ({max} bytes); nothing was inserted"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let read = async {
        // Reserve what the client declared, up to 64 MiB (a declared length is a claim, not
        // data: a slow client must not pin more memory than it has sent).
        let reserve = declared.unwrap_or(0).min(64 << 20) as usize;
        let mut buf = bytes::BytesMut::with_capacity(reserve);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::BadRequest(format!("read request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if (buf.len() + data.len()) as u64 > max {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(state.cfg.body_read_timeout, read)
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "request body not received within {:?}; nothing was inserted",
                state.cfg.body_read_timeout
            ))
        })?
}

async fn query_get(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let p = params(&req)?;
    let Some(sql) = p.get("query").cloned() else {
        return Ok((StatusCode::OK, "Ok.\n").into_response());
    };
    let peer = peer_ip(&req);
    state.auth.check(req.headers(), peer, Role::Reader)?;
    if sql_text::parse_insert_header(sql.as_bytes())
        .map_err(Error::BadRequest)?
        .is_some()
    {
        return Err(Error::MethodNotAllowed(
            "GET is for reads; send inserts with POST".into(),
        ));
    }
    run_sql(
        &state,
        req.headers(),
        peer,
        sql,
        p.get("default_format"),
        true,
    )
    .await
}

async fn query_post(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let p = params(&req)?;
    let peer = peer_ip(&req);
    let headers = req.headers().clone();
    // Authenticate before reading a possibly large body.
    state.auth.check(&headers, peer, Role::Reader)?;
    let body = read_body(&state, req).await?;
    let default_format = p.get("default_format");
    if let Some(q) = p.get("query") {
        if let Some(h) = sql_text::parse_insert_header(q.as_bytes()).map_err(Error::BadRequest)? {
            return bulk_insert(&state, &headers, peer, h, body).await;
        }
        // ClickHouse: the body continues the query.
        let mut sql = q.clone();
        if !body.is_empty() {
            sql.push('\n');
            sql.push_str(
                std::str::from_utf8(&body)
                    .map_err(|_| Error::BadRequest("the request body is not UTF-8 SQL".into()))?,
            );
        }
        return run_sql(&state, &headers, peer, sql, default_format, false).await;
    }
    if let Some(h) = sql_text::parse_insert_header(&body[..body.len().min(64 * 1024)])
        .map_err(Error::BadRequest)?
    {
        let data = body.slice(h.data_offset..);
        return bulk_insert(&state, &headers, peer, h, data).await;
    }
    let sql = String::from_utf8(body.to_vec())
        .map_err(|_| Error::BadRequest("the request body is not UTF-8 SQL".into()))?;
    if sql.trim().is_empty() {
        return Err(Error::BadRequest(
            "empty query: send SQL in the body or in ?query=".into(),
        ));
    }
    run_sql(&state, &headers, peer, sql, default_format, false).await
}

async fn run_sql(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    sql: String,
    default_format: Option<&String>,
    get_only: bool,
) -> Result<Response> {
    state.auth.check(headers, peer, Role::Reader)?;
    let start = Instant::now();
    let mut result = run_sql_inner(
        state,
        headers,
        peer,
        sql.clone(),
        default_format,
        get_only,
        start,
    )
    .await;
    if behind_the_leader(state, is_not_found(&result)).await {
        result = run_sql_inner(state, headers, peer, sql, default_format, get_only, start).await;
    }
    state.metrics.query(result.is_ok(), start.elapsed());
    result
}

/// Cluster mode: whether a statement that failed NOT_FOUND (`not_found`) may have failed only
/// because this node had not applied a table change another node already acknowledged, and
/// this node has now caught up with the metadata leader (so running it again can succeed). A
/// statement that failed NOT_FOUND changed nothing, so the retry is safe.
async fn behind_the_leader(state: &AppState, not_found: bool) -> bool {
    match state.cluster.get() {
        Some(c) if not_found => c.catch_up_with_leader().await,
        _ => false,
    }
}

fn is_not_found<T>(result: &Result<T>) -> bool {
    matches!(result, Err(Error::NotFound(_)))
}

async fn run_sql_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    sql: String,
    default_format: Option<&String>,
    get_only: bool,
    start: Instant,
) -> Result<Response> {
    let (sql, fmt) = sql_text::split_format(&sql).map_err(Error::BadRequest)?;
    let format = OutputFormat::parse(
        fmt.as_deref()
            .or(default_format.map(|s| s.as_str()))
            .unwrap_or("JSON"),
    )?;
    // Single node: parse (and plan a query) once, here; the statement's kind comes from that.
    let local = match (state.cluster.get(), state.node()) {
        (None, Ok(node)) => Some((node.prepare(&sql)?, node)),
        _ => None,
    };
    let read_only = match &local {
        Some((prepared, _)) => prepared.is_read_only(),
        None => Node::is_read_only(&sql)?,
    };
    if get_only && !read_only {
        return Err(Error::MethodNotAllowed(
            "GET is for read-only statements; send writes with POST".into(),
        ));
    }
    if !read_only {
        state.auth.check(headers, peer, Role::Writer)?;
    }
    let node = state.node()?;
    if let (Some(cluster), false) = (state.cluster.get(), read_only) {
        if let Some(ddl) = crate::cluster::ddl::classify(&sql) {
            let message = cluster.execute_ddl(&node, ddl).await?;
            return Ok(json_response(
                StatusCode::OK,
                serde_json::json!({ "ok": true, "message": message }),
            ));
        }
    }
    let timeout = state.cfg.query_timeout;
    if let (Some(cluster), false) = (state.cluster.get(), read_only) {
        // INSERT: rows computed here (or by a distributed query), routed to the primaries.
        let rows = cluster.insert_sql(&node, sql, timeout).await?;
        state.metrics.ingested("sql", rows, 0, start.elapsed());
        return Ok(json_response(
            StatusCode::OK,
            serde_json::json!({ "inserted": rows }),
        ));
    }
    // Cluster mode: queries read every partition's owner; SHOW / DESCRIBE answer from the
    // replicated catalog here; EXPLAIN shows this node's local plan and says so.
    let mut explain_note = None;
    if let Some(cluster) = state.cluster.get() {
        match crate::cluster::query::read_kind(&sql)? {
            crate::cluster::query::Read::Query => {
                let out = cluster.query(&node, sql, timeout).await?;
                let SqlOutput::Rows {
                    schema,
                    batches,
                    rows_read,
                } = out
                else {
                    return Err(Error::Internal("a query produced no rows".into()));
                };
                return stream_rows(format, schema, batches, rows_read, start);
            }
            crate::cluster::query::Read::Explain => explain_note = Some(cluster.node_id()),
            crate::cluster::query::Read::Other => {}
        }
    }
    let (prepared, node) = match local {
        Some(l) => l,
        None => (node.prepare(&sql)?, node),
    };
    let result = if runs_inline(&prepared, state.cfg.inline_query_rows)? {
        // A query over few rows (one symbol's partition): run here, without the hand-off to a
        // blocking-pool thread and back, which cost more than the query itself. The engine's
        // own deadline and memory budget apply as on the pool.
        state.metrics.inline_query();
        node.run(prepared)
    } else {
        let task = tokio::task::spawn_blocking(move || node.run(prepared));
        // The engine enforces the timeout itself; this bound covers an engine that does not.
        match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
            Err(_) => Err(Error::Timeout(format!(
                "query did not finish within --query-timeout ({timeout:?})"
            ))),
            Ok(Err(e)) => Err(Error::Internal(format!("query task failed: {e}"))),
            Ok(Ok(r)) => r,
        }
    };
    match result? {
        SqlOutput::Rows {
            schema,
            batches,
            rows_read,
        } => {
            let batches = match explain_note {
                Some(me) => crate::cluster::query::note_local_explain(me, &schema, batches)?,
                None => batches,
            };
            stream_rows(format, schema, batches, rows_read, start)
        }
        SqlOutput::Inserted(rows) => {
            state.metrics.ingested("sql", rows, 0, start.elapsed());
            Ok(json_response(
                StatusCode::OK,
                serde_json::json!({ "inserted": rows }),
            ))
        }
        SqlOutput::Message(m) => Ok(json_response(
            StatusCode::OK,
            serde_json::json!({ "ok": true, "message": m }),
        )),
    }
}

/// Whether a prepared statement runs on the request's task: a query whose scans read at most
/// `max_rows` rows by the chunk metadata, decided before it runs (never a hash join, a window
/// function, or anything but a query).
fn runs_inline(prepared: &zepto_sql::Prepared, max_rows: u64) -> Result<bool> {
    if max_rows == 0 {
        return Ok(false);
    }
    let rows = prepared.scan_rows().map_err(crate::db::sql_error)?;
    Ok(rows.is_some_and(|r| r <= max_rows))
}

/// Results of at most this many cells are encoded on the request's task and sent whole.
const INLINE_CELLS: usize = 4096;

/// Send a result: a small one at once, a larger one piece by piece from a blocking encoder
/// task.
fn stream_rows(
    format: OutputFormat,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<arrow::record_batch::RecordBatch>,
    rows_read: u64,
    start: Instant,
) -> Result<Response> {
    let (mut enc, head) = Encoder::start(format, schema)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let cells = rows.saturating_mul(batches.first().map_or(0, |b| b.num_columns()));
    if cells <= INLINE_CELLS && format != OutputFormat::Parquet {
        // A small answer (an aggregate, a few bars): encoded here and sent as one body with
        // a Content-Length, without a blocking task, a channel and chunked framing.
        let mut body = Vec::with_capacity(head.len() + cells * 24 + 128);
        body.extend_from_slice(&head);
        for batch in &batches {
            body.extend_from_slice(&enc.batch(batch)?);
        }
        let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        body.extend_from_slice(&enc.finish(elapsed, rows_read)?);
        let mut resp = Response::new(Body::from(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        return Ok(resp);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let send = |b: std::result::Result<Bytes, Error>| {
            let item = b.map_err(|e| {
                // The status line is already sent: the client sees a cut-off response.
                tracing::warn!(error = %e, "encoding a query result failed mid-stream");
                std::io::Error::other(e.to_string())
            });
            let failed = item.is_err();
            // A closed channel means the client went away: stop encoding.
            tx.blocking_send(item).is_ok() && !failed
        };
        if !head.is_empty() && !send(Ok(head)) {
            return;
        }
        for batch in &batches {
            let mut off = 0;
            while off < batch.num_rows() {
                let len = PIECE_ROWS.min(batch.num_rows() - off);
                let piece = enc.batch(&batch.slice(off, len));
                if !send(piece) {
                    return;
                }
                off += len;
            }
        }
        let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let tail = enc.finish(elapsed, rows_read);
        match tail {
            Ok(b) if b.is_empty() => {}
            other => {
                send(other);
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(resp)
}

/// A decoded ingest body, on its way to storage.
enum Decoded {
    /// No rows.
    Empty,
    /// Cluster mode: the router splits and sends it.
    Route(RecordBatch),
    /// Single node: prepared and queued; wait for durability.
    Started(zepto_storage::WriteTicket),
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response {
    let mut resp = (status, format!("{v}\n")).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn bulk_insert(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    h: sql_text::InsertHeader,
    data: Bytes,
) -> Result<Response> {
    state.auth.check(headers, peer, Role::Writer)?;
    let mut result = bulk_insert_inner(state, h.clone(), data.clone()).await;
    if behind_the_leader(state, is_not_found(&result)).await {
        result = bulk_insert_inner(state, h, data).await;
    }
    if result.is_err() {
        state.metrics.ingest_failed();
    }
    result
}

async fn bulk_insert_inner(
    state: &Arc<AppState>,
    h: sql_text::InsertHeader,
    data: Bytes,
) -> Result<Response> {
    let node = state.node()?;
    let format = InputFormat::parse(&h.format)?;
    let schema = node.table_arrow_schema(&h.table)?;
    let table = h.table.clone();
    let bytes = data.len() as u64;
    let clustered = state.cluster.get().is_some();
    let n = node.clone();
    // Decode and (single node) prepare the write on an ingest thread; only the wait for
    // durability stays on this task.
    let decoded = state
        .ingest
        .run(move || -> Result<Decoded> {
            let batch = input::decode(format, &h.table, &schema, h.columns.as_deref(), &data)?;
            Ok(if batch.num_rows() == 0 {
                Decoded::Empty
            } else if clustered {
                Decoded::Route(batch)
            } else {
                Decoded::Started(n.start_write(&h.table, batch)?)
            })
        })
        .await??;
    let start = Instant::now();
    let rows = match (decoded, state.cluster.get()) {
        (Decoded::Empty, _) => 0,
        (Decoded::Started(ticket), _) => Node::finish_write(ticket).await?,
        (Decoded::Route(batch), Some(c)) => c.write(&node, &table, batch).await?,
        (Decoded::Route(batch), None) => node.write(&table, batch).await?,
    };
    state
        .metrics
        .ingested(format.label(), rows, bytes, start.elapsed());
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "inserted": rows }),
    ))
}

async fn ilp_write(State(state): State<Arc<AppState>>, req: Request) -> Result<Response> {
    let p = params(&req)?;
    let peer = peer_ip(&req);
    state.auth.check(req.headers(), peer, Role::Writer)?;
    let factor = ilp::precision_factor(p.get("precision").map(|s| s.as_str()))?;
    let result = async {
        let node = state.node()?;
        let body = read_body(&state, req).await?;
        let bytes = body.len() as u64;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let node2 = node.clone();
        let clustered = state.cluster.get().is_some();
        // Parse everything and build every batch before the first write; on a single node
        // also prepare the write there (see `bulk_insert_inner`).
        let (batches, ticket) = state
            .ingest
            .run(move || -> Result<_> {
                let measurements = ilp::parse(&body, factor, now_ns)?;
                let mut out = Vec::with_capacity(measurements.len());
                for mut m in measurements {
                    let (schema, ts_index) = node2.ensure_ilp_table(&m)?;
                    let batch = m.take_batch(&schema, ts_index)?;
                    out.push((m.name, batch));
                }
                if clustered {
                    return Ok((out, None));
                }
                Ok((Vec::new(), node2.start_write_all(out)?))
            })
            .await??;
        let start = Instant::now();
        let rows = match (state.cluster.get(), ticket) {
            // Each table through the router: in cluster mode a line-protocol body spanning
            // tables is not one atomic write.
            (Some(c), _) => {
                let mut rows = 0;
                for (table, batch) in batches.into_iter().filter(|(_, b)| b.num_rows() > 0) {
                    rows += c.write(&node, &table, batch).await?;
                }
                rows
            }
            (None, Some(ticket)) => Node::finish_write(ticket).await?,
            (None, None) => 0,
        };
        state.metrics.ingested("ilp", rows, bytes, start.elapsed());
        Ok(json_response(
            StatusCode::OK,
            serde_json::json!({ "inserted": rows }),
        ))
    }
    .await;
    if result.is_err() {
        state.metrics.ingest_failed();
    }
    result
}

async fn health(State(state): State<Arc<AppState>>) -> Result<Response> {
    if state.phase.load(Ordering::SeqCst) == FAILED {
        return Err(Error::Unavailable {
            message: "the database failed to open".into(),
            retry_after: None,
        });
    }
    if let Some(node) = state.node.get() {
        node.health()?;
    }
    Ok(json_response(
        StatusCode::OK,
        serde_json::json!({ "status": "ok" }),
    ))
}

async fn ready(State(state): State<Arc<AppState>>) -> Result<Response> {
    match state.phase.load(Ordering::SeqCst) {
        READY => {
            // A node that cannot make writes durable (fsync failed) must leave the Service
            // at once, not only when liveness restarts it.
            if let Some(node) = state.node.get() {
                node.health().map_err(|e| Error::Unavailable {
                    message: format!("not ready: {e}"),
                    retry_after: None,
                })?;
            }
            if let Some(c) = state.cluster.get() {
                c.readiness().map_err(|why| Error::Unavailable {
                    message: format!("not ready: {why}"),
                    retry_after: Some(1),
                })?;
            }
            Ok(json_response(
                StatusCode::OK,
                serde_json::json!({ "status": "ready" }),
            ))
        }
        DRAINING => Err(Error::Unavailable {
            message: "draining: the server is shutting down".into(),
            retry_after: None,
        }),
        _ => Err(state.node().err().unwrap_or(Error::Unavailable {
            message: "not ready".into(),
            retry_after: Some(1),
        })),
    }
}

async fn ping() -> Response {
    (StatusCode::OK, "Ok.\n").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let figures = state.node.get().map(|n| n.figures());
    let ready = state.phase.load(Ordering::SeqCst) == READY;
    let mut text = state.metrics.render(figures.as_ref(), ready);
    if let Some(c) = state.cluster.get() {
        text.push_str(&c.metrics_text());
    }
    text.push_str(&state.backups.metrics_text());
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn admin_snapshot(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    let node = state.node()?;
    let info = tokio::task::spawn_blocking(move || node.checkpoint())
        .await
        .map_err(|e| Error::Internal(format!("checkpoint task failed: {e}")))??;
    Ok(json_response(StatusCode::OK, info))
}

/// `POST /admin/verify`: read every HDB file of this node not checked yet and compare its
/// values with the file's content checksum; answers what was found (`ok` false when a file
/// is corrupt). Reads at the disk's speed: minutes for a large HDB.
async fn admin_verify(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    let node = state.node()?;
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || node.verify_files())
        .await
        .map_err(|e| Error::Internal(format!("verify task failed: {e}")))??;
    let mut v = serde_json::to_value(&report)
        .map_err(|e| Error::Internal(format!("verify report: {e}")))?;
    v["ok"] = report.corrupt.is_empty().into();
    v["took_ms"] = (started.elapsed().as_secs_f64() * 1000.0).into();
    Ok(json_response(StatusCode::OK, v))
}

/// `POST /admin/drain` (cluster mode): stop being ready, hand this node's primaries to their
/// in-sync replicas (see `Cluster::drain`), answer what was handed over. The process keeps
/// running (not ready) until it is stopped (SIGTERM does the same handoff, then exits).
async fn admin_drain(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    let Some(c) = state.cluster.get() else {
        return Err(Error::BadRequest(
            "drain hands a cluster node's partitions to their replicas; a single node has \
             none (stop it with SIGTERM)"
                .into(),
        ));
    };
    let node = state.node()?;
    // Refused while another node's absence (a drain or a failure) already leaves some of this
    // node's partitions with this node as their only serving in-sync copy; the chart's PDB
    // expresses the same rule for Kubernetes evictions.
    let blockers = c.drain_blockers();
    if !blockers.is_empty() {
        return Err(Error::Conflict(format!(
            "draining node {} now would leave partitions without a serving in-sync copy: {}; \
             retry once the other copies are back in sync",
            c.node_id(),
            serde_json::Value::from(blockers)
        )));
    }
    state.set_draining();
    let report = c.drain(&node, state.cfg.drain_timeout).await;
    Ok(json_response(StatusCode::OK, report))
}

/// `POST /admin/decommission?node=N` (cluster mode): 202 once the request is committed (the
/// rebalancer moves every partition off N, then N is removed), 200 with the progress when
/// asked again, 409 with the reason when refused (see `Cluster::decommission`).
async fn admin_decommission(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    let Some(c) = state.cluster.get() else {
        return Err(Error::BadRequest(
            "decommission moves a cluster node's partitions to other nodes; a single node has \
             none"
                .into(),
        ));
    };
    let node: zepto_cluster::NodeId = params
        .get("node")
        .ok_or_else(|| Error::BadRequest("missing ?node=<node id>".into()))?
        .parse()
        .map_err(|_| Error::BadRequest("?node= must be a node id (a positive integer)".into()))?;
    let (started, body) = c.decommission(node).await?;
    let code = if started {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json_response(code, body))
}

async fn admin_cluster(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    state.auth.check_admin(&headers)?;
    if let Some(c) = state.cluster.get() {
        let mut view = c.admin_view().await?;
        if let Some(obj) = view.as_object_mut() {
            obj.insert("grpc_addr".into(), c.grpc_addr.to_string().into());
            obj.insert("ready".into(), c.readiness().is_ok().into());
            obj.insert("local_partitions".into(), c.local_partitions());
            obj.insert("full_copies_sent".into(), c.full_copies_sent().into());
            obj.insert("backup".into(), state.backups.to_json());
            obj.insert("rebalance".into(), c.rebalance_view());
            obj.insert(
                "ready_reason".into(),
                c.readiness()
                    .err()
                    .map_or(serde_json::Value::Null, Into::into),
            );
        }
        return Ok(json_response(StatusCode::OK, view));
    }
    let node = state.node()?;
    let phase = match state.phase.load(Ordering::SeqCst) {
        READY => "ready",
        DRAINING => "draining",
        _ => "starting",
    };
    let mut view = node.cluster_view(&state.cfg, phase, state.started.elapsed());
    if let Some(obj) = view.as_object_mut() {
        obj.insert("backup".into(), state.backups.to_json());
    }
    Ok(json_response(StatusCode::OK, view))
}
