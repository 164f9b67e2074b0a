//! A real zeptod cluster on 127.0.0.1: `n` processes whose peer (gRPC) traffic all passes
//! through the harness's [`Network`], observed only through `/admin/cluster`, `/ready` and
//! `/health`, and a convergence wait after the faults healed.
//!
//! Settings: the `--heartbeat-interval` the run asks for (the process tests' 200 ms: suspect
//! 600 ms, dead 2 s, write lease 1 s; zeptod's default 1 s: 3 s, 10 s, 5 s), 8 partitions,
//! replication factor 2, replicated acks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::client::Http;
use crate::net::{Network, NodeId};
use crate::node::{Node, NodeSpec};
use crate::Error;
use zepto_cluster::{TimingOverrides, Timings};

/// The API key every request of a cluster run carries (zeptod needs one for /admin/cluster).
pub const ADMIN_KEY: &str = "zepto-chaos-admin-key";
const SECRET: &str = "zepto-chaos-cluster-secret-0123456789";
/// Partitions of the workload's table space.
pub const PARTITIONS: u32 = 8;
/// How long convergence waits at least for a caught-up replica to be back in the in-sync set
/// (5 x the dead time at a 200 ms heartbeat).
pub const IN_SYNC_GRACE: Duration = Duration::from_secs(10);

/// A node as the metadata says.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub state: String,
}

/// A partition as the metadata says.
#[derive(Debug, Clone, Deserialize)]
pub struct PartitionView {
    pub id: u32,
    pub primary: NodeId,
    pub replica: Option<NodeId>,
    pub epoch: u64,
    pub in_sync: Vec<NodeId>,
    #[serde(default)]
    pub writable: bool,
    /// Why the partition cannot take writes and failover cannot fix it (zeptod's words).
    #[serde(default)]
    pub unavailable: Option<serde_json::Value>,
}

/// A partition's data on the node that answers.
#[derive(Debug, Clone, Deserialize)]
pub struct LocalPartition {
    pub partition: u32,
    pub role: String,
    pub epoch: u64,
    pub next_seq: u64,
    pub rows: u64,
    #[serde(default)]
    pub replica_needs_full_copy: Option<String>,
}

/// `GET /admin/cluster`, the fields the harness uses.
#[derive(Debug, Clone, Deserialize)]
pub struct AdminView {
    pub node_id: NodeId,
    pub raft_leader: Option<NodeId>,
    pub raft_term: u64,
    pub is_leader: bool,
    pub metadata_version: u64,
    #[serde(default)]
    pub ready: bool,
    pub nodes: Vec<NodeView>,
    pub partitions: Vec<PartitionView>,
    #[serde(default)]
    pub local_partitions: Option<Vec<LocalPartition>>,
    /// The rebalancer's state (`plan`, `migrations`, ...), ADR 0012.
    #[serde(default)]
    pub rebalance: Option<serde_json::Value>,
}

impl AdminView {
    /// The committed state of node `id` ("ACTIVE", "SUSPECT", "DEAD", ...).
    pub fn node_state(&self, id: NodeId) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.state.as_str())
    }

    /// The partitions whose primary is `id`.
    pub fn primaries_of(&self, id: NodeId) -> Vec<u32> {
        self.partitions
            .iter()
            .filter(|p| p.primary == id)
            .map(|p| p.id)
            .collect()
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub net: Network,
    /// Node `id` is `nodes[id - 1]`.
    nodes: Vec<Node>,
    /// How to start another node: `(bin, dir, secret file, --peers)`.
    template: (std::path::PathBuf, std::path::PathBuf, String, String),
    /// What zeptod derives from the nodes' `--heartbeat-interval` (the same function).
    pub timings: Timings,
}

/// How convergence ended.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Convergence {
    /// Milliseconds the wait took, when everything converged.
    pub after_ms: Option<u64>,
    /// Partitions whose replica zeptod itself declared divergent ("needs a full copy", the
    /// copy is issue #6): `(partition, zeptod's message)`.
    pub diverged: Vec<(u32, String)>,
    /// Partitions whose replica holds exactly the primary's records but was not taken back
    /// into the in-sync set within [`IN_SYNC_GRACE`] (the partition then cannot fail over).
    pub not_in_sync: Vec<(u32, String)>,
    /// What was still not converged at the deadline.
    pub not_converged: Option<String>,
}

impl Cluster {
    /// Start nodes `1..=n` (each with its own extra environment) and wait until every node is
    /// ready and agrees on a leader.
    pub fn start(
        bin: &std::path::Path,
        dir: &std::path::Path,
        n: u32,
        heartbeat: Duration,
        env: &dyn Fn(NodeId) -> Vec<(String, String)>,
    ) -> Result<Cluster, Error> {
        Cluster::start_with_spares(bin, dir, n, 0, heartbeat, env)
    }

    /// [`Cluster::start`], with room in the network for `spares` more nodes (`n + 1..`) that
    /// [`Cluster::add_data_node`] starts later as data nodes outside `--peers`.
    pub fn start_with_spares(
        bin: &std::path::Path,
        dir: &std::path::Path,
        n: u32,
        spares: u32,
        heartbeat: Duration,
        env: &dyn Fn(NodeId) -> Vec<(String, String)>,
    ) -> Result<Cluster, Error> {
        let timings = Timings::derive(heartbeat, &TimingOverrides::default())
            .map_err(|e| Error::Harness(format!("--heartbeat-interval {heartbeat:?}: {e}")))?;
        let secret = dir.join("cluster-secret");
        std::fs::write(&secret, SECRET)
            .map_err(|e| Error::Io(format!("write {}", secret.display()), e))?;
        let net = Network::start(n + spares)?;
        let peers = net.peers_flag_among(n);
        let template = (
            bin.to_path_buf(),
            dir.to_path_buf(),
            path_str(&secret)?,
            peers,
        );
        let mut c = Cluster {
            net,
            nodes: Vec::new(),
            template,
            timings,
        };
        for id in 1..=n {
            let spec = c.spec(id, env(id))?;
            c.nodes.push(Node::new(spec));
        }
        for id in 1..=n {
            c.start_node(id)?;
        }
        c.wait_ready(&c.ids(), Duration::from_secs(90))?;
        c.poll(
            "every node to agree on a leader",
            Duration::from_secs(60),
            |c| c.agreed_leader(),
        )?;
        Ok(c)
    }

    /// How long a caught-up replica may take to be back in the in-sync set: [`IN_SYNC_GRACE`],
    /// or ten heartbeats when that is longer.
    pub fn in_sync_grace(&self) -> Duration {
        IN_SYNC_GRACE.max(self.timings.heartbeat_interval * 10)
    }

    /// Bound of every wait for the cluster to react: 30 s (generous: a loaded 2-core
    /// machine), or three dead times when that is longer.
    pub fn react(&self) -> Duration {
        Duration::from_secs(30).max(self.timings.dead_after * 3)
    }

    /// The flags of node `id`.
    fn spec(&self, id: NodeId, env: Vec<(String, String)>) -> Result<NodeSpec, Error> {
        let (bin, dir, secret, peers) = &self.template;
        let args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peers".into(),
            peers.clone(),
            "--advertise-addr".into(),
            self.net.front(id)?.to_string(),
            "--grpc-addr".into(),
            "127.0.0.1:0".into(),
            "--cluster-secret-file".into(),
            secret.clone(),
            "--heartbeat-interval".into(),
            format!("{}ms", self.timings.heartbeat_interval.as_millis()),
            "--partitions".into(),
            PARTITIONS.to_string(),
            "--admin-key".into(),
            ADMIN_KEY.into(),
            "--checkpoint-interval".into(),
            "2s".into(),
            // After a SIGTERM's handoff, keep serving (not ready) this long before the
            // listener closes, as the chart does (5 s there): clients that follow readiness
            // stop sending first, so none has its request cut by the exit.
            "--drain-delay".into(),
            "1s".into(),
            // Copies the map put elsewhere (after a failover, a replacement) are deleted 1 s
            // later (ADR 0016; default 5 min): the runs check no release loses a write.
            "--release-after".into(),
            "1s".into(),
        ];
        Ok(NodeSpec {
            id,
            bin: bin.clone(),
            data_dir: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
            args,
            env,
        })
    }

    /// Start the next node (id = current count + 1) as a data node outside `--peers`; it
    /// joins and receives partitions from the rebalancer (ADR 0012). Returns its id.
    pub fn add_data_node(&mut self) -> Result<NodeId, Error> {
        let id = NodeId::try_from(self.nodes.len() + 1)
            .map_err(|_| Error::Harness("too many nodes".into()))?;
        let spec = self.spec(id, Vec::new())?;
        self.nodes.push(Node::new(spec));
        self.start_node(id)?;
        Ok(id)
    }

    /// Node ids `1..=n`.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.spec.id).collect()
    }

    pub fn node(&self, id: NodeId) -> Result<&Node, Error> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| Error::Harness(format!("no node {id}")))
    }

    pub fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, Error> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get_mut(i))
            .ok_or_else(|| Error::Harness(format!("no node {id}")))
    }

    /// The HTTP URL of every node, in id order (index `id - 1`).
    pub fn urls(&self) -> Result<Vec<String>, Error> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// A client for node `id` with the admin key.
    pub fn http(&self, id: NodeId, timeout: Duration) -> Result<Http, Error> {
        Ok(Http::new(&self.node(id)?.url()?, timeout).with_key(Some(ADMIN_KEY)))
    }

    /// Start (or restart) node `id` and tell the network where it listens now.
    pub fn start_node(&mut self, id: NodeId) -> Result<(), Error> {
        let node = self.node_mut(id)?;
        node.start()?;
        let pid = node
            .pid()
            .ok_or_else(|| Error::Harness(format!("node {id} has no process")))?;
        let grpc = node
            .grpc()
            .ok_or_else(|| Error::Harness(format!("node {id} printed no gRPC address")))?;
        self.net.set_node(id, Some((pid, grpc)));
        Ok(())
    }

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: NodeId) -> Result<(), Error> {
        self.node_mut(id)?.kill()?;
        self.net.set_node(id, None);
        Ok(())
    }

    /// The admin view of node `id`.
    pub fn admin(&self, id: NodeId) -> Result<AdminView, Error> {
        let a = self
            .http(id, Duration::from_secs(5))?
            .get("/admin/cluster")
            .map_err(|e| Error::Harness(format!("GET /admin/cluster from node {id}: {e}")))?;
        if a.status != 200 {
            return Err(Error::Harness(format!(
                "GET /admin/cluster from node {id}: HTTP {}: {}",
                a.status,
                a.body.trim()
            )));
        }
        serde_json::from_str(&a.body)
            .map_err(|e| Error::Harness(format!("node {id}: unexpected /admin/cluster: {e}")))
    }

    /// The views of the nodes in `ids` that answer.
    pub fn views(&self, ids: &[NodeId]) -> BTreeMap<NodeId, AdminView> {
        ids.iter()
            .filter_map(|&id| self.admin(id).ok().map(|v| (id, v)))
            .collect()
    }

    /// The authoritative view among `ids`: the one of a node that leads, in the highest term;
    /// `None` when none of them leads.
    pub fn leader_view(&self, ids: &[NodeId]) -> Option<AdminView> {
        self.views(ids)
            .into_values()
            .filter(|v| v.is_leader)
            .max_by_key(|v| (v.raft_term, v.metadata_version))
    }

    /// The leader and term every node agrees on, if they all do.
    pub fn agreed_leader(&self) -> Option<(NodeId, u64)> {
        self.agreed_leader_among(&self.ids())
    }

    /// The leader and term all of `ids` agree on.
    pub fn agreed_leader_among(&self, ids: &[NodeId]) -> Option<(NodeId, u64)> {
        let views = self.views(ids);
        if views.len() != ids.len() {
            return None;
        }
        let seen: BTreeSet<(Option<NodeId>, u64)> = views
            .values()
            .map(|v| (v.raft_leader, v.raft_term))
            .collect();
        match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [(Some(l), t)] => Some((*l, *t)),
            _ => None,
        }
    }

    /// Wait until every node of `ids` answers `/ready` 200.
    pub fn wait_ready(&self, ids: &[NodeId], timeout: Duration) -> Result<(), Error> {
        for &id in ids {
            let http = self.http(id, Duration::from_secs(5))?;
            http.wait_for("/ready", timeout).ok_or_else(|| {
                Error::Harness(format!(
                    "node {id} not ready within {timeout:?} (log: {})",
                    self.nodes
                        .get(id as usize - 1)
                        .map(|n| n.spec.log.display().to_string())
                        .unwrap_or_default()
                ))
            })?;
        }
        Ok(())
    }

    /// Poll `f` every 20 ms until it gives a value, up to `timeout`.
    pub fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Cluster) -> Option<T>,
    ) -> Result<T, Error> {
        let t = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if t.elapsed() >= timeout {
                return Err(Error::Harness(format!(
                    "timed out after {timeout:?} waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval
        }
    }

    /// After the faults healed and the workload stopped: wait until every node is ready and
    /// agrees on the leader and the metadata, every partition has its primary and replica in
    /// sync, and each replica holds exactly its primary's records (`next_seq`, `rows` and
    /// `epoch` equal in the two nodes' `local_partitions`). A replica zeptod declares
    /// divergent (needs a full copy, issue #6) cannot converge: it is reported, not waited for.
    pub fn converge(&self, timeout: Duration) -> Convergence {
        let t = Instant::now();
        loop {
            let last = match self.convergence_step() {
                // A caught-up replica should be back in the in-sync set within a few
                // heartbeats; give zeptod `in_sync_grace()`, then report it.
                Ok((diverged, not_in_sync))
                    if not_in_sync.is_empty() || t.elapsed() >= self.in_sync_grace() =>
                {
                    return Convergence {
                        after_ms: Some(ms(t.elapsed())),
                        diverged,
                        not_in_sync,
                        not_converged: None,
                    }
                }
                Ok((_, not_in_sync)) => format!("{not_in_sync:?}"),
                Err(why) => why,
            };
            if t.elapsed() >= timeout {
                return Convergence {
                    after_ms: None,
                    diverged: Vec::new(),
                    not_in_sync: Vec::new(),
                    not_converged: Some(format!("after {timeout:?}: {last}")),
                };
            }
            std::thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }

    /// `Ok((diverged partitions, caught-up replicas left out of the in-sync set))` when the
    /// data converged, else what has not.
    #[allow(clippy::type_complexity)] // two lists of (partition, why)
    fn convergence_step(&self) -> Result<(Vec<(u32, String)>, Vec<(u32, String)>), String> {
        let ids = self.ids();
        let views = self.views(&ids);
        if views.len() != ids.len() {
            let missing: Vec<_> = ids.iter().filter(|i| !views.contains_key(i)).collect();
            return Err(format!("nodes {missing:?} do not answer /admin/cluster"));
        }
        if let Some((id, _)) = views.iter().find(|(_, v)| !v.ready) {
            return Err(format!("node {id} is not ready"));
        }
        let leaders: BTreeSet<_> = views
            .values()
            .map(|v| (v.raft_leader, v.raft_term, v.metadata_version))
            .collect();
        if leaders.len() != 1 {
            return Err(format!(
                "nodes disagree on (leader, term, metadata version): {leaders:?}"
            ));
        }
        let Some(view) = views.values().next() else {
            return Err("no view".into());
        };
        let local = |id: NodeId, p: u32| {
            views
                .get(&id)
                .and_then(|v| v.local_partitions.as_ref())
                .and_then(|l| l.iter().find(|lp| lp.partition == p))
        };
        let mut diverged = Vec::new();
        let mut not_in_sync = Vec::new();
        for p in &view.partitions {
            if let Some(why) =
                local(p.primary, p.id).and_then(|l| l.replica_needs_full_copy.clone())
            {
                diverged.push((p.id, why));
            }
        }
        for p in &view.partitions {
            if diverged.iter().any(|(d, _)| *d == p.id) {
                continue;
            }
            let Some(primary) = local(p.primary, p.id) else {
                return Err(format!("partition {}: no data on its primary", p.id));
            };
            let Some(replica_id) = p.replica else {
                return Err(format!("partition {} has no replica", p.id));
            };
            let mut want = vec![p.primary, replica_id];
            want.sort_unstable();
            let mut have = p.in_sync.clone();
            have.sort_unstable();
            let Some(replica) = local(replica_id, p.id) else {
                return Err(format!("partition {}: no data on its replica", p.id));
            };
            if (primary.next_seq, primary.rows, primary.epoch)
                != (replica.next_seq, replica.rows, replica.epoch)
            {
                return Err(format!(
                    "partition {}: primary {} at (next_seq {}, rows {}, epoch {}), replica {} at \
                     ({}, {}, {}), in-sync {have:?}",
                    p.id,
                    p.primary,
                    primary.next_seq,
                    primary.rows,
                    primary.epoch,
                    replica_id,
                    replica.next_seq,
                    replica.rows,
                    replica.epoch
                ));
            }
            if have != want {
                not_in_sync.push((
                    p.id,
                    format!(
                        "in-sync set {have:?} although replica {replica_id} holds the same records \
                         as primary {} (next_seq {}, rows {}, epoch {})",
                        p.primary, primary.next_seq, primary.rows, primary.epoch
                    ),
                ));
            }
        }
        // A node whose replica diverged, or was left out of the in-sync set, cannot finish
        // joining: it is reported through those lists, not waited for.
        let stuck: BTreeSet<NodeId> = view
            .partitions
            .iter()
            .filter(|p| {
                diverged
                    .iter()
                    .chain(not_in_sync.iter())
                    .any(|(d, _)| *d == p.id)
            })
            .filter_map(|p| p.replica)
            .collect();
        if let Some(n) = view
            .nodes
            .iter()
            .find(|n| n.state != "ACTIVE" && !(n.state == "JOINING" && stuck.contains(&n.id)))
        {
            return Err(format!("node {} is {}", n.id, n.state));
        }
        Ok((diverged, not_in_sync))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if n.is_running() {
                let _ = n.kill();
            }
        }
    }
}

fn path_str(p: &std::path::Path) -> Result<String, Error> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Harness(format!("path {} is not UTF-8", p.display())))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `n` keys per partition of `table` (`S000`, `S001`, ... in the order found), so every
/// partition gets writes and each write (one key) targets one partition.
pub fn keys_per_partition(table: &str, partitions: u32, n: usize) -> Vec<String> {
    let mut per: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut i = 0u32;
    while per.values().map(Vec::len).sum::<usize>() < n * partitions as usize && i < 100_000 {
        let key = format!("S{i:03}");
        let p = zepto_storage::partition_for(table, &key, partitions);
        let slot = per.entry(p).or_default();
        if slot.len() < n {
            slot.push(key);
        }
        i += 1;
    }
    // Interleave partitions so consecutive writes go to different partitions.
    let mut out = Vec::new();
    for k in 0..n {
        for keys in per.values() {
            if let Some(key) = keys.get(k) {
                out.push(key.clone());
            }
        }
    }
    out
}

/// The partition of a workload key.
pub fn partition_of(key: &str) -> u32 {
    zepto_storage::partition_for("chaos", key, PARTITIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cover_every_partition() {
        let keys = keys_per_partition("chaos", PARTITIONS, 2);
        assert_eq!(keys.len(), 2 * PARTITIONS as usize);
        let parts: BTreeSet<u32> = keys.iter().map(|k| partition_of(k)).collect();
        assert_eq!(parts.len(), PARTITIONS as usize);
    }
}
