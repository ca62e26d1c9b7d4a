//! `pipehost run PIPELINE`: runs one pipeline locally, no server. Prints the post-processed
//! text (streamed with `--stream`), or the whole run record with `--json`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::generate::ModelArgs;
use crate::backend::{Backend, CandleBackend, EchoBackend, EchoConfig, OpenAiBackend, OpenAiConfig};
use crate::pipeline::{Executor, Registry, RunEvent, RunRequest, default_pipelines_dir};
use crate::plugin::{PluginRuntime, RuntimeConfig, default_plugins_dir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Candle,
    Openai,
    Echo,
}

/// Run one pipeline.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline's name.
    pub pipeline: String,
    /// A request variable, `NAME=VALUE` (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// The value of the pipeline's input variable (`input_variable`, default `input`).
    #[arg(long, value_name = "TEXT")]
    pub input: Option<String>,
    /// Stream the post-processed text as it is generated.
    #[arg(long)]
    pub stream: bool,
    /// The backend (default: the pipeline's `backend:`, else candle).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// For `--backend openai`: the server's base URL (e.g. http://localhost:8000/v1).
    #[arg(long, value_name = "URL", default_value = "http://localhost:8000/v1")]
    pub openai_url: String,
    /// For `--backend openai`: the model name sent upstream.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub openai_model: String,
    /// For `--backend openai`: the environment variable holding the API key.
    #[arg(long, value_name = "VAR")]
    pub openai_key_env: Option<String>,
    /// The pipelines folder (default: $PIPEHOST_PIPELINES_DIR, else ./pipelines).
    #[arg(long, value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
    /// The plugins folder (default: $PIPEHOST_PLUGINS_DIR, else plugins/dist).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Print the run record (text, raw text, timings, versions) as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_var(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("--var {s:?}: expected NAME=VALUE"),
    }
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let pipelines = args.pipelines.clone().unwrap_or_else(default_pipelines_dir);
    let plugins = args.plugins.clone().unwrap_or_else(default_plugins_dir);
    let runtime = PluginRuntime::new(&RuntimeConfig::default())?;
    let registry = Registry::load(&pipelines, &plugins, runtime);
    let Some(pipeline) = registry.get(&args.pipeline) else {
        for e in registry.errors() {
            eprintln!("{e}");
        }
        bail!("no valid pipeline `{}` in {}", args.pipeline, pipelines.display());
    };
    let mut vars = BTreeMap::new();
    for v in &args.vars {
        let (k, v) = parse_var(v)?;
        vars.insert(k, v);
    }
    if let Some(input) = &args.input {
        vars.insert(pipeline.input_variable.clone(), input.clone());
    }
    let kind = match (args.backend, pipeline.backend.as_deref()) {
        (Some(k), _) => k,
        (None, Some("echo")) => BackendKind::Echo,
        (None, Some("openai")) => BackendKind::Openai,
        _ => BackendKind::Candle,
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let backend: Arc<dyn Backend> = match kind {
        BackendKind::Echo => Arc::new(EchoBackend::new(EchoConfig::default())),
        BackendKind::Candle => {
            let model = args.model.load()?;
            Arc::new(CandleBackend::new(Arc::new(crate::model::Engine::start(model, 4))))
        }
        BackendKind::Openai => Arc::new(
            OpenAiBackend::new(OpenAiConfig {
                base_url: args.openai_url.clone(),
                model: args.openai_model.clone(),
                api_key_env: args.openai_key_env.clone(),
                timeout_s: 60,
            })
            .context("openai backend")?,
        ),
    };
    // The chosen backend serves the pipeline whatever its `backend:` says.
    let mut others = HashMap::new();
    if let Some(name) = &pipeline.backend {
        others.insert(name.clone(), backend.clone());
    }
    let executor = Executor::new(backend, others);
    let request = RunRequest { request_id: "cli".into(), vars, include_raw: true, ..Default::default() };
    tokio.block_on(async move {
        let record = if args.stream {
            let mut events = executor.run_stream(pipeline, request).await?;
            let mut stdout = std::io::stdout();
            loop {
                match events.recv().await {
                    Some(RunEvent::Delta(t)) => {
                        if !args.json {
                            stdout.write_all(t.as_bytes())?;
                            stdout.flush()?;
                        }
                    }
                    Some(RunEvent::Done(r)) => break r,
                    Some(RunEvent::Error(e)) => return Err(e.into()),
                    None => bail!("the pipeline stopped without finishing"),
                }
            }
        } else {
            executor.run(pipeline, request).await?
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&record)?);
        } else {
            if !args.stream {
                print!("{}", record.text);
            }
            if !record.text.ends_with('\n') {
                println!();
            }
            eprintln!(
                "[{}: finish {}, {} prompt + {} completion tokens, {:.0} ms]",
                record.pipeline,
                record.finish_reason,
                record.usage.prompt_tokens,
                record.usage.completion_tokens,
                record.timings.total_ms
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
