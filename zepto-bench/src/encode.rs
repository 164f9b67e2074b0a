//! Request bodies in the three ingest formats, and Parquet files for DuckDB.

use std::fmt::Write as _;
use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use arrow::ipc::writer::StreamWriter;

use crate::Error;

/// An ingest body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    Arrow,
    Csv,
    /// InfluxDB line protocol on /write.
    Ilp,
}

/// One body holding `batch`.
pub(crate) fn body(batch: &RecordBatch, format: Format) -> Result<Vec<u8>, Error> {
    match format {
        Format::Arrow => {
            let mut out = Vec::new();
            let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
            drop(w);
            Ok(out)
        }
        Format::Csv => Ok(text_rows(batch, false).into_bytes()),
        Format::Ilp => Ok(text_rows(batch, true).into_bytes()),
    }
}

/// Trades (ts, symbol, price, volume) as CSV without header, or as line protocol.
fn text_rows(batch: &RecordBatch, ilp: bool) -> String {
    let ts = batch.column(0).as_primitive::<TimestampNanosecondType>();
    let sym = batch.column(1).as_string::<i32>();
    let price = batch.column(2).as_primitive::<Float64Type>();
    let vol = batch.column(3).as_primitive::<Int64Type>();
    let mut s = String::with_capacity(batch.num_rows() * 48);
    for i in 0..batch.num_rows() {
        // Writing into a String cannot fail.
        let _ = if ilp {
            writeln!(
                s,
                "trades,symbol={} price={},volume={}i {}",
                sym.value(i),
                price.value(i),
                vol.value(i),
                ts.value(i)
            )
        } else {
            writeln!(
                s,
                "{},{},{},{}",
                ts.value(i),
                sym.value(i),
                price.value(i),
                vol.value(i)
            )
        };
    }
    s
}

/// Write batches to a Parquet file (what DuckDB loads fastest).
pub(crate) fn parquet_file(path: &Path, batches: &[RecordBatch]) -> Result<(), Error> {
    let Some(first) = batches.first() else {
        return Err(Error::Usage("no rows to write".into()));
    };
    let f = std::fs::File::create(path)
        .map_err(|e| Error::Io(format!("create {}", path.display()), e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(f, first.schema(), None)?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(())
}
