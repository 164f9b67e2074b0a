//! Binding aggregates (GROUP BY, aggregate calls) and window functions.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use sqlparser::ast::{self, Expr as A, FunctionArg, FunctionArgExpr, FunctionArguments};

use crate::error::{invalid, type_err, unsupported, Error, Result};
use crate::expr::{is_stringy, ts_type, Expr, Scalar};
use crate::plan::agg::{AggExpr, AggFunc, AggMode};
use crate::plan::bind::{collect_aggs, func_name, output_name, sort_key, Binder, WINDOW_ONLY};
use crate::plan::bind_expr::{coerce, ident_parts, key, text, Scope, ScopeCol};
use crate::plan::{type_name, Node, WindowExpr, WindowFunc};

impl Binder<'_> {
    pub(crate) fn plan_aggregate(
        &mut self,
        input: Node,
        scope: &Scope,
        groups: &[A],
        aggs: &[A],
    ) -> Result<(Node, Scope)> {
        let mut group = vec![];
        let mut fields = vec![];
        let mut cols = vec![];
        let mut replace = std::collections::HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            let b = self.bind_expr(g, scope)?;
            let t = b.data_type(&scope.schema)?;
            let name = output_name(g);
            let (qualifier, designated) = match (&b, ident_parts(g)) {
                (Expr::Column(c), Some(_)) => {
                    let sc = scope.cols.get(*c);
                    (
                        sc.and_then(|x| x.qualifier.clone()),
                        sc.is_some_and(|x| x.designated_ts),
                    )
                }
                _ => (None, false),
            };
            fields.push(Field::new(&name, crate::exec::groups::key_type(&t), true));
            cols.push(ScopeCol {
                qualifier,
                name,
                designated_ts: designated,
            });
            replace.insert(key(g), i);
            group.push(b);
        }
        let mut bound = vec![];
        for a in aggs {
            let f = match a {
                A::Function(f) => f,
                _ => return Err(Error::Internal("aggregate is not a function".into())),
            };
            let agg = self.bind_agg(f, scope)?;
            fields.push(Field::new(text(a), agg.output_type(), true));
            cols.push(ScopeCol {
                qualifier: None,
                name: text(a),
                designated_ts: false,
            });
            replace.insert(key(a), group.len() + bound.len());
            bound.push(agg);
        }
        let schema = Arc::new(Schema::new(fields));
        let node = Node::Aggregate {
            input: Box::new(input),
            group,
            aggs: bound,
            mode: AggMode::Single,
            schema: schema.clone(),
        };
        let mut sc = Scope::new(cols, schema);
        sc.replace = replace;
        sc.grouped = true;
        Ok((node, sc))
    }

    fn bind_agg(&mut self, f: &ast::Function, scope: &Scope) -> Result<AggExpr> {
        let name = func_name(f);
        if f.filter.is_some() || !f.within_group.is_empty() {
            return Err(unsupported(format!("{name}() with FILTER / WITHIN GROUP")));
        }
        let (distinct, star) = match &f.args {
            FunctionArguments::List(l) => (
                matches!(
                    l.duplicate_treatment,
                    Some(ast::DuplicateTreatment::Distinct)
                ),
                matches!(
                    l.args.as_slice(),
                    [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]
                ),
            ),
            _ => (false, false),
        };
        let display = text(&ast::Expr::Function(f.clone()));
        if star {
            if name != "count" {
                return Err(invalid(format!("{name}(*) is not valid")));
            }
            return Ok(AggExpr {
                func: AggFunc::CountStar,
                args: vec![],
                input_type: DataType::Int64,
                name: display,
            });
        }
        let raw = self.func_args(f)?;
        let mut args = vec![];
        for a in &raw {
            let mut probe = vec![];
            collect_aggs(a, &mut probe);
            if !probe.is_empty() {
                return Err(invalid(format!(
                    "aggregate calls cannot be nested: {display}"
                )));
            }
            args.push(self.bind_expr(a, scope)?);
        }
        let argc = args.len();
        let nargs = |n: usize| -> Result<()> {
            if argc == n {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{name}() takes {n} argument(s), got {argc}"
                )))
            }
        };
        let first_t = match args.first() {
            Some(a) => a.data_type(&scope.schema)?,
            None => DataType::Null,
        };
        let numeric_in = |e: Expr, t: &DataType, to: DataType| -> Result<Expr> {
            match t {
                DataType::Int32 | DataType::Int64 | DataType::Float64 | DataType::Null => {
                    coerce(e, t, &to)
                }
                t => Err(type_err(format!(
                    "{name}() needs a number, found {}",
                    type_name(t)
                ))),
            }
        };
        let mut it = args.into_iter();
        let a0 = it.next();
        let (func, args, input_type) = match name.as_str() {
            "count" => {
                if raw.len() != 1 {
                    return Err(invalid("count() takes one argument"));
                }
                let a = a0.ok_or_else(|| invalid("count() takes one argument"))?;
                if distinct {
                    let a = if is_stringy(&first_t) {
                        a.cast(DataType::Utf8)
                    } else {
                        a
                    };
                    (AggFunc::CountDistinct, vec![a], DataType::Int64)
                } else {
                    (AggFunc::Count, vec![a], DataType::Int64)
                }
            }
            _ if distinct => return Err(unsupported(format!("{name}(DISTINCT ...)"))),
            "sum" => {
                nargs(1)?;
                let to = if first_t == DataType::Float64 {
                    DataType::Float64
                } else {
                    DataType::Int64
                };
                let a = numeric_in(
                    a0.unwrap_or(Expr::Literal(Scalar::Null)),
                    &first_t,
                    to.clone(),
                )?;
                (AggFunc::Sum, vec![a], to)
            }
            "avg" | "mean" | "stddev" | "stddev_samp" | "variance" | "var_samp" | "median" => {
                nargs(1)?;
                let a = numeric_in(
                    a0.unwrap_or(Expr::Literal(Scalar::Null)),
                    &first_t,
                    DataType::Float64,
                )?;
                let func = match name.as_str() {
                    "avg" | "mean" => AggFunc::Avg,
                    "stddev" | "stddev_samp" => AggFunc::Stddev,
                    "variance" | "var_samp" => AggFunc::Variance,
                    _ => AggFunc::Percentile(0.5),
                };
                (func, vec![a], DataType::Float64)
            }
            "percentile" | "quantile" => {
                nargs(2)?;
                let a = numeric_in(
                    a0.unwrap_or(Expr::Literal(Scalar::Null)),
                    &first_t,
                    DataType::Float64,
                )?;
                let q = match it.next() {
                    Some(Expr::Literal(Scalar::Float(q))) => q,
                    Some(Expr::Literal(Scalar::Int(q))) => q as f64,
                    _ => return Err(invalid(format!("{name}() fraction must be a constant"))),
                };
                if !(0.0..=1.0).contains(&q) {
                    return Err(invalid(format!(
                        "{name}() fraction must be between 0 and 1, got {q}"
                    )));
                }
                (AggFunc::Percentile(q), vec![a], DataType::Float64)
            }
            "min" | "max" => {
                nargs(1)?;
                let a = a0.unwrap_or(Expr::Literal(Scalar::Null));
                let (a, t) = match &first_t {
                    DataType::Float64 | DataType::Int64 | DataType::Timestamp(_, _) => {
                        (a, first_t.clone())
                    }
                    DataType::Int32 => (a.cast(DataType::Int64), DataType::Int64),
                    DataType::Null => (a.cast(DataType::Int64), DataType::Int64),
                    t if is_stringy(t) => (a.cast(DataType::Utf8), DataType::Utf8),
                    t => {
                        return Err(type_err(format!(
                            "{name}() does not accept {}",
                            type_name(t)
                        )))
                    }
                };
                let func = if name == "min" {
                    AggFunc::Min
                } else {
                    AggFunc::Max
                };
                (func, vec![a], t)
            }
            "first" | "last" => {
                if raw.is_empty() || raw.len() > 2 {
                    return Err(invalid(format!(
                        "{name}() takes a value and optionally a timestamp"
                    )));
                }
                let a = a0.ok_or_else(|| invalid(format!("{name}() needs an argument")))?;
                let (a, t) = match &first_t {
                    t if is_stringy(t) => (a.cast(DataType::Utf8), DataType::Utf8),
                    DataType::Int32 => (a.cast(DataType::Int64), DataType::Int64),
                    t => (a, t.clone()),
                };
                let ts = match it.next() {
                    Some(ts) => ts,
                    None => Expr::Column(scope.designated_ts().ok_or_else(|| {
                        invalid(format!(
                            "{name}() needs a designated timestamp in scope; pass one: {name}(x, ts)"
                        ))
                    })?),
                };
                let tt = ts.data_type(&scope.schema)?;
                if !matches!(tt, DataType::Timestamp(_, _) | DataType::Int64) {
                    return Err(type_err(format!(
                        "{name}() orders by a TIMESTAMP, found {}",
                        type_name(&tt)
                    )));
                }
                let ts = if tt == DataType::Int64 {
                    ts.cast(ts_type())
                } else {
                    ts
                };
                let func = if name == "first" {
                    AggFunc::First
                } else {
                    AggFunc::Last
                };
                (func, vec![a, ts], t)
            }
            "vwap" => {
                nargs(2)?;
                let p = numeric_in(
                    a0.unwrap_or(Expr::Literal(Scalar::Null)),
                    &first_t,
                    DataType::Float64,
                )?;
                let v = it
                    .next()
                    .ok_or_else(|| invalid("vwap() takes price and volume"))?;
                let vt = v.data_type(&scope.schema)?;
                let v = numeric_in(v, &vt, DataType::Float64)?;
                (AggFunc::Vwap, vec![p, v], DataType::Float64)
            }
            other => return Err(invalid(format!("unknown aggregate {other}()"))),
        };
        Ok(AggExpr {
            func,
            args,
            input_type,
            name: display,
        })
    }

    pub(crate) fn plan_windows(
        &mut self,
        input: Node,
        scope: Scope,
        wins: &[A],
    ) -> Result<(Node, Scope)> {
        let mut funcs = vec![];
        let mut fields: Vec<Field> = scope
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut cols = scope.cols.clone();
        let mut replace = scope.replace.clone();
        for w in wins {
            let f = match w {
                A::Function(f) => f,
                _ => return Err(Error::Internal("window is not a function".into())),
            };
            let spec = match &f.over {
                Some(ast::WindowType::WindowSpec(s)) => s,
                _ => return Err(unsupported("named windows")),
            };
            let rows_frame = match &spec.window_frame {
                None => None,
                Some(f) => Some(rows_frame(f)?),
            };
            let name = func_name(f);
            let raw = self.func_args(f)?;
            let mut args = vec![];
            for a in &raw {
                args.push(self.bind_expr(a, &scope)?);
            }
            let partition_by = spec
                .partition_by
                .iter()
                .map(|p| self.bind_expr(p, &scope))
                .collect::<Result<Vec<_>>>()?;
            let order_by = spec
                .order_by
                .iter()
                .map(|o| Ok(sort_key(self.bind_expr(&o.expr, &scope)?, o)))
                .collect::<Result<Vec<_>>>()?;
            let const_int = |e: Option<&Expr>, default: i64| -> Result<i64> {
                match e {
                    None => Ok(default),
                    Some(Expr::Literal(Scalar::Int(v))) => Ok(*v),
                    Some(_) => Err(invalid(format!(
                        "{name}(): offset/size must be an integer constant"
                    ))),
                }
            };
            let to_f64 = |e: Expr| -> Result<Expr> {
                let t = e.data_type(&scope.schema)?;
                match t {
                    DataType::Int32 | DataType::Int64 | DataType::Float64 | DataType::Null => {
                        coerce(e, &t, &DataType::Float64)
                    }
                    t => Err(type_err(format!(
                        "{name}() needs a number, found {}",
                        type_name(&t)
                    ))),
                }
            };
            let (func, args, out) = match name.as_str() {
                "row_number" | "rank" | "dense_rank" => {
                    if !args.is_empty() {
                        return Err(invalid(format!("{name}() takes no arguments")));
                    }
                    let func = match name.as_str() {
                        "row_number" => WindowFunc::RowNumber,
                        "rank" => WindowFunc::Rank,
                        _ => WindowFunc::DenseRank,
                    };
                    (func, vec![], DataType::Int64)
                }
                "lag" | "lead" => {
                    if args.is_empty() || args.len() > 2 {
                        return Err(invalid(format!(
                            "{name}() takes a value and an optional offset"
                        )));
                    }
                    let off = const_int(args.get(1), 1)?;
                    let x = args.swap_remove(0);
                    let t = x.data_type(&scope.schema)?;
                    let x = if is_stringy(&t) {
                        x.cast(DataType::Utf8)
                    } else {
                        x
                    };
                    let t = crate::exec::groups::key_type(&t);
                    let func = if name == "lag" {
                        WindowFunc::Lag(off)
                    } else {
                        WindowFunc::Lead(off)
                    };
                    (func, vec![x], t)
                }
                "ema" => {
                    if args.len() != 2 {
                        return Err(invalid("ema() takes a value and alpha"));
                    }
                    let alpha = match args.get(1) {
                        Some(Expr::Literal(Scalar::Float(a))) => *a,
                        Some(Expr::Literal(Scalar::Int(a))) => *a as f64,
                        _ => return Err(invalid("ema() alpha must be a constant")),
                    };
                    if !(alpha > 0.0 && alpha <= 1.0) {
                        return Err(invalid("ema() alpha must be in (0, 1]"));
                    }
                    (
                        WindowFunc::Ema(alpha),
                        vec![to_f64(args.swap_remove(0))?],
                        DataType::Float64,
                    )
                }
                "mavg" | "msum" => {
                    if args.len() != 2 {
                        return Err(invalid(format!("{name}() takes a value and a row count")));
                    }
                    let n = const_int(args.get(1), 1)?;
                    if n < 1 {
                        return Err(invalid(format!("{name}() row count must be at least 1")));
                    }
                    let func = if name == "mavg" {
                        WindowFunc::Mavg(n as usize)
                    } else {
                        WindowFunc::Msum(n as usize)
                    };
                    (func, vec![to_f64(args.swap_remove(0))?], DataType::Float64)
                }
                "delta" | "deltas" => {
                    if args.len() != 1 {
                        return Err(invalid("delta() takes one argument"));
                    }
                    (
                        WindowFunc::Delta,
                        vec![to_f64(args.swap_remove(0))?],
                        DataType::Float64,
                    )
                }
                "sum" | "avg" | "min" | "max" | "count" => {
                    let func = match name.as_str() {
                        "sum" => WindowFunc::Sum,
                        "avg" => WindowFunc::Avg,
                        "min" => WindowFunc::Min,
                        "max" => WindowFunc::Max,
                        _ => WindowFunc::Count,
                    };
                    let star = matches!(&f.args, FunctionArguments::List(l) if matches!(l.args.as_slice(), [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)]));
                    if func == WindowFunc::Count {
                        let a = if star { vec![] } else { args };
                        (func, a, DataType::Int64)
                    } else {
                        if args.len() != 1 {
                            return Err(invalid(format!("{name}() takes one argument")));
                        }
                        (func, vec![to_f64(args.swap_remove(0))?], DataType::Float64)
                    }
                }
                other if WINDOW_ONLY.contains(&other) => return Err(Error::Internal(other.into())),
                other => return Err(invalid(format!("{other}() is not a window function"))),
            };
            let display = text(w);
            replace.insert(key(w), fields.len());
            fields.push(Field::new(&display, out, true));
            cols.push(ScopeCol {
                qualifier: None,
                name: display.clone(),
                designated_ts: false,
            });
            if rows_frame.is_some()
                && !matches!(
                    func,
                    WindowFunc::Sum
                        | WindowFunc::Avg
                        | WindowFunc::Min
                        | WindowFunc::Max
                        | WindowFunc::Count
                )
            {
                return Err(unsupported(format!("a window frame with {name}()")));
            }
            funcs.push(WindowExpr {
                func,
                args,
                partition_by,
                order_by,
                rows_frame,
                name: display,
            });
        }
        let schema = Arc::new(Schema::new(fields));
        let node = Node::Window {
            input: Box::new(input),
            funcs,
            schema: schema.clone(),
        };
        let mut sc = Scope::new(cols, schema);
        sc.replace = replace;
        sc.grouped = scope.grouped;
        Ok((node, sc))
    }
}

/// The frames zeptodb runs: `ROWS BETWEEN <n | UNBOUNDED> PRECEDING AND CURRENT ROW`.
fn rows_frame(f: &ast::WindowFrame) -> Result<Option<usize>> {
    let bad = || unsupported("window frames other than ROWS BETWEEN n PRECEDING AND CURRENT ROW");
    if f.units != ast::WindowFrameUnits::Rows {
        return Err(bad());
    }
    if !matches!(f.end_bound, None | Some(ast::WindowFrameBound::CurrentRow)) {
        return Err(bad());
    }
    match &f.start_bound {
        ast::WindowFrameBound::CurrentRow => Ok(Some(0)),
        ast::WindowFrameBound::Preceding(None) => Ok(None),
        ast::WindowFrameBound::Preceding(Some(e)) => match e.as_ref() {
            A::Value(v) => match crate::plan::bind_expr::literal(&v.value)? {
                Scalar::Int(n) if n >= 0 => Ok(Some(n as usize)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        },
        ast::WindowFrameBound::Following(_) => Err(bad()),
    }
}
