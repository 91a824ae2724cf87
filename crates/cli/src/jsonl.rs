//! Reading records from JSONL: lines are parsed in parallel a batch at a time, and every
//! error names the file and line.

use anyhow::{Context, Result, bail};
use kernelize_store::Record;
use rayon::prelude::*;
use std::io::BufRead;

/// A batch of parsed records with the line number of its first line.
pub struct Batch {
    pub records: Vec<Record>,
    pub first_line: u64,
    pub bytes: u64,
}

/// Numbered lines of one batch and the bytes they took.
pub type RawBatch = (Vec<(u64, String)>, u64);

/// Reads raw lines into batches of `batch` non-empty lines.
pub struct LineBatches<R> {
    reader: R,
    batch: usize,
    line_no: u64,
    done: bool,
}

impl<R: BufRead> LineBatches<R> {
    pub fn new(reader: R, batch: usize) -> Self {
        LineBatches { reader, batch, line_no: 0, done: false }
    }

    /// The next batch of (line number, line) pairs, and the bytes read for them.
    pub fn next_raw(&mut self) -> Result<Option<RawBatch>> {
        if self.done {
            return Ok(None);
        }
        let mut lines = Vec::with_capacity(self.batch);
        let mut bytes = 0u64;
        while lines.len() < self.batch {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).with_context(|| format!("reading line {}", self.line_no + 1))?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.line_no += 1;
            bytes += n as u64;
            if !line.trim().is_empty() {
                lines.push((self.line_no, line));
            }
        }
        if lines.is_empty() { Ok(None) } else { Ok(Some((lines, bytes))) }
    }
}

/// The fields of a line other than the vector.
#[derive(serde::Deserialize)]
struct Rest {
    id: String,
    #[serde(default)]
    #[expect(dead_code, reason = "only present so a duplicate vector key is an error")]
    vector: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    metadata: Option<kernelize_store::Metadata>,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// End of the JSON string starting at `b[i] == '"'` (index after the closing quote).
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// End of the JSON value starting at `b[i]`, without interpreting it.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Parses `[n, n, …]` at `b[i]` into f32s (correctly rounded); returns them and the end.
fn parse_vector_at(b: &[u8], i: usize) -> Option<(Vec<f32>, usize)> {
    let mut out = Vec::with_capacity(512);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut j = skip_ws(b, i + 1);
    if b.get(j) == Some(&b']') {
        return Some((out, j + 1));
    }
    loop {
        j = skip_ws(b, j);
        let (v, used) = lexical_core::parse_partial::<f32>(b.get(j..)?).ok()?;
        if used == 0 {
            return None;
        }
        out.push(v);
        j = skip_ws(b, j + used);
        match b.get(j)? {
            b',' => j += 1,
            b']' => return Some((out, j + 1)),
            _ => return None,
        }
    }
}

/// The fast path: finds the top-level `"vector"` value, parses it in one pass, and lets
/// serde_json parse the rest of the line (with the vector replaced by `null`). Returns
/// None for anything unusual, and the caller parses the line with serde_json alone.
fn parse_fast(line: &str) -> Option<Record> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if *b.get(i)? != b'"' {
            return None;
        }
        let key_end = skip_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if *b.get(i)? != b':' {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == b"vector" {
            let (vector, end) = parse_vector_at(b, i)?;
            let mut rest = String::with_capacity(line.len() - (end - i) + 4);
            rest.push_str(&line[..i]);
            rest.push_str("null");
            rest.push_str(&line[end..]);
            let r: Rest = serde_json::from_str(&rest).ok()?;
            return Some(Record { id: r.id, vector, text: r.text, metadata: r.metadata });
        }
        i = skip_ws(b, skip_value(b, i)?);
        match b.get(i)? {
            b',' => i += 1,
            _ => return None,
        }
    }
}

/// Parses and validates lines in parallel. Errors name `file:line`.
pub fn parse_lines(file: &str, lines: &[(u64, String)], dim: usize) -> Result<Vec<Record>> {
    lines
        .par_iter()
        .map(|(no, line)| {
            let r = match parse_fast(line) {
                Some(r) => r,
                None => serde_json::from_str::<Record>(line)
                    .map_err(|e| anyhow::anyhow!("{file}:{no}: column {}: {e}", e.column()))?,
            };
            if let Err(e) = kernelize_store::validate_record(&r, dim) {
                bail!("{file}:{no}: {e}");
            }
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_fast;
    use kernelize_store::Record;

    fn slow(line: &str) -> Option<Record> {
        serde_json::from_str(line).ok()
    }

    #[test]
    fn fast_path_agrees_with_serde_json() {
        for line in [
            r#"{"id": "a", "vector": [0.05184371769428253, -1e-3, 2, 3.4028235e38, -0]}"#,
            r#"{"text": "has \"vector\": [9] inside", "id":"b","metadata":{"vector":[1]}, "vector":[1.5 , 2.5]}"#,
            r#" { "vector" : [ ] , "id" : "c" } "#,
            r#"{"id":"d","vector":[1,2],"metadata":{"k":[1,{"x":"]"}]}}"#,
        ] {
            assert_eq!(parse_fast(line), slow(line), "{line}");
            assert!(parse_fast(line).is_some(), "{line}");
        }
    }

    #[test]
    fn unusual_lines_fall_back() {
        for line in [
            r#"{"id":"a","vector":[1,"x"]}"#,
            r#"{"id":"a","vector":[1,2],"vector":[3]}"#,
            r#"{"id":"a"}"#,
            r#"["not an object"]"#,
            r#"{"id":"a","vector":[1,2]"#,
        ] {
            assert!(parse_fast(line).is_none(), "{line}");
        }
    }
}
