//! BERT encoder weights and the forward pass over packed (unpadded) sequences.
//!
//! Sequences of one batch are concatenated row after row ("packed"): every
//! dense layer runs as one GEMM over all tokens of the batch, attention runs
//! per sequence and head, so no work is spent on padding and no mask is needed.
#![allow(unsafe_code, reason = "calls #[target_feature] instantiations after run-time feature detection")]

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::bf16::{self, PackedB};
use crate::error::{Error, Result};
use crate::kernels;
use crate::matmul::{Parallelism, matmul};

/// The fields of a Hugging Face BERT `config.json` the forward pass depends on.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Config {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}

impl Config {
    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(Error::corrupt(path, reason));
        if let Some(t) = &self.model_type
            && t != "bert"
        {
            return bad(format!("model_type {t:?} is not \"bert\""));
        }
        if self.hidden_act != "gelu" {
            return bad(format!("hidden_act {:?} unsupported (want \"gelu\")", self.hidden_act));
        }
        if let Some(p) = &self.position_embedding_type
            && p != "absolute"
        {
            return bad(format!("position_embedding_type {p:?} unsupported"));
        }
        let dims = [
            self.hidden_size,
            self.num_attention_heads,
            self.num_hidden_layers,
            self.intermediate_size,
            self.max_position_embeddings,
            self.vocab_size,
            self.type_vocab_size,
        ];
        if dims.iter().any(|&d| d == 0 || d > 1 << 20) {
            return bad("a dimension is zero or absurdly large".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("hidden_size is not a multiple of num_attention_heads".into());
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad("layer_norm_eps must be positive".into());
        }
        Ok(())
    }
}

/// One encoder layer. Weight matrices are stored transposed (`[in, out]`,
/// row-major), the layout [`matmul`] wants.
struct Layer {
    /// Query, key and value weights side by side: `[hidden, 3·hidden]`.
    w_qkv: Vec<f32>,
    b_qkv: Vec<f32>,
    w_o: Vec<f32>,
    b_o: Vec<f32>,
    ln1_g: Vec<f32>,
    ln1_b: Vec<f32>,
    w_1: Vec<f32>,
    b_1: Vec<f32>,
    w_2: Vec<f32>,
    b_2: Vec<f32>,
    ln2_g: Vec<f32>,
    ln2_b: Vec<f32>,
    /// `w_qkv`, `w_o`, `w_1`, `w_2` in bf16, packed for [`bf16::matmul`] (when loaded
    /// for [`Precision::Bf16`]).
    packed: Option<[PackedB; 4]>,
}

/// Arithmetic of the dense layers (the four matrix products of every layer, ~88 % of
/// the work); everything else of the forward pass is f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout: reproduces sentence-transformers to ~1e-11 in cosine.
    F32,
    /// bf16 operands with f32 accumulation (AVX512-BF16, `vdpbf16ps`): about twice the
    /// GEMM throughput; every reference text stays at cosine ≥ 0.999 to the f32 model.
    Bf16,
}

impl Precision {
    /// The environment variable that picks the precision of every embedder the
    /// process loads: `auto` (the default: [`Precision::fastest`]), `f32` or `bf16`.
    pub const ENV: &'static str = "KERNELIZE_EMBED_PRECISION";

    /// The fastest precision this CPU runs: `Bf16` with AVX512-BF16, else `F32`.
    pub fn fastest() -> Precision {
        if bf16::available() { Precision::Bf16 } else { Precision::F32 }
    }

    /// Whether this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => bf16::available(),
        }
    }

    /// Parse `auto`, `f32` or `bf16` (what [`Precision::ENV`] holds); `auto` is
    /// [`Precision::fastest`]. A precision this CPU cannot run is an error.
    pub fn parse(s: &str) -> Result<Precision> {
        let p = match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => return Ok(Precision::fastest()),
            "f32" => Precision::F32,
            "bf16" => Precision::Bf16,
            other => {
                return Err(Error::InvalidArgument(format!("embedding precision {other:?}: want auto, f32 or bf16")));
            }
        };
        if !p.available() {
            return Err(Error::InvalidArgument(format!(
                "embedding precision {}: this CPU lacks AVX512-BF16 (use f32 or auto)",
                p.name()
            )));
        }
        Ok(p)
    }

    /// From [`Precision::ENV`], `auto` when unset.
    pub fn from_env() -> Result<Precision> {
        match std::env::var(Self::ENV) {
            Ok(v) => Precision::parse(&v).map_err(|e| Error::InvalidArgument(format!("{}: {e}", Self::ENV))),
            Err(_) => Ok(Precision::fastest()),
        }
    }

    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// A loaded BERT encoder (weights owned, f32).
pub(crate) struct Model {
    pub cfg: Config,
    eps: f32,
    word: Vec<f32>,
    /// Position embeddings with token-type 0 already added: `[max_pos, hidden]`.
    pos: Vec<f32>,
    emb_ln_g: Vec<f32>,
    emb_ln_b: Vec<f32>,
    layers: Vec<Layer>,
}

/// Instruction sets the non-GEMM kernels are compiled for, in increasing order (also
/// what `kernelize-media`'s forward passes dispatch on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Whatever the target's baseline is (SSE2 on x86-64, NEON on aarch64).
    Generic,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F/VL/BW/DQ + AVX2 + FMA.
    Avx512,
}

impl Isa {
    /// The best instruction set this CPU supports (cached by `std`).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        Isa::Generic
    }
}

/// Reusable activation buffers of one forward pass.
#[derive(Default)]
pub(crate) struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    ffn: Vec<f32>,
    scores: Vec<f32>,
    kt: Vec<f32>,
    /// bf16 copy of a GEMM's left operand.
    a16: Vec<u16>,
}

impl Scratch {
    fn ensure(&mut self, cfg: &Config, tokens: usize, max_len: usize) {
        let h = cfg.hidden_size;
        let head = h / cfg.num_attention_heads;
        grow(&mut self.h, tokens * h);
        grow(&mut self.qkv, tokens * 3 * h);
        grow(&mut self.ctx, tokens * h);
        grow(&mut self.ffn, tokens * cfg.intermediate_size);
        let padded = max_len.div_ceil(16) * 16;
        grow(&mut self.scores, padded);
        grow(&mut self.kt, padded * head);
    }
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

fn tensor(st: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|e| Error::corrupt(path, format!("tensor {name}: {e}")))?;
    if t.dtype() != Dtype::F32 {
        return Err(Error::corrupt(path, format!("tensor {name} has dtype {:?}, want F32", t.dtype())));
    }
    if t.shape() != shape {
        return Err(Error::corrupt(path, format!("tensor {name} has shape {:?}, want {shape:?}", t.shape())));
    }
    let data = t.data();
    let want: usize = shape.iter().product();
    if data.len() != want * 4 {
        return Err(Error::corrupt(path, format!("tensor {name} has {} bytes", data.len())));
    }
    Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Transpose a row-major `[rows, cols]` matrix.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

impl Model {
    /// Read and check every tensor of `model.safetensors` against `cfg`.
    pub(crate) fn from_safetensors(cfg: Config, path: &Path, bytes: &[u8]) -> Result<Model> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::corrupt(path, format!("not a safetensors file: {e}")))?;
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        // Some exports prefix every name with "bert.".
        let prefix = if st.names().iter().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
        let get = |name: &str, shape: &[usize]| tensor(&st, path, &format!("{prefix}{name}"), shape);

        let word = get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let mut pos = get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let token_type = get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        for row in pos.chunks_exact_mut(h) {
            for (p, t) in row.iter_mut().zip(&token_type[..h]) {
                *p += t;
            }
        }
        let emb_ln_g = get("embeddings.LayerNorm.weight", &[h])?;
        let emb_ln_b = get("embeddings.LayerNorm.bias", &[h])?;

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            let g = |name: &str, shape: &[usize]| get(&format!("{p}{name}"), shape);
            let mut w_qkv = g("attention.self.query.weight", &[h, h])?;
            w_qkv.extend(g("attention.self.key.weight", &[h, h])?);
            w_qkv.extend(g("attention.self.value.weight", &[h, h])?);
            let w_qkv = transpose(&w_qkv, 3 * h, h);
            let mut b_qkv = g("attention.self.query.bias", &[h])?;
            b_qkv.extend(g("attention.self.key.bias", &[h])?);
            b_qkv.extend(g("attention.self.value.bias", &[h])?);
            layers.push(Layer {
                w_qkv,
                b_qkv,
                w_o: transpose(&g("attention.output.dense.weight", &[h, h])?, h, h),
                b_o: g("attention.output.dense.bias", &[h])?,
                ln1_g: g("attention.output.LayerNorm.weight", &[h])?,
                ln1_b: g("attention.output.LayerNorm.bias", &[h])?,
                w_1: transpose(&g("intermediate.dense.weight", &[i, h])?, i, h),
                b_1: g("intermediate.dense.bias", &[i])?,
                w_2: transpose(&g("output.dense.weight", &[h, i])?, h, i),
                b_2: g("output.dense.bias", &[h])?,
                ln2_g: g("output.LayerNorm.weight", &[h])?,
                ln2_b: g("output.LayerNorm.bias", &[h])?,
                packed: None,
            });
        }
        Ok(Model { eps: cfg.layer_norm_eps as f32, cfg, word, pos, emb_ln_g, emb_ln_b, layers })
    }

    /// Round the dense layers' weights to bf16 for [`Precision::Bf16`] (kept beside
    /// the f32 ones, so either precision can run).
    pub(crate) fn pack_bf16(&mut self) {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        for l in &mut self.layers {
            if l.packed.is_none() {
                l.packed = Some([
                    PackedB::pack(&l.w_qkv, h, 3 * h),
                    PackedB::pack(&l.w_o, h, h),
                    PackedB::pack(&l.w_1, h, i),
                    PackedB::pack(&l.w_2, i, h),
                ]);
            }
        }
    }

    /// Embed a pack of sequences.
    ///
    /// `ids` holds the token ids of all sequences back to back (each already
    /// wrapped in `[CLS] … [SEP]` and at most `max_position_embeddings` long,
    /// every id `< vocab_size`); `lens` their lengths. Writes one mean-pooled,
    /// L2-normalised row of `hidden_size` per sequence into `out`.
    pub(crate) fn forward(
        &self,
        precision: Precision,
        ids: &[u32],
        lens: &[usize],
        scratch: &mut Scratch,
        par: Parallelism,
        out: &mut [f32],
    ) {
        self.forward_isa(Isa::detect(), precision, ids, lens, scratch, par, out);
    }

    /// [`Model::forward`] with the instruction set capped at `isa` (never above
    /// what the CPU has).
    #[allow(clippy::too_many_arguments, reason = "the forward pass's inputs plus its two switches")]
    pub(crate) fn forward_isa(
        &self,
        isa: Isa,
        precision: Precision,
        ids: &[u32],
        lens: &[usize],
        scratch: &mut Scratch,
        par: Parallelism,
        out: &mut [f32],
    ) {
        match isa.min(Isa::detect()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::detect() returned Avx512 or better, so the CPU has
            // every feature forward_avx512 is compiled for.
            Isa::Avx512 => unsafe { self.forward_avx512(precision, ids, lens, scratch, par, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::detect() returned Avx2 or better, so the CPU has
            // every feature forward_avx2 is compiled for.
            Isa::Avx2 => unsafe { self.forward_avx2(precision, ids, lens, scratch, par, out) },
            _ => self.forward_impl(precision, ids, lens, scratch, par, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    fn forward_avx512(
        &self,
        precision: Precision,
        ids: &[u32],
        lens: &[usize],
        scratch: &mut Scratch,
        par: Parallelism,
        out: &mut [f32],
    ) {
        self.forward_impl(precision, ids, lens, scratch, par, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn forward_avx2(
        &self,
        precision: Precision,
        ids: &[u32],
        lens: &[usize],
        scratch: &mut Scratch,
        par: Parallelism,
        out: &mut [f32],
    ) {
        self.forward_impl(precision, ids, lens, scratch, par, out);
    }

    #[inline(always)]
    fn forward_impl(
        &self,
        precision: Precision,
        ids: &[u32],
        lens: &[usize],
        s: &mut Scratch,
        par: Parallelism,
        out: &mut [f32],
    ) {
        let cfg = &self.cfg;
        let hd = cfg.hidden_size;
        let inter = cfg.intermediate_size;
        let t = ids.len();
        let max_len = lens.iter().copied().max().unwrap_or(0);
        s.ensure(cfg, t, max_len);
        let h = &mut s.h[..t * hd];
        let qkv = &mut s.qkv[..t * 3 * hd];
        let ctx = &mut s.ctx[..t * hd];
        let ffn = &mut s.ffn[..t * inter];

        // Embeddings: word + position (+ token type 0), then LayerNorm.
        let mut row = 0;
        for &len in lens {
            for p in 0..len {
                let id = ids[row] as usize;
                let dst = &mut h[row * hd..(row + 1) * hd];
                let w = &self.word[id * hd..(id + 1) * hd];
                let pe = &self.pos[p * hd..(p + 1) * hd];
                for ((d, w), pe) in dst.iter_mut().zip(w).zip(pe) {
                    *d = w + pe;
                }
                row += 1;
            }
        }
        kernels::layer_norm(h, &self.emb_ln_g, &self.emb_ln_b, self.eps);

        let a16 = &mut s.a16;
        for layer in &self.layers {
            let packed = layer.packed.as_ref().filter(|_| precision == Precision::Bf16);
            // c = (accumulate ? c : 0) + a · W: weight `w` of the layer, f32 or packed bf16.
            let mut dense = |c: &mut [f32], a: &[f32], w: usize, (n, k): (usize, usize), accumulate: bool| match packed
            {
                Some(p) => bf16::matmul(c, a, &p[w], t, accumulate, a16, par),
                None => {
                    let wt = [&layer.w_qkv, &layer.w_o, &layer.w_1, &layer.w_2][w];
                    matmul(c, a, wt, (t, n, k), accumulate, par);
                }
            };
            dense(qkv, h, 0, (3 * hd, hd), false);
            kernels::add_bias(qkv, &layer.b_qkv);
            self.attention(qkv, ctx, lens, &mut s.scores, &mut s.kt);
            // h ← LayerNorm(h + ctx·W_oᵀ + b_o): the residual is the GEMM accumulator.
            dense(h, ctx, 1, (hd, hd), true);
            kernels::bias_layer_norm(h, &layer.b_o, &layer.ln1_g, &layer.ln1_b, self.eps);
            dense(ffn, h, 2, (inter, hd), false);
            kernels::bias_gelu(ffn, &layer.b_1);
            dense(h, ffn, 3, (hd, inter), true);
            kernels::bias_layer_norm(h, &layer.b_2, &layer.ln2_g, &layer.ln2_b, self.eps);
        }

        // Mean pooling over each sequence, then L2 normalisation
        // (sentence-transformers Pooling(mean) + Normalize).
        let mut row = 0;
        for (&len, o) in lens.iter().zip(out.chunks_exact_mut(hd)) {
            o.fill(0.0);
            for r in row..row + len {
                for (o, v) in o.iter_mut().zip(&h[r * hd..(r + 1) * hd]) {
                    *o += v;
                }
            }
            row += len;
            let inv_len = 1.0 / (len.max(1) as f32);
            for v in o.iter_mut() {
                *v *= inv_len;
            }
            let norm = o.iter().map(|v| v * v).sum::<f32>().sqrt();
            let inv = 1.0 / norm.max(1e-12);
            for v in o.iter_mut() {
                *v *= inv;
            }
        }
    }

    /// Multi-head self-attention of every sequence of the pack, written to `ctx`.
    #[inline(always)]
    fn attention(&self, qkv: &[f32], ctx: &mut [f32], lens: &[usize], scores: &mut [f32], kt: &mut [f32]) {
        let hd = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let d = hd / heads;
        let mut start = 0;
        for &len in lens {
            let sq = &qkv[start * 3 * hd..(start + len) * 3 * hd];
            let sc = &mut ctx[start * hd..(start + len) * hd];
            for head in 0..heads {
                let a = HeadAttention { qkv: sq, len, hd, offset: head * d };
                match d {
                    32 => a.run::<32>(sc, scores, kt),
                    64 => a.run::<64>(sc, scores, kt),
                    _ => a.run_any(d, sc, scores, kt),
                }
            }
            start += len;
        }
    }
}

/// One head of one sequence: rows of `qkv` are `[q | k | v]`, each `hd` wide,
/// and this head's slice of each starts at `offset`.
struct HeadAttention<'a> {
    qkv: &'a [f32],
    len: usize,
    hd: usize,
    offset: usize,
}

/// Key columns processed together when computing a row of scores.
const KEY_BLOCK: usize = 16;

impl HeadAttention<'_> {
    /// `softmax(q·kᵀ/√D)·v` for every query row, head size known at compile time
    /// so that a 16-wide block of scores and the output row stay in registers.
    #[inline(always)]
    fn run<const D: usize>(&self, ctx: &mut [f32], scores: &mut [f32], kt: &mut [f32]) {
        let (len, hd, h3) = (self.len, self.hd, 3 * self.hd);
        let (qo, ko, vo) = (self.offset, hd + self.offset, 2 * hd + self.offset);
        let scale = 1.0 / (D as f32).sqrt();
        // Kᵀ, [D, lp] with the columns past `len` zeroed.
        let lp = len.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let kt = &mut kt[..D * lp];
        for (j, row) in self.qkv.chunks_exact(h3).enumerate() {
            let k: &[f32; D] = row[ko..ko + D].try_into().expect("head slice");
            for (dd, &kv) in k.iter().enumerate() {
                kt[dd * lp + j] = kv;
            }
        }
        for dd in 0..D {
            kt[dd * lp + len..(dd + 1) * lp].fill(0.0);
        }
        let scores = &mut scores[..lp];
        for (i, qrow) in self.qkv.chunks_exact(h3).enumerate() {
            let q: &[f32; D] = qrow[qo..qo + D].try_into().expect("head slice");
            for (jb, block) in scores.chunks_exact_mut(KEY_BLOCK).enumerate() {
                let mut acc = [0.0f32; KEY_BLOCK];
                for (dd, &qv) in q.iter().enumerate() {
                    let base = dd * lp + jb * KEY_BLOCK;
                    let k: &[f32; KEY_BLOCK] = kt[base..base + KEY_BLOCK].try_into().expect("key block");
                    for l in 0..KEY_BLOCK {
                        acc[l] += qv * k[l];
                    }
                }
                for l in 0..KEY_BLOCK {
                    block[l] = acc[l] * scale;
                }
            }
            let p = &mut scores[..len];
            kernels::softmax(p);
            let mut out = [0.0f32; D];
            for (&pj, vrow) in p.iter().zip(self.qkv.chunks_exact(h3)) {
                let v: &[f32; D] = vrow[vo..vo + D].try_into().expect("head slice");
                for dd in 0..D {
                    out[dd] += pj * v[dd];
                }
            }
            ctx[i * hd + qo..i * hd + qo + D].copy_from_slice(&out);
        }
    }

    /// The same for any head size (not used by MiniLM, whose heads are 32 wide).
    #[inline(always)]
    fn run_any(&self, d: usize, ctx: &mut [f32], scores: &mut [f32], kt: &mut [f32]) {
        let (len, hd, h3) = (self.len, self.hd, 3 * self.hd);
        let (qo, ko, vo) = (self.offset, hd + self.offset, 2 * hd + self.offset);
        let scale = 1.0 / (d as f32).sqrt();
        let kt = &mut kt[..d * len];
        for (j, row) in self.qkv.chunks_exact(h3).enumerate() {
            for (dd, &kv) in row[ko..ko + d].iter().enumerate() {
                kt[dd * len + j] = kv;
            }
        }
        let row = &mut scores[..len];
        for (i, qrow) in self.qkv.chunks_exact(h3).enumerate() {
            row.fill(0.0);
            for (dd, &qv) in qrow[qo..qo + d].iter().enumerate() {
                kernels::axpy(row, qv, &kt[dd * len..(dd + 1) * len]);
            }
            for v in row.iter_mut() {
                *v *= scale;
            }
            kernels::softmax(row);
            let out = &mut ctx[i * hd + qo..i * hd + qo + d];
            out.fill(0.0);
            for (&pj, vrow) in row.iter().zip(self.qkv.chunks_exact(h3)) {
                kernels::axpy(out, pj, &vrow[vo..vo + d]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;

    use super::*;
    use crate::kernels::tests::libm_erf;

    type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

    /// xorshift64*, uniform in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            x as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    fn config(hidden: usize, heads: usize) -> Config {
        Config {
            hidden_size: hidden,
            num_attention_heads: heads,
            num_hidden_layers: 2,
            intermediate_size: 4 * hidden,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            max_position_embeddings: 64,
            vocab_size: 50,
            type_vocab_size: 2,
            position_embedding_type: None,
            model_type: Some("bert".into()),
        }
    }

    /// Random BERT weights (small, so activations stay in a realistic range),
    /// serialised to safetensors bytes as a Hugging Face export would be.
    fn random_weights(cfg: &Config, seed: u64) -> (Tensors, Vec<u8>) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut rng = Rng(seed);
        let mut t = Tensors::new();
        let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = (0..n).map(|_| offset + scale * rng.next()).collect();
            t.insert(name, (shape, data));
        };
        add("embeddings.word_embeddings.weight".into(), vec![cfg.vocab_size, h], 1.0, 0.0);
        add("embeddings.position_embeddings.weight".into(), vec![cfg.max_position_embeddings, h], 0.3, 0.0);
        add("embeddings.token_type_embeddings.weight".into(), vec![cfg.type_vocab_size, h], 0.3, 0.0);
        add("embeddings.LayerNorm.weight".into(), vec![h], 0.2, 1.0);
        add("embeddings.LayerNorm.bias".into(), vec![h], 0.1, 0.0);
        let w = 1.0 / (h as f32).sqrt();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            for m in ["query", "key", "value"] {
                add(format!("{p}attention.self.{m}.weight"), vec![h, h], 2.0 * w, 0.0);
                add(format!("{p}attention.self.{m}.bias"), vec![h], 0.1, 0.0);
            }
            add(format!("{p}attention.output.dense.weight"), vec![h, h], w, 0.0);
            add(format!("{p}attention.output.dense.bias"), vec![h], 0.1, 0.0);
            add(format!("{p}attention.output.LayerNorm.weight"), vec![h], 0.2, 1.0);
            add(format!("{p}attention.output.LayerNorm.bias"), vec![h], 0.1, 0.0);
            add(format!("{p}intermediate.dense.weight"), vec![i, h], 2.0 * w, 0.0);
            add(format!("{p}intermediate.dense.bias"), vec![i], 0.5, 0.0);
            add(format!("{p}output.dense.weight"), vec![h, i], 1.0 / (i as f32).sqrt(), 0.0);
            add(format!("{p}output.dense.bias"), vec![h], 0.1, 0.0);
            add(format!("{p}output.LayerNorm.weight"), vec![h], 0.2, 1.0);
            add(format!("{p}output.LayerNorm.bias"), vec![h], 0.1, 0.0);
        }
        let bytes: HashMap<&String, Vec<u8>> =
            t.iter().map(|(k, (_, v))| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
        let views: Vec<(&String, TensorView<'_>)> = t
            .iter()
            .map(|(k, (shape, _))| (k, TensorView::new(Dtype::F32, shape.clone(), &bytes[k]).expect("view")))
            .collect();
        let file = safetensors::serialize(views, None).expect("serialize");
        (t, file)
    }

    /// `x·Wᵀ + b` in f64 with `W` in PyTorch layout `[out, in]`.
    fn linear(x: &[Vec<f64>], w: &(Vec<usize>, Vec<f32>), b: &(Vec<usize>, Vec<f32>)) -> Vec<Vec<f64>> {
        let (out, inp) = (w.0[0], w.0[1]);
        x.iter()
            .map(|row| {
                (0..out)
                    .map(|o| f64::from(b.1[o]) + (0..inp).map(|k| row[k] * f64::from(w.1[o * inp + k])).sum::<f64>())
                    .collect()
            })
            .collect()
    }

    fn layer_norm(x: &mut [Vec<f64>], g: &(Vec<usize>, Vec<f32>), b: &(Vec<usize>, Vec<f32>), eps: f64) {
        for row in x {
            let n = row.len() as f64;
            let mean = row.iter().sum::<f64>() / n;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            for (k, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) / (var + eps).sqrt() * f64::from(g.1[k]) + f64::from(b.1[k]);
            }
        }
    }

    /// Textbook BERT + mean pooling + L2 normalisation in f64, one sequence.
    fn reference(t: &Tensors, cfg: &Config, ids: &[u32]) -> Vec<f64> {
        let h = cfg.hidden_size;
        let get = |n: &str| &t[n];
        let (word, pos, tt) = (
            get("embeddings.word_embeddings.weight"),
            get("embeddings.position_embeddings.weight"),
            get("embeddings.token_type_embeddings.weight"),
        );
        let mut x: Vec<Vec<f64>> = ids
            .iter()
            .enumerate()
            .map(|(p, &id)| {
                (0..h)
                    .map(|k| f64::from(word.1[id as usize * h + k]) + f64::from(pos.1[p * h + k]) + f64::from(tt.1[k]))
                    .collect()
            })
            .collect();
        let eps = cfg.layer_norm_eps;
        layer_norm(&mut x, get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"), eps);
        let heads = cfg.num_attention_heads;
        let d = h / heads;
        for l in 0..cfg.num_hidden_layers {
            let p = |n: &str| format!("encoder.layer.{l}.{n}");
            let lin =
                |x: &[Vec<f64>], n: &str| linear(x, get(&p(&format!("{n}.weight"))), get(&p(&format!("{n}.bias"))));
            let q = lin(&x, "attention.self.query");
            let k = lin(&x, "attention.self.key");
            let v = lin(&x, "attention.self.value");
            let len = x.len();
            let mut ctx = vec![vec![0.0; h]; len];
            for hh in 0..heads {
                let r = hh * d..(hh + 1) * d;
                for i in 0..len {
                    let s: Vec<f64> = (0..len)
                        .map(|j| r.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>() / (d as f64).sqrt())
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in r.clone() {
                        ctx[i][c] = (0..len).map(|j| e[j] / z * v[j][c]).sum();
                    }
                }
            }
            let mut a = lin(&ctx, "attention.output.dense");
            for (a, x) in a.iter_mut().zip(&x) {
                for (a, x) in a.iter_mut().zip(x) {
                    *a += x;
                }
            }
            layer_norm(
                &mut a,
                get(&p("attention.output.LayerNorm.weight")),
                get(&p("attention.output.LayerNorm.bias")),
                eps,
            );
            let mut f = lin(&a, "intermediate.dense");
            for v in f.iter_mut().flatten() {
                *v = 0.5 * *v * (1.0 + libm_erf(*v / std::f64::consts::SQRT_2));
            }
            let mut o = lin(&f, "output.dense");
            for (o, a) in o.iter_mut().zip(&a) {
                for (o, a) in o.iter_mut().zip(a) {
                    *o += a;
                }
            }
            layer_norm(&mut o, get(&p("output.LayerNorm.weight")), get(&p("output.LayerNorm.bias")), eps);
            x = o;
        }
        let mut mean: Vec<f64> = (0..h).map(|k| x.iter().map(|r| r[k]).sum::<f64>() / x.len() as f64).collect();
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        for v in &mut mean {
            *v /= norm;
        }
        mean
    }

    fn check_against_reference(hidden: usize, heads: usize) {
        let cfg = config(hidden, heads);
        let (tensors, file) = random_weights(&cfg, 0x5eed + hidden as u64);
        let mut model = Model::from_safetensors(cfg.clone(), Path::new("random.safetensors"), &file).expect("load");
        model.pack_bf16();
        let mut rng = Rng(7);
        // Packed sequences of assorted lengths, including 1 and one past a key block.
        let lens = [1, 2, 5, 17, 40, 3];
        let seqs: Vec<Vec<u32>> =
            lens.iter().map(|&n| (0..n).map(|_| ((rng.next() + 1.0) * 24.9) as u32).collect()).collect();
        let ids: Vec<u32> = seqs.iter().flatten().copied().collect();
        let want: Vec<Vec<f64>> = seqs.iter().map(|s| reference(&tensors, &cfg, s)).collect();
        for isa in [Isa::Generic, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detect() {
                continue;
            }
            for par in [Parallelism::None, Parallelism::Rayon(2)] {
                for precision in [Precision::F32, Precision::Bf16].into_iter().filter(|p| p.available()) {
                    let mut out = vec![0.0; lens.len() * hidden];
                    model.forward_isa(isa, precision, &ids, &lens, &mut Scratch::default(), par, &mut out);
                    for (s, (got, want)) in out.chunks_exact(hidden).zip(&want).enumerate() {
                        let at = format!("{isa:?} {precision:?} hidden {hidden} heads {heads} sequence {s}");
                        if precision == Precision::F32 {
                            let diff = got.iter().zip(want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
                            assert!(diff < 2e-5, "{at}: max diff {diff}");
                        } else {
                            // Both unit vectors: the dot product is the cosine.
                            let cos: f64 = got.iter().zip(want).map(|(g, w)| f64::from(*g) * w).sum();
                            assert!(cos > 0.999, "{at}: cosine {cos}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn forward_matches_f64_reference_with_32_wide_heads() {
        check_against_reference(64, 2);
    }

    #[test]
    fn forward_matches_f64_reference_with_other_head_sizes() {
        check_against_reference(48, 4);
        check_against_reference(128, 2);
    }

    #[test]
    fn wrong_shapes_and_dtypes_are_corrupt() {
        let cfg = config(64, 2);
        let (_, file) = random_weights(&cfg, 1);
        let err = Model::from_safetensors(config(48, 2), Path::new("m.safetensors"), &file).err().expect("shape");
        assert!(err.to_string().contains("m.safetensors") && err.to_string().contains("shape"), "{err}");
        let mut bigger = config(64, 2);
        bigger.num_hidden_layers = 3;
        let err = Model::from_safetensors(bigger, Path::new("m.safetensors"), &file).err().expect("missing");
        assert!(err.to_string().contains("encoder.layer.2"), "{err}");
        assert!(Model::from_safetensors(cfg, Path::new("m"), &file[..file.len() - 1]).is_err());
    }
}
