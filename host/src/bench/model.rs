//! `pipehost bench model`: the engine measured the way shared/reference/bench/pytorch_decode.py
//! measures transformers, for side-by-side numbers.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::model::{self, GenerateRequest, Model, Prompt, SamplingParams};

/// What `pipehost bench model` runs (its flags, parsed in `cli/bench.rs`).
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Prompt length: the first N tokens of a fixed English paragraph.
    pub prompt_tokens: usize,
    /// Tokens generated per run (greedy, EOS ignored).
    pub new_tokens: usize,
    /// Measured runs after one warm-up.
    pub runs: usize,
    /// Print one JSON object (the keys of pytorch_decode.py's output).
    pub json: bool,
}

/// The same paragraph as pytorch_decode.py, so both engines see the same prompt ids.
const TEXT: &str = "The history of the printing press is, in many ways, the history of modern thought itself. \
Before Johannes Gutenberg introduced movable metal type in Mainz around 1450, books were copied \
by hand, usually by monks working in cold scriptoria. A single Bible could take years. ";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Measures `load` (the model's load time) and then prefill and greedy decode speed.
pub fn run(load: impl FnOnce() -> Result<Model>, args: &ModelOptions) -> Result<ExitCode> {
    if args.new_tokens < 2 || args.runs == 0 || args.prompt_tokens == 0 {
        bail!("need --new-tokens >= 2, --runs >= 1 and --prompt-tokens >= 1");
    }
    let started = Instant::now();
    let mut model = load()?;
    let load_s = started.elapsed().as_secs_f64();
    // Each repetition is over 50 tokens: enough for any --prompt-tokens (4K context runs too).
    let ids = model.encode(&TEXT.repeat(args.prompt_tokens / 50 + 1))?;
    if ids.len() < args.prompt_tokens {
        bail!("the benchmark paragraph has only {} tokens", ids.len());
    }
    let mut request = GenerateRequest::new(Prompt::Ids(ids[..args.prompt_tokens].to_vec()));
    request.sampling =
        SamplingParams { temperature: Some(0.0), repetition_penalty: Some(1.0), ..Default::default() };
    request.max_new_tokens = Some(args.new_tokens);
    request.ignore_eos = true;

    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=args.runs {
        let report = model.generate(&request, &mut |_| true).context("benchmark run")?;
        if report.completion_tokens != args.new_tokens {
            bail!("generated {} tokens instead of {}", report.completion_tokens, args.new_tokens);
        }
        if run == 0 {
            continue; // warm-up
        }
        eprintln!(
            "run {run}: prefill {:.1} ms, decode {:.2} tokens/s",
            report.prefill_ms, report.decode_tokens_per_s
        );
        prefill.push(report.prefill_ms);
        decode.push(report.decode_tokens_per_s);
    }
    let info = model.info();
    let prefill_ms = median(prefill);
    let decode_tps = median(decode);
    if args.json {
        let out = serde_json::json!({
            "engine": format!("pipehost {} / candle 0.11", env!("CARGO_PKG_VERSION")),
            "model": info.name,
            "device": info.device,
            "dtype": info.dtype,
            "threads": model::cpu_threads(),
            "params": info.parameters,
            "load_s": (load_s * 1000.0).round() / 1000.0,
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "runs": args.runs,
            "prefill_ms": (prefill_ms * 100.0).round() / 100.0,
            "prefill_tokens_per_s": (args.prompt_tokens as f64 / prefill_ms * 1e5).round() / 100.0,
            "decode_tokens_per_s": (decode_tps * 1000.0).round() / 1000.0,
            "decode_ms_per_token": (1000.0 / decode_tps * 100.0).round() / 100.0,
        });
        println!("{out}");
    } else {
        println!(
            "model       {} ({} parameters, {} on {})",
            info.name, info.parameters, info.dtype, info.device
        );
        println!("threads     {}", model::cpu_threads());
        println!("load        {load_s:.2} s");
        println!(
            "prefill     {:.1} tokens/s ({} tokens in {prefill_ms:.1} ms, median of {})",
            args.prompt_tokens as f64 / prefill_ms * 1000.0,
            args.prompt_tokens,
            args.runs
        );
        println!(
            "decode      {decode_tps:.2} tokens/s ({:.1} ms/token, {} tokens, median of {})",
            1000.0 / decode_tps,
            args.new_tokens,
            args.runs
        );
    }
    Ok(ExitCode::SUCCESS)
}
