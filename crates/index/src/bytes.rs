//! A bounds-checked little-endian cursor for the index decoders (payload and BM25
//! indexes): every read checks what is left and fails with the offset and what was being
//! read, so no input can make a decoder panic or allocate without bound.

/// Where decoding stopped and why; each decoder turns it into its own error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt {
    /// Byte offset in the buffer being decoded.
    pub offset: usize,
    /// What is wrong there.
    pub message: String,
}

/// A cursor over `buf`, at `pos`.
pub(crate) struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// An error at `offset`.
    pub fn fail(offset: usize, message: impl Into<String>) -> Corrupt {
        Corrupt { offset, message: message.into() }
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize, what: &str) -> Result<&'a [u8], Corrupt> {
        let s = self
            .buf
            .get(self.pos..self.pos.saturating_add(len))
            .ok_or_else(|| Reader::fail(self.pos, format!("truncated {what}")))?;
        self.pos += len;
        Ok(s)
    }

    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Corrupt> {
        let b = self.bytes(N, what)?;
        <[u8; N]>::try_from(b).map_err(|_| Reader::fail(self.pos - N, format!("truncated {what}")))
    }

    /// A byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, Corrupt> {
        Ok(self.take::<1>(what)?[0])
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, what: &str) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take(what)?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, what: &str) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take(what)?))
    }

    /// A little-endian `f64`.
    pub fn f64(&mut self, what: &str) -> Result<f64, Corrupt> {
        Ok(f64::from_le_bytes(self.take(what)?))
    }

    /// A `u32` count of items at least `min_size` bytes each, checked against what is left
    /// so a corrupt count cannot trigger a huge allocation.
    pub fn count(&mut self, what: &str, min_size: usize) -> Result<usize, Corrupt> {
        let at = self.pos;
        let count = self.u32(what)? as usize;
        let left = self.buf.len() - self.pos;
        if count.saturating_mul(min_size) > left {
            return Err(Reader::fail(at, format!("{what} {count} exceeds the {left} bytes left")));
        }
        Ok(count)
    }

    /// A `u32`-length-prefixed UTF-8 string.
    pub fn string(&mut self, what: &str) -> Result<String, Corrupt> {
        let len = self.count(what, 1)?;
        let at = self.pos;
        let bytes = self.bytes(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Reader::fail(at, format!("{what} is not UTF-8")))
    }
}
