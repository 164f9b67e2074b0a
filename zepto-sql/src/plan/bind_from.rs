//! Binding FROM: tables, CTE references, derived tables, joins (hash and ASOF), and pushing
//! WHERE down into scans, where it becomes partition and time-range pruning.

use std::sync::Arc;

use arrow::datatypes::DataType;
use sqlparser::ast::{self, JoinConstraint, JoinOperator, TableFactor};
use zepto_storage::{ScanRequest, TableSchema, TimeRange};

use crate::error::{invalid, unsupported, Error, Result};
use crate::expr::{BinOp, Expr, Scalar};
use crate::plan::bind::{and_all, rename_columns, split_and, Binder};
use crate::plan::bind_expr::{Scope, ScopeCol};
use crate::plan::{JoinKind, Node, ScanNode};

impl Binder<'_> {
    pub(crate) fn plan_from(&mut self, from: &[ast::TableWithJoins]) -> Result<(Node, Scope)> {
        let joins: usize = from.iter().map(|t| t.joins.len() + 1).sum();
        if joins > crate::plan::bind::MAX_SET_OPS {
            return Err(invalid(format!(
                "more than {} tables joined in one FROM",
                crate::plan::bind::MAX_SET_OPS
            )));
        }
        let mut acc: Option<(Node, Scope)> = None;
        for twj in from {
            let (mut node, mut scope) = self.plan_factor(&twj.relation)?;
            for j in &twj.joins {
                let (rn, rs) = self.plan_factor(&j.relation)?;
                let (n, s) = self.plan_join(node, scope, rn, rs, &j.join_operator)?;
                node = n;
                scope = s;
            }
            acc = Some(match acc {
                None => (node, scope),
                Some((ln, ls)) => {
                    let s = ls.join(&scope, false);
                    (
                        Node::HashJoin {
                            left: Box::new(ln),
                            right: Box::new(node),
                            kind: JoinKind::Inner,
                            left_keys: vec![],
                            right_keys: vec![],
                            filter: None,
                            schema: s.schema.clone(),
                        },
                        s,
                    )
                }
            });
        }
        acc.ok_or_else(|| invalid("empty FROM"))
    }

    fn plan_factor(&mut self, f: &TableFactor) -> Result<(Node, Scope)> {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if args.is_some() {
                    return Err(unsupported("table functions"));
                }
                let tname = name.to_string();
                let lname = tname.to_ascii_lowercase();
                let qual = alias
                    .as_ref()
                    .map(|a| a.name.value.clone())
                    .unwrap_or_else(|| {
                        name.0
                            .last()
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| tname.clone())
                    });
                if let Some((_, node, scope)) = self.ctes.iter().rev().find(|(n, _, _)| *n == lname)
                {
                    let (node, scope) = (node.clone(), scope.clone().requalify(&qual));
                    return match alias {
                        Some(a) => rename_columns(node, scope, &a.columns),
                        None => Ok((node, scope)),
                    };
                }
                let table = self.db.table(&tname).map_err(|e| match e {
                    zepto_storage::Error::TableNotFound(t) => Error::TableNotFound(t),
                    e => Error::Storage(e),
                })?;
                let (node, scope) = scan_node(table, &qual);
                match alias {
                    Some(a) if !a.columns.is_empty() => rename_columns(node, scope, &a.columns),
                    _ => Ok((node, scope)),
                }
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                if *lateral {
                    return Err(unsupported("LATERAL"));
                }
                let (node, scope) = self.plan_query(subquery)?;
                let scope = match alias {
                    Some(a) => scope.requalify(&a.name.value),
                    None => {
                        let mut s = scope;
                        s.cols.iter_mut().for_each(|c| c.qualifier = None);
                        s
                    }
                };
                let mut scope = scope;
                scope.replace.clear();
                scope.grouped = false;
                match alias {
                    Some(a) => rename_columns(node, scope, &a.columns),
                    None => Ok((node, scope)),
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let (node, scope) = self.plan_from(std::slice::from_ref(table_with_joins))?;
                Ok(match alias {
                    Some(a) => (node, scope.requalify(&a.name.value)),
                    None => (node, scope),
                })
            }
            other => Err(unsupported(format!("FROM {other}"))),
        }
    }

    fn plan_join(
        &mut self,
        left: Node,
        ls: Scope,
        right: Node,
        rs: Scope,
        op: &JoinOperator,
    ) -> Result<(Node, Scope)> {
        let (kind, cons, asof) = match op {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c, false),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c, false),
            JoinOperator::CrossJoin(c) => (JoinKind::Inner, c, false),
            // `ASOF JOIN` is rewritten to `SEMI JOIN` before parsing (see parse.rs).
            JoinOperator::Semi(c) => (JoinKind::Left, c, true),
            other => {
                return Err(unsupported(
                    format!("join {other:?}")
                        .chars()
                        .take(60)
                        .collect::<String>(),
                ))
            }
        };
        let scope = ls.join(&rs, kind == JoinKind::Left);
        let nl = ls.cols.len();
        let cond = match cons {
            JoinConstraint::On(e) => Some(self.bind_expr(e, &scope)?),
            JoinConstraint::None => None,
            JoinConstraint::Using(cols) => {
                let mut parts = vec![];
                for c in cols {
                    let n = c.to_string();
                    let l = ls.resolve(std::slice::from_ref(&n))?;
                    let r = rs.resolve(std::slice::from_ref(&n))? + nl;
                    parts.push(self.binary(BinOp::Eq, Expr::Column(l), Expr::Column(r), &scope)?);
                }
                and_all(parts)
            }
            other => {
                return Err(unsupported(
                    format!("join constraint {other:?}")
                        .chars()
                        .take(60)
                        .collect::<String>(),
                ))
            }
        };
        let mut conj = vec![];
        if let Some(c) = cond {
            split_and(c, &mut conj);
        }
        let side = |e: &Expr| -> Option<bool> {
            let mut cs = vec![];
            e.columns(&mut cs);
            if cs.is_empty() {
                None
            } else if cs.iter().all(|c| *c < nl) {
                Some(true)
            } else if cs.iter().all(|c| *c >= nl) {
                Some(false)
            } else {
                None
            }
        };
        let mut lk = vec![];
        let mut rk = vec![];
        let mut rest = vec![];
        let mut asof_ts: Option<(Expr, Expr)> = None;
        let mut asof_strict = false;
        for c in conj {
            if let Expr::Binary { op, left, right } = &c {
                let (sl, sr) = (side(left), side(right));
                let eq_or_ineq = *op == BinOp::Eq
                    || (asof && matches!(op, BinOp::GtEq | BinOp::LtEq | BinOp::Gt | BinOp::Lt));
                if eq_or_ineq {
                    let (le, re, op) = match (sl, sr) {
                        (Some(true), Some(false)) => {
                            (left.as_ref().clone(), right.as_ref().clone(), *op)
                        }
                        (Some(false), Some(true)) => {
                            (right.as_ref().clone(), left.as_ref().clone(), op.flip())
                        }
                        _ => {
                            rest.push(c);
                            continue;
                        }
                    };
                    let re = re.remap(&|i| i - nl);
                    if op == BinOp::Eq {
                        lk.push(strip_dict_cast(le));
                        rk.push(strip_dict_cast(re));
                    } else if matches!(op, BinOp::GtEq | BinOp::Gt) && asof_ts.is_none() {
                        asof_strict = op == BinOp::Gt;
                        asof_ts = Some((le, re));
                    } else {
                        return Err(invalid(
                            "ASOF JOIN needs one condition `left.ts >= right.ts` (or `>`)",
                        ));
                    }
                    continue;
                }
            }
            rest.push(c);
        }
        let schema = scope.schema.clone();
        if asof {
            let (lt, rt) = asof_ts.ok_or_else(|| {
                invalid("ASOF JOIN needs a condition `left.ts >= right.ts` (or `>`) in ON")
            })?;
            if !rest.is_empty() {
                return Err(unsupported(
                    "ASOF JOIN conditions other than key equalities and one `>=`",
                ));
            }
            let node = Node::AsofJoin {
                left: Box::new(left),
                right: Box::new(right),
                left_keys: lk,
                right_keys: rk,
                left_ts: lt,
                right_ts: rt,
                strict: asof_strict,
                schema,
            };
            return Ok((node, scope));
        }
        let node = Node::HashJoin {
            left: Box::new(left),
            right: Box::new(right),
            kind,
            left_keys: lk,
            right_keys: rk,
            filter: and_all(rest),
            schema,
        };
        Ok((node, scope))
    }

    /// Put a WHERE predicate as low as it can go: into a scan (where it prunes) or below a
    /// join on the side it reads.
    pub(crate) fn push_filter(&mut self, node: Node, pred: Expr, _scope: &Scope) -> Result<Node> {
        let mut conj = vec![];
        split_and(pred, &mut conj);
        let (node, rest) = self.push_conjuncts(node, conj)?;
        Ok(match and_all(rest) {
            None => node,
            Some(p) => Node::Filter {
                input: Box::new(node),
                predicate: p,
            },
        })
    }

    fn push_conjuncts(&mut self, node: Node, conj: Vec<Expr>) -> Result<(Node, Vec<Expr>)> {
        match node {
            Node::Scan(mut s) => {
                let mut all = vec![];
                if let Some(f) = s.filter.take() {
                    split_and(f, &mut all);
                }
                all.extend(conj);
                s.filter = and_all(all);
                self.derive_pruning(&mut s)?;
                Ok((Node::Scan(s), vec![]))
            }
            Node::HashJoin {
                left,
                right,
                kind,
                left_keys,
                right_keys,
                filter,
                schema,
            } => {
                let nl = left.schema().fields().len();
                let (mut lc, mut rc, mut keep) = (vec![], vec![], vec![]);
                for c in conj {
                    let mut cs = vec![];
                    c.columns(&mut cs);
                    if !cs.is_empty() && cs.iter().all(|i| *i < nl) {
                        lc.push(c);
                    } else if kind == JoinKind::Inner
                        && !cs.is_empty()
                        && cs.iter().all(|i| *i >= nl)
                    {
                        rc.push(c.remap(&|i| i - nl));
                    } else {
                        keep.push(c);
                    }
                }
                let (l, lrest) = self.push_conjuncts(*left, lc)?;
                let (r, rrest) = self.push_conjuncts(*right, rc)?;
                keep.extend(lrest);
                keep.extend(rrest.into_iter().map(|e| e.remap(&|i| i + nl)));
                Ok((
                    Node::HashJoin {
                        left: Box::new(l),
                        right: Box::new(r),
                        kind,
                        left_keys,
                        right_keys,
                        filter,
                        schema,
                    },
                    keep,
                ))
            }
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
                let nl = left.schema().fields().len();
                let (mut lc, mut rc, mut keep) = (vec![], vec![], vec![]);
                for c in conj {
                    let mut cs = vec![];
                    c.columns(&mut cs);
                    if !cs.is_empty() && cs.iter().all(|i| *i < nl) {
                        // A key predicate on the left holds for the matching right rows
                        // too: `t.symbol = 'X'` also prunes the quotes.
                        if let Some(rcopy) = mirror_key_pred(&c, &left_keys, &right_keys) {
                            rc.push(rcopy);
                        }
                        lc.push(c);
                    } else {
                        keep.push(c);
                    }
                }
                let (l, lrest) = self.push_conjuncts(*left, lc)?;
                let (r, rrest) = self.push_conjuncts(*right, rc)?;
                keep.extend(lrest);
                // Right-side copies are only an optimisation: anything not absorbed is dropped.
                drop(rrest);
                Ok((
                    Node::AsofJoin {
                        left: Box::new(l),
                        right: Box::new(r),
                        left_keys,
                        right_keys,
                        left_ts,
                        right_ts,
                        strict,
                        schema,
                    },
                    keep,
                ))
            }
            other => Ok((other, conj)),
        }
    }

    /// Partition and time-range pruning from the scan's filter.
    fn derive_pruning(&self, s: &mut ScanNode) -> Result<()> {
        let cols = s.request.columns.clone().unwrap_or_default();
        let ts_col = cols.iter().position(|c| *c == s.table.timestamp);
        let key_col = cols.iter().position(|c| *c == s.table.partition_key);
        // Earlier pushes already moved their time conjuncts into the request.
        let mut range = s.request.time_range;
        let mut keys: Option<Vec<String>> = None;
        let mut conj = vec![];
        if let Some(f) = s.filter.take() {
            split_and(f, &mut conj);
        }
        let mut kept = vec![];
        for c in conj {
            if let Some((r, exact)) = ts_range_of(&c, ts_col) {
                range = range.intersect(&r);
                // Storage returns exactly the rows inside the range: the conjunct needs no
                // evaluation (unless its bound saturated at the end of time).
                if exact {
                    continue;
                }
            }
            if let Some(k) = key_values_of(&c, key_col) {
                keys = Some(match keys {
                    None => k,
                    Some(prev) => prev.into_iter().filter(|p| k.contains(p)).collect(),
                });
            }
            kept.push(c);
        }
        s.filter = and_all(kept);
        s.pruning.clear();
        s.request.time_range = range;
        if range != TimeRange::ALL {
            s.pruning.push(format!(
                "time range: [{}, {})",
                fmt_bound(range.start),
                fmt_bound(range.end)
            ));
        }
        s.request.partitions = match keys {
            None => None,
            Some(ks) => {
                let mut ps: Vec<u32> = ks
                    .iter()
                    .map(|k| self.db.partition_of(&s.table.name, k))
                    .collect();
                ps.sort_unstable();
                ps.dedup();
                s.pruning.push(format!(
                    "partitions: {} of {} ({} = {})",
                    ps.len(),
                    self.db.partitions(),
                    s.table.partition_key_name(),
                    ks.join(", ")
                ));
                Some(ps)
            }
        };
        Ok(())
    }
}

fn fmt_bound(v: i64) -> String {
    if v == i64::MIN || v == i64::MAX {
        "unbounded".into()
    } else {
        crate::time::format_timestamp(v)
    }
}

/// `col op literal` on the timestamp column -> a range.
/// `ts op literal` -> the range it allows, and whether the range is exactly the predicate.
fn ts_range_of(e: &Expr, ts_col: Option<usize>) -> Option<(TimeRange, bool)> {
    let ts_col = ts_col?;
    if let Expr::Binary { op, left, right } = e {
        let v = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(Scalar::Ts(v))) if *c == ts_col => *v,
            _ => return None,
        };
        let next = v.checked_add(1);
        let exact = next.is_some();
        let next = next.unwrap_or(i64::MAX);
        return Some(match op {
            BinOp::Eq => (TimeRange::new(v, next), exact),
            BinOp::Gt => (TimeRange::new(next, i64::MAX), exact),
            BinOp::GtEq => (TimeRange::new(v, i64::MAX), true),
            BinOp::Lt => (TimeRange::new(i64::MIN, v), true),
            BinOp::LtEq => (TimeRange::new(i64::MIN, next), exact),
            _ => return None,
        });
    }
    None
}

/// `key = 'X'` or an OR of those -> the key values.
fn key_values_of(e: &Expr, key_col: Option<usize>) -> Option<Vec<String>> {
    let key_col = key_col?;
    match e {
        Expr::Binary {
            op: BinOp::Eq,
            left,
            right,
        } => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(Scalar::Str(v))) if *c == key_col => {
                Some(vec![v.clone()])
            }
            _ => None,
        },
        Expr::InList {
            expr,
            list,
            negated: false,
        } if matches!(expr.as_ref(), Expr::Column(c) if *c == key_col) => list
            .iter()
            .map(|s| match s {
                Scalar::Str(v) => Some(v.clone()),
                _ => None,
            })
            .collect(),
        Expr::Binary {
            op: BinOp::Or,
            left,
            right,
        } => {
            let mut l = key_values_of(left, Some(key_col))?;
            l.extend(key_values_of(right, Some(key_col))?);
            Some(l)
        }
        _ => None,
    }
}

/// For an ASOF join on `l.k = r.k`, copy a predicate `l.k = 'X'` (or an OR of them) to `r.k`.
fn mirror_key_pred(c: &Expr, lk: &[Expr], rk: &[Expr]) -> Option<Expr> {
    for (l, r) in lk.iter().zip(rk.iter()) {
        if let (Expr::Column(li), Expr::Column(ri)) = (l, r) {
            if key_values_of(c, Some(*li)).is_some() {
                let (li, ri) = (*li, *ri);
                return Some(c.remap(&move |i| if i == li { ri } else { i }));
            }
        }
    }
    None
}

fn strip_dict_cast(e: Expr) -> Expr {
    match e {
        Expr::Cast {
            expr,
            to: DataType::Utf8,
        } if matches!(*expr, Expr::Column(_)) => *expr,
        e => e,
    }
}

pub(crate) fn scan_node(table: Arc<TableSchema>, qualifier: &str) -> (Node, Scope) {
    let schema = table.arrow_schema();
    let cols = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| ScopeCol {
            qualifier: Some(qualifier.to_ascii_lowercase()),
            name: c.name.clone(),
            designated_ts: i == table.timestamp,
        })
        .collect();
    let request = ScanRequest {
        table: table.name.clone(),
        columns: Some((0..table.columns.len()).collect()),
        partitions: None,
        time_range: TimeRange::ALL,
    };
    let node = Node::Scan(ScanNode {
        table,
        request,
        filter: None,
        pruning: vec![],
        schema: schema.clone(),
    });
    (node, Scope::new(cols, schema))
}
