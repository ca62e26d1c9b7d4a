//! Streaming: the latency the post-processor chain adds to each model delta.
//!
//!   scripts/build-plugins.sh && cargo bench -p pipehost --bench streaming
//!
//! Two measurements, both on the 256-character answer of `pipehost bench http`, sent in
//! 4-character deltas as the echo backend sends it:
//!
//! 1. **Chain**: each delta pushed through the four post-processors' streams (dedupe,
//!    punctuation, tone with both presets, truncate) exactly as the executor's chain does (a
//!    stage's output is the next one's input; an empty output ends the walk). Opening the four
//!    streams and finishing them are per request, not per delta, and are reported apart.
//! 2. **Executor, lockstep**: the whole streaming path, `Executor::run_stream` with a backend
//!    that sends one delta every 2 ms and waits for the resulting text to reach the caller
//!    (none within the period: the chain held the text back, as the plugin asked). The time from send to
//!    receipt is the delta's latency; the `full` pipeline (four post-processors) alternates with
//!    `bare` (none) request by request, and full − bare is what the chain adds. Deltas held back
//!    are counted apart, not timed: their wait is the holdback the plugin asked for.

mod common;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PARAGRAPH, percentile, us};
use pipehost::backend::{Backend, BackendError, BackendEvent, BackendReport, BackendRequest, FinishReason};
use pipehost::pipeline::{Executor, Pipeline, Registry, RunEvent, RunRequest};
use pipehost::plugin::CallContext;

const REQUESTS: usize = 400;
/// Requests per pipeline in the lockstep measurement (each takes 64 × [`PERIOD`]).
const LOCKSTEP_REQUESTS: usize = 150;
const CHUNK_CHARS: usize = 4;
/// One delta per period, as a model at 500 tokens/s: the threads idle between deltas in both
/// pipelines alike, as they do behind a real model. Text not received within the period
/// counts as held back.
const PERIOD: Duration = Duration::from_millis(2);

fn deltas() -> Vec<String> {
    let chars: Vec<char> = PARAGRAPH.chars().cycle().take(256).collect();
    chars.chunks(CHUNK_CHARS).map(|c| c.iter().collect()).collect()
}

const HEAD: &str = "variables:\n  - { name: input, required: true }\nprompt:\n  plugin: persona\n  config:\n    \
                    template: \"{{ input }}\"\n";
const POST: &str = "post:\n  - plugin: dedupe\n  - plugin: punctuation\n  - plugin: tone\n    config:\n      \
                    presets: [zh-warm, en-warm]\n  - plugin: truncate\n    config: { max: 1000 }\n";

fn main() {
    let plugins = support::plugins_dir();
    let pipelines = tempfile::tempdir().unwrap();
    std::fs::write(pipelines.path().join("bare.yaml"), format!("{HEAD}post: []\n")).unwrap();
    std::fs::write(pipelines.path().join("full.yaml"), format!("{HEAD}{POST}")).unwrap();
    let registry = Registry::load(pipelines.path(), plugins.path(), support::runtime());
    assert!(registry.errors().is_empty(), "{:?}", registry.errors());
    let (bare, full) = (registry.get("bare").unwrap(), registry.get("full").unwrap());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));

    chain(&full);
    lockstep(bare, full);
}

/// Measurement 1: the four streams, push by push.
fn chain(p: &Pipeline) {
    let ctx = CallContext { pipeline: "full".into(), request_id: "bench".into(), stage: String::new() };
    let deltas = deltas();
    let (mut open, mut finish) = (Vec::new(), Vec::new());
    // Pushes whose text came out of the last stage, and pushes that a stage held back.
    let (mut released, mut held) = (Vec::new(), Vec::new());
    for round in 0..REQUESTS + 20 {
        let t = Instant::now();
        let mut streams: Vec<_> =
            p.stages.iter().map(|s| s.processor.open_stream(&ctx, &s.config, &s.limits).unwrap()).collect();
        let opened = t.elapsed();
        let mut pushes = Vec::new();
        for d in &deltas {
            let t = Instant::now();
            let mut text = d.clone();
            for s in streams.iter_mut() {
                if text.is_empty() {
                    break;
                }
                text = s.push(&text).unwrap().emit;
            }
            pushes.push((t.elapsed(), text.is_empty()));
        }
        let t = Instant::now();
        let mut carry = String::new();
        for s in streams {
            // As the executor does: what an earlier stage released at its finish goes through
            // the later ones first (rare here; pushed for correctness, not timed apart).
            let mut s = s;
            if !carry.is_empty() {
                carry = s.push(&carry).unwrap().emit;
            }
            carry.push_str(&s.finish().unwrap());
        }
        let finished = t.elapsed();
        if round >= 20 {
            // The first rounds warm pool slots and caches.
            open.push(opened);
            finish.push(finished);
            for (d, was_held) in pushes {
                if was_held { held.push(d) } else { released.push(d) }
            }
        }
    }
    println!();
    println!("Chain: {} requests × {} deltas of {CHUNK_CHARS} characters", REQUESTS, deltas.len());
    println!();
    println!("| per | count | median | p99 |");
    println!("|---|---|---|---|");
    let mut all: Vec<Duration> = released.iter().chain(&held).copied().collect();
    row("delta, any", &mut all);
    row("delta whose text reaches the client", &mut released);
    row("delta held back by a stage", &mut held);
    row("request: open the 4 streams", &mut open);
    row("request: finish the 4 streams", &mut finish);
}

fn row(what: &str, samples: &mut [Duration]) {
    let n = samples.len();
    println!("| {what} | {n} | {} | {} |", us(percentile(samples, 0.5)), us(percentile(samples, 0.99)));
}

/// Per request: the latencies of the deltas whose text came through, and how many were held.
type Results = Arc<Mutex<Vec<(Vec<Duration>, usize)>>>;

/// A backend that sends its script one delta at a time, waiting for the caller's receipt.
struct Lockstep {
    script: Vec<String>,
    /// Receipts from the caller: when it got a delta.
    receipts: Mutex<Option<std_mpsc::Receiver<Instant>>>,
    results: Results,
}

impl Backend for Lockstep {
    fn name(&self) -> &str {
        "lockstep"
    }

    fn ready(&self) -> bool {
        true
    }

    fn generate(
        &self,
        _request: BackendRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<BackendEvent>, BackendError> {
        let receipts = self.receipts.lock().unwrap().take().expect("one request at a time");
        let (script, results) = (self.script.clone(), self.results.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut held = 0;
            let start = Instant::now();
            for (i, d) in script.into_iter().enumerate() {
                let due = start + PERIOD * i as u32;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                while receipts.try_recv().is_ok() {} // a receipt later than its period
                let sent = Instant::now();
                tx.blocking_send(BackendEvent::Delta(d)).unwrap();
                match receipts.recv_timeout((due + PERIOD).saturating_duration_since(Instant::now())) {
                    Ok(at) => latencies.push(at - sent),
                    Err(_) => held += 1,
                }
            }
            let n = latencies.len() + held;
            let report = BackendReport {
                prompt_tokens: 0,
                cached_tokens: 0,
                completion_tokens: n,
                finish_reason: FinishReason::Eos,
                prefill_ms: 0.0,
                decode_tokens_per_s: 0.0,
            };
            results.lock().unwrap().push((latencies, held));
            let _ = tx.blocking_send(BackendEvent::Done(report));
        });
        Ok(rx)
    }
}

/// Measurement 2: the executor's streaming path, full vs bare, alternating.
fn lockstep(bare: Arc<Pipeline>, full: Arc<Pipeline>) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let results = Arc::new(Mutex::new(Vec::new()));
    let backend =
        Arc::new(Lockstep { script: deltas(), receipts: Mutex::new(None), results: results.clone() });
    let executor = Executor::new(backend.clone(), HashMap::new());
    let mut samples: [(Vec<Duration>, usize); 2] = Default::default();
    for round in 0..2 * (LOCKSTEP_REQUESTS + 10) {
        let which = round % 2;
        let pipeline = if which == 0 { bare.clone() } else { full.clone() };
        let (receipt_tx, receipt_rx) = std_mpsc::channel();
        *backend.receipts.lock().unwrap() = Some(receipt_rx);
        let request = RunRequest {
            vars: BTreeMap::from([("input".to_owned(), "bench".to_owned())]),
            ..RunRequest::default()
        };
        rt.block_on(async {
            let mut rx = executor.run_stream(pipeline, request).await.unwrap();
            while let Some(ev) = rx.recv().await {
                match ev {
                    RunEvent::Delta(_) => {
                        let _ = receipt_tx.send(Instant::now());
                    }
                    RunEvent::Done(_) => break,
                    RunEvent::Error(e) => panic!("{e}"),
                }
            }
        });
        let (latencies, held) = results.lock().unwrap().pop().unwrap();
        if round >= 20 {
            samples[which].0.extend(latencies);
            samples[which].1 += held;
        }
    }
    let [(mut b, b_held), (mut f, f_held)] = samples;
    let (b50, f50) = (percentile(&mut b, 0.5), percentile(&mut f, 0.5));
    println!();
    println!(
        "Executor, lockstep: {LOCKSTEP_REQUESTS} requests per pipeline, alternating, one delta every {} ms",
        PERIOD.as_millis()
    );
    println!();
    println!("| pipeline | deltas timed | held back | median | p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| bare (no post-processors) | {} | {b_held} | {} | {} |",
        b.len(),
        us(b50),
        us(percentile(&mut b, 0.99))
    );
    println!(
        "| full (4 post-processors) | {} | {f_held} | {} | {} |",
        f.len(),
        us(f50),
        us(percentile(&mut f, 0.99))
    );
    println!();
    println!("added by the chain, median per delta: {}", us(f50.saturating_sub(b50)));
}
