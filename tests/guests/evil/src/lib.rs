//! Test component: a post-processor that misbehaves on purpose, as its config says. The host's
//! sandbox tests drive it; it is never shipped.
//!
//! Config (JSON; unknown fields are rejected): `{"mode": MODE, "in": WHERE, ...parameters}`.
//!
//! | `mode` | parameters | what it does with the input text |
//! | --- | --- | --- |
//! | `ok` (default) | | returns the input unchanged (echo) |
//! | `loop` | | spins forever (`black_box`ed, never optimised away): deadline test |
//! | `busy` | `ms` | busy-waits `ms` milliseconds by `std::time::Instant` (WASI clocks), then echoes: "a loop that finishes just under the deadline" |
//! | `alloc` | `bytes` | allocates `bytes` bytes in one `Vec`, touches every page, then echoes; past the memory cap the allocator fails and the guest aborts (a trap) |
//! | `grow` | `ms` (optional, default 0) | grows memory forever in 1 MiB steps, touching every page, sleeping `ms` between steps: slow growth up to the memory cap |
//! | `sleep` | `ms` | one `std::thread::sleep` of `ms` milliseconds (a WASI clock subscription: the guest blocks in the host, where epoch interruption cannot reach it), then echoes: the clock trick against the deadline |
//! | `panic` | | `panic!("guest-evil: panic requested")`: with the `plugin` profile (`panic = "abort"`) a trap, the message on stderr |
//! | `unreachable` | | executes the wasm `unreachable` instruction (a trap; natively a panic) |
//! | `output` | `bytes` | returns a string of `bytes` bytes of `x` (ignores the input): output-cap test (e.g. 100000000; beyond the default 64 MiB memory cap it traps first) |
//! | `amplify` | `factor` | returns the input repeated `factor` times: output-cap test relative to input |
//! | `read-file` | `path` | `std::fs::read_to_string(path)`: returns `Ok("read ok: N bytes")` or `Err(internal("read failed: ERROR"))` |
//! | `env` | | returns `"vars: N, args: M"` and then one `KEY=VALUE` line per environment variable (expected: `vars: 0, args: 0`) |
//! | `tcp` | `addr` | `std::net::TcpStream::connect(addr)`: returns `Ok("tcp ok: PEER")` or `Err(internal("tcp failed: ERROR"))` |
//! | `dns` | `host` | resolves `(host, 80)` with `std::net::ToSocketAddrs`: `Ok("dns ok: N addresses")` or `Err(internal("dns failed: ERROR"))` |
//! | `stdout` | | prints lines to stdout (`println!`) and stderr (`eprintln!`), including the input, then echoes: the host must route both to its log, tagged with the plugin name |
//! | `log` | | calls the host's `log` once at each level (trace, debug, info, warn, error), then echoes |
//! | `invalid-input` | | returns `Err(invalid-input("guest-evil: invalid input requested"))` |
//! | `stop` | | echoes; in a stream each `push` emits its chunk and sets `stop` |
//!
//! `in` says where the mode runs (default `process`):
//!
//! - `process`: in `process(text)`. A stream buffers every `push` (emitting nothing) and runs the
//!   mode on the whole text in `finish`, like the SDK's default stream.
//! - `push`: in every `push(chunk)`, on that chunk, and the result is emitted; `process` and
//!   `finish` just echo (`finish` returns `""`). E.g. `{"mode": "loop", "in": "push"}` loops in
//!   the first `push` — a deadline on a streaming call.
//! - `open`: in the stream's `open`, on an empty text (its result is dropped; errors are
//!   returned from `open`); afterwards the stream echoes each chunk. `process` echoes.
//! - `validate`: while checking the config, on an empty text — i.e. in `validate-config` at load
//!   time, and again at the start of every call (the SDK checks the config per call).
//!
//! A stream whose `finish` is never called (the client went away) is the host's concern; any
//! mode with `"in": "process"` holds everything back until `finish`.
//!
//! Parameters a mode needs are checked (`invalid-config` naming the field when absent); numbers
//! are `usize`, so on wasm32 they are at most 4294967295.
//!
//! Note for the host: because of `read-file`, `env`, `tcp` and `dns` this component imports the
//! WASI filesystem, environment and sockets interfaces; the host must link them (and deny them
//! by configuration), or it cannot instantiate this component at all.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pipehost_plugin_sdk::{
    ChunkOutput, Context, LogLevel, PluginError, PostProcessor, Streamer, export_post_processor,
};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Ok,
    Loop,
    Busy,
    Alloc,
    Grow,
    Sleep,
    Panic,
    Unreachable,
    Output,
    Amplify,
    ReadFile,
    Env,
    Tcp,
    Dns,
    Stdout,
    Log,
    InvalidInput,
    Stop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Where {
    #[default]
    Process,
    Push,
    Open,
    Validate,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, rename = "in")]
    pub at: Where,
    pub ms: Option<u64>,
    pub bytes: Option<usize>,
    pub factor: Option<usize>,
    pub path: Option<String>,
    pub addr: Option<String>,
    pub host: Option<String>,
}

fn required<'a, T>(field: &'a Option<T>, name: &str, mode: Mode) -> Result<&'a T, PluginError> {
    field.as_ref().ok_or_else(|| PluginError::InvalidConfig(format!("mode {mode:?} needs `{name}`")))
}

/// Runs the configured mode on `text`. Only returns for modes that finish.
fn run(config: &Config, text: &str) -> Result<String, PluginError> {
    let mode = config.mode;
    match mode {
        Mode::Ok | Mode::Stop => Ok(text.to_owned()),
        Mode::Loop => {
            let mut i = 0u64;
            loop {
                i = black_box(i.wrapping_add(1));
            }
        }
        Mode::Busy => {
            let limit = Duration::from_millis(*required(&config.ms, "ms", mode)?);
            let start = Instant::now();
            while black_box(start.elapsed()) < limit {}
            Ok(text.to_owned())
        }
        Mode::Alloc => {
            let bytes = *required(&config.bytes, "bytes", mode)?;
            let mut block = vec![0u8; bytes];
            touch(&mut block);
            black_box(&block);
            Ok(text.to_owned())
        }
        Mode::Grow => {
            let pause = Duration::from_millis(config.ms.unwrap_or(0));
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0u8; 1 << 20];
                touch(&mut block);
                blocks.push(black_box(block));
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        }
        Mode::Sleep => {
            std::thread::sleep(Duration::from_millis(*required(&config.ms, "ms", mode)?));
            Ok(text.to_owned())
        }
        Mode::Panic => panic!("guest-evil: panic requested"),
        Mode::Unreachable => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            panic!("guest-evil: unreachable requested (a trap on wasm32)");
        }
        Mode::Output => Ok("x".repeat(*required(&config.bytes, "bytes", mode)?)),
        Mode::Amplify => Ok(text.repeat(*required(&config.factor, "factor", mode)?)),
        Mode::ReadFile => match std::fs::read_to_string(required(&config.path, "path", mode)?) {
            Ok(s) => Ok(format!("read ok: {} bytes", s.len())),
            Err(e) => Err(PluginError::Internal(format!("read failed: {e}"))),
        },
        Mode::Env => {
            let vars: Vec<(String, String)> = std::env::vars().collect();
            let mut out = format!("vars: {}, args: {}", vars.len(), std::env::args().count());
            for (k, v) in vars {
                out.push_str(&format!("\n{k}={v}"));
            }
            Ok(out)
        }
        Mode::Tcp => match std::net::TcpStream::connect(required(&config.addr, "addr", mode)?.as_str()) {
            Ok(s) => Ok(format!("tcp ok: {:?}", s.peer_addr())),
            Err(e) => Err(PluginError::Internal(format!("tcp failed: {e}"))),
        },
        Mode::Dns => {
            use std::net::ToSocketAddrs;
            match (required(&config.host, "host", mode)?.as_str(), 80).to_socket_addrs() {
                Ok(addrs) => Ok(format!("dns ok: {} addresses", addrs.count())),
                Err(e) => Err(PluginError::Internal(format!("dns failed: {e}"))),
            }
        }
        Mode::Stdout => {
            println!("guest-evil stdout line 1");
            println!("guest-evil stdout input: {text}");
            eprintln!("guest-evil stderr line 1");
            eprintln!("guest-evil stderr input: {text}");
            Ok(text.to_owned())
        }
        Mode::Log => {
            for (level, name) in [
                (LogLevel::Trace, "trace"),
                (LogLevel::Debug, "debug"),
                (LogLevel::Info, "info"),
                (LogLevel::Warn, "warn"),
                (LogLevel::Error, "error"),
            ] {
                pipehost_plugin_sdk::log(level, &format!("guest-evil log at {name}: {text}"));
            }
            Ok(text.to_owned())
        }
        Mode::InvalidInput => Err(PluginError::InvalidInput("guest-evil: invalid input requested".into())),
    }
}

/// Writes one byte per 4 KiB page so the memory is really committed.
fn touch(block: &mut [u8]) {
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
}

pub struct Evil;

impl PostProcessor for Evil {
    type Config = Config;

    fn check_config(config: &Config) -> Result<(), PluginError> {
        let mode = config.mode;
        match mode {
            Mode::Busy | Mode::Sleep => required(&config.ms, "ms", mode).map(|_| ())?,
            Mode::Alloc | Mode::Output => required(&config.bytes, "bytes", mode).map(|_| ())?,
            Mode::Amplify => required(&config.factor, "factor", mode).map(|_| ())?,
            Mode::ReadFile => required(&config.path, "path", mode).map(|_| ())?,
            Mode::Tcp => required(&config.addr, "addr", mode).map(|_| ())?,
            Mode::Dns => required(&config.host, "host", mode).map(|_| ())?,
            _ => {}
        }
        if config.at == Where::Validate {
            run(config, "")?;
        }
        Ok(())
    }

    fn process(text: &str, config: &Config, _ctx: &Context) -> Result<String, PluginError> {
        match config.at {
            Where::Process => run(config, text),
            Where::Push | Where::Open | Where::Validate => Ok(text.to_owned()),
        }
    }

    fn open(config: Config, _ctx: Context) -> Result<Box<dyn Streamer>, PluginError> {
        if config.at == Where::Open {
            run(&config, "")?;
        }
        Ok(Box::new(EvilStream { config, held: String::new() }))
    }
}

pub struct EvilStream {
    config: Config,
    held: String,
}

impl Streamer for EvilStream {
    fn push(&mut self, chunk: &str) -> Result<ChunkOutput, PluginError> {
        let stop = self.config.mode == Mode::Stop;
        match self.config.at {
            Where::Process => {
                self.held.push_str(chunk);
                Ok(ChunkOutput::default())
            }
            Where::Push => Ok(ChunkOutput { emit: run(&self.config, chunk)?, stop }),
            Where::Open | Where::Validate => Ok(ChunkOutput { emit: chunk.to_owned(), stop }),
        }
    }

    fn finish(&mut self) -> Result<String, PluginError> {
        let held = std::mem::take(&mut self.held);
        match self.config.at {
            Where::Process => run(&self.config, &held),
            Where::Push | Where::Open | Where::Validate => Ok(held),
        }
    }
}

export_post_processor!(Evil);

#[cfg(test)]
mod tests {
    use super::*;
    use pipehost_plugin_sdk::testing::run_stream;

    fn process(config: &str, text: &str) -> Result<String, PluginError> {
        let config = Evil::config(config)?;
        Evil::process(text, &config, &Context::default())
    }

    #[test]
    fn modes_that_finish() {
        assert_eq!(process("{}", "hi").unwrap(), "hi");
        assert_eq!(process(r#"{"mode":"busy","ms":1}"#, "hi").unwrap(), "hi");
        assert_eq!(process(r#"{"mode":"alloc","bytes":100000}"#, "hi").unwrap(), "hi");
        assert_eq!(process(r#"{"mode":"output","bytes":5}"#, "hi").unwrap(), "xxxxx");
        assert_eq!(process(r#"{"mode":"amplify","factor":3}"#, "ab").unwrap(), "ababab");
        assert_eq!(process(r#"{"mode":"log"}"#, "hi").unwrap(), "hi");
        assert!(process(r#"{"mode":"env"}"#, "").unwrap().starts_with("vars: "));
        assert!(matches!(process(r#"{"mode":"invalid-input"}"#, ""), Err(PluginError::InvalidInput(_))));
        let err = process(r#"{"mode":"read-file","path":"/definitely/not/here"}"#, "").unwrap_err();
        assert!(matches!(err, PluginError::Internal(m) if m.starts_with("read failed: ")));
    }

    #[test]
    fn config_is_checked() {
        assert!(
            matches!(Evil::config(r#"{"mode":"busy"}"#), Err(PluginError::InvalidConfig(m)) if m.contains("`ms`"))
        );
        assert!(matches!(Evil::config(r#"{"mode":"nope"}"#), Err(PluginError::InvalidConfig(_))));
        assert!(matches!(Evil::config(r#"{"mode":"ok","typo":1}"#), Err(PluginError::InvalidConfig(_))));
        assert!(Evil::config(r#"{"mode":"loop","in":"push"}"#).is_ok());
    }

    #[test]
    fn streams() {
        let cfg = r#"{"mode":"amplify","factor":2,"in":"push"}"#;
        assert_eq!(run_stream::<Evil>("abcd", cfg, &[2]).unwrap(), ("ababcdcd".into(), false));
        let cfg = r#"{"mode":"amplify","factor":2}"#;
        assert_eq!(run_stream::<Evil>("abcd", cfg, &[2]).unwrap(), ("abcdabcd".into(), false));
        let cfg = r#"{"mode":"stop","in":"push"}"#;
        assert_eq!(run_stream::<Evil>("abcd", cfg, &[2]).unwrap(), ("ab".into(), true));
        let cfg = r#"{"mode":"invalid-input","in":"open"}"#;
        assert!(run_stream::<Evil>("abcd", cfg, &[2]).is_err());
    }
}
