//! Token-based chunking with overlap.

use kernelize_embed::Error;

use crate::embedder;

fn check_invariants(text: &str, chunks: &[kernelize_embed::Chunk], max_tokens: usize) {
    let e = embedder();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index, i);
        assert!(c.start < c.end && c.end <= text.len());
        assert_eq!(&text[c.start..c.end], c.text);
        assert!(e.count_tokens(&c.text).expect("count") <= max_tokens, "chunk {i} too long");
        if i > 0 {
            assert!(c.start > chunks[i - 1].start, "no progress at chunk {i}");
            assert!(c.end > chunks[i - 1].end, "chunk {i} ends before its predecessor");
        }
    }
}

#[test]
fn short_text_is_one_chunk() {
    let text = "  A short text.  ";
    let chunks = embedder().chunk(text, 128, 16).expect("chunk");
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].text, "A short text.");
    assert_eq!((chunks[0].start, chunks[0].end), (2, 15));
}

#[test]
fn empty_and_whitespace_give_no_chunks() {
    assert!(embedder().chunk("", 10, 0).expect("chunk").is_empty());
    assert!(embedder().chunk(" \n\t ", 10, 0).expect("chunk").is_empty());
}

#[test]
fn long_text_is_covered_with_overlap() {
    let e = embedder();
    let text: String = (0..400).map(|i| format!("word{i} ")).collect();
    let total = e.count_tokens(&text).expect("count");
    let chunks = e.chunk(&text, 100, 20).expect("chunk");
    check_invariants(&text, &chunks, 100);
    assert_eq!(chunks[0].start, 0);
    assert_eq!(chunks.last().expect("last").end, text.trim_end().len());
    // Consecutive chunks overlap (each starts before the previous ends).
    for w in chunks.windows(2) {
        assert!(w[1].start < w[0].end);
    }
    let covered: usize = chunks.iter().map(|c| e.count_tokens(&c.text).expect("count")).sum();
    assert!(covered >= total && covered <= total + chunks.len() * 25);
}

#[test]
fn without_overlap_chunks_partition_the_tokens() {
    let e = embedder();
    let text = "Der Bär läuft schnell über die Straße. 東京は日本の首都です。 🎉 ".repeat(40);
    let chunks = e.chunk(&text, 50, 0).expect("chunk");
    check_invariants(&text, &chunks, 50);
    let total = e.count_tokens(&text).expect("count");
    let sum: usize = chunks.iter().map(|c| e.count_tokens(&c.text).expect("count")).sum();
    assert_eq!(sum, total);
    for w in chunks.windows(2) {
        assert!(w[1].start >= w[0].end);
    }
}

#[test]
fn cuts_fall_between_words() {
    let e = embedder();
    // Long rare words split into several word pieces each.
    let text = "antidisestablishmentarianism pneumonoultramicroscopic ".repeat(30);
    let chunks = e.chunk(&text, 16, 4).expect("chunk");
    check_invariants(&text, &chunks, 16);
    for c in &chunks {
        assert!(c.text.starts_with("anti") || c.text.starts_with("pneumono"), "{:?}", c.text);
    }
}

#[test]
fn a_word_longer_than_the_window_is_cut_inside() {
    let e = embedder();
    let text = "pneumonoultramicroscopicsilicovolcanoconiosis";
    let n = e.count_tokens(text).expect("count");
    assert!(n > 3);
    let chunks = e.chunk(text, 3, 1).expect("chunk");
    assert!(chunks.len() >= 2);
    for w in chunks.windows(2) {
        assert!(w[1].start > w[0].start);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let e = embedder();
    assert!(matches!(e.chunk("x", 0, 0), Err(Error::InvalidArgument(_))));
    assert!(matches!(e.chunk("x", 10, 10), Err(Error::InvalidArgument(_))));
}
