//! Choosing the next token, with HuggingFace transformers' semantics and order:
//! repetition penalty, then (OpenAI) presence/frequency penalties, then temperature, top-k,
//! top-p and min-p, then a draw. Temperature 0 (or top-k 1) is greedy argmax.
//!
//! The expensive part stays on the device: penalties touch only the ids seen so far, greedy is
//! an on-device argmax, and top-k finds its candidates from per-chunk maxima, so only a few
//! thousand values (not the 151,936 logits) cross to the host. Only sampling without top-k
//! (top-p or min-p over the whole vocabulary) copies every logit.

use std::collections::HashMap;

use candle_core::{D, DType, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::error::{ModelError, Result};

/// Per-request decoding parameters. `None` means "the model's default"
/// (generation_config.json, else HuggingFace's defaults).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: Option<f32>,
    /// 0 disables top-k.
    pub top_k: Option<usize>,
    /// 1.0 disables top-p.
    pub top_p: Option<f32>,
    /// 0 disables min-p.
    pub min_p: Option<f32>,
    /// HuggingFace semantics over prompt + generated ids; 1.0 disables.
    pub repetition_penalty: Option<f32>,
    /// OpenAI semantics over generated ids: subtracted once from every id already generated.
    pub presence_penalty: Option<f32>,
    /// OpenAI semantics over generated ids: subtracted once per occurrence.
    pub frequency_penalty: Option<f32>,
    /// Same seed + same input = same output. Without one, a seed is drawn (and reported).
    pub seed: Option<u64>,
}

/// Defaults read from the model's generation_config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationDefaults {
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub max_new_tokens: usize,
    /// Generation ends when one of these is produced (unless the request ignores EOS).
    pub eos_token_ids: Vec<u32>,
}

/// What a request gets when neither it nor generation_config.json sets `max_new_tokens`.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;

impl GenerationDefaults {
    /// Missing keys take HuggingFace `GenerationConfig` defaults (temperature 1, top_k 50,
    /// top_p 1), so a request behaves as `model.generate()` would.
    pub(crate) fn from_configs(generation_config: &Value, config: &Value, tokenizer: &Tokenizer) -> Self {
        let f = |k: &str, d: f32| generation_config.get(k).and_then(Value::as_f64).map_or(d, |v| v as f32);
        let u =
            |k: &str, d: usize| generation_config.get(k).and_then(Value::as_u64).map_or(d, |v| v as usize);
        let ids = |v: Option<&Value>| -> Vec<u32> {
            match v {
                Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
                _ => Vec::new(),
            }
        };
        let mut eos = ids(generation_config.get("eos_token_id"));
        if eos.is_empty() {
            eos = ids(config.get("eos_token_id"));
        }
        // Chat models end a turn with <|im_end|> even where the config names only <|endoftext|>.
        if let Some(im_end) = tokenizer.token_to_id("<|im_end|>")
            && !eos.contains(&im_end)
        {
            eos.push(im_end);
        }
        GenerationDefaults {
            do_sample: generation_config.get("do_sample").and_then(Value::as_bool).unwrap_or(false),
            temperature: f("temperature", 1.0),
            top_k: u("top_k", 50),
            top_p: f("top_p", 1.0),
            min_p: f("min_p", 0.0),
            repetition_penalty: f("repetition_penalty", 1.0),
            max_new_tokens: u("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
            eos_token_ids: eos,
        }
    }
}

/// Parameters after applying defaults and validation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Resolved {
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

pub(crate) fn resolve(p: &SamplingParams, d: &GenerationDefaults) -> Result<Resolved> {
    let bad = |m: String| Err(ModelError::InvalidRequest(m));
    // Like transformers: do_sample=false in the model's config means greedy unless asked.
    let temperature = p.temperature.unwrap_or(if d.do_sample { d.temperature } else { 0.0 });
    let r = Resolved {
        temperature,
        top_k: p.top_k.unwrap_or(d.top_k),
        top_p: p.top_p.unwrap_or(d.top_p),
        min_p: p.min_p.unwrap_or(d.min_p),
        repetition_penalty: p.repetition_penalty.unwrap_or(d.repetition_penalty),
        presence_penalty: p.presence_penalty.unwrap_or(0.0),
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0),
        seed: p.seed.unwrap_or_else(random_seed),
    };
    if !(r.temperature >= 0.0 && r.temperature.is_finite()) {
        return bad(format!("temperature must be >= 0, got {}", r.temperature));
    }
    if !(r.top_p > 0.0 && r.top_p <= 1.0) {
        return bad(format!("top_p must be in (0, 1], got {}", r.top_p));
    }
    if !(0.0..=1.0).contains(&r.min_p) {
        return bad(format!("min_p must be in [0, 1], got {}", r.min_p));
    }
    if !(r.repetition_penalty > 0.0 && r.repetition_penalty.is_finite()) {
        return bad(format!("repetition_penalty must be > 0, got {}", r.repetition_penalty));
    }
    if !r.presence_penalty.is_finite() || !r.frequency_penalty.is_finite() {
        return bad("presence and frequency penalties must be finite".into());
    }
    Ok(r)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; no extra dependency for one number.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.finish()
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub(crate) struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// HuggingFace `RepetitionPenaltyLogitsProcessor` on one logit.
pub(crate) fn repetition_penalized(logit: f32, penalty: f32) -> f32 {
    if logit < 0.0 { logit * penalty } else { logit / penalty }
}

/// A candidate token: id and (processed) logit.
pub(crate) type Candidate = (u32, f32);

/// Sort by logit descending; ties by id so the order never depends on how candidates arrived.
fn sort_desc(c: &mut [Candidate]) {
    c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// HuggingFace `TopKLogitsWarper`: keep every candidate >= the k-th largest (ties kept).
pub(crate) fn top_k_filter(c: &mut Vec<Candidate>, k: usize) {
    if k == 0 || k >= c.len() {
        return;
    }
    sort_desc(c);
    let kth = c[k - 1].1;
    c.retain(|x| x.1 >= kth);
}

/// The softmax of the candidates' logits, in f64, candidates sorted descending.
fn softmax_sorted(c: &[Candidate]) -> Vec<f64> {
    let max = c.first().map_or(0.0, |x| x.1 as f64);
    let e: Vec<f64> = c.iter().map(|x| (x.1 as f64 - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Temperature, then top-k, top-p and min-p (transformers' warper order), then a draw.
/// `c` holds every token still allowed (the whole vocabulary, or a superset of the top-k).
pub(crate) fn sample_from(mut c: Vec<Candidate>, r: &Resolved, rng: &mut Rng) -> u32 {
    debug_assert!(!c.is_empty());
    if r.temperature != 1.0 {
        for x in c.iter_mut() {
            x.1 /= r.temperature;
        }
    }
    top_k_filter(&mut c, r.top_k);
    sort_desc(&mut c);
    let mut probs = softmax_sorted(&c);
    if r.top_p < 1.0 {
        // TopPLogitsWarper: drop a token when the mass strictly above it already reaches top_p
        // (keeps at least one).
        let mut above = 0.0;
        let mut keep = c.len();
        for (i, p) in probs.iter().enumerate() {
            if i > 0 && above >= r.top_p as f64 {
                keep = i;
                break;
            }
            above += p;
        }
        c.truncate(keep);
        probs.truncate(keep);
    }
    if r.min_p > 0.0 {
        // MinPLogitsWarper: keep tokens with p >= min_p * p_max (relative, so no renormalising).
        let threshold = r.min_p as f64 * probs[0];
        let keep = probs.iter().take_while(|&&p| p >= threshold).count().max(1);
        c.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.next_f64() * total;
    for (x, p) in c.iter().zip(&probs) {
        if u < *p {
            return x.0;
        }
        u -= p;
    }
    c.last().map_or(0, |x| x.0)
}

/// Chooses tokens for one request; keeps the ids seen so far for the penalties.
pub(crate) struct Sampler {
    params: Resolved,
    rng: Rng,
    /// Distinct ids of prompt + generated (repetition penalty).
    seen: Vec<u32>,
    seen_set: std::collections::HashSet<u32>,
    /// Occurrences among generated ids (presence and frequency penalties).
    generated: HashMap<u32, u32>,
}

/// Logits are cut into chunks of this many for the top-k search on the device.
const CHUNK: usize = 128;

impl Sampler {
    pub fn new(params: Resolved, prompt: &[u32]) -> Self {
        let mut s = Sampler {
            rng: Rng::new(params.seed),
            params,
            seen: Vec::new(),
            seen_set: Default::default(),
            generated: HashMap::new(),
        };
        for &id in prompt {
            s.note_seen(id);
        }
        s
    }

    fn note_seen(&mut self, id: u32) {
        if self.seen_set.insert(id) {
            self.seen.push(id);
        }
    }

    /// Record a generated token (it then counts for every penalty).
    pub fn push(&mut self, id: u32) {
        self.note_seen(id);
        *self.generated.entry(id).or_default() += 1;
    }

    fn penalties_active(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0
            || (p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) && !self.generated.is_empty()
    }

    /// Apply the penalties on the device: gather the affected logits (a few hundred values),
    /// change them on the host, scatter them back.
    fn apply_penalties(&self, logits: &Tensor) -> Result<Tensor> {
        let p = &self.params;
        let ids: Vec<u32> = if p.repetition_penalty != 1.0 {
            self.seen.clone()
        } else {
            self.generated.keys().copied().collect()
        };
        if ids.is_empty() {
            return Ok(logits.clone());
        }
        let index = Tensor::new(ids.as_slice(), logits.device())?;
        let values = logits.index_select(&index, 0)?.to_vec1::<f32>()?;
        let new: Vec<f32> = ids
            .iter()
            .zip(values)
            .map(|(id, mut v)| {
                if p.repetition_penalty != 1.0 {
                    v = repetition_penalized(v, p.repetition_penalty);
                }
                if let Some(&n) = self.generated.get(id) {
                    v -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
                v
            })
            .collect();
        let new = Tensor::new(new.as_slice(), logits.device())?;
        Ok(logits.scatter(&index, &new, 0)?)
    }

    /// Choose the next token from `logits` of shape (vocab,) or (1, 1, vocab), any float dtype,
    /// on any device.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let mut logits = logits.flatten_all()?.to_dtype(DType::F32)?;
        if self.penalties_active() {
            logits = self.apply_penalties(&logits)?;
        }
        if self.params.is_greedy() {
            return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
        }
        let vocab = logits.dim(0)?;
        let k = self.params.top_k;
        let candidates = if k > 0 && k * CHUNK * 4 < vocab {
            top_k_candidates(&logits, k)?
        } else {
            let all = logits.to_vec1::<f32>()?;
            all.into_iter().enumerate().map(|(i, v)| (i as u32, v)).collect()
        };
        // NaN logits leave no distribution: the top-k search finds no candidate at or above a
        // NaN threshold, and a softmax over NaN is NaN. (Greedy argmax still picks a token.)
        if candidates.is_empty() || candidates.iter().any(|c| c.1.is_nan()) {
            return Err(ModelError::NanLogits);
        }
        Ok(sample_from(candidates, &self.params, &mut self.rng))
    }
}

/// A superset of the top-k logits (every value >= the k-th largest), found with two small
/// transfers: per-chunk maxima, then the chunks whose maximum can reach the top k.
///
/// Why it is exact: the k-th largest chunk maximum `t` has k chunks at or above it, so the k-th
/// largest logit is >= `t`, and every logit >= `t` lives in a chunk whose maximum is >= `t`.
pub(crate) fn top_k_candidates(logits: &Tensor, k: usize) -> Result<Vec<Candidate>> {
    let vocab = logits.dim(0)?;
    let chunks = vocab.div_ceil(CHUNK);
    if k == 0 || k >= chunks {
        // No saving possible: everything is a candidate.
        let all = logits.to_vec1::<f32>()?;
        return Ok(all.into_iter().enumerate().map(|(i, v)| (i as u32, v)).collect());
    }
    let padded = if chunks * CHUNK == vocab {
        logits.clone()
    } else {
        let pad = Tensor::full(f32::NEG_INFINITY, chunks * CHUNK - vocab, logits.device())?;
        Tensor::cat(&[logits, &pad], 0)?
    };
    let grid = padded.reshape((chunks, CHUNK))?;
    let maxima = grid.max(D::Minus1)?.to_vec1::<f32>()?;
    if maxima.iter().any(|m| m.is_nan()) {
        return Err(ModelError::NanLogits);
    }
    let mut sorted = maxima.clone();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let t = sorted[k - 1];
    let rows: Vec<u32> = (0..chunks as u32).filter(|&i| maxima[i as usize] >= t).collect();
    let index = Tensor::new(rows.as_slice(), logits.device())?;
    let values = grid.index_select(&index, 0)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(k * 2);
    for (r, row) in rows.iter().enumerate() {
        for j in 0..CHUNK {
            let id = *row as usize * CHUNK + j;
            let v = values[r * CHUNK + j];
            if id < vocab && v >= t {
                out.push((id as u32, v));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn params(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> Resolved {
        Resolved {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 7,
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        assert_eq!(repetition_penalized(2.6, 1.3), 2.6 / 1.3);
        assert_eq!(repetition_penalized(-1.0, 1.3), -1.3);
        assert_eq!(repetition_penalized(0.0, 1.3), 0.0);
    }

    #[test]
    fn penalties_apply_to_distinct_ids_once() {
        let logits = Tensor::new(&[2.0f32, -2.0, 1.0, 0.5], &Device::Cpu).unwrap();
        let mut p = params(0.0, 0, 1.0, 0.0);
        p.repetition_penalty = 2.0;
        // Id 0 appears three times in the prompt: penalised once, not three times.
        let s = Sampler::new(p, &[0, 0, 0, 1]);
        let out = s.apply_penalties(&logits).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(out, vec![1.0, -4.0, 1.0, 0.5]);
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let logits = Tensor::new(&[3.0f32, 2.0, 1.0], &Device::Cpu).unwrap();
        let mut p = params(0.0, 0, 1.0, 0.0);
        assert_eq!(Sampler::new(p.clone(), &[0]).sample(&logits).unwrap(), 0);
        p.repetition_penalty = 2.0; // 3.0 -> 1.5 < 2.0
        assert_eq!(Sampler::new(p, &[0]).sample(&logits).unwrap(), 1);
    }

    #[test]
    fn presence_and_frequency_count_generated_tokens_only() {
        let logits = Tensor::new(&[5.0f32, 4.0, 0.0], &Device::Cpu).unwrap();
        let mut p = params(0.0, 0, 1.0, 0.0);
        p.presence_penalty = 0.5;
        p.frequency_penalty = 1.0;
        let mut s = Sampler::new(p, &[0, 1]); // prompt ids are not penalised
        assert_eq!(s.apply_penalties(&logits).unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 4.0, 0.0]);
        s.push(0);
        s.push(0);
        // 5 - 0.5 - 2 * 1.0 = 2.5
        assert_eq!(s.apply_penalties(&logits).unwrap().to_vec1::<f32>().unwrap(), vec![2.5, 4.0, 0.0]);
    }

    #[test]
    fn top_k_keeps_ties() {
        let mut c = vec![(0, 1.0), (1, 3.0), (2, 2.0), (3, 2.0), (4, 0.0)];
        top_k_filter(&mut c, 2);
        let mut ids: Vec<u32> = c.iter().map(|x| x.0).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities 0.5, 0.3, 0.2 (logits are their logs)
        let c: Vec<Candidate> = vec![(0, 0.5f32.ln()), (1, 0.3f32.ln()), (2, 0.2f32.ln())];
        let r = params(1.0, 0, 0.6, 0.0);
        let mut rng = Rng::new(1);
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            seen[sample_from(c.clone(), &r, &mut rng) as usize] += 1;
        }
        // Mass above id 1 is 0.5 < 0.6, so it stays; above id 2 is 0.8 >= 0.6, so it goes.
        assert_eq!(seen[2], 0);
        assert!(seen[0] > 1000 && seen[1] > 500, "{seen:?}");
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let c: Vec<Candidate> = vec![(0, 0.6f32.ln()), (1, 0.35f32.ln()), (2, 0.05f32.ln())];
        let r = params(1.0, 0, 1.0, 0.1); // threshold 0.06
        let mut rng = Rng::new(3);
        for _ in 0..2000 {
            assert_ne!(sample_from(c.clone(), &r, &mut rng), 2);
        }
    }

    #[test]
    fn top_k_candidates_match_a_full_sort() {
        let mut rng = Rng::new(11);
        let vocab = 5000;
        let values: Vec<f32> = (0..vocab).map(|_| (rng.next_f64() * 20.0 - 10.0) as f32).collect();
        let logits = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        for k in [1, 5, 20] {
            let mut got = top_k_candidates(&logits, k).unwrap();
            top_k_filter(&mut got, k);
            let mut all: Vec<Candidate> = values.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            top_k_filter(&mut all, k);
            sort_desc(&mut got);
            sort_desc(&mut all);
            assert_eq!(got, all, "k={k}");
        }
    }

    #[test]
    fn nan_logits_are_a_specific_error_not_a_panic() {
        let vocab = 16384;
        let all_nan = Tensor::new(vec![f32::NAN; vocab].as_slice(), &Device::Cpu).unwrap();
        let mut one_nan: Vec<f32> = (0..vocab).map(|i| (i % 97) as f32 / 10.0).collect();
        one_nan[vocab / 2] = f32::NAN;
        let one_nan = Tensor::new(one_nan.as_slice(), &Device::Cpu).unwrap();
        // The chunked top-k search (k * 512 < vocab), with min_p, and the whole-vocabulary path.
        for (top_k, min_p) in [(20, 0.1), (20, 0.0), (0, 0.0)] {
            let mut s = Sampler::new(params(1.0, top_k, 1.0, min_p), &[]);
            assert!(matches!(s.sample(&all_nan), Err(ModelError::NanLogits)), "top_k {top_k}");
        }
        // The whole vocabulary is on the host: one NaN is seen. (The chunked search sees only the
        // chunk maxima, which skip a NaN that is not first in its chunk; NaN from broken weights
        // reaches every logit.)
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0.0), &[]);
        assert!(matches!(s.sample(&one_nan), Err(ModelError::NanLogits)));
        // Greedy has no distribution to break: argmax still answers.
        assert!(Sampler::new(params(0.0, 20, 1.0, 0.0), &[]).sample(&all_nan).is_ok());
    }

    #[test]
    fn same_seed_same_draws() {
        let c: Vec<Candidate> = (0..50).map(|i| (i, (i as f32).sin())).collect();
        let r = params(0.8, 20, 0.9, 0.0);
        let a: Vec<u32> = {
            let mut rng = Rng::new(42);
            (0..20).map(|_| sample_from(c.clone(), &r, &mut rng)).collect()
        };
        let b: Vec<u32> = {
            let mut rng = Rng::new(42);
            (0..20).map(|_| sample_from(c.clone(), &r, &mut rng)).collect()
        };
        assert_eq!(a, b);
    }
}
