//! Model backends behind one trait: the pipeline executor hands a [`Backend`] chat messages and
//! [`GenerationParams`] and reads a stream of [`BackendEvent`]s.
//!
//! - [`EchoBackend`] (`echo`): deterministic, no model; streams the rendered prompt (or a fixed
//!   text) back in small chunks. For plugin authors and tests.
//! - [`CandleBackend`] (`candle`): the local Qwen3 engine ([`crate::model::Engine`]).
//! - [`OpenAiBackend`] (`openai`): any OpenAI-compatible server (vLLM, TGI, llama.cpp, Ollama,
//!   another pipehost), streaming over SSE.
//!
//! `generate` is synchronous and cheap (it queues work and returns a receiver) so it can be
//! called from async code and from plain threads. Dropping the receiver cancels generation;
//! setting the request's [`StopFlag`] stops it too, but every backend then still sends `Done`
//! with the tokens it counted (a post-processor that ends the output still gets exact usage).

mod candle;
mod echo;
mod openai;
/// Public for the `openai_sse` fuzz target; the backend is its only user.
#[doc(hidden)]
pub mod sse;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use self::candle::CandleBackend;
pub use self::echo::{EchoBackend, EchoConfig, EchoMode};
pub use self::openai::{OpenAiBackend, OpenAiConfig};

/// Stops a generation that must still report (see the module docs).
pub use crate::model::StopFlag;

/// One chat message (the prompt builder's output, the backend's input).
pub use crate::plugin::Message as ChatMessage;

/// Sampling and length parameters. Every field is optional: unset fields fall back to the
/// backend's defaults (for `candle`, the model's `generation_config.json`). A pipeline sets
/// them under `params:`; a request may override them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationParams {
    /// Softmax temperature, 0 (greedy) to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this, (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Drop tokens less likely than this fraction of the most likely one, [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Penalise tokens already present (1 = off), (0, 10].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// OpenAI-style presence penalty, [-2, 2].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// OpenAI-style frequency penalty, [-2, 2].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// The most tokens to generate (also accepted as `max_new_tokens`).
    #[serde(default, alias = "max_new_tokens", skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Seed for sampling, for reproducible output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Generation stops before any of these strings (at most 16, each 1–256 bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// The largest `max_tokens` accepted anywhere (a backend may reject less, e.g. the context).
pub const MAX_TOKENS_LIMIT: usize = 1 << 20;

impl GenerationParams {
    /// `self` with every field `overrides` sets replaced (request over pipeline).
    pub fn merged(&self, overrides: &GenerationParams) -> GenerationParams {
        GenerationParams {
            temperature: overrides.temperature.or(self.temperature),
            top_p: overrides.top_p.or(self.top_p),
            top_k: overrides.top_k.or(self.top_k),
            min_p: overrides.min_p.or(self.min_p),
            repetition_penalty: overrides.repetition_penalty.or(self.repetition_penalty),
            presence_penalty: overrides.presence_penalty.or(self.presence_penalty),
            frequency_penalty: overrides.frequency_penalty.or(self.frequency_penalty),
            max_tokens: overrides.max_tokens.or(self.max_tokens),
            seed: overrides.seed.or(self.seed),
            stop: if overrides.stop.is_empty() { self.stop.clone() } else { overrides.stop.clone() },
        }
    }

    /// Rejects out-of-range values, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        fn range(name: &str, v: Option<f32>, lo: f32, hi: f32, lo_open: bool) -> Result<(), String> {
            if let Some(v) = v {
                let low_ok = if lo_open { v > lo } else { v >= lo };
                if !v.is_finite() || !low_ok || v > hi {
                    let open = if lo_open { "(" } else { "[" };
                    return Err(format!("`{name}` must be in {open}{lo}, {hi}], got {v}"));
                }
            }
            Ok(())
        }
        range("temperature", self.temperature, 0.0, 2.0, false)?;
        range("top_p", self.top_p, 0.0, 1.0, true)?;
        range("min_p", self.min_p, 0.0, 1.0, false)?;
        range("repetition_penalty", self.repetition_penalty, 0.0, 10.0, true)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, false)?;
        if let Some(k) = self.top_k
            && k > 1_000_000
        {
            return Err(format!("`top_k` must be at most 1000000, got {k}"));
        }
        if let Some(n) = self.max_tokens
            && (n == 0 || n > MAX_TOKENS_LIMIT)
        {
            return Err(format!("`max_tokens` must be between 1 and {MAX_TOKENS_LIMIT}, got {n}"));
        }
        if self.stop.len() > 16 {
            return Err(format!("`stop` may list at most 16 strings, got {}", self.stop.len()));
        }
        if let Some(bad) = self.stop.iter().find(|s| s.is_empty() || s.len() > 256) {
            return Err(format!("`stop` strings must be 1 to 256 bytes long, got {:?}", bad));
        }
        Ok(())
    }
}

/// One generation request.
#[derive(Debug, Clone, Default)]
pub struct BackendRequest {
    /// For logs and for the upstream server.
    pub request_id: String,
    pub messages: Vec<ChatMessage>,
    pub params: GenerationParams,
    /// Set by the caller to end generation early; the backend stops before its next token and
    /// sends `Done` with its counts (finish reason `cancelled` unless it had already finished).
    pub stop: StopFlag,
}

/// What a backend streams back. `Done` or `Error` is the last event.
#[derive(Debug)]
pub enum BackendEvent {
    /// Newly generated text (never empty).
    Delta(String),
    Done(BackendReport),
    Error(BackendError),
}

/// Why generation ended: the model engine's reasons (length, stop, eos, cancelled) are the
/// ones every backend reports.
pub use crate::model::FinishReason;

/// The summary of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Time to process the prompt (0 when the backend does not say).
    pub prefill_ms: f64,
    /// Decoding speed (0 when the backend does not say).
    pub decode_tokens_per_s: f64,
    /// Prompt tokens taken from the backend's prefix cache (0 when it has none or does not say).
    #[serde(default)]
    pub cached_tokens: usize,
}

/// Why a backend could not generate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend's queue is full; retry later.
    #[error("the model is busy (queue full)")]
    QueueFull,
    /// The backend is not available (stopped, unreachable upstream).
    #[error("the model backend is unavailable: {0}")]
    Unavailable(String),
    /// The request cannot be served (e.g. `max_tokens` above the context).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Generation failed.
    #[error("generation failed: {0}")]
    Failed(String),
}

/// A model backend. Implementations are cheap to share (`Arc<dyn Backend>`).
pub trait Backend: Send + Sync + 'static {
    /// For responses and logs: `echo`, `candle:Qwen/Qwen3-4B-Instruct-2507`, `openai:http://...`.
    fn name(&self) -> &str;
    /// Whether the backend can take requests now (`/readyz`).
    fn ready(&self) -> bool;
    /// The local engine's batching figures, for `/metrics` (backends without one: `None`).
    fn engine_stats(&self) -> Option<crate::model::EngineStats> {
        None
    }
    /// Starts generation. Dropping the receiver cancels it.
    fn generate(
        &self,
        request: BackendRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<BackendEvent>, BackendError>;
}

/// Events buffered between a backend and its consumer.
pub(crate) const EVENT_BUFFER: usize = 64;

/// The default echo backend (echoes the last user message, 4 characters per chunk).
pub fn echo() -> std::sync::Arc<dyn Backend> {
    std::sync::Arc::new(EchoBackend::new(EchoConfig::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_prefers_overrides_and_validate_names_the_field() {
        let base = GenerationParams {
            temperature: Some(0.8),
            top_p: Some(0.9),
            stop: vec!["x".into()],
            ..Default::default()
        };
        let over = GenerationParams { temperature: Some(0.2), ..Default::default() };
        let m = base.merged(&over);
        assert_eq!(m.temperature, Some(0.2));
        assert_eq!(m.top_p, Some(0.9));
        assert_eq!(m.stop, vec!["x".to_string()]);
        assert!(m.validate().is_ok());
        let bad = GenerationParams { top_p: Some(1.5), ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("top_p"));
        let bad = GenerationParams { temperature: Some(f32::NAN), ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("temperature"));
        let bad = GenerationParams { max_tokens: Some(0), ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("max_tokens"));
    }
}
