//! The converted weights of the image and audio models: one `model.safetensors` of
//! float32 tensors, read whole and checked tensor by tensor (name, shape, finite values).

use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// Largest weights file accepted (the known ones are 5.7 and 18.8 MB).
const MAX_WEIGHTS_BYTES: u64 = 256 << 20;

/// A weights file in memory.
pub(crate) struct Weights {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Weights {
    /// Reads `dir/model.safetensors`; a missing file is [`Error::ModelMissing`] for `model`.
    pub(crate) fn open(dir: &Path, model: &'static str) -> Result<Weights> {
        let path = dir.join("model.safetensors");
        let len = match fs_err::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::ModelMissing { model, path }),
            Err(e) => return Err(e.into()),
        };
        if len > MAX_WEIGHTS_BYTES {
            return Err(Error::corrupt(&path, format!("{len} bytes, more than any known model")));
        }
        let bytes = fs_err::read(&path)?;
        SafeTensors::deserialize(&bytes).map_err(|e| Error::corrupt(&path, e.to_string()))?;
        Ok(Weights { path, bytes })
    }

    /// The file's path (for error messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor `name`, which must have exactly `shape`, as row-major f32 values.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| Error::corrupt(&self.path, e.to_string()))?;
        let view = st.tensor(name).map_err(|e| Error::corrupt(&self.path, format!("tensor {name}: {e}")))?;
        if view.dtype() != Dtype::F32 {
            return Err(Error::corrupt(&self.path, format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        if view.shape() != shape {
            return Err(Error::corrupt(
                &self.path,
                format!("tensor {name} has shape {:?}, expected {shape:?}", view.shape()),
            ));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::corrupt(&self.path, format!("tensor {name} has a non-finite value at element {i}")));
        }
        Ok(values)
    }
}
