//! Scalar functions: math, strings, `coalesce`, and the time functions (`xbar`, `date_trunc`,
//! `date_bin`, `extract`).
//!
//! HOT PATH: called per batch; loops run over `&[i64]` / `&[f64]` value slices and keep the
//! input's null buffer.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, PrimitiveArray, RecordBatch, StringArray,
};
use arrow::compute::kernels::{boolean, zip::zip};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampNanosecondType};

use crate::error::{type_err, Error, Result};
use crate::expr::{Expr, Func, Val};
use crate::time;

fn arg(args: &[Expr], i: usize) -> Result<&Expr> {
    args.get(i)
        .ok_or_else(|| Error::Internal(format!("missing argument {i}")))
}

fn f64_unary(a: &ArrayRef, f: impl Fn(f64) -> f64) -> Result<ArrayRef> {
    let p = a
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| type_err(format!("expected DOUBLE, found {}", a.data_type())))?;
    let out: Float64Array = p.unary(f);
    Ok(Arc::new(out))
}

/// `i64` view of an Int64 or Timestamp array (same physical layout).
fn i64_values(a: &ArrayRef) -> Result<(&[i64], Option<&arrow::buffer::NullBuffer>)> {
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

fn ts_array(values: Vec<i64>, nulls: Option<&arrow::buffer::NullBuffer>) -> ArrayRef {
    Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(
        values.into(),
        nulls.cloned(),
    ))
}

fn const_i64(e: &Expr, what: &str) -> Result<i64> {
    match e {
        Expr::Literal(crate::expr::Scalar::Int(v)) => Ok(*v),
        _ => Err(type_err(format!(
            "{what} must be a constant integer or INTERVAL"
        ))),
    }
}

pub(crate) fn eval_func(func: Func, args: &[Expr], batch: &RecordBatch) -> Result<Val> {
    let n = batch.num_rows();
    let all_const = args.iter().all(Expr::is_constant);
    let rows = if all_const { 1 } else { n };
    let a0 = || -> Result<ArrayRef> { arg(args, 0)?.eval(batch)?.into_array(rows) };
    let out: ArrayRef = match func {
        Func::Abs => {
            let a = a0()?;
            match a.data_type() {
                DataType::Int64 => Arc::new(
                    a.as_primitive::<Int64Type>()
                        .unary::<_, Int64Type>(|v| v.wrapping_abs()),
                ),
                _ => f64_unary(&a, f64::abs)?,
            }
        }
        Func::Round => {
            let a = a0()?;
            let digits = match args.get(1) {
                Some(e) => const_i64(e, "round() digits")?,
                None => 0,
            };
            let scale = 10f64.powi(digits.clamp(-300, 300) as i32);
            f64_unary(&a, move |v| (v * scale).round() / scale)?
        }
        Func::RoundEven => f64_unary(&a0()?, f64::round_ties_even)?,
        Func::Floor => f64_unary(&a0()?, f64::floor)?,
        Func::Ceil => f64_unary(&a0()?, f64::ceil)?,
        Func::Sqrt => null_nan(f64_unary(&a0()?, f64::sqrt)?)?,
        Func::Ln => null_nan(f64_unary(&a0()?, f64::ln)?)?,
        Func::Log10 => null_nan(f64_unary(&a0()?, f64::log10)?)?,
        Func::Exp => f64_unary(&a0()?, f64::exp)?,
        Func::Power => {
            let a = a0()?;
            let b = arg(args, 1)?.eval(batch)?.into_array(rows)?;
            let (a, b) = (
                a.as_primitive::<Float64Type>(),
                b.as_primitive_opt::<Float64Type>()
                    .ok_or_else(|| type_err("power() needs DOUBLE arguments"))?,
            );
            let out: Float64Array = arrow::compute::binary(a, b, f64::powf)?;
            Arc::new(out)
        }
        Func::Upper | Func::Lower | Func::Length => {
            let a = a0()?;
            let s = arrow::compute::cast(&a, &DataType::Utf8)?;
            let s = s.as_string::<i32>();
            match func {
                Func::Length => {
                    let out: Int64Array = s
                        .iter()
                        .map(|v| v.map(|v| v.chars().count() as i64))
                        .collect();
                    Arc::new(out)
                }
                Func::Upper => Arc::new(
                    s.iter()
                        .map(|v| v.map(str::to_uppercase))
                        .collect::<StringArray>(),
                ),
                _ => Arc::new(
                    s.iter()
                        .map(|v| v.map(str::to_lowercase))
                        .collect::<StringArray>(),
                ),
            }
        }
        Func::Concat => {
            let a = a0()?;
            let b = arg(args, 1)?.eval(batch)?.into_array(rows)?;
            let (a, b) = (
                arrow::compute::cast(&a, &DataType::Utf8)?,
                arrow::compute::cast(&b, &DataType::Utf8)?,
            );
            Arc::new(
                arrow::compute::kernels::concat_elements::concat_elements_utf8(
                    a.as_string::<i32>(),
                    b.as_string::<i32>(),
                )?,
            )
        }
        Func::Coalesce => {
            let mut acc: Option<ArrayRef> = None;
            for e in args.iter().rev() {
                let v = e.eval(batch)?.into_array(rows)?;
                acc = Some(match acc {
                    None => v,
                    Some(rest) => {
                        let present = boolean::is_not_null(v.as_ref())?;
                        zip(&present, &v, &rest)?
                    }
                });
            }
            acc.ok_or_else(|| type_err("coalesce() needs arguments"))?
        }
        Func::Xbar => {
            let a = a0()?;
            let bucket = arg(args, 1)?;
            match a.data_type() {
                DataType::Float64 => {
                    let b = match bucket {
                        Expr::Literal(crate::expr::Scalar::Float(f)) => *f,
                        Expr::Literal(crate::expr::Scalar::Int(i)) => *i as f64,
                        _ => return Err(type_err("xbar() bucket must be a constant")),
                    };
                    if b <= 0.0 {
                        return Err(type_err("xbar() bucket must be positive"));
                    }
                    f64_unary(&a, move |v| (v / b).floor() * b)?
                }
                _ => {
                    let b = const_i64(bucket, "xbar() bucket")?;
                    if b <= 0 {
                        return Err(type_err("xbar() bucket must be positive"));
                    }
                    let (vals, nulls) = i64_values(&a)?;
                    let out: Vec<i64> = vals.iter().map(|v| v.div_euclid(b) * b).collect();
                    if matches!(a.data_type(), DataType::Timestamp(_, _)) {
                        ts_array(out, nulls)
                    } else {
                        Arc::new(Int64Array::new(out.into(), nulls.cloned()))
                    }
                }
            }
        }
        Func::DateTrunc(unit) => {
            let a = arg(args, 1)?.eval(batch)?.into_array(rows)?;
            let (vals, nulls) = i64_values(&a)?;
            let out: Vec<i64> = match unit.fixed_nanos() {
                Some(step) if unit != time::TimeUnit::Week => {
                    vals.iter().map(|v| v.div_euclid(step) * step).collect()
                }
                _ => vals.iter().map(|v| time::trunc(*v, unit)).collect(),
            };
            ts_array(out, nulls)
        }
        Func::DateBin => {
            let stride = const_i64(arg(args, 0)?, "date_bin() stride")?;
            if stride <= 0 {
                return Err(type_err("date_bin() stride must be positive"));
            }
            let origin = match args.get(2) {
                Some(Expr::Literal(crate::expr::Scalar::Ts(o))) => *o,
                Some(Expr::Literal(crate::expr::Scalar::Int(o))) => *o,
                Some(_) => return Err(type_err("date_bin() origin must be a constant timestamp")),
                None => 0,
            };
            let a = arg(args, 1)?.eval(batch)?.into_array(rows)?;
            let (vals, nulls) = i64_values(&a)?;
            let out: Vec<i64> = vals
                .iter()
                .map(|v| (v.wrapping_sub(origin)).div_euclid(stride) * stride + origin)
                .collect();
            ts_array(out, nulls)
        }
        Func::Extract(unit) => {
            let a = a0()?;
            let (vals, nulls) = i64_values(&a)?;
            let out: Vec<i64> = vals.iter().map(|v| time::extract(*v, unit)).collect();
            Arc::new(Int64Array::new(out.into(), nulls.cloned()))
        }
    };
    Ok(if all_const && n != 1 {
        Val::Scalar(arrow::array::Scalar::new(out))
    } else {
        Val::Array(out)
    })
}

/// sqrt/ln of negative numbers: NULL rather than NaN, as in most SQL engines.
fn null_nan(a: ArrayRef) -> Result<ArrayRef> {
    let p = a.as_primitive::<Float64Type>();
    let ok: arrow::array::BooleanArray = p
        .iter()
        .map(|v| Some(v.is_some_and(|v| !v.is_nan())))
        .collect();
    Ok(arrow::compute::nullif(&a, &boolean::not(&ok)?)?)
}
