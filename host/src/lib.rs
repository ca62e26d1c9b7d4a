//! Pipehost: serve a local LLM with programmable, sandboxed output pipelines.
//!
//! Concerns, one module each, data flowing one way
//! (request → pipeline → prompt builder → model → post-processors → response):
//! - [`plugin`]: the WebAssembly plugin runtime; the only module that touches wasmtime.
//! - [`model`]: the Qwen3 model engine; the only module that touches candle and tokenizers.
//! - [`backend`]: model backends behind one trait (`echo`, `candle`, `openai`).
//! - [`pipeline`]: pipeline files, their registry with hot reload, and the executor.
//! - [`experiment`]: A/B experiments between pipelines: files, sticky assignment, results.
//! - [`store`]: the request log and feedback (SQLite or PostgreSQL); the only module that touches a
//!   database.
//! - [`server`]: the HTTP server (OpenAI-compatible and native endpoints, SSE, metrics).
//! - [`playground`]: the playground page's files, embedded; the server serves them at `/`.
//! - [`cli`]: the command line.

pub mod backend;
pub mod cli;
pub mod experiment;
pub mod model;
pub mod pipeline;
pub mod playground;
pub mod plugin;
pub mod server;
pub mod store;
