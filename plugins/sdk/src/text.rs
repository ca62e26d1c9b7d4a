//! Text tools shared by plugins: sentence segmentation that is right for Chinese and English,
//! a streaming view of it (which sentences are final), comparison keys, script detection.
//!
//! Segmentation starts from Unicode's default sentence boundaries (UAX #29, via
//! `unicode-segmentation`) and fixes what UAX #29 gets wrong for the text models write:
//!
//! - an opening quote or bracket after a terminator starts the NEXT sentence
//!   (`他说。“你好。”` → `他说。` + `“你好。”`), while a closing one stays with its sentence
//!   (`“你好。”他说。` → `“你好。”` + `他说。`). ASCII `"` and `'` cannot be told apart without
//!   context, so after a terminator they are treated as closing (UAX #29's behaviour);
//! - English abbreviations (`Dr.`, `Mr.`, `e.g.`, `etc.`, `vs.`, `St.`, `No. 5`, initials such as
//!   `J. K.`…) do not end a sentence; a line break always does;
//! - a run of whitespace (e.g. a blank line) belongs to the sentence before it, so every sentence
//!   but possibly the first contains something other than whitespace.
//!
//! `…`/`……` is not a terminator (UAX #29 agrees), nor are clause marks (，、；：).
//!
//! All spans are byte ranges that tile the input exactly: concatenating the sentences gives the
//! input back, so plugins keep the original text of whatever they do not change.

use std::ops::Range;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_segmentation::UnicodeSegmentation;

// ---------------------------------------------------------------------------------------------
// Character classes
// ---------------------------------------------------------------------------------------------

/// Han ideographs (Chinese characters, also used in Japanese and Korean), plus `〇` and `々`.
pub fn is_han(c: char) -> bool {
    in_ranges(c, HAN)
}

/// Letters of CJK scripts: Han, kana, hangul and bopomofo (not CJK punctuation, see
/// [`is_cjk_punctuation`]). Text in these scripts is written without spaces between words.
pub fn is_cjk(c: char) -> bool {
    is_han(c) || in_ranges(c, CJK_NON_HAN)
}

/// CJK and full-width punctuation: `，。、；：？！“”‘’「」『』《》（）【】……` and friends.
pub fn is_cjk_punctuation(c: char) -> bool {
    in_ranges(c, CJK_PUNCTUATION) || ['‘', '’', '“', '”', '…', '—'].contains(&c)
}

/// Punctuation in ASCII, general (U+2010–U+205E), Latin-1 and CJK/full-width blocks.
/// ASCII symbols such as `$+<=>^|~` count too (they are `is_ascii_punctuation`).
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || is_cjk_punctuation(c)
        || in_ranges(c, GENERAL_PUNCTUATION)
        || ['¡', '§', '«', '¶', '·', '»', '¿'].contains(&c)
}

/// Ends a sentence: `.!?` and their CJK/full-width/small forms (`。！？｡．﹒﹖﹗`), `‼⁇⁈⁉`, `؟`,
/// `।॥`. (`…` does not: it trails off mid-sentence as often as it ends one.)
pub fn is_sentence_terminator(c: char) -> bool {
    TERMINATORS.contains(&c)
}

/// Separates clauses inside a sentence: `，、；：` and `,;:` (and their small/half-width forms).
pub fn is_clause_separator(c: char) -> bool {
    CLAUSE_SEPARATORS.contains(&c)
}

/// Opening quotes and brackets: `“‘「『《〈（([{【〔〖〘〚［｛«‹„‚｢〝`.
pub fn is_opening_punctuation(c: char) -> bool {
    OPENERS.contains(&c)
}

/// Closing quotes and brackets, and the ASCII quotes `"` `'` (which close more often than they
/// open right after a terminator): `”’」』》〉）)]}】〕〗〙〛］｝»›｣〞〟"'`.
pub fn is_closing_punctuation(c: char) -> bool {
    CLOSERS.contains(&c)
}

/// A line or paragraph break: LF, CR, NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR.
pub fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn in_ranges(c: char, ranges: &[(char, char)]) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

#[rustfmt::skip]
const HAN: &[(char, char)] = &[
    ('\u{3005}', '\u{3005}'), ('\u{3007}', '\u{3007}'), ('\u{3400}', '\u{4DBF}'),
    ('\u{4E00}', '\u{9FFF}'), ('\u{F900}', '\u{FAFF}'), ('\u{20000}', '\u{2A6DF}'),
    ('\u{2A700}', '\u{2EBEF}'), ('\u{2F800}', '\u{2FA1F}'), ('\u{30000}', '\u{323AF}'),
];

#[rustfmt::skip]
const CJK_NON_HAN: &[(char, char)] = &[
    ('\u{3040}', '\u{309F}'), // hiragana
    ('\u{30A0}', '\u{30FA}'), ('\u{30FC}', '\u{30FF}'), ('\u{31F0}', '\u{31FF}'), // katakana
    ('\u{FF66}', '\u{FF9F}'), // half-width katakana
    ('\u{1100}', '\u{11FF}'), ('\u{3130}', '\u{318F}'), ('\u{AC00}', '\u{D7AF}'), // hangul
    ('\u{3100}', '\u{312F}'), ('\u{31A0}', '\u{31BF}'), // bopomofo
];

#[rustfmt::skip]
const CJK_PUNCTUATION: &[(char, char)] = &[
    ('\u{3001}', '\u{3003}'), ('\u{3008}', '\u{3011}'), ('\u{3014}', '\u{301F}'),
    ('\u{3030}', '\u{3030}'), ('\u{303D}', '\u{303D}'), ('\u{30FB}', '\u{30FB}'),
    ('\u{FE10}', '\u{FE19}'), ('\u{FE30}', '\u{FE6B}'), ('\u{FF01}', '\u{FF0F}'),
    ('\u{FF1A}', '\u{FF20}'), ('\u{FF3B}', '\u{FF40}'), ('\u{FF5B}', '\u{FF65}'),
];

#[rustfmt::skip]
const GENERAL_PUNCTUATION: &[(char, char)] = &[
    ('\u{2010}', '\u{2027}'), ('\u{2030}', '\u{205E}'), ('\u{2E00}', '\u{2E5D}'),
];

#[rustfmt::skip]
const TERMINATORS: &[char] = &[
    '.', '!', '?', '。', '！', '？', '｡', '．', '﹒', '﹖', '﹗', '‼', '⁇', '⁈', '⁉', '؟', '।', '॥',
];

#[rustfmt::skip]
const CLAUSE_SEPARATORS: &[char] = &[',', ';', ':', '，', '、', '；', '：', '､', '﹐', '﹑', '﹔', '﹕'];

#[rustfmt::skip]
const OPENERS: &[char] = &[
    '“', '‘', '「', '『', '《', '〈', '（', '(', '[', '{', '【', '〔', '〖', '〘', '〚', '［', '｛',
    '«', '‹', '„', '‚', '｢', '〝',
];

#[rustfmt::skip]
const CLOSERS: &[char] = &[
    '”', '’', '」', '』', '》', '〉', '）', ')', ']', '}', '】', '〕', '〗', '〙', '〛', '］', '｝',
    '»', '›', '｣', '〞', '〟', '"', '\'',
];

/// Which writing system dominates a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Chinese, Japanese or Korean letters outnumber Latin words.
    Cjk,
    /// Latin words are at least as many as CJK letters (and there is at least one).
    Latin,
    /// Neither: digits, punctuation, emoji, other scripts, or empty.
    Other,
}

/// Decides whether a text reads as CJK or Latin by comparing CJK letters with Latin words (a
/// Chinese character carries about as much as an English word, so letters would be unfair).
pub fn dominant_script(text: &str) -> Script {
    let (mut cjk, mut words, mut in_word) = (0usize, 0usize, false);
    for c in text.chars() {
        let latin = c.is_alphabetic() && (c.is_ascii() || ('\u{00C0}'..='\u{024F}').contains(&c));
        if latin && !in_word {
            words += 1;
        }
        in_word = latin;
        if is_cjk(c) {
            cjk += 1;
        }
    }
    if cjk > words {
        Script::Cjk
    } else if words > 0 {
        Script::Latin
    } else {
        Script::Other
    }
}

/// True when the text reads as Chinese/Japanese/Korean (see [`dominant_script`]).
pub fn is_mostly_cjk(text: &str) -> bool {
    dominant_script(text) == Script::Cjk
}

// ---------------------------------------------------------------------------------------------
// Comparison keys
// ---------------------------------------------------------------------------------------------

/// A key for deciding whether two pieces of text say the same thing: NFKC (full-width → ASCII,
/// compatibility forms folded), lowercase, all whitespace and invisible format characters
/// removed, leading and trailing punctuation stripped.
///
/// Only for comparing. Never output it: NFKC turns `……` into `......` and `，` into `,`.
pub fn comparison_key(text: &str) -> String {
    let key: String = text
        .nfkc()
        .flat_map(char::to_lowercase)
        .filter(|&c| !c.is_whitespace() && !matches!(c, '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'))
        .collect();
    key.trim_matches(is_punctuation).to_string()
}

// ---------------------------------------------------------------------------------------------
// Sentence segmentation
// ---------------------------------------------------------------------------------------------

/// Abbreviations that do not end a sentence when followed by a space. Matched as written, with
/// the first letter capitalised, or in capitals (`etc`, `Etc`, `ETC`). Single capital letters
/// other than `I` (initials: `J. K. Rowling`) and `No.` before a number also count.
#[rustfmt::skip]
pub const ABBREVIATIONS: &[&str] = &[
    // Titles.
    "Mr", "Mrs", "Ms", "Mx", "Dr", "Prof", "Rev", "Fr", "St", "Mt", "Ft", "Gen", "Col", "Capt", "Lt",
    "Sgt", "Maj", "Gov", "Sen", "Rep", "Pres", "Hon", "Messrs", "Mme", "Mlle",
    // References.
    "Nos", "Vol", "Vols", "Ch", "Chap", "Sec", "Fig", "Figs", "Eq", "Eqs", "Ref", "Refs", "Ed", "Eds",
    "p", "pp", "para", "art",
    // Latin and common short forms.
    "e.g", "i.e", "etc", "vs", "cf", "viz", "al", "approx", "ca", "incl", "est",
    // Months.
    "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
];

/// Byte ranges of the sentences of `text`; they tile it exactly (see the module docs).
pub fn sentence_spans(text: &str) -> Vec<Range<usize>> {
    segment(text).into_iter().map(|s| s.range).collect()
}

/// The sentences of `text` as slices; concatenated they give `text` back.
pub fn sentences(text: &str) -> Vec<&str> {
    segment(text).into_iter().map(|s| &text[s.range]).collect()
}

/// How many bytes at the start of `text` are whole sentences that no continuation of the text
/// can change. Segmenting `text[..n]` and `text[n..]` separately gives the same sentences as
/// segmenting `text + anything`, so a stream can hand on `text[..n]` now.
///
/// The last sentence is never final (more text may extend it), and a boundary waits for the
/// look-ahead it depends on: `Dr. ` needs the next word, `。` needs to know whether a quote
/// after it opens or closes, `Hello. 5` needs to know whether a lowercase word follows.
pub fn final_len(text: &str) -> usize {
    let segs = segment(text);
    let n = final_count(text, &segs);
    if n == 0 { 0 } else { segs[n - 1].range.end }
}

/// Collects streamed text and hands out sentences once they are final (see [`final_len`]).
///
/// The sentences it returns, in order, are exactly [`sentences`] of the whole text.
#[derive(Debug, Clone, Default)]
pub struct SentenceBuffer {
    pending: String,
}

impl SentenceBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk`; returns the sentences that became final (often none).
    pub fn push(&mut self, chunk: &str) -> Vec<String> {
        self.pending.push_str(chunk);
        let segs = segment(&self.pending);
        let n = final_count(&self.pending, &segs);
        if n == 0 {
            return Vec::new();
        }
        let out = segs[..n].iter().map(|s| self.pending[s.range.clone()].to_string()).collect();
        self.pending.drain(..segs[n - 1].range.end);
        out
    }

    /// The text has ended: returns the remaining sentences.
    pub fn finish(&mut self) -> Vec<String> {
        let text = std::mem::take(&mut self.pending);
        sentences(&text).into_iter().map(str::to_string).collect()
    }

    /// Text received but not yet handed out.
    pub fn pending(&self) -> &str {
        &self.pending
    }
}

/// A sentence and the UAX #29 boundary its end was derived from: finality depends on the
/// look-ahead at that raw boundary, which is after the sentence when an opening quote was split
/// off.
#[derive(Debug, Clone)]
struct Seg {
    range: Range<usize>,
    raw_end: usize,
}

/// A piece of a UAX #29 sentence, before pieces are glued into sentences.
struct Piece {
    range: Range<usize>,
    raw_end: usize,
    /// The sentence does not end after this piece (abbreviation, split-off opening quote).
    glue_next: bool,
}

fn segment(text: &str) -> Vec<Seg> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut starts = text.split_sentence_bound_indices().map(|(i, _)| i).peekable();
    while let Some(start) = starts.next() {
        let end = starts.peek().copied().unwrap_or(text.len());
        let raw = &text[start..end];
        let next = text[end..].chars().next();
        match opening_quote_split(raw) {
            Some(at) => {
                pieces.push(Piece { range: start..start + at, raw_end: end, glue_next: false });
                pieces.push(Piece { range: start + at..end, raw_end: end, glue_next: true });
            }
            None => pieces.push(Piece {
                range: start..end,
                raw_end: end,
                glue_next: ends_with_abbreviation(raw, next),
            }),
        }
    }

    let mut segs: Vec<Seg> = Vec::new();
    let mut glue = false;
    for p in pieces {
        let blank = text[p.range.clone()].chars().all(char::is_whitespace);
        match segs.last_mut() {
            Some(last) if glue || blank => {
                last.range.end = p.range.end;
                last.raw_end = p.raw_end;
            }
            _ => segs.push(Seg { range: p.range, raw_end: p.raw_end }),
        }
        glue = p.glue_next;
    }
    segs
}

/// Number of leading segments that are final: those whose raw boundary has a decisive character
/// at or after it (UAX #29 looks ahead only until the first letter, line break or terminator).
fn final_count(text: &str, segs: &[Seg]) -> usize {
    let Some(q) = text.char_indices().rev().find(|&(_, c)| is_decisive(c)).map(|(i, _)| i) else {
        return 0;
    };
    segs.iter().take_while(|s| s.raw_end <= q).count()
}

/// Whether `c` ends UAX #29's look-ahead (rule SB8 scans past digits, spaces, quotes and other
/// punctuation for a lowercase letter; a letter, line break or terminator settles it). Probed
/// from `unicode-segmentation` itself for non-ASCII so it matches its tables exactly.
fn is_decisive(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic() || matches!(c, '\n' | '\r' | '.' | '!' | '?');
    }
    if is_han(c) {
        return true;
    }
    let probe = |last: char| -> Vec<usize> {
        // The digit makes UAX #29 look ahead across `c` rather than decide at it.
        let mut s = String::from("x. 5");
        s.push(c);
        s.push(last);
        s.split_sentence_bound_indices().map(|(i, _)| i).collect()
    };
    probe('b') == probe('B') && !is_combining_mark(c)
}

/// If a UAX #29 sentence ends `terminator closing* space*` and the closing run contains an
/// opening quote/bracket, returns where that opener starts: it begins the next sentence.
fn opening_quote_split(raw: &str) -> Option<usize> {
    if raw.ends_with(is_line_break) {
        return None;
    }
    let body = raw.trim_end_matches(|c: char| c.is_whitespace());
    let run_start = body
        .char_indices()
        .rev()
        .take_while(|&(_, c)| is_opening_punctuation(c) || is_closing_punctuation(c))
        .last()
        .map(|(i, _)| i)?;
    if !body[..run_start].ends_with(is_sentence_terminator) {
        return None;
    }
    body[run_start..].char_indices().find(|&(_, c)| is_opening_punctuation(c)).map(|(i, _)| run_start + i)
}

/// Whether a UAX #29 sentence ends with an abbreviation and a space (`Dr. `), so the sentence
/// goes on. `next` is the character after it (`No.` only counts before a digit).
fn ends_with_abbreviation(raw: &str, next: Option<char>) -> bool {
    if raw.ends_with(is_line_break) || next.is_none() {
        return false;
    }
    let trimmed = raw.trim_end_matches(|c: char| c.is_whitespace());
    if trimmed.len() == raw.len() {
        return false; // no space after the dot: `U.S.A` style runs are UAX #29's business
    }
    let Some(body) = trimmed.strip_suffix('.') else { return false };
    let start = body
        .char_indices()
        .rev()
        .take_while(|&(_, c)| c.is_ascii_alphabetic() || c == '.')
        .last()
        .map_or(body.len(), |(i, _)| i);
    let token = &body[start..];
    if token.is_empty() || token.starts_with('.') || token.ends_with('.') {
        return false;
    }
    if body[..start].ends_with(|c: char| c.is_alphanumeric()) {
        return false; // `x2Dr.` is not a word of its own
    }
    if token.len() == 1 && token != "I" && token.chars().all(|c| c.is_ascii_uppercase()) {
        return true; // an initial
    }
    if matches!(token, "No" | "NO" | "no") {
        let after = next.filter(|c| !c.is_whitespace());
        return after.is_some_and(|c| c.is_ascii_digit() || c == '#');
    }
    ABBREVIATIONS.iter().any(|a| {
        token == *a
            || (token.eq_ignore_ascii_case(a) && (token == a.to_ascii_uppercase() || token == capitalize(a)))
    })
}

fn capitalize(s: &str) -> String {
    let mut cs = s.chars();
    match cs.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + cs.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(text: &str) -> Vec<&str> {
        sentences(text)
    }

    #[test]
    fn chinese_terminators() {
        assert_eq!(split("你好。我很好！你呢？"), ["你好。", "我很好！", "你呢？"]);
        assert_eq!(split("真的吗？！太好了。"), ["真的吗？！", "太好了。"]);
        assert_eq!(split("你好，世界；再见：朋友。"), ["你好，世界；再见：朋友。"]);
    }

    #[test]
    fn english_terminators() {
        assert_eq!(split("Hello there. How are you? Fine!"), ["Hello there. ", "How are you? ", "Fine!"]);
        assert_eq!(split("Really?! Yes."), ["Really?! ", "Yes."]);
        assert_eq!(split("Pi is 3.14 exactly. OK."), ["Pi is 3.14 exactly. ", "OK."]);
        assert_eq!(split("Wait... what happened?"), ["Wait... what happened?"]);
    }

    #[test]
    fn opening_quote_starts_next_sentence() {
        assert_eq!(split("他说。“你好。”"), ["他说。", "“你好。”"]);
        assert_eq!(split("“你好。”他说。"), ["“你好。”", "他说。"]);
        assert_eq!(split("“你好。”“再见。”"), ["“你好。”", "“再见。”"]);
        assert_eq!(split("他笑了。「好吧。」她说。"), ["他笑了。", "「好吧。」", "她说。"]);
        assert_eq!(split("He left.”Then"), ["He left.”", "Then"]);
        assert_eq!(split("\"Hi.\" He waved."), ["\"Hi.\" ", "He waved."]);
        assert_eq!(split("完成了。（见附录。）下一步。"), ["完成了。", "（见附录。）", "下一步。"]);
    }

    #[test]
    fn ellipsis_is_not_a_terminator() {
        assert_eq!(split("他想了想……然后走了。"), ["他想了想……然后走了。"]);
        assert_eq!(split("我不知道…也许吧。好。"), ["我不知道…也许吧。", "好。"]);
        assert_eq!(split("“我……”他说不出话。"), ["“我……”他说不出话。"]);
    }

    #[test]
    fn abbreviations_do_not_end_sentences() {
        assert_eq!(
            split("Dr. Smith met Mr. Jones. They talked."),
            ["Dr. Smith met Mr. Jones. ", "They talked."]
        );
        assert_eq!(split("Bring fruit, e.g. Apples. Done."), ["Bring fruit, e.g. Apples. ", "Done."]);
        assert_eq!(split("Cats, dogs, etc. Were there."), ["Cats, dogs, etc. Were there."]);
        assert_eq!(
            split("It is No. 5 on the list. No. I disagree."),
            ["It is No. 5 on the list. ", "No. ", "I disagree."]
        );
        assert_eq!(
            split("J. K. Rowling wrote it. So did I. Yes."),
            ["J. K. Rowling wrote it. ", "So did I. ", "Yes."]
        );
        assert_eq!(split("Prof. Li 和 Mrs. Wang 来了。"), ["Prof. Li 和 Mrs. Wang 来了。"]);
        assert_eq!(split("Team Red vs. Team Blue. Go."), ["Team Red vs. Team Blue. ", "Go."]);
        // A single capital reads as an initial, even where it ends a sentence (known trade-off).
        assert_eq!(split("We chose plan B. Then we left."), ["We chose plan B. Then we left."]);
        assert_eq!(split("He lives on Main St.\nNext line."), ["He lives on Main St.\n", "Next line."]);
    }

    #[test]
    fn line_breaks_end_sentences_and_blank_lines_stay_behind() {
        assert_eq!(split("第一行\n第二行"), ["第一行\n", "第二行"]);
        assert_eq!(split("One.\n\nTwo.\r\nThree"), ["One.\n\n", "Two.\r\n", "Three"]);
        assert_eq!(split("\n\n标题\n"), ["\n\n", "标题\n"]);
        assert_eq!(split("A.   "), ["A.   "]);
    }

    #[test]
    fn mixed_chinese_english() {
        assert_eq!(
            split("我用Rust写代码。It is fast! 你觉得呢？"),
            ["我用Rust写代码。", "It is fast! ", "你觉得呢？"]
        );
        assert_eq!(split("版本3.5发布了。"), ["版本3.5发布了。"]);
    }

    #[test]
    fn final_len_holds_back_what_may_change() {
        assert_eq!(final_len("你好。我很"), "你好。".len());
        assert_eq!(final_len("你好。"), 0);
        assert_eq!(final_len("他说。“"), 0, "the quote may open or close");
        assert_eq!(final_len("他说。“你"), "他说。".len());
        assert_eq!(final_len("I met Dr. "), 0);
        assert_eq!(final_len("Hello. 5"), 0, "`5 apples` would continue the sentence");
        assert_eq!(final_len("Hello. 5 Apples"), "Hello. ".len());
        assert_eq!(final_len("One.\n"), 0);
        assert_eq!(final_len("One.\n\nT"), "One.\n\n".len());
    }

    #[test]
    fn sentence_buffer_hands_out_final_sentences() {
        let mut b = SentenceBuffer::new();
        assert!(b.push("你好。").is_empty());
        assert_eq!(b.push("我很好。“是"), ["你好。", "我很好。"]);
        assert_eq!(b.push("吗？”他问"), ["“是吗？”"]);
        assert_eq!(b.pending(), "他问");
        assert_eq!(b.finish(), ["他问"]);
    }

    #[test]
    fn comparison_keys() {
        assert_eq!(comparison_key("  Hello,  World! "), "hello,world");
        assert_eq!(comparison_key("“你好，世界。”"), "你好,世界");
        assert_eq!(comparison_key("ＡＢＣ１２３！"), "abc123");
        assert_eq!(comparison_key("……"), "");
        assert_eq!(comparison_key("He said\u{200B}hi."), "hesaidhi");
    }

    #[test]
    fn scripts() {
        assert!(is_cjk('中') && is_cjk('の') && is_cjk('한') && !is_cjk('a') && !is_cjk('。'));
        assert!(is_han('中') && !is_han('の'));
        assert!(is_cjk_punctuation('，') && is_punctuation('…') && !is_punctuation('a'));
        assert_eq!(dominant_script("我喜欢Rust编程"), Script::Cjk);
        assert_eq!(dominant_script("I like 中文 a lot"), Script::Latin);
        assert_eq!(dominant_script("123 😀"), Script::Other);
    }

    #[test]
    fn decisive_matches_segmentation_tables() {
        for c in ['中', 'あ', 'é', 'Ж', '。', '！', '？', '\u{2029}', '\u{85}'] {
            assert!(is_decisive(c), "{c:?}");
        }
        for c in ['”', '“', '１', '…', '\u{301}', '\u{200D}', '😀', '，', '\u{3000}'] {
            assert!(!is_decisive(c), "{c:?}");
        }
    }

    /// Text built from pieces that exercise every rule above.
    pub(crate) fn tricky_text() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "你好",
            "世界",
            "他说",
            "。",
            "！",
            "？",
            "……",
            "…",
            "，",
            "、",
            "；",
            "：",
            "“",
            "”",
            "「",
            "」",
            "（",
            "）",
            "Hello",
            "world",
            "the",
            "Dr",
            "No",
            "etc",
            "e.g",
            "J",
            ".",
            "!",
            "?",
            "...",
            ",",
            " ",
            "  ",
            "\n",
            "\n\n",
            "\r\n",
            "\"",
            "'",
            "(",
            ")",
            "5",
            "3.14",
            "👍",
            "👍🏽",
            "👨‍👩‍👧",
            "🇨🇳",
            "\u{301}",
            "\u{200D}",
            "a",
            "B",
            "\t",
            "\u{3000}",
        ]);
        prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn spans_tile_the_input(text in tricky_text()) {
            let spans = sentence_spans(&text);
            let mut at = 0;
            for s in &spans {
                prop_assert_eq!(s.start, at);
                prop_assert!(s.end > s.start);
                at = s.end;
            }
            prop_assert_eq!(at, text.len());
            prop_assert_eq!(sentences(&text).concat(), text);
        }

        #[test]
        fn final_prefix_never_changes(text in tricky_text(), cut in 0usize..200) {
            let mut k = cut.min(text.len());
            while !text.is_char_boundary(k) { k -= 1; }
            let whole = sentence_spans(&text);
            let n = final_len(&text[..k]);
            prop_assert!(n <= k);
            let head = sentence_spans(&text[..n]);
            prop_assert!(head.len() <= whole.len());
            prop_assert_eq!(&whole[..head.len()], &head[..]);
            // Restarting after the final prefix gives the rest.
            let tail: Vec<_> = sentence_spans(&text[n..]).into_iter().map(|r| r.start + n..r.end + n).collect();
            prop_assert_eq!(&whole[head.len()..], &tail[..]);
        }

        #[test]
        fn sentence_buffer_matches_whole(text in tricky_text(), sizes in prop::collection::vec(1usize..6, 1..4)) {
            let mut b = SentenceBuffer::new();
            let mut got = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            let mut i = 0;
            for n in sizes.iter().cycle() {
                if i >= chars.len() { break; }
                let chunk: String = chars[i..(i + n).min(chars.len())].iter().collect();
                i += n;
                got.extend(b.push(&chunk));
            }
            got.extend(b.finish());
            let want: Vec<String> = sentences(&text).into_iter().map(str::to_string).collect();
            prop_assert_eq!(got, want);
        }
    }
}
