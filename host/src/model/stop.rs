//! Stop strings, matched on the generated text across token boundaries. Text that could be the
//! start of a stop string is held back until it is known not to be: nothing is emitted that
//! would later have to be retracted. The stop string itself is not part of the output.

#[derive(Debug, Default)]
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with a text delta.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StopOutcome {
    /// Emit this (possibly empty) text and go on.
    Emit(String),
    /// A stop string matched: emit this text (what preceded the match) and stop.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Emit(delta.to_owned());
        }
        self.held.push_str(delta);
        // Earliest match wins; matches can only start in the held text (see `held_suffix`).
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..pos].to_owned();
            self.held.clear();
            return StopOutcome::Stopped(out);
        }
        let keep = self.held_suffix();
        let emit = self.held[..self.held.len() - keep].to_owned();
        self.held.drain(..self.held.len() - keep);
        StopOutcome::Emit(emit)
    }

    /// Length of the longest suffix of the held text that is a proper prefix of a stop string.
    /// Holding the longest one is what makes matching exact: an earlier start would be a
    /// longer such suffix.
    fn held_suffix(&self) -> usize {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        self.held
            .char_indices()
            .map(|(i, _)| i)
            .filter(|&i| self.held.len() - i < longest)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |i| self.held.len() - i)
    }

    /// End of the stream without a match: the held text is ordinary output after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for d in deltas {
            match m.push(d) {
                StopOutcome::Emit(t) => out.push(t),
                StopOutcome::Stopped(t) => {
                    out.push(t);
                    return (out, true);
                }
            }
        }
        out.push(m.finish());
        (out, false)
    }

    #[test]
    fn matches_across_deltas_and_holds_partial_matches() {
        let (out, stopped) = run(&["END"], &["abc E", "N", "D tail"]);
        assert!(stopped);
        assert_eq!(out, vec!["abc ", "", ""]);
    }

    #[test]
    fn releases_a_false_start() {
        let (out, stopped) = run(&["END"], &["x E", "Nd", "!"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "x ENd!");
        assert_eq!(out, vec!["x ", "ENd", "!", ""]);
    }

    #[test]
    fn multibyte_stop_strings() {
        let (out, stopped) = run(&["。\n"], &["你好", "。", "\n再见"]);
        assert!(stopped);
        assert_eq!(out.concat(), "你好");
    }

    #[test]
    fn earliest_of_several_stops() {
        let (out, stopped) = run(&["world", "lo w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hel");
    }

    #[test]
    fn no_stops_passes_through() {
        let (out, stopped) = run(&[], &["a", "b"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "ab");
    }
}
