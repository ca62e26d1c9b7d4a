//! Errors as OpenAI-shaped JSON: `{"error": {"message", "type", "param", "code"}}` with the
//! right status code, so OpenAI client libraries raise their usual exceptions.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::backend::BackendError;
use crate::pipeline::{LoadError, PipelineError};
use crate::plugin::Cause;

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `server_error`, `timeout_error`.
    pub kind: &'static str,
    /// The request field at fault, when known.
    pub param: Option<String>,
    /// A stable machine-readable code (also the `cause` label of the error metric).
    pub code: String,
    /// Seconds, for 429 and 503 (u32: keeps the error small enough to return by value).
    pub retry_after: Option<u32>,
    /// Located problems of a pipeline text (`[{file, line, column, message}]`), so a page can
    /// show each beside its field; OpenAI clients ignore the extra member.
    pub errors: Option<Box<[LoadError]>>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [LoadError]>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 | 403 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            504 => "timeout_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: code.into(),
            retry_after: None,
            errors: None,
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// OpenAI's own 404 for an unknown model is an `invalid_request_error` with
    /// `code: model_not_found` and `param: model`.
    pub fn unknown_pipeline(name: &str) -> Self {
        let mut err = Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the pipeline `{name}` does not exist (GET /v1/models lists them)"),
        );
        err.kind = "invalid_request_error";
        err.with_param("model")
    }

    /// 400 for a pipeline text that does not load: every problem, located, in the message and
    /// in `errors`.
    pub fn invalid_pipeline(errors: Vec<LoadError>) -> Self {
        let message = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
        let mut err = Self::bad_request("invalid_pipeline", message).with_param("yaml");
        err.errors = Some(errors.into_boxed_slice());
        err
    }

    pub fn busy(message: impl Into<String>, retry_after: u32) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "server_busy", message);
        err.retry_after = Some(retry_after);
        err
    }

    /// The JSON body alone (for SSE error events).
    pub fn body_json(&self) -> String {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: &self.code,
                errors: self.errors.as_deref(),
            },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from("{\"error\":{}}"))
    }

    /// Maps a pipeline failure; `retry_after` is used for 429/503.
    pub fn from_pipeline(err: &PipelineError, retry_after: u32) -> Self {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut api = ApiError::new(status, err.code(), err.to_string());
        match err {
            PipelineError::UnknownPipeline(name) => return ApiError::unknown_pipeline(name),
            PipelineError::InvalidVariable { name, .. } => api.param = Some(format!("vars.{name}")),
            PipelineError::InvalidParams(msg) => api.param = backticked(msg),
            // The backend's own checks (e.g. `max_tokens` against the model's context) name
            // the field the same way.
            PipelineError::Backend(BackendError::InvalidRequest(msg)) => api.param = backticked(msg),
            _ => {}
        }
        if matches!(status.as_u16(), 429 | 503) {
            api.retry_after = Some(retry_after);
        }
        api
    }
}

/// The first `name` in backticks: `GenerationParams::validate` names the field that way.
pub(crate) fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_string())
}

/// The metric label of a plugin failure: `trap`, `timeout`, ...
pub(crate) fn plugin_cause(cause: &Cause) -> &'static str {
    cause.code()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Errors are reported once, by the metrics middleware, from this extension.
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

/// Set on error responses so the metrics middleware can count errors by cause.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCode(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backticked_field_names() {
        assert_eq!(backticked("`top_p` must be in (0, 1], got 1.5").as_deref(), Some("top_p"));
        assert_eq!(backticked("no field"), None);
    }

    #[test]
    fn body_shape() {
        let err = ApiError::bad_request("invalid_json", "bad").with_param("messages");
        let v: serde_json::Value = serde_json::from_str(&err.body_json()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["error"]["message"], "bad");
    }
}
