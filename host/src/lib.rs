//! Pipehost: serve a local LLM with programmable, sandboxed output pipelines.
//!
//! Concerns, one module each, data flowing one way
//! (request → pipeline → prompt builder → model → post-processors → response):
//! - [`plugin`]: the WebAssembly plugin runtime; the only module that touches wasmtime.
//! - [`cli`]: the command line.

pub mod cli;
pub mod plugin;
