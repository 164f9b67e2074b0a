//! From a sqlparser `Query` to a plan [`Node`]: FROM (tables, subqueries, CTEs, joins,
//! ASOF joins), WHERE (pushed into scans, where it becomes pruning), GROUP BY and aggregates,
//! HAVING, window functions, projection, DISTINCT, ORDER BY, LIMIT/OFFSET, UNION ALL.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sqlparser::ast::{
    self, Expr as A, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, OrderByKind,
    Query, Select, SelectItem, SetExpr, SetOperator, SetQuantifier,
};
use zepto_storage::Db;

use crate::error::{invalid, type_err, unsupported, Error, Result};
use crate::exec::ExecCtx;
use crate::expr::{BinOp, Expr, Scalar};
use crate::plan::bind_expr::{coerce, key, literal, Scope, ScopeCol};
use crate::plan::{type_name, Node, SortKey};

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "first",
    "last",
    "vwap",
    "stddev",
    "stddev_samp",
    "variance",
    "var_samp",
    "median",
    "percentile",
    "quantile",
];
pub(crate) const WINDOW_ONLY: &[&str] = &[
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "ema",
    "mavg",
    "msum",
    "delta",
];

pub(crate) fn is_aggregate_name(n: &str) -> bool {
    AGGREGATES.contains(&n)
}

/// Turns AST into plans. Uncorrelated subqueries in expressions are run while binding
/// (through `ctx`), so the plan only holds their values.
pub(crate) struct Binder<'a> {
    pub(crate) db: &'a Db,
    pub(crate) ctx: &'a ExecCtx,
    /// `now()` for the whole statement.
    pub(crate) now: i64,
    pub(crate) ctes: Vec<(String, Node, Scope)>,
    /// Current expression nesting while binding (see `MAX_EXPR_DEPTH`).
    pub(crate) depth: usize,
    /// When false, an uncorrelated subquery in an expression is refused instead of run
    /// (cluster planning: running it would read only this node's data).
    pub(crate) subqueries_allowed: bool,
}

impl std::fmt::Debug for Binder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder").field("now", &self.now).finish()
    }
}

/// Direct sub-expressions of an AST expression (not descending into subqueries).
fn children(e: &A) -> Vec<&A> {
    match e {
        A::BinaryOp { left, right, .. } => vec![left, right],
        A::UnaryOp { expr, .. }
        | A::Nested(expr)
        | A::IsNull(expr)
        | A::IsNotNull(expr)
        | A::IsTrue(expr)
        | A::IsFalse(expr)
        | A::Cast { expr, .. }
        | A::Extract { expr, .. }
        | A::Ceil { expr, .. }
        | A::Floor { expr, .. } => vec![expr],
        A::Between {
            expr, low, high, ..
        } => vec![expr, low, high],
        A::Like { expr, pattern, .. } | A::ILike { expr, pattern, .. } => vec![expr, pattern],
        A::In { expr, target, .. } => {
            let mut v: Vec<&A> = vec![expr];
            if let ast::InTarget::List(l) = target {
                v.extend(l.iter());
            }
            v
        }
        A::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            let mut v: Vec<&A> = vec![];
            v.extend(operand.iter().map(|b| b.as_ref()));
            for c in conditions {
                v.push(&c.condition);
                v.push(&c.result);
            }
            v.extend(else_result.iter().map(|b| b.as_ref()));
            v
        }
        A::Function(f) => match &f.args {
            FunctionArguments::List(l) => l
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        },
        _ => vec![],
    }
}

pub(crate) fn func_name(f: &ast::Function) -> String {
    f.name.to_string().to_ascii_lowercase()
}

/// Collect aggregate calls (outside window functions) in `e`. Iterative: predicates can be
/// long chains.
pub(crate) fn collect_aggs<'e>(e: &'e A, out: &mut Vec<&'e A>) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        if let A::Function(f) = e {
            if f.over.is_none() && is_aggregate_name(&func_name(f)) {
                if !out.iter().any(|x| key(x) == key(e)) {
                    out.push(e);
                }
                continue;
            }
            if let Some(ast::WindowType::WindowSpec(spec)) = &f.over {
                // Aggregates inside a window's arguments, PARTITION BY and ORDER BY are
                // computed by the aggregate node below the window.
                stack.extend(spec.partition_by.iter().rev());
                stack.extend(spec.order_by.iter().rev().map(|o| &o.expr));
            }
        }
        let mut c = children(e);
        c.reverse();
        stack.extend(c);
    }
}

fn collect_windows<'e>(e: &'e A, out: &mut Vec<&'e A>) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        if let A::Function(f) = e {
            if f.over.is_some() {
                if !out.iter().any(|x| key(x) == key(e)) {
                    out.push(e);
                }
                continue;
            }
        }
        let mut c = children(e);
        c.reverse();
        stack.extend(c);
    }
}

pub(crate) fn split_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Binary {
            op: BinOp::And,
            left,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        e => out.push(e),
    }
}

pub(crate) fn and_all(parts: Vec<Expr>) -> Option<Expr> {
    if parts.is_empty() {
        None
    } else {
        // Balanced, so that thousands of conjuncts do not make a deep tree.
        Some(crate::plan::bind_expr::balanced(BinOp::And, parts))
    }
}

pub(crate) fn output_name(e: &A) -> String {
    match e {
        A::Identifier(i) => i.value.clone(),
        A::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()).unwrap_or_default(),
        A::Nested(x) => output_name(x),
        other => crate::plan::bind_expr::text(other),
    }
}

/// Most UNIONs, and most joins, in one query (each is a level of recursion).
pub(crate) const MAX_SET_OPS: usize = 64;

/// Refuse expressions too deep to clone or print safely.
fn guard_depth(e: &A) -> Result<()> {
    const LIMIT: usize = 256;
    if ast_depth(e, LIMIT) > LIMIT {
        return Err(invalid(format!(
            "expression nested more than {LIMIT} levels deep"
        )));
    }
    Ok(())
}

/// Nesting depth of an AST expression, counted without recursion; stops counting past
/// `limit`.
pub(crate) fn ast_depth(e: &A, limit: usize) -> usize {
    let mut stack = vec![(e, 1usize)];
    let mut max = 0;
    while let Some((e, d)) = stack.pop() {
        max = max.max(d);
        if max > limit {
            return max;
        }
        for c in children(e) {
            stack.push((c, d + 1));
        }
    }
    max
}

fn const_usize(e: &A, what: &str) -> Result<usize> {
    match e {
        A::Value(v) => match literal(&v.value)? {
            Scalar::Int(i) if i >= 0 => Ok(i as usize),
            _ => Err(invalid(format!("{what} must be a non-negative integer"))),
        },
        _ => Err(invalid(format!("{what} must be a non-negative integer"))),
    }
}

impl<'a> Binder<'a> {
    pub(crate) fn new(db: &'a Db, ctx: &'a ExecCtx, now: i64) -> Binder<'a> {
        Binder {
            db,
            ctx,
            now,
            ctes: vec![],
            depth: 0,
            subqueries_allowed: true,
        }
    }

    /// Refuse uncorrelated subqueries in expressions (see `subqueries_allowed`).
    fn check_subquery_allowed(&self) -> Result<()> {
        if self.subqueries_allowed {
            return Ok(());
        }
        Err(unsupported(
            "in cluster mode a subquery in an expression (IN (SELECT ...), a scalar subquery, \
             EXISTS) cannot be distributed yet: it would be evaluated over one node's data; \
             run the subquery first and pass its values, or use a join restricted to one symbol",
        ))
    }

    /// Run an uncorrelated subquery and return its single column's values.
    pub(crate) fn subquery_values(&mut self, q: &Query) -> Result<Vec<Scalar>> {
        self.check_subquery_allowed()?;
        let (node, _) = self.plan_query(q)?;
        if node.schema().fields().len() != 1 {
            return Err(invalid("a subquery used as a value must return one column"));
        }
        let batches = crate::exec::collect(&node, self.ctx)?;
        let mut out = vec![];
        for b in &batches {
            let c = b.column(0);
            for i in 0..b.num_rows() {
                out.push(Scalar::from_array(c.as_ref(), i)?);
            }
        }
        Ok(out)
    }

    pub(crate) fn subquery_values_any(&mut self, q: &Query) -> Result<usize> {
        self.check_subquery_allowed()?;
        let (node, _) = self.plan_query(q)?;
        let batches = crate::exec::collect(&node, self.ctx)?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    pub(crate) fn plan_query(&mut self, q: &Query) -> Result<(Node, Scope)> {
        let pushed = self.ctes.len();
        if let Some(with) = &q.with {
            if with.recursive {
                return Err(unsupported("WITH RECURSIVE"));
            }
            for cte in &with.cte_tables {
                let (node, scope) = self.plan_query(&cte.query)?;
                let name = cte.alias.name.value.to_ascii_lowercase();
                let (node, scope) = rename_columns(node, scope, &cte.alias.columns)?;
                self.ctes.push((name.clone(), node, scope.requalify(&name)));
            }
        }
        let res = self.plan_query_body(q);
        self.ctes.truncate(pushed);
        res
    }

    fn plan_query_body(&mut self, q: &Query) -> Result<(Node, Scope)> {
        if q.fetch.is_some() || !q.locks.is_empty() {
            return Err(unsupported("FETCH / FOR UPDATE"));
        }
        let order: Vec<ast::OrderByExpr> = match &q.order_by {
            None => vec![],
            Some(o) => match &o.kind {
                OrderByKind::Expressions(v) => v.clone(),
                OrderByKind::All(_) => return Err(unsupported("ORDER BY ALL")),
            },
        };
        let (limit, offset) = match &q.limit_clause {
            None => (None, 0),
            Some(ast::LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if !limit_by.is_empty() {
                    return Err(unsupported("LIMIT BY"));
                }
                let l = match limit {
                    Some(A::Value(v)) if matches!(v.value, ast::Value::Null) => None,
                    Some(e) => Some(const_usize(e, "LIMIT")?),
                    None => None,
                };
                let o = offset
                    .as_ref()
                    .map(|o| const_usize(&o.value, "OFFSET"))
                    .transpose()?;
                (l, o.unwrap_or(0))
            }
            Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => (
                Some(const_usize(limit, "LIMIT")?),
                const_usize(offset, "OFFSET")?,
            ),
        };
        let (mut node, scope) = match q.body.as_ref() {
            SetExpr::Select(s) => self.plan_select(s, &order)?,
            other => {
                let (node, scope) = self.plan_set_expr(other)?;
                let keys = order
                    .iter()
                    .map(|o| self.output_sort_key(o, &scope))
                    .collect::<Result<Vec<_>>>()?;
                let node = if keys.is_empty() {
                    node
                } else {
                    Node::Sort {
                        input: Box::new(node),
                        keys,
                        fetch: None,
                    }
                };
                (node, scope)
            }
        };
        if limit.is_some() || offset > 0 {
            if let (Node::Sort { fetch, .. }, Some(l)) = (&mut node, limit) {
                *fetch = Some(l.saturating_add(offset));
            }
            node = Node::Limit {
                input: Box::new(node),
                skip: offset,
                fetch: limit,
            };
        }
        Ok((node, scope))
    }

    /// ORDER BY over an output scope: a name, an alias or an ordinal.
    fn output_sort_key(&mut self, o: &ast::OrderByExpr, scope: &Scope) -> Result<SortKey> {
        let expr = match &o.expr {
            A::Value(v) => match literal(&v.value)? {
                Scalar::Int(i) if i >= 1 && (i as usize) <= scope.cols.len() => {
                    Expr::Column(i as usize - 1)
                }
                _ => {
                    return Err(invalid(format!(
                        "ORDER BY position {} is out of range",
                        o.expr
                    )))
                }
            },
            e => self.bind_expr(e, scope)?,
        };
        Ok(sort_key(expr, o))
    }

    fn plan_set_expr(&mut self, body: &SetExpr) -> Result<(Node, Scope)> {
        // Each UNION level is a recursion here and in execution: bound it.
        let mut depth = 0;
        let mut cur = body;
        while let SetExpr::SetOperation { left, .. } = cur {
            depth += 1;
            if depth > MAX_SET_OPS {
                return Err(invalid(format!(
                    "more than {MAX_SET_OPS} UNIONs in one query"
                )));
            }
            cur = left;
        }
        match body {
            SetExpr::Select(s) => self.plan_select(s, &[]),
            SetExpr::Query(q) => self.plan_query(q),
            SetExpr::Values(v) => self.plan_values(v),
            SetExpr::SetOperation {
                left,
                op,
                set_quantifier,
                right,
            } => {
                if *op != SetOperator::Union {
                    return Err(unsupported(format!("{op}")));
                }
                let (l, ls) = self.plan_set_expr(left)?;
                let (r, _) = self.plan_set_expr(right)?;
                let lsch = l.schema();
                let rsch = r.schema();
                if lsch.fields().len() != rsch.fields().len() {
                    return Err(invalid(format!(
                        "UNION inputs have {} and {} columns",
                        lsch.fields().len(),
                        rsch.fields().len()
                    )));
                }
                // Cast the right side to the left side's types.
                let mut exprs = vec![];
                for (i, (lf, rf)) in lsch.fields().iter().zip(rsch.fields().iter()).enumerate() {
                    let lt = crate::exec::groups::key_type(lf.data_type());
                    let rt = rf.data_type();
                    let e = Expr::Column(i);
                    exprs.push(if &lt == rt {
                        e
                    } else if matches!(rt, DataType::Dictionary(_, _)) || rt == &DataType::Null {
                        e.cast(lt)
                    } else {
                        coerce(e, rt, &lt)?
                    });
                }
                let fields: Vec<Field> = lsch
                    .fields()
                    .iter()
                    .map(|f| {
                        Field::new(f.name(), crate::exec::groups::key_type(f.data_type()), true)
                    })
                    .collect();
                let schema = Arc::new(Schema::new(fields));
                let lexprs: Vec<Expr> = (0..lsch.fields().len())
                    .map(|i| {
                        let e = Expr::Column(i);
                        match lsch.field(i).data_type() {
                            DataType::Dictionary(_, _) => e.cast(DataType::Utf8),
                            _ => e,
                        }
                    })
                    .collect();
                let l = Node::Project {
                    input: Box::new(l),
                    exprs: lexprs,
                    schema: schema.clone(),
                };
                let r = Node::Project {
                    input: Box::new(r),
                    exprs,
                    schema: schema.clone(),
                };
                let union = Node::Union {
                    inputs: vec![l, r],
                    schema: schema.clone(),
                };
                let node = match set_quantifier {
                    SetQuantifier::All => union,
                    SetQuantifier::Distinct | SetQuantifier::None => Node::Distinct {
                        input: Box::new(union),
                    },
                    other => return Err(unsupported(format!("UNION {other}"))),
                };
                let mut scope = Scope::from_schema(schema, None);
                for (c, lc) in scope.cols.iter_mut().zip(ls.cols.iter()) {
                    c.name = lc.name.clone();
                }
                Ok((node, scope))
            }
            other => Err(unsupported(format!("{other}"))),
        }
    }

    fn plan_values(&mut self, v: &ast::Values) -> Result<(Node, Scope)> {
        let first = v
            .rows
            .first()
            .ok_or_else(|| invalid("VALUES without rows"))?;
        let width = first.content.len();
        let empty = Scope::new(vec![], Arc::new(Schema::empty()));
        let mut cols: Vec<Vec<Scalar>> = vec![vec![]; width];
        for row in &v.rows {
            if row.content.len() != width {
                return Err(invalid("VALUES rows have different lengths"));
            }
            for (i, e) in row.content.iter().enumerate() {
                let b = self.bind_expr(e, &empty)?;
                let one = crate::expr::empty_row_batch(1)?;
                let a = b.eval_array(&one)?;
                cols[i].push(Scalar::from_array(a.as_ref(), 0)?);
            }
        }
        let mut arrays = vec![];
        let mut fields = vec![];
        for (i, c) in cols.iter().enumerate() {
            let a = scalars_to_array(c)?;
            fields.push(Field::new(
                format!("column{}", i + 1),
                a.data_type().clone(),
                true,
            ));
            arrays.push(a);
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), arrays)?;
        Ok((
            Node::Values {
                schema: schema.clone(),
                batches: vec![batch],
            },
            Scope::from_schema(schema, None),
        ))
    }

    fn plan_select(&mut self, s: &Select, order: &[ast::OrderByExpr]) -> Result<(Node, Scope)> {
        if s.top.is_some() || s.into.is_some() || !s.lateral_views.is_empty() || s.qualify.is_some()
        {
            return Err(unsupported("TOP / INTO / LATERAL VIEW / QUALIFY"));
        }
        // FROM
        let (mut node, mut scope) = if s.from.is_empty() {
            let schema = Arc::new(Schema::empty());
            (
                Node::Values {
                    schema: schema.clone(),
                    batches: vec![crate::expr::empty_row_batch(1)?],
                },
                Scope::new(vec![], schema),
            )
        } else {
            self.plan_from(&s.from)?
        };
        // WHERE
        if let Some(w) = &s.selection {
            let mut probe = vec![];
            collect_aggs(w, &mut probe);
            if !probe.is_empty() {
                return Err(invalid("aggregates are not allowed in WHERE; use HAVING"));
            }
            let pred = self.bind_expr(w, &scope)?;
            let t = pred.data_type(&scope.schema)?;
            if t != DataType::Boolean && t != DataType::Null {
                return Err(type_err(format!(
                    "WHERE needs a BOOLEAN, found {}",
                    type_name(&t)
                )));
            }
            node = self.push_filter(node, pred, &scope)?;
        }
        // Expand the projection (cloning an AST recurses: refuse absurd depths first).
        let mut items: Vec<(A, String)> = vec![];
        for item in &s.projection {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                guard_depth(e)?;
            }
        }
        if let GroupByExpr::Expressions(v, _) = &s.group_by {
            for g in v {
                guard_depth(g)?;
            }
        }
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) => items.push((e.clone(), output_name(e))),
                SelectItem::ExprWithAlias { expr, alias } => {
                    items.push((expr.clone(), alias.value.clone()))
                }
                SelectItem::Wildcard(_) => {
                    for c in &scope.cols {
                        items.push((qualified_ident(c), c.name.clone()));
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let q = kind.to_string().to_ascii_lowercase();
                    let q = q.strip_suffix(".*").unwrap_or(&q).to_string();
                    let before = items.len();
                    for c in scope
                        .cols
                        .iter()
                        .filter(|c| c.qualifier.as_deref() == Some(q.as_str()))
                    {
                        items.push((qualified_ident(c), c.name.clone()));
                    }
                    if items.len() == before {
                        return Err(Error::TableNotFound(q));
                    }
                }
                other => return Err(unsupported(format!("select item {other}"))),
            }
        }
        // GROUP BY / aggregates
        let group_exprs: Vec<A> = match &s.group_by {
            GroupByExpr::Expressions(v, mods) => {
                if !mods.is_empty() {
                    return Err(unsupported("GROUP BY modifiers"));
                }
                v.iter()
                    .map(|g| resolve_group_ref(g, &items, &scope))
                    .collect::<Result<_>>()?
            }
            GroupByExpr::All(_) => return Err(unsupported("GROUP BY ALL")),
        };
        let mut aggs: Vec<&A> = vec![];
        for (e, _) in &items {
            collect_aggs(e, &mut aggs);
        }
        if let Some(h) = &s.having {
            collect_aggs(h, &mut aggs);
        }
        for o in order {
            collect_aggs(&o.expr, &mut aggs);
        }
        let aggs: Vec<A> = aggs.into_iter().cloned().collect();
        if !aggs.is_empty() || !group_exprs.is_empty() {
            let (n, sc) = self.plan_aggregate(node, &scope, &group_exprs, &aggs)?;
            node = n;
            scope = sc;
            if let Some(h) = &s.having {
                let pred = self.bind_expr(h, &scope)?;
                node = Node::Filter {
                    input: Box::new(node),
                    predicate: pred,
                };
            }
        } else if s.having.is_some() {
            return Err(invalid("HAVING needs GROUP BY or an aggregate"));
        }
        // Window functions
        let mut wins: Vec<&A> = vec![];
        for (e, _) in &items {
            collect_windows(e, &mut wins);
        }
        for o in order {
            collect_windows(&o.expr, &mut wins);
        }
        if !wins.is_empty() {
            let wins: Vec<A> = wins.into_iter().cloned().collect();
            let (n, sc) = self.plan_windows(node, scope, &wins)?;
            node = n;
            scope = sc;
        }
        // Projection (+ hidden sort columns)
        let mut exprs = vec![];
        let mut fields = vec![];
        let mut out_cols = vec![];
        for (e, name) in &items {
            let b = self.bind_expr(e, &scope)?;
            let t = b.data_type(&scope.schema)?;
            let designated =
                matches!(b, Expr::Column(i) if scope.cols.get(i).is_some_and(|c| c.designated_ts));
            let qualifier = match (&b, e) {
                (Expr::Column(i), A::Identifier(_) | A::CompoundIdentifier(_)) => {
                    scope.cols.get(*i).and_then(|c| c.qualifier.clone())
                }
                _ => None,
            };
            fields.push(Field::new(name, t, true));
            exprs.push(b);
            out_cols.push(ScopeCol {
                qualifier,
                name: name.clone(),
                designated_ts: designated,
            });
        }
        let visible = exprs.len();
        let distinct = match &s.distinct {
            None | Some(ast::Distinct::All) => false,
            Some(ast::Distinct::Distinct) => true,
            Some(ast::Distinct::On(_)) => return Err(unsupported("DISTINCT ON")),
        };
        let out_schema_vis = Arc::new(Schema::new(fields.clone()));
        let mut out_scope = Scope::new(out_cols.clone(), out_schema_vis.clone());
        let mut keys = vec![];
        for o in order {
            // 1. ordinal, 2. output alias/name, 3. any expression over the input.
            let by_output = match &o.expr {
                A::Value(v) => match literal(&v.value)? {
                    Scalar::Int(i) if i >= 1 && (i as usize) <= visible => Some(i as usize - 1),
                    _ => {
                        return Err(invalid(format!(
                            "ORDER BY position {} is out of range",
                            o.expr
                        )))
                    }
                },
                // A name that is both an output alias and an input column means the alias
                // (as in PostgreSQL).
                A::Identifier(id) => out_cols
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(&id.value)),
                e => items.iter().position(|(x, _)| key(x) == key(e)),
            };
            let idx = match by_output {
                Some(i) => i,
                None => {
                    if distinct {
                        return Err(invalid("with SELECT DISTINCT, ORDER BY expressions must appear in the select list"));
                    }
                    let b = self.bind_expr(&o.expr, &scope)?;
                    let t = b.data_type(&scope.schema)?;
                    fields.push(Field::new(format!("__sort{}", exprs.len()), t, true));
                    exprs.push(b);
                    exprs.len() - 1
                }
            };
            keys.push(sort_key(Expr::Column(idx), o));
        }
        let schema = Arc::new(Schema::new(fields));
        node = Node::Project {
            input: Box::new(node),
            exprs,
            schema: schema.clone(),
        };
        if distinct {
            node = Node::Distinct {
                input: Box::new(node),
            };
        }
        if !keys.is_empty() {
            node = Node::Sort {
                input: Box::new(node),
                keys,
                fetch: None,
            };
        }
        if schema.fields().len() > visible {
            let exprs = (0..visible).map(Expr::Column).collect();
            node = Node::Project {
                input: Box::new(node),
                exprs,
                schema: out_schema_vis.clone(),
            };
        }
        out_scope.schema = out_schema_vis;
        Ok((node, out_scope))
    }
}

pub(crate) fn sort_key(expr: Expr, o: &ast::OrderByExpr) -> SortKey {
    let descending = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
    // NULLs sort last ascending and first descending (as PostgreSQL and DuckDB do).
    let nulls_first = o.options.nulls_first.unwrap_or(descending);
    SortKey {
        expr,
        descending,
        nulls_first,
    }
}

fn qualified_ident(c: &ScopeCol) -> A {
    let id = |s: &str| ast::Ident::with_quote('"', s);
    match &c.qualifier {
        Some(q) => A::CompoundIdentifier(vec![id(q), id(&c.name)]),
        None => A::Identifier(id(&c.name)),
    }
}

/// GROUP BY may name a select alias or position.
fn resolve_group_ref(g: &A, items: &[(A, String)], scope: &Scope) -> Result<A> {
    match g {
        A::Value(v) => match literal(&v.value)? {
            Scalar::Int(i) if i >= 1 && (i as usize) <= items.len() => Ok(items
                .get(i as usize - 1)
                .map(|x| x.0.clone())
                .unwrap_or_else(|| g.clone())),
            _ => Err(invalid(format!("GROUP BY position {g} is out of range"))),
        },
        A::Identifier(id) if scope.resolve(std::slice::from_ref(&id.value)).is_err() => match items
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(&id.value))
        {
            Some((e, _)) => Ok(e.clone()),
            None => Ok(g.clone()),
        },
        _ => Ok(g.clone()),
    }
}

pub(crate) fn rename_columns(
    node: Node,
    mut scope: Scope,
    cols: &[ast::TableAliasColumnDef],
) -> Result<(Node, Scope)> {
    if cols.is_empty() {
        return Ok((node, scope));
    }
    if cols.len() != scope.cols.len() {
        return Err(invalid(format!(
            "alias lists {} columns, the relation has {}",
            cols.len(),
            scope.cols.len()
        )));
    }
    let fields: Vec<Field> = scope
        .schema
        .fields()
        .iter()
        .zip(cols)
        .map(|(f, c)| f.as_ref().clone().with_name(c.name.value.clone()))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    for (sc, c) in scope.cols.iter_mut().zip(cols) {
        sc.name = c.name.value.clone();
    }
    scope.schema = schema.clone();
    let n = schema.fields().len();
    let node = Node::Project {
        input: Box::new(node),
        exprs: (0..n).map(Expr::Column).collect(),
        schema,
    };
    Ok((node, scope))
}

/// A scan of every column of a table (projection pruning narrows it later).
fn scalars_to_array(vals: &[Scalar]) -> Result<arrow::array::ArrayRef> {
    use arrow::array::{
        new_null_array, BooleanArray, Float64Array, Int64Array, StringArray,
        TimestampNanosecondArray,
    };
    let mut t = DataType::Null;
    for v in vals {
        let vt = v.data_type();
        if t == DataType::Null {
            t = vt;
        } else if vt != DataType::Null && vt != t {
            t = match (&t, &vt) {
                (DataType::Int64, DataType::Float64) | (DataType::Float64, DataType::Int64) => {
                    DataType::Float64
                }
                _ => DataType::Utf8,
            };
        }
    }
    Ok(match t {
        DataType::Null => new_null_array(&DataType::Null, vals.len()),
        DataType::Boolean => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Scalar::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        DataType::Int64 => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Scalar::Int(b) => Some(*b),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        DataType::Float64 => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Scalar::Float(b) => Some(*b),
                    Scalar::Int(i) => Some(*i as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        DataType::Timestamp(_, _) => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Scalar::Ts(b) => Some(*b),
                    _ => None,
                })
                .collect::<TimestampNanosecondArray>(),
        ),
        _ => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Scalar::Null => None,
                    Scalar::Str(s) => Some(s.clone()),
                    Scalar::Int(i) => Some(i.to_string()),
                    Scalar::Float(f) => Some(f.to_string()),
                    Scalar::Bool(b) => Some(b.to_string()),
                    Scalar::Ts(t) => Some(crate::time::format_timestamp(*t)),
                })
                .collect::<StringArray>(),
        ),
    })
}
