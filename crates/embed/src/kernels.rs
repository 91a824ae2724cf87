//! Element-wise and row kernels of the forward pass (everything except GEMM).
//!
//! Every function is `#[inline(always)]` plain Rust written so that LLVM can
//! vectorise it: reductions keep [`LANES`] independent accumulators (floating
//! point addition is not associative, so the compiler will not reorder a
//! single running sum), and `exp`/`erf` are branch-free. The forward pass is
//! instantiated once per instruction set in `model.rs` and picked at run time;
//! these helpers inherit the target features of the function they inline into.

/// Independent accumulators per reduction: one AVX-512 register of f32.
const LANES: usize = 16;

/// Sum of a slice with `LANES` partial sums.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    let mut s = 0.0;
    for v in rest {
        s += v;
    }
    for a in acc {
        s += a;
    }
    s
}

/// Maximum of a slice (`-inf` for an empty slice).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in rest.iter().chain(acc.iter()) {
        m = if v > m { v } else { m };
    }
    m
}

/// `y += a * x`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `exp(x)` for `x <= 88`, relative error about 2 ulp; Cephes `expf` with a
/// branch-free range reduction (round via the 1.5·2²³ trick, scale via the
/// exponent bits). Inputs below -87.3 return about 2⁻¹²⁶ instead of a subnormal.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.336_54, 88.0);
    let z = x * LOG2E + MAGIC;
    let n = z - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // z = MAGIC + n exactly, so the low mantissa bits of z hold n (|n| <= 127).
    let ni = (z.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits((ni.wrapping_add(127) as u32) << 23);
    y * scale
}

/// `erf(x)`, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7): the
/// same formula PyTorch's vectorised CPU `erf` uses.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// `x ← gelu(x + bias)` row by row, exact (erf) GELU as in `hidden_act = "gelu"`.
#[inline(always)]
pub(crate) fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            let u = *v + b;
            *v = 0.5 * u * (1.0 + erf(u * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `x ← x + bias` row by row.
#[inline(always)]
pub(crate) fn add_bias(x: &mut [f32], bias: &[f32]) {
    for r in x.chunks_exact_mut(bias.len()) {
        for (v, b) in r.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// In-place LayerNorm of every row (biased variance, as `torch.nn.LayerNorm`).
#[inline(always)]
pub(crate) fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    layer_norm_impl::<false>(x, &[], gamma, beta, eps);
}

/// `x ← LayerNorm(x + bias)` row by row, in one pass over each row.
#[inline(always)]
pub(crate) fn bias_layer_norm(x: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    layer_norm_impl::<true>(x, bias, gamma, beta, eps);
}

#[inline(always)]
fn layer_norm_impl<const BIAS: bool>(x: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = gamma.len();
    let inv_h = 1.0 / h as f32;
    for row in x.chunks_exact_mut(h) {
        if BIAS {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        let mean = sum(row) * inv_h;
        let mut acc = [0.0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                let d = c[i] - mean;
                acc[i] += d * d;
            }
        }
        let mut var = 0.0;
        for v in rest {
            var += (v - mean) * (v - mean);
        }
        for a in acc {
            var += a;
        }
        let inv_std = 1.0 / (var * inv_h + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inv_std * g + b;
        }
    }
}

/// In-place softmax of one row.
#[inline(always)]
pub(crate) fn softmax(x: &mut [f32]) {
    let m = max(x);
    for v in x.iter_mut() {
        *v = exp(*v - m);
    }
    let inv = 1.0 / sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
    }

    #[test]
    fn erf_is_accurate() {
        // A&S 7.1.26 is good to 1.5e-7; evaluating it in f32 adds a few ulp of 1.0
        // (about 6e-7 in all, at x near +-0.5). PyTorch evaluates the same formula.
        let mut worst = 0.0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erf(x) as f64 - libm_erf(x as f64)).abs());
            x += 0.001;
        }
        assert!(worst < 1e-6, "worst absolute error {worst}");
    }

    /// Reference erf in f64: Maclaurin series below 3, asymptotic erfc above.
    pub(crate) fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        if a >= 3.0 {
            let x2 = a * a;
            let series = 1.0 - 1.0 / (2.0 * x2) + 3.0 / (4.0 * x2 * x2) - 15.0 / (8.0 * x2 * x2 * x2)
                + 105.0 / (16.0 * x2 * x2 * x2 * x2);
            let erfc = (-x2).exp() / (a * std::f64::consts::PI.sqrt()) * series;
            return (1.0 - erfc).copysign(x);
        }
        let mut term = x;
        let mut s = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            s += term / (2 * n + 1) as f64;
        }
        s * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn layer_norm_and_softmax() {
        let mut x: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let g = vec![1.0; 20];
        let b = vec![0.0; 20];
        let mut y = x.clone();
        layer_norm(&mut x, &g, &b, 1e-12);
        bias_layer_norm(&mut y, &[3.0; 20], &g, &b, 1e-12);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-4);
        }
        for row in x.chunks(20) {
            assert!(sum(row).abs() < 1e-4);
            let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 20.0;
            assert!((var - 1.0).abs() < 1e-4);
        }
        let mut s = vec![1.0, 2.0, 3.0, -1e30];
        softmax(&mut s);
        assert!((sum(&s) - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0] && s[3] == 0.0 || s[3] < 1e-30);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
