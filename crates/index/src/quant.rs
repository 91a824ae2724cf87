//! Vector quantization for the graph walk; the full-precision vectors stay in the segment
//! file for exact re-ranking.
//!
//! * **int8** (scalar): per dimension, `x ≈ lo + step · c` with `c` in `0..=255`, trained
//!   on the segment's vectors (normalised first for cosine). A query is scored against
//!   codes without decoding: `q·x ≈ q·lo + Σ (q ∘ step)·c`.
//! * **RaBitQ** (Gao & Long, SIGMOD 2024, and its multi-bit extension): vectors are
//!   centred on the segment centroid, normalised, and turned by a random orthogonal
//!   matrix; each rotated coordinate is kept with `bits` bits (1 or 4). Inner products
//!   with the unit residual `r̂` are estimated as `⟨x̄, w⟩ / ⟨x̄, u⟩`, where `x̄` is the
//!   quantized residual in rotated space, `u` the rotated unit residual (so the divisor is
//!   `⟨x̄, u⟩`) and `w` the rotated query (the unit query residual for cosine and l2, the raw
//!   query for dot); the estimate is unbiased up to the quantization of the query itself
//!   (4 bits for 1-bit codes, 8 bits for 4-bit codes).

use crate::distance;
use crate::hnsw::Space;
use kernelize_store::Metric;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

pub use kernelize_store::Quantization;

/// RaBitQ works on dimensions rounded up to a multiple of 64.
pub fn padded_dim(dim: usize) -> usize {
    dim.div_ceil(64) * 64
}

fn prepared(metric: Metric, v: &[f32]) -> Vec<f32> {
    crate::space::prepare_query(metric, v)
}

// ---------------------------------------------------------------- int8

/// Trained int8 parameters and encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Model {
    /// Lower end per dimension.
    pub lo: Vec<f32>,
    /// Step per dimension.
    pub step: Vec<f32>,
}

impl Int8Model {
    /// Trains on the rows `rows` yields (already prepared for the metric).
    pub fn train<'a>(dim: usize, rows: impl Iterator<Item = &'a [f32]>) -> Int8Model {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for r in rows {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(r) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let step = lo
            .iter_mut()
            .zip(&hi)
            .map(|(l, &h)| {
                if !l.is_finite() || !h.is_finite() {
                    *l = 0.0;
                    return 1.0;
                }
                let s = (h - *l) / 255.0;
                if s > 0.0 { s } else { 1.0 }
            })
            .collect();
        Int8Model { lo, step }
    }

    /// Encodes one prepared row into `out` (`dim` bytes); returns `‖decoded‖²`.
    pub fn encode(&self, row: &[f32], out: &mut [u8]) -> f32 {
        let mut n2 = 0.0;
        for (((o, &x), &l), &s) in out.iter_mut().zip(row).zip(&self.lo).zip(&self.step) {
            let c = ((x - l) / s).round().clamp(0.0, 255.0);
            *o = c as u8;
            let d = l + s * c;
            n2 += d * d;
        }
        n2
    }
}

/// Int8 codes of a segment as the graph walk sees them.
#[derive(Debug, Clone, Copy)]
pub struct Int8Space<'a> {
    /// Model.
    pub lo: &'a [f32],
    /// Model.
    pub step: &'a [f32],
    /// `n * dim` codes.
    pub codes: &'a [u8],
    /// `‖decoded‖²` per node.
    pub norms2: &'a [f32],
    /// Dimension.
    pub dim: usize,
    /// Metric.
    pub metric: Metric,
}

/// A query prepared for [`Int8Space`].
#[derive(Debug, Clone)]
pub struct Int8Query {
    scaled: Vec<f32>,
    base: f32,
    norm2: f32,
}

impl Int8Space<'_> {
    /// Prepares a raw query.
    pub fn query(&self, q: &[f32]) -> Int8Query {
        let q = prepared(self.metric, q);
        let scaled = q.iter().zip(self.step).map(|(a, s)| a * s).collect();
        Int8Query { scaled, base: distance::dot(&q, self.lo), norm2: distance::dot(&q, &q) }
    }
}

impl Space for Int8Space<'_> {
    type Query = Int8Query;

    #[inline]
    fn dist(&self, q: &Int8Query, node: u32) -> f32 {
        let i = node as usize;
        let codes = self.codes.get(i * self.dim..(i + 1) * self.dim).unwrap_or(&[]);
        let dot = q.base + distance::dot_u8(&q.scaled, codes);
        match self.metric {
            Metric::Cosine => 1.0 - dot,
            Metric::Dot => -dot,
            Metric::L2 => q.norm2 - 2.0 * dot + self.norms2.get(i).copied().unwrap_or(0.0),
        }
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        let i = node as usize;
        distance::prefetch(self.codes.get(i * self.dim..(i + 1) * self.dim).unwrap_or(&[]));
    }
}

// ---------------------------------------------------------------- RaBitQ

/// Trained RaBitQ parameters: centroid and rotation.
#[derive(Debug, Clone, PartialEq)]
pub struct RabitqModel {
    /// Bits per dimension (1 or 4).
    pub bits: u8,
    /// Original dimension.
    pub dim: usize,
    /// Centroid (`dim`).
    pub centroid: Vec<f32>,
    /// The orthogonal transform applied before quantizing (`padded × padded`).
    pub rotation: Rotation,
}

/// Rounds of the structured rotation ([`Rotation::Hadamard`]).
pub const HADAMARD_ROUNDS: usize = 3;

/// The random orthogonal transform RaBitQ applies to residuals and queries.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// A row-major `P × P` orthogonal matrix (Gram–Schmidt on Gaussian rows): segment
    /// indexes and format-1 kernels. `4·P²` bytes.
    Dense(Vec<f32>),
    /// [`HADAMARD_ROUNDS`] rounds of: flip the signs of all `P` coordinates by one sign
    /// vector, apply the normalised Walsh–Hadamard transform to the first `H` coordinates
    /// (`H` the largest power of two ≤ `P`), flip by a second sign vector, transform the
    /// last `H`. Overlapping halves mix every coordinate with every other by the second
    /// round; each step is orthogonal, so the product is. `signs` holds the
    /// `2·HADAMARD_ROUNDS` vectors bit-packed (vector `s`, coordinate `i` is bit
    /// `s·P + i`, least significant bit first; a set bit negates): `P·6/8` bytes, 288 for
    /// `P` = 384, instead of 590 KB.
    Hadamard {
        /// `2 · HADAMARD_ROUNDS · P / 8` bytes.
        signs: Vec<u8>,
    },
}

/// A random orthogonal matrix (Gram–Schmidt on Gaussian rows), row-major.
fn random_rotation(d: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut m: Vec<f64> = (0..d * d).map(|_| StandardNormal.sample(&mut rng)).collect();
    for i in 0..d {
        for j in 0..i {
            let (a, b) = m.split_at_mut(i * d);
            let rj = &a[j * d..(j + 1) * d];
            let ri = &mut b[..d];
            let p: f64 = ri.iter().zip(rj).map(|(x, y)| x * y).sum();
            ri.iter_mut().zip(rj).for_each(|(x, y)| *x -= p * y);
        }
        let ri = &mut m[i * d..(i + 1) * d];
        let n = ri.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-30);
        ri.iter_mut().for_each(|x| *x /= n);
    }
    m.into_iter().map(|x| x as f32).collect()
}

/// In-place normalised Walsh–Hadamard transform (`x.len()` a power of two); its own inverse.
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (p, q) in a.iter_mut().zip(b.iter_mut()) {
                let (u, v) = (*p, *q);
                *p = u + v;
                *q = u - v;
            }
        }
        h *= 2;
    }
    let s = 1.0 / (n as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= s);
}

impl Rotation {
    /// Bytes of [`Rotation::Hadamard`]'s signs for padded dimension `p`.
    pub fn hadamard_signs_len(p: usize) -> usize {
        2 * HADAMARD_ROUNDS * p / 8
    }

    /// A structured rotation for padded dimension `p` (a multiple of 64), drawn from `seed`.
    pub fn hadamard(p: usize, seed: u64) -> Rotation {
        use rand::Rng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Rotation::Hadamard { signs: (0..Self::hadamard_signs_len(p)).map(|_| rng.random::<u8>()).collect() }
    }

    /// A dense random rotation for padded dimension `p`, drawn from `seed`.
    pub fn dense(p: usize, seed: u64) -> Rotation {
        Rotation::Dense(random_rotation(p, seed))
    }

    /// Whether this rotation fits padded dimension `p`.
    pub fn fits(&self, p: usize) -> bool {
        match self {
            Rotation::Dense(m) => m.len() == p * p,
            Rotation::Hadamard { signs } => p.is_multiple_of(8) && signs.len() == Self::hadamard_signs_len(p),
        }
    }

    fn flip(signs: &[u8], s: usize, x: &mut [f32]) {
        let p = x.len();
        for (i, v) in x.iter_mut().enumerate() {
            let bit = s * p + i;
            if signs[bit / 8] >> (bit % 8) & 1 == 1 {
                *v = -*v;
            }
        }
    }

    /// `R·x` in place (`x` has the padded length).
    pub fn apply(&self, x: &mut [f32]) {
        match self {
            Rotation::Dense(m) => {
                let d = x.len();
                let out: Vec<f32> = m.chunks_exact(d).map(|row| distance::dot(row, x)).collect();
                x.copy_from_slice(&out);
            }
            Rotation::Hadamard { signs } => {
                let p = x.len();
                let h = 1usize << p.ilog2();
                for r in 0..HADAMARD_ROUNDS {
                    Self::flip(signs, 2 * r, x);
                    fwht(&mut x[..h]);
                    Self::flip(signs, 2 * r + 1, x);
                    fwht(&mut x[p - h..]);
                }
            }
        }
    }

    /// `Rᵀ·x` in place: back from rotated space.
    pub fn apply_inverse(&self, x: &mut [f32]) {
        match self {
            Rotation::Dense(m) => {
                let d = x.len();
                let mut out = vec![0f32; d];
                for (row, &v) in m.chunks_exact(d).zip(x.iter()) {
                    out.iter_mut().zip(row).for_each(|(o, r)| *o += r * v);
                }
                x.copy_from_slice(&out);
            }
            Rotation::Hadamard { signs } => {
                let p = x.len();
                let h = 1usize << p.ilog2();
                for r in (0..HADAMARD_ROUNDS).rev() {
                    fwht(&mut x[p - h..]);
                    Self::flip(signs, 2 * r + 1, x);
                    fwht(&mut x[..h]);
                    Self::flip(signs, 2 * r, x);
                }
            }
        }
    }
}

impl RabitqModel {
    /// Trains on prepared rows: the centroid is their mean; a dense rotation is drawn
    /// from `seed`.
    pub fn train<'a>(bits: u8, dim: usize, rows: impl Iterator<Item = &'a [f32]>, seed: u64) -> RabitqModel {
        RabitqModel::train_with(bits, dim, rows, Rotation::dense(padded_dim(dim), seed))
    }

    /// Trains on prepared rows with the given rotation (for the padded dimension).
    pub fn train_with<'a>(
        bits: u8,
        dim: usize,
        rows: impl Iterator<Item = &'a [f32]>,
        rotation: Rotation,
    ) -> RabitqModel {
        let mut sum = vec![0f64; dim];
        let mut n = 0usize;
        for r in rows {
            sum.iter_mut().zip(r).for_each(|(s, &x)| *s += f64::from(x));
            n += 1;
        }
        let centroid = sum.iter().map(|s| (s / n.max(1) as f64) as f32).collect();
        RabitqModel { bits, dim, centroid, rotation }
    }

    /// Padded dimension.
    pub fn padded(&self) -> usize {
        padded_dim(self.dim)
    }

    /// Code bytes per node (factors not included).
    pub fn code_len(&self) -> usize {
        self.padded() * usize::from(self.bits) / 8
    }

    /// `v` (zero-padded to the padded dimension) turned by the rotation.
    pub fn rotate(&self, v: &[f32]) -> Vec<f32> {
        let d = self.padded();
        let mut x = vec![0f32; d];
        x[..v.len().min(d)].copy_from_slice(&v[..v.len().min(d)]);
        self.rotation.apply(&mut x);
        x
    }

    /// `Rᵀ·v`: back from rotated space (`v` has the padded length).
    pub fn unrotate(&self, v: &[f32]) -> Vec<f32> {
        let mut x = v.to_vec();
        self.rotation.apply_inverse(&mut x);
        x
    }

    /// The quantized residual direction `x̄` of a code (centred grid values, in rotated
    /// space, not normalised).
    pub fn dequantize(&self, codes: &[u8]) -> Vec<f32> {
        let d = self.padded();
        let off = ((1u32 << self.bits) - 1) as f32 / 2.0;
        (0..d)
            .map(|i| {
                let c = if self.bits == 1 {
                    codes.get(i / 8).map_or(0, |b| b >> (i % 8) & 1)
                } else {
                    let h = d / 2;
                    let (j, shift) = if i < h { (i, 0) } else { (i - h, 4) };
                    codes.get(j).map_or(0, |b| b >> shift & 0xf)
                };
                f32::from(c) - off
            })
            .collect()
    }

    /// Encodes one prepared row into `out` (`code_len` bytes); returns `[‖x - c‖, factor]`.
    pub fn encode(&self, row: &[f32], out: &mut [u8]) -> [f32; 2] {
        let r: Vec<f32> = row.iter().zip(&self.centroid).map(|(x, c)| x - c).collect();
        self.encode_rotated(self.rotate(&r), out)
    }

    /// Encodes a residual that is already rotated (`R·(x - c)`, padded length), so a
    /// caller with many centroids (IVF lists) rotates each vector and centroid once.
    /// Returns `[‖x - c‖, factor]` as [`RabitqModel::encode`] does.
    pub fn encode_rotated(&self, mut u: Vec<f32>, out: &mut [u8]) -> [f32; 2] {
        let nr = distance::normalize(&mut u);
        out.fill(0);
        let levels = (1u32 << self.bits) - 1;
        let off = levels as f32 / 2.0;
        let codes: Vec<u32> = if self.bits == 1 {
            u.iter().map(|&x| u32::from(x > 0.0)).collect()
        } else {
            // Pick the grid scale that makes the quantized vector's direction closest to
            // the true one (the criterion of extended RaBitQ), among a few candidates.
            let max = u.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
            let mut best: (f32, Vec<u32>) = (f32::NEG_INFINITY, vec![0; u.len()]);
            for s in 0..15 {
                let delta = 2.0 * max / levels as f32 * (0.3 + 0.05 * s as f32);
                let c: Vec<u32> =
                    u.iter().map(|&x| (x / delta + off).round().clamp(0.0, levels as f32) as u32).collect();
                let (mut ip, mut n2) = (0f32, 0f32);
                for (&ci, &ui) in c.iter().zip(&u) {
                    let xb = ci as f32 - off;
                    ip += xb * ui;
                    n2 += xb * xb;
                }
                let cos = if n2 > 0.0 { ip / n2.sqrt() } else { f32::NEG_INFINITY };
                if cos > best.0 {
                    best = (cos, c);
                }
            }
            best.1
        };
        let ip: f32 = codes.iter().zip(&u).map(|(&c, &x)| (c as f32 - off) * x).sum();
        let factor = if nr > 0.0 && ip.abs() > 1e-30 { 1.0 / ip } else { 0.0 };
        let d = u.len();
        for (i, &c) in codes.iter().enumerate() {
            if self.bits == 1 {
                out[i / 8] |= (c as u8) << (i % 8);
            } else {
                let h = d / 2;
                let (j, shift) = if i < h { (i, 0) } else { (i - h, 4) };
                out[j] |= (c as u8) << shift;
            }
        }
        [nr, factor]
    }
}

/// RaBitQ codes of a segment as the graph walk sees them.
#[derive(Debug, Clone, Copy)]
pub struct RabitqSpace<'a> {
    /// Model.
    pub model: &'a RabitqModel,
    /// `n * code_len` bytes.
    pub codes: &'a [u8],
    /// `[‖x - c‖, factor]` per node.
    pub factors: &'a [[f32; 2]],
    /// Metric.
    pub metric: Metric,
}

/// A query prepared for [`RabitqSpace`].
#[derive(Debug, Clone)]
pub struct RabitqQuery {
    /// 1-bit: four bit planes of the 4-bit query, `padded / 64` words each.
    planes: Vec<u64>,
    /// 4-bit: the 8-bit query, low half then high half.
    q8: Vec<i8>,
    /// Scale and offset of the quantized query: `w ≈ lo + scale · wq`.
    scale: f32,
    lo: f32,
    /// `Σ w`.
    sum_w: f32,
    /// l2/cosine: `‖q - c‖`; dot: 0.
    nq: f32,
    /// dot: `⟨c, q⟩`.
    cq: f32,
    /// The rotated query in full precision (for [`RabitqSpace::dist_f32`]).
    w: Vec<f32>,
}

impl RabitqSpace<'_> {
    /// Prepares a raw query.
    pub fn query(&self, q: &[f32]) -> RabitqQuery {
        let m = self.model;
        let q = prepared(self.metric, q);
        let (v, cq) = match self.metric {
            Metric::Dot => (q.clone(), distance::dot(&q, &m.centroid)),
            _ => (q.iter().zip(&m.centroid).map(|(a, c)| a - c).collect::<Vec<f32>>(), 0.0),
        };
        m.query_rotated(self.metric, m.rotate(&v), cq)
    }
}

impl RabitqModel {
    /// Prepares a query given in rotated space: `w` is `R·(q - c)` for cosine and l2
    /// (normalised here) or `R·q` for dot, and `cq` is `⟨c, q⟩` for dot (else unused).
    pub fn query_rotated(&self, metric: Metric, mut w: Vec<f32>, cq: f32) -> RabitqQuery {
        let m = self;
        let nq = if metric == Metric::Dot { 0.0 } else { distance::normalize(&mut w) };
        let sum_w: f32 = w.iter().sum();
        if m.bits == 1 {
            let (lo, hi) = w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let scale = if hi > lo { (hi - lo) / 15.0 } else { 1.0 };
            let words = w.len() / 64;
            let mut planes = vec![0u64; 4 * words];
            for (i, &x) in w.iter().enumerate() {
                let u = ((x - lo) / scale).round().clamp(0.0, 15.0) as u32;
                for (p, plane) in planes.chunks_exact_mut(words).enumerate() {
                    if u >> p & 1 == 1 {
                        plane[i / 64] |= 1 << (i % 64);
                    }
                }
            }
            RabitqQuery { planes, q8: Vec::new(), scale, lo, sum_w, nq, cq, w }
        } else {
            let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            let q8 = w.iter().map(|&x| (x / scale).round().clamp(-127.0, 127.0) as i8).collect();
            RabitqQuery { planes: Vec::new(), q8, scale, lo: 0.0, sum_w, nq, cq, w }
        }
    }
}

impl RabitqSpace<'_> {
    /// `Σ code_i · w_i` for one node.
    #[inline]
    fn code_dot(&self, q: &RabitqQuery, codes: &[u8]) -> f32 {
        if self.model.bits == 1 {
            let words = q.planes.len() / 4;
            let mut ones = 0u32;
            let mut acc = 0u32;
            for (wi, c) in codes.chunks_exact(8).enumerate().take(words) {
                let b = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                ones += b.count_ones();
                for p in 0..4 {
                    acc += (b & q.planes[p * words + wi]).count_ones() << p;
                }
            }
            q.scale * acc as f32 + q.lo * ones as f32
        } else {
            let h = q.q8.len() / 2;
            q.scale * distance::dot_u4_i8(codes, &q.q8[..h], &q.q8[h..]) as f32
        }
    }
}

impl RabitqSpace<'_> {
    /// The distance from the estimate `est` of `⟨r̂, v̂⟩` (or `⟨r̂, q⟩` for dot).
    #[inline]
    fn finish(&self, q: &RabitqQuery, nr: f32, est: f32) -> f32 {
        match self.metric {
            Metric::Dot => -(q.cq + nr * est),
            Metric::L2 => nr * nr + q.nq * q.nq - 2.0 * nr * q.nq * est,
            // Both unit vectors: ‖x - q‖² / 2 = 1 - cos.
            Metric::Cosine => (nr * nr + q.nq * q.nq - 2.0 * nr * q.nq * est) / 2.0,
        }
    }

    /// [`Space::dist`] with the query in full precision instead of 4 or 8 bits: slower,
    /// for re-ranking a short list when no full-precision vectors are kept.
    pub fn dist_f32(&self, q: &RabitqQuery, node: u32) -> f32 {
        let len = self.model.code_len();
        let i = node as usize;
        let codes = self.codes.get(i * len..(i + 1) * len).unwrap_or(&[]);
        let [nr, factor] = self.factors.get(i).copied().unwrap_or([0.0, 0.0]);
        let xb = self.model.dequantize(codes);
        self.finish(q, nr, factor * distance::dot(&xb, &q.w))
    }
}

impl Space for RabitqSpace<'_> {
    type Query = RabitqQuery;

    #[inline]
    fn dist(&self, q: &RabitqQuery, node: u32) -> f32 {
        let len = self.model.code_len();
        let i = node as usize;
        let codes = self.codes.get(i * len..(i + 1) * len).unwrap_or(&[]);
        let [nr, factor] = self.factors.get(i).copied().unwrap_or([0.0, 0.0]);
        let off = ((1u32 << self.model.bits) - 1) as f32 / 2.0;
        // Estimated ⟨r̂, v̂⟩ (or ⟨r̂, q⟩ for dot).
        self.finish(q, nr, factor * (self.code_dot(q, codes) - off * q.sum_w))
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        let len = self.model.code_len();
        let i = node as usize;
        distance::prefetch(self.codes.get(i * len..(i + 1) * len).unwrap_or(&[]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{F32Space, inverse_norms};
    use rand::Rng;

    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0) + if rng.random_bool(0.1) { 0.5 } else { 0.0 }).collect()
    }

    /// Mean absolute error of the estimated distance against the exact one.
    fn estimate_error(q: Quantization, metric: Metric) -> f32 {
        let (n, dim) = (500, 96);
        let v = data(n, dim, 1);
        let inv = inverse_norms(&v, dim);
        let exact = F32Space::new(&v, dim, metric, &inv);
        let prepared: Vec<Vec<f32>> = (0..n as u32).map(|i| exact.node_query(i)).collect();
        let query = data(1, dim, 2);
        let eq = crate::space::prepare_query(metric, &query);
        let truth: Vec<f32> = (0..n as u32).map(|i| exact.dist(&eq, i)).collect();
        let est: Vec<f32> = match q {
            Quantization::Int8 => {
                let m = Int8Model::train(dim, prepared.iter().map(|r| r.as_slice()));
                let mut codes = vec![0u8; n * dim];
                let norms2: Vec<f32> =
                    prepared.iter().zip(codes.chunks_exact_mut(dim)).map(|(r, c)| m.encode(r, c)).collect();
                let s = Int8Space { lo: &m.lo, step: &m.step, codes: &codes, norms2: &norms2, dim, metric };
                let qq = s.query(&query);
                (0..n as u32).map(|i| s.dist(&qq, i)).collect()
            }
            _ => {
                let bits = if q == Quantization::Rabitq1 { 1 } else { 4 };
                let m = RabitqModel::train(bits, dim, prepared.iter().map(|r| r.as_slice()), 7);
                let len = m.code_len();
                let mut codes = vec![0u8; n * len];
                let factors: Vec<[f32; 2]> =
                    prepared.iter().zip(codes.chunks_exact_mut(len)).map(|(r, c)| m.encode(r, c)).collect();
                let s = RabitqSpace { model: &m, codes: &codes, factors: &factors, metric };
                let qq = s.query(&query);
                (0..n as u32).map(|i| s.dist(&qq, i)).collect()
            }
        };
        let scale: f32 = truth.iter().map(|x| x.abs()).sum::<f32>() / n as f32;
        truth.iter().zip(&est).map(|(a, b)| (a - b).abs()).sum::<f32>() / n as f32 / scale.max(1e-6)
    }

    #[test]
    fn estimates_track_exact_distances() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let e8 = estimate_error(Quantization::Int8, metric);
            let e4 = estimate_error(Quantization::Rabitq4, metric);
            let e1 = estimate_error(Quantization::Rabitq1, metric);
            // Dot products are estimated against the raw (unnormalised, uncentred) query,
            // so their error scales with ‖q‖·‖x - c‖ rather than with the distance itself.
            let slack = if metric == Metric::Dot { 2.5 } else { 1.0 };
            assert!(e8 < 0.01 * slack, "{metric}: int8 relative error {e8}");
            assert!(e4 < 0.05 * slack, "{metric}: rabitq4 relative error {e4}");
            assert!(e1 < 0.25 * slack, "{metric}: rabitq1 relative error {e1}");
            assert!(e4 < e1, "{metric}: 4 bits ({e4}) should beat 1 bit ({e1})");
        }
    }

    #[test]
    fn hadamard_rotation_is_orthogonal_and_inverts() {
        for p in [64, 128, 384, 448] {
            let r = Rotation::hadamard(p, 5);
            assert!(r.fits(p) && !r.fits(p + 64));
            // Columns R·e_j are orthonormal.
            let cols: Vec<Vec<f32>> = (0..p)
                .map(|j| {
                    let mut e = vec![0f32; p];
                    e[j] = 1.0;
                    r.apply(&mut e);
                    e
                })
                .collect();
            for i in 0..p {
                for j in 0..p {
                    let d = distance::scalar::dot(&cols[i], &cols[j]);
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((d - want).abs() < 1e-4, "p {p}, columns {i},{j}: {d}");
                }
            }
            // Every input is spread over most outputs (products of Hadamards may cancel
            // exactly in places, as in any structured orthogonal transform).
            let spread = cols.iter().map(|c| c.iter().filter(|x| x.abs() > 1e-6).count()).min().unwrap_or(0);
            assert!(spread >= p / 2, "p {p}: a coordinate reaches only {spread} outputs");
            let x: Vec<f32> = (0..p).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = x.clone();
            r.apply(&mut y);
            r.apply_inverse(&mut y);
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5), "p {p}: inverse");
        }
    }

    #[test]
    fn hadamard_estimates_are_as_good_as_dense_ones() {
        // The same data encoded under each rotation: the structured one must estimate
        // distances about as well as the dense random matrix it replaces.
        let (n, dim) = (400, 384);
        let v = data(n, dim, 11);
        let q = data(20, dim, 12);
        let err = |rot: Rotation| {
            let m = RabitqModel::train_with(4, dim, v.chunks_exact(dim), rot);
            let len = m.code_len();
            let mut codes = vec![0u8; n * len];
            let factors: Vec<[f32; 2]> =
                v.chunks_exact(dim).zip(codes.chunks_exact_mut(len)).map(|(r, c)| m.encode(r, c)).collect();
            let s = RabitqSpace { model: &m, codes: &codes, factors: &factors, metric: Metric::L2 };
            let mut e = 0f64;
            for qv in q.chunks_exact(dim) {
                let qq = s.query(qv);
                for (i, row) in v.chunks_exact(dim).enumerate() {
                    let exact = distance::l2_sq(qv, row);
                    e += f64::from((s.dist(&qq, i as u32) - exact).abs() / exact.max(1e-6));
                }
            }
            e / (n * 20) as f64
        };
        let dense = err(Rotation::dense(padded_dim(dim), 3));
        let fast = err(Rotation::hadamard(padded_dim(dim), 3));
        assert!(fast < dense * 1.15, "hadamard {fast} vs dense {dense}");
    }

    #[test]
    fn rotation_is_orthogonal() {
        let d = 64;
        let r = random_rotation(d, 3);
        for i in 0..d {
            for j in 0..d {
                let p = distance::scalar::dot(&r[i * d..(i + 1) * d], &r[j * d..(j + 1) * d]);
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p - want).abs() < 1e-4, "rows {i},{j}: {p}");
            }
        }
    }
}
