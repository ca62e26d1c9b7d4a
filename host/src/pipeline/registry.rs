//! The set of loaded pipelines, with hot reload.
//!
//! Each pipeline file maps to at most one served [`Pipeline`] (an `Arc`, swapped atomically)
//! and its last load error. A broken file never replaces a working version; deleting a file
//! removes its pipeline. Reloads run on the watcher's own thread, never on the request path.
//!
//! One edit, one reload: the watcher ignores access events (it sees every open, its own reads
//! included: each reload used to trigger the next), and a file is not loaded again while its
//! content (by sha256) and everything it was loaded against (plugins, the other files' names)
//! stay the same, so the several events of one `sed -i` or a later `touch` neither reload it
//! nor count again. A retry that fails the same way (after a plugin changed) is neither logged
//! nor counted again either.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::load::{
    BackendNames, LoadError, Pipeline, PluginCache, Variable, load_file, load_text, parse,
    validate_pipeline_name,
};
use super::spec::OnError;
use crate::backend::GenerationParams;
use crate::plugin::PluginRuntime;

/// How long the watcher waits for a burst of file events to settle before reloading: a quiet
/// period, restarted by every event, so a file written in several pieces is read once complete
/// (an editor's or `cp`'s writes come microseconds apart; `bench http --reload-swaps` writes in
/// two halves 10 ms apart). A half-written .wasm never loads anyway (it fails validation and the
/// old version keeps serving). 50 ms, not 100: the debounce is most of a YAML edit's reload
/// time (docs/performance.md).
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// The pipelines folder when none is given: `$PIPEHOST_PIPELINES_DIR`, else `pipelines` in the
/// current directory if it exists, else the source tree's `pipelines`.
pub fn default_pipelines_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PIPEHOST_PIPELINES_DIR") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("pipelines");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines")
}

/// Reload counters (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReloadStats {
    /// Files (re)loaded successfully by the watcher.
    pub reloads: u64,
    /// Failed reloads (the old version kept serving), once per failing content of a file.
    pub reload_failures: u64,
}

/// A stage as shown to clients.
#[derive(Debug, Clone, Serialize)]
pub struct StageInfo {
    pub name: String,
    pub plugin: String,
    pub sha256: String,
    pub on_error: OnError,
}

/// What `GET /v1/pipelines/{name}` shows.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineInfo {
    pub name: String,
    pub description: String,
    pub task: Option<String>,
    pub file: PathBuf,
    pub sha256: String,
    pub backend: Option<String>,
    pub params: GenerationParams,
    pub input_variable: String,
    pub variables: Vec<Variable>,
    pub prompt: StageInfo,
    pub stages: Vec<StageInfo>,
    /// The last failed reload of this pipeline's file, one `file:line:col: message` per line
    /// (the version shown keeps serving).
    pub last_error: Option<String>,
}

#[derive(Default)]
struct FileEntry {
    /// The pipeline this file currently serves.
    serving: Option<String>,
    /// Problems of the last load (empty when it succeeded).
    errors: Vec<LoadError>,
    /// The last load: enough to tell whether loading again could differ.
    last: Option<Attempt>,
}

/// A load of a file: what it was loaded from and how it failed.
struct Attempt {
    /// sha256 of the file's bytes (None when it could not be read).
    sha256: Option<[u8; 32]>,
    /// [`Inner::generation`] after it.
    generation: u64,
    /// Its errors, as reported (empty when it loaded).
    messages: Vec<String>,
}

#[derive(Default)]
struct State {
    pipelines: HashMap<String, Arc<Pipeline>>,
    /// By file name inside the pipelines folder.
    files: BTreeMap<String, FileEntry>,
}

struct Inner {
    dir: PathBuf,
    plugins: PluginCache,
    backends: BackendNames,
    state: RwLock<State>,
    /// Serialises reloads (the watcher vs. explicit calls).
    reloading: Mutex<()>,
    reloads: AtomicU64,
    failures: AtomicU64,
    /// Bumped whenever what a file is loaded against changes: a plugin file, or the set of
    /// pipeline names other files serve (a name clash may be gone).
    generation: AtomicU64,
}

/// The loaded pipelines. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

fn is_pipeline_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        && !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

impl Registry {
    /// Loads every `*.yaml`/`*.yml` in `pipelines_dir`; accepts any known backend kind in
    /// `backend:`. Never fails as a whole: bad files become per-file errors ([`Self::errors`]).
    pub fn load(pipelines_dir: &Path, plugins_dir: &Path, runtime: PluginRuntime) -> Registry {
        Self::load_with_backends(pipelines_dir, plugins_dir, runtime, BackendNames::AnyKnown)
    }

    /// Like [`Self::load`], but `backend:` must name one of `backends` (the server's).
    pub fn load_with_backends(
        pipelines_dir: &Path,
        plugins_dir: &Path,
        runtime: PluginRuntime,
        backends: BackendNames,
    ) -> Registry {
        let registry = Registry {
            inner: Arc::new(Inner {
                dir: pipelines_dir.to_owned(),
                plugins: PluginCache::new(runtime, plugins_dir.to_owned()),
                backends,
                state: RwLock::default(),
                reloading: Mutex::default(),
                reloads: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                generation: AtomicU64::new(0),
            }),
        };
        let mut names: Vec<String> = match std::fs::read_dir(pipelines_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_pipeline_file(p))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
            Err(e) => {
                tracing::warn!("pipelines folder {}: {e}", pipelines_dir.display());
                Vec::new()
            }
        };
        names.sort();
        for name in names {
            registry.reload_file(&name, false);
        }
        registry
    }

    pub fn pipelines_dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn plugins_dir(&self) -> &Path {
        self.inner.plugins.dir()
    }

    /// The current version of pipeline `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.inner.state.read().unwrap().pipelines.get(name).cloned()
    }

    /// Every served pipeline, by name.
    pub fn list(&self) -> Vec<PipelineInfo> {
        let state = self.inner.state.read().unwrap();
        let mut names: Vec<&String> = state.pipelines.keys().collect();
        names.sort();
        names.into_iter().filter_map(|n| info_of(&state, n)).collect()
    }

    pub fn info(&self, name: &str) -> Option<PipelineInfo> {
        info_of(&self.inner.state.read().unwrap(), name)
    }

    /// The current error of every file that failed its last load, in file order.
    pub fn errors(&self) -> Vec<LoadError> {
        let state = self.inner.state.read().unwrap();
        state.files.values().flat_map(|f| f.errors.iter().cloned()).collect()
    }

    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            reloads: self.inner.reloads.load(Ordering::Relaxed),
            reload_failures: self.inner.failures.load(Ordering::Relaxed),
        }
    }

    /// Reloads one file of the pipelines folder by file name (`poem.yaml`): a missing file
    /// removes its pipeline; a broken one keeps the old version and records the error. A file
    /// that has not changed since its last load (nor has anything it was loaded against) is
    /// left as it is.
    pub fn reload_file(&self, file_name: &str, count: bool) {
        let _guard = self.inner.reloading.lock().unwrap();
        let path = self.inner.dir.join(file_name);
        if !path.is_file() {
            let mut state = self.inner.state.write().unwrap();
            if let Some(entry) = state.files.remove(file_name) {
                if let Some(name) = entry.serving {
                    state.pipelines.remove(&name);
                    self.inner.generation.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(pipeline = name, "pipeline removed ({file_name} deleted)");
                }
                if count {
                    self.inner.reloads.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        let sha256: Option<[u8; 32]> = std::fs::read(&path).ok().map(|bytes| Sha256::digest(bytes).into());
        let generation = self.inner.generation.load(Ordering::Relaxed);
        {
            let state = self.inner.state.read().unwrap();
            let last = state.files.get(file_name).and_then(|e| e.last.as_ref());
            if sha256.is_some() && last.is_some_and(|a| a.sha256 == sha256 && a.generation == generation) {
                tracing::debug!("{file_name} is unchanged since its last load; not reloaded");
                return;
            }
        }
        let taken = self.taken_except(file_name);
        let result = load_file(&path, &self.inner.plugins, &self.inner.backends, &taken);
        let mut state = self.inner.state.write().unwrap();
        match result {
            Ok(pipeline) => {
                self.install(&mut state, file_name, pipeline, sha256);
                if count {
                    self.inner.reloads.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(errors) => {
                let entry = state.files.entry(file_name.to_owned()).or_default();
                let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                // The same content failing the same way was reported already (a retry after a
                // plugin changed that did not help).
                let reported =
                    entry.last.as_ref().is_some_and(|a| a.sha256 == sha256 && a.messages == messages);
                for message in &messages {
                    if count && !reported {
                        tracing::warn!("reload failed, the previous version keeps serving: {message}");
                    } else {
                        tracing::debug!("{message}");
                    }
                }
                entry.errors = errors;
                entry.last = Some(Attempt { sha256, generation, messages });
                if count && !reported {
                    self.inner.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Serves `pipeline` as the version of `file_name` (content hash `sha256`), replacing what
    /// that file served; a change of the names served moves the generation on.
    fn install(&self, state: &mut State, file_name: &str, pipeline: Pipeline, sha256: Option<[u8; 32]>) {
        let entry = state.files.entry(file_name.to_owned()).or_default();
        let old = entry.serving.replace(pipeline.name.clone());
        entry.errors.clear();
        let generation = if old.as_ref() != Some(&pipeline.name) {
            self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.inner.generation.load(Ordering::Relaxed)
        };
        entry.last = Some(Attempt { sha256, generation, messages: Vec::new() });
        if let Some(old) = old.filter(|o| *o != pipeline.name) {
            state.pipelines.remove(&old);
        }
        tracing::info!(pipeline = pipeline.name, sha256 = pipeline.sha256, "pipeline loaded");
        state.pipelines.insert(pipeline.name.clone(), Arc::new(pipeline));
    }

    /// Pipeline names served by files other than `file_name`, with their files.
    fn taken_except(&self, file_name: &str) -> HashMap<String, PathBuf> {
        let state = self.inner.state.read().unwrap();
        state
            .files
            .iter()
            .filter(|(f, _)| f.as_str() != file_name)
            .filter_map(|(f, e)| e.serving.clone().map(|n| (n, self.inner.dir.join(f))))
            .collect()
    }

    /// Checks pipeline text that is not a file (a playground draft) exactly as a file is
    /// checked at load, plugins' `validate-config` included; errors name `draft.yaml`.
    pub fn check_draft(&self, text: String) -> Result<Pipeline, Vec<LoadError>> {
        load_text(Path::new("draft.yaml"), text, &self.inner.plugins, &self.inner.backends, &HashMap::new())
    }

    /// Validates `text` as pipeline `name` and, only if it is valid, writes it to
    /// `NAME.yaml` in the pipelines folder atomically (a temporary file in the same folder,
    /// synced, then renamed over: a reader sees the old file or the new one, never a part) and
    /// serves it at once. Saves are serialised with reloads, so of two concurrent saves of one
    /// name the later wins whole.
    pub fn save(&self, name: &str, text: String) -> Result<Saved, SaveError> {
        validate_pipeline_name(name).map_err(SaveError::InvalidName)?;
        let _guard = self.inner.reloading.lock().unwrap();
        let file_name = format!("{name}.yaml");
        let path = self.inner.dir.join(&file_name);
        let taken = self.taken_except(&file_name);
        if let Some(other) = taken.get(name) {
            return Err(SaveError::Conflict { name: name.to_owned(), file: other.clone() });
        }
        // The file's `name:` may not say otherwise than the name it is saved under.
        if let Ok(spec) = parse(&path, &text)
            && let Some(n) = spec.name.filter(|n| n.value != name)
        {
            return Err(SaveError::Invalid(vec![LoadError::at(
                &path,
                Some(n.referenced),
                format!(
                    "`name`: the text names the pipeline `{}` but is saved as `{name}`; remove `name:` or make them match",
                    n.value
                ),
            )]));
        }
        let pipeline = load_text(&path, text, &self.inner.plugins, &self.inner.backends, &taken)
            .map_err(SaveError::Invalid)?;
        let io = |source| SaveError::Io { path: path.clone(), source };
        let mut tmp = tempfile::Builder::new()
            .prefix(".save-")
            .suffix(".tmp")
            .tempfile_in(&self.inner.dir)
            .map_err(io)?;
        {
            use std::io::Write;
            tmp.write_all(pipeline.source.as_bytes()).map_err(io)?;
            tmp.as_file().sync_all().map_err(io)?;
        }
        let created = !path.exists();
        tmp.persist(&path).map_err(|e| io(e.error))?;
        // The watcher's event for this rename then finds the content loaded already.
        let sha256: [u8; 32] = Sha256::digest(pipeline.source.as_bytes()).into();
        let mut state = self.inner.state.write().unwrap();
        self.install(&mut state, &file_name, pipeline, Some(sha256));
        tracing::info!(pipeline = name, created, "pipeline saved");
        let info = info_of(&state, name).expect("just installed");
        Ok(Saved { created, info })
    }

    /// A plugin file changed: reloads every pipeline that uses it and every file in error.
    pub fn plugin_changed(&self, plugin: &str) {
        self.inner.plugins.evict_stale(plugin);
        self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let files: Vec<String> = {
            let state = self.inner.state.read().unwrap();
            state
                .files
                .iter()
                .filter(|(_, e)| {
                    !e.errors.is_empty()
                        || e.serving.as_ref().and_then(|n| state.pipelines.get(n)).is_some_and(|p| {
                            p.prompt.plugin == plugin || p.stages.iter().any(|s| s.plugin == plugin)
                        })
                })
                .map(|(f, _)| f.clone())
                .collect()
        };
        for f in files {
            self.reload_file(&f, true);
        }
    }

    /// Watches the pipelines and plugins folders (debounced by [`DEBOUNCE`]) and reloads what
    /// changed on a dedicated thread. Stops when the handle is dropped.
    pub fn watch(&self) -> anyhow::Result<WatchHandle> {
        use notify::{RecursiveMode, Watcher};
        let (tx, rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })?;
        let pipelines = canonical(&self.inner.dir);
        let plugins = canonical(self.inner.plugins.dir());
        watcher.watch(&pipelines, RecursiveMode::NonRecursive)?;
        if plugins != pipelines {
            watcher.watch(&plugins, RecursiveMode::NonRecursive)?;
        }
        let registry = self.clone();
        let thread = std::thread::Builder::new().name("pipehost-reload".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut paths: Vec<PathBuf> = Vec::new();
                let mut add = |ev: notify::Result<notify::Event>| match ev {
                    // Opening a file is no change (and every reload opens the file).
                    Ok(ev) if ev.kind.is_access() => {}
                    Ok(ev) => paths.extend(ev.paths),
                    Err(e) => tracing::warn!("file watcher: {e}"),
                };
                add(first);
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(ev) => add(ev),
                        Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                paths.sort();
                paths.dedup();
                let mut plugin_names = Vec::new();
                for path in paths {
                    let parent = path.parent().map(canonical);
                    let Some(file) = path.file_name().map(|f| f.to_string_lossy().into_owned()) else {
                        continue;
                    };
                    if parent.as_deref() == Some(pipelines.as_path()) && is_pipeline_file(&path) {
                        registry.reload_file(&file, true);
                    } else if parent.as_deref() == Some(plugins.as_path())
                        && path.extension().is_some_and(|e| e == "wasm")
                        && let Some(stem) = path.file_stem()
                    {
                        plugin_names.push(stem.to_string_lossy().into_owned());
                    }
                }
                for name in plugin_names {
                    registry.plugin_changed(&name);
                }
            }
        })?;
        Ok(WatchHandle { _watcher: Mutex::new(Box::new(watcher)), _thread: thread })
    }
}

/// A saved pipeline.
#[derive(Debug, Clone)]
pub struct Saved {
    /// No file of that name existed before.
    pub created: bool,
    pub info: PipelineInfo,
}

/// Why [`Registry::save`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{0}")]
    InvalidName(String),
    /// The text is not a valid pipeline (every problem found, located).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<LoadError>),
    /// Another file already serves a pipeline of that name.
    #[error("pipeline `{name}` is defined by {}; edit that file instead", file.display())]
    Conflict { name: String, file: PathBuf },
    #[error("writing {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

fn info_of(state: &State, name: &str) -> Option<PipelineInfo> {
    let p = state.pipelines.get(name)?;
    let file_name = p.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let last_error = state
        .files
        .get(&file_name)
        .filter(|f| !f.errors.is_empty())
        .map(|f| f.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"));
    Some(PipelineInfo {
        name: p.name.clone(),
        description: p.description.clone(),
        task: p.task.clone(),
        file: p.file.clone(),
        sha256: p.sha256.clone(),
        backend: p.backend.clone(),
        params: p.params.clone(),
        input_variable: p.input_variable.clone(),
        variables: p.variables.clone(),
        prompt: StageInfo {
            name: "prompt".into(),
            plugin: p.prompt.plugin.clone(),
            sha256: p.prompt.sha256().to_owned(),
            on_error: OnError::Fail,
        },
        stages: p
            .stages
            .iter()
            .map(|s| StageInfo {
                name: s.name.clone(),
                plugin: s.plugin.clone(),
                sha256: s.sha256().to_owned(),
                on_error: s.on_error,
            })
            .collect(),
        last_error,
    })
}

/// Keeps the watcher alive; dropping it stops watching (the reload thread then exits).
pub struct WatchHandle {
    // In a mutex only to make the handle `Sync` (it can live in shared server state).
    _watcher: Mutex<Box<dyn notify::Watcher + Send>>,
    _thread: std::thread::JoinHandle<()>,
}
