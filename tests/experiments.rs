//! Experiments end to end over HTTP on loopback: sticky assignment, the split against the
//! weights, the same assignment after a restart, per-request assignment without a user, load
//! errors and hot reload.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::server::{Options, POEM, TestServer, expect_error, start};

/// A second pipeline: the same prompt, the tone plugin added (its answers differ).
fn poem_warm() -> String {
    format!("{POEM}  - plugin: tone\n    config: {{ presets: [en-warm] }}\n")
}

const AB: &str = "description: poem, plain vs warm\nvariants:\n  - pipeline: poem\n    weight: 70\n  - pipeline: poem-warm\n    name: warm\n    weight: 30\n";

/// No post-processors: the cheapest pipeline, for tests that make thousands of requests.
const LIGHT: &str = "variables:\n  - { name: input, required: true }\nprompt:\n  plugin: persona\n  config:\n    template: \"{{ input }}\"\n";

fn light_options(experiments: Vec<(&'static str, String)>) -> Options {
    Options {
        files: vec![("poem.yaml", LIGHT.to_string()), ("poem-warm.yaml", LIGHT.to_string())],
        experiments,
        ..Options::default()
    }
}

fn options(experiments: Vec<(&'static str, String)>) -> Options {
    Options {
        files: vec![("poem.yaml", POEM.to_string()), ("poem-warm.yaml", poem_warm())],
        experiments,
        ..Options::default()
    }
}

/// One client for every request (building a client costs more than a request here).
fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Asks `model` as `user` (in the body, or in the header when `header`) and returns the variant
/// that answered.
async fn variant_of(
    server: &TestServer,
    model: &str,
    user: Option<&str>,
    header: bool,
    stream: bool,
) -> String {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "hello."}], "stream": stream});
    let mut request = http().post(server.url("/v1/chat/completions"));
    match (user, header) {
        (Some(u), true) => request = request.header("X-Pipehost-User", u),
        (Some(u), false) => body["user"] = json!(u),
        (None, _) => {}
    }
    let response = request.body(body.to_string()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let last: Value = if stream {
        support::server::sse_data(&text)
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|c| c["pipehost"].is_object())
            .unwrap_or_else(|| panic!("no pipehost object in {text}"))
    } else {
        serde_json::from_str(&text).unwrap()
    };
    assert_eq!(last["model"], model, "{last}");
    let variant = last["pipehost"]["variant"].as_str().unwrap_or_else(|| panic!("{last}")).to_string();
    let pipeline = last["pipehost"]["pipeline"].as_str().unwrap();
    assert_eq!(pipeline, if variant == "warm" { "poem-warm" } else { "poem" });
    variant
}

/// The variant of each of `users` users, asked 16 at a time.
async fn assign_all(
    server: &Arc<TestServer>,
    users: usize,
    header: bool,
    stream: bool,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let ids: Vec<String> = (0..users).map(|u| format!("user-{u}")).collect();
    for chunk in ids.chunks(16) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|u| {
                let (server, u) = (server.clone(), u.clone());
                tokio::spawn(async move {
                    let v = variant_of(&server, "ab", Some(&u), header, stream).await;
                    (u, v)
                })
            })
            .collect();
        for t in tasks {
            let (u, v) = t.await.unwrap();
            out.insert(u, v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_are_sticky_split_by_weight_and_kept_across_a_restart() {
    let server = Arc::new(start(light_options(vec![("ab.yaml", AB.to_string())])).await);
    let first = assign_all(&server, 1000, false, false).await;
    // The split: poem ~ Binomial(1000, 0.7); within 4 standard deviations.
    let poem = first.values().filter(|v| *v == "poem").count() as f64;
    let sd = (1000.0f64 * 0.7 * 0.3).sqrt();
    assert!(
        (poem - 700.0).abs() < 4.0 * sd,
        "{poem} of 1000 users got poem (expected 700 ± {:.0})",
        4.0 * sd
    );
    assert_eq!(first.values().filter(|v| *v == "warm").count() as f64, 1000.0 - poem);
    // Sticky: again, with the user in the header instead, streaming.
    let again = assign_all(&server, 1000, true, true).await;
    assert_eq!(first, again, "every user keeps their variant across requests");
    // Listed as a model.
    let models: Value = server.get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["poem", "poem-warm", "ab"]);
    assert_eq!(server.get("/v1/models/ab").await.status(), 200);
    let server = Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();

    // A restarted server (nothing kept but the files) assigns alike.
    let server = Arc::new(start(light_options(vec![("ab.yaml", AB.to_string())])).await);
    let after = assign_all(&server, 1000, false, false).await;
    assert_eq!(first, after, "every user keeps their variant across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_user_each_request_is_assigned_anew() {
    let equal = "variants:\n  - pipeline: poem\n  - pipeline: poem-warm\n    name: warm\n";
    let by_request = format!("assign_by: request\n{equal}");
    let server = start(options(vec![("ab.yaml", equal.to_string()), ("per.yaml", by_request)])).await;
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..60 {
        *seen.entry(variant_of(&server, "ab", None, false, false).await).or_default() += 1;
    }
    // 60 fair coin flips: each side at least 10 times (fails with probability ~1e-7).
    assert!(
        seen.get("poem").copied().unwrap_or(0) >= 10 && seen.get("warm").copied().unwrap_or(0) >= 10,
        "{seen:?}"
    );
    // `assign_by: request`: one user flips between variants too.
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..60 {
        *seen.entry(variant_of(&server, "per", Some("alice"), false, false).await).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_are_located_and_listed() {
    let server = start(options(vec![
        ("poem.yaml", "variants:\n  - pipeline: poem-warm\n".to_string()),
        ("typo.yaml", "variants:\n  - pipeline: poem\n    weight: 0\n".to_string()),
        ("missing.yaml", "variants:\n  - pipeline: nope\n".to_string()),
        ("ok.yaml", "variants:\n  - pipeline: poem\n".to_string()),
    ]))
    .await;
    let list: Value = server.get("/v1/experiments").await.json().await.unwrap();
    let names: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ok"]);
    let errors: Vec<String> = list["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}:{}:{}", e["file"], e["line"], e["message"]))
        .collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    let all = errors.join("\n");
    assert!(all.contains("also the name of the pipeline"), "{all}");
    assert!(all.contains("typo.yaml\":3:") && all.contains("greater than 0"), "{all}");
    assert!(all.contains("missing.yaml\":2:") && all.contains("no pipeline named `nope`"), "{all}");
    // `poem` is still the pipeline.
    let v: Value = server
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "poem", "messages": [{"role": "user", "content": "x."}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(v["pipehost"]["variant"].is_null(), "{v}");
    let e = expect_error(server.get("/v1/experiments/typo").await, 404).await;
    assert_eq!(e["code"], "experiment_not_found");
    let ok: Value = server.get("/v1/experiments/ok").await.json().await.unwrap();
    assert_eq!(ok["variants"][0]["pipeline"], "poem", "{ok}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_reload_like_pipelines() {
    let mut opts = options(vec![("ab.yaml", AB.to_string())]);
    opts.watch = true;
    let server = start(opts).await;
    let file = server.dir.path().join("experiments/ab.yaml");
    // Only `warm` from now on.
    std::fs::write(&file, "variants:\n  - pipeline: poem-warm\n    name: warm\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_warm = {
            let mut all = true;
            for u in 0..20 {
                all &= variant_of(&server, "ab", Some(&format!("u{u}")), false, false).await == "warm";
            }
            all
        };
        if all_warm {
            break;
        }
        assert!(Instant::now() < deadline, "the edit was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken edit keeps the last good version serving, and says why.
    std::fs::write(&file, "variants:\n  - pipeline: poem\n    weight: nope\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: Value = server.get("/v1/experiments/ab").await.json().await.unwrap();
        if info["last_error"].is_string() {
            assert_eq!(info["variants"][0]["name"], "warm", "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "the broken edit was not reported: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(variant_of(&server, "ab", Some("u1"), false, false).await, "warm");
    // Deleting the file removes the experiment.
    std::fs::remove_file(&file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server
            .post_json(
                "/v1/chat/completions",
                &json!({"model": "ab", "messages": [{"role": "user", "content": "x."}]}),
            )
            .await;
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the experiment was not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_over_http_and_from_the_command_line_agree_with_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let mut opts = light_options(vec![("ab.yaml", AB.to_string())]);
    opts.db = Some(pipehost::store::DbUrl::Sqlite(db.clone()));
    let server = Arc::new(start(opts).await);
    // 40 users, 2 requests each; thumbs up from even users on `poem`, from every user on `warm`.
    let mut expected: HashMap<String, (u64, u64, f64)> = HashMap::new(); // requests, thumbs, ups
    let mut ids = Vec::new();
    for u in 0..40 {
        for _ in 0..2 {
            let body = json!({"model": "ab", "user": format!("u{u}"), "messages": [{"role": "user", "content": "hi."}]});
            let v: Value = http()
                .post(server.url("/v1/chat/completions"))
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let variant = v["pipehost"]["variant"].as_str().unwrap().to_string();
            let up = if variant == "warm" || u % 2 == 0 { 1 } else { 0 };
            let r = http()
                .post(server.url("/v1/feedback"))
                .body(json!({"response_id": v["id"], "value": up}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let e = expected.entry(variant).or_default();
            e.0 += 1;
            e.1 += 1;
            e.2 += f64::from(up);
            ids.push(v["id"].as_str().unwrap().to_string());
        }
    }
    let body: Value = server.get("/v1/experiments/ab").await.json().await.unwrap();
    let results = &body["results"];
    assert_eq!(results["baseline"], "poem", "{body}");
    for v in results["variants"].as_array().unwrap() {
        let (requests, thumbs, ups) = expected[v["name"].as_str().unwrap()];
        assert_eq!(v["requests"].as_u64(), Some(requests), "{v}");
        assert_eq!(v["users"].as_u64(), Some(requests / 2), "{v}");
        assert_eq!(v["feedback"]["thumbs"]["n"].as_u64(), Some(thumbs), "{v}");
        assert!(
            (v["feedback"]["thumbs"]["mean"].as_f64().unwrap() - ups / thumbs as f64).abs() < 1e-12,
            "{v}"
        );
        let [lo, hi] = [0, 1].map(|i| v["feedback"]["thumbs"]["interval"][i].as_f64().unwrap());
        assert!(lo < hi, "{v}");
        assert!(v["prob_best"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["latency_ms_p50"].as_f64().unwrap() > 0.0, "{v}");
    }
    let warm = results["variants"].as_array().unwrap().iter().find(|v| v["name"] == "warm").unwrap();
    assert!(warm["feedback"]["thumbs"]["lift"]["estimate"].as_f64().unwrap() > 0.0, "{warm}");
    // 80 answers split 70/30 leave `warm` with fewer than 30 thumbs or no clear winner: either
    // way no winner may be named from so little.
    assert_ne!(results["verdict"]["status"], "winner", "{results}");
    // Pairwise: the first two answers compared (they may share a variant: then not counted).
    let r = http()
        .post(server.url("/v1/feedback"))
        .body(json!({"response_ids": [ids[0], ids[2]], "preferred": ids[0]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The command line reads the same store and prints the same report.
    let body: Value = server.get("/v1/experiments/ab").await.json().await.unwrap();
    let experiments_dir = server.dir.path().join("experiments");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .args(["experiments", "report", "ab", "--json", "--db"])
        .arg(format!("sqlite:{}", db.display()))
        .arg("--experiments")
        .arg(&experiments_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, body["results"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .args(["experiments", "report", "ab", "--db"])
        .arg(format!("sqlite:{}", db.display()))
        .arg("--experiments")
        .arg(&experiments_dir)
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("thumbs") && table.contains("P(best)") && table.contains("warm"), "{table}");
    let status = body["results"]["verdict"]["status"].as_str().unwrap();
    assert!(table.contains(&format!("{status}: ")), "{table}");
    let server = Arc::into_inner(server).unwrap();
    server.stop().await.unwrap();
}
