//! `pipeline._native`: an Avro decoder for the stream worker's hot path.
//!
//! `pipeline/codec.py: plain_record` decodes each Kafka message (one record in the Confluent wire
//! format) with `fastavro.schemaless_reader`; that is the largest cost per event of the chain. A
//! `Decoder` compiles one record schema (the JSON of `schemas.parsed(name)`) into a tree of nodes
//! once, then decodes bodies into the same dicts fastavro gives: same keys in the same order, same
//! Python types and values. Keys and enum symbols are Python strings interned at compile time, so
//! a record allocates only its values.
//!
//! The input is untrusted carrier bytes, so the contract is soundness: when `decode` returns a dict,
//! fastavro returns an equal one; when fastavro raises, `decode` returns None. `decode` also returns
//! None for some bytes fastavro reads without complaint but no Avro writer produces (a negative enum
//! or union index, which fastavro takes as Python's index from the end; an "int" outside 32 bits;
//! a 10-byte varint whose last byte carries bits past 64); the caller then goes the fastavro way,
//! which gives that record or names the rejection. A schema it cannot mirror exactly (fixed,
//! logical types, protocol errors) raises ValueError at compile time so the caller keeps fastavro.

use std::borrow::Cow;
use std::collections::HashMap;

mod numbers;
mod rows;
mod tokens;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyList, PyString};

/// Nesting (records, arrays, maps, unions) a decode follows before it gives up: only a recursive
/// schema nests without bound, and the native stack must not be what stops hostile input.
const MAX_DEPTH: u32 = 64;

/// Items of arrays whose items may take no bytes (null, a record of nulls) that one decode makes at
/// most: a count is otherwise bounded by the bytes left, such an array's only by its varint.
const MAX_EMPTY_ITEMS: u64 = 1 << 16;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    /// A string that must also be plainly nameable (`pipeline/identifiers.py`): 1 to the given
    /// number of printable ASCII characters, not all spaces; anything else is declined, so the
    /// caller's fastavro path names it (or, not ASCII, judges it by Python's rules).
    Identifier(usize),
    Enum(usize),
    Record(usize),
    Array { items: Box<Node>, may_be_empty: bool },
    Map(Box<Node>),
    Union(Vec<Node>),
}

struct Field {
    name: Py<PyString>,
    node: Node,
}

#[derive(Clone, Copy)]
enum Named {
    Record(usize),
    Enum(usize),
}

/// The compiled schema: records and enums by index, so that named references (recursion too) are
/// indices, not copies.
struct Program {
    records: Vec<Vec<Field>>,
    enums: Vec<Vec<Py<PyString>>>,
    root: usize,
    /// An array of the root record: the body of a batch message (`Decoder.decode_array`).
    batch: Node,
}

fn invalid<T>(message: String) -> PyResult<T> {
    Err(PyValueError::new_err(message))
}

struct Compiler<'py> {
    py: Python<'py>,
    names: HashMap<String, Named>,
    records: Vec<Option<Vec<Field>>>,
    enums: Vec<Vec<Py<PyString>>>,
}

impl<'py> Compiler<'py> {
    fn node(&mut self, schema: &Bound<'py, PyAny>, namespace: &str) -> PyResult<Node> {
        if let Ok(name) = schema.cast::<PyString>() {
            return self.by_name(name.to_str()?, namespace);
        }
        if let Ok(branches) = schema.cast::<PyList>() {
            let mut nodes = Vec::with_capacity(branches.len());
            for branch in branches.iter() {
                if branch.is_instance_of::<PyList>() {
                    return invalid("a union directly inside a union".into());
                }
                nodes.push(self.node(&branch, namespace)?);
            }
            return Ok(Node::Union(nodes));
        }
        let Ok(dict) = schema.cast::<PyDict>() else {
            return invalid(format!("not a schema: {schema}"));
        };
        if dict.contains("logicalType")? {
            // fastavro converts some logical types (datetimes, decimals, uuids) and not others
            return invalid("logical types are left to fastavro".into());
        }
        let kind = text(dict, "type")?;
        match kind.as_str() {
            "record" => self.record(dict, namespace),
            "enum" => self.enumeration(dict, namespace),
            "array" => {
                let items = self.node(&required(dict, "items")?, namespace)?;
                let may_be_empty = self.may_be_empty(&items, &mut Vec::new());
                Ok(Node::Array {
                    items: Box::new(items),
                    may_be_empty,
                })
            }
            "map" => Ok(Node::Map(Box::new(
                self.node(&required(dict, "values")?, namespace)?,
            ))),
            other => self.by_name(other, namespace), // {"type": "long"}, or a named type's name
        }
    }

    fn by_name(&mut self, name: &str, namespace: &str) -> PyResult<Node> {
        Ok(match name {
            "null" => Node::Null,
            "boolean" => Node::Boolean,
            "int" => Node::Int,
            "long" => Node::Long,
            "float" => Node::Float,
            "double" => Node::Double,
            "bytes" => Node::Bytes,
            "string" => Node::String,
            _ => {
                let qualified = format!("{namespace}.{name}");
                let found = if name.contains('.') || namespace.is_empty() {
                    self.names.get(name)
                } else {
                    self.names.get(&qualified).or_else(|| self.names.get(name))
                };
                match found {
                    Some(Named::Record(i)) => Node::Record(*i),
                    Some(Named::Enum(i)) => Node::Enum(*i),
                    None => return invalid(format!("unsupported or undefined type {name:?}")),
                }
            }
        })
    }

    /// The full name of a named type and the namespace its own references resolve in.
    fn define(&mut self, dict: &Bound<'py, PyDict>, namespace: &str, named: Named) -> PyResult<String> {
        let name = text(dict, "name")?;
        let full = if name.contains('.') {
            name
        } else {
            let own = match dict.get_item("namespace")? {
                Some(ns) if !ns.is_none() => ns.cast::<PyString>()?.to_str()?.to_owned(),
                _ => namespace.to_owned(),
            };
            if own.is_empty() {
                name
            } else {
                format!("{own}.{name}")
            }
        };
        if PRIMITIVES.contains(&full.as_str()) || self.names.insert(full.clone(), named).is_some() {
            return invalid(format!("type {full:?} is defined twice"));
        }
        Ok(full
            .rsplit_once('.')
            .map_or(String::new(), |(ns, _)| ns.to_owned()))
    }

    fn record(&mut self, dict: &Bound<'py, PyDict>, namespace: &str) -> PyResult<Node> {
        let index = self.records.len();
        self.records.push(None); // defined before its fields, which may refer to it
        let inner = self.define(dict, namespace, Named::Record(index))?;
        let fields_any = required(dict, "fields")?;
        let fields = fields_any.cast::<PyList>()?;
        let mut out: Vec<Field> = Vec::with_capacity(fields.len());
        for field in fields.iter() {
            let field = field.cast::<PyDict>()?;
            let name = text(field, "name")?;
            if out
                .iter()
                .any(|f| f.name.bind(self.py).to_str().is_ok_and(|n| n == name))
            {
                return invalid(format!("field {name:?} appears twice"));
            }
            let node = self.node(&required(field, "type")?, &inner)?;
            out.push(Field {
                name: PyString::intern(self.py, &name).unbind(),
                node,
            });
        }
        self.records[index] = Some(out);
        Ok(Node::Record(index))
    }

    fn enumeration(&mut self, dict: &Bound<'py, PyDict>, namespace: &str) -> PyResult<Node> {
        let index = self.enums.len();
        self.define(dict, namespace, Named::Enum(index))?;
        let symbols_any = required(dict, "symbols")?;
        let symbols = symbols_any.cast::<PyList>()?;
        let mut out = Vec::with_capacity(symbols.len());
        for symbol in symbols.iter() {
            out.push(PyString::intern(self.py, symbol.cast::<PyString>()?.to_str()?).unbind());
        }
        self.enums.push(out);
        Ok(Node::Enum(index))
    }

    /// Mark the string field at `path` (from record `record`, through records and unions holding
    /// one record) an identifier of at most `limit` characters. A record type is marked wherever
    /// it appears: checking more than asked only declines more.
    fn identify(&mut self, record: usize, path: &[String], limit: usize) -> PyResult<()> {
        let Some((name, rest)) = path.split_first() else {
            return invalid("an empty identifier path".into());
        };
        let py = self.py;
        let fields = self.records[record].as_mut().expect("compiled");
        let Some(field) = fields
            .iter_mut()
            .find(|f| f.name.bind(py).to_str().is_ok_and(|n| n == name))
        else {
            return invalid(format!("no field {name:?} for an identifier"));
        };
        if rest.is_empty() {
            return match field.node {
                Node::String => {
                    field.node = Node::Identifier(limit);
                    Ok(())
                }
                _ => invalid(format!("identifier {name:?} is not a string")),
            };
        }
        let inner = match &field.node {
            Node::Record(i) => *i,
            Node::Union(branches) => {
                let mut records = branches.iter().filter_map(|b| match b {
                    Node::Record(i) => Some(*i),
                    _ => None,
                });
                match (records.next(), records.next()) {
                    (Some(i), None) => i,
                    _ => return invalid(format!("identifier path through {name:?} is ambiguous")),
                }
            }
            _ => return invalid(format!("identifier path through {name:?} is not a record")),
        };
        self.identify(inner, rest, limit)
    }

    /// Whether a value of `node` can be encoded in no bytes; `seen` holds the records being asked
    /// about, so a recursive record answers for its non-recursive fields.
    fn may_be_empty(&self, node: &Node, seen: &mut Vec<usize>) -> bool {
        match node {
            Node::Null => true,
            Node::Record(i) => {
                if seen.contains(i) {
                    return false; // a value that nests itself takes at least the bytes of its fields
                }
                seen.push(*i);
                let empty = match &self.records[*i] {
                    Some(fields) => fields.iter().all(|f| self.may_be_empty(&f.node, seen)),
                    None => false, // still being compiled: it holds this array, which takes a byte
                };
                seen.pop();
                empty
            }
            _ => false,
        }
    }
}

fn required<'py>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    match dict.get_item(key)? {
        Some(value) => Ok(value),
        None => invalid(format!("schema node without {key:?}: {dict}")),
    }
}

fn text(dict: &Bound<'_, PyDict>, key: &str) -> PyResult<String> {
    let value = required(dict, key)?;
    match value.cast::<PyString>() {
        Ok(s) => Ok(s.to_str()?.to_owned()),
        Err(_) => invalid(format!("{key:?} is not a string: {value}")),
    }
}

/// Why a decode stopped: the bytes are not one record (None to the caller), or Python failed
/// (memory), which is raised.
enum Stop {
    Bad,
    Python(PyErr),
}

impl From<PyErr> for Stop {
    fn from(err: PyErr) -> Self {
        Stop::Python(err)
    }
}

type Step<T> = Result<T, Stop>;

/// The bytes of one body and how far a read has come: the wire primitives that both readers
/// (`Reader`'s dicts here, `rows::Rows`' columns) go by, so that they accept the same bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn byte(&mut self) -> Step<u8> {
        let b = *self.buf.get(self.pos).ok_or(Stop::Bad)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(Stop::Bad)?;
        let out = self.buf.get(self.pos..end).ok_or(Stop::Bad)?;
        self.pos = end;
        Ok(out)
    }

    /// A zigzag varint of at most 10 bytes whose bits fit 64 (fastavro reads longer ones and
    /// drops or wraps the bits past 64).
    fn long(&mut self) -> Step<i64> {
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(Stop::Bad);
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
            shift += 7;
        }
    }

    /// An Avro "int": a long that fits 32 bits (fastavro takes wider ones as they are).
    fn int(&mut self) -> Step<i32> {
        i32::try_from(self.long()?).map_err(|_| Stop::Bad)
    }

    fn length(&mut self) -> Step<usize> {
        usize::try_from(self.long()?).map_err(|_| Stop::Bad)
    }

    fn index(&mut self, len: usize) -> Step<usize> {
        let i = self.length()?;
        if i < len { Ok(i) } else { Err(Stop::Bad) }
    }

    /// The bytes of a string, which must be UTF-8.
    fn text(&mut self) -> Step<&'a str> {
        let n = self.length()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| Stop::Bad)
    }

    /// The bytes of an identifier string (`Node::Identifier`), declined unless plainly nameable:
    /// 1 to `limit` printable ASCII characters, not all spaces. Printable ASCII is UTF-8 as it is.
    fn identifier(&mut self, limit: usize) -> Step<&'a [u8]> {
        let n = self.length()?;
        let raw = self.take(n)?;
        let nameable = (1..=limit).contains(&n)
            && raw.iter().all(|b| (0x20..0x7f).contains(b))
            && raw.iter().any(|&b| b != b' ');
        if nameable { Ok(raw) } else { Err(Stop::Bad) }
    }

    /// The item count of the next block of an array or map; 0 ends it. A negative count is
    /// followed by the block's size in bytes, which must be what the block takes (`block_end`).
    fn block(&mut self) -> Step<(u64, Option<usize>)> {
        let count = self.long()?;
        if count >= 0 {
            return Ok((count as u64, None));
        }
        let count = count.checked_neg().ok_or(Stop::Bad)? as u64;
        let size = self.length()?;
        Ok((count, Some(self.pos.checked_add(size).ok_or(Stop::Bad)?)))
    }

    fn block_end(&self, end: Option<usize>) -> Step<()> {
        match end {
            Some(end) if end != self.pos => Err(Stop::Bad),
            _ => Ok(()),
        }
    }

    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

struct Reader<'a, 'py> {
    py: Python<'py>,
    program: &'a Program,
    cur: Cursor<'a>,
    depth: u32,
    empty_items: u64,
}

impl<'a, 'py> Reader<'a, 'py> {
    fn deeper(&mut self) -> Step<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(Stop::Bad)
        } else {
            Ok(())
        }
    }

    fn record(&mut self, index: usize) -> Step<Bound<'py, PyDict>> {
        self.deeper()?;
        let dict = PyDict::new(self.py);
        for field in &self.program.records[index] {
            let value = self.value(&field.node)?;
            dict.set_item(field.name.bind(self.py), value)?;
        }
        self.depth -= 1;
        Ok(dict)
    }

    fn value(&mut self, node: &Node) -> Step<Bound<'py, PyAny>> {
        let py = self.py;
        Ok(match node {
            Node::Null => py.None().into_bound(py),
            Node::Boolean => PyBool::new(py, self.cur.byte()? != 0).to_owned().into_any(),
            Node::Int => {
                let Ok(int) = self.cur.int()?.into_pyobject(py);
                int.into_any()
            }
            Node::Long => {
                let Ok(int) = self.cur.long()?.into_pyobject(py);
                int.into_any()
            }
            Node::Float => {
                let raw = self.cur.take(4)?.try_into().map_err(|_| Stop::Bad)?;
                PyFloat::new(py, f64::from(f32::from_le_bytes(raw))).into_any()
            }
            Node::Double => {
                let raw = self.cur.take(8)?.try_into().map_err(|_| Stop::Bad)?;
                PyFloat::new(py, f64::from_le_bytes(raw)).into_any()
            }
            Node::Bytes => {
                let n = self.cur.length()?;
                PyBytes::new(py, self.cur.take(n)?).into_any()
            }
            Node::String => PyString::new(py, self.cur.text()?).into_any(),
            Node::Identifier(limit) => {
                let raw = self.cur.identifier(*limit)?;
                PyString::new(py, std::str::from_utf8(raw).map_err(|_| Stop::Bad)?).into_any()
            }
            Node::Enum(i) => {
                let symbols = &self.program.enums[*i];
                symbols[self.cur.index(symbols.len())?]
                    .bind(py)
                    .clone()
                    .into_any()
            }
            Node::Record(i) => self.record(*i)?.into_any(),
            Node::Union(branches) => {
                self.deeper()?;
                let branch = &branches[self.cur.index(branches.len())?];
                let value = self.value(branch)?;
                self.depth -= 1;
                value
            }
            Node::Array { items, may_be_empty } => {
                self.deeper()?;
                let list = PyList::empty(py);
                loop {
                    let (count, end) = self.cur.block()?;
                    if count == 0 {
                        break;
                    }
                    if *may_be_empty {
                        self.empty_items = self.empty_items.saturating_add(count);
                        if self.empty_items > MAX_EMPTY_ITEMS {
                            return Err(Stop::Bad);
                        }
                    }
                    for _ in 0..count {
                        list.append(self.value(items)?)?;
                    }
                    self.cur.block_end(end)?;
                }
                self.depth -= 1;
                list.into_any()
            }
            Node::Map(values) => {
                self.deeper()?;
                let dict = PyDict::new(py);
                loop {
                    let (count, end) = self.cur.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        // at least a byte each: the count is bounded by the input
                        let key = PyString::new(py, self.cur.text()?);
                        dict.set_item(key, self.value(values)?)?;
                    }
                    self.cur.block_end(end)?;
                }
                self.depth -= 1;
                dict.into_any()
            }
        })
    }
}

/// An Avro record schema compiled for decoding; `decode` gives fastavro's dict or None.
#[pyclass(frozen, module = "pipeline._native")]
struct Decoder {
    program: Program,
}

#[pymethods]
impl Decoder {
    /// `identifiers`: (path of field names from the root record, length limit) of the string
    /// fields a record is declined for unless they are plainly nameable (`Node::Identifier`).
    #[new]
    #[pyo3(signature = (schema_json, identifiers = Vec::new()))]
    fn new(py: Python<'_>, schema_json: &str, identifiers: Vec<(Vec<String>, usize)>) -> PyResult<Self> {
        let schema = py.import("json")?.call_method1("loads", (schema_json,))?;
        let mut compiler = Compiler {
            py,
            names: HashMap::new(),
            records: Vec::new(),
            enums: Vec::new(),
        };
        let Node::Record(root) = compiler.node(&schema, "")? else {
            return invalid("the schema is not a record".into());
        };
        for (path, limit) in &identifiers {
            compiler.identify(root, path, *limit)?;
        }
        let batch = Node::Array {
            items: Box::new(Node::Record(root)),
            may_be_empty: compiler.may_be_empty(&Node::Record(root), &mut Vec::new()),
        };
        let records = compiler
            .records
            .into_iter()
            .map(|r| r.unwrap_or_default())
            .collect();
        Ok(Decoder {
            program: Program {
                records,
                enums: compiler.enums,
                root,
                batch,
            },
        })
    }

    /// The record in `value[start:]`, or None unless those bytes are exactly one record.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        value: Cow<'_, [u8]>,
        start: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.read(py, &value, start, None)
    }

    /// The records of an Avro array of the record in `value[start:]` (a batch message's body),
    /// or None unless those bytes are exactly one such array.
    fn decode_array<'py>(
        &self,
        py: Python<'py>,
        value: Cow<'_, [u8]>,
        start: usize,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.read(py, &value, start, Some(&self.program.batch))
    }
}

impl Decoder {
    /// The root record (`node` None) or `node` read from `value[start:]`, which it must take whole.
    fn read<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        start: usize,
        node: Option<&Node>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(buf) = value.get(start..) else {
            return Ok(None);
        };
        let mut reader = Reader {
            py,
            program: &self.program,
            cur: Cursor::new(buf),
            depth: 0,
            empty_items: 0,
        };
        let read = match node {
            None => reader.record(self.program.root).map(Bound::into_any),
            Some(node) => reader.value(node),
        };
        match read {
            Ok(found) if reader.cur.at_end() => Ok(Some(found)),
            Ok(_) | Err(Stop::Bad) => Ok(None),
            Err(Stop::Python(err)) => Err(err),
        }
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add_class::<rows::Rows>()?;
    m.add_class::<numbers::NumberReader>()?;
    m.add_function(wrap_pyfunction!(tokens::tokens, m)?)
}
