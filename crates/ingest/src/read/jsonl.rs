//! JSONL: one JSON object per line; blank lines are skipped.

use super::{
    Ctx, MAX_LINE_BYTES, Row, Source, json_id, json_metadata, json_reason, json_text, json_vector, merge_metadata,
};
use crate::error::{Error, Position, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};

pub(crate) struct JsonlSource {
    ctx: Ctx,
    input: BufReader<fs_err::File>,
    line: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl JsonlSource {
    pub fn open(ctx: Ctx) -> Result<JsonlSource> {
        let file = fs_err::File::open(&ctx.path).map_err(|e| Error::io(&ctx.path, e))?;
        Ok(JsonlSource { ctx, input: BufReader::with_capacity(1 << 16, file), line: 0, bytes: 0, buf: Vec::new() })
    }

    /// Reads the next line into `buf` without its line ending; `false` at the end.
    fn read_line(&mut self) -> Result<bool> {
        self.buf.clear();
        let limit = MAX_LINE_BYTES as u64 + 2; // room for "\r\n"
        let n =
            (&mut self.input).take(limit).read_until(b'\n', &mut self.buf).map_err(|e| Error::io(&self.ctx.path, e))?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        self.bytes += n as u64;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(Error::row(
                self.ctx.loc(Position::line(self.line)),
                format!("line is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if self.line == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
            self.buf.drain(..3);
        }
        Ok(true)
    }
}

impl Source for JsonlSource {
    fn next_row(&mut self) -> Result<Option<Row>> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = self.line;
            let value: Value = serde_json::from_slice(&self.buf).map_err(|e| {
                let column = (e.column() > 0).then_some(e.column() as u64);
                Error::row(
                    self.ctx.loc(Position::Line { line, column }),
                    format!("malformed JSON: {}", json_reason(&e)),
                )
            })?;
            let Value::Object(obj) = value else {
                return Err(Error::row(
                    self.ctx.loc(Position::line(line)),
                    format!("expected a JSON object, got {}", super::json_type(&value)),
                ));
            };
            return object_row(&self.ctx, Position::line(line), obj).map(Some);
        }
    }

    fn bytes_read(&self) -> u64 {
        self.bytes
    }

    fn total_rows(&self) -> Option<u64> {
        None
    }
}

/// A row from a JSON object: the configured fields, the rest into metadata.
fn object_row(ctx: &Ctx, position: Position, mut obj: serde_json::Map<String, Value>) -> Result<Row> {
    let id = obj.remove(&ctx.id_field).unwrap_or(Value::Null);
    let vector = obj.remove(&ctx.vector_field).unwrap_or(Value::Null);
    let text = obj.remove(&ctx.text_field).unwrap_or(Value::Null);
    let metadata = obj.remove(&ctx.metadata_field).unwrap_or(Value::Null);
    let media = match &ctx.media_field {
        Some(field) => match obj.remove(field).unwrap_or(Value::Null) {
            Value::Null => None,
            Value::String(p) => Some(ctx.media_path(position, field, &p)?),
            other => {
                return Err(ctx.field_err(
                    position,
                    field,
                    format!("expected a media file path (a string), got {}", super::json_type(&other)),
                ));
            }
        },
        None => None,
    };
    let id = match json_id(ctx, position, id)? {
        Some(id) => id,
        None => ctx.missing_id(position)?,
    };
    Ok(Row {
        position,
        id,
        vector: json_vector(ctx, position, vector)?,
        text: json_text(ctx, position, text)?,
        metadata: merge_metadata(obj, json_metadata(ctx, position, metadata)?),
        media,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::IngestOptions;
    use proptest::prelude::*;
    use std::path::Path;

    fn read_all(dir: &Path, content: &[u8], opts: &IngestOptions) -> Vec<Result<Row>> {
        let path = dir.join("data.jsonl");
        fs_err::write(&path, content).unwrap();
        let mut src = JsonlSource::open(Ctx::new(&path, opts)).unwrap();
        let mut out = Vec::new();
        loop {
            match src.next_row() {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn fields_metadata_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let input = "\u{feff}{\"id\":\"a\",\"vector\":[1,2.5],\"text\":\"hi\",\"metadata\":{\"k\":1,\"lang\":\"en\"},\"lang\":\"fr\",\"n\":3}\r\n\n   \n{\"id\":7,\"text\":\"x\"}\n";
        let rows = read_all(dir.path(), input.as_bytes(), &IngestOptions::default());
        let rows: Vec<Row> = rows.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "a");
        assert_eq!(rows[0].position, Position::line(1));
        assert_eq!(rows[0].vector, Some(vec![1.0, 2.5]));
        assert_eq!(rows[0].text.as_deref(), Some("hi"));
        let m = rows[0].metadata.as_ref().unwrap();
        assert_eq!(m["lang"], "en", "the metadata object wins over top-level fields");
        assert_eq!(m["n"], 3);
        assert_eq!(m["k"], 1);
        assert_eq!(rows[1].id, "7");
        assert_eq!(rows[1].position, Position::line(4));
        assert_eq!(rows[1].metadata, None);
    }

    #[test]
    fn custom_fields() {
        let dir = tempfile::tempdir().unwrap();
        let o = IngestOptions { id_field: "key".into(), text_field: "body".into(), ..Default::default() };
        let rows = read_all(dir.path(), b"{\"key\":\"k1\",\"body\":\"b\",\"text\":\"t\"}\n", &o);
        let r = rows[0].as_ref().unwrap();
        assert_eq!((r.id.as_str(), r.text.as_deref()), ("k1", Some("b")));
        assert_eq!(r.metadata.as_ref().unwrap()["text"], "t");
    }

    #[test]
    fn malformed_line_names_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let rows = read_all(
            dir.path(),
            b"{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"text\":}\n",
            &IngestOptions::default(),
        );
        assert!(rows[0].is_ok());
        let e = rows[1].as_ref().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:2:18: malformed JSON", dir.path().join("data.jsonl").display())), "{e}");
    }

    #[test]
    fn bad_fields_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let o = IngestOptions::default();
        let cases: [(&str, &str); 6] = [
            ("{\"text\":\"x\"}", ":1 (field \"id\"): missing id"),
            ("{\"id\":\"a\",\"vector\":[1,\"x\"]}", ":1 (field \"vector\"): vector[1] is a string"),
            ("{\"id\":\"a\",\"vector\":3}", ":1 (field \"vector\"): expected an array"),
            ("{\"id\":[1],\"text\":\"x\"}", ":1 (field \"id\"): id must be a string or an integer"),
            ("{\"id\":\"a\",\"text\":5}", ":1 (field \"text\"): expected a string"),
            ("[1,2]", ":1: expected a JSON object, got an array"),
        ];
        for (line, want) in cases {
            let rows = read_all(dir.path(), line.as_bytes(), &o);
            let e = rows[0].as_ref().unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn generated_ids_use_stem_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let o = IngestOptions { generate_ids: true, ..Default::default() };
        let rows = read_all(dir.path(), b"\n{\"text\":\"x\"}\n{\"id\":\"own\",\"text\":\"y\"}", &o);
        assert_eq!(rows[0].as_ref().unwrap().id, "data-2");
        assert_eq!(rows[1].as_ref().unwrap().id, "own");
    }

    #[test]
    fn an_enormous_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = b"{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"text\":\"".to_vec();
        content.resize(content.len() + MAX_LINE_BYTES + 10, b'x');
        let rows = read_all(dir.path(), &content, &IngestOptions::default());
        let e = rows[1].as_ref().unwrap_err().to_string();
        assert!(e.contains(&format!("data.jsonl:2: line is longer than {MAX_LINE_BYTES} bytes")), "{e}");
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rows = read_all(dir.path(), b"{\"id\":\"a\",\"text\":\"\xff\"}\n", &IngestOptions::default());
        let e = rows[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("data.jsonl:1:"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let dir = tempfile::tempdir().unwrap();
            let _ = read_all(dir.path(), &bytes, &IngestOptions::default());
        }
    }
}
