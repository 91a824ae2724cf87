//! The crate's one error type.

use std::path::PathBuf;

/// Result alias used throughout `kernelize-embed`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading the model or embedding text.
///
/// Classes: [`Error::ModelMissing`] and [`Error::InvalidArgument`] are user
/// errors (fix the installation or the call), [`Error::Corrupt`] means the
/// model files are damaged or not the expected model, [`Error::Io`] is
/// environmental, [`Error::Tokenizer`] wraps a failure inside the tokenizer,
/// [`Error::Cancelled`] is the caller's own request to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the model directory does not exist.
    #[error(
        "model file {} not found; install the model with `kernelize models install` \
         (it goes to the models directory: $KERNELIZE_MODELS_DIR when set, else \
         ~/.local/share/kernelize/models)",
        path.display()
    )]
    ModelMissing {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A model file exists but cannot be used (truncated, wrong shape, wrong model).
    #[error("model file {} is invalid: {reason}", path.display())]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it, including the tensor name or offset where known.
        reason: String,
    },
    /// Reading a file failed (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The tokenizer rejected its configuration or an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An argument is out of range (for example `overlap >= max_tokens` in `chunk`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`Embedder::embed_cancellable`](crate::Embedder::embed_cancellable) was told to
    /// stop before every text was embedded.
    #[error("embedding cancelled")]
    Cancelled,
}

impl Error {
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn tokenizer(err: impl std::fmt::Display) -> Self {
        Error::Tokenizer(err.to_string())
    }
}
