//! DDL in cluster mode: `CREATE TABLE` and `DROP TABLE` are metadata changes, committed
//! through the raft group before any node's catalog changes.
//!
//! The HTTP layer asks [`classify`] about every write statement; a DDL statement goes to
//! [`Cluster::execute_ddl`] instead of the SQL engine. The schema of a `CREATE TABLE` is built
//! by the SQL engine itself (on a scratch catalog, see `Node::table_schema_of`), so the
//! statement means exactly what it means on a single node. The HTTP answer comes after the
//! command committed *and* this node applied it to its local catalog (with the metadata's
//! table id), so a `SHOW TABLES` on the same node right after sees the table.

use sqlparser::ast::{ObjectType, Statement};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use zepto_cluster::Command;

use super::driver::RejectKind;
use super::Cluster;
use crate::db::Node;
use crate::error::{Error, Result};

/// A DDL statement that must go through the metadata group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ddl {
    CreateTable { sql: String, if_not_exists: bool },
    DropTable { names: Vec<String>, if_exists: bool },
}

/// Whether `sql` (one statement) is cluster DDL. Anything that does not parse, or parses to
/// another statement, is `None` and goes to the SQL engine as usual (which reports errors).
pub(crate) fn classify(sql: &str) -> Option<Ddl> {
    let mut stmts = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    if stmts.len() != 1 {
        return None;
    }
    match stmts.pop()? {
        Statement::CreateTable(c) => Some(Ddl::CreateTable {
            sql: sql.to_string(),
            if_not_exists: c.if_not_exists,
        }),
        Statement::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            ..
        } => Some(Ddl::DropTable {
            names: names.iter().map(|n| n.to_string()).collect(),
            if_exists,
        }),
        _ => None,
    }
}

impl Cluster {
    /// Run a DDL statement through the metadata group; returns the message for the client.
    pub(crate) async fn execute_ddl(
        &self,
        node: &std::sync::Arc<Node>,
        ddl: Ddl,
    ) -> Result<String> {
        match ddl {
            Ddl::CreateTable { sql, if_not_exists } => {
                let n = node.clone();
                let schema = tokio::task::spawn_blocking(move || n.table_schema_of(&sql))
                    .await
                    .map_err(|e| Error::Internal(format!("schema task failed: {e}")))??;
                let name = schema.name.clone();
                if if_not_exists && self.view().state.table(&name).is_some() {
                    return Ok(format!("table {name} already exists"));
                }
                let o = self
                    .propose(&Command::CreateTable {
                        schema: schema.clone(),
                    })
                    .await?;
                // Our own earlier attempt (outcome unknown, e.g. across a leader change) may
                // have created it: then the same schema is there.
                let ours = matches!(o.rejected, Some((RejectKind::TableExists, _)))
                    && o.after_unknown
                    && self.wait_applied(o.index).await.is_ok()
                    && self.view().state.table(&name) == Some(&schema);
                match o.rejected {
                    None => {}
                    Some((RejectKind::TableExists, _)) if if_not_exists => {
                        return Ok(format!("table {name} already exists"))
                    }
                    Some(_) if ours => {}
                    Some((_, reason)) => return Err(Error::BadRequest(reason)),
                }
                self.wait_applied(o.index).await?;
                tracing::info!(table = %name, index = o.index, "created table through the metadata group");
                Ok(format!("created table {name}"))
            }
            Ddl::DropTable { names, if_exists } => {
                let mut done = Vec::new();
                for name in names {
                    let o = self
                        .propose(&Command::DropTable { name: name.clone() })
                        .await?;
                    match o.rejected {
                        None => {}
                        Some((RejectKind::UnknownTable, _)) if if_exists => continue,
                        // Our own earlier attempt (outcome unknown) dropped it.
                        Some((RejectKind::UnknownTable, _)) if o.after_unknown => {}
                        Some((RejectKind::UnknownTable, reason)) => {
                            return Err(Error::NotFound(reason))
                        }
                        Some((_, reason)) => return Err(Error::BadRequest(reason)),
                    }
                    self.wait_applied(o.index).await?;
                    tracing::info!(table = %name, index = o.index, "dropped table through the metadata group");
                    done.push(name);
                }
                Ok(format!(
                    "dropped {}",
                    if done.is_empty() {
                        "nothing".to_string()
                    } else {
                        done.join(", ")
                    }
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_only_table_ddl() {
        assert_eq!(
            classify("CREATE TABLE IF NOT EXISTS t (ts TIMESTAMP, symbol SYMBOL)"),
            Some(Ddl::CreateTable {
                sql: "CREATE TABLE IF NOT EXISTS t (ts TIMESTAMP, symbol SYMBOL)".into(),
                if_not_exists: true
            })
        );
        assert_eq!(
            classify("drop table if exists a, b"),
            Some(Ddl::DropTable {
                names: vec!["a".into(), "b".into()],
                if_exists: true
            })
        );
        assert_eq!(
            classify("DROP TABLE a"),
            Some(Ddl::DropTable {
                names: vec!["a".into()],
                if_exists: false
            })
        );
        for other in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "DROP VIEW v",
            "CREATE TABLE",
            "CREATE TABLE a (x INT); DROP TABLE a",
            "not sql at all",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }
}
