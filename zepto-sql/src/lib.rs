//! # zepto-sql
//!
//! Everything between SQL text and Arrow record batches: parse (sqlparser,
//! `GenericDialect`, see `parse.rs`), bind and plan (`plan/`), execute
//! vectorized over Arrow arrays (`exec/`, `expr.rs`), and split plans into per-partition
//! partial aggregates plus a final merge ([`Engine::plan_query`], [`Engine::execute_partial`],
//! [`Engine::merge`]) so that a cluster can scatter a query and gather the pieces.
//!
//! It depends on `zepto-storage` only (the scan API and the catalog) and must not depend on
//! the cluster or server crates. It reads through [`zepto_storage::Db::scan`], which prunes
//! partitions (from `symbol = 'X'` / `IN`) and chunks (from timestamp ranges) that the planner
//! derives from WHERE.
//!
//! Output conventions:
//! * timestamps are `Timestamp(Nanosecond, None)` arrays;
//! * SYMBOL columns come out as plain `Utf8` (inside the engine they stay dictionary-encoded
//!   as storage returns them, and predicates on them run against the dictionary values);
//! * `/` always divides as DOUBLE; division or modulo by zero gives NULL;
//! * `min`/`max`/`first`/`last` of an INT column are BIGINT.
//!
//! Cores: a SELECT that aggregates one table and reads at least
//! [`Parallelism::min_rows`] rows runs its partial aggregate on contiguous runs of
//! partitions on several threads and merges the partial states (`exec/parallel.rs`, the same
//! split a cluster uses); its answer is the serial one (floating-point sums up to rounding).
//!
//! Limits: every query has a deadline (checked between batches) and a memory budget (charged
//! for everything materialised: sort buffers, join tables, aggregate states, collected
//! results). Both fail the query with a typed error ([`ErrorKind::Timeout`],
//! [`ErrorKind::TooLarge`]) and never change data.
//!
//! ## The SQL it speaks
//! * Statements: `CREATE TABLE t (...) [WITH (timestamp = 'ts', partition_key = 'symbol')]`,
//!   `DROP TABLE [IF EXISTS]`, `SHOW TABLES`, `DESCRIBE t`, `INSERT INTO t [(cols)] VALUES ...`
//!   / `INSERT INTO t SELECT ...`, `SELECT`, `EXPLAIN [ANALYZE] SELECT`.
//! * SELECT: WHERE, GROUP BY (names, positions, aliases, expressions), HAVING, ORDER BY (names,
//!   aliases, positions, expressions, `NULLS FIRST/LAST`), LIMIT/OFFSET, DISTINCT, `WITH`,
//!   subqueries in FROM, uncorrelated subqueries in expressions (`IN`, scalar, `EXISTS`),
//!   `UNION [ALL]`, `[INNER|LEFT] JOIN ... ON/USING`, comma joins, and
//!   `ASOF JOIN q ON t.k = q.k AND t.ts >= q.ts` (or `>`): each left row gets the latest right
//!   row with the same key at or before its timestamp (NULLs when there is none).
//! * Expressions: `+ - * / %`, comparisons, `AND OR NOT`, `CASE`, `CAST`/`::`, `IN`,
//!   `BETWEEN`, `LIKE`/`ILIKE`, `IS [NOT] NULL`, `||`, `abs round floor ceil sqrt ln log10 exp
//!   power upper lower length coalesce`.
//! * Time: timestamps are i64 nanoseconds; literals are ISO-8601 strings or integers;
//!   `now()`, `INTERVAL '5 minutes'`, `xbar(x, bucket)`, `date_trunc(unit, ts)`,
//!   `date_bin(stride, ts [, origin])`, `extract(field FROM ts)`/`date_part`.
//! * Aggregates (see `plan/agg.rs` for their partial states): `count(*)`, `count(x)`,
//!   `count(DISTINCT x)`, `sum avg min max first last vwap stddev variance median
//!   percentile(x, q)`.
//! * Window functions with `OVER (PARTITION BY ... ORDER BY ...)`: `row_number rank
//!   dense_rank lag lead ema(x, alpha) mavg(x, n) msum(x, n) delta(x)` and running
//!   `sum avg min max count` (SQL's default frame, or `ROWS BETWEEN n|UNBOUNDED PRECEDING AND
//!   CURRENT ROW`).

mod ddl;
mod error;
mod exec;
mod expr;
mod expr_fn;
mod parse;
mod plan;
mod time;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sqlparser::ast::{ObjectType, Statement};
use zepto_storage::Db;

pub use error::{Error, ErrorKind, Result};
pub use exec::parallel::Parallelism;

use exec::ExecCtx;
use plan::bind::Binder;

/// Per-query limits.
#[derive(Clone, Debug)]
pub struct QuerySettings {
    /// Wall-clock budget of one statement (default 30 s).
    pub timeout: Duration,
    /// Bytes of intermediate and result data one statement may hold (default 1 GiB).
    pub memory_limit_bytes: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            timeout: Duration::from_secs(30),
            memory_limit_bytes: 1 << 30,
        }
    }
}

/// What a statement produced.
#[derive(Debug, Clone)]
pub enum QueryOutput {
    /// SELECT, SHOW TABLES, DESCRIBE, EXPLAIN (one Utf8 column `plan`).
    Rows {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        rows_read: u64,
    },
    /// INSERT (after the rows are durable).
    Inserted { rows: u64 },
    /// CREATE / DROP.
    Ok { message: String },
}

impl QueryOutput {
    /// Total rows of a `Rows` output (0 otherwise).
    pub fn num_rows(&self) -> usize {
        match self {
            QueryOutput::Rows { batches, .. } => batches.iter().map(|b| b.num_rows()).sum(),
            _ => 0,
        }
    }
}

/// The source of `now()`: nanoseconds since the epoch.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The SQL engine over one storage `Db`. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    settings: QuerySettings,
    clock: Clock,
    parallel: Parallelism,
    /// Extra threads lent to queries (bounded by `parallel.threads - 1`).
    workers: Arc<exec::parallel::Workers>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("settings", &self.settings)
            .field("parallel", &self.parallel)
            .finish_non_exhaustive()
    }
}

fn system_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A query cut into a per-partition part and a merge part (see [`Engine::plan_query`]).
#[derive(Debug, Clone)]
pub struct DistributedPlan {
    split: plan::split::Split,
}

impl DistributedPlan {
    /// The partitions the query needs after pruning; `None` means all of them.
    pub fn partitions(&self) -> Option<&[u32]> {
        self.split.partitions.as_deref()
    }
    /// Schema of the batches `execute_partial` returns (group keys, then state columns).
    pub fn partial_schema(&self) -> SchemaRef {
        self.split.partial.schema()
    }
    /// Schema of the final answer.
    pub fn output_schema(&self) -> SchemaRef {
        self.split.merge.schema()
    }
    /// Both halves as text.
    pub fn explain(&self) -> String {
        let mut s = String::from("partial (per partition):\n");
        self.split.partial.explain(&mut s, 1);
        s.push_str("merge:\n");
        self.split.merge.explain(&mut s, 1);
        s
    }
}

/// How a SELECT can run in a cluster (see [`Engine::plan_cluster_at`]).
#[derive(Debug, Clone)]
pub struct ClusterPlan {
    /// The plan cut into a per-partition part and a merge part; `None` when its shape cannot
    /// be split (joins, unions, several tables, nested aggregates).
    pub split: Option<DistributedPlan>,
    /// Why `split` is `None`.
    pub unsplit_reason: Option<String>,
    /// The partitions every scan of the plan reads, united, sorted; `None` when some scan is
    /// not pruned (it reads every partition). `Some(vec![])` for a query that reads no table.
    pub footprint: Option<Vec<u32>>,
}

/// An `INSERT` prepared for a cluster ([`Engine::prepare_insert`]): its rows computed here
/// when its source reads no table, or the query that computes them where the data is.
#[derive(Debug)]
pub struct PreparedInsert {
    /// The target table's name as the catalog spells it.
    pub table: String,
    /// The source as a query, when it reads tables: run it (a cluster distributes it), then
    /// shape its rows with [`Engine::conform_insert`]. `None` when `rows` is the answer.
    pub source_query: Option<String>,
    /// The rows in the table's columns, ready to write (`None`: no rows, or see
    /// `source_query`).
    pub rows: Option<RecordBatch>,
    bound: ddl::BoundInsert,
}

/// Kinds of read-only statements (see [`Engine::read_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// `SELECT`, `WITH ... SELECT`, `VALUES`.
    Query,
    /// `EXPLAIN [ANALYZE]` of a query.
    Explain,
    /// `SHOW TABLES`, `DESCRIBE t`: answered from the catalog.
    Catalog,
}

/// The per-partition part's output on one node.
#[derive(Debug, Clone)]
pub struct PartialOutput {
    pub batches: Vec<RecordBatch>,
    /// Rows the scans read.
    pub rows_read: u64,
}

/// A statement parsed and, when it is a query, planned and pruned: what [`Engine::run`]
/// executes. Its deadline counts from [`Engine::prepare`].
#[derive(Debug)]
pub struct Prepared {
    stmt: Statement,
    /// The pruned plan of a query; `None` for every other statement.
    plan: Option<plan::Node>,
    ctx: ExecCtx,
}

impl Prepared {
    /// Does this statement only read?
    pub fn is_read_only(&self) -> bool {
        ddl::is_read_only(&self.stmt)
    }

    /// An upper bound, from piece metadata (no batch is touched), of the rows a query's
    /// scans will read, for a query whose work grows with those rows (scans, filters,
    /// projections, aggregates, sorts, limits, ASOF joins); `None` for any other statement and
    /// for a plan that can do more work than it reads (a hash join's output, window frames).
    /// A caller uses it to decide where to run the query before running it.
    pub fn scan_rows(&self) -> Result<Option<u64>> {
        match &self.plan {
            Some(node) => exec::scan_rows_bound(node, &self.ctx),
            None => Ok(None),
        }
    }
}

impl Engine {
    pub fn new(db: Db, settings: QuerySettings) -> Engine {
        Engine {
            db,
            settings,
            clock: Arc::new(system_clock),
            parallel: Parallelism::default(),
            workers: Arc::default(),
        }
    }

    /// How many cores a query may use (default: every core, from 200,000 rows read; see
    /// [`Parallelism`]). Only SELECTs through [`Engine::execute`] run in parallel.
    pub fn with_parallelism(mut self, parallel: Parallelism) -> Engine {
        self.parallel = parallel;
        self
    }

    /// Start the threads parallel queries use now rather than on the first such query, so
    /// they take the calling thread's scheduling priority (a thread inherits its creator's;
    /// a server calls this from a normal-priority thread at startup). Idempotent.
    pub fn start_query_threads(&self) {
        if self.parallel.threads > 1 {
            self.workers.start(self.parallel.threads - 1);
        }
    }

    /// How many queries of this engine (and its clones) ran on more than one thread.
    pub fn parallel_queries(&self) -> u64 {
        self.workers
            .parallel_runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replace the clock `now()` reads (tests pin it).
    pub fn with_clock(mut self, clock: Clock) -> Engine {
        self.clock = clock;
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn settings(&self) -> &QuerySettings {
        &self.settings
    }

    /// Parse, plan and run one statement with the engine's default settings.
    pub fn execute(&self, sql: &str) -> Result<QueryOutput> {
        self.execute_with(sql, &self.settings)
    }

    /// Parse, plan and run one statement with these limits.
    pub fn execute_with(&self, sql: &str, settings: &QuerySettings) -> Result<QueryOutput> {
        self.run(self.prepare_with(sql, settings)?)
    }

    /// Parse one statement and, when it is a query, plan it (with the engine's default
    /// settings); [`Engine::run`] executes it. Cheap next to running it: no batch is read.
    pub fn prepare(&self, sql: &str) -> Result<Prepared> {
        self.prepare_with(sql, &self.settings)
    }

    /// [`Engine::prepare`] with these limits. The deadline counts from here.
    pub fn prepare_with(&self, sql: &str, settings: &QuerySettings) -> Result<Prepared> {
        let stmt = parse::parse_one(sql)?;
        let ctx = ExecCtx::new(
            self.db.clone(),
            settings.timeout,
            settings.memory_limit_bytes,
        );
        let plan = match &stmt {
            Statement::Query(q) => {
                let mut binder = Binder::new(&self.db, &ctx, (self.clock)());
                Some(plan::prune::prune_plan(binder.plan_query(q)?.0)?)
            }
            _ => None,
        };
        Ok(Prepared { stmt, plan, ctx })
    }

    /// Run a prepared statement.
    pub fn run(&self, prepared: Prepared) -> Result<QueryOutput> {
        let Prepared { stmt, plan, ctx } = prepared;
        let mut binder = Binder::new(&self.db, &ctx, (self.clock)());
        match &stmt {
            Statement::Query(_) => {
                let Some(node) = plan else {
                    return Err(Error::Internal("a prepared query has no plan".into()));
                };
                let batches = exec::parallel::collect(&node, &ctx, &self.parallel, &self.workers)?;
                let (schema, batches) = plain_strings(node.schema(), batches)?;
                Ok(QueryOutput::Rows {
                    schema,
                    batches,
                    rows_read: ctx.rows_read.get(),
                })
            }
            Statement::Explain {
                statement, analyze, ..
            } => {
                let q = match statement.as_ref() {
                    Statement::Query(q) => q,
                    _ => return Err(error::unsupported("EXPLAIN of anything but a query")),
                };
                let node = plan::prune::prune_plan(binder.plan_query(q)?.0)?;
                let mut text = String::new();
                node.explain(&mut text, 0);
                if *analyze {
                    let batches = exec::collect(&node, &ctx)?;
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    text.push_str(&format!("rows returned: {rows}\n"));
                } else {
                    explain_scans(&node, &ctx)?;
                }
                for (t, s) in ctx.scan_stats.borrow().iter() {
                    text.push_str(&format!(
                        "scan {t}: partitions {}/{}, chunks {}/{}, rows {}\n",
                        s.partitions_scanned,
                        s.partitions_total,
                        s.chunks_scanned,
                        s.chunks_total,
                        s.rows_scanned
                    ));
                }
                let lines: Vec<&str> = text.lines().collect();
                let schema = Arc::new(Schema::new(vec![Field::new("plan", DataType::Utf8, false)]));
                let batch =
                    RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(lines))])?;
                Ok(QueryOutput::Rows {
                    schema,
                    batches: vec![batch],
                    rows_read: ctx.rows_read.get(),
                })
            }
            Statement::CreateTable(c) => ddl::create_table(&ctx, c),
            Statement::Drop {
                object_type,
                if_exists,
                names,
                ..
            } => {
                if *object_type != ObjectType::Table {
                    return Err(error::unsupported(format!("DROP {object_type}")));
                }
                ddl::drop_table(&ctx, names, *if_exists)
            }
            Statement::ShowTables { .. } => ddl::show_tables(&ctx),
            Statement::ExplainTable { table_name, .. } => {
                ddl::describe(&ctx, &table_name.to_string())
            }
            Statement::Insert(ins) => ddl::insert(&mut binder, &ctx, ins),
            other => {
                let text = other.to_string();
                let head: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(error::unsupported(format!("statement {head}")))
            }
        }
    }

    /// Insert Arrow rows (e.g. a parsed `INSERT INTO t FORMAT CSV|JSONEachRow|Arrow` body):
    /// columns are matched to the table's by name, missing ones are NULL, and values are
    /// converted with the same rules as `INSERT ... VALUES` (ISO-8601 strings or integers for
    /// timestamps, strings for symbols). Returns after the rows are durable. A batch that does
    /// not convert is refused whole ([`ErrorKind::BadRequest`]).
    pub fn insert_batch(&self, table: &str, batch: &RecordBatch) -> Result<u64> {
        let ctx = ExecCtx::new(
            self.db.clone(),
            self.settings.timeout,
            self.settings.memory_limit_bytes,
        );
        ddl::insert_batch(&ctx, table, batch)
    }

    /// Take an `INSERT ... VALUES | SELECT` apart without writing anything, for a cluster that
    /// routes the rows to the partitions' primaries itself. A source that reads no table is
    /// evaluated here; one that reads tables is returned as query text (it must not be
    /// evaluated over this node's data alone). Subqueries in expressions are refused as in
    /// [`Engine::plan_cluster_at`].
    pub fn prepare_insert(&self, sql: &str) -> Result<PreparedInsert> {
        let stmt = parse::parse_one(sql)?;
        let Statement::Insert(ins) = &stmt else {
            return Err(error::invalid("not an INSERT statement"));
        };
        let ctx = ExecCtx::new(
            self.db.clone(),
            self.settings.timeout,
            self.settings.memory_limit_bytes,
        );
        let mut binder = Binder::new(&self.db, &ctx, (self.clock)());
        binder.subqueries_allowed = false;
        let bound = ddl::bind_insert(&mut binder, ins)?;
        let reads_tables = plan::split::footprint(&bound.source).is_none_or(|p| !p.is_empty());
        let (source_query, rows) = if reads_tables {
            let q = ins
                .source
                .as_ref()
                .ok_or_else(|| error::invalid("INSERT needs VALUES or SELECT"))?;
            (Some(q.to_string()), None)
        } else {
            let batches = exec::collect(&bound.source, &ctx)?;
            (None, bound.conform(&batches)?)
        };
        Ok(PreparedInsert {
            table: bound.table.name.clone(),
            source_query,
            rows,
            bound,
        })
    }

    /// Shape the rows a prepared INSERT's `source_query` returned into the table's columns
    /// (`None` for no rows), with the same conversions as `INSERT ... VALUES`.
    pub fn conform_insert(
        &self,
        prepared: &PreparedInsert,
        batches: &[RecordBatch],
    ) -> Result<Option<RecordBatch>> {
        prepared.bound.conform(batches)
    }

    /// True when the statement only reads (SELECT / SHOW / DESCRIBE / EXPLAIN / WITH..SELECT).
    pub fn is_read_only(sql: &str) -> Result<bool> {
        Ok(ddl::is_read_only(&parse::parse_one(sql)?))
    }

    /// What kind of read the statement is; `None` for a statement that writes.
    pub fn read_kind(sql: &str) -> Result<Option<ReadKind>> {
        let stmt = parse::parse_one(sql)?;
        if !ddl::is_read_only(&stmt) {
            return Ok(None);
        }
        Ok(Some(match stmt {
            Statement::Query(_) => ReadKind::Query,
            Statement::Explain { .. } => ReadKind::Explain,
            _ => ReadKind::Catalog,
        }))
    }

    /// Plan a SELECT for scatter/gather: a per-partition part and a merge part.
    ///
    /// Intended use by a cluster: the coordinator calls `plan_query` to learn the partitions
    /// and the merge; each owner of partitions plans the same SQL with the coordinator's
    /// `now()` ([`Engine::plan_query_at`]) and runs [`Engine::execute_partial`] on its
    /// partitions; the coordinator feeds every partial batch to [`Engine::merge`].
    /// Uncorrelated subqueries are evaluated while planning, over the planning node's data:
    /// a cluster must plan such queries on the coordinator only (or not split them).
    pub fn plan_query(&self, sql: &str) -> Result<DistributedPlan> {
        self.plan_query_at(sql, (self.clock)())
    }

    /// [`Engine::plan_query`] with `now()` fixed to `now_ns` (so every node agrees).
    pub fn plan_query_at(&self, sql: &str, now_ns: i64) -> Result<DistributedPlan> {
        let stmt = parse::parse_one(sql)?;
        let q = match &stmt {
            Statement::Query(q) => q,
            _ => return Err(error::unsupported("only SELECT can be distributed")),
        };
        let ctx = ExecCtx::new(
            self.db.clone(),
            self.settings.timeout,
            self.settings.memory_limit_bytes,
        );
        let mut binder = Binder::new(&self.db, &ctx, now_ns);
        let node = plan::prune::prune_plan(binder.plan_query(q)?.0)?;
        Ok(DistributedPlan {
            split: plan::split::split(&node)?,
        })
    }

    /// Plan a SELECT for a cluster with `now()` fixed to `now_ns` (so every node agrees):
    /// the split plan when its shape allows one, and the partitions all its scans read.
    ///
    /// Unlike [`Engine::plan_query_at`], an uncorrelated subquery in an expression is refused
    /// ([`ErrorKind::BadRequest`], "not supported") rather than evaluated over this node's
    /// data, and a plan that cannot be split is not an error (see [`ClusterPlan::split`]).
    pub fn plan_cluster_at(&self, sql: &str, now_ns: i64) -> Result<ClusterPlan> {
        let stmt = parse::parse_one(sql)?;
        let q = match &stmt {
            Statement::Query(q) => q,
            _ => return Err(error::unsupported("only SELECT can be distributed")),
        };
        let ctx = ExecCtx::new(
            self.db.clone(),
            self.settings.timeout,
            self.settings.memory_limit_bytes,
        );
        let mut binder = Binder::new(&self.db, &ctx, now_ns);
        binder.subqueries_allowed = false;
        let node = plan::prune::prune_plan(binder.plan_query(q)?.0)?;
        let footprint = plan::split::footprint(&node);
        let (split, unsplit_reason) = match plan::split::split(&node) {
            Ok(split) => (Some(DistributedPlan { split }), None),
            Err(Error::Unsupported(m)) => (None, Some(m)),
            Err(e) => return Err(e),
        };
        Ok(ClusterPlan {
            split,
            unsplit_reason,
            footprint,
        })
    }

    /// Run a whole SELECT (unsplit) with `now()` fixed to `now_ns`, its scans restricted to
    /// `partitions`, with these limits. Subqueries in expressions are refused as in
    /// [`Engine::plan_cluster_at`]. A cluster uses it for a query whose every scan reads only
    /// partitions this node holds.
    pub fn execute_whole_at(
        &self,
        sql: &str,
        now_ns: i64,
        partitions: &[u32],
        settings: &QuerySettings,
    ) -> Result<QueryOutput> {
        let stmt = parse::parse_one(sql)?;
        let q = match &stmt {
            Statement::Query(q) => q,
            _ => return Err(error::unsupported("only SELECT can be distributed")),
        };
        let mut ctx = ExecCtx::new(
            self.db.clone(),
            settings.timeout,
            settings.memory_limit_bytes,
        );
        ctx.only_partitions = Some(partitions.to_vec());
        let mut binder = Binder::new(&self.db, &ctx, now_ns);
        binder.subqueries_allowed = false;
        let node = plan::prune::prune_plan(binder.plan_query(q)?.0)?;
        let batches = exec::collect(&node, &ctx)?;
        let (schema, batches) = plain_strings(node.schema(), batches)?;
        Ok(QueryOutput::Rows {
            schema,
            batches,
            rows_read: ctx.rows_read.get(),
        })
    }

    /// [`Engine::execute_partial`] with these limits, also counting the rows read.
    pub fn execute_partial_with(
        &self,
        plan: &DistributedPlan,
        partitions: &[u32],
        settings: &QuerySettings,
    ) -> Result<PartialOutput> {
        let mut ctx = ExecCtx::new(
            self.db.clone(),
            settings.timeout,
            settings.memory_limit_bytes,
        );
        ctx.only_partitions = Some(partitions.to_vec());
        let batches = exec::collect(&plan.split.partial, &ctx)?;
        Ok(PartialOutput {
            batches,
            rows_read: ctx.rows_read.get(),
        })
    }

    /// Run the per-partition part over `partitions` (intersected with the plan's pruning).
    pub fn execute_partial(
        &self,
        plan: &DistributedPlan,
        partitions: &[u32],
    ) -> Result<Vec<RecordBatch>> {
        let mut ctx = ExecCtx::new(
            self.db.clone(),
            self.settings.timeout,
            self.settings.memory_limit_bytes,
        );
        ctx.only_partitions = Some(partitions.to_vec());
        exec::collect(&plan.split.partial, &ctx)
    }

    /// Merge the partial batches of every partition into the final answer.
    pub fn merge(&self, plan: &DistributedPlan, partials: Vec<RecordBatch>) -> Result<QueryOutput> {
        let ctx = ExecCtx::new(
            self.db.clone(),
            self.settings.timeout,
            self.settings.memory_limit_bytes,
        );
        ctx.charge(exec::batch_bytes(&partials), "merging partial results")?;
        *ctx.partial_input.borrow_mut() = partials;
        let batches = exec::collect(&plan.split.merge, &ctx)?;
        let (schema, batches) = plain_strings(plan.split.merge.schema(), batches)?;
        Ok(QueryOutput::Rows {
            schema,
            batches,
            rows_read: 0,
        })
    }
}

/// Decode dictionary (SYMBOL) columns of a result to plain `Utf8`.
fn plain_strings(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    if !schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Dictionary(_, _)))
    {
        return Ok((schema, batches));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, v) => f.as_ref().clone().with_data_type(v.as_ref().clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    let out_schema = Arc::new(Schema::new(fields));
    let out = batches
        .into_iter()
        .map(|b| {
            let cols = b
                .columns()
                .iter()
                .zip(out_schema.fields().iter())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        arrow::compute::cast(c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new_with_options(
                out_schema.clone(),
                cols,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((out_schema, out))
}

/// Ask storage what each scan would read (cheap: scans are zero-copy), for EXPLAIN.
fn explain_scans(n: &plan::Node, ctx: &ExecCtx) -> Result<()> {
    use plan::Node::*;
    match n {
        Scan(s) => {
            let scan = ctx.db.scan(&s.request)?;
            ctx.scan_stats
                .borrow_mut()
                .push((s.table.name.clone(), scan.stats));
        }
        Filter { input, .. }
        | Project { input, .. }
        | Aggregate { input, .. }
        | Window { input, .. }
        | Sort { input, .. }
        | Limit { input, .. }
        | Distinct { input } => explain_scans(input, ctx)?,
        HashJoin { left, right, .. } | AsofJoin { left, right, .. } => {
            explain_scans(left, ctx)?;
            explain_scans(right, ctx)?;
        }
        Union { inputs, .. } => {
            for i in inputs {
                explain_scans(i, ctx)?;
            }
        }
        Values { .. } | PartialInput { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_shareable() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Engine>();
        check::<DistributedPlan>();
    }

    #[test]
    fn read_only_statements() {
        for (sql, ro) in [
            ("SELECT 1", true),
            ("WITH a AS (SELECT 1) SELECT * FROM a", true),
            ("SHOW TABLES", true),
            ("DESCRIBE t", true),
            ("EXPLAIN SELECT 1", true),
            ("INSERT INTO t VALUES (1)", false),
            ("CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL)", false),
            ("DROP TABLE t", false),
        ] {
            assert_eq!(Engine::is_read_only(sql).unwrap(), ro, "{sql}");
            assert_eq!(Engine::read_kind(sql).unwrap().is_some(), ro, "{sql}");
        }
        assert_eq!(
            Engine::read_kind("WITH a AS (SELECT 1) SELECT * FROM a").unwrap(),
            Some(ReadKind::Query)
        );
        assert_eq!(
            Engine::read_kind("EXPLAIN SELECT 1").unwrap(),
            Some(ReadKind::Explain)
        );
        assert_eq!(
            Engine::read_kind("DESCRIBE t").unwrap(),
            Some(ReadKind::Catalog)
        );
        let e = Engine::is_read_only("SELEC").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest);
        assert!(e.to_string().contains("Line: 1"), "{e}");
    }

    #[test]
    fn error_kinds() {
        assert_eq!(Error::TableNotFound("t".into()).kind(), ErrorKind::NotFound);
        assert_eq!(Error::Timeout { timeout_ms: 1 }.kind(), ErrorKind::Timeout);
        assert_eq!(
            Error::MemoryLimit {
                limit: 1,
                needed: 2,
                during: "x"
            }
            .kind(),
            ErrorKind::TooLarge
        );
        let bp = zepto_storage::Error::Backpressure {
            queued_requests: 1,
            queued_bytes: 1,
        };
        assert_eq!(Error::Storage(bp).kind(), ErrorKind::Unavailable);
        assert_eq!(Error::Internal("x".into()).kind(), ErrorKind::Internal);
    }
}
