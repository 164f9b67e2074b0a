//! The replicated metadata state machine: nodes, the partition map, tables and settings.
//!
//! Every node applies the same raft log through [`ClusterState::apply`], which is deterministic
//! (ordered maps only, no clocks, no randomness) and validates each command against the current
//! state. A rejected command changes nothing; since every node rejects it the same way, the
//! states stay equal. `version` goes up by one on every command that changes something, so a
//! cached partition map can be compared with the current one cheaply.
//!
//! # Snapshot encoding (version 1)
//!
//! `[SNAPSHOT_FORMAT_V1 = 1] ++ JSON(ClusterState)`, the same scheme as commands
//! (see [`command`]).

pub mod command;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use zepto_storage::TableSchema;

pub use command::{Command, COMMAND_FORMAT_V1};

use crate::error::{Error, Result};

/// A node's id: an integer, stable across restarts (a StatefulSet ordinal + 1, or `--node-id`).
pub type NodeId = u64;
/// A partition's index in `0..P`.
pub type PartitionId = u32;

/// Version byte of the snapshot encoding.
pub const SNAPSHOT_FORMAT_V1: u8 = 1;

/// A member's state as committed in the metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Registered, bringing its replicas up; holds no primary yet.
    Joining,
    Active,
    /// Missed heartbeats for the suspect time; still owns its partitions.
    Suspect,
    /// Missed heartbeats for the dead time; its primaries fail over.
    Dead,
    /// Handing its primaries to their replicas before leaving.
    Draining,
}

impl NodeState {
    /// Whether a node in this state may be made primary.
    pub fn can_serve(self) -> bool {
        matches!(self, NodeState::Active | NodeState::Suspect)
    }

    fn may_become(self, to: NodeState) -> bool {
        use NodeState::*;
        match (self, to) {
            (a, b) if a == b => true,
            (Joining, Active | Dead | Draining) => true,
            (Active, Suspect | Dead | Draining) => true,
            (Suspect, Active | Dead | Draining) => true,
            // A dead node that heartbeats again rejoins (as JOINING, to catch its replicas
            // up) or, if it holds nothing that needs catching up, straight as ACTIVE.
            (Dead, Joining | Active) => true,
            (Draining, Active | Dead) => true,
            _ => false,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            NodeState::Joining => "JOINING",
            NodeState::Active => "ACTIVE",
            NodeState::Suspect => "SUSPECT",
            NodeState::Dead => "DEAD",
            NodeState::Draining => "DRAINING",
        };
        f.write_str(s)
    }
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub http_addr: String,
    pub grpc_addr: String,
    pub state: NodeState,
}

/// Who owns a partition, at which epoch, and which copies hold every acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub id: PartitionId,
    pub primary: NodeId,
    pub replica: Option<NodeId>,
    /// Goes up by one on every change of primary; fencing compares against it.
    pub epoch: u64,
    /// Copies that hold every write acknowledged at this epoch. Always contains the primary.
    pub in_sync: BTreeSet<NodeId>,
}

/// The replicated cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub version: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// `partitions[p].id == p`; empty until `InitPartitions`.
    pub partitions: Vec<PartitionInfo>,
    /// Keyed by lower-cased table name (table names are case-insensitive).
    pub tables: BTreeMap<String, TableSchema>,
    pub settings: BTreeMap<String, String>,
    /// The storage table id of every table in `tables` (same key). Assigned when
    /// `CreateTable` is applied, so every node writes the same ids into its WAL.
    #[serde(default)]
    pub table_ids: BTreeMap<String, u32>,
    /// The next table id to assign (ids only go up and are never reused, as in the storage
    /// catalog). `0` (an old snapshot) means 1.
    #[serde(default)]
    pub next_table_id: u32,
}

/// What a successfully applied command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed; this is its new version.
    Changed { version: u64 },
    /// The command asked for what already holds (e.g. a duplicated proposal); nothing changed.
    Unchanged,
}

/// Why the state machine refused a command. Deterministic: every node refuses alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("node {id} is already a member (at {http_addr})")]
    NodeIdInUse { id: NodeId, http_addr: String },
    #[error("node id 0 is reserved")]
    ReservedNodeId,
    #[error("unknown node {id}")]
    UnknownNode { id: NodeId },
    #[error("node {id} still holds partitions {partitions:?}")]
    NodeHoldsPartitions {
        id: NodeId,
        partitions: Vec<PartitionId>,
    },
    #[error("node {id} cannot go from {from} to {to}")]
    BadTransition {
        id: NodeId,
        from: NodeState,
        to: NodeState,
    },
    #[error("the partition map already exists ({count} partitions)")]
    PartitionsExist { count: usize },
    #[error("a partition map needs at least one partition")]
    NoPartitions,
    #[error("partition {partition}: primary and replica are both node {node}")]
    SameNode {
        partition: PartitionId,
        node: NodeId,
    },
    #[error("unknown partition {partition}")]
    UnknownPartition { partition: PartitionId },
    #[error("partition {partition}: expected epoch {expected}, current is {current}")]
    EpochMismatch {
        partition: PartitionId,
        expected: u64,
        current: u64,
    },
    #[error("partition {partition}: node {node} is not in the in-sync set {in_sync:?}")]
    NotInSync {
        partition: PartitionId,
        node: NodeId,
        in_sync: BTreeSet<NodeId>,
    },
    #[error("partition {partition}: node {node} is not the primary (primary is {primary})")]
    NotPrimary {
        partition: PartitionId,
        node: NodeId,
        primary: NodeId,
    },
    #[error("partition {partition}: node {node} is not the replica (replica is {replica:?})")]
    NotReplica {
        partition: PartitionId,
        node: NodeId,
        replica: Option<NodeId>,
    },
    #[error("node {id} is {state} and cannot serve as primary")]
    CannotServe { id: NodeId, state: NodeState },
    #[error("table '{name}' already exists")]
    TableExists { name: String },
    #[error("unknown table '{name}'")]
    UnknownTable { name: String },
    #[error("epoch overflow on partition {partition}")]
    EpochOverflow { partition: PartitionId },
}

impl ClusterState {
    /// Apply one committed command. See the module doc.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, Rejected> {
        let changed = match cmd {
            Command::AddNode {
                id,
                http_addr,
                grpc_addr,
            } => self.add_node(*id, http_addr, grpc_addr)?,
            Command::RemoveNode { id } => self.remove_node(*id)?,
            Command::SetNodeState { id, state } => self.set_node_state(*id, *state)?,
            Command::InitPartitions { assignments } => self.init_partitions(assignments)?,
            Command::Promote {
                partition,
                new_primary,
                expected_epoch,
            } => self.promote(*partition, *new_primary, *expected_epoch)?,
            Command::ShrinkInSync {
                partition,
                epoch,
                primary,
            } => {
                let p = self.partition_at(*partition, *epoch)?;
                if p.primary != *primary {
                    return Err(Rejected::NotPrimary {
                        partition: *partition,
                        node: *primary,
                        primary: p.primary,
                    });
                }
                let only: BTreeSet<NodeId> = [*primary].into();
                if p.in_sync == only {
                    false
                } else {
                    p.in_sync = only;
                    true
                }
            }
            Command::ExpandInSync {
                partition,
                epoch,
                node,
            } => {
                let p = self.partition_at(*partition, *epoch)?;
                if p.replica != Some(*node) {
                    return Err(Rejected::NotReplica {
                        partition: *partition,
                        node: *node,
                        replica: p.replica,
                    });
                }
                p.in_sync.insert(*node)
            }
            Command::SetReplica {
                partition,
                expected_epoch,
                replica,
            } => {
                if let Some(r) = replica {
                    self.node(*r)?;
                }
                let p = self.partition_at(*partition, *expected_epoch)?;
                if *replica == Some(p.primary) {
                    return Err(Rejected::SameNode {
                        partition: *partition,
                        node: p.primary,
                    });
                }
                if p.replica == *replica {
                    false
                } else {
                    if let Some(old) = p.replica {
                        p.in_sync.remove(&old);
                    }
                    p.replica = *replica;
                    true
                }
            }
            Command::CreateTable { schema } => {
                let key = schema.name.to_ascii_lowercase();
                if self.tables.contains_key(&key) {
                    return Err(Rejected::TableExists {
                        name: schema.name.clone(),
                    });
                }
                let id = self.next_table_id.max(1);
                self.next_table_id = id.saturating_add(1);
                self.table_ids.insert(key.clone(), id);
                self.tables.insert(key, schema.clone());
                true
            }
            Command::DropTable { name } => {
                let key = name.to_ascii_lowercase();
                if self.tables.remove(&key).is_none() {
                    return Err(Rejected::UnknownTable { name: name.clone() });
                }
                self.table_ids.remove(&key);
                true
            }
            Command::SetSetting { key, value } => {
                self.settings.insert(key.clone(), value.clone()).as_ref() != Some(value)
            }
        };
        if changed {
            self.version += 1;
            Ok(Applied::Changed {
                version: self.version,
            })
        } else {
            Ok(Applied::Unchanged)
        }
    }

    fn node(&self, id: NodeId) -> Result<&NodeInfo, Rejected> {
        self.nodes.get(&id).ok_or(Rejected::UnknownNode { id })
    }

    /// The partition, provided `epoch` is its current epoch.
    fn partition_at(
        &mut self,
        partition: PartitionId,
        epoch: u64,
    ) -> Result<&mut PartitionInfo, Rejected> {
        let p = self
            .partitions
            .get_mut(partition as usize)
            .ok_or(Rejected::UnknownPartition { partition })?;
        if p.epoch != epoch {
            return Err(Rejected::EpochMismatch {
                partition,
                expected: epoch,
                current: p.epoch,
            });
        }
        Ok(p)
    }

    fn add_node(&mut self, id: NodeId, http_addr: &str, grpc_addr: &str) -> Result<bool, Rejected> {
        if id == 0 {
            // raft-rs reserves 0 as "no node".
            return Err(Rejected::ReservedNodeId);
        }
        if let Some(n) = self.nodes.get(&id) {
            return Err(Rejected::NodeIdInUse {
                id,
                http_addr: n.http_addr.clone(),
            });
        }
        self.nodes.insert(
            id,
            NodeInfo {
                id,
                http_addr: http_addr.to_string(),
                grpc_addr: grpc_addr.to_string(),
                state: NodeState::Joining,
            },
        );
        Ok(true)
    }

    fn remove_node(&mut self, id: NodeId) -> Result<bool, Rejected> {
        self.node(id)?;
        let held = self.partitions_of(id);
        if !held.is_empty() {
            return Err(Rejected::NodeHoldsPartitions {
                id,
                partitions: held,
            });
        }
        self.nodes.remove(&id);
        Ok(true)
    }

    fn set_node_state(&mut self, id: NodeId, to: NodeState) -> Result<bool, Rejected> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or(Rejected::UnknownNode { id })?;
        if !n.state.may_become(to) {
            return Err(Rejected::BadTransition {
                id,
                from: n.state,
                to,
            });
        }
        let changed = n.state != to;
        n.state = to;
        Ok(changed)
    }

    fn init_partitions(
        &mut self,
        assignments: &[(NodeId, Option<NodeId>)],
    ) -> Result<bool, Rejected> {
        if !self.partitions.is_empty() {
            return Err(Rejected::PartitionsExist {
                count: self.partitions.len(),
            });
        }
        if assignments.is_empty() {
            return Err(Rejected::NoPartitions);
        }
        let mut parts = Vec::with_capacity(assignments.len());
        for (i, &(primary, replica)) in assignments.iter().enumerate() {
            let id = PartitionId::try_from(i).map_err(|_| Rejected::UnknownPartition {
                partition: PartitionId::MAX,
            })?;
            self.node(primary)?;
            if let Some(r) = replica {
                self.node(r)?;
                if r == primary {
                    return Err(Rejected::SameNode {
                        partition: id,
                        node: r,
                    });
                }
            }
            let in_sync = [Some(primary), replica].into_iter().flatten().collect();
            parts.push(PartitionInfo {
                id,
                primary,
                replica,
                epoch: 1,
                in_sync,
            });
        }
        self.partitions = parts;
        Ok(true)
    }

    fn promote(
        &mut self,
        partition: PartitionId,
        new_primary: NodeId,
        expected_epoch: u64,
    ) -> Result<bool, Rejected> {
        let state = self.node(new_primary)?.state;
        if !state.can_serve() {
            return Err(Rejected::CannotServe {
                id: new_primary,
                state,
            });
        }
        let p = self.partition_at(partition, expected_epoch)?;
        if !p.in_sync.contains(&new_primary) {
            return Err(Rejected::NotInSync {
                partition,
                node: new_primary,
                in_sync: p.in_sync.clone(),
            });
        }
        if p.primary == new_primary {
            // Already primary: a duplicate of a committed promotion would carry the old epoch
            // and be refused above, so this is a request to bump the epoch in place. Refuse:
            // epochs move only with ownership.
            return Err(Rejected::SameNode {
                partition,
                node: new_primary,
            });
        }
        let epoch = p
            .epoch
            .checked_add(1)
            .ok_or(Rejected::EpochOverflow { partition })?;
        let old = p.primary;
        p.epoch = epoch;
        p.primary = new_primary;
        p.replica = Some(old);
        // The old primary may have acknowledged nothing the new one lacks (it was in sync), but
        // it may hold writes it never got to replicate: it must catch up from the new primary
        // (truncating its divergent tail) before it counts as in sync again.
        p.in_sync = [new_primary].into();
        Ok(true)
    }

    /// Partitions a node is primary or replica of.
    pub fn partitions_of(&self, node: NodeId) -> Vec<PartitionId> {
        self.partitions
            .iter()
            .filter(|p| p.primary == node || p.replica == Some(node))
            .map(|p| p.id)
            .collect()
    }

    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionInfo> {
        self.partitions.get(partition as usize)
    }

    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.get(&name.to_ascii_lowercase())
    }

    /// The storage table id the metadata assigned to a table.
    pub fn table_id(&self, name: &str) -> Option<u32> {
        self.table_ids.get(&name.to_ascii_lowercase()).copied()
    }

    /// Encode as a raft snapshot payload (see the module doc).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_FORMAT_V1];
        if let Err(e) = serde_json::to_writer(&mut out, self) {
            tracing::error!(error = %e, "encode metadata snapshot");
        }
        out
    }

    /// Decode a snapshot payload. An empty payload is the empty state (raft's initial snapshot).
    pub fn decode_snapshot(bytes: &[u8]) -> Result<ClusterState> {
        let what = "metadata snapshot";
        match bytes.split_first() {
            None => Ok(ClusterState::default()),
            Some((&SNAPSHOT_FORMAT_V1, body)) => {
                serde_json::from_slice(body).map_err(|e| Error::Decode {
                    what,
                    reason: e.to_string(),
                })
            }
            Some((v, _)) => Err(Error::Decode {
                what,
                reason: format!(
                    "unknown format version {v} (this build reads {SNAPSHOT_FORMAT_V1})"
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
