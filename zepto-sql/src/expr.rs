//! Bound scalar expressions and their vectorized evaluation over Arrow record batches.
//!
//! HOT PATH: `Expr::eval` runs once per batch for every filter and projection. It works on
//! whole arrays with Arrow kernels or tight loops over value slices; nothing allocates per row.
//! Types are settled by the binder (`plan/bind.rs` inserts casts), so evaluation never guesses.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Datum, Float64Array, Int64Array, PrimitiveArray,
    RecordBatch, RecordBatchOptions, Scalar as ArrowScalar, StringArray, TimestampNanosecondArray,
    UInt32Array,
};
use arrow::compute::kernels::{boolean, cmp, numeric, zip::zip};
use arrow::compute::{cast_with_options, prep_null_mask_filter, take, CastOptions};
use arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, SchemaRef, TimeUnit as ArrowTimeUnit,
    TimestampNanosecondType,
};

use crate::error::{type_err, Error, Result};
use crate::time::{self, TimeUnit};

/// A constant value known when the query is planned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Nanoseconds since the epoch.
    Ts(i64),
}

impl Scalar {
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Scalar::Null => DataType::Null,
            Scalar::Bool(_) => DataType::Boolean,
            Scalar::Int(_) => DataType::Int64,
            Scalar::Float(_) => DataType::Float64,
            Scalar::Str(_) => DataType::Utf8,
            Scalar::Ts(_) => ts_type(),
        }
    }

    /// A one-element array holding the value.
    pub(crate) fn to_array(&self) -> ArrayRef {
        match self {
            Scalar::Null => arrow::array::new_null_array(&DataType::Null, 1),
            Scalar::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
            Scalar::Int(v) => Arc::new(Int64Array::from(vec![*v])),
            Scalar::Float(v) => Arc::new(Float64Array::from(vec![*v])),
            Scalar::Str(s) => Arc::new(StringArray::from(vec![s.as_str()])),
            Scalar::Ts(v) => Arc::new(TimestampNanosecondArray::from(vec![*v])),
        }
    }

    /// The value at `i` of an array (used for subquery results and literals, never per row
    /// on a hot path).
    pub(crate) fn from_array(a: &dyn Array, i: usize) -> Result<Scalar> {
        if i >= a.len() {
            return Err(Error::Internal(format!("index {i} out of {}", a.len())));
        }
        if a.is_null(i) {
            return Ok(Scalar::Null);
        }
        Ok(match a.data_type() {
            DataType::Boolean => Scalar::Bool(a.as_boolean().value(i)),
            DataType::Int32 => Scalar::Int(i64::from(a.as_primitive::<Int32Type>().value(i))),
            DataType::Int64 => Scalar::Int(a.as_primitive::<Int64Type>().value(i)),
            DataType::Float64 => Scalar::Float(a.as_primitive::<Float64Type>().value(i)),
            DataType::Utf8 => Scalar::Str(a.as_string::<i32>().value(i).to_string()),
            DataType::Timestamp(ArrowTimeUnit::Nanosecond, _) => {
                Scalar::Ts(a.as_primitive::<TimestampNanosecondType>().value(i))
            }
            DataType::Dictionary(_, _) => {
                let s =
                    cast_with_options(&a.slice(i, 1), &DataType::Utf8, &CastOptions::default())?;
                Scalar::from_array(s.as_ref(), 0)?
            }
            DataType::Null => Scalar::Null,
            other => return Err(type_err(format!("unsupported value type {other}"))),
        })
    }
}

/// `Timestamp(Nanosecond, None)`, the only timestamp type zeptodb uses.
pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(ArrowTimeUnit::Nanosecond, None)
}

/// True for the numeric types expressions compute on.
pub(crate) fn is_numeric(t: &DataType) -> bool {
    matches!(t, DataType::Int32 | DataType::Int64 | DataType::Float64)
}

/// True for string-like types (plain or dictionary-encoded).
pub(crate) fn is_stringy(t: &DataType) -> bool {
    matches!(t, DataType::Utf8)
        || matches!(t, DataType::Dictionary(_, v) if v.as_ref() == &DataType::Utf8)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

impl BinOp {
    pub(crate) fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq
        )
    }
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Eq => "=",
            BinOp::NotEq => "<>",
            BinOp::Lt => "<",
            BinOp::LtEq => "<=",
            BinOp::Gt => ">",
            BinOp::GtEq => ">=",
            BinOp::And => "AND",
            BinOp::Or => "OR",
        }
    }
    /// The operator with its operands swapped (`a < b` == `b > a`).
    pub(crate) fn flip(self) -> BinOp {
        match self {
            BinOp::Lt => BinOp::Gt,
            BinOp::LtEq => BinOp::GtEq,
            BinOp::Gt => BinOp::Lt,
            BinOp::GtEq => BinOp::LtEq,
            o => o,
        }
    }
}

/// Scalar functions (aggregates and window functions live in their own modules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Abs,
    Round,
    /// Round half to even (for DOUBLE -> integer casts, as PostgreSQL and DuckDB do).
    RoundEven,
    Floor,
    Ceil,
    Sqrt,
    Ln,
    Log10,
    Exp,
    Power,
    Upper,
    Lower,
    Length,
    /// `a || b` (NULL if either is NULL).
    Concat,
    Coalesce,
    /// `xbar(x, bucket)`: `x` rounded down to a multiple of `bucket`.
    Xbar,
    /// `date_trunc(unit, ts)`; the unit is the first argument, a literal.
    DateTrunc(TimeUnit),
    /// `date_bin(stride, ts [, origin])`.
    DateBin,
    /// `extract(field FROM ts)`.
    Extract(TimeUnit),
}

/// A bound expression: column references are indexes into the input batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Column(usize),
    Literal(Scalar),
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Not(Box<Expr>),
    Neg(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Case {
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
    },
    Cast {
        expr: Box<Expr>,
        to: DataType,
    },
    Like {
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
    Func {
        func: Func,
        args: Vec<Expr>,
    },
    /// `expr [NOT] IN (constants...)`; the constants already have `expr`'s type.
    InList {
        expr: Box<Expr>,
        list: Vec<Scalar>,
        negated: bool,
    },
}

/// The result of evaluating an expression: a full column or one value for every row.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Array(ArrayRef),
    Scalar(ArrowScalar<ArrayRef>),
}

impl Val {
    fn scalar(a: ArrayRef) -> Val {
        Val::Scalar(ArrowScalar::new(a))
    }
    pub(crate) fn data_type(&self) -> DataType {
        match self {
            Val::Array(a) => a.data_type().clone(),
            Val::Scalar(s) => s.get().0.data_type().clone(),
        }
    }
    fn datum(&self) -> &dyn Datum {
        match self {
            Val::Array(a) => a,
            Val::Scalar(s) => s,
        }
    }
    /// Expand to an array of `n` rows.
    pub(crate) fn into_array(self, n: usize) -> Result<ArrayRef> {
        match self {
            Val::Array(a) => Ok(a),
            Val::Scalar(s) => {
                let idx = UInt32Array::from(vec![0u32; n]);
                Ok(take(s.into_inner().as_ref(), &idx, None)?)
            }
        }
    }
}

fn bool_arg(v: Val, n: usize) -> Result<BooleanArray> {
    let a = v.into_array(n)?;
    match a.as_boolean_opt() {
        Some(b) => Ok(b.clone()),
        None if a.data_type() == &DataType::Null => Ok(BooleanArray::new_null(n)),
        None => Err(type_err(format!(
            "expected BOOLEAN, found {}",
            a.data_type()
        ))),
    }
}

fn wrap(a: ArrayRef, scalar: bool) -> Val {
    if scalar {
        Val::scalar(a)
    } else {
        Val::Array(a)
    }
}

impl Expr {
    pub(crate) fn binary(op: BinOp, l: Expr, r: Expr) -> Expr {
        Expr::Binary {
            op,
            left: Box::new(l),
            right: Box::new(r),
        }
    }
    pub(crate) fn cast(self, to: DataType) -> Expr {
        Expr::Cast {
            expr: Box::new(self),
            to,
        }
    }

    /// The output type of this expression over `schema` (found by evaluating it on an
    /// empty batch, which runs exactly the code the real evaluation runs).
    pub(crate) fn data_type(&self, schema: &SchemaRef) -> Result<DataType> {
        match self {
            Expr::Column(i) => schema
                .fields()
                .get(*i)
                .map(|f| f.data_type().clone())
                .ok_or_else(|| Error::Internal(format!("column #{i} out of range"))),
            Expr::Literal(s) => Ok(s.data_type()),
            // Predicates are BOOLEAN whatever their inputs (which the binder checked).
            Expr::Binary { op, .. }
                if op.is_comparison() || matches!(op, BinOp::And | BinOp::Or) =>
            {
                Ok(DataType::Boolean)
            }
            Expr::Not(_) | Expr::IsNull { .. } | Expr::Like { .. } | Expr::InList { .. } => {
                Ok(DataType::Boolean)
            }
            Expr::Cast { to, .. } => Ok(to.clone()),
            _ => {
                let empty = RecordBatch::new_empty(schema.clone());
                Ok(self.eval(&empty)?.data_type())
            }
        }
    }

    /// True when the expression reads no column.
    pub(crate) fn is_constant(&self) -> bool {
        let mut cols = Vec::new();
        self.columns(&mut cols);
        cols.is_empty()
    }

    /// Every column index the expression reads.
    pub(crate) fn columns(&self, out: &mut Vec<usize>) {
        match self {
            Expr::Column(i) => out.push(*i),
            Expr::Literal(_) => {}
            Expr::Binary { left, right, .. } => {
                left.columns(out);
                right.columns(out);
            }
            Expr::Not(e) | Expr::Neg(e) => e.columns(out),
            Expr::IsNull { expr, .. }
            | Expr::Cast { expr, .. }
            | Expr::Like { expr, .. }
            | Expr::InList { expr, .. } => expr.columns(out),
            Expr::Case {
                branches,
                otherwise,
            } => {
                for (w, t) in branches {
                    w.columns(out);
                    t.columns(out);
                }
                if let Some(o) = otherwise {
                    o.columns(out);
                }
            }
            Expr::Func { args, .. } => args.iter().for_each(|a| a.columns(out)),
        }
    }

    /// Rewrite column indexes through `map` (old index -> new index).
    pub(crate) fn remap(&self, map: &dyn Fn(usize) -> usize) -> Expr {
        let mut e = self.clone();
        e.remap_in_place(map);
        e
    }

    fn remap_in_place(&mut self, map: &dyn Fn(usize) -> usize) {
        match self {
            Expr::Column(i) => *i = map(*i),
            Expr::Literal(_) => {}
            Expr::Binary { left, right, .. } => {
                left.remap_in_place(map);
                right.remap_in_place(map);
            }
            Expr::Not(e) | Expr::Neg(e) => e.remap_in_place(map),
            Expr::IsNull { expr, .. }
            | Expr::Cast { expr, .. }
            | Expr::Like { expr, .. }
            | Expr::InList { expr, .. } => expr.remap_in_place(map),
            Expr::Case {
                branches,
                otherwise,
            } => {
                for (w, t) in branches {
                    w.remap_in_place(map);
                    t.remap_in_place(map);
                }
                if let Some(o) = otherwise {
                    o.remap_in_place(map);
                }
            }
            Expr::Func { args, .. } => args.iter_mut().for_each(|a| a.remap_in_place(map)),
        }
    }

    /// Evaluate to an array of `batch.num_rows()` rows.
    pub(crate) fn eval_array(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        self.eval(batch)?.into_array(batch.num_rows())
    }

    /// Evaluate a predicate to a filter mask (NULL counts as false).
    pub(crate) fn eval_mask(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let b = bool_arg(self.eval(batch)?, batch.num_rows())?;
        Ok(if b.null_count() > 0 {
            prep_null_mask_filter(&b)
        } else {
            b
        })
    }

    pub(crate) fn eval(&self, batch: &RecordBatch) -> Result<Val> {
        let n = batch.num_rows();
        match self {
            Expr::Column(i) => batch
                .columns()
                .get(*i)
                .map(|c| Val::Array(c.clone()))
                .ok_or_else(|| Error::Internal(format!("column #{i} out of range"))),
            Expr::Literal(s) => Ok(Val::scalar(s.to_array())),
            Expr::Binary { op, left, right } => {
                // Dictionary column vs constant. `=` / `<>` look the literal up in this
                // batch's dictionary and compare the Int32 keys; other comparisons run on
                // the (small) dictionary values and gather the answer through the keys.
                if op.is_comparison() && right.is_constant() {
                    let l = left.eval(batch)?;
                    if let Val::Array(a) = &l {
                        if let Some(d) = a.as_any_dictionary_opt() {
                            let r = right.eval(batch)?;
                            if let (
                                BinOp::Eq | BinOp::NotEq,
                                Some(keys),
                                Expr::Literal(Scalar::Str(lit)),
                            ) = (op, d.keys().as_primitive_opt::<Int32Type>(), right.as_ref())
                            {
                                if let Some(m) =
                                    dict_eq(keys, d.values(), lit, *op == BinOp::NotEq)?
                                {
                                    return Ok(Val::Array(Arc::new(m)));
                                }
                            }
                            let on_values = compare(*op, &Val::Array(d.values().clone()), &r)?;
                            let keys = cast_with_options(
                                d.keys(),
                                &DataType::UInt32,
                                &CastOptions::default(),
                            )?;
                            let keys = keys.as_primitive::<arrow::datatypes::UInt32Type>();
                            return Ok(Val::Array(take(&on_values, keys, None)?));
                        }
                    }
                    let r = right.eval(batch)?;
                    return Ok(Val::Array(Arc::new(compare(*op, &l, &r)?)).maybe_scalar(&l, &r));
                }
                let l = left.eval(batch)?;
                let r = right.eval(batch)?;
                let both_scalar = matches!((&l, &r), (Val::Scalar(_), Val::Scalar(_)));
                match op {
                    BinOp::And | BinOp::Or => {
                        let m = if both_scalar { 1 } else { n };
                        let (la, ra) = (bool_arg(l, m)?, bool_arg(r, m)?);
                        let out = if *op == BinOp::And {
                            boolean::and_kleene(&la, &ra)?
                        } else {
                            boolean::or_kleene(&la, &ra)?
                        };
                        Ok(wrap(Arc::new(out), both_scalar))
                    }
                    o if o.is_comparison() => Ok(wrap(Arc::new(compare(*o, &l, &r)?), both_scalar)),
                    _ => Ok(wrap(arith(*op, &l, &r)?, both_scalar)),
                }
            }
            Expr::Not(e) => {
                let v = e.eval(batch)?;
                let s = matches!(v, Val::Scalar(_));
                let b = bool_arg(v, if s { 1 } else { n })?;
                Ok(wrap(Arc::new(boolean::not(&b)?), s))
            }
            Expr::Neg(e) => {
                let v = e.eval(batch)?;
                let s = matches!(v, Val::Scalar(_));
                let a = v.into_array(if s { 1 } else { n })?;
                Ok(wrap(numeric::neg(a.as_ref())?, s))
            }
            Expr::IsNull { expr, negated } => {
                let v = expr.eval(batch)?;
                let s = matches!(v, Val::Scalar(_));
                let a = v.into_array(if s { 1 } else { n })?;
                let out = if *negated {
                    boolean::is_not_null(a.as_ref())?
                } else {
                    boolean::is_null(a.as_ref())?
                };
                Ok(wrap(Arc::new(out), s))
            }
            Expr::Case {
                branches,
                otherwise,
            } => eval_case(batch, branches, otherwise.as_deref()),
            Expr::Cast { expr, to } => {
                let v = expr.eval(batch)?;
                let s = matches!(v, Val::Scalar(_));
                let a = v.into_array(if s { 1 } else { n })?;
                Ok(wrap(cast_checked(&a, to)?, s))
            }
            Expr::Like {
                expr,
                pattern,
                negated,
                case_insensitive,
            } => {
                let v = expr.eval(batch)?;
                let s = matches!(v, Val::Scalar(_));
                let a = v.into_array(if s { 1 } else { n })?;
                let like = |values: &dyn Array| -> Result<BooleanArray> {
                    let pat = ArrowScalar::new(StringArray::from(vec![pattern.as_str()]));
                    let values =
                        cast_with_options(values, &DataType::Utf8, &CastOptions::default())?;
                    let r = if *case_insensitive {
                        arrow::compute::kernels::comparison::ilike(&values, &pat)?
                    } else {
                        arrow::compute::kernels::comparison::like(&values, &pat)?
                    };
                    Ok(if *negated { boolean::not(&r)? } else { r })
                };
                let out = if let Some(d) = a.as_any_dictionary_opt() {
                    let on_values = like(d.values().as_ref())?;
                    let keys =
                        cast_with_options(d.keys(), &DataType::UInt32, &CastOptions::default())?;
                    take(
                        &on_values,
                        keys.as_primitive::<arrow::datatypes::UInt32Type>(),
                        None,
                    )?
                } else {
                    Arc::new(like(a.as_ref())?)
                };
                Ok(wrap(out, s))
            }
            Expr::Func { func, args } => crate::expr_fn::eval_func(*func, args, batch),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let v = expr.eval(batch)?;
                let s = matches!(v, Val::Scalar(_));
                let a = v.into_array(if s { 1 } else { n })?;
                Ok(wrap(Arc::new(in_list(&a, list, *negated)?), s))
            }
        }
    }
}

impl Val {
    fn maybe_scalar(self, l: &Val, r: &Val) -> Val {
        match (self, l, r) {
            (Val::Array(a), Val::Scalar(_), Val::Scalar(_)) => Val::scalar(a),
            (v, _, _) => v,
        }
    }
}

/// `dict = 'lit'` (or `<>`) as a comparison of keys with the literal's key in this batch's
/// dictionary; a literal absent from the dictionary matches no row.
fn dict_eq(
    keys: &PrimitiveArray<Int32Type>,
    values: &ArrayRef,
    lit: &str,
    negated: bool,
) -> Result<Option<BooleanArray>> {
    let strings = match values.as_string_opt::<i32>() {
        Some(s) => s,
        None => return Ok(None),
    };
    let mut found = (0..strings.len()).filter(|i| strings.is_valid(*i) && strings.value(*i) == lit);
    let first = found.next();
    if found.next().is_some() {
        // A concatenated dictionary can repeat a value: use the general path.
        return Ok(None);
    }
    Ok(Some(match first {
        Some(k) => {
            let k = ArrowScalar::new(PrimitiveArray::<Int32Type>::from(vec![k as i32]));
            if negated {
                cmp::neq(keys, &k)?
            } else {
                cmp::eq(keys, &k)?
            }
        }
        None => {
            let v: BooleanArray = std::iter::repeat_n(Some(negated), keys.len()).collect();
            match keys.nulls() {
                Some(n) => BooleanArray::new(v.values().clone(), Some(n.clone())),
                None => v,
            }
        }
    }))
}

/// `a [NOT] IN list` with SQL NULL semantics; dictionaries are tested through their values.
fn in_list(a: &ArrayRef, list: &[Scalar], negated: bool) -> Result<BooleanArray> {
    if let Some(d) = a.as_any_dictionary_opt() {
        let on_values = in_list(d.values(), list, negated)?;
        let keys = cast_with_options(d.keys(), &DataType::UInt32, &CastOptions::default())?;
        let out = take(
            &on_values,
            keys.as_primitive::<arrow::datatypes::UInt32Type>(),
            None,
        )?;
        return Ok(out.as_boolean().clone());
    }
    let t = a.data_type().clone();
    let has_null = list.contains(&Scalar::Null);
    let vals: Vec<ArrayRef> = list
        .iter()
        .filter(|s| **s != Scalar::Null)
        .map(|s| cast_checked(&s.to_array(), &t))
        .collect::<Result<_>>()?;
    let conv = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(t.clone())])?;
    let mut set = std::collections::HashSet::new();
    if !vals.is_empty() {
        let refs: Vec<&dyn Array> = vals.iter().map(|v| v.as_ref()).collect();
        let all = arrow::compute::concat(&refs)?;
        let r = conv.convert_columns(std::slice::from_ref(&all))?;
        for i in 0..r.num_rows() {
            set.insert(r.row(i).as_ref().to_vec());
        }
    }
    let rows = conv.convert_columns(std::slice::from_ref(a))?;
    let nulls = a.logical_nulls();
    let out: BooleanArray = (0..a.len())
        .map(|i| {
            if nulls.as_ref().is_some_and(|nb| nb.is_null(i)) {
                return None;
            }
            let found = set.contains(rows.row(i).as_ref());
            if found {
                Some(!negated)
            } else if has_null {
                None
            } else {
                Some(negated)
            }
        })
        .collect();
    Ok(out)
}

/// Cast that fails (rather than producing NULL) on values that do not convert.
pub(crate) fn cast_checked(a: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if a.data_type() == to {
        return Ok(a.clone());
    }
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    // Strings to timestamps go through our ISO-8601 parser so that 'Z' and offsets work
    // the same everywhere.
    if matches!(to, DataType::Timestamp(_, _)) && is_stringy(a.data_type()) {
        let s = cast_with_options(a, &DataType::Utf8, &opts)?;
        let s = s.as_string::<i32>();
        let mut out = Vec::with_capacity(s.len());
        for v in s.iter() {
            out.push(match v {
                Some(v) => Some(time::parse_timestamp(v)?),
                None => None,
            });
        }
        return Ok(Arc::new(TimestampNanosecondArray::from(out)));
    }
    Ok(cast_with_options(a, to, &opts)?)
}

fn compare(op: BinOp, l: &Val, r: &Val) -> Result<BooleanArray> {
    let (l, r) = (l.datum(), r.datum());
    Ok(match op {
        BinOp::Eq => cmp::eq(l, r)?,
        BinOp::NotEq => cmp::neq(l, r)?,
        BinOp::Lt => cmp::lt(l, r)?,
        BinOp::LtEq => cmp::lt_eq(l, r)?,
        BinOp::Gt => cmp::gt(l, r)?,
        BinOp::GtEq => cmp::gt_eq(l, r)?,
        _ => return Err(Error::Internal(format!("{op:?} is not a comparison"))),
    })
}

/// Arithmetic. The binder has already cast both sides to one numeric type (timestamps are
/// computed on as BIGINT nanoseconds). Division and modulo by zero give NULL.
fn arith(op: BinOp, l: &Val, r: &Val) -> Result<ArrayRef> {
    let (ld, rd) = (l.datum(), r.datum());
    Ok(match op {
        BinOp::Add => numeric::add(ld, rd)?,
        BinOp::Sub => numeric::sub(ld, rd)?,
        BinOp::Mul => numeric::mul(ld, rd)?,
        BinOp::Div | BinOp::Mod => {
            let (ra, r_scalar) = rd.get();
            let zero: ArrayRef = match ra.data_type() {
                DataType::Float64 => Arc::new(Float64Array::from(vec![0.0])),
                DataType::Int64 => Arc::new(Int64Array::from(vec![0i64])),
                DataType::Int32 => Arc::new(PrimitiveArray::<Int32Type>::from(vec![0])),
                t => return Err(type_err(format!("cannot divide values of type {t}"))),
            };
            let is_zero = cmp::eq(&ra, &ArrowScalar::new(zero))?;
            let divisor = arrow::compute::nullif(ra, &is_zero)?;
            let divisor: Box<dyn Datum> = if r_scalar {
                Box::new(ArrowScalar::new(divisor))
            } else {
                Box::new(divisor)
            };
            if op == BinOp::Div {
                numeric::div(ld, divisor.as_ref())?
            } else {
                numeric::rem(ld, divisor.as_ref())?
            }
        }
        _ => return Err(Error::Internal(format!("{op:?} is not arithmetic"))),
    })
}

fn eval_case(
    batch: &RecordBatch,
    branches: &[(Expr, Expr)],
    otherwise: Option<&Expr>,
) -> Result<Val> {
    let n = batch.num_rows();
    let out_type = match branches.first() {
        Some((_, t)) => t.eval(batch)?.data_type(),
        None => return Err(Error::Internal("CASE without branches".into())),
    };
    let mut acc: ArrayRef = match otherwise {
        Some(e) => e.eval(batch)?.into_array(n)?,
        None => arrow::array::new_null_array(&out_type, n),
    };
    for (when, then) in branches.iter().rev() {
        let mask = when.eval_mask(batch)?;
        let then = then.eval(batch)?;
        acc = zip(&mask, then.datum(), &acc)?;
    }
    Ok(Val::Array(acc))
}

/// Build a batch of `n` rows with no columns (for `SELECT 1`).
pub(crate) fn empty_row_batch(n: usize) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new_with_options(
        Arc::new(arrow::datatypes::Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array};
    use arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        // Two different dictionaries would be fine too: evaluation never compares keys across
        // batches.
        let dict: DictionaryArray<Int32Type> = vec!["b", "a", "b", "c"].into_iter().collect();
        let x = Float64Array::from(vec![Some(1.0), Some(0.0), None, Some(4.0)]);
        let schema = Schema::new(vec![
            Field::new("s", dict.data_type().clone(), false),
            Field::new("x", DataType::Float64, true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(dict), Arc::new(x)]).unwrap()
    }

    fn bools(a: &ArrayRef) -> Vec<Option<bool>> {
        a.as_boolean().iter().collect()
    }

    #[test]
    fn dictionary_compare_goes_through_values() {
        let b = batch();
        let e = Expr::binary(
            BinOp::Eq,
            Expr::Column(0),
            Expr::Literal(Scalar::Str("b".into())),
        );
        assert_eq!(
            bools(&e.eval_array(&b).unwrap()),
            vec![Some(true), Some(false), Some(true), Some(false)]
        );
        let e = Expr::binary(
            BinOp::Gt,
            Expr::Column(0),
            Expr::Literal(Scalar::Str("a".into())),
        );
        assert_eq!(
            bools(&e.eval_array(&b).unwrap()),
            vec![Some(true), Some(false), Some(true), Some(true)]
        );
        let e = Expr::Like {
            expr: Box::new(Expr::Column(0)),
            pattern: "c%".into(),
            negated: false,
            case_insensitive: false,
        };
        assert_eq!(
            bools(&e.eval_array(&b).unwrap()),
            vec![Some(false), Some(false), Some(false), Some(true)]
        );
    }

    #[test]
    fn dictionary_with_repeated_values() {
        // keys 0 and 2 both spell "b" (as after concatenating two batches' dictionaries).
        let values = StringArray::from(vec!["b", "a", "b"]);
        let keys = PrimitiveArray::<Int32Type>::from(vec![0, 1, 2, 2]);
        let dict = arrow::array::DictionaryArray::try_new(keys, Arc::new(values)).unwrap();
        let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "s",
            dict.data_type().clone(),
            false,
        )]);
        let b = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(dict)]).unwrap();
        let e = Expr::binary(
            BinOp::Eq,
            Expr::Column(0),
            Expr::Literal(Scalar::Str("b".into())),
        );
        assert_eq!(
            bools(&e.eval_array(&b).unwrap()),
            vec![Some(true), Some(false), Some(true), Some(true)]
        );
        let e = Expr::binary(
            BinOp::NotEq,
            Expr::Column(0),
            Expr::Literal(Scalar::Str("zz".into())),
        );
        assert_eq!(bools(&e.eval_array(&b).unwrap()), vec![Some(true); 4]);
    }

    #[test]
    fn division_by_zero_is_null() {
        let b = batch();
        let e = Expr::binary(
            BinOp::Div,
            Expr::Literal(Scalar::Float(1.0)),
            Expr::Column(1),
        );
        let a = e.eval_array(&b).unwrap();
        let v: Vec<Option<f64>> = a.as_primitive::<Float64Type>().iter().collect();
        assert_eq!(v, vec![Some(1.0), None, None, Some(0.25)]);
        let e = Expr::binary(
            BinOp::Mod,
            Expr::Literal(Scalar::Int(7)),
            Expr::Literal(Scalar::Int(0)),
        );
        assert!(e.eval_array(&b).unwrap().is_null(0));
    }

    #[test]
    fn in_list_null_semantics() {
        let b = batch();
        let e = Expr::InList {
            expr: Box::new(Expr::Column(1)),
            list: vec![Scalar::Float(4.0), Scalar::Null],
            negated: false,
        };
        // 1.0: not found but the list has NULL -> NULL; NULL input -> NULL; 4.0 -> true.
        assert_eq!(
            bools(&e.eval_array(&b).unwrap()),
            vec![None, None, None, Some(true)]
        );
        let e = Expr::InList {
            expr: Box::new(Expr::Column(0)),
            list: vec![Scalar::Str("a".into()), Scalar::Str("c".into())],
            negated: true,
        };
        assert_eq!(
            bools(&e.eval_array(&b).unwrap()),
            vec![Some(true), Some(false), Some(true), Some(false)]
        );
    }

    #[test]
    fn string_to_timestamp_cast_uses_iso_parser() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("2024-01-02T10:00:00Z"), None]));
        let t = cast_checked(&a, &ts_type()).unwrap();
        let p = t.as_primitive::<TimestampNanosecondType>();
        assert_eq!(p.value(0), 1_704_189_600_000_000_000);
        assert!(p.is_null(1));
        let bad: ArrayRef = Arc::new(StringArray::from(vec!["soon"]));
        assert!(cast_checked(&bad, &ts_type()).is_err());
        let _ = Int32Array::from(vec![1]);
    }
}
