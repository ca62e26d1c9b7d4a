//! The plugin runtime: loads WebAssembly components that implement `wit/plugin.wit` and runs
//! them sandboxed. This module alone touches wasmtime.
//!
//! - [`PluginRuntime`] owns the engine (pooling allocator, epoch deadlines), the linkers and
//!   the on-disk compile cache; it loads [`PostProcessor`]s and [`PromptBuilder`]s.
//! - Every call gets a fresh instance with its own [`Limits`] (time, memory, output size).
//! - Failures are [`PluginError`]s naming the plugin, the stage and the [`Cause`].
//!
//! Calls are synchronous: wasmtime-wasi's sync bindings start their own tokio runtime for
//! WASI host calls and panic when called on a tokio worker thread ("Cannot start a runtime from
//! within a runtime"). Async callers use `spawn_blocking`.

mod bindings;
mod cache;
mod engine;
mod error;
mod host_state;
mod instance;
mod limits;
mod registry;

pub use cache::{CacheOutcome, default_cache_dir};
pub use engine::{Allocator, LoadMeta, PluginRuntime, RuntimeConfig};
pub use error::{Cause, PluginError};
pub use instance::{CallContext, Message, PluginStream, PostProcessor, PromptBuilder, StreamOutput};
pub use limits::{LANGUAGE_SECTION, Language, Limits, MAX_MEMORY_BYTES};
pub use registry::{default_plugins_dir, plugin_path, validate_plugin_name};
