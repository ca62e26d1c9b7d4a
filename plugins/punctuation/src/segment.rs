//! Splits input into segments (sentences, lines, code-block lines) that are fixed one at a
//! time. The split is made on the *input* and only with look-ahead it has: given more text
//! later, an already-returned boundary never moves. That is what makes the stream equal the
//! whole-text result: both cut the same segments and fix them with the same state.

use crate::chars::{is_cjk, is_closer, is_fullwidth_punct, is_space, is_terminator};

/// A fenced code block in progress: its fence character and length.
pub type Fence = (char, usize);

/// Where the next segment ends and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Byte length of the segment.
    pub len: usize,
    /// The first character after the segment when it is on the same line (None when the
    /// segment ends with a newline or at the end of the text).
    pub next: Option<char>,
    /// The segment is a whole line to be copied verbatim (code fence or inside a code block).
    pub verbatim: bool,
}

/// A run of at least 3 backticks or tildes after at most 3 spaces: a Markdown code fence.
/// `Err(())` means "cannot tell yet" (the line is too short and `last` is false).
pub fn fence_at(line: &str, last: bool) -> Result<Option<Fence>, ()> {
    let rest = line.trim_start_matches(' ');
    if line.len() - rest.len() > 3 {
        return Ok(None);
    }
    let Some(ch) = rest.chars().next() else {
        return if last || line.contains('\n') { Ok(None) } else { Err(()) };
    };
    if ch != '`' && ch != '~' {
        return Ok(None);
    }
    let n = rest.chars().take_while(|&c| c == ch).count();
    if n == rest.len() && !last {
        return Err(()); // the run may go on
    }
    Ok((n >= 3).then_some((ch, n)))
}

/// Finds the end of the next segment of `buf`.
///
/// `line_start`: `buf` begins a line. `fence`: inside a fenced code block. `last`: no more input
/// follows `buf`. Returns None when more input is needed to decide.
pub fn next_cut(buf: &str, line_start: bool, fence: Option<Fence>, last: bool) -> Option<Cut> {
    if buf.is_empty() {
        return None;
    }
    let line_end = buf.find('\n').map(|i| i + 1);
    if fence.is_some() || (line_start && fence_at(buf, last).ok()?.is_some()) {
        // Code lines are cut whole: a fence is recognised only on a complete line.
        return match line_end {
            Some(len) => Some(Cut { len, next: None, verbatim: true }),
            None if last => Some(Cut { len: buf.len(), next: None, verbatim: true }),
            None => None,
        };
    }

    let chars: Vec<(usize, char)> = buf.char_indices().collect();
    let at = |k: usize| chars.get(k).map(|&(_, c)| c);
    let offset = |k: usize| chars.get(k).map_or(buf.len(), |&(i, _)| i);
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k].1;
        if c == '\n' {
            return Some(Cut { len: offset(k + 1), next: None, verbatim: false });
        }
        if c == '`' {
            // Inline code runs to the matching backtick run or the end of the line.
            let n = chars[k..].iter().take_while(|&&(_, c)| c == '`').count();
            k += n;
            loop {
                match at(k) {
                    None => {
                        if last {
                            return Some(Cut { len: buf.len(), next: None, verbatim: false });
                        }
                        return None;
                    }
                    Some('\n') => break,
                    Some('`') => {
                        let m = chars[k..].iter().take_while(|&&(_, c)| c == '`').count();
                        k += m;
                        if k == chars.len() && !last {
                            return None; // the closing run may be longer
                        }
                        if m == n {
                            break;
                        }
                    }
                    Some(_) => k += 1,
                }
            }
            continue;
        }
        if is_terminator(c) {
            let start = k;
            while at(k).is_some_and(is_terminator) {
                k += 1;
            }
            // "1. item" at the start of a line is a list marker, not a sentence end.
            let marker = line_start
                && c == '.'
                && k == start + 1
                && chars[..start].iter().any(|&(_, c)| c.is_ascii_digit())
                && chars[..start].iter().all(|&(_, c)| c.is_ascii_digit() || is_space(c));
            while at(k).is_some_and(is_closer) {
                k += 1;
            }
            let Some(after) = at(k) else {
                return last.then_some(Cut { len: buf.len(), next: None, verbatim: false });
            };
            // A terminator followed by a letter, digit or symbol is inside a token (3.14,
            // Node.js, e.g.) or needs no cut: keep scanning.
            if marker || !(after.is_whitespace() || is_cjk(after) || is_fullwidth_punct(after)) {
                continue;
            }
            while at(k).is_some_and(is_space) {
                k += 1;
            }
            return match at(k) {
                Some('\n') => Some(Cut { len: offset(k + 1), next: None, verbatim: false }),
                Some(next) => Some(Cut { len: offset(k), next: Some(next), verbatim: false }),
                None if last => Some(Cut { len: buf.len(), next: None, verbatim: false }),
                None => None,
            };
        }
        k += 1;
    }
    last.then_some(Cut { len: buf.len(), next: None, verbatim: false })
}
