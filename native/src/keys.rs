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

    fn len(&self) -> usize {
        match self {
            Part::Signed(values) => values.len(),
            Part::Unsigned(values) => values.len(),
            Part::Text(values) => values.len(),
        }
    }
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
    let count = parts.first().map_or(0, Part::len);
    if parts.iter().any(|part| part.len() != count) {
        return Err(PyValueError::new_err("key parts have different lengths"));
    }
    // The part that runs to the end of the key without a length: a string ending a key of
    // several parts. A key of one part keeps its length, so that "" still encodes to bytes.
    let open_ended = (parts.len() > 1).then(|| parts.len() - 1);
    let mut texts: Vec<Vec<&str>> = Vec::with_capacity(parts.len());
    for part in &parts {
        texts.push(match part {
            Part::Text(values) => values.iter().map(|v| v.to_str()).collect::<PyResult<_>>()?,
            _ => Vec::new(),
        });
    }
    let mut key = Vec::with_capacity(64);
    let mut keys = Vec::with_capacity(count);
    for row in 0..count {
        key.clear();
        for (position, part) in parts.iter().enumerate() {
            match part {
                Part::Signed(values) => {
                    key.extend_from_slice(&((values[row] as u64) ^ SIGN).to_be_bytes())
                }
                Part::Unsigned(values) => key.extend_from_slice(&values[row].to_be_bytes()),
                Part::Text(_) => {
                    let raw = texts[position][row].as_bytes();
                    if open_ended != Some(position) {
                        let length = u32::try_from(raw.len()).map_err(|_| {
                            PyValueError::new_err("a key string is longer than 4 GiB")
                        })?;
                        key.extend_from_slice(&length.to_be_bytes());
                    }
                    key.extend_from_slice(raw);
                }
            }
        }
        keys.push(PyBytes::new(py, &key));
    }
    PyList::new(py, keys)
}
