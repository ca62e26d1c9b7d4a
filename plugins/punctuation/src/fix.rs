//! Fixes one segment (see `segment`). Everything here is a pure function of the segment, the
//! carried [`State`] and the one character after the segment, so the stream and the whole-text
//! run agree.

use crate::chars::{is_cjk, is_cjk_side, is_fullwidth_punct, is_latin_alnum, is_latin_letter, is_space};
use crate::{Config, Locale};

/// What carries from one segment to the next.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// A `"` or `“` is open: the next straight `"` closes it. Kept across sentences and lines,
    /// reset at a blank line so one stray quote cannot flip every later one.
    pub double_open: bool,
    /// A `‘` was opened from a straight `'`. Reset at each newline.
    pub single_open: bool,
    /// Open half-width `(`: whether each was converted, so its `)` matches. Reset at newlines.
    pub parens: Vec<bool>,
    /// The next segment starts a line.
    pub line_start: bool,
    /// Inside a fenced code block.
    pub fence: Option<crate::segment::Fence>,
}

impl State {
    pub fn new() -> Self {
        Self { line_start: true, ..Self::default() }
    }
}

/// Text kept verbatim inside a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Inline code, URL, e-mail: spaced like a Latin word.
    Word,
    /// A Markdown list marker or link target: left alone, no spacing.
    Markup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum It {
    C(char),
    P(Kind, String),
}

impl It {
    fn ch(&self) -> Option<char> {
        match self {
            It::C(c) => Some(*c),
            It::P(..) => None,
        }
    }
    fn is(&self, f: impl Fn(char) -> bool) -> bool {
        self.ch().is_some_and(f)
    }
    fn is_space(&self) -> bool {
        self.is(is_space)
    }
    /// Latin letter/digit or a word-like verbatim piece (spaced from CJK).
    fn latinish(&self) -> bool {
        match self {
            It::C(c) => is_latin_alnum(*c),
            It::P(k, _) => *k == Kind::Word,
        }
    }
}

/// Splits a segment into characters and verbatim pieces.
fn tokenize(seg: &str, line_start: bool) -> Vec<It> {
    let chars: Vec<char> = seg.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let mut k = 0;
    if line_start && let Some(n) = list_marker(&chars) {
        out.push(It::P(Kind::Markup, chars[..n].iter().collect()));
        k = n;
    }
    while k < chars.len() {
        let c = chars[k];
        let prev = k.checked_sub(1).map(|p| chars[p]);
        // Inline code: to the matching backtick run, else to the end of the line.
        if c == '`' {
            let n = chars[k..].iter().take_while(|&&c| c == '`').count();
            let mut j = k + n;
            loop {
                if j >= chars.len() || chars[j] == '\n' {
                    break;
                }
                if chars[j] == '`' {
                    let m = chars[j..].iter().take_while(|&&c| c == '`').count();
                    j += m;
                    if m == n {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            out.push(It::P(Kind::Word, chars[k..j].iter().collect()));
            k = j;
            continue;
        }
        // Markdown link target `](...)`.
        if c == ']'
            && chars.get(k + 1) == Some(&'(')
            && let Some(end) = link_target_end(&chars, k + 1)
        {
            out.push(It::P(Kind::Markup, chars[k..end].iter().collect()));
            k = end;
            continue;
        }
        if !prev.is_some_and(|p| p.is_ascii_alphanumeric() || p == '_')
            && let Some(n) = url_len(&chars[k..]).or_else(|| email_len(&chars[k..]))
        {
            out.push(It::P(Kind::Word, chars[k..k + n].iter().collect()));
            k += n;
            continue;
        }
        out.push(It::C(c));
        k += 1;
    }
    out
}

/// The end of a balanced `(...)` starting at `open`, on this line.
fn link_target_end(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (j, &c) in chars.iter().enumerate().skip(open) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            '\n' => return None,
            _ => {}
        }
    }
    None
}

/// `  1. `, `2) `, `- `, `* `, `+ ` at the start of a line (with the spaces after it).
fn list_marker(chars: &[char]) -> Option<usize> {
    let mut k = chars.iter().take_while(|&&c| is_space(c)).count();
    let digits = chars[k..].iter().take_while(|c| c.is_ascii_digit()).count();
    if (1..=9).contains(&digits) {
        k += digits;
        if !matches!(chars.get(k), Some('.' | ')')) {
            return None;
        }
        k += 1;
    } else if digits == 0 && matches!(chars.get(k), Some('-' | '*' | '+')) {
        k += 1;
    } else {
        return None;
    }
    let spaces = chars[k..].iter().take_while(|&&c| is_space(c)).count();
    (spaces > 0).then_some(k + spaces)
}

fn url_char(c: char) -> bool {
    !(c.is_whitespace()
        || is_cjk(c)
        || is_fullwidth_punct(c)
        || matches!(c, '<' | '>' | '"' | '`' | '\u{3000}'))
}

/// `http(s)://`, `ftp://` or `www.` and what follows, less trailing punctuation (as GFM does).
fn url_len(chars: &[char]) -> Option<usize> {
    let starts = |p: &str| {
        p.chars().count() <= chars.len() && p.chars().zip(chars).all(|(a, &b)| a.eq_ignore_ascii_case(&b))
    };
    let scheme = ["https://", "http://", "ftp://", "www."].into_iter().find(|p| starts(p))?;
    let mut n = chars.iter().take_while(|&&c| url_char(c)).count();
    // Trailing punctuation belongs to the sentence; `)` only when unbalanced in the URL.
    while n > 0 {
        let c = chars[n - 1];
        let opens = chars[..n].iter().filter(|&&c| c == '(').count();
        let closes = chars[..n].iter().filter(|&&c| c == ')').count();
        if matches!(c, '.' | ',' | ':' | ';' | '!' | '?' | '\'' | '*' | '_') || (c == ')' && closes > opens) {
            n -= 1;
        } else {
            break;
        }
    }
    (n > scheme.len()).then_some(n)
}

/// `local@domain.tld`, less a trailing dot.
fn email_len(chars: &[char]) -> Option<usize> {
    let local = chars
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'))
        .count();
    if local == 0 || chars.get(local) != Some(&'@') {
        return None;
    }
    let domain = chars[local + 1..]
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .count();
    let mut end = local + 1 + domain;
    while end > local + 1 && matches!(chars[end - 1], '.' | '-') {
        end -= 1;
    }
    let host = &chars[local + 1..end];
    let dot = host.iter().rposition(|&c| c == '.')?;
    (dot > 0 && host.len() - dot > 2).then_some(end)
}

/// Whether a segment reads as Chinese: at least as many CJK characters as Latin words.
fn is_chinese(items: &[It]) -> bool {
    let mut cjk = 0usize;
    let mut words = 0usize;
    let mut in_word = false;
    for it in items {
        let letter = it.is(is_latin_letter);
        if letter && !in_word {
            words += 1;
        }
        in_word = letter;
        if it.is(is_cjk) {
            cjk += 1;
        }
    }
    cjk > 0 && cjk >= words
}

/// Fixes one segment; `next` is the character after it on the same line, if any.
pub fn fix_segment(seg: &str, next: Option<char>, state: &mut State, config: &Config) -> String {
    let line_start = state.line_start;
    let items = tokenize(seg, line_start);
    let chinese = match config.locale {
        Locale::Zh => true,
        Locale::En => false,
        Locale::Auto => is_chinese(&items),
    };
    let mut items = if chinese { to_chinese(&items, state, config) } else { to_english(&items, state) };
    if config.collapse_repeats {
        collapse(&mut items, config.max_repeat);
    }
    let out = if chinese { space_chinese(&items, next, config) } else { space_english(&items, next) };

    // Carry state: quotes and brackets rarely span paragraphs; a stray one must not poison
    // the rest of the answer.
    if seg.ends_with('\n') {
        state.single_open = false;
        state.parens.clear();
        if line_start && seg.trim().is_empty() {
            state.double_open = false;
        }
    }
    state.line_start = seg.ends_with('\n');
    out
}

fn prev_ns(items: &[It], i: usize) -> Option<&It> {
    items[..i].iter().rev().find(|it| !it.is_space())
}

fn next_ns(items: &[It], i: usize) -> Option<&It> {
    items[i + 1..].iter().find(|it| !it.is_space())
}

/// Nothing but closing quotes/brackets or the line end follows: the mark ends the segment.
fn at_end(items: &[It], i: usize) -> bool {
    items[i + 1..]
        .iter()
        .all(|it| it.is(|c| is_space(c) || matches!(c, '\n' | '\r' | '"' | '\'' | '”' | '’' | ')' | '）')))
}

fn cjk_side(it: Option<&It>) -> bool {
    it.is_some_and(|it| it.is(is_cjk_side))
}

fn is_digit(it: Option<&It>) -> bool {
    it.is_some_and(|it| it.is(|c| c.is_ascii_digit()))
}

fn ascii_alnum(it: Option<&It>) -> bool {
    it.is_some_and(|it| it.is(|c| c.is_ascii_alphanumeric()))
}

/// Abbreviations whose final `.` is not a sentence end, even in Chinese text.
const ABBREVIATIONS: &[&str] = &[
    "etc", "vs", "mr", "mrs", "ms", "dr", "prof", "inc", "ltd", "co", "jr", "sr", "st", "no", "fig", "cf",
    "al", "approx", "eg", "ie",
];

/// The Latin token before `items[i]` ends in an abbreviation: `e.g`, `U.S`, `etc`, `Mr`.
fn abbreviation_before(items: &[It], i: usize) -> bool {
    let token: String = items[..i]
        .iter()
        .rev()
        .map_while(|it| it.ch().filter(|&c| c.is_ascii_alphabetic() || c == '.'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if token.is_empty() {
        return false;
    }
    let parts: Vec<&str> = token.split('.').collect();
    // Single letters joined by dots: e.g, i.e, U.S, a.m.
    if parts.len() >= 2 && parts.iter().all(|p| p.len() == 1) {
        return true;
    }
    let last = parts.last().copied().unwrap_or("").to_ascii_lowercase();
    ABBREVIATIONS.contains(&last.as_str())
}

fn push_str(out: &mut Vec<It>, s: &str) {
    out.extend(s.chars().map(It::C));
}

/// Chinese context: half-width marks to full-width where they are prose, quotes to “” ‘’,
/// ellipses to ……, parentheses to （）.
fn to_chinese(items: &[It], state: &mut State, config: &Config) -> Vec<It> {
    let mut out = Vec::with_capacity(items.len());
    let mut i = 0;
    while i < items.len() {
        let It::C(c) = items[i] else {
            out.push(items[i].clone());
            i += 1;
            continue;
        };
        let prev = i.checked_sub(1).map(|p| &items[p]);
        let next = items.get(i + 1);
        let lns = prev_ns(items, i);
        let rns = next_ns(items, i);
        // Chinese if a neighbour is Chinese or nothing but closers follows (sentence end).
        let prose = cjk_side(lns) || cjk_side(rns) || at_end(items, i);
        match c {
            '.' | '。' | '…' => {
                let run = items[i..].iter().take_while(|it| it.is(|c| matches!(c, '.' | '。' | '…'))).count();
                let dots_only = items[i..i + run].iter().all(|it| it.is(|c| c == '.'));
                let after = items.get(i + run);
                if run >= 2 || c == '…' {
                    // 1..10, a...b: a range or code, not an ellipsis.
                    let inside =
                        dots_only && prev.is_some_and(It::latinish) && after.is_some_and(It::latinish);
                    if inside {
                        items[i..i + run].iter().for_each(|it| out.push(it.clone()));
                    } else {
                        push_str(&mut out, "……");
                    }
                    i += run;
                    continue;
                }
                let keep = c == '.'
                    && (ascii_alnum(next)
                        || next.is_some_and(|n| n.is(|c| matches!(c, '/' | '\\' | '_' | '-')))
                        || abbreviation_before(items, i)
                        || !prose);
                out.push(It::C(if keep { c } else { '。' }));
            }
            ',' | ':' | ';' | '!' | '?' => {
                // `!?!` is decided as one mark, from what is around the whole run.
                let run = if matches!(c, '!' | '?') {
                    items[i..].iter().take_while(|it| it.is(|c| matches!(c, '!' | '?'))).count()
                } else {
                    1
                };
                let last = i + run - 1;
                let next = items.get(last + 1);
                let prose = cjk_side(lns) || cjk_side(next_ns(items, last)) || at_end(items, last);
                let number = matches!(c, ',' | ':') && is_digit(prev) && is_digit(next);
                let token = ascii_alnum(prev) && ascii_alnum(next);
                let path = c == ':'
                    && (next.is_some_and(|n| n.is(|c| c == '/' || c == ':'))
                        || prev.is_some_and(|p| p.is(|c| c == ':')));
                let keep = number || token || path || !prose;
                for it in &items[i..=last] {
                    let m = it.ch().unwrap_or(c);
                    out.push(It::C(if keep { m } else { fullwidth(m) }));
                }
                i += run;
                continue;
            }
            '(' => {
                let call = prev.is_some_and(|p| p.is(|c| c.is_ascii_alphanumeric() || c == '_'));
                let convert = !call && (cjk_side(lns) || cjk_side(rns));
                if state.parens.len() < 32 {
                    state.parens.push(convert);
                }
                out.push(It::C(if convert { '（' } else { '(' }));
            }
            ')' => {
                let convert = state.parens.pop().unwrap_or(false);
                out.push(It::C(if convert { '）' } else { ')' }));
            }
            '"' if config.quotes => {
                out.push(It::C(if state.double_open { '”' } else { '“' }));
                state.double_open = !state.double_open;
            }
            '“' => {
                state.double_open = true;
                out.push(It::C(c));
            }
            '”' => {
                state.double_open = false;
                out.push(It::C(c));
            }
            '\'' if config.quotes => {
                let prev_word = prev.is_some_and(|p| p.is(is_latin_alnum));
                let next_word = next.is_some_and(|n| n.is(is_latin_alnum));
                let prev_solid = prev.is_some_and(|p| !p.is_space());
                let next_solid = next.is_some_and(|n| !n.is(|c| c.is_whitespace()));
                if state.single_open && prev_solid && !next_word {
                    state.single_open = false;
                    out.push(It::C('’'));
                } else if !state.single_open && next_solid && !prev_word {
                    state.single_open = true;
                    out.push(It::C('‘'));
                } else {
                    out.push(It::C(c)); // an apostrophe: don't, it's, users'
                }
            }
            _ => out.push(It::C(c)),
        }
        i += 1;
    }
    out
}

fn fullwidth(c: char) -> char {
    match c {
        ',' => '，',
        ':' => '：',
        ';' => '；',
        '!' => '！',
        '?' => '？',
        '.' => '。',
        other => other,
    }
}

/// English context: stray full-width marks to ASCII (with the space English wants after them).
fn to_english(items: &[It], state: &mut State) -> Vec<It> {
    let mut out = Vec::with_capacity(items.len());
    let mut i = 0;
    while i < items.len() {
        let It::C(c) = items[i] else {
            out.push(items[i].clone());
            i += 1;
            continue;
        };
        let next = items.get(i + 1);
        // …… and 。。。 are an ellipsis; a single … is fine English typography.
        if c == '…' || c == '。' {
            let run = items[i..].iter().take_while(|it| it.is(|d| d == c)).count();
            if run >= 2 {
                push_str(&mut out, "...");
                i += run;
                continue;
            }
        }
        let ascii = match c {
            '，' | '、' => ',',
            '。' => '.',
            '！' => '!',
            '？' => '?',
            '：' => ':',
            '；' => ';',
            '）' => ')',
            '“' => {
                state.double_open = true;
                '"'
            }
            '”' => {
                state.double_open = false;
                '"'
            }
            '"' => {
                state.double_open = !state.double_open;
                '"'
            }
            '（' => {
                if out.last().is_some_and(|p: &It| p.is(is_latin_alnum)) {
                    out.push(It::C(' '));
                }
                '('
            }
            other => other,
        };
        out.push(It::C(ascii));
        // The full-width mark carried its own spacing; English needs a real space.
        if ascii != c
            && matches!(ascii, ',' | '.' | '!' | '?' | ':' | ';' | ')')
            && next.is_some_and(|n| n.latinish() || n.is(is_cjk))
        {
            out.push(It::C(' '));
        }
        i += 1;
    }
    out
}

/// Shortens runs of the same `!`/`?` (either width) to `max` marks.
fn collapse(items: &mut Vec<It>, max: usize) {
    let mut out: Vec<It> = Vec::with_capacity(items.len());
    let mut run = 0;
    for it in items.drain(..) {
        let repeat = it.is(|c| matches!(c, '!' | '?' | '！' | '？'));
        if repeat && out.last() == Some(&it) {
            run += 1;
        } else {
            run = 1;
        }
        if !(repeat && run > max) {
            out.push(it);
        }
    }
    *items = out;
}

fn render(it: &It, out: &mut String) {
    match it {
        It::C(c) => out.push(*c),
        It::P(_, s) => out.push_str(s),
    }
}

/// The item after a run of spaces ending at `j`: None at a line end, so trailing spaces (a
/// Markdown line break) are kept.
fn after_spaces<'a>(items: &'a [It], j: usize, next: &'a Option<It>) -> Option<&'a It> {
    match items.get(j) {
        Some(it) if it.is(|c| c == '\n' || c == '\r') => None,
        Some(it) => Some(it),
        None => next.as_ref(),
    }
}

fn is_cjk_char(it: &It) -> bool {
    it.is(is_cjk)
}

/// `%` after a digit belongs to the number (10% 的), a kept `.` or `)` to its word (e.g. 这个,
/// print(x) 函数).
fn latinish_at(items: &[It], k: usize) -> bool {
    items[k].latinish()
        || (items[k].is(|c| c == '%' || c == '.') && k > 0 && items[k - 1].is(is_latin_alnum))
        || (items[k].is(|c| c == ')') && k > 0 && !items[k - 1].is_space())
}

/// A `.` that starts a token: .NET, .gitignore.
fn dot_token_at(items: &[It], k: usize) -> bool {
    items.get(k).is_some_and(|it| it.is(|c| c == '.')) && ascii_alnum(items.get(k + 1))
}

/// Chinese spacing: none next to full-width punctuation, one between CJK and Latin/digits.
fn space_chinese(items: &[It], next: Option<char>, config: &Config) -> String {
    let next = next.map(It::C);
    let mut out = String::new();
    let mut k = 0;
    while k < items.len() {
        if items[k].is_space() {
            let j = k + items[k..].iter().take_while(|it| it.is_space()).count();
            let a = k.checked_sub(1).map(|p| &items[p]);
            let b = after_spaces(items, j, &next);
            match (a, b) {
                (Some(a), Some(b)) if a.is(is_fullwidth_punct) || b.is(is_fullwidth_punct) => {}
                (Some(a), Some(b))
                    if config.cjk_latin_space
                        && ((is_cjk_char(a) && b.latinish())
                            || (latinish_at(items, k - 1) && is_cjk_char(b))) =>
                {
                    out.push(' ')
                }
                _ => items[k..j].iter().for_each(|it| render(it, &mut out)),
            }
            k = j;
            continue;
        }
        render(&items[k], &mut out);
        // At the end, `next` is the first character of the next segment (e.g. 这 after e.g.).
        if config.cjk_latin_space
            && let Some(b) = items.get(k + 1).or(next.as_ref())
            && ((is_cjk_char(&items[k]) && (b.latinish() || dot_token_at(items, k + 1)))
                || (latinish_at(items, k) && is_cjk_char(b)))
        {
            out.push(' ');
        }
        k += 1;
    }
    out
}

/// English spacing: none before `, . ! ? ; :`, one after them before a word, no double spaces.
fn space_english(items: &[It], next: Option<char>) -> String {
    let next = next.map(It::C);
    let mut out = String::new();
    let mut k = 0;
    while k < items.len() {
        if items[k].is_space() {
            let j = k + items[k..].iter().take_while(|it| it.is_space()).count();
            let a = k.checked_sub(1).map(|p| &items[p]);
            let b = after_spaces(items, j, &next);
            match (a, b) {
                (Some(_), Some(b)) if b.is(|c| matches!(c, ',' | '.' | '!' | '?' | ';' | ':')) => {
                    // Not before a token that starts with the mark (.NET, :) smileys).
                    let after = if j < items.len() { items.get(j + 1) } else { None };
                    let mark = b.ch();
                    let token = after.is_some_and(|t| match mark {
                        Some('.') => t.is(|c| c.is_ascii_alphanumeric()),
                        Some(':' | ';') => t.is(|c| matches!(c, ')' | '(' | '-' | '/' | 'D' | 'P')),
                        _ => false,
                    });
                    if token {
                        out.push(' ');
                    }
                }
                (Some(_), Some(_)) if items[k..j].iter().all(|it| it.is(|c| c == ' ')) => out.push(' '),
                _ => items[k..j].iter().for_each(|it| render(it, &mut out)),
            }
            k = j;
            continue;
        }
        render(&items[k], &mut out);
        if let (It::C(p), Some(b)) = (&items[k], items.get(k + 1)) {
            let prev = k.checked_sub(1).map(|q| &items[q]);
            let letter = b.is(|c| is_latin_letter(c) || is_cjk(c));
            let insert = match p {
                ',' | ';' | '!' | '?' => letter && prev.is_some(),
                ':' => letter && prev.is_some_and(|q| q.is(is_latin_letter)),
                '.' => {
                    b.is(|c| c.is_ascii_uppercase()) && prev.is_some_and(|q| q.is(|c| c.is_ascii_lowercase()))
                }
                _ => false,
            };
            if insert {
                out.push(' ');
            }
        }
        k += 1;
    }
    out
}
