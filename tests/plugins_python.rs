//! Python plugins through the real host: the shipped `cliche` component (examples, stream ==
//! whole, config errors) and `tests/guests/evil-py`, the Python counterpart of the evil guest,
//! against the same sandbox (deadline, memory cap, output cap, no files / env / network).
//! Both are built by scripts/build-plugins.sh with componentize-py, as is `tests/guests/prompt-py`,
//! a prompt builder on the SDK's `PromptBuilder`.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pipehost::plugin::{
    CallContext, Cause, Language, Limits, PluginError, PluginRuntime, PostProcessor, PromptBuilder,
    RuntimeConfig,
};
use support::{capture_logs, component, test_cache_dir};

/// One runtime for this binary; each ~19 MB CPython component is compiled once (or read from
/// the shared on-disk cache: compiling one takes a while in a debug build).
fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        PluginRuntime::new(&RuntimeConfig { cache_dir: Some(test_cache_dir()), pooling: true }).unwrap()
    })
}

fn cliche() -> &'static PostProcessor {
    static P: OnceLock<PostProcessor> = OnceLock::new();
    P.get_or_init(|| runtime().load_post_processor("cliche", &component("cliche")).unwrap())
}

fn evil() -> &'static PostProcessor {
    static P: OnceLock<PostProcessor> = OnceLock::new();
    P.get_or_init(|| runtime().load_post_processor("evil-py", &component("evil-py")).unwrap())
}

fn ctx() -> CallContext {
    CallContext { pipeline: "py".into(), request_id: "req-py".into(), stage: "py-stage".into() }
}

/// Python's default limits with room in time: a debug build of the host on a busy 2-core
/// machine is slow to move text in and out of a large instance. The deadline tests use the
/// real default deadline, [`deadline`].
fn limits() -> Limits {
    Limits { time_ms: 5_000, ..Language::Python.default_limits() }
}

fn deadline() -> Limits {
    Language::Python.default_limits()
}

/// Runs `text` whole and streamed in chunks of `size` characters; asserts they agree.
fn both_ways(plugin: &PostProcessor, config: &str, text: &str, sizes: &[usize]) -> String {
    let whole = plugin.process(text, &ctx(), config, &limits()).unwrap();
    let chars: Vec<char> = text.chars().collect();
    for &size in sizes {
        let mut stream = plugin.open_stream(&ctx(), config, &limits()).unwrap();
        let mut streamed = String::new();
        for chunk in chars.chunks(size) {
            let out = stream.push(&chunk.iter().collect::<String>()).unwrap();
            assert!(!out.stop);
            streamed.push_str(&out.emit);
        }
        streamed.push_str(&stream.finish().unwrap());
        assert_eq!(streamed, whole, "stream in chunks of {size} != whole for {text:?}");
    }
    whole
}

#[test]
fn cliche_is_a_python_component_with_python_defaults() {
    assert_eq!(cliche().meta().language, Language::Python);
    assert_eq!(deadline().memory_bytes, 128 << 20);
    assert_eq!(deadline().time_ms, 100);
}

#[test]
fn cliche_removes_and_rewrites_stock_phrases_whole_and_streamed() {
    let out = both_ways(cliche(), "{}", "Great question! The sky is blue. I hope this helps!", &[1, 3, 64]);
    assert_eq!(out, "The sky is blue.");
    let out = both_ways(cliche(), "{}", "I’m sorry, but that's great news.", &[1, 2, 5]);
    assert_eq!(out, "Still, nice news.");
    let out =
        both_ways(cliche(), "{}", "作为一个AI，我没有感情。我理解你的感受。希望这对你有帮助！", &[1, 2, 7]);
    assert_eq!(out, "我没有感情。");
    let config = r#"{"presets":["zh"],"rules":{"说实话，":""}}"#;
    let out = both_ways(cliche(), config, "说实话，Great question! 好。", &[1, 4]);
    assert_eq!(out, "Great question! 好。");
}

#[test]
fn cliche_stream_equals_whole_for_generated_texts_and_chunkings() {
    const ATOMS: [&str; 14] = [
        "I'm sorry",
        "I’m",
        ", but",
        " ",
        "that's great",
        "!",
        "Great question",
        "作为一个AI",
        "，",
        "我理解你的感受",
        "。",
        "希望这对你有帮助",
        "hello",
        "👍",
    ];
    let mut seed = 14u64;
    let mut next = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for _ in 0..12 {
        let text: String = (0..next(20) + 1).map(|_| ATOMS[next(ATOMS.len())]).collect();
        let sizes = [next(6) + 1, next(3) + 1];
        both_ways(cliche(), "{}", &text, &sizes);
    }
}

#[test]
fn cliche_config_errors_name_the_field() {
    let err = cliche().validate_config(r#"{"presets":["fr"]}"#, &ctx(), &limits()).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidConfig(ref m) if m.contains("unknown preset 'fr'")), "{err}");
    let err = cliche().process("x", &ctx(), r#"{"rules":{"a":1}}"#, &limits()).unwrap_err();
    assert_eq!(err.cause, Cause::InvalidConfig("rules.a: expected a string, got a number".into()));
    let err = cliche().open_stream(&ctx(), r#"{"rulez":{}}"#, &limits()).err().unwrap();
    assert!(
        matches!(err.cause, Cause::InvalidConfig(ref m) if m.starts_with("rulez: unknown field")),
        "{err}"
    );
    cliche().validate_config("{}", &ctx(), &limits()).unwrap();
}

fn run(config: &str, input: &str) -> Result<String, PluginError> {
    evil().process(input, &ctx(), config, &limits())
}

fn cause(config: &str, input: &str) -> Cause {
    run(config, input).expect_err("the call should fail").cause
}

fn assert_healthy() {
    assert_eq!(run(r#"{"mode":"ok"}"#, "still here").unwrap(), "still here");
}

#[test]
fn python_infinite_loop_times_out_and_the_next_call_succeeds() {
    let started = Instant::now();
    let err = evil().process("x", &ctx(), r#"{"mode":"loop"}"#, &deadline()).unwrap_err();
    assert_eq!(err.cause, Cause::Timeout(Duration::from_millis(100)));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_healthy();
    // In a stream's push too, and the failed stream stays failed.
    let second = Limits { time_ms: 1000, ..limits() };
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"loop","in":"push"}"#, &second).unwrap();
    assert_eq!(stream.push("x").unwrap_err().cause, Cause::Timeout(Duration::from_millis(1000)));
    assert!(matches!(stream.push("y").unwrap_err().cause, Cause::Host(_)));
}

#[test]
fn python_sleep_does_not_outlast_the_deadline() {
    let started = Instant::now();
    let err = evil().process("x", &ctx(), r#"{"mode":"sleep","ms":3000}"#, &deadline()).unwrap_err();
    assert_eq!(err.cause, Cause::Timeout(Duration::from_millis(100)));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_healthy();
}

#[test]
fn python_allocations_hit_the_memory_cap() {
    match cause(r#"{"mode":"alloc","bytes":1073741824}"#, "x") {
        Cause::MemoryLimit { limit, requested } => assert!(limit == 128 << 20 && requested > limit),
        other => panic!("expected a memory-limit error, got {other:?}"),
    }
    assert_healthy();
    let small = Limits { memory_bytes: 48 << 20, time_ms: 5000, ..limits() };
    let err = evil().process("x", &ctx(), r#"{"mode":"grow"}"#, &small).unwrap_err();
    assert!(matches!(err.cause, Cause::MemoryLimit { limit, .. } if limit == 48 << 20), "{err}");
    assert_healthy();
}

#[test]
fn python_runtime_needs_more_than_a_tiny_cap() {
    // CPython's heap is in the snapshot: below its footprint not even `ok` runs. This is why
    // Python gets a larger default than Rust (docs/plugins.md).
    let tiny = Limits { memory_bytes: 8 << 20, ..limits() };
    let err = evil().process("x", &ctx(), r#"{"mode":"ok"}"#, &tiny).unwrap_err();
    assert!(matches!(err.cause, Cause::MemoryLimit { .. }), "{err}");
    // At Rust's default a plain call fits.
    let rust = Limits { memory_bytes: 64 << 20, ..limits() };
    assert_eq!(evil().process("x", &ctx(), r#"{"mode":"ok"}"#, &rust).unwrap(), "x");
}

#[test]
fn python_output_is_capped() {
    let roomy = Limits { memory_bytes: 1 << 30, time_ms: 20_000, ..limits() };
    let err = evil().process("x", &ctx(), r#"{"mode":"output","bytes":100000000}"#, &roomy).unwrap_err();
    assert_eq!(err.cause, Cause::OutputTooLarge { size: 100_000_000, limit: 1 << 20 });
    let input = "放大".repeat(1000);
    let err = run(r#"{"mode":"amplify","factor":1000}"#, &input).unwrap_err();
    assert!(matches!(err.cause, Cause::OutputTooLarge { size: 6_000_000, .. }), "{err}");
    assert_healthy();
}

#[test]
fn python_cannot_read_files_or_see_the_environment() {
    for path in ["/etc/passwd", "Cargo.toml", "plugin.py"] {
        match cause(&format!(r#"{{"mode":"read-file","path":"{path}"}}"#), "x") {
            Cause::Internal(m) => assert!(m.contains("read failed"), "{path}: {m}"),
            other => panic!("{path}: expected a failed read, got {other:?}"),
        }
    }
    // SAFETY: a test-only variable, set before any plugin reads it; nothing else writes it.
    unsafe { std::env::set_var("PIPEHOST_TEST_SECRET", "hunter2") };
    assert_eq!(run(r#"{"mode":"env"}"#, "x").unwrap(), "vars: 0, args: 0");
}

#[test]
fn python_sockets_and_dns_are_denied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    match cause(&format!(r#"{{"mode":"tcp","addr":"{addr}"}}"#), "x") {
        Cause::Internal(m) => assert!(m.contains("tcp failed"), "{m}"),
        other => panic!("expected a failed connect, got {other:?}"),
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the guest reached the listener");
    match cause(r#"{"mode":"dns","host":"localhost"}"#, "x") {
        Cause::Internal(m) => assert!(m.contains("dns failed"), "{m}"),
        other => panic!("expected a failed lookup, got {other:?}"),
    }
}

#[test]
fn python_errors_keep_their_kind_and_exceptions_become_internal() {
    assert_eq!(
        cause(r#"{"mode":"invalid-input"}"#, "x"),
        Cause::InvalidInput("evil-py: invalid input requested".into())
    );
    let (result, logs) = capture_logs(|| run(r#"{"mode":"raise"}"#, "x"));
    assert_eq!(result.unwrap_err().cause, Cause::Internal("ValueError: evil-py: exception requested".into()));
    assert!(
        logs.contains("Traceback") && logs.contains("plugin=evil-py"),
        "the traceback goes to the log:\n{logs}"
    );
    let err = evil().validate_config(r#"{"mode":"ok","colour":1}"#, &ctx(), &limits()).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidConfig(ref m) if m.contains("colour")), "{err}");
    assert_healthy();
}

#[test]
fn python_print_and_log_reach_the_host_log() {
    let (out, logs) = capture_logs(|| run(r#"{"mode":"stdout"}"#, "marker-py"));
    assert_eq!(out.unwrap(), "marker-py");
    assert!(logs.contains("stream=\"stdout\"") && logs.contains("to stdout: marker-py"), "{logs}");
    assert!(logs.contains("stream=\"stderr\"") && logs.contains("to stderr: marker-py"), "{logs}");
    let (out, logs) = capture_logs(|| run(r#"{"mode":"log"}"#, "x"));
    out.unwrap();
    for level in ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"] {
        assert!(
            logs.lines().any(|l| l.contains(level) && l.contains("evil-py log")),
            "no {level} in:\n{logs}"
        );
    }
}

#[test]
fn python_stream_stop_comes_through() {
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"stop","in":"push"}"#, &limits()).unwrap();
    let out = stream.push("abc").unwrap();
    assert_eq!((out.emit.as_str(), out.stop), ("abc", true));
    assert_eq!(stream.finish().unwrap(), "");
}

fn prompt() -> &'static PromptBuilder {
    static P: OnceLock<PromptBuilder> = OnceLock::new();
    P.get_or_init(|| runtime().load_prompt_builder("prompt-py", &component("prompt-py")).unwrap())
}

#[test]
fn python_prompt_builder_builds_messages_and_keeps_variables_literal() {
    support::prompt_builder::prompt_builder_builds_messages(prompt(), Language::Python, &ctx(), &limits());
}

#[test]
fn python_prompt_builder_errors_keep_their_kind() {
    support::prompt_builder::prompt_builder_errors_keep_their_kind(prompt(), &ctx(), &limits());
}

fn pipehost(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .args(args)
        .env("PIPEHOST_CACHE_DIR", test_cache_dir())
        .output()
        .unwrap()
}

#[test]
fn cli_scaffolds_a_python_plugin_that_builds_and_passes_its_tests() {
    use std::process::Command;
    if std::env::var_os("PIPEHOST_SKIP_SCAFFOLD_BUILD").is_some() {
        eprintln!("skipped: PIPEHOST_SKIP_SCAFFOLD_BUILD is set");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shout_py");
    let out = pipehost(&["plugin", "new", "shout_py", "--lang", "python", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its own tests pass as generated, natively.
    let python = support::repo_root().join("target/py/venv/bin/python");
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "pytest failed in the scaffolded plugin");
    // The build script builds a folder given by path into FOLDER/NAME.wasm.
    let status =
        Command::new(support::repo_root().join("scripts/build-plugins.sh")).arg(&dir).status().unwrap();
    assert!(status.success(), "scripts/build-plugins.sh failed on the scaffolded plugin");
    let wasm = dir.join("shout_py.wasm");
    // --time-ms: a debug binary on a busy machine; the deadline itself is tested above.
    for extra in [&[][..], &["--stream-chunk", "1"][..]] {
        let mut args = vec!["plugin", "run", wasm.to_str().unwrap(), "--time-ms", "5000"];
        args.extend_from_slice(&["--config", r#"{"prefix":"» "}"#, "--input", "hi"]);
        args.extend_from_slice(extra);
        let out = pipehost(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "» hi");
    }
    let out = pipehost(&[
        "plugin",
        "run",
        wasm.to_str().unwrap(),
        "--time-ms",
        "5000",
        "--config",
        r#"{"prefx":""}"#,
        "--input",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefx"));
}
