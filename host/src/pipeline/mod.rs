//! Pipelines: per-task recipes in YAML (`pipelines/*.yaml`) — a prompt-builder plugin, model
//! parameters and an ordered list of post-processor plugins — loaded, validated, hot-reloaded
//! and run.
//!
//! - [`spec`]: the file format (serde + JSON Schema).
//! - [`load`]: one file → a validated [`Pipeline`], or a [`LoadError`] with file:line:col.
//! - [`Registry`]: every pipeline of a folder, swapped atomically on change ([`Registry::watch`]).
//! - [`Executor`]: runs a pipeline on a [`crate::backend::Backend`], whole-text or streaming.
//!
//! See docs/pipelines.md.

mod executor;
pub mod load;
mod registry;
pub mod spec;

pub use executor::{
    Executor, PipelineError, RunEvent, RunRecord, RunRequest, StageReport, Timings, Usage, check_vars,
};
pub use load::{
    BackendNames, LoadError, MAX_FILE_BYTES, Pipeline, PluginCache, PostStage, PromptStage, Variable,
    spec_json,
};
pub use registry::{
    DEBOUNCE, PipelineInfo, Registry, ReloadStats, SaveError, Saved, StageInfo, WatchHandle,
    default_pipelines_dir,
};
pub use spec::{OnError, PipelineSpec, json_schema};
