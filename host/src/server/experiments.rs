//! Experiments over HTTP: a chat-completions `model` that names an experiment is answered by
//! the variant the user is assigned to; `GET /v1/experiments` lists them.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::experiment::{AssignBy, assign, stats};
use crate::pipeline::Pipeline;

/// The header that names the user when the request body has no `user`.
pub const USER_HEADER: &str = "x-pipehost-user";

/// Who asked and which experiment variant answered: kept with the run in the request log and
/// shown in the response's `pipehost` object.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunTags {
    pub experiment: Option<String>,
    pub variant: Option<String>,
    pub user: Option<String>,
}

/// The request's user: the body's `user`, else the `X-Pipehost-User` header; blank is none.
pub(crate) fn user_of(body_user: Option<&str>, headers: &HeaderMap) -> Option<String> {
    body_user
        .or_else(|| headers.get(USER_HEADER).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.chars().take(256).collect())
}

/// The pipeline that answers `model`: a pipeline of that name, else the assigned variant of
/// the experiment of that name. `request_id` keys the per-request pick (no user, or
/// `assign_by: request`).
pub(crate) fn resolve_model(
    state: &AppState,
    model: &str,
    user: Option<String>,
    request_id: &str,
) -> Result<(Arc<Pipeline>, RunTags), ApiError> {
    if let Some(p) = state.registry().get(model) {
        return Ok((p, RunTags { user, ..RunTags::default() }));
    }
    let Some(experiment) = state.experiments().get(model) else {
        return Err(ApiError::unknown_pipeline(model));
    };
    let key = match (&user, experiment.assign_by) {
        (Some(u), AssignBy::User) => u.as_str(),
        _ => request_id,
    };
    let variant = &experiment.variants[assign::assign(&experiment.name, &experiment.variants, key)];
    let Some(pipeline) = state.registry().get(&variant.pipeline) else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "variant_unavailable",
            format!(
                "experiment `{}`: variant `{}` needs pipeline `{}`, which is not loaded",
                experiment.name, variant.name, variant.pipeline
            ),
        )
        .with_param("model"));
    };
    let tags =
        RunTags { experiment: Some(experiment.name.clone()), variant: Some(variant.name.clone()), user };
    Ok((pipeline, tags))
}

pub async fn list(State(state): State<AppState>) -> impl IntoResponse {
    let experiments = state.experiments();
    axum::Json(json!({
        "object": "list",
        "data": experiments.list(),
        "errors": experiments.errors(),
    }))
}

pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let info = state.experiments().list().into_iter().find(|e| e.experiment.name == name);
    let Some(store) = state.store().cloned() else {
        let Some(info) = info else { return Err(experiment_not_found(&name)) };
        let mut body = serde_json::to_value(&info).unwrap_or_default();
        body["results"] = serde_json::Value::Null;
        body["results_error"] = "this server keeps no request log (--db none)".into();
        return Ok(axum::Json(body).into_response());
    };
    let experiment = info.as_ref().map(|i| i.experiment.clone());
    let variant_pipelines: Vec<(String, String)> = experiment
        .iter()
        .flat_map(|e| e.variants.iter().map(|v| (v.name.clone(), v.pipeline.clone())))
        .collect();
    let lookup = name.clone();
    let data = tokio::task::spawn_blocking(move || store.experiment_data(&lookup, &variant_pipelines))
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("the store failed: {e}"),
            )
        })?;
    if info.is_none() && data.variants.is_empty() {
        return Err(experiment_not_found(&name));
    }
    let report = stats::report(&name, experiment.as_ref(), &data);
    let mut body = match &info {
        Some(info) => serde_json::to_value(info).unwrap_or_default(),
        // Logged, but its file is gone: the results alone.
        None => json!({"name": name}),
    };
    body["results"] = serde_json::to_value(&report).unwrap_or_default();
    Ok(axum::Json(body).into_response())
}

fn experiment_not_found(name: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "experiment_not_found",
        format!("no experiment named `{name}` (GET /v1/experiments lists them)"),
    )
    .with_param("name")
}
