//! The agent's recent log lines, bounded, sent up with status reports.

use parking_lot::Mutex;
use std::collections::VecDeque;

/// Most lines kept.
pub const MAX_LINES: usize = 64;
/// Most bytes sent up at once (the server keeps a bounded tail too).
pub const MAX_EXCERPT_BYTES: usize = 4096;
/// Longest line kept, bytes.
const MAX_LINE_BYTES: usize = 400;

/// A ring of recent lines, and how many were ever noted.
#[derive(Debug, Default)]
pub struct LogBuf(Mutex<VecDeque<String>>, std::sync::atomic::AtomicU64);

impl LogBuf {
    /// Logs `line` (through `tracing` too) and keeps it.
    pub fn note(&self, line: impl Into<String>) {
        let mut line: String = line.into();
        tracing::info!(target: "kernelize_agent", "{line}");
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let mut q = self.0.lock();
        if q.len() >= MAX_LINES {
            q.pop_front();
        }
        q.push_back(format!("{stamp} {line}"));
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many lines were ever noted (changes whenever the excerpt does).
    pub fn noted(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The newest lines that fit in [`MAX_EXCERPT_BYTES`], oldest first.
    pub fn excerpt(&self) -> String {
        let q = self.0.lock();
        let mut out: Vec<&str> = Vec::new();
        let mut bytes = 0;
        for l in q.iter().rev() {
            if bytes + l.len() + 1 > MAX_EXCERPT_BYTES {
                break;
            }
            bytes += l.len() + 1;
            out.push(l);
        }
        out.reverse();
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_is_bounded_and_keeps_the_newest() {
        let b = LogBuf::default();
        for i in 0..200 {
            b.note(format!("line {i} {}", "x".repeat(100)));
        }
        let e = b.excerpt();
        assert!(e.len() <= MAX_EXCERPT_BYTES);
        assert!(e.contains("line 199"));
        assert!(!e.contains("line 100 "));
    }
}
