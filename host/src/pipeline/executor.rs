//! Running a pipeline: variables → prompt builder → backend → post-processors.
//!
//! - Whole-text mode ([`Executor::run`]) collects the model's text, then runs each stage's
//!   `process` in order.
//! - Streaming mode ([`Executor::run_stream`]) runs every stage's streaming interface on ONE
//!   dedicated blocking thread per request: each backend delta is pushed through stage 1..n
//!   (a stage's `emit` is the next stage's input) and non-empty output goes to the caller on a
//!   bounded channel. A stage that returns `stop` ends generation (the request's
//!   [`StopFlag`]: the backend stops before its next token and still reports its token counts)
//!   and the finish reason is `plugin_stop`; then every stage is finished in order (stage i's
//!   finish output is pushed into stage i+1 before its finish), and the backend's report read.
//!   Dropping the caller's receiver cancels everything.
//!
//! Plugin calls block (see [`crate::plugin`]), so they never run on a tokio worker thread.
//!
//! `on_error: skip`: the failing stage is bypassed for the rest of the request and the error
//! is reported in `stages[].skipped_error`. In whole-text mode its input passes through
//! unchanged. In streaming mode the stage's input since it last emitted text passes through
//! (all of it when the stage had emitted nothing; when what it emitted is a prefix of its input,
//! exactly the rest): text already sent on is never repeated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;

use super::load::Pipeline;
use super::spec::OnError;
use crate::backend::{
    Backend, BackendError, BackendEvent, BackendReport, BackendRequest, ChatMessage, GenerationParams,
    StopFlag,
};
use crate::plugin::{CallContext, Cause, PluginError, PluginStream};

/// Events buffered between the pipeline thread and a slow client.
const OUTPUT_BUFFER: usize = 64;

/// One request to a pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub request_id: String,
    /// The request variables (checked against the pipeline's declarations).
    pub vars: BTreeMap<String, String>,
    /// The conversation before the current user turn.
    pub history: Vec<ChatMessage>,
    /// Overrides of the pipeline's `params`.
    pub params: GenerationParams,
    /// Put the model's raw text in the record.
    pub include_raw: bool,
    /// Put the prompt builder's messages and each stage's output text in the record (the
    /// playground's stage view, the request log). Costs a copy of the text per stage.
    pub trace: bool,
}

/// What a streaming run sends. `Done` or `Error` is the last event.
#[derive(Debug)]
pub enum RunEvent {
    /// Post-processed text that is final.
    Delta(String),
    Done(RunRecord),
    Error(PipelineError),
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Prompt tokens the backend did not compute again (its prefix cache).
    pub cached_tokens: usize,
}

/// One stage's part in a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub plugin: String,
    pub sha256: String,
    /// Time spent in the plugin (for streaming: all its calls together).
    pub ms: f64,
    /// Set when the stage failed with `on_error: skip` and was bypassed.
    pub skipped_error: Option<String>,
    /// The text this stage passed on (with [`RunRequest::trace`]; not for the prompt stage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Wall-clock timings of a run, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Checking variables and running the prompt builder.
    pub prompt_ms: f64,
    /// From the start of the run to the first model delta.
    pub ttft_ms: f64,
    /// From submitting to the backend to its last event.
    pub generation_ms: f64,
    pub total_ms: f64,
}

/// The record of one run: what was produced and by which versions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub pipeline: String,
    /// sha256 of the pipeline file that ran.
    pub pipeline_sha256: String,
    pub backend: String,
    /// The post-processed text.
    pub text: String,
    /// The model's text before post-processing (when requested).
    pub raw_text: Option<String>,
    /// The prompt builder's messages (with [`RunRequest::trace`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// `length`, `stop`, `eos`, `cancelled` or `plugin_stop`.
    pub finish_reason: String,
    /// The backend's counts; with `plugin_stop`, of what it generated until it stopped
    /// (including tokens generated after the stop point, before it noticed).
    pub usage: Usage,
    /// The prompt stage first (`prompt`), then each post-processor.
    pub stages: Vec<StageReport>,
    pub timings: Timings,
}

/// Why a run failed. The server maps [`Self::status`] and [`Self::code`] to HTTP errors.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("unknown pipeline `{0}`")]
    UnknownPipeline(String),
    #[error("variable `{name}`: {reason}")]
    InvalidVariable { name: String, reason: String },
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("the model is busy; retry later")]
    Busy,
    #[error("stage `{stage}` failed: {error}")]
    Stage { stage: String, error: PluginError },
    #[error("{0}")]
    Backend(BackendError),
    /// A bug in the host (e.g. a panicked worker thread).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PipelineError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            PipelineError::UnknownPipeline(_) => 404,
            PipelineError::InvalidVariable { .. } | PipelineError::InvalidParams(_) => 400,
            PipelineError::Busy => 429,
            PipelineError::Stage { error, .. } => match error.cause {
                Cause::InvalidInput(_) => 400,
                Cause::Timeout(_) => 504,
                _ => 500,
            },
            PipelineError::Backend(e) => match e {
                BackendError::QueueFull => 429,
                BackendError::InvalidRequest(_) => 400,
                BackendError::Unavailable(_) => 503,
                BackendError::Failed(_) => 502,
            },
            PipelineError::Internal(_) => 500,
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PipelineError::UnknownPipeline(_) => "unknown_pipeline",
            PipelineError::InvalidVariable { .. } => "invalid_variable",
            PipelineError::InvalidParams(_) => "invalid_params",
            PipelineError::Busy => "busy",
            PipelineError::Stage { error, .. } => match error.cause {
                Cause::InvalidInput(_) => "invalid_input",
                Cause::Timeout(_) => "stage_timeout",
                _ => "stage_failed",
            },
            PipelineError::Backend(e) => match e {
                BackendError::QueueFull => "busy",
                BackendError::InvalidRequest(_) => "invalid_request",
                BackendError::Unavailable(_) => "backend_unavailable",
                BackendError::Failed(_) => "backend_failed",
            },
            PipelineError::Internal(_) => "internal",
        }
    }
}

fn backend_error(e: BackendError) -> PipelineError {
    match e {
        BackendError::QueueFull => PipelineError::Busy,
        other => PipelineError::Backend(other),
    }
}

/// Checks request variables against the declarations; returns (name, value) pairs with
/// defaults filled in, in declaration order.
pub fn check_vars(
    pipeline: &Pipeline,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, PipelineError> {
    let invalid =
        |name: &str, reason: String| PipelineError::InvalidVariable { name: name.to_owned(), reason };
    let declared: BTreeSet<&str> = pipeline.variables.iter().map(|v| v.name.as_str()).collect();
    if let Some(unknown) = vars.keys().find(|k| !declared.contains(k.as_str())) {
        let list: Vec<String> = pipeline.variables.iter().map(|v| format!("`{}`", v.name)).collect();
        return Err(invalid(
            unknown,
            format!(
                "not declared by pipeline `{}` (it takes: {})",
                pipeline.name,
                if list.is_empty() { "none".into() } else { list.join(", ") }
            ),
        ));
    }
    let mut out = Vec::new();
    for v in &pipeline.variables {
        let value = match vars.get(&v.name) {
            Some(value) => value.clone(),
            None => match &v.default {
                Some(d) => d.clone(),
                None if v.required => return Err(invalid(&v.name, "is required".into())),
                None => continue,
            },
        };
        if v.required && value.trim().is_empty() {
            return Err(invalid(&v.name, "is required and must not be blank".into()));
        }
        if let Some(max) = v.max_chars {
            let n = value.chars().count();
            if n > max {
                return Err(invalid(&v.name, format!("is {n} characters long; the limit is {max}")));
            }
        }
        out.push((v.name.clone(), value));
    }
    Ok(out)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Runs pipelines on backends.
#[derive(Clone)]
pub struct Executor {
    default: Arc<dyn Backend>,
    others: HashMap<String, Arc<dyn Backend>>,
}

struct Started {
    backend: Arc<dyn Backend>,
    events: mpsc::Receiver<BackendEvent>,
    /// Ends generation early but keeps its report (a plugin stop).
    stop: StopFlag,
    prompt_report: StageReport,
    prompt_ms: f64,
    generation_start: Instant,
    /// The prompt builder's messages, kept with [`RunRequest::trace`].
    messages: Option<Vec<ChatMessage>>,
}

impl Executor {
    /// `default` serves pipelines without `backend:`; `others` are selectable by name (the
    /// default is also selectable by its kind, the part of its name before `:`).
    pub fn new(default_backend: Arc<dyn Backend>, others: HashMap<String, Arc<dyn Backend>>) -> Self {
        Self { default: default_backend, others }
    }

    /// The names a pipeline's `backend:` may use (for [`super::BackendNames::Only`]).
    pub fn backend_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.others.keys().cloned().collect();
        names.insert(kind(self.default.name()).to_owned());
        names
    }

    pub fn default_backend(&self) -> &Arc<dyn Backend> {
        &self.default
    }

    /// The backend pipeline `p` runs on.
    pub fn backend_for(&self, p: &Pipeline) -> Result<Arc<dyn Backend>, PipelineError> {
        match &p.backend {
            None => Ok(self.default.clone()),
            Some(name) => {
                if let Some(b) = self.others.get(name) {
                    Ok(b.clone())
                } else if kind(self.default.name()) == name {
                    Ok(self.default.clone())
                } else {
                    Err(PipelineError::Backend(BackendError::Unavailable(format!(
                        "pipeline `{}` asks for backend `{name}`, which this server was not started with",
                        p.name
                    ))))
                }
            }
        }
    }

    /// Variables, prompt builder and backend submission: the errors a caller gets before any
    /// output.
    async fn start(&self, pipeline: &Arc<Pipeline>, request: &RunRequest) -> Result<Started, PipelineError> {
        let started = Instant::now();
        let backend = self.backend_for(pipeline)?;
        let vars = check_vars(pipeline, &request.vars)?;
        let params = pipeline.params.merged(&request.params);
        params.validate().map_err(PipelineError::InvalidParams)?;
        let p = pipeline.clone();
        let history = request.history.clone();
        let request_id = request.request_id.clone();
        let (messages, builder_ms) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let ctx = CallContext { pipeline: p.name.clone(), request_id, stage: "prompt".into() };
            let r = p.prompt.builder.build(&vars, &history, &ctx, &p.prompt.config, &p.prompt.limits);
            (r, ms(t))
        })
        .await
        .map_err(|e| PipelineError::Internal(format!("prompt builder thread: {e}")))?;
        let messages = messages.map_err(|error| PipelineError::Stage { stage: "prompt".into(), error })?;
        let prompt_report = StageReport {
            stage: "prompt".into(),
            plugin: pipeline.prompt.plugin.clone(),
            sha256: pipeline.prompt.sha256().to_owned(),
            ms: builder_ms,
            skipped_error: None,
            output: None,
        };
        let prompt_ms = ms(started);
        let generation_start = Instant::now();
        let traced = request.trace.then(|| messages.clone());
        let stop = StopFlag::default();
        let events = backend
            .generate(BackendRequest {
                request_id: request.request_id.clone(),
                messages,
                params,
                stop: stop.clone(),
            })
            .map_err(backend_error)?;
        Ok(Started { backend, events, stop, prompt_report, prompt_ms, generation_start, messages: traced })
    }

    /// Whole-text mode: prompt builder → backend (collected) → every stage's `process`.
    pub async fn run(
        &self,
        pipeline: Arc<Pipeline>,
        request: RunRequest,
    ) -> Result<RunRecord, PipelineError> {
        let run_start = Instant::now();
        let mut s = self.start(&pipeline, &request).await?;
        let mut raw = String::new();
        let mut ttft = None;
        let report = loop {
            match s.events.recv().await {
                Some(BackendEvent::Delta(t)) => {
                    ttft.get_or_insert_with(|| ms(run_start));
                    raw.push_str(&t);
                }
                Some(BackendEvent::Done(r)) => break r,
                Some(BackendEvent::Error(e)) => return Err(backend_error(e)),
                None => {
                    return Err(PipelineError::Backend(BackendError::Failed(
                        "the backend stopped without finishing".into(),
                    )));
                }
            }
        };
        let generation_ms = ms(s.generation_start);
        let p = pipeline.clone();
        let request_id = request.request_id.clone();
        let input = raw.clone();
        let trace = request.trace;
        let (text, stage_reports) =
            tokio::task::spawn_blocking(move || process_all(&p, &request_id, input, trace))
                .await
                .map_err(|e| PipelineError::Internal(format!("post-processing thread: {e}")))??;
        let mut stages = vec![s.prompt_report];
        stages.extend(stage_reports);
        Ok(RunRecord {
            pipeline: pipeline.name.clone(),
            pipeline_sha256: pipeline.sha256.clone(),
            backend: s.backend.name().to_owned(),
            text,
            raw_text: request.include_raw.then_some(raw),
            messages: s.messages,
            finish_reason: report.finish_reason.as_str().to_owned(),
            usage: usage(&report),
            stages,
            timings: Timings {
                prompt_ms: s.prompt_ms,
                ttft_ms: ttft.unwrap_or(0.0),
                generation_ms,
                total_ms: ms(run_start),
            },
        })
    }

    /// Streaming mode. Early errors (variables, prompt builder, busy backend) come back before
    /// any event; after that the last event is `Done` or `Error`. Dropping the receiver cancels
    /// generation.
    pub async fn run_stream(
        &self,
        pipeline: Arc<Pipeline>,
        request: RunRequest,
    ) -> Result<mpsc::Receiver<RunEvent>, PipelineError> {
        let run_start = Instant::now();
        let s = self.start(&pipeline, &request).await?;
        let (tx, rx) = mpsc::channel(OUTPUT_BUFFER);
        tokio::task::spawn_blocking(move || stream_worker(pipeline, request, s, run_start, tx));
        Ok(rx)
    }

    /// Whole-text post-processing of `text` through `pipeline`'s stages alone, no model: how
    /// `pipehost replay` runs logged answers through a changed chain. Blocking.
    pub fn post_process(
        pipeline: &Pipeline,
        request_id: &str,
        text: String,
    ) -> Result<(String, Vec<StageReport>), PipelineError> {
        process_all(pipeline, request_id, text, false)
    }
}

fn kind(name: &str) -> &str {
    name.split(':').next().unwrap_or(name)
}

fn usage(r: &BackendReport) -> Usage {
    Usage {
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.prompt_tokens + r.completion_tokens,
        cached_tokens: r.cached_tokens,
    }
}

fn stage_report(
    p: &Pipeline,
    i: usize,
    ms: f64,
    skipped_error: Option<String>,
    output: Option<String>,
) -> StageReport {
    let s = &p.stages[i];
    StageReport {
        stage: s.name.clone(),
        plugin: s.plugin.clone(),
        sha256: s.sha256().to_owned(),
        ms,
        skipped_error,
        output,
    }
}

fn ctx(p: &Pipeline, request_id: &str, stage: &str) -> CallContext {
    CallContext { pipeline: p.name.clone(), request_id: request_id.to_owned(), stage: stage.to_owned() }
}

/// Whole-text post-processing (blocking).
fn process_all(
    p: &Pipeline,
    request_id: &str,
    mut text: String,
    trace: bool,
) -> Result<(String, Vec<StageReport>), PipelineError> {
    let mut reports = Vec::new();
    for (i, stage) in p.stages.iter().enumerate() {
        let t = Instant::now();
        let result =
            stage.processor.process(&text, &ctx(p, request_id, &stage.name), &stage.config, &stage.limits);
        let mut skipped = None;
        match result {
            Ok(out) => text = out,
            Err(error) if stage.on_error == OnError::Skip => {
                tracing::warn!(pipeline = p.name, request_id, "stage skipped: {error}");
                skipped = Some(error.to_string());
            }
            Err(error) => return Err(PipelineError::Stage { stage: stage.name.clone(), error }),
        }
        reports.push(stage_report(p, i, ms(t), skipped, trace.then(|| text.clone())));
    }
    Ok((text, reports))
}

/// One stage of a streaming run.
struct StreamStage {
    stream: Option<PluginStream>,
    skipped: Option<String>,
    /// Input since the stage last emitted (for `on_error: skip`).
    pending_input: String,
    /// Input and output so far (to pass through exactly the rest when output is a prefix).
    all_input: String,
    all_output: String,
    ms: f64,
    /// Everything the stage passed on, with [`RunRequest::trace`].
    traced: Option<String>,
}

impl StreamStage {
    /// The text to pass on after the stage failed.
    fn passthrough_after_failure(&self) -> String {
        if let Some(rest) = self.all_input.strip_prefix(self.all_output.as_str()) {
            rest.to_owned()
        } else {
            self.pending_input.clone()
        }
    }
}

enum Flow {
    Continue,
    /// The caller is gone.
    Cancelled,
}

struct Chain<'a> {
    p: &'a Pipeline,
    request_id: &'a str,
    stages: Vec<StreamStage>,
}

impl Chain<'_> {
    fn open(p: &Pipeline, request_id: &str, trace: bool) -> Result<Vec<StreamStage>, PipelineError> {
        let mut out = Vec::new();
        for stage in &p.stages {
            let t = Instant::now();
            let opened =
                stage.processor.open_stream(&ctx(p, request_id, &stage.name), &stage.config, &stage.limits);
            let (stream, skipped) = match opened {
                Ok(s) => (Some(s), None),
                Err(error) if stage.on_error == OnError::Skip => (None, Some(error.to_string())),
                Err(error) => return Err(PipelineError::Stage { stage: stage.name.clone(), error }),
            };
            out.push(StreamStage {
                stream,
                skipped,
                pending_input: String::new(),
                all_input: String::new(),
                all_output: String::new(),
                ms: ms(t),
                traced: trace.then(String::new),
            });
        }
        Ok(out)
    }

    /// Pushes `text` through stages `from..`; returns the output and whether a stage asked to stop.
    fn push(&mut self, from: usize, mut text: String) -> Result<(String, bool), PipelineError> {
        let mut stop = false;
        for i in from..self.stages.len() {
            if text.is_empty() {
                break;
            }
            let st = &mut self.stages[i];
            let Some(stream) = st.stream.as_mut() else {
                // Bypassed (`on_error: skip`): its input is what it passes on.
                if let Some(t) = st.traced.as_mut() {
                    t.push_str(&text);
                }
                continue;
            };
            let skip = self.p.stages[i].on_error == OnError::Skip;
            if skip {
                st.pending_input.push_str(&text);
                st.all_input.push_str(&text);
            }
            let t = Instant::now();
            let result = stream.push(&text);
            st.ms += ms(t);
            match result {
                Ok(out) => {
                    stop |= out.stop;
                    if skip {
                        if !out.emit.is_empty() {
                            st.pending_input.clear();
                        }
                        st.all_output.push_str(&out.emit);
                    }
                    text = out.emit;
                }
                Err(error) if skip => {
                    tracing::warn!(
                        pipeline = self.p.name,
                        request_id = self.request_id,
                        "stage skipped: {error}"
                    );
                    st.stream = None;
                    st.skipped = Some(error.to_string());
                    text = st.passthrough_after_failure();
                }
                Err(error) => {
                    return Err(PipelineError::Stage { stage: self.p.stages[i].name.clone(), error });
                }
            }
            if let Some(t) = self.stages[i].traced.as_mut() {
                t.push_str(&text);
            }
        }
        Ok((text, stop))
    }

    /// Finishes every stage in order; returns the held-back rest of the whole chain.
    fn finish(&mut self) -> Result<String, PipelineError> {
        let mut carry = String::new();
        for i in 0..self.stages.len() {
            // Stage i's input: what the earlier stages released at their finish.
            let mut out = String::new();
            if !carry.is_empty() {
                let (pushed, _) = self.push_one(i, std::mem::take(&mut carry))?;
                out.push_str(&pushed);
            }
            let st = &mut self.stages[i];
            let skip = self.p.stages[i].on_error == OnError::Skip;
            if let Some(stream) = st.stream.take() {
                let t = Instant::now();
                let result = stream.finish();
                st.ms += ms(t);
                let rest = match result {
                    Ok(rest) => rest,
                    Err(error) if skip => {
                        st.skipped = Some(error.to_string());
                        st.passthrough_after_failure()
                    }
                    Err(error) => {
                        return Err(PipelineError::Stage { stage: self.p.stages[i].name.clone(), error });
                    }
                };
                if let Some(t) = st.traced.as_mut() {
                    t.push_str(&rest);
                }
                out.push_str(&rest);
            }
            carry = out;
        }
        Ok(carry)
    }

    /// Pushes into stage `i` only.
    fn push_one(&mut self, i: usize, text: String) -> Result<(String, bool), PipelineError> {
        if self.stages[i].stream.is_none() {
            if let Some(t) = self.stages[i].traced.as_mut() {
                t.push_str(&text);
            }
            return Ok((text, false));
        }
        // Reuse `push` on a one-stage window.
        let len = self.stages.len();
        let tail = self.stages.split_off(i + 1);
        let r = self.push(i, text);
        self.stages.extend(tail);
        debug_assert_eq!(self.stages.len(), len);
        r
    }

    fn reports(&self) -> Vec<StageReport> {
        self.stages
            .iter()
            .enumerate()
            .map(|(i, s)| stage_report(self.p, i, s.ms, s.skipped.clone(), s.traced.clone()))
            .collect()
    }
}

fn send(tx: &mpsc::Sender<RunEvent>, ev: RunEvent) -> Flow {
    match tx.blocking_send(ev) {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Cancelled,
    }
}

/// After a plugin stop: the backend's own report (it stops before its next token and still
/// counts what it generated), skipping the text it sent meanwhile. None if it failed instead,
/// or the client left while waiting.
fn report_after_stop(
    events: &mut mpsc::Receiver<BackendEvent>,
    tx: &mpsc::Sender<RunEvent>,
) -> Option<BackendReport> {
    while !tx.is_closed() {
        match events.blocking_recv()? {
            BackendEvent::Delta(_) => {}
            BackendEvent::Done(r) => return Some(r),
            BackendEvent::Error(_) => return None,
        }
    }
    None
}

/// The streaming run's thread.
fn stream_worker(
    pipeline: Arc<Pipeline>,
    request: RunRequest,
    s: Started,
    run_start: Instant,
    tx: mpsc::Sender<RunEvent>,
) {
    let Started { backend, mut events, stop, prompt_report, prompt_ms, generation_start, messages } = s;
    let p = &*pipeline;
    let stages = match Chain::open(p, &request.request_id, request.trace) {
        Ok(s) => s,
        Err(e) => {
            let _ = send(&tx, RunEvent::Error(e));
            return;
        }
    };
    let mut chain = Chain { p, request_id: &request.request_id, stages };
    let mut raw = String::new();
    let mut text = String::new();
    let mut ttft = None;
    let mut deltas = 0usize;
    let mut plugin_stop = false;
    let report: Option<BackendReport> = loop {
        if tx.is_closed() {
            return; // cancelled: dropping `events` cancels generation
        }
        match events.blocking_recv() {
            Some(BackendEvent::Delta(t)) => {
                ttft.get_or_insert_with(|| ms(run_start));
                deltas += 1;
                raw.push_str(&t);
                match chain.push(0, t) {
                    Ok((out, stop)) => {
                        if !out.is_empty() {
                            text.push_str(&out);
                            if let Flow::Cancelled = send(&tx, RunEvent::Delta(out)) {
                                return;
                            }
                        }
                        if stop {
                            plugin_stop = true;
                            break None;
                        }
                    }
                    Err(e) => {
                        let _ = send(&tx, RunEvent::Error(e));
                        return;
                    }
                }
            }
            Some(BackendEvent::Done(r)) => break Some(r),
            Some(BackendEvent::Error(e)) => {
                let _ = send(&tx, RunEvent::Error(backend_error(e)));
                return;
            }
            None => {
                let _ = send(
                    &tx,
                    RunEvent::Error(PipelineError::Backend(BackendError::Failed(
                        "the backend stopped without finishing".into(),
                    ))),
                );
                return;
            }
        }
    };
    // Stop generating now (a plugin stop), before finishing the stages; the backend's report
    // (exact token counts) is read after them.
    if report.is_none() {
        stop.stop();
    }
    let generation_ms = ms(generation_start);
    match chain.finish() {
        Ok(rest) => {
            if !rest.is_empty() {
                text.push_str(&rest);
                if let Flow::Cancelled = send(&tx, RunEvent::Delta(rest)) {
                    return;
                }
            }
        }
        Err(e) => {
            let _ = send(&tx, RunEvent::Error(e));
            return;
        }
    }
    let report = report.or_else(|| report_after_stop(&mut events, &tx));
    drop(events);
    let finish_reason = match &report {
        _ if plugin_stop => "plugin_stop".to_owned(),
        Some(r) => r.finish_reason.as_str().to_owned(),
        None => "cancelled".to_owned(),
    };
    let usage = match &report {
        Some(r) => usage(r),
        // A backend that failed after the stop: the deltas read are all there is to count.
        None => Usage { prompt_tokens: 0, completion_tokens: deltas, total_tokens: deltas, cached_tokens: 0 },
    };
    let mut stages = vec![prompt_report];
    stages.extend(chain.reports());
    let record = RunRecord {
        pipeline: p.name.clone(),
        pipeline_sha256: p.sha256.clone(),
        backend: backend.name().to_owned(),
        text,
        raw_text: request.include_raw.then_some(raw),
        messages,
        finish_reason,
        usage,
        stages,
        timings: Timings { prompt_ms, ttft_ms: ttft.unwrap_or(0.0), generation_ms, total_ms: ms(run_start) },
    };
    let _ = send(&tx, RunEvent::Done(record));
}
