//! `pipehost bench http`: the host's overhead over HTTP, measured from outside the process.
//!
//! It starts a real `pipehost serve` as a child process (this executable) on a free loopback
//! port, with a temporary pipelines folder, a copy of the plugins and a fresh compile cache,
//! waits for `/readyz`, then drives it from its own tokio runtime: one keep-alive connection per
//! virtual client, each sending its next request as soon as the previous answer is complete.
//!
//! Three subjects alternate in rounds at every concurrency level, so machine noise hits them
//! alike: `/healthz` (HTTP alone), `bare` (the persona prompt builder and the echo backend, no
//! post-processors) and `full` (the same plus dedupe, punctuation, tone, truncate). The ratios
//! full/bare and bare/healthz are the numbers to compare across machines. So is the CPU time
//! per request (server and clients, from /proc/PID/stat): on a shared machine it does not
//! depend on what else runs. The server's peak RSS is read per level (VmHWM, reset with
//! /proc/PID/clear_refs before each level).
//!
//! `--reload-swaps N` turns it into the reload-under-load test (see `reload.rs`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::plugin::default_plugins_dir;

/// What `pipehost bench http` runs (its flags, parsed in `cli/bench.rs`).
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Concurrency levels (virtual clients, one connection each).
    pub concurrency: Vec<usize>,
    /// Measured seconds per subject and level (split into --rounds alternating rounds).
    pub duration: f64,
    /// Rounds per level; subjects alternate round by round.
    pub rounds: usize,
    /// Warm-up seconds per subject before the first level.
    pub warmup: f64,
    /// Stream the answers (SSE) and also report the time to the first delta.
    pub stream: bool,
    /// `echo`, or a local model folder for the candle backend (e.g. ../shared/reference/tiny-qwen3).
    pub model: String,
    /// `max_tokens` of the benchmark pipelines with a model (echo sends 256 characters).
    pub max_tokens: usize,
    /// Only these subjects (healthz, bare, full), e.g. `--subjects full` for a load test.
    pub subjects: Vec<String>,
    /// The server's `--max-queue`.
    pub max_queue: usize,
    /// Where the shipped plugins are [default: plugins/dist].
    pub plugins: Option<PathBuf>,
    /// Reload under load: while clients run, rewrite the pipeline file and swap a plugin this
    /// many times (broken versions included); checks every answer comes from one whole version.
    pub reload_swaps: Option<usize>,
    /// Milliseconds between two swaps in the reload-under-load test.
    pub swap_interval_ms: u64,
    /// Pass the server's stderr through (it is discarded otherwise).
    pub server_log: bool,
}

/// The echo backend's answer: model-like Chinese and English with the repetitions and stock
/// phrases the post-processors exist for; [`sample_text`] cuts it to 256 characters.
const PARAGRAPH: &str = include_str!("sample.txt");

/// `chars` characters of [`PARAGRAPH`], repeated as needed.
pub(crate) fn sample_text(chars: usize) -> String {
    PARAGRAPH.chars().cycle().take(chars).collect()
}

pub fn run(args: HttpOptions) -> Result<ExitCode> {
    // reqwest is built without a crypto provider and insists on one even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .context("starting the client runtime")?;
    if let Some(swaps) = args.reload_swaps {
        return rt.block_on(super::reload::reload_under_load(&args, swaps));
    }
    rt.block_on(bench_http(args))
}

// ---------------------------------------------------------------------------------------------
// The server child

/// A `pipehost serve` child with its own folders; killed and removed on drop.
pub(crate) struct ServerChild {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl ServerChild {
    /// Folders for a server: `pipelines/`, `plugins/` (a copy of `plugins` from `source`) and
    /// `cache/` (an empty compile cache, so every run compiles the same way).
    pub fn prepare(source: &Path, plugins: &[&str]) -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir().context("creating a temporary folder")?;
        for sub in ["pipelines", "plugins", "cache"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        for name in plugins {
            let from = source.join(format!("{name}.wasm"));
            std::fs::copy(&from, dir.path().join("plugins").join(format!("{name}.wasm")))
                .with_context(|| format!("{}: run scripts/build-plugins.sh first", from.display()))?;
        }
        Ok(dir)
    }

    pub fn pipelines(&self) -> PathBuf {
        self.dir.path().join("pipelines")
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Starts `pipehost serve` on the prepared folders and waits until `/readyz` answers 200.
    pub async fn start(dir: tempfile::TempDir, model: &str, max_queue: usize, log: bool) -> Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .args(["--addr", "127.0.0.1:0", "--model", model])
            .arg("--pipelines")
            .arg(dir.path().join("pipelines"))
            .arg("--plugins")
            .arg(dir.path().join("plugins"))
            .args(["--max-queue", &max_queue.to_string()])
            .env("PIPEHOST_CACHE_DIR", dir.path().join("cache"))
            .env_remove("PIPEHOST_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting pipehost serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        // The banner names the port (port 0 binds a free one); the rest of stderr keeps
        // draining on this thread so the child never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut banner = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if log {
                    eprintln!("[serve] {line}");
                }
                if tx.is_none() {
                    continue;
                }
                banner.push_str(&line);
                banner.push('\n');
                if let Some(rest) = line.split("listening on http://").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").parse();
                    let _ = tx.send(addr.map_err(|e| format!("{e}: {line}")));
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(format!("pipehost serve exited:\n{banner}")));
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(300)))
            .await?
            .context("waiting for pipehost serve to listen")?
            .map_err(|e| anyhow::anyhow!(e))?;
        let server = ServerChild { child, addr, dir };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let ok = client.get(server.url("/readyz")).send().await.is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("pipehost serve never became ready");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A `VmHWM`/`VmRSS`-style line of /proc/PID/status, in KiB.
    fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    }

    /// CPU time the child has used (user + system, all threads), from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(&format!("/proc/{}/stat", self.child.id()))
    }

    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// Resets the peak RSS to the current RSS (Linux: `5` in clear_refs), for a per-level peak.
    pub fn reset_peak_rss(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of a /proc/.../stat file. Clock ticks are 100 Hz on every Linux build that
/// matters here (USER_HZ); a round of a few seconds makes the 10 ms granularity negligible.
pub(crate) fn cpu_time(stat: &str) -> Duration {
    let ticks = std::fs::read_to_string(stat).ok().and_then(|s| {
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

// ---------------------------------------------------------------------------------------------
// Requests and their outcomes

/// What one virtual client sends.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Healthz,
    Chat { model: String, stream: bool },
}

/// The answer to one request.
pub(crate) enum Outcome {
    Ok(Answer),
    Busy,
    Failed(String),
}

/// A successful chat answer (empty for `/healthz`).
#[derive(Default)]
pub(crate) struct Answer {
    pub text: String,
    /// Time to the first non-empty delta (streaming).
    pub first_delta: Option<Duration>,
    /// The `pipehost` extension object (the run record).
    pub record: Value,
}

/// One keep-alive connection (reqwest keeps at most one idle connection per client here).
pub(crate) fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .http1_only()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(600))
        .build()?)
}

pub(crate) fn chat_body(model: &str, stream: bool, input: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": input}],
    }))
    .expect("serialising a JSON value")
}

/// Sends one request and reads the whole answer.
pub(crate) async fn request(client: &reqwest::Client, base: &str, target: &Target, body: &[u8]) -> Outcome {
    let started = Instant::now();
    let (url, stream) = match target {
        Target::Healthz => (format!("{base}/healthz"), false),
        Target::Chat { stream, .. } => (format!("{base}/v1/chat/completions"), *stream),
    };
    let req = match target {
        Target::Healthz => client.get(url),
        Target::Chat { .. } => {
            client.post(url).header("content-type", "application/json").body(body.to_vec())
        }
    };
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("sending: {e:#}")),
    };
    let status = resp.status().as_u16();
    if status == 429 {
        let _ = resp.bytes().await;
        return Outcome::Busy;
    }
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Outcome::Failed(format!("HTTP {status}: {text}"));
    }
    if matches!(target, Target::Healthz) {
        return match resp.bytes().await {
            Ok(_) => Outcome::Ok(Answer::default()),
            Err(e) => Outcome::Failed(format!("reading: {e:#}")),
        };
    }
    if !stream {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("reading: {e:#}")),
        };
        let mut v: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(format!("bad JSON: {e}")),
        };
        let Some(text) = v["choices"][0]["message"]["content"].as_str() else {
            return Outcome::Failed(format!("no content: {v}"));
        };
        let text = text.to_owned();
        return Outcome::Ok(Answer { text, first_delta: None, record: v["pipehost"].take() });
    }
    // SSE: events are separated by a blank line; only `data:` lines matter here.
    let mut answer = Answer::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut done = false;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Outcome::Failed(format!("reading the stream: {e:#}")),
        };
        buf.extend_from_slice(&chunk);
        while let Some(end) = find(&buf, b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let Ok(event) = std::str::from_utf8(&event) else {
                return Outcome::Failed("invalid UTF-8 in the stream".into());
            };
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else { continue };
                let data = data.trim_start();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let mut v: Value = match serde_json::from_str(data) {
                    Ok(v) => v,
                    Err(e) => return Outcome::Failed(format!("bad event JSON: {e}: {data}")),
                };
                if v.get("error").is_some() {
                    return Outcome::Failed(format!("error event: {data}"));
                }
                if let Some(text) = v["choices"][0]["delta"]["content"].as_str()
                    && !text.is_empty()
                {
                    answer.first_delta.get_or_insert_with(|| started.elapsed());
                    answer.text.push_str(text);
                }
                if v.get("pipehost").is_some() {
                    answer.record = v["pipehost"].take();
                }
            }
        }
    }
    if !done {
        return Outcome::Failed("the stream ended without [DONE]".into());
    }
    Outcome::Ok(answer)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Latencies and counts of one subject.
#[derive(Default)]
pub(crate) struct Stats {
    pub latency_us: Vec<u64>,
    pub first_delta_us: Vec<u64>,
    pub busy: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// CPU time the server and this process (the clients) used meanwhile.
    pub server_cpu: Duration,
    pub client_cpu: Duration,
}

impl Stats {
    pub fn merge(&mut self, other: Stats) {
        self.latency_us.extend(other.latency_us);
        self.first_delta_us.extend(other.first_delta_us);
        self.busy += other.busy;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.server_cpu += other.server_cpu;
        self.client_cpu += other.client_cpu;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Checks a successful answer; an `Err` counts the request as failed.
pub(crate) type Check = Arc<dyn Fn(&Answer) -> Result<(), String> + Send + Sync>;

/// Runs `clients` for `duration`, each sending `target` back to back. `check` sees every
/// successful answer and may turn it into an error.
pub(crate) async fn drive(
    clients: &[reqwest::Client],
    base: &str,
    target: &Target,
    body: &Arc<Vec<u8>>,
    duration: Duration,
    check: Option<Check>,
) -> Stats {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let (client, base, target, body, check) =
            (client.clone(), base.to_owned(), target.clone(), body.clone(), check.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let outcome = request(&client, &base, &target, &body).await;
                let elapsed = t.elapsed();
                match outcome {
                    Outcome::Ok(answer) => match check.as_ref().map_or(Ok(()), |c| c(&answer)) {
                        Ok(()) => {
                            stats.latency_us.push(elapsed.as_micros() as u64);
                            if let Some(d) = answer.first_delta {
                                stats.first_delta_us.push(d.as_micros() as u64);
                            }
                        }
                        Err(e) => {
                            stats.errors += 1;
                            stats.first_error.get_or_insert(e);
                        }
                    },
                    Outcome::Busy => {
                        stats.busy += 1;
                        // As a client honouring Retry-After would, but briefly: keep the load on.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Outcome::Failed(e) => {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(e);
                    }
                }
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for task in tasks {
        match task.await {
            Ok(s) => total.merge(s),
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

pub(crate) fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64
}

pub(crate) fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "–".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.0} µs", us)
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

// ---------------------------------------------------------------------------------------------
// The overhead benchmark

/// The benchmark pipelines: `bare` (prompt builder only) and `full` (plus four post-processors).
fn write_pipelines(dir: &Path, model: bool, max_tokens: usize) -> Result<()> {
    let params = if model {
        // Greedy, so every run generates the same number of tokens.
        format!("params: {{ max_tokens: {max_tokens}, temperature: 0 }}\n")
    } else {
        String::new()
    };
    let head = format!(
        "{params}variables:\n  - {{ name: input, required: true, max_chars: 4000 }}\n\
         prompt:\n  plugin: persona\n  config:\n    role: 你是一位温暖、真诚的朋友，善于倾听。\n    \
         style: 先回应对方的感受，再温和地给出陪伴或建议。\n    constraints:\n      - 回答控制在150字以内\n    \
         template: \"{{{{ input }}}}\"\n"
    );
    std::fs::write(dir.join("bare.yaml"), format!("{head}post: []\n"))?;
    let post = "post:\n  - plugin: dedupe\n  - plugin: punctuation\n  - plugin: tone\n    config:\n      \
                presets: [zh-warm, en-warm]\n  - plugin: truncate\n    config: { max: 1000 }\n";
    std::fs::write(dir.join("full.yaml"), format!("{head}{post}"))?;
    Ok(())
}

async fn bench_http(args: HttpOptions) -> Result<ExitCode> {
    if args.rounds == 0 || args.duration <= 0.0 || args.concurrency.contains(&0) {
        bail!("need --rounds >= 1, --duration > 0 and concurrency levels >= 1");
    }
    for s in &args.subjects {
        if !["healthz", "bare", "full"].contains(&s.as_str()) {
            bail!("unknown subject `{s}` (healthz, bare, full)");
        }
    }
    let source = args.plugins.clone().unwrap_or_else(default_plugins_dir);
    let dir = ServerChild::prepare(&source, &["persona", "dedupe", "punctuation", "tone", "truncate"])?;
    let with_model = args.model != "echo";
    write_pipelines(&dir.path().join("pipelines"), with_model, args.max_tokens)?;
    let model = if with_model {
        std::fs::canonicalize(&args.model).with_context(|| format!("model folder {}", args.model))?
    } else {
        PathBuf::from("echo")
    };
    let server = ServerChild::start(dir, &model.to_string_lossy(), args.max_queue, args.server_log).await?;
    let base = server.url("");
    let rss_start = server.rss_kib();
    let input = Arc::new(sample_text(256));

    let targets: Vec<(String, Target)> = args
        .subjects
        .iter()
        .map(|s| {
            let t = match s.as_str() {
                "healthz" => Target::Healthz,
                name => Target::Chat { model: name.to_owned(), stream: args.stream },
            };
            (s.clone(), t)
        })
        .collect();
    let bodies: Vec<Arc<Vec<u8>>> = targets
        .iter()
        .map(|(_, t)| match t {
            Target::Healthz => Arc::new(Vec::new()),
            Target::Chat { model, stream } => Arc::new(chat_body(model, *stream, &input)),
        })
        .collect();

    // One answer of each chat subject, to show what is measured and fail early if it is wrong.
    let probe = client()?;
    for ((name, target), body) in targets.iter().zip(&bodies) {
        match request(&probe, &base, target, body).await {
            Outcome::Ok(a) if matches!(target, Target::Healthz) => drop(a),
            Outcome::Ok(a) => eprintln!("{name}: {} characters: {:?}", a.text.chars().count(), a.text),
            Outcome::Busy => bail!("{name}: 429 on an idle server"),
            Outcome::Failed(e) => bail!("{name}: {e}"),
        }
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.to_owned()))
        .and_then(|l| l.split(':').nth(1).map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# pipehost bench http: backend {}, {} answers, {} cores ({cpu}), load average {}",
        if with_model { args.model.as_str() } else { "echo" },
        if args.stream { "streamed" } else { "whole" },
        cores,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("# server RSS at start (after loading, before any request): {}", mib(rss_start));
    println!();
    let ttfd = if args.stream { " first delta p50 | first delta p99 |" } else { "" };
    let ttfd_sep = if args.stream { "---|---|" } else { "" };
    println!(
        "| clients | subject | requests | req/s | p50 | p99 |{ttfd} 429 | errors | server CPU/req | client CPU/req |"
    );
    println!("|---|---|---|---|---|---|{ttfd_sep}---|---|---|---|");

    let mut failed = false;
    let mut summary = String::new();
    let mut warmed = false;
    for &level in &args.concurrency {
        let clients: Vec<reqwest::Client> = (0..level).map(|_| client()).collect::<Result<_>>()?;
        if !warmed {
            // First-request costs: connections, pool slots, the model's first forward pass.
            for ((_, t), body) in targets.iter().zip(&bodies) {
                drive(&clients, &base, t, body, Duration::from_secs_f64(args.warmup), None).await;
            }
            warmed = true;
        }
        server.reset_peak_rss();
        let round = Duration::from_secs_f64(args.duration / args.rounds as f64);
        let mut stats: Vec<Stats> = targets.iter().map(|_| Stats::default()).collect();
        for _ in 0..args.rounds {
            for (i, (_, t)) in targets.iter().enumerate() {
                let (server_cpu, client_cpu) = (server.cpu_time(), cpu_time("/proc/self/stat"));
                let mut s = drive(&clients, &base, t, &bodies[i], round, None).await;
                s.server_cpu = server.cpu_time().saturating_sub(server_cpu);
                s.client_cpu = cpu_time("/proc/self/stat").saturating_sub(client_cpu);
                stats[i].merge(s);
            }
        }
        let peak = server.peak_rss_kib();
        let mut p50s = Vec::new();
        for ((name, _), s) in targets.iter().zip(&mut stats) {
            s.latency_us.sort_unstable();
            s.first_delta_us.sort_unstable();
            let p50 = percentile(&s.latency_us, 0.5);
            p50s.push((name.clone(), p50));
            let ttfd = if args.stream && name != "healthz" {
                format!(
                    " {} | {} |",
                    fmt_us(percentile(&s.first_delta_us, 0.5)),
                    fmt_us(percentile(&s.first_delta_us, 0.99))
                )
            } else if args.stream {
                " – | – |".into()
            } else {
                String::new()
            };
            let per_request = |d: Duration| fmt_us(d.as_secs_f64() * 1e6 / s.latency_us.len().max(1) as f64);
            println!(
                "| {level} | {name} | {} | {:.0} | {} | {} |{ttfd} {} | {} | {} | {} |",
                s.latency_us.len(),
                s.latency_us.len() as f64 / s.seconds,
                fmt_us(p50),
                fmt_us(percentile(&s.latency_us, 0.99)),
                s.busy,
                s.errors,
                per_request(s.server_cpu),
                per_request(s.client_cpu),
            );
            if let Some(e) = &s.first_error {
                eprintln!("{name} at {level} clients: first error: {e}");
                failed = true;
            }
        }
        let p = |n: &str| p50s.iter().find(|(name, _)| name == n).map(|(_, v)| *v);
        let mut ratios = Vec::new();
        if let (Some(f), Some(b)) = (p("full"), p("bare")) {
            ratios.push(format!("full/bare p50 {:.2}× (+{})", f / b, fmt_us(f - b)));
        }
        if let (Some(b), Some(h)) = (p("bare"), p("healthz")) {
            ratios.push(format!("bare/healthz p50 {:.2}× (+{})", b / h, fmt_us(b - h)));
        }
        let _ = writeln!(
            summary,
            "- {level} clients: {}; server peak RSS {} during the level, RSS after {}",
            ratios.join(", "),
            mib(peak),
            mib(server.rss_kib())
        );
    }
    // RSS once the load is over and the server has idled a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!();
    print!("{summary}");
    println!(
        "- server RSS: {} at start, {} one second after the load",
        mib(rss_start),
        mib(server.rss_kib())
    );
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
