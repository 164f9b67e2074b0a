//! Fused aggregate kernels: `sum(x * y)` over two numeric columns without materialising the
//! product (or the `CAST` of an integer column) as an array, and an 8-lane `f64` sum.
//!
//! HOT PATH: these loops run over every row of a full-table aggregate. Eight independent
//! accumulators let the CPU keep several additions in flight (a single running sum waits
//! for each addition before the next); the result differs from a left-to-right sum only in
//! floating-point rounding.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};

use crate::expr::{BinOp, Expr};
use crate::plan::agg::{AggExpr, AggFunc};

/// The two input columns of an ungrouped `sum(a * b)` whose result is DOUBLE, where `a` and
/// `b` are columns (possibly cast to DOUBLE); `None` for any other aggregate.
pub(crate) fn sum_of_product(a: &AggExpr) -> Option<(usize, usize)> {
    if a.func != AggFunc::Sum || a.input_type != DataType::Float64 {
        return None;
    }
    match a.args.first()? {
        Expr::Binary {
            op: BinOp::Mul,
            left,
            right,
        } => Some((column_as_f64(left)?, column_as_f64(right)?)),
        _ => None,
    }
}

fn column_as_f64(e: &Expr) -> Option<usize> {
    match e {
        Expr::Column(i) => Some(*i),
        Expr::Cast {
            expr,
            to: DataType::Float64,
        } => match expr.as_ref() {
            Expr::Column(i) => Some(*i),
            _ => None,
        },
        _ => None,
    }
}

/// `sum(x[i] * y[i])` of columns `x` and `y` of `b` as DOUBLE, when both are DOUBLE or BIGINT
/// without NULLs; `None` otherwise (the caller evaluates the expression instead).
pub(crate) fn dot(b: &RecordBatch, x: usize, y: usize) -> Option<f64> {
    let (xa, ya) = (b.columns().get(x)?, b.columns().get(y)?);
    if xa.null_count() > 0 || ya.null_count() > 0 {
        return None;
    }
    let f = |v: f64| v;
    let i = |v: i64| v as f64;
    Some(match (xa.data_type(), ya.data_type()) {
        (DataType::Float64, DataType::Float64) => lanes(
            xa.as_primitive::<Float64Type>().values(),
            ya.as_primitive::<Float64Type>().values(),
            f,
            f,
        ),
        (DataType::Float64, DataType::Int64) => lanes(
            xa.as_primitive::<Float64Type>().values(),
            ya.as_primitive::<Int64Type>().values(),
            f,
            i,
        ),
        (DataType::Int64, DataType::Float64) => lanes(
            xa.as_primitive::<Int64Type>().values(),
            ya.as_primitive::<Float64Type>().values(),
            i,
            f,
        ),
        (DataType::Int64, DataType::Int64) => lanes(
            xa.as_primitive::<Int64Type>().values(),
            ya.as_primitive::<Int64Type>().values(),
            i,
            i,
        ),
        _ => return None,
    })
}

const LANES: usize = 8;

#[inline]
fn lanes<A: Copy, B: Copy>(x: &[A], y: &[B], fx: impl Fn(A) -> f64, fy: impl Fn(B) -> f64) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f64; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for ((s, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *s += fx(a) * fy(b);
        }
    }
    let mut tail = 0.0;
    for (a, b) in xr.iter().zip(yr) {
        tail += fx(*a) * fy(*b);
    }
    acc.iter().sum::<f64>() + tail
}

/// Sum of `v` with eight accumulators.
pub(crate) fn sum_f64(v: &[f64]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let c = v.chunks_exact(LANES);
    let tail: f64 = c.remainder().iter().sum();
    for a in c {
        for (s, &a) in acc.iter_mut().zip(a) {
            *s += a;
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn dot_matches_the_plain_loop() {
        for n in [0usize, 1, 7, 8, 9, 100, 1001] {
            let p: Vec<f64> = (0..n).map(|i| 100.0 + (i % 37) as f64 * 0.25).collect();
            let v: Vec<i64> = (0..n).map(|i| 1 + (i as i64 * 7919) % 1000).collect();
            let schema = Arc::new(Schema::new(vec![
                Field::new("p", DataType::Float64, true),
                Field::new("v", DataType::Int64, true),
            ]));
            let b = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Float64Array::from(p.clone())),
                    Arc::new(Int64Array::from(v.clone())),
                ],
            )
            .unwrap();
            let want: f64 = p.iter().zip(&v).map(|(a, b)| a * *b as f64).sum();
            for (x, y) in [(0, 1), (1, 0)] {
                let got = dot(&b, x, y).unwrap();
                assert!(
                    (got - want).abs() <= want.abs() * 1e-12,
                    "{n}: {got} vs {want}"
                );
            }
            assert_eq!(
                dot(&b, 1, 1).unwrap(),
                v.iter().map(|x| (x * x) as f64).sum::<f64>()
            );
            let s = sum_f64(&p);
            assert!((s - p.iter().sum::<f64>()).abs() <= 1e-9 * s.abs().max(1.0));
        }
    }

    #[test]
    fn dot_declines_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("p", DataType::Float64, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![Some(1.0), None])),
                Arc::new(Float64Array::from(vec![Some(2.0), Some(3.0)])),
            ],
        )
        .unwrap();
        assert_eq!(dot(&b, 0, 1), None);
        assert_eq!(dot(&b, 1, 1), Some(13.0));
        assert_eq!(dot(&b, 5, 1), None);
    }
}
