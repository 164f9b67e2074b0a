//! Durable raft storage for the metadata group: `data/meta/`.
//!
//! # Files (format version 1)
//!
//! - `raft.log`: an 8-byte header (`ZMETLOG` + version byte `1`), then records
//!   `len: u32 LE | crc32c: u32 LE | kind: u8 | payload`, where `len` counts `kind` and
//!   `payload` and the CRC covers them. Kinds: `1` a raft `Entry`, `2` the `HardState`, `3` the
//!   `ConfState`, each a protobuf message (raft-rs' `eraftpb`). The file is append-only:
//!   replay keeps the last hard state and conf state, and an entry whose index is at or
//!   below the last one replaces that suffix (raft overwrote a conflicting tail).
//! - `snapshot`: an 8-byte header (`ZMETSNP` + version `1`), then one record as above with kind
//!   `4` and a protobuf `Snapshot` whose data is the encoded `ClusterState`. Written to a
//!   temporary file, fsynced and renamed.
//!
//! Every `*_durable` method has fsynced before it returns; the node calls them before it lets
//! raft-rs `advance` (so nothing raft considers persisted can be lost). When a snapshot is
//! taken, `raft.log` is rewritten (temporary file + rename) with only the entries after it.
//!
//! # Torn tails
//!
//! A crash can leave a partial record at the end of `raft.log`. Replay stops at the first
//! record that is incomplete or fails its CRC, truncates the file there, and says so (in the
//! log and in [`OpenReport`]). Only unacknowledged writes can be torn: raft counts an entry
//! only after the fsync that covers it. A record with a good CRC that does not decode, or an
//! entry that skips indexes, is corruption and an error naming the file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::{Error, Result};

const LOG_FILE: &str = "raft.log";
const SNAP_FILE: &str = "snapshot";
const LOG_MAGIC: &[u8; 7] = b"ZMETLOG";
const SNAP_MAGIC: &[u8; 7] = b"ZMETSNP";
/// Version byte of both files.
pub const META_FORMAT_V1: u8 = 1;
const HEADER_LEN: u64 = 8;
const RECORD_HEADER: usize = 8;
/// A length beyond this is not a record (metadata entries are small): treat as a torn tail.
const MAX_RECORD: usize = 64 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_SNAPSHOT: u8 = 4;

/// The index of the bootstrap snapshot every initial voter starts from.
pub const BOOTSTRAP_INDEX: u64 = 1;

/// What opening the storage found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut off the end of `raft.log` (a torn or corrupt tail); 0 normally.
    pub truncated_bytes: u64,
    /// Entries in the log after the snapshot.
    pub entries: usize,
    /// Index of the snapshot the log starts after (0: none).
    pub snapshot_index: u64,
}

#[derive(Debug)]
struct Files {
    dir: PathBuf,
    log: File,
}

/// The metadata group's raft storage: everything in memory, mirrored durably to `data/meta/`
/// (or nowhere, for the in-process test harness).
#[derive(Debug)]
pub struct MetaStorage {
    files: Option<Files>,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Entries after `snapshot`'s index, consecutive.
    entries: Vec<Entry>,
    /// raft asked for a snapshot the stored one cannot serve (see `take_snapshot_wanted`).
    snapshot_wanted: std::cell::Cell<bool>,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn encode_record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len() + 1).unwrap_or(u32::MAX);
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// One record found by [`parse_records`]: its kind, payload and file offset.
type RawRecord<'a> = (u8, &'a [u8], u64);

/// Parse records from `buf` (after the header). Returns each good record and the offset where
/// the good prefix ends.
fn parse_records(buf: &[u8], base: u64) -> (Vec<RawRecord<'_>>, u64) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while buf.len() - pos >= RECORD_HEADER {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        let start = pos + RECORD_HEADER;
        if len == 0 || len > MAX_RECORD || buf.len() - start < len {
            break;
        }
        let body = &buf[start..start + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        out.push((body[0], &body[1..], base + pos as u64));
        pos = start + len;
    }
    (out, base + pos as u64)
}

fn protobuf_err(path: &Path, offset: u64, what: &str, e: protobuf::ProtobufError) -> Error {
    corrupt(path, offset, format!("decode {what}: {e}"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

/// Write `bytes` to `dir/name` atomically: temporary file, fsync, rename, fsync directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let target = dir.join(name);
    let ctx = |what: &str| format!("{what} {}", tmp.display());
    let mut f = File::create(&tmp).map_err(|e| Error::io(ctx("create"), e))?;
    f.write_all(bytes).map_err(|e| Error::io(ctx("write"), e))?;
    f.sync_all().map_err(|e| Error::io(ctx("fsync"), e))?;
    fs::rename(&tmp, &target)
        .map_err(|e| Error::io(format!("rename {} into place", tmp.display()), e))?;
    sync_dir(dir)
}

impl MetaStorage {
    /// Storage that keeps nothing on disk (tests, the in-process harness).
    pub fn in_memory() -> MetaStorage {
        MetaStorage {
            files: None,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: Snapshot::default(),
            entries: Vec::new(),
            snapshot_wanted: std::cell::Cell::new(false),
        }
    }

    /// Open (or create) the storage in `dir`, replaying the snapshot and the log.
    pub fn open(dir: &Path) -> Result<(MetaStorage, OpenReport)> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create metadata directory {}", dir.display()), e))?;
        let mut s = MetaStorage::in_memory();
        let mut report = OpenReport::default();

        let snap_path = dir.join(SNAP_FILE);
        match fs::read(&snap_path) {
            Ok(bytes) => {
                s.snapshot = read_snapshot_file(&snap_path, &bytes)?;
                let meta = s.snapshot.get_metadata();
                s.conf_state = meta.get_conf_state().clone();
                s.hard_state.term = meta.term;
                s.hard_state.commit = meta.index;
                report.snapshot_index = meta.index;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("read {}", snap_path.display()), e)),
        }

        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("open {}", log_path.display()), e))?;
        let mut buf = Vec::new();
        log.read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", log_path.display()), e))?;
        if buf.is_empty() {
            let mut header = LOG_MAGIC.to_vec();
            header.push(META_FORMAT_V1);
            log.write_all(&header)
                .and_then(|_| log.sync_all())
                .map_err(|e| Error::io(format!("write header of {}", log_path.display()), e))?;
            sync_dir(dir)?;
        } else {
            check_header(&log_path, &buf, LOG_MAGIC)?;
            let (records, good_end) = parse_records(&buf[HEADER_LEN as usize..], HEADER_LEN);
            for (kind, payload, offset) in records {
                s.replay_record(&log_path, kind, payload, offset)?;
            }
            let total = buf.len() as u64;
            if good_end < total {
                report.truncated_bytes = total - good_end;
                tracing::warn!(
                    file = %log_path.display(),
                    offset = good_end,
                    bytes = report.truncated_bytes,
                    "truncating torn tail of the metadata raft log"
                );
                log.set_len(good_end)
                    .and_then(|_| log.sync_all())
                    .map_err(|e| {
                        Error::io(format!("truncate torn tail of {}", log_path.display()), e)
                    })?;
            }
        }
        report.entries = s.entries.len();
        s.files = Some(Files {
            dir: dir.to_path_buf(),
            log,
        });
        Ok((s, report))
    }

    fn replay_record(&mut self, path: &Path, kind: u8, payload: &[u8], offset: u64) -> Result<()> {
        match kind {
            KIND_ENTRY => {
                let e = Entry::parse_from_bytes(payload)
                    .map_err(|e| protobuf_err(path, offset, "entry", e))?;
                let snap_index = self.snapshot.get_metadata().index;
                if e.index <= snap_index {
                    // Covered by the snapshot (written before a compaction finished).
                    return Ok(());
                }
                let last = self.last_index_inner();
                if e.index > last + 1 {
                    return Err(corrupt(
                        path,
                        offset,
                        format!("entry {} follows entry {last}: the log has a gap", e.index),
                    ));
                }
                self.entries.truncate((e.index - snap_index - 1) as usize);
                self.entries.push(e);
            }
            KIND_HARD_STATE => {
                let hs = HardState::parse_from_bytes(payload)
                    .map_err(|e| protobuf_err(path, offset, "hard state", e))?;
                self.hard_state = hs;
            }
            KIND_CONF_STATE => {
                let cs = ConfState::parse_from_bytes(payload)
                    .map_err(|e| protobuf_err(path, offset, "conf state", e))?;
                self.conf_state = cs;
            }
            k => return Err(corrupt(path, offset, format!("unknown record kind {k}"))),
        }
        Ok(())
    }

    /// Whether this storage was ever given a configuration (bootstrapped or from a snapshot).
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// First start of a voter: every initial voter starts from the same state, a snapshot at
    /// index [`BOOTSTRAP_INDEX`] (term 1) holding the voter configuration and the empty
    /// metadata, with an empty log after it. Starting the log above index 0 (as TiKV does)
    /// means a node that joins later cannot replay the log from the beginning (it would miss
    /// the initial configuration); it is sent a snapshot instead. No-op if initialized.
    pub fn bootstrap_durable(&mut self, voters: &[u64]) -> Result<()> {
        if self.is_initialized() {
            return Ok(());
        }
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let mut snap = Snapshot::default();
        let m = snap.mut_metadata();
        m.index = BOOTSTRAP_INDEX;
        m.term = BOOTSTRAP_INDEX;
        m.set_conf_state(cs.clone());
        let hs = HardState {
            term: BOOTSTRAP_INDEX,
            commit: BOOTSTRAP_INDEX,
            ..Default::default()
        };
        self.install(snap, Vec::new(), hs, cs)
    }

    /// Set by [`raft::Storage::snapshot`] when raft needs a snapshot newer than the stored
    /// one; the node answers by taking one at its applied index. Returns and clears the flag.
    pub fn take_snapshot_wanted(&mut self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Append entries (replacing any conflicting suffix) and/or set the hard state or conf
    /// state; one fsync covers all of them.
    pub fn write_durable(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        cs: Option<&ConfState>,
    ) -> Result<()> {
        if let Some(first) = entries.first() {
            let snap_index = self.snapshot.get_metadata().index;
            let consecutive = entries.windows(2).all(|w| w[1].index == w[0].index + 1);
            if first.index <= snap_index
                || first.index > self.last_index_inner() + 1
                || !consecutive
            {
                return Err(Error::InvalidInput(format!(
                    "append of entries from {} to a log holding {}..={}",
                    first.index,
                    snap_index + 1,
                    self.last_index_inner()
                )));
            }
        }
        let mut buf = Vec::new();
        let encode = |kind: u8, m: &dyn protobuf::Message, buf: &mut Vec<u8>| -> Result<()> {
            let bytes = m.write_to_bytes().map_err(|e| Error::Decode {
                what: "raft record",
                reason: format!("encode: {e}"),
            })?;
            encode_record(kind, &bytes, buf);
            Ok(())
        };
        for e in entries {
            encode(KIND_ENTRY, e, &mut buf)?;
        }
        if let Some(hs) = hs {
            encode(KIND_HARD_STATE, hs, &mut buf)?;
        }
        if let Some(cs) = cs {
            encode(KIND_CONF_STATE, cs, &mut buf)?;
        }
        if let Some(f) = &mut self.files {
            let path = f.dir.join(LOG_FILE);
            f.log
                .write_all(&buf)
                .and_then(|_| f.log.sync_data())
                .map_err(|e| Error::io(format!("append to {}", path.display()), e))?;
        }
        // Only after the fsync does the in-memory view move.
        if let Some(first) = entries.first() {
            let snap_index = self.snapshot.get_metadata().index;
            self.entries
                .truncate((first.index - snap_index - 1) as usize);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        if let Some(cs) = cs {
            self.conf_state = cs.clone();
        }
        Ok(())
    }

    /// Install a snapshot received from the leader: the state it carries replaces the log.
    pub fn apply_snapshot_durable(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        if meta.index < self.first_index_inner().saturating_sub(1) {
            return Err(Error::Raft(raft::Error::Store(
                StorageError::SnapshotOutOfDate,
            )));
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        self.install(snap, Vec::new(), hs, cs)
    }

    /// Take a snapshot of the state machine at `applied` (whose encoded state is `data`) and
    /// drop the entries it covers.
    pub fn compact_durable(&mut self, applied: u64, data: Vec<u8>) -> Result<()> {
        let snap_index = self.snapshot.get_metadata().index;
        if applied <= snap_index {
            return Ok(());
        }
        if applied > self.last_index_inner() {
            return Err(Error::InvalidInput(format!(
                "snapshot at {applied} beyond the last entry {}",
                self.last_index_inner()
            )));
        }
        let term = self.term_inner(applied)?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let m = snap.mut_metadata();
        m.index = applied;
        m.term = term;
        m.set_conf_state(self.conf_state.clone());
        let keep = self.entries[(applied - snap_index) as usize..].to_vec();
        let (hs, cs) = (self.hard_state.clone(), self.conf_state.clone());
        self.install(snap, keep, hs, cs)
    }

    /// Persist `snap` and a rewritten log (`hs`, `cs`, `entries`), then switch to them.
    fn install(
        &mut self,
        snap: Snapshot,
        entries: Vec<Entry>,
        hs: HardState,
        cs: ConfState,
    ) -> Result<()> {
        if let Some(f) = &mut self.files {
            let snap_bytes = snap.write_to_bytes().map_err(|e| Error::Decode {
                what: "raft snapshot",
                reason: format!("encode: {e}"),
            })?;
            let mut file = SNAP_MAGIC.to_vec();
            file.push(META_FORMAT_V1);
            encode_record(KIND_SNAPSHOT, &snap_bytes, &mut file);
            write_atomic(&f.dir, SNAP_FILE, &file)?;

            let mut log = LOG_MAGIC.to_vec();
            log.push(META_FORMAT_V1);
            for (kind, m) in [
                (KIND_CONF_STATE, &cs as &dyn protobuf::Message),
                (KIND_HARD_STATE, &hs as &dyn protobuf::Message),
            ]
            .into_iter()
            .chain(
                entries
                    .iter()
                    .map(|e| (KIND_ENTRY, e as &dyn protobuf::Message)),
            ) {
                let bytes = m.write_to_bytes().map_err(|e| Error::Decode {
                    what: "raft record",
                    reason: format!("encode: {e}"),
                })?;
                encode_record(kind, &bytes, &mut log);
            }
            write_atomic(&f.dir, LOG_FILE, &log)?;
            let path = f.dir.join(LOG_FILE);
            f.log = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(format!("reopen {}", path.display()), e))?;
        }
        self.snapshot = snap;
        self.entries = entries;
        self.hard_state = hs;
        self.conf_state = cs;
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot (empty metadata index 0 if none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The entries currently held (after the snapshot).
    pub fn entries_held(&self) -> &[Entry] {
        &self.entries
    }

    fn first_index_inner(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index_inner(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    fn term_inner(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < snap.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((idx - snap.index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

fn check_header(path: &Path, buf: &[u8], magic: &[u8; 7]) -> Result<()> {
    if buf.len() < HEADER_LEN as usize || &buf[..7] != magic {
        return Err(corrupt(path, 0, "bad file header"));
    }
    if buf[7] != META_FORMAT_V1 {
        return Err(corrupt(
            path,
            7,
            format!(
                "unknown format version {} (this build reads {META_FORMAT_V1})",
                buf[7]
            ),
        ));
    }
    Ok(())
}

fn read_snapshot_file(path: &Path, buf: &[u8]) -> Result<Snapshot> {
    check_header(path, buf, SNAP_MAGIC)?;
    let (records, end) = parse_records(&buf[HEADER_LEN as usize..], HEADER_LEN);
    // The snapshot is written atomically, so anything but exactly one good record is damage.
    match records.as_slice() {
        [(KIND_SNAPSHOT, payload, offset)] if end == buf.len() as u64 => {
            Snapshot::parse_from_bytes(payload)
                .map_err(|e| protobuf_err(path, *offset, "snapshot", e))
        }
        _ => Err(corrupt(path, end, "snapshot file is damaged")),
    }
}

impl raft::Storage for MetaStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_index_inner();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index_inner() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - first) as usize;
        let to = (high - first) as usize;
        let mut out = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_inner(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_inner())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_inner())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let cs = meta.get_conf_state();
        let knows_peer = cs.voters.contains(&to) || cs.learners.contains(&to);
        if meta.index < request_index || !knows_peer {
            // Stale (e.g. the bootstrap snapshot, taken before `to` was added): ask the node
            // for a fresh one and let raft retry.
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn write_drop_reopen_gives_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, r) = MetaStorage::open(dir.path()).unwrap();
            assert_eq!(r, OpenReport::default());
            let cs = ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            };
            s.write_durable(&[], None, Some(&cs)).unwrap();
            s.write_durable(
                &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
                Some(&hs(1, 2, 2)),
                None,
            )
            .unwrap();
            // raft overwrote a conflicting tail: entry 3 of term 2 replaces term 1's.
            s.write_durable(
                &[entry(3, 2, b"C"), entry(4, 2, b"d")],
                Some(&hs(2, 3, 3)),
                None,
            )
            .unwrap();
        }
        let (s, r) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(r.entries, 4);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
        assert_eq!(*s.hard_state(), hs(2, 3, 3));
        assert_eq!(s.last_index().unwrap(), 4);
        assert_eq!(s.term(3).unwrap(), 2);
        let got = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| e.get_data()).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C", b"d"]);
        // Bootstrapping again is a no-op.
        let mut s = s;
        s.bootstrap_durable(&[7]).unwrap();
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    }

    #[test]
    fn bootstrap_starts_every_voter_from_the_same_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = MetaStorage::open(dir.path()).unwrap();
            assert!(!s.is_initialized());
            s.bootstrap_durable(&[1, 2, 3]).unwrap();
            s.write_durable(&[entry(2, 2, b"x")], None, None).unwrap();
        }
        let (s, r) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!((r.snapshot_index, r.entries), (BOOTSTRAP_INDEX, 1));
        assert!(s.is_initialized());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 2));
        assert_eq!(s.term(1).unwrap(), 1);
        assert_eq!(s.hard_state().commit, 1);
        // The bootstrap snapshot does not know node 4: raft gets "try later" and the node is
        // asked for a fresh snapshot.
        assert!(matches!(
            s.snapshot(0, 4),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        let mut s = s;
        assert!(s.take_snapshot_wanted());
        assert!(!s.take_snapshot_wanted());
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 1);
    }

    #[test]
    fn torn_tail_is_truncated_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = MetaStorage::open(dir.path()).unwrap();
            s.write_durable(&[entry(1, 1, b"a"), entry(2, 1, b"b")], None, None)
                .unwrap();
        }
        let path = dir.path().join(LOG_FILE);
        let good_len = fs::metadata(&path).unwrap().len();
        // Half of a third record, then a record with a flipped CRC byte.
        let mut rec = Vec::new();
        encode_record(
            KIND_ENTRY,
            &entry(3, 1, b"c").write_to_bytes().unwrap(),
            &mut rec,
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&rec[..rec.len() / 2]).unwrap();
        drop(f);
        let (s, r) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!(r.truncated_bytes, (rec.len() / 2) as u64);
        assert_eq!(s.last_index().unwrap(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
        drop(s);

        rec[RECORD_HEADER + 3] ^= 0xff;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&rec).unwrap();
        drop(f);
        let (mut s, r) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!(r.truncated_bytes, rec.len() as u64);
        // And the log is appendable after the truncation.
        s.write_durable(&[entry(3, 1, b"c")], None, None).unwrap();
        drop(s);
        let (s, _) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!(s.last_index().unwrap(), 3);
    }

    #[test]
    fn corruption_with_a_good_crc_is_an_error_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        drop(MetaStorage::open(dir.path()).unwrap());
        let path = dir.path().join(LOG_FILE);
        let mut rec = Vec::new();
        // Entry 5 with nothing before it: a gap.
        encode_record(
            KIND_ENTRY,
            &entry(5, 1, b"x").write_to_bytes().unwrap(),
            &mut rec,
        );
        encode_record(9, b"?", &mut rec);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&rec).unwrap();
        drop(f);
        let e = MetaStorage::open(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 8, .. }), "{e}");
        assert!(e.to_string().contains("gap"), "{e}");

        // A foreign file is refused by its header.
        fs::write(&path, b"not a raft log").unwrap();
        let e = MetaStorage::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("bad file header"), "{e}");
        let mut hdr = LOG_MAGIC.to_vec();
        hdr.push(7);
        fs::write(&path, hdr).unwrap();
        let e = MetaStorage::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("unknown format version 7"), "{e}");
    }

    #[test]
    fn compaction_keeps_the_tail_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = MetaStorage::open(dir.path()).unwrap();
            let cs = ConfState {
                voters: vec![1],
                ..Default::default()
            };
            s.write_durable(&[], None, Some(&cs)).unwrap();
            let es: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &[i as u8])).collect();
            s.write_durable(&es, Some(&hs(1, 1, 5)), None).unwrap();
            s.compact_durable(3, b"state@3".to_vec()).unwrap();
            assert_eq!(s.first_index().unwrap(), 4);
            assert_eq!(s.term(3).unwrap(), 1);
            assert!(matches!(
                s.term(2),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
            assert!(matches!(
                s.entries(2, 4, None, GetEntriesContext::empty(false)),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
        }
        let (s, r) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!((r.snapshot_index, r.entries), (3, 2));
        assert_eq!(s.latest_snapshot().get_data(), b"state@3");
        assert_eq!(
            s.latest_snapshot().get_metadata().get_conf_state().voters,
            vec![1]
        );
        assert_eq!(s.hard_state().commit, 5);
        assert_eq!(
            s.entries(4, 6, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            2
        );

        // A damaged snapshot file is an error, not a panic.
        let sp = dir.path().join(SNAP_FILE);
        let mut b = fs::read(&sp).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        fs::write(&sp, b).unwrap();
        assert!(matches!(
            MetaStorage::open(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn installing_a_leader_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = MetaStorage::open(dir.path()).unwrap();
        s.write_durable(&[entry(1, 1, b"a")], None, None).unwrap();
        let mut snap = Snapshot::default();
        snap.set_data(b"leader".to_vec().into());
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.apply_snapshot_durable(snap).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (11, 10)
        );
        s.write_durable(&[entry(11, 3, b"b")], None, None).unwrap();
        drop(s);
        let (s, _) = MetaStorage::open(dir.path()).unwrap();
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(s.hard_state().term, 3);
        assert_eq!(s.last_index().unwrap(), 11);
        assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    }
}
