//! Plugin call cost: each shipped plugin as a WebAssembly component (fresh instance per call
//! from the pooled `InstancePre`, as in production) next to the same Rust logic compiled
//! natively, plus the host's fixed cost per call (an empty plugin).
//!
//!   scripts/build-plugins.sh && cargo bench -p pipehost --bench plugins
//!   cargo bench -p pipehost --bench plugins -- punctuation    # only these rows (`empty`, plugin names)
//!
//! WASM and native batches alternate within one run, so machine noise hits both alike; the
//! ratio is the number to compare across machines. Prints a Markdown table.

mod common;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{PARAGRAPH, percentile, us};
use pipehost::plugin::{CallContext, Limits, PostProcessor};
use pipehost_plugin_sdk::{Context, PostProcessor as Logic};

/// Time per measurement round for each side; rounds alternate WASM and native.
const ROUND: Duration = Duration::from_millis(150);
const ROUNDS: usize = 10;

fn main() {
    // cargo passes `--bench`; any other argument names the rows to run.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let runtime = support::runtime();
    let ctx = CallContext { pipeline: "bench".into(), request_id: "bench".into(), stage: "bench".into() };
    let limits = Limits { time_ms: 10_000, ..Limits::default() };

    println!("| plugin | input | wasm median | wasm p99 | native median | native p99 | wasm/native |");
    println!("|---|---|---|---|---|---|---|");

    if wanted("empty") {
        let empty = runtime.load_post_processor("empty", &support::component("guest-empty")).unwrap();
        let (wasm, _) = measure(|| empty.process("x", &ctx, "{}", &limits).unwrap(), || String::from("x"));
        println!("| empty (fixed cost) | 1 B | {} | {} | – | – | – |", us(median(&wasm)), us(p99(&wasm)));
    }
    let load = |name: &str| runtime.load_post_processor(name, &support::component(name)).unwrap();
    if wanted("dedupe") {
        bench::<dedupe::Dedupe>(load("dedupe"), "{}", &ctx, &limits);
    }
    if wanted("punctuation") {
        bench::<punctuation::Punctuation>(load("punctuation"), "{}", &ctx, &limits);
    }
    if wanted("tone") {
        bench::<tone::Tone>(load("tone"), r#"{"presets":["zh-warm","en-warm"]}"#, &ctx, &limits);
    }
    if wanted("truncate") {
        bench::<truncate::Truncate>(load("truncate"), r#"{"max":200}"#, &ctx, &limits);
    }
}

fn bench<P: Logic>(plugin: PostProcessor, config: &str, ctx: &CallContext, limits: &Limits) {
    for size in [1 << 10, 4 << 10, 64 << 10] {
        let text = sample_text(size);
        let native_ctx = Context::default();
        let (wasm, native) = measure(
            || plugin.process(&text, ctx, config, limits).unwrap(),
            || {
                // The component parses its config on every call; so does the native side.
                let parsed = P::config(config).unwrap();
                P::process(&text, &parsed, &native_ctx).unwrap()
            },
        );
        println!(
            "| {} | {} KB | {} | {} | {} | {} | {:.2}× |",
            plugin.name(),
            size >> 10,
            us(median(&wasm)),
            us(p99(&wasm)),
            us(median(&native)),
            us(p99(&native)),
            median(&wasm).as_secs_f64() / median(&native).as_secs_f64()
        );
    }
}

/// Alternates rounds of the two functions; returns every call's duration for each.
fn measure(mut a: impl FnMut() -> String, mut b: impl FnMut() -> String) -> (Vec<Duration>, Vec<Duration>) {
    // Warm-up: first-call costs (lazy statics, page faults in fresh pool slots).
    for _ in 0..20 {
        black_box(a());
        black_box(b());
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (f, samples) in [(&mut a as &mut dyn FnMut() -> String, &mut ta), (&mut b, &mut tb)] {
            let round = Instant::now();
            while round.elapsed() < ROUND {
                let start = Instant::now();
                black_box(f());
                samples.push(start.elapsed());
            }
        }
    }
    (ta, tb)
}

fn median(samples: &[Duration]) -> Duration {
    percentile(&mut samples.to_vec(), 0.5)
}

fn p99(samples: &[Duration]) -> Duration {
    percentile(&mut samples.to_vec(), 0.99)
}

/// Model-like output, Chinese and English, with the repetitions and stock phrases the plugins
/// exist for, cut to `bytes` at a character boundary.
fn sample_text(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + PARAGRAPH.len());
    while text.len() < bytes {
        text.push_str(PARAGRAPH);
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}
