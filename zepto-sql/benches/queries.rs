//! Query benchmarks from issue 3: in-process execution (parse + plan + execute) over
//! 1M trade rows of 100 symbols (`ZEPTO_BENCH_ROWS=10000000` for 10M), plus quotes for the
//! ASOF join. Run with `cargo bench -p zepto-sql`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use criterion::{criterion_group, criterion_main, Criterion};
use zepto_sql::{Engine, QuerySettings};
use zepto_storage::{Config, Db};

const BASE_NS: i64 = 1_704_189_600_000_000_000; // 2024-01-02T10:00:00Z
const SYMBOLS: usize = 100;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// The same queries in DuckDB's dialect.
const DUCK: &[&str] = &[
    "SELECT count(*) FROM trades",
    "SELECT symbol, count(*) FROM trades GROUP BY symbol",
    "SELECT sum(price * size) / sum(size) FROM trades WHERE symbol = 'S042'",
    "SELECT time_bucket(INTERVAL '1 minute', ts) AS bar, arg_min(price, ts), max(price), min(price), arg_max(price, ts), sum(size) FROM trades WHERE symbol = 'S042' GROUP BY bar ORDER BY bar",
    "SELECT symbol, avg(price) FROM trades WHERE ts >= TIMESTAMP '2024-01-02 12:00:00' AND ts < TIMESTAMP '2024-01-02 13:00:00' GROUP BY symbol",
    "SELECT count(*), avg(t.price - q.bid) FROM trades t ASOF LEFT JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts WHERE t.symbol = 'S042'",
];

const DUCK_PY: &str = r#"
import sys, time, statistics, duckdb
d = sys.argv[1]
c = duckdb.connect()
c.execute(f"CREATE TABLE trades AS SELECT make_timestamp(ts_us) AS ts, symbol, price, size FROM read_csv('{d}/trades.csv', header=true, columns={{'ts_us':'BIGINT','symbol':'VARCHAR','price':'DOUBLE','size':'BIGINT'}})")
c.execute(f"CREATE TABLE quotes AS SELECT make_timestamp(ts_us) AS ts, symbol, bid, ask FROM read_csv('{d}/quotes.csv', header=true, columns={{'ts_us':'BIGINT','symbol':'VARCHAR','bid':'DOUBLE','ask':'DOUBLE'}})")
for q in sys.stdin.read().split("\n"):
    if not q.strip():
        continue
    c.execute(q).fetchall()
    ts = []
    for _ in range(30):
        t0 = time.perf_counter(); c.execute(q).fetchall(); ts.append(time.perf_counter() - t0)
    print(f"{statistics.median(ts) * 1e6:.0f}")
"#;

/// Time the same queries on the same rows in DuckDB (median of 30 runs, microseconds).
fn duckdb_times(dir: &std::path::Path, trades: &str, quotes: &str) -> Option<Vec<String>> {
    use std::io::Write;
    std::fs::write(dir.join("trades.csv"), trades).ok()?;
    std::fs::write(dir.join("quotes.csv"), quotes).ok()?;
    std::fs::write(dir.join("duck.py"), DUCK_PY).ok()?;
    let mut child = std::process::Command::new("python3")
        .arg(dir.join("duck.py"))
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child
        .stdin
        .take()?
        .write_all(DUCK.join("\n").as_bytes())
        .ok()?;
    let out = child.wait_with_output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
}

fn load(engine: &Engine, rows: usize, csv: &mut Option<(String, String)>) {
    engine
        .execute("CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT)")
        .unwrap();
    engine
        .execute("CREATE TABLE quotes (ts TIMESTAMP, symbol SYMBOL, bid DOUBLE, ask DOUBLE)")
        .unwrap();
    let names: Vec<String> = (0..SYMBOLS).map(|i| format!("S{i:03}")).collect();
    let mut rng = Lcg(42);
    // Trades over 6 hours, in time order per batch.
    let span_ns: i64 = 6 * 3_600_000_000_000;
    let step = span_ns / rows as i64;
    let chunk = 100_000;
    for table in ["trades", "quotes"] {
        let mut start = 0;
        while start < rows {
            let n = chunk.min(rows - start);
            let ts: Vec<i64> = (start..start + n)
                .map(|i| BASE_NS + i as i64 * step + (rng.next() % 1000) as i64)
                .collect();
            let sym: Vec<&str> = (0..n)
                .map(|_| names[(rng.next() as usize) % SYMBOLS].as_str())
                .collect();
            let a: Vec<f64> = (0..n)
                .map(|_| 100.0 + (rng.next() % 10_000) as f64 / 100.0)
                .collect();
            let (schema, cols): (Vec<Field>, Vec<ArrayRef>) = if table == "trades" {
                let size: Vec<i64> = (0..n).map(|_| (rng.next() % 1000) as i64 + 1).collect();
                (
                    vec![
                        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
                        Field::new("symbol", DataType::Utf8, false),
                        Field::new("price", DataType::Float64, true),
                        Field::new("size", DataType::Int64, true),
                    ],
                    vec![
                        Arc::new(TimestampNanosecondArray::from(ts)),
                        Arc::new(StringArray::from(sym)),
                        Arc::new(Float64Array::from(a)),
                        Arc::new(Int64Array::from(size)),
                    ],
                )
            } else {
                let ask: Vec<f64> = a.iter().map(|b| b + 0.05).collect();
                (
                    vec![
                        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
                        Field::new("symbol", DataType::Utf8, false),
                        Field::new("bid", DataType::Float64, true),
                        Field::new("ask", DataType::Float64, true),
                    ],
                    vec![
                        Arc::new(TimestampNanosecondArray::from(ts)),
                        Arc::new(StringArray::from(sym)),
                        Arc::new(Float64Array::from(a)),
                        Arc::new(Float64Array::from(ask)),
                    ],
                )
            };
            if let Some((t, q)) = csv.as_mut() {
                use std::fmt::Write as _;
                let out = if table == "trades" { t } else { q };
                let c2 = cols[2].as_any().downcast_ref::<Float64Array>().unwrap();
                for i in 0..n {
                    let tsv = cols[0]
                        .as_any()
                        .downcast_ref::<TimestampNanosecondArray>()
                        .unwrap()
                        .value(i);
                    let sv = cols[1]
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .unwrap()
                        .value(i);
                    let last = if table == "trades" {
                        cols[3]
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .value(i)
                            .to_string()
                    } else {
                        cols[3]
                            .as_any()
                            .downcast_ref::<Float64Array>()
                            .unwrap()
                            .value(i)
                            .to_string()
                    };
                    let _ = writeln!(out, "{},{},{},{}", tsv / 1000, sv, c2.value(i), last);
                }
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(schema)), cols).unwrap();
            engine.db().insert(table, batch).unwrap();
            start += n;
        }
    }
}

/// The issue's query list, by name.
const QUERIES: &[(&str, &str)] = &[
    ("count_star", "SELECT count(*) FROM trades"),
    ("count_by_symbol", "SELECT symbol, count(*) FROM trades GROUP BY symbol"),
    ("vwap_one_symbol", "SELECT vwap(price, size) FROM trades WHERE symbol = 'S042'"),
    (
        "ohlc_1m_one_symbol",
        "SELECT xbar(ts, INTERVAL '1 minute') AS bar, first(price), max(price), min(price), last(price), sum(size) FROM trades WHERE symbol = 'S042' GROUP BY bar ORDER BY bar",
    ),
    (
        "avg_by_symbol_1h",
        "SELECT symbol, avg(price) FROM trades WHERE ts >= '2024-01-02T12:00:00Z' AND ts < '2024-01-02T13:00:00Z' GROUP BY symbol",
    ),
    (
        "asof_one_symbol",
        "SELECT count(*), avg(t.price - q.bid) FROM trades t ASOF JOIN quotes q ON t.symbol = q.symbol AND t.ts >= q.ts WHERE t.symbol = 'S042'",
    ),
];

fn bench(c: &mut Criterion) {
    let rows: usize = std::env::var("ZEPTO_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(Config::new(dir.path())).unwrap();
    let engine = Engine::new(db, QuerySettings::default());
    // ZEPTO_BENCH_DUCKDB=1: also time DuckDB on the same rows (timestamps rounded to µs).
    let duck = std::env::var("ZEPTO_BENCH_DUCKDB").is_ok_and(|v| v == "1");
    let mut csv = duck.then(|| {
        (
            "ts_us,symbol,price,size\n".to_string(),
            "ts_us,symbol,bid,ask\n".to_string(),
        )
    });
    load(&engine, rows, &mut csv);
    if let Some((t, q)) = csv {
        match duckdb_times(dir.path(), &t, &q) {
            Some(times) => {
                for ((name, _), us) in QUERIES.iter().zip(times) {
                    println!("duckdb {name}: median {us} us");
                }
            }
            None => {
                println!("duckdb timing skipped: python3 with the duckdb package is not available")
            }
        }
    }
    let mut group = c.benchmark_group(format!("queries_{rows}"));
    group.sample_size(30);
    for (name, sql) in QUERIES {
        // Fail loudly rather than time an error.
        engine.execute(sql).unwrap();
        group.bench_function(*name, |b| b.iter(|| engine.execute(sql).unwrap()));
    }
    // The storage scan alone (no columns), for reading the numbers above: what count(*)
    // costs is mostly this.
    let req = zepto_storage::ScanRequest {
        table: "trades".into(),
        columns: Some(vec![]),
        partitions: None,
        time_range: zepto_storage::TimeRange::ALL,
    };
    group.bench_function("storage_scan_no_columns", |b| {
        b.iter(|| engine.db().scan(&req).unwrap().num_rows())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
