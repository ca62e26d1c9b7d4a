//! Pipeline files: arbitrary text through the host's YAML parser into `PipelineSpec`
//! (`pipehost::pipeline::load::parse`, what `load_file` calls before loading any plugin),
//! the located error's formatting, and the pipeline-name check. Must never panic (nor hang:
//! libFuzzer's timeout catches alias blow-ups).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pipehost::pipeline::load::{name_from_path, parse, validate_pipeline_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(Path::new("pipelines/fuzz.yaml"), text) {
        Ok(spec) => {
            let _ = format!("{spec:?}");
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(e.line >= 1 && e.column >= 1, "unlocated error {e:?}");
        }
    }
    // The first line as a file stem: the name check must not panic on any text.
    let stem = text.lines().next().unwrap_or("");
    let _ = validate_pipeline_name(&name_from_path(Path::new(stem)));
    let _ = validate_pipeline_name(stem);
});
