//! Bulk-insert input formats (`INSERT INTO t FORMAT CSV|CSVWithNames|TabSeparated|JSONEachRow|Arrow`):
//! the whole body is decoded into one Arrow batch in the table's column order before anything
//! is written, so a body with one bad row inserts nothing. Errors name the row or line.
//!
//! Hot path for bulk ingest: CSV goes through `arrow-csv` (columnar builders), Arrow input is
//! cast column by column; no per-row allocation except in JSONEachRow.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int32Builder,
    Int64Builder, StringArray, StringBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder,
};
use arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::error::{Error, Result};

/// The formats a bulk insert accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputFormat {
    Csv,
    CsvWithNames,
    Tsv,
    TsvWithNames,
    JsonEachRow,
    Arrow,
}

impl InputFormat {
    /// Parse a format name (case-insensitive).
    pub(crate) fn parse(name: &str) -> Result<InputFormat> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "csv" => InputFormat::Csv,
            "csvwithnames" => InputFormat::CsvWithNames,
            "tabseparated" | "tsv" => InputFormat::Tsv,
            "tabseparatedwithnames" | "tsvwithnames" => InputFormat::TsvWithNames,
            "jsoneachrow" | "ndjson" | "jsonlines" => InputFormat::JsonEachRow,
            "arrow" | "arrowstream" => InputFormat::Arrow,
            _ => {
                return Err(Error::BadRequest(format!(
                    "unknown input format '{name}' (use CSV, CSVWithNames, TabSeparated, \
                     TabSeparatedWithNames, JSONEachRow or Arrow)"
                )))
            }
        })
    }

    /// The name used in metric labels.
    pub(crate) fn label(self) -> &'static str {
        match self {
            InputFormat::Csv | InputFormat::CsvWithNames => "csv",
            InputFormat::Tsv | InputFormat::TsvWithNames => "tsv",
            InputFormat::JsonEachRow => "jsoneachrow",
            InputFormat::Arrow => "arrow",
        }
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}

/// The type a column is decoded to before it is handed to storage: SYMBOL columns as plain
/// strings (storage dictionary-encodes them), everything else as stored.
fn decode_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

fn is_ts(dt: &DataType) -> bool {
    matches!(dt, DataType::Timestamp(_, _))
}

/// Decode `data` for a table with Arrow schema `table`. `columns` is the optional
/// `INSERT INTO t (c1, c2)` list.
pub(crate) fn decode(
    format: InputFormat,
    table_name: &str,
    table: &SchemaRef,
    columns: Option<&[String]>,
    data: &[u8],
) -> Result<RecordBatch> {
    let named = |names: &[String]| -> Result<Vec<usize>> {
        names
            .iter()
            .map(|n| {
                table
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(n))
                    .ok_or_else(|| bad(format!("table '{table_name}' has no column '{n}'")))
            })
            .collect()
    };
    let listed = match columns {
        Some(c) => Some(named(c)?),
        None => None,
    };
    let (cols, arrays): (Vec<usize>, Vec<ArrayRef>) = match format {
        InputFormat::Csv
        | InputFormat::CsvWithNames
        | InputFormat::Tsv
        | InputFormat::TsvWithNames => {
            let delim = if matches!(format, InputFormat::Csv | InputFormat::CsvWithNames) {
                b','
            } else {
                b'\t'
            };
            let with_names = matches!(
                format,
                InputFormat::CsvWithNames | InputFormat::TsvWithNames
            );
            let cols = if with_names {
                let header = first_line(data);
                let names = split_header(header, delim);
                if names.is_empty() {
                    return Err(bad("the first line must name the columns"));
                }
                named(&names)?
            } else {
                listed.unwrap_or_else(|| (0..table.fields().len()).collect())
            };
            let arrays = decode_delimited(table, &cols, data, delim, with_names)?;
            (cols, arrays)
        }
        InputFormat::JsonEachRow => decode_json_each_row(table_name, table, data)?,
        InputFormat::Arrow => decode_arrow(table_name, table, data)?,
    };
    assemble(table_name, table, &cols, arrays)
}

fn first_line(data: &[u8]) -> &[u8] {
    let end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = &data[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn split_header(line: &[u8], delim: u8) -> Vec<String> {
    String::from_utf8_lossy(line)
        .split(delim as char)
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn decode_delimited(
    table: &SchemaRef,
    cols: &[usize],
    data: &[u8],
    delim: u8,
    header: bool,
) -> Result<Vec<ArrayRef>> {
    // Timestamps are read as text and parsed here: arrow-csv only knows date strings, and
    // bulk loads usually carry integer nanoseconds.
    let fields: Vec<Field> = cols
        .iter()
        .map(|&i| {
            let f = table.field(i);
            let dt = if is_ts(f.data_type()) {
                DataType::Utf8
            } else {
                decode_type(f.data_type())
            };
            Field::new(f.name(), dt, true)
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut builder = arrow::csv::ReaderBuilder::new(schema)
        .with_header(header)
        .with_delimiter(delim)
        .with_batch_size(64 * 1024);
    if delim == b'\t' {
        // TabSeparated: no quoting, `\N` (or an empty field) is NULL, backslash escapes are
        // undone below.
        let null = regex::Regex::new(r"^(\\N)?$")
            .map_err(|e| Error::Internal(format!("TSV null pattern: {e}")))?;
        builder = builder.with_quote(0).with_null_regex(null);
    }
    let reader = builder
        .build(Cursor::new(data))
        .map_err(|e| bad(format!("read {}: {e}", fmt_name(delim))))?;
    let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); cols.len()];
    let mut row0 = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| {
            bad(format!(
                "{}: {}",
                fmt_name(delim),
                one_based_lines(&e.to_string(), usize::from(header))
            ))
        })?;
        for (j, &i) in cols.iter().enumerate() {
            let col = batch.column(j);
            let col = if delim == b'\t' {
                unescape_tsv(col)
            } else {
                col.clone()
            };
            let col = if is_ts(table.field(i).data_type()) {
                let first_line = row0 + 1 + usize::from(header);
                Arc::new(parse_ts_column(&col, first_line, table.field(i).name())?) as ArrayRef
            } else {
                col
            };
            parts[j].push(col);
        }
        row0 += batch.num_rows();
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(j, p)| concat(p, &decode_type(table.field(cols[j]).data_type())))
        .collect()
}

/// Undo TabSeparated escapes (`\t`, `\n`, `\r`, `\\`) in a text column; other columns and
/// text without backslashes are returned as they are.
fn unescape_tsv(col: &ArrayRef) -> ArrayRef {
    let Some(strings) = col.as_any().downcast_ref::<StringArray>() else {
        return col.clone();
    };
    if !strings.iter().flatten().any(|v| v.contains('\\')) {
        return col.clone();
    }
    let mut b = StringBuilder::with_capacity(strings.len(), strings.value_data().len());
    let mut buf = String::new();
    for v in strings.iter() {
        match v {
            None => b.append_null(),
            Some(v) if !v.contains('\\') => b.append_value(v),
            Some(v) => {
                buf.clear();
                let mut chars = v.chars();
                while let Some(c) = chars.next() {
                    if c != '\\' {
                        buf.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('t') => buf.push('\t'),
                        Some('n') => buf.push('\n'),
                        Some('r') => buf.push('\r'),
                        Some(other) => buf.push(other),
                        None => buf.push('\\'),
                    }
                }
                b.append_value(&buf);
            }
        }
    }
    Arc::new(b.finish())
}

/// arrow-csv counts data lines from 0; users count file lines from 1 (header included).
fn one_based_lines(msg: &str, header: usize) -> String {
    const AT: &str = "at line ";
    let Some(i) = msg.find(AT) else {
        return msg.to_string();
    };
    let start = i + AT.len();
    let digits = msg[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(msg.len(), |j| start + j);
    match msg[start..digits].parse::<usize>() {
        Ok(n) => format!("{}at line {}{}", &msg[..i], n + 1 + header, &msg[digits..]),
        Err(_) => msg.to_string(),
    }
}

fn fmt_name(delim: u8) -> &'static str {
    if delim == b',' {
        "CSV"
    } else {
        "TabSeparated"
    }
}

fn concat(parts: Vec<ArrayRef>, dt: &DataType) -> Result<ArrayRef> {
    match parts.len() {
        0 => Ok(arrow::array::new_empty_array(dt)),
        1 => Ok(parts
            .into_iter()
            .next()
            .unwrap_or_else(|| arrow::array::new_empty_array(dt))),
        _ => {
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&refs).map_err(|e| Error::Internal(format!("concat: {e}")))
        }
    }
}

/// Parse one timestamp: integer nanoseconds or an ISO-8601 / RFC 3339 string (UTC when no
/// offset is given).
pub(crate) fn parse_ts(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    string_to_timestamp_nanos(s).ok()
}

fn parse_ts_column(
    col: &ArrayRef,
    first_line: usize,
    name: &str,
) -> Result<TimestampNanosecondArray> {
    let strings = col
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| Error::Internal("timestamp column was not read as text".into()))?;
    let mut b = TimestampNanosecondBuilder::with_capacity(strings.len());
    for (i, v) in strings.iter().enumerate() {
        match v {
            None => b.append_null(),
            Some(s) => match parse_ts(s) {
                Some(n) => b.append_value(n),
                None => {
                    return Err(bad(format!(
                        "line {}: column '{name}': '{s}' is not a timestamp (use integer \
                         nanoseconds or ISO 8601 like 2024-01-02T03:04:05Z)",
                        first_line + i
                    )))
                }
            },
        }
    }
    Ok(b.finish())
}

enum ColBuilder {
    Ts(TimestampNanosecondBuilder),
    Str(StringBuilder),
    I64(Int64Builder),
    I32(Int32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
}

impl ColBuilder {
    fn new(dt: &DataType) -> Result<ColBuilder> {
        Ok(match decode_type(dt) {
            DataType::Timestamp(_, _) => ColBuilder::Ts(TimestampNanosecondBuilder::new()),
            DataType::Utf8 => ColBuilder::Str(StringBuilder::new()),
            DataType::Int64 => ColBuilder::I64(Int64Builder::new()),
            DataType::Int32 => ColBuilder::I32(Int32Builder::new()),
            DataType::Float64 => ColBuilder::F64(Float64Builder::new()),
            DataType::Boolean => ColBuilder::Bool(BooleanBuilder::new()),
            other => return Err(Error::Internal(format!("no JSON decoder for {other}"))),
        })
    }

    fn len(&self) -> usize {
        match self {
            ColBuilder::Ts(b) => b.len(),
            ColBuilder::Str(b) => b.len(),
            ColBuilder::I64(b) => b.len(),
            ColBuilder::I32(b) => b.len(),
            ColBuilder::F64(b) => b.len(),
            ColBuilder::Bool(b) => b.len(),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColBuilder::Ts(b) => b.append_null(),
            ColBuilder::Str(b) => b.append_null(),
            ColBuilder::I64(b) => b.append_null(),
            ColBuilder::I32(b) => b.append_null(),
            ColBuilder::F64(b) => b.append_null(),
            ColBuilder::Bool(b) => b.append_null(),
        }
    }

    /// Append a JSON value; `Err(())` when it does not fit the column type.
    fn append_json(&mut self, v: &serde_json::Value) -> std::result::Result<(), ()> {
        use serde_json::Value as V;
        if v.is_null() {
            self.append_null();
            return Ok(());
        }
        match (self, v) {
            (ColBuilder::Ts(b), V::Number(n)) => b.append_value(n.as_i64().ok_or(())?),
            (ColBuilder::Ts(b), V::String(s)) => b.append_value(parse_ts(s).ok_or(())?),
            (ColBuilder::Str(b), V::String(s)) => b.append_value(s),
            (ColBuilder::Str(b), V::Number(n)) => b.append_value(n.to_string()),
            (ColBuilder::I64(b), V::Number(n)) => b.append_value(n.as_i64().ok_or(())?),
            (ColBuilder::I64(b), V::String(s)) => b.append_value(s.parse().map_err(|_| ())?),
            (ColBuilder::I32(b), V::Number(n)) => {
                b.append_value(i32::try_from(n.as_i64().ok_or(())?).map_err(|_| ())?)
            }
            (ColBuilder::I32(b), V::String(s)) => b.append_value(s.parse().map_err(|_| ())?),
            (ColBuilder::F64(b), V::Number(n)) => b.append_value(n.as_f64().ok_or(())?),
            (ColBuilder::F64(b), V::String(s)) => b.append_value(s.parse().map_err(|_| ())?),
            (ColBuilder::Bool(b), V::Bool(x)) => b.append_value(*x),
            (ColBuilder::Bool(b), V::Number(n)) => match n.as_i64() {
                Some(0) => b.append_value(false),
                Some(1) => b.append_value(true),
                _ => return Err(()),
            },
            _ => return Err(()),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColBuilder::Ts(mut b) => Arc::new(b.finish()),
            ColBuilder::Str(mut b) => Arc::new(b.finish()),
            ColBuilder::I64(mut b) => Arc::new(b.finish()),
            ColBuilder::I32(mut b) => Arc::new(b.finish()),
            ColBuilder::F64(mut b) => Arc::new(b.finish()),
            ColBuilder::Bool(mut b) => Arc::new(b.finish()),
        }
    }
}

fn decode_json_each_row(
    table_name: &str,
    table: &SchemaRef,
    data: &[u8],
) -> Result<(Vec<usize>, Vec<ArrayRef>)> {
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (i, f) in table.fields().iter().enumerate() {
        by_name.insert(f.name().to_ascii_lowercase(), i);
    }
    let mut builders = table
        .fields()
        .iter()
        .map(|f| ColBuilder::new(f.data_type()))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = 0usize;
    for (lineno, line) in data.split(|&b| b == b'\n').enumerate() {
        let line_no = lineno + 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(trimmed)
            .map_err(|e| bad(format!("JSONEachRow line {line_no}: {e}")))?;
        for (k, v) in &obj {
            let i = match by_name.get(k.as_str()) {
                Some(&i) => i,
                None => *by_name.get(&k.to_ascii_lowercase()).ok_or_else(|| {
                    bad(format!(
                        "JSONEachRow line {line_no}: table '{table_name}' has no column '{k}'"
                    ))
                })?,
            };
            if builders[i].len() > rows {
                return Err(bad(format!(
                    "JSONEachRow line {line_no}: column '{k}' appears twice"
                )));
            }
            builders[i].append_json(v).map_err(|()| {
                bad(format!(
                    "JSONEachRow line {line_no}: column '{k}': {v} is not a valid {}",
                    crate::http::output::type_name(table.field(i).data_type())
                ))
            })?;
        }
        rows += 1;
        for b in &mut builders {
            if b.len() < rows {
                b.append_null();
            }
        }
    }
    let cols = (0..builders.len()).collect();
    Ok((cols, builders.into_iter().map(ColBuilder::finish).collect()))
}

fn decode_arrow(
    table_name: &str,
    table: &SchemaRef,
    data: &[u8],
) -> Result<(Vec<usize>, Vec<ArrayRef>)> {
    let reader = arrow::ipc::reader::StreamReader::try_new(Cursor::new(data), None)
        .map_err(|e| bad(format!("Arrow IPC stream: {e}")))?;
    let input = reader.schema();
    let mut cols = Vec::with_capacity(input.fields().len());
    for f in input.fields() {
        let i = table
            .fields()
            .iter()
            .position(|t| t.name().eq_ignore_ascii_case(f.name()))
            .ok_or_else(|| bad(format!("table '{table_name}' has no column '{}'", f.name())))?;
        cols.push(i);
    }
    let mut parts: Vec<Vec<ArrayRef>> = vec![Vec::new(); cols.len()];
    let mut row0 = 0usize;
    for (bi, batch) in reader.enumerate() {
        let batch = batch.map_err(|e| bad(format!("Arrow IPC stream, batch {bi}: {e}")))?;
        for (j, &i) in cols.iter().enumerate() {
            let target = table.field(i);
            let col = batch.column(j);
            let col = conform(col, target.data_type()).map_err(|e| {
                bad(format!(
                    "Arrow batch {bi} (rows from {row0}): column '{}' of type {} does not fit {}: {e}",
                    target.name(),
                    col.data_type(),
                    crate::http::output::type_name(target.data_type())
                ))
            })?;
            parts[j].push(col);
        }
        row0 += batch.num_rows();
    }
    let arrays = parts
        .into_iter()
        .enumerate()
        .map(|(j, p)| {
            let dt = p
                .first()
                .map(|a| a.data_type().clone())
                .unwrap_or_else(|| decode_type(table.field(cols[j]).data_type()));
            let p = p
                .into_iter()
                .map(|a| conform(&a, &dt).map_err(|e| bad(format!("Arrow: {e}"))))
                .collect::<Result<Vec<_>>>()?;
            concat(p, &dt)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((cols, arrays))
}

/// Bring an input array to a type storage takes for a column of type `target`: the table type
/// itself, or plain strings for SYMBOL, or a safe cast (overflow is an error, not a wrap).
fn conform(col: &ArrayRef, target: &DataType) -> std::result::Result<ArrayRef, String> {
    if col.data_type() == target {
        return Ok(col.clone());
    }
    if let DataType::Dictionary(_, v) = target {
        if col.data_type() == v.as_ref() {
            return Ok(col.clone());
        }
    }
    let to = match target {
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Nanosecond, None),
        other => other.clone(),
    };
    if is_ts(&to) && matches!(col.data_type(), DataType::Utf8) {
        return Err("send timestamps as Timestamp or Int64 nanoseconds".into());
    }
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(col, &to, &opts).map_err(|e| e.to_string())
}

/// Put decoded columns into table order, fill absent nullable columns with nulls, and
/// check NOT NULL columns (naming the first bad row).
fn assemble(
    table_name: &str,
    table: &SchemaRef,
    cols: &[usize],
    arrays: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let rows = arrays.first().map_or(0, |a| a.len());
    let mut slots: Vec<Option<ArrayRef>> = vec![None; table.fields().len()];
    for (&i, a) in cols.iter().zip(arrays) {
        if slots[i].is_some() {
            return Err(bad(format!(
                "column '{}' is given twice",
                table.field(i).name()
            )));
        }
        slots[i] = Some(a);
    }
    let mut fields = Vec::with_capacity(slots.len());
    let mut out = Vec::with_capacity(slots.len());
    for (i, slot) in slots.into_iter().enumerate() {
        let f = table.field(i);
        let a = match slot {
            Some(a) => a,
            None if f.is_nullable() => new_null_array(&decode_type(f.data_type()), rows),
            None => {
                return Err(bad(format!(
                    "column '{}' of table '{table_name}' is required",
                    f.name()
                )))
            }
        };
        if !f.is_nullable() && a.null_count() > 0 {
            let row = (0..a.len()).find(|&r| a.is_null(r)).unwrap_or(0);
            return Err(bad(format!(
                "row {}: column '{}' must not be empty",
                row + 1,
                f.name()
            )));
        }
        fields.push(Field::new(f.name(), a.data_type().clone(), f.is_nullable()));
        out.push(a);
    }
    RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        out,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| bad(format!("build batch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};

    fn table() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new(
                "symbol",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("price", DataType::Float64, true),
            Field::new("volume", DataType::Int64, true),
        ]))
    }

    #[test]
    fn csv_with_integer_and_iso_timestamps() {
        let b = decode(
            InputFormat::Csv,
            "trades",
            &table(),
            None,
            b"1000,AAPL,1.5,10\n2024-01-01T00:00:00Z,MSFT,2.5,\n",
        )
        .unwrap();
        assert_eq!(b.num_rows(), 2);
        let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!(ts.value(0), 1000);
        assert_eq!(ts.value(1), 1_704_067_200_000_000_000);
        assert!(b.column(3).is_null(1));
        assert_eq!(b.column(1).as_string::<i32>().value(1), "MSFT");
    }

    #[test]
    fn csv_with_names_reorders_and_fills() {
        let b = decode(
            InputFormat::CsvWithNames,
            "trades",
            &table(),
            None,
            b"symbol,ts,volume\nAAPL,5,7\n",
        )
        .unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.column(3).as_primitive::<Int64Type>().value(0), 7);
        assert!(b.column(2).is_null(0));
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = decode(
            InputFormat::Csv,
            "trades",
            &table(),
            None,
            b"1,A,1.0,1\n2,B,x,2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = decode(
            InputFormat::Csv,
            "trades",
            &table(),
            None,
            b"1,A,1.0,1\nnope,B,1,2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("nope"), "{e}");
        let e = decode(
            InputFormat::CsvWithNames,
            "trades",
            &table(),
            None,
            b"ts,symbol,bogus\n1,A,1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn tab_separated_round_trips_escapes_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("note", DataType::Utf8, true),
            Field::new("volume", DataType::Int64, true),
        ]));
        let b = decode(
            InputFormat::Tsv,
            "t",
            &schema,
            None,
            b"1\tA\ta\\tb\\\\c\t\\N\n2\tB\t\\N\t5\n",
        )
        .unwrap();
        let note = b.column(2).as_string::<i32>();
        assert_eq!(note.value(0), "a\tb\\c");
        assert!(note.is_null(1));
        assert!(b.column(3).is_null(0));
        assert_eq!(b.column(3).as_primitive::<Int64Type>().value(1), 5);
    }

    #[test]
    fn json_each_row() {
        let b = decode(
            InputFormat::JsonEachRow,
            "trades",
            &table(),
            None,
            br#"{"ts":1,"symbol":"A","price":1.5}
{"ts":"1970-01-01T00:00:00.000000002Z","symbol":"B","volume":3}
"#,
        )
        .unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(2).as_primitive::<Float64Type>().value(0), 1.5);
        assert_eq!(
            b.column(0)
                .as_primitive::<TimestampNanosecondType>()
                .value(1),
            2
        );
        let e = decode(
            InputFormat::JsonEachRow,
            "trades",
            &table(),
            None,
            b"{\"ts\":1,\"symbol\":\"A\"}\n{\"ts\":2,\"symbol\":\"A\",\"price\":\"abc\"}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("price"), "{e}");
        let e = decode(
            InputFormat::JsonEachRow,
            "trades",
            &table(),
            None,
            b"{\"ts\":1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 1") && e.contains("symbol"), "{e}");
    }

    #[test]
    fn arrow_input_is_cast() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("volume", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["A", "B"])),
                Arc::new(arrow::array::Int32Array::from(vec![Some(1), None])),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        let b = decode(InputFormat::Arrow, "trades", &table(), None, &buf).unwrap();
        assert_eq!(b.num_rows(), 4);
        assert_eq!(b.column(3).as_primitive::<Int64Type>().value(2), 1);
        assert!(decode(InputFormat::Arrow, "trades", &table(), None, b"garbage").is_err());
    }
}
