//! The machine's memory read bandwidth, measured in-process in the same run as the queries:
//! an 8-lane `f64` sum (the loop shape of zeptod's Q8 kernel) over a buffer far larger than
//! the caches, on one core and on every core at once (zeptod runs a full scan on all of
//! them); the median of several passes.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Bytes summed per pass (256 MiB), split evenly between the threads.
const BYTES: usize = 256 << 20;

/// Passes; the median counts.
const PASSES: usize = 7;

/// Read bandwidth in GB/s (10^9 bytes per second) on one core and on `threads` cores.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bandwidth {
    pub(crate) one_core_gbs: f64,
    pub(crate) all_cores_gbs: f64,
    pub(crate) threads: usize,
}

pub(crate) fn read_bandwidth(threads: usize) -> Bandwidth {
    let threads = threads.max(1);
    let v: Vec<f64> = (0..BYTES / 8).map(|i| (i & 1023) as f64).collect();
    Bandwidth {
        one_core_gbs: gbs(&v, 1),
        all_cores_gbs: gbs(&v, threads),
        threads,
    }
}

/// Bandwidth of `threads` threads each summing its own slice of `v` at the same time. The
/// threads start once and meet at a barrier before each pass (a thread spawned per pass could
/// wait for a core behind its parent); a pass lasts as long as its slowest thread.
fn gbs(v: &[f64], threads: usize) -> f64 {
    let slice = v.len().div_ceil(threads).max(1);
    let start = Barrier::new(v.chunks(slice).len());
    let mut per_thread: Vec<Vec<Duration>> = std::thread::scope(|sc| {
        let workers: Vec<_> = v
            .chunks(slice)
            .map(|part| {
                let start = &start;
                sc.spawn(move || {
                    let mut times = Vec::with_capacity(PASSES);
                    let mut sink = 0.0;
                    for _ in 0..PASSES {
                        start.wait();
                        let t = Instant::now();
                        sink += sum8(std::hint::black_box(part));
                        times.push(t.elapsed());
                    }
                    std::hint::black_box(sink);
                    times
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut passes: Vec<f64> = (0..PASSES)
        .map(|p| {
            per_thread
                .iter_mut()
                .filter_map(|t| t.get(p))
                .max()
                .map_or(0.0, Duration::as_secs_f64)
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    (v.len() * 8) as f64 / passes[passes.len() / 2].max(1e-9) / 1e9
}

fn sum8(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let c = v.chunks_exact(8);
    let tail: f64 = c.remainder().iter().sum();
    for a in c {
        for (s, &a) in acc.iter_mut().zip(a) {
            *s += a;
        }
    }
    acc.iter().sum::<f64>() + tail
}
