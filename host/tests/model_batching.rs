//! Continuous batching and the prefix cache, against the transformers goldens of the tiny
//! reference Qwen3 (see model_reference.rs): nothing about a request may change because others
//! run beside it, join mid-flight, or leave.
mod support;

use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pipehost::model::{
    self, ChatMessage, DTypeChoice, DeviceChoice, Engine, EngineConfig, Event, EventStream, FinishReason,
    GenerateRequest, Model, ModelError, ModelSpec, Prompt, Report, SamplingParams, StopFlag,
};
use serde_json::Value;

const LOGIT_TOL: f32 = 1e-4;
const TIE_MARGIN: f64 = 1e-3;

use support::reference_dir;

fn golden() -> Option<&'static Value> {
    static GOLDEN: OnceLock<Option<Value>> = OnceLock::new();
    GOLDEN
        .get_or_init(|| {
            let dir = reference_dir()?;
            Some(
                serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-qwen3.golden.json")).unwrap())
                    .unwrap(),
            )
        })
        .as_ref()
}

fn load() -> Model {
    let dir = reference_dir().unwrap();
    let mut spec = ModelSpec::new(dir.join("tiny-qwen3").to_str().unwrap());
    spec.device = DeviceChoice::Cpu;
    spec.dtype = DTypeChoice::F32;
    model::load(&spec).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// One golden generation: prompt ids, penalty, expected new ids and the reference's margins.
struct Case {
    name: String,
    prompt: Vec<u32>,
    penalty: f32,
    want: Vec<u32>,
    margins: Vec<f64>,
}

fn cases(golden: &Value) -> Vec<Case> {
    let mut out = Vec::new();
    for p in golden["prompts"].as_array().unwrap() {
        for (case, g) in p["generations"].as_object().unwrap() {
            out.push(Case {
                name: format!("{}/{case}", p["name"].as_str().unwrap()),
                prompt: ids(&p["input_ids"]),
                penalty: g["repetition_penalty"].as_f64().unwrap() as f32,
                want: ids(&g["new_ids"]),
                margins: floats(&g["step_top1_top2_margin"]),
            });
        }
    }
    out
}

fn greedy(case: &Case, max_new: usize) -> GenerateRequest {
    let mut req = GenerateRequest::new(Prompt::Ids(case.prompt.clone()));
    req.sampling = SamplingParams {
        temperature: Some(0.0),
        repetition_penalty: Some(case.penalty),
        ..Default::default()
    };
    req.max_new_tokens = Some(max_new);
    req.ignore_eos = true;
    req
}

/// Equal ids up to the first step where the reference itself was a near-tie.
fn assert_matches(case: &Case, got: &[u32]) {
    for (step, (a, b)) in got.iter().zip(&case.want).enumerate() {
        if a != b {
            assert!(
                case.margins[step] < TIE_MARGIN,
                "{}: step {step}: got {a}, want {b} (reference margin {})",
                case.name,
                case.margins[step]
            );
            return;
        }
    }
}

fn collect(stream: EventStream) -> JoinHandle<Result<(String, Report), ModelError>> {
    std::thread::spawn(move || stream.collect_blocking())
}

fn wait_for(engine: &Engine, what: &str, mut done: impl FnMut(&Engine) -> bool) {
    let start = Instant::now();
    while !done(engine) {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn config(max_batch: usize) -> EngineConfig {
    let mut c = EngineConfig::new(64);
    c.max_batch = max_batch;
    c
}

#[test]
fn batched_steps_give_the_reference_logits() {
    let Some(g) = golden() else { return };
    let mut m = load();
    let prompts: Vec<&Value> = g["prompts"].as_array().unwrap().iter().collect();
    let all: Vec<Vec<u32>> = prompts.iter().map(|p| ids(&p["input_ids"])).collect();
    let logits = m.last_logits_batched(&all).unwrap();
    for (p, logits) in prompts.iter().zip(&logits) {
        let name = p["name"].as_str().unwrap();
        for (i, want) in floats(&p["last_logits_first16"]).iter().enumerate() {
            let diff = (logits[i] - *want as f32).abs();
            assert!(diff <= LOGIT_TOL, "{name}: logit {i}: {} vs {want} (diff {diff})", logits[i]);
        }
        for (id, want) in ids(&p["last_logits_top10_ids"]).iter().zip(floats(&p["last_logits_top10_values"]))
        {
            let diff = (logits[*id as usize] - want as f32).abs();
            assert!(diff <= LOGIT_TOL, "{name}: top logit {id}: {} vs {want}", logits[*id as usize]);
        }
        let l2: f64 = logits.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let want_l2 = p["last_logits_l2"].as_f64().unwrap();
        assert!((l2 - want_l2).abs() <= want_l2 * 1e-5, "{name}: l2 {l2} vs {want_l2}");
    }
    // And the same as each prompt alone.
    for (ids, batched) in all.iter().zip(&logits) {
        let alone = m.last_logits(ids).unwrap();
        let worst = alone.iter().zip(batched).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= LOGIT_TOL, "batched vs alone: max abs diff {worst}");
    }
}

#[test]
fn greedy_generations_arriving_at_different_times_equal_the_goldens() {
    let Some(g) = golden() else { return };
    let cases = cases(g);
    let engine = Engine::start_with(load(), config(8));
    // Half arrive at once; the rest join while those are mid-generation.
    let (first, later) = cases.split_at(cases.len() / 2);
    let mut running = Vec::new();
    for case in first {
        running.push((case, collect(engine.submit_blocking(greedy(case, case.want.len())).unwrap())));
    }
    wait_for(&engine, "the first wave to be decoding", |e| e.stats().steps >= 3);
    for case in later {
        running.push((case, collect(engine.submit_blocking(greedy(case, case.want.len())).unwrap())));
        std::thread::sleep(Duration::from_millis(2));
    }
    for (case, handle) in running {
        let (_, report) = handle.join().unwrap().unwrap();
        assert_eq!(report.finish_reason, FinishReason::Length, "{}", case.name);
        assert_eq!(report.token_ids.len(), case.want.len(), "{}", case.name);
        assert_matches(case, &report.token_ids);
    }
    let stats = engine.stats();
    assert!(stats.peak_batch >= 4, "the requests never ran together: {stats:?}");
    assert!(stats.peak_batch <= 8, "--max-batch not held: {stats:?}");
}

#[test]
fn cancelling_and_adding_requests_mid_batch_leaves_the_others_unchanged() {
    let Some(g) = golden() else { return };
    let cases = cases(g);
    let engine = Engine::start_with(load(), config(8));
    let survivors: Vec<&Case> = cases.iter().step_by(3).take(3).collect();
    let mut handles = Vec::new();
    for case in &survivors {
        handles.push((*case, collect(engine.submit_blocking(greedy(case, case.want.len())).unwrap())));
    }
    // Long runners that will leave: two dropped, one stopped with a report.
    let long = &cases[1];
    let dropped: Vec<EventStream> =
        (0..2).map(|_| engine.submit_blocking(greedy(long, 5000)).unwrap()).collect();
    let stop = StopFlag::default();
    let mut stopped = engine.try_submit_with_stop(greedy(long, 5000), stop.clone()).unwrap();
    wait_for(&engine, "all six to run", |e| e.stats().peak_batch >= 6);
    drop(dropped);
    // Read a few tokens of the stopped one, then stop it.
    let mut seen = 0;
    while seen < 3 {
        match stopped.recv_blocking() {
            Some(Event::Delta(_)) => seen += 1,
            other => panic!("the long request ended early: {other:?}"),
        }
    }
    stop.stop();
    // Two newcomers join the batch the others left.
    for case in cases.iter().skip(1).step_by(3).take(2) {
        handles.push((case, collect(engine.submit_blocking(greedy(case, case.want.len())).unwrap())));
    }
    let (_, report) = stopped.collect_blocking().unwrap();
    assert_eq!(report.finish_reason, FinishReason::Cancelled);
    assert!(report.completion_tokens < 5000);
    let want = &long.want[..long.want.len().min(report.token_ids.len())];
    assert_eq!(&report.token_ids[..want.len()], want, "the stopped request's tokens until it stopped");
    for (case, handle) in handles {
        let (_, report) = handle.join().unwrap().unwrap();
        assert_matches(case, &report.token_ids);
    }
    wait_for(&engine, "the batch to empty", |e| e.stats().running == 0);
    assert_eq!(engine.stats().kv_sequences_bytes, 0, "reserved KV memory was returned");
}

#[test]
fn seeded_sampling_is_the_same_alone_or_batched() {
    let Some(g) = golden() else { return };
    let cases = cases(g);
    let sampled = |case: &Case| {
        let mut req = GenerateRequest::new(Prompt::Ids(case.prompt.clone()));
        req.sampling = SamplingParams {
            temperature: Some(0.9),
            top_p: Some(0.95),
            top_k: Some(50),
            seed: Some(1234),
            ..Default::default()
        };
        req.max_new_tokens = Some(24);
        req.ignore_eos = true;
        req
    };
    let mut alone = load();
    let want: Vec<Vec<u32>> =
        cases.iter().take(6).map(|c| alone.generate(&sampled(c), &mut |_| true).unwrap().token_ids).collect();
    let engine = Engine::start_with(load(), config(8));
    let handles: Vec<_> =
        cases.iter().take(6).map(|c| collect(engine.submit_blocking(sampled(c)).unwrap())).collect();
    for ((handle, want), case) in handles.into_iter().zip(&want).zip(&cases) {
        let (_, report) = handle.join().unwrap().unwrap();
        assert_eq!(&report.token_ids, want, "{}: seeded sampling changed when batched", case.name);
    }
    assert!(engine.stats().peak_batch >= 2);
}

fn chat(system: &str, user: &str) -> GenerateRequest {
    let mut req = GenerateRequest::new(Prompt::Chat {
        messages: vec![ChatMessage::new("system", system), ChatMessage::new("user", user)],
        template_kwargs: Default::default(),
    });
    req.sampling = SamplingParams { temperature: Some(0.0), ..Default::default() };
    req.max_new_tokens = Some(16);
    req.ignore_eos = true;
    req
}

const SYSTEM: &str = "You are a warm, attentive writing companion. Role: a poet who writes plain, \
    concrete lines. Style: short sentences, no clichés, no apologies, no lists. Constraints: at most six \
    lines; never mention being an AI; answer in the language of the question.";

#[test]
fn a_cached_system_prompt_is_reused_and_changes_nothing() {
    if golden().is_none() {
        return;
    }
    let mut plain = EngineConfig::new(8);
    plain.prefix_cache = false;
    let uncached = Engine::start_with(load(), plain);
    let cached = Engine::start_with(load(), EngineConfig::new(8));
    let users = ["Write about rain.", "写一首关于月亮的诗", "Write about rain, and the sea."];
    for (i, user) in users.iter().enumerate() {
        let (text_a, a) = uncached.submit_blocking(chat(SYSTEM, user)).unwrap().collect_blocking().unwrap();
        let (text_b, b) = cached.submit_blocking(chat(SYSTEM, user)).unwrap().collect_blocking().unwrap();
        assert_eq!(a.cached_tokens, 0);
        assert_eq!(b.token_ids, a.token_ids, "{user}: the prefix cache changed the output");
        assert_eq!(text_b, text_a);
        if i == 0 {
            assert_eq!(b.cached_tokens, 0, "nothing cached yet");
        } else {
            // The system prompt (and, for the third, the shared start of the user turn too).
            assert!(
                b.cached_tokens >= 48,
                "{user}: only {} prompt tokens came from the cache",
                b.cached_tokens
            );
            assert_eq!(b.cached_tokens % 16, 0);
            assert!(b.cached_tokens < b.prompt_tokens);
        }
    }
    let stats = cached.stats();
    assert!(stats.prefix_hit_tokens > 0 && stats.prefix_hit_tokens < stats.prefix_lookup_tokens, "{stats:?}");
    assert!(stats.kv_prefix_bytes > 0);
}

#[test]
fn the_kv_budget_queues_requests_and_refuses_impossible_ones() {
    let Some(g) = golden() else { return };
    let cases = cases(g);
    // 2 layers x K,V x 2 heads x 16 dims x 4 bytes: 512 bytes per token.
    let per_token = 512;
    let case = cases.iter().find(|c| c.prompt.len() > 20 && c.prompt.len() < 100).unwrap();
    let need = (case.prompt.len() + case.want.len() - 1) * per_token;
    let mut c = config(8);
    c.kv_cache_bytes = Some(need * 2 + need / 2); // two at a time
    let engine = Engine::start_with(load(), c);
    let handles: Vec<_> =
        (0..6).map(|_| collect(engine.submit_blocking(greedy(case, case.want.len())).unwrap())).collect();
    for handle in handles {
        let (_, report) = handle.join().unwrap().unwrap();
        assert_matches(case, &report.token_ids);
    }
    assert_eq!(engine.stats().peak_batch, 2, "the budget holds two sequences at once");
    // A request that could never fit is refused with a specific error, and the engine serves on.
    let err = engine.submit_blocking(greedy(case, 100_000)).unwrap().collect_blocking().unwrap_err();
    assert!(matches!(err, ModelError::KvBudget { .. }), "{err}");
    assert!(err.to_string().contains("--kv-cache-mb"), "{err}");
    let (_, report) =
        engine.submit_blocking(greedy(case, case.want.len())).unwrap().collect_blocking().unwrap();
    assert_matches(case, &report.token_ids);
}
