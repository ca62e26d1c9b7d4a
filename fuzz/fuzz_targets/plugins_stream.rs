//! Each shipped post-processor's text logic, natively, on arbitrary UTF-8: `process` must not
//! panic, and streaming the same text in fuzzer-chosen chunks must give the same output
//! (the SDK's `run_stream` stops feeding at `stop`, as the host does).
//!
//! Input layout: byte 0 picks the plugin (low 2 bits) and its config (next 2 bits; one plugin
//! per input keeps executions fast: `tone` compiles its dictionary per call), byte 1 the number of chunk
//! sizes (0–7), then that many chunk sizes in characters (0 is skipped), then the text
//! (`String::from_utf8_lossy`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipehost_plugin_sdk::{Context, PostProcessor, testing::run_stream};

const DEDUPE: [&str; 4] = [
    "{}",
    r#"{"near_duplicate_threshold":0.6,"ngram":3}"#,
    r#"{"max_repeat":1,"min_phrase_chars":1,"min_sentence_chars":1}"#,
    r#"{"sentences":false,"max_phrase_chars":6}"#,
];
const PUNCTUATION: [&str; 4] = [
    "{}",
    r#"{"locale":"zh","max_repeat":2}"#,
    r#"{"locale":"en"}"#,
    r#"{"cjk_latin_space":false,"quotes":false,"collapse_repeats":false}"#,
];
const TONE: [&str; 4] = [
    r#"{"presets":["zh-warm"]}"#,
    r#"{"presets":["en-warm"]}"#,
    r#"{"presets":["zh-warm","en-warm"],"case_insensitive":true}"#,
    r#"{"presets":["en-warm"],"word_boundary":false}"#,
];
const TRUNCATE: [&str; 4] = [
    r#"{"max":20}"#,
    r#"{"max":5,"ellipsis":"none"}"#,
    r#"{"max":40,"unit":"width","max_lines":2}"#,
    r#"{"max":8,"ellipsis":"zh","min_fraction":0.0}"#,
];

fn check<P: PostProcessor>(name: &str, text: &str, config_json: &str, chunks: &[usize]) {
    let config = P::config(config_json).unwrap_or_else(|e| panic!("{name}: config {config_json}: {e:?}"));
    let whole = P::process(text, &config, &Context::default());
    let streamed = run_stream::<P>(text, config_json, chunks);
    match (whole, streamed) {
        (Ok(whole), Ok((streamed, _))) => assert_eq!(
            streamed, whole,
            "{name} {config_json}: stream != whole for chunks {chunks:?} on {text:?}"
        ),
        (Err(_), Err(_)) => {}
        (w, s) => {
            panic!("{name} {config_json}: whole {w:?} but stream {s:?} (chunks {chunks:?}) on {text:?}")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (&sel, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&n, rest) = rest.split_first().unwrap_or((&0, &[]));
    let n = usize::from(n % 8).min(rest.len());
    let chunks: Vec<usize> = rest[..n].iter().map(|&b| usize::from(b % 32)).collect();
    let text = String::from_utf8_lossy(&rest[n..]);
    let config = usize::from((sel >> 2) & 3);
    match sel & 3 {
        0 => check::<dedupe::Dedupe>("dedupe", &text, DEDUPE[config], &chunks),
        1 => check::<punctuation::Punctuation>("punctuation", &text, PUNCTUATION[config], &chunks),
        2 => check::<tone::Tone>("tone", &text, TONE[config], &chunks),
        _ => check::<truncate::Truncate>("truncate", &text, TRUNCATE[config], &chunks),
    }
});
