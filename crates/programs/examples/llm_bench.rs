//! Local-model speed and constrained-output validity (BENCHMARKS.md, scripts/bench/llm.sh).
//!
//! ```text
//! cargo run --release --example llm_bench -p kernelize-programs -- speed --threads 1,2 --reps 5
//! cargo run --release --example llm_bench -p kernelize-programs -- valid --data data/wn-supersense --n 200
//! ```
//!
//! `speed`: load time, then prefill of a 512-token prompt in one batch from an empty cache
//! and 128 greedy decode steps (as `scripts/bench/llm_peers.py` does with llama.cpp);
//! medians of `--reps`. `valid`: `--n` prompts (WN-Supersense test items; half ask for the
//! label, half for reasoning then the label) answered with the schema enforced and without
//! it (the schema only described in the prompt): share of answers that parse and fit.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark program"
)]

use std::time::Instant;

use kernelize_programs::local::{LocalConfig, LocalModel};
use kernelize_programs::{Backend, Example, FieldType, OutputFormat, Predict, Request, Signature};
use serde_json::json;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let model_path = arg("--model").map_or_else(|| LocalConfig::default_model().path, Into::into);
    match args.get(1).map(String::as_str) {
        Some("speed") => {
            let reps: usize = arg("--reps").map_or(5, |s| s.parse().unwrap());
            for t in arg("--threads").unwrap_or_else(|| "1,2".into()).split(',') {
                let threads: usize = t.parse().unwrap();
                let cfg = LocalConfig { threads, context: 4096, batch: 512, ..LocalConfig::new(&model_path) };
                drop(LocalModel::load(&cfg).unwrap());
                let start = Instant::now();
                let m = LocalModel::load(&cfg).unwrap();
                let load = start.elapsed().as_secs_f64();
                let (mut pre, mut dec) = (Vec::new(), Vec::new());
                for _ in 0..reps {
                    let s = m.bench(512, 128).await.unwrap();
                    pre.push(s.prefill_seconds);
                    dec.push(s.decode_seconds);
                }
                println!(
                    "{}",
                    json!({ "engine": "kernelize (llama-cpp-2)", "threads": threads, "load_s": load,
                            "prefill_tok_s": 512.0 / median(pre), "decode_tok_s": 128.0 / median(dec) })
                );
            }
        }
        Some("valid") => {
            let n: usize = arg("--n").map_or(200, |s| s.parse().unwrap());
            let dir = arg("--data").unwrap_or_else(|| "data/wn-supersense".into());
            let test: Vec<Example> = fs_err::read_to_string(format!("{dir}/test.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let labels: std::collections::HashMap<String, Vec<String>> =
                serde_json::from_str(&fs_err::read_to_string(format!("{dir}/labels.json")).unwrap()).unwrap();
            let mut all = labels["noun"].clone();
            all.extend(labels["verb"].iter().cloned());
            let sig = Signature::builder("Name the WordNet lexicographer file (supersense) of this sense of the word.")
                .input("lemma", FieldType::String, "")
                .input("pos", FieldType::String, "")
                .input("gloss", FieldType::String, "")
                .input_field(
                    kernelize_programs::Field::new(
                        "candidates",
                        FieldType::List { items: Box::new(FieldType::String), max_items: None },
                    )
                    .hidden(),
                )
                .output("supersense", FieldType::Enum { labels: all, from_input: Some("candidates".into()) }, "")
                .build()
                .unwrap();
            let m = LocalModel::load(&LocalConfig { threads: 2, ..LocalConfig::new(&model_path) }).unwrap();
            let (mut ok_c, mut ok_u, mut done) = (0, 0, 0);
            let t = Instant::now();
            for (i, e) in test.iter().take(n).enumerate() {
                let p = if i % 2 == 0 {
                    Predict::new("p", sig.clone())
                } else {
                    Predict::chain_of_thought("p", sig.clone())
                };
                let esig = p.effective_signature();
                let schema = esig.output_schema(&e.inputs);
                let mut req = Request { messages: p.messages(&e.inputs), ..Request::default() };
                req.sampling.max_tokens = 256; // the server's cap per call
                let free = m.complete(&req, None).await.unwrap();
                ok_u += usize::from(esig.parse_output(&free.text, &e.inputs).is_ok());
                req.format = OutputFormat::Json { schema };
                let fixed = m.complete(&req, None).await.unwrap();
                ok_c += usize::from(esig.parse_output(&fixed.text, &e.inputs).is_ok());
                done += 1;
            }
            println!(
                "{}",
                json!({ "prompts": done, "constrained_valid": ok_c, "unconstrained_valid": ok_u,
                        "constrained_rate": ok_c as f64 / done as f64, "unconstrained_rate": ok_u as f64 / done as f64,
                        "seconds": t.elapsed().as_secs_f64() })
            );
        }
        _ => eprintln!("usage: llm_bench speed [--threads 1,2] [--reps 5] | valid [--data DIR] [--n 200]"),
    }
}
