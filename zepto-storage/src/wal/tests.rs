use super::*;

fn writer(dir: &Path, id: u64, seg: u64) -> WalWriter {
    WalWriter::create(
        dir,
        id,
        seg,
        Arc::new(Faults::default()),
        Arc::new(WalStats::default()),
        Arc::new(Mutex::new(Vec::new())),
    )
    .unwrap()
}

fn payload(i: u64) -> Vec<u8> {
    format!("record number {i} {}", "x".repeat((i % 7) as usize)).into_bytes()
}

fn meta(i: u64) -> RecordMeta {
    RecordMeta {
        partition: (i % 5) as u32,
        epoch: 3,
        seq: i,
        continues: false,
    }
}

/// Write `n` records in groups of 3; returns (end position, start offset of each record).
fn write_n(w: &mut WalWriter, n: u64) -> Vec<WalPosition> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i < n {
        let group: Vec<(RecordMeta, Vec<u8>)> =
            (i..(i + 3).min(n)).map(|j| (meta(j), payload(j))).collect();
        let refs: Vec<(RecordMeta, &[u8])> =
            group.iter().map(|(m, p)| (*m, p.as_slice())).collect();
        let before = w.position();
        w.append_unsynced(&refs).unwrap();
        // Record starts: if the group rolled, they begin at the header of the new segment.
        let mut off = if w.position().segment != before.segment {
            SEGMENT_HEADER_LEN
        } else {
            before.offset
        };
        for (_, p) in &group {
            starts.push(WalPosition {
                segment: w.position().segment,
                offset: off,
            });
            off += (RECORD_HEADER_LEN + p.len()) as u64;
        }
        w.sync().unwrap();
        i += 3;
    }
    starts
}

fn read_all(dir: &Path, from: WalPosition) -> (Vec<u64>, ReplayOutcome) {
    let mut seqs = Vec::new();
    let out = replay(dir, from, |m, p, _| {
        assert_eq!(p, payload(m.seq).as_slice());
        assert_eq!(m, meta(m.seq));
        seqs.push(m.seq);
        Ok(())
    })
    .unwrap();
    (seqs, out)
}

#[test]
fn records_round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 2048);
    write_n(&mut w, 200);
    assert!(w.position().segment >= 3, "expected several segments");
    let (seqs, out) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    assert!(out.damage.is_none(), "{:?}", out.damage);
    assert_eq!(out.end, w.position());
}

#[test]
fn replay_from_a_position_skips_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 4096);
    let starts = write_n(&mut w, 100);
    let (seqs, _) = read_all(dir.path(), starts[57]);
    assert_eq!(seqs, (57..100).collect::<Vec<_>>());
}

#[test]
fn truncated_tail_at_every_byte_of_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 1 << 20);
    let starts = write_n(&mut w, 10);
    let end = w.position();
    drop(w);
    let path = segment_path(dir.path(), 1);
    let original = fs::read(&path).unwrap();
    let last = starts[9];
    for cut in last.offset..end.offset {
        fs::write(&path, &original[..cut as usize]).unwrap();
        let (seqs, out) = read_all(dir.path(), WalPosition::default());
        assert_eq!(seqs, (0..9).collect::<Vec<_>>(), "cut at {cut}");
        assert_eq!(out.end.offset, last.offset, "cut at {cut}");
        if cut > last.offset {
            let d = out.damage.as_ref().expect("torn tail reported");
            assert!(d.torn_tail);
            assert_eq!(d.offset, last.offset);
        }
    }
}

#[test]
fn zero_filled_preallocated_tail_is_a_clean_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 1 << 20);
    write_n(&mut w, 10);
    drop(w);
    let len = fs::metadata(segment_path(dir.path(), 1)).unwrap().len();
    assert_eq!(len, 1 << 20, "segment is preallocated");
    let (seqs, out) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs.len(), 10);
    assert!(out.damage.is_none());
}

#[test]
fn flipped_bit_mid_segment_keeps_the_prefix_reports_and_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 1 << 20);
    let starts = write_n(&mut w, 30);
    drop(w);
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    let victim = starts[12].offset as usize + RECORD_HEADER_LEN + 2;
    bytes[victim] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let (seqs, out) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs, (0..12).collect::<Vec<_>>());
    let d = out.damage.clone().unwrap();
    assert_eq!(d.offset, starts[12].offset);
    assert!(d.reason.contains("checksum"), "{}", d.reason);
    let next = repair(dir.path(), &out).unwrap();
    assert_eq!(next, 2);
    // After repair the log is well formed: the same prefix, no damage.
    let (seqs2, out2) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs2, seqs);
    assert!(out2.damage.is_none());
    assert!(out2.end_closed);
}

#[test]
fn damage_in_an_older_segment_moves_later_segments_aside() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 2048);
    let starts = write_n(&mut w, 120);
    drop(w);
    let in_seg2: Vec<_> = starts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.segment == 2)
        .collect();
    let (first_idx, pos) = in_seg2[2];
    let path = segment_path(dir.path(), 2);
    let mut bytes = fs::read(&path).unwrap();
    bytes[pos.offset as usize + 5] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let (seqs, out) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs, (0..first_idx as u64).collect::<Vec<_>>());
    assert!(!out.discarded_segments.is_empty());
    let next = repair(dir.path(), &out).unwrap();
    assert!(next > 2);
    assert!(path.with_extension("wal.damaged").exists());
    let (seqs2, out2) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs2, seqs);
    assert!(out2.damage.is_none(), "{:?}", out2.damage);
}

#[test]
fn recycled_segment_stale_records_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let recycle = Arc::new(Mutex::new(Vec::new()));
    let stats = Arc::new(WalStats::default());
    let mut w = WalWriter::create(
        dir.path(),
        1,
        1 << 16,
        Arc::new(Faults::default()),
        stats.clone(),
        recycle.clone(),
    )
    .unwrap();
    write_n(&mut w, 50);
    w.roll().unwrap();
    // Segment 1 is obsolete: recycle it; segment 3 reuses the file with its old records.
    let obsolete = obsolete_segments(dir.path(), w.position()).unwrap();
    assert_eq!(obsolete.len(), 1);
    recycle.lock().push(obsolete[0].1.clone());
    let p = payload(1000);
    w.append_unsynced(&[(meta(1000), &p)]).unwrap();
    w.roll().unwrap();
    assert_eq!(stats.segments_recycled.load(Ordering::Relaxed), 1);
    let q = payload(1001);
    w.append_unsynced(&[(meta(1001), &q)]).unwrap();
    w.sync().unwrap();
    drop(w);
    let (seqs, out) = read_all(
        dir.path(),
        WalPosition {
            segment: 2,
            offset: 0,
        },
    );
    assert_eq!(seqs, vec![1000, 1001]);
    // The old life's bytes after the last record read as a tail, never as records.
    assert!(out.damage.is_none_or(|d| d.torn_tail && d.segment == 3));
}

#[test]
fn enospc_on_write_fails_the_group_and_keeps_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let mut w = WalWriter::create(
        dir.path(),
        1,
        1 << 20,
        faults.clone(),
        Arc::new(WalStats::default()),
        Arc::new(Mutex::new(Vec::new())),
    )
    .unwrap();
    write_n(&mut w, 3);
    let before = w.position();
    faults.set("wal::write", "enospc").unwrap();
    let p = payload(3);
    let e = w.append_unsynced(&[(meta(3), &p)]).unwrap_err();
    assert!(e.to_string().contains("No space left"), "{e}");
    assert_eq!(w.position(), before);
    faults.clear("wal::write");
    w.append_unsynced(&[(meta(3), &p)]).unwrap();
    w.sync().unwrap();
    let (seqs, _) = read_all(dir.path(), WalPosition::default());
    assert_eq!(seqs, vec![0, 1, 2, 3]);
}

#[test]
fn bad_or_newer_segment_header_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 4096);
    write_n(&mut w, 40);
    drop(w);
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[4] = 9; // format version 9, checksum now wrong too
    fs::write(&path, &bytes).unwrap();
    let (seqs, out) = read_all(dir.path(), WalPosition::default());
    assert!(seqs.is_empty());
    assert!(!out.damage.unwrap().torn_tail);
}

#[test]
fn intact_segment_of_a_newer_format_is_refused_not_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 4096);
    write_n(&mut w, 5);
    drop(w);
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let e = replay(dir.path(), WalPosition::default(), |_, _, _| Ok(())).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(path.exists(), "the file is left alone");
}

#[test]
fn a_write_of_several_records_is_replayed_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(dir.path(), 1, 1 << 20);
    write_n(&mut w, 4);
    // One write of three records (partitions 7, 8, 9).
    let parts: Vec<(RecordMeta, Vec<u8>)> = (0..3)
        .map(|k| {
            let mut m = meta(100 + k);
            m.partition = 7 + k as u32;
            m.continues = k < 2;
            (m, payload(100 + k))
        })
        .collect();
    let refs: Vec<(RecordMeta, &[u8])> = parts.iter().map(|(m, p)| (*m, p.as_slice())).collect();
    let before = w.position();
    w.append_unsynced(&refs).unwrap();
    w.sync().unwrap();
    let after = w.position();
    drop(w);
    let path = segment_path(dir.path(), 1);
    let original = fs::read(&path).unwrap();
    let collect = |dir: &Path| {
        let mut got = Vec::new();
        let out = replay(dir, WalPosition::default(), |m, p, _| {
            assert_eq!(p, payload(m.seq).as_slice());
            got.push((m.seq, m.partition, m.continues));
            Ok(())
        })
        .unwrap();
        (got, out)
    };
    // Whole: all three come back, in order, flags intact.
    let (got, _) = collect(dir.path());
    assert_eq!(
        &got[4..],
        &[(100, 7, true), (101, 8, true), (102, 9, false)]
    );
    // Cut anywhere inside the write: none of it comes back.
    for cut in (before.offset + 1..after.offset).step_by(7) {
        fs::write(&path, &original[..cut as usize]).unwrap();
        let (got, out) = collect(dir.path());
        assert_eq!(got.len(), 4, "cut at {cut}: {got:?}");
        assert_eq!(out.end.offset, before.offset, "cut at {cut}");
    }
    // Repair cuts the partial write off for good.
    let (_, out) = collect(dir.path());
    assert_eq!(out.incomplete_writes, 1);
    repair(dir.path(), &out).unwrap();
    let (got, out) = collect(dir.path());
    assert_eq!(got.len(), 4);
    assert!(out.damage.is_none() && out.end_closed && out.incomplete_writes == 0);
}

#[test]
fn a_segment_that_cannot_be_created_is_retried_at_the_next_roll() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let mut w = WalWriter::create(
        dir.path(),
        1,
        4096,
        faults.clone(),
        Arc::new(WalStats::default()),
        Arc::new(Mutex::new(Vec::new())),
    )
    .unwrap();
    faults.set("wal::preallocate", "enospc").unwrap();
    let big = vec![7u8; 3000];
    w.append_unsynced(&[(meta(0), &big)]).unwrap();
    w.sync().unwrap();
    // The next record needs a new segment, which cannot be made: the group fails.
    assert!(w.append_unsynced(&[(meta(1), &big)]).is_err());
    faults.clear("wal::preallocate");
    w.append_unsynced(&[(meta(1), &big)]).unwrap();
    w.sync().unwrap();
    assert_eq!(w.position().segment, 2);
    let mut seqs = Vec::new();
    let out = replay(dir.path(), WalPosition::default(), |m, _, _| {
        seqs.push(m.seq);
        Ok(())
    })
    .unwrap();
    assert_eq!(seqs, vec![0, 1]);
    assert!(out.damage.is_none(), "{:?}", out.damage);
}
