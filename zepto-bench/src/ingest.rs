//! The ingest load: K concurrent clients sending pre-encoded bodies, each waiting for its
//! durable acknowledgement before sending the next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Client;
use crate::encode::Format;
use crate::Error;

/// What an ingest run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IngestResult {
    pub(crate) format: Format,
    pub(crate) clients: usize,
    pub(crate) rows: u64,
    pub(crate) bodies: usize,
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    pub(crate) rows_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) ack_p50_ms: f64,
    pub(crate) ack_p99_ms: f64,
    pub(crate) ack_max_ms: f64,
}

/// Send every body (with its row count) from `clients` threads.
pub(crate) fn run(
    client: &Client,
    table: &str,
    format: Format,
    bodies: &[(usize, Vec<u8>)],
    clients: usize,
    progress: bool,
) -> Result<IngestResult, Error> {
    let next = AtomicUsize::new(0);
    let hist = Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .map_err(|e| Error::Usage(format!("histogram: {e}")))?,
    );
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let done_rows = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((rows, body)) = bodies.get(i) else {
                    break;
                };
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                match client.ingest(table, format, body) {
                    Ok(took) => {
                        if let Ok(mut h) = hist.lock() {
                            let _ = h.record(took.as_micros().max(1) as u64);
                        }
                        let total = done_rows.fetch_add(*rows, Ordering::Relaxed) + rows;
                        if progress && bodies.len() > 20 && i.is_multiple_of(bodies.len() / 10) {
                            eprintln!(
                                "  ingest {format:?}: {total} rows, {:.1} s",
                                start.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let h = hist
        .into_inner()
        .map_err(|_| Error::Usage("histogram lock poisoned".into()))?;
    let rows: u64 = bodies.iter().map(|(r, _)| *r as u64).sum();
    let bytes: u64 = bodies.iter().map(|(_, b)| b.len() as u64).sum();
    let ms = |us: u64| Duration::from_micros(us).as_secs_f64() * 1000.0;
    Ok(IngestResult {
        format,
        clients,
        rows,
        bodies: bodies.len(),
        bytes,
        seconds: secs,
        rows_per_sec: rows as f64 / secs,
        mb_per_sec: bytes as f64 / secs / 1e6,
        ack_p50_ms: ms(h.value_at_quantile(0.5)),
        ack_p99_ms: ms(h.value_at_quantile(0.99)),
        ack_max_ms: ms(h.max()),
    })
}
