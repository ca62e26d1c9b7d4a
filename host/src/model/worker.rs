//! The engine: the model on its own OS thread (a forward pass blocks for tens of milliseconds
//! and must never run inside an async task), fed through a bounded request queue, running
//! every admitted request in one batch (continuous batching).
//!
//! At each step boundary the thread admits queued requests (in arrival order, while the batch
//! has room and their KV cache fits the budget), restores the prefix cache's blocks for them,
//! and runs one forward step over all running sequences: one token for each decoding one, a
//! chunk of prompt for those still prefilling (bounded, so a long prompt does not stall the
//! streams). Finished and cancelled sequences leave at once. See docs/model.md.
//!
//! Both directions are tokio channels so async callers (the HTTP server) can `await` them,
//! while the worker uses their blocking halves. Dropping an [`EventStream`] closes its channel;
//! the worker notices before the next token and finishes the request as `Cancelled`. A
//! [`StopFlag`] stops it the same way but keeps the channel open for its report (exact token
//! counts), as a pipeline needs when a post-processor ends the output.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::error::{ModelError, Result};
use super::generate::{GenerateRequest, PREFILL_TOKENS_ALONE, Report};
use super::loader::{Model, ModelInfo};
use super::prefix_cache::{BLOCK, PrefixCache};
use super::qwen3::StepInput;
use super::sequence::{Prepared, Sequence};

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
    submitted: Instant,
}

/// How the engine batches. [`EngineConfig::new`] gives the defaults `serve` uses.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait behind the running batch (beyond it `try_submit` fails).
    pub queue_capacity: usize,
    /// Sequences in one batch at most.
    pub max_batch: usize,
    /// Bytes for keys and values: every running sequence reserves its worst case (prompt plus
    /// max tokens); the prefix cache uses what is left. `None`: from the device's free memory.
    pub kv_cache_bytes: Option<usize>,
    /// Prompt tokens per step while other sequences are decoding.
    pub prefill_chunk: usize,
    /// Keep computed prompt prefixes for later requests.
    pub prefix_cache: bool,
}

impl EngineConfig {
    pub fn new(queue_capacity: usize) -> Self {
        EngineConfig {
            queue_capacity,
            max_batch: 16,
            kv_cache_bytes: None,
            prefill_chunk: 64,
            prefix_cache: true,
        }
    }
}

/// What the engine has done so far, for metrics. Counters only grow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Forward steps run.
    pub steps: u64,
    /// Sum over steps of the sequences in the step (divide by `steps` for the mean batch).
    pub step_sequences: u64,
    /// Sequences in the most recent step, and the most in any step.
    pub last_batch: usize,
    pub peak_batch: usize,
    /// Requests taken into the batch, and their summed wait in the queue (seconds).
    pub admitted: u64,
    pub queue_wait_s: f64,
    /// Prompt tokens looked up in the prefix cache, and how many of them were found.
    pub prefix_lookup_tokens: u64,
    pub prefix_hit_tokens: u64,
    /// KV-cache bytes reserved by running sequences, held by the prefix cache, and the budget.
    pub kv_sequences_bytes: usize,
    pub kv_prefix_bytes: usize,
    pub kv_budget_bytes: usize,
    /// Running sequences now.
    pub running: usize,
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
    stats: Arc<Mutex<EngineStats>>,
}

impl Engine {
    /// Move `model` onto a new thread with the default batching; at most `queue_capacity`
    /// requests wait behind the running batch.
    pub fn start(model: Model, queue_capacity: usize) -> Self {
        Self::start_with(model, EngineConfig::new(queue_capacity))
    }

    /// Move `model` onto a new thread, batching as `config` says.
    pub fn start_with(model: Model, config: EngineConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let info = model.info().clone();
        let budget = config.kv_cache_bytes.unwrap_or_else(|| default_kv_budget(&model));
        let stats = Arc::new(Mutex::new(EngineStats { kv_budget_bytes: budget, ..EngineStats::default() }));
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("pipehost-model".into())
            .spawn(move || Scheduler::new(model, config, budget, shared).run(rx))
            .expect("spawning the model thread");
        Engine { jobs: Some(tx), thread: Some(thread), info, stats }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Counters and gauges of the batching loop.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn sender(&self) -> Result<&mpsc::Sender<Job>> {
        self.jobs.as_ref().ok_or(ModelError::EngineStopped)
    }

    fn job(request: GenerateRequest, stop: StopFlag) -> (Job, EventStream) {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        (Job { request, events: tx, stop, submitted: Instant::now() }, EventStream { rx })
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

/// A request in the batch.
struct Running {
    seq: Sequence,
    events: mpsc::Sender<Event>,
    stop: StopFlag,
    /// Events not yet taken by the reader; while it is full the sequence sits steps out.
    outbox: VecDeque<Event>,
    error: Option<ModelError>,
}

/// A request that has left the batch and whose last events wait for room in its channel.
struct Draining {
    events: mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
}

/// The admission-checked head of the queue, waiting for room in the batch or the KV budget.
struct Pending {
    job: Job,
    prepared: Prepared,
    bytes: usize,
}

struct Scheduler {
    model: Model,
    config: EngineConfig,
    budget: usize,
    kv_per_token: usize,
    prefix: PrefixCache,
    running: Vec<Running>,
    draining: Vec<Draining>,
    pending: Option<Pending>,
    /// Bytes reserved by the running sequences' caches.
    reserved: usize,
    stats: Arc<Mutex<EngineStats>>,
    closed: bool,
}

/// How long the loop sleeps when every sequence waits for its reader.
const PAUSED_POLL: Duration = Duration::from_millis(1);

impl Scheduler {
    fn new(model: Model, config: EngineConfig, budget: usize, stats: Arc<Mutex<EngineStats>>) -> Self {
        let kv_per_token = model.lm.dims().kv_bytes_per_token(model.lm.cache_dtype());
        Scheduler {
            prefix: PrefixCache::new(kv_per_token * BLOCK),
            model,
            config,
            budget,
            kv_per_token,
            running: Vec::new(),
            draining: Vec::new(),
            pending: None,
            reserved: 0,
            stats,
            closed: false,
        }
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        loop {
            self.admit(&mut jobs);
            if self.closed && self.running.is_empty() && self.pending.is_none() && self.draining.is_empty() {
                return;
            }
            let stepped = self.step();
            self.retire();
            self.flush();
            self.publish();
            if stepped == 0 && !(self.running.is_empty() && self.draining.is_empty()) {
                std::thread::sleep(PAUSED_POLL);
            }
        }
    }

    /// Takes queued requests into the batch, in arrival order, while there is room. Blocks
    /// when there is nothing else to do.
    fn admit(&mut self, jobs: &mut mpsc::Receiver<Job>) {
        loop {
            if self.pending.as_ref().is_some_and(|p| p.job.events.is_closed()) {
                self.pending = None; // its reader left while it waited
            }
            if self.pending.is_none() {
                let idle = self.running.is_empty() && self.draining.is_empty();
                let job = if idle && !self.closed {
                    match jobs.blocking_recv() {
                        Some(job) => job,
                        None => {
                            self.closed = true;
                            return;
                        }
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(mpsc::error::TryRecvError::Empty) => return,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            self.closed = true;
                            return;
                        }
                    }
                };
                if job.events.is_closed() {
                    continue; // cancelled while queued
                }
                match self.check(&job) {
                    Ok((prepared, bytes)) => self.pending = Some(Pending { job, prepared, bytes }),
                    Err(e) => {
                        // A fresh channel has room for its one event.
                        let _ = job.events.try_send(Event::Error(e));
                        continue;
                    }
                }
            }
            if self.running.len() >= self.config.max_batch.max(1) {
                return;
            }
            let need = self.pending.as_ref().map_or(0, |p| p.bytes);
            // The prefix cache gives way to running requests.
            while self.reserved + need + self.prefix.bytes() > self.budget && self.prefix.evict_one() > 0 {}
            if self.reserved + need + self.prefix.bytes() > self.budget {
                return; // wait for running sequences to finish (the head waits first: fair)
            }
            let Pending { job, prepared, bytes } = self.pending.take().expect("checked above");
            match self.start(prepared, &job) {
                Ok(seq) => {
                    self.reserved += bytes;
                    if let Ok(mut s) = self.stats.lock() {
                        s.admitted += 1;
                        s.queue_wait_s += job.submitted.elapsed().as_secs_f64();
                    }
                    self.running.push(Running {
                        seq,
                        events: job.events,
                        stop: job.stop,
                        outbox: VecDeque::new(),
                        error: None,
                    });
                }
                Err(e) => {
                    let _ = job.events.try_send(Event::Error(e));
                }
            }
        }
    }

    /// Tokenizes and checks a request, and sizes its KV cache.
    fn check(&self, job: &Job) -> Result<(Prepared, usize)> {
        let prepared = catch(|| self.model.prepare(&job.request))?;
        let bytes = prepared.kv_tokens().max(1) * self.kv_per_token;
        if bytes > self.budget {
            return Err(ModelError::KvBudget {
                needed_mb: bytes.div_ceil(1 << 20),
                budget_mb: self.budget >> 20,
            });
        }
        Ok((prepared, bytes))
    }

    /// A sequence for `prepared`, its cache filled from the prefix cache where it can be.
    fn start(&mut self, prepared: Prepared, job: &Job) -> Result<Sequence> {
        let mut cache = self.model.lm.new_cache(prepared.kv_tokens().max(1))?;
        let cached = if self.config.prefix_cache {
            self.prefix.restore(&prepared.prompt_ids, &mut cache)?
        } else {
            0
        };
        Ok(Sequence::new(prepared, cache, cached, self.model.tokenizer.clone(), job.submitted))
    }

    /// One forward step over every sequence that can take one; returns how many did.
    fn step(&mut self) -> usize {
        for r in &mut self.running {
            if r.events.is_closed() || r.stop.is_stopped() {
                r.seq.cancel();
            }
        }
        let ready =
            |r: &Running| r.seq.finished().is_none() && r.error.is_none() && r.outbox.len() < EVENT_BUFFER;
        let decoding = self.running.iter().any(|r| ready(r) && !r.seq.in_prefill());
        let mut budget = if decoding { self.config.prefill_chunk.max(1) } else { PREFILL_TOKENS_ALONE };
        // Sequences run in arrival order, so the oldest prompt gets the prefill budget first.
        let mut chosen: Vec<(usize, Vec<u32>, bool)> = Vec::new();
        for (i, r) in self.running.iter().enumerate() {
            if !ready(r) {
                continue;
            }
            if r.seq.in_prefill() {
                if budget == 0 {
                    continue;
                }
                let feed = r.seq.feed(budget);
                budget -= feed.ids.len();
                chosen.push((i, feed.ids.to_vec(), feed.want_logits));
            } else {
                let feed = r.seq.feed(1);
                chosen.push((i, feed.ids.to_vec(), true));
            }
        }
        if chosen.is_empty() {
            return 0;
        }
        let outcome = {
            let mut caches: Vec<Option<&mut super::qwen3::SeqCache>> =
                self.running.iter_mut().map(|r| Some(&mut r.seq.cache)).collect();
            let mut inputs: Vec<StepInput<'_>> = chosen
                .iter()
                .map(|(i, ids, want_logits)| StepInput {
                    ids,
                    cache: caches[*i].take().expect("each sequence once"),
                    want_logits: *want_logits,
                })
                .collect();
            let lm = &self.model.lm;
            catch(|| lm.step(&mut inputs))
        };
        let logits = match outcome {
            Ok(logits) => logits,
            Err(e) => {
                // Every sequence in the step failed with it (their caches are half written);
                // the others did not take part and are untouched.
                let message = e.to_string();
                for (i, _, _) in &chosen {
                    self.running[*i].error = Some(ModelError::StepFailed(message.clone()));
                }
                return chosen.len();
            }
        };
        for ((i, ids, _), logits) in chosen.iter().zip(logits) {
            let r = &mut self.running[*i];
            let was_prefill = r.seq.in_prefill();
            let (outbox, events, stop) = (&mut r.outbox, &r.events, &r.stop);
            let mut emit = |text: &str| {
                if !text.is_empty() {
                    outbox.push_back(Event::Delta(text.to_owned()));
                }
                !events.is_closed() && !stop.is_stopped()
            };
            let seq = &mut r.seq;
            if let Err(e) = catch(|| seq.advance(ids.len(), logits.as_ref(), &mut emit)) {
                r.error = Some(e);
                continue;
            }
            if was_prefill && !r.seq.in_prefill() && self.config.prefix_cache {
                // Share the prompt at once: concurrent requests of one pipeline start alike.
                let room = self.budget.saturating_sub(self.reserved + self.prefix.bytes());
                let ids = r.seq.cached_ids();
                let _ = self.prefix.insert(&ids, &r.seq.cache, room);
            }
        }
        self.stats_step(chosen.len());
        chosen.len()
    }

    /// Moves finished, failed and cancelled sequences out of the batch.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            if r.seq.finished().is_none() && r.error.is_none() {
                i += 1;
                continue;
            }
            let mut r = self.running.remove(i);
            self.reserved -= r.seq.cache.bytes();
            if r.events.is_closed() {
                continue; // nobody to tell
            }
            match r.error.take() {
                Some(e) => r.outbox.push_back(Event::Error(e)),
                None => {
                    if self.config.prefix_cache {
                        // The conversation's next turn starts with this one's tokens.
                        let room = self.budget.saturating_sub(self.reserved + self.prefix.bytes());
                        let ids = r.seq.cached_ids();
                        let _ = self.prefix.insert(&ids, &r.seq.cache, room);
                    }
                    r.outbox.push_back(Event::Done(r.seq.report()));
                }
            }
            self.draining.push(Draining { events: r.events, outbox: r.outbox });
        }
    }

    /// Hands waiting events to their readers without blocking.
    fn flush(&mut self) {
        fn drain(events: &mpsc::Sender<Event>, outbox: &mut VecDeque<Event>) {
            while let Some(event) = outbox.pop_front() {
                match events.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        outbox.push_front(event);
                        return;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        outbox.clear();
                        return;
                    }
                }
            }
        }
        for r in &mut self.running {
            drain(&r.events, &mut r.outbox);
        }
        for d in &mut self.draining {
            drain(&d.events, &mut d.outbox);
        }
        self.draining.retain(|d| !d.outbox.is_empty());
    }

    fn stats_step(&self, sequences: usize) {
        if let Ok(mut s) = self.stats.lock() {
            s.steps += 1;
            s.step_sequences += sequences as u64;
            s.last_batch = sequences;
            s.peak_batch = s.peak_batch.max(sequences);
        }
    }

    fn publish(&mut self) {
        if let Ok(mut s) = self.stats.lock() {
            s.prefix_lookup_tokens = self.prefix.looked_up_tokens;
            s.prefix_hit_tokens = self.prefix.hit_tokens;
            s.kv_sequences_bytes = self.reserved;
            s.kv_prefix_bytes = self.prefix.bytes();
            s.running = self.running.len();
        }
    }
}

/// Runs `f`, turning a panic (a bug) into this request's error so that the model thread, and
/// every other request, carries on. Unwind safety: what `f` touches is one step's sequences,
/// which fail with the error and are dropped.
fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!("the model panicked during generation: {message}");
            Err(ModelError::Panicked(message))
        }
    }
}

/// The KV-cache budget when none is given: half of the memory free on the model's device
/// once the weights are loaded, at least 256 MiB.
fn default_kv_budget(model: &Model) -> usize {
    const MIN: usize = 256 << 20;
    let free = super::loader::free_memory(&model.device).unwrap_or(4 << 30);
    (free / 2).max(MIN)
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
