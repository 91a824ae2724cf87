//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout `kernelize-media`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading an encoder or encoding content.
///
/// Classes: [`Error::ModelMissing`] is a user error (install the model), [`Error::Corrupt`]
/// means the model files are damaged or not the expected model, [`Error::Input`] is one
/// input that cannot be encoded (not an image, a truncated file, an unsupported codec,
/// too large) and says why, [`Error::Io`] is environmental, [`Error::Text`] comes from
/// the text model, [`Error::Cancelled`] is the caller's own request to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the model directory does not exist.
    #[error(
        "model file {} not found; install the model with `kernelize models install {model}` \
         (it goes to the models directory: $KERNELIZE_MODELS_DIR when set, else \
         ~/.local/share/kernelize/models)",
        path.display()
    )]
    ModelMissing {
        /// The model's name.
        model: &'static str,
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A model file exists but cannot be used (truncated, wrong shape, wrong model).
    #[error("model file {} is invalid: {reason}", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it, including the tensor name where known.
        reason: String,
    },
    /// One input cannot be encoded.
    #[error("{0}")]
    Input(String),
    /// Reading a file failed (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The text model failed.
    #[error(transparent)]
    Text(#[from] kernelize_embed::Error),
    /// The caller asked to stop before every input was encoded.
    #[error("encoding cancelled")]
    Cancelled,
}

impl Error {
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn input(reason: impl Into<String>) -> Self {
        Error::Input(reason.into())
    }
}
