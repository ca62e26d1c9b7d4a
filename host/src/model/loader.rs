//! Finding a model (local folder or HuggingFace hub id), choosing device and dtype, and loading
//! weights, tokenizer, chat template and generation defaults.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;

use super::quant::QuantKind;
use super::qwen3::{HfWeights, Qwen3};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::error::{ModelError, Result};
use super::sampling::GenerationDefaults;

/// The default `--model`: what a new user gets without arguments.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen3-4B-Instruct-2507";

/// Where to run the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when compiled in and present, else Metal likewise, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let ordinal = |rest: &str| -> std::result::Result<usize, String> {
            if rest.is_empty() {
                return Ok(0);
            }
            rest.strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad device {s:?}: expected e.g. cuda or cuda:1"))
        };
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            _ if s.starts_with("cuda") => Ok(DeviceChoice::Cuda(ordinal(&s[4..])?)),
            _ if s.starts_with("metal") => Ok(DeviceChoice::Metal(ordinal(&s[5..])?)),
            _ => Err(format!("unknown device {s:?}: expected auto, cpu, cuda[:N] or metal[:N]")),
        }
    }
}

/// The dtype weights and activations run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// bf16 on a GPU, f32 on CPU.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DTypeChoice::Auto),
            "f32" | "float32" => Ok(DTypeChoice::F32),
            "bf16" | "bfloat16" => Ok(DTypeChoice::Bf16),
            "f16" | "float16" => Ok(DTypeChoice::F16),
            _ => Err(format!("unknown dtype {s:?}: expected auto, f32, bf16 or f16")),
        }
    }
}

impl DTypeChoice {
    pub(crate) fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeChoice::Auto if device.is_cpu() => DType::F32,
            DTypeChoice::Auto => DType::BF16,
            DTypeChoice::F32 => DType::F32,
            DTypeChoice::Bf16 => DType::BF16,
            DTypeChoice::F16 => DType::F16,
        }
    }
}

/// Quantized weights (activations stay f32): our kernels on the CPU, candle's `QMatMul` on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantChoice {
    /// On the CPU with `--dtype auto`: [`CPU_DEFAULT_QUANT`]; otherwise none. An explicit
    /// `--dtype f32` stays exact (no quantization).
    #[default]
    Auto,
    None,
    Q8_0,
    Q4K,
}

/// What `--quantize auto` picks on the CPU (see docs/performance.md for the measurements).
pub const CPU_DEFAULT_QUANT: QuantChoice = QuantChoice::Q8_0;

impl FromStr for QuantChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(QuantChoice::Auto),
            "none" | "off" => Ok(QuantChoice::None),
            "q8_0" | "q8" => Ok(QuantChoice::Q8_0),
            "q4_k" | "q4k" => Ok(QuantChoice::Q4K),
            _ => Err(format!("unknown quantization {s:?}: expected auto, none, q8_0 or q4_k")),
        }
    }
}

impl QuantChoice {
    pub(crate) fn kind(self) -> Option<QuantKind> {
        match self {
            QuantChoice::Q8_0 => Some(QuantKind::Q8_0),
            QuantChoice::Q4K => Some(QuantKind::Q4K),
            _ => None,
        }
    }

    /// The quantization a safetensors checkpoint is loaded with.
    pub(crate) fn resolve(self, dtype: DTypeChoice, device: &Device) -> Result<Option<QuantKind>> {
        match self {
            QuantChoice::None => Ok(None),
            QuantChoice::Auto if device.is_cpu() && dtype == DTypeChoice::Auto => {
                Ok(CPU_DEFAULT_QUANT.kind())
            }
            QuantChoice::Auto => Ok(None),
            explicit => {
                // On a GPU, candle's CUDA q8_0 / q4_k matmuls run them (f32 activations too).
                if matches!(dtype, DTypeChoice::Bf16 | DTypeChoice::F16) {
                    return Err(ModelError::Device(
                        "quantized weights run with f32 activations: use --dtype auto or f32 with --quantize"
                            .into(),
                    ));
                }
                Ok(explicit.kind())
            }
        }
    }
}

/// What to load: `model` is a local HuggingFace model folder, a hub id, or a `.gguf` file.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub model: String,
    /// Hub revision (branch, tag or commit); ignored for local folders.
    pub revision: Option<String>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Quantize the weights as they load (safetensors only; a GGUF file runs as stored).
    pub quantize: QuantChoice,
    /// Show a download progress bar on stderr when fetching from the hub.
    pub progress: bool,
}

impl ModelSpec {
    pub fn new(model: impl Into<String>) -> Self {
        ModelSpec {
            model: model.into(),
            revision: None,
            device: DeviceChoice::Auto,
            dtype: DTypeChoice::Auto,
            quantize: QuantChoice::Auto,
            progress: true,
        }
    }
}

/// What was loaded, for people (printed by the CLI) and for reports.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The `--model` argument as given.
    pub name: String,
    /// The folder the files were read from (the hub cache snapshot for hub ids).
    pub path: PathBuf,
    pub device: String,
    pub dtype: String,
    /// `none`, or the weights' quantization (`q8_0`, `q4_k`; a GGUF file's main type).
    pub quantization: String,
    pub parameters: u64,
    pub load_time: Duration,
    pub vocab_size: usize,
    pub max_context: usize,
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.parameters as f64;
        let params = if p >= 1e9 { format!("{:.2}B", p / 1e9) } else { format!("{:.1}M", p / 1e6) };
        let weights = if self.quantization == "none" {
            self.dtype.clone()
        } else {
            format!("{} weights, {} activations", self.quantization, self.dtype)
        };
        write!(
            f,
            "loaded {} ({params} parameters) on {} as {weights} in {:.2} s",
            self.name,
            self.device,
            self.load_time.as_secs_f64()
        )
    }
}

/// The files of one model, wherever they came from.
#[derive(Debug, Clone)]
pub(crate) struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub weights: Vec<PathBuf>,
}

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::BadConfig { path: path.to_owned(), message: e.to_string() })
}

/// The shard file names of a sharded checkpoint, from its index.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let json = read_json(index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| ModelError::BadConfig { path: index.to_owned(), message: "no weight_map".into() })?;
    let names: BTreeSet<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    Ok(names.into_iter().collect())
}

fn local_files(dir: &Path) -> Result<ModelFiles> {
    let bad = |reason: String| ModelError::BadFolder { path: dir.to_owned(), reason };
    let required = |name: &str| {
        let p = dir.join(name);
        if p.is_file() { Ok(p) } else { Err(bad(format!("{name} is missing"))) }
    };
    let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let weights = if let Some(index) = optional(INDEX) {
        shard_names(&index)?.iter().map(|n| required(n)).collect::<Result<Vec<_>>>()?
    } else if let Some(single) = optional(SINGLE) {
        vec![single]
    } else {
        return Err(bad(format!("neither {SINGLE} nor {INDEX} is present")));
    };
    Ok(ModelFiles {
        dir: dir.to_owned(),
        config: required("config.json")?,
        tokenizer: required("tokenizer.json")?,
        tokenizer_config: optional("tokenizer_config.json"),
        chat_template: optional("chat_template.jinja"),
        generation_config: optional("generation_config.json"),
        weights,
    })
}

/// `owner/name` with no path-like parts: what the hub calls a repo id.
fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// Resolve `--model` to files on disk, downloading from the hub when needed.
pub(crate) fn resolve_files(spec: &ModelSpec) -> Result<ModelFiles> {
    let path = Path::new(&spec.model);
    if path.is_dir() {
        return local_files(path);
    }
    if !looks_like_hub_id(&spec.model) || path.exists() {
        return Err(ModelError::BadFolder {
            path: path.to_owned(),
            reason: "not a folder (and not a hub id such as Qwen/Qwen3-4B-Instruct-2507)".into(),
        });
    }
    hub_files(spec)
}

fn hub_repo(spec: &ModelSpec) -> hf_hub::Repo {
    match &spec.revision {
        Some(rev) => hf_hub::Repo::with_revision(spec.model.clone(), hf_hub::RepoType::Model, rev.clone()),
        None => hf_hub::Repo::model(spec.model.clone()),
    }
}

/// Everything from the local cache, or `None` if something required is missing.
fn cached_files(spec: &ModelSpec) -> Result<Option<ModelFiles>> {
    let cache = hf_hub::Cache::from_env().repo(hub_repo(spec));
    let (Some(config), Some(tokenizer)) = (cache.get("config.json"), cache.get("tokenizer.json")) else {
        return Ok(None);
    };
    let weights = if let Some(index) = cache.get(INDEX) {
        let mut paths = Vec::new();
        for name in shard_names(&index)? {
            match cache.get(&name) {
                Some(p) => paths.push(p),
                None => return Ok(None),
            }
        }
        paths
    } else if let Some(single) = cache.get(SINGLE) {
        vec![single]
    } else {
        return Ok(None);
    };
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Some(ModelFiles {
        dir,
        config,
        tokenizer,
        tokenizer_config: cache.get("tokenizer_config.json"),
        chat_template: cache.get("chat_template.jinja"),
        generation_config: cache.get("generation_config.json"),
        weights,
    }))
}

fn hub_files(spec: &ModelSpec) -> Result<ModelFiles> {
    // A fully cached model loads without touching the network, online or not.
    if let Some(files) = cached_files(spec)? {
        return Ok(files);
    }
    if env_flag("HF_HUB_OFFLINE") {
        return Err(ModelError::NotCached {
            repo: spec.model.clone(),
            cache: hf_hub::Cache::from_env().path().clone(),
        });
    }
    let hub_err =
        |e: hf_hub::api::sync::ApiError| ModelError::Hub { repo: spec.model.clone(), message: e.to_string() };
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(spec.progress);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(hub_err)?;
    let repo = api.repo(hub_repo(spec));
    // The listing tells sharded from single-file checkpoints and which optional files exist.
    let listing: BTreeSet<String> =
        repo.info().map_err(hub_err)?.siblings.into_iter().map(|s| s.rfilename).collect();
    let get = |name: &str| repo.get(name).map_err(hub_err);
    let get_optional = |name: &str| -> Result<Option<PathBuf>> {
        if listing.contains(name) { get(name).map(Some) } else { Ok(None) }
    };
    let config = get("config.json")?;
    let weights = if listing.contains(INDEX) {
        let index = get(INDEX)?;
        shard_names(&index)?.iter().map(|n| get(n)).collect::<Result<Vec<_>>>()?
    } else if listing.contains(SINGLE) {
        vec![get(SINGLE)?]
    } else {
        return Err(ModelError::Hub {
            repo: spec.model.clone(),
            message: format!("the repository has neither {SINGLE} nor {INDEX}"),
        });
    };
    Ok(ModelFiles {
        dir: config.parent().map(Path::to_path_buf).unwrap_or_default(),
        tokenizer: get("tokenizer.json")?,
        tokenizer_config: get_optional("tokenizer_config.json")?,
        chat_template: get_optional("chat_template.jinja")?,
        generation_config: get_optional("generation_config.json")?,
        config,
        weights,
    })
}

/// Pick the device; `Auto` prefers a GPU backend that was compiled in and is present.
pub(crate) fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(ModelError::Device(
                    "this build has no CUDA support; rebuild with `--features cuda` (see docs/model.md)"
                        .into(),
                ));
            }
            Device::new_cuda(n).map_err(|e| ModelError::Device(format!("CUDA device {n}: {e}")))
        }
        DeviceChoice::Metal(n) => {
            if !cfg!(feature = "metal") {
                return Err(ModelError::Device(
                    "this build has no Metal support; rebuild with `--features metal`".into(),
                ));
            }
            Device::new_metal(n).map_err(|e| ModelError::Device(format!("Metal device {n}: {e}")))
        }
        DeviceChoice::Auto => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::info!("no usable CUDA device ({e}); trying the next backend"),
                }
            }
            if cfg!(feature = "metal") {
                match Device::new_metal(0) {
                    Ok(d) => return Ok(d),
                    Err(e) => tracing::info!("no usable Metal device ({e}); using the CPU"),
                }
            }
            Ok(Device::Cpu)
        }
    }
}

pub(crate) fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => other.as_str(),
    }
}

/// Bytes free on `device` now: MemAvailable on the CPU, the driver's free memory on CUDA.
pub(crate) fn free_memory(device: &Device) -> Option<usize> {
    match device {
        Device::Cpu => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => cuda.cuda_stream().context().mem_get_info().ok().map(|(free, _total)| free),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Parse config.json into candle's Qwen3 config, filling keys that some exports leave out
/// (transformers 5 moves `rope_theta` into `rope_parameters`; older configs omit `head_dim`).
pub(crate) fn parse_config(path: &Path) -> Result<qwen3::Config> {
    parse_config_value(read_json(path)?, path)
}

/// [`parse_config`] of a config already read (`path` names it in errors).
pub(crate) fn parse_config_value(mut json: Value, path: &Path) -> Result<qwen3::Config> {
    let bad = |message: String| ModelError::BadConfig { path: path.to_owned(), message };
    let obj = json.as_object_mut().ok_or_else(|| bad("not a JSON object".into()))?;
    let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type != "qwen3" {
        return Err(bad(format!("model_type is {model_type:?}; this engine runs Qwen3 models (\"qwen3\")")));
    }
    if !obj.contains_key("rope_theta") {
        let theta = obj
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .cloned()
            .unwrap_or(Value::from(1_000_000.0));
        obj.insert("rope_theta".into(), theta);
    }
    let get_usize = |o: &serde_json::Map<String, Value>, k: &str| o.get(k).and_then(Value::as_u64);
    if !obj.contains_key("head_dim")
        && let (Some(h), Some(n)) = (get_usize(obj, "hidden_size"), get_usize(obj, "num_attention_heads"))
    {
        obj.insert("head_dim".into(), Value::from(h / n.max(1)));
    }
    if !obj.contains_key("max_window_layers") {
        let layers = get_usize(obj, "num_hidden_layers").unwrap_or(0);
        obj.insert("max_window_layers".into(), Value::from(layers));
    }
    for (key, default) in [
        ("attention_bias", Value::Bool(false)),
        ("use_sliding_window", Value::Bool(false)),
        ("sliding_window", Value::Null),
        ("tie_word_embeddings", Value::Bool(false)),
        ("hidden_act", Value::from("silu")),
        ("max_position_embeddings", Value::from(40960)),
        ("rms_norm_eps", Value::from(1e-6)),
    ] {
        obj.entry(key).or_insert(default);
    }
    if obj.get("use_sliding_window") == Some(&Value::Bool(true)) {
        return Err(bad("sliding-window attention is not supported".into()));
    }
    serde_json::from_value(json).map_err(|e| bad(e.to_string()))
}

/// safetensors files read tensor by tensor with `pread` instead of mmaped whole: used when the
/// weights are quantized as they load, so the f32 file's pages are never mapped into the
/// process (its peak RSS stays near the quantized size, not the checkpoint's).
pub(crate) struct PreadSafetensors {
    files: Vec<(PathBuf, std::fs::File)>,
    /// name -> (file, dtype, shape, byte range in the file)
    entries: std::collections::HashMap<String, (usize, DType, Vec<usize>, u64, u64)>,
}

impl PreadSafetensors {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        use std::io::Read;
        let mut files = Vec::new();
        let mut entries = std::collections::HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let bad = |m: String| ModelError::BadConfig { path: path.clone(), message: m };
            let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
            let mut len = [0u8; 8];
            f.read_exact(&mut len).map_err(|e| ModelError::io(path, e))?;
            let len = u64::from_le_bytes(len);
            if len > 100 << 20 {
                return Err(bad(format!("safetensors header of {len} bytes")));
            }
            let mut header = vec![0u8; len as usize];
            f.read_exact(&mut header).map_err(|e| ModelError::io(path, e))?;
            let header: Value = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
            let obj = header.as_object().ok_or_else(|| bad("header is not an object".into()))?;
            for (name, info) in obj {
                if name == "__metadata__" {
                    continue;
                }
                let dtype = match info["dtype"].as_str().unwrap_or("") {
                    "F32" => DType::F32,
                    "BF16" => DType::BF16,
                    "F16" => DType::F16,
                    "F64" => DType::F64,
                    other => return Err(bad(format!("{name}: dtype {other} is not supported"))),
                };
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .ok_or_else(|| bad(format!("{name}: no shape")))?
                    .iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect();
                let offsets =
                    info["data_offsets"].as_array().ok_or_else(|| bad(format!("{name}: no offsets")))?;
                let (Some(start), Some(end)) =
                    (offsets.first().and_then(Value::as_u64), offsets.get(1).and_then(Value::as_u64))
                else {
                    return Err(bad(format!("{name}: bad offsets")));
                };
                let want = shape.iter().product::<usize>() * dtype.size_in_bytes();
                if (end - start) as usize != want {
                    return Err(bad(format!("{name}: {} bytes for {want}", end - start)));
                }
                entries.insert(name.clone(), (i, dtype, shape, 8 + len + start, 8 + len + end));
            }
            files.push((path.clone(), f));
        }
        Ok(PreadSafetensors { files, entries })
    }

    pub fn parameters(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(n, (_, _, s, _, _))| (n.as_str(), s.iter().product::<usize>() as u64))
    }

    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        use std::os::unix::fs::FileExt;
        let Some((file, dtype, shape, start, end)) = self.entries.get(name) else {
            candle_core::bail!("cannot find tensor {name}")
        };
        let (path, f) = &self.files[*file];
        let io = |e: std::io::Error| candle_core::Error::Msg(format!("{}: {e}", path.display()));
        let n = (end - start) as usize;
        if *dtype == DType::F32 {
            // Straight into the f32 buffer: one copy of the tensor in memory, not two.
            let mut v = vec![0f32; n / 4];
            // SAFETY: any bytes are a valid f32; the slice covers exactly the vector.
            let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), n) };
            f.read_exact_at(bytes, *start).map_err(io)?;
            if cfg!(target_endian = "big") {
                for x in &mut v {
                    *x = f32::from_bits(x.to_bits().swap_bytes());
                }
            }
            return Tensor::from_vec(v, shape.as_slice(), &Device::Cpu);
        }
        let mut bytes = vec![0u8; n];
        f.read_exact_at(&mut bytes, *start).map_err(io)?;
        Tensor::from_raw_buffer(&bytes, *dtype, shape, &Device::Cpu)
    }
}

impl candle_nn::var_builder::SimpleBackend for PreadSafetensors {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.read(name)?;
        if t.shape() != &s {
            candle_core::bail!("shape mismatch for {name}: expected {s:?}, got {:?}", t.shape())
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Everything the engine needs, loaded. Owned by one thread at a time (see [`super::Engine`]).
pub struct Model {
    pub(crate) lm: Qwen3,
    pub(crate) tokenizer: std::sync::Arc<Tokenizer>,
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) defaults: GenerationDefaults,
    pub(crate) info: ModelInfo,
    pub(crate) device: Device,
    /// The tokenizer's special tokens (`<|im_start|>`...), longest first: text that must never
    /// become a control token when a user types it.
    pub(crate) special_tokens: Vec<String>,
    /// A copy of the tokenizer that splits special-token strings like ordinary text; made on
    /// first use (only a request that contains one needs it).
    pub(crate) plain_tokenizer: std::sync::OnceLock<Tokenizer>,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Load a model: resolve files, pick device and dtype, mmap the weights, read the tokenizer,
/// chat template and generation defaults.
pub fn load(spec: &ModelSpec) -> Result<Model> {
    let start = Instant::now();
    if super::gguf::is_gguf(&spec.model) {
        return super::gguf::load(spec, start);
    }
    let files = resolve_files(spec)?;
    let config = parse_config(&files.config)?;
    let device = select_device(spec.device)?;
    let quant = spec.quantize.resolve(spec.dtype, &device)?;
    let dtype = if quant.is_some() { DType::F32 } else { spec.dtype.resolve(&device) };

    let tokenizer = Tokenizer::from_file(&files.tokenizer)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", files.tokenizer.display())))?;
    let tokenizer_config = match &files.tokenizer_config {
        Some(p) => read_json(p)?,
        None => Value::Null,
    };
    let template = ChatTemplate::from_model_files(&tokenizer_config, files.chat_template.as_deref())?;
    let generation_config = match &files.generation_config {
        Some(p) => read_json(p)?,
        None => Value::Null,
    };
    let config_json = read_json(&files.config)?;
    let defaults = GenerationDefaults::from_configs(&generation_config, &config_json, &tokenizer);

    let (vb, mut parameters, head) = if quant.is_some() {
        let tensors = PreadSafetensors::open(&files.weights)?;
        let parameters: u64 = tensors.parameters().map(|(_, n)| n).sum();
        let head = tensors.parameters().find(|(n, _)| *n == "lm_head.weight").map(|(_, n)| n);
        (VarBuilder::from_backend(Box::new(tensors), dtype, device.clone()), parameters, head)
    } else {
        // SAFETY: the weights are mmaped read-only; like every safetensors loader we assume nobody
        // truncates the files while the model is loaded.
        let tensors = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files.weights)? };
        let parameters: u64 =
            tensors.tensors().iter().map(|(_, view)| view.shape().iter().product::<usize>() as u64).sum();
        let head = tensors.get("lm_head.weight").ok().map(|v| v.shape().iter().product::<usize>() as u64);
        (VarBuilder::from_backend(Box::new(tensors), dtype, device.clone()), parameters, head)
    };
    if config.tie_word_embeddings
        && let Some(head) = head
    {
        // Some exports keep a copy of the tied head; it is not loaded, so do not count it.
        parameters -= head;
    }
    let lm = Qwen3::load(&config, &HfWeights { vb, quant })?;

    let info = ModelInfo {
        name: spec.model.clone(),
        path: files.dir.clone(),
        device: device_name(&device),
        dtype: dtype_name(dtype).to_owned(),
        quantization: quant.map_or("none", QuantKind::name).to_owned(),
        parameters,
        load_time: start.elapsed(),
        vocab_size: config.vocab_size,
        max_context: config.max_position_embeddings,
    };
    let special_tokens = special_token_strings(&tokenizer);
    Ok(Model {
        lm,
        tokenizer: std::sync::Arc::new(tokenizer),
        template,
        defaults,
        info,
        device,
        special_tokens,
        plain_tokenizer: std::sync::OnceLock::new(),
    })
}

/// The contents of the tokenizer's special added tokens, longest first (so that a token that
/// contains another is replaced first).
pub(crate) fn special_token_strings(tokenizer: &Tokenizer) -> Vec<String> {
    let mut specials: Vec<String> =
        tokenizer.get_added_tokens_decoder().into_values().filter(|t| t.special).map(|t| t.content).collect();
    specials.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    specials
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(3));
        assert_eq!("metal".parse::<DeviceChoice>().unwrap(), DeviceChoice::Metal(0));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!("bf16".parse::<DTypeChoice>().unwrap(), DTypeChoice::Bf16);
        assert_eq!(DTypeChoice::Auto.resolve(&Device::Cpu), DType::F32);
    }

    #[test]
    fn quantization_choices_resolve_as_documented() {
        assert_eq!("q4_k".parse::<QuantChoice>().unwrap(), QuantChoice::Q4K);
        assert_eq!("Q8_0".parse::<QuantChoice>().unwrap(), QuantChoice::Q8_0);
        assert!("q6_k".parse::<QuantChoice>().is_err());
        let cpu = Device::Cpu;
        assert_eq!(QuantChoice::Auto.resolve(DTypeChoice::Auto, &cpu).unwrap(), CPU_DEFAULT_QUANT.kind());
        // An explicit --dtype f32 stays exact.
        assert_eq!(QuantChoice::Auto.resolve(DTypeChoice::F32, &cpu).unwrap(), None);
        assert_eq!(QuantChoice::None.resolve(DTypeChoice::Auto, &cpu).unwrap(), None);
        assert_eq!(QuantChoice::Q4K.resolve(DTypeChoice::F32, &cpu).unwrap(), Some(QuantKind::Q4K));
        assert!(QuantChoice::Q8_0.resolve(DTypeChoice::Bf16, &cpu).is_err());
    }

    #[test]
    fn tells_hub_ids_from_paths() {
        assert!(looks_like_hub_id("Qwen/Qwen3-4B-Instruct-2507"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("../x"));
        assert!(!looks_like_hub_id("single"));
    }

    #[test]
    fn missing_local_folder_is_a_clear_error() {
        let err = resolve_files(&ModelSpec::new("/definitely/not/here")).unwrap_err();
        assert!(matches!(err, ModelError::BadFolder { .. }), "{err}");
    }
}
