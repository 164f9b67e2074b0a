//! The process-test harness of cluster mode, shared by `tests/cluster.rs` and
//! `tests/cluster_query.rs`: N real `zeptod`s on 127.0.0.1 forming one cluster, and the
//! `/admin/cluster` readers the tests use. Include with
//! `#[path = "support/cluster.rs"] mod cluster_support;` next to `mod harness;`.
//!
//! Ports: `--peers` must name every node's gRPC address before any node starts, so free gRPC
//! ports are picked by binding port 0 and releasing it (a tiny window in which another
//! process could take the port; a start that fails on it shows up as a clear bind error).

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use crate::harness::{self, enc, Server};

pub(crate) const ADMIN_KEY: &str = "cluster-test-admin-key";
pub(crate) const SECRET: &str = "cluster-test-secret-0123456789";
pub(crate) const PARTITIONS: u32 = 8;
/// `--heartbeat-interval` of the tests: raft tick 20 ms, election timeout 200..400 ms,
/// suspect 600 ms, dead 2 s (zepto_cluster::timing).
pub(crate) const HEARTBEAT: &str = "200ms";
pub(crate) const MAX_ELECTION_TIMEOUT: Duration = Duration::from_millis(400);
pub(crate) const STARTUP: Duration = Duration::from_secs(60);

pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` distinct free ports: every listener is held until all are chosen, so the kernel cannot
/// hand the same port out twice (it did, once, in CI).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) peers: String,
    pub(crate) grpc: Vec<u16>,
    pub(crate) nodes: Vec<Option<Server>>,
}

impl Cluster {
    /// Start nodes 1..=n (secret file `secret` in the cluster dir) without waiting.
    pub(crate) fn start(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        let grpc = free_ports(usize::try_from(n).unwrap());
        let peers = grpc
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir,
            peers,
            grpc,
            nodes: Vec::new(),
        };
        for id in 1..=n {
            let s = c.spawn(id, &c.peers.clone(), "secret", &[]);
            c.nodes.push(Some(s));
        }
        c
    }

    /// Start nodes 1..=n with extra flags.
    pub(crate) fn start_with(n: u64, extra: &[&str]) -> Cluster {
        let mut c = Cluster::start(0);
        let grpc = free_ports(usize::try_from(n).unwrap());
        c.peers = grpc
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        c.grpc = grpc;
        for id in 1..=n {
            let s = c.spawn(id, &c.peers.clone(), "secret", extra);
            c.nodes.push(Some(s));
        }
        c
    }

    pub(crate) fn spawn(&self, id: u64, peers: &str, secret: &str, extra: &[&str]) -> Server {
        let data = self.dir.path().join(format!("node{id}"));
        let grpc = match extra.iter().position(|a| *a == "--grpc-addr") {
            Some(_) => String::new(),
            None => format!("127.0.0.1:{}", self.grpc[usize::try_from(id).unwrap() - 1]),
        };
        let secret = self.dir.path().join(secret);
        let id_s = id.to_string();
        let mut args: Vec<&str> = vec![
            "--node-id",
            &id_s,
            "--peers",
            peers,
            "--cluster-secret-file",
            secret.to_str().unwrap(),
            "--heartbeat-interval",
            HEARTBEAT,
            "--partitions",
            "8",
            "--admin-key",
            ADMIN_KEY,
        ];
        if !grpc.is_empty() {
            args.extend(["--grpc-addr", &grpc]);
        }
        args.extend(extra.iter().copied());
        let mut s = Server::start(&data, &args);
        s.auth = Some(ADMIN_KEY.to_string());
        s
    }

    pub(crate) fn node(&self, id: u64) -> &Server {
        self.nodes[usize::try_from(id).unwrap() - 1]
            .as_ref()
            .expect("node is running")
    }

    pub(crate) fn live(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[usize::try_from(*id).unwrap() - 1].is_some())
            .collect()
    }

    pub(crate) fn wait_ready(&self) {
        for id in self.live() {
            self.node(id).wait_ready();
        }
    }

    pub(crate) fn kill9(&mut self, id: u64) {
        let mut s = self.nodes[usize::try_from(id).unwrap() - 1].take().unwrap();
        s.kill9();
    }

    /// Start node `id` again from its data directory (with `extra` flags), not waiting.
    pub(crate) fn restart(&mut self, id: u64, extra: &[&str]) {
        let s = self.spawn(id, &self.peers.clone(), "secret", extra);
        self.nodes[usize::try_from(id).unwrap() - 1] = Some(s);
    }

    /// The leader every live node agrees on (same leader and term everywhere), or `None`.
    pub(crate) fn agreed_leader(&self) -> Option<(u64, u64)> {
        let mut seen = BTreeSet::new();
        for id in self.live() {
            let r = self.node(id).get("/admin/cluster");
            if r.status != 200 {
                return None;
            }
            let v = r.json();
            let leader = v["raft_leader"].as_u64()?;
            seen.insert((leader, v["raft_term"].as_u64()?));
        }
        (seen.len() == 1).then(|| seen.into_iter().next()).flatten()
    }
}

pub(crate) fn admin(s: &Server) -> serde_json::Value {
    let r = s.get("/admin/cluster");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

pub(crate) fn show_tables(s: &Server) -> Vec<String> {
    let r = s.get(&format!("/?query={}", enc("SHOW TABLES FORMAT CSV")));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
        .lines()
        .map(|l| l.trim_matches('"').to_string())
        .collect()
}

/// `INSERT INTO table FORMAT CSV` with `body`.
pub(crate) fn csv_insert(s: &Server, table: &str, body: &str) -> harness::Resp {
    s.req(
        "POST",
        &format!(
            "/?query={}",
            enc(&format!("INSERT INTO {table} FORMAT CSV"))
        ),
        body.as_bytes(),
    )
}

/// The node's own data per partition (`/admin/cluster` `local_partitions`).
pub(crate) fn local_partitions(s: &Server) -> Vec<serde_json::Value> {
    admin(s)["local_partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A partition key value of `table` that hashes to `partition`.
pub(crate) fn key_for(table: &str, partition: u32) -> String {
    (0..)
        .map(|i| format!("K{i}"))
        .find(|k| zepto_storage::partition_for(table, k, PARTITIONS) == partition)
        .unwrap()
}
