//! The seam between the server and the engines: [`Node`] owns the storage engine
//! (`zepto_storage::Db`) and the SQL engine (`zepto_sql::Engine`), and is the only module that
//! names their types. It maps their errors onto the HTTP error kinds.
//!
//! Write path: `http` decodes a request into one Arrow batch per table, then
//! [`Node::write`] hands it to `Db::write` and awaits the durable acknowledgement.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use zepto_sql::{Engine, ErrorKind, Prepared, QueryOutput, QuerySettings};
use zepto_storage::{ColumnDef, ColumnType, Db, TableSchema, WriteTicket};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::ilp::{Kind, Measurement};
use crate::metrics::StorageFigures;

/// What a SQL statement produced.
#[derive(Debug)]
pub(crate) enum SqlOutput {
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        rows_read: u64,
    },
    Inserted(u64),
    Message(String),
}

/// The open database and its SQL engine.
pub(crate) struct Node {
    db: Db,
    engine: Engine,
    /// Cluster mode: the catalog follows the metadata group (no local-only table creation).
    cluster_mode: bool,
    /// Where the scratch catalog for [`Node::table_schema_of`] lives.
    scratch_dir: PathBuf,
    /// Opened on first use; one statement at a time.
    scratch: Mutex<Option<(Db, Engine)>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").finish_non_exhaustive()
    }
}

/// Map a storage error onto an HTTP error kind.
pub(crate) fn storage_error(e: zepto_storage::Error) -> Error {
    use zepto_storage::Error as S;
    match &e {
        S::Backpressure { .. } | S::PartitionImporting { .. } => Error::Unavailable {
            message: e.to_string(),
            retry_after: Some(1),
        },
        S::TableNotFound(_) | S::ColumnNotFound { .. } => Error::NotFound(e.to_string()),
        S::WalPoisoned(_) | S::Shutdown => Error::Unavailable {
            message: e.to_string(),
            retry_after: None,
        },
        _ if e.is_client_error() => Error::BadRequest(e.to_string()),
        _ => Error::Internal(e.to_string()),
    }
}

/// Map a SQL engine error onto an HTTP error kind.
pub(crate) fn sql_error(e: zepto_sql::Error) -> Error {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::BadRequest => Error::BadRequest(msg),
        ErrorKind::NotFound => Error::NotFound(msg),
        ErrorKind::Timeout => Error::Timeout(msg),
        ErrorKind::TooLarge => Error::TooLarge(msg),
        ErrorKind::Unavailable => Error::Unavailable {
            message: msg,
            retry_after: Some(1),
        },
        _ => Error::Internal(msg),
    }
}

impl Node {
    /// Open (and recover) the database. Blocking; may take a while.
    pub(crate) fn open(cfg: &Config) -> Result<Node> {
        let mut scfg = zepto_storage::Config::new(cfg.data_dir.clone());
        scfg.partitions = cfg.partitions;
        scfg.checkpoint_interval = cfg.checkpoint_interval;
        scfg.seal_idle = cfg.seal_idle;
        scfg.scrub_bytes_per_sec = cfg.scrub_bandwidth;
        scfg.scrub_recheck_interval = cfg.scrub_interval;
        scfg.ring_capacity = cfg.ingest_queue_requests;
        scfg.ring_max_bytes = cfg.ingest_queue_bytes;
        scfg.wal_segment_bytes = cfg.wal_segment_bytes;
        scfg.background_nice = cfg.ingest_nice;
        let db = Db::open(scfg).map_err(storage_error)?;
        let r = db.recovery_info();
        tracing::info!(
            checkpoint = ?r.checkpoint_id,
            wal_records_replayed = r.wal_records_replayed,
            tables = r.tables,
            rows = r.rows,
            duration_ms = r.duration_ms,
            "recovered"
        );
        if let Some(damage) = &r.wal_damage {
            tracing::warn!(%damage, "WAL tail was damaged and truncated during recovery");
        }
        let limit = cfg
            .query_memory_limit
            .map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
        let engine = Engine::new(
            db.clone(),
            QuerySettings {
                timeout: cfg.query_timeout,
                memory_limit_bytes: limit,
            },
        );
        // Here, on a normal-priority thread: the query threads must not inherit the lowered
        // priority of an ingest or background thread.
        engine.start_query_threads();
        Ok(Node {
            db,
            engine,
            cluster_mode: cfg.cluster.is_some(),
            scratch_dir: cfg.data_dir.join("meta").join("ddl-scratch"),
            scratch: Mutex::new(None),
        })
    }

    /// The schema a `CREATE TABLE` statement defines, built by the SQL engine on a scratch
    /// catalog (so cluster DDL means exactly what single-node DDL means) without touching
    /// this node's catalog. Blocking.
    pub(crate) fn table_schema_of(&self, sql: &str) -> Result<TableSchema> {
        let mut guard = self.scratch.lock();
        if guard.is_none() {
            if self.scratch_dir.exists() {
                std::fs::remove_dir_all(&self.scratch_dir)
                    .map_err(|e| Error::io(format!("clear {}", self.scratch_dir.display()), e))?;
            }
            let mut scfg = zepto_storage::Config::new(self.scratch_dir.clone());
            scfg.partitions = 1;
            scfg.checkpoint_interval = None;
            scfg.wal_segment_bytes = 1 << 20;
            let db = Db::open(scfg).map_err(storage_error)?;
            let engine = Engine::new(db.clone(), QuerySettings::default());
            *guard = Some((db, engine));
        }
        let Some((db, engine)) = guard.as_ref() else {
            return Err(Error::Internal("scratch catalog missing".into()));
        };
        for t in db.tables() {
            db.drop_table(&t.name).map_err(storage_error)?;
        }
        engine.execute(sql).map_err(sql_error)?;
        let created = db.tables();
        let schema = match created.as_slice() {
            [one] => TableSchema::clone(one),
            _ => {
                return Err(Error::BadRequest(
                    "the statement did not define exactly one table".into(),
                ))
            }
        };
        db.drop_table(&schema.name).map_err(storage_error)?;
        Ok(schema)
    }

    /// Make the local catalog hold exactly the tables of the committed metadata, each with
    /// the id the metadata assigned (drops first, so a re-created name gets its new id).
    /// Blocking; idempotent.
    pub(crate) fn reconcile_catalog(&self, state: &zepto_cluster::ClusterState) -> Result<()> {
        for t in self.db.tables() {
            let local = self.db.table_id(&t.name).map_err(storage_error)?;
            if state.table_id(&t.name) != Some(local) {
                tracing::info!(table = %t.name, id = local, "dropping table (not in the committed metadata)");
                self.db.drop_table(&t.name).map_err(storage_error)?;
            }
        }
        for (key, schema) in &state.tables {
            let Some(&id) = state.table_ids.get(key) else {
                return Err(Error::Internal(format!(
                    "metadata table {} has no id",
                    schema.name
                )));
            };
            match self.db.table_id(&schema.name) {
                Ok(_) => {}
                Err(zepto_storage::Error::TableNotFound(_)) => {
                    self.db
                        .create_table_with_id(schema.clone(), id)
                        .map_err(storage_error)?;
                    tracing::info!(table = %schema.name, id, "created table from the committed metadata");
                }
                Err(e) => return Err(storage_error(e)),
            }
        }
        Ok(())
    }

    pub(crate) fn has_tables(&self) -> bool {
        !self.db.tables().is_empty()
    }

    /// `(name, storage id)` of every local table.
    pub(crate) fn table_ids(&self) -> Vec<(String, u32)> {
        self.db
            .tables()
            .iter()
            .filter_map(|t| {
                self.db
                    .table_id(&t.name)
                    .ok()
                    .map(|id| (t.name.clone(), id))
            })
            .collect()
    }

    /// Does this statement only read? (Parse errors are 400.)
    pub(crate) fn is_read_only(sql: &str) -> Result<bool> {
        Engine::is_read_only(sql).map_err(sql_error)
    }

    /// Parse one statement and plan it when it is a query (no batch is read).
    pub(crate) fn prepare(&self, sql: &str) -> Result<Prepared> {
        self.engine.prepare(sql).map_err(sql_error)
    }

    /// Run a prepared statement. Blocking.
    pub(crate) fn run(&self, prepared: Prepared) -> Result<SqlOutput> {
        Ok(match self.engine.run(prepared).map_err(sql_error)? {
            QueryOutput::Rows {
                schema,
                batches,
                rows_read,
            } => SqlOutput::Rows {
                schema,
                batches,
                rows_read,
            },
            QueryOutput::Inserted { rows } => SqlOutput::Inserted(rows),
            QueryOutput::Ok { message } => SqlOutput::Message(message),
        })
    }

    /// The Arrow schema of a table (404 when it does not exist).
    pub(crate) fn table_arrow_schema(&self, table: &str) -> Result<SchemaRef> {
        Ok(self.db.table(table).map_err(storage_error)?.arrow_schema())
    }

    /// Write one batch atomically and wait until it is durable. Returns the rows written.
    pub(crate) async fn write(&self, table: &str, batch: RecordBatch) -> Result<u64> {
        let ticket = self.start_write(table, batch)?;
        Node::finish_write(ticket).await
    }

    /// The CPU half of [`Node::write`]: convert, split by partition, encode and queue the
    /// write (no waiting). Run it on an ingest thread, then [`Node::finish_write`].
    pub(crate) fn start_write(&self, table: &str, batch: RecordBatch) -> Result<WriteTicket> {
        self.db.write(table, batch).map_err(storage_error)
    }

    /// Wait until a started write is durable; the rows written.
    pub(crate) async fn finish_write(ticket: WriteTicket) -> Result<u64> {
        Ok(ticket.await.map_err(storage_error)?.rows)
    }

    /// Convert rows to the table's types and split them by partition (what the cluster
    /// router sends to each partition's primary); pieces in partition order.
    pub(crate) fn split_write(
        &self,
        table: &str,
        batch: RecordBatch,
    ) -> Result<Vec<(u32, RecordBatch)>> {
        self.db.split_write(table, batch).map_err(storage_error)
    }

    /// Write rows already split by partition (see [`Node::split_write`]) as one atomic write
    /// and wait until it is durable; each piece is checked to hold only its partition's rows.
    /// Returns the rows and the `(partition, seq)` of every WAL record it became.
    pub(crate) async fn write_split_with_records(
        &self,
        table: &str,
        pieces: Vec<(u32, RecordBatch)>,
    ) -> Result<(u64, Vec<(u32, u64)>)> {
        let ticket = self.db.write_split(table, pieces).map_err(storage_error)?;
        let receipt = ticket.await.map_err(storage_error)?;
        Ok((receipt.rows, receipt.records))
    }

    /// The SQL engine (cluster queries plan and run their parts through it).
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The storage engine itself, for the cluster layer's replication (commit listener,
    /// replicated records, partition epochs and positions).
    pub(crate) fn storage(&self) -> &Db {
        &self.db
    }

    /// Rows this node holds for one partition, over every table (memory and disk).
    pub(crate) fn local_rows(&self, partition: u32) -> u64 {
        self.db
            .tables()
            .iter()
            .filter_map(|t| {
                let mut req = zepto_storage::ScanRequest::all(t.name.clone());
                req.partitions = Some(vec![partition]);
                self.db.count_rows(&req).ok().map(|(n, _)| n)
            })
            .sum()
    }

    /// [`Node::start_write`] for one batch per table, as one atomic write: after a crash
    /// either every table has its rows or none has. `None` when there is no row to write.
    pub(crate) fn start_write_all(
        &self,
        batches: Vec<(String, RecordBatch)>,
    ) -> Result<Option<WriteTicket>> {
        let batches: Vec<(String, RecordBatch)> = batches
            .into_iter()
            .filter(|(_, b)| b.num_rows() > 0)
            .collect();
        if batches.is_empty() {
            return Ok(None);
        }
        self.db.write_many(batches).map(Some).map_err(storage_error)
    }

    /// The table a line-protocol measurement goes to, created on first write:
    /// `ts TIMESTAMP`, tags as SYMBOL (the first tag is the partition key), fields typed.
    /// Returns its Arrow schema and the index of its designated timestamp column.
    pub(crate) fn ensure_ilp_table(&self, m: &Measurement) -> Result<(SchemaRef, usize)> {
        match self.db.table(&m.name) {
            Ok(t) => return Ok((t.arrow_schema(), t.timestamp)),
            Err(zepto_storage::Error::TableNotFound(_)) => {}
            Err(e) => return Err(storage_error(e)),
        }
        if self.cluster_mode {
            return Err(Error::BadRequest(format!(
                "table '{}' does not exist; in cluster mode create it with CREATE TABLE first \
                 (line protocol does not create tables in cluster mode yet)",
                m.name
            )));
        }
        let key = m.first_tag().ok_or_else(|| {
            Error::BadRequest(format!(
                "measurement '{}' has no tag; a new table needs at least one (the first tag \
                 becomes the partition key)",
                m.name
            ))
        })?;
        let mut cols = vec![ColumnDef::new("ts", ColumnType::Timestamp)];
        for c in &m.columns {
            if c.name.eq_ignore_ascii_case("ts") {
                return Err(Error::BadRequest(format!(
                    "measurement '{}': 'ts' is reserved for the timestamp",
                    m.name
                )));
            }
            let ty = match c.kind {
                Kind::Tag => ColumnType::Symbol,
                Kind::Double => ColumnType::Double,
                Kind::BigInt => ColumnType::BigInt,
                Kind::Boolean => ColumnType::Boolean,
                Kind::String => ColumnType::String,
            };
            cols.push(ColumnDef::new(c.name.clone(), ty));
        }
        let schema =
            TableSchema::new(m.name.clone(), cols, Some("ts"), Some(key)).map_err(storage_error)?;
        let t = match self.db.create_table(schema) {
            Ok(t) => t,
            // Another request created it first.
            Err(zepto_storage::Error::TableExists(_)) => {
                self.db.table(&m.name).map_err(storage_error)?
            }
            Err(e) => return Err(storage_error(e)),
        };
        tracing::info!(table = %m.name, partition_key = key, "created table from line protocol");
        Ok((t.arrow_schema(), t.timestamp))
    }

    /// Checkpoint now. Blocking.
    pub(crate) fn checkpoint(&self) -> Result<serde_json::Value> {
        let info = self.db.checkpoint().map_err(storage_error)?;
        Ok(serde_json::json!({
            "checkpoint_id": info.id,
            "wal_segment": info.wal_segment,
            "wal_offset": info.wal_offset,
            "duration_ms": info.duration.as_secs_f64() * 1000.0,
            "rows": info.rows,
            "bytes": info.bytes,
        }))
    }

    /// Check every HDB file's values against its checksum (blocking); a progress line every
    /// 10 s on long runs.
    pub(crate) fn verify_files(&self) -> Result<zepto_storage::VerifyReport> {
        let started = Instant::now();
        let mut last = started;
        let report = self
            .db
            .verify_files(&mut |r| {
                if last.elapsed() >= Duration::from_secs(10) {
                    last = Instant::now();
                    let done = r.checked_now + r.checked_before + r.without_checksum;
                    tracing::info!(
                        files_done = done + r.corrupt.len() as u64,
                        files = r.files,
                        bytes_checked = r.bytes_checked,
                        corrupt = r.corrupt.len(),
                        "verifying HDB files"
                    );
                }
            })
            .map_err(storage_error)?;
        if report.corrupt.is_empty() {
            tracing::info!(
                files = report.files,
                checked_now = report.checked_now,
                bytes_checked = report.bytes_checked,
                took_ms = started.elapsed().as_millis() as u64,
                "HDB files verified"
            );
        } else {
            tracing::error!(files = report.files, corrupt = ?report.corrupt, "HDB files failed their content checksum");
        }
        Ok(report)
    }

    /// Liveness of the storage engine's background work.
    pub(crate) fn health(&self) -> Result<()> {
        self.db.health().map_err(|e| Error::Unavailable {
            message: format!("unhealthy: {e}"),
            retry_after: None,
        })
    }

    /// Storage figures for /metrics.
    pub(crate) fn figures(&self) -> StorageFigures {
        let s = self.db.stats();
        StorageFigures {
            tables: s.tables as u64,
            memory_rows: s.memory_rows,
            memory_bytes: s.memory_bytes,
            disk_chunks: s.disk_chunks,
            disk_bytes: s.disk_bytes,
            disk_chunks_verified: s.disk_chunks_verified,
            disk_chunks_corrupt: s.disk_chunks_corrupt,
            wal_fsyncs: s.wal_fsyncs,
            wal_fsync_seconds_total: s.wal_fsync_seconds_total,
            wal_fsync_histogram: s.wal_fsync_histogram,
            wal_bytes: s.wal_bytes,
            wal_segment: s.wal_segment,
            wal_offset: s.wal_offset,
            ring_depth: s.ring_depth as u64,
            ring_bytes: s.ring_bytes as u64,
            checkpoints: s.checkpoints,
            last_checkpoint_id: s.last_checkpoint.as_ref().map(|c| c.id),
            checkpoint_age_seconds: s.checkpoint_age_ms as f64 / 1000.0,
            write_errors: s.write_errors,
            poisoned: s.poisoned,
        }
    }

    /// The single-node view of `/admin/cluster`.
    pub(crate) fn cluster_view(
        &self,
        cfg: &Config,
        phase: &str,
        uptime: Duration,
    ) -> serde_json::Value {
        let f = self.figures();
        let tables: Vec<serde_json::Value> = self
            .db
            .tables()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "timestamp": t.timestamp_name(),
                    "partition_key": t.partition_key_name(),
                    "columns": t.columns.iter().map(|c| serde_json::json!({"name": c.name, "type": c.ty.name()})).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "mode": "single-node",
            "node": {
                "id": 0,
                "http_addr": cfg.http_addr.to_string(),
                "state": phase,
                "uptime_seconds": uptime.as_secs(),
                "data_dir": cfg.data_dir.display().to_string(),
            },
            "partitions": { "count": cfg.partitions, "primary": "all on this node", "replicas": 0 },
            "ack": match cfg.ack { crate::config::AckPolicy::Local => "local", crate::config::AckPolicy::Replicated => "replicated" },
            "tables": tables,
            "wal": {
                "segment": f.wal_segment,
                "offset": f.wal_offset,
                "fsyncs": f.wal_fsyncs,
                "bytes": f.wal_bytes,
                "ring_depth": f.ring_depth,
                "poisoned": f.poisoned,
            },
            "checkpoint": {
                "interval_seconds": cfg.checkpoint_interval.map(|d| d.as_secs()),
                "count": f.checkpoints,
                "last_id": f.last_checkpoint_id,
                "age_seconds": f.checkpoint_age_seconds,
            },
            "storage": {
                "memory_rows": f.memory_rows,
                "memory_bytes": f.memory_bytes,
                "disk_chunks": f.disk_chunks,
                "disk_bytes": f.disk_bytes,
                "disk_chunks_verified": f.disk_chunks_verified,
                "disk_chunks_corrupt": f.disk_chunks_corrupt,
            },
        })
    }

    /// Final checkpoint and stop. Blocking.
    pub(crate) fn close(&self) -> Result<()> {
        self.db.close().map_err(storage_error)
    }
}
