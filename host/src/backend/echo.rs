//! `echo`: a deterministic backend with no model. It streams back the rendered prompt (or a
//! fixed text) in chunks of `chunk_chars` characters, one "token" per chunk, honouring
//! `max_tokens` (finish reason `length`) and `stop` strings (finish reason `stop`). Usage is
//! counted in characters of the messages (prompt) and chunks (completion).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Backend, BackendError, BackendEvent, BackendReport, BackendRequest, EVENT_BUFFER, FinishReason};

/// What the echo backend sends back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EchoMode {
    /// The content of the last user message.
    #[default]
    LastUser,
    /// Every message as `role: content`, one per line.
    All,
}

/// Configuration of [`EchoBackend`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EchoConfig {
    /// Reply with this text instead of echoing the prompt.
    pub text: Option<String>,
    /// What to echo when `text` is not set.
    pub mode: EchoMode,
    /// Characters per chunk (≥ 1).
    pub chunk_chars: usize,
    /// Pause before each chunk, in milliseconds (simulates a model's pace).
    pub delay_ms: u64,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self { text: None, mode: EchoMode::LastUser, chunk_chars: 4, delay_ms: 0 }
    }
}

/// The largest answer queued at once rather than sent from a thread.
const QUEUE_AT_ONCE_BYTES: usize = 64 << 10;

/// The `echo` backend. A small answer without a delay is queued at once; otherwise each
/// request runs on its own short-lived thread.
pub struct EchoBackend {
    config: EchoConfig,
    cancelled: Arc<AtomicUsize>,
}

impl EchoBackend {
    pub fn new(config: EchoConfig) -> Self {
        Self { config, cancelled: Arc::new(AtomicUsize::new(0)) }
    }

    /// How many requests ended early: their receiver dropped, or stopped through their
    /// `StopFlag` (for cancellation tests).
    pub fn cancelled_count(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn text(&self, request: &BackendRequest) -> String {
        if let Some(text) = &self.config.text {
            return text.clone();
        }
        match self.config.mode {
            EchoMode::LastUser => request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            EchoMode::All => request
                .messages
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl Backend for EchoBackend {
    fn name(&self) -> &str {
        "echo"
    }

    fn ready(&self) -> bool {
        true
    }

    fn generate(&self, request: BackendRequest) -> Result<mpsc::Receiver<BackendEvent>, BackendError> {
        request.params.validate().map_err(BackendError::InvalidRequest)?;
        let mut text = self.text(&request);
        let mut finish = FinishReason::Eos;
        if let Some(cut) = request.params.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
            finish = FinishReason::Stop;
        }
        let chars: Vec<char> = text.chars().collect();
        let mut chunks: Vec<String> =
            chars.chunks(self.config.chunk_chars.max(1)).map(|c| c.iter().collect()).collect();
        if let Some(max) = request.params.max_tokens
            && chunks.len() > max
        {
            chunks.truncate(max);
            finish = FinishReason::Length;
        }
        let prompt_tokens = request.messages.iter().map(|m| m.content.chars().count()).sum();
        let delay = Duration::from_millis(self.config.delay_ms);
        let report = move |completion_tokens, secs: f64| BackendReport {
            prompt_tokens,
            completion_tokens,
            finish_reason: finish,
            prefill_ms: 0.0,
            decode_tokens_per_s: if secs > 0.0 { completion_tokens as f64 / secs } else { 0.0 },
            cached_tokens: 0,
        };
        if delay.is_zero() && text.len() <= QUEUE_AT_ONCE_BYTES {
            // A small answer with no delay is queued at once, without a thread (a thread per
            // request was ~100 µs of an HTTP benchmark's CPU). Larger ones keep the thread, so
            // that a slow reader applies backpressure and can cancel mid-answer.
            let (tx, rx) = mpsc::channel(chunks.len() + 1);
            let completion_tokens = chunks.len();
            for chunk in chunks {
                let _ = tx.try_send(BackendEvent::Delta(chunk));
            }
            let _ = tx.try_send(BackendEvent::Done(report(completion_tokens, 0.0)));
            return Ok(rx);
        }
        let cancelled = self.cancelled.clone();
        let stop = request.stop.clone();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        std::thread::Builder::new()
            .name("pipehost-echo".into())
            .spawn(move || {
                let started = Instant::now();
                let mut completion_tokens = 0;
                let mut stopped = false;
                for chunk in chunks {
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    if stop.is_stopped() {
                        stopped = true;
                        break;
                    }
                    if tx.blocking_send(BackendEvent::Delta(chunk)).is_err() {
                        cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    completion_tokens += 1;
                }
                let mut report = report(completion_tokens, started.elapsed().as_secs_f64());
                if stopped {
                    report.finish_reason = FinishReason::Cancelled;
                    cancelled.fetch_add(1, Ordering::SeqCst);
                }
                if tx.blocking_send(BackendEvent::Done(report)).is_err() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                }
            })
            .map_err(|e| BackendError::Unavailable(format!("cannot start a thread: {e}")))?;
        Ok(rx)
    }
}
