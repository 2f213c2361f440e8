//! Keyed tokens of many strings in one call: what `pipeline.keys.PseudonymKey.token` gives for
//! each (the first `width` hex characters of HMAC-SHA256(secret, prefix + value), the prefix being
//! the domain's name and a NUL), for the column chain, which tokens a batch's distinct values at
//! once (pipeline/pseudonymize_columns.py). The HMAC state after the secret and the prefix is
//! computed once and cloned per value, as the Python form does (pipeline.pseudonymize: `_keyed`).
//! The values arrive as an Arrow string array's offsets and data buffers, read in place.

use hmac::{Hmac, Mac};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use sha2::Sha256;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The buffer's bytes, read in place (a C-contiguous buffer, as pyarrow's are, whatever its
/// item format says).
fn bytes_of(buffer: &PyUntypedBuffer) -> PyResult<&[u8]> {
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err("a buffer must be contiguous"));
    }
    if buffer.len_bytes() == 0 {
        return Ok(&[]);
    }
    // SAFETY: a contiguous buffer of len_bytes() bytes at buf_ptr(), exported (alive, unmoved)
    // while `buffer` is borrowed; nothing here runs Python code that could change it.
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes()) })
}

/// `count` tokens of `width` hex characters each, back to back: the token of value i is
/// `data[offsets[i]..offsets[i + 1]]` keyed (offsets: `count + 1` little-endian i32, an Arrow
/// string array's, which may start past 0).
#[pyfunction]
pub fn tokens<'py>(
    py: Python<'py>,
    secret: &[u8],
    prefix: &[u8],
    offsets: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    count: usize,
    width: usize,
) -> PyResult<Bound<'py, PyBytes>> {
    if width == 0 || width > 64 {
        return Err(PyValueError::new_err("a token is 1 to 64 hex characters"));
    }
    let (offsets, data) = (PyUntypedBuffer::get(offsets)?, PyUntypedBuffer::get(data)?);
    let (offsets, data) = (bytes_of(&offsets)?, bytes_of(&data)?);
    if offsets.len() < (count + 1) * 4 {
        return Err(PyValueError::new_err("fewer offsets than values"));
    }
    let offset = |i: usize| {
        let b = &offsets[i * 4..i * 4 + 4];
        i32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    for i in 0..count {
        let (start, end) = (offset(i), offset(i + 1));
        if start < 0 || start > end || end as usize > data.len() {
            return Err(PyValueError::new_err("offsets out of order or past the data"));
        }
    }
    let at = |i: usize| offset(i) as usize; // checked above: 0 <= offsets, in order, in the data
    let mut keyed = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    keyed.update(prefix);
    PyBytes::new_with(py, count * width, |out| {
        for (i, token) in out.chunks_exact_mut(width).enumerate() {
            let mut mac = keyed.clone();
            mac.update(&data[at(i)..at(i + 1)]);
            let digest = mac.finalize().into_bytes();
            for (j, slot) in token.iter_mut().enumerate() {
                let byte = digest[j / 2];
                *slot = HEX[usize::from(if j % 2 == 0 { byte >> 4 } else { byte & 15 })];
            }
        }
        Ok(())
    })
}
