//! The dense layers in bfloat16: AVX512-BF16 `vdpbf16ps` (two bf16 products summed into
//! each f32 lane), twice the multiply-adds per instruction of the f32 FMA path.
//!
//! Weights are rounded to bf16 once, at load, and packed in panels of [`NR`] output
//! columns: for every pair of input rows `(2p, 2p+1)` a panel holds 32 columns × 2
//! values, interleaved as `vdpbf16ps` pairs them. Activations are rounded to bf16 per
//! call, row by row (a row-major bf16 row already is a run of such pairs). Products
//! accumulate in f32, and everything outside the GEMMs (attention, GELU, LayerNorm, the
//! residual stream) stays f32. The result is not bit-identical to the f32 model:
//! `model.rs`'s tests and `tests/it/reference.rs` bound its distance to the reference.
#![allow(unsafe_code, reason = "AVX512-BF16 intrinsics behind run-time feature detection")]

use rayon::prelude::*;

use crate::matmul::Parallelism;

/// Output columns per panel: two AVX-512 registers of f32.
pub(crate) const NR: usize = 32;
/// Rows per micro-kernel call: 12 rows × 2 registers = 24 accumulators of the 32.
const MR: usize = 12;
/// Rows per block: their bf16 activations stay in L2 while every panel passes over them.
const MC: usize = 8 * MR;

/// Whether this CPU runs the bf16 path (AVX-512 F/BW/VL and BF16).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 → bf16, rounding to nearest even (NaN stays NaN), as `vcvtne2ps2bf16` does.
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    (rounded >> 16) as u16
}

/// bf16 → f32 (exact).
#[cfg(test)]
pub(crate) fn from_bf16(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// A `[k, n]` row-major weight matrix in bf16, packed in panels of [`NR`] columns.
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    /// Pairs of input rows: `k` rounded up to even, halved.
    pairs: usize,
    /// `panels × pairs × NR × 2` values; columns past `n` and the row past an odd `k` are 0.
    data: Vec<u16>,
}

impl PackedB {
    /// Pack `wt` (`[k, n]`, row-major: the transposed `nn.Linear` weight [`crate::matmul`] takes).
    pub(crate) fn pack(wt: &[f32], k: usize, n: usize) -> PackedB {
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u16; panels * pairs * NR * 2];
        for (l, row) in wt.chunks_exact(n).take(k).enumerate() {
            let (p, half) = (l / 2, l % 2);
            for (j, &v) in row.iter().enumerate() {
                let (panel, col) = (j / NR, j % NR);
                data[((panel * pairs + p) * NR + col) * 2 + half] = to_bf16(v);
            }
        }
        PackedB { k, n, pairs, data }
    }

    /// The rounded weight at row `l`, column `j` (for tests).
    #[cfg(test)]
    fn get(&self, l: usize, j: usize) -> f32 {
        let (panel, col) = (j / NR, j % NR);
        from_bf16(self.data[((panel * self.pairs + l / 2) * NR + col) * 2 + l % 2])
    }
}

/// `c[m×n] = (accumulate ? c : 0) + bf16(a[m×k]) · b`, accumulated in f32.
///
/// `scratch` receives the bf16 copy of `a`. With `Parallelism::Rayon`, blocks of rows
/// run on the current rayon pool.
///
/// # Panics
/// When a slice is shorter than its dimensions say, or when the CPU lacks the
/// features [`available`] checks; callers size every buffer from the same
/// `(m, n, k)` and check [`available`] once, so these are internal invariants.
pub(crate) fn matmul(
    c: &mut [f32],
    a: &[f32],
    b: &PackedB,
    m: usize,
    accumulate: bool,
    scratch: &mut Vec<u16>,
    par: Parallelism,
) {
    let (n, k) = (b.n, b.k);
    assert!(c.len() >= m * n, "bf16 matmul: c too short");
    assert!(a.len() >= m * k, "bf16 matmul: a too short");
    assert!(available(), "bf16 matmul: the CPU lacks AVX512-BF16");
    if m == 0 || n == 0 {
        return;
    }
    let lda = 2 * b.pairs;
    if scratch.len() < m * lda {
        scratch.resize(m * lda, 0);
    }
    let a16 = &mut scratch[..m * lda];
    let run = |((c, a), a16): ((&mut [f32], &[f32]), &mut [u16])| {
        let rows = c.len() / n;
        // SAFETY: available() was asserted above; block() reads rows × k of `a`,
        // writes rows × lda of `a16` and rows × n of `c`, exactly these slices' lengths.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::block(c, a, a16, b, rows, accumulate)
        };
    };
    let (c, a) = (&mut c[..m * n], &a[..m * k]);
    match par {
        Parallelism::Rayon(threads) if threads > 1 && m > MC => {
            c.par_chunks_mut(MC * n).zip(a.par_chunks(MC * k)).zip(a16.par_chunks_mut(MC * lda)).for_each(run);
        }
        _ => c.chunks_mut(MC * n).zip(a.chunks(MC * k)).zip(a16.chunks_mut(MC * lda)).for_each(run),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR, PackedB};

    /// One block of at most [`super::MC`] rows: round its activations to bf16, then
    /// pass every panel of `b` over them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) fn block(c: &mut [f32], a: &[f32], a16: &mut [u16], b: &PackedB, rows: usize, accumulate: bool) {
        let (n, k, lda) = (b.n, b.k, 2 * b.pairs);
        assert!(c.len() >= rows * n && a.len() >= rows * k && a16.len() >= rows * lda);
        for (src, dst) in a.chunks_exact(k).zip(a16.chunks_exact_mut(lda)).take(rows) {
            convert_row(src, dst);
        }
        let panel_len = b.pairs * NR * 2;
        for (panel, bp) in b.data.chunks_exact(panel_len).enumerate() {
            let col0 = panel * NR;
            let cols = (n - col0).min(NR);
            let mut r = 0;
            while r < rows {
                let mr = (rows - r).min(MR);
                let t = Tile {
                    a: a16[r * lda..].as_ptr(),
                    lda,
                    b: bp.as_ptr(),
                    pairs: b.pairs,
                    c: c[r * n + col0..].as_mut_ptr(),
                    ldc: n,
                    cols,
                    accumulate,
                };
                // SAFETY: rows r..r+mr of a16 (lda each) and of c (n each, columns
                // col0..col0+cols) lie inside the slices, asserted above; the panel
                // holds pairs × NR × 2 values.
                unsafe {
                    match mr {
                        12 => t.run::<12>(),
                        11 => t.run::<11>(),
                        10 => t.run::<10>(),
                        9 => t.run::<9>(),
                        8 => t.run::<8>(),
                        7 => t.run::<7>(),
                        6 => t.run::<6>(),
                        5 => t.run::<5>(),
                        4 => t.run::<4>(),
                        3 => t.run::<3>(),
                        2 => t.run::<2>(),
                        _ => t.run::<1>(),
                    }
                }
                r += mr;
            }
        }
    }

    /// One f32 row to bf16, padded with a zero to an even length.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    fn convert_row(src: &[f32], dst: &mut [u16]) {
        let k = src.len();
        let mut i = 0;
        while i + 32 <= k {
            // SAFETY: i + 32 <= k = src.len() <= dst.len().
            unsafe {
                let lo = _mm512_loadu_ps(src.as_ptr().add(i));
                let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(i).cast(), v);
            }
            i += 32;
        }
        for (d, &s) in dst[i..].iter_mut().zip(&src[i..]) {
            *d = super::to_bf16(s);
        }
        dst[k..].fill(0);
    }

    /// An `M × NR` tile of `c`: pointers into the packed operands.
    struct Tile {
        a: *const u16,
        lda: usize,
        b: *const u16,
        pairs: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    }

    impl Tile {
        /// # Safety
        /// `a` holds `M` rows of `lda >= 2·pairs` values, `b` a panel of `pairs × NR × 2`,
        /// `c` `M` rows of stride `ldc` with `cols <= NR` writable columns each; the CPU
        /// has AVX-512 F/BW/VL and BF16.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        unsafe fn run<const M: usize>(&self) {
            let lo_cols = self.cols.min(16);
            let hi_cols = self.cols - lo_cols;
            let m0: __mmask16 = if lo_cols == 16 { 0xffff } else { (1u16 << lo_cols) - 1 };
            let m1: __mmask16 = if hi_cols == 16 { 0xffff } else { (1u16 << hi_cols) - 1 };
            let mut acc = [[_mm512_setzero_ps(); 2]; M];
            // SAFETY: every address stays inside the regions the
            // caller vouches for; masked loads and stores touch only `cols` columns.
            unsafe {
                if self.accumulate {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let row = self.c.add(r * self.ldc);
                        acc[0] = _mm512_maskz_loadu_ps(m0, row);
                        acc[1] = _mm512_maskz_loadu_ps(m1, row.add(16));
                    }
                }
                for p in 0..self.pairs {
                    let bp = self.b.add(p * NR * 2);
                    let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
                    let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(NR).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let pair = self.a.add(r * self.lda + 2 * p).cast::<i32>().read_unaligned();
                        let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                        acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let row = self.c.add(r * self.ldc);
                    _mm512_mask_storeu_ps(row, m0, acc[0]);
                    _mm512_mask_storeu_ps(row.add(16), m1, acc[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// Every shape edge (row tails, column tails, odd k, blocks, threads) against a
    /// product of the rounded operands in f64.
    #[test]
    fn matches_the_product_of_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for (m, n, k) in [(1, 1, 1), (5, 7, 3), (13, 33, 17), (12, 32, 64), (200, 70, 385), (97, 384, 384)] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let wt: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let b = PackedB::pack(&wt, k, n);
            let init: Vec<f32> = (0..m * n).map(|_| next()).collect();
            for (accumulate, par) in
                [(false, Parallelism::None), (true, Parallelism::None), (true, Parallelism::Rayon(2))]
            {
                let mut c = init.clone();
                let mut scratch = Vec::new();
                matmul(&mut c, &a, &b, m, accumulate, &mut scratch, par);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 =
                            (0..k).map(|l| f64::from(from_bf16(to_bf16(a[i * k + l]))) * f64::from(b.get(l, j))).sum();
                        let want = dot + if accumulate { f64::from(init[i * n + j]) } else { 0.0 };
                        let got = f64::from(c[i * n + j]);
                        assert!(
                            (got - want).abs() < 1e-4 * (k as f64).sqrt(),
                            "{m}x{n}x{k} ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
