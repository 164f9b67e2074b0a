//! The physical plan: a tree of operators, each knowing its output schema. Built by
//! [`bind`] from the sqlparser AST, run by [`crate::exec`], printed by `EXPLAIN`.
//!
//! The tree is also the unit of distribution: [`split`] cuts a plan at its aggregate (or
//! below its final sort/limit) into a per-partition part and a merge part.

pub(crate) mod agg;
pub(crate) mod bind;
pub(crate) mod bind_agg;
pub(crate) mod bind_expr;
pub(crate) mod bind_from;
pub(crate) mod prune;
pub(crate) mod split;

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use zepto_storage::{ScanRequest, TableSchema};

use crate::expr::Expr;
use agg::{AggExpr, AggMode};

/// One sort key.
#[derive(Debug, Clone)]
pub(crate) struct SortKey {
    pub(crate) expr: Expr,
    pub(crate) descending: bool,
    pub(crate) nulls_first: bool,
}

/// Join flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinKind {
    Inner,
    Left,
}

/// Window functions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WindowFunc {
    RowNumber,
    Rank,
    DenseRank,
    /// `lag(x [, offset [, default]])`
    Lag(i64),
    Lead(i64),
    /// `ema(x, alpha)`
    Ema(f64),
    /// `mavg(x, n)` / `msum(x, n)`: over the current row and the n-1 before it.
    Mavg(usize),
    Msum(usize),
    /// `delta(x)`: x minus the previous x in the partition (the first row's delta is x).
    Delta,
    /// Running aggregates: `sum(x) OVER (...)` etc. over the frame start..current row
    /// (the SQL default frame when ORDER BY is given; the whole partition without it).
    Sum,
    Count,
    Avg,
    Min,
    Max,
}

/// One window function call.
#[derive(Debug, Clone)]
pub(crate) struct WindowExpr {
    pub(crate) func: WindowFunc,
    pub(crate) args: Vec<Expr>,
    pub(crate) partition_by: Vec<Expr>,
    pub(crate) order_by: Vec<SortKey>,
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW` (`Some(Some(n))`), `ROWS BETWEEN UNBOUNDED
    /// PRECEDING AND CURRENT ROW` (`Some(None)`); `None` is SQL's default frame.
    pub(crate) rows_frame: Option<Option<usize>>,
    pub(crate) name: String,
}

/// A table scan with the pruning it derived and a filter fused into it.
#[derive(Debug, Clone)]
pub(crate) struct ScanNode {
    pub(crate) table: Arc<TableSchema>,
    pub(crate) request: ScanRequest,
    /// Predicate over the projected scan schema.
    pub(crate) filter: Option<Expr>,
    /// Human-readable pruning notes for EXPLAIN.
    pub(crate) pruning: Vec<String>,
    pub(crate) schema: SchemaRef,
}

/// An operator.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Scan(ScanNode),
    /// Constant rows (`VALUES`, `SELECT` without `FROM`).
    Values {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    },
    Filter {
        input: Box<Node>,
        predicate: Expr,
    },
    Project {
        input: Box<Node>,
        exprs: Vec<Expr>,
        schema: SchemaRef,
    },
    Aggregate {
        input: Box<Node>,
        group: Vec<Expr>,
        aggs: Vec<AggExpr>,
        mode: AggMode,
        schema: SchemaRef,
    },
    Window {
        input: Box<Node>,
        funcs: Vec<WindowExpr>,
        schema: SchemaRef,
    },
    Sort {
        input: Box<Node>,
        keys: Vec<SortKey>,
        /// Only the first `fetch` rows are needed (a top-N sort).
        fetch: Option<usize>,
    },
    Limit {
        input: Box<Node>,
        skip: usize,
        fetch: Option<usize>,
    },
    Distinct {
        input: Box<Node>,
    },
    HashJoin {
        left: Box<Node>,
        right: Box<Node>,
        kind: JoinKind,
        left_keys: Vec<Expr>,
        right_keys: Vec<Expr>,
        /// Extra non-equi condition over the joined schema.
        filter: Option<Expr>,
        schema: SchemaRef,
    },
    AsofJoin {
        left: Box<Node>,
        right: Box<Node>,
        left_keys: Vec<Expr>,
        right_keys: Vec<Expr>,
        left_ts: Expr,
        right_ts: Expr,
        /// `left.ts > right.ts` instead of `>=`.
        strict: bool,
        schema: SchemaRef,
    },
    Union {
        inputs: Vec<Node>,
        schema: SchemaRef,
    },
    /// The leaf of a merge plan: the partial batches handed to `merge`.
    PartialInput {
        schema: SchemaRef,
    },
}

impl Node {
    pub(crate) fn schema(&self) -> SchemaRef {
        match self {
            Node::Scan(s) => s.schema.clone(),
            Node::Values { schema, .. }
            | Node::Project { schema, .. }
            | Node::Aggregate { schema, .. }
            | Node::Window { schema, .. }
            | Node::HashJoin { schema, .. }
            | Node::AsofJoin { schema, .. }
            | Node::Union { schema, .. }
            | Node::PartialInput { schema } => schema.clone(),
            Node::Filter { input, .. }
            | Node::Sort { input, .. }
            | Node::Limit { input, .. }
            | Node::Distinct { input } => input.schema(),
        }
    }

    /// Indented text for EXPLAIN.
    pub(crate) fn explain(&self, out: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        let cols = |s: &SchemaRef| {
            s.fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Node::Scan(s) => {
                let _ = writeln!(
                    out,
                    "{pad}Scan {} columns=[{}]{}",
                    s.table.name,
                    cols(&s.schema),
                    s.filter
                        .as_ref()
                        .map(|f| format!(" filter={}", expr_text(f, &s.schema)))
                        .unwrap_or_default()
                );
                for p in &s.pruning {
                    let _ = writeln!(out, "{pad}  {p}");
                }
            }
            Node::Values { batches, .. } => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                let _ = writeln!(out, "{pad}Values rows={rows}");
            }
            Node::Filter { input, predicate } => {
                let _ = writeln!(out, "{pad}Filter {}", expr_text(predicate, &input.schema()));
                input.explain(out, depth + 1);
            }
            Node::Project { input, schema, .. } => {
                let _ = writeln!(out, "{pad}Project [{}]", cols(schema));
                input.explain(out, depth + 1);
            }
            Node::Aggregate {
                input,
                group,
                aggs,
                mode,
                ..
            } => {
                let s = input.schema();
                let g: Vec<String> = group.iter().map(|e| expr_text(e, &s)).collect();
                let a: Vec<String> = aggs.iter().map(|a| a.name.clone()).collect();
                let _ = writeln!(
                    out,
                    "{pad}Aggregate mode={mode:?} group=[{}] aggs=[{}]",
                    g.join(", "),
                    a.join(", ")
                );
                input.explain(out, depth + 1);
            }
            Node::Window { input, funcs, .. } => {
                let f: Vec<&str> = funcs.iter().map(|f| f.name.as_str()).collect();
                let _ = writeln!(out, "{pad}Window [{}]", f.join(", "));
                input.explain(out, depth + 1);
            }
            Node::Sort { input, keys, fetch } => {
                let s = input.schema();
                let k: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{}{}",
                            expr_text(&k.expr, &s),
                            if k.descending { " DESC" } else { "" }
                        )
                    })
                    .collect();
                let f = fetch.map(|f| format!(" fetch={f}")).unwrap_or_default();
                let _ = writeln!(out, "{pad}Sort [{}]{f}", k.join(", "));
                input.explain(out, depth + 1);
            }
            Node::Limit { input, skip, fetch } => {
                let _ = writeln!(
                    out,
                    "{pad}Limit skip={skip} fetch={}",
                    fetch.map(|f| f.to_string()).unwrap_or_else(|| "all".into())
                );
                input.explain(out, depth + 1);
            }
            Node::Distinct { input } => {
                let _ = writeln!(out, "{pad}Distinct");
                input.explain(out, depth + 1);
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
                let keys = join_keys(left_keys, &left.schema(), right_keys, &right.schema());
                let f = filter
                    .as_ref()
                    .map(|f| format!(" filter={}", expr_text(f, schema)))
                    .unwrap_or_default();
                let _ = writeln!(out, "{pad}HashJoin {kind:?} on=[{keys}]{f}");
                left.explain(out, depth + 1);
                right.explain(out, depth + 1);
            }
            Node::AsofJoin {
                left,
                right,
                left_keys,
                right_keys,
                left_ts,
                right_ts,
                strict,
                ..
            } => {
                let (ls, rs) = (left.schema(), right.schema());
                let keys = join_keys(left_keys, &ls, right_keys, &rs);
                let _ = writeln!(
                    out,
                    "{pad}AsofJoin on=[{keys}] match={} {} {}",
                    expr_text(left_ts, &ls),
                    if *strict { ">" } else { ">=" },
                    expr_text(right_ts, &rs)
                );
                left.explain(out, depth + 1);
                right.explain(out, depth + 1);
            }
            Node::Union { inputs, .. } => {
                let _ = writeln!(out, "{pad}UnionAll");
                for i in inputs {
                    i.explain(out, depth + 1);
                }
            }
            Node::PartialInput { schema } => {
                let _ = writeln!(out, "{pad}PartialInput [{}]", cols(schema));
            }
        }
    }
}

/// Short text of an expression with column names resolved, for EXPLAIN.
pub(crate) fn expr_text(e: &Expr, schema: &SchemaRef) -> String {
    use crate::expr::Scalar;
    match e {
        Expr::Column(i) => schema
            .fields()
            .get(*i)
            .map(|f| f.name().clone())
            .unwrap_or_else(|| format!("#{i}")),
        Expr::Literal(s) => match s {
            Scalar::Null => "NULL".into(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(v) => v.to_string(),
            Scalar::Float(v) => v.to_string(),
            Scalar::Str(v) => format!("'{v}'"),
            Scalar::Ts(v) => format!("'{}'", crate::time::format_timestamp(*v)),
        },
        Expr::Binary { op, left, right } => format!(
            "({} {} {})",
            expr_text(left, schema),
            op.symbol(),
            expr_text(right, schema)
        ),
        Expr::Not(x) => format!("NOT {}", expr_text(x, schema)),
        Expr::Neg(x) => format!("-{}", expr_text(x, schema)),
        Expr::IsNull { expr, negated } => format!(
            "{} IS {}NULL",
            expr_text(expr, schema),
            if *negated { "NOT " } else { "" }
        ),
        Expr::Case { .. } => "CASE ...".into(),
        Expr::Cast { expr, to } => {
            format!("CAST({} AS {})", expr_text(expr, schema), type_name(to))
        }
        Expr::Like {
            expr,
            pattern,
            negated,
            ..
        } => format!(
            "{} {}LIKE '{pattern}'",
            expr_text(expr, schema),
            if *negated { "NOT " } else { "" }
        ),
        Expr::Func { func, args } => {
            let a: Vec<String> = args.iter().map(|x| expr_text(x, schema)).collect();
            format!("{func:?}({})", a.join(", "))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let items: Vec<String> = list
                .iter()
                .take(8)
                .map(|s| expr_text(&Expr::Literal(s.clone()), schema))
                .collect();
            let more = if list.len() > 8 {
                format!(", ... {} more", list.len() - 8)
            } else {
                String::new()
            };
            format!(
                "{} {}IN ({}{more})",
                expr_text(expr, schema),
                if *negated { "NOT " } else { "" },
                items.join(", ")
            )
        }
    }
}

fn join_keys(l: &[Expr], ls: &SchemaRef, r: &[Expr], rs: &SchemaRef) -> String {
    l.iter()
        .zip(r)
        .map(|(a, b)| format!("{} = {}", expr_text(a, ls), expr_text(b, rs)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL name of an Arrow type as zeptodb shows it.
pub(crate) fn type_name(t: &DataType) -> String {
    match t {
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Dictionary(_, _) => "SYMBOL".into(),
        DataType::Utf8 => "STRING".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Null => "NULL".into(),
        other => other.to_string(),
    }
}
