//! A JSON body extractor whose rejections are OpenAI-shaped: 413 past the body limit, 400 for
//! invalid UTF-8 (with the byte offset) and for malformed JSON or wrong types (with the line,
//! column and the path of the field).
//!
//! Unlike axum's `Json`, it does not insist on `Content-Type: application/json` (`curl -d`
//! sends a form type by default; the body is JSON or it is rejected anyway).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // hyper bounds the time to read a request head, not its body: without this, a client
        // sending its body a byte at a time (slow POST) holds the connection and the handler
        // forever.
        let limit = state.config().body_read_timeout;
        let read = tokio::time::timeout(limit, Bytes::from_request(req, state)).await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {} ms", limit.as_millis()),
            )
        })?;
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request_too_large",
                    "the request body is larger than the server's limit (--max-body-bytes)",
                )
            } else {
                ApiError::bad_request("invalid_body", format!("could not read the request body: {rejection}"))
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming where it went wrong.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; expected a JSON object",
        ));
    }
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(ApiError::bad_request(
            "invalid_utf8",
            format!("the request body is not valid UTF-8 (at byte {})", err.valid_up_to()),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let (code, what) = match inner.classify() {
            serde_json::error::Category::Data => ("invalid_type", "invalid value"),
            serde_json::error::Category::Eof => ("invalid_json", "truncated JSON"),
            _ => ("invalid_json", "malformed JSON"),
        };
        let field = if path.is_empty() || path == "." { String::new() } else { format!(" in `{path}`") };
        let api = ApiError::bad_request(code, format!("{what}{field}: {inner}"));
        if path.is_empty() || path == "." { api } else { api.with_param(path) }
    })?;
    // Trailing garbage after the object.
    de.end().map_err(|e| ApiError::bad_request("invalid_json", format!("malformed JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        a: u32,
        b: Vec<String>,
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let err = parse::<T>(b"{\"a\": 1,\n \"b\": [1]}").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("b[0]"));
        assert!(err.message.contains("line 2"), "{}", err.message);
        let err = parse::<T>(b"{\"a\": 1,").unwrap_err();
        assert_eq!(err.code, "invalid_json");
        assert!(err.message.contains("column"), "{}", err.message);
        let err = parse::<T>(b"{\"a\": \xff}").unwrap_err();
        assert_eq!(err.code, "invalid_utf8");
        assert!(parse::<T>(b"{\"a\": 1, \"b\": []} x").is_err());
        assert!(parse::<T>(b"{\"a\": 1, \"b\": []}").is_ok());
    }
}
