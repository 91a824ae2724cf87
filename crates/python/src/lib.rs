//! `kernelize._native`: the engine in process for Python (the `kernelize` package in
//! `python/` wraps it; see `README.md`).
//!
//! Every call that touches the disk, embeds or searches releases the GIL; batch calls
//! run on one rayon pool per process (`set_num_threads`), rebuilt after a `fork` (a
//! forked child has none of its parent's threads). Arrays come in as numpy views (no copy
//! when they are C-contiguous float32) and go out as numpy arrays; records stream out as
//! Arrow through the PyCapsule interface (`__arrow_c_stream__`).

mod arrow;
mod engine;
mod error;
mod kernel;
mod runtime;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<engine::Database>()?;
    m.add_class::<engine::Collection>()?;
    m.add_class::<arrow::ArrowStream>()?;
    m.add_class::<kernel::Kernel>()?;
    m.add_function(wrap_pyfunction!(runtime::embed, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::embed_media, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(kernel::generate_signing_key, m)?)?;
    Ok(())
}
