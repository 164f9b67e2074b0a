//! The machine's memory read bandwidth, measured in-process in the same run as the queries:
//! an 8-lane `f64` sum (the loop shape of zeptod's Q8 kernel) over a buffer far larger than
//! the caches; the median of several passes.

use std::time::Instant;

/// Bytes summed per pass (256 MiB).
const BYTES: usize = 256 << 20;

/// Read bandwidth in GB/s (10^9 bytes per second).
pub(crate) fn read_bandwidth_gbs() -> f64 {
    let n = BYTES / 8;
    let v: Vec<f64> = (0..n).map(|i| (i & 1023) as f64).collect();
    let mut secs = Vec::with_capacity(7);
    let mut sink = 0.0;
    for _ in 0..7 {
        let t = Instant::now();
        sink += sum8(std::hint::black_box(&v));
        secs.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    secs.sort_by(f64::total_cmp);
    BYTES as f64 / secs[secs.len() / 2].max(1e-9) / 1e9
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
