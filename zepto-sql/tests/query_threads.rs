//! The threads of parallel queries: an engine starts them once, on its first parallel query,
//! reuses them for every later one (no thread per query), and they end with the engine.
//! Its own test binary: it counts the process's threads, which other tests would change.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use zepto_sql::{Engine, Parallelism, QuerySettings};
use zepto_storage::{Config, Db};

/// Threads of this process named like the engine's query threads (Linux: /proc).
fn query_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("zepto-query"))
        .count()
}

#[test]
fn parallel_queries_reuse_the_engines_threads_and_the_threads_end_with_it() {
    if !cfg!(target_os = "linux") {
        println!("SKIPPED: counts threads through /proc");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.partitions = 16;
    let db = Db::open(cfg).unwrap();
    let engine = Engine::new(db, QuerySettings::default()).with_parallelism(Parallelism {
        threads: 3,
        min_rows: 0,
    });
    engine
        .execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, size BIGINT)")
        .unwrap();
    let values: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "(CAST({} AS TIMESTAMP), 'S{}', {})",
                1_704_189_600_000_000_000i64 + i * 1_000_000_000,
                i % 20,
                i % 7
            )
        })
        .collect();
    engine
        .execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
        .unwrap();
    assert_eq!(
        query_threads(),
        0,
        "no query thread before a parallel query"
    );

    for _ in 0..25 {
        let out = engine
            .execute("SELECT symbol, count(*), sum(size) FROM t GROUP BY symbol")
            .unwrap();
        let zepto_sql::QueryOutput::Rows { batches, .. } = out else {
            panic!("not rows");
        };
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 20);
    }
    assert!(engine.parallel_queries() >= 25, "the queries ran serially");
    // threads - 1 helpers, the same ones for all 25 queries.
    assert_eq!(query_threads(), 2);

    // A clone shares them; they end when the last clone is gone.
    let clone = engine.clone();
    drop(engine);
    clone.execute("SELECT sum(size) FROM t").unwrap();
    assert_eq!(query_threads(), 2);
    drop(clone);
    let deadline = Instant::now() + Duration::from_secs(10);
    while query_threads() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} query threads still running 10 s after the engine was dropped",
            query_threads()
        );
        std::thread::yield_now();
    }
}
