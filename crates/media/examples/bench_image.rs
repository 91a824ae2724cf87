//! Throughput of the image encoder: images per second, from file bytes to normalised
//! vectors (decode, crop and resize, network), over a folder of images.
//!
//!     cargo run --release -p kernelize-media --example bench_image -- \
//!         [--dir crates/media/tests/fixtures/images] [--threads 1,2] [--repeats 5] [--batch 16] [--json]
//!
//! The files (`.jpg`, `.jpeg`, `.png`, `.webp`) are read into memory first. For each
//! thread count, a rayon pool of that many threads runs `ImageEncoder::encode` on batches
//! of `--batch` files (one image per task inside a batch), once untimed, then `--repeats`
//! timed passes over all files; the figure is files / median pass time. With `--json`
//! each thread count also prints one JSON line (scripts/bench/media_image.py reads them
//! and sets PyTorch's pipeline beside them).

use kernelize_media::{Encoder, ImageEncoder, Input};
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

/// Command-line settings.
#[derive(clap::Parser)]
#[command(name = "bench_image")]
struct Args {
    /// Folder of input files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images"))]
    dir: PathBuf,
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = positive)]
    threads: Vec<usize>,
    /// Timed passes (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = positive)]
    repeats: usize,
    /// Files per `encode` call.
    #[arg(long, default_value_t = 16, value_parser = positive)]
    batch: usize,
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
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in fs_err::read_dir(&args.dir)? {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if ["jpg", "jpeg", "png", "webp"].contains(&ext.as_str()) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files.push((name, fs_err::read(&path)?));
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no .jpg/.jpeg/.png/.webp files in {}", args.dir.display()).into());
    }
    let bytes: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    let encoder = ImageEncoder::load(&ImageEncoder::default_model_dir())?;
    let inputs: Vec<Input<'_>> = files.iter().map(|(_, b)| Input::Bytes(b)).collect();
    println!(
        "bench_image: {} files ({:.1} MB) from {}, batch {}, {} repeats",
        files.len(),
        bytes as f64 / 1e6,
        args.dir.display(),
        args.batch,
        args.repeats
    );
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        let pass = || -> Result<f64, Box<dyn Error>> {
            let start = Instant::now();
            for (i, batch) in inputs.chunks(args.batch).enumerate() {
                for (j, result) in pool.install(|| encoder.encode(batch)).into_iter().enumerate() {
                    if let Err(e) = result {
                        return Err(format!("{}: {e}", files[i * args.batch + j].0).into());
                    }
                }
            }
            Ok(start.elapsed().as_secs_f64())
        };
        pass()?; // warm-up: page faults, thread-local buffers
        let mut times = (0..args.repeats).map(|_| pass()).collect::<Result<Vec<f64>, _>>()?;
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let per_s = files.len() as f64 / median;
        println!("threads {threads}: {per_s:8.1} images/s (median pass {:.3} s, best {:.3} s)", median, times[0]);
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "system": "kernelize",
                    "threads": threads,
                    "images": files.len(),
                    "batch": args.batch,
                    "repeats": args.repeats,
                    "median_s": median,
                    "best_s": times[0],
                    "images_per_s": per_s,
                })
            );
        }
    }
    Ok(())
}
