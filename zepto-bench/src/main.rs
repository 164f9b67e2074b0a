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
    /// Only these queries, by name (`--queries Q1,Q3`); all of Q1-Q8 by default.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
}

#[derive(Debug, Args)]
struct MixedArgs {
    #[command(flatten)]
    common: Common,
    /// Target ingest rate while queries run (rows/s).
    #[arg(long, default_value_t = 500_000)]
    ingest_rate: usize,
    /// Rounds of Q1-Q8 (each query once per round, interleaved).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The table the load writes: `trades` (the queried table, which grows while the
    /// queries run) or another name (created with the same columns, dropped at the end).
    #[arg(long, default_value = "trades")]
    ingest_table: String,
    /// Concurrent ingest clients sharing the rate.
    #[arg(long, default_value_t = 2)]
    ingest_clients: usize,
    /// Rows per ingest body.
    #[arg(long, default_value_t = 10_000)]
    body_rows: usize,
    /// Only these queries, by name (`--queries Q1,Q3`); all of Q1-Q8 by default.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
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
    let qs = query::select(query::queries(a.common.symbols), &a.queries)?;
    eprintln!(
        "running {}: {} warm-up + {} timed runs each",
        query::names(&qs),
        a.warmup,
        a.runs
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
    // Q8 reads price and volume (8 bytes each) of every row, on every core of the server
    // (assumed to be this machine, as in the documented runs). Measured only when Q8 ran.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let q8 = zepto.iter().find(|t| t.name == "Q8").map(|t| {
        let bw = mem::read_bandwidth(cores);
        let gbs = (a.common.rows * 16) as f64 / (t.p50_us.max(1e-3) * 1e-6) / 1e9;
        println!(
            "memory read bandwidth (in-process 8-lane sum over 256 MiB, this run): {:.1} GB/s on \
             one core, {:.1} GB/s on {} cores; Q8 reads {} MB: {gbs:.1} GB/s end to end = {:.2}x \
             below the {}-core bandwidth",
            bw.one_core_gbs,
            bw.all_cores_gbs,
            bw.threads,
            a.common.rows * 16 / 1_000_000,
            bw.all_cores_gbs / gbs.max(1e-9),
            bw.threads
        );
        (bw, gbs)
    });
    write_json(
        &a.common.json,
        &json!({ "queries": qs, "zeptodb": zepto, "duckdb": duck,
                 "memory_read_gbs": q8.map(|(bw, _)| bw.all_cores_gbs),
                 "memory_read_one_core_gbs": q8.map(|(bw, _)| bw.one_core_gbs),
                 "memory_read_threads": q8.map(|(bw, _)| bw.threads),
                 "q8_gbs": q8.map(|(_, gbs)| gbs) }),
    )
}

fn cmd_mixed(a: MixedArgs) -> Result<(), Error> {
    if a.ingest_table.eq_ignore_ascii_case("quotes") {
        return Err(Error::Usage(
            "--ingest-table quotes: Q6 reads quotes; write `trades` or a table of its own".into(),
        ));
    }
    let client = connect(&a.common)?;
    let s = spec(&a.common);
    load(&client, s)?;
    let same_table = a.ingest_table == "trades";
    if !same_table {
        recreate(
            &client,
            &a.ingest_table,
            &TRADES_DDL.replace("trades", &a.ingest_table),
        )?;
    }
    let qs = query::select(query::queries(a.common.symbols), &a.queries)?;
    let names = query::names(&qs);
    eprintln!("idle: {names} interleaved, {} rounds", a.runs);
    let idle = query::run_interleaved(&client, &qs, 2, a.runs)?;
    // Trades of the same shape (another seed), sent round-robin for as long as the queries
    // run, each round one day later than the one before (and than the loaded day), like a
    // live feed: the load lasts the whole measurement, however long it takes.
    let extra = Spec {
        seed: s.seed + 1,
        rows: a.body_rows * 64,
        ..s
    };
    let t_batches = gen::trades(extra, a.body_rows);
    let clients = a.ingest_clients.max(1);
    // Each client sends every `clients`-th body of the schedule.
    let interval =
        Duration::from_secs_f64(a.body_rows as f64 * clients as f64 / a.ingest_rate.max(1) as f64);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = std::sync::Barrier::new(clients + 1);
    eprintln!(
        "under load: ingest at {} rows/s into `{}` ({clients} clients, {}-row Arrow bodies) while {names} run {} rounds",
        a.ingest_rate, a.ingest_table, a.body_rows, a.runs
    );
    let (busy, sent, secs) = std::thread::scope(|sc| {
        let writers: Vec<_> = (0..clients)
            .map(|c| {
                let (stop, started, t_batches) = (&stop, &started, &t_batches);
                let (url, token, table) = (&a.common.url, &a.common.token, &a.ingest_table);
                sc.spawn(move || -> Result<usize, Error> {
                    // Own connections, so queries and ingest do not share a pool.
                    let client = Client::new(url, token.clone());
                    let mut sent = 0;
                    started.wait();
                    let start = Instant::now() + interval.mul_f64(c as f64 / clients as f64);
                    for i in 0.. {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        // Pace to the target rate: the schedule of the load, not a wait
                        // for an event. A client behind its schedule sends at once.
                        let due = start + interval * i as u32;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let k = i * clients + c;
                        let round = (k / t_batches.len()) as i64;
                        let batch = gen::shifted(&t_batches[k % t_batches.len()], round + 1)?;
                        client.ingest(
                            table,
                            Format::Arrow,
                            &encode::body(&batch, Format::Arrow)?,
                        )?;
                        sent += batch.num_rows();
                    }
                    Ok(sent)
                })
            })
            .collect();
        started.wait();
        let t0 = Instant::now();
        // Let the load reach its rate before the first timed query.
        let r = query::run_interleaved(&client, &qs, 2, a.runs);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut sent = 0;
        for w in writers {
            sent += w
                .join()
                .map_err(|_| Error::Usage("ingest thread panicked".into()))??;
        }
        Ok::<_, Error>((r?, sent, t0.elapsed().as_secs_f64()))
    })?;
    let achieved = sent as f64 / secs;
    // Every acknowledged row is there (the loaded trades too, on the queried table).
    let want = sent + if same_table { s.rows } else { 0 };
    let (_, count) = client.sql(&format!("SELECT count(*) FROM {}", a.ingest_table))?;
    if !count.contains(&format!("[[{want}]]")) {
        return Err(Error::Usage(format!(
            "`{}` should hold {want} rows after the load, the server answered {}",
            a.ingest_table,
            count.trim()
        )));
    }
    println!(
        "ingest: {sent} rows into `{}` in {secs:.2} s = {achieved:.0} rows/s (target {}); \
         {want} rows acknowledged, all counted",
        a.ingest_table, a.ingest_rate
    );
    // On the queried table the data grew while the queries ran: measure idle again at the
    // final size, so the growth and the interference can be told apart.
    let after = if same_table {
        eprintln!("idle again at the final size");
        Some(query::run_interleaved(&client, &qs, 2, a.runs)?)
    } else {
        None
    };
    println!(
        "{:<4} {:>14} {:>18} {:>8} {:>24} {:>20} {:>8}",
        "",
        "idle p50 us",
        "under-load p99 us",
        "ratio",
        "server p50/p99 idle,load",
        "idle-after p50 us",
        "ratio"
    );
    for (k, (i, b)) in idle.iter().zip(&busy).enumerate() {
        let tail = match after.as_ref().and_then(|a| a.get(k)) {
            Some(f) => format!("{:>20.0} {:>7.2}x", f.p50_us, b.p99_us / f.p50_us.max(1e-9)),
            None => String::new(),
        };
        let srv = |t: &query::Timing| match (t.server_p50_us, t.server_p99_us) {
            (Some(a), Some(b)) => format!("{a:.0}/{b:.0}"),
            _ => "-".into(),
        };
        println!(
            "{:<4} {:>14.0} {:>18.0} {:>7.2}x {:>24} {tail}",
            i.name,
            i.p50_us,
            b.p99_us,
            b.p99_us / i.p50_us.max(1e-9),
            format!("{},{}", srv(i), srv(b)),
        );
    }
    if !same_table {
        let _ = client.sql(&format!("DROP TABLE {}", a.ingest_table));
    }
    write_json(
        &a.common.json,
        &json!({ "idle": idle, "under_load": busy, "idle_after": after,
                 "ingest_table": a.ingest_table, "ingest_rate": a.ingest_rate,
                 "ingested_rows": sent, "ingest_seconds": secs, "achieved_rows_per_sec": achieved }),
    )
}
