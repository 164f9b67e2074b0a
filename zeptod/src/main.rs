//! `zeptod`: the zeptodb server binary. It wires the storage engine (`zepto-storage`) and
//! the SQL engine (`zepto-sql`) to an HTTP API on :8123 (ClickHouse conventions: SQL in
//! `POST /`, bulk `INSERT ... FORMAT`, InfluxDB line protocol, probes, admin, metrics).
//!
//! Reading order: [`config`] (flags, env, TOML) -> [`server`] (listener, lifecycle) ->
//! [`http`] (routes and handlers) -> [`db::Node`] (the only module that names the engines;
//! `Node::write` is where every insert meets `Db::write` and its durable acknowledgement).
//!
//! Cluster mode (`--peers`): [`cluster`] (membership in the metadata raft group, DDL through
//! it) over [`rpc`] (the authenticated peer gRPC service and clients); see ADR 0004.
//!
//! This crate must not contain storage or query logic: it parses and formats wire data and
//! calls the engines.

mod auth;
mod backup;
mod cluster;
mod config;
mod db;
mod error;
mod http;
mod ingest_pool;
mod metrics;
mod prestop;
mod rpc;
mod server;
mod sql_text;

use std::process::ExitCode;

fn main() -> ExitCode {
    // TLS to object stores (backups) uses rustls with ring; installed once for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("backup" | "restore")) {
        return backup::cli::main(args);
    }
    if args.first().map(String::as_str) == Some("prestop") {
        return prestop::main(args);
    }
    let cfg = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zeptod: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("zeptod")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zeptod: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "zeptod stopped");
            eprintln!("zeptod: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log_format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}
