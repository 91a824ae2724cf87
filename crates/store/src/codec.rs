//! Little-endian encoding helpers with bounds-checked decoding: a decoder never panics,
//! it returns the offset and reason of the first thing it cannot accept.

/// Why bytes could not be decoded, and where (offset relative to the decoder's base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    pub offset: u64,
    pub reason: String,
}

pub(crate) type DecodeResult<T> = Result<T, DecodeError>;

/// A cursor over bytes that checks every read.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Reader<'a> {
    /// `base` is the file offset of `buf[0]`, so errors carry file offsets.
    pub fn new(buf: &'a [u8], base: u64) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn fail<T>(&self, reason: impl Into<String>) -> DecodeResult<T> {
        Err(DecodeError { offset: self.offset(), reason: reason.into() })
    }

    pub fn bytes(&mut self, n: usize, what: &str) -> DecodeResult<&'a [u8]> {
        if n > self.remaining() {
            return self.fail(format!("{what}: needs {n} bytes, {} left", self.remaining()));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> DecodeResult<[u8; N]> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn u8(&mut self, what: &str) -> DecodeResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u32(&mut self, what: &str) -> DecodeResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &str) -> DecodeResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u32 length followed by that many bytes, refused above `max`.
    pub fn len_prefixed(&mut self, max: usize, what: &str) -> DecodeResult<&'a [u8]> {
        let at = self.offset();
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError { offset: at, reason: format!("{what}: length {n} exceeds limit {max}") });
        }
        self.bytes(n, what)
    }

    pub fn str(&mut self, max: usize, what: &str) -> DecodeResult<&'a str> {
        let at = self.offset();
        let b = self.len_prefixed(max, what)?;
        std::str::from_utf8(b)
            .map_err(|e| DecodeError { offset: at + 4, reason: format!("{what}: invalid UTF-8: {e}") })
    }

    pub fn f32s(&mut self, n: usize, what: &str) -> DecodeResult<Vec<f32>> {
        let bytes = self.bytes(n.saturating_mul(4), what)?;
        Ok(f32s_from_le(bytes))
    }
}

/// Decodes little-endian f32s (length must be a multiple of 4; extra bytes ignored).
pub(crate) fn f32s_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths are validated against limits far below u32::MAX before encoding.
    put_u32(out, u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(bytes);
}

pub(crate) fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    // Sized first, then filled in place: a straight copy on little-endian hosts.
    let start = out.len();
    out.resize(start + v.len() * 4, 0);
    for (d, x) in out[start..].chunks_exact_mut(4).zip(v) {
        d.copy_from_slice(&x.to_le_bytes());
    }
}

/// crc32c with the LevelDB-style mask, so a CRC stored inside checksummed data does not
/// checksum to a fixed pattern.
pub(crate) fn masked_crc(bytes: &[u8]) -> u32 {
    mask(crc32c::crc32c(bytes))
}

pub(crate) fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}
