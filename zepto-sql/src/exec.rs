//! Runs plans. Operators push record batches into a sink (`FnMut(RecordBatch) -> bool`,
//! false = stop, for LIMIT); scans, filters, projections, DISTINCT and LIMIT stream,
//! aggregates, sorts, joins and windows materialise what they must and charge it to the
//! query's memory budget. The deadline is checked between batches.
//!
//! HOT PATH: the per-batch loop of every operator.

pub(crate) mod agg;
pub(crate) mod fused;
pub(crate) mod groups;
pub(crate) mod join;
pub(crate) mod parallel;
pub(crate) mod window;

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{
    concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch, SortColumn,
    SortOptions,
};
use arrow::datatypes::SchemaRef;
use zepto_storage::{Db, ScanStats};

use crate::error::{Error, Result};
use crate::plan::agg::AggMode;
use crate::plan::Node;
use agg::Acc;
use groups::Groups;

/// Per-query execution state: the storage handle, limits, counters.
#[derive(Debug)]
pub(crate) struct ExecCtx {
    pub(crate) db: Db,
    started: Instant,
    timeout: Duration,
    memory_limit: usize,
    /// Bytes charged so far; shared with the query's worker threads (see `parallel.rs`).
    used: Arc<AtomicUsize>,
    pub(crate) rows_read: Cell<u64>,
    /// When set, scans read only these partitions (a per-partition part of a split plan).
    pub(crate) only_partitions: Option<Vec<u32>>,
    /// The input of a merge plan's `PartialInput` leaf.
    pub(crate) partial_input: RefCell<Vec<RecordBatch>>,
    /// Scan statistics, for EXPLAIN.
    pub(crate) scan_stats: RefCell<Vec<(String, ScanStats)>>,
}

impl ExecCtx {
    pub(crate) fn new(db: Db, timeout: Duration, memory_limit: usize) -> ExecCtx {
        ExecCtx {
            db,
            started: Instant::now(),
            timeout,
            memory_limit,
            used: Arc::new(AtomicUsize::new(0)),
            rows_read: Cell::new(0),
            only_partitions: None,
            partial_input: RefCell::new(vec![]),
            scan_stats: RefCell::new(vec![]),
        }
    }

    /// Fail when the deadline has passed.
    pub(crate) fn check_deadline(&self) -> Result<()> {
        if self.started.elapsed() > self.timeout {
            return Err(Error::Timeout {
                timeout_ms: self.timeout.as_millis(),
            });
        }
        Ok(())
    }

    /// A context for one worker thread of this query: the same deadline and memory budget,
    /// its scans restricted to `partitions`, its own counters.
    pub(crate) fn fork(&self, partitions: Vec<u32>) -> ExecCtx {
        ExecCtx {
            db: self.db.clone(),
            started: self.started,
            timeout: self.timeout,
            memory_limit: self.memory_limit,
            used: self.used.clone(),
            rows_read: Cell::new(0),
            only_partitions: Some(partitions),
            partial_input: RefCell::new(vec![]),
            scan_stats: RefCell::new(vec![]),
        }
    }

    /// Account `bytes` more of materialised data.
    pub(crate) fn charge(&self, bytes: usize, during: &'static str) -> Result<()> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        let now = before.saturating_add(bytes);
        if now > self.memory_limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Error::MemoryLimit {
                limit: self.memory_limit,
                needed: now,
                during,
            });
        }
        Ok(())
    }

    pub(crate) fn release(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Move a tracked figure from `old` to `new` bytes.
    pub(crate) fn adjust(&self, old: &mut usize, new: usize, during: &'static str) -> Result<()> {
        if new > *old {
            self.charge(new - *old, during)?;
        } else {
            self.release(*old - new);
        }
        *old = new;
        Ok(())
    }
}

/// Bytes a batch holds for its own rows. Scan batches are zero-copy slices of large chunk
/// buffers, so `get_array_memory_size` (the whole buffers) would overcharge them.
pub(crate) fn rows_bytes(b: &RecordBatch) -> usize {
    b.columns().iter().map(|a| array_bytes(a.as_ref())).sum()
}

fn array_bytes(a: &dyn arrow::array::Array) -> usize {
    use arrow::array::AsArray;
    let n = a.len();
    let nulls = if a.null_count() > 0 { n / 8 + 1 } else { 0 };
    nulls
        + match a.data_type() {
            arrow::datatypes::DataType::Utf8 => {
                let s = a.as_string::<i32>();
                let o = s.value_offsets();
                let data = match (o.first(), o.last()) {
                    (Some(f), Some(l)) => (*l - *f).max(0) as usize,
                    _ => 0,
                };
                data + 4 * n
            }
            arrow::datatypes::DataType::Dictionary(_, _) => match a.as_any_dictionary_opt() {
                Some(d) => 4 * n + array_bytes(d.values().as_ref()),
                None => a.get_array_memory_size(),
            },
            t => match t.primitive_width() {
                Some(w) => w * n,
                None if t == &arrow::datatypes::DataType::Boolean => n / 8 + 1,
                None => a.get_array_memory_size(),
            },
        }
}

pub(crate) fn batch_bytes(b: &[RecordBatch]) -> usize {
    b.iter().map(rows_bytes).sum()
}

/// Run a plan and keep every output batch (charged to the budget).
pub(crate) fn collect(node: &Node, ctx: &ExecCtx) -> Result<Vec<RecordBatch>> {
    let mut out = vec![];
    run(node, ctx, &mut |b| {
        ctx.charge(rows_bytes(&b), "collecting results")?;
        out.push(b);
        Ok(true)
    })?;
    Ok(out)
}

/// Build a batch, allowing zero columns.
pub(crate) fn make_batch(
    schema: &SchemaRef,
    cols: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

type Sink<'s> = dyn FnMut(RecordBatch) -> Result<bool> + 's;

/// Run `node`, pushing its output into `sink`. Returns false when the sink asked to stop.
pub(crate) fn run(node: &Node, ctx: &ExecCtx, sink: &mut Sink<'_>) -> Result<bool> {
    ctx.check_deadline()?;
    match node {
        Node::Scan(s) => {
            let req = scan_request(s, ctx);
            if req.time_range.is_empty() {
                return Ok(true);
            }
            let scan = ctx.db.scan(&req)?;
            ctx.rows_read
                .set(ctx.rows_read.get() + scan.stats.rows_scanned);
            ctx.scan_stats
                .borrow_mut()
                .push((s.table.name.clone(), scan.stats));
            for chunk in &scan.chunks {
                for b in &chunk.batches {
                    ctx.check_deadline()?;
                    if b.num_rows() == 0 {
                        continue;
                    }
                    let b = if b.schema() == s.schema {
                        b.clone()
                    } else {
                        RecordBatch::try_new(s.schema.clone(), b.columns().to_vec())?
                    };
                    let b = match &s.filter {
                        None => b,
                        Some(f) => {
                            let mask = f.eval_mask(&b)?;
                            if mask.true_count() == b.num_rows() {
                                b
                            } else {
                                filter_record_batch(&b, &mask)?
                            }
                        }
                    };
                    if b.num_rows() > 0 && !sink(b)? {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        }
        Node::Values { batches, .. } => {
            for b in batches {
                if !sink(b.clone())? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::PartialInput { schema } => {
            let batches = ctx.partial_input.borrow().clone();
            for b in batches {
                let b = if b.schema() == *schema {
                    b
                } else {
                    RecordBatch::try_new(schema.clone(), b.columns().to_vec())?
                };
                if !sink(b)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Filter { input, predicate } => run(input, ctx, &mut |b| {
            let mask = predicate.eval_mask(&b)?;
            let kept = mask.true_count();
            if kept == 0 {
                return Ok(true);
            }
            let b = if kept == b.num_rows() {
                b
            } else {
                filter_record_batch(&b, &mask)?
            };
            if b.num_rows() == 0 {
                return Ok(true);
            }
            sink(b)
        }),
        Node::Project {
            input,
            exprs,
            schema,
        } => run(input, ctx, &mut |b| {
            let cols = exprs
                .iter()
                .map(|e| e.eval_array(&b))
                .collect::<Result<Vec<_>>>()?;
            sink(make_batch(schema, cols, b.num_rows())?)
        }),
        Node::Union { inputs, schema } => {
            for i in inputs {
                let go = run(i, ctx, &mut |b| {
                    sink(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?)
                })?;
                if !go {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Limit { input, skip, fetch } => {
            let mut to_skip = *skip;
            let mut left = fetch.unwrap_or(usize::MAX);
            if left == 0 {
                return Ok(true);
            }
            run(input, ctx, &mut |b| {
                let mut b = b;
                if to_skip > 0 {
                    let s = to_skip.min(b.num_rows());
                    to_skip -= s;
                    b = b.slice(s, b.num_rows() - s);
                }
                if b.num_rows() == 0 {
                    return Ok(true);
                }
                let n = left.min(b.num_rows());
                left -= n;
                if !sink(b.slice(0, n))? {
                    return Ok(false);
                }
                Ok(left > 0)
            })?;
            Ok(true)
        }
        Node::Distinct { input } => {
            let schema = input.schema();
            let types = schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect();
            let mut groups = Groups::new(types)?;
            let mut tracked = 0;
            run(input, ctx, &mut |b| {
                let before = groups.len();
                groups.assign(b.columns())?;
                // Keep the first row of every group that is new in this batch.
                let mut emitted = vec![false; groups.len().saturating_sub(before)];
                let mut keep = vec![];
                for (i, id) in groups.ids.iter().enumerate() {
                    if let Some(e) = (*id as usize)
                        .checked_sub(before)
                        .and_then(|k| emitted.get_mut(k))
                    {
                        if !*e {
                            *e = true;
                            keep.push(i as u32);
                        }
                    }
                }
                ctx.adjust(&mut tracked, groups.mem(), "computing DISTINCT")?;
                if keep.is_empty() {
                    return Ok(true);
                }
                let idx = UInt32Array::from(keep);
                let out = take_record_batch(&b, &idx)?;
                // Keys come out as plain strings, as in the schema above us.
                sink(out)
            })
        }
        Node::Sort { input, keys, fetch } => {
            let schema = input.schema();
            if let Some(k) = fetch.filter(|k| *k <= TOP_N_MAX) {
                // Top-N: keep only the best k rows seen so far; memory stays bounded.
                let mut buf: Vec<RecordBatch> = vec![];
                let mut rows = 0usize;
                let mut tracked = 0usize;
                run(input, ctx, &mut |b| {
                    rows += b.num_rows();
                    buf.push(b);
                    if rows > (2 * k).max(8192) {
                        let all = concat_batches(&schema, &buf)?;
                        let top = sort_batch(&all, keys, Some(k))?;
                        rows = top.num_rows();
                        buf = vec![top];
                    }
                    ctx.adjust(&mut tracked, batch_bytes(&buf), "sorting")?;
                    Ok(true)
                })?;
                let all = concat_batches(&schema, &buf)?;
                let out = sort_batch(&all, keys, Some(k))?;
                ctx.release(tracked);
                return sink(out);
            }
            let batches = collect(input, ctx)?;
            let bytes = batch_bytes(&batches);
            ctx.charge(bytes, "sorting")?;
            let all = concat_batches(&schema, &batches)?;
            drop(batches);
            ctx.check_deadline()?;
            let out = sort_batch(&all, keys, *fetch)?;
            ctx.release(bytes.saturating_mul(2));
            sink(out)
        }
        Node::Aggregate {
            input,
            group,
            aggs,
            mode,
            schema,
        } if *mode != AggMode::Final && counts_from_metadata(input, group, aggs) => {
            // count(*) without a filter: the scan's row counts, no batch is looked at.
            let rows = match input.as_ref() {
                Node::Scan(s) => scan_rows(s, ctx)?,
                _ => 0,
            };
            let cols = aggs
                .iter()
                .map(|_| Arc::new(arrow::array::Int64Array::from(vec![rows as i64])) as ArrayRef)
                .collect();
            sink(make_batch(schema, cols, 1)?)
        }
        Node::Aggregate {
            input,
            group,
            aggs,
            mode,
            schema,
        } => {
            let out = run_aggregate(input, group, aggs, *mode, schema, ctx)?;
            sink(out)
        }
        Node::Window {
            input,
            funcs,
            schema,
        } => {
            let batches = collect(input, ctx)?;
            let out = window::run_window(&input.schema(), batches, funcs, schema, ctx)?;
            sink(out)
        }
        Node::HashJoin {
            left,
            right,
            kind,
            left_keys,
            right_keys,
            filter,
            schema,
        } => join::hash_join(
            left,
            right,
            *kind,
            left_keys,
            right_keys,
            filter.as_ref(),
            schema,
            ctx,
            sink,
        ),
        Node::AsofJoin {
            left,
            right,
            left_keys,
            right_keys,
            left_ts,
            right_ts,
            strict,
            schema,
        } => {
            let keys = join::AsofKeys {
                left_keys,
                right_keys,
                left_ts,
                right_ts,
                strict: *strict,
            };
            join::asof_join(left, right, &keys, schema, ctx, sink)
        }
    }
}

/// The scan request of `s` restricted to the partitions this execution may read.
pub(crate) fn scan_request(s: &crate::plan::ScanNode, ctx: &ExecCtx) -> zepto_storage::ScanRequest {
    let mut req = s.request.clone();
    if let Some(only) = &ctx.only_partitions {
        req.partitions = Some(match req.partitions {
            None => only.clone(),
            Some(p) => p.into_iter().filter(|x| only.contains(x)).collect(),
        });
    }
    req
}

/// Whether an aggregate over `input` is a bare `count(*)` of a scan without a filter: answered
/// from the scan's row counts, no batch is looked at.
fn counts_from_metadata(
    input: &Node,
    group: &[crate::expr::Expr],
    aggs: &[crate::plan::agg::AggExpr],
) -> bool {
    group.is_empty()
        && aggs
            .iter()
            .all(|a| a.func == crate::plan::agg::AggFunc::CountStar)
        && matches!(input, Node::Scan(s) if s.filter.is_none())
}

/// See [`crate::Prepared::scan_rows`]: the rows the plan's scans will read (from piece
/// metadata), or `None` when its work is not bounded by them.
pub(crate) fn scan_rows_bound(node: &Node, ctx: &ExecCtx) -> Result<Option<u64>> {
    let sum = |nodes: &mut dyn Iterator<Item = &Node>| -> Result<Option<u64>> {
        let mut total = 0u64;
        for n in nodes {
            match scan_rows_bound(n, ctx)? {
                Some(r) => total = total.saturating_add(r),
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    };
    match node {
        Node::Scan(s) => {
            let req = scan_request(s, ctx);
            if req.time_range.is_empty() {
                return Ok(Some(0));
            }
            Ok(Some(ctx.db.count_rows(&req)?.0))
        }
        Node::Values { .. } => Ok(Some(0)),
        Node::Aggregate {
            input,
            group,
            aggs,
            mode,
            ..
        } if *mode != AggMode::Final && counts_from_metadata(input, group, aggs) => Ok(Some(0)),
        Node::Filter { input, .. }
        | Node::Project { input, .. }
        | Node::Aggregate { input, .. }
        | Node::Sort { input, .. }
        | Node::Limit { input, .. }
        | Node::Distinct { input } => scan_rows_bound(input, ctx),
        Node::AsofJoin { left, right, .. } => sum(&mut [left.as_ref(), right.as_ref()].into_iter()),
        Node::Union { inputs, .. } => sum(&mut inputs.iter()),
        Node::HashJoin { .. } | Node::Window { .. } | Node::PartialInput { .. } => Ok(None),
    }
}

/// Number of rows a scan returns, without touching its batches.
fn scan_rows(s: &crate::plan::ScanNode, ctx: &ExecCtx) -> Result<usize> {
    let req = scan_request(s, ctx);
    if req.time_range.is_empty() {
        return Ok(0);
    }
    let (rows, stats) = ctx.db.count_rows(&req)?;
    ctx.rows_read.set(ctx.rows_read.get() + stats.rows_scanned);
    ctx.scan_stats
        .borrow_mut()
        .push((s.table.name.clone(), stats));
    Ok(rows as usize)
}

/// Largest LIMIT that is sorted as a bounded top-N.
const TOP_N_MAX: usize = 100_000;

/// Sort one batch by `keys`, keeping the first `fetch` rows.
fn sort_batch(
    all: &RecordBatch,
    keys: &[crate::plan::SortKey],
    fetch: Option<usize>,
) -> Result<RecordBatch> {
    let cols = keys
        .iter()
        .map(|k| {
            Ok(SortColumn {
                values: sortable(k.expr.eval_array(all)?)?,
                options: Some(SortOptions {
                    descending: k.descending,
                    nulls_first: k.nulls_first,
                }),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let idx = lexsort_to_indices(&cols, fetch)?;
    Ok(take_record_batch(all, &idx)?)
}

/// Dictionary sort keys sort by their values.
fn sortable(a: ArrayRef) -> Result<ArrayRef> {
    Ok(match a.data_type() {
        arrow::datatypes::DataType::Dictionary(_, v) => arrow::compute::cast(&a, v)?,
        _ => a,
    })
}

fn run_aggregate(
    input: &Node,
    group: &[crate::expr::Expr],
    aggs: &[crate::plan::agg::AggExpr],
    mode: AggMode,
    schema: &SchemaRef,
    ctx: &ExecCtx,
) -> Result<RecordBatch> {
    let in_schema = input.schema();
    let key_types = if mode == AggMode::Final {
        in_schema
            .fields()
            .iter()
            .take(group.len())
            .map(|f| f.data_type().clone())
            .collect()
    } else {
        group
            .iter()
            .map(|g| g.data_type(&in_schema))
            .collect::<Result<Vec<_>>>()?
    };
    let mut groups = Groups::new(key_types)?;
    let mut accs = aggs.iter().map(Acc::new).collect::<Result<Vec<_>>>()?;
    let mut tracked = 0usize;
    let fused: Vec<Option<(usize, usize)>> = aggs
        .iter()
        .map(|a| match mode {
            AggMode::Final => None,
            _ => fused::sum_of_product(a),
        })
        .collect();
    run(input, ctx, &mut |b| {
        let keys = if mode == AggMode::Final {
            b.columns()
                .iter()
                .take(group.len())
                .cloned()
                .collect::<Vec<_>>()
        } else {
            group
                .iter()
                .map(|g| g.eval_array(&b))
                .collect::<Result<Vec<_>>>()?
        };
        groups.assign(&keys)?;
        let ng = groups.len();
        let ids = if group.is_empty() {
            None
        } else {
            Some(groups.ids.as_slice())
        };
        let mut state_col = group.len();
        for (i, (acc, a)) in accs.iter_mut().zip(aggs).enumerate() {
            if mode == AggMode::Final {
                let width = a.state_fields().len();
                let st: Vec<ArrayRef> = b
                    .columns()
                    .iter()
                    .skip(state_col)
                    .take(width)
                    .cloned()
                    .collect();
                state_col += width;
                acc.merge(ids, ng, &st)?;
            } else {
                // sum(x * y) without a GROUP BY: one pass over both columns.
                if let (None, Some((x, y))) = (ids, fused[i]) {
                    if let Some(total) = fused::dot(&b, x, y) {
                        acc.add_f64_total(total, b.num_rows() > 0);
                        continue;
                    }
                }
                let args = a
                    .args
                    .iter()
                    .map(|e| e.eval_array(&b))
                    .collect::<Result<Vec<_>>>()?;
                if a.args.is_empty() {
                    acc.update_star(ids, ng, b.num_rows());
                } else {
                    acc.update(ids, ng, &args)?;
                }
            }
        }
        let mem =
            groups.mem() + accs.iter().map(Acc::mem).sum::<usize>() + ng * 16 * accs.len().max(1);
        ctx.adjust(&mut tracked, mem, "aggregating")?;
        Ok(true)
    })?;
    let ng = groups.len();
    let mut cols = groups.key_columns()?;
    for acc in accs.iter_mut() {
        if mode == AggMode::Partial {
            cols.extend(acc.state(ng)?);
        } else {
            cols.push(acc.finish(ng)?);
        }
    }
    ctx.release(tracked);
    // Types in the schema are authoritative (e.g. INT min promoted to BIGINT).
    let cols = cols
        .into_iter()
        .zip(schema.fields().iter())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                Ok(arrow::compute::cast(&c, f.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    make_batch(schema, cols, ng)
}
