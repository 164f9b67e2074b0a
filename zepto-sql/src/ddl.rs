//! Statements that are not queries: CREATE TABLE, DROP TABLE, SHOW TABLES, DESCRIBE, INSERT.
//!
//! `CREATE TABLE t (ts TIMESTAMP, symbol SYMBOL, price DOUBLE) WITH (timestamp = 'ts',
//! partition_key = 'symbol')`: the `WITH` options name the designated timestamp and the
//! partition key; without them the first TIMESTAMP column and the column named `symbol`
//! (else the first SYMBOL column) are used.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sqlparser::ast::{self, CreateTableOptions, SqlOption, Statement};
use zepto_storage::{ColumnDef, ColumnType, TableSchema};

use crate::error::{invalid, unsupported, Error, Result};
use crate::exec::{collect, ExecCtx};
use crate::expr::cast_checked;
use crate::plan::bind::Binder;
use crate::QueryOutput;

fn storage_err(e: zepto_storage::Error) -> Error {
    match e {
        zepto_storage::Error::TableNotFound(t) => Error::TableNotFound(t),
        e => Error::Storage(e),
    }
}

fn option_value(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn create_table(ctx: &ExecCtx, c: &ast::CreateTable) -> Result<QueryOutput> {
    if c.query.is_some() || c.like.is_some() || c.clone.is_some() {
        return Err(unsupported("CREATE TABLE AS / LIKE / CLONE"));
    }
    let name = c.name.to_string();
    let mut cols = vec![];
    for col in &c.columns {
        let t = col.data_type.to_string();
        let base = t.split('(').next().unwrap_or(&t).trim().to_string();
        let ty = ColumnType::parse(&base).ok_or_else(|| {
            invalid(format!(
                "unknown column type {t} for '{}'; use TIMESTAMP, SYMBOL, STRING, BIGINT, INT, DOUBLE or BOOLEAN",
                col.name.value
            ))
        })?;
        cols.push(ColumnDef::new(col.name.value.clone(), ty));
    }
    let (mut ts, mut key) = (None, None);
    let opts: &[SqlOption] = match &c.table_options {
        CreateTableOptions::None => &[],
        CreateTableOptions::With(o)
        | CreateTableOptions::Options(o)
        | CreateTableOptions::Plain(o) => o,
        CreateTableOptions::TableProperties(o) => o,
    };
    for o in opts {
        match o {
            SqlOption::KeyValue { key: k, value } => {
                let k = k.to_string().to_ascii_lowercase();
                match k.as_str() {
                    "timestamp" | "designated_timestamp" => ts = Some(option_value(value)),
                    "partition_key" | "partition_by" | "symbol" => key = Some(option_value(value)),
                    other => {
                        return Err(invalid(format!(
                            "unknown table option '{other}' (use timestamp, partition_key)"
                        )))
                    }
                }
            }
            other => return Err(unsupported(format!("table option {other}"))),
        }
    }
    let schema =
        TableSchema::new(name.clone(), cols, ts.as_deref(), key.as_deref()).map_err(storage_err)?;
    match ctx.db.create_table(schema) {
        Ok(_) => Ok(QueryOutput::Ok {
            message: format!("created table {name}"),
        }),
        Err(zepto_storage::Error::TableExists(_)) if c.if_not_exists => Ok(QueryOutput::Ok {
            message: format!("table {name} already exists"),
        }),
        Err(e) => Err(storage_err(e)),
    }
}

pub(crate) fn drop_table(
    ctx: &ExecCtx,
    names: &[ast::ObjectName],
    if_exists: bool,
) -> Result<QueryOutput> {
    let mut done = vec![];
    for n in names {
        let name = n.to_string();
        match ctx.db.drop_table(&name) {
            Ok(()) => done.push(name),
            Err(zepto_storage::Error::TableNotFound(_)) if if_exists => {}
            Err(e) => return Err(storage_err(e)),
        }
    }
    Ok(QueryOutput::Ok {
        message: format!(
            "dropped {}",
            if done.is_empty() {
                "nothing".to_string()
            } else {
                done.join(", ")
            }
        ),
    })
}

fn text_rows(cols: &[&str], rows: Vec<Vec<String>>) -> Result<QueryOutput> {
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|c| Field::new(*c, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..cols.len())
        .map(|i| {
            Arc::new(
                rows.iter()
                    .map(|r| r.get(i).cloned().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(Some)
                    .collect::<StringArray>(),
            ) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    Ok(QueryOutput::Rows {
        schema,
        batches: vec![batch],
        rows_read: 0,
    })
}

pub(crate) fn show_tables(ctx: &ExecCtx) -> Result<QueryOutput> {
    let rows = ctx
        .db
        .tables()
        .iter()
        .map(|t| vec![t.name.clone()])
        .collect();
    text_rows(&["name"], rows)
}

pub(crate) fn describe(ctx: &ExecCtx, name: &str) -> Result<QueryOutput> {
    let t = ctx.db.table(name).map_err(storage_err)?;
    let rows = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let role = if i == t.timestamp {
                "designated timestamp"
            } else if i == t.partition_key {
                "partition key"
            } else {
                ""
            };
            vec![c.name.clone(), c.ty.name().to_string(), role.to_string()]
        })
        .collect();
    text_rows(&["column", "type", "role"], rows)
}

pub(crate) fn insert(
    binder: &mut Binder<'_>,
    ctx: &ExecCtx,
    ins: &ast::Insert,
) -> Result<QueryOutput> {
    let bound = bind_insert(binder, ins)?;
    let batches = collect(&bound.source, ctx)?;
    let Some(batch) = bound.conform(&batches)? else {
        return Ok(QueryOutput::Inserted { rows: 0 });
    };
    let receipt = ctx
        .db
        .insert(&bound.table.name, batch)
        .map_err(storage_err)?;
    Ok(QueryOutput::Inserted {
        rows: receipt.rows as u64,
    })
}

/// An INSERT bound to its table: the source plan and which source column feeds each table
/// column.
#[derive(Debug)]
pub(crate) struct BoundInsert {
    pub(crate) table: Arc<TableSchema>,
    pub(crate) source: crate::plan::Node,
    pub(crate) targets: Vec<Option<usize>>,
}

impl BoundInsert {
    /// Shape the source's output rows into the table's columns; `None` for no rows.
    pub(crate) fn conform(&self, batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        if total == 0 {
            return Ok(None);
        }
        let all = arrow::compute::concat_batches(&first.schema(), batches)?;
        if all.num_columns() != self.source.schema().fields().len() {
            return Err(invalid(format!(
                "the INSERT's source gave {} columns, expected {}",
                all.num_columns(),
                self.source.schema().fields().len()
            )));
        }
        conform(&self.table, &all, &self.targets).map(Some)
    }
}

/// Check an INSERT against its table and plan its source (not run).
pub(crate) fn bind_insert(binder: &mut Binder<'_>, ins: &ast::Insert) -> Result<BoundInsert> {
    let name = match &ins.table {
        ast::TableObject::TableName(n) => n.to_string(),
        other => return Err(unsupported(format!("INSERT INTO {other}"))),
    };
    if ins.on.is_some() || ins.returning.is_some() || !ins.assignments.is_empty() || ins.overwrite {
        return Err(unsupported(
            "INSERT with ON CONFLICT / RETURNING / SET / OVERWRITE",
        ));
    }
    let table = binder.ctx.db.table(&name).map_err(storage_err)?;
    let source = ins
        .source
        .as_ref()
        .ok_or_else(|| invalid("INSERT needs VALUES or SELECT"))?;
    let node = crate::plan::prune::prune_plan(binder.plan_query(source)?.0)?;
    let src_schema = node.schema();
    // Which source column feeds each table column.
    let targets: Vec<Option<usize>> = if ins.columns.is_empty() {
        if src_schema.fields().len() != table.columns.len() {
            return Err(invalid(format!(
                "table {} has {} columns but the INSERT gives {}",
                table.name,
                table.columns.len(),
                src_schema.fields().len()
            )));
        }
        (0..table.columns.len()).map(Some).collect()
    } else {
        if ins.columns.len() != src_schema.fields().len() {
            return Err(invalid(format!(
                "INSERT names {} columns but gives {} values per row",
                ins.columns.len(),
                src_schema.fields().len()
            )));
        }
        let mut t = vec![None; table.columns.len()];
        for (si, c) in ins.columns.iter().enumerate() {
            let cname = c.to_string();
            let ti = table
                .column_index(&cname)
                .ok_or_else(|| Error::ColumnNotFound(cname.clone()))?;
            if let Some(slot) = t.get_mut(ti) {
                *slot = Some(si);
            }
        }
        t
    };
    Ok(BoundInsert {
        table,
        source: node,
        targets,
    })
}

/// Shape `all` into the table's columns: `targets[i]` names the column of `all` that feeds
/// table column `i` (missing = NULL, refused for the timestamp and the key). Values are cast
/// with the engine's rules (ISO-8601 strings and integers become timestamps, SYMBOLs travel
/// as `Utf8`); a value that does not convert fails the whole batch.
pub(crate) fn conform(
    table: &TableSchema,
    all: &RecordBatch,
    targets: &[Option<usize>],
) -> Result<RecordBatch> {
    let total = all.num_rows();
    let mut fields = vec![];
    let mut arrays = vec![];
    for (ti, col) in table.columns.iter().enumerate() {
        let want = match col.ty {
            ColumnType::Symbol => DataType::Utf8,
            t => t.arrow_type(),
        };
        let a = match targets
            .get(ti)
            .copied()
            .flatten()
            .and_then(|si| all.columns().get(si))
        {
            Some(a) => {
                let a = match a.data_type() {
                    DataType::Dictionary(_, _) => arrow::compute::cast(a, &DataType::Utf8)?,
                    _ => a.clone(),
                };
                cast_checked(&a, &want).map_err(|e| {
                    invalid(format!(
                        "column '{}' ({}) cannot take these values: {e}",
                        col.name, col.ty
                    ))
                })?
            }
            None => {
                if ti == table.timestamp || ti == table.partition_key {
                    return Err(invalid(format!(
                        "INSERT must give a value for '{}'",
                        col.name
                    )));
                }
                arrow::array::new_null_array(&want, total)
            }
        };
        if (ti == table.timestamp || ti == table.partition_key) && a.null_count() > 0 {
            return Err(invalid(format!("'{}' cannot be NULL", col.name)));
        }
        fields.push(Field::new(&col.name, want, true));
        arrays.push(a);
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(total)),
    )?)
}

/// Insert a batch whose columns are matched to the table's by name (case-insensitive);
/// columns the batch lacks are NULL, extra columns are an error.
pub(crate) fn insert_batch(ctx: &ExecCtx, table: &str, batch: &RecordBatch) -> Result<u64> {
    let table = ctx.db.table(table).map_err(storage_err)?;
    let mut targets = vec![None; table.columns.len()];
    for (si, f) in batch.schema().fields().iter().enumerate() {
        let ti = table
            .column_index(f.name())
            .ok_or_else(|| Error::ColumnNotFound(f.name().clone()))?;
        if let Some(slot) = targets.get_mut(ti) {
            *slot = Some(si);
        }
    }
    if batch.num_rows() == 0 {
        return Ok(0);
    }
    let conformed = conform(&table, batch, &targets)?;
    let receipt = ctx.db.insert(&table.name, conformed).map_err(storage_err)?;
    Ok(receipt.rows as u64)
}

/// True when the statement only reads.
pub(crate) fn is_read_only(s: &Statement) -> bool {
    match s {
        Statement::Query(_) | Statement::ShowTables { .. } | Statement::ExplainTable { .. } => true,
        // EXPLAIN ANALYZE runs the statement: read-only exactly when the statement is.
        Statement::Explain { statement, .. } => is_read_only(statement),
        _ => false,
    }
}
