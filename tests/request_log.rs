//! The request log and feedback over HTTP on loopback, on a real SQLite file (read back with a
//! connection of the test's own): every completion's fields, what responses leave out, feedback
//! validation, 64 concurrent clients with nothing lost, and a store that cannot be written.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pipehost::server::{LogBodies, ServerConfig};
use pipehost::store::DbUrl;
use serde_json::{Value, json};
use support::server::{Options, TestServer, expect_error, metric_value, sse_data, start};

/// Repeats a sentence (dedupe drops it) and has ASCII punctuation in Chinese (punctuation fixes it).
const INPUT: &str = "今天天气很好。今天天气很好。我们去公园吧,好吗?";
const EXPECTED: &str = "今天天气很好。我们去公园吧，好吗？";

fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

async fn post(server: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    http().post(server.url(path)).body(body.to_string()).send().await.unwrap()
}

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    http().get(server.url(path)).send().await.unwrap()
}

fn logged(db: &std::path::Path, extra: Options) -> Options {
    Options { db: Some(DbUrl::Sqlite(db.to_owned())), ..extra }
}

fn chat(input: &str, stream: bool) -> Value {
    json!({"model": "poem", "messages": [{"role": "user", "content": input}], "stream": stream})
}

/// The `id` of a chat completion, whole or streamed (and its final chunk's `pipehost`).
async fn complete(server: &TestServer, body: &Value) -> (String, Value) {
    let response = post(server, "/v1/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    if body["stream"] == true {
        let chunks: Vec<Value> =
            sse_data(&text).iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
        let last = chunks.iter().find(|c| c["pipehost"].is_object()).unwrap().clone();
        (last["id"].as_str().unwrap().to_string(), last["pipehost"].clone())
    } else {
        let v: Value = serde_json::from_str(&text).unwrap();
        (v["id"].as_str().unwrap().to_string(), v["pipehost"].clone())
    }
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_completion_is_logged_with_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let ab = "variants:\n  - pipeline: poem\n";
    let server =
        start(logged(&db, Options { experiments: vec![("ab.yaml", ab.to_string())], ..Options::default() }))
            .await;
    let sha = get(&server, "/v1/pipelines/poem").await.json::<Value>().await.unwrap()["sha256"].clone();

    // Whole, through an experiment, with a user.
    let mut body = chat(INPUT, false);
    body["model"] = json!("ab");
    body["user"] = json!("alice");
    body["temperature"] = json!(0.5);
    let (whole, ext) = complete(&server, &body).await;
    // What the client did not ask for stays out of the response.
    assert!(ext["raw_text"].is_null(), "{ext}");
    assert!(ext.get("messages").is_none(), "{ext}");
    assert!(ext["stages"].as_array().unwrap().iter().all(|s| s.get("output").is_none()), "{ext}");
    let r: Value = get(&server, &format!("/v1/responses/{whole}")).await.json().await.unwrap();
    assert_eq!(r["id"], whole.as_str());
    assert_eq!(r["pipeline"], "poem");
    assert_eq!(r["pipeline_sha256"], sha);
    assert_eq!(
        (r["experiment"].as_str(), r["variant"].as_str(), r["user"].as_str()),
        (Some("ab"), Some("poem"), Some("alice"))
    );
    assert_eq!(r["vars"]["input"], INPUT, "{r}");
    assert_eq!(r["raw_text"], INPUT);
    assert_eq!(r["text"], EXPECTED);
    assert_eq!(r["source"], "chat");
    assert_eq!(r["stream"], false);
    assert_eq!(r["finish_reason"], "eos", "the exact reason");
    assert_eq!(r["params"]["temperature"], 0.5);
    assert!(r["params"]["seed"].is_u64(), "the seed actually used is logged: {r}");
    let messages = r["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["role"], "user", "{r}");
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(
        stages.iter().map(|s| s["stage"].as_str().unwrap()).collect::<Vec<_>>(),
        ["prompt", "dedupe", "punctuation"]
    );
    assert_eq!(stages[1]["output"], "今天天气很好。我们去公园吧,好吗?");
    assert_eq!(stages[2]["output"], EXPECTED);
    assert!(stages[1]["ms"].as_f64().unwrap() > 0.0);
    assert!(r["latency_ms"].as_f64().unwrap() > 0.0 && r["ttft_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r["feedback"], json!([]));

    // Streamed, asking for the raw text: it comes back, the trace does not.
    let mut body = chat(INPUT, true);
    body["pipehost"] = json!({"include_raw": true});
    body["seed"] = json!(7);
    let (streamed, ext) = complete(&server, &body).await;
    assert_eq!(ext["raw_text"], INPUT);
    assert!(ext.get("messages").is_none(), "{ext}");
    let r: Value = get(&server, &format!("/v1/responses/{streamed}")).await.json().await.unwrap();
    assert_eq!(
        (r["stream"].as_bool(), r["text"].as_str(), r["params"]["seed"].as_u64()),
        (Some(true), Some(EXPECTED), Some(7))
    );
    assert!(r["experiment"].is_null());

    // The native endpoint, whole and streamed.
    let record: Value = post(&server, "/v1/pipelines/poem/run", &json!({"vars": {"input": INPUT}}))
        .await
        .json()
        .await
        .unwrap();
    assert!(record["raw_text"].is_null() && record.get("messages").is_none(), "{record}");
    let body = post(&server, "/v1/pipelines/poem/run", &json!({"vars": {"input": INPUT}, "stream": true}))
        .await
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: done"), "{body}");
    let r = count(&db, "SELECT COUNT(*) FROM responses WHERE pipeline = 'poem' AND text IS NOT NULL");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = r;
    while n < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        n = count(&db, "SELECT COUNT(*) FROM responses WHERE pipeline = 'poem' AND text IS NOT NULL");
    }
    assert_eq!(n, 4);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM responses WHERE detail LIKE '%\"source\":\"native\"%'"), 2);

    let e = expect_error(get(&server, "/v1/responses/chatcmpl-nope").await, 404).await;
    assert_eq!(e["code"], "response_not_found");
    server.stop().await.unwrap();

    // A restart on the same file still has it.
    let server = start(logged(&db, Options::default())).await;
    let r: Value = get(&server, &format!("/v1/responses/{whole}")).await.json().await.unwrap();
    assert_eq!(r["text"], EXPECTED);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_bodies_none_keeps_everything_but_texts_and_the_key_guards_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let options = Options {
        log_bodies: LogBodies::None,
        config: ServerConfig { api_key: Some("sekret".into()), ..ServerConfig::default() },
        ..Options::default()
    };
    let server = start(logged(&db, options)).await;
    let response = http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("sekret")
        .body(chat(INPUT, false).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = response.json().await.unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], EXPECTED);
    expect_error(get(&server, &format!("/v1/responses/{id}")).await, 401).await;
    let r: Value = http()
        .get(server.url(&format!("/v1/responses/{id}")))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["pipeline"], "poem", "{r}");
    assert!(
        r["text"].is_null()
            && r["raw_text"].is_null()
            && r.get("vars").is_none()
            && r.get("messages").is_none(),
        "{r}"
    );
    assert!(r["stages"][1].get("output").is_none() && r["stages"][1]["ms"].is_f64(), "{r}");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0 && r["params"]["seed"].is_u64(), "{r}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_validated_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(logged(&dir.path().join("log.db"), Options::default())).await;
    let (a, _) = complete(&server, &chat(INPUT, false)).await;
    let (b, _) = complete(&server, &chat(INPUT, true)).await;
    let fb = |body: Value| {
        let server = &server;
        async move { post(server, "/v1/feedback", &body).await }
    };
    // Thumbs by default.
    let ok: Value = fb(json!({"response_id": a, "value": 1, "comment": "nice"})).await.json().await.unwrap();
    assert_eq!(
        (ok["name"].as_str(), ok["value"].as_f64(), ok["replaced"].as_bool()),
        (Some("thumbs"), Some(1.0), Some(false))
    );
    // Again: replaces.
    let ok: Value =
        fb(json!({"response_id": a, "name": "thumbs", "value": false})).await.json().await.unwrap();
    assert_eq!(ok["replaced"], true, "{ok}");
    let ok: Value = fb(json!({"response_id": a, "name": "rating", "value": 4.5})).await.json().await.unwrap();
    assert_eq!(ok["value"], 4.5);
    let r: Value = get(&server, &format!("/v1/responses/{a}")).await.json().await.unwrap();
    let feedback: Vec<(String, f64)> = r["feedback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f["value"].as_f64().unwrap()))
        .collect();
    assert_eq!(feedback, [("rating".to_string(), 4.5), ("thumbs".to_string(), 0.0)]);

    // Bad values: 400 naming the field.
    for (body, param) in [
        (json!({"response_id": a, "value": 2}), "value"),
        (json!({"response_id": a, "value": 0.5}), "value"),
        (json!({"response_id": a, "value": "up"}), "value"),
        (json!({"response_id": a}), "value"),
        (json!({"response_id": a, "name": "rating", "value": true}), "value"),
        (json!({"response_id": a, "name": "Bad Name", "value": 1}), "name"),
        (json!({"value": 1}), "response_id"),
        (json!({"response_id": a, "value": 1, "comment": "x".repeat(5000)}), "comment"),
        (json!({"response_ids": [a], "preferred": null}), "response_ids"),
        (json!({"response_ids": [a, a], "preferred": null}), "response_ids"),
        (json!({"response_ids": [a, b]}), "preferred"),
        (json!({"response_ids": [a, b], "preferred": "chatcmpl-other"}), "preferred"),
        (json!({"response_ids": [a, b], "preferred": a, "value": 1}), "value"),
        (json!({"response_id": a, "value": 1, "preferred": a}), "preferred"),
    ] {
        let e = expect_error(fb(body.clone()).await, 400).await;
        assert_eq!(e["param"], param, "{body} -> {e}");
    }
    let e = expect_error(fb(json!({"response_id": a, "value": 1, "extra": 1})).await, 400).await;
    assert!(e["message"].as_str().unwrap().contains("extra"), "{e}");
    // Unknown ids: 404 naming the field.
    let e = expect_error(fb(json!({"response_id": "chatcmpl-nope", "value": 1})).await, 404).await;
    assert_eq!((e["code"].as_str(), e["param"].as_str()), (Some("response_not_found"), Some("response_id")));
    let e = expect_error(fb(json!({"response_ids": [a, "chatcmpl-nope"], "preferred": a})).await, 404).await;
    assert_eq!(e["param"], "response_ids[1]");

    // Pairwise: a preference, then a tie for the same pair in the other order replaces it.
    let ok: Value = fb(json!({"response_ids": [a, b], "preferred": b})).await.json().await.unwrap();
    assert_eq!((ok["preferred"].as_str(), ok["replaced"].as_bool()), (Some(b.as_str()), Some(false)), "{ok}");
    let ok: Value = fb(json!({"response_ids": [b, a], "preferred": null})).await.json().await.unwrap();
    assert_eq!((ok["preferred"].is_null(), ok["replaced"].as_bool()), (true, Some(true)), "{ok}");
    let r: Value = get(&server, &format!("/v1/responses/{b}")).await.json().await.unwrap();
    assert_eq!(r["pairwise"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["pairwise"][0]["preferred"].is_null());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_answers_and_feedback_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let server = Arc::new(start(logged(&db, Options::default())).await);
    const CLIENTS: usize = 64;
    const EACH: usize = 5;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let server = server.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..EACH {
                    let mut body = chat(&format!("client {c} asks {i}。{INPUT}"), (c + i) % 2 == 0);
                    body["user"] = json!(format!("user-{c}"));
                    let (id, _) = complete(&server, &body).await;
                    // At once: the answer may still be on the writer's queue.
                    for (name, value) in [("thumbs", json!((c + i) % 2)), ("rating", json!(i + 1))] {
                        let r = post(
                            &server,
                            "/v1/feedback",
                            &json!({"response_id": id, "name": name, "value": value}),
                        )
                        .await;
                        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                    }
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let n = (CLIENTS * EACH) as i64;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM responses"), n);
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT id) FROM responses"), n);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM feedback"), 2 * n);
    assert_eq!(count(&db, "SELECT COUNT(DISTINCT user_id) FROM responses"), CLIENTS as i64);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM feedback WHERE name = 'rating' AND value BETWEEN 1 AND 5"),
        n
    );
    let metrics = server.metrics().await;
    assert_eq!(metric_value(&metrics, "pipehost_log_records_written_total"), n as f64, "{metrics}");
    assert_eq!(metric_value(&metrics, "pipehost_log_records_dropped_total"), 0.0, "{metrics}");
    let server = Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_store_drops_and_counts_and_answers_still_flow() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let server = start(logged(&db, Options::default())).await;
    for i in 0..5 {
        complete(&server, &chat(&format!("before {i}。"), i % 2 == 0)).await;
    }
    // Another process takes the database's write lock and holds it: the log cannot be written.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    for i in 0..40 {
        let (_, ext) = complete(&server, &chat(&format!("during {i}。"), i % 2 == 0)).await;
        assert_eq!(ext["pipeline"], "poem");
    }
    // The answers did not wait for the store (the writer gives up on a lock after 1 s per batch).
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = server.metrics().await;
        if metric_value(&metrics, "pipehost_log_records_dropped_total{reason=\"store_error\"}") >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no drop counted while the store was locked:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The lock goes away: logging resumes.
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    for i in 0..5 {
        complete(&server, &chat(&format!("after {i}。"), false)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = server.metrics().await;
        let written = metric_value(&metrics, "pipehost_log_records_written_total");
        let dropped = metric_value(&metrics, "pipehost_log_records_dropped_total");
        if written + dropped == 50.0 && metric_value(&metrics, "pipehost_log_queue_depth") == 0.0 {
            assert!(dropped >= 1.0 && written >= 10.0, "{metrics}");
            assert_eq!(count(&db, "SELECT COUNT(*) FROM responses") as f64, written);
            assert_eq!(count(&db, "SELECT COUNT(*) FROM responses WHERE raw_text LIKE 'after%'"), 5);
            break;
        }
        assert!(Instant::now() < deadline, "records unaccounted for:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await.unwrap();
}

/// Runs `pipehost replay` with `args`; returns (exit code, stdout JSON or text, stderr).
fn replay(db: &std::path::Path, file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .arg("replay")
        .arg("--pipeline")
        .arg(file)
        .arg("--db")
        .arg(format!("sqlite:{}", db.display()))
        .arg("--plugins")
        .arg(support::components_dir())
        .args(args)
        .env("PIPEHOST_CACHE_DIR", support::test_cache_dir())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_logged_answers_through_a_changed_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let server = start(logged(&db, Options::default())).await;
    // Six answers with ASCII punctuation in Chinese (the punctuation stage changes them), four
    // without (nothing to change).
    let numbers = ["一", "二", "三", "四", "五", "六"];
    for (i, n) in numbers.iter().enumerate() {
        complete(&server, &chat(&format!("第{n}句,好吗?"), i % 2 == 0)).await;
    }
    for n in &numbers[..4] {
        complete(&server, &chat(&format!("第{n}句。"), false)).await;
    }
    server.stop().await.unwrap();
    let poem = support::server::POEM;

    // The same chain reproduces every logged final text.
    let same = dir.path().join("poem.yaml");
    std::fs::write(&same, poem).unwrap();
    let (code, out, err) = replay(&db, &same, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["replayed"].as_u64(), v["changed"].as_u64(), v["failed"].as_u64()),
        (Some(10), Some(0), Some(0)),
        "{v}"
    );
    let stages: Vec<&str> =
        v["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["dedupe", "punctuation"]);
    assert_eq!(v["stages"][0]["calls"], 10);

    // Without the punctuation stage: exactly the six answers it had fixed change.
    let changed = dir.path().join("poem-plain.yaml");
    std::fs::write(&changed, poem.replace("  - plugin: punctuation\n", "")).unwrap();
    let (code, out, err) = replay(&db, &changed, &["--json", "--source", "poem", "--diffs", "2"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["replayed"].as_u64(), v["changed"].as_u64(), v["unchanged"].as_u64()),
        (Some(10), Some(6), Some(4)),
        "{v}"
    );
    let c = &v["changes"][0];
    assert!(
        c["before"].as_str().unwrap().contains('，') && c["after"].as_str().unwrap().contains(','),
        "{c}"
    );
    assert!(c["diff"].as_str().unwrap().contains("[-，好吗？-]{+,好吗?+}"), "{c}");
    assert_eq!(v["changes"].as_array().unwrap().len(), 2);
    // The text report, --limit and --since.
    let (code, out, _) = replay(&db, &changed, &["--source", "poem", "--limit", "3"]);
    assert_eq!(code, 0);
    assert!(out.contains("replayed 3 logged answers of `poem`") && out.contains("dedupe"), "{out}");
    let (_, out, _) = replay(&db, &changed, &["--json", "--source", "poem", "--since", "2999-01-01"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["replayed"], 0);
    let (_, out, _) = replay(&db, &changed, &["--json", "--source", "poem", "--since", "1d"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["replayed"], 10);

    // A failing stage: exit status 1 and the failures named.
    let failing = dir.path().join("poem-evil.yaml");
    std::fs::write(
        &failing,
        format!("{poem}  - plugin: guest_evil\n    name: evil\n    config: {{ mode: unreachable }}\n"),
    )
    .unwrap();
    let (code, out, _) = replay(&db, &failing, &["--json", "--source", "poem"]);
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["failed"], 10);
    assert!(v["failures"][0]["error"].as_str().unwrap().contains("evil"), "{v}");
}
