//! Distance kernels on `f32` vectors (and `f32` × `u8` codes for scalar quantization),
//! with the instruction set picked at run time: AVX-512F, AVX2+FMA, NEON, or the scalar
//! fallback. The choice is made once per process ([`level`]); `KERNELIZE_SIMD=scalar`
//! (or `avx2`) caps it, for tests and for comparing kernels.
//!
//! Every kernel returns what the scalar version in [`scalar`] returns, up to float
//! summation order (property-tested in `tests`).

use std::sync::OnceLock;

/// Instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust.
    Scalar,
    /// ARM NEON (always present on aarch64).
    Neon,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
}

struct Kernels {
    level: Level,
    dot: fn(&[f32], &[f32]) -> f32,
    l2_sq: fn(&[f32], &[f32]) -> f32,
    dot_u8: fn(&[f32], &[u8]) -> f32,
}

fn detect() -> Level {
    let cap = std::env::var("KERNELIZE_SIMD").ok();
    let cap = match cap.as_deref() {
        Some("scalar") => Level::Scalar,
        Some("avx2") | Some("neon") => Level::Avx2,
        _ => Level::Avx512,
    };
    #[cfg(target_arch = "x86_64")]
    {
        if cap >= Level::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if cap >= Level::Avx2
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if cap > Level::Scalar {
            return Level::Neon;
        }
    }
    let _ = cap;
    Level::Scalar
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let level = detect();
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                Kernels { level, dot: x86::dot_avx512, l2_sq: x86::l2_sq_avx512, dot_u8: x86::dot_u8_avx512 }
            }
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => Kernels { level, dot: x86::dot_avx2, l2_sq: x86::l2_sq_avx2, dot_u8: x86::dot_u8_avx2 },
            #[cfg(target_arch = "aarch64")]
            Level::Neon => Kernels { level, dot: arm::dot_neon, l2_sq: arm::l2_sq_neon, dot_u8: scalar::dot_u8 },
            _ => Kernels { level: Level::Scalar, dot: scalar::dot, l2_sq: scalar::l2_sq, dot_u8: scalar::dot_u8 },
        }
    })
}

/// The instruction set in use.
pub fn level() -> Level {
    kernels().level
}

/// The dot-product kernel itself, for hot loops that keep it in a register instead of
/// going through the dispatcher on every call.
pub fn dot_kernel() -> fn(&[f32], &[f32]) -> f32 {
    kernels().dot
}

/// The squared-l2 kernel itself (see [`dot_kernel`]).
pub fn l2_sq_kernel() -> fn(&[f32], &[f32]) -> f32 {
    kernels().l2_sq
}

/// Dot product. Slices must have equal length (the shorter one bounds the sum).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().dot)(a, b)
}

/// Squared Euclidean distance.
#[inline]
pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
    (kernels().l2_sq)(a, b)
}

/// `Σ q[i] · codes[i]` with the codes read as unsigned integers (scalar quantization).
#[inline]
pub fn dot_u8(q: &[f32], codes: &[u8]) -> f32 {
    (kernels().dot_u8)(q, codes)
}

/// `Σ lo[j]·(codes[j] & 15) + hi[j]·(codes[j] >> 4)`: packed 4-bit codes against an
/// 8-bit query whose first half pairs with the low nibbles and second half with the high
/// ones (the RaBitQ 4-bit layout). `lo`, `hi` and `codes` have equal length.
#[inline]
pub fn dot_u4_i8(codes: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if kernels().level >= Level::Avx2 {
        return x86::dot_u4_i8_avx2(codes, lo, hi);
    }
    scalar::dot_u4_i8(codes, lo, hi)
}

/// Asks the CPU to start loading every cache line of `row` into its L2 cache.
///
/// Graph walks call this for every neighbour they are about to score, before scoring the
/// first, so that the rows' memory latencies overlap. The hint is L2, not L1: an L1
/// prefetch holds one of the core's few L1 miss buffers (about two dozen) until its line
/// arrives, so a burst of them for a dozen 1.5 KiB rows stalls; L2 keeps many more misses
/// in flight. Measured on the WordNet index (117,659 x 384 f32, 1 thread, AMD EPYC, the
/// two ways alternating pass by pass in one process): the first four lines of each row into
/// L1 gave a median 2,746 QPS at ef 96, every line into L2 4,681 (see BENCHMARKS.md).
#[inline]
pub fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = row.as_ptr() as *const i8;
        for l in 0..std::mem::size_of_val(row).div_ceil(64) {
            x86::prefetch(p.wrapping_add(l * 64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Euclidean norm.
pub fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Scales `a` to unit length in place; a zero vector stays zero. Returns the old norm.
pub fn normalize(a: &mut [f32]) -> f32 {
    let n = norm(a);
    if n > 0.0 {
        let inv = 1.0 / n;
        a.iter_mut().for_each(|x| *x *= inv);
    }
    n
}

/// The portable kernels, the reference the SIMD ones are tested against.
pub mod scalar {
    /// Dot product.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        // Eight partial sums: the compiler vectorises this with whatever the build
        // target allows, and the order matches the SIMD kernels' lanes roughly.
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        acc.iter().sum::<f32>() + tail
    }

    /// Squared Euclidean distance.
    pub fn l2_sq(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                let d = x[i] - y[i];
                acc[i] += d * d;
            }
        }
        let tail: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
        acc.iter().sum::<f32>() + tail
    }

    /// See [`super::dot_u4_i8`].
    pub fn dot_u4_i8(codes: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
        codes
            .iter()
            .zip(lo.iter().zip(hi))
            .map(|(&c, (&l, &h))| i32::from(c & 15) * i32::from(l) + i32::from(c >> 4) * i32::from(h))
            .sum()
    }

    /// `Σ q[i] · codes[i]`.
    pub fn dot_u8(q: &[f32], codes: &[u8]) -> f32 {
        let mut acc = [0f32; 8];
        let (cq, cc) = (q.chunks_exact(8), codes.chunks_exact(8));
        let (rq, rc) = (cq.remainder(), cc.remainder());
        for (x, y) in cq.zip(cc) {
            for i in 0..8 {
                acc[i] += x[i] * f32::from(y[i]);
            }
        }
        let tail: f32 = rq.iter().zip(rc).map(|(x, y)| x * f32::from(*y)).sum();
        acc.iter().sum::<f32>() + tail
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    // Each safe wrapper is only installed by `kernels()` after `is_x86_feature_detected!`
    // confirmed the features its `#[target_feature]` body needs.

    pub fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: installed only when AVX2 and FMA were detected at run time.
        unsafe { dot_avx2_impl(a, b) }
    }
    pub fn l2_sq_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: installed only when AVX2 and FMA were detected at run time.
        unsafe { l2_sq_avx2_impl(a, b) }
    }
    pub fn dot_u8_avx2(q: &[f32], c: &[u8]) -> f32 {
        // SAFETY: installed only when AVX2 and FMA were detected at run time.
        unsafe { dot_u8_avx2_impl(q, c) }
    }
    pub fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: installed only when AVX-512F was detected at run time.
        unsafe { dot_avx512_impl(a, b) }
    }
    pub fn l2_sq_avx512(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: installed only when AVX-512F was detected at run time.
        unsafe { l2_sq_avx512_impl(a, b) }
    }
    pub fn dot_u8_avx512(q: &[f32], c: &[u8]) -> f32 {
        // SAFETY: installed only when AVX-512F was detected at run time.
        unsafe { dot_u8_avx512_impl(q, c) }
    }

    pub fn dot_u4_i8_avx2(codes: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
        // SAFETY: called only at level Avx2 or above, so AVX2 was detected at run time.
        unsafe { dot_u4_i8_avx2_impl(codes, lo, hi) }
    }

    #[inline]
    pub fn prefetch(p: *const i8) {
        // SAFETY: prefetching is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T2>(p) }
    }

    #[target_feature(enable = "avx2")]
    fn dot_u4_i8_avx2_impl(codes: &[u8], lo: &[i8], hi: &[i8]) -> i32 {
        let n = codes.len().min(lo.len()).min(hi.len());
        let (pc, pl, ph) = (codes.as_ptr(), lo.as_ptr(), hi.as_ptr());
        let mask = _mm256_set1_epi8(15);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_si256();
        let mut i = 0;
        // SAFETY: i + 32 <= n bounds the three 32-byte loads. Products:
        // maddubs of 4-bit codes and i8 weights stays within ±3810, their sum ±7620.
        unsafe {
            while i + 32 <= n {
                let b = _mm256_loadu_si256(pc.add(i) as *const __m256i);
                let l = _mm256_and_si256(b, mask);
                let h = _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask);
                let p1 = _mm256_maddubs_epi16(l, _mm256_loadu_si256(pl.add(i) as *const __m256i));
                let p2 = _mm256_maddubs_epi16(h, _mm256_loadu_si256(ph.add(i) as *const __m256i));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_add_epi16(p1, p2), ones));
                i += 32;
            }
        }
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` is 32 bytes, the size of one unaligned store.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
        let mut r: i32 = lanes.iter().sum();
        while i < n {
            let c = codes[i];
            r += i32::from(c & 15) * i32::from(lo[i]) + i32::from(c >> 4) * i32::from(hi[i]);
            i += 1;
        }
        r
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: i + width <= n bounds every unaligned load.
        unsafe {
            while i + 32 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                    *s = _mm256_fmadd_ps(x, y, *s);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
                i += 8;
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut r = hsum256(s);
        while i < n {
            r += a[i] * b[i];
            i += 1;
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    fn l2_sq_avx2_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: i + width <= n bounds every unaligned load.
        unsafe {
            while i + 32 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)));
                    *s = _mm256_fmadd_ps(d, d, *s);
                }
                i += 32;
            }
            while i + 8 <= n {
                let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
                acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
                i += 8;
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut r = hsum256(s);
        while i < n {
            let d = a[i] - b[i];
            r += d * d;
            i += 1;
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_u8_avx2_impl(q: &[f32], c: &[u8]) -> f32 {
        let n = q.len().min(c.len());
        let (pq, pc) = (q.as_ptr(), c.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY: i + 16 <= n bounds the 16-byte code load and the two
        // 8-float query loads.
        unsafe {
            while i + 16 <= n {
                let bytes = _mm_loadu_si128(pc.add(i) as *const __m128i);
                let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(bytes)));
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), lo, acc[0]);
                acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8)), hi, acc[1]);
                i += 16;
            }
        }
        let mut r = hsum256(_mm256_add_ps(acc[0], acc[1]));
        while i < n {
            r += q[i] * f32::from(c[i]);
            i += 1;
        }
        r
    }

    #[target_feature(enable = "avx512f")]
    fn dot_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: i + width <= n bounds every unaligned load; the tail
        // uses a masked load that touches only the `n - i` valid lanes.
        unsafe {
            while i + 64 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let x = _mm512_loadu_ps(pa.add(i + 16 * j));
                    let y = _mm512_loadu_ps(pb.add(i + 16 * j));
                    *s = _mm512_fmadd_ps(x, y, *s);
                }
                i += 64;
            }
            while i + 16 <= n {
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as __mmask16;
                let x = _mm512_maskz_loadu_ps(m, pa.add(i));
                let y = _mm512_maskz_loadu_ps(m, pb.add(i));
                acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    #[target_feature(enable = "avx512f")]
    fn l2_sq_avx512_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: as in `dot_avx512_impl`.
        unsafe {
            while i + 64 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i + 16 * j)), _mm512_loadu_ps(pb.add(i + 16 * j)));
                    *s = _mm512_fmadd_ps(d, d, *s);
                }
                i += 64;
            }
            while i + 16 <= n {
                let d = _mm512_sub_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)));
                acc[0] = _mm512_fmadd_ps(d, d, acc[0]);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u32 << (n - i)).wrapping_sub(1) as __mmask16;
                let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)));
                acc[1] = _mm512_fmadd_ps(d, d, acc[1]);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    #[target_feature(enable = "avx512f")]
    fn dot_u8_avx512_impl(q: &[f32], c: &[u8]) -> f32 {
        let n = q.len().min(c.len());
        let (pq, pc) = (q.as_ptr(), c.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY: i + 32 <= n bounds the two 16-byte code loads and the
        // two 16-float query loads; the 16-wide tail loop likewise.
        unsafe {
            while i + 32 <= n {
                let b0 = _mm_loadu_si128(pc.add(i) as *const __m128i);
                let b1 = _mm_loadu_si128(pc.add(i + 16) as *const __m128i);
                let f0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b0));
                let f1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b1));
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i)), f0, acc[0]);
                acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i + 16)), f1, acc[1]);
                i += 32;
            }
            while i + 16 <= n {
                let b0 = _mm_loadu_si128(pc.add(i) as *const __m128i);
                let f0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b0));
                acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pq.add(i)), f0, acc[0]);
                i += 16;
            }
        }
        let mut r = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        while i < n {
            r += q[i] * f32::from(c[i]);
            i += 1;
        }
        r
    }
}

#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
mod arm {
    use std::arch::aarch64::*;

    pub fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: NEON is mandatory on aarch64; i + width <= n bounds every load.
        let mut r = unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            while i + 16 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    *s = vfmaq_f32(*s, vld1q_f32(pa.add(i + 4 * j)), vld1q_f32(pb.add(i + 4 * j)));
                }
                i += 16;
            }
            while i + 4 <= n {
                acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                i += 4;
            }
            vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
        };
        while i < n {
            r += a[i] * b[i];
            i += 1;
        }
        r
    }

    pub fn l2_sq_neon(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: NEON is mandatory on aarch64; i + width <= n bounds every load.
        let mut r = unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            while i + 16 <= n {
                for (j, s) in acc.iter_mut().enumerate() {
                    let d = vsubq_f32(vld1q_f32(pa.add(i + 4 * j)), vld1q_f32(pb.add(i + 4 * j)));
                    *s = vfmaq_f32(*s, d, d);
                }
                i += 16;
            }
            while i + 4 <= n {
                let d = vsubq_f32(vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                acc[0] = vfmaq_f32(acc[0], d, d);
                i += 4;
            }
            vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
        };
        while i < n {
            let d = a[i] - b[i];
            r += d * d;
            i += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f32, scale: f32) -> bool {
        (a - b).abs() <= 1e-4 * scale.max(1.0)
    }

    fn vecs() -> impl Strategy<Value = (Vec<f32>, Vec<f32>, Vec<u8>)> {
        (0usize..300).prop_flat_map(|n| {
            (
                proptest::collection::vec(-10f32..10.0, n),
                proptest::collection::vec(-10f32..10.0, n),
                proptest::collection::vec(any::<u8>(), n),
            )
        })
    }

    proptest! {
        #[test]
        fn simd_matches_scalar((a, b, c) in vecs()) {
            let scale: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
            prop_assert!(close(dot(&a, &b), scalar::dot(&a, &b), scale), "dot at level {:?}", level());
            let l2s: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            prop_assert!(close(l2_sq(&a, &b), scalar::l2_sq(&a, &b), l2s));
            let us: f32 = a.iter().zip(&c).map(|(x, y)| (x * f32::from(*y)).abs()).sum();
            prop_assert!(close(dot_u8(&a, &c), scalar::dot_u8(&a, &c), us));
            let lo: Vec<i8> = c.iter().map(|&x| x.wrapping_mul(31) as i8).collect();
            let hi: Vec<i8> = c.iter().map(|&x| x.wrapping_mul(77) as i8).collect();
            prop_assert_eq!(dot_u4_i8(&c, &lo, &hi), scalar::dot_u4_i8(&c, &lo, &hi));
            // And the scalar kernels against the plain definition.
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            prop_assert!(close(scalar::dot(&a, &b), naive, scale));
        }
    }

    #[test]
    fn every_level_available_here_agrees() {
        // The dispatcher picks one level; call the others this CPU supports directly.
        let a: Vec<f32> = (0..389).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..389).map(|i| (i as f32 * 0.11).cos()).collect();
        let c: Vec<u8> = (0..389).map(|i| (i * 7 % 256) as u8).collect();
        let want = (scalar::dot(&a, &b), scalar::l2_sq(&a, &b), scalar::dot_u8(&a, &c));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                assert!(close(x86::dot_avx2(&a, &b), want.0, 400.0));
                assert!(close(x86::l2_sq_avx2(&a, &b), want.1, 400.0));
                assert!(close(x86::dot_u8_avx2(&a, &c), want.2, 40000.0));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert!(close(x86::dot_avx512(&a, &b), want.0, 400.0));
                assert!(close(x86::l2_sq_avx512(&a, &b), want.1, 400.0));
                assert!(close(x86::dot_u8_avx512(&a, &c), want.2, 40000.0));
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert!(close(arm::dot_neon(&a, &b), want.0, 400.0));
            assert!(close(arm::l2_sq_neon(&a, &b), want.1, 400.0));
        }
        let _ = want;
    }
}
