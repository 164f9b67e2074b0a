//! Column-batch helpers shared by the write path, compaction, flush and checkpoints:
//! concatenation that merges symbol dictionaries, sorting by timestamp, dictionary
//! compaction, and timestamp statistics.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, StringArray, StringBuilder,
};
use arrow::buffer::ScalarBuffer;
use arrow::compute::{concat, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Int32Type, TimestampNanosecondType};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::error::{Error, Result};

/// The timestamps of column `ts_col` as a slice.
pub(crate) fn timestamps(batch: &RecordBatch, ts_col: usize) -> &[i64] {
    batch
        .column(ts_col)
        .as_primitive::<TimestampNanosecondType>()
        .values()
}

/// `(min, max, sorted)` of a timestamp slice; `None` when empty.
pub(crate) fn ts_stats(ts: &[i64]) -> Option<(i64, i64, bool)> {
    let first = *ts.first()?;
    let (mut min, mut max, mut sorted, mut prev) = (first, first, true, first);
    for &t in &ts[1..] {
        sorted &= t >= prev;
        prev = t;
        min = min.min(t);
        max = max.max(t);
    }
    Some((min, max, sorted))
}

/// Re-encode a dictionary array so that its dictionary holds only the values its keys use,
/// each once, in order of first use.
pub(crate) fn compact_dictionary(d: &DictionaryArray<Int32Type>) -> Result<ArrayRef> {
    merge_dictionaries(&[d])
}

/// Concatenate dictionary arrays into one with a merged, de-duplicated dictionary.
fn merge_dictionaries(parts: &[&DictionaryArray<Int32Type>]) -> Result<ArrayRef> {
    let total: usize = parts.iter().map(|d| d.len()).sum();
    let mut index: HashMap<&str, i32> = HashMap::new();
    let mut values = StringBuilder::new();
    let mut keys: Vec<i32> = Vec::with_capacity(total);
    let mut nulls = arrow::array::BooleanBufferBuilder::new(total);
    let mut any_null = false;
    for d in parts {
        let dict = d.values().as_string::<i32>();
        // Map this part's dictionary to merged ids lazily, only for keys that are used.
        let mut remap: Vec<i32> = vec![-1; dict.len()];
        for (i, k) in d.keys().values().iter().enumerate() {
            if d.is_null(i) {
                any_null = true;
                nulls.append(false);
                keys.push(0);
                continue;
            }
            nulls.append(true);
            let k = usize::try_from(*k)
                .ok()
                .filter(|&k| k < dict.len())
                .ok_or_else(|| Error::Internal(format!("dictionary key {k} out of range")))?;
            if remap[k] < 0 {
                let v = dict.value(k);
                let next = index.len() as i32;
                let id = *index.entry(v).or_insert_with(|| {
                    values.append_value(v);
                    next
                });
                remap[k] = id;
            }
            keys.push(remap[k]);
        }
    }
    let null_buffer = any_null.then(|| arrow::buffer::NullBuffer::new(nulls.finish()));
    let keys = Int32Array::new(ScalarBuffer::from(keys), null_buffer);
    let values: StringArray = values.finish();
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
        keys,
        Arc::new(values),
    )?))
}

/// Concatenate batches of one schema into one batch (dictionaries merged).
pub(crate) fn concat_batches(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let Some(first) = batches.first() else {
        return Err(Error::Internal("concat of zero batches".into()));
    };
    if batches.len() == 1 {
        return Ok(first.clone());
    }
    let schema = first.schema();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
        let col = match field.data_type() {
            DataType::Dictionary(_, _) => {
                let dicts: Vec<&DictionaryArray<Int32Type>> = batches
                    .iter()
                    .map(|b| b.column(i).as_dictionary::<Int32Type>())
                    .collect();
                merge_dictionaries(&dicts)?
            }
            _ => concat(&arrays)?,
        };
        columns.push(col);
    }
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// Sort a batch by its timestamp column (stable), unless it already is.
pub(crate) fn sort_by_ts(batch: RecordBatch, ts_col: usize) -> Result<RecordBatch> {
    let sorted = ts_stats(timestamps(&batch, ts_col)).is_none_or(|(_, _, s)| s);
    if sorted {
        return Ok(batch);
    }
    let idx = sort_to_indices(batch.column(ts_col), None, None)?;
    Ok(take_record_batch(&batch, &idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampNanosecondArray;
    use arrow::datatypes::{Field, Schema};

    fn dict(keys: Vec<Option<i32>>, values: Vec<&str>) -> DictionaryArray<Int32Type> {
        DictionaryArray::try_new(Int32Array::from(keys), Arc::new(StringArray::from(values)))
            .unwrap()
    }

    #[test]
    fn merged_dictionaries_are_deduplicated_and_keep_values() {
        let a = dict(vec![Some(1), Some(1), None], vec!["X", "B"]);
        let b = dict(vec![Some(0), Some(2)], vec!["B", "Y", "C"]);
        let m = merge_dictionaries(&[&a, &b]).unwrap();
        let m = m.as_dictionary::<Int32Type>();
        assert_eq!(m.values().len(), 2, "only used values, once each");
        let strs: Vec<Option<String>> = (0..m.len())
            .map(|i| {
                m.is_valid(i).then(|| {
                    let k = m.keys().value(i) as usize;
                    m.values().as_string::<i32>().value(k).to_string()
                })
            })
            .collect();
        assert_eq!(
            strs,
            vec![
                Some("B".into()),
                Some("B".into()),
                None,
                Some("B".into()),
                Some("C".into())
            ]
        );
    }

    #[test]
    fn sort_by_ts_orders_rows() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
            false,
        )]));
        let b = RecordBatch::try_new(
            schema,
            vec![Arc::new(TimestampNanosecondArray::from(vec![3, 1, 2, 1]))],
        )
        .unwrap();
        let s = sort_by_ts(b, 0).unwrap();
        assert_eq!(timestamps(&s, 0), &[1, 1, 2, 3]);
        assert_eq!(ts_stats(&[5, 1, 9]), Some((1, 9, false)));
        assert_eq!(ts_stats(&[]), None);
    }
}
