//! safetensors files: one 2-D F32, F64, F16 or BF16 tensor, rows streamed from the
//! file (the header is parsed by the `safetensors` crate; the data is never mapped or
//! loaded whole).

use super::Ctx;
use super::dense::{DenseSource, Elem, Layout};
use crate::error::{Error, Result};
use kernelize_store::MAX_DIM;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};
use std::io::Read;

/// Largest header accepted (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

pub(crate) fn open(ctx: Ctx, tensor: Option<&str>, file_len: u64) -> Result<DenseSource> {
    let path = ctx.path.clone();
    let bad = |reason: String| Error::file(&path, reason);
    let mut file = fs_err::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("not a safetensors file (shorter than 8 bytes)".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({file_len} bytes); not a safetensors file?"
        )));
    }
    let mut header = Vec::new();
    (&mut file).take(n).read_to_end(&mut header).map_err(|e| Error::io(&path, e))?;
    let metadata: Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
    let data_offset = 8 + n;
    let data_len = file_len - data_offset;
    if metadata.data_len() as u64 != data_len {
        return Err(bad(format!(
            "the header describes {} bytes of tensor data, the file has {data_len} ({})",
            metadata.data_len(),
            if data_len < metadata.data_len() as u64 { "truncated" } else { "trailing bytes" }
        )));
    }
    let (name, info) = pick(&metadata, tensor).map_err(bad)?;
    let elem = match info.dtype {
        Dtype::F32 => Elem::F32,
        Dtype::F64 => Elem::F64,
        Dtype::F16 => Elem::F16,
        Dtype::BF16 => Elem::Bf16,
        d => return Err(bad(format!("tensor {name:?} has dtype {d:?}; expected F32, F64, F16 or BF16"))),
    };
    let [rows, cols] = info.shape[..] else {
        return Err(bad(format!("tensor {name:?} has shape {:?}; expected 2-D (rows, dimension)", info.shape)));
    };
    if cols == 0 || cols > MAX_DIM {
        return Err(bad(format!("tensor {name:?} has rows of {cols} values; expected 1..={MAX_DIM}")));
    }
    let layout = Layout {
        elem,
        big_endian: false,
        rows: rows as u64,
        cols,
        data_offset: data_offset + info.data_offsets.0 as u64,
    };
    DenseSource::open(ctx, layout)
}

fn describe(name: &str, info: &TensorInfo) -> String {
    format!("{name} ({:?} {:?})", info.dtype, info.shape)
}

/// The tensor to read: the named one, else the only 2-D one.
fn pick<'a>(metadata: &'a Metadata, tensor: Option<&str>) -> Result<(String, &'a TensorInfo), String> {
    let all = || {
        let mut names: Vec<String> = metadata.tensors().into_iter().map(|(n, i)| describe(&n, i)).collect();
        names.sort();
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    };
    if let Some(name) = tensor {
        return match metadata.info(name) {
            Some(info) => Ok((name.to_owned(), info)),
            None => Err(format!("no tensor named {name:?}; tensors: {}", all())),
        };
    }
    let mut two_d: Vec<(String, &TensorInfo)> =
        metadata.tensors().into_iter().filter(|(_, i)| i.shape.len() == 2).collect();
    two_d.sort_by(|a, b| a.0.cmp(&b.0));
    match two_d.len() {
        1 => Ok(two_d.remove(0)),
        0 => Err(format!("no 2-D tensor; tensors: {}", all())),
        _ => Err(format!(
            "{} 2-D tensors, name the one to read: {}",
            two_d.len(),
            two_d.iter().map(|(n, i)| describe(n, i)).collect::<Vec<_>>().join(", ")
        )),
    }
}
