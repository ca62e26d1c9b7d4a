//! The Pipehost plugin SDK.
//!
//! A post-processor is a type implementing [`PostProcessor`]; a prompt builder implements
//! [`PromptBuilder`]. One macro turns it into a WebAssembly component:
//!
//! ```ignore
//! use pipehost_plugin_sdk::{export_post_processor, Context, PluginError, PostProcessor};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(deny_unknown_fields)]
//! pub struct Config { suffix: String }
//!
//! pub struct Shout;
//! impl PostProcessor for Shout {
//!     type Config = Config;
//!     fn process(text: &str, config: &Config, _ctx: &Context) -> Result<String, PluginError> {
//!         Ok(format!("{}{}", text.to_uppercase(), config.suffix))
//!     }
//! }
//! export_post_processor!(Shout);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --profile plugin`; the `.wasm` in
//! `target/wasm32-wasip2/plugin/` is the component. The plugin's logic is plain Rust, so it is
//! unit-tested natively with `cargo test` (the export macro only emits code on wasm32).
//!
//! Streaming: by default a post-processor's stream buffers every chunk and runs
//! [`PostProcessor::process`] at `finish` (correct, not incremental). Override
//! [`PostProcessor::open`] to return a real incremental [`Streamer`]; the contract is that for
//! any chunking of a text, the concatenated output equals `process(text)`.
//! [`testing::assert_stream_matches_whole`] checks that.

use serde::de::DeserializeOwned;

pub mod text;
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod wasm;

/// Who is asking (mirrors the WIT `context` record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    pub pipeline: String,
    pub request_id: String,
    pub stage: String,
}

/// One chat message (mirrors the WIT `message` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Why a plugin call failed (mirrors the WIT `plugin-error` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    InvalidConfig(String),
    InvalidInput(String),
    Internal(String),
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginError::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            PluginError::InvalidInput(m) => write!(f, "invalid input: {m}"),
            PluginError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for PluginError {}

/// What a streaming push hands back (mirrors the WIT `chunk-output` record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkOutput {
    /// Final text that may be sent to the client now.
    pub emit: String,
    /// The plugin wants no more input: the host stops generating.
    pub stop: bool,
}

impl ChunkOutput {
    pub fn emit(text: impl Into<String>) -> Self {
        Self { emit: text.into(), stop: false }
    }
}

/// Parses a stage's JSON config; an empty string means `{}`.
///
/// Errors are `invalid-config` with serde's message prefixed by the path of the bad field
/// (`rules[2].to: invalid type ...`), which plain `serde_json` does not give for type errors.
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let mut de = serde_json::Deserializer::from_str(json);
    let config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        PluginError::InvalidConfig(if path == "." { inner.to_string() } else { format!("{path}: {inner}") })
    })?;
    de.end().map_err(|e| PluginError::InvalidConfig(e.to_string()))?;
    Ok(config)
}

/// An incremental stream of one response through a post-processor.
pub trait Streamer {
    /// Takes the next chunk; returns what is final now and whether to stop.
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError>;
    /// Returns everything still held back.
    fn finish(&mut self) -> Result<String, PluginError>;
}

/// A post-processor: rewrites model output.
pub trait PostProcessor: 'static {
    /// The stage config, deserialized from JSON. Use `#[serde(deny_unknown_fields)]` so a typo
    /// in a pipeline file is rejected at load time.
    type Config: DeserializeOwned + 'static;

    /// Checks what serde cannot (ranges, consistency). Called at load time and per call.
    fn check_config(_config: &Self::Config) -> Result<(), PluginError> {
        Ok(())
    }

    /// Processes a complete text.
    fn process(text: &str, config: &Self::Config, ctx: &Context) -> Result<String, PluginError>;

    /// Opens a stream. The default buffers everything and calls `process` at `finish`.
    fn open(config: Self::Config, ctx: Context) -> Result<Box<dyn Streamer>, PluginError>
    where
        Self: Sized,
    {
        Ok(Box::new(Buffered::<Self> { config, ctx, buffer: String::new() }))
    }

    /// Parses and checks a JSON config.
    fn config(json: &str) -> Result<Self::Config, PluginError>
    where
        Self: Sized,
    {
        let config = parse_config(json)?;
        Self::check_config(&config)?;
        Ok(config)
    }
}

/// The default stream: correct for any plugin, but emits nothing until `finish`.
pub struct Buffered<P: PostProcessor> {
    config: P::Config,
    ctx: Context,
    buffer: String,
}

impl<P: PostProcessor> Streamer for Buffered<P> {
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError> {
        self.buffer.push_str(chunk);
        Ok(ChunkOutput::default())
    }

    fn finish(&mut self) -> Result<String, PluginError> {
        let text = std::mem::take(&mut self.buffer);
        P::process(&text, &self.config, &self.ctx)
    }
}

/// A prompt builder: turns request variables into chat messages.
pub trait PromptBuilder: 'static {
    type Config: DeserializeOwned + 'static;

    /// Checks what serde cannot (e.g. that a template compiles). Called at load time and per call.
    fn check_config(_config: &Self::Config) -> Result<(), PluginError> {
        Ok(())
    }

    /// Builds the messages. `vars` are (name, value) pairs; values are data, never template code.
    fn build(
        vars: &[(String, String)],
        history: &[Message],
        config: &Self::Config,
        ctx: &Context,
    ) -> Result<Vec<Message>, PluginError>;

    fn config(json: &str) -> Result<Self::Config, PluginError>
    where
        Self: Sized,
    {
        let config = parse_config(json)?;
        Self::check_config(&config)?;
        Ok(config)
    }
}

/// Helpers for plugin tests.
pub mod testing {
    use super::*;

    /// Runs `text` through `P`'s stream in chunks of the given sizes (in characters, cycled)
    /// and returns the concatenated output and whether `stop` was ever set. Stops feeding once
    /// `stop` is set, as the host does.
    pub fn run_stream<P: PostProcessor>(
        text: &str,
        config_json: &str,
        chunk_chars: &[usize],
    ) -> Result<(String, bool), PluginError> {
        let config = P::config(config_json)?;
        let mut stream = P::open(config, Context::default())?;
        let mut out = String::new();
        let mut stopped = false;
        let mut rest = text;
        let mut sizes = chunk_chars.iter().copied().filter(|&n| n > 0).cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(usize::MAX);
            let cut = rest.char_indices().nth(n).map_or(rest.len(), |(i, _)| i);
            let (chunk, tail) = rest.split_at(cut);
            rest = tail;
            let pushed = stream.push(chunk)?;
            out.push_str(&pushed.emit);
            if pushed.stop {
                stopped = true;
                break;
            }
        }
        out.push_str(&stream.finish()?);
        Ok((out, stopped))
    }

    /// Asserts the streaming contract: for the given chunking, stream output == `process`.
    pub fn assert_stream_matches_whole<P: PostProcessor>(
        text: &str,
        config_json: &str,
        chunk_chars: &[usize],
    ) {
        let config = P::config(config_json).expect("config");
        let whole = P::process(text, &config, &Context::default()).expect("process");
        let (streamed, _) = run_stream::<P>(text, config_json, chunk_chars).expect("stream");
        assert_eq!(streamed, whole, "stream != whole for chunks {chunk_chars:?} on {text:?}");
    }
}

/// Exports a [`PostProcessor`] as the component's `post-processor` world.
/// Emits nothing on non-wasm targets, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_post_processor {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __PipehostPostProcessor = $crate::wasm::PostProcessorExport<$plugin>;
            $crate::wasm::post_processor::export!(
                __PipehostPostProcessor with_types_in $crate::wasm::post_processor
            );
        };
    };
}

/// Exports a [`PromptBuilder`] as the component's `prompt-builder` world.
#[macro_export]
macro_rules! export_prompt_builder {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __PipehostPromptBuilder = $crate::wasm::PromptBuilderExport<$plugin>;
            $crate::wasm::prompt_builder::export!(
                __PipehostPromptBuilder with_types_in $crate::wasm::prompt_builder
            );
        };
    };
}

/// Writes to the host's log (no-op natively, where there is no host).
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wasm::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}
