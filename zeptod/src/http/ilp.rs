//! InfluxDB line protocol (`POST /write`, `POST /api/v2/write`):
//! `measurement[,tag=v...] field=v[,field=v...] [timestamp]`, one point per line.
//!
//! The whole body is parsed into per-measurement Arrow builders before anything is written
//! (a bad line inserts nothing and the error names it). Tags become `SYMBOL` columns, fields
//! `DOUBLE` (`1.5`, `1`), `BIGINT` (`1i`, `1u`), `BOOLEAN` (`t`, `false`...) or `STRING`
//! (`"text"`), the timestamp the table's designated `TIMESTAMP` column (`ts` for new tables).
//!
//! Hot path for line-protocol ingest: builders are appended in place, names are looked up
//! without allocating, and unescaping only allocates when a value has escapes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder,
    StringBuilder, TimestampNanosecondArray,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The kind of an ILP column, which decides its type in a new table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tag,
    Double,
    BigInt,
    Boolean,
    String,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tag => "tag",
            Kind::Double => "DOUBLE",
            Kind::BigInt => "BIGINT",
            Kind::Boolean => "BOOLEAN",
            Kind::String => "STRING",
        }
    }
}

#[derive(Debug)]
enum Builder {
    Str(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
}

impl Builder {
    fn len(&self) -> usize {
        match self {
            Builder::Str(b) => b.len(),
            Builder::F64(b) => b.len(),
            Builder::I64(b) => b.len(),
            Builder::Bool(b) => b.len(),
        }
    }
    fn append_null(&mut self) {
        match self {
            Builder::Str(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
        }
    }
    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// One column of a measurement, in the order it first appeared.
#[derive(Debug)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    builder: Builder,
}

/// All points of one measurement in a request.
#[derive(Debug)]
pub(crate) struct Measurement {
    pub(crate) name: String,
    pub(crate) rows: usize,
    ts: Vec<i64>,
    pub(crate) columns: Vec<Column>,
    by_name: HashMap<Box<[u8]>, usize>,
}

impl Measurement {
    fn new(name: String) -> Self {
        Measurement {
            name,
            rows: 0,
            ts: Vec::new(),
            columns: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    /// The tag that becomes the partition key of a new table: the first one seen.
    pub(crate) fn first_tag(&self) -> Option<&str> {
        self.columns
            .iter()
            .find(|c| c.kind == Kind::Tag)
            .map(|c| c.name.as_str())
    }

    fn column(&mut self, name: &[u8], kind: Kind, line: usize) -> Result<&mut Builder> {
        let idx = match self.by_name.get(name) {
            Some(&i) => i,
            None => {
                let name_s = std::str::from_utf8(name)
                    .map_err(|_| bad(line, "column names must be UTF-8"))?
                    .to_string();
                let mut builder = match kind {
                    Kind::Tag | Kind::String => Builder::Str(StringBuilder::new()),
                    Kind::Double => Builder::F64(Float64Builder::new()),
                    Kind::BigInt => Builder::I64(Int64Builder::new()),
                    Kind::Boolean => Builder::Bool(BooleanBuilder::new()),
                };
                for _ in 0..self.rows {
                    builder.append_null();
                }
                self.columns.push(Column {
                    name: name_s,
                    kind,
                    builder,
                });
                self.by_name.insert(name.into(), self.columns.len() - 1);
                self.columns.len() - 1
            }
        };
        let col = &mut self.columns[idx];
        if col.kind != kind {
            return Err(bad(
                line,
                &format!(
                    "'{}' is a {} here but a {} in an earlier line",
                    col.name,
                    kind.name(),
                    col.kind.name()
                ),
            ));
        }
        if col.builder.len() > self.rows {
            return Err(bad(line, &format!("'{}' appears twice", col.name)));
        }
        Ok(&mut col.builder)
    }

    fn end_row(&mut self, ts: i64) {
        self.rows += 1;
        self.ts.push(ts);
        for c in &mut self.columns {
            if c.builder.len() < self.rows {
                c.builder.append_null();
            }
        }
    }

    /// Build the batch to write into a table with Arrow schema `table` whose designated
    /// timestamp column is `ts_index`.
    pub(crate) fn take_batch(&mut self, table: &SchemaRef, ts_index: usize) -> Result<RecordBatch> {
        let table_name = self.name.clone();
        let mut arrays: Vec<Option<ArrayRef>> = vec![None; table.fields().len()];
        arrays[ts_index] = Some(Arc::new(TimestampNanosecondArray::from(std::mem::take(
            &mut self.ts,
        ))));
        for c in &mut self.columns {
            let i = table
                .fields()
                .iter()
                .position(|f| f.name() == &c.name)
                .or_else(|| {
                    table
                        .fields()
                        .iter()
                        .position(|f| f.name().eq_ignore_ascii_case(&c.name))
                })
                .ok_or_else(|| {
                    Error::BadRequest(format!(
                        "table '{table_name}' has no column '{}' (zeptod does not add columns \
                         to existing tables)",
                        c.name
                    ))
                })?;
            if i == ts_index {
                return Err(Error::BadRequest(format!(
                    "'{}' is the timestamp column of table '{table_name}'; it cannot be a tag or field",
                    c.name
                )));
            }
            let a = c.builder.finish();
            let target = table.field(i).data_type();
            let fits = matches!(
                (c.kind, target),
                (
                    Kind::Tag | Kind::String,
                    DataType::Utf8 | DataType::Dictionary(_, _)
                ) | (Kind::Double, DataType::Float64)
                    | (
                        Kind::BigInt,
                        DataType::Int64 | DataType::Int32 | DataType::Float64
                    )
                    | (Kind::Boolean, DataType::Boolean)
            );
            if !fits {
                return Err(Error::BadRequest(format!(
                    "'{}' is a {} in the line protocol but column '{}' of table '{table_name}' is {}",
                    c.name,
                    c.kind.name(),
                    table.field(i).name(),
                    crate::http::output::type_name(target)
                )));
            }
            let a = if matches!(target, DataType::Int32 | DataType::Float64)
                && c.kind == Kind::BigInt
            {
                let opts = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                cast_with_options(&a, target, &opts).map_err(|e| {
                    Error::BadRequest(format!("column '{}': {e}", table.field(i).name()))
                })?
            } else {
                a
            };
            arrays[i] = Some(a);
        }
        let mut fields = Vec::new();
        let mut out = Vec::new();
        for (i, a) in arrays.into_iter().enumerate() {
            let f = table.field(i);
            let a = match a {
                Some(a) => a,
                None if f.is_nullable() => {
                    let dt = match f.data_type() {
                        DataType::Dictionary(_, v) => v.as_ref().clone(),
                        dt => dt.clone(),
                    };
                    new_null_array(&dt, self.rows)
                }
                None => {
                    return Err(Error::BadRequest(format!(
                        "table '{table_name}' needs '{}' in every line",
                        f.name()
                    )))
                }
            };
            if !f.is_nullable() && a.null_count() > 0 {
                let row = (0..a.len()).find(|&r| a.is_null(r)).unwrap_or(0);
                return Err(Error::BadRequest(format!(
                    "point {} of '{table_name}' has no '{}' (it is required)",
                    row + 1,
                    f.name()
                )));
            }
            fields.push(Field::new(f.name(), a.data_type().clone(), f.is_nullable()));
            out.push(a);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), out)
            .map_err(|e| Error::BadRequest(format!("build batch for '{table_name}': {e}")))
    }
}

fn bad(line: usize, msg: &str) -> Error {
    Error::BadRequest(format!("line protocol, line {line}: {msg}"))
}

/// Timestamp precision of `?precision=`.
pub(crate) fn precision_factor(p: Option<&str>) -> Result<i64> {
    Ok(match p.unwrap_or("ns") {
        "ns" | "n" => 1,
        "us" | "u" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        other => {
            return Err(Error::BadRequest(format!(
                "precision '{other}' is not one of ns, us, ms, s"
            )))
        }
    })
}

/// Parse a whole body. `now_ns` is used for points without a timestamp.
pub(crate) fn parse(body: &[u8], factor: i64, now_ns: i64) -> Result<Vec<Measurement>> {
    let mut out: Vec<Measurement> = Vec::new();
    let mut last: usize = usize::MAX;
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.trim_ascii();
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let mut cur = Cursor {
            s: line,
            pos: 0,
            line: line_no,
        };
        let name = cur.token(b", ")?;
        if name.is_empty() {
            return Err(bad(line_no, "missing measurement name"));
        }
        let m = if last < out.len() && out[last].name.as_bytes() == name.as_ref() {
            last
        } else {
            match out.iter().position(|m| m.name.as_bytes() == name.as_ref()) {
                Some(p) => p,
                None => {
                    let n = String::from_utf8(name.into_owned())
                        .map_err(|_| bad(line_no, "measurement name must be UTF-8"))?;
                    out.push(Measurement::new(n));
                    out.len() - 1
                }
            }
        };
        last = m;
        let meas = &mut out[m];
        // Tags.
        while cur.peek() == Some(b',') {
            cur.pos += 1;
            let key = cur.token(b"=, ")?;
            if cur.peek() != Some(b'=') || key.is_empty() {
                return Err(bad(line_no, "a tag needs key=value"));
            }
            cur.pos += 1;
            let val = cur.token(b", ")?;
            let val =
                std::str::from_utf8(&val).map_err(|_| bad(line_no, "tag values must be UTF-8"))?;
            match meas.column(&key, Kind::Tag, line_no)? {
                Builder::Str(b) => b.append_value(val),
                _ => return Err(bad(line_no, "tag column is not a string")),
            }
        }
        if cur.peek() != Some(b' ') {
            return Err(bad(line_no, "expected a space and then fields"));
        }
        cur.skip_spaces();
        // Fields.
        let mut nfields = 0;
        loop {
            let key = cur.token(b"=, ")?;
            if cur.peek() != Some(b'=') || key.is_empty() {
                return Err(bad(line_no, "a field needs key=value"));
            }
            cur.pos += 1;
            cur.field_value(meas, &key)?;
            nfields += 1;
            if cur.peek() == Some(b',') {
                cur.pos += 1;
            } else {
                break;
            }
        }
        if nfields == 0 {
            return Err(bad(line_no, "a point needs at least one field"));
        }
        cur.skip_spaces();
        let ts = if cur.pos < line.len() {
            let t = &line[cur.pos..];
            let n: i64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    bad(
                        line_no,
                        &format!("bad timestamp '{}'", String::from_utf8_lossy(t)),
                    )
                })?;
            n.checked_mul(factor)
                .ok_or_else(|| bad(line_no, "timestamp out of range"))?
        } else {
            now_ns
        };
        meas.end_row(ts);
    }
    Ok(out)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// Read up to (not including) an unescaped byte in `stops`; unescape `\x` to `x`.
    fn token(&mut self, stops: &[u8]) -> Result<Cow<'a, [u8]>> {
        let start = self.pos;
        let mut escaped = false;
        while let Some(c) = self.peek() {
            if c == b'\\' && self.pos + 1 < self.s.len() {
                escaped = true;
                self.pos += 2;
                continue;
            }
            if stops.contains(&c) {
                break;
            }
            self.pos += 1;
        }
        let raw = &self.s[start..self.pos];
        if !escaped {
            return Ok(Cow::Borrowed(raw));
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\'
                && i + 1 < raw.len()
                && matches!(raw[i + 1], b',' | b'=' | b' ' | b'\\' | b'"')
            {
                out.push(raw[i + 1]);
                i += 2;
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        Ok(Cow::Owned(out))
    }

    fn field_value(&mut self, meas: &mut Measurement, key: &[u8]) -> Result<()> {
        let line = self.line;
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let start = self.pos;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Err(bad(line, "unterminated string field")),
                    Some(b'\\') => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(b'"') => break,
                    Some(_) => self.pos += 1,
                }
            }
            let raw = &self.s[start..self.pos.min(self.s.len())];
            self.pos += 1;
            let val: Cow<'_, [u8]> = if escaped {
                let mut out = Vec::with_capacity(raw.len());
                let mut i = 0;
                while i < raw.len() {
                    if raw[i] == b'\\' && i + 1 < raw.len() && matches!(raw[i + 1], b'"' | b'\\') {
                        out.push(raw[i + 1]);
                        i += 2;
                    } else {
                        out.push(raw[i]);
                        i += 1;
                    }
                }
                Cow::Owned(out)
            } else {
                Cow::Borrowed(raw)
            };
            let val =
                std::str::from_utf8(&val).map_err(|_| bad(line, "string fields must be UTF-8"))?;
            if let Builder::Str(b) = meas.column(key, Kind::String, line)? {
                b.append_value(val);
            }
            return Ok(());
        }
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == b',' || c == b' ' {
                break;
            }
            self.pos += 1;
        }
        let raw = &self.s[start..self.pos];
        let text = std::str::from_utf8(raw).map_err(|_| bad(line, "bad field value"))?;
        let key_s = String::from_utf8_lossy(key);
        let bad_value = || bad(line, &format!("field '{key_s}': bad value '{text}'"));
        match text {
            "t" | "T" | "true" | "True" | "TRUE" | "f" | "F" | "false" | "False" | "FALSE" => {
                let v = text.starts_with(['t', 'T']);
                if let Builder::Bool(b) = meas.column(key, Kind::Boolean, line)? {
                    b.append_value(v);
                }
            }
            _ if text.ends_with('i') => {
                let v: i64 = text[..text.len() - 1].parse().map_err(|_| bad_value())?;
                if let Builder::I64(b) = meas.column(key, Kind::BigInt, line)? {
                    b.append_value(v);
                }
            }
            _ if text.ends_with('u') => {
                let v: u64 = text[..text.len() - 1].parse().map_err(|_| bad_value())?;
                let v = i64::try_from(v)
                    .map_err(|_| bad(line, &format!("field '{key_s}': {v} does not fit BIGINT")))?;
                if let Builder::I64(b) = meas.column(key, Kind::BigInt, line)? {
                    b.append_value(v);
                }
            }
            _ => {
                let v: f64 = text.parse().map_err(|_| bad_value())?;
                if text.is_empty() || text.eq_ignore_ascii_case("nan") || text.contains("inf") {
                    return Err(bad_value());
                }
                if let Builder::F64(b) = meas.column(key, Kind::Double, line)? {
                    b.append_value(v);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type, TimeUnit, TimestampNanosecondType};

    fn schema_of(m: &Measurement) -> SchemaRef {
        let mut fields = vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )];
        for c in &m.columns {
            let dt = match c.kind {
                Kind::Tag => {
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
                }
                Kind::Double => DataType::Float64,
                Kind::BigInt => DataType::Int64,
                Kind::Boolean => DataType::Boolean,
                Kind::String => DataType::Utf8,
            };
            let key = Some(c.name.as_str()) == m.first_tag();
            fields.push(Field::new(&c.name, dt, !key));
        }
        Arc::new(Schema::new(fields))
    }

    #[test]
    fn parses_points() {
        let body = b"cpu,host=a,region=eu usage=1.5,count=3i,ok=t,msg=\"hi \\\"x\\\"\" 10\n\
                     # comment\n\
                     cpu,host=b usage=2 20\n\
                     mem,host=a free=7i\n";
        let mut ms = parse(body, 1000, 99).unwrap();
        assert_eq!(ms.len(), 2);
        let cpu = &mut ms[0];
        assert_eq!(cpu.rows, 2);
        assert_eq!(cpu.first_tag(), Some("host"));
        let schema = schema_of(cpu);
        let b = cpu.take_batch(&schema, 0).unwrap();
        let ts = b.column(0).as_primitive::<TimestampNanosecondType>();
        assert_eq!(ts.values(), &[10_000, 20_000]);
        assert_eq!(b.column(3).as_primitive::<Float64Type>().value(1), 2.0);
        assert_eq!(b.column(4).as_primitive::<Int64Type>().value(0), 3);
        assert!(b.column(2).is_null(1));
        assert_eq!(b.column(6).as_string::<i32>().value(0), "hi \"x\"");
        assert_eq!(ms[1].ts, vec![99]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(b"cpu,host=a u=1\ncpu,host=a u=1i\n", 1, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse(b"cpu,host=a u=1\ncpu,host=a\n", 1, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse(b"cpu u=abc\n", 1, 0).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("abc"), "{e}");
        let e = parse(b"cpu u=1 12x\n", 1, 0).unwrap_err().to_string();
        assert!(e.contains("timestamp"), "{e}");
        assert!(precision_factor(Some("h")).is_err());
        assert_eq!(precision_factor(Some("ms")).unwrap(), 1_000_000);
    }

    #[test]
    fn escapes() {
        let mut ms = parse(b"my\\ m,t\\,k=v\\ 1 f=1 5\n", 1, 0).unwrap();
        assert_eq!(ms[0].name, "my m");
        assert_eq!(ms[0].columns[0].name, "t,k");
        let schema = schema_of(&ms[0]);
        let b = ms[0].take_batch(&schema, 0).unwrap();
        assert_eq!(b.column(1).as_string::<i32>().value(0), "v 1");
    }
}
