//! The `Peer` gRPC service: authenticates every call, then hands it to the metadata driver.
//!
//! Authentication, in order (a refusal is logged with the caller's address):
//! 1. the token header must equal the hex SHA-256 of our cluster secret (constant-time
//!    compare) -> else `UNAUTHENTICATED`;
//! 2. the sender id must be a positive integer and a `--peers` voter or registered -> else
//!    `UNAUTHENTICATED` / `PERMISSION_DENIED`;
//! 3. the sender's advertised address must be the address it registered in the metadata
//!    (before it registered: the `--peers` entry for its id, unless `--accept-proxied-peers`),
//!    and the id must not be ours -> else `ALREADY_EXISTS` ("node id N is in use"): a second
//!    process started with an id that is taken is refused by everyone, and exits when it sees
//!    that answer.
//!
//! Only calls that pass reach `MetaNode::step` (raft-rs panics on some inconsistent messages,
//! so no unauthenticated byte may reach it), and a raft message must come `from` its sender.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};
use zepto_cluster::{Command, NodeId};

use super::pb::peer_server::{Peer, PeerServer};
use super::pb::{
    ForwardRequest, ForwardResponse, HeartbeatRequest, HeartbeatResponse, InstallChunk,
    InstallResponse, ProposeRequest, ProposeResponse, QueryChunk, QueryRequest, RaftAck,
    RaftMessages, ReplicateRequest, ReplicateResponse,
};
use super::{NODE_ADDR_HEADER, NODE_ID_HEADER, TOKEN_HEADER};
use crate::cluster::dataplane::DataPlane;
use crate::cluster::driver::{Event, ProposeError};
use crate::rpc::client::MAX_MESSAGE_BYTES;

/// Most raft messages accepted in one call.
const MAX_RAFT_BATCH: usize = 4096;
/// The same refusal (caller and reason) is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// See the module doc.
#[derive(Debug, Clone)]
pub(crate) struct PeerService {
    own_id: NodeId,
    peers: BTreeMap<NodeId, String>,
    token: Option<String>,
    events: mpsc::Sender<Event>,
    /// Bounds waiting for the driver (a heartbeat or a proposal's commit).
    timeout: Duration,
    /// When each (remote ip, claimed node, reason) refusal was last logged, and how many
    /// were not logged since.
    refusals: Arc<Mutex<HashMap<String, (Instant, u64)>>>,
    /// Writes and replication (absent in unit tests of the metadata calls).
    data: Option<Arc<DataPlane>>,
    /// `--accept-proxied-peers`.
    accept_proxied: bool,
}

impl PeerService {
    pub(crate) fn new(
        own_id: NodeId,
        peers: BTreeMap<NodeId, String>,
        token: Option<String>,
        events: mpsc::Sender<Event>,
        timeout: Duration,
    ) -> PeerService {
        PeerService {
            own_id,
            peers,
            token,
            events,
            timeout,
            refusals: Arc::new(Mutex::new(HashMap::new())),
            data: None,
            accept_proxied: false,
        }
    }

    /// `--accept-proxied-peers`: before a peer registered, do not require its advertised
    /// address to equal our --peers entry for it.
    pub(crate) fn accept_proxied_peers(mut self, yes: bool) -> PeerService {
        self.accept_proxied = yes;
        self
    }

    /// Serve `Forward` and `Replicate` with this data plane.
    pub(crate) fn with_data(mut self, data: Arc<DataPlane>) -> PeerService {
        self.data = Some(data);
        self
    }

    fn data(&self) -> Result<&Arc<DataPlane>, Status> {
        self.data
            .as_ref()
            .ok_or_else(|| Status::unavailable("this node serves no data"))
    }

    pub(crate) fn into_server(self) -> PeerServer<PeerService> {
        PeerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The authenticated sender of a call (see the module doc).
    fn authenticate<T>(&self, req: &Request<T>, call: &str) -> Result<NodeId, Status> {
        self.authenticate_as(req, call, None)
    }

    /// [`Self::authenticate`], except that a sender that is neither a `--peers` voter nor
    /// registered yet is accepted when `joining` is its own registration (`AddNode` with its
    /// id and the address it advertises): how a data node joins (ADR 0012). The cluster
    /// secret is checked all the same.
    fn authenticate_as<T>(
        &self,
        req: &Request<T>,
        call: &str,
        joining: Option<&Command>,
    ) -> Result<NodeId, Status> {
        let remote = req.remote_addr();
        let md = req.metadata();
        let header = |name: &str| md.get(name).and_then(|v| v.to_str().ok());
        let claimed = header(NODE_ID_HEADER).unwrap_or("");
        let refuse = |status: Status| {
            let remote = remote.map_or_else(|| "?".to_string(), |a: SocketAddr| a.to_string());
            let key = format!(
                "{}|{claimed}|{}",
                remote
                    .rsplit_once(':')
                    .map_or(remote.as_str(), |(ip, _)| ip),
                status.message()
            );
            let suppressed = {
                let mut seen = self.refusals.lock();
                if seen.len() > 1024 {
                    seen.clear();
                }
                let now = Instant::now();
                match seen.get_mut(&key) {
                    Some((at, n)) if now.duration_since(*at) < REFUSAL_LOG_EVERY => {
                        *n += 1;
                        None
                    }
                    Some((at, n)) => {
                        *at = now;
                        Some(std::mem::take(n))
                    }
                    None => {
                        seen.insert(key, (now, 0));
                        Some(0)
                    }
                }
            };
            if let Some(suppressed) = suppressed {
                tracing::warn!(
                    call,
                    %remote,
                    claimed_node = claimed,
                    reason = %status.message(),
                    suppressed,
                    "refused peer call"
                );
            }
            status
        };
        if let Some(expected) = &self.token {
            let got = header(TOKEN_HEADER).unwrap_or("");
            let equal: bool = got.as_bytes().ct_eq(expected.as_bytes()).into();
            if !equal {
                return Err(refuse(Status::unauthenticated(
                    "wrong or missing cluster secret",
                )));
            }
        }
        let id: NodeId = match claimed.parse() {
            Ok(id) if id > 0 => id,
            _ => {
                return Err(refuse(Status::unauthenticated(
                    "missing or invalid sender node id",
                )))
            }
        };
        // A node's identity is the address it registered in the metadata (its advertised
        // address); before it registered, membership in --peers is enough. The --peers entry
        // is only how *this* node reaches it, which may differ (a proxy, a NAT, a Service).
        let registered = self.data.as_ref().and_then(|d| {
            d.view
                .borrow()
                .state
                .nodes
                .get(&id)
                .map(|n| n.grpc_addr.clone())
        });
        let addr = header(NODE_ADDR_HEADER).unwrap_or("");
        let registers_itself = matches!(
            joining,
            Some(Command::AddNode { id: j, grpc_addr, .. }) if *j == id && grpc_addr == addr
        );
        if registered.is_none() && !self.peers.contains_key(&id) && !registers_itself {
            return Err(refuse(Status::permission_denied(format!(
                "node {id} is not a member of this cluster"
            ))));
        }
        if id == self.own_id {
            return Err(refuse(Status::already_exists(format!(
                "node id {id} is in use by {} (the receiver itself)",
                registered.as_deref().unwrap_or("this node")
            ))));
        }
        let expected = match (&registered, self.peers.get(&id)) {
            (Some(reg), _) => Some(reg.as_str()),
            (None, Some(entry)) if !self.accept_proxied => Some(entry.as_str()),
            (None, _) => None,
        };
        if let Some(known) = expected {
            if addr != known {
                return Err(refuse(Status::already_exists(format!(
                    "node id {id} is in use by {known}; this caller advertises {addr:?}"
                ))));
            }
        }
        Ok(id)
    }

    async fn to_driver(&self, ev: Event) -> Result<(), Status> {
        self.events
            .send(ev)
            .await
            .map_err(|_| Status::unavailable("the metadata driver is stopped"))
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(Status::unavailable("the metadata driver is stopped")),
            Err(_) => Err(Status::deadline_exceeded(
                "the metadata group did not answer in time",
            )),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type QueryStream = futures_util::stream::BoxStream<'static, Result<QueryChunk, Status>>;

    async fn query(
        &self,
        req: Request<QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let from = self.authenticate(&req, "Query")?;
        let data = self.data()?;
        let chunks = crate::cluster::query::serve(data, from, req.into_inner()).await?;
        Ok(Response::new(Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn raft(&self, req: Request<RaftMessages>) -> Result<Response<RaftAck>, Status> {
        let from = self.authenticate(&req, "Raft")?;
        let msgs = req.into_inner().messages;
        if msgs.len() > MAX_RAFT_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} raft messages in one call (at most {MAX_RAFT_BATCH})",
                msgs.len()
            )));
        }
        // Never wait for a busy driver here: raft resends what is dropped.
        self.events
            .try_send(Event::Raft { from, msgs })
            .map_err(|_| Status::resource_exhausted("the metadata driver is busy"))?;
        Ok(Response::new(RaftAck {}))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let from = self.authenticate(&req, "Heartbeat")?;
        let r = req.into_inner();
        let (reply, rx) = oneshot::channel();
        self.to_driver(Event::Heartbeat {
            from,
            log: Some((r.meta_last_index, r.meta_fresh)),
            reply,
        })
        .await?;
        let ack = self.wait(rx).await?;
        Ok(Response::new(HeartbeatResponse {
            acknowledged: ack.acknowledged,
            leader: ack.leader.unwrap_or(0),
            term: ack.term,
            version: ack.version,
        }))
    }

    async fn propose_meta(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        // Decoded before authenticating only to let a joining node register itself: nothing
        // reaches the driver unless the caller passes.
        let cmd = Command::decode(&req.get_ref().command);
        let from = self.authenticate_as(&req, "ProposeMeta", cmd.as_ref().ok())?;
        let cmd =
            cmd.map_err(|e| Status::invalid_argument(format!("bad metadata command: {e}")))?;
        tracing::debug!(from, ?cmd, "forwarded metadata proposal");
        let (reply, rx) = oneshot::channel();
        self.to_driver(Event::Propose { cmd, reply }).await?;
        match self.wait(rx).await? {
            Ok(o) => {
                let (kind, reason) = o
                    .rejected
                    .map(|(k, r)| (k.as_str().to_string(), r))
                    .unwrap_or_default();
                Ok(Response::new(ProposeResponse {
                    index: o.index,
                    version: o.version,
                    rejected: reason,
                    rejected_kind: kind,
                }))
            }
            Err(ProposeError::NotLeader(leader)) => Err(Status::failed_precondition(format!(
                "not the metadata leader; leader is {}",
                leader.map_or_else(|| "unknown".to_string(), |l| l.to_string())
            ))),
            Err(ProposeError::Unknown(m)) => Err(Status::aborted(m)),
        }
    }

    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let from = self.authenticate(&req, "Forward")?;
        let data = self.data()?;
        crate::cluster::route::serve(data, from, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn replicate(
        &self,
        req: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let from = self.authenticate(&req, "Replicate")?;
        let data = self.data()?;
        crate::cluster::replicate::serve(data, from, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn install_partition(
        &self,
        req: Request<tonic::Streaming<InstallChunk>>,
    ) -> Result<Response<InstallResponse>, Status> {
        let from = self.authenticate(&req, "InstallPartition")?;
        let data = self.data()?;
        crate::cluster::copy::serve(data, from, req.into_inner())
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;
    use tonic::Code;

    use super::*;

    fn service(token: Option<&str>) -> (PeerService, mpsc::Receiver<Event>) {
        let peers = [(1, "a:1"), (2, "b:2"), (3, "c:3")]
            .into_iter()
            .map(|(id, a)| (id, a.to_string()))
            .collect();
        let (tx, rx) = mpsc::channel(16);
        let svc = PeerService::new(
            1,
            peers,
            token.map(str::to_string),
            tx,
            Duration::from_secs(1),
        );
        (svc, rx)
    }

    fn req<T>(msg: T, token: Option<&str>, id: Option<&str>, addr: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        for (k, v) in [
            (TOKEN_HEADER, token),
            (NODE_ID_HEADER, id),
            (NODE_ADDR_HEADER, addr),
        ] {
            if let Some(v) = v {
                md.insert(k, MetadataValue::try_from(v).unwrap());
            }
        }
        r
    }

    #[test]
    fn every_call_is_authenticated() {
        let (svc, _rx) = service(Some("tok"));
        let ok = req((), Some("tok"), Some("2"), Some("b:2"));
        assert_eq!(svc.authenticate(&ok, "t").unwrap(), 2);
        for (r, code) in [
            (
                req((), Some("tik"), Some("2"), Some("b:2")),
                Code::Unauthenticated,
            ),
            (req((), None, Some("2"), Some("b:2")), Code::Unauthenticated),
            (
                req((), Some("tok"), None, Some("b:2")),
                Code::Unauthenticated,
            ),
            (
                req((), Some("tok"), Some("0"), Some("b:2")),
                Code::Unauthenticated,
            ),
            (
                req((), Some("tok"), Some("x"), Some("b:2")),
                Code::Unauthenticated,
            ),
            (
                req((), Some("tok"), Some("9"), Some("z:9")),
                Code::PermissionDenied,
            ),
            // Another process claiming node 2 (or the receiver's own id) is refused.
            (
                req((), Some("tok"), Some("2"), Some("evil:2")),
                Code::AlreadyExists,
            ),
            (req((), Some("tok"), Some("2"), None), Code::AlreadyExists),
            (
                req((), Some("tok"), Some("1"), Some("a:1")),
                Code::AlreadyExists,
            ),
        ] {
            assert_eq!(svc.authenticate(&r, "t").unwrap_err().code(), code);
        }
        // --insecure-cluster: no token, identity still checked.
        let (svc, _rx) = service(None);
        assert_eq!(
            svc.authenticate(&req((), None, Some("3"), Some("c:3")), "t")
                .unwrap(),
            3
        );
        assert_eq!(
            svc.authenticate(&req((), None, Some("3"), Some("b:2")), "t")
                .unwrap_err()
                .code(),
            Code::AlreadyExists
        );
    }

    #[test]
    fn proxied_peers_may_advertise_another_address_until_they_registered() {
        let (svc, _rx) = service(Some("tok"));
        let svc = svc.accept_proxied_peers(true);
        let r = req((), Some("tok"), Some("2"), Some("real-b:2"));
        assert_eq!(svc.authenticate(&r, "t").unwrap(), 2);
        // Our own id and unknown ids are still refused.
        let own = req((), Some("tok"), Some("1"), Some("x:1"));
        assert_eq!(
            svc.authenticate(&own, "t").unwrap_err().code(),
            Code::AlreadyExists
        );
        let unknown = req((), Some("tok"), Some("9"), Some("z:9"));
        assert_eq!(
            svc.authenticate(&unknown, "t").unwrap_err().code(),
            Code::PermissionDenied
        );
    }

    #[tokio::test]
    async fn calls_reach_the_driver_only_when_authenticated_and_well_formed() {
        let (svc, mut rx) = service(Some("tok"));
        let bad = req(
            RaftMessages {
                messages: vec![b"x".to_vec()],
            },
            Some("nope"),
            Some("2"),
            Some("b:2"),
        );
        assert_eq!(
            svc.raft(bad).await.unwrap_err().code(),
            Code::Unauthenticated
        );
        assert!(rx.try_recv().is_err(), "nothing reached the driver");
        let too_many = req(
            RaftMessages {
                messages: vec![Vec::new(); MAX_RAFT_BATCH + 1],
            },
            Some("tok"),
            Some("2"),
            Some("b:2"),
        );
        assert_eq!(
            svc.raft(too_many).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        let garbage = req(
            ProposeRequest {
                command: vec![9, 9, 9],
            },
            Some("tok"),
            Some("2"),
            Some("b:2"),
        );
        assert_eq!(
            svc.propose_meta(garbage).await.unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(rx.try_recv().is_err());
        // Authenticated raft bytes go to the driver tagged with the sender (which checks
        // them with `MetaNode::step_from`: malformed bytes are an error there, not a panic).
        let good = req(
            RaftMessages {
                messages: vec![b"not protobuf".to_vec()],
            },
            Some("tok"),
            Some("3"),
            Some("c:3"),
        );
        svc.raft(good).await.unwrap();
        match rx.try_recv().unwrap() {
            Event::Raft { from, msgs } => assert_eq!((from, msgs.len()), (3, 1)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_unknown_node_may_only_register_itself() {
        let (svc, _rx) = service(Some("tok"));
        let add = |id: u64, addr: &str| Command::AddNode {
            id,
            http_addr: "h:1".into(),
            grpc_addr: addr.into(),
        };
        let r = req((), Some("tok"), Some("9"), Some("z:9"));
        assert_eq!(
            svc.authenticate_as(&r, "t", Some(&add(9, "z:9"))).unwrap(),
            9
        );
        for cmd in [
            None,
            Some(add(8, "z:9")),
            Some(add(9, "other:9")),
            Some(Command::RemoveNode { id: 1 }),
        ] {
            assert_eq!(
                svc.authenticate_as(&r, "t", cmd.as_ref())
                    .unwrap_err()
                    .code(),
                tonic::Code::PermissionDenied,
                "{cmd:?}"
            );
        }
        // The secret is checked all the same.
        let bad = req((), Some("nope"), Some("9"), Some("z:9"));
        assert_eq!(
            svc.authenticate_as(&bad, "t", Some(&add(9, "z:9")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn query_is_authenticated_before_anything_runs() {
        let (svc, _rx) = service(Some("tok"));
        let q = |token| {
            req(
                QueryRequest {
                    sql: "SELECT 1".into(),
                    ..Default::default()
                },
                Some(token),
                Some("2"),
                Some("b:2"),
            )
        };
        let refused = svc.query(q("nope")).await.err().unwrap();
        assert_eq!(refused.code(), Code::Unauthenticated);
        // Authenticated, but this service has no data plane.
        let no_data = svc.query(q("tok")).await.err().unwrap();
        assert_eq!(no_data.code(), Code::Unavailable);
    }
}
