//! The WebAssembly that Shoal runs: one feature set for the engine that
//! runs modules (`shoal-runtime`) and for the check the control plane makes
//! at apply (which never links wasmtime).
//!
//! Both sides use this constant, so they cannot drift apart: the runtime
//! sets exactly these features on its engine, and the control plane
//! validates with them. It is wasmparser's own type, the one wasmtime takes
//! (`wasmtime::WasmFeatures` is a re-export): if the two ever stop being the
//! same crate, the runtime's engine configuration stops compiling rather
//! than silently disagreeing.

use wasmparser::WasmFeatures;

/// What wasmtime 48 enables by default for an engine built the way Shoal
/// builds it (cranelift, `component-model`, no `gc`, no `threads`, no
/// `component-model-async` cargo features): the WebAssembly 3.0 set less
/// what those missing cargo features provide, plus the component model.
pub const ENGINE_FEATURES: WasmFeatures = WasmFeatures::WASM3
    // Shared memories and atomics need wasmtime's `threads` feature.
    .difference(WasmFeatures::THREADS)
    // GC types (and with them exceptions) need wasmtime's `gc` feature.
    .difference(WasmFeatures::GC_TYPES)
    .difference(WasmFeatures::EXCEPTIONS)
    .union(WasmFeatures::COMPONENT_MODEL);

/// Checks a module or component the way the nodes' engine will before it
/// compiles it; the error says what is wrong and where.
pub fn validate(bytes: &[u8]) -> Result<(), wasmparser::BinaryReaderError> {
    wasmparser::Validator::new_with_features(ENGINE_FEATURES)
        .validate_all(bytes)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_engine_lacks_is_refused() {
        // A shared memory (threads) passes with every feature on.
        let shared: &[u8] = &[
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
            0x05, 0x04, 0x01, 0x03, 0x01, 0x01, // memory 1 1 shared
        ];
        assert!(
            wasmparser::Validator::new_with_features(WasmFeatures::all())
                .validate_all(shared)
                .is_ok()
        );
        let e = validate(shared).expect_err("shared memory needs threads");
        assert!(e.to_string().contains("threads"), "{e}");
        // The empty module, SIMD and component model are in.
        assert!(validate(b"\0asm\x01\0\0\0").is_ok());
        assert!(ENGINE_FEATURES.contains(WasmFeatures::SIMD | WasmFeatures::COMPONENT_MODEL));
    }
}
