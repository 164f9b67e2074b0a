//! Binding scalar expressions: resolve names against a [`Scope`], turn literals into typed
//! constants, and insert the casts that make both sides of every operator one type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sqlparser::ast::{
    self, BinaryOperator, CastKind, DateTimeField, Expr as A, FunctionArg, FunctionArgExpr,
    FunctionArguments, UnaryOperator, Value,
};
use zepto_storage::ColumnType;

use crate::error::{invalid, type_err, unsupported, Error, Result};
use crate::expr::{is_numeric, is_stringy, ts_type, BinOp, Expr, Func, Scalar};
use crate::plan::bind::Binder;
use crate::plan::type_name;
use crate::time::{self, TimeUnit};

/// One column visible to expressions.
#[derive(Debug, Clone)]
pub(crate) struct ScopeCol {
    /// Table name or alias (lowercase).
    pub(crate) qualifier: Option<String>,
    pub(crate) name: String,
    /// True for a table's designated timestamp (what `first`/`last` order by).
    pub(crate) designated_ts: bool,
}

/// The columns an expression can see, in the order of the input batch.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) cols: Vec<ScopeCol>,
    pub(crate) schema: SchemaRef,
    /// Whole expressions already computed by a node below (group keys, aggregate and
    /// window calls), by their lowercase SQL text.
    pub(crate) replace: HashMap<String, usize>,
    /// True above an aggregate: bare columns must be group keys.
    pub(crate) grouped: bool,
}

impl Scope {
    pub(crate) fn new(cols: Vec<ScopeCol>, schema: SchemaRef) -> Scope {
        Scope {
            cols,
            schema,
            replace: HashMap::new(),
            grouped: false,
        }
    }

    /// A scope over `schema` whose columns all carry `qualifier`.
    pub(crate) fn from_schema(schema: SchemaRef, qualifier: Option<&str>) -> Scope {
        let cols = schema
            .fields()
            .iter()
            .map(|f| ScopeCol {
                qualifier: qualifier.map(str::to_ascii_lowercase),
                name: f.name().clone(),
                designated_ts: false,
            })
            .collect();
        Scope::new(cols, schema)
    }

    pub(crate) fn requalify(mut self, q: &str) -> Scope {
        for c in &mut self.cols {
            c.qualifier = Some(q.to_ascii_lowercase());
        }
        self
    }

    /// Concatenate two scopes (a join's output).
    pub(crate) fn join(&self, right: &Scope, right_nullable: bool) -> Scope {
        let mut cols = self.cols.clone();
        cols.extend(right.cols.iter().cloned());
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(right.schema.fields().iter().map(|f| {
            let f = f.as_ref().clone();
            if right_nullable {
                f.with_nullable(true)
            } else {
                f
            }
        }));
        Scope::new(cols, Arc::new(Schema::new(fields)))
    }

    pub(crate) fn resolve(&self, parts: &[String]) -> Result<usize> {
        let (q, name) = match parts {
            [n] => (None, n),
            [q, n] => (Some(q.to_ascii_lowercase()), n),
            [_, q, n] => (Some(q.to_ascii_lowercase()), n),
            _ => return Err(unsupported(format!("column reference {}", parts.join(".")))),
        };
        let mut found = None;
        for (i, c) in self.cols.iter().enumerate() {
            if c.name.eq_ignore_ascii_case(name)
                && (q.is_none() || c.qualifier.as_deref() == q.as_deref())
            {
                if found.is_some() {
                    return Err(Error::AmbiguousColumn(parts.join(".")));
                }
                found = Some(i);
            }
        }
        found.ok_or_else(|| {
            if self.grouped {
                invalid(format!(
                    "column '{}' must appear in GROUP BY or be used in an aggregate function",
                    parts.join(".")
                ))
            } else {
                Error::ColumnNotFound(parts.join("."))
            }
        })
    }

    /// The designated timestamp column, if exactly one is in scope.
    pub(crate) fn designated_ts(&self) -> Option<usize> {
        let mut it = self
            .cols
            .iter()
            .enumerate()
            .filter(|(_, c)| c.designated_ts);
        match (it.next(), it.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }
}

/// Deepest expression nesting the binder accepts (AND/OR chains do not count).
const MAX_EXPR_DEPTH: usize = 48;

/// Combine operands with `op` as a balanced tree.
pub(crate) fn balanced(op: BinOp, mut xs: Vec<Expr>) -> Expr {
    match xs.len() {
        0 => Expr::Literal(Scalar::Bool(op == BinOp::And)),
        1 => xs.pop().unwrap_or(Expr::Literal(Scalar::Null)),
        n => {
            let right = xs.split_off(n / 2);
            Expr::binary(op, balanced(op, xs), balanced(op, right))
        }
    }
}

/// Lowercase SQL text of an expression, the key for [`Scope::replace`].
pub(crate) fn key(e: &A) -> String {
    text(e).to_ascii_lowercase()
}

/// Deepest nesting the AST printer is trusted with (it recurses).
const MAX_PRINT_DEPTH: usize = 256;

/// SQL text of an expression; a placeholder for expressions too deep to print safely
/// (they never match a GROUP BY key and get a generic column name).
pub(crate) fn text(e: &A) -> String {
    if crate::plan::bind::ast_depth(e, MAX_PRINT_DEPTH) > MAX_PRINT_DEPTH {
        return "expr".into();
    }
    e.to_string()
}

pub(crate) fn ident_parts(e: &A) -> Option<Vec<String>> {
    match e {
        A::Identifier(i) => Some(vec![i.value.clone()]),
        A::CompoundIdentifier(ids) => Some(ids.iter().map(|i| i.value.clone()).collect()),
        _ => None,
    }
}

/// Map a SQL type name to the Arrow type expressions use.
pub(crate) fn sql_type(t: &ast::DataType) -> Result<DataType> {
    let name = t.to_string();
    let base = name.split('(').next().unwrap_or(&name).trim();
    if base.eq_ignore_ascii_case("DOUBLE PRECISION") {
        return Ok(DataType::Float64);
    }
    match ColumnType::parse(base) {
        Some(ColumnType::Symbol) | Some(ColumnType::String) => Ok(DataType::Utf8),
        Some(c) => Ok(c.arrow_type()),
        None => Err(unsupported(format!("type {name}"))),
    }
}

pub(crate) fn literal(v: &Value) -> Result<Scalar> {
    Ok(match v {
        Value::Number(n, _) => {
            if let Ok(i) = n.parse::<i64>() {
                Scalar::Int(i)
            } else {
                Scalar::Float(
                    n.parse::<f64>()
                        .map_err(|_| invalid(format!("bad number {n}")))?,
                )
            }
        }
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Scalar::Str(s.clone()),
        Value::Boolean(b) => Scalar::Bool(*b),
        Value::Null => Scalar::Null,
        other => return Err(unsupported(format!("literal {other}"))),
    })
}

fn unit_of(f: &DateTimeField) -> Result<TimeUnit> {
    TimeUnit::parse(&f.to_string()).ok_or_else(|| unsupported(format!("time unit {f}")))
}

/// The common type two expressions are cast to before they are compared or combined.
fn common_type(l: &DataType, r: &DataType) -> Option<DataType> {
    use DataType::*;
    let norm = |t: &DataType| if is_stringy(t) { Utf8 } else { t.clone() };
    let (l, r) = (norm(l), norm(r));
    if l == r {
        return Some(l);
    }
    match (&l, &r) {
        (Null, t) | (t, Null) => Some(t.clone()),
        (Float64, t) | (t, Float64) if is_numeric(t) => Some(Float64),
        (a, b) if is_numeric(a) && is_numeric(b) => Some(Int64),
        (Timestamp(_, _), Int64) | (Int64, Timestamp(_, _)) => Some(ts_type()),
        (Timestamp(_, _), Int32) | (Int32, Timestamp(_, _)) => Some(ts_type()),
        (Timestamp(_, _), Utf8) | (Utf8, Timestamp(_, _)) => Some(ts_type()),
        _ => None,
    }
}

/// Cast `e` (of type `from`) to `to`; string literals are converted here, at plan time.
pub(crate) fn coerce(e: Expr, from: &DataType, to: &DataType) -> Result<Expr> {
    if from == to {
        return Ok(e);
    }
    if let Expr::Literal(s) = &e {
        let conv = match (s, to) {
            (Scalar::Null, _) => None,
            (Scalar::Str(v), DataType::Timestamp(_, _)) => {
                Some(Scalar::Ts(time::parse_timestamp(v)?))
            }
            (Scalar::Int(v), DataType::Timestamp(_, _)) => Some(Scalar::Ts(*v)),
            (Scalar::Int(v), DataType::Float64) => Some(Scalar::Float(*v as f64)),
            (Scalar::Str(v), DataType::Float64) => Some(Scalar::Float(
                v.trim()
                    .parse()
                    .map_err(|_| type_err(format!("'{v}' is not a number")))?,
            )),
            (Scalar::Str(v), DataType::Int64) => Some(Scalar::Int(
                v.trim()
                    .parse()
                    .map_err(|_| type_err(format!("'{v}' is not an integer")))?,
            )),
            (Scalar::Str(_), DataType::Utf8) => Some(s.clone()),
            (Scalar::Int(_), DataType::Int64) => Some(s.clone()),
            _ => None,
        };
        if let Some(c) = conv {
            return Ok(Expr::Literal(c));
        }
    }
    // A dictionary compared with a string stays a dictionary: the evaluator compares
    // through the dictionary values.
    if is_stringy(from) && to == &DataType::Utf8 && matches!(from, DataType::Dictionary(_, _)) {
        return Ok(e);
    }
    Ok(e.cast(to.clone()))
}

impl Binder<'_> {
    pub(crate) fn bind_expr(&mut self, e: &A, scope: &Scope) -> Result<Expr> {
        // Long AND/OR chains (generated `x = 1 OR x = 2 OR ...`) are flattened and rebuilt
        // balanced; anything else nesting deeper than MAX_EXPR_DEPTH is refused, so that no
        // input can overflow the stack.
        if let A::BinaryOp {
            op: op @ (BinaryOperator::And | BinaryOperator::Or),
            ..
        } = e
        {
            if scope.replace.is_empty() || !scope.replace.contains_key(&key(e)) {
                return self.bind_chain(e, op, scope);
            }
        }
        if self.depth >= MAX_EXPR_DEPTH {
            return Err(invalid(format!(
                "expression nested more than {MAX_EXPR_DEPTH} levels deep"
            )));
        }
        self.depth += 1;
        let r = self.bind_expr_inner(e, scope);
        self.depth -= 1;
        r
    }

    /// `a OR b OR c ...`: bind the operands of the left spine one by one, then combine them
    /// as a balanced tree (depth log n).
    fn bind_chain(&mut self, e: &A, op: &BinaryOperator, scope: &Scope) -> Result<Expr> {
        let mut operands: Vec<&A> = vec![];
        let mut cur = e;
        loop {
            match cur {
                A::BinaryOp { left, op: o, right } if o == op => {
                    operands.push(right);
                    cur = left;
                }
                A::Nested(inner) if matches!(inner.as_ref(), A::BinaryOp { op: o, .. } if o == op) =>
                {
                    cur = inner;
                }
                other => {
                    operands.push(other);
                    break;
                }
            }
        }
        operands.reverse();
        let bop = if *op == BinaryOperator::And {
            BinOp::And
        } else {
            BinOp::Or
        };
        let mut bound = Vec::with_capacity(operands.len());
        for o in operands {
            let b = self.bind_expr(o, scope)?;
            let t = b.data_type(&scope.schema)?;
            if t != DataType::Boolean && t != DataType::Null {
                return Err(type_err(format!(
                    "{} needs BOOLEAN operands, found {}",
                    bop.symbol(),
                    type_name(&t)
                )));
            }
            bound.push(coerce(b, &t, &DataType::Boolean)?);
        }
        Ok(balanced(bop, bound))
    }

    fn bind_expr_inner(&mut self, e: &A, scope: &Scope) -> Result<Expr> {
        if !scope.replace.is_empty() {
            if let Some(i) = scope.replace.get(&key(e)) {
                return Ok(Expr::Column(*i));
            }
        }
        let ty = |x: &Expr| x.data_type(&scope.schema);
        match e {
            A::Identifier(_) | A::CompoundIdentifier(_) => {
                let parts = ident_parts(e).unwrap_or_default();
                match scope.resolve(&parts) {
                    Ok(i) => Ok(Expr::Column(i)),
                    // `SELECT now` / `current_timestamp` without parentheses.
                    Err(err) => match parts.as_slice() {
                        [n] if n.eq_ignore_ascii_case("current_timestamp") => {
                            Ok(Expr::Literal(Scalar::Ts(self.now)))
                        }
                        _ => Err(err),
                    },
                }
            }
            A::Value(v) => Ok(Expr::Literal(literal(&v.value)?)),
            A::Nested(x) => self.bind_expr(x, scope),
            A::TypedString(ts) => {
                let target = sql_type(&ts.data_type)?;
                let s = literal(&ts.value.value)?;
                coerce(Expr::Literal(s.clone()), &s.data_type(), &target)
            }
            A::Interval(iv) => {
                let text = match iv.value.as_ref() {
                    A::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) => s.clone(),
                        Value::Number(n, _) => n.clone(),
                        other => return Err(invalid(format!("bad interval {other}"))),
                    },
                    other => return Err(invalid(format!("bad interval {other}"))),
                };
                let unit = iv.leading_field.as_ref().map(|f| f.to_string());
                Ok(Expr::Literal(Scalar::Int(time::parse_interval(
                    &text,
                    unit.as_deref(),
                )?)))
            }
            A::UnaryOp { op, expr } => {
                let x = self.bind_expr(expr, scope)?;
                match op {
                    UnaryOperator::Not => {
                        let t = ty(&x)?;
                        if t != DataType::Boolean && t != DataType::Null {
                            return Err(type_err(format!(
                                "NOT needs BOOLEAN, found {}",
                                type_name(&t)
                            )));
                        }
                        Ok(Expr::Not(Box::new(x)))
                    }
                    UnaryOperator::Minus => match x {
                        Expr::Literal(Scalar::Int(v)) => Ok(Expr::Literal(Scalar::Int(-v))),
                        Expr::Literal(Scalar::Float(v)) => Ok(Expr::Literal(Scalar::Float(-v))),
                        x => {
                            let t = ty(&x)?;
                            if !is_numeric(&t) {
                                return Err(type_err(format!("cannot negate {}", type_name(&t))));
                            }
                            Ok(Expr::Neg(Box::new(x)))
                        }
                    },
                    UnaryOperator::Plus => Ok(x),
                    other => Err(unsupported(format!("operator {other}"))),
                }
            }
            A::BinaryOp { left, op, right } => {
                let l = self.bind_expr(left, scope)?;
                let r = self.bind_expr(right, scope)?;
                if *op == BinaryOperator::StringConcat {
                    let to_str = |x: Expr| -> Result<Expr> {
                        let t = x.data_type(&scope.schema)?;
                        Ok(match t {
                            DataType::Utf8 => x,
                            DataType::Null => coerce(x, &t, &DataType::Utf8)?.cast(DataType::Utf8),
                            _ => x.cast(DataType::Utf8),
                        })
                    };
                    return Ok(Expr::Func {
                        func: Func::Concat,
                        args: vec![to_str(l)?, to_str(r)?],
                    });
                }
                let op = match op {
                    BinaryOperator::Plus => BinOp::Add,
                    BinaryOperator::Minus => BinOp::Sub,
                    BinaryOperator::Multiply => BinOp::Mul,
                    BinaryOperator::Divide => BinOp::Div,
                    BinaryOperator::Modulo => BinOp::Mod,
                    BinaryOperator::Eq => BinOp::Eq,
                    BinaryOperator::NotEq => BinOp::NotEq,
                    BinaryOperator::Lt => BinOp::Lt,
                    BinaryOperator::LtEq => BinOp::LtEq,
                    BinaryOperator::Gt => BinOp::Gt,
                    BinaryOperator::GtEq => BinOp::GtEq,
                    BinaryOperator::And => BinOp::And,
                    BinaryOperator::Or => BinOp::Or,
                    other => return Err(unsupported(format!("operator {other}"))),
                };
                self.binary(op, l, r, scope)
            }
            A::IsNull(x) | A::IsNotNull(x) => Ok(Expr::IsNull {
                expr: Box::new(self.bind_expr(x, scope)?),
                negated: matches!(e, A::IsNotNull(_)),
            }),
            A::IsTrue(x) | A::IsFalse(x) => {
                let b = self.bind_expr(x, scope)?;
                let want = matches!(e, A::IsTrue(_));
                let eq = self.binary(BinOp::Eq, b, Expr::Literal(Scalar::Bool(want)), scope)?;
                Ok(Expr::Func {
                    func: Func::Coalesce,
                    args: vec![eq, Expr::Literal(Scalar::Bool(false))],
                })
            }
            A::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.bind_expr(expr, scope)?;
                let lo = self.bind_expr(low, scope)?;
                let hi = self.bind_expr(high, scope)?;
                let a = self.binary(BinOp::GtEq, x.clone(), lo, scope)?;
                let b = self.binary(BinOp::LtEq, x, hi, scope)?;
                let both = Expr::binary(BinOp::And, a, b);
                Ok(if *negated {
                    Expr::Not(Box::new(both))
                } else {
                    both
                })
            }
            A::In {
                expr,
                target,
                negated,
                ..
            } => {
                let x = self.bind_expr(expr, scope)?;
                let items: Vec<Expr> = match target {
                    ast::InTarget::List(list) => list
                        .iter()
                        .map(|i| self.bind_expr(i, scope))
                        .collect::<Result<_>>()?,
                    ast::InTarget::Subquery(q) => self
                        .subquery_values(q)?
                        .into_iter()
                        .map(Expr::Literal)
                        .collect(),
                    other => return Err(unsupported(format!("IN {other}"))),
                };
                // Constants become a set lookup; anything else an OR of equalities.
                let xt = ty(&x)?;
                if items.iter().all(Expr::is_constant) && !items.is_empty() {
                    let mut list = vec![];
                    for it in items {
                        let it_t = ty(&it)?;
                        let t = common_type(&xt, &it_t).ok_or_else(|| {
                            type_err(format!(
                                "IN list mixes {} and {}",
                                type_name(&xt),
                                type_name(&it_t)
                            ))
                        })?;
                        let c = coerce(it, &it_t, &t)?;
                        let one = crate::expr::empty_row_batch(1)?;
                        let a = c.eval_array(&one)?;
                        let v = Scalar::from_array(a.as_ref(), 0)?;
                        list.push(v);
                    }
                    let x = if matches!(xt, DataType::Dictionary(_, _))
                        || is_numeric(&xt)
                            && list.iter().any(|v| matches!(v, Scalar::Float(_)))
                            && xt != DataType::Float64
                    {
                        if matches!(xt, DataType::Dictionary(_, _)) {
                            x
                        } else {
                            x.cast(DataType::Float64)
                        }
                    } else {
                        x
                    };
                    return Ok(Expr::InList {
                        expr: Box::new(x),
                        list,
                        negated: *negated,
                    });
                }
                let mut acc: Option<Expr> = None;
                for it in items {
                    let eq = self.binary(BinOp::Eq, x.clone(), it, scope)?;
                    acc = Some(match acc {
                        None => eq,
                        Some(a) => Expr::binary(BinOp::Or, a, eq),
                    });
                }
                let any = acc.unwrap_or(Expr::Literal(Scalar::Bool(false)));
                Ok(if *negated {
                    Expr::Not(Box::new(any))
                } else {
                    any
                })
            }
            A::Like {
                negated,
                expr,
                pattern,
                escape_char,
                any,
            }
            | A::ILike {
                negated,
                expr,
                pattern,
                escape_char,
                any,
            } => {
                if escape_char.is_some() || *any {
                    return Err(unsupported("LIKE ... ESCAPE / ANY"));
                }
                let x = self.bind_expr(expr, scope)?;
                let t = ty(&x)?;
                if !is_stringy(&t) {
                    return Err(type_err(format!(
                        "LIKE needs a string, found {}",
                        type_name(&t)
                    )));
                }
                let pattern = match self.bind_expr(pattern, scope)? {
                    Expr::Literal(Scalar::Str(p)) => p,
                    _ => return Err(unsupported("LIKE pattern must be a string literal")),
                };
                Ok(Expr::Like {
                    expr: Box::new(x),
                    pattern,
                    negated: *negated,
                    case_insensitive: matches!(e, A::ILike { .. }),
                })
            }
            A::Cast {
                kind,
                expr,
                data_type,
                ..
            } => {
                let x = self.bind_expr(expr, scope)?;
                let to = sql_type(data_type)?;
                let from = ty(&x)?;
                if matches!(kind, CastKind::TryCast | CastKind::SafeCast) {
                    return Err(unsupported("TRY_CAST"));
                }
                if let (Expr::Literal(_), true) = (&x, matches!(to, DataType::Timestamp(_, _))) {
                    return coerce(x, &from, &to);
                }
                // DOUBLE -> integer rounds half to even (as PostgreSQL and DuckDB do).
                if from == DataType::Float64 && matches!(to, DataType::Int64 | DataType::Int32) {
                    let r = Expr::Func {
                        func: Func::RoundEven,
                        args: vec![x],
                    };
                    return Ok(r.cast(to));
                }
                Ok(if from == to { x } else { x.cast(to) })
            }
            A::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let op = operand
                    .as_ref()
                    .map(|o| self.bind_expr(o, scope))
                    .transpose()?;
                let mut whens = vec![];
                let mut thens = vec![];
                for c in conditions {
                    let w = self.bind_expr(&c.condition, scope)?;
                    let w = match &op {
                        Some(o) => self.binary(BinOp::Eq, o.clone(), w, scope)?,
                        None => w,
                    };
                    whens.push(w);
                    thens.push(self.bind_expr(&c.result, scope)?);
                }
                let otherwise = else_result
                    .as_ref()
                    .map(|x| self.bind_expr(x, scope))
                    .transpose()?;
                let mut t = DataType::Null;
                for x in thens.iter().chain(otherwise.iter()) {
                    let xt = ty(x)?;
                    t = common_type(&t, &xt).ok_or_else(|| {
                        type_err(format!(
                            "CASE branches mix {} and {}",
                            type_name(&t),
                            type_name(&xt)
                        ))
                    })?;
                }
                let mut branches = vec![];
                for (w, th) in whens.into_iter().zip(thens) {
                    let tt = ty(&th)?;
                    branches.push((w, coerce(th, &tt, &t)?));
                }
                let otherwise = match otherwise {
                    Some(o) => {
                        let ot = ty(&o)?;
                        Some(Box::new(coerce(o, &ot, &t)?))
                    }
                    None => None,
                };
                Ok(Expr::Case {
                    branches,
                    otherwise,
                })
            }
            A::Extract { field, expr, .. } => {
                let x = self.bind_expr(expr, scope)?;
                let x = self.to_ts(x, scope, "extract()")?;
                Ok(Expr::Func {
                    func: Func::Extract(unit_of(field)?),
                    args: vec![x],
                })
            }
            A::Ceil { expr, .. } | A::Floor { expr, .. } => {
                let x = self.bind_expr(expr, scope)?;
                let x = self.to_f64(x, scope, "ceil()/floor()")?;
                Ok(Expr::Func {
                    func: if matches!(e, A::Ceil { .. }) {
                        Func::Ceil
                    } else {
                        Func::Floor
                    },
                    args: vec![x],
                })
            }
            A::Subquery(q) => {
                let rows = self.subquery_values(q)?;
                match rows.as_slice() {
                    [] => Ok(Expr::Literal(Scalar::Null)),
                    [one] => Ok(Expr::Literal(one.clone())),
                    _ => Err(invalid("a scalar subquery returned more than one row")),
                }
            }
            A::Exists { subquery, negated } => {
                let rows = self.subquery_values_any(subquery)?;
                Ok(Expr::Literal(Scalar::Bool((rows > 0) != *negated)))
            }
            A::Function(f) => self.bind_function(f, scope),
            other => Err(unsupported(format!("expression {other}"))),
        }
    }

    fn to_f64(&self, x: Expr, scope: &Scope, what: &str) -> Result<Expr> {
        let t = x.data_type(&scope.schema)?;
        if !is_numeric(&t) && t != DataType::Null {
            return Err(type_err(format!(
                "{what} needs a number, found {}",
                type_name(&t)
            )));
        }
        coerce(x, &t, &DataType::Float64)
    }

    fn to_ts(&self, x: Expr, scope: &Scope, what: &str) -> Result<Expr> {
        let t = x.data_type(&scope.schema)?;
        match t {
            DataType::Timestamp(_, _) => Ok(x),
            DataType::Utf8 | DataType::Int64 | DataType::Null => coerce(x, &t, &ts_type()),
            t => Err(type_err(format!(
                "{what} needs a TIMESTAMP, found {}",
                type_name(&t)
            ))),
        }
    }

    /// Bind `l op r`, casting both sides to a common type.
    pub(crate) fn binary(&self, op: BinOp, l: Expr, r: Expr, scope: &Scope) -> Result<Expr> {
        let lt = l.data_type(&scope.schema)?;
        let rt = r.data_type(&scope.schema)?;
        let mismatch = || {
            type_err(format!(
                "cannot apply {} to {} and {}",
                op.symbol(),
                type_name(&lt),
                type_name(&rt)
            ))
        };
        if op == BinOp::And || op == BinOp::Or {
            for t in [&lt, &rt] {
                if t != &DataType::Boolean && t != &DataType::Null {
                    return Err(mismatch());
                }
            }
            let l = coerce(l, &lt, &DataType::Boolean)?;
            let r = coerce(r, &rt, &DataType::Boolean)?;
            return Ok(Expr::binary(op, l, r));
        }
        if op.is_comparison() {
            let t = common_type(&lt, &rt).ok_or_else(mismatch)?;
            let (l, r) = (coerce(l, &lt, &t)?, coerce(r, &rt, &t)?);
            // Dictionary against a non-constant string: decode the dictionary.
            let fix = |x: Expr, xt: &DataType, other: &Expr| -> Expr {
                if matches!(xt, DataType::Dictionary(_, _)) && !other.is_constant() {
                    x.cast(DataType::Utf8)
                } else {
                    x
                }
            };
            let l2 = fix(l, &lt, &r);
            let r2 = fix(r, &rt, &l2);
            // Keep the constant on the right (the evaluator's dictionary fast path).
            if l2.is_constant() && !r2.is_constant() {
                return Ok(Expr::binary(op.flip(), r2, l2));
            }
            return Ok(Expr::binary(op, l2, r2));
        }
        // Arithmetic.
        let is_ts = |t: &DataType| matches!(t, DataType::Timestamp(_, _));
        if is_ts(&lt) || is_ts(&rt) {
            let as_i64 = |x: Expr, t: &DataType| -> Result<Expr> {
                if is_ts(t) || t == &DataType::Int32 {
                    Ok(x.cast(DataType::Int64))
                } else if t == &DataType::Int64 || t == &DataType::Null {
                    coerce(x, t, &DataType::Int64)
                } else {
                    Err(mismatch())
                }
            };
            let (li, ri) = (as_i64(l, &lt)?, as_i64(r, &rt)?);
            return match (is_ts(&lt), is_ts(&rt), op) {
                (true, true, BinOp::Sub) => Ok(Expr::binary(op, li, ri)),
                (true, false, BinOp::Add | BinOp::Sub) | (false, true, BinOp::Add) => {
                    Ok(Expr::binary(op, li, ri).cast(ts_type()))
                }
                _ => Err(mismatch()),
            };
        }
        if !(is_numeric(&lt) || lt == DataType::Null) || !(is_numeric(&rt) || rt == DataType::Null)
        {
            return Err(mismatch());
        }
        let t = if op == BinOp::Div {
            DataType::Float64
        } else {
            common_type(&lt, &rt).ok_or_else(mismatch)?
        };
        let t = if t == DataType::Null {
            DataType::Int64
        } else {
            t
        };
        let t = if t == DataType::Int32 {
            DataType::Int64
        } else {
            t
        };
        Ok(Expr::binary(op, coerce(l, &lt, &t)?, coerce(r, &rt, &t)?))
    }

    /// Plain expression arguments of a function call.
    pub(crate) fn func_args<'e>(&self, f: &'e ast::Function) -> Result<Vec<&'e A>> {
        match &f.args {
            FunctionArguments::None => Ok(vec![]),
            FunctionArguments::List(l) => l
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Ok(x),
                    other => Err(unsupported(format!("function argument {other}"))),
                })
                .collect(),
            FunctionArguments::Subquery(_) => Err(unsupported("subquery as a function argument")),
        }
    }

    fn bind_function(&mut self, f: &ast::Function, scope: &Scope) -> Result<Expr> {
        let name = f.name.to_string().to_ascii_lowercase();
        if f.over.is_some() {
            return Err(invalid(format!(
                "window function {name}() is not allowed here"
            )));
        }
        if crate::plan::bind::is_aggregate_name(&name) {
            return Err(invalid(format!("aggregate {name}() is not allowed here")));
        }
        let args = self.func_args(f)?;
        let want = |n: std::ops::RangeInclusive<usize>| -> Result<()> {
            if n.contains(&args.len()) {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{name}() takes {} to {} arguments, got {}",
                    n.start(),
                    n.end(),
                    args.len()
                )))
            }
        };
        let bound = |i: usize, b: &mut Self| -> Result<Expr> {
            let a = args
                .get(i)
                .ok_or_else(|| invalid(format!("{name}() argument {i} missing")))?;
            b.bind_expr(a, scope)
        };
        let math = |func: Func| func;
        match name.as_str() {
            "now" | "current_timestamp" => {
                want(0..=0)?;
                Ok(Expr::Literal(Scalar::Ts(self.now)))
            }
            "abs" | "sqrt" | "ln" | "log10" | "log" | "exp" | "round" | "floor" | "ceil"
            | "ceiling" => {
                want(if name == "round" { 1..=2 } else { 1..=1 })?;
                let x = bound(0, self)?;
                let t = x.data_type(&scope.schema)?;
                let func = match name.as_str() {
                    "abs" => Func::Abs,
                    "sqrt" => Func::Sqrt,
                    "ln" => Func::Ln,
                    "log10" | "log" => Func::Log10,
                    "exp" => Func::Exp,
                    "round" => Func::Round,
                    "floor" => Func::Floor,
                    _ => Func::Ceil,
                };
                let x = if func == Func::Abs && matches!(t, DataType::Int64 | DataType::Int32) {
                    coerce(x, &t, &DataType::Int64)?
                } else {
                    self.to_f64(x, scope, &name)?
                };
                let mut a = vec![x];
                if args.len() == 2 {
                    a.push(bound(1, self)?);
                }
                Ok(Expr::Func {
                    func: math(func),
                    args: a,
                })
            }
            "power" | "pow" => {
                want(2..=2)?;
                let a = bound(0, self)?;
                let b = bound(1, self)?;
                Ok(Expr::Func {
                    func: Func::Power,
                    args: vec![self.to_f64(a, scope, &name)?, self.to_f64(b, scope, &name)?],
                })
            }
            "upper" | "lower" | "length" | "char_length" => {
                want(1..=1)?;
                let x = bound(0, self)?;
                let t = x.data_type(&scope.schema)?;
                if !is_stringy(&t) {
                    return Err(type_err(format!(
                        "{name}() needs a string, found {}",
                        type_name(&t)
                    )));
                }
                let func = match name.as_str() {
                    "upper" => Func::Upper,
                    "lower" => Func::Lower,
                    _ => Func::Length,
                };
                Ok(Expr::Func {
                    func,
                    args: vec![x],
                })
            }
            "coalesce" => {
                if args.is_empty() {
                    return Err(invalid("coalesce() needs arguments"));
                }
                let xs: Vec<Expr> = (0..args.len())
                    .map(|i| bound(i, self))
                    .collect::<Result<_>>()?;
                let mut t = DataType::Null;
                for x in &xs {
                    let xt = x.data_type(&scope.schema)?;
                    t = common_type(&t, &xt)
                        .ok_or_else(|| type_err("coalesce() arguments have different types"))?;
                }
                let t = if matches!(t, DataType::Dictionary(_, _)) {
                    DataType::Utf8
                } else {
                    t
                };
                let xs = xs
                    .into_iter()
                    .map(|x| {
                        let xt = x.data_type(&scope.schema)?;
                        if matches!(xt, DataType::Dictionary(_, _)) {
                            Ok(x.cast(DataType::Utf8))
                        } else {
                            coerce(x, &xt, &t)
                        }
                    })
                    .collect::<Result<_>>()?;
                Ok(Expr::Func {
                    func: Func::Coalesce,
                    args: xs,
                })
            }
            "xbar" => {
                want(2..=2)?;
                let x = bound(0, self)?;
                let b = bound(1, self)?;
                let t = x.data_type(&scope.schema)?;
                let x = match t {
                    DataType::Timestamp(_, _) | DataType::Int64 | DataType::Float64 => x,
                    DataType::Int32 => x.cast(DataType::Int64),
                    t => {
                        return Err(type_err(format!(
                            "xbar() needs a number or TIMESTAMP, found {}",
                            type_name(&t)
                        )))
                    }
                };
                match &b {
                    Expr::Literal(Scalar::Int(_)) | Expr::Literal(Scalar::Float(_)) => {}
                    _ => {
                        return Err(type_err(
                            "xbar() bucket must be a constant number or INTERVAL",
                        ))
                    }
                }
                if matches!(b, Expr::Literal(Scalar::Float(_))) && t != DataType::Float64 {
                    return Err(type_err(
                        "xbar() bucket for an integer or TIMESTAMP must be an integer or INTERVAL",
                    ));
                }
                Ok(Expr::Func {
                    func: Func::Xbar,
                    args: vec![x, b],
                })
            }
            "date_trunc" => {
                want(2..=2)?;
                let unit = match bound(0, self)? {
                    Expr::Literal(Scalar::Str(u)) => TimeUnit::parse(&u)
                        .ok_or_else(|| invalid(format!("date_trunc(): unknown unit '{u}'")))?,
                    _ => return Err(invalid("date_trunc() unit must be a string literal")),
                };
                let x = bound(1, self)?;
                let x = self.to_ts(x, scope, "date_trunc()")?;
                Ok(Expr::Func {
                    func: Func::DateTrunc(unit),
                    args: vec![Expr::Literal(Scalar::Null), x],
                })
            }
            "date_part" | "extract" => {
                want(2..=2)?;
                let unit = match bound(0, self)? {
                    Expr::Literal(Scalar::Str(u)) => TimeUnit::parse(&u)
                        .ok_or_else(|| invalid(format!("{name}(): unknown unit '{u}'")))?,
                    _ => return Err(invalid(format!("{name}() unit must be a string literal"))),
                };
                let x = bound(1, self)?;
                let x = self.to_ts(x, scope, &name)?;
                Ok(Expr::Func {
                    func: Func::Extract(unit),
                    args: vec![x],
                })
            }
            "date_bin" | "time_bucket" => {
                want(2..=3)?;
                let stride = match bound(0, self)? {
                    s @ Expr::Literal(Scalar::Int(_)) => s,
                    Expr::Literal(Scalar::Str(s)) => {
                        Expr::Literal(Scalar::Int(time::parse_interval(&s, None)?))
                    }
                    _ => return Err(type_err(format!("{name}() stride must be an INTERVAL"))),
                };
                let x = bound(1, self)?;
                let x = self.to_ts(x, scope, &name)?;
                let mut a = vec![stride, x];
                if args.len() == 3 {
                    let o = bound(2, self)?;
                    let ot = o.data_type(&scope.schema)?;
                    let o = coerce(o, &ot, &ts_type())?;
                    if !o.is_constant() {
                        return Err(type_err(format!("{name}() origin must be a constant")));
                    }
                    a.push(o);
                }
                Ok(Expr::Func {
                    func: Func::DateBin,
                    args: a,
                })
            }
            "to_timestamp" => {
                want(1..=1)?;
                let x = bound(0, self)?;
                self.to_ts(x, scope, "to_timestamp()")
            }
            _ => Err(invalid(format!("unknown function {name}()"))),
        }
    }
}
