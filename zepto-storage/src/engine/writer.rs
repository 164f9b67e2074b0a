//! The WAL writer thread: the single consumer of the ingest ring.
//!
//! Hot path. One loop iteration is one group commit: take every request waiting (up to
//! `max_group_bytes`), assign per-partition sequence numbers, write all records with one
//! write, fdatasync once, then apply the rows to RDB and acknowledge. Nothing is
//! acknowledged before its fdatasync returned. A failed write fails the whole group and
//! leaves the log position where it was; a failed fdatasync poisons the WAL (the page
//! cache state is unknown), after which every write is refused until restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::checkpoint::{Capture, CapturedTable};
use crate::engine::Shared;
use crate::error::{Error, Result};
use crate::ingest::{Request, WriteReceipt, WriteRequest};
use crate::wal::{RecordMeta, WalWriter};

pub(super) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Request>,
    mut wal: WalWriter,
    mut next_seq: Vec<u64>,
) {
    let mut writes: Vec<WriteRequest> = Vec::new();
    let mut captures = Vec::new();
    *shared.wal_position.lock() = wal.position();
    'outer: loop {
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
                Request::Capture(tx) => captures.push(tx),
                Request::Shutdown => stop = true,
            }
            if !stop && bytes < shared.config.max_group_bytes {
                next = rx.try_recv().ok();
            }
        }
        shared
            .writer_busy_since
            .store(shared.now_ms().max(1), Ordering::Release);
        commit_group(&shared, &mut wal, &mut next_seq, &mut writes);
        for tx in captures.drain(..) {
            let _ = tx.send(capture(&shared, &wal, &next_seq));
        }
        shared.writer_busy_since.store(0, Ordering::Release);
        if stop {
            break 'outer;
        }
    }
    // Requests still queued are dropped with the receiver: their tickets answer Shutdown.
    if let Err(e) = wal.sync() {
        tracing::warn!(error = %e, "final WAL sync failed");
    }
}

fn commit_group(
    shared: &Shared,
    wal: &mut WalWriter,
    next_seq: &mut [u64],
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
    // Sequence numbers, remembered so a failed group can give them back.
    let seq_before: Vec<(u32, u64)> = writes
        .iter()
        .flat_map(|w| w.pieces.iter().map(|(p, _)| *p))
        .map(|p| (p, next_seq[p as usize]))
        .collect();
    let mut records: Vec<(RecordMeta, &[u8])> = Vec::with_capacity(seq_before.len());
    for w in writes.iter() {
        let last = w.pieces.len().saturating_sub(1);
        for (i, ((p, _), range)) in w.pieces.iter().zip(&w.ranges).enumerate() {
            let seq = &mut next_seq[*p as usize];
            records.push((
                RecordMeta {
                    partition: *p,
                    epoch: 0,
                    seq: *seq,
                    // A write spanning partitions is atomic: replay applies it only whole.
                    continues: i < last,
                },
                &w.payload[range.clone()],
            ));
            *seq += 1;
        }
    }
    let result = wal.append_unsynced(&records).and_then(|()| {
        wal.sync().map_err(|e| {
            let msg = format!("{e}; restart zeptod to recover from the WAL");
            tracing::error!(error = %e, "WAL fdatasync failed: refusing all writes until restart");
            *shared.poisoned.lock() = Some(msg.clone());
            Error::WalPoisoned(msg)
        })
    });
    drop(records);
    if let Err(e) = result {
        // Give the sequence numbers back (in reverse, so each ends at its first value).
        for (p, s) in seq_before.iter().rev() {
            next_seq[*p as usize] = *s;
        }
        tracing::warn!(error = %e, requests = writes.len(), "WAL write failed; the group is not acknowledged");
        let msg = e.to_string();
        let poisoned = matches!(e, Error::WalPoisoned(_));
        fail_all(shared, writes, || {
            if poisoned {
                Error::WalPoisoned(msg.clone())
            } else {
                Error::io("write the WAL", std::io::Error::other(msg.clone()))
            }
        });
        return;
    }
    *shared.wal_position.lock() = wal.position();
    let now = shared.now_ms();
    let mut wants_compaction = false;
    for w in writes.drain(..) {
        let mut applied: Result<()> = Ok(());
        for (p, batch) in &w.pieces {
            let mut next_id = || shared.next_chunk_id.fetch_add(1, Ordering::Relaxed);
            match w.table.append(
                *p,
                batch,
                shared.config.chunk_duration_ns,
                now,
                &mut next_id,
            ) {
                Ok(c) => wants_compaction |= c,
                Err(e) => applied = Err(e),
            }
        }
        let c = &shared.counters;
        c.write_requests.fetch_add(1, Ordering::Relaxed);
        match applied {
            Ok(()) => {
                c.rows_written.fetch_add(w.rows, Ordering::Relaxed);
                c.bytes_written
                    .fetch_add(w.payload.len() as u64, Ordering::Relaxed);
                let _ = w.done.send(Ok(WriteReceipt { rows: w.rows }));
            }
            Err(e) => {
                // Durable in the WAL but not applied: a bug. Say so rather than ack.
                tracing::error!(error = %e, "durable write could not be applied to memory");
                c.write_errors.fetch_add(1, Ordering::Relaxed);
                let _ = w.done.send(Err(Error::Internal(format!(
                    "write is durable but could not be applied: {e}"
                ))));
            }
        }
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
fn capture(shared: &Shared, wal: &WalWriter, next_seq: &[u64]) -> Capture {
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
        next_seq: next_seq.to_vec(),
        tables,
    }
}
