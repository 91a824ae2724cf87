//! The image encoder: EfficientNet-Lite0, in process on the CPU.
//!
//! [`ImageEncoder`] turns the bytes of a JPEG, PNG or WebP file into the network's
//! 1,280-d globally average-pooled features (after the head convolution, BatchNorm and
//! ReLU6), L2-normalised: similar pictures get close vectors ("more like this",
//! near-duplicates). The same pass also gives the ImageNet classifier's labels
//! ([`ImageEncoder::classify`], [`ImageEncoder::encode_with_labels`]).
//!
//! The pipeline, each step matched against PyTorch by the fixture tests
//! (scripts/media/image_reference.py runs the reference, `efficientnet_lite_pytorch`):
//!
//! 1. decode, bounded ([`probe`] reads the header only; [`MAX_SIDE`], [`MAX_DECODED_BYTES`]),
//!    to 8-bit RGB as PIL's `convert("RGB")` does;
//! 2. TensorFlow's EfficientNet evaluation crop (the centre square of 224/256 of the
//!    shorter side), resized to 224 × 224 with torch's antialiased bicubic filter,
//!    `(x − 127) / 128`;
//! 3. the network, NHWC, BatchNorm folded, GEMMs for the 1×1 convolutions.
//!
//! A batch is spread over the rayon pool of the caller, one image per task.

mod decode;
mod net;
mod preprocess;

pub use decode::{ImageInfo, MAX_DECODED_BYTES, MAX_SIDE, probe};

use crate::encoder::{Encoded, Encoder, Input, gemm_parallelism};
use crate::error::{Error, Result};
use crate::safetensors_file::Weights;
use kernelize_embed::matmul::Parallelism;
use kernelize_store::{EncoderRecord, Modality};
use net::Network;
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ImageNet class names, one per line in index order (torchvision's
/// `_IMAGENET_CATEGORIES`).
const CLASS_NAMES: &str = include_str!("imagenet_classes.txt");

/// The preprocessing, in words, as the encoder record states it.
const PREPROCESSING: &str = "decoded to 8-bit RGB as PIL's convert(\"RGB\") (alpha dropped, \
     16-bit samples keep their high byte, EXIF orientation not applied); centre square crop \
     of side max(1, floor(min(w, h)·224/256)) (TF EfficientNet eval crop); resized to 224×224 \
     on float32 data with torch's antialiased bicubic filter (Keys a = −0.5, width then \
     height); (x − 127) / 128; features: global average of the head conv + BN + ReLU6 \
     (1280), L2-normalised";

/// One ImageNet label of an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    /// Class index, 0–999, in the usual ImageNet-1k order.
    pub index: usize,
    /// Short English name of the class (torchvision's), e.g. `"tabby"`.
    pub name: &'static str,
    /// Softmax probability of the class.
    pub probability: f32,
}

/// What one pass over an image gives: its vector, what its header says and its most
/// probable labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The L2-normalised 1,280-d features ([`Encoder::encode`]'s vector).
    pub vector: Vec<f32>,
    /// Format and size of the file.
    pub info: ImageInfo,
    /// The most probable ImageNet labels, most probable first.
    pub labels: Vec<Label>,
}

impl Analysis {
    /// As [`Encoder::encode_with_info`] reports it: `format`, `width`, `height` and, when
    /// there is one, the top label (`label`, `label_index`, `label_probability`).
    pub fn into_encoded(self) -> Encoded {
        let mut info = Map::new();
        info.insert("format".into(), Value::from(self.info.format));
        info.insert("width".into(), Value::from(self.info.width));
        info.insert("height".into(), Value::from(self.info.height));
        if let Some(top) = self.labels.first() {
            info.insert("label".into(), Value::from(top.name));
            info.insert("label_index".into(), Value::from(top.index));
            // Three decimals: a label's probability is a hint, not a measurement.
            info.insert("label_probability".into(), Value::from((f64::from(top.probability) * 1e3).round() / 1e3));
        }
        Encoded { vector: self.vector, info }
    }
}

/// The record of the image encoder (what a collection of images stores), known without
/// loading the model.
pub fn record() -> EncoderRecord {
    EncoderRecord {
        modality: Modality::Image,
        model: kernelize_embed::models::EFFICIENTNET_LITE0.name.to_owned(),
        dim: net::FEATURES,
        preprocessing: PREPROCESSING.to_owned(),
    }
}

/// EfficientNet-Lite0 behind [`Encoder`]: image bytes to 1,280-d vectors and labels.
pub struct ImageEncoder {
    network: Network,
    record: EncoderRecord,
}

impl ImageEncoder {
    /// Loads the model from its directory (`model.safetensors`, the converted PyTorch
    /// weights), folding each BatchNorm into its convolution. A missing file is
    /// [`Error::ModelMissing`], a tensor of the wrong name or shape [`Error::Corrupt`].
    pub fn load(dir: &Path) -> Result<ImageEncoder> {
        let weights = Weights::open(dir, kernelize_embed::models::EFFICIENTNET_LITE0.name)?;
        let network = Network::load(&weights)?;
        Ok(ImageEncoder { network, record: record() })
    }

    /// The model's directory in the models directory
    /// ([`kernelize_embed::models::model_dir`]).
    pub fn default_model_dir() -> PathBuf {
        kernelize_embed::models::model_dir(kernelize_embed::models::EFFICIENTNET_LITE0.name)
    }

    /// The `top` most probable ImageNet labels of an image file (at most 1,000).
    pub fn classify(&self, bytes: &[u8], top: usize) -> Result<Vec<Label>> {
        Ok(self.run(bytes, top, gemm_parallelism(1))?.labels)
    }

    /// Vector, header facts and `top` labels of every input in one pass each, spread over
    /// the rayon pool; a bad input fails alone.
    pub fn encode_with_labels(&self, inputs: &[Input<'_>], top: usize) -> Vec<Result<Analysis>> {
        let par = gemm_parallelism(inputs.len());
        inputs
            .par_iter()
            .map(|input| match input {
                Input::Bytes(bytes) => self.run(bytes, top, par),
                Input::Text(_) => Err(Error::input("text given to the image encoder; it takes image files")),
            })
            .collect()
    }

    fn run(&self, bytes: &[u8], top: usize, par: Parallelism) -> Result<Analysis> {
        let (info, image) = decode::decode(bytes)?;
        let input = preprocess::preprocess(&image);
        drop(image);
        let features = self.network.features(&input, par);
        let labels = if top == 0 { Vec::new() } else { top_labels(&self.network.logits(&features), top) };
        let norm = features.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        // ReLU6 outputs are never negative; an all-zero pooled vector (possible only in
        // principle) stays zero rather than becoming NaN.
        let vector =
            if norm > 0.0 { features.iter().map(|v| (f64::from(*v) / norm) as f32).collect() } else { features };
        Ok(Analysis { vector, info, labels })
    }
}

impl Encoder for ImageEncoder {
    fn record(&self) -> &EncoderRecord {
        &self.record
    }

    fn encode(&self, inputs: &[Input<'_>]) -> Vec<Result<Vec<f32>>> {
        self.encode_with_labels(inputs, 0).into_iter().map(|r| r.map(|a| a.vector)).collect()
    }

    /// The vector plus `format`, `width`, `height` and the top ImageNet label
    /// ([`Analysis::into_encoded`]).
    fn encode_with_info(&self, inputs: &[Input<'_>]) -> Vec<Result<Encoded>> {
        self.encode_with_labels(inputs, 1).into_iter().map(|r| r.map(Analysis::into_encoded)).collect()
    }
}

/// The ImageNet class names, index order.
fn class_names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| CLASS_NAMES.lines().collect())
}

/// The `top` most probable classes of `logits` (softmax, computed in f64).
fn top_labels(logits: &[f32], top: usize) -> Vec<Label> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exp: Vec<f64> = logits.iter().map(|&v| f64::from(v - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(top)
        .map(|index| Label {
            index,
            name: class_names().get(index).copied().unwrap_or("unknown"),
            probability: (exp[index] / total) as f32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_a_thousand_class_names() {
        assert_eq!(class_names().len(), net::CLASSES);
        assert_eq!(class_names()[281], "tabby");
        assert!(class_names().iter().all(|n| !n.is_empty() && n.trim() == *n));
    }

    #[test]
    fn labels_are_the_softmax_top() {
        let mut logits = vec![0.0f32; net::CLASSES];
        logits[7] = 3.0;
        logits[2] = 2.0;
        let labels = top_labels(&logits, 2);
        assert_eq!(labels.iter().map(|l| l.index).collect::<Vec<_>>(), [7, 2]);
        let e = std::f64::consts::E;
        let total = e.powi(3) + e.powi(2) + 998.0;
        assert!((f64::from(labels[0].probability) - e.powi(3) / total).abs() < 1e-6);
        assert_eq!(labels[0].name, "cock");
        assert_eq!(top_labels(&logits, 5000).len(), net::CLASSES);
    }
}
