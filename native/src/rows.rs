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

/// Why a batch could not be decoded or encoded: the message of the Python ValueError.
#[derive(Debug, PartialEq, Eq)]
pub struct RowError(pub String);

impl RowError {
    fn new(message: impl Into<String>) -> Self {
        RowError(message.into())
    }
}

impl From<RowError> for PyErr {
    fn from(error: RowError) -> PyErr {
        PyValueError::new_err(error.0)
    }
}

/// Whether a length at `at` (4 bytes) would run past the end of a prefix of `prefix_size`.
fn outside(at: usize, prefix_size: usize) -> bool {
    at.checked_add(4).is_none_or(|end| end > prefix_size)
}

/// What the decoder needs to know about the current schema version's rows.
pub struct Layout {
    version: u16,
    prefix_size: usize,
    /// Where each variable-length feature's <u4 length sits inside the prefix.
    length_offsets: Vec<usize>,
}

impl Layout {
    /// A layout whose prefix holds the header and every length it points at.
    pub fn new(
        version: u16,
        prefix_size: usize,
        length_offsets: Vec<usize>,
    ) -> Result<Self, RowError> {
        if prefix_size < HEADER_SIZE || length_offsets.iter().any(|&at| outside(at, prefix_size)) {
            return Err(RowError::new("length offsets must lie inside the prefix"));
        }
        Ok(Layout {
            version,
            prefix_size,
            length_offsets,
        })
    }

    /// Every position in `wanted` must be one of a variable-length feature.
    pub fn check_wanted(&self, wanted: &[usize]) -> Result<(), RowError> {
        match wanted.iter().find(|&&v| v >= self.length_offsets.len()) {
            Some(bad) => Err(RowError::new(format!(
                "no variable-length feature at position {bad}"
            ))),
            None => Ok(()),
        }
    }

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

#[derive(Debug, PartialEq, Eq)]
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

/// A batch of rows, checked: every row's status, and the row that stands for it (itself if
/// FOUND, else the default row).
pub struct Decoded<'a> {
    pub status: Vec<u8>,
    pub sources: Vec<&'a [u8]>,
    /// Rows of another schema version (CORRUPT, with defaults, until upgraded).
    pub other_versions: Vec<usize>,
}

/// Check each row (None where the key has no row) against `layout` and the time `now`.
pub fn decode<'a>(
    rows: &[Option<&'a [u8]>],
    default: &'a [u8],
    layout: &Layout,
    now: u32,
) -> Result<Decoded<'a>, RowError> {
    if check(default, layout) != Verdict::Whole || expires_at(default) != 0 {
        return Err(RowError::new(
            "the default row is not a whole row that never expires",
        ));
    }
    let mut status = vec![FOUND; rows.len()];
    let mut other_versions = Vec::new();
    let mut sources = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let Some(row) = *row else {
            status[index] = MISSING;
            sources.push(default);
            continue;
        };
        let source = match check(row, layout) {
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
    Ok(Decoded {
        status,
        sources,
        other_versions,
    })
}

impl Decoded<'_> {
    /// Every row's prefix, joined into `out` (`prefix_size` bytes per row).
    pub fn join_prefixes(&self, layout: &Layout, out: &mut [u8]) {
        let size = layout.prefix_size;
        for (chunk, source) in out.chunks_exact_mut(size).zip(&self.sources) {
            chunk.copy_from_slice(&source[..size]);
        }
    }

    /// Where each row's value of variable-length feature `variable` lies in that row (the
    /// layout must have that feature: see [`Layout::check_wanted`]).
    pub fn spans(&self, layout: &Layout, variable: usize) -> Vec<(usize, usize)> {
        self.sources
            .iter()
            .map(|row| layout.span(row, variable))
            .collect()
    }

    /// The lengths of the values at `spans`, <u4 each, into `out` (4 bytes per row).
    pub fn gather_lengths(spans: &[(usize, usize)], out: &mut [u8]) {
        for (chunk, &(_, length)) in out.chunks_exact_mut(4).zip(spans) {
            chunk.copy_from_slice(&(length as u32).to_le_bytes());
        }
    }

    /// The values at `spans`, concatenated into `out` (as long as their lengths add up to).
    pub fn gather_values(&self, spans: &[(usize, usize)], out: &mut [u8]) {
        let mut at = 0;
        for (row, &(start, length)) in self.sources.iter().zip(spans) {
            out[at..at + length].copy_from_slice(&row[start..start + length]);
            at += length;
        }
    }
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
    let layout = Layout::new(version, prefix_size, length_offsets)?;
    layout.check_wanted(&wanted)?;
    let default = default_row.as_bytes();
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
    let row_bytes: Vec<Option<&[u8]>> = items
        .iter()
        .map(|item| item.as_ref().map(|bytes| bytes.as_bytes()))
        .collect();
    let decoded = decode(&row_bytes, default, &layout, now)?;
    let count = row_bytes.len();

    let prefixes = PyBytes::new_with(py, count * prefix_size, |out| {
        decoded.join_prefixes(&layout, out);
        Ok(())
    })?;
    let mut gathered = Vec::with_capacity(wanted.len());
    for &variable in &wanted {
        let spans = decoded.spans(&layout, variable);
        let lengths = PyBytes::new_with(py, count * 4, |out| {
            Decoded::gather_lengths(&spans, out);
            Ok(())
        })?;
        let total = spans.iter().map(|&(_, length)| length).sum();
        let data = PyBytes::new_with(py, total, |out| {
            decoded.gather_values(&spans, out);
            Ok(())
        })?;
        gathered.push((lengths, data));
    }
    Ok((
        PyByteArray::new(py, &decoded.status),
        prefixes,
        gathered,
        decoded.other_versions,
    ))
}

/// One variable-length feature's values for a batch of rows: each row's length and where its
/// value starts in `data`.
struct VarColumn<'a> {
    lengths: Vec<u32>,
    starts: Vec<usize>,
    data: &'a [u8],
}

impl<'a> VarColumn<'a> {
    /// Checked: 4 bytes of <u4 length per row, and lengths that add up to the data's size.
    fn new(
        position: usize,
        lengths: &[u8],
        data: &'a [u8],
        count: usize,
    ) -> Result<Self, RowError> {
        if lengths.len() != 4 * count {
            return Err(RowError::new(format!(
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
        if at != data.len() {
            return Err(RowError::new(format!(
                "variable-length feature {position}: the lengths add up to {at} bytes, the \
                 values are {}",
                data.len()
            )));
        }
        Ok(VarColumn {
            lengths,
            starts,
            data,
        })
    }
}

/// A batch of rows to encode, checked: prefixes, where the lengths go, and the values.
pub struct RowEncoder<'a> {
    prefixes: &'a [u8],
    prefix_size: usize,
    length_offsets: Vec<usize>,
    columns: Vec<VarColumn<'a>>,
}

impl<'a> RowEncoder<'a> {
    /// `variable` holds (<u4 lengths, concatenated values) per variable-length feature.
    pub fn new(
        prefixes: &'a [u8],
        prefix_size: usize,
        length_offsets: Vec<usize>,
        variable: &[(&[u8], &'a [u8])],
    ) -> Result<Self, RowError> {
        if prefix_size < HEADER_SIZE || !prefixes.len().is_multiple_of(prefix_size) {
            return Err(RowError::new(
                "prefixes must be whole prefixes of at least the header's size",
            ));
        }
        if length_offsets
            .iter()
            .any(|&at| at < HEADER_SIZE || outside(at, prefix_size))
        {
            return Err(RowError::new(
                "length offsets must lie inside the prefix, after the header",
            ));
        }
        if variable.len() != length_offsets.len() {
            return Err(RowError::new(format!(
                "{} length offsets for {} variable-length features",
                length_offsets.len(),
                variable.len()
            )));
        }
        let count = prefixes.len() / prefix_size;
        let columns = variable
            .iter()
            .enumerate()
            .map(|(position, &(lengths, data))| VarColumn::new(position, lengths, data, count))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RowEncoder {
            prefixes,
            prefix_size,
            length_offsets,
            columns,
        })
    }

    pub fn count(&self) -> usize {
        self.prefixes.len() / self.prefix_size
    }

    /// The size of row `row`: its prefix and its values.
    pub fn row_size(&self, row: usize) -> usize {
        self.columns.iter().fold(self.prefix_size, |size, column| {
            size + column.lengths[row] as usize
        })
    }

    /// Write row `row` into `out`, exactly [`RowEncoder::row_size`] bytes.
    pub fn write_row(&self, row: usize, out: &mut [u8]) {
        let prefix = &self.prefixes[row * self.prefix_size..(row + 1) * self.prefix_size];
        out[..self.prefix_size].copy_from_slice(prefix);
        let mut at = self.prefix_size;
        for (column, &offset) in self.columns.iter().zip(&self.length_offsets) {
            let length = column.lengths[row];
            out[offset..offset + 4].copy_from_slice(&length.to_le_bytes());
            let start = column.starts[row];
            let length = length as usize;
            out[at..at + length].copy_from_slice(&column.data[start..start + length]);
            at += length;
        }
    }
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
    let variable: Vec<(&[u8], &[u8])> = variable
        .iter()
        .map(|(lengths, data)| (lengths.as_bytes(), data.as_bytes()))
        .collect();
    let encoder = RowEncoder::new(prefixes, prefix_size, length_offsets, &variable)?;
    let mut rows = Vec::with_capacity(encoder.count());
    for row in 0..encoder.count() {
        let encoded = PyBytes::new_with(py, encoder.row_size(row), |out| {
            encoder.write_row(row, out);
            Ok(())
        })?;
        rows.push(encoded);
    }
    PyList::new(py, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header, 4 bytes of fixed-width features, then the lengths of two variable features.
    const PREFIX: usize = 20;
    const OFFSETS: [usize; 2] = [12, 16];
    const VERSION: u16 = 0x0102;

    fn layout() -> Layout {
        Layout::new(VERSION, PREFIX, OFFSETS.to_vec()).unwrap()
    }

    fn row(version: u16, expires_at: u32, fixed: [u8; 4], values: [&[u8]; 2]) -> Vec<u8> {
        let mut row = version.to_le_bytes().to_vec();
        row.extend([0, FORMAT_VERSION]);
        row.extend(expires_at.to_le_bytes());
        row.extend(fixed);
        for value in values {
            row.extend((value.len() as u32).to_le_bytes());
        }
        values.iter().for_each(|value| row.extend(*value));
        row
    }

    fn default_row() -> Vec<u8> {
        row(VERSION, 0, [0; 4], [b"", b"?"])
    }

    fn decoded<'a>(rows: &[Option<&'a [u8]>], default: &'a [u8], now: u32) -> Decoded<'a> {
        decode(rows, default, &layout(), now).unwrap()
    }

    #[test]
    fn the_header_and_lengths_are_little_endian() {
        let row = row(VERSION, 0x0a0b_0c0d, [1, 2, 3, 4], [b"abc", b""]);
        assert_eq!(
            &row[..8],
            &[0x02, 0x01, 0, FORMAT_VERSION, 0x0d, 0x0c, 0x0b, 0x0a]
        );
        assert_eq!(expires_at(&row), 0x0a0b_0c0d);
        let layout = layout();
        assert_eq!(layout.length(&row, 0), 3);
        assert_eq!(layout.whole_size(&row), PREFIX + 3);
        assert_eq!(layout.span(&row, 0), (PREFIX, 3));
        assert_eq!(layout.span(&row, 1), (PREFIX + 3, 0));
    }

    #[test]
    fn lengths_must_lie_inside_a_prefix_holding_the_header() {
        let message = "length offsets must lie inside the prefix";
        for (prefix_size, offsets) in [
            (4, vec![]),
            (PREFIX, vec![PREFIX - 3]),
            (PREFIX, vec![12, PREFIX]),
            (PREFIX, vec![usize::MAX - 1]),
        ] {
            assert_eq!(
                Layout::new(VERSION, prefix_size, offsets).err(),
                Some(RowError::new(message))
            );
        }
        assert!(Layout::new(VERSION, HEADER_SIZE, vec![]).is_ok());
        assert!(Layout::new(VERSION, PREFIX, vec![PREFIX - 4]).is_ok());
        assert_eq!(layout().check_wanted(&[1, 0, 1]), Ok(()));
        assert_eq!(
            layout().check_wanted(&[0, 2]),
            Err(RowError::new("no variable-length feature at position 2"))
        );
    }

    #[test]
    fn each_row_gets_a_status_and_bad_rows_the_default() {
        let default = default_row();
        let found = row(VERSION, 0, [1; 4], [b"a", b"bc"]);
        let not_yet = row(VERSION, 101, [2; 4], [b"", b""]);
        let expired = row(VERSION, 100, [3; 4], [b"x", b""]);
        let other_version = row(VERSION + 1, 0, [4; 4], [b"", b""]);
        let mut wrong_format = found.clone();
        wrong_format[3] = FORMAT_VERSION + 1;
        let mut too_long = found.clone();
        too_long.push(0);
        let truncated = &found[..found.len() - 1];
        let header_only = &found[..HEADER_SIZE];
        let rows: Vec<Option<&[u8]>> = vec![
            Some(&found),
            None,
            Some(&not_yet),
            Some(&expired),
            Some(&other_version),
            Some(&wrong_format),
            Some(&too_long),
            Some(truncated),
            Some(header_only),
            Some(&found[..3]),
            Some(b""),
        ];
        let decoded = decoded(&rows, &default, 100);
        assert_eq!(
            decoded.status,
            vec![
                FOUND, MISSING, FOUND, EXPIRED, CORRUPT, CORRUPT, CORRUPT, CORRUPT, CORRUPT,
                CORRUPT, CORRUPT
            ]
        );
        assert_eq!(decoded.other_versions, vec![4]);
        assert_eq!(decoded.sources[0], &found[..]);
        assert_eq!(decoded.sources[2], &not_yet[..]);
        for (index, source) in decoded.sources.iter().enumerate() {
            if ![0, 2].contains(&index) {
                assert_eq!(*source, &default[..], "row {index}");
            }
        }
    }

    #[test]
    fn a_row_that_never_expires_is_found_at_any_time() {
        let default = default_row();
        let never = row(VERSION, 0, [0; 4], [b"", b""]);
        let last = row(VERSION, u32::MAX, [0; 4], [b"", b""]);
        let rows: Vec<Option<&[u8]>> = vec![Some(&never), Some(&last)];
        assert_eq!(
            decoded(&rows, &default, u32::MAX).status,
            vec![FOUND, EXPIRED]
        );
        assert_eq!(
            decoded(&rows, &default, u32::MAX - 1).status,
            vec![FOUND, FOUND]
        );
    }

    #[test]
    fn the_default_row_must_be_whole_and_never_expire() {
        let message = "the default row is not a whole row that never expires";
        let expiring = row(VERSION, 1, [0; 4], [b"", b""]);
        let mut short = default_row();
        short.pop();
        let other_version = row(VERSION + 1, 0, [0; 4], [b"", b""]);
        for default in [expiring, short, other_version] {
            assert_eq!(
                decode(&[], &default, &layout(), 0).err(),
                Some(RowError::new(message))
            );
        }
    }

    #[test]
    fn prefixes_are_joined_and_values_gathered_per_feature() {
        let default = default_row();
        let first = row(VERSION, 0, [1, 2, 3, 4], [b"ab", b"cde"]);
        let second = row(VERSION, 0, [5, 6, 7, 8], [b"", b"f"]);
        let rows: Vec<Option<&[u8]>> = vec![Some(&first), None, Some(&second)];
        let layout = layout();
        let decoded = decode(&rows, &default, &layout, 0).unwrap();

        let mut prefixes = vec![0; 3 * PREFIX];
        decoded.join_prefixes(&layout, &mut prefixes);
        assert_eq!(
            prefixes,
            [&first[..PREFIX], &default[..PREFIX], &second[..PREFIX]].concat()
        );

        let spans = decoded.spans(&layout, 1);
        assert_eq!(spans, vec![(PREFIX + 2, 3), (PREFIX, 1), (PREFIX, 1)]);
        let mut lengths = vec![0; 3 * 4];
        Decoded::gather_lengths(&spans, &mut lengths);
        assert_eq!(lengths, [3u32, 1, 1].map(u32::to_le_bytes).concat());
        let mut values = vec![0; 5];
        decoded.gather_values(&spans, &mut values);
        assert_eq!(values, b"cde?f");

        let spans = decoded.spans(&layout, 0);
        let mut values = vec![0; 2];
        decoded.gather_values(&spans, &mut values);
        assert_eq!(values, b"ab");
    }

    fn encoder<'a>(
        prefixes: &'a [u8],
        prefix_size: usize,
        offsets: &[usize],
        variable: &[(&[u8], &'a [u8])],
    ) -> Result<RowEncoder<'a>, RowError> {
        RowEncoder::new(prefixes, prefix_size, offsets.to_vec(), variable)
    }

    fn encode_all(encoder: &RowEncoder<'_>) -> Vec<Vec<u8>> {
        (0..encoder.count())
            .map(|row| {
                let mut out = vec![0xee; encoder.row_size(row)];
                encoder.write_row(row, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn rows_are_their_prefix_with_lengths_written_in_then_the_values() {
        let prefixes: Vec<u8> = (0..2 * PREFIX as u8).collect();
        let lengths = [2u32, 0].map(u32::to_le_bytes).concat();
        let more = [1u32, 3].map(u32::to_le_bytes).concat();
        let variable: [(&[u8], &[u8]); 2] = [(&lengths, b"ab"), (&more, b"xyzw")];
        let rows = encode_all(&encoder(&prefixes, PREFIX, &OFFSETS, &variable).unwrap());
        let mut first = prefixes[..PREFIX].to_vec();
        first[12..16].copy_from_slice(&[2, 0, 0, 0]);
        first[16..20].copy_from_slice(&[1, 0, 0, 0]);
        first.extend(b"abx");
        let mut second = prefixes[PREFIX..].to_vec();
        second[12..16].copy_from_slice(&[0, 0, 0, 0]);
        second[16..20].copy_from_slice(&[3, 0, 0, 0]);
        second.extend(b"yzw");
        assert_eq!(rows, vec![first, second]);

        let no_rows = encoder(&[], PREFIX, &OFFSETS, &[(b"", b""), (b"", b"")]).unwrap();
        assert_eq!(no_rows.count(), 0);
        let fixed_only = encoder(&prefixes, PREFIX, &[], &[]).unwrap();
        assert_eq!(
            encode_all(&fixed_only),
            vec![prefixes[..PREFIX].to_vec(), prefixes[PREFIX..].to_vec()]
        );
    }

    #[test]
    fn encoded_rows_decode_to_the_same_values() {
        let mut prefixes = Vec::new();
        for expires in [0u32, 7] {
            prefixes.extend(VERSION.to_le_bytes());
            prefixes.extend([0, FORMAT_VERSION]);
            prefixes.extend(expires.to_le_bytes());
            prefixes.extend([0; PREFIX - HEADER_SIZE]);
        }
        let lengths = [3u32, 1].map(u32::to_le_bytes).concat();
        let more = [0u32, 2].map(u32::to_le_bytes).concat();
        let variable: [(&[u8], &[u8]); 2] = [(&lengths, b"abcd"), (&more, b"ef")];
        let rows = encode_all(&encoder(&prefixes, PREFIX, &OFFSETS, &variable).unwrap());
        let default = default_row();
        let layout = layout();
        let sources: Vec<Option<&[u8]>> = rows.iter().map(|row| Some(&row[..])).collect();
        let decoded = decode(&sources, &default, &layout, 5).unwrap();
        assert_eq!(decoded.status, vec![FOUND, FOUND]);
        for (variable, want) in [(0, &b"abcd"[..]), (1, b"ef")] {
            let spans = decoded.spans(&layout, variable);
            let mut values = vec![0; want.len()];
            decoded.gather_values(&spans, &mut values);
            assert_eq!(values, want);
        }
        assert_eq!(
            decode(&sources, &default, &layout, 7).unwrap().status,
            vec![FOUND, EXPIRED]
        );
    }

    /// Arguments of [`RowEncoder::new`] and (part of) the message it refuses them with.
    type Refused<'a> = (
        &'a [u8],
        usize,
        &'a [usize],
        &'a [(&'a [u8], &'a [u8])],
        &'a str,
    );

    #[test]
    fn bad_encode_arguments_are_refused() {
        let four: &[u8] = &[0; 4];
        let cases: [Refused<'_>; 7] = [
            (&[0; 7], 7, &[], &[], "of at least the header's size"),
            (&[0; 17], 16, &[], &[], "prefixes must be whole prefixes"),
            (
                &[0; 16],
                16,
                &[13],
                &[(four, b"")],
                "inside the prefix, after the header",
            ),
            (
                &[0; 16],
                16,
                &[4],
                &[(four, b"")],
                "inside the prefix, after the header",
            ),
            (
                &[0; 16],
                16,
                &[8],
                &[],
                "1 length offsets for 0 variable-length features",
            ),
            (
                &[0; 16],
                16,
                &[8],
                &[(&[0; 8], b"")],
                "variable-length feature 0: 8 bytes of lengths for 1 rows",
            ),
            (
                &[0; 16],
                16,
                &[8],
                &[(&[2, 0, 0, 0], b"x")],
                "variable-length feature 0: the lengths add up to 2 bytes, the values are 1",
            ),
        ];
        for (prefixes, prefix_size, offsets, variable, message) in cases {
            let error = encoder(prefixes, prefix_size, offsets, variable).err();
            let error = error.unwrap_or_else(|| panic!("accepted, expected {message:?}"));
            assert!(error.0.contains(message), "{:?} lacks {message:?}", error.0);
        }
    }

    #[test]
    fn var_column_lengths_must_cover_every_row_and_add_up_to_the_data() {
        let lengths = [1u32, 0, 2].map(u32::to_le_bytes).concat();
        let column = VarColumn::new(0, &lengths, b"abc", 3).unwrap();
        assert_eq!(column.lengths, vec![1, 0, 2]);
        assert_eq!(column.starts, vec![0, 1, 1]);
        assert!(VarColumn::new(0, &lengths, b"abc", 2).is_err());
        assert!(VarColumn::new(0, &lengths[..11], b"abc", 3).is_err());
        assert!(VarColumn::new(0, &lengths, b"abcd", 3).is_err());
        assert!(VarColumn::new(0, &lengths, b"ab", 3).is_err());
        // Big-endian lengths would be 16M bytes here: the data says otherwise.
        let big_endian = [1u32, 0, 2].map(u32::to_be_bytes).concat();
        assert!(VarColumn::new(0, &big_endian, b"abc", 3).is_err());
    }
}
