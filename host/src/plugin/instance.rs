//! Loaded plugins and their calls. Every call (every stream) runs in a fresh `Store` created
//! from the pre-linked `InstancePre`, so a trap, timeout or memory-limit hit poisons nothing:
//! the store is dropped and the next call starts clean.

use std::sync::Arc;

use std::time::Instant;
use wasmtime::component::ResourceAny;

use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{WitContext, WitMessage, WitPluginError, post, prompt};
use super::engine::{EPOCH_TICK, LoadMeta, RuntimeInner};
use super::error::{Cause, PluginError};
use super::host_state::{CpuBudget, HostState, thread_cpu_time};
use super::limits::Limits;

/// Identifies a call in errors and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    pub pipeline: String,
    pub request_id: String,
    /// The stage name; errors carry it.
    pub stage: String,
}

/// A chat message produced by a prompt builder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What one streaming push produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOutput {
    /// Text that is final and may be sent on.
    pub emit: String,
    /// The plugin wants no more input.
    pub stop: bool,
}

pub(crate) struct Loaded<P> {
    name: Arc<str>,
    meta: LoadMeta,
    pre: P,
    runtime: Arc<RuntimeInner>,
}

impl<P> Loaded<P> {
    pub(crate) fn new(name: &str, meta: LoadMeta, pre: P, runtime: Arc<RuntimeInner>) -> Self {
        Self { name: name.into(), meta, pre, runtime }
    }

    fn store(&self, ctx: &CallContext, limits: &Limits) -> Store<HostState> {
        let state = HostState::new(self.name.clone(), &ctx.request_id, limits.memory_bytes);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| Ok(on_epoch(ctx.data_mut())));
        arm_deadline(&mut store, limits);
        store
    }

    fn error(&self, ctx: &CallContext, cause: Cause) -> PluginError {
        PluginError {
            plugin: self.name.to_string(),
            stage: (!ctx.stage.is_empty()).then(|| ctx.stage.clone()),
            cause,
        }
    }

    /// Runs one call in a fresh store: `invoke` instantiates and calls; the outcome becomes
    /// the host's result type and the store is dropped.
    fn call<T>(
        &self,
        ctx: &CallContext,
        limits: &Limits,
        invoke: impl FnOnce(&mut Store<HostState>, &P) -> wasmtime::Result<Result<T, WitPluginError>>,
    ) -> Result<T, PluginError> {
        let mut store = self.store(ctx, limits);
        let result = invoke(&mut store, &self.pre);
        self.finish_call(&store, ctx, limits, result)
    }

    /// Turns the outcome of a wasm call into the host's error type, logging guest output.
    fn finish_call<T>(
        &self,
        store: &Store<HostState>,
        ctx: &CallContext,
        limits: &Limits,
        result: wasmtime::Result<Result<T, WitPluginError>>,
    ) -> Result<T, PluginError> {
        let cause = match result {
            Ok(Ok(value)) => {
                store.data().flush_output_to_log();
                return Ok(value);
            }
            Ok(Err(plugin_error)) => match plugin_error {
                WitPluginError::InvalidConfig(m) => Cause::InvalidConfig(m),
                WitPluginError::InvalidInput(m) => Cause::InvalidInput(m),
                WitPluginError::Internal(m) => Cause::Internal(m),
            },
            Err(trap) => classify_trap(&trap, store, limits),
        };
        store.data().flush_output_to_log();
        Err(self.error(ctx, cause))
    }
}

/// Gives the store a fresh budget of `limits.time_ms` of the call's own CPU time, rounded up
/// to whole epoch ticks (+1, as the current tick may be about to end).
///
/// Deadlines used to be wall-clock: on a loaded machine (load average 14-30, 64 requests each
/// on its own blocking thread) a healthy 0.13 ms call could wait over 100 ms for a core and
/// time out. Now the first tick that reaches the running call charges it at most one tick
/// (what it can have run since arming: the tick came at most one tick after), reads the
/// thread's CPU clock, and from then on the call is charged the CPU time it uses; it is
/// stopped when the charge reaches the budget. A loop is still stopped after its budget of
/// CPU, later in wall-clock time only when the machine gave it less than a core.
fn arm_deadline(store: &mut Store<HostState>, limits: &Limits) {
    let now = Instant::now();
    let ticks = limits.time_ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1;
    let state = store.data_mut();
    state.budget = CpuBudget { limit: EPOCH_TICK * ticks as u32, armed_at: Some(now), mark: None };
    // The wall-clock deadline host waits are held to (see `CappedClock`); moved on as the
    // budget is found unspent.
    state.deadline = Some(now + limits.timeout());
    // The first check comes at the next tick.
    store.set_epoch_deadline(1);
}

/// An epoch tick reached a running call: charge it and stop it, or let it run to the point
/// where its budget would be spent if it had the core to itself.
fn on_epoch(state: &mut HostState) -> UpdateDeadline {
    let now = Instant::now();
    let budget = &mut state.budget;
    let cpu = thread_cpu_time();
    let spent = match (budget.mark, cpu) {
        (Some((mark, before)), Some(cpu)) => before + cpu.saturating_sub(mark),
        (None, Some(cpu)) => {
            let first =
                budget.armed_at.map_or(EPOCH_TICK, |t| now.saturating_duration_since(t).min(EPOCH_TICK));
            budget.mark = Some((cpu, first));
            first
        }
        // No CPU clock: wall-clock time since arming.
        (_, None) => budget.armed_at.map_or(budget.limit, |t| now.saturating_duration_since(t)),
    };
    if spent >= budget.limit {
        return UpdateDeadline::Interrupt;
    }
    let left = budget.limit - spent;
    state.deadline = Some(now + left);
    UpdateDeadline::Continue((left.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1))
}

fn classify_trap(error: &wasmtime::Error, store: &Store<HostState>, limits: &Limits) -> Cause {
    let state = store.data();
    if let Some(requested) = state.limiter.exceeded {
        return Cause::MemoryLimit { limit: limits.memory_bytes, requested };
    }
    if state.waited_past_deadline {
        return Cause::Timeout(limits.timeout());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Cause::Timeout(limits.timeout()),
        Some(Trap::UnreachableCodeReached) => match panic_message(&state.stderr.peek()) {
            Some(message) => Cause::Panic(message),
            None => Cause::Trap("reached unreachable code (abort)".into()),
        },
        Some(trap) => Cause::Trap(trap.to_string()),
        None => Cause::Trap(format!("{error:#}")),
    }
}

/// Extracts a Rust panic message from captured stderr ("thread '..' panicked at file:line:col:\nmsg").
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at")?;
    let after = &stderr[start + "panicked at".len()..];
    let (location, rest) = after.split_once('\n').unwrap_or((after, ""));
    let message = rest.lines().take_while(|l| !l.starts_with("note:")).collect::<Vec<_>>().join(" ");
    let location = location.trim().trim_end_matches(':');
    Some(if message.trim().is_empty() {
        location.to_owned()
    } else {
        format!("{} (at {location})", message.trim())
    })
}

fn wit_context(ctx: &CallContext) -> WitContext {
    WitContext {
        pipeline: ctx.pipeline.clone(),
        request_id: ctx.request_id.clone(),
        stage: ctx.stage.clone(),
    }
}

fn check_output(len: usize, limits: &Limits) -> Result<(), Cause> {
    if len > limits.output_bytes {
        return Err(Cause::OutputTooLarge { size: len, limit: limits.output_bytes });
    }
    Ok(())
}

/// A loaded post-processor. Cheap to clone; safe to call from many threads at once.
///
/// Calls block the calling thread (wasmtime-wasi's sync bindings): from async code, run them
/// with `tokio::task::spawn_blocking`, never directly on a runtime worker.
#[derive(Clone)]
pub struct PostProcessor {
    inner: Arc<Loaded<post::PostProcessorPre<HostState>>>,
}

impl PostProcessor {
    pub(crate) fn new(loaded: Loaded<post::PostProcessorPre<HostState>>) -> Self {
        Self { inner: Arc::new(loaded) }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn meta(&self) -> &LoadMeta {
        &self.inner.meta
    }

    /// Asks the plugin whether `config` (JSON text) is acceptable.
    pub fn validate_config(
        &self,
        config: &str,
        ctx: &CallContext,
        limits: &Limits,
    ) -> Result<(), PluginError> {
        self.inner.call(ctx, limits, |store, pre| {
            pre.instantiate(&mut *store)?.pipehost_plugin_post_process().call_validate_config(store, config)
        })
    }

    /// Processes a complete text.
    pub fn process(
        &self,
        text: &str,
        ctx: &CallContext,
        config: &str,
        limits: &Limits,
    ) -> Result<String, PluginError> {
        let output = self.inner.call(ctx, limits, |store, pre| {
            pre.instantiate(&mut *store)?.pipehost_plugin_post_process().call_process(
                store,
                text,
                &wit_context(ctx),
                config,
            )
        })?;
        check_output(output.len(), limits).map_err(|c| self.inner.error(ctx, c))?;
        Ok(output)
    }

    /// Opens a stream: one instance for the whole response.
    pub fn open_stream(
        &self,
        ctx: &CallContext,
        config: &str,
        limits: &Limits,
    ) -> Result<PluginStream, PluginError> {
        let inner = &*self.inner;
        let mut store = inner.store(ctx, limits);
        let result = inner.pre.instantiate(&mut store).and_then(|bindings| {
            let opened = bindings.pipehost_plugin_post_process().streamer().call_open(
                &mut store,
                config,
                &wit_context(ctx),
            )?;
            Ok(opened.map(|handle| (bindings, handle)))
        });
        let (bindings, handle) = inner.finish_call(&store, ctx, limits, result)?;
        Ok(PluginStream {
            plugin: self.clone(),
            ctx: ctx.clone(),
            limits: *limits,
            store,
            bindings,
            handle,
            emitted: 0,
            state: StreamState::Open,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Open,
    Finished,
    Failed,
}

/// One response streaming through a post-processor. Dropping it without `finish` is fine
/// (a cancelled request): the instance is discarded.
pub struct PluginStream {
    plugin: PostProcessor,
    ctx: CallContext,
    limits: Limits,
    store: Store<HostState>,
    bindings: post::PostProcessor,
    handle: ResourceAny,
    emitted: usize,
    state: StreamState,
}

impl PluginStream {
    /// Feeds a chunk. Each push has its own deadline of `limits.time_ms`.
    pub fn push(&mut self, chunk: &str) -> Result<StreamOutput, PluginError> {
        self.ensure_open()?;
        arm_deadline(&mut self.store, &self.limits);
        let result = self.bindings.pipehost_plugin_post_process().streamer().call_push(
            &mut self.store,
            self.handle,
            chunk,
        );
        let out = self.settle(result)?;
        self.count_output(out.emit.len())?;
        Ok(StreamOutput { emit: out.emit, stop: out.stop })
    }

    /// Ends the stream and returns the held-back rest.
    pub fn finish(mut self) -> Result<String, PluginError> {
        self.ensure_open()?;
        arm_deadline(&mut self.store, &self.limits);
        let result =
            self.bindings.pipehost_plugin_post_process().streamer().call_finish(&mut self.store, self.handle);
        let rest = self.settle(result)?;
        self.count_output(rest.len())?;
        self.state = StreamState::Finished;
        Ok(rest)
    }

    pub fn plugin(&self) -> &PostProcessor {
        &self.plugin
    }

    fn ensure_open(&self) -> Result<(), PluginError> {
        match self.state {
            StreamState::Open => Ok(()),
            StreamState::Finished => {
                Err(self.plugin.inner.error(&self.ctx, Cause::Host("stream already finished".into())))
            }
            StreamState::Failed => Err(self
                .plugin
                .inner
                .error(&self.ctx, Cause::Host("stream already failed; open a new one".into()))),
        }
    }

    fn settle<T>(&mut self, result: wasmtime::Result<Result<T, WitPluginError>>) -> Result<T, PluginError> {
        let settled = self.plugin.inner.finish_call(&self.store, &self.ctx, &self.limits, result);
        if settled.is_err() {
            // After an error the instance may be poisoned (always after a trap).
            self.state = StreamState::Failed;
        }
        settled
    }

    fn count_output(&mut self, len: usize) -> Result<(), PluginError> {
        self.emitted += len;
        check_output(self.emitted, &self.limits).map_err(|cause| {
            self.state = StreamState::Failed;
            self.plugin.inner.error(&self.ctx, cause)
        })
    }
}

/// A loaded prompt builder. Cheap to clone; calls block (see [`PostProcessor`]).
#[derive(Clone)]
pub struct PromptBuilder {
    inner: Arc<Loaded<prompt::PromptBuilderPre<HostState>>>,
}

impl PromptBuilder {
    pub(crate) fn new(loaded: Loaded<prompt::PromptBuilderPre<HostState>>) -> Self {
        Self { inner: Arc::new(loaded) }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn meta(&self) -> &LoadMeta {
        &self.inner.meta
    }

    pub fn validate_config(
        &self,
        config: &str,
        ctx: &CallContext,
        limits: &Limits,
    ) -> Result<(), PluginError> {
        self.inner.call(ctx, limits, |store, pre| {
            pre.instantiate(&mut *store)?.pipehost_plugin_prompt_build().call_validate_config(store, config)
        })
    }

    /// Builds the chat messages for one request.
    pub fn build(
        &self,
        vars: &[(String, String)],
        history: &[Message],
        ctx: &CallContext,
        config: &str,
        limits: &Limits,
    ) -> Result<Vec<Message>, PluginError> {
        let history: Vec<WitMessage> =
            history.iter().map(|m| WitMessage { role: m.role.clone(), content: m.content.clone() }).collect();
        let messages = self.inner.call(ctx, limits, |store, pre| {
            pre.instantiate(&mut *store)?.pipehost_plugin_prompt_build().call_build(
                store,
                vars,
                &history,
                &wit_context(ctx),
                config,
            )
        })?;
        let size = messages.iter().map(|m| m.content.len() + m.role.len()).sum();
        check_output(size, limits).map_err(|c| self.inner.error(ctx, c))?;
        Ok(messages.into_iter().map(|m| Message { role: m.role, content: m.content }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn extracts_rust_panic_messages() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nboom: bad state\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(panic_message(stderr).unwrap(), "boom: bad state (at src/lib.rs:12:9)");
        assert_eq!(panic_message("nothing here"), None);
    }
}
