//! What a backup location holds (ADR 0011), every piece versioned and checksummed:
//!
//! ```text
//! backups/<id>/MANIFEST.json       one base backup; written last (a backup without it is
//!                                  not listed and not restorable)
//! objects/<xxh3-128>.arrows        rows of one table of one partition: an Arrow IPC stream
//!                                  of one batch, named by the hash of its bytes (so a piece
//!                                  that did not change, e.g. an HDB chunk, is uploaded once
//!                                  and shared by every later backup)
//! wal/p<partition>/<start>-<end>-e<epoch>-t<unix ms>.zwal
//!                                  archived WAL records of one partition, seq in
//!                                  [start, end), newest record epoch, when they were read
//! ```
//!
//! A `.zwal` object: `magic "ZWALARC1" | version:u8 (1) | partition:u32 | count:u32 |
//! (epoch:u64 | seq:u64 | len:u32 | payload)* | crc32c:u32` (little-endian; the CRC covers
//! everything before it). The payload is the WAL record payload exactly as written.

use std::io::Cursor;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zepto_storage::{ReplicatedRecord, TableSchema};

use crate::error::{Error, Result};

/// Version of the manifest layout.
pub(crate) const MANIFEST_FORMAT: u32 = 1;
const WAL_MAGIC: &[u8; 8] = b"ZWALARC1";
const WAL_VERSION: u8 = 1;

/// One complete base backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: u32,
    pub(crate) id: String,
    /// RFC 3339 UTC.
    pub(crate) created: String,
    pub(crate) created_unix_ms: i64,
    pub(crate) partitions: u32,
    pub(crate) tables: Vec<TableEntry>,
    /// One entry per partition, each cut at its own WAL position.
    pub(crate) parts: Vec<PartBackup>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TableEntry {
    /// The table id in WAL payloads of this database.
    pub(crate) id: u32,
    pub(crate) schema: TableSchema,
}

/// One partition of a base backup: its rows are exactly those of its WAL records with
/// `seq < next_seq`; archived records from `next_seq` on continue it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartBackup {
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    pub(crate) next_seq: u64,
    /// The node that uploaded it (cluster mode: the partition's primary at the cut).
    pub(crate) node: Option<u64>,
    pub(crate) objects: Vec<ObjectRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ObjectRef {
    pub(crate) key: String,
    pub(crate) table_id: u32,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    /// xxh3-128 of the object's bytes, hex.
    pub(crate) xxh3: String,
}

pub(crate) fn manifest_key(id: &str) -> String {
    format!("backups/{id}/MANIFEST.json")
}

pub(crate) fn content_key(hash: &str) -> String {
    format!("objects/{hash}.arrows")
}

pub(crate) fn hash_hex(data: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

/// A new backup id: the UTC time, sortable (`20260126T031500123Z`).
pub(crate) fn new_backup_id(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%Y%m%dT%H%M%S%3fZ").to_string()
}

/// The backup id of a manifest key, if it is one.
pub(crate) fn backup_id_of(key: &str) -> Option<&str> {
    key.strip_prefix("backups/")?
        .strip_suffix("/MANIFEST.json")
        .filter(|id| !id.contains('/'))
}

impl Manifest {
    pub(crate) fn parse(key: &str, data: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(data)
            .map_err(|e| Error::Backup(format!("object {key} is corrupt or truncated: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::Backup(format!(
                "object {key} has manifest format {}, this zeptod reads {MANIFEST_FORMAT}",
                m.format
            )));
        }
        Ok(m)
    }

    pub(crate) fn table(&self, id: u32) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.id == id).map(|t| &t.schema)
    }

    pub(crate) fn total_bytes(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|p| &p.objects)
            .map(|o| o.bytes)
            .sum()
    }

    pub(crate) fn total_rows(&self) -> u64 {
        self.parts
            .iter()
            .flat_map(|p| &p.objects)
            .map(|o| o.rows)
            .sum()
    }
}

/// One batch as an Arrow IPC stream.
pub(crate) fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &batch.schema())
        .map_err(|e| Error::Internal(format!("encode rows for a backup: {e}")))?;
    w.write(batch)
        .and_then(|()| w.finish())
        .map_err(|e| Error::Internal(format!("encode rows for a backup: {e}")))?;
    drop(w);
    Ok(out)
}

/// The batches of a content object (already checked against its hash).
pub(crate) fn decode_batches(key: &str, data: Bytes) -> Result<Vec<RecordBatch>> {
    let bad = |e: arrow::error::ArrowError| {
        Error::Backup(format!("object {key} does not decode as Arrow IPC: {e}"))
    };
    let r = arrow::ipc::reader::StreamReader::try_new(Cursor::new(data), None).map_err(bad)?;
    r.collect::<std::result::Result<Vec<_>, _>>().map_err(bad)
}

/// Check a downloaded object against its manifest entry; the error names it.
pub(crate) fn verify_object(o: &ObjectRef, data: &[u8]) -> Result<()> {
    if data.len() as u64 != o.bytes {
        return Err(Error::Backup(format!(
            "object {} is truncated or damaged: {} bytes, the manifest says {}",
            o.key,
            data.len(),
            o.bytes
        )));
    }
    let h = hash_hex(data);
    if h != o.xxh3 {
        return Err(Error::Backup(format!(
            "object {} is corrupt: checksum {h}, the manifest says {}",
            o.key, o.xxh3
        )));
    }
    Ok(())
}

/// An archived WAL object's name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalObject {
    pub(crate) key: String,
    pub(crate) partition: u32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) epoch: u64,
    pub(crate) unix_ms: i64,
}

pub(crate) fn wal_prefix(partition: u32) -> String {
    format!("wal/p{partition:05}")
}

pub(crate) fn wal_key(partition: u32, start: u64, end: u64, epoch: u64, unix_ms: i64) -> String {
    format!(
        "{}/{start:020}-{end:020}-e{epoch:010}-t{unix_ms:013}.zwal",
        wal_prefix(partition)
    )
}

/// Parse a key under `wal/`; `None` for anything else.
pub(crate) fn parse_wal_key(key: &str) -> Option<WalObject> {
    let rest = key.strip_prefix("wal/p")?;
    let (p, name) = rest.split_once('/')?;
    let name = name.strip_suffix(".zwal")?;
    let mut it = name.split('-');
    let start = it.next()?.parse().ok()?;
    let end = it.next()?.parse().ok()?;
    let epoch = it.next()?.strip_prefix('e')?.parse().ok()?;
    let unix_ms = it.next()?.strip_prefix('t')?.parse().ok()?;
    if it.next().is_some() || end <= start {
        return None;
    }
    Some(WalObject {
        key: key.to_string(),
        partition: p.parse().ok()?,
        start,
        end,
        epoch,
        unix_ms,
    })
}

pub(crate) fn encode_wal(partition: u32, records: &[ReplicatedRecord]) -> Vec<u8> {
    let size: usize = records.iter().map(|r| 20 + r.payload.len()).sum();
    let mut out = Vec::with_capacity(8 + 9 + size + 4);
    out.extend_from_slice(WAL_MAGIC);
    out.push(WAL_VERSION);
    out.extend_from_slice(&partition.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&r.epoch.to_le_bytes());
        out.extend_from_slice(&r.seq.to_le_bytes());
        out.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&r.payload);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// One archived record: `(epoch, seq, payload)`.
pub(crate) type ArchivedRecord = (u64, u64, Bytes);

/// Decode and check a `.zwal` object; every failure names it.
pub(crate) fn decode_wal(obj: &WalObject, data: Bytes) -> Result<Vec<ArchivedRecord>> {
    let bad = |what: String| {
        Error::Backup(format!(
            "object {} is corrupt or truncated: {what}",
            obj.key
        ))
    };
    if data.len() < 8 + 9 + 4 {
        return Err(bad(format!("only {} bytes", data.len())));
    }
    let (body, tail) = data.split_at(data.len() - 4);
    let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != want {
        return Err(bad("checksum mismatch".into()));
    }
    if &body[..8] != WAL_MAGIC {
        return Err(bad("bad magic".into()));
    }
    if body[8] != WAL_VERSION {
        return Err(bad(format!("archive format version {}", body[8])));
    }
    let rd32 = |at: usize| -> Option<u32> {
        body.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let rd64 = |at: usize| -> Option<u64> {
        body.get(at..at + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let partition = rd32(9).ok_or_else(|| bad("short header".into()))?;
    if partition != obj.partition {
        return Err(bad(format!(
            "holds partition {partition}, its name says {}",
            obj.partition
        )));
    }
    let count = rd32(13).ok_or_else(|| bad("short header".into()))? as usize;
    let mut at = 17;
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for i in 0..count {
        let (Some(epoch), Some(seq), Some(len)) = (rd64(at), rd64(at + 8), rd32(at + 16)) else {
            return Err(bad(format!("record {i} header past the end")));
        };
        let start = at + 20;
        let end = start
            .checked_add(len as usize)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| bad(format!("record {i} payload past the end")))?;
        out.push((epoch, seq, data.slice(start..end)));
        at = end;
    }
    if at != body.len() {
        return Err(bad(format!(
            "{} bytes after the last record",
            body.len() - at
        )));
    }
    let expect_seqs = (obj.start..obj.end).eq(out.iter().map(|r| r.1));
    if !expect_seqs {
        return Err(bad(format!(
            "its records are not seq {}..{} as its name says",
            obj.start, obj.end
        )));
    }
    Ok(out)
}

/// The archived records that continue a partition from `from_seq`, chosen among possibly
/// overlapping objects (a failover can archive one seq twice): per seq the record of the
/// newest epoch, and the run stops at the first missing seq or at a record older than an
/// epoch already taken (a deposed primary's tail that lost to the new primary's records).
pub(crate) fn chain_records(
    from_seq: u64,
    objects: Vec<Vec<ArchivedRecord>>,
) -> (Vec<ArchivedRecord>, Option<u64>) {
    let mut best: std::collections::BTreeMap<u64, ArchivedRecord> = Default::default();
    for recs in objects {
        for r in recs {
            if r.1 < from_seq {
                continue;
            }
            match best.get(&r.1) {
                Some(have) if have.0 >= r.0 => {}
                _ => {
                    best.insert(r.1, r);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut max_epoch = 0;
    for (next, (seq, r)) in (from_seq..).zip(best) {
        if seq != next || r.0 < max_epoch {
            return (out, Some(next));
        }
        max_epoch = r.0;
        out.push(r);
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, seq: u64) -> ReplicatedRecord {
        ReplicatedRecord {
            partition: 3,
            epoch,
            seq,
            sender_epoch: epoch,
            prev_epoch: None,
            payload: Bytes::from(vec![seq as u8; 5]),
        }
    }

    #[test]
    fn wal_object_round_trip_and_damage_is_named() {
        let recs: Vec<_> = (10..13).map(|s| rec(2, s)).collect();
        let data = encode_wal(3, &recs);
        let key = wal_key(3, 10, 13, 2, 1234);
        let obj = parse_wal_key(&key).unwrap();
        assert_eq!(
            (obj.partition, obj.start, obj.end, obj.epoch),
            (3, 10, 13, 2)
        );
        let got = decode_wal(&obj, Bytes::from(data.clone())).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].1, 11);
        let mut bad = data.clone();
        bad[20] ^= 1;
        let e = decode_wal(&obj, Bytes::from(bad)).unwrap_err().to_string();
        assert!(e.contains(&key) && e.contains("checksum"), "{e}");
        let e = decode_wal(&obj, Bytes::from(data[..data.len() - 7].to_vec()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&key), "{e}");
        assert_eq!(parse_wal_key("wal/p00003/x.zwal"), None);
    }

    #[test]
    fn chain_prefers_newer_epochs_and_stops_at_gaps() {
        let r = |e: u64, s: u64| (e, s, Bytes::new());
        // Old primary archived 5..9 at epoch 1; new primary rewrote 7.. at epoch 2.
        let old = vec![r(1, 5), r(1, 6), r(1, 7), r(1, 8)];
        let new = vec![r(1, 6), r(2, 7)];
        let (got, gap) = chain_records(5, vec![old, new]);
        let seqs: Vec<_> = got.iter().map(|x| (x.0, x.1)).collect();
        // Seq 8 at epoch 1 is the deposed primary's tail: not taken.
        assert_eq!(seqs, vec![(1, 5), (1, 6), (2, 7)]);
        assert_eq!(gap, Some(8));
        let (got, gap) = chain_records(0, vec![vec![r(1, 0), r(1, 2)]]);
        assert_eq!(got.len(), 1);
        assert_eq!(gap, Some(1));
        let (got, gap) = chain_records(1, vec![vec![r(1, 0), r(1, 1)]]);
        assert_eq!((got.len(), gap), (1, None));
    }
}
