//! `candle`: the local Qwen3 engine ([`crate::model::Engine`]) as a [`Backend`]. A thin
//! adapter: parameters map one to one, and one bridge thread per request forwards the engine's
//! events to a tokio channel (dropping that channel's receiver drops the engine stream, which
//! cancels generation before the next token).

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Backend, BackendError, BackendEvent, BackendReport, BackendRequest, EVENT_BUFFER};
use crate::model::{self, Engine, GenerateRequest, ModelError, Prompt, SamplingParams};

/// The `candle` backend.
pub struct CandleBackend {
    engine: Arc<Engine>,
    name: String,
}

impl CandleBackend {
    pub fn new(engine: Arc<Engine>) -> Self {
        let name = format!("candle:{}", engine.info().name);
        Self { engine, name }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

fn map_error(e: ModelError) -> BackendError {
    match e {
        ModelError::QueueFull => BackendError::QueueFull,
        ModelError::EngineStopped => BackendError::Unavailable(e.to_string()),
        ModelError::InvalidRequest(m) => BackendError::InvalidRequest(m),
        // The client asked for more tokens than the engine could ever hold: its request to fix.
        ModelError::KvBudget { .. } => BackendError::InvalidRequest(e.to_string()),
        other => BackendError::Failed(other.to_string()),
    }
}

/// The engine request for a backend request.
pub(crate) fn generate_request(request: &BackendRequest) -> GenerateRequest {
    let p = &request.params;
    let messages =
        request.messages.iter().map(|m| model::ChatMessage::new(m.role.clone(), m.content.clone())).collect();
    let mut req = GenerateRequest::new(Prompt::Chat { messages, template_kwargs: Default::default() });
    req.sampling = SamplingParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: p.seed,
    };
    req.max_new_tokens = p.max_tokens;
    req.stop = p.stop.clone();
    req
}

impl Backend for CandleBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn ready(&self) -> bool {
        true
    }

    fn engine_stats(&self) -> Option<model::EngineStats> {
        Some(self.engine.stats())
    }

    fn generate(&self, request: BackendRequest) -> Result<mpsc::Receiver<BackendEvent>, BackendError> {
        request.params.validate().map_err(BackendError::InvalidRequest)?;
        // The engine would clamp to the context; a client asking for more made a mistake.
        let context = self.engine.info().max_context;
        if let Some(n) = request.params.max_tokens
            && n >= context
        {
            return Err(BackendError::InvalidRequest(format!(
                "`max_tokens` is {n}; the model's context is {context} tokens, prompt included"
            )));
        }
        let mut stream = self
            .engine
            .try_submit_with_stop(generate_request(&request), request.stop.clone())
            .map_err(map_error)?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        std::thread::Builder::new()
            .name("pipehost-candle-bridge".into())
            .spawn(move || {
                while let Some(event) = stream.recv_blocking() {
                    let (event, last) = match event {
                        model::Event::Delta(text) => (BackendEvent::Delta(text), false),
                        model::Event::Done(r) => (
                            BackendEvent::Done(BackendReport {
                                prompt_tokens: r.prompt_tokens,
                                completion_tokens: r.completion_tokens,
                                finish_reason: r.finish_reason,
                                prefill_ms: r.prefill_ms,
                                decode_tokens_per_s: r.decode_tokens_per_s,
                                cached_tokens: r.cached_tokens,
                            }),
                            true,
                        ),
                        model::Event::Error(e) => (BackendEvent::Error(map_error(e)), true),
                    };
                    // A closed receiver: drop `stream`, which cancels the request.
                    if tx.blocking_send(event).is_err() || last {
                        return;
                    }
                }
                let _ = tx.blocking_send(BackendEvent::Error(BackendError::Unavailable(
                    "the model engine stopped".into(),
                )));
            })
            .map_err(|e| BackendError::Unavailable(format!("cannot start a thread: {e}")))?;
        Ok(rx)
    }
}
