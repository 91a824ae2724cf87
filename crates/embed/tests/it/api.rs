//! Public API behaviour: dimensions, empty input, errors.

use std::path::Path;

use kernelize_embed::{Embedder, Error};

use crate::{cosine, embedder};

#[test]
fn dimensions_and_limits() {
    let e = embedder();
    assert_eq!(e.dim(), 384);
    assert_eq!(e.max_tokens(), 256);
}

#[test]
fn empty_batch_gives_no_vectors() {
    assert!(embedder().embed(&[]).expect("embed").is_empty());
}

#[test]
fn similar_texts_are_closer_than_unrelated_ones() {
    let v = embedder()
        .embed(&["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell."])
        .expect("embed");
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
}

#[test]
fn count_tokens_excludes_special_tokens_and_is_not_truncated() {
    let e = embedder();
    assert_eq!(e.count_tokens("").expect("count"), 0);
    assert_eq!(e.count_tokens("hello world").expect("count"), 2);
    assert_eq!(e.count_tokens(&"word ".repeat(1000)).expect("count"), 1000);
}

#[test]
fn many_texts_and_long_texts_do_not_fail() {
    let e = embedder();
    // 2 to 320 words, so the last ones pass the 256-token limit.
    let texts: Vec<String> = (0..40).map(|i| "lorem ipsum ".repeat(1 + 4 * i)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let v = e.embed(&refs).expect("embed");
    assert_eq!(v.len(), 40);
    assert!(v.iter().all(|x| x.len() == 384 && x.iter().all(|f| f.is_finite())));
    // Texts identical up to truncation embed identically.
    assert!(cosine(&v[38], &v[39]) > 0.999_999);
    let huge = "abc ".repeat(2_000_000);
    let capped = e.embed(&[&huge, &"abc ".repeat(300)]).expect("embed huge");
    assert!(cosine(&capped[0], &capped[1]) > 0.999_999);
}

#[test]
fn missing_model_names_the_file_and_the_install_command() {
    let dir = Path::new("/nonexistent/kernelize-models/all-MiniLM-L6-v2");
    let err = Embedder::load(dir).expect_err("must fail");
    assert!(matches!(err, Error::ModelMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("config.json"), "{msg}");
    assert!(msg.contains("kernelize models install"), "{msg}");
}

#[test]
fn corrupt_model_files_are_errors_not_panics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Embedder::default_model_dir();
    for f in ["config.json", "tokenizer.json"] {
        fs_err::copy(src.join(f), tmp.path().join(f)).expect("copy");
    }
    // Truncated safetensors.
    let weights = fs_err::read(src.join("model.safetensors")).expect("read weights");
    fs_err::write(tmp.path().join("model.safetensors"), &weights[..weights.len() / 2]).expect("write");
    let err = Embedder::load(tmp.path()).expect_err("truncated weights");
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"));
    // Garbage.
    fs_err::write(tmp.path().join("model.safetensors"), b"not a model").expect("write");
    assert!(matches!(Embedder::load(tmp.path()), Err(Error::Corrupt { .. })));
    // A config for a different architecture.
    fs_err::write(tmp.path().join("config.json"), br#"{"hidden_size": 7}"#).expect("write");
    assert!(matches!(Embedder::load(tmp.path()), Err(Error::Corrupt { .. })));
}

#[test]
fn embed_cancellable_stops_when_told_and_matches_embed_otherwise() {
    let e = embedder();
    let texts: Vec<String> = (0..40).map(|i| format!("sentence number {i} about cancelling work")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let go = std::sync::atomic::AtomicBool::new(false);
    assert_eq!(e.embed_cancellable(&refs, &go).unwrap(), e.embed(&refs).unwrap());
    let stop = std::sync::atomic::AtomicBool::new(true);
    assert!(matches!(e.embed_cancellable(&refs, &stop), Err(Error::Cancelled)));
}
