//! The rebalancer's plan: which one partition move brings the committed map closer to
//! balanced (ADR 0012).
//!
//! A pure function of the committed [`ClusterState`], so every node derives the same plan
//! from the same metadata version: the metadata leader carries out replica moves
//! (`SetReplica`), and a partition's primary carries out its own handoff (drain-style: it
//! stops admitting the partition's writes, waits until the replica confirmed everything,
//! then commits `Promote`), because only the primary knows when the replica holds every
//! record it wrote.
//!
//! One move at a time: nothing is planned while any partition's replica is out of the in-sync
//! set (a copy or catch-up is running), or while any node is SUSPECT, DEAD or DRAINING
//! (failover and re-replication come first). Order:
//! 0. **Repair**: a primary whose node reports its copy corrupt (`corrupt.<id>`, ADR 0017)
//!    is handed to the partition's in-sync replica when that copy is not reported corrupt.
//!    No step hands a primary to a copy reported corrupt.
//! 1. **Evacuate** nodes being decommissioned (`decommission.<id>` = `requested`): their
//!    replicas move to the least loaded other node; their primaries are handed to the
//!    in-sync replica (which leaves them holding a replica, moved next).
//! 2. **Primaries** within one per serving node: a primary on a most-loaded node is handed
//!    to its replica when that replica holds at least two fewer primaries; if no such
//!    replica exists, the replica of a partition led by a most-loaded node moves to the
//!    least-loaded node first (the handoff follows once it is in sync).
//! 3. **Replicas** within one per node: a replica on a most-loaded node moves to the
//!    least-loaded node that is not the partition's primary.
//!
//! Each primary handoff strictly lowers the sum of squared primary counts and each step-3
//! move the sum of squared replica counts (step 2's replica moves are each followed by a
//! handoff), so the plan reaches a balanced map and then returns `None`. Partitions without
//! a replica (RF = 1) are never moved.

use std::collections::{BTreeMap, BTreeSet};

use crate::state::{ClusterState, Command, NodeId, NodeState, PartitionId};

/// The settings key prefix that marks a node being decommissioned.
pub const DECOMMISSION_PREFIX: &str = "decommission.";
/// `decommission.<id>` while the node is being emptied.
pub const DECOMMISSION_REQUESTED: &str = "requested";
/// `decommission.<id>` once the node was removed.
pub const DECOMMISSION_REMOVED: &str = "removed";

/// The settings key prefix a node sets (to a reason) while its free disk is below
/// `--min-free-disk`, and clears (empty value) when it is back above: the rebalancer moves
/// nothing to such a node, nor to a node that has not reported yet (a node that just
/// joined), so a full disk is known before the first copy is planned.
pub const DISK_LOW_PREFIX: &str = "disk_low.";

/// The settings key of a node's low-disk report.
pub fn disk_low_key(node: NodeId) -> String {
    format!("{DISK_LOW_PREFIX}{node}")
}

/// Members that reported too little free disk, with their reason.
pub fn disk_low(state: &ClusterState) -> BTreeMap<NodeId, String> {
    state
        .settings
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .filter_map(|(k, v)| {
            let id: NodeId = k.strip_prefix(DISK_LOW_PREFIX)?.parse().ok()?;
            state.nodes.contains_key(&id).then(|| (id, v.clone()))
        })
        .collect()
}

/// The settings key prefix under which a node lists the partitions whose copy on it has an
/// HDB file that failed its content checksum (ADR 0015, 0017), comma-separated; empty when
/// none. Such a copy never receives a primary; a primary on it is handed to its clean in-sync
/// replica first of all moves; and the partition's primary replaces a replica copy listed
/// here whole.
pub const CORRUPT_PREFIX: &str = "corrupt.";

/// The settings key of a node's corrupt-copy report.
pub fn corrupt_key(node: NodeId) -> String {
    format!("{CORRUPT_PREFIX}{node}")
}

/// The value of a corrupt-copy report listing `partitions`.
pub fn corrupt_value(partitions: &BTreeSet<PartitionId>) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Per member: the partitions its corrupt-copy report lists (members that list none are
/// left out).
pub fn corrupt_copies(state: &ClusterState) -> BTreeMap<NodeId, BTreeSet<PartitionId>> {
    state
        .settings
        .iter()
        .filter_map(|(k, v)| {
            let id: NodeId = k.strip_prefix(CORRUPT_PREFIX)?.parse().ok()?;
            let parts: BTreeSet<PartitionId> =
                v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
            (state.nodes.contains_key(&id) && !parts.is_empty()).then_some((id, parts))
        })
        .collect()
}

/// The settings key of a node's decommission.
pub fn decommission_key(node: NodeId) -> String {
    format!("{DECOMMISSION_PREFIX}{node}")
}

/// Nodes whose decommission setting is `value`.
fn decommissions<'a>(state: &'a ClusterState, value: &'a str) -> impl Iterator<Item = NodeId> + 'a {
    state
        .settings
        .iter()
        .filter(move |(_, v)| v.as_str() == value)
        .filter_map(|(k, _)| k.strip_prefix(DECOMMISSION_PREFIX)?.parse().ok())
}

/// Nodes whose decommission was requested and that are still members.
pub fn leaving(state: &ClusterState) -> BTreeSet<NodeId> {
    decommissions(state, DECOMMISSION_REQUESTED)
        .filter(|id| state.nodes.contains_key(id))
        .collect()
}

/// Nodes a decommission removed. The leader commits the removal and then the `removed`
/// mark, two entries: a node already gone whose mark is still `requested` (the next entry,
/// or a leader that failed between the two) counts as removed.
pub fn decommissioned(state: &ClusterState) -> BTreeSet<NodeId> {
    decommissions(state, DECOMMISSION_REMOVED)
        .chain(decommissions(state, DECOMMISSION_REQUESTED))
        .filter(|id| !state.nodes.contains_key(id))
        .collect()
}

/// Removed nodes whose `removed` mark is not committed yet (the leader commits it).
pub fn unmarked_removals(state: &ClusterState) -> BTreeSet<NodeId> {
    decommissions(state, DECOMMISSION_REQUESTED)
        .filter(|id| !state.nodes.contains_key(id))
        .collect()
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Give `partition` the replica `to` (replacing `from`): committed by the leader as
    /// `SetReplica`; the primary then copies / catches the new replica up and expands the
    /// in-sync set.
    Replica {
        partition: PartitionId,
        epoch: u64,
        from: Option<NodeId>,
        to: NodeId,
    },
    /// Hand the primary of `partition` from `from` to its in-sync replica `to`: carried out
    /// by `from` (see the module doc), committed as `Promote` (epoch + 1).
    Primary {
        partition: PartitionId,
        epoch: u64,
        from: NodeId,
        to: NodeId,
    },
}

impl Move {
    pub fn partition(&self) -> PartitionId {
        match self {
            Move::Replica { partition, .. } | Move::Primary { partition, .. } => *partition,
        }
    }

    /// The node that receives a copy (replica move) or the primary (handoff).
    pub fn target(&self) -> NodeId {
        match self {
            Move::Replica { to, .. } | Move::Primary { to, .. } => *to,
        }
    }

    /// The command that commits the move.
    pub fn command(&self) -> Command {
        match *self {
            Move::Replica {
                partition,
                epoch,
                to,
                ..
            } => Command::SetReplica {
                partition,
                expected_epoch: epoch,
                replica: Some(to),
            },
            Move::Primary {
                partition,
                epoch,
                to,
                ..
            } => Command::Promote {
                partition,
                new_primary: to,
                expected_epoch: epoch,
            },
        }
    }
}

/// Why nothing is planned right now (for `/admin/cluster`), or the move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Move(Move),
    /// Balanced (and nothing left to evacuate).
    Balanced,
    /// Waiting: the reason.
    Waiting(String),
}

/// The next move. See the module doc.
pub fn plan(state: &ClusterState) -> Plan {
    if state.partitions.is_empty() {
        return Plan::Waiting("no partition map yet".into());
    }
    if let Some(n) = state.nodes.values().find(|n| {
        matches!(
            n.state,
            NodeState::Suspect | NodeState::Dead | NodeState::Draining
        )
    }) {
        return Plan::Waiting(format!(
            "node {} is {}: failover and re-replication first",
            n.id, n.state
        ));
    }
    if let Some(p) = state
        .partitions
        .iter()
        .find(|p| p.replica.is_some_and(|r| !p.in_sync.contains(&r)))
    {
        return Plan::Waiting(format!(
            "partition {} is copying to / catching up its replica {}",
            p.id,
            p.replica.unwrap_or(0)
        ));
    }
    let leaving = leaving(state);
    let full = disk_low(state);
    let corrupt = corrupt_copies(state);
    let corrupt_here =
        |node: NodeId, p: PartitionId| corrupt.get(&node).is_some_and(|c| c.contains(&p));
    // Nodes that may receive copies, and those that may lead (a node short of disk is
    // neither: it keeps what it holds, and the others are balanced among themselves).
    let hosts: Vec<NodeId> = state
        .nodes
        .values()
        .filter(|n| matches!(n.state, NodeState::Active | NodeState::Joining))
        .filter(|n| !leaving.contains(&n.id) && !full.contains_key(&n.id))
        .filter(|n| state.settings.contains_key(&disk_low_key(n.id)))
        .map(|n| n.id)
        .collect();
    let serving = |id: NodeId| {
        state
            .nodes
            .get(&id)
            .is_some_and(|n| n.state == NodeState::Active)
            && !leaving.contains(&id)
    };
    let mut prim: BTreeMap<NodeId, usize> = hosts.iter().map(|&h| (h, 0)).collect();
    let mut repl: BTreeMap<NodeId, usize> = hosts.iter().map(|&h| (h, 0)).collect();
    for p in &state.partitions {
        if let Some(c) = prim.get_mut(&p.primary) {
            *c += 1;
        }
        if let Some(c) = p.replica.and_then(|r| repl.get_mut(&r)) {
            *c += 1;
        }
    }
    let least = |counts: &BTreeMap<NodeId, usize>, not: &[NodeId]| -> Option<NodeId> {
        counts
            .iter()
            .filter(|(id, _)| !not.contains(id))
            .min_by_key(|(id, c)| (**c, **id))
            .map(|(id, _)| *id)
    };

    // 0. Repair: a primary whose copy has a corrupt file goes to its clean in-sync replica
    // (the old primary, now the replica, then gets a whole copy).
    for p in &state.partitions {
        if let Some(r) = p.replica {
            if corrupt_here(p.primary, p.id) && !corrupt_here(r, p.id) && serving(r) {
                return Plan::Move(Move::Primary {
                    partition: p.id,
                    epoch: p.epoch,
                    from: p.primary,
                    to: r,
                });
            }
        }
    }

    // 1. Evacuate leaving nodes.
    for p in state.partitions.iter().filter(|p| p.replica.is_some()) {
        if p.replica.is_some_and(|r| leaving.contains(&r)) {
            if let Some(to) = least(&repl, &[p.primary]) {
                return Plan::Move(Move::Replica {
                    partition: p.id,
                    epoch: p.epoch,
                    from: p.replica,
                    to,
                });
            }
            return Plan::Waiting(format!(
                "partition {}: no node can take the replica of a leaving node",
                p.id
            ));
        }
        if leaving.contains(&p.primary) {
            match p.replica {
                Some(r) if serving(r) && !corrupt_here(r, p.id) => {
                    return Plan::Move(Move::Primary {
                        partition: p.id,
                        epoch: p.epoch,
                        from: p.primary,
                        to: r,
                    })
                }
                _ => {
                    // Its replica cannot lead (a leaving or joining node, or a corrupt copy):
                    // move the replica to a serving node first.
                    let not: Vec<NodeId> = state
                        .nodes
                        .keys()
                        .copied()
                        .filter(|&n| !serving(n) || n == p.primary || Some(n) == p.replica)
                        .collect();
                    if let Some(to) = least(&repl, &not) {
                        return Plan::Move(Move::Replica {
                            partition: p.id,
                            epoch: p.epoch,
                            from: p.replica,
                            to,
                        });
                    }
                    return Plan::Waiting(format!(
                        "partition {}: no serving node can take over from leaving node {}",
                        p.id, p.primary
                    ));
                }
            }
        }
    }

    // 2. Primaries, over the serving hosts.
    let lead: BTreeMap<NodeId, usize> = prim
        .iter()
        .filter(|(id, _)| serving(**id))
        .map(|(id, c)| (*id, *c))
        .collect();
    if let (Some(&max), Some(&min)) = (lead.values().max(), lead.values().min()) {
        if max > min + 1 {
            let most: Vec<NodeId> = lead
                .iter()
                .filter(|(_, c)| **c == max)
                .map(|(id, _)| *id)
                .collect();
            let handoff = state.partitions.iter().find(|p| {
                most.contains(&p.primary)
                    && p.replica.is_some_and(|r| {
                        serving(r)
                            && !corrupt_here(r, p.id)
                            && lead.get(&r).is_some_and(|&c| c + 2 <= max)
                    })
            });
            if let Some(p) = handoff {
                if let Some(to) = p.replica {
                    return Plan::Move(Move::Primary {
                        partition: p.id,
                        epoch: p.epoch,
                        from: p.primary,
                        to,
                    });
                }
            }
            if let Some(to) = least(&lead, &[]) {
                if let Some(p) = state.partitions.iter().find(|p| {
                    most.contains(&p.primary) && p.replica.is_some() && p.replica != Some(to)
                }) {
                    return Plan::Move(Move::Replica {
                        partition: p.id,
                        epoch: p.epoch,
                        from: p.replica,
                        to,
                    });
                }
            }
        }
    }

    // 3. Replicas, over every host.
    if let (Some(&max), Some(&min)) = (repl.values().max(), repl.values().min()) {
        if max > min + 1 {
            for p in state.partitions.iter().filter(|p| {
                p.replica
                    .is_some_and(|r| repl.get(&r).is_some_and(|&c| c == max))
            }) {
                if let Some(to) = least(&repl, &[p.primary]) {
                    if repl.get(&to).is_some_and(|&c| c + 2 <= max) {
                        return Plan::Move(Move::Replica {
                            partition: p.id,
                            epoch: p.epoch,
                            from: p.replica,
                            to,
                        });
                    }
                }
            }
        }
    }
    Plan::Balanced
}

/// Why decommissioning `node` must be refused now, if it must (checked before the request
/// is committed). `voters` are the metadata voters (`--peers`): they stay members (the raft
/// voter set is fixed), so only data nodes can be decommissioned.
pub fn decommission_refusal(
    state: &ClusterState,
    node: NodeId,
    voters: &BTreeSet<NodeId>,
    rf: usize,
) -> Option<String> {
    let Some(n) = state.nodes.get(&node) else {
        return Some(format!("node {node} is not a member of the cluster"));
    };
    if voters.contains(&node) {
        return Some(format!(
            "node {node} is a metadata voter (listed in --peers); only data nodes (joined with \
             an id outside --peers) can be decommissioned"
        ));
    }
    if n.state == NodeState::Dead {
        return Some(format!(
            "node {node} is DEAD and cannot hand its partitions over; its replicas are \
             replaced after --replace-after"
        ));
    }
    let leaving = leaving(state);
    let full = disk_low(state);
    let remaining = state
        .nodes
        .values()
        .filter(|m| m.id != node && !leaving.contains(&m.id) && !full.contains_key(&m.id))
        .filter(|m| matches!(m.state, NodeState::Active | NodeState::Joining))
        .count();
    let held = state.partitions_of(node);
    if !held.is_empty() && remaining == 0 {
        return Some(format!(
            "node {node} is the last copy holder of partitions {held:?}: no other node could \
             take them"
        ));
    }
    if !held.is_empty() && remaining < rf {
        return Some(format!(
            "decommissioning node {node} would drop below the replication factor {rf}: only \
             {remaining} other node(s) could hold copies (nodes short of disk: {:?})",
            full.keys().collect::<Vec<_>>()
        ));
    }
    let single: Vec<PartitionId> = state
        .partitions
        .iter()
        .filter(|p| p.primary == node && p.replica.is_none())
        .map(|p| p.id)
        .collect();
    if !single.is_empty() {
        return Some(format!(
            "node {node} is the last copy holder of partitions {single:?}: they have no \
             replica (replication factor 1) and only replicas are moved"
        ));
    }
    let sole: Vec<PartitionId> = state
        .partitions
        .iter()
        .filter(|p| p.replica.is_some() && p.in_sync.len() == 1 && p.in_sync.contains(&node))
        .map(|p| p.id)
        .collect();
    if !sole.is_empty() {
        return Some(format!(
            "node {node} holds the only in-sync copy of partitions {sole:?} (their other copy \
             is catching up); moving them now would leave them without an in-sync copy: retry \
             once they are in sync"
        ));
    }
    None
}

#[cfg(test)]
mod tests;
