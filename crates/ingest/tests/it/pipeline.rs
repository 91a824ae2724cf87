//! The pipeline against a real `Database`: the all-or-nothing batch rule, progress,
//! round trips and the limits shared with the store.

use crate::{Env, batch_opts, f32_bytes, ids, npy_bytes, run};
use kernelize_ingest::{
    Error, ErrorClass, Format, IngestOptions, MAX_METADATA_BYTES, MAX_TEXT_BYTES, Position, Progress, ingest,
};
use kernelize_store::{Metadata, Record, export_parquet};
use serde_json::{Value, json};

/// 30 rows, vectors of dimension 2; row `bad` (0-based, on line `bad + 1`) has 3.
fn jsonl_with_bad_row(bad: Option<usize>) -> String {
    (0..30)
        .map(|i| {
            let v = if Some(i) == bad { json!([1, 2, 3]) } else { json!([i, 1]) };
            format!("{}\n", json!({"id": format!("r{i:02}"), "vector": v, "n": i}))
        })
        .collect()
}

#[test]
fn bad_row_in_batch_three_leaves_batches_one_and_two_written_and_nothing_of_three() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("data.jsonl", jsonl_with_bad_row(Some(25)));
    let mut seen = Vec::new();
    let err = ingest(&c, &p, &batch_opts(10), None, &mut |p: &Progress| seen.push(p.clone())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("data.jsonl:26 (field \"vector\"): vector has 3 dimensions, the collection has 2"), "{msg}");
    assert!(msg.contains("20 records in 2 batches before it were written and acknowledged"), "{msg}");
    match &err {
        Error::Stopped { records_written, batches_written, error } => {
            assert_eq!((*records_written, *batches_written), (20, 2));
            assert!(matches!(**error, Error::Row { .. }));
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::User);
    let loc = err.location().unwrap();
    assert_eq!((loc.position, loc.field.as_deref()), (Position::line(26), Some("vector")));
    let want: Vec<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    assert_eq!(ids(&c), want, "rows 20..25 shared the failing batch and must not be written");
    assert_eq!(seen.last().map(|p| (p.records_written, p.batches_written)), Some((20, 2)));

    // Acknowledged batches are durable: they survive reopening the database.
    drop(c);
    let env = env.reopen();
    let c = env.db.collection("c").unwrap();
    assert_eq!(ids(&c), want);
    assert_eq!(c.get("r07").unwrap().unwrap().metadata.as_ref().unwrap()["n"], json!(7));
}

#[test]
fn good_file_progress_and_summary() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("data.jsonl", jsonl_with_bad_row(None));
    let size = fs_err::metadata(&p).unwrap().len();
    let mut seen: Vec<Progress> = Vec::new();
    let s = ingest(&c, &p, &batch_opts(7), None, &mut |p: &Progress| seen.push(p.clone())).unwrap();
    assert_eq!((s.rows_read, s.records_written, s.batches, s.chunks_created, s.texts_embedded), (30, 30, 5, 0, 0));
    assert_eq!((s.format, s.bytes_read), (Format::Jsonl, size));
    assert!(s.seconds > 0.0 && s.records_per_second > 0.0, "{s:?}");
    assert_eq!(seen.len(), 1 + 5 + 1, "start, one per batch, end");
    assert_eq!(seen[0].records_written, 0);
    assert!(
        seen.windows(2).all(|w| w[0].records_written <= w[1].records_written && w[0].bytes_read <= w[1].bytes_read)
    );
    let last = seen.last().unwrap();
    assert_eq!((last.rows_read, last.records_written, last.bytes_read, last.bytes_total), (30, 30, size, size));
    assert_eq!(ids(&c).len(), 30);
}

#[test]
fn empty_input_writes_nothing() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("empty.jsonl", "\n\n");
    let s = run(&c, &p, &IngestOptions::default(), None).unwrap();
    assert_eq!((s.rows_read, s.records_written, s.batches), (0, 0, 0));
}

#[test]
fn options_and_format_errors_come_before_any_write() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("data.txt", "whatever");
    let e = run(&c, &p, &IngestOptions::default(), None).unwrap_err();
    assert!(matches!(e, Error::Options(_)), "{e}");
    let mut o = IngestOptions::default();
    o.format = Some(Format::Jsonl);
    o.batch_size = 0;
    assert!(run(&c, &p, &o, None).unwrap_err().to_string().contains("batch size 0"));
    let missing = env.path("missing.jsonl");
    let e = run(&c, &missing, &IngestOptions::default(), None).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient);
    assert!(e.to_string().contains("missing.jsonl"), "{e}");
}

#[test]
fn text_rows_without_an_embedder_fail_clearly() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("t.jsonl", "{\"id\":\"a\",\"vector\":[1,0]}\n{\"id\":\"b\",\"text\":\"needs a model\"}\n");
    let e = run(&c, &p, &IngestOptions::default(), None).unwrap_err();
    assert!(matches!(e.root(), Error::EmbedderRequired { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("t.jsonl:2: the row has text but no vector, and no embedder was given"), "{msg}");
    assert!(ids(&c).is_empty());
}

#[test]
fn npy_to_parquet_export_and_back() {
    let env = Env::new();
    let src = env.collection("src", 4);
    let values: Vec<f32> = (0..400).map(|x| (x as f32 * 0.37).sin()).collect();
    let p = env.write("v.npy", npy_bytes("<f4", 100, 4, &f32_bytes(&values)));
    let mut o = batch_opts(33);
    o.ids_file = Some(env.write("ids.txt", (0..100).map(|i| format!("doc-{i}\n")).collect::<String>()));
    let s = run(&src, &p, &o, None).unwrap();
    assert_eq!((s.records_written, s.batches), (100, 4));
    src.upsert(vec![Record {
        id: "with-meta".into(),
        vector: vec![1.0, 2.0, 3.0, 4.0],
        text: Some("t".into()),
        metadata: Some(json!({"a": [1, 2], "b": "x"}).as_object().unwrap().clone()),
    }])
    .unwrap();

    let exported = env.path("export.parquet");
    export_parquet(&src.snapshot(), &exported, &mut |_| {}).unwrap();
    let dst = env.collection("dst", 4);
    let s = run(&dst, &exported, &IngestOptions::default(), None).unwrap();
    assert_eq!((s.rows_read, s.format), (101, Format::Parquet));
    let (a, b) = (src.snapshot(), dst.snapshot());
    let all_a: Vec<_> = a.scan(None).map(|r| r.unwrap()).collect();
    let all_b: Vec<_> = b.scan(None).map(|r| r.unwrap()).collect();
    assert_eq!(all_a, all_b);
}

#[test]
fn duplicate_ids_within_a_file_keep_the_last() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("d.csv", "id,vector\na,\"[1,0]\"\na,\"[0,1]\"\n");
    run(&c, &p, &IngestOptions::default(), None).unwrap();
    assert_eq!(c.get("a").unwrap().unwrap().vector, [0.0, 1.0]);
}

/// Metadata of exactly `n` bytes of compact JSON.
fn metadata_of(n: usize) -> Metadata {
    let mut m = Metadata::new();
    m.insert("k".into(), Value::from(""));
    let overhead = serde_json::to_vec(&m).unwrap().len();
    m.insert("k".into(), Value::from("x".repeat(n - overhead)));
    assert_eq!(serde_json::to_vec(&m).unwrap().len(), n);
    m
}

#[test]
fn limits_match_the_store() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let rec = |metadata: Option<Metadata>, text: Option<String>| Record {
        id: "x".into(),
        vector: vec![1.0, 0.0],
        text,
        metadata,
    };
    // The store accepts exactly the limits and refuses one byte more: the mirrored
    // constants are the store's.
    c.upsert(vec![rec(Some(metadata_of(MAX_METADATA_BYTES)), None)]).unwrap();
    assert!(c.upsert(vec![rec(Some(metadata_of(MAX_METADATA_BYTES + 1)), None)]).is_err());
    c.upsert(vec![rec(None, Some("t".repeat(MAX_TEXT_BYTES)))]).unwrap();
    assert!(c.upsert(vec![rec(None, Some("t".repeat(MAX_TEXT_BYTES + 1)))]).is_err());

    // Ingestion refuses the row up front, naming it.
    let line = json!({"id": "big", "vector": [1, 0], "metadata": metadata_of(MAX_METADATA_BYTES + 1)});
    let p = env.write("big.jsonl", format!("{{\"id\":\"ok\",\"vector\":[0,1]}}\n{line}\n"));
    let msg = run(&c, &p, &IngestOptions::default(), None).unwrap_err().to_string();
    assert!(
        msg.contains("big.jsonl:2 (field \"metadata\"): metadata is 1048577 bytes of JSON, the limit is 1048576"),
        "{msg}"
    );
    let p = env.write("long-id.jsonl", format!("{}\n", json!({"id": "i".repeat(2000), "vector": [1, 0]})));
    let msg = run(&c, &p, &IngestOptions::default(), None).unwrap_err().to_string();
    assert!(msg.contains("long-id.jsonl:1 (field \"id\"): id \"iiii"), "{msg}");
}
