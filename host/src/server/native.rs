//! `POST /v1/pipelines/{name}/run`: the native endpoint.
//!
//! Body: `{"vars": {...}, "params": {...}, "history": [...], "include_raw": bool, "stream": bool}`
//! (everything optional but the variables the pipeline requires). Whole-text: the run record as
//! JSON, with the run's `id`. Streaming: SSE `event: delta` with `{"text": "..."}` as text arrives, then one
//! `event: done` carrying the whole record, or `event: error` with an OpenAI-shaped error.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::ApiJson;
use super::stream::{Outcome, run_streaming, run_whole};
use super::{ApiError, AppState};
use crate::backend::{ChatMessage, GenerationParams};
use crate::pipeline::{Pipeline, RunRecord, RunRequest};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub params: GenerationParams,
    #[serde(default)]
    pub history: Vec<HistoryMessage>,
    #[serde(default)]
    pub include_raw: bool,
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryMessage {
    role: String,
    content: String,
}

pub async fn run(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<Response, ApiError> {
    let Some(pipeline) = state.registry().get(&name) else {
        return Err(ApiError::unknown_pipeline(&name).with_param("name"));
    };
    let trace = false;
    respond(&state, pipeline, body, trace, "run").await
}

/// Checks `body`, runs `pipeline` and answers with its record (whole-text) or SSE; the record
/// carries the run's `id`. With `trace`, the record has the raw text, the prompt's messages and
/// each stage's output.
pub(super) async fn respond(
    state: &AppState,
    pipeline: Arc<Pipeline>,
    body: RunBody,
    trace: bool,
    id_prefix: &str,
) -> Result<Response, ApiError> {
    body.params.validate().map_err(|msg| {
        let field = super::error::backticked(&msg);
        let err = ApiError::bad_request("invalid_value", msg);
        match field {
            Some(f) => err.with_param(format!("params.{f}")),
            None => err,
        }
    })?;
    for (i, m) in body.history.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(ApiError::bad_request(
                "invalid_value",
                format!("unknown role `{}` (expected system, user, assistant or tool)", m.role),
            )
            .with_param(format!("history[{i}].role")));
        }
    }
    let id = state.request_id(id_prefix);
    let request = RunRequest {
        request_id: id.clone(),
        vars: body.vars,
        history: body.history.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
        params: body.params,
        include_raw: body.include_raw || trace,
        trace,
    };
    let permit = state.admit()?;
    if !body.stream {
        let record = run_whole(state, pipeline, request, permit).await?;
        return Ok(axum::Json(with_id(&record, &id)).into_response());
    }
    let map = move |outcome: Outcome| -> Vec<Event> {
        match outcome {
            Outcome::Delta(text) => {
                vec![Event::default().event("delta").data(json!({"text": text}).to_string())]
            }
            Outcome::Done(record) => {
                vec![Event::default().event("done").data(with_id(&record, &id).to_string())]
            }
            Outcome::Error(err) => vec![Event::default().event("error").data(err.body_json())],
        }
    };
    let sse = run_streaming(state, pipeline, request, permit, map).await?;
    Ok(sse.into_response())
}

/// The record as JSON with the run's id first.
fn with_id(record: &RunRecord, id: &str) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("id".into(), id.into());
    if let Ok(Value::Object(fields)) = serde_json::to_value(record) {
        out.extend(fields);
    }
    Value::Object(out)
}
