//! Chunk hashes: computed once by the server, checked by the device as bytes arrive, so a
//! resumed download keeps only chunks that are known good and a bad byte costs one chunk.

use crate::error::{BundleError, Result};
use crate::keys::Sha256;
use crate::manifest::{MAX_CHUNK_SIZE, MAX_CHUNKS, MIN_CHUNK_SIZE, ReleaseManifest, chunk_count};
use ring::digest::{Context, SHA256};
use std::io::Read;
use std::ops::Range;
use std::path::Path;

/// The digests a manifest carries for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Length, bytes.
    pub length: u64,
    /// SHA-256 of the whole file.
    pub sha256: Sha256,
    /// Chunk size the chunk hashes were taken with.
    pub chunk_size: u64,
    /// SHA-256 of each `chunk_size` chunk (the last may be shorter).
    pub chunk_hashes: Vec<Sha256>,
}

fn check_chunk_size(chunk_size: u64) -> Result<()> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(BundleError::Invalid(format!(
            "chunk size {chunk_size}: must be a power of two in {MIN_CHUNK_SIZE} ..= {MAX_CHUNK_SIZE}"
        )));
    }
    Ok(())
}

/// Reads `reader` to its end and returns its length, SHA-256 and the SHA-256 of each
/// `chunk_size` chunk (a power of two in [`MIN_CHUNK_SIZE`] ..= [`MAX_CHUNK_SIZE`]).
/// Refuses a file that would need more than [`MAX_CHUNKS`] chunks.
pub fn chunk_hashes(mut reader: impl Read, chunk_size: u64) -> Result<Digests> {
    check_chunk_size(chunk_size)?;
    let mut whole = Context::new(&SHA256);
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut length = 0u64;
    loop {
        let n =
            read_full(&mut reader, &mut buf).map_err(|source| BundleError::Read { what: "file to hash", source })?;
        if n == 0 {
            break;
        }
        if chunks.len() as u64 == MAX_CHUNKS {
            return Err(BundleError::Invalid(format!(
                "more than {MAX_CHUNKS} chunks of {chunk_size} bytes: use a larger chunk size"
            )));
        }
        whole.update(&buf[..n]);
        chunks.push(Sha256::of(&buf[..n]));
        length += n as u64;
        if n < buf.len() {
            break;
        }
    }
    Ok(Digests { length, sha256: Sha256::from_ring(whole.finish()), chunk_size, chunk_hashes: chunks })
}

/// [`chunk_hashes`] of a file.
pub fn file_digests(path: &Path, chunk_size: u64) -> Result<Digests> {
    let f = fs_err::File::open(path).map_err(|e| BundleError::io(path, e))?;
    chunk_hashes(std::io::BufReader::with_capacity(1 << 16, f), chunk_size).map_err(|e| match e {
        BundleError::Read { source, .. } => BundleError::io(path, source),
        e => e,
    })
}

/// Fills `buf` unless the reader ends first; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Checks downloaded bytes against a manifest's length, chunk hashes and whole hash.
#[derive(Debug, Clone)]
pub struct ChunkVerifier {
    length: u64,
    chunk_size: u64,
    chunks: Vec<Sha256>,
    sha256: Sha256,
}

impl ChunkVerifier {
    /// The verifier of a (verified) release manifest's file.
    pub fn new(m: &ReleaseManifest) -> ChunkVerifier {
        ChunkVerifier { length: m.length, chunk_size: m.chunk_size, chunks: m.chunk_hashes.clone(), sha256: m.sha256 }
    }

    /// From digests (e.g. [`chunk_hashes`] of a file the server holds); checks that they
    /// agree with each other.
    pub fn from_digests(d: &Digests) -> Result<ChunkVerifier> {
        check_chunk_size(d.chunk_size)?;
        if chunk_count(d.length, d.chunk_size) != d.chunk_hashes.len() as u64 {
            return Err(BundleError::Invalid(format!(
                "{} chunk hashes for {} bytes in chunks of {}",
                d.chunk_hashes.len(),
                d.length,
                d.chunk_size
            )));
        }
        Ok(ChunkVerifier {
            length: d.length,
            chunk_size: d.chunk_size,
            chunks: d.chunk_hashes.clone(),
            sha256: d.sha256,
        })
    }

    /// The file's length: no byte past it is ever accepted.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Chunk size.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The byte range of chunk `index`, or `None` past the last.
    pub fn chunk_range(&self, index: usize) -> Option<Range<u64>> {
        (index < self.chunks.len()).then(|| {
            let start = index as u64 * self.chunk_size;
            start..(start + self.chunk_size).min(self.length)
        })
    }

    /// Checks chunk `index` (all its bytes).
    pub fn check_chunk(&self, index: usize, bytes: &[u8]) -> Result<()> {
        let range = self.chunk_range(index).ok_or_else(|| BundleError::Content {
            what: format!("chunk {index}"),
            reason: format!("the file has {} chunks", self.chunks.len()),
        })?;
        let what = || format!("chunk {index} (bytes {}..{})", range.start, range.end);
        if bytes.len() as u64 != range.end - range.start {
            return Err(BundleError::Content {
                what: what(),
                reason: format!("{} bytes, expected {}", bytes.len(), range.end - range.start),
            });
        }
        let got = Sha256::of(bytes);
        if got != self.chunks[index] {
            return Err(BundleError::Content {
                what: what(),
                reason: format!("SHA-256 {got}, the manifest says {}", self.chunks[index]),
            });
        }
        Ok(())
    }

    /// Checks a whole file: exact length, every chunk, the whole hash.
    pub fn check_file(&self, reader: impl Read) -> Result<()> {
        let mut s = self.stream();
        let mut r = reader.take(self.length + 1);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf).map_err(|source| BundleError::Read { what: "file to check", source })?;
            if n == 0 {
                break;
            }
            s.push(&buf[..n])?;
        }
        s.finish().map(|_| ())
    }

    /// A stream that checks bytes from offset 0 as they arrive.
    pub fn stream(&self) -> ChunkStream<'_> {
        ChunkStream { v: self, pos: 0, buf: Vec::new(), whole: Context::new(&SHA256) }
    }

    /// Resumes a download: reads the bytes already on disk (`prefix`, at most
    /// [`ChunkVerifier::length`] of them are read), keeps the longest run of whole chunks
    /// that check out, and returns a stream positioned after them. The caller truncates
    /// its partial file to [`ChunkStream::position`] and asks for the rest from there.
    pub fn resume(&self, prefix: impl Read) -> Result<ChunkStream<'_>> {
        let mut s = self.stream();
        let mut r = prefix.take(self.length);
        let mut buf = vec![0u8; self.chunk_size as usize];
        for i in 0..self.chunks.len() {
            let Some(range) = self.chunk_range(i) else { break };
            let want = (range.end - range.start) as usize;
            let n = read_full(&mut r, &mut buf[..want])
                .map_err(|source| BundleError::Read { what: "partial download", source })?;
            if n < want || self.check_chunk(i, &buf[..n]).is_err() {
                break;
            }
            s.whole.update(&buf[..n]);
            s.pos = range.end;
        }
        Ok(s)
    }
}

/// Bytes of one file checked as they arrive, chunk by chunk, then as a whole.
pub struct ChunkStream<'a> {
    v: &'a ChunkVerifier,
    pos: u64,
    buf: Vec<u8>,
    whole: Context,
}

impl std::fmt::Debug for ChunkStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStream").field("position", &self.pos).field("pending", &self.buf.len()).finish()
    }
}

impl ChunkStream<'_> {
    /// Bytes verified so far (whole chunks): where a download resumes after a failure.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes accepted so far (verified plus those of the chunk being received).
    pub fn received(&self) -> u64 {
        self.pos + self.buf.len() as u64
    }

    /// Takes the next bytes of the file. A chunk is checked as soon as its last byte
    /// arrives; a bad chunk is dropped (the stream is back at [`ChunkStream::position`],
    /// its start) and reported. A byte past the file's length is refused.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.v.length - self.received() {
            return Err(BundleError::Content {
                what: "file".into(),
                reason: format!(
                    "{} more bytes after {} would pass the length of {} bytes",
                    bytes.len(),
                    self.received(),
                    self.v.length
                ),
            });
        }
        while !bytes.is_empty() {
            let index = (self.pos / self.v.chunk_size) as usize;
            let Some(range) = self.v.chunk_range(index) else { break };
            let want = (range.end - range.start) as usize - self.buf.len();
            let take = want.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if take == want {
                let chunk = std::mem::take(&mut self.buf);
                self.v.check_chunk(index, &chunk)?;
                self.whole.update(&chunk);
                self.pos = range.end;
                self.buf = chunk;
                self.buf.clear();
            }
        }
        Ok(())
    }

    /// Ends the file: every byte received, every chunk and the whole hash good.
    pub fn finish(self) -> Result<Sha256> {
        if self.pos != self.v.length {
            return Err(BundleError::Content {
                what: "file".into(),
                reason: format!("ended after {} bytes, the length is {}", self.received(), self.v.length),
            });
        }
        let got = Sha256::from_ring(self.whole.finish());
        if got != self.v.sha256 {
            return Err(BundleError::Content {
                what: "file".into(),
                reason: format!("SHA-256 {got}, the manifest says {}", self.v.sha256),
            });
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn hashes_match_the_definition() {
        for n in [0usize, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5] {
            let b = data(n);
            let d = chunk_hashes(&b[..], 4096).unwrap();
            assert_eq!(d.length, n as u64);
            assert_eq!(d.sha256, Sha256::of(&b));
            let expect: Vec<Sha256> = b.chunks(4096).map(Sha256::of).collect();
            assert_eq!(d.chunk_hashes, expect, "{n} bytes");
            let v = ChunkVerifier::from_digests(&d).unwrap();
            v.check_file(&b[..]).unwrap();
        }
        assert!(chunk_hashes(&b""[..], 1000).is_err(), "not a power of two");
    }

    #[test]
    fn stream_in_odd_pieces_and_caps() {
        let b = data(3 * 4096 + 100);
        let v = ChunkVerifier::from_digests(&chunk_hashes(&b[..], 4096).unwrap()).unwrap();
        let mut s = v.stream();
        for piece in b.chunks(777) {
            s.push(piece).unwrap();
        }
        assert_eq!(s.position(), b.len() as u64);
        assert!(s.push(b"x").is_err(), "no byte past the length");
        s.finish().unwrap();
        // Short file.
        let mut s = v.stream();
        s.push(&b[..5000]).unwrap();
        assert_eq!(s.position(), 4096);
        assert_eq!(s.finish().unwrap_err().code(), "content_mismatch");
    }
}
