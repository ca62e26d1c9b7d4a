//! JavaScript plugins through the real host: the shipped `plaintext` component (examples,
//! stream == whole, config errors) and `tests/guests/evil-js` against the same sandbox
//! (deadline, memory cap, output cap, no capabilities), and `tests/guests/prompt-js`, a prompt
//! builder on the SDK's `PromptBuilder`. All are built by scripts/build-plugins.sh with
//! componentize-qjs (QuickJS).

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pipehost::plugin::{
    CallContext, Cause, Language, Limits, PluginError, PluginRuntime, PostProcessor, PromptBuilder,
    RuntimeConfig,
};
use support::{capture_logs, component, test_cache_dir};

fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        PluginRuntime::new(&RuntimeConfig { cache_dir: Some(test_cache_dir()), pooling: true }).unwrap()
    })
}

fn plaintext() -> &'static PostProcessor {
    static P: OnceLock<PostProcessor> = OnceLock::new();
    P.get_or_init(|| runtime().load_post_processor("plaintext", &component("plaintext")).unwrap())
}

fn evil() -> &'static PostProcessor {
    static P: OnceLock<PostProcessor> = OnceLock::new();
    P.get_or_init(|| runtime().load_post_processor("evil-js", &component("evil-js")).unwrap())
}

fn ctx() -> CallContext {
    CallContext { pipeline: "js".into(), request_id: "req-js".into(), stage: "js-stage".into() }
}

/// JavaScript's default limits with room in time for a debug host on a busy machine; the
/// deadline tests use the real default, [`deadline`].
fn limits() -> Limits {
    Limits { time_ms: 5_000, ..Language::JavaScript.default_limits() }
}

fn deadline() -> Limits {
    Language::JavaScript.default_limits()
}

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
fn plaintext_is_a_javascript_component() {
    assert_eq!(plaintext().meta().language, Language::JavaScript);
    assert_eq!(deadline().memory_bytes, 128 << 20);
}

#[test]
fn plaintext_strips_markdown_whole_and_streamed() {
    let out = both_ways(plaintext(), "{}", "# 秋夜\n\n**月光**洒在*窗台*上。\n- 一\n- 二", &[1, 2, 5, 64]);
    assert_eq!(out, "秋夜\n\n月光洒在窗台上。\n一\n二");
    let text = "## Title\n> quoted _here_\n```js\nlet a = b * c; // **x**\n```\n---\n2 * 3, snake_case";
    let out = both_ways(plaintext(), "{}", text, &[1, 3, 7]);
    assert_eq!(out, "Title\nquoted here\nlet a = b * c; // **x**\n2 * 3, snake_case");
    let out = both_ways(plaintext(), r#"{"lists":false,"headings":false}"#, "# T\n- **x**", &[1, 4]);
    assert_eq!(out, "# T\n- x");
}

#[test]
fn plaintext_stream_equals_whole_for_generated_texts_and_chunkings() {
    const ATOMS: [&str; 16] =
        ["#", "## ", "- ", "*", "**", "_", "~~", "`", "```", "\n", " ", "> ", "1. ", "word", "中文", "---"];
    let mut seed = 14u64;
    let mut next = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for _ in 0..15 {
        let text: String = (0..next(25) + 1).map(|_| ATOMS[next(ATOMS.len())]).collect();
        both_ways(plaintext(), "{}", &text, &[next(6) + 1, next(3) + 1]);
    }
}

#[test]
fn plaintext_config_errors_name_the_field() {
    let err = plaintext().validate_config(r#"{"heading":true}"#, &ctx(), &limits()).unwrap_err();
    assert!(
        matches!(err.cause, Cause::InvalidConfig(ref m) if m.starts_with("heading: unknown field")),
        "{err}"
    );
    let err = plaintext().process("x", &ctx(), r#"{"emphasis":"yes"}"#, &limits()).unwrap_err();
    assert_eq!(err.cause, Cause::InvalidConfig("emphasis: expected a boolean, got a string".into()));
    plaintext().validate_config("{}", &ctx(), &limits()).unwrap();
}

fn run(config: &str, input: &str) -> Result<String, PluginError> {
    evil().process(input, &ctx(), config, &limits())
}

fn assert_healthy() {
    assert_eq!(run(r#"{"mode":"ok"}"#, "still here").unwrap(), "still here");
}

#[test]
fn js_infinite_loop_times_out_and_the_next_call_succeeds() {
    let started = Instant::now();
    let err = evil().process("x", &ctx(), r#"{"mode":"loop"}"#, &deadline()).unwrap_err();
    assert_eq!(err.cause, Cause::Timeout(Duration::from_millis(100)));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_healthy();
    let second = Limits { time_ms: 1000, ..limits() };
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"loop","in":"push"}"#, &second).unwrap();
    assert_eq!(stream.push("x").unwrap_err().cause, Cause::Timeout(Duration::from_millis(1000)));
    assert!(matches!(stream.push("y").unwrap_err().cause, Cause::Host(_)));
}

#[test]
fn js_allocations_hit_the_memory_cap() {
    match run(r#"{"mode":"alloc","bytes":1073741824}"#, "x").unwrap_err().cause {
        Cause::MemoryLimit { limit, requested } => assert!(limit == 128 << 20 && requested > limit),
        other => panic!("expected a memory-limit error, got {other:?}"),
    }
    assert_healthy();
    let small = Limits { memory_bytes: 32 << 20, ..limits() };
    let err = evil().process("x", &ctx(), r#"{"mode":"grow"}"#, &small).unwrap_err();
    assert!(matches!(err.cause, Cause::MemoryLimit { limit, .. } if limit == 32 << 20), "{err}");
    assert_healthy();
}

#[test]
fn js_output_is_capped() {
    let roomy = Limits { memory_bytes: 1 << 30, time_ms: 20_000, ..limits() };
    let err = evil().process("x", &ctx(), r#"{"mode":"output","bytes":100000000}"#, &roomy).unwrap_err();
    assert_eq!(err.cause, Cause::OutputTooLarge { size: 100_000_000, limit: 1 << 20 });
    let input = "放大".repeat(1000);
    let err = run(r#"{"mode":"amplify","factor":1000}"#, &input).unwrap_err();
    assert!(matches!(err.cause, Cause::OutputTooLarge { size: 6_000_000, .. }), "{err}");
    assert_healthy();
}

#[test]
fn js_reaches_no_files_environment_or_network() {
    // QuickJS has no file, process or network API, and the world imports only the host's log:
    // the component cannot even name a WASI filesystem or socket interface.
    assert_eq!(run(r#"{"mode":"globals"}"#, "x").unwrap(), "reachable: none");
}

#[test]
fn js_errors_keep_their_kind_and_exceptions_become_internal() {
    let err = run(r#"{"mode":"invalid-input"}"#, "x").unwrap_err();
    assert_eq!(err.cause, Cause::InvalidInput("evil-js: invalid input requested".into()));
    let (result, logs) = capture_logs(|| run(r#"{"mode":"throw"}"#, "x"));
    match result.unwrap_err().cause {
        Cause::Internal(m) => assert!(m.starts_with("TypeError: "), "{m}"),
        other => panic!("expected internal, got {other:?}"),
    }
    assert!(
        logs.contains("uncaught") && logs.contains("plugin=evil-js"),
        "the stack goes to the log:\n{logs}"
    );
    let err = evil().validate_config(r#"{"mode":"ok","colour":1}"#, &ctx(), &limits()).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidConfig(ref m) if m.contains("colour")), "{err}");
    assert_healthy();
}

#[test]
fn js_console_and_log_reach_the_host_log() {
    let (out, logs) = capture_logs(|| run(r#"{"mode":"stdout"}"#, "marker-js"));
    assert_eq!(out.unwrap(), "marker-js");
    // QuickJS has no console of its own: the SDK's writes to the host log.
    assert!(
        logs.lines().any(|l| l.contains(" INFO")
            && l.contains("to stdout: marker-js")
            && l.contains("plugin=evil-js")),
        "{logs}"
    );
    assert!(logs.lines().any(|l| l.contains("ERROR") && l.contains("to stderr: marker-js")), "{logs}");
    let (out, logs) = capture_logs(|| run(r#"{"mode":"log"}"#, "x"));
    out.unwrap();
    for level in ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"] {
        assert!(
            logs.lines().any(|l| l.contains(level) && l.contains("evil-js log")),
            "no {level} in:\n{logs}"
        );
    }
}

#[test]
fn js_stream_stop_comes_through() {
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"stop","in":"push"}"#, &limits()).unwrap();
    let out = stream.push("abc").unwrap();
    assert_eq!((out.emit.as_str(), out.stop), ("abc", true));
    assert_eq!(stream.finish().unwrap(), "");
}

fn prompt() -> &'static PromptBuilder {
    static P: OnceLock<PromptBuilder> = OnceLock::new();
    P.get_or_init(|| runtime().load_prompt_builder("prompt-js", &component("prompt-js")).unwrap())
}

#[test]
fn js_prompt_builder_builds_messages_and_keeps_variables_literal() {
    support::prompt_builder::prompt_builder_builds_messages(
        prompt(),
        Language::JavaScript,
        &ctx(),
        &limits(),
    );
}

#[test]
fn js_prompt_builder_errors_keep_their_kind() {
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
fn cli_scaffolds_a_js_plugin_that_builds_and_passes_its_tests() {
    use std::process::Command;
    if std::env::var_os("PIPEHOST_SKIP_SCAFFOLD_BUILD").is_some() {
        eprintln!("skipped: PIPEHOST_SKIP_SCAFFOLD_BUILD is set");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shout-js");
    let out = pipehost(&["plugin", "new", "shout-js", "--lang", "js", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its own tests pass as generated, natively.
    let status = Command::new("node").args(["--test", "tests/"]).current_dir(&dir).status().unwrap();
    assert!(status.success(), "node --test failed in the scaffolded plugin");
    // The build script builds a folder given by path into FOLDER/NAME.wasm.
    let status =
        Command::new(support::repo_root().join("scripts/build-plugins.sh")).arg(&dir).status().unwrap();
    assert!(status.success(), "scripts/build-plugins.sh failed on the scaffolded plugin");
    let wasm = dir.join("shout-js.wasm");
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
