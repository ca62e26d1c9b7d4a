//! Plugin call cost: each shipped plugin as a WebAssembly component (fresh instance per call
//! from the pooled `InstancePre`, as in production) next to the same Rust logic compiled
//! natively, plus the host's fixed cost per call (an empty plugin).
//!
//!   scripts/build-plugins.sh && cargo bench -p pipehost --bench plugins
//!   cargo bench -p pipehost --bench plugins -- punctuation    # only these rows (`empty`, plugin names)
//!   cargo bench -p pipehost --bench plugins -- evil-py cliche  # Python rows (JS: evil-js plaintext)
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

    // Other languages: the fixed cost (the evil guests' echo mode on 1 byte: a fresh instance
    // of the language runtime's snapshot, config parsing, one call) and a 4 KB call of the
    // shipped plugin, next to the Rust rows above (`empty`; `tone` does the same kind of
    // phrase rewriting as `cliche`). No native column: the logic is not Rust.
    let mut extra: Vec<(String, &str, std::path::PathBuf, &str)> = vec![
        ("evil-py".into(), "python", support::component("evil-py"), r#"{"mode":"ok"}"#),
        ("evil-js".into(), "javascript", support::component("evil-js"), r#"{"mode":"ok"}"#),
        ("cliche".into(), "python", support::component("cliche"), "{}"),
        ("plaintext".into(), "javascript", support::component("plaintext"), "{}"),
    ];
    // More components to compare, e.g. another JS engine's build of a plugin:
    // PIPEHOST_BENCH_EXTRA="plaintext-sm=/path/plaintext-sm.wasm" (a 4 KB call with `{}`).
    if let Ok(list) = std::env::var("PIPEHOST_BENCH_EXTRA") {
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (name, path) = item.split_once('=').expect("PIPEHOST_BENCH_EXTRA: NAME=PATH,...");
            extra.push((name.into(), "extra", path.into(), "{}"));
        }
    }
    extra.retain(|(name, ..)| wanted(name));
    if !extra.is_empty() {
        println!();
        println!("| plugin | language | input | wasm median | wasm p99 | load (compile or cache) |");
        println!("|---|---|---|---|---|---|");
    }
    for (name, language, path, config) in extra {
        let started = Instant::now();
        let plugin = runtime.load_post_processor(&name, &path).unwrap();
        let load = started.elapsed();
        let limits = Limits { time_ms: 10_000, ..plugin.meta().language.default_limits() };
        let fixed = name.starts_with("evil-");
        let text = if fixed { "x".to_string() } else { sample_text(4 << 10) };
        let (wasm, _) = measure(|| plugin.process(&text, &ctx, config, &limits).unwrap(), String::new);
        println!(
            "| {name}{} | {language} | {} | {} | {} | {} ({:?}) |",
            if fixed { " (fixed cost)" } else { "" },
            if fixed { "1 B".to_string() } else { "4 KB".to_string() },
            us(median(&wasm)),
            us(p99(&wasm)),
            us(load),
            plugin.meta().outcome,
        );
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
