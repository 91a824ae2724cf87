//! [`Embedder`]: tokenizer + model + batching, and token-based chunking.

use std::cmp::Reverse;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::matmul::Parallelism;
use crate::model::{Config, Model, Precision, Scratch};

/// Directory name of the model under the models directory.
const MODEL_NAME: &str = crate::models::MINILM.name;
/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2, special tokens included.
const DEFAULT_MAX_TOKENS: usize = 256;
/// Upper bound on the tokens of one pack (one forward pass). Larger packs reuse
/// each weight matrix over more rows (measured: 256 < 1024 <= 4096 tokens, a
/// few per cent apart); the scratch of a pack is about 14 KiB per token.
const PACK_TOKENS: usize = 2048;
/// Texts longer than this are cut (at a whitespace, after enough words that the
/// cut cannot change the first `max_tokens` tokens) before tokenization.
const LONG_TEXT_BYTES: usize = 16 * 1024;

/// A piece of a longer text, as produced by [`Embedder::chunk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's text, `original[start..end]`.
    pub text: String,
    /// Byte offset of the chunk's first character in the original text.
    pub start: usize,
    /// Byte offset one past the chunk's last character in the original text.
    pub end: usize,
    /// Position of the chunk in the sequence of chunks, from 0.
    pub index: usize,
}

/// all-MiniLM-L6-v2 sentence embeddings, computed in-process on the CPU.
///
/// Equivalent to `SentenceTransformer("all-MiniLM-L6-v2").encode(texts,
/// normalize_embeddings=True)`: WordPiece tokenization, truncation to 256
/// tokens including `[CLS]`/`[SEP]`, a 6-layer BERT encoder, mean pooling and
/// L2 normalisation. Cheap to share: `Send + Sync`, all methods take `&self`.
/// Work runs on the current rayon thread pool.
pub struct Embedder {
    tokenizer: Tokenizer,
    model: Model,
    max_tokens: usize,
    cls: u32,
    sep: u32,
    precision: Precision,
    scratch: Mutex<Vec<Scratch>>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dim", &self.dim())
            .field("max_tokens", &self.max_tokens)
            .field("layers", &self.model.cfg.num_hidden_layers)
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

fn require(dir: &Path, file: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.is_file() { Ok(path) } else { Err(Error::ModelMissing { path }) }
}

impl Embedder {
    /// Load the model from a directory holding `config.json`, `tokenizer.json`
    /// and `model.safetensors` (as installed by `kernelize models install`).
    ///
    /// A missing file is [`Error::ModelMissing`], whose message names the file
    /// and the install script; damaged or foreign files are [`Error::Corrupt`].
    ///
    /// The dense layers run at the precision `$KERNELIZE_EMBED_PRECISION` names
    /// ([`Precision::from_env`]: by default the fastest this CPU has).
    pub fn load(model_dir: &Path) -> Result<Embedder> {
        Self::load_with_precision(model_dir, Precision::from_env()?)
    }

    /// [`load`](Self::load) at a given precision; one this CPU cannot run is
    /// [`Error::InvalidArgument`].
    pub fn load_with_precision(model_dir: &Path, precision: Precision) -> Result<Embedder> {
        if !precision.available() {
            return Err(Error::InvalidArgument(format!(
                "embedding precision {} is not available on this CPU",
                precision.name()
            )));
        }
        let config_path = require(model_dir, "config.json")?;
        let tokenizer_path = require(model_dir, "tokenizer.json")?;
        let weights_path = require(model_dir, "model.safetensors")?;

        let cfg: Config = serde_json::from_slice(&fs_err::read(&config_path)?)
            .map_err(|e| Error::corrupt(&config_path, e.to_string()))?;
        cfg.validate(&config_path)?;

        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::corrupt(&tokenizer_path, e.to_string()))?;
        // tokenizer.json ships with truncation at 128 and fixed padding; the
        // embedder truncates itself (to max_seq_length, like sentence-transformers).
        tokenizer.with_truncation(None).map_err(|e| Error::corrupt(&tokenizer_path, e.to_string()))?;
        tokenizer.with_padding(None);
        let special = |tok: &str| {
            tokenizer.token_to_id(tok).ok_or_else(|| Error::corrupt(&tokenizer_path, format!("no {tok} token")))
        };
        let (cls, sep) = (special("[CLS]")?, special("[SEP]")?);
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > cfg.vocab_size {
            return Err(Error::corrupt(
                &tokenizer_path,
                format!("vocabulary of {vocab} tokens exceeds the model's {}", cfg.vocab_size),
            ));
        }

        let max_tokens = read_max_seq_length(model_dir)?.unwrap_or(DEFAULT_MAX_TOKENS).min(cfg.max_position_embeddings);
        if max_tokens < 3 {
            return Err(Error::corrupt(
                model_dir.join("sentence_bert_config.json"),
                format!("max_seq_length {max_tokens} leaves no room for text"),
            ));
        }

        let bytes = fs_err::read(&weights_path)?;
        let mut model = Model::from_safetensors(cfg, &weights_path, &bytes)?;
        if precision == Precision::Bf16 {
            model.pack_bf16();
        }
        Ok(Embedder { tokenizer, model, max_tokens, cls, sep, precision, scratch: Mutex::new(Vec::new()) })
    }

    /// Where the model is looked for by default: `all-MiniLM-L6-v2` in the models
    /// directory ([`crate::models::models_dir`]: `$KERNELIZE_MODELS_DIR`, else the
    /// per-user `$XDG_DATA_HOME/kernelize/models`), whatever the current directory.
    pub fn default_model_dir() -> PathBuf {
        crate::models::model_dir(MODEL_NAME)
    }

    /// The arithmetic of the dense layers.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Embedding dimension (384).
    pub fn dim(&self) -> usize {
        self.model.cfg.hidden_size
    }

    /// Longest input the model sees, in tokens including `[CLS]` and `[SEP]`
    /// (256); longer texts are truncated, as sentence-transformers does.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Embed texts: one L2-normalised vector of [`dim`](Self::dim) floats per
    /// text, in input order. Any batch size; the batch is split into packs of
    /// similar length internally and spread over the current rayon pool.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts.par_iter().map(|t| self.model_ids(t)).collect::<Result<Vec<_>>>()?;
        Ok(self.embed_ids(&ids))
    }

    /// [`embed`](Self::embed) that stops early once `stop` is set: it is checked before
    /// each text is tokenized and before each pack (at most 2048 tokens) goes through
    /// the model, so a caller that no longer waits for the result (a timed-out request)
    /// stops burning CPU within one pack's time. Returns [`Error::Cancelled`] then.
    pub fn embed_cancellable(&self, texts: &[&str], stop: &AtomicBool) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .par_iter()
            .map(|t| if stop.load(Ordering::Relaxed) { Err(Error::Cancelled) } else { self.model_ids(t) })
            .collect::<Result<Vec<_>>>()?;
        self.embed_ids_until(&ids, stop).ok_or(Error::Cancelled)
    }

    /// Number of tokens of `text` without `[CLS]`/`[SEP]` and without truncation.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode_fast(text, false).map_err(Error::tokenizer)?.len())
    }

    /// Split `text` into chunks of at most `max_tokens` tokens (special tokens
    /// not counted), consecutive chunks sharing about `overlap` tokens.
    ///
    /// Cuts fall between words whenever a word boundary lies inside the
    /// window, so re-tokenizing a chunk gives back its tokens; pass
    /// `max_tokens <= self.max_tokens() - 2` for chunks that embed untruncated.
    /// Empty or whitespace-only text gives no chunks.
    pub fn chunk(&self, text: &str, max_tokens: usize, overlap: usize) -> Result<Vec<Chunk>> {
        if max_tokens == 0 {
            return Err(Error::InvalidArgument("chunk: max_tokens must be > 0".into()));
        }
        if overlap >= max_tokens {
            return Err(Error::InvalidArgument(format!(
                "chunk: overlap ({overlap}) must be smaller than max_tokens ({max_tokens})"
            )));
        }
        let enc = self.tokenizer.encode(text, false).map_err(Error::tokenizer)?;
        let offsets = enc.get_offsets();
        let words = enc.get_word_ids();
        let n = offsets.len();
        // True when token `i` continues the word of token `i - 1`.
        let mid_word = |i: usize| i > 0 && i < n && words[i].is_some() && words[i] == words[i - 1];

        // A word start strictly inside (lo, hi], searching down from hi / up from lo.
        let start_back = |hi: usize, lo: usize| (lo + 1..=hi).rev().find(|&i| !mid_word(i));
        let start_fwd = |lo: usize, hi: usize| (lo..=hi).find(|&i| !mid_word(i));
        // End of the window starting at `s`: the last word boundary within
        // max_tokens that lies past `prev_end`, else the hard limit (mid-word).
        let window_end = |s: usize, prev_end: usize| -> (usize, bool) {
            let hard = (s + max_tokens).min(n);
            if hard == n {
                return (n, true);
            }
            match start_back(hard, s) {
                Some(e) if e > prev_end => (e, true),
                _ => (hard, false),
            }
        };

        let mut chunks = Vec::new();
        let (mut start, mut prev_end) = (0, 0);
        while start < n {
            let (end, _) = window_end(start, prev_end);
            let (from, to) = (offsets[start].0, offsets[end - 1].1);
            let piece = text
                .get(from..to)
                .ok_or_else(|| Error::Tokenizer(format!("offsets {from}..{to} are not character boundaries")))?;
            chunks.push(Chunk { text: piece.to_owned(), start: from, end: to, index: chunks.len() });
            if end == n {
                break;
            }
            // Next start: `overlap` tokens back, moved to a word start; back
            // (more overlap) unless that forces a mid-word end, then forward.
            let base = end.saturating_sub(overlap).max(start + 1);
            let mut next = base;
            if overlap > 0 {
                let candidates = [start_back(base, start), start_fwd(base, end)];
                if let Some(s) = candidates.into_iter().flatten().find(|&s| window_end(s, end).1) {
                    next = s;
                }
            }
            prev_end = end;
            start = next;
        }
        Ok(chunks)
    }

    /// Token ids the model sees for `text`: `[CLS] first max_tokens-2 tokens [SEP]`.
    pub(crate) fn model_ids(&self, text: &str) -> Result<Vec<u32>> {
        let text = cut_long_text(text, self.max_tokens);
        let enc = self.tokenizer.encode_fast(text, false).map_err(Error::tokenizer)?;
        let content = enc.get_ids();
        let keep = content.len().min(self.max_tokens - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.cls);
        ids.extend_from_slice(&content[..keep]);
        ids.push(self.sep);
        let vocab = self.model.cfg.vocab_size;
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Tokenizer(format!("token id {bad} outside the vocabulary")));
        }
        Ok(ids)
    }

    /// Embed pre-tokenized sequences (output of [`Self::model_ids`]).
    pub(crate) fn embed_ids(&self, ids: &[Vec<u32>]) -> Vec<Vec<f32>> {
        self.embed_ids_until(ids, &AtomicBool::new(false)).unwrap_or_default()
    }

    /// [`embed_ids`](Self::embed_ids), or `None` once `stop` is set (checked per pack).
    fn embed_ids_until(&self, ids: &[Vec<u32>], stop: &AtomicBool) -> Option<Vec<Vec<f32>>> {
        let dim = self.dim();
        let n = ids.len();
        if n == 0 {
            return Some(Vec::new());
        }
        let packs = plan_packs(ids, rayon::current_num_threads());
        let run = |pack: &[usize], par: Parallelism| -> Option<Vec<f32>> {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            let lens: Vec<usize> = pack.iter().map(|&i| ids[i].len()).collect();
            let flat: Vec<u32> = pack.iter().flat_map(|&i| ids[i].iter().copied()).collect();
            let mut out = vec![0.0; pack.len() * dim];
            let mut scratch = self.take_scratch();
            self.model.forward(self.precision, &flat, &lens, &mut scratch, par, &mut out);
            self.return_scratch(scratch);
            Some(out)
        };
        // One pack per thread, each on its own thread with a single-threaded
        // GEMM (no synchronisation inside a layer); a lone pack (one short
        // batch, or a single query) lets the GEMM use every thread instead.
        let results: Vec<Vec<f32>> = if packs.len() == 1 {
            let threads = rayon::current_num_threads();
            let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
            vec![run(&packs[0], par)?]
        } else {
            packs.par_iter().map(|p| run(p, Parallelism::None)).collect::<Option<_>>()?
        };
        let mut out = vec![Vec::new(); n];
        for (pack, vectors) in packs.iter().zip(results) {
            for (&i, v) in pack.iter().zip(vectors.chunks_exact(dim)) {
                out[i] = v.to_vec();
            }
        }
        Some(out)
    }

    fn take_scratch(&self) -> Scratch {
        self.scratch.lock().ok().and_then(|mut pool| pool.pop()).unwrap_or_default()
    }

    fn return_scratch(&self, scratch: Scratch) {
        if let Ok(mut pool) = self.scratch.lock() {
            pool.push(scratch);
        }
    }
}

/// Group sequences into packs of similar token count: longest first, at least
/// one pack per thread when there is enough work, each pack at most
/// `PACK_TOKENS` tokens (or one sequence, when that is longer).
fn plan_packs(ids: &[Vec<u32>], threads: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| Reverse(ids[i].len()));
    let total: usize = ids.iter().map(Vec::len).sum();
    let threads = threads.max(1);
    let rounds = total.div_ceil(threads * PACK_TOKENS).max(1);
    let budget = total.div_ceil(threads * rounds).max(1);
    let mut packs = Vec::new();
    let mut current = Vec::new();
    let mut tokens = 0;
    for i in order {
        let len = ids[i].len();
        if !current.is_empty() && tokens + len > budget {
            packs.push(std::mem::take(&mut current));
            tokens = 0;
        }
        current.push(i);
        tokens += len;
    }
    if !current.is_empty() {
        packs.push(current);
    }
    packs
}

/// Cut a very long text at a whitespace after `max_tokens` words that each hold
/// a letter or digit. Every such word yields at least one token and the BERT
/// normalizer and pre-tokenizer act per character and split at whitespace, so
/// the first `max_tokens` tokens of the cut text equal those of the full text.
fn cut_long_text(text: &str, max_tokens: usize) -> &str {
    if text.len() <= LONG_TEXT_BYTES {
        return text;
    }
    let mut words = 0;
    let mut counted = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if words >= max_tokens {
                return &text[..i];
            }
            counted = false;
        } else if !counted && c.is_alphanumeric() {
            counted = true;
            words += 1;
        }
    }
    text
}

fn read_max_seq_length(dir: &Path) -> Result<Option<usize>> {
    #[derive(serde::Deserialize)]
    struct SentenceBertConfig {
        max_seq_length: Option<usize>,
    }
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let cfg: SentenceBertConfig =
        serde_json::from_slice(&fs_err::read(&path)?).map_err(|e| Error::corrupt(&path, e.to_string()))?;
    Ok(cfg.max_seq_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_cover_every_sequence_once() {
        let ids: Vec<Vec<u32>> = (0..100).map(|i| vec![0; 2 + (i * 7) % 50]).collect();
        for threads in [1, 2, 3, 8] {
            let packs = plan_packs(&ids, threads);
            let mut seen: Vec<usize> = packs.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..100).collect::<Vec<_>>());
            assert!(packs.len() >= threads.min(100) || threads > packs.len());
        }
        let long = vec![vec![0; 300], vec![0; 2]];
        let packs = plan_packs(&long, 2);
        assert_eq!(packs.iter().map(Vec::len).sum::<usize>(), 2);
    }

    #[test]
    fn cut_keeps_short_text_and_cuts_at_whitespace() {
        assert_eq!(cut_long_text("short", 4), "short");
        let long = "word ".repeat(10_000);
        let cut = cut_long_text(&long, 256);
        assert_eq!(cut.split_whitespace().count(), 256);
        let no_space = "x".repeat(20_000);
        assert_eq!(cut_long_text(&no_space, 256).len(), 20_000);
        let punct = "!!! ".repeat(10_000);
        assert_eq!(cut_long_text(&punct, 256).len(), punct.len());
    }
}
