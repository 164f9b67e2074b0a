//! Process-level crash test: a child process ingests through several threads and prints
//! every acknowledgement; the parent kills it with SIGKILL at a random moment (seeded),
//! then checks that the reopened directory holds every acknowledged row exactly once and
//! that every write is all-or-nothing. The child checkpoints, rolls WAL segments and
//! flushes chunks to HDB constantly, so kills land inside all of those.
//!
//! The child is this same test binary, re-run with `ZEPTO_CRASH_CHILD` set.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::Int64Type;
use rand::{Rng, SeedableRng};
use zepto_storage::{ColumnDef, ColumnType, Config, Db, ScanRequest, TableSchema};

const BATCH: i64 = 50;
const SEEDS: [u64; 4] = [1, 7, 42, 2026];
const KILLS_PER_SEED: usize = 3;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.partitions = 8;
    c.checkpoint_interval = Some(Duration::from_millis(40));
    c.wal_segment_bytes = 256 * 1024;
    c.max_chunk_rows = 3_000;
    c.maintenance_interval = Duration::from_millis(10);
    c.seal_idle = Duration::from_millis(200);
    c
}

fn schema() -> TableSchema {
    TableSchema::new(
        "ticks",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("price", ColumnType::Double),
            ColumnDef::new("id", ColumnType::BigInt),
        ],
        None,
        None,
    )
    .unwrap()
}

fn batch(first: i64) -> RecordBatch {
    let ids: Vec<i64> = (first..first + BATCH).collect();
    // Timestamps jump around a 6-hour window so rows hit many chunks, out of order.
    let ts: Vec<i64> = ids
        .iter()
        .map(|i| (i * 104_729 % 21_600) * 1_000_000_000)
        .collect();
    let sym: Vec<String> = ids.iter().map(|i| format!("SYM{}", i % 13)).collect();
    RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("symbol", arrow::datatypes::DataType::Utf8, false),
            arrow::datatypes::Field::new("price", arrow::datatypes::DataType::Float64, true),
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(ts)),
            Arc::new(StringArray::from(sym)),
            Arc::new(Float64Array::from(
                ids.iter().map(|&i| i as f64).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ids)),
        ],
    )
    .unwrap()
}

/// The child: write batches from 3 threads forever, printing `ACK <first id>` after each
/// durable acknowledgement.
fn child(dir: &str, start: i64) {
    let db = Db::open(config(Path::new(dir))).unwrap();
    if db.table("ticks").is_err() {
        db.create_table(schema()).unwrap();
    }
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut k = 0i64;
                loop {
                    let first = start + (k * 3 + t) * BATCH;
                    match db.insert("ticks", batch(first)) {
                        Ok(_) => {
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "ACK {first}").unwrap();
                            out.flush().unwrap();
                        }
                        Err(zepto_storage::Error::Backpressure { .. }) => continue,
                        Err(e) => panic!("write failed: {e}"),
                    }
                    k += 1;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn crash_child_entry() {
    // Only does something when started by `sigkill_at_random_points_loses_no_acked_row`.
    if let (Ok(dir), Ok(start)) = (
        std::env::var("ZEPTO_CRASH_CHILD"),
        std::env::var("ZEPTO_CRASH_START"),
    ) {
        child(&dir, start.parse().unwrap());
    }
}

/// Start the child, SIGKILL it right after its `kill_after`-th acknowledgement; returns
/// the acknowledged batches (including those printed just before the kill).
fn run_and_kill(dir: &Path, start: i64, kill_after: usize) -> BTreeSet<i64> {
    run_child(dir, start, Some(kill_after), "")
}

/// Run the child with fault points armed; `kill_after = None` waits for it to die by itself
/// (an `abort` fault point).
fn run_child(dir: &Path, start: i64, kill_after: Option<usize>, failpoints: &str) -> BTreeSet<i64> {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ZEPTO_CRASH_CHILD", dir)
        .env("ZEPTO_CRASH_START", start.to_string())
        .env("ZEPTO_FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = c.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acked = BTreeSet::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACK ") {
                acked.insert(id.parse::<i64>().unwrap());
                let _ = tx.send(());
            }
        }
        acked
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let Some(kill_after) = kill_after else {
        // Wait for the fault point to abort the process.
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                assert!(!status.success(), "child should have aborted");
                return reader.join().unwrap();
            }
            assert!(Instant::now() < deadline, "fault point never fired");
            let _ = rx.recv_timeout(Duration::from_millis(20));
        }
    };
    for _ in 0..kill_after {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            let _ = c.kill();
            panic!("child stopped acknowledging writes (see its stderr by running it by hand)");
        }
    }
    c.kill().unwrap(); // SIGKILL, mid-flight: other threads are writing right now
    let status = c.wait().unwrap();
    assert!(!status.success(), "child should have been killed");
    reader.join().unwrap()
}

/// id -> count of every row in the directory.
fn stored(dir: &Path) -> BTreeMap<i64, u32> {
    let mut c = config(dir);
    c.checkpoint_interval = None;
    let db = Db::open(c).unwrap();
    let scan = db.scan(&ScanRequest::all("ticks")).unwrap();
    let mut out = BTreeMap::new();
    for b in scan.batches() {
        for id in b.column(3).as_primitive::<Int64Type>().values() {
            *out.entry(*id).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn sigkill_at_random_points_loses_no_acked_row() {
    for seed in SEEDS {
        println!("crash test seed {seed} (replay: change SEEDS to [{seed}])");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut all_acked = BTreeSet::new();
        let mut start = 0i64;
        for round in 0..KILLS_PER_SEED {
            let kill_after = rng.random_range(20..600);
            let acked = run_and_kill(dir.path(), start, kill_after);
            all_acked.extend(acked.iter().copied());
            let rows = stored(dir.path());
            // Every acknowledged batch: all its rows, exactly once.
            for &first in &all_acked {
                for id in first..first + BATCH {
                    assert_eq!(
                        rows.get(&id),
                        Some(&1),
                        "seed {seed} round {round}: acked id {id}"
                    );
                }
            }
            // Nothing twice, and every write all-or-nothing.
            let mut batches: BTreeMap<i64, i64> = BTreeMap::new();
            for (&id, &n) in &rows {
                assert_eq!(n, 1, "seed {seed} round {round}: id {id} stored {n} times");
                *batches.entry(id / BATCH * BATCH).or_default() += 1;
            }
            for (&first, &n) in batches.iter().filter(|(_, &n)| n > 0) {
                assert_eq!(
                    n, BATCH,
                    "seed {seed} round {round}: write {first} partially applied"
                );
            }
            println!(
                "  round {round}: killed after ack {kill_after}, {} writes acked, {} rows stored",
                acked.len(),
                rows.len()
            );
            start = rows
                .keys()
                .next_back()
                .map(|m| (m / BATCH + 1) * BATCH)
                .unwrap_or(0)
                .max(start)
                + 1_000_000;
            start = start / BATCH * BATCH;
        }
    }
}

/// Verify every acknowledged batch is stored exactly once and nothing is partial.
fn check(dir: &Path, acked: &BTreeSet<i64>, what: &str) -> BTreeMap<i64, u32> {
    let rows = stored(dir);
    for &first in acked {
        for id in first..first + BATCH {
            assert_eq!(rows.get(&id), Some(&1), "{what}: acked id {id}");
        }
    }
    let mut batches: BTreeMap<i64, i64> = BTreeMap::new();
    for (&id, &n) in &rows {
        assert_eq!(n, 1, "{what}: id {id} stored {n} times");
        *batches.entry(id / BATCH * BATCH).or_default() += 1;
    }
    for (&first, &n) in &batches {
        assert_eq!(n, BATCH, "{what}: write {first} partially applied");
    }
    rows
}

#[test]
fn crash_inside_each_checkpoint_and_flush_step_recovers() {
    for point in [
        "checkpoint::after_chunks",
        "checkpoint::after_manifest",
        "checkpoint::after_rename",
        "checkpoint::after_cleanup",
        "hdb::before_rename",
        "wal::new_segment",
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Let a few succeed first, so there is an older checkpoint and HDB data around.
        let acked = run_child(dir.path(), 0, None, &format!("{point}=abort@3"));
        let rows = check(dir.path(), &acked, point);
        println!(
            "{point}: {} writes acked before the abort, {} rows recovered",
            acked.len(),
            rows.len()
        );
        // And the directory keeps working afterwards.
        let more = run_and_kill(dir.path(), 10_000_000, 30);
        let mut all = acked.clone();
        all.extend(more);
        check(dir.path(), &all, point);
    }
}
