//! Backup locations for the backup tests: a `file://` directory (always), and a real S3 API
//! on loopback from moto's server mode (`moto_server`, `pip install 'moto[server]'`; `.ci/run`
//! installs it), started by the test. Where moto is missing, [`Moto::start`] says why and the
//! S3 variant prints `SKIPPED: <reason>`.

#![allow(dead_code, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{request, wait_until};

/// A moto S3 server on 127.0.0.1, killed on drop.
pub(crate) struct Moto {
    child: Child,
    pub(crate) port: u16,
}

impl Moto {
    /// Start moto, or `Err(reason)` when it is not installed.
    pub(crate) fn start() -> Result<Moto, String> {
        Moto::start_with(false)
    }

    /// With `check_credentials`, moto refuses keys its IAM does not know (every key).
    pub(crate) fn start_with(check_credentials: bool) -> Result<Moto, String> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let p = port.to_string();
        let spawn = |cmd: &mut Command| {
            if check_credentials {
                cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
            }
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()
        };
        let child = match spawn(Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &p])) {
            Ok(c) => c,
            Err(_) => {
                let ok = Command::new("python3")
                    .args(["-c", "import moto.server"])
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err("moto is not installed (pip install 'moto[server]')".into());
                }
                spawn(Command::new("python3").args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &p,
                ]))
                .map_err(|e| format!("cannot start moto: {e}"))?
            }
        };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let m = Moto { child, port };
        wait_until("moto listening", Duration::from_secs(30), || {
            request(addr, "GET", "/", &[], b"").ok()
        });
        Ok(m)
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a bucket (moto takes unsigned requests).
    pub(crate) fn create_bucket(&self, name: &str) {
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let r = request(addr, "PUT", &format!("/{name}"), &[], b"").unwrap();
        assert!(
            r.status == 200,
            "create bucket {name}: {} {}",
            r.status,
            r.text()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test writes its backups, and the flags and environment zeptod needs for it.
pub(crate) struct Location {
    pub(crate) url: String,
    pub(crate) flags: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) name: &'static str,
    /// For `file://`: the directory.
    pub(crate) dir: Option<std::path::PathBuf>,
}

impl Location {
    pub(crate) fn file(dir: &std::path::Path) -> Location {
        Location {
            url: format!("file://{}", dir.display()),
            flags: Vec::new(),
            env: Vec::new(),
            name: "file",
            dir: Some(dir.to_path_buf()),
        }
    }

    pub(crate) fn s3(moto: &Moto, bucket: &str, prefix: &str) -> Location {
        Location {
            url: format!("s3://{bucket}/{prefix}"),
            flags: vec!["--s3-endpoint".into(), moto.endpoint()],
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
            ],
            name: "s3",
            dir: None,
        }
    }

    pub(crate) fn flag_refs(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    pub(crate) fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

pub(crate) use crate::harness::tool;
