//! The WAL writer thread: the single consumer of the ingest ring.
//!
//! Hot path. One loop iteration is one group commit: take every request waiting (up to
//! `max_group_bytes`), assign per-partition sequence numbers (or check the ones a primary
//! fixed, for replicated records), write all records with one write, fdatasync once, then
//! apply the rows to RDB, tell the commit listener, and acknowledge. Nothing is
//! acknowledged before its fdatasync returned. A failed write fails the whole group and
//! leaves the log position where it was; a failed fdatasync poisons the WAL (the page
//! cache state is unknown), after which every write is refused until restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::checkpoint::{Capture, CapturedTable, ImportSwap, PartitionCut, Swapped};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::ingest::{CommittedRecord, Request, WriteReceipt, WriteRequest};
use crate::wal::{RecordMeta, WalWriter};

/// Per partition: the next sequence number, and the epoch of the newest record.
#[derive(Debug, Clone)]
pub(super) struct Sequences {
    pub(super) next: Vec<u64>,
    pub(super) last_epoch: Vec<u64>,
    /// Per partition: the sequence number of the first record of `last_epoch`'s run (where
    /// the newest epoch's records start).
    pub(super) epoch_start: Vec<u64>,
}

pub(super) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    mut wal: WalWriter,
    mut next_seq: Sequences,
) {
    let mut writes: Vec<WriteRequest> = Vec::new();
    // Control requests (cuts, barriers, imports), answered in arrival order after the group.
    let mut controls: Vec<Request> = Vec::new();
    *shared.wal_position.lock() = wal.position();
    loop {
        let Ok(first) = rx.recv() else { break };
        let mut stop = false;
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Write(w) => {
                    bytes += w.queued_bytes();
                    writes.push(w);
                }
                Request::Shutdown => stop = true,
                other => controls.push(other),
            }
            if !stop && bytes < shared.config.max_group_bytes {
                next = rx.try_recv().ok();
            }
        }
        shared
            .writer_busy_since
            .store(shared.now_ms().max(1), Ordering::Release);
        commit_group(&shared, &mut wal, &mut next_seq, &mut writes);
        for req in controls.drain(..) {
            match req {
                Request::Capture(tx) => {
                    let _ = tx.send(capture(&shared, &wal, &next_seq));
                }
                Request::Barrier(tx) => {
                    let _ = tx.send(());
                }
                Request::ExportCut { partition, reply } => {
                    let _ = reply.send(partition_cut(&shared, &next_seq, partition));
                }
                Request::Import(swap) => import_swap(&shared, &wal, &mut next_seq, swap),
                Request::Write(_) | Request::Shutdown => {}
            }
        }
        shared.writer_busy_since.store(0, Ordering::Release);
        if stop {
            break;
        }
    }
    // Requests queued behind Shutdown are dropped here, so their tickets and reply channels
    // answer Shutdown (a crossbeam channel would keep them, unanswered, while any sender
    // lives); one sent after this finds the channel disconnected once `rx` is dropped.
    while let Ok(req) = rx.try_recv() {
        drop(req);
    }
    if let Err(e) = wal.sync() {
        tracing::warn!(error = %e, "final WAL sync failed");
    }
}

/// Where each piece of a request goes in the log: `None` = a replicated record this node
/// already has (skipped, idempotent).
type Placement = Vec<Option<RecordMeta>>;

/// Give each piece its epoch and sequence number, or refuse the request (stale epoch,
/// sequence gap, divergent tail). Advances `seqs` only on success.
fn place(shared: &Shared, w: &WriteRequest, state: &mut Sequences) -> Result<Placement> {
    let next_seq: &[u64] = &state.next;
    let mut out = Vec::with_capacity(w.pieces.len());
    let mut seqs: Vec<(u32, u64)> = Vec::new(); // (partition, next) as this request sees them
    let next_of = |seqs: &[(u32, u64)], p: u32, next_seq: &[u64]| {
        seqs.iter()
            .rev()
            .find(|(q, _)| *q == p)
            .map(|(_, s)| *s)
            .unwrap_or(next_seq[p as usize])
    };
    for piece in &w.pieces {
        let p = piece.partition;
        if shared.importing[p as usize].load(Ordering::Acquire) != super::IMPORT_IDLE {
            return Err(Error::PartitionImporting { partition: p });
        }
        let current = shared.epochs[p as usize].load(Ordering::Acquire);
        let expected = next_of(&seqs, p, next_seq);
        match piece.replicated {
            None => {
                out.push(Some(RecordMeta {
                    partition: p,
                    epoch: current,
                    seq: expected,
                    continues: false,
                }));
                seqs.push((p, expected + 1));
            }
            Some((epoch, seq, sender_epoch, prev_epoch)) => {
                if sender_epoch < current {
                    return Err(Error::Fenced {
                        partition: p,
                        epoch: sender_epoch,
                        current,
                    });
                }
                let local_epoch = state.last_epoch[p as usize];
                if seq >= expected && epoch < local_epoch {
                    // The sender's log has an older epoch where ours already moved on: our
                    // tail is not a prefix of its log.
                    return Err(Error::Diverged {
                        partition: p,
                        seq,
                        epoch,
                        local_epoch,
                    });
                }
                if seq < expected && epoch > local_epoch {
                    // We hold records at this seq written under an older epoch: a tail
                    // that never reached the replica that has since become primary.
                    return Err(Error::Diverged {
                        partition: p,
                        seq,
                        epoch,
                        local_epoch,
                    });
                }
                if let (Some(prev), true) = (prev_epoch, seq == expected && seq > 0) {
                    // Our record `seq - 1` (the last one of this request for the partition,
                    // else our log's last) must be the sender's: same epoch.
                    let ours = out
                        .iter()
                        .rev()
                        .flatten()
                        .find(|m| m.partition == p)
                        .map_or(local_epoch, |m| m.epoch);
                    if ours != prev {
                        return Err(Error::Diverged {
                            partition: p,
                            seq: seq - 1,
                            epoch: prev,
                            local_epoch: ours,
                        });
                    }
                }
                if seq < expected {
                    out.push(None); // already durable here
                } else if seq > expected {
                    return Err(Error::SeqGap {
                        partition: p,
                        expected,
                        got: seq,
                    });
                } else {
                    out.push(Some(RecordMeta {
                        partition: p,
                        epoch,
                        seq,
                        continues: false,
                    }));
                    seqs.push((p, seq + 1));
                }
            }
        }
    }
    // A write is atomic: all its records but the last say "more follow".
    let last = out.iter().rposition(Option::is_some);
    for (i, m) in out.iter_mut().enumerate() {
        if let Some(m) = m {
            m.continues = Some(i) != last;
        }
    }
    for (p, s) in seqs {
        state.next[p as usize] = s;
    }
    for m in out.iter().flatten() {
        let p = m.partition as usize;
        if state.last_epoch[p] != m.epoch {
            state.epoch_start[p] = m.seq;
        }
        state.last_epoch[p] = m.epoch;
    }
    Ok(out)
}

fn commit_group(
    shared: &Shared,
    wal: &mut WalWriter,
    next_seq: &mut Sequences,
    writes: &mut Vec<WriteRequest>,
) {
    if writes.is_empty() {
        return;
    }
    let bytes: usize = writes.iter().map(|w| w.queued_bytes()).sum();
    shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    if let Some(p) = shared.poisoned.lock().clone() {
        fail_all(shared, writes, || Error::WalPoisoned(p.clone()));
        return;
    }
    let seq_before = next_seq.clone();
    // Place every request; refuse the ones that cannot go in.
    let mut placed: Vec<(WriteRequest, Placement)> = Vec::with_capacity(writes.len());
    for w in writes.drain(..) {
        match place(shared, &w, next_seq) {
            Ok(pl) => placed.push((w, pl)),
            Err(e) => {
                shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                let _ = w.done.send(Err(e));
            }
        }
    }
    let mut records: Vec<(RecordMeta, &[u8])> = Vec::new();
    for (w, pl) in &placed {
        for (piece, meta) in w.pieces.iter().zip(pl) {
            if let Some(meta) = meta {
                records.push((*meta, &w.payload[piece.range.clone()]));
            }
        }
    }
    let result = if records.is_empty() {
        Ok(())
    } else {
        wal.append_unsynced(&records).and_then(|()| {
            wal.sync().map_err(|e| {
                let msg = format!("{e}; restart zeptod to recover from the WAL");
                tracing::error!(error = %e, "WAL fdatasync failed: refusing all writes until restart");
                *shared.poisoned.lock() = Some(msg.clone());
                Error::WalPoisoned(msg)
            })
        })
    };
    drop(records);
    if let Err(e) = result {
        *next_seq = seq_before;
        tracing::warn!(error = %e, requests = placed.len(), "WAL write failed; the group is not acknowledged");
        let mut reqs: Vec<WriteRequest> = placed.into_iter().map(|(w, _)| w).collect();
        match e {
            Error::WalPoisoned(msg) => {
                fail_all(shared, &mut reqs, || Error::WalPoisoned(msg.clone()))
            }
            other => {
                let msg = other.to_string();
                fail_all(shared, &mut reqs, || {
                    Error::io("write the WAL", std::io::Error::other(msg.clone()))
                })
            }
        }
        return;
    }
    *shared.wal_position.lock() = wal.position();
    for (p, s) in next_seq.next.iter().enumerate() {
        shared.next_seq[p].store(*s, Ordering::Release);
        shared.last_epochs[p].store(next_seq.last_epoch[p], Ordering::Release);
        shared.epoch_starts[p].store(next_seq.epoch_start[p], Ordering::Release);
    }
    let now = shared.now_ms();
    let mut wants_compaction = false;
    let listener = shared.commit_listener.read().clone();
    let mut committed: Vec<CommittedRecord> = Vec::new();
    let mut answers = Vec::with_capacity(placed.len());
    for (w, pl) in placed {
        let mut applied: Result<()> = Ok(());
        let mut receipt = WriteReceipt {
            rows: 0,
            records: Vec::with_capacity(pl.len()),
        };
        for (piece, meta) in w.pieces.iter().zip(&pl) {
            let Some(meta) = meta else { continue };
            let mut next_id = || shared.next_chunk_id.fetch_add(1, Ordering::Relaxed);
            match piece.table.append(
                piece.partition,
                &piece.batch,
                shared.config.chunk_duration_ns,
                now,
                &mut next_id,
            ) {
                Ok(c) => wants_compaction |= c,
                Err(e) => applied = Err(e),
            }
            shared.epochs[meta.partition as usize].fetch_max(meta.epoch, Ordering::AcqRel);
            receipt.rows += piece.batch.num_rows() as u64;
            receipt.records.push((meta.partition, meta.seq));
            if listener.is_some() {
                committed.push(CommittedRecord {
                    partition: meta.partition,
                    epoch: meta.epoch,
                    seq: meta.seq,
                    payload: w.payload.slice(piece.range.clone()),
                    replicated: piece.replicated.is_some(),
                });
            }
        }
        let c = &shared.counters;
        c.write_requests.fetch_add(1, Ordering::Relaxed);
        let answer = match applied {
            Ok(()) => {
                c.rows_written.fetch_add(receipt.rows, Ordering::Relaxed);
                c.bytes_written
                    .fetch_add(w.payload.len() as u64, Ordering::Relaxed);
                Ok(receipt)
            }
            Err(e) => {
                // Durable in the WAL but not applied: a bug. Say so rather than ack.
                tracing::error!(error = %e, "durable write could not be applied to memory");
                c.write_errors.fetch_add(1, Ordering::Relaxed);
                Err(Error::Internal(format!(
                    "write is durable but could not be applied: {e}"
                )))
            }
        };
        answers.push((w.done, answer));
    }
    // The listener hears of every record before any of its writes is acknowledged.
    if let Some(l) = listener {
        if !committed.is_empty() {
            (l.0)(&committed);
        }
    }
    for (done, answer) in answers {
        let _ = done.send(answer);
    }
    if wants_compaction {
        shared.wake_maintenance();
    }
}

fn fail_all(shared: &Shared, writes: &mut Vec<WriteRequest>, err: impl Fn() -> Error) {
    for w in writes.drain(..) {
        shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        let _ = w.done.send(Err(err()));
    }
}

/// The consistent cut: every write acknowledged so far is in the chunks, nothing after.
fn capture(shared: &Shared, wal: &WalWriter, seqs: &Sequences) -> Capture {
    let tables = shared
        .tables
        .read()
        .values()
        .map(|t| CapturedTable {
            id: t.id,
            schema: t.schema.clone(),
            chunks: t
                .partitions
                .iter()
                .enumerate()
                .flat_map(|(p, part)| {
                    part.read()
                        .chunks
                        .iter()
                        .map(|c| (p as u32, c.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
        })
        .collect();
    Capture {
        position: wal.position(),
        next_seq: seqs.next.clone(),
        last_record_epochs: seqs.last_epoch.clone(),
        last_epoch_starts: seqs.epoch_start.clone(),
        epochs: shared
            .epochs
            .iter()
            .map(|e| e.load(Ordering::Acquire))
            .collect(),
        wal_floors: shared.wal_floors.lock().clone(),
        tables,
    }
}

/// One partition's chunks at this cut: exactly the rows of the records with
/// `seq < next_seq` (the writer applies every committed record before it cuts).
fn partition_cut(shared: &Shared, seqs: &Sequences, partition: u32) -> PartitionCut {
    let p = partition as usize;
    let mut tables: Vec<_> = shared
        .tables
        .read()
        .values()
        .map(|t| {
            let chunks = t
                .partitions
                .get(p)
                .map(|part| part.read().chunks.clone())
                .unwrap_or_default();
            (t.id, t.schema.clone(), chunks)
        })
        .collect();
    tables.sort_by_key(|t| t.0);
    PartitionCut {
        epoch: shared
            .epochs
            .get(p)
            .map(|e| e.load(Ordering::Acquire))
            .unwrap_or(0),
        next_seq: seqs.next.get(p).copied().unwrap_or(0),
        last_epoch: seqs.last_epoch.get(p).copied().unwrap_or(0),
        last_epoch_start: seqs.epoch_start.get(p).copied().unwrap_or(0),
        tables,
    }
}

/// Replace a partition by imported chunks between two group commits, so no write is half
/// on either side. The importer has made writes to the partition refused since it began,
/// so nothing of it is in flight. Replies with the cut right after the swap.
fn import_swap(shared: &Shared, wal: &WalWriter, seqs: &mut Sequences, swap: ImportSwap) {
    let p = swap.partition as usize;
    let Some(current) = shared.epochs.get(p).map(|e| e.load(Ordering::Acquire)) else {
        let _ = swap.reply.send(Err(Error::InvalidInput(format!(
            "partition {} out of range",
            swap.partition
        ))));
        return;
    };
    if swap.epoch < current {
        let _ = swap.reply.send(Err(Error::Fenced {
            partition: swap.partition,
            epoch: swap.epoch,
            current,
        }));
        return;
    }
    let mut given: std::collections::HashMap<u32, Vec<crate::rdb::Chunk>> =
        swap.tables.into_iter().collect();
    let mut replaced = Vec::new();
    for t in shared.tables.read().values() {
        if let Some(part) = t.partitions.get(p) {
            let mut part = part.write();
            for c in part.take_all() {
                if let crate::rdb::Chunk::Disk(d) = c {
                    replaced.push(d.rel_path.clone());
                }
            }
            for c in given.remove(&t.id).unwrap_or_default() {
                part.insert(c);
            }
        }
    }
    seqs.next[p] = swap.next_seq;
    // The copy's log ends where the source's did: same newest epoch, same run start (what
    // the source compares this node's log end with when it ships the next records).
    seqs.last_epoch[p] = swap.last_epoch;
    seqs.epoch_start[p] = swap.last_epoch_start;
    shared.epochs[p].fetch_max(swap.epoch, Ordering::AcqRel);
    shared.next_seq[p].store(swap.next_seq, Ordering::Release);
    shared.last_epochs[p].store(swap.last_epoch, Ordering::Release);
    shared.epoch_starts[p].store(swap.last_epoch_start, Ordering::Release);
    shared
        .wal_floors
        .lock()
        .insert(swap.partition, wal.position());
    let _ = swap.reply.send(Ok(Swapped {
        capture: capture(shared, wal, seqs),
        replaced,
    }));
}
