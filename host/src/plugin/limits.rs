//! Per-call resource limits and their enforcement inside a store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits for one plugin call (or one stream). Pipelines set them per stage; the defaults
/// suit text post-processing of one model response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline per call (for a stream: per `push`/`finish`), in milliseconds.
    pub time_ms: u64,
    /// Cap on each linear memory of the instance, in bytes.
    pub memory_bytes: usize,
    /// Cap on the text a call returns (for a stream: on everything it emits), in bytes.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { time_ms: 100, memory_bytes: 64 << 20, output_bytes: 1 << 20 }
    }
}

/// The largest memory cap a stage may ask for. The pooling allocator reserves slots of this
/// size, so it is an engine-wide setting rather than a per-call one.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.time_ms)
    }

    /// Rejects limits the engine cannot honour, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.time_ms == 0 || self.time_ms > 60_000 {
            return Err(format!("limits.time_ms must be between 1 and 60000, got {}", self.time_ms));
        }
        if self.memory_bytes < (2 << 20) || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "limits.memory_bytes must be between {} and {MAX_MEMORY_BYTES}, got {}",
                2 << 20,
                self.memory_bytes
            ));
        }
        if self.output_bytes == 0 {
            return Err("limits.output_bytes must be positive".into());
        }
        Ok(())
    }
}

/// Enforces the memory cap and remembers that it was hit, so the resulting trap can be
/// reported as a memory-limit error rather than a generic one.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, exceeded: None }
    }
}

/// Marker error returned from the limiter; it aborts the guest with a trap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
pub(crate) struct MemoryLimitHit;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            // Trap instead of returning -1 from memory.grow: a Rust guest would abort on the
            // failed allocation anyway, and a trap lets us say precisely what happened.
            self.exceeded = Some(desired);
            return Err(MemoryLimitHit.into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; Rust guests need a few hundred.
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        8
    }
}
