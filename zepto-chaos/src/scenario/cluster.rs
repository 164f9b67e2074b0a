//! The recovery guide's scenarios on a real 3-node cluster (see [`crate::cluster`]).
//!
//! Every run: start the cluster, create the table, start the workload (writers round robin
//! over all three nodes, each write one key and so one partition; readers ask each key's
//! primary, as the majority's leader names it), pick the victim with the seed, inject the
//! fault, measure detection (the majority's metadata marks the victim SUSPECT/DEAD, or a new
//! raft leader for `coordinator-crash`), failover (a new primary for every partition the
//! victim led), and per affected partition the first acknowledged write and the first
//! successful query after the fault; then heal/restart, let the victim rejoin, stop the
//! workload, wait for convergence and check (`crate::checker`): every acknowledged row
//! present exactly once on its partition's primary, no refused row present, primary and
//! replica holding the same ids and positions, no partial query.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use super::{create_table, wait_for_acks, PartitionMode, Report, RunConfig};
use crate::checker::{check_reads, check_rows, read_ids, Verdict};
use crate::client::Http;
use crate::cluster::{keys_per_partition, partition_of, AdminView, Cluster, ADMIN_KEY, PARTITIONS};
use crate::history::{History, Outcome, Targets, Workload};
use crate::net::NodeId;
use crate::proxy::LinkMode;
use crate::Error;

/// split-brain: how long the cut is held after the failover, at most.
const HOLD: Duration = Duration::from_secs(3);
/// A margin for the clocks of the harness and the node around the write lease.
const LEASE_SLACK: Duration = Duration::from_millis(300);

/// Run `cfg.scenario` on three nodes.
pub(super) fn run(cfg: &RunConfig, rng: &mut StdRng) -> Result<Report, Error> {
    // storage-failure: the victim's disk fails from its N-th fdatasync on (counted from its
    // start), so the victim is picked before the cluster starts (it may turn out to lead).
    let storage_victim: NodeId = rng.random_range(1..=3);
    let after_fsyncs: u32 = rng.random_range(60..200);
    let storage = cfg.scenario == "storage-failure";
    let env = |id: NodeId| {
        if storage && id == storage_victim {
            vec![(
                "ZEPTO_FAILPOINTS".to_string(),
                format!("wal::fsync=eio@{after_fsyncs}"),
            )]
        } else {
            Vec::new()
        }
    };
    // scale-out: room for two data nodes beyond the three voters.
    let spares = if cfg.scenario == "scale-out" { 2 } else { 0 };
    let mut c = Cluster::start_with_spares(&cfg.bin, &cfg.dir, 3, spares, cfg.heartbeat, &env)?;
    create_table(&c.http(1, Duration::from_secs(30))?)?;
    c.poll("the table on every node", c.react(), |c| {
        c.ids()
            .iter()
            .all(|&id| {
                c.http(id, Duration::from_secs(5)).is_ok_and(|h| {
                    h.post("/", b"SELECT count(*) FROM chaos FORMAT CSV")
                        .is_ok_and(|a| a.status == 200)
                })
            })
            .then_some(())
    })?;
    let (leader, _) = c.poll("an agreed leader", c.react(), Cluster::agreed_leader)?;
    let view = c
        .leader_view(&c.ids())
        .ok_or_else(|| Error::Harness("no leader view".into()))?;
    // The victim: the leader for coordinator-crash; any primary for split-brain (the leader
    // included: a cut-off leader must lose its lease too); else a primary that does not lead.
    let victim = match cfg.scenario.as_str() {
        "coordinator-crash" => leader,
        "storage-failure" => storage_victim,
        s => {
            let candidates: Vec<NodeId> = c
                .ids()
                .into_iter()
                .filter(|&n| {
                    (s == "split-brain" || n != leader) && !view.primaries_of(n).is_empty()
                })
                .collect();
            *candidates
                .get(rng.random_range(0..candidates.len().max(1)))
                .ok_or_else(|| Error::Harness(format!("no primary besides leader {leader}")))?
        }
    };
    let view = c
        .leader_view(&c.ids())
        .ok_or_else(|| Error::Harness("no leader view".into()))?;
    let affected = view.primaries_of(victim);
    let others: Vec<NodeId> = c.ids().into_iter().filter(|&n| n != victim).collect();

    let keys = keys_per_partition("chaos", PARTITIONS, 2);
    let read_from = Arc::new(Mutex::new(primary_index(&view, &keys)));
    let ready = Arc::new(Mutex::new(vec![true; c.ids().len()]));
    let targets = Targets {
        urls: Arc::new(Mutex::new(c.urls()?)),
        keys: keys.clone(),
        api_key: Some(ADMIN_KEY.into()),
        read_from: Some(read_from.clone()),
        ready: Some(ready.clone()),
        writers_follow_ready: cfg.scenario != "split-brain",
    };
    let stop_map = Arc::new(AtomicBool::new(false));
    let refresher =
        spawn_map_refresher(c.urls()?, keys.clone(), read_from, ready, stop_map.clone());
    let w = Workload::start(targets, cfg.writers, cfg.readers, cfg.readers, 50);
    let result = run_fault(
        cfg,
        rng,
        &mut c,
        &w,
        victim,
        &affected,
        &others,
        after_fsyncs,
    );
    stop_map.store(true, Ordering::Relaxed);
    let _ = refresher.join();
    let m = match result {
        Ok(m) => m,
        Err(e) => {
            let history = w.stop();
            dump(cfg, &history);
            return Err(e);
        }
    };
    let history = w.stop();
    dump(cfg, &history);
    let convergence = c.converge(Duration::from_secs(60));
    let diverged: BTreeSet<u32> = convergence.diverged.iter().map(|(p, _)| *p).collect();
    let mut verdict = check_cluster(&c, &history, &keys, &diverged)?;
    if let Some(why) = &convergence.not_converged {
        verdict
            .other
            .push(format!("the cluster did not converge: {why}"));
    }
    for (p, why) in &convergence.diverged {
        verdict.diverged.push(format!("partition {p}: {why}"));
    }
    for (p, why) in &convergence.not_in_sync {
        verdict.not_in_sync.push(format!("partition {p}: {why}"));
    }
    verdict.other.extend(m.violations.iter().cloned());
    // A client that asks any ready node (the next one if a process is gone) never sees a failed
    // query, except in split-brain, where the cut-off node cannot reach the others' data
    // (its clients are on the wrong side of the partition).
    if cfg.scenario != "split-brain" && verdict.any_node_failed_reads > 0 {
        verdict.other.push(format!(
            "{} of {} queries sent to any node failed: {:?}",
            verdict.any_node_failed_reads, verdict.any_node_reads, verdict.any_node_failures
        ));
    }
    // A graceful departure (drain, spot reclaim with its warning) or a scale-out must not
    // fail a single write: the guide's target is 0 failed writes seen by the client.
    if matches!(
        cfg.scenario.as_str(),
        "drain" | "spot-reclaim" | "scale-out"
    ) && verdict.refused_writes + verdict.unknown_writes > 0
    {
        let failures: Vec<String> = history
            .writes
            .iter()
            .filter_map(|w| match &w.outcome {
                Outcome::Ok => None,
                Outcome::Failed(m) | Outcome::Unknown(m) => Some(format!(
                    "ids {}.. via node index {} at {} ms: {m}",
                    w.first, w.node, w.invoked_ms
                )),
            })
            .take(3)
            .collect();
        verdict.other.push(format!(
            "{} writes failed and {} have an unknown outcome during a {} (target: 0): {failures:?}",
            verdict.refused_writes, verdict.unknown_writes, cfg.scenario
        ));
    }
    if verdict.acked_writes == 0 {
        return Err(Error::Harness(format!(
            "no write was ever acknowledged: nothing was checked (logs: {})",
            cfg.dir.display()
        )));
    }
    let fault = m.fault_ms;
    let back = |ok_after: &dyn Fn(u32) -> Option<u64>| -> Option<u64> {
        if affected.is_empty() {
            return ok_after(u32::MAX);
        }
        affected
            .iter()
            .map(|&p| ok_after(p))
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().max())
            .map(|t| t.saturating_sub(fault))
    };
    let writes_back_ms = back(&|p| first_ok_write(&history, p, fault));
    let queries_back_ms = back(&|p| first_ok_read(&history, p, fault));
    for (what, v) in [("writes", writes_back_ms), ("queries", queries_back_ms)] {
        if v.is_none() {
            verdict.other.push(format!(
                "{what} to the affected partitions {affected:?} never succeeded after the fault"
            ));
        }
    }
    let lost_rows = verdict.lost.len();
    let queries_all_back_ms = all_back(&history, fault);
    Ok(Report {
        scenario: cfg.scenario.clone(),
        seed: cfg.seed,
        detection_ms: m.detected_ms.map(|d| d.saturating_sub(fault)),
        writes_back_ms,
        queries_back_ms,
        exit_code: m.exit_code,
        verdict,
        events: history.events,
        logs: cfg.dir.clone(),
        nodes: 3,
        victim: Some(victim),
        leader: Some(leader),
        queries_all_back_ms,
        affected_partitions: affected,
        failover_ms: m.failover_ms.map(|d| d.saturating_sub(fault)),
        lease_refusal_ms: m.lease_refusal_ms,
        converged_ms: convergence.after_ms,
        lost_rows,
        // Closed, never let through: they cannot hide a fault, only add one.
        unattributed_connections: c.net.unattributed(),
        heartbeat_ms: Some(ms(c.timings.heartbeat_interval)),
    })
}

/// What the fault phase measured (workload milliseconds).
#[derive(Debug, Default)]
struct Measured {
    fault_ms: u64,
    detected_ms: Option<u64>,
    failover_ms: Option<u64>,
    lease_refusal_ms: Option<u64>,
    /// When the harness last asked and the majority's metadata still named the victim
    /// primary (so every acknowledgement completed before it came from the victim).
    old_primary_seen_ms: Option<u64>,
    exit_code: Option<i32>,
    violations: Vec<String>,
}

#[allow(clippy::too_many_arguments)] // the run's state, passed once
fn run_fault(
    cfg: &RunConfig,
    rng: &mut StdRng,
    c: &mut Cluster,
    w: &Workload,
    victim: NodeId,
    affected: &[u32],
    others: &[NodeId],
    after_fsyncs: u32,
) -> Result<Measured, Error> {
    let warmup = cfg.phase * 6;
    wait_for_acks(w, rng.random_range(20..120), warmup)?;
    let mut m = Measured::default();
    match cfg.scenario.as_str() {
        "node-crash" | "coordinator-crash" => {
            m.fault_ms = w.now_ms();
            c.kill(victim)?;
            w.event(format!("SIGKILL node {victim} (primary of {affected:?})"));
            detect(
                c,
                w,
                &mut m,
                victim,
                others,
                cfg.scenario == "coordinator-crash",
            )?;
            failover(c, w, &mut m, victim, affected, others)?;
            writes_back(w, affected, m.fault_ms, c.react())?;
            c.start_node(victim)?;
            w.event(format!("node {victim} restarted"));
        }
        "split-brain" => {
            m.fault_ms = w.now_ms();
            for &o in others {
                match cfg.partition {
                    PartitionMode::Cut => {
                        c.net.set_mode(victim, o, LinkMode::Cut)?;
                        c.net.set_mode(o, victim, LinkMode::Cut)?;
                    }
                    PartitionMode::Blackhole => {
                        c.net.set_mode(victim, o, LinkMode::Blackhole)?;
                        c.net.set_mode(o, victim, LinkMode::Blackhole)?;
                    }
                    PartitionMode::OutgoingOnly => c.net.set_mode(victim, o, LinkMode::Cut)?,
                }
            }
            w.event(format!(
                "node {victim} (primary of {affected:?}) cut off from the majority ({:?})",
                cfg.partition
            ));
            detect(c, w, &mut m, victim, others, false)?;
            failover(c, w, &mut m, victim, affected, others)?;
            writes_back(w, affected, m.fault_ms, c.react())?;
            // Hold the partition while writes keep going to the cut-off primary: until it
            // refused one with 409 (its lease ended), at most `HOLD` after the failover.
            let victim_ix = victim as usize - 1;
            let lease_at = poll_workload(w, HOLD, |h| {
                h.writes
                    .iter()
                    .filter(|op| op.node == victim_ix && op.invoked_ms >= m.fault_ms)
                    .filter(
                        |op| matches!(&op.outcome, Outcome::Failed(e) if e.starts_with("HTTP 409")),
                    )
                    .map(|op| op.completed_ms)
                    .min()
            });
            m.lease_refusal_ms = lease_at.map(|t| t.saturating_sub(m.fault_ms));
            let heal_ms = w.now_ms();
            c.net.heal();
            w.event("healed every link");
            // Nothing of the victim's partitions may be acknowledged once its lease has
            // ended (the last heartbeat it could renew it with was sent before the cut), nor
            // by the cut-off node after the failover.
            let t = c.timings;
            let lease_end = m.fault_ms + ms(t.write_lease + t.heartbeat_interval + LEASE_SLACK);
            let old_seen = m.old_primary_seen_ms.unwrap_or(m.fault_ms);
            let failover_at = m.failover_ms.unwrap_or(heal_ms);
            let (during_lease_gap, by_victim_after) = w
                .inspect(|h| {
                    let acked = |op: &&crate::history::WriteOp| {
                        op.outcome == Outcome::Ok && affected.contains(&partition_of(&op.key))
                    };
                    let a = h
                        .writes
                        .iter()
                        .filter(acked)
                        .filter(|op| op.invoked_ms >= lease_end && op.completed_ms < old_seen)
                        .count();
                    let b = h
                        .writes
                        .iter()
                        .filter(acked)
                        .filter(|op| {
                            op.node == victim_ix
                                && op.invoked_ms >= failover_at
                                && op.completed_ms <= heal_ms
                        })
                        .count();
                    (a, b)
                })
                .unwrap_or((0, 0));
            if during_lease_gap > 0 {
                m.violations.push(format!(
                    "{during_lease_gap} writes of partitions {affected:?} sent after the cut-off \
                     primary's lease ended were acknowledged while it was still their primary"
                ));
            }
            if by_victim_after > 0 {
                m.violations.push(format!(
                    "the cut-off primary {victim} acknowledged {by_victim_after} writes of its \
                     old partitions after they failed over"
                ));
            }
        }
        "storage-failure" => {
            // The fault fires by itself after `after_fsyncs` fdatasyncs; the moment is the
            // first write to the victim's partitions that did not succeed.
            let http = c.http(victim, Duration::from_secs(2))?;
            http.wait_until_failing("/health", Duration::from_secs(60))
                .ok_or_else(|| {
                    Error::Harness(format!(
                        "/health of node {victim} never failed after the fsync fault"
                    ))
                })?;
            let health_bad = w.now_ms();
            w.event(format!(
                "node {victim}: fdatasync fails from the {after_fsyncs}th call on; /health failing"
            ));
            m.fault_ms = w
                .inspect(|h| {
                    h.writes
                        .iter()
                        .filter(|op| op.outcome != Outcome::Ok)
                        .filter(|op| affected.contains(&partition_of(&op.key)))
                        .map(|op| op.invoked_ms)
                        .min()
                })
                .flatten()
                .unwrap_or(health_bad)
                .min(health_bad);
            m.detected_ms = Some(health_bad);
            failover(c, w, &mut m, victim, affected, others)?;
            writes_back(w, affected, m.fault_ms, c.react())?;
            c.kill(victim)?;
            c.node_mut(victim)?.spec.env.clear();
            c.start_node(victim)?;
            w.event(format!("node {victim} restarted on a good disk"));
        }
        "drain" => {
            // Guide scenario 3: the node is drained (eviction, rolling update): SIGTERM, and
            // it hands every partition it leads to that partition's in-sync replica before it
            // exits, so the handoff shows in the majority's map while it still runs.
            m.fault_ms = w.now_ms();
            c.node_mut(victim)?.terminate()?;
            w.event(format!(
                "SIGTERM node {victim} (drain; primary of {affected:?})"
            ));
            failover(c, w, &mut m, victim, affected, others)?;
            m.detected_ms = m.failover_ms;
            // Handed over, not failed over after its death: the map moved while the node was
            // DRAINING (it is declared DEAD only once it has exited and gone silent).
            let state = c
                .leader_view(others)
                .and_then(|v| v.node_state(victim).map(str::to_string));
            if state.as_deref() != Some("DRAINING") {
                m.violations.push(format!(
                    "partitions {affected:?} moved while node {victim} was {state:?}, not \
                     DRAINING: failed over after death rather than handed over"
                ));
            }
            wait_terminated(c, w, &mut m, victim)?;
            writes_back(w, affected, m.fault_ms, c.react())?;
            c.start_node(victim)?;
            w.event(format!("node {victim} restarted"));
        }
        "spot-reclaim" => {
            m.fault_ms = w.now_ms();
            c.node_mut(victim)?.terminate()?;
            w.event(format!("SIGTERM node {victim} (primary of {affected:?})"));
            wait_terminated(c, w, &mut m, victim)?;
            detect(c, w, &mut m, victim, others, false)?;
            failover(c, w, &mut m, victim, affected, others)?;
            writes_back(w, affected, m.fault_ms, c.react())?;
            c.start_node(victim)?;
            w.event(format!("node {victim} restarted"));
        }
        "scale-out" => {
            // Guide scenario 8: the HPA adds two pods. They join outside the raft voters and
            // receive partitions (replicas, then primaries) while the workload runs; queries
            // must never be answered from an incomplete copy and nothing acknowledged may be
            // lost. The "failover" time is the time until the placement is balanced.
            m.fault_ms = w.now_ms();
            let added = [c.add_data_node()?, c.add_data_node()?];
            w.event(format!("started data nodes {added:?} (scale 3 -> 5)"));
            let all = c.ids();
            c.poll(
                "the placement balanced over 5 nodes",
                Duration::from_secs(120),
                |c| {
                    let v = c.leader_view(&all)?;
                    let balanced = v
                        .rebalance
                        .as_ref()
                        .is_some_and(|r| r["plan"] == "balanced");
                    let holds = |n: NodeId| {
                        v.partitions
                            .iter()
                            .any(|p| p.primary == n || p.replica == Some(n))
                    };
                    let in_sync = v.partitions.iter().all(|p| p.in_sync.len() == 2);
                    (v.nodes.len() == 5 && balanced && in_sync && added.iter().all(|&n| holds(n)))
                        .then_some(())
                },
            )?;
            m.failover_ms = Some(w.now_ms());
            m.detected_ms = m.failover_ms;
            w.event("placement balanced over 5 nodes".to_string());
            c.wait_ready(&added, Duration::from_secs(60))?;
            // The copies moved to the new nodes are released on the old ones (ADR 0016,
            // `--release-after 1s`) while the workload runs: the final check then reads a
            // cluster that deleted them, and nothing acknowledged may be missing.
            let old: Vec<NodeId> = all.iter().copied().filter(|n| !added.contains(n)).collect();
            c.poll(
                "the copies moved off the old nodes released",
                Duration::from_secs(60),
                |c| {
                    old.iter()
                        .all(|&n| {
                            c.admin(n)
                                .ok()
                                .and_then(|v| v.local_partitions)
                                .is_some_and(|l| {
                                    l.iter().all(|p| {
                                        p.role != "none" || (p.rows == 0 && p.next_seq == 0)
                                    })
                                })
                        })
                        .then_some(())
                },
            )?;
            w.event("copies moved off the old nodes released".to_string());
        }
        s => {
            return Err(Error::Unsupported(format!(
                "scenario '{s}' has no cluster schedule"
            )))
        }
    }
    c.wait_ready(&[victim], Duration::from_secs(120))?;
    w.event(format!("node {victim} ready again"));
    wait_for_acks(w, 20, warmup)?;
    Ok(m)
}

/// After SIGTERM: wait for the victim's exit (SIGKILL after a 30 s grace period, as a
/// spot reclaim would); an exit code other than 0 is a violation.
fn wait_terminated(
    c: &mut Cluster,
    w: &Workload,
    m: &mut Measured,
    victim: NodeId,
) -> Result<(), Error> {
    let grace = Duration::from_secs(30);
    m.exit_code = match c.node_mut(victim)?.wait_exit(grace)? {
        Some(status) => status.code(),
        None => {
            if let Some(path) = c.node_mut(victim)?.capture_stacks() {
                w.event(format!("stacks of the hung process: {}", path.display()));
            }
            c.kill(victim)?;
            w.event("SIGKILL after the grace period");
            None
        }
    };
    c.net.set_node(victim, None);
    w.event(format!("node {victim} exited: {:?}", m.exit_code));
    if m.exit_code != Some(0) {
        m.violations.push(format!(
            "SIGTERM: exit code {:?} within {grace:?}, expected 0",
            m.exit_code
        ));
    }
    Ok(())
}

/// Detection: the majority's leader marks the victim SUSPECT or DEAD (`new_leader`: the
/// others agree on a leader that is not the victim).
fn detect(
    c: &Cluster,
    w: &Workload,
    m: &mut Measured,
    victim: NodeId,
    others: &[NodeId],
    new_leader: bool,
) -> Result<(), Error> {
    let what = if new_leader {
        "a new raft leader among the others"
    } else {
        "the victim marked SUSPECT or DEAD"
    };
    c.poll(what, c.react(), |c| {
        if new_leader {
            c.agreed_leader_among(others)
                .filter(|(l, _)| *l != victim)
                .map(|_| ())
        } else {
            c.leader_view(others)
                .filter(|v| matches!(v.node_state(victim), Some("SUSPECT" | "DEAD")))
                .map(|_| ())
        }
    })?;
    m.detected_ms = Some(w.now_ms());
    w.event(format!("detected: {what}"));
    Ok(())
}

/// Failover: the majority's leader names a new primary for every affected partition.
fn failover(
    c: &Cluster,
    w: &Workload,
    m: &mut Measured,
    victim: NodeId,
    affected: &[u32],
    others: &[NodeId],
) -> Result<(), Error> {
    let mut old_seen = None;
    c.poll("failover of the victim's partitions", c.react(), |c| {
        let asked = w.now_ms();
        let view = c.leader_view(others)?;
        let moved = view
            .partitions
            .iter()
            .filter(|p| affected.contains(&p.id))
            .all(|p| p.primary != victim);
        if !moved {
            old_seen = Some(asked);
        }
        moved.then_some(())
    })
    .map_err(|e| {
        // Say what the majority's metadata shows for the partitions that did not move.
        let state = c.leader_view(others).map_or_else(
            || "no leader among the others".to_string(),
            |v| {
                v.partitions
                    .iter()
                    .filter(|p| affected.contains(&p.id))
                    .map(|p| {
                        format!(
                            "partition {}: primary {} replica {:?} epoch {} in-sync {:?} writable {} unavailable {}",
                            p.id,
                            p.primary,
                            p.replica,
                            p.epoch,
                            p.in_sync,
                            p.writable,
                            p.unavailable.clone().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        );
        Error::Harness(format!("{e}; metadata of the majority: {state}"))
    })?;
    m.failover_ms = Some(w.now_ms());
    m.old_primary_seen_ms = old_seen;
    w.event(format!("partitions {affected:?} failed over"));
    Ok(())
}

/// Wait until every affected partition took a write sent after the fault.
fn writes_back(
    w: &Workload,
    affected: &[u32],
    fault_ms: u64,
    react: Duration,
) -> Result<(), Error> {
    poll_workload(w, react, |h| {
        affected
            .iter()
            .all(|&p| first_ok_write(h, p, fault_ms).is_some())
            .then_some(())
    })
    .ok_or_else(|| {
        Error::Harness(format!(
            "writes to partitions {affected:?} did not succeed within {react:?} of the fault"
        ))
    })
}

/// Poll the workload's history every 20 ms until `f` gives a value, up to `timeout`.
fn poll_workload<T>(
    w: &Workload,
    timeout: Duration,
    f: impl Fn(&History) -> Option<T>,
) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = w.inspect(&f).flatten() {
            return Some(v);
        }
        if t.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

/// Completion time of the first acknowledged write to partition `p` (any, for `u32::MAX`)
/// sent at or after `after`.
fn first_ok_write(h: &History, p: u32, after: u64) -> Option<u64> {
    h.writes
        .iter()
        .filter(|op| op.invoked_ms >= after && op.outcome == Outcome::Ok)
        .filter(|op| p == u32::MAX || partition_of(&op.key) == p)
        .map(|op| op.completed_ms)
        .min()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Completion of the first successful query after the last failed one (of those sent at or
/// after `fault`), relative to `fault`.
fn all_back(h: &History, fault: u64) -> Option<u64> {
    let last_failed = h
        .reads
        .iter()
        .filter(|r| !r.any_node && r.invoked_ms >= fault && r.outcome != Outcome::Ok)
        .map(|r| r.completed_ms)
        .max()
        .unwrap_or(fault);
    first_ok_read(h, u32::MAX, last_failed).map(|t| t.saturating_sub(fault))
}

/// The same for queries.
fn first_ok_read(h: &History, p: u32, after: u64) -> Option<u64> {
    h.reads
        .iter()
        .filter(|op| !op.any_node && op.invoked_ms >= after && op.outcome == Outcome::Ok)
        .filter(|op| p == u32::MAX || partition_of(&op.key) == p)
        .map(|op| op.completed_ms)
        .min()
}

/// Per key: the index (node id - 1) of its partition's primary in `view`.
fn primary_index(view: &AdminView, keys: &[String]) -> Vec<usize> {
    keys.iter()
        .map(|k| {
            let p = partition_of(k);
            view.partitions
                .iter()
                .find(|v| v.id == p)
                .map_or(0, |v| (v.primary as usize).saturating_sub(1))
        })
        .collect()
}

/// Keep the readers' key -> primary map current from the leader's view, and which nodes
/// answer `/ready` 200 (every 100 ms: a Service follows readiness too, though Kubernetes
/// probes every few seconds).
fn spawn_map_refresher(
    urls: Vec<String>,
    keys: Vec<String>,
    map: Arc<Mutex<Vec<usize>>>,
    ready: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let clients: Vec<Http> = urls
            .iter()
            .map(|u| Http::new(u, Duration::from_millis(500)).with_key(Some(ADMIN_KEY)))
            .collect();
        while !stop.load(Ordering::Relaxed) {
            let now_ready: Vec<bool> = clients
                .iter()
                .map(|h| h.get("/ready").is_ok_and(|a| a.status == 200))
                .collect();
            if let Ok(mut r) = ready.lock() {
                *r = now_ready;
            }
            let best = clients
                .iter()
                .filter_map(|h| h.get("/admin/cluster").ok())
                .filter(|a| a.status == 200)
                .filter_map(|a| serde_json::from_str::<AdminView>(&a.body).ok())
                .filter(|v| v.is_leader)
                .max_by_key(|v| (v.raft_term, v.metadata_version));
            if let Some(v) = best {
                if let Ok(mut m) = map.lock() {
                    *m = primary_index(&v, &keys);
                }
            }
            std::thread::sleep(Duration::from_millis(100)); // refresh interval
        }
    })
}

/// Read every partition back through its primary (only that partition's keys) and through
/// its replica, and hold the history against it.
fn check_cluster(
    c: &Cluster,
    history: &History,
    keys: &[String],
    diverged: &BTreeSet<u32>,
) -> Result<Verdict, Error> {
    let view = c
        .leader_view(&c.ids())
        .ok_or_else(|| Error::Harness("final check: no node leads".into()))?;
    let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for k in keys {
        by_partition
            .entry(partition_of(k))
            .or_default()
            .push(k.clone());
    }
    let mut v = Verdict::default();
    let mut stored: BTreeMap<i64, u32> = BTreeMap::new();
    for p in &view.partitions {
        let Some(keys) = by_partition.get(&p.id) else {
            continue;
        };
        let primary =
            read_ids(&c.http(p.primary, Duration::from_secs(60))?, Some(keys)).map_err(|e| {
                Error::Harness(format!("partition {} on node {}: {e}", p.id, p.primary))
            })?;
        if let Some(r) = p.replica.filter(|_| !diverged.contains(&p.id)) {
            let replica = read_ids(&c.http(r, Duration::from_secs(60))?, Some(keys))
                .map_err(|e| Error::Harness(format!("partition {} on node {r}: {e}", p.id)))?;
            if replica != primary {
                let a: BTreeSet<_> = primary.keys().collect();
                let b: BTreeSet<_> = replica.keys().collect();
                v.disagreements.push(format!(
                    "partition {} (epoch {}): primary {} holds {} ids, replica {r} {}; {} only \
                     on the primary, {} only on the replica",
                    p.id,
                    p.epoch,
                    p.primary,
                    primary.values().map(|&n| u64::from(n)).sum::<u64>(),
                    replica.values().map(|&n| u64::from(n)).sum::<u64>(),
                    a.difference(&b).count(),
                    b.difference(&a).count()
                ));
            }
        }
        for (id, n) in primary {
            *stored.entry(id).or_insert(0) += n;
        }
    }
    check_rows(history, &stored, &mut v);
    check_reads(history, &mut v);
    Ok(v)
}

fn dump(cfg: &RunConfig, history: &History) {
    if let Ok(bytes) = serde_json::to_vec(history) {
        let _ = std::fs::write(cfg.dir.join("history.json"), bytes);
    }
}
