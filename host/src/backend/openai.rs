//! `openai`: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp server,
//! Ollama, another pipehost), streaming over server-sent events. Pipehost stays stateless in
//! front of it, which is how a deployment scales past one machine.
//!
//! Needs a tokio runtime (the request runs as a task). Dropping the receiver aborts the HTTP
//! request, which the upstream server sees as a closed connection.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::sse::{SseDecoder, parse_chunk};
use super::{
    Backend, BackendError, BackendEvent, BackendReport, BackendRequest, EVENT_BUFFER, FinishReason, StopFlag,
};

/// Configuration of [`OpenAiBackend`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL including the version prefix, e.g. `http://vllm:8000/v1`.
    pub base_url: String,
    /// The `model` field sent upstream.
    pub model: String,
    /// Name of the environment variable holding the API key (sent as a bearer token); none: no
    /// `Authorization` header. The key itself never appears in config files.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Connect and first-byte timeout, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    60
}

/// The `openai` backend.
pub struct OpenAiBackend {
    config: OpenAiConfig,
    client: reqwest::Client,
    api_key: Option<String>,
    name: String,
}

impl OpenAiBackend {
    /// Builds the HTTP client and reads the API key from the environment.
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        // reqwest is built without a default crypto provider (aws-lc-rs needs a C toolchain);
        // ring is installed process-wide. An error means one is already installed: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let api_key = match &config.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!("openai backend: environment variable {var} (api_key_env) is not set")
            })?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(config.timeout_s.max(1)))
            .build()?;
        let name = format!("openai:{}", config.base_url.trim_end_matches('/'));
        Ok(Self { config, client, api_key, name })
    }
}

fn body(model: &str, request: &BackendRequest) -> Value {
    let p = &request.params;
    let mut body = json!({
        "model": model,
        "messages": request.messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let map = body.as_object_mut().expect("an object");
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            map.insert(k.into(), v);
        }
    };
    put("temperature", p.temperature.map(|v| json!(v)));
    put("top_p", p.top_p.map(|v| json!(v)));
    put("top_k", p.top_k.map(|v| json!(v)));
    put("min_p", p.min_p.map(|v| json!(v)));
    put("repetition_penalty", p.repetition_penalty.map(|v| json!(v)));
    put("presence_penalty", p.presence_penalty.map(|v| json!(v)));
    put("frequency_penalty", p.frequency_penalty.map(|v| json!(v)));
    put("max_tokens", p.max_tokens.map(|v| json!(v)));
    put("seed", p.seed.map(|v| json!(v)));
    put("stop", (!p.stop.is_empty()).then(|| json!(p.stop)));
    body
}

impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn ready(&self) -> bool {
        true
    }

    fn generate(&self, request: BackendRequest) -> Result<mpsc::Receiver<BackendEvent>, BackendError> {
        request.params.validate().map_err(BackendError::InvalidRequest)?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| BackendError::Unavailable("the openai backend needs a tokio runtime".into()))?;
        let url = format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'));
        let mut http = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-request-id", request.request_id.clone())
            .body(body(&self.config.model, &request).to_string());
        if let Some(key) = &self.api_key {
            http = http.bearer_auth(key);
        }
        let first_byte = Duration::from_secs(self.config.timeout_s.max(1));
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let stop = request.stop.clone();
        handle.spawn(async move {
            let result = tokio::select! {
                r = stream(http, first_byte, &tx, &stop) => r,
                _ = tx.closed() => return,
            };
            let last = match result {
                Ok(report) => BackendEvent::Done(report),
                Err(e) => BackendEvent::Error(e),
            };
            let _ = tx.send(last).await;
        });
        Ok(rx)
    }
}

async fn stream(
    http: reqwest::RequestBuilder,
    first_byte: Duration,
    tx: &mpsc::Sender<BackendEvent>,
    stop: &StopFlag,
) -> Result<BackendReport, BackendError> {
    let started = Instant::now();
    let mut response = tokio::time::timeout(first_byte, http.send())
        .await
        .map_err(|_| BackendError::Unavailable("upstream did not answer in time".into()))?
        .map_err(|e| BackendError::Unavailable(format!("upstream request failed: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(500).collect();
        return Err(match status.as_u16() {
            429 => BackendError::QueueFull,
            400..=499 => BackendError::InvalidRequest(format!("upstream answered {status}: {text}")),
            _ => BackendError::Unavailable(format!("upstream answered {status}: {text}")),
        });
    }
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    let mut finish = None;
    let mut usage = (0usize, 0usize);
    let mut deltas = 0usize;
    let mut first_token_ms = None;
    let mut ended = false;
    while !ended {
        // Stopped: close the upstream stream and report what it counted so far (its usage
        // arrives only at the end unless it sends it with every chunk, as vLLM can).
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            _ = stop.stopped() => {
                return Ok(report(usage, deltas, Some(FinishReason::Cancelled), first_token_ms, started));
            }
        };
        let chunk = chunk.map_err(|e| BackendError::Unavailable(format!("upstream stream failed: {e}")))?;
        match chunk {
            Some(bytes) => decoder.push(&bytes, &mut events)?,
            None => {
                decoder.finish(&mut events);
                ended = true;
            }
        }
        for data in events.drain(..) {
            let chunk = parse_chunk(&data)?;
            if chunk.done {
                return Ok(report(usage, deltas, finish, first_token_ms, started));
            }
            usage = chunk.usage.unwrap_or(usage);
            for text in chunk.deltas {
                deltas += 1;
                first_token_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1000.0);
                if tx.send(BackendEvent::Delta(text)).await.is_err() {
                    let cancelled = Some(FinishReason::Cancelled);
                    return Ok(report(usage, deltas, cancelled, first_token_ms, started));
                }
            }
            finish = chunk.finish_reason.or(finish);
        }
    }
    if finish.is_none() {
        return Err(BackendError::Failed("upstream closed the stream before finishing".into()));
    }
    Ok(report(usage, deltas, finish, first_token_ms, started))
}

fn report(
    usage: (usize, usize),
    deltas: usize,
    finish: Option<FinishReason>,
    first_token_ms: Option<f64>,
    started: Instant,
) -> BackendReport {
    let completion_tokens = if usage.1 > 0 { usage.1 } else { deltas };
    let prefill_ms = first_token_ms.unwrap_or(0.0);
    let decode_s = started.elapsed().as_secs_f64() - prefill_ms / 1000.0;
    BackendReport {
        prompt_tokens: usage.0,
        completion_tokens,
        finish_reason: finish.unwrap_or(FinishReason::Stop),
        prefill_ms,
        decode_tokens_per_s: if decode_s > 0.0 && completion_tokens > 1 {
            (completion_tokens - 1) as f64 / decode_s
        } else {
            0.0
        },
        cached_tokens: 0,
    }
}
