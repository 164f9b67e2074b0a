//! `zeptod backup`, `zeptod backup list`, `zeptod backup prune` and `zeptod restore`: the
//! tools of ADR 0011. `zeptod backup` asks a running server to take a base backup
//! (`POST /admin/backup`, so it can run as a separate pod, e.g. the chart's CronJob); the
//! others read and write the backup location directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use super::base::list_manifests;
use super::format;
use super::restore::{self, RestoreReport, RestoreRequest};
use super::store::{Store, StoreArgs};
use crate::error::{Error, Result};

/// zeptod backup: take a base backup through a running server, list or prune backups.
#[derive(Debug, Parser)]
#[command(
    name = "zeptod backup",
    bin_name = "zeptod backup",
    args_conflicts_with_subcommands = true
)]
struct BackupCli {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// The server to back up (in a cluster any node: it coordinates the others).
    #[arg(
        long,
        env = "ZEPTO_BACKUP_SERVER",
        default_value = "http://127.0.0.1:8123"
    )]
    server: String,
    /// Admin key of the server.
    #[arg(long, env = "ZEPTO_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Where to write the backup; default: the server's --archive-url.
    #[arg(long)]
    to: Option<String>,
    /// Give up waiting for the server after this long.
    #[arg(long, env = "ZEPTO_BACKUP_TIMEOUT", default_value = "6h", value_parser = crate::config::parse_duration_arg)]
    timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// List the complete backups and the archived WAL in a location.
    List {
        #[arg(long)]
        from: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete all but the newest --keep backups, and the row objects and archived WAL that
    /// no kept backup needs.
    Prune {
        #[arg(long)]
        from: String,
        /// Backups to keep (at least 1).
        #[arg(long)]
        keep: usize,
        /// Never delete row or WAL objects younger than this (a backup being uploaded right
        /// now has objects no manifest names yet).
        #[arg(long, default_value = "1h", value_parser = crate::config::parse_duration_arg)]
        min_age: Duration,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// zeptod restore: restore a backup (plus archived WAL) into an empty data directory or
/// into a running server (or cluster) that has no tables yet.
#[derive(Debug, Parser)]
#[command(name = "zeptod restore", bin_name = "zeptod restore")]
#[command(group(clap::ArgGroup::new("target").required(true).args(["data_dir", "to_server"])))]
struct RestoreCli {
    /// The backup location.
    #[arg(long)]
    from: String,
    /// Backup id (`zeptod backup list`); default: the newest complete one.
    #[arg(long)]
    backup: Option<String>,
    /// Restore the state as of this time (RFC 3339, or unix seconds or milliseconds): the
    /// newest backup created before it, and archived WAL read at or before it (so to within
    /// one archive interval).
    #[arg(long)]
    until: Option<String>,
    /// Restore into this data directory (must be empty or missing) for a single node.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Restore into this running server or cluster node (e.g. http://127.0.0.1:8123): its
    /// tables are created through it and the rows inserted through it. It must have no tables.
    #[arg(long)]
    to_server: Option<String>,
    /// Admin key of --to-server.
    #[arg(long, env = "ZEPTO_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Run `zeptod backup ...` / `zeptod restore ...` (`args` without the program name).
pub(crate) fn main(args: Vec<String>) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZEPTO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    let cmd = args.first().cloned().unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zeptod {cmd}: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd.as_str() {
        "backup" => {
            let cli = BackupCli::parse_from(args);
            runtime.block_on(backup(cli))
        }
        _ => {
            let cli = RestoreCli::parse_from(args);
            runtime.block_on(restore_cmd(cli))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zeptod {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn backup(cli: BackupCli) -> Result<()> {
    match cli.action {
        None => {
            let client = reqwest::Client::builder()
                .timeout(cli.timeout)
                .build()
                .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
            let target = format!("{}/admin/backup", cli.server.trim_end_matches('/'));
            let mut req = client
                .post(&target)
                .body(serde_json::json!({ "to": cli.to }).to_string());
            if let Some(k) = &cli.admin_key {
                req = req.bearer_auth(k);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Error::Backup(format!("POST {target}: {e}")))?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Error::Backup(format!("POST {target}: {status}: {body}")));
            }
            println!("{body}");
            Ok(())
        }
        Some(BackupAction::List { from, store }) => {
            let store = Store::open(&from, &store)?;
            store.check().await?;
            let manifests = list_manifests(&store).await?;
            println!("backups at {}:", store.url());
            for m in &manifests {
                println!(
                    "  {}  created {}  partitions {}  tables {}  rows {}  bytes {}",
                    m.id,
                    m.created,
                    m.partitions,
                    m.tables.len(),
                    m.total_rows(),
                    m.total_bytes()
                );
            }
            if manifests.is_empty() {
                println!("  (none complete)");
            }
            let wal: Vec<_> = store
                .list("wal")
                .await?
                .into_iter()
                .filter(|(k, _, _)| format::parse_wal_key(k).is_some())
                .collect();
            let newest = wal
                .iter()
                .filter_map(|(k, _, _)| format::parse_wal_key(k))
                .map(|o| o.unix_ms)
                .max();
            println!(
                "archived WAL: {} objects, {} bytes, newest {}",
                wal.len(),
                wal.iter().map(|w| w.1).sum::<u64>(),
                newest
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or("-".to_string(), |t| t.to_rfc3339())
            );
            Ok(())
        }
        Some(BackupAction::Prune {
            from,
            keep,
            min_age,
            store,
        }) => {
            let store = Store::open(&from, &store)?;
            prune(&store, keep, min_age).await
        }
    }
}

/// `zeptod backup prune`.
pub(crate) async fn prune(store: &Store, keep: usize, min_age: Duration) -> Result<()> {
    if keep == 0 {
        return Err(Error::Config("--keep must be at least 1".into()));
    }
    store.check().await?;
    let manifests = list_manifests(store).await?;
    let cut = manifests.len().saturating_sub(keep);
    let (old, kept) = manifests.split_at(cut);
    // Manifests first: from then on those backups are not listed.
    for m in old {
        store.delete(&format::manifest_key(&m.id)).await?;
        println!("deleted backup {}", m.id);
    }
    let old_enough = chrono::Utc::now().timestamp_millis() - min_age.as_millis() as i64;
    let needed: BTreeSet<&str> = kept
        .iter()
        .flat_map(|m| &m.parts)
        .flat_map(|p| &p.objects)
        .map(|o| o.key.as_str())
        .collect();
    let (mut objects, mut bytes) = (0u64, 0u64);
    for (key, size, modified) in store.list("objects").await? {
        if !needed.contains(key.as_str()) && modified <= old_enough {
            store.delete(&key).await?;
            objects += 1;
            bytes += size;
        }
    }
    // Archived WAL entirely below every kept backup's cut of its partition.
    let mut floor: BTreeMap<u32, u64> = BTreeMap::new();
    for m in kept {
        for p in &m.parts {
            let f = floor.entry(p.partition).or_insert(u64::MAX);
            *f = (*f).min(p.next_seq);
        }
    }
    let mut wal = 0u64;
    for (key, size, modified) in store.list("wal").await? {
        let Some(o) = format::parse_wal_key(&key) else {
            continue;
        };
        if floor.get(&o.partition).is_some_and(|&f| o.end <= f) && modified <= old_enough {
            store.delete(&key).await?;
            wal += 1;
            bytes += size;
        }
    }
    println!(
        "kept {} backups; deleted {} backups, {objects} row objects and {wal} WAL objects ({bytes} bytes)",
        kept.len(),
        old.len()
    );
    Ok(())
}

fn parse_until(s: &str) -> Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        // Unix seconds, or milliseconds when it has 13 digits or more.
        return Ok(if n.abs() >= 100_000_000_000 {
            n
        } else {
            n * 1000
        });
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| Error::Config(format!("--until '{s}': not RFC 3339 nor unix seconds: {e}")))
}

async fn restore_cmd(cli: RestoreCli) -> Result<()> {
    let store = Store::open(&cli.from, &cli.store)?;
    let req = RestoreRequest {
        backup: cli.backup,
        until_unix_ms: cli.until.as_deref().map(parse_until).transpose()?,
    };
    let report = match (&cli.data_dir, &cli.to_server) {
        (Some(dir), _) => restore::restore_to_dir(&store, &req, dir).await?,
        (None, Some(server)) => {
            restore_to_server(&store, &req, server, cli.admin_key.as_deref()).await?
        }
        (None, None) => return Err(Error::Config("give --data-dir or --to-server".into())),
    };
    tracing::info!(
        backup = %report.backup,
        base_rows = report.base_rows,
        wal_rows = report.wal_rows,
        bytes = report.bytes_downloaded,
        duration_ms = report.duration_ms,
        "restore complete"
    );
    println!(
        "{}",
        serde_json::to_string(&report).unwrap_or_else(|_| format!("{report:?}"))
    );
    Ok(())
}

/// Talks SQL over HTTP to the restore target.
struct Target {
    client: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Target {
    async fn post(&self, query: Option<&str>, body: Vec<u8>) -> Result<String> {
        let url = match query {
            Some(q) => format!("{}/?query={}", self.base, percent_encode(q)),
            None => format!("{}/", self.base),
        };
        let mut req = self.client.post(url).body(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Backup(format!("restore target {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::Backup(format!(
                "restore target {}: {status}: {text}",
                self.base
            )));
        }
        Ok(text)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn create_table_sql(s: &zepto_storage::TableSchema) -> String {
    let cols: Vec<String> = s
        .columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.ty.name()))
        .collect();
    format!(
        "CREATE TABLE {} ({}) WITH (timestamp = '{}', partition_key = '{}')",
        s.name,
        cols.join(", "),
        s.columns[s.timestamp].name,
        s.columns[s.partition_key].name
    )
}

/// Rows per INSERT sent to the target.
const INSERT_ROWS: usize = 100_000;

async fn restore_to_server(
    store: &Store,
    req: &RestoreRequest,
    server: &str,
    key: Option<&str>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let target = Target {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?,
        base: server.trim_end_matches('/').to_string(),
        key: key.map(str::to_string),
    };
    let tables = target
        .post(Some("SHOW TABLES FORMAT CSV"), Vec::new())
        .await?;
    let existing: Vec<&str> = tables.lines().filter(|l| !l.trim().is_empty()).collect();
    if !existing.is_empty() {
        return Err(Error::BadRequest(format!(
            "refusing to restore into {server}: it already has tables ({}); restore needs an \
             empty server or cluster",
            existing.join(", ")
        )));
    }
    let staging = std::env::temp_dir().join(format!(
        "zeptod-restore-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    ));
    let result = restore_to_server_staged(store, req, &target, &staging).await;
    if let Err(e) = std::fs::remove_dir_all(&staging) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %staging.display(), error = %e, "could not remove the restore's staging directory");
        }
    }
    let mut report = result?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

async fn restore_to_server_staged(
    store: &Store,
    req: &RestoreRequest,
    target: &Target,
    staging: &std::path::Path,
) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    let verified = restore::download_and_verify(store, req, staging, &mut report).await?;
    let mut schemas = BTreeMap::new();
    for t in &verified.manifest.tables {
        target
            .post(None, create_table_sql(&t.schema).into_bytes())
            .await?;
        schemas.insert(t.id, t.schema.clone());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u32, arrow::record_batch::RecordBatch)>(8);
    let producer = tokio::task::spawn_blocking(move || {
        let mut report = report;
        let r = verified.for_each_batch(&mut report, |id, b| {
            tx.blocking_send((id, b))
                .map_err(|_| Error::Internal("restore sender stopped".into()))
        });
        r.map(|()| report)
    });
    let mut buffers: BTreeMap<u32, (usize, Vec<arrow::record_batch::RecordBatch>)> =
        BTreeMap::new();
    let mut sent_rows = 0u64;
    let flush = |id: u32, batches: Vec<arrow::record_batch::RecordBatch>| {
        let schema = schemas.get(&id).cloned();
        async move {
            let schema = schema.ok_or_else(|| Error::Internal(format!("table id {id} unknown")))?;
            let Some(first) = batches.first() else {
                return Ok(0u64);
            };
            let batch = arrow::compute::concat_batches(&first.schema(), &batches)
                .map_err(|e| Error::Internal(format!("concat rows: {e}")))?;
            let rows = batch.num_rows() as u64;
            let body = format::encode_batch(&batch)?;
            target
                .post(
                    Some(&format!("INSERT INTO {} FORMAT Arrow", schema.name)),
                    body,
                )
                .await?;
            Ok::<u64, Error>(rows)
        }
    };
    let mut failed = None;
    while let Some((id, b)) = rx.recv().await {
        let e = buffers.entry(id).or_default();
        e.0 += b.num_rows();
        e.1.push(b);
        if e.0 >= INSERT_ROWS {
            let batches = std::mem::take(&mut e.1);
            e.0 = 0;
            match flush(id, batches).await {
                Ok(n) => {
                    sent_rows += n;
                    tracing::info!(rows = sent_rows, "rows restored");
                }
                Err(err) => {
                    failed = Some(err);
                    break;
                }
            }
        }
    }
    drop(rx);
    let report = producer
        .await
        .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let report = report?;
    for (id, (_, batches)) in std::mem::take(&mut buffers) {
        sent_rows += flush(id, batches).await?;
    }
    tracing::info!(rows = sent_rows, "all rows restored");
    Ok(report)
}
