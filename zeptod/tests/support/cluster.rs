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
use std::time::{Duration, Instant};

use crate::harness::{self, enc, wait_until, Server};

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
        // Copies the map puts elsewhere are released after 1 s (ADR 0016; default 5 min), so
        // every scenario also checks that releases never lose an acknowledged row.
        if !extra.contains(&"--release-after") {
            args.extend(["--release-after", "1s"]);
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

/// One write of the load tests: a single row with a unique id into one partition.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub(crate) id: u64,
    pub(crate) partition: u32,
    /// HTTP status, 0 when the request got no answer.
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) done: Instant,
}

/// Writers sending one-row CSV inserts through `targets` until `stop`; every outcome lands in
/// `ops`. Ids are unique; the row's key is `keys[id % keys.len()]`.
pub(crate) fn start_writers(
    targets: Vec<std::net::SocketAddr>,
    threads: usize,
    table: &'static str,
    keys: std::sync::Arc<Vec<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ops: std::sync::Arc<Mutex<Vec<Op>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique across every writer of the test process.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (0..threads)
        .map(|t| {
            let (targets, keys, stop, ops) =
                (targets.clone(), keys.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let auth = format!("Bearer {ADMIN_KEY}");
                let path = format!(
                    "/?query={}",
                    enc(&format!("INSERT INTO {table} FORMAT CSV"))
                );
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    let id = NEXT.fetch_add(1, Ordering::Relaxed);
                    let partition = u32::try_from(id % keys.len() as u64).unwrap();
                    let body = format!("{id},{},{id}\n", keys[partition as usize]);
                    let addr = targets[n % targets.len()];
                    n += 1;
                    let started = Instant::now();
                    let status = harness::request(
                        addr,
                        "POST",
                        &path,
                        &[("Authorization", &auth)],
                        body.as_bytes(),
                    )
                    .map_or(0, |r| r.status);
                    ops.lock().unwrap().push(Op {
                        id,
                        partition,
                        status,
                        started,
                        done: Instant::now(),
                    });
                }
            })
        })
        .collect()
}

/// The ids stored for `key`, read through `s`.
pub(crate) fn ids_of(s: &Server, table: &str, key: &str) -> Vec<u64> {
    let r = s.get(&format!(
        "/?query={}",
        enc(&format!(
            "SELECT id FROM {table} WHERE symbol = '{key}' FORMAT CSV"
        ))
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().lines().map(|l| l.parse().unwrap()).collect()
}

/// Check a load test's history against what the cluster stores: every acknowledged id
/// present exactly once, no refused (409) id present. Reads each partition through its
/// current primary. Returns (acked, unknown outcomes, unknown present).
pub(crate) fn check_history(
    c: &Cluster,
    table: &str,
    keys: &[String],
    ops: &[Op],
) -> (usize, usize, usize) {
    let v = admin(c.node(c.live()[0]));
    let mut acked = 0;
    let mut unknown = 0;
    let mut unknown_present = 0;
    for (p, key) in keys.iter().enumerate() {
        let primary = v["partitions"][p]["primary"].as_u64().unwrap();
        let stored = ids_of(c.node(primary), table, key);
        let mut seen = BTreeSet::new();
        for id in &stored {
            assert!(seen.insert(*id), "partition {p}: id {id} stored twice");
        }
        for op in ops.iter().filter(|o| o.partition as usize == p) {
            match op.status {
                200 => {
                    acked += 1;
                    assert!(
                        seen.contains(&op.id),
                        "partition {p}: acknowledged id {op:?} is missing"
                    );
                }
                409 => assert!(
                    !seen.contains(&op.id),
                    "partition {p}: id {} was refused (409) but is stored",
                    op.id
                ),
                _ => {
                    unknown += 1;
                    unknown_present += usize::from(seen.contains(&op.id));
                }
            }
        }
        let known: BTreeSet<u64> = ops
            .iter()
            .filter(|o| o.partition as usize == p)
            .map(|o| o.id)
            .collect();
        assert!(
            seen.is_subset(&known),
            "partition {p}: ids stored that no writer sent"
        );
    }
    (acked, unknown, unknown_present)
}

/// Create `table (ts TIMESTAMP, symbol SYMBOL, id BIGINT)` through node 1 and wait until
/// every live node has it.
pub(crate) fn create_id_table(c: &Cluster, table: &str) {
    c.node(1).sql_ok(&format!(
        "CREATE TABLE {table} (ts TIMESTAMP, symbol SYMBOL, id BIGINT)"
    ));
    for id in c.live() {
        wait_until("table everywhere", Duration::from_secs(10), || {
            show_tables(c.node(id))
                .contains(&table.to_string())
                .then_some(())
        });
    }
}
