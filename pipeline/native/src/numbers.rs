//! Phone numbers read from their digits: `pipeline.numbers.lookup` in native code, for the new
//! spellings the worker meets on nearly every call (docs/ARCHITECTURE.md, "The chain per
//! column"). The steps, their order and every pattern are the Python form's: a region's plan
//! arrives from it as pattern strings (`pipeline.numbers.native_spec`), asked for the first time
//! a region is needed, and tests/unit/test_numbers.py holds the two forms to the same answers.
//! Anything the Python form hands to `phonenumbers.parse` this one hands back as the fallback
//! marker too, and so does a spelling outside ASCII or a region whose patterns do not compile
//! here: the caller then goes the Python way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use regex::bytes::{Regex, RegexBuilder};

const MIN_NSN: usize = 2;
const MAX_NSN: usize = 17;
const NON_GEO: &str = "001";

/// One number type to try: its name, its pattern, and a second pattern that must match too
/// (fixed line or mobile, where the two differ).
struct Kind {
    name: Py<PyString>,
    pattern: usize,
    also: Option<usize>,
}

/// A region's (or non-geographic calling code's) metadata, compiled: `pipeline.numbers.Plan`.
struct Plan {
    country_code: u32,
    idd: Option<Regex>,
    prefix: Option<Regex>,
    transform: Option<Vec<u8>>,
    general: Option<Regex>,
    lengths: Vec<i64>,
    local_lengths: Vec<i64>,
    leading: Option<Regex>,
    patterns: Vec<Regex>,
    // per national number length: the general pattern's index, then the types in order
    kinds: HashMap<usize, (usize, Vec<Kind>)>,
}

fn build(pattern: &str, whole: bool) -> Option<Regex> {
    let anchored = if whole { format!("^(?:{pattern})$") } else { format!("^(?:{pattern})") };
    // ASCII digits only reach the patterns: `\d` needs no Unicode tables
    RegexBuilder::new(&anchored).unicode(false).build().ok()
}

impl Plan {
    /// The plan from `native_spec`'s tuple; None when a pattern does not compile here.
    fn from_spec(spec: &Bound<'_, PyTuple>) -> PyResult<Option<Plan>> {
        let (country_code, idd, prefix, transform, general, lengths, local_lengths, leading, kinds): Spec<'_> =
            spec.extract()?;
        let optional = |p: &Option<String>, whole: bool| match p {
            None => Some(None),
            Some(p) => build(p, whole).map(Some),
        };
        let (Some(idd), Some(prefix), Some(general), Some(leading)) = (
            optional(&idd, false),
            optional(&prefix, false),
            optional(&general, true),
            optional(&leading, false),
        ) else {
            return Ok(None);
        };
        let mut patterns: Vec<Regex> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut intern = |p: &str| -> Option<usize> {
            if let Some(&at) = index.get(p) {
                return Some(at);
            }
            patterns.push(build(p, true)?);
            index.insert(p.to_owned(), patterns.len() - 1);
            Some(patterns.len() - 1)
        };
        let mut per_length = HashMap::new();
        for (length, (general, types)) in kinds {
            let Some(general) = intern(&general) else { return Ok(None) };
            let mut ordered = Vec::with_capacity(types.len());
            for (name, pattern, also) in types {
                let Some(pattern) = intern(&pattern) else { return Ok(None) };
                let also = match also {
                    None => None,
                    Some(a) => match intern(&a) {
                        None => return Ok(None),
                        found => found,
                    },
                };
                ordered.push(Kind { name: name.unbind(), pattern, also });
            }
            per_length.insert(length, (general, ordered));
        }
        let mut lengths = lengths;
        lengths.sort_unstable();
        Ok(Some(Plan {
            country_code,
            idd,
            prefix,
            transform: transform.map(String::into_bytes),
            general,
            lengths,
            local_lengths,
            leading,
            patterns,
            kinds: per_length,
        }))
    }

    /// number_type of a national significant number: the first type whose patterns match.
    fn kind(&self, nsn: &[u8]) -> Option<&Kind> {
        let (general, kinds) = self.kinds.get(&nsn.len())?;
        if !self.patterns[*general].is_match(nsn) {
            return None;
        }
        kinds.iter().find(|k| {
            self.patterns[k.pattern].is_match(nsn) && k.also.is_none_or(|a| self.patterns[a].is_match(nsn))
        })
    }

    fn fits(&self, number: &[u8]) -> bool {
        self.general.as_ref().is_some_and(|g| g.is_match(number))
    }

    /// The number without trunk prefix and carrier code, when what is left still fits the
    /// general pattern (or the whole did not); None when nothing is stripped.
    fn strip_prefix(&self, number: &[u8]) -> Option<Vec<u8>> {
        let prefix = self.prefix.as_ref()?;
        if number.is_empty() {
            return None;
        }
        let found = prefix.captures(number)?;
        let whole = found.get(0)?;
        let viable = self.fits(number);
        let groups = prefix.captures_len() - 1;
        let rest = match &self.transform {
            Some(rule) if !rule.is_empty() && groups > 0 && found.get(groups).is_some() => {
                prefix.replacen(number, 1, rule.as_slice()).into_owned()
            }
            _ => {
                if whole.end() == 0 {
                    return None; // the Python form's `number[0:]` is the number itself
                }
                number[whole.end()..].to_vec()
            }
        };
        if viable && !self.fits(&rest) {
            return None;
        }
        Some(rest)
    }

    fn length_ok_to_strip(&self, number: &[u8]) -> bool {
        let n = number.len() as i64;
        let lengths = &self.lengths;
        if self.local_lengths.contains(&n) || lengths.is_empty() || lengths[0] == -1 {
            return false;
        }
        if lengths[0] == n {
            return true;
        }
        if lengths[0] > n {
            return false;
        }
        if lengths[lengths.len() - 1] < n {
            return true;
        }
        lengths[1..].contains(&n)
    }
}

/// A region's plan as `pipeline.numbers.native_spec` gives it: calling code, international
/// prefix, national prefix for parsing, its transform rule, general pattern, possible lengths,
/// local-only lengths, leading digits, and per length the general pattern and the types.
type Spec<'py> = (
    u32,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<i64>,
    Vec<i64>,
    Option<String>,
    HashMap<usize, (String, Vec<(Bound<'py, PyString>, String, Option<String>)>)>,
);

/// The plans met so far, by region (and calling code, for "001"); None where there is none.
type Plans = HashMap<(String, u32), Option<Arc<Plan>>>;

enum Answer {
    Valid(String, String, u32, Py<PyString>),
    Invalid,
    Fallback,
}

/// `pipeline.numbers.lookup` over one spelling or a list of them, the plans asked of `spec`
/// (`pipeline.numbers.native_spec`) once per region.
#[pyclass(frozen)]
pub struct NumberReader {
    spec: Py<PyAny>,
    fallback: Py<PyAny>,
    regions_of: HashMap<u32, Vec<String>>,
    supported: HashSet<String>,
    plans: Mutex<Plans>,
}

impl NumberReader {
    /// The plan of a region (country code only for "001"), asked of Python the first time; the
    /// lock is never held while Python runs.
    fn plan(&self, py: Python<'_>, region: &str, country_code: u32) -> PyResult<Option<Arc<Plan>>> {
        let key = (region.to_owned(), if region == NON_GEO { country_code } else { 0 });
        if let Some(found) = self.plans.lock().expect("no panic while held").get(&key) {
            return Ok(found.clone());
        }
        let spec = self.spec.bind(py).call1((region, key.1))?;
        let plan = if spec.is_none() { None } else { Plan::from_spec(spec.cast::<PyTuple>()?)?.map(Arc::new) };
        self.plans.lock().expect("no panic while held").insert(key, plan.clone());
        Ok(plan)
    }

    fn lookup(&self, py: Python<'_>, text: &str, region: Option<&str>) -> PyResult<Answer> {
        let bytes = text.as_bytes();
        let spelled = |b: &u8| b.is_ascii_digit() || b" ().-".contains(b);
        let body = bytes.strip_prefix(b"+").unwrap_or(bytes);
        if bytes.len() > 250 || body.is_empty() || !body.iter().all(spelled) {
            return Ok(Answer::Fallback);
        }
        let digits: Vec<u8> = body.iter().copied().filter(u8::is_ascii_digit).collect();
        if !(3..=MAX_NSN + 3).contains(&digits.len()) {
            return Ok(Answer::Fallback);
        }
        if bytes[0] == b'+' {
            if digits[0] == b'0' {
                return Ok(Answer::Fallback);
            }
            let Some((size, cc)) = (1..=3).find_map(|size| {
                let cc = digits[..size].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                self.regions_of.contains_key(&cc).then_some((size, cc))
            }) else {
                return Ok(Answer::Fallback);
            };
            let country = &self.regions_of[&cc];
            let Some(first) = country.first() else { return Ok(Answer::Fallback) };
            let Some(main) = self.plan(py, first, cc)? else { return Ok(Answer::Fallback) };
            return self.finish(py, &main, cc, digits[size..].to_vec(), country);
        }
        let Some(region) = region.filter(|r| self.supported.contains(*r)) else {
            return Ok(Answer::Fallback);
        };
        let Some(plan) = self.plan(py, region, 0)? else { return Ok(Answer::Fallback) };
        if plan.idd.as_ref().is_some_and(|idd| idd.is_match(&digits))
            || digits.starts_with(plan.country_code.to_string().as_bytes())
        {
            return Ok(Answer::Fallback);
        }
        let empty = Vec::new();
        let country = self.regions_of.get(&plan.country_code).unwrap_or(&empty);
        self.finish(py, &plan, plan.country_code, digits, country)
    }

    fn finish(&self, py: Python<'_>, plan: &Plan, cc: u32, number: Vec<u8>, country: &[String]) -> PyResult<Answer> {
        if number.len() < MIN_NSN {
            return Ok(Answer::Fallback);
        }
        let number = match plan.strip_prefix(&number) {
            Some(stripped) if plan.length_ok_to_strip(&stripped) => stripped,
            _ => number,
        };
        if !(MIN_NSN..=MAX_NSN).contains(&number.len()) {
            return Ok(Answer::Fallback);
        }
        // region_code_for_number: the only region of the code, or the first whose leading
        // digits match, or else the first in which the number has a type
        let (region, found) = if country.len() == 1 {
            match self.plan(py, &country[0], cc)? {
                Some(found) => (country[0].as_str(), found),
                None => return Ok(Answer::Fallback),
            }
        } else {
            let mut chosen = None;
            for name in country {
                let Some(candidate) = self.plan(py, name, cc)? else { return Ok(Answer::Fallback) };
                let matches = match &candidate.leading {
                    Some(leading) => leading.is_match(&number),
                    None => candidate.kind(&number).is_some(),
                };
                if matches {
                    chosen = Some((name.as_str(), candidate));
                    break;
                }
            }
            match chosen {
                Some(chosen) => chosen,
                None => return Ok(Answer::Invalid),
            }
        };
        let Some(kind) = found.kind(&number) else { return Ok(Answer::Invalid) };
        let digits = std::str::from_utf8(&number).expect("ASCII digits");
        Ok(Answer::Valid(format!("+{cc}{digits}"), region.to_owned(), cc, kind.name.clone_ref(py)))
    }

    /// The answer for one text: a text with no UTF-8 form (a lone surrogate) is the Python
    /// form's to judge.
    fn read<'py>(&self, py: Python<'py>, text: &Bound<'py, PyString>, region: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        let answer = match text.to_str() {
            Ok(text) => self.lookup(py, text, region)?,
            Err(_) => Answer::Fallback,
        };
        self.answer(py, answer)
    }

    fn answer<'py>(&self, py: Python<'py>, answer: Answer) -> PyResult<Bound<'py, PyAny>> {
        Ok(match answer {
            Answer::Valid(e164, region, cc, kind) => (e164, region, cc, kind).into_pyobject(py)?.into_any(),
            Answer::Invalid => py.None().into_bound(py),
            Answer::Fallback => self.fallback.bind(py).clone(),
        })
    }
}

#[pymethods]
impl NumberReader {
    /// `spec(region, country_code)`: a region's plan as pattern strings, or None;
    /// `regions_of`: phonenumbers' COUNTRY_CODE_TO_REGION_CODE; `supported`: its regions;
    /// `fallback`: what to answer where only phonenumbers.parse can say.
    #[new]
    fn new(
        spec: Py<PyAny>,
        regions_of: HashMap<u32, Vec<String>>,
        supported: HashSet<String>,
        fallback: Py<PyAny>,
    ) -> Self {
        NumberReader { spec, fallback, regions_of, supported, plans: Mutex::new(HashMap::new()) }
    }

    /// `lookup(text, region)`: (E.164, region, country code, type), None, or the fallback (also
    /// for a text that is no UTF-8, a lone surrogate: the Python form's to judge).
    #[pyo3(name = "lookup")]
    fn lookup_one<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyString>,
        region: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.read(py, text, region)
    }

    /// `lookup` of each text of a list, in one region (None: international spellings).
    fn lookup_many<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyList>,
        region: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for text in texts.iter() {
            let text = text.cast::<PyString>().map_err(|_| PyValueError::new_err("a spelling is a str"))?;
            out.append(self.read(py, text, region)?)?;
        }
        Ok(out)
    }
}
