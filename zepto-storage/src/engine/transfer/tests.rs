use super::*;
use crate::engine::Config;
use crate::ingest::{CommittedRecord, ReplicatedRecord};
use crate::scan::ScanRequest;
use crate::schema::{ColumnDef, ColumnType};
use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::array_value_to_string;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;

const HOUR: i64 = 3_600_000_000_000;
const TRADES: u32 = 7;
const QUOTES: u32 = 9;

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.partitions = 8;
    c.checkpoint_interval = None;
    c
}

fn trades() -> TableSchema {
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

fn quotes() -> TableSchema {
    TableSchema::new(
        "quotes",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("sym", ColumnType::Symbol),
            ColumnDef::new("bid", ColumnType::Double),
            ColumnDef::new("note", ColumnType::String),
        ],
        None,
        Some("sym"),
    )
    .unwrap()
}

fn open(dir: &Path) -> Db {
    let db = Db::open(config(dir)).unwrap();
    if db.table("trades").is_err() {
        db.create_table_with_id(trades(), TRADES).unwrap();
        db.create_table_with_id(quotes(), QUOTES).unwrap();
    }
    db
}

/// Trades with ids `ids` (id in `volume`), symbols over `syms`, timestamps over 3 hours,
/// out of order.
fn trade_rows(ids: std::ops::Range<i64>, syms: &[String]) -> RecordBatch {
    let n = syms.len() as i64;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("price", DataType::Float64, true),
            Field::new("volume", DataType::Int64, true),
        ])),
        vec![
            Arc::new(Int64Array::from(
                ids.clone()
                    .map(|i| (i * 7919 % 10_000) * (3 * HOUR / 10_000))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.clone()
                    .map(|i| syms[(i % n) as usize].clone())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.clone()
                    .map(|i| (i % 11 != 0).then_some(i as f64 / 4.0))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn quote_rows(ids: std::ops::Range<i64>, syms: &[String]) -> RecordBatch {
    let n = syms.len() as i64;
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("sym", DataType::Utf8, false),
            Field::new("bid", DataType::Float64, true),
            Field::new("note", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(Int64Array::from(
                ids.clone().map(|i| i * 1_000_000_000).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.clone()
                    .map(|i| syms[(i % n) as usize].clone())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                ids.clone().map(|i| i as f64).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.map(|i| (i % 3 != 0).then(|| format!("q{i}")))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

/// `count` symbols whose rows of `table` land in partition `p` (or anywhere but `p`).
fn symbols(table: &str, p: u32, inside: bool, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("K{i}"))
        .filter(|k| (partition_for(table, k, 8) == p) == inside)
        .take(count)
        .collect()
}

/// Every row of `table` in the partitions `parts`, as text, sorted (a multiset).
fn rows_of(db: &Db, table: &str, parts: Option<Vec<u32>>) -> Vec<Vec<String>> {
    let mut req = ScanRequest::all(table);
    req.partitions = parts;
    let scan = db.scan(&req).unwrap();
    let mut out = Vec::new();
    for b in scan.batches() {
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
}

fn others(p: u32) -> Option<Vec<u32>> {
    Some((0..8).filter(|&q| q != p).collect())
}

/// Everything a node holds: per table, partition `p` and the others.
type Snapshot = Vec<(Vec<Vec<String>>, Vec<Vec<String>>)>;

fn snapshot(db: &Db, p: u32) -> Snapshot {
    ["trades", "quotes"]
        .iter()
        .map(|t| (rows_of(db, t, Some(vec![p])), rows_of(db, t, others(p))))
        .collect()
}

fn import(db: &Db, exp: &PartitionExport) -> Result<()> {
    let mut imp = db.begin_partition_import(exp.partition)?;
    for t in &exp.tables {
        for b in &t.batches {
            imp.add(t.id, b.clone())?;
        }
    }
    imp.finish(exp.epoch, exp.log())?;
    // The copy's log ends where the source's did, so the source sees a prefix of its own.
    assert_eq!(db.partition_log(exp.partition)?, exp.log());
    Ok(())
}

const P: u32 = 3;

/// A source node with rows of both tables in every partition, some flushed to HDB,
/// some only in memory.
fn source(dir: &Path) -> Db {
    let db = open(dir);
    let inside = symbols("trades", P, true, 3);
    let outside = symbols("trades", P, false, 9);
    let qin = symbols("quotes", P, true, 2);
    db.insert("trades", trade_rows(0..500, &inside)).unwrap();
    db.insert("trades", trade_rows(500..900, &outside)).unwrap();
    db.insert("quotes", quote_rows(0..300, &qin)).unwrap();
    assert!(db.flush().unwrap() > 0);
    db.insert("trades", trade_rows(900..1200, &inside)).unwrap();
    db.insert("quotes", quote_rows(300..400, &qin)).unwrap();
    db.insert(
        "quotes",
        quote_rows(400..450, &symbols("quotes", P, false, 4)),
    )
    .unwrap();
    db
}

/// A target node that already holds other rows, in `P` and elsewhere.
fn target(dir: &Path) -> Db {
    let db = open(dir);
    db.insert(
        "trades",
        trade_rows(10_000..10_300, &symbols("trades", P, true, 2)),
    )
    .unwrap();
    db.flush().unwrap();
    db.insert(
        "trades",
        trade_rows(10_300..10_600, &symbols("trades", P, false, 5)),
    )
    .unwrap();
    db.insert(
        "quotes",
        quote_rows(20_000..20_100, &symbols("quotes", P, true, 2)),
    )
    .unwrap();
    db
}

#[test]
fn export_import_round_trip_between_two_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let b = target(&dir.path().join("b"));
    let want = snapshot(&a, P);
    let before = snapshot(&b, P);
    assert!(
        want[0].0.len() == 800 && want[1].0.len() == 400,
        "source rows in P"
    );

    let exp = a.export_partition(P).unwrap();
    assert_eq!((exp.epoch, exp.next_seq), a.partition_position(P).unwrap());
    assert_eq!(exp.rows(), 1200);
    let ids: Vec<u32> = exp.tables.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![TRADES, QUOTES]);
    // Zero-copy: the exported batches are the engine's own (same buffers as a scan).
    let scan = a
        .scan(&ScanRequest {
            partitions: Some(vec![P]),
            ..ScanRequest::all("trades")
        })
        .unwrap();
    let ptr = |b: &RecordBatch| b.column(2).to_data().buffers()[0].as_ptr();
    let scanned: BTreeSet<_> = scan.batches().map(ptr).collect();
    assert!(exp.tables[0]
        .batches
        .iter()
        .all(|b| scanned.contains(&ptr(b))));

    import(&b, &exp).unwrap();
    let got = snapshot(&b, P);
    for (t, ((gp, go), ((wp, _), (_, bo)))) in got.iter().zip(want.iter().zip(&before)).enumerate()
    {
        assert_eq!(gp, wp, "table {t}: partition {P} is the source's");
        assert_eq!(go, bo, "table {t}: other partitions untouched");
    }
    assert_eq!(
        b.partition_position(P).unwrap(),
        a.partition_position(P).unwrap()
    );
    assert!(
        !b.data_dir().join(format!("import/p{P}")).exists(),
        "staging removed"
    );

    // Restart, with and without a checkpoint and a flush in between.
    let bdir = dir.path().join("b");
    drop(b);
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), got);
    assert_eq!(
        b.partition_position(P).unwrap(),
        a.partition_position(P).unwrap()
    );
    b.checkpoint().unwrap();
    b.flush().unwrap();
    drop(b);
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), got);
    b.flush().unwrap();
    b.checkpoint().unwrap();
    b.checkpoint().unwrap();
    drop(b);
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), got);
    assert_eq!(
        b.partition_position(P).unwrap(),
        a.partition_position(P).unwrap()
    );
}

#[test]
fn import_into_an_empty_node_and_of_an_empty_partition() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let b = open(&dir.path().join("b"));
    import(&b, &a.export_partition(P).unwrap()).unwrap();
    assert_eq!(snapshot(&b, P)[0].0, snapshot(&a, P)[0].0);
    // An empty export empties the partition on a node that has rows there.
    let empty = open(&dir.path().join("c"));
    let exp = empty.export_partition(P).unwrap();
    assert_eq!((exp.rows(), exp.next_seq), (0, 0));
    import(&a, &exp).unwrap();
    assert!(rows_of(&a, "trades", Some(vec![P])).is_empty());
    assert!(rows_of(&a, "quotes", Some(vec![P])).is_empty());
    assert!(!rows_of(&a, "trades", others(P)).is_empty());
    assert_eq!(a.partition_position(P).unwrap(), (0, 0));
    let adir = a.data_dir().to_path_buf();
    drop(a);
    let a = open(&adir);
    assert!(rows_of(&a, "trades", Some(vec![P])).is_empty());
    // And it takes writes again from there.
    a.insert("trades", trade_rows(0..10, &symbols("trades", P, true, 1)))
        .unwrap();
    assert_eq!(a.partition_position(P).unwrap(), (0, 1));
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
fn import_replaces_a_divergent_tail_and_replication_continues() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a")); // the new primary
    let b = open(&dir.path().join("b")); // the deposed primary
    let (tx, rx) = crossbeam_channel::unbounded();
    a.set_commit_listener(Arc::new(move |recs: &[CommittedRecord]| {
        let _ = tx.send(recs.to_vec());
    }));
    let inside = symbols("trades", P, true, 2);
    // B was primary at epoch 0: seq 0..2 reached A, seq 2..4 did not.
    let mut b_recs = Vec::new();
    for k in 0..4 {
        b.insert("trades", trade_rows(k * 10..k * 10 + 10, &inside))
            .unwrap();
    }
    for r in b.wal_records_since(P, 0, usize::MAX).unwrap() {
        b_recs.push(r);
    }
    a.write_replicated(b_recs[..2].to_vec())
        .unwrap()
        .wait()
        .unwrap();
    let _ = rx.try_iter().count();
    // A is promoted (epoch 1) and reuses seq 2..
    a.set_partition_epoch(P, 1).unwrap();
    a.insert("trades", trade_rows(100..110, &inside)).unwrap();
    a.insert("trades", trade_rows(110..120, &inside)).unwrap();
    let shipped: Vec<_> = rx.try_iter().flatten().collect();
    let e = b
        .write_replicated(ship(&shipped))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(e, Error::Diverged { partition: P, .. }), "{e}");

    let exp = a.export_partition(P).unwrap();
    assert_eq!((exp.epoch, exp.next_seq), (1, 4));
    import(&b, &exp).unwrap();
    assert_eq!(b.partition_position(P).unwrap(), (1, 4));
    assert_eq!(
        rows_of(&b, "trades", Some(vec![P])),
        rows_of(&a, "trades", Some(vec![P]))
    );
    // Replication continues from next_seq; a resend of older records is a duplicate.
    a.insert("trades", trade_rows(120..130, &inside)).unwrap();
    let next: Vec<_> = rx.try_iter().flatten().collect();
    assert_eq!(next[0].seq, 4);
    b.write_replicated(ship(&shipped)).unwrap().wait().unwrap();
    b.write_replicated(ship(&next)).unwrap().wait().unwrap();
    assert_eq!(b.partition_position(P).unwrap(), (1, 5));
    let want = rows_of(&a, "trades", Some(vec![P]));
    assert_eq!(rows_of(&b, "trades", Some(vec![P])), want);
    // B's WAL still holds its own old seq 2..4 (epoch 0): never served again.
    let check_wal = |b: &Db| {
        let e = b.wal_records_since(P, 2, usize::MAX).unwrap_err();
        assert!(matches!(e, Error::WalTruncated { .. }), "{e}");
        let got = b.wal_records_since(P, 4, usize::MAX).unwrap();
        assert_eq!(
            got.iter().map(|r| (r.seq, r.epoch)).collect::<Vec<_>>(),
            vec![(4, 1)]
        );
        assert_eq!(got[0].payload, next[0].payload);
    };
    check_wal(&b);
    let bdir = b.data_dir().to_path_buf();
    drop(b);
    let b = open(&bdir);
    assert_eq!(rows_of(&b, "trades", Some(vec![P])), want);
    assert_eq!(b.partition_position(P).unwrap(), (1, 5));
    check_wal(&b);
    b.checkpoint().unwrap();
    drop(b);
    let b = open(&bdir);
    check_wal(&b);
    assert_eq!(rows_of(&b, "trades", Some(vec![P])), want);
}

#[test]
fn writes_to_the_partition_are_refused_during_an_import_and_others_flow() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let b = target(&dir.path().join("b"));
    let exp = a.export_partition(P).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (b, stop) = (b.clone(), stop.clone());
        std::thread::spawn(move || {
            let outside = symbols("trades", P, false, 4);
            let mut k = 0i64;
            while !stop.load(Ordering::Acquire) || k < 5 {
                b.insert(
                    "trades",
                    trade_rows(50_000 + k * 10..50_010 + k * 10, &outside),
                )
                .unwrap();
                k += 1;
            }
            k
        })
    };
    let before_others = rows_of(&b, "trades", others(P));
    let mut imp = b.begin_partition_import(P).unwrap();
    let inside = trade_rows(90_000..90_010, &symbols("trades", P, true, 1));
    let e = b.insert("trades", inside.clone()).unwrap_err();
    assert!(
        matches!(e, Error::PartitionImporting { partition: P }),
        "{e}"
    );
    let e = b.begin_partition_import(P).unwrap_err();
    assert!(
        matches!(e, Error::PartitionImporting { partition: P }),
        "{e}"
    );
    // A replicated record for the partition is refused too.
    let rec = a.wal_records_since(P, 0, 1).unwrap();
    let e = b.write_replicated(rec).unwrap().wait().unwrap_err();
    assert!(
        matches!(e, Error::PartitionImporting { partition: P }),
        "{e}"
    );
    for t in &exp.tables {
        for batch in &t.batches {
            imp.add(t.id, batch.clone()).unwrap();
        }
    }
    imp.finish(exp.epoch, exp.log()).unwrap();
    stop.store(true, Ordering::Release);
    let written = writer.join().unwrap();
    // Every write to other partitions during the import went in.
    assert_eq!(
        rows_of(&b, "trades", others(P)).len(),
        before_others.len() + written as usize * 10
    );
    assert_eq!(
        rows_of(&b, "trades", Some(vec![P])),
        rows_of(&a, "trades", Some(vec![P]))
    );
    // Afterwards the partition takes writes again.
    b.insert("trades", inside).unwrap();
    assert_eq!(b.partition_position(P).unwrap().1, exp.next_seq + 1);
}

#[test]
fn a_dropped_or_failed_import_leaves_the_partition_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let bdir = dir.path().join("b");
    let b = target(&bdir);
    let before = snapshot(&b, P);
    let pos = b.partition_position(P).unwrap();
    let exp = a.export_partition(P).unwrap();
    let hdb_files = |d: &Path| {
        let mut v = Vec::new();
        let mut stack = vec![d.join("hdb")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push(p);
                }
            }
        }
        v.sort();
        v
    };
    let files = hdb_files(&bdir);

    // Dropped half way.
    let mut imp = b
        .begin_partition_import(P)
        .unwrap()
        .with_memory_budget(1024);
    imp.add(TRADES, exp.tables[0].batches[0].clone()).unwrap();
    assert!(imp.staged_files() > 0);
    drop(imp);
    assert_eq!(snapshot(&b, P), before);
    assert!(!bdir.join(format!("import/p{P}")).exists());

    // Failing at each step before the swap: nothing changed, writes flow again.
    for point in [
        "import::spill",
        "import::after_stage",
        "import::after_rename",
    ] {
        b.faults().set(point, "eio").unwrap();
        let e = import(&b, &exp).unwrap_err();
        assert!(e.to_string().contains(point), "{point}: {e}");
        b.faults().clear(point);
        assert_eq!(snapshot(&b, P), before, "{point}");
        assert_eq!(b.partition_position(P).unwrap(), pos, "{point}");
        assert_eq!(
            hdb_files(&bdir),
            files,
            "{point}: no staged file left in hdb/"
        );
        b.insert("trades", trade_rows(0..0, &symbols("trades", P, true, 1)))
            .unwrap();
    }

    // Failing after the swap, before the checkpoint is in place: memory holds the import,
    // disk the old state; writes to the partition stay refused until a restart or an import.
    b.faults().set("checkpoint::after_chunks", "eio").unwrap();
    let e = import(&b, &exp).unwrap_err();
    assert!(e.to_string().contains("checkpoint::after_chunks"), "{e}");
    b.faults().clear("checkpoint::after_chunks");
    let new = snapshot(&a, P);
    let mem = snapshot(&b, P);
    assert_eq!(mem[0].0, new[0].0);
    let e = b
        .insert("trades", trade_rows(0..5, &symbols("trades", P, true, 1)))
        .unwrap_err();
    assert!(
        matches!(e, Error::PartitionImporting { partition: P }),
        "{e}"
    );
    // Another import that is dropped unfinished leaves it refusing writes.
    drop(b.begin_partition_import(P).unwrap());
    let e = b
        .insert("trades", trade_rows(0..5, &symbols("trades", P, true, 1)))
        .unwrap_err();
    assert!(
        matches!(e, Error::PartitionImporting { partition: P }),
        "{e}"
    );
    drop(b);
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), before, "restart: the old state");
    assert_eq!(b.partition_position(P).unwrap(), pos);
    import(&b, &exp).unwrap();
    assert_eq!(snapshot(&b, P)[0].0, new[0].0);
    assert_eq!(snapshot(&b, P)[1].0, new[1].0);
}

#[test]
fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let b = target(&dir.path().join("b"));
    let before = snapshot(&b, P);
    let inside = symbols("trades", P, true, 2);
    let mut imp = b.begin_partition_import(P).unwrap();
    let e = imp.add(42, trade_rows(0..10, &inside)).unwrap_err();
    assert!(matches!(e, Error::TableNotFound(_)), "{e}");
    // Quotes rows sent as trades: column names differ.
    let e = imp
        .add(TRADES, quote_rows(0..10, &symbols("quotes", P, true, 1)))
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidInput(_)) && e.to_string().contains("'sym'"),
        "{e}"
    );
    // Right names, a type that does not convert.
    let good = trade_rows(0..10, &inside);
    let mut cols = good.columns().to_vec();
    cols[2] = Arc::new(BooleanArray::from(vec![true; 10]));
    let mut fields: Vec<Field> = good
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[2] = Field::new("price", DataType::Boolean, true);
    let bad = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let e = imp.add(TRADES, bad).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    let e = imp
        .add(TRADES, good.project(&[0, 1, 2]).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    // A row of another partition.
    let mut mixed = inside.clone();
    mixed.push(symbols("trades", P, false, 1).remove(0));
    let e = imp.add(TRADES, trade_rows(0..10, &mixed)).unwrap_err();
    assert!(
        matches!(e, Error::InvalidInput(_)) && e.to_string().contains("belongs to partition"),
        "{e}"
    );
    // An older epoch than the node knows.
    imp.add(TRADES, trade_rows(0..10, &inside)).unwrap();
    b.set_partition_epoch(P, 5).unwrap();
    let e = imp
        .finish(
            4,
            PartitionLog {
                next_seq: 100,
                last_epoch: 4,
                last_epoch_start: 0,
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Fenced {
                partition: P,
                epoch: 4,
                current: 5
            }
        ),
        "{e}"
    );
    assert_eq!(snapshot(&b, P), before);
    assert_eq!(b.partition_position(P).unwrap().0, 5);
    let e = b.begin_partition_import(8).unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    // The partition is free again.
    b.insert("trades", trade_rows(0..10, &inside)).unwrap();
}

#[test]
fn a_large_partition_imports_with_bounded_memory() {
    const ROWS: i64 = 300_000;
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a"));
    let inside = symbols("trades", P, true, 5);
    let started = std::time::Instant::now();
    for k in 0..(ROWS / 50_000) {
        a.insert("trades", trade_rows(k * 50_000..(k + 1) * 50_000, &inside))
            .unwrap();
    }
    a.flush().unwrap();
    let written = started.elapsed();
    let started = std::time::Instant::now();
    let exp = a.export_partition(P).unwrap();
    let exported = started.elapsed();
    assert_eq!(exp.rows(), ROWS as u64);

    let b = open(&dir.path().join("b"));
    let budget = 2 << 20;
    let started = std::time::Instant::now();
    let mut imp = b
        .begin_partition_import(P)
        .unwrap()
        .with_memory_budget(budget);
    let mut peak = 0;
    for t in &exp.tables {
        for batch in &t.batches {
            // Hand over in pieces of 8 Ki rows, as a stream would.
            let mut off = 0;
            while off < batch.num_rows() {
                let n = (batch.num_rows() - off).min(8192);
                let piece = batch.slice(off, n);
                imp.add(t.id, piece).unwrap();
                peak = peak.max(imp.buffered_bytes());
                off += n;
            }
        }
    }
    assert!(
        peak <= budget + (1 << 20),
        "buffered {peak} bytes, budget {budget}"
    );
    assert!(
        imp.staged_files() >= 4,
        "{} files staged",
        imp.staged_files()
    );
    imp.finish(exp.epoch, exp.log()).unwrap();
    let imported = started.elapsed();
    assert_eq!(
        rows_of(&b, "trades", Some(vec![P])),
        rows_of(&a, "trades", Some(vec![P]))
    );
    println!(
        "{ROWS} rows: write+flush {written:?}, export {exported:?}, import (staged, budget {budget} B, peak {peak} B) {imported:?}"
    );
}

#[test]
fn an_export_survives_an_arrow_ipc_stream() {
    use arrow::ipc::reader::StreamReader;
    use arrow::ipc::writer::StreamWriter;
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let b = target(&dir.path().join("b"));
    let exp = a.export_partition(P).unwrap();
    let mut imp = b.begin_partition_import(P).unwrap();
    for t in &exp.tables {
        // What zeptod sends: one Arrow IPC stream per table (dictionaries differ per batch).
        let mut wire = Vec::new();
        let mut w = StreamWriter::try_new(&mut wire, &t.schema.arrow_schema()).unwrap();
        for batch in &t.batches {
            w.write(batch).unwrap();
        }
        w.finish().unwrap();
        drop(w);
        for batch in StreamReader::try_new(std::io::Cursor::new(wire), None).unwrap() {
            imp.add(t.id, batch.unwrap()).unwrap();
        }
    }
    imp.finish(exp.epoch, exp.log()).unwrap();
    assert_eq!(
        rows_of(&b, "trades", Some(vec![P])),
        rows_of(&a, "trades", Some(vec![P]))
    );
    assert_eq!(
        rows_of(&b, "quotes", Some(vec![P])),
        rows_of(&a, "quotes", Some(vec![P]))
    );
}

/// The HDB files of `table`'s partition `p` under `dir`, by name.
fn hdb_files(dir: &Path, table: &str, p: u32) -> BTreeSet<String> {
    match std::fs::read_dir(dir.join("hdb").join(table).join(p.to_string())) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".arrow"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("list hdb: {e}"),
    }
}

#[test]
fn an_import_deletes_the_files_it_replaced_once_no_kept_checkpoint_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let bdir = dir.path().join("b");
    let b = target(&bdir);
    b.checkpoint().unwrap();
    let old = hdb_files(&bdir, "trades", P);
    assert!(!old.is_empty(), "the target holds HDB files of P");

    import(&b, &exp_of(&a)).unwrap();
    let want = snapshot(&b, P);
    // The older kept checkpoint still names the replaced files: recovery may fall back to it.
    assert!(hdb_files(&bdir, "trades", P).is_superset(&old));

    // New rows in the same time buckets get files of their own, never a replaced one's name.
    let more = trade_rows(30_000..30_200, &symbols("trades", P, true, 2));
    b.insert("trades", more).unwrap();
    b.flush().unwrap();
    let with_new = hdb_files(&bdir, "trades", P);
    assert!(with_new.is_superset(&old));
    assert_eq!(want[0].0.len(), 800);
    let want = snapshot(&b, P);
    assert_eq!(want[0].0.len(), 800 + 200);

    // One checkpoint later no kept checkpoint names them: gone, the live files stay.
    b.checkpoint().unwrap();
    let now = hdb_files(&bdir, "trades", P);
    assert!(
        now.is_disjoint(&old),
        "replaced files deleted: {now:?} vs {old:?}"
    );
    assert_eq!(now, with_new.difference(&old).cloned().collect());
    assert_eq!(snapshot(&b, P), want);
    drop(b);
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), want);
}

/// `a`'s export of `P`.
fn exp_of(a: &Db) -> PartitionExport {
    a.export_partition(P).unwrap()
}

#[test]
fn after_an_import_and_a_restart_recovery_can_still_fall_back_to_the_older_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = source(&dir.path().join("a"));
    let bdir = dir.path().join("b");
    let b = target(&bdir);
    b.checkpoint().unwrap();
    let before = snapshot(&b, P);
    let old = hdb_files(&bdir, "trades", P);
    import(&b, &exp_of(&a)).unwrap();
    let imported = snapshot(&b, P);
    drop(b);

    // A restart keeps the files only the older checkpoint names (and numbers new chunks
    // above them).
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), imported);
    assert!(hdb_files(&bdir, "trades", P).is_superset(&old));
    drop(b);

    // The newest checkpoint (the import's) is damaged: recovery falls back to the older one,
    // whose files are all there: the partition as it was before the import.
    let newest = crate::checkpoint::list_checkpoints(&bdir).unwrap()[0]
        .1
        .clone();
    std::fs::write(newest.join("MANIFEST.json"), b"{ not json").unwrap();
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), before);

    // The old files are the partition's live chunks again: later checkpoints keep them.
    b.checkpoint().unwrap();
    b.checkpoint().unwrap();
    drop(b);
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), before);
}

#[test]
fn a_released_partition_is_empty_durably_and_takes_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("b");
    let b = target(&bdir);
    b.checkpoint().unwrap();
    b.set_partition_epoch(P, 5).unwrap();
    let before = snapshot(&b, P);
    assert!(!before[0].0.is_empty() && !before[1].0.is_empty());
    assert!(b.partition_position(P).unwrap().1 > 0);
    let files = hdb_files(&bdir, "trades", P);
    assert!(!files.is_empty());

    let mut imp = b.begin_partition_import(P).unwrap();
    // What was added before the release is not kept either.
    imp.add(
        TRADES,
        trade_rows(50_000..50_010, &symbols("trades", P, true, 1)),
    )
    .unwrap();
    imp.release().unwrap();

    let after = snapshot(&b, P);
    for (t, ((p, o), (_, bo))) in after.iter().zip(&before).enumerate() {
        assert!(p.is_empty(), "table {t}: partition {P} is empty");
        assert_eq!(o, bo, "table {t}: other partitions untouched");
    }
    // The fencing epoch stays; the log is empty.
    assert_eq!(b.partition_position(P).unwrap(), (5, 0));
    assert_eq!(b.partition_log(P).unwrap(), PartitionLog::default());
    assert!(b.wal_records_since(P, 0, 1 << 20).unwrap().is_empty());
    assert!(hdb_files(&bdir, "trades", P).is_superset(&files));

    // Writes to the partition are taken again, from sequence number 0; flushed, they get
    // files of their own (in the same time buckets as the released files, never their names).
    let new = trade_rows(60_000..60_040, &symbols("trades", P, true, 2));
    b.insert("trades", new).unwrap();
    assert_eq!(rows_of(&b, "trades", Some(vec![P])).len(), 40);
    assert_eq!(b.partition_position(P).unwrap().1, 1);
    b.flush().unwrap();
    let fresh: BTreeSet<String> = hdb_files(&bdir, "trades", P)
        .difference(&files)
        .cloned()
        .collect();
    assert!(!fresh.is_empty(), "new files beside the released ones");
    b.checkpoint().unwrap();
    assert_eq!(
        hdb_files(&bdir, "trades", P),
        fresh,
        "the released partition's files are deleted, the new ones kept"
    );
    let want = snapshot(&b, P);
    assert_eq!(want[0].0.len(), 40);
    drop(b);
    // WAL replay brings back only what was written after the release.
    let b = open(&bdir);
    assert_eq!(snapshot(&b, P), want);
    assert_eq!(b.partition_position(P).unwrap(), (5, 1));
}
