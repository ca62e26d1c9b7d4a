//! Per-call resource limits and their enforcement inside a store.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits for one plugin call (or one stream). Pipelines set them per stage; the defaults
/// suit text post-processing of one model response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock deadline per call (for a stream: per `push`/`finish`), in milliseconds.
    pub time_ms: u64,
    /// Cap on each linear memory of the instance, in bytes.
    pub memory_bytes: usize,
    /// Cap on the text a call returns (for a stream: on everything it emits), in bytes.
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { time_ms: 100, memory_bytes: 64 << 20, output_bytes: 1 << 20 }
    }
}

/// The language a plugin was written in, read at load time from the component's top-level
/// custom section `pipehost-language` (`python`, `javascript`), which
/// `scripts/build-plugins.sh` adds; a component without it (what cargo builds) is Rust.
/// It chooses the default limits only: the sandbox is the same for every language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Rust,
    Python,
    #[serde(rename = "javascript")]
    JavaScript,
}

/// The custom section naming a component's language.
pub const LANGUAGE_SECTION: &str = "pipehost-language";

impl Language {
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "javascript",
        }
    }

    /// The limits a stage gets when its pipeline sets none. Only memory differs: a language
    /// runtime's own heap counts against the cap. CPython (componentize-py) starts at ~14-16 MiB
    /// of linear memory and a 1 MiB text costs it several copies (str, UTF-8 bytes, the
    /// result), so it gets 128 MiB where Rust's 64 MiB is plenty. See docs/plugins.md.
    pub fn default_limits(self) -> Limits {
        match self {
            Language::Rust => Limits::default(),
            Language::Python | Language::JavaScript => {
                Limits { memory_bytes: 128 << 20, ..Limits::default() }
            }
        }
    }

    /// The language named by a component's `pipehost-language` custom section, if any.
    /// Only top-level sections are read (a cheap walk over section headers, no parsing).
    pub(crate) fn from_component(bytes: &[u8]) -> Result<Language, String> {
        let mut at = 8;
        while at < bytes.len() {
            let id = bytes[at];
            let (size, body) = leb128(bytes, at + 1).ok_or("truncated section header")?;
            let end = body.checked_add(size).filter(|&e| e <= bytes.len()).ok_or("truncated section")?;
            if id == 0
                && let Some((len, name)) = leb128(&bytes[..end], body)
                && name.checked_add(len).is_some_and(|e| e <= end)
                && &bytes[name..name + len] == LANGUAGE_SECTION.as_bytes()
            {
                return match &bytes[name + len..end] {
                    b"python" => Ok(Language::Python),
                    b"javascript" => Ok(Language::JavaScript),
                    b"rust" => Ok(Language::Rust),
                    other => Err(format!(
                        "unknown language {:?} in its `{LANGUAGE_SECTION}` section",
                        String::from_utf8_lossy(other)
                    )),
                };
            }
            at = end;
        }
        Ok(Language::Rust)
    }
}

/// Reads an unsigned LEB128 at `at`: (value, offset after it).
fn leb128(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some((value, at));
        }
    }
    None
}

/// The largest memory cap a stage may ask for. The pooling allocator reserves slots of this
/// size, so it is an engine-wide setting rather than a per-call one.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

impl Limits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.time_ms)
    }

    /// Rejects limits the engine cannot honour, naming the field.
    pub fn check(&self) -> Result<(), String> {
        if self.time_ms == 0 || self.time_ms > 60_000 {
            return Err(format!("limits.time_ms must be between 1 and 60000, got {}", self.time_ms));
        }
        if self.memory_bytes < (2 << 20) || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "limits.memory_bytes must be between {} and {MAX_MEMORY_BYTES}, got {}",
                2 << 20,
                self.memory_bytes
            ));
        }
        if self.output_bytes == 0 {
            return Err("limits.output_bytes must be positive".into());
        }
        Ok(())
    }
}

/// Enforces the memory cap and remembers that it was hit, so the resulting trap can be
/// reported as a memory-limit error rather than a generic one.
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, exceeded: None }
    }
}

/// Marker error returned from the limiter; it aborts the guest with a trap.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
pub(crate) struct MemoryLimitHit;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            // Trap instead of returning -1 from memory.grow: a Rust guest would abort on the
            // failed allocation anyway, and a trap lets us say precisely what happened.
            self.exceeded = Some(desired);
            return Err(MemoryLimitHit.into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; Rust guests need a few hundred.
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component_with(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        // A non-custom section first, to be skipped over.
        bytes.extend_from_slice(&[7, 2, 0xaa, 0xbb]);
        for (name, payload) in sections {
            let mut body = vec![name.len() as u8];
            body.extend_from_slice(name.as_bytes());
            body.extend_from_slice(payload);
            bytes.push(0);
            bytes.push(body.len() as u8);
            bytes.extend(body);
        }
        bytes
    }

    #[test]
    fn language_comes_from_the_custom_section() {
        assert_eq!(Language::from_component(&component_with(&[])), Ok(Language::Rust));
        let py = component_with(&[("producers", b"x"), (LANGUAGE_SECTION, b"python")]);
        assert_eq!(Language::from_component(&py), Ok(Language::Python));
        let js = component_with(&[(LANGUAGE_SECTION, b"javascript")]);
        assert_eq!(Language::from_component(&js), Ok(Language::JavaScript));
        let bad = component_with(&[(LANGUAGE_SECTION, b"cobol")]);
        assert!(Language::from_component(&bad).unwrap_err().contains("cobol"));
        let mut truncated = component_with(&[(LANGUAGE_SECTION, b"python")]);
        truncated.truncate(truncated.len() - 3);
        assert!(Language::from_component(&truncated).is_err());
    }

    #[test]
    fn interpreted_languages_get_more_memory_by_default() {
        assert_eq!(Language::Rust.default_limits(), Limits::default());
        assert_eq!(Language::Python.default_limits().memory_bytes, 128 << 20);
        assert_eq!(Language::Python.default_limits().time_ms, Limits::default().time_ms);
        assert!(Language::JavaScript.default_limits().check().is_ok());
    }
}
