//! Aggregate functions: their argument and output types and the shape of their partial state.
//!
//! Every aggregate is computed as a partial state per partition (or per batch stream) and a
//! final merge, which is what lets a cluster scatter one query over partitions:
//!
//! | aggregate          | partial state columns          | merge                         |
//! |--------------------|--------------------------------|-------------------------------|
//! | count(*), count(x) | count BIGINT                   | sum of counts                 |
//! | count(DISTINCT x)  | `LIST<BINARY>`: distinct keys  | union of sets                 |
//! | sum(x)             | sum                            | sum of sums                   |
//! | avg(x)             | sum DOUBLE, count BIGINT       | sums / counts                 |
//! | min(x), max(x)     | min / max                      | min / max                     |
//! | first(x), last(x)  | value, timestamp               | value at min / max timestamp  |
//! | vwap(p, v)         | sum(p*v) DOUBLE, sum(v) DOUBLE | sum / sum                     |
//! | stddev, variance   | n, mean, M2 (Welford)          | Chan et al. parallel merge    |
//! | median, percentile | `LIST<DOUBLE>`: sorted values  | exact: merge the runs         |
//!
//! `stddev`/`variance` are the sample versions (n - 1), as `stddev_samp`. `median` and
//! `percentile(x, q)` interpolate linearly between the two closest ranks (like
//! `quantile_cont`). `first`/`last` order by the designated timestamp of the table (or the
//! timestamp given as a second argument) and return the value at the earliest / latest
//! timestamp even when that value is NULL; ties go to the row scanned first (first) or last
//! (last), so across partitions a tie may resolve differently than in one pass.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field};

use crate::expr::{ts_type, Expr};

/// Aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AggFunc {
    CountStar,
    Count,
    CountDistinct,
    Sum,
    Avg,
    Min,
    Max,
    /// `first(x)`: args = [x, ts].
    First,
    /// `last(x)`: args = [x, ts].
    Last,
    /// `vwap(price, volume)`.
    Vwap,
    Stddev,
    Variance,
    /// `percentile(x, q)`; median is `Percentile(0.5)`.
    Percentile(f64),
}

/// Which half of the aggregate a node computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggMode {
    /// Input rows -> final values, in one node.
    Single,
    /// Input rows -> partial states.
    Partial,
    /// Partial states -> final values.
    Final,
}

/// One aggregate call, bound.
#[derive(Debug, Clone)]
pub(crate) struct AggExpr {
    pub(crate) func: AggFunc,
    /// Arguments, already cast to the types the accumulator expects (see `input_type`).
    pub(crate) args: Vec<Expr>,
    /// Type of the first argument after the binder's casts.
    pub(crate) input_type: DataType,
    /// Display name (`sum(price)`).
    pub(crate) name: String,
}

impl AggExpr {
    /// The type of the final value.
    pub(crate) fn output_type(&self) -> DataType {
        match self.func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::CountDistinct => DataType::Int64,
            AggFunc::Sum => match self.input_type {
                DataType::Float64 => DataType::Float64,
                _ => DataType::Int64,
            },
            AggFunc::Min | AggFunc::Max | AggFunc::First | AggFunc::Last => self.input_type.clone(),
            AggFunc::Avg
            | AggFunc::Vwap
            | AggFunc::Stddev
            | AggFunc::Variance
            | AggFunc::Percentile(_) => DataType::Float64,
        }
    }

    /// The columns of the partial state, named after the aggregate.
    pub(crate) fn state_fields(&self) -> Vec<Field> {
        let n = |i: usize| format!("{}#{i}", self.name);
        let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
        match self.func {
            AggFunc::CountStar | AggFunc::Count => vec![Field::new(n(0), DataType::Int64, false)],
            AggFunc::CountDistinct => vec![Field::new(n(0), list(DataType::Binary), true)],
            AggFunc::Sum | AggFunc::Min | AggFunc::Max => {
                vec![Field::new(n(0), self.output_type(), true)]
            }
            AggFunc::Avg => vec![
                Field::new(n(0), DataType::Float64, true),
                Field::new(n(1), DataType::Int64, false),
            ],
            AggFunc::First | AggFunc::Last => vec![
                Field::new(n(0), self.input_type.clone(), true),
                Field::new(n(1), ts_type(), true),
            ],
            AggFunc::Vwap => vec![
                Field::new(n(0), DataType::Float64, true),
                Field::new(n(1), DataType::Float64, true),
            ],
            AggFunc::Stddev | AggFunc::Variance => vec![
                Field::new(n(0), DataType::Int64, false),
                Field::new(n(1), DataType::Float64, true),
                Field::new(n(2), DataType::Float64, true),
            ],
            AggFunc::Percentile(_) => vec![Field::new(n(0), list(DataType::Float64), true)],
        }
    }
}
