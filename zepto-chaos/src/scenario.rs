//! Scenarios from the recovery guide, each a schedule of faults against real processes while
//! the workload runs, followed by healing, the checker, and measurements.
//!
//! On a 3-node cluster (`nodes = 3`, the default; see [`cluster`]): `node-crash`,
//! `coordinator-crash`, `drain` (SIGTERM: the node hands its primaries to their replicas
//! before it exits), `split-brain`, `storage-failure`, `spot-reclaim`. On one node
//! (`nodes = 1`): `node-crash` (SIGKILL during ingest, restart), `storage-failure` (fdatasync
//! starts failing: the node must stop acknowledging and fail `/health`), `spot-reclaim`
//! (SIGTERM, SIGKILL after the grace period). `random` picks one of the cluster scenarios (and
//! a split-brain mode) from the seed, so `--soak` is a seeded random schedule of all of them.
//! `scale-out` (3 nodes) adds two data nodes outside the raft voters under the workload and
//! waits until the rebalancer balanced the placement over five (ADR 0012). A scenario that
//! cannot run with the asked node count is refused; a run never reports success on
//! something it could not check.

mod cluster;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::checker::{check, Verdict};
use crate::client::Http;
use crate::history::{default_keys, Targets, Workload, TABLE_DDL};
use crate::node::{Node, NodeSpec};
use crate::Error;

/// The scenarios, by the guide's names.
pub const SCENARIOS: &[&str] = &[
    "node-crash",
    "coordinator-crash",
    "drain",
    "split-brain",
    "storage-failure",
    "scale-out",
    "spot-reclaim",
    "random",
];

/// What `random` picks from: every scenario a 3-node cluster runs.
const RANDOM_POOL: &[&str] = &[
    "node-crash",
    "coordinator-crash",
    "drain",
    "split-brain",
    "storage-failure",
    "spot-reclaim",
];

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: String,
    pub seed: u64,
    pub bin: PathBuf,
    /// Where node data and logs go; kept when the run fails.
    pub dir: PathBuf,
    /// How long the workload runs before the fault (and after healing).
    pub phase: Duration,
    pub writers: usize,
    pub readers: usize,
    /// 1 (single node) or 3 (cluster).
    pub nodes: u32,
    /// How split-brain cuts the victim off.
    pub partition: PartitionMode,
    /// Cluster runs: zeptod's `--heartbeat-interval` (suspect, dead and lease times derive
    /// from it as in zeptod: 3x, 10x, 5x).
    pub heartbeat: Duration,
}

/// How split-brain separates the victim from the majority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum PartitionMode {
    /// Every link to and from the victim closed and refused.
    #[default]
    Cut,
    /// Every link to and from the victim accepts and swallows bytes (calls time out).
    Blackhole,
    /// Only the victim's own calls to the others are cut; the others still reach it.
    OutgoingOnly,
}

impl PartitionMode {
    /// `cut`, `blackhole`, `outgoing`.
    pub fn parse(s: &str) -> Option<PartitionMode> {
        match s {
            "cut" => Some(PartitionMode::Cut),
            "blackhole" => Some(PartitionMode::Blackhole),
            "outgoing" => Some(PartitionMode::OutgoingOnly),
            _ => None,
        }
    }
}

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// Milliseconds from the fault to its detection (health turning bad; for spot-reclaim:
    /// until the process exited), when measured.
    pub detection_ms: Option<u64>,
    /// Milliseconds from the fault to the first acknowledged write after it.
    pub writes_back_ms: Option<u64>,
    /// Milliseconds from the fault until queries succeed again.
    pub queries_back_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub verdict: Verdict,
    pub events: Vec<(u64, String)>,
    pub logs: PathBuf,
    /// 1 or 3.
    pub nodes: u32,
    /// Cluster: the node the fault hit.
    pub victim: Option<u32>,
    /// Cluster: the raft leader when the victim was chosen.
    pub leader: Option<u32>,
    /// Cluster: milliseconds from the fault until every query succeeds again (the first
    /// successful query after the last failed one).
    pub queries_all_back_ms: Option<u64>,
    /// Cluster: the partitions whose primary the victim was.
    pub affected_partitions: Vec<u32>,
    /// Cluster: milliseconds from the fault until the metadata (majority's leader) names a
    /// new primary for every affected partition.
    pub failover_ms: Option<u64>,
    /// Cluster split-brain: milliseconds from the cut until the cut-off primary first refused
    /// a write (409, lease expired).
    pub lease_refusal_ms: Option<u64>,
    /// Cluster: how long convergence took after the workload stopped.
    pub converged_ms: Option<u64>,
    /// Acknowledged rows missing at the end.
    pub lost_rows: usize,
    /// Cluster: peer connections the proxies could not attribute to a node process (closed).
    pub unattributed_connections: u64,
    /// Cluster: the `--heartbeat-interval` the nodes ran with, in milliseconds.
    pub heartbeat_ms: Option<u64>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }
}

fn single_node(cfg: &RunConfig, env: Vec<(String, String)>) -> Node {
    Node::new(NodeSpec {
        id: 0,
        bin: cfg.bin.clone(),
        data_dir: cfg.dir.join("node-0"),
        log: cfg.dir.join("node-0.log"),
        args: vec!["--checkpoint-interval".into(), "2s".into()],
        env,
    })
}

fn ready(node: &Node, timeout: Duration) -> Result<Duration, Error> {
    let http = Http::new(&node.url()?, Duration::from_secs(5));
    http.wait_for("/ready", timeout).ok_or_else(|| {
        Error::Harness(format!(
            "node {} not ready within {timeout:?} (log: {})",
            node.spec.id,
            node.spec.log.display()
        ))
    })
}

fn create_table(http: &Http) -> Result<(), Error> {
    let a = http
        .post("/", TABLE_DDL.as_bytes())
        .map_err(|e| Error::Harness(format!("create table: {e}")))?;
    if a.status != 200 {
        return Err(Error::Harness(format!(
            "create table: HTTP {}: {}",
            a.status, a.body
        )));
    }
    Ok(())
}

/// Start a single node, wait until it is ready, create the workload's table and start the
/// workload against it.
fn boot(cfg: &RunConfig, node: &mut Node) -> Result<Workload, Error> {
    node.start()?;
    ready(node, Duration::from_secs(60))?;
    create_table(&Http::new(&node.url()?, Duration::from_secs(30)))?;
    let targets = Targets {
        urls: Arc::new(Mutex::new(vec![node.url()?])),
        keys: default_keys(20),
        api_key: None,
        read_from: None,
        ready: None,
        writers_follow_ready: false,
    };
    Ok(Workload::start(targets, cfg.writers, cfg.readers, 0, 50))
}

/// Wait until the workload has `n` more acknowledged writes than now (the load is really
/// running), up to `timeout`.
fn wait_for_acks(w: &Workload, n: usize, timeout: Duration) -> Result<(), Error> {
    let target = w.acked_writes() + n;
    let t = Instant::now();
    while w.acked_writes() < target {
        if t.elapsed() > timeout {
            return Err(Error::Harness(format!(
                "the workload did not get {n} writes acknowledged within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    Ok(())
}

/// Run one scenario with one seed.
pub fn run(cfg: &RunConfig) -> Result<Report, Error> {
    let s = cfg.scenario.as_str();
    if !SCENARIOS.contains(&s) {
        return Err(Error::Harness(format!(
            "unknown scenario '{s}' (known: {})",
            SCENARIOS.join(", ")
        )));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    if s == "random" {
        // A seeded random schedule: each seed picks one fault (and, for split-brain, how
        // the victim is cut off); `--soak` walks the seeds for as long as asked.
        if cfg.nodes != 3 {
            return Err(Error::Unsupported(format!(
                "scenario 'random' runs on a 3-node cluster, not {} node(s); nothing was checked",
                cfg.nodes
            )));
        }
        let pick = RANDOM_POOL[rng.random_range(0..RANDOM_POOL.len())];
        let partition = [
            PartitionMode::Cut,
            PartitionMode::Blackhole,
            PartitionMode::OutgoingOnly,
        ][rng.random_range(0..3)];
        let concrete = RunConfig {
            scenario: pick.to_string(),
            partition,
            ..cfg.clone()
        };
        let mut report = run(&concrete)?;
        report.scenario = format!("random:{pick}");
        return Ok(report);
    }
    match (cfg.nodes, s) {
        (1, "node-crash" | "storage-failure" | "spot-reclaim") => {
            create_dir(&cfg.dir)?;
            match s {
                "node-crash" => node_crash(cfg, &mut rng),
                "storage-failure" => storage_failure(cfg, &mut rng),
                _ => spot_reclaim(cfg, &mut rng),
            }
        }
        (3, _) => {
            create_dir(&cfg.dir)?;
            cluster::run(cfg, &mut rng)
        }
        (1, _) => Err(Error::Unsupported(format!(
            "scenario '{s}' needs a cluster (--nodes 3); nothing was checked"
        ))),
        (n, _) => Err(Error::Unsupported(format!(
            "{n} nodes: zepto-chaos runs 1 or 3; nothing was checked"
        ))),
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("create {}", dir.display()), e))
}

/// When the fault happened: a known moment, or (for faults that fire by themselves, like a
/// failing disk) the moment the first write that did not succeed was sent.
#[derive(Debug, Clone, Copy)]
enum FaultAt {
    Ms(u64),
    FirstFailedWrite,
}

/// Stop the workload, check, and measure. `detected_ms`: when the harness saw the fault
/// (health turning bad), in workload milliseconds.
fn finish(
    cfg: &RunConfig,
    workload: Workload,
    node: &Node,
    fault: FaultAt,
    detected_ms: Option<u64>,
    exit_code: Option<i32>,
) -> Result<Report, Error> {
    let history = workload.stop();
    let dump = cfg.dir.join("history.json");
    if let Ok(bytes) = serde_json::to_vec(&history) {
        let _ = std::fs::write(&dump, bytes);
    }
    let fault_ms = match fault {
        FaultAt::Ms(ms) => ms,
        FaultAt::FirstFailedWrite => history
            .writes
            .iter()
            .filter(|w| w.outcome != crate::history::Outcome::Ok)
            .map(|w| w.invoked_ms)
            .min()
            .ok_or_else(|| Error::Harness("the fault never made a write fail".into()))?,
    };
    let detection_ms = detected_ms.map(|d| d.saturating_sub(fault_ms));
    let after = |ms: u64| ms.checked_sub(fault_ms);
    let writes_back_ms = history
        .writes
        .iter()
        .filter(|w| w.invoked_ms >= fault_ms && w.outcome == crate::history::Outcome::Ok)
        .map(|w| w.completed_ms)
        .min()
        .and_then(after);
    let queries_back_ms = history
        .reads
        .iter()
        .filter(|r| r.invoked_ms >= fault_ms && r.outcome == crate::history::Outcome::Ok)
        .map(|r| r.completed_ms)
        .min()
        .and_then(after);
    let verdict = check(&history, &[node.url()?])?;
    let lost_rows = verdict.lost.len();
    if verdict.acked_writes == 0 {
        return Err(Error::Harness(format!(
            "no write was ever acknowledged: nothing was checked (logs: {})",
            cfg.dir.display()
        )));
    }
    Ok(Report {
        scenario: cfg.scenario.clone(),
        seed: cfg.seed,
        detection_ms,
        writes_back_ms,
        queries_back_ms,
        exit_code,
        verdict,
        events: history.events,
        logs: cfg.dir.clone(),
        nodes: 1,
        victim: None,
        leader: None,
        queries_all_back_ms: None,
        affected_partitions: Vec::new(),
        failover_ms: None,
        lease_refusal_ms: None,
        converged_ms: None,
        lost_rows,
        unattributed_connections: 0,
        heartbeat_ms: None,
    })
}

/// Scenario 1 on one node: SIGKILL in the middle of ingest, restart, check.
fn node_crash(cfg: &RunConfig, rng: &mut StdRng) -> Result<Report, Error> {
    let mut node = single_node(cfg, Vec::new());
    let w = boot(cfg, &mut node)?;
    wait_for_acks(&w, rng.random_range(20..200), cfg.phase * 4)?;
    let fault = w.now_ms();
    node.kill()?;
    w.event("SIGKILL node 0");
    node.start()?;
    ready(&node, Duration::from_secs(120))?;
    w.event("node 0 ready again");
    wait_for_acks(&w, 20, cfg.phase * 4)?;
    finish(cfg, w, &node, FaultAt::Ms(fault), None, None)
}

/// Scenario 5 on one node: fdatasync starts failing. The node must stop acknowledging and
/// fail /health; after a restart on a good disk every acknowledged row is there.
fn storage_failure(cfg: &RunConfig, rng: &mut StdRng) -> Result<Report, Error> {
    let after_fsyncs: u32 = rng.random_range(30..150);
    let env = vec![(
        "ZEPTO_FAILPOINTS".to_string(),
        format!("wal::fsync=eio@{after_fsyncs}"),
    )];
    let mut node = single_node(cfg, env);
    let w = boot(cfg, &mut node)?;
    // The fault fires by itself after `after_fsyncs` group commits; detection = /health bad.
    let http = Http::new(&node.url()?, Duration::from_secs(5));
    http.wait_until_failing("/health", Duration::from_secs(60))
        .ok_or_else(|| Error::Harness("/health never failed after the fsync fault".into()))?;
    let detected = w.now_ms();
    w.event(format!(
        "fdatasync fails from the {after_fsyncs}th on; /health failing"
    ));
    // No write may be acknowledged from now on.
    let probe = Http::new(&node.url()?, Duration::from_secs(5))
        .post(
            "/?query=INSERT%20INTO%20chaos%20FORMAT%20CSV",
            b"1704187800000000000,S000,-1,99\n",
        )
        .map_err(|e| Error::Harness(format!("probe write: {e}")))?;
    if probe.status == 200 {
        return Err(Error::Harness(
            "a write was acknowledged after fdatasync failed".into(),
        ));
    }
    node.kill()?;
    node.spec.env.clear();
    node.start()?;
    ready(&node, Duration::from_secs(120))?;
    w.event("restarted on a good disk");
    wait_for_acks(&w, 10, cfg.phase * 4)?;
    finish(
        cfg,
        w,
        &node,
        FaultAt::FirstFailedWrite,
        Some(detected),
        None,
    )
}

/// Scenario 9 on one node: SIGTERM (the reclamation notice), SIGKILL after the grace
/// period if still running. The node must exit 0 within the grace period with every
/// acknowledged row durable.
fn spot_reclaim(cfg: &RunConfig, rng: &mut StdRng) -> Result<Report, Error> {
    let mut node = single_node(cfg, Vec::new());
    let w = boot(cfg, &mut node)?;
    wait_for_acks(&w, rng.random_range(20..200), cfg.phase * 4)?;
    let fault = w.now_ms();
    node.terminate()?;
    w.event("SIGTERM node 0");
    let grace = Duration::from_secs(30);
    let exit_code = match node.wait_exit(grace)? {
        Some(status) => status.code(),
        None => {
            if let Some(path) = node.capture_stacks() {
                w.event(format!("stacks of the hung process: {}", path.display()));
            }
            node.kill()?;
            w.event("SIGKILL after the grace period");
            None
        }
    };
    let exited = Some(w.now_ms());
    node.start()?;
    ready(&node, Duration::from_secs(120))?;
    wait_for_acks(&w, 10, cfg.phase * 4)?;
    let mut r = finish(cfg, w, &node, FaultAt::Ms(fault), exited, exit_code)?;
    if exit_code != Some(0) {
        r.verdict.other.push(format!(
            "SIGTERM: exit code {exit_code:?} within {grace:?}, expected 0"
        ));
    }
    Ok(r)
}

/// Remove a passed run's directory; keep a failed one.
pub fn cleanup(dir: &Path, passed: bool) {
    if passed {
        let _ = std::fs::remove_dir_all(dir);
    }
}
