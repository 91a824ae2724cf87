//! Throughput measurement of [`Embedder::embed`] (used by `kernelize bench embed`
//! and `examples/bench_embed.rs`).

use std::time::Instant;

use crate::embedder::Embedder;

/// Timed passes over the texts in [`run`].
pub const DEFAULT_REPETITIONS: usize = 3;

/// Result of [`run`]: throughput of full passes over the texts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Texts embedded per pass.
    pub texts: usize,
    /// Tokens the model processed per pass (after truncation, `[CLS]`/`[SEP]` included).
    pub tokens: usize,
    /// Texts per call of [`Embedder::embed`].
    pub batch_size: usize,
    /// Threads of the rayon pool the passes ran on.
    pub threads: usize,
    /// Timed passes (after one untimed warm-up batch).
    pub repetitions: usize,
    /// Seconds of the median pass.
    pub median_secs: f64,
    /// Seconds of the fastest pass.
    pub min_secs: f64,
    /// Seconds of the slowest pass.
    pub max_secs: f64,
    /// Texts per second of the median pass.
    pub texts_per_sec: f64,
    /// Tokens per second of the median pass.
    pub tokens_per_sec: f64,
    /// CPU seconds (all threads of the process) of the median pass; `None`
    /// where `/proc/self/task/*/schedstat` is unavailable (non-Linux).
    /// On a shared machine this is the steadier figure: wall time includes
    /// waiting for other processes' threads.
    pub cpu_secs: Option<f64>,
    /// Texts per CPU second of the median pass.
    pub texts_per_cpu_sec: Option<f64>,
    /// First error met, if a batch failed (its texts are then not counted).
    pub error: Option<String>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} texts ({} tokens), batch {}, {} threads: {:.1} texts/s, {:.0} tokens/s \
             (median of {} passes, {:.3}s; min {:.3}s, max {:.3}s)",
            self.texts,
            self.tokens,
            self.batch_size,
            self.threads,
            self.texts_per_sec,
            self.tokens_per_sec,
            self.repetitions,
            self.median_secs,
            self.min_secs,
            self.max_secs
        )?;
        if let (Some(cpu), Some(rate)) = (self.cpu_secs, self.texts_per_cpu_sec) {
            write!(f, "; {cpu:.3} CPU s, {rate:.1} texts per CPU s")?;
        }
        if let Some(e) = &self.error {
            write!(f, " [error: {e}]")?;
        }
        Ok(())
    }
}

/// Embed `texts` in batches of `batch_size` on a pool of `threads` threads,
/// [`DEFAULT_REPETITIONS`] times; report the median pass.
pub fn run(embedder: &Embedder, texts: &[String], batch_size: usize, threads: usize) -> BenchReport {
    run_repeated(embedder, texts, batch_size, threads, DEFAULT_REPETITIONS)
}

/// [`run`] with a chosen number of timed passes (at least one).
pub fn run_repeated(
    embedder: &Embedder,
    texts: &[String],
    batch_size: usize,
    threads: usize,
    repetitions: usize,
) -> BenchReport {
    let batch_size = batch_size.max(1);
    let repetitions = repetitions.max(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build();
    let body = || measure(embedder, texts, batch_size, repetitions);
    let (mut report, threads) = match pool {
        Ok(pool) => (pool.install(body), pool.current_num_threads()),
        // Could not spawn threads: measure on the current pool and say so.
        Err(_) => (body(), rayon::current_num_threads()),
    };
    report.threads = threads;
    report
}

fn measure(embedder: &Embedder, texts: &[String], batch_size: usize, reps: usize) -> BenchReport {
    let mut error = None;
    let tokens: usize = texts
        .iter()
        .map(|t| match embedder.model_ids(t) {
            Ok(ids) => ids.len(),
            Err(e) => {
                error.get_or_insert(e.to_string());
                0
            }
        })
        .sum();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Warm-up: fault in the weights and grow the scratch buffers.
    if let Some(first) = refs.chunks(batch_size).next()
        && let Err(e) = embedder.embed(first)
    {
        error.get_or_insert(e.to_string());
    }
    let mut passes = Vec::with_capacity(reps);
    for _ in 0..reps {
        let cpu_start = process_cpu_secs();
        let start = Instant::now();
        for batch in refs.chunks(batch_size) {
            if let Err(e) = embedder.embed(batch) {
                error.get_or_insert(e.to_string());
            }
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_start.and_then(|s| process_cpu_secs().map(|e| e - s));
        passes.push((wall, cpu));
    }
    passes.sort_by(|a, b| a.0.total_cmp(&b.0));
    let secs: Vec<f64> = passes.iter().map(|p| p.0).collect();
    let (median, cpu_secs) = passes[passes.len() / 2];
    let per_sec = |n: usize| if median > 0.0 { n as f64 / median } else { 0.0 };
    BenchReport {
        texts: texts.len(),
        tokens,
        batch_size,
        threads: 0,
        repetitions: reps,
        median_secs: median,
        min_secs: secs[0],
        max_secs: secs[secs.len() - 1],
        texts_per_sec: per_sec(texts.len()),
        tokens_per_sec: per_sec(tokens),
        cpu_secs,
        texts_per_cpu_sec: cpu_secs.filter(|&c| c > 0.0).map(|c| texts.len() as f64 / c),
        error,
    }
}

/// CPU time of every thread of this process so far, from the scheduler's
/// per-thread statistics (nanoseconds, first field of `schedstat`). Threads that
/// exited are not counted, so call it around work done by long-lived threads
/// (rayon pools live as long as the pass).
fn process_cpu_secs() -> Option<f64> {
    let tasks = fs_err::read_dir("/proc/self/task").ok()?;
    let mut ns: u64 = 0;
    for task in tasks.flatten() {
        let stat = fs_err::read_to_string(task.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}
