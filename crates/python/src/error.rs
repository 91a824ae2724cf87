//! Engine failures as the Python exceptions of `kernelize.errors` (one hierarchy for the
//! embedded engine and the HTTP client).

use pyo3::prelude::*;
use pyo3::types::PyType;

/// Which exception class a failure raises (names in `kernelize/errors.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    DirectoryLocked,
    ReadOnly,
    Corruption,
    Unavailable,
    StorageFull,
    Io,
    Model,
    Signature,
    Expired,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::InvalidArgument => "InvalidArgument",
            Kind::NotFound => "NotFound",
            Kind::AlreadyExists => "AlreadyExists",
            Kind::DirectoryLocked => "DirectoryLocked",
            Kind::ReadOnly => "ReadOnlyError",
            Kind::Corruption => "CorruptionError",
            Kind::Unavailable => "Unavailable",
            Kind::StorageFull => "StorageFull",
            Kind::Io => "KernelizeIOError",
            Kind::Model => "ModelError",
            Kind::Signature => "SignatureError",
            Kind::Expired => "ExpiredError",
        }
    }
}

/// A failure on the way to Python: its class and the engine's message.
#[derive(Debug)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

pub type Res<T> = Result<T, Failure>;

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(Kind::InvalidArgument, message)
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        Python::attach(|py| {
            let class = py
                .import("kernelize.errors")
                .and_then(|m| m.getattr(f.kind.class_name()))
                .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
            match class {
                Ok(class) => PyErr::from_type(class, f.message),
                Err(e) => e,
            }
        })
    }
}

impl From<kernelize_store::Error> for Failure {
    fn from(e: kernelize_store::Error) -> Failure {
        use kernelize_store::{Error, ErrorClass};
        let kind = if e.is_locked() {
            Kind::DirectoryLocked
        } else if e.is_disk_full() {
            Kind::StorageFull
        } else if matches!(e, Error::ReadOnly(_)) {
            Kind::ReadOnly
        } else {
            match e.class() {
                ErrorClass::User => Kind::InvalidArgument,
                ErrorClass::NotFound => Kind::NotFound,
                ErrorClass::Conflict => Kind::AlreadyExists,
                ErrorClass::Corruption => Kind::Corruption,
                ErrorClass::Transient => Kind::Io,
                ErrorClass::Fatal | ErrorClass::Unavailable => Kind::Unavailable,
            }
        };
        Failure::new(kind, e.to_string())
    }
}

impl From<kernelize_index::search::SearchError> for Failure {
    fn from(e: kernelize_index::search::SearchError) -> Failure {
        use kernelize_index::search::SearchError;
        match e {
            SearchError::Store(e) => e.into(),
            SearchError::Index(e) => Failure::new(Kind::Io, e.to_string()),
            e => Failure::invalid(e.to_string()),
        }
    }
}

impl From<kernelize_index::filter::FilterError> for Failure {
    fn from(e: kernelize_index::filter::FilterError) -> Failure {
        Failure::invalid(format!("filter: {e}"))
    }
}

impl From<kernelize_embed::Error> for Failure {
    fn from(e: kernelize_embed::Error) -> Failure {
        Failure::new(Kind::Model, e.to_string())
    }
}

impl From<kernelize_kernel::KernelError> for Failure {
    fn from(e: kernelize_kernel::KernelError) -> Failure {
        use kernelize_kernel::KernelError;
        let kind = match &e {
            KernelError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Kind::NotFound,
            KernelError::Io { .. } => Kind::Io,
            KernelError::Corrupt { .. } => Kind::Corruption,
            KernelError::Signature { .. } => Kind::Signature,
            KernelError::Expired { .. } => Kind::Expired,
            KernelError::Store(_) => Kind::Io,
            _ => Kind::InvalidArgument,
        };
        if let KernelError::Store(s) = e {
            return s.into();
        }
        Failure::new(kind, e.to_string())
    }
}
