//! Records, write operations and their binary encoding (the WAL payload).

use crate::codec::{DecodeResult, Reader, put_f32s, put_len_prefixed, put_u32};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Metadata of a record: a JSON object.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Longest record id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Longest text of a record, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 << 20;
/// Largest metadata object, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 1 << 20;
/// Largest vector dimension.
pub const MAX_DIM: usize = 65_536;
/// Largest squared L2 norm of a stored or query vector: distances between such vectors
/// stay far below `f32::MAX` (finite components can still square past it).
pub const MAX_VECTOR_NORM2: f64 = 1e36;

/// The squared norm of `v` (in f64) when it exceeds [`MAX_VECTOR_NORM2`].
pub fn vector_too_large(v: &[f32]) -> Option<f64> {
    let norm2 = norm2(v);
    (norm2 > MAX_VECTOR_NORM2).then_some(norm2)
}

/// Squared norm in f64, with 8 independent partial sums (so it vectorises): not finite
/// exactly when some component is not finite (a finite f32 squared is far from f64's
/// range, and so is the sum of any vector the store accepts).
fn norm2(v: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f64::from(c[i]) * f64::from(c[i]);
        }
    }
    let tail: f64 = rest.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    acc.iter().sum::<f64>() + tail
}

/// One record of a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique id within the collection.
    pub id: String,
    /// The embedding; its length is the collection's dimension.
    pub vector: Vec<f32>,
    /// Optional text (the document or chunk the vector embeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Optional metadata object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

/// One write operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert or replace a record.
    Upsert(Arc<Record>),
    /// Delete a record by id (a no-op if absent).
    Delete(String),
}

impl Op {
    /// The id the operation touches.
    pub fn id(&self) -> &str {
        match self {
            Op::Upsert(r) => &r.id,
            Op::Delete(id) => id,
        }
    }
}

const OP_UPSERT: u8 = 1;
const OP_DELETE: u8 = 2;

/// Checks an id.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidInput("id is empty".into()));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::InvalidInput(format!("id is {} bytes, the limit is {MAX_ID_BYTES}", id.len())));
    }
    Ok(())
}

/// Checks a record against a collection's dimension and the size limits.
pub fn validate_record(r: &Record, dim: usize) -> Result<()> {
    validate_id(&r.id)?;
    if r.vector.len() != dim {
        return Err(Error::InvalidInput(format!(
            "record {:?}: vector has {} dimensions, the collection has {dim}",
            r.id,
            r.vector.len()
        )));
    }
    // One pass: the squared norm is finite exactly when every component is.
    let n2 = norm2(&r.vector);
    if !n2.is_finite()
        && let Some(i) = r.vector.iter().position(|x| !x.is_finite())
    {
        return Err(Error::InvalidInput(format!("record {:?}: vector[{i}] is {} (not finite)", r.id, r.vector[i])));
    }
    if n2 > MAX_VECTOR_NORM2 {
        return Err(Error::InvalidInput(format!(
            "record {:?}: vector is too large (squared norm {n2:.3e} > {MAX_VECTOR_NORM2:e}): its distances overflow",
            r.id
        )));
    }
    if let Some(t) = &r.text
        && t.len() > MAX_TEXT_BYTES
    {
        return Err(Error::InvalidInput(format!(
            "record {:?}: text is {} bytes, the limit is {MAX_TEXT_BYTES}",
            r.id,
            t.len()
        )));
    }
    Ok(())
}

fn metadata_json(m: &Metadata) -> Vec<u8> {
    // Serializing a Map of Values cannot fail.
    serde_json::to_vec(m).unwrap_or_default()
}

/// Encodes a batch of operations (the payload of one WAL record). `ops` must be validated.
pub(crate) fn encode_batch(ops: &[Op], out: &mut Vec<u8>) -> Result<()> {
    put_u32(out, u32::try_from(ops.len()).map_err(|_| Error::InvalidInput("batch too large".into()))?);
    for op in ops {
        match op {
            Op::Upsert(r) => {
                out.push(OP_UPSERT);
                put_len_prefixed(out, r.id.as_bytes());
                put_u32(out, r.vector.len() as u32);
                put_f32s(out, &r.vector);
                match &r.text {
                    Some(t) => {
                        out.push(1);
                        put_len_prefixed(out, t.as_bytes());
                    }
                    None => out.push(0),
                }
                match &r.metadata {
                    Some(m) => {
                        let json = metadata_json(m);
                        if json.len() > MAX_METADATA_BYTES {
                            return Err(Error::InvalidInput(format!(
                                "record {:?}: metadata is {} bytes of JSON, the limit is {MAX_METADATA_BYTES}",
                                r.id,
                                json.len()
                            )));
                        }
                        out.push(1);
                        put_len_prefixed(out, &json);
                    }
                    None => out.push(0),
                }
            }
            Op::Delete(id) => {
                out.push(OP_DELETE);
                put_len_prefixed(out, id.as_bytes());
            }
        }
    }
    Ok(())
}

/// Decodes a metadata object from JSON bytes.
pub(crate) fn decode_metadata(r: &Reader<'_>, json: &[u8]) -> DecodeResult<Metadata> {
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => r.fail("metadata is not a JSON object"),
        Err(e) => r.fail(format!("metadata is not valid JSON: {e}")),
    }
}

/// Decodes a batch; every length is checked, so arbitrary bytes give an error, not a panic.
pub(crate) fn decode_batch(bytes: &[u8], base: u64) -> DecodeResult<Vec<Op>> {
    let mut r = Reader::new(bytes, base);
    let n = r.u32("op count")? as usize;
    // Each op takes at least 5 bytes; refuse counts the payload cannot hold.
    if n > r.remaining() / 5 {
        return r.fail(format!("op count {n} exceeds what {} bytes can hold", r.remaining()));
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        match r.u8("op kind")? {
            OP_UPSERT => {
                let id = r.str(MAX_ID_BYTES, "id")?.to_owned();
                let dim = r.u32("dimension")? as usize;
                if dim > MAX_DIM {
                    return r.fail(format!("dimension {dim} exceeds {MAX_DIM}"));
                }
                let vector = r.f32s(dim, "vector")?;
                let text = match r.u8("text flag")? {
                    0 => None,
                    1 => Some(r.str(MAX_TEXT_BYTES, "text")?.to_owned()),
                    f => return r.fail(format!("bad text flag {f}")),
                };
                let metadata = match r.u8("metadata flag")? {
                    0 => None,
                    1 => {
                        let json = r.len_prefixed(MAX_METADATA_BYTES, "metadata")?;
                        Some(decode_metadata(&r, json)?)
                    }
                    f => return r.fail(format!("bad metadata flag {f}")),
                };
                ops.push(Op::Upsert(Arc::new(Record { id, vector, text, metadata })));
            }
            OP_DELETE => ops.push(Op::Delete(r.str(MAX_ID_BYTES, "id")?.to_owned())),
            k => return r.fail(format!("unknown op kind {k}")),
        }
    }
    if r.remaining() != 0 {
        return r.fail(format!("{} trailing bytes after the last op", r.remaining()));
    }
    Ok(ops)
}

/// The 64-bit key hash records are sorted by (xxh3-64 of the id's UTF-8 bytes).
pub fn key_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(id: &str, dim: usize) -> Record {
        Record { id: id.into(), vector: vec![0.5; dim], text: Some("t".into()), metadata: None }
    }

    #[test]
    fn batch_round_trip() {
        let mut m = Metadata::new();
        m.insert("k".into(), serde_json::json!([1, "x"]));
        let ops = vec![
            Op::Upsert(Arc::new(Record { metadata: Some(m), ..rec("a", 3) })),
            Op::Delete("b".into()),
            Op::Upsert(Arc::new(Record { text: None, ..rec("c", 3) })),
        ];
        let mut buf = Vec::new();
        encode_batch(&ops, &mut buf).unwrap();
        assert_eq!(decode_batch(&buf, 0).unwrap(), ops);
        assert_eq!(crate::wal_batch_len(&buf), Some(3));
        assert_eq!(crate::wal_batch_len(&buf[..3]), None);
    }

    #[test]
    fn rejects_nan_and_wrong_dim() {
        let mut r = rec("a", 3);
        assert!(validate_record(&r, 4).is_err());
        r.vector[1] = f32::NAN;
        let e = validate_record(&r, 3).unwrap_err().to_string();
        assert!(e.contains("vector[1]"), "{e}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes, 0);
        }

        #[test]
        fn truncated_batches_fail_cleanly(cut in 0usize..200) {
            let ops = vec![Op::Upsert(Arc::new(rec("abc", 8))), Op::Delete("zz".into())];
            let mut buf = Vec::new();
            encode_batch(&ops, &mut buf).unwrap();
            let cut = cut.min(buf.len() - 1);
            prop_assert!(decode_batch(&buf[..cut], 0).is_err());
        }
    }
}
