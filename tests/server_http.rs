//! End-to-end tests of the HTTP server over real HTTP on loopback: an OpenAI client library
//! written by others (`async-openai`), raw HTTP for error shapes and SSE framing, limits,
//! authentication, metrics, cancellation, graceful shutdown, hot reload, the `openai` backend
//! against a second server, and the tiny reference model.
//!
//! Each test starts its own server in-process (tests/support/server.rs).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs};
use futures_util::StreamExt;
use pipehost::backend::{Backend, EchoBackend, EchoConfig, OpenAiBackend, OpenAiConfig};
use pipehost::server::ServerConfig;
use serde_json::{Value, json};
use support::server::{
    Options, POEM, TestServer, chat, expect_error, metric_value, sse_data, sse_text, start,
};

/// Repeats a sentence (dedupe drops it) and has ASCII punctuation in Chinese (punctuation fixes it).
const INPUT: &str = "今天天气很好。今天天气很好。我们去公园吧,好吗?";
const EXPECTED: &str = "今天天气很好。我们去公园吧，好吗？";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_whole_and_streaming_agree() {
    let server = start(Options::default()).await;
    let client = server.openai();
    let request = CreateChatCompletionRequestArgs::default()
        .model("poem")
        .messages([ChatCompletionRequestUserMessageArgs::default().content(INPUT).build().unwrap().into()])
        .build()
        .unwrap();
    let response = client.chat().create(request.clone()).await.unwrap();
    let whole = response.choices[0].message.content.clone().unwrap();
    assert_eq!(whole, EXPECTED);
    assert_eq!(response.object, "chat.completion");
    assert!(response.id.starts_with("chatcmpl-"));
    let usage = response.usage.unwrap();
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);

    let mut stream = client.chat().create_stream(request).await.unwrap();
    let mut streamed = String::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for choice in chunk.choices {
            if let Some(text) = choice.delta.content {
                streamed.push_str(&text);
            }
            finish = finish.or(choice.finish_reason);
        }
    }
    assert_eq!(streamed, whole, "post-processed streaming output equals whole-text output");
    assert!(finish.is_some());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_framing_usage_and_extension() {
    let server = start(Options::default()).await;
    let mut body = chat(INPUT, true);
    body["stream_options"] = json!({"include_usage": true});
    body["pipehost"] = json!({"include_raw": true});
    let response = server.post_json("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]", "{text}");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["pipehost"]["raw_text"], INPUT);
    assert!(finish["pipehost"]["stages"].as_array().unwrap().len() >= 2);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, EXPECTED);

    // Without include_usage: no usage chunk.
    let text = server.post_json("/v1/chat/completions", &chat(INPUT, true)).await.text().await.unwrap();
    assert!(!text.contains("\"usage\""), "{text}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_shaped_errors() {
    let options = Options {
        config: ServerConfig { max_body_bytes: 64 * 1024, ..ServerConfig::default() },
        ..Options::default()
    };
    let server = start(options).await;
    let path = "/v1/chat/completions";

    let e = expect_error(server.post(path, "{\"model\": \"poem\",\n \"messages\": [").await, 400).await;
    assert!(e["message"].as_str().unwrap().contains("line 2"), "{e}");
    let e = expect_error(server.post(path, "{\"model\": 5, \"messages\": []}").await, 400).await;
    assert_eq!(e["param"], "model", "{e}");
    let e = expect_error(server.post(path, b"{\"model\": \"poem\xff\"}".to_vec()).await, 400).await;
    assert_eq!(e["code"], "invalid_utf8", "{e}");
    let e = expect_error(server.post_json(path, &json!({"model": "nope", "messages": []})).await, 404).await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("model_not_found"), Some("model")));
    let e = expect_error(server.post_json(path, &json!({"model": "poem", "messages": []})).await, 400).await;
    assert_eq!(e["param"], "messages");
    let mut body = chat("hi", false);
    body["messages"] = json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]);
    expect_error(server.post_json(path, &body).await, 400).await;
    for (field, value) in [
        ("temperature", json!(-1)),
        ("top_p", json!(7)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(1u64 << 40)),
        ("seed", json!(-3)),
        ("presence_penalty", json!(1e300)),
    ] {
        let mut body = chat("hi", false);
        body[field] = value;
        let e = expect_error(server.post_json(path, &body).await, 400).await;
        assert_eq!(e["param"], field, "{e}");
    }
    let mut body = chat("hi", false);
    body["temperature"] = json!("hot");
    let e = expect_error(server.post_json(path, &body).await, 400).await;
    assert_eq!(e["param"], "temperature", "{e}");
    // Over the variable's max_chars: the pipeline rejects it.
    expect_error(server.post_json(path, &chat(&"x".repeat(5000), false)).await, 400).await;
    // Over the body limit.
    let e = expect_error(server.post_json(path, &chat(&"x".repeat(100_000), false)).await, 413).await;
    assert_eq!(e["code"], "request_too_large");
    // Native endpoint: missing required variable, unknown field.
    let run = "/v1/pipelines/poem/run";
    expect_error(server.post_json(run, &json!({"vars": {}})).await, 400).await;
    let e =
        expect_error(server.post_json(run, &json!({"vars": {"input": "x"}, "parms": {}})).await, 400).await;
    assert!(e["message"].as_str().unwrap().contains("parms"), "{e}");
    expect_error(server.post_json("/v1/pipelines/nope/run", &json!({})).await, 404).await;
    // Unknown route and wrong method.
    expect_error(server.get("/v2/nothing").await, 404).await;
    expect_error(server.get(path).await, 405).await;
    // Still responsive.
    assert_eq!(server.post_json(path, &chat(INPUT, false)).await.status(), 200);
    let metrics = server.metrics().await;
    assert!(
        metric_value(&metrics, "pipehost_request_errors_total{code=\"invalid_value\"}") >= 6.0,
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gets_429_with_retry_after() {
    let options = Options {
        config: ServerConfig { max_queue: 1, ..ServerConfig::default() },
        echo: EchoConfig { chunk_chars: 1, delay_ms: 20, ..EchoConfig::default() },
        ..Options::default()
    };
    let server = start(options).await;
    let slow = server.post_json("/v1/chat/completions", &chat(&"慢".repeat(100), true)).await;
    assert_eq!(slow.status(), 200);
    let response = server.post_json("/v1/chat/completions", &chat("hi", false)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let e = expect_error(response, 429).await;
    assert_eq!(e["type"], "rate_limit_error");
    assert!(server.metrics().await.contains("pipehost_queue_depth 1"));
    drop(slow);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_protects_all_but_health() {
    let options = Options {
        config: ServerConfig { api_key: Some("sekret".into()), ..ServerConfig::default() },
        ..Options::default()
    };
    let server = start(options).await;
    assert_eq!(server.get("/healthz").await.status(), 200);
    assert_eq!(server.get("/readyz").await.status(), 200);
    for path in ["/v1/models", "/metrics", "/v1/pipelines"] {
        let e = expect_error(server.get(path).await, 401).await;
        assert_eq!(e["type"], "authentication_error");
    }
    let http = reqwest::Client::new();
    let wrong = http.get(server.url("/v1/models")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = http.get(server.url("/v1/models")).bearer_auth("sekret").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let client =
        Client::with_config(OpenAIConfig::new().with_api_base(server.url("/v1")).with_api_key("sekret"));
    let request = CreateChatCompletionRequestArgs::default()
        .model("poem")
        .messages([ChatCompletionRequestUserMessageArgs::default().content(INPUT).build().unwrap().into()])
        .build()
        .unwrap();
    assert_eq!(
        client.chat().create(request).await.unwrap().choices[0].message.content.as_deref(),
        Some(EXPECTED)
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_native_endpoint_and_metrics() {
    let mut options = Options::default();
    options.files.push(("broken.yaml", "prompt: [unclosed\n".to_string()));
    let server = start(options).await;
    let models: Value = server.get("/v1/models").await.json().await.unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["poem"]);
    let pipelines: Value = server.get("/v1/pipelines").await.json().await.unwrap();
    assert!(pipelines["errors"].to_string().contains("broken"), "{pipelines}");
    let poem: Value = server.get("/v1/pipelines/poem").await.json().await.unwrap();
    assert_eq!(poem["name"], "poem");
    assert_eq!(poem["stages"].as_array().unwrap().len(), 2);
    assert_eq!(poem["stages"][0]["sha256"].as_str().unwrap().len(), 64);
    expect_error(server.get("/v1/pipelines/nope").await, 404).await;

    // Native, whole text.
    let run = "/v1/pipelines/poem/run";
    let record: Value = server.post_json(run, &json!({"vars": {"input": INPUT}})).await.json().await.unwrap();
    assert_eq!(record["text"], EXPECTED);
    assert_eq!(record["pipeline"], "poem");
    // Native, streaming: text deltas, then the whole record.
    let body =
        server.post_json(run, &json!({"vars": {"input": INPUT}, "stream": true})).await.text().await.unwrap();
    let mut text = String::new();
    let mut done = None;
    for event in body.split("\n\n").filter(|e| !e.trim().is_empty() && !e.starts_with(':')) {
        let kind = event.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default();
        let data: Value =
            serde_json::from_str(event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
        match kind {
            "delta" => text.push_str(data["text"].as_str().unwrap()),
            "done" => done = Some(data),
            other => panic!("unexpected event {other}: {event}"),
        }
    }
    assert_eq!(text, EXPECTED);
    assert_eq!(done.unwrap()["text"], EXPECTED);

    assert_eq!(server.get("/healthz").await.status(), 200);
    assert_eq!(server.get("/readyz").await.status(), 200);
    let metrics = server.metrics().await;
    for name in [
        "pipehost_http_requests_total",
        "pipehost_pipeline_runs_total",
        "pipehost_tokens_generated_total",
        "pipehost_time_to_first_token_seconds_bucket",
        "pipehost_stage_duration_seconds_bucket{le=\"+Inf\",pipeline=\"poem\",stage=\"dedupe\",plugin=\"dedupe\"}",
        "pipehost_queue_depth",
        "pipehost_pipeline_reloads_total",
        "pipehost_pipeline_reload_failures_total",
        "pipehost_ready 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_generation() {
    let echo =
        Arc::new(EchoBackend::new(EchoConfig { chunk_chars: 1, delay_ms: 10, ..EchoConfig::default() }));
    let options = Options { backend: Some(echo.clone()), ..Options::default() };
    let server = start(options).await;
    // Distinct sentences: dedupe and punctuation pass each on as soon as it ends.
    let input: String = (0..300).map(|i| format!("第{i}句。")).collect();
    let mut response = server.post_json("/v1/chat/completions", &chat(&input, true)).await;
    assert_eq!(response.status(), 200);
    // Read a little, then hang up.
    let mut seen = 0;
    while seen < 3 {
        response.chunk().await.unwrap().unwrap();
        seen += 1;
    }
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = server.metrics().await;
        if metric_value(&metrics, "pipehost_requests_cancelled_total") >= 1.0 && echo.cancelled_count() >= 1 {
            assert!(metrics.contains("pipehost_queue_depth 0"), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "no cancellation seen:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_streams() {
    let options = Options {
        echo: EchoConfig { chunk_chars: 1, delay_ms: 10, ..EchoConfig::default() },
        ..Options::default()
    };
    let server = start(options).await;
    let input = "慢慢来。".repeat(20);
    let response = server.post_json("/v1/chat/completions", &chat(&input, true)).await;
    assert_eq!(response.status(), 200);
    let addr = server.addr;
    let stopped = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once draining.
    assert!(reqwest::get(format!("http://{addr}/healthz")).await.is_err());
    // The in-flight stream still finishes properly.
    let text = response.text().await.unwrap();
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]", "{text}");
    stopped.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_streams_after_drain_time() {
    let options = Options {
        config: ServerConfig { drain: Duration::from_millis(300), ..ServerConfig::default() },
        echo: EchoConfig { chunk_chars: 1, delay_ms: 50, ..EchoConfig::default() },
        ..Options::default()
    };
    let server = start(options).await;
    let response = server.post_json("/v1/chat/completions", &chat(&"长".repeat(1000), true)).await;
    let started = Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    let text = response.text().await.unwrap_or_default();
    assert!(text.contains("shutting_down"), "{text}");
}

/// Rewrites `file` atomically (write + rename), as editors do.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Asks until the answer is `expected` (the watcher reloads within a debounce interval).
async fn wait_for_output(server: &TestServer, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value =
            server.post_json("/v1/chat/completions", &chat(INPUT, false)).await.json().await.unwrap();
        if v["choices"][0]["message"]["content"] == expected {
            return;
        }
        assert!(Instant::now() < deadline, "reload not seen, wanted {expected:?}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_reload_under_load_has_no_failed_requests() {
    // A plugins folder of its own, since this test rewrites plugins.
    let plugins = tempfile::tempdir().unwrap();
    for name in ["persona", "dedupe", "punctuation", "tone"] {
        std::fs::copy(support::component(name), plugins.path().join(format!("{name}.wasm"))).unwrap();
    }
    let options = Options { watch: true, plugins_dir: Some(plugins.path().to_owned()), ..Options::default() };
    let server = Arc::new(start(options).await);
    let file = server.dir.path().join("poem.yaml");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (server, stop) = (server.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut count = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = server.post_json("/v1/chat/completions", &chat(INPUT, w % 2 == 0)).await;
                assert_eq!(response.status(), 200);
                let text = response.text().await.unwrap();
                assert!(!text.contains("\"error\""), "{text}");
                count += 1;
            }
            count
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Broken YAML: the old version keeps serving, and says why the file did not load.
    write_atomic(&file, "prompt: {plugin: [\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info: Value = server.get("/v1/pipelines/poem").await.json().await.unwrap();
    assert!(info["last_error"].is_string(), "{info}");
    wait_for_output(&server, EXPECTED).await;
    // A real change: drop the punctuation stage.
    write_atomic(&file, &POEM.replace("  - plugin: punctuation\n", ""));
    wait_for_output(&server, "今天天气很好。我们去公园吧,好吗?").await;
    // A broken plugin: the old one keeps serving.
    write_atomic(&plugins.path().join("dedupe.wasm"), "not a component");
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_output(&server, "今天天气很好。我们去公园吧,好吗?").await;
    // A new plugin under the same name (tone, which keeps repeated sentences): picked up.
    let tone = std::fs::read(support::component("tone")).unwrap();
    let tmp = plugins.path().join("dedupe.tmp~");
    std::fs::write(&tmp, tone).unwrap();
    std::fs::rename(&tmp, plugins.path().join("dedupe.wasm")).unwrap();
    wait_for_output(&server, "今天天气很好。今天天气很好。我们去公园吧,好吗?").await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 3, "{total} requests");
    let metrics = server.metrics().await;
    assert!(metric_value(&metrics, "pipehost_pipeline_reloads_total") >= 2.0, "{metrics}");
    assert!(metric_value(&metrics, "pipehost_pipeline_reload_failures_total") >= 2.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_backend_against_a_second_pipehost() {
    let upstream = start(Options::default()).await;
    // The upstream's `poem` pipeline post-processes; this server's `relay` passes text through.
    let config = OpenAiConfig {
        base_url: upstream.url("/v1"),
        model: "poem".into(),
        api_key_env: None,
        timeout_s: 10,
    };
    let backend: Arc<dyn Backend> = Arc::new(OpenAiBackend::new(config).unwrap());
    let relay = r#"
variables:
  - { name: input, required: true }
prompt:
  plugin: persona
  config:
    template: "{{ input }}"
"#;
    let options = Options {
        backend: Some(backend),
        files: vec![("relay.yaml", relay.to_string())],
        ..Options::default()
    };
    let server = start(options).await;
    let mut body = chat(INPUT, false);
    body["model"] = json!("relay");
    let v: Value = server.post_json("/v1/chat/completions", &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], EXPECTED, "{v}");
    body["stream"] = json!(true);
    let text = server.post_json("/v1/chat/completions", &body).await.text().await.unwrap();
    assert_eq!(sse_text(&text), EXPECTED);
    server.stop().await.unwrap();
    upstream.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_reference_model_over_http() {
    let dir = support::repo_root().join("../shared/reference/tiny-qwen3");
    if !dir.join("config.json").exists() {
        assert!(
            std::env::var_os("PIPEHOST_REQUIRE_REFERENCE").is_none(),
            "{} is missing and PIPEHOST_REQUIRE_REFERENCE is set",
            dir.display()
        );
        eprintln!("skipping: {} is absent", dir.display());
        return;
    }
    let backend = tokio::task::spawn_blocking(move || {
        let spec = pipehost::model::ModelSpec::new(dir.to_string_lossy());
        let model = pipehost::model::load(&spec).unwrap();
        Arc::new(pipehost::backend::CandleBackend::new(Arc::new(pipehost::model::Engine::start(model, 4))))
    })
    .await
    .unwrap();
    let server = start(Options { backend: Some(backend), ..Options::default() }).await;
    let mut body = chat("Write a poem about the sea.", false);
    body["max_tokens"] = json!(12);
    body["temperature"] = json!(0);
    let v: Value = server.post_json("/v1/chat/completions", &body).await.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 12, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let whole = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    body["stream"] = json!(true);
    let text = server.post_json("/v1/chat/completions", &body).await.text().await.unwrap();
    assert_eq!(sse_text(&text), whole, "greedy streaming equals whole text through the post-processors");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_failures_name_the_stage() {
    let evil = |mode: &str, extra: &str| {
        format!(
            "variables:\n  - {{ name: input, required: true }}\nprompt:\n  plugin: persona\n  config:\n    template: \"{{{{ input }}}}\"\npost:\n  - plugin: guest_evil\n    name: evil\n    config: {{ mode: {mode} }}\n{extra}"
        )
    };
    let options = Options {
        files: vec![
            ("trap.yaml", evil("unreachable", "")),
            ("slow.yaml", evil("loop", "    limits: { time_ms: 50 }\n")),
            ("skip.yaml", evil("panic", "    on_error: skip\n")),
        ],
        ..Options::default()
    };
    let server = start(options).await;
    let path = "/v1/chat/completions";
    let request = |model: &str, stream: bool| {
        let mut body = chat("hello.", stream);
        body["model"] = json!(model);
        body
    };
    let e = expect_error(server.post_json(path, &request("trap", false)).await, 500).await;
    assert_eq!(e["type"], "server_error");
    assert!(e["message"].as_str().unwrap().contains("evil"), "{e}");
    let e = expect_error(server.post_json(path, &request("slow", false)).await, 504).await;
    assert!(e["message"].as_str().unwrap().contains("evil"), "{e}");
    assert_eq!(e["code"], "stage_timeout");
    // on_error: skip: the answer passes the stage by, and says so.
    let v: Value = server.post_json(path, &request("skip", false)).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "hello.", "{v}");
    assert!(v["pipehost"]["stages"][1]["skipped_error"].is_string(), "{v}");
    // Streaming: the failure comes as an error event, then [DONE].
    let text = server.post_json(path, &request("trap", true)).await.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("evil"), "{text}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("pipehost_plugin_errors_total{plugin=\"guest_evil\",cause=\"timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "pipehost_plugin_errors_total{plugin=\"guest_evil\",cause=\"trap\"}") >= 1.0
    );
    assert!(
        metrics.contains("pipehost_stage_skipped_total{pipeline=\"skip\",stage=\"evil\"} 1"),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_cancelled() {
    use tokio::io::AsyncWriteExt;
    // A long answer in big chunks, no post-processors: fills every buffer between the model and
    // a client that sends its request and then reads nothing.
    let echo = Arc::new(EchoBackend::new(EchoConfig {
        text: Some("x".repeat(48 << 20)),
        chunk_chars: 1 << 16,
        ..EchoConfig::default()
    }));
    let plain = "variables:\n  - { name: input }\nprompt:\n  plugin: persona\n  config:\n    template: \"{{ input }}.\"\n";
    let options = Options {
        config: ServerConfig { stall_timeout: Duration::from_millis(300), ..ServerConfig::default() },
        backend: Some(echo.clone()),
        files: vec![("plain.yaml", plain.to_string())],
        ..Options::default()
    };
    let server = start(options).await;
    let body = json!({"model": "plain", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = server.metrics().await;
        if metric_value(&metrics, "pipehost_requests_cancelled_total{reason=\"stalled\"}") >= 1.0 {
            assert!(metrics.contains("pipehost_queue_depth 0"), "{metrics}");
            break;
        }
        assert!(Instant::now() < deadline, "stalled client not cancelled:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server stays responsive, and the model was told to stop.
    assert_eq!(server.get("/healthz").await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo.cancelled_count() == 0 {
        assert!(Instant::now() < deadline, "backend not cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(socket);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_text_client_disconnect_cancels_generation() {
    let echo =
        Arc::new(EchoBackend::new(EchoConfig { chunk_chars: 1, delay_ms: 10, ..EchoConfig::default() }));
    let server = start(Options { backend: Some(echo.clone()), ..Options::default() }).await;
    let input: String = (0..300).map(|i| format!("第{i}句。")).collect();
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let result =
        client.post(server.url("/v1/chat/completions")).body(chat(&input, false).to_string()).send().await;
    assert!(result.is_err(), "the client gives up first");
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo.cancelled_count() == 0 {
        assert!(Instant::now() < deadline, "generation went on after the client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = server.metrics().await;
    assert!(
        metric_value(&metrics, "pipehost_requests_cancelled_total{reason=\"disconnect\"}") >= 1.0,
        "{metrics}"
    );
    server.stop().await.unwrap();
}
