//! k-means for the inverted file (and for finding near-duplicate candidates): Lloyd's
//! iterations on a sample, then every row assigned to its nearest (and second nearest)
//! centroid. Distances are squared Euclidean on the vectors as prepared for the metric.

use kernelize_index::distance;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Training sample: at most this many rows per list.
const SAMPLE_PER_LIST: usize = 48;
const ITERATIONS: usize = 10;

/// The default number of lists for `n` rows: about `2·√n`.
pub fn default_nlist(n: usize) -> usize {
    ((2.0 * (n as f64).sqrt()).round() as usize).clamp(1, 65_536).min(n.max(1))
}

/// The two nearest centroids of `v`: `[(list, d²); 2]` (the second equals the first when
/// there is one list).
pub fn nearest2(v: &[f32], centroids: &[f32], dim: usize) -> [(u32, f32); 2] {
    let mut best = [(0u32, f32::INFINITY); 2];
    for (i, c) in centroids.chunks_exact(dim).enumerate() {
        let d = distance::l2_sq(v, c);
        if d < best[0].1 {
            best[1] = best[0];
            best[0] = (i as u32, d);
        } else if d < best[1].1 {
            best[1] = (i as u32, d);
        }
    }
    if best[1].1.is_infinite() {
        best[1] = best[0];
    }
    best
}

/// Trains `k` centroids on `vectors` (`n × dim`, prepared), seeded; stops early when
/// `stop` says so.
pub fn kmeans(vectors: &[f32], dim: usize, k: usize, seed: u64, stop: &dyn Fn() -> bool) -> Vec<f32> {
    let n = vectors.len() / dim.max(1);
    let k = k.clamp(1, n.max(1));
    if n == 0 {
        return vec![0.0; dim];
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let m = (k * SAMPLE_PER_LIST).min(n);
    let rows: Vec<usize> = sample(&mut rng, n, m).into_vec();
    let row = |i: usize| &vectors[i * dim..(i + 1) * dim];
    let mut centroids: Vec<f32> = rows.iter().take(k).flat_map(|&i| row(i).iter().copied()).collect();
    for _ in 0..ITERATIONS {
        if stop() {
            break;
        }
        let assigned: Vec<u32> = rows.par_iter().map(|&i| nearest2(row(i), &centroids, dim)[0].0).collect();
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (&i, &c) in rows.iter().zip(&assigned) {
            counts[c as usize] += 1;
            for (s, &x) in sums[c as usize * dim..(c as usize + 1) * dim].iter_mut().zip(row(i)) {
                *s += f64::from(x);
            }
        }
        for c in 0..k {
            let dst = &mut centroids[c * dim..(c + 1) * dim];
            if counts[c] == 0 {
                // An empty list restarts at a random sampled row.
                let r = rows[rng.random_range(0..rows.len())];
                dst.copy_from_slice(row(r));
            } else {
                for (d, s) in dst.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                    *d = (s / counts[c] as f64) as f32;
                }
            }
        }
    }
    centroids
}

/// The two nearest centroids of every row, in parallel.
pub fn assign(vectors: &[f32], dim: usize, centroids: &[f32]) -> Vec<[(u32, f32); 2]> {
    vectors.par_chunks_exact(dim).map(|v| nearest2(v, centroids, dim)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_separated_clusters() {
        let dim = 8;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut v = Vec::new();
        for i in 0..400 {
            let c = (i % 4) as f32 * 10.0;
            for _ in 0..dim {
                v.push(c + rng.random_range(-1.0f32..1.0));
            }
        }
        let cents = kmeans(&v, dim, 4, 3, &|| false);
        let a = assign(&v, dim, &cents);
        for i in 0..400 {
            assert_eq!(a[i][0].0, a[i % 4][0].0, "row {i} joins its cluster");
        }
        let lists: std::collections::BTreeSet<u32> = a.iter().map(|x| x[0].0).collect();
        assert_eq!(lists.len(), 4);
    }
}
