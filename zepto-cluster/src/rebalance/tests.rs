use super::*;
use crate::placement;

fn cluster(nodes: &[NodeId], partitions: u32) -> ClusterState {
    let mut s = ClusterState::default();
    for &id in nodes {
        join(&mut s, id);
    }
    s.apply(&placement::init_command(
        placement::place(nodes, partitions, 2).unwrap(),
    ))
    .unwrap();
    s
}

/// An ACTIVE node `id` with disk space reported.
fn join(s: &mut ClusterState, id: NodeId) {
    s.apply(&Command::SetSetting {
        key: disk_low_key(id),
        value: String::new(),
    })
    .unwrap();
    s.apply(&Command::AddNode {
        id,
        http_addr: String::new(),
        grpc_addr: format!("n{id}"),
    })
    .unwrap();
    s.apply(&Command::SetNodeState {
        id,
        state: NodeState::Active,
    })
    .unwrap();
}

/// Commit each planned move as the cluster would (a new replica catches up and joins the
/// in-sync set; a handoff promotes and the old primary catches up), until balanced.
fn run(s: &mut ClusterState) -> usize {
    for step in 0..1000 {
        match plan(s) {
            Plan::Balanced => return step,
            Plan::Waiting(why) => panic!("stuck: {why}"),
            Plan::Move(m) => {
                s.apply(&m.command()).unwrap();
                let p = s.partitions[m.partition() as usize].clone();
                if let Some(r) = p.replica {
                    s.apply(&Command::ExpandInSync {
                        partition: p.id,
                        epoch: p.epoch,
                        node: r,
                    })
                    .unwrap();
                }
            }
        }
    }
    panic!("no convergence");
}

fn spread(s: &ClusterState) -> (usize, usize) {
    let hosts: Vec<NodeId> = s.nodes.keys().copied().collect();
    let count = |f: &dyn Fn(&crate::state::PartitionInfo, NodeId) -> bool| {
        let c: Vec<usize> = hosts
            .iter()
            .map(|&h| s.partitions.iter().filter(|p| f(p, h)).count())
            .collect();
        c.iter().max().unwrap() - c.iter().min().unwrap()
    };
    (
        count(&|p, h| p.primary == h),
        count(&|p, h| p.replica == Some(h)),
    )
}

#[test]
fn scale_out_then_in_balances_within_one() {
    for partitions in [1u32, 3, 8, 16, 31] {
        let mut s = cluster(&[1, 2, 3], partitions);
        assert_eq!(plan(&s), Plan::Balanced);
        join(&mut s, 4);
        join(&mut s, 5);
        run(&mut s);
        let (dp, dr) = spread(&s);
        assert!(dp <= 1 && dr <= 1, "{partitions}: {dp} {dr}");
        for p in &s.partitions {
            assert_ne!(Some(p.primary), p.replica);
            assert_eq!(p.in_sync.len(), 2);
        }
        for id in [4, 5] {
            s.apply(&Command::SetSetting {
                key: decommission_key(id),
                value: DECOMMISSION_REQUESTED.into(),
            })
            .unwrap();
        }
        run(&mut s);
        assert!(s.partitions_of(4).is_empty() && s.partitions_of(5).is_empty());
        s.apply(&Command::RemoveNode { id: 4 }).unwrap();
        s.apply(&Command::RemoveNode { id: 5 }).unwrap();
        let (dp, dr) = spread(&s);
        assert!(dp <= 1 && dr <= 1, "{partitions}: {dp} {dr}");
    }
}

#[test]
fn a_removed_node_counts_as_decommissioned_before_its_mark_commits() {
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    run(&mut s);
    let mark = |s: &mut ClusterState, value: &str| {
        s.apply(&Command::SetSetting {
            key: decommission_key(4),
            value: value.into(),
        })
        .unwrap();
    };
    mark(&mut s, DECOMMISSION_REQUESTED);
    assert_eq!(leaving(&s), BTreeSet::from([4]));
    assert!(decommissioned(&s).is_empty());
    run(&mut s);
    // The leader's two entries: the removal, then the mark.
    s.apply(&Command::RemoveNode { id: 4 }).unwrap();
    assert!(leaving(&s).is_empty());
    assert_eq!(decommissioned(&s), BTreeSet::from([4]));
    assert_eq!(unmarked_removals(&s), BTreeSet::from([4]));
    mark(&mut s, DECOMMISSION_REMOVED);
    assert_eq!(decommissioned(&s), BTreeSet::from([4]));
    assert!(unmarked_removals(&s).is_empty());
    // The same id joining again is a new member, neither leaving nor decommissioned.
    join(&mut s, 4);
    assert!(leaving(&s).is_empty() && decommissioned(&s).is_empty());
}

#[test]
fn nothing_moves_while_a_copy_runs_or_a_node_is_down() {
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    let Plan::Move(m) = plan(&s) else {
        panic!("expected a move")
    };
    s.apply(&m.command()).unwrap();
    assert!(matches!(plan(&s), Plan::Waiting(w) if w.contains("catching up")));
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    s.apply(&Command::SetNodeState {
        id: 2,
        state: NodeState::Suspect,
    })
    .unwrap();
    assert!(matches!(plan(&s), Plan::Waiting(w) if w.contains("SUSPECT")));
}

#[test]
fn decommission_refusals_name_the_reason() {
    let voters: BTreeSet<NodeId> = [1, 2, 3].into();
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    run(&mut s);
    assert!(decommission_refusal(&s, 4, &voters, 2).is_none());
    let r = decommission_refusal(&s, 1, &voters, 2).unwrap();
    assert!(r.contains("metadata voter"), "{r}");
    let r = decommission_refusal(&s, 9, &voters, 2).unwrap();
    assert!(r.contains("not a member"), "{r}");
    // Node 4 the only in-sync copy of a partition it leads.
    let p = s
        .partitions
        .iter()
        .find(|p| p.primary == 4)
        .unwrap()
        .clone();
    s.apply(&Command::ShrinkInSync {
        partition: p.id,
        epoch: p.epoch,
        primary: 4,
    })
    .unwrap();
    let r = decommission_refusal(&s, 4, &voters, 2).unwrap();
    assert!(r.contains("only in-sync copy"), "{r}");
    // Two data nodes, RF 2, voters all DEAD: too few nodes left.
    let mut s = cluster(&[1, 2, 3], 4);
    join(&mut s, 4);
    join(&mut s, 5);
    run(&mut s);
    for id in [1, 2, 3] {
        s.apply(&Command::SetNodeState {
            id,
            state: NodeState::Dead,
        })
        .unwrap();
    }
    let r = decommission_refusal(&s, 4, &voters, 2).unwrap();
    assert!(r.contains("replication factor"), "{r}");
    let mut lone = ClusterState::default();
    join(&mut lone, 7);
    lone.apply(&placement::init_command(
        placement::place(&[7], 2, 2).unwrap(),
    ))
    .unwrap();
    let r = decommission_refusal(&lone, 7, &voters, 2).unwrap();
    assert!(r.contains("last copy holder"), "{r}");
    // RF = 1: a partition without a replica cannot be moved off its only holder.
    let mut one = cluster(&[1, 2, 3], 4);
    join(&mut one, 4);
    let p = one.partitions[0].clone();
    one.apply(&Command::SetReplica {
        partition: p.id,
        expected_epoch: p.epoch,
        replica: None,
    })
    .unwrap();
    let primary = one.partitions[0].primary;
    let r = decommission_refusal(&one, primary, &BTreeSet::new(), 1).unwrap();
    assert!(r.contains("no replica"), "{r}");
}

#[test]
fn nothing_moves_to_a_node_that_has_not_reported_its_disk() {
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    s.settings.remove(&disk_low_key(4));
    assert_eq!(plan(&s), Plan::Balanced);
}

#[test]
fn nothing_moves_to_a_node_short_of_disk() {
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    s.apply(&Command::SetSetting {
        key: disk_low_key(4),
        value: "free 1 MiB < --min-free-disk 64 MiB".into(),
    })
    .unwrap();
    assert_eq!(disk_low(&s).len(), 1);
    assert_eq!(plan(&s), Plan::Balanced);
    assert!(s.partitions_of(4).is_empty());
    // Cleared: it receives its share.
    s.apply(&Command::SetSetting {
        key: disk_low_key(4),
        value: String::new(),
    })
    .unwrap();
    run(&mut s);
    assert!(!s.partitions_of(4).is_empty());
}

fn report_corrupt(s: &mut ClusterState, node: NodeId, parts: &[PartitionId]) {
    s.apply(&Command::SetSetting {
        key: corrupt_key(node),
        value: corrupt_value(&parts.iter().copied().collect()),
    })
    .unwrap();
}

/// A partition `node` leads, and its replica.
fn led_by(s: &ClusterState, node: NodeId) -> (crate::state::PartitionInfo, NodeId) {
    let p = s.partitions.iter().find(|p| p.primary == node).unwrap();
    (p.clone(), p.replica.unwrap())
}

#[test]
fn a_corrupt_primary_is_handed_to_its_clean_replica_and_never_back_while_reported() {
    let mut s = cluster(&[1, 2, 3], 8);
    assert_eq!(plan(&s), Plan::Balanced);
    let (p, r) = led_by(&s, 1);
    report_corrupt(&mut s, 1, &[p.id]);
    assert_eq!(corrupt_copies(&s)[&1], BTreeSet::from([p.id]));
    assert_eq!(
        plan(&s),
        Plan::Move(Move::Primary {
            partition: p.id,
            epoch: p.epoch,
            from: 1,
            to: r
        })
    );
    // Handed over; the rest of the plan rebalances without giving it back to node 1.
    run(&mut s);
    assert_eq!(s.partitions[p.id as usize].primary, r);
    // A node joins and takes a share: still never node 1's while it reports the copy.
    join(&mut s, 4);
    run(&mut s);
    assert_ne!(s.partitions[p.id as usize].primary, 1);
    // Repaired (the report is cleared): an ordinary member again.
    report_corrupt(&mut s, 1, &[]);
    assert!(corrupt_copies(&s).is_empty());
    run(&mut s);
    let (dp, dr) = spread(&s);
    assert!(dp <= 1 && dr <= 1);
}

#[test]
fn no_primary_goes_to_a_copy_reported_corrupt() {
    // Both copies corrupt: nothing to gain by a handoff.
    let mut s = cluster(&[1, 2, 3], 8);
    let (p, r) = led_by(&s, 1);
    report_corrupt(&mut s, 1, &[p.id]);
    report_corrupt(&mut s, r, &[p.id]);
    assert_eq!(plan(&s), Plan::Balanced);

    // A leaving primary whose replica is corrupt: the replica moves first, then the handoff
    // goes to the fresh copy.
    let mut s = cluster(&[1, 2, 3], 8);
    join(&mut s, 4);
    run(&mut s);
    let (p, r) = led_by(&s, 4);
    report_corrupt(&mut s, r, &[p.id]);
    s.apply(&Command::SetSetting {
        key: decommission_key(4),
        value: DECOMMISSION_REQUESTED.into(),
    })
    .unwrap();
    let fresh = match plan(&s) {
        Plan::Move(
            m @ Move::Replica {
                partition,
                from,
                to,
                ..
            },
        ) => {
            assert_eq!((partition, from), (p.id, Some(r)));
            assert_ne!(to, 4);
            s.apply(&m.command()).unwrap();
            s.apply(&Command::ExpandInSync {
                partition,
                epoch: p.epoch,
                node: to,
            })
            .unwrap();
            to
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        plan(&s),
        Plan::Move(Move::Primary {
            partition: p.id,
            epoch: p.epoch,
            from: 4,
            to: fresh
        })
    );
    // A node reports only the copies it holds: r no longer holds p.
    report_corrupt(&mut s, r, &[]);
    run(&mut s);
    assert!(s.partitions_of(4).is_empty());
}
