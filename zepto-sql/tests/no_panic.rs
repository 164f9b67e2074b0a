//! Bad input never panics: every statement of the golden files, cut at many points and
//! with tokens swapped, must come back as `Ok` or a typed `Err`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

#[test]
fn truncated_and_mangled_statements_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    for sql in [
        "CREATE TABLE trades (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT, venue STRING, qty INT, ok BOOLEAN)",
        "CREATE TABLE quotes (ts TIMESTAMP, symbol SYMBOL, bid DOUBLE, ask DOUBLE)",
        "CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE, size BIGINT)",
        "INSERT INTO trades VALUES ('2024-01-02T10:00:00Z', 'AAPL', 100.0, 10, 'X', 1, true), ('2024-01-02T10:00:30Z', 'MSFT', NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO quotes VALUES ('2024-01-02T10:00:02Z', 'AAPL', 99.5, 100.5)",
        "INSERT INTO t VALUES ('2024-01-02T10:00:02Z', 'AAPL', 99.5, 1)",
    ] {
        e.execute(sql).unwrap();
    }
    let sql_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/sql");
    let mut stmts = vec![];
    for f in std::fs::read_dir(&sql_dir).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|x| x == "sql") {
            let text = std::fs::read_to_string(&p).unwrap();
            for s in text.split(";\n") {
                let s: String = s
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n");
                // Skip statements that change the catalog or take long on purpose.
                let lower = s.to_ascii_lowercase();
                if s.trim().is_empty() || lower.contains("drop ") || lower.contains("big") {
                    continue;
                }
                stmts.push(s);
            }
        }
    }
    assert!(stmts.len() > 100);
    let mut runs = 0;
    for s in &stmts {
        let chars: Vec<char> = s.chars().collect();
        let step = (chars.len() / 12).max(1);
        for cut in (1..chars.len()).step_by(step) {
            let prefix: String = chars[..cut].iter().collect();
            let _ = e.execute(&prefix);
            runs += 1;
        }
        // Swap neighbouring words.
        let words: Vec<&str> = s.split_whitespace().collect();
        for i in (0..words.len().saturating_sub(1)).step_by(3) {
            let mut w = words.clone();
            w.swap(i, i + 1);
            let _ = e.execute(&w.join(" "));
            runs += 1;
        }
    }
    assert!(runs > 1000, "{runs}");
}
