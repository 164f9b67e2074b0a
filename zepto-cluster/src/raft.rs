//! The metadata raft group: one [`MetaNode`] per process, on raft-rs.
//!
//! `MetaNode` owns the `RawNode` and the [`ClusterState`] it replicates. It does no network
//! I/O and reads no clock: the caller (the driver task in `zeptod`)
//! - calls [`MetaNode::tick`] every `Timings::raft_tick`,
//! - hands every raft message that arrives from a peer to [`MetaNode::step`] as opaque bytes,
//! - proposes commands with [`MetaNode::propose`] (on the leader),
//! - then calls [`MetaNode::advance`], which persists (fsync) whatever raft needs persisted,
//!   applies committed commands to the state, and returns the messages to send
//!   (`(to, bytes)`) and the commands that committed.
//!
//! The driver loop in `zeptod` is expected to look like this (one task owns the node):
//!
//! ```text
//! loop {
//!     select! {
//!         _ = tick_timer (Timings::raft_tick)    => node.tick(),
//!         (from, bytes) = inbound raft message     => node.step(&bytes) (log and drop errors),
//!         (cmd, reply) = proposal request          => node.propose(&cmd) -> remember reply by ProposalId,
//!     }
//!     let out = node.advance()?;                 // durable before it returns
//!     send out.messages (to, bytes) over gRPC;   // report_unreachable(to) on failure
//!     answer the waiters in out.committed by their ProposalId;
//!     coordinator.observe_leadership(node.is_leader(), node.term(), node.state(), now);
//!     for cmd in coordinator.tick(node.state(), now) { node.propose(&cmd) }
//!     router.update(node.state()); fence.observe_state(node.state());
//! }
//! ```
//!
//! An `Err` from `advance` means the metadata storage failed (e.g. fsync): raft's durability
//! promise can no longer be kept and the process must restart from disk, not carry on.
//!
//! Voters are the initial `--peers` (every one bootstraps with the same configuration and an
//! empty log); other nodes join as learners through [`MetaNode::propose_add_learner`].
//! raft-rs runs with pre-vote and check-quorum, so a node that was cut off cannot disrupt the
//! group when it returns and a leader cut off from the majority steps down.

mod logger;
pub mod storage;

use std::collections::BTreeSet;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, StateRole};

use crate::error::{Error, Result};
use crate::state::{Applied, ClusterState, Command, NodeId, Rejected};
use crate::timing::Timings;
pub use storage::{MetaStorage, OpenReport};

/// Take a snapshot (and compact the log) after this many applied entries by default.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000;

/// How a `MetaNode` is set up.
#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub id: NodeId,
    /// The initial voters (`--peers`). A node in this list bootstraps an empty storage with
    /// them; a node not in it starts empty and waits to be added as a learner.
    pub voters: Vec<NodeId>,
    pub timings: Timings,
    /// Distinguishes this process's proposals from those of its earlier lives (e.g. the start
    /// time in ms). See [`ProposalId`].
    pub incarnation: u64,
    pub snapshot_every: u64,
}

impl MetaConfig {
    pub fn new(id: NodeId, voters: Vec<NodeId>, timings: Timings) -> MetaConfig {
        MetaConfig {
            id,
            voters,
            timings,
            incarnation: 0,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

/// Identifies a proposal so its proposer can tell when (and how) it committed. Carried in the
/// raft entry's context as `node | incarnation | seq` (3 x u64 LE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProposalId {
    pub node: NodeId,
    pub incarnation: u64,
    pub seq: u64,
}

impl ProposalId {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        v.extend_from_slice(&self.node.to_le_bytes());
        v.extend_from_slice(&self.incarnation.to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<ProposalId> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        if b.len() != 24 {
            return None;
        }
        Some(ProposalId {
            node: word(0)?,
            incarnation: word(1)?,
            seq: word(2)?,
        })
    }
}

/// A command that committed and was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub index: u64,
    pub command: Command,
    pub result: Result<Applied, Rejected>,
    /// Set on the node that proposed it (in this incarnation).
    pub proposal: Option<ProposalId>,
}

/// This node's view of the group after a role change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleChange {
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub term: u64,
}

/// What the caller must do after [`MetaNode::advance`]: everything in here is already durable.
#[derive(Debug, Default)]
pub struct Output {
    /// Raft messages to send, as opaque bytes, to peer `.0`.
    pub messages: Vec<(NodeId, Vec<u8>)>,
    /// Commands committed and applied, in log order.
    pub committed: Vec<Committed>,
    /// Set if the leader, or this node's role, changed.
    pub role: Option<RoleChange>,
    /// Index of the last log entry that is now durable on this node.
    pub persisted_index: u64,
    /// Set if a snapshot from the leader replaced the state.
    pub installed_snapshot: Option<u64>,
}

/// One member of the metadata raft group. See the module doc.
pub struct MetaNode {
    raw: RawNode<MetaStorage>,
    state: ClusterState,
    applied: u64,
    snapshot_every: u64,
    incarnation: u64,
    next_seq: u64,
}

impl std::fmt::Debug for MetaNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaNode")
            .field("id", &self.raw.raft.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("applied", &self.applied)
            .field("version", &self.state.version)
            .finish()
    }
}

impl MetaNode {
    /// Start a node on `storage` (opened from `data/meta/`, or in memory).
    pub fn open(config: MetaConfig, mut storage: MetaStorage) -> Result<MetaNode> {
        if config.id == 0 {
            return Err(Error::InvalidInput("node id 0 is reserved".into()));
        }
        if config.voters.contains(&config.id) {
            storage.bootstrap_durable(&config.voters)?;
        }
        let snap = storage.latest_snapshot();
        let applied = snap.get_metadata().index;
        let state = ClusterState::decode_snapshot(snap.get_data())?;
        let t = &config.timings;
        let cfg = raft::Config {
            id: config.id,
            election_tick: t.election_ticks,
            heartbeat_tick: t.raft_heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let raw = RawNode::new(&cfg, storage, &logger::raft_logger(config.id))?;
        Ok(MetaNode {
            raw,
            state,
            applied,
            snapshot_every: config.snapshot_every.max(1),
            incarnation: config.incarnation,
            next_seq: 0,
        })
    }

    pub fn id(&self) -> NodeId {
        self.raw.raft.id
    }

    /// The applied metadata.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The highest log index this node knows to be committed (applied lags it briefly).
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// The raft log and hard state as persisted.
    pub fn storage(&self) -> &MetaStorage {
        self.raw.store()
    }

    /// Advance raft's logical clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Hand a raft message received from a peer (opaque bytes) to raft. A malformed message,
    /// one addressed to another node, or a local-only message type is an error, never a panic.
    pub fn step(&mut self, bytes: &[u8]) -> Result<()> {
        let msg = Message::parse_from_bytes(bytes).map_err(|e| Error::Decode {
            what: "raft message",
            reason: e.to_string(),
        })?;
        if msg.to != self.id() {
            return Err(Error::InvalidInput(format!(
                "raft message for node {} delivered to node {}",
                msg.to,
                self.id()
            )));
        }
        if msg.from == 0 {
            return Err(Error::InvalidInput("raft message from node 0".into()));
        }
        let mut msg = msg;
        let last = self.last_index();
        if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last {
            // The leader believes this node holds entries it does not: its metadata log was
            // lost (a replaced disk). raft-rs would panic committing past the log's end; commit
            // what we have instead. The leader replaces this voter (remove, re-add as a
            // learner, promote once caught up) when its heartbeats report the loss.
            tracing::warn!(
                leader = msg.from,
                leader_commit = msg.commit,
                last_index = last,
                "the metadata leader believes this node holds entries it does not (was its data directory replaced?)"
            );
            msg.commit = last;
        }
        self.raw.step(msg)?;
        Ok(())
    }

    /// Like [`MetaNode::step`] for a message that arrived from an authenticated `sender`:
    /// also refuses a message whose `from` is not the sender (a peer may only speak for
    /// itself).
    pub fn step_from(&mut self, sender: NodeId, bytes: &[u8]) -> Result<()> {
        let msg = Message::parse_from_bytes(bytes).map_err(|e| Error::Decode {
            what: "raft message",
            reason: e.to_string(),
        })?;
        if msg.from != sender {
            return Err(Error::InvalidInput(format!(
                "raft message from node {} sent by node {sender}",
                msg.from
            )));
        }
        self.step(bytes)
    }

    /// Propose a command. Only the leader proposes (followers answer `NotLeader` with the
    /// leader they know, and the caller forwards); the command is applied on every node once
    /// committed, and shows up in `Output::committed` with the returned id here.
    pub fn propose(&mut self, cmd: &Command) -> Result<ProposalId> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader: self.leader(),
            });
        }
        let id = ProposalId {
            node: self.id(),
            incarnation: self.incarnation,
            seq: self.next_seq,
        };
        self.raw.propose(id.encode(), cmd.encode())?;
        self.next_seq += 1;
        Ok(id)
    }

    /// The index of the last entry of this node's log.
    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// On the leader: the highest log index known to be on `node` (`None` elsewhere, or for a
    /// node outside the group).
    pub fn matched(&self, node: NodeId) -> Option<u64> {
        if !self.is_leader() {
            return None;
        }
        self.raw.raft.prs().get(node).map(|p| p.matched)
    }

    /// The voters and learners of the applied configuration.
    pub fn membership(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        let cs = self.storage().conf_state();
        (cs.voters.clone(), cs.learners.clone())
    }

    /// Whether a configuration change is proposed and not applied yet (raft-rs takes one at
    /// a time).
    pub fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// On the leader: take one step towards every node of `configured` (the `--peers`
    /// voters) being a voter with an intact log. `lost` are voters whose heartbeats reported
    /// a log shorter than what the leader knows they acknowledged (their disk was replaced).
    /// One configuration change at a time (raft-rs's rule):
    /// 1. a `lost` voter is removed (its progress is forgotten: raft cannot count on entries
    ///    it no longer holds, and it must never vote with a log it lost);
    /// 2. a configured node outside the group is added back as a learner (it receives the
    ///    log or a snapshot);
    /// 3. a configured learner that holds everything committed is promoted to voter.
    ///
    /// Returns what was proposed, for logging. Elsewhere, or with a change pending, nothing.
    pub fn reconcile_membership(
        &mut self,
        configured: &[NodeId],
        lost: &BTreeSet<NodeId>,
    ) -> Result<Option<(NodeId, &'static str)>> {
        if !self.is_leader() || self.has_pending_conf() {
            return Ok(None);
        }
        let (voters, learners) = self.membership();
        let me = self.id();
        if let Some(&id) = lost.iter().find(|id| **id != me && voters.contains(id)) {
            self.propose_remove_node(id)?;
            return Ok(Some((id, "remove the voter whose log was lost")));
        }
        for &id in configured {
            if voters.contains(&id) {
                continue;
            }
            if learners.contains(&id) {
                if self.matched(id).is_some_and(|m| m >= self.commit_index()) {
                    self.propose_promote_learner(id)?;
                    return Ok(Some((id, "promote the caught-up learner to voter")));
                }
            } else {
                self.propose_add_learner(id)?;
                return Ok(Some((id, "add the configured node back as a learner")));
            }
        }
        Ok(None)
    }

    /// On the leader: hand leadership to the voter whose log is the most complete (not this
    /// node). Returns the transferee, if any. Used when this node can no longer serve.
    pub fn transfer_leadership(&mut self) -> Option<NodeId> {
        if !self.is_leader() {
            return None;
        }
        let me = self.id();
        let (voters, _) = self.membership();
        let to = voters
            .into_iter()
            .filter(|&v| v != me)
            .max_by_key(|&v| (self.matched(v).unwrap_or(0), std::cmp::Reverse(v)))?;
        self.raw.transfer_leader(to);
        Some(to)
    }

    /// Propose making the learner `node` a voter.
    pub fn propose_promote_learner(&mut self, node: NodeId) -> Result<()> {
        self.propose_conf(node, ConfChangeType::AddNode)
    }

    /// Propose adding `node` as a learner (a data node outside the voters).
    pub fn propose_add_learner(&mut self, node: NodeId) -> Result<()> {
        self.propose_conf(node, ConfChangeType::AddLearnerNode)
    }

    /// Propose removing `node` from the raft group.
    pub fn propose_remove_node(&mut self, node: NodeId) -> Result<()> {
        self.propose_conf(node, ConfChangeType::RemoveNode)
    }

    fn propose_conf(&mut self, node: NodeId, change_type: ConfChangeType) -> Result<()> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader: self.leader(),
            });
        }
        let mut cc = ConfChange {
            node_id: node,
            ..Default::default()
        };
        cc.set_change_type(change_type);
        self.raw.propose_conf_change(Vec::new(), cc)?;
        Ok(())
    }

    /// Tell raft a peer could not be reached (the transport failed to send to it).
    pub fn report_unreachable(&mut self, node: NodeId) {
        self.raw.report_unreachable(node);
    }

    /// Persist, apply and collect everything raft has ready. See the module doc.
    pub fn advance(&mut self) -> Result<Output> {
        let mut out = Output::default();
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                out.role = Some(RoleChange {
                    leader: (ss.leader_id != 0).then_some(ss.leader_id),
                    is_leader: ss.raft_state == StateRole::Leader,
                    term: self.raw.raft.term,
                });
            }
            push_messages(&mut out, rd.take_messages());
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let index = snap.get_metadata().index;
                let state = ClusterState::decode_snapshot(snap.get_data())?;
                self.raw.mut_store().apply_snapshot_durable(snap)?;
                self.state = state;
                self.applied = index;
                out.installed_snapshot = Some(index);
            }
            let committed = rd.take_committed_entries();
            let entries = rd.take_entries();
            let hs = rd.hs().cloned();
            if !entries.is_empty() || hs.is_some() {
                self.raw
                    .mut_store()
                    .write_durable(&entries, hs.as_ref(), None)?;
            }
            self.apply_entries(committed, &mut out)?;
            push_messages(&mut out, rd.take_persisted_messages());
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                let mut hs = self.raw.store().hard_state().clone();
                hs.commit = commit;
                self.raw.mut_store().write_durable(&[], Some(&hs), None)?;
            }
            push_messages(&mut out, light.take_messages());
            self.apply_entries(light.take_committed_entries(), &mut out)?;
            self.raw.advance_apply();
        }
        self.maybe_compact()?;
        out.persisted_index = self.raw.raft.raft_log.last_index();
        Ok(out)
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<()> {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    // An empty entry is the no-op a new leader appends.
                    if !e.get_data().is_empty() {
                        self.apply_command(&e, out);
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(e.get_data()).map_err(|err| {
                        Error::Decode {
                            what: "raft conf change",
                            reason: err.to_string(),
                        }
                    })?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().write_durable(&[], None, Some(&cs))?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(e.get_data()).map_err(|err| {
                        Error::Decode {
                            what: "raft conf change",
                            reason: err.to_string(),
                        }
                    })?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().write_durable(&[], None, Some(&cs))?;
                }
            }
            self.applied = e.index;
        }
        Ok(())
    }

    fn apply_command(&mut self, e: &Entry, out: &mut Output) {
        let command = match Command::decode(e.get_data()) {
            Ok(c) => c,
            Err(err) => {
                // Every node holds the same bytes and skips them alike, so the states stay
                // equal; an operator must see it (a newer node proposed a format we don't read).
                tracing::error!(index = e.index, error = %err, "skip undecodable metadata command");
                return;
            }
        };
        let result = self.state.apply(&command);
        if let Err(r) = &result {
            tracing::info!(index = e.index, ?command, reason = %r, "metadata command rejected");
        }
        let proposal = ProposalId::decode(e.get_context())
            .filter(|p| p.node == self.id() && p.incarnation == self.incarnation);
        out.committed.push(Committed {
            index: e.index,
            command,
            result,
            proposal,
        });
    }

    fn maybe_compact(&mut self) -> Result<()> {
        let snap_index = self.raw.store().latest_snapshot().get_metadata().index;
        let wanted = self.raw.mut_store().take_snapshot_wanted();
        if self.applied >= snap_index + self.snapshot_every || (wanted && self.applied > snap_index)
        {
            let data = self.state.encode_snapshot();
            self.raw.mut_store().compact_durable(self.applied, data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl MetaNode {
    /// Simulate a crash: the node is gone, its storage (everything it made durable) remains.
    pub(crate) fn crash(mut self) -> MetaStorage {
        std::mem::replace(self.raw.mut_store(), MetaStorage::in_memory())
    }
}

fn push_messages(out: &mut Output, msgs: Vec<Message>) {
    for m in msgs {
        match m.write_to_bytes() {
            Ok(b) => out.messages.push((m.to, b)),
            // Encoding an in-memory protobuf message does not fail; if it ever did, raft
            // treats the message as lost and retries.
            Err(e) => tracing::error!(to = m.to, error = %e, "encode raft message"),
        }
    }
}

#[cfg(test)]
mod tests;
