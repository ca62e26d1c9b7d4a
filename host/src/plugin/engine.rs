//! The plugin runtime: one wasmtime `Engine`, one `Linker` per world, the compile cache and
//! the epoch ticker. Every wasmtime setting Pipehost relies on is made here, with its reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{self, post, prompt};
use super::cache::{CacheOutcome, CompileCache};
use super::error::{Cause, PluginError};
use super::host_state::{CappedClock, HostState};
use super::instance::{Loaded, PostProcessor, PromptBuilder};
use super::limits::{Language, MAX_MEMORY_BYTES};

/// How often the epoch advances. Deadlines are rounded up to this granularity; 5 ms keeps a
/// 100 ms deadline within ~5 % while the ticker thread costs ~200 wake-ups a second.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Most dirty bytes of a freed linear memory reset with memset (kept mapped) rather than
/// madvise; see `pooling_config`. 2 MiB: a call of a CPython (componentize-py) plugin dirties
/// ~1.1 MiB of its 16 MiB image (Rust and QuickJS plugins far less); at 1 MiB the pages past
/// the budget were decommitted and re-faulted on every call.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Folder for compiled components; `None` disables the on-disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling allocator (falls back to on-demand allocation if the pool cannot be
    /// reserved, e.g. under a small `ulimit -v`).
    pub pooling: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { cache_dir: super::cache::default_cache_dir(), pooling: true }
    }
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Pooling,
    OnDemand,
}

/// Loads plugins and owns everything they share. Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    pub(crate) inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    post_linker: Linker<HostState>,
    prompt_linker: Linker<HostState>,
    cache: Option<CompileCache>,
    allocator: Allocator,
}

impl PluginRuntime {
    pub fn new(config: &RuntimeConfig) -> anyhow::Result<Self> {
        let (engine, allocator) = if config.pooling {
            match Engine::new(&engine_config(Some(pooling_config()))) {
                Ok(engine) => (engine, Allocator::Pooling),
                Err(e) => {
                    tracing::warn!("pooling allocator unavailable ({e:#}); using on-demand allocation");
                    (Engine::new(&engine_config(None))?, Allocator::OnDemand)
                }
            }
        } else {
            (Engine::new(&engine_config(None))?, Allocator::OnDemand)
        };
        spawn_epoch_ticker(&engine);

        let mut post_linker = Linker::new(&engine);
        // Guests built for wasm32-wasip2 import the WASI interfaces even when they use none;
        // the context in `HostState` grants nothing, so linking them gives no capability.
        // Sync bindings: calls must not run on a tokio worker thread (see module docs).
        wasmtime_wasi::p2::add_to_linker_sync(&mut post_linker)?;
        // ...except the monotonic clock, replaced by one whose subscriptions end at the call's
        // deadline: a guest sleeping in the host cannot be interrupted by epochs (see
        // `CappedClock`). Same interface and version, so this shadows the WASI one.
        post_linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<HostState, CappedClock>(
            &mut post_linker,
            HostState::capped_clock,
        )?;
        post_linker.allow_shadowing(false);
        let mut prompt_linker = post_linker.clone();
        post::PostProcessor::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut post_linker, |s| s)?;
        prompt::PromptBuilder::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut prompt_linker,
            |s| s,
        )?;

        let cache = config.cache_dir.clone().map(|dir| CompileCache::new(dir, &engine));
        Ok(Self { inner: Arc::new(RuntimeInner { engine, post_linker, prompt_linker, cache, allocator }) })
    }

    pub fn allocator(&self) -> Allocator {
        self.inner.allocator
    }

    /// Loads a post-processor component. `name` is how errors and logs refer to it.
    pub fn load_post_processor(&self, name: &str, path: &Path) -> Result<PostProcessor, PluginError> {
        let (component, meta) = self.compile(name, path)?;
        check_exports(&self.inner.engine, &component, bindings::POST_PROCESS_EXPORT, "post-processor")
            .map_err(|m| err(name, Cause::Contract(m)))?;
        let pre = self
            .inner
            .post_linker
            .instantiate_pre(&component)
            .and_then(post::PostProcessorPre::new)
            .map_err(|e| err(name, Cause::Contract(format!("{e:#}"))))?;
        Ok(PostProcessor::new(Loaded::new(name, meta, pre, self.inner.clone())))
    }

    /// Loads a prompt-builder component.
    pub fn load_prompt_builder(&self, name: &str, path: &Path) -> Result<PromptBuilder, PluginError> {
        let (component, meta) = self.compile(name, path)?;
        check_exports(&self.inner.engine, &component, bindings::PROMPT_BUILD_EXPORT, "prompt-builder")
            .map_err(|m| err(name, Cause::Contract(m)))?;
        let pre = self
            .inner
            .prompt_linker
            .instantiate_pre(&component)
            .and_then(prompt::PromptBuilderPre::new)
            .map_err(|e| err(name, Cause::Contract(format!("{e:#}"))))?;
        Ok(PromptBuilder::new(Loaded::new(name, meta, pre, self.inner.clone())))
    }

    fn compile(&self, name: &str, path: &Path) -> Result<(Component, LoadMeta), PluginError> {
        let started = Instant::now();
        let bytes =
            std::fs::read(path).map_err(|e| err(name, Cause::Load(format!("{}: {e}", path.display()))))?;
        check_is_component(&bytes).map_err(|m| err(name, Cause::Load(format!("{}: {m}", path.display()))))?;
        let language = Language::from_component(&bytes)
            .map_err(|m| err(name, Cause::Load(format!("{}: {m}", path.display()))))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let engine = &self.inner.engine;
        let cached = self.inner.cache.as_ref().and_then(|c| c.load(engine, &sha256));
        let (component, outcome) = match cached {
            Some(component) => (component, CacheOutcome::Hit),
            None => {
                let component = Component::new(engine, &bytes)
                    .map_err(|e| err(name, Cause::Load(format!("{}: {e:#}", path.display()))))?;
                if let Some(cache) = &self.inner.cache {
                    cache.store(&sha256, &component);
                }
                (component, CacheOutcome::Compiled)
            }
        };
        let meta =
            LoadMeta { path: path.to_owned(), sha256, language, outcome, load_time: started.elapsed() };
        tracing::debug!(plugin = name, ?meta, "plugin loaded");
        Ok((component, meta))
    }
}

/// Facts about how a plugin was loaded.
#[derive(Debug, Clone)]
pub struct LoadMeta {
    pub path: PathBuf,
    /// sha256 of the .wasm file: the plugin's version in responses and pins.
    pub sha256: String,
    /// The language it was written in: chooses its default limits.
    pub language: Language,
    pub outcome: CacheOutcome,
    pub load_time: Duration,
}

fn err(plugin: &str, cause: Cause) -> PluginError {
    PluginError { plugin: plugin.to_owned(), stage: None, cause }
}

fn engine_config(pooling: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // Deadlines: epoch interruption costs a load and compare per loop back-edge, far cheaper
    // than fuel, and is driven by one ticker thread for all stores.
    config.epoch_interruption(true);
    // A deep recursion in a guest must trap, not exhaust the host thread's stack.
    config.max_wasm_stack(1 << 20);
    if let Some(pooling) = pooling {
        // Instantiation from a pre-reserved pool is ~2x faster than on-demand mmap per call,
        // which matters because every call gets a fresh instance.
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

fn pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::default();
    // Concurrent instances across all requests; a stream holds one for its whole response.
    pool.total_component_instances(1000);
    pool.total_core_instances(4000);
    pool.total_memories(2000);
    pool.total_tables(4000);
    // A wit-bindgen Rust component with the WASI adapter uses a handful of core instances,
    // memories and tables; these leave headroom for other guest languages.
    pool.max_core_instances_per_component(32);
    pool.max_memories_per_component(4);
    pool.max_tables_per_component(32);
    pool.max_component_instance_size(1 << 20);
    // The largest per-stage memory cap; the per-call cap is enforced by `MemoryLimiter`.
    pool.max_memory_size(MAX_MEMORY_BYTES);
    // Every call frees its instance, so slot reset is on the hot path. Resetting pages with
    // memset instead of madvise keeps them mapped: no page faults (and no TLB-shootdown IPIs)
    // next call. Without PAGEMAP_SCAN the first `keep_resident` bytes are memset whether dirty
    // or not: 64 KiB took the fixed cost per call from 23.4 to 19.3 µs, 1 MiB made it 32.6 µs
    // (memset of mostly clean pages). With it (Linux 6.7+; `Auto` falls back to that when the
    // ioctl is missing) only the pages the call dirtied are reset, up to `keep_resident`
    // bytes, wherever they are in the memory, so a larger budget costs nothing for a plugin
    // that dirties little and spares one with a bigger heap its refaults. (wasmtime 48 stopped
    // that scan after 32 dirty regions and decommitted the rest: an interpreter's heap has
    // ~180, so a CPython call re-faulted ~300 pages, ~0.5 ms; vendor/wasmtime resumes the scan,
    // see vendor/README.md.) The budget is also what an idle slot keeps resident: at most
    // `max_unused_warm_slots` (100) slots × 2 MiB. See docs/performance.md.
    pool.pagemap_scan(Enabled::Auto);
    pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
    pool.table_keep_resident(16 << 10);
    pool
}

/// Advances the engine's epoch every `EPOCH_TICK` until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("pipehost-epoch".into()).spawn(move || {
        loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        }
    });
    if let Err(e) = spawned {
        // Without the ticker no deadline would ever fire; refuse to run plugins unbounded.
        panic!("cannot start the plugin deadline thread: {e}");
    }
}

/// Distinguishes "not WebAssembly" and "a core module" from a component before compiling,
/// because wasmtime's messages for those are cryptic.
fn check_is_component(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly file (missing the \\0asm header)".into());
    }
    // Bytes 6..8 are the layer: 0 for a core module, 1 for a component.
    if bytes[6..8] == [0, 0] {
        return Err(
            "a core WebAssembly module, not a component: build it for the wasm32-wasip2 target".into()
        );
    }
    Ok(())
}

/// Checks that the component exports the interface of the expected world and version, and
/// says what it exports instead.
fn check_exports(engine: &Engine, component: &Component, expected: &str, world: &str) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
    if exports.iter().any(|e| e == expected) {
        return Ok(());
    }
    let (package, rest) = expected.split_once('/').unwrap_or((expected, ""));
    let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
    let ours: Vec<&String> = exports.iter().filter(|e| e.starts_with(package)).collect();
    let detail = if let Some(other) = ours.iter().find(|e| e.contains(&format!("/{iface}@"))) {
        let found = other.rsplit_once('@').map_or("none", |(_, v)| v);
        format!(
            "it was built against contract version {found} (exports `{other}`), this host implements {version}; rebuild it with the current SDK"
        )
    } else if ours.is_empty() {
        format!("it exports no {package} interface (exports: {})", list(&exports))
    } else {
        format!(
            "it is not a {world}: it exports {}",
            list(&ours.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        )
    };
    Err(format!("expected a {world} exporting `{expected}`, but {detail}"))
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "nothing".into() } else { items.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_wasm_and_core_modules() {
        assert!(check_is_component(b"hello world").unwrap_err().contains("not a WebAssembly file"));
        let core = b"\0asm\x01\x00\x00\x00";
        assert!(check_is_component(core).unwrap_err().contains("core WebAssembly module"));
        let component = b"\0asm\x0d\x00\x01\x00";
        assert!(check_is_component(component).is_ok());
    }
}
