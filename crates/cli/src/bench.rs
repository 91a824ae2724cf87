//! `kernelize bench …`: whole-system benchmarks that print a table and a JSON line.

use anyhow::{Result, bail};
use clap::Subcommand;
use kernelize_learned::bench::{BenchConfig, Distribution};
use std::process::ExitCode;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Point lookups in sorted u64 keys: the learned index (PGM) against binary search
    /// (`partition_point`), an Eytzinger layout and `BTreeMap`: lookup ns, build time
    /// and index bytes per key.
    Keys {
        /// Key counts, comma-separated; `M` = million.
        #[arg(long, default_value = "10M,100M")]
        sizes: String,
        /// Distributions: dense, uniform, lognormal, clustered.
        #[arg(long, default_value = "dense,uniform,lognormal,clustered")]
        distributions: String,
        /// Lookups per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        lookups: usize,
        /// Error bound of the learned index.
        #[arg(long, default_value_t = 64)]
        epsilon: usize,
        /// Skip BTreeMap (slow to build and large at 100M keys).
        #[arg(long)]
        no_btree: bool,
        /// RNG seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn parse_size(s: &str) -> Result<usize> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('M' | 'm') => (&s[..s.len() - 1], 1_000_000),
        Some('K' | 'k') => (&s[..s.len() - 1], 1_000),
        _ => (s, 1),
    };
    match digits.parse::<usize>() {
        Ok(n) => Ok(n * mult),
        Err(_) => bail!("bad size {s:?}: expected e.g. 10M, 500K or 1000"),
    }
}

pub fn run(cmd: &BenchCmd) -> Result<ExitCode> {
    match cmd {
        BenchCmd::Keys { sizes, distributions, lookups, epsilon, no_btree, seed } => {
            let sizes = sizes.split(',').map(parse_size).collect::<Result<Vec<_>>>()?;
            let distributions = distributions
                .split(',')
                .map(|d| d.trim().parse::<Distribution>().map_err(|e| anyhow::anyhow!("{e}")))
                .collect::<Result<Vec<_>>>()?;
            let cfg = BenchConfig {
                sizes,
                distributions,
                lookups: *lookups,
                epsilon: *epsilon,
                seed: *seed,
                include_btree: !no_btree,
            };
            let rows = kernelize_learned::bench::run(&cfg, &mut |msg| eprintln!("{msg}"));
            println!("{}", kernelize_learned::bench::print_table(&rows));
            println!("{}", kernelize_learned::bench::to_json_line(&rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}
