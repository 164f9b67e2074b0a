//! Cutting a plan into a per-partition part and a merge part, for scatter/gather.
//!
//! * With an aggregate over a single table: the partition part runs scan -> filter ->
//!   project -> aggregate in `Partial` mode (emitting state columns); the merge part runs the
//!   same aggregate in `Final` mode over the gathered states, then whatever sat above it
//!   (HAVING, windows, projection, ORDER BY, LIMIT).
//! * Without an aggregate: the partition part is the streaming scan/filter/project chain;
//!   the merge part is the rest (sort, limit, distinct, window).
//!
//! Joins and multi-table queries are not split (the caller runs them on one node).

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};

use crate::error::{unsupported, Result};
use crate::expr::Expr;
use crate::plan::agg::AggMode;
use crate::plan::Node;

/// The two halves of a split plan.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    pub(crate) partial: Node,
    pub(crate) merge: Node,
    /// Partitions the scan was pruned to (`None` = all).
    pub(crate) partitions: Option<Vec<u32>>,
}

fn is_stream_chain(n: &Node) -> bool {
    match n {
        Node::Scan(_) => true,
        Node::Filter { input, .. } | Node::Project { input, .. } => is_stream_chain(input),
        _ => false,
    }
}

fn scan_partitions(n: &Node) -> Option<Vec<u32>> {
    match n {
        Node::Scan(s) => s.request.partitions.clone(),
        Node::Filter { input, .. }
        | Node::Project { input, .. }
        | Node::Aggregate { input, .. } => scan_partitions(input),
        _ => None,
    }
}

/// Split `root`; errors when the plan's shape cannot be distributed.
pub(crate) fn split(root: &Node) -> Result<Split> {
    let mut found: Option<(Node, Node)> = None;
    let merge = replace(root, &mut found)?;
    match found {
        Some((partial, _)) => {
            let partitions = scan_partitions(&partial);
            Ok(Split {
                partial,
                merge,
                partitions,
            })
        }
        None => Err(unsupported(
            "this query cannot be split into per-partition parts (joins, unions or several tables)",
        )),
    }
}

/// Rebuild the tree with the distributable subtree replaced by a `PartialInput` leaf.
fn replace(n: &Node, found: &mut Option<(Node, Node)>) -> Result<Node> {
    if let Node::Aggregate {
        input,
        group,
        aggs,
        schema,
        mode: AggMode::Single,
    } = n
    {
        if is_stream_chain(input) {
            let g = group.len();
            let mut fields: Vec<Field> = schema
                .fields()
                .iter()
                .take(g)
                .map(|f| f.as_ref().clone())
                .collect();
            for a in aggs {
                fields.extend(a.state_fields());
            }
            let pschema = Arc::new(Schema::new(fields));
            let partial = Node::Aggregate {
                input: input.clone(),
                group: group.clone(),
                aggs: aggs.clone(),
                mode: AggMode::Partial,
                schema: pschema.clone(),
            };
            let merge = Node::Aggregate {
                input: Box::new(Node::PartialInput { schema: pschema }),
                group: (0..g).map(Expr::Column).collect(),
                aggs: aggs.clone(),
                mode: AggMode::Final,
                schema: schema.clone(),
            };
            *found = Some((partial, merge.clone()));
            return Ok(merge);
        }
    }
    if is_stream_chain(n) {
        *found = Some((n.clone(), n.clone()));
        return Ok(Node::PartialInput { schema: n.schema() });
    }
    let b = |x: &Node, f: &mut Option<(Node, Node)>| -> Result<Box<Node>> {
        Ok(Box::new(replace(x, f)?))
    };
    Ok(match n {
        Node::Filter { input, predicate } => Node::Filter { input: b(input, found)?, predicate: predicate.clone() },
        Node::Project { input, exprs, schema } => Node::Project { input: b(input, found)?, exprs: exprs.clone(), schema: schema.clone() },
        Node::Sort { input, keys, fetch } => Node::Sort { input: b(input, found)?, keys: keys.clone(), fetch: *fetch },
        Node::Limit { input, skip, fetch } => Node::Limit { input: b(input, found)?, skip: *skip, fetch: *fetch },
        Node::Distinct { input } => Node::Distinct { input: b(input, found)? },
        Node::Window { input, funcs, schema } => Node::Window { input: b(input, found)?, funcs: funcs.clone(), schema: schema.clone() },
        _ => return Err(unsupported("this query cannot be split into per-partition parts (joins, unions, nested aggregates or several tables)")),
    })
}

/// The partitions every scan of `n` reads, united; `None` when some scan is not pruned
/// (it reads every partition).
pub(crate) fn footprint(n: &Node) -> Option<Vec<u32>> {
    fn walk(n: &Node, acc: &mut std::collections::BTreeSet<u32>) -> bool {
        match n {
            Node::Scan(s) => match &s.request.partitions {
                Some(p) => {
                    acc.extend(p.iter().copied());
                    true
                }
                None => false,
            },
            Node::Filter { input, .. }
            | Node::Project { input, .. }
            | Node::Aggregate { input, .. }
            | Node::Window { input, .. }
            | Node::Sort { input, .. }
            | Node::Limit { input, .. }
            | Node::Distinct { input } => walk(input, acc),
            Node::HashJoin { left, right, .. } | Node::AsofJoin { left, right, .. } => {
                walk(left, acc) && walk(right, acc)
            }
            Node::Union { inputs, .. } => inputs.iter().all(|i| walk(i, acc)),
            Node::Values { .. } | Node::PartialInput { .. } => true,
        }
    }
    let mut acc = std::collections::BTreeSet::new();
    walk(n, &mut acc).then(|| acc.into_iter().collect())
}
