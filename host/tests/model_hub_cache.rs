//! Hub ids resolve from the standard HuggingFace cache (HF_HOME) without the network, and
//! HF_HUB_OFFLINE with an uncached model is a clear error. Its own test binary because it sets
//! process environment variables.

use pipehost::model::{self, DTypeChoice, DeviceChoice, ModelError, ModelSpec};

fn spec(id: &str) -> ModelSpec {
    let mut s = ModelSpec::new(id);
    s.device = DeviceChoice::Cpu;
    s.dtype = DTypeChoice::F32;
    s.progress = false;
    s
}

#[test]
fn hub_ids_load_from_the_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    // The cache layout huggingface_hub writes: refs/main names the snapshot folder.
    let repo = home.path().join("hub/models--pipehost--tiny");
    let snapshot = repo.join("snapshots/0123456789abcdef");
    model::fixture::write_tiny_model(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();

    // SAFETY: this test binary has this one test; nothing else reads the environment
    // concurrently.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let m = model::load(&spec("pipehost/tiny")).unwrap();
    assert_eq!(m.info().path, snapshot);
    assert_eq!(m.info().parameters, model::fixture::shape().parameters());

    let err = model::load(&spec("pipehost/not-downloaded")).unwrap_err();
    assert!(matches!(err, ModelError::NotCached { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("HF_HUB_OFFLINE") && msg.contains("--model"), "{msg}");
}
