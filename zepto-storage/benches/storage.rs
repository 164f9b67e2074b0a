//! Storage benchmarks (`cargo bench -p zepto-storage`):
//! - durable ingest into WAL + RDB, 4-column trade rows, batches of 1, 100 and 10,000,
//!   from 1 and 4 producer threads (every acknowledgement waits for fdatasync);
//! - a full scan of one f64 column of an mmapped HDB chunk, against the same loop over a
//!   `&[f64]` in the heap.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{Float64Type, Schema};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use zepto_storage::{ColumnDef, ColumnType, Config, Db, ScanRequest, TableSchema};

fn schema() -> TableSchema {
    TableSchema::new(
        "trades",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("price", ColumnType::Double),
            ColumnDef::new("volume", ColumnType::BigInt),
        ],
        None,
        None,
    )
    .expect("schema")
}

/// `n` trade rows over 100 symbols, as a client would send them (strings, not dictionary).
fn trades(n: usize, offset: i64) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        arrow::datatypes::Field::new("ts", ColumnType::Timestamp.arrow_type(), false),
        arrow::datatypes::Field::new("symbol", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("price", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("volume", arrow::datatypes::DataType::Int64, true),
    ]));
    let ts: Vec<i64> = (0..n as i64)
        .map(|i| 1_700_000_000_000_000_000 + (offset + i) * 1_000_000)
        .collect();
    let sym: Vec<String> = (0..n).map(|i| format!("SYM{:03}", i % 100)).collect();
    let price: Vec<f64> = (0..n).map(|i| 100.0 + (i % 1000) as f64 * 0.01).collect();
    let vol: Vec<i64> = (0..n as i64).map(|i| 1 + i % 1000).collect();
    RecordBatch::try_new(
        s,
        vec![
            Arc::new(TimestampNanosecondArray::from(ts)),
            Arc::new(StringArray::from(sym)),
            Arc::new(Float64Array::from(price)),
            Arc::new(Int64Array::from(vol)),
        ],
    )
    .expect("batch")
}

fn open(dir: &std::path::Path) -> Db {
    let mut c = Config::new(dir);
    c.checkpoint_interval = None;
    let db = Db::open(c).expect("open");
    db.create_table(schema()).expect("create");
    db
}

fn durable_ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_ingest");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    for &rows in &[1usize, 100, 10_000] {
        for &producers in &[1usize, 4] {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = open(dir.path());
            let batch = trades(rows, 0);
            g.throughput(Throughput::Elements((rows * producers) as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("batch_{rows}"), format!("{producers}_producers")),
                &rows,
                |b, _| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for _ in 0..producers {
                                let db = db.clone();
                                let batch = batch.clone();
                                s.spawn(move || {
                                    for _ in 0..iters {
                                        db.insert("trades", batch.clone()).expect("insert");
                                    }
                                });
                            }
                        });
                        start.elapsed()
                    })
                },
            );
            drop(db);
        }
    }
    g.finish();
}

/// The same reduction for both sides: 8 independent accumulators so the loop vectorises.
fn sum_f64(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f64>() + rest.iter().sum::<f64>()
}

fn hdb_scan(c: &mut Criterion) {
    const ROWS: usize = 4_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    // One symbol, so all rows are in one partition (two hourly chunks).
    let mut b = trades(ROWS, 0);
    let one_sym = Arc::new(StringArray::from(vec!["AAPL"; ROWS]));
    let mut cols = b.columns().to_vec();
    cols[1] = one_sym;
    b = RecordBatch::try_new(b.schema(), cols).expect("batch");
    db.insert("trades", b).expect("insert");
    db.flush().expect("flush");
    let req = ScanRequest {
        columns: Some(vec![2]),
        ..ScanRequest::all("trades")
    };
    let heap: Vec<f64> = (0..ROWS)
        .map(|i| 100.0 + (i % 1000) as f64 * 0.01)
        .collect();
    let mut g = c.benchmark_group("f64_column_scan");
    g.throughput(Throughput::Bytes((ROWS * 8) as u64));
    g.bench_function("hdb_mmap_via_scan_api", |bch| {
        bch.iter(|| {
            let scan = db.scan(&req).expect("scan");
            let mut total = 0.0;
            for b in scan.batches() {
                total += sum_f64(b.column(0).as_primitive::<Float64Type>().values());
            }
            black_box(total)
        })
    });
    g.bench_function("heap_vec_f64", |bch| {
        bch.iter(|| black_box(sum_f64(black_box(&heap))))
    });
    g.finish();
    let scan = db.scan(&req).expect("scan");
    assert_eq!(scan.num_rows(), ROWS);
    assert!(scan
        .chunks
        .iter()
        .all(|c| c.source == zepto_storage::ChunkSource::Disk));
}

criterion_group!(benches, durable_ingest, hdb_scan);
criterion_main!(benches);
