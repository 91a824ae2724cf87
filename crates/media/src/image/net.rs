//! EfficientNet-Lite0's forward pass on the CPU, one image at a time.
//!
//! Activations are row-major, channels last (NHWC with N = 1). Every BatchNorm is folded
//! into the convolution before it at load (eps 1e-3, running statistics), and ReLU6 is
//! applied as each layer's output is finished. The 1×1 convolutions (expand, project,
//! head) and the 3×3 stride-2 stem (through im2col) are GEMMs; the depthwise
//! convolutions are loops vectorised over channels, 16 at a time. Padding is
//! TensorFlow's "SAME" (the weights are a TF port): `out = ceil(in / stride)`, with the
//! odd padding pixel at the bottom / right.

use super::preprocess::INPUT_SIZE;
use crate::error::{Error, Result};
use crate::safetensors_file::Weights;
use kernelize_embed::matmul::{Parallelism, matmul};
use std::cell::RefCell;

/// Width of the pooled features (the head convolution's output channels).
pub(crate) const FEATURES: usize = 1280;
/// ImageNet classes of the classifier.
pub(crate) const CLASSES: usize = 1000;
/// TF's BatchNorm epsilon.
const BN_EPS: f64 = 1e-3;
const STEM_CHANNELS: usize = 32;

/// The stages: (repeats, kernel, stride of the first block, expansion ratio, input
/// channels, output channels), EfficientNet-Lite0's `blocks_args` (no squeeze-excite).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// A 1×1 convolution (or the stem's im2col product, or the classifier) with its
/// BatchNorm folded in: `out[p] = bias + in[p] · weights`, `weights` is `[inputs][outputs]`.
struct Dense {
    weights: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    /// `out[rows × outputs] = bias (+ residual) + input[rows × inputs] · weights`, then
    /// ReLU6 when `relu6`.
    fn apply(
        &self,
        input: &[f32],
        rows: usize,
        out: &mut [f32],
        residual: Option<&[f32]>,
        relu6: bool,
        par: Parallelism,
    ) {
        let out = &mut out[..rows * self.outputs];
        match residual {
            Some(residual) => {
                for (o, r) in out.chunks_exact_mut(self.outputs).zip(residual.chunks_exact(self.outputs)) {
                    o.iter_mut().zip(r).zip(&self.bias).for_each(|((o, &r), &b)| *o = r + b);
                }
            }
            None => out.chunks_exact_mut(self.outputs).for_each(|o| o.copy_from_slice(&self.bias)),
        }
        matmul(out, &input[..rows * self.inputs], &self.weights, (rows, self.outputs, self.inputs), true, par);
        if relu6 {
            clamp6(out);
        }
    }
}

/// A depthwise k×k convolution with its BatchNorm folded in, followed by ReLU6.
/// `weights` is `[k·k][channels]`.
struct Depthwise {
    weights: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
}

/// Channels accumulated together in registers by the depthwise loop.
const LANES: usize = 16;

impl Depthwise {
    /// `out` = ReLU6(depthwise(input)); `input` is `h × w × channels`; returns the output
    /// height and width.
    fn apply(&self, input: &[f32], (h, w): (usize, usize), out: &mut [f32]) -> (usize, usize) {
        let (c, k, s) = (self.channels, self.kernel, self.stride);
        let (ho, pad_top) = same_padding(h, k, s);
        let (wo, pad_left) = same_padding(w, k, s);
        let lanes = c - c % LANES;
        for oy in 0..ho {
            // The kernel rows that fall inside the image.
            let y0 = (oy * s) as isize - pad_top as isize;
            let ky = (-y0).max(0) as usize..k.min((h as isize - y0).max(0) as usize);
            for ox in 0..wo {
                let x0 = (ox * s) as isize - pad_left as isize;
                let kx = (-x0).max(0) as usize..k.min((w as isize - x0).max(0) as usize);
                let o = &mut out[(oy * wo + ox) * c..][..c];
                for base in (0..lanes).step_by(LANES) {
                    let mut acc = [0.0f32; LANES];
                    acc.copy_from_slice(&self.bias[base..base + LANES]);
                    for dy in ky.clone() {
                        let row = (y0 + dy as isize) as usize * w;
                        for dx in kx.clone() {
                            let at = (row + (x0 + dx as isize) as usize) * c + base;
                            let x = &input[at..at + LANES];
                            let tap = (dy * k + dx) * c + base;
                            let wt = &self.weights[tap..tap + LANES];
                            for l in 0..LANES {
                                acc[l] += x[l] * wt[l];
                            }
                        }
                    }
                    o[base..base + LANES].copy_from_slice(&acc);
                }
                for ch in lanes..c {
                    let mut acc = self.bias[ch];
                    for dy in ky.clone() {
                        let row = (y0 + dy as isize) as usize * w;
                        for dx in kx.clone() {
                            let at = (row + (x0 + dx as isize) as usize) * c;
                            acc += input[at + ch] * self.weights[(dy * k + dx) * c + ch];
                        }
                    }
                    o[ch] = acc;
                }
                clamp6(o);
            }
        }
        (ho, wo)
    }
}

/// One MBConv block: optional 1×1 expansion, depthwise, 1×1 projection, identity
/// shortcut when the shape is unchanged.
struct Block {
    expand: Option<Dense>,
    depthwise: Depthwise,
    project: Dense,
    residual: bool,
}

/// The network, weights folded and laid out for the forward pass.
pub(crate) struct Network {
    stem: Dense,
    blocks: Vec<Block>,
    head: Dense,
    classifier: Dense,
    /// Floats each [`Scratch`] buffer needs.
    buffer_sizes: [usize; 4],
}

/// Output size and leading (top / left) padding of a TF "SAME" convolution.
fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (out, total / 2)
}

fn clamp6(values: &mut [f32]) {
    for v in values {
        *v = v.clamp(0.0, 6.0);
    }
}

/// Reused activation buffers of one thread (about 10 MB in all): `a` the block inputs and
/// outputs, `b` the expansions and the head's output, `c` the stem's im2col matrix and the
/// depthwise outputs, `d` the projections (swapped with `a` after each block).
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Network {
    /// Reads the weights (tensor names of the lukemelas / `efficientnet_lite_pytorch`
    /// port) and folds each BatchNorm into its convolution.
    pub(crate) fn load(w: &Weights) -> Result<Network> {
        let stem = {
            let conv = w.tensor("_conv_stem.weight", &[STEM_CHANNELS, 3, 3, 3])?;
            let (scale, bias) = batch_norm(w, "_bn0", STEM_CHANNELS)?;
            // im2col column order: (ky, kx, input channel).
            let mut weights = vec![0.0; 27 * STEM_CHANNELS];
            for o in 0..STEM_CHANNELS {
                for i in 0..3 {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            weights[((ky * 3 + kx) * 3 + i) * STEM_CHANNELS + o] =
                                conv[((o * 3 + i) * 3 + ky) * 3 + kx] * scale[o];
                        }
                    }
                }
            }
            Dense { weights, bias, inputs: 27, outputs: STEM_CHANNELS }
        };
        let mut blocks = Vec::new();
        for &(repeats, kernel, first_stride, expand, first_in, out) in &STAGES {
            for r in 0..repeats {
                let (stride, inputs) = if r == 0 { (first_stride, first_in) } else { (1, out) };
                let name = format!("_blocks.{}", blocks.len());
                let hidden = inputs * expand;
                let expand = if expand == 1 {
                    None
                } else {
                    Some(pointwise(w, &format!("{name}._expand_conv"), &format!("{name}._bn0"), inputs, hidden)?)
                };
                let depthwise = {
                    let conv = w.tensor(&format!("{name}._depthwise_conv.weight"), &[hidden, 1, kernel, kernel])?;
                    let (scale, bias) = batch_norm(w, &format!("{name}._bn1"), hidden)?;
                    let mut weights = vec![0.0; kernel * kernel * hidden];
                    for ch in 0..hidden {
                        for tap in 0..kernel * kernel {
                            weights[tap * hidden + ch] = conv[ch * kernel * kernel + tap] * scale[ch];
                        }
                    }
                    Depthwise { weights, bias, channels: hidden, kernel, stride }
                };
                let project = pointwise(w, &format!("{name}._project_conv"), &format!("{name}._bn2"), hidden, out)?;
                blocks.push(Block { expand, depthwise, project, residual: stride == 1 && inputs == out });
            }
        }
        let last = STAGES[STAGES.len() - 1].5;
        let head = pointwise(w, "_conv_head", "_bn1", last, FEATURES)?;
        let classifier = {
            let fc = w.tensor("_fc.weight", &[CLASSES, FEATURES])?;
            let bias = w.tensor("_fc.bias", &[CLASSES])?;
            let mut weights = vec![0.0; FEATURES * CLASSES];
            for o in 0..CLASSES {
                for i in 0..FEATURES {
                    weights[i * CLASSES + o] = fc[o * FEATURES + i];
                }
            }
            Dense { weights, bias, inputs: FEATURES, outputs: CLASSES }
        };
        let buffer_sizes = buffer_sizes(&blocks, head.outputs);
        Ok(Network { stem, blocks, head, classifier, buffer_sizes })
    }

    /// The globally average-pooled head activations (1,280 values, not normalised) of a
    /// preprocessed image (224 × 224 × 3, channels last).
    pub(crate) fn features(&self, input: &[f32], par: Parallelism) -> Vec<f32> {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => self.features_with(input, &mut scratch, par),
            // Only reachable if a forward pass re-entered itself on this thread.
            Err(_) => self.features_with(input, &mut Scratch::default(), par),
        })
    }

    fn features_with(&self, input: &[f32], s: &mut Scratch, par: Parallelism) -> Vec<f32> {
        let [a, b, c, d] = self.buffer_sizes;
        for (buffer, len) in [(&mut s.a, a), (&mut s.b, b), (&mut s.c, c), (&mut s.d, d)] {
            buffer.resize(len, 0.0);
        }
        // Stem: im2col of the 3×3 stride-2 "SAME" convolution, then one GEMM.
        let (h, pad) = same_padding(INPUT_SIZE, 3, 2);
        let w = h;
        let cols = &mut s.c[..h * w * 27];
        cols.fill(0.0);
        for oy in 0..h {
            for ox in 0..w {
                let col = &mut cols[(oy * w + ox) * 27..][..27];
                for ky in 0..3 {
                    let Some(iy) = (oy * 2 + ky).checked_sub(pad).filter(|&y| y < INPUT_SIZE) else { continue };
                    for kx in 0..3 {
                        let Some(ix) = (ox * 2 + kx).checked_sub(pad).filter(|&x| x < INPUT_SIZE) else { continue };
                        col[(ky * 3 + kx) * 3..][..3].copy_from_slice(&input[(iy * INPUT_SIZE + ix) * 3..][..3]);
                    }
                }
            }
        }
        self.stem.apply(&s.c, h * w, &mut s.a, None, true, par);
        // Blocks: the block input lives in `a`, its output goes to `d`, then they swap.
        let (mut h, mut w) = (h, w);
        for block in &self.blocks {
            let hidden = match &block.expand {
                Some(expand) => {
                    expand.apply(&s.a, h * w, &mut s.b, None, true, par);
                    &s.b
                }
                None => &s.a,
            };
            let (ho, wo) = block.depthwise.apply(hidden, (h, w), &mut s.c);
            let residual = block.residual.then_some(&s.a[..ho * wo * block.project.outputs]);
            block.project.apply(&s.c, ho * wo, &mut s.d, residual, false, par);
            std::mem::swap(&mut s.a, &mut s.d);
            (h, w) = (ho, wo);
        }
        // Head 1×1 convolution + ReLU6, then the global average.
        self.head.apply(&s.a, h * w, &mut s.b, None, true, par);
        let mut pooled = vec![0.0f32; FEATURES];
        for pixel in s.b[..h * w * FEATURES].chunks_exact(FEATURES) {
            pooled.iter_mut().zip(pixel).for_each(|(p, &v)| *p += v);
        }
        let n = (h * w) as f32;
        pooled.iter_mut().for_each(|p| *p /= n);
        pooled
    }

    /// The classifier's logits (1,000 ImageNet classes) of pooled features.
    pub(crate) fn logits(&self, features: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; CLASSES];
        self.classifier.apply(features, 1, &mut out, None, false, Parallelism::None);
        out
    }
}

/// The length of each [`Scratch`] buffer, following the activations' shapes through
/// the network as [`Network::features`] does.
fn buffer_sizes(blocks: &[Block], head_outputs: usize) -> [usize; 4] {
    let (mut h, _) = same_padding(INPUT_SIZE, 3, 2);
    let (mut a, mut b, mut c) = (h * h * STEM_CHANNELS, 0, h * h * 27);
    for block in blocks {
        let hidden = block.depthwise.channels;
        b = b.max(h * h * hidden);
        (h, _) = same_padding(h, block.depthwise.kernel, block.depthwise.stride);
        c = c.max(h * h * hidden);
        a = a.max(h * h * block.project.outputs);
    }
    b = b.max(h * h * head_outputs);
    [a, b, c, a]
}

/// A bias-free 1×1 convolution `conv` (`[outputs, inputs, 1, 1]`) with BatchNorm `bn`
/// folded in, transposed to `[inputs][outputs]`.
fn pointwise(w: &Weights, conv: &str, bn: &str, inputs: usize, outputs: usize) -> Result<Dense> {
    let conv = w.tensor(&format!("{conv}.weight"), &[outputs, inputs, 1, 1])?;
    let (scale, bias) = batch_norm(w, bn, outputs)?;
    let mut weights = vec![0.0; inputs * outputs];
    for o in 0..outputs {
        for i in 0..inputs {
            weights[i * outputs + o] = conv[o * inputs + i] * scale[o];
        }
    }
    Ok(Dense { weights, bias, inputs, outputs })
}

/// The folded form of BatchNorm `name` (inference): per channel, `scale = γ / √(σ² + ε)`
/// and `bias = β − μ · scale`, computed in f64.
fn batch_norm(w: &Weights, name: &str, channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let gamma = w.tensor(&format!("{name}.weight"), &[channels])?;
    let beta = w.tensor(&format!("{name}.bias"), &[channels])?;
    let mean = w.tensor(&format!("{name}.running_mean"), &[channels])?;
    let var = w.tensor(&format!("{name}.running_var"), &[channels])?;
    if let Some(i) = var.iter().position(|&v| v < 0.0) {
        return Err(Error::corrupt(w.path(), format!("tensor {name}.running_var is negative at element {i}")));
    }
    let scale: Vec<f64> =
        gamma.iter().zip(&var).map(|(&g, &v)| f64::from(g) / (f64::from(v) + BN_EPS).sqrt()).collect();
    let bias =
        beta.iter().zip(&mean).zip(&scale).map(|((&b, &m), &s)| (f64::from(b) - f64::from(m) * s) as f32).collect();
    Ok((scale.into_iter().map(|s| s as f32).collect(), bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(same_padding(224, 3, 2), (112, 0)); // total 1: bottom / right only
        assert_eq!(same_padding(56, 5, 2), (28, 1)); // total 3: 1 before, 2 after
        assert_eq!(same_padding(14, 5, 1), (14, 2));
        assert_eq!(same_padding(7, 3, 1), (7, 1));
    }

    #[test]
    fn depthwise_matches_a_naive_convolution() {
        for (channels, kernel, stride, h, w) in [(19, 3, 2, 7, 6), (32, 5, 1, 5, 4), (48, 5, 2, 9, 9)] {
            let weights: Vec<f32> =
                (0..kernel * kernel * channels).map(|i| ((i * 7) % 11) as f32 * 0.1 - 0.5).collect();
            let bias: Vec<f32> = (0..channels).map(|i| i as f32 * 0.01).collect();
            let input: Vec<f32> = (0..h * w * channels).map(|i| ((i * 5) % 13) as f32 * 0.1 - 0.4).collect();
            let dw = Depthwise { weights, bias, channels, kernel, stride };
            let (ho, pt) = same_padding(h, kernel, stride);
            let (wo, pl) = same_padding(w, kernel, stride);
            let mut out = vec![0.0; ho * wo * channels];
            assert_eq!(dw.apply(&input, (h, w), &mut out), (ho, wo));
            for oy in 0..ho {
                for ox in 0..wo {
                    for ch in 0..channels {
                        let mut want = dw.bias[ch];
                        for ky in 0..kernel {
                            for kx in 0..kernel {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - pt as isize,
                                    (ox * stride + kx) as isize - pl as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    want += input[((iy as usize) * w + ix as usize) * channels + ch]
                                        * dw.weights[(ky * kernel + kx) * channels + ch];
                                }
                            }
                        }
                        let got = out[(oy * wo + ox) * channels + ch];
                        assert!((got - want.clamp(0.0, 6.0)).abs() < 1e-5, "({oy},{ox},{ch}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
