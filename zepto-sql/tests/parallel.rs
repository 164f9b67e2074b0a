//! Aggregates on several threads: every query must give exactly the rows, in the same order,
//! of the serial path (floating-point sums to 10 significant digits), with NULLs, empty
//! partitions and no rows at all.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use zepto_sql::{Engine, Parallelism, QueryOutput, QuerySettings};
use zepto_storage::{Config, Db};

fn engines(dir: &std::path::Path, partitions: u32) -> (Engine, Engine) {
    let mut cfg = Config::new(dir);
    cfg.partitions = partitions;
    let db = Db::open(cfg).unwrap();
    let serial = Engine::new(db.clone(), QuerySettings::default())
        .with_clock(Arc::new(|| common::TEST_NOW))
        .with_parallelism(Parallelism::serial());
    let parallel = Engine::new(db, QuerySettings::default())
        .with_clock(Arc::new(|| common::TEST_NOW))
        .with_parallelism(Parallelism {
            threads: 3,
            min_rows: 0,
        });
    (serial, parallel)
}

fn load(engine: &Engine, symbols: i64, rows: i64) {
    engine
        .execute(
            "CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, venue STRING)",
        )
        .unwrap();
    let mut values = vec![];
    for i in 0..rows {
        let sym = format!("S{}", i % symbols);
        // Out of order, with ties on the timestamp (first/last must break them as one pass).
        let ts = 1_704_189_600_000_000_000i64 + ((i * 7919) % 300) * 1_000_000_000;
        let price = if i % 17 == 0 {
            "NULL".to_string()
        } else {
            format!("{}.{}", 100 + (i * 31) % 50, i % 10)
        };
        let size = if i % 13 == 0 {
            "NULL".to_string()
        } else {
            ((i * 37) % 100 + 1).to_string()
        };
        let venue = ["'X'", "'Y'", "'Z'", "NULL"][(i % 4) as usize];
        values.push(format!(
            "(CAST({ts} AS TIMESTAMP), '{sym}', {price}, {size}, {venue})"
        ));
    }
    if !values.is_empty() {
        engine
            .execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
            .unwrap();
    }
}

const QUERIES: &[&str] = &[
    "SELECT sum(price * size) FROM t",
    "SELECT sum(size * size), sum(price * price) FROM t",
    "SELECT count(*), count(price), sum(price), sum(size), avg(price), min(price), max(size) FROM t",
    "SELECT symbol, count(*) FROM t GROUP BY symbol",
    "SELECT symbol, sum(price * size), vwap(price, size) FROM t GROUP BY symbol",
    "SELECT symbol, first(price), last(price), first(venue), last(size), max(ts) FROM t GROUP BY symbol",
    "SELECT venue, count(DISTINCT symbol), median(price), percentile(size, 0.9) FROM t GROUP BY venue",
    "SELECT symbol, stddev(price), variance(size) FROM t WHERE size > 10 GROUP BY symbol",
    "SELECT symbol, avg(price) FROM t WHERE ts >= TIMESTAMP '2024-01-02 10:01:00' AND ts < TIMESTAMP '2024-01-02 10:03:00' GROUP BY symbol",
    "SELECT symbol, count(*) AS n FROM t GROUP BY symbol HAVING count(*) > 3 ORDER BY n DESC, symbol LIMIT 5",
    "SELECT xbar(ts, INTERVAL '1 minute') AS bar, first(price), max(price), min(price), last(price), sum(size) FROM t WHERE symbol IN ('S1', 'S2', 'S3') GROUP BY bar ORDER BY bar",
    "SELECT count(*) FROM t WHERE price > 120",
    "SELECT sum(price * size), count(*) FROM t WHERE price > 1000",
    "SELECT symbol, sum(price) FROM t WHERE price > 1000 GROUP BY symbol",
];

fn same(serial: &Engine, parallel: &Engine, sql: &str) {
    let a = serial.execute(sql).unwrap();
    let b = parallel.execute(sql).unwrap();
    let (QueryOutput::Rows { schema: sa, .. }, QueryOutput::Rows { schema: sb, .. }) = (&a, &b)
    else {
        panic!("{sql}: not rows");
    };
    assert_eq!(sa, sb, "{sql}: schemas differ");
    assert_eq!(
        common::rows(&a),
        common::rows(&b),
        "{sql}: the parallel path answered differently"
    );
}

#[test]
fn parallel_aggregates_equal_the_serial_path() {
    let dir = tempfile::tempdir().unwrap();
    // 16 partitions, 5 symbols: most partitions are empty.
    let (serial, parallel) = engines(dir.path(), 16);
    load(&serial, 5, 700);
    for sql in QUERIES {
        let before = parallel.parallel_queries();
        same(&serial, &parallel, sql);
        assert!(
            parallel.parallel_queries() > before,
            "{sql} did not run in parallel"
        );
    }
    assert_eq!(serial.parallel_queries(), 0);
    // One symbol is one partition: nothing to split.
    let before = parallel.parallel_queries();
    same(
        &serial,
        &parallel,
        "SELECT sum(price * size) FROM t WHERE symbol = 'S1'",
    );
    assert_eq!(parallel.parallel_queries(), before);
}

#[test]
fn parallel_aggregates_over_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (serial, parallel) = engines(dir.path(), 8);
    load(&serial, 5, 0);
    for sql in QUERIES {
        same(&serial, &parallel, sql);
    }
    let out = parallel
        .execute("SELECT count(*), sum(price * size), sum(size) FROM t")
        .unwrap();
    assert_eq!(common::rows(&out), vec![vec!["0", "NULL", "NULL"]]);
}

#[test]
fn parallel_aggregates_with_many_symbols() {
    let dir = tempfile::tempdir().unwrap();
    let (serial, parallel) = engines(dir.path(), 64);
    load(&serial, 100, 3000);
    for sql in QUERIES {
        same(&serial, &parallel, sql);
    }
    assert!(parallel.parallel_queries() >= QUERIES.len() as u64);
}

#[test]
fn parallel_aggregates_respect_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (serial, _) = engines(dir.path(), 16);
    load(&serial, 12, 700);
    let tiny = Engine::new(
        serial.db().clone(),
        QuerySettings {
            memory_limit_bytes: 1024,
            ..QuerySettings::default()
        },
    )
    .with_parallelism(Parallelism {
        threads: 2,
        min_rows: 0,
    });
    let e = tiny
        .execute("SELECT venue, median(price) FROM t GROUP BY venue")
        .unwrap_err();
    assert_eq!(e.kind(), zepto_sql::ErrorKind::TooLarge, "{e}");
}
