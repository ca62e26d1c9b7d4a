//! Quantized weights (q8_0, q4_k): fidelity against f32 on the tiny reference Qwen3 and on a
//! random model whose rows are whole q4_k super-blocks; GGUF files written by
//! `pipehost quantize` give the same logits as quantizing at load; batching changes nothing.
//!
//! The error bounds asserted here are the ones docs/model.md states.
mod support;

use std::path::Path;

use pipehost::model::{
    self, DTypeChoice, DeviceChoice, Model, ModelSpec, QuantChoice, Qwen3Shape, RandomWeights,
};
use serde_json::Value;

use support::reference_dir;

fn load(path: &Path, quantize: QuantChoice) -> Model {
    let mut spec = ModelSpec::new(path.to_str().unwrap());
    spec.device = DeviceChoice::Cpu;
    spec.dtype = if quantize == QuantChoice::None { DTypeChoice::F32 } else { DTypeChoice::Auto };
    spec.quantize = quantize;
    model::load(&spec).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// (max |a - b|, max |b|) over the whole vocabulary.
fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    (d, b.iter().map(|v| v.abs()).fold(0f32, f32::max))
}

/// The golden prompts' ids.
fn golden_prompts(dir: &Path) -> Vec<(String, Vec<u32>, usize)> {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-qwen3.golden.json")).unwrap()).unwrap();
    golden["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let argmax = p["last_logits_argmax"].as_u64().unwrap() as usize;
            (p["name"].as_str().unwrap().to_owned(), ids(&p["input_ids"]), argmax)
        })
        .collect()
}

/// Bounds on the tiny reference model (hidden 64, so q4_k falls back to q8_0 in every matrix):
/// last-position logits within this much of f32 (whose logits span about ±5)...
/// (measured: 0.17-0.40)
const TINY_MAX_ABS: f32 = 0.5;
/// ...and the f32 top-1 token kept on at least this many of the 9 golden prompts.
/// (measured: 9/9)
const TINY_TOP1_MIN: usize = 8;

#[test]
fn quantized_logits_on_the_reference_model_stay_within_the_stated_error() {
    let Some(dir) = reference_dir() else { return };
    let tiny = dir.join("tiny-qwen3");
    let prompts = golden_prompts(&dir);
    let mut f32_model = load(&tiny, QuantChoice::None);
    let exact: Vec<Vec<f32>> =
        prompts.iter().map(|(_, ids, _)| f32_model.last_logits(ids).unwrap()).collect();
    let mut m = load(&tiny, QuantChoice::Q8_0);
    let mut worst = 0f32;
    let mut agree = 0;
    for ((name, ids, golden_argmax), exact) in prompts.iter().zip(&exact) {
        let got = m.last_logits(ids).unwrap();
        let (d, scale) = max_abs_diff(&got, exact);
        worst = worst.max(d);
        agree += usize::from(argmax(&got) == *golden_argmax);
        eprintln!("q8_0 {name}: max |logit - f32| {d:.4} (|f32| up to {scale:.2})");
    }
    eprintln!("q8_0: worst {worst:.4}, top-1 agreement {agree}/{}", prompts.len());
    assert!(worst <= TINY_MAX_ABS, "q8_0: max abs logit error {worst} > {TINY_MAX_ABS}");
    assert!(agree >= TINY_TOP1_MIN, "q8_0: top-1 agreement {agree}/{}", prompts.len());
    // No row of this model is a whole q4_k super-block: q4_k falls back to q8_0 everywhere.
    let mut q4 = load(&tiny, QuantChoice::Q4K);
    assert_eq!(q4.last_logits(&prompts[0].1).unwrap(), m.last_logits(&prompts[0].1).unwrap());
}

#[test]
fn a_gguf_from_pipehost_quantize_gives_the_logits_of_quantizing_at_load() {
    let Some(dir) = reference_dir() else { return };
    let tiny = dir.join("tiny-qwen3");
    let prompts = golden_prompts(&dir);
    let out = tempfile::tempdir().unwrap();
    for q in [QuantChoice::Q8_0, QuantChoice::Q4K] {
        let file = out.path().join(format!("tiny-{q:?}.gguf"));
        model::write_gguf(&ModelSpec::new(tiny.to_str().unwrap()), q, &file).unwrap();
        // No tokenizer.json beside the file: tokenizer and chat template come from the metadata.
        let mut from_file = load(&file, QuantChoice::Auto);
        let mut at_load = load(&tiny, q);
        for (name, ids, _) in &prompts[..2] {
            assert_eq!(
                from_file.last_logits(ids).unwrap(),
                at_load.last_logits(ids).unwrap(),
                "{q:?} {name}"
            );
        }
        if q == QuantChoice::Q4K {
            continue; // the same metadata as the q8_0 file
        }
        // The rebuilt tokenizer and template give the reference ids for every golden prompt.
        let golden: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tiny-qwen3.golden.json")).unwrap())
                .unwrap();
        for p in golden["prompts"].as_array().unwrap() {
            let prompt = if p["kind"] == "chat" {
                let messages = serde_json::from_value(p["messages"].clone()).unwrap();
                let template_kwargs = p["template_kwargs"].as_object().cloned().unwrap_or_default();
                model::Prompt::Chat { messages, template_kwargs }
            } else {
                model::Prompt::Raw(p["text"].as_str().unwrap().to_owned())
            };
            assert_eq!(from_file.prompt_ids(&prompt).unwrap(), ids(&p["input_ids"]), "{}", p["name"]);
        }
    }
}

#[test]
fn quantized_batched_steps_equal_single_ones_bit_for_bit() {
    let Some(dir) = reference_dir() else { return };
    let prompts = golden_prompts(&dir);
    let mut m = load(&dir.join("tiny-qwen3"), QuantChoice::Q8_0);
    let all: Vec<Vec<u32>> = prompts.iter().map(|(_, ids, _)| ids.clone()).collect();
    let batched = m.last_logits_batched(&all).unwrap();
    for ((name, ids, _), b) in prompts.iter().zip(&batched) {
        assert_eq!(&m.last_logits(ids).unwrap(), b, "{name}");
    }
}

/// Bounds on a random model whose rows are whole q4_k super-blocks (hidden 256, weights of
/// std 0.1, which amplify errors: 0.5 % per q8_0 matmul becomes ~4 % at the logits), relative
/// to the largest f32 logit: q8_0 within 6 %, q4_k within 45 % (measured: 3.2-4.7 % and
/// 26-36 %).
const RANDOM_REL_Q8: f32 = 0.06;
const RANDOM_REL_Q4K: f32 = 0.45;

#[test]
fn q4_k_on_rows_of_256_stays_close_to_f32_and_its_gguf_matches() {
    let Some(dir) = reference_dir() else { return };
    let shape = Qwen3Shape {
        vocab_size: 4096,
        hidden_size: 256,
        intermediate_size: 768,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        tie_word_embeddings: true,
        max_position_embeddings: 512,
        rope_theta: 1_000_000.0,
    };
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("random");
    let weights = RandomWeights { std: 0.1, norm_std: 0.1, seed: 7, ..RandomWeights::default() };
    model::write_random_model(&shape, &weights, &dir.join("tiny-qwen3"), &folder).unwrap();
    let prompts: Vec<Vec<u32>> =
        (0..4u32).map(|p| (0..20).map(|i| (p * 977 + i * 131) % 4096).collect()).collect();
    let mut f32_model = load(&folder, QuantChoice::None);
    let exact: Vec<Vec<f32>> = prompts.iter().map(|ids| f32_model.last_logits(ids).unwrap()).collect();
    for (q, bound) in [(QuantChoice::Q8_0, RANDOM_REL_Q8), (QuantChoice::Q4K, RANDOM_REL_Q4K)] {
        let mut m = load(&folder, q);
        let mut agree = 0;
        for (ids, exact) in prompts.iter().zip(&exact) {
            let got = m.last_logits(ids).unwrap();
            let (d, scale) = max_abs_diff(&got, exact);
            let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
            let diff: Vec<f32> = got.iter().zip(exact).map(|(a, b)| a - b).collect();
            eprintln!(
                "{q:?}: max |logit - f32| {d:.4} of {scale:.3} ({:.2} %), RMS {:.2} %",
                100.0 * d / scale,
                100.0 * rms(&diff) / rms(exact)
            );
            assert!(d <= bound * scale, "{q:?}: {d} > {bound} x {scale}");
            agree += usize::from(argmax(&got) == argmax(exact));
        }
        eprintln!("{q:?}: top-1 agreement {agree}/{}", prompts.len());
        // Exercises q4_k through a GGUF file too (the tiny model has no rows of 256).
        let file = out.path().join(format!("random-{q:?}.gguf"));
        model::write_gguf(&ModelSpec::new(folder.to_str().unwrap()), q, &file).unwrap();
        let mut from_file = load(&file, QuantChoice::Auto);
        assert_eq!(from_file.info().quantization, if q == QuantChoice::Q4K { "q4_k" } else { "q8_0" });
        assert_eq!(from_file.last_logits(&prompts[0]).unwrap(), m.last_logits(&prompts[0]).unwrap(), "{q:?}");
    }
}
