//! Rows of a dense 2-D array stored row-major in a file (safetensors, `.npy`), read
//! one row at a time, with ids from a sidecar file or generated.

use super::{Ctx, Row, Source};
use crate::error::{Error, Position, Result};
use kernelize_store::MAX_ID_BYTES;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Element type of a dense array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F16,
    Bf16,
    F32,
    F64,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::F16 | Elem::Bf16 => 2,
            Elem::F32 => 4,
            Elem::F64 => 8,
        }
    }
}

/// Layout of the array in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub elem: Elem,
    pub big_endian: bool,
    pub rows: u64,
    pub cols: usize,
    /// Byte offset of row 0.
    pub data_offset: u64,
}

impl Layout {
    /// Bytes of one row, or `None` on overflow.
    pub fn row_bytes(&self) -> Option<usize> {
        self.cols.checked_mul(self.elem.size())
    }

    /// Bytes of all rows, or `None` on overflow.
    pub fn data_bytes(&self) -> Option<u64> {
        u64::try_from(self.row_bytes()?).ok()?.checked_mul(self.rows)
    }
}

/// Ids of tensor rows: `{stem}-{row}`, or one line each of an ids file.
enum Ids {
    Generated(String),
    File { path: PathBuf, input: BufReader<fs_err::File>, line: u64, buf: Vec<u8> },
}

/// Counts the ids of an ids file: its lines, not counting an empty piece after the
/// final newline.
fn count_ids(path: &Path) -> Result<u64> {
    let file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut input = BufReader::with_capacity(1 << 16, file);
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let chunk = input.fill_buf().map_err(|e| Error::io(path, e))?;
        if chunk.is_empty() {
            break;
        }
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(&b) = chunk.last() {
            last = b;
        }
        let n = chunk.len();
        input.consume(n);
    }
    Ok(lines + u64::from(last != b'\n'))
}

impl Ids {
    fn open(ctx: &Ctx, rows: u64) -> Result<Ids> {
        let Some(path) = &ctx.ids_file else {
            return Ok(Ids::Generated(ctx.stem.clone()));
        };
        let count = count_ids(path)?;
        if count != rows {
            return Err(Error::file(
                path,
                format!(
                    "the ids file has {count} lines but {} has {rows} rows; it needs one id per row",
                    ctx.path.display()
                ),
            ));
        }
        let file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Ids::File { path: path.clone(), input: BufReader::new(file), line: 0, buf: Vec::new() })
    }

    fn next(&mut self, ctx: &Ctx, row: u64) -> Result<String> {
        match self {
            Ids::Generated(stem) => Ok(format!("{stem}-{row}")),
            Ids::File { path, input, line, buf } => {
                buf.clear();
                let limit = MAX_ID_BYTES as u64 + 2;
                input.by_ref().take(limit).read_until(b'\n', buf).map_err(|e| Error::io(path, e))?;
                *line += 1;
                let at = |reason: String| {
                    ctx.field_err(Position::Row(row), "id", format!("{reason} (line {line} of {})", path.display()))
                };
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                if buf.len() > MAX_ID_BYTES {
                    return Err(at(format!("id is longer than {MAX_ID_BYTES} bytes")));
                }
                let id = std::str::from_utf8(buf).map_err(|_| at("id is not valid UTF-8".into()))?;
                if id.is_empty() {
                    return Err(at("id is empty".into()));
                }
                Ok(id.to_owned())
            }
        }
    }
}

/// Streams the rows of a [`Layout`].
pub(crate) struct DenseSource {
    ctx: Ctx,
    layout: Layout,
    input: BufReader<fs_err::File>,
    ids: Ids,
    row: u64,
    buf: Vec<u8>,
}

impl DenseSource {
    /// Opens the rows; the caller has checked that the layout fits in the file.
    pub fn open(ctx: Ctx, layout: Layout) -> Result<DenseSource> {
        let row_bytes = layout.row_bytes().ok_or_else(|| Error::file(&ctx.path, "row size overflows"))?;
        let ids = Ids::open(&ctx, layout.rows)?;
        let mut file = fs_err::File::open(&ctx.path).map_err(|e| Error::io(&ctx.path, e))?;
        file.seek(SeekFrom::Start(layout.data_offset)).map_err(|e| Error::io(&ctx.path, e))?;
        let input = BufReader::with_capacity(row_bytes.clamp(1 << 16, 1 << 22), file);
        Ok(DenseSource { ctx, layout, input, ids, row: 0, buf: vec![0; row_bytes] })
    }
}

impl Source for DenseSource {
    fn next_row(&mut self) -> Result<Option<Row>> {
        if self.row >= self.layout.rows {
            return Ok(None);
        }
        let row = self.row;
        let position = Position::Row(row);
        self.input.read_exact(&mut self.buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::row(self.ctx.loc(position), "the file ends inside this row (truncated)")
            } else {
                Error::io(&self.ctx.path, e)
            }
        })?;
        let id = self.ids.next(&self.ctx, row)?;
        self.row += 1;
        Ok(Some(Row {
            position,
            id,
            vector: Some(decode(&self.buf, self.layout)),
            text: None,
            metadata: None,
            media: None,
        }))
    }

    fn bytes_read(&self) -> u64 {
        let row_bytes = self.buf.len() as u64;
        self.layout.data_offset.saturating_add(self.row.saturating_mul(row_bytes))
    }

    fn total_rows(&self) -> Option<u64> {
        Some(self.layout.rows)
    }
}

/// Decodes one row of `layout.elem` values in the layout's byte order.
fn decode(bytes: &[u8], layout: Layout) -> Vec<f32> {
    let be = layout.big_endian;
    match layout.elem {
        Elem::F32 => bytes
            .chunks_exact(4)
            .map(|c| {
                let a = [c[0], c[1], c[2], c[3]];
                if be { f32::from_be_bytes(a) } else { f32::from_le_bytes(a) }
            })
            .collect(),
        Elem::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let a = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                (if be { f64::from_be_bytes(a) } else { f64::from_le_bytes(a) }) as f32
            })
            .collect(),
        Elem::F16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let a = [c[0], c[1]];
                (if be { half::f16::from_be_bytes(a) } else { half::f16::from_le_bytes(a) }).to_f32()
            })
            .collect(),
        Elem::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let a = [c[0], c[1]];
                (if be { half::bf16::from_be_bytes(a) } else { half::bf16::from_le_bytes(a) }).to_f32()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_ids_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ids.txt");
        for (content, n) in [("", 0), ("a", 1), ("a\n", 1), ("a\nb", 2), ("a\nb\n", 2), ("a\n\n", 2), ("\n", 1)] {
            fs_err::write(&p, content).unwrap();
            assert_eq!(count_ids(&p).unwrap(), n, "{content:?}");
        }
    }

    #[test]
    fn decode_all_elems() {
        let l = |elem, big_endian| Layout { elem, big_endian, rows: 1, cols: 2, data_offset: 0 };
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(decode(&f32s, l(Elem::F32, false)), [1.5, -2.0]);
        let f64s: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|x| x.to_be_bytes()).collect();
        assert_eq!(decode(&f64s, l(Elem::F64, true)), [1.5, -2.0]);
        let f16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(decode(&f16s, l(Elem::F16, false)), [1.5, -2.0]);
        let bf16s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect();
        assert_eq!(decode(&bf16s, l(Elem::Bf16, false)), [1.5, -2.0]);
    }
}
