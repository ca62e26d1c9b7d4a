//! `pipehost bench ...`: the flags of the benchmarks; the drivers are in `crate::bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::generate::ModelArgs;
use crate::bench::http::HttpOptions;
use crate::bench::memory::MemoryOptions;
use crate::bench::model::ModelOptions;
use crate::bench::reload::ReloadOptions;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load time, prefill tokens/s and greedy decode tokens/s (medians over --runs).
    Model(BenchModelArgs),
    /// The host's overhead over HTTP: a `pipehost serve` child under 1..N keep-alive clients,
    /// with and without post-processors (also `--stream`, `--model DIR`, `--reload-swaps N`).
    Http(BenchHttpArgs),
    /// Hot reload: time from a replaced .wasm (compile-cache miss, hit) or an edited pipeline
    /// file to the first answer of the new version.
    Reload(BenchReloadArgs),
    /// Memory read bandwidth: a large buffer read end to end on the model's threads
    /// (RAYON_NUM_THREADS) and on one, median GB/s; decode's ceiling.
    Memory(BenchMemoryArgs),
}

#[derive(Debug, Args)]
pub struct BenchMemoryArgs {
    /// Buffer size in MiB (far larger than the caches).
    #[arg(long, default_value_t = 2048)]
    pub size_mib: usize,
    /// Measured runs after one warm-up.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length: the first N tokens of a fixed English paragraph.
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Tokens generated per run (greedy, EOS ignored).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Measured runs after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Print one JSON object (the keys of pytorch_decode.py's output).
    #[arg(long)]
    pub json: bool,
    /// Streams at once through the batching engine, e.g. 1,4,8,16: aggregate and per-stream
    /// decode tokens/s at each level, and the time to first token with a cached system prompt.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
}

#[derive(Debug, Args)]
pub struct BenchHttpArgs {
    /// Concurrency levels (virtual clients, one connection each).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Measured seconds per subject and level (split into --rounds alternating rounds).
    #[arg(long, default_value_t = 6.0)]
    pub duration: f64,
    /// Rounds per level; subjects alternate round by round.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up seconds per subject before the first level.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Stream the answers (SSE) and also report the time to the first delta.
    #[arg(long)]
    pub stream: bool,
    /// `echo`, or a local model folder for the candle backend (e.g. ../shared/reference/tiny-qwen3).
    #[arg(long, value_name = "echo|DIR", default_value = "echo")]
    pub model: String,
    /// `max_tokens` of the benchmark pipelines with a model (echo sends 256 characters).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Only these subjects (healthz, bare, full), e.g. `--subjects full` for a load test.
    #[arg(long, value_delimiter = ',', default_value = "healthz,bare,full")]
    pub subjects: Vec<String>,
    /// The server's `--max-queue`.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Where the shipped plugins are [default: plugins/dist].
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Reload under load: while clients run, rewrite the pipeline file and swap a plugin this
    /// many times (broken versions included); checks every answer comes from one whole version.
    #[arg(long, value_name = "N")]
    pub reload_swaps: Option<usize>,
    /// Milliseconds between two swaps in the reload-under-load test.
    #[arg(long, default_value_t = 200)]
    pub swap_interval_ms: u64,
    /// Pass the server's stderr through (it is discarded otherwise).
    #[arg(long)]
    pub server_log: bool,
}

#[derive(Debug, Args)]
pub struct BenchReloadArgs {
    /// Repetitions of each kind of change.
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Where the shipped plugins are [default: plugins/dist].
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Pass the server's stderr through.
    #[arg(long)]
    pub server_log: bool,
}

impl From<BenchHttpArgs> for HttpOptions {
    fn from(a: BenchHttpArgs) -> Self {
        HttpOptions {
            concurrency: a.concurrency,
            duration: a.duration,
            rounds: a.rounds,
            warmup: a.warmup,
            stream: a.stream,
            model: a.model,
            max_tokens: a.max_tokens,
            subjects: a.subjects,
            max_queue: a.max_queue,
            plugins: a.plugins,
            reload_swaps: a.reload_swaps,
            swap_interval_ms: a.swap_interval_ms,
            server_log: a.server_log,
        }
    }
}

impl From<BenchReloadArgs> for ReloadOptions {
    fn from(a: BenchReloadArgs) -> Self {
        ReloadOptions { reps: a.reps, plugins: a.plugins, server_log: a.server_log }
    }
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Model(args) => {
            let options = ModelOptions {
                prompt_tokens: args.prompt_tokens,
                new_tokens: args.new_tokens,
                runs: args.runs,
                json: args.json,
            };
            if !args.concurrency.is_empty() {
                return crate::bench::model::run_concurrency(
                    || args.model.load(),
                    &options,
                    &args.concurrency,
                );
            }
            crate::bench::model::run(|| args.model.load(), &options)
        }
        BenchCommand::Http(args) => crate::bench::http::run(args.into()),
        BenchCommand::Reload(args) => crate::bench::reload::run(args.into()),
        BenchCommand::Memory(a) => {
            crate::bench::memory::run(&MemoryOptions { size_mib: a.size_mib, runs: a.runs, json: a.json })
        }
    }
}
