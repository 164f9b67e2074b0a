//! Configuration: command-line flags (each with a `ZEPTO_*` environment variable and a
//! default), an optional TOML file for the same settings, and one validated [`Config`] built
//! from both. Precedence: flag or environment variable > TOML file > default. Unknown TOML
//! keys are an error, as are out-of-range values.
//!
//! Cluster mode (`--peers` given) is validated in [`cluster`] into a [`ClusterConfig`].

pub(crate) mod cluster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::Deserialize;

use crate::error::{Error, Result};
pub(crate) use cluster::ClusterConfig;

/// When an INSERT is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AckPolicy {
    /// After the local WAL fdatasync.
    Local,
    /// After the partition's replica has fsynced too (the same as `local` on a single node).
    Replicated,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// zeptod: the zeptodb server (SQL over HTTP, bulk ingest, InfluxDB line protocol).
///
/// Durations accept `ms`, `s`, `m`, `h` suffixes (`500ms`, `30s`, `5m`); a bare number is seconds.
#[derive(Debug, Parser)]
#[command(
    name = "zeptod",
    version,
    about,
    long_about = None,
    after_help = "Durations accept ms, s, m and h suffixes (500ms, 30s, 5m, 1h); a bare number is seconds. \
                  The bound address is printed on stdout as `zeptod listening on http=ADDR` \
                  (and `zeptod listening on grpc=ADDR` in cluster mode). \
                  Cluster mode: give --peers (the raft voters, the same list on every node), \
                  --node-id and --cluster-secret-file; a 3-node example on one machine: \
                  `zeptod --node-id 1 --http-addr 127.0.0.1:8123 --grpc-addr 127.0.0.1:9124 \
                  --peers 1=127.0.0.1:9124,2=127.0.0.1:9125,3=127.0.0.1:9126 \
                  --cluster-secret-file secret --data-dir d1` and likewise for nodes 2 and 3. \
                  Backups (ADR 0011): `zeptod backup --help`, `zeptod backup list --help`, \
                  `zeptod backup prune --help`, `zeptod restore --help`. The Helm chart's \
                  scale-in preStop hook: `zeptod prestop --help`."
)]
struct Cli {
    /// TOML file with any of the settings below (keys as the flag names with '_' for '-').
    /// Flags and environment variables override it; unknown keys are an error.
    #[arg(long, env = "ZEPTO_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Directory for the WAL, checkpoints and on-disk chunks.
    #[arg(long, env = "ZEPTO_DATA_DIR", default_value = "./zepto-data")]
    data_dir: PathBuf,

    /// Address of the HTTP API (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "ZEPTO_HTTP_ADDR", default_value = "0.0.0.0:8123")]
    http_addr: SocketAddr,

    /// Time between automatic checkpoints; `0` turns them off.
    #[arg(long, env = "ZEPTO_CHECKPOINT_INTERVAL", default_value = "60s")]
    checkpoint_interval: String,

    /// A memory chunk without writes for this long is sealed and written to an HDB file
    /// (memory-mapped from then on; see docs/storage-format.md).
    #[arg(long, env = "ZEPTO_SEAL_IDLE", default_value = "120s")]
    seal_idle: String,

    /// Average bytes per second a background thread reads to check HDB files nobody has read
    /// since the server started against their content checksums (ADR 0015); 0 = off (files
    /// are still checked when first read).
    #[arg(long, env = "ZEPTO_SCRUB_BANDWIDTH", default_value_t = 64 << 20)]
    scrub_bandwidth: u64,

    /// How often that background thread reads every HDB file again, checked before or not,
    /// so that a file changed on disk since (bit rot on a node that runs for weeks) is found
    /// and refused; 0 = only the pass after the start.
    #[arg(long, env = "ZEPTO_SCRUB_INTERVAL", default_value = "168h")]
    scrub_interval: String,

    /// When an INSERT is acknowledged: `local` (after the local fdatasync) or `replicated`
    /// (after the replica's fsync too; on a single node this is the same as `local`).
    /// Default: `local` on a single node, `replicated` in cluster mode.
    #[arg(long, env = "ZEPTO_ACK", value_enum)]
    ack: Option<AckPolicy>,

    /// Key that grants the admin role (`Authorization: Bearer <key>`). Without it and without
    /// an admin entry in --api-keys-file, the /admin endpoints answer 403.
    #[arg(long, env = "ZEPTO_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,

    /// File of API keys, one `role:sha256-hex-of-key` per line (roles: admin, writer, reader;
    /// `#` starts a comment). Without any key, data endpoints answer loopback clients only.
    #[arg(long, env = "ZEPTO_API_KEYS_FILE", value_name = "FILE")]
    api_keys_file: Option<PathBuf>,

    /// Largest request body accepted; larger bodies get 413 and insert nothing.
    #[arg(long, env = "ZEPTO_MAX_BODY_BYTES", default_value_t = 256 * 1024 * 1024)]
    max_body_bytes: u64,

    /// Longest a query may run before it is cancelled with 408.
    #[arg(long, env = "ZEPTO_QUERY_TIMEOUT", default_value = "30s")]
    query_timeout: String,

    /// Queries whose scans read at most this many rows (counted from chunk metadata before
    /// the query runs; hash joins and window functions never qualify) run on the request's
    /// own thread instead of being handed to the blocking pool. 0 = always hand off.
    #[arg(long, env = "ZEPTO_INLINE_QUERY_ROWS", default_value_t = 50_000)]
    inline_query_rows: u64,

    /// How much lower than queries the ingest path runs (Linux thread niceness, 0-19): the
    /// ingest decode threads, the WAL writer, the maintenance thread and the background HDB
    /// check add it to their own, so a query gets a core first while ingest runs. 0 = the
    /// same priority as queries.
    #[arg(long, env = "ZEPTO_INGEST_NICE", default_value_t = 10)]
    ingest_nice: i32,

    /// Memory a single query may hold (bytes: sort buffers, join tables, results); over it
    /// the query fails with 413. 0 = unlimited.
    #[arg(long, env = "ZEPTO_QUERY_MEMORY_LIMIT", default_value_t = 1 << 30)]
    query_memory_limit: u64,

    /// Time a client has to send the request headers (against slowloris).
    #[arg(long, env = "ZEPTO_HEADER_READ_TIMEOUT", default_value = "10s")]
    header_read_timeout: String,

    /// Time a client has to send the whole request body.
    #[arg(long, env = "ZEPTO_BODY_READ_TIMEOUT", default_value = "60s")]
    body_read_timeout: String,

    /// On SIGTERM/SIGINT, how long in-flight requests may take before they are cut.
    #[arg(long, env = "ZEPTO_SHUTDOWN_TIMEOUT", default_value = "30s")]
    shutdown_timeout: String,

    /// Cluster mode: on SIGTERM or `POST /admin/drain`, how long handing this node's
    /// primaries to their in-sync replicas may take (keep it inside the pod's termination
    /// grace period). Partitions not handed over by then fail over when the node is dead.
    #[arg(long, env = "ZEPTO_DRAIN_TIMEOUT", default_value = "25s")]
    drain_timeout: String,

    /// On SIGTERM/SIGINT, how long to keep serving with /ready answering 503 before the
    /// listener closes (lets load balancers stop sending traffic first).
    #[arg(long, env = "ZEPTO_DRAIN_DELAY", default_value = "0s")]
    drain_delay: String,

    /// Write requests that may wait for the WAL writer; beyond that writes get 503 with
    /// Retry-After (never a silent drop).
    #[arg(long, env = "ZEPTO_INGEST_QUEUE_REQUESTS", default_value_t = 4096)]
    ingest_queue_requests: usize,

    /// Bytes of writes that may wait for the WAL writer; beyond that writes get 503 with
    /// Retry-After (a single larger write is still taken when the queue is empty).
    #[arg(long, env = "ZEPTO_INGEST_QUEUE_BYTES", default_value_t = 512 * 1024 * 1024)]
    ingest_queue_bytes: usize,

    /// Number of partitions; fixed when the data directory is created.
    #[arg(long, env = "ZEPTO_PARTITIONS", default_value_t = 64)]
    partitions: u32,

    /// Size of one WAL segment file (at least 4096). Segments are preallocated and recycled
    /// once a checkpoint covers them; smaller segments free WAL space sooner, but a replica
    /// that was away longer then needs a whole-partition copy instead of WAL catch-up.
    #[arg(long, env = "ZEPTO_WAL_SEGMENT_BYTES", default_value_t = 64 << 20)]
    wal_segment_bytes: u64,

    #[command(flatten)]
    cluster: cluster::ClusterArgs,

    /// Continuous WAL archiving (ADR 0011): upload the WAL records of every partition this
    /// node is primary for to this location (`s3://bucket/prefix`, `gs://...`, `az://...`,
    /// `file:///dir`) at least every --archive-interval. Also where `POST /admin/backup`
    /// writes when its request names no location.
    #[arg(long, env = "ZEPTO_ARCHIVE_URL")]
    archive_url: Option<String>,

    /// Longest time between two archive uploads (the recovery point of a restore).
    #[arg(long, env = "ZEPTO_ARCHIVE_INTERVAL", default_value = "5s")]
    archive_interval: String,

    #[command(flatten)]
    store: crate::backup::store::StoreArgs,

    /// Log format: `text` or `json` (one JSON object per line), written to stderr.
    #[arg(long, env = "ZEPTO_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `zeptod=debug,info`.
    #[arg(long, env = "ZEPTO_LOG", default_value = "info")]
    log_level: String,
}

/// The TOML file: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    http_addr: Option<String>,
    checkpoint_interval: Option<String>,
    seal_idle: Option<String>,
    scrub_bandwidth: Option<u64>,
    scrub_interval: Option<String>,
    ack: Option<AckPolicy>,
    admin_key: Option<String>,
    api_keys_file: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    query_timeout: Option<String>,
    query_memory_limit: Option<u64>,
    inline_query_rows: Option<u64>,
    ingest_nice: Option<i32>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    drain_delay: Option<String>,
    drain_timeout: Option<String>,
    ingest_queue_requests: Option<usize>,
    ingest_queue_bytes: Option<usize>,
    partitions: Option<u32>,
    wal_segment_bytes: Option<u64>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    // Cluster mode (see `cluster`).
    node_id: Option<String>,
    grpc_addr: Option<String>,
    advertise_addr: Option<String>,
    peers: Option<String>,
    replication_factor: Option<usize>,
    heartbeat_interval: Option<String>,
    suspect_after: Option<String>,
    dead_after: Option<String>,
    write_lease: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    insecure_cluster: Option<bool>,
    accept_proxied_peers: Option<bool>,
    replace_after: Option<String>,
    release_after: Option<String>,
    // Backups (see `crate::backup`).
    archive_url: Option<String>,
    archive_interval: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    migration_bandwidth: Option<u64>,
    min_free_disk: Option<u64>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) http_addr: SocketAddr,
    pub(crate) checkpoint_interval: Option<Duration>,
    pub(crate) seal_idle: Duration,
    pub(crate) scrub_bandwidth: u64,
    /// `--scrub-interval` (`None` = only the pass after the start).
    pub(crate) scrub_interval: Option<Duration>,
    pub(crate) ack: AckPolicy,
    pub(crate) admin_key: Option<String>,
    pub(crate) api_keys_file: Option<PathBuf>,
    pub(crate) max_body_bytes: u64,
    pub(crate) query_timeout: Duration,
    pub(crate) query_memory_limit: Option<u64>,
    /// See `--inline-query-rows`.
    pub(crate) inline_query_rows: u64,
    /// See `--ingest-nice`.
    pub(crate) ingest_nice: i32,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) ingest_queue_requests: usize,
    pub(crate) ingest_queue_bytes: usize,
    pub(crate) partitions: u32,
    pub(crate) wal_segment_bytes: u64,
    pub(crate) log_format: LogFormat,
    pub(crate) log_level: String,
    /// Set in cluster mode (`--peers` given); `None` is the single node.
    pub(crate) cluster: Option<ClusterConfig>,
    pub(crate) archive_url: Option<String>,
    pub(crate) archive_interval: Duration,
    pub(crate) store: crate::backup::store::StoreArgs,
}

impl Config {
    /// Parse the process arguments and environment (exits with usage on `--help` or a bad
    /// flag, like every clap program), then merge and validate.
    pub(crate) fn from_env() -> Result<Config> {
        let matches = Cli::command().get_matches();
        Self::from_matches(&matches)
    }

    fn from_matches(matches: &ArgMatches) -> Result<Config> {
        let cli = Cli::from_arg_matches(matches).map_err(|e| Error::Config(e.to_string()))?;
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        // A flag wins when it came from the command line or the environment.
        let explicit = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        fn pick<T>(explicit: bool, cli: T, file: Option<T>) -> T {
            match file {
                Some(v) if !explicit => v,
                _ => cli,
            }
        }
        let http_addr = match file.http_addr {
            Some(a) if !explicit("http_addr") => a.parse().map_err(|e| {
                Error::Config(format!("http_addr: '{a}' is not a socket address: {e}"))
            })?,
            _ => cli.http_addr,
        };
        let checkpoint_interval = pick(
            explicit("checkpoint_interval"),
            cli.checkpoint_interval,
            file.checkpoint_interval,
        );
        let checkpoint_interval = parse_duration("checkpoint_interval", &checkpoint_interval)?;
        let seal_idle = parse_duration(
            "seal_idle",
            &pick(explicit("seal_idle"), cli.seal_idle, file.seal_idle),
        )?;
        if seal_idle.is_zero() {
            return Err(Error::Config(
                "seal_idle: must be above 0 (a chunk being written to would be sealed at once)"
                    .into(),
            ));
        }
        let scrub_interval = parse_duration(
            "scrub_interval",
            &pick(
                explicit("scrub_interval"),
                cli.scrub_interval,
                file.scrub_interval,
            ),
        )?;
        let query_timeout = parse_duration(
            "query_timeout",
            &pick(
                explicit("query_timeout"),
                cli.query_timeout,
                file.query_timeout,
            ),
        )?;
        let header_read_timeout = parse_duration(
            "header_read_timeout",
            &pick(
                explicit("header_read_timeout"),
                cli.header_read_timeout,
                file.header_read_timeout,
            ),
        )?;
        let body_read_timeout = parse_duration(
            "body_read_timeout",
            &pick(
                explicit("body_read_timeout"),
                cli.body_read_timeout,
                file.body_read_timeout,
            ),
        )?;
        let shutdown_timeout = parse_duration(
            "shutdown_timeout",
            &pick(
                explicit("shutdown_timeout"),
                cli.shutdown_timeout,
                file.shutdown_timeout,
            ),
        )?;
        let drain_timeout = parse_duration(
            "drain_timeout",
            &pick(
                explicit("drain_timeout"),
                cli.drain_timeout,
                file.drain_timeout,
            ),
        )?;
        let drain_delay = parse_duration(
            "drain_delay",
            &pick(explicit("drain_delay"), cli.drain_delay, file.drain_delay),
        )?;
        let query_memory_limit = pick(
            explicit("query_memory_limit"),
            cli.query_memory_limit,
            file.query_memory_limit,
        );
        let file_cluster = cluster::FileClusterConfig {
            node_id: file.node_id,
            grpc_addr: file.grpc_addr,
            advertise_addr: file.advertise_addr,
            peers: file.peers,
            replication_factor: file.replication_factor,
            heartbeat_interval: file.heartbeat_interval,
            suspect_after: file.suspect_after,
            dead_after: file.dead_after,
            write_lease: file.write_lease,
            cluster_secret_file: file.cluster_secret_file,
            insecure_cluster: file.insecure_cluster,
            accept_proxied_peers: file.accept_proxied_peers,
            replace_after: file.replace_after,
            release_after: file.release_after,
            migration_bandwidth: file.migration_bandwidth,
            min_free_disk: file.min_free_disk,
        };
        let cluster = cluster::resolve(cli.cluster, file_cluster, &explicit)?;
        let archive_interval = parse_duration(
            "archive_interval",
            &pick(
                explicit("archive_interval"),
                cli.archive_interval,
                file.archive_interval,
            ),
        )?;
        let mut store = cli.store;
        if !explicit("s3_endpoint") {
            store.s3_endpoint = file.s3_endpoint.or(store.s3_endpoint);
        }
        if !explicit("s3_region") {
            store.s3_region = file.s3_region.or(store.s3_region);
        }
        if archive_interval.is_zero() {
            return Err(Error::Config("archive_interval must be more than 0".into()));
        }
        // `--ack` has no clap default (it depends on the mode): given > file > mode default.
        let ack = cli.ack.or(file.ack).unwrap_or(if cluster.is_some() {
            AckPolicy::Replicated
        } else {
            AckPolicy::Local
        });
        let cfg = Config {
            data_dir: pick(explicit("data_dir"), cli.data_dir, file.data_dir),
            http_addr,
            checkpoint_interval: (!checkpoint_interval.is_zero()).then_some(checkpoint_interval),
            seal_idle,
            scrub_bandwidth: pick(
                explicit("scrub_bandwidth"),
                cli.scrub_bandwidth,
                file.scrub_bandwidth,
            ),
            scrub_interval: (!scrub_interval.is_zero()).then_some(scrub_interval),
            ack,
            admin_key: if explicit("admin_key") {
                cli.admin_key
            } else {
                file.admin_key.or(cli.admin_key)
            },
            api_keys_file: if explicit("api_keys_file") {
                cli.api_keys_file
            } else {
                file.api_keys_file.or(cli.api_keys_file)
            },
            max_body_bytes: pick(
                explicit("max_body_bytes"),
                cli.max_body_bytes,
                file.max_body_bytes,
            ),
            query_timeout,
            query_memory_limit: (query_memory_limit > 0).then_some(query_memory_limit),
            inline_query_rows: pick(
                explicit("inline_query_rows"),
                cli.inline_query_rows,
                file.inline_query_rows,
            ),
            ingest_nice: pick(explicit("ingest_nice"), cli.ingest_nice, file.ingest_nice),
            header_read_timeout,
            body_read_timeout,
            shutdown_timeout,
            drain_delay,
            drain_timeout,
            ingest_queue_requests: pick(
                explicit("ingest_queue_requests"),
                cli.ingest_queue_requests,
                file.ingest_queue_requests,
            ),
            wal_segment_bytes: pick(
                explicit("wal_segment_bytes"),
                cli.wal_segment_bytes,
                file.wal_segment_bytes,
            ),
            ingest_queue_bytes: pick(
                explicit("ingest_queue_bytes"),
                cli.ingest_queue_bytes,
                file.ingest_queue_bytes,
            ),
            partitions: pick(explicit("partitions"), cli.partitions, file.partitions),
            log_format: pick(explicit("log_format"), cli.log_format, file.log_format),
            log_level: pick(explicit("log_level"), cli.log_level, file.log_level),
            cluster,
            archive_url: if explicit("archive_url") {
                cli.archive_url
            } else {
                file.archive_url.or(cli.archive_url)
            },
            archive_interval,
            store,
        };
        cfg.validate()?;
        let mut cfg = cfg;
        // Absolute, so that logs and /admin/cluster say exactly where the data is.
        cfg.data_dir = std::path::absolute(&cfg.data_dir)
            .map_err(|e| Error::Config(format!("data_dir {}: {e}", cfg.data_dir.display())))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir must not be empty".into());
        }
        if !(0..=19).contains(&self.ingest_nice) {
            return bad(format!(
                "ingest_nice must be between 0 and 19 (got {})",
                self.ingest_nice
            ));
        }
        if self.max_body_bytes == 0 {
            return bad("max_body_bytes must be at least 1".into());
        }
        if self.ingest_queue_requests == 0 || self.ingest_queue_bytes == 0 {
            return bad("ingest_queue_requests and ingest_queue_bytes must be at least 1".into());
        }
        if self.partitions == 0 || self.partitions > 65_536 {
            return bad(format!(
                "partitions must be in 1..=65536, not {}",
                self.partitions
            ));
        }
        for (name, d) in [
            ("query_timeout", self.query_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be more than 0"));
            }
        }
        if let Some(k) = &self.admin_key {
            if k.len() < 16 {
                return bad("admin_key must be at least 16 characters long".into());
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return bad(format!(
                "log_level '{}' is not a valid filter",
                self.log_level
            ));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))
}

/// [`parse_duration`] for clap value parsers.
pub(crate) fn parse_duration_arg(s: &str) -> std::result::Result<Duration, String> {
    parse_duration("duration", s).map_err(|e| e.to_string())
}

/// Parse `500ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub(crate) fn parse_duration(name: &str, s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| {
        Error::Config(format!(
            "{name}: '{s}' is not a duration (use e.g. 500ms, 30s, 5m, 1h)"
        ))
    })?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(Error::Config(format!(
                "{name}: unknown unit in '{s}' (use ms, s, m or h)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut full = vec!["zeptod"];
        full.extend_from_slice(args);
        let m = Cli::command()
            .try_get_matches_from(full)
            .map_err(|e| Error::Config(e.to_string()))?;
        Config::from_matches(&m)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8123");
        assert!(c.data_dir.is_absolute());
        assert!(c.data_dir.ends_with("zepto-data"), "{:?}", c.data_dir);
        assert_eq!(c.checkpoint_interval, Some(Duration::from_secs(60)));
        assert_eq!(c.ack, AckPolicy::Local);
        assert_eq!(c.partitions, 64);
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("z.toml");
        std::fs::write(
            &f,
            "http_addr = \"127.0.0.1:9000\"\nquery_timeout = \"5s\"\ncheckpoint_interval = \"0\"\n",
        )
        .unwrap();
        let c = parse(&["--config", f.to_str().unwrap(), "--query-timeout", "2s"]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(c.query_timeout, Duration::from_secs(2));
        assert_eq!(c.checkpoint_interval, None);
    }

    #[test]
    fn unknown_key_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("z.toml");
        std::fs::write(&f, "http_adr = \"127.0.0.1:9000\"\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("http_adr"), "{e}");
        assert!(parse(&["--query-timeout", "5 parsecs"]).is_err());
        assert!(parse(&["--partitions", "0"]).is_err());
        assert!(parse(&["--admin-key", "short"]).is_err());
    }

    #[test]
    fn cluster_mode_flags() {
        // Without --peers nothing changes, whatever else is set.
        let c = parse(&["--node-id", "3", "--replication-factor", "7"]).unwrap();
        assert!(c.cluster.is_none());
        assert_eq!(c.ack, AckPolicy::Local);

        let peers = "1=127.0.0.1:9001,2=127.0.0.1:9002,3=127.0.0.1:9003";
        let e = parse(&["--peers", peers, "--node-id", "2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cluster-secret-file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "  a-long-enough-cluster-secret\n").unwrap();
        let s = secret.to_str().unwrap();
        let c = parse(&[
            "--peers",
            peers,
            "--node-id",
            "2",
            "--cluster-secret-file",
            s,
            "--heartbeat-interval",
            "200ms",
        ])
        .unwrap();
        let k = c.cluster.as_ref().unwrap();
        assert_eq!(k.node_id, 2);
        assert_eq!(k.advertise_addr, "127.0.0.1:9002");
        assert_eq!(k.grpc_addr.to_string(), "0.0.0.0:8124");
        assert_eq!(k.replication_factor, 2);
        assert_eq!(k.timings.dead_after, Duration::from_secs(2));
        assert_eq!(k.timings.raft_tick, Duration::from_millis(20));
        assert_eq!(
            k.token.as_deref(),
            Some(cluster::token_of(b"a-long-enough-cluster-secret").as_str())
        );
        assert_eq!(
            c.ack,
            AckPolicy::Replicated,
            "cluster mode defaults to replicated acks"
        );
        let c = parse(&[
            "--peers",
            peers,
            "--node-id",
            "1",
            "--insecure-cluster",
            "--ack",
            "local",
        ])
        .unwrap();
        assert_eq!(c.ack, AckPolicy::Local);
        assert!(c.cluster.unwrap().token.is_none());

        for (args, needle) in [
            (
                vec!["--node-id", "4", "--insecure-cluster"],
                "not in --peers",
            ),
            (vec!["--insecure-cluster"], "--node-id"),
            (
                vec![
                    "--node-id",
                    "1",
                    "--insecure-cluster",
                    "--advertise-addr",
                    "x:1",
                ],
                "differs",
            ),
            (
                vec![
                    "--node-id",
                    "1",
                    "--insecure-cluster",
                    "--replication-factor",
                    "3",
                ],
                "replication_factor",
            ),
            (
                vec!["--node-id", "1", "--insecure-cluster", "--dead-after", "1s"],
                "timings",
            ),
            (
                vec![
                    "--node-id",
                    "1",
                    "--insecure-cluster",
                    "--cluster-secret-file",
                    s,
                ],
                "not both",
            ),
            (
                vec![
                    "--node-id",
                    "1",
                    "--cluster-secret-file",
                    "/nonexistent/secret",
                ],
                "secret",
            ),
        ] {
            let mut full = vec!["--peers", peers];
            full.extend(args.iter().copied());
            let e = parse(&full).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny").unwrap();
        let e = parse(&[
            "--peers",
            peers,
            "--node-id",
            "1",
            "--cluster-secret-file",
            short.to_str().unwrap(),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("shorter"), "{e}");

        // The same settings from the TOML file.
        let f = dir.path().join("z.toml");
        std::fs::write(
            &f,
            format!("peers = \"{peers}\"\nnode_id = \"3\"\ninsecure_cluster = true\ngrpc_addr = \"127.0.0.1:0\"\n"),
        )
        .unwrap();
        let c = parse(&["--config", f.to_str().unwrap()]).unwrap();
        let k = c.cluster.unwrap();
        assert_eq!((k.node_id, k.grpc_addr.port()), (3, 0));
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("x", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("x", "7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("x", "2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x", "-1s").is_err());
    }
}
