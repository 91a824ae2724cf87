//! Resumable, verified downloads of release files.
//!
//! A download goes to `downloads/<sha256>.part`. Each request asks for the rest with
//! `Range: bytes=<have>-` and `If-Range: "<sha256>"` (the server's strong ETag), so a
//! server that changed the file answers 200 with all of it and the agent starts over. A
//! kernel is checked chunk by chunk against the signed manifest's chunk hashes as the
//! bytes arrive; after a restart the part file is re-checked and cut back to its last
//! good chunk. Nothing past the manifest's length is accepted, a stalled or too slow
//! transfer is dropped, and an optional bandwidth cap paces the reads.

use crate::error::Refusal;
use kernelize_bundle::{ChunkStream, ChunkVerifier, Sha256};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, IF_RANGE, RANGE};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Transfer limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// No byte for this long: the transfer is dropped (`stalled`).
    pub stall: Duration,
    /// Below this many bytes per second over [`Limits::rate_window`]: dropped (`too_slow`).
    pub min_bytes_per_sec: u64,
    /// The window the minimum throughput is measured over.
    pub rate_window: Duration,
    /// Read at most this many bytes per second (None: as fast as the link goes).
    pub max_bytes_per_sec: Option<u64>,
    /// Attempts per download when the connection drops (each resumes).
    pub attempts: u32,
    /// Ask for at most this many bytes per request (None: the rest of the file at once).
    /// With a bandwidth cap the agent asks in windows, so what the network and the
    /// kernel's socket buffers hold ahead of the paced reader stays small — and so does
    /// what a power cut wastes.
    pub window: Option<u64>,
}

impl Limits {
    /// The request window that suits a bandwidth cap: 1/32 s of transfer, 64 KiB – 8 MiB.
    pub fn window_for(max_bytes_per_sec: Option<u64>) -> Option<u64> {
        max_bytes_per_sec.filter(|c| *c > 0).map(|c| (c / 32).clamp(64 << 10, 8 << 20))
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            stall: Duration::from_secs(30),
            min_bytes_per_sec: 1024,
            rate_window: Duration::from_secs(60),
            max_bytes_per_sec: None,
            attempts: 3,
            window: None,
        }
    }
}

/// What to download.
#[derive(Debug)]
pub struct Source<'a> {
    /// The HTTP client.
    pub http: &'a reqwest::Client,
    /// The file's URL.
    pub url: String,
    /// Bearer token.
    pub token: Option<String>,
    /// Expected SHA-256 of the whole file.
    pub sha256: Sha256,
    /// Expected length, bytes: the hard cap.
    pub length: u64,
}

/// Checks bytes as they arrive: per chunk (a kernel) or as a whole (a delta).
enum Checker<'a> {
    Chunks(ChunkStream<'a>, u64),
    Whole { ctx: ring::digest::Context, have: u64, length: u64, sha256: Sha256 },
}

impl<'a> Checker<'a> {
    /// A checker positioned after what `file` already holds that checks out (a kernel:
    /// whole good chunks; a delta: every byte, up to the length, checked at the end).
    fn open(verifier: Option<&'a ChunkVerifier>, src: &Source<'_>, file: &mut fs_err::File) -> std::io::Result<Self> {
        file.seek(SeekFrom::Start(0))?;
        let c = match verifier {
            Some(v) => Checker::Chunks(v.resume(&mut *file).map_err(std::io::Error::other)?, v.length()),
            None => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut have = 0u64;
                let mut r = (&mut *file).take(src.length);
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                    have += n as u64;
                }
                Checker::Whole { ctx, have, length: src.length, sha256: src.sha256 }
            }
        };
        file.set_len(c.position())?;
        file.seek(SeekFrom::Start(c.position()))?;
        Ok(c)
    }

    fn position(&self) -> u64 {
        match self {
            Checker::Chunks(s, _) => s.position(),
            Checker::Whole { have, .. } => *have,
        }
    }

    /// Bytes taken (verified, plus those of a chunk not complete yet): where the next
    /// request starts.
    fn received(&self) -> u64 {
        match self {
            Checker::Chunks(s, _) => s.received(),
            Checker::Whole { have, .. } => *have,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        match self {
            Checker::Chunks(s, length) => {
                if bytes.len() as u64 > length.saturating_sub(s.received()) {
                    return Err(too_long(s.received(), bytes.len()));
                }
                s.push(bytes).map_err(|e| Refusal::download("corrupt_chunk", e.to_string()))
            }
            Checker::Whole { ctx, have, length, .. } => {
                if bytes.len() as u64 > *length - *have {
                    return Err(too_long(*have, bytes.len()));
                }
                ctx.update(bytes);
                *have += bytes.len() as u64;
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<(), Refusal> {
        match self {
            Checker::Chunks(s, _) => {
                s.finish().map(|_| ()).map_err(|e| Refusal::verify("hash_mismatch", e.to_string()))
            }
            Checker::Whole { ctx, have, length, sha256 } => {
                if have != length {
                    return Err(Refusal::download("truncated", format!("ended after {have} of {length} bytes")));
                }
                let mut got = [0u8; 32];
                got.copy_from_slice(ctx.finish().as_ref());
                let got = Sha256(got);
                if got != sha256 {
                    return Err(Refusal::verify("hash_mismatch", format!("SHA-256 {got}, the offer says {sha256}")));
                }
                Ok(())
            }
        }
    }
}

fn too_long(have: u64, more: usize) -> Refusal {
    Refusal::download("too_long", format!("{more} more bytes after {have} pass the signed length"))
}

/// Downloads `src` into `part`, resuming what is there. With `verifier` (a kernel), every
/// chunk is checked as it arrives and a bad chunk is cut off; without (a delta), the
/// whole hash is checked at the end. `transferred` counts every body byte received.
/// On success `part` holds exactly the file, fsynced.
pub async fn download(
    src: &Source<'_>,
    verifier: Option<&ChunkVerifier>,
    part: &Path,
    limits: &Limits,
    transferred: &AtomicU64,
) -> Result<(), Refusal> {
    let io = |e: std::io::Error| Refusal::other(format!("{}: {e}", part.display()));
    let mut file =
        fs_err::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(part).map_err(io)?;
    let mut checker = Checker::open(verifier, src, &mut file).map_err(io)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match fetch_rest(src, &mut checker, &mut file, limits, transferred).await {
            Ok(()) if checker.received() >= src.length => break,
            // One window done: the next one (progress resets the attempts).
            Ok(()) => attempt = 0,
            Err(Fetch::Refused(r)) => {
                // Keep the chunks that checked out for the next attempt.
                let _ = file.set_len(checker.position());
                return Err(r);
            }
            Err(Fetch::Restart) => {
                file.set_len(0).map_err(io)?;
                checker = Checker::open(verifier, src, &mut file).map_err(io)?;
            }
            Err(Fetch::Dropped(detail)) => {
                if attempt >= limits.attempts.max(1) {
                    let _ = file.set_len(checker.position());
                    return Err(Refusal::download("transport", detail));
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                checker = Checker::open(verifier, src, &mut file).map_err(io)?;
            }
        }
    }
    checker.finish()?;
    file.sync_all().map_err(io)?;
    Ok(())
}

enum Fetch {
    /// The bytes or the server's answer are wrong: stop.
    Refused(Refusal),
    /// The connection dropped: resume.
    Dropped(String),
    /// The server sent the whole file instead of the rest (its file changed): start over.
    Restart,
}

impl From<Refusal> for Fetch {
    fn from(r: Refusal) -> Fetch {
        Fetch::Refused(r)
    }
}

/// One request for the rest of the file.
async fn fetch_rest(
    src: &Source<'_>,
    checker: &mut Checker<'_>,
    file: &mut fs_err::File,
    limits: &Limits,
    transferred: &AtomicU64,
) -> Result<(), Fetch> {
    let start = checker.received();
    if start == src.length {
        return Ok(());
    }
    let mut end = limits.window.map_or(src.length, |w| start.saturating_add(w.max(1)).min(src.length));
    let mut req = src
        .http
        .get(&src.url)
        .header(RANGE, format!("bytes={start}-{}", end - 1))
        .header(IF_RANGE, format!("\"{}\"", src.sha256));
    if let Some(t) = &src.token {
        req = req.bearer_auth(t);
    }
    let mut resp = match tokio::time::timeout(limits.stall, req.send()).await {
        Err(_) => return Err(Refusal::download("stalled", format!("no answer within {:?}", limits.stall)).into()),
        Ok(Err(e)) => return Err(Fetch::Dropped(e.to_string())),
        Ok(Ok(r)) => r,
    };
    let mut pos = start;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            let (first, total) = parse_content_range(cr).ok_or_else(|| {
                Refusal::download("bad_answer", format!("206 with Content-Range {cr:?}, asked for bytes={start}-"))
            })?;
            if total != src.length {
                return Err(Refusal::verify(
                    "length_mismatch",
                    format!("the server's file has {total} bytes, the signed length is {}", src.length),
                )
                .into());
            }
            if first != start {
                return Err(
                    Refusal::download("bad_answer", format!("asked for bytes from {start}, got from {first}")).into()
                );
            }
        }
        // The whole file: what was asked (from 0), or the server's file changed (If-Range).
        StatusCode::OK if start == 0 => end = src.length,
        StatusCode::OK => return Err(Fetch::Restart),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            return Err(Refusal::verify(
                "length_mismatch",
                format!("the server cannot serve bytes from {start}; the signed length is {}", src.length),
            )
            .into());
        }
        s => return Err(Refusal::download("http_error", format!("{} answered {s}", src.url)).into()),
    }
    if let Some(n) =
        resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && pos + n > end
    {
        return Err(Refusal::download(
            "too_long",
            format!(
                "the answer holds {n} bytes from {pos}; asked for {} (the signed length is {})",
                end - pos,
                src.length
            ),
        )
        .into());
    }
    let t0 = Instant::now();
    let mut window = (Instant::now(), 0u64);
    let mut got = 0u64;
    loop {
        let piece = match tokio::time::timeout(limits.stall, resp.chunk()).await {
            Err(_) => {
                return Err(Refusal::download(
                    "stalled",
                    format!("no byte for {:?} after {pos} of {} bytes", limits.stall, src.length),
                )
                .into());
            }
            Ok(Err(e)) => return Err(Fetch::Dropped(e.to_string())),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(b))) => b,
        };
        transferred.fetch_add(piece.len() as u64, Ordering::Relaxed);
        if pos + piece.len() as u64 > end {
            return Err(too_long(pos, piece.len()).into());
        }
        checker.push(&piece)?;
        file.write_all(&piece).map_err(|e| Refusal::other(e.to_string()))?;
        pos += piece.len() as u64;
        got += piece.len() as u64;
        window.1 += piece.len() as u64;
        let elapsed = window.0.elapsed();
        if elapsed >= limits.rate_window {
            let rate = window.1 as f64 / elapsed.as_secs_f64();
            if rate < limits.min_bytes_per_sec as f64 {
                return Err(Refusal::download(
                    "too_slow",
                    format!("{rate:.0} bytes/s over {elapsed:?}, the minimum is {}", limits.min_bytes_per_sec),
                )
                .into());
            }
            window = (Instant::now(), 0);
        }
        if let Some(cap) = limits.max_bytes_per_sec.filter(|c| *c > 0) {
            let due = Duration::from_secs_f64(got as f64 / cap as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    if pos < end {
        return Err(Fetch::Dropped(format!("the answer ended at byte {pos}, asked up to {end} of {}", src.length)));
    }
    Ok(())
}

/// `bytes a-b/total` → (a, total).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    Some((a.trim().parse().ok()?, total.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 10-19/100"), Some((10, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
