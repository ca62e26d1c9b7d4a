//! The playground: its API on a loopback server (drafts run and checked, saves validated and
//! atomic, names, read-only, keys and origins), and the page itself driven in headless Chromium
//! (Debian's `chromium` + `chromium-driver`; scripts/test.sh installs them when missing) against
//! the real `pipehost serve` binary, with the echo backend and once with the tiny reference model.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::server::{Options, TestServer, expect_error, sse_data, start};

const DRAFT: &str = r#"
description: A draft.
variables:
  - { name: input, required: true }
prompt:
  plugin: persona
  config:
    role: You are a poet.
    template: "{{ input }}"
post:
  - plugin: dedupe
  - plugin: truncate
    config: { max: 12 }
"#;

fn put(server: &TestServer, name: &str, yaml: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().put(server.url(&format!("/v1/pipelines/{name}"))).json(&json!({"yaml": yaml}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_runs_with_every_stage_output() {
    let server = start(Options::default()).await;
    let input = "The rain falls. The rain falls. A bird sings outside.";
    let body = json!({"yaml": DRAFT, "vars": {"input": input}});
    let r = server.post_json("/v1/playground/run", &body).await;
    assert_eq!(r.status(), 200);
    let record: Value = r.json().await.unwrap();
    assert!(record["id"].as_str().unwrap().starts_with("pg-"), "{record}");
    assert_eq!(record["raw_text"], input);
    assert_eq!(record["messages"][0]["role"], "system");
    assert_eq!(record["messages"][1]["content"], input);
    let stages = record["stages"].as_array().unwrap();
    assert_eq!(stages[0]["stage"], "prompt");
    // dedupe drops the repeated sentence; truncate then cuts to 12 characters.
    assert_eq!(stages[1]["output"], "The rain falls. A bird sings outside.");
    let cut = stages[2]["output"].as_str().unwrap();
    assert!(cut.chars().count() <= 12, "{cut:?}");
    assert_eq!(record["text"], cut);

    // Streamed: the same text in deltas, then the same traced record.
    let body = json!({"yaml": DRAFT, "vars": {"input": input}, "stream": true});
    let text = server.post_json("/v1/playground/run", &body).await.text().await.unwrap();
    let events = sse_data(&text);
    let done: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    let deltas: String = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deltas, cut);
    assert_eq!(done["text"], cut);
    // truncate stopped generation, so dedupe saw only the start of the answer (its unfinished
    // tail released at the finish): what it passed on is that start, less any repeat.
    let deduped = done["stages"][1]["output"].as_str().unwrap();
    let raw = done["raw_text"].as_str().unwrap();
    assert!(!deduped.is_empty() && raw.starts_with(deduped), "{done}");
    assert!(raw.chars().count() < input.chars().count(), "generation was cut short: {raw:?}");
    assert_eq!(done["stages"][2]["output"], cut);
    assert_eq!(done["finish_reason"], "plugin_stop");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_drafts_are_located() {
    let server = start(Options::default()).await;
    let cases = [
        // YAML syntax.
        ("prompt: [unclosed\n", 1, "", ""),
        // An unknown field, with its line and a suggestion.
        (
            "prompt:\n  plugin: persona\n  config: { template: x }\nparams:\n  temprature: 1\n",
            5,
            "temprature",
            "did you mean `temperature`",
        ),
        // The plugin's own validate-config, at the stage's config line.
        (
            "prompt:\n  plugin: persona\n  config: { template: x }\npost:\n  - plugin: truncate\n    config: { max: 0 }\n",
            6,
            "`post[0].config`",
            "max",
        ),
    ];
    for (yaml, line, needle, needle2) in cases {
        let body = json!({"yaml": yaml, "vars": {}});
        let err = expect_error(server.post_json("/v1/playground/run", &body).await, 400).await;
        assert_eq!(err["code"], "invalid_pipeline", "{err}");
        assert_eq!(err["param"], "yaml");
        let first = &err["errors"][0];
        assert_eq!(first["line"], line, "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(&format!("draft.yaml:{line}:")), "{message}");
        assert!(message.contains(needle) && message.contains(needle2), "{message}");
        // The check endpoint reports the same problems without running anything.
        let r = server.post_json("/v1/playground/check", &json!({"yaml": yaml})).await;
        let check: Value = r.json().await.unwrap();
        assert_eq!(check["ok"], false);
        assert_eq!(check["errors"][0]["line"], line, "{check}");
    }
    let ok: Value =
        server.post_json("/v1/playground/check", &json!({"yaml": DRAFT})).await.json().await.unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    // A bad variable is the request's fault, not the draft's.
    let err = expect_error(server.post_json("/v1/playground/run", &json!({"yaml": DRAFT})).await, 400).await;
    assert_eq!(err["param"], "vars.input");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saving_validates_writes_and_serves() {
    let server = start(Options::default()).await;
    let dir = server.dir.path().to_owned();

    let r = put(&server, "fresh", DRAFT).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let saved: Value = r.json().await.unwrap();
    assert_eq!(saved["name"], "fresh");
    assert_eq!(saved["yaml"], DRAFT);
    assert_eq!(std::fs::read_to_string(dir.join("fresh.yaml")).unwrap(), DRAFT);
    // Served at once, and its file text comes back with it.
    let models: Value = server.get("/v1/models").await.json().await.unwrap();
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "fresh"), "{models}");
    let got: Value = server.get("/v1/pipelines/fresh").await.json().await.unwrap();
    assert_eq!(got["yaml"], DRAFT);
    assert_eq!(got["spec"]["post"][1]["config"]["max"], 12);

    // Replacing: 200. An invalid text: 400 with line and column, and the file is untouched.
    let changed = DRAFT.replace("max: 12", "max: 20");
    assert_eq!(put(&server, "fresh", &changed).send().await.unwrap().status(), 200);
    let err =
        expect_error(put(&server, "fresh", &DRAFT.replace("max: 12", "max: -3")).send().await.unwrap(), 400)
            .await;
    assert_eq!(err["code"], "invalid_pipeline");
    assert!(err["message"].as_str().unwrap().contains("fresh.yaml:13:"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("fresh.yaml")).unwrap(), changed);
    // A `name:` that disagrees with the name saved under.
    let err =
        expect_error(put(&server, "other", &format!("name: elsewhere\n{DRAFT}")).send().await.unwrap(), 400)
            .await;
    assert!(err["message"].as_str().unwrap().contains("`elsewhere`"), "{err}");
    assert!(!dir.join("other.yaml").exists());
    // Names that could leave the folder or hide a file are refused before any file is touched.
    for bad in ["..%2Fescape", ".hidden", "UPPER", "a%20b", &"x".repeat(65)] {
        let err = expect_error(put(&server, bad, DRAFT).send().await.unwrap(), 400).await;
        assert_eq!(err["code"], "invalid_name", "{bad}: {err}");
        assert_eq!(err["param"], "name");
    }
    assert_eq!(put(&server, "a/b", DRAFT).send().await.unwrap().status(), 404);
    assert!(!dir.parent().unwrap().join("escape.yaml").exists());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "no temporary files are left: {names:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_another_file_is_a_conflict() {
    let options = Options { files: vec![("a.yaml", format!("name: taken\n{DRAFT}"))], ..Options::default() };
    let server = start(options).await;
    let err = expect_error(put(&server, "taken", DRAFT).send().await.unwrap(), 409).await;
    assert_eq!(err["code"], "name_taken");
    assert!(err["message"].as_str().unwrap().contains("a.yaml"), "{err}");
    assert!(!server.dir.path().join("taken.yaml").exists());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_of_one_name_leave_one_whole_file() {
    let server = start(Options::default()).await;
    // Distinct texts, each long enough that a torn write would show.
    let texts: Vec<String> = (0..8)
        .map(|i| format!("{DRAFT}# version {i}\n{}\n", format!("# {}\n", "padding ".repeat(200)).repeat(20)))
        .collect();
    let responses =
        futures_util::future::join_all(texts.iter().map(|t| put(&server, "race", t).send())).await;
    let statuses: Vec<u16> = responses.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    let on_disk = std::fs::read_to_string(server.dir.path().join("race.yaml")).unwrap();
    assert!(texts.contains(&on_disk), "the file is one of the texts, whole");
    let served: Value = server.get("/v1/pipelines/race").await.json().await.unwrap();
    assert_eq!(served["yaml"], on_disk);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_key_the_origin_and_a_writable_server() {
    let mut options = Options::default();
    options.config.api_key = Some("sekret".into());
    let server = start(options).await;
    let err = expect_error(put(&server, "x", DRAFT).send().await.unwrap(), 401).await;
    assert_eq!(err["code"], "invalid_api_key");
    let run = reqwest::Client::new().post(server.url("/v1/playground/run")).json(&json!({"yaml": DRAFT}));
    expect_error(run.send().await.unwrap(), 401).await;
    // The page needs no key; its API calls do.
    assert_eq!(server.get("/").await.status(), 200);
    let keyed = |r: reqwest::RequestBuilder| r.bearer_auth("sekret");
    // Another origin's page may not save or run, even with the key.
    let host = server.addr.to_string();
    for origin in ["http://evil.example", "null", &format!("http://{host}.evil.example")] {
        let r = keyed(put(&server, "x", DRAFT)).header("Origin", origin).send().await.unwrap();
        let err = expect_error(r, 403).await;
        assert_eq!(err["code"], "cross_origin", "{origin}");
    }
    let r = keyed(put(&server, "x", DRAFT)).header("Sec-Fetch-Site", "cross-site").send().await.unwrap();
    expect_error(r, 403).await;
    let r = keyed(put(&server, "x", DRAFT)).header("Origin", format!("http://{host}")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    server.stop().await.unwrap();

    let mut options = Options::default();
    options.config.read_only = true;
    let server = start(options).await;
    let err = expect_error(put(&server, "x", DRAFT).send().await.unwrap(), 403).await;
    assert_eq!(err["code"], "read_only");
    assert!(!server.dir.path().join("x.yaml").exists());
    // Drafts still run.
    let r = server.post_json("/v1/playground/run", &json!({"yaml": DRAFT, "vars": {"input": "hi"}})).await;
    assert_eq!(r.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_offline_with_a_strict_policy() {
    let server = start(Options::default()).await;
    for path in ["/", "/playground/app.js", "/playground/style.css"] {
        let r = server.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"), "{csp}");
    }
    assert_eq!(server.get("/playground/nope.js").await.status(), 404);
    assert_eq!(server.get("/playground/..%2Fmod.rs").await.status(), 404);
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// In a real browser.

/// A child process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_paths() -> Option<(PathBuf, PathBuf)> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let driver = PathBuf::from("/usr/bin/chromedriver");
    match chromium {
        Some(c) if driver.exists() => Some((c, driver)),
        _ => {
            let required = std::env::var_os("PIPEHOST_REQUIRE_BROWSER").is_some();
            assert!(!required, "chromium or chromedriver is missing and PIPEHOST_REQUIRE_BROWSER is set");
            eprintln!(
                "skipped: chromium and chromium-driver are not installed (scripts/test.sh installs them)"
            );
            None
        }
    }
}

/// `pipehost serve` on a free port with a copy of the repository's pipelines; returns the
/// process, its base URL and the pipelines folder.
fn serve(pipelines: &Path, extra: &[&str]) -> (Kill, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .args(["serve", "--addr", "127.0.0.1:0", "--pipelines"])
        .arg(pipelines)
        .arg("--plugins")
        .arg(support::components_dir())
        // Its own request log (the default sits beside the pipelines folder, here shared /tmp).
        .arg("--db")
        .arg(format!("sqlite:{}", pipelines.join("log.db").display()))
        .args(extra)
        .env("PIPEHOST_CACHE_DIR", support::test_cache_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
            eprintln!("[serve] {line}");
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(120)).expect("pipehost serve did not start");
    (Kill(child), url)
}

fn copy_pipelines() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::repo_root().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

async fn chrome(chromium: &Path, driver: &Path, profile: &Path) -> (Kill, Client) {
    // The test's own reqwest calls need a crypto provider (plain HTTP uses none).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Kill(child);
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            // Headless as root, and none of Chromium's own network traffic (there is none here).
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-quic", "--no-first-run", "--window-size=1500,1300",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let caps: serde_json::Map<String, Value> = caps.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (child, client),
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("chromedriver: {e}"),
        }
    }
}

fn tid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

/// The element `column-N [data-testid=id]`.
fn in_column(n: usize, id: &str) -> String {
    format!("{} {}", tid(&format!("column-{n}")), tid(id))
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set(c: &Client, css: &str, value: &str) {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::env::var_os("PIPEHOST_SCREENSHOT_DIR")
        .map_or_else(|| support::repo_root().join("target/playground-screenshots"), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), c.screenshot().await.unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_tunes_runs_compares_and_saves_in_chromium() {
    let Some((chromium, driver)) = browser_paths() else { return };
    let pipelines = copy_pipelines();
    // A paced echo so the streaming is visible; the echo answers with the prompt's user message.
    let experiments_dir = tempfile::tempdir().unwrap();
    let experiments = experiments_dir.path().to_owned();
    let (_serve, url) = serve(
        pipelines.path(),
        &["--model", "echo", "--echo-delay-ms", "40", "--experiments", experiments.to_str().unwrap()],
    );
    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = chrome(&chromium, &driver, profile.path()).await;
    c.goto(&url).await.unwrap();

    // Pick `poem`: its form shows the variables, persona's fields, parameters and stages.
    wait_until("the library", || async { c.find(Locator::Css("option[value=poem]")).await.is_ok() }).await;
    c.find(Locator::Css(&tid("pipeline-picker"))).await.unwrap().select_by_value("poem").await.unwrap();
    wait_until("poem's form", || async { c.find(Locator::Css(&tid("var-topic"))).await.is_ok() }).await;
    let temperature = in_column(0, "param-temperature");
    assert_eq!(
        c.find(Locator::Css(&temperature)).await.unwrap().prop("value").await.unwrap().as_deref(),
        Some("0.8")
    );
    for id in [
        "stage-0-enabled",
        "stage-1-enabled",
        "prompt-role",
        "prompt-constraint-1",
        "param-top_k",
        "param-stop",
    ] {
        c.find(Locator::Css(&in_column(0, id))).await.unwrap_or_else(|_| panic!("{id}"));
    }

    // Change the temperature and the style line; the template echoes the topic verbatim so the
    // (echo) answer shows what dedupe does. The answer carries markup that must stay text.
    set(&c, &temperature, "1.1").await;
    let row = c.find(Locator::Css(&in_column(0, "param-temperature-row"))).await.unwrap();
    assert!(row.attr("class").await.unwrap().unwrap().contains("changed"));
    set(&c, &in_column(0, "prompt-style"), "短句，留白，只写声音。").await;
    set(&c, &in_column(0, "prompt-template"), "{{ topic }}").await;
    // Several sentences: a stage emits a sentence once the next one starts, so text streams.
    let topic = "窗外下雨了。窗外下雨了。我在读书。风很轻。灯很暗 <img src=x onerror=\"window.__xss=1\">";
    set(&c, &tid("var-topic"), topic).await;

    // A second variant: a duplicate with a lower temperature.
    c.find(Locator::Css(&tid("add-variant"))).await.unwrap().click().await.unwrap();
    set(&c, &in_column(1, "param-temperature"), "0.3").await;

    // Run both with Ctrl+Enter (WebDriver's Control and Enter keys) and watch them stream: the
    // page itself records whether an answer had text while its figures were still pending (an
    // observer, so the check does not depend on how fast this test polls).
    let watch = r#"
        window.__streamed = [false, false];
        for (const i of [0, 1]) {
            const col = document.querySelector(`[data-testid="column-${i}"]`);
            const out = col.querySelector('[data-testid="output"]');
            const metrics = col.querySelector('[data-testid="metrics"]');
            new MutationObserver(() => {
                if (out.textContent && metrics.textContent === "…") window.__streamed[i] = true;
            }).observe(out, { childList: true, characterData: true, subtree: true });
        }"#;
    c.execute(watch, vec![]).await.unwrap();
    let ctrl_enter = "\u{E009}\u{E007}";
    c.find(Locator::Css(&tid("var-topic"))).await.unwrap().send_keys(ctrl_enter).await.unwrap();
    for i in 0..2 {
        wait_until("both answers", || async {
            text(&c, &in_column(i, "metrics")).await.contains("completion")
        })
        .await;
    }
    let streamed = c.execute("return window.__streamed", vec![]).await.unwrap();
    assert_eq!(streamed, json!([true, true]), "both columns showed text while streaming");
    screenshot(&c, "playground-variants.png").await;

    for i in 0..2 {
        let out = text(&c, &in_column(i, "output")).await;
        assert_eq!(out.matches("窗外下雨了").count(), 1, "dedupe kept one: {out}");
        assert!(out.contains("<img src=x onerror="), "markup shows as text: {out}");
        let metrics = text(&c, &in_column(i, "metrics")).await;
        assert!(metrics.contains("TTFT") && metrics.contains("tok/s"), "{metrics}");
    }
    let images = c
        .execute("return [document.querySelectorAll('img').length, window.__xss === undefined]", vec![])
        .await
        .unwrap();
    assert_eq!(images, json!([0, true]), "no element was made from the answer, no script ran");

    // The stage view: dedupe's removal as a deletion.
    c.find(Locator::Css(&format!("{} summary", in_column(0, "stage-view"))))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let removed = c.find(Locator::Css(&format!("{} del", in_column(0, "stage-diff-dedupe")))).await.unwrap();
    assert!(removed.text().await.unwrap().contains("窗外下雨了"), "dedupe's removal is shown");
    let raw = text(&c, &in_column(0, "stage-raw")).await;
    assert_eq!(raw.matches("窗外下雨了").count(), 2, "{raw}");
    screenshot(&c, "playground-stages.png").await;

    // The YAML of a column carries its changes.
    c.find(Locator::Css(&in_column(0, "view-yaml"))).await.unwrap().click().await.unwrap();
    let yaml = c.find(Locator::Css(&tid("yaml-text"))).await.unwrap().prop("value").await.unwrap().unwrap();
    assert!(yaml.contains("temperature: 1.1") && yaml.contains("短句，留白，只写声音。"), "{yaml}");
    c.find(Locator::Css(&tid("yaml-close"))).await.unwrap().click().await.unwrap();

    // An invalid stage config shows the plugin's own error beside it.
    set(&c, &in_column(1, "stage-1-config"), "{\"locale\": \"klingon\"}").await;
    wait_until("the plugin's validation error", || async {
        text(&c, &in_column(1, "stage-1-error")).await.contains("locale")
    })
    .await;

    // Blind: two answers as A and B; the choice lands in the history.
    c.find(Locator::Css(&tid("blind"))).await.unwrap().click().await.unwrap();
    c.find(Locator::Css(&tid("blind-choose-a"))).await.unwrap().click().await.unwrap();
    wait_until("the blind result", || async {
        text(&c, &tid("blind-result")).await.contains("A was variant")
    })
    .await;
    // Kept where the server keeps feedback: a pairwise preference on both logged runs.
    let result = text(&c, &tid("blind-result")).await;
    assert!(result.contains("recorded on the server"), "{result}");

    // Save variant A as a new pipeline; it is served at once.
    c.find(Locator::Css(&in_column(0, "save"))).await.unwrap().click().await.unwrap();
    set(&c, &tid("save-name"), "poem-rain").await;
    c.find(Locator::Css(&tid("save-confirm"))).await.unwrap().click().await.unwrap();
    wait_until("the save", || async { text(&c, &tid("status")).await.contains("saved poem-rain") }).await;
    let models: Value = reqwest::get(format!("{url}/v1/models")).await.unwrap().json().await.unwrap();
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "poem-rain"), "{models}");
    let saved = std::fs::read_to_string(pipelines.path().join("poem-rain.yaml")).unwrap();
    assert!(saved.contains("temperature: 1.1"), "{saved}");

    // A bad name shows the server's error and writes nothing.
    c.find(Locator::Css(&in_column(0, "save"))).await.unwrap().click().await.unwrap();
    set(&c, &tid("save-name"), "Bad Name").await;
    c.find(Locator::Css(&tid("save-confirm"))).await.unwrap().click().await.unwrap();
    wait_until("the save error", || async {
        text(&c, &tid("save-error")).await.contains("invalid pipeline name")
    })
    .await;
    c.find(Locator::Css(&tid("save-cancel"))).await.unwrap().click().await.unwrap();

    // The experiments panel: an A/B test between poem and poem-rain, some traffic with
    // thumbs, and the page shows each variant with its interval.
    std::fs::write(
        experiments.join("rain-ab.yaml"),
        "description: poem vs poem-rain\nvariants:\n  - pipeline: poem\n  - pipeline: poem-rain\n",
    )
    .unwrap();
    let client = reqwest::Client::new();
    wait_until("the experiment to load", || async {
        let r = client.get(format!("{url}/v1/experiments/rain-ab")).send().await.unwrap();
        r.status() == 200
    })
    .await;
    for user in 0..24 {
        let body = json!({"model": "rain-ab", "user": format!("u{user}"),
                          "messages": [{"role": "user", "content": "雨"}]});
        let answer: Value = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = answer["id"].as_str().unwrap().to_owned();
        let thumbs = json!({"response_id": id, "value": user % 3 != 0});
        let r = client.post(format!("{url}/v1/feedback")).json(&thumbs).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let report: Value =
        client.get(format!("{url}/v1/experiments/rain-ab")).send().await.unwrap().json().await.unwrap();
    let variants = report["results"]["variants"].as_array().unwrap_or_else(|| panic!("{report}"));
    let requests: u64 = variants.iter().map(|v| v["requests"].as_u64().unwrap_or(0)).sum();
    let thumbs: u64 = variants.iter().map(|v| v["feedback"]["thumbs"]["n"].as_u64().unwrap_or(0)).sum();
    assert_eq!((requests, thumbs), (24, 24), "{report}");
    c.refresh().await.unwrap();
    wait_until("the experiments panel", || async {
        c.find(Locator::Css(&format!("{} circle", tid("experiment-chart-thumbs")))).await.is_ok()
    })
    .await;
    for variant in ["poem", "poem-rain"] {
        let row = text(&c, &tid(&format!("experiment-variant-{variant}"))).await;
        assert!(row.contains('['), "{variant}: a mean with its interval: {row}");
    }
    let verdict = text(&c, &tid("experiment-verdict")).await;
    assert!(!verdict.is_empty());
    c.execute("document.querySelector('[data-testid=experiments]').scrollIntoView()", vec![]).await.unwrap();
    screenshot(&c, "playground-experiment.png").await;

    // The history survives a reload of the page.
    c.refresh().await.unwrap();
    wait_until("the history", || async { text(&c, &tid("history")).await.contains("blind A/B on poem") })
        .await;
    assert!(text(&c, &tid("history")).await.contains("poem: 2 variants"));
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_runs_the_tiny_reference_model() {
    let Some((chromium, driver)) = browser_paths() else { return };
    let reference = std::env::var_os("PIPEHOST_REFERENCE_DIR")
        .map_or_else(|| support::repo_root().join("../shared/reference"), PathBuf::from)
        .join("tiny-qwen3");
    if !reference.exists() {
        assert!(
            std::env::var_os("PIPEHOST_REQUIRE_REFERENCE").is_none(),
            "{} is missing",
            reference.display()
        );
        eprintln!("skipped: {} is missing", reference.display());
        return;
    }
    let pipelines = copy_pipelines();
    let model = reference.to_str().unwrap();
    let (_serve, url) = serve(pipelines.path(), &["--model", model, "--device", "cpu"]);
    let profile = tempfile::tempdir().unwrap();
    let (_driver, c) = chrome(&chromium, &driver, profile.path()).await;
    c.goto(&url).await.unwrap();
    wait_until("the library", || async { c.find(Locator::Css("option[value=qa]")).await.is_ok() }).await;
    c.find(Locator::Css(&tid("pipeline-picker"))).await.unwrap().select_by_value("qa").await.unwrap();
    wait_until("qa's form", || async { c.find(Locator::Css(&tid("var-question"))).await.is_ok() }).await;
    set(&c, &tid("var-question"), "天为什么是蓝的？").await;
    set(&c, &in_column(0, "param-max_tokens"), "12").await;
    set(&c, &in_column(0, "param-seed"), "7").await;
    c.find(Locator::Css(&in_column(0, "run"))).await.unwrap().click().await.unwrap();
    wait_until("the model's answer", || async {
        text(&c, &in_column(0, "metrics")).await.contains("completion")
    })
    .await;
    let metrics = text(&c, &in_column(0, "metrics")).await;
    assert!(metrics.contains("completion 12 tok") || metrics.contains("finish: eos"), "{metrics}");
    assert!(!text(&c, &in_column(0, "output")).await.is_empty() || metrics.contains("finish: eos"));
    c.close().await.unwrap();
}
