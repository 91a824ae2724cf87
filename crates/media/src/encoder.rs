//! The one encoder abstraction over text, images and audio.

use crate::error::{Error, Result};
use crate::{AudioEncoder, ImageEncoder};
use kernelize_embed::Embedder;
use kernelize_store::{EncoderRecord, Modality};
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;

/// Largest encoded input (one image or audio file) any encoder accepts: 64 MiB.
pub const MAX_INPUT_BYTES: usize = 64 << 20;

/// One input to an encoder: text for the text model, the bytes of a file (JPEG, PNG,
/// WebP; WAV, FLAC, MP3, Ogg) for the image and audio models.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A text.
    Text(&'a str),
    /// The bytes of an image or audio file.
    Bytes(&'a [u8]),
}

/// Turns content into vectors. Implementations are thread-safe and spread a batch
/// over the rayon pool they are called from.
pub trait Encoder: Send + Sync {
    /// Modality, model, dimension and preprocessing, as collections and kernels record it.
    fn record(&self) -> &EncoderRecord;

    /// Output dimension.
    fn dim(&self) -> usize {
        self.record().dim
    }

    /// One L2-normalised vector per input, or the reason that input cannot be encoded;
    /// a bad input never fails the others.
    fn encode(&self, inputs: &[Input<'_>]) -> Vec<Result<Vec<f32>>>;

    /// [`Encoder::encode`] plus what the encoder learnt about each input on the way
    /// (an image's format, size and top ImageNet label; a clip's format, sample rate,
    /// channels and duration), which ingestion keeps in the record's `media` metadata.
    fn encode_with_info(&self, inputs: &[Input<'_>]) -> Vec<Result<Encoded>> {
        self.encode(inputs).into_iter().map(|r| r.map(|vector| Encoded { vector, info: Map::new() })).collect()
    }
}

/// A vector and what the encoder learnt about its input.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The L2-normalised vector.
    pub vector: Vec<f32>,
    /// Facts about the input, as metadata (`format`, `width`, `height`, `label`, `duration_secs`, ...).
    pub info: Map<String, Value>,
}

/// The bytes of an image or audio file, at most [`MAX_INPUT_BYTES`] (read no further);
/// a file that cannot be opened or read, or is larger, is an [`Error::Input`] naming it.
pub fn read_media_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| Error::input(format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Error::input(format!(
            "{} is larger than {MAX_INPUT_BYTES} bytes, the limit for one media file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// How the GEMMs of one input's forward pass may run: a single input may use the whole
/// rayon pool; in a batch each input (or group of inputs) is one task and its GEMMs stay
/// on its thread.
pub(crate) fn gemm_parallelism(batch: usize) -> kernelize_embed::matmul::Parallelism {
    let threads = rayon::current_num_threads();
    if batch == 1 && threads > 1 {
        kernelize_embed::matmul::Parallelism::Rayon(threads)
    } else {
        kernelize_embed::matmul::Parallelism::None
    }
}

/// Facts about a file stored with its record as `metadata.media`: where it came from
/// (`source`: a path, or how it arrived), its SHA-256 (`sha256`, hex) and size (`bytes`),
/// then what the encoder learnt ([`Encoded::info`]).
pub fn media_metadata(source: &str, bytes: &[u8], info: Map<String, Value>) -> Map<String, Value> {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut m = Map::new();
    m.insert("source".into(), Value::from(source));
    m.insert("sha256".into(), Value::from(hex));
    m.insert("bytes".into(), Value::from(bytes.len()));
    m.extend(info);
    m
}

/// Encoders loaded on first use from the models directory, one per modality, shared by
/// every caller of a process (the server, the Python package). A failed load is not
/// remembered: a model installed later is picked up by the next call.
pub struct EncoderCache {
    loaded: std::sync::Mutex<Vec<(Modality, Arc<dyn Encoder>)>>,
}

impl EncoderCache {
    /// An empty cache.
    pub const fn new() -> EncoderCache {
        EncoderCache { loaded: std::sync::Mutex::new(Vec::new()) }
    }

    /// The encoder of `modality`, loaded now if it is not yet (a blocking call: it reads
    /// the weights).
    pub fn get(&self, modality: Modality) -> Result<Arc<dyn Encoder>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, e)) = loaded.iter().find(|(m, _)| *m == modality) {
            return Ok(e.clone());
        }
        let e: Arc<dyn Encoder> = Arc::from(load_encoder(modality, &kernelize_embed::models::models_dir())?);
        loaded.push((modality, e.clone()));
        Ok(e)
    }
}

impl Default for EncoderCache {
    fn default() -> Self {
        EncoderCache::new()
    }
}

/// The record of the encoder Kernelize uses for `modality` (what a collection created
/// with that modality stores), known without loading the model.
pub fn encoder_record(modality: Modality) -> EncoderRecord {
    match modality {
        Modality::Text => EncoderRecord {
            modality,
            model: kernelize_embed::models::MINILM.name.to_owned(),
            dim: TEXT_DIM,
            preprocessing: TEXT_PREPROCESSING.to_owned(),
        },
        Modality::Image => crate::image::record(),
        Modality::Audio => crate::audio::record(),
    }
}

/// all-MiniLM-L6-v2's output dimension.
const TEXT_DIM: usize = 384;
const TEXT_PREPROCESSING: &str = "WordPiece tokens (uncased), truncated to 256; mean pooling; L2 normalisation";

/// The encoder of `modality`, loaded from its directory under `models_root` (the models
/// directory, [`kernelize_embed::models::models_dir`], unless the caller has another).
pub fn load_encoder(modality: Modality, models_root: &Path) -> Result<Box<dyn Encoder>> {
    Ok(match modality {
        Modality::Text => Box::new(TextEncoder::load(&models_root.join(kernelize_embed::models::MINILM.name))?),
        Modality::Image => {
            Box::new(ImageEncoder::load(&models_root.join(kernelize_embed::models::EFFICIENTNET_LITE0.name))?)
        }
        Modality::Audio => Box::new(AudioEncoder::load(&models_root.join(kernelize_embed::models::RESEMBLYZER.name))?),
    })
}

/// The text model (all-MiniLM-L6-v2) behind [`Encoder`].
pub struct TextEncoder {
    embedder: Embedder,
    record: EncoderRecord,
}

impl TextEncoder {
    /// Loads the model from its directory.
    pub fn load(dir: &Path) -> Result<TextEncoder> {
        Ok(TextEncoder::new(Embedder::load(dir)?))
    }

    /// Wraps an embedder already loaded.
    pub fn new(embedder: Embedder) -> TextEncoder {
        let record = EncoderRecord { dim: embedder.dim(), ..encoder_record(Modality::Text) };
        TextEncoder { embedder, record }
    }

    /// The embedder inside.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }
}

impl Encoder for TextEncoder {
    fn record(&self) -> &EncoderRecord {
        &self.record
    }

    fn encode(&self, inputs: &[Input<'_>]) -> Vec<Result<Vec<f32>>> {
        let texts: Vec<Option<&str>> = inputs
            .iter()
            .map(|i| match i {
                Input::Text(t) => Some(*t),
                Input::Bytes(b) => std::str::from_utf8(b).ok(),
            })
            .collect();
        let good: Vec<&str> = texts.iter().flatten().copied().collect();
        let mut vectors = match self.embedder.embed(&good) {
            Ok(v) => v.into_iter(),
            Err(e) => {
                let msg = e.to_string();
                return inputs.iter().map(|_| Err(Error::input(msg.clone()))).collect();
            }
        };
        texts
            .iter()
            .map(|t| match t {
                Some(_) => vectors.next().ok_or_else(|| Error::input("the text model returned too few vectors")),
                None => Err(Error::input("not UTF-8 text")),
            })
            .collect()
    }
}
