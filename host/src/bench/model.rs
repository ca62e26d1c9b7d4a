//! `pipehost bench model`: the engine measured the way shared/reference/bench/pytorch_decode.py
//! measures transformers, for side-by-side numbers.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::model::{
    self, ChatMessage, Engine, EngineConfig, Event, GenerateRequest, Model, Prompt, SamplingParams,
};

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

/// Peak resident memory of this process so far (VmHWM), in MB; 0 where /proc is missing.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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
            "quantization": info.quantization,
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
            "peak_rss_mb": peak_rss_mb().round(),
        });
        println!("{out}");
    } else {
        println!(
            "model       {} ({} parameters, {} on {}, weights {})",
            info.name, info.parameters, info.dtype, info.device, info.quantization
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
        println!("peak RSS    {:.0} MB", peak_rss_mb());
    }
    Ok(ExitCode::SUCCESS)
}

/// A stream's timeline: when each piece of text arrived (one per token here: the benchmark
/// prompt's continuations are whole tokens of text), its end, and its time to first token.
struct Timeline {
    deltas: Vec<Instant>,
    done: Instant,
    ttft_ms: f64,
}

/// Tokens per second decoded while all streams decode together: the window from the last
/// stream's first token to the first stream's end, and the tokens that arrived in it.
fn steady_rate(lines: &[Timeline]) -> f64 {
    let start = lines.iter().filter_map(|l| l.deltas.first()).max().copied();
    let end = lines.iter().map(|l| l.done).min();
    let (Some(start), Some(end)) = (start, end) else { return 0.0 };
    let window = (end - start).as_secs_f64();
    if window <= 0.0 {
        return 0.0;
    }
    let tokens: usize =
        lines.iter().map(|l| l.deltas.iter().filter(|&&t| t > start && t <= end).count()).sum();
    tokens as f64 / window
}

/// Runs `requests` at once through `engine` and times each from submission.
fn run_together(engine: &Engine, requests: Vec<GenerateRequest>) -> Result<Vec<Timeline>> {
    let submitted = Instant::now();
    let streams: Vec<_> =
        requests.into_iter().map(|r| engine.submit_blocking(r)).collect::<Result<_, _>>()?;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || -> Result<Timeline> {
                let mut deltas = Vec::new();
                loop {
                    match stream.recv_blocking() {
                        Some(Event::Delta(_)) => deltas.push(Instant::now()),
                        Some(Event::Done(_)) => {
                            let done = Instant::now();
                            let first = deltas.first().copied().unwrap_or(done);
                            return Ok(Timeline {
                                deltas,
                                done,
                                ttft_ms: (first - submitted).as_secs_f64() * 1000.0,
                            });
                        }
                        Some(Event::Error(e)) => return Err(e.into()),
                        None => bail!("the engine stopped"),
                    }
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a stream thread panicked"))?).collect()
}

/// A system prompt the size of a pipeline persona's (Role, Style, Constraints).
const PERSONA: &str = "You are a warm, attentive writing companion who answers like a person, not a \
manual. Role: a poet and essayist with a plain, concrete voice. Style: short sentences; images from daily \
life; vary sentence openings; no stock phrases, no apologies, no lists, no headings. Constraints: at most six \
lines for poems; never mention being an AI or a language model; answer in the language of the question; keep \
names and facts the user gives exactly as given; end without a question unless one is asked.";

/// `pipehost bench model --concurrency 1,4,8,16`: decode speed of N greedy streams decoded
/// together, each with its own prompt (offsets into the paragraph, so no prefix is shared), and
/// the time to first token of a chat request whose system prompt is cached vs not. The decode
/// rate is the steady state: tokens that arrived while all N streams were decoding, per second
/// of that window (prefill steps of later arrivals fall outside it).
pub fn run_concurrency(
    load: impl FnOnce() -> Result<Model>,
    args: &ModelOptions,
    levels: &[usize],
) -> Result<ExitCode> {
    if args.new_tokens < 2 || args.runs == 0 || args.prompt_tokens == 0 || levels.contains(&0) {
        bail!("need --new-tokens >= 2, --runs >= 1, --prompt-tokens >= 1 and levels >= 1");
    }
    let model = load()?;
    let top = levels.iter().copied().max().unwrap_or(1);
    let ids = model.encode(&TEXT.repeat((args.prompt_tokens + top) / 50 + 2))?;
    let info = model.info().clone();
    let mut config = EngineConfig::new(top * 2);
    config.max_batch = top;
    config.prefix_cache = false; // every level measures computed prompts
    let engine = Engine::start_with(model, config);
    let request = |i: usize| {
        let mut r = GenerateRequest::new(Prompt::Ids(ids[i..i + args.prompt_tokens].to_vec()));
        r.sampling =
            SamplingParams { temperature: Some(0.0), repetition_penalty: Some(1.0), ..Default::default() };
        r.max_new_tokens = Some(args.new_tokens);
        r.ignore_eos = true;
        r
    };
    run_together(&engine, vec![request(0)])?; // warm-up
    let mut rows = Vec::new();
    for &n in levels {
        let mut aggregate = Vec::new();
        let mut per_stream = Vec::new();
        let mut ttft = Vec::new();
        for run in 1..=args.runs {
            let lines = run_together(&engine, (0..n).map(request).collect())?;
            let total = steady_rate(&lines);
            eprintln!(
                "concurrency {n}, run {run}: aggregate {total:.2} tokens/s, per stream {:.2}",
                total / n as f64
            );
            aggregate.push(total);
            per_stream.push(total / n as f64);
            ttft.push(median(lines.iter().map(|l| l.ttft_ms).collect()));
        }
        rows.push((n, median(aggregate), median(per_stream), median(ttft)));
    }
    drop(engine);

    // Time to first token with the persona's system prompt cached vs computed.
    let mut config = EngineConfig::new(4);
    config.max_batch = 1;
    let engine = Engine::start_with(load_again(&info)?, config);
    let chat = |user: &str| {
        let mut r = GenerateRequest::new(Prompt::Chat {
            messages: vec![ChatMessage::new("system", PERSONA), ChatMessage::new("user", user)],
            template_kwargs: Default::default(),
        });
        r.sampling = SamplingParams { temperature: Some(0.0), ..Default::default() };
        r.max_new_tokens = Some(2);
        r.ignore_eos = true;
        r
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut cached_tokens = 0;
    let mut prompt_tokens = 0;
    for run in 0..args.runs {
        // A fresh system prompt each run (a different first word), then a second user on it.
        let persona_run = format!("Run {run}. ");
        let with = |user: &str| {
            let mut r = chat(user);
            if let Prompt::Chat { messages, .. } = &mut r.prompt {
                messages[0].content.insert_str(0, &persona_run);
            }
            r
        };
        let first = engine.submit_blocking(with("Write about rain on a tin roof."))?.collect_blocking()?;
        let second = engine.submit_blocking(with("写一首关于秋天的短诗。"))?.collect_blocking()?;
        cold.push(first.1.prefill_ms);
        warm.push(second.1.prefill_ms);
        cached_tokens = second.1.cached_tokens;
        prompt_tokens = second.1.prompt_tokens;
    }
    let (cold, warm) = (median(cold), median(warm));

    let one = rows.iter().find(|r| r.0 == 1).map(|r| r.1);
    if args.json {
        let levels: Vec<_> = rows
            .iter()
            .map(|&(n, agg, per, ttft)| {
                serde_json::json!({
                    "concurrency": n,
                    "aggregate_tokens_per_s": (agg * 1000.0).round() / 1000.0,
                    "per_stream_tokens_per_s": (per * 1000.0).round() / 1000.0,
                    "ttft_ms": (ttft * 10.0).round() / 10.0,
                    "vs_one_stream": one.map(|o| (agg / o * 100.0).round() / 100.0),
                })
            })
            .collect();
        let out = serde_json::json!({
            "engine": format!("pipehost {} / candle 0.11", env!("CARGO_PKG_VERSION")),
            "model": info.name,
            "device": info.device,
            "dtype": info.dtype,
            "quantization": info.quantization,
            "threads": model::cpu_threads(),
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "runs": args.runs,
            "levels": levels,
            "prefix_cache": {
                "prompt_tokens": prompt_tokens,
                "cached_tokens": cached_tokens,
                "ttft_cold_ms": (cold * 10.0).round() / 10.0,
                "ttft_cached_ms": (warm * 10.0).round() / 10.0,
            },
        });
        println!("{out}");
    } else {
        println!(
            "model       {} ({} on {}), {} threads",
            info.name,
            info.dtype,
            info.device,
            model::cpu_threads()
        );
        println!("streams  aggregate tok/s  per stream  vs 1 stream  TTFT (median of {})", args.runs);
        for (n, agg, per, ttft) in &rows {
            let ratio = one.map(|o| format!("{:.2}x", agg / o)).unwrap_or_default();
            println!("{n:>7}  {agg:>15.2}  {per:>10.2}  {ratio:>11}  {ttft:>8.1} ms");
        }
        println!(
            "prefix cache: {cached_tokens} of {prompt_tokens} prompt tokens cached; time to first token {cold:.1} ms \
             computed vs {warm:.1} ms cached"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The same model again (the first engine owns the first copy).
fn load_again(info: &model::ModelInfo) -> Result<Model> {
    let mut spec = model::ModelSpec::new(info.path.to_string_lossy());
    spec.device = info.device.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    spec.dtype = info.dtype.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    spec.quantize = info.quantization.parse().unwrap_or(model::QuantChoice::Auto);
    spec.progress = false;
    Ok(model::load(&spec)?)
}
