//! The deterministic data generator: trades and quotes for S symbols over one trading day
//! (09:30 to 16:00 UTC on 2024-01-02), random-walk prices, volumes 1..=1000. The same seed,
//! row count and symbol count always give the same rows, in the same batches.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 2024-01-02T09:30:00Z in nanoseconds.
pub(crate) const DAY_OPEN_NS: i64 = 1_704_187_800_000_000_000;
/// 6.5 hours.
pub(crate) const SESSION_NS: i64 = 23_400_000_000_000;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) seed: u64,
    pub(crate) rows: usize,
    pub(crate) symbols: usize,
}

pub(crate) fn symbol_name(i: usize) -> String {
    format!("S{i:03}")
}

pub(crate) fn trades_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Float64, false),
        Field::new("volume", DataType::Int64, false),
    ]))
}

pub(crate) fn quotes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("bid", DataType::Float64, false),
        Field::new("ask", DataType::Float64, false),
    ]))
}

/// The trades, in time order, in batches of at most `batch_rows` rows.
pub(crate) fn trades(spec: Spec, batch_rows: usize) -> Vec<RecordBatch> {
    generate(spec, batch_rows, false)
}

/// Quotes: half as many rows as trades, the same symbols and session.
pub(crate) fn quotes(spec: Spec, batch_rows: usize) -> Vec<RecordBatch> {
    let q = Spec {
        seed: spec.seed ^ 0x5155_4f54_4553,
        rows: spec.rows / 2,
        symbols: spec.symbols,
    };
    generate(q, batch_rows, true)
}

fn generate(spec: Spec, batch_rows: usize, quotes: bool) -> Vec<RecordBatch> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let symbols = spec.symbols.max(1);
    let names: Vec<String> = (0..symbols).map(symbol_name).collect();
    let mut prices: Vec<f64> = (0..symbols)
        .map(|_| rng.random_range(20.0..500.0))
        .collect();
    let step = (SESSION_NS / spec.rows.max(1) as i64).max(1);
    let mut out = Vec::new();
    let batch_rows = batch_rows.max(1);
    let mut done = 0;
    while done < spec.rows {
        let n = batch_rows.min(spec.rows - done);
        let mut ts = Vec::with_capacity(n);
        let mut sym = Vec::with_capacity(n);
        let mut a = Vec::with_capacity(n);
        let mut b = Vec::with_capacity(n);
        let mut vol = Vec::with_capacity(n);
        for i in 0..n {
            let row = (done + i) as i64;
            ts.push(DAY_OPEN_NS + row * step + rng.random_range(0..step));
            let s = rng.random_range(0..symbols);
            sym.push(names[s].as_str());
            let p = &mut prices[s];
            *p = (*p * (1.0 + rng.random_range(-0.001..0.001))).max(0.01);
            let price = (*p * 100.0).round() / 100.0;
            if quotes {
                let spread = (price * 0.0005).max(0.01);
                a.push(((price - spread) * 100.0).round() / 100.0);
                b.push(((price + spread) * 100.0).round() / 100.0);
            } else {
                a.push(price);
                vol.push(rng.random_range(1..=1000i64));
            }
        }
        let cols: Vec<arrow::array::ArrayRef> = if quotes {
            vec![
                Arc::new(TimestampNanosecondArray::from(ts)),
                Arc::new(StringArray::from(sym)),
                Arc::new(Float64Array::from(a)),
                Arc::new(Float64Array::from(b)),
            ]
        } else {
            vec![
                Arc::new(TimestampNanosecondArray::from(ts)),
                Arc::new(StringArray::from(sym)),
                Arc::new(Float64Array::from(a)),
                Arc::new(Int64Array::from(vol)),
            ]
        };
        let schema = if quotes {
            quotes_schema()
        } else {
            trades_schema()
        };
        // The columns match the schema by construction.
        if let Ok(b) = RecordBatch::try_new(schema, cols) {
            out.push(b);
        }
        done += n;
    }
    out
}

/// `batch` (trades or quotes: the timestamp is column 0) moved `days` days later: a load
/// that sends the same rows again keeps going forward in time, as a live feed does.
pub(crate) fn shifted(
    batch: &RecordBatch,
    days: i64,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampNanosecondType;
    let by = days * 86_400 * 1_000_000_000;
    let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
    let moved: TimestampNanosecondArray = ts.unary(|t| t + by);
    let mut columns = batch.columns().to_vec();
    columns[0] = Arc::new(moved.with_timezone_opt(ts.timezone()));
    RecordBatch::try_new(batch.schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampNanosecondType;

    #[test]
    fn deterministic_sorted_and_in_session() {
        let spec = Spec {
            seed: 7,
            rows: 10_000,
            symbols: 100,
        };
        let a = trades(spec, 3000);
        let b = trades(spec, 3000);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
        assert_eq!(a.iter().map(|b| b.num_rows()).sum::<usize>(), 10_000);
        let ts: Vec<i64> = a
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<TimestampNanosecondType>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        assert!(ts[0] >= DAY_OPEN_NS && *ts.last().unwrap() < DAY_OPEN_NS + SESSION_NS);
        let other = trades(Spec { seed: 8, ..spec }, 3000);
        assert_ne!(a, other);
        assert_eq!(quotes(spec, 10_000)[0].num_rows(), 5_000);
    }

    #[test]
    fn a_shifted_batch_moves_only_its_timestamps() {
        let spec = Spec {
            seed: 3,
            rows: 100,
            symbols: 10,
        };
        let b = trades(spec, 100).remove(0);
        let s = shifted(&b, 2).unwrap();
        let ts = |b: &RecordBatch| -> Vec<i64> {
            b.column(0)
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec()
        };
        let day = 86_400 * 1_000_000_000;
        assert!(ts(&b).iter().zip(ts(&s)).all(|(a, c)| c == a + 2 * day));
        assert_eq!(b.columns()[1..], s.columns()[1..]);
        assert_eq!(b.schema(), s.schema());
    }
}
