//! Test harness: start the real `zeptod` binary on port 0, read the bound address from its
//! stdout, and talk HTTP/1.1 to it with a tiny blocking client (so that tests can also send
//! malformed and slow requests). Waiting is always polling with a deadline.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every file under `dir`, recursively, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Poll `f` until it returns `Some`, or panic after `timeout` with `what`.
pub(crate) fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Assert an error response: status and JSON error code; returns the message.
    pub(crate) fn expect_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        v["error"]["message"]
            .as_str()
            .expect("error message")
            .to_string()
    }
}

/// Percent-encode a query-string value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Send one request on a fresh connection and read the whole response.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

/// Read and parse one HTTP/1.1 response (Content-Length, chunked or until close).
pub(crate) fn read_response(s: &mut TcpStream) -> std::io::Result<Resp> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(&format!(
                "no header end in {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(status_line))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let nl = rest[pos..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk header"))?;
            let size_str = String::from_utf8_lossy(&rest[pos..pos + nl]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            pos += nl + 2;
            if size == 0 {
                break;
            }
            if pos + size > rest.len() {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        out
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// A running zeptod.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: Arc<Mutex<String>>,
    pub(crate) auth: Option<String>,
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zeptod")
}

impl Server {
    /// Start zeptod on 127.0.0.1:0 with `data_dir` and extra flags; wait for the address line.
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    /// Like [`Server::start`] with extra environment variables.
    pub(crate) fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("--data-dir").arg(data_dir);
        if !extra.contains(&"--http-addr") {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        cmd.args(["--log-level", "info"])
            .args(extra)
            .env_remove("ZEPTO_ADMIN_KEY")
            .env_remove("ZEPTO_API_KEYS_FILE")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn zeptod");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("zeptod listening on http=") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => {
                let mut a: SocketAddr = a.parse().expect("address");
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                a
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "zeptod did not print its address; log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
            auth: None,
        }
    }

    /// Start and wait until /ready answers 200.
    pub(crate) fn start_ready(data_dir: &Path, extra: &[&str]) -> Server {
        let s = Server::start(data_dir, extra);
        s.wait_ready();
        s
    }

    pub(crate) fn wait_ready(&self) {
        wait_until("zeptod /ready", Duration::from_secs(120), || match request(
            self.addr,
            "GET",
            "/ready",
            &[],
            b"",
        ) {
            Ok(r) if r.status == 200 => Some(()),
            _ => None,
        });
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it contains `needle` (stderr is read by a thread, so a line the server
    /// has written may not be here yet); panics with the log after 30 s.
    pub(crate) fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A request with this server's bearer key (if set).
    pub(crate) fn req(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        let auth = self.auth.as_ref().map(|k| format!("Bearer {k}"));
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        }
        request(self.addr, method, path, &h, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nlog:\n{}", self.log()))
    }

    pub(crate) fn get(&self, path: &str) -> Resp {
        self.req("GET", path, b"")
    }

    /// POST SQL in the body.
    pub(crate) fn sql(&self, sql: &str) -> Resp {
        self.req("POST", "/", sql.as_bytes())
    }

    /// POST SQL and expect 200; returns the body.
    pub(crate) fn sql_ok(&self, sql: &str) -> String {
        let r = self.sql(sql);
        assert_eq!(r.status, 200, "{sql}: {}", r.text());
        r.text()
    }

    /// POST line protocol and expect 200 `{"inserted":n}`.
    pub(crate) fn ilp_ok(&self, body: &str) -> u64 {
        let r = self.req("POST", "/write", body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["inserted"].as_u64().expect("inserted")
    }

    /// `SELECT count(*)` of a table through CSV output.
    /// The value of an unlabelled metric in `/metrics`.
    pub(crate) fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a count in:\n{text}"))
    }

    pub(crate) fn count(&self, table: &str) -> u64 {
        let out = self.sql_ok(&format!("SELECT count(*) FROM {table} FORMAT CSV"));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("count: {out}"))
    }

    pub(crate) fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Wait for the process to exit, with a deadline.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_until("zeptod to exit", timeout, || {
            self.child.try_wait().expect("try_wait")
        })
    }

    pub(crate) fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(30));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `promtool check metrics` on a /metrics body; skipped (printed) where promtool is missing.
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write as _;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        println!("SKIPPED promtool check: promtool not installed (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `zeptod ARGS` (a tool: backup, restore, prestop) to the end: `(success, stdout, stderr)`.
pub(crate) fn tool(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("ZEPTO_ADMIN_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
