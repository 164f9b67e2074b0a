//! Compatibility: a data directory written by format version 1 (checked in under
//! `tests/fixtures/format-v1`: catalog, an HDB file, a checkpoint with a memory chunk, WAL
//! records after it) must open and read back exactly. Regenerate only on purpose, for a new
//! format version, with `ZEPTO_WRITE_FIXTURE=1 cargo test -p zepto-storage --test format_compat`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};
use zepto_storage::{ColumnDef, ColumnType, Config, Db, ScanRequest, TableSchema};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1")
}

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.partitions = 4;
    c.checkpoint_interval = None;
    c.wal_segment_bytes = 16 * 1024;
    c
}

fn rows(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, false),
        Field::new("sensor", DataType::Utf8, false),
        Field::new("value", DataType::Float64, true),
        Field::new("seqno", DataType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(
                ids.clone().map(|i| i * 60_000_000_000).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.clone()
                    .map(|i| format!("s{}", i % 3))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.clone()
                    .map(|i| (i % 4 != 0).then_some(i as f64 / 2.0))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn write_fixture(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    let db = Db::open(config(dir)).unwrap();
    db.create_table(
        TableSchema::new(
            "sensors",
            vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("sensor", ColumnType::Symbol),
                ColumnDef::new("value", ColumnType::Double),
                ColumnDef::new("seqno", ColumnType::BigInt),
            ],
            None,
            Some("sensor"),
        )
        .unwrap(),
    )
    .unwrap();
    db.insert("sensors", rows(0..60)).unwrap(); // the first hour
    db.flush().unwrap(); // -> HDB
    db.insert("sensors", rows(60..100)).unwrap();
    db.checkpoint().unwrap(); // memory chunk in the checkpoint
    db.insert("sensors", rows(100..130)).unwrap(); // only in the WAL
    let end = db.stats();
    drop(db);
    // Cut the preallocated zeros after the last record (they read as the clean end anyway).
    let newest = dir.join(format!("wal/{:08}.wal", end.wal_segment));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap();
    f.set_len(end.wal_offset).unwrap();
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
fn format_v1_directory_opens_and_reads_back() {
    if std::env::var("ZEPTO_WRITE_FIXTURE").is_ok() {
        write_fixture(&fixture());
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), dir.path());
    let db = Db::open(config(dir.path())).unwrap();
    let info = db.recovery_info();
    assert!(info.checkpoint_id.is_some(), "{info:?}");
    assert!(info.wal_records_replayed > 0, "{info:?}");
    let scan = db.scan(&ScanRequest::all("sensors")).unwrap();
    let mut got: Vec<(i64, String, Option<f64>)> = Vec::new();
    for b in scan.batches() {
        let sensor = b.column(1).as_dictionary::<Int32Type>();
        let dict = sensor.values().as_string::<i32>();
        let value = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        let seq = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            got.push((
                seq.value(i),
                dict.value(sensor.keys().value(i) as usize).to_string(),
                (!arrow::array::Array::is_null(value, i)).then(|| value.value(i)),
            ));
        }
    }
    got.sort_by_key(|r| r.0);
    let want: Vec<(i64, String, Option<f64>)> = (0..130)
        .map(|i| {
            (
                i,
                format!("s{}", i % 3),
                (i % 4 != 0).then_some(i as f64 / 2.0),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(scan
        .chunks
        .iter()
        .any(|c| c.source == zepto_storage::ChunkSource::Disk));
    assert!(scan
        .chunks
        .iter()
        .any(|c| c.source == zepto_storage::ChunkSource::Memory));

    // Read as it is, then raised to the current version (2: manifests may name partition
    // import floors), so that a version-1 build refuses the directory from now on.
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("zepto.json")).unwrap()).unwrap();
    assert_eq!(identity["format_version"], zepto_storage::FORMAT_VERSION);
    assert_eq!(zepto_storage::FORMAT_VERSION, 2);
    // What this build writes on top of it reads back the same.
    db.checkpoint().unwrap();
    let p = scan.chunks[0].partition;
    let exp = db.export_partition(p).unwrap();
    let mut imp = db.begin_partition_import(p).unwrap();
    for t in &exp.tables {
        for b in &t.batches {
            imp.add(t.id, b.clone()).unwrap();
        }
    }
    imp.finish(exp.epoch, exp.log()).unwrap();
    drop(db);
    let db = Db::open(config(dir.path())).unwrap();
    let again = db.scan(&ScanRequest::all("sensors")).unwrap();
    assert_eq!(again.num_rows(), 130);
    let manifest = std::fs::read_dir(dir.path().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap()
        .join("MANIFEST.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(m["format_version"], 2);
    assert!(m["wal_floors"][p.to_string()].is_object(), "{m}");
}
