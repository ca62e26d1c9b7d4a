//! A test server: the real router and connection loop on 127.0.0.1:0, in-process, with the
//! `echo` backend (it replies with the prompt builder's user message) by default and a
//! temporary pipelines folder that uses the real plugins built by scripts/build-plugins.sh;
//! plus helpers for OpenAI-shaped errors, SSE bodies and metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use pipehost::backend::{Backend, EchoBackend, EchoConfig};
use pipehost::pipeline::{Executor, Registry};
use pipehost::server::{AppState, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const POEM: &str = r#"
description: A test poem pipeline.
variables:
  - { name: input, required: true, max_chars: 4000 }
prompt:
  plugin: persona
  config:
    role: You are a poet.
    template: "{{ input }}"
post:
  - plugin: dedupe
  - plugin: punctuation
"#;

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
    _watch: std::sync::Mutex<Option<pipehost::pipeline::WatchHandle>>,
    _watch_experiments: std::sync::Mutex<Option<pipehost::experiment::ExperimentWatch>>,
}

pub struct Options {
    pub config: ServerConfig,
    pub echo: EchoConfig,
    pub backend: Option<Arc<dyn Backend>>,
    pub files: Vec<(&'static str, String)>,
    pub plugins_dir: Option<PathBuf>,
    pub watch: bool,
    /// Files of the experiments folder (`experiments/` inside the pipelines folder).
    pub experiments: Vec<(&'static str, String)>,
    /// The request log (none by default).
    pub db: Option<pipehost::store::DbUrl>,
    pub log_bodies: pipehost::server::LogBodies,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: ServerConfig { drain: Duration::from_secs(5), ..ServerConfig::default() },
            echo: EchoConfig { chunk_chars: 3, ..EchoConfig::default() },
            backend: None,
            files: vec![("poem.yaml", POEM.to_string())],
            plugins_dir: None,
            watch: false,
            experiments: Vec::new(),
            db: None,
            log_bodies: pipehost::server::LogBodies::Full,
        }
    }
}

pub async fn start(options: Options) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in &options.files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let backend: Arc<dyn Backend> =
        options.backend.unwrap_or_else(|| Arc::new(EchoBackend::new(options.echo)));
    let executor = Arc::new(Executor::new(backend.clone(), HashMap::new()));
    let plugins = options.plugins_dir.unwrap_or_else(super::components_dir);
    let pipelines = dir.path().to_owned();
    let registry =
        tokio::task::spawn_blocking(move || Registry::load(&pipelines, &plugins, super::runtime()))
            .await
            .unwrap();
    let watch = options.watch.then(|| registry.watch().unwrap());
    let experiments_dir = dir.path().join("experiments");
    std::fs::create_dir(&experiments_dir).unwrap();
    for (name, text) in &options.experiments {
        std::fs::write(experiments_dir.join(name), text).unwrap();
    }
    let experiments = pipehost::experiment::Experiments::load(&experiments_dir, registry.clone());
    let watch_experiments = if options.watch { experiments.watch().unwrap() } else { None };
    let mut state = AppState::new(registry, executor, backend, options.config).with_experiments(experiments);
    if let Some(url) = options.db {
        let store = tokio::task::spawn_blocking(move || {
            pipehost::store::Store::open(&url, pipehost::store::StoreOptions::default())
        })
        .await
        .unwrap()
        .unwrap();
        state = state.with_store(store, options.log_bodies);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(pipehost::server::serve(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        dir,
        shutdown: Some(tx),
        handle,
        _watch: std::sync::Mutex::new(watch),
        _watch_experiments: std::sync::Mutex::new(watch_experiments),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn openai(&self) -> Client<OpenAIConfig> {
        Client::with_config(OpenAIConfig::new().with_api_base(self.url("/v1")).with_api_key("unused"))
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        reqwest::Client::new().post(self.url(path)).body(body).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post(path, body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path)).await.unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    pub async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server did not stop")
            .unwrap()
    }
}

pub fn chat(input: &str, stream: bool) -> Value {
    json!({"model": "poem", "messages": [{"role": "user", "content": input}], "stream": stream})
}

/// Checks the OpenAI error shape and returns the `error` object.
pub async fn expect_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    error.clone()
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The text of a streamed chat completion: its `delta.content`s, concatenated.
pub fn sse_text(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect()
}

pub fn metric_value(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
