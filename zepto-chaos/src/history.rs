//! The workload and its history: concurrent writers whose every row carries a unique id,
//! each operation recorded as invoked and then ok / failed (definitely not applied) /
//! unknown; and readers whose queries are recorded the same way. Writers and "any node"
//! readers behave like clients behind a Kubernetes Service: a node whose process is gone
//! (connection refused) is skipped for the next one.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Answer, Http};

/// How an operation ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Ok,
    /// The server said no in a way that means nothing was applied (4xx, 503 before work).
    Failed(String),
    /// Nobody knows: a timeout, a reset connection, a 500.
    Unknown(String),
}

/// One write of ids `first..first + count`.
#[derive(Debug, Clone, Serialize)]
pub struct WriteOp {
    pub writer: usize,
    pub first: i64,
    pub count: i64,
    /// Milliseconds since the run started.
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub outcome: Outcome,
    pub node: usize,
    /// The partition key of every row of the write (one key: one partition, so the write's
    /// outcome is the outcome of each of its rows).
    pub key: String,
}

/// One query: the row count of one key.
#[derive(Debug, Clone, Serialize)]
pub struct ReadOp {
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub outcome: Outcome,
    pub node: usize,
    pub key: String,
    /// The count answered (when OK).
    pub count: Option<u64>,
    /// Sent like a client behind a load balancer: to any node, the next one when a node
    /// refuses the connection (its process is gone), rather than to the key's primary.
    pub any_node: bool,
}

/// Where the workload sends its operations: the nodes' URLs (re-read every operation, so a
/// scenario can redirect clients), the keys it writes, the API key, and in cluster mode which
/// node is each key's partition primary (readers ask it: until queries are distributed, a
/// node answers from its own data only).
#[derive(Debug, Clone)]
pub struct Targets {
    pub urls: Arc<Mutex<Vec<String>>>,
    pub keys: Vec<String>,
    pub api_key: Option<String>,
    /// Per key (same order as `keys`): the index in `urls` of its primary.
    pub read_from: Option<Arc<Mutex<Vec<usize>>>>,
    /// Per node (same order as `urls`): whether its `/ready` answered 200 when last polled.
    /// "Any node" readers send only to ready nodes, as a Kubernetes Service does (all nodes
    /// when none is ready); writers too when `writers_follow_ready`.
    pub ready: Option<Arc<Mutex<Vec<bool>>>>,
    /// Writers skip nodes that are not ready (split-brain keeps writing to the cut-off node
    /// on purpose, so it does not set this).
    pub writers_follow_ready: bool,
}

impl Targets {
    /// Send one operation to the nodes of `order` in turn, moving on while `move_on` says the
    /// node did not take it; `(the node that answered last, its answer)`.
    fn send(
        &self,
        urls: &[String],
        order: &[usize],
        op: impl Fn(&Http) -> Result<Answer, String>,
        move_on: impl Fn(&Http, &Result<Answer, String>) -> bool,
    ) -> (usize, Result<Answer, String>) {
        let mut last = (order.first().copied().unwrap_or(0), Err(String::new()));
        for &node in order {
            let http =
                Http::new(&urls[node], Duration::from_secs(10)).with_key(self.api_key.as_deref());
            let answer = op(&http);
            let again = move_on(&http, &answer);
            last = (node, answer);
            if !again {
                break;
            }
        }
        last
    }

    /// The node indexes to try, in order, for the operation numbered `start`: round robin,
    /// only ready nodes when `follow_ready` (all when none is ready).
    fn order(&self, urls: usize, start: usize, follow_ready: bool) -> Vec<usize> {
        let ready = match (&self.ready, follow_ready) {
            (Some(r), true) => r.lock().map(|r| r.clone()).unwrap_or_default(),
            _ => Vec::new(),
        };
        let all: Vec<usize> = (0..urls).map(|i| (start + i) % urls).collect();
        let ready_only: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| ready.get(i).copied().unwrap_or(true))
            .collect();
        if ready_only.is_empty() {
            all
        } else {
            ready_only
        }
    }
}

/// Everything that happened, in completion order per kind.
#[derive(Debug, Default, Serialize)]
pub struct History {
    pub writes: Vec<WriteOp>,
    pub reads: Vec<ReadOp>,
    /// (ms, what) of every fault the scenario injected.
    pub events: Vec<(u64, String)>,
}

/// The table every workload writes: `id` is unique per row.
pub const TABLE_DDL: &str =
    "CREATE TABLE chaos (ts TIMESTAMP, symbol SYMBOL, id BIGINT, writer BIGINT)";

/// A running workload; stop it with [`Workload::stop`].
#[derive(Debug)]
pub struct Workload {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Classify an HTTP answer of a write.
fn classify(answer: &Result<Answer, String>) -> Outcome {
    match answer {
        Ok(a) if a.status == 200 => Outcome::Ok,
        // Refused before anything was applied: bad input, auth, fenced (409), too large.
        // A 503 is not definite: a write whose fsync failed answers 503 and may be on disk.
        Ok(a) if (400..500).contains(&a.status) => {
            Outcome::Failed(format!("HTTP {}: {}", a.status, a.summary()))
        }
        Ok(a) => Outcome::Unknown(format!("HTTP {}: {}", a.status, a.summary())),
        Err(e) if refused(answer) => Outcome::Failed(e.clone()),
        Err(e) => Outcome::Unknown(e.clone()),
    }
}

/// The node refused the connection: its process is gone, nothing reached zeptod.
fn refused(answer: &Result<Answer, String>) -> bool {
    matches!(answer, Err(e) if e.contains("Connection refused"))
}

/// The connection broke before an answer (e.g. the process was killed mid-request).
fn cut_off(answer: &Result<Answer, String>) -> bool {
    matches!(answer, Err(e) if e.contains("reset") || e.contains("disconnected"))
}

/// The outcome of a count query and the count it answered.
fn read_outcome(answer: &Result<Answer, String>) -> (Outcome, Option<u64>) {
    match answer {
        Ok(a) if a.status == 200 => match a.body.trim().parse::<u64>() {
            Ok(c) => (Outcome::Ok, Some(c)),
            Err(_) => (
                Outcome::Unknown(format!("unparsable count '{}'", a.body.trim())),
                None,
            ),
        },
        _ => (classify(answer), None),
    }
}

impl Workload {
    /// Start `writers` writer threads (batches of `batch` rows, each batch with one key of
    /// `targets.keys`, round robin), `readers` reader threads (the row count of one key, from
    /// its primary when `targets.read_from` names it) and `any_node_readers` reader threads
    /// that ask any node, the way a client behind a Kubernetes Service does (see
    /// [`ReadOp::any_node`]), spread over `targets`.
    pub fn start(
        targets: Targets,
        writers: usize,
        readers: usize,
        any_node_readers: usize,
        batch: i64,
    ) -> Workload {
        let targets = Arc::new(targets);
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let next_id = Arc::new(AtomicI64::new(0));
        let ms = move || started.elapsed().as_millis() as u64;
        let mut threads = Vec::new();
        for w in 0..writers {
            let (stop, history, next_id, targets) = (
                stop.clone(),
                history.clone(),
                next_id.clone(),
                targets.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let urls = targets.urls.lock().map(|u| u.clone()).unwrap_or_default();
                    if urls.is_empty() {
                        break;
                    }
                    let order = targets.order(urls.len(), w + n, targets.writers_follow_ready);
                    let key = targets
                        .keys
                        .get((w + n * writers.max(1)) % targets.keys.len().max(1))
                        .cloned()
                        .unwrap_or_else(|| "S000".to_string());
                    n += 1;
                    let first = next_id.fetch_add(batch, Ordering::Relaxed);
                    let body = rows_csv(first, batch, w, &key);
                    let invoked_ms = ms();
                    // Like a client behind a Kubernetes Service: a node that refuses the
                    // connection (its process is gone: nothing was applied) is skipped.
                    let (node, answer) = targets.send(
                        &urls,
                        &order,
                        |http| {
                            http.post(
                                "/?query=INSERT%20INTO%20chaos%20FORMAT%20CSV",
                                body.as_bytes(),
                            )
                        },
                        |_, answer| refused(answer),
                    );
                    let op = WriteOp {
                        writer: w,
                        first,
                        count: batch,
                        invoked_ms,
                        completed_ms: ms(),
                        outcome: classify(&answer),
                        node,
                        key,
                    };
                    let ok = op.outcome == Outcome::Ok;
                    if let Ok(mut h) = history.lock() {
                        h.writes.push(op);
                    }
                    if !ok {
                        std::thread::sleep(Duration::from_millis(20)); // retry pacing after a failure
                    }
                }
            }));
        }
        for r in 0..readers {
            let (stop, history, targets) = (stop.clone(), history.clone(), targets.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let k = (r + n * readers.max(1)) % targets.keys.len().max(1);
                    let Some(key) = targets.keys.get(k).cloned() else {
                        break;
                    };
                    let routed = targets
                        .read_from
                        .as_ref()
                        .and_then(|m| m.lock().ok().and_then(|m| m.get(k).copied()));
                    let picked = match routed {
                        Some(i) => targets
                            .urls
                            .lock()
                            .ok()
                            .and_then(|u| u.get(i).cloned())
                            .map(|u| (i, u)),
                        None => pick(&targets.urls, r + n),
                    };
                    let Some((node, url)) = picked else {
                        break;
                    };
                    n += 1;
                    let invoked_ms = ms();
                    let http = Http::new(&url, Duration::from_secs(10))
                        .with_key(targets.api_key.as_deref());
                    let sql =
                        format!("SELECT count(*) FROM chaos WHERE symbol = '{key}' FORMAT CSV");
                    let answer = http.post("/", sql.as_bytes());
                    let (outcome, count) = read_outcome(&answer);
                    if let Ok(mut h) = history.lock() {
                        h.reads.push(ReadOp {
                            invoked_ms,
                            completed_ms: ms(),
                            outcome,
                            node,
                            key,
                            count,
                            any_node: false,
                        });
                    }
                    if count.is_none() {
                        std::thread::sleep(Duration::from_millis(20)); // retry pacing after a failure
                    }
                }
            }));
        }
        for r in 0..any_node_readers {
            let (stop, history, targets) = (stop.clone(), history.clone(), targets.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let k = (r + n * any_node_readers) % targets.keys.len().max(1);
                    let Some(key) = targets.keys.get(k).cloned() else {
                        break;
                    };
                    let urls = targets.urls.lock().map(|u| u.clone()).unwrap_or_default();
                    if urls.is_empty() {
                        break;
                    }
                    let order = targets.order(urls.len(), r + n, true);
                    n += 1;
                    let sql =
                        format!("SELECT count(*) FROM chaos WHERE symbol = '{key}' FORMAT CSV");
                    let invoked_ms = ms();
                    // A read is idempotent: a refused connection (the process is gone) or one
                    // cut before the answer (killed mid-query) moves on; so does a 503 from a
                    // node that is not ready right now (the readiness poll was stale: a
                    // Service would not have sent the query there).
                    let (node, answer) = targets.send(
                        &urls,
                        &order,
                        |http| http.post("/", sql.as_bytes()),
                        |http, answer| {
                            refused(answer)
                                || cut_off(answer)
                                || (matches!(answer, Ok(a) if a.status == 503)
                                    && !http.get("/ready").is_ok_and(|r| r.status == 200))
                        },
                    );
                    let (outcome, count) = read_outcome(&answer);
                    if let Ok(mut h) = history.lock() {
                        h.reads.push(ReadOp {
                            invoked_ms,
                            completed_ms: ms(),
                            outcome,
                            node,
                            key,
                            count,
                            any_node: true,
                        });
                    }
                    if count.is_none() {
                        std::thread::sleep(Duration::from_millis(20)); // retry pacing after a failure
                    }
                }
            }));
        }
        Workload {
            started,
            stop,
            history,
            threads,
        }
    }

    /// Milliseconds since the workload started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Record a fault the scenario injects.
    pub fn event(&self, what: impl Into<String>) {
        let at = self.now_ms();
        if let Ok(mut h) = self.history.lock() {
            h.events.push((at, what.into()));
        }
    }

    /// Writes acknowledged so far.
    pub fn acked_writes(&self) -> usize {
        self.history
            .lock()
            .map(|h| h.writes.iter().filter(|w| w.outcome == Outcome::Ok).count())
            .unwrap_or(0)
    }

    /// Look at the history so far.
    pub fn inspect<T>(&self, f: impl FnOnce(&History) -> T) -> Option<T> {
        self.history.lock().ok().map(|h| f(&h))
    }

    /// First write acknowledged after `ms`, if any (its completion time).
    pub fn first_ok_write_after(&self, ms: u64) -> Option<u64> {
        self.history.lock().ok().and_then(|h| {
            h.writes
                .iter()
                .filter(|w| w.invoked_ms >= ms && w.outcome == Outcome::Ok)
                .map(|w| w.completed_ms)
                .min()
        })
    }

    /// Stop every thread and hand back the history.
    pub fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        match Arc::try_unwrap(self.history) {
            Ok(m) => m.into_inner().unwrap_or_default(),
            Err(shared) => shared
                .lock()
                .map(|h| History {
                    writes: h.writes.clone(),
                    reads: h.reads.clone(),
                    events: h.events.clone(),
                })
                .unwrap_or_default(),
        }
    }
}

/// The `i`-th node of the current list (round robin), re-read every operation so a scenario
/// can redirect clients; `None` once the list is empty.
fn pick(urls: &Mutex<Vec<String>>, i: usize) -> Option<(usize, String)> {
    let list = urls.lock().ok()?;
    let node = i % list.len().max(1);
    list.get(node).map(|u| (node, u.clone()))
}

/// `count` rows with ids from `first`, all with partition key `key`, as CSV.
fn rows_csv(first: i64, count: i64, writer: usize, key: &str) -> String {
    let mut s = String::with_capacity(count as usize * 40);
    for id in first..first + count {
        s.push_str(&format!(
            "{},{key},{id},{writer}\n",
            1_704_187_800_000_000_000i64 + id * 1_000_000
        ));
    }
    s
}

/// The default keys of a single-node run: `S000..S019`.
pub fn default_keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("S{i:03}")).collect()
}
