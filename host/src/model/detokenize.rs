//! Incremental detokenization: turn a growing list of token ids into text deltas.
//!
//! Decoding token by token is wrong for byte-level BPE: one Chinese character is often two or
//! three tokens, each an incomplete UTF-8 sequence. We decode a small window of recent tokens
//! and emit only what became complete: text is held back exactly while the decoded window ends
//! in U+FFFD (an unfinished character), and punctuation, spaces and symbols go out at once
//! (candle-examples' `TokenOutputStream` holds back anything not alphanumeric).
//! The concatenated deltas equal a one-shot decode of all ids.

use std::sync::Arc;

use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

pub(crate) struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// Start of the window decoded for context (decoders may treat a first token specially).
    prefix_offset: usize,
    /// Everything before this index has been emitted.
    read_offset: usize,
    skip_special_tokens: bool,
}

impl IncrementalDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special_tokens: bool) -> Self {
        IncrementalDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special_tokens,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, self.skip_special_tokens).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Add one token; returns the text that became final (often empty while a character is
    /// still incomplete).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.decode(&self.ids[self.prefix_offset..])?;
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.is_char_boundary(prefix.len()) {
            let delta = text[prefix.len()..].to_owned();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// The end of the stream: whatever is still held back (an incomplete character decodes
    /// to U+FFFD, as a one-shot decode would show it).
    pub fn finish(&mut self) -> Result<String> {
        let prefix = self.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(match text.get(prefix.len()..) {
            Some(rest) if text.starts_with(&prefix) => rest.to_owned(),
            _ => text,
        })
    }
}
