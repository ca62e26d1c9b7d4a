use super::*;
use pipehost_plugin_sdk::testing::{assert_stream_matches_whole, run_stream};
use proptest::prelude::*;
use unicode_segmentation::UnicodeSegmentation;

fn truncate(text: &str, config: &str) -> String {
    let config = Truncate::config(config).expect("config");
    Truncate::process(text, &config, &Context::default()).expect("process")
}

#[test]
fn within_limit_is_unchanged() {
    assert_eq!(truncate("你好。", r#"{"max": 10}"#), "你好。");
    assert_eq!(truncate("12345", r#"{"max": 5}"#), "12345");
    assert_eq!(truncate("中文字符", r#"{"max": 8, "unit": "width"}"#), "中文字符");
    assert_eq!(truncate("", r#"{"max": 5}"#), "");
}

#[test]
fn chinese_prefers_sentence_then_clause() {
    let text = "今天天气很好。我们去公园散步吧，然后去吃饭。";
    assert_eq!(truncate(text, r#"{"max": 12}"#), "今天天气很好。……");
    let text = "我们今天去公园，然后去吃饭，最后回家睡觉。";
    assert_eq!(truncate(text, r#"{"max": 16}"#), "我们今天去公园，然后去吃饭……");
    // A first sentence under half the limit is not worth the loss: cut at a grapheme.
    assert_eq!(truncate("好。我们今天去公园散步然后去吃饭吧", r#"{"max": 12}"#), "好。我们今天去公园散……");
    // No ellipsis after a comma or an opening quote.
    assert_eq!(truncate("我喜欢苹果，香蕉和橙子", r#"{"max": 8, "min_fraction": 1}"#), "我喜欢苹果……");
    assert_eq!(truncate("他回头说：“等一下我。”", r#"{"max": 8, "min_fraction": 1}"#), "他回头说……");
}

#[test]
fn english_prefers_sentence_then_word() {
    let text = "Hello there. This is a long sentence that goes on.";
    assert_eq!(truncate(text, r#"{"max": 24}"#), "Hello there....");
    assert_eq!(
        truncate("The quick brown fox jumps over the lazy dog", r#"{"max": 20}"#),
        "The quick brown..."
    );
    assert_eq!(
        truncate("First part, second part, and more words", r#"{"max": 30}"#),
        "First part, second part..."
    );
    // Dr. does not end a sentence, so it is no place to cut.
    assert_eq!(truncate("I met Dr. Smith at the station today.", r#"{"max": 16}"#), "I met Dr....");
    // 1,000 is not a clause boundary.
    assert_eq!(
        truncate("It costs 1,000,000 dollars now", r#"{"max": 16, "min_fraction": 0.9}"#),
        "It costs 1,00..."
    );
    // A word longer than the budget is cut inside.
    assert_eq!(truncate("Supercalifragilisticexpialidocious", r#"{"max": 10}"#), "Superca...");
}

#[test]
fn ellipsis_choices() {
    let zh = "这是一个很长很长的句子需要截断";
    assert_eq!(truncate(zh, r#"{"max": 8, "ellipsis": "en"}"#), "这是一个很...");
    assert_eq!(truncate(zh, r#"{"max": 8, "ellipsis": "none"}"#), "这是一个很长很长");
    assert_eq!(truncate(zh, r#"{"max": 8, "ellipsis": ""}"#), "这是一个很长很长");
    assert_eq!(truncate(zh, r#"{"max": 8, "ellipsis": "[略]"}"#), "这是一个很[略]");
    assert_eq!(truncate("It is a long long sentence", r#"{"max": 10, "ellipsis": "zh"}"#), "It is a……");
    // Mixed text: Chinese dominates, so auto picks ……
    assert_eq!(truncate("我喜欢用Rust写服务端程序和工具", r#"{"max": 10}"#), "我喜欢用Rust……");
    // Text that already trails off gets no second ellipsis.
    assert_eq!(truncate("他想了想……然后说不知道", r#"{"max": 9, "min_fraction": 0.9}"#), "他想了想……然……");
    assert_eq!(truncate("他想了想……然后说不知道", r#"{"max": 8, "min_fraction": 0}"#), "他想了想……");
}

#[test]
fn never_splits_grapheme_clusters() {
    let emoji = "👨‍👩‍👧👍🏽🇨🇳🇺🇸中文";
    assert_eq!(truncate(emoji, r#"{"max": 5, "ellipsis": "none"}"#), "👨‍👩‍👧👍🏽🇨🇳🇺🇸中");
    assert_eq!(truncate(emoji, r#"{"max": 5, "ellipsis": "en"}"#), "👨‍👩‍👧👍🏽...");
    assert_eq!(
        truncate("cafe\u{301} cafe\u{301} cafe\u{301}", r#"{"max": 4, "ellipsis": "none"}"#),
        "cafe\u{301}"
    );
    assert_eq!(truncate("🇨🇳🇺🇸🇯🇵🇬🇧", r#"{"max": 2, "ellipsis": "none"}"#), "🇨🇳🇺🇸");
}

#[test]
fn width_unit() {
    assert_eq!(truncate("中文字符测试", r#"{"max": 8, "unit": "width", "ellipsis": "none"}"#), "中文字符");
    assert_eq!(truncate("中文字符测试", r#"{"max": 8, "unit": "width"}"#), "中文字……");
    // A wide character that would straddle the limit is left out.
    assert_eq!(truncate("ab中文", r#"{"max": 5, "unit": "width", "ellipsis": "none"}"#), "ab中");
    assert_eq!(truncate("abc中文", r#"{"max": 5, "unit": "width", "ellipsis": "none"}"#), "abc中");
    assert_eq!(truncate("abcd中文", r#"{"max": 5, "unit": "width", "ellipsis": "none"}"#), "abcd");
}

#[test]
fn output_never_exceeds_the_limit_examples() {
    for max in 4..30 {
        let config = format!(r#"{{"max": {max}}}"#);
        for text in
            ["今天天气很好。我们去公园散步吧，然后去吃饭。", "Hello there. This is a long sentence, really."]
        {
            let out = truncate(text, &config);
            assert!(size(&out, Unit::Graphemes) <= max, "{max}: {out}");
        }
    }
}

#[test]
fn stream_emits_early_and_stops_at_the_limit() {
    let config = Truncate::config(r#"{"max": 10}"#).unwrap();
    let mut s = Truncate::open(config, Context::default()).unwrap();
    // Under min(0.5 * 10, 10 - 3) = 5: certain.
    assert_eq!(s.push("我们今天").unwrap(), ChunkOutput::emit("我们今"));
    let out = s.push("去公园。然后去吃饭吧").unwrap();
    assert!(out.stop);
    assert_eq!(out.emit, "天去公园。");
    assert_eq!(s.finish().unwrap(), "……");
    assert_eq!(truncate("我们今天去公园。然后去吃饭吧", r#"{"max": 10}"#), "我们今天去公园。……");
}

#[test]
fn stream_waits_for_a_complete_grapheme() {
    // The 3rd grapheme may still get a skin tone; the limit is only known once it is complete.
    let config = Truncate::config(r#"{"max": 2, "ellipsis": "none"}"#).unwrap();
    let mut s = Truncate::open(config, Context::default()).unwrap();
    assert!(!s.push("ab👍").unwrap().stop);
    let out = s.push("🏽c").unwrap();
    assert!(out.stop);
    assert_eq!(out.emit, "ab");
    assert_eq!(s.finish().unwrap(), "");
}

#[test]
fn text_within_limit_streams_through() {
    let (out, stopped) = run_stream::<Truncate>("短文本。", r#"{"max": 10}"#, &[1]).unwrap();
    assert_eq!(out, "短文本。");
    assert!(!stopped);
}

#[test]
fn bad_config_names_the_field() {
    let cases = [
        ("{}", "max"),
        (r#"{"max": 0}"#, "max"),
        (r#"{"max": 2}"#, "max"),
        (r#"{"max": 3, "ellipsis": "en"}"#, "max"),
        (r#"{"max": 10, "min_fraction": 1.5}"#, "min_fraction"),
        (r#"{"max": 10, "min_fraction": -0.1}"#, "min_fraction"),
        (r#"{"max": 10, "unit": "chars"}"#, "unit"),
        (r#"{"max": "ten"}"#, "max"),
        (r#"{"max": 10, "ellipsis": 3}"#, "ellipsis"),
        (r#"{"max": 10, "maximum": 3}"#, "maximum"),
    ];
    for (json, field) in cases {
        match Truncate::config(json) {
            Err(PluginError::InvalidConfig(m)) => assert!(m.contains(field), "{json}: {m}"),
            other => panic!("{json}: {other:?}"),
        }
    }
    assert!(Truncate::config(r#"{"max": 3, "ellipsis": "zh"}"#).is_ok());
    assert!(Truncate::config(r#"{"max": 1, "ellipsis": "none"}"#).is_ok());
}

/// Non-empty lines, as the crate docs define them.
fn line_count(text: &str) -> usize {
    text.split(pipehost_plugin_sdk::text::is_line_break).filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn line_limit_keeps_whole_non_empty_lines() {
    let poem = "秋夜\n\n月光落在窗台，\n  \n虫声细细。\n风很轻\n";
    assert_eq!(line_count(poem), 4);
    // Blank and whitespace-only lines do not count; the cut is at the last line's end, before
    // its line break, and adds no ellipsis.
    assert_eq!(truncate(poem, r#"{"max_lines": 3}"#), "秋夜\n\n月光落在窗台，\n  \n虫声细细。");
    assert_eq!(truncate(poem, r#"{"max_lines": 1}"#), "秋夜");
    // Within the limit nothing changes, trailing line breaks included.
    assert_eq!(truncate(poem, r#"{"max_lines": 4}"#), poem);
    assert_eq!(truncate("a\r\nb\r\nc", r#"{"max_lines": 2}"#), "a\r\nb");
    assert_eq!(truncate("a\u{2028}b", r#"{"max_lines": 1}"#), "a");
    // Ideographic spaces are whitespace too; any other character makes a line count.
    assert_eq!(truncate("一\n\u{3000}\n。\n二", r#"{"max_lines": 2}"#), "一\n\u{3000}\n。");
    // With both limits, the length limit applies to the kept lines.
    assert_eq!(truncate("一二三四五六\n七八九十", r#"{"max_lines": 1, "max": 4}"#), "一二……");
    assert_eq!(truncate("一二三\n四五六七八九十", r#"{"max_lines": 1, "max": 4}"#), "一二三");
    assert_eq!(truncate("一二三\n四五六七八九十", r#"{"max_lines": 2, "max": 6}"#), "一二三……");
}

#[test]
fn line_limit_streams_and_stops_at_the_next_line() {
    let config = Truncate::config(r#"{"max_lines": 2}"#).unwrap();
    let mut s = Truncate::open(config, Context::default()).unwrap();
    assert_eq!(s.push("一行\n\n二").unwrap(), ChunkOutput::emit("一行\n\n二"));
    assert_eq!(s.push("行\n").unwrap(), ChunkOutput::emit("行"));
    // Blank lines after the last allowed line are held: they stay only if the text ends here.
    assert_eq!(s.push(" \n").unwrap(), ChunkOutput::emit(""));
    assert_eq!(s.push("  三行").unwrap(), ChunkOutput { emit: String::new(), stop: true });
    assert_eq!(s.finish().unwrap(), "");

    let config = Truncate::config(r#"{"max_lines": 2}"#).unwrap();
    let mut s = Truncate::open(config, Context::default()).unwrap();
    assert_eq!(s.push("一\n二\n\n").unwrap(), ChunkOutput::emit("一\n二"));
    assert_eq!(s.finish().unwrap(), "\n\n");
}

#[test]
fn line_limit_config() {
    assert!(Truncate::config(r#"{"max_lines": 1}"#).is_ok());
    assert!(Truncate::config(r#"{"max_lines": 6, "max": 200}"#).is_ok());
    for json in [r#"{"max_lines": 0}"#, r#"{"max_lines": -1}"#, r#"{"max_lines": "6"}"#] {
        match Truncate::config(json) {
            Err(PluginError::InvalidConfig(m)) => assert!(m.contains("max_lines"), "{json}: {m}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "今天",
        "天气",
        "很好",
        "。",
        "！",
        "？",
        "，",
        "、",
        "；",
        "……",
        "…",
        "“",
        "”",
        "「",
        "」",
        "Hello",
        "world",
        "the",
        "quick",
        "Dr. ",
        "e.g. ",
        "1,000",
        ", ",
        ". ",
        "! ",
        "...",
        " ",
        "\n",
        "\n\n",
        "\"",
        "(",
        ")",
        "👍",
        "🏽",
        "👍🏽",
        "👨‍👩‍👧",
        "\u{200D}",
        "🇨",
        "🇳",
        "🇨🇳",
        "\u{301}",
        "a",
        "B",
        "中",
        "文",
        "\r\n",
        "\t",
        " \n",
        "\u{2028}",
        "\u{3000}",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

fn configs() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec!["graphemes", "width"]);
    let ellipsis = prop::sample::select(vec!["auto", "zh", "en", "none", " [more]"]);
    let fraction = prop::sample::select(vec![0.0, 0.3, 0.5, 0.9, 1.0]);
    let limits =
        (prop::option::of(8usize..40), prop::option::of(1usize..5)).prop_map(|limits| match limits {
            (None, None) => (Some(20), None),
            limits => limits,
        });
    (limits, unit, ellipsis, fraction).prop_map(|((max, lines), unit, ellipsis, f)| {
        let max = max.map_or(String::new(), |m| format!(r#""max": {m}, "#));
        let lines = lines.map_or(String::new(), |n| format!(r#""max_lines": {n}, "#));
        format!(r#"{{{max}{lines}"unit": "{unit}", "ellipsis": "{ellipsis}", "min_fraction": {f}}}"#)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn stream_equals_whole(text in text(), config in configs(), sizes in prop::collection::vec(1usize..8, 1..4)) {
        assert_stream_matches_whole::<Truncate>(&text, &config, &sizes);
    }

    #[test]
    fn output_fits_and_short_text_is_untouched(text in text(), config in configs()) {
        let c = Truncate::config(&config).unwrap();
        let out = Truncate::process(&text, &c, &Context::default()).unwrap();
        let max = c.max.unwrap_or(usize::MAX);
        let max_lines = c.max_lines.unwrap_or(usize::MAX);
        prop_assert!(size(&out, c.unit) <= max, "{:?} -> {:?}", text, out);
        prop_assert!(line_count(&out) <= max_lines, "{:?} -> {:?}", text, out);
        if size(&text, c.unit) <= max && line_count(&text) <= max_lines {
            prop_assert_eq!(out, text);
        } else {
            // What is left before the ellipsis is a prefix of the input.
            let prefix = c.ellipsis.candidates().into_iter().chain([String::new()]).any(|e| {
                out.strip_suffix(e.as_str()).is_some_and(|kept| text.starts_with(kept))
            });
            prop_assert!(prefix, "{:?} -> {:?}", text, out);
        }
    }

    #[test]
    fn stream_stops_once_over_the_limit(text in text(), config in configs()) {
        let c = Truncate::config(&config).unwrap();
        let (_, stopped) = run_stream::<Truncate>(&text, &config, &[1]).unwrap();
        // Feeding one character at a time, the stream stops unless the limit is only exceeded by
        // the very last grapheme (then it needs the end of the text to know it is complete);
        // over the line limit, it stops at the first visible character of one line too many.
        let max = c.max.unwrap_or(usize::MAX);
        let max_lines = c.max_lines.unwrap_or(usize::MAX);
        prop_assert!(!stopped || size(&text, c.unit) > max || line_count(&text) > max_lines);
        let last = text.grapheme_indices(true).next_back().map_or(0, |(i, _)| i);
        if size(&text[..last], c.unit) > max || line_count(&text) > max_lines {
            prop_assert!(stopped);
        }
    }
}
