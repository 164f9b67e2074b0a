//! Distributed queries: any node coordinates a SELECT over the partitions' owners.
//!
//! The coordinator plans the SQL once with [`zepto_sql::Engine::plan_cluster_at`] and a fixed
//! `now()` (sent along, so every node plans the same query), then runs it in one of two ways:
//!
//! - **whole**: when every scan is pruned to partitions that one node holds in-sync copies of
//!   (a one-symbol query, a one-symbol ASOF JOIN, a query that reads no table), the whole SQL
//!   runs on that node (here when it is this node), its scans restricted to those partitions.
//!   A query touching one partition goes to one node.
//! - **split**: otherwise, when the plan splits, each owner runs the per-partition part over
//!   its partitions (`Query` RPC, mode PARTIAL, Arrow IPC back in chunks) and this node merges
//!   every partial with [`zepto_sql::Engine::merge`].
//!
//! Anything else (a join or union across nodes) is refused with 400; so is an uncorrelated
//! subquery in an expression (it would be evaluated over one node's data).
//!
//! **Owners.** A partition is read from its primary, or from another copy in its committed
//! in-sync set (every acknowledged write is on every in-sync copy), on a node whose state can
//! serve; ACTIVE before SUSPECT, copies that failed during this query last. The receiver
//! checks that it holds an in-sync copy at the epoch the coordinator believes
//! (`FENCED` / `NOT_PRIMARY` otherwise).
//!
//! **Failures.** A copy that fails (unreachable, refused, or, while the call runs, turned
//! from ACTIVE to SUSPECT, declared dead, or its partition moved) is retried on another copy, or, when none is left, after the map changes or a
//! short backoff, until the query's timeout; then 503 `UNAVAILABLE` with Retry-After. A result
//! is merged only when every partition answered: never a silently partial answer. Nothing here
//! needs the metadata leader: the committed map every node holds is enough.
//!
//! The `Query` server side is [`serve`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use tonic::{Code, Status};
use zepto_cluster::{ClusterState, NodeId, NodeState};
use zepto_sql::{ClusterPlan, DistributedPlan, QueryOutput, QuerySettings};

use super::dataplane::DataPlane;
use crate::db::{sql_error, Node, SqlOutput};
use crate::error::{Error, Result};
use crate::rpc::pb::{PartitionEpoch, QueryChunk, QueryMode, QueryRequest};

/// Bytes of Arrow IPC per streamed `QueryChunk` (well below the peer message limit).
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Longest pause before retrying a partition whose every copy failed (unless the map
/// changes first).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// How the coordinator runs one query.
enum Shape {
    /// The whole SQL on one node over these partitions.
    Whole(Vec<u32>),
    /// Partials over these partitions, merged here.
    Split(Box<DistributedPlan>, Vec<u32>),
}

/// One unit of work: a mode over some partitions, on one node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Partial,
    Whole,
}

/// What one node sent back.
struct Answer {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    rows_read: u64,
}

/// A failed attempt: retry elsewhere, ran out of time, or give up with this error.
enum Failure {
    Retry(String),
    TimedOut(String),
    Fatal(Error),
}

/// How cluster mode answers a read-only statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Through the coordinator ([`run`]).
    Query,
    /// This node's local plan, marked as such ([`note_local_explain`]).
    Explain,
    /// Here (SHOW TABLES, DESCRIBE: the catalog is replicated).
    Other,
}

/// Classify a read-only statement (parse errors are 400).
pub(crate) fn read_kind(sql: &str) -> Result<Read> {
    Ok(
        match zepto_sql::Engine::read_kind(sql).map_err(sql_error)? {
            Some(zepto_sql::ReadKind::Query) => Read::Query,
            Some(zepto_sql::ReadKind::Explain) => Read::Explain,
            _ => Read::Other,
        },
    )
}

/// Put a first line in front of an EXPLAIN result saying that it is this node's local plan.
pub(crate) fn note_local_explain(
    me: NodeId,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let note = format!(
        "cluster mode: the plan on node {me} over its local data (EXPLAIN ANALYZE runs it \
         here); a SELECT itself runs on the partitions' owners, split into per-partition \
         parts merged on the receiving node, or whole on the one node holding every \
         partition it reads"
    );
    let first = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::StringArray::from(vec![note]))],
    )
    .map_err(|e| Error::Internal(format!("build the EXPLAIN note: {e}")))?;
    let mut out = Vec::with_capacity(batches.len() + 1);
    out.push(first);
    out.extend(batches);
    Ok(out)
}

/// Run a read-only SELECT through the cluster. See the module doc.
pub(crate) async fn run(
    dp: &Arc<DataPlane>,
    node: &Arc<Node>,
    sql: String,
    timeout: Duration,
) -> Result<SqlOutput> {
    let started = Instant::now();
    let deadline = started + timeout;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let engine = node.engine().clone();
    let sql = Arc::new(sql);
    let plan: ClusterPlan = {
        let sql = sql.clone();
        tokio::task::spawn_blocking(move || engine.plan_cluster_at(&sql, now_ns))
            .await
            .map_err(|e| Error::Internal(format!("query planning task failed: {e}")))?
            .map_err(sql_error)?
    };
    let partitions = node.storage().partitions();
    let state = dp.view.borrow().state.clone();
    let reads_tables = plan.footprint.as_ref().is_none_or(|fp| !fp.is_empty());
    if reads_tables && state.partitions.len() != partitions as usize {
        return Err(Error::Unavailable {
            message: format!(
                "the cluster's partition map is not ready ({} partitions, this node has \
                 {partitions}); see /ready",
                state.partitions.len()
            ),
            retry_after: Some(1),
        });
    }
    let shape = choose_shape(&state, dp.me, plan, partitions)?;
    match shape {
        Shape::Whole(parts) => {
            let a = gather(dp, node, &sql, now_ns, Mode::Whole, None, &parts, deadline).await?;
            let mut out = a.into_iter();
            let Some(one) = out.next() else {
                return Err(Error::Internal("a whole query produced no answer".into()));
            };
            Ok(SqlOutput::Rows {
                schema: one.schema,
                batches: one.batches,
                rows_read: one.rows_read,
            })
        }
        Shape::Split(plan, parts) => {
            let plan = Arc::new(*plan);
            let answers = gather(
                dp,
                node,
                &sql,
                now_ns,
                Mode::Partial,
                Some(&plan),
                &parts,
                deadline,
            )
            .await?;
            let expected = plan.partial_schema();
            let mut partials = Vec::new();
            let mut rows_read = 0;
            for a in answers {
                rows_read += a.rows_read;
                for b in a.batches {
                    if !same_types(&b.schema(), &expected) {
                        return Err(Error::Unavailable {
                            message: "a node answered with partial results of another shape \
                                      (its catalog differs: a table change is in progress)"
                                .into(),
                            retry_after: Some(1),
                        });
                    }
                    partials.push(b);
                }
            }
            let engine = node.engine().clone();
            let merged = tokio::task::spawn_blocking(move || engine.merge(&plan, partials))
                .await
                .map_err(|e| Error::Internal(format!("merge task failed: {e}")))?
                .map_err(sql_error)?;
            match merged {
                QueryOutput::Rows {
                    schema, batches, ..
                } => Ok(SqlOutput::Rows {
                    schema,
                    batches,
                    rows_read,
                }),
                _ => Err(Error::Internal("the merge produced no rows".into())),
            }
        }
    }
}

/// Same column types in the same order (names and metadata may differ).
fn same_types(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields().iter())
            .all(|(x, y)| x.data_type() == y.data_type())
}

/// Whole on one node when one node holds every partition the query reads (preferring a node
/// that is primary of them all, then the split), else split, else 400.
fn choose_shape(
    state: &ClusterState,
    me: NodeId,
    plan: ClusterPlan,
    partitions: u32,
) -> Result<Shape> {
    if let Some(fp) = &plan.footprint {
        if fp.iter().any(|p| *p >= partitions) {
            return Err(Error::Internal(format!(
                "the plan reads partitions {fp:?} of {partitions}"
            )));
        }
        let primaries: BTreeSet<NodeId> = fp
            .iter()
            .filter_map(|p| state.partition(*p).map(|i| i.primary))
            .collect();
        let single_primary = primaries.len() <= 1;
        if (single_primary || plan.split.is_none())
            && (fp.is_empty() || whole_owner(state, fp, me, &BTreeMap::new()).is_some())
        {
            return Ok(Shape::Whole(fp.clone()));
        }
    }
    match plan.split {
        Some(split) => {
            let parts = split
                .partitions()
                .map_or_else(|| (0..partitions).collect(), <[u32]>::to_vec);
            Ok(Shape::Split(Box::new(split), parts))
        }
        None => Err(Error::BadRequest(format!(
            "in cluster mode this query cannot be distributed yet: a join, a union or a query \
             over several tables must read only partitions that one node holds; restrict every \
             table it reads to one symbol (e.g. WHERE t.symbol = 'X' AND q.symbol = 'X') or \
             query the tables separately (planner: {})",
            plan.unsplit_reason
                .unwrap_or_else(|| "it cannot be split".into())
        ))),
    }
}

/// Copies of `p` that may serve reads, best first: the primary, then the other in-sync
/// copies; ACTIVE before SUSPECT; copies that failed during this query last (oldest failure
/// first).
fn candidates(
    state: &ClusterState,
    p: u32,
    failed: &BTreeMap<NodeId, Instant>,
) -> Vec<(NodeId, u64)> {
    let Some(info) = state.partition(p) else {
        return Vec::new();
    };
    let mut copies: Vec<NodeId> = vec![info.primary];
    copies.extend(info.in_sync.iter().copied().filter(|n| *n != info.primary));
    let mut ranked: Vec<(bool, Option<Instant>, bool, usize, NodeId)> = copies
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let st = state.nodes.get(&n)?.state;
            st.can_serve().then(|| {
                (
                    failed.contains_key(&n),
                    failed.get(&n).copied(),
                    st != NodeState::Active,
                    i,
                    n,
                )
            })
        })
        .collect();
    ranked.sort();
    ranked.into_iter().map(|r| (r.4, info.epoch)).collect()
}

/// The node to run a whole query over `parts`: one holding an in-sync copy of every one of
/// them, preferring fewer failures, then primaries, then this node.
fn whole_owner(
    state: &ClusterState,
    parts: &[u32],
    me: NodeId,
    failed: &BTreeMap<NodeId, Instant>,
) -> Option<NodeId> {
    if parts.is_empty() {
        return Some(me);
    }
    let mut holders: Option<BTreeSet<NodeId>> = None;
    for p in parts {
        let c: BTreeSet<NodeId> = candidates(state, *p, failed)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        holders = Some(match holders {
            None => c,
            Some(h) => h.intersection(&c).copied().collect(),
        });
    }
    holders?.into_iter().min_by_key(|n| {
        let primary_of = parts
            .iter()
            .filter(|p| state.partition(**p).is_some_and(|i| i.primary == *n))
            .count();
        (
            failed.get(n).copied(),
            std::cmp::Reverse(primary_of),
            *n != me,
            *n,
        )
    })
}

/// Run `mode` over every partition of `parts` on their owners, retrying failed ones on
/// other copies until `deadline`. Returns one answer per node call, covering every partition
/// exactly once.
#[allow(clippy::too_many_arguments)]
async fn gather(
    dp: &Arc<DataPlane>,
    node: &Arc<Node>,
    sql: &Arc<String>,
    now_ns: i64,
    mode: Mode,
    plan: Option<&Arc<DistributedPlan>>,
    parts: &[u32],
    deadline: Instant,
) -> Result<Vec<Answer>> {
    let mut pending: BTreeSet<u32> = parts.iter().copied().collect();
    let mut answers = Vec::new();
    let mut failed: BTreeMap<NodeId, Instant> = BTreeMap::new();
    // A node whose storage failed reads last: it is about to be failed over, and while its
    // map lags the failover it would answer as a primary without the new primary's writes.
    if node.storage().health().is_err() {
        failed.insert(dp.me, Instant::now());
    }
    let mut last_error = String::new();
    let mut view = dp.view.clone();
    let mut first = true;
    // A copy failed (not only ran out of time): at the deadline that is UNAVAILABLE.
    let mut copies_failed = false;
    loop {
        if Instant::now() >= deadline {
            let message = format!(
                "the query could not read partitions {pending:?} within its timeout: \
                 {last_error}; no partial answer was returned"
            );
            return Err(if copies_failed {
                Error::Unavailable {
                    message,
                    retry_after: Some(1),
                }
            } else {
                Error::Timeout(message)
            });
        }
        let state = view.borrow_and_update().state.clone();
        // Assign every pending partition to one node.
        let mut by_node: BTreeMap<NodeId, Vec<PartitionEpoch>> = BTreeMap::new();
        let mut unplaced = Vec::new();
        match mode {
            Mode::Whole => {
                let list: Vec<u32> = pending.iter().copied().collect();
                match whole_owner(&state, &list, dp.me, &failed) {
                    Some(n) => {
                        let v = list
                            .iter()
                            .filter_map(|p| {
                                state.partition(*p).map(|i| PartitionEpoch {
                                    partition: *p,
                                    epoch: i.epoch,
                                })
                            })
                            .collect();
                        by_node.insert(n, v);
                    }
                    None => unplaced = list,
                }
            }
            Mode::Partial => {
                for p in &pending {
                    match candidates(&state, *p, &failed).first() {
                        Some((n, epoch)) => by_node.entry(*n).or_default().push(PartitionEpoch {
                            partition: *p,
                            epoch: *epoch,
                        }),
                        None => unplaced.push(*p),
                    }
                }
            }
        }
        if !unplaced.is_empty() {
            copies_failed = true;
            last_error = format!(
                "no node holds an in-sync copy of partitions {unplaced:?} that can serve \
                 (failover in progress?)"
            );
        }
        if !first {
            tracing::debug!(?by_node, %last_error, "retrying query parts");
        }
        first = false;
        let calls = by_node.into_iter().map(|(to, list)| {
            let dp = dp.clone();
            let node = node.clone();
            let sql = sql.clone();
            let plan = plan.cloned();
            async move {
                let ids: Vec<u32> = list.iter().map(|pe| pe.partition).collect();
                let r = run_on(&dp, &node, to, &sql, now_ns, mode, plan, list, deadline).await;
                (to, ids, r)
            }
        });
        for (to, ids, r) in futures_util::future::join_all(calls).await {
            match r {
                Ok(a) => {
                    for p in &ids {
                        pending.remove(p);
                    }
                    answers.push(a);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(m)) => {
                    tracing::debug!(node = to, partitions = ?ids, error = %m, "query part failed; will retry on another copy");
                    failed.insert(to, Instant::now());
                    copies_failed = true;
                    last_error = m;
                }
                Err(Failure::TimedOut(m)) => last_error = m,
            }
        }
        if pending.is_empty() {
            return Ok(answers);
        }
        let now = Instant::now();
        if now >= deadline {
            continue;
        }
        // Retry at once when every pending partition has an untried copy; else wait for a
        // map change (a failover) or a short backoff.
        let must_wait = match mode {
            Mode::Whole => {
                let list: Vec<u32> = pending.iter().copied().collect();
                whole_owner(&state, &list, dp.me, &failed).is_none_or(|n| failed.contains_key(&n))
            }
            Mode::Partial => pending.iter().any(|p| {
                candidates(&state, *p, &failed)
                    .first()
                    .is_none_or(|(n, _)| failed.contains_key(n))
            }),
        };
        if must_wait {
            let pause = (deadline - now).min(RETRY_BACKOFF);
            let _ = tokio::time::timeout(pause, view.changed()).await;
        }
    }
}

/// One node's share: run locally or call `Query` on the node, bounded by the deadline, and
/// abandoned when the map says the node can no longer serve those partitions.
#[allow(clippy::too_many_arguments)]
async fn run_on(
    dp: &Arc<DataPlane>,
    node: &Arc<Node>,
    to: NodeId,
    sql: &Arc<String>,
    now_ns: i64,
    mode: Mode,
    plan: Option<Arc<DistributedPlan>>,
    list: Vec<PartitionEpoch>,
    deadline: Instant,
) -> std::result::Result<Answer, Failure> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Failure::TimedOut(format!("no time left to ask node {to}")));
    }
    let ids: Vec<u32> = list.iter().map(|pe| pe.partition).collect();
    if to == dp.me {
        dp.check_data_intact().map_err(classify_local)?;
        dp.may_serve_reads()
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        let settings = QuerySettings {
            timeout: remaining,
            ..node.engine().settings().clone()
        };
        return run_local(node, sql, now_ns, mode, plan, ids, settings)
            .await
            .map_err(classify_local);
    }
    let Some(client) = dp.peers.get(to) else {
        return Err(Failure::Retry(format!("node {to} is not a known peer")));
    };
    let req = QueryRequest {
        sql: sql.to_string(),
        now_ns,
        partitions: list.clone(),
        timeout_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
        mode: match mode {
            Mode::Partial => QueryMode::Partial,
            Mode::Whole => QueryMode::Whole,
        } as i32,
    };
    let limit = node.engine().settings().memory_limit_bytes;
    let call = async {
        let mut stream = client.query(req, remaining).await?;
        let mut ipc: Vec<u8> = Vec::new();
        let mut rows_read = 0;
        let mut done = false;
        while let Some(chunk) = stream.message().await? {
            if ipc.len().saturating_add(chunk.arrow_ipc.len()) > limit {
                return Err(Status::resource_exhausted(format!(
                    "the answer of node {to} is larger than the query memory budget ({limit} bytes)"
                )));
            }
            ipc.extend_from_slice(&chunk.arrow_ipc);
            if chunk.done {
                rows_read = chunk.rows_read;
                done = true;
                break;
            }
        }
        if !done {
            return Err(Status::unavailable(format!(
                "node {to} ended its answer early"
            )));
        }
        Ok((ipc, rows_read))
    };
    // Abandon the call when the map moves these partitions away from `to` (a failover),
    // declares it unable to serve, or turns it from ACTIVE to SUSPECT (it stopped
    // heartbeating: likely hung; the in-sync copy is read instead, well before the node is
    // declared dead). A node that was SUSPECT already is waited for until it is DEAD.
    let mut view = dp.view.clone();
    let was_active = view
        .borrow()
        .state
        .nodes
        .get(&to)
        .is_some_and(|n| n.state == NodeState::Active);
    let moved = view.wait_for(|v| {
        let st = &v.state;
        let node_state = st.nodes.get(&to).map(|n| n.state);
        !node_state.is_some_and(NodeState::can_serve)
            || (was_active && node_state != Some(NodeState::Active))
            || list.iter().any(|pe| {
                st.partition(pe.partition).is_none_or(|i| {
                    i.epoch != pe.epoch || (i.primary != to && !i.in_sync.contains(&to))
                })
            })
    });
    let (ipc, rows_read) = tokio::select! {
        r = call => r.map_err(|s| classify_remote(to, &s))?,
        _ = moved => return Err(Failure::Retry(format!(
            "node {to} lost partitions {ids:?}, or was declared SUSPECT or DEAD, during the query"
        ))),
    };
    let (schema, batches) = tokio::task::spawn_blocking(move || from_ipc(&ipc))
        .await
        .map_err(|e| Failure::Fatal(Error::Internal(format!("decode task failed: {e}"))))?
        .map_err(|m| Failure::Retry(format!("node {to}: {m}")))?;
    Ok(Answer {
        schema,
        batches,
        rows_read,
    })
}

async fn run_local(
    node: &Arc<Node>,
    sql: &Arc<String>,
    now_ns: i64,
    mode: Mode,
    plan: Option<Arc<DistributedPlan>>,
    parts: Vec<u32>,
    settings: QuerySettings,
) -> Result<Answer> {
    let engine = node.engine().clone();
    let sql = sql.clone();
    let timeout = settings.timeout;
    let task = tokio::task::spawn_blocking(move || -> Result<Answer> {
        match (mode, plan) {
            (Mode::Partial, Some(plan)) => {
                let out = engine
                    .execute_partial_with(&plan, &parts, &settings)
                    .map_err(part_error)?;
                Ok(Answer {
                    schema: plan.partial_schema(),
                    batches: out.batches,
                    rows_read: out.rows_read,
                })
            }
            (Mode::Partial, None) => Err(Error::Internal("a partial query without a plan".into())),
            (Mode::Whole, _) => match engine
                .execute_whole_at(&sql, now_ns, &parts, &settings)
                .map_err(part_error)?
            {
                QueryOutput::Rows {
                    schema,
                    batches,
                    rows_read,
                } => Ok(Answer {
                    schema,
                    batches,
                    rows_read,
                }),
                _ => Err(Error::Internal("a query produced no rows".into())),
            },
        }
    });
    // The engine enforces the timeout itself; this bound covers an engine that does not.
    match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
        Err(_) => Err(Error::Timeout(format!(
            "query did not finish within --query-timeout ({timeout:?})"
        ))),
        Ok(Err(e)) => Err(Error::Internal(format!("query task failed: {e}"))),
        Ok(Ok(r)) => r,
    }
}

/// A part's engine error. A file of this node's copy that fails its content checksum
/// (ADR 0015) is this copy's problem, not the query's: UNAVAILABLE, so that the part is read
/// from another copy (here and on the node that asked).
fn part_error(e: zepto_sql::Error) -> Error {
    if let zepto_sql::Error::Storage(zepto_storage::Error::Corrupt { .. }) = &e {
        return Error::Unavailable {
            message: format!("this node's copy cannot be read: {e}"),
            retry_after: None,
        };
    }
    sql_error(e)
}

/// A local part's error: storage overload and shutdown may succeed on another copy; every
/// other error would fail there too.
fn classify_local(e: Error) -> Failure {
    match e {
        Error::Unavailable { message, .. } => Failure::Retry(format!("this node: {message}")),
        e => Failure::Fatal(e),
    }
}

/// A remote part's error: refusals and transport failures are retried on another copy;
/// errors of the query itself are final; a time-out ends the query (408) unless a copy
/// also failed (503).
fn classify_remote(to: NodeId, s: &Status) -> Failure {
    let m = format!("node {to}: {}", s.message());
    match s.code() {
        Code::InvalidArgument => Failure::Fatal(Error::BadRequest(m)),
        Code::ResourceExhausted => Failure::Fatal(Error::TooLarge(m)),
        // The node ran out of the budget it was given, or the call ran out of ours.
        Code::DeadlineExceeded | Code::Cancelled => Failure::TimedOut(m),
        // Unreachable, NOT_PRIMARY, FENCED, a catalog that lags (NOT_FOUND), shutting down.
        _ => Failure::Retry(m),
    }
}

/// Encode batches as one Arrow IPC stream.
pub(crate) fn to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)
        .map_err(|e| Error::Internal(format!("encode Arrow IPC: {e}")))?;
    for b in batches {
        w.write(b)
            .map_err(|e| Error::Internal(format!("encode Arrow IPC: {e}")))?;
    }
    w.finish()
        .map_err(|e| Error::Internal(format!("encode Arrow IPC: {e}")))?;
    drop(w);
    Ok(buf)
}

/// Decode one Arrow IPC stream (schema and batches).
pub(crate) fn from_ipc(bytes: &[u8]) -> std::result::Result<(SchemaRef, Vec<RecordBatch>), String> {
    let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| format!("bad Arrow IPC answer: {e}"))?;
    let schema = r.schema();
    let batches = r
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("bad Arrow IPC answer: {e}"))?;
    Ok((schema, batches))
}

/// How an error of this node's part looks on the wire.
fn status_of(e: &Error) -> Status {
    let m = e.to_string();
    match e {
        Error::BadRequest(_) => Status::invalid_argument(m),
        Error::NotFound(_) => Status::not_found(m),
        Error::Fenced(_) => Status::aborted(format!("FENCED {m}")),
        Error::TooLarge(_) => Status::resource_exhausted(m),
        Error::Timeout(_) => Status::deadline_exceeded(m),
        Error::Unavailable { .. } => Status::unavailable(m),
        _ => Status::internal(m),
    }
}

/// Check that this node holds an in-sync copy of every requested partition at the epoch the
/// sender believes: `FENCED` (ABORTED) when the sender's epoch is older, `NOT_PRIMARY`
/// (FAILED_PRECONDITION) when this node holds no in-sync copy or its map is behind.
fn check_owner(
    me: NodeId,
    state: &ClusterState,
    from: NodeId,
    partitions: u32,
    list: &[PartitionEpoch],
) -> std::result::Result<Vec<u32>, Status> {
    let mut seen = BTreeSet::new();
    for pe in list {
        let p = pe.partition;
        if p >= partitions || !seen.insert(p) {
            return Err(Status::invalid_argument(format!(
                "partition {p} is out of range (0..{partitions}) or named twice"
            )));
        }
        let info = state.partition(p).ok_or_else(|| {
            Status::failed_precondition(format!(
                "NOT_PRIMARY partition {p}: not in this node's partition map yet"
            ))
        })?;
        if pe.epoch < info.epoch {
            return Err(Status::aborted(format!(
                "FENCED partition {p}: epoch {} is older than the current epoch {}",
                pe.epoch, info.epoch
            )));
        }
        if pe.epoch > info.epoch || (info.primary != me && !info.in_sync.contains(&me)) {
            return Err(Status::failed_precondition(format!(
                "NOT_PRIMARY partition {p}: node {me} holds no in-sync copy at epoch {} \
                 (primary {}, in-sync {:?}; sender {from} believed epoch {})",
                info.epoch, info.primary, info.in_sync, pe.epoch
            )));
        }
    }
    Ok(seen.into_iter().collect())
}

/// The `Query` call on an owner of the partitions. See the module doc.
pub(crate) async fn serve(
    dp: &DataPlane,
    from: NodeId,
    req: QueryRequest,
) -> std::result::Result<Vec<QueryChunk>, Status> {
    let mode = QueryMode::try_from(req.mode)
        .map_err(|_| Status::invalid_argument(format!("unknown query mode {}", req.mode)))?;
    if req.sql.trim().is_empty() {
        return Err(Status::invalid_argument("empty query"));
    }
    if req.timeout_ms == 0 {
        return Err(Status::deadline_exceeded("no time left for the query"));
    }
    let state = dp.view.borrow().state.clone();
    // Ownership and fencing first: a stale sender learns it before anything runs.
    let partitions = u32::try_from(state.partitions.len()).unwrap_or(u32::MAX);
    check_owner(dp.me, &state, from, partitions, &req.partitions)?;
    // Then this node answers only with a map it may trust (see `may_serve_reads`), and checks
    // again against that map (catching up may have moved the partitions away).
    dp.may_serve_reads()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let state = dp.view.borrow().state.clone();
    let parts = check_owner(dp.me, &state, from, partitions, &req.partitions)?;
    dp.check_data_intact()
        .map_err(|e| Status::failed_precondition(format!("NOT_PRIMARY: {e}")))?;
    let node = dp.node().map_err(|e| status_of(&e))?;
    if node.storage().partitions() != partitions {
        return Err(Status::failed_precondition(format!(
            "NOT_PRIMARY: node {} has {} partitions, the map {partitions}",
            dp.me,
            node.storage().partitions()
        )));
    }
    let own = node.engine().settings().clone();
    let settings = QuerySettings {
        timeout: own.timeout.min(Duration::from_millis(req.timeout_ms)),
        ..own
    };
    let sql = Arc::new(req.sql);
    let mode = match mode {
        QueryMode::Partial => Mode::Partial,
        QueryMode::Whole => Mode::Whole,
    };
    let plan = match mode {
        Mode::Whole => None,
        Mode::Partial => {
            let engine = node.engine().clone();
            let sql = sql.clone();
            let now_ns = req.now_ns;
            let plan = tokio::task::spawn_blocking(move || engine.plan_cluster_at(&sql, now_ns))
                .await
                .map_err(|e| Status::internal(format!("query planning task failed: {e}")))?
                .map_err(|e| status_of(&sql_error(e)))?;
            match plan.split {
                Some(p) => Some(Arc::new(p)),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "this query cannot be split: {}",
                        plan.unsplit_reason.unwrap_or_default()
                    )))
                }
            }
        }
    };
    let answer = run_local(&node, &sql, req.now_ns, mode, plan, parts, settings)
        .await
        .map_err(|e| status_of(&e))?;
    let rows_read = answer.rows_read;
    let ipc = tokio::task::spawn_blocking(move || to_ipc(&answer.schema, &answer.batches))
        .await
        .map_err(|e| Status::internal(format!("encode task failed: {e}")))?
        .map_err(|e| status_of(&e))?;
    let mut chunks: Vec<QueryChunk> = ipc
        .chunks(CHUNK_BYTES)
        .map(|c| QueryChunk {
            arrow_ipc: c.to_vec(),
            done: false,
            rows_read: 0,
        })
        .collect();
    match chunks.last_mut() {
        Some(last) => {
            last.done = true;
            last.rows_read = rows_read;
        }
        None => chunks.push(QueryChunk {
            arrow_ipc: Vec::new(),
            done: true,
            rows_read,
        }),
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests;
