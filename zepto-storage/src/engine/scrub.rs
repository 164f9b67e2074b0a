//! The background check of HDB files nobody has read since the database opened (ADR 0015).
//!
//! Opening a database reads no values; a file is checked against its content checksum the
//! first time something reads it. Cold data could stay unchecked until the day it is needed
//! (a failover onto this copy, a restore), so this thread checks every unchecked file, one
//! at a time, at most `Config::scrub_bytes_per_sec` on average, at the background threads'
//! priority. A file a query is checking meanwhile is waited for, not checked twice. Files
//! written by this process need no check, so after one pass the thread only looks again
//! every [`RELIST`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::hdb::{DiskChunk, Verified};

/// How often a finished pass looks for files to check again (files restored by a partition
/// import are the only new unchecked ones, and they are written here).
const RELIST: Duration = Duration::from_secs(30);

pub(super) fn run(shared: Arc<Shared>) {
    let rate = shared.config.scrub_bytes_per_sec.max(1) as f64;
    loop {
        let pending: Vec<Arc<DiskChunk>> = super::disk_files(&shared)
            .into_iter()
            .map(|(_, _, d)| d)
            .filter(|d| d.verified().is_none())
            .collect();
        if pending.is_empty() {
            if !pause(&shared, RELIST) {
                return;
            }
            continue;
        }
        let started = Instant::now();
        let (mut files, mut bytes, mut corrupt) = (0u64, 0u64, 0u64);
        for d in pending {
            if d.verified().is_some() {
                continue; // a query checked it meanwhile
            }
            if let Verified::Corrupt { .. } = d.verify() {
                corrupt += 1; // logged by the check
            }
            files += 1;
            bytes += d.file_bytes;
            if !pause(&shared, Duration::from_secs_f64(d.file_bytes as f64 / rate)) {
                return;
            }
        }
        tracing::info!(
            files,
            bytes,
            corrupt,
            took_s = started.elapsed().as_secs(),
            "background check of HDB files done"
        );
    }
}

/// Wait `d`, or until the database stops: false when it stops.
fn pause(shared: &Shared, d: Duration) -> bool {
    let (lock, cv) = &shared.scrub_wake;
    let mut guard = lock.lock();
    if !shared.stop.load(Ordering::Acquire) && !d.is_zero() {
        cv.wait_for(&mut guard, d);
    }
    !shared.stop.load(Ordering::Acquire)
}
