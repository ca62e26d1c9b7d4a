//! Errors the model engine reports. Callers match on the variant (e.g. the CLI prints the
//! "not cached" hint, a server maps `QueueFull` to 503); the message is written for a person.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or generating with it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `--model` named a local folder that does not exist or lacks a required file.
    #[error("model folder {path}: {reason}")]
    BadFolder { path: PathBuf, reason: String },

    /// Offline (HF_HUB_OFFLINE) and the hub model is not in the local HuggingFace cache.
    #[error(
        "{repo} is not in the HuggingFace cache ({cache}) and HF_HUB_OFFLINE is set; \
         download it on a machine with internet access, or point --model at a local model folder \
         (one with config.json, tokenizer.json and *.safetensors)"
    )]
    NotCached { repo: String, cache: PathBuf },

    /// Fetching from the hub failed (network, authentication, missing repository).
    #[error(
        "could not fetch {repo} from the HuggingFace hub: {message}; \
         check the network (or HF_TOKEN for gated models), or point --model at a local model folder"
    )]
    Hub { repo: String, message: String },

    /// A JSON file of the model folder (config, generation config, tokenizer config) is invalid.
    #[error("{path}: {message}")]
    BadConfig { path: PathBuf, message: String },

    /// The requested device or dtype is unknown, not compiled in, or not present.
    #[error("device: {0}")]
    Device(String),

    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),

    /// The request is invalid (empty prompt, bad sampling parameter, too long for the context).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The request queue is full (only from the non-blocking submit).
    #[error("the model queue is full")]
    QueueFull,

    /// The logits to sample from were NaN (corrupted weights, a numerical overflow): there is
    /// no distribution to draw from. This request failed; the engine serves the next one.
    #[error(
        "the model produced NaN logits (corrupted weights or a numerical overflow); nothing to sample from"
    )]
    NanLogits,

    /// Generation panicked (a bug); this request failed, the engine serves the next one.
    #[error("the model panicked during generation: {0}")]
    Panicked(String),

    /// A batched forward step failed; every request in that step failed with it, the engine
    /// serves the next ones.
    #[error("the model's forward step failed: {0}")]
    StepFailed(String),

    /// The request's worst case (prompt plus `max_tokens`) needs more KV-cache memory than the
    /// engine has in all.
    #[error(
        "the request needs {needed_mb} MB of KV cache (prompt plus max_tokens); the engine's budget is \
         {budget_mb} MB (serve --kv-cache-mb): ask for fewer tokens or raise the budget"
    )]
    KvBudget { needed_mb: usize, budget_mb: usize },

    /// The engine's worker thread has stopped.
    #[error("the model engine has stopped")]
    EngineStopped,

    /// candle failed (loading weights or running the forward pass).
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
