//! The per-store state a plugin instance sees: an empty WASI context, its memory limiter,
//! and captured stdout/stderr that end up in the host's log tagged with the plugin name.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, post::pipehost::plugin::host};
use super::limits::MemoryLimiter;

/// How much of a call's stdout/stderr is kept for the log. Beyond this, writes still succeed
/// (a chatty plugin must not fail because of its logging) but are dropped.
const CAPTURE_BYTES: usize = 16 << 10;

pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stdout: Capture,
    pub(crate) stderr: Capture,
    plugin: Arc<str>,
    request_id: String,
    /// When the current call (or stream `push`/`finish`) must end (see [`CappedClock`]).
    pub(crate) deadline: Option<Instant>,
    /// Set when the guest asked to wait beyond `deadline`: its trap is a timeout.
    pub(crate) waited_past_deadline: bool,
    /// The current call's time budget and how much of it is spent (see `instance::on_epoch`).
    pub(crate) budget: CpuBudget,
}

/// What a call's deadline counts: the CPU time of the thread running it, not time spent
/// waiting for a core. Read only when an epoch tick reaches a running call (a syscall, ~0.5 µs
/// here), so a call shorter than a tick costs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuBudget {
    /// The limit, rounded up to whole ticks as wall-clock deadlines were.
    pub(crate) limit: Duration,
    /// When the call was armed.
    pub(crate) armed_at: Option<Instant>,
    /// At the first tick: the thread's CPU clock then and the time charged until then.
    pub(crate) mark: Option<(Duration, Duration)>,
}

/// CPU time the calling thread has used (user + system).
#[cfg(target_os = "linux")]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Elsewhere deadlines stay wall-clock.
#[cfg(not(target_os = "linux"))]
pub(crate) fn thread_cpu_time() -> Option<Duration> {
    None
}

impl HostState {
    pub(crate) fn new(plugin: Arc<str>, request_id: &str, memory_limit: usize) -> Self {
        let stdout = Capture::default();
        let stderr = Capture::default();
        // Nothing is granted: no preopened directories, environment, arguments, stdin or
        // network. Sockets are denied explicitly rather than relying on defaults.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            stdout,
            stderr,
            plugin,
            request_id: request_id.to_owned(),
            deadline: None,
            waited_past_deadline: false,
            budget: CpuBudget::default(),
        }
    }

    /// The monotonic clock as the guest sees it: subscriptions capped at the deadline.
    pub(crate) fn capped_clock(&mut self) -> CappedClockView<'_> {
        CappedClockView {
            clocks: WasiClocksCtxView { ctx: self.wasi.clocks(), table: &mut self.table },
            deadline: self.deadline,
            waited_past_deadline: &mut self.waited_past_deadline,
        }
    }

    /// Sends what the guest printed to the host's log, line by line.
    pub(crate) fn flush_output_to_log(&self) {
        for line in self.stdout.take_lines() {
            tracing::info!(target: "pipehost::plugin", plugin = %self.plugin, request_id = %self.request_id, stream = "stdout", "{line}");
        }
        for line in self.stderr.take_lines() {
            tracing::warn!(target: "pipehost::plugin", plugin = %self.plugin, request_id = %self.request_id, stream = "stderr", "{line}");
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, request_id) = (&*self.plugin, self.request_id.as_str());
        // Bound what one call can put in the log.
        let message = truncate_utf8(&message, CAPTURE_BYTES);
        match level {
            Level::Trace => {
                tracing::trace!(target: "pipehost::plugin", plugin = %plugin, request_id = %request_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "pipehost::plugin", plugin = %plugin, request_id = %request_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "pipehost::plugin", plugin = %plugin, request_id = %request_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "pipehost::plugin", plugin = %plugin, request_id = %request_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "pipehost::plugin", plugin = %plugin, request_id = %request_id, "{message}")
            }
        }
    }
}

impl super::bindings::post::pipehost::plugin::types::Host for HostState {}

/// `wasi:clocks/monotonic-clock`, where a subscription that would end after the call's
/// deadline (what a guest's `sleep`, or a `poll` with a timeout, waits on) stops the guest at
/// once with a timeout. A guest waiting on a pollable blocks inside the host, where epoch
/// interruption cannot reach it: unchecked, one `sleep` would hold the calling thread as long
/// as the guest asks (u64 nanoseconds: centuries), and only then time out. Plugins have
/// nothing else to wait for (no sockets, an empty stdin), so this bounds every host wait.
pub(crate) struct CappedClock;

impl HasData for CappedClock {
    type Data<'a> = CappedClockView<'a>;
}

pub(crate) struct CappedClockView<'a> {
    clocks: WasiClocksCtxView<'a>,
    deadline: Option<Instant>,
    waited_past_deadline: &'a mut bool,
}

impl monotonic_clock::Host for CappedClockView<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.clocks.now()
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        self.clocks.resolution()
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.clocks.now()?;
        self.subscribe_duration(when.saturating_sub(now))
    }

    fn subscribe_duration(
        &mut self,
        nanos: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if Duration::from_nanos(nanos) > left {
                *self.waited_past_deadline = true;
                wasmtime::bail!("the plugin would wait past its deadline");
            }
        }
        self.clocks.subscribe_duration(nanos)
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A bounded in-memory sink for a guest's stdout or stderr.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn write(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = CAPTURE_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Everything captured so far, as text (lossy), leaving the buffer empty.
    pub(crate) fn take(&self) -> String {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&std::mem::take(&mut *buf)).into_owned()
    }

    pub(crate) fn peek(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn take_lines(&self) -> Vec<String> {
        self.take().lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Capture {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        Capture::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept: excess is dropped in `write`, never reported as an error.
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Capture::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
