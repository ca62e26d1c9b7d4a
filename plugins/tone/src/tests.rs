use super::*;
use pipehost_plugin_sdk::testing::{assert_stream_matches_whole, run_stream};

fn run(text: &str, config: &str) -> String {
    let config = Tone::config(config).expect("config");
    Tone::process(text, &config, &Context::default()).expect("process")
}

fn config_err(config: &str) -> String {
    match Tone::config(config) {
        Err(PluginError::InvalidConfig(m)) => m,
        other => panic!("expected InvalidConfig for {config}, got {other:?}"),
    }
}

const SEED: &str = r#"{"rules": [
    {"from": "这是一个很好的问题", "to": "这个问题很有意思"},
    {"from": "你可以考虑", "to": "不妨试试"}
]}"#;

#[test]
fn seed_examples() {
    assert_eq!(
        run("这是一个很好的问题。你可以考虑使用 Redis 做缓存。", SEED),
        "这个问题很有意思。不妨试试使用 Redis 做缓存。"
    );
}

#[test]
fn rules_as_map() {
    let config = r#"{"rules": {"你可以考虑": "不妨试试", "总而言之": "总之"}}"#;
    assert_eq!(run("总而言之，你可以考虑换个思路。", config), "总之，不妨试试换个思路。");
}

#[test]
fn empty_config_is_identity() {
    let text = "As an AI language model, 我不能……\n这是一个很好的问题";
    assert_eq!(run(text, "{}"), text);
    assert_eq!(run(text, ""), text);
}

#[test]
fn zh_warm_preset() {
    let config = r#"{"presets": ["zh-warm"]}"#;
    assert_eq!(
        run("作为一个AI语言模型，我没有个人观点。这是一个很好的问题！希望这对你有帮助。", config),
        "我没有个人观点。这个问题很有意思！希望能帮到你。"
    );
    assert_eq!(
        run("总而言之，如果你还有其他问题，请随时告诉我。", config),
        "总之，还有什么想问的，随时找我。"
    );
}

#[test]
fn en_warm_preset() {
    let config = r#"{"presets": ["en-warm"]}"#;
    assert_eq!(
        run("As an AI language model, I don't have opinions. I hope this helps!", config),
        "I don't have opinions. Hope that helps!"
    );
    assert_eq!(
        run("It's important to note that Rust has no GC. In conclusion, use it.", config),
        "Note that Rust has no GC. So, use it."
    );
}

#[test]
fn config_rules_override_presets() {
    let config = r#"{"presets": ["zh-warm"], "rules": [{"from": "这是一个很好的问题", "to": "好问题"}]}"#;
    assert_eq!(run("这是一个很好的问题。你可以考虑一下。", config), "好问题。不妨试试一下。");
    // Mapping a phrase to itself keeps it.
    let config = r#"{"presets": ["zh-warm"], "rules": {"总而言之，": "总而言之，"}}"#;
    assert_eq!(run("总而言之，就这样。", config), "总而言之，就这样。");
}

#[test]
fn leftmost_longest() {
    let config = r#"{"rules": [
        {"from": "很好", "to": "A"},
        {"from": "很好的问题", "to": "B"},
        {"from": "的问题很多", "to": "C"}
    ]}"#;
    // Longest at the leftmost start wins, and the overlapping later match is not applied.
    assert_eq!(run("很好的问题很多", config), "B很多");
    assert_eq!(run("很好的答案", config), "A的答案");
    // Leftmost beats longer-but-later.
    assert_eq!(run("一很好的问题很多", config), "一B很多");
    let config =
        r#"{"rules": [{"from": "ab", "to": "X"}, {"from": "bcd", "to": "Y"}], "word_boundary": false}"#;
    assert_eq!(run("abcd", config), "Xcd");
}

#[test]
fn replacements_are_not_rescanned() {
    let config = r#"{"rules": {"a": "aa", "b": "a"}, "word_boundary": false}"#;
    assert_eq!(run("ab", config), "aaa");
}

#[test]
fn word_boundary_english() {
    let config = r#"{"rules": {"use": "employ", "AI": "assistant"}}"#;
    assert_eq!(
        run("We use it; users reuse AI, not AIs.", config),
        "We employ it; users reuse assistant, not AIs."
    );
    // Adjacent CJK is a boundary: Chinese text has no spaces.
    assert_eq!(run("我们use它", config), "我们employ它");
    // Digits are word characters ("AI2" is a name).
    assert_eq!(run("AI2 and 2AI", config), "AI2 and 2AI");
    // Off: matches inside words too.
    let config = r#"{"rules": {"use": "employ"}, "word_boundary": false}"#;
    assert_eq!(run("users", config), "employrs");
}

#[test]
fn word_boundary_falls_back_to_shorter_match() {
    // The longest phrase at this position ends inside a word; the shorter one does not.
    let config = r#"{"rules": {"hope": "wish", "hope this help": "X"}}"#;
    assert_eq!(run("I hope this helps", config), "I wish this helps");
    assert_eq!(run("I hope this help", config), "I X");
}

#[test]
fn case_insensitive_ascii_only() {
    let config = r#"{"presets": ["en-warm"], "case_insensitive": true}"#;
    assert_eq!(
        run("Well, as an AI language model, I can't. i hope this helps!", config),
        "Well, I can't. Hope that helps!"
    );
    // Non-ASCII letters are not folded.
    let config = r#"{"rules": {"café": "coffee"}, "case_insensitive": true}"#;
    assert_eq!(run("CAFÉ Café cafÉ café", config), "CAFÉ coffee cafÉ coffee");
    // Case-sensitive by default.
    let config = r#"{"presets": ["en-warm"]}"#;
    assert_eq!(run("i hope this helps!", config), "i hope this helps!");
}

#[test]
fn bad_config_names_the_field() {
    let m = config_err(r#"{"presets": ["zh-warm", "zh-cold"]}"#);
    assert!(m.contains("presets") && m.contains("zh-cold"), "{m}");
    let m = config_err(r#"{"rules": [{"from": "a", "to": "b"}, {"from": "", "to": "x"}]}"#);
    assert!(m.contains("rules[1].from") && m.contains("empty"), "{m}");
    let m = config_err(r#"{"rules": {"": "x"}}"#);
    assert!(m.contains("rules[0].from"), "{m}");
    let m = config_err(r#"{"rulez": []}"#);
    assert!(m.contains("rulez"), "{m}");
    let m = config_err(r#"{"rules": [{"from": "a", "to": "b", "too": 1}]}"#);
    assert!(m.contains("too"), "{m}");
    let m = config_err(r#"{"rules": [{"from": "a"}]}"#);
    assert!(m.contains("rules[0]") && m.contains("to"), "{m}");
    let m = config_err(r#"{"rules": [{"from": "a", "to": 3}]}"#);
    assert!(m.contains("rules[0].to"), "{m}");
    let m = config_err(r#"{"case_insensitive": "yes"}"#);
    assert!(m.contains("case_insensitive"), "{m}");
    let m = config_err(r#"{"rules": "a=b"}"#);
    assert!(m.contains("rules"), "{m}");
    // Streams reject bad config the same way.
    assert!(matches!(
        run_stream::<Tone>("x", r#"{"presets": ["nope"]}"#, &[1]),
        Err(PluginError::InvalidConfig(_))
    ));
}

#[test]
fn every_preset_compiles_and_has_no_empty_from() {
    for (name, rules) in PRESETS {
        assert!(!rules.is_empty(), "{name}");
        assert!(rules.iter().all(|(from, _)| !from.is_empty()), "{name}");
        run("x", &format!(r#"{{"presets": ["{name}"]}}"#));
    }
}

#[test]
fn streams_incrementally() {
    let config = Tone::config(SEED).unwrap();
    let mut s = Tone::open(config, Context::default()).unwrap();
    // Nothing here can start a phrase: all of it goes out at once.
    assert_eq!(s.push("Hello, 世界。").unwrap().emit, "Hello, 世界。");
    // "这是一个" may become the phrase: held back.
    assert_eq!(s.push("这是一个").unwrap().emit, "");
    assert_eq!(s.push("很好的问题").unwrap().emit, "这个问题很有意思");
    // Diverges from every phrase: released.
    assert_eq!(s.push("你可以").unwrap().emit, "");
    assert_eq!(s.push("吗").unwrap().emit, "你可以吗");
    assert_eq!(s.finish().unwrap(), "");
}

#[test]
fn stream_holds_for_word_boundary_lookahead() {
    let config = Tone::config(r#"{"rules": {"use": "employ"}}"#).unwrap();
    let mut s = Tone::open(config, Context::default()).unwrap();
    assert_eq!(s.push("We use").unwrap().emit, "We ");
    assert_eq!(s.push("r").unwrap().emit, "user");
    assert_eq!(s.push(" use").unwrap().emit, " ");
    assert_eq!(s.finish().unwrap(), "employ");
}

#[test]
fn stream_matches_whole_examples() {
    let texts = [
        "这是一个很好的问题。你可以考虑使用 Redis。这是一个很好的答案",
        "As an AI language model, I hope this helps! As an AI, ok.",
        "作为一个AI语言模型，作为一个AI语言模型我不能。希望这对你有帮助",
    ];
    let configs = [SEED, r#"{"presets": ["zh-warm", "en-warm"], "case_insensitive": true}"#];
    for text in texts {
        for config in configs {
            for chunks in [&[1][..], &[2], &[3, 1], &[5, 2, 7], &[100]] {
                assert_stream_matches_whole::<Tone>(text, config, chunks);
            }
        }
    }
}
