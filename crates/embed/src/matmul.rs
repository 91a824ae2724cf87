//! Safe wrapper around the `gemm` crate for the one product shape the models need
//! (this crate's text model, and the image and audio encoders of `kernelize-media`).
//!
//! `gemm` selects its micro-kernel (scalar, AVX2+FMA, AVX-512) at run time, so
//! the binary stays portable across x86-64 CPUs.
#![allow(unsafe_code, reason = "calls gemm::gemm, which takes raw pointers; bounds are checked here")]

pub use gemm::Parallelism;

/// `c[m×n] = (accumulate ? c : 0) + a[m×k] · wt[k×n]`.
///
/// All matrices are dense row-major. `wt` is the transpose of a PyTorch
/// `nn.Linear` weight (`[out_features, in_features]`), so this is `Linear`
/// without bias. `gemm` computes `cᵀ = wtᵀ · aᵀ` with column-major operands;
/// in this layout `wtᵀ` already is column-major and needs no packing.
///
/// # Panics
/// When a slice is shorter than its dimensions say; callers size every buffer
/// from the same `(m, n, k)`, so this is an internal invariant, not input.
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    wt: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    parallelism: Parallelism,
) {
    assert!(c.len() >= m * n, "matmul: c too short");
    assert!(a.len() >= m * k, "matmul: a too short");
    assert!(wt.len() >= k * n, "matmul: wt too short");
    if m == 0 || n == 0 {
        return;
    }
    let (n_i, k_i) = (to_isize(n), to_isize(k));
    // SAFETY: the asserts above guarantee that every element addressed by the
    // strides below lies inside its slice: dst (i, j) at i*n + j < m*n,
    // lhs (i, l) at i*k + l < m*k, rhs (l, j) at l*n + j < k*n. `c` is borrowed
    // mutably, so it aliases neither `a` nor `wt`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n_i,
            accumulate,
            a.as_ptr(),
            1,
            k_i,
            wt.as_ptr(),
            1,
            n_i,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn to_isize(x: usize) -> isize {
    isize::try_from(x).unwrap_or(isize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let wt: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 1.0).collect();
        let mut c = vec![1.0f32; m * n];
        matmul(&mut c, &a, &wt, (m, n, k), true, Parallelism::None);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|l| a[i * k + l] * wt[l * n + j]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-5);
            }
        }
        matmul(&mut c, &a, &wt, (m, n, k), false, Parallelism::None);
        let want: f32 = (0..k).map(|l| a[l] * wt[l * n]).sum();
        assert!((c[0] - want).abs() < 1e-5);
    }
}
