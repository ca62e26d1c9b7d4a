//! `POST /v1/chat/completions`: the OpenAI chat API, where `model` names a pipeline.
//!
//! Mapping: the last message must be the user's; its text becomes the pipeline's input
//! variable (`input_variable:` in the pipeline file, default `input`). Every earlier message,
//! a client's `system` (or `developer`, passed as `system`) message included, becomes the
//! history the prompt builder sees: the builder decides how to use it (`persona` keeps its own
//! system prompt first). Sampling fields override the pipeline's `params`; `top_k`, `min_p` and
//! `repetition_penalty` are accepted as extensions. Unknown fields are ignored, as OpenAI-
//! compatible servers usually do; `n` other than 1 is rejected.
//!
//! `finish_reason` is one of OpenAI's: `eos` becomes `stop`, and `plugin_stop` (a
//! post-processor such as `truncate` ended the output) becomes `length`, since the answer was
//! cut at a limit. The exact reason is in the `pipehost` extension object, with the stages,
//! plugin hashes, timings and (with `"pipehost": {"include_raw": true}`) the model's raw text.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::experiments::{RunTags, resolve_model, user_of};
use super::extract::ApiJson;
use super::stream::{Outcome, run_streaming_tagged, run_whole_tagged};
use super::{ApiError, AppState};
use crate::backend::{ChatMessage, GenerationParams};
use crate::pipeline::{RunRecord, RunRequest};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    n: Option<u64>,
    // Extensions.
    #[serde(default)]
    top_k: Option<u64>,
    #[serde(default)]
    min_p: Option<f64>,
    #[serde(default)]
    repetition_penalty: Option<f64>,
    #[serde(default)]
    pipehost: Option<PipehostOptions>,
    /// Who is asking: keeps them on one variant of an experiment (else `X-Pipehost-User`).
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The `pipehost` request extension.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipehostOptions {
    /// Return the model's text before post-processing as `pipehost.raw_text`.
    #[serde(default)]
    include_raw: bool,
    /// More pipeline variables, besides the input variable filled from the last user message.
    #[serde(default)]
    vars: BTreeMap<String, String>,
}

/// The text of a message's `content`: a string, or an array of `{"type": "text", "text"}` parts.
fn content_text(index: usize, content: &Value) -> Result<String, ApiError> {
    let param = || format!("messages[{index}].content");
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(
                            "unsupported_content",
                            format!(
                                "only text content parts are supported; messages[{index}].content[{i}] has type {}",
                                kind.unwrap_or("(none)")
                            ),
                        )
                        .with_param(format!("{}[{i}]", param())));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::bad_request(
            "invalid_type",
            "message content must be a string or an array of text parts",
        )
        .with_param(param())),
    }
}

fn f32_param(name: &str, v: Option<f64>) -> Result<Option<f32>, ApiError> {
    match v {
        Some(v) if !v.is_finite() || v.abs() > f64::from(f32::MAX) => {
            Err(ApiError::bad_request("invalid_value", format!("`{name}` is out of range: {v}"))
                .with_param(name))
        }
        Some(v) => Ok(Some(v as f32)),
        None => Ok(None),
    }
}

/// The request's sampling fields as overrides of the pipeline's, validated.
fn params(req: &ChatRequest) -> Result<GenerationParams, ApiError> {
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    let seed = match req.seed {
        Some(s) if s < 0 => {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("`seed` must not be negative, got {s}"),
            )
            .with_param("seed"));
        }
        s => s.map(|s| s as u64),
    };
    let params = GenerationParams {
        temperature: f32_param("temperature", req.temperature)?,
        top_p: f32_param("top_p", req.top_p)?,
        top_k: req.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
        min_p: f32_param("min_p", req.min_p)?,
        repetition_penalty: f32_param("repetition_penalty", req.repetition_penalty)?,
        presence_penalty: f32_param("presence_penalty", req.presence_penalty)?,
        frequency_penalty: f32_param("frequency_penalty", req.frequency_penalty)?,
        max_tokens: max_tokens.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        seed,
        stop: match &req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
    };
    params.validate().map_err(|msg| {
        let field = super::error::backticked(&msg);
        // The request may have said `max_completion_tokens`.
        let field = match field.as_deref() {
            Some("max_tokens") if req.max_completion_tokens.is_some() => {
                Some("max_completion_tokens".to_string())
            }
            _ => field,
        };
        let err = ApiError::bad_request("invalid_value", msg);
        match field {
            Some(f) => err.with_param(f),
            None => err,
        }
    })?;
    Ok(params)
}

/// Builds the pipeline request: last user message → input variable, the rest → history.
pub(super) fn run_request(req: &ChatRequest, input_variable: &str, id: &str) -> Result<RunRequest, ApiError> {
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("unsupported_value", "only `n: 1` is supported").with_param("n"));
    }
    let Some((last, earlier)) = req.messages.split_last() else {
        return Err(
            ApiError::bad_request("invalid_value", "`messages` must not be empty").with_param("messages")
        );
    };
    if last.role != "user" {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("the last message must have role `user`, got `{}`", last.role),
        )
        .with_param(format!("messages[{}].role", req.messages.len() - 1)));
    }
    let mut history = Vec::with_capacity(earlier.len());
    for (i, m) in earlier.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    format!("unknown role `{other}` (expected system, developer, user, assistant or tool)"),
                )
                .with_param(format!("messages[{i}].role")));
            }
        };
        history.push(ChatMessage { role: role.to_string(), content: content_text(i, &m.content)? });
    }
    let options = req.pipehost.as_ref();
    let mut vars = options.map(|o| o.vars.clone()).unwrap_or_default();
    vars.insert(input_variable.to_string(), content_text(req.messages.len() - 1, &last.content)?);
    Ok(RunRequest {
        request_id: id.to_string(),
        vars,
        history,
        params: params(req)?,
        include_raw: options.is_some_and(|o| o.include_raw),
        trace: false,
    })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// OpenAI's finish reasons are `stop`, `length`, `content_filter`, `tool_calls`.
fn openai_finish_reason(reason: &str) -> &'static str {
    match reason {
        "length" | "plugin_stop" => "length",
        _ => "stop",
    }
}

/// The `pipehost` extension object: the run record without the text (already in the choice),
/// plus the experiment and variant that answered.
fn extension(record: &RunRecord, tags: &RunTags) -> Value {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("text");
        map.remove("usage");
        if let (Some(e), Some(v)) = (&tags.experiment, &tags.variant) {
            map.insert("experiment".into(), e.clone().into());
            map.insert("variant".into(), v.clone().into());
        }
    }
    value
}

fn fingerprint(record: &RunRecord) -> String {
    format!("pipehost-{}", record.pipeline_sha256.get(..12).unwrap_or(&record.pipeline_sha256))
}

fn usage(record: &RunRecord) -> Value {
    json!({
        "prompt_tokens": record.usage.prompt_tokens,
        "completion_tokens": record.usage.completion_tokens,
        "total_tokens": record.usage.total_tokens,
        "prompt_tokens_details": { "cached_tokens": record.usage.cached_tokens },
    })
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let id = state.request_id("chatcmpl");
    let (pipeline, tags) = resolve_model(&state, &req.model, user_of(req.user.as_deref(), &headers), &id)?;
    let request = run_request(&req, &pipeline.input_variable, &id)?;
    let permit = state.admit()?;
    let created = unix_now();
    let model = req.model.clone();
    if !req.stream.unwrap_or(false) {
        let record = run_whole_tagged(&state, pipeline, request, permit, tags.clone()).await?;
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": fingerprint(&record),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": record.text, "refusal": null},
                "logprobs": null,
                "finish_reason": openai_finish_reason(&record.finish_reason),
            }],
            "usage": usage(&record),
            "pipehost": extension(&record, &tags),
        });
        return Ok(axum::Json(body).into_response());
    }

    let log_tags = tags.clone();
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let chunk = move |delta: Value, finish: Option<&str>, extra: Option<(&str, Value)>| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        if let Some((k, v)) = extra {
            c[k] = v;
        }
        c
    };
    let mut first = true;
    let map = move |outcome: Outcome| -> Vec<Event> {
        let mut events = Vec::new();
        let json_event = |v: &Value| Event::default().data(v.to_string());
        if first {
            first = false;
            if !matches!(outcome, Outcome::Error(_)) {
                events.push(json_event(&chunk(json!({"role": "assistant", "content": ""}), None, None)));
            }
        }
        match outcome {
            Outcome::Delta(text) => events.push(json_event(&chunk(json!({"content": text}), None, None))),
            Outcome::Done(record) => {
                let mut last = chunk(
                    json!({}),
                    Some(openai_finish_reason(&record.finish_reason)),
                    Some(("pipehost", extension(&record, &tags))),
                );
                last["system_fingerprint"] = Value::String(fingerprint(&record));
                events.push(json_event(&last));
                if include_usage {
                    let mut u = chunk(json!({}), None, None);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&record);
                    events.push(json_event(&u));
                }
                events.push(Event::default().data("[DONE]"));
            }
            Outcome::Error(err) => {
                // As OpenAI does mid-stream: an error object, then the end of the stream.
                events.push(Event::default().data(err.body_json()));
                events.push(Event::default().data("[DONE]"));
            }
        }
        events
    };
    let sse = run_streaming_tagged(&state, pipeline, request, permit, map, log_tags).await?;
    Ok(sse.into_response())
}
