//! Group ids: group keys -> dense ids, per batch.
//!
//! HOT PATH: runs over every input row of an aggregate, DISTINCT, and window partitioning.
//! A single SYMBOL key is grouped through its dictionary (the few dictionary values are
//! hashed once per batch, rows only index an array); a single BIGINT/TIMESTAMP key hashes
//! the i64 directly; anything else is encoded with `arrow-row` and hashed as bytes.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampNanosecondType};
use arrow::row::{RowConverter, SortField};

use crate::error::{type_err, Error, Result};

fn i64s(a: &ArrayRef) -> Result<(&[i64], Option<&arrow::buffer::NullBuffer>)> {
    match a.data_type() {
        DataType::Int64 => {
            let p = a.as_primitive::<Int64Type>();
            Ok((p.values(), p.nulls()))
        }
        DataType::Timestamp(_, _) => {
            let p = a.as_primitive::<TimestampNanosecondType>();
            Ok((p.values(), p.nulls()))
        }
        t => Err(type_err(format!("expected BIGINT or TIMESTAMP, found {t}"))),
    }
}

/// Single BIGINT / TIMESTAMP key (time buckets): hashed as i64, no row encoding.
#[derive(Debug)]
struct IntKeys {
    map: HashMap<i64, u32>,
    vals: Vec<Option<i64>>,
    null_id: Option<u32>,
}

/// Maps group keys to dense ids.
#[derive(Debug)]
pub(crate) struct Groups {
    ints: Option<IntKeys>,
    conv: Option<RowConverter>,
    map: HashMap<Box<[u8]>, u32>,
    keys: Vec<Box<[u8]>>,
    types: Vec<DataType>,
    /// Reused per batch.
    pub(crate) ids: Vec<u32>,
}

/// Key columns are grouped as Utf8 when they arrive dictionary-encoded (dictionaries are
/// local to each batch, so their keys mean nothing across batches).
pub(crate) fn key_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        t => t.clone(),
    }
}

impl Groups {
    pub(crate) fn new(types: Vec<DataType>) -> Result<Groups> {
        let types: Vec<DataType> = types.iter().map(key_type).collect();
        let conv = if types.is_empty() {
            None
        } else {
            Some(RowConverter::new(
                types.iter().map(|t| SortField::new(t.clone())).collect(),
            )?)
        };
        let ints = matches!(
            types.as_slice(),
            [DataType::Int64 | DataType::Timestamp(_, _)]
        )
        .then(|| IntKeys {
            map: HashMap::new(),
            vals: vec![],
            null_id: None,
        });
        Ok(Groups {
            ints,
            conv,
            map: HashMap::new(),
            keys: vec![],
            types,
            ids: vec![],
        })
    }

    pub(crate) fn len(&self) -> usize {
        if self.types.is_empty() {
            1
        } else if let Some(k) = &self.ints {
            k.vals.len()
        } else {
            self.keys.len()
        }
    }

    pub(crate) fn mem(&self) -> usize {
        let ints = self.ints.as_ref().map_or(0, |k| k.vals.len() * 40);
        ints + self.keys.iter().map(|k| k.len() * 2 + 48).sum::<usize>() + self.ids.capacity() * 4
    }

    fn intern(map: &mut HashMap<Box<[u8]>, u32>, keys: &mut Vec<Box<[u8]>>, k: &[u8]) -> u32 {
        if let Some(id) = map.get(k) {
            return *id;
        }
        let id = keys.len() as u32;
        keys.push(k.into());
        map.insert(k.into(), id);
        id
    }

    /// Assign a group id to every row of the key columns (into `self.ids`).
    pub(crate) fn assign(&mut self, cols: &[ArrayRef]) -> Result<()> {
        self.ids.clear();
        if let (Some(k), [col]) = (self.ints.as_mut(), cols) {
            let (vals, nulls) = i64s(col)?;
            let valid = |i: usize| nulls.is_none_or(|n| n.is_valid(i));
            self.ids.reserve(vals.len());
            for (i, v) in vals.iter().enumerate() {
                let id = if valid(i) {
                    let next = k.vals.len() as u32;
                    let id = *k.map.entry(*v).or_insert(next);
                    if id == next {
                        k.vals.push(Some(*v));
                    }
                    id
                } else {
                    match k.null_id {
                        Some(id) => id,
                        None => {
                            let id = k.vals.len() as u32;
                            k.vals.push(None);
                            k.null_id = Some(id);
                            id
                        }
                    }
                };
                self.ids.push(id);
            }
            return Ok(());
        }
        let conv = match &self.conv {
            Some(c) => c,
            None => return Ok(()),
        };
        // One dictionary-encoded key: intern the dictionary values, then map keys.
        if let [only] = cols {
            if let Some(d) = only
                .as_any_dictionary_opt()
                .filter(|d| d.keys().null_count() == 0)
            {
                let values = cast(d.values(), &self.types[0])?;
                let vrows = conv.convert_columns(&[values])?;
                // Dictionary values are interned lazily, on first use by a row: a sliced or
                // filtered batch keeps its whole dictionary, and ids must follow row order.
                let mut vids: Vec<u32> = vec![u32::MAX; vrows.num_rows()];
                let wide;
                let keys: &[i32] = match d.keys().as_primitive_opt::<Int32Type>() {
                    Some(k) => k.values(),
                    None => {
                        wide = cast(d.keys(), &DataType::Int32)?;
                        wide.as_primitive::<Int32Type>().values()
                    }
                };
                self.ids.reserve(keys.len());
                for k in keys {
                    let k = *k as usize;
                    let slot = vids
                        .get_mut(k)
                        .ok_or_else(|| Error::Internal("dictionary key out of range".into()))?;
                    if *slot == u32::MAX {
                        *slot = Self::intern(&mut self.map, &mut self.keys, vrows.row(k).as_ref());
                    }
                    self.ids.push(*slot);
                }
                return Ok(());
            }
        }
        let cols: Vec<ArrayRef> = cols
            .iter()
            .zip(self.types.iter())
            .map(|(c, t)| {
                if c.data_type() == t {
                    Ok(c.clone())
                } else {
                    cast(c, t)
                }
            })
            .collect::<Result<_, _>>()?;
        let rows = conv.convert_columns(&cols)?;
        self.ids.reserve(rows.num_rows());
        for i in 0..rows.num_rows() {
            let id = Self::intern(&mut self.map, &mut self.keys, rows.row(i).as_ref());
            self.ids.push(id);
        }
        Ok(())
    }

    /// The key columns, one row per group, in id order.
    pub(crate) fn key_columns(&self) -> Result<Vec<ArrayRef>> {
        if let (Some(k), Some(t)) = (&self.ints, self.types.first()) {
            let a: ArrayRef = Arc::new(k.vals.iter().copied().collect::<Int64Array>());
            return Ok(vec![if t == &DataType::Int64 {
                a
            } else {
                cast(&a, t)?
            }]);
        }
        match &self.conv {
            None => Ok(vec![]),
            Some(c) => {
                let parser = c.parser();
                let rows = self.keys.iter().map(|k| parser.parse(k));
                Ok(c.convert_rows(rows)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::DictionaryArray;

    #[test]
    fn dictionary_groups_are_stable_across_batches() {
        let mut g = Groups::new(vec![DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Utf8),
        )])
        .unwrap();
        // Different dictionaries, and a dictionary entry no row uses.
        let a: DictionaryArray<Int32Type> = vec!["x", "y", "x"].into_iter().collect();
        g.assign(&[Arc::new(a) as ArrayRef]).unwrap();
        assert_eq!(g.ids, vec![0, 1, 0]);
        let b: DictionaryArray<Int32Type> = vec!["z", "y", "z"].into_iter().collect();
        let b = b.slice(1, 2); // keeps "z" in the dictionary but only uses "y", "z"
        g.assign(&[Arc::new(b) as ArrayRef]).unwrap();
        assert_eq!(g.ids, vec![1, 2]);
        let keys = g.key_columns().unwrap();
        let k: Vec<Option<&str>> = keys[0].as_string::<i32>().iter().collect();
        assert_eq!(k, vec![Some("x"), Some("y"), Some("z")]);
    }

    #[test]
    fn int_keys_with_null() {
        let mut g = Groups::new(vec![DataType::Int64]).unwrap();
        g.assign(&[Arc::new(Int64Array::from(vec![Some(5), None, Some(5), Some(7)])) as ArrayRef])
            .unwrap();
        assert_eq!(g.ids, vec![0, 1, 0, 2]);
        let k = g.key_columns().unwrap();
        let v: Vec<Option<i64>> = k[0].as_primitive::<Int64Type>().iter().collect();
        assert_eq!(v, vec![Some(5), None, Some(7)]);
    }
}
