//! The `pipehost` command line. Each subcommand lives in its own file; this one only parses
//! arguments and turns errors into one-line messages and exit codes.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod check;
mod dev;
mod experiments;
mod generate;
mod plugin;
mod quantize;
mod replay;
mod run;
mod schema;
mod serve;

/// Serve a local LLM with programmable, sandboxed output pipelines.
#[derive(Debug, Parser)]
#[command(name = "pipehost", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log lines on stderr: `text` (coloured only on a terminal) or `json` (one object per
    /// line, for log collectors; the startup lines become log events too). Levels come from
    /// PIPEHOST_LOG (default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PIPEHOST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Set once at startup with `--log-format json`.
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether stderr is for a log collector (`--log-format json`): see [`say!`].
pub(crate) fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// A line for the person who started the command (startup, shutdown) on stderr; with
/// `--log-format json` an `info` log event instead, so stderr stays one JSON object per line.
macro_rules! say {
    ($($arg:tt)*) => {
        if $crate::cli::json_logs() {
            tracing::info!($($arg)*);
        } else {
            eprintln!($($arg)*);
        }
    };
}
pub(crate) use say;

#[derive(Debug, Subcommand)]
enum Command {
    /// Run, scaffold and inspect WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Generate text with the model (streams to stdout).
    Generate(generate::GenerateArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write a safetensors Qwen3 model as a quantized GGUF file (q8_0 or q4_k).
    Quantize(quantize::QuantizeArgs),
    /// Serve the pipelines over HTTP (OpenAI-compatible).
    Serve(Box<serve::ServeArgs>),
    /// Run one pipeline locally, without a server.
    Run(Box<run::RunArgs>),
    /// Validate pipeline files and the plugins they use; prints every error.
    Check(check::CheckArgs),
    /// Print the JSON Schema of pipeline files.
    Schema,
    /// Run logged raw model texts through a changed pipeline's post-processors (no model).
    Replay(Box<replay::ReplayArgs>),
    /// A/B experiments: results from the request log.
    #[command(subcommand)]
    Experiments(experiments::ExperimentsCommand),
    /// Developer tools: random-weight and tiny test models.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Quantize(args) => quantize::run(args),
        Command::Dev(cmd) => dev::run(cmd),
        Command::Run(args) => run::run(*args),
        Command::Check(args) => check::run(args),
        Command::Schema => schema::run(),
        Command::Serve(args) => serve::run(*args),
        Command::Experiments(cmd) => experiments::run(cmd),
        Command::Replay(args) => replay::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the chain of causes, outermost first.
            if json_logs() {
                tracing::error!("{err:#}");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PIPEHOST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        // Colour codes only help a person at a terminal; in a file or a pipe they are noise.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => {
            JSON_LOGS.store(true, Ordering::Relaxed);
            logs.json().flatten_event(true).with_current_span(false).try_init()
        }
    };
}
