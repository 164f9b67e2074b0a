//! `--compare duckdb`: load the same generated data into DuckDB in-process (Python package,
//! from Parquet: its fastest load path) and time the same queries there, in the same run.

use std::path::Path;
use std::process::Command;

use crate::query::{Query, Timing};
use crate::Error;

const SCRIPT: &str = r#"
import json, sys, time
import duckdb
spec = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads TO %d" % spec["threads"])
# Long loads (10M rows) would draw a progress bar on stdout, which carries the JSON answer.
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
con.execute("CREATE TABLE trades AS SELECT * FROM read_parquet('%s')" % spec["trades"])
con.execute("CREATE TABLE quotes AS SELECT * FROM read_parquet('%s')" % spec["quotes"])
load = time.perf_counter() - t
out = {"version": duckdb.__version__, "load_seconds": load, "timings": [], "answers": {}}
for q in spec["queries"]:
    for _ in range(spec["warmup"]):
        con.execute(q["sql"]).fetchall()
    samples = []
    for _ in range(spec["runs"]):
        t = time.perf_counter()
        rows = con.execute(q["sql"]).fetchall()
        samples.append(time.perf_counter() - t)
    samples.sort()
    at = lambda f: samples[round((len(samples) - 1) * f)] * 1e6
    out["timings"].append({"name": q["name"], "runs": len(samples), "p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0)})
    out["answers"][q["name"]] = len(rows)
json.dump(out, sys.stdout)
"#;

/// DuckDB's side of the comparison.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub(crate) struct DuckResult {
    pub(crate) version: String,
    pub(crate) load_seconds: f64,
    pub(crate) timings: Vec<Timing>,
    /// Row count of each query's answer (a sanity check against zeptodb's).
    pub(crate) answers: std::collections::BTreeMap<String, usize>,
}

/// Why DuckDB cannot be used here, if it cannot.
pub(crate) fn unavailable() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import duckdb"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Some(format!("python3: {e}")),
    }
}

pub(crate) fn run(
    trades: &Path,
    quotes: &Path,
    queries: &[Query],
    warmup: usize,
    runs: usize,
    threads: usize,
) -> Result<DuckResult, Error> {
    let spec = serde_json::json!({
        "trades": trades, "quotes": quotes, "warmup": warmup, "runs": runs.max(1), "threads": threads.max(1),
        "queries": queries.iter().map(|q| serde_json::json!({"name": q.name, "sql": q.duckdb})).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Io("start python3".into(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(spec.to_string().as_bytes())
            .map_err(|e| Error::Io("send the DuckDB script its input".into(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Io("run DuckDB".into(), e))?;
    if !out.status.success() {
        return Err(Error::Usage(format!(
            "DuckDB run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Usage(format!("DuckDB output: {e}")))
}
