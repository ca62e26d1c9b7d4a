//! Random-weight Qwen3 model folders of a real shape, in standard HuggingFace format, so speed
//! can be measured (and the loader exercised) without downloading weights. The safetensors
//! file is streamed one tensor at a time, so a 4B-shape folder needs little memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use serde_json::{Value, json};

use super::error::{ModelError, Result};
use super::loader::DTypeChoice;
use super::sampling::Rng;

/// The architecture numbers of a Qwen3 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Shape {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
}

impl Qwen3Shape {
    /// Qwen3-0.6B (as in shared/reference/bench/pytorch_decode.py).
    pub fn qwen3_0_6b() -> Self {
        Qwen3Shape {
            vocab_size: 151_936,
            hidden_size: 1024,
            intermediate_size: 3072,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            tie_word_embeddings: true,
            max_position_embeddings: 40_960,
            rope_theta: 1_000_000.0,
        }
    }

    /// Qwen3-4B (as in shared/reference/bench/pytorch_decode.py).
    pub fn qwen3_4b() -> Self {
        Qwen3Shape {
            hidden_size: 2560,
            intermediate_size: 9728,
            num_hidden_layers: 36,
            num_attention_heads: 32,
            ..Self::qwen3_0_6b()
        }
    }

    /// (name, shape) of every tensor, in checkpoint order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.num_attention_heads * d, self.num_key_value_heads * d);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            t.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
                (format!("{p}.self_attn.q_norm.weight"), vec![d]),
                (format!("{p}.self_attn.k_norm.weight"), vec![d]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
                (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            ]);
        }
        t.push(("model.norm.weight".into(), vec![h]));
        if !self.tie_word_embeddings {
            t.push(("lm_head.weight".into(), vec![self.vocab_size, h]));
        }
        t
    }

    pub fn parameters(&self) -> u64 {
        self.tensors().iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
    }

    /// A HuggingFace config.json for this shape.
    pub fn config_json(&self, dtype: &str) -> Value {
        json!({
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "rms_norm_eps": 1e-6,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "sliding_window": null,
            "use_sliding_window": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "torch_dtype": dtype,
            "use_cache": true,
        })
    }
}

impl FromStr for Qwen3Shape {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "qwen3-0.6b" => Ok(Self::qwen3_0_6b()),
            "qwen3-4b" => Ok(Self::qwen3_4b()),
            _ => Err(format!("unknown shape {s:?}: expected qwen3-0.6b or qwen3-4b")),
        }
    }
}

/// How to fill the weights.
#[derive(Debug, Clone)]
pub struct RandomWeights {
    /// Standard deviation of the normal weights (transformers initialises with 0.02).
    pub std: f32,
    /// Norm weights are 1.0 plus normal noise of this deviation.
    pub norm_std: f32,
    pub seed: u64,
    /// f32, bf16 or f16 (auto means f32).
    pub dtype: DTypeChoice,
}

impl Default for RandomWeights {
    fn default() -> Self {
        RandomWeights { std: 0.02, norm_std: 0.0, seed: 0, dtype: DTypeChoice::F32 }
    }
}

/// Qwen3-4B-Instruct-2507's generation_config.json.
pub fn qwen3_instruct_generation_config() -> Value {
    json!({
        "bos_token_id": 151643,
        "do_sample": true,
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// Write a complete model folder: config.json, generation_config.json, model.safetensors, and
/// the tokenizer files copied from `tokenizer_dir` (tokenizer.json, tokenizer_config.json and
/// chat_template.jinja when present).
pub fn write_random_model(
    shape: &Qwen3Shape,
    weights: &RandomWeights,
    tokenizer_dir: &Path,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    // Copying a file onto itself would truncate it.
    let same_dir = tokenizer_dir.canonicalize().ok() == out.canonicalize().ok();
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        let src = tokenizer_dir.join(name);
        if src.is_file() && !same_dir {
            let dst = out.join(name);
            std::fs::copy(&src, &dst).map_err(|e| ModelError::io(&src, e))?;
            // A read-only source (e.g. shared/reference) would make the copy read-only too,
            // and writing the same folder again would fail.
            let mut perms = std::fs::metadata(&dst).map_err(|e| ModelError::io(&dst, e))?.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&dst, perms).map_err(|e| ModelError::io(&dst, e))?;
        } else if name == "tokenizer.json" && !src.is_file() {
            return Err(ModelError::BadFolder {
                path: tokenizer_dir.to_owned(),
                reason: "tokenizer.json is missing".into(),
            });
        }
    }
    let dtype_name = match weights.dtype {
        DTypeChoice::Bf16 => "bfloat16",
        DTypeChoice::F16 => "float16",
        _ => "float32",
    };
    write_json(&out.join("config.json"), &shape.config_json(dtype_name))?;
    write_json(&out.join("generation_config.json"), &qwen3_instruct_generation_config())?;
    write_random_safetensors(shape, weights, &out.join("model.safetensors"))
}

/// A normal sample by Box-Muller.
fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return 0x7fc0;
    }
    // Round to nearest even, as torch does.
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let (mut r, rem) = (m >> shift, m & ((1 << shift) - 1));
        if rem > half || (rem == half && r & 1 == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && r & 1 == 1) {
        r += 1; // a carry into the exponent is the correct rounding
    }
    sign | r as u16
}

fn write_random_safetensors(shape: &Qwen3Shape, w: &RandomWeights, path: &Path) -> Result<()> {
    let (tag, width) = match w.dtype {
        DTypeChoice::Bf16 => ("BF16", 2),
        DTypeChoice::F16 => ("F16", 2),
        _ => ("F32", 4),
    };
    let tensors = shape.tensors();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, dims) in &tensors {
        let bytes = dims.iter().product::<usize>() * width;
        header.insert(
            name.clone(),
            json!({"dtype": tag, "shape": dims, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_string(&Value::Object(header)).unwrap_or_default();
    // The data must start 8-byte aligned; pad the header with spaces, as the format allows.
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let io = |e| ModelError::io(path, e);
    let mut f = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    f.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(header.as_bytes()).map_err(io)?;
    let mut rng = Rng::new(w.seed);
    let mut buf = Vec::with_capacity(1 << 16);
    for (name, dims) in &tensors {
        let n: usize = dims.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let mut left = n;
        while left > 0 {
            let take = left.min(1 << 14);
            buf.clear();
            for _ in 0..take {
                let v = if is_norm { 1.0 + w.norm_std * normal(&mut rng) } else { w.std * normal(&mut rng) };
                match w.dtype {
                    DTypeChoice::Bf16 => buf.extend_from_slice(&bf16_bits(v).to_le_bytes()),
                    DTypeChoice::F16 => buf.extend_from_slice(&f16_bits(v).to_le_bytes()),
                    _ => buf.extend_from_slice(&v.to_le_bytes()),
                }
            }
            f.write_all(&buf).map_err(io)?;
            left -= take;
        }
    }
    f.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_the_published_sizes() {
        // Qwen3-0.6B: 0.6B with tied embeddings; Qwen3-4B: 4.0B.
        let small = Qwen3Shape::qwen3_0_6b().parameters();
        let big = Qwen3Shape::qwen3_4b().parameters();
        assert!((590_000_000..610_000_000).contains(&small), "{small}");
        assert!((4_000_000_000..4_050_000_000).contains(&big), "{big}");
    }

    #[test]
    fn half_conversions_round_to_nearest() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(1.0), 0x3c00);
        assert_eq!(f16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(65504.0), 0x7bff);
        assert_eq!(f16_bits(1e6), 0x7c00);
        assert_eq!(f16_bits(5.960_464_5e-8), 0x0001); // smallest subnormal
        assert_eq!(f16_bits(0.1), 0x2e66);
    }
}
