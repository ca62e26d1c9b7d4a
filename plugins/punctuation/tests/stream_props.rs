//! Property: for random text and random chunking, the stream's output equals `process`.

use pipehost_plugin_sdk::testing::run_stream;
use pipehost_plugin_sdk::{Context, PostProcessor};
use proptest::prelude::*;
use punctuation::Punctuation;

/// Mixed Chinese, English, digits, punctuation of both widths, quotes, spaces, newlines and
/// the Markdown bits the plugin treats specially (fences, backticks, list markers, URLs).
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[你好世界中文问题是的]{1,4}",
        4 => "[a-zA-Z]{1,5}",
        2 => "[0-9]{1,3}",
        4 => "[,.!?:;()\"' ]{1,3}",
        2 => "[，。！？：；（）“”‘’、…]{1,2}",
        2 => Just("\n".to_owned()),
        1 => Just("\n\n".to_owned()),
        1 => Just("```\n".to_owned()),
        1 => Just("`".to_owned()),
        1 => Just("1. ".to_owned()),
        1 => Just("- ".to_owned()),
        1 => Just("https://a.com/x.y".to_owned()),
        1 => Just("me@a.com".to_owned()),
        1 => Just("e.g.".to_owned()),
        1 => Just("...".to_owned()),
        1 => Just("3.14".to_owned()),
        1 => Just("[文档](http://a.b/(c))".to_owned()),
        1 => Just("  ".to_owned()),
        1 => Just("\t".to_owned()),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

fn config() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("auto"), Just("zh"), Just("en")],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        1usize..4,
    )
        .prop_map(|(locale, space, quotes, collapse, max)| {
            format!(
                r#"{{"locale": "{locale}", "cjk_latin_space": {space}, "quotes": {quotes},
                    "collapse_repeats": {collapse}, "max_repeat": {max}}}"#
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn stream_equals_whole(text in text(), config in config(), chunks in proptest::collection::vec(1usize..8, 1..6)) {
        let cfg = Punctuation::config(&config).unwrap();
        let whole = Punctuation::process(&text, &cfg, &Context::default()).unwrap();
        let (streamed, stopped) = run_stream::<Punctuation>(&text, &config, &chunks).unwrap();
        prop_assert!(!stopped);
        prop_assert_eq!(streamed, whole);
    }
}
