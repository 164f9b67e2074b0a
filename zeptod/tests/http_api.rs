//! End-to-end tests of the HTTP API: each starts the real `zeptod` binary on port 0 and
//! drives it over HTTP as a user would (curl-equivalent requests, asserting status codes,
//! bodies and what is stored afterwards).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

#[path = "support/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Float64Array, Int64Array, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use harness::{enc, request, wait_until, Server};

const TRADES_ILP: &str = "trades,symbol=AAPL price=1.5,volume=10i 1000\n\
                          trades,symbol=MSFT price=2.5,volume=20i 2000\n";

fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_ready(&dir.path().join("data"), extra);
    (dir, s)
}

fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn probes_routes_and_errors() {
    let (_d, s) = start(&[]);
    let r = s.get("/ping");
    assert_eq!((r.status, r.text().as_str()), (200, "Ok.\n"));
    let r = s.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = s.get("/ready");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");

    s.get("/nope").expect_error(404, "NOT_FOUND");
    s.get("/write").expect_error(405, "BAD_REQUEST");
    let m = s.sql("SELEKT 1").expect_error(400, "BAD_REQUEST");
    assert!(!m.is_empty());
    s.sql("SELECT * FROM no_such_table")
        .expect_error(404, "NOT_FOUND");
    s.sql("").expect_error(400, "BAD_REQUEST");
    s.sql("SELECT 1 FORMAT XML")
        .expect_error(400, "BAD_REQUEST");
    // Writes over GET are refused.
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    s.get(&format!("/?query={}", enc("INSERT INTO trades FORMAT CSV")))
        .expect_error(405, "BAD_REQUEST");
    s.get(&format!("/?query={}", enc("DROP TABLE trades")))
        .expect_error(405, "BAD_REQUEST");
    assert_eq!(s.count("trades"), 2);
    // A bulk insert into a table that does not exist.
    s.req(
        "POST",
        &format!("/?query={}", enc("INSERT INTO ghosts FORMAT CSV")),
        b"1,a\n",
    )
    .expect_error(404, "NOT_FOUND");
}

#[test]
fn sql_over_get_and_post() {
    let (_d, s) = start(&[]);
    s.sql_ok("CREATE TABLE quotes (ts TIMESTAMP, symbol SYMBOL, bid DOUBLE, size BIGINT)");
    let r = s.sql(
        "INSERT INTO quotes VALUES (1000, 'AAPL', 1.25, 5), (2000, 'AAPL', 1.5, 7), (3000, 'MSFT', 9.0, 1)",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["inserted"], 3);
    // GET with ?query= and FORMAT in the query.
    let r = s.get(&format!(
        "/?query={}",
        enc("SELECT symbol, count(*) AS n FROM quotes GROUP BY symbol ORDER BY symbol FORMAT CSV")
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "AAPL,2\nMSFT,1\n");
    // default_format parameter; an explicit FORMAT clause wins over it.
    let r = s.req(
        "POST",
        "/?default_format=TabSeparated",
        b"SELECT size FROM quotes ORDER BY ts",
    );
    assert_eq!(r.text(), "5\n7\n1\n");
    let r = s.req(
        "POST",
        "/?default_format=TabSeparated",
        b"SELECT size FROM quotes ORDER BY ts FORMAT CSVWithNames",
    );
    assert_eq!(r.text(), "size\n5\n7\n1\n");
    // A string literal that looks like a FORMAT clause is data, not a clause.
    let r = s.sql("SELECT 'x FORMAT CSV' AS s FROM quotes LIMIT 1 FORMAT JSONEachRow");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{\"s\":\"x FORMAT CSV\"}\n");
    // Query parameter text is never spliced into SQL by the server: an injection attempt in
    // default_format is just an unknown format.
    s.req(
        "POST",
        &format!("/?default_format={}", enc("CSV; DROP TABLE quotes")),
        b"SELECT 1",
    )
    .expect_error(400, "BAD_REQUEST");
    assert_eq!(s.count("quotes"), 3);
}

#[test]
fn output_formats() {
    let (_d, s) = start(&[]);
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    let q = "SELECT ts, symbol, price, volume FROM trades ORDER BY ts";

    let r = s.sql(q);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["rows"], 2);
    assert_eq!(v["columns"][0]["name"], "ts");
    assert_eq!(v["columns"][0]["type"], "TIMESTAMP");
    // The engine may hand SYMBOL columns back dictionary-encoded or as plain strings.
    let sym_type = v["columns"][1]["type"].as_str().unwrap();
    assert!(matches!(sym_type, "SYMBOL" | "STRING"), "{sym_type}");
    assert_eq!(v["columns"][2]["type"], "DOUBLE");
    assert_eq!(v["columns"][3]["type"], "BIGINT");
    assert_eq!(v["data"][1][1], "MSFT");
    assert_eq!(v["data"][1][2], 2.5);
    assert_eq!(v["data"][1][3], 20);
    assert!(v["statistics"]["elapsed_us"].is_u64());
    assert!(v["statistics"]["rows_read"].as_u64().unwrap() >= 2);

    let r = s.sql(&format!("{q} FORMAT JSONEachRow"));
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let rows: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["symbol"], "AAPL");
    assert_eq!(rows[0]["volume"], 10);

    let r = s.sql(&format!("{q} FORMAT CSV"));
    assert_eq!(
        r.text(),
        "1970-01-01T00:00:00.000001,AAPL,1.5,10\n1970-01-01T00:00:00.000002,MSFT,2.5,20\n"
    );
    let r = s.sql(&format!("{q} FORMAT CSVWithNames"));
    assert!(
        r.text().starts_with("ts,symbol,price,volume\n"),
        "{}",
        r.text()
    );
    let r = s.sql(&format!("{q} FORMAT TabSeparated"));
    assert_eq!(
        r.text(),
        "1970-01-01T00:00:00.000001\tAAPL\t1.5\t10\n1970-01-01T00:00:00.000002\tMSFT\t2.5\t20\n"
    );
    let r = s.sql(&format!("{q} FORMAT TabSeparatedWithNames"));
    assert!(r.text().starts_with("ts\tsymbol\tprice\tvolume\n"));

    let r = s.sql(&format!("{q} FORMAT Arrow"));
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.apache.arrow.stream")
    );
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(r.body), None).unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 2);
    assert_eq!(
        batches[0]
            .column(3)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        10
    );

    let r = s.sql(&format!("{q} FORMAT Parquet"));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::from(r.body),
    )
    .unwrap()
    .build()
    .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 2);
}

#[test]
fn large_result_streams_in_pieces() {
    let (_d, s) = start(&[]);
    // 100k rows in one CSV body.
    let mut body = String::new();
    for i in 0..100_000u64 {
        body.push_str(&format!("{},S{},{}.5,{i}\n", i + 1, i % 7, i));
    }
    s.ilp_ok("trades,symbol=X price=0.5,volume=0i 0\n");
    let r = s.req(
        "POST",
        &format!("/?query={}", enc("INSERT INTO trades FORMAT CSV")),
        body.as_bytes(),
    );
    assert_eq!(r.json()["inserted"], 100_000, "{}", r.text());
    let r = s.sql("SELECT volume FROM trades FORMAT CSV");
    // Sent with chunked encoding, not as one Content-Length body.
    assert_eq!(
        r.header("transfer-encoding"),
        Some("chunked"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.text().lines().count(), 100_001);
}

fn arrow_body(ts: &[i64], sym: &[&str], price: &[f64], vol: &[i64]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, true),
        Field::new("volume", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(TimestampNanosecondArray::from(ts.to_vec())),
            Arc::new(StringArray::from(sym.to_vec())),
            Arc::new(Float64Array::from(price.to_vec())),
            Arc::new(Int64Array::from(vol.to_vec())),
        ],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    buf
}

#[test]
fn bulk_insert_formats_are_all_or_nothing() {
    let (_d, s) = start(&[]);
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    let insert = |fmt: &str, body: &[u8]| {
        s.req(
            "POST",
            &format!(
                "/?query={}",
                enc(&format!("INSERT INTO trades FORMAT {fmt}"))
            ),
            body,
        )
    };
    // CSV with the query in ?query=.
    let r = insert("CSV", b"3000,IBM,3.5,30\n2024-01-01T00:00:00Z,IBM,4.5,40\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"inserted": 2}));
    // The INSERT line followed by data in one body.
    let r = s.req(
        "POST",
        "/",
        b"INSERT INTO trades FORMAT CSVWithNames\nvolume,symbol,ts\n50,ORCL,5000\n",
    );
    assert_eq!(r.json(), serde_json::json!({"inserted": 1}), "{}", r.text());
    let r = insert(
        "JSONEachRow",
        b"{\"ts\":6000,\"symbol\":\"SAP\",\"price\":6.5,\"volume\":60}\n{\"ts\":\"1970-01-01T00:00:00.000007Z\",\"symbol\":\"SAP\"}\n",
    );
    assert_eq!(r.json(), serde_json::json!({"inserted": 2}), "{}", r.text());
    let r = insert(
        "Arrow",
        &arrow_body(&[8000, 9000], &["NVDA", "NVDA"], &[8.5, 9.5], &[80, 90]),
    );
    assert_eq!(r.json(), serde_json::json!({"inserted": 2}), "{}", r.text());
    let r = insert("TabSeparated", b"10000\tAMD\t10.5\t100\n");
    assert_eq!(r.json(), serde_json::json!({"inserted": 1}), "{}", r.text());
    // A column list: the CSV has just these columns; the others are NULL.
    let r = s.req(
        "POST",
        &format!(
            "/?query={}",
            enc("INSERT INTO trades (ts, symbol, volume) FORMAT CSV")
        ),
        b"11000,ZZ,110\n",
    );
    assert_eq!(r.json(), serde_json::json!({"inserted": 1}), "{}", r.text());
    let out = s.sql_ok("SELECT price, volume FROM trades WHERE symbol = 'ZZ' FORMAT CSV");
    assert_eq!(out, ",110\n");
    assert_eq!(s.count("trades"), 11);

    // Bad rows: 400 naming the row, nothing inserted.
    let m = insert("CSV", b"11000,A,1.0,1\n12000,B,oops,2\n").expect_error(400, "BAD_REQUEST");
    assert!(m.contains("line 2"), "{m}");
    let m = insert("CSV", b"11000,A,1.0,1\nyesterday,B,1.0,2\n").expect_error(400, "BAD_REQUEST");
    assert!(m.contains("line 2") && m.contains("yesterday"), "{m}");
    let m = insert(
        "JSONEachRow",
        b"{\"ts\":1,\"symbol\":\"A\"}\n{\"ts\":2,\"symbol\":\"A\",\"volume\":\"many\"}\n",
    )
    .expect_error(400, "BAD_REQUEST");
    assert!(m.contains("line 2") && m.contains("volume"), "{m}");
    let m = insert("JSONEachRow", b"{\"ts\":1,\"symbol\":\"A\"}\n{not json\n")
        .expect_error(400, "BAD_REQUEST");
    assert!(m.contains("line 2"), "{m}");
    let m = insert("CSV", b"11000,,1.0,1\n").expect_error(400, "BAD_REQUEST");
    assert!(m.contains("row 1") && m.contains("symbol"), "{m}");
    let mut truncated = arrow_body(&[1], &["A"], &[1.0], &[1]);
    truncated.truncate(truncated.len() - 20);
    let m = insert("Arrow", &truncated).expect_error(400, "BAD_REQUEST");
    assert!(m.contains("Arrow"), "{m}");
    insert("Arrow", b"not arrow at all").expect_error(400, "BAD_REQUEST");
    insert("XML", b"<a/>").expect_error(400, "BAD_REQUEST");
    let m = s
        .req(
            "POST",
            "/",
            b"INSERT INTO trades FORMAT CSVWithNames\nts,symbol,colour\n1,A,red\n",
        )
        .expect_error(400, "BAD_REQUEST");
    assert!(m.contains("colour"), "{m}");
    assert_eq!(s.count("trades"), 11);
}

#[test]
fn line_protocol() {
    let (_d, s) = start(&["--admin-key", "test-admin-key-0123456789"]);
    let mut s = s;
    s.auth = Some("test-admin-key-0123456789".into());
    let r = s.req(
        "POST",
        "/write?precision=ms",
        b"cpu,host=a,dc=eu usage=0.5,procs=12i,up=true,note=\"fine\" 1700000000000\n\
          cpu,host=b usage=0.75 1700000001000\n\
          mem,host=a free=1024i 1700000000000\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"inserted": 3}));
    let r = s.req(
        "POST",
        "/api/v2/write?precision=s&bucket=x&org=y",
        b"cpu,host=c usage=1 1700000002\n",
    );
    assert_eq!(r.json(), serde_json::json!({"inserted": 1}), "{}", r.text());

    // The auto-created table: ts, tags as SYMBOL, fields typed, first tag = partition key.
    let v = s.get("/admin/cluster").json();
    let cpu = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cpu")
        .expect("cpu table")
        .clone();
    assert_eq!(cpu["partition_key"], "host");
    assert_eq!(cpu["timestamp"], "ts");
    let cols: Vec<(String, String)> = cpu["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("ts", "TIMESTAMP"),
        ("host", "SYMBOL"),
        ("dc", "SYMBOL"),
        ("usage", "DOUBLE"),
        ("procs", "BIGINT"),
        ("up", "BOOLEAN"),
        ("note", "STRING"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(cols, want);
    let out = s.sql_ok("SELECT host, usage, ts FROM cpu ORDER BY ts FORMAT CSV");
    assert_eq!(
        out,
        "a,0.5,2023-11-14T22:13:20\nb,0.75,2023-11-14T22:13:21\nc,1.0,2023-11-14T22:13:22\n"
    );

    // A bad line: 400 naming it, and nothing from the request is inserted.
    let m = s
        .req(
            "POST",
            "/write",
            b"cpu,host=d usage=1 1\ncpu,host=d usage=zero 2\n",
        )
        .expect_error(400, "BAD_REQUEST");
    assert!(m.contains("line 2"), "{m}");
    let m = s
        .req(
            "POST",
            "/write",
            b"cpu,host=d usage=1 1\ncpu,host=d up=\"yes\" 2\n",
        )
        .expect_error(400, "BAD_REQUEST");
    assert!(m.contains("up") && m.contains("BOOLEAN"), "{m}");
    let m = s
        .req("POST", "/write", b"cpu,host=d colour=\"red\" 2\n")
        .expect_error(400, "BAD_REQUEST");
    assert!(m.contains("colour"), "{m}");
    s.req("POST", "/write?precision=h", b"cpu,host=d usage=1 1\n")
        .expect_error(400, "BAD_REQUEST");
    assert_eq!(s.count("cpu"), 3);
}

#[test]
fn auth_roles_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!(
            "# role:sha256\nreader:{}\nwriter:{}\n",
            sha256_hex("reader-key-123"),
            sha256_hex("writer-key-123")
        ),
    )
    .unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--api-keys-file", keys.to_str().unwrap()],
    );
    let call = |key: Option<&str>, method: &str, path: &str, body: &[u8]| {
        let h = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = h.iter().map(|v| ("Authorization", v.as_str())).collect();
        request(s.addr, method, path, &headers, body).unwrap()
    };
    wait_until("ready", Duration::from_secs(60), || {
        (call(None, "GET", "/ready", b"").status == 200).then_some(())
    });
    // Probes are open.
    assert_eq!(call(None, "GET", "/health", b"").status, 200);
    call(None, "POST", "/", b"SELECT 1").expect_error(401, "UNAUTHORIZED");
    call(Some("wrong"), "POST", "/", b"SELECT 1").expect_error(401, "UNAUTHORIZED");
    let r = call(
        Some("writer-key-123"),
        "POST",
        "/write",
        TRADES_ILP.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = call(
        Some("reader-key-123"),
        "POST",
        "/write",
        TRADES_ILP.as_bytes(),
    )
    .expect_error(403, "FORBIDDEN");
    assert!(m.contains("reader"), "{m}");
    call(
        Some("reader-key-123"),
        "POST",
        "/",
        b"INSERT INTO trades FORMAT CSV\n5,A,1,1\n",
    )
    .expect_error(403, "FORBIDDEN");
    let r = call(
        Some("reader-key-123"),
        "POST",
        "/",
        b"SELECT count(*) FROM trades FORMAT CSV",
    );
    assert_eq!((r.status, r.text().as_str()), (200, "2\n"));
    // No admin key configured: admin endpoints are 403 and say how to configure one.
    let m =
        call(Some("writer-key-123"), "POST", "/admin/snapshot", b"").expect_error(403, "FORBIDDEN");
    assert!(m.contains("--admin-key"), "{m}");
    drop(s);

    // With an admin key (from the environment).
    let cmd_env = [("ZEPTO_ADMIN_KEY", "the-admin-key-0123456789")];
    let mut s = Server::start_with_env(&dir.path().join("data"), &[], &cmd_env);
    s.wait_ready();
    s.auth = Some("the-admin-key-0123456789".into());
    let r = s.req("POST", "/admin/snapshot", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["checkpoint_id"].is_u64(), "{v}");
    assert!(v["wal_segment"].is_u64() && v["wal_offset"].is_u64(), "{v}");
    assert!(v["duration_ms"].is_number(), "{v}");
    let v = s.get("/admin/cluster").json();
    assert_eq!(v["mode"], "single-node");
    assert_eq!(v["node"]["state"], "ready");
    assert_eq!(v["partitions"]["count"], 64);
    s.auth = Some("not-the-key".into());
    s.get("/admin/cluster").expect_error(401, "UNAUTHORIZED");
    s.auth = None;
    s.get("/admin/cluster").expect_error(401, "UNAUTHORIZED");
    // The admin key also works for data.
    s.auth = Some("the-admin-key-0123456789".into());
    assert_eq!(s.count("trades"), 2);
}

#[test]
fn body_limit_and_slow_clients() {
    let (_d, s) = start(&[
        "--max-body-bytes",
        "1000",
        "--header-read-timeout",
        "1s",
        "--body-read-timeout",
        "1s",
    ]);
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    let big = "3000,IBM,3.5,30\n".repeat(100);
    let m = s
        .req(
            "POST",
            &format!("/?query={}", enc("INSERT INTO trades FORMAT CSV")),
            big.as_bytes(),
        )
        .expect_error(413, "TOO_LARGE");
    assert!(m.contains("1000"), "{m}");
    assert_eq!(s.count("trades"), 2);

    // Slowloris: headers that never finish are cut off by the header timeout.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(8), "not cut off");
    // A body that never finishes: 408 from the body timeout, nothing inserted.
    let mut c = TcpStream::connect(s.addr).unwrap();
    let q = enc("INSERT INTO trades FORMAT CSV");
    c.write_all(
        format!("POST /?query={q} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n4000,A,1,1\n")
            .as_bytes(),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = harness::read_response(&mut c).unwrap();
    r.expect_error(408, "TIMEOUT");
    assert_eq!(s.count("trades"), 2);
}

#[test]
fn idle_connections_do_not_block_health() {
    let (_d, s) = start(&["--header-read-timeout", "60s"]);
    // Our own fd limit bounds how many we can open; zeptod raises its own to the hard limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let want = (lim.rlim_cur as usize).saturating_sub(200).min(10_000);
    let mut idle = Vec::with_capacity(want);
    for _ in 0..want {
        match TcpStream::connect(s.addr) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connect #{}: {e}", idle.len()),
        }
    }
    println!("holding {} idle connections", idle.len());
    let t0 = Instant::now();
    let r = s.get("/health");
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop(idle);
}

#[test]
fn metrics_pass_promtool() {
    let (_d, s) = start(&[]);
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    s.sql_ok("SELECT count(*) FROM trades");
    s.sql("SELEKT").expect_error(400, "BAD_REQUEST");
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for needle in [
        "zepto_ingest_rows_total{format=\"ilp\"} 2",
        "zepto_queries_total{status=\"ok\"} 1",
        "zepto_queries_total{status=\"error\"} 1",
        "zepto_query_duration_seconds_count{status=\"ok\"} 1",
        "zepto_write_ack_duration_seconds_count 1",
        "zepto_wal_fsyncs_total",
        "zepto_wal_fsync_duration_seconds_count",
        "zepto_checkpoint_age_seconds",
        "zepto_hdb_bytes",
        "zepto_ingest_ring_depth",
        "process_resident_memory_bytes",
        "zepto_up 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    harness::promtool_check(&text);
}

#[test]
fn pyarrow_reads_arrow_and_parquet() {
    let ok = Command::new("python3")
        .args(["-c", "import pyarrow, pyarrow.parquet"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("SKIPPED pyarrow test: `python3 -c 'import pyarrow'` failed");
        return;
    }
    let (d, s) = start(&[]);
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    let q = "SELECT ts, symbol, price, volume FROM trades ORDER BY ts";
    let arrow = s.sql(&format!("{q} FORMAT Arrow"));
    let parquet = s.sql(&format!("{q} FORMAT Parquet"));
    assert_eq!((arrow.status, parquet.status), (200, 200));
    let a = d.path().join("out.arrows");
    let p = d.path().join("out.parquet");
    std::fs::write(&a, &arrow.body).unwrap();
    std::fs::write(&p, &parquet.body).unwrap();
    let script = r#"
import sys, pyarrow as pa, pyarrow.ipc as ipc, pyarrow.parquet as pq
t1 = ipc.open_stream(open(sys.argv[1], 'rb')).read_all()
t2 = pq.read_table(sys.argv[2])
for t in (t1, t2):
    print(t.num_rows, t.column_names, t.column('symbol').to_pylist(), t.column('volume').to_pylist(), str(t.schema.field('ts').type))
"#;
    let out = Command::new("python3")
        .args(["-c", script, a.to_str().unwrap(), p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = "2 ['ts', 'symbol', 'price', 'volume'] ['AAPL', 'MSFT'] [10, 20] timestamp[ns]";
    assert_eq!(text, format!("{line}\n{line}\n"));
}

#[test]
fn config_errors_and_help() {
    let out = Command::new(harness::bin()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--data-dir",
        "--http-addr",
        "--checkpoint-interval",
        "--ack",
        "--admin-key",
        "--api-keys-file",
        "--max-body-bytes",
        "--query-timeout",
        "--log-format",
        "ZEPTO_DATA_DIR",
        "ZEPTO_ADMIN_KEY",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("z.toml");
    std::fs::write(&cfg, "http_adress = \"127.0.0.1:0\"\n").unwrap();
    let out = Command::new(harness::bin())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http_adress"), "{err}");
}

#[test]
fn json_logs_and_toml_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("z.toml");
    std::fs::write(
        &cfg,
        "log_format = \"json\"\nquery_timeout = \"5s\"\ncheckpoint_interval = \"0\"\n",
    )
    .unwrap();
    let s = Server::start_ready(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let log = s.wait_log("listening");
    let first = log.lines().next().expect("a log line");
    let v: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert!(v["level"].is_string(), "{v}");
}

#[test]
fn without_keys_only_loopback_clients_get_data() {
    let (_d, s) = start(&["--http-addr", "0.0.0.0:0"]);
    s.wait_log("no API keys configured");
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    // The address this host uses towards the outside (no packet is sent).
    let own_ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").map(|_| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip());
    let ip = match own_ip {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip,
        other => {
            println!("SKIPPED non-loopback check: no non-loopback address ({other:?})");
            return;
        }
    };
    let remote = std::net::SocketAddr::new(ip, s.addr.port());
    let m = request(remote, "POST", "/", &[], b"SELECT count(*) FROM trades")
        .unwrap()
        .expect_error(403, "FORBIDDEN");
    assert!(m.contains("loopback"), "{m}");
    request(remote, "POST", "/write", &[], TRADES_ILP.as_bytes())
        .unwrap()
        .expect_error(403, "FORBIDDEN");
    // Probes stay open to everyone.
    assert_eq!(
        request(remote, "GET", "/health", &[], b"").unwrap().status,
        200
    );
    assert_eq!(s.count("trades"), 2);
}

#[test]
fn fsync_failure_makes_writes_and_health_fail() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_env(
        &dir.path().join("data"),
        &[],
        &[("ZEPTO_FAILPOINTS", "wal::fsync=eio@20")],
    );
    s.wait_ready();
    let mut acked = 0;
    let failed = (0..200).find_map(|i| {
        let r = s.req(
            "POST",
            "/write",
            format!("f,k=a v={i} {}\n", i + 1).as_bytes(),
        );
        if r.status == 200 {
            acked += 1;
            None
        } else {
            Some(r)
        }
    });
    let failed = failed.expect("a write failed once fsync fails");
    let m = failed.expect_error(503, "UNAVAILABLE");
    println!("{acked} writes acknowledged before the fsync failure: {m}");
    let m = s.get("/health").expect_error(503, "UNAVAILABLE");
    assert!(m.contains("unhealthy"), "{m}");
    // Readiness follows at once, so a load balancer stops sending traffic here.
    let m = s.get("/ready").expect_error(503, "UNAVAILABLE");
    assert!(m.contains("not ready"), "{m}");
    s.req("POST", "/write", b"f,k=a v=1 1\n")
        .expect_error(503, "UNAVAILABLE");
    // What was acknowledged is still there to read.
    assert_eq!(s.count("f"), acked);
}

#[test]
fn query_timeout_is_408() {
    let (_d, s) = start(&["--query-timeout", "1ms", "--query-memory-limit", "0"]);
    s.ilp_ok("trades,symbol=X price=0.5,volume=0i 0\n");
    let mut body = String::new();
    for i in 0..200_000u64 {
        body.push_str(&format!("{},S{},{}.5,{i}\n", i + 1, i % 1000, i));
    }
    let r = s.req(
        "POST",
        &format!("/?query={}", enc("INSERT INTO trades FORMAT CSV")),
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = s
        .sql("SELECT a.symbol, count(*) FROM trades a JOIN trades b ON a.symbol = b.symbol GROUP BY a.symbol ORDER BY a.symbol")
        .expect_error(408, "TIMEOUT");
    assert!(!m.is_empty());
}

#[test]
fn full_ingest_queue_is_503_with_retry_after() {
    let (_d, s) = start(&["--ingest-queue-bytes", "1"]);
    assert_eq!(s.ilp_ok(TRADES_ILP), 2);
    let addr = s.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Concurrent writers until one of them is refused with 503 (or the deadline passes).
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || -> Option<harness::Resp> {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let body = format!("trades,symbol=W{w} price=1,volume={i}i {}\n", 10 + i);
                    let r = request(addr, "POST", "/write", &[], body.as_bytes()).unwrap();
                    if r.status == 200 {
                        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Some(r);
                    }
                }
                None
            })
        })
        .collect();
    let t0 = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let refused: Vec<harness::Resp> = workers
        .into_iter()
        .filter_map(|w| w.join().unwrap())
        .collect();
    let r = refused.first().expect("no write was refused within 60 s");
    let m = r.expect_error(503, "UNAVAILABLE");
    assert!(m.contains("retry"), "{m}");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Refused writes left nothing behind; acknowledged ones are all there.
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(s.count("trades"), 2 + acked);
}

#[test]
fn query_memory_limit_is_413() {
    let (_d, s) = start(&["--query-memory-limit", "10000"]);
    let mut body = String::new();
    for i in 0..20_000u64 {
        body.push_str(&format!(
            "trades,symbol=S{} price={i}.5,volume={i}i {}\n",
            i % 10,
            i + 1
        ));
    }
    assert_eq!(s.ilp_ok(&body), 20_000);
    s.sql("SELECT * FROM trades ORDER BY price DESC")
        .expect_error(413, "TOO_LARGE");
}

#[test]
fn unusable_data_dir_fails_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"not a directory").unwrap();
    let mut s = Server::start(&not_a_dir, &[]);
    let status = s.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{status:?}");
    s.wait_log("cannot open the database");
}

#[test]
fn keep_alive_connection_serves_several_requests() {
    let (_d, s) = start(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Two pipelined requests, then one that closes the connection.
    c.write_all(
        b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n\
          POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nSELEKT 1\
          GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    assert_eq!(all.matches("HTTP/1.1 400 Bad Request").count(), 1, "{all}");
    assert!(all.ends_with("Ok.\n"), "{all}");
}

fn inline_queries(s: &Server) -> u64 {
    let m = s.get("/metrics").text();
    m.lines()
        .find_map(|l| l.strip_prefix("zepto_queries_inline_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn inline_queries_answer_as_the_pool_and_keep_the_memory_limit() {
    // Default: queries over few rows run on the request's task; `0`: every one on the pool.
    let (_d1, inline) = start(&[]);
    let (_d2, pooled) = start(&["--inline-query-rows", "0"]);
    let (_d3, small) = start(&["--query-memory-limit", "10000"]);
    let mut body = String::new();
    for i in 0..5_000u64 {
        body.push_str(&format!(
            "trades,symbol=S{} price={}.5,volume={}i {}\n",
            i % 10,
            100 + i % 7,
            i % 9 + 1,
            i + 1
        ));
    }
    assert_eq!(inline.ilp_ok(&body), 5_000);
    assert_eq!(pooled.ilp_ok(&body), 5_000);
    assert_eq!(small.ilp_ok(&body), 5_000);
    for sql in [
        "SELECT vwap(price, volume) FROM trades WHERE symbol = 'S3'",
        "SELECT sum(price * volume) / sum(volume) FROM trades WHERE symbol = 'S3'",
        "SELECT symbol, count(*), max(price) FROM trades GROUP BY symbol ORDER BY symbol",
        "SELECT count(*) FROM trades",
    ] {
        let before = inline_queries(&inline);
        let a = inline.sql(sql);
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(
            inline_queries(&inline),
            before + 1,
            "{sql} did not run inline"
        );
        let b = pooled.sql(sql);
        assert_eq!(b.status, 200, "{}", b.text());
        assert_eq!(a.json()["data"], b.json()["data"], "{sql}");
        assert_eq!(
            a.json()["statistics"]["rows_read"],
            b.json()["statistics"]["rows_read"]
        );
    }
    assert_eq!(inline_queries(&pooled), 0);
    // A hash join never runs inline.
    let before = inline_queries(&inline);
    let r = inline.sql("SELECT count(*) FROM trades a JOIN trades b ON a.ts = b.ts");
    assert_eq!(
        r.json()["data"],
        serde_json::json!([[5000]]),
        "{}",
        r.text()
    );
    assert_eq!(inline_queries(&inline), before);
    // The memory limit holds on the inline path.
    let before = inline_queries(&small);
    small
        .sql("SELECT * FROM trades ORDER BY price DESC")
        .expect_error(413, "TOO_LARGE");
    assert_eq!(inline_queries(&small), before + 1);
}

/// Name and niceness of every thread of a process (Linux).
#[cfg(target_os = "linux")]
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the `(comm)`: state is field 3, nice field 19.
        let after = stat.rsplit_once(')').unwrap().1;
        let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((comm.trim().to_string(), nice));
    }
    out
}

/// `--ingest-nice`: the ingest threads, the WAL writer and the maintenance thread run below
/// the threads that serve queries, which keep the process's priority; 0 turns it off; a
/// value outside 0-19 is refused at startup.
#[cfg(target_os = "linux")]
#[test]
fn ingest_threads_run_below_the_query_threads() {
    for (args, lower) in [(&[][..], 10), (&["--ingest-nice", "0"][..], 0)] {
        let (_dir, s) = start(args);
        assert_eq!(s.ilp_ok(TRADES_ILP), 2);
        let threads = thread_nices(s.child.id());
        let base = threads
            .iter()
            .find(|(name, _)| name == "zeptod")
            .map(|t| t.1)
            .unwrap();
        let want = (base + lower).min(19);
        for name in ["zepto-ingest-0", "zepto-wal", "zepto-maint", "zepto-scrub"] {
            let got = threads.iter().find(|(n, _)| n == name);
            assert_eq!(got.map(|t| t.1), Some(want), "{name} in {threads:?}");
        }
        // Every thread that may run a query (async workers, blocking pool, the parallel
        // queries' helpers) is at `base`.
        assert!(
            threads
                .iter()
                .filter(|(n, _)| n == "zeptod" || n.starts_with("zepto-query"))
                .all(|t| t.1 == base),
            "{threads:?}"
        );
        let helpers = threads
            .iter()
            .filter(|(n, _)| n.starts_with("zepto-query"))
            .count();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(helpers, cores - 1, "{threads:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(harness::bin())
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--ingest-nice",
            "20",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ingest_nice must be between 0 and 19"),
        "{err}"
    );
}

const VERIFY_ADMIN_KEY: &str = "the-admin-key-0123456789";

/// A server on `data` (with `flags`) holding table `m`: 2000 rows with ids 7,000,000.., all
/// written to HDB files (`--seal-idle 1s` among the flags).
fn server_with_hdb_rows(data: &std::path::Path, flags: &[&str]) -> Server {
    let mut s = Server::start_with_env(data, flags, &[("ZEPTO_ADMIN_KEY", VERIFY_ADMIN_KEY)]);
    s.wait_ready();
    s.auth = Some(VERIFY_ADMIN_KEY.into());
    s.sql_ok("CREATE TABLE m (ts TIMESTAMP, s SYMBOL, id BIGINT)");
    let values: Vec<String> = (0..2000)
        .map(|i| format!("({}, 's{}', {})", 1_000_000_000 + i, i % 4, 7_000_000 + i))
        .collect();
    s.sql_ok(&format!("INSERT INTO m VALUES {}", values.join(",")));
    // Idle for --seal-idle: the chunks are written to HDB files.
    wait_until("the rows are in HDB files", Duration::from_secs(30), || {
        (s.metric("zepto_hdb_chunks") > 0 && s.metric("zepto_memory_rows") == 0).then_some(())
    });
    s
}

/// Flip bits (`mask`) of the stored id 7001234 in place (the file keeps its size: a running
/// server's mapping of it stays valid); the file's name.
fn flip_stored_id(data: &std::path::Path, mask: u8) -> String {
    use std::io::{Seek, SeekFrom, Write};
    let needle = 7_001_234i64.to_le_bytes();
    let file = harness::files_under(&data.join("hdb"))
        .into_iter()
        .find(|f| {
            let bytes = std::fs::read(f).unwrap();
            let Some(at) = bytes.windows(8).position(|w| w == needle) else {
                return false;
            };
            let mut h = std::fs::OpenOptions::new().write(true).open(f).unwrap();
            h.seek(SeekFrom::Start(at as u64)).unwrap();
            h.write_all(&[bytes[at] ^ mask]).unwrap();
            true
        })
        .expect("id 7001234 is in an HDB file");
    file.file_name().unwrap().to_str().unwrap().to_string()
}

/// `--scrub-interval`: a file whose bytes change on disk under a running server (it was
/// written here, so no first read ever checks it) is found by the periodic re-check and
/// refused from then on, without a restart.
#[test]
fn the_periodic_recheck_finds_a_file_changed_under_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = server_with_hdb_rows(&data, &["--seal-idle", "1s", "--scrub-interval", "1s"]);
    let want = (0..2000i64).map(|i| 7_000_000 + i).sum::<i64>();
    assert_eq!(
        s.sql("SELECT sum(id) FROM m FORMAT CSV").text(),
        format!("{want}\n")
    );
    // One bit of one stored value flips while the server runs.
    let name = flip_stored_id(&data, 0x02);
    wait_until(
        "the re-check found the file",
        Duration::from_secs(30),
        || (s.metric("zepto_hdb_chunks_corrupt") == 1).then_some(()),
    );
    let m = s.sql("SELECT sum(id) FROM m").expect_error(500, "INTERNAL");
    assert!(m.contains(&name) && m.contains("checksum mismatch"), "{m}");
    assert!(s.log().contains("it changed since it was last checked"));
}

#[test]
fn a_bit_flipped_in_an_hdb_file_is_reported_by_queries_and_admin_verify() {
    let admin = [("ZEPTO_ADMIN_KEY", VERIFY_ADMIN_KEY)];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = server_with_hdb_rows(&data, &["--seal-idle", "1s"]);
    let v = s.req("POST", "/admin/verify", b"").json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["files"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["files"], v["checked_before"], "written here: {v}");
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(30)).success());

    // One bit of one stored value flipped on disk (id 7001234).
    let name = flip_stored_id(&data, 0x02);
    let mut s = Server::start_with_env(&data, &["--seal-idle", "1s"], &admin);
    s.wait_ready();
    s.auth = Some(VERIFY_ADMIN_KEY.into());
    // A count from metadata still answers; reading the values is an error naming the file.
    assert_eq!(s.count("m"), 2000);
    let m = s.sql("SELECT sum(id) FROM m").expect_error(500, "INTERNAL");
    assert!(m.contains(&name) && m.contains("checksum mismatch"), "{m}");
    assert_eq!(s.metric("zepto_hdb_chunks_corrupt"), 1);
    let v = s.req("POST", "/admin/verify", b"").json();
    assert_eq!(v["ok"], false, "{v}");
    let corrupt = v["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1, "{v}");
    assert_eq!(corrupt[0]["table"], "m");
    assert!(corrupt[0]["path"].as_str().unwrap().ends_with(&name), "{v}");
    assert!(v["bytes_checked"].as_u64().is_some(), "{v}");
    s.auth = None;
    s.req("POST", "/admin/verify", b"")
        .expect_error(401, "UNAUTHORIZED");
}
