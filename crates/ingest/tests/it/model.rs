//! Embedding and chunking with the real all-MiniLM-L6-v2 (fails, never skips, when
//! the model is not installed).

use crate::{Env, embedder, ids, run};
use kernelize_ingest::{Error, IngestOptions};
use serde_json::json;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A text of a few hundred tokens with varied words (so chunk cuts fall between words).
fn long_text() -> String {
    let words =
        ["kernel", "vector", "durable", "segment", "compaction", "embedding", "quantization", "ré-sumé", "naïve"];
    (0..240).map(|i| format!("{}{}", words[i % words.len()], i % 7)).collect::<Vec<_>>().join(" ") + ". The end."
}

#[test]
fn texts_without_vectors_are_embedded() {
    let e = embedder();
    let env = Env::new();
    let c = env.collection("c", e.dim());
    let p = env.write(
        "docs.jsonl",
        "{\"id\":\"cat\",\"text\":\"a cat sat on the mat\"}\n\
         {\"id\":\"car\",\"text\":\"the car needs new tyres\",\"kind\":\"auto\"}\n",
    );
    let mut o = IngestOptions::default();
    o.batch_size = 1;
    let s = run(&c, &p, &o, Some(e)).unwrap();
    assert_eq!((s.rows_read, s.records_written, s.texts_embedded, s.batches, s.chunks_created), (2, 2, 2, 2, 0));
    let want = e.embed(&["a cat sat on the mat"]).unwrap();
    let got = c.get("cat").unwrap().unwrap();
    assert!(cosine(&got.vector, &want[0]) > 0.9999, "stored vector is the text's embedding");
    assert_eq!(got.text.as_deref(), Some("a cat sat on the mat"));
    assert_eq!(c.get("car").unwrap().unwrap().metadata.as_ref().unwrap()["kind"], json!("auto"));
}

#[test]
fn long_texts_are_chunked_with_ids_offsets_and_parent_metadata() {
    let e = embedder();
    let env = Env::new();
    let c = env.collection("c", e.dim());
    let text = long_text();
    let tokens = e.count_tokens(&text).unwrap();
    assert!(tokens > 200, "the test text must be long ({tokens} tokens)");
    let lines = [
        json!({"id": "long", "text": text, "metadata": {"source": "manual"}, "lang": "en"}),
        json!({"id": "short", "text": "a short note", "lang": "en"}),
        json!({"id": "vec", "vector": vec![0.5f32; e.dim()], "text": text}),
    ];
    let p = env.write("docs.jsonl", lines.iter().map(|l| format!("{l}\n")).collect::<String>());
    let mut o = IngestOptions::default();
    o.chunk_tokens = Some(64);
    o.batch_size = 3; // chunks of one row span several batches
    let s = run(&c, &p, &o, Some(e)).unwrap();

    let expected = e.chunk(&text, 64, 8).unwrap();
    assert!(expected.len() >= 4, "{} chunks", expected.len());
    assert_eq!(s.chunks_created, expected.len() as u64);
    assert_eq!(s.records_written, expected.len() as u64 + 2);
    assert_eq!(s.texts_embedded, expected.len() as u64 + 1);
    assert_eq!(s.rows_read, 3);

    let all = ids(&c);
    assert!(!all.contains(&"long".to_owned()), "a chunked parent has no record of its own");
    assert!(all.contains(&"short".to_owned()) && all.contains(&"vec".to_owned()));
    let (mut prev_start, mut last_end) = (0, 0);
    for (i, chunk) in expected.iter().enumerate() {
        let r = c.get(&format!("long#{i}")).unwrap().unwrap_or_else(|| panic!("chunk {i} missing"));
        let m = r.metadata.as_ref().unwrap();
        let (start, end) = (m["chunk_start"].as_u64().unwrap() as usize, m["chunk_end"].as_u64().unwrap() as usize);
        assert_eq!((start, end), (chunk.start, chunk.end));
        assert_eq!(r.text.as_deref(), Some(&text[start..end]), "offsets slice the original text");
        assert_eq!(m["parent_id"], json!("long"));
        assert_eq!(m["chunk_index"], json!(i));
        assert_eq!((m["source"].clone(), m["lang"].clone()), (json!("manual"), json!("en")));
        assert!(e.count_tokens(r.text.as_deref().unwrap()).unwrap() <= 64);
        assert!(end > start && (i == 0 || start > prev_start), "chunks advance");
        prev_start = start;
        last_end = end;
        let want = e.embed(&[&text[start..end]]).unwrap();
        assert!(cosine(&r.vector, &want[0]) > 0.9999, "chunk {i} carries its own embedding");
    }
    assert_eq!(last_end, text.len(), "the chunks reach the end of the text");

    let short = c.get("short").unwrap().unwrap();
    assert_eq!(short.text.as_deref(), Some("a short note"));
    assert!(!short.metadata.as_ref().unwrap().contains_key("parent_id"));
    let v = c.get("vec").unwrap().unwrap();
    assert_eq!(v.vector, vec![0.5f32; e.dim()], "a row's own vector is kept, its text not chunked");
    assert_eq!(v.text.as_deref(), Some(text.as_str()));
}

#[test]
fn embedder_and_collection_must_agree() {
    let e = embedder();
    let env = Env::new();
    let c = env.collection("small", 3);
    let p = env.write("t.jsonl", "{\"id\":\"a\",\"text\":\"hello\"}\n");
    let err = run(&c, &p, &IngestOptions::default(), Some(e)).unwrap_err();
    assert!(matches!(err.root(), Error::Options(_)), "{err:?}");
    assert!(err.to_string().contains("384-dimensional vectors and the collection has dimension 3"), "{err}");

    let c = env.collection("full", e.dim());
    let mut o = IngestOptions::default();
    o.chunk_tokens = Some(e.max_tokens());
    let err = run(&c, &p, &o, Some(e)).unwrap_err();
    assert!(err.to_string().contains("exceed what the model embeds untruncated (254 tokens)"), "{err}");
}
