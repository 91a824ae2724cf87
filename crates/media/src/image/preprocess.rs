//! Decoded RGB pixels to the network's input: TensorFlow's EfficientNet evaluation crop
//! and normalisation, with torch's antialiased bicubic resize reproduced to float
//! precision.
//!
//! 1. Centre square crop of side `max(1, floor(min(w, h) · 224 / 256))` at offsets
//!    `((h − side + 1) / 2, (w − side + 1) / 2)` (TF's `_decode_and_center_crop`,
//!    `CROP_PADDING = 32`).
//! 2. Resize to 224 × 224 on float32 data as `torch.nn.functional.interpolate(x,
//!    (224, 224), mode="bicubic", antialias=True, align_corners=False)` does on the CPU
//!    (ATen's `_upsample_bicubic2d_aa`): per axis, Keys' cubic with a = −0.5, its support
//!    widened by the downscaling factor, the taps of each output sample normalised to sum
//!    to one; the width pass first, then the height pass; an axis of unchanged size is
//!    skipped. The weights are computed with ATen's mixture of f32 and f64 arithmetic, term
//!    by term, and each output sample is the sequential f32 sum of its taps.
//! 3. `(x − 127) / 128` (TF's `MEAN_RGB` / `STDDEV_RGB` of the lite models).

use super::decode::Rgb8;

/// Side of the network's square input, in pixels.
pub(crate) const INPUT_SIZE: usize = 224;
/// TF's `CROP_PADDING`: the crop keeps `224 / (224 + 32)` of the shorter side.
const CROP_PADDING: usize = 32;
const MEAN: f32 = 127.0;
const STD: f32 = 128.0;

/// The centre crop of an image of `width × height`: `(left, top, side)`.
pub(crate) fn centre_crop(width: usize, height: usize) -> (usize, usize, usize) {
    let side = (width.min(height) * INPUT_SIZE / (INPUT_SIZE + CROP_PADDING)).max(1);
    ((width - side).div_ceil(2), (height - side).div_ceil(2), side)
}

/// The network input of an image: 224 × 224 × 3 floats, row-major, channels last.
pub(crate) fn preprocess(image: &Rgb8) -> Vec<f32> {
    let crop = centre_crop(image.width, image.height);
    let mut x = if crop.2 == INPUT_SIZE {
        let (left, top, side) = crop;
        let rows = image.pixels.chunks_exact(image.width * 3).skip(top).take(side);
        rows.flat_map(|row| row[left * 3..][..side * 3].iter().map(|&v| f32::from(v))).collect()
    } else {
        let taps = Taps::new(crop.2, INPUT_SIZE);
        resize_height(&resize_width(image, crop, &taps), INPUT_SIZE, &taps)
    };
    for v in &mut x {
        *v = (*v - MEAN) / STD;
    }
    x
}

/// Interpolation taps of one axis: for output sample `i`, the input samples
/// `start[i] .. start[i] + len[i]` with weights `weights[i * width ..][..len[i]]`.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    width: usize,
}

impl Taps {
    /// ATen's `_compute_index_ranges_weights` with `_compute_indices_min_size_weights_aa`
    /// for `scalar_t = float`, bicubic (`interp_size = 4`), `align_corners = false`.
    fn new(input: usize, output: usize) -> Taps {
        // area_pixel_compute_scale<float>.
        let scale = input as f32 / output as f32;
        let support: f32 = if scale >= 1.0 { (2.0 * f64::from(scale)) as f32 } else { 2.0 };
        let width = support.ceil() as usize * 2 + 1;
        let invscale: f32 = if scale >= 1.0 { (1.0 / f64::from(scale)) as f32 } else { 1.0 };
        let mut taps = Taps { start: vec![0; output], len: vec![0; output], weights: vec![0.0; output * width], width };
        for i in 0..output {
            let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
            // static_cast<int64_t> truncates toward zero; both values are > -1 here.
            let xmin = ((f64::from(center - support) + 0.5) as i64).max(0);
            let xmax = ((f64::from(center + support) + 0.5) as i64).min(input as i64);
            let len = (xmax - xmin).clamp(0, width as i64) as usize;
            let weights = &mut taps.weights[i * width..][..len];
            let mut total = 0.0f32;
            for (j, w) in weights.iter_mut().enumerate() {
                let d = (j as i64 + xmin) as f32 - center;
                *w = keys_cubic(((f64::from(d) + 0.5) * f64::from(invscale)) as f32);
                total += *w;
            }
            if total != 0.0 {
                for w in weights.iter_mut() {
                    *w /= total;
                }
            }
            taps.start[i] = xmin as usize;
            taps.len[i] = len;
        }
        taps
    }

    fn get(&self, i: usize) -> (usize, &[f32]) {
        (self.start[i], &self.weights[i * self.width..][..self.len[i]])
    }
}

/// Keys' cubic convolution kernel with a = −0.5 (PIL's and ATen's antialiased bicubic),
/// in f32 as ATen's `HelperInterpCubic::aa_filter<float>`.
fn keys_cubic(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Rows resampled together (independent sums, so the adds of one row do not wait for
/// the previous add of the same row).
const ROWS: usize = 4;

/// The width pass, straight from the 8-bit pixels of the crop `(left, top, side)`: `side`
/// rows of `taps.start.len()` RGB pixels.
fn resize_width(image: &Rgb8, (left, top, side): (usize, usize, usize), taps: &Taps) -> Vec<f32> {
    let width_out = taps.start.len();
    let row_out = width_out * 3;
    let mut out = vec![0.0f32; side * row_out];
    for (block, dst) in out.chunks_mut(ROWS * row_out).enumerate() {
        let rows = dst.len() / row_out;
        // The block's rows of the crop (the last one repeated to fill a short block).
        let src: [&[u8]; ROWS] = std::array::from_fn(|r| {
            let y = top + block * ROWS + r.min(rows - 1);
            &image.pixels[(y * image.width + left) * 3..][..side * 3]
        });
        for x in 0..width_out {
            let (start, weights) = taps.get(x);
            let Some((&w0, rest)) = weights.split_first() else { continue };
            let span = start * 3..(start + weights.len()) * 3;
            let px: [&[u8]; ROWS] = std::array::from_fn(|r| &src[r][span.clone()]);
            // ATen's order: the first tap's product, then each further product added.
            let mut acc = [[0.0f32; 3]; ROWS];
            for r in 0..ROWS {
                for c in 0..3 {
                    acc[r][c] = f32::from(px[r][c]) * w0;
                }
            }
            for (j, &w) in rest.iter().enumerate() {
                let at = (j + 1) * 3;
                for r in 0..ROWS {
                    for c in 0..3 {
                        acc[r][c] += f32::from(px[r][at + c]) * w;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                dst[r * row_out + x * 3..][..3].copy_from_slice(acc);
            }
        }
    }
    out
}

/// Resamples the columns of `src` (rows of `width` RGB pixels) to `taps.start.len()` rows.
fn resize_height(src: &[f32], width: usize, taps: &Taps) -> Vec<f32> {
    let row_len = width * 3;
    let height_out = taps.start.len();
    let mut out = vec![0.0f32; height_out * row_len];
    for (y, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, weights) = taps.get(y);
        for (j, &w) in weights.iter().enumerate() {
            let row = &src[(start + j) * row_len..][..row_len];
            if j == 0 {
                dst.iter_mut().zip(row).for_each(|(d, &s)| *d = s * w);
            } else {
                dst.iter_mut().zip(row).for_each(|(d, &s)| *d += s * w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_is_tf_centre_crop() {
        assert_eq!(centre_crop(512, 512), (32, 32, 448));
        assert_eq!(centre_crop(451, 300), (95, 19, 262));
        assert_eq!(centre_crop(1, 1), (0, 0, 1));
        assert_eq!(centre_crop(3, 2), (1, 1, 1));
        assert_eq!(centre_crop(256, 300), (16, 38, 224));
    }

    #[test]
    fn taps_sum_to_one_and_stay_inside() {
        for (input, output) in [(448, 224), (1, 224), (89, 224), (3500, 224), (224, 224), (262, 224)] {
            let taps = Taps::new(input, output);
            for i in 0..output {
                let (start, weights) = taps.get(i);
                assert!(start + weights.len() <= input);
                let sum: f32 = weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{input}->{output} sample {i}: {sum}");
            }
        }
    }

    #[test]
    fn a_constant_image_stays_constant() {
        let image = Rgb8 { width: 300, height: 200, pixels: [10u8, 127, 255].repeat(300 * 200) };
        let x = preprocess(&image);
        assert_eq!(x.len(), INPUT_SIZE * INPUT_SIZE * 3);
        for p in x.chunks_exact(3) {
            for (v, want) in p.iter().zip([(10.0 - 127.0) / 128.0, 0.0, 1.0f32]) {
                assert!((v - want).abs() < 1e-5, "{v} vs {want}");
            }
        }
    }
}
