#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Distributed queries with real processes: three `zeptod`s on 127.0.0.1 (heartbeat 200 ms),
//! data written through one node, read through every node, compared with a single-node
//! `zeptod` holding the same rows. Failure tests SIGKILL a data node and the raft leader while
//! a loop of queries runs: no query may fail or answer differently.
//!
//! Ports as in `tests/cluster.rs` (whose helpers are copied here: the files evolve
//! independently). Every wait polls with a deadline; the tests run one at a time.

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "support/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::{admin, csv_insert, serial, show_tables, Cluster, ADMIN_KEY, STARTUP};
use harness::{wait_until, Server};

const TRADES: &str = "CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT)";
const QUOTES: &str = "CREATE TABLE quotes (ts TIMESTAMP, symbol SYMBOL, bid DOUBLE)";

/// 6000 trades and 3000 quotes over 40 symbols (every partition), timestamps in seconds
/// over ~100 minutes. Prices are multiples of 1/4, so sums are exact in any order.
fn data() -> (String, String) {
    let mut trades = String::new();
    for i in 0..6000u64 {
        let ts = (1_700_000_000 + (i * 7919) % 6000) * 1_000_000_000;
        trades.push_str(&format!(
            "{ts},S{},{}.{},{}\n",
            i % 40,
            100 + i % 37,
            [0, 25, 5, 75][(i % 4) as usize],
            1 + i % 9
        ));
    }
    let mut quotes = String::new();
    for i in 0..3000u64 {
        let ts = (1_700_000_000 + (i * 104_729) % 6000) * 1_000_000_000 + 500_000_000;
        quotes.push_str(&format!("{ts},S{},{}.5\n", i % 40, 99 + i % 31));
    }
    (trades, quotes)
}

/// Three ready nodes and a single node, both holding `data()` (the cluster's written
/// through node 1).
fn loaded() -> (Cluster, Server, tempfile::TempDir) {
    loaded_with(&[])
}

fn loaded_with(extra: &[&str]) -> (Cluster, Server, tempfile::TempDir) {
    let c = Cluster::start_with(3, extra);
    c.wait_ready();
    let dir = tempfile::tempdir().unwrap();
    let single = Server::start_ready(dir.path(), &["--partitions", "8"]);
    for sql in [TRADES, QUOTES] {
        c.node(1).sql_ok(sql);
        single.sql_ok(sql);
    }
    for id in 1..=3 {
        wait_until("tables on every node", Duration::from_secs(10), || {
            (show_tables(c.node(id)) == vec!["quotes", "trades"]).then_some(())
        });
    }
    let (trades, quotes) = data();
    for (table, body, rows) in [("trades", &trades, 6000), ("quotes", &quotes, 3000)] {
        let r = csv_insert(c.node(1), table, body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["inserted"], rows);
        assert_eq!(csv_insert(&single, table, body).json()["inserted"], rows);
    }
    (c, single, dir)
}

/// Queries every node must answer exactly like the single node.
const SAME_ANSWER: &[&str] = &[
    "SELECT count(*) FROM trades",
    "SELECT symbol, count(*), sum(price), avg(price), min(price), max(size) FROM trades \
     GROUP BY symbol ORDER BY symbol",
    "SELECT ts, symbol, price FROM trades WHERE price > 130 ORDER BY ts DESC, symbol LIMIT 15",
    "SELECT xbar(ts, INTERVAL '10 minutes') AS bar, count(*), sum(size), first(price), \
     last(price) FROM trades GROUP BY bar ORDER BY bar",
    "SELECT symbol, count(*) AS n FROM trades WHERE size > 4 GROUP BY symbol \
     HAVING count(*) > 80 ORDER BY n DESC, symbol LIMIT 5",
    "SELECT count(DISTINCT symbol), sum(size) FROM trades WHERE ts >= 1700003000000000000",
    "SELECT DISTINCT symbol FROM quotes ORDER BY symbol",
    // One symbol: one partition, one node.
    "SELECT count(*), sum(price), max(ts) FROM trades WHERE symbol = 'S7'",
    "SELECT ts, price, size FROM trades WHERE symbol = 'S11' ORDER BY ts LIMIT 20",
    // A one-symbol ASOF JOIN: the two tables' partitions of S3 on one node, run there whole.
    "SELECT t.ts, t.price, q.bid FROM trades t ASOF JOIN quotes q \
     ON t.symbol = q.symbol AND t.ts >= q.ts \
     WHERE t.symbol = 'S3' AND q.symbol = 'S3' ORDER BY t.ts",
    // No table at all.
    "SELECT 1 + 2 AS three",
];

fn csv(s: &Server, sql: &str) -> String {
    let r = s.sql(&format!("{sql} FORMAT CSV"));
    assert_eq!(r.status, 200, "{sql}: {}", r.text());
    r.text()
}

#[test]
fn queries_through_any_node_equal_a_single_node() {
    let _g = serial();
    let (c, single, _dir) = loaded();
    for sql in SAME_ANSWER {
        let want = csv(&single, sql);
        assert!(!want.trim().is_empty(), "{sql} answered nothing");
        for id in 1..=3 {
            assert_eq!(csv(c.node(id), sql), want, "node {id}: {sql}");
        }
    }
    // JSON too, and the whole table was read exactly once (one copy per partition).
    let sql = "SELECT symbol, sum(size) FROM trades GROUP BY symbol ORDER BY symbol";
    let want = single.sql(sql).json();
    for id in 1..=3 {
        let got = c.node(id).sql(sql).json();
        assert_eq!(got["data"], want["data"], "node {id}");
        assert_eq!(got["statistics"]["rows_read"], 6000, "node {id}: {got}");
    }

    // Joins and unions across partitions, and subqueries, are refused clearly, never
    // answered from one node's data (the single node answers them).
    for sql in [
        "SELECT count(*) FROM trades t JOIN quotes q ON t.symbol = q.symbol",
        "SELECT symbol FROM trades UNION SELECT symbol FROM quotes",
        "SELECT count(*) FROM trades WHERE price > (SELECT avg(price) FROM trades)",
        "SELECT count(*) FROM trades WHERE symbol IN (SELECT symbol FROM quotes WHERE bid > 120)",
    ] {
        assert_eq!(single.sql(sql).status, 200, "{sql}");
        for id in 1..=3 {
            let msg = c.node(id).sql(sql).expect_error(400, "BAD_REQUEST");
            assert!(msg.contains("cluster mode"), "{sql}: {msg}");
        }
    }

    // SQL INSERT ... VALUES and INSERT ... SELECT are routed like bulk rows (the SELECT runs
    // distributed), through any node.
    let copy = "CREATE TABLE copy (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT)";
    c.node(2).sql_ok(copy);
    single.sql_ok(copy);
    for id in 1..=3 {
        wait_until("copy on every node", Duration::from_secs(10), || {
            show_tables(c.node(id))
                .contains(&"copy".to_string())
                .then_some(())
        });
    }
    let values = "INSERT INTO copy (ts, symbol, price) VALUES \
        ('2023-11-14T22:13:20Z', 'S1', 1.25), ('2023-11-14T22:13:21Z', 'S2', 2.5), \
        ('2023-11-14T22:13:22Z', 'S9', 3.75), ('2023-11-14T22:13:23Z', 'S30', 4.0)";
    let select = "INSERT INTO copy SELECT ts, symbol, price, size FROM trades WHERE size > 4";
    for (via, sql) in [(c.node(3), values), (c.node(1), select)] {
        let want = single.sql(sql);
        assert_eq!(want.status, 200, "{}", want.text());
        let got = via.sql(sql);
        assert_eq!(got.status, 200, "{sql}: {}", got.text());
        assert_eq!(got.json()["inserted"], want.json()["inserted"], "{sql}");
    }
    let sql =
        "SELECT symbol, count(*), sum(price), sum(size) FROM copy GROUP BY symbol ORDER BY symbol";
    let want = csv(&single, sql);
    for id in 1..=3 {
        assert_eq!(csv(c.node(id), sql), want, "node {id}");
    }
    let msg = c
        .node(2)
        .sql("INSERT INTO copy (ts, symbol, price) VALUES (1, 'S1', (SELECT max(price) FROM trades))")
        .expect_error(400, "BAD_REQUEST");
    assert!(msg.contains("cluster mode"), "{msg}");

    // SHOW TABLES / DESCRIBE answer from the replicated catalog; EXPLAIN says it is local.
    assert_eq!(show_tables(c.node(3)), vec!["copy", "quotes", "trades"]);
    let d = csv(c.node(2), "DESCRIBE trades");
    assert!(d.contains("price") && d.contains("symbol"), "{d}");
    let e = csv(c.node(2), "EXPLAIN SELECT count(*) FROM trades");
    assert!(e.lines().next().unwrap().contains("cluster mode"), "{e}");

    // Latency: a one-symbol query through every node (the owner and non-owners), and a
    // full GROUP BY (partials from every node) against the single node.
    for (label, sql) in [
        (
            "one symbol",
            "SELECT count(*), sum(price) FROM trades WHERE symbol = 'S7'",
        ),
        (
            "all symbols",
            "SELECT symbol, count(*), avg(price) FROM trades GROUP BY symbol",
        ),
    ] {
        let median = |s: &Server| {
            let mut t: Vec<Duration> = (0..15)
                .map(|_| {
                    let start = Instant::now();
                    csv(s, sql);
                    start.elapsed()
                })
                .collect();
            t.sort();
            t[7]
        };
        let per_node: Vec<Duration> = (1..=3).map(|id| median(c.node(id))).collect();
        println!(
            "{label}: single node {:?}; cluster via node 1/2/3 {per_node:?} (median of 15)",
            median(&single)
        );
    }
}

type Results = Arc<Mutex<Vec<(u16, String, Duration)>>>;

/// Run `sql` through `via` in a loop on a thread until `stop`, recording every
/// (status, body, latency) in `results`.
fn query_loop(
    via: &Server,
    sql: &'static str,
    stop: Arc<AtomicBool>,
    results: Results,
) -> std::thread::JoinHandle<()> {
    let addr = via.addr;
    let auth = format!("Bearer {ADMIN_KEY}");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            let r = harness::request(
                addr,
                "POST",
                "/",
                &[("Authorization", &auth)],
                format!("{sql} FORMAT CSV").as_bytes(),
            );
            let (status, body) = match r {
                Ok(r) => (r.status, r.text()),
                Err(e) => (0, e.to_string()),
            };
            results
                .lock()
                .unwrap()
                .push((status, body, start.elapsed()));
        }
    })
}

const LOOPED: &str = "SELECT symbol, count(*), sum(price), sum(size) FROM trades \
                      GROUP BY symbol ORDER BY symbol";

/// Kill `victim` while queries run through `via`; wait until every partition the victim was
/// primary of has a new primary, then a little more querying; every query must have
/// answered `want`. Returns the slowest query.
fn kill_during_queries(c: &mut Cluster, victim: u64, via: u64, want: &str) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let results: Results = Arc::default();
    let handle = query_loop(c.node(via), LOOPED, stop.clone(), results.clone());
    let answered = || results.lock().unwrap().len();
    wait_until("queries before the kill", Duration::from_secs(10), || {
        (answered() >= 3).then_some(())
    });
    let killed_at = Instant::now();
    c.kill9(victim);
    let failover = wait_until(
        "the victim's partitions failed over",
        Duration::from_secs(30),
        || {
            let v = admin(c.node(via));
            v["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["primary"] != victim)
                .then(|| killed_at.elapsed())
        },
    );
    println!("node {victim} killed; its partitions failed over after {failover:?}");
    let at_failover = answered();
    wait_until(
        "queries after the failover",
        Duration::from_secs(20),
        || (answered() >= at_failover + 5).then_some(()),
    );
    stop.store(true, Ordering::SeqCst);
    handle.join().unwrap();
    let results = results.lock().unwrap().clone();
    let mut slowest = Duration::ZERO;
    for (i, (status, body, took)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "query {i} of {}: {body}", results.len());
        assert_eq!(body, want, "query {i} answered differently");
        slowest = slowest.max(*took);
    }
    println!(
        "{} queries through node {via} while node {victim} died: all answered, slowest {slowest:?}",
        results.len()
    );
    slowest
}

#[test]
fn a_killed_data_node_fails_no_query() {
    let _g = serial();
    let (mut c, single, _dir) = loaded();
    let want = csv(&single, LOOPED);
    let leader = wait_until("a leader", STARTUP, || c.agreed_leader().map(|(l, _)| l));
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (victim, via) = (others[0], others[1]);
    assert_eq!(csv(c.node(via), LOOPED), want);
    kill_during_queries(&mut c, victim, via, &want);
    // Reads of every node's partitions still agree through the leader too.
    assert_eq!(csv(c.node(leader), LOOPED), want);
    for sql in SAME_ANSWER {
        assert_eq!(csv(c.node(via), sql), csv(&single, sql), "{sql}");
    }
}

#[test]
fn a_killed_raft_leader_fails_no_query_and_metadata_changes_work_again() {
    let _g = serial();
    let (mut c, single, _dir) = loaded();
    let want = csv(&single, LOOPED);
    let leader = wait_until("a leader", STARTUP, || c.agreed_leader().map(|(l, _)| l));
    let via = (1..=3).find(|id| *id != leader).unwrap();
    kill_during_queries(&mut c, leader, via, &want);
    let new = wait_until("a new leader", Duration::from_secs(30), || {
        c.agreed_leader().map(|(l, _)| l).filter(|l| *l != leader)
    });
    assert_ne!(new, leader);
    let out = c
        .node(via)
        .sql_ok("CREATE TABLE after_failover (ts TIMESTAMP, symbol SYMBOL, v DOUBLE)");
    assert!(out.contains("created"), "{out}");
    for id in c.live() {
        wait_until(
            "the new table on survivors",
            Duration::from_secs(10),
            || {
                show_tables(c.node(id))
                    .contains(&"after_failover".to_string())
                    .then_some(())
            },
        );
    }
    for id in c.live() {
        assert_eq!(csv(c.node(id), LOOPED), want, "node {id}");
        assert_eq!(
            csv(c.node(id), "SELECT count(*) FROM after_failover"),
            "0\n"
        );
    }
}

#[test]
fn a_partition_with_no_reachable_copy_fails_the_query_with_unavailable_never_partially() {
    let _g = serial();
    let extra = ["--query-timeout", "2s"];
    let (mut c, single, _dir) = loaded_with(&extra);
    let survivor = 3;
    // Partitions whose copies are all on nodes 1 and 2 (placement spreads 8 partitions
    // over the 3 pairs of nodes).
    let v = admin(c.node(survivor));
    let lost: Vec<u64> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["in_sync"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n.as_u64() != Some(survivor))
        })
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert!(!lost.is_empty(), "{v}");
    let held = (0..40)
        .map(|i| format!("S{i}"))
        .find(|s| {
            let p = u64::from(zepto_storage::partition_for("trades", s, 8));
            !lost.contains(&p)
        })
        .unwrap();
    c.kill9(1);
    c.kill9(2);
    let s = c.node(survivor);
    let started = Instant::now();
    let r = s.sql("SELECT count(*) FROM trades FORMAT CSV");
    let took = started.elapsed();
    let msg = r.expect_error(503, "UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    assert!(msg.contains("no partial answer"), "{msg}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    println!("query over partitions {lost:?} with no live copy: 503 after {took:?}");
    // Not even the partitions the survivor holds are answered from its copy: cut off from
    // the metadata majority, it cannot know whether the majority failed them over (a split
    // brain looks the same from here), so its copy may be stale. Never a stale answer.
    let sql = format!("SELECT count(*), sum(price) FROM trades WHERE symbol = '{held}'");
    let msg = s.sql(&sql).expect_error(503, "UNAVAILABLE");
    assert!(msg.contains("no partial answer"), "{msg}");
    // Once the majority is back, the same query is answered, and right.
    c.restart(1, &extra);
    c.restart(2, &extra);
    let s = c.node(survivor);
    let want = csv(&single, &sql);
    wait_until(
        "the survivor answers again",
        Duration::from_secs(30),
        || {
            let r = s.sql(&format!("{sql} FORMAT CSV"));
            (r.status == 200 && r.text() == want).then_some(())
        },
    );
}

#[test]
fn partials_larger_than_a_grpc_message_stream_in_chunks() {
    let _g = serial();
    let c = Cluster::start_with(3, &[]);
    c.wait_ready();
    c.node(1)
        .sql_ok("CREATE TABLE big (ts TIMESTAMP, symbol SYMBOL, n BIGINT, note STRING)");
    for id in 1..=3 {
        wait_until("table on every node", Duration::from_secs(10), || {
            show_tables(c.node(id))
                .contains(&"big".to_string())
                .then_some(())
        });
    }
    // 200k rows of ~90 bytes: every node's partial answer is several MiB (tonic's default
    // message limit is 4 MiB; chunks are 1 MiB).
    const ROWS: u64 = 200_000;
    let pad = "x".repeat(60);
    let body: String = (0..ROWS)
        .map(|i| format!("{},S{},{i},{pad}{i}\n", i + 1, i % 50))
        .collect();
    let r = csv_insert(c.node(1), "big", &body);
    assert_eq!(r.json()["inserted"], ROWS, "{}", r.text());
    // The partial part is scan + filter + projection: every row with its 66-byte note.
    let sql = "SELECT n, symbol, note FROM big WHERE n >= 0 ORDER BY n DESC LIMIT 3";
    for id in 1..=3 {
        let started = Instant::now();
        let v = c.node(id).sql(sql).json();
        let took = started.elapsed();
        assert_eq!(v["statistics"]["rows_read"], ROWS, "{v}");
        let got: Vec<(u64, String, String)> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_u64().unwrap(),
                    r[1].as_str().unwrap().to_string(),
                    r[2].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [199_999, 199_998, 199_997]
                .map(|n| (n, format!("S{}", n % 50), format!("{pad}{n}")))
                .to_vec(),
            "node {id}"
        );
        println!("{ROWS} rows shipped as partials to node {id}: {took:?}");
    }
}

#[test]
fn a_hung_node_is_read_around_once_the_map_says_so() {
    let _g = serial();
    let (c, single, _dir) = loaded();
    let want = csv(&single, LOOPED);
    let leader = wait_until("a leader", STARTUP, || c.agreed_leader().map(|(l, _)| l));
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (victim, via) = (others[0], others[1]);
    assert_eq!(csv(c.node(via), LOOPED), want);
    // SIGSTOP: connections stay open and calls hang (no refusal to fail fast on). The
    // coordinator gives up on the call when the map declares the node SUSPECT (600 ms without
    // heartbeats at a 200 ms interval) and reads the in-sync copies instead.
    const SIGSTOP: i32 = 19;
    const SIGCONT: i32 = 18;
    c.node(victim).signal(SIGSTOP);
    let started = Instant::now();
    let got = csv(c.node(via), LOOPED);
    let took = started.elapsed();
    c.node(victim).signal(SIGCONT);
    assert_eq!(got, want);
    println!("query through node {via} with node {victim} stopped: answered after {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// A 3-node cluster (`--seal-idle 1s`) with `table (ts, symbol, id)` holding 4000 rows
/// (ids `base..base + 4000`, every partition) in HDB files on every node, then node 2
/// stopped, one stored id in each of its HDB files flipped by a bit, and node 2 started again
/// without the background check (so the damage stays unknown until something reads it),
/// leading partitions again.
fn cluster_with_damaged_node2(table: &str, base: i64) -> Cluster {
    let mut c = Cluster::start_with(3, &["--seal-idle", "1s"]);
    c.wait_ready();
    cluster_support::create_id_table(&c, table);
    let body: String = (0..4000i64)
        .map(|i| format!("{},s{},{}\n", 1_000 + i, i % 40, base + i))
        .collect();
    let r = csv_insert(c.node(1), table, &body);
    assert_eq!(r.json()["inserted"], 4000, "{}", r.text());
    // Idle for --seal-idle: every copy is written to HDB files.
    for id in 1..=3 {
        wait_until("every copy in HDB", Duration::from_secs(60), || {
            let s = c.node(id);
            (s.metric("zepto_memory_rows") == 0 && s.metric("zepto_hdb_chunks") > 0).then_some(())
        });
    }
    let mut s = c.nodes[1].take().unwrap();
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(60)).success());
    let ids: std::collections::HashSet<[u8; 8]> =
        (0..4000i64).map(|i| (base + i).to_le_bytes()).collect();
    let mut changed = 0;
    for f in harness::files_under(&c.dir.path().join("node2").join("hdb")) {
        let mut bytes = std::fs::read(&f).unwrap();
        if let Some(at) = bytes.windows(8).position(|w| ids.contains(w)) {
            bytes[at] ^= 0x04;
            std::fs::write(&f, &bytes).unwrap();
            changed += 1;
        }
    }
    assert!(changed > 0, "node 2 holds HDB files of {table}");
    c.restart(2, &["--seal-idle", "1s", "--scrub-bandwidth", "0"]);
    c.node(2).wait_ready();
    // Node 2 handed its primaries over when it stopped; wait until the rebalancer gives it
    // some back, so that its damaged copies are read first.
    wait_until(
        "node 2 leads a partition again",
        Duration::from_secs(90),
        || {
            let v = admin(c.node(1));
            v["partitions"]
                .as_array()?
                .iter()
                .any(|p| p["primary"] == 2 && p["in_sync"].as_array().is_some_and(|s| s.len() == 2))
                .then_some(())
        },
    );
    c
}

/// ADR 0015: a node whose HDB file fails its content checksum does not fail the query; the
/// part is read from the partition's other copy, whichever node coordinates.
#[test]
fn an_hdb_file_failing_its_checksum_is_read_from_the_other_copy() {
    let _g = serial();
    const BASE: i64 = 5_000_000;
    let c = cluster_with_damaged_node2("cs", BASE);
    let want = format!("{},4000\n", (0..4000i64).map(|i| BASE + i).sum::<i64>());
    let q = "SELECT sum(id), count(*) FROM cs FORMAT CSV";
    for via in [1, 2, 3] {
        let r = c.node(via).sql(q);
        assert_eq!((r.status, r.text()), (200, want.clone()), "via node {via}");
    }
    // The queries read node 2's corrupt files and went around them (the files may be
    // replaced already, ADR 0017: the log tells).
    assert!(
        c.node(2).log().contains("HDB file is corrupt"),
        "queries read node 2's corrupt files"
    );
}

/// The partitions `/admin/verify` on `s` reports corrupt files in (it checks every file).
fn corrupt_partitions(s: &Server) -> std::collections::BTreeSet<u64> {
    let v = s.req("POST", "/admin/verify", b"").json();
    v["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["partition"].as_u64().unwrap())
        .collect()
}

/// ADR 0017: every copy a node reports corrupt is replaced whole, without a write: a
/// primary is first handed to its clean replica (ADR 0015's divergent answer then gets the
/// old primary, now the replica, a whole copy), a replica is copied at the primary's next
/// probe. Answers stay exact throughout.
#[test]
fn corrupt_copies_are_replaced_whole_primaries_handed_over_first() {
    let _g = serial();
    const BASE: i64 = 9_000_000;
    let c = cluster_with_damaged_node2("rc", BASE);
    let sum: i64 = (0..4000i64).map(|i| BASE + i).sum();
    // Node 2 leads partitions again (its files are damaged, but nothing read them yet): the
    // damage is made known by /admin/verify.
    let before = corrupt_partitions(c.node(2));
    let led: std::collections::BTreeSet<u64> = admin(c.node(1))["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["primary"] == 2)
        .filter_map(|p| p["id"].as_u64())
        .collect();
    assert!(
        !before.is_disjoint(&led),
        "node 2 leads a damaged copy: {before:?} vs {led:?}"
    );
    // No write from here on: the reports alone get every damaged copy replaced.
    let repaired = wait_until("node 2's copies replaced", Duration::from_secs(120), || {
        let v = admin(c.node(1));
        let held: std::collections::BTreeSet<u64> = v["partitions"]
            .as_array()?
            .iter()
            .filter(|p| p["primary"] == 2 || p["replica"] == 2)
            .filter_map(|p| p["id"].as_u64())
            .collect();
        let now = corrupt_partitions(c.node(2));
        let reported = v["rebalance"]["corrupt_copies"].as_object()?.is_empty();
        (now.is_disjoint(&held) && reported).then_some(now)
    });
    println!(
        "corrupt partitions on node 2: {before:?} before, {repaired:?} after (not its copies)"
    );
    let log = c.node(2).log();
    assert!(
        log.contains("handing the primary over: this node's copy has a corrupt HDB file"),
        "node 2 handed a damaged primary over"
    );
    assert!(
        log.contains("partition replaced by a copy from its primary"),
        "whole copies replaced the damaged ones"
    );
    let want = format!("{sum},4000\n");
    for via in [1, 2, 3] {
        let r = c
            .node(via)
            .sql("SELECT sum(id), count(*) FROM rc FORMAT CSV");
        assert_eq!((r.status, r.text()), (200, want.clone()), "via node {via}");
    }
}
