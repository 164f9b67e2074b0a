use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, DictionaryArray, Float64Array};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use zepto_cluster::state::{NodeInfo, PartitionInfo};

use super::*;

/// 3 nodes, 4 partitions: partition p has primary p % 3 + 1 and replica (p + 1) % 3 + 1.
fn state() -> ClusterState {
    let mut st = ClusterState {
        partitions: (0..4u32)
            .map(|id| {
                let primary = u64::from(id % 3 + 1);
                let replica = u64::from((id + 1) % 3 + 1);
                PartitionInfo {
                    id,
                    primary,
                    replica: Some(replica),
                    epoch: 2,
                    in_sync: [primary, replica].into_iter().collect(),
                }
            })
            .collect(),
        ..Default::default()
    };
    for id in 1..=3 {
        st.nodes.insert(
            id,
            NodeInfo {
                id,
                http_addr: String::new(),
                grpc_addr: String::new(),
                state: NodeState::Active,
            },
        );
    }
    st
}

#[test]
fn reads_go_to_the_primary_then_to_in_sync_copies_that_can_serve() {
    let mut st = state();
    let none = BTreeMap::new();
    assert_eq!(candidates(&st, 0, &none), vec![(1, 2), (2, 2)]);
    // A copy that failed in this query goes last.
    let failed: BTreeMap<NodeId, Instant> = [(1, Instant::now())].into_iter().collect();
    assert_eq!(candidates(&st, 0, &failed), vec![(2, 2), (1, 2)]);
    // A SUSPECT primary after an ACTIVE replica; a DEAD one not at all.
    if let Some(n) = st.nodes.get_mut(&1) {
        n.state = NodeState::Suspect;
    }
    assert_eq!(candidates(&st, 0, &none), vec![(2, 2), (1, 2)]);
    if let Some(n) = st.nodes.get_mut(&1) {
        n.state = NodeState::Dead;
    }
    assert_eq!(candidates(&st, 0, &none), vec![(2, 2)]);
    // A replica outside the in-sync set is never read.
    st.partitions[0].in_sync = [1].into_iter().collect();
    assert!(candidates(&st, 0, &none).is_empty());
    assert!(candidates(&st, 9, &none).is_empty());
}

#[test]
fn a_whole_query_goes_to_one_node_holding_every_partition() {
    let st = state();
    let none = BTreeMap::new();
    // Partition 0 on {1,2}, 1 on {2,3}: node 2 holds both.
    assert_eq!(whole_owner(&st, &[0, 1], 3, &none), Some(2));
    // One partition: its primary, even when this node holds a copy.
    assert_eq!(whole_owner(&st, &[1], 3, &none), Some(2));
    // No table read: here.
    assert_eq!(whole_owner(&st, &[], 3, &none), Some(3));
    // The primary failed: the in-sync replica.
    let failed: BTreeMap<NodeId, Instant> = [(2, Instant::now())].into_iter().collect();
    assert_eq!(whole_owner(&st, &[1], 1, &failed), Some(3));
}

#[test]
fn the_shape_follows_the_footprint() {
    let st = state();
    let plan = |split: bool, footprint: Option<Vec<u32>>| ClusterPlan {
        split: None,
        unsplit_reason: (!split).then(|| "joins".to_string()),
        footprint,
    };
    // Unsplittable and unpruned: a clear 400.
    match choose_shape(&st, 1, plan(false, None), 4) {
        Err(Error::BadRequest(m)) => {
            assert!(
                m.contains("cluster mode") && m.contains("one symbol"),
                "{m}"
            )
        }
        _ => panic!("expected a 400"),
    }
    // Unsplittable over partitions one node holds: whole there.
    assert!(matches!(
        choose_shape(&st, 1, plan(false, Some(vec![0, 1])), 4),
        Ok(Shape::Whole(p)) if p == vec![0, 1]
    ));
    // A footprint outside the partition count is a bug, not a panic.
    assert!(choose_shape(&st, 1, plan(false, Some(vec![7])), 4).is_err());
}

#[test]
fn the_owner_check_fences_and_refuses_non_owners() {
    let st = state();
    let pe = |partition, epoch| PartitionEpoch { partition, epoch };
    // Node 2 holds partition 0 (replica, in sync) and 1 (primary).
    assert_eq!(
        check_owner(2, &st, 1, 4, &[pe(0, 2), pe(1, 2)]).unwrap(),
        vec![0, 1]
    );
    let older = check_owner(2, &st, 1, 4, &[pe(0, 1)]).unwrap_err();
    assert_eq!(older.code(), Code::Aborted);
    assert!(older.message().starts_with("FENCED"), "{}", older.message());
    for list in [vec![pe(2, 2)], vec![pe(0, 3)]] {
        let s = check_owner(2, &st, 1, 4, &list).unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().starts_with("NOT_PRIMARY"), "{}", s.message());
    }
    for list in [vec![pe(9, 2)], vec![pe(1, 2), pe(1, 2)]] {
        let s = check_owner(2, &st, 1, 4, &list).unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
    }
    // An out-of-sync replica is not an owner.
    let mut st = st;
    st.partitions[0].in_sync = [1].into_iter().collect();
    assert_eq!(
        check_owner(2, &st, 1, 4, &[pe(0, 2)]).unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[test]
fn answers_survive_the_wire_with_differing_dictionaries_and_garbage_is_an_error() {
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "symbol",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new("v", DataType::Float64, true),
    ]));
    let batch = |syms: &[&str]| {
        let d: DictionaryArray<Int32Type> = syms.iter().copied().collect();
        let v = Float64Array::from_iter_values((0..syms.len()).map(|i| i as f64));
        RecordBatch::try_new(schema.clone(), vec![Arc::new(d), Arc::new(v)]).unwrap()
    };
    let batches = vec![batch(&["A", "B"]), batch(&["C", "C", "D"])];
    let ipc = to_ipc(&(schema.clone() as SchemaRef), &batches).unwrap();
    let (back_schema, back) = from_ipc(&ipc).unwrap();
    assert_eq!(back_schema.fields(), schema.fields());
    let syms: Vec<String> = back
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
            let s = c.as_string::<i32>();
            (0..s.len())
                .map(|i| s.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(syms, ["A", "B", "C", "C", "D"]);
    // Empty answers keep their schema.
    let (s, b) = from_ipc(&to_ipc(&(schema.clone() as SchemaRef), &[]).unwrap()).unwrap();
    assert_eq!((s.fields().len(), b.len()), (2, 0));
    // Truncated or garbage bytes are an error, never a panic.
    for bad in [&ipc[..ipc.len() / 2], &b"not arrow"[..], &[][..]] {
        assert!(from_ipc(bad).is_err());
    }
}

#[tokio::test]
async fn serve_refuses_bad_requests_and_stale_senders_before_anything_runs() {
    let (_tx, dp) = super::super::dataplane::test_plane(2, 4, state());
    let req = |mode: i32, sql: &str, epoch: u64| QueryRequest {
        sql: sql.into(),
        now_ns: 0,
        partitions: vec![PartitionEpoch {
            partition: 0,
            epoch,
        }],
        timeout_ms: 1000,
        mode,
    };
    let code = |r: std::result::Result<Vec<QueryChunk>, Status>| r.unwrap_err();
    assert_eq!(
        code(serve(&dp, 1, req(7, "SELECT 1", 2)).await).code(),
        Code::InvalidArgument
    );
    assert_eq!(
        code(serve(&dp, 1, req(0, "  ", 2)).await).code(),
        Code::InvalidArgument
    );
    let fenced = code(serve(&dp, 1, req(0, "SELECT 1", 1)).await);
    assert_eq!(fenced.code(), Code::Aborted);
    assert!(
        fenced.message().starts_with("FENCED"),
        "{}",
        fenced.message()
    );
    let ahead = code(serve(&dp, 1, req(1, "SELECT 1", 3)).await);
    assert_eq!(ahead.code(), Code::FailedPrecondition);
    // The right owner at the right epoch gets past the checks (the database is not open).
    assert_eq!(
        code(serve(&dp, 1, req(1, "SELECT 1", 2)).await).code(),
        Code::Unavailable
    );
}
