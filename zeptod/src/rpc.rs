//! The peer transport (cluster mode): the `Peer` gRPC service that zeptod processes of one
//! cluster call on each other, generated at build time from `proto/peer.proto`.
//!
//! - [`server`]: the service; authenticates every call (cluster secret token, sender node id
//!   and address) before anything reaches the metadata group.
//! - [`client`]: one reusable client per peer (lazy connect, reconnect with a fresh DNS
//!   lookup after a transport failure) and the per-peer raft message queues.
//!
//! Auth metadata on every call: [`TOKEN_HEADER`] (hex SHA-256 of the cluster secret; absent
//! with `--insecure-cluster`), [`NODE_ID_HEADER`] and [`NODE_ADDR_HEADER`] (the sender's id
//! and its `--peers` address, which together identify it). Decisions: ADR 0004.

pub(crate) mod client;
pub(crate) mod server;

/// Generated code (tonic + prost); lints of generated code are not ours.
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::unwrap_used
)]
pub(crate) mod pb {
    tonic::include_proto!("zepto.peer.v1");
}

/// Hex SHA-256 of the cluster secret.
pub(crate) const TOKEN_HEADER: &str = "x-zepto-token";
/// The sender's node id, decimal.
pub(crate) const NODE_ID_HEADER: &str = "x-zepto-node-id";
/// The sender's advertised gRPC address (its `--peers` entry).
pub(crate) const NODE_ADDR_HEADER: &str = "x-zepto-node-addr";

/// Who this process is on the wire.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) node_id: zepto_cluster::NodeId,
    pub(crate) advertise_addr: String,
    pub(crate) token: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("advertise_addr", &self.advertise_addr)
            .finish_non_exhaustive()
    }
}
