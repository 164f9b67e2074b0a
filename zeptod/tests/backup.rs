//! Backups, continuous WAL archiving and restore on a single node (ADR 0011), against a
//! `file://` location always and against a real S3 API (moto's server mode on loopback)
//! where moto is installed (else the S3 variant prints `SKIPPED: <reason>`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "support/harness.rs"]
mod harness;
#[path = "support/objstore.rs"]
mod objstore;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{enc, wait_until, Server};
use objstore::{tool, Location, Moto};

const KEY: &str = "backup-test-admin-key";

fn start(data: &Path, loc: &Location, extra: &[&str]) -> Server {
    let mut args = vec![
        "--admin-key",
        KEY,
        "--archive-url",
        &loc.url,
        "--archive-interval",
        "300ms",
        "--partitions",
        "4",
    ];
    let flags = loc.flag_refs();
    args.extend(flags.iter().copied());
    args.extend(extra.iter().copied());
    let mut s = Server::start_with_env(data, &args, &loc.env_refs());
    s.auth = Some(KEY.into());
    s.wait_ready();
    s
}

/// A restored copy: no archiving (its sequence numbers start again; archiving it into the
/// source location would mix two histories).
fn start_restored(data: &Path) -> Server {
    let mut s = Server::start(data, &["--admin-key", KEY, "--partitions", "4"]);
    s.auth = Some(KEY.into());
    s.wait_ready();
    s
}

fn insert(s: &Server, ids: std::ops::Range<u64>) {
    let body: String = ids
        .map(|i| {
            format!(
                "{},S{},{i}\n",
                1_700_000_000_000_000_000u64 + i * 1_000_000,
                i % 13
            )
        })
        .collect();
    let r = s.req(
        "POST",
        &format!("/?query={}", enc("INSERT INTO t FORMAT CSV")),
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn ids(s: &Server) -> Vec<u64> {
    let out = s.sql_ok("SELECT id FROM t ORDER BY id FORMAT CSV");
    out.lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// Exactly the ids `0..n`, each once.
fn assert_ids(got: &[u64], n: u64) {
    let set: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len(), "duplicated rows");
    let missing: Vec<u64> = (0..n).filter(|i| !set.contains(i)).collect();
    assert!(
        missing.is_empty() && got.len() as u64 == n,
        "{} rows, {} missing, e.g. {:?}",
        got.len(),
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}

fn backup_status(s: &Server) -> serde_json::Value {
    let r = s.get("/admin/backup");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Wait until the archive holds every record written so far.
fn wait_archived(s: &Server) {
    let written = now_ms();
    wait_until("WAL archive caught up", Duration::from_secs(30), || {
        let a = &backup_status(s)["archive"];
        (a["caught_up_unix_ms"].as_i64().unwrap() > written).then_some(())
    });
}

fn restore_args<'a>(loc: &'a Location, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["restore", "--from", &loc.url];
    a.extend(loc.flag_refs());
    a.extend(extra.iter().copied());
    a
}

/// Base backup, archive, kill, restore; incremental reuse; refusal of a non-empty target;
/// prune.
fn round_trip(loc: &Location) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = start(&data, loc, &[]);
    s.sql_ok("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, id BIGINT)");
    insert(&s, 0..1000);

    let r = s.req("POST", "/admin/backup", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    assert_eq!(first["rows"], 1000, "{first}");
    assert!(first["objects_uploaded"].as_u64().unwrap() > 0, "{first}");

    // Only partitions that changed upload anything: the rest are reused by content.
    insert(&s, 1000..1001);
    let r = s.req("POST", "/admin/backup", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json();
    assert_eq!(second["rows"], 1001, "{second}");
    assert!(second["objects_reused"].as_u64().unwrap() > 0, "{second}");
    assert!(
        second["objects_uploaded"].as_u64().unwrap()
            < first["objects_uploaded"].as_u64().unwrap() + 2,
        "{second}"
    );

    // Rows after the base backup reach the location only through the WAL archive.
    let before_third = now_ms();
    insert(&s, 1001..3000);
    wait_archived(&s);
    let metrics = s.get("/metrics").text();
    assert!(metrics.contains("zepto_archive_records_total"), "{metrics}");
    s.kill9();

    let env = loc.env_refs();
    let mut list = vec!["backup", "list", "--from", &loc.url];
    list.extend(loc.flag_refs());
    let (ok, out, err) = tool(&list, &env);
    assert!(ok, "{err}");
    assert_eq!(out.matches("created").count(), 2, "{out}");

    // The old data dir is not empty: refused.
    let (ok, _, err) = tool(
        &restore_args(loc, &["--data-dir", data.to_str().unwrap()]),
        &env,
    );
    assert!(!ok);
    assert!(err.contains("not empty"), "{err}");

    let restored = dir.path().join("restored");
    let t0 = Instant::now();
    let (ok, out, err) = tool(
        &restore_args(loc, &["--data-dir", restored.to_str().unwrap()]),
        &env,
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    println!(
        "[{}] restore of {} base rows + {} archived rows took {:?} ({} bytes)",
        loc.name,
        report["base_rows"],
        report["wal_rows"],
        t0.elapsed(),
        report["bytes_downloaded"]
    );
    assert_eq!(report["base_rows"], 1001, "{report}");
    assert!(!dir.path().join("restored.restoring").exists());
    let s2 = start_restored(&restored);
    assert_ids(&ids(&s2), 3000);
    drop(s2);

    // Point in time: before the third insert there were 1001 rows.
    let past = dir.path().join("past");
    let until = before_third.to_string();
    let (ok, _, err) = tool(
        &restore_args(
            loc,
            &["--data-dir", past.to_str().unwrap(), "--until", &until],
        ),
        &env,
    );
    assert!(ok, "{err}");
    let s4 = start_restored(&past);
    assert_ids(&ids(&s4), 1001);
    drop(s4);

    // Retention: keep the newest backup only; the restore from it still has every row.
    let mut prune = vec![
        "backup",
        "prune",
        "--from",
        &loc.url,
        "--keep",
        "1",
        "--min-age",
        "0s",
    ];
    prune.extend(loc.flag_refs());
    let (ok, out, err) = tool(&prune, &env);
    assert!(ok, "{err}");
    assert!(out.contains("deleted 1 backups"), "{out}");
    let (ok, out, _) = tool(&list, &env);
    assert!(ok);
    assert_eq!(out.matches("created").count(), 1, "{out}");
    if let Some(bucket) = &loc.dir {
        // What is left is exactly what the kept backup and the archive after it need (an
        // archived object that reaches past the kept cut stays whole).
        let manifests = harness::files_under(&bucket.join("backups"));
        assert_eq!(manifests.len(), 1, "{manifests:?}");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifests[0]).unwrap()).unwrap();
        let named: BTreeSet<String> = m["parts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["objects"].as_array().unwrap().iter())
            .map(|o| o["key"].as_str().unwrap().to_string())
            .collect();
        let left: BTreeSet<String> = harness::files_under(&bucket.join("objects"))
            .iter()
            .map(|p| p.strip_prefix(bucket).unwrap().display().to_string())
            .collect();
        assert_eq!(left, named);
        for w in harness::files_under(&bucket.join("wal")) {
            let name = w.file_name().unwrap().to_str().unwrap().to_string();
            let partition: usize = w.parent().unwrap().file_name().unwrap().to_str().unwrap()[1..]
                .parse()
                .unwrap();
            let end: u64 = name.split('-').nth(1).unwrap().parse().unwrap();
            let cut = m["parts"][partition]["next_seq"].as_u64().unwrap();
            assert!(
                end > cut,
                "{name} is older than the kept backup's cut {cut}"
            );
        }
    }
    let again = dir.path().join("again");
    let (ok, _, err) = tool(
        &restore_args(loc, &["--data-dir", again.to_str().unwrap()]),
        &env,
    );
    assert!(ok, "{err}");
    let s3 = start_restored(&again);
    assert_ids(&ids(&s3), 3000);
}

#[test]
fn round_trip_file() {
    let bucket = tempfile::tempdir().unwrap();
    round_trip(&Location::file(bucket.path()));
}

#[test]
fn round_trip_s3() {
    let moto = match Moto::start() {
        Ok(m) => m,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    moto.create_bucket("zepto-backups");
    round_trip(&Location::s3(&moto, "zepto-backups", "prod/db1"));
}

/// A damaged, truncated or missing object fails the restore with the object named, and
/// leaves no restored data directory behind.
#[test]
fn damaged_objects_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let loc = Location::file(&bucket);
    let mut s = start(&dir.path().join("data"), &loc, &[]);
    s.sql_ok("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, id BIGINT)");
    insert(&s, 0..500);
    let r = s.req("POST", "/admin/backup", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    insert(&s, 500..600);
    wait_archived(&s);
    s.kill9();

    let files = |sub: &str| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = harness::files_under(&bucket.join(sub));
        v.sort();
        v
    };
    let restore = |n: &str| {
        let target = dir.path().join(n);
        let (ok, _, err) = tool(
            &[
                "restore",
                "--from",
                &loc.url,
                "--data-dir",
                target.to_str().unwrap(),
            ],
            &[],
        );
        assert!(
            ok || !target.exists(),
            "a failed restore left {}",
            target.display()
        );
        (ok, err)
    };
    let name = |p: &Path| p.strip_prefix(&bucket).unwrap().display().to_string();

    // One flipped byte in a row object.
    let obj = files("objects").into_iter().next().unwrap();
    let good = std::fs::read(&obj).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&obj, &bad).unwrap();
    let (ok, err) = restore("r1");
    assert!(!ok);
    assert!(
        err.contains(&name(&obj)) && err.contains("corrupt"),
        "{err}"
    );
    // Truncated.
    std::fs::write(&obj, &good[..good.len() - 10]).unwrap();
    let (ok, err) = restore("r2");
    assert!(!ok);
    assert!(
        err.contains(&name(&obj)) && err.contains("truncated"),
        "{err}"
    );
    // Missing.
    std::fs::remove_file(&obj).unwrap();
    let (ok, err) = restore("r3");
    assert!(!ok);
    assert!(
        err.contains(&name(&obj)) && err.contains("missing"),
        "{err}"
    );
    std::fs::write(&obj, &good).unwrap();

    // A truncated archived WAL object.
    let wal = files("wal").into_iter().next_back().unwrap();
    let good = std::fs::read(&wal).unwrap();
    std::fs::write(&wal, &good[..good.len() - 3]).unwrap();
    let (ok, err) = restore("r4");
    assert!(!ok);
    assert!(err.contains(&name(&wal)), "{err}");
    std::fs::write(&wal, &good).unwrap();

    let (ok, err) = restore("r5");
    assert!(ok, "{err}");
}

/// Unreachable endpoints and missing buckets are clear errors; an archive that cannot
/// upload never fails ingest or queries and shows in /metrics and /admin/backup.
#[test]
fn bad_locations() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{closed}");
    let creds = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ];
    let t0 = Instant::now();
    let (ok, _, err) = tool(
        &[
            "backup",
            "list",
            "--from",
            "s3://b/p",
            "--s3-endpoint",
            &endpoint,
            "--store-timeout",
            "3s",
        ],
        &creds,
    );
    assert!(!ok);
    assert!(
        err.contains("s3://b/p") && err.contains("list") && err.contains("unreachable"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());

    let (ok, _, err) = tool(&["backup", "list", "--from", "ftp://x/y"], &[]);
    assert!(!ok);
    assert!(err.contains("unknown scheme"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = tool(
        &[
            "restore",
            "--from",
            &format!("file://{}", dir.path().join("none").display()),
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("no complete backup"), "{err}");

    // The archive cannot reach its store: writes and reads go on, failures are counted.
    let s3 = Location {
        url: "s3://nowhere/x".into(),
        flags: vec![
            "--s3-endpoint".into(),
            endpoint.clone(),
            "--store-timeout".into(),
            "2s".into(),
        ],
        env: creds
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        name: "unreachable",
        dir: None,
    };
    let s = start(&dir.path().join("data"), &s3, &[]);
    s.sql_ok("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, id BIGINT)");
    insert(&s, 0..100);
    wait_until("archive failures counted", Duration::from_secs(30), || {
        let m = s.get("/metrics").text();
        m.lines()
            .find(|l| l.starts_with("zepto_archive_failures_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .filter(|&n| n > 0)
    });
    let a = backup_status(&s);
    assert!(
        a["archive"]["last_error"]
            .as_str()
            .unwrap()
            .contains("nowhere"),
        "{a}"
    );
    insert(&s, 100..200);
    assert_eq!(ids(&s).len(), 200);
    let r = s.req("POST", "/admin/backup", b"");
    assert_eq!(r.status, 502, "{}", r.text());

    // A bucket that does not exist on a real S3 API.
    if let Ok(moto) = Moto::start() {
        let (ok, _, err) = tool(
            &[
                "backup",
                "list",
                "--from",
                "s3://no-such-bucket/p",
                "--s3-endpoint",
                &moto.endpoint(),
            ],
            &creds,
        );
        assert!(!ok);
        assert!(
            err.contains("no-such-bucket") && err.contains("the bucket does not exist"),
            "{err}"
        );
    } else {
        println!("SKIPPED (missing bucket on S3): moto is not installed");
    }
    // Credentials the store does not know.
    if let Ok(moto) = Moto::start_with(true) {
        let (ok, _, err) = tool(
            &[
                "backup",
                "list",
                "--from",
                "s3://some-bucket/p",
                "--s3-endpoint",
                &moto.endpoint(),
            ],
            &[
                ("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG"),
                ("AWS_SECRET_ACCESS_KEY", "wrong"),
                ("AWS_REGION", "us-east-1"),
            ],
        );
        assert!(!ok);
        assert!(err.contains("refused the credentials"), "{err}");
    } else {
        println!("SKIPPED (wrong credentials on S3): moto is not installed");
    }
    let got: BTreeSet<u64> = ids(&s).into_iter().collect();
    assert_eq!(got.len(), 200);
}

/// A location written by the first version of the backup format (checked in under
/// `tests/data/backup-v1`: two base backups of 2 rows, then 1 row archived after them) still
/// restores, to exactly its rows.
#[test]
fn a_location_of_format_1_restores() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/backup-v1");
    let dir = tempfile::tempdir().unwrap();
    // A copy: restore only reads, but the checked-in files must stay as they are.
    let bucket = dir.path().join("bucket");
    copy_dir(&src, &bucket);
    let url = format!("file://{}", bucket.display());
    let (ok, out, err) = tool(&["backup", "list", "--from", &url], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("20261126T023920218Z") && out.contains("20261126T023920772Z"),
        "{out}"
    );
    let data = dir.path().join("d");
    let (ok, out, err) = tool(
        &[
            "restore",
            "--from",
            &url,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("\"base_rows\":2") && out.contains("\"wal_rows\":1"),
        "{out}"
    );
    let mut s = Server::start(&data, &["--admin-key", KEY]);
    s.auth = Some(KEY.into());
    s.wait_ready();
    assert_eq!(
        s.sql_ok("SELECT * FROM trades ORDER BY ts FORMAT CSV"),
        "2024-01-02T09:30:00,AAPL,185.5\n2024-01-02T09:30:01,MSFT,370.1\n2024-01-02T09:30:02,AAPL,185.7\n"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
