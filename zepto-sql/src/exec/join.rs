//! Joins: an equality hash join (inner / left, with an optional residual condition) and
//! the ASOF join (for each left row, the latest right row with the same key at or before
//! its timestamp). Both build on the right input and stream the left.
//!
//! HOT PATH: the probe loops; keys are compared as `arrow-row` byte strings.

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, SchemaRef, TimestampNanosecondType};
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;
use crate::exec::groups::key_type;
use crate::exec::{collect, make_batch, run, ExecCtx, Sink};
use crate::expr::Expr;
use crate::plan::{JoinKind, Node};

/// Join output is emitted in batches of at most this many rows.
const JOIN_CHUNK: usize = 64 * 1024;

struct KeyRows {
    rows: Option<Rows>,
    /// Row has a NULL in some key (never matches).
    null: Vec<bool>,
}

fn key_rows(conv: Option<&RowConverter>, keys: &[Expr], b: &RecordBatch) -> Result<KeyRows> {
    let n = b.num_rows();
    let mut null = vec![false; n];
    let conv = match conv {
        None => return Ok(KeyRows { rows: None, null }),
        Some(c) => c,
    };
    let mut cols = vec![];
    for k in keys {
        let a = k.eval_array(b)?;
        let t = key_type(a.data_type());
        let a = if a.data_type() == &t {
            a
        } else {
            cast(&a, &t)?
        };
        if let Some(nb) = a.logical_nulls() {
            for (i, x) in null.iter_mut().enumerate() {
                *x |= nb.is_null(i);
            }
        }
        cols.push(a);
    }
    Ok(KeyRows {
        rows: Some(conv.convert_columns(&cols)?),
        null,
    })
}

fn converter(
    keys: &[Expr],
    schema: &SchemaRef,
    other: &[Expr],
    other_schema: &SchemaRef,
) -> Result<Option<RowConverter>> {
    if keys.is_empty() {
        return Ok(None);
    }
    let mut fields = vec![];
    for (k, o) in keys.iter().zip(other) {
        let t = key_type(&k.data_type(schema)?);
        let ot = key_type(&o.data_type(other_schema)?);
        if t != ot {
            return Err(crate::error::type_err(format!(
                "join keys have different types: {t} and {ot}"
            )));
        }
        fields.push(SortField::new(t));
    }
    Ok(Some(RowConverter::new(fields)?))
}

fn right_batch(right: &Node, ctx: &ExecCtx) -> Result<(RecordBatch, usize)> {
    let rs = right.schema();
    let batches = collect(right, ctx)?;
    let bytes = super::batch_bytes(&batches);
    ctx.charge(bytes, "building a join table")?;
    let all = concat_batches(&rs, &batches)?;
    Ok((all, bytes * 2))
}

fn joined(
    schema: &SchemaRef,
    l: &RecordBatch,
    li: &UInt32Array,
    r: &RecordBatch,
    ri: &UInt32Array,
) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for c in l.columns() {
        cols.push(take(c.as_ref(), li, None)?);
    }
    for c in r.columns() {
        cols.push(take(c.as_ref(), ri, None)?);
    }
    // Output fields may be nullable where inputs were not; types are unchanged.
    make_batch(schema, cols, li.len())
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn hash_join(
    left: &Node,
    right: &Node,
    kind: JoinKind,
    left_keys: &[Expr],
    right_keys: &[Expr],
    filter: Option<&Expr>,
    schema: &SchemaRef,
    ctx: &ExecCtx,
    sink: &mut Sink<'_>,
) -> Result<bool> {
    let (r, charged) = right_batch(right, ctx)?;
    let conv = converter(right_keys, &right.schema(), left_keys, &left.schema())?;
    let rk = key_rows(conv.as_ref(), right_keys, &r)?;
    // Chained hash table: head per key, next per row.
    let nr = r.num_rows();
    let mut next = vec![u32::MAX; nr];
    let mut heads: HashMap<&[u8], u32> = HashMap::new();
    let mut all_head = u32::MAX;
    for i in (0..nr).rev() {
        if rk.null.get(i).copied().unwrap_or(true) {
            continue;
        }
        let slot = match &rk.rows {
            Some(rows) => heads.entry(rows.row(i).data()).or_insert(u32::MAX),
            None => &mut all_head,
        };
        if let Some(nx) = next.get_mut(i) {
            *nx = *slot;
        }
        *slot = i as u32;
    }
    ctx.charge(nr * 24, "building a join table")?;
    let res = run(left, ctx, &mut |lb| {
        ctx.check_deadline()?;
        let lk = key_rows(conv.as_ref(), left_keys, &lb)?;
        let track = kind == JoinKind::Left && filter.is_some();
        let mut has = vec![false; if track { lb.num_rows() } else { 0 }];
        let mut li: Vec<u32> = Vec::with_capacity(lb.num_rows().min(JOIN_CHUNK));
        let mut ri: Vec<Option<u32>> = Vec::with_capacity(lb.num_rows().min(JOIN_CHUNK));
        // Emit pairs in bounded chunks, so that a many-to-many join streams instead of
        // building one enormous batch (and the deadline is checked as it goes).
        let mut flush =
            |li: &mut Vec<u32>, ri: &mut Vec<Option<u32>>, has: &mut Vec<bool>| -> Result<bool> {
                if li.is_empty() {
                    return Ok(true);
                }
                ctx.check_deadline()?;
                let lia = UInt32Array::from(std::mem::take(li));
                let ria = UInt32Array::from(std::mem::take(ri));
                let mut out = joined(schema, &lb, &lia, &r, &ria)?;
                if let Some(f) = filter {
                    let mask = f.eval_mask(&out)?;
                    if track {
                        for (k, l) in lia.values().iter().enumerate() {
                            if mask.value(k) {
                                if let Some(h) = has.get_mut(*l as usize) {
                                    *h = true;
                                }
                            }
                        }
                    }
                    out = arrow::compute::filter_record_batch(&out, &mask)?;
                }
                if out.num_rows() == 0 {
                    return Ok(true);
                }
                sink(out)
            };
        for i in 0..lb.num_rows() {
            let mut h = if lk.null.get(i).copied().unwrap_or(true) {
                u32::MAX
            } else {
                match &lk.rows {
                    Some(rows) => heads.get(rows.row(i).data()).copied().unwrap_or(u32::MAX),
                    None => all_head,
                }
            };
            let mut matched = false;
            while h != u32::MAX {
                li.push(i as u32);
                ri.push(Some(h));
                matched = true;
                h = next.get(h as usize).copied().unwrap_or(u32::MAX);
                if li.len() >= JOIN_CHUNK && !flush(&mut li, &mut ri, &mut has)? {
                    return Ok(false);
                }
            }
            if !matched && kind == JoinKind::Left && filter.is_none() {
                li.push(i as u32);
                ri.push(None);
            }
        }
        if !flush(&mut li, &mut ri, &mut has)? {
            return Ok(false);
        }
        if track {
            // Rows whose every candidate failed the ON condition come back NULL-extended.
            let missing: Vec<u32> = has
                .iter()
                .enumerate()
                .filter(|(_, h)| !**h)
                .map(|(i, _)| i as u32)
                .collect();
            if !missing.is_empty() {
                let nulls = UInt32Array::from(vec![None::<u32>; missing.len()]);
                let extra = joined(schema, &lb, &UInt32Array::from(missing), &r, &nulls)?;
                return sink(extra);
            }
        }
        Ok(true)
    });
    ctx.release(charged + nr * 24);
    res
}

fn ts_values(a: &ArrayRef) -> Result<(Vec<i64>, Option<arrow::buffer::NullBuffer>)> {
    match a.data_type() {
        DataType::Timestamp(_, _) => {
            let p = a.as_primitive::<TimestampNanosecondType>();
            Ok((p.values().to_vec(), p.nulls().cloned()))
        }
        DataType::Int64 => {
            let p = a.as_primitive::<arrow::datatypes::Int64Type>();
            Ok((p.values().to_vec(), p.nulls().cloned()))
        }
        t => Err(crate::error::type_err(format!(
            "ASOF JOIN needs TIMESTAMP columns, found {t}"
        ))),
    }
}

/// The match condition of an ASOF join.
#[derive(Debug)]
pub(crate) struct AsofKeys<'a> {
    pub(crate) left_keys: &'a [Expr],
    pub(crate) right_keys: &'a [Expr],
    pub(crate) left_ts: &'a Expr,
    pub(crate) right_ts: &'a Expr,
    pub(crate) strict: bool,
}

pub(crate) fn asof_join(
    left: &Node,
    right: &Node,
    k: &AsofKeys<'_>,
    schema: &SchemaRef,
    ctx: &ExecCtx,
    sink: &mut Sink<'_>,
) -> Result<bool> {
    let AsofKeys {
        left_keys,
        right_keys,
        left_ts,
        right_ts,
        strict,
    } = *k;
    let (r, charged) = right_batch(right, ctx)?;
    let conv = converter(right_keys, &right.schema(), left_keys, &left.schema())?;
    let rk = key_rows(conv.as_ref(), right_keys, &r)?;
    let (rts, rts_nulls) = ts_values(&right_ts.eval_array(&r)?)?;
    // Per key: right row ids sorted by timestamp (stable: equal timestamps keep scan order,
    // and the last of them wins).
    let mut by_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
    let mut all: Vec<u32> = vec![];
    for i in 0..r.num_rows() {
        if rk.null.get(i).copied().unwrap_or(true)
            || rts_nulls.as_ref().is_some_and(|n| n.is_null(i))
        {
            continue;
        }
        match &rk.rows {
            Some(rows) => by_key.entry(rows.row(i).data()).or_default().push(i as u32),
            None => all.push(i as u32),
        }
    }
    let ts_of = |i: &u32| rts.get(*i as usize).copied().unwrap_or(i64::MAX);
    for v in by_key.values_mut() {
        v.sort_by_key(ts_of);
    }
    all.sort_by_key(ts_of);
    ctx.charge(r.num_rows() * 8, "building an ASOF index")?;
    let res = run(left, ctx, &mut |lb| {
        ctx.check_deadline()?;
        let lk = key_rows(conv.as_ref(), left_keys, &lb)?;
        let (lts, lts_nulls) = ts_values(&left_ts.eval_array(&lb)?)?;
        let mut ri: Vec<Option<u32>> = Vec::with_capacity(lb.num_rows());
        for i in 0..lb.num_rows() {
            if lk.null.get(i).copied().unwrap_or(true)
                || lts_nulls.as_ref().is_some_and(|n| n.is_null(i))
            {
                ri.push(None);
                continue;
            }
            let cands: Option<&Vec<u32>> = match &lk.rows {
                Some(rows) => by_key.get(rows.row(i).data()),
                None => Some(&all),
            };
            let t = lts.get(i).copied().unwrap_or(i64::MIN);
            ri.push(cands.and_then(|c| {
                let p = if strict {
                    c.partition_point(|x| ts_of(x) < t)
                } else {
                    c.partition_point(|x| ts_of(x) <= t)
                };
                if p == 0 {
                    None
                } else {
                    c.get(p - 1).copied()
                }
            }));
        }
        let li = UInt32Array::from_iter_values(0..lb.num_rows() as u32);
        let out = joined(schema, &lb, &li, &r, &UInt32Array::from(ri))?;
        sink(out)
    });
    ctx.release(charged + r.num_rows() * 8);
    res
}
