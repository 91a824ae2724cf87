//! The audio encoder against Resemblyzer itself, on the checked-in fixtures
//! (`tests/fixtures/audio/`, written with their reference vectors by
//! `scripts/media/audio_reference.py`): fidelity on every clip, search by voice, and
//! robustness on bad bytes.
//!
//! They need the real model: `kernelize models install resemblyzer` puts it in the models
//! directory (`$KERNELIZE_MODELS_DIR`, else `~/.local/share/kernelize/models`). Without it
//! every test that needs the model fails with that instruction; none passes silently.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly on broken fixtures")]

use kernelize_media::audio::{self, AudioEncoder};
use kernelize_media::{Encoder, Error, Input, Modality};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Minimum cosine similarity to Resemblyzer's vector, on every clip.
const MIN_COSINE: f64 = 0.999;
/// Voice search floors (measured: see `voice_search_finds_the_same_voice`).
const MIN_TOP1: f64 = 0.9;
const MIN_RECALL_AT_5: f64 = 0.9;

fn encoder() -> &'static AudioEncoder {
    static ENCODER: OnceLock<AudioEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let dir = AudioEncoder::default_model_dir();
        match AudioEncoder::load(&dir) {
            Ok(e) => e,
            Err(e) => panic!(
                "cannot load the audio model from {}: {e}\n\
                 run `kernelize models install resemblyzer` first (these tests never skip)",
                dir.display()
            ),
        }
    })
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio")
}

struct Clip {
    file: String,
    set: String,
    voice: String,
    duration_secs: f64,
    sample_rate: u32,
    channels: u16,
    embedding: Vec<f32>,
    bytes: Vec<u8>,
}

fn clips() -> &'static [Clip] {
    static CLIPS: OnceLock<Vec<Clip>> = OnceLock::new();
    CLIPS.get_or_init(|| {
        let doc: serde_json::Value =
            serde_json::from_slice(&fs_err::read(fixtures().join("reference.json")).unwrap()).unwrap();
        doc["clips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let file = c["file"].as_str().unwrap().to_owned();
                Clip {
                    bytes: fs_err::read(fixtures().join(&file)).unwrap(),
                    file,
                    set: c["set"].as_str().unwrap().to_owned(),
                    voice: c["voice"].as_str().unwrap().to_owned(),
                    duration_secs: c["duration_secs"].as_f64().unwrap(),
                    sample_rate: u32::try_from(c["sample_rate"].as_u64().unwrap()).unwrap(),
                    channels: u16::try_from(c["channels"].as_u64().unwrap()).unwrap(),
                    embedding: c["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
                }
            })
            .collect()
    })
}

/// Our vectors of every clip (one batch), in the order of [`clips`].
fn ours() -> &'static [Result<Vec<f32>, String>] {
    static OURS: OnceLock<Vec<Result<Vec<f32>, String>>> = OnceLock::new();
    OURS.get_or_init(|| {
        let inputs: Vec<Input<'_>> = clips().iter().map(|c| Input::Bytes(&c.bytes)).collect();
        encoder().encode(&inputs).into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

#[test]
fn fidelity_every_clip_matches_resemblyzer() {
    let clips = clips();
    assert!(clips.iter().filter(|c| c.set == "fidelity").count() >= 20);
    let mut worst = (f64::INFINITY, String::new());
    let mut failures = Vec::new();
    for (clip, ours) in clips.iter().zip(ours()) {
        if clip.voice == "silence" {
            // Resemblyzer embeds 1.6 s of zeros when its VAD trims everything; we refuse.
            let e = ours.as_ref().expect_err("silence has no voice");
            assert!(e.contains("no speech found"), "{}: {e}", clip.file);
            continue;
        }
        let v = ours.as_ref().unwrap_or_else(|e| panic!("{}: {e}", clip.file));
        assert_eq!(v.len(), 256);
        let norm: f64 = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{}: norm {norm}", clip.file);
        let cos = cosine(v, &clip.embedding);
        if cos < worst.0 {
            worst = (cos, clip.file.clone());
        }
        if cos < MIN_COSINE {
            failures.push(format!("{}: cosine {cos:.6}", clip.file));
        }
    }
    println!("audio fidelity: minimum cosine {:.6} ({}) over {} clips", worst.0, worst.1, clips.len() - 1);
    assert!(failures.is_empty(), "below {MIN_COSINE}:\n{}", failures.join("\n"));
}

#[test]
fn voice_search_finds_the_same_voice() {
    let set: Vec<(&Clip, &Vec<f32>)> = clips()
        .iter()
        .zip(ours())
        .filter(|(c, _)| c.set == "voice_search")
        .map(|(c, v)| (c, v.as_ref().unwrap_or_else(|e| panic!("{}: {e}", c.file))))
        .collect();
    let voices: std::collections::BTreeSet<&str> = set.iter().map(|(c, _)| c.voice.as_str()).collect();
    assert!(voices.len() >= 10, "{} voices", voices.len());
    let (mut top1, mut recall) = (0.0, 0.0);
    for (i, (q, qv)) in set.iter().enumerate() {
        let mut ranked: Vec<(f64, &str)> = set
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, (c, v))| (cosine(qv, v), c.voice.as_str()))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        if ranked[0].1 == q.voice {
            top1 += 1.0;
        }
        let same = set.iter().enumerate().filter(|&(j, (c, _))| j != i && c.voice == q.voice).count();
        let hits = ranked.iter().take(5).filter(|(_, v)| *v == q.voice).count();
        recall += hits as f64 / same.min(5) as f64;
    }
    let n = set.len() as f64;
    let (top1, recall) = (top1 / n, recall / n);
    println!(
        "audio voice search: {} voices x {} utterances: top-1 same voice {top1:.3}, recall@5 {recall:.3}",
        voices.len(),
        set.len() / voices.len()
    );
    assert!(top1 >= MIN_TOP1, "top-1 {top1:.3} < {MIN_TOP1}");
    assert!(recall >= MIN_RECALL_AT_5, "recall@5 {recall:.3} < {MIN_RECALL_AT_5}");
}

#[test]
fn probe_reads_the_headers() {
    for clip in clips() {
        let info = audio::probe(&clip.bytes).unwrap_or_else(|e| panic!("{}: {e}", clip.file));
        let ext = clip.file.rsplit('.').next().unwrap();
        let want = match ext {
            "wav" => "WAV",
            "flac" => "FLAC",
            "mp3" => "MP3",
            _ => "Ogg Vorbis",
        };
        assert_eq!(info.format, want, "{}", clip.file);
        assert_eq!(info.sample_rate, clip.sample_rate, "{}", clip.file);
        assert_eq!(info.channels, clip.channels, "{}", clip.file);
        if ext != "mp3" && ext != "ogg" {
            assert!((info.duration_secs - clip.duration_secs).abs() < 1e-3, "{}: {}", clip.file, info.duration_secs);
        }
    }
}

#[test]
fn embed_samples_equals_the_file() {
    let clip = clips().iter().find(|c| c.file == "fid_16k_m4.wav").unwrap();
    // A plain 16-bit PCM WAV: the "data" chunk after the "fmt " chunk.
    let b = &clip.bytes;
    let data = b.windows(4).position(|w| w == b"data").unwrap();
    let len = u32::from_le_bytes(b[data + 4..data + 8].try_into().unwrap()) as usize;
    let samples: Vec<f32> = b[data + 8..data + 8 + len]
        .chunks_exact(2)
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32_768.0)
        .collect();
    let from_samples = encoder().embed_samples(&samples, 16_000).unwrap();
    let from_file = encoder().embed_file(&clip.bytes).unwrap();
    assert!(cosine(&from_samples, &from_file) > 0.999_999);
    assert!(matches!(encoder().embed_samples(&samples, 1_000), Err(Error::Input(_))));
    assert!(matches!(encoder().embed_samples(&[], 16_000), Err(Error::Input(_))));
    assert!(matches!(encoder().embed_samples(&[f32::NAN; 16_000], 16_000), Err(Error::Input(_))));
}

#[test]
fn record_says_what_it_is() {
    let r = encoder().record();
    assert_eq!(r.modality, Modality::Audio);
    assert_eq!(r.model, "resemblyzer");
    assert_eq!(r.dim, 256);
    assert!(r.preprocessing.contains("16 kHz"));
}

#[test]
fn bad_bytes_are_input_errors_never_panics() {
    let enc = encoder();
    let text = enc.encode(&[Input::Text("hello")]);
    assert!(matches!(&text[0], Err(Error::Input(_))));
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut random = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8
    };
    for len in [0usize, 1, 4, 12, 44, 100, 4096, 100_000] {
        let bytes: Vec<u8> = (0..len).map(|_| random()).collect();
        let r = enc.encode(&[Input::Bytes(&bytes)]);
        assert!(matches!(&r[0], Err(Error::Input(_))), "{len} random bytes: {:?}", r[0]);
    }
    // Every fixture format cut short at many points, and with its middle scrambled: an
    // embedding or an input error, never a panic.
    for name in
        ["fid_en_m3.wav", "fid_fmt_m5.flac", "fid_fmt_m5.ogg", "fid_fmt_m5.mp3", "fid_u8_m4.wav", "fid_48k24_m4.flac"]
    {
        let clip = clips().iter().find(|c| c.file == name).unwrap();
        let n = clip.bytes.len();
        let mut cuts: Vec<Vec<u8>> =
            [4, 12, 40, 44, 60, 200, 1000, n / 3, n / 2, n - 1].iter().map(|&k| clip.bytes[..k].to_vec()).collect();
        let mut scrambled = clip.bytes.clone();
        for b in &mut scrambled[n / 4..n / 4 + 2000] {
            *b = random();
        }
        cuts.push(scrambled);
        let inputs: Vec<Input<'_>> = cuts.iter().map(|c| Input::Bytes(c)).collect();
        for (r, cut) in enc.encode(&inputs).iter().zip(&cuts) {
            match r {
                Ok(v) => assert_eq!(v.len(), 256),
                Err(Error::Input(_)) => {}
                Err(e) => panic!("{name} cut to {} bytes: {e}", cut.len()),
            }
        }
        // Header-only files have no audio.
        assert!(matches!(&enc.encode(&[Input::Bytes(&clip.bytes[..12])])[0], Err(Error::Input(_))));
    }
}

#[test]
fn one_bad_file_fails_only_itself() {
    let a = clips().iter().find(|c| c.file == "fid_en_m3.wav").unwrap();
    let b = clips().iter().find(|c| c.file == "fid_fmt_f3.ogg").unwrap();
    let out = encoder().encode(&[Input::Bytes(&a.bytes), Input::Bytes(b"not audio at all"), Input::Bytes(&b.bytes)]);
    assert_eq!(out.len(), 3);
    let e = out[1].as_ref().unwrap_err();
    assert!(matches!(e, Error::Input(_)));
    assert!(e.to_string().contains("not a WAV/FLAC/MP3/Ogg"), "{e}");
    assert!(cosine(out[0].as_ref().unwrap(), &a.embedding) > MIN_COSINE);
    assert!(cosine(out[2].as_ref().unwrap(), &b.embedding) > MIN_COSINE);
}

/// A WAV header for unsigned 8-bit mono PCM followed by `frames` samples of silence.
fn silent_u8_wav(rate: u32, frames: u32) -> Vec<u8> {
    let mut w = Vec::with_capacity(44 + frames as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + frames).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&8u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&frames.to_le_bytes());
    w.resize(44 + frames as usize, 128);
    w
}

#[test]
fn long_audio_is_refused_with_its_length() {
    let wav = silent_u8_wav(8_000, 8_000 * 3_600);
    let e = encoder().encode(&[Input::Bytes(&wav)]).remove(0).unwrap_err().to_string();
    assert_eq!(e, "audio is 3,600 s long, more than the 600 s limit");
    assert_eq!(audio::probe(&wav).unwrap_err().to_string(), e);
    // A header that claims an hour over a few bytes of data is refused the same way.
    let liar = &wav[..1_000];
    assert!(encoder().encode(&[Input::Bytes(liar)]).remove(0).unwrap_err().to_string().contains("600 s limit"));
    // Just under the limit is fine (and silent: no speech).
    let ok = silent_u8_wav(4_000, 4_000 * 599);
    let e = encoder().encode(&[Input::Bytes(&ok)]).remove(0).unwrap_err().to_string();
    assert!(e.contains("no speech found"), "{e}");
}
