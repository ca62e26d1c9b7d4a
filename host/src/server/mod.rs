//! The HTTP server: OpenAI-compatible chat completions, the native pipeline endpoint, pipeline
//! listings, health, readiness and Prometheus metrics, over axum.
//!
//! - [`AppState`] holds the pipeline [`Registry`], the [`Executor`], the configuration, the
//!   metrics and the admission semaphore (the bounded generation queue: beyond it, 429).
//! - [`router`] builds the routes; [`serve`] runs them on a listener until a shutdown future
//!   resolves, then drains in-flight requests for at most [`ServerConfig::drain`] before cutting
//!   the remaining streams.
//! - Handlers never run plugins on tokio workers: the executor does that on blocking threads.
//!   Dropping a run's receiver (client gone, stream stalled, shutdown) cancels generation.
//!
//! Endpoints, error codes and metrics are documented in docs/server.md.

mod conn;
mod error;
mod experiments;
mod extract;
mod feedback;
mod logging;
mod metrics;
mod native;
mod openai;
mod playground;
mod stream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use self::error::ApiError;
use self::error::ErrorCode;
pub use self::logging::LogBodies;
pub use self::metrics::Metrics;
use crate::backend::Backend;
use crate::experiment::Experiments;
use crate::pipeline::{Executor, PipelineError, Registry};
use crate::store::Store;

/// Parses a `POST /v1/chat/completions` body and maps it to a pipeline request exactly as the
/// handler does, without server state (the pipeline's `input_variable` is given). Pure; used by
/// the `openai_request` fuzz target (docs/fuzzing.md).
#[doc(hidden)]
pub fn parse_chat_request(
    body: &[u8],
    input_variable: &str,
) -> Result<crate::pipeline::RunRequest, ApiError> {
    let request: openai::ChatRequest = extract::parse(body)?;
    openai::run_request(&request, input_variable, "fuzz")
}

/// Server settings (the `pipehost serve` flags).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `Authorization: Bearer KEY` required on everything but `/healthz` and `/readyz`.
    pub api_key: Option<String>,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: usize,
    /// Most generation requests admitted at once (running or waiting); more get 429.
    pub max_queue: usize,
    /// `Retry-After` seconds on 429 and 503.
    pub retry_after_secs: u32,
    /// After a shutdown signal, how long in-flight requests may take before being cut.
    pub drain: Duration,
    /// A streaming client that reads nothing for this long has its generation cancelled.
    pub stall_timeout: Duration,
    /// A request head (request line and headers) not received within this long closes the
    /// connection (slowloris); also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// A request body not received within this long (from the end of the head) gets 408.
    pub body_read_timeout: Duration,
    /// Refuse `PUT /v1/pipelines/{name}` (403): the playground can run drafts but not save.
    pub read_only: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            max_body_bytes: 1 << 20,
            max_queue: 64,
            retry_after_secs: 1,
            drain: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            read_only: false,
        }
    }
}

/// Shared by every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    registry: Registry,
    executor: Arc<Executor>,
    backend: Arc<dyn Backend>,
    config: ServerConfig,
    metrics: Metrics,
    permits: Arc<Semaphore>,
    ids: AtomicU64,
    id_prefix: u64,
    phase: watch::Sender<Phase>,
    // Issue 11: A/B experiments and the request log (none unless set with `with_*`).
    experiments: Experiments,
    store: Option<Store>,
    log_bodies: LogBodies,
}

/// Where the server is in its life: serving, draining after a shutdown signal, or cutting the
/// streams still open when the drain time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Draining,
    Cut,
}

impl AppState {
    /// `backend` is the executor's default backend (its readiness is `/readyz`).
    pub fn new(
        registry: Registry,
        executor: Arc<Executor>,
        backend: Arc<dyn Backend>,
        config: ServerConfig,
    ) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let id_prefix = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let permits = Arc::new(Semaphore::new(config.max_queue));
        AppState(Arc::new(Inner {
            registry,
            executor,
            backend,
            config,
            metrics: Metrics::new(),
            permits,
            ids: AtomicU64::new(0),
            id_prefix,
            phase: watch::Sender::new(Phase::Serving),
            experiments: Experiments::none(),
            store: None,
            log_bodies: LogBodies::Full,
        }))
    }

    /// Serves `experiments` too. Call before the state is shared (cloned).
    pub fn with_experiments(mut self, experiments: Experiments) -> Self {
        Arc::get_mut(&mut self.0).expect("with_experiments before the state is shared").experiments =
            experiments;
        self
    }

    pub fn experiments(&self) -> &Experiments {
        &self.0.experiments
    }

    /// Logs every completion to `store` (keeping texts or not) and takes feedback. Call
    /// before the state is shared (cloned).
    pub fn with_store(mut self, store: Store, bodies: LogBodies) -> Self {
        let inner = Arc::get_mut(&mut self.0).expect("with_store before the state is shared");
        inner.store = Some(store);
        inner.log_bodies = bodies;
        self
    }

    pub fn store(&self) -> Option<&Store> {
        self.0.store.as_ref()
    }

    fn log_bodies(&self) -> LogBodies {
        self.0.log_bodies
    }

    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    fn executor(&self) -> &Executor {
        &self.0.executor
    }

    /// A new unique request id, `{prefix}-{random}{counter}`.
    fn request_id(&self, prefix: &str) -> String {
        let n = self.0.ids.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{n:06x}", self.0.id_prefix)
    }

    /// Takes a place in the generation queue, or 429.
    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if *self.0.phase.borrow() != Phase::Serving {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            );
            err.retry_after = Some(self.0.config.retry_after_secs);
            return Err(err);
        }
        self.0.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::busy(
                format!(
                    "the generation queue is full ({} requests in flight); retry later",
                    self.0.config.max_queue
                ),
                self.0.config.retry_after_secs,
            )
        })
    }

    fn queue_depth(&self) -> usize {
        self.0.config.max_queue - self.0.permits.available_permits()
    }

    /// Resolves when the drain time is over and open streams must end.
    fn cut(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.phase.subscribe();
        async move {
            let _ = rx.wait_for(|p| *p == Phase::Cut).await;
        }
    }

    /// Maps a pipeline error and counts plugin failures.
    fn pipeline_error(&self, err: &PipelineError) -> ApiError {
        if let PipelineError::Stage { error, .. } = err {
            self.0.metrics.plugin_error(&error.plugin, error::plugin_cause(&error.cause));
        }
        ApiError::from_pipeline(err, self.0.config.retry_after_secs)
    }
}

/// All routes, with the body limit, the API key check and request metrics.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{name}", get(get_model))
        .route("/v1/pipelines", get(list_pipelines))
        .route("/v1/pipelines/{name}", get(get_pipeline).merge(put(playground::save)))
        .route("/v1/pipelines/{name}/run", post(native::run))
        .route("/v1/playground/run", post(playground::run))
        .route("/v1/playground/check", post(playground::check))
        .route("/metrics", get(metrics_text))
        // Issue 11: experiments, the request log and feedback.
        .route("/v1/experiments", get(experiments::list))
        .route("/v1/experiments/{name}", get(experiments::get))
        .route("/v1/feedback", post(feedback::post))
        .route("/v1/responses/{id}", get(feedback::get_response))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_api_key));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The page itself is public (it holds no data; its API calls send the key).
        .route("/", get(playground::index))
        .route("/playground/{file}", get(playground::asset))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves; then stops accepting, lets
/// in-flight requests finish for at most `config.drain`, cuts the streams still open (they end
/// with an error event) and returns.
///
/// The connection loop is axum::serve's, plus a timer: axum::serve gives hyper none, so hyper
/// has no header read timeout and a client sending its request head a byte at a time
/// (slowloris) holds its connection forever. With the timer, a head not complete within
/// `config.header_read_timeout` closes the connection; the same timeout closes idle keep-alive
/// connections (hyper starts it when it waits for the next request's head).
pub async fn serve(
    mut listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let app = router(state.clone());
    let phase = state.0.phase.clone();
    tokio::spawn(async move {
        shutdown.await;
        phase.send_replace(Phase::Draining);
    });
    // Every connection task holds a receiver; `closed()` resolves when all have ended.
    let (open_tx, open_rx) = watch::channel(());
    let mut phase_rx = state.0.phase.subscribe();
    loop {
        let (stream, _addr) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            _ = phase_rx.wait_for(|p| *p >= Phase::Draining) => break,
        };
        // No Nagle: an SSE event written while the previous one is unacknowledged would wait for
        // the client's delayed ACK (40 ms on Linux): streamed answers took 44 ms at one client.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let service = TowerToHyperService::new(app.clone());
        let mut phase_rx = state.0.phase.subscribe();
        let open = open_rx.clone();
        let header_read_timeout = state.config().header_read_timeout;
        // hyper's own 431 gets an OpenAI-shaped body on its way out (see conn.rs).
        let stream = conn::Connection::new(stream, state.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection ended: {e}");
                        }
                        break;
                    }
                    // Finish the request in flight, then close (no keep-alive).
                    _ = phase_rx.wait_for(|p| *p >= Phase::Draining), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    drop(open_rx);
    tracing::info!(in_flight = state.queue_depth(), "shutting down: draining in-flight requests");
    if tokio::time::timeout(state.config().drain, open_tx.closed()).await.is_err() {
        tracing::warn!(in_flight = state.queue_depth(), "drain time over: cutting the remaining streams");
        state.0.phase.send_replace(Phase::Cut);
        // The cut streams end at once; give their connections a moment to close.
        let _ = tokio::time::timeout(Duration::from_secs(2), open_tx.closed()).await;
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config().api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()));
        if !ok {
            let message = if given.is_some() {
                "invalid API key"
            } else {
                "missing API key: send `Authorization: Bearer KEY`"
            };
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message).into_response();
        }
    }
    next.run(request).await
}

/// Compares the SHA-256 digests, every byte: the time taken depends on neither where the
/// first difference is nor the key's length (an early return on unequal lengths would tell a
/// timing attacker how long the key is).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    let response = next.run(request).await;
    state.metrics().http_request(&route, response.status().as_u16());
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics().error(code);
    }
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let draining = *state.0.phase.borrow() != Phase::Serving;
    let ready = state.0.backend.ready() && !draining;
    let body = json!({
        "status": if ready { "ready" } else if draining { "shutting_down" } else { "loading" },
        "backend": state.0.backend.name(),
        "pipelines": state.registry().list().len(),
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let stats = state.registry().stats();
    if let Some(store) = state.store() {
        state.metrics().store(&store.stats());
    }
    if let Some(engine) = state.0.backend.engine_stats() {
        state.metrics().engine(&engine);
    }
    let body = state.metrics().render(
        state.queue_depth(),
        state.config().max_queue,
        state.0.backend.ready(),
        stats.reloads,
        stats.reload_failures,
    );
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "pipehost"})
}

async fn list_models(State(state): State<AppState>) -> impl IntoResponse {
    let mut data: Vec<_> = state.registry().list().iter().map(|info| model_object(&info.name)).collect();
    data.extend(state.experiments().list().iter().map(|e| model_object(&e.experiment.name)));
    axum::Json(json!({"object": "list", "data": data}))
}

async fn get_model(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    match state.registry().info(&name) {
        Some(info) => Ok(axum::Json(model_object(&info.name)).into_response()),
        None if state.experiments().get(&name).is_some() => {
            Ok(axum::Json(model_object(&name)).into_response())
        }
        None => Err(ApiError::unknown_pipeline(&name)),
    }
}

async fn list_pipelines(State(state): State<AppState>) -> impl IntoResponse {
    let registry = state.registry();
    axum::Json(json!({
        "object": "list",
        "data": registry.list(),
        // Files that failed to load and have no previous version serving.
        "errors": registry.errors(),
    }))
}

async fn get_pipeline(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let registry = state.registry();
    match (registry.info(&name), registry.get(&name)) {
        (Some(info), Some(p)) => {
            Ok(axum::Json(playground::pipeline_detail(&info, &p.source)).into_response())
        }
        _ => Err(ApiError::unknown_pipeline(&name).with_param("name")),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"sekret", b"sekret"));
        assert!(!constant_time_eq(b"sekret", b"sekreT"));
        assert!(!constant_time_eq(b"sekret", b"sekret2"));
        assert!(!constant_time_eq(b"", b"sekret"));
        assert!(constant_time_eq(b"", b""));
    }
}
