//! Reading an upstream's server-sent events: [`SseDecoder`] turns bytes, split anywhere by the
//! network, into the `data` of each event (per the WHATWG event-stream rules: `\n`, `\r\n` or
//! `\r` line ends, `:` comments, multi-line data joined by `\n`, dispatch on a blank line), and
//! [`parse_chunk`] reads one OpenAI chat-completion chunk. Both are pure so that they can be
//! fuzzed (`fuzz/fuzz_targets/openai_sse.rs`): the events must not depend on how the bytes were
//! split, and nothing an upstream sends may panic or grow memory without bound.

use serde_json::Value;

use super::{BackendError, FinishReason};

/// The largest event (its lines together) accepted from an upstream. A chunk of a chat
/// completion is a few hundred bytes; a stream that never ends a line must not exhaust memory.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Incremental event-stream decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The `data` lines of the event being read, joined by `\n`.
    data: String,
    has_data: bool,
    /// The last byte was a `\r`: a `\n` right after it belongs to the same line end.
    after_cr: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends the data of every event they complete to `events`.
    pub fn push(&mut self, mut bytes: &[u8], events: &mut Vec<String>) -> Result<(), BackendError> {
        if bytes.is_empty() {
            return Ok(()); // keeps `after_cr` for the next bytes
        }
        if self.after_cr && bytes.first() == Some(&b'\n') {
            bytes = &bytes[1..];
        }
        self.after_cr = false;
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..end]);
            self.check_size()?;
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, events);
            let crlf = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if crlf {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
        }
        self.line.extend_from_slice(bytes);
        self.check_size()
    }

    /// The end of the stream: an event whose blank line never came is still delivered (some
    /// servers end with `data: [DONE]\n`), an unfinished line with it.
    pub fn finish(&mut self, events: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            self.line_done(&line, events);
        }
        if self.has_data {
            events.push(std::mem::take(&mut self.data));
            self.has_data = false;
        }
    }

    fn check_size(&self) -> Result<(), BackendError> {
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(BackendError::Failed(format!(
                "upstream sent an event larger than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<String>) {
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        // Lines never split a UTF-8 sequence (they end at ASCII bytes); invalid bytes from a
        // broken upstream become U+FFFD rather than failing the whole stream.
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        // Comments (empty field name) and the fields a chat stream does not use are ignored.
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
    }
}

/// What one event of an OpenAI chat-completion stream says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chunk {
    /// `data: [DONE]`: the stream is over.
    pub done: bool,
    /// Non-empty `delta.content` texts, in order.
    pub deltas: Vec<String>,
    pub finish_reason: Option<FinishReason>,
    /// (prompt, completion) tokens, when the chunk carries usage.
    pub usage: Option<(usize, usize)>,
}

/// Reads one event's data. An `error` object or invalid JSON is the upstream's failure.
pub fn parse_chunk(data: &str) -> Result<Chunk, BackendError> {
    if data.trim() == "[DONE]" {
        return Ok(Chunk { done: true, ..Chunk::default() });
    }
    let value: Value = serde_json::from_str(data).map_err(|e| {
        let shown: String = data.chars().take(200).collect();
        BackendError::Failed(format!("upstream sent invalid JSON ({e}): {shown}"))
    })?;
    if let Some(err) = value.get("error") {
        let shown: String = err.to_string().chars().take(500).collect();
        return Err(BackendError::Failed(format!("upstream error: {shown}")));
    }
    let mut chunk = Chunk::default();
    if let Some(u) = value.get("usage").filter(|u| !u.is_null()) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
        chunk.usage = Some((n("prompt_tokens"), n("completion_tokens")));
    }
    for choice in value.get("choices").and_then(Value::as_array).into_iter().flatten() {
        if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
            && !text.is_empty()
        {
            chunk.deltas.push(text.to_owned());
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            chunk.finish_reason = Some(finish_reason(reason));
        }
    }
    Ok(chunk)
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        "eos" => FinishReason::Eos,
        "cancelled" => FinishReason::Cancelled,
        _ => FinishReason::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in(parts: &[&[u8]]) -> Vec<String> {
        let mut d = SseDecoder::new();
        let mut events = Vec::new();
        for p in parts {
            d.push(p, &mut events).unwrap();
        }
        d.finish(&mut events);
        events
    }

    #[test]
    fn events_do_not_depend_on_the_split() {
        let stream: &[u8] =
            b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\nid: 3\ndata:first\ndata: second\n\n\
            data: \xe4\xbd\xa0\xe5\xa5\xbd\r\rdata: [DONE]\n\n";
        let whole = decode_in(&[stream]);
        assert_eq!(whole, ["{\"a\":1}", "first\nsecond", "你好", "[DONE]"]);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let parts = [&stream[..i], &stream[i..i], &stream[i..j], &stream[j..]];
                assert_eq!(decode_in(&parts), whole, "{i} {j}");
            }
        }
    }

    #[test]
    fn an_unterminated_last_event_is_delivered() {
        assert_eq!(decode_in(&[b"data: [DONE]"]), ["[DONE]"]);
        assert_eq!(decode_in(&[b"data: [DONE]\n"]), ["[DONE]"]);
        assert!(decode_in(&[b"retry: 10\n\n\n"]).is_empty());
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut d = SseDecoder::new();
        let mut events = Vec::new();
        let block = vec![b'x'; 64 * 1024];
        let err = (0..100).find_map(|_| d.push(&block, &mut events).err()).expect("refused");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn chunks() {
        let c = parse_chunk(
            r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
        )
        .unwrap();
        assert_eq!(c.deltas, ["hi"]);
        assert_eq!(c.usage, Some((3, 1)));
        assert_eq!(
            parse_chunk(r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#).unwrap().finish_reason,
            Some(FinishReason::Length)
        );
        assert!(parse_chunk("[DONE]").unwrap().done);
        let err = parse_chunk(r#"{"error":{"message":"overloaded"}}"#).unwrap_err();
        assert!(err.to_string().contains("overloaded"), "{err}");
        assert!(parse_chunk("{not json").unwrap_err().to_string().contains("invalid JSON"));
    }
}
