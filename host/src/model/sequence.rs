//! One request as a state machine the batched engine advances a step at a time: prompt to
//! feed (in chunks), then one token per step with its own sampler, seed, stop strings and
//! text stream. Nothing in it depends on what else is in the batch.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use tokenizers::Tokenizer;

use super::detokenize::IncrementalDecoder;
use super::error::Result;
use super::generate::{FinishReason, Report};
use super::qwen3::SeqCache;
use super::sampling::{Resolved, Sampler};
use super::stop::{StopMatcher, StopOutcome};

/// A request's resolved inputs: what [`super::Model::prepare`] makes of a `GenerateRequest`.
pub(crate) struct Prepared {
    pub prompt_ids: Vec<u32>,
    pub params: Resolved,
    pub max_new: usize,
    pub eos: Vec<u32>,
    pub stop: Vec<String>,
}

impl Prepared {
    /// The most tokens the sequence can hold in its KV cache: the prompt and every generated
    /// token but the last (which is never fed back).
    pub fn kv_tokens(&self) -> usize {
        self.prompt_ids.len() + self.max_new.saturating_sub(1)
    }
}

pub(crate) struct Sequence {
    pub prompt_ids: Vec<u32>,
    /// Prompt tokens already in the cache (a restored prefix included).
    fed: usize,
    pub cached_tokens: usize,
    sampler: Sampler,
    stop: StopMatcher,
    text: IncrementalDecoder,
    pub tokens: Vec<u32>,
    max_new: usize,
    eos: Vec<u32>,
    pub cache: SeqCache,
    seed: u64,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    finished: Option<FinishReason>,
}

/// What a step's input for a sequence is: its tokens and whether logits are wanted after them.
pub(crate) struct Feed<'a> {
    pub ids: &'a [u32],
    pub want_logits: bool,
}

impl Sequence {
    pub fn new(
        prepared: Prepared,
        cache: SeqCache,
        cached_tokens: usize,
        tokenizer: Arc<Tokenizer>,
        submitted: Instant,
    ) -> Self {
        let seed = prepared.params.seed;
        Sequence {
            sampler: Sampler::new(prepared.params, &prepared.prompt_ids),
            stop: StopMatcher::new(&prepared.stop),
            text: IncrementalDecoder::new(tokenizer, true),
            fed: cached_tokens,
            cached_tokens,
            prompt_ids: prepared.prompt_ids,
            tokens: Vec::new(),
            max_new: prepared.max_new,
            eos: prepared.eos,
            cache,
            seed,
            submitted,
            admitted: Instant::now(),
            first_token: None,
            finished: if prepared.max_new == 0 { Some(FinishReason::Length) } else { None },
        }
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    pub fn in_prefill(&self) -> bool {
        self.fed < self.prompt_ids.len()
    }

    /// Prompt tokens still to feed.
    pub fn prompt_left(&self) -> usize {
        self.prompt_ids.len() - self.fed
    }

    /// The next step's input: up to `budget` prompt tokens while prefilling, else the last token.
    pub fn feed(&self, budget: usize) -> Feed<'_> {
        if self.in_prefill() {
            let n = budget.clamp(1, self.prompt_left());
            Feed {
                ids: &self.prompt_ids[self.fed..self.fed + n],
                want_logits: self.fed + n == self.prompt_ids.len(),
            }
        } else {
            Feed {
                ids: std::slice::from_ref(self.tokens.last().expect("decoding follows a token")),
                want_logits: true,
            }
        }
    }

    /// Takes the result of a step that fed `fed` tokens: samples the next token from `logits`
    /// when there are any, and passes newly final text to `emit` (returning `false` there
    /// cancels). Returns whether the sequence has finished.
    pub fn advance(
        &mut self,
        fed: usize,
        logits: Option<&Tensor>,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Option<FinishReason>> {
        if self.in_prefill() {
            self.fed += fed;
        }
        let Some(logits) = logits else { return Ok(None) };
        let token = self.sampler.sample(logits)?;
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
        self.tokens.push(token);
        self.sampler.push(token);
        let finish = self.after_token(token, emit)?;
        self.finished = finish;
        Ok(finish)
    }

    fn after_token(
        &mut self,
        token: u32,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Option<FinishReason>> {
        if self.eos.contains(&token) {
            return self.end(FinishReason::Eos, emit).map(Some);
        }
        let delta = self.text.push(token)?;
        match self.stop.push(&delta) {
            StopOutcome::Emit(t) => {
                if !emit(&t) {
                    return Ok(Some(FinishReason::Cancelled));
                }
            }
            StopOutcome::Stopped(t) => {
                emit(&t);
                return Ok(Some(FinishReason::Stop));
            }
        }
        if self.tokens.len() >= self.max_new {
            return self.end(FinishReason::Length, emit).map(Some);
        }
        Ok(None)
    }

    /// Ends the text: an unfinished character, then text held for a stop string that never
    /// came. A stop string in that tail still ends as `Stop`.
    fn end(&mut self, reason: FinishReason, emit: &mut dyn FnMut(&str) -> bool) -> Result<FinishReason> {
        let tail = self.text.finish()?;
        let tail = match self.stop.push(&tail) {
            StopOutcome::Emit(t) => t + &self.stop.finish(),
            StopOutcome::Stopped(t) => {
                emit(&t);
                return Ok(FinishReason::Stop);
            }
        };
        if !tail.is_empty() {
            emit(&tail);
        }
        Ok(reason)
    }

    /// Marks the sequence cancelled (its reader left or asked it to stop).
    pub fn cancel(&mut self) {
        self.finished.get_or_insert(FinishReason::Cancelled);
    }

    /// The report of a finished (or cancelled) sequence.
    pub fn report(&self) -> Report {
        let reason = self.finished.unwrap_or(FinishReason::Cancelled);
        let now = Instant::now();
        let prefill_ms = self.first_token.map(|t| (t - self.admitted).as_secs_f64() * 1000.0).unwrap_or(0.0);
        let decode_s = self.first_token.map(|t| (now - t).as_secs_f64()).unwrap_or(0.0);
        let completion_tokens = self.tokens.len();
        let decode_tokens_per_s = if completion_tokens > 1 && decode_s > 0.0 {
            (completion_tokens - 1) as f64 / decode_s
        } else {
            0.0
        };
        Report {
            prompt_ids: self.prompt_ids.clone(),
            token_ids: self.tokens.clone(),
            prompt_tokens: self.prompt_ids.len(),
            completion_tokens,
            finish_reason: reason,
            prefill_ms,
            decode_tokens_per_s,
            seed: self.seed,
            cached_tokens: self.cached_tokens,
            queue_ms: (self.admitted - self.submitted).as_secs_f64() * 1000.0,
        }
    }

    /// The tokens whose keys and values are in the cache, for the prefix cache.
    pub fn cached_ids(&self) -> Vec<u32> {
        let mut ids = self.prompt_ids[..self.fed].to_vec();
        if !self.in_prefill() {
            ids.extend_from_slice(&self.tokens[..self.tokens.len().saturating_sub(1)]);
        }
        ids.truncate(self.cache.len());
        ids
    }
}
