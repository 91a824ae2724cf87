//! Throughput of `Embedder::embed` on a file of texts, without the CLI.
//!
//! ```text
//! cargo run --release -p kernelize-embed --example bench_embed -- \
//!     --texts data/wordnet.jsonl --every 11 --batch 64 --threads 2
//! ```
//!
//! `--texts` is a JSONL file (the `text` field of each line) or a plain text
//! file (one text per line). `--every K` keeps lines 0, K, 2K, …; `--limit N`
//! keeps the first N kept lines; `--reps R` timed passes (median reported).
//! `--model DIR` overrides `Embedder::default_model_dir()`. Prints a table row
//! and a JSON line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use kernelize_embed::{Embedder, bench};

struct Args {
    texts: PathBuf,
    batch: usize,
    threads: usize,
    every: usize,
    limit: usize,
    reps: usize,
    model: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        texts: PathBuf::from("data/wordnet.jsonl"),
        batch: 64,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        every: 1,
        limit: usize::MAX,
        reps: bench::DEFAULT_REPETITIONS,
        model: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--texts" => args.texts = PathBuf::from(value()?),
            "--batch" => args.batch = number(value()?)?,
            "--threads" => args.threads = number(value()?)?,
            "--every" => args.every = number(value()?)?.max(1),
            "--limit" => args.limit = number(value()?)?,
            "--reps" => args.reps = number(value()?)?,
            "--model" => args.model = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                return Err("usage: bench_embed --texts FILE [--every K] [--limit N] \
                            [--batch 64] [--threads 2] [--reps 3] [--model DIR]"
                    .into());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn read_texts(args: &Args) -> Result<Vec<String>, String> {
    let raw = fs_err::read_to_string(&args.texts).map_err(|e| e.to_string())?;
    let jsonl = args.texts.extension().is_some_and(|e| e == "jsonl");
    let mut texts = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        if i % args.every != 0 {
            continue;
        }
        if texts.len() >= args.limit {
            break;
        }
        if jsonl {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            let text = v["text"].as_str().ok_or_else(|| format!("line {}: no \"text\" string", i + 1))?;
            texts.push(text.to_owned());
        } else {
            texts.push(line.to_owned());
        }
    }
    Ok(texts)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let texts = match read_texts(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = args.model.clone().unwrap_or_else(Embedder::default_model_dir);
    let embedder = match Embedder::load(&dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = bench::run_repeated(&embedder, &texts, args.batch, args.threads, args.reps);
    let json = serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    // A closed pipe (e.g. `| head -1`) is not worth a panic.
    let mut out = std::io::stdout().lock();
    let printed = writeln!(out, "kernelize-embed: {report}").and_then(|()| writeln!(out, "{json}"));
    if report.error.is_some() || printed.is_err() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
