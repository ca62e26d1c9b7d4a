//! The engine: the model on its own OS thread (a forward pass blocks for tens of milliseconds
//! and must never run inside an async task), fed through a bounded request queue.
//!
//! Both directions are tokio channels so async callers (the HTTP server) can `await` them,
//! while the worker uses their blocking halves. Dropping an [`EventStream`] closes its channel;
//! the worker notices before the next token and finishes the request as `Cancelled`. A
//! [`StopFlag`] stops it the same way but keeps the channel open for its report (exact token
//! counts), as a pipeline needs when a post-processor ends the output.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use super::error::{ModelError, Result};
use super::generate::{GenerateRequest, Report};
use super::loader::{Model, ModelInfo};

/// Streamed to the caller of one request.
#[derive(Debug)]
pub enum Event {
    /// Newly final text (never empty, never retracted).
    Delta(String),
    /// The request finished; the last event.
    Done(Report),
    /// The request failed; the last event.
    Error(ModelError),
}

/// How many events may wait for a slow reader before the model pauses.
const EVENT_BUFFER: usize = 64;

struct Job {
    request: GenerateRequest,
    events: mpsc::Sender<Event>,
    stop: StopFlag,
}

/// Asks generation to stop and still report: set, the request ends as `Cancelled` before its
/// next token and its `Done` report still arrives (dropping the receiver instead loses it).
/// Cheap to clone; every clone is the same flag.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<watch::Sender<bool>>);

impl Default for StopFlag {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl StopFlag {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once [`Self::stop`] was called (for async backends waiting on something else).
    pub async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this only ends when the flag is set.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Handle to the model thread. Cheap to share behind an `Arc`; dropping the last handle
/// stops the thread after the request in progress.
pub struct Engine {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    info: ModelInfo,
}

impl Engine {
    /// Move `model` onto a new thread; at most `queue_capacity` requests wait behind the one
    /// running.
    pub fn start(model: Model, queue_capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let info = model.info().clone();
        let thread = std::thread::Builder::new()
            .name("pipehost-model".into())
            .spawn(move || worker(model, rx))
            .expect("spawning the model thread");
        Engine { jobs: Some(tx), thread: Some(thread), info }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>> {
        self.jobs.as_ref().ok_or(ModelError::EngineStopped)
    }

    fn job(request: GenerateRequest, stop: StopFlag) -> (Job, EventStream) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        (Job { request, events: tx, stop }, EventStream { rx })
    }

    /// Queue a request, waiting for room (async callers).
    pub async fn submit(&self, request: GenerateRequest) -> Result<EventStream> {
        let (job, stream) = Self::job(request, StopFlag::default());
        self.sender()?.send(job).await.map_err(|_| ModelError::EngineStopped)?;
        Ok(stream)
    }

    /// Queue a request, waiting for room (plain threads; must not be called from async code).
    pub fn submit_blocking(&self, request: GenerateRequest) -> Result<EventStream> {
        let (job, stream) = Self::job(request, StopFlag::default());
        self.sender()?.blocking_send(job).map_err(|_| ModelError::EngineStopped)?;
        Ok(stream)
    }

    /// Queue a request or fail at once with [`ModelError::QueueFull`].
    pub fn try_submit(&self, request: GenerateRequest) -> Result<EventStream> {
        self.try_submit_with_stop(request, StopFlag::default())
    }

    /// [`Self::try_submit`], stoppable through `stop` (see [`StopFlag`]).
    pub fn try_submit_with_stop(&self, request: GenerateRequest, stop: StopFlag) -> Result<EventStream> {
        let (job, stream) = Self::job(request, stop);
        self.sender()?.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ModelError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => ModelError::EngineStopped,
        })?;
        Ok(stream)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the queue ends the worker's loop once the current request is done.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn worker(mut model: Model, mut jobs: mpsc::Receiver<Job>) {
    while let Some(Job { request, events, stop }) = jobs.blocking_recv() {
        if events.is_closed() {
            continue; // cancelled while queued
        }
        let mut on_delta = |text: &str| {
            if stop.is_stopped() {
                false
            } else if text.is_empty() {
                !events.is_closed()
            } else {
                events.blocking_send(Event::Delta(text.to_owned())).is_ok()
            }
        };
        // A panic in generation (a bug) would end this thread and
        // with it every later request. It fails this request instead. Unwind safety: the
        // model's only per-request state is the KV cache, which `generate` clears before it
        // starts, so the next request does not see what the panic left behind.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| model.generate(&request, &mut on_delta)));
        let last = match outcome {
            Ok(Ok(report)) => Event::Done(report),
            Ok(Err(e)) => Event::Error(e),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::error!("the model panicked during generation: {message}");
                Event::Error(ModelError::Panicked(message))
            }
        };
        // The receiver may be gone (cancelled): nothing left to tell.
        let _ = events.blocking_send(last);
    }
}

/// The text of a panic (`panic!("...")` payloads are `&str` or `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_owned(),
    }
}

/// The events of one request. Dropping it cancels the request.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event, or `None` after the last one (async callers).
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event, or `None` after the last one (plain threads).
    pub fn recv_blocking(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Read to the end: the whole text and the report (plain threads).
    pub fn collect_blocking(mut self) -> Result<(String, Report)> {
        let mut text = String::new();
        while let Some(ev) = self.recv_blocking() {
            match ev {
                Event::Delta(t) => text.push_str(&t),
                Event::Done(report) => return Ok((text, report)),
                Event::Error(e) => return Err(e),
            }
        }
        Err(ModelError::EngineStopped)
    }
}

impl Iterator for EventStream {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv_blocking()
    }
}
