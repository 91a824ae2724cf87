//! BM25 keyword search over records' `text`, one immutable [`Bm25Index`] per segment.
//!
//! Scores use corpus-wide statistics ([`Bm25Stats`]) summed over every segment and the
//! memtable, so a document scores the same whichever segment holds it:
//! `score(d, q) = Σ_{t ∈ q} idf(t) · tf / (tf + k1 · (1 − b + b · dl / avgdl))` with
//! `idf(t) = ln(1 + (N − df + 0.5) / (df + 0.5))`, `k1 = 1.2`, `b = 0.75` — Lucene's
//! `BM25Similarity` (which drops the constant `(k1 + 1)` factor) without its lossy length
//! encoding. A query term that appears twice counts twice. A *document* is a node whose
//! text has at least one token; `N` counts documents, `avgdl` is tokens per document.
//! Statistics include records later deleted or overwritten until compaction drops them,
//! as in Lucene.
//!
//! Tokens ([`tokenize`]): split on every character that is not alphanumeric (Unicode),
//! lowercased, stemmed with the Snowball English stemmer, cut to at most
//! [`MAX_TOKEN_BYTES`] bytes at a character boundary. Scripts written without spaces
//! (Chinese, Japanese) become one token per run of letters.
//!
//! # Byte layout of a serialized [`Bm25Index`]
//! All integers little-endian; the caller frames the bytes and adds the checksum.
//! ```text
//! u32  version                      = 1
//! u32  n                            node count; every node below is < n
//! u64  total_tokens                 = Σ doc_len = Σ tf over all postings
//! n × u32 doc_len                   tokens in node's text; 0 = not a document
//! u32  term_count
//! term_count × term, in strictly increasing byte order:
//!   u32  len (>= 1), then len bytes of UTF-8
//!   u32  posting_count              >= 1
//!   posting_count × u32 node        strictly increasing, doc_len[node] >= 1
//!   posting_count × u32 tf          1 <= tf <= doc_len[node]
//! ```
//! Nothing follows the last term.

use std::collections::{HashMap, HashSet};

use rust_stemmers::{Algorithm, Stemmer};

use crate::bitset::Bitset;
use crate::bytes::{Corrupt, Reader};

/// BM25 term-frequency saturation.
pub const K1: f64 = 1.2;
/// BM25 length normalization.
pub const B: f64 = 0.75;
/// The longest token, in bytes; longer ones are cut.
pub const MAX_TOKEN_BYTES: usize = 64;

const FORMAT_VERSION: u32 = 1;

/// Why serialized BM25 bytes could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Bm25Error {
    /// The bytes are malformed.
    #[error("bm25 index: {message} at byte {offset}")]
    Corrupt {
        /// Byte offset of the problem in the buffer given to [`Bm25Index::from_bytes`].
        offset: usize,
        /// What is wrong there.
        message: String,
    },
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TOKEN_BYTES {
        let mut end = MAX_TOKEN_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Splits text into index terms (see the module doc). Use it for documents and queries alike.
pub fn tokenize(text: &str) -> Vec<String> {
    let stemmer = Stemmer::create(Algorithm::English);
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            // Cut before stemming too, so a huge "word" costs nothing.
            let lower = cut(w.to_lowercase());
            cut(stemmer.stem(&lower).into_owned())
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// `idf · tf / (tf + k1 · (1 − b + b · dl / avgdl))`: one term's share of a score. Search
/// and [`score_doc`] both go through here, in query-term order, so they agree exactly.
fn term_score(idf: f64, tf: u32, doc_len: u64, avg_doc_len: f64) -> f64 {
    let tf = f64::from(tf);
    idf * tf / (tf + K1 * (1.0 - B + B * doc_len as f64 / avg_doc_len))
}

/// Corpus-wide statistics for one query: documents, tokens, and the document frequency of
/// (at least) the query's terms, summed over segments and memtable documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bm25Stats {
    /// Documents (nodes with at least one token).
    pub docs: u64,
    /// Tokens over all documents.
    pub tokens: u64,
    /// Documents containing each term.
    pub df: HashMap<String, u64>,
}

fn distinct(terms: &[String]) -> impl Iterator<Item = &String> {
    let mut seen = HashSet::new();
    terms.iter().filter(move |t| seen.insert(t.as_str()))
}

impl Bm25Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a segment's documents, tokens, and document frequencies of `terms`.
    pub fn add_index(&mut self, index: &Bm25Index, terms: &[String]) {
        self.docs += index.doc_count();
        self.tokens += index.total_tokens();
        for t in distinct(terms) {
            *self.df.entry(t.clone()).or_default() += index.doc_freq(t);
        }
    }

    /// Adds one document's tokens, counting every distinct token in `df` (for statistics a
    /// memtable keeps up to date as documents arrive). A document without tokens is not one.
    pub fn add_doc(&mut self, tokens: &[String]) {
        if tokens.is_empty() {
            return;
        }
        self.docs += 1;
        self.tokens += tokens.len() as u64;
        for t in distinct(tokens) {
            *self.df.entry(t.clone()).or_default() += 1;
        }
    }

    /// Adds one document's tokens, counting only `terms` in `df` (cheaper at query time).
    pub fn add_doc_for_terms(&mut self, tokens: &[String], terms: &[String]) {
        if tokens.is_empty() {
            return;
        }
        self.docs += 1;
        self.tokens += tokens.len() as u64;
        for t in distinct(terms) {
            let n = u64::from(tokens.contains(t));
            *self.df.entry(t.clone()).or_default() += n;
        }
    }

    /// Adds another set of statistics (e.g. a memtable's).
    pub fn merge(&mut self, other: &Bm25Stats) {
        self.docs += other.docs;
        self.tokens += other.tokens;
        for (t, n) in &other.df {
            *self.df.entry(t.clone()).or_default() += n;
        }
    }

    /// `ln(1 + (N − df + 0.5) / (df + 0.5))`; always positive.
    pub fn idf(&self, term: &str) -> f64 {
        let n = self.docs as f64;
        let df = self.df.get(term).copied().unwrap_or(0).min(self.docs) as f64;
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// Average tokens per document (0 when there are none).
    pub fn avg_doc_len(&self) -> f64 {
        if self.docs == 0 { 0.0 } else { self.tokens as f64 / self.docs as f64 }
    }
}

/// Scores one document given as its tokens (a memtable record's `tokenize(text)`) exactly
/// as [`Bm25Index::search`] scores an indexed one; 0 when no query term occurs in it.
pub fn score_doc(doc_tokens: &[String], terms: &[String], stats: &Bm25Stats) -> f32 {
    let avg = stats.avg_doc_len();
    if stats.docs == 0 || doc_tokens.is_empty() {
        return 0.0;
    }
    let mut score = 0.0;
    for term in terms {
        let tf = doc_tokens.iter().filter(|t| *t == term).count();
        if tf > 0 {
            let tf = u32::try_from(tf).unwrap_or(u32::MAX);
            score += term_score(stats.idf(term), tf, doc_tokens.len() as u64, avg);
        }
    }
    score as f32
}

/// An immutable inverted index over one segment's texts: a sorted term dictionary, per
/// term the (node, term frequency) postings in node order, and per node its length.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bm25Index {
    doc_lens: Vec<u32>,
    doc_count: u64,
    total_tokens: u64,
    /// Term `i` is `terms[term_ends[i-1]..term_ends[i]]`.
    terms: String,
    term_ends: Vec<usize>,
    /// Term `i`'s postings are `post_nodes/post_tfs[post_ends[i-1]..post_ends[i]]`.
    post_ends: Vec<usize>,
    post_nodes: Vec<u32>,
    post_tfs: Vec<u32>,
}

fn span(ends: &[usize], i: usize) -> std::ops::Range<usize> {
    (if i == 0 { 0 } else { ends[i - 1] })..ends[i]
}

impl Bm25Index {
    /// Indexes the texts of nodes `0..n`; nodes not listed have no text. A node listed
    /// twice counts as one document with both texts.
    ///
    /// # Panics
    /// If a node is `>= n`.
    pub fn build<'a>(n: u32, docs: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        let mut doc_lens = vec![0u32; n as usize];
        let mut postings: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
        let mut tf: HashMap<String, u32> = HashMap::new();
        for (node, text) in docs {
            assert!(node < n, "bm25 index: node {node} out of range 0..{n}");
            let tokens = tokenize(text);
            let len = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
            doc_lens[node as usize] = doc_lens[node as usize].saturating_add(len);
            for t in tokens {
                *tf.entry(t).or_default() += 1;
            }
            for (t, count) in tf.drain() {
                postings.entry(t).or_default().push((node, count));
            }
        }
        let mut terms: Vec<(String, Vec<(u32, u32)>)> = postings.into_iter().collect();
        terms.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut index = Bm25Index {
            doc_count: doc_lens.iter().filter(|&&l| l > 0).count() as u64,
            total_tokens: doc_lens.iter().map(|&l| u64::from(l)).sum(),
            doc_lens,
            ..Bm25Index::default()
        };
        for (term, mut list) in terms {
            list.sort_unstable_by_key(|p| p.0);
            index.terms.push_str(&term);
            index.term_ends.push(index.terms.len());
            for (node, count) in list {
                if index.post_nodes.len() > index.post_ends.last().copied().unwrap_or(0)
                    && index.post_nodes.last() == Some(&node)
                    && let Some(last) = index.post_tfs.last_mut()
                {
                    *last = last.saturating_add(count);
                } else {
                    index.post_nodes.push(node);
                    index.post_tfs.push(count);
                }
            }
            index.post_ends.push(index.post_nodes.len());
        }
        index
    }

    /// The number of nodes (`n`).
    pub fn len(&self) -> u32 {
        self.doc_lens.len() as u32
    }

    /// Whether the index covers no nodes.
    pub fn is_empty(&self) -> bool {
        self.doc_lens.is_empty()
    }

    /// Documents: nodes whose text has at least one token.
    pub fn doc_count(&self) -> u64 {
        self.doc_count
    }

    /// Tokens over all documents.
    pub fn total_tokens(&self) -> u64 {
        self.total_tokens
    }

    /// Tokens in a node's text (0 for none or an unknown node).
    pub fn doc_len(&self, node: u32) -> u32 {
        self.doc_lens.get(node as usize).copied().unwrap_or(0)
    }

    /// Distinct terms.
    pub fn term_count(&self) -> usize {
        self.term_ends.len()
    }

    /// Documents containing `term` (a token from [`tokenize`]).
    pub fn doc_freq(&self, term: &str) -> u64 {
        self.find(term).map_or(0, |i| span(&self.post_ends, i).len() as u64)
    }

    /// Approximate heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.doc_lens.len() * 4
            + self.terms.len()
            + (self.term_ends.len() + self.post_ends.len()) * size_of::<usize>()
            + (self.post_nodes.len() + self.post_tfs.len()) * 4
    }

    fn term(&self, i: usize) -> &str {
        &self.terms[span(&self.term_ends, i)]
    }

    fn find(&self, term: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.term_count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.term(mid).cmp(term) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The `k` best-scoring nodes for the query `terms` (tokens from [`tokenize`]), best
    /// first, ties by ascending node; only nodes in `allow` (all when `None`) and only
    /// nodes containing some query term. `stats` must cover this index (see
    /// [`Bm25Stats::add_index`]).
    pub fn search(&self, terms: &[String], stats: &Bm25Stats, k: usize, allow: Option<&Bitset>) -> Vec<(u32, f32)> {
        if k == 0 || stats.docs == 0 {
            return Vec::new();
        }
        let avg = stats.avg_doc_len();
        let mut acc = vec![0f64; self.doc_lens.len()];
        let mut seen = Bitset::new(self.doc_lens.len());
        let mut touched = Vec::new();
        for term in terms {
            let Some(i) = self.find(term) else { continue };
            let idf = stats.idf(term);
            let range = span(&self.post_ends, i);
            for (&node, &tf) in self.post_nodes[range.clone()].iter().zip(&self.post_tfs[range]) {
                if allow.is_some_and(|a| !a.get(node)) {
                    continue;
                }
                if !seen.get(node) {
                    seen.set(node);
                    touched.push(node);
                }
                acc[node as usize] += term_score(idf, tf, u64::from(self.doc_lens[node as usize]), avg);
            }
        }
        let mut hits: Vec<(u32, f32)> = touched.into_iter().map(|node| (node, acc[node as usize] as f32)).collect();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if hits.len() > k {
            hits.select_nth_unstable_by(k - 1, order);
            hits.truncate(k);
        }
        hits.sort_unstable_by(order);
        hits
    }

    /// The serialized form (layout in the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.memory_bytes());
        let put_u32 = |out: &mut Vec<u8>, x: usize| {
            let x = u32::try_from(x).expect("bm25 index: a count exceeds u32");
            out.extend_from_slice(&x.to_le_bytes());
        };
        put_u32(&mut out, FORMAT_VERSION as usize);
        put_u32(&mut out, self.doc_lens.len());
        out.extend_from_slice(&self.total_tokens.to_le_bytes());
        self.doc_lens.iter().for_each(|l| out.extend_from_slice(&l.to_le_bytes()));
        put_u32(&mut out, self.term_count());
        for i in 0..self.term_count() {
            let term = self.term(i);
            put_u32(&mut out, term.len());
            out.extend_from_slice(term.as_bytes());
            let range = span(&self.post_ends, i);
            put_u32(&mut out, range.len());
            self.post_nodes[range.clone()].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            self.post_tfs[range].iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        out
    }

    /// Reads [`Bm25Index::to_bytes`] output, checking every invariant. Never panics; errors
    /// name the byte offset.
    pub fn from_bytes(bytes: &[u8]) -> Result<Bm25Index, Bm25Error> {
        let mut r = Reader::new(bytes);
        let version = r.u32("version")?;
        if version != FORMAT_VERSION {
            return Err(corrupt(0, format!("unsupported version {version}")));
        }
        let n = r.count("node count", 4)?;
        let total_at = r.pos;
        let total_tokens = r.u64("total tokens")?;
        let mut doc_lens = Vec::with_capacity(n);
        for _ in 0..n {
            doc_lens.push(r.u32("document length")?);
        }
        let sum: u64 = doc_lens.iter().map(|&l| u64::from(l)).sum();
        if sum != total_tokens {
            return Err(corrupt(total_at, format!("total tokens {total_tokens} but documents hold {sum}")));
        }
        let mut index = Bm25Index {
            doc_count: doc_lens.iter().filter(|&&l| l > 0).count() as u64,
            total_tokens,
            doc_lens,
            ..Bm25Index::default()
        };
        let term_count = r.count("term count", 17)?;
        let mut tf_sum = 0u64;
        for i in 0..term_count {
            let at = r.pos;
            let len = r.count("term length", 1)?;
            if len == 0 {
                return Err(corrupt(at, "empty term"));
            }
            let text_at = r.pos;
            let term = std::str::from_utf8(r.bytes(len, "term")?).map_err(|_| corrupt(text_at, "term is not UTF-8"))?;
            if i > 0 && index.term(i - 1) >= term {
                return Err(corrupt(at, format!("term {term:?} out of order")));
            }
            index.terms.push_str(term);
            index.term_ends.push(index.terms.len());
            let count_at = r.pos;
            let count = r.count("posting count", 8)?;
            if count == 0 {
                return Err(corrupt(count_at, "empty posting list"));
            }
            let start = index.post_nodes.len();
            for j in 0..count {
                let at = r.pos;
                let node = r.u32("posting")?;
                let in_order = j == 0 || index.post_nodes[start + j - 1] < node;
                if !in_order || index.doc_len(node) == 0 {
                    return Err(corrupt(at, format!("posting {node} out of order or not a document")));
                }
                index.post_nodes.push(node);
            }
            for j in 0..count {
                let at = r.pos;
                let tf = r.u32("term frequency")?;
                let node = index.post_nodes[start + j];
                if tf == 0 || tf > index.doc_len(node) {
                    return Err(corrupt(at, format!("term frequency {tf} out of range for node {node}")));
                }
                tf_sum += u64::from(tf);
                index.post_tfs.push(tf);
            }
            index.post_ends.push(index.post_nodes.len());
        }
        if r.pos != bytes.len() {
            return Err(corrupt(r.pos, format!("{} trailing bytes", bytes.len() - r.pos)));
        }
        if tf_sum != total_tokens {
            return Err(corrupt(total_at, format!("total tokens {total_tokens} but postings hold {tf_sum}")));
        }
        Ok(index)
    }
}

fn corrupt(offset: usize, message: impl Into<String>) -> Bm25Error {
    Bm25Error::Corrupt { offset, message: message.into() }
}

impl From<Corrupt> for Bm25Error {
    fn from(c: Corrupt) -> Bm25Error {
        Bm25Error::Corrupt { offset: c.offset, message: c.message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(s: &str) -> Vec<String> {
        tokenize(s)
    }

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-5
    }

    #[test]
    fn tokenize_lowercases_splits_and_stems() {
        assert_eq!(
            toks("Hello, WORLD! Running runners ran... cats' x-ray e-mail 1990s"),
            ["hello", "world", "run", "runner", "ran", "cat", "x", "ray", "e", "mail", "1990s"]
        );
        assert_eq!(toks("  \t--  "), Vec::<String>::new());
        assert_eq!(toks("Straße ÉCOLE 東京タワー naïve"), ["straße", "école", "東京タワー", "naïv"]);
        let long = toks(&"é".repeat(100));
        assert_eq!(long, ["é".repeat(32)]);
        let long = toks(&format!("{}x", "a".repeat(200)));
        assert_eq!(long[0].len(), MAX_TOKEN_BYTES);
    }

    /// Three documents; `apple` → `appl`, `cherry` → `cherri` after stemming.
    fn corpus() -> Vec<&'static str> {
        vec!["apple banana apple", "banana cherry", "cherry date fig grape"]
    }

    fn stats_for(indexes: &[&Bm25Index], terms: &[String]) -> Bm25Stats {
        let mut s = Bm25Stats::new();
        indexes.iter().for_each(|i| s.add_index(i, terms));
        s
    }

    #[test]
    fn hand_computed_scores() {
        let docs = corpus();
        let index = Bm25Index::build(3, docs.iter().enumerate().map(|(i, d)| (i as u32, *d)));
        assert_eq!((index.doc_count(), index.total_tokens(), index.term_count()), (3, 9, 6));
        assert_eq!((index.doc_freq("appl"), index.doc_freq("banana"), index.doc_freq("apple")), (1, 2, 0));

        // N = 3, avgdl = 9 / 3 = 3. "apple": df 1, idf = ln(1 + 2.5 / 1.5) = 0.980829;
        // doc 0: tf 2, dl 3, norm 1 → 0.980829 · 2 / (2 + 1.2) = 0.613018.
        let q = toks("apple");
        let hits = index.search(&q, &stats_for(&[&index], &q), 10, None);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0, 0);
        assert!(close(hits[0].1, 0.613018), "{hits:?}");

        // "banana cherry": both df 2, idf = ln(1 + 1.5 / 2.5) = ln 1.6 = 0.470004.
        // doc 1 (dl 2, norm 0.25 + 0.75·2/3 = 0.75): 2 · 0.470004 / (1 + 0.9) = 0.494741
        // doc 0 (dl 3, norm 1): 0.470004 / 2.2 = 0.213638
        // doc 2 (dl 4, norm 1.25): 0.470004 / 2.5 = 0.188001
        let q = toks("banana cherry");
        let stats = stats_for(&[&index], &q);
        assert!((stats.idf("banana") - 1.6f64.ln()).abs() < 1e-12);
        let hits = index.search(&q, &stats, 10, None);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 0, 2]);
        for (hit, want) in hits.iter().zip([0.494741, 0.213638, 0.188001]) {
            assert!(close(hit.1, want), "{hits:?}");
        }
        // k and the allow-list.
        assert_eq!(index.search(&q, &stats, 1, None), hits[..1]);
        assert_eq!(index.search(&q, &stats, 0, None), []);
        let allow = Bitset::from_sorted(3, [0, 2]);
        assert_eq!(index.search(&q, &stats, 10, Some(&allow)), [hits[1], hits[2]]);
        assert_eq!(index.search(&toks("zebra"), &stats, 10, None), []);
    }

    #[test]
    fn segments_and_memtable_score_like_one_index() {
        let docs = corpus();
        let whole = Bm25Index::build(3, docs.iter().enumerate().map(|(i, d)| (i as u32, *d)));
        // Segment A holds docs 0 and 1; doc 2 sits in the memtable.
        let seg = Bm25Index::build(2, [(0, docs[0]), (1, docs[1])]);
        let mem = toks(docs[2]);
        let q = toks("banana cherry fig");
        let mut stats = stats_for(&[&seg], &q);
        stats.add_doc_for_terms(&mem, &q);
        let mut stats_all = stats_for(&[&seg], &q);
        stats_all.add_doc(&mem);
        assert_eq!(stats.docs, stats_all.docs);
        assert_eq!(stats.tokens, stats_all.tokens);
        for t in &q {
            assert_eq!(stats.df[t], stats_all.df[t]);
        }
        let want = whole.search(&q, &stats_for(&[&whole], &q), 10, None);
        let mut got = seg.search(&q, &stats, 10, None);
        got.push((2, score_doc(&mem, &q, &stats)));
        got.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(got, want);
    }

    #[test]
    fn ranking_sanity() {
        let long = format!("{}and a long tail of other words to pad it", "fox ".repeat(20));
        let docs = [
            "the quick brown fox jumps over the lazy dog",
            "a fox is a small omnivorous mammal; foxes hunt at night",
            "the dog sleeps",
            "quantum chromodynamics",
            &long,
        ];
        let index = Bm25Index::build(6, docs.iter().enumerate().map(|(i, d)| (i as u32, *d)));
        let q = toks("foxes");
        let stats = stats_for(&[&index], &q);
        let hits = index.search(&q, &stats, 10, None);
        let nodes: Vec<u32> = hits.iter().map(|h| h.0).collect();
        // Saturation: doc 4 repeats "fox" 20 times yet is not 20× doc 1's score.
        assert_eq!(nodes, [4, 1, 0]);
        assert!(hits[0].1 < 2.0 * hits[1].1, "{hits:?}");
        // A rare term outweighs a common one.
        let q = toks("dog quantum");
        let hits = index.search(&q, &stats_for(&[&index], &q), 10, None);
        assert_eq!(hits[0].0, 3);
        // Repeated query terms count twice.
        let once = index.search(&toks("dog"), &stats_for(&[&index], &toks("dog")), 1, None);
        let twice = index.search(&toks("dog dog"), &stats_for(&[&index], &toks("dog dog")), 1, None);
        assert!(close(twice[0].1, 2.0 * f64::from(once[0].1)));
        assert_eq!(index.doc_len(5), 0);
        assert_eq!(index.doc_count(), 5);
    }

    #[test]
    fn duplicate_nodes_and_empty_texts() {
        let index = Bm25Index::build(3, [(1, "red apple"), (1, "red"), (2, "!!!")]);
        assert_eq!((index.doc_count(), index.total_tokens(), index.doc_len(1), index.doc_len(2)), (1, 3, 3, 0));
        assert_eq!(index.doc_freq("red"), 1);
        let q = toks("red");
        let stats = stats_for(&[&index], &q);
        let hits = index.search(&q, &stats, 5, None);
        assert!(close(hits[0].1, f64::from(score_doc(&toks("red apple red"), &q, &stats))));
        assert_eq!(Bm25Index::from_bytes(&index.to_bytes()), Ok(index));
        let mut s = Bm25Stats::new();
        s.add_doc(&[]);
        assert_eq!(s, Bm25Stats::new());
        assert_eq!(score_doc(&q, &q, &s), 0.0);
    }

    #[test]
    fn from_bytes_errors_name_the_offset() {
        let index = Bm25Index::build(2, [(0, "a b"), (1, "b")]);
        let bytes = index.to_bytes();
        for cut in 0..bytes.len() {
            let e = Bm25Index::from_bytes(&bytes[..cut]).expect_err("truncated").to_string();
            assert!(e.starts_with("bm25 index: "), "{e}");
        }
        let mut trailing = bytes.clone();
        trailing.push(7);
        assert_eq!(
            Bm25Index::from_bytes(&trailing).expect_err("trailing").to_string(),
            format!("bm25 index: 1 trailing bytes at byte {}", bytes.len())
        );
        let mut total = bytes.clone();
        total[8] = 9;
        assert_eq!(
            Bm25Index::from_bytes(&total).expect_err("total").to_string(),
            "bm25 index: total tokens 9 but documents hold 3 at byte 8"
        );
        let mut version = bytes;
        version[0] = 2;
        assert_eq!(
            Bm25Index::from_bytes(&version).expect_err("v").to_string(),
            "bm25 index: unsupported version 2 at byte 0"
        );
    }

    fn corpus_strategy() -> impl Strategy<Value = Vec<Option<String>>> {
        let word = prop::sample::select(vec!["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]);
        let doc = prop::collection::vec(word, 0..8).prop_map(|w| w.join(" "));
        prop::collection::vec(prop::option::weighted(0.8, doc), 0..25)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn search_agrees_with_score_doc(
            docs in corpus_strategy(),
            query in prop::collection::vec(prop::sample::select(vec!["alpha", "beta", "gamma", "omega"]), 1..4),
            k in 1usize..30,
            split in any::<prop::sample::Index>(),
            allow_bits in prop::collection::vec(any::<bool>(), 25),
        ) {
            let n = docs.len() as u32;
            let q: Vec<String> = query.iter().map(|w| w.to_string()).collect();
            // Two segments: nodes below `cut` in one, the rest in the other (renumbered).
            let cut = if docs.is_empty() { 0 } else { split.index(docs.len() + 1) };
            let texts = |range: std::ops::Range<usize>| -> Vec<(u32, String)> {
                range.clone().filter_map(|i| docs[i].clone().map(|d| ((i - range.start) as u32, d))).collect()
            };
            let (a, b) = (texts(0..cut), texts(cut..docs.len()));
            let seg_a = Bm25Index::build(cut as u32, a.iter().map(|(i, d)| (*i, d.as_str())));
            let seg_b = Bm25Index::build(n - cut as u32, b.iter().map(|(i, d)| (*i, d.as_str())));
            let stats = stats_for(&[&seg_a, &seg_b], &q);
            let mut by_doc = Bm25Stats::new();
            docs.iter().flatten().for_each(|d| by_doc.add_doc(&tokenize(d)));
            prop_assert_eq!(stats.docs, by_doc.docs);
            prop_assert_eq!(stats.tokens, by_doc.tokens);
            for t in &q {
                prop_assert_eq!(stats.idf(t), by_doc.idf(t));
            }
            let allow = Bitset::from_sorted(seg_a.len() as usize, (0..cut as u32).filter(|&i| allow_bits[i as usize]));
            let hits = seg_a.search(&q, &stats, k, Some(&allow));
            let mut want: Vec<(u32, f32)> = (0..cut)
                .filter(|&i| allow_bits[i])
                .filter_map(|i| docs[i].as_ref().map(|d| (i as u32, score_doc(&tokenize(d), &q, &stats))))
                .filter(|h| h.1 > 0.0)
                .collect();
            want.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            want.truncate(k);
            prop_assert_eq!(&hits, &want);
            prop_assert_eq!(Bm25Index::from_bytes(&seg_b.to_bytes()), Ok(seg_b.clone()));
        }

        #[test]
        fn tokenize_never_panics_and_bounds_tokens(s in "\\PC{0,200}") {
            for t in tokenize(&s) {
                prop_assert!(!t.is_empty() && t.len() <= MAX_TOKEN_BYTES);
            }
        }

        #[test]
        fn from_bytes_never_panics(
            docs in corpus_strategy(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            noise in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let index = Bm25Index::build(
                docs.len() as u32,
                docs.iter().enumerate().filter_map(|(i, d)| d.as_deref().map(|d| (i as u32, d))),
            );
            let bytes = index.to_bytes();
            prop_assert_eq!(Bm25Index::from_bytes(&bytes), Ok(index.clone()));
            let cut = cut.index(bytes.len());
            prop_assert!(Bm25Index::from_bytes(&bytes[..cut]).is_err());
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            if let Ok(loaded) = Bm25Index::from_bytes(&flipped) {
                let q = toks("alpha beta");
                let _ = loaded.search(&q, &stats_for(&[&loaded], &q), 5, None);
            }
            let _ = Bm25Index::from_bytes(&noise);
            let mut with_header = vec![1, 0, 0, 0, 2, 0, 0, 0];
            with_header.extend_from_slice(&noise);
            let _ = Bm25Index::from_bytes(&with_header);
        }
    }
}
