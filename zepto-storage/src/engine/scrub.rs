//! The background check of HDB files nobody has read since the database opened (ADR 0015).
//!
//! Opening a database reads no values; a file is checked against its content checksum the
//! first time something reads it. Cold data could stay unchecked until the day it is needed
//! (a failover onto this copy, a restore), so this thread checks every unchecked file, one
//! at a time, at most `Config::scrub_bytes_per_sec` on average, at the background threads'
//! priority. A file a query is checking meanwhile is waited for, not checked twice. Files
//! written by this process need no check, so after one pass the thread only looks again
//! every [`RELIST`].
//!
//! Every `Config::scrub_recheck_interval` (from the start of the previous full pass) the
//! thread reads every file again, checked before or not, at the same pace: a file whose
//! bytes changed since its check (bit rot on a node that runs for weeks) is corrupt from then
//! on, as if its first check had failed.

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
    // When the last pass over every file began (the first pass after the start counts).
    let mut full_pass = Instant::now();
    loop {
        let recheck = shared
            .config
            .scrub_recheck_interval
            .is_some_and(|every| full_pass.elapsed() >= every);
        let pending: Vec<Arc<DiskChunk>> = super::disk_files(&shared)
            .into_iter()
            .map(|(_, _, d)| d)
            .filter(|d| match d.verified() {
                None => true,
                Some(Verified::Corrupt { .. }) => false,
                Some(_) => recheck,
            })
            .collect();
        if recheck {
            full_pass = Instant::now();
        }
        if pending.is_empty() {
            let wait = match shared.config.scrub_recheck_interval {
                Some(every) => RELIST.min(every.saturating_sub(full_pass.elapsed())),
                None => RELIST,
            };
            if !pause(&shared, wait) {
                return;
            }
            continue;
        }
        let started = Instant::now();
        let (mut files, mut bytes, mut corrupt) = (0u64, 0u64, 0u64);
        for d in pending {
            let found = if recheck {
                d.recheck()
            } else if d.verified().is_some() {
                continue; // a query checked it meanwhile
            } else {
                d.verify()
            };
            if let Verified::Corrupt { .. } = found {
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
            "{}",
            if recheck {
                "periodic re-check of every HDB file done"
            } else {
                "background check of HDB files done"
            }
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
