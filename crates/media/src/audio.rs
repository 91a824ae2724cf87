//! The audio encoder: Resemblyzer's voice encoder (a GE2E speaker encoder), reproduced.
//!
//! [`AudioEncoder::encode`] computes, for one audio file, what
//! `VoiceEncoder().embed_utterance(preprocess_wav(path))` computes in Resemblyzer 0.1.4:
//!
//! 1. decode (WAV, FLAC, MP3, Ogg Vorbis) and average the channels, as `librosa.load`;
//! 2. resample to 16 kHz (a windowed-sinc filter close to librosa's soxr "HQ", see
//!    `preprocess.rs`);
//! 3. raise the level to -30 dBFS RMS (never lower it);
//! 4. trim long silences: WebRTC's voice activity detector (mode 3) on 30 ms windows,
//!    smoothed and dilated;
//! 5. cut the result into partial utterances of 1.6 s, 1.3 per second, and compute 40 mel
//!    bands (25 ms window, 10 ms hop, power, not logarithmic) for each;
//! 6. run each partial through the 3-layer LSTM, `Linear` and ReLU, L2-normalise, average
//!    the partials and L2-normalise the mean: a 256-d speaker embedding, all components ≥ 0.
//!
//! Two cases differ from the reference on purpose, both audio in which the VAD finds no
//! speech at all (silence, digital zeros, clips shorter than 30 ms): the reference then
//! embeds 1.6 s of zeros, the same vector whatever the input was, which would make every
//! silent file "the same voice"; here they are an [`Error::Input`] saying no speech was
//! found. (On all-zero audio the reference's volume normalisation also divides by zero; its
//! NaN samples are trimmed away by the VAD and end in that same constant vector.)
//!
//! Untrusted input is bounded: [`crate::MAX_INPUT_BYTES`], 600 s of decoded audio
//! ([`MAX_DURATION_SECS`]), 4 to 96 kHz, 32 channels (at most 230 MB of decoded samples per
//! file); a malformed file is an [`Error::Input`] for that file alone, and a panic inside
//! a third-party decoder is caught and reported as one.

mod decode;
mod lstm;
mod mel;
mod preprocess;

use crate::encoder::{Encoded, Encoder, Input, gemm_parallelism};
use crate::error::{Error, Result};
use crate::safetensors_file::Weights;
use kernelize_store::{EncoderRecord, Modality};
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub use decode::MAX_DURATION_SECS;

/// What [`probe`] finds out about an audio file without decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioInfo {
    /// Container/codec: `"WAV"`, `"FLAC"`, `"MP3"` or `"Ogg Vorbis"`.
    pub format: &'static str,
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// Number of channels.
    pub channels: u16,
    /// Length in seconds, from the container's frame count (0 when the container does not
    /// state it, e.g. an MP3 without a Xing/LAME header).
    pub duration_secs: f64,
}

/// Format, rate, channels and duration of an audio file, from its headers; checks the same
/// limits as [`AudioEncoder::encode`] (size, rate, channels, stated duration).
pub fn probe(bytes: &[u8]) -> Result<AudioInfo> {
    let p = decode::open(bytes)?;
    Ok(AudioInfo {
        format: p.format,
        sample_rate: p.sample_rate,
        channels: p.channels,
        duration_secs: p.frames.map_or(0.0, |n| n as f64 / f64::from(p.sample_rate)),
    })
}

/// The audio encoder's record, known without loading the model.
pub(crate) fn record() -> EncoderRecord {
    EncoderRecord {
        modality: Modality::Audio,
        model: kernelize_embed::models::RESEMBLYZER.name.to_owned(),
        dim: lstm::EMBED,
        preprocessing: "mono, resampled to 16 kHz, normalised to -30 dBFS (raise only), long silences trimmed by \
                        WebRTC VAD (mode 3, 30 ms), 40 mel bands (25 ms window, 10 ms hop), partials of 1.6 s at \
                        1.3/s, mean of partial embeddings"
            .to_owned(),
    }
}

/// Resemblyzer's voice encoder: audio files to 256-d speaker embeddings (see the module
/// documentation for the pipeline).
pub struct AudioEncoder {
    network: lstm::Network,
    front_end: mel::MelFrontEnd,
    record: EncoderRecord,
}

impl AudioEncoder {
    /// Loads `dir/model.safetensors` (`kernelize models install resemblyzer`).
    pub fn load(dir: &Path) -> Result<AudioEncoder> {
        let weights = Weights::open(dir, kernelize_embed::models::RESEMBLYZER.name)?;
        let network = lstm::Network::load(&weights)?;
        Ok(AudioEncoder { network, front_end: mel::MelFrontEnd::new(), record: record() })
    }

    /// The model's directory under the models directory
    /// ([`kernelize_embed::models::model_dir`]).
    pub fn default_model_dir() -> PathBuf {
        kernelize_embed::models::model_dir(kernelize_embed::models::RESEMBLYZER.name)
    }

    /// The embedding of one audio file's bytes.
    pub fn embed_file(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        self.encode(&[Input::Bytes(bytes)])
            .pop()
            .unwrap_or_else(|| Err(Error::input("internal error: no result for the file")))
    }

    /// Decoding and the front end of one file: its mel frames, partial starts and info.
    fn prepare_file(&self, bytes: &[u8]) -> Result<Prepared> {
        let d = decode::decode(bytes)?;
        let (frames, starts) = self.front(&d.samples, d.sample_rate)?;
        let mut info = Map::new();
        info.insert("format".into(), Value::from(d.format));
        info.insert("sample_rate".into(), Value::from(d.sample_rate));
        info.insert("channels".into(), Value::from(d.channels));
        info.insert("duration_secs".into(), Value::from(d.samples.len() as f64 / f64::from(d.sample_rate)));
        Ok(Prepared { frames, starts, info })
    }

    /// The embedding of mono PCM samples in [-1, 1] at `sample_rate`, for callers that
    /// already decoded the audio (`embed_utterance(preprocess_wav(samples, sample_rate))`).
    pub fn embed_samples(&self, samples: &[f32], sample_rate: u32) -> Result<Vec<f32>> {
        decode::check_rate(sample_rate)?;
        decode::check_duration(samples.len() as u64, sample_rate)?;
        if samples.is_empty() {
            return Err(Error::input("no audio samples"));
        }
        let (frames, starts) = self.front(samples, sample_rate)?;
        self.network.embed(&frames, &starts, gemm_parallelism(1))
    }

    /// Resampling, volume, VAD trimming and the mel spectrogram: the frames and the start
    /// frame of every partial utterance.
    fn front(&self, samples: &[f32], rate: u32) -> Result<(Vec<f32>, Vec<usize>)> {
        if samples.iter().any(|x| !x.is_finite()) {
            return Err(Error::input("the audio has non-finite (NaN or infinite) samples"));
        }
        let mut wav = preprocess::resample(samples, rate)?;
        preprocess::normalize_volume(&mut wav);
        let wav = preprocess::trim_long_silences(&wav);
        if wav.is_empty() {
            return Err(Error::input(
                "no speech found: the voice activity detector trimmed the whole clip (silence, or shorter than 30 ms)",
            ));
        }
        let (starts, wave_len) = mel::partial_starts(wav.len());
        // Padding with zeros up to the last partial's end is implicit: frames read zeros
        // past the end of the waveform, as they read np.pad's zeros in the reference.
        let frames = self.front_end.frames(&wav, wave_len / mel::HOP);
        Ok((frames, starts))
    }
}

impl Encoder for AudioEncoder {
    fn record(&self) -> &EncoderRecord {
        &self.record
    }

    fn encode(&self, inputs: &[Input<'_>]) -> Vec<Result<Vec<f32>>> {
        self.encode_with_info(inputs).into_iter().map(|r| r.map(|e| e.vector)).collect()
    }

    /// Each file's front end in parallel, then the partials of all of them in batches of
    /// `PARTIAL_BATCH` (the recurrence reads each step's weights once for the whole
    /// batch), then each file's mean.
    fn encode_with_info(&self, inputs: &[Input<'_>]) -> Vec<Result<Encoded>> {
        let parallelism = gemm_parallelism(inputs.len());
        let prepared: Vec<Result<Prepared>> = inputs
            .par_iter()
            .map(|input| match input {
                Input::Bytes(bytes) => self.prepare_file(bytes),
                Input::Text(_) => Err(Error::input("the audio encoder takes audio files, not text")),
            })
            .collect();
        let parts: Vec<(usize, &[f32], usize)> = prepared
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|p| (i, p)))
            .flat_map(|(i, p)| p.starts.iter().map(move |&s| (i, p.frames.as_slice(), s)))
            .collect();
        let batches: Vec<Result<Vec<f32>>> = parts
            .par_chunks(PARTIAL_BATCH)
            .map(|chunk| {
                let batch: Vec<(&[f32], usize)> = chunk.iter().map(|&(_, mel, s)| (mel, s)).collect();
                self.network.partials(&batch, parallelism)
            })
            .collect();
        // Each file's partial embeddings, in order.
        let mut per_file: Vec<Result<Vec<f32>>> = prepared.iter().map(|_| Ok(Vec::new())).collect();
        for (chunk, result) in parts.chunks(PARTIAL_BATCH).zip(batches) {
            match result {
                Ok(rows) => {
                    for (&(i, _, _), row) in chunk.iter().zip(rows.chunks_exact(lstm::EMBED)) {
                        if let Some(Ok(v)) = per_file.get_mut(i) {
                            v.extend_from_slice(row);
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for &(i, _, _) in chunk {
                        if let Some(slot) = per_file.get_mut(i) {
                            *slot = Err(Error::input(msg.clone()));
                        }
                    }
                }
            }
        }
        prepared
            .into_iter()
            .zip(per_file)
            .map(|(p, partials)| {
                let p = p?;
                let vector = lstm::mean_embedding(&partials?)?;
                Ok(Encoded { vector, info: p.info })
            })
            .collect()
    }
}

/// Partial utterances run through the network together, across the files of a batch.
const PARTIAL_BATCH: usize = 32;

/// One file after decoding and the front end.
struct Prepared {
    frames: Vec<f32>,
    starts: Vec<usize>,
    info: Map<String, Value>,
}
