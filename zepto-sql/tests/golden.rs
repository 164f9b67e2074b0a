//! Golden SQL tests: every `tests/sql/*.sql` (workspace root) runs against a fresh Db in a
//! temp dir; the rendered output must equal `*.result` beside it.
//! `ZEPTO_BLESS=1 cargo test -p zepto-sql --test golden` rewrites the `.result` files
//! (review the diff by hand before committing).
//!
//! File syntax: statements end with `;` at the end of a line. `-- ` comment lines are copied
//! to the output. `-- settings: memory_limit=N timeout_ms=N` applies to the next statement.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use zepto_sql::QuerySettings;

fn sql_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sql")
}

fn run_file(path: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open(dir.path());
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut stmt = String::new();
    let mut settings = QuerySettings::default();
    for line in text.lines() {
        let t = line.trim();
        if stmt.is_empty() && (t.is_empty() || t.starts_with("--")) {
            if let Some(s) = t.strip_prefix("-- settings:") {
                for kv in s.split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap();
                    let v: u64 = v.parse().unwrap();
                    match k {
                        "memory_limit" => settings.memory_limit_bytes = v as usize,
                        "timeout_ms" => settings.timeout = Duration::from_millis(v),
                        _ => panic!("unknown setting {k}"),
                    }
                }
            }
            out.push_str(line);
            out.push('\n');
            continue;
        }
        stmt.push_str(line);
        stmt.push('\n');
        if t.ends_with(';') {
            out.push_str(&stmt);
            let sql = stmt.trim().trim_end_matches(';');
            match engine.execute_with(sql, &settings) {
                Ok(res) => out.push_str(&common::render(&res)),
                Err(e) => out.push_str(&format!("ERROR {:?}: {e}\n", e.kind())),
            }
            out.push('\n');
            stmt.clear();
            settings = QuerySettings::default();
        }
    }
    assert!(
        stmt.trim().is_empty(),
        "{}: unterminated statement: {stmt}",
        path.display()
    );
    out
}

#[test]
fn golden_files() {
    let bless = std::env::var("ZEPTO_BLESS").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(sql_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no golden files in {}",
        sql_dir().display()
    );
    let mut failed = vec![];
    for f in &files {
        let got = run_file(f);
        let expected_path = f.with_extension("result");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            let (g, e): (Vec<&str>, Vec<&str>) =
                (got.lines().collect(), expected.lines().collect());
            let first = g
                .iter()
                .zip(e.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(g.len().min(e.len()));
            eprintln!(
                "--- {} differs at line {}:\n  expected: {:?}\n  got:      {:?}",
                f.display(),
                first + 1,
                e.get(first),
                g.get(first)
            );
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatches (ZEPTO_BLESS=1 to rewrite, then review): {failed:?}"
    );
}
