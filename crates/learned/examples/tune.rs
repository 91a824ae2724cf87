//! Temporary tuning harness.
use kernelize_learned::PgmIndex;
use kernelize_learned::bench::{Distribution, generate_keys, generate_lookups};
use std::hint::black_box;
use std::time::Instant;

fn cpu_ns() -> u64 {
    use std::io::Read as _;
    let mut s = String::new();
    std::fs::File::open("/proc/thread-self/schedstat").unwrap().read_to_string(&mut s).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn time(lookups: &[u64], f: impl Fn(u64) -> usize) -> (f64, u64) {
    let c = cpu_ns();
    let _t = Instant::now();
    let mut sum = 0u64;
    for &q in lookups {
        sum = sum.rotate_left(7) ^ f(black_box(q)) as u64;
    }
    ((cpu_ns() - c) as f64 / lookups.len() as f64, black_box(sum))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args[1].parse().unwrap();
    let dist: Distribution = args[2].parse().unwrap();
    let configs: Vec<(usize, String)> = args[3..]
        .iter()
        .map(|a| {
            let (e, m) = a.split_once(':').unwrap();
            (e.parse().unwrap(), m.to_string())
        })
        .collect();
    let keys = generate_keys(dist, n, 42);
    let lookups = generate_lookups(&keys, 1_000_000, 7);
    let mut idx = Vec::new();
    for (e, m) in &configs {
        // m = "LM,ER"
        let (lm, er) = m.split_once(',').unwrap();
        unsafe_env(er);
        let i = PgmIndex::build(&keys, *e).unwrap();
        eprintln!("eps {e} er {er}: {:?}", i);
        idx.push((i, lm.parse::<u8>().unwrap()));
    }
    let reps = 7;
    let mut ratios = vec![Vec::new(); configs.len()];
    let mut abs = vec![Vec::new(); configs.len()];
    let mut bins = Vec::new();
    for _ in 0..reps {
        let (b, bs) = time(&lookups, |q| keys.partition_point(|k| *k < q));
        bins.push(b);
        for (c, (i, lm)) in idx.iter().enumerate() {
            let (t, s) = if *lm == 9 {
                time(&lookups, |q| i.search(q).start)
            } else {
                time(&lookups, |q| i.lower_bound_mode(&keys, q, *lm))
            };
            if *lm != 9 {
                assert_eq!(s, bs);
            }
            ratios[c].push(b / t);
            abs[c].push(t);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("binary {:.1}", med(&mut bins));
    for (c, cfg) in configs.iter().enumerate() {
        println!("{:?}: {:.1} ns  ratio {:.2}x", cfg, med(&mut abs[c]), med(&mut ratios[c]));
    }
}

fn unsafe_env(er: &str) {
    // set_var is unsafe in edition 2024; avoid: pass through a file instead.
    std::fs::write("/tmp/kz_er", er).unwrap();
}
