//! The sandbox against misbehaving components (tests/guests/evil and friends), loaded through
//! the real runtime: each misbehaviour yields its specific error within bounded time, and the
//! same plugin serves the next call.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pipehost::plugin::{
    CacheOutcome, CallContext, Cause, Limits, PluginRuntime, PostProcessor, RuntimeConfig,
};
use support::{capture_logs, component, runtime};

fn evil() -> &'static PostProcessor {
    static EVIL: OnceLock<PostProcessor> = OnceLock::new();
    EVIL.get_or_init(|| runtime().load_post_processor("evil", &component("guest-evil")).unwrap())
}

fn ctx() -> CallContext {
    CallContext { pipeline: "test".into(), request_id: "req-1".into(), stage: "evil-stage".into() }
}

fn run(config: &str, input: &str) -> Result<String, pipehost::plugin::PluginError> {
    evil().process(input, &ctx(), config, &Limits::default())
}

fn cause(config: &str, input: &str) -> Cause {
    run(config, input).expect_err("the call should fail").cause
}

/// After any failure, the same plugin must serve a healthy call.
fn assert_healthy() {
    assert_eq!(run(r#"{"mode":"ok"}"#, "still here").unwrap(), "still here");
}

#[test]
fn infinite_loop_times_out_and_the_next_call_succeeds() {
    let started = Instant::now();
    let err = run(r#"{"mode":"loop"}"#, "x").unwrap_err();
    assert_eq!(err.cause, Cause::Timeout(Duration::from_millis(100)));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let message = err.to_string();
    assert!(message.contains("plugin `evil` (stage `evil-stage`): timed out after 100 ms"), "{message}");
    assert_healthy();
}

#[test]
fn a_call_that_finishes_under_its_deadline_succeeds() {
    let limits = Limits { time_ms: 1000, ..Limits::default() };
    let out = evil().process("done", &ctx(), r#"{"mode":"busy","ms":200}"#, &limits).unwrap();
    assert_eq!(out, "done");
}

#[test]
fn one_gib_allocation_hits_the_memory_cap() {
    match cause(r#"{"mode":"alloc","bytes":1073741824}"#, "x") {
        Cause::MemoryLimit { limit, requested } => {
            assert_eq!(limit, 64 << 20);
            assert!(requested > limit, "requested {requested}");
        }
        other => panic!("expected a memory-limit error, got {other:?}"),
    }
    assert_healthy();
}

#[test]
fn slow_memory_growth_stops_at_the_cap() {
    let limits = Limits { memory_bytes: 16 << 20, time_ms: 5000, ..Limits::default() };
    let err = evil().process("x", &ctx(), r#"{"mode":"grow"}"#, &limits).unwrap_err();
    assert!(matches!(err.cause, Cause::MemoryLimit { limit, .. } if limit == 16 << 20), "{err}");
    assert_healthy();
}

#[test]
fn panic_reports_the_guest_message() {
    match cause(r#"{"mode":"panic"}"#, "x") {
        Cause::Panic(message) => assert!(message.contains("guest-evil: panic requested"), "{message}"),
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_healthy();
}

#[test]
fn unreachable_is_a_trap() {
    assert!(matches!(cause(r#"{"mode":"unreachable"}"#, "x"), Cause::Trap(_)));
    assert_healthy();
}

#[test]
fn hundred_megabyte_output_is_stopped() {
    // 100 MB does not fit in the default 64 MiB memory: the guest is stopped while building it.
    assert!(matches!(cause(r#"{"mode":"output","bytes":100000000}"#, "x"), Cause::MemoryLimit { .. }));
    // With room in memory and time, the output cap catches it.
    let limits = Limits { memory_bytes: 512 << 20, time_ms: 10_000, ..Limits::default() };
    let err = evil().process("x", &ctx(), r#"{"mode":"output","bytes":100000000}"#, &limits).unwrap_err();
    assert_eq!(err.cause, Cause::OutputTooLarge { size: 100_000_000, limit: 1 << 20 });
    assert_healthy();
}

#[test]
fn output_amplified_1000x_is_capped() {
    let input = "放大".repeat(1000); // 6 KB -> 6 MB
    let err = run(r#"{"mode":"amplify","factor":1000}"#, &input).unwrap_err();
    assert!(matches!(err.cause, Cause::OutputTooLarge { size: 6_000_000, .. }), "{err}");
    assert_healthy();
}

#[test]
fn files_are_not_readable() {
    match cause(r#"{"mode":"read-file","path":"/etc/passwd"}"#, "x") {
        Cause::Internal(message) => assert!(message.starts_with("read failed"), "{message}"),
        other => panic!("expected the guest to report a failed read, got {other:?}"),
    }
    // Relative paths and the current directory resolve to nothing either.
    assert!(matches!(cause(r#"{"mode":"read-file","path":"Cargo.toml"}"#, "x"), Cause::Internal(_)));
}

#[test]
fn the_environment_and_arguments_are_empty() {
    // SAFETY: a test-only variable, set before any plugin reads it; nothing else writes it.
    unsafe { std::env::set_var("PIPEHOST_TEST_SECRET", "hunter2") };
    assert_eq!(run(r#"{"mode":"env"}"#, "x").unwrap(), "vars: 0, args: 0");
}

#[test]
fn sockets_are_denied() {
    // A real listener: a connection would succeed if the sandbox allowed it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    match cause(&format!(r#"{{"mode":"tcp","addr":"{addr}"}}"#), "x") {
        Cause::Internal(message) => assert!(message.starts_with("tcp failed"), "{message}"),
        other => panic!("expected a failed connect, got {other:?}"),
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the guest reached the listener");
}

#[test]
fn dns_is_denied() {
    match cause(r#"{"mode":"dns","host":"localhost"}"#, "x") {
        Cause::Internal(message) => assert!(message.starts_with("dns failed"), "{message}"),
        other => panic!("expected a failed lookup, got {other:?}"),
    }
}

#[test]
fn stdout_stderr_and_log_reach_the_host_log_tagged_with_the_plugin() {
    let (out, logs) = capture_logs(|| run(r#"{"mode":"stdout"}"#, "marker-42"));
    assert_eq!(out.unwrap(), "marker-42");
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("marker-42")).collect();
    assert!(lines.len() >= 2, "expected stdout and stderr lines in:\n{logs}");
    assert!(lines.iter().all(|l| l.contains("plugin=evil") && l.contains("request_id=req-1")), "{logs}");
    assert!(logs.contains("stream=\"stdout\"") && logs.contains("stream=\"stderr\""), "{logs}");

    let (out, logs) = capture_logs(|| run(r#"{"mode":"log"}"#, "x"));
    out.unwrap();
    for level in ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"] {
        assert!(
            logs.lines().any(|l| l.contains(level) && l.contains("plugin=evil")),
            "no {level} in:\n{logs}"
        );
    }
}

#[test]
fn plugin_errors_keep_their_kind() {
    assert_eq!(
        cause(r#"{"mode":"invalid-input"}"#, "x"),
        Cause::InvalidInput("guest-evil: invalid input requested".into())
    );
    match evil().validate_config(r#"{"mode":"ok","colour":1}"#, &ctx(), &Limits::default()).unwrap_err().cause
    {
        Cause::InvalidConfig(message) => assert!(message.contains("colour"), "{message}"),
        other => panic!("expected invalid config, got {other:?}"),
    }
    evil().validate_config(r#"{"mode":"busy","ms":1}"#, &ctx(), &Limits::default()).unwrap();
}

#[test]
fn a_stuck_plugin_does_not_delay_other_calls() {
    std::thread::scope(|s| {
        let stuck = s.spawn(|| cause(r#"{"mode":"loop"}"#, "x"));
        let healthy: Vec<_> = (0..8).map(|i| s.spawn(move || run("{}", &format!("call {i}")))).collect();
        for (i, handle) in healthy.into_iter().enumerate() {
            assert_eq!(handle.join().unwrap().unwrap(), format!("call {i}"));
        }
        assert!(matches!(stuck.join().unwrap(), Cause::Timeout(_)));
    });
}

#[test]
fn streaming_deadlines_apply_per_push_and_a_failed_stream_stays_failed() {
    let limits = Limits::default();
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"loop","in":"push"}"#, &limits).unwrap();
    let err = stream.push("x").unwrap_err();
    assert!(matches!(err.cause, Cause::Timeout(_)), "{err}");
    let again = stream.push("y").unwrap_err();
    assert!(matches!(again.cause, Cause::Host(ref m) if m.contains("already failed")), "{again}");

    // A fresh stream through the same plugin works, and `stop` comes through.
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"stop","in":"push"}"#, &limits).unwrap();
    let out = stream.push("abc").unwrap();
    assert_eq!((out.emit.as_str(), out.stop), ("abc", true));
    assert_eq!(stream.finish().unwrap(), "");
}

#[test]
fn a_stream_never_finished_is_simply_dropped() {
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"ok","in":"push"}"#, &Limits::default()).unwrap();
    assert_eq!(stream.push("half").unwrap().emit, "half");
    drop(stream);
    assert_healthy();
}

#[test]
fn wrong_world_and_wrong_contract_version_are_rejected_at_load() {
    let err = runtime().load_post_processor("ww", &component("guest-wrong-world")).err().unwrap();
    let message = err.to_string();
    assert!(matches!(err.cause, Cause::Contract(_)), "{message}");
    assert!(message.contains("not a post-processor") && message.contains("prompt-build"), "{message}");

    let err = runtime().load_prompt_builder("empty", &component("guest-empty")).err().unwrap();
    assert!(err.to_string().contains("not a prompt-builder"), "{err}");

    let err = runtime().load_post_processor("old", &component("guest-old-contract")).err().unwrap();
    let message = err.to_string();
    assert!(message.contains("0.0.9") && message.contains("0.1.0"), "{message}");
}

#[test]
fn files_that_are_not_components_are_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "definitely not wasm").unwrap();
    let err = runtime().load_post_processor("text", &text).err().unwrap();
    assert!(
        matches!(err.cause, Cause::Load(_)) && err.to_string().contains("not a WebAssembly file"),
        "{err}"
    );

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let err = runtime().load_post_processor("core", &core).err().unwrap();
    assert!(err.to_string().contains("core WebAssembly module, not a component"), "{err}");

    let err = runtime().load_post_processor("missing", &dir.path().join("missing.wasm")).err().unwrap();
    assert!(err.to_string().contains("missing.wasm"), "{err}");
}

#[test]
fn compile_cache_hits_and_survives_corruption_and_read_only_folders() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { cache_dir: Some(dir.path().to_owned()), pooling: true };
    let wasm = component("guest-empty");
    let load = |config: &RuntimeConfig| {
        let plugin = PluginRuntime::new(config).unwrap().load_post_processor("empty", &wasm).unwrap();
        assert_eq!(plugin.process("ok", &ctx(), "{}", &Limits::default()).unwrap(), "ok");
        plugin.meta().outcome
    };
    assert_eq!(load(&config), CacheOutcome::Compiled);
    assert_eq!(load(&config), CacheOutcome::Hit);

    // Flip a byte in the middle of every entry: detected, recompiled, rewritten.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    assert_eq!(load(&config), CacheOutcome::Compiled);
    assert_eq!(load(&config), CacheOutcome::Hit);

    // A cache folder that cannot be created: compile in memory and carry on.
    let blocked = dir.path().join("file-in-the-way");
    std::fs::write(&blocked, "").unwrap();
    let config = RuntimeConfig { cache_dir: Some(blocked.join("sub")), pooling: true };
    assert_eq!(load(&config), CacheOutcome::Compiled);
}

#[test]
fn on_demand_allocation_works_too() {
    let config = RuntimeConfig { cache_dir: None, pooling: false };
    let runtime = PluginRuntime::new(&config).unwrap();
    let plugin = runtime.load_post_processor("evil", &component("guest-evil")).unwrap();
    let err = plugin
        .process("x", &ctx(), r#"{"mode":"alloc","bytes":1073741824}"#, &Limits::default())
        .unwrap_err();
    assert!(matches!(err.cause, Cause::MemoryLimit { .. }), "{err}");
    assert_eq!(plugin.process("fine", &ctx(), "{}", &Limits::default()).unwrap(), "fine");
}

#[test]
fn sleeping_in_the_host_does_not_outlast_the_deadline() {
    // A WASI clock subscription blocks in the host, where epoch interruption cannot reach:
    // without a bound, one `sleep` holds the calling thread for as long as the guest asks.
    let started = Instant::now();
    let err = run(r#"{"mode":"sleep","ms":3000}"#, "x").unwrap_err();
    assert_eq!(err.cause, Cause::Timeout(Duration::from_millis(100)), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
    assert_healthy();
    // A sleep that ends within the deadline is allowed.
    let limits = Limits { time_ms: 1000, ..Limits::default() };
    assert_eq!(evil().process("y", &ctx(), r#"{"mode":"sleep","ms":20}"#, &limits).unwrap(), "y");
    // So is one in a stream's push, against the push's own deadline; past it, a timeout.
    let mut stream = evil().open_stream(&ctx(), r#"{"mode":"sleep","ms":20,"in":"push"}"#, &limits).unwrap();
    assert_eq!(stream.push("a").unwrap().emit, "a");
    let mut stream =
        evil().open_stream(&ctx(), r#"{"mode":"sleep","ms":5000,"in":"push"}"#, &Limits::default()).unwrap();
    assert!(matches!(stream.push("a").unwrap_err().cause, Cause::Timeout(_)));
}
/// Model-like text with repeats: `dedupe`'s work grows with it.
fn sentences(bytes: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(&format!("这是第{}句话，天气很好。The sentence number {} is here. ", i % 97, i % 89));
        i += 1;
    }
    text
}

#[test]
fn deadlines_measure_the_call_not_the_queue() {
    // A healthy CPU-bound call (dedupe on 32 KB) with a deadline five times what it takes alone,
    // called by eight times as many threads as there are cores: each call shares a core with
    // seven others for its whole run, so its wall-clock time is ~8x its own. A wall-clock
    // deadline failed many of these calls (it measured the queue for the core); the deadline
    // counts the call's own CPU time, so all succeed.
    let dedupe = runtime().load_post_processor("dedupe", &component("dedupe")).unwrap();
    let evil = evil();
    let input = sentences(32 << 10);
    let roomy = Limits { time_ms: 10_000, ..Limits::default() };
    let expected = dedupe.process(&input, &ctx(), "{}", &roomy).unwrap();
    let mut alone: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            dedupe.process(&input, &ctx(), "{}", &roomy).unwrap();
            t.elapsed()
        })
        .collect();
    alone.sort();
    let time_ms = (alone[2].as_millis() as u64 * 5).max(20);
    let limits = Limits { time_ms, ..Limits::default() };

    let threads = 8 * cores();
    let started = Instant::now();
    let (outcomes, looped) = std::thread::scope(|s| {
        let calls: Vec<_> = (0..threads)
            .map(|_| {
                let (dedupe, input, expected) = (&dedupe, &input, &expected);
                s.spawn(move || {
                    (0..4)
                        .map(|_| {
                            let t = Instant::now();
                            let out = dedupe.process(input, &ctx(), "{}", &limits);
                            (out.map(|out| out == *expected), t.elapsed())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // An infinite loop in the same crowd is still stopped at its deadline.
        let looped = s.spawn(|| {
            let t = Instant::now();
            (evil.process("x", &ctx(), r#"{"mode":"loop"}"#, &limits), t.elapsed())
        });
        let outcomes: Vec<_> = calls.into_iter().flat_map(|c| c.join().unwrap()).collect();
        (outcomes, looped.join().unwrap())
    });
    // How many calls took longer than the deadline in wall-clock time (informative: the
    // contention is real, a wall-clock deadline would have failed these).
    let slow = outcomes.iter().filter(|(_, took)| took.as_millis() as u64 > time_ms).count();
    eprintln!("{slow} of {} calls ran longer than {time_ms} ms of wall-clock time", outcomes.len());
    let outcomes: Vec<_> = outcomes.into_iter().map(|(o, _)| o).collect();
    let failed: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed (deadline {time_ms} ms, alone {alone:?}, {threads} threads, took {:?}): {}",
        failed.len(),
        outcomes.len(),
        started.elapsed(),
        failed[0]
    );
    assert!(outcomes.iter().all(|o| *o.as_ref().unwrap()), "an answer differed from the lone call's");
    let (result, took) = looped;
    assert_eq!(result.unwrap_err().cause, Cause::Timeout(Duration::from_millis(time_ms)));
    assert!(took < Duration::from_secs(10), "the loop took {took:?}");
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
