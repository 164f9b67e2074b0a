use super::*;
use zepto_storage::{ColumnDef, ColumnType};

fn add(id: NodeId) -> Command {
    Command::AddNode {
        id,
        http_addr: format!("10.0.0.{id}:8123"),
        grpc_addr: format!("10.0.0.{id}:8124"),
    }
}

fn set(id: NodeId, state: NodeState) -> Command {
    Command::SetNodeState { id, state }
}

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

/// Three active nodes, partitions 0: 1->2, 1: 2->3, 2: 3->1.
fn three_nodes() -> ClusterState {
    let mut s = ClusterState::default();
    for c in setup_log() {
        s.apply(&c).unwrap();
    }
    s
}

fn setup_log() -> Vec<Command> {
    vec![
        add(1),
        add(2),
        add(3),
        set(1, NodeState::Active),
        set(2, NodeState::Active),
        set(3, NodeState::Active),
        Command::InitPartitions {
            assignments: vec![(1, Some(2)), (2, Some(3)), (3, Some(1))],
        },
    ]
}

fn reject(s: &mut ClusterState, c: Command) -> Rejected {
    let before = s.clone();
    let r = s.apply(&c).unwrap_err();
    assert_eq!(*s, before, "a rejected command must change nothing: {c:?}");
    r
}

#[test]
fn setup_builds_the_expected_map() {
    let s = three_nodes();
    assert_eq!(s.version, 7);
    assert_eq!(s.partitions.len(), 3);
    let p = s.partition(1).unwrap();
    assert_eq!((p.primary, p.replica, p.epoch), (2, Some(3), 1));
    assert_eq!(p.in_sync, [2, 3].into());
    assert_eq!(s.partitions_of(1), vec![0, 2]);
    assert!(s.nodes.values().all(|n| n.state == NodeState::Active));
}

#[test]
fn promote_bumps_epoch_and_keeps_old_primary_as_out_of_sync_replica() {
    let mut s = three_nodes();
    s.apply(&set(1, NodeState::Dead)).unwrap();
    let a = s
        .apply(&Command::Promote {
            partition: 0,
            new_primary: 2,
            expected_epoch: 1,
        })
        .unwrap();
    assert_eq!(a, Applied::Changed { version: 9 });
    let p = s.partition(0).unwrap();
    assert_eq!((p.primary, p.replica, p.epoch), (2, Some(1), 2));
    assert_eq!(p.in_sync, [2].into());
    // The same promotion again (e.g. proposed twice) carries a stale epoch.
    let r = reject(
        &mut s,
        Command::Promote {
            partition: 0,
            new_primary: 2,
            expected_epoch: 1,
        },
    );
    assert_eq!(
        r,
        Rejected::EpochMismatch {
            partition: 0,
            expected: 1,
            current: 2
        }
    );
}

#[test]
fn promote_rejection_paths() {
    let mut s = three_nodes();
    // Not in sync: the primary shrank the set first.
    s.apply(&Command::ShrinkInSync {
        partition: 0,
        epoch: 1,
        primary: 1,
    })
    .unwrap();
    assert_eq!(
        reject(
            &mut s,
            Command::Promote {
                partition: 0,
                new_primary: 2,
                expected_epoch: 1
            }
        ),
        Rejected::NotInSync {
            partition: 0,
            node: 2,
            in_sync: [1].into()
        }
    );
    // Future epoch.
    assert!(matches!(
        reject(
            &mut s,
            Command::Promote {
                partition: 1,
                new_primary: 3,
                expected_epoch: 2
            }
        ),
        Rejected::EpochMismatch { current: 1, .. }
    ));
    // Unknown partition and node.
    assert_eq!(
        reject(
            &mut s,
            Command::Promote {
                partition: 9,
                new_primary: 3,
                expected_epoch: 1
            }
        ),
        Rejected::UnknownPartition { partition: 9 }
    );
    assert_eq!(
        reject(
            &mut s,
            Command::Promote {
                partition: 1,
                new_primary: 9,
                expected_epoch: 1
            }
        ),
        Rejected::UnknownNode { id: 9 }
    );
    // Already primary.
    assert!(matches!(
        reject(
            &mut s,
            Command::Promote {
                partition: 1,
                new_primary: 2,
                expected_epoch: 1
            }
        ),
        Rejected::SameNode { .. }
    ));
    // A dead replica cannot be promoted.
    s.apply(&set(3, NodeState::Dead)).unwrap();
    assert_eq!(
        reject(
            &mut s,
            Command::Promote {
                partition: 1,
                new_primary: 3,
                expected_epoch: 1
            }
        ),
        Rejected::CannotServe {
            id: 3,
            state: NodeState::Dead
        }
    );
}

#[test]
fn in_sync_set_changes_are_epoch_checked() {
    let mut s = three_nodes();
    assert!(matches!(
        reject(
            &mut s,
            Command::ShrinkInSync {
                partition: 0,
                epoch: 1,
                primary: 2
            }
        ),
        Rejected::NotPrimary { primary: 1, .. }
    ));
    assert!(matches!(
        reject(
            &mut s,
            Command::ShrinkInSync {
                partition: 0,
                epoch: 0,
                primary: 1
            }
        ),
        Rejected::EpochMismatch { .. }
    ));
    let shrink = Command::ShrinkInSync {
        partition: 0,
        epoch: 1,
        primary: 1,
    };
    assert!(matches!(s.apply(&shrink).unwrap(), Applied::Changed { .. }));
    assert_eq!(s.apply(&shrink).unwrap(), Applied::Unchanged);
    assert!(matches!(
        reject(
            &mut s,
            Command::ExpandInSync {
                partition: 0,
                epoch: 1,
                node: 3
            }
        ),
        Rejected::NotReplica {
            replica: Some(2),
            ..
        }
    ));
    let expand = Command::ExpandInSync {
        partition: 0,
        epoch: 1,
        node: 2,
    };
    assert!(matches!(s.apply(&expand).unwrap(), Applied::Changed { .. }));
    assert_eq!(s.apply(&expand).unwrap(), Applied::Unchanged);
    assert_eq!(s.partition(0).unwrap().in_sync, [1, 2].into());
}

#[test]
fn set_replica_rules() {
    let mut s = three_nodes();
    assert!(matches!(
        reject(
            &mut s,
            Command::SetReplica {
                partition: 0,
                expected_epoch: 1,
                replica: Some(1)
            }
        ),
        Rejected::SameNode { node: 1, .. }
    ));
    assert!(matches!(
        reject(
            &mut s,
            Command::SetReplica {
                partition: 0,
                expected_epoch: 1,
                replica: Some(7)
            }
        ),
        Rejected::UnknownNode { id: 7 }
    ));
    s.apply(&Command::SetReplica {
        partition: 0,
        expected_epoch: 1,
        replica: Some(3),
    })
    .unwrap();
    let p = s.partition(0).unwrap();
    assert_eq!(p.replica, Some(3));
    assert_eq!(
        p.in_sync,
        [1].into(),
        "a new replica is not in sync until it catches up"
    );
}

#[test]
fn membership_rejection_paths() {
    let mut s = three_nodes();
    assert_eq!(
        reject(&mut s, add(2)),
        Rejected::NodeIdInUse {
            id: 2,
            http_addr: "10.0.0.2:8123".into()
        }
    );
    assert_eq!(reject(&mut s, add(0)), Rejected::ReservedNodeId);
    assert_eq!(
        reject(&mut s, Command::RemoveNode { id: 8 }),
        Rejected::UnknownNode { id: 8 }
    );
    assert_eq!(
        reject(&mut s, Command::RemoveNode { id: 1 }),
        Rejected::NodeHoldsPartitions {
            id: 1,
            partitions: vec![0, 2]
        }
    );
    assert_eq!(
        reject(&mut s, set(8, NodeState::Active)),
        Rejected::UnknownNode { id: 8 }
    );
    s.apply(&add(4)).unwrap();
    assert_eq!(
        reject(&mut s, set(4, NodeState::Suspect)),
        Rejected::BadTransition {
            id: 4,
            from: NodeState::Joining,
            to: NodeState::Suspect
        }
    );
    s.apply(&set(4, NodeState::Dead)).unwrap();
    assert!(matches!(
        reject(&mut s, set(4, NodeState::Draining)),
        Rejected::BadTransition { .. }
    ));
    assert_eq!(
        s.apply(&set(4, NodeState::Dead)).unwrap(),
        Applied::Unchanged
    );
    s.apply(&Command::RemoveNode { id: 4 }).unwrap();
    assert!(!s.nodes.contains_key(&4));
}

#[test]
fn partition_map_rejection_paths() {
    let mut s = three_nodes();
    assert_eq!(
        reject(
            &mut s,
            Command::InitPartitions {
                assignments: vec![(1, Some(2))]
            }
        ),
        Rejected::PartitionsExist { count: 3 }
    );
    let mut fresh = ClusterState::default();
    fresh.apply(&add(1)).unwrap();
    assert_eq!(
        reject(
            &mut fresh,
            Command::InitPartitions {
                assignments: vec![]
            }
        ),
        Rejected::NoPartitions
    );
    assert_eq!(
        reject(
            &mut fresh,
            Command::InitPartitions {
                assignments: vec![(1, None), (1, Some(1))]
            }
        ),
        Rejected::SameNode {
            partition: 1,
            node: 1
        }
    );
    assert_eq!(
        reject(
            &mut fresh,
            Command::InitPartitions {
                assignments: vec![(1, Some(5))]
            }
        ),
        Rejected::UnknownNode { id: 5 }
    );
}

#[test]
fn tables_and_settings() {
    let mut s = three_nodes();
    s.apply(&Command::CreateTable {
        schema: schema("Trades"),
    })
    .unwrap();
    assert!(s.table("trades").is_some());
    assert_eq!(
        reject(
            &mut s,
            Command::CreateTable {
                schema: schema("TRADES")
            }
        ),
        Rejected::TableExists {
            name: "TRADES".into()
        }
    );
    assert_eq!(s.table_id("TRADES"), Some(1));
    s.apply(&Command::DropTable {
        name: "trades".into(),
    })
    .unwrap();
    assert_eq!(s.table_id("trades"), None);
    // Ids are never reused: the storage catalog refuses an id below its next free one.
    s.apply(&Command::CreateTable {
        schema: schema("Trades"),
    })
    .unwrap();
    assert_eq!(s.table_id("trades"), Some(2));
    s.apply(&Command::DropTable {
        name: "trades".into(),
    })
    .unwrap();
    assert_eq!(
        reject(
            &mut s,
            Command::DropTable {
                name: "trades".into()
            }
        ),
        Rejected::UnknownTable {
            name: "trades".into()
        }
    );
    let v = s.version;
    let c = Command::SetSetting {
        key: "ack".into(),
        value: "replicated".into(),
    };
    assert_eq!(s.apply(&c).unwrap(), Applied::Changed { version: v + 1 });
    assert_eq!(s.apply(&c).unwrap(), Applied::Unchanged);
    assert_eq!(s.version, v + 1);
}

/// A command log mixing accepted and rejected commands.
fn mixed_log() -> Vec<Command> {
    let mut log = setup_log();
    log.extend([
        Command::CreateTable {
            schema: schema("trades"),
        },
        set(1, NodeState::Suspect),
        set(1, NodeState::Dead),
        Command::Promote {
            partition: 0,
            new_primary: 2,
            expected_epoch: 1,
        },
        // Rejected: partition 2's replica is node 1, which is dead.
        Command::Promote {
            partition: 2,
            new_primary: 1,
            expected_epoch: 1,
        },
        Command::ShrinkInSync {
            partition: 2,
            epoch: 1,
            primary: 3,
        },
        add(1), // rejected: id in use
        set(1, NodeState::Joining),
        Command::ExpandInSync {
            partition: 0,
            epoch: 2,
            node: 1,
        },
        set(1, NodeState::Active),
        Command::SetSetting {
            key: "k".into(),
            value: "v".into(),
        },
    ]);
    log
}

#[test]
fn same_log_gives_same_state_on_two_instances() {
    let log = mixed_log();
    let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
    let ra: Vec<_> = log.iter().map(|c| a.apply(c)).collect();
    // b sees the log through the wire encoding.
    let rb: Vec<_> = log
        .iter()
        .map(|c| b.apply(&Command::decode(&c.encode()).unwrap()))
        .collect();
    assert_eq!(ra, rb);
    assert_eq!(a, b);
    assert_eq!(ra.iter().filter(|r| r.is_err()).count(), 2);
    assert_eq!(a.partition(0).unwrap().in_sync, [1, 2].into());
    assert_eq!(a.partition(0).unwrap().epoch, 2);
    // And through a snapshot.
    let c = ClusterState::decode_snapshot(&a.encode_snapshot()).unwrap();
    assert_eq!(c, a);
}

#[test]
fn decoding_refuses_unknown_versions_and_garbage() {
    let mut bytes = add(1).encode();
    assert_eq!(bytes[0], COMMAND_FORMAT_V1);
    bytes[0] = 9;
    let e = Command::decode(&bytes).unwrap_err().to_string();
    assert!(e.contains("unknown format version 9"), "{e}");
    assert!(Command::decode(&[]).is_err());
    assert!(Command::decode(&[1, b'{']).is_err());
    let mut snap = three_nodes().encode_snapshot();
    snap[0] = 2;
    assert!(ClusterState::decode_snapshot(&snap).is_err());
    assert!(ClusterState::decode_snapshot(&[1, 0xff]).is_err());
    assert_eq!(
        ClusterState::decode_snapshot(&[]).unwrap(),
        ClusterState::default()
    );
}

mod invariants {
    use super::*;
    use proptest::prelude::*;

    fn node_state() -> impl Strategy<Value = NodeState> {
        prop_oneof![
            Just(NodeState::Joining),
            Just(NodeState::Active),
            Just(NodeState::Suspect),
            Just(NodeState::Dead),
            Just(NodeState::Draining),
        ]
    }

    /// Commands over a small domain, so that many of them are valid and many are not.
    fn command() -> impl Strategy<Value = Command> {
        let node = 0u64..5;
        prop_oneof![
            node.clone().prop_map(add),
            node.clone().prop_map(|id| Command::RemoveNode { id }),
            (node.clone(), node_state())
                .prop_map(|(id, state)| Command::SetNodeState { id, state }),
            proptest::collection::vec((1u64..5, proptest::option::of(1u64..5)), 0..4)
                .prop_map(|assignments| Command::InitPartitions { assignments }),
            (0u32..4, node.clone(), 0u64..4).prop_map(
                |(partition, new_primary, expected_epoch)| {
                    Command::Promote {
                        partition,
                        new_primary,
                        expected_epoch,
                    }
                }
            ),
            (0u32..4, 0u64..4, node.clone()).prop_map(|(partition, epoch, primary)| {
                Command::ShrinkInSync {
                    partition,
                    epoch,
                    primary,
                }
            }),
            (0u32..4, 0u64..4, node.clone()).prop_map(|(partition, epoch, node)| {
                Command::ExpandInSync {
                    partition,
                    epoch,
                    node,
                }
            }),
            (0u32..4, 0u64..4, proptest::option::of(node)).prop_map(
                |(partition, expected_epoch, replica)| Command::SetReplica {
                    partition,
                    expected_epoch,
                    replica,
                }
            ),
            (0u8..3).prop_map(|i| Command::SetSetting {
                key: format!("k{i}"),
                value: "v".into()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_logs_keep_the_invariants(log in proptest::collection::vec(command(), 1..120)) {
            let mut a = ClusterState::default();
            let mut b = ClusterState::default();
            for c in &log {
                let before = a.clone();
                let ra = a.apply(c);
                let rb = b.apply(&Command::decode(&c.encode()).unwrap());
                prop_assert_eq!(&ra, &rb);
                match ra {
                    Ok(Applied::Changed { version }) => prop_assert_eq!(version, before.version + 1),
                    Ok(Applied::Unchanged) | Err(_) => {
                        prop_assert_eq!(&a, &before, "unchanged or rejected must not change anything");
                    }
                }
                for (p, old) in a.partitions.iter().zip(before.partitions.iter()) {
                    prop_assert!(p.epoch >= old.epoch, "epochs only go up");
                    if p.epoch != old.epoch {
                        prop_assert_eq!(p.epoch, old.epoch + 1);
                        prop_assert!(old.in_sync.contains(&p.primary), "promoted a copy that was not in sync");
                    }
                }
                for p in &a.partitions {
                    prop_assert!(p.in_sync.contains(&p.primary), "{:?}", p);
                    prop_assert!(p.in_sync.iter().all(|n| *n == p.primary || Some(*n) == p.replica), "{:?}", p);
                    prop_assert!(p.replica != Some(p.primary), "{:?}", p);
                    prop_assert!(a.nodes.contains_key(&p.primary));
                }
            }
            prop_assert_eq!(a, b);
        }
    }
}
