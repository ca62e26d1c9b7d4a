//! Pipeline files: every bad-input case gives one located error and disturbs nothing else;
//! the shipped examples load; hot reload swaps good versions and keeps the old one on errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pipehost::pipeline::{LoadError, Registry};

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = "\
description: test
variables:
  - name: input
    required: true
prompt:
  plugin: persona
  config:
    template: \"{{ input }}\"
post:
  - plugin: dedupe
";

/// Loads `files` into a fresh folder; returns the registry and the folders (kept alive).
fn load(files: &[(&str, &str)]) -> (Registry, tempfile::TempDir, tempfile::TempDir) {
    let pipelines = tempfile::tempdir().unwrap();
    let plugins = support::plugins_dir();
    for (name, text) in files {
        write(pipelines.path(), name, text);
    }
    let registry = Registry::load(pipelines.path(), plugins.path(), support::runtime());
    (registry, pipelines, plugins)
}

/// The single error of a one-file folder (plus a good file that must still load).
fn error_of(yaml: &str) -> LoadError {
    let (registry, _p, _q) = load(&[("bad.yaml", yaml), ("good.yaml", GOOD)]);
    assert!(registry.get("good").is_some(), "a bad file disturbed a good one");
    let errors = registry.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors.into_iter().next().unwrap();
    let line = e.to_string();
    assert!(!line.contains('\n'), "not one line: {line}");
    assert!(line.contains("bad.yaml:"), "{line}");
    e
}

fn assert_at(e: &LoadError, line: u64, column: u64, needle: &str) {
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert!(e.message.contains(needle), "expected {needle:?} in: {e}");
}

#[test]
fn malformed_yaml() {
    let e = error_of("prompt: [\n");
    assert_eq!(e.line, 1, "{e}");
    let e = error_of("prompt:\n  plugin: persona\n    config: x\n");
    assert!(e.line >= 2, "{e}");
}

#[test]
fn unknown_fields_suggest_the_closest() {
    let e = error_of("prompt:\n  plugin: persona\n  config: {template: hi}\nparams:\n  temprature: 0.8\n");
    assert_at(&e, 5, 3, "did you mean `temperature`?");
    let e = error_of("promt:\n  plugin: persona\n");
    assert_at(&e, 1, 1, "did you mean `prompt`?");
    let e = error_of(
        "prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: dedupe\n    on_eror: skip\n",
    );
    assert_at(&e, 6, 5, "did you mean `on_error`?");
}

#[test]
fn wrong_types() {
    let e = error_of("params:\n  max_tokens: lots\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert_at(&e, 2, 15, "");
    let e = error_of(
        "prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: dedupe\n    on_error: maybe\n",
    );
    assert_eq!(e.line, 6, "{e}");
}

#[test]
fn missing_plugin_and_path_traversal() {
    let e = error_of("prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: nothere\n");
    assert_at(&e, 5, 13, "not found");
    let e = error_of("prompt:\n  plugin: ../../etc/passwd\n");
    assert_at(&e, 2, 11, "invalid plugin name");
    let e =
        error_of("prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: /abs/dedupe\n");
    assert_at(&e, 5, 13, "invalid plugin name");
}

#[test]
fn sha256_pins() {
    let e = error_of(&format!(
        "prompt:\n  plugin: persona\n  sha256: \"{}\"\n  config: {{template: hi}}\n",
        "0".repeat(64)
    ));
    assert_at(&e, 3, 11, "pins");
    let e = error_of("prompt:\n  plugin: persona\n  sha256: nope\n  config: {template: hi}\n");
    assert_at(&e, 3, 11, "64 hex digits");
    // The right pin loads.
    let sha = pipehost_sha(&support::component("persona"));
    let (registry, _p, _q) = load(&[(
        "ok.yaml",
        &format!("prompt:\n  plugin: persona\n  sha256: {sha}\n  config: {{template: hi}}\n"),
    )]);
    assert!(registry.errors().is_empty(), "{:?}", registry.errors());
}

fn pipehost_sha(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn plugins_reject_their_config_at_load() {
    let e = error_of(
        "prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: truncate\n    config:\n      max: 0\n",
    );
    assert_at(&e, 7, 7, "`max`");
    let e = error_of(
        "prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: tone\n    config: {presets: [nope]}\n",
    );
    assert_eq!(e.line, 6, "{e}");
    // A prompt builder given to a post-processor stage breaks the contract.
    let e = error_of("prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: persona\n");
    assert_at(&e, 5, 13, "contract");
}

#[test]
fn template_errors_and_undeclared_variables() {
    let e = error_of("prompt:\n  plugin: persona\n  config:\n    template: \"{{ topic\"\n");
    assert_at(&e, 4, 5, "syntax error");
    let e = error_of("prompt:\n  plugin: persona\n  config:\n    template: \"{{ topic }}\"\n");
    assert_at(&e, 4, 5, "topic");
    let e = error_of(
        "variables: [{name: topic}]\nprompt:\n  plugin: persona\n  config:\n    template: \"{{ topic }}\"\n    variables: [{name: topic}]\n",
    );
    assert!(e.message.contains("declare variables once"), "{e}");
}

#[test]
fn duplicate_keys_names_and_stages() {
    let e =
        error_of("description: a\ndescription: b\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert_at(&e, 2, 1, "duplicate");
    // Files load in name order: the second claim of a name is the error.
    let (registry, _p, _q) = load(&[("a.yaml", GOOD), ("b.yaml", &format!("name: a\n{GOOD}"))]);
    let errors = registry.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("b.yaml:1:7: duplicate pipeline name `a`"), "{}", errors[0]);
    assert!(errors[0].message.contains("a.yaml"), "{}", errors[0]);
    let e = error_of(
        "prompt:\n  plugin: persona\n  config: {template: hi}\npost:\n  - plugin: dedupe\n  - plugin: dedupe\n",
    );
    assert_at(&e, 6, 13, "used twice");
    let e =
        error_of("variables: [{name: a}, {name: a}]\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert!(e.message.contains("declared twice"), "{e}");
}

#[test]
fn every_independent_problem_of_a_file_is_reported() {
    let yaml = "backend: gpt5\nparams: {top_p: 7}\nprompt:\n  plugin: nothere\npost:\n  - plugin: truncate\n    config: {max: 0}\n  - plugin: ../x\n  - plugin: dedupe\n";
    let (registry, _p, _q) = load(&[("bad.yaml", yaml)]);
    let lines: Vec<String> = registry.errors().iter().map(|e| e.to_string()).collect();
    let at: Vec<String> =
        lines.iter().map(|l| l.split(": ").next().unwrap().rsplit('/').next().unwrap().to_owned()).collect();
    assert_eq!(
        at,
        ["bad.yaml:1:10", "bad.yaml:2:9", "bad.yaml:4:11", "bad.yaml:7:13", "bad.yaml:8:13"],
        "{lines:#?}"
    );
}

#[test]
fn enormous_files_are_rejected_unread() {
    let big = format!("description: \"{}\"\n", "x".repeat(2 << 20));
    let e = error_of(&big);
    assert_at(&e, 1, 1, "limited to");
}

#[test]
fn backends_params_limits_and_names() {
    let e = error_of("backend: gpt5\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert_at(&e, 1, 10, "`backend`");
    let e = error_of("params:\n  top_p: 1.5\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert!(e.message.contains("top_p"), "{e}");
    let e = error_of("prompt:\n  plugin: persona\n  config: {template: hi}\n  limits: {time_ms: 0}\n");
    assert!(e.message.contains("time_ms"), "{e}");
    let e = error_of("name: \"../evil\"\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert_at(&e, 1, 7, "invalid pipeline name");
    let e = error_of("input_variable: question\nprompt:\n  plugin: persona\n  config: {template: hi}\n");
    assert!(e.message.contains("input_variable"), "{e}");
}

#[test]
fn shipped_examples_load() {
    let plugins = support::plugins_dir();
    let registry =
        Registry::load(&support::repo_root().join("pipelines"), plugins.path(), support::runtime());
    assert!(registry.errors().is_empty(), "{:?}", registry.errors());
    let names: Vec<String> = registry.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["companion", "poem", "qa", "story", "style"]);
    // Every subjective task type of the recipes has a pipeline, tagged for the playground.
    let tasks: std::collections::BTreeSet<Option<String>> =
        registry.list().into_iter().map(|p| p.task).collect();
    let want = ["companionship", "creative-writing", "open-question", "style-imitation"];
    assert_eq!(tasks, want.iter().map(|t| Some(t.to_string())).collect());
    let style = registry.get("style").unwrap();
    let samples = style.variables.iter().find(|v| v.name == "samples").unwrap();
    assert!(samples.default.is_some(), "the samples come from the request or the file's default");
    let poem = registry.get("poem").unwrap();
    assert_eq!((poem.params.temperature, poem.params.top_p), (Some(0.8), Some(0.9)));
    assert!(poem.stages.iter().any(|s| s.plugin == "truncate"), "poem keeps at most six lines");
    let story = registry.get("story").unwrap();
    assert_eq!(story.params.top_k, Some(50));
    assert_eq!(story.params.repetition_penalty, Some(1.15));
    assert_eq!(story.params.max_tokens, Some(384));
    let qa = registry.get("qa").unwrap();
    assert!(qa.stages.iter().any(|s| s.plugin == "truncate"));
    let companion = registry.get("companion").unwrap();
    assert!(companion.stages.iter().any(|s| s.plugin == "tone"));
}

/// The CLI, sharing this binary's compile cache (and not writing to the user's).
fn cli(exe: &str) -> Command {
    support::runtime(); // fills the cache
    let mut command = Command::new(exe);
    command.env("PIPEHOST_CACHE_DIR", support::test_cache_dir());
    command
}

#[test]
fn check_and_schema_commands() {
    let exe = env!("CARGO_BIN_EXE_pipehost");
    let plugins = support::plugins_dir();
    let out = cli(exe)
        .args(["check", "--pipelines"])
        .arg(support::repo_root().join("pipelines"))
        .arg("--plugins")
        .arg(plugins.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = tempfile::tempdir().unwrap();
    write(bad.path(), "a.yaml", "prompt:\n  plugin: nothere\n");
    write(bad.path(), "b.yaml", "params:\n  temprature: 1\nprompt:\n  plugin: persona\n");
    write(bad.path(), "c.yaml", GOOD);
    let out = cli(exe)
        .args(["check", "--pipelines"])
        .arg(bad.path())
        .arg("--plugins")
        .arg(plugins.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("a.yaml:2:11: "), "{stdout}");
    assert!(lines[1].contains("b.yaml:2:3: "), "{stdout}");

    // `run` with the echo backend: the rendered prompt, post-processed, and the record.
    let out = cli(exe)
        .args([
            "run",
            "qa",
            "--backend",
            "echo",
            "--json",
            "--input",
            "天气很好很好很好。天气很好很好很好。",
            "--pipelines",
        ])
        .arg(support::repo_root().join("pipelines"))
        .arg("--plugins")
        .arg(plugins.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["text"], "天气很好很好。");
    assert_eq!(record["stages"].as_array().unwrap().len(), 4);
    let out = cli(exe)
        .args(["run", "qa", "--backend", "echo", "--var", "nope=1", "--pipelines"])
        .arg(support::repo_root().join("pipelines"))
        .arg("--plugins")
        .arg(plugins.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("variable `nope`"));

    let out = cli(exe).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = &schema["properties"];
    for field in ["name", "description", "backend", "params", "variables", "prompt", "post", "input_variable"]
    {
        assert!(props.get(field).is_some(), "schema lacks {field}: {schema}");
    }
    assert_eq!(schema["additionalProperties"], serde_json::json!(false));
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn hot_reload() {
    let (registry, pipelines, plugins) = load(&[("p.yaml", GOOD)]);
    let _watch = registry.watch().unwrap();
    let v1 = registry.get("p").unwrap();
    let dedupe_sha = v1.stages[0].sha256().to_owned();

    // A rewritten YAML is swapped in; a request holding v1 keeps it.
    write(pipelines.path(), "p.yaml", &GOOD.replace("description: test", "description: second"));
    eventually("the new description", || registry.info("p").unwrap().description == "second");
    assert_eq!(v1.description, "test");

    // A broken YAML keeps the old version serving, with the error shown.
    write(pipelines.path(), "p.yaml", "prompt: [\n");
    eventually("the reload error", || registry.info("p").unwrap().last_error.is_some());
    assert_eq!(registry.get("p").unwrap().description, "second");
    assert!(registry.stats().reload_failures >= 1);
    assert!(registry.info("p").unwrap().last_error.unwrap().contains("p.yaml:1:"));
    // Fixing it clears the error.
    write(pipelines.path(), "p.yaml", GOOD);
    eventually("the fixed version", || {
        registry.info("p").is_some_and(|i| i.description == "test" && i.last_error.is_none())
    });

    // A changed .wasm is loaded and swapped in for every pipeline that uses it.
    let tmp = plugins.path().join("dedupe.wasm.tmp");
    std::fs::copy(support::component("punctuation"), &tmp).unwrap();
    std::fs::rename(&tmp, plugins.path().join("dedupe.wasm")).unwrap();
    eventually("the new plugin version", || registry.get("p").unwrap().stages[0].sha256() != dedupe_sha);
    let new_sha = registry.get("p").unwrap().stages[0].sha256().to_owned();

    // A broken .wasm never replaces a working one.
    let failures = registry.stats().reload_failures;
    std::fs::write(plugins.path().join("dedupe.wasm"), b"not wasm").unwrap();
    eventually("the failed plugin reload", || registry.stats().reload_failures > failures);
    assert_eq!(registry.get("p").unwrap().stages[0].sha256(), new_sha);

    // A new file appears; a deleted one disappears.
    // (dedupe.wasm is broken now, so q uses no post-processor.)
    write(pipelines.path(), "q.yaml", &GOOD.replace("post:\n  - plugin: dedupe\n", ""));
    eventually("q loaded", || registry.get("q").is_some());
    std::fs::remove_file(pipelines.path().join("p.yaml")).unwrap();
    eventually("p removed", || registry.get("p").is_none());
    assert!(registry.get("q").is_some());
}

/// One change of content, one report: reloading a broken file whose content did not change
/// neither logs nor counts again; new broken content does; a retry after a plugin change that
/// fails the same way does not, but one that the plugin fixes loads.
#[test]
fn a_broken_file_is_reported_once_per_content() {
    let missing = GOOD.replace("plugin: dedupe", "plugin: later");
    let (registry, pipelines, plugins) = load(&[("p.yaml", GOOD), ("q.yaml", &missing)]);
    assert!(registry.get("q").is_none());
    write(pipelines.path(), "p.yaml", "prompt: [\n");
    let ((), logs) = support::capture_logs(|| {
        for _ in 0..3 {
            registry.reload_file("p.yaml", true);
        }
    });
    assert_eq!(registry.stats().reload_failures, 1);
    assert_eq!(logs.matches("reload failed").count(), 1, "{logs}");
    assert!(logs.contains("unchanged since its last load"), "{logs}");

    write(pipelines.path(), "p.yaml", "prompt: {plugin: [\n");
    registry.reload_file("p.yaml", true);
    registry.reload_file("p.yaml", true);
    assert_eq!(registry.stats().reload_failures, 2);

    // A plugin change retries every file in error: p fails as before (not counted), q loads.
    std::fs::copy(support::component("dedupe"), plugins.path().join("later.wasm")).unwrap();
    let ((), logs) = support::capture_logs(|| registry.plugin_changed("later"));
    assert_eq!(registry.stats().reload_failures, 2, "{logs}");
    assert!(!logs.contains("reload failed"), "{logs}");
    assert!(registry.get("q").is_some(), "{logs}");
    assert_eq!(registry.get("p").unwrap().description, "test");
}

/// `sed -i` on a watched file (a temporary file renamed over it: several events) counts one
/// failure, and later events on the unchanged broken file (`touch`, a no-op `sed -i`) count none.
/// Reading a file is no event: a reload's own read used to trigger the next reload, forever.
#[test]
fn sed_in_place_counts_one_failure() {
    let (registry, pipelines, _plugins) = load(&[("p.yaml", GOOD)]);
    let _watch = registry.watch().unwrap();
    let path = pipelines.path().join("p.yaml");
    let settle = || std::thread::sleep(pipehost::pipeline::DEBOUNCE * 8);
    // Reading or touching a good file reloads nothing.
    std::fs::read(&path).unwrap();
    assert!(Command::new("touch").arg(&path).status().unwrap().success());
    settle();
    assert_eq!(registry.stats(), pipehost::pipeline::ReloadStats { reloads: 0, reload_failures: 0 });
    let sed =
        |expr: &str| assert!(Command::new("sed").arg("-i").arg(expr).arg(&path).status().unwrap().success());
    sed("s/^prompt:$/prompt: [/");
    eventually("the reload error", || registry.info("p").unwrap().last_error.is_some());
    settle();
    assert_eq!(registry.stats().reload_failures, 1);
    assert!(Command::new("touch").arg(&path).status().unwrap().success());
    sed("s/nothing-matches-this//");
    settle();
    assert_eq!(registry.stats().reload_failures, 1);
    // Fixed: loads again.
    sed("s/^prompt: \\[$/prompt:/");
    eventually("the fixed version", || registry.info("p").unwrap().last_error.is_none());
    settle();
    assert_eq!(registry.stats(), pipehost::pipeline::ReloadStats { reloads: 1, reload_failures: 1 });
}
