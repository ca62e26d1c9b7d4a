//! `punctuation`: fixes punctuation and spacing by context, for Chinese and English.
//!
//! Each sentence is Chinese or English context (`locale`). `auto` decides per sentence: a
//! sentence with at least as many CJK characters as Latin words is Chinese.
//!
//! **Chinese context** (following the common Chinese copywriting guidelines):
//! - `, . ! ? : ; ( )` next to Chinese text or ending the sentence become `，。！？：；（）`; not
//!   inside numbers (`3.14`, `1,000`), times (`10:30`), URLs, e-mails, inline code, Latin
//!   tokens (`Node.js`, `.NET`, `a:b`), abbreviations (`e.g.`, `U.S.`, `etc.`) or calls (`f(x)`),
//!   nor between two Latin words (`Redis, MySQL`). A `)` follows its `(`.
//! - Straight quotes pair up: `"…"` → `“…”`, `'…'` → `‘…’` (apostrophes as in `don't` stay). An
//!   open `"` carries across sentences and lines (not past a blank line).
//! - `...`, `。。。`, `…` and similar runs → `……`.
//! - One space between CJK and Latin letters/digits (`在LeanCloud上` → `在 LeanCloud 上`,
//!   `共10个` → `共 10 个`); no space next to full-width punctuation.
//!
//! **English context**: stray `，。！？：；（）“”、` → ASCII (`……`/`。。。` → `...`), a space after
//! `, ; ! ? :` (and `.` before a capital) where a word follows directly (not inside numbers,
//! `e.g.`, `U.S.`, `Node.js`, URLs, times), no space before `, . ! ? ; :`, single spaces.
//!
//! **Both**: runs of the same `!`/`?` are cut to `max_repeat`. Markdown is respected: fenced
//! code blocks, inline code, URLs, e-mails, link targets `](…)` and list markers (`1. `) are
//! left alone; leading indentation and trailing spaces (a Markdown line break) are kept.
//! Text is never NFKC-normalised (that would rewrite full-width letters, ligatures, etc.).
//!
//! # Config
//!
//! | field | default | meaning |
//! | --- | --- | --- |
//! | `locale` | `auto` | `zh`, `en` or `auto` (per sentence, by script) |
//! | `cjk_latin_space` | `true` | one space between CJK and Latin letters/digits |
//! | `quotes` | `true` | straight quotes to “” ‘’ in Chinese context |
//! | `collapse_repeats` | `true` | shorten runs like `！！！` / `???` |
//! | `max_repeat` | `1` | longest run kept when collapsing (at least 1) |
//!
//! ```yaml
//! - plugin: punctuation
//!   config:
//!     locale: auto
//!     cjk_latin_space: true
//!     collapse_repeats: true
//!     max_repeat: 1
//! ```
//!
//! `{}` is the default config. Errors are `invalid-config` naming the field (`max_repeat: must
//! be at least 1`, `locale: unknown variant ...`).
//!
//! # Streaming
//!
//! Input is cut into segments (sentences: a terminator followed by a space, CJK or line end;
//! lines; code-block lines) on the input text, using only look-ahead it already has, and each
//! segment is fixed once complete. So the stream holds back at most the current sentence (to
//! know its script and its end, e.g. whether `.` becomes `...` or `3.14`), and state that must
//! cross sentences (an open quote, open brackets, code blocks) is carried. The whole-text path
//! runs the same loop, so output is identical for any chunking.
//!
//! # Why not `autocorrect`
//!
//! `autocorrect` 2.14 builds for `wasm32-wasip2`, but as a 1.5 MB component (its ~30 language
//! grammars, `ignore`, `serde_yaml`) at about 4 MB/s natively, with regexes compiled on the
//! first call of every fresh instance. It formats whole texts only (no streaming) and has no
//! English-context rules; it leaves `;`, `()` and quotes half-width in Chinese (by design), and
//! does not collapse `！！！`. A small hand-written scanner does all of that in one pass.

mod chars;
mod fix;
mod segment;

use pipehost_plugin_sdk::{
    ChunkOutput, Context, PluginError, PostProcessor, Streamer, export_post_processor,
};
use serde::Deserialize;

/// Which punctuation conventions apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    Zh,
    En,
    #[default]
    Auto,
}

/// The stage config (see the crate docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub locale: Locale,
    pub cjk_latin_space: bool,
    pub quotes: bool,
    pub collapse_repeats: bool,
    pub max_repeat: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            locale: Locale::Auto,
            cjk_latin_space: true,
            quotes: true,
            collapse_repeats: true,
            max_repeat: 1,
        }
    }
}

/// Cuts and fixes as many segments of `buf` as can be decided, scanning the first from
/// `resume`; returns the bytes consumed and where to resume scanning what is left.
fn run(
    buf: &str,
    resume: usize,
    last: bool,
    state: &mut fix::State,
    config: &Config,
    out: &mut String,
) -> (usize, usize) {
    let (mut pos, mut from) = (0, resume);
    loop {
        match segment::next_cut(&buf[pos..], state.line_start, state.fence, last, from) {
            segment::Next::Cut(cut) => {
                let seg = &buf[pos..pos + cut.len];
                if cut.verbatim {
                    out.push_str(seg);
                    update_fence(seg, state);
                } else {
                    out.push_str(&fix::fix_segment(seg, cut.next, state, config));
                }
                pos += cut.len;
                from = 0;
            }
            segment::Next::NeedMore { resume } => return (pos, resume),
        }
    }
}

/// A verbatim line opens a code block, closes it, or is inside it.
fn update_fence(line: &str, state: &mut fix::State) {
    let marker = segment::fence_at(line, true).ok().flatten();
    state.fence = match (state.fence, marker) {
        (None, Some(open)) => Some(open),
        (Some((ch, n)), Some((c, m))) if c == ch && m >= n && line.trim().chars().all(|x| x == c) => None,
        (open, _) => open,
    };
    state.line_start = line.ends_with('\n');
}

/// The plugin.
pub struct Punctuation;

impl PostProcessor for Punctuation {
    type Config = Config;

    fn check_config(config: &Config) -> Result<(), PluginError> {
        if config.max_repeat == 0 {
            return Err(PluginError::InvalidConfig("max_repeat: must be at least 1".into()));
        }
        Ok(())
    }

    fn process(text: &str, config: &Config, _ctx: &Context) -> Result<String, PluginError> {
        let mut out = String::with_capacity(text.len() + text.len() / 8);
        run(text, 0, true, &mut fix::State::new(), config, &mut out);
        Ok(out)
    }

    fn open(config: Config, _ctx: Context) -> Result<Box<dyn Streamer>, PluginError> {
        Ok(Box::new(PunctuationStream {
            config,
            state: fix::State::new(),
            pending: String::new(),
            resume: 0,
        }))
    }
}

/// Incremental stream: `pending` is the input of the segment not yet complete.
struct PunctuationStream {
    config: Config,
    state: fix::State,
    pending: String,
    /// How far `pending` was scanned without deciding (so each chunk costs its own length,
    /// not the pending sentence's).
    resume: usize,
}

impl Streamer for PunctuationStream {
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError> {
        self.pending.push_str(chunk);
        let mut out = String::new();
        let (used, resume) = run(&self.pending, self.resume, false, &mut self.state, &self.config, &mut out);
        self.pending.drain(..used);
        self.resume = resume;
        Ok(ChunkOutput::emit(out))
    }

    fn finish(&mut self) -> Result<String, PluginError> {
        let mut out = String::new();
        run(&self.pending, self.resume, true, &mut self.state, &self.config, &mut out);
        self.pending.clear();
        self.resume = 0;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

export_post_processor!(Punctuation);
