//! Embeddings equal sentence-transformers' on the checked-in fixture
//! (`tests/fixtures/reference.{json,npy}`, written by `scripts/reference-vectors.py`).

use std::path::PathBuf;

use kernelize_embed::{Embedder, Precision};

use crate::{cosine, embedder, embedder_f32};

/// Minimum cosine similarity to the reference, for every single text, at the
/// default (fastest) precision: issue 3's floor, kept by the bf16 path.
const MIN_COSINE: f64 = 0.999;
/// The same on the f32 path, which reproduces the reference up to float noise.
const MIN_COSINE_F32: f64 = 0.999_999_9;

struct Fixture {
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    dim: usize,
    vectors: Vec<Vec<f32>>,
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Minimal reader of a little-endian float32, C-order, 2-D `.npy` file.
fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = fs_err::read(path).expect("read .npy");
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an .npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("header");
    assert!(header.contains("'descr': '<f4'"), "want <f4: {header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_start = header.find("'shape': (").expect("shape") + "'shape': (".len();
    let shape_end = shape_start + header[shape_start..].find(')').expect("shape end");
    let shape: Vec<usize> = header[shape_start..shape_end]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let data: Vec<f32> =
        bytes[start + header_len..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// The fixture, read once per test binary.
fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(read_fixture)
}

/// Our embeddings of every fixture text, in one `embed` call, computed once.
fn embedded() -> &'static [Vec<f32>] {
    static EMBEDDED: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    EMBEDDED.get_or_init(|| embed_all(embedder()))
}

fn embed_all(e: &Embedder) -> Vec<Vec<f32>> {
    let refs: Vec<&str> = fixture().texts.iter().map(String::as_str).collect();
    e.embed(&refs).expect("embed fixture")
}

fn read_fixture() -> Fixture {
    let dir = fixtures_dir();
    let meta: serde_json::Value = serde_json::from_slice(&fs_err::read(dir.join("reference.json")).expect("read json"))
        .expect("parse reference.json");
    let texts: Vec<String> =
        meta["texts"].as_array().expect("texts").iter().map(|t| t.as_str().expect("text").to_owned()).collect();
    let token_ids: Vec<Vec<u32>> = meta["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .map(|row| {
            row.as_array().expect("row").iter().map(|v| u32::try_from(v.as_u64().expect("id")).expect("u32")).collect()
        })
        .collect();
    let dim = meta["dim"].as_u64().expect("dim") as usize;
    let (shape, data) = read_npy_f32(&dir.join("reference.npy"));
    assert_eq!(shape, vec![texts.len(), dim]);
    let vectors = data.chunks_exact(dim).map(<[f32]>::to_vec).collect();
    Fixture { texts, token_ids, dim, vectors }
}

fn show(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        s.push('…');
    }
    format!("{s:?} ({} bytes)", text.len())
}

#[test]
fn fixture_is_varied_enough() {
    let f = fixture();
    assert!(f.texts.len() >= 300, "{} texts", f.texts.len());
    assert!(f.texts.iter().any(String::is_empty));
    assert!(f.texts.iter().any(|t| !t.is_empty() && t.trim().is_empty()));
    assert!(f.token_ids.iter().filter(|ids| ids.len() == 256).count() >= 10);
    assert!(f.texts.iter().any(|t| t.len() > 16 * 1024));
}

#[test]
fn token_counts_match_reference() {
    let e = embedder();
    let f = fixture();
    assert_eq!(e.max_tokens(), 256);
    let mut mismatches = Vec::new();
    for (text, ids) in f.texts.iter().zip(&f.token_ids) {
        // Reference ids are [CLS] + at most 254 tokens + [SEP].
        let content = e.count_tokens(text).expect("count");
        let want = ids.len() - 2;
        if content.min(e.max_tokens() - 2) != want {
            mismatches.push(format!("{}: {content} tokens, reference {want}", show(text)));
        }
    }
    assert!(mismatches.is_empty(), "token count mismatches:\n{}", mismatches.join("\n"));
}

#[test]
fn embeddings_match_sentence_transformers() {
    check_against_reference(embedder(), embedded(), MIN_COSINE);
}

#[test]
fn f32_path_reproduces_sentence_transformers() {
    let e = embedder_f32();
    assert_eq!(e.precision(), Precision::F32);
    check_against_reference(e, &embed_all(e), MIN_COSINE_F32);
}

fn check_against_reference(e: &Embedder, got: &[Vec<f32>], floor: f64) {
    let f = fixture();
    assert_eq!(e.dim(), f.dim);
    assert_eq!(got.len(), f.texts.len());
    let mut worst = (f64::INFINITY, 0);
    let mut max_abs_diff = 0.0f32;
    let mut failures = Vec::new();
    for (i, (g, want)) in got.iter().zip(&f.vectors).enumerate() {
        assert_eq!(g.len(), f.dim);
        let c = cosine(g, want);
        for (a, b) in g.iter().zip(want) {
            max_abs_diff = max_abs_diff.max((a - b).abs());
        }
        if c < worst.0 {
            worst = (c, i);
        }
        if c.is_nan() || c < floor {
            failures.push(format!("cosine {c:.6} for text {i} {}", show(&f.texts[i])));
        }
        let norm: f64 = g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "text {i} not normalised: {norm}");
    }
    eprintln!(
        "{} path: minimum cosine over {} fixture texts: {:.9} (1 - cos = {:.2e}; text {} {}); \
         largest component difference {max_abs_diff:.2e}",
        e.precision().name(),
        f.texts.len(),
        worst.0,
        1.0 - worst.0,
        worst.1,
        show(&f.texts[worst.1])
    );
    assert!(failures.is_empty(), "below {floor}:\n{}", failures.join("\n"));
}

#[test]
fn batching_does_not_change_results() {
    let e = embedder();
    let f = fixture();
    let refs: Vec<&str> = f.texts.iter().map(String::as_str).collect();
    let all = embedded();
    // One at a time, and in odd-sized batches: same vectors up to float noise.
    for (i, text) in refs.iter().enumerate().step_by(7) {
        let one = e.embed(&[text]).expect("embed one");
        assert!(cosine(&one[0], &all[i]) > 0.999_999, "text {i} differs alone");
    }
    for batch in refs.chunks(13).zip(all.chunks(13)).step_by(3) {
        let got = e.embed(batch.0).expect("embed batch");
        for (g, w) in got.iter().zip(batch.1) {
            assert!(cosine(g, w) > 0.999_999);
        }
    }
}
