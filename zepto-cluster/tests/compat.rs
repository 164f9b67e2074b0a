//! Compatibility of the persisted and wire formats: files written by format version 1 (checked
//! in under `tests/data/`) must stay readable by every later build.
//!
//! To regenerate after an intentional *new* version (never to paper over a break of an old
//! one): `cargo test -p zepto-cluster --test compat -- --ignored write_compat_files`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use zepto_cluster::raft::{MetaConfig, MetaNode, MetaStorage};
use zepto_cluster::state::{ClusterState, Command, NodeState};
use zepto_cluster::Timings;
use zepto_storage::{ColumnDef, ColumnType, TableSchema};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// A log that uses every command variant.
fn v1_log() -> Vec<Command> {
    let schema = TableSchema::new(
        "trades",
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("price", ColumnType::Double),
        ],
        None,
        None,
    )
    .unwrap();
    let mut log = Vec::new();
    for id in 1..=4 {
        log.push(Command::AddNode {
            id,
            http_addr: format!("zepto-{id}:8123"),
            grpc_addr: format!("zepto-{id}:8124"),
        });
        log.push(Command::SetNodeState {
            id,
            state: NodeState::Active,
        });
    }
    log.extend([
        Command::InitPartitions {
            assignments: vec![(1, Some(2)), (2, Some(3)), (3, Some(1)), (1, Some(3))],
        },
        Command::CreateTable { schema },
        Command::SetSetting {
            key: "ack".into(),
            value: "replicated".into(),
        },
        Command::ShrinkInSync {
            partition: 1,
            epoch: 1,
            primary: 2,
        },
        Command::SetNodeState {
            id: 1,
            state: NodeState::Dead,
        },
        Command::Promote {
            partition: 0,
            new_primary: 2,
            expected_epoch: 1,
        },
        Command::SetReplica {
            partition: 2,
            expected_epoch: 1,
            replica: Some(4),
        },
        Command::ExpandInSync {
            partition: 2,
            epoch: 1,
            node: 4,
        },
        Command::DropTable {
            name: "trades".into(),
        },
        Command::SetNodeState {
            id: 4,
            state: NodeState::Draining,
        },
        Command::RemoveNode { id: 4 }, // rejected: still holds partition 2
    ]);
    log
}

fn expected_state() -> ClusterState {
    let mut s = ClusterState::default();
    for c in v1_log() {
        let _ = s.apply(&c);
    }
    s
}

/// The state as a v1 file holds it: files written before table ids existed have no
/// `next_table_id` (decoded as 0 = "start at 1"). No v1 cluster ever assigned ids to
/// tables, so nothing is lost; `table_ids` is empty because the log drops its only table.
fn expected_state_from_v1_files() -> ClusterState {
    let mut s = expected_state();
    assert!(s.table_ids.is_empty());
    s.next_table_id = 0;
    s
}

fn read_commands(bytes: &[u8]) -> Vec<Command> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(Command::decode(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    out
}

#[test]
fn commands_v1_decode_to_the_same_commands() {
    let bytes = std::fs::read(data_dir().join("commands_v1.bin")).unwrap();
    assert_eq!(bytes[4], 1, "first command starts with version byte 1");
    assert_eq!(read_commands(&bytes), v1_log());
}

#[test]
fn state_snapshot_v1_decodes_to_the_same_state() {
    let bytes = std::fs::read(data_dir().join("state_v1.bin")).unwrap();
    let s = ClusterState::decode_snapshot(&bytes).unwrap();
    assert_eq!(s, expected_state_from_v1_files());
    // Spot checks, so a wrong expectation cannot hide behind equality.
    assert_eq!(s.partition(0).unwrap().epoch, 2);
    assert_eq!(s.partition(0).unwrap().primary, 2);
    assert_eq!(s.partition(2).unwrap().replica, Some(4));
    assert!(s.tables.is_empty());
    assert_eq!(s.nodes.len(), 4);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn meta_dir_v1_opens_with_the_same_state() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&data_dir().join("meta_v1"), tmp.path());
    let (storage, report) = MetaStorage::open(tmp.path()).unwrap();
    assert_eq!(report.truncated_bytes, 0);
    assert!(
        report.snapshot_index > 1,
        "the fixture has a compacted log: {report:?}"
    );
    assert!(
        report.entries > 0,
        "and entries after the snapshot: {report:?}"
    );
    let mut node =
        MetaNode::open(MetaConfig::new(1, vec![1], Timings::defaults()), storage).unwrap();
    node.advance().unwrap();
    assert_eq!(node.state(), &expected_state_from_v1_files());
}

#[test]
#[ignore = "writes the checked-in fixtures"]
fn write_compat_files() {
    let dir = data_dir();
    let mut bytes = Vec::new();
    for c in v1_log() {
        let e = c.encode();
        bytes.extend_from_slice(&(e.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&e);
    }
    std::fs::write(dir.join("commands_v1.bin"), bytes).unwrap();
    std::fs::write(dir.join("state_v1.bin"), expected_state().encode_snapshot()).unwrap();

    let meta = dir.join("meta_v1");
    let _ = std::fs::remove_dir_all(&meta);
    let (storage, _) = MetaStorage::open(&meta).unwrap();
    let mut cfg = MetaConfig::new(1, vec![1], Timings::defaults());
    cfg.snapshot_every = 8;
    let mut node = MetaNode::open(cfg, storage).unwrap();
    while !node.is_leader() {
        node.tick();
        node.advance().unwrap();
    }
    for c in v1_log() {
        node.propose(&c).unwrap();
        node.advance().unwrap();
    }
    assert_eq!(node.state(), &expected_state());
}
