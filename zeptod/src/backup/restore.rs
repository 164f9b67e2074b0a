//! Restore: a base backup plus the archived WAL that continues each of its partitions (up
//! to a time, if asked), into an empty data directory (a single node) or into a running,
//! empty server or cluster (`--to-server`: tables created and rows inserted through its
//! HTTP API, so a new cluster's metadata assigns table ids and placement as usual).
//!
//! Phase 1 downloads every object the restore needs into a staging directory and checks it
//! (size and xxh3 against the manifest for row objects; CRC, framing and names for WAL
//! objects): a missing, truncated or corrupt object stops the restore before anything is
//! written, with the object named. Phase 2 loads. A data-directory restore builds the
//! database in `<dir>.restoring` and renames it to `<dir>` only when it is complete and
//! closed (checkpointed), so an interrupted restore never leaves `<dir>` looking complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use super::format::{self, ArchivedRecord, Manifest, WalObject};
use super::store::Store;
use crate::error::{Error, Result};

/// What to restore.
#[derive(Debug, Clone)]
pub(crate) struct RestoreRequest {
    pub(crate) backup: Option<String>,
    /// Only archived WAL read at or before this (unix ms).
    pub(crate) until_unix_ms: Option<i64>,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct RestoreReport {
    pub(crate) backup: String,
    pub(crate) base_rows: u64,
    pub(crate) wal_records: u64,
    pub(crate) wal_rows: u64,
    pub(crate) bytes_downloaded: u64,
    pub(crate) objects: u64,
    /// Partitions whose archive stopped before its end (`partition -> first missing seq`).
    pub(crate) wal_gaps: BTreeMap<u32, u64>,
    pub(crate) duration_ms: u64,
}

/// Everything the restore needs, downloaded and checked.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) manifest: Manifest,
    /// Per partition: staged row objects `(table id, file)`.
    rows: Vec<(u32, PathBuf)>,
    /// Per partition: the archived records that continue it.
    wal: BTreeMap<u32, Vec<ArchivedRecord>>,
}

/// Choose the backup: the one named, else the newest complete one (created at or before
/// `until`, when given).
pub(crate) async fn pick_manifest(
    store: &Store,
    id: Option<&str>,
    until: Option<i64>,
) -> Result<Manifest> {
    match id {
        Some(id) => {
            let key = format::manifest_key(id);
            let data = store.get_opt(&key).await?.ok_or_else(|| {
                Error::Backup(format!(
                    "no complete backup '{id}' at {} (object {key} does not exist; \
                     `zeptod backup list --from {}` shows what there is)",
                    store.url(),
                    store.url()
                ))
            })?;
            Manifest::parse(&key, &data)
        }
        None => super::base::list_manifests(store)
            .await?
            .into_iter()
            .rfind(|m| until.is_none_or(|u| m.created_unix_ms <= u))
            .ok_or_else(|| {
                Error::Backup(format!(
                    "no complete backup at {}{} (no backups/*/MANIFEST.json)",
                    store.url(),
                    if until.is_some() {
                        " created before --until"
                    } else {
                        ""
                    }
                ))
            }),
    }
}

/// Phase 1: download and check everything into `staging`.
pub(crate) async fn download_and_verify(
    store: &Store,
    req: &RestoreRequest,
    staging: &Path,
    report: &mut RestoreReport,
) -> Result<Verified> {
    store.check().await?;
    let manifest = pick_manifest(store, req.backup.as_deref(), req.until_unix_ms).await?;
    report.backup = manifest.id.clone();
    tracing::info!(backup = %manifest.id, created = %manifest.created, rows = manifest.total_rows(), bytes = manifest.total_bytes(), "restoring base backup");
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::io(format!("create {}", staging.display()), e))?;
    let mut rows = Vec::new();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let total = manifest
        .parts
        .iter()
        .map(|p| p.objects.len())
        .sum::<usize>();
    for part in &manifest.parts {
        for o in &part.objects {
            if manifest.table(o.table_id).is_none() {
                return Err(Error::Backup(format!(
                    "object {} names table id {} which the manifest does not list",
                    o.key, o.table_id
                )));
            }
            let path = match seen.get(&o.key) {
                Some(p) => p.clone(),
                None => {
                    let data = store.get(&o.key).await?;
                    format::verify_object(o, &data)?;
                    let path = staging.join(format!("{}.arrows", seen.len()));
                    std::fs::write(&path, &data)
                        .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
                    report.bytes_downloaded += data.len() as u64;
                    report.objects += 1;
                    seen.insert(o.key.clone(), path.clone());
                    if seen.len().is_multiple_of(500) {
                        tracing::info!(
                            done = seen.len(),
                            total,
                            "row objects downloaded and checked"
                        );
                    }
                    path
                }
            };
            rows.push((o.table_id, path));
        }
    }
    // The archived WAL after each partition's cut.
    let mut all_wal: BTreeMap<u32, Vec<WalObject>> = BTreeMap::new();
    for (key, _, _) in store.list("wal").await? {
        if let Some(o) = format::parse_wal_key(&key) {
            all_wal.entry(o.partition).or_default().push(o);
        }
    }
    let mut wal = BTreeMap::new();
    for part in &manifest.parts {
        let objs: Vec<WalObject> = all_wal
            .remove(&part.partition)
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.end > part.next_seq)
            .filter(|o| req.until_unix_ms.is_none_or(|u| o.unix_ms <= u))
            .collect();
        let mut decoded = Vec::with_capacity(objs.len());
        for o in &objs {
            let data = store.get(&o.key).await?;
            report.bytes_downloaded += data.len() as u64;
            report.objects += 1;
            decoded.push(format::decode_wal(o, data)?);
        }
        let (records, gap) = format::chain_records(part.next_seq, decoded);
        if let Some(seq) = gap {
            tracing::warn!(partition = part.partition, seq, "the archive of this partition stops at a gap; later archived records are not restored");
            report.wal_gaps.insert(part.partition, seq);
        }
        report.wal_records += records.len() as u64;
        wal.insert(part.partition, records);
    }
    tracing::info!(
        objects = report.objects,
        bytes = report.bytes_downloaded,
        wal_records = report.wal_records,
        "every object downloaded and checked"
    );
    Ok(Verified {
        manifest,
        rows,
        wal,
    })
}

impl Verified {
    /// Every row to restore, table by table: `f(table id, batch)`.
    pub(crate) fn for_each_batch(
        &self,
        report: &mut RestoreReport,
        mut f: impl FnMut(u32, RecordBatch) -> Result<()>,
    ) -> Result<()> {
        for (table_id, path) in &self.rows {
            let data = std::fs::read(path)
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            for b in format::decode_batches(&path.display().to_string(), Bytes::from(data))? {
                report.base_rows += b.num_rows() as u64;
                f(*table_id, b)?;
            }
        }
        for (p, records) in &self.wal {
            for (epoch, seq, payload) in records {
                let what = format!("archived WAL record partition {p} seq {seq} epoch {epoch}");
                let id = zepto_storage::payload_table_id(payload)
                    .ok_or_else(|| Error::Backup(format!("{what}: not a rows payload")))?;
                let schema = self.manifest.table(id).ok_or_else(|| {
                    Error::Backup(format!(
                        "{what}: table id {id} is not in the backup's tables (a table created \
                         after the base backup: take a new base backup after creating tables)"
                    ))
                })?;
                let b = zepto_storage::decode_payload(payload, schema, &what)
                    .map_err(|e| Error::Backup(e.to_string()))?;
                report.wal_rows += b.num_rows() as u64;
                f(id, b)?;
            }
        }
        Ok(())
    }
}

/// Refuse a data directory that holds anything.
pub(crate) fn check_empty_dir(dir: &Path) -> Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(Error::BadRequest(format!(
                    "refusing to restore into {}: the directory is not empty (restore needs an \
                     empty or missing data directory)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("read {}", dir.display()), e)),
    }
}

/// Restore into an empty data directory (single node).
pub(crate) async fn restore_to_dir(
    store: &Store,
    req: &RestoreRequest,
    dir: &Path,
) -> Result<RestoreReport> {
    let started = Instant::now();
    check_empty_dir(dir)?;
    let dir = std::path::absolute(dir)
        .map_err(|e| Error::Config(format!("data dir {}: {e}", dir.display())))?;
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Config(format!("data dir {} has no name", dir.display())))?;
    let work = dir.with_file_name(format!("{}.restoring", name.to_string_lossy()));
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| Error::io(format!("remove stale {}", work.display()), e))?;
    }
    let loaded = load_into(store, req, &work).await;
    let report = match loaded {
        Ok(r) => r,
        Err(e) => {
            // Nothing of a failed restore stays behind (it never had the target's name).
            if let Err(rm) = std::fs::remove_dir_all(&work) {
                tracing::warn!(path = %work.display(), error = %rm, "could not remove the failed restore's work directory");
            }
            return Err(e);
        }
    };
    let staging = work.join("download");
    let mut report = report;
    std::fs::remove_dir_all(&staging)
        .map_err(|e| Error::io(format!("remove {}", staging.display()), e))?;
    // The commit point: the complete, closed database takes the directory's name.
    if dir.exists() {
        std::fs::remove_dir(&dir)
            .map_err(|e| Error::io(format!("replace {}", dir.display()), e))?;
    }
    std::fs::rename(work.join("data"), &dir)
        .map_err(|e| Error::io(format!("move the restored data to {}", dir.display()), e))?;
    std::fs::remove_dir_all(&work)
        .map_err(|e| Error::io(format!("remove {}", work.display()), e))?;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Download, check and load everything into `work/data` (staging in `work/download`).
async fn load_into(store: &Store, req: &RestoreRequest, work: &Path) -> Result<RestoreReport> {
    let mut report = RestoreReport::default();
    let staging = work.join("download");
    let verified = download_and_verify(store, req, &staging, &mut report).await?;
    let data = work.join("data");
    let partitions = verified.manifest.partitions;
    tokio::task::spawn_blocking(move || -> Result<RestoreReport> {
        let mut cfg = zepto_storage::Config::new(data.clone());
        cfg.partitions = partitions;
        cfg.checkpoint_interval = None;
        cfg.scrub_bytes_per_sec = 0; // a short-lived open that writes every file itself
        let db = zepto_storage::Db::open(cfg).map_err(crate::db::storage_error)?;
        let mut names = BTreeMap::new();
        for t in &verified.manifest.tables {
            db.create_table_with_id(t.schema.clone(), t.id)
                .map_err(crate::db::storage_error)?;
            names.insert(t.id, t.schema.name.clone());
        }
        let mut tickets = Vec::new();
        verified.for_each_batch(&mut report, |id, batch| {
            let name = names
                .get(&id)
                .ok_or_else(|| Error::Internal(format!("table id {id} unknown")))?;
            tickets.push(db.write(name, batch).map_err(crate::db::storage_error)?);
            if tickets.len() >= 256 {
                for t in tickets.drain(..) {
                    t.wait().map_err(crate::db::storage_error)?;
                }
            }
            Ok(())
        })?;
        for t in tickets {
            t.wait().map_err(crate::db::storage_error)?;
        }
        db.checkpoint().map_err(crate::db::storage_error)?;
        db.close().map_err(crate::db::storage_error)?;
        Ok(report)
    })
    .await
    .map_err(|e| Error::Internal(format!("restore task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::backup::format::PartBackup;
    use crate::backup::store::StoreArgs;
    use zepto_storage::ReplicatedRecord;

    /// A record as the primary of `epoch` wrote it: its payload names both, so the test
    /// sees which copy the restore took.
    fn rec(epoch: u64, seq: u64) -> ReplicatedRecord {
        ReplicatedRecord {
            partition: 0,
            epoch,
            seq,
            sender_epoch: epoch,
            prev_epoch: None,
            payload: Bytes::from(format!("e{epoch}s{seq}")),
        }
    }

    /// Upload one archived WAL object as the archiver names it (its epoch in the name is
    /// its newest record's).
    async fn archive(store: &Store, records: &[ReplicatedRecord], unix_ms: i64) {
        let start = records[0].seq;
        let end = records[records.len() - 1].seq + 1;
        let epoch = records.iter().map(|r| r.epoch).max().unwrap();
        let key = format::wal_key(0, start, end, epoch, unix_ms);
        store
            .put(&key, Bytes::from(format::encode_wal(0, records)))
            .await
            .unwrap();
    }

    /// A base backup of one partition cut at `next_seq` (no rows: only the archive counts).
    async fn base(store: &Store, next_seq: u64) {
        let m = Manifest {
            format: format::MANIFEST_FORMAT,
            id: "b1".into(),
            created: "2026-11-26T00:00:00Z".into(),
            created_unix_ms: 1,
            partitions: 1,
            tables: Vec::new(),
            parts: vec![PartBackup {
                partition: 0,
                epoch: 1,
                next_seq,
                node: Some(3),
                objects: Vec::new(),
            }],
        };
        let data = serde_json::to_vec(&m).unwrap();
        store
            .put(&format::manifest_key("b1"), Bytes::from(data))
            .await
            .unwrap();
    }

    /// What the restore would replay for partition 0: `(epoch, seq, payload)` as text.
    async fn restored(store: &Store, dir: &Path) -> (Vec<(u64, u64, String)>, RestoreReport) {
        let mut report = RestoreReport::default();
        let req = RestoreRequest {
            backup: None,
            until_unix_ms: None,
        };
        let v = download_and_verify(store, &req, &dir.join("staging"), &mut report)
            .await
            .unwrap();
        let recs = v.wal[&0]
            .iter()
            .map(|(e, s, p)| (*e, *s, String::from_utf8_lossy(p).into_owned()))
            .collect();
        (recs, report)
    }

    fn expect(recs: &[(u64, u64)]) -> Vec<(u64, u64, String)> {
        recs.iter()
            .map(|&(e, s)| (e, s, format!("e{e}s{s}")))
            .collect()
    }

    #[tokio::test]
    async fn a_failover_re_archived_range_is_restored_once_with_the_new_epoch_winning() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("bucket").display());
        let store = Store::open(&url, &StoreArgs::default()).unwrap();
        base(&store, 5).await;
        // The old primary (epoch 1) archived 3..7 (partly below the base backup's cut).
        archive(&store, &[rec(1, 3), rec(1, 4), rec(1, 5), rec(1, 6)], 1_000).await;
        // The new primary (epoch 2) saw the archive end at 7 and re-archived the records
        // the old one had acknowledged but not uploaded (7, 8: epoch 1, replicated to it)
        // in an object named epoch 2, followed by its own.
        archive(
            &store,
            &[rec(1, 7), rec(1, 8), rec(2, 9), rec(2, 10), rec(2, 11)],
            3_000,
        )
        .await;
        // The deposed primary's last upload landed after the new primary listed: it
        // overlaps 7..9 with the same records, and 9..11 with records it never replicated
        // (never acknowledged), which the new primary's epoch-2 records replace.
        archive(
            &store,
            &[rec(1, 7), rec(1, 8), rec(1, 9), rec(1, 10)],
            2_500,
        )
        .await;
        let (got, report) = restored(&store, dir.path()).await;
        assert_eq!(
            got,
            expect(&[(1, 5), (1, 6), (1, 7), (1, 8), (2, 9), (2, 10), (2, 11)])
        );
        assert!(report.wal_gaps.is_empty(), "{:?}", report.wal_gaps);
        assert_eq!(report.wal_records, 7);
    }

    #[tokio::test]
    async fn a_deposed_primarys_tail_past_the_new_primarys_archive_is_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("bucket").display());
        let store = Store::open(&url, &StoreArgs::default()).unwrap();
        base(&store, 0).await;
        // The old primary archived 0..6 at epoch 1, of which 4 and 5 never reached the
        // replica (so were never acknowledged); the new primary's log ended at 4 and it
        // archived 4 at epoch 2 before the disaster.
        archive(
            &store,
            &[
                rec(1, 0),
                rec(1, 1),
                rec(1, 2),
                rec(1, 3),
                rec(1, 4),
                rec(1, 5),
            ],
            1_000,
        )
        .await;
        archive(&store, &[rec(2, 4)], 2_000).await;
        let (got, report) = restored(&store, dir.path()).await;
        assert_eq!(
            got,
            expect(&[(1, 0), (1, 1), (1, 2), (1, 3), (2, 4)]),
            "seq 5 at epoch 1 is a tail the new primary's history replaced"
        );
        assert_eq!(report.wal_gaps.get(&0), Some(&5));
    }
}
