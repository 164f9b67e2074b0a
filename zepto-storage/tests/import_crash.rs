//! Process-level crash test of partition import: a child process imports a partition copy
//! into a node that holds other rows, with a fault point armed to abort the process at one
//! step of the import; the parent reopens the directory and checks that the partition is
//! exactly the old one (crash before the commit checkpoint is in place) or exactly the new
//! one (after), never a mix, that other partitions are untouched, and that the directory
//! keeps working. The child is this same test binary, re-run with `ZEPTO_IMPORT_CHILD` set.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use zepto_storage::faults::Faults;
use zepto_storage::{partition_for, ColumnDef, ColumnType, Config, Db, ScanRequest, TableSchema};

const P: u32 = 5;
const TABLE_ID: u32 = 7;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.partitions = 8;
    c.checkpoint_interval = None;
    c
}

fn open(dir: &Path) -> Db {
    let db = Db::open_with_faults(config(dir), Arc::new(Faults::default())).unwrap();
    if db.table("ticks").is_err() {
        let schema = TableSchema::new(
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
        .unwrap();
        db.create_table_with_id(schema, TABLE_ID).unwrap();
    }
    db
}

fn symbols(inside: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("S{i}"))
        .filter(|k| (partition_for("ticks", k, 8) == P) == inside)
        .take(n)
        .collect()
}

fn rows(ids: std::ops::Range<i64>, syms: &[String]) -> RecordBatch {
    let n = syms.len() as i64;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("id", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(
                ids.clone()
                    .map(|i| (i * 104_729 % 21_600) * 1_000_000_000)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.clone()
                    .map(|i| syms[(i % n) as usize].clone())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.clone().map(|i| i as f64).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// (rows of partition P, rows of the others, position of P), rows as sorted text.
type State = (Vec<Vec<String>>, Vec<Vec<String>>, (u64, u64));

fn state(db: &Db) -> State {
    let read = |parts: Vec<u32>| {
        let mut req = ScanRequest::all("ticks");
        req.partitions = Some(parts);
        let mut out: Vec<Vec<String>> = Vec::new();
        for b in db.scan(&req).unwrap().batches() {
            for i in 0..b.num_rows() {
                out.push(
                    b.columns()
                        .iter()
                        .map(|c| array_value_to_string(c, i).unwrap())
                        .collect(),
                );
            }
        }
        out.sort();
        out
    };
    (
        read(vec![P]),
        read((0..8).filter(|&q| q != P).collect()),
        db.partition_position(P).unwrap(),
    )
}

/// The child: import partition P of `source` into `target` (fault points armed from the
/// environment by `Db::open`), then say DONE.
fn child(source: &Path, target: &Path) {
    let src = open(source);
    let dst = Db::open(config(target)).unwrap();
    let exp = src.export_partition(P).unwrap();
    let mut imp = dst
        .begin_partition_import(P)
        .unwrap()
        .with_memory_budget(16 * 1024);
    for t in &exp.tables {
        for b in &t.batches {
            imp.add(t.id, b.clone()).unwrap();
        }
    }
    imp.finish(exp.epoch, exp.log()).unwrap();
    println!("DONE");
}

#[test]
fn import_child_entry() {
    // Only does something when started by `a_crash_at_each_import_step_leaves_old_or_new`.
    if let (Ok(src), Ok(dst)) = (
        std::env::var("ZEPTO_IMPORT_SOURCE"),
        std::env::var("ZEPTO_IMPORT_CHILD"),
    ) {
        child(Path::new(&src), Path::new(&dst));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_crash_at_each_import_step_leaves_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let (source, base) = (dir.path().join("source"), dir.path().join("base"));
    {
        let s = open(&source);
        s.insert("ticks", rows(0..1500, &symbols(true, 4))).unwrap();
        s.insert("ticks", rows(1500..3000, &symbols(true, 4)))
            .unwrap();
        s.insert("ticks", rows(3000..4000, &symbols(false, 6)))
            .unwrap();
        s.flush().unwrap();
        s.insert("ticks", rows(4000..5000, &symbols(true, 4)))
            .unwrap();
        s.close().unwrap();
        let t = open(&base);
        t.insert("ticks", rows(10_000..11_000, &symbols(true, 3)))
            .unwrap();
        t.insert("ticks", rows(11_000..13_000, &symbols(false, 5)))
            .unwrap();
        t.flush().unwrap();
        t.insert("ticks", rows(13_000..14_000, &symbols(true, 3)))
            .unwrap();
        t.close().unwrap();
    }
    let new = state(&open(&source));
    let old = {
        let scratch = dir.path().join("scratch");
        copy_dir(&base, &scratch);
        state(&open(&scratch))
    };
    assert_eq!((new.0.len(), old.0.len()), (4000, 2000));
    assert_ne!(new.2, old.2);

    for (point, committed) in [
        ("import::spill=abort@3", false),
        ("import::after_stage=abort", false),
        ("import::after_rename=abort", false),
        ("import::after_swap=abort", false),
        ("checkpoint::after_chunks=abort", false),
        ("checkpoint::after_manifest=abort", false),
        ("checkpoint::after_rename=abort", true),
        ("checkpoint::after_cleanup=abort", true),
        ("import::after_commit=abort", true),
    ] {
        let target = dir.path().join(point.replace([':', '=', '@'], "_"));
        copy_dir(&base, &target);
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "import_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ZEPTO_IMPORT_SOURCE", &source)
            .env("ZEPTO_IMPORT_CHILD", &target)
            .env("ZEPTO_FAILPOINTS", point)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "{point}: child hangs");
            std::thread::yield_now();
        };
        let out = std::io::read_to_string(c.stdout.take().unwrap()).unwrap();
        assert!(
            !status.success() && !out.contains("DONE"),
            "{point}: the fault point never fired"
        );

        let db = open(&target);
        let got = state(&db);
        let want = if committed { &new } else { &old };
        assert!(
            got.0 == want.0,
            "{point}: partition {P} is a mix or the wrong state"
        );
        assert!(got.1 == old.1, "{point}: other partitions changed");
        assert_eq!(got.2, want.2, "{point}: position");
        assert!(!target.join("import").exists(), "{point}: staging left");
        // The directory keeps working: writes to the partition, and a later import.
        db.insert("ticks", rows(20_000..20_010, &symbols(true, 1)))
            .unwrap();
        drop(db);
        let db = open(&target);
        assert_eq!(
            state(&db).0.len(),
            want.0.len() + 10,
            "{point}: rows after a write"
        );
        let exp = open(&source).export_partition(P).unwrap();
        let mut imp = db.begin_partition_import(P).unwrap();
        for t in &exp.tables {
            for b in &t.batches {
                imp.add(t.id, b.clone()).unwrap();
            }
        }
        imp.finish(exp.epoch, exp.log()).unwrap();
        drop(db);
        let again = state(&open(&target));
        assert!(
            again.0 == new.0 && again.1 == old.1 && again.2 == new.2,
            "{point}: re-import"
        );
        println!(
            "{point}: {}",
            if committed { "new state" } else { "old state" }
        );
    }
}
