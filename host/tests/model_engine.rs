//! Engine behaviour on the self-made tiny fixture (no shared data needed): determinism, KV-cache
//! reset, cancellation, stop strings across token boundaries, incremental detokenization.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, OnceLock};

use pipehost::model::{
    self, ChatMessage, DTypeChoice, DeviceChoice, Engine, Event, FinishReason, GenerateRequest, Model,
    ModelSpec, Prompt, SamplingParams, TextStream,
};

fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        model::fixture::write_tiny_model(dir.path()).unwrap();
        dir
    })
    .path()
}

fn load() -> Model {
    let mut spec = ModelSpec::new(fixture_dir().to_str().unwrap());
    spec.device = DeviceChoice::Cpu;
    spec.dtype = DTypeChoice::F32;
    model::load(&spec).unwrap()
}

/// One shared model for the tests that run on the calling thread.
fn shared() -> MutexGuard<'static, Model> {
    static MODEL: OnceLock<Mutex<Model>> = OnceLock::new();
    MODEL.get_or_init(|| Mutex::new(load())).lock().unwrap_or_else(|e| e.into_inner())
}

fn request(prompt: &str, max: usize, sampling: SamplingParams) -> GenerateRequest {
    let mut r = GenerateRequest::new(Prompt::Raw(prompt.into()));
    r.sampling = sampling;
    r.max_new_tokens = Some(max);
    r.ignore_eos = true;
    r
}

fn greedy() -> SamplingParams {
    SamplingParams { temperature: Some(0.0), ..Default::default() }
}

fn run(model: &mut Model, req: &GenerateRequest) -> (String, model::Report) {
    let mut text = String::new();
    let report = model
        .generate(req, &mut |d| {
            text.push_str(d);
            true
        })
        .unwrap();
    (text, report)
}

#[test]
fn loads_and_reports_what_it_loaded() {
    let m = shared();
    let info = m.info();
    assert_eq!(info.device, "cpu");
    assert_eq!(info.dtype, "f32");
    assert_eq!(info.parameters, model::fixture::shape().parameters());
    // Defaults come from generation_config.json.
    assert_eq!(m.defaults().top_k, 20);
    assert_eq!(m.defaults().eos_token_ids, vec![2]);
}

#[test]
fn chat_prompts_use_the_template_and_special_tokens() {
    let m = shared();
    let prompt = Prompt::Chat {
        messages: vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hello!")],
        template_kwargs: Default::default(),
    };
    let ids = m.prompt_ids(&prompt).unwrap();
    let im_start = m.token_to_id("<|im_start|>").unwrap();
    assert_eq!(ids[0], im_start);
    assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), 3);
    assert_eq!(ids, m.encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n").unwrap());
}

#[test]
fn same_seed_same_output_and_streamed_text_matches_the_ids() {
    let mut m = shared();
    let sampling =
        SamplingParams { temperature: Some(1.0), top_k: Some(0), seed: Some(42), ..Default::default() };
    let req = request("The quick brown fox", 24, sampling.clone());
    let (text_a, a) = run(&mut m, &req);
    let (text_b, b) = run(&mut m, &req);
    assert_eq!(a.token_ids, b.token_ids);
    assert_eq!(text_a, text_b);
    assert_eq!(text_a, m.decode(&a.token_ids).unwrap());
    assert_eq!(a.seed, 42);
    // Other seeds give other samples (the fixture's distributions are far from one-hot).
    let differs = (1..6).any(|s| {
        let mut other =
            request("The quick brown fox", 24, SamplingParams { seed: Some(s), ..sampling.clone() });
        other.max_new_tokens = Some(24);
        run(&mut m, &other).1.token_ids != a.token_ids
    });
    assert!(differs);
}

#[test]
fn top_k_and_top_p_sampling_is_seeded_too() {
    let mut m = shared();
    let sampling = SamplingParams {
        temperature: Some(0.7),
        top_k: Some(5),
        top_p: Some(0.9),
        min_p: Some(0.01),
        seed: Some(7),
        ..Default::default()
    };
    let req = request("Autumn nights", 16, sampling);
    assert_eq!(run(&mut m, &req).1.token_ids, run(&mut m, &req).1.token_ids);
}

#[test]
fn greedy_with_repetition_penalty_avoids_repeats() {
    let mut m = shared();
    let plain = run(&mut m, &request("What is 17 * 23?", 30, greedy())).1;
    let penalised = SamplingParams { repetition_penalty: Some(100.0), ..greedy() };
    let report = run(&mut m, &request("What is 17 * 23?", 30, penalised)).1;
    // A huge penalty makes every seen id lose to any unseen positive logit.
    let distinct: std::collections::HashSet<_> = report.token_ids.iter().collect();
    assert!(distinct.len() >= plain.token_ids.iter().collect::<std::collections::HashSet<_>>().len());
    assert_ne!(plain.token_ids, report.token_ids);
}

#[test]
fn finish_reasons_length_and_eos() {
    let mut m = shared();
    let (_, r) = run(&mut m, &request("Hello", 5, greedy()));
    assert_eq!((r.finish_reason, r.completion_tokens), (FinishReason::Length, 5));
    assert_eq!(r.prompt_tokens, r.prompt_ids.len());
    assert!(r.prefill_ms > 0.0 && r.decode_tokens_per_s > 0.0);

    // Make whatever greedy picks first an EOS token: generation ends there, without text.
    let first = r.token_ids[0];
    let mut sampling = greedy();
    sampling.repetition_penalty = Some(1.0);
    let mut req = request("Hello", 5, sampling);
    req.ignore_eos = false;
    let (_, r2) = run(&mut m, &req);
    if m.defaults().eos_token_ids.contains(&first) {
        assert_eq!(r2.finish_reason, FinishReason::Eos);
    } else {
        assert_eq!(r2.token_ids, r.token_ids);
    }
}

#[test]
fn stop_strings_match_across_token_boundaries() {
    let mut m = shared();
    // Seeded sampling: varied text (greedy on random weights repeats one token), reproducible.
    let sampling =
        SamplingParams { temperature: Some(1.0), top_k: Some(0), seed: Some(3), ..Default::default() };
    let (full, report) = run(&mut m, &request("We said goodbye", 40, sampling.clone()));
    // Find a token boundary with a character on each side; the stop string spans it.
    let ids = &report.token_ids;
    let stop = (1..ids.len())
        .find_map(|i| {
            let before = m.decode(&ids[..i]).unwrap();
            let last_piece = m.decode(&ids[i - 1..i]).unwrap();
            let ok = !before.is_empty()
                && !before.ends_with('\u{FFFD}')
                && !last_piece.is_empty()
                && before.ends_with(&last_piece)
                && full.starts_with(&before)
                && full.len() > before.len();
            let a = before.chars().last()?;
            let b = full[before.len()..].chars().next()?;
            (ok && b != '\u{FFFD}' && !a.is_control() && !b.is_control()).then(|| format!("{a}{b}"))
        })
        .expect("a token boundary between two whole characters");
    let mut req = request("We said goodbye", 40, sampling);
    req.stop = vec![stop.clone()];
    let mut deltas = Vec::new();
    let r = m
        .generate(&req, &mut |d| {
            deltas.push(d.to_string());
            true
        })
        .unwrap();
    let text = deltas.concat();
    assert_eq!(r.finish_reason, FinishReason::Stop, "stop {stop:?} in {full:?}");
    assert_eq!(text, full[..full.find(&stop).unwrap()]);
    // Held back, never emitted and retracted: no prefix of the stop string ends the output
    // unless the text before the match really ends that way.
    assert!(!text.contains(&stop));
}

#[test]
fn incremental_detokenization_never_splits_characters_or_holds_punctuation() {
    let m = shared();
    // The fixture tokenizer saw little Chinese: these characters are several byte tokens each.
    let text = "秋夜, 离别! 短诗。ok";
    let ids = m.encode(text).unwrap();
    assert!(ids.len() > text.chars().count(), "characters should be split across tokens");
    let mut stream = TextStream::new(&m);
    let mut out = String::new();
    for (i, &id) in ids.iter().enumerate() {
        let delta = stream.push(id).unwrap();
        assert!(!delta.contains('\u{FFFD}'), "broken UTF-8 emitted: {delta:?}");
        out.push_str(&delta);
        // Everything decodable so far is out: only an unfinished character may be held.
        let so_far = m.decode(&ids[..=i]).unwrap();
        let complete = so_far.trim_end_matches('\u{FFFD}');
        assert_eq!(out, complete);
    }
    out.push_str(&stream.finish().unwrap());
    assert_eq!(out, text);
}

#[test]
fn engine_resets_the_cache_and_survives_cancellation() {
    let engine = Engine::start(load(), 4);
    let req = request("The quick brown fox", 12, greedy());
    let (a, ra) = engine.submit_blocking(req.clone()).unwrap().collect_blocking().unwrap();
    let (b, rb) = engine.submit_blocking(req.clone()).unwrap().collect_blocking().unwrap();
    // Same request twice, same output: nothing of the first request's KV cache leaked.
    assert_eq!((a, &ra.token_ids), (b, &rb.token_ids));

    // Drop the stream after the first delta: the worker cancels and is free again.
    let mut long = request("The quick brown fox", 400, greedy());
    long.max_new_tokens = Some(400);
    let mut stream = engine.submit_blocking(long).unwrap();
    match stream.recv_blocking() {
        Some(Event::Delta(_)) => {}
        other => panic!("expected a delta, got {other:?}"),
    }
    drop(stream);
    let started = std::time::Instant::now();
    let (_, rc) = engine.submit_blocking(req).unwrap().collect_blocking().unwrap();
    assert_eq!(rc.token_ids, ra.token_ids);
    // 400 tokens would take far longer than the cancelled remainder of one step.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn cancelling_reports_cancelled_within_one_token() {
    let mut m = shared();
    let mut calls = 0;
    let report = m
        .generate(&request("Hello", 50, greedy()), &mut |_| {
            calls += 1;
            calls < 3
        })
        .unwrap();
    assert_eq!(report.finish_reason, FinishReason::Cancelled);
    assert_eq!(report.completion_tokens, 3);
}

#[test]
fn bad_requests_are_errors() {
    let mut m = shared();
    let empty = request("", 5, greedy());
    assert!(matches!(m.generate(&empty, &mut |_| true), Err(model::ModelError::InvalidRequest(_))));
    let bad = request("Hi", 5, SamplingParams { top_p: Some(0.0), ..Default::default() });
    assert!(matches!(m.generate(&bad, &mut |_| true), Err(model::ModelError::InvalidRequest(_))));
}
