//! Image and audio collections from the command line, as a user runs them: create by
//! modality, ingest a folder (a bad file stops the load or is skipped), search by a file,
//! embed and classify an image; and the checkpoint converter of `models install`.

use crate::{kz, ok};
use std::path::{Path, PathBuf};

fn fixture(kind: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../media/tests/fixtures").join(kind).join(name)
}

#[test]
fn an_image_collection_from_a_folder_searched_by_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let photos = tmp.path().join("photos");
    fs_err::create_dir_all(photos.join("sub")).unwrap();
    fs_err::copy(fixture("images", "chelsea.jpg"), photos.join("chelsea.jpg")).unwrap();
    fs_err::copy(fixture("images", "coffee.jpg"), photos.join("sub/coffee.jpg")).unwrap();
    fs_err::copy(fixture("images", "rocket.jpg"), photos.join("rocket.jpg")).unwrap();
    fs_err::write(photos.join("broken.jpg"), "not an image").unwrap();

    let out = ok(&data, &["collection", "create", "photos", "--modality", "image"]);
    assert!(out.contains("dim 1280") && out.contains("EfficientNet-Lite0"), "{out}");
    // The bad file stops the load and is named.
    let p = photos.to_str().unwrap();
    let failed = kz(&data, &["ingest", p, "-c", "photos"]);
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("broken.jpg") && err.contains("not a JPEG/PNG/WebP image"), "{err}");
    // Skipped when asked, and reported.
    let out = ok(&data, &["ingest", p, "-c", "photos", "--on-bad-file", "skip", "--keep-files"]);
    assert!(out.contains("3 files encoded, 1 skipped"), "{out}");
    assert!(out.contains("skipped") && out.contains("broken.jpg"), "{out}");
    let list = ok(&data, &["collection", "list"]);
    assert!(list.contains("records=3") && list.contains("encoder=image EfficientNet-Lite0"), "{list}");

    // More like this: the coffee photo finds itself, with its media metadata.
    let q = fixture("images", "coffee.jpg");
    let out = ok(&data, &["search", "-c", "photos", "--media", q.to_str().unwrap(), "--k", "2"]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "sub/coffee.jpg", "{out}");
    assert_eq!(first["metadata"]["media"]["format"], "JPEG");
    assert_eq!(first["metadata"]["media"]["source"], "sub/coffee.jpg");
    // A filter on the recorded label.
    let label = first["metadata"]["media"]["label"].as_str().unwrap().to_owned();
    let filter = format!("media.label = \"{label}\"");
    let out = ok(&data, &["search", "-c", "photos", "--media", q.to_str().unwrap(), "--filter", &filter]);
    assert_eq!(out.lines().count(), 1, "{out}");
    // Text is not an image query.
    let bad = kz(&data, &["search", "-c", "photos", "--text", "a cat"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is an image collection"));

    // embed --image: the vector, and the labels.
    let v: Vec<f32> = serde_json::from_str(ok(&data, &["embed", "--image", q.to_str().unwrap()]).trim()).unwrap();
    assert_eq!(v.len(), 1280);
    let labels = ok(&data, &["embed", "--image", q.to_str().unwrap(), "--labels"]);
    assert_eq!(labels.lines().count(), 5);
    assert!(labels.lines().next().unwrap().ends_with(&label), "{labels}");
}

#[test]
fn an_audio_collection_searched_by_voice() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let voices = tmp.path().join("voices");
    fs_err::create_dir_all(&voices).unwrap();
    let clips = ["fid_en_m3.wav", "fid_en_f2.wav", "fid_de_m2.wav"];
    for c in clips {
        fs_err::copy(fixture("audio", c), voices.join(c)).unwrap();
    }
    ok(&data, &["collection", "create", "voices", "--modality", "audio"]);
    let out = ok(&data, &["ingest", voices.to_str().unwrap(), "-c", "voices"]);
    assert!(out.contains("3 files encoded"), "{out}");
    let q = fixture("audio", "fid_en_f2.wav");
    let out = ok(&data, &["search", "-c", "voices", "--media", q.to_str().unwrap(), "--k", "1"]);
    let hit: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(hit["id"], "fid_en_f2.wav");
    assert!(hit["metadata"]["media"]["duration_secs"].as_f64().unwrap() > 0.5);
    let v: Vec<f32> = serde_json::from_str(ok(&data, &["embed", "--audio", q.to_str().unwrap()]).trim()).unwrap();
    assert_eq!(v.len(), 256);
}
