//! The partial/final split: for every aggregate, merging per-partition partials must give
//! exactly the single-pass answer.
#![allow(clippy::unwrap_used)]

mod common;

use zepto_sql::Engine;

fn load(engine: &Engine) {
    engine
        .execute(
            "CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, venue STRING)",
        )
        .unwrap();
    // 12 symbols over several partitions, out-of-order timestamps, NULLs.
    let mut values = vec![];
    for i in 0..600i64 {
        let sym = format!("S{}", i % 12);
        let ts = 1_704_189_600_000_000_000i64 + ((i * 7919) % 600) * 1_000_000_000;
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
    let out = engine
        .execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
        .unwrap();
    assert!(matches!(
        out,
        zepto_sql::QueryOutput::Inserted { rows: 600 }
    ));
}

fn check(engine: &Engine, sql: &str) {
    let single = common::rows(&engine.execute(sql).unwrap());
    let plan = engine.plan_query(sql).unwrap();
    let parts: Vec<u32> = match plan.partitions() {
        Some(p) => p.to_vec(),
        None => (0..engine.db().partitions()).collect(),
    };
    let mut partials = vec![];
    let mut nonempty = 0;
    let total = parts.len();
    for p in parts {
        let b = engine.execute_partial(&plan, &[p]).unwrap();
        if b.iter().any(|x| x.num_rows() > 0) {
            nonempty += 1;
        }
        partials.extend(b);
    }
    let merged = common::rows(&engine.merge(&plan, partials).unwrap());
    assert_eq!(
        single,
        merged,
        "split+merge differs for {sql}\n{}",
        plan.explain()
    );
    assert!(!single.is_empty(), "{sql} returned nothing");
    // With more than one partition in play the merge really merged something.
    if total > 1 {
        assert!(
            nonempty > 1,
            "{sql}: only {nonempty} partitions produced partials"
        );
    }
}

#[test]
fn split_and_merge_equals_single_pass() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    load(&engine);
    let aggs = [
        "count(*)",
        "count(price)",
        "count(DISTINCT venue)",
        "sum(price)",
        "sum(size)",
        "avg(price)",
        "min(price)",
        "max(size)",
        "min(venue)",
        "max(ts)",
        "first(price)",
        "last(price)",
        "first(venue)",
        "vwap(price, size)",
        "stddev(price)",
        "variance(size)",
        "median(price)",
        "percentile(size, 0.9)",
    ];
    for a in aggs {
        // Sums of doubles may differ in the last bits with another summation order: round.
        let a_r = if a.starts_with("sum(price")
            || a.starts_with("avg")
            || a.starts_with("vwap")
            || a.starts_with("stddev")
            || a.starts_with("variance")
        {
            format!("round({a}, 6)")
        } else {
            a.to_string()
        };
        check(&engine, &format!("SELECT {a_r} FROM t"));
        check(
            &engine,
            &format!("SELECT symbol, {a_r} FROM t GROUP BY symbol ORDER BY symbol"),
        );
        check(
            &engine,
            &format!("SELECT venue, {a_r} FROM t WHERE size > 10 GROUP BY venue ORDER BY venue"),
        );
    }
    check(&engine, "SELECT symbol, count(*) AS n, round(vwap(price, size), 6) AS v FROM t WHERE symbol IN ('S1', 'S2') GROUP BY symbol HAVING count(*) > 3 ORDER BY n DESC, symbol LIMIT 5");
    check(&engine, "SELECT xbar(ts, INTERVAL '1 minute') AS bar, first(price), max(price), min(price), last(price), sum(size) FROM t WHERE symbol = 'S3' GROUP BY bar ORDER BY bar");
    // Without an aggregate the split is scan/filter per partition, sort/limit at the merge.
    check(
        &engine,
        "SELECT ts, symbol, price FROM t WHERE price > 120 ORDER BY ts, symbol LIMIT 20",
    );
    // The plan says which partitions it needs.
    let plan = engine
        .plan_query("SELECT count(*) FROM t WHERE symbol = 'S1'")
        .unwrap();
    assert_eq!(plan.partitions().map(<[u32]>::len), Some(1));
    assert!(plan.explain().contains("mode=Partial"));
    assert!(plan.explain().contains("mode=Final"));
    // Joins are not split.
    assert!(engine
        .plan_query("SELECT count(*) FROM t a JOIN t b ON a.symbol = b.symbol")
        .is_err());
}

#[test]
fn cluster_plans_say_what_they_read_and_refuse_subqueries() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    load(&engine);
    let now = 1_704_189_600_000_000_000i64;
    let parts = engine.db().partitions();
    let one = engine
        .plan_cluster_at("SELECT count(*) FROM t WHERE symbol = 'S1'", now)
        .unwrap();
    let p1 = one.footprint.clone().unwrap();
    assert_eq!(p1.len(), 1);
    assert_eq!(
        one.split
            .as_ref()
            .unwrap()
            .partitions()
            .map(<[u32]>::to_vec),
        Some(p1.clone())
    );
    let all = engine
        .plan_cluster_at("SELECT symbol, count(*) FROM t GROUP BY symbol", now)
        .unwrap();
    assert!(all.split.is_some() && all.footprint.is_none());
    // A join is not split; its footprint unites both sides.
    let join = engine
        .plan_cluster_at(
            "SELECT count(*) FROM t a JOIN t b ON a.symbol = b.symbol \
             WHERE a.symbol = 'S1' AND b.symbol IN ('S1', 'S2')",
            now,
        )
        .unwrap();
    assert!(join.split.is_none());
    assert!(join.unsplit_reason.unwrap().contains("joins"));
    let fp = join.footprint.unwrap();
    assert!(
        fp.contains(&p1[0]) && !fp.is_empty() && fp.len() <= 2,
        "{fp:?}"
    );
    let unpruned = engine
        .plan_cluster_at(
            "SELECT count(*) FROM t a JOIN t b ON a.symbol = b.symbol",
            now,
        )
        .unwrap();
    assert!(unpruned.split.is_none() && unpruned.footprint.is_none());
    // No table at all: nothing to read.
    let constant = engine.plan_cluster_at("SELECT 1 + 1", now).unwrap();
    assert_eq!(constant.footprint, Some(vec![]));
    // Subqueries in expressions are refused, not evaluated over this node's data.
    for sql in [
        "SELECT count(*) FROM t WHERE price > (SELECT avg(price) FROM t)",
        "SELECT count(*) FROM t WHERE symbol IN (SELECT symbol FROM t WHERE size > 90)",
        "SELECT count(*) FROM t WHERE EXISTS (SELECT 1 FROM t WHERE size > 90)",
    ] {
        let e = engine.plan_cluster_at(sql, now).unwrap_err();
        assert_eq!(e.kind(), zepto_sql::ErrorKind::BadRequest, "{sql}");
        assert!(e.to_string().contains("cluster mode"), "{sql}: {e}");
        let e = engine
            .execute_whole_at(sql, now, &[0], engine.settings())
            .unwrap_err();
        assert!(e.to_string().contains("cluster mode"), "{sql}: {e}");
    }
    // Subqueries in FROM and CTEs are part of the plan and fine.
    let cte = engine
        .plan_cluster_at(
            "WITH s AS (SELECT * FROM t WHERE symbol = 'S1') SELECT count(*) FROM s",
            now,
        )
        .unwrap();
    assert_eq!(cte.footprint, Some(p1.clone()));
    // A whole query restricted to partitions reads only those.
    let sql =
        "SELECT count(*) AS n FROM t a ASOF JOIN t b ON a.symbol = b.symbol AND a.ts >= b.ts \
               WHERE a.symbol = 'S1' AND b.symbol = 'S1'";
    let single = common::rows(&engine.execute(sql).unwrap());
    let whole = engine
        .execute_whole_at(sql, now, &p1, engine.settings())
        .unwrap();
    assert_eq!(common::rows(&whole), single);
    let other = (0..parts).find(|p| *p != p1[0]).unwrap();
    let elsewhere = engine
        .execute_whole_at(sql, now, &[other], engine.settings())
        .unwrap();
    assert_eq!(common::rows(&elsewhere), vec![vec!["0".to_string()]]);
    // The partial part counts what it read.
    let plan = all.split.unwrap();
    let mut rows_read = 0;
    for p in 0..parts {
        rows_read += engine
            .execute_partial_with(&plan, &[p], engine.settings())
            .unwrap()
            .rows_read;
    }
    assert_eq!(rows_read, 600);
}
