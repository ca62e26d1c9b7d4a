//! Collapsing stuttered words and phrases inside one sentence: `很好很好很好` → `很好`,
//! `the the the` → `the`.
//!
//! Matching is on words (Latin letters/digits, with inner `'` `’` `-`, case-insensitive) and
//! single CJK characters; punctuation, spaces and emoji between copies are ignored, so
//! `好的，好的，好的。` is three copies of `好的`. What is removed runs from the end of the last
//! kept copy to the end of the last copy, so the text after the run (`。`, a closing quote) stays.

use std::borrow::Cow;
use std::ops::Range;

use pipehost_plugin_sdk::text::is_cjk;
use unicode_segmentation::UnicodeSegmentation;

/// Limits for what counts as a repeated phrase.
#[derive(Debug, Clone, Copy)]
pub struct PhraseLimits {
    /// Copies kept of a run (≥ 1).
    pub max_repeat: usize,
    /// A phrase shorter than this (in characters, spaces and punctuation not counted) is never
    /// collapsed: keeps `看看`, `谢谢`, `a a`.
    pub min_chars: usize,
    /// The longest phrase looked for, in characters.
    pub max_chars: usize,
}

/// A word or CJK character that phrase matching compares.
#[derive(Debug)]
struct Token {
    range: Range<usize>,
    /// Lowercased word, or the CJK character itself.
    norm: String,
    chars: usize,
    alphabetic: bool,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !is_cjk(c)
}

fn tokens(s: &str) -> Vec<Token> {
    let graphemes: Vec<(usize, &str)> = s.grapheme_indices(true).collect();
    let first = |g: &str| g.chars().next().unwrap_or(' ');
    let mut out: Vec<Token> = Vec::new();
    let mut in_word = false;
    for (n, &(i, g)) in graphemes.iter().enumerate() {
        let c = first(g);
        let end = i + g.len();
        if is_word_char(c) {
            if in_word && let Some(t) = out.last_mut() {
                t.range.end = end;
                t.norm.extend(g.chars().flat_map(char::to_lowercase));
                t.chars += g.chars().count();
                t.alphabetic |= c.is_alphabetic();
            } else {
                out.push(Token {
                    range: i..end,
                    norm: g.to_lowercase(),
                    chars: g.chars().count(),
                    alphabetic: c.is_alphabetic(),
                });
            }
            in_word = true;
        } else if in_word
            && matches!(c, '\'' | '’' | '-')
            && graphemes.get(n + 1).is_some_and(|&(_, next)| is_word_char(first(next)))
            && let Some(t) = out.last_mut()
        {
            // `don't`, `bye-bye`: one word, so a hyphenated reduplication is not a repeat.
            t.range.end = end;
            t.norm.push(c);
            t.chars += 1;
        } else {
            in_word = false;
            if is_cjk(c) {
                out.push(Token { range: i..end, norm: g.to_string(), chars: 1, alphabetic: true });
            }
        }
    }
    out
}

/// Collapses runs of more than `max_repeat` consecutive copies of a word or phrase.
pub fn collapse<'a>(sentence: &'a str, limits: &PhraseLimits) -> Cow<'a, str> {
    let toks = tokens(sentence);
    let n = toks.len();
    let mut removals: Vec<Range<usize>> = Vec::new();
    let mut i = 0;
    while i < n {
        match run_at(&toks, i, limits) {
            Some((len, copies)) => {
                let keep_end = toks[i + limits.max_repeat * len - 1].range.end;
                let drop_end = toks[i + copies * len - 1].range.end;
                removals.push(keep_end..drop_end);
                i += copies * len;
            }
            None => i += 1,
        }
    }
    if removals.is_empty() {
        return Cow::Borrowed(sentence);
    }
    let mut out = String::with_capacity(sentence.len());
    let mut at = 0;
    for r in removals {
        out.push_str(&sentence[at..r.start]);
        at = r.end;
    }
    out.push_str(&sentence[at..]);
    Cow::Owned(out)
}

/// The shortest phrase starting at token `i` that repeats more than `max_repeat` times:
/// (phrase length in tokens, number of copies).
fn run_at(toks: &[Token], i: usize, limits: &PhraseLimits) -> Option<(usize, usize)> {
    let n = toks.len();
    let mut chars = 0;
    let mut alphabetic = false;
    for len in 1..=(n - i) / 2 {
        chars += toks[i + len - 1].chars;
        alphabetic |= toks[i + len - 1].alphabetic;
        if chars > limits.max_chars {
            return None;
        }
        // Digits alone (`1 2 1 2 1 2`) are data, not a stutter.
        if chars < limits.min_chars || !alphabetic {
            continue;
        }
        let same = |k: usize| (0..len).all(|j| toks[i + j].norm == toks[i + k * len + j].norm);
        let mut copies = 1;
        while i + (copies + 1) * len <= n && same(copies) {
            copies += 1;
        }
        if copies > limits.max_repeat {
            return Some((len, copies));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str, max_repeat: usize) -> String {
        collapse(s, &PhraseLimits { max_repeat, min_chars: 2, max_chars: 24 }).into_owned()
    }

    #[test]
    fn chinese_stutter() {
        assert_eq!(run("很好很好很好", 1), "很好");
        assert_eq!(run("很好很好很好很好。", 2), "很好很好。");
        assert_eq!(run("好的，好的，好的。", 1), "好的。");
        assert_eq!(run("“我知道我知道我知道”", 1), "“我知道”");
        assert_eq!(run("我觉得我觉得我觉得这个方案可以。", 1), "我觉得这个方案可以。");
    }

    #[test]
    fn english_stutter() {
        assert_eq!(run("the the the cat", 1), "the cat");
        assert_eq!(run("The the cat", 1), "The cat");
        assert_eq!(run("No, no, no, no!", 2), "No, no!");
        assert_eq!(run("I think I think I think so.", 1), "I think so.");
        assert_eq!(run("very very good", 2), "very very good");
    }

    #[test]
    fn legitimate_repetition_is_kept() {
        assert_eq!(run("看看，谢谢，慢慢来。", 1), "看看，谢谢，慢慢来。");
        assert_eq!(run("我们研究研究再说。", 2), "我们研究研究再说。");
        assert_eq!(run("bye-bye, so-so", 1), "bye-bye, so-so");
        assert_eq!(run("1 2 1 2 1 2", 1), "1 2 1 2 1 2");
        assert_eq!(run("a a a", 1), "a a a");
        assert_eq!(run("……!!!😀😀😀", 1), "……!!!😀😀😀");
        assert_eq!(run("I know that that is true.", 2), "I know that that is true.");
    }

    #[test]
    fn never_splits_graphemes() {
        assert_eq!(run("cafe\u{301} cafe\u{301} cafe\u{301}", 1), "cafe\u{301}");
        assert_eq!(run("很好👍🏽很好👍🏽很好👍🏽", 1), "很好👍🏽");
    }
}
