//! `dedupe`: removes repeated sentences and collapses stuttered words and phrases from model
//! output, for Chinese and English text.
//!
//! Sentences come from [`pipehost_plugin_sdk::text::sentences`] (Chinese and English
//! terminators, quotes, abbreviations, line breaks). A sentence is a duplicate when its
//! [`comparison_key`] (NFKC, lowercase, no whitespace, no leading/trailing punctuation) equals
//! that of a sentence already kept, or, with `near_duplicate_threshold`, when the Jaccard
//! similarity of the keys' character n-grams reaches the threshold. The first occurrence is kept
//! with its original text; a dropped sentence takes its trailing whitespace with it, except a
//! line break that the output would otherwise lose.
//!
//! Inside each kept sentence, runs of a repeated word or phrase are cut down to `max_repeat`
//! copies (`很好很好很好` → `很好` with `max_repeat: 1`). Runs never cross a sentence boundary:
//! that keeps the decision local to one sentence, which is what lets the stream emit each
//! sentence as soon as it is final.
//!
//! Config (JSON; `{}` gives the defaults):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `sentences` | `true` | drop repeated sentences |
//! | `min_sentence_chars` | `2` | sentences whose key is shorter (`嗯。`, `A.`) are never dropped |
//! | `near_duplicate_threshold` | `null` | Jaccard similarity in (0, 1] at which a sentence counts as a repeat; `null`: exact keys only |
//! | `ngram` | `2` | n-gram size (1–8) for `near_duplicate_threshold`; 2 suits Chinese, 3 English |
//! | `phrase_repeats` | `true` | collapse runs of a repeated word or phrase |
//! | `max_repeat` | `2` | copies of a phrase kept (≥ 1); 2 leaves reduplication such as `研究研究` and `that that` alone |
//! | `min_phrase_chars` | `2` | shorter phrases are left alone (`看看`, `哈哈`, `a a`) (≥ 1) |
//! | `max_phrase_chars` | `24` | the longest phrase looked for, in characters (≤ 200) |
//!
//! Streaming: each sentence is emitted as soon as it is final (see
//! [`pipehost_plugin_sdk::text::final_len`]); only the unfinished tail is held back.

mod phrases;

use std::collections::HashSet;

use pipehost_plugin_sdk::text::{SentenceBuffer, comparison_key, is_line_break, sentences};
use pipehost_plugin_sdk::{
    ChunkOutput, Context, PluginError, PostProcessor, Streamer, export_post_processor,
};
use serde::Deserialize;

pub use phrases::{PhraseLimits, collapse};

/// The stage config; see the crate docs for each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sentences: bool,
    pub min_sentence_chars: usize,
    pub near_duplicate_threshold: Option<f64>,
    pub ngram: usize,
    pub phrase_repeats: bool,
    pub max_repeat: usize,
    pub min_phrase_chars: usize,
    pub max_phrase_chars: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sentences: true,
            min_sentence_chars: 2,
            near_duplicate_threshold: None,
            ngram: 2,
            phrase_repeats: true,
            max_repeat: 2,
            min_phrase_chars: 2,
            max_phrase_chars: 24,
        }
    }
}

impl Config {
    fn limits(&self) -> PhraseLimits {
        PhraseLimits {
            max_repeat: self.max_repeat,
            min_chars: self.min_phrase_chars,
            max_chars: self.max_phrase_chars,
        }
    }

    fn is_identity(&self) -> bool {
        !self.sentences && !self.phrase_repeats
    }
}

fn invalid(msg: String) -> PluginError {
    PluginError::InvalidConfig(msg)
}

/// The `dedupe` post-processor.
pub struct Dedupe;

impl PostProcessor for Dedupe {
    type Config = Config;

    fn check_config(c: &Config) -> Result<(), PluginError> {
        if let Some(t) = c.near_duplicate_threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(invalid(format!("`near_duplicate_threshold` must be in (0, 1], got {t}")));
        }
        if !(1..=8).contains(&c.ngram) {
            return Err(invalid(format!("`ngram` must be between 1 and 8, got {}", c.ngram)));
        }
        if c.max_repeat == 0 {
            return Err(invalid("`max_repeat` must be at least 1 (copies kept)".into()));
        }
        if c.min_phrase_chars == 0 {
            return Err(invalid("`min_phrase_chars` must be at least 1".into()));
        }
        if c.max_phrase_chars < c.min_phrase_chars || c.max_phrase_chars > 200 {
            return Err(invalid(format!(
                "`max_phrase_chars` must be between `min_phrase_chars` ({}) and 200, got {}",
                c.min_phrase_chars, c.max_phrase_chars
            )));
        }
        Ok(())
    }

    fn process(text: &str, config: &Config, _ctx: &Context) -> Result<String, PluginError> {
        if config.is_identity() {
            return Ok(text.to_string());
        }
        let mut state = State::new(config.clone());
        let mut out = String::with_capacity(text.len());
        for s in sentences(text) {
            state.sentence(s, &mut out);
        }
        Ok(out)
    }

    fn open(config: Config, _ctx: Context) -> Result<Box<dyn Streamer>, PluginError> {
        Ok(Box::new(DedupeStream { state: State::new(config), buffer: SentenceBuffer::new() }))
    }
}

/// What has been kept so far: the same for whole texts and streams, fed one sentence at a time.
struct State {
    config: Config,
    seen: HashSet<String>,
    /// n-gram sets of kept sentences, for near-duplicates.
    grams: Vec<HashSet<String>>,
    last_char: Option<char>,
}

impl State {
    fn new(config: Config) -> Self {
        Self { config, seen: HashSet::new(), grams: Vec::new(), last_char: None }
    }

    fn sentence(&mut self, sentence: &str, out: &mut String) {
        let text = if self.config.phrase_repeats {
            collapse(sentence, &self.config.limits())
        } else {
            sentence.into()
        };
        if self.config.sentences && self.is_duplicate(&text) {
            // A dropped sentence's line break may be the only one between two paragraphs.
            let ws = &text[text.trim_end().len()..];
            if ws.contains(is_line_break) && self.last_char.is_some_and(|c| !is_line_break(c)) {
                self.push(ws, out);
            }
            return;
        }
        self.push(&text, out);
    }

    fn push(&mut self, s: &str, out: &mut String) {
        if let Some(c) = s.chars().next_back() {
            self.last_char = Some(c);
        }
        out.push_str(s);
    }

    /// Whether `text` repeats a kept sentence; if not, remembers it.
    fn is_duplicate(&mut self, text: &str) -> bool {
        let key = comparison_key(text);
        if key.is_empty() || key.chars().count() < self.config.min_sentence_chars {
            return false;
        }
        if self.seen.contains(&key) {
            return true;
        }
        if let Some(threshold) = self.config.near_duplicate_threshold {
            let grams = ngrams(&key, self.config.ngram);
            if self.grams.iter().any(|kept| jaccard(kept, &grams) >= threshold) {
                return true;
            }
            self.grams.push(grams);
        }
        self.seen.insert(key);
        false
    }
}

/// Character n-grams of a key; a key shorter than `n` is its own single gram.
fn ngrams(key: &str, n: usize) -> HashSet<String> {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= n {
        return HashSet::from([key.to_string()]);
    }
    chars.windows(n).map(|w| w.iter().collect()).collect()
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    if union == 0 { 0.0 } else { inter as f64 / union as f64 }
}

/// Emits each sentence once it is final and known not to be a repeat.
struct DedupeStream {
    state: State,
    buffer: SentenceBuffer,
}

impl Streamer for DedupeStream {
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError> {
        if self.state.config.is_identity() {
            return Ok(ChunkOutput::emit(chunk));
        }
        let mut out = String::new();
        for s in self.buffer.push(chunk) {
            self.state.sentence(&s, &mut out);
        }
        Ok(ChunkOutput::emit(out))
    }

    fn finish(&mut self) -> Result<String, PluginError> {
        let mut out = String::new();
        for s in self.buffer.finish() {
            self.state.sentence(&s, &mut out);
        }
        Ok(out)
    }
}

export_post_processor!(Dedupe);

#[cfg(test)]
mod tests {
    use super::*;
    use pipehost_plugin_sdk::testing::{assert_stream_matches_whole, run_stream};
    use proptest::prelude::*;

    fn dedupe(text: &str, config: &str) -> String {
        let config = Dedupe::config(config).expect("config");
        Dedupe::process(text, &config, &Context::default()).expect("process")
    }

    #[test]
    fn drops_repeated_chinese_sentences() {
        assert_eq!(dedupe("我很好。我很好。你呢？", "{}"), "我很好。你呢？");
        assert_eq!(
            dedupe("今天天气很好！今天天气很好！我们去公园吧。", "{}"),
            "今天天气很好！我们去公园吧。"
        );
        assert_eq!(dedupe("他说：“我很好。”他说：“我很好。”然后走了。", "{}"), "他说：“我很好。”然后走了。");
        assert_eq!(dedupe("他说。“你好。”他说。“你好。”", "{}"), "他说。“你好。”");
    }

    #[test]
    fn drops_repeated_english_sentences() {
        assert_eq!(dedupe("I am fine. I am fine. And you?", "{}"), "I am fine. And you?");
        assert_eq!(dedupe("Hello world. HELLO  world! Bye.", "{}"), "Hello world. Bye.");
        assert_eq!(
            dedupe("Dr. Smith came. Dr. Jones left. Dr. Smith came.", "{}"),
            "Dr. Smith came. Dr. Jones left. "
        );
    }

    #[test]
    fn keys_ignore_width_and_punctuation_style() {
        assert_eq!(dedupe("ＯＫ，好的。OK,好的！下一步。", "{}"), "ＯＫ，好的。下一步。");
        assert_eq!(dedupe("“好的。”好的。", "{}"), "“好的。”");
    }

    #[test]
    fn keeps_original_spacing_and_paragraphs() {
        assert_eq!(dedupe("Hello   world.  Hello world.  Bye.", "{}"), "Hello   world.  Bye.");
        assert_eq!(dedupe("第一段。\n\n第一段。\n\n第二段。", "{}"), "第一段。\n\n第二段。");
        assert_eq!(dedupe("Same. Other. Same.\nEnd.", "{}"), "Same. Other. \nEnd.");
    }

    #[test]
    fn short_sentences_are_never_dropped_by_default() {
        assert_eq!(dedupe("嗯。嗯。好。好。", "{}"), "嗯。嗯。好。好。");
        assert_eq!(dedupe("嗯。嗯。", r#"{"min_sentence_chars": 1}"#), "嗯。");
    }

    #[test]
    fn near_duplicates() {
        let text =
            "The quick brown fox jumps over the lazy dog. The quick brown fox jumped over the lazy dog. End.";
        assert_eq!(dedupe(text, "{}"), text);
        assert_eq!(
            dedupe(text, r#"{"near_duplicate_threshold": 0.7}"#),
            "The quick brown fox jumps over the lazy dog. End."
        );
        let zh = "我们明天上午十点在会议室开会。我们明天上午十点在会议室里开会。好的。";
        assert_eq!(
            dedupe(zh, r#"{"near_duplicate_threshold": 0.75}"#),
            "我们明天上午十点在会议室开会。好的。"
        );
        assert_eq!(
            dedupe("今天天气很好。今天天气真好。", r#"{"near_duplicate_threshold": 0.8}"#),
            "今天天气很好。今天天气真好。"
        );
    }

    #[test]
    fn collapses_phrase_runs() {
        assert_eq!(dedupe("很好很好很好很好。", "{}"), "很好很好。");
        assert_eq!(dedupe("很好很好很好。", r#"{"max_repeat": 1}"#), "很好。");
        assert_eq!(dedupe("It was the the the best.", r#"{"max_repeat": 1}"#), "It was the best.");
        assert_eq!(dedupe("很好很好很好。", r#"{"phrase_repeats": false}"#), "很好很好很好。");
        // Collapsing happens before comparing, so a stuttered copy is still a repeat.
        assert_eq!(dedupe("我很好。我很好很好很好。", r#"{"max_repeat": 1}"#), "我很好。");
    }

    #[test]
    fn everything_off_is_identity() {
        let text = "A. A. 很好很好很好。";
        assert_eq!(dedupe(text, r#"{"sentences": false, "phrase_repeats": false}"#), text);
    }

    #[test]
    fn streams_sentence_by_sentence() {
        let mut s = Dedupe::open(Config::default(), Context::default()).unwrap();
        assert_eq!(s.push("我很好。我").unwrap().emit, "我很好。");
        assert_eq!(s.push("很好。你").unwrap().emit, "");
        assert_eq!(s.push("呢？").unwrap().emit, "");
        assert_eq!(s.finish().unwrap(), "你呢？");
    }

    #[test]
    fn bad_config_names_the_field() {
        let cases = [
            (r#"{"near_duplicate_threshold": 1.5}"#, "near_duplicate_threshold"),
            (r#"{"near_duplicate_threshold": 0}"#, "near_duplicate_threshold"),
            (r#"{"ngram": 0}"#, "ngram"),
            (r#"{"max_repeat": 0}"#, "max_repeat"),
            (r#"{"min_phrase_chars": 0}"#, "min_phrase_chars"),
            (r#"{"max_phrase_chars": 1000}"#, "max_phrase_chars"),
            (r#"{"sentence": true}"#, "sentence"),
            (r#"{"max_repeat": "two"}"#, "max_repeat"),
        ];
        for (json, field) in cases {
            match Dedupe::config(json) {
                Err(PluginError::InvalidConfig(m)) => assert!(m.contains(field), "{json}: {m}"),
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(Dedupe::config("").is_ok());
        assert!(Dedupe::config("{}").is_ok());
    }

    fn text() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "我很好。",
            "你呢？",
            "很好",
            "好的，",
            "他说。",
            "“你好。”",
            "「好吧。」",
            "……",
            "！",
            "。",
            "，",
            "Hello world. ",
            "hello  WORLD! ",
            "the ",
            "The ",
            "Dr. ",
            "etc. ",
            "No. 5 ",
            "e.g. ",
            "I am fine.",
            " ",
            "\n",
            "\n\n",
            "\"",
            "'",
            "5",
            "👍🏽",
            "👨‍👩‍👧",
            "🇨🇳",
            "\u{301}",
            "ＯＫ",
            "OK",
            "a",
            "B",
            ".",
        ]);
        prop::collection::vec(atoms, 0..30).prop_map(|v| v.concat())
    }

    fn configs() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "{}",
            r#"{"max_repeat": 1}"#,
            r#"{"near_duplicate_threshold": 0.6, "ngram": 3}"#,
            r#"{"min_sentence_chars": 1, "phrase_repeats": false}"#,
            r#"{"sentences": false}"#,
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn stream_equals_whole(text in text(), config in configs(), sizes in prop::collection::vec(1usize..8, 1..4)) {
            assert_stream_matches_whole::<Dedupe>(&text, config, &sizes);
            let (_, stopped) = run_stream::<Dedupe>(&text, config, &sizes).unwrap();
            prop_assert!(!stopped);
        }

        #[test]
        fn never_adds_text(text in text(), config in configs()) {
            prop_assert!(dedupe(&text, config).len() <= text.len());
        }
    }
}
