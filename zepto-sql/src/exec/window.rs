//! Window functions over `PARTITION BY ... ORDER BY ...`: ranking, lag/lead, and the
//! time-series ones (`ema`, `mavg`, `msum`, `delta`), plus running sum/count/avg/min/max.
//!
//! The input is materialised once; each function sorts row ids by (partition, order keys)
//! and walks them, writing results back at the rows' original positions.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, lexsort_to_indices, take, SortColumn, SortOptions};
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use arrow::row::{RowConverter, SortField};

use crate::error::Result;
use crate::exec::groups::{key_type, Groups};
use crate::exec::{make_batch, ExecCtx};
use crate::plan::{WindowExpr, WindowFunc};

pub(crate) fn run_window(
    in_schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    funcs: &[WindowExpr],
    schema: &SchemaRef,
    ctx: &ExecCtx,
) -> Result<RecordBatch> {
    let bytes = super::batch_bytes(&batches);
    ctx.charge(bytes, "computing window functions")?;
    let all = concat_batches(in_schema, &batches)?;
    drop(batches);
    let n = all.num_rows();
    let mut cols: Vec<ArrayRef> = all.columns().to_vec();
    for w in funcs {
        ctx.check_deadline()?;
        cols.push(one_window(&all, w)?);
    }
    // Both the collected input and the concatenated copy are gone now.
    ctx.release(bytes.saturating_mul(2));
    let cols = cols
        .into_iter()
        .zip(schema.fields().iter())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                Ok(cast(&c, f.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    make_batch(schema, cols, n)
}

fn one_window(b: &RecordBatch, w: &WindowExpr) -> Result<ArrayRef> {
    let n = b.num_rows();
    // Partition ids.
    let pcols = w
        .partition_by
        .iter()
        .map(|e| e.eval_array(b))
        .collect::<Result<Vec<_>>>()?;
    let ptypes = pcols.iter().map(|c| c.data_type().clone()).collect();
    let mut groups = Groups::new(ptypes)?;
    groups.assign(&pcols)?;
    let pid: Vec<u32> = if w.partition_by.is_empty() {
        vec![0; n]
    } else {
        groups.ids.clone()
    };
    // Order: partition id, then the ORDER BY keys.
    let mut sort_cols = vec![SortColumn {
        values: Arc::new(UInt32Array::from(pid.clone())),
        options: None,
    }];
    let mut order_vals = vec![];
    for k in &w.order_by {
        let v = k.expr.eval_array(b)?;
        let v = match v.data_type() {
            DataType::Dictionary(_, _) => cast(&v, &key_type(v.data_type()))?,
            _ => v,
        };
        order_vals.push(v.clone());
        sort_cols.push(SortColumn {
            values: v,
            options: Some(SortOptions {
                descending: k.descending,
                nulls_first: k.nulls_first,
            }),
        });
    }
    let order = lexsort_to_indices(&sort_cols, None)?;
    let order: &[u32] = order.values();
    // Peer detection (same partition and same ORDER BY values).
    let peer_rows = if order_vals.is_empty() {
        None
    } else {
        let conv = RowConverter::new(
            order_vals
                .iter()
                .map(|v| SortField::new(v.data_type().clone()))
                .collect(),
        )?;
        Some(conv.convert_columns(&order_vals)?)
    };
    let same_part = |a: u32, c: u32| pid.get(a as usize) == pid.get(c as usize);
    let peers = |a: u32, c: u32| -> bool {
        same_part(a, c)
            && match &peer_rows {
                None => true,
                Some(r) => r.row(a as usize) == r.row(c as usize),
            }
    };
    let arg = |i: usize| -> Result<ArrayRef> {
        match w.args.get(i) {
            Some(e) => e.eval_array(b),
            None => Err(crate::error::Error::Internal(
                "window argument missing".into(),
            )),
        }
    };
    match &w.func {
        WindowFunc::RowNumber | WindowFunc::Rank | WindowFunc::DenseRank => {
            let mut out = vec![0i64; n];
            let (mut rn, mut rank, mut dense) = (0i64, 0i64, 0i64);
            for (k, &row) in order.iter().enumerate() {
                let prev = if k > 0 {
                    order.get(k - 1).copied()
                } else {
                    None
                };
                match prev {
                    Some(p) if same_part(p, row) => {
                        rn += 1;
                        if !peers(p, row) {
                            rank = rn;
                            dense += 1;
                        }
                    }
                    _ => {
                        rn = 1;
                        rank = 1;
                        dense = 1;
                    }
                }
                if let Some(o) = out.get_mut(row as usize) {
                    *o = match w.func {
                        WindowFunc::RowNumber => rn,
                        WindowFunc::Rank => rank,
                        _ => dense,
                    };
                }
            }
            Ok(Arc::new(Int64Array::from(out)))
        }
        WindowFunc::Lag(off) | WindowFunc::Lead(off) => {
            let x = arg(0)?;
            let off = if matches!(w.func, WindowFunc::Lag(_)) {
                -*off
            } else {
                *off
            };
            let mut idx: Vec<Option<u32>> = vec![None; n];
            for (k, &row) in order.iter().enumerate() {
                let j = k as i64 + off;
                if j < 0 {
                    continue;
                }
                if let Some(&other) = order.get(j as usize) {
                    if same_part(other, row) {
                        if let Some(slot) = idx.get_mut(row as usize) {
                            *slot = Some(other);
                        }
                    }
                }
            }
            Ok(take(x.as_ref(), &UInt32Array::from(idx), None)?)
        }
        f => {
            let x = if matches!(f, WindowFunc::Count) && w.args.is_empty() {
                None
            } else {
                Some(arg(0)?)
            };
            let xs = match &x {
                Some(a) if a.data_type() == &DataType::Float64 => {
                    Some(a.as_primitive::<Float64Type>().clone())
                }
                _ => None,
            };
            let present = |row: u32| -> bool {
                match &x {
                    None => true,
                    Some(a) => a.is_valid(row as usize),
                }
            };
            let val = |row: u32| -> Option<f64> {
                let p = xs.as_ref()?;
                let i = row as usize;
                (i < p.len() && p.is_valid(i)).then(|| p.value(i))
            };
            let mut out: Vec<Option<f64>> = vec![None; n];
            let mut start = 0;
            while start < order.len() {
                let first = order[start];
                let mut end = start;
                while end < order.len() && same_part(order[end], first) {
                    end += 1;
                }
                let part = &order[start..end];
                match w.rows_frame {
                    Some(frame) => sliding(f, part, &val, &present, frame, &mut out),
                    None => compute_partition(
                        f,
                        part,
                        &val,
                        &present,
                        &peers,
                        !w.order_by.is_empty(),
                        &mut out,
                    ),
                }
                start = end;
            }
            if matches!(f, WindowFunc::Count) {
                Ok(Arc::new(
                    out.iter()
                        .map(|v| v.map(|v| v as i64))
                        .collect::<Int64Array>(),
                ))
            } else {
                Ok(Arc::new(out.into_iter().collect::<Float64Array>()))
            }
        }
    }
}

fn compute_partition(
    f: &WindowFunc,
    part: &[u32],
    val: &dyn Fn(u32) -> Option<f64>,
    present: &dyn Fn(u32) -> bool,
    peers: &dyn Fn(u32, u32) -> bool,
    ordered: bool,
    out: &mut [Option<f64>],
) {
    let mut set = |row: u32, v: Option<f64>| {
        if let Some(o) = out.get_mut(row as usize) {
            *o = v;
        }
    };
    match f {
        WindowFunc::Ema(alpha) => {
            let mut e: Option<f64> = None;
            for &row in part {
                if let Some(x) = val(row) {
                    e = Some(match e {
                        None => x,
                        Some(p) => alpha * x + (1.0 - alpha) * p,
                    });
                }
                set(row, e);
            }
        }
        WindowFunc::Mavg(w) | WindowFunc::Msum(w) => {
            let (mut sum, mut cnt) = (0.0, 0usize);
            for (k, &row) in part.iter().enumerate() {
                if let Some(x) = val(row) {
                    sum += x;
                    cnt += 1;
                }
                if k >= *w {
                    if let Some(old) = part.get(k - *w).and_then(|r| val(*r)) {
                        sum -= old;
                        cnt -= 1;
                    }
                }
                let v = if matches!(f, WindowFunc::Mavg(_)) {
                    (cnt > 0).then(|| sum / cnt as f64)
                } else {
                    Some(sum)
                };
                set(row, v);
            }
        }
        WindowFunc::Delta => {
            let mut prev: Option<Option<f64>> = None;
            for &row in part {
                let x = val(row);
                let d = match (x, prev) {
                    (Some(x), None) => Some(x),
                    (Some(x), Some(Some(p))) => Some(x - p),
                    _ => None,
                };
                set(row, d);
                prev = Some(x);
            }
        }
        WindowFunc::Sum
        | WindowFunc::Count
        | WindowFunc::Avg
        | WindowFunc::Min
        | WindowFunc::Max => {
            // Running aggregate; peers (equal ORDER BY values) share the value at the end of
            // their run, as with SQL's default RANGE frame. Without ORDER BY the frame is the
            // whole partition.
            let mut vals: Vec<Option<f64>> = Vec::with_capacity(part.len());
            let (mut sum, mut cnt, mut mn, mut mx) = (0.0, 0i64, f64::INFINITY, f64::NEG_INFINITY);
            for &row in part {
                if matches!(f, WindowFunc::Count) {
                    if present(row) {
                        cnt += 1;
                    }
                } else if let Some(x) = val(row) {
                    sum += x;
                    cnt += 1;
                    mn = mn.min(x);
                    mx = mx.max(x);
                }
                vals.push(match f {
                    WindowFunc::Count => Some(cnt as f64),
                    _ if cnt == 0 => None,
                    WindowFunc::Sum => Some(sum),
                    WindowFunc::Avg => Some(sum / cnt as f64),
                    WindowFunc::Min => Some(mn),
                    _ => Some(mx),
                });
            }
            let mut k = 0;
            while k < part.len() {
                let mut e = k;
                while e + 1 < part.len() && (!ordered || peers(part[k], part[e + 1])) {
                    e += 1;
                }
                let v = vals.get(e).copied().flatten();
                for &row in &part[k..=e] {
                    set(row, v);
                }
                k = e + 1;
            }
        }
        _ => {}
    }
}

/// sum/avg/min/max/count over `ROWS BETWEEN n PRECEDING AND CURRENT ROW` (`None` =
/// unbounded). Sums and counts slide in O(1) per row; min/max rescan the frame, or run
/// cumulatively when the frame is unbounded.
fn sliding(
    f: &WindowFunc,
    part: &[u32],
    val: &dyn Fn(u32) -> Option<f64>,
    present: &dyn Fn(u32) -> bool,
    frame: Option<usize>,
    out: &mut [Option<f64>],
) {
    let (mut sum, mut cnt, mut present_cnt) = (0.0, 0usize, 0usize);
    let (mut run_min, mut run_max) = (f64::INFINITY, f64::NEG_INFINITY);
    for (k, &row) in part.iter().enumerate() {
        if present(row) {
            present_cnt += 1;
        }
        if let Some(x) = val(row) {
            sum += x;
            cnt += 1;
            run_min = run_min.min(x);
            run_max = run_max.max(x);
        }
        if let Some(n) = frame {
            if k > n {
                if let Some(&old) = part.get(k - n - 1) {
                    if present(old) {
                        present_cnt -= 1;
                    }
                    if let Some(x) = val(old) {
                        sum -= x;
                        cnt -= 1;
                    }
                }
            }
        }
        let (mn, mx) = match frame {
            None => (run_min, run_max),
            Some(n) => {
                let window = part.get(k.saturating_sub(n)..=k).unwrap_or(&[]);
                window
                    .iter()
                    .filter_map(|r| val(*r))
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                        (a.min(x), b.max(x))
                    })
            }
        };
        let v = match f {
            WindowFunc::Count => Some(present_cnt as f64),
            _ if cnt == 0 => None,
            WindowFunc::Sum => Some(sum),
            WindowFunc::Avg => Some(sum / cnt as f64),
            WindowFunc::Min => Some(mn),
            _ => Some(mx),
        };
        if let Some(o) = out.get_mut(row as usize) {
            *o = v;
        }
    }
}
