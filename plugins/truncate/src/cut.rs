//! Where to cut: measuring text and choosing a boundary.
//!
//! The decision only ever looks at the *window*: the text up to and including the first grapheme
//! at which the running size exceeds `max`. The whole-text path and the stream both find that
//! grapheme and decide from the same window, so they agree however the text was chunked and
//! whatever the model would have written after it.

use pipehost_plugin_sdk::text::{
    is_cjk, is_clause_separator, is_mostly_cjk, is_opening_punctuation, sentence_spans,
};
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use crate::{Config, Ellipsis, Unit};

/// The size of one grapheme cluster in the configured unit.
pub fn grapheme_size(g: &str, unit: Unit) -> usize {
    match unit {
        Unit::Graphemes => 1,
        Unit::Width => g.width(),
    }
}

/// The size of a string in the configured unit (sum over its grapheme clusters).
pub fn size(s: &str, unit: Unit) -> usize {
    s.graphemes(true).map(|g| grapheme_size(g, unit)).sum()
}

/// Characters dropped from the end of what is kept, so an ellipsis never follows a space, a
/// comma or an opening quote (`我喜欢，……`, `He said “...`).
pub fn is_trim_char(c: char) -> bool {
    c.is_whitespace() || is_clause_separator(c) || is_opening_punctuation(c)
}

/// A grapheme made only of trim characters (whole clusters are trimmed, never part of one).
pub fn is_trim_grapheme(g: &str) -> bool {
    g.chars().all(is_trim_char)
}

/// Byte length of `s` without its trailing trim graphemes.
fn trimmed_end(s: &str) -> usize {
    let mut end = s.len();
    for (i, g) in s.grapheme_indices(true).rev() {
        if !is_trim_grapheme(g) {
            break;
        }
        end = i;
    }
    end
}

/// The ellipsis text for a window.
pub fn ellipsis_for(window: &str, ellipsis: &Ellipsis) -> String {
    match ellipsis {
        Ellipsis::Auto if is_mostly_cjk(window) => "……".into(),
        Ellipsis::Auto | Ellipsis::En => "...".into(),
        Ellipsis::Zh => "……".into(),
        Ellipsis::None => String::new(),
        Ellipsis::Custom(s) => s.clone(),
    }
}

/// What the output is when the text is over the limit: `window[..kept]` then `ellipsis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub kept: usize,
    pub ellipsis: String,
}

/// Chooses the cut for a window whose size exceeds `max` (the config's length limit).
///
/// With `budget = max - size(ellipsis)`, the kept text fits the budget and is, in order of
/// preference, the longest run of whole sentences, of whole clauses (the separator dropped), of
/// whole words (only when the hard cut would split a Latin word), each only if it keeps at least
/// `min_fraction * max`; otherwise as many grapheme clusters as fit. Trailing spaces, clause
/// separators and opening quotes are then dropped.
pub fn choose(window: &str, config: &Config, max: usize) -> Cut {
    let unit = config.unit;
    let mut ellipsis = ellipsis_for(window, &config.ellipsis);
    let budget = max.saturating_sub(size(&ellipsis, unit));
    let min_keep = (config.min_fraction * max as f64).ceil() as usize;

    // Grapheme boundaries with the size of the text before each.
    let mut bounds = vec![(0usize, 0usize)];
    for (i, g) in window.grapheme_indices(true) {
        let before = bounds.last().map_or(0, |b| b.1);
        bounds.push((i + g.len(), before + grapheme_size(g, unit)));
    }
    let size_at = |pos: usize| bounds.binary_search_by_key(&pos, |b| b.0).ok().map(|i| bounds[i].1);
    // The hard cut: as many whole graphemes as fit the budget.
    let hard = bounds.iter().take_while(|b| b.1 <= budget).last().map_or(0, |b| b.0);
    let fits = |kept: usize| kept > 0 && kept <= hard && size_at(kept).is_some_and(|n| n >= min_keep);
    let best = |cands: &mut dyn Iterator<Item = usize>| {
        cands.map(|c| trimmed_end(&window[..c])).filter(|&k| fits(k)).max()
    };

    let kept = best(&mut sentence_span_ends(window))
        .or_else(|| best(&mut clause_ends(window)))
        .or_else(|| splits_word(window, hard).then(|| best(&mut word_starts(window, hard))).flatten())
        .unwrap_or_else(|| trimmed_end(&window[..hard]));

    // Text that already trails off needs no second ellipsis.
    let trails_off = window[..kept].ends_with('…') || window[..kept].ends_with("...");
    if trails_off && !matches!(config.ellipsis, Ellipsis::Custom(_)) {
        ellipsis.clear();
    }
    Cut { kept, ellipsis }
}

/// Ends of all sentences but the last (the last one runs to the end of the window).
fn sentence_span_ends(window: &str) -> impl Iterator<Item = usize> + '_ {
    let spans = sentence_spans(window);
    let n = spans.len().saturating_sub(1);
    spans.into_iter().take(n).map(|s| s.end)
}

/// Positions of clause separators (cutting there drops the separator). ASCII `,;:` count only
/// before whitespace, so `1,000` and `http://` are not clauses.
fn clause_ends(window: &str) -> impl Iterator<Item = usize> + '_ {
    window.char_indices().filter_map(move |(i, c)| {
        let next = window[i + c.len_utf8()..].chars().next();
        let ok = is_clause_separator(c) && (!c.is_ascii() || next.is_some_and(char::is_whitespace));
        ok.then_some(i)
    })
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !is_cjk(c)
}

/// Whether cutting at `pos` would split a Latin word (letters or digits on both sides).
fn splits_word(window: &str, pos: usize) -> bool {
    let before = window[..pos].chars().next_back();
    let after = window[pos..].chars().next();
    before.is_some_and(is_word_char) && after.is_some_and(is_word_char)
}

/// Grapheme boundaries up to `limit` that do not split a word.
fn word_starts(window: &str, limit: usize) -> impl Iterator<Item = usize> + '_ {
    window
        .grapheme_indices(true)
        .map(|(i, _)| i)
        .take_while(move |&i| i <= limit)
        .filter(move |&i| !splits_word(window, i))
}
