//! The store on SQLite: request-log writes per second (through the queue and the writer
//! thread), feedback writes per second (the `POST /v1/feedback` store call: existence check +
//! upsert, one transaction each), and the time of an experiment report over N logged answers.
//!
//!     cargo bench -p pipehost --bench store                 # 1,000,000 answers
//!     cargo bench -p pipehost --bench store -- --rows 100000
//!
//! Rows look like `--log-bodies full` records of the `full` echo benchmark: a 256-character
//! answer, its raw text, variables, messages and four stage outputs (~2.5 KB each).

use std::time::{Duration, Instant};

use pipehost::experiment::stats;
use pipehost::store::{DbUrl, Feedback, ResponseRow, Store, StoreOptions};
use serde_json::json;

fn row(i: u64, text: &str) -> ResponseRow {
    let variant = if i.is_multiple_of(2) { "poem" } else { "warm" };
    let stages: Vec<serde_json::Value> = ["prompt", "dedupe", "punctuation", "tone", "truncate"]
        .iter()
        .map(|s| json!({"stage": s, "plugin": s, "sha256": "0".repeat(64), "ms": 0.05, "output": text}))
        .collect();
    ResponseRow {
        id: format!("chatcmpl-bench{i:012}"),
        created_ms: 1_796_000_000_000 + i as i64,
        pipeline: if i.is_multiple_of(2) { "poem".into() } else { "poem-warm".into() },
        pipeline_sha256: "0".repeat(64),
        experiment: Some("ab".into()),
        variant: Some(variant.into()),
        user: Some(format!("user-{}", i % 50_000)),
        finish_reason: "eos".into(),
        latency_ms: 0.5 + (i % 97) as f64 / 10.0,
        ttft_ms: 0.2,
        prompt_tokens: 40,
        completion_tokens: 60 + (i % 13) as i64,
        raw_text: Some(text.into()),
        text: Some(text.into()),
        detail: json!({
            "source": "chat", "stream": false, "backend": "echo",
            "params": {"temperature": 0.8, "top_p": 0.9, "seed": i},
            "vars": {"input": text}, "history": [],
            "messages": [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": text}],
            "stages": stages,
        }),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: u64 = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let url = DbUrl::Sqlite(dir.path().join("bench.db"));
    let store = Store::open(&url, StoreOptions::default()).unwrap();
    // 256 characters of model-like mixed text.
    let text: String = "今天天气很好，我们去公园散步吧。The autumn wind is cool and the leaves are turning gold. 湖面上有几只白鹭，远处传来孩子们的笑声。".repeat(4).chars().take(256).collect();

    // 1. The request log: as fast as the writer takes them (a full queue is waited out here,
    //    where the server would drop and count).
    let t = Instant::now();
    for i in 0..rows {
        while !store.log(row(i, &text)) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    store.flush(Duration::from_secs(3600));
    let secs = t.elapsed().as_secs_f64();
    let s = store.stats();
    assert_eq!(s.written, rows, "{s:?}");
    println!(
        "request log: {rows} records in {secs:.1} s = {:.0} records/s (full queue waited out {} times)",
        rows as f64 / secs,
        s.dropped_queue_full
    );
    let bytes = std::fs::metadata(dir.path().join("bench.db")).map_or(0, |m| m.len())
        + std::fs::metadata(dir.path().join("bench.db-wal")).map_or(0, |m| m.len());
    println!(
        "database: {:.0} MB ({:.2} KB per record)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / rows as f64
    );

    // 2. Feedback: 5 rounds of 5,000 thumbs on distinct answers (one transaction each).
    let mut rates = Vec::new();
    for round in 0..5u64 {
        let t = Instant::now();
        let n = 5_000u64;
        for k in 0..n {
            let id = format!("chatcmpl-bench{:012}", (round * n + k) * 7 % rows);
            assert!(store.exists(&id).unwrap());
            store
                .put_feedback(&Feedback {
                    response_id: id,
                    name: "thumbs".into(),
                    value: (k % 3 == 0) as u8 as f64,
                    comment: None,
                    created_ms: 0,
                })
                .unwrap();
        }
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "feedback: median {:.0} writes/s over 5 rounds of 5000 (min {:.0}, max {:.0})",
        median(rates.clone()),
        rates.iter().cloned().fold(f64::INFINITY, f64::min),
        rates.iter().cloned().fold(0.0, f64::max)
    );

    // 3. The report: read back and compute, 5 times.
    let pipelines =
        vec![("poem".to_string(), "poem".to_string()), ("warm".to_string(), "poem-warm".to_string())];
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t = Instant::now();
        let data = store.experiment_data("ab", &pipelines).unwrap();
        let report = stats::report("ab", None, &data);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        last = Some(report);
    }
    let report = last.unwrap();
    let requests: u64 = report.variants.iter().map(|v| v.requests).sum();
    assert_eq!(requests, rows);
    println!(
        "report over {rows} logged answers (25,000 thumbs): median {:.0} ms over 5 runs (min {:.0}, max {:.0})",
        median(times.clone()),
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        times.iter().cloned().fold(0.0, f64::max)
    );
}
