//! Properties: for random text and random chunking, the stream's output equals `process`; the
//! two ways of finding phrases give the same output.

use pipehost_plugin_sdk::testing::run_stream;
use pipehost_plugin_sdk::{Context, PostProcessor};
use proptest::prelude::*;
use tone::{Dictionary, Search, Tone};

/// Pieces that make matches, near-matches (prefixes), overlaps and boundaries likely.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("这是一个很好的问题".to_owned()),
        Just("这是一个".to_owned()),
        Just("你可以考虑".to_owned()),
        Just("你可以".to_owned()),
        Just("作为一个AI语言模型，".to_owned()),
        Just("总而言之，".to_owned()),
        Just("As an AI language model, ".to_owned()),
        Just("I hope this helps!".to_owned()),
        Just("hope".to_owned()),
        Just("use".to_owned()),
        Just("AI".to_owned()),
        Just("ab".to_owned()),
        "[a-zA-Z0-9 ,.!?\"'\n，。！？“”]{0,4}",
        "[你好世界问题很的是一个]{0,3}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn config() -> impl Strategy<Value = String> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(ci, wb, presets)| {
        let presets = if presets { r#"["zh-warm", "en-warm"]"# } else { "[]" };
        format!(
            r#"{{"presets": {presets}, "case_insensitive": {ci}, "word_boundary": {wb},
                "rules": {{"这是一个很好的问题": "这个问题很有意思", "你可以考虑": "不妨试试",
                          "hope": "wish", "use": "employ", "ab": "X", "abc": "", "bca": "Y",
                          "AI": "assistant", "这是": "那是"}}}}"#
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn stream_equals_whole(text in text(), config in config(), chunks in proptest::collection::vec(1usize..8, 1..6)) {
        let cfg = Tone::config(&config).unwrap();
        let whole = Tone::process(&text, &cfg, &Context::default()).unwrap();
        let (streamed, stopped) = run_stream::<Tone>(&text, &config, &chunks).unwrap();
        prop_assert!(!stopped);
        prop_assert_eq!(streamed, whole);
    }

    #[test]
    fn scan_equals_automaton(text in text(), config in config()) {
        let cfg = Tone::config(&config).unwrap();
        // `last: false` also covers holding back a tail that may grow into a phrase.
        for last in [true, false] {
            let rewrite = |search| {
                let mut out = String::new();
                let used = Dictionary::with_search(&cfg, search).unwrap().rewrite(&text, None, last, &mut out);
                (out, used)
            };
            prop_assert_eq!(rewrite(Search::Scan), rewrite(Search::Automaton));
        }
    }
}
