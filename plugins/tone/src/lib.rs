//! `tone`: rewrites stock phrases from a dictionary, so answers read less like a template.
//!
//! Matching is Aho-Corasick, **leftmost-longest**: scanning left to right, at the first position
//! where some phrase matches, the longest phrase that matches there (and passes the word-boundary
//! check) is replaced, and scanning resumes after it. Replacements are never rescanned.
//! Phrases are found with an automaton, or, for up to 128 phrases on short text, with one
//! substring search per phrase: the automaton would be rebuilt on every call (nothing survives
//! a call), and for the presets on a few KB building it costs more than the scans.
//!
//! # Config
//!
//! | field | default | meaning |
//! | --- | --- | --- |
//! | `rules` | none | phrase rewrites: a list of `{from, to}` or a map `from: to`. `to: ""` deletes. |
//! | `presets` | `[]` | names of rule sets shipped in the plugin: `zh-warm`, `en-warm`. |
//! | `case_insensitive` | `false` | match ASCII letters case-insensitively (see limits below). |
//! | `word_boundary` | `true` | a match must not start or end inside a Latin word. |
//!
//! Rules are merged in order: presets as listed, then `rules`; a later rule with the same
//! `from` replaces an earlier one, so a config can override a preset's replacement (or keep
//! a phrase by mapping it to itself).
//!
//! ```yaml
//! - plugin: tone
//!   config:
//!     presets: [zh-warm, en-warm]
//!     case_insensitive: true
//!     rules:
//!       - { from: "这是一个很好的问题", to: "好问题" }   # overrides zh-warm
//!       - { from: "utilize", to: "use" }
//! ```
//!
//! or, as JSON, `{"rules": {"你可以考虑": "不妨试试"}, "word_boundary": false}`.
//!
//! Errors (`invalid-config`, naming the field): unknown fields, wrong types, an unknown preset
//! name, an empty `from`.
//!
//! # Limits
//!
//! - `case_insensitive` folds ASCII letters only (`A`–`Z`): `É` does not match `é`, and Chinese
//!   has no case anyway. The replacement is inserted exactly as written; its case is not
//!   adapted to the matched text (`"in conclusion, "` → `"So, "` mid-sentence keeps the capital).
//! - A "Latin word" character is any alphanumeric character or `_` that is not CJK (so it covers
//!   accented Latin, Greek, Cyrillic, digits). The boundary check only applies to an edge of a
//!   phrase that is itself such a character: `"Hope"` will not match inside `"Hopeful"`, while
//!   Chinese phrases match anywhere. The check looks at the original text around the match.
//!
//! # Streaming
//!
//! Real incremental: text is emitted as soon as no phrase can start at it any more. What is
//! held back is at most the longest phrase minus one character, plus one character of
//! look-ahead for the word boundary. Stream and whole-text output share one routine
//! ([`Dictionary::rewrite`]), which only decides a position once the text seen so far fixes
//! the decision, so the output is the same for any chunking.

mod presets;

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use pipehost_plugin_sdk::{
    ChunkOutput, Context, PluginError, PostProcessor, Streamer, export_post_processor,
};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

pub use presets::PRESETS;

/// The stage config (see the crate docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub rules: Rules,
    pub presets: Vec<String>,
    pub case_insensitive: bool,
    pub word_boundary: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { rules: Rules::default(), presets: Vec::new(), case_insensitive: false, word_boundary: true }
    }
}

/// One phrase rewrite.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: String,
    pub to: String,
}

/// `rules`: accepts a list of `{from, to}` or a map `{from: to}` (a map keeps its JSON order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(pub Vec<Rule>);

impl<'de> Deserialize<'de> for Rules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RulesVisitor;
        impl<'de> Visitor<'de> for RulesVisitor {
            type Value = Rules;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of {from, to} rules or a map from phrase to replacement")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rules, A::Error> {
                let mut rules = Vec::new();
                while let Some(rule) = seq.next_element::<Rule>()? {
                    rules.push(rule);
                }
                Ok(Rules(rules))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Rules, A::Error> {
                let mut rules = Vec::new();
                while let Some((from, to)) = map.next_entry::<String, String>()? {
                    rules.push(Rule { from, to });
                }
                Ok(Rules(rules))
            }
        }
        d.deserialize_any(RulesVisitor)
    }
}

/// Whether `c` belongs to a Latin-script-like word for the boundary check: CJK ideographs and
/// kana are words by themselves, so a Chinese phrase may match anywhere.
fn is_word_char(c: char) -> bool {
    (c.is_alphanumeric() || c == '_') && !is_cjk(c)
}

/// CJK ideographs, kana, Hangul and Bopomofo: characters that are not part of a Latin word.
/// (Written before the SDK's `text::is_cjk` landed; only the boundary check uses it.)
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF     // Hangul Jamo
        | 0x2E80..=0x2FDF   // CJK radicals, Kangxi
        | 0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3100..=0x312F   // Bopomofo
        | 0x3130..=0x318F   // Hangul compatibility Jamo
        | 0x31A0..=0x31BF   // Bopomofo extended
        | 0x31F0..=0x31FF   // Katakana extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x3FFFF // CJK extensions B..
    )
}

/// How [`Dictionary::rewrite`] finds phrases. Both find every occurrence of every phrase,
/// overlapping ones included, so the choice changes the cost, never the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// One Aho-Corasick automaton: one pass over the text, but building it costs ~2.5 µs per
    /// phrase natively and ~2.3x that in the component, on every call (a fresh instance per
    /// call keeps nothing), e.g. ~500 µs for the two presets.
    Automaton,
    /// A substring search per phrase: nothing to build; costs phrases × text length.
    Scan,
}

/// Dictionaries with more phrases always get the automaton.
const SCAN_MAX_PHRASES: usize = 128;
/// A whole-text call whose phrases × text bytes exceed this builds the automaton (64 presets'
/// worth of phrases on 16 KB: about where the two cost the same).
const SCAN_MAX_WORK: usize = 1 << 20;

/// The merged, compiled rule set.
pub struct Dictionary {
    /// With `MatchKind::Standard`: the only kind that reports overlapping matches, which we need
    /// to fall back to a shorter phrase when the longest one fails the word-boundary check.
    /// `None` with [`Search::Scan`] or no phrases.
    ac: Option<AhoCorasick>,
    /// The phrases, ASCII-lowercased when case-insensitive (for [`Search::Scan`] and for
    /// holding back a stream's tail while it is a proper prefix of one).
    phrases: Vec<String>,
    to: Vec<String>,
    first_is_word: Vec<bool>,
    last_is_word: Vec<bool>,
    /// Longest phrase in bytes: a tail longer than this cannot be a prefix.
    max_len: usize,
    case_insensitive: bool,
    word_boundary: bool,
}

impl Dictionary {
    /// Merges presets and rules and compiles them into an automaton; errors name the bad preset
    /// or rule.
    pub fn new(config: &Config) -> Result<Self, PluginError> {
        Self::build(config, |_| Search::Automaton)
    }

    /// Like [`Self::new`], with the given way of searching.
    pub fn with_search(config: &Config, search: Search) -> Result<Self, PluginError> {
        Self::build(config, |_| search)
    }

    /// `choose` picks the search from the number of phrases.
    fn build(config: &Config, choose: impl FnOnce(usize) -> Search) -> Result<Self, PluginError> {
        let mut merged: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut add = |from: &str, to: &str| match index.get(from) {
            Some(&i) => merged[i].1 = to.to_owned(),
            None => {
                index.insert(from.to_owned(), merged.len());
                merged.push((from.to_owned(), to.to_owned()));
            }
        };
        for name in &config.presets {
            let rules = presets::get(name).ok_or_else(|| {
                PluginError::InvalidConfig(format!(
                    "presets: unknown preset {name:?} (known: {})",
                    presets::names().join(", ")
                ))
            })?;
            for (from, to) in rules {
                add(from, to);
            }
        }
        for (i, rule) in config.rules.0.iter().enumerate() {
            if rule.from.is_empty() {
                return Err(PluginError::InvalidConfig(format!(
                    "rules[{i}].from: must not be empty (rule to {:?})",
                    rule.to
                )));
            }
            add(&rule.from, &rule.to);
        }

        let ac = if merged.is_empty() || choose(merged.len()) == Search::Scan {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                // The automaton is rebuilt on every call (a fresh instance per request keeps no
                // state), so build time dominates: a contiguous NFA builds ~10x faster than the
                // DFA the builder would pick for a few dozen patterns, and searches a few KB
                // about as fast.
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .ascii_case_insensitive(config.case_insensitive)
                .build(merged.iter().map(|(from, _)| from))
                .map_err(|e| PluginError::InvalidConfig(format!("rules: {e}")))?;
            Some(ac)
        };
        let fold = |s: &str| if config.case_insensitive { s.to_ascii_lowercase() } else { s.to_owned() };
        Ok(Self {
            ac,
            phrases: merged.iter().map(|(from, _)| fold(from)).collect(),
            first_is_word: merged.iter().map(|(f, _)| f.chars().next().is_some_and(is_word_char)).collect(),
            last_is_word: merged
                .iter()
                .map(|(f, _)| f.chars().next_back().is_some_and(is_word_char))
                .collect(),
            max_len: merged.iter().map(|(f, _)| f.len()).max().unwrap_or(0),
            to: merged.into_iter().map(|(_, to)| to).collect(),
            case_insensitive: config.case_insensitive,
            word_boundary: config.word_boundary,
        })
    }

    /// Whether `rest` (the unread tail) could still grow into a phrase.
    fn may_grow(&self, rest: &str) -> bool {
        if rest.len() >= self.max_len {
            return false;
        }
        let folded;
        let rest = if self.case_insensitive {
            folded = rest.to_ascii_lowercase();
            folded.as_str()
        } else {
            rest
        };
        // `rest` is valid UTF-8, so where it ends inside a phrase is a character boundary.
        self.phrases.iter().any(|p| p.len() > rest.len() && p.starts_with(rest))
    }

    /// Every occurrence of every phrase in `buf` as (start, end, phrase index), overlapping
    /// occurrences included, in no particular order.
    fn find_all(&self, buf: &str) -> Vec<(usize, usize, usize)> {
        if let Some(ac) = &self.ac {
            return ac
                .find_overlapping_iter(buf)
                .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                .collect();
        }
        // ASCII folding keeps every byte offset, so matches in the folded text are matches in
        // `buf`, as the automaton's ASCII case-insensitive mode finds them.
        let folded;
        let hay = if self.case_insensitive {
            folded = buf.to_ascii_lowercase();
            folded.as_str()
        } else {
            buf
        };
        let mut found = Vec::new();
        for (i, phrase) in self.phrases.iter().enumerate() {
            let mut from = 0;
            while let Some(offset) = hay[from..].find(phrase.as_str()) {
                let start = from + offset;
                found.push((start, start + phrase.len(), i));
                // Overlapping occurrences too: resume one character after this start.
                from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        found
    }

    /// Rewrites `buf` into `out` from its start and returns how many bytes of `buf` it consumed.
    ///
    /// `prev` is the input character just before `buf` (for the word-boundary check). With
    /// `last == false` more input may follow, so it stops at the first position whose decision
    /// could still depend on unseen text; everything it did decide is exactly what a whole-text
    /// run decides there, because each decision only looks at text it has.
    pub fn rewrite(&self, buf: &str, mut prev: Option<char>, last: bool, out: &mut String) -> usize {
        if self.phrases.is_empty() {
            out.push_str(buf);
            return buf.len();
        }
        // All occurrences, then ordered so that the candidates at each start come longest first.
        let mut found = self.find_all(buf);
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));

        let mut next = 0; // first entry of `found` that may start at or after `pos`
        let mut pos = 0;
        'scan: while pos < buf.len() {
            if !last && self.may_grow(&buf[pos..]) {
                break;
            }
            while next < found.len() && found[next].0 < pos {
                next += 1;
            }
            let start_ok = !self.word_boundary || !prev.is_some_and(is_word_char);
            let mut chosen = None;
            for &(_, end, pat) in found[next..].iter().take_while(|m| m.0 == pos) {
                if self.word_boundary && self.first_is_word[pat] && !start_ok {
                    continue;
                }
                if self.word_boundary && self.last_is_word[pat] {
                    match buf[end..].chars().next() {
                        Some(c) if is_word_char(c) => continue,
                        // The boundary depends on a character we have not seen yet.
                        None if !last => break 'scan,
                        _ => {}
                    }
                }
                chosen = Some((end, pat));
                break;
            }
            match chosen {
                Some((end, pat)) => {
                    out.push_str(&self.to[pat]);
                    prev = buf[pos..end].chars().next_back();
                    pos = end;
                }
                None => {
                    let c = buf[pos..].chars().next().expect("pos < len");
                    out.push(c);
                    prev = Some(c);
                    pos += c.len_utf8();
                }
            }
        }
        pos
    }
}

/// A stream searches only its short pending tail per push: scanning is cheap there.
fn stream_search(phrases: usize) -> Search {
    if phrases > SCAN_MAX_PHRASES { Search::Automaton } else { Search::Scan }
}

/// The plugin.
pub struct Tone;

impl PostProcessor for Tone {
    type Config = Config;

    fn check_config(config: &Config) -> Result<(), PluginError> {
        // The SDK checks the config on every call, before `process` or `open`: build what a
        // stream would, not an automaton a short call does not use. (Building the automaton
        // can only fail for dictionaries far beyond 128 phrases, which do build it here.)
        Dictionary::build(config, stream_search).map(|_| ())
    }

    fn process(text: &str, config: &Config, _ctx: &Context) -> Result<String, PluginError> {
        let dict = Dictionary::build(config, |n| {
            if n > SCAN_MAX_PHRASES || n * text.len() > SCAN_MAX_WORK {
                Search::Automaton
            } else {
                Search::Scan
            }
        })?;
        let mut out = String::with_capacity(text.len());
        dict.rewrite(text, None, true, &mut out);
        Ok(out)
    }

    fn open(config: Config, _ctx: Context) -> Result<Box<dyn Streamer>, PluginError> {
        let dict = Dictionary::build(&config, stream_search)?;
        Ok(Box::new(ToneStream { dict, pending: String::new(), prev: None }))
    }
}

/// Incremental stream: `pending` is input not yet decided, `prev` the input character before it.
struct ToneStream {
    dict: Dictionary,
    pending: String,
    prev: Option<char>,
}

impl Streamer for ToneStream {
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError> {
        self.pending.push_str(chunk);
        let mut out = String::new();
        let used = self.dict.rewrite(&self.pending, self.prev, false, &mut out);
        if used > 0 {
            self.prev = self.pending[..used].chars().next_back();
            self.pending.drain(..used);
        }
        Ok(ChunkOutput::emit(out))
    }

    fn finish(&mut self) -> Result<String, PluginError> {
        let mut out = String::new();
        self.dict.rewrite(&self.pending, self.prev, true, &mut out);
        self.pending.clear();
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

export_post_processor!(Tone);
