//! Prometheus metrics, kept in atomics and written in the text exposition format
//! (version 0.0.4) on `GET /metrics`. Server-side counters live here; storage figures are
//! read from the engine at scrape time and passed in as [`StorageFigures`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// Ingest paths, for the `format` label.
pub(crate) const INGEST_FORMATS: [&str; 6] = ["csv", "tsv", "jsoneachrow", "arrow", "ilp", "sql"];

/// Server counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    http_requests: [AtomicU64; 5],
    queries_ok: AtomicU64,
    queries_err: AtomicU64,
    /// Queries run on the request's task instead of the blocking pool.
    queries_inline: AtomicU64,
    query_ok_seconds: Histogram,
    query_err_seconds: Histogram,
    ingest_rows: [AtomicU64; INGEST_FORMATS.len()],
    ingest_bytes: [AtomicU64; INGEST_FORMATS.len()],
    ingest_failed: AtomicU64,
    write_ack_seconds: Histogram,
}

/// Storage figures read at scrape time (absent before the database is open).
#[derive(Debug, Default, Clone)]
pub(crate) struct StorageFigures {
    pub(crate) tables: u64,
    pub(crate) memory_rows: u64,
    pub(crate) memory_bytes: u64,
    pub(crate) disk_chunks: u64,
    pub(crate) disk_bytes: u64,
    pub(crate) disk_chunks_verified: u64,
    pub(crate) disk_chunks_corrupt: u64,
    pub(crate) wal_fsyncs: u64,
    pub(crate) wal_fsync_seconds_total: f64,
    /// (upper bound in seconds, cumulative count).
    pub(crate) wal_fsync_histogram: Vec<(f64, u64)>,
    pub(crate) wal_bytes: u64,
    pub(crate) wal_segment: u64,
    pub(crate) wal_offset: u64,
    pub(crate) ring_depth: u64,
    pub(crate) ring_bytes: u64,
    pub(crate) checkpoints: u64,
    pub(crate) last_checkpoint_id: Option<u64>,
    /// Seconds since the last checkpoint (since start when none yet).
    pub(crate) checkpoint_age_seconds: f64,
    pub(crate) write_errors: u64,
    pub(crate) poisoned: Option<String>,
}

fn format_index(format: &str) -> usize {
    INGEST_FORMATS
        .iter()
        .position(|f| *f == format)
        .unwrap_or(INGEST_FORMATS.len() - 1)
}

impl Metrics {
    /// Count a finished HTTP request by status class.
    pub(crate) fn http_request(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.http_requests[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a finished query.
    pub(crate) fn query(&self, ok: bool, took: Duration) {
        if ok {
            self.queries_ok.fetch_add(1, Ordering::Relaxed);
            self.query_ok_seconds.observe(took);
        } else {
            self.queries_err.fetch_add(1, Ordering::Relaxed);
            self.query_err_seconds.observe(took);
        }
    }

    /// Count a query run on the request's task (`--inline-query-rows`).
    pub(crate) fn inline_query(&self) {
        self.queries_inline.fetch_add(1, Ordering::Relaxed);
    }

    /// Count rows and bytes acknowledged to a client.
    pub(crate) fn ingested(&self, format: &str, rows: u64, bytes: u64, ack: Duration) {
        let i = format_index(format);
        self.ingest_rows[i].fetch_add(rows, Ordering::Relaxed);
        self.ingest_bytes[i].fetch_add(bytes, Ordering::Relaxed);
        self.write_ack_seconds.observe(ack);
    }

    /// Count an ingest request that inserted nothing.
    pub(crate) fn ingest_failed(&self) {
        self.ingest_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text.
    pub(crate) fn render(&self, storage: Option<&StorageFigures>, ready: bool) -> String {
        let mut o = String::with_capacity(8192);
        let c = |o: &mut String, name: &str, help: &str, kind: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };
        // A metric with one unlabeled value.
        let g = |o: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            c(o, name, help, kind);
            let _ = writeln!(o, "{name} {v}");
        };
        g(
            &mut o,
            "zepto_up",
            "1 when the database is open and ready.",
            "gauge",
            u64::from(ready),
        );

        c(
            &mut o,
            "zepto_http_requests_total",
            "HTTP requests answered, by status class.",
            "counter",
        );
        for (i, n) in self.http_requests.iter().enumerate() {
            let _ = writeln!(
                o,
                "zepto_http_requests_total{{class=\"{}xx\"}} {}",
                i + 1,
                n.load(Ordering::Relaxed)
            );
        }

        c(
            &mut o,
            "zepto_queries_total",
            "SQL statements run, by status.",
            "counter",
        );
        let _ = writeln!(
            o,
            "zepto_queries_total{{status=\"ok\"}} {}",
            self.queries_ok.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "zepto_queries_total{{status=\"error\"}} {}",
            self.queries_err.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "zepto_queries_inline_total",
            "Queries run on the request's task, not handed to the blocking pool (--inline-query-rows).",
            "counter",
            self.queries_inline.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "zepto_query_duration_seconds",
            "SQL statement latency, by status.",
            "histogram",
        );
        self.query_ok_seconds
            .render(&mut o, "zepto_query_duration_seconds", "status=\"ok\"");
        self.query_err_seconds
            .render(&mut o, "zepto_query_duration_seconds", "status=\"error\"");

        c(
            &mut o,
            "zepto_ingest_rows_total",
            "Rows acknowledged as durable, by input format.",
            "counter",
        );
        for (i, f) in INGEST_FORMATS.iter().enumerate() {
            let _ = writeln!(
                o,
                "zepto_ingest_rows_total{{format=\"{f}\"}} {}",
                self.ingest_rows[i].load(Ordering::Relaxed)
            );
        }
        c(
            &mut o,
            "zepto_ingest_bytes_total",
            "Request body bytes of acknowledged inserts, by input format.",
            "counter",
        );
        for (i, f) in INGEST_FORMATS.iter().enumerate() {
            let _ = writeln!(
                o,
                "zepto_ingest_bytes_total{{format=\"{f}\"}} {}",
                self.ingest_bytes[i].load(Ordering::Relaxed)
            );
        }
        g(
            &mut o,
            "zepto_ingest_failed_requests_total",
            "Insert requests that inserted nothing (bad input, overload, errors).",
            "counter",
            self.ingest_failed.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "zepto_write_ack_duration_seconds",
            "Time from handing a batch to storage to its durable acknowledgement (WAL fdatasync included).",
            "histogram",
        );
        self.write_ack_seconds
            .render(&mut o, "zepto_write_ack_duration_seconds", "");

        if let Some(s) = storage {
            g(
                &mut o,
                "zepto_tables",
                "Tables in the database.",
                "gauge",
                s.tables,
            );
            g(
                &mut o,
                "zepto_memory_rows",
                "Rows held in memory chunks (RDB).",
                "gauge",
                s.memory_rows,
            );
            g(
                &mut o,
                "zepto_memory_chunk_bytes",
                "Bytes held in memory chunks (RDB).",
                "gauge",
                s.memory_bytes,
            );
            g(
                &mut o,
                "zepto_hdb_chunks",
                "Sealed chunk files on disk (HDB).",
                "gauge",
                s.disk_chunks,
            );
            g(
                &mut o,
                "zepto_hdb_bytes",
                "Bytes of sealed chunk files on disk (HDB).",
                "gauge",
                s.disk_bytes,
            );
            g(
                &mut o,
                "zepto_hdb_chunks_verified",
                "HDB files whose values matched their content checksum (read, verified or \
                 written since start).",
                "gauge",
                s.disk_chunks_verified,
            );
            g(
                &mut o,
                "zepto_hdb_chunks_corrupt",
                "HDB files whose values do not match their content checksum: reads of them fail.",
                "gauge",
                s.disk_chunks_corrupt,
            );
            g(
                &mut o,
                "zepto_wal_fsyncs_total",
                "WAL fdatasync calls.",
                "counter",
                s.wal_fsyncs,
            );
            g(
                &mut o,
                "zepto_wal_written_bytes_total",
                "Bytes written to the WAL.",
                "counter",
                s.wal_bytes,
            );
            g(
                &mut o,
                "zepto_write_errors_total",
                "Writes the storage engine failed.",
                "counter",
                s.write_errors,
            );
            g(
                &mut o,
                "zepto_ingest_ring_depth",
                "Write requests waiting in the ingest ring.",
                "gauge",
                s.ring_depth,
            );
            g(
                &mut o,
                "zepto_ingest_ring_bytes",
                "Bytes waiting in the ingest ring.",
                "gauge",
                s.ring_bytes,
            );
            g(
                &mut o,
                "zepto_checkpoints_total",
                "Checkpoints completed since start.",
                "counter",
                s.checkpoints,
            );
            g(
                &mut o,
                "zepto_wal_poisoned",
                "1 when the WAL refuses writes after an fsync failure.",
                "gauge",
                u64::from(s.poisoned.is_some()),
            );
            c(
                &mut o,
                "zepto_checkpoint_age_seconds",
                "Seconds since the last completed checkpoint (since start when none yet).",
                "gauge",
            );
            let _ = writeln!(
                o,
                "zepto_checkpoint_age_seconds {}",
                s.checkpoint_age_seconds
            );
            if !s.wal_fsync_histogram.is_empty() {
                c(
                    &mut o,
                    "zepto_wal_fsync_duration_seconds",
                    "WAL fdatasync latency.",
                    "histogram",
                );
                let mut total = s.wal_fsyncs;
                for (le, n) in &s.wal_fsync_histogram {
                    if le.is_finite() {
                        let _ = writeln!(
                            o,
                            "zepto_wal_fsync_duration_seconds_bucket{{le=\"{le}\"}} {n}"
                        );
                    } else {
                        total = *n;
                    }
                }
                let _ = writeln!(
                    o,
                    "zepto_wal_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
                );
                let _ = writeln!(
                    o,
                    "zepto_wal_fsync_duration_seconds_sum {}",
                    s.wal_fsync_seconds_total
                );
                let _ = writeln!(o, "zepto_wal_fsync_duration_seconds_count {total}");
            }
        }
        if let Some(rss) = resident_bytes() {
            c(
                &mut o,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
            );
            let _ = writeln!(o, "process_resident_memory_bytes {rss}");
        }
        o
    }
}

/// Resident set size from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.query(true, Duration::from_millis(3));
        m.query(true, Duration::from_secs(100));
        m.query(false, Duration::from_micros(100));
        let text = m.render(None, true);
        assert!(
            text.contains("zepto_query_duration_seconds_bucket{status=\"ok\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("zepto_query_duration_seconds_bucket{status=\"ok\",le=\"+Inf\"} 2"));
        assert!(text.contains("zepto_query_duration_seconds_count{status=\"ok\"} 2"));
        assert!(text.contains("zepto_queries_total{status=\"error\"} 1"));
        assert!(text.contains("zepto_up 1"));
    }
}
