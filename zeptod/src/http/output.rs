//! Output formats. An [`Encoder`] turns a result, batch by batch, into the bytes of one
//! format; the HTTP layer sends each piece as it is made, so a large result is never held
//! as one string. Text formats write cell by cell into a reused buffer.

use std::fmt::Write as _;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};

/// Rows per piece sent to the client.
pub(crate) const PIECE_ROWS: usize = 8192;

/// The output formats of `FORMAT name` / `?default_format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputFormat {
    Json,
    JsonEachRow,
    Csv,
    CsvWithNames,
    Tsv,
    TsvWithNames,
    Arrow,
    Parquet,
}

impl OutputFormat {
    /// Parse a format name (case-insensitive, with ClickHouse's aliases).
    pub(crate) fn parse(name: &str) -> Result<OutputFormat> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "json" => OutputFormat::Json,
            "jsoneachrow" | "ndjson" | "jsonlines" => OutputFormat::JsonEachRow,
            "csv" => OutputFormat::Csv,
            "csvwithnames" => OutputFormat::CsvWithNames,
            "tabseparated" | "tsv" => OutputFormat::Tsv,
            "tabseparatedwithnames" | "tsvwithnames" => OutputFormat::TsvWithNames,
            "arrow" | "arrowstream" => OutputFormat::Arrow,
            "parquet" => OutputFormat::Parquet,
            _ => {
                return Err(Error::BadRequest(format!(
                    "unknown output format '{name}' (use JSON, JSONEachRow, CSV, CSVWithNames, \
                     TabSeparated, TabSeparatedWithNames, Arrow or Parquet)"
                )))
            }
        })
    }

    /// The `Content-Type` of the format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::JsonEachRow => "application/x-ndjson",
            OutputFormat::Csv | OutputFormat::CsvWithNames => "text/csv; charset=utf-8",
            OutputFormat::Tsv | OutputFormat::TsvWithNames => {
                "text/tab-separated-values; charset=utf-8"
            }
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
            OutputFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// The SQL type name of an Arrow type, for the JSON `columns` header.
pub(crate) fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Dictionary(_, v) if v.as_ref() == &DataType::Utf8 => "SYMBOL".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        other => other.to_string(),
    }
}

enum State {
    Text,
    Arrow(Box<StreamWriter<Vec<u8>>>),
    Parquet(Box<ArrowWriter<Vec<u8>>>),
}

/// Encodes one result in one format.
pub(crate) struct Encoder {
    format: OutputFormat,
    schema: SchemaRef,
    state: State,
    rows: u64,
    /// Reused cell buffer for text formats.
    cell: String,
    /// JSON-escaped column names, for JSONEachRow.
    json_names: Vec<String>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .finish()
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {e}"))
}

impl Encoder {
    /// Start encoding a result with `schema`; returns the encoder and the first bytes.
    pub(crate) fn start(format: OutputFormat, schema: SchemaRef) -> Result<(Encoder, Bytes)> {
        let mut head = Vec::new();
        let state = match format {
            OutputFormat::Arrow => {
                let mut w = StreamWriter::try_new(Vec::new(), &schema)
                    .map_err(|e| internal("start Arrow stream", e))?;
                head = std::mem::take(w.get_mut());
                State::Arrow(Box::new(w))
            }
            OutputFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_max_row_group_row_count(Some(128 * 1024))
                    .build();
                let w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                    .map_err(|e| internal("start Parquet file", e))?;
                State::Parquet(Box::new(w))
            }
            _ => State::Text,
        };
        let json_names = schema
            .fields()
            .iter()
            .map(|f| serde_json::to_string(f.name()).unwrap_or_else(|_| "\"?\"".into()))
            .collect();
        let enc = Encoder {
            format,
            schema,
            state,
            rows: 0,
            cell: String::new(),
            json_names,
        };
        match format {
            OutputFormat::Json => {
                let cols: Vec<serde_json::Value> = enc
                    .schema
                    .fields()
                    .iter()
                    .map(
                        |f| serde_json::json!({"name": f.name(), "type": type_name(f.data_type())}),
                    )
                    .collect();
                head.extend_from_slice(b"{\"columns\":");
                head.extend_from_slice(
                    serde_json::to_string(&cols)
                        .map_err(|e| internal("encode columns", e))?
                        .as_bytes(),
                );
                head.extend_from_slice(b",\"data\":[");
            }
            OutputFormat::CsvWithNames | OutputFormat::TsvWithNames => {
                let names: Vec<String> = enc
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        head.push(if format == OutputFormat::CsvWithNames {
                            b','
                        } else {
                            b'\t'
                        });
                    }
                    if format == OutputFormat::CsvWithNames {
                        push_csv(&mut head, n);
                    } else {
                        push_tsv(&mut head, n);
                    }
                }
                head.push(b'\n');
            }
            _ => {}
        }
        Ok((enc, Bytes::from(head)))
    }

    /// Encode one batch (callers slice large batches into pieces of [`PIECE_ROWS`]).
    pub(crate) fn batch(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        let mut out = Vec::with_capacity(batch.num_rows() * 32);
        // Binary formats declare the schema up front; a batch whose column types differ
        // (a SYMBOL column that came back as plain strings) is cast to it.
        let conformed;
        let batch = if matches!(self.state, State::Text) || batch.schema() == self.schema {
            batch
        } else {
            conformed = conform(batch, &self.schema)?;
            &conformed
        };
        match &mut self.state {
            State::Arrow(w) => {
                w.write(batch)
                    .map_err(|e| internal("write Arrow batch", e))?;
                out = std::mem::take(w.get_mut());
            }
            State::Parquet(w) => {
                w.write(batch)
                    .map_err(|e| internal("write Parquet batch", e))?;
                out = std::mem::take(w.inner_mut());
            }
            State::Text => self.text_batch(batch, &mut out)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(Bytes::from(out))
    }

    /// Finish the output; `elapsed_us` and `rows_read` go into the JSON statistics.
    pub(crate) fn finish(self, elapsed_us: u64, rows_read: u64) -> Result<Bytes> {
        match self.state {
            State::Arrow(mut w) => {
                w.finish().map_err(|e| internal("finish Arrow stream", e))?;
                Ok(Bytes::from(std::mem::take(w.get_mut())))
            }
            State::Parquet(w) => Ok(Bytes::from(
                w.into_inner()
                    .map_err(|e| internal("finish Parquet file", e))?,
            )),
            State::Text if self.format == OutputFormat::Json => Ok(Bytes::from(format!(
                "],\"rows\":{},\"statistics\":{{\"elapsed_us\":{elapsed_us},\"rows_read\":{rows_read}}}}}\n",
                self.rows
            ))),
            State::Text => Ok(Bytes::new()),
        }
    }

    fn text_batch(&mut self, batch: &RecordBatch, out: &mut Vec<u8>) -> Result<()> {
        let opts = FormatOptions::default().with_null("");
        let cols: Vec<ArrayRef> = batch.columns().to_vec();
        let fmts = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| internal("format column", e))?;
        let cell = &mut self.cell;
        for row in 0..batch.num_rows() {
            match self.format {
                OutputFormat::Json => {
                    if self.rows > 0 || row > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    for (i, col) in cols.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        json_cell(out, cell, col, &fmts[i], row)?;
                    }
                    out.push(b']');
                }
                OutputFormat::JsonEachRow => {
                    out.push(b'{');
                    for (i, col) in cols.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(self.json_names[i].as_bytes());
                        out.push(b':');
                        json_cell(out, cell, col, &fmts[i], row)?;
                    }
                    out.extend_from_slice(b"}\n");
                }
                OutputFormat::Csv | OutputFormat::CsvWithNames => {
                    for (i, col) in cols.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        if col.is_valid(row) {
                            cell.clear();
                            write!(cell, "{}", fmts[i].value(row))
                                .map_err(|e| internal("format cell", e))?;
                            push_csv(out, cell);
                        }
                    }
                    out.push(b'\n');
                }
                OutputFormat::Tsv | OutputFormat::TsvWithNames => {
                    for (i, col) in cols.iter().enumerate() {
                        if i > 0 {
                            out.push(b'\t');
                        }
                        if col.is_valid(row) {
                            cell.clear();
                            write!(cell, "{}", fmts[i].value(row))
                                .map_err(|e| internal("format cell", e))?;
                            push_tsv(out, cell);
                        } else {
                            out.extend_from_slice(b"\\N");
                        }
                    }
                    out.push(b'\n');
                }
                OutputFormat::Arrow | OutputFormat::Parquet => {}
            }
        }
        Ok(())
    }
}

fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
                    .map_err(|e| internal(&format!("cast column '{}'", f.name()), e))
            }
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| internal("conform batch", e))
}

/// One JSON value: numbers and booleans bare (64-bit integers as JSON numbers), NaN and
/// infinities as `null`, everything else as a string in the Arrow display form.
fn json_cell(
    out: &mut Vec<u8>,
    cell: &mut String,
    col: &ArrayRef,
    fmt: &ArrayFormatter<'_>,
    row: usize,
) -> Result<()> {
    if col.is_null(row) {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    cell.clear();
    let bare = match col.data_type() {
        DataType::Float64 => {
            let v = col.as_primitive::<Float64Type>().value(row);
            if !v.is_finite() {
                out.extend_from_slice(b"null");
                return Ok(());
            }
            true
        }
        DataType::Float32 => {
            let v = col.as_primitive::<Float32Type>().value(row);
            if !v.is_finite() {
                out.extend_from_slice(b"null");
                return Ok(());
            }
            true
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Boolean => true,
        _ => false,
    };
    write!(cell, "{}", fmt.value(row)).map_err(|e| internal("format cell", e))?;
    if bare {
        out.extend_from_slice(cell.as_bytes());
    } else {
        push_json_str(out, cell);
    }
    Ok(())
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                let _ = write!(VecWriter(out), "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn push_csv(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for &b in s.as_bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn push_tsv(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.push(b),
        }
    }
}

/// Encode a whole in-memory result (used by tests and small answers).
#[cfg(test)]
pub(crate) fn encode_all(format: OutputFormat, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let schema = batches[0].schema();
    let (mut enc, head) = Encoder::start(format, schema)?;
    let mut out = head.to_vec();
    for b in batches {
        out.extend_from_slice(&enc.batch(b)?);
    }
    out.extend_from_slice(&enc.finish(5, 7)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, DictionaryArray, Float64Array, Int64Array, StringArray,
        TimestampNanosecondArray,
    };
    use arrow::datatypes::TimeUnit;
    use arrow::datatypes::{Field, Int32Type};
    use std::sync::Arc;

    fn sample() -> RecordBatch {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new(
                "symbol",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("price", DataType::Float64, true),
            Field::new("volume", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("ok", DataType::Boolean, true),
        ]));
        let sym: DictionaryArray<Int32Type> = vec!["AAPL", "MS\"FT"].into_iter().collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampNanosecondArray::from(vec![0, 1_500_000_000])),
                Arc::new(sym),
                Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN)])),
                Arc::new(Int64Array::from(vec![Some(9_007_199_254_740_993), None])),
                Arc::new(StringArray::from(vec![Some("a,b\tc"), None])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
            ],
        )
        .unwrap()
    }

    fn text(f: OutputFormat) -> String {
        String::from_utf8(encode_all(f, &[sample()]).unwrap()).unwrap()
    }

    #[test]
    fn json_is_valid_and_keeps_big_integers() {
        let s = text(OutputFormat::Json);
        assert!(s.contains("9007199254740993"), "{s}");
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["rows"], 2);
        assert_eq!(v["columns"][1]["type"], "SYMBOL");
        assert_eq!(v["data"][0][0], "1970-01-01T00:00:00");
        assert_eq!(v["data"][1][1], "MS\"FT");
        assert_eq!(v["data"][1][2], serde_json::Value::Null);
        assert_eq!(v["statistics"]["rows_read"], 7);
    }

    #[test]
    fn json_each_row_and_csv_and_tsv() {
        let s = text(OutputFormat::JsonEachRow);
        let lines: Vec<serde_json::Value> = s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["note"], "a,b\tc");
        assert_eq!(
            text(OutputFormat::CsvWithNames),
            "ts,symbol,price,volume,note,ok\n\
             1970-01-01T00:00:00,AAPL,1.5,9007199254740993,\"a,b\tc\",true\n\
             1970-01-01T00:00:01.500,\"MS\"\"FT\",NaN,,,false\n"
        );
        assert_eq!(
            text(OutputFormat::Tsv),
            "1970-01-01T00:00:00\tAAPL\t1.5\t9007199254740993\ta,b\\tc\ttrue\n\
             1970-01-01T00:00:01.500\tMS\"FT\tNaN\t\\N\t\\N\tfalse\n"
        );
    }

    #[test]
    fn arrow_and_parquet_round_trip() {
        let bytes = encode_all(OutputFormat::Arrow, &[sample(), sample()]).unwrap();
        let r =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let n: usize = r.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(n, 4);
        let bytes = encode_all(OutputFormat::Parquet, &[sample()]).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            Bytes::from(bytes),
        )
        .unwrap()
        .build()
        .unwrap();
        let n: usize = r.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(n, 2);
    }

    #[test]
    fn arrow_batches_are_cast_to_the_declared_schema() {
        let b = sample();
        let declared = b.schema();
        // The same rows with the SYMBOL column as plain strings.
        let plain = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let mut cols = b.columns().to_vec();
        cols[1] = plain;
        let mut fields: Vec<Field> = declared
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[1] = Field::new("symbol", DataType::Utf8, false);
        let other =
            RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap();
        let (mut enc, head) = Encoder::start(OutputFormat::Arrow, declared).unwrap();
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&enc.batch(&other).unwrap());
        bytes.extend_from_slice(&enc.finish(0, 0).unwrap());
        let r =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let got: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
        assert_eq!(got[0].column(1).data_type(), b.column(1).data_type());
        assert_eq!(got[0].num_rows(), 2);
    }

    #[test]
    fn unknown_format() {
        assert!(OutputFormat::parse("XML").is_err());
        assert_eq!(
            OutputFormat::parse("tabseparated").unwrap(),
            OutputFormat::Tsv
        );
    }
}
