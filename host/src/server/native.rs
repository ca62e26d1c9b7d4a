//! `POST /v1/pipelines/{name}/run`: the native endpoint.
//!
//! Body: `{"vars": {...}, "params": {...}, "history": [...], "include_raw": bool, "stream": bool}`
//! (everything optional but the variables the pipeline requires). Whole-text: the run record as
//! JSON. Streaming: SSE `event: delta` with `{"text": "..."}` as text arrives, then one
//! `event: done` carrying the whole record, or `event: error` with an OpenAI-shaped error.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::extract::ApiJson;
use super::stream::{Outcome, run_streaming, run_whole};
use super::{ApiError, AppState};
use crate::backend::{ChatMessage, GenerationParams};
use crate::pipeline::RunRequest;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    params: GenerationParams,
    #[serde(default)]
    history: Vec<HistoryMessage>,
    #[serde(default)]
    include_raw: bool,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryMessage {
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
    let request = RunRequest {
        request_id: state.request_id("run"),
        vars: body.vars,
        history: body.history.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
        params: body.params,
        include_raw: body.include_raw,
        trace: false,
    };
    let permit = state.admit()?;
    if !body.stream {
        let record = run_whole(&state, pipeline, request, permit).await?;
        return Ok(axum::Json(record).into_response());
    }
    let map = |outcome: Outcome| -> Vec<Event> {
        match outcome {
            Outcome::Delta(text) => {
                vec![Event::default().event("delta").data(json!({"text": text}).to_string())]
            }
            Outcome::Done(record) => vec![
                Event::default()
                    .event("done")
                    .data(serde_json::to_string(&record).unwrap_or_else(|_| String::from("{}"))),
            ],
            Outcome::Error(err) => vec![Event::default().event("error").data(err.body_json())],
        }
    };
    let sse = run_streaming(&state, pipeline, request, permit, map).await?;
    Ok(sse.into_response())
}
