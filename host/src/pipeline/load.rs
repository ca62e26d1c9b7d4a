//! Loading one pipeline file: size cap, YAML parsing (serde-saphyr: line/column errors,
//! duplicate keys rejected, parser budget), semantic checks, plugin loading (shared through a
//! [`PluginCache`]) and each stage's `validate-config`. Every failure is a [`LoadError`] that
//! names the file, line and column.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};

use super::spec::{LimitsSpec, OnError, PipelineSpec};
use crate::backend::GenerationParams;
use crate::plugin::{CallContext, Limits, PluginRuntime, PostProcessor, PromptBuilder, plugin_path};

/// Pipeline files larger than this are rejected unread.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A problem with a pipeline file, located in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based; 1 for problems with the file as a whole.
    pub line: u64,
    /// 1-based.
    pub column: u64,
    /// One line.
    pub message: String,
}

impl LoadError {
    pub(crate) fn at(file: &Path, loc: Option<Location>, message: impl Into<String>) -> Self {
        let (line, column) = loc.filter(|l| l.line() > 0).map_or((1, 1), |l| (l.line(), l.column()));
        let message: String = message.into();
        // One line, whatever the plugin or parser said.
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        LoadError { file: file.to_owned(), line, column, message }
    }
}

/// A request variable, after checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variable {
    pub name: String,
    pub required: bool,
    pub default: Option<String>,
    pub max_chars: Option<usize>,
    pub description: String,
}

/// The loaded prompt stage.
#[derive(Clone)]
pub struct PromptStage {
    pub plugin: String,
    pub builder: PromptBuilder,
    /// The config JSON handed to the plugin (with the pipeline's `variables` added).
    pub config: String,
    pub limits: Limits,
}

impl PromptStage {
    pub fn sha256(&self) -> &str {
        &self.builder.meta().sha256
    }
}

/// A loaded post-processing stage.
#[derive(Clone)]
pub struct PostStage {
    pub name: String,
    pub plugin: String,
    pub processor: PostProcessor,
    pub config: String,
    pub limits: Limits,
    pub on_error: OnError,
}

impl PostStage {
    pub fn sha256(&self) -> &str {
        &self.processor.meta().sha256
    }
}

/// A loaded, validated pipeline: immutable; a reload builds a new one. A request that holds an
/// `Arc<Pipeline>` finishes on that version.
pub struct Pipeline {
    pub name: String,
    pub description: String,
    /// The kind of task it is for (`creative-writing`, `companionship`, ...), for grouping.
    pub task: Option<String>,
    pub file: PathBuf,
    /// sha256 of the file's bytes: the pipeline's version.
    pub sha256: String,
    /// The file's text, as loaded (what the playground edits; what `sha256` hashes).
    pub source: String,
    /// The backend named in the file, if any.
    pub backend: Option<String>,
    pub params: GenerationParams,
    pub input_variable: String,
    pub variables: Vec<Variable>,
    pub prompt: PromptStage,
    pub stages: Vec<PostStage>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("sha256", &self.sha256)
            .field("stages", &self.stages.iter().map(|s| &s.name).collect::<Vec<_>>())
            .finish()
    }
}

/// Loads plugins once per (kind, name, file content): N pipelines using `dedupe` share one
/// compiled component; a changed file (new sha256) loads anew.
pub struct PluginCache {
    runtime: PluginRuntime,
    dir: PathBuf,
    post: Mutex<HashMap<String, PostProcessor>>,
    prompt: Mutex<HashMap<String, PromptBuilder>>,
}

fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| hex::encode(Sha256::digest(&b)))
}

impl PluginCache {
    pub fn new(runtime: PluginRuntime, dir: PathBuf) -> Self {
        Self { runtime, dir, post: Mutex::default(), prompt: Mutex::default() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The post-processor `name`, reusing a loaded one if its file has not changed.
    pub fn post_processor(&self, name: &str) -> Result<PostProcessor, String> {
        let path = plugin_path(&self.dir, name).map_err(|e| e.to_string())?;
        let key = format!("{name}@{}", file_sha256(&path).unwrap_or_default());
        if let Some(p) = self.post.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        if !path.exists() {
            return Err(format!("plugin `{name}` not found: {} does not exist", path.display()));
        }
        let p = self.runtime.load_post_processor(name, &path).map_err(|e| e.to_string())?;
        self.post.lock().unwrap().insert(format!("{name}@{}", p.meta().sha256), p.clone());
        Ok(p)
    }

    /// The prompt builder `name`, reusing a loaded one if its file has not changed.
    pub fn prompt_builder(&self, name: &str) -> Result<PromptBuilder, String> {
        let path = plugin_path(&self.dir, name).map_err(|e| e.to_string())?;
        let key = format!("{name}@{}", file_sha256(&path).unwrap_or_default());
        if let Some(p) = self.prompt.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        if !path.exists() {
            return Err(format!("plugin `{name}` not found: {} does not exist", path.display()));
        }
        let p = self.runtime.load_prompt_builder(name, &path).map_err(|e| e.to_string())?;
        self.prompt.lock().unwrap().insert(format!("{name}@{}", p.meta().sha256), p.clone());
        Ok(p)
    }

    /// Forgets loaded versions of `name` other than the current file's (after a change).
    pub fn evict_stale(&self, name: &str) {
        let path = self.dir.join(format!("{name}.wasm"));
        let keep = format!("{name}@{}", file_sha256(&path).unwrap_or_default());
        let prefix = format!("{name}@");
        self.post.lock().unwrap().retain(|k, _| !k.starts_with(&prefix) || *k == keep);
        self.prompt.lock().unwrap().retain(|k, _| !k.starts_with(&prefix) || *k == keep);
    }
}

/// What a pipeline may name in `backend:`.
#[derive(Debug, Clone)]
pub enum BackendNames {
    /// Any of the kinds pipehost knows (`echo`, `candle`, `openai`): for `check`.
    AnyKnown,
    /// Exactly these (the backends the server was started with).
    Only(BTreeSet<String>),
}

impl BackendNames {
    pub const KNOWN: [&'static str; 3] = ["candle", "openai", "echo"];

    fn allows(&self, name: &str) -> bool {
        match self {
            BackendNames::AnyKnown => Self::KNOWN.contains(&name),
            BackendNames::Only(set) => set.contains(name),
        }
    }

    fn list(&self) -> String {
        let names: Vec<String> = match self {
            BackendNames::AnyKnown => Self::KNOWN.iter().map(|s| format!("`{s}`")).collect(),
            BackendNames::Only(set) => set.iter().map(|s| format!("`{s}`")).collect(),
        };
        names.join(", ")
    }
}

/// The pipeline name a file gets from its stem.
pub fn name_from_path(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Checks a pipeline name: lowercase letters, digits, `-`, `_`, `.`, starting with a letter or
/// digit, at most 64 bytes.
pub fn validate_pipeline_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    let first = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty() || name.len() > 64 || !first || !name.chars().all(ok_char) {
        return Err(format!(
            "invalid pipeline name {name:?}: use lowercase letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64 characters"
        ));
    }
    Ok(())
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses YAML text into the spec, turning parser errors into located one-liners with a
/// "did you mean" for misspelt fields.
pub fn parse(file: &Path, text: &str) -> Result<PipelineSpec, LoadError> {
    parse_yaml(file, text)
}

/// Parses one YAML file of ours (pipelines, experiments) into `T` the same way: serde-saphyr
/// without snippets, errors as located one-liners with a "did you mean".
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, LoadError> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| {
        let inner = e.without_snippet();
        let message = strip_location(&inner.to_string());
        LoadError::at(file, inner.location(), with_suggestion(&message))
    })
}

/// serde-saphyr appends " at line L, column C" (or similar) to messages; the location is
/// reported separately.
fn strip_location(message: &str) -> String {
    let m = message.trim();
    for marker in [" at line ", "\n --> ", " --> "] {
        if let Some(i) = m.rfind(marker) {
            return m[..i].trim_end_matches([',', ' ']).to_owned();
        }
    }
    m.to_owned()
}

/// A pipeline file's YAML as JSON: its structure only, unchecked; `None` when it does not parse.
pub fn spec_json(text: &str) -> Option<serde_json::Value> {
    serde_saphyr::from_str::<serde_json::Value>(text).ok()
}

/// Adds "did you mean `x`?" to serde's unknown-field/variant messages.
pub(crate) fn with_suggestion(message: &str) -> String {
    let Some(unknown) = message
        .split("unknown field `")
        .nth(1)
        .or_else(|| message.split("unknown variant `").nth(1))
        .and_then(|s| s.split('`').next())
    else {
        return message.to_owned();
    };
    // serde says "expected one of `a`, `b`"; serde-saphyr "expected one of a, b".
    let expected_part = message.split("expected").nth(1).unwrap_or("");
    let expected_part = expected_part.trim_start().trim_start_matches("one of").trim_start_matches("either");
    let candidates: Vec<&str> = expected_part
        .split([',', ' '])
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty() && *c != "or")
        .collect();
    let best = candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(unknown, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, c)) => format!("{message}; did you mean `{c}`?"),
        None => message.to_owned(),
    }
}

/// Reads, parses and validates one pipeline file; on failure, every problem found (at least one). `taken` maps pipeline names already defined
/// to the file that defines them (for duplicate detection).
pub fn load_file(
    file: &Path,
    plugins: &PluginCache,
    backends: &BackendNames,
    taken: &HashMap<String, PathBuf>,
) -> Result<Pipeline, Vec<LoadError>> {
    let at = |loc: Option<Location>, m: String| vec![LoadError::at(file, loc, m)];
    let meta = std::fs::metadata(file).map_err(|e| at(None, format!("cannot read: {e}")))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(at(
            None,
            format!("file is {} bytes; pipeline files are limited to {MAX_FILE_BYTES} bytes", meta.len()),
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| at(None, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| at(None, format!("not UTF-8: {e}")))?;
    load_text(file, text, plugins, backends, taken)
}

/// Parses and validates pipeline text exactly as [`load_file`] does for a file's content;
/// `file` names it in errors (and its stem is the default name). For drafts that are not (yet)
/// a file: the playground's runs and saves.
pub fn load_text(
    file: &Path,
    text: String,
    plugins: &PluginCache,
    backends: &BackendNames,
    taken: &HashMap<String, PathBuf>,
) -> Result<Pipeline, Vec<LoadError>> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(vec![LoadError::at(
            file,
            None,
            format!("the text is {} bytes; pipeline files are limited to {MAX_FILE_BYTES} bytes", text.len()),
        )]);
    }
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let spec = parse(file, &text).map_err(|e| vec![e])?;
    build(file, sha256, text, spec, plugins, backends, taken)
}

fn loc<T>(s: &Spanned<T>) -> Option<Location> {
    Some(s.referenced)
}

/// A stage's limits: the plugin language's defaults (`Language::default_limits`), overridden
/// by the stage's `limits:` block.
fn limits(
    spec: Option<&Spanned<LimitsSpec>>,
    defaults: Limits,
) -> Result<Limits, (Option<Location>, String)> {
    let mut limits = defaults;
    if let Some(s) = spec {
        let v = s.value;
        if let Some(t) = v.time_ms {
            limits.time_ms = t;
        }
        if let Some(mb) = v.memory_mb {
            limits.memory_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(o) = v.output_bytes {
            limits.output_bytes = o;
        }
        limits.check().map_err(|m| {
            (
                loc(s),
                m.replace(
                    "limits.memory_bytes must be between 2097152 and 1073741824",
                    "limits.memory_mb must be between 2 and 1024",
                ),
            )
        })?;
    }
    Ok(limits)
}

fn config_json(config: Option<&Spanned<serde_json::Value>>) -> serde_json::Value {
    match config.map(|c| &c.value) {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(v) => v.clone(),
    }
}

fn build(
    file: &Path,
    sha256: String,
    source: String,
    spec: PipelineSpec,
    plugins: &PluginCache,
    backends: &BackendNames,
    taken: &HashMap<String, PathBuf>,
) -> Result<Pipeline, Vec<LoadError>> {
    let at = |loc: Option<Location>, m: String| LoadError::at(file, loc, m);
    // Every independent problem is collected, so `pipehost check` shows them all at once.
    let mut errs: Vec<LoadError> = Vec::new();
    // Name.
    let (name, name_loc) = match &spec.name {
        Some(n) => (n.value.clone(), loc(n)),
        None => (name_from_path(file), None),
    };
    if let Err(m) = validate_pipeline_name(&name) {
        errs.push(at(name_loc, format!("`name`: {m}")));
    }
    if let Some(other) = taken.get(&name).filter(|other| other.as_path() != file) {
        errs.push(at(
            name_loc,
            format!("duplicate pipeline name `{name}`: already defined by {}", other.display()),
        ));
    }
    if let Some(t) = &spec.task
        && (t.value.is_empty() || t.value.chars().count() > 64 || t.value.chars().any(char::is_control))
    {
        errs.push(at(loc(t), "`task`: use a short label (1 to 64 characters, one line)".into()));
    }
    // Backend.
    if let Some(b) = &spec.backend
        && !backends.allows(&b.value)
    {
        errs.push(at(
            loc(b),
            format!("`backend`: unknown backend `{}`; available: {}", b.value, backends.list()),
        ));
    }
    // Params.
    let params = spec.params.as_ref().map(|p| p.value.clone()).unwrap_or_default();
    if let Err(m) = params.validate() {
        errs.push(at(spec.params.as_ref().and_then(loc), format!("`params`: {m}")));
    }
    // Variables.
    let mut variables = Vec::new();
    let mut seen = BTreeSet::new();
    for v in &spec.variables {
        let vloc = loc(&v.name);
        let vname = v.name.value.clone();
        if !is_identifier(&vname) {
            errs.push(at(
                vloc,
                format!(
                    "variable name {vname:?}: use ASCII letters, digits and `_`, not starting with a digit"
                ),
            ));
            continue;
        }
        if !seen.insert(vname.clone()) {
            errs.push(at(vloc, format!("variable `{vname}` is declared twice")));
            continue;
        }
        if v.required && v.default.is_some() {
            errs.push(at(
                vloc,
                format!("variable `{vname}`: `required: true` and `default` exclude each other"),
            ));
            continue;
        }
        if let (Some(max), Some(d)) = (v.max_chars, &v.default)
            && d.chars().count() > max
        {
            errs.push(at(vloc, format!("variable `{vname}`: `default` is longer than `max_chars` ({max})")));
            continue;
        }
        variables.push(Variable {
            name: vname,
            required: v.required,
            default: v.default.clone(),
            max_chars: v.max_chars,
            description: v.description.clone(),
        });
    }
    let (input_variable, input_loc) = match &spec.input_variable {
        Some(i) => (i.value.clone(), loc(i)),
        None => ("input".to_owned(), None),
    };
    if spec.input_variable.is_some() && !seen.contains(&input_variable) {
        errs.push(at(
            input_loc,
            format!("`input_variable`: `{input_variable}` is not declared under `variables`"),
        ));
    }
    let ctx =
        |stage: &str| CallContext { pipeline: name.clone(), request_id: "load".into(), stage: stage.into() };

    // Prompt stage.
    let prompt = (|| -> Result<PromptStage, LoadError> {
    let p = &spec.prompt;
    let prompt_plugin = p.plugin.value.clone();
    let builder = plugins
        .prompt_builder(&prompt_plugin)
        .map_err(|m| at(loc(&p.plugin), format!("`prompt.plugin`: {m}")))?;
    check_pin(p.sha256.as_ref(), builder.meta().sha256.as_str())
        .map_err(|(l, m)| at(l, format!("`prompt.sha256`: {m}")))?;
    let prompt_limits = limits(p.limits.as_ref(), builder.meta().language.default_limits()).map_err(|(l, m)| at(l, format!("`prompt.limits`: {m}")))?;
    let mut prompt_config = config_json(p.config.as_ref());
    let config_loc = p.config.as_ref().and_then(loc).or(loc(&p.plugin));
    match &mut prompt_config {
        serde_json::Value::Object(map) => {
            if map.contains_key("variables") {
                return Err(at(
                    config_loc,
                    "`prompt.config.variables`: declare variables once, in the pipeline's top-level `variables:` (the prompt builder receives them from there)".into(),
                ));
            }
            let vars: Vec<serde_json::Value> = variables
                .iter()
                .map(|v| {
                    let mut o = serde_json::Map::new();
                    o.insert("name".into(), v.name.clone().into());
                    if v.required {
                        o.insert("required".into(), true.into());
                    }
                    if let Some(d) = &v.default {
                        o.insert("default".into(), d.clone().into());
                    }
                    if let Some(m) = v.max_chars {
                        o.insert("max_chars".into(), m.into());
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            map.insert("variables".into(), vars.into());
        }
        _ => return Err(at(config_loc, "`prompt.config` must be a mapping".into())),
    }
    let prompt_config = prompt_config.to_string();
    builder
        .validate_config(&prompt_config, &ctx("prompt"), &prompt_limits)
        .map_err(|e| at(config_loc, format!("`prompt.config`: {e}")))?;
    Ok(PromptStage { plugin: prompt_plugin, builder, config: prompt_config, limits: prompt_limits })
    })()
    .map_err(|e| errs.push(e))
    .ok();

    // Post stages.
    let mut stages = Vec::new();
    let mut stage_names = BTreeSet::new();
    for (i, s) in spec.post.iter().enumerate() {
        let field = format!("post[{i}]");
        let plugin = s.plugin.value.clone();
        let (stage_name, sloc) = match &s.name {
            Some(n) => (n.value.clone(), loc(n)),
            None => (plugin.clone(), loc(&s.plugin)),
        };
        if !stage_names.insert(stage_name.clone()) {
            errs.push(at(
                sloc,
                format!(
                    "`{field}`: stage name `{stage_name}` is used twice; give the stage a distinct `name:`"
                ),
            ));
            continue;
        }
        let stage = (|| -> Result<PostStage, LoadError> {
            let processor = plugins
                .post_processor(&plugin)
                .map_err(|m| at(loc(&s.plugin), format!("`{field}.plugin`: {m}")))?;
            check_pin(s.sha256.as_ref(), processor.meta().sha256.as_str())
                .map_err(|(l, m)| at(l, format!("`{field}.sha256`: {m}")))?;
            let stage_limits = limits(s.limits.as_ref(), processor.meta().language.default_limits())
                .map_err(|(l, m)| at(l, format!("`{field}.limits`: {m}")))?;
            let config = config_json(s.config.as_ref()).to_string();
            let config_loc = s.config.as_ref().and_then(loc).or(loc(&s.plugin));
            processor
                .validate_config(&config, &ctx(&stage_name), &stage_limits)
                .map_err(|e| at(config_loc, format!("`{field}.config`: {e}")))?;
            Ok(PostStage {
                name: stage_name,
                plugin,
                processor,
                config,
                limits: stage_limits,
                on_error: s.on_error,
            })
        })();
        match stage {
            Ok(stage) => stages.push(stage),
            Err(e) => errs.push(e),
        }
    }
    let Some(prompt) = prompt.filter(|_| errs.is_empty()) else {
        return Err(errs);
    };

    Ok(Pipeline {
        name,
        description: spec.description,
        task: spec.task.map(|t| t.value),
        file: file.to_owned(),
        sha256,
        source,
        backend: spec.backend.map(|b| b.value),
        params,
        input_variable,
        variables,
        prompt,
        stages,
    })
}

fn check_pin(pin: Option<&Spanned<String>>, actual: &str) -> Result<(), (Option<Location>, String)> {
    if let Some(pin) = pin {
        let want = pin.value.trim().to_ascii_lowercase();
        if want.len() != 64 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err((loc(pin), format!("{:?} is not a sha256 (64 hex digits)", pin.value)));
        }
        if want != actual {
            return Err((loc(pin), format!("plugin file has sha256 {actual}, the pipeline pins {want}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_field() {
        let m = with_suggestion("unknown field `tempratur`, expected one of `temperature`, `top_p`");
        assert!(m.ends_with("did you mean `temperature`?"), "{m}");
        let m = with_suggestion("unknown field `tempratur`, expected one of temperature, top_p, stop");
        assert!(m.ends_with("did you mean `temperature`?"), "{m}");
        let m = with_suggestion("unknown field `zzz`, expected one of `temperature`, `top_p`");
        assert!(!m.contains("did you mean"), "{m}");
    }

    #[test]
    fn names() {
        assert!(validate_pipeline_name("poem").is_ok());
        assert!(validate_pipeline_name("../x").is_err());
        assert!(is_identifier("topic_2") && !is_identifier("2x") && !is_identifier("a-b"));
    }
}
