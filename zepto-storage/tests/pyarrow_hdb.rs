//! HDB files must open with pyarrow as they are. Skips (with the reason printed) where
//! python3 or pyarrow is missing; `.ci/run` installs pyarrow so CI runs it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema};
use zepto_storage::{ColumnDef, ColumnType, Config, Db, TableSchema};

fn pyarrow_available() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("python3: {e}")),
    }
}

#[test]
fn pyarrow_reads_hdb_files_as_they_are() {
    if let Err(why) = pyarrow_available() {
        println!("SKIPPED pyarrow_reads_hdb_files_as_they_are: pyarrow is not installed ({why})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.checkpoint_interval = None;
    let db = Db::open(c).unwrap();
    db.create_table(
        TableSchema::new(
            "trades",
            vec![
                ColumnDef::new("ts", ColumnType::Timestamp),
                ColumnDef::new("symbol", ColumnType::Symbol),
                ColumnDef::new("price", ColumnType::Double),
                ColumnDef::new("volume", ColumnType::BigInt),
                ColumnDef::new("note", ColumnType::String),
            ],
            None,
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let n = 10_000i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", ColumnType::Timestamp.arrow_type(), false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, true),
        Field::new("volume", DataType::Int64, true),
        Field::new("note", DataType::Utf8, true),
    ]));
    // Out of order on purpose: the files must come out sorted.
    let ts: Vec<i64> = (0..n).map(|i| (n - i) * 1_000_000_000).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampNanosecondArray::from(ts)),
            Arc::new(StringArray::from(
                (0..n).map(|i| format!("S{}", i % 7)).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                (0..n)
                    .map(|i| (i % 5 != 0).then_some(i as f64))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                (0..n)
                    .map(|i| (i % 3 == 0).then(|| format!("n{i}")))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    db.insert("trades", batch).unwrap();
    assert!(db.flush().unwrap() > 0);
    let script = r#"
import sys, glob, pyarrow as pa, pyarrow.ipc as ipc
# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: independent of zeptod's.
table = []
for n in range(256):
    c = n
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
assert crc32c(b"123456789") == 0xE3069283
files = sorted(glob.glob(sys.argv[1] + "/hdb/trades/*/*.arrow"))
rows = 0; vol = 0; nulls = 0; syms = set()
for f in files:
    r = ipc.open_file(pa.memory_map(f))
    # The content checksum in the footer (docs/storage-format.md) covers the file's first
    # zepto.crc32c_bytes bytes.
    meta = r.metadata
    n = int(meta[b"zepto.crc32c_bytes"])
    data = open(f, "rb").read()
    assert 0 < n < len(data), (f, n, len(data))
    assert meta[b"zepto.crc32c"] == b"%08x" % crc32c(data[:n]), f
    t = r.read_all()
    assert t.schema.field("ts").type == pa.timestamp("ns"), t.schema
    assert pa.types.is_dictionary(t.schema.field("symbol").type), t.schema
    ts = t.column("ts").to_pylist()
    assert ts == sorted(ts), f + " is not sorted"
    rows += t.num_rows
    vol += sum(v for v in t.column("volume").to_pylist())
    nulls += t.column("price").null_count
    syms.update(str(s) for s in t.column("symbol").to_pylist())
print(len(files), rows, vol, nulls, len(syms))
"#;
    let out = Command::new("python3")
        .args(["-c", script, dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<i64> = got.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert!(
        parts[0] >= 7,
        "one file per partition and hour at least: {got}"
    );
    assert_eq!(&parts[1..], &[n, (0..n).sum::<i64>(), n / 5, 7], "{got}");
}
