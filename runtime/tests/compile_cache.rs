//! The compile cache: compiled once per digest, reused from disk by a new
//! process (here: a new engine and cache on the same directory).

use shoal_runtime::{CompileSource, Runtime, RuntimeConfig, RuntimeError};
use std::sync::atomic::Ordering;

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/wasm-apps")
            .join(name),
    )
    .unwrap()
}

#[test]
fn a_second_runtime_loads_from_disk_without_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        manual_epochs: true,
        ..Default::default()
    };
    for file in ["hello.wasm", "http-component.wasm"] {
        let bytes = example(file);
        let first = Runtime::new(cfg.clone()).unwrap();
        let a = first.load(&bytes).unwrap();
        assert_eq!(a.source, CompileSource::Compiled, "{file}");
        let again = first.load(&bytes).unwrap();
        assert_eq!(again.source, CompileSource::Memory, "{file}");
        assert_eq!(first.cache().stats().compiles.load(Ordering::Relaxed), 1);
        drop(first);

        let second = Runtime::new(cfg.clone()).unwrap();
        let b = second.load(&bytes).unwrap();
        assert_eq!(b.source, CompileSource::Disk, "{file}");
        assert_eq!(b.digest, a.digest);
        assert_eq!(second.cache().stats().compiles.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        manual_epochs: true,
        ..Default::default()
    };
    let bytes = example("hello.wasm");
    Runtime::new(cfg.clone()).unwrap().load(&bytes).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not an artifact").unwrap();
    }
    let rt = Runtime::new(cfg).unwrap();
    let l = rt.load(&bytes).unwrap();
    assert_eq!(l.source, CompileSource::Compiled);
}

#[test]
fn invalid_wasm_says_what_is_wrong() {
    let rt = Runtime::new(RuntimeConfig {
        manual_epochs: true,
        ..Default::default()
    })
    .unwrap();
    let err = rt.load(b"hello there").err().unwrap();
    assert!(matches!(err, RuntimeError::NotWasm), "{err}");

    // Valid header, truncated body.
    let mut bytes = example("hello.wasm");
    bytes.truncate(bytes.len() / 2);
    let err = rt.load(&bytes).err().unwrap().to_string();
    assert!(err.starts_with("invalid WebAssembly"), "{err}");

    let err = rt
        .load(b"(module (func (result i32)))")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("invalid WebAssembly"), "{err}");
    assert!(
        err.contains("type mismatch") || err.contains("expected i32"),
        "{err}"
    );

    let err = rt
        .load(b"(module (func $f (i32.nonsense)))")
        .err()
        .unwrap()
        .to_string();
    assert!(err.starts_with("invalid WebAssembly text"), "{err}");
}
