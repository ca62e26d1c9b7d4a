//! Shared by the model test files: where the reference data lives.

use std::path::PathBuf;

/// `../shared/reference` (or PIPEHOST_REFERENCE_DIR) when its golden file is there. Absent, the
/// tests say so and pass, unless PIPEHOST_REQUIRE_REFERENCE=1 (set by CI).
pub fn reference_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PIPEHOST_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"));
    if dir.join("tiny-qwen3.golden.json").is_file() {
        return Some(dir);
    }
    let required = std::env::var("PIPEHOST_REQUIRE_REFERENCE").is_ok_and(|v| v == "1");
    assert!(!required, "reference data not found at {} and PIPEHOST_REQUIRE_REFERENCE=1", dir.display());
    eprintln!("SKIPPED: reference data not found at {} (set PIPEHOST_REFERENCE_DIR)", dir.display());
    None
}
