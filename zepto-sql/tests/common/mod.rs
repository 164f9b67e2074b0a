//! Shared test helpers: open a Db in a tempdir, render results as text.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimestampNanosecondType};
use zepto_sql::{Engine, QueryOutput, QuerySettings};
use zepto_storage::{Config, Db};

/// 2024-01-02T12:00:00Z, what `now()` returns in tests.
pub(crate) const TEST_NOW: i64 = 1_704_196_800_000_000_000;

pub(crate) fn open(dir: &std::path::Path) -> Engine {
    let db = Db::open(Config::new(dir)).unwrap();
    Engine::new(db, QuerySettings::default()).with_clock(Arc::new(|| TEST_NOW))
}

pub(crate) fn fmt_ts(ns: i64) -> String {
    const DAY: i64 = 86_400_000_000_000;
    let days = ns.div_euclid(DAY);
    let rem = ns.rem_euclid(DAY);
    // civil from days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s, f) = (
        rem / 3_600_000_000_000,
        rem / 60_000_000_000 % 60,
        rem / 1_000_000_000 % 60,
        rem % 1_000_000_000,
    );
    if f == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:09}Z")
    }
}

/// Floats with 10 significant digits (summation order must not change goldens).
pub(crate) fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{v:.1}");
    }
    let s = format!("{:.9e}", v);
    let parsed: f64 = s.parse().unwrap();
    let mut out = format!("{parsed}");
    if !out.contains('.') && !out.contains('e') {
        out.push_str(".0");
    }
    out
}

pub(crate) fn cell(a: &ArrayRef, i: usize) -> String {
    if a.is_null(i) {
        return "NULL".into();
    }
    match a.data_type() {
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Float64 => fmt_f64(a.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => a.as_boolean().value(i).to_string(),
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::Timestamp(_, _) => fmt_ts(a.as_primitive::<TimestampNanosecondType>().value(i)),
        DataType::Dictionary(_, _) => {
            let s = arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8).unwrap();
            s.as_string::<i32>().value(0).to_string()
        }
        DataType::Null => "NULL".into(),
        t => format!("<{t}>"),
    }
}

/// Rows as vectors of cell strings.
pub(crate) fn rows(out: &QueryOutput) -> Vec<Vec<String>> {
    let mut res = vec![];
    if let QueryOutput::Rows { batches, .. } = out {
        for b in batches {
            for i in 0..b.num_rows() {
                res.push(b.columns().iter().map(|c| cell(c, i)).collect());
            }
        }
    }
    res
}

pub(crate) fn render(out: &QueryOutput) -> String {
    match out {
        QueryOutput::Rows { schema, .. } => {
            let mut s = String::new();
            let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            s.push_str(&header.join(" | "));
            s.push('\n');
            let r = rows(out);
            for row in &r {
                s.push_str(&row.join(" | "));
                s.push('\n');
            }
            s.push_str(&format!("({} rows)\n", r.len()));
            s
        }
        QueryOutput::Inserted { rows } => format!("INSERTED {rows}\n"),
        QueryOutput::Ok { message } => format!("OK {message}\n"),
    }
}
