//! Outbound peer calls: one [`PeerClient`] per peer, reused by every caller (raft, heartbeats,
//! forwarded proposals; replication later), and one raft message queue per peer.
//!
//! A client connects lazily. After a transport failure it drops its channel, so the next
//! call connects anew and resolves the peer's DNS name again (a StatefulSet pod that was
//! replaced comes back with a new IP). Raft messages go through a bounded queue per peer
//! drained by one task that sends them in batches; a full queue or a failed send is reported
//! to raft as "unreachable" (raft retries), never blocks the metadata driver.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use zepto_cluster::NodeId;

use super::pb::peer_client::PeerClient as GrpcClient;
use super::pb::{
    ForwardRequest, ForwardResponse, HeartbeatRequest, HeartbeatResponse, ProposeRequest,
    ProposeResponse, QueryChunk, QueryRequest, RaftMessages, ReplicateRequest, ReplicateResponse,
};
use super::pb::{InstallChunk, InstallResponse};
use super::{Identity, NODE_ADDR_HEADER, NODE_ID_HEADER, TOKEN_HEADER};
use crate::cluster::driver::Event;
use crate::error::Error;

/// Raft messages queued per peer before new ones are dropped (raft resends).
const RAFT_QUEUE: usize = 1024;
/// Most raft messages in one `Raft` call.
const RAFT_BATCH: usize = 128;
/// Largest message accepted or sent (a metadata snapshot must fit).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Log the same peer failure at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A reusable client for one peer.
#[derive(Debug)]
pub(crate) struct PeerClient {
    pub(crate) id: NodeId,
    pub(crate) addr: String,
    identity: Identity,
    timeout: Duration,
    channel: Mutex<Option<GrpcClient<Channel>>>,
    started: Instant,
    /// Milliseconds since `started` of the last failure log line.
    last_log_ms: AtomicU64,
    fatal: mpsc::Sender<Error>,
}

impl PeerClient {
    fn client(&self) -> Result<GrpcClient<Channel>, Status> {
        let mut guard = self.channel.lock();
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| Status::invalid_argument(format!("peer address {}: {e}", self.addr)))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(self.timeout);
        let c = GrpcClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        *guard = Some(c.clone());
        Ok(c)
    }

    fn request<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut req = Request::new(msg);
        req.set_timeout(timeout);
        let md = req.metadata_mut();
        if let Some(t) = &self.identity.token {
            if let Ok(v) = MetadataValue::try_from(t.as_str()) {
                md.insert(TOKEN_HEADER, v);
            }
        }
        md.insert(NODE_ID_HEADER, MetadataValue::from(self.identity.node_id));
        if let Ok(v) = MetadataValue::try_from(self.identity.advertise_addr.as_str()) {
            md.insert(NODE_ADDR_HEADER, v);
        }
        req
    }

    /// Look at a failed call: drop the channel after a transport failure (the next call
    /// reconnects and re-resolves), log auth refusals, and stop the process if the peer
    /// says our node id belongs to someone else.
    fn failed(&self, what: &str, status: &Status) {
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Internal | Code::DeadlineExceeded => {
                *self.channel.lock() = None;
                if self.should_log() {
                    tracing::debug!(peer = self.id, addr = %self.addr, call = what, error = %status.message(), "peer call failed");
                }
            }
            Code::Unauthenticated | Code::PermissionDenied if self.should_log() => {
                tracing::error!(peer = self.id, addr = %self.addr, call = what, error = %status.message(), "peer refused our call: check --cluster-secret-file and --peers");
            }
            Code::AlreadyExists => {
                let msg = format!(
                    "peer {} ({}) refused us: {}; another process already is node {}",
                    self.id,
                    self.addr,
                    status.message(),
                    self.identity.node_id
                );
                tracing::error!("{msg}");
                let _ = self.fatal.try_send(Error::Config(msg));
            }
            _ => {}
        }
    }

    fn should_log(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < every {
            return false;
        }
        self.last_log_ms.store(now.max(1), Ordering::Relaxed);
        true
    }

    pub(crate) async fn raft(&self, msgs: Vec<Vec<u8>>) -> Result<(), Status> {
        let mut c = self.client()?;
        let r = c
            .raft(self.request(RaftMessages { messages: msgs }, self.timeout))
            .await;
        r.map(|_| ()).inspect_err(|s| self.failed("Raft", s))
    }

    pub(crate) async fn heartbeat(
        &self,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Status> {
        let mut c = self.client()?;
        let r = c.heartbeat(self.request(req, self.timeout)).await;
        r.map(|r| r.into_inner())
            .inspect_err(|s| self.failed("Heartbeat", s))
    }

    pub(crate) async fn propose_meta(&self, command: Vec<u8>) -> Result<ProposeResponse, Status> {
        let mut c = self.client()?;
        // A commit needs a round trip and an fsync on a majority; give it more than a
        // heartbeat's budget so a slow commit is not retried (and applied) twice.
        let timeout = (self.timeout * 4).max(Duration::from_secs(5));
        let r = c
            .propose_meta(self.request(ProposeRequest { command }, timeout))
            .await;
        r.map(|r| r.into_inner())
            .inspect_err(|s| self.failed("ProposeMeta", s))
    }
}

impl PeerClient {
    /// Send rows to the primary of their partitions (see `cluster::route`).
    pub(crate) async fn forward(
        &self,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, Status> {
        let mut c = self.client()?;
        let r = c.forward(self.request(req, timeout)).await;
        r.map(|r| r.into_inner())
            .inspect_err(|s| self.failed("Forward", s))
    }

    /// Ship WAL records to a replica (see `cluster::replicate`). Bounded by a few call
    /// timeouts: the replica fsyncs before it answers.
    pub(crate) async fn replicate(
        &self,
        req: ReplicateRequest,
    ) -> Result<ReplicateResponse, Status> {
        let mut c = self.client()?;
        let r = c.replicate(self.request(req, self.timeout * 4)).await;
        r.map(|r| r.into_inner())
            .inspect_err(|s| self.failed("Replicate", s))
    }
}

impl PeerClient {
    /// Send a whole partition copy to the peer (see `cluster::copy`), bounded by `timeout`.
    pub(crate) async fn install_partition(
        &self,
        chunks: impl futures_util::Stream<Item = InstallChunk> + Send + 'static,
        timeout: Duration,
    ) -> Result<InstallResponse, Status> {
        let mut c = self.client()?;
        let r = c.install_partition(self.request(chunks, timeout)).await;
        r.map(|r| r.into_inner())
            .inspect_err(|s| self.failed("InstallPartition", s))
    }

    /// Run a query part on the peer (see `cluster::query`); the answer streams in chunks.
    pub(crate) async fn query(
        &self,
        req: QueryRequest,
        timeout: Duration,
    ) -> Result<tonic::Streaming<QueryChunk>, Status> {
        let mut c = self.client()?;
        let r = c.query(self.request(req, timeout)).await;
        r.map(|r| r.into_inner())
            .inspect_err(|s| self.failed("Query", s))
    }
}

/// Clients and raft queues for every peer: the `--peers` voters from the start, and every
/// node registered in the metadata as it appears ([`PeerClients::ensure`], ADR 0012).
#[derive(Debug)]
pub(crate) struct PeerClients {
    clients: parking_lot::RwLock<BTreeMap<NodeId, Arc<PeerClient>>>,
    raft_queues: parking_lot::RwLock<BTreeMap<NodeId, mpsc::Sender<Vec<u8>>>>,
    events: mpsc::Sender<Event>,
    identity: Identity,
    timeout: Duration,
    fatal: mpsc::Sender<Error>,
    /// The runtime the raft senders run on (`ensure` may be called from the driver thread).
    runtime: tokio::runtime::Handle,
}

impl PeerClients {
    /// Build a client per peer (except ourselves) and spawn the raft senders on the current
    /// tokio runtime. `timeout` bounds every call.
    pub(crate) fn start(
        identity: &Identity,
        peers: &BTreeMap<NodeId, String>,
        timeout: Duration,
        events: mpsc::Sender<Event>,
        fatal: mpsc::Sender<Error>,
    ) -> Arc<PeerClients> {
        let clients = Arc::new(PeerClients {
            clients: parking_lot::RwLock::new(BTreeMap::new()),
            raft_queues: parking_lot::RwLock::new(BTreeMap::new()),
            events,
            identity: identity.clone(),
            timeout,
            fatal,
            runtime: tokio::runtime::Handle::current(),
        });
        for (&id, addr) in peers {
            clients.ensure(id, addr);
        }
        clients
    }

    /// Make sure there is a client (and a raft queue) for node `id`, reached at `addr`.
    /// A node that already has one keeps it: a `--peers` entry is how this node reaches a
    /// voter (it may differ from the address the voter registered, behind a proxy). Returns
    /// whether a client was added.
    pub(crate) fn ensure(&self, id: NodeId, addr: &str) -> bool {
        if id == self.identity.node_id || self.clients.read().contains_key(&id) {
            return false;
        }
        let mut clients = self.clients.write();
        if clients.contains_key(&id) {
            return false;
        }
        let client = Arc::new(PeerClient {
            id,
            addr: addr.to_string(),
            identity: self.identity.clone(),
            timeout: self.timeout,
            channel: Mutex::new(None),
            started: Instant::now(),
            last_log_ms: AtomicU64::new(0),
            fatal: self.fatal.clone(),
        });
        let (tx, rx) = mpsc::channel(RAFT_QUEUE);
        self.runtime
            .spawn(raft_sender(client.clone(), rx, self.events.clone()));
        clients.insert(id, client);
        self.raft_queues.write().insert(id, tx);
        true
    }

    /// Every peer's id (not ours).
    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.clients.read().keys().copied().collect()
    }

    pub(crate) fn get(&self, id: NodeId) -> Option<Arc<PeerClient>> {
        self.clients.read().get(&id).cloned()
    }

    /// Queue a raft message for `to`; never blocks. A full queue means the peer is not
    /// keeping up (or is down): raft is told it is unreachable and will resend.
    pub(crate) fn send_raft(&self, to: NodeId, bytes: Vec<u8>) {
        let ok = self
            .raft_queues
            .read()
            .get(&to)
            .is_some_and(|q| q.try_send(bytes).is_ok());
        if !ok {
            let _ = self.events.try_send(Event::Unreachable(to));
        }
    }
}

async fn raft_sender(
    client: Arc<PeerClient>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<Event>,
) {
    let mut batch = Vec::with_capacity(RAFT_BATCH);
    while rx.recv_many(&mut batch, RAFT_BATCH).await > 0 {
        let msgs = std::mem::take(&mut batch);
        if client.raft(msgs).await.is_err() {
            let _ = events.try_send(Event::Unreachable(client.id));
            // Messages queued meanwhile were for a peer we cannot reach; raft resends.
            while rx.try_recv().is_ok() {}
        }
    }
}
