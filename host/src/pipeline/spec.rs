//! The pipeline file format (`pipelines/*.yaml`), as serde types. `pipehost schema` prints the
//! JSON Schema derived from [`PipelineSpec`]; docs/pipelines.md documents every field.
//!
//! Fields that later checks may reject are [`Spanned`] so every error can name its line and
//! column.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::backend::GenerationParams;

/// One pipeline: a prompt stage, a model call and an ordered list of post-processors.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Pipehost pipeline")]
pub struct PipelineSpec {
    /// The pipeline's name (the `model` clients ask for). Default: the file name without
    /// `.yaml`. Lowercase letters, digits, `-`, `_` and `.`, at most 64 characters.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// What the pipeline is for (shown in `GET /v1/pipelines`).
    #[serde(default)]
    pub description: String,
    /// The kind of task, for grouping in the playground: `creative-writing`,
    /// `companionship`, `open-question`, `style-imitation`, or any other short label.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub task: Option<Spanned<String>>,
    /// Which model backend runs it: the name of one the server was started with (`candle`,
    /// `openai`, `echo`). Default: the server's default backend.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub backend: Option<Spanned<String>>,
    /// Sampling and length parameters; a request may override each.
    #[serde(default)]
    #[schemars(with = "GenerationParams")]
    pub params: Option<Spanned<GenerationParams>>,
    /// The variable the OpenAI chat endpoint fills with the last user message. Default `input`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub input_variable: Option<Spanned<String>>,
    /// The request variables, checked before the prompt builder runs. The single place they
    /// are declared: the prompt builder receives them as its config's `variables`.
    #[serde(default)]
    pub variables: Vec<VariableSpec>,
    /// The prompt stage: a prompt-builder plugin that turns the variables into chat messages.
    pub prompt: PromptSpec,
    /// Post-processors, applied in order to the model's output.
    #[serde(default)]
    pub post: Vec<StageSpec>,
}

/// A request variable.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    /// An identifier: ASCII letters, digits and `_`, not starting with a digit.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// A request without it (or with only whitespace) is rejected.
    #[serde(default)]
    pub required: bool,
    /// The value when the request has none (not with `required: true`).
    #[serde(default)]
    pub default: Option<String>,
    /// The longest value accepted, in characters (Unicode scalar values).
    #[serde(default)]
    pub max_chars: Option<usize>,
    /// What the variable means (shown in `GET /v1/pipelines/{name}`).
    #[serde(default)]
    pub description: String,
}

/// The prompt stage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// A prompt-builder plugin: `NAME` is `NAME.wasm` in the plugins folder.
    #[schemars(with = "String")]
    pub plugin: Spanned<String>,
    /// Pin: the sha256 (hex) the plugin file must have.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub sha256: Option<Spanned<String>>,
    /// The plugin's config (see the plugin's documentation); checked at load time.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: Option<Spanned<serde_json::Value>>,
    /// Resource limits per call.
    #[serde(default)]
    #[schemars(with = "Option<LimitsSpec>")]
    pub limits: Option<Spanned<LimitsSpec>>,
}

/// A post-processing stage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// A post-processor plugin: `NAME` is `NAME.wasm` in the plugins folder.
    #[schemars(with = "String")]
    pub plugin: Spanned<String>,
    /// The stage's name in reports and errors. Default: the plugin name (stage names must be
    /// unique within a pipeline, so name the second use of a plugin).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// Pin: the sha256 (hex) the plugin file must have.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub sha256: Option<Spanned<String>>,
    /// The plugin's config (see the plugin's documentation); checked at load time.
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    pub config: Option<Spanned<serde_json::Value>>,
    /// Resource limits per call (for streaming: per push).
    #[serde(default)]
    #[schemars(with = "Option<LimitsSpec>")]
    pub limits: Option<Spanned<LimitsSpec>>,
    /// What a failure of this stage does: `fail` the request (default) or `skip` the stage,
    /// passing its input through unchanged and reporting the error.
    #[serde(default)]
    pub on_error: OnError,
}

/// Per-call resource limits of a stage; unset fields keep the defaults.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Wall-clock deadline per call in milliseconds (default 100, at most 60000).
    #[serde(default)]
    pub time_ms: Option<u64>,
    /// Linear-memory cap in MiB, 2 to 1024 (default: the plugin language's, 64 for Rust, 128
    /// for Python and JavaScript).
    #[serde(default)]
    pub memory_mb: Option<usize>,
    /// Cap on the text the stage returns, in bytes (default 1048576).
    #[serde(default)]
    pub output_bytes: Option<usize>,
}

/// What a failing stage does to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail the request with the stage's error.
    #[default]
    Fail,
    /// Bypass the stage for the rest of the request (its input passes through) and report
    /// the error in the response's `stages[].skipped_error`.
    Skip,
}

/// The JSON Schema of the pipeline format, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(PipelineSpec);
    serde_json::to_string_pretty(&schema).expect("a schema serialises")
}
