use super::*;
use crate::scan::{ChunkSource, TimeRange};
use crate::schema::{ColumnDef, ColumnType};
use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use std::collections::BTreeMap;

const HOUR: i64 = 3_600_000_000_000;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.partitions = 8;
    c.checkpoint_interval = None;
    // Tests that count checked files must not race the background check.
    c.scrub_bytes_per_sec = 0;
    c
}

fn trades_schema() -> TableSchema {
    TableSchema::new(
        "trades",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("price", ColumnType::Double),
            ColumnDef::new("volume", ColumnType::BigInt),
        ],
        None,
        None,
    )
    .unwrap()
}

/// Rows with ids `ids` (id is stored in `volume`), symbols cycling over 5, timestamps
/// spread over 3 hours and deliberately out of order.
fn rows(ids: std::ops::Range<i64>) -> RecordBatch {
    let ts: Vec<i64> = ids
        .clone()
        .map(|i| (i * 7919 % 10_000) * (3 * HOUR / 10_000))
        .collect();
    let sym: Vec<String> = ids.clone().map(|i| format!("S{}", i % 5)).collect();
    let price: Vec<Option<f64>> = ids
        .clone()
        .map(|i| (i % 11 != 0).then_some(i as f64 / 4.0))
        .collect();
    RecordBatch::try_new(
        trades_schema()
            .arrow_schema()
            .project(&[0, 1, 2, 3])
            .map(Arc::new)
            .unwrap(),
        vec![
            Arc::new(TimestampNanosecondArray::from(ts)),
            Arc::new(
                arrow::compute::cast(&StringArray::from(sym), &ColumnType::Symbol.arrow_type())
                    .unwrap(),
            ),
            Arc::new(Float64Array::from(price)),
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

/// id -> (ts, symbol, price) of every row in the table.
fn contents(db: &Db) -> BTreeMap<i64, (i64, String, Option<f64>)> {
    let scan = db.scan(&ScanRequest::all("trades")).unwrap();
    let mut out = BTreeMap::new();
    for b in scan.batches() {
        let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
        let sym = b.column(1).as_dictionary::<Int32Type>();
        let dict = sym.values().as_string::<i32>();
        let price = b.column(2).as_primitive::<Float64Type>();
        let id = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let s = dict.value(sym.keys().value(i) as usize).to_string();
            let p = price.is_valid(i).then(|| price.value(i));
            assert!(
                out.insert(id.value(i), (ts.value(i), s, p)).is_none(),
                "duplicate id {}",
                id.value(i)
            );
        }
    }
    out
}

fn expected(ids: std::ops::Range<i64>) -> BTreeMap<i64, (i64, String, Option<f64>)> {
    let b = rows(ids.clone());
    let mut out = BTreeMap::new();
    let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
    let sym = b.column(1).as_dictionary::<Int32Type>();
    let dict = sym.values().as_string::<i32>();
    let price = b.column(2).as_primitive::<Float64Type>();
    for (i, id) in ids.enumerate() {
        let p = price.is_valid(i).then(|| price.value(i));
        out.insert(
            id,
            (
                ts.value(i),
                dict.value(sym.keys().value(i) as usize).to_string(),
                p,
            ),
        );
    }
    out
}

fn open_with_table(dir: &Path) -> Db {
    let db = Db::open(config(dir)).unwrap();
    db.create_table(trades_schema()).unwrap();
    db
}

#[test]
fn writes_are_visible_and_survive_restart_via_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        for k in 0..10 {
            db.insert("trades", rows(k * 100..(k + 1) * 100)).unwrap();
        }
        assert_eq!(contents(&db), expected(0..1000));
        // Drop without close: no final checkpoint, recovery must use the WAL alone.
    }
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(contents(&db), expected(0..1000));
    let info = db.recovery_info();
    assert_eq!(info.checkpoint_id, None);
    assert!(info.wal_records_replayed >= 10);
}

#[test]
fn split_pieces_are_written_as_they_are_and_foreign_rows_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    let pieces = db.split_write("trades", rows(0..500)).unwrap();
    assert!(pieces.len() > 1, "5 symbols over 8 partitions");
    for (p, piece) in &pieces {
        let key = piece.column(1).as_dictionary::<Int32Type>();
        let dict = key.values().as_string::<i32>();
        for k in key.keys().values() {
            assert_eq!(db.partition_of("trades", dict.value(*k as usize)), *p);
        }
    }
    // A piece named for another partition, or two partitions' rows under one name, is
    // refused whole: nothing of the write lands.
    let (p0, b0) = pieces[0].clone();
    let (_, b1) = pieces[1].clone();
    let wrong = vec![(pieces[1].0, b1.clone()), ((p0 + 1) % 8, b0.clone())];
    let e = db.write_split("trades", wrong).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    let mixed = arrow::compute::concat_batches(&b0.schema(), &[b0.clone(), b1]).unwrap();
    let e = db.write_split("trades", vec![(p0, mixed)]).unwrap_err();
    assert!(e.to_string().contains("other partitions"), "{e}");
    assert!(contents(&db).is_empty());
    db.write_split("trades", pieces).unwrap().wait().unwrap();
    assert_eq!(contents(&db), expected(0..500));
    // Rows of one partition whose key dictionary also holds other partitions' values (an
    // unsplit batch filtered by hand): accepted, with the dictionary cut to its partition.
    let more = rows(500..600);
    let key = more.column(1).as_dictionary::<Int32Type>();
    let dict = key.values().as_string::<i32>();
    let mask: arrow::array::BooleanArray = key
        .keys()
        .values()
        .iter()
        .map(|k| Some(db.partition_of("trades", dict.value(*k as usize)) == p0))
        .collect();
    let only_p0 = arrow::compute::filter_record_batch(&more, &mask).unwrap();
    let n = only_p0.num_rows();
    assert!(n > 0 && n < 100);
    let receipt = db
        .write_split("trades", vec![(p0, only_p0)])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(receipt.rows, n as u64);
    assert_eq!(contents(&db).len(), 500 + n);
}

#[test]
fn checkpoint_then_more_writes_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..500)).unwrap();
        let c = db.checkpoint().unwrap();
        assert_eq!(c.rows, 500);
        db.insert("trades", rows(500..800)).unwrap();
    }
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(contents(&db), expected(0..800));
    let info = db.recovery_info();
    assert!(info.checkpoint_id.is_some());
    // Only what came after the checkpoint was replayed.
    assert!(info.wal_records_replayed <= 8, "{info:?}");
}

#[test]
fn flushed_hdb_chunks_are_read_back_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..3000)).unwrap();
        let n = db.flush().unwrap();
        assert!(n > 0);
        let st = db.stats();
        assert_eq!(st.memory_rows, 0);
        assert_eq!(st.disk_rows, 3000);
        assert_eq!(contents(&db), expected(0..3000));
        db.insert("trades", rows(3000..3100)).unwrap();
        db.checkpoint().unwrap();
        db.insert("trades", rows(3100..3200)).unwrap();
    }
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(contents(&db), expected(0..3200));
    let scan = db.scan(&ScanRequest::all("trades")).unwrap();
    assert!(scan.chunks.iter().any(|c| c.source == ChunkSource::Disk));
    // Disk chunks are sorted by time.
    for c in scan.chunks.iter().filter(|c| c.source == ChunkSource::Disk) {
        assert!(c.sorted);
    }
}

#[test]
fn a_changed_hdb_value_fails_the_reads_of_its_file_and_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..3000)).unwrap();
        db.flush().unwrap();
        db.checkpoint().unwrap();
        let r = db.verify_files(&mut |_| {}).unwrap();
        assert!(r.files > 1 && r.checked_before == r.files, "{r:?}");
    }
    // Flip one bit of row 1234's volume (its id) in whichever file holds it.
    let hit = flip_stored_bit(&dir.path().join("hdb"), 1234, 0, 0x01)
        .expect("row 1234 is in an HDB file");
    let name = hit.file_name().unwrap().to_str().unwrap().to_string();
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(db.stats().disk_chunks_verified, 0);
    // A count over whole files needs no values.
    let (n, _) = db.count_rows(&ScanRequest::all("trades")).unwrap();
    assert_eq!(n, 3000);
    // Reading the values fails, naming the file, every time.
    for _ in 0..2 {
        let e = db
            .scan(&ScanRequest::all("trades"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&name) && e.contains("checksum mismatch"), "{e}");
    }
    let mut calls = 0;
    let r = db.verify_files(&mut |_| calls += 1).unwrap();
    assert_eq!(calls, r.files);
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    assert!(r.corrupt[0].path.ends_with(&name), "{r:?}");
    assert_eq!(r.corrupt[0].table, "trades");
    assert_eq!(r.checked_now + r.checked_before + 1, r.files, "{r:?}");
    assert!(r.bytes_checked > 0);
    let st = db.stats();
    assert_eq!(
        (st.disk_chunks_corrupt, st.disk_chunks_verified),
        (1, r.files - 1)
    );
    // Its partition cannot be exported (to a new replica, a backup); the others can.
    let bad = r.corrupt[0].partition;
    let e = db.export_partition(bad).unwrap_err().to_string();
    assert!(e.contains(&name), "{e}");
    for p in (0..8).filter(|&p| p != bad) {
        db.export_partition(p).unwrap();
    }
    // The other partitions still answer.
    let mut others = ScanRequest::all("trades");
    others.partitions = Some((0..8).filter(|&p| p != bad).collect());
    let rows_left: usize = db
        .scan(&others)
        .unwrap()
        .batches()
        .map(|b| b.num_rows())
        .sum();
    assert!(rows_left > 0 && rows_left < 3000);
}

#[test]
fn the_background_check_finds_a_changed_value_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..3000)).unwrap();
        db.flush().unwrap();
        db.checkpoint().unwrap();
    }
    assert!(flip_stored_bit(&dir.path().join("hdb"), 2345, 0, 0x01).is_some());
    let mut c = config(dir.path());
    c.scrub_bytes_per_sec = 1 << 30;
    let db = Db::open(c).unwrap();
    let files = db.stats().disk_chunks;
    // No query: the background check reads every file by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = db.stats();
        if st.disk_chunks_verified + st.disk_chunks_corrupt == files {
            assert_eq!(
                (st.disk_chunks_verified, st.disk_chunks_corrupt),
                (files - 1, 1)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background check stalled: {st:?}"
        );
        std::thread::yield_now();
    }
    let r = db.verify_files(&mut |_| {}).unwrap();
    assert_eq!((r.checked_now, r.corrupt.len()), (0, 1), "{r:?}");
    // Closing does not wait for the check's pacing.
    let started = Instant::now();
    db.close().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Flip bits of the first stored copy of `value` under `dir` in place (no truncation: the
/// file stays mapped by a running engine); the file changed.
fn flip_in_place(dir: &Path, value: i64, mask: u8) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let needle = value.to_le_bytes();
    for f in walk(dir) {
        let bytes = std::fs::read(&f).unwrap();
        if let Some(at) = bytes.windows(8).position(|w| w == needle) {
            let mut file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.seek(SeekFrom::Start(at as u64)).unwrap();
            file.write_all(&[bytes[at] ^ mask]).unwrap();
            return f;
        }
    }
    panic!("{value} is stored nowhere under {}", dir.display());
}

#[test]
fn the_periodic_recheck_finds_a_file_that_changed_after_its_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.scrub_bytes_per_sec = 1 << 30;
    c.scrub_recheck_interval = Some(Duration::from_millis(50));
    let db = Db::open(c).unwrap();
    db.create_table(trades_schema()).unwrap();
    db.insert("trades", rows(0..3000)).unwrap();
    db.flush().unwrap();
    // Written here: known good, never checked by a first read.
    let st = db.stats();
    assert_eq!(
        (st.disk_chunks_verified, st.disk_chunks_corrupt),
        (st.disk_chunks, 0)
    );
    assert_eq!(contents(&db), expected(0..3000));
    // Bit rot under a running node.
    let victim = flip_in_place(&dir.path().join("hdb"), 2345, 0x01);
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.stats().disk_chunks_corrupt == 0 {
        assert!(
            Instant::now() < deadline,
            "the re-check did not find the changed file"
        );
        std::thread::yield_now();
    }
    // From then on, reads of that file fail naming it, and the report lists it.
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let e = db
        .scan(&ScanRequest::all("trades"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&name) && e.contains("checksum mismatch"), "{e}");
    let r = db.verify_files(&mut |_| {}).unwrap();
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    assert!(r.corrupt[0].path.ends_with(&name), "{r:?}");
    db.close().unwrap();
}

#[test]
fn an_hdb_file_that_does_not_decode_fails_its_reads_not_the_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..3000)).unwrap();
        db.flush().unwrap();
        db.checkpoint().unwrap();
    }
    // Cut one file's footer off (a torn copy, a bad block at its end).
    let files = walk(&dir.path().join("hdb"));
    let victim = &files[files.len() / 2];
    let len = std::fs::metadata(victim).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap();
    f.set_len(len - 100).unwrap();
    drop(f);
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let db = Db::open(config(dir.path())).unwrap();
    // Known from the manifest: whole-file counts answer, reads of its values fail.
    assert_eq!(db.count_rows(&ScanRequest::all("trades")).unwrap().0, 3000);
    let e = db
        .scan(&ScanRequest::all("trades"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&name) && e.contains("corrupt file"), "{e}");
    let r = db.verify_files(&mut |_| {}).unwrap();
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    assert!(r.corrupt[0].path.ends_with(&name), "{r:?}");
    assert_eq!(r.checked_now + r.checked_before + 1, r.files, "{r:?}");
    assert_eq!(db.stats().disk_chunks_corrupt, 1);
    let bad = r.corrupt[0].partition;
    let mut others = ScanRequest::all("trades");
    others.partitions = Some((0..8).filter(|&p| p != bad).collect());
    assert!(db.scan(&others).unwrap().batches().count() > 0);
    // The next checkpoint still names the file (its rows are nowhere else on this node).
    db.checkpoint().unwrap();
    drop(db);
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(db.stats().disk_chunks, files.len() as u64);
    assert_eq!(db.count_rows(&ScanRequest::all("trades")).unwrap().0, 3000);
}

/// In the first file under `dir` that stores the i64 `value`, flip `mask` in its byte
/// `byte`; returns that file.
fn flip_stored_bit(dir: &Path, value: i64, byte: usize, mask: u8) -> Option<PathBuf> {
    let needle = value.to_le_bytes();
    walk(dir).into_iter().find(|f| {
        let mut bytes = std::fs::read(f).unwrap();
        let Some(at) = bytes.windows(8).position(|w| w == needle) else {
            return false;
        };
        bytes[at + byte] ^= mask;
        std::fs::write(f, &bytes).unwrap();
        true
    })
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn hdb_files_written_after_the_checkpoint_are_rebuilt_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..400)).unwrap();
        db.checkpoint().unwrap();
        db.insert("trades", rows(400..600)).unwrap();
        db.flush().unwrap(); // files not in any checkpoint
    }
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(contents(&db), expected(0..600));
}

#[test]
fn checkpoint_interrupted_at_each_step_still_recovers() {
    for point in [
        "checkpoint::after_chunks",
        "checkpoint::after_manifest",
        "checkpoint::after_rename",
        "checkpoint::after_cleanup",
        "fs::write_atomic::before_fsync",
    ] {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_with_table(dir.path());
            db.insert("trades", rows(0..300)).unwrap();
            db.checkpoint().unwrap();
            db.insert("trades", rows(300..500)).unwrap();
            db.faults().set(point, "eio").unwrap();
            assert!(
                db.checkpoint().is_err(),
                "{point} should fail the checkpoint"
            );
            db.faults().clear(point);
            db.insert("trades", rows(500..600)).unwrap();
        }
        let db = Db::open(config(dir.path())).unwrap();
        assert_eq!(contents(&db), expected(0..600), "after failure at {point}");
        db.insert("trades", rows(600..700)).unwrap();
        db.checkpoint().unwrap();
        drop(db);
        let db = Db::open(config(dir.path())).unwrap();
        assert_eq!(contents(&db), expected(0..700), "after failure at {point}");
    }
}

#[test]
fn enospc_fails_the_write_and_acks_nothing_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    db.insert("trades", rows(0..100)).unwrap();
    db.faults().set("wal::write", "enospc").unwrap();
    let e = db.insert("trades", rows(100..200)).unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(
        contents(&db),
        expected(0..100),
        "nothing of the failed write is visible"
    );
    db.faults().clear("wal::write");
    db.insert("trades", rows(200..300)).unwrap();
    drop(db);
    let db = Db::open(config(dir.path())).unwrap();
    let mut want = expected(0..100);
    want.extend(expected(200..300));
    assert_eq!(contents(&db), want);
}

#[test]
fn fsync_error_poisons_the_wal_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    db.insert("trades", rows(0..10)).unwrap();
    assert!(db.health().is_ok());
    db.faults().set("wal::fsync", "eio").unwrap();
    assert!(matches!(
        db.insert("trades", rows(10..20)),
        Err(Error::WalPoisoned(_))
    ));
    db.faults().clear("wal::fsync");
    assert!(db.health().is_err());
    assert!(matches!(
        db.insert("trades", rows(20..30)),
        Err(Error::WalPoisoned(_))
    ));
    drop(db);
    // A restart recovers what was acknowledged (and may hold the unacknowledged write: the
    // client was told it failed, not that it was not written).
    let db = Db::open(config(dir.path())).unwrap();
    let got = contents(&db);
    for (id, row) in expected(0..10) {
        assert_eq!(got.get(&id), Some(&row));
    }
    assert!(got.keys().all(|&id| id < 20));
    assert!(db.health().is_ok());
}

#[test]
fn backpressure_when_the_ring_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.ring_capacity = 1;
    c.ring_max_bytes = 1;
    let db = Db::open(c).unwrap();
    db.create_table(trades_schema()).unwrap();
    // Hold the writer: fsync blocks nothing here, so fill the ring faster than it drains.
    let mut tickets = Vec::new();
    let mut refused = 0;
    for k in 0..2000 {
        match db.write("trades", rows(k * 10..(k + 1) * 10)) {
            Ok(t) => tickets.push((k, t)),
            Err(Error::Backpressure { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "a 1-slot ring must refuse some of 2000 writes");
    let mut want = BTreeMap::new();
    for (k, t) in tickets {
        t.wait().unwrap();
        want.extend(expected(k * 10..(k + 1) * 10));
    }
    assert_eq!(contents(&db), want, "every accepted write, nothing refused");
}

#[test]
fn bad_input_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Int64, true),
        arrow::datatypes::Field::new("symbol", arrow::datatypes::DataType::Utf8, true),
        arrow::datatypes::Field::new("price", arrow::datatypes::DataType::Float64, true),
        arrow::datatypes::Field::new("volume", arrow::datatypes::DataType::Int64, true),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("A"), None])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    let e = db.insert("trades", b).unwrap_err();
    assert!(e.is_client_error());
    assert!(
        e.to_string().contains("symbol") && e.to_string().contains("row 2"),
        "{e}"
    );
    let wrong_type = RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("ts", arrow::datatypes::DataType::Float64, false),
        ])),
        vec![Arc::new(Float64Array::from(vec![1.0]))],
    )
    .unwrap();
    assert!(db
        .insert("trades", wrong_type)
        .unwrap_err()
        .is_client_error());
    assert!(matches!(
        db.insert("nope", rows(0..1)),
        Err(Error::TableNotFound(_))
    ));
    // Strings and integer timestamps are accepted and converted.
    let ok = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![5, 6])),
            Arc::new(StringArray::from(vec!["A", "B"])),
            Arc::new(Float64Array::from(vec![1.0, 2.0])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    assert_eq!(db.insert("trades", ok).unwrap().rows, 2);
    assert_eq!(db.scan(&ScanRequest::all("trades")).unwrap().num_rows(), 2);
}

#[test]
fn scans_prune_partitions_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    db.insert("trades", rows(0..5000)).unwrap();
    let p = db.partition_of("trades", "S3");
    let scan = db
        .scan(&ScanRequest {
            table: "trades".into(),
            columns: Some(vec![0, 3]),
            partitions: Some(vec![p]),
            time_range: TimeRange::new(HOUR, 2 * HOUR),
        })
        .unwrap();
    assert_eq!(scan.stats.partitions_scanned, 1);
    assert_eq!(scan.schema.fields().len(), 2);
    let want = expected(0..5000)
        .into_iter()
        .filter(|(_, (ts, s, _))| {
            db.partition_of("trades", s) == p && *ts >= HOUR && *ts < 2 * HOUR
        })
        .count();
    assert_eq!(scan.num_rows(), want);
    assert!(want > 0);
    assert!(scan.stats.chunks_scanned < scan.stats.chunks_total);
}

#[test]
fn drop_table_forgets_rows_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..100)).unwrap();
        db.flush().unwrap();
        db.insert("trades", rows(100..200)).unwrap();
        db.drop_table("trades").unwrap();
        db.create_table(trades_schema()).unwrap();
        db.insert("trades", rows(500..510)).unwrap();
    }
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(contents(&db), expected(500..510));
}

#[test]
fn close_takes_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..100)).unwrap();
        db.close().unwrap();
        assert!(matches!(
            db.insert("trades", rows(0..1)),
            Err(Error::Shutdown)
        ));
    }
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(db.recovery_info().wal_records_replayed, 0);
    assert_eq!(contents(&db), expected(0..100));
}

#[test]
fn missing_data_dir_is_created_and_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    let db = Db::open(config(&nested)).unwrap();
    assert!(nested.join("zepto.json").exists());
    drop(db);
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(Db::open(config(&file)).is_err());
}

#[test]
fn wal_segments_are_recycled_after_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.wal_segment_bytes = 64 * 1024;
    let db = Db::open(c.clone()).unwrap();
    db.create_table(trades_schema()).unwrap();
    for k in 0..30 {
        db.insert("trades", rows(k * 200..(k + 1) * 200)).unwrap();
        if k % 10 == 9 {
            db.checkpoint().unwrap();
        }
    }
    let segs = crate::wal::list_segments(&dir.path().join("wal")).unwrap();
    assert!(segs.len() <= 6, "old segments removed: {}", segs.len());
    drop(db);
    let db = Db::open(c).unwrap();
    assert_eq!(contents(&db), expected(0..6000));
}

/// An engine clock the test moves by hand.
#[derive(Debug, Default)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A database with `trades`, on a hand-moved clock, with maintenance every 10 ms.
fn open_with_manual_clock(dir: &std::path::Path) -> (Db, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let mut c = config(dir);
    c.clock = clock.clone();
    c.maintenance_interval = Duration::from_millis(10);
    let db = Db::open(c).unwrap();
    db.create_table(trades_schema()).unwrap();
    (db, clock)
}

#[test]
fn idle_chunks_are_sealed_and_flushed_by_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let (db, clock) = open_with_manual_clock(dir.path());
    db.insert("trades", rows(0..100)).unwrap();
    clock.0.store(10 * 60 * 1000, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.stats().memory_rows > 0 {
        assert!(
            Instant::now() < deadline,
            "maintenance did not flush idle chunks"
        );
        std::thread::yield_now();
    }
    assert_eq!(db.stats().disk_rows, 100);
    assert_eq!(contents(&db), expected(0..100));
}

#[test]
fn a_quiet_chunk_with_a_few_small_pieces_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let (db, clock) = open_with_manual_clock(dir.path());
    // Three small writes: fewer pieces per chunk than the size-class rule ever merges.
    for k in 0..3 {
        db.insert("trades", rows(k * 10..(k + 1) * 10)).unwrap();
    }
    // Not quiet yet: nothing is merged however often maintenance runs.
    for _ in 0..20 {
        db.inner.shared.wake_maintenance();
        std::thread::yield_now();
    }
    assert_eq!(db.stats().compactions, 0);
    clock.0.store(crate::rdb::QUIET_MS, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.stats().compactions == 0 {
        assert!(
            Instant::now() < deadline,
            "maintenance did not merge the quiet chunk's pieces"
        );
        std::thread::yield_now();
    }
    assert_eq!(db.stats().memory_rows, 30, "still in memory, not flushed");
    assert_eq!(contents(&db), expected(0..30));
}

#[test]
fn damaged_wal_keeps_the_prefix_and_reports_where() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        for k in 0..20 {
            db.insert("trades", rows(k * 10..(k + 1) * 10)).unwrap();
        }
    }
    // Flip a byte in the middle of the log's records.
    let seg = crate::wal::list_segments(&dir.path().join("wal")).unwrap()[0]
        .1
        .clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end / 2] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let db = Db::open(config(dir.path())).unwrap();
    let info = db.recovery_info();
    let damage = info.wal_damage.clone().expect("damage reported");
    assert!(
        damage.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{damage}"
    );
    assert!(damage.contains("offset"), "{damage}");
    let got = contents(&db);
    assert!(
        !got.is_empty() && got.len() < 200,
        "a prefix survives: {}",
        got.len()
    );
    // What survives is whole writes, and exactly what was written.
    let want = expected(0..200);
    for (id, row) in &got {
        assert_eq!(want.get(id), Some(row));
    }
    // The node keeps working and a restart is clean.
    db.insert("trades", rows(1000..1010)).unwrap();
    drop(db);
    let db = Db::open(config(dir.path())).unwrap();
    assert!(db.recovery_info().wal_damage.is_none());
    assert_eq!(contents(&db).len(), got.len() + 10);
}

mod replication {
    use super::*;
    use crate::ingest::{CommittedRecord, ReplicatedRecord};

    fn pair(dir: &Path) -> (Db, Db, crossbeam_channel::Receiver<Vec<CommittedRecord>>) {
        let primary = Db::open(config(&dir.join("p"))).unwrap();
        let replica = Db::open(config(&dir.join("r"))).unwrap();
        primary.create_table_with_id(trades_schema(), 7).unwrap();
        replica.create_table_with_id(trades_schema(), 7).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        primary.set_commit_listener(Arc::new(move |recs: &[CommittedRecord]| {
            let _ = tx.send(recs.to_vec());
        }));
        (primary, replica, rx)
    }

    fn ship(recs: &[CommittedRecord]) -> Vec<ReplicatedRecord> {
        recs.iter()
            .map(|r| ReplicatedRecord {
                partition: r.partition,
                epoch: r.epoch,
                seq: r.seq,
                sender_epoch: r.epoch,
                prev_epoch: None,
                payload: r.payload.clone(),
            })
            .collect()
    }

    #[test]
    fn replica_applies_shipped_records_exactly_once_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, replica, rx) = pair(dir.path());
        let mut shipped = Vec::new();
        for k in 0..5 {
            let receipt = primary
                .insert("trades", rows(k * 100..(k + 1) * 100))
                .unwrap();
            let recs = rx.recv().unwrap();
            assert_eq!(
                receipt.records,
                recs.iter()
                    .map(|r| (r.partition, r.seq))
                    .collect::<Vec<_>>()
            );
            replica
                .write_replicated(ship(&recs))
                .unwrap()
                .wait()
                .unwrap();
            shipped.extend(recs);
        }
        assert_eq!(contents(&replica), expected(0..500));
        // A resend of everything is skipped, not applied twice.
        let again = replica
            .write_replicated(ship(&shipped))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(again.rows, 0);
        assert_eq!(contents(&replica), expected(0..500));
        for p in 0..8 {
            assert_eq!(
                replica.partition_position(p).unwrap(),
                primary.partition_position(p).unwrap()
            );
        }
        drop(replica);
        let replica = Db::open(config(&dir.path().join("r"))).unwrap();
        assert_eq!(contents(&replica), expected(0..500));
        for p in 0..8 {
            assert_eq!(
                replica.partition_position(p).unwrap().1,
                primary.partition_position(p).unwrap().1
            );
        }
    }

    #[test]
    fn gaps_and_stale_epochs_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, replica, rx) = pair(dir.path());
        primary.insert("trades", rows(0..50)).unwrap();
        let first = rx.recv().unwrap();
        primary.insert("trades", rows(50..100)).unwrap();
        let second = rx.recv().unwrap();
        // Skipping the first batch leaves a gap in some partition.
        let e = replica
            .write_replicated(ship(&second))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(matches!(e, Error::SeqGap { .. }), "{e}");
        assert!(
            contents(&replica).is_empty(),
            "nothing of a refused batch is applied"
        );
        replica
            .write_replicated(ship(&first))
            .unwrap()
            .wait()
            .unwrap();
        // The partition moved on to epoch 3 (a new primary): epoch-0 records are fenced.
        let p = second[0].partition;
        replica.set_partition_epoch(p, 3).unwrap();
        let e = replica
            .write_replicated(ship(&second))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(
            matches!(e, Error::Fenced { partition, epoch: 0, current: 3 } if partition == p),
            "{e}"
        );
        assert_eq!(contents(&replica), expected(0..50));
        assert!(
            replica.set_partition_epoch(p, 2).is_err(),
            "epochs never go down"
        );
        // Local writes on the replica now carry epoch 3 in that partition; the epoch survives restart.
        drop(replica);
        let replica = Db::open(config(&dir.path().join("r"))).unwrap();
        assert_eq!(
            replica.partition_position(p).unwrap().0,
            0,
            "no epoch-3 record was written yet"
        );
        replica.set_partition_epoch(p, 3).unwrap();
        replica.checkpoint().unwrap();
        drop(replica);
        let replica = Db::open(config(&dir.path().join("r"))).unwrap();
        assert_eq!(
            replica.partition_position(p).unwrap().0,
            3,
            "epoch kept by the checkpoint"
        );
    }

    #[test]
    fn a_record_whose_predecessor_differs_is_refused_as_divergent() {
        let dir = tempfile::tempdir().unwrap();
        // `old` led at epoch 1 and wrote one record nobody else got; `new` leads at epoch 2.
        let (old, new, rx) = pair(dir.path());
        let p = old.partition_of("trades", "S1");
        let one = |ids: std::ops::Range<i64>| {
            let b = rows(ids);
            let keep: Vec<u32> = (0..b.num_rows() as u32)
                .filter(|&i| {
                    let d = b.column(1).as_dictionary::<Int32Type>();
                    d.values()
                        .as_string::<i32>()
                        .value(d.keys().value(i as usize) as usize)
                        == "S1"
                })
                .collect();
            arrow::compute::take_record_batch(&b, &arrow::array::UInt32Array::from(keep)).unwrap()
        };
        old.set_partition_epoch(p, 1).unwrap();
        old.insert("trades", one(0..50)).unwrap();
        let tail = rx.recv().unwrap();
        assert_eq!(tail[0].seq, 0);
        new.set_partition_epoch(p, 2).unwrap();
        old.set_partition_epoch(p, 2).unwrap();
        let (tx2, rx2) = crossbeam_channel::unbounded();
        new.set_commit_listener(Arc::new(move |recs: &[CommittedRecord]| {
            let _ = tx2.send(recs.to_vec());
        }));
        new.insert("trades", one(50..100)).unwrap();
        new.insert("trades", one(100..150)).unwrap();
        let first = rx2.recv().unwrap();
        let second = rx2.recv().unwrap();
        // The new primary's second record (seq 1) would fit the old log's position; its
        // predecessor (seq 0, epoch 2) is not the old node's (seq 0, epoch 1).
        let mut next = ship(&second);
        next[0].prev_epoch = Some(first[0].epoch);
        let e = old
            .write_replicated(next.clone())
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Diverged {
                    seq: 0,
                    epoch: 2,
                    local_epoch: 1,
                    ..
                }
            ),
            "{e}"
        );
        // A replica that holds the right predecessor takes it.
        let fresh = Db::open(config(&dir.path().join("fresh"))).unwrap();
        fresh.create_table_with_id(trades_schema(), 7).unwrap();
        fresh.set_partition_epoch(p, 2).unwrap();
        let mut both = ship(&first);
        both.extend(next);
        fresh.write_replicated(both).unwrap().wait().unwrap();
        assert_eq!(
            fresh.partition_log(p).unwrap(),
            new.partition_log(p).unwrap()
        );
    }

    #[test]
    fn a_primary_ships_history_of_older_epochs_to_a_new_replica() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, replica, _rx) = pair(dir.path());
        let p = primary.partition_of("trades", "S1");
        primary.set_partition_epoch(p, 1).unwrap();
        primary.insert("trades", rows(0..40)).unwrap();
        // Promoted again (a failover elsewhere and back): epoch 2, more writes.
        primary.set_partition_epoch(p, 2).unwrap();
        primary.insert("trades", rows(40..80)).unwrap();
        // A brand-new replica that knows epoch 2 takes the whole history.
        replica.set_partition_epoch(p, 2).unwrap();
        let history = primary.wal_records_since(p, 0, 1 << 20).unwrap();
        assert!(history.iter().any(|r| r.epoch == 1) && history.iter().any(|r| r.epoch == 2));
        assert!(history.iter().all(|r| r.sender_epoch == 2));
        replica
            .write_replicated(history.clone())
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(
            replica.partition_log(p).unwrap(),
            primary.partition_log(p).unwrap()
        );
        // The same records from a sender that is primary only at epoch 1: fenced.
        let mut stale = history;
        for r in &mut stale {
            r.sender_epoch = 1;
        }
        let e = replica.write_replicated(stale).unwrap().wait().unwrap_err();
        assert!(
            matches!(
                e,
                Error::Fenced {
                    epoch: 1,
                    current: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_deposed_primarys_unreplicated_tail_is_refused_not_merged() {
        let dir = tempfile::tempdir().unwrap();
        // `old` was primary at epoch 1; `new` was its replica and is promoted to epoch 2.
        let (old, new, rx) = pair(dir.path());
        let p = old.partition_of("trades", "S1");
        old.set_partition_epoch(p, 1).unwrap();
        new.set_partition_epoch(p, 1).unwrap();
        let one = |ids: std::ops::Range<i64>| {
            // Rows of symbol S1 only, so every write is one record of partition `p`.
            let b = rows(ids);
            let keep: Vec<u32> = (0..b.num_rows() as u32)
                .filter(|&i| {
                    let d = b.column(1).as_dictionary::<Int32Type>();
                    d.values()
                        .as_string::<i32>()
                        .value(d.keys().value(i as usize) as usize)
                        == "S1"
                })
                .collect();
            arrow::compute::take_record_batch(&b, &arrow::array::UInt32Array::from(keep)).unwrap()
        };
        old.insert("trades", one(0..50)).unwrap();
        let replicated = rx.recv().unwrap();
        new.write_replicated(ship(&replicated))
            .unwrap()
            .wait()
            .unwrap();
        // The old primary writes more that never reaches the replica, then is deposed.
        old.insert("trades", one(50..100)).unwrap();
        let lost_tail = rx.recv().unwrap();
        assert!(lost_tail.iter().all(|r| r.epoch == 1));
        new.set_partition_epoch(p, 2).unwrap();
        old.set_partition_epoch(p, 2).unwrap();
        // The new primary writes at epoch 2, reusing the sequence numbers of the lost tail.
        let (tx2, rx2) = crossbeam_channel::unbounded();
        new.set_commit_listener(Arc::new(move |recs: &[CommittedRecord]| {
            let _ = tx2.send(recs.to_vec());
        }));
        new.insert("trades", one(100..150)).unwrap();
        let from_new = rx2.recv().unwrap();
        assert_eq!(
            from_new[0].seq, lost_tail[0].seq,
            "the same sequence number, another epoch"
        );
        let e = old
            .write_replicated(ship(&from_new))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(
            matches!(e, Error::Diverged { partition, epoch: 2, local_epoch: 1, .. } if partition == p),
            "{e}"
        );
        // The ends of the logs tell the same without shipping a record.
        let new_log = new.partition_log(p).unwrap();
        let old_log = old.partition_log(p).unwrap();
        assert_eq!(
            (new_log.last_epoch, new_log.last_epoch_start),
            (2, lost_tail[0].seq)
        );
        assert_eq!(old_log.last_epoch, 1);
        assert!(
            old_log.diverges_from(&new_log),
            "{old_log:?} vs {new_log:?}"
        );
        let prefix = PartitionLog {
            next_seq: lost_tail[0].seq,
            last_epoch: 1,
            last_epoch_start: 0,
        };
        assert!(
            !prefix.diverges_from(&new_log),
            "what was replicated is a prefix"
        );
        assert!(!new_log.diverges_from(&new_log));
        assert!(
            PartitionLog {
                next_seq: new_log.next_seq + 1,
                ..new_log
            }
            .diverges_from(&new_log),
            "a replica ahead of its primary diverges"
        );
        // And records of the deposed epoch are fenced everywhere now.
        let e = new
            .write_replicated(ship(&replicated))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Fenced {
                    epoch: 1,
                    current: 2,
                    ..
                }
            ),
            "{e}"
        );
        // The refusal survives a restart (the record epochs are recovered from the WAL).
        drop(old);
        let old = Db::open(config(&dir.path().join("p"))).unwrap();
        let e = old
            .write_replicated(ship(&from_new))
            .unwrap()
            .wait()
            .unwrap_err();
        assert!(matches!(e, Error::Diverged { .. }), "{e}");
        assert_eq!(
            old.partition_log(p).unwrap(),
            old_log,
            "recovered from the WAL"
        );
        // ...and from a checkpoint.
        new.checkpoint().unwrap();
        drop(new);
        let new = Db::open(config(&dir.path().join("r"))).unwrap();
        assert_eq!(new.partition_log(p).unwrap(), new_log);
    }

    #[test]
    fn wal_records_since_serves_catch_up_until_recycled() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.wal_segment_bytes = 16 * 1024;
        let db = Db::open(c).unwrap();
        db.create_table(trades_schema()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        db.set_commit_listener(Arc::new(move |recs: &[CommittedRecord]| {
            let _ = tx.send(recs.to_vec());
        }));
        for k in 0..40 {
            db.insert("trades", rows(k * 50..(k + 1) * 50)).unwrap();
        }
        let all: Vec<CommittedRecord> = rx.try_iter().flatten().collect();
        let p = all[0].partition;
        let want: Vec<ReplicatedRecord> = ship(&all)
            .into_iter()
            .filter(|r| r.partition == p)
            .collect();
        let got = db.wal_records_since(p, 0, usize::MAX).unwrap();
        let key = |v: &[ReplicatedRecord]| {
            v.iter()
                .map(|r| (r.partition, r.seq, r.epoch))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&got), key(&want));
        assert!(
            got.iter().zip(&want).all(|(a, b)| a.payload == b.payload),
            "payloads differ"
        );
        let tail = db.wal_records_since(p, 10, usize::MAX).unwrap();
        assert_eq!(tail.first().map(|r| r.seq), Some(10));
        assert_eq!(tail.len(), want.len() - 10);
        let one = db.wal_records_since(p, 10, 1).unwrap();
        assert_eq!(one.len(), 1);
        let (_, next) = db.partition_position(p).unwrap();
        assert!(db
            .wal_records_since(p, next, usize::MAX)
            .unwrap()
            .is_empty());
        // Two checkpoints recycle the old segments: the beginning is gone.
        db.checkpoint().unwrap();
        db.insert("trades", rows(5000..5050)).unwrap();
        db.checkpoint().unwrap();
        let e = db.wal_records_since(p, 0, usize::MAX).unwrap_err();
        assert!(matches!(e, Error::WalTruncated { from_seq: 0, .. }), "{e}");
    }
}

#[test]
fn write_many_is_one_atomic_write_across_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    let mut other = trades_schema();
    other.name = "trades2".into();
    db.create_table(other).unwrap();
    let r = db
        .write_many(vec![
            ("trades".into(), rows(0..100)),
            ("trades2".into(), rows(100..150)),
        ])
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(r.rows, 150);
    assert_eq!(
        db.scan(&ScanRequest::all("trades2")).unwrap().num_rows(),
        50
    );
    assert_eq!(contents(&db), expected(0..100));
    // A bad batch for one table refuses the whole write.
    let e = db.write_many(vec![
        ("trades".into(), rows(200..210)),
        ("nope".into(), rows(0..1)),
    ]);
    assert!(matches!(e, Err(Error::TableNotFound(_))));
    assert_eq!(contents(&db), expected(0..100));
    drop(db);
    let db = Db::open(config(dir.path())).unwrap();
    assert_eq!(
        db.scan(&ScanRequest::all("trades2")).unwrap().num_rows(),
        50
    );
}

#[test]
fn a_bare_relative_data_dir_works() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("zepto-rel-{}", std::process::id());
    // Relative to the test's working directory: create it inside the tempdir via a symlink-free path.
    let cwd = std::env::current_dir().unwrap();
    let target = cwd.join(&name);
    let _cleanup = scopeguard(target.clone());
    let db = Db::open(config(Path::new(&name))).unwrap();
    db.create_table(trades_schema()).unwrap();
    db.insert("trades", rows(0..10)).unwrap();
    drop(db);
    let db = Db::open(config(Path::new(&name))).unwrap();
    assert_eq!(contents(&db).len(), 10);
    drop(dir);
}

/// Removes a directory when dropped.
fn scopeguard(path: std::path::PathBuf) -> impl Drop {
    struct G(std::path::PathBuf);
    impl Drop for G {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    G(path)
}

#[test]
fn poisoned_message_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with_table(dir.path());
    db.faults().set("wal::fsync", "eio").unwrap();
    let first = db.insert("trades", rows(0..10)).unwrap_err().to_string();
    let later = db.insert("trades", rows(10..20)).unwrap_err().to_string();
    for m in [&first, &later] {
        assert_eq!(m.matches("WAL is unavailable").count(), 1, "{m}");
    }
}

#[test]
fn a_corrupt_newest_checkpoint_falls_back_and_keeps_hdb_files_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..300)).unwrap();
        db.checkpoint().unwrap();
        db.insert("trades", rows(300..600)).unwrap();
        db.flush().unwrap();
        db.checkpoint().unwrap(); // the newest names the HDB files
    }
    // Damage the newest manifest.
    let newest = crate::checkpoint::list_checkpoints(dir.path()).unwrap()[0]
        .1
        .clone();
    std::fs::write(newest.join("MANIFEST.json"), b"{ not json").unwrap();
    let db = Db::open(config(dir.path())).unwrap();
    // The older checkpoint plus the WAL still hold every row.
    assert_eq!(contents(&db), expected(0..600));
    assert!(
        dir.path().join("hdb-orphans").is_dir(),
        "files kept aside, not deleted"
    );
    assert!(newest.with_extension("corrupt").is_dir());
}

#[test]
fn a_changed_value_in_the_newest_checkpoint_falls_back_to_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_with_table(dir.path());
        db.insert("trades", rows(0..300)).unwrap();
        db.checkpoint().unwrap();
        db.insert("trades", rows(300..600)).unwrap();
        db.checkpoint().unwrap(); // memory chunks holding all 600 rows
    }
    let newest = crate::checkpoint::list_checkpoints(dir.path()).unwrap()[0]
        .1
        .clone();
    // One bit of row 450's id in the newest checkpoint's files: the file still decodes.
    assert!(
        flip_stored_bit(&newest, 450, 1, 0x10).is_some(),
        "row 450 is in the newest checkpoint"
    );
    let db = Db::open(config(dir.path())).unwrap();
    // The older checkpoint plus the WAL hold every row, unchanged.
    assert_eq!(contents(&db), expected(0..600));
    assert!(newest.with_extension("corrupt").is_dir());
}

#[test]
fn losing_the_only_checkpoint_after_the_wal_was_recycled_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let small = |d: &Path| {
        let mut c = config(d);
        c.wal_segment_bytes = 4096;
        c
    };
    {
        let db = Db::open(small(dir.path())).unwrap();
        db.create_table(trades_schema()).unwrap();
        for i in 0..20 {
            db.insert("trades", rows(i * 50..(i + 1) * 50)).unwrap();
        }
        db.checkpoint().unwrap(); // the only checkpoint; the segments before it are recycled
    }
    let first = crate::wal::list_segments(&dir.path().join("wal")).unwrap()[0].0;
    assert!(first > 1, "segments were recycled (first is {first})");
    let only = crate::checkpoint::list_checkpoints(dir.path()).unwrap()[0]
        .1
        .clone();
    std::fs::write(only.join("MANIFEST.json"), b"{ not json").unwrap();
    for _ in 0..2 {
        let e = Db::open(small(dir.path())).unwrap_err().to_string();
        assert!(e.contains("no usable checkpoint"), "{e}");
    }
    assert!(only.with_extension("corrupt").is_dir());
}

/// Found by the chaos suite (a SIGTERMed node logged "final checkpoint" and never exited):
/// `close` told the writer to stop while the maintenance thread was taking an automatic
/// checkpoint; its cut request queued behind the stop was never answered (a crossbeam
/// channel keeps queued messages while any sender lives), and `close` waited forever to join
/// it. Checkpoints run back to back here, so a close lands inside one every few tries.
#[test]
fn close_during_an_automatic_checkpoint_finishes() {
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.checkpoint_interval = Some(std::time::Duration::ZERO);
        c.maintenance_interval = std::time::Duration::from_millis(1);
        let db = Db::open(c).unwrap();
        db.create_table(trades_schema()).unwrap();
        db.insert("trades", rows(0..100)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = db.close();
            let _ = tx.send(r.is_ok());
        });
        // A generous bound: a close takes milliseconds; only a hang takes this long.
        let closed = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(closed, Ok(true), "close hung in round {round}");
    }
}
