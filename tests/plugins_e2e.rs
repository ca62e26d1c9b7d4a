//! The shipped plugins, built as components and run through the host: the seed's examples,
//! streaming through the host equals whole-text processing, and the `pipehost plugin` CLI.

mod support;

use std::process::Command;

use pipehost::plugin::{CallContext, Cause, Limits, Message, PostProcessor, PromptBuilder};
use support::{component, runtime};

fn post(name: &str) -> PostProcessor {
    runtime().load_post_processor(name, &component(name)).unwrap()
}

fn ctx() -> CallContext {
    CallContext { pipeline: "e2e".into(), request_id: "r1".into(), stage: "s".into() }
}

/// Runs `text` whole and streamed in several chunkings; asserts they agree and returns it.
fn process_both_ways(plugin: &PostProcessor, config: &str, text: &str) -> String {
    let limits = Limits::default();
    let whole = plugin.process(text, &ctx(), config, &limits).unwrap();
    let chars: Vec<char> = text.chars().collect();
    for size in [1, 2, 5, 64] {
        let mut stream = plugin.open_stream(&ctx(), config, &limits).unwrap();
        let mut streamed = String::new();
        for chunk in chars.chunks(size) {
            let out = stream.push(&chunk.iter().collect::<String>()).unwrap();
            streamed.push_str(&out.emit);
            if out.stop {
                break;
            }
        }
        streamed.push_str(&stream.finish().unwrap());
        assert_eq!(streamed, whole, "{}: stream in chunks of {size} != whole", plugin.name());
    }
    whole
}

#[test]
fn dedupe_drops_repeated_sentences_and_stutter() {
    let dedupe = post("dedupe");
    let out = process_both_ways(&dedupe, "{}", "今天天气很好。今天天气很好。我们去公园吧！我们去公园吧！");
    assert_eq!(out, "今天天气很好。我们去公园吧！");
    let out =
        process_both_ways(&dedupe, r#"{"max_repeat":1}"#, "很好很好很好。the the the end. The end. 再见。");
    assert_eq!(out, "很好。the end. 再见。");
}

#[test]
fn punctuation_fixes_chinese_and_english_context() {
    let punctuation = post("punctuation");
    let out = process_both_ways(&punctuation, "{}", "你好,世界!在LeanCloud上共10个\"测试\"...");
    assert_eq!(out, "你好，世界！在 LeanCloud 上共 10 个“测试”……");
    let out = process_both_ways(&punctuation, r#"{"locale":"en"}"#, "Hello ,world。It costs 3.14 dollars！");
    assert_eq!(out, "Hello, world. It costs 3.14 dollars!");
}

#[test]
fn tone_rewrites_stock_phrases_with_presets() {
    let tone = post("tone");
    let out =
        process_both_ways(&tone, r#"{"presets":["zh-warm"]}"#, "这是一个很好的问题。你可以考虑早点休息。");
    assert_eq!(out, "这个问题很有意思。不妨试试早点休息。");
    let config = r#"{"presets":["en-warm"],"rules":{"awesome":"lovely"}}"#;
    let out = process_both_ways(&tone, config, "What an awesome day. I hope this helps!");
    assert_eq!(out, "What an lovely day. Hope that helps!");
    let err = tone.validate_config(r#"{"presets":["nope"]}"#, &ctx(), &Limits::default()).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidConfig(ref m) if m.contains("nope")), "{err}");
}

#[test]
fn truncate_cuts_at_a_sentence_and_stops_the_stream() {
    let truncate = post("truncate");
    let config = r#"{"max":10}"#;
    let text = "这是第一句话。这是第二句话，还有更多内容。";
    let out = process_both_ways(&truncate, config, text);
    assert_eq!(out, "这是第一句话。……");
    // The stream asks the host to stop before the input runs out.
    let mut stream = truncate.open_stream(&ctx(), config, &Limits::default()).unwrap();
    let stopped_at = text.chars().position(|c| stream.push(&c.to_string()).unwrap().stop);
    assert!(stopped_at.is_some_and(|i| i < text.chars().count() - 1), "stopped at {stopped_at:?}");
}

#[test]
fn truncate_keeps_the_first_lines_and_stops_the_stream() {
    let truncate = post("truncate");
    // The poem pipeline's setting; blank lines do not count.
    let config = r#"{"max_lines":6}"#;
    let lines =
        ["秋夜", "", "月光落在窗台，", "虫声细细。", "风很轻，", "桂花香", "落在衣襟上", "第七行", "第八行"];
    let text = lines.join("\n");
    let out = process_both_ways(&truncate, config, &text);
    assert_eq!(out, lines[..7].join("\n"));
    // The stream stops at the first character of the seventh line.
    let mut stream = truncate.open_stream(&ctx(), config, &Limits::default()).unwrap();
    let stopped_at = text.chars().position(|c| stream.push(&c.to_string()).unwrap().stop);
    assert_eq!(stopped_at, Some(out.chars().count() + 1));
}

#[test]
fn persona_builds_role_style_constraint_messages_and_keeps_variables_literal() {
    let persona: PromptBuilder = runtime().load_prompt_builder("persona", &component("persona")).unwrap();
    let config = r#"{
        "role": "你是一位现代诗人。",
        "style": "用意象说话。",
        "constraints": ["至少调动两种感官", "不超过6行"],
        "template": "以「{{ topic }}」为题写一首诗。",
        "variables": [{"name": "topic", "required": true, "max_chars": 50}]
    }"#;
    persona.validate_config(config, &ctx(), &Limits::default()).unwrap();
    let vars = vec![("topic".to_owned(), "秋夜{{ 7*7 }}".to_owned())];
    let history = vec![Message { role: "user".into(), content: "早".into() }];
    let messages = persona.build(&vars, &history, &ctx(), config, &Limits::default()).unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0].role, "system");
    assert!(messages[0].content.contains("# 角色") && messages[0].content.contains("- 不超过6行"));
    assert_eq!(messages[1].content, "早");
    assert_eq!(
        messages[2],
        Message { role: "user".into(), content: "以「秋夜{{ 7*7 }}」为题写一首诗。".into() }
    );

    let err = persona.build(&[], &[], &ctx(), config, &Limits::default()).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidInput(ref m) if m.contains("topic")), "{err}");
    let bad = r#"{"template": "{{ topic"}"#;
    let err = persona.validate_config(bad, &ctx(), &Limits::default()).unwrap_err();
    assert!(matches!(err.cause, Cause::InvalidConfig(_)), "{err}");
}

fn pipehost(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pipehost"))
        .args(args)
        .env("PIPEHOST_CACHE_DIR", support::test_cache_dir())
        .output()
        .unwrap()
}

#[test]
fn cli_runs_a_plugin_by_path_whole_and_streamed() {
    let wasm = component("dedupe");
    let wasm = wasm.to_str().unwrap();
    let input = "你好。你好。再见。";
    let out = pipehost(&["plugin", "run", wasm, "--input", input]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "你好。再见。");
    let out = pipehost(&["plugin", "run", wasm, "--input", input, "--stream-chunk", "2"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "你好。再见。");
}

#[test]
fn cli_reports_plugin_errors_on_one_line_with_status_1() {
    let wasm = component("dedupe");
    let out = pipehost(&[
        "plugin",
        "run",
        wasm.to_str().unwrap(),
        "--config",
        r#"{"max_repat":1}"#,
        "--input",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: plugin `dedupe`: invalid config:") && stderr.contains("max_repat"),
        "{stderr}"
    );

    let evil = component("guest-evil");
    let out = pipehost(&[
        "plugin",
        "run",
        evil.to_str().unwrap(),
        "--config",
        r#"{"mode":"loop"}"#,
        "--input",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out after 100 ms"));

    let out = pipehost(&["plugin", "run", "../../etc/passwd", "--input", "x"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cli_scaffolds_a_plugin_that_builds_and_passes_its_tests() {
    if std::env::var_os("PIPEHOST_SKIP_SCAFFOLD_BUILD").is_some() {
        eprintln!("skipped: PIPEHOST_SKIP_SCAFFOLD_BUILD is set");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("shout");
    let out = pipehost(&["plugin", "new", "shout", "--dir", crate_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A standalone crate outside the workspace: its own target folder, shared across runs so
    // the dependencies compile once.
    let target = std::env::temp_dir().join("pipehost-scaffold-target");
    let cargo = |args: &[&str]| {
        let status = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .unwrap();
        assert!(status.success(), "cargo {args:?} failed in the scaffolded crate");
    };
    cargo(&["test", "--quiet"]);
    cargo(&["build", "--quiet", "--target", "wasm32-wasip2", "--profile", "plugin"]);
    let wasm = target.join("wasm32-wasip2/plugin/shout.wasm");
    let out = pipehost(&[
        "plugin",
        "run",
        wasm.to_str().unwrap(),
        "--config",
        r#"{"prefix":"» "}"#,
        "--input",
        "hi",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "» hi");
}
