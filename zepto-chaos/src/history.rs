//! The workload and its history: concurrent writers whose every row carries a unique id,
//! each operation recorded as invoked and then ok / failed (definitely not applied) /
//! unknown; and readers whose queries are recorded the same way.

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
}

/// One query.
#[derive(Debug, Clone, Serialize)]
pub struct ReadOp {
    pub invoked_ms: u64,
    pub completed_ms: u64,
    pub outcome: Outcome,
    pub node: usize,
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
            Outcome::Failed(format!("HTTP {}: {}", a.status, a.code()))
        }
        Ok(a) => Outcome::Unknown(format!("HTTP {}: {}", a.status, a.code())),
        Err(e) if e.contains("Connection refused") => Outcome::Failed(e.clone()),
        Err(e) => Outcome::Unknown(e.clone()),
    }
}

impl Workload {
    /// Start `writers` writer threads (batches of `batch` rows, over `symbols` symbols) and
    /// `readers` reader threads, spread over the nodes' URLs (re-read from `urls` every
    /// operation, so a scenario can redirect clients).
    pub fn start(
        urls: Arc<Mutex<Vec<String>>>,
        writers: usize,
        readers: usize,
        batch: i64,
        symbols: usize,
    ) -> Workload {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let next_id = Arc::new(AtomicI64::new(0));
        let ms = move || started.elapsed().as_millis() as u64;
        let mut threads = Vec::new();
        for w in 0..writers {
            let (stop, history, next_id, urls) =
                (stop.clone(), history.clone(), next_id.clone(), urls.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let Some((node, url)) = pick(&urls, w + n) else {
                        break;
                    };
                    n += 1;
                    let first = next_id.fetch_add(batch, Ordering::Relaxed);
                    let body = rows_csv(first, batch, w, symbols);
                    let invoked_ms = ms();
                    let http = Http::new(&url, Duration::from_secs(10));
                    let answer = http.post(
                        "/?query=INSERT%20INTO%20chaos%20FORMAT%20CSV",
                        body.as_bytes(),
                    );
                    let op = WriteOp {
                        writer: w,
                        first,
                        count: batch,
                        invoked_ms,
                        completed_ms: ms(),
                        outcome: classify(&answer),
                        node,
                    };
                    if let Ok(mut h) = history.lock() {
                        h.writes.push(op);
                    }
                }
            }));
        }
        for r in 0..readers {
            let (stop, history, urls) = (stop.clone(), history.clone(), urls.clone());
            threads.push(std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let Some((node, url)) = pick(&urls, r + n) else {
                        break;
                    };
                    n += 1;
                    let invoked_ms = ms();
                    let http = Http::new(&url, Duration::from_secs(10));
                    let answer =
                        http.post("/", b"SELECT symbol, count(*) FROM chaos GROUP BY symbol");
                    let outcome = match &answer {
                        Ok(a) if a.status == 200 => Outcome::Ok,
                        _ => classify(&answer),
                    };
                    if let Ok(mut h) = history.lock() {
                        h.reads.push(ReadOp {
                            invoked_ms,
                            completed_ms: ms(),
                            outcome,
                            node,
                        });
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

/// `count` rows with ids from `first`, as CSV.
fn rows_csv(first: i64, count: i64, writer: usize, symbols: usize) -> String {
    let mut s = String::with_capacity(count as usize * 40);
    for id in first..first + count {
        let sym = id.rem_euclid(symbols.max(1) as i64);
        s.push_str(&format!(
            "{},S{sym:03},{id},{writer}\n",
            1_704_187_800_000_000_000i64 + id * 1_000_000
        ));
    }
    s
}
