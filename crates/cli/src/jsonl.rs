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

/// Parses and validates lines in parallel. Errors name `file:line`.
pub fn parse_lines(file: &str, lines: &[(u64, String)], dim: usize) -> Result<Vec<Record>> {
    lines
        .par_iter()
        .map(|(no, line)| {
            let r: Record =
                serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{file}:{no}: column {}: {e}", e.column()))?;
            if let Err(e) = kernelize_store::validate_record(&r, dim) {
                bail!("{file}:{no}: {e}");
            }
            Ok(r)
        })
        .collect()
}
