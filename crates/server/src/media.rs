//! Image and audio collections: the encoders (loaded on first use from the models
//! directory), base64 media in requests, and `metadata.media` on records.

use crate::engine::Cancel;
use crate::error::{ApiError, quote};
use base64::Engine as _;
use kernelize_media::{Encoded, Encoder, Input, MAX_INPUT_BYTES, Modality};
use kernelize_store::CollectionConfig;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Files encoded between two checks of the request's cancellation.
const ENCODE_CHUNK: usize = 16;

/// The image and audio encoders, each loaded when first needed.
#[derive(Default)]
pub struct MediaEncoders(kernelize_media::EncoderCache);

impl MediaEncoders {
    /// The encoder of an image or audio collection, or 503 saying how to install it.
    /// Loads it on first use (call from a blocking context).
    pub fn get(&self, modality: Modality) -> Result<Arc<dyn Encoder>, ApiError> {
        if modality == Modality::Text {
            return Err(ApiError::internal("text is embedded by the text model"));
        }
        self.0.get(modality).map_err(|e| ApiError::unavailable(format!("the {modality} encoder is unavailable: {e}")))
    }
}

/// The collection's modality when it is image or audio (its records bring `media`).
pub fn media_modality(cfg: &CollectionConfig) -> Option<Modality> {
    match cfg.modality() {
        Modality::Text => None,
        m => Some(m),
    }
}

/// The bytes of a base64 media field (`what` names it in errors), within the size limit.
pub fn decode(what: &str, b64: &str) -> Result<Vec<u8>, ApiError> {
    // 4 base64 characters carry 3 bytes; refuse before decoding anything too large.
    if b64.len() / 4 * 3 > MAX_INPUT_BYTES + 3 {
        return Err(ApiError::invalid(format!("{what}: the file is larger than {MAX_INPUT_BYTES} bytes")));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| ApiError::invalid(format!("{what}: not base64 ({e})")))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(ApiError::invalid(format!("{what}: the file is larger than {MAX_INPUT_BYTES} bytes")));
    }
    if bytes.is_empty() {
        return Err(ApiError::invalid(format!("{what}: the file is empty")));
    }
    Ok(bytes)
}

/// Encodes files in chunks, checking `cancel` between them; the first bad file is a
/// 400 naming it (`name(i)`).
pub fn encode_all(
    encoder: &dyn Encoder,
    files: &[Vec<u8>],
    name: &dyn Fn(usize) -> String,
    cancel: &Cancel,
) -> Result<Vec<Encoded>, ApiError> {
    let mut out = Vec::with_capacity(files.len());
    for (c, chunk) in files.chunks(ENCODE_CHUNK).enumerate() {
        cancel.check()?;
        let inputs: Vec<Input<'_>> = chunk.iter().map(|b| Input::Bytes(b)).collect();
        for (j, r) in encoder.encode_with_info(&inputs).into_iter().enumerate() {
            out.push(r.map_err(|e| ApiError::invalid(format!("{}: {e}", name(c * ENCODE_CHUNK + j))))?);
        }
    }
    Ok(out)
}

/// A record's metadata with `media` added; a client's own `media` key is refused.
pub fn with_media(
    what: &str,
    metadata: Option<Map<String, Value>>,
    media: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let mut m = metadata.unwrap_or_default();
    if m.contains_key("media") {
        return Err(ApiError::invalid(format!(
            "{what}: the metadata key \"media\" is kept for what the server records about the file"
        )));
    }
    m.insert("media".into(), Value::Object(media));
    Ok(m)
}

/// The error for `media` sent to a collection without an image or audio encoder.
pub fn not_a_media_collection(what: &str, name: &str) -> ApiError {
    ApiError::invalid(format!(
        "{what}: collection {} has no image or audio encoder (create it with \"modality\": \"image\" or \"audio\")",
        quote(name)
    ))
}

/// The media type of a file by the `format` the encoder recorded.
pub fn media_type(format: &str) -> &'static str {
    match format.to_ascii_lowercase().as_str() {
        "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "mp3" => "audio/mpeg",
        "ogg" | "ogg vorbis" => "audio/ogg",
        _ => "application/octet-stream",
    }
}
