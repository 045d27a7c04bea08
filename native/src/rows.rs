//! Stored rows, a batch per call: decoding rows to one buffer of row prefixes plus gathered
//! string/bytes columns, and encoding rows from their prefixes and string/bytes values.
//!
//! The row format is documented in `inferstack/core/rowformat.py`:
//!
//! ```text
//! header   8 bytes  <u2 schema version, u1 flags, u1 format, <u4 expires_at (0 = never)
//! fixed    fixed-width features, packed little-endian
//! lengths  one <u4 per variable-length feature
//! data     the variable-length values, concatenated
//! ```
//!
//! Everything up to `data` (the prefix) has the same size for every row of one schema version.
//! A row that is missing, expired or not a whole row of the current version is replaced by the
//! row of defaults, and its status says why. Rows of another schema version are reported back
//! so that Python can upgrade them (rare: only after an apply changed the features).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList};

pub const FOUND: u8 = 0;
pub const MISSING: u8 = 1;
pub const EXPIRED: u8 = 2;
pub const CORRUPT: u8 = 3;

const HEADER_SIZE: usize = 8;
const FORMAT_VERSION: u8 = 1;

/// What the decoder needs to know about the current schema version's rows.
struct Layout {
    version: u16,
    prefix_size: usize,
    /// Where each variable-length feature's <u4 length sits inside the prefix.
    length_offsets: Vec<usize>,
}

impl Layout {
    fn length(&self, row: &[u8], variable: usize) -> usize {
        let at = self.length_offsets[variable];
        u32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]) as usize
    }

    /// The size a row must have given the lengths in its prefix (the prefix must be there).
    fn whole_size(&self, row: &[u8]) -> usize {
        (0..self.length_offsets.len()).fold(self.prefix_size, |size, v| size + self.length(row, v))
    }

    /// Where variable-length feature `variable` starts and how long it is.
    fn span(&self, row: &[u8], variable: usize) -> (usize, usize) {
        let start = (0..variable).fold(self.prefix_size, |at, v| at + self.length(row, v));
        (start, self.length(row, variable))
    }
}

enum Verdict {
    Whole,
    Corrupt,
    OtherVersion,
}

fn check(row: &[u8], layout: &Layout) -> Verdict {
    if row.len() < HEADER_SIZE || row[3] != FORMAT_VERSION {
        return Verdict::Corrupt;
    }
    if u16::from_le_bytes([row[0], row[1]]) != layout.version {
        return Verdict::OtherVersion;
    }
    // usize sums of at most a few u32 lengths cannot overflow on a 64-bit machine.
    if row.len() < layout.prefix_size || row.len() != layout.whole_size(row) {
        return Verdict::Corrupt;
    }
    Verdict::Whole
}

fn expires_at(row: &[u8]) -> u32 {
    u32::from_le_bytes([row[4], row[5], row[6], row[7]])
}

/// Decode a batch of rows (bytes, or None where the key has no row) of one feature group.
///
/// Returns `(status, prefixes, gathered, other_versions)`: one status byte per row
/// (FOUND, MISSING, EXPIRED, CORRUPT) as a bytearray; the prefixes of all rows joined, the
/// default row's standing in for every row that is not FOUND; for each index in `wanted`
/// (positions among the variable-length features) a pair of bytes, the <u4 lengths and the
/// concatenated values; and the indices of rows of another schema version (reported as
/// CORRUPT with defaults; the caller may upgrade them and decode again). `now` is in unix
/// seconds; a row expires when its nonzero `expires_at` is at or before it.
#[pyfunction]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn decode_rows<'py>(
    py: Python<'py>,
    rows: &Bound<'py, PyList>,
    default_row: &Bound<'py, PyBytes>,
    version: u16,
    prefix_size: usize,
    length_offsets: Vec<usize>,
    wanted: Vec<usize>,
    now: u32,
) -> PyResult<(
    Bound<'py, PyByteArray>,
    Bound<'py, PyBytes>,
    Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>,
    Vec<usize>,
)> {
    let layout = Layout {
        version,
        prefix_size,
        length_offsets,
    };
    let outside = |at: usize| at.checked_add(4).is_none_or(|end| end > prefix_size);
    if prefix_size < HEADER_SIZE || layout.length_offsets.iter().any(|&at| outside(at)) {
        return Err(PyValueError::new_err(
            "length offsets must lie inside the prefix",
        ));
    }
    if let Some(&bad) = wanted.iter().find(|&&v| v >= layout.length_offsets.len()) {
        return Err(PyValueError::new_err(format!(
            "no variable-length feature at position {bad}"
        )));
    }
    let default = default_row.as_bytes();
    if !matches!(check(default, &layout), Verdict::Whole) || expires_at(default) != 0 {
        return Err(PyValueError::new_err(
            "the default row is not a whole row that never expires",
        ));
    }

    // Hold a reference to every row so the slices below stay valid whatever happens to `rows`.
    let items = rows
        .iter()
        .map(|item| {
            if item.is_none() {
                Ok(None)
            } else {
                item.cast_into::<PyBytes>()
                    .map(Some)
                    .map_err(|_| PyTypeError::new_err("rows must be bytes or None"))
            }
        })
        .collect::<PyResult<Vec<_>>>()?;
    let count = items.len();
    let mut status = vec![FOUND; count];
    let mut other_versions = Vec::new();
    let mut sources: Vec<&[u8]> = Vec::with_capacity(count);
    for (index, item) in items.iter().enumerate() {
        let Some(bytes) = item else {
            status[index] = MISSING;
            sources.push(default);
            continue;
        };
        let row = bytes.as_bytes();
        let source = match check(row, &layout) {
            Verdict::Whole if expires_at(row).wrapping_sub(1) < now => {
                status[index] = EXPIRED; // 0 (never) wraps to u32::MAX, which nothing is below
                default
            }
            Verdict::Whole => row,
            Verdict::Corrupt => {
                status[index] = CORRUPT;
                default
            }
            Verdict::OtherVersion => {
                status[index] = CORRUPT;
                other_versions.push(index);
                default
            }
        };
        sources.push(source);
    }

    let prefixes = PyBytes::new_with(py, count * prefix_size, |out| {
        for (chunk, source) in out.chunks_exact_mut(prefix_size).zip(&sources) {
            chunk.copy_from_slice(&source[..prefix_size]);
        }
        Ok(())
    })?;
    let mut gathered = Vec::with_capacity(wanted.len());
    for &variable in &wanted {
        let spans: Vec<(usize, usize)> = sources
            .iter()
            .map(|row| layout.span(row, variable))
            .collect();
        let lengths = PyBytes::new_with(py, count * 4, |out| {
            for (chunk, &(_, length)) in out.chunks_exact_mut(4).zip(&spans) {
                chunk.copy_from_slice(&(length as u32).to_le_bytes());
            }
            Ok(())
        })?;
        let total = spans.iter().map(|&(_, length)| length).sum();
        let data = PyBytes::new_with(py, total, |out| {
            let mut at = 0;
            for (row, &(start, length)) in sources.iter().zip(&spans) {
                out[at..at + length].copy_from_slice(&row[start..start + length]);
                at += length;
            }
            Ok(())
        })?;
        gathered.push((lengths, data));
    }
    Ok((
        PyByteArray::new(py, &status),
        prefixes,
        gathered,
        other_versions,
    ))
}

/// Encode a batch of rows of one schema version, one `bytes` per row.
///
/// `prefixes` holds every row's prefix, `prefix_size` bytes each, already filled by the caller
/// (header and fixed-width features; numpy does that a feature at a time). `variable` holds, per
/// variable-length feature in layout order, its `<u4` lengths (4 bytes per row) and its values
/// concatenated. Each row is its prefix, with the lengths written at `length_offsets`, followed
/// by its values of every variable-length feature in order.
#[pyfunction]
pub fn encode_rows<'py>(
    py: Python<'py>,
    prefixes: &[u8],
    prefix_size: usize,
    length_offsets: Vec<usize>,
    variable: Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>,
) -> PyResult<Bound<'py, PyList>> {
    if prefix_size < HEADER_SIZE || !prefixes.len().is_multiple_of(prefix_size) {
        return Err(PyValueError::new_err(
            "prefixes must be whole prefixes of at least the header's size",
        ));
    }
    let outside = |at: usize| at.checked_add(4).is_none_or(|end| end > prefix_size);
    if length_offsets
        .iter()
        .any(|&at| at < HEADER_SIZE || outside(at))
    {
        return Err(PyValueError::new_err(
            "length offsets must lie inside the prefix, after the header",
        ));
    }
    if variable.len() != length_offsets.len() {
        return Err(PyValueError::new_err(format!(
            "{} length offsets for {} variable-length features",
            length_offsets.len(),
            variable.len()
        )));
    }
    let count = prefixes.len() / prefix_size;
    // Per feature: each row's length and where its value starts in the feature's data.
    let mut columns: Vec<(Vec<u32>, Vec<usize>, &[u8])> = Vec::with_capacity(variable.len());
    for (position, (lengths, data)) in variable.iter().enumerate() {
        let lengths = lengths.as_bytes();
        if lengths.len() != 4 * count {
            return Err(PyValueError::new_err(format!(
                "variable-length feature {position}: {} bytes of lengths for {count} rows",
                lengths.len()
            )));
        }
        let lengths: Vec<u32> = lengths
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut starts = Vec::with_capacity(count);
        let mut at = 0usize;
        for &length in &lengths {
            starts.push(at);
            at += length as usize; // a sum of u32s: no overflow on a 64-bit machine
        }
        let data = data.as_bytes();
        if at != data.len() {
            return Err(PyValueError::new_err(format!(
                "variable-length feature {position}: the lengths add up to {at} bytes, the \
                 values are {}",
                data.len()
            )));
        }
        columns.push((lengths, starts, data));
    }
    let mut rows = Vec::with_capacity(count);
    for (row, prefix) in prefixes.chunks_exact(prefix_size).enumerate() {
        let size = columns.iter().fold(prefix_size, |size, (lengths, _, _)| {
            size + lengths[row] as usize
        });
        let encoded = PyBytes::new_with(py, size, |out| {
            out[..prefix_size].copy_from_slice(prefix);
            let mut at = prefix_size;
            for ((lengths, starts, data), &offset) in columns.iter().zip(&length_offsets) {
                let length = lengths[row];
                out[offset..offset + 4].copy_from_slice(&length.to_le_bytes());
                let start = starts[row];
                let length = length as usize;
                out[at..at + length].copy_from_slice(&data[start..start + length]);
                at += length;
            }
            Ok(())
        })?;
        rows.push(encoded);
    }
    PyList::new(py, rows)
}
