//! Retrieve results to the protobuf bytes of `RetrieveResponse` / `RetrieveBatchResponse`
//! (`proto/inferstack/proto/featurestore/v1/featurestore.proto`), in one call per answer.
//!
//! Building the message in Python costs a sub-message and a copy per column, and a fixed-width
//! column is a strided view into the decoded rows, so it is gathered first. Here each column's
//! values are copied once, straight from the view (any strides) into the answer.
//!
//! The wire format used: a message is a sequence of fields; every field here is either
//! length-delimited (tag, varint length, bytes) or a varint (tag, varint). As protobuf itself
//! does for proto3, empty strings and bytes and a zero count are left out.

use numpy::prelude::*;
use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// Tag bytes: (field number << 3) | wire type (0 varint, 2 length-delimited).
const RESPONSES: u8 = (1 << 3) | 2; // RetrieveBatchResponse.responses
const ENTITY: u8 = (1 << 3) | 2; // RetrieveResponse.entity
const COUNT: u8 = 2 << 3; // RetrieveResponse.count
const COLUMNS: u8 = (3 << 3) | 2; // RetrieveResponse.columns
const GROUPS: u8 = (4 << 3) | 2; // RetrieveResponse.groups
const NAME: u8 = (1 << 3) | 2; // Column.name, GroupStatus.feature_group
const TYPE: u8 = (2 << 3) | 2; // Column.type, GroupStatus.status
const VALUES: u8 = (3 << 3) | 2; // Column.values
const LENGTHS: u8 = (4 << 3) | 2; // Column.lengths

fn varint_size(mut value: u64) -> usize {
    let mut size = 1;
    while value >= 0x80 {
        value >>= 7;
        size += 1;
    }
    size
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Size of a length-delimited field holding `length` bytes; 0 when left out (empty).
fn field_size(length: usize) -> usize {
    if length == 0 {
        0
    } else {
        1 + varint_size(length as u64) + length
    }
}

/// A message field: always written, even empty (an empty sub-message is still an element).
fn message_size(length: usize) -> usize {
    1 + varint_size(length as u64) + length
}

fn put_header(out: &mut Vec<u8>, tag: u8, length: usize) {
    out.push(tag);
    put_varint(out, length as u64);
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_header(out, tag, bytes.len());
        out.extend_from_slice(bytes);
    }
}

/// A column's values: a numpy array of any dtype and strides (a fixed-width column is a
/// field of the decoded rows' structured array), read in place through numpy's own struct
/// (cheaper than exporting a buffer, which builds a format string per array).
struct Strided<'py> {
    array: Bound<'py, PyUntypedArray>,
    itemsize: usize,
}

impl<'py> Strided<'py> {
    fn get(object: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        let array = object
            .cast::<PyUntypedArray>()
            .map_err(|_| PyTypeError::new_err(format!("{what}: values must be a numpy array")))?;
        let itemsize = array.dtype().itemsize();
        Ok(Strided {
            array: array.clone(),
            itemsize,
        })
    }

    /// Bytes of the values laid out in C order, whatever the strides.
    fn packed_len(&self) -> usize {
        self.array.shape().iter().product::<usize>() * self.itemsize
    }

    fn copy_into(&self, out: &mut Vec<u8>) {
        // SAFETY: the array is alive (held) and not resized while the GIL is held; numpy's
        // data pointer with its shape and strides addresses every element.
        let start = unsafe { (*self.array.as_array_ptr()).fields.data as *const u8 };
        copy_strided(
            out,
            start,
            self.array.shape(),
            self.array.strides(),
            self.itemsize,
        );
    }
}

fn copy_strided(out: &mut Vec<u8>, at: *const u8, shape: &[usize], strides: &[isize], item: usize) {
    match shape {
        [] => out.extend_from_slice(unsafe { std::slice::from_raw_parts(at, item) }),
        [n] if strides[0] == item as isize => {
            // SAFETY: a contiguous run of n items inside the array's data.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(at, *n * item) })
        }
        [n] => match item {
            // A field of the decoded rows: one small item per row, `stride` bytes apart.
            1 => gather::<u8>(out, at, *n, strides[0]),
            2 => gather::<u16>(out, at, *n, strides[0]),
            4 => gather::<u32>(out, at, *n, strides[0]),
            8 => gather::<u64>(out, at, *n, strides[0]),
            _ => {
                for index in 0..*n as isize {
                    // SAFETY: index < n, so the item lies inside the array's data.
                    let from = unsafe { at.offset(index * strides[0]) };
                    out.extend_from_slice(unsafe { std::slice::from_raw_parts(from, item) });
                }
            }
        },
        [n, rest @ ..] => {
            for index in 0..*n as isize {
                // SAFETY: index < shape[0], so the offset stays inside the array's data.
                let inner = unsafe { at.offset(index * strides[0]) };
                copy_strided(out, inner, rest, &strides[1..], item);
            }
        }
    }
}

/// `count` items of type T (any alignment), `stride` bytes apart, appended in order: one
/// load and store each instead of a slice copy per item.
fn gather<T: Copy>(out: &mut Vec<u8>, at: *const u8, count: usize, stride: isize) {
    let size = std::mem::size_of::<T>();
    out.reserve(count * size);
    let base = out.len();
    // SAFETY: `reserve` made room for count items after `base`; every source item lies inside
    // the array's data (index < count); unaligned reads and writes are used throughout.
    unsafe {
        let target = out.as_mut_ptr().add(base);
        for index in 0..count {
            let value = std::ptr::read_unaligned(at.offset(index as isize * stride) as *const T);
            std::ptr::write_unaligned(target.add(index * size) as *mut T, value);
        }
        out.set_len(base + count * size);
    }
}

enum Values<'py> {
    Fixed(Strided<'py>),
    /// Strings or bytes: (<u4 lengths, concatenated data).
    Variable(Strided<'py>, Bound<'py, PyBytes>),
}

struct Column<'py> {
    name: Bound<'py, PyString>,
    type_name: Bound<'py, PyString>,
    values: Values<'py>,
}

impl Column<'_> {
    fn from_python<'py>(item: &Bound<'py, PyAny>) -> PyResult<Column<'py>> {
        // A ResultColumn: (name, type, values, type_name).
        let tuple = item
            .cast::<PyTuple>()
            .map_err(|_| PyTypeError::new_err("a result column must be a tuple"))?;
        let name = tuple.get_item(0)?.cast_into::<PyString>()?;
        let type_name = tuple.get_item(3)?.cast_into::<PyString>()?;
        let values = tuple.get_item(2)?;
        let what = name.to_str()?;
        let values = if values.is_instance_of::<PyUntypedArray>() {
            Values::Fixed(Strided::get(&values, what)?)
        } else {
            // A VarColumn: `lengths` (<u4 array) and `data` (bytes).
            let neither =
                |_| PyTypeError::new_err(format!("{what}: values must be an array or a VarColumn"));
            let lengths = Strided::get(&values.getattr("lengths").map_err(neither)?, what)?;
            let data = values
                .getattr("data")
                .map_err(neither)?
                .cast_into::<PyBytes>()
                .map_err(|_| {
                    PyTypeError::new_err(format!("{what}: variable-length data must be bytes"))
                })?;
            Values::Variable(lengths, data)
        };
        Ok(Column {
            name,
            type_name,
            values,
        })
    }

    fn size(&self) -> PyResult<usize> {
        let (values, lengths) = match &self.values {
            Values::Fixed(values) => (values.packed_len(), 0),
            Values::Variable(lengths, data) => (data.as_bytes().len(), lengths.packed_len()),
        };
        Ok(field_size(self.name.to_str()?.len())
            + field_size(self.type_name.to_str()?.len())
            + field_size(values)
            + field_size(lengths))
    }

    fn write(&self, out: &mut Vec<u8>) -> PyResult<()> {
        put_header(out, COLUMNS, self.size()?);
        put_bytes(out, NAME, self.name.to_str()?.as_bytes());
        put_bytes(out, TYPE, self.type_name.to_str()?.as_bytes());
        match &self.values {
            Values::Fixed(values) => {
                let length = values.packed_len();
                if length > 0 {
                    put_header(out, VALUES, length);
                    values.copy_into(out);
                }
            }
            Values::Variable(lengths, data) => {
                put_bytes(out, VALUES, data.as_bytes());
                let length = lengths.packed_len();
                if length > 0 {
                    put_header(out, LENGTHS, length);
                    lengths.copy_into(out);
                }
            }
        }
        Ok(())
    }
}

struct Group<'py> {
    name: Bound<'py, PyString>,
    status: Strided<'py>,
}

impl Group<'_> {
    fn size(&self) -> PyResult<usize> {
        Ok(field_size(self.name.to_str()?.len()) + field_size(self.status.packed_len()))
    }

    fn write(&self, out: &mut Vec<u8>) -> PyResult<()> {
        put_header(out, GROUPS, self.size()?);
        put_bytes(out, NAME, self.name.to_str()?.as_bytes());
        let length = self.status.packed_len();
        if length > 0 {
            put_header(out, TYPE, length);
            self.status.copy_into(out);
        }
        Ok(())
    }
}

struct Response<'py> {
    entity: Bound<'py, PyString>,
    count: u64,
    columns: Vec<Column<'py>>,
    groups: Vec<Group<'py>>,
}

impl Response<'_> {
    fn from_python<'py>(item: &Bound<'py, PyAny>) -> PyResult<Response<'py>> {
        let (entity, count, columns, groups): (
            Bound<'py, PyString>,
            u64,
            Bound<'py, PyList>,
            Bound<'py, PyList>,
        ) = item.extract().map_err(|_| {
            PyTypeError::new_err("a result must be (entity, count, columns, [(group, status)])")
        })?;
        let columns = columns
            .iter()
            .map(|column| Column::from_python(&column))
            .collect::<PyResult<Vec<_>>>()?;
        let groups = groups
            .iter()
            .map(|group| {
                let (name, status): (Bound<'py, PyString>, Bound<'py, PyAny>) = group.extract()?;
                let status = Strided::get(&status, name.to_str()?)?;
                Ok(Group { name, status })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Response {
            entity,
            count,
            columns,
            groups,
        })
    }

    fn size(&self) -> PyResult<usize> {
        let mut size = field_size(self.entity.to_str()?.len());
        if self.count > 0 {
            size += 1 + varint_size(self.count);
        }
        for column in &self.columns {
            size += message_size(column.size()?);
        }
        for group in &self.groups {
            size += message_size(group.size()?);
        }
        Ok(size)
    }

    fn write(&self, out: &mut Vec<u8>) -> PyResult<()> {
        put_bytes(out, ENTITY, self.entity.to_str()?.as_bytes());
        if self.count > 0 {
            out.push(COUNT);
            put_varint(out, self.count);
        }
        for column in &self.columns {
            column.write(out)?;
        }
        for group in &self.groups {
            group.write(out)?;
        }
        Ok(())
    }
}

/// Encode retrieve results: each one `(entity, count, columns, [(feature_group, status)])`
/// where `columns` are ResultColumn tuples `(name, type, values, type_name)` whose values are
/// a numpy array (any strides) or a VarColumn (`lengths`, `data`), and status a uint8 array.
///
/// `batch=False` takes exactly one result and returns a `RetrieveResponse`; `batch=True`
/// returns a `RetrieveBatchResponse` holding them in order.
#[pyfunction]
pub fn encode_retrieve_responses<'py>(
    py: Python<'py>,
    results: &Bound<'py, PyList>,
    batch: bool,
) -> PyResult<Bound<'py, PyBytes>> {
    if !batch && results.len() != 1 {
        return Err(PyValueError::new_err(format!(
            "a RetrieveResponse holds one result, got {}",
            results.len()
        )));
    }
    let responses = results
        .iter()
        .map(|item| Response::from_python(&item))
        .collect::<PyResult<Vec<_>>>()?;
    let mut sizes = Vec::with_capacity(responses.len());
    for response in &responses {
        sizes.push(response.size()?);
    }
    let total = if batch {
        sizes.iter().map(|&size| message_size(size)).sum()
    } else {
        sizes[0]
    };
    let mut out = Vec::with_capacity(total);
    for (response, &size) in responses.iter().zip(&sizes) {
        if batch {
            put_header(&mut out, RESPONSES, size);
        }
        response.write(&mut out)?;
    }
    debug_assert_eq!(out.len(), total);
    Ok(PyBytes::new(py, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        assert_eq!(out.len(), varint_size(value), "size of {value}");
        out
    }

    #[test]
    fn varints_are_seven_bits_a_byte_least_significant_first() {
        assert_eq!(varint(0), vec![0]);
        assert_eq!(varint(1), vec![1]);
        assert_eq!(varint(127), vec![0x7f]);
        assert_eq!(varint(128), vec![0x80, 0x01]);
        assert_eq!(varint(300), vec![0xac, 0x02]);
        assert_eq!(varint(16_383), vec![0xff, 0x7f]);
        assert_eq!(varint(16_384), vec![0x80, 0x80, 0x01]);
        assert_eq!(varint(u64::MAX), [vec![0xff; 9], vec![0x01]].concat());
    }

    #[test]
    fn tags_are_field_number_and_wire_type() {
        assert_eq!([RESPONSES, ENTITY, NAME], [0x0a; 3]);
        assert_eq!(COUNT, 0x10);
        assert_eq!([COLUMNS, VALUES, LENGTHS, GROUPS], [0x1a, 0x1a, 0x22, 0x22]);
        assert_eq!(TYPE, 0x12);
    }

    #[test]
    fn empty_fields_are_left_out_but_messages_kept() {
        assert_eq!(field_size(0), 0);
        assert_eq!(field_size(3), 1 + 1 + 3);
        assert_eq!(field_size(200), 1 + 2 + 200);
        assert_eq!(message_size(0), 2);
        assert_eq!(message_size(200), 1 + 2 + 200);

        let mut out = Vec::new();
        put_bytes(&mut out, NAME, b"");
        assert!(out.is_empty());
        put_bytes(&mut out, NAME, b"ab");
        assert_eq!(out, vec![NAME, 2, b'a', b'b']);
        assert_eq!(out.len(), field_size(2));
        let mut out = Vec::new();
        put_header(&mut out, COLUMNS, 300);
        assert_eq!(out, vec![COLUMNS, 0xac, 0x02]);
    }

    fn strided(
        data: &[u8],
        offset: usize,
        shape: &[usize],
        strides: &[isize],
        item: usize,
    ) -> Vec<u8> {
        let mut out = vec![0xee]; // what is there already stays
        copy_strided(&mut out, data[offset..].as_ptr(), shape, strides, item);
        assert_eq!(out.remove(0), 0xee);
        out
    }

    #[test]
    fn contiguous_values_are_copied_as_they_are() {
        let data: Vec<u8> = (0..12).collect();
        assert_eq!(strided(&data, 0, &[3], &[4], 4), data);
        assert_eq!(strided(&data, 4, &[], &[], 4), vec![4, 5, 6, 7]);
        assert_eq!(strided(&data, 0, &[0], &[4], 4), Vec::<u8>::new());
        assert_eq!(strided(&data, 0, &[2, 3], &[6, 2], 2), data);
    }

    #[test]
    fn a_field_of_rows_is_gathered_keeping_its_byte_order() {
        // Three rows of 7 bytes (a u8, then a little-endian u32, then 2 bytes), as the decoded
        // rows' structured array: the u32 field at offset 1, stride 7, unaligned.
        let mut rows = Vec::new();
        for (tag, value) in [(1u8, 0x0403_0201u32), (2, 0x0807_0605), (3, 0xffff_fffe)] {
            rows.push(tag);
            rows.extend(value.to_le_bytes());
            rows.extend([0xaa, 0xbb]);
        }
        let want = [0x0403_0201u32, 0x0807_0605, 0xffff_fffe]
            .map(u32::to_le_bytes)
            .concat();
        assert_eq!(strided(&rows, 1, &[3], &[7], 4), want);
        assert_eq!(strided(&rows, 0, &[3], &[7], 1), vec![1, 2, 3]);
        assert_eq!(strided(&rows, 5, &[3], &[7], 2), [[0xaa, 0xbb]; 3].concat());
        // Items of an odd size take the general path; so do negative strides.
        assert_eq!(
            strided(&rows, 0, &[2], &[14], 3),
            vec![1, 1, 2, 3, 0xfe, 0xff]
        );
        assert_eq!(strided(&rows, 14, &[3], &[-7], 1), vec![3, 2, 1]);
        let eight: Vec<u8> = (0..32).collect();
        assert_eq!(
            strided(&eight, 0, &[2], &[16], 8),
            [&eight[..8], &eight[16..24]].concat()
        );
        // Two dimensions, the inner one strided: every other u16 of each 8-byte row.
        assert_eq!(
            strided(&eight, 0, &[2, 2], &[8, 4], 2),
            vec![0, 1, 4, 5, 8, 9, 12, 13]
        );
    }
}
