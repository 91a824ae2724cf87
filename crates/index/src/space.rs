//! Full-precision distances over a segment's vectors, in the form the graph uses: smaller
//! is closer. Cosine divides by stored norms instead of normalising the vectors, so the
//! segment's own (mapped) vector section is searched in place.

use crate::distance;
use crate::hnsw::Space;
use kernelize_store::Metric;

/// Distance for two already-prepared operands, by metric: `1 - cos`, `-dot` or `‖a-b‖²`.
#[inline]
pub fn metric_dist(metric: Metric, q: &[f32], v: &[f32], inv_norm: f32) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - distance::dot(q, v) * inv_norm,
        Metric::Dot => -distance::dot(q, v),
        Metric::L2 => distance::l2_sq(q, v),
    }
}

/// Prepares a query for `metric`: cosine queries are normalised (a zero query stays zero).
pub fn prepare_query(metric: Metric, q: &[f32]) -> Vec<f32> {
    let mut v = q.to_vec();
    if metric == Metric::Cosine {
        distance::normalize(&mut v);
    }
    v
}

/// `1 / ‖v‖` for every row (0 for a zero row), for cosine.
pub fn inverse_norms(vectors: &[f32], dim: usize) -> Vec<f32> {
    vectors
        .chunks_exact(dim.max(1))
        .map(|r| {
            let n = distance::norm(r);
            if n > 0.0 { 1.0 / n } else { 0.0 }
        })
        .collect()
}

/// Rows of f32 vectors with their metric.
#[derive(Debug, Clone, Copy)]
pub struct F32Space<'a> {
    vectors: &'a [f32],
    dim: usize,
    metric: Metric,
    inv_norms: &'a [f32],
    dot: fn(&[f32], &[f32]) -> f32,
    l2_sq: fn(&[f32], &[f32]) -> f32,
}

/// True when every `1 / ‖v‖` is 1 to within float rounding: cosine then needs no norms.
pub fn all_unit(inv_norms: &[f32]) -> bool {
    inv_norms.iter().all(|&x| (x - 1.0).abs() < 1e-5)
}

impl<'a> F32Space<'a> {
    /// `vectors` holds `len * dim` floats; `inv_norms` one entry per row for cosine, or
    /// empty when the rows are unit vectors (and for dot and l2).
    pub fn new(vectors: &'a [f32], dim: usize, metric: Metric, inv_norms: &'a [f32]) -> F32Space<'a> {
        F32Space { vectors, dim, metric, inv_norms, dot: distance::dot_kernel(), l2_sq: distance::l2_sq_kernel() }
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.vectors.len() / self.dim.max(1)
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`.
    #[inline]
    pub fn row(&self, i: u32) -> &'a [f32] {
        let i = i as usize;
        self.vectors.get(i * self.dim..(i + 1) * self.dim).unwrap_or(&[])
    }

    #[inline]
    fn inv(&self, i: u32) -> f32 {
        self.inv_norms.get(i as usize).copied().unwrap_or(1.0)
    }

    /// The prepared query of a stored row (for building).
    pub fn node_query(&self, i: u32) -> Vec<f32> {
        let mut q = self.row(i).to_vec();
        if self.metric == Metric::Cosine && !self.inv_norms.is_empty() {
            let inv = self.inv(i);
            q.iter_mut().for_each(|x| *x *= inv);
        }
        q
    }

    /// Distance between two stored rows.
    #[inline]
    pub fn node_dist(&self, a: u32, b: u32) -> f32 {
        let (x, y) = (self.row(a), self.row(b));
        match self.metric {
            Metric::Cosine if self.inv_norms.is_empty() => 1.0 - (self.dot)(x, y),
            Metric::Cosine => 1.0 - (self.dot)(x, y) * self.inv(a) * self.inv(b),
            Metric::Dot => -(self.dot)(x, y),
            Metric::L2 => (self.l2_sq)(x, y),
        }
    }
}

impl Space for F32Space<'_> {
    type Query = Vec<f32>;

    #[inline]
    fn dist(&self, q: &Vec<f32>, node: u32) -> f32 {
        let v = self.row(node);
        match self.metric {
            Metric::Cosine if self.inv_norms.is_empty() => 1.0 - (self.dot)(q, v),
            Metric::Cosine => 1.0 - (self.dot)(q, v) * self.inv(node),
            Metric::Dot => -(self.dot)(q, v),
            Metric::L2 => (self.l2_sq)(q, v),
        }
    }

    #[inline]
    fn prefetch(&self, node: u32) {
        crate::distance::prefetch(self.row(node));
    }
}
