//! Pipehost: serve a local LLM with programmable, sandboxed output pipelines.
//!
//! Concerns, one module each, data flowing one way
//! (request → pipeline → prompt builder → model → post-processors → response):
//! - [`plugin`]: the WebAssembly plugin runtime; the only module that touches wasmtime.
//! - [`model`]: the Qwen3 model engine; the only module that touches candle and tokenizers.
//! - [`cli`]: the command line.

pub mod cli;
pub mod model;
pub mod plugin;
