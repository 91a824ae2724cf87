//! The image encoder against PyTorch on the checked-in fixture images
//! (`tests/fixtures/images/`, features and labels in `reference.json`, both written by
//! `scripts/media/image_reference.py`), and its behaviour on bad input.
//!
//! They need the real model: `kernelize models install EfficientNet-Lite0` puts it in the
//! models directory (`$KERNELIZE_MODELS_DIR`, else `~/.local/share/kernelize/models`).
//! Without it every test that needs the model fails with that instruction; none passes
//! silently.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests: a failure is the test's report")]

use kernelize_media::image::{ImageInfo, Label, probe};
use kernelize_media::{Encoder, Error, ImageEncoder, Input, Modality};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Minimum cosine similarity to PyTorch's features, for every single image.
const MIN_COSINE: f64 = 0.999;

/// When PyTorch's two most probable classes are closer than this, either one is accepted
/// as our top-1 (a near tie that decoder rounding may tip).
const TIE_MARGIN: f64 = 0.005;

/// The encoder shared by all tests of this module (loaded once).
fn encoder() -> &'static ImageEncoder {
    static ENCODER: OnceLock<ImageEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let dir = ImageEncoder::default_model_dir();
        match ImageEncoder::load(&dir) {
            Ok(e) => e,
            Err(e) => panic!(
                "cannot load the image model from {}: {e}\n\
                 run `kernelize models install EfficientNet-Lite0` first (scripts/test.sh does; \
                 these tests never skip)",
                dir.display()
            ),
        }
    })
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images")
}

#[derive(serde::Deserialize)]
struct Reference {
    images: Vec<ReferenceImage>,
}

#[derive(serde::Deserialize)]
struct ReferenceImage {
    file: String,
    format: String,
    width: u32,
    height: u32,
    features: Vec<f32>,
    top5: Vec<ReferenceLabel>,
}

#[derive(serde::Deserialize)]
struct ReferenceLabel {
    index: usize,
    probability: f64,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let path = fixtures_dir().join("reference.json");
        let text = fs_err::read_to_string(&path).expect("read the reference (scripts/media/image_reference.py)");
        serde_json::from_str(&text).expect("parse reference.json")
    })
}

fn read_fixture(name: &str) -> Vec<u8> {
    fs_err::read(fixtures_dir().join(name)).expect("read fixture image")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn input_error(result: Result<Vec<f32>, Error>) -> String {
    match result {
        Err(Error::Input(message)) => message,
        Err(other) => panic!("expected an input error, got {other:?}"),
        Ok(_) => panic!("expected an input error, got a vector"),
    }
}

#[test]
fn record_describes_the_model() {
    let record = encoder().record();
    assert_eq!(record.modality, Modality::Image);
    assert_eq!(record.model, "EfficientNet-Lite0");
    assert_eq!(record.dim, 1280);
    assert_eq!(encoder().dim(), 1280);
    assert!(record.preprocessing.contains("(x − 127) / 128"), "{}", record.preprocessing);
}

/// Every fixture: cosine to PyTorch's features ≥ MIN_COSINE, the same top-1 label, and
/// the header's format and size.
#[test]
fn features_and_labels_match_pytorch() {
    let reference = reference();
    assert!(reference.images.len() >= 50, "only {} reference images", reference.images.len());
    let files: Vec<Vec<u8>> = reference.images.iter().map(|r| read_fixture(&r.file)).collect();
    let inputs: Vec<Input<'_>> = files.iter().map(|b| Input::Bytes(b)).collect();
    let encoded = encoder().encode_with_labels(&inputs, 5);
    let mut min = (f64::INFINITY, "");
    let mut min_by_format = std::collections::BTreeMap::<&str, f64>::new();
    let mut failures = Vec::new();
    let mut ties = 0;
    for ((want, bytes), got) in reference.images.iter().zip(&files).zip(encoded) {
        let name = want.file.as_str();
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let norm: f64 = got.vector.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{name}: norm {norm}");
        let cos = cosine(&got.vector, &want.features);
        if cos < min.0 {
            min = (cos, name);
        }
        let by_format = min_by_format.entry(want.format.as_str()).or_insert(f64::INFINITY);
        *by_format = by_format.min(cos);
        if cos < MIN_COSINE {
            failures.push(format!("{name}: cosine {cos:.6} < {MIN_COSINE}"));
        }
        let (first, second) = (&want.top5[0], &want.top5[1]);
        let top1 = got.labels[0].index;
        if top1 != first.index {
            if first.probability - second.probability < TIE_MARGIN && top1 == second.index {
                ties += 1;
            } else {
                failures.push(format!(
                    "{name}: top-1 {top1} ({}) where PyTorch says {} ({:.4})",
                    got.labels[0].name, first.index, first.probability
                ));
            }
        }
        if (f64::from(got.labels[0].probability) - first.probability).abs() > 0.02 && top1 == first.index {
            failures.push(format!(
                "{name}: top-1 probability {:.4} where PyTorch says {:.4}",
                got.labels[0].probability, first.probability
            ));
        }
        let info = probe(bytes).unwrap();
        assert_eq!(
            (info.format, info.width, info.height),
            (want.format.as_str(), want.width, want.height),
            "{name}: probe"
        );
    }
    eprintln!(
        "image fidelity: {} images, min cosine {:.6} ({}; by format: {}), top-1 agreement {}/{} \
         ({ties} near-ties resolved the other way)",
        reference.images.len(),
        min.0,
        min.1,
        min_by_format.iter().map(|(f, c)| format!("{f} {c:.6}")).collect::<Vec<_>>().join(", "),
        reference.images.len() - failures.len() - ties,
        reference.images.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} images differ:\n{}",
        failures.len(),
        reference.images.len(),
        failures.join("\n")
    );
}

#[test]
fn classify_names_the_coffee_and_the_cat() {
    let labels: Vec<Label> = encoder().classify(&read_fixture("coffee.jpg"), 3).unwrap();
    assert_eq!(labels.len(), 3);
    assert_eq!(labels[0].name, "espresso");
    assert!(labels[0].probability > 0.5 && labels[0].probability <= 1.0);
    assert!(labels.windows(2).all(|w| w[0].probability >= w[1].probability));
    let cat = encoder().classify(&read_fixture("chelsea.jpg"), 3).unwrap();
    assert!(cat.iter().any(|l| l.name == "tabby"), "{cat:?}");
}

#[test]
fn near_duplicates_are_closer_than_other_images() {
    let vector = |name: &str| encoder().encode(&[Input::Bytes(&read_fixture(name))]).pop().unwrap().unwrap();
    let coffee = vector("coffee.jpg");
    let same = cosine(&coffee, &vector("coffee-lossless.webp"));
    let other = cosine(&coffee, &vector("rocket.jpg"));
    assert!(same > 0.9 && same > other + 0.2, "same picture {same}, other picture {other}");
}

#[test]
fn probe_reads_the_header_only() {
    let info = probe(&read_fixture("smooth-6000x4000.jpg")).unwrap();
    assert_eq!(info, ImageInfo { format: "JPEG", width: 6000, height: 4000 });
    // A PNG signature and header claiming 70000×20 pixels: refused from the header.
    let bomb = png_bomb(70_000, 20, 8, 2);
    let err = probe(&bomb).unwrap_err().to_string();
    assert!(err.contains("70000×20") && err.contains("16384"), "{err}");
}

/// A PNG whose header claims `width × height` pixels, with a few bytes of (all-zero,
/// highly compressible) image data, as a decompression bomb starts.
fn png_bomb(width: u32, height: u32, depth: u8, colour: u8) -> Vec<u8> {
    fn chunk(png: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
        let mut data = kind.to_vec();
        data.extend(body);
        png.extend((body.len() as u32).to_be_bytes());
        png.extend(&data);
        png.extend(crc32(&data).to_be_bytes());
    }
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([depth, colour, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    // The start of a zlib stream of zeros, cut short.
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x18, 0x05]);
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn decompression_bombs_are_refused_before_decoding() {
    // Within the side limit, but 16384×16384 RGBA at 16 bits is 2 GiB decoded.
    let err = input_error(encoder().encode(&[Input::Bytes(&png_bomb(16_384, 16_384, 16, 6))]).pop().unwrap());
    assert!(err.contains("16384×16384") && err.contains("MiB"), "{err}");
    let err = input_error(encoder().encode(&[Input::Bytes(&png_bomb(20, 70_000, 8, 0))]).pop().unwrap());
    assert_eq!(err, "image is 20×70000 pixels, more than the 16384 limit");
}

#[test]
fn bad_input_is_an_input_error_that_says_why() {
    let encode = |bytes: &[u8]| input_error(encoder().encode(&[Input::Bytes(bytes)]).pop().unwrap());
    assert_eq!(encode(b"just some text"), "not a JPEG/PNG/WebP image (starts with 0x6a 75 73 74 20 73 6f 6d)");
    assert!(encode(b"").contains("empty"));
    assert!(encode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00").contains("GIF image; only JPEG, PNG and WebP"));
    let text = input_error(encoder().encode(&[Input::Text("a photo of a cat")]).pop().unwrap());
    assert!(text.contains("text given to the image encoder"), "{text}");
    let huge = vec![0u8; kernelize_media::MAX_INPUT_BYTES + 1];
    assert!(encode(&huge).contains("more than the 64 MiB limit"));
}

/// Every fixture cut short at several lengths, and random bytes behind each format's
/// signature: an input error each time, never a panic, never a vector.
#[test]
fn truncated_and_random_bytes_never_panic() {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for name in [
        "coffee.jpg",
        "coffee-progressive.jpg",
        "chelsea.png",
        "astronaut-interlaced.png",
        "chelsea-q60.webp",
        "logo-rgba-lossless.webp",
        "moon-gray16.png",
        "astronaut-cmyk.jpg",
    ] {
        let bytes = read_fixture(name);
        for cut in [1, 2, 8, 20, 100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 10] {
            cases.push(bytes[..cut].to_vec());
        }
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    };
    for signature in [&b"\xff\xd8\xff"[..], b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 ", b""] {
        for n in [0, 5, 64, 4096] {
            let mut bytes = signature.to_vec();
            bytes.extend(random(n));
            cases.push(bytes);
        }
    }
    let inputs: Vec<Input<'_>> = cases.iter().map(|b| Input::Bytes(b)).collect();
    for (case, result) in cases.iter().zip(encoder().encode(&inputs)) {
        match result {
            Err(Error::Input(message)) => assert!(!message.is_empty()),
            // A JPEG cut near its end may still decode (the decoder fills the rest).
            Ok(vector) if case.len() > 1000 && case.starts_with(b"\xff\xd8") => assert_eq!(vector.len(), 1280),
            other => panic!("{} bytes starting {:02x?}: {other:?}", case.len(), &case[..case.len().min(8)]),
        }
    }
}

#[test]
fn one_bad_file_in_a_batch_fails_alone() {
    let good = read_fixture("rocket.jpg");
    let bad = read_fixture("chelsea.png")[..500].to_vec();
    let inputs = [Input::Bytes(&good), Input::Bytes(&bad), Input::Bytes(&good), Input::Text("x")];
    let results = encoder().encode(&inputs);
    assert_eq!(results.len(), 4);
    let (first, third) = (results[0].as_ref().unwrap(), results[2].as_ref().unwrap());
    assert_eq!(first, third, "the same image gives the same vector in a batch");
    assert!(matches!(results[1], Err(Error::Input(_))));
    assert!(matches!(results[3], Err(Error::Input(_))));
    let alone = encoder().encode(&[Input::Bytes(&good)]).pop().unwrap().unwrap();
    assert!(cosine(&alone, first) > 0.999_999, "single-image GEMMs differ from batch ones");
}

#[test]
fn a_missing_model_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = ImageEncoder::load(dir.path()).err().expect("no model in an empty directory").to_string();
    assert!(err.contains("kernelize models install EfficientNet-Lite0"), "{err}");
}

#[test]
fn encode_with_info_reports_format_size_and_label() {
    let coffee = read_fixture("coffee.jpg");
    let encoded = encoder().encode_with_info(&[Input::Bytes(&coffee)]).pop().unwrap().unwrap();
    assert_eq!(encoded.info["format"], "JPEG");
    assert_eq!((encoded.info["width"].as_u64(), encoded.info["height"].as_u64()), (Some(600), Some(400)));
    assert_eq!(encoded.info["label"], "espresso");
    assert_eq!(encoded.info["label_index"], 967);
    let plain = encoder().encode(&[Input::Bytes(&coffee)]).pop().unwrap().unwrap();
    assert_eq!(encoded.vector, plain);
    assert_eq!(*encoder().record(), kernelize_media::image::record());
}
