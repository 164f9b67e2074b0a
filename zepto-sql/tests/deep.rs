//! Generated SQL with long predicates or deep nesting must neither overflow the stack nor
//! take quadratic time; the server runs statements on threads with 2 MiB stacks.
#![allow(clippy::unwrap_used)]

mod common;

use zepto_sql::{Engine, ErrorKind};

fn on_small_stack(e: &Engine, sql: String) -> Result<Vec<Vec<String>>, ErrorKind> {
    let e = e.clone();
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            e.execute(&sql)
                .map(|o| common::rows(&o))
                .map_err(|e| e.kind())
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn long_chains_and_deep_nesting_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, v BIGINT)")
        .unwrap();
    e.execute("INSERT INTO t VALUES ('2024-01-02T10:00:00Z', 'A', 7), ('2024-01-02T10:00:01Z', 'B', 20001)")
        .unwrap();
    let n = 20_000;
    let ors: Vec<String> = (0..n).map(|i| format!("v = {i}")).collect();
    let got = on_small_stack(
        &e,
        format!("SELECT count(*) FROM t WHERE {}", ors.join(" OR ")),
    );
    assert_eq!(got, Ok(vec![vec!["1".to_string()]]));
    let ands: Vec<String> = (0..n).map(|i| format!("v <> {i}")).collect();
    let got = on_small_stack(
        &e,
        format!("SELECT count(*) FROM t WHERE {}", ands.join(" AND ")),
    );
    assert_eq!(got, Ok(vec![vec!["1".to_string()]]));
    let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let got = on_small_stack(
        &e,
        format!("SELECT count(*) FROM t WHERE v IN ({})", list.join(",")),
    );
    assert_eq!(got, Ok(vec![vec!["1".to_string()]]));
    // A 2000-term sum nests 2000 levels deep: refused, not a crash.
    let sum: Vec<String> = (0..2000).map(|_| "v".to_string()).collect();
    let got = on_small_stack(&e, format!("SELECT {} FROM t", sum.join(" + ")));
    assert_eq!(got, Err(ErrorKind::BadRequest));
    // Moderate nesting still works.
    let sum: Vec<String> = (0..20).map(|_| "v".to_string()).collect();
    let got = on_small_stack(
        &e,
        format!("SELECT {} FROM t WHERE symbol = 'A'", sum.join(" + ")),
    );
    assert_eq!(got, Ok(vec![vec!["140".to_string()]]));
}

#[test]
fn long_unions_and_join_chains_are_refused_not_crashed() {
    let dir = tempfile::tempdir().unwrap();
    let e = common::open(dir.path());
    e.execute("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, v BIGINT)")
        .unwrap();
    let unions: Vec<String> = (0..3000).map(|i| format!("SELECT {i}")).collect();
    assert_eq!(
        on_small_stack(&e, unions.join(" UNION ALL ")),
        Err(ErrorKind::BadRequest)
    );
    let joins: Vec<String> = (0..500)
        .map(|i| format!("JOIN t t{i} ON t.v = t{i}.v"))
        .collect();
    assert_eq!(
        on_small_stack(&e, format!("SELECT count(*) FROM t {}", joins.join(" "))),
        Err(ErrorKind::BadRequest)
    );
    let unions: Vec<String> = (0..20).map(|i| format!("SELECT {i} AS x")).collect();
    let got = on_small_stack(
        &e,
        format!("SELECT sum(x) FROM ({}) u", unions.join(" UNION ALL ")),
    );
    assert_eq!(got, Ok(vec![vec!["190".to_string()]]));
}
