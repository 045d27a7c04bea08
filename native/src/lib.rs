//! The compiled part of inferstack's hot paths (the feature store's, and the interaction
//! store's ingest), as the Python module `inferstack_native`.
//!
//! Each function does the per-row work of one step for a whole batch in a single call, so
//! Python pays one call per batch instead of one interpreter loop turn per row. The Python
//! side (`inferstack.core.keys`, `inferstack.core.rowformat`) keeps everything that is not
//! per row: checking requests, layouts, filling row prefixes a feature at a time (numpy), and
//! the rare upgrade of rows of older schema versions.
//! The answer to a Retrieve is encoded here too (`response.rs`), straight from the decoded
//! columns to protobuf bytes.

use pyo3::prelude::*;

mod keys;
mod response;
mod rows;

#[pymodule]
fn inferstack_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(keys::encode_keys, module)?)?;
    module.add_function(wrap_pyfunction!(rows::decode_rows, module)?)?;
    module.add_function(wrap_pyfunction!(rows::encode_rows, module)?)?;
    module.add_function(wrap_pyfunction!(
        response::encode_retrieve_responses,
        module
    )?)?;
    module.add("FOUND", rows::FOUND)?;
    module.add("MISSING", rows::MISSING)?;
    module.add("EXPIRED", rows::EXPIRED)?;
    module.add("CORRUPT", rows::CORRUPT)?;
    Ok(())
}
