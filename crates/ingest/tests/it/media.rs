//! Media ingestion with the real image and audio encoders: folders (recursively), a
//! Parquet column of file bytes, paths in JSONL; bad files stopping the load (what was
//! acknowledged stays) or skipped and reported.

use crate::Env;
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use kernelize_ingest::{BadMedia, Error, IngestOptions, Progress, ingest_media};
use kernelize_media::{AudioEncoder, Encoder, ImageEncoder, Modality, encoder_record};
use kernelize_store::{Collection, CollectionConfig, Metric};
use parquet::arrow::ArrowWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../media/tests/fixtures").join(kind)
}

/// The first `n` fixture files of a kind with one of `exts`, sorted.
fn fixture_files(kind: &str, exts: &[&str], n: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs_err::read_dir(fixtures(kind))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
        .filter(|p| fs_err::metadata(p).unwrap().len() < 400_000)
        .collect();
    files.sort();
    assert!(files.len() >= n, "need {n} fixture files in {}", fixtures(kind).display());
    files.truncate(n);
    files
}

fn image_encoder() -> &'static ImageEncoder {
    static E: OnceLock<ImageEncoder> = OnceLock::new();
    E.get_or_init(|| match ImageEncoder::load(&ImageEncoder::default_model_dir()) {
        Ok(e) => e,
        Err(e) => panic!("{e}\nrun `kernelize models install` first (scripts/test.sh does; these tests never skip)"),
    })
}

fn audio_encoder() -> &'static AudioEncoder {
    static E: OnceLock<AudioEncoder> = OnceLock::new();
    E.get_or_init(|| match AudioEncoder::load(&AudioEncoder::default_model_dir()) {
        Ok(e) => e,
        Err(e) => panic!("{e}\nrun `kernelize models install` first (scripts/test.sh does; these tests never skip)"),
    })
}

fn media_collection(env: &Env, name: &str, modality: Modality) -> Collection {
    let record = encoder_record(modality);
    let config =
        CollectionConfig { encoder: Some(record.clone()), ..CollectionConfig::new(record.dim, Metric::Cosine) };
    env.db.create_collection(name, config).unwrap()
}

fn run(
    c: &Collection,
    path: &Path,
    opts: &IngestOptions,
    e: &dyn Encoder,
) -> Result<kernelize_ingest::IngestSummary, Error> {
    ingest_media(c, path, opts, e, &mut |_: &Progress| {})
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn media_of(c: &Collection, id: &str) -> serde_json::Map<String, serde_json::Value> {
    let r = c.get(id).unwrap().unwrap_or_else(|| panic!("no record {id}"));
    let m = r.metadata.clone().unwrap_or_default();
    m.get("media").and_then(|v| v.as_object()).cloned().unwrap_or_else(|| panic!("{id}: no metadata.media"))
}

/// A folder with `images` copied in (the second under a sub-folder), a text file the walk
/// passes over, and optionally a broken "image" in third place.
fn image_folder(env: &Env, images: &[PathBuf], broken: bool) -> PathBuf {
    let root = env.path("photos");
    fs_err::create_dir_all(root.join("sub")).unwrap();
    for (i, src) in images.iter().enumerate() {
        let ext = src.extension().unwrap().to_str().unwrap();
        let dest = if i == 1 {
            root.join("sub").join(format!("b.{ext}"))
        } else {
            root.join(format!("{}.{ext}", ['a', 'c', 'd', 'e'][i.min(3)]))
        };
        fs_err::copy(src, dest).unwrap();
    }
    fs_err::write(root.join("notes.txt"), "not an image").unwrap();
    if broken {
        // Sorted order: a, b_broken, c, ..., sub/b.
        fs_err::write(root.join("b_broken.jpg"), b"\xff\xd8\xff\xe0 this is not really a JPEG").unwrap();
    }
    root
}

#[test]
fn a_folder_of_images_is_ingested_recursively_with_media_metadata() {
    let env = Env::new();
    let images = fixture_files("images", &["jpg", "png", "webp"], 3);
    let folder = image_folder(&env, &images, false);
    let c = media_collection(&env, "photos", Modality::Image);
    let mut opts = IngestOptions::default();
    opts.keep_media = true;
    let s = run(&c, &folder, &opts, image_encoder()).unwrap();
    assert_eq!((s.rows_read, s.records_written, s.media_encoded, s.media_skipped), (3, 3, 3, 0));
    let ext1 = images[1].extension().unwrap().to_str().unwrap();
    let id = format!("sub/b.{ext1}");
    let media = media_of(&c, &id);
    assert_eq!(media["source"], id.as_str());
    assert_eq!(media["sha256"], sha256_hex(&fs_err::read(&images[1]).unwrap()).as_str());
    assert_eq!(media["bytes"], fs_err::metadata(&images[1]).unwrap().len());
    assert!(media.contains_key("width") && media.contains_key("format") && media.contains_key("label"), "{media:?}");
    // The vector is the encoder's for the same bytes.
    let want = image_encoder().encode(&[kernelize_media::Input::Bytes(&fs_err::read(&images[1]).unwrap())]);
    let got = c.get(&id).unwrap().unwrap().vector.clone();
    assert_eq!(&got, want[0].as_ref().unwrap());
    assert!(c.get("notes.txt").unwrap().is_none());
    // The file is kept beside the collection, under its SHA-256.
    let kept = c.media(media["sha256"].as_str().unwrap()).unwrap().unwrap();
    assert_eq!(kept, fs_err::read(&images[1]).unwrap());
    assert!(c.media(&"0".repeat(64)).unwrap().is_none());
    assert!(c.media("../../etc/passwd").is_err(), "only SHA-256 names");
}

#[test]
fn a_bad_file_stops_the_load_naming_it_and_keeps_what_was_acknowledged() {
    let env = Env::new();
    let folder = image_folder(&env, &fixture_files("images", &["jpg", "png", "webp"], 3), true);
    let c = media_collection(&env, "photos", Modality::Image);
    let mut opts = IngestOptions::default();
    opts.batch_size = 1;
    let err = run(&c, &folder, &opts, image_encoder()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("b_broken.jpg"), "{msg}");
    assert!(matches!(err, Error::Stopped { records_written: 1, .. }), "{err:?}");
    let env = env.reopen();
    let c = env.db.collection("photos").unwrap();
    assert_eq!(c.snapshot().count().unwrap(), 1, "the acknowledged batch survives");
}

#[test]
fn bad_files_are_skipped_and_reported_when_asked() {
    let env = Env::new();
    let folder = image_folder(&env, &fixture_files("images", &["jpg", "png", "webp"], 3), true);
    let c = media_collection(&env, "photos", Modality::Image);
    let mut opts = IngestOptions::default();
    opts.bad_media = BadMedia::Skip;
    let s = run(&c, &folder, &opts, image_encoder()).unwrap();
    assert_eq!((s.records_written, s.media_encoded, s.media_skipped), (3, 3, 1));
    assert_eq!(s.skipped.len(), 1);
    assert!(s.skipped[0].contains("b_broken.jpg"), "{:?}", s.skipped);
    assert!(c.get("b_broken.jpg").unwrap().is_none());
}

#[test]
fn a_parquet_column_of_bytes_and_jsonl_paths_are_ingested() {
    let env = Env::new();
    let images = fixture_files("images", &["jpg", "png", "webp"], 2);
    let bytes: Vec<Vec<u8>> = images.iter().map(|p| fs_err::read(p).unwrap()).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("image", DataType::Binary, true),
        Field::new("caption", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["p0", "p1"])) as ArrayRef,
            Arc::new(BinaryArray::from(bytes.iter().map(|b| Some(b.as_slice())).collect::<Vec<_>>())) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("first"), None])) as ArrayRef,
        ],
    )
    .unwrap();
    let pq = env.path("shots.parquet");
    let mut w = ArrowWriter::try_new(fs_err::File::create(&pq).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let c = media_collection(&env, "photos", Modality::Image);
    let mut opts = IngestOptions::default();
    opts.media_field = Some("image".into());
    let s = run(&c, &pq, &opts, image_encoder()).unwrap();
    assert_eq!(s.media_encoded, 2);
    let r = c.get("p0").unwrap().unwrap();
    let meta = r.metadata.clone().unwrap();
    assert_eq!(meta["caption"], "first");
    assert_eq!(meta["media"]["sha256"], sha256_hex(&bytes[0]).as_str());
    assert!(meta["media"]["source"].as_str().unwrap().ends_with("shots.parquet row 0"));

    // Paths in JSONL, relative to the file's folder; a missing file names itself.
    fs_err::copy(&images[0], env.path("one.img")).unwrap();
    let jsonl = env.write(
        "list.jsonl",
        "{\"id\": \"j0\", \"path\": \"one.img\", \"tag\": \"x\"}\n{\"id\": \"j1\", \"path\": \"missing.jpg\"}\n",
    );
    let c2 = media_collection(&env, "listed", Modality::Image);
    let err = run(&c2, &jsonl, &IngestOptions::default(), image_encoder()).unwrap_err().to_string();
    assert!(err.contains("missing.jpg") && err.contains("list.jsonl:2"), "{err}");
    let mut skip = IngestOptions::default();
    skip.bad_media = BadMedia::Skip;
    let c3 = media_collection(&env, "listed2", Modality::Image);
    let s = run(&c3, &jsonl, &skip, image_encoder()).unwrap();
    assert_eq!((s.media_encoded, s.media_skipped), (1, 1));
    assert_eq!(c3.get("j0").unwrap().unwrap().metadata.clone().unwrap()["tag"], "x");
}

#[test]
fn a_folder_of_clips_is_ingested_into_an_audio_collection() {
    let env = Env::new();
    let clips = fixture_files("audio", &["wav", "flac", "ogg", "mp3"], 2);
    let root = env.path("voices");
    fs_err::create_dir_all(&root).unwrap();
    for c in &clips {
        fs_err::copy(c, root.join(c.file_name().unwrap())).unwrap();
    }
    let c = media_collection(&env, "voices", Modality::Audio);
    let s = run(&c, &root, &IngestOptions::default(), audio_encoder()).unwrap();
    assert_eq!(s.media_encoded, 2);
    let id = clips[0].file_name().unwrap().to_str().unwrap();
    let media = media_of(&c, id);
    assert!(media["duration_secs"].as_f64().unwrap() > 0.1, "{media:?}");
    assert_eq!(c.get(id).unwrap().unwrap().vector.len(), 256);
}

#[test]
fn media_ingestion_refuses_a_collection_of_another_dimension_and_text_files() {
    let env = Env::new();
    let c = env.db.create_collection("plain", CollectionConfig::new(3, Metric::Cosine)).unwrap();
    let err = run(&c, &env.path("x"), &IngestOptions::default(), image_encoder()).unwrap_err().to_string();
    assert!(err.contains("1280") && err.contains("dimension 3"), "{err}");
    let mut opts = IngestOptions::default();
    opts.media_field = Some("path".into());
    let file = env.write("a.jsonl", "{\"id\": \"a\", \"text\": \"t\"}\n");
    let err = kernelize_ingest::ingest(&c, &file, &opts, None, &mut |_: &Progress| {}).unwrap_err().to_string();
    assert!(err.contains("media"), "{err}");
}
