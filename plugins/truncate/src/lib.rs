//! `truncate`: limits the length of model output, in grapheme clusters or display width, and
//! its number of lines, cutting where a reader expects (Chinese and English).
//!
//! Text within the limit is returned unchanged. Longer text is cut, preferring the end of a
//! sentence, then of a clause (`，；、：` and `,;:` + space; the separator is dropped), then of a
//! word (only Latin words can be split), each only if it keeps at least `min_fraction * max`;
//! otherwise as many whole grapheme clusters as fit. A cut never splits a grapheme cluster (emoji
//! ZWJ sequences, flags, skin tones, combining accents). Trailing spaces, clause separators and
//! opening quotes are dropped before the ellipsis.
//!
//! **The ellipsis counts toward the limit**: the output, ellipsis included, is never longer than
//! `max`. No ellipsis is added when the kept text already ends with `…` or `...` (except a
//! custom one).
//!
//! **Lines.** With `max_lines`, text with more non-empty lines (a line with anything but
//! whitespace; blank lines do not count) is cut at the end of the last allowed line, before its
//! line break; the blank lines after it go too. A line cut adds no ellipsis: the kept lines are
//! whole, and a poem or a list cut after its last line reads as complete. With both limits, the
//! length limit applies to what the line limit kept.
//!
//! Config (JSON; at least one of `max` and `max_lines`):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `max` | none | the length limit, ≥ 1 and larger than the ellipsis |
//! | `max_lines` | none | the most non-empty lines kept, ≥ 1 |
//! | `unit` | `"graphemes"` | `"graphemes"` (user-perceived characters) or `"width"` (terminal columns, `unicode-width`: CJK and emoji count 2, `…` counts 1) |
//! | `ellipsis` | `"auto"` | `"auto"` (`……` when the text is mostly CJK, else `...`), `"zh"` (`……`), `"en"` (`...`), `"none"` or `""`, or any other string used as is |
//! | `min_fraction` | `0.5` | a sentence, clause or word boundary is used only if it keeps at least this fraction of `max` (0–1) |
//!
//! Streaming: text is emitted as soon as it is certainly part of the output, i.e. while it is
//! shorter than `min(min_fraction * max, max - ellipsis)` (it is kept whether or not the text turns
//! out too long, and whichever boundary is chosen); the rest is held. As soon as the limit is
//! exceeded (one character of look-ahead, to know the last grapheme cluster is complete),
//! `push` returns the rest of the kept text with `stop: true`, and `finish` returns the ellipsis.
//! The cut depends only on the text up to the grapheme that exceeded the limit, so the stream
//! gives exactly what `process` gives for the full text, even though the host stops generating.
//! The line limit streams the same way: lines are emitted as they come, what follows the last
//! allowed line is held, and the first visible character of one line too many returns
//! `stop: true` (the held text is dropped).

mod cut;
mod lines;

use pipehost_plugin_sdk::{
    ChunkOutput, Context, PluginError, PostProcessor, Streamer, export_post_processor,
};
use serde::Deserialize;
use unicode_segmentation::UnicodeSegmentation;

pub use cut::{Cut, choose, size};

/// How length is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Extended grapheme clusters: what a reader counts as characters.
    #[default]
    Graphemes,
    /// Display width (`unicode-width`).
    Width,
}

/// What marks a cut.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(from = "String")]
pub enum Ellipsis {
    #[default]
    Auto,
    Zh,
    En,
    None,
    Custom(String),
}

impl From<String> for Ellipsis {
    fn from(s: String) -> Self {
        match s.as_str() {
            "auto" => Ellipsis::Auto,
            "zh" => Ellipsis::Zh,
            "en" => Ellipsis::En,
            "none" | "" => Ellipsis::None,
            _ => Ellipsis::Custom(s),
        }
    }
}

impl Ellipsis {
    /// Every text this setting can produce (auto: either).
    fn candidates(&self) -> Vec<String> {
        match self {
            Ellipsis::Auto => vec!["……".into(), "...".into()],
            Ellipsis::Zh => vec!["……".into()],
            Ellipsis::En => vec!["...".into()],
            Ellipsis::None => vec![String::new()],
            Ellipsis::Custom(s) => vec![s.clone()],
        }
    }
}

/// The stage config; see the crate docs for each field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub max: Option<usize>,
    #[serde(default)]
    pub max_lines: Option<usize>,
    #[serde(default)]
    pub unit: Unit,
    #[serde(default)]
    pub ellipsis: Ellipsis,
    #[serde(default = "default_min_fraction")]
    pub min_fraction: f64,
}

fn default_min_fraction() -> f64 {
    0.5
}

impl Config {
    /// The largest ellipsis this config can append.
    fn max_ellipsis_size(&self) -> usize {
        self.ellipsis.candidates().iter().map(|e| size(e, self.unit)).max().unwrap_or(0)
    }

    /// Text shorter than this is in the output whatever comes after it (see the crate docs).
    fn certain_size(&self, max: usize) -> usize {
        let min_keep = (self.min_fraction * max as f64).ceil() as usize;
        min_keep.min(max.saturating_sub(self.max_ellipsis_size()))
    }
}

fn invalid(msg: String) -> PluginError {
    PluginError::InvalidConfig(msg)
}

/// The `truncate` post-processor.
pub struct Truncate;

impl PostProcessor for Truncate {
    type Config = Config;

    fn check_config(c: &Config) -> Result<(), PluginError> {
        if c.max.is_none() && c.max_lines.is_none() {
            return Err(invalid("set `max` (a length limit), `max_lines` (a line limit) or both".into()));
        }
        if c.max_lines == Some(0) {
            return Err(invalid("`max_lines` must be at least 1".into()));
        }
        let Some(max) = c.max else { return Ok(()) };
        if max == 0 {
            return Err(invalid("`max` must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&c.min_fraction) {
            return Err(invalid(format!("`min_fraction` must be between 0 and 1, got {}", c.min_fraction)));
        }
        for e in c.ellipsis.candidates() {
            let n = size(&e, c.unit);
            if n >= max {
                return Err(invalid(format!(
                    "`max` ({max}) must be larger than the `ellipsis` {e:?} ({n} {:?}), which counts toward it",
                    c.unit
                )));
            }
        }
        Ok(())
    }

    fn process(text: &str, config: &Config, _ctx: &Context) -> Result<String, PluginError> {
        let text = match config.max_lines.and_then(|n| lines::cut(text, n)) {
            Some(end) => &text[..end],
            None => text,
        };
        let Some(max) = config.max else { return Ok(text.to_string()) };
        let mut total = 0;
        for (i, g) in text.grapheme_indices(true) {
            total += cut::grapheme_size(g, config.unit);
            if total > max {
                let window = &text[..i + g.len()];
                let cut = choose(window, config, max);
                return Ok(format!("{}{}", &window[..cut.kept], cut.ellipsis));
            }
        }
        Ok(text.to_string())
    }

    fn open(config: Config, _ctx: Context) -> Result<Box<dyn Streamer>, PluginError> {
        Ok(Box::new(TruncateStream {
            certain: config.max.map_or(0, |max| config.certain_size(max)),
            lines: config.max_lines.map(lines::Lines::new),
            held: String::new(),
            config,
            buffer: String::new(),
            scanned: 0,
            total: 0,
            safe: 0,
            emitted: 0,
            stopped: None,
        }))
    }
}

/// Holds the text seen so far (with `max`, at most about `max` plus one chunk: it stops at the
/// limit).
struct TruncateStream {
    config: Config,
    /// Output shorter than this is certain (see `Config::certain_size`).
    certain: usize,
    /// The line limit's state, when there is one.
    lines: Option<lines::Lines>,
    /// Text after the last allowed line, kept only if the text ends without another line.
    held: String,
    /// The text the line limit kept so far: what the length limit sees.
    buffer: String,
    /// Byte offset up to which grapheme clusters are complete and counted in `total`.
    scanned: usize,
    total: usize,
    /// Byte offset up to which the text is certainly in the output.
    safe: usize,
    emitted: usize,
    /// The ellipsis still to hand out once the limit was reached.
    stopped: Option<String>,
}

impl TruncateStream {
    /// Counts complete grapheme clusters from `scanned`; all of them when `at_end`, otherwise
    /// all but the last (more text may still extend it). Returns the cut once over the limit.
    fn scan(&mut self, at_end: bool) -> Option<Cut> {
        let Some(max) = self.config.max else {
            self.scanned = self.buffer.len();
            self.safe = self.buffer.len();
            return None;
        };
        let rest = &self.buffer[self.scanned..];
        let mut graphemes = rest.grapheme_indices(true).peekable();
        while let Some((i, g)) = graphemes.next() {
            if !at_end && graphemes.peek().is_none() {
                self.scanned += i;
                return None;
            }
            let end = self.scanned + i + g.len();
            self.total += cut::grapheme_size(g, self.config.unit);
            if self.total > max {
                return Some(choose(&self.buffer[..end], &self.config, max));
            }
            if self.total < self.certain && !cut::is_trim_grapheme(g) {
                self.safe = end;
            }
        }
        self.scanned = self.buffer.len();
        None
    }

    /// Passes `chunk` through the line limit into `buffer`; true once the line limit cut (the
    /// buffer then holds all the text it keeps).
    fn feed(&mut self, chunk: &str) -> bool {
        let Some(lines) = &mut self.lines else {
            self.buffer.push_str(chunk);
            return false;
        };
        // Within a chunk: kept text, then held text, then possibly the cut (a held character
        // is only ever followed by held ones or the cut).
        let mut hold_from = None;
        for (i, c) in chunk.char_indices() {
            match lines.step(c) {
                lines::Step::Keep => {}
                lines::Step::Hold => {
                    hold_from.get_or_insert(i);
                }
                lines::Step::Cut => {
                    self.held.clear();
                    self.buffer.push_str(&chunk[..hold_from.unwrap_or(i)]);
                    return true;
                }
            }
        }
        let keep = hold_from.unwrap_or(chunk.len());
        self.buffer.push_str(&chunk[..keep]);
        self.held.push_str(&chunk[keep..]);
        false
    }

    fn take(&mut self, end: usize) -> String {
        let out = self.buffer[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

impl Streamer for TruncateStream {
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError> {
        if self.stopped.is_some() {
            return Ok(ChunkOutput { emit: String::new(), stop: true });
        }
        // After a line cut the kept text is complete, so its last grapheme is too.
        let line_cut = self.feed(chunk);
        if let Some(cut) = self.scan(line_cut) {
            self.stopped = Some(cut.ellipsis);
            return Ok(ChunkOutput { emit: self.take(cut.kept), stop: true });
        }
        if line_cut {
            self.stopped = Some(String::new());
            return Ok(ChunkOutput { emit: self.take(self.buffer.len()), stop: true });
        }
        Ok(ChunkOutput::emit(self.take(self.safe)))
    }

    fn finish(&mut self) -> Result<String, PluginError> {
        if let Some(ellipsis) = self.stopped.take() {
            return Ok(ellipsis);
        }
        // The text ended without another line: what followed the last one stays.
        let held = std::mem::take(&mut self.held);
        self.buffer.push_str(&held);
        match self.scan(true) {
            Some(cut) => Ok(self.take(cut.kept) + &cut.ellipsis),
            None => Ok(self.take(self.buffer.len())),
        }
    }
}

export_post_processor!(Truncate);

#[cfg(test)]
mod tests;
