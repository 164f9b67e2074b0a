//! Model-based test: random sequences of writes (in and out of time order, spread over
//! partitions and tiny time buckets), flushes to HDB, checkpoints and restarts, with a
//! random range scan after every step compared against a plain list of rows.
//! Background compaction and sealing run all the time (tiny thresholds), so scans see every
//! mix of memory pieces, compacted pieces and mmapped files.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, TimestampNanosecondType,
};
use proptest::prelude::*;
use zepto_storage::{ColumnDef, ColumnType, Config, Db, ScanRequest, TableSchema, TimeRange};

const SYMBOLS: [&str; 5] = ["A", "B", "C", "D", "E"];

#[derive(Debug, Clone)]
enum Op {
    /// Rows of (ts, symbol index, value).
    Insert(Vec<(i64, usize, Option<f64>)>),
    Flush,
    Checkpoint,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0i64..2_000, 0usize..5, prop::option::of(-1e6f64..1e6)), 1..40).prop_map(Op::Insert),
        1 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Restart),
    ]
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.partitions = 4;
    c.chunk_duration_ns = 100;
    c.max_chunk_rows = 30;
    c.checkpoint_interval = None;
    c.maintenance_interval = Duration::from_millis(1);
    c.wal_segment_bytes = 8 * 1024;
    c
}

fn schema() -> TableSchema {
    TableSchema::new(
        "t",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("v", ColumnType::Double),
            ColumnDef::new("id", ColumnType::BigInt),
        ],
        None,
        None,
    )
    .unwrap()
}

fn batch(rows: &[(i64, usize, Option<f64>)], first_id: i64) -> RecordBatch {
    let s = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("v", DataType::Float64, true),
        Field::new("id", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        s,
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| SYMBOLS[r.1]).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                (0..rows.len() as i64)
                    .map(|i| first_id + i)
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// (id, ts, symbol, value bits) of every row a scan returns, sorted by id.
fn scanned(
    db: &Db,
    range: TimeRange,
    parts: Option<Vec<u32>>,
) -> Vec<(i64, i64, String, Option<u64>)> {
    let scan = db
        .scan(&ScanRequest {
            table: "t".into(),
            columns: Some(vec![3, 0, 1, 2]),
            partitions: parts,
            time_range: range,
        })
        .unwrap();
    let mut out = Vec::new();
    for c in &scan.chunks {
        for b in &c.batches {
            let id = b.column(0).as_primitive::<Int64Type>();
            let ts = b.column(1).as_primitive::<TimestampNanosecondType>();
            let sym = b.column(2).as_dictionary::<Int32Type>();
            let dict = sym.values().as_string::<i32>();
            let v = b.column(3).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                let t = ts.value(i);
                assert!(range.contains(t), "scan returned ts {t} outside {range:?}");
                assert!(
                    t >= c.min_ts && t <= c.max_ts,
                    "row outside its chunk's min/max"
                );
                out.push((
                    id.value(i),
                    t,
                    dict.value(sym.keys().value(i) as usize).to_string(),
                    arrow::array::Array::is_valid(v, i).then(|| v.value(i).to_bits()),
                ));
            }
            if c.sorted {
                let t = ts.values();
                assert!(
                    t.windows(2).all(|w| w[0] <= w[1]),
                    "chunk says sorted but is not"
                );
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn scans_match_the_model_through_flushes_checkpoints_and_restarts(
        ops in prop::collection::vec(op(), 1..25),
        ranges in prop::collection::vec((-10i64..2_010, 0i64..2_100, prop::option::of(prop::collection::vec(0u32..4, 1..3))), 25),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(config(dir.path())).unwrap();
        db.create_table(schema()).unwrap();
        let mut model: Vec<(i64, i64, String, Option<u64>)> = Vec::new();
        let mut next_id = 0i64;
        for (step, (op, (start, len, parts))) in ops.iter().zip(ranges.iter()).enumerate() {
            match op {
                Op::Insert(rows) => {
                    db.insert("t", batch(rows, next_id)).unwrap();
                    for (i, r) in rows.iter().enumerate() {
                        model.push((next_id + i as i64, r.0, SYMBOLS[r.1].to_string(), r.2.map(f64::to_bits)));
                    }
                    next_id += rows.len() as i64;
                }
                Op::Flush => { db.flush().unwrap(); }
                Op::Checkpoint => { db.checkpoint().unwrap(); }
                Op::Restart => {
                    drop(db);
                    db = Db::open(config(dir.path())).unwrap();
                }
            }
            let range = TimeRange::new(*start, start + len);
            let want: Vec<_> = {
                let mut w: Vec<_> = model
                    .iter()
                    .filter(|r| range.contains(r.1))
                    .filter(|r| parts.as_ref().is_none_or(|p| p.contains(&db.partition_of("t", &r.2))))
                    .cloned()
                    .collect();
                w.sort();
                w
            };
            let got = scanned(&db, range, parts.clone());
            let (counted, _) = db
                .count_rows(&ScanRequest {
                    table: "t".into(),
                    columns: None,
                    partitions: parts.clone(),
                    time_range: range,
                })
                .unwrap();
            prop_assert_eq!(counted as usize, want.len(), "step {} {:?}: count_rows", step, op);
            prop_assert_eq!(got.len(), want.len(), "step {} {:?}: row count", step, op);
            prop_assert!(got == want, "step {} {:?}: rows differ", step, op);
        }
        // And everything survives one more restart.
        drop(db);
        let db = Db::open(config(dir.path())).unwrap();
        let mut all = model.clone();
        all.sort();
        prop_assert!(scanned(&db, TimeRange::ALL, None) == all);
    }
}
