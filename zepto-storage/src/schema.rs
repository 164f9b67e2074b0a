//! Table schemas: the column types zeptodb stores and how each maps to Arrow.
//!
//! | SQL type    | Arrow type                         |
//! |-------------|------------------------------------|
//! | `TIMESTAMP` | `Timestamp(Nanosecond, None)` (i64 ns since the Unix epoch, UTC) |
//! | `SYMBOL`    | `Dictionary(Int32, Utf8)`          |
//! | `STRING`    | `Utf8`                             |
//! | `BIGINT`    | `Int64`                            |
//! | `INT`       | `Int32`                            |
//! | `DOUBLE`    | `Float64`                          |
//! | `BOOLEAN`   | `Boolean`                          |
//!
//! Every table has one designated timestamp column (chunks are time ranges of it) and one
//! partition-key column of type `SYMBOL` (rows are spread over partitions by its hash).
//! Both are `NOT NULL`; every other column is nullable.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The column types of zeptodb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColumnType {
    /// i64 nanoseconds since the Unix epoch.
    Timestamp,
    /// A dictionary-encoded string (tickers, sensor ids, hosts).
    Symbol,
    /// A plain UTF-8 string.
    String,
    /// i64.
    BigInt,
    /// i32.
    Int,
    /// f64.
    Double,
    /// bool.
    Boolean,
}

impl ColumnType {
    /// The Arrow type this column is stored as.
    pub fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, None),
            ColumnType::Symbol => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            ColumnType::String => DataType::Utf8,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Int => DataType::Int32,
            ColumnType::Double => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
        }
    }

    /// The zeptodb type of an Arrow type, if it is one we store.
    pub fn from_arrow(dt: &DataType) -> Option<ColumnType> {
        Some(match dt {
            DataType::Timestamp(TimeUnit::Nanosecond, None) => ColumnType::Timestamp,
            DataType::Dictionary(k, v)
                if k.as_ref() == &DataType::Int32 && v.as_ref() == &DataType::Utf8 =>
            {
                ColumnType::Symbol
            }
            DataType::Utf8 => ColumnType::String,
            DataType::Int64 => ColumnType::BigInt,
            DataType::Int32 => ColumnType::Int,
            DataType::Float64 => ColumnType::Double,
            DataType::Boolean => ColumnType::Boolean,
            _ => return None,
        })
    }

    /// Parse a SQL type name (case-insensitive, with the usual synonyms).
    pub fn parse(name: &str) -> Option<ColumnType> {
        Some(match name.to_ascii_uppercase().as_str() {
            "TIMESTAMP" => ColumnType::Timestamp,
            "SYMBOL" => ColumnType::Symbol,
            "STRING" | "VARCHAR" | "TEXT" => ColumnType::String,
            "BIGINT" | "LONG" | "INT8" | "INT64" => ColumnType::BigInt,
            "INT" | "INTEGER" | "INT4" | "INT32" => ColumnType::Int,
            "DOUBLE" | "FLOAT8" | "FLOAT64" | "REAL" | "FLOAT" => ColumnType::Double,
            "BOOLEAN" | "BOOL" => ColumnType::Boolean,
            _ => return None,
        })
    }

    /// The SQL name of this type.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Symbol => "SYMBOL",
            ColumnType::String => "STRING",
            ColumnType::BigInt => "BIGINT",
            ColumnType::Int => "INT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Boolean => "BOOLEAN",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

impl ColumnDef {
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        ColumnDef {
            name: name.into(),
            ty,
        }
    }
}

/// The schema of a table: its columns and which of them are the designated timestamp and
/// the partition key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Index of the designated `TIMESTAMP` column.
    pub timestamp: usize,
    /// Index of the `SYMBOL` partition-key column.
    pub partition_key: usize,
}

impl TableSchema {
    /// Build and validate a schema. `timestamp` and `partition_key` name columns; when `None`
    /// the first `TIMESTAMP` column, and the column named `symbol` (else the first `SYMBOL`
    /// column), are used.
    pub fn new(
        name: impl Into<String>,
        columns: Vec<ColumnDef>,
        timestamp: Option<&str>,
        partition_key: Option<&str>,
    ) -> Result<TableSchema> {
        let name = name.into();
        validate_identifier("table", &name)?;
        if columns.is_empty() {
            return Err(Error::InvalidInput(format!(
                "table '{name}' needs at least one column"
            )));
        }
        for (i, c) in columns.iter().enumerate() {
            validate_identifier("column", &c.name)?;
            if columns[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                return Err(Error::InvalidInput(format!(
                    "column '{}' appears twice in table '{name}'",
                    c.name
                )));
            }
        }
        let find = |col: &str| {
            columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(col))
                .ok_or_else(|| Error::ColumnNotFound {
                    table: name.clone(),
                    column: col.to_string(),
                })
        };
        let timestamp = match timestamp {
            Some(c) => find(c)?,
            None => columns
                .iter()
                .position(|c| c.ty == ColumnType::Timestamp)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "table '{name}' needs a TIMESTAMP column to be its designated timestamp"
                    ))
                })?,
        };
        let partition_key = match partition_key {
            Some(c) => find(c)?,
            None => columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case("symbol") && c.ty == ColumnType::Symbol)
                .or_else(|| columns.iter().position(|c| c.ty == ColumnType::Symbol))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "table '{name}' needs a SYMBOL column to be its partition key"
                    ))
                })?,
        };
        if columns[timestamp].ty != ColumnType::Timestamp {
            return Err(Error::InvalidInput(format!(
                "designated timestamp column '{}' must be TIMESTAMP, not {}",
                columns[timestamp].name, columns[timestamp].ty
            )));
        }
        if columns[partition_key].ty != ColumnType::Symbol {
            return Err(Error::InvalidInput(format!(
                "partition key column '{}' must be SYMBOL, not {}",
                columns[partition_key].name, columns[partition_key].ty
            )));
        }
        Ok(TableSchema {
            name,
            columns,
            timestamp,
            partition_key,
        })
    }

    /// The Arrow schema of the table (timestamp and key columns are not nullable).
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let nullable = i != self.timestamp && i != self.partition_key;
                Field::new(&c.name, c.ty.arrow_type(), nullable)
            })
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Index of a column by name (case-insensitive).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The designated timestamp column's name.
    pub fn timestamp_name(&self) -> &str {
        &self.columns[self.timestamp].name
    }

    /// The partition key column's name.
    pub fn partition_key_name(&self) -> &str {
        &self.columns[self.partition_key].name
    }
}

fn validate_identifier(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid {what} name '{name}': use 1-128 ASCII letters, digits or '_', not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trades() -> Vec<ColumnDef> {
        vec![
            ColumnDef::new("ts", ColumnType::Timestamp),
            ColumnDef::new("symbol", ColumnType::Symbol),
            ColumnDef::new("price", ColumnType::Double),
            ColumnDef::new("volume", ColumnType::BigInt),
        ]
    }

    #[test]
    fn defaults_pick_timestamp_and_symbol() {
        let s = TableSchema::new("trades", trades(), None, None).unwrap();
        assert_eq!(s.timestamp, 0);
        assert_eq!(s.partition_key, 1);
        let a = s.arrow_schema();
        assert!(!a.field(0).is_nullable());
        assert!(a.field(2).is_nullable());
        for c in &s.columns {
            assert_eq!(ColumnType::from_arrow(&c.ty.arrow_type()), Some(c.ty));
        }
    }

    #[test]
    fn rejects_bad_schemas() {
        assert!(TableSchema::new("t", trades(), Some("price"), None).is_err());
        assert!(TableSchema::new("t", trades(), None, Some("volume")).is_err());
        assert!(TableSchema::new("bad name", trades(), None, None).is_err());
        let mut dup = trades();
        dup.push(ColumnDef::new("PRICE", ColumnType::Double));
        assert!(TableSchema::new("t", dup, None, None).is_err());
        let no_ts = vec![ColumnDef::new("symbol", ColumnType::Symbol)];
        assert!(TableSchema::new("t", no_ts, None, None).is_err());
    }
}
