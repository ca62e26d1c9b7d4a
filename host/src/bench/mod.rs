//! Benchmark drivers behind `pipehost bench` (not timed tests; the figures are in
//! docs/performance.md). The command line (`cli/bench.rs`) only parses their flags.
//!
//! - [`model`]: the engine's load, prefill and decode speed.
//! - [`http`]: a served host's overhead, from outside: a `pipehost serve` child under 1..N
//!   keep-alive clients; also reload under load.
//! - [`reload`]: hot reload latency, and the reload-under-load check.
//! - [`memory`]: the memory read bandwidth, decode's ceiling.

pub mod http;
pub mod memory;
pub mod model;
pub mod reload;
