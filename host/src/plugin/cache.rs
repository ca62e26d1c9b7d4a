//! On-disk cache of compiled components, so a restart does not recompile every plugin
//! (~120 ms each in release, seconds in debug builds).
//!
//! An entry is `<sha256 of the .wasm>-<engine hash>.cwasm`. The engine hash covers the
//! wasmtime version and every compilation setting (`Engine::precompile_compatibility_hash`),
//! so an upgrade or a config change misses instead of loading incompatible code. Each entry
//! ends with the sha256 of its body: a truncated or corrupted file is detected before wasmtime
//! sees it, discarded and recompiled. The cache is an optimisation only: any failure to read
//! or write it is logged and the host compiles in memory instead.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const CHECKSUM_LEN: usize = 32;

#[derive(Debug, Clone)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    engine_hash: String,
}

/// Where a component came from, for diagnostics and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from the on-disk cache.
    Hit,
    /// Compiled now (and written to the cache when it is enabled and writable).
    Compiled,
}

impl CompileCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Self {
        Self { dir, engine_hash: engine_hash(engine) }
    }

    fn entry_path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir.join(format!("{wasm_sha256}-{}.cwasm", self.engine_hash))
    }

    /// Returns the cached component for this .wasm, if a valid entry exists.
    pub(crate) fn load(&self, engine: &Engine, wasm_sha256: &str) -> Option<Component> {
        let path = self.entry_path(wasm_sha256);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read compiled-plugin cache entry: {e}");
                return None;
            }
        };
        let Some(body) = verified_body(&bytes) else {
            tracing::warn!(path = %path.display(), "compiled-plugin cache entry is corrupted; recompiling");
            let _ = std::fs::remove_file(&path);
            return None;
        };
        // SAFETY: `deserialize` trusts its input to be wasmtime's own output. The body was
        // written by `store` below and its checksum verified above, so it is unmodified; the
        // engine hash in the file name (and wasmtime's own header check) rules out another
        // engine's code.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), "compiled-plugin cache entry rejected ({e}); recompiling");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes a compiled component; failures are logged, never fatal.
    pub(crate) fn store(&self, wasm_sha256: &str, component: &Component) {
        if let Err(e) = self.try_store(wasm_sha256, component) {
            tracing::warn!(dir = %self.dir.display(), "cannot write compiled-plugin cache: {e:#}");
        }
    }

    fn try_store(&self, wasm_sha256: &str, component: &Component) -> anyhow::Result<()> {
        let mut body = component.serialize()?;
        let checksum = Sha256::digest(&body);
        body.extend_from_slice(&checksum);
        std::fs::create_dir_all(&self.dir)?;
        // Write to a temporary file and rename, so a concurrent reader never sees half a file.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&body)?;
        tmp.persist(self.entry_path(wasm_sha256))?;
        Ok(())
    }
}

fn verified_body(bytes: &[u8]) -> Option<&[u8]> {
    let split = bytes.len().checked_sub(CHECKSUM_LEN)?;
    let (body, checksum) = bytes.split_at(split);
    (Sha256::digest(body).as_slice() == checksum).then_some(body)
}

/// A stable hex digest of everything that makes compiled code engine-specific.
fn engine_hash(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only write() is used")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

/// The default cache folder: `$PIPEHOST_CACHE_DIR`, else `$XDG_CACHE_HOME/pipehost/components`,
/// else `~/.cache/pipehost/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PIPEHOST_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("pipehost").join("components"))
}
