//! The public API as the server uses it: output types, counters, error kinds, settings.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use arrow::datatypes::{DataType, TimeUnit};
use zepto_sql::{ErrorKind, QueryOutput, QuerySettings};

#[test]
fn output_types_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    let out = e
        .execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE)")
        .unwrap();
    assert!(matches!(out, QueryOutput::Ok { .. }));
    let out = e
        .execute("INSERT INTO t VALUES ('2024-01-02T10:00:00Z', 'A', 1.5), ('2024-01-02T10:00:01Z', 'B', 2.5)")
        .unwrap();
    assert!(matches!(out, QueryOutput::Inserted { rows: 2 }));
    let out = e.execute("SELECT * FROM t WHERE symbol = 'A'").unwrap();
    match &out {
        QueryOutput::Rows {
            schema,
            batches,
            rows_read,
        } => {
            assert_eq!(
                schema.field(0).data_type(),
                &DataType::Timestamp(TimeUnit::Nanosecond, None)
            );
            assert_eq!(
                schema.field(1).data_type(),
                &DataType::Utf8,
                "symbols come out as Utf8"
            );
            for b in batches {
                assert_eq!(b.schema(), *schema);
            }
            assert!(*rows_read >= 1, "rows_read counts scanned rows");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        common::rows(&out),
        vec![vec!["2024-01-02T10:00:00Z", "A", "1.5"]]
    );
    let out = e.execute("EXPLAIN SELECT * FROM t").unwrap();
    match out {
        QueryOutput::Rows { schema, .. } => {
            assert_eq!(schema.fields().len(), 1);
            assert_eq!(schema.field(0).name(), "plan");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_kinds_at_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE)")
        .unwrap();
    let kind = |sql: &str| e.execute(sql).unwrap_err().kind();
    assert_eq!(kind("SELECT * FROM nope"), ErrorKind::NotFound);
    assert_eq!(kind("SELECT nope FROM t"), ErrorKind::BadRequest);
    assert_eq!(kind("SELECT price + symbol FROM t"), ErrorKind::BadRequest);
    assert_eq!(kind("SELEKT 1"), ErrorKind::BadRequest);
    assert_eq!(
        kind("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL)"),
        ErrorKind::BadRequest
    );
    let tiny = QuerySettings {
        memory_limit_bytes: 1,
        ..QuerySettings::default()
    };
    e.execute("INSERT INTO t VALUES ('2024-01-02T10:00:00Z', 'A', 1.0)")
        .unwrap();
    assert_eq!(
        e.execute_with("SELECT * FROM t ORDER BY price", &tiny)
            .unwrap_err()
            .kind(),
        ErrorKind::TooLarge
    );
    let hurry = QuerySettings {
        timeout: Duration::ZERO,
        ..QuerySettings::default()
    };
    assert_eq!(
        e.execute_with("SELECT * FROM t", &hurry)
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );
    // The default settings still apply to the next statement.
    assert_eq!(e.execute("SELECT count(*) FROM t").unwrap().num_rows(), 1);
}

#[test]
fn engine_clones_share_the_db_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, v BIGINT)")
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                e.execute(&format!(
                    "INSERT INTO t VALUES (CAST({} AS TIMESTAMP), 'S{i}', {i})",
                    1_704_189_600_000_000_000i64 + i
                ))
                .unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let out = e.execute("SELECT count(*), sum(v) FROM t").unwrap();
    assert_eq!(common::rows(&out), vec![vec!["4", "6"]]);
}

#[test]
fn queries_see_flushed_disk_chunks_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE)")
        .unwrap();
    let mut values = vec![];
    for i in 0..300i64 {
        values.push(format!(
            "(CAST({} AS TIMESTAMP), 'S{}', {}.5)",
            1_704_189_600_000_000_000i64 + ((i * 7919) % 300) * 60_000_000_000,
            i % 7,
            i
        ));
    }
    e.execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
        .unwrap();
    let queries = [
        "SELECT symbol, count(*), sum(price), first(price), last(price) FROM t GROUP BY symbol ORDER BY symbol",
        "SELECT count(*) FROM t WHERE ts >= '2024-01-02T11:00:00Z' AND ts < '2024-01-02T12:30:00Z' AND symbol IN ('S1', 'S2')",
        "SELECT ts, price FROM t WHERE symbol = 'S3' ORDER BY ts LIMIT 5",
    ];
    let before: Vec<_> = queries
        .iter()
        .map(|q| common::rows(&e.execute(q).unwrap()))
        .collect();
    assert!(e.db().flush().unwrap() > 0, "nothing was flushed to disk");
    let after: Vec<_> = queries
        .iter()
        .map(|q| common::rows(&e.execute(q).unwrap()))
        .collect();
    assert_eq!(before, after);
    assert_eq!(before[0].len(), 7);
}

#[test]
fn insert_batch_matches_columns_by_name_and_converts() {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT)")
        .unwrap();
    // As a CSV reader would produce it: strings everywhere, columns in another order.
    let batch = RecordBatch::try_from_iter(vec![
        (
            "price",
            Arc::new(StringArray::from(vec!["1.5", "2.5"])) as ArrayRef,
        ),
        (
            "SYMBOL",
            Arc::new(StringArray::from(vec!["A", "B"])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(StringArray::from(vec![
                "2024-01-02T10:00:00Z",
                "2024-01-02T10:00:01Z",
            ])) as ArrayRef,
        ),
    ])
    .unwrap();
    assert_eq!(e.insert_batch("t", &batch).unwrap(), 2);
    let out = e.execute("SELECT * FROM t ORDER BY ts").unwrap();
    assert_eq!(
        common::rows(&out),
        vec![
            vec!["2024-01-02T10:00:00Z", "A", "1.5", "NULL"],
            vec!["2024-01-02T10:00:01Z", "B", "2.5", "NULL"]
        ]
    );
    let bad = RecordBatch::try_from_iter(vec![
        ("ts", Arc::new(StringArray::from(vec!["later"])) as ArrayRef),
        ("symbol", Arc::new(StringArray::from(vec!["A"])) as ArrayRef),
    ])
    .unwrap();
    assert_eq!(
        e.insert_batch("t", &bad).unwrap_err().kind(),
        ErrorKind::BadRequest
    );
    let extra = RecordBatch::try_from_iter(vec![(
        "nope",
        Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
    )])
    .unwrap();
    assert_eq!(
        e.insert_batch("t", &extra).unwrap_err().kind(),
        ErrorKind::BadRequest
    );
    assert_eq!(
        e.insert_batch("nope", &batch).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(e.execute("SELECT count(*) FROM t").unwrap().num_rows(), 1);
}
