//! CSV with a header row: id, text and optional vector (a JSON array) columns; the
//! metadata column (a JSON object) and every other column go into metadata. Empty
//! cells are absent values.

use super::{
    Ctx, MAX_LINE_BYTES, Row, Source, json_metadata_text, json_reason, json_vector, merge_metadata, scalar_value,
};
use crate::error::{Error, Position, Result};
use kernelize_store::Metadata;
use serde_json::Value;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The file under the CSV parser, refusing to deliver more than [`MAX_LINE_BYTES`]
/// (plus the parser's buffer) past the start of the record being parsed, so one
/// enormous field cannot exhaust memory.
struct Bounded {
    file: fs_err::File,
    delivered: u64,
    /// Byte offset where the record being parsed starts (set after each record).
    record_start: Arc<AtomicU64>,
}

/// Marks the I/O error [`Bounded`] returns.
#[derive(Debug)]
struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record longer than {MAX_LINE_BYTES} bytes")
    }
}

impl std::error::Error for TooLong {}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = self.record_start.load(Ordering::Relaxed);
        if self.delivered.saturating_sub(start) > (MAX_LINE_BYTES + CSV_BUFFER) as u64 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, TooLong));
        }
        let n = self.file.read(buf)?;
        self.delivered += n as u64;
        Ok(n)
    }
}

/// The CSV parser's read buffer.
const CSV_BUFFER: usize = 64 << 10;

pub(crate) struct CsvSource {
    ctx: Ctx,
    reader: csv::Reader<Bounded>,
    record_start: Arc<AtomicU64>,
    record: csv::StringRecord,
    id: Option<usize>,
    vector: Option<usize>,
    text: Option<usize>,
    metadata: Option<usize>,
    /// The media path column, in media ingestion.
    media: Option<usize>,
    /// Other columns: (index, name).
    others: Vec<(usize, String)>,
}

impl CsvSource {
    pub fn open(ctx: Ctx) -> Result<CsvSource> {
        let file = fs_err::File::open(&ctx.path).map_err(|e| Error::io(&ctx.path, e))?;
        let record_start = Arc::new(AtomicU64::new(0));
        let bounded = Bounded { file, delivered: 0, record_start: record_start.clone() };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .buffer_capacity(CSV_BUFFER)
            .from_reader(bounded);
        let headers = reader.headers().map_err(|e| csv_error(&ctx, e, 1))?.clone();
        record_start.store(reader.position().byte(), Ordering::Relaxed);
        if headers.is_empty() || (headers.len() == 1 && headers.get(0) == Some("")) {
            return Err(Error::file(&ctx.path, "no header row"));
        }
        let find = |name: &str| headers.iter().position(|h| h == name);
        let (id, vector, text, metadata) =
            (find(&ctx.id_field), find(&ctx.vector_field), find(&ctx.text_field), find(&ctx.metadata_field));
        let columns = || headers.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ");
        if id.is_none() && !ctx.generate_ids {
            return Err(Error::file(
                &ctx.path,
                format!("no id column {:?} (columns: {}); name the id column or generate ids", ctx.id_field, columns()),
            ));
        }
        let media = ctx.media_field.as_deref().and_then(find);
        ctx.require_content(vector.is_some(), text.is_some(), media.is_some(), columns)?;
        let used = [id, vector, text, metadata, media];
        let others = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| !used.contains(&Some(*i)))
            .map(|(i, h)| (i, h.to_owned()))
            .collect();
        Ok(CsvSource {
            ctx,
            reader,
            record_start,
            record: csv::StringRecord::new(),
            id,
            vector,
            text,
            metadata,
            media,
            others,
        })
    }

    fn cell(&self, index: Option<usize>) -> Option<&str> {
        index.and_then(|i| self.record.get(i)).filter(|s| !s.is_empty())
    }
}

/// A CSV error as ours; `line` is where the record being parsed starts.
fn csv_error(ctx: &Ctx, e: csv::Error, line: u64) -> Error {
    let line = e.position().map_or(line, |p| p.line());
    let position = Position::line(line);
    match e.into_kind() {
        csv::ErrorKind::Io(io) if io.get_ref().is_some_and(|i| i.is::<TooLong>()) => {
            Error::row(ctx.loc(position), format!("record longer than {MAX_LINE_BYTES} bytes"))
        }
        csv::ErrorKind::Io(io) => Error::io(&ctx.path, io),
        csv::ErrorKind::Utf8 { err, .. } => {
            Error::row(ctx.loc(position), format!("field {} is not valid UTF-8", err.field() + 1))
        }
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            Error::row(ctx.loc(position), format!("{len} fields, the header has {expected_len}"))
        }
        other => Error::row(ctx.loc(position), format!("{other:?}")),
    }
}

impl Source for CsvSource {
    fn next_row(&mut self) -> Result<Option<Row>> {
        let mut record = std::mem::take(&mut self.record);
        let line = self.reader.position().line();
        let more = self.reader.read_record(&mut record).map_err(|e| csv_error(&self.ctx, e, line));
        self.record = record;
        if !more? {
            return Ok(None);
        }
        self.record_start.store(self.reader.position().byte(), Ordering::Relaxed);
        let line = self.record.position().map_or(0, |p| p.line());
        let position = Position::line(line);
        let ctx = &self.ctx;
        let id = match self.cell(self.id) {
            Some(id) => id.to_owned(),
            None => ctx.missing_id(position)?,
        };
        let vector = match self.cell(self.vector) {
            Some(s) => {
                let v: Value = serde_json::from_str(s).map_err(|e| {
                    ctx.field_err(position, &ctx.vector_field, format!("invalid JSON array: {}", json_reason(&e)))
                })?;
                json_vector(ctx, position, v)?
            }
            None => None,
        };
        let text = self.cell(self.text).map(str::to_owned);
        let media = match (self.cell(self.media), &ctx.media_field) {
            (Some(p), Some(field)) => Some(ctx.media_path(position, field, p)?),
            _ => None,
        };
        let explicit = match self.cell(self.metadata) {
            Some(s) => json_metadata_text(ctx, position, s)?,
            None => None,
        };
        let mut rest = Metadata::new();
        for (i, name) in &self.others {
            if let Some(s) = self.record.get(*i).filter(|s| !s.is_empty()) {
                rest.insert(name.clone(), scalar_value(s));
            }
        }
        Ok(Some(Row { position, id, vector, text, metadata: merge_metadata(rest, explicit), media }))
    }

    fn bytes_read(&self) -> u64 {
        self.reader.position().byte()
    }

    fn total_rows(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::IngestOptions;

    fn rows(content: &str, opts: &IngestOptions) -> (tempfile::TempDir, Result<Vec<Result<Row>>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        fs_err::write(&path, content).unwrap();
        let out = CsvSource::open(Ctx::new(&path, opts)).map(|mut s| {
            let mut v = Vec::new();
            loop {
                match s.next_row() {
                    Ok(Some(r)) => v.push(Ok(r)),
                    Ok(None) => break,
                    Err(e) => {
                        v.push(Err(e));
                        break;
                    }
                }
            }
            v
        });
        (dir, out)
    }

    #[test]
    fn columns_to_fields_and_metadata() {
        let csv = "id,text,vector,year,score,tag,metadata\n\
                   a,\"hello, world\",\"[1, 2]\",1999,0.5,x,\"{\"\"k\"\":true}\"\n\
                   b,plain,,NaN,,\"multi\nline\",\n\
                   c,third,,,,,\n";
        let (_d, out) = rows(csv, &IngestOptions::default());
        let rows: Vec<Row> = out.unwrap().into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].id, "a");
        assert_eq!(rows[0].position, Position::line(2));
        assert_eq!(rows[0].text.as_deref(), Some("hello, world"));
        assert_eq!(rows[0].vector, Some(vec![1.0, 2.0]));
        let m = rows[0].metadata.as_ref().unwrap();
        assert_eq!(m["year"], 1999);
        assert_eq!(m["score"], 0.5);
        assert_eq!(m["tag"], "x");
        assert_eq!(m["k"], true);
        assert_eq!(rows[1].vector, None);
        let m = rows[1].metadata.as_ref().unwrap();
        assert_eq!(m["year"], "NaN");
        assert_eq!(m["tag"], "multi\nline");
        assert!(!m.contains_key("score"));
        assert_eq!(rows[2].position, Position::line(5), "a quoted newline advances the line count");
        assert_eq!(rows[2].metadata, None);
    }

    #[test]
    fn bad_rows_name_line_and_field() {
        let o = IngestOptions::default();
        let (_d, out) = rows("id,text,vector\na,x,\nb,y,\"[1,\"\n", &o);
        let out = out.unwrap();
        let e = out[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("t.csv:3 (field \"vector\"): invalid JSON array"), "{e}");

        let (_d, out) = rows("id,text\na,x\nb,y,z\n", &o);
        let e = out.unwrap()[1].as_ref().unwrap_err().to_string();
        assert!(e.contains("t.csv:3: 3 fields, the header has 2"), "{e}");

        let (_d, out) = rows("id,text\n,x\n", &o);
        let e = out.unwrap()[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("t.csv:2 (field \"id\"): missing id"), "{e}");
    }

    #[test]
    fn header_checks() {
        let (_d, out) = rows("", &IngestOptions::default());
        assert!(out.unwrap_err().to_string().contains("no header row"));
        let (_d, out) = rows("key,text\n", &IngestOptions::default());
        let e = out.unwrap_err().to_string();
        assert!(e.contains("no id column \"id\"") && e.contains("\"key\""), "{e}");
        let (_d, out) = rows("id,body\n", &IngestOptions::default());
        assert!(out.unwrap_err().to_string().contains("neither a text column"));
    }

    #[test]
    fn an_enormous_record_is_refused_not_buffered() {
        let mut content = String::from("id,text\na,ok\nb,\"");
        content.push_str(&"x".repeat(MAX_LINE_BYTES + (256 << 10)));
        let (_d, out) = rows(&content, &IngestOptions::default());
        let out = out.unwrap();
        assert!(out[0].is_ok());
        let e = out[1].as_ref().unwrap_err().to_string();
        assert!(e.contains(&format!("t.csv:3: record longer than {MAX_LINE_BYTES} bytes")), "{e}");
    }

    #[test]
    fn generated_ids() {
        let o = IngestOptions { generate_ids: true, ..Default::default() };
        let (_d, out) = rows("text\nx\ny\n", &o);
        let ids: Vec<String> = out.unwrap().into_iter().map(|r| r.unwrap().id).collect();
        assert_eq!(ids, ["t-2", "t-3"]);
    }
}
