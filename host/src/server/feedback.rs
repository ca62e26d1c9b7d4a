//! `POST /v1/feedback` (a named score on one answer, or a preference between two) and
//! `GET /v1/responses/{id}` (a logged answer with its feedback).
//!
//! Feedback: `{"response_id", "name" (default `thumbs`), "value", "comment"}`; `thumbs` takes 0
//! or 1 (or false/true), other names any finite number. Pairwise: `{"response_ids": [A, B],
//! "preferred": A | B | null}` (null: a tie). An unknown id is 404, a bad value 400 naming the
//! field; the same (response, name) — or the same pair — again replaces the earlier value.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::extract::ApiJson;
use super::{ApiError, AppState};
use crate::store::{Feedback, Pairwise, ResponseRow, Store, StoreError, now_ms};

const MAX_COMMENT_CHARS: usize = 4000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    #[serde(default)]
    response_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    response_ids: Option<Vec<String>>,
    /// `Some(Value::Null)` is a tie; `None` is absent.
    #[serde(default, deserialize_with = "present")]
    preferred: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_value", message).with_param(param)
}

fn not_found(param: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "response_not_found", format!("no logged response `{id}`"))
        .with_param(param)
}

fn store_of(state: &AppState) -> Result<Store, ApiError> {
    state.store().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_disabled",
            "this server keeps no request log (--db none)",
        )
    })
}

fn store_error(e: StoreError) -> ApiError {
    tracing::warn!("store: {e}");
    let mut err =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("the store failed: {e}"));
    err.retry_after = Some(1);
    err
}

/// Runs a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("store thread: {e}"))
    })?
}

/// A feedback name: like a pipeline name (it becomes a label in results).
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err(invalid(
            "name",
            format!("`name` must be 1-64 lowercase letters, digits, '-', '_' or '.', got {name:?}"),
        ));
    }
    Ok(())
}

fn check_comment(comment: &Option<String>) -> Result<(), ApiError> {
    match comment {
        Some(c) if c.chars().count() > MAX_COMMENT_CHARS => {
            Err(invalid("comment", format!("`comment` is longer than {MAX_COMMENT_CHARS} characters")))
        }
        _ => Ok(()),
    }
}

fn value_of(name: &str, value: Option<&Value>) -> Result<f64, ApiError> {
    let v = match value {
        None => return Err(invalid("value", "`value` is required")),
        Some(Value::Bool(b)) if name == "thumbs" => f64::from(u8::from(*b)),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_type",
                format!("`value` must be a number, got {other}"),
            )
            .with_param("value"));
        }
    };
    if !v.is_finite() {
        return Err(invalid("value", "`value` must be a finite number"));
    }
    if name == "thumbs" && v != 0.0 && v != 1.0 {
        return Err(invalid("value", format!("`thumbs` takes 0 (down) or 1 (up), got {v}")));
    }
    Ok(v)
}

pub async fn post(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<Response, ApiError> {
    let store = store_of(&state)?;
    check_comment(&body.comment)?;
    if let Some(ids) = body.response_ids {
        for (field, set) in [
            ("response_id", body.response_id.is_some()),
            ("name", body.name.is_some()),
            ("value", body.value.is_some()),
        ] {
            if set {
                return Err(invalid(
                    field,
                    format!("`{field}` does not go with `response_ids` (pairwise feedback)"),
                ));
            }
        }
        let [a, b] = <[String; 2]>::try_from(ids)
            .map_err(|_| invalid("response_ids", "`response_ids` must hold exactly two ids"))?;
        if a == b {
            return Err(invalid("response_ids", "`response_ids` must be two different responses"));
        }
        let preferred = match body.preferred {
            None => {
                return Err(invalid(
                    "preferred",
                    "`preferred` is required: one of `response_ids`, or null for a tie",
                ));
            }
            Some(Value::Null) => None,
            Some(Value::String(p)) if p == a || p == b => Some(p),
            Some(other) => {
                return Err(invalid(
                    "preferred",
                    format!("`preferred` must be one of `response_ids` or null, got {other}"),
                ));
            }
        };
        let pairwise =
            Pairwise { response_ids: [a, b], preferred, comment: body.comment, created_ms: now_ms() };
        let replaced = blocking(move || {
            for (i, id) in pairwise.response_ids.iter().enumerate() {
                if !store.exists(id).map_err(store_error)? {
                    return Err(not_found(&format!("response_ids[{i}]"), id));
                }
            }
            let replaced = store.put_pairwise(&pairwise).map_err(store_error)?;
            Ok((pairwise, replaced))
        })
        .await?;
        let (p, replaced) = replaced;
        return Ok(axum::Json(json!({
            "object": "feedback.pairwise",
            "response_ids": p.response_ids,
            "preferred": p.preferred,
            "comment": p.comment,
            "replaced": replaced,
        }))
        .into_response());
    }
    if body.preferred.is_some() {
        return Err(invalid("preferred", "`preferred` goes with `response_ids` (pairwise feedback)"));
    }
    let Some(response_id) = body.response_id else {
        return Err(invalid(
            "response_id",
            "`response_id` is required (or `response_ids` for pairwise feedback)",
        ));
    };
    let name = body.name.unwrap_or_else(|| "thumbs".to_owned());
    check_name(&name)?;
    let value = value_of(&name, body.value.as_ref())?;
    let feedback = Feedback { response_id, name, value, comment: body.comment, created_ms: now_ms() };
    let (f, replaced) = blocking(move || {
        if !store.exists(&feedback.response_id).map_err(store_error)? {
            return Err(not_found("response_id", &feedback.response_id));
        }
        let replaced = store.put_feedback(&feedback).map_err(store_error)?;
        Ok((feedback, replaced))
    })
    .await?;
    Ok(axum::Json(json!({
        "object": "feedback",
        "response_id": f.response_id,
        "name": f.name,
        "value": f.value,
        "comment": f.comment,
        "replaced": replaced,
    }))
    .into_response())
}

/// The record as `GET /v1/responses/{id}` shows it: the columns, the detail fields beside
/// them, and the feedback.
fn response_json(row: ResponseRow, feedback: Vec<Feedback>, pairwise: Vec<Pairwise>) -> Value {
    let mut v = json!({
        "id": row.id,
        "object": "pipehost.response",
        "created": row.created_ms / 1000,
        "created_ms": row.created_ms,
        "pipeline": row.pipeline,
        "pipeline_sha256": row.pipeline_sha256,
        "experiment": row.experiment,
        "variant": row.variant,
        "user": row.user,
        "finish_reason": row.finish_reason,
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "usage": {
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens,
        },
        "raw_text": row.raw_text,
        "text": row.text,
    });
    if let (Value::Object(out), Value::Object(detail)) = (&mut v, row.detail) {
        for (k, val) in detail {
            out.entry(k).or_insert(val);
        }
    }
    v["feedback"] = feedback
        .into_iter()
        .map(|f| json!({"name": f.name, "value": f.value, "comment": f.comment, "created_ms": f.created_ms}))
        .collect();
    v["pairwise"] = pairwise
        .into_iter()
        .map(|p| json!({"response_ids": p.response_ids, "preferred": p.preferred, "comment": p.comment, "created_ms": p.created_ms}))
        .collect();
    v
}

pub async fn get_response(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = store_of(&state)?;
    let found = blocking(move || {
        let found = store.response(&id).map_err(store_error)?;
        found.ok_or_else(|| not_found("id", &id))
    })
    .await?;
    let (row, feedback, pairwise) = found;
    Ok(axum::Json(response_json(row, feedback, pairwise)).into_response())
}
