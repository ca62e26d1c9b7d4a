//! The playground's API (docs/server.md, docs/playground.md) and its page.
//!
//! - `POST /v1/playground/run`: runs an unsaved pipeline (`yaml`) like
//!   `POST /v1/pipelines/{name}/run`, always traced: the raw text, the prompt's messages and each
//!   stage's `output`.
//! - `POST /v1/playground/check`: validates a draft as at load and lists its located problems
//!   (the page shows each beside its field as the user types).
//! - `PUT /v1/pipelines/{name}`: validates and saves `pipelines/NAME.yaml` atomically; hot
//!   reload serves it at once.
//! - `GET /` and `GET /playground/{file}`: the page, embedded in the binary.
//!
//! Writes and runs from a page refuse other origins: there is no cookie authentication, so a
//! foreign page cannot act with a user's credentials anyway, but without the check it could still
//! make a browser on the same machine save pipelines on a keyless loopback server.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::ApiJson;
use super::native::{HistoryMessage, RunBody, respond};
use super::{ApiError, AppState};
use crate::backend::GenerationParams;
use crate::pipeline::{SaveError, spec_json};
use crate::playground;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftRunBody {
    /// A whole pipeline file.
    yaml: String,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    params: GenerationParams,
    #[serde(default)]
    history: Vec<HistoryMessage>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YamlBody {
    yaml: String,
}

/// Refuses a browser request made by a page of another origin (`Origin` or `Sec-Fetch-Site`
/// say so). Requests without either (curl, SDKs) pass: they carry no ambient credentials.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse =
        |why: String| Err(ApiError::new(StatusCode::FORBIDDEN, "cross_origin", why).with_param("Origin"));
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site == "cross-site"
    {
        return refuse("cross-site requests may not run or save pipelines".into());
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    if host.is_empty() || authority != Some(host) {
        return refuse(format!("origin {origin:?} may not run or save pipelines on {host:?}"));
    }
    Ok(())
}

/// Loads a draft on a blocking thread (plugins' `validate-config` runs in the sandbox).
async fn load_draft(state: &AppState, yaml: String) -> Result<crate::pipeline::Pipeline, ApiError> {
    let registry = state.registry().clone();
    tokio::task::spawn_blocking(move || registry.check_draft(yaml))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e}")))?
        .map_err(ApiError::invalid_pipeline)
}

pub async fn run(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<DraftRunBody>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    let pipeline = load_draft(&state, body.yaml).await?;
    let run = RunBody {
        vars: body.vars,
        params: body.params,
        history: body.history,
        include_raw: true,
        stream: body.stream,
    };
    let trace = true;
    respond(&state, std::sync::Arc::new(pipeline), run, trace, "pg").await
}

pub async fn check(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<YamlBody>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    match load_draft(&state, body.yaml).await {
        Ok(p) => Ok(axum::Json(json!({"ok": true, "name": p.name, "sha256": p.sha256})).into_response()),
        Err(e) if e.errors.is_some() => {
            Ok(axum::Json(json!({"ok": false, "errors": e.errors})).into_response())
        }
        Err(e) => Err(e),
    }
}

pub async fn save(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<YamlBody>,
) -> Result<Response, ApiError> {
    same_origin(&headers)?;
    if state.config().read_only {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this server was started with --read-only: pipelines cannot be saved",
        ));
    }
    let registry = state.registry().clone();
    let saved = tokio::task::spawn_blocking(move || registry.save(&name, body.yaml))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e}")))?;
    match saved {
        Ok(saved) => {
            let status = if saved.created { StatusCode::CREATED } else { StatusCode::OK };
            let detail =
                state.registry().get(&saved.info.name).map(|p| pipeline_detail(&saved.info, &p.source));
            Ok((status, axum::Json(detail.unwrap_or_else(|| json!(saved.info)))).into_response())
        }
        Err(SaveError::InvalidName(m)) => Err(ApiError::bad_request("invalid_name", m).with_param("name")),
        Err(SaveError::Invalid(errors)) => Err(ApiError::invalid_pipeline(errors)),
        Err(e @ SaveError::Conflict { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, "name_taken", e.to_string()).with_param("name"))
        }
        Err(e @ SaveError::Io { .. }) => {
            tracing::error!("saving a pipeline: {e}");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "save_failed", e.to_string()))
        }
    }
}

/// `GET /v1/pipelines/{name}`'s body: the summary, the file's text (`yaml`) and the file as
/// JSON (`spec`, what the page's form edits).
pub(super) fn pipeline_detail(info: &crate::pipeline::PipelineInfo, source: &str) -> Value {
    let mut v = json!(info);
    v["yaml"] = source.into();
    v["spec"] = spec_json(source).unwrap_or(Value::Null);
    v
}

/// The page's files; unknown names 404.
pub async fn asset(Path(file): Path<String>) -> Response {
    page_file(&file)
}

pub async fn index() -> Response {
    page_file("index.html")
}

fn page_file(file: &str) -> Response {
    let Some((content_type, body)) = playground::asset(file) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no playground file {file:?}"))
            .into_response();
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Only the page's own files run; model and plugin output are inserted as text, and this
    // keeps an injected `<img onerror>` or `<script>` inert even if that ever slipped.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
