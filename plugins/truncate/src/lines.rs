//! The line limit: at most `max_lines` non-empty lines, cut at the end of the last one kept.
//!
//! One state machine classifies each character, so `process` and the stream decide alike: text
//! up to the end of the last allowed line is kept; what follows it (line breaks, blank lines) is
//! held, since it is kept only if the text ends there; the first visible character of one line
//! too many is the cut, which drops the held text.

use pipehost_plugin_sdk::text::is_line_break;

/// What a character is to the line limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Certainly in the output.
    Keep,
    /// After the last allowed line: in the output only if no further line starts.
    Hold,
    /// Starts one line too many: the output ends where the held text began.
    Cut,
}

/// Counts non-empty lines (a line with anything but whitespace) character by character.
#[derive(Debug, Clone)]
pub struct Lines {
    max: usize,
    count: usize,
    /// Whether the current line already has a visible character (and was counted).
    in_line: bool,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Self { max, count: 0, in_line: false }
    }

    pub fn step(&mut self, c: char) -> Step {
        if is_line_break(c) {
            self.in_line = false;
        } else if !c.is_whitespace() && !self.in_line {
            if self.count == self.max {
                return Step::Cut;
            }
            self.count += 1;
            self.in_line = true;
        }
        if self.count == self.max && !self.in_line { Step::Hold } else { Step::Keep }
    }
}

/// The byte offset to cut `text` at, when it has more than `max` non-empty lines. It is the
/// position of a line break, so it never splits a grapheme cluster.
pub fn cut(text: &str, max: usize) -> Option<usize> {
    let mut lines = Lines::new(max);
    let mut held = None;
    for (i, c) in text.char_indices() {
        match lines.step(c) {
            Step::Keep => held = None,
            Step::Hold => {
                held.get_or_insert(i);
            }
            Step::Cut => return Some(held.unwrap_or(i)),
        }
    }
    None
}
