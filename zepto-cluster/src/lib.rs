//! `zepto-cluster`: the logic that turns N `zeptod` processes into one database.
//!
//! # What it owns
//! - [`timing`]: every cluster timing, derived in one place from the heartbeat interval.
//! - [`state`]: the replicated metadata (nodes, partition map with epochs and in-sync sets,
//!   table schemas, settings) and the commands that change it.
//! - [`raft`]: the metadata raft group (raft-rs) with its on-disk log under `data/meta/`.
//! - [`detector`], [`coordinator`], [`failover`], [`placement`]: the decisions the metadata
//!   leader makes (who is dead, which replica to promote, where partitions go).
//! - [`admin`]: the data behind `GET /admin/cluster`.
//! - [`routing`]: where a node sends a partition-scoped request, from its cached map.
//! - [`insync`]: the primary's in-sync rule (what it may acknowledge, when it must shrink or
//!   expand the in-sync set first).
//! - [`fencing`]: the checks a node makes at every partition-scoped entry point (epochs, the
//!   primary's write lease).
//!
//! Decisions are recorded in `docs/adr/0003-cluster-metadata.md`.
//!
//! # Why state machines
//! Consensus, failure detection, failover and fencing are the code a database gets wrong
//! under failures that are hard to reproduce. Here each is a state machine that takes time
//! ([`timing::MonoTime`]) and input as parameters and returns what to do (transitions,
//! commands, messages to send, entries to apply), the way raft-rs returns a `Ready`. The caller
//! (`zeptod`) does every socket, timer and thread. So every failure scenario is a unit test
//! driven by ticks, with no sleeps and no ports (see the harness in `raft/tests.rs`, where
//! three metadata nodes, their coordinators and heartbeats run over a network whose links can
//! be cut or made lossy).
//!
//! # What it must not depend on
//! No `zeptod`, no tokio, no tonic, no sockets, no system clock (`SystemTime::now`,
//! `Instant::now`) and no unseeded randomness. The only I/O in this crate is the metadata
//! raft storage's own files ([`raft::storage`]). The gRPC transport, replication streams and
//! routing live above it.

pub mod admin;
pub mod coordinator;
pub mod detector;
pub mod error;
pub mod failover;
pub mod fencing;
pub mod insync;
pub mod placement;
pub mod raft;
pub mod rebalance;
pub mod routing;
pub mod state;
pub mod timing;

pub use error::{Error, ErrorKind, Result};
pub use fencing::WriteLease;
pub use insync::{InSyncTracker, Mode as InSyncMode};
pub use state::{ClusterState, Command, NodeId, NodeState, PartitionId};
pub use timing::{MonoTime, TimingOverrides, Timings};
