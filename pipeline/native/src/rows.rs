//! `Rows`: records decoded straight into Arrow column buffers, with no Python object per record.
//!
//! The stream worker's hot path turns a batch of messages into one Arrow table. A `Decoder` gives a
//! dict per record, which Arrow then walks again; `Rows` reads the same bodies into per-column
//! buffers laid out as Arrow arrays (validity, int32 offsets, UTF-8 data, values), which Python
//! wraps with `pyarrow.Array.from_buffers` (pipeline/native_rows.py).
//!
//! The contract is the decoder's: `append` takes exactly the bodies `Decoder.decode` takes (the
//! same wire primitives, `Cursor`, and the same identifier rule), and a declined body leaves the
//! columns as they were, so the caller's dict path sees it as if `Rows` had never looked. The
//! columns hold what the dict would: an enum its symbol, a map its keys once each (the first
//! place, the last value, as a Python dict keeps them), a null struct valid placeholders in its
//! children (as Arrow's converter fills them). A schema with a type that has no column here (boolean, floats,
//! bytes, arrays, fixed, unions other than [null, T], recursion) is refused with ValueError, and
//! the caller keeps the dict path.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use pyo3::exceptions::PyOverflowError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::{Cursor, Decoder, MAX_DEPTH, Node, Program, Step, Stop, invalid};

/// Maps with more entries than this are checked for repeated keys with a hash set, smaller ones
/// pair by pair (a CallEvent's attributes hold a handful).
const PAIRWISE_KEYS: usize = 16;

/// Where a column's values come from; every kind but Int, Long, Record and Map is an Arrow string.
enum Kind {
    String,
    /// A string declined unless plainly nameable (`Cursor::identifier`).
    Identifier(usize),
    /// The symbols' UTF-8 bytes: the column holds the symbol, as the dict does.
    Enum(Vec<Vec<u8>>),
    Int,
    Long,
    /// A struct whose children are the record's fields.
    Record,
    /// Children: the keys and the values (both strings), `offsets` into them per row.
    Map,
}

/// One column as Arrow lays it out. The buffers a kind does not use stay empty. `offsets` (of
/// strings and maps) always starts at 0 and holds one more entry than there are rows.
struct Column {
    name: String,
    kind: Kind,
    /// The branch of null in a [null, T] union; None for a field that is not a union.
    null_branch: Option<usize>,
    /// One flag a row; packed into Arrow's bitmap only on `take`, so an append pushes a byte.
    valid: Vec<bool>,
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    ints: Vec<i32>,
    longs: Vec<i64>,
    children: Vec<Column>,
}

fn full() -> Stop {
    // A table of 2 GiB of one column's text: the caller takes rows more often than that.
    Stop::Python(PyOverflowError::new_err(
        "a column passed 2 GiB: take rows before appending more",
    ))
}

impl Column {
    fn new(name: String, kind: Kind) -> Self {
        let offsets = match kind {
            Kind::Int | Kind::Long | Kind::Record => Vec::new(),
            _ => vec![0],
        };
        Column {
            name,
            kind,
            null_branch: None,
            valid: Vec::new(),
            offsets,
            bytes: Vec::new(),
            ints: Vec::new(),
            longs: Vec::new(),
            children: Vec::new(),
        }
    }

    fn compile(program: &Program, py: Python<'_>, name: String, node: &Node, depth: u32) -> PyResult<Self> {
        Ok(match node {
            Node::String => Column::new(name, Kind::String),
            Node::Identifier(limit) => Column::new(name, Kind::Identifier(*limit)),
            Node::Enum(i) => {
                let mut symbols = Vec::with_capacity(program.enums[*i].len());
                for symbol in &program.enums[*i] {
                    symbols.push(symbol.bind(py).to_str()?.as_bytes().to_vec());
                }
                Column::new(name, Kind::Enum(symbols))
            }
            Node::Int => Column::new(name, Kind::Int),
            Node::Long => Column::new(name, Kind::Long),
            Node::Record(i) => {
                // The decoder goes one deeper for each record, union and map, and declines past
                // MAX_DEPTH; refusing such a schema here keeps the declines the same. A recursive
                // record ends there too: it has no fixed Arrow type.
                if depth + 1 > MAX_DEPTH {
                    return invalid(format!("field {name:?} nests too deep for columns"));
                }
                let mut column = Column::new(name, Kind::Record);
                for field in &program.records[*i] {
                    let child = field.name.bind(py).to_str()?.to_owned();
                    column
                        .children
                        .push(Column::compile(program, py, child, &field.node, depth + 1)?);
                }
                column
            }
            Node::Map(values) => {
                if depth + 1 > MAX_DEPTH {
                    return invalid(format!("field {name:?} nests too deep for columns"));
                }
                if !matches!(**values, Node::String) {
                    return invalid(format!("map {name:?} holds other values than strings"));
                }
                let mut column = Column::new(name, Kind::Map);
                column.children.push(Column::new("key".into(), Kind::String));
                column.children.push(Column::new("value".into(), Kind::String));
                column
            }
            Node::Union(branches) => {
                let nulls: Vec<usize> = (0..branches.len())
                    .filter(|&b| matches!(branches[b], Node::Null))
                    .collect();
                if branches.len() != 2 || nulls.len() != 1 || depth + 1 > MAX_DEPTH {
                    return invalid(format!("union {name:?} is not [null, T]"));
                }
                let null = nulls[0];
                let mut column = Column::compile(program, py, name, &branches[1 - null], depth + 1)?;
                column.null_branch = Some(null);
                column
            }
            _ => return invalid(format!("field {name:?} has a type without a column here")),
        })
    }

    /// One row from the cursor. On `Err` the column may hold part of it: `truncate` drops that.
    fn read(&mut self, cur: &mut Cursor<'_>) -> Step<()> {
        // the null branch reads no bytes, as the decoder's None
        if let Some(null) = self.null_branch
            && cur.index(2)? == null
        {
            self.push_null();
            return Ok(());
        }
        self.valid.push(true);
        let Column {
            kind,
            offsets,
            bytes,
            ints,
            longs,
            children,
            ..
        } = self;
        match kind {
            Kind::String => {
                bytes.extend_from_slice(cur.text()?.as_bytes());
                end_item(offsets, bytes.len())
            }
            Kind::Identifier(limit) => {
                bytes.extend_from_slice(cur.identifier(*limit)?);
                end_item(offsets, bytes.len())
            }
            Kind::Enum(symbols) => {
                bytes.extend_from_slice(&symbols[cur.index(symbols.len())?]);
                end_item(offsets, bytes.len())
            }
            Kind::Int => {
                ints.push(cur.int()?);
                Ok(())
            }
            Kind::Long => {
                longs.push(cur.long()?);
                Ok(())
            }
            Kind::Record => {
                for child in children.iter_mut() {
                    child.read(cur)?;
                }
                Ok(())
            }
            Kind::Map => {
                let [keys, values] = children.as_mut_slice() else {
                    unreachable!("a map column has keys and values")
                };
                let first = keys.valid.len();
                loop {
                    let (count, end) = cur.block()?;
                    if count == 0 {
                        break;
                    }
                    // each entry takes at least a byte: the count is bounded by the input
                    for _ in 0..count {
                        keys.read(cur)?;
                        values.read(cur)?;
                    }
                    cur.block_end(end)?;
                }
                dedupe(keys, values, first)?;
                end_item(offsets, keys.valid.len())
            }
        }
    }

    /// A null row: Arrow's placeholders (an empty string or map, a zero, a record's children
    /// placeholders too).
    fn push_null(&mut self) {
        self.push_placeholder(false);
    }

    /// A placeholder value, valid or not. A null record's children are valid placeholders, as
    /// pyarrow makes them from None: a non-nullable child holding a null is refused by the
    /// Parquet writer even under a null parent.
    fn push_placeholder(&mut self, valid: bool) {
        self.valid.push(valid);
        match self.kind {
            Kind::Int => self.ints.push(0),
            Kind::Long => self.longs.push(0),
            Kind::Record => {
                for child in &mut self.children {
                    child.push_placeholder(true);
                }
            }
            _ => {
                let last = *self.offsets.last().expect("offsets start at 0");
                self.offsets.push(last);
            }
        }
    }

    /// Back to the first `rows` rows, whatever part of a row past them was appended.
    fn truncate(&mut self, rows: usize) {
        self.valid.truncate(rows);
        self.ints.truncate(rows);
        self.longs.truncate(rows);
        match self.kind {
            Kind::Record => {
                for child in &mut self.children {
                    child.truncate(rows);
                }
            }
            Kind::Int | Kind::Long => {}
            _ => {
                self.offsets.truncate(rows + 1);
                let end = self.offsets[rows] as usize;
                self.bytes.truncate(end);
                for child in &mut self.children {
                    child.truncate(end);
                }
            }
        }
    }

    /// The first `k` rows as (length, null count, validity bitmap or None, buffers, children),
    /// the buffers as `pyarrow.Array.from_buffers` takes them after the validity; removed here,
    /// the rest moved to the front.
    fn take<'py>(&mut self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyAny>> {
        let nulls = self.valid[..k].iter().filter(|v| !**v).count();
        let validity = (nulls > 0).then(|| bitmap(py, &self.valid[..k]));
        self.valid.drain(..k);
        let mut buffers: Vec<Bound<'py, PyBytes>> = Vec::new();
        let mut children: Vec<Bound<'py, PyAny>> = Vec::new();
        match self.kind {
            Kind::Int => {
                buffers.push(le_bytes(py, &self.ints[..k], i32::to_le_bytes));
                self.ints.drain(..k);
            }
            Kind::Long => {
                buffers.push(le_bytes(py, &self.longs[..k], i64::to_le_bytes));
                self.longs.drain(..k);
            }
            Kind::Record => {
                for child in &mut self.children {
                    children.push(child.take(py, k)?);
                }
            }
            _ => {
                let end = self.offsets[k];
                buffers.push(le_bytes(py, &self.offsets[..=k], i32::to_le_bytes));
                if !matches!(self.kind, Kind::Map) {
                    buffers.push(PyBytes::new(py, &self.bytes[..end as usize]));
                    self.bytes.drain(..end as usize);
                }
                for child in &mut self.children {
                    children.push(child.take(py, end as usize)?);
                }
                self.offsets.drain(..k);
                if end != 0 {
                    for offset in &mut self.offsets {
                        *offset -= end;
                    }
                }
            }
        }
        (k, nulls, validity, buffers, children)
            .into_pyobject(py)
            .map(Bound::into_any)
    }

    fn clear(&mut self) {
        self.truncate(0);
    }

    /// (name, "string" | "int" | "long" | "struct" | "map", nullable, children), for the Python
    /// side to hold against its Arrow schema.
    fn layout<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let kind = match self.kind {
            Kind::String | Kind::Identifier(_) | Kind::Enum(_) => "string",
            Kind::Int => "int",
            Kind::Long => "long",
            Kind::Record => "struct",
            Kind::Map => "map",
        };
        let mut children = Vec::with_capacity(self.children.len());
        for child in &self.children {
            children.push(child.layout(py)?);
        }
        (self.name.as_str(), kind, self.null_branch.is_some(), children)
            .into_pyobject(py)
            .map(Bound::into_any)
    }
}

/// Close a string's or map's row at `end` (bytes or entries so far).
fn end_item(offsets: &mut Vec<i32>, end: usize) -> Step<()> {
    offsets.push(i32::try_from(end).map_err(|_| full())?);
    Ok(())
}

fn key_at(keys: &Column, entry: usize) -> &[u8] {
    &keys.bytes[keys.offsets[entry] as usize..keys.offsets[entry + 1] as usize]
}

/// A map's entries from `first` on with each key once, where it first came and with its last
/// value: what the decoder's dict holds. Repeated keys are rare, so they are looked for first and
/// the entries rebuilt only when there are some.
fn dedupe(keys: &mut Column, values: &mut Column, first: usize) -> Step<()> {
    let end = keys.valid.len();
    let repeated = if end - first <= PAIRWISE_KEYS {
        (first..end).any(|i| (first..i).any(|j| key_at(keys, i) == key_at(keys, j)))
    } else {
        let mut seen = HashSet::with_capacity(end - first);
        !(first..end).all(|i| seen.insert(key_at(keys, i)))
    };
    if !repeated {
        return Ok(());
    }
    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut place: HashMap<Vec<u8>, usize> = HashMap::new();
    for i in first..end {
        let key = key_at(keys, i).to_vec();
        let value = key_at(values, i).to_vec();
        match place.get(&key) {
            Some(&at) => entries[at].1 = value,
            None => {
                place.insert(key.clone(), entries.len());
                entries.push((key, value));
            }
        }
    }
    keys.truncate(first);
    values.truncate(first);
    for (key, value) in entries {
        for (column, text) in [(&mut *keys, key), (&mut *values, value)] {
            column.valid.push(true);
            column.bytes.extend_from_slice(&text);
            end_item(&mut column.offsets, column.bytes.len())?;
        }
    }
    Ok(())
}

/// Arrow's validity bitmap: bit i (least significant first) set when row i is not null.
fn bitmap<'py>(py: Python<'py>, valid: &[bool]) -> Bound<'py, PyBytes> {
    PyBytes::new_with(py, valid.len().div_ceil(8), |out| {
        for (byte, flags) in out.iter_mut().zip(valid.chunks(8)) {
            *byte = flags
                .iter()
                .enumerate()
                .fold(0, |acc, (bit, &set)| acc | (u8::from(set) << bit));
        }
        Ok(())
    })
    .expect("filling bytes does not fail")
}

fn le_bytes<'py, T: Copy, const N: usize>(
    py: Python<'py>,
    values: &[T],
    to_bytes: fn(T) -> [u8; N],
) -> Bound<'py, PyBytes> {
    PyBytes::new_with(py, values.len() * N, |out| {
        for (chunk, &value) in out.chunks_exact_mut(N).zip(values) {
            chunk.copy_from_slice(&to_bytes(value));
        }
        Ok(())
    })
    .expect("filling bytes does not fail")
}

/// Records of a `Decoder`'s schema appended into Arrow columns (the module's comment says how).
#[pyclass(module = "pipeline._native")]
pub(crate) struct Rows {
    columns: Vec<Column>,
    /// The column of `key_field`, a top-level long: what `append` returns (a CallEvent's
    /// started_at, which places the row in the lake).
    key: usize,
    rows: usize,
    /// What `append_message` takes (`frame`): the schema ids of one record and of an array of
    /// it, and the largest event (a record's body, a batch message whole).
    single_ids: Vec<u32>,
    batch_ids: Vec<u32>,
    max_event_bytes: usize,
}

/// What `append_message` appended: one record's key field, or a batch's.
#[derive(IntoPyObject)]
enum Appended {
    One(i64),
    Many(Vec<i64>),
}

#[pymethods]
impl Rows {
    #[new]
    fn new(py: Python<'_>, decoder: &Bound<'_, Decoder>, key_field: &str) -> PyResult<Self> {
        let program = &decoder.get().program;
        let mut columns = Vec::new();
        for field in &program.records[program.root] {
            let name = field.name.bind(py).to_str()?.to_owned();
            // depth 2: a record of a batch is read inside its array, one deeper than alone
            columns.push(Column::compile(program, py, name, &field.node, 2)?);
        }
        let Some(key) = columns.iter().position(|c| c.name == key_field) else {
            return invalid(format!("no field {key_field:?}"));
        };
        if !matches!(columns[key].kind, Kind::Long) || columns[key].null_branch.is_some() {
            return invalid(format!("field {key_field:?} is not a long"));
        }
        Ok(Rows {
            columns,
            key,
            rows: 0,
            single_ids: Vec::new(),
            batch_ids: Vec::new(),
            max_event_bytes: 0,
        })
    }

    /// Set the framing `append_message` takes: Confluent's wire format with one of
    /// `single_ids` (one record) or `batch_ids` (an array of it), within `max_event_bytes`.
    fn frame(&mut self, single_ids: Vec<u32>, batch_ids: Vec<u32>, max_event_bytes: usize) {
        (self.single_ids, self.batch_ids, self.max_event_bytes) = (single_ids, batch_ids, max_event_bytes);
    }

    /// A whole message value: `append` for a record framed with a single id, `append_array` for
    /// an array framed with a batch id (an empty one taken as not appended); None for anything
    /// else, the columns as they were. pipeline/codec.py: `plain_framing` is the rule, headers
    /// apart (the caller judges those).
    fn append_message(&mut self, value: Option<Cow<'_, [u8]>>) -> PyResult<Option<Appended>> {
        let Some(value) = value else {
            return Ok(None);
        };
        if value.len() <= 5 || value[0] != 0 {
            return Ok(None);
        }
        let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        if self.single_ids.contains(&id) {
            if value.len() - 5 > self.max_event_bytes {
                return Ok(None);
            }
            return Ok(self.append(value, 5)?.map(Appended::One));
        }
        if self.batch_ids.contains(&id) && value.len() <= self.max_event_bytes {
            return Ok(self.append_array(value, 5)?.filter(|keys| !keys.is_empty()).map(Appended::Many));
        }
        Ok(None)
    }

    /// Append the record in `value[start:]` and give its key field; None, the columns as they
    /// were, unless `Decoder.decode` would give a record for those bytes.
    fn append(&mut self, value: Cow<'_, [u8]>, start: usize) -> PyResult<Option<i64>> {
        let Some(buf) = value.get(start..) else {
            return Ok(None);
        };
        let mut cur = Cursor::new(buf);
        let before = self.rows;
        let read = self.record(&mut cur);
        let kept = self.settle(before, read, &cur)?;
        Ok(kept.then(|| self.columns[self.key].longs[before]))
    }

    /// Append the records of an Avro array of the record in `value[start:]` (a batch message's
    /// body) and give their key fields; None, with nothing appended, unless `Decoder.decode`
    /// would give every one of them (identifiers included) and the bytes are exactly the array.
    fn append_array(&mut self, value: Cow<'_, [u8]>, start: usize) -> PyResult<Option<Vec<i64>>> {
        let Some(buf) = value.get(start..) else {
            return Ok(None);
        };
        let mut cur = Cursor::new(buf);
        let before = self.rows;
        let read = self.array(&mut cur);
        let kept = self.settle(before, read, &cur)?;
        Ok(kept.then(|| self.columns[self.key].longs[before..self.rows].to_vec()))
    }

    fn __len__(&self) -> usize {
        self.rows
    }

    /// The first `k` rows, removed, one (length, null count, validity, buffers, children) per
    /// column in schema order; the rest stay, in order.
    fn take<'py>(&mut self, py: Python<'py>, k: usize) -> PyResult<Bound<'py, PyList>> {
        if k > self.rows {
            return invalid(format!("take {k} of {} rows", self.rows));
        }
        let mut out = Vec::with_capacity(self.columns.len());
        for column in &mut self.columns {
            out.push(column.take(py, k)?);
        }
        self.rows -= k;
        PyList::new(py, out)
    }

    fn clear(&mut self) {
        for column in &mut self.columns {
            column.clear();
        }
        self.rows = 0;
    }

    /// One (name, kind, nullable, children) per column: kind "string", "int", "long",
    /// "struct" or "map" (whose children are "key" and "value").
    fn layout<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            out.push(column.layout(py)?);
        }
        PyList::new(py, out)
    }
}

impl Rows {
    fn record(&mut self, cur: &mut Cursor<'_>) -> Step<()> {
        for column in &mut self.columns {
            column.read(cur)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// The blocks of an array of records, as `Decoder.decode_array` reads them. Each record takes
    /// at least a byte (it has the key, a long): the counts are bounded by the input.
    fn array(&mut self, cur: &mut Cursor<'_>) -> Step<()> {
        loop {
            let (count, end) = cur.block()?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                self.record(cur)?;
            }
            cur.block_end(end)?;
        }
    }

    /// Keep what a read appended if it took the whole body (true), or else drop it all: the
    /// columns back to `before` rows. A Python error (a full column) is raised after the drop.
    fn settle(&mut self, before: usize, read: Step<()>, cur: &Cursor<'_>) -> PyResult<bool> {
        match read {
            Ok(()) if cur.at_end() => Ok(true),
            Ok(()) => self.settle(before, Err(Stop::Bad), cur),
            Err(stop) => {
                for column in &mut self.columns {
                    column.truncate(before);
                }
                self.rows = before;
                match stop {
                    Stop::Bad => Ok(false),
                    Stop::Python(err) => Err(err),
                }
            }
        }
    }
}
