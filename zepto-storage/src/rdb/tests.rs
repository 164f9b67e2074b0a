use super::*;
use crate::schema::{ColumnDef, ColumnType};
use arrow::array::{
    AsArray, DictionaryArray, Float64Array, Int32Array, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type, TimestampNanosecondType};

fn table() -> TableData {
    let s = TableSchema::new(
        "t",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("v", ColumnType::Double),
        ],
        None,
        None,
    )
    .unwrap();
    TableData::new(1, Arc::new(s), 4)
}

fn rows(t: &TableData, ts: &[i64]) -> RecordBatch {
    let n = ts.len();
    RecordBatch::try_new(
        t.arrow_schema.clone(),
        vec![
            Arc::new(TimestampNanosecondArray::from(ts.to_vec())),
            Arc::new(
                DictionaryArray::<Int32Type>::try_new(
                    Int32Array::from(vec![0; n]),
                    Arc::new(StringArray::from(vec!["S"])),
                )
                .unwrap(),
            ),
            Arc::new(Float64Array::from(
                ts.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn scan_ts(t: &TableData, p: u32, r: TimeRange) -> Vec<i64> {
    let mut total = 0;
    let mut out = Vec::new();
    let projected = Arc::new(t.arrow_schema.project(&[0, 2]).unwrap());
    for c in t
        .scan_partition(p, &r, &[0, 2], &projected, &mut total)
        .unwrap()
    {
        for b in &c.batches {
            out.extend_from_slice(
                b.column(0)
                    .as_primitive::<TimestampNanosecondType>()
                    .values(),
            );
            // The value column travels with its row.
            let v = b.column(1).as_primitive::<Float64Type>().values();
            let ts = b
                .column(0)
                .as_primitive::<TimestampNanosecondType>()
                .values();
            assert!(ts.iter().zip(v.iter()).all(|(&a, &b)| a as f64 == b));
        }
    }
    out.sort();
    out
}

#[test]
fn rows_land_in_time_buckets_and_scans_respect_ranges() {
    let t = table();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    // Sorted across three buckets of width 10, then out-of-order rows.
    t.append(1, &rows(&t, &[1, 5, 12, 19, 25]), 10, 0, &mut next)
        .unwrap();
    t.append(1, &rows(&t, &[3, 28, 14, 0]), 10, 0, &mut next)
        .unwrap();
    let part = t.partitions[1].read();
    let keys: Vec<_> = part.chunks.iter().map(|c| c.key()).collect();
    assert_eq!(keys, vec![(0, 0), (10, 0), (20, 0)]);
    drop(part);
    assert_eq!(
        scan_ts(&t, 1, TimeRange::ALL),
        vec![0, 1, 3, 5, 12, 14, 19, 25, 28]
    );
    assert_eq!(scan_ts(&t, 1, TimeRange::new(3, 15)), vec![3, 5, 12, 14]);
    assert_eq!(scan_ts(&t, 1, TimeRange::new(19, 26)), vec![19, 25]);
    assert!(scan_ts(&t, 1, TimeRange::new(29, 100)).is_empty());
    assert!(scan_ts(&t, 0, TimeRange::ALL).is_empty());
}

#[test]
fn compaction_merges_small_pieces_and_keeps_rows() {
    let t = table();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    let mut asked = 0;
    for i in 0..40 {
        asked += t.append(2, &rows(&t, &[i]), 1000, 0, &mut next).unwrap() as usize;
    }
    assert_eq!(asked, 4, "asks at 16, 24, 32 and 40 pieces");
    let pieces = match &t.partitions[2].read().chunks[0] {
        Chunk::Mem(m) => m.pieces.clone(),
        Chunk::Disk(_) => unreachable!(),
    };
    // 40 one-row pieces of one size class -> one piece.
    let merged = compact_pieces(&pieces, 0).unwrap().unwrap();
    assert_eq!(
        merged
            .iter()
            .map(|p| p.batch.num_rows())
            .collect::<Vec<_>>(),
        vec![40]
    );
    assert!(merged.iter().all(|p| p.sorted));
    assert!(
        compact_pieces(&merged, 0).unwrap().is_none(),
        "nothing left to merge"
    );
    // A big piece followed by fewer than 8 small ones is left alone.
    let mut mixed = merged.clone();
    mixed.extend(pieces[..7].iter().cloned());
    assert!(compact_pieces(&mixed, 0).unwrap().is_none());
    let ts: Vec<i64> = merged
        .iter()
        .flat_map(|p| timestamps(&p.batch, 0).to_vec())
        .collect();
    assert_eq!(ts, (0..40).collect::<Vec<_>>(), "rows kept");
}

#[test]
fn compaction_sorts_out_of_order_pieces() {
    let t = table();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    for i in (0..16).rev() {
        t.append(0, &rows(&t, &[i, i + 100]), 1000, 0, &mut next)
            .unwrap();
    }
    let pieces = match &t.partitions[0].read().chunks[0] {
        Chunk::Mem(m) => {
            assert!(!m.sorted);
            m.pieces.clone()
        }
        Chunk::Disk(_) => unreachable!(),
    };
    let merged = compact_pieces(&pieces, 0).unwrap().unwrap();
    assert_eq!(merged.len(), 1);
    assert!(merged[0].sorted);
    let mut want: Vec<i64> = (0..16).chain(100..116).collect();
    want.sort();
    assert_eq!(timestamps(&merged[0].batch, 0), want.as_slice());
}

/// Pieces with the given timestamps and values (one piece per slice), as appended.
fn pieces_of(t: &TableData, parts: &[(&[i64], &[f64])]) -> Vec<Piece> {
    parts
        .iter()
        .map(|(ts, v)| {
            let b = rows(t, ts);
            let b = RecordBatch::try_new(
                b.schema(),
                vec![
                    b.column(0).clone(),
                    b.column(1).clone(),
                    Arc::new(Float64Array::from(v.to_vec())),
                ],
            )
            .unwrap();
            Piece::new(b, 0).unwrap()
        })
        .collect()
}

fn ts_and_values(p: &Piece) -> Vec<(i64, f64)> {
    let ts = timestamps(&p.batch, 0);
    let v = p.batch.column(2).as_primitive::<Float64Type>().values();
    ts.iter().copied().zip(v.iter().copied()).collect()
}

/// What a stable sort of the concatenation (in arrival order) by timestamp gives.
fn stable_sorted(pieces: &[Piece]) -> Vec<(i64, f64)> {
    let mut all: Vec<(i64, f64)> = pieces.iter().flat_map(ts_and_values).collect();
    all.sort_by_key(|r| r.0);
    all
}

#[test]
fn a_run_of_sorted_disjoint_pieces_out_of_order_is_merged_in_time_order() {
    let t = table();
    // Batches of two writers arriving interleaved: each in order, not with each other.
    let pieces = pieces_of(
        &t,
        &[
            (&[10, 11], &[1.0, 2.0]),
            (&[0, 5], &[3.0, 4.0]),
            (&[20, 29], &[5.0, 6.0]),
            (&[12, 19], &[7.0, 8.0]),
        ],
    );
    let merged = merge_run(&pieces, 0).unwrap().unwrap();
    assert!(merged.sorted);
    assert_eq!((merged.min, merged.max), (0, 29));
    assert_eq!(ts_and_values(&merged), stable_sorted(&pieces));
}

#[test]
fn equal_timestamps_across_pieces_keep_their_arrival_order() {
    let t = table();
    // Touching at 5 in arrival order: concatenated as they are.
    let in_order = pieces_of(&t, &[(&[0, 5], &[1.0, 2.0]), (&[5, 9], &[3.0, 4.0])]);
    let m = merge_run(&in_order, 0).unwrap().unwrap();
    assert_eq!(ts_and_values(&m), stable_sorted(&in_order));
    assert_eq!(ts_and_values(&m)[1..3], [(5, 2.0), (5, 3.0)]);
    // Touching at 5, the later piece first: reordering whole pieces would put the second
    // piece's 5 first; the rows must come out as a stable sort leaves them.
    let swapped = pieces_of(&t, &[(&[5, 9], &[1.0, 2.0]), (&[0, 5], &[3.0, 4.0])]);
    let m = merge_run(&swapped, 0).unwrap().unwrap();
    assert!(m.sorted);
    assert_eq!(ts_and_values(&m), stable_sorted(&swapped));
    assert_eq!(ts_and_values(&m)[1..3], [(5, 1.0), (5, 4.0)]);
    // Overlapping pieces are sorted row by row, stably.
    let overlapping = pieces_of(
        &t,
        &[(&[3, 8], &[1.0, 2.0]), (&[1, 3, 9], &[3.0, 4.0, 5.0])],
    );
    let m = merge_run(&overlapping, 0).unwrap().unwrap();
    assert_eq!(ts_and_values(&m), stable_sorted(&overlapping));
}

#[test]
fn replacing_runs_keeps_pieces_between_and_after_them() {
    let t = table();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    // 8 one-row pieces, one 100-row piece, 8 one-row pieces: two runs around the big one.
    for i in 0..8 {
        t.append(0, &rows(&t, &[i]), 1_000_000, 0, &mut next)
            .unwrap();
    }
    let big: Vec<i64> = (100..200).collect();
    t.append(0, &rows(&t, &big), 1_000_000, 0, &mut next)
        .unwrap();
    for i in 200..208 {
        t.append(0, &rows(&t, &[i]), 1_000_000, 0, &mut next)
            .unwrap();
    }
    let mut part = t.partitions[0].write();
    let Chunk::Mem(m) = &mut part.chunks[0] else {
        unreachable!()
    };
    let runs = plan_compaction(&m.pieces, false);
    assert_eq!(runs, vec![0..8, 9..17]);
    let n = m.pieces.len();
    let merged: Vec<_> = runs
        .iter()
        .map(|r| (r.clone(), merge_run(&m.pieces[r.clone()], 0).unwrap()))
        .collect();
    // A piece appended after the plan stays, after the merged ones.
    m.push(Piece::new(rows(&t, &[300]), 0).unwrap(), 0);
    m.replace_runs(n, merged);
    let sizes: Vec<usize> = m.pieces.iter().map(|p| p.batch.num_rows()).collect();
    assert_eq!(sizes, vec![8, 100, 8, 1]);
    assert!(m.sorted);
    let all: Vec<i64> = m
        .pieces
        .iter()
        .flat_map(|p| timestamps(&p.batch, 0).to_vec())
        .collect();
    let want: Vec<i64> = (0..8)
        .chain(100..200)
        .chain(200..208)
        .chain([300])
        .collect();
    assert_eq!(all, want);
}

#[test]
fn a_quiet_chunk_merges_its_few_small_pieces_and_leaves_big_ones() {
    let t = table();
    // A bulk load's shape: a few small pieces, fewer than the level rule merges, around a
    // big one.
    let big: Vec<i64> = (100..100 + QUIET_SMALL_ROWS as i64).collect();
    let mut parts: Vec<Vec<i64>> = vec![vec![0, 1], vec![2], vec![3, 4, 5]];
    parts.push(big.clone());
    parts.push(vec![50_000]);
    parts.push(vec![50_001, 50_002]);
    let pieces: Vec<Piece> = parts
        .iter()
        .map(|ts| Piece::new(rows(&t, ts), 0).unwrap())
        .collect();
    assert!(
        plan_compaction(&pieces, false).is_empty(),
        "too few for the level rule"
    );
    assert_eq!(plan_compaction(&pieces, true), vec![0..3, 4..6]);
    let merged = compact_quiet(&pieces);
    let sizes: Vec<usize> = merged.iter().map(|p| p.batch.num_rows()).collect();
    assert_eq!(sizes, vec![6, QUIET_SMALL_ROWS, 3]);
    // Once merged, nothing more to do: no run is planned again (no endless re-copying).
    assert!(plan_compaction(&merged, true).is_empty());
    let all: Vec<i64> = merged
        .iter()
        .flat_map(|p| timestamps(&p.batch, 0).to_vec())
        .collect();
    let want: Vec<i64> = parts.concat();
    assert_eq!(all, want);
}

fn compact_quiet(pieces: &[Piece]) -> Vec<Piece> {
    let runs = plan_compaction(pieces, true);
    let merged: Vec<_> = runs
        .iter()
        .map(|r| (r.clone(), merge_run(&pieces[r.clone()], 0).unwrap()))
        .collect();
    let mut m = MemChunk::new(1, 0, 0, 0);
    m.pieces = pieces.to_vec();
    m.replace_runs(pieces.len(), merged);
    m.pieces
}
