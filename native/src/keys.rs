//! Entity keys to bytes, the format documented in `inferstack/core/keys.py`:
//! each part in order; integers as 8 bytes big-endian (signed ones offset by 2**63 so byte
//! order is numeric order); strings as a 4-byte big-endian length then UTF-8, except a string
//! that ends a key of several parts, which runs to the end of the key without a length.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

const SIGN: u64 = 1 << 63;

/// One key column, already checked against its key type by the Python side.
enum Part<'py> {
    Signed(Vec<i64>),
    Unsigned(Vec<u64>),
    Text(Vec<Bound<'py, PyString>>),
}

impl<'py> Part<'py> {
    fn from_python(index: usize, value: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(list) = value.cast::<PyList>() {
            let mut texts = Vec::with_capacity(list.len());
            for item in list.iter() {
                let text = item.cast_into::<PyString>().map_err(|_| {
                    PyTypeError::new_err(format!("key part {index}: expected a list of str"))
                })?;
                texts.push(text);
            }
            return Ok(Part::Text(texts));
        }
        if let Ok(buffer) = PyBuffer::<i64>::get(value) {
            return Ok(Part::Signed(buffer.to_vec(value.py())?));
        }
        if let Ok(buffer) = PyBuffer::<u64>::get(value) {
            return Ok(Part::Unsigned(buffer.to_vec(value.py())?));
        }
        Err(PyTypeError::new_err(format!(
            "key part {index}: expected a list of str or an int64/uint64 array"
        )))
    }
}

/// One key column's values, borrowed from the Python objects: the encoding itself, in
/// [`key_count`] and [`encode_key`], works on these alone.
pub enum Column<'a> {
    Signed(&'a [i64]),
    Unsigned(&'a [u64]),
    Text(Vec<&'a str>),
}

impl Column<'_> {
    fn len(&self) -> usize {
        match self {
            Column::Signed(values) => values.len(),
            Column::Unsigned(values) => values.len(),
            Column::Text(values) => values.len(),
        }
    }
}

/// Why keys could not be encoded.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    DifferentLengths,
    TooLong,
}

impl From<KeyError> for PyErr {
    fn from(error: KeyError) -> PyErr {
        PyValueError::new_err(match error {
            KeyError::DifferentLengths => "key parts have different lengths",
            KeyError::TooLong => "a key string is longer than 4 GiB",
        })
    }
}

/// The number of keys: every column must have that many values (no columns, no keys).
pub fn key_count(columns: &[Column<'_>]) -> Result<usize, KeyError> {
    let count = columns.first().map_or(0, Column::len);
    if columns.iter().any(|column| column.len() != count) {
        return Err(KeyError::DifferentLengths);
    }
    Ok(count)
}

/// Write row `row`'s key into `key` (cleared first); `row` must be below [`key_count`].
pub fn encode_key(columns: &[Column<'_>], row: usize, key: &mut Vec<u8>) -> Result<(), KeyError> {
    // The part that runs to the end of the key without a length: a string ending a key of
    // several parts. A key of one part keeps its length, so that "" still encodes to bytes.
    let open_ended = (columns.len() > 1).then(|| columns.len() - 1);
    key.clear();
    for (position, column) in columns.iter().enumerate() {
        match column {
            Column::Signed(values) => {
                key.extend_from_slice(&((values[row] as u64) ^ SIGN).to_be_bytes())
            }
            Column::Unsigned(values) => key.extend_from_slice(&values[row].to_be_bytes()),
            Column::Text(values) => {
                let raw = values[row].as_bytes();
                if open_ended != Some(position) {
                    let length = u32::try_from(raw.len()).map_err(|_| KeyError::TooLong)?;
                    key.extend_from_slice(&length.to_be_bytes());
                }
                key.extend_from_slice(raw);
            }
        }
    }
    Ok(())
}

/// Encode one key per row from its parts (each a list of str, or an int64 or uint64 array).
#[pyfunction]
pub fn encode_keys<'py>(
    py: Python<'py>,
    parts: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let parts = parts
        .iter()
        .enumerate()
        .map(|(index, part)| Part::from_python(index, part))
        .collect::<PyResult<Vec<_>>>()?;
    let columns = parts
        .iter()
        .map(|part| {
            Ok(match part {
                Part::Signed(values) => Column::Signed(values),
                Part::Unsigned(values) => Column::Unsigned(values),
                Part::Text(values) => {
                    Column::Text(values.iter().map(|v| v.to_str()).collect::<PyResult<_>>()?)
                }
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let count = key_count(&columns)?;
    let mut key = Vec::with_capacity(64);
    let mut keys = Vec::with_capacity(count);
    for row in 0..count {
        encode_key(&columns, row, &mut key)?;
        keys.push(PyBytes::new(py, &key));
    }
    PyList::new(py, keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(columns: &[Column<'_>]) -> Result<Vec<Vec<u8>>, KeyError> {
        let count = key_count(columns)?;
        let mut key = Vec::new();
        (0..count)
            .map(|row| {
                encode_key(columns, row, &mut key)?;
                Ok(key.clone())
            })
            .collect()
    }

    #[test]
    fn integers_are_eight_bytes_big_endian_signed_ones_offset_by_two_to_the_63() {
        let signed = [i64::MIN, -1, 0, 1, 0x0102_0304_0506_0708, i64::MAX];
        assert_eq!(
            keys(&[Column::Signed(&signed)]).unwrap(),
            vec![
                vec![0x00, 0, 0, 0, 0, 0, 0, 0],
                vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                vec![0x80, 0, 0, 0, 0, 0, 0, 0],
                vec![0x80, 0, 0, 0, 0, 0, 0, 1],
                vec![0x81, 2, 3, 4, 5, 6, 7, 8],
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ]
        );
        let unsigned = [0, 1, 0x0102_0304_0506_0708, u64::MAX];
        assert_eq!(
            keys(&[Column::Unsigned(&unsigned)]).unwrap(),
            vec![
                vec![0, 0, 0, 0, 0, 0, 0, 0],
                vec![0, 0, 0, 0, 0, 0, 0, 1],
                vec![1, 2, 3, 4, 5, 6, 7, 8],
                vec![0xff; 8],
            ]
        );
    }

    #[test]
    fn byte_order_is_numeric_order() {
        let signed = [-5, i64::MAX, 0, i64::MIN, 3, -1, 1 << 40, -(1 << 40)];
        let encoded = keys(&[Column::Signed(&signed)]).unwrap();
        let mut by_value: Vec<_> = signed.iter().zip(&encoded).collect();
        by_value.sort_by_key(|&(value, _)| *value);
        let mut by_bytes = by_value.clone();
        by_bytes.sort_by_key(|&(_, bytes)| bytes.clone());
        assert_eq!(by_value, by_bytes);

        let unsigned = [7, u64::MAX, 0, 1 << 63, 256, 255];
        let encoded = keys(&[Column::Unsigned(&unsigned)]).unwrap();
        let mut by_value: Vec<_> = unsigned.iter().zip(&encoded).collect();
        by_value.sort_by_key(|&(value, _)| *value);
        let mut by_bytes = by_value.clone();
        by_bytes.sort_by_key(|&(_, bytes)| bytes.clone());
        assert_eq!(by_value, by_bytes);
    }

    #[test]
    fn strings_have_a_big_endian_length_except_the_one_ending_a_key_of_several_parts() {
        // One part: the length stays, so that "" is still 4 bytes.
        assert_eq!(
            keys(&[Column::Text(vec!["", "ab", "é"])]).unwrap(),
            vec![
                vec![0, 0, 0, 0],
                vec![0, 0, 0, 2, b'a', b'b'],
                vec![0, 0, 0, 2, 0xc3, 0xa9],
            ]
        );
        // Several parts: a string inside has its length, the last runs to the end.
        let ids = [1u64, 2];
        assert_eq!(
            keys(&[
                Column::Text(vec!["x", ""]),
                Column::Unsigned(&ids),
                Column::Text(vec!["tail", ""]),
            ])
            .unwrap(),
            vec![
                [&[0, 0, 0, 1, b'x'][..], &[0, 0, 0, 0, 0, 0, 0, 1], b"tail"].concat(),
                [&[0, 0, 0, 0][..], &[0, 0, 0, 0, 0, 0, 0, 2]].concat(),
            ]
        );
        // An integer ending the key changes nothing for the strings before it.
        let signed = [0i64];
        assert_eq!(
            keys(&[Column::Text(vec!["ab"]), Column::Signed(&signed)]).unwrap(),
            vec![vec![0, 0, 0, 2, b'a', b'b', 0x80, 0, 0, 0, 0, 0, 0, 0]]
        );
    }

    #[test]
    fn parts_must_have_one_length() {
        let ids = [1u64, 2];
        assert_eq!(
            keys(&[Column::Unsigned(&ids), Column::Text(vec!["a"])]),
            Err(KeyError::DifferentLengths)
        );
        assert_eq!(keys(&[]), Ok(vec![]));
        assert_eq!(keys(&[Column::Signed(&[])]), Ok(vec![]));
    }

    #[test]
    fn the_buffer_is_cleared_for_each_key() {
        let ids = [1u64, 2];
        let columns = [Column::Unsigned(&ids)];
        let mut key = vec![9; 20];
        encode_key(&columns, 1, &mut key).unwrap();
        assert_eq!(key, vec![0, 0, 0, 0, 0, 0, 0, 2]);
    }
}
