//! The smoke run of zepto-bench, so the harness never rots: start the real `zeptod` (built
//! by the same `cargo test --workspace`) on a free port, then run `ingest` in all three
//! formats and `query --load` (with the DuckDB comparison when the Python package is
//! there) on tiny data, one timed run each, and check what the tool printed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/<profile>/zeptod`, next to this test's own `deps/` directory.
fn zeptod_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("zeptod");
    bin.is_file().then_some(bin)
}

fn start(bin: &PathBuf) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args(["--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("zeptod listening on http=") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("zeptod printed its address");
    let server = Server {
        child,
        url: format!("http://{addr}"),
        _dir: dir,
    };
    server
}

fn bench(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_zepto-bench"))
        .args(args)
        .args(["--url", url, "--rows", "3000", "--symbols", "50"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "zepto-bench {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn smoke_ingest_and_queries_against_a_real_server() {
    let Some(bin) = zeptod_binary() else {
        println!("SKIPPED smoke test: no zeptod binary next to this test (run `cargo test --workspace`, which builds it)");
        return;
    };
    let server = start(&bin);
    for format in ["arrow", "csv", "ilp"] {
        let out = bench(
            &server.url,
            &[
                "ingest",
                "--format",
                format,
                "--batch-rows",
                "1000",
                "--clients",
                "2",
            ],
        );
        assert!(out.contains("3000 rows in"), "{format}: {out}");
    }
    let out = bench(
        &server.url,
        &[
            "query",
            "--load",
            "--warmup",
            "0",
            "--runs",
            "1",
            "--compare",
            "duckdb",
        ],
    );
    for q in ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8"] {
        assert!(out.lines().any(|l| l.starts_with(q)), "{q} missing:\n{out}");
    }
    assert!(
        out.contains("memory read bandwidth") && out.contains("Q8 reads"),
        "{out}"
    );
    if out.contains("DuckDB comparison skipped") {
        println!("DuckDB part SKIPPED: {out}");
    } else {
        assert!(out.contains("DuckDB "), "{out}");
    }
    // A subset of the queries, by name; an unknown name is refused with the set's names.
    let out = bench(
        &server.url,
        &[
            "query",
            "--warmup",
            "0",
            "--runs",
            "1",
            "--queries",
            "q3,Q1",
        ],
    );
    let ran: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.len() == 2 && w.starts_with('Q'))
        .collect();
    assert_eq!(ran, ["Q1", "Q3"], "{out}");
    let refused = Command::new(env!("CARGO_BIN_EXE_zepto-bench"))
        .args(["query", "--url", &server.url, "--queries", "Q1,Q9"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("no query named `Q9`") && err.contains("Q1,Q2"),
        "{err}"
    );
    // Mixed load, into the queried table and into another one: the load runs for the whole
    // query phase and what was sent is what the table holds.
    for table in ["trades", "live"] {
        let out = bench(
            &server.url,
            &[
                "mixed",
                "--ingest-rate",
                "50000",
                "--runs",
                "2",
                "--body-rows",
                "500",
                "--ingest-table",
                table,
            ],
        );
        let sent: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("ingest: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no ingest line:\n{out}"));
        assert!(sent > 0, "{out}");
        for q in ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8"] {
            assert!(out.lines().any(|l| l.starts_with(q)), "{q} missing:\n{out}");
        }
        // zepto-bench itself fails when the table does not hold every acknowledged row.
        assert!(out.contains("rows acknowledged, all counted"), "{out}");
        if table == "trades" {
            assert!(out.contains("idle-after"), "{out}");
        }
    }
}
