//! `zeptod prestop`: the Helm chart's preStop hook. Kubernetes gives a container no way to
//! tell a scale-down from a restart, so the hook asks the API server: when this pod's
//! ordinal is at or above its StatefulSet's `spec.replicas`, the pod is being removed for
//! good and its node is decommissioned first (`POST /admin/decommission`: every partition
//! moved off it, then the node removed), so the cluster never drops to one copy. Otherwise
//! (a rolling restart, a node drain, an eviction) nothing is moved: the SIGTERM that follows
//! the hook drains the node (its primaries handed to their in-sync replicas). Either way it
//! then waits `--sleep`, so load balancers stop sending traffic before that SIGTERM.
//!
//! Failure to reach the API server or the node is not fatal to the pod: the hook says so and
//! leaves the node to the SIGTERM drain (no acknowledged write is lost that way either; the
//! cluster re-replicates after `--replace-after`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::error::{Error, Result};

/// zeptod prestop: the chart's preStop hook (decommission on scale-down, then wait).
#[derive(Debug, Parser)]
#[command(name = "zeptod prestop", bin_name = "zeptod prestop")]
struct PrestopCli {
    /// This pod's zeptod.
    #[arg(
        long,
        env = "ZEPTO_PRESTOP_SERVER",
        default_value = "http://127.0.0.1:8123"
    )]
    server: String,
    /// Admin key of the server.
    #[arg(long, env = "ZEPTO_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// The StatefulSet this pod belongs to.
    #[arg(long, env = "ZEPTO_STATEFULSET")]
    statefulset: String,
    /// Its namespace (default: the service account's namespace file).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// This pod's name, ending in its ordinal (default: the hostname). Node id = ordinal + 1,
    /// as with `--node-id auto`.
    #[arg(long, env = "POD_NAME")]
    pod: Option<String>,
    /// The Kubernetes API (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT).
    #[arg(long, env = "ZEPTO_KUBE_API")]
    kube_api: Option<String>,
    /// Directory with the pod's service account `token`, `ca.crt` and `namespace`.
    #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    service_account_dir: PathBuf,
    /// Give up waiting for the decommission after this long (keep it below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, default_value = "10m", value_parser = crate::config::parse_duration_arg)]
    timeout: Duration,
    /// Wait this long at the end (load balancers stop sending traffic meanwhile).
    #[arg(long, default_value = "15s", value_parser = crate::config::parse_duration_arg)]
    sleep: Duration,
}

/// Run `zeptod prestop ...` (`args` without the program name).
pub(crate) fn main(args: Vec<String>) -> ExitCode {
    let cli = PrestopCli::parse_from(args);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zeptod prestop: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&cli));
    if let Err(e) = &result {
        eprintln!("zeptod prestop: {e}; leaving the node to the SIGTERM drain");
    }
    std::thread::sleep(cli.sleep);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn run(cli: &PrestopCli) -> Result<()> {
    let pod = match &cli.pod {
        Some(p) => p.clone(),
        None => crate::config::cluster::hostname()?,
    };
    // The node id `--node-id auto` gives this pod: its ordinal + 1.
    let node = crate::config::cluster::node_id_from_hostname(&pod)?;
    let ordinal = node - 1;
    let replicas = statefulset_replicas(cli).await?;
    if ordinal < replicas {
        println!(
            "zeptod prestop: pod {pod} (ordinal {ordinal}) stays in StatefulSet {} ({replicas} \
             replicas): a restart, not a scale-down; nothing to move",
            cli.statefulset
        );
        return Ok(());
    }
    println!(
        "zeptod prestop: StatefulSet {} is scaled to {replicas} replicas and pod {pod} has \
         ordinal {ordinal}: decommissioning node {node}",
        cli.statefulset
    );
    decommission(cli, node).await
}

/// `spec.replicas` of the StatefulSet, read from the API server with the pod's service
/// account (the chart's Role allows `get` on it).
async fn statefulset_replicas(cli: &PrestopCli) -> Result<u64> {
    let sa = &cli.service_account_dir;
    let namespace = match &cli.namespace {
        Some(n) => n.clone(),
        None => std::fs::read_to_string(sa.join("namespace"))
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                Error::Config(format!(
                    "no --namespace and cannot read {}: {e}",
                    sa.join("namespace").display()
                ))
            })?,
    };
    let api = match &cli.kube_api {
        Some(a) => a.trim_end_matches('/').to_string(),
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                Error::Config(
                    "not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST) and no --kube-api".into(),
                )
            })?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if api.starts_with("https://") {
        let ca_path = sa.join("ca.crt");
        let pem = std::fs::read(&ca_path)
            .map_err(|e| Error::Config(format!("read {}: {e}", ca_path.display())))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| Error::Config(format!("{}: {e}", ca_path.display())))?;
        builder = builder.tls_certs_only([ca]);
    }
    let client = builder
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
    let url = format!(
        "{api}/apis/apps/v1/namespaces/{namespace}/statefulsets/{}",
        cli.statefulset
    );
    let mut req = client.get(&url);
    // Without a token file (outside a pod, or automount off) the request goes unauthenticated
    // and the API server's answer says why it failed.
    if let Ok(token) = std::fs::read_to_string(sa.join("token")) {
        req = req.bearer_auth(token.trim());
    }
    let resp = req.send().await.map_err(|e| Error::Unavailable {
        message: format!("GET {url}: {e}"),
        retry_after: None,
    })?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(Error::Unavailable {
            message: format!("GET {url}: {status}: {}", body.trim()),
            retry_after: None,
        });
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| Error::Internal(format!("GET {url}: not JSON: {e}")))?;
    // `spec.replicas` is omitted when it is the default, 1.
    Ok(v["spec"]["replicas"].as_u64().unwrap_or(1))
}

/// A refusal no wait can clear: a voter (in `--peers`) is never decommissioned, and a node
/// the metadata does not know has nothing to move.
fn permanent_refusal(body: &str) -> bool {
    body.contains("is a metadata voter") || body.contains("is not a member of the cluster")
}

/// Ask the node to decommission itself, then ask again (it answers with the progress) until
/// it is removed. A refusal (409: the node holds the only in-sync copy of a partition, too few
/// nodes would be left...) is retried: it may clear (another pod finishing its own
/// decommission, a copy catching up).
async fn decommission(cli: &PrestopCli, node: u64) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
    let url = format!(
        "{}/admin/decommission?node={node}",
        cli.server.trim_end_matches('/')
    );
    let started = Instant::now();
    let deadline = started + cli.timeout;
    let mut last = String::new();
    loop {
        let mut req = client.post(&url);
        if let Some(k) = &cli.admin_key {
            req = req.bearer_auth(k);
        }
        let line = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if status.is_success() && v["status"] == "removed" {
                    println!(
                        "zeptod prestop: node {node} decommissioned and removed after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                if status.is_success() {
                    format!("{} (holds partitions {})", v["status"], v["holds"])
                } else if status == reqwest::StatusCode::CONFLICT && permanent_refusal(&body) {
                    return Err(Error::Conflict(format!(
                        "decommission of node {node} refused: {}",
                        body.trim()
                    )));
                } else {
                    format!("{status}: {}", body.trim())
                }
            }
            Err(e) => format!("POST {url}: {e}"),
        };
        if line != last {
            println!(
                "zeptod prestop: [{:.1}s] node {node}: {line}",
                started.elapsed().as_secs_f64()
            );
            last = line;
        }
        if Instant::now() >= deadline {
            return Err(Error::Unavailable {
                message: format!(
                    "node {node} not decommissioned within {:?} (last: {last})",
                    cli.timeout
                ),
                retry_after: None,
            });
        }
        // A poll inside a deadline: the server reports progress when asked.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
