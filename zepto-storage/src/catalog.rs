//! The schema catalog and the data directory's identity file, both persisted atomically
//! (temp file + fsync + rename + fsync of the directory).
//!
//! `zepto.json` names the on-disk format version and the settings fixed at creation (the
//! partition count). A directory from a newer format is refused with both versions named.
//! `catalog.json` holds every table with a numeric id that is never reused, so WAL records
//! of a dropped table are recognised and skipped on replay.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::faults::Faults;
use crate::fsutil::write_atomic;
use crate::schema::TableSchema;

/// The on-disk format version this build writes and the newest it reads.
///
/// 2: checkpoint manifests may carry `wal_floors` (partition imports). A version-1
/// directory is read as it is and its identity file is raised to 2 when it is opened, so
/// that an older build refuses it instead of misreading a newer manifest.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    format_version: u32,
    partitions: u32,
}

/// Check (or, for a new directory, write) the identity file. Returns the partition count.
pub(crate) fn check_identity(dir: &Path, partitions: u32, faults: &Faults) -> Result<u32> {
    let path = dir.join("zepto.json");
    match fs::read(&path) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                path: path.clone(),
                offset: e.column() as u64,
                reason: format!("invalid identity file: {e}"),
            })?;
            if id.format_version > FORMAT_VERSION || id.format_version == 0 {
                return Err(Error::UnsupportedVersion {
                    path,
                    found: id.format_version,
                    supported: FORMAT_VERSION,
                });
            }
            if id.partitions != partitions {
                return Err(Error::Incompatible {
                    path,
                    what: "partitions",
                    found: u64::from(id.partitions),
                    requested: u64::from(partitions),
                });
            }
            if id.format_version < FORMAT_VERSION {
                // Everything older is read as it is; what this build writes from now on is
                // the current version, which an older build must refuse.
                let upgraded = Identity {
                    format_version: FORMAT_VERSION,
                    partitions,
                };
                let bytes = serde_json::to_vec_pretty(&upgraded)
                    .map_err(|e| Error::Internal(format!("encode identity: {e}")))?;
                write_atomic(&path, &bytes, faults)?;
                tracing::info!(
                    path = %path.display(),
                    from = id.format_version,
                    to = FORMAT_VERSION,
                    "raised the data directory's format version"
                );
            }
            Ok(id.partitions)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity {
                format_version: FORMAT_VERSION,
                partitions,
            };
            let bytes = serde_json::to_vec_pretty(&id)
                .map_err(|e| Error::Internal(format!("encode identity: {e}")))?;
            write_atomic(&path, &bytes, faults)?;
            Ok(partitions)
        }
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// A table known to the catalog.
#[derive(Debug, Clone)]
pub(crate) struct TableEntry {
    pub(crate) id: u32,
    pub(crate) schema: Arc<TableSchema>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogFile {
    format_version: u32,
    next_table_id: u32,
    tables: Vec<CatalogTable>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogTable {
    id: u32,
    schema: TableSchema,
}

/// The set of tables. Not internally synchronised: the engine holds it behind a lock and
/// persists every change before making it visible.
#[derive(Debug)]
pub(crate) struct Catalog {
    path: PathBuf,
    next_table_id: u32,
    /// By lower-case name.
    tables: BTreeMap<String, TableEntry>,
}

impl Catalog {
    /// Load `catalog.json` from the data directory, or start empty.
    pub(crate) fn load(dir: &Path) -> Result<Catalog> {
        let path = dir.join("catalog.json");
        let mut catalog = Catalog {
            path: path.clone(),
            next_table_id: 1,
            tables: BTreeMap::new(),
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(catalog),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        let file: CatalogFile = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            offset: e.column() as u64,
            reason: format!("invalid catalog (line {}): {e}", e.line()),
        })?;
        if file.format_version > FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path,
                found: file.format_version,
                supported: FORMAT_VERSION,
            });
        }
        catalog.next_table_id = file.next_table_id;
        for t in file.tables {
            // Re-validate: a hand-edited catalog must not smuggle in an invalid schema.
            let s = t.schema;
            let ts_name = s.columns.get(s.timestamp).map(|c| c.name.clone());
            let key_name = s.columns.get(s.partition_key).map(|c| c.name.clone());
            let schema = TableSchema::new(
                s.name.clone(),
                s.columns.clone(),
                ts_name.as_deref(),
                key_name.as_deref(),
            )
            .map_err(|e| Error::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("table '{}' in catalog is invalid: {e}", s.name),
            })?;
            catalog.tables.insert(
                schema.name.to_ascii_lowercase(),
                TableEntry {
                    id: t.id,
                    schema: Arc::new(schema),
                },
            );
        }
        Ok(catalog)
    }

    fn persist(&self, faults: &Faults) -> Result<()> {
        let file = CatalogFile {
            format_version: FORMAT_VERSION,
            next_table_id: self.next_table_id,
            tables: self
                .tables
                .values()
                .map(|t| CatalogTable {
                    id: t.id,
                    schema: (*t.schema).clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Internal(format!("encode catalog: {e}")))?;
        write_atomic(&self.path, &bytes, faults).map_err(|e| match e {
            Error::Io { context, source } => Error::Io {
                context: format!("persist catalog: {context}"),
                source,
            },
            other => other,
        })
    }

    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<&TableEntry> {
        self.tables.get(&name.to_ascii_lowercase())
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &TableEntry> {
        self.tables.values()
    }

    /// Add a table durably and return its entry. `id`: one chosen by the cluster (must be
    /// unused and at least the next free one); `None` takes the next free id.
    pub(crate) fn create(
        &mut self,
        schema: TableSchema,
        id: Option<u32>,
        faults: &Faults,
    ) -> Result<TableEntry> {
        let key = schema.name.to_ascii_lowercase();
        if self.tables.contains_key(&key) {
            return Err(Error::TableExists(schema.name));
        }
        let id = match id {
            Some(id) if id < self.next_table_id || id == 0 => {
                return Err(Error::InvalidInput(format!(
                    "table id {id} is used or was used before (next free: {})",
                    self.next_table_id
                )))
            }
            Some(id) => id,
            None => self.next_table_id,
        };
        let entry = TableEntry {
            id,
            schema: Arc::new(schema),
        };
        let prev_next = self.next_table_id;
        self.next_table_id = id + 1;
        self.tables.insert(key.clone(), entry.clone());
        if let Err(e) = self.persist(faults) {
            self.tables.remove(&key);
            self.next_table_id = prev_next;
            return Err(e);
        }
        Ok(entry)
    }

    /// Remove a table durably and return what it was.
    pub(crate) fn drop_table(&mut self, name: &str, faults: &Faults) -> Result<TableEntry> {
        let key = name.to_ascii_lowercase();
        let entry = self
            .tables
            .remove(&key)
            .ok_or_else(|| Error::TableNotFound(name.to_string()))?;
        if let Err(e) = self.persist(faults) {
            self.tables.insert(key, entry);
            return Err(e);
        }
        Ok(entry)
    }
}

/// Make sure the data directory exists (creating it) and is a directory we can use.
pub(crate) fn prepare_data_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        crate::fsutil::create_dir_durable(dir)?;
    }
    let meta = fs::metadata(dir).ctx(|| format!("stat data directory {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(Error::InvalidInput(format!(
            "data directory {} exists and is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ColumnDef, ColumnType};

    fn schema(name: &str) -> TableSchema {
        TableSchema::new(
            name,
            vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("symbol", ColumnType::Symbol),
                ColumnDef::new("price", ColumnType::Double),
            ],
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn catalog_survives_reload_and_never_reuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let mut c = Catalog::load(dir.path()).unwrap();
        let a = c.create(schema("a"), None, &faults).unwrap();
        let b = c.create(schema("b"), None, &faults).unwrap();
        assert!(matches!(
            c.create(schema("A"), None, &faults),
            Err(Error::TableExists(_))
        ));
        c.drop_table("a", &faults).unwrap();
        let a2 = c.create(schema("a"), None, &faults).unwrap();
        assert!(a2.id > b.id && b.id > a.id);
        let c2 = Catalog::load(dir.path()).unwrap();
        assert_eq!(c2.get("A").unwrap().id, a2.id);
        assert_eq!(c2.get("b").unwrap().schema.columns.len(), 3);
    }

    #[test]
    fn failed_persist_leaves_catalog_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let mut c = Catalog::load(dir.path()).unwrap();
        faults
            .set("fs::write_atomic::before_fsync", "enospc")
            .unwrap();
        assert!(c.create(schema("a"), None, &faults).is_err());
        assert!(c.get("a").is_none());
        faults.clear("fs::write_atomic::before_fsync");
        c.create(schema("a"), None, &faults).unwrap();
    }

    #[test]
    fn newer_format_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        assert_eq!(check_identity(dir.path(), 16, &faults).unwrap(), 16);
        assert!(matches!(
            check_identity(dir.path(), 8, &faults),
            Err(Error::Incompatible { .. })
        ));
        fs::write(
            dir.path().join("zepto.json"),
            br#"{"format_version": 9, "partitions": 16}"#,
        )
        .unwrap();
        let e = check_identity(dir.path(), 16, &faults)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format version 9") && e.contains("up to 2"),
            "{e}"
        );
    }

    #[test]
    fn an_older_format_is_read_and_raised_to_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zepto.json");
        fs::write(&path, br#"{"format_version": 1, "partitions": 16}"#).unwrap();
        assert_eq!(
            check_identity(dir.path(), 16, &Faults::default()).unwrap(),
            16
        );
        let id: Identity = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!((id.format_version, id.partitions), (FORMAT_VERSION, 16));
        assert_eq!(FORMAT_VERSION, 2);
    }
}
