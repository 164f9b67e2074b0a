//! # zepto-bench
//!
//! The end-to-end benchmark of zeptodb, measured the way users load it: over HTTP against a
//! running `zeptod` (or a cluster), with durability on. It owns a deterministic data
//! generator (`gen.rs`), the ingest load (`ingest.rs`), the query set Q1-Q8 (`query.rs`), and
//! the DuckDB comparison (`duck.rs`). It talks to the server only through its public HTTP
//! API and depends on no zepto crate.
//!
//! ```text
//! zepto-bench ingest --url http://127.0.0.1:8123 --rows 1000000 --format arrow
//! zepto-bench query  --url http://127.0.0.1:8123 --rows 1000000 --load --compare duckdb
//! zepto-bench mixed  --url http://127.0.0.1:8123 --rows 1000000 --ingest-rate 500000
//! ```

mod client;
mod duck;
mod encode;
mod gen;
mod ingest;
mod mem;
mod query;

use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use client::Client;
use encode::Format;
use gen::Spec;

/// What can go wrong in a benchmark run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{0}")]
    Http(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Usage(String),
}

#[derive(Debug, Parser)]
#[command(
    name = "zepto-bench",
    version,
    about = "End-to-end benchmark of zeptod over HTTP"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Ingest generated trades in one format; rows/s, MB/s, acknowledgement latency.
    Ingest(IngestArgs),
    /// Run Q1-Q8 (optionally loading the data first and comparing with DuckDB).
    Query(QueryArgs),
    /// Queries while ingest runs at a fixed rate: query latency under write load.
    Mixed(MixedArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// The server (or any node of a cluster).
    #[arg(long, env = "ZEPTO_BENCH_URL", default_value = "http://127.0.0.1:8123")]
    url: String,
    /// Bearer token, when the server has API keys.
    #[arg(long, env = "ZEPTO_BENCH_TOKEN")]
    token: Option<String>,
    /// Trade rows to generate (quotes: half as many).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, default_value_t = 100)]
    symbols: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct IngestArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum, default_value_t = Format::Arrow)]
    format: Format,
    /// Rows per request body.
    #[arg(long, default_value_t = 1_000_000)]
    batch_rows: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    common: Common,
    /// Drop and load `trades` and `quotes` first (Arrow bodies of 100k rows).
    #[arg(long)]
    load: bool,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Run the same queries on the same data in DuckDB (Python package) in this run.
    #[arg(long, value_parser = ["duckdb"])]
    compare: Option<String>,
    /// DuckDB threads (the server machine's cores by default).
    #[arg(long, default_value_t = 2)]
    duckdb_threads: usize,
}

#[derive(Debug, Args)]
struct MixedArgs {
    #[command(flatten)]
    common: Common,
    /// Target ingest rate while queries run (rows/s).
    #[arg(long, default_value_t = 500_000)]
    ingest_rate: usize,
    #[arg(long, default_value_t = 20)]
    runs: usize,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Ingest(a) => cmd_ingest(a),
        Cmd::Query(a) => cmd_query(a),
        Cmd::Mixed(a) => cmd_mixed(a),
    };
    if let Err(e) = result {
        eprintln!("zepto-bench: {e}");
        std::process::exit(1);
    }
}

fn connect(c: &Common) -> Result<Client, Error> {
    let client = Client::new(&c.url, c.token.clone());
    if !client.wait_ready(Duration::from_secs(30)) {
        return Err(Error::Http(format!(
            "no ready zeptod at {} after 30 s (start one with `cargo run --release -p zeptod`)",
            c.url
        )));
    }
    Ok(client)
}

fn spec(c: &Common) -> Spec {
    Spec {
        seed: c.seed,
        rows: c.rows,
        symbols: c.symbols,
    }
}

const TRADES_DDL: &str =
    "CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, volume BIGINT)";
const QUOTES_DDL: &str =
    "CREATE TABLE quotes (ts TIMESTAMP, symbol SYMBOL, bid DOUBLE, ask DOUBLE)";

fn recreate(client: &Client, table: &str, ddl: &str) -> Result<(), Error> {
    let _ = client.sql(&format!("DROP TABLE {table}"));
    client.sql(ddl)?;
    Ok(())
}

fn write_json(path: &Option<std::path::PathBuf>, v: &serde_json::Value) -> Result<(), Error> {
    if let Some(p) = path {
        std::fs::write(p, serde_json::to_vec_pretty(v).unwrap_or_default())
            .map_err(|e| Error::Io(format!("write {}", p.display()), e))?;
    }
    Ok(())
}

fn bodies(
    batches: &[arrow::array::RecordBatch],
    format: Format,
) -> Result<Vec<(usize, Vec<u8>)>, Error> {
    batches
        .iter()
        .map(|b| Ok((b.num_rows(), encode::body(b, format)?)))
        .collect()
}

fn cmd_ingest(a: IngestArgs) -> Result<(), Error> {
    let client = connect(&a.common)?;
    eprintln!(
        "generating {} trades ({} symbols, seed {})",
        a.common.rows, a.common.symbols, a.common.seed
    );
    let batches = gen::trades(spec(&a.common), a.batch_rows);
    let bodies = bodies(&batches, a.format)?;
    drop(batches);
    recreate(&client, "trades", TRADES_DDL)?;
    eprintln!(
        "sending {} bodies as {:?} from {} clients",
        bodies.len(),
        a.format,
        a.clients
    );
    let r = ingest::run(&client, "trades", a.format, &bodies, a.clients, true)?;
    let (_, count) = client.sql("SELECT count(*) FROM trades")?;
    println!(
        "ingest {:?}: {} rows in {:.2} s = {:.0} rows/s, {:.1} MB/s; ack p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        r.format, r.rows, r.seconds, r.rows_per_sec, r.mb_per_sec, r.ack_p50_ms, r.ack_p99_ms, r.ack_max_ms
    );
    if !count.contains(&r.rows.to_string()) {
        return Err(Error::Usage(format!(
            "the server holds a different row count than was acknowledged: {}",
            count.trim()
        )));
    }
    write_json(&a.common.json, &json!({ "ingest": r }))
}

fn load(client: &Client, s: Spec) -> Result<(), Error> {
    eprintln!("loading {} trades and {} quotes", s.rows, s.rows / 2);
    recreate(client, "trades", TRADES_DDL)?;
    recreate(client, "quotes", QUOTES_DDL)?;
    let t = bodies(&gen::trades(s, 100_000), Format::Arrow)?;
    ingest::run(client, "trades", Format::Arrow, &t, 2, true)?;
    let q = bodies(&gen::quotes(s, 100_000), Format::Arrow)?;
    ingest::run(client, "quotes", Format::Arrow, &q, 2, true)?;
    Ok(())
}

fn cmd_query(a: QueryArgs) -> Result<(), Error> {
    let client = connect(&a.common)?;
    let s = spec(&a.common);
    if a.load {
        load(&client, s)?;
    }
    let qs = query::queries(a.common.symbols);
    eprintln!(
        "running Q1-Q8: {} warm-up + {} timed runs each",
        a.warmup, a.runs
    );
    let zepto = query::run(&client, &qs, a.warmup, a.runs)?;
    let duck = match a.compare.as_deref() {
        Some(_) => match duck::unavailable() {
            Some(why) => {
                println!("DuckDB comparison skipped: the duckdb Python package is not available ({why}); pip install duckdb");
                None
            }
            None => {
                let dir = std::env::temp_dir().join(format!("zepto-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::Io(format!("create {}", dir.display()), e))?;
                let (tp, qp) = (dir.join("trades.parquet"), dir.join("quotes.parquet"));
                encode::parquet_file(&tp, &gen::trades(s, 1_000_000))?;
                encode::parquet_file(&qp, &gen::quotes(s, 1_000_000))?;
                eprintln!("running the same queries in DuckDB");
                let r = duck::run(&tp, &qp, &qs, a.warmup, a.runs, a.duckdb_threads);
                let _ = std::fs::remove_dir_all(&dir);
                Some(r?)
            }
        },
        None => None,
    };
    println!(
        "rows: {} trades, {} symbols (seed {})",
        a.common.rows, a.common.symbols, a.common.seed
    );
    println!(
        "{:<4} {:<56} {:>12} {:>12} {:>12} {:>14} {:>8}",
        "", "query", "p50 us", "p99 us", "max us", "duckdb p50 us", "ratio"
    );
    for (q, z) in qs.iter().zip(&zepto) {
        let d = duck
            .as_ref()
            .and_then(|d| d.timings.iter().find(|t| t.name == q.name));
        let (dp50, ratio) = match d {
            Some(d) => (
                format!("{:.0}", d.p50_us),
                format!("{:.2}x", d.p50_us / z.p50_us.max(1e-9)),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<4} {:<56} {:>12.0} {:>12.0} {:>12.0} {:>14} {:>8}",
            q.name, q.what, z.p50_us, z.p99_us, z.max_us, dp50, ratio
        );
    }
    if let Some(d) = &duck {
        println!("DuckDB {} (load from Parquet: {:.2} s); ratio = DuckDB p50 / zeptodb p50 (> 1: zeptodb faster)", d.version, d.load_seconds);
    }
    // Q8 reads price and volume (8 bytes each) of every row.
    let bandwidth = mem::read_bandwidth_gbs();
    let q8 = zepto.iter().find(|t| t.name == "Q8").map(|t| {
        let gbs = (a.common.rows * 16) as f64 / (t.p50_us.max(1e-3) * 1e-6) / 1e9;
        println!(
            "memory read bandwidth (in-process 8-lane sum over 256 MiB, this run): {bandwidth:.1} GB/s; \
             Q8 reads {} MB: {gbs:.1} GB/s end to end = {:.2}x below bandwidth",
            a.common.rows * 16 / 1_000_000,
            bandwidth / gbs.max(1e-9)
        );
        gbs
    });
    write_json(
        &a.common.json,
        &json!({ "queries": qs, "zeptodb": zepto, "duckdb": duck,
                 "memory_read_gbs": bandwidth, "q8_gbs": q8 }),
    )
}

fn cmd_mixed(a: MixedArgs) -> Result<(), Error> {
    let client = connect(&a.common)?;
    let s = spec(&a.common);
    load(&client, s)?;
    let qs = query::queries(a.common.symbols);
    let idle = query::run(&client, &qs, 2, a.runs)?;
    // Ingest more of the same shape at a fixed rate while the queries run again.
    let extra = Spec {
        seed: s.seed + 1,
        ..s
    };
    let per_body = 10_000usize;
    let t_bodies = bodies(&gen::trades(extra, per_body), Format::Arrow)?;
    let interval = Duration::from_secs_f64(per_body as f64 / a.ingest_rate.max(1) as f64);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let busy = std::thread::scope(|sc| {
        let writer = sc.spawn(|| -> Result<usize, Error> {
            // Its own connection, so queries and ingest do not share a pool.
            let client = Client::new(&a.common.url, a.common.token.clone());
            let mut sent = 0;
            let start = Instant::now();
            for (i, (rows, body)) in t_bodies.iter().enumerate() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                // Pace to the target rate: the schedule of the load, not a wait for an event.
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                client.ingest("trades", Format::Arrow, body)?;
                sent += rows;
            }
            Ok(sent)
        });
        let r = query::run(&client, &qs, 0, a.runs);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = writer
            .join()
            .map_err(|_| Error::Usage("ingest thread panicked".into()))??;
        eprintln!("ingested {sent} rows during the query runs");
        r
    })?;
    println!(
        "{:<4} {:>14} {:>18} {:>8}",
        "", "idle p50 us", "under-load p99 us", "ratio"
    );
    for (i, b) in idle.iter().zip(&busy) {
        println!(
            "{:<4} {:>14.0} {:>18.0} {:>7.2}x",
            i.name,
            i.p50_us,
            b.p99_us,
            b.p99_us / i.p50_us.max(1e-9)
        );
    }
    write_json(
        &a.common.json,
        &json!({ "idle": idle, "under_load": busy, "ingest_rate": a.ingest_rate }),
    )
}
