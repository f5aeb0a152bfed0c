//! Turning bytes into compiled code: detection of what a binary is, the
//! compile cache (memory and disk), and the digest that names a module.

use crate::error::RuntimeError;
use crate::meter::{COMPILE_BOUNDS_NS, DurationHistogram};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// sha256 of a module's binary form, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }
    /// The short form used in logs.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// What a binary is, as far as serving it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A core module (WASI preview 1 when it imports anything).
    CoreModule,
    /// A component.
    Component,
}

/// Reads a `.wasm` or `.wat` file and returns the binary form.
pub fn read_wasm_file(path: &Path) -> Result<Vec<u8>, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|source| RuntimeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    to_binary(&bytes)
}

/// Accepts wasm binaries as they are and WebAssembly text (core or
/// component) converted to binary.
pub fn to_binary(bytes: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.to_vec());
    }
    let looks_textual = std::str::from_utf8(bytes)
        .map(|s| s.trim_start().starts_with('(') || s.trim_start().starts_with(";;"))
        .unwrap_or(false);
    if looks_textual {
        return wat::parse_bytes(bytes)
            .map(|b| b.into_owned())
            .map_err(|e| RuntimeError::Wat(e.to_string()));
    }
    Err(RuntimeError::NotWasm)
}

/// Core module or component, from the binary's header.
pub fn binary_kind(bytes: &[u8]) -> Result<BinaryKind, RuntimeError> {
    if wasmparser::Parser::is_component(bytes) {
        Ok(BinaryKind::Component)
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        Ok(BinaryKind::CoreModule)
    } else {
        Err(RuntimeError::NotWasm)
    }
}

/// Compiled code, ready to link.
#[derive(Clone)]
pub enum Compiled {
    Module(Module),
    Component(Component),
}

/// Where a compiled artifact came from, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Already compiled in this process.
    Memory,
    /// Loaded from the on-disk cache: no compilation.
    Disk,
    /// Compiled now.
    Compiled,
    /// Compiled elsewhere (by the control plane), received now.
    Fetched,
}

/// Counts of cache outcomes since the process started: each lookup that
/// found compiled code counts once, by where it found it.
#[derive(Debug)]
pub struct CacheStats {
    /// Already compiled in this process.
    pub memory_hits: AtomicU64,
    /// Loaded from an artifact on disk.
    pub disk_hits: AtomicU64,
    /// Compiled elsewhere (by the control plane) and received.
    pub fetched: AtomicU64,
    /// Compiled here.
    pub compiles: AtomicU64,
    /// How long each compile here took.
    pub compile_time: DurationHistogram,
}

impl Default for CacheStats {
    fn default() -> Self {
        Self {
            memory_hits: AtomicU64::new(0),
            disk_hits: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            compiles: AtomicU64::new(0),
            compile_time: DurationHistogram::new(&COMPILE_BOUNDS_NS),
        }
    }
}

/// Compiles each module once per (digest, engine settings) and keeps the
/// compiled artifact in memory and, if a directory is given, on disk so that
/// a restarted process does not compile again.
pub struct CompileCache {
    engine: Engine,
    dir: Option<PathBuf>,
    engine_key: String,
    memory: Mutex<HashMap<Digest, Compiled>>,
    stats: Arc<CacheStats>,
}

impl CompileCache {
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(|source| RuntimeError::Cache {
                path: d.clone(),
                source,
            })?;
        }
        // Artifacts are only valid for the engine settings and wasmtime build
        // that produced them; the key keeps incompatible ones apart.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_key = format!("{:016x}", h.finish());
        Ok(Self {
            engine: engine.clone(),
            dir,
            engine_key,
            memory: Mutex::new(HashMap::new()),
            stats: Arc::default(),
        })
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The key of this engine's compiled code: equal keys mean an artifact
    /// one engine compiled loads in the other (same wasmtime build, target
    /// and compilation settings).
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    /// Where the artifact of `digest` lives on disk, if this cache has a
    /// directory.
    pub fn path_for(&self, digest: &Digest, kind: BinaryKind) -> Option<PathBuf> {
        let ext = match kind {
            BinaryKind::CoreModule => "module",
            BinaryKind::Component => "component",
        };
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.{ext}.cwasm", digest.0, self.engine_key)))
    }

    /// Compiled code for `digest` this process already holds in memory.
    pub fn in_memory(&self, digest: &Digest) -> Option<Compiled> {
        let hit = self.lock_memory().get(digest).cloned();
        if hit.is_some() {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Returns the compiled form of `bytes` (a wasm binary), compiling it
    /// only if neither memory nor disk has it.
    pub fn get(
        &self,
        bytes: &[u8],
    ) -> Result<(Digest, BinaryKind, Compiled, CompileSource), RuntimeError> {
        let digest = Digest::of(bytes);
        let kind = binary_kind(bytes)?;
        if let Some(c) = self.in_memory(&digest) {
            return Ok((digest, kind, c, CompileSource::Memory));
        }
        let path = self.path_for(&digest, kind);
        if let Some(p) = path.as_ref().filter(|p| p.exists()) {
            match self.load(p, kind) {
                Ok(c) => {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(digest = %digest.short(), path = %p.display(), "compile cache hit: loaded compiled module from disk");
                    self.lock_memory().insert(digest.clone(), c.clone());
                    return Ok((digest, kind, c, CompileSource::Disk));
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "discarding unusable compiled artifact");
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let compiled = self.compile_fresh(&digest, kind, bytes, true)?;
        Ok((digest, kind, compiled, CompileSource::Compiled))
    }

    /// Compiles `bytes` without looking for an artifact on disk, keeps the
    /// result in memory, and writes it to disk only if `persist`.
    pub fn compile_fresh(
        &self,
        digest: &Digest,
        kind: BinaryKind,
        bytes: &[u8],
        persist: bool,
    ) -> Result<Compiled, RuntimeError> {
        let compiled = self.compile(digest, kind, bytes)?;
        if persist
            && let Some(p) = self.path_for(digest, kind)
            && let Err(e) = self.store(&p, &compiled)
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot write compiled artifact to the cache");
        }
        self.lock_memory().insert(digest.clone(), compiled.clone());
        Ok(compiled)
    }

    fn compile(
        &self,
        digest: &Digest,
        kind: BinaryKind,
        bytes: &[u8],
    ) -> Result<Compiled, RuntimeError> {
        let start = Instant::now();
        let compiled = match kind {
            BinaryKind::CoreModule => Module::new(&self.engine, bytes).map(Compiled::Module),
            BinaryKind::Component => Component::new(&self.engine, bytes).map(Compiled::Component),
        }
        .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
        self.stats.compiles.fetch_add(1, Ordering::Relaxed);
        self.stats.compile_time.observe(start.elapsed());
        tracing::info!(digest = %digest.short(), elapsed_ms = start.elapsed().as_millis() as u64, "compile cache miss: compiled module");
        Ok(compiled)
    }

    /// The artifact of `bytes` on disk, compiled now if it is not there
    /// yet, without keeping the compiled code in memory: for a process that
    /// compiles for others (the control plane) and never runs the code.
    pub fn ensure_on_disk(&self, bytes: &[u8]) -> Result<(BinaryKind, PathBuf), RuntimeError> {
        let digest = Digest::of(bytes);
        let kind = binary_kind(bytes)?;
        let path = self.path_for(&digest, kind).ok_or_else(|| {
            RuntimeError::Invalid("the compile cache has no directory to keep artifacts in".into())
        })?;
        if path.exists() {
            return Ok((kind, path));
        }
        let compiled = self.compile(&digest, kind, bytes)?;
        self.store(&path, &compiled)
            .map_err(|e| RuntimeError::Cache {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        Ok((kind, path))
    }

    /// Loads an artifact compiled elsewhere from `path` (mapped, not read
    /// into memory) and keeps it as `digest`'s compiled code.
    ///
    /// # Safety
    ///
    /// Loading compiled code trusts it with the process: the caller must
    /// have established that the file is what a trusted compiler produced
    /// for `digest` with this engine's settings (a checked signature).
    /// wasmtime checks the header (engine and version) but not the code.
    pub unsafe fn adopt_file(
        &self,
        digest: &Digest,
        kind: BinaryKind,
        path: &Path,
    ) -> Result<Compiled, RuntimeError> {
        // SAFETY: this function's contract.
        let compiled = unsafe { self.remap_file(digest, kind, path) }?;
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        Ok(compiled)
    }

    /// Like [`adopt_file`](Self::adopt_file), for code this cache holds
    /// already (now kept on disk, and mapped from there instead): not
    /// counted as a lookup.
    ///
    /// # Safety
    ///
    /// As for [`adopt_file`](Self::adopt_file).
    pub unsafe fn remap_file(
        &self,
        digest: &Digest,
        kind: BinaryKind,
        path: &Path,
    ) -> Result<Compiled, RuntimeError> {
        let compiled = self
            .load(path, kind)
            .map_err(|e| RuntimeError::Invalid(format!("unusable compiled artifact: {e}")))?;
        self.lock_memory().insert(digest.clone(), compiled.clone());
        Ok(compiled)
    }

    /// Like [`adopt_file`](Self::adopt_file), from bytes in memory (an
    /// artifact received: counted as fetched).
    ///
    /// # Safety
    ///
    /// As for [`adopt_file`](Self::adopt_file).
    pub unsafe fn adopt_bytes(
        &self,
        digest: &Digest,
        kind: BinaryKind,
        bytes: &[u8],
    ) -> Result<Compiled, RuntimeError> {
        // SAFETY: the caller vouches for the bytes (this function's contract).
        let compiled = unsafe {
            match kind {
                BinaryKind::CoreModule => {
                    Module::deserialize(&self.engine, bytes).map(Compiled::Module)
                }
                BinaryKind::Component => {
                    Component::deserialize(&self.engine, bytes).map(Compiled::Component)
                }
            }
        }
        .map_err(|e| RuntimeError::Invalid(format!("unusable compiled artifact: {e:#}")))?;
        self.stats.fetched.fetch_add(1, Ordering::Relaxed);
        self.lock_memory().insert(digest.clone(), compiled.clone());
        Ok(compiled)
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Compiled>> {
        // A panic while holding this lock leaves a plain map behind; keep going.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load(&self, path: &Path, kind: BinaryKind) -> Result<Compiled, String> {
        // SAFETY: the cache directory is private to Shoal and its files are
        // written only by `store` below from code this engine compiled; the
        // file name carries the engine's compatibility key and wasmtime
        // verifies the artifact's header before use.
        unsafe {
            match kind {
                BinaryKind::CoreModule => Module::deserialize_file(&self.engine, path)
                    .map(Compiled::Module)
                    .map_err(|e| format!("{e:#}")),
                BinaryKind::Component => Component::deserialize_file(&self.engine, path)
                    .map(Compiled::Component)
                    .map_err(|e| format!("{e:#}")),
            }
        }
    }

    fn store(&self, path: &Path, compiled: &Compiled) -> Result<(), String> {
        let bytes = match compiled {
            Compiled::Module(m) => m.serialize(),
            Compiled::Component(c) => c.serialize(),
        }
        .map_err(|e| format!("{e:#}"))?;
        write_atomically(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// crash never leaves a torn artifact behind; readable by this user only.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let dir = path.parent().ok_or("cache path has no parent")?;
    // Unique per write, so two writers of the same artifact never share a
    // temporary file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed),
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("artifact")
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(|e| e.to_string())?;
    f.write_all(bytes).map_err(|e| e.to_string())?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}
