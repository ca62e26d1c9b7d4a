//! Errors of the plugin runtime. Every error names the plugin (and the stage when the
//! caller gave one) and says what went wrong in words a pipeline author can act on.

use std::fmt;
use std::time::Duration;

/// A plugin call or load failed. The host stays healthy: the store involved is dropped and the
/// next call gets a fresh instance.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}`{}: {cause}", StageSuffix(.stage.as_deref()))]
pub struct PluginError {
    /// The plugin's name (file stem of its .wasm).
    pub plugin: String,
    /// The pipeline stage that ran it, when known.
    pub stage: Option<String>,
    pub cause: Cause,
}

struct StageSuffix<'a>(Option<&'a str>);

impl fmt::Display for StageSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(stage) => write!(f, " (stage `{stage}`)"),
            None => Ok(()),
        }
    }
}

/// Why a plugin failed. Callers match on this (e.g. HTTP status: `InvalidInput` is the client's
/// fault, everything else is the pipeline's or the plugin's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    /// The file is missing, unreadable, not WebAssembly, or not a component.
    #[error("cannot load {0}")]
    Load(String),
    /// The component does not implement the contract the host expects (wrong world or version).
    #[error("does not implement the expected contract: {0}")]
    Contract(String),
    /// The plugin rejected its config (its own message).
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The plugin rejected this request's input (its own message).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The plugin reported an internal failure (its own message).
    #[error("internal error: {0}")]
    Internal(String),
    /// The call ran past its wall-clock deadline and was interrupted.
    #[error("timed out after {} ms (limit)", .0.as_millis())]
    Timeout(Duration),
    /// The plugin tried to grow its linear memory past the cap.
    #[error("exceeded its memory limit of {limit} bytes (tried to grow to {requested} bytes)")]
    MemoryLimit { limit: usize, requested: usize },
    /// The plugin returned more text than allowed.
    #[error("output of {size} bytes exceeds its limit of {limit} bytes")]
    OutputTooLarge { size: usize, limit: usize },
    /// The plugin panicked (with the panic message from its stderr).
    #[error("panicked: {0}")]
    Panic(String),
    /// Any other WebAssembly trap (unreachable, out-of-bounds access, stack overflow...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The host misused the plugin (e.g. pushed to a finished stream) or failed itself.
    #[error("host error: {0}")]
    Host(String),
}

impl Cause {
    /// Short machine-readable name, for metrics and API error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Cause::Load(_) => "load",
            Cause::Contract(_) => "contract",
            Cause::InvalidConfig(_) => "invalid_config",
            Cause::InvalidInput(_) => "invalid_input",
            Cause::Internal(_) => "internal",
            Cause::Timeout(_) => "timeout",
            Cause::MemoryLimit { .. } => "memory_limit",
            Cause::OutputTooLarge { .. } => "output_too_large",
            Cause::Panic(_) => "panic",
            Cause::Trap(_) => "trap",
            Cause::Host(_) => "host",
        }
    }
}
