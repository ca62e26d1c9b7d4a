//! `pipehost serve`: the HTTP server (see docs/server.md). Builds the plugin runtime, the
//! pipeline registry (watched for hot reload), the model backend and the executor, then serves
//! until SIGINT/SIGTERM, draining in-flight requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::say;
use crate::backend::{self, Backend, CandleBackend, EchoBackend, EchoConfig, OpenAiBackend, OpenAiConfig};
use crate::model::{
    self, DEFAULT_MODEL, DTypeChoice, DeviceChoice, Engine, EngineConfig, ModelSpec, QuantChoice,
};
use crate::pipeline::{BackendNames, Executor, Registry};
use crate::plugin::{PluginRuntime, RuntimeConfig, default_cache_dir, default_plugins_dir};
use crate::server::{self, AppState, ServerConfig};

/// Which model backend serves the pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The local Qwen3 engine (candle), loading `--model`.
    Candle,
    /// Any OpenAI-compatible server at `--openai-base-url`.
    Openai,
    /// No model: echoes the last user message (for plugin authors and tests).
    Echo,
}

/// Serve the pipelines over an OpenAI-compatible HTTP API.
///
/// Every flag can also be set with the environment variable shown.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Use 0.0.0.0:PORT to accept connections from other machines (and
    /// set an API key).
    #[arg(long, env = "PIPEHOST_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The pipelines folder (`*.yaml`), watched for changes [default: ./pipelines].
    #[arg(long, env = "PIPEHOST_PIPELINES_DIR", value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
    /// The plugins folder (`*.wasm`), watched for changes [default: plugins/dist].
    #[arg(long, env = "PIPEHOST_PLUGINS_DIR", value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// The model: a HuggingFace hub id, a local model folder, or `echo` (no model; same as
    /// `--backend echo`).
    #[arg(long, env = "PIPEHOST_MODEL", value_name = "ID|DIR|echo", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// The model backend [default: candle, or echo with `--model echo`].
    #[arg(long, env = "PIPEHOST_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,
    /// candle: auto (CUDA if compiled in and present, else CPU), cpu, cuda[:N] or metal[:N].
    #[arg(long, env = "PIPEHOST_DEVICE", value_name = "D", default_value = "auto")]
    pub device: DeviceChoice,
    /// candle: auto (bf16 on GPU, f32 on CPU), f32, bf16 or f16.
    #[arg(long, env = "PIPEHOST_DTYPE", value_name = "T", default_value = "auto")]
    pub dtype: DTypeChoice,
    /// candle: quantize the weights as they load (CPU): auto (the CPU default when --dtype is
    /// auto; none on GPUs), none, q8_0 or q4_k. A `.gguf` --model runs as stored.
    #[arg(long, env = "PIPEHOST_QUANTIZE", value_name = "Q", default_value = "auto")]
    pub quantize: QuantChoice,
    /// openai: the upstream base URL including `/v1`, e.g. http://127.0.0.1:8000/v1.
    #[arg(long, env = "PIPEHOST_OPENAI_BASE_URL", value_name = "URL")]
    pub openai_base_url: Option<String>,
    /// openai: the `model` sent upstream [default: --model].
    #[arg(long, env = "PIPEHOST_OPENAI_MODEL", value_name = "NAME")]
    pub openai_model: Option<String>,
    /// openai: the environment variable holding the upstream API key, e.g. OPENAI_API_KEY
    /// [default: none, no Authorization header upstream].
    #[arg(long, env = "PIPEHOST_OPENAI_API_KEY_ENV", value_name = "VAR")]
    pub openai_api_key_env: Option<String>,
    /// Require `Authorization: Bearer KEY` on every endpoint but /healthz and /readyz.
    #[arg(long, env = "PIPEHOST_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body in bytes; larger gets 413.
    #[arg(long, env = "PIPEHOST_MAX_BODY_BYTES", value_name = "N", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Most generation requests admitted at once (running or queued); more get 429.
    #[arg(long, env = "PIPEHOST_MAX_QUEUE", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// candle: sequences decoded together in one batch at most.
    #[arg(long, env = "PIPEHOST_MAX_BATCH", value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,
    /// candle: MiB for keys and values (running requests reserve their worst case, the prefix
    /// cache uses the rest). Default: half the device's free memory after loading.
    #[arg(long, env = "PIPEHOST_KV_CACHE_MB", value_name = "MB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_cache_mb: Option<u64>,
    /// candle: prompt tokens fed per step while other requests are decoding (a long prompt is
    /// prefilled in chunks so running streams keep flowing).
    #[arg(long, env = "PIPEHOST_PREFILL_CHUNK", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub prefill_chunk: u32,
    /// candle: do not keep computed prompt prefixes (system prompts) for later requests.
    #[arg(long, env = "PIPEHOST_NO_PREFIX_CACHE")]
    pub no_prefix_cache: bool,
    /// After SIGINT/SIGTERM, seconds in-flight requests may take before they are cut.
    #[arg(long, env = "PIPEHOST_DRAIN_SECS", value_name = "S", default_value_t = 30)]
    pub drain_secs: u64,
    /// A streaming client that reads nothing for this many seconds has its generation cancelled.
    #[arg(long, env = "PIPEHOST_STALL_SECS", value_name = "S", default_value_t = 30)]
    pub stall_secs: u64,
    /// Seconds a client may take to send a request head (request line and headers); also how
    /// long an idle keep-alive connection stays open. Guards against slowloris.
    #[arg(long, env = "PIPEHOST_HEADER_TIMEOUT_SECS", value_name = "S", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request body; slower gets 408.
    #[arg(long, env = "PIPEHOST_BODY_TIMEOUT_SECS", value_name = "S", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// The experiments folder (`*.yaml`: A/B tests between pipelines), watched for changes
    /// [default: `experiments` beside the pipelines folder].
    #[arg(long, env = "PIPEHOST_EXPERIMENTS_DIR", value_name = "DIR")]
    pub experiments: Option<PathBuf>,
    /// The request log and feedback store: sqlite:PATH, postgres://USER@HOST:PORT/DB (several
    /// replicas sharing one store), or none [default: sqlite:pipehost.db beside the pipelines
    /// folder].
    #[arg(long, env = "PIPEHOST_DB", value_name = "URL")]
    pub db: Option<String>,
    /// What the request log keeps: full, or none (everything but texts).
    #[arg(long, env = "PIPEHOST_LOG_BODIES", value_enum, default_value = "full")]
    pub log_bodies: crate::server::LogBodies,
    /// Delete logged completions (and their feedback) older than this many days [default: keep].
    #[arg(long, env = "PIPEHOST_LOG_RETENTION_DAYS", value_name = "DAYS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub log_retention_days: Option<u32>,
    /// Do not watch the pipelines and plugins folders for changes.
    #[arg(long, env = "PIPEHOST_NO_WATCH")]
    pub no_watch: bool,
    /// Refuse to save pipelines (`PUT /v1/pipelines/{name}`, the playground's Save): 403.
    /// The playground still runs drafts.
    #[arg(long, env = "PIPEHOST_READ_ONLY")]
    pub read_only: bool,
    /// echo: pause this many milliseconds before each chunk, to watch answers stream.
    #[arg(long, env = "PIPEHOST_ECHO_DELAY_MS", value_name = "MS", default_value_t = 0)]
    pub echo_delay_ms: u64,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pipehost-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let kind = match args.backend {
        Some(kind) => kind,
        None if args.model == "echo" => BackendKind::Echo,
        None => BackendKind::Candle,
    };
    // Bind first: a taken port fails fast, before a model load.
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;

    let backend = build_backend(kind, &args).await?;
    let mut backends: HashMap<String, Arc<dyn Backend>> = HashMap::new();
    if kind != BackendKind::Echo {
        // Pipelines pinned to `backend: echo` work with any server.
        backends.insert("echo".to_string(), backend::echo());
    }
    let executor = Arc::new(Executor::new(backend.clone(), backends));
    let names = executor.backend_names();

    let pipelines_dir = args.pipelines.clone().unwrap_or_else(crate::pipeline::default_pipelines_dir);
    let plugins_dir = args.plugins.clone().unwrap_or_else(default_plugins_dir);
    let plugin_runtime = PluginRuntime::new(&RuntimeConfig { cache_dir: default_cache_dir(), pooling: true })
        .context("starting the plugin runtime")?;
    let registry = tokio::task::spawn_blocking({
        let (p, q) = (pipelines_dir.clone(), plugins_dir.clone());
        move || Registry::load_with_backends(&p, &q, plugin_runtime, BackendNames::Only(names))
    })
    .await?;
    let _watch = if args.no_watch {
        None
    } else {
        Some(registry.watch().context("watching the pipelines and plugins folders")?)
    };
    let experiments_dir = args
        .experiments
        .clone()
        .unwrap_or_else(|| crate::experiment::default_experiments_dir(&pipelines_dir));
    let experiments = crate::experiment::Experiments::load(&experiments_dir, registry.clone());
    let _watch_experiments =
        if args.no_watch { None } else { experiments.watch().context("watching the experiments folder")? };

    let config = ServerConfig {
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_bytes,
        max_queue: args.max_queue as usize,
        retry_after_secs: 1,
        drain: Duration::from_secs(args.drain_secs),
        stall_timeout: Duration::from_secs(args.stall_secs.max(1)),
        header_read_timeout: Duration::from_secs(args.header_timeout_secs),
        body_read_timeout: Duration::from_secs(args.body_timeout_secs),
        read_only: args.read_only,
    };
    let api_key = config.api_key.is_some();
    let db = crate::store::DbUrl::parse(&args.db.clone().unwrap_or_else(|| default_db(&pipelines_dir)))?;
    print_banner(&registry, backend.name(), &pipelines_dir, &plugins_dir);
    print_experiments(&experiments);
    let mut state = AppState::new(registry, executor, backend, config).with_experiments(experiments);
    if db != crate::store::DbUrl::None {
        let options = crate::store::StoreOptions { retention_days: args.log_retention_days };
        let store = tokio::task::spawn_blocking(move || crate::store::Store::open(&db, options))
            .await?
            .context("opening the request log (--db; `--db none` serves without one)")?;
        say!("pipehost: request log and feedback in {}", store.url().display());
        state = state.with_store(store, args.log_bodies);
    }
    let auth = if api_key { " (API key required)" } else { "" };
    say!("pipehost: listening on http://{addr}{auth}  (POST /v1/chat/completions, GET /v1/models)");
    say!("pipehost: playground: open http://{addr}/ in a browser");
    server::serve(listener, state, server::shutdown_signal()).await.context("serving HTTP")?;
    say!("pipehost: stopped");
    Ok(())
}

async fn build_backend(kind: BackendKind, args: &ServeArgs) -> Result<Arc<dyn Backend>> {
    Ok(match kind {
        BackendKind::Echo => {
            Arc::new(EchoBackend::new(EchoConfig { delay_ms: args.echo_delay_ms, ..EchoConfig::default() }))
        }
        BackendKind::Openai => {
            let Some(base_url) = args.openai_base_url.clone() else {
                bail!("--backend openai needs --openai-base-url (or PIPEHOST_OPENAI_BASE_URL)");
            };
            let config = OpenAiConfig {
                base_url,
                model: args.openai_model.clone().unwrap_or_else(|| args.model.clone()),
                api_key_env: args.openai_api_key_env.clone(),
                timeout_s: 60,
            };
            Arc::new(OpenAiBackend::new(config)?)
        }
        BackendKind::Candle => {
            let mut spec = ModelSpec::new(&args.model);
            spec.device = args.device;
            spec.dtype = args.dtype;
            spec.quantize = args.quantize;
            let mut config = EngineConfig::new(args.max_queue as usize);
            config.max_batch = args.max_batch as usize;
            config.kv_cache_bytes = args.kv_cache_mb.map(|mb| (mb as usize) << 20);
            config.prefill_chunk = args.prefill_chunk as usize;
            config.prefix_cache = !args.no_prefix_cache;
            let name = args.model.clone();
            say!("pipehost: loading {name} ...");
            let engine = tokio::task::spawn_blocking(move || -> Result<Engine> {
                let model = model::load(&spec).with_context(|| format!("loading {name}"))?;
                say!("{}", model.info());
                Ok(Engine::start_with(model, config))
            })
            .await??;
            Arc::new(CandleBackend::new(Arc::new(engine)))
        }
    })
}

fn print_banner(
    registry: &Registry,
    backend: &str,
    pipelines_dir: &std::path::Path,
    plugins_dir: &std::path::Path,
) {
    say!("pipehost: backend {backend}");
    say!("pipehost: pipelines from {}, plugins from {}", pipelines_dir.display(), plugins_dir.display());
    let pipelines = registry.list();
    if pipelines.is_empty() {
        say!("pipehost: no pipelines loaded");
    }
    for info in &pipelines {
        let stages: Vec<&str> = info.stages.iter().map(|s| s.plugin.as_str()).collect();
        say!("  {:<16} {} -> model -> [{}]", info.name, info.prompt.plugin, stages.join(", "));
    }
    for err in registry.errors() {
        if super::json_logs() {
            tracing::warn!("load error: {err}");
        } else {
            eprintln!("  load error: {err}");
        }
    }
}

/// `sqlite:` + `pipehost.db` beside the pipelines folder.
pub(crate) fn default_db(pipelines_dir: &std::path::Path) -> String {
    let dir =
        pipelines_dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    format!("sqlite:{}", dir.join("pipehost.db").display())
}

fn print_experiments(experiments: &crate::experiment::Experiments) {
    for info in experiments.list() {
        let e = &info.experiment;
        let variants: Vec<String> =
            e.variants.iter().map(|v| format!("{} ({}, weight {})", v.name, v.pipeline, v.weight)).collect();
        say!("  experiment {:<16} {}", e.name, variants.join(" | "));
    }
    for err in experiments.errors() {
        if super::json_logs() {
            tracing::warn!("experiment load error: {err}");
        } else {
            eprintln!("  experiment load error: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_parse_with_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["pipehost", "--model", "echo", "--max-queue", "3"]).unwrap();
        assert_eq!(cli.serve.max_queue, 3);
        if std::env::var_os("PIPEHOST_ADDR").is_none() {
            assert_eq!(cli.serve.addr.to_string(), "127.0.0.1:8080");
        }
        assert!(Cli::try_parse_from(["pipehost", "--max-queue", "0"]).is_err());
        assert!(Cli::try_parse_from(["pipehost", "--backend", "nope"]).is_err());
    }
}
