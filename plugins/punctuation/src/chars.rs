//! Character classes. Kept here rather than using the SDK's `text::is_cjk`, which also counts
//! Hangul: Korean uses half-width punctuation and spaces between words, so it must not make a
//! sentence "Chinese context" or get CJK-Latin spacing.

/// Han ideographs, kana and Bopomofo: scripts whose punctuation is full-width.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x2E80..=0x2FDF     // CJK radicals, Kangxi radicals
        | 0x3005..=0x3007   // 々 〆 〇
        | 0x3040..=0x30FF   // Hiragana, Katakana
        | 0x3100..=0x312F   // Bopomofo
        | 0x31A0..=0x31BF   // Bopomofo extended
        | 0x31F0..=0x31FF   // Katakana phonetic extensions
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x3FFFF // CJK extensions B and later
    )
}

/// Full-width punctuation: no space goes next to these in Chinese text.
pub fn is_fullwidth_punct(c: char) -> bool {
    matches!(
        c,
        '，' | '。'
            | '！'
            | '？'
            | '：'
            | '；'
            | '（'
            | '）'
            | '“'
            | '”'
            | '‘'
            | '’'
            | '、'
            | '《'
            | '》'
            | '〈'
            | '〉'
            | '「'
            | '」'
            | '『'
            | '』'
            | '【'
            | '】'
            | '〔'
            | '〕'
            | '…'
    )
}

/// A CJK character or full-width punctuation: a neighbour that makes punctuation Chinese.
pub fn is_cjk_side(c: char) -> bool {
    is_cjk(c) || is_fullwidth_punct(c)
}

/// A letter or digit of a Latin-script word (ASCII or accented Latin), for spacing.
pub fn is_latin_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric() || (('\u{C0}'..='\u{24F}').contains(&c) && c.is_alphabetic())
}

/// A Latin letter (not a digit), for counting English words.
pub fn is_latin_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || (('\u{C0}'..='\u{24F}').contains(&c) && c.is_alphabetic())
}

/// Ends a sentence (for segmentation, on the input text).
pub fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '…')
}

/// May follow a sentence terminator and still belong to that sentence.
pub fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | '）' | '」' | '』' | '》' | ']' | '】')
}

/// Horizontal whitespace (not newlines).
pub fn is_space(c: char) -> bool {
    c == ' ' || c == '\t'
}
