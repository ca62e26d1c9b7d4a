//! Every experiment of a folder, with hot reload, checked against the loaded pipelines.
//!
//! As with pipelines, a broken file never replaces a working version and deleting a file
//! removes its experiment. The pipelines folder is watched too: a pipeline that appears,
//! changes or disappears re-checks every experiment (after the pipeline registry's own reload).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;

use super::load::{Experiment, load_file};
use crate::pipeline::{DEBOUNCE, LoadError, Registry};

/// The experiments folder when none is given: `experiments` beside the pipelines folder.
pub fn default_experiments_dir(pipelines_dir: &Path) -> PathBuf {
    pipelines_dir.parent().unwrap_or(Path::new(".")).join("experiments")
}

/// What `GET /v1/experiments` shows of one experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentInfo {
    #[serde(flatten)]
    pub experiment: Experiment,
    /// The last failed reload of its file (the version shown keeps serving).
    pub last_error: Option<String>,
}

#[derive(Default)]
struct FileEntry {
    serving: Option<String>,
    errors: Vec<LoadError>,
}

#[derive(Default)]
struct State {
    experiments: HashMap<String, Arc<Experiment>>,
    files: BTreeMap<String, FileEntry>,
}

struct Inner {
    dir: Option<PathBuf>,
    pipelines: Option<Registry>,
    state: RwLock<State>,
    reloading: Mutex<()>,
}

/// The loaded experiments. Cheap to clone.
#[derive(Clone)]
pub struct Experiments {
    inner: Arc<Inner>,
}

fn is_experiment_file(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        && !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

impl Experiments {
    /// No experiments.
    pub fn none() -> Self {
        Experiments {
            inner: Arc::new(Inner {
                dir: None,
                pipelines: None,
                state: RwLock::default(),
                reloading: Mutex::default(),
            }),
        }
    }

    /// Loads every `*.yaml` in `dir` (a missing folder is no experiments), checking variants
    /// against `pipelines`.
    pub fn load(dir: &Path, pipelines: Registry) -> Self {
        let experiments = Experiments {
            inner: Arc::new(Inner {
                dir: Some(dir.to_owned()),
                pipelines: Some(pipelines),
                state: RwLock::default(),
                reloading: Mutex::default(),
            }),
        };
        experiments.reload_all();
        experiments
    }

    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Experiment>> {
        self.inner.state.read().unwrap().experiments.get(name).cloned()
    }

    /// Every served experiment, by name.
    pub fn list(&self) -> Vec<ExperimentInfo> {
        let state = self.inner.state.read().unwrap();
        let mut names: Vec<&String> = state.experiments.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let e = &state.experiments[n];
                let file = e.file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let last_error = state
                    .files
                    .get(&file)
                    .filter(|f| !f.errors.is_empty())
                    .map(|f| f.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"));
                ExperimentInfo { experiment: (**e).clone(), last_error }
            })
            .collect()
    }

    /// The current error of every file that failed its last load.
    pub fn errors(&self) -> Vec<LoadError> {
        let state = self.inner.state.read().unwrap();
        state.files.values().flat_map(|f| f.errors.iter().cloned()).collect()
    }

    fn pipeline_names(&self) -> HashMap<String, PathBuf> {
        self.inner
            .pipelines
            .as_ref()
            .map(|r| r.list().into_iter().map(|p| (p.name, p.file)).collect())
            .unwrap_or_default()
    }

    /// Re-reads every file of the folder (and forgets files that are gone).
    pub fn reload_all(&self) {
        let Some(dir) = self.inner.dir.clone() else { return };
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && is_experiment_file(p))
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let known: Vec<String> = self.inner.state.read().unwrap().files.keys().cloned().collect();
        names.extend(known);
        names.sort();
        names.dedup();
        for name in names {
            self.reload_file(&name);
        }
    }

    /// Reloads one file by file name: a missing file removes its experiment; a broken one keeps
    /// the old version and records the error.
    pub fn reload_file(&self, file_name: &str) {
        let Some(dir) = self.inner.dir.as_ref() else { return };
        let _guard = self.inner.reloading.lock().unwrap();
        let path = dir.join(file_name);
        if !path.is_file() {
            let mut state = self.inner.state.write().unwrap();
            if let Some(FileEntry { serving: Some(name), .. }) = state.files.remove(file_name) {
                state.experiments.remove(&name);
                tracing::info!(experiment = name, "experiment removed ({file_name} deleted)");
            }
            return;
        }
        let result = load_file(&path, &self.pipeline_names());
        let mut state = self.inner.state.write().unwrap();
        let entry = state.files.entry(file_name.to_owned()).or_default();
        match result {
            Ok(experiment) => {
                entry.serving = Some(experiment.name.clone());
                entry.errors.clear();
                if state.experiments.get(&experiment.name).map(|e| e.sha256.as_str())
                    != Some(experiment.sha256.as_str())
                {
                    tracing::info!(experiment = experiment.name, "experiment loaded");
                }
                state.experiments.insert(experiment.name.clone(), Arc::new(experiment));
            }
            Err(errors) => {
                for e in &errors {
                    tracing::warn!("experiment not (re)loaded, the previous version keeps serving: {e}");
                }
                entry.errors = errors;
            }
        }
    }

    /// Watches the experiments folder and the pipelines folder; stops when the handle is
    /// dropped. A missing experiments folder is not watched.
    pub fn watch(&self) -> anyhow::Result<Option<ExperimentWatch>> {
        use notify::{RecursiveMode, Watcher};
        let (Some(dir), Some(pipelines)) = (self.inner.dir.clone(), self.inner.pipelines.clone()) else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Ok(None);
        }
        let (tx, rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })?;
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        let exp_dir = canonical(&dir);
        let pipe_dir = canonical(pipelines.pipelines_dir());
        watcher.watch(&exp_dir, RecursiveMode::NonRecursive)?;
        if pipe_dir != exp_dir {
            watcher.watch(&pipe_dir, RecursiveMode::NonRecursive)?;
        }
        let this = self.clone();
        let thread = std::thread::Builder::new().name("pipehost-experiments".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut paths: Vec<PathBuf> = Vec::new();
                let mut add = |ev: notify::Result<notify::Event>| {
                    if let Ok(ev) = ev {
                        paths.extend(ev.paths);
                    }
                };
                add(first);
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(ev) => add(ev),
                        Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                        Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                let pipelines_changed =
                    paths.iter().any(|p| p.parent().map(canonical).as_deref() == Some(pipe_dir.as_path()));
                if pipelines_changed {
                    // The pipeline registry reloads after the same debounce on its own thread:
                    // give it that long again before re-checking the variants.
                    std::thread::sleep(DEBOUNCE * 2 + Duration::from_millis(50));
                    this.reload_all();
                    continue;
                }
                let mut files: Vec<String> = paths
                    .iter()
                    .filter(|p| p.parent().map(canonical).as_deref() == Some(exp_dir.as_path()))
                    .filter(|p| is_experiment_file(p))
                    .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                    .collect();
                files.sort();
                files.dedup();
                for f in files {
                    this.reload_file(&f);
                }
            }
        })?;
        Ok(Some(ExperimentWatch { _watcher: Mutex::new(Box::new(watcher)), _thread: thread }))
    }
}

/// Keeps the experiments watcher alive.
pub struct ExperimentWatch {
    _watcher: Mutex<Box<dyn notify::Watcher + Send>>,
    _thread: std::thread::JoinHandle<()>,
}
