//! `zepto-chaos`: run a recovery scenario against real zeptod processes and check it.
//!
//! ```text
//! cargo run -p zepto-chaos -- --scenario node-crash --seed 7            # 3-node cluster
//! cargo run -p zepto-chaos -- --scenario split-brain --seeds 5
//! cargo run -p zepto-chaos -- --scenario storage-failure --nodes 1 --seeds 5
//! cargo run -p zepto-chaos -- --scenario node-crash --soak 30m
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use zepto_chaos::scenario::{cleanup, run, PartitionMode, RunConfig, SCENARIOS};
use zepto_chaos::Error;

#[derive(Debug, Parser)]
#[command(
    name = "zepto-chaos",
    version,
    about = "Fault injection against real zeptod processes"
)]
struct Cli {
    /// One of: node-crash, coordinator-crash, drain, split-brain, storage-failure, scale-out, spot-reclaim, random.
    #[arg(long)]
    scenario: String,
    /// First seed; every run prints its seed so a failure can be replayed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds to run (seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Keep running new seeds for this long (e.g. 30m, 2h).
    #[arg(long)]
    soak: Option<String>,
    /// The zeptod binary (default: next to this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Where data and logs go (kept for failed runs).
    #[arg(long, default_value = "zepto-chaos-runs")]
    out: PathBuf,
    #[arg(long, default_value_t = 3)]
    writers: usize,
    #[arg(long, default_value_t = 1)]
    readers: usize,
    /// 3: a real 3-node cluster with proxied peer links (every scenario but
    /// scale-out, random); 1: a single node (node-crash, storage-failure, spot-reclaim).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// split-brain: how the victim is cut off: `cut` (both ways, connections closed),
    /// `blackhole` (both ways, bytes swallowed), `outgoing` (only its own calls cut).
    #[arg(long, default_value = "cut")]
    partition: String,
    /// Cluster runs: zeptod's `--heartbeat-interval` (its default, 1s, is the guide's; suspect,
    /// dead and write-lease times derive from it: 3x, 10x, 5x). E.g. 200ms for fast runs.
    #[arg(long, default_value = "1s")]
    heartbeat_interval: String,
    /// Keep the data, logs and history (history.json) of passing runs too.
    #[arg(long)]
    keep: bool,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

fn main() {
    let cli = Cli::parse();
    let bin = cli.bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("zeptod")))
            .unwrap_or_else(|| PathBuf::from("zeptod"))
    });
    if !SCENARIOS.contains(&cli.scenario.as_str()) {
        eprintln!(
            "unknown scenario '{}'; known: {}",
            cli.scenario,
            SCENARIOS.join(", ")
        );
        std::process::exit(2);
    }
    let soak = match cli.soak.as_deref().map(parse_duration) {
        Some(None) => {
            eprintln!("--soak takes a duration like 90s, 30m or 2h");
            std::process::exit(2);
        }
        Some(Some(d)) => Some(d),
        None => None,
    };
    let Some(heartbeat) = parse_duration(&cli.heartbeat_interval) else {
        eprintln!("--heartbeat-interval takes a duration like 200ms or 1s");
        std::process::exit(2);
    };
    let Some(partition) = PartitionMode::parse(&cli.partition) else {
        eprintln!("--partition takes cut, blackhole or outgoing");
        std::process::exit(2);
    };
    let started = Instant::now();
    let mut seed = cli.seed;
    let mut failed = 0;
    let mut runs = 0;
    loop {
        let dir = cli.out.join(format!(
            "{}-n{}-{}-seed{seed}",
            cli.scenario, cli.nodes, cli.partition
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = RunConfig {
            scenario: cli.scenario.clone(),
            seed,
            bin: bin.clone(),
            dir: dir.clone(),
            phase: Duration::from_secs(5),
            writers: cli.writers,
            readers: cli.readers,
            nodes: cli.nodes,
            partition,
            heartbeat,
        };
        eprintln!(
            "zepto-chaos: scenario {} seed {seed} on {} node(s) (replay: --scenario {} --nodes {} --partition {} --heartbeat-interval {} --seed {seed})",
            cli.scenario, cli.nodes, cli.scenario, cli.nodes, cli.partition, cli.heartbeat_interval
        );
        runs += 1;
        match run(&cfg) {
            Ok(report) => {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                if report.passed() {
                    eprintln!("PASS seed {seed}");
                } else {
                    failed += 1;
                    eprintln!("FAIL seed {seed}: logs kept in {}", dir.display());
                    for p in report.verdict.problems() {
                        eprintln!("  {p}");
                    }
                }
                cleanup(&dir, report.passed() && !cli.keep);
            }
            Err(Error::Unsupported(why)) => {
                eprintln!("NOT RUN: {why}");
                std::process::exit(2);
            }
            Err(e) => {
                failed += 1;
                eprintln!("FAIL seed {seed}: {e} (logs kept in {})", dir.display());
            }
        }
        seed += 1;
        let more = match soak {
            Some(d) => started.elapsed() < d,
            None => seed < cli.seed + cli.seeds,
        };
        if !more {
            break;
        }
    }
    eprintln!("{runs} runs, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
