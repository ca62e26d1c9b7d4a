//! Hot reload, measured on a real `pipehost serve` child (see `http.rs` for the child and
//! the client):
//!
//! - `pipehost bench reload`: the time from a file being replaced (an atomic rename) to the
//!   first answer produced by the new version — a `.wasm` never seen before (compile-cache
//!   miss), a `.wasm` seen before (cache hit), and a pipeline YAML edit. A client polls
//!   back to back; an answer's version is read from its run record (`pipeline_sha256` and the
//!   stage's plugin `sha256`).
//! - `pipehost bench http --reload-swaps N`: reload under load. While clients stream and
//!   fetch whole answers, the pipeline file is rewritten and its plugin swapped N times,
//!   including broken versions. Every answer must be exactly what one version produces whole
//!   (computed beforehand in-process), with that version's file and plugin hashes; broken
//!   versions must never serve; no request may fail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::http::{
    Answer, Check, HttpOptions, Outcome, ServerChild, Stats, Target, chat_body, client, drive, fmt_us,
    percentile, request, sample_text,
};
use crate::pipeline::{DEBOUNCE, Executor, Registry, RunRequest};
use crate::plugin::{PluginRuntime, RuntimeConfig, default_plugins_dir};

/// What `pipehost bench reload` runs (its flags, parsed in `cli/bench.rs`).
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// Repetitions of each kind of change.
    pub reps: usize,
    /// Where the shipped plugins are [default: plugins/dist].
    pub plugins: Option<PathBuf>,
    /// Pass the server's stderr through.
    pub server_log: bool,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `component` with a custom section appended: the same code under a new sha256, so the host
/// has never compiled it (custom sections may appear anywhere in a component).
fn with_custom_section(component: &[u8], payload: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"pipehost-bench";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Write to a hidden temporary name (ignored by the watcher), then rename over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Truncate and write in place, as many editors and `cp` do.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Truncate, write the first half, pause, write the rest: a slow writer. The watcher must not
/// serve the half file.
fn write_split(path: &Path, bytes: &[u8], gap: Duration) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    let half = bytes.len() / 2;
    f.write_all(&bytes[..half])?;
    f.flush()?;
    std::thread::sleep(gap);
    f.write_all(&bytes[half..])?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reload timing

/// The latest answer the poller saw: (pipeline sha256, swap plugin sha256, when it arrived).
type Seen = (String, String, Instant);

pub fn run(args: ReloadOptions) -> Result<ExitCode> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(bench_reload(args))
}

fn timing_yaml(edit: &str) -> String {
    format!(
        "# {edit}\nvariables:\n  - {{ name: input, required: true }}\nprompt:\n  plugin: persona\n  config:\n    \
         template: \"{{{{ input }}}}\"\npost:\n  - plugin: swap\n"
    )
}

async fn bench_reload(args: ReloadOptions) -> Result<ExitCode> {
    if args.reps == 0 {
        bail!("need --reps >= 1");
    }
    let source = args.plugins.clone().unwrap_or_else(default_plugins_dir);
    let dir = ServerChild::prepare(&source, &["persona", "dedupe"])?;
    let dedupe = std::fs::read(dir.path().join("plugins/dedupe.wasm"))?;
    std::fs::write(dir.path().join("plugins/swap.wasm"), &dedupe)?;
    std::fs::write(dir.path().join("pipelines/r.yaml"), timing_yaml("start"))?;
    let server = ServerChild::start(dir, "echo", 64, args.server_log).await?;
    let yaml_path = server.pipelines().join("r.yaml");
    let wasm_path = server.plugins().join("swap.wasm");

    // The poller: back-to-back whole-text requests; publishes each answer's versions.
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel::<Option<Seen>>(None);
    let poll_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let poller = {
        let (c, base, errors) = (client()?, server.url(""), poll_errors.clone());
        let body = chat_body("r", false, &sample_text(120));
        tokio::spawn(async move {
            let target = Target::Chat { model: "r".into(), stream: false };
            loop {
                match request(&c, &base, &target, &body).await {
                    Outcome::Ok(a) => {
                        let pipeline = a.record["pipeline_sha256"].as_str().unwrap_or("").to_owned();
                        let plugin = a.record["stages"][1]["sha256"].as_str().unwrap_or("").to_owned();
                        let _ = seen_tx.send(Some((pipeline, plugin, Instant::now())));
                    }
                    Outcome::Busy => errors.lock().unwrap().push("429".into()),
                    Outcome::Failed(e) => errors.lock().unwrap().push(e),
                }
            }
        })
    };

    // Waits for the first answer after `since` whose versions satisfy `done`.
    let mut wait_for = async |since: Instant, done: &dyn Fn(&str, &str) -> bool| -> Result<Duration> {
        let deadline = since + Duration::from_secs(20);
        loop {
            if let Some((pipeline, plugin, at)) = seen_rx.borrow_and_update().clone()
                && at > since
                && done(&pipeline, &plugin)
            {
                return Ok(at - since);
            }
            if Instant::now() > deadline {
                bail!("the new version was not served within 20 s");
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), seen_rx.changed()).await;
        }
    };
    let pause = || tokio::time::sleep(DEBOUNCE * 3);

    // Two variants compiled once up front: switching between them hits the on-disk cache
    // (the in-memory cache forgets a plugin's old versions when its file changes).
    let hit = [with_custom_section(&dedupe, "hit-0"), with_custom_section(&dedupe, "hit-1")];
    for bytes in &hit {
        let sha = sha256_hex(bytes);
        write_atomic(&wasm_path, bytes)?;
        wait_for(Instant::now(), &|_, p| p == sha).await?;
        pause().await;
    }

    let mut miss = Vec::new();
    let mut hits = Vec::new();
    let mut yaml = Vec::new();
    let nonce = std::process::id();
    for rep in 0..args.reps {
        let bytes = with_custom_section(&dedupe, &format!("miss-{nonce}-{rep}"));
        let sha = sha256_hex(&bytes);
        let t0 = Instant::now();
        write_atomic(&wasm_path, &bytes)?;
        miss.push(wait_for(t0, &|_, p| p == sha).await?);
        pause().await;

        let bytes = &hit[rep % 2];
        let sha = sha256_hex(bytes);
        let t0 = Instant::now();
        write_atomic(&wasm_path, bytes)?;
        hits.push(wait_for(t0, &|_, p| p == sha).await?);
        pause().await;

        let text = timing_yaml(&format!("edit {nonce}-{rep}"));
        let sha = sha256_hex(text.as_bytes());
        let t0 = Instant::now();
        write_atomic(&yaml_path, text.as_bytes())?;
        yaml.push(wait_for(t0, &|p, _| p == sha).await?);
        pause().await;
    }
    poller.abort();
    let errors = poll_errors.lock().unwrap().clone();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# pipehost bench reload: {} repetitions, debounce {} ms, load average {}",
        args.reps,
        DEBOUNCE.as_millis(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| change | median | min | max |");
    println!("|---|---|---|---|");
    for (name, samples) in [
        (".wasm replaced, new code (compile-cache miss)", miss),
        (".wasm replaced, code seen before (compile-cache hit)", hits),
        ("pipeline YAML edited", yaml),
    ] {
        let mut us: Vec<u64> = samples.iter().map(|d| d.as_micros() as u64).collect();
        us.sort_unstable();
        println!(
            "| {name} | {} | {} | {} |",
            fmt_us(percentile(&us, 0.5)),
            fmt_us(us[0] as f64),
            fmt_us(*us.last().unwrap() as f64)
        );
    }
    println!();
    println!("- polling requests that failed: {}", errors.len());
    if let Some(e) = errors.first() {
        eprintln!("first polling error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Reload under load

/// The pipeline file of version `k`. The prompt carries `[P{k}]` and the tone stage of the same
/// version turns `[Q]` into `[T{k}]`: an answer mixing two versions has two different numbers.
fn mix_yaml(k: usize, tone_config: &str) -> String {
    format!(
        "# version {k}\nvariables:\n  - {{ name: input, required: true, max_chars: 4000 }}\nprompt:\n  \
         plugin: persona\n  config:\n    template: \"[P{k}] {{{{ input }}}} [Q]\"\npost:\n  - plugin: swap\n  \
         - plugin: tone\n    config: {tone_config}\n"
    )
}

fn good_tone(k: usize) -> String {
    format!("{{ word_boundary: false, rules: {{ \"[Q]\": \"[T{k}]\" }} }}")
}

/// What a swap step writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    YamlAtomic,
    WasmAtomic,
    YamlSyntaxError,
    YamlInPlace,
    WasmCoreModule,
    YamlBadConfig,
    WasmSplit,
    YamlSplit,
    WasmGarbage,
    WasmTruncated,
}

const STEPS: [Step; 10] = [
    Step::YamlAtomic,
    Step::WasmAtomic,
    Step::YamlSyntaxError,
    Step::YamlInPlace,
    Step::WasmCoreModule,
    Step::YamlBadConfig,
    Step::WasmSplit,
    Step::YamlSplit,
    Step::WasmGarbage,
    Step::WasmTruncated,
];

/// Whole-text answers of every version (k, variant), computed in-process with the same
/// registry and executor code the server runs: text → (k, variant).
async fn expected_answers(
    plugins: &Path,
    variants: &[Vec<u8>; 2],
    versions: &[usize],
    input: &str,
) -> Result<HashMap<String, (usize, usize)>> {
    let work = tempfile::tempdir()?;
    let (pipelines, plugins_dir) = (work.path().join("pipelines"), work.path().join("plugins"));
    std::fs::create_dir(&pipelines)?;
    std::fs::create_dir(&plugins_dir)?;
    for name in ["persona", "tone"] {
        std::fs::copy(plugins.join(format!("{name}.wasm")), plugins_dir.join(format!("{name}.wasm")))?;
    }
    std::fs::write(plugins_dir.join("swap.wasm"), &variants[0])?;
    std::fs::write(pipelines.join("mix.yaml"), mix_yaml(versions[0], &good_tone(versions[0])))?;
    let runtime =
        PluginRuntime::new(&RuntimeConfig { cache_dir: Some(work.path().join("cache")), pooling: false })?;
    let registry = Registry::load(&pipelines, &plugins_dir, runtime);
    let executor = Executor::new(crate::backend::echo(), HashMap::new());
    let mut out = HashMap::new();
    for (v, bytes) in variants.iter().enumerate() {
        std::fs::write(plugins_dir.join("swap.wasm"), bytes)?;
        registry.plugin_changed("swap");
        for &k in versions {
            std::fs::write(pipelines.join("mix.yaml"), mix_yaml(k, &good_tone(k)))?;
            registry.reload_file("mix.yaml", false);
            if let Some(e) = registry.errors().first() {
                bail!("version {k}: {e}");
            }
            let pipeline = registry.get("mix").context("no mix pipeline")?;
            let request = RunRequest {
                vars: BTreeMap::from([("input".to_owned(), input.to_owned())]),
                ..RunRequest::default()
            };
            let text = executor.run(pipeline, request).await.map_err(|e| anyhow::anyhow!("{e}"))?.text;
            if !text.contains(&format!("[P{k}]")) || !text.contains(&format!("[T{k}]")) {
                bail!("version {k} variant {v}: the markers did not survive: {text:?}");
            }
            if out.insert(text.clone(), (k, v)).is_some() {
                bail!("two versions give the same answer: {text:?}");
            }
        }
    }
    Ok(out)
}

pub(crate) async fn reload_under_load(args: &HttpOptions, swaps: usize) -> Result<ExitCode> {
    let clients_n = *args.concurrency.iter().max().unwrap_or(&16);
    let source = args.plugins.clone().unwrap_or_else(default_plugins_dir);
    // Two valid components under one name whose answers differ on the input below.
    let variants =
        [std::fs::read(source.join("dedupe.wasm"))?, std::fs::read(source.join("punctuation.wasm"))?];
    let variant_sha = [sha256_hex(&variants[0]), sha256_hex(&variants[1])];
    let input = sample_text(120);

    // The schedule, simulated: which (k, variant) the server must serve after each step.
    let interval = Duration::from_millis(args.swap_interval_ms);
    let mut valid_ks = vec![0usize];
    let mut plan = Vec::new();
    let (mut yaml_ok, mut yaml_k, mut wasm_v) = (true, 0usize, Some(0usize));
    let mut toggle = 0usize;
    let mut serving = (0usize, 0usize);
    for i in 0..swaps {
        let step = STEPS[i % STEPS.len()];
        let k = i + 1;
        match step {
            Step::YamlAtomic | Step::YamlInPlace | Step::YamlSplit => {
                valid_ks.push(k);
                (yaml_ok, yaml_k) = (true, k);
            }
            Step::YamlSyntaxError | Step::YamlBadConfig => yaml_ok = false,
            Step::WasmAtomic | Step::WasmSplit => {
                toggle = 1 - toggle;
                wasm_v = Some(toggle);
            }
            Step::WasmCoreModule | Step::WasmGarbage | Step::WasmTruncated => wasm_v = None,
        }
        if let (true, Some(v)) = (yaml_ok, wasm_v) {
            serving = (yaml_k, v);
        }
        plan.push((step, k, toggle));
    }
    eprintln!("computing the answers of {} versions × 2 plugin variants in-process ...", valid_ks.len());
    let expected = Arc::new(expected_answers(&source, &variants, &valid_ks, &input).await?);
    let yaml_sha: Arc<HashMap<usize, String>> =
        Arc::new(valid_ks.iter().map(|&k| (k, sha256_hex(mix_yaml(k, &good_tone(k)).as_bytes()))).collect());

    let dir = ServerChild::prepare(&source, &["persona", "tone"])?;
    std::fs::write(dir.path().join("plugins/swap.wasm"), &variants[0])?;
    std::fs::write(dir.path().join("pipelines/mix.yaml"), mix_yaml(0, &good_tone(0)))?;
    let server = ServerChild::start(dir, "echo", args.max_queue, args.server_log).await?;
    let base = server.url("");

    // An answer is good when its text is one version's whole answer and its record names
    // that version's pipeline file and plugin.
    let observed = Arc::new(Mutex::new(BTreeSet::<(usize, usize)>::new()));
    let check: Check = {
        let (expected, yaml_sha, observed, variant_sha) =
            (expected.clone(), yaml_sha.clone(), observed.clone(), variant_sha.clone());
        Arc::new(move |a: &Answer| {
            let Some(&(k, v)) = expected.get(&a.text) else {
                return Err(format!("an answer no single version gives: {:?}", a.text));
            };
            let file = a.record["pipeline_sha256"].as_str().unwrap_or("");
            let plugin = a.record["stages"][1]["sha256"].as_str().unwrap_or("");
            if file != yaml_sha[&k] || plugin != variant_sha[v] {
                return Err(format!(
                    "text of version ({k}, {v}) but record of file {file} and plugin {plugin}"
                ));
            }
            observed.lock().unwrap().insert((k, v));
            Ok(())
        })
    };

    let duration = interval * swaps as u32 + Duration::from_secs(1);
    let (pipelines, plugins) = (server.pipelines(), server.plugins());
    let swapper = tokio::task::spawn_blocking(move || -> Result<()> {
        let yaml = pipelines.join("mix.yaml");
        let wasm = plugins.join("swap.wasm");
        let gap = Duration::from_millis(10);
        let mut garbage = Sha256::digest(b"garbage").to_vec();
        std::thread::sleep(Duration::from_millis(300));
        for &(step, k, toggle) in &plan {
            match step {
                Step::YamlAtomic => write_atomic(&yaml, mix_yaml(k, &good_tone(k)).as_bytes())?,
                Step::YamlInPlace => write_in_place(&yaml, mix_yaml(k, &good_tone(k)).as_bytes())?,
                Step::YamlSplit => write_split(&yaml, mix_yaml(k, &good_tone(k)).as_bytes(), gap)?,
                Step::YamlSyntaxError => {
                    write_in_place(&yaml, format!("# version {k}\nprompt: [unclosed\n").as_bytes())?
                }
                Step::YamlBadConfig => write_atomic(&yaml, mix_yaml(k, "{ rules: 5 }").as_bytes())?,
                Step::WasmAtomic => write_atomic(&wasm, &variants[toggle])?,
                Step::WasmSplit => write_split(&wasm, &variants[toggle], gap)?,
                Step::WasmCoreModule => write_in_place(&wasm, b"\0asm\x01\0\0\0")?,
                Step::WasmGarbage => {
                    for _ in 0..64 {
                        garbage.extend_from_slice(&Sha256::digest(&garbage[garbage.len() - 32..]));
                    }
                    write_atomic(&wasm, &garbage)?;
                }
                Step::WasmTruncated => write_atomic(&wasm, &variants[toggle][..variants[toggle].len() / 2])?,
            }
            std::thread::sleep(interval);
        }
        Ok(())
    });

    server.reset_peak_rss();
    let half = clients_n.div_ceil(2);
    let streaming: Vec<_> = (0..half).map(|_| client()).collect::<Result<_>>()?;
    let whole: Vec<_> = (half..clients_n).map(|_| client()).collect::<Result<_>>()?;
    let t_stream = Target::Chat { model: "mix".into(), stream: true };
    let t_whole = Target::Chat { model: "mix".into(), stream: false };
    let (b_stream, b_whole) =
        (Arc::new(chat_body("mix", true, &input)), Arc::new(chat_body("mix", false, &input)));
    let (s_stream, s_whole, swapped) = tokio::join!(
        drive(&streaming, &base, &t_stream, &b_stream, duration, Some(check.clone())),
        drive(&whole, &base, &t_whole, &b_whole, duration, Some(check.clone())),
        swapper,
    );
    swapped??;

    // After the last swap has settled: the server serves what the schedule says.
    tokio::time::sleep(DEBOUNCE * 5).await;
    let last = match request(&client()?, &base, &t_whole, &b_whole).await {
        Outcome::Ok(a) => expected.get(&a.text).copied(),
        _ => None,
    };
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    let metric = |name: &str| -> String {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned()
    };

    let mut all = Stats::default();
    let (n_stream, n_whole) = (s_stream.latency_us.len(), s_whole.latency_us.len());
    all.merge(s_stream);
    all.merge(s_whole);
    all.latency_us.sort_unstable();
    all.first_delta_us.sort_unstable();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# reload under load: {swaps} swaps every {} ms, {clients_n} clients ({half} streaming), load average {}",
        interval.as_millis(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!();
    println!("| requests (streamed + whole) | p50 | p99 | 429 | failed or mixed | versions served |");
    println!("|---|---|---|---|---|---|");
    let versions = observed.lock().unwrap().len();
    println!(
        "| {} ({n_stream} + {n_whole}) | {} | {} | {} | {} | {versions} of {} valid (k, plugin) pairs |",
        all.latency_us.len(),
        fmt_us(percentile(&all.latency_us, 0.5)),
        fmt_us(percentile(&all.latency_us, 0.99)),
        all.busy,
        all.errors,
        valid_ks.len() * 2,
    );
    println!();
    println!(
        "- server reloads counted: {} succeeded, {} failed (the broken versions); peak RSS {:.1} MiB",
        metric("pipehost_pipeline_reloads_total"),
        metric("pipehost_pipeline_reload_failures_total"),
        server.peak_rss_kib().unwrap_or(0) as f64 / 1024.0
    );
    println!("- final version served {last:?}, expected {serving:?}");
    let mut ok = all.errors == 0 && last == Some(serving);
    if let Some(e) = &all.first_error {
        eprintln!("first failure: {e}");
        ok = false;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
