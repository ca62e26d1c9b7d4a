//! Shared helpers for the end-to-end tests: where the built components are, one runtime per
//! test binary (compiling a component takes ~2 s in a debug build), and log capture.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pipehost::plugin::{PluginRuntime, RuntimeConfig};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The folder `scripts/build-plugins.sh` builds components into.
pub fn components_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("wasm32-wasip2").join("plugin")
}

/// Path of a built component by crate name (e.g. `guest-evil`, `dedupe`).
pub fn component(crate_name: &str) -> PathBuf {
    let path = components_dir().join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins.sh first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The shipped plugins and the misbehaving test guest, as (name pipelines use, crate name).
pub const PLUGINS: [(&str, &str); 6] = [
    ("persona", "persona"),
    ("dedupe", "dedupe"),
    ("punctuation", "punctuation"),
    ("tone", "tone"),
    ("truncate", "truncate"),
    ("evil", "guest-evil"),
];

/// The compile cache the tests share, under the target folder: compiling a component takes
/// seconds in a debug build, so every test binary (and every run) compiles each one once.
pub fn test_cache_dir() -> PathBuf {
    components_dir().join("test-cache")
}

/// One runtime per test binary, with every component in [`PLUGINS`] compiled (or fetched from
/// the cache) up front, serially, before tests load them concurrently.
pub fn runtime() -> PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let config = RuntimeConfig { cache_dir: Some(test_cache_dir()), pooling: true };
            let runtime = PluginRuntime::new(&config).unwrap();
            for (name, krate) in PLUGINS {
                let path = component(krate);
                if name == "persona" {
                    runtime.load_prompt_builder(name, &path).unwrap();
                } else {
                    runtime.load_post_processor(name, &path).unwrap();
                }
            }
            runtime
        })
        .clone()
}

/// A plugins folder holding every component in [`PLUGINS`] under its pipeline name.
pub fn plugins_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, krate) in PLUGINS {
        std::fs::copy(component(krate), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// Collects everything logged through `tracing` while `f` runs on this thread.
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (result, logs)
}

pub mod prompt_builder;
pub mod server;
