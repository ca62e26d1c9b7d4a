//! Running a pipeline for one request, whole-text or streamed over SSE, with the request's place
//! in the generation queue, metrics and cancellation.
//!
//! Streaming: a task forwards the executor's [`RunEvent`]s to the SSE body through a small
//! channel. It stops, dropping the executor's receiver and so cancelling generation, when the
//! client goes away (the body is dropped), when the client reads nothing for
//! `stall_timeout` (its socket buffers are full), or when the drain time at shutdown is over.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::experiments::RunTags;
use super::logging::PendingLog;
use super::{ApiError, AppState};
use crate::pipeline::{Pipeline, RunEvent, RunRecord, RunRequest};

const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// What the endpoint turns into SSE events.
pub(crate) enum Outcome {
    Delta(String),
    Done(Box<RunRecord>),
    Error(ApiError),
}

/// Counts a cancellation if dropped before [`CancelGuard::finish`] (a whole-text request whose
/// client went away: axum drops the handler future, and with it the run).
pub(crate) struct CancelGuard<'a> {
    state: &'a AppState,
    armed: bool,
}

impl<'a> CancelGuard<'a> {
    pub fn new(state: &'a AppState) -> Self {
        CancelGuard { state, armed: true }
    }
    pub fn finish(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.metrics().cancelled("disconnect");
        }
    }
}

/// Runs `request` whole-text. Admission (the queue place) is taken by the caller.
pub(crate) async fn run_whole(
    state: &AppState,
    pipeline: Arc<Pipeline>,
    request: RunRequest,
    permit: OwnedSemaphorePermit,
) -> Result<RunRecord, ApiError> {
    run_whole_tagged(state, pipeline, request, permit, RunTags::default()).await
}

/// [`run_whole`], logged with the experiment, variant and user in `tags`.
pub(crate) async fn run_whole_tagged(
    state: &AppState,
    pipeline: Arc<Pipeline>,
    mut request: RunRequest,
    _permit: OwnedSemaphorePermit,
    tags: RunTags,
) -> Result<RunRecord, ApiError> {
    let log = state.begin_log(&pipeline, &mut request, tags, false);
    let request_id = request.request_id.clone();
    let guard = CancelGuard::new(state);
    let cut = state.cut();
    let result = tokio::select! {
        result = state.executor().run(pipeline, request) => result,
        () = cut => {
            state.metrics().cancelled("shutdown");
            guard.finish();
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server shut down before the request finished",
            ));
        }
    };
    guard.finish();
    match result {
        Ok(mut record) => {
            state.metrics().run(&record);
            if let Some(log) = log {
                log.finish(state, &request_id, &mut record);
            }
            Ok(record)
        }
        Err(err) => Err(state.pipeline_error(&err)),
    }
}

/// Starts `request` streaming. Errors before the first event (unknown variable, prompt builder
/// failure, busy backend) are returned as a plain error response.
pub(crate) async fn run_streaming<F>(
    state: &AppState,
    pipeline: Arc<Pipeline>,
    request: RunRequest,
    permit: OwnedSemaphorePermit,
    map: F,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<F>>, ApiError>
where
    F: FnMut(Outcome) -> Vec<Event> + Send + 'static,
{
    run_streaming_tagged(state, pipeline, request, permit, map, RunTags::default()).await
}

/// [`run_streaming`], logged with the experiment, variant and user in `tags`.
pub(crate) async fn run_streaming_tagged<F>(
    state: &AppState,
    pipeline: Arc<Pipeline>,
    mut request: RunRequest,
    permit: OwnedSemaphorePermit,
    map: F,
    tags: RunTags,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<F>>, ApiError>
where
    F: FnMut(Outcome) -> Vec<Event> + Send + 'static,
{
    let log = state.begin_log(&pipeline, &mut request, tags, true).map(|l| (l, request.request_id.clone()));
    let events =
        state.executor().run_stream(pipeline, request).await.map_err(|e| state.pipeline_error(&e))?;
    let (tx, out) = mpsc::channel::<Event>(32);
    tokio::spawn(forward(state.clone(), events, tx, permit, map, log));
    let body = futures_util::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|event| (Ok::<_, Infallible>(event), out))
    });
    // A comment every few seconds while nothing else is sent (a long prompt, a post-processor
    // holding text back) also finds clients that went away: the write fails.
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

async fn forward<F>(
    state: AppState,
    mut events: mpsc::Receiver<RunEvent>,
    tx: mpsc::Sender<Event>,
    _permit: OwnedSemaphorePermit,
    mut map: F,
    mut log: Option<(PendingLog, String)>,
) where
    F: FnMut(Outcome) -> Vec<Event> + Send + 'static,
{
    let stall = state.config().stall_timeout;
    let cut = state.cut();
    tokio::pin!(cut);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = tx.closed() => {
                state.metrics().cancelled("disconnect");
                return;
            }
            () = &mut cut => {
                state.metrics().cancelled("shutdown");
                let err = ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the server shut down before the request finished",
                );
                state.metrics().error(&err.code);
                for event in map(Outcome::Error(err)) {
                    let _ = tx.try_send(event);
                }
                return;
            }
        };
        let (outcome, last) = match event {
            Some(RunEvent::Delta(text)) => (Outcome::Delta(text), false),
            Some(RunEvent::Done(mut record)) => {
                state.metrics().run(&record);
                if let Some((log, id)) = log.take() {
                    log.finish(&state, &id, &mut record);
                }
                (Outcome::Done(Box::new(record)), true)
            }
            Some(RunEvent::Error(err)) => {
                let api = state.pipeline_error(&err);
                state.metrics().error(&api.code);
                (Outcome::Error(api), true)
            }
            None => {
                let api = ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the pipeline ended without a result",
                );
                state.metrics().error(&api.code);
                (Outcome::Error(api), true)
            }
        };
        for event in map(outcome) {
            match tokio::time::timeout(stall, tx.send(event)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    state.metrics().cancelled("disconnect");
                    return;
                }
                Err(_) => {
                    tracing::warn!("client read nothing for {stall:?}: cancelling its generation");
                    state.metrics().cancelled("stalled");
                    return;
                }
            }
        }
        if last {
            return;
        }
    }
}
