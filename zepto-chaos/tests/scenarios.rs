//! A fixed-seed run of every scenario that this build can run, against the real `zeptod`
//! built by the same `cargo test --workspace`. Each must pass the checker; the multi-node
//! ones must refuse to run (and say why) rather than pass without checking.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration;

use zepto_chaos::scenario::{run, RunConfig};
use zepto_chaos::Error;

fn zeptod() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("zeptod");
    bin.is_file().then_some(bin)
}

fn config(bin: PathBuf, scenario: &str, seed: u64, dir: &std::path::Path) -> RunConfig {
    RunConfig {
        scenario: scenario.into(),
        seed,
        bin,
        dir: dir.join(scenario),
        phase: Duration::from_secs(5),
        writers: 3,
        readers: 1,
    }
}

#[test]
fn single_node_scenarios_pass_the_checker() {
    let Some(bin) = zeptod() else {
        println!("SKIPPED: no zeptod binary next to this test (run `cargo test --workspace`, which builds it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (scenario, seed) in [
        ("node-crash", 7),
        ("storage-failure", 3),
        ("spot-reclaim", 3),
    ] {
        let report = run(&config(bin.clone(), scenario, seed, dir.path())).unwrap();
        println!(
            "{scenario} seed {seed}: detection {:?} ms, writes back after {:?} ms, {} acked writes, {} rows stored",
            report.detection_ms, report.writes_back_ms, report.verdict.acked_writes, report.verdict.rows_stored
        );
        assert!(
            report.passed(),
            "{scenario} seed {seed}: {:?}",
            report.verdict.problems()
        );
        assert!(report.verdict.acked_writes > 0);
        assert!(
            report.writes_back_ms.is_some(),
            "{scenario}: writes never came back"
        );
        if scenario == "spot-reclaim" {
            assert_eq!(report.exit_code, Some(0));
        }
        if scenario == "storage-failure" {
            assert!(report.detection_ms.is_some());
        }
    }
}

#[test]
fn multi_node_scenarios_refuse_instead_of_passing() {
    let dir = tempfile::tempdir().unwrap();
    let bin = zeptod().unwrap_or_else(|| PathBuf::from("zeptod"));
    for scenario in [
        "coordinator-crash",
        "split-brain",
        "drain",
        "scale-out",
        "random",
    ] {
        let e = run(&config(bin.clone(), scenario, 1, dir.path())).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{scenario}: {e}");
    }
    assert!(matches!(
        run(&config(bin, "no-such-thing", 1, dir.path())).unwrap_err(),
        Error::Harness(_)
    ));
}
