//! The voice encoder's network: a 3-layer LSTM (40 → 256 → 256 → 256) over each partial's
//! 160 mel frames, the last layer's final hidden state through `Linear(256, 256)` and ReLU,
//! each partial L2-normalised, their mean L2-normalised (`VoiceEncoder.forward` and
//! `embed_utterance`).
//!
//! All partials of an utterance run together: per layer, the input projections of every
//! time step and partial are one GEMM (`[160·B, in] · [in, 1024]`), then the recurrence is
//! one `[B, 256] · [256, 1024]` product per step, the gates computed in place.

#![allow(unsafe_code, reason = "calls #[target_feature] instantiations after run-time feature detection")]

use super::mel::{N_MELS, PARTIAL_FRAMES};
use crate::error::{Error, Result};
use crate::safetensors_file::Weights;
use kernelize_embed::Isa;
use kernelize_embed::kernels::exp;
use kernelize_embed::matmul::{Parallelism, matmul};

/// `model_hidden_size`.
pub(crate) const HIDDEN: usize = 256;
/// `model_embedding_size`.
pub(crate) const EMBED: usize = 256;
/// `model_num_layers`.
const LAYERS: usize = 3;
/// The four gates (PyTorch order: input, forget, cell, output).
const GATES: usize = 4 * HIDDEN;

struct Layer {
    in_dim: usize,
    /// `weight_ih_l{k}` transposed: `[in_dim, 1024]`.
    w_ih_t: Vec<f32>,
    /// `weight_hh_l{k}` transposed: `[256, 1024]`.
    w_hh_t: Vec<f32>,
    /// `bias_ih_l{k} + bias_hh_l{k}`.
    bias: Vec<f32>,
}

/// The network's weights.
pub(crate) struct Network {
    layers: Vec<Layer>,
    /// `linear.weight` transposed: `[256, 256]`.
    linear_t: Vec<f32>,
    linear_bias: Vec<f32>,
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl Network {
    /// Reads and checks every tensor of the converted `pretrained.pt`.
    pub(crate) fn load(weights: &Weights) -> Result<Network> {
        let mut layers = Vec::with_capacity(LAYERS);
        for k in 0..LAYERS {
            let in_dim = if k == 0 { N_MELS } else { HIDDEN };
            let w_ih = weights.tensor(&format!("lstm.weight_ih_l{k}"), &[GATES, in_dim])?;
            let w_hh = weights.tensor(&format!("lstm.weight_hh_l{k}"), &[GATES, HIDDEN])?;
            let b_ih = weights.tensor(&format!("lstm.bias_ih_l{k}"), &[GATES])?;
            let b_hh = weights.tensor(&format!("lstm.bias_hh_l{k}"), &[GATES])?;
            layers.push(Layer {
                in_dim,
                w_ih_t: transpose(&w_ih, GATES, in_dim),
                w_hh_t: transpose(&w_hh, GATES, HIDDEN),
                bias: b_ih.iter().zip(&b_hh).map(|(a, b)| a + b).collect(),
            });
        }
        let linear = weights.tensor("linear.weight", &[EMBED, HIDDEN])?;
        let linear_bias = weights.tensor("linear.bias", &[EMBED])?;
        Ok(Network { layers, linear_t: transpose(&linear, EMBED, HIDDEN), linear_bias })
    }

    /// The utterance embedding of the partials starting at `starts` (mel frame indices into
    /// `mel`, row-major `[frames][40]`, each with 160 frames available).
    pub(crate) fn embed(&self, mel: &[f32], starts: &[usize], parallelism: Parallelism) -> Result<Vec<f32>> {
        let parts: Vec<(&[f32], usize)> = starts.iter().map(|&s| (mel, s)).collect();
        let partials = self.partials(&parts, parallelism)?;
        mean_embedding(&partials)
    }

    /// The L2-normalised embeddings (`[b, 256]`, row-major) of partials given as (mel
    /// spectrogram, start frame) pairs — of one utterance or of several: a batch of files
    /// runs its partials together, so each step's recurrent product reads the weights once
    /// for many rows.
    pub(crate) fn partials(&self, parts: &[(&[f32], usize)], parallelism: Parallelism) -> Result<Vec<f32>> {
        match Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::detect() returned Avx512, so the CPU has every feature
            // partials_avx512 is compiled for.
            Isa::Avx512 => unsafe { self.partials_avx512(parts, parallelism) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::detect() returned Avx2, so the CPU has every feature
            // partials_avx2 is compiled for.
            Isa::Avx2 => unsafe { self.partials_avx2(parts, parallelism) },
            _ => self.partials_impl(parts, parallelism),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    fn partials_avx512(&self, parts: &[(&[f32], usize)], parallelism: Parallelism) -> Result<Vec<f32>> {
        self.partials_impl(parts, parallelism)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn partials_avx2(&self, parts: &[(&[f32], usize)], parallelism: Parallelism) -> Result<Vec<f32>> {
        self.partials_impl(parts, parallelism)
    }

    /// [`Network::partials`], inlined into one instantiation per instruction set (the gate
    /// arithmetic vectorises to the widest registers the CPU has; the GEMMs dispatch by
    /// themselves).
    #[inline(always)]
    fn partials_impl(&self, parts: &[(&[f32], usize)], parallelism: Parallelism) -> Result<Vec<f32>> {
        let b = parts.len();
        let steps = PARTIAL_FRAMES;
        if b == 0 || parts.iter().any(|&(mel, s)| (s + steps) * N_MELS > mel.len()) {
            return Err(Error::input("internal error: partial utterances outside the spectrogram"));
        }
        // Time-major input: row (t, partial) = mel frame starts[partial] + t.
        let mut seq = vec![0f32; steps * b * N_MELS];
        for t in 0..steps {
            for (p, &(mel, s)) in parts.iter().enumerate() {
                let row = (s + t) * N_MELS;
                seq[(t * b + p) * N_MELS..(t * b + p + 1) * N_MELS].copy_from_slice(&mel[row..row + N_MELS]);
            }
        }
        let mut gates = vec![0f32; steps * b * GATES];
        let mut h = vec![0f32; b * HIDDEN];
        let mut c = vec![0f32; b * HIDDEN];
        for (k, layer) in self.layers.iter().enumerate() {
            let last = k + 1 == self.layers.len();
            matmul(&mut gates, &seq, &layer.w_ih_t, (steps * b, GATES, layer.in_dim), false, parallelism);
            for row in gates.chunks_exact_mut(GATES) {
                for (g, bias) in row.iter_mut().zip(&layer.bias) {
                    *g += bias;
                }
            }
            h.fill(0.0);
            c.fill(0.0);
            let mut out = if last { Vec::new() } else { vec![0f32; steps * b * HIDDEN] };
            for t in 0..steps {
                let step = &mut gates[t * b * GATES..(t + 1) * b * GATES];
                if t > 0 {
                    matmul(step, &h, &layer.w_hh_t, (b, GATES, HIDDEN), true, Parallelism::None);
                }
                for ((g, hp), cp) in
                    step.chunks_exact(GATES).zip(h.chunks_exact_mut(HIDDEN)).zip(c.chunks_exact_mut(HIDDEN))
                {
                    cell(g, hp, cp);
                }
                if !last {
                    out[t * b * HIDDEN..(t + 1) * b * HIDDEN].copy_from_slice(&h);
                }
            }
            if !last {
                seq = out;
            }
        }
        // Linear + ReLU + L2 per partial.
        let mut partials = vec![0f32; b * EMBED];
        matmul(&mut partials, &h, &self.linear_t, (b, EMBED, HIDDEN), false, Parallelism::None);
        for row in partials.chunks_exact_mut(EMBED) {
            for (x, bias) in row.iter_mut().zip(&self.linear_bias) {
                *x = (*x + bias).max(0.0);
            }
            let norm = row.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            if norm == 0.0 || !norm.is_finite() {
                return Err(Error::input("the voice encoder gave an all-zero partial embedding for this audio"));
            }
            for x in row.iter_mut() {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
        Ok(partials)
    }
}

/// The utterance embedding: the L2-normalised mean of its partials' (`[n, 256]`).
pub(crate) fn mean_embedding(partials: &[f32]) -> Result<Vec<f32>> {
    let mut mean = vec![0f64; EMBED];
    for row in partials.chunks_exact(EMBED) {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += f64::from(*x);
        }
    }
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(Error::input("the voice encoder gave an all-zero embedding for this audio"));
    }
    Ok(mean.iter().map(|x| (x / norm) as f32).collect())
}

/// One LSTM cell update for one partial: `g` holds the pre-activations of the four gates.
#[inline(always)]
fn cell(g: &[f32], h: &mut [f32], c: &mut [f32]) {
    let (gi, rest) = g.split_at(HIDDEN);
    let (gf, rest) = rest.split_at(HIDDEN);
    let (gg, go) = rest.split_at(HIDDEN);
    for j in 0..HIDDEN {
        let i = sigmoid(gi[j]);
        let f = sigmoid(gf[j]);
        let cand = tanh(gg[j]);
        let o = sigmoid(go[j]);
        let cj = f * c[j] + i * cand;
        c[j] = cj;
        h[j] = o * tanh(cj);
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 / (1.0 + exp(-2.0 * x)) - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_are_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-6);
            assert!((tanh(x) - x.tanh()).abs() < 1e-6, "tanh({x})");
        }
    }
}
