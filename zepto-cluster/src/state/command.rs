//! The commands of the metadata state machine and their versioned encoding.
//!
//! # Encoding (raft entry data, version 1)
//!
//! `[COMMAND_FORMAT_V1 = 1] ++ JSON(Command)`. One version byte, then the serde_json encoding
//! of [`Command`] (externally tagged enum: `{"Promote":{"partition":3,...}}`). JSON because the
//! metadata log is tiny (a few commands per minute) and being able to read it with `jq` during
//! an incident is worth more than the bytes. A decoder seeing a version it does not know
//! refuses with an error naming the version; it never guesses. A new field must be added with
//! `#[serde(default)]` (old logs stay readable) or go into a new version.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use zepto_storage::TableSchema;

use super::{NodeId, NodeState, PartitionId};
use crate::error::{Error, Result};

/// Version byte of the current command encoding.
pub const COMMAND_FORMAT_V1: u8 = 1;

/// A change to the cluster metadata. Proposed through raft, applied by
/// [`super::ClusterState::apply`] on every node in log order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A new node becomes a member (state JOINING). Refused if the id is in use.
    AddNode {
        id: NodeId,
        http_addr: String,
        grpc_addr: String,
    },
    /// Remove a node that holds no partition.
    RemoveNode {
        id: NodeId,
    },
    /// Change a node's state (failure detector, drain, join completion).
    SetNodeState {
        id: NodeId,
        state: NodeState,
    },
    /// Create the partition map once: `assignments[p] = (primary, replica)`. Epochs start at 1
    /// and both copies start in sync (they are both empty).
    InitPartitions {
        assignments: Vec<(NodeId, Option<NodeId>)>,
    },
    /// Make `new_primary` the primary of `partition` with epoch + 1. Valid only at
    /// `expected_epoch` and only if `new_primary` is in the in-sync set. The old primary stays
    /// as the (out-of-sync) replica, so it can rejoin once it catches up.
    Promote {
        partition: PartitionId,
        new_primary: NodeId,
        expected_epoch: u64,
    },
    /// The primary stops waiting for its lagging replica: in-sync set = {primary}. Must be
    /// committed before the primary acknowledges any write alone.
    ShrinkInSync {
        partition: PartitionId,
        epoch: u64,
        primary: NodeId,
    },
    /// The replica caught up and rejoins the in-sync set.
    ExpandInSync {
        partition: PartitionId,
        epoch: u64,
        node: NodeId,
    },
    /// Give a partition a new replica (not in sync until it catches up), or none.
    SetReplica {
        partition: PartitionId,
        expected_epoch: u64,
        replica: Option<NodeId>,
    },
    CreateTable {
        schema: TableSchema,
    },
    DropTable {
        name: String,
    },
    SetSetting {
        key: String,
        value: String,
    },
}

impl Command {
    /// Encode for a raft entry (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COMMAND_FORMAT_V1];
        // Serializing plain data structs with string keys cannot fail.
        if let Err(e) = serde_json::to_writer(&mut out, self) {
            tracing::error!(error = %e, "encode metadata command");
        }
        out
    }

    /// Decode a raft entry's data.
    pub fn decode(bytes: &[u8]) -> Result<Command> {
        let what = "metadata command";
        match bytes.split_first() {
            None => Err(Error::Decode {
                what,
                reason: "empty".to_string(),
            }),
            Some((&COMMAND_FORMAT_V1, body)) => {
                serde_json::from_slice(body).map_err(|e| Error::Decode {
                    what,
                    reason: e.to_string(),
                })
            }
            Some((v, _)) => Err(Error::Decode {
                what,
                reason: format!(
                    "unknown format version {v} (this build reads {COMMAND_FORMAT_V1})"
                ),
            }),
        }
    }

    /// The nodes a command names, for validation and logging.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        let mut s = BTreeSet::new();
        match self {
            Command::AddNode { id, .. }
            | Command::RemoveNode { id }
            | Command::SetNodeState { id, .. } => {
                s.insert(*id);
            }
            Command::InitPartitions { assignments } => {
                for (p, r) in assignments {
                    s.insert(*p);
                    s.extend(r.iter().copied());
                }
            }
            Command::Promote { new_primary, .. } => {
                s.insert(*new_primary);
            }
            Command::ShrinkInSync { primary, .. } => {
                s.insert(*primary);
            }
            Command::ExpandInSync { node, .. } => {
                s.insert(*node);
            }
            Command::SetReplica { replica, .. } => s.extend(replica.iter().copied()),
            Command::CreateTable { .. }
            | Command::DropTable { .. }
            | Command::SetSetting { .. } => {}
        }
        s
    }
}
