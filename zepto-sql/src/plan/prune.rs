//! Column pruning: rewrite a plan so every scan reads only the columns something above it
//! uses. Runs once after binding.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::error::Result;
use crate::expr::Expr;
use crate::plan::agg::AggMode;
use crate::plan::Node;

fn cols_of<'a>(exprs: impl IntoIterator<Item = &'a Expr>, out: &mut Vec<usize>) {
    for e in exprs {
        e.columns(out);
    }
}

/// Sorted, deduplicated union.
fn union(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut v: Vec<usize> = a.iter().chain(b.iter()).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn position_map(need: &[usize]) -> impl Fn(usize) -> usize + '_ {
    move |i| need.iter().position(|x| *x == i).unwrap_or(usize::MAX)
}

fn sub_schema(s: &SchemaRef, cols: &[usize]) -> SchemaRef {
    let fields: Vec<Field> = cols
        .iter()
        .filter_map(|i| s.fields().get(*i).map(|f| f.as_ref().clone()))
        .collect();
    Arc::new(Schema::new(fields))
}

/// `node`'s output restricted to `keep` (indexes into its output), as a projection.
fn select(node: Node, keep: &[usize]) -> Node {
    let schema = node.schema();
    if keep.len() == schema.fields().len() && keep.iter().enumerate().all(|(i, k)| i == *k) {
        return node;
    }
    // A projection of a projection is one projection.
    if let Node::Project {
        input,
        exprs,
        schema,
    } = node
    {
        return Node::Project {
            exprs: keep.iter().filter_map(|i| exprs.get(*i).cloned()).collect(),
            schema: sub_schema(&schema, keep),
            input,
        };
    }
    let exprs = keep.iter().map(|i| Expr::Column(*i)).collect();
    Node::Project {
        schema: sub_schema(&schema, keep),
        input: Box::new(node),
        exprs,
    }
}

fn all(node: &Node) -> Vec<usize> {
    (0..node.schema().fields().len()).collect()
}

/// Prune the whole plan (its output stays as it is).
pub(crate) fn prune_plan(node: Node) -> Result<Node> {
    let keep = all(&node);
    prune(node, &keep)
}

/// Rewrite `node` to output exactly the columns `keep` (sorted indexes of its output).
fn prune(node: Node, keep: &[usize]) -> Result<Node> {
    Ok(match node {
        Node::Scan(mut s) => {
            let mut need = keep.to_vec();
            if let Some(f) = &s.filter {
                let mut c = vec![];
                f.columns(&mut c);
                need = union(&need, &c);
            }
            let cols = s.request.columns.clone().unwrap_or_default();
            s.request.columns = Some(need.iter().filter_map(|i| cols.get(*i).copied()).collect());
            s.filter = s.filter.map(|f| f.remap(&position_map(&need)));
            s.schema = sub_schema(&s.schema, &need);
            let inner: Vec<usize> = keep.iter().map(|k| position_map(&need)(*k)).collect();
            select(Node::Scan(s), &inner)
        }
        Node::Filter { input, predicate } => {
            let mut c = vec![];
            predicate.columns(&mut c);
            let need = union(keep, &c);
            let input = prune(*input, &need)?;
            let f = Node::Filter {
                input: Box::new(input),
                predicate: predicate.remap(&position_map(&need)),
            };
            let inner: Vec<usize> = keep.iter().map(|k| position_map(&need)(*k)).collect();
            select(f, &inner)
        }
        Node::Project {
            input,
            exprs,
            schema,
        } => {
            let kept: Vec<Expr> = keep.iter().filter_map(|i| exprs.get(*i).cloned()).collect();
            let mut c = vec![];
            cols_of(kept.iter(), &mut c);
            let need = union(&[], &c);
            let input = prune(*input, &need)?;
            let m = position_map(&need);
            let exprs: Vec<Expr> = kept.iter().map(|e| e.remap(&m)).collect();
            // Over a projection that only picks columns, index through it instead.
            if let Node::Project {
                input: inner,
                exprs: picks,
                ..
            } = &input
            {
                let cols: Option<Vec<usize>> = picks
                    .iter()
                    .map(|p| match p {
                        Expr::Column(c) => Some(*c),
                        _ => None,
                    })
                    .collect();
                if let Some(cols) = cols {
                    let through = |i: usize| cols.get(i).copied().unwrap_or(usize::MAX);
                    return Ok(Node::Project {
                        exprs: exprs.iter().map(|e| e.remap(&through)).collect(),
                        schema: sub_schema(&schema, keep),
                        input: inner.clone(),
                    });
                }
            }
            Node::Project {
                input: Box::new(input),
                exprs,
                schema: sub_schema(&schema, keep),
            }
        }
        Node::Aggregate {
            input,
            group,
            aggs,
            mode,
            schema,
        } if mode != AggMode::Final => {
            let mut c = vec![];
            cols_of(group.iter(), &mut c);
            for a in &aggs {
                cols_of(a.args.iter(), &mut c);
            }
            let need = union(&[], &c);
            let input = prune(*input, &need)?;
            let m = position_map(&need);
            let aggs = aggs
                .into_iter()
                .map(|mut a| {
                    a.args = a.args.iter().map(|e| e.remap(&m)).collect();
                    a
                })
                .collect();
            let node = Node::Aggregate {
                input: Box::new(input),
                group: group.iter().map(|e| e.remap(&m)).collect(),
                aggs,
                mode,
                schema,
            };
            select(node, keep)
        }
        Node::Sort { input, keys, fetch } => {
            let mut c = vec![];
            cols_of(keys.iter().map(|k| &k.expr), &mut c);
            let need = union(keep, &c);
            let input = prune(*input, &need)?;
            let m = position_map(&need);
            let keys = keys
                .into_iter()
                .map(|mut k| {
                    k.expr = k.expr.remap(&m);
                    k
                })
                .collect();
            let inner: Vec<usize> = keep.iter().map(|k| m(*k)).collect();
            select(
                Node::Sort {
                    input: Box::new(input),
                    keys,
                    fetch,
                },
                &inner,
            )
        }
        Node::Limit { input, skip, fetch } => Node::Limit {
            input: Box::new(prune(*input, keep)?),
            skip,
            fetch,
        },
        Node::Union { inputs, schema } => Node::Union {
            inputs: inputs
                .into_iter()
                .map(|i| prune(i, keep))
                .collect::<Result<_>>()?,
            schema: sub_schema(&schema, keep),
        },
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
            let mut c = keep.to_vec();
            if let Some(f) = &filter {
                f.columns(&mut c);
            }
            let mut lneed = vec![];
            cols_of(left_keys.iter(), &mut lneed);
            let mut rneed = vec![];
            cols_of(right_keys.iter(), &mut rneed);
            lneed.extend(c.iter().filter(|i| **i < nl));
            rneed.extend(c.iter().filter(|i| **i >= nl).map(|i| i - nl));
            let (lneed, rneed) = (union(&lneed, &[]), union(&rneed, &[]));
            let (lm, rm) = (position_map(&lneed), position_map(&rneed));
            let joined: Vec<usize> = lneed
                .iter()
                .copied()
                .chain(rneed.iter().map(|i| i + nl))
                .collect();
            let jm = position_map(&joined);
            let node = Node::HashJoin {
                left: Box::new(prune(*left, &lneed)?),
                right: Box::new(prune(*right, &rneed)?),
                kind,
                left_keys: left_keys.iter().map(|e| e.remap(&lm)).collect(),
                right_keys: right_keys.iter().map(|e| e.remap(&rm)).collect(),
                filter: filter.map(|f| f.remap(&jm)),
                schema: sub_schema(&schema, &joined),
            };
            let inner: Vec<usize> = keep.iter().map(|k| jm(*k)).collect();
            select(node, &inner)
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
            let mut lneed = vec![];
            cols_of(
                left_keys.iter().chain(std::iter::once(&left_ts)),
                &mut lneed,
            );
            let mut rneed = vec![];
            cols_of(
                right_keys.iter().chain(std::iter::once(&right_ts)),
                &mut rneed,
            );
            lneed.extend(keep.iter().filter(|i| **i < nl));
            rneed.extend(keep.iter().filter(|i| **i >= nl).map(|i| i - nl));
            let (lneed, rneed) = (union(&lneed, &[]), union(&rneed, &[]));
            let (lm, rm) = (position_map(&lneed), position_map(&rneed));
            let joined: Vec<usize> = lneed
                .iter()
                .copied()
                .chain(rneed.iter().map(|i| i + nl))
                .collect();
            let jm = position_map(&joined);
            let node = Node::AsofJoin {
                left: Box::new(prune(*left, &lneed)?),
                right: Box::new(prune(*right, &rneed)?),
                left_keys: left_keys.iter().map(|e| e.remap(&lm)).collect(),
                right_keys: right_keys.iter().map(|e| e.remap(&rm)).collect(),
                left_ts: left_ts.remap(&lm),
                right_ts: right_ts.remap(&rm),
                strict,
                schema: sub_schema(&schema, &joined),
            };
            let inner: Vec<usize> = keep.iter().map(|k| jm(*k)).collect();
            select(node, &inner)
        }
        // Distinct needs all its columns; windows keep their input (their functions may read
        // any of it). Prune below them with everything they output.
        Node::Distinct { input } => {
            let a = all(&input);
            select(
                Node::Distinct {
                    input: Box::new(prune(*input, &a)?),
                },
                keep,
            )
        }
        Node::Window {
            input,
            funcs,
            schema,
        } => {
            let a = all(&input);
            select(
                Node::Window {
                    input: Box::new(prune(*input, &a)?),
                    funcs,
                    schema,
                },
                keep,
            )
        }
        other @ (Node::Values { .. } | Node::PartialInput { .. } | Node::Aggregate { .. }) => {
            select(other, keep)
        }
    })
}
