//! Initial placement of partitions over nodes.
//!
//! Deterministic: the same node set (in any order) and partition count give the same map, so
//! the leader can compute it and propose it as an explicit `InitPartitions` command.
//!
//! With the nodes sorted by id as `n[0..N]`, partition `p` in round `r = p / N` gets
//! primary `n[p % N]` and replica `n[(p + 1 + r % (N - 1)) % N]`. The replica offset is in
//! `1..N`, so a replica never lands on its primary; within a round the offset is constant, so
//! the replicas of a full round are a permutation of the nodes, and a partial round of `m`
//! partitions puts its replicas on `m` distinct nodes: primaries and replicas are both spread
//! evenly (max - min <= 1). Changing the offset from round to round spreads the partitions a
//! node's death hands over across all other nodes instead of piling them on one neighbour.

use crate::error::{Error, Result};
use crate::state::{Command, NodeId, PartitionId};

/// `(primary, replica)` for each partition `0..P`.
pub type Assignments = Vec<(NodeId, Option<NodeId>)>;

/// Place `partitions` partitions with replication factor `rf` (1 or 2) over `nodes`.
/// With one node, RF=2 degrades to no replica (a single node has nowhere to put one).
pub fn place(nodes: &[NodeId], partitions: PartitionId, rf: usize) -> Result<Assignments> {
    let mut n: Vec<NodeId> = nodes.to_vec();
    n.sort_unstable();
    n.dedup();
    if n.is_empty() {
        return Err(Error::InvalidInput(
            "placement needs at least one node".into(),
        ));
    }
    if partitions == 0 {
        return Err(Error::InvalidInput(
            "placement needs at least one partition".into(),
        ));
    }
    if !(1..=2).contains(&rf) {
        return Err(Error::InvalidInput(format!(
            "replication factor {rf} is not supported (1 or 2)"
        )));
    }
    let count = n.len();
    let out = (0..partitions as usize)
        .map(|p| {
            let primary = n[p % count];
            let replica = (rf == 2 && count > 1).then(|| {
                let round = p / count;
                n[(p + 1 + round % (count - 1)) % count]
            });
            (primary, replica)
        })
        .collect();
    Ok(out)
}

/// The command that installs a placement.
pub fn init_command(assignments: Assignments) -> Command {
    Command::InitPartitions { assignments }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn spread(counts: &BTreeMap<NodeId, usize>, nodes: &[NodeId]) -> usize {
        let c: Vec<usize> = nodes
            .iter()
            .map(|n| counts.get(n).copied().unwrap_or(0))
            .collect();
        c.iter().max().unwrap() - c.iter().min().unwrap()
    }

    #[test]
    fn small_example() {
        let a = place(&[3, 1, 2], 6, 2).unwrap();
        assert_eq!(
            a,
            vec![
                (1, Some(2)),
                (2, Some(3)),
                (3, Some(1)),
                (1, Some(3)),
                (2, Some(1)),
                (3, Some(2)),
            ]
        );
        assert_eq!(place(&[1], 3, 2).unwrap(), vec![(1, None); 3]);
        assert_eq!(place(&[1, 2], 2, 1).unwrap(), vec![(1, None), (2, None)]);
    }

    #[test]
    fn bad_input() {
        assert!(place(&[], 4, 2).is_err());
        assert!(place(&[1], 0, 2).is_err());
        assert!(place(&[1, 2], 4, 3).is_err());
        assert!(place(&[1, 2], 4, 0).is_err());
    }

    proptest! {
        #[test]
        fn placement_is_even_and_never_colocates(
            nodes in proptest::collection::btree_set(1u64..1000, 1..=10),
            partitions in 1u32..=256,
        ) {
            let nodes: Vec<NodeId> = nodes.into_iter().collect();
            let a = place(&nodes, partitions, 2).unwrap();
            prop_assert_eq!(a.len(), partitions as usize);
            let mut prim = BTreeMap::new();
            let mut repl = BTreeMap::new();
            for &(p, r) in &a {
                prop_assert!(nodes.contains(&p));
                *prim.entry(p).or_insert(0usize) += 1;
                match r {
                    Some(r) => {
                        prop_assert!(r != p, "replica on its primary");
                        prop_assert!(nodes.contains(&r));
                        *repl.entry(r).or_insert(0usize) += 1;
                    }
                    None => prop_assert_eq!(nodes.len(), 1),
                }
            }
            prop_assert!(spread(&prim, &nodes) <= 1, "primaries {:?}", prim);
            if nodes.len() > 1 {
                prop_assert!(spread(&repl, &nodes) <= 1, "replicas {:?}", repl);
            }
            // Deterministic and independent of input order.
            let mut rev = nodes.clone();
            rev.reverse();
            prop_assert_eq!(place(&rev, partitions, 2).unwrap(), a);
        }
    }
}
