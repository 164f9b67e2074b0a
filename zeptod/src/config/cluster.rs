//! Cluster-mode settings: the flags, their TOML keys, and their validation into one
//! [`ClusterConfig`]. Cluster mode is on exactly when `--peers` is given; without it every
//! flag here is ignored and zeptod is the single node it always was.
//!
//! Node ids are raft ids and must be nonzero. `--node-id auto` takes the trailing ordinal of
//! the hostname, as a Kubernetes StatefulSet names its pods, **plus one**: `zepto-0` is node
//! 1, `zepto-2` is node 3 (so the ids match `--peers 1=zepto-0...,2=zepto-1...`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sha2::{Digest, Sha256};
use zepto_cluster::{NodeId, TimingOverrides, Timings};

use super::parse_duration;
use crate::error::{Error, Result};

/// The smallest cluster secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 16;

/// Cluster flags (part of the command line).
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// This node's id in the cluster: a positive integer, or `auto` = the trailing ordinal of
    /// the hostname plus one (StatefulSet pod `zepto-0` is node 1). Cluster mode only.
    #[arg(long, env = "ZEPTO_NODE_ID")]
    node_id: Option<String>,

    /// Address of the peer gRPC service (cluster mode). Port 0 picks a free port; the bound
    /// address is printed as `zeptod listening on grpc=ADDR`.
    #[arg(long, env = "ZEPTO_GRPC_ADDR", default_value = "0.0.0.0:8124")]
    grpc_addr: SocketAddr,

    /// The host:port peers reach this node's gRPC service at. Default: this node's entry in
    /// --peers (and it must equal that entry when given).
    #[arg(long, env = "ZEPTO_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,

    /// The metadata raft voters, the same list on every node: `1=host:port,2=host:port,...`
    /// (DNS names allowed, re-resolved on reconnect). Turns cluster mode on.
    #[arg(long, env = "ZEPTO_PEERS")]
    peers: Option<String>,

    /// Copies of every partition (1 or 2) in cluster mode.
    #[arg(long, env = "ZEPTO_REPLICATION_FACTOR", default_value_t = 2)]
    replication_factor: usize,

    /// How often each node heartbeats the metadata leader. Every other cluster timing is
    /// derived from it (suspect 3x, dead 10x, raft tick 1/10, election 10 ticks).
    #[arg(long, env = "ZEPTO_HEARTBEAT_INTERVAL", default_value = "1s")]
    heartbeat_interval: String,

    /// Override: no heartbeat for this long makes a node SUSPECT (default 3 x heartbeat).
    #[arg(long, env = "ZEPTO_SUSPECT_AFTER")]
    suspect_after: Option<String>,

    /// Override: no heartbeat for this long makes a node DEAD (default 10 x heartbeat).
    #[arg(long, env = "ZEPTO_DEAD_AFTER")]
    dead_after: Option<String>,

    /// Override: a primary's write lease (default dead / 2; must leave
    /// lease + election timeout + heartbeat <= dead).
    #[arg(long, env = "ZEPTO_WRITE_LEASE")]
    write_lease: Option<String>,

    /// File holding the cluster secret (at least 16 bytes; surrounding whitespace is
    /// ignored). Every peer call carries its SHA-256; a peer with another secret is refused.
    #[arg(long, env = "ZEPTO_CLUSTER_SECRET_FILE", value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,

    /// Run cluster mode without a cluster secret (any process that reaches the gRPC port may
    /// join the metadata group). For tests and local experiments only.
    #[arg(long, env = "ZEPTO_INSECURE_CLUSTER")]
    insecure_cluster: bool,

    /// Accept a peer whose advertised address differs from this node's --peers entry for it
    /// (peers reached through a proxy or NAT, so each node dials a different address). A
    /// peer's identity is then checked only against the address it registered in the
    /// cluster metadata, not during the first election.
    #[arg(long, env = "ZEPTO_ACCEPT_PROXIED_PEERS")]
    accept_proxied_peers: bool,

    /// A node DEAD for this long (since its last heartbeat) is replaced as a replica: every
    /// partition it held a copy of gets a new replica on another node, copied from the
    /// primary, so the cluster returns to two copies by itself. `0s` never replaces.
    #[arg(long, env = "ZEPTO_REPLACE_AFTER", default_value = "60s")]
    replace_after: String,

    /// A partition whose copies the cluster map has put on other nodes, all of them in sync,
    /// for this long is deleted from this node (rows, files, log), freeing its memory and
    /// disk: what a rebalance, a drain or a re-replication left behind. `0s` keeps them.
    #[arg(long, env = "ZEPTO_RELEASE_AFTER", default_value = "5m")]
    release_after: String,

    /// Most bytes per second a whole-partition copy (a migration to a new node, a replaced
    /// node's copies) sends from this node; 0 = unlimited. Keeps migrations from starving
    /// ingest and queries of network and disk.
    #[arg(long, env = "ZEPTO_MIGRATION_BANDWIDTH", default_value_t = 0)]
    migration_bandwidth: u64,

    /// Free bytes the data directory's filesystem must keep: below it this node reports
    /// itself short of disk and the rebalancer moves no partition to it (the reason shows in
    /// /admin/cluster `rebalance.refused_targets`). 0 = never refuse.
    #[arg(long, env = "ZEPTO_MIN_FREE_DISK", default_value_t = 64 << 20)]
    min_free_disk: u64,
}

/// The same settings from the TOML file.
#[derive(Debug, Default)]
pub(crate) struct FileClusterConfig {
    pub(crate) node_id: Option<String>,
    pub(crate) grpc_addr: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) peers: Option<String>,
    pub(crate) replication_factor: Option<usize>,
    pub(crate) heartbeat_interval: Option<String>,
    pub(crate) suspect_after: Option<String>,
    pub(crate) dead_after: Option<String>,
    pub(crate) write_lease: Option<String>,
    pub(crate) cluster_secret_file: Option<PathBuf>,
    pub(crate) insecure_cluster: Option<bool>,
    pub(crate) accept_proxied_peers: Option<bool>,
    pub(crate) replace_after: Option<String>,
    pub(crate) release_after: Option<String>,
    pub(crate) migration_bandwidth: Option<u64>,
    pub(crate) min_free_disk: Option<u64>,
}

/// The validated cluster settings.
#[derive(Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) node_id: NodeId,
    pub(crate) grpc_addr: SocketAddr,
    /// How peers reach this node (its `--peers` entry).
    pub(crate) advertise_addr: String,
    /// The raft voters: id -> host:port. This node is a voter exactly when it is listed;
    /// otherwise it joins as a data node (raft learner, ADR 0012).
    pub(crate) peers: BTreeMap<NodeId, String>,
    pub(crate) replication_factor: usize,
    pub(crate) timings: Timings,
    /// Hex SHA-256 of the cluster secret; `None` with `--insecure-cluster`.
    pub(crate) token: Option<String>,
    /// `--accept-proxied-peers`.
    pub(crate) accept_proxied_peers: bool,
    /// `--replace-after` (`None` = never).
    pub(crate) replace_after: Option<Duration>,
    /// `--release-after` (`None` = never).
    pub(crate) release_after: Option<Duration>,
    /// `--migration-bandwidth` in bytes/s (`None` = unlimited).
    pub(crate) migration_bandwidth: Option<u64>,
    /// `--min-free-disk` in bytes (0 = never refuse).
    pub(crate) min_free_disk: u64,
}

impl ClusterConfig {
    /// Whether this node is a metadata voter (listed in `--peers`).
    pub(crate) fn is_voter(&self) -> bool {
        self.peers.contains_key(&self.node_id)
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("grpc_addr", &self.grpc_addr)
            .field("advertise_addr", &self.advertise_addr)
            .field("peers", &self.peers)
            .field("replication_factor", &self.replication_factor)
            .field("timings", &self.timings)
            .field("secure", &self.token.is_some())
            .finish()
    }
}

/// Merge flags and file (a flag from the command line or environment wins) and validate.
/// `None` when `--peers` is not set anywhere: single-node mode.
pub(crate) fn resolve(
    cli: ClusterArgs,
    file: FileClusterConfig,
    explicit: &dyn Fn(&str) -> bool,
) -> Result<Option<ClusterConfig>> {
    let bad = |m: String| Error::Config(m);
    let Some(peers) = cli.peers.or(file.peers) else {
        return Ok(None);
    };
    let peers = parse_peers(&peers)?;
    let node_id = cli
        .node_id
        .or(file.node_id)
        .ok_or_else(|| bad("cluster mode (--peers) needs --node-id (a number or `auto`)".into()))?;
    let node_id = parse_node_id(&node_id, hostname)?;
    // A node in --peers is a metadata voter; any other node joins as a data node (a raft
    // learner, ADR 0012): it reaches the voters through --peers and must say where the
    // others reach it.
    let advertise = cli.advertise_addr.or(file.advertise_addr);
    let advertise_addr = match (peers.get(&node_id), advertise) {
        (Some(own), Some(a)) if &a != own => {
            return Err(bad(format!(
                "--advertise-addr {a} differs from this node's --peers entry {node_id}={own}; \
                 peers identify a node by that entry"
            )))
        }
        (Some(_), Some(a)) => a,
        (Some(own), None) => own.clone(),
        (None, Some(a)) => a,
        (None, None) => {
            return Err(bad(format!(
                "node id {node_id} is not in --peers ({}): it joins the cluster as a data node \
                 and needs --advertise-addr (the host:port the other nodes reach its gRPC \
                 service at)",
                peers
                    .keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )))
        }
    };
    let grpc_addr = match file.grpc_addr {
        Some(a) if !explicit("grpc_addr") => a
            .parse()
            .map_err(|e| bad(format!("grpc_addr: '{a}' is not a socket address: {e}")))?,
        _ => cli.grpc_addr,
    };
    let replication_factor = match file.replication_factor {
        Some(r) if !explicit("replication_factor") => r,
        _ => cli.replication_factor,
    };
    if !(1..=2).contains(&replication_factor) {
        return Err(bad(format!(
            "replication_factor must be 1 or 2, not {replication_factor}"
        )));
    }
    let hb = match file.heartbeat_interval {
        Some(h) if !explicit("heartbeat_interval") => h,
        _ => cli.heartbeat_interval,
    };
    let hb = parse_duration("heartbeat_interval", &hb)?;
    let opt = |name: &str, v: Option<String>| -> Result<Option<Duration>> {
        v.map(|s| parse_duration(name, &s)).transpose()
    };
    let overrides = TimingOverrides {
        suspect_after: opt("suspect_after", cli.suspect_after.or(file.suspect_after))?,
        dead_after: opt("dead_after", cli.dead_after.or(file.dead_after))?,
        write_lease: opt("write_lease", cli.write_lease.or(file.write_lease))?,
        ..TimingOverrides::default()
    };
    let timings = Timings::derive(hb, &overrides).map_err(|e| bad(e.to_string()))?;
    let insecure = cli.insecure_cluster || file.insecure_cluster.unwrap_or(false);
    let token = match (
        cli.cluster_secret_file.or(file.cluster_secret_file),
        insecure,
    ) {
        (Some(_), true) => {
            return Err(bad(
                "give either --cluster-secret-file or --insecure-cluster, not both".into(),
            ))
        }
        (Some(path), false) => Some(read_secret(&path)?),
        (None, true) => None,
        (None, false) => {
            return Err(bad(
                "cluster mode needs --cluster-secret-file (peers authenticate every call with \
                 it); use --insecure-cluster only for local experiments"
                    .into(),
            ))
        }
    };
    let accept_proxied_peers =
        cli.accept_proxied_peers || file.accept_proxied_peers.unwrap_or(false);
    let replace_after = match file.replace_after {
        Some(r) if !explicit("replace_after") => r,
        _ => cli.replace_after,
    };
    let replace_after = parse_duration("replace_after", &replace_after)?;
    if !replace_after.is_zero() && replace_after < timings.dead_after {
        return Err(bad(format!(
            "--replace-after ({replace_after:?}) must be 0 (never) or at least the dead time \
             ({:?})",
            timings.dead_after
        )));
    }
    let replace_after = (!replace_after.is_zero()).then_some(replace_after);
    let release_after = match file.release_after {
        Some(r) if !explicit("release_after") => r,
        _ => cli.release_after,
    };
    let release_after = parse_duration("release_after", &release_after)?;
    let release_after = (!release_after.is_zero()).then_some(release_after);
    let migration_bandwidth = match file.migration_bandwidth {
        Some(b) if !explicit("migration_bandwidth") => b,
        _ => cli.migration_bandwidth,
    };
    let migration_bandwidth = (migration_bandwidth > 0).then_some(migration_bandwidth);
    let min_free_disk = match file.min_free_disk {
        Some(b) if !explicit("min_free_disk") => b,
        _ => cli.min_free_disk,
    };
    Ok(Some(ClusterConfig {
        node_id,
        grpc_addr,
        advertise_addr,
        peers,
        replication_factor,
        timings,
        token,
        accept_proxied_peers,
        replace_after,
        release_after,
        migration_bandwidth,
        min_free_disk,
    }))
}

/// `1=host:port,2=host:port`: ids positive and distinct, addresses `host:port`.
pub(crate) fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>> {
    let bad = |m: String| Error::Config(format!("--peers: {m}"));
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("'{item}' is not id=host:port")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("'{id}' is not a node id")))?;
        if id == 0 {
            return Err(bad("node id 0 is reserved (ids start at 1)".into()));
        }
        let addr = addr.trim();
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("'{addr}' has no port")))?;
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !host.is_empty() => {}
            _ => return Err(bad(format!("'{addr}' is not host:port"))),
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(bad(format!("node id {id} appears twice")));
        }
    }
    if out.is_empty() {
        return Err(bad("no peers given".into()));
    }
    let mut addrs: Vec<&String> = out.values().collect();
    addrs.sort();
    if addrs.windows(2).any(|w| w[0] == w[1]) {
        return Err(bad("two node ids share one address".into()));
    }
    Ok(out)
}

/// A positive integer, or `auto` (hostname ordinal + 1).
pub(crate) fn parse_node_id(s: &str, hostname: fn() -> Result<String>) -> Result<NodeId> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        let host = hostname()?;
        return node_id_from_hostname(&host);
    }
    match s.parse::<NodeId>() {
        Ok(0) => Err(Error::Config(
            "node id 0 is reserved (ids start at 1)".into(),
        )),
        Ok(id) => Ok(id),
        Err(_) => Err(Error::Config(format!(
            "--node-id: '{s}' is neither a positive integer nor `auto`"
        ))),
    }
}

/// `zepto-0` -> 1, `db-zepto-12.example` -> 13 (the first DNS label's trailing digits + 1).
pub(crate) fn node_id_from_hostname(host: &str) -> Result<NodeId> {
    let label = host.split('.').next().unwrap_or("");
    let digits: String = label
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let ordinal: NodeId = digits.parse().map_err(|_| {
        Error::Config(format!(
            "--node-id auto: hostname '{host}' does not end with an ordinal (like zepto-0)"
        ))
    })?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| Error::Config(format!("--node-id auto: ordinal of '{host}' too large")))
}

pub(crate) fn hostname() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(Error::io(
            "read the hostname for --node-id auto",
            std::io::Error::last_os_error(),
        ));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn read_secret(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Config(format!("read cluster secret file {}: {e}", path.display())))?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::Config(format!(
            "cluster secret in {} is shorter than {MIN_SECRET_BYTES} bytes",
            path.display()
        )));
    }
    Ok(token_of(secret))
}

/// What travels on the wire: hex SHA-256 of the secret (printable, fixed length).
pub(crate) fn token_of(secret: &[u8]) -> String {
    Sha256::digest(secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_refuse_bad_lists() {
        let p = parse_peers("1=a:8124, 2=b.svc:8124,3=10.0.0.3:9").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "b.svc:8124");
        for bad in [
            "",
            "1=a",
            "0=a:1",
            "x=a:1",
            "1=a:1,1=b:1",
            "1=a:0",
            "1=:5",
            "1=a:1,2=a:1",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn node_id_auto_is_ordinal_plus_one() {
        assert_eq!(node_id_from_hostname("zepto-0").unwrap(), 1);
        assert_eq!(node_id_from_hostname("zepto-12.zepto.ns.svc").unwrap(), 13);
        assert!(node_id_from_hostname("zepto").is_err());
        assert!(node_id_from_hostname("").is_err());
        assert_eq!(parse_node_id("auto", || Ok("db-2".into())).unwrap(), 3);
        assert_eq!(parse_node_id("7", || Ok(String::new())).unwrap(), 7);
        assert!(parse_node_id("0", || Ok(String::new())).is_err());
        assert!(parse_node_id("-1", || Ok(String::new())).is_err());
        assert!(parse_node_id("auto", || Ok("nohost".into())).is_err());
    }

    #[test]
    fn token_is_hex_sha256() {
        let t = token_of(b"0123456789abcdef");
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, token_of(b"0123456789abcdeF"));
    }
}
