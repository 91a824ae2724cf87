//! Runs the key-lookup benchmark without the CLI:
//!
//! ```text
//! cargo run --release -p kernelize-learned --example bench_keys -- \
//!     [--sizes 10000000,100000000] [--dist dense,uniform,lognormal,clustered] \
//!     [--lookups 2000000] [--epsilon 64] [--seed 42] [--no-btree] [--json]
//! ```

use kernelize_learned::bench::{self, BenchConfig, Distribution};

fn main() {
    let mut cfg = BenchConfig::default();
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("{arg} needs a value");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--sizes" => cfg.sizes = value().split(',').map(|s| parse(s.trim())).collect(),
            "--dist" => {
                cfg.distributions =
                    value().split(',').map(|s| s.parse::<Distribution>().unwrap_or_else(|e| fail(&e))).collect();
            }
            "--lookups" => cfg.lookups = parse(&value()),
            "--epsilon" => cfg.epsilon = parse(&value()),
            "--seed" => cfg.seed = parse(&value()),
            "--no-btree" => cfg.include_btree = false,
            "--json" => json = true,
            other => fail(&format!("unknown argument {other}")),
        }
    }
    let rows = bench::try_run(&cfg, &mut |line| eprintln!("{line}")).unwrap_or_else(|e| fail(&e.to_string()));
    print!("{}", bench::print_table(&rows));
    if json {
        println!("{}", bench::to_json_line(&rows));
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> T {
    s.replace('_', "").parse().unwrap_or_else(|_| fail(&format!("not a number: {s}")))
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}
