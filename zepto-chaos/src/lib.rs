//! # zepto-chaos
//!
//! The fault-injection harness of zeptodb, in the spirit of Jepsen: real `zeptod` processes
//! (`node.rs`), a TCP proxy per directed link that can cut, half-cut, blackhole or slow
//! traffic (`proxy.rs`), a workload whose every operation is recorded as ok / failed /
//! unknown (`history.rs`), a checker that reads everything back from every node
//! (`checker.rs`), and the recovery guide's scenarios with their measurements
//! (`scenario.rs`), single-node or on a real 3-node cluster whose peer links all pass through
//! the harness (`cluster.rs`, `net.rs`). It reaches the server only through its public HTTP
//! API, signals, the environment and files; the one zepto crate it uses is `zepto-storage`,
//! for `partition_for` (which partition a key belongs to: the persisted placement hash), so
//! that each write targets one partition and each partition is read back from its primary.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod net;
pub mod node;
pub mod proxy;
pub mod scenario;

/// What can stop a run. A run that could not check something is a failure with the reason,
/// never a pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Harness(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The scenario cannot run against this build (reported, exit code 2).
    #[error("{0}")]
    Unsupported(String),
}
