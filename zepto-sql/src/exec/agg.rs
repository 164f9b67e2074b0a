//! Hash aggregation: group keys -> dense group ids, and one columnar accumulator per
//! aggregate that can emit its partial state or merge states from elsewhere.
//!
//! HOT PATH: `update` loops run over value slices with a group id per row (or no ids at all
//! when there is no GROUP BY). A single SYMBOL key is grouped through its dictionary: the
//! (few) dictionary values are hashed once per batch, the rows only index an array.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Float64Array, Float64Builder, Int64Array, ListBuilder,
    PrimitiveArray, StringArray,
};
use arrow::buffer::NullBuffer;
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampNanosecondType};
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::{type_err, Error, Result};
use crate::plan::agg::{AggExpr, AggFunc};

/// Run `f(row, group)` for every row; with no ids every row is in group 0.
#[inline]
fn each(ids: Option<&[u32]>, n: usize, mut f: impl FnMut(usize, usize)) {
    match ids {
        None => (0..n).for_each(|i| f(i, 0)),
        Some(ids) => ids.iter().enumerate().for_each(|(i, &g)| f(i, g as usize)),
    }
}

/// `(sum(p * q), sum(q))` with 4 independent accumulators per sum.
fn vwap_sums(p: &[f64], q: &[f64]) -> (f64, f64) {
    let (mut pq, mut qs) = ([0.0f64; 4], [0.0f64; 4]);
    let (pc, qc) = (p.chunks_exact(4), q.chunks_exact(4));
    let (pr, qr) = (pc.remainder(), qc.remainder());
    for (a, b) in pc.zip(qc) {
        for (((acc_pq, acc_q), x), y) in pq.iter_mut().zip(qs.iter_mut()).zip(a).zip(b) {
            *acc_pq += x * y;
            *acc_q += y;
        }
    }
    let (mut sp, mut sv) = (
        (pq[0] + pq[1]) + (pq[2] + pq[3]),
        (qs[0] + qs[1]) + (qs[2] + qs[3]),
    );
    for (a, b) in pr.iter().zip(qr) {
        sp += a * b;
        sv += b;
    }
    (sp, sv)
}

#[inline]
fn valid(nulls: Option<&NullBuffer>, i: usize) -> bool {
    nulls.is_none_or(|n| n.is_valid(i))
}

fn f64s(a: &ArrayRef) -> Result<&PrimitiveArray<Float64Type>> {
    a.as_primitive_opt::<Float64Type>()
        .ok_or_else(|| type_err(format!("expected DOUBLE, found {}", a.data_type())))
}

fn i64s(a: &ArrayRef) -> Result<(&[i64], Option<&NullBuffer>)> {
    match a.data_type() {
        DataType::Int64 => {
            let p = a.as_primitive::<Int64Type>();
            Ok((p.values(), p.nulls()))
        }
        DataType::Timestamp(_, _) => {
            let p = a.as_primitive::<TimestampNanosecondType>();
            Ok((p.values(), p.nulls()))
        }
        t => Err(type_err(format!("expected BIGINT or TIMESTAMP, found {t}"))),
    }
}

fn arg(args: &[ArrayRef], i: usize) -> Result<&ArrayRef> {
    args.get(i)
        .ok_or_else(|| Error::Internal(format!("aggregate argument {i} missing")))
}

fn opt_f64(vals: &[f64], seen: &[bool]) -> ArrayRef {
    Arc::new(Float64Array::new(
        vals.to_vec().into(),
        Some(NullBuffer::from(seen.to_vec())),
    ))
}

fn opt_i64(vals: &[i64], seen: &[bool], t: &DataType) -> Result<ArrayRef> {
    let a: ArrayRef = Arc::new(Int64Array::new(
        vals.to_vec().into(),
        Some(NullBuffer::from(seen.to_vec())),
    ));
    Ok(if t == &DataType::Int64 {
        a
    } else {
        cast(&a, t)?
    })
}

/// The state of one aggregate over all groups.
#[derive(Debug)]
pub(crate) enum Acc {
    Count(Vec<i64>),
    SumF {
        sum: Vec<f64>,
        seen: Vec<bool>,
    },
    SumI {
        sum: Vec<i64>,
        seen: Vec<bool>,
    },
    Avg {
        sum: Vec<f64>,
        count: Vec<i64>,
    },
    MinMaxF {
        v: Vec<f64>,
        seen: Vec<bool>,
        max: bool,
    },
    MinMaxI {
        v: Vec<i64>,
        seen: Vec<bool>,
        max: bool,
        t: DataType,
    },
    MinMaxS {
        v: Vec<Option<String>>,
        max: bool,
    },
    /// Winner per group: (timestamp, index into `sources`, row); values gathered at the end.
    FirstLast {
        best: Vec<Option<(i64, u32, u32)>>,
        sources: Vec<ArrayRef>,
        last: bool,
        t: DataType,
    },
    Vwap {
        pv: Vec<f64>,
        v: Vec<f64>,
        seen: Vec<bool>,
    },
    Var {
        n: Vec<i64>,
        mean: Vec<f64>,
        m2: Vec<f64>,
        stddev: bool,
    },
    Quantile {
        vals: Vec<Vec<f64>>,
        q: f64,
    },
    Distinct {
        sets: Vec<HashSet<Box<[u8]>>>,
        conv: Option<RowConverter>,
    },
}

impl Acc {
    pub(crate) fn new(a: &AggExpr) -> Result<Acc> {
        let t = a.input_type.clone();
        Ok(match a.func {
            AggFunc::CountStar | AggFunc::Count => Acc::Count(vec![]),
            AggFunc::Sum => match t {
                DataType::Float64 => Acc::SumF {
                    sum: vec![],
                    seen: vec![],
                },
                DataType::Int64 => Acc::SumI {
                    sum: vec![],
                    seen: vec![],
                },
                t => return Err(type_err(format!("sum() needs a number, found {t}"))),
            },
            AggFunc::Avg => Acc::Avg {
                sum: vec![],
                count: vec![],
            },
            AggFunc::Min | AggFunc::Max => {
                let max = a.func == AggFunc::Max;
                match t {
                    DataType::Float64 => Acc::MinMaxF {
                        v: vec![],
                        seen: vec![],
                        max,
                    },
                    DataType::Int64 | DataType::Timestamp(_, _) => Acc::MinMaxI {
                        v: vec![],
                        seen: vec![],
                        max,
                        t,
                    },
                    DataType::Utf8 => Acc::MinMaxS { v: vec![], max },
                    t => return Err(type_err(format!("min()/max() do not accept {t}"))),
                }
            }
            AggFunc::First | AggFunc::Last => Acc::FirstLast {
                best: vec![],
                sources: vec![],
                last: a.func == AggFunc::Last,
                t,
            },
            AggFunc::Vwap => Acc::Vwap {
                pv: vec![],
                v: vec![],
                seen: vec![],
            },
            AggFunc::Stddev | AggFunc::Variance => Acc::Var {
                n: vec![],
                mean: vec![],
                m2: vec![],
                stddev: a.func == AggFunc::Stddev,
            },
            AggFunc::Percentile(q) => Acc::Quantile { vals: vec![], q },
            AggFunc::CountDistinct => Acc::Distinct {
                sets: vec![],
                conv: None,
            },
        })
    }

    fn resize(&mut self, g: usize) {
        match self {
            Acc::Count(c) => c.resize(g, 0),
            Acc::SumF { sum, seen } => {
                sum.resize(g, 0.0);
                seen.resize(g, false);
            }
            Acc::SumI { sum, seen } => {
                sum.resize(g, 0);
                seen.resize(g, false);
            }
            Acc::Avg { sum, count } => {
                sum.resize(g, 0.0);
                count.resize(g, 0);
            }
            Acc::MinMaxF { v, seen, .. } => {
                v.resize(g, 0.0);
                seen.resize(g, false);
            }
            Acc::MinMaxI { v, seen, .. } => {
                v.resize(g, 0);
                seen.resize(g, false);
            }
            Acc::MinMaxS { v, .. } => v.resize(g, None),
            Acc::FirstLast { best, .. } => best.resize(g, None),
            Acc::Vwap { pv, v, seen } => {
                pv.resize(g, 0.0);
                v.resize(g, 0.0);
                seen.resize(g, false);
            }
            Acc::Var { n, mean, m2, .. } => {
                n.resize(g, 0);
                mean.resize(g, 0.0);
                m2.resize(g, 0.0);
            }
            Acc::Quantile { vals, .. } => vals.resize_with(g, Vec::new),
            Acc::Distinct { sets, .. } => sets.resize_with(g, HashSet::new),
        }
    }

    /// Approximate bytes held, for the memory budget.
    pub(crate) fn mem(&self) -> usize {
        match self {
            Acc::Quantile { vals, .. } => vals.iter().map(|v| v.capacity() * 8 + 24).sum(),
            Acc::Distinct { sets, .. } => sets.iter().map(|s| s.len() * 48 + 48).sum(),
            Acc::MinMaxS { v, .. } => v
                .iter()
                .map(|s| s.as_ref().map_or(24, |s| 24 + s.len()))
                .sum(),
            Acc::FirstLast { best, .. } => best.len() * 24,
            _ => 0,
        }
    }

    /// Add an already summed DOUBLE total to group 0 of a `sum` (see `fused.rs`); `seen`
    /// says whether any row contributed.
    pub(crate) fn add_f64_total(&mut self, total: f64, seen: bool) {
        self.resize(1);
        if let Acc::SumF { sum, seen: z } = self {
            if let (Some(s), Some(z)) = (sum.get_mut(0), z.get_mut(0)) {
                *s += total;
                *z |= seen;
            }
        }
    }

    /// `count(*)`: every row counts.
    pub(crate) fn update_star(&mut self, ids: Option<&[u32]>, ngroups: usize, rows: usize) {
        self.resize(ngroups);
        if let Acc::Count(c) = self {
            match ids {
                None => {
                    if let Some(c0) = c.get_mut(0) {
                        *c0 += rows as i64;
                    }
                }
                Some(ids) => {
                    for g in ids {
                        if let Some(x) = c.get_mut(*g as usize) {
                            *x += 1;
                        }
                    }
                }
            }
        }
    }

    /// Fold input rows (`args` evaluated on one batch) into the groups.
    pub(crate) fn update(
        &mut self,
        ids: Option<&[u32]>,
        ngroups: usize,
        args: &[ArrayRef],
    ) -> Result<()> {
        self.resize(ngroups);
        let n = match args.first() {
            Some(a) => a.len(),
            None => ids.map_or(0, <[u32]>::len),
        };
        match self {
            Acc::Count(c) => {
                let a = arg(args, 0)?;
                let nulls = a.logical_nulls();
                each(ids, n, |i, g| {
                    if valid(nulls.as_ref(), i) {
                        if let Some(c) = c.get_mut(g) {
                            *c += 1
                        }
                    }
                })
            }
            Acc::SumF { sum, seen } => {
                let p = f64s(arg(args, 0)?)?;
                let (vals, nulls) = (p.values(), p.nulls());
                if ids.is_none() && nulls.is_none() {
                    if let (Some(s), Some(z)) = (sum.get_mut(0), seen.get_mut(0)) {
                        *s += super::fused::sum_f64(vals);
                        *z |= !vals.is_empty();
                    }
                } else {
                    each(ids, n, |i, g| {
                        if valid(nulls, i) {
                            if let (Some(s), Some(z)) = (sum.get_mut(g), seen.get_mut(g)) {
                                *s += vals[i];
                                *z = true;
                            }
                        }
                    })
                }
            }
            Acc::SumI { sum, seen } => {
                let (vals, nulls) = i64s(arg(args, 0)?)?;
                let mut overflow = false;
                each(ids, n, |i, g| {
                    if valid(nulls, i) {
                        if let (Some(s), Some(z)) = (sum.get_mut(g), seen.get_mut(g)) {
                            match s.checked_add(vals[i]) {
                                Some(v) => *s = v,
                                None => overflow = true,
                            }
                            *z = true;
                        }
                    }
                });
                if overflow {
                    return Err(type_err(
                        "sum() overflowed BIGINT; cast the argument to DOUBLE",
                    ));
                }
            }
            Acc::Avg { sum, count } => {
                let p = f64s(arg(args, 0)?)?;
                let (vals, nulls) = (p.values(), p.nulls());
                each(ids, n, |i, g| {
                    if valid(nulls, i) {
                        if let (Some(s), Some(c)) = (sum.get_mut(g), count.get_mut(g)) {
                            *s += vals[i];
                            *c += 1;
                        }
                    }
                })
            }
            Acc::MinMaxF { v, seen, max } => {
                let p = f64s(arg(args, 0)?)?;
                let (vals, nulls, max) = (p.values(), p.nulls(), *max);
                each(ids, n, |i, g| {
                    if valid(nulls, i) {
                        if let (Some(m), Some(z)) = (v.get_mut(g), seen.get_mut(g)) {
                            let x = vals[i];
                            if !*z || (max && x > *m) || (!max && x < *m) {
                                *m = x;
                                *z = true;
                            }
                        }
                    }
                })
            }
            Acc::MinMaxI { v, seen, max, .. } => {
                let (vals, nulls) = i64s(arg(args, 0)?)?;
                let max = *max;
                each(ids, n, |i, g| {
                    if valid(nulls, i) {
                        if let (Some(m), Some(z)) = (v.get_mut(g), seen.get_mut(g)) {
                            let x = vals[i];
                            if !*z || (max && x > *m) || (!max && x < *m) {
                                *m = x;
                                *z = true;
                            }
                        }
                    }
                })
            }
            Acc::MinMaxS { v, max } => {
                let a = arg(args, 0)?;
                let s = a
                    .as_string_opt::<i32>()
                    .ok_or_else(|| type_err("min()/max() expected a string"))?;
                let max = *max;
                each(ids, n, |i, g| {
                    if s.is_valid(i) {
                        let x = s.value(i);
                        if let Some(m) = v.get_mut(g) {
                            let better = match m {
                                None => true,
                                Some(cur) => {
                                    (max && x > cur.as_str()) || (!max && x < cur.as_str())
                                }
                            };
                            if better {
                                *m = Some(x.to_string());
                            }
                        }
                    }
                })
            }
            Acc::FirstLast {
                best,
                sources,
                last,
                ..
            } => {
                let value = arg(args, 0)?.clone();
                let (ts, ts_nulls) = i64s(arg(args, 1)?)?;
                let src = sources.len() as u32;
                let last = *last;
                let mut used = false;
                each(ids, n, |i, g| {
                    if !valid(ts_nulls, i) {
                        return;
                    }
                    let t = ts[i];
                    if let Some(b) = best.get_mut(g) {
                        let better = match b {
                            None => true,
                            Some((bt, _, _)) => (last && t >= *bt) || (!last && t < *bt),
                        };
                        if better {
                            *b = Some((t, src, i as u32));
                            used = true;
                        }
                    }
                });
                if used {
                    sources.push(value);
                }
            }
            Acc::Vwap { pv, v, seen } => {
                let p = f64s(arg(args, 0)?)?;
                let q = f64s(arg(args, 1)?)?;
                let (pvals, qvals, pn, qn) = (p.values(), q.values(), p.nulls(), q.nulls());
                if let (None, None, None, Some(a), Some(b), Some(z)) =
                    (ids, pn, qn, pv.get_mut(0), v.get_mut(0), seen.get_mut(0))
                {
                    // Ungrouped without NULLs (VWAP of one symbol): independent accumulators
                    // instead of one serial chain per sum.
                    let m = n.min(pvals.len()).min(qvals.len());
                    let (sp, sv) = vwap_sums(&pvals[..m], &qvals[..m]);
                    *a += sp;
                    *b += sv;
                    *z |= m > 0;
                    return Ok(());
                }
                each(ids, n, |i, g| {
                    if valid(pn, i) && valid(qn, i) {
                        if let (Some(a), Some(b), Some(z)) =
                            (pv.get_mut(g), v.get_mut(g), seen.get_mut(g))
                        {
                            *a += pvals[i] * qvals[i];
                            *b += qvals[i];
                            *z = true;
                        }
                    }
                })
            }
            Acc::Var {
                n: cnt, mean, m2, ..
            } => {
                let p = f64s(arg(args, 0)?)?;
                let (vals, nulls) = (p.values(), p.nulls());
                each(ids, n, |i, g| {
                    if valid(nulls, i) {
                        if let (Some(c), Some(m), Some(s)) =
                            (cnt.get_mut(g), mean.get_mut(g), m2.get_mut(g))
                        {
                            let x = vals[i];
                            *c += 1;
                            let d = x - *m;
                            *m += d / *c as f64;
                            *s += d * (x - *m);
                        }
                    }
                })
            }
            Acc::Quantile { vals, .. } => {
                let p = f64s(arg(args, 0)?)?;
                let (xs, nulls) = (p.values(), p.nulls());
                each(ids, n, |i, g| {
                    if valid(nulls, i) {
                        if let Some(v) = vals.get_mut(g) {
                            v.push(xs[i]);
                        }
                    }
                })
            }
            Acc::Distinct { sets, conv } => {
                let a = arg(args, 0)?;
                let rows = distinct_rows(conv, a)?;
                let nulls = a.logical_nulls();
                each(ids, n, |i, g| {
                    if valid(nulls.as_ref(), i) {
                        if let Some(s) = sets.get_mut(g) {
                            let r = rows.row(i);
                            if !s.contains(r.as_ref()) {
                                s.insert(r.as_ref().into());
                            }
                        }
                    }
                })
            }
        }
        Ok(())
    }

    /// Fold partial states (the columns `state_fields` describes) into the groups.
    pub(crate) fn merge(
        &mut self,
        ids: Option<&[u32]>,
        ngroups: usize,
        st: &[ArrayRef],
    ) -> Result<()> {
        self.resize(ngroups);
        let n = arg(st, 0)?.len();
        match self {
            Acc::Count(c) => {
                let (vals, _) = i64s(arg(st, 0)?)?;
                each(ids, n, |i, g| {
                    if let Some(c) = c.get_mut(g) {
                        *c += vals[i];
                    }
                })
            }
            Acc::SumF { .. }
            | Acc::SumI { .. }
            | Acc::MinMaxF { .. }
            | Acc::MinMaxI { .. }
            | Acc::MinMaxS { .. } => {
                // The state has the same shape as the input: merging is updating.
                self.update(ids, ngroups, st)?;
            }
            Acc::Avg { sum, count } => {
                let s = f64s(arg(st, 0)?)?;
                let (c, _) = i64s(arg(st, 1)?)?;
                each(ids, n, |i, g| {
                    if let (Some(a), Some(b)) = (sum.get_mut(g), count.get_mut(g)) {
                        if s.is_valid(i) {
                            *a += s.value(i);
                        }
                        *b += c[i];
                    }
                })
            }
            Acc::FirstLast { .. } => self.update(ids, ngroups, st)?,
            Acc::Vwap { pv, v, seen } => {
                let a = f64s(arg(st, 0)?)?;
                let b = f64s(arg(st, 1)?)?;
                each(ids, n, |i, g| {
                    if a.is_valid(i) && b.is_valid(i) {
                        if let (Some(x), Some(y), Some(z)) =
                            (pv.get_mut(g), v.get_mut(g), seen.get_mut(g))
                        {
                            *x += a.value(i);
                            *y += b.value(i);
                            *z = true;
                        }
                    }
                })
            }
            Acc::Var {
                n: cnt, mean, m2, ..
            } => {
                let (cs, _) = i64s(arg(st, 0)?)?;
                let ms = f64s(arg(st, 1)?)?;
                let ss = f64s(arg(st, 2)?)?;
                each(ids, n, |i, g| {
                    let nb = cs[i];
                    if nb == 0 {
                        return;
                    }
                    if let (Some(c), Some(m), Some(s)) =
                        (cnt.get_mut(g), mean.get_mut(g), m2.get_mut(g))
                    {
                        let (na, mb, sb) = (*c, ms.value(i), ss.value(i));
                        let total = na + nb;
                        let d = mb - *m;
                        *m += d * nb as f64 / total as f64;
                        *s += sb + d * d * (na as f64) * (nb as f64) / total as f64;
                        *c = total;
                    }
                })
            }
            Acc::Quantile { vals, .. } => {
                let l = arg(st, 0)?
                    .as_list_opt::<i32>()
                    .ok_or_else(|| Error::Internal("percentile state is not a list".into()))?;
                let mut err = None;
                each(ids, n, |i, g| {
                    if l.is_null(i) {
                        return;
                    }
                    let items = l.value(i);
                    match items.as_primitive_opt::<Float64Type>() {
                        Some(p) => {
                            if let Some(v) = vals.get_mut(g) {
                                v.extend_from_slice(p.values());
                            }
                        }
                        None => err = Some(Error::Internal("percentile state items".into())),
                    }
                });
                if let Some(e) = err {
                    return Err(e);
                }
            }
            Acc::Distinct { sets, .. } => {
                let l = arg(st, 0)?
                    .as_list_opt::<i32>()
                    .ok_or_else(|| Error::Internal("distinct state is not a list".into()))?;
                each(ids, n, |i, g| {
                    if l.is_null(i) {
                        return;
                    }
                    let items = l.value(i);
                    if let (Some(b), Some(s)) = (items.as_binary_opt::<i32>(), sets.get_mut(g)) {
                        for k in b.iter().flatten() {
                            if !s.contains(k) {
                                s.insert(k.into());
                            }
                        }
                    }
                })
            }
        }
        Ok(())
    }

    /// The partial state, one row per group.
    pub(crate) fn state(&mut self, g: usize) -> Result<Vec<ArrayRef>> {
        self.resize(g);
        Ok(match self {
            Acc::Count(c) => vec![Arc::new(Int64Array::from(c.clone())) as ArrayRef],
            Acc::SumF { .. }
            | Acc::SumI { .. }
            | Acc::MinMaxF { .. }
            | Acc::MinMaxI { .. }
            | Acc::MinMaxS { .. } => {
                vec![self.finish(g)?]
            }
            Acc::Avg { sum, count } => vec![
                Arc::new(Float64Array::from(sum.clone())) as ArrayRef,
                Arc::new(Int64Array::from(count.clone())),
            ],
            Acc::FirstLast {
                best, sources, t, ..
            } => {
                let value = gather(best, sources, t)?;
                let ts: Vec<Option<i64>> = best.iter().map(|b| b.map(|b| b.0)).collect();
                vec![
                    value,
                    Arc::new(PrimitiveArray::<TimestampNanosecondType>::from(ts)),
                ]
            }
            Acc::Vwap { pv, v, seen } => vec![opt_f64(pv, seen), opt_f64(v, seen)],
            Acc::Var { n, mean, m2, .. } => vec![
                Arc::new(Int64Array::from(n.clone())) as ArrayRef,
                Arc::new(Float64Array::from(mean.clone())),
                Arc::new(Float64Array::from(m2.clone())),
            ],
            Acc::Quantile { vals, .. } => {
                let mut b = ListBuilder::new(Float64Builder::new());
                for v in vals.iter_mut() {
                    v.sort_unstable_by(f64::total_cmp);
                    b.values().append_slice(v);
                    b.append(true);
                }
                vec![Arc::new(b.finish()) as ArrayRef]
            }
            Acc::Distinct { sets, .. } => {
                let mut b = ListBuilder::new(BinaryBuilder::new());
                for s in sets.iter() {
                    for k in s {
                        b.values().append_value(k);
                    }
                    b.append(true);
                }
                vec![Arc::new(b.finish()) as ArrayRef]
            }
        })
    }

    /// The final values, one row per group.
    pub(crate) fn finish(&mut self, g: usize) -> Result<ArrayRef> {
        self.resize(g);
        Ok(match self {
            Acc::Count(c) => Arc::new(Int64Array::from(c.clone())),
            Acc::SumF { sum, seen } => opt_f64(sum, seen),
            Acc::SumI { sum, seen } => opt_i64(sum, seen, &DataType::Int64)?,
            Acc::Avg { sum, count } => {
                let out: Float64Array = sum
                    .iter()
                    .zip(count.iter())
                    .map(|(s, c)| (*c > 0).then(|| s / *c as f64))
                    .collect();
                Arc::new(out)
            }
            Acc::MinMaxF { v, seen, .. } => opt_f64(v, seen),
            Acc::MinMaxI { v, seen, t, .. } => opt_i64(v, seen, t)?,
            Acc::MinMaxS { v, .. } => {
                Arc::new(v.iter().map(|s| s.as_deref()).collect::<StringArray>())
            }
            Acc::FirstLast {
                best, sources, t, ..
            } => gather(best, sources, t)?,
            Acc::Vwap { pv, v, seen } => {
                let out: Float64Array = pv
                    .iter()
                    .zip(v.iter())
                    .zip(seen.iter())
                    .map(|((a, b), z)| (*z && *b != 0.0).then(|| a / b))
                    .collect();
                Arc::new(out)
            }
            Acc::Var { n, m2, stddev, .. } => {
                let sd = *stddev;
                let out: Float64Array = n
                    .iter()
                    .zip(m2.iter())
                    .map(|(c, s)| {
                        (*c > 1).then(|| {
                            let var = (s / (*c - 1) as f64).max(0.0);
                            if sd {
                                var.sqrt()
                            } else {
                                var
                            }
                        })
                    })
                    .collect();
                Arc::new(out)
            }
            Acc::Quantile { vals, q } => {
                let q = *q;
                let out: Float64Array = vals
                    .iter_mut()
                    .map(|v| {
                        if v.is_empty() {
                            return None;
                        }
                        v.sort_unstable_by(f64::total_cmp);
                        let pos = q * (v.len() - 1) as f64;
                        let lo = pos.floor() as usize;
                        let hi = pos.ceil() as usize;
                        let (a, b) = (*v.get(lo)?, *v.get(hi)?);
                        Some(a + (b - a) * (pos - lo as f64))
                    })
                    .collect();
                Arc::new(out)
            }
            Acc::Distinct { sets, .. } => Arc::new(Int64Array::from(
                sets.iter().map(|s| s.len() as i64).collect::<Vec<_>>(),
            )),
        })
    }
}

fn distinct_rows(conv: &mut Option<RowConverter>, a: &ArrayRef) -> Result<Rows> {
    if conv.is_none() {
        *conv = Some(RowConverter::new(vec![SortField::new(
            a.data_type().clone(),
        )])?);
    }
    let c = conv
        .as_ref()
        .ok_or_else(|| Error::Internal("row converter".into()))?;
    Ok(c.convert_columns(std::slice::from_ref(a))?)
}

fn gather(
    best: &[Option<(i64, u32, u32)>],
    sources: &[ArrayRef],
    t: &DataType,
) -> Result<ArrayRef> {
    // Slot 0 is a one-row NULL array for groups that saw no row.
    let null = arrow::array::new_null_array(t, 1);
    let mut arrays: Vec<&dyn Array> = vec![null.as_ref()];
    arrays.extend(sources.iter().map(|s| s.as_ref()));
    let idx: Vec<(usize, usize)> = best
        .iter()
        .map(|b| match b {
            Some((_, s, r)) => (*s as usize + 1, *r as usize),
            None => (0, 0),
        })
        .collect();
    Ok(interleave(&arrays, &idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variance_merge_matches_single_pass() {
        let agg = AggExpr {
            func: AggFunc::Variance,
            args: vec![],
            input_type: DataType::Float64,
            name: "v".into(),
        };
        let xs: Vec<f64> = (0..100)
            .map(|i| ((i * 37) % 23) as f64 * 1.5 + 1e6)
            .collect();
        let mut one = Acc::new(&agg).unwrap();
        one.update(
            None,
            1,
            &[Arc::new(Float64Array::from(xs.clone())) as ArrayRef],
        )
        .unwrap();
        let single = one.finish(1).unwrap();
        let mut merged = Acc::new(&agg).unwrap();
        for part in xs.chunks(17) {
            let mut p = Acc::new(&agg).unwrap();
            p.update(
                None,
                1,
                &[Arc::new(Float64Array::from(part.to_vec())) as ArrayRef],
            )
            .unwrap();
            merged.merge(None, 1, &p.state(1).unwrap()).unwrap();
        }
        let m = merged.finish(1).unwrap();
        let (a, b) = (
            single.as_primitive::<Float64Type>().value(0),
            m.as_primitive::<Float64Type>().value(0),
        );
        assert!((a - b).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {b}");
    }
}
