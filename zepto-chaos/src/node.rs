//! Real `zeptod` processes: start (port 0 the first time, the same port on restart),
//! SIGKILL, SIGSTOP/SIGCONT, SIGTERM, restart with or without the data directory, and a
//! log file per node that is kept when a run fails.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// How to run one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u32,
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Extra flags.
    pub args: Vec<String>,
    /// Extra environment (for example `ZEPTO_FAILPOINTS`).
    pub env: Vec<(String, String)>,
}

/// A node and its current process, if running.
#[derive(Debug)]
pub struct Node {
    pub spec: NodeSpec,
    child: Option<Child>,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
}

impl Node {
    pub fn new(spec: NodeSpec) -> Node {
        Node {
            spec,
            child: None,
            http: None,
            grpc: None,
        }
    }

    /// The bound gRPC address of the running process (cluster mode; it changes on restart
    /// when started with `--grpc-addr 127.0.0.1:0`).
    pub fn grpc(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// The process id of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A process that did not exit in time: save every thread's stack (`gdb -batch`, where
    /// gdb is installed) next to its log as `<log>.hang.txt`, for the run's report. Returns
    /// the file written, if any.
    pub fn capture_stacks(&self) -> Option<PathBuf> {
        let pid = self.pid()?;
        let out = std::process::Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        let path = self.spec.log.with_extension("hang.txt");
        let mut text = out.stdout;
        text.extend_from_slice(&out.stderr);
        std::fs::write(&path, text).ok()?;
        Some(path)
    }

    /// The HTTP address (known after the first start).
    pub fn http(&self) -> Result<SocketAddr, Error> {
        self.http
            .ok_or_else(|| Error::Harness(format!("node {} never started", self.spec.id)))
    }

    pub fn url(&self) -> Result<String, Error> {
        Ok(format!("http://{}", self.http()?))
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Start the process and wait until it printed its address (not until it is ready).
    pub fn start(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::Harness(format!(
                "node {} is already running",
                self.spec.id
            )));
        }
        let addr = match self.http {
            Some(a) => a.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spec.log)
            .map_err(|e| Error::Io(format!("open {}", self.spec.log.display()), e))?;
        let _ = writeln!(
            log,
            "=== zepto-chaos: starting node {} on {addr}",
            self.spec.id
        );
        let stderr = log
            .try_clone()
            .map_err(|e| Error::Io("duplicate the log file".into(), e))?;
        let mut cmd = Command::new(&self.spec.bin);
        cmd.arg("--http-addr")
            .arg(&addr)
            .arg("--data-dir")
            .arg(&self.spec.data_dir)
            .args(&self.spec.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Io(format!("start {}", self.spec.bin.display()), e))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Harness("no stdout pipe".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("zeptod listening on http=") {
                    let _ = tx.send((true, a.to_string()));
                }
                if let Some(a) = line.strip_prefix("zeptod listening on grpc=") {
                    let _ = tx.send((false, a.to_string()));
                }
                let _ = writeln!(log, "{line}");
            }
        });
        self.child = Some(child);
        self.grpc = None;
        let cluster = self.spec.args.iter().any(|a| a == "--peers");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut http = None;
        while http.is_none() || (cluster && self.grpc.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (is_http, addr) = rx.recv_timeout(left).map_err(|_| {
                Error::Harness(format!(
                    "node {} did not print its addresses within 60 s (log: {})",
                    self.spec.id,
                    self.spec.log.display()
                ))
            })?;
            let parsed: SocketAddr = addr
                .parse()
                .map_err(|e| Error::Harness(format!("bad address '{addr}': {e}")))?;
            if is_http {
                http = Some(parsed);
            } else {
                self.grpc = Some(parsed);
            }
        }
        self.http = http;
        Ok(())
    }

    fn signal(&mut self, sig: i32) -> Result<(), Error> {
        let Some(c) = &self.child else {
            return Err(Error::Harness(format!(
                "node {} is not running",
                self.spec.id
            )));
        };
        let pid =
            libc::pid_t::try_from(c.id()).map_err(|_| Error::Harness("pid out of range".into()))?;
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(Error::Io(
                format!("signal {sig} to node {}", self.spec.id),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGKILL)?;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.grpc = None;
        Ok(())
    }

    /// SIGSTOP: the process is frozen (a "zombie" primary).
    pub fn pause(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM (graceful shutdown).
    pub fn terminate(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGTERM)
    }

    /// Wait up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = &mut self.child else {
                return Err(Error::Harness(format!(
                    "node {} is not running",
                    self.spec.id
                )));
            };
            if let Some(status) = c
                .try_wait()
                .map_err(|e| Error::Io("wait for zeptod".into(), e))?
            {
                self.child = None;
                self.grpc = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10)); // poll interval
        }
    }

    /// Delete the data directory (a replaced pod with an empty disk).
    pub fn wipe(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::Harness("wipe a running node".into()));
        }
        remove_dir(&self.spec.data_dir)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn remove_dir(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io(format!("remove {}", p.display()), e)),
    }
}
