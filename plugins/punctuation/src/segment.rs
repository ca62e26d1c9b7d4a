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

/// What [`next_cut`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Cut(Cut),
    /// More input is needed to decide. Scanning the same `buf` grown by more input may resume
    /// at this byte offset: every decision before it holds whatever follows.
    NeedMore {
        resume: usize,
    },
}

/// The characters of `buf` from a byte offset, decoded only as far as the scan looks: a segment
/// ends at the first sentence end or line break, so decoding the whole rest of the text for
/// each segment made the whole-text path quadratic.
struct Chars<'a> {
    buf: &'a str,
    iter: std::str::CharIndices<'a>,
    from: usize,
    seen: Vec<(usize, char)>,
}

impl<'a> Chars<'a> {
    fn new(buf: &'a str, from: usize) -> Self {
        Self { buf, iter: buf[from..].char_indices(), from, seen: Vec::new() }
    }

    fn get(&mut self, k: usize) -> Option<(usize, char)> {
        while self.seen.len() <= k {
            let (i, c) = self.iter.next()?;
            self.seen.push((self.from + i, c));
        }
        Some(self.seen[k])
    }

    fn at(&mut self, k: usize) -> Option<char> {
        self.get(k).map(|(_, c)| c)
    }

    /// Byte offset of the `k`-th character (the end of `buf` past the last one).
    fn offset(&mut self, k: usize) -> usize {
        self.get(k).map_or(self.buf.len(), |(i, _)| i)
    }

    /// How many characters equal to `c` start at `k`.
    fn run_of(&mut self, k: usize, c: char) -> usize {
        let mut n = 0;
        while self.at(k + n) == Some(c) {
            n += 1;
        }
        n
    }
}

/// Finds the end of the next segment of `buf`.
///
/// `line_start`: `buf` begins a line. `fence`: inside a fenced code block. `last`: no more input
/// follows `buf`. `from`: where to resume scanning, a `resume` offset an earlier call on a
/// prefix of `buf` returned (0 otherwise), so a stream does not rescan its pending sentence on
/// every chunk.
pub fn next_cut(buf: &str, line_start: bool, fence: Option<Fence>, last: bool, from: usize) -> Next {
    let need_more = |resume: usize| Next::NeedMore { resume };
    if buf.is_empty() {
        return need_more(0);
    }
    let verbatim = match fence {
        Some(_) => true,
        None => match line_start.then(|| fence_at(buf, last)) {
            Some(Err(())) => return need_more(0),
            Some(Ok(marker)) => marker.is_some(),
            None => false,
        },
    };
    if verbatim {
        // Code lines are cut whole: a fence is recognised only on a complete line.
        return match buf[from..].find('\n') {
            Some(i) => Next::Cut(Cut { len: from + i + 1, next: None, verbatim: true }),
            None if last => Next::Cut(Cut { len: buf.len(), next: None, verbatim: true }),
            None => need_more(buf.len()),
        };
    }

    let whole = |len: usize| Next::Cut(Cut { len, next: None, verbatim: false });
    let mut chars = Chars::new(buf, from);
    let mut k = 0;
    while let Some(c) = chars.at(k) {
        if c == '\n' {
            return whole(chars.offset(k + 1));
        }
        // Each pass of this loop starts at a place a later call may resume from.
        let resume = chars.offset(k);
        if c == '`' {
            // Inline code runs to the matching backtick run or the end of the line.
            let n = chars.run_of(k, '`');
            k += n;
            loop {
                match chars.at(k) {
                    None if last => return whole(buf.len()),
                    None => return need_more(resume),
                    Some('\n') => break,
                    Some('`') => {
                        let m = chars.run_of(k, '`');
                        k += m;
                        if chars.at(k).is_none() && !last {
                            return need_more(resume); // the closing run may be longer
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
            while chars.at(k).is_some_and(is_terminator) {
                k += 1;
            }
            // "1. item" at the start of a line is a list marker, not a sentence end. (`all`
            // fails at the first other character, so this look back stays short.)
            let marker = line_start && c == '.' && k == start + 1 && {
                let before = &buf[..resume];
                before.chars().all(|c| c.is_ascii_digit() || is_space(c))
                    && before.chars().any(|c| c.is_ascii_digit())
            };
            while chars.at(k).is_some_and(is_closer) {
                k += 1;
            }
            let Some(after) = chars.at(k) else {
                return if last { whole(buf.len()) } else { need_more(resume) };
            };
            // A terminator followed by a letter, digit or symbol is inside a token (3.14,
            // Node.js, e.g.) or needs no cut: keep scanning.
            if marker || !(after.is_whitespace() || is_cjk(after) || is_fullwidth_punct(after)) {
                continue;
            }
            while chars.at(k).is_some_and(is_space) {
                k += 1;
            }
            return match chars.at(k) {
                Some('\n') => whole(chars.offset(k + 1)),
                Some(next) => Next::Cut(Cut { len: chars.offset(k), next: Some(next), verbatim: false }),
                None if last => whole(buf.len()),
                None => need_more(resume),
            };
        }
        k += 1;
    }
    if last { whole(buf.len()) } else { need_more(buf.len()) }
}
