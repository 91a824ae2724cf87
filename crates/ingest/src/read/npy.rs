//! NumPy `.npy` files holding a 2-D float array in C order.
//!
//! A hand-written header parser instead of a crate: the format is 10–12 fixed bytes
//! plus a Python dict literal with three keys, so a ~150-line parser with every
//! length and index checked is smaller to audit than a dependency, and it is fuzzed
//! by a property test below. Supported: format versions 1.0–3.0, `descr` `<f2`,
//! `<f4`, `<f8` (and the big-endian `>` forms), `fortran_order: False`, 2-D shapes.

use super::Ctx;
use super::dense::{DenseSource, Elem, Layout};
use crate::error::{Error, Result};
use kernelize_store::MAX_DIM;
use std::io::Read;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Largest header accepted (numpy itself refuses more than 10,000 bytes by default).
const MAX_HEADER: usize = 1 << 20;

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub elem: Elem,
    pub big_endian: bool,
    pub shape: Vec<u64>,
    /// Bytes before the data (magic, version, length field, header text).
    pub data_offset: u64,
}

pub(crate) fn open(ctx: Ctx, file_len: u64) -> Result<DenseSource> {
    let mut file = fs_err::File::open(&ctx.path).map_err(|e| Error::io(&ctx.path, e))?;
    let mut bytes = Vec::with_capacity(128);
    (&mut file).take(12).read_to_end(&mut bytes).map_err(|e| Error::io(&ctx.path, e))?;
    let len = header_len(&bytes).map_err(|r| Error::file(&ctx.path, r))?;
    let rest = (prefix_len(&bytes) + len).saturating_sub(bytes.len());
    (&mut file).take(rest as u64).read_to_end(&mut bytes).map_err(|e| Error::io(&ctx.path, e))?;
    let header = parse(&bytes).map_err(|r| Error::file(&ctx.path, r))?;
    let layout = layout(&header, file_len).map_err(|r| Error::file(&ctx.path, r))?;
    DenseSource::open(ctx, layout)
}

/// Bytes before the header text: 10 for version 1, 12 for versions 2 and 3.
fn prefix_len(bytes: &[u8]) -> usize {
    if bytes.get(6) == Some(&1) { 10 } else { 12 }
}

/// Checks magic and version; returns the header text length.
fn header_len(bytes: &[u8]) -> Result<usize, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (bad magic)".into());
    }
    if bytes.len() < 10 {
        return Err("the file ends inside the header".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let len = match major {
        1 => usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
        2 | 3 => match bytes.get(8..12) {
            Some(b) => usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(usize::MAX),
            None => return Err("the file ends inside the header".into()),
        },
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    if len > MAX_HEADER {
        return Err(format!("header of {len} bytes exceeds the limit of {MAX_HEADER}"));
    }
    Ok(len)
}

/// Parses the whole header (magic through header text).
pub(crate) fn parse(bytes: &[u8]) -> Result<Header, String> {
    let len = header_len(bytes)?;
    let start = prefix_len(bytes);
    let text = bytes.get(start..start + len).ok_or("the file ends inside the header")?;
    let text = std::str::from_utf8(text).map_err(|_| "the header is not UTF-8 text")?;
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    let dict = p.dict()?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in dict {
        match (key.as_str(), value) {
            ("descr", Lit::Str(s)) => descr = Some(s),
            ("descr", Lit::List) => return Err("structured dtypes are not supported; store a plain float array".into()),
            ("fortran_order", Lit::Bool(b)) => fortran = Some(b),
            ("shape", Lit::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", v) => {
                return Err(format!("header key {key:?} has a bad value {v:?}"));
            }
            _ => {}
        }
    }
    let descr = descr.ok_or("the header has no \"descr\"")?;
    let shape = shape.ok_or("the header has no \"shape\"")?;
    if fortran.ok_or("the header has no \"fortran_order\"")? {
        return Err("Fortran-order arrays are not supported; save np.ascontiguousarray(a)".into());
    }
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'<') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr.as_str()),
    };
    let elem = match code {
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        _ => return Err(format!("dtype {descr:?} is not supported; expected float16, float32 or float64")),
    };
    Ok(Header { elem, big_endian, shape, data_offset: (start + len) as u64 })
}

/// The row layout of a parsed header in a file of `file_len` bytes.
fn layout(h: &Header, file_len: u64) -> Result<Layout, String> {
    let [rows, cols] = h.shape[..] else {
        return Err(format!("the array has shape {:?}; expected 2-D (rows, dimension)", h.shape));
    };
    if cols == 0 {
        return Err("the array has 0 columns".into());
    }
    let cols = usize::try_from(cols)
        .ok()
        .filter(|&c| c <= MAX_DIM)
        .ok_or_else(|| format!("rows of {cols} values exceed the largest dimension, {MAX_DIM}"))?;
    let layout = Layout { elem: h.elem, big_endian: h.big_endian, rows, cols, data_offset: h.data_offset };
    let need = layout.data_bytes().ok_or("the array size overflows")?;
    let have = file_len.saturating_sub(h.data_offset);
    if need != have {
        return Err(format!(
            "shape ({rows}, {cols}) needs {need} bytes of data after the header, the file has {have} ({})",
            if have < need { "truncated" } else { "trailing bytes" }
        ));
    }
    Ok(layout)
}

#[derive(Debug, PartialEq, Eq)]
enum Lit {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    /// A list (structured dtype); contents skipped.
    List,
}

/// A parser of the Python literal subset `.npy` headers use.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, b: u8) -> Result<(), String> {
        match self.peek() {
            Some(c) if c == b => {
                self.i += 1;
                Ok(())
            }
            Some(c) => Err(format!("header: expected {:?} at byte {}, found {:?}", b as char, self.i, c as char)),
            None => Err(format!("header: expected {:?}, found the end", b as char)),
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Lit)>, String> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(out);
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value()?;
            out.push((key, value));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(format!("header: expected ',' or '}}' at byte {}", self.i)),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("header: expected a string at byte {}", self.i)),
        };
        let start = self.i + 1;
        let len = self.s.get(start..).and_then(|rest| rest.iter().position(|&b| b == quote));
        let len = len.ok_or("header: unterminated string")?;
        let s = self.s.get(start..start + len).ok_or("header: unterminated string")?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn value(&mut self) -> Result<Lit, String> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(Lit::Str(self.string()?)),
            Some(b'(') => self.tuple(),
            Some(b'[') => {
                // Structured dtype: skip to the matching bracket without interpreting it.
                let mut depth = 0usize;
                while let Some(&b) = self.s.get(self.i) {
                    self.i += 1;
                    match b {
                        b'[' | b'(' => depth += 1,
                        b']' | b')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                return Ok(Lit::List);
                            }
                        }
                        _ => {}
                    }
                }
                Err("header: unterminated list".into())
            }
            _ => {
                let rest = self.s.get(self.i..).unwrap_or_default();
                for (word, lit) in [(&b"True"[..], true), (&b"False"[..], false)] {
                    if rest.starts_with(word) {
                        self.i += word.len();
                        return Ok(Lit::Bool(lit));
                    }
                }
                Err(format!("header: unexpected value at byte {}", self.i))
            }
        }
    }

    fn tuple(&mut self) -> Result<Lit, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b')') => {
                    self.i += 1;
                    return Ok(Lit::Tuple(out));
                }
                Some(b'0'..=b'9') => {
                    let mut n: u64 = 0;
                    while let Some(d @ b'0'..=b'9') = self.s.get(self.i).copied() {
                        n = n
                            .checked_mul(10)
                            .and_then(|n| n.checked_add(u64::from(d - b'0')))
                            .ok_or("header: shape value overflows")?;
                        self.i += 1;
                    }
                    if self.s.get(self.i) == Some(&b'L') {
                        self.i += 1; // Python 2 long suffix
                    }
                    if out.len() >= 32 {
                        return Err("header: shape has more than 32 dimensions".into());
                    }
                    out.push(n);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b')') => {}
                        _ => return Err(format!("header: expected ',' or ')' at byte {}", self.i)),
                    }
                }
                _ => return Err(format!("header: expected a number or ')' at byte {}", self.i)),
            }
        }
    }
}

/// Writes a `.npy` file image of a 2-D little-endian array (tests and tools).
#[cfg(test)]
pub(crate) fn npy_bytes(descr: &str, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1, 0]);
    out.extend((dict.len() as u16).to_le_bytes());
    out.extend(dict.as_bytes());
    out.extend(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_numpy_headers() {
        let bytes = npy_bytes("<f4", 3, 4, &[0; 48]);
        let h = parse(&bytes).unwrap();
        assert_eq!(
            (h.elem, h.big_endian, h.shape.clone(), h.data_offset),
            (Elem::F32, false, vec![3, 4], bytes.len() as u64 - 48)
        );
        assert_eq!(h.data_offset % 64, 0);
        assert!(layout(&h, bytes.len() as u64).is_ok());
        let e = layout(&h, bytes.len() as u64 - 1).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        let e = layout(&h, bytes.len() as u64 + 1).unwrap_err();
        assert!(e.contains("trailing"), "{e}");

        // Version 2 header with double quotes and a Python 2 long.
        let text = b"{\"descr\": \">f8\", \"shape\": (2L, 5L), \"fortran_order\": False}\n";
        let mut v2 = MAGIC.to_vec();
        v2.extend([2, 0]);
        v2.extend((text.len() as u32).to_le_bytes());
        v2.extend(text);
        let h = parse(&v2).unwrap();
        assert_eq!((h.elem, h.big_endian, h.shape), (Elem::F64, true, vec![2, 5]));
    }

    #[test]
    fn rejects_unsupported() {
        let check = |descr: &str, rows, cols, want: &str| {
            let bytes = npy_bytes(descr, rows, cols, &[]);
            let e = parse(&bytes).and_then(|h| layout(&h, bytes.len() as u64)).unwrap_err();
            assert!(e.contains(want), "{descr}: {e}");
        };
        check("<i4", 1, 1, "dtype \"<i4\" is not supported");
        check("<f4", 0, 0, "0 columns");
        // Edits the header text of a 1x1 float32 file.
        let edited = |from: &str, to: &str| {
            let bytes = npy_bytes("<f4", 1, 1, &[0; 4]);
            let (head, text) = bytes.split_at(10);
            let text = String::from_utf8(text.to_vec()).unwrap().replace(from, to);
            [head, text.as_bytes()].concat()
        };
        assert!(parse(&edited("False", "True ")).unwrap_err().contains("Fortran"));
        let h = parse(&edited("(1, 1)", "(7,)  ")).unwrap();
        assert!(layout(&h, 1 << 20).unwrap_err().contains("expected 2-D"));
        assert!(parse(&edited("'<f4'", "[('a', '<f4')]")).unwrap_err().contains("structured"));
        assert!(parse(b"\x93NUMPX\x01\x00\x00\x00").unwrap_err().contains("magic"));
        assert!(parse(b"\x93NUMPY\x09\x00\x00\x00").unwrap_err().contains("version 9.0"));
        let huge = npy_bytes("<f4", usize::MAX, 2, &[]);
        let h = parse(&huge).unwrap();
        assert!(layout(&h, 100).unwrap_err().contains("overflows"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend(&bytes);
            let _ = parse(&bytes);
            if let Ok(h) = parse(&with_magic) {
                let _ = layout(&h, 1000);
            }
        }

        #[test]
        fn parse_never_panics_on_mutated_headers(pos in 0usize..64, byte in any::<u8>(), cut in 0usize..80) {
            let mut bytes = npy_bytes("<f4", 3, 4, &[0; 48]);
            bytes[pos] = byte;
            bytes.truncate(cut);
            if let Ok(h) = parse(&bytes) {
                let _ = layout(&h, 1000);
            }
        }
    }
}
