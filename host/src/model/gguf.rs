//! GGUF files: loading a Qwen3 GGUF (llama.cpp's tensor names and metadata) and writing one
//! from a safetensors checkpoint (`pipehost quantize`).
//!
//! Both directions quantize through [`QMatrix::quantize_ggml`] and [`quant_plan`], the same
//! code `--quantize` runs at load, so a file written here and the same checkpoint quantized at
//! load hold identical bits and give identical logits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value as GValue};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::chat_template::ChatTemplate;
use super::error::{ModelError, Result};
use super::loader::{
    DeviceChoice, Model, ModelInfo, ModelSpec, PreadSafetensors, QuantChoice, device_name, parse_config,
    parse_config_value, read_json, resolve_files, select_device, special_token_strings,
};
use super::quant::{QMatrix, QuantKind};
use super::qwen3::{Embed, Matrix, Qwen3, WeightSource, quant_plan};
use super::sampling::GenerationDefaults;

/// Whether `--model` names a GGUF file.
pub(crate) fn is_gguf(model: &str) -> bool {
    model.to_ascii_lowercase().ends_with(".gguf")
}

/// llama.cpp's name for a HuggingFace Qwen3 tensor prefix (without `.weight`).
fn gguf_name(hf: &str) -> Option<String> {
    Some(match hf {
        "model.embed_tokens" => "token_embd".into(),
        "model.norm" => "output_norm".into(),
        "lm_head" => "output".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            let part = match part {
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{layer}.{part}")
        }
    })
}

fn ggml_name(dtype: GgmlDType) -> String {
    match dtype {
        GgmlDType::Q8_0 => "q8_0".into(),
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        GgmlDType::Q5K => "q5_k".into(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

fn bad(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::BadConfig { path: path.to_owned(), message: message.into() }
}

/// The tensors of an open GGUF file, read one at a time.
struct GgufWeights {
    path: PathBuf,
    file: File,
    content: gguf_file::Content,
}

/// A GGUF tensor as our engine holds it.
enum Loaded {
    Quant(Arc<QMatrix>),
    Dense(Tensor),
}

impl GgufWeights {
    fn raw(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
        use std::os::unix::fs::FileExt;
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| bad(&self.path, format!("no tensor {name}")))?;
        let dims = info.shape.dims().to_vec();
        let elems: usize = dims.iter().product();
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(bad(&self.path, format!("{name}: {elems} values are not whole blocks")));
        }
        let mut bytes = vec![0u8; elems / block * info.ggml_dtype.type_size()];
        self.file
            .read_exact_at(&mut bytes, self.content.tensor_data_offset + info.offset)
            .map_err(|e| ModelError::io(&self.path, e))?;
        Ok((info.ggml_dtype, dims, bytes))
    }

    fn dequantize(dtype: GgmlDType, dims: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let q = QTensor::new(QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?, dims)?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// A `(rows, cols)` matrix: q8_0 and q4_k run as stored; other quantized types (q6_k in
    /// llama.cpp's Q4_K_M files, ...) are dequantized and requantized to q8_0; float types stay
    /// dense f32.
    fn matrix2(&self, name: &str, rows: usize, cols: usize) -> Result<Loaded> {
        let (dtype, dims, bytes) = self.raw(name)?;
        if dims != [rows, cols] {
            return Err(bad(&self.path, format!("{name} is {dims:?}, expected [{rows}, {cols}]")));
        }
        Ok(match dtype {
            GgmlDType::Q8_0 => {
                Loaded::Quant(Arc::new(QMatrix::from_ggml(QuantKind::Q8_0, rows, cols, &bytes)?))
            }
            GgmlDType::Q4K => {
                Loaded::Quant(Arc::new(QMatrix::from_ggml(QuantKind::Q4K, rows, cols, &bytes)?))
            }
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                Loaded::Dense(Self::dequantize(dtype, &dims, &bytes)?)
            }
            _ => {
                let t = Self::dequantize(dtype, &dims, &bytes)?;
                match QuantKind::Q8_0.for_cols(cols) {
                    Some(k) => Loaded::Quant(Arc::new(QMatrix::quantize(&t, k)?)),
                    None => Loaded::Dense(t),
                }
            }
        })
    }
}

impl WeightSource for GgufWeights {
    fn device(&self) -> &Device {
        &Device::Cpu
    }

    fn dtype(&self) -> DType {
        DType::F32
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize, bias: bool) -> Result<Matrix> {
        if bias {
            return Err(bad(&self.path, "attention biases are not supported in GGUF files"));
        }
        let g = gguf_name(name).ok_or_else(|| bad(&self.path, format!("no GGUF name for {name}")))?;
        Ok(match self.matrix2(&format!("{g}.weight"), rows, cols)? {
            Loaded::Quant(q) => Matrix::Quant(q),
            Loaded::Dense(t) => Matrix::Dense(Linear::new(t, None)),
        })
    }

    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm> {
        let g = gguf_name(name).ok_or_else(|| bad(&self.path, format!("no GGUF name for {name}")))?;
        let (dtype, dims, bytes) = self.raw(&format!("{g}.weight"))?;
        if dims != [dim] {
            return Err(bad(&self.path, format!("{g}.weight is {dims:?}, expected [{dim}]")));
        }
        Ok(RmsNorm::new(Self::dequantize(dtype, &dims, &bytes)?, eps))
    }

    fn embedding(&self, vocab: usize, hidden: usize, tied: bool) -> Result<(Embed, Option<Matrix>)> {
        Ok(match self.matrix2("token_embd.weight", vocab, hidden)? {
            Loaded::Quant(q) => (Embed::Quant(q.clone()), tied.then_some(Matrix::Quant(q))),
            Loaded::Dense(t) => (
                Embed::Dense(Embedding::new(t.clone(), hidden)),
                tied.then(|| Matrix::Dense(Linear::new(t, None))),
            ),
        })
    }
}

fn meta_usize(m: &HashMap<String, GValue>, key: &str) -> Option<usize> {
    Some(match m.get(key)? {
        GValue::U8(v) => *v as usize,
        GValue::U16(v) => *v as usize,
        GValue::U32(v) => *v as usize,
        GValue::U64(v) => *v as usize,
        GValue::I32(v) if *v >= 0 => *v as usize,
        GValue::I64(v) if *v >= 0 => *v as usize,
        _ => return None,
    })
}

fn meta_f64(m: &HashMap<String, GValue>, key: &str) -> Option<f64> {
    match m.get(key)? {
        GValue::F32(v) => Some(f64::from(*v)),
        GValue::F64(v) => Some(*v),
        _ => None,
    }
}

fn meta_str<'a>(m: &'a HashMap<String, GValue>, key: &str) -> Option<&'a str> {
    match m.get(key)? {
        GValue::String(s) => Some(s),
        _ => None,
    }
}

fn meta_strings<'a>(m: &'a HashMap<String, GValue>, key: &str) -> Option<Vec<&'a str>> {
    match m.get(key)? {
        GValue::Array(a) => {
            a.iter().map(|v| if let GValue::String(s) = v { Some(s.as_str()) } else { None }).collect()
        }
        _ => None,
    }
}

fn meta_ints(m: &HashMap<String, GValue>, key: &str) -> Option<Vec<i64>> {
    match m.get(key)? {
        GValue::Array(a) => a
            .iter()
            .map(|v| match v {
                GValue::I32(x) => Some(i64::from(*x)),
                GValue::U32(x) => Some(i64::from(*x)),
                GValue::I8(x) => Some(i64::from(*x)),
                GValue::U8(x) => Some(i64::from(*x)),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// llama.cpp token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

/// The Qwen2/Qwen3 pre-tokenizer split (tokenizer.json of every Qwen3 model).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A HuggingFace tokenizer rebuilt from `tokenizer.ggml.*` (model "gpt2", pre "qwen2"): byte-
/// level BPE with Qwen2's split, control tokens as special added tokens, user-defined ones as
/// plain added tokens.
fn tokenizer_from_metadata(m: &HashMap<String, GValue>, path: &Path) -> Result<Tokenizer> {
    let model = meta_str(m, "tokenizer.ggml.model").unwrap_or("");
    let pre = meta_str(m, "tokenizer.ggml.pre").unwrap_or("");
    if model != "gpt2" || pre != "qwen2" {
        return Err(ModelError::Tokenizer(format!(
            "{}: tokenizer {model:?}/{pre:?} in the GGUF metadata is not Qwen's gpt2/qwen2; put tokenizer.json beside the file",
            path.display()
        )));
    }
    let missing = |k: &str| ModelError::Tokenizer(format!("{}: no {k} in the GGUF metadata", path.display()));
    let tokens = meta_strings(m, "tokenizer.ggml.tokens").ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let types = meta_ints(m, "tokenizer.ggml.token_type").unwrap_or_default();
    let merges = meta_strings(m, "tokenizer.ggml.merges").ok_or_else(|| missing("tokenizer.ggml.merges"))?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        match types.get(id).map_or(TOKEN_NORMAL, |&t| t as i32) {
            TOKEN_CONTROL | TOKEN_USER_DEFINED => {
                let special = types[id] as i32 == TOKEN_CONTROL;
                added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special}));
            }
            TOKEN_UNUSED => {}
            _ => {
                vocab.insert((*tok).to_owned(), Value::from(id));
            }
        }
    }
    // Only merges within the vocabulary (a model may keep fewer ids than its tokenizer has).
    let merges: Vec<Value> = merges
        .iter()
        .filter_map(|s| s.split_once(' '))
        .filter(|(a, b)| {
            vocab.contains_key(*a) && vocab.contains_key(*b) && vocab.contains_key(&format!("{a}{b}"))
        })
        .map(|(a, b)| json!([a, b]))
        .collect();
    let byte_level =
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    tokenizer
        .to_string()
        .parse::<Tokenizer>()
        .map_err(|e| ModelError::Tokenizer(format!("{}: tokenizer from GGUF metadata: {e}", path.display())))
}

/// Load a Qwen3 GGUF file (CPU). Tokenizer, chat template and generation defaults come from
/// `tokenizer.json` / `tokenizer_config.json` / `generation_config.json` beside the file when
/// present, else from the GGUF metadata.
pub(crate) fn load(spec: &ModelSpec, start: Instant) -> Result<Model> {
    let path = PathBuf::from(&spec.model);
    let device = match spec.device {
        DeviceChoice::Auto => Device::Cpu,
        other => select_device(other)?,
    };
    if !device.is_cpu() {
        return Err(ModelError::Device("GGUF files run on the CPU only".into()));
    }
    if !matches!(spec.quantize, QuantChoice::Auto | QuantChoice::None) {
        tracing::info!("--quantize is ignored for a GGUF file: its weights run as stored");
    }
    let mut file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
    let content =
        gguf_file::Content::read(&mut file).map_err(|e| bad(&path, format!("not a GGUF file: {e}")))?;
    let m = &content.metadata;
    let arch = meta_str(m, "general.architecture").unwrap_or("");
    if arch != "qwen3" {
        return Err(bad(&path, format!("general.architecture is {arch:?}; this engine runs qwen3")));
    }
    let need =
        |k: &str| meta_usize(m, &format!("qwen3.{k}")).ok_or_else(|| bad(&path, format!("no qwen3.{k}")));
    let embd =
        content.tensor_infos.get("token_embd.weight").ok_or_else(|| bad(&path, "no token_embd.weight"))?;
    let vocab = embd.shape.dims()[0];
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    let tied = !content.tensor_infos.contains_key("output.weight");
    let eos = meta_usize(m, "tokenizer.ggml.eos_token_id");
    let config_json = json!({
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta_usize(m, "qwen3.attention.head_count_kv").unwrap_or(heads),
        "head_dim": meta_usize(m, "qwen3.attention.key_length").unwrap_or(hidden / heads.max(1)),
        "max_position_embeddings": need("context_length")?,
        "rope_theta": meta_f64(m, "qwen3.rope.freq_base").unwrap_or(1_000_000.0),
        "rms_norm_eps": meta_f64(m, "qwen3.attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
        "tie_word_embeddings": tied,
        "eos_token_id": eos,
        "bos_token_id": meta_usize(m, "tokenizer.ggml.bos_token_id"),
    });
    let config = parse_config_value(config_json.clone(), &path)?;

    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    let tokenizer = match beside("tokenizer.json") {
        Some(p) => {
            Tokenizer::from_file(&p).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", p.display())))?
        }
        None => tokenizer_from_metadata(m, &path)?,
    };
    let tokenizer_config = match beside("tokenizer_config.json") {
        Some(p) => read_json(&p)?,
        None => {
            let token = |key: &str| {
                meta_usize(m, key)
                    .and_then(|id| tokenizer.id_to_token(id as u32))
                    .map(Value::from)
                    .unwrap_or(Value::Null)
            };
            json!({
                "chat_template": meta_str(m, "tokenizer.chat_template"),
                "eos_token": token("tokenizer.ggml.eos_token_id"),
                "pad_token": token("tokenizer.ggml.padding_token_id"),
            })
        }
    };
    let template =
        ChatTemplate::from_model_files(&tokenizer_config, beside("chat_template.jinja").as_deref())?;
    let generation_config = match beside("generation_config.json") {
        Some(p) => read_json(&p)?,
        None => Value::Null,
    };
    let defaults = GenerationDefaults::from_configs(&generation_config, &config_json, &tokenizer);

    // The main type: the one holding the most weights.
    let mut by_type: HashMap<String, usize> = HashMap::new();
    let mut parameters = 0u64;
    for info in content.tensor_infos.values() {
        let n = info.shape.elem_count();
        parameters += n as u64;
        *by_type.entry(ggml_name(info.ggml_dtype)).or_default() += n;
    }
    let quantization = by_type.into_iter().max_by_key(|(_, n)| *n).map(|(t, _)| t).unwrap_or_default();
    let weights = GgufWeights { path: path.clone(), file, content };
    let lm = Qwen3::load(&config, &weights)?;
    let info = ModelInfo {
        name: spec.model.clone(),
        path: path.clone(),
        device: device_name(&device),
        dtype: "f32".into(),
        quantization,
        parameters,
        load_time: start.elapsed(),
        vocab_size: config.vocab_size,
        max_context: config.max_position_embeddings,
    };
    let special_tokens = special_token_strings(&tokenizer);
    Ok(Model {
        lm,
        tokenizer: Arc::new(tokenizer),
        template,
        defaults,
        info,
        device,
        special_tokens,
        plain_tokenizer: std::sync::OnceLock::new(),
    })
}

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors per stored type (`q4_k`, `q8_0`, `f32`).
    pub types: Vec<(String, usize)>,
}

/// `pipehost quantize`: the safetensors model `spec.model` (folder or hub id) quantized to
/// `to` (q8_0 or q4_k) as a llama.cpp-compatible Qwen3 GGUF at `out`.
pub fn write_gguf(spec: &ModelSpec, to: QuantChoice, out: &Path) -> Result<QuantizeReport> {
    let kind = to.kind().ok_or_else(|| ModelError::InvalidRequest("quantize to q8_0 or q4_k".into()))?;
    let files = resolve_files(spec)?;
    let config = parse_config(&files.config)?;
    let config_json = read_json(&files.config)?;
    let tokenizer_json = read_json(&files.tokenizer)?;
    let tokenizer_config = match &files.tokenizer_config {
        Some(p) => read_json(p)?,
        None => Value::Null,
    };
    let generation_config = match &files.generation_config {
        Some(p) => read_json(p)?,
        None => Value::Null,
    };
    let chat_template = match &files.chat_template {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?),
        None => tokenizer_config.get("chat_template").and_then(Value::as_str).map(str::to_owned),
    };

    // Vocabulary in id order; ids the tokenizer does not use are llama.cpp's "[PAD<id>]".
    let vocab_size = config.vocab_size;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let bad_tok = |m: &str| ModelError::Tokenizer(format!("{}: {m}", files.tokenizer.display()));
    let vocab = tokenizer_json["model"]["vocab"].as_object().ok_or_else(|| bad_tok("no model.vocab"))?;
    for (tok, id) in vocab {
        if let Some(slot) = id.as_u64().and_then(|id| tokens.get_mut(id as usize)) {
            *slot = Some((tok.clone(), TOKEN_NORMAL));
        }
    }
    for t in tokenizer_json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else { continue };
        let kind = if t["special"].as_bool() == Some(true) { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = Some((content.to_owned(), kind));
        }
    }
    let merges: Vec<GValue> = tokenizer_json["model"]["merges"]
        .as_array()
        .ok_or_else(|| bad_tok("no model.merges"))?
        .iter()
        .filter_map(|m| match m {
            Value::String(s) => Some(s.clone()),
            Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .map(GValue::String)
        .collect();
    let id_of = |v: &Value| -> Option<u32> {
        let name = match v {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("content")?.as_str()?,
            Value::Number(n) => return n.as_u64().map(|n| n as u32),
            _ => return None,
        };
        tokens.iter().position(|t| t.as_ref().is_some_and(|(s, _)| s == name)).map(|i| i as u32)
    };
    let first_id = |v: &Value| match v {
        Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        other => id_of(other),
    };
    let eos = tokenizer_config
        .get("eos_token")
        .and_then(id_of)
        .or_else(|| first_id(&generation_config["eos_token_id"]))
        .or_else(|| first_id(&config_json["eos_token_id"]));
    let pad = tokenizer_config.get("pad_token").and_then(id_of).or(eos);
    let bos = first_id(&config_json["bos_token_id"]);

    let u32v = |v: usize| GValue::U32(v as u32);
    let name =
        files.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| spec.model.clone());
    let file_type = match kind {
        QuantKind::Q8_0 => 7, // LLAMA_FTYPE_MOSTLY_Q8_0
        QuantKind::Q4K => 15, // LLAMA_FTYPE_MOSTLY_Q4_K_M (q4_k, head in higher precision)
    };
    let mut meta: Vec<(String, GValue)> = vec![
        ("general.architecture".into(), GValue::String("qwen3".into())),
        ("general.name".into(), GValue::String(name)),
        ("general.file_type".into(), GValue::U32(file_type)),
        ("general.quantization_version".into(), GValue::U32(2)),
        ("general.alignment".into(), GValue::U32(32)),
        ("qwen3.block_count".into(), u32v(config.num_hidden_layers)),
        ("qwen3.context_length".into(), u32v(config.max_position_embeddings)),
        ("qwen3.embedding_length".into(), u32v(config.hidden_size)),
        ("qwen3.feed_forward_length".into(), u32v(config.intermediate_size)),
        ("qwen3.attention.head_count".into(), u32v(config.num_attention_heads)),
        ("qwen3.attention.head_count_kv".into(), u32v(config.num_key_value_heads)),
        ("qwen3.attention.key_length".into(), u32v(config.head_dim)),
        ("qwen3.attention.value_length".into(), u32v(config.head_dim)),
        ("qwen3.rope.freq_base".into(), GValue::F32(config.rope_theta as f32)),
        ("qwen3.attention.layer_norm_rms_epsilon".into(), GValue::F32(config.rms_norm_eps as f32)),
        ("tokenizer.ggml.model".into(), GValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GValue::String("qwen2".into())),
    ];
    let (strings, types): (Vec<GValue>, Vec<GValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (s, k) = t.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED));
            (GValue::String(s), GValue::I32(k))
        })
        .unzip();
    meta.push(("tokenizer.ggml.tokens".into(), GValue::Array(strings)));
    meta.push(("tokenizer.ggml.token_type".into(), GValue::Array(types)));
    meta.push(("tokenizer.ggml.merges".into(), GValue::Array(merges)));
    for (key, id) in [("eos_token_id", eos), ("padding_token_id", pad), ("bos_token_id", bos)] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), GValue::U32(id)));
        }
    }
    meta.push(("tokenizer.ggml.add_bos_token".into(), GValue::Bool(false)));
    if let Some(t) = chat_template {
        meta.push(("tokenizer.chat_template".into(), GValue::String(t)));
    }

    // Tensors, in llama.cpp's order: embedding, blocks, final norm, head.
    let st = PreadSafetensors::open(&files.weights)?;
    let vb = VarBuilder::from_backend(Box::new(st), DType::F32, Device::Cpu);
    let (h, d, inter) = (config.hidden_size, config.head_dim, config.intermediate_size);
    let (q_out, kv_out) = (config.num_attention_heads * d, config.num_key_value_heads * d);
    let tied = config.tie_word_embeddings;
    let mut names: Vec<(String, Vec<usize>)> = vec![("model.embed_tokens".into(), vec![vocab_size, h])];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (part, shape) in [
            ("input_layernorm", vec![h]),
            ("self_attn.q_proj", vec![q_out, h]),
            ("self_attn.k_proj", vec![kv_out, h]),
            ("self_attn.v_proj", vec![kv_out, h]),
            ("self_attn.o_proj", vec![h, q_out]),
            ("self_attn.q_norm", vec![d]),
            ("self_attn.k_norm", vec![d]),
            ("post_attention_layernorm", vec![h]),
            ("mlp.gate_proj", vec![inter, h]),
            ("mlp.up_proj", vec![inter, h]),
            ("mlp.down_proj", vec![h, inter]),
        ] {
            names.push((format!("{p}.{part}"), shape));
        }
    }
    names.push(("model.norm".into(), vec![h]));
    if !tied {
        names.push(("lm_head".into(), vec![vocab_size, h]));
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut types: HashMap<String, usize> = HashMap::new();
    for (hf, shape) in &names {
        let w = vb.pp(hf).get(shape.as_slice(), "weight")?;
        let plan = if shape.len() == 2 { quant_plan(hf, shape[1], kind, tied) } else { None };
        let q = match plan {
            Some(k) => {
                let bytes = QMatrix::quantize_ggml(&w, k)?;
                QTensor::new(
                    QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, k.ggml())?,
                    shape.as_slice(),
                )?
            }
            None => QTensor::quantize(&w, GgmlDType::F32)?,
        };
        *types.entry(ggml_name(q.dtype())).or_default() += 1;
        let g = gguf_name(hf).expect("every Qwen3 tensor has a GGUF name");
        tensors.push((format!("{g}.weight"), q));
    }
    let tmp = out.with_extension("gguf.partial");
    let mut w = std::io::BufWriter::new(File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?);
    let meta_refs: Vec<(&str, &GValue)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut w, &meta_refs, &tensor_refs)?;
    std::io::Write::flush(&mut w).map_err(|e| ModelError::io(&tmp, e))?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))?;
    let bytes = std::fs::metadata(out).map_err(|e| ModelError::io(out, e))?.len();
    let mut types: Vec<(String, usize)> = types.into_iter().collect();
    types.sort();
    Ok(QuantizeReport { tensors: tensors.len(), bytes, types })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_qwen3_tensor_to_llama_cpp_names() {
        assert_eq!(gguf_name("model.embed_tokens").unwrap(), "token_embd");
        assert_eq!(gguf_name("model.layers.3.self_attn.k_norm").unwrap(), "blk.3.attn_k_norm");
        assert_eq!(gguf_name("model.layers.12.mlp.down_proj").unwrap(), "blk.12.ffn_down");
        assert_eq!(gguf_name("model.layers.0.post_attention_layernorm").unwrap(), "blk.0.ffn_norm");
        assert!(gguf_name("model.layers.0.mlp.experts").is_none());
    }
}
