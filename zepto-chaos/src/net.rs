//! The cluster's peer network: one proxy in front of every node's gRPC port, with a state per
//! *directed link* (source node -> destination node).
//!
//! Why not one proxy address per directed link: zeptod identifies a peer by its `--peers`
//! entry. Every call carries the sender's advertised address, and the receiver refuses it
//! (`ALREADY_EXISTS`, fatal for the sender) unless it equals the receiver's `--peers` entry
//! for the sender; and `--advertise-addr` must equal the node's own entry. So all nodes must
//! name node N by one and the same address, which then is the only address anybody dials
//! to reach N. The harness therefore puts one listener in front of each node (that listener
//! is node N's `--peers` entry and advertised address everywhere) and tells the links apart
//! by who dialled: on accept it looks up which node process owns the connecting socket
//! (`/proc/net/tcp` gives the socket's inode, `/proc/PID/fd` its owner). A connection it
//! cannot attribute is closed (and counted) rather than let through unfiltered, so a cut link
//! can never leak.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::proxy::{serve, LinkMode, State};
use crate::Error;

/// How often a connection's owner is looked up (20 ms apart) before it is closed.
const ATTRIBUTION_TRIES: usize = 25;

/// A node id as in `--peers` (1-based).
pub type NodeId = u32;

#[derive(Debug, Default)]
struct Targets {
    /// Where each node's gRPC really listens (None while it is down).
    grpc: BTreeMap<NodeId, SocketAddr>,
    /// The pid of each running node, to attribute connections.
    pids: BTreeMap<NodeId, u32>,
}

/// The proxies of a cluster and the state of every directed link.
#[derive(Debug)]
pub struct Network {
    runtime: tokio::runtime::Runtime,
    /// The address peers use for each node (its `--peers` entry).
    fronts: BTreeMap<NodeId, SocketAddr>,
    links: BTreeMap<(NodeId, NodeId), watch::Sender<State>>,
    targets: Arc<Mutex<Targets>>,
    bytes: Arc<AtomicU64>,
    unattributed: Arc<AtomicU64>,
}

impl Network {
    /// Listen in front of nodes `1..=n` on free loopback ports.
    pub fn start(n: u32) -> Result<Network, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Io("start the proxy runtime".into(), e))?;
        let targets = Arc::new(Mutex::new(Targets::default()));
        let bytes = Arc::new(AtomicU64::new(0));
        let unattributed = Arc::new(AtomicU64::new(0));
        let mut links = BTreeMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|&to| to != from) {
                links.insert((from, to), watch::channel(State::PASS).0);
            }
        }
        let mut fronts = BTreeMap::new();
        for to in 1..=n {
            let listener = runtime
                .block_on(TcpListener::bind("127.0.0.1:0"))
                .map_err(|e| Error::Io("bind a proxy listener".into(), e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::Io("read the proxy address".into(), e))?;
            fronts.insert(to, addr);
            let incoming: BTreeMap<NodeId, watch::Receiver<State>> = links
                .iter()
                .filter(|((_, t), _)| *t == to)
                .map(|((f, _), tx)| (*f, tx.subscribe()))
                .collect();
            let (targets, bytes, unattributed) =
                (targets.clone(), bytes.clone(), unattributed.clone());
            runtime.spawn(async move {
                loop {
                    let Ok((conn, from_addr)) = listener.accept().await else {
                        continue;
                    };
                    let (incoming, targets, bytes, unattributed) = (
                        incoming.clone(),
                        targets.clone(),
                        bytes.clone(),
                        unattributed.clone(),
                    );
                    tokio::spawn(async move {
                        accepted(
                            conn,
                            from_addr,
                            addr,
                            to,
                            incoming,
                            targets,
                            bytes,
                            unattributed,
                        )
                        .await;
                    });
                }
            });
        }
        Ok(Network {
            runtime,
            fronts,
            links,
            targets,
            bytes,
            unattributed,
        })
    }

    /// `1=127.0.0.1:P1,2=...`: the `--peers` value of every node.
    pub fn peers_flag(&self) -> String {
        self.peers_flag_among(NodeId::MAX)
    }

    /// The `--peers` value naming only nodes `1..=voters` (the others join as data nodes).
    pub fn peers_flag_among(&self, voters: NodeId) -> String {
        self.fronts
            .iter()
            .filter(|(id, _)| **id <= voters)
            .map(|(id, a)| format!("{id}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`'s address as peers know it (its `--advertise-addr`).
    pub fn front(&self, id: NodeId) -> Result<SocketAddr, Error> {
        self.fronts
            .get(&id)
            .copied()
            .ok_or_else(|| Error::Harness(format!("no node {id} in the network")))
    }

    /// Node `id` now runs as `pid` with its gRPC service on `grpc`; `None`: it is down.
    pub fn set_node(&self, id: NodeId, running: Option<(u32, SocketAddr)>) {
        if let Ok(mut t) = self.targets.lock() {
            match running {
                Some((pid, grpc)) => {
                    t.pids.insert(id, pid);
                    t.grpc.insert(id, grpc);
                }
                None => {
                    t.pids.remove(&id);
                    t.grpc.remove(&id);
                }
            }
        }
    }

    fn link(&self, from: NodeId, to: NodeId) -> Result<&watch::Sender<State>, Error> {
        self.links
            .get(&(from, to))
            .ok_or_else(|| Error::Harness(format!("no link {from}->{to}")))
    }

    /// Set the mode of the directed link `from -> to` (the calls `from` makes to `to`).
    pub fn set_mode(&self, from: NodeId, to: NodeId, mode: LinkMode) -> Result<(), Error> {
        self.link(from, to)?.send_modify(|s| s.mode = mode);
        Ok(())
    }

    /// Add latency to every chunk on `from -> to` (both directions of its connections).
    pub fn set_delay(&self, from: NodeId, to: NodeId, delay: Duration) -> Result<(), Error> {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.link(from, to)?.send_modify(|s| s.delay_ms = ms);
        Ok(())
    }

    /// The mode of `from -> to`.
    pub fn mode(&self, from: NodeId, to: NodeId) -> Result<LinkMode, Error> {
        Ok(self.link(from, to)?.borrow().mode)
    }

    /// Cut `node` off from every other node, both ways.
    pub fn isolate(&self, node: NodeId) -> Result<(), Error> {
        for &(from, to) in self.links.keys() {
            if from == node || to == node {
                self.set_mode(from, to, LinkMode::Cut)?;
            }
        }
        Ok(())
    }

    /// Every link back to a clean pass-through.
    pub fn heal(&self) {
        for tx in self.links.values() {
            tx.send_modify(|s| *s = State::PASS);
        }
    }

    /// Bytes forwarded over all links so far.
    pub fn bytes_forwarded(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Connections closed because no node process owned their source socket.
    pub fn unattributed(&self) -> u64 {
        self.unattributed.load(Ordering::Relaxed)
    }

    /// Stop every proxy (open connections are dropped).
    pub fn shutdown(self) {
        self.runtime.shutdown_background();
    }
}

#[allow(clippy::too_many_arguments)] // one accepted connection and everything it needs
async fn accepted(
    conn: TcpStream,
    from_addr: SocketAddr,
    front: SocketAddr,
    to: NodeId,
    incoming: BTreeMap<NodeId, watch::Receiver<State>>,
    targets: Arc<Mutex<Targets>>,
    bytes: Arc<AtomicU64>,
    unattributed: Arc<AtomicU64>,
) {
    // A node that was just started may dial before the harness registered its pid: retry
    // the lookup for a short while before giving up on the connection.
    let mut owner = None;
    for _ in 0..ATTRIBUTION_TRIES {
        let Ok(pids) = targets.lock().map(|t| t.pids.clone()) else {
            return;
        };
        owner =
            tokio::task::spawn_blocking(move || owner_of(from_addr, front, &pids).ok().flatten())
                .await
                .ok()
                .flatten();
        if owner.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // retry interval
    }
    let Some(state) = owner.and_then(|from| incoming.get(&from).cloned()) else {
        unattributed.fetch_add(1, Ordering::Relaxed);
        return; // dropped: closed
    };
    let Some(target) = targets.lock().ok().and_then(|t| t.grpc.get(&to).copied()) else {
        return; // the node is down: like a refused connection
    };
    let _ = serve(conn, target, state, bytes).await;
}

/// `/proc/net/tcp` address form of an IPv4 socket address (`0100007F:1F90`).
fn proc_addr(a: SocketAddr) -> Option<String> {
    match a {
        SocketAddr::V4(v4) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

/// The socket inode of the TCP connection from `local` to `remote` (as the dialler sees it).
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Result<Option<u64>, Error> {
    let (Some(l), Some(r)) = (proc_addr(local), proc_addr(remote)) else {
        return Ok(None);
    };
    let table = std::fs::read_to_string("/proc/net/tcp")
        .map_err(|e| Error::Io("read /proc/net/tcp".into(), e))?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && f[1] == l && f[2] == r {
            return Ok(f[9].parse().ok());
        }
    }
    Ok(None)
}

/// Which node (of `pids`) owns the socket that dialled `front` from `from`.
fn owner_of(
    from: SocketAddr,
    front: SocketAddr,
    pids: &BTreeMap<NodeId, u32>,
) -> Result<Option<NodeId>, Error> {
    let Some(inode) = socket_inode(from, front)? else {
        return Ok(None);
    };
    let want = format!("socket:[{inode}]");
    for (&id, pid) in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                return Ok(Some(id));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};

    /// An echo server on a thread; its address.
    fn echo() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Connect to `addr`, send `ping`, and say whether it came back within 1 s.
    fn echoes(addr: SocketAddr) -> bool {
        let Ok(mut c) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 4];
        c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping"
    }

    #[test]
    fn a_directed_link_is_cut_and_healed_for_its_source_only() {
        let net = Network::start(3).unwrap();
        // This test process plays node 1; node 2's "gRPC" is an echo server.
        net.set_node(1, Some((std::process::id(), echo())));
        net.set_node(2, Some((1, echo()))); // pid 1 is never this process
        let to2 = net.front(2).unwrap();
        assert!(echoes(to2), "1->2 passes");
        net.set_mode(1, 2, LinkMode::Cut).unwrap();
        assert!(!echoes(to2), "1->2 cut");
        net.set_mode(1, 2, LinkMode::Pass).unwrap();
        net.set_mode(3, 2, LinkMode::Cut).unwrap();
        assert!(echoes(to2), "cutting 3->2 leaves 1->2 alone");
        net.isolate(1).unwrap();
        assert_eq!(net.mode(2, 1).unwrap(), LinkMode::Cut);
        assert!(!echoes(to2), "an isolated node reaches nobody");
        net.heal();
        assert!(echoes(to2), "healed");
        // A dialler that is no node is refused (closed), and counted.
        net.set_node(1, None);
        assert!(!echoes(to2));
        let t = std::time::Instant::now();
        while net.unattributed() == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
        assert!(net.unattributed() >= 1);
        assert!(net.bytes_forwarded() > 0);
        net.shutdown();
    }

    #[test]
    fn proc_addr_matches_the_kernel_format() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(proc_addr(a).unwrap(), "0100007F:1F90");
    }

    #[test]
    fn a_connection_is_attributed_to_the_process_that_dialled_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let front = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(front).unwrap();
        let (_s, from) = l.accept().unwrap();
        let me = std::process::id();
        let pids: BTreeMap<NodeId, u32> = [(7, me)].into();
        assert_eq!(owner_of(from, front, &pids).unwrap(), Some(7));
        let others: BTreeMap<NodeId, u32> = [(7, 1)].into();
        assert_eq!(owner_of(from, front, &others).unwrap(), None);
        drop(c);
    }
}
