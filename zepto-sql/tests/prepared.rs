//! `Engine::prepare` + `Engine::run`: the row estimate a server uses to run a cheap query on
//! its request thread, and the limits that must hold wherever the query runs.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use zepto_sql::{Engine, ErrorKind, QueryOutput, QuerySettings};
use zepto_storage::{Config, Db};

fn engine(dir: &std::path::Path) -> Engine {
    let mut cfg = Config::new(dir);
    cfg.partitions = 8;
    let db = Db::open(cfg).unwrap();
    let e = Engine::new(db, QuerySettings::default()).with_clock(Arc::new(|| common::TEST_NOW));
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT)")
        .unwrap();
    let values: Vec<String> = (0..2000i64)
        .map(|i| {
            let ts = 1_704_189_600_000_000_000i64 + i * 1_000_000_000;
            format!(
                "(CAST({ts} AS TIMESTAMP), 'S{}', {}.5, {})",
                i % 20,
                100 + i % 7,
                i % 9 + 1
            )
        })
        .collect();
    e.execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
        .unwrap();
    e
}

fn rows(out: QueryOutput) -> Vec<String> {
    let QueryOutput::Rows { batches, .. } = out else {
        panic!("not rows");
    };
    let mut v = vec![];
    for b in &batches {
        let cols: Vec<_> = (0..b.num_columns())
            .map(|c| {
                arrow::util::display::ArrayFormatter::try_new(b.column(c), &Default::default())
                    .unwrap()
            })
            .collect();
        for r in 0..b.num_rows() {
            v.push(
                cols.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    v
}

#[test]
fn scan_rows_bounds_what_the_scans_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let all = e.prepare("SELECT sum(price) FROM t").unwrap();
    assert_eq!(all.scan_rows().unwrap(), Some(2000));
    // One symbol: only its partition is counted (at least its 100 rows, fewer than all).
    let one = e
        .prepare("SELECT vwap(price, size) FROM t WHERE symbol = 'S3'")
        .unwrap();
    let r = one.scan_rows().unwrap().unwrap();
    assert!((100..2000).contains(&r), "{r}");
    // count(*) without a filter reads no batch.
    assert_eq!(
        e.prepare("SELECT count(*) FROM t")
            .unwrap()
            .scan_rows()
            .unwrap(),
        Some(0)
    );
    // Work not bounded by the rows read, and statements that are not queries: no estimate.
    for sql in [
        "SELECT a.symbol FROM t a JOIN t b ON a.symbol = b.symbol",
        "SELECT price, row_number() OVER (ORDER BY ts) FROM t",
        "INSERT INTO t VALUES (CAST(1 AS TIMESTAMP), 'X', 1.0, 1)",
        "SHOW TABLES",
    ] {
        assert_eq!(e.prepare(sql).unwrap().scan_rows().unwrap(), None, "{sql}");
    }
    // Preparing an INSERT writes nothing.
    assert_eq!(
        rows(e.execute("SELECT count(*) FROM t").unwrap()),
        vec!["2000"]
    );
}

#[test]
fn prepared_queries_give_the_executed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    for sql in [
        "SELECT vwap(price, size) FROM t WHERE symbol = 'S3'",
        "SELECT sum(price * size) / sum(size) FROM t WHERE symbol = 'S3'",
        "SELECT symbol, count(*), min(price) FROM t GROUP BY symbol ORDER BY symbol",
    ] {
        let a = rows(e.execute(sql).unwrap());
        let b = rows(e.run(e.prepare(sql).unwrap()).unwrap());
        assert!(!a.is_empty());
        assert_eq!(a, b, "{sql}");
    }
    // vwap with independent accumulators agrees with the division of the sums.
    let v: f64 = rows(
        e.execute("SELECT vwap(price, size) FROM t WHERE symbol = 'S3'")
            .unwrap(),
    )[0]
    .parse()
    .unwrap();
    let d: f64 = rows(
        e.execute("SELECT sum(price * size) / sum(size) FROM t WHERE symbol = 'S3'")
            .unwrap(),
    )[0]
    .parse()
    .unwrap();
    assert!((v - d).abs() <= 1e-9 * d.abs(), "{v} vs {d}");
}

#[test]
fn a_prepared_query_keeps_its_deadline_and_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let expired = QuerySettings {
        timeout: Duration::ZERO,
        ..QuerySettings::default()
    };
    let p = e
        .prepare_with(
            "SELECT vwap(price, size) FROM t WHERE symbol = 'S3'",
            &expired,
        )
        .unwrap();
    assert!(p.scan_rows().unwrap().is_some());
    let err = e.run(p).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let small = QuerySettings {
        memory_limit_bytes: 1000,
        ..QuerySettings::default()
    };
    let p = e
        .prepare_with("SELECT * FROM t ORDER BY price DESC", &small)
        .unwrap();
    assert!(p.scan_rows().unwrap().is_some());
    let err = e.run(p).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
}
