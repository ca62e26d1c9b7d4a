//! Our own Qwen3 forward pass: one step over several sequences at once, each at its own
//! position with its own KV cache.
//!
//! candle-transformers' `qwen3` keeps one offset for the whole batch and has no per-sequence
//! masks, so it can only batch sequences of equal length. Here the tokens of every sequence in
//! a step are packed into one `(tokens, hidden)` matrix: the projections and the MLP (nearly
//! all of the weights) run once over all of them, so a decode step for 8 sequences reads the
//! weights once instead of 8 times. Only attention runs per sequence, against that sequence's
//! own cache, so no sequence can see another's tokens and there is no padding to mask.
//!
//! The arithmetic per sequence is the one candle-transformers does (same RMSNorm, RoPE table,
//! CPU flash-attention kernel), so a sequence gets the same logits (within float rounding of
//! the matmul's row blocking) whatever runs beside it.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::attention::{AttnMask, flash_attn};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use candle_transformers::models::qwen3::Config;

use super::attention::{self, AttnShape};
use super::error::Result;
use super::quant::{QMatrix, QuantKind};

/// A weight matrix applied as `x @ W^T` to rows of `x`. One enum so that quantized matrices
/// can take their place without the forward pass changing.
#[derive(Debug, Clone)]
pub(crate) enum Matrix {
    Dense(Linear),
    /// q8_0 / q4_k weights, our own CPU kernels (f32 activations in and out).
    Quant(Arc<QMatrix>),
    /// The same weights through candle's `QMatMul`: on a GPU (candle's CUDA q8_0 / q4_k
    /// kernels), and on the CPU for measurements only (`PIPEHOST_QUANT_KERNEL=candle`; see
    /// docs/performance.md).
    Candle(Arc<candle_core::quantized::QMatMul>),
}

/// Whether decode steps use our few-rows kernel ([`super::dense`]) rather than candle's
/// matmul; `PIPEHOST_CPU_MATMUL=candle` turns it off, to compare the two side by side.
fn own_kernel() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("PIPEHOST_CPU_MATMUL").map_or(true, |v| v != "candle"))
}

/// Whether CPU attention uses our kernel ([`super::attention`], on the rayon pool) rather than
/// candle's fused one (its own thread pool); `PIPEHOST_CPU_ATTENTION=candle` picks candle's, to
/// compare the two side by side.
fn own_attention() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("PIPEHOST_CPU_ATTENTION").map_or(true, |v| v != "candle"))
}

/// Whether a CPU step runs on a rayon worker ([`Qwen3::step`]); `PIPEHOST_CPU_STEP=caller`
/// keeps it on the calling thread, to compare the two side by side.
fn step_on_pool() -> bool {
    static POOL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *POOL.get_or_init(|| std::env::var("PIPEHOST_CPU_STEP").map_or(true, |v| v != "caller"))
}

/// `x · wᵀ` with [`super::dense::matmul`], for a CPU tensor `x: (m, k)` and `w: (n, k)`.
fn dense_rows(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = w.dim(0)?;
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    let mut y = vec![0f32; m * n];
    {
        let (xs, xl) = x32.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws) else {
            return Err(candle_core::Error::Msg("dense_rows runs on the CPU".into()).into());
        };
        let xv = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k];
        match w.dtype() {
            DType::F32 => {
                let wv = &ws.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + n * k];
                super::dense::matmul(xv, m, k, wv, n, &mut y);
            }
            DType::BF16 => {
                let wv = &ws.as_slice::<half::bf16>()?[wl.start_offset()..wl.start_offset() + n * k];
                super::dense::matmul(xv, m, k, wv, n, &mut y);
            }
            other => return Err(candle_core::Error::Msg(format!("dense_rows: {other:?} weights")).into()),
        }
    }
    Ok(Tensor::from_vec(y, (m, n), x.device())?.to_dtype(x.dtype())?)
}

impl Matrix {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Matrix::Dense(linear) => {
                let w = linear.weight();
                let rows = x.dim(0)?;
                // One row too: with four weight streams per core our kernel decodes f32 at
                // twice the speed of candle's matrix-vector path on an AVX-512 machine (and
                // bf16 at 7x: candle has no bf16 CPU matmul), docs/performance.md.
                let fits = x.device().is_cpu()
                    && (1..=super::dense::MAX_ROWS).contains(&rows)
                    && matches!(w.dtype(), DType::F32 | DType::BF16)
                    && w.is_contiguous();
                if fits && own_kernel() {
                    let y = dense_rows(x, w)?;
                    match linear.bias() {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    }
                } else {
                    linear.forward(x)?
                }
            }
            Matrix::Quant(q) => {
                let (m, _) = x.dims2()?;
                let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(q.matmul(&data, m), (m, q.rows()), x.device())?
            }
            Matrix::Candle(q) => q.forward(&x.to_dtype(DType::F32)?)?,
        })
    }

    /// [`Self::forward`] of several matrices on the same input (q, k, v; gate, up). When all
    /// are ours and quantized they run as one group: the input is quantized once and the pool
    /// woken once ([`QMatrix::matmul_group`]), with the same results as one by one.
    fn forward_all<const N: usize>(mats: [&Matrix; N], x: &Tensor) -> Result<[Tensor; N]> {
        let quant: Vec<&QMatrix> = mats
            .iter()
            .filter_map(|mat| match mat {
                Matrix::Quant(q) => Some(&**q),
                _ => None,
            })
            .collect();
        if quant.len() == N && N > 1 {
            let (m, _) = x.dims2()?;
            let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let mut outs = QMatrix::matmul_group(&quant, &data, m).into_iter();
            let mut out = Vec::with_capacity(N);
            for q in &quant {
                let y = outs.next().expect("one output per matrix");
                out.push(Tensor::from_vec(y, (m, q.rows()), x.device())?);
            }
            return Ok(out.try_into().expect("N outputs"));
        }
        let mut out = Vec::with_capacity(N);
        for mat in mats {
            out.push(mat.forward(x)?);
        }
        Ok(out.try_into().expect("N outputs"))
    }
}

/// The token embedding: a table of rows, quantized ones dequantized as they are looked up.
#[derive(Debug, Clone)]
pub(crate) enum Embed {
    Dense(Embedding),
    Quant(Arc<QMatrix>),
}

impl Embed {
    fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        Ok(match self {
            Embed::Dense(e) => e.forward(&Tensor::new(ids, device)?)?,
            Embed::Quant(q) => {
                let h = q.cols();
                let mut out = vec![0f32; ids.len() * h];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(h)) {
                    if id as usize >= q.rows() {
                        return Err(candle_core::Error::Msg(format!(
                            "token id {id} is outside the vocabulary"
                        ))
                        .into());
                    }
                    q.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), h), device)?
            }
        })
    }
}

/// Where [`Qwen3::load`] gets its weights, named as in HuggingFace checkpoints
/// (`model.layers.0.self_attn.q_proj`, without `.weight`).
pub(crate) trait WeightSource {
    fn device(&self) -> &Device;
    /// The dtype activations (and dense weights) run in.
    fn dtype(&self) -> DType;
    /// A `(rows, cols)` matrix.
    fn matrix(&self, name: &str, rows: usize, cols: usize, bias: bool) -> Result<Matrix>;
    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm>;
    /// The `(vocab, hidden)` token embedding, and with `tied` the same weights as the head.
    fn embedding(&self, vocab: usize, hidden: usize, tied: bool) -> Result<(Embed, Option<Matrix>)>;
}

/// What a matrix is quantized to when a model is quantized to `kind`: rows that are not whole
/// blocks fall back (see [`QuantKind::for_cols`]); under q4_k the output head (also the
/// embedding when tied) stays q8_0, where llama.cpp's Q4_K_M uses q6_k.
pub(crate) fn quant_plan(name: &str, cols: usize, kind: QuantKind, tied: bool) -> Option<QuantKind> {
    let head = name == "lm_head" || (tied && name == "model.embed_tokens");
    if head && kind == QuantKind::Q4K { QuantKind::Q8_0.for_cols(cols) } else { kind.for_cols(cols) }
}

/// A safetensors checkpoint, optionally quantized while it loads.
pub(crate) struct HfWeights<'a> {
    pub vb: VarBuilder<'a>,
    pub quant: Option<QuantKind>,
}

impl HfWeights<'_> {
    /// Off the CPU, a matrix that is to be quantized becomes candle's `QMatMul` on the device
    /// (quantized on the host by candle's ggml-reference quantizer, the bytes our CPU path
    /// holds too); our kernels are CPU code. `None`: not quantized (or on the CPU).
    fn device_quantized(&self, name: &str, w: &Tensor, tied: bool) -> Result<Option<Matrix>> {
        let device = self.vb.device();
        if device.is_cpu() {
            return Ok(None);
        }
        let Some(kind) = self.quant else { return Ok(None) };
        let Some(kind) = quant_plan(name, w.dim(1)?, kind, tied) else { return Ok(None) };
        let host = w.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let qt = candle_core::quantized::QTensor::quantize_onto(&host, kind.ggml(), device)?;
        Ok(Some(Matrix::Candle(Arc::new(candle_core::quantized::QMatMul::from_qtensor(qt)?))))
    }

    fn quantized(&self, name: &str, w: Tensor, tied: bool) -> Result<Option<Arc<QMatrix>>> {
        let Some(kind) = self.quant else { return Ok(None) };
        let Some(kind) = quant_plan(name, w.dim(1)?, kind, tied) else { return Ok(None) };
        Ok(Some(Arc::new(QMatrix::quantize(&w, kind)?)))
    }

    /// `PIPEHOST_QUANT_KERNEL=candle`: matrices through candle's own quantized matmul (the same
    /// ggml bytes), to compare kernels; the embedding lookup stays ours.
    fn candle_matrix(q: &QMatrix, w: &Tensor) -> Result<Option<Matrix>> {
        if std::env::var("PIPEHOST_QUANT_KERNEL").as_deref() != Ok("candle") {
            return Ok(None);
        }
        let qt = candle_core::quantized::QTensor::quantize(&w.to_dtype(DType::F32)?, q.kind().ggml())?;
        Ok(Some(Matrix::Candle(Arc::new(candle_core::quantized::QMatMul::from_qtensor(qt)?))))
    }
}

impl WeightSource for HfWeights<'_> {
    fn device(&self) -> &Device {
        self.vb.device()
    }

    fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize, bias: bool) -> Result<Matrix> {
        let vb = self.vb.pp(name);
        if bias {
            return Ok(Matrix::Dense(candle_nn::linear_b(cols, rows, true, vb)?));
        }
        let w = vb.get((rows, cols), "weight")?;
        if let Some(m) = self.device_quantized(name, &w, false)? {
            return Ok(m);
        }
        Ok(match self.quantized(name, w.clone(), false)? {
            Some(q) => match Self::candle_matrix(&q, &w)? {
                Some(m) => m,
                None => Matrix::Quant(q),
            },
            None => Matrix::Dense(Linear::new(w, None)),
        })
    }

    fn norm(&self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(candle_nn::rms_norm(dim, eps, self.vb.pp(name))?)
    }

    fn embedding(&self, vocab: usize, hidden: usize, tied: bool) -> Result<(Embed, Option<Matrix>)> {
        let name = "model.embed_tokens";
        let w = self.vb.pp(name).get((vocab, hidden), "weight")?;
        if !self.vb.device().is_cpu() {
            // On a GPU the lookup table stays dense (on the device); only a tied head, the
            // large matmul, is quantized.
            let head = match tied {
                true => Some(match self.device_quantized(name, &w, true)? {
                    Some(m) => m,
                    None => Matrix::Dense(Linear::new(w.clone(), None)),
                }),
                false => None,
            };
            return Ok((Embed::Dense(Embedding::new(w, hidden)), head));
        }
        Ok(match self.quantized(name, w.clone(), tied)? {
            Some(q) => {
                let head = match (tied, Self::candle_matrix(&q, &w)?) {
                    (true, Some(m)) => Some(m),
                    (true, None) => Some(Matrix::Quant(q.clone())),
                    (false, _) => None,
                };
                (Embed::Quant(q), head)
            }
            None => (
                Embed::Dense(Embedding::new(w.clone(), hidden)),
                tied.then(|| Matrix::Dense(Linear::new(w, None))),
            ),
        })
    }
}

#[derive(Debug, Clone)]
struct Layer {
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    attn_norm: RmsNorm,
    mlp_norm: RmsNorm,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The shape facts the forward pass and the KV cache need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

impl Dims {
    /// Bytes of K and V for one token over all layers.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim * dtype.size_in_bytes()
    }
}

/// Qwen3 weights and the RoPE table.
#[derive(Debug, Clone)]
pub(crate) struct Qwen3 {
    embed: Embed,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Matrix,
    /// cos/sin of every position, `(max_positions, head_dim / 2)`, in the model's dtype.
    cos: Tensor,
    sin: Tensor,
    dims: Dims,
    device: Device,
    dtype: DType,
    /// The KV cache's dtype: the model's, except for quantized weights on the CPU (below).
    cache_dtype: DType,
}

/// The KV cache's dtype for a model running in `dtype` on `device`. Quantized weights on the
/// CPU compute in f32, but their cache is bf16 (`PIPEHOST_KV_CACHE=f32` keeps f32): the
/// attention kernel widens it in registers, so a decode step reads half the bytes of K and V
/// (at a 2,000-token context an f32 cache of the 0.6B shape is as big as its q4_k weights),
/// and twice as many tokens fit the engine's KV budget. llama.cpp caches in f16 by default for
/// the same reason; the error it adds is within the quantized formats' bounds (docs/model.md).
fn cache_dtype(dtype: DType, device: &Device, quantized: bool) -> DType {
    static F32: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let keep = *F32.get_or_init(|| std::env::var("PIPEHOST_KV_CACHE").is_ok_and(|v| v == "f32"));
    if device.is_cpu() && quantized && dtype == DType::F32 && !keep { DType::BF16 } else { dtype }
}

/// One sequence's part of a step: the tokens to feed at the end of its cache, and whether the
/// caller wants the logits after its last token (not for a prefill chunk with more to come).
pub(crate) struct StepInput<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut SeqCache,
    pub want_logits: bool,
}

impl Qwen3 {
    pub fn load(cfg: &Config, src: &dyn WeightSource) -> Result<Self> {
        let dtype = src.dtype();
        if dtype == DType::F64 {
            return Err(candle_core::Error::Msg("Qwen3 runs in f32, bf16 or f16, not f64".into()).into());
        }
        let device = src.device().clone();
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let eps = cfg.rms_norm_eps;
        let bias = cfg.attention_bias;
        let (embed, tied_head) = src.embedding(cfg.vocab_size, h, cfg.tie_word_embeddings)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let m = |name: &str, rows: usize, cols: usize, bias: bool| {
                src.matrix(&format!("{p}.{name}"), rows, cols, bias)
            };
            let n = |name: &str, dim: usize| src.norm(&format!("{p}.{name}"), dim, eps);
            let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
            layers.push(Layer {
                q: m("self_attn.q_proj", q_out, h, bias)?,
                k: m("self_attn.k_proj", kv_out, h, bias)?,
                v: m("self_attn.v_proj", kv_out, h, bias)?,
                o: m("self_attn.o_proj", h, q_out, bias)?,
                q_norm: n("self_attn.q_norm", d)?,
                k_norm: n("self_attn.k_norm", d)?,
                attn_norm: n("input_layernorm", h)?,
                mlp_norm: n("post_attention_layernorm", h)?,
                gate: m("mlp.gate_proj", cfg.intermediate_size, h, false)?,
                up: m("mlp.up_proj", cfg.intermediate_size, h, false)?,
                down: m("mlp.down_proj", h, cfg.intermediate_size, false)?,
            });
        }
        let norm = src.norm("model.norm", h, eps)?;
        let quantized = layers.iter().any(|l| matches!(l.q, Matrix::Quant(_)));
        let lm_head = match tied_head {
            Some(head) => head,
            None => src.matrix("lm_head", cfg.vocab_size, h, false)?,
        };
        // The table candle-transformers builds: f32 frequencies, then the model's dtype.
        let inv_freq: Vec<f32> =
            (0..d).step_by(2).map(|i| 1f32 / cfg.rope_theta.powf(i as f64 / d as f64) as f32).collect();
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), &device)?;
        let positions = Tensor::arange(0u32, cfg.max_position_embeddings as u32, &device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = positions.matmul(&inv_freq)?;
        Ok(Qwen3 {
            embed,
            layers,
            norm,
            lm_head,
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            dims: Dims {
                layers: cfg.num_hidden_layers,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.num_key_value_heads,
                head_dim: d,
                vocab: cfg.vocab_size,
            },
            cache_dtype: cache_dtype(dtype, &device, quantized),
            device,
            dtype,
        })
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// An empty cache with room for `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> Result<SeqCache> {
        SeqCache::new(self.dims, capacity, self.cache_dtype, &self.device)
    }

    /// The dtype of the KV cache (`kv_bytes_per_token` takes it).
    pub fn cache_dtype(&self) -> DType {
        self.cache_dtype
    }

    /// One forward step over every input at once. Each input's tokens are appended to its
    /// cache. Returns, per input, the logits after its last token (f32, `(vocab,)`) when it
    /// asked for them.
    pub fn step(&self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        // On the CPU the whole step runs on a worker of the rayon pool that every kernel uses:
        // each parallel matmul and attention call then starts on the calling worker and only
        // wakes the others, instead of handing its job from the model thread to the pool and
        // sleeping until it is done (two wake-ups per call, ~200 calls per decode step).
        if self.device.is_cpu() && step_on_pool() {
            rayon::scope(|_| self.step_here(inputs))
        } else {
            self.step_here(inputs)
        }
    }

    fn step_here(&self, inputs: &mut [StepInput<'_>]) -> Result<Vec<Option<Tensor>>> {
        let Dims { heads, kv_heads, head_dim, .. } = self.dims;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len());
        for input in inputs.iter() {
            let start = input.cache.len();
            if input.ids.is_empty() {
                return Err(candle_core::Error::Msg("a step input without tokens".into()).into());
            }
            if start + input.ids.len() > input.cache.capacity() {
                return Err(candle_core::Error::Msg(format!(
                    "the sequence's KV cache holds {} tokens; {} more do not fit",
                    input.cache.capacity(),
                    input.ids.len()
                ))
                .into());
            }
            spans.push((ids.len(), input.ids.len(), start));
            ids.extend_from_slice(input.ids);
            positions.extend((start..start + input.ids.len()).map(|p| p as u32));
        }
        let total = ids.len();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let mut x = self.embed.forward(&ids, &self.device)?; // (total, hidden)

        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let [q, k, v] = Matrix::forward_all([&layer.q, &layer.k, &layer.v], &h)?;
            let q = q.reshape((total * heads, head_dim))?;
            let k = k.reshape((total * kv_heads, head_dim))?;
            let v = v.reshape((total, kv_heads, head_dim))?;
            // Per-head RMSNorm, then RoPE at each token's own position ("thd": tokens, heads, dim).
            let q = layer.q_norm.forward(&q)?.reshape((1, total, heads, head_dim))?;
            let k = layer.k_norm.forward(&k)?.reshape((1, total, kv_heads, head_dim))?;
            let q = candle_nn::rotary_emb::rope_thd(&q, &cos, &sin)?.reshape((total, heads, head_dim))?;
            let k = candle_nn::rotary_emb::rope_thd(&k, &cos, &sin)?.reshape((total, kv_heads, head_dim))?;

            let mut outputs = Vec::with_capacity(inputs.len());
            for (input, &(at, n, start)) in inputs.iter_mut().zip(&spans) {
                let (keys, values) =
                    input.cache.write(l, start, &k.narrow(0, at, n)?, &v.narrow(0, at, n)?)?;
                outputs.push(self.attend(&q.narrow(0, at, n)?, &keys, &values, start)?);
            }
            let attn = if outputs.len() == 1 {
                outputs.pop().expect("one output")
            } else {
                Tensor::cat(&outputs, 0)?
            };
            x = (x + layer.o.forward(&attn)?)?;
            let h = layer.mlp_norm.forward(&x)?;
            let [gate, up] = Matrix::forward_all([&layer.gate, &layer.up], &h)?;
            let mlp = (gate.silu()? * up)?;
            x = (x + layer.down.forward(&mlp)?)?;
        }
        for (input, &(_, n, start)) in inputs.iter_mut().zip(&spans) {
            input.cache.set_len(start + n);
        }

        // Only the rows someone wants go through the final norm and the (large) vocabulary head.
        let wanted: Vec<u32> = spans
            .iter()
            .zip(inputs.iter())
            .filter(|(_, input)| input.want_logits)
            .map(|(&(at, n, _), _)| (at + n - 1) as u32)
            .collect();
        let mut out = vec![None; inputs.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        let rows = x.index_select(&Tensor::new(wanted.as_slice(), &self.device)?, 0)?;
        let logits = self.lm_head.forward(&self.norm.forward(&rows)?)?.to_dtype(DType::F32)?;
        let mut row = 0;
        for (slot, input) in out.iter_mut().zip(inputs.iter()) {
            if input.want_logits {
                *slot = Some(logits.get(row)?);
                row += 1;
            }
        }
        Ok(out)
    }

    /// Causal attention of one sequence's new queries `(n, heads, head_dim)` over its cached
    /// keys and values `(len, kv_heads, head_dim)`, the queries being at positions
    /// `offset..offset + n`. Returns `(n, heads * head_dim)`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Result<Tensor> {
        let Dims { heads, kv_heads, head_dim, .. } = self.dims;
        let n = q.dim(0)?;
        let scale = 1.0 / (head_dim as f32).sqrt();
        if self.device.is_cpu()
            && own_attention()
            && let Some(ctx) = self.attend_own(q, k, v, offset, scale)?
        {
            return Ok(ctx);
        }
        if self.device.is_cpu() {
            // candle's fused CPU kernel (the one candle-transformers uses): (1, S, H, D) in,
            // (1, H, S, D) out, GQA and the causal offset handled inside. It runs in f32.
            let (q, k, v) = (q.unsqueeze(0)?, k.unsqueeze(0)?, v.unsqueeze(0)?);
            let mask = AttnMask::causal_with_offset(offset);
            let f32s = [&q, &k, &v].iter().all(|t| t.dtype() == DType::F32);
            let ctx = if f32s {
                flash_attn::<f32>(&q, &k, &v, scale, mask, None, None)?
            } else {
                let f = |t: &Tensor| t.to_dtype(DType::F32);
                flash_attn::<f32>(&f(&q)?, &f(&k)?, &f(&v)?, scale, mask, None, None)?.to_dtype(self.dtype)?
            };
            return Ok(ctx.squeeze(0)?.transpose(0, 1)?.reshape((n, heads * head_dim))?);
        }
        // Any other device: plain matmul attention, (heads, n, len).
        let len = k.dim(0)?;
        let groups = heads / kv_heads;
        let expand = |t: &Tensor| -> Result<Tensor> {
            let t = t.transpose(0, 1)?; // (kv_heads, len, D)
            Ok(if groups == 1 {
                t.contiguous()?
            } else {
                t.unsqueeze(1)?.expand((kv_heads, groups, len, head_dim))?.reshape((heads, len, head_dim))?
            })
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let q = q.transpose(0, 1)?.contiguous()?; // (heads, n, D)
        let mut scores = (q.matmul(&k.t()?)? * f64::from(scale))?;
        if n > 1 {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..len).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, len), &self.device)?.to_dtype(scores.dtype())?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs.matmul(&v)?.transpose(0, 1)?.reshape((n, heads * head_dim))?)
    }

    /// [`super::attention::causal`] on the CPU: `None` for a cache dtype it does not read
    /// (f16), which then goes to candle's kernel.
    fn attend_own(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        scale: f32,
    ) -> Result<Option<Tensor>> {
        use candle_core::Storage;
        let Dims { heads, kv_heads, head_dim, .. } = self.dims;
        let n = q.dim(0)?;
        let shape = AttnShape { n, heads, kv_heads, head_dim, offset };
        let q = q.to_dtype(DType::F32)?.contiguous()?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let mut out = vec![0f32; q.elem_count()];
        {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*qs, &*ks, &*vs) else {
                return Ok(None);
            };
            let qv = &qs.as_slice::<f32>()?[ql.start_offset()..][..q.elem_count()];
            let kv_len = k.elem_count();
            match k.dtype() {
                DType::F32 => {
                    let kv = &ks.as_slice::<f32>()?[kl.start_offset()..][..kv_len];
                    let vv = &vs.as_slice::<f32>()?[vl.start_offset()..][..kv_len];
                    attention::causal(qv, kv, vv, shape, scale, &mut out);
                }
                DType::BF16 => {
                    let kv = &ks.as_slice::<half::bf16>()?[kl.start_offset()..][..kv_len];
                    let vv = &vs.as_slice::<half::bf16>()?[vl.start_offset()..][..kv_len];
                    attention::causal(qv, kv, vv, shape, scale, &mut out);
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(Tensor::from_vec(out, (n, heads * head_dim), &self.device)?.to_dtype(self.dtype)?))
    }
}

/// One sequence's keys and values, per layer `(capacity, kv_heads, head_dim)`, filled from the
/// front. Token-major so that the first `len` tokens are one contiguous slice the attention
/// kernel reads without a copy, and a step writes its new tokens in place.
pub(crate) struct SeqCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    bytes: usize,
}

impl SeqCache {
    fn new(dims: Dims, capacity: usize, dtype: DType, device: &Device) -> Result<Self> {
        let shape = (capacity, dims.kv_heads, dims.head_dim);
        let mut layers = Vec::with_capacity(dims.layers);
        for _ in 0..dims.layers {
            // On the CPU zeros are calloc'ed: pages cost memory only once written.
            layers.push((Tensor::zeros(shape, dtype, device)?, Tensor::zeros(shape, dtype, device)?));
        }
        Ok(SeqCache { layers, len: 0, capacity, bytes: capacity * dims.kv_bytes_per_token(dtype) })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes this cache holds (reserved at creation).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// Writes `k`, `v` `(n, kv_heads, head_dim)` of `layer` at token `start`; returns the
    /// layer's keys and values up to and including them.
    fn write(&mut self, layer: usize, start: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (keys, values) = &self.layers[layer];
        keys.slice_set(&k.to_dtype(keys.dtype())?.contiguous()?, 0, start)?;
        values.slice_set(&v.to_dtype(values.dtype())?.contiguous()?, 0, start)?;
        let end = start + k.dim(0)?;
        Ok((keys.narrow(0, 0, end)?, values.narrow(0, 0, end)?))
    }

    /// Copies `n` tokens from `start` of every layer out into fresh tensors (for the prefix
    /// cache), one `(K, V)` pair per layer.
    pub fn read_block(&self, start: usize, n: usize) -> Result<Vec<(Tensor, Tensor)>> {
        let copy = |t: &Tensor| -> Result<Tensor> {
            let part = t.narrow(0, start, n)?;
            let out = Tensor::zeros(part.shape(), part.dtype(), part.device())?;
            out.slice_set(&part, 0, 0)?;
            Ok(out)
        };
        self.layers.iter().map(|(k, v)| Ok((copy(k)?, copy(v)?))).collect()
    }

    /// Appends a block read by [`Self::read_block`] (from any sequence with the same tokens
    /// before it) at the end of this cache.
    pub fn append_block(&mut self, block: &[(Tensor, Tensor)]) -> Result<()> {
        let n = block.first().map(|(k, _)| k.dim(0)).transpose()?.unwrap_or(0);
        if self.len + n > self.capacity {
            return Err(candle_core::Error::Msg(
                "a cached block does not fit the sequence's KV cache".into(),
            )
            .into());
        }
        for ((keys, values), (k, v)) in self.layers.iter().zip(block) {
            keys.slice_set(k, 0, self.len)?;
            values.slice_set(v, 0, self.len)?;
        }
        self.len += n;
        Ok(())
    }
}
