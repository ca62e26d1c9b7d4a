//! What the benchmark binaries share (each `benches/*.rs` is its own crate).

use std::time::Duration;

/// Model-like output, Chinese and English, with the repetitions and stock phrases the
/// post-processors exist for. The same text `pipehost bench http` serves.
pub const PARAGRAPH: &str = include_str!("../../src/bench/sample.txt");

/// The `q` quantile (0.5 = median) by nearest rank; sorts `samples`.
pub fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
