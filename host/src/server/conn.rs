//! The connection's byte stream, with hyper's own 431 made OpenAI-shaped.
//!
//! A request head over hyper's limits (its read buffer, or more than 100 headers) never
//! reaches the router: hyper answers `431 Request Header Fields Too Large` itself, with an
//! empty body, and closes the connection. hyper has no hook for that response, so this wrapper
//! recognises it on its way out (a write starting with the 431 status line: the router never
//! answers 431, and every response body here is JSON, SSE, text or HTML, none of which starts
//! with a status line) and sends the usual `{"error": {...}}` body instead.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::AppState;
use super::error::ApiError;

/// The error code of a request head over the limits.
pub(crate) const HEADERS_TOO_LARGE: &str = "headers_too_large";

/// A stream whose 431 from hyper is rewritten (see the module docs).
pub(crate) struct Connection<S> {
    inner: S,
    /// For the metrics: the router never sees this response.
    state: AppState,
    /// The rewritten response still to send, and how much of it was sent.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<S> Connection<S> {
    pub fn new(inner: S, state: AppState) -> Self {
        Self { inner, state, replacement: None }
    }
}

/// The full response for hyper's 431 status line `head` (its HTTP version kept).
fn replacement_for(head: &[u8]) -> Option<Vec<u8>> {
    let version = [&b"HTTP/1.1"[..], b"HTTP/1.0"].into_iter().find(|v| head.starts_with(v))?;
    if !head[version.len()..].starts_with(b" 431 ") {
        return None;
    }
    let body = ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        HEADERS_TOO_LARGE,
        "the request head is too large: a header longer than the server reads at once, or more \
         than 100 headers",
    )
    .body_json();
    let mut response = Vec::with_capacity(160 + body.len());
    response.extend_from_slice(version);
    response.extend_from_slice(
        format!(
            " 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(response)
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Starts the replacement when `first` is hyper's 431 head; then sends what is left of it.
    /// `Ready(Ok(true))`: `first` was the 431 and the replacement is all sent.
    fn poll_replace(&mut self, cx: &mut Context<'_>, first: &[u8]) -> Poll<std::io::Result<bool>> {
        if self.replacement.is_none() {
            let Some(response) = replacement_for(first) else { return Poll::Ready(Ok(false)) };
            self.state.metrics().http_request("other", 431);
            self.state.metrics().error(HEADERS_TOO_LARGE);
            self.replacement = Some((response, 0));
        }
        let (response, sent) = self.replacement.as_mut().expect("set above");
        while *sent < response.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &response[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        // Anything hyper wrote after it (it closes the connection) goes through unchanged.
        self.replacement = Some((Vec::new(), 0));
        Poll::Ready(Ok(true))
    }

    fn replaced(&self) -> bool {
        self.replacement.as_ref().is_some_and(|(r, _)| r.is_empty())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.replaced() && ready!(self.poll_replace(cx, buf))? {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.replaced()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && ready!(self.poll_replace(cx, first))?
        {
            // Only the head is claimed as written; hyper sends its (empty) body separately.
            return Poll::Ready(Ok(first.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_431_status_line_is_replaced() {
        let r = replacement_for(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n");
        let r = String::from_utf8(r.unwrap()).unwrap();
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{r}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], HEADERS_TOO_LARGE);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(replacement_for(b"HTTP/1.0 431 x").unwrap().starts_with(b"HTTP/1.0 431 "));
        for other in [&b"HTTP/1.1 200 OK\r\n"[..], b"HTTP/1.1 4310", b"{\"HTTP/1.1 431 \"}", b"HTTP/1.1 43"] {
            assert!(replacement_for(other).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }
}
