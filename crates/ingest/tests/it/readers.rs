//! Each reader on small files written here (Parquet with arrow-rs, safetensors with
//! the `safetensors` crate, `.npy` by hand), good rows and bad ones.

use crate::{Env, batch_opts, f32_bytes, ids, npy_bytes, read_error, read_rows, run};
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Float64Builder, ListBuilder};
use arrow_array::{ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use kernelize_ingest::{Format, IngestOptions, Position, Reader};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// ---------------------------------------------------------------- JSONL

#[test]
fn jsonl_rows_with_metadata_merge() {
    let env = Env::new();
    let p = env.write(
        "docs.ndjson",
        "{\"id\":\"a\",\"vector\":[0.5,1,2],\"text\":\"A\",\"metadata\":{\"k\":1},\"lang\":\"en\"}\n\
         {\"id\":\"b\",\"vector\":[1,2,3]}\n",
    );
    let rows = read_rows(&p, &IngestOptions::default());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].position, Position::line(1));
    assert_eq!(rows[0].vector.as_deref(), Some(&[0.5, 1.0, 2.0][..]));
    assert_eq!(rows[0].metadata, Some(json!({"k": 1, "lang": "en"}).as_object().unwrap().clone()));
    assert_eq!(rows[1].metadata, None);
}

#[test]
fn jsonl_bad_rows_name_file_line_and_field() {
    let env = Env::new();
    let c = env.collection("c", 3);
    let cases = [
        (
            "{\"id\":\"x\",\"vector\":[1,2]}",
            "bad.jsonl:2 (field \"vector\"): vector has 2 dimensions, the collection has 3",
        ),
        ("{\"id\":\"x\",\"vector\":[1,2,1e39]}", "bad.jsonl:2 (field \"vector\"): vector[2] is inf (not finite)"),
        ("{\"vector\":[1,2,3]}", "bad.jsonl:2 (field \"id\"): missing id"),
        ("{\"id\":\"x\",\"vector\":[1,2,3]", "bad.jsonl:2:26: malformed JSON: EOF while parsing an object"),
        (
            "{\"id\":\"x\",\"lang\":\"en\"}",
            "bad.jsonl:2: the row has neither a vector (\"vector\") nor a text (\"text\")",
        ),
        ("{\"id\":\"x\",\"text\":\"  \"}", "bad.jsonl:2 (field \"text\"): the text is empty and the row has no vector"),
    ];
    for (line, want) in cases {
        let p = env.write("bad.jsonl", format!("{{\"id\":\"ok\",\"vector\":[1,0,0]}}\n{line}\n"));
        let e = run(&c, &p, &IngestOptions::default(), None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(want), "{line}\n got: {msg}\nwant: {want}");
        assert!(msg.contains("0 records in 0 batches"), "{msg}");
        assert!(e.location().is_some(), "{msg}");
    }
    assert!(ids(&c).is_empty(), "the failing batch held the good first row; nothing may be written");
}

#[test]
fn jsonl_generated_ids() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("gen.jsonl", "{\"vector\":[1,0]}\n\n{\"vector\":[0,1],\"id\":\"own\"}\n{\"vector\":[1,1]}\n");
    let mut o = IngestOptions::default();
    o.generate_ids = true;
    run(&c, &p, &o, None).unwrap();
    assert_eq!(ids(&c), ["gen-1", "gen-4", "own"]);
}

// ---------------------------------------------------------------- CSV

#[test]
fn csv_columns_vectors_and_metadata() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write(
        "t.csv",
        "\u{feff}id,vector,text,year,rating,note\n\
         a,\"[1, 0]\",first,2001,4.5,\"quoted, with comma\"\n\
         b,\"[0, 1]\",,,,\n",
    );
    let s = run(&c, &p, &IngestOptions::default(), None).unwrap();
    assert_eq!((s.rows_read, s.records_written, s.format), (2, 2, Format::Csv));
    let a = c.get("a").unwrap().unwrap();
    assert_eq!(a.vector, [1.0, 0.0]);
    assert_eq!(a.text.as_deref(), Some("first"));
    let m = a.metadata.clone().unwrap();
    assert_eq!(
        (m["year"].clone(), m["rating"].clone(), m["note"].clone()),
        (json!(2001), json!(4.5), json!("quoted, with comma"))
    );
    let b = c.get("b").unwrap().unwrap();
    assert_eq!((b.text.clone(), b.metadata.clone()), (None, None));
}

#[test]
fn csv_bad_rows_name_file_line_and_field() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let cases = [
        ("c,\"[1, 1e39]\"", "t.csv:3 (field \"vector\"): vector[1] is inf (not finite)"),
        ("c,\"[1, 2, 3]\"", "t.csv:3 (field \"vector\"): vector has 3 dimensions, the collection has 2"),
        ("c,\"[1, oops]\"", "t.csv:3 (field \"vector\"): invalid JSON array"),
        ("c,\"[1, 2]\",extra", "t.csv:3: 3 fields, the header has 2"),
        (",\"[1, 2]\"", "t.csv:3 (field \"id\"): missing id"),
    ];
    for (line, want) in cases {
        let p = env.write("t.csv", format!("id,vector\na,\"[1, 0]\"\n{line}\n"));
        let msg = run(&c, &p, &IngestOptions::default(), None).unwrap_err().to_string();
        assert!(msg.contains(want), "{line}\n got: {msg}\nwant: {want}");
    }
    let p = env.write("t.csv", "key,vector\n");
    let msg = run(&c, &p, &IngestOptions::default(), None).unwrap_err().to_string();
    assert!(msg.contains("t.csv: no id column \"id\" (columns: \"key\", \"vector\")"), "{msg}");
}

// ---------------------------------------------------------------- Parquet

/// Writes a Parquet file of `rows` rows: id, vector (fixed-size f32 list of `dim`),
/// text, metadata (JSON), year (Int32), score (Float64), flag (Boolean), day (Date32);
/// `nan_row` gets a NaN, `null_id_row` a null id. Row groups of 100 rows.
fn write_parquet(path: &Path, rows: usize, dim: usize, nan_row: Option<usize>, null_id_row: Option<usize>) {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("vector", DataType::FixedSizeList(item.clone(), dim as i32), true),
        Field::new("text", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("year", DataType::Int32, true),
        Field::new("score", DataType::Float64, true),
        Field::new("flag", DataType::Boolean, true),
        Field::new("day", DataType::Date32, true),
    ]));
    let props = WriterProperties::builder().set_max_row_group_size(100).build();
    let file = fs_err::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    for chunk_start in (0..rows).step_by(128) {
        let n = (rows - chunk_start).min(128);
        let range = chunk_start..chunk_start + n;
        let ids: StringArray = range.clone().map(|i| (Some(i) != null_id_row).then(|| format!("p{i}"))).collect();
        let mut vectors = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32).with_field(item.clone());
        for i in range.clone() {
            for j in 0..dim {
                let v = if Some(i) == nan_row && j == 1 { f32::NAN } else { (i * dim + j) as f32 };
                vectors.values().append_value(v);
            }
            vectors.append(true);
        }
        let texts: StringArray = range.clone().map(|i| Some(format!("text {i}"))).collect();
        let metas: StringArray =
            range.clone().map(|i| (i % 2 == 0).then(|| json!({"even": true, "year": -1}).to_string())).collect();
        let years: Int32Array = range.clone().map(|i| Some(2000 + i as i32)).collect();
        let scores: Float64Array = range.clone().map(|i| (i % 3 != 0).then_some(i as f64 / 2.0)).collect();
        let flags: BooleanArray = range.clone().map(|i| Some(i % 5 == 0)).collect();
        let days: Date32Array = range.clone().map(|_| Some(19_000)).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(vectors.finish()),
            Arc::new(texts),
            Arc::new(metas),
            Arc::new(years),
            Arc::new(scores),
            Arc::new(flags),
            Arc::new(days),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap()).unwrap();
    }
    w.close().unwrap();
}

#[test]
fn parquet_streams_rows_across_row_groups() {
    let env = Env::new();
    let p = env.path("t.parquet");
    write_parquet(&p, 2500, 3, None, None);
    let reader = Reader::open(&p, &IngestOptions::default()).unwrap();
    assert_eq!(reader.total_rows(), Some(2500));
    let rows: Vec<_> = reader.map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2500);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.position, Position::Row(i as u64));
        assert_eq!(r.id, format!("p{i}"));
    }
    let r = &rows[1234];
    assert_eq!(r.vector.as_deref(), Some(&[3702.0, 3703.0, 3704.0][..]));
    assert_eq!(r.text.as_deref(), Some("text 1234"));
    let m = r.metadata.clone().unwrap();
    assert_eq!(m["year"], json!(-1), "the metadata column wins over the year column");
    assert_eq!(m["even"], json!(true));
    assert_eq!(m["score"], json!(617.0));
    assert_eq!(m["flag"], json!(false));
    assert_eq!(m["day"], json!("2022-01-08"));
    let m = rows[3].metadata.clone().unwrap();
    assert_eq!(m["year"], json!(2003));
    assert!(!m.contains_key("score"), "nulls are left out: {m:?}");
}

#[test]
fn parquet_bad_rows_name_row_and_field() {
    let env = Env::new();
    let p = env.path("nan.parquet");
    write_parquet(&p, 300, 3, Some(217), None);
    let c = env.collection("c", 3);
    let msg = run(&c, &p, &batch_opts(100), None).unwrap_err().to_string();
    assert!(msg.contains("nan.parquet row 217 (field \"vector\"): vector[1] is NaN (not finite)"), "{msg}");
    assert!(msg.contains("200 records in 2 batches"), "{msg}");
    assert_eq!(ids(&c).len(), 200);

    let p = env.path("nullid.parquet");
    write_parquet(&p, 10, 3, None, Some(4));
    assert!(read_error(&p, &IngestOptions::default()).contains("nullid.parquet row 4 (field \"id\"): missing id"));

    let c4 = env.collection("c4", 4);
    let msg = run(&c4, &p, &IngestOptions::default(), None).unwrap_err().to_string();
    assert!(
        msg.contains("nullid.parquet row 0 (field \"vector\"): vector has 3 dimensions, the collection has 4"),
        "{msg}"
    );
}

#[test]
fn parquet_list_of_f64_and_schema_errors() {
    let env = Env::new();
    let p = env.path("l.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, false),
        Field::new("emb", DataType::List(Arc::new(Field::new("item", DataType::Float64, true))), true),
    ]));
    let mut lists = ListBuilder::new(Float64Builder::new());
    lists.values().append_slice(&[0.25, 0.5]);
    lists.append(true);
    lists.values().append_value(1.0);
    lists.values().append_null();
    lists.append(true);
    let cols: Vec<ArrayRef> = vec![Arc::new(arrow_array::Int64Array::from(vec![10, 11])), Arc::new(lists.finish())];
    let mut w = ArrowWriter::try_new(fs_err::File::create(&p).unwrap(), schema.clone(), None).unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap()).unwrap();
    w.close().unwrap();

    let mut o = IngestOptions::default();
    o.id_field = "key".into();
    o.vector_field = "emb".into();
    let mut reader = Reader::open(&p, &o).unwrap();
    let first = reader.next().unwrap().unwrap();
    assert_eq!((first.id.as_str(), first.vector.as_deref()), ("10", Some(&[0.25f32, 0.5][..])));
    let e = reader.next().unwrap().unwrap_err().to_string();
    assert!(e.contains("l.parquet row 1 (field \"emb\"): vector[1] is null"), "{e}");
    assert!(reader.next().is_none(), "a reader stops after its first error");

    let e = read_error(&p, &IngestOptions::default());
    assert!(e.contains("no id column \"id\"") && e.contains("\"emb\""), "{e}");
    o.text_field = "key".into();
    let e = read_error(&p, &o);
    assert!(e.contains("column \"key\" has type Int64; expected a string column"), "{e}");
    let e = read_error(&env.write("junk.parquet", "not parquet at all"), &IngestOptions::default());
    assert!(e.contains("junk.parquet: not a readable Parquet file"), "{e}");
}

// ---------------------------------------------------------------- safetensors

fn safetensors_file(env: &Env, name: &str, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> PathBuf {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| ((*n).to_owned(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    env.write(name, bytes)
}

#[test]
fn safetensors_picks_the_2d_tensor_and_names_ids() {
    let env = Env::new();
    let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
    let p = safetensors_file(
        &env,
        "emb.safetensors",
        vec![
            ("bias", Dtype::F32, vec![3], f32_bytes(&[1.0, 2.0, 3.0])),
            ("weight", Dtype::F32, vec![4, 3], f32_bytes(&data)),
        ],
    );
    let rows = read_rows(&p, &IngestOptions::default());
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[2].id, "emb-2");
    assert_eq!(rows[2].position, Position::Row(2));
    assert_eq!(rows[2].vector.as_deref(), Some(&[6.0, 7.0, 8.0][..]));

    let mut o = IngestOptions::default();
    o.ids_file = Some(env.write("ids.txt", "alpha\nbeta\r\ngamma\ndelta\n"));
    let c = env.collection("c", 3);
    let s = run(&c, &p, &o, None).unwrap();
    assert_eq!((s.rows_read, s.records_written, s.texts_embedded), (4, 4, 0));
    assert_eq!(ids(&c), ["alpha", "beta", "delta", "gamma"]);
    assert_eq!(c.get("gamma").unwrap().unwrap().vector, [6.0, 7.0, 8.0]);

    o.ids_file = Some(env.write("short.txt", "a\nb\nc\n"));
    let e = read_error(&p, &o);
    assert!(e.contains("short.txt: the ids file has 3 lines but") && e.contains("has 4 rows"), "{e}");
    o.ids_file = Some(env.write("gap.txt", "a\n\nc\nd\n"));
    let e = read_error(&p, &o);
    assert!(e.contains("emb.safetensors row 1 (field \"id\"): id is empty (line 2 of"), "{e}");
}

#[test]
fn safetensors_dtypes_and_errors() {
    let env = Env::new();
    let halfs: Vec<u8> = [0.5f32, -1.0, 2.0, 4.0].iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    let f64s: Vec<u8> = [0.5f64, -1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let p = safetensors_file(
        &env,
        "two.safetensors",
        vec![("a", Dtype::F16, vec![2, 2], halfs), ("b", Dtype::F64, vec![1, 2], f64s)],
    );
    let e = read_error(&p, &IngestOptions::default());
    assert!(e.contains("2 2-D tensors, name the one to read: a (F16 [2, 2]), b (F64 [1, 2])"), "{e}");
    let mut o = IngestOptions::default();
    o.tensor = Some("a".into());
    let rows = read_rows(&p, &o);
    assert_eq!(rows[1].vector.as_deref(), Some(&[2.0, 4.0][..]));
    o.tensor = Some("b".into());
    assert_eq!(read_rows(&p, &o)[0].vector.as_deref(), Some(&[0.5, -1.0][..]));
    o.tensor = Some("nope".into());
    let e = read_error(&p, &o);
    assert!(e.contains("no tensor named \"nope\"; tensors: a (F16 [2, 2]), b (F64 [1, 2])"), "{e}");

    let ints = safetensors_file(&env, "i.safetensors", vec![("x", Dtype::I32, vec![1, 2], vec![0; 8])]);
    assert!(read_error(&ints, &IngestOptions::default()).contains("dtype I32; expected F32, F64, F16 or BF16"));
    let none = safetensors_file(&env, "n.safetensors", vec![("x", Dtype::F32, vec![2], vec![0; 8])]);
    assert!(read_error(&none, &IngestOptions::default()).contains("no 2-D tensor; tensors: x (F32 [2])"));

    let mut bytes = fs_err::read(&p).unwrap();
    bytes.truncate(bytes.len() - 3);
    let cut = env.write("cut.safetensors", &bytes);
    let e = read_error(&cut, &IngestOptions::default());
    assert!(
        e.contains("cut.safetensors: the header describes 24 bytes of tensor data, the file has 21 (truncated)"),
        "{e}"
    );
    let e = read_error(&env.write("junk.safetensors", "xy"), &IngestOptions::default());
    assert!(e.contains("not a safetensors file"), "{e}");
}

#[test]
fn safetensors_nan_row_stops_with_earlier_batches_written() {
    let env = Env::new();
    let mut data: Vec<f32> = (0..30).map(|x| x as f32).collect();
    data[7 * 3] = f32::NAN; // row 7
    let p = safetensors_file(&env, "v.safetensors", vec![("v", Dtype::F32, vec![10, 3], f32_bytes(&data))]);
    let c = env.collection("c", 3);
    let e = run(&c, &p, &batch_opts(3), None).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("v.safetensors row 7 (field \"vector\"): vector[0] is NaN (not finite)"), "{msg}");
    assert!(msg.contains("6 records in 2 batches"), "{msg}");
    assert_eq!(ids(&c), ["v-0", "v-1", "v-2", "v-3", "v-4", "v-5"]);
}

// ---------------------------------------------------------------- npy

#[test]
fn npy_f32_and_f64_with_default_ids() {
    let env = Env::new();
    let c = env.collection("c", 2);
    let p = env.write("vecs.npy", npy_bytes("<f4", 3, 2, &f32_bytes(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0])));
    let s = run(&c, &p, &IngestOptions::default(), None).unwrap();
    assert_eq!(
        (s.rows_read, s.records_written, s.format, s.bytes_read),
        (3, 3, Format::Npy, fs_err::metadata(&p).unwrap().len())
    );
    assert_eq!(ids(&c), ["vecs-0", "vecs-1", "vecs-2"]);
    assert_eq!(c.get("vecs-1").unwrap().unwrap().vector, [0.0, 1.0]);

    let f64s: Vec<u8> = [0.25f64, 0.75].iter().flat_map(|x| x.to_le_bytes()).collect();
    let p = env.write("d.npy", npy_bytes("<f8", 1, 2, &f64s));
    assert_eq!(read_rows(&p, &IngestOptions::default())[0].vector.as_deref(), Some(&[0.25, 0.75][..]));
}

#[test]
fn npy_bad_files_and_rows() {
    let env = Env::new();
    let c = env.collection("c", 3);
    let p = env.write("wide.npy", npy_bytes("<f4", 2, 4, &f32_bytes(&[0.0; 8])));
    let msg = run(&c, &p, &IngestOptions::default(), None).unwrap_err().to_string();
    assert!(msg.contains("wide.npy row 0 (field \"vector\"): vector has 4 dimensions, the collection has 3"), "{msg}");

    let mut data = vec![0.5f32; 12];
    data[3 * 3 + 2] = f32::INFINITY;
    let p = env.write("inf.npy", npy_bytes("<f4", 4, 3, &f32_bytes(&data)));
    let msg = run(&c, &p, &batch_opts(2), None).unwrap_err().to_string();
    assert!(msg.contains("inf.npy row 3 (field \"vector\"): vector[2] is inf (not finite)"), "{msg}");
    assert!(msg.contains("2 records in 1 batches"), "{msg}");

    let p = env.write("short.npy", npy_bytes("<f4", 4, 3, &f32_bytes(&[0.0; 11])));
    assert!(
        read_error(&p, &IngestOptions::default())
            .contains("short.npy: shape (4, 3) needs 48 bytes of data after the header, the file has 44 (truncated)")
    );
    let p = env.write("int.npy", npy_bytes("<i8", 1, 1, &[0; 8]));
    assert!(read_error(&p, &IngestOptions::default()).contains("int.npy: dtype \"<i8\" is not supported"));
    let p = env.write("junk.npy", "hello");
    assert!(read_error(&p, &IngestOptions::default()).contains("junk.npy: not a .npy file (bad magic)"));

    let mut o = IngestOptions::default();
    o.ids_file = Some(env.write("ids.txt", "one\ntwo\n"));
    let p = env.write("ok.npy", npy_bytes("<f4", 3, 3, &f32_bytes(&[0.0; 9])));
    assert!(read_error(&p, &o).contains("the ids file has 2 lines but"));
}

// ---------------------------------------------------------------- corrupted files

/// Reads a file to the end or the first error; must never panic.
fn drain(path: &Path, opts: &IngestOptions) -> usize {
    match Reader::open(path, opts) {
        Ok(reader) => reader.count(),
        Err(_) => 0,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    #[test]
    fn corrupted_files_give_errors_not_panics(seed in 0usize..10_000, flips in 1usize..6, cut in 0usize..4) {
        let env = Env::new();
        let pq = env.path("c.parquet");
        write_parquet(&pq, 40, 3, None, None);
        let st = safetensors_file(&env, "c.safetensors", vec![("v", Dtype::F32, vec![4, 3], f32_bytes(&[0.5; 12]))]);
        let npy = env.write("c.npy", npy_bytes("<f4", 4, 3, &f32_bytes(&[0.5; 12])));
        let jsonl = env.write("c.jsonl", "{\"id\":\"a\",\"vector\":[1,2,3],\"text\":\"x\"}\n{\"id\":\"b\",\"vector\":[4,5,6]}\n");
        let csv = env.write("c.csv", "id,vector,text\na,\"[1,2,3]\",x\nb,\"[4,5,6]\",y\n");
        for path in [pq, st, npy, jsonl, csv] {
            let mut bytes = fs_err::read(&path).unwrap();
            let mut x = seed;
            for _ in 0..flips {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) % (1 << 31);
                let i = x % bytes.len();
                bytes[i] = bytes[i].wrapping_add((x >> 8) as u8 | 1);
            }
            let keep = bytes.len() - (cut * seed) % bytes.len().max(1) / 4;
            bytes.truncate(keep);
            fs_err::write(&path, &bytes).unwrap();
            drain(&path, &IngestOptions::default());
        }
    }
}
