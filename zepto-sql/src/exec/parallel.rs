//! One aggregate query on several cores: a query whose plan is an aggregate over one table's
//! scan (the shape a cluster splits, see `plan/split.rs`) and that reads enough rows runs its
//! partial aggregate on contiguous runs of partitions, and merges the partial states on the
//! calling thread with the same `Final` aggregate a cluster uses. There are a few runs per
//! thread ([`RUNS_PER_THREAD`]); the calling thread and the engine's helper threads take them
//! one at a time until none is left, so a helper that gets a core late leaves its share to
//! the others instead of holding the query up.
//!
//! The runs are contiguous in partition order and merged in that order (whichever thread ran
//! them), so groups come out in the order a single pass finds them and `first`/`last` ties
//! resolve as in a single pass; only the rounding of floating-point sums can differ from the
//! serial path.
//!
//! Bounded: an [`Engine`](crate::Engine) lends at most `threads - 1` extra threads at a time
//! over all its concurrent queries; a query that finds none free runs serially. Memory and
//! the deadline are shared by every thread of a query.
//!
//! The helper threads are started once per engine and wait parked between queries. A thread
//! spawned per query did not help: Linux (6.x, measured on the 2-vCPU benchmark guest) queues
//! a new thread on its parent's core, so the spawned part started about when the caller's part
//! ended (~1 ms later on 1 M rows) and the two ran one after the other; a parked thread woken
//! with a job usually runs on the idle core within ~10 us.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use arrow::array::RecordBatch;

use crate::error::{Error, Result};
use crate::exec::{self, ExecCtx};
use crate::plan::agg::{AggFunc, AggMode};
use crate::plan::{self, Node, ScanNode};

/// How many cores one engine's queries may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Threads one query may run on, its own included (1 = always serial). Also the bound
    /// over all concurrent queries of an engine: at most `threads - 1` extra threads exist.
    pub threads: usize,
    /// A query whose scan reads fewer rows than this runs on one thread (starting a thread
    /// costs tens of microseconds).
    pub min_rows: u64,
}

impl Default for Parallelism {
    /// Every core of the machine; parallel from 200,000 rows.
    fn default() -> Self {
        Parallelism {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            min_rows: 200_000,
        }
    }
}

impl Parallelism {
    /// One thread.
    pub fn serial() -> Self {
        Parallelism {
            threads: 1,
            min_rows: u64::MAX,
        }
    }
}

/// The extra threads of one engine's queries.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    /// Lent out right now.
    busy: AtomicUsize,
    /// Queries that ran on more than one thread so far.
    pub(crate) parallel_runs: AtomicU64,
    /// The threads, started by the first parallel query or by
    /// [`Engine::start_query_threads`](crate::Engine::start_query_threads) (`None`: they
    /// could not be started; queries then run on one thread).
    pool: OnceLock<Option<Pool>>,
}

impl Workers {
    /// Start the engine's `n` threads if they are not running yet.
    pub(crate) fn start(&self, n: usize) {
        let _ = self.pool(n);
    }

    /// The engine's threads, `n` of them, started on first use.
    fn pool(&self, n: usize) -> Option<&Pool> {
        self.pool
            .get_or_init(|| match Pool::start(n) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the query threads; queries run on one thread");
                    None
                }
            })
            .as_ref()
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Parked threads that run the parts of parallel queries; they exit when the engine (the
/// last clone of it) is dropped. Leases keep the parts in flight at or below the number of
/// threads, so a part never waits behind another query's.
#[derive(Debug)]
struct Pool {
    tx: crossbeam_channel::Sender<Job>,
}

impl Pool {
    fn start(n: usize) -> std::result::Result<Pool, String> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("zepto-query-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        // A job catches its runs' panics itself; this keeps the thread
                        // serving if anything else in it panics.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| format!("start query thread {i}: {e}"))?;
        }
        Ok(Pool { tx })
    }

    /// Run `job` on a pool thread. Its results travel through whatever it captured.
    fn execute(&self, job: impl FnOnce() + Send + 'static) {
        // The threads stop only when this sender is dropped, so the send cannot fail while
        // `self` exists.
        let _ = self.tx.send(Box::new(job));
    }
}

/// Extra threads lent out, released on drop.
struct Lease<'a> {
    busy: &'a AtomicUsize,
    n: usize,
}

impl<'a> Lease<'a> {
    fn take(busy: &'a AtomicUsize, cap: usize, want: usize) -> Lease<'a> {
        let mut cur = busy.load(Ordering::Relaxed);
        loop {
            let n = want.min(cap.saturating_sub(cur));
            if n == 0 {
                return Lease { busy, n: 0 };
            }
            match busy.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Lease { busy, n },
                Err(c) => cur = c,
            }
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.busy.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

/// Run a query plan like [`exec::collect`], on several threads when its shape and size allow.
pub(crate) fn collect(
    node: &Node,
    ctx: &ExecCtx,
    par: &Parallelism,
    workers: &Workers,
) -> Result<Vec<RecordBatch>> {
    if par.threads > 1 {
        if let Some(out) = try_parallel(node, ctx, par, workers)? {
            return Ok(out);
        }
    }
    exec::collect(node, ctx)
}

/// The scan under the plan's one splittable aggregate, found without cloning the plan;
/// `None` for any other shape and for a bare `count(*)` (answered from metadata).
fn agg_scan(n: &Node) -> Option<&ScanNode> {
    match n {
        Node::Aggregate {
            input,
            group,
            aggs,
            mode: AggMode::Single,
            ..
        } => {
            let scan = chain_scan(input)?;
            let count_only = group.is_empty()
                && aggs.iter().all(|a| a.func == AggFunc::CountStar)
                && matches!(input.as_ref(), Node::Scan(s) if s.filter.is_none());
            (!count_only).then_some(scan)
        }
        Node::Filter { input, .. }
        | Node::Project { input, .. }
        | Node::Sort { input, .. }
        | Node::Limit { input, .. }
        | Node::Distinct { input }
        | Node::Window { input, .. } => agg_scan(input),
        _ => None,
    }
}

fn chain_scan(n: &Node) -> Option<&ScanNode> {
    match n {
        Node::Scan(s) => Some(s),
        Node::Filter { input, .. } | Node::Project { input, .. } => chain_scan(input),
        _ => None,
    }
}

/// Cut `parts` (in order) into `k` contiguous non-empty runs of about equal row counts.
pub(crate) fn cut(parts: &[u32], rows: &[u64], k: usize) -> Vec<Vec<u32>> {
    let k = k.clamp(1, parts.len().max(1));
    let total: u64 = rows.iter().sum();
    let mut out = Vec::with_capacity(k);
    let mut cur = vec![];
    let mut acc = 0u64;
    for (i, (&p, &r)) in parts.iter().zip(rows).enumerate() {
        cur.push(p);
        acc += r;
        let closed = out.len() + 1;
        let left = parts.len() - i - 1;
        if closed < k
            && (u128::from(acc) * k as u128 >= u128::from(total) * closed as u128
                || left == k - closed)
        {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn try_parallel(
    node: &Node,
    ctx: &ExecCtx,
    par: &Parallelism,
    workers: &Workers,
) -> Result<Option<Vec<RecordBatch>>> {
    let Some(scan) = agg_scan(node) else {
        return Ok(None);
    };
    let req = exec::scan_request(scan, ctx);
    if req.time_range.is_empty() {
        return Ok(None);
    }
    let nparts = ctx.db.partitions();
    let parts: Vec<u32> = match &req.partitions {
        Some(p) => {
            let mut p: Vec<u32> = p.iter().copied().filter(|&x| x < nparts).collect();
            p.sort_unstable();
            p.dedup();
            p
        }
        None => (0..nparts).collect(),
    };
    if parts.len() < 2 {
        return Ok(None);
    }
    // Rows per partition from piece metadata (no batch is touched).
    let mut one = req.clone();
    let mut rows = Vec::with_capacity(parts.len());
    for &p in &parts {
        one.partitions = Some(vec![p]);
        rows.push(ctx.db.count_rows(&one)?.0);
    }
    if rows.iter().sum::<u64>() < par.min_rows {
        return Ok(None);
    }
    let lease = Lease::take(&workers.busy, par.threads - 1, parts.len() - 1);
    if lease.n == 0 {
        return Ok(None);
    }
    let split = match plan::split::split(node) {
        Ok(s) => s,
        Err(Error::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(pool) = workers.pool(par.threads - 1) else {
        return Ok(None);
    };
    // More runs than threads, taken one at a time by whichever thread is free: a helper that
    // gets a core late (or never) leaves its runs to the others instead of holding the
    // query up. The runs' results are merged in run order whoever ran them.
    let runs = cut(&parts, &rows, (lease.n + 1).saturating_mul(RUNS_PER_THREAD));
    workers.parallel_runs.fetch_add(1, Ordering::Relaxed);
    let shared = Arc::new(Runs::new(split.partial, runs));
    for _ in 0..lease.n {
        let (shared, base) = (Arc::clone(&shared), ctx.fork(vec![]));
        pool.execute(move || shared.take(&base));
    }
    shared.take(ctx);
    // Only the runs a helper took are waited for (also when one failed: their budget
    // charges end with them); a helper that starts after the last run was taken does nothing.
    let results = shared.wait();
    drop(lease);
    let mut partials = vec![];
    for r in results {
        let r = r?;
        ctx.rows_read.set(ctx.rows_read.get() + r.rows_read);
        ctx.scan_stats.borrow_mut().extend(r.scan_stats);
        partials.extend(r.batches);
    }
    // The workers already charged the partial batches to the shared budget.
    *ctx.partial_input.borrow_mut() = partials;
    let out = exec::collect(&split.merge, ctx);
    ctx.partial_input.borrow_mut().clear();
    out.map(Some)
}

#[derive(Default)]
struct PartOut {
    batches: Vec<RecordBatch>,
    rows_read: u64,
    scan_stats: Vec<(String, zepto_storage::ScanStats)>,
}

/// Runs per thread of a parallel query (fewer when there are fewer partitions).
const RUNS_PER_THREAD: usize = 4;

/// The runs of one parallel query and their results, shared by the threads that take them.
struct Runs {
    partial: Node,
    runs: Vec<Vec<u32>>,
    state: Mutex<Taken>,
    finished: Condvar,
}

#[derive(Default)]
struct Taken {
    /// The next run to take; `runs.len()` once all are taken or one failed.
    next: usize,
    /// Runs taken so far, and how many of them have finished.
    taken: usize,
    done: usize,
    results: Vec<Option<Result<PartOut>>>,
}

impl Runs {
    fn new(partial: Node, runs: Vec<Vec<u32>>) -> Runs {
        let results = runs.iter().map(|_| None).collect();
        Runs {
            partial,
            runs,
            state: Mutex::new(Taken {
                results,
                ..Taken::default()
            }),
            finished: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        // A panic is caught around each run, never while the lock is held.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run the runs not yet taken, one at a time, until none is left. A failed run stops the
    /// taking (the query fails with it); a run that panics fails the same way.
    fn take(&self, base: &ExecCtx) {
        loop {
            let i = {
                let mut st = self.lock();
                if st.next >= self.runs.len() {
                    return;
                }
                st.next += 1;
                st.taken += 1;
                st.next - 1
            };
            let sub = base.fork(self.runs[i].clone());
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| run_part(&self.partial, &sub)))
                .unwrap_or_else(|_| Err(Error::Internal("a query worker thread panicked".into())));
            let mut st = self.lock();
            if r.is_err() {
                st.next = self.runs.len();
            }
            st.results[i] = Some(r);
            st.done += 1;
            drop(st);
            self.finished.notify_all();
        }
    }

    /// Once the caller's [`Runs::take`] returned (nothing is left to take): wait for the runs
    /// other threads are still on, then the results of the taken runs, in run order.
    fn wait(&self) -> Vec<Result<PartOut>> {
        let mut st = self.lock();
        while st.done < st.taken {
            st = self
                .finished
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        st.results.iter_mut().filter_map(Option::take).collect()
    }
}

fn run_part(partial: &Node, ctx: &ExecCtx) -> Result<PartOut> {
    let batches = exec::collect(partial, ctx)?;
    Ok(PartOut {
        batches,
        rows_read: ctx.rows_read.get(),
        scan_stats: ctx.scan_stats.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_makes_contiguous_balanced_runs() {
        let parts: Vec<u32> = (0..8).collect();
        assert_eq!(
            cut(&parts, &[10, 10, 10, 10, 10, 10, 10, 10], 2),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]
        );
        // Skewed: the big partition closes the first run early.
        assert_eq!(
            cut(&parts, &[100, 1, 1, 1, 1, 1, 1, 1], 2),
            vec![vec![0], vec![1, 2, 3, 4, 5, 6, 7]]
        );
        // All rows at the end: every run still gets a partition.
        assert_eq!(
            cut(&parts[..3], &[0, 0, 50], 3),
            vec![vec![0], vec![1], vec![2]]
        );
        assert_eq!(cut(&parts[..2], &[0, 0], 2), vec![vec![0], vec![1]]);
        assert_eq!(cut(&parts[..1], &[5], 2), vec![vec![0]]);
    }

    #[test]
    fn leases_are_bounded_and_returned() {
        let busy = AtomicUsize::new(0);
        let a = Lease::take(&busy, 1, 3);
        assert_eq!(a.n, 1);
        let b = Lease::take(&busy, 1, 3);
        assert_eq!(b.n, 0);
        drop(a);
        assert_eq!(busy.load(Ordering::Relaxed), 0);
        let c = Lease::take(&busy, 1, 3);
        assert_eq!(c.n, 1);
    }
}
