//! Crash and shutdown during bulk ingest: every acknowledged request must be present after a
//! restart, and no request may be partially applied (each request carries a unique id in
//! `volume` and exactly `ROWS` rows).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use harness::{enc, request, wait_until, Server};

const ROWS: u64 = 500;
const WORKERS: usize = 4;

struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    workers: Vec<JoinHandle<()>>,
}

/// Clients that send CSV bulk inserts of ROWS rows each, with a unique id per request,
/// until told to stop or the server goes away.
fn start_load(s: &Server) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(1));
    let path = format!("/?query={}", enc("INSERT INTO load FORMAT CSV"));
    let workers = (0..WORKERS)
        .map(|_| {
            let (stop, acked, next, path, addr) = (
                stop.clone(),
                acked.clone(),
                next.clone(),
                path.clone(),
                s.addr,
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    let mut body = String::new();
                    for i in 0..ROWS {
                        body.push_str(&format!("{},S{},{}.5,{id}\n", id * 10_000 + i, id % 5, i));
                    }
                    match request(addr, "POST", &path, &[], body.as_bytes()) {
                        Ok(r) if r.status == 200 => {
                            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                            assert_eq!(v["inserted"], ROWS, "{v}");
                            acked.lock().unwrap().push(id);
                        }
                        // 503 while draining, connection refused/reset after a kill: not acked.
                        Ok(r) => assert!(r.status == 503, "unexpected {}: {}", r.status, r.text()),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    Load {
        stop,
        acked,
        workers,
    }
}

impl Load {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.join().expect("worker panicked");
        }
        let mut v = self.acked.lock().unwrap().clone();
        v.sort();
        v
    }
}

/// Rows per request id in the table after a restart.
fn rows_per_id(s: &Server) -> BTreeMap<i64, u64> {
    let out = s.sql_ok("SELECT volume FROM load FORMAT CSV");
    let mut m = BTreeMap::new();
    for l in out.lines() {
        *m.entry(l.parse::<i64>().unwrap()).or_insert(0) += 1;
    }
    m.remove(&-1);
    m
}

fn check_after_restart(s: &Server, acked: &[u64]) {
    let per_id = rows_per_id(s);
    for id in acked {
        assert_eq!(
            per_id.get(&(*id as i64)),
            Some(&ROWS),
            "acknowledged request {id} lost or partial"
        );
    }
    for (id, n) in &per_id {
        assert_eq!(*n, ROWS, "request {id} partially applied ({n} rows)");
    }
    println!(
        "{} acknowledged requests all present; {} requests present in total",
        acked.len(),
        per_id.len()
    );
}

fn create_table(s: &Server) {
    s.ilp_ok("load,symbol=S0 price=0.5,volume=-1i 1\n");
}

#[test]
fn sigkill_during_bulk_ingest_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_ready(&data, &[]);
    create_table(&s);
    let load = start_load(&s);
    wait_until("50 acknowledged inserts", Duration::from_secs(120), || {
        (load.acked() >= 50).then_some(())
    });
    s.kill9();
    let acked = load.finish();
    assert!(acked.len() >= 50);
    let s2 = Server::start_ready(&data, &[]);
    check_after_restart(&s2, &acked);
}

#[test]
fn sigterm_during_bulk_ingest_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_ready(&data, &["--shutdown-timeout", "30s"]);
    create_table(&s);
    let load = start_load(&s);
    wait_until("50 acknowledged inserts", Duration::from_secs(120), || {
        (load.acked() >= 50).then_some(())
    });
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(60));
    let acked = load.finish();
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        s.log()
    );
    s.wait_log("shut down cleanly");
    let s2 = Server::start_ready(&data, &[]);
    // The final checkpoint covered everything: nothing is replayed from the WAL. (The log is
    // read by a thread, so wait for the line rather than read it once.)
    let line = wait_until("the recovery log line", Duration::from_secs(30), || {
        s2.log()
            .lines()
            .find(|l| l.contains("zeptod::db") && l.contains("recovered"))
            .map(str::to_string)
    });
    assert!(line.contains("wal_records_replayed=0"), "{line}");
    check_after_restart(&s2, &acked);
}

#[test]
fn ready_turns_false_while_draining_and_in_flight_requests_finish() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start_ready(
        &data,
        &["--body-read-timeout", "30s", "--drain-delay", "2s"],
    );
    create_table(&s);
    // A request whose body is still coming: `100 Continue` proves the handler is running.
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let q = enc("INSERT INTO load FORMAT CSV");
    slow.write_all(
        format!(
            "POST /?query={q} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        slow.read_exact(&mut byte).unwrap();
        interim.push(byte[0]);
    }
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    slow.write_all(b"7,S1,1.5,").unwrap();

    s.signal(libc::SIGTERM);
    // During the drain delay /ready says so...
    let msg = wait_until("/ready 503", Duration::from_secs(10), || {
        let r = request(s.addr, "GET", "/ready", &[], b"").ok()?;
        (r.status == 503).then(|| r.expect_error(503, "UNAVAILABLE"))
    });
    assert!(msg.contains("draining"), "{msg}");
    // ...then the listener closes.
    wait_until("listener closed", Duration::from_secs(10), || {
        request(s.addr, "GET", "/ping", &[], b"")
            .is_err()
            .then_some(())
    });
    // The in-flight request still completes and is acknowledged.
    slow.write_all(b"777\n").unwrap();
    let r = harness::read_response(&mut slow).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{\"inserted\":1}\n");
    let status = s.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let s2 = Server::start_ready(&data, &[]);
    let out = s2.sql_ok("SELECT volume FROM load ORDER BY ts FORMAT CSV");
    assert_eq!(out, "-1\n777\n");
}
