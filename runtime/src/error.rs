//! The runtime's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid WebAssembly text: {0}")]
    Wat(String),
    #[error(
        "not a WebAssembly module or component (the file does not start with the wasm magic bytes \\0asm)"
    )]
    NotWasm,
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    #[error("unsupported workload: {0}")]
    Unsupported(String),
    #[error("cannot link the module: {0}")]
    Link(String),
    #[error("compile cache at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the guest's sandbox: {0}")]
    Sandbox(String),
}
