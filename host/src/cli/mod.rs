//! The `pipehost` command line. Each subcommand lives in its own file; this one only parses
//! arguments and turns errors into one-line messages and exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bench_http;
mod bench_reload;
mod check;
mod dev;
mod experiments;
mod generate;
mod plugin;
mod replay;
mod run;
mod schema;
mod serve;

/// Serve a local LLM with programmable, sandboxed output pipelines.
#[derive(Debug, Parser)]
#[command(name = "pipehost", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Bench(cmd) => bench::run(cmd),
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
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PIPEHOST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
