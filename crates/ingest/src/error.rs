//! The crate's one error type, the [`Location`] of a bad row, and the failure classes.

use std::fmt;
use std::path::{Path, PathBuf};

/// Result with the ingestion [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in an input file a row (or a problem with it) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A line of a text format (JSONL, CSV), counted from 1; the column (from 1, in
    /// characters of the line as the JSON parser counts them) when a syntax error
    /// pins one.
    Line {
        /// Line number, from 1.
        line: u64,
        /// Column, from 1, when known.
        column: Option<u64>,
    },
    /// A row of a columnar or tensor format (Parquet, safetensors, `.npy`), counted from 0.
    Row(u64),
    /// A file of a folder (media ingestion), counted from 0 in sorted path order; the
    /// location's file is that file.
    File(u64),
}

impl Position {
    /// A line without a column.
    pub fn line(line: u64) -> Position {
        Position::Line { line, column: None }
    }

    /// The line or row number, whichever this is.
    pub fn line_or_row(&self) -> u64 {
        match *self {
            Position::Line { line, .. } => line,
            Position::Row(row) | Position::File(row) => row,
        }
    }
}

/// The file, line or row, and field of a bad row.
///
/// Displays as `data.jsonl:3:17 (field "vector")` for text formats and
/// `vectors.npy row 41 (field "vector")` for row formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The input file.
    pub file: PathBuf,
    /// Line (text formats, from 1) or row (columnar and tensor formats, from 0).
    pub position: Position,
    /// The field (JSON key, CSV column, Parquet column, or `vector` / `id` for tensors)
    /// at fault, when the problem is one field's.
    pub field: Option<String>,
}

impl Location {
    /// A location without a field.
    pub fn new(file: &Path, position: Position) -> Location {
        Location { file: file.to_path_buf(), position, field: None }
    }

    /// The same location, naming a field.
    pub fn with_field(mut self, field: impl Into<String>) -> Location {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.position {
            Position::Line { line, column: Some(column) } => write!(f, "{file}:{line}:{column}")?,
            Position::Line { line, column: None } => write!(f, "{file}:{line}")?,
            Position::Row(row) => write!(f, "{file} row {row}")?,
            Position::File(_) => write!(f, "{file}")?,
        }
        if let Some(field) = &self.field {
            write!(f, " (field {field:?})")?;
        }
        Ok(())
    }
}

/// What kind of failure an [`Error`] is; callers decide behaviour (exit code, HTTP
/// status, retry) from this, not from message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input file, the options or the installation is wrong; retrying fails again.
    User,
    /// The operating system refused (I/O error, disk full); may succeed later.
    Transient,
    /// Stored bytes (the model files or the collection) are damaged.
    Corruption,
    /// The collection refuses writes until it is reopened.
    Fatal,
    /// A bug in Kernelize.
    Internal,
}

/// Errors of ingestion.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A row of the input is bad: malformed, a field of the wrong type, missing id,
    /// a vector of the wrong dimension or with a non-finite value.
    #[error("{location}: {reason}")]
    Row {
        /// The file, line or row, and field.
        location: Box<Location>,
        /// What is wrong.
        reason: String,
    },
    /// A row has text but no vector, and no embedder was given to embed it.
    #[error(
        "{location}: the row has text but no vector, and no embedder was given to embed it \
         (install the model with `kernelize models install`, or supply vectors)"
    )]
    EmbedderRequired {
        /// The first row that needed embedding.
        location: Box<Location>,
    },
    /// The input file as a whole is unusable: bad header or schema, unsupported dtype,
    /// no or several candidate tensors, truncated data, ids file of the wrong length.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The options are invalid (unknown format, batch size out of range, overlap not
    /// below the chunk size, an option the format does not take).
    #[error("invalid ingest options: {0}")]
    Options(String),
    /// Reading an input file failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The embedder failed.
    #[error("embedding: {0}")]
    Embed(#[from] kernelize_embed::Error),
    /// The store refused or failed a write.
    #[error(transparent)]
    Store(#[from] kernelize_store::Error),
    /// Ingestion stopped at `error`; the batches before it were written and
    /// acknowledged, nothing of the failing batch was.
    #[error(
        "{error}\ningestion stopped: {records_written} records in {batches_written} batches before it were \
         written and acknowledged; nothing of the failing batch was written"
    )]
    Stopped {
        /// Records written and acknowledged before the failure.
        records_written: u64,
        /// Batches written and acknowledged before the failure.
        batches_written: u64,
        /// The failure.
        error: Box<Error>,
    },
    /// A bug: an internal invariant failed (for example the reader thread panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Classifies the failure.
    pub fn class(&self) -> ErrorClass {
        use kernelize_store::ErrorClass as S;
        match self {
            Error::Row { .. } | Error::EmbedderRequired { .. } | Error::File { .. } | Error::Options(_) => {
                ErrorClass::User
            }
            Error::Io { .. } => ErrorClass::Transient,
            Error::Embed(e) => match e {
                kernelize_embed::Error::Corrupt { .. } => ErrorClass::Corruption,
                kernelize_embed::Error::Io(_) => ErrorClass::Transient,
                _ => ErrorClass::User,
            },
            Error::Store(e) => match e.class() {
                S::User | S::NotFound | S::Conflict => ErrorClass::User,
                S::Corruption => ErrorClass::Corruption,
                S::Transient => ErrorClass::Transient,
                S::Fatal | S::Unavailable => ErrorClass::Fatal,
            },
            Error::Stopped { error, .. } => error.class(),
            Error::Internal(_) => ErrorClass::Internal,
        }
    }

    /// The failure itself: the inner error of [`Error::Stopped`], else `self`.
    pub fn root(&self) -> &Error {
        match self {
            Error::Stopped { error, .. } => error.root(),
            e => e,
        }
    }

    /// The location of the bad row, when the failure is one row's.
    pub fn location(&self) -> Option<&Location> {
        match self.root() {
            Error::Row { location, .. } | Error::EmbedderRequired { location } => Some(location),
            _ => None,
        }
    }

    pub(crate) fn row(location: Location, reason: impl Into<String>) -> Error {
        Error::Row { location: Box::new(location), reason: reason.into() }
    }

    pub(crate) fn file(path: &Path, reason: impl Into<String>) -> Error {
        Error::File { path: path.to_path_buf(), reason: reason.into() }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_display() {
        let p = Path::new("d/data.jsonl");
        assert_eq!(Location::new(p, Position::line(3)).to_string(), "d/data.jsonl:3");
        assert_eq!(
            Location::new(p, Position::Line { line: 3, column: Some(17) }).with_field("vector").to_string(),
            "d/data.jsonl:3:17 (field \"vector\")"
        );
        assert_eq!(Location::new(Path::new("v.npy"), Position::Row(41)).to_string(), "v.npy row 41");
    }

    #[test]
    fn stopped_names_counts_and_delegates() {
        let inner = Error::row(Location::new(Path::new("a.csv"), Position::line(9)).with_field("id"), "missing");
        let e = Error::Stopped { records_written: 20, batches_written: 2, error: Box::new(inner) };
        let s = e.to_string();
        assert!(s.starts_with("a.csv:9 (field \"id\"): missing\n"), "{s}");
        assert!(s.contains("20 records in 2 batches"), "{s}");
        assert_eq!(e.class(), ErrorClass::User);
        assert_eq!(e.location().map(|l| l.position), Some(Position::line(9)));
    }
}
