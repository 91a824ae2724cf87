//! Throughput of the audio encoder: seconds of audio encoded per second, from file bytes
//! to normalised voice embeddings (decode, resample, normalise, VAD, mel, LSTM), over a
//! folder of audio files.
//!
//!     cargo run --release -p kernelize-media --example bench_audio -- \
//!         [--dir crates/media/tests/fixtures/audio] [--threads 1,2] [--repeats 5] [--json]
//!
//! The files (`.wav`, `.flac`, `.mp3`, `.ogg`) are read into memory first. For each thread
//! count, a rayon pool of that many threads runs `AudioEncoder::encode` on all files (one
//! file per task), once untimed (which also measures each file's decoded duration), then
//! `--repeats` timed passes; the figure is audio seconds / median pass time. Files the
//! encoder refuses (silence: no speech) count with their duration, as the reference
//! processes them too. scripts/bench/media_audio.py runs Resemblyzer's own pipeline on the
//! same files.

use kernelize_media::{AudioEncoder, Encoder, Input, audio};
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

/// Command-line settings.
#[derive(clap::Parser)]
#[command(name = "bench_audio")]
struct Args {
    /// Folder of input files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audio"))]
    dir: PathBuf,
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = positive)]
    threads: Vec<usize>,
    /// Timed passes (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = positive)]
    repeats: usize,
    /// Also print one JSON line per thread count.
    #[arg(long)]
    json: bool,
}

/// A count of at least 1.
fn positive(s: &str) -> Result<usize, String> {
    s.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{s:?} is not a positive integer"))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = <Args as clap::Parser>::parse();
    let mut paths: Vec<PathBuf> = fs_err::read_dir(&args.dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "wav" | "flac" | "mp3" | "ogg")))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("no .wav/.flac/.mp3/.ogg files in {}", args.dir.display()).into());
    }
    let files: Vec<Vec<u8>> = paths.iter().map(fs_err::read).collect::<Result<_, _>>()?;
    let inputs: Vec<Input<'_>> = files.iter().map(|f| Input::Bytes(f)).collect();
    let encoder = AudioEncoder::load(&AudioEncoder::default_model_dir())?;

    println!("{:>7}  {:>6}  {:>9}  {:>11}  {:>14}", "threads", "files", "audio s", "median s", "audio-s per s");
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        // Untimed pass: warms up, and measures the decoded durations.
        let first = pool.install(|| encoder.encode_with_info(&inputs));
        let mut audio_secs = 0.0;
        let mut refused = 0;
        for (r, bytes) in first.iter().zip(&files) {
            audio_secs += match r {
                Ok(e) => e.info.get("duration_secs").and_then(|d| d.as_f64()).unwrap_or(0.0),
                Err(_) => {
                    refused += 1;
                    audio::probe(bytes).map_or(0.0, |i| i.duration_secs)
                }
            };
        }
        let mut times: Vec<f64> = (0..args.repeats)
            .map(|_| {
                let start = Instant::now();
                let out = pool.install(|| encoder.encode(&inputs));
                let t = start.elapsed().as_secs_f64();
                std::hint::black_box(out);
                t
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let rate = audio_secs / median;
        println!("{threads:>7}  {:>6}  {audio_secs:>9.1}  {median:>11.3}  {rate:>14.1}", files.len());
        if refused > 0 {
            println!("         ({refused} file(s) refused: no speech)");
        }
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "bench": "media_audio",
                    "impl": "kernelize",
                    "threads": threads,
                    "files": files.len(),
                    "audio_secs": audio_secs,
                    "repeats": args.repeats,
                    "median_secs": median,
                    "audio_secs_per_sec": rate,
                })
            );
        }
    }
    Ok(())
}
