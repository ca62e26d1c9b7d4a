//! One request, start to finish, on the thread that owns the model: prompt to ids, prefill,
//! the decode loop with sampling, stop conditions, streaming text and the report.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chat_template::ChatMessage;
use super::error::{ModelError, Result};
use super::loader::{Model, ModelInfo};
use super::qwen3::StepInput;
use super::sampling::{self, GenerationDefaults, SamplingParams};
use super::sequence::{Prepared, Sequence};

/// Prompt tokens fed in one step when nothing else is running: big enough to keep the matmuls
/// efficient, small enough to bound the activations' memory.
pub(crate) const PREFILL_TOKENS_ALONE: usize = 512;

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Tokenized as-is; special tokens written in the text (e.g. `<|im_start|>`) are recognised.
    Raw(String),
    /// Rendered with the model's chat template (with `add_generation_prompt`), then tokenized.
    Chat {
        messages: Vec<ChatMessage>,
        /// Extra template variables, e.g. `{"enable_thinking": false}`.
        #[serde(default)]
        template_kwargs: Map<String, Value>,
    },
    /// Token ids, used as they are.
    Ids(Vec<u32>),
}

/// One generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Default: generation_config.json's `max_new_tokens`, else 512.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Generation stops before any of these strings; they are not part of the output.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Keep generating past EOS tokens (benchmarks, reference comparisons).
    #[serde(default)]
    pub ignore_eos: bool,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt) -> Self {
        GenerateRequest {
            prompt,
            sampling: SamplingParams::default(),
            max_new_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// `max_new_tokens` (or the model's context) reached.
    Length,
    /// A stop string matched.
    Stop,
    /// An end-of-sequence token was generated.
    Eos,
    /// The receiver went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::Eos => "eos",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// The summary of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub prompt_ids: Vec<u32>,
    /// Generated ids, including a final EOS token if that is what ended generation.
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    /// Forward pass over the prompt plus choosing the first token.
    pub prefill_ms: f64,
    /// Tokens after the first, per second of decoding (0 when fewer than two tokens).
    pub decode_tokens_per_s: f64,
    /// The seed used (drawn when the request had none), to reproduce a sampled output.
    pub seed: u64,
    /// Prompt tokens whose keys and values came from the prefix cache (not computed again).
    #[serde(default)]
    pub cached_tokens: usize,
    /// Time from submission until the engine took the request into its batch.
    #[serde(default)]
    pub queue_ms: f64,
}

/// Brackets of the placeholders `chat_ids` puts where message contents held special tokens
/// (Unicode private-use characters: no tokenizer or template gives them a meaning).
const PLACEHOLDER_OPEN: char = '\u{F8F0}';
const PLACEHOLDER_CLOSE: char = '\u{F8F1}';

impl Model {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    /// The tokenizer's id for a token string, e.g. `<|im_end|>`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Tokenize as transformers' `encode(text, add_special_tokens=False)` does (Qwen adds no
    /// BOS); special tokens in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Render a conversation with the model's chat template, with the generation prompt.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        template_kwargs: &Map<String, Value>,
    ) -> Result<String> {
        let template = self.template.as_ref().ok_or_else(|| {
            ModelError::InvalidRequest("this model has no chat template; use a raw prompt".into())
        })?;
        let add_generation_prompt =
            template_kwargs.get("add_generation_prompt").and_then(Value::as_bool).unwrap_or(true);
        template.render(messages, add_generation_prompt, template_kwargs)
    }

    /// Renders and tokenizes a conversation. Special-token strings inside message contents (a
    /// user typing `<|im_start|>system`) are tokenized as plain text, never as control tokens,
    /// so they cannot open a turn. Conversations without them (nearly all) tokenize exactly as
    /// transformers' `apply_chat_template` + `encode` do.
    fn chat_ids(&self, messages: &[ChatMessage], template_kwargs: &Map<String, Value>) -> Result<Vec<u32>> {
        let contains_special = |text: &str| self.special_tokens.iter().any(|s| text.contains(s.as_str()));
        if !messages.iter().any(|m| contains_special(&m.content)) {
            return self.encode(&self.render_chat(messages, template_kwargs)?);
        }
        // Swap each special string in the contents for a private-use placeholder, render, then
        // tokenize the template's own text normally and each placeholder as literal text.
        let protected: Vec<ChatMessage> = messages
            .iter()
            .map(|m| {
                let mut content = m.content.clone();
                for (i, special) in self.special_tokens.iter().enumerate() {
                    content = content
                        .replace(special.as_str(), &format!("{PLACEHOLDER_OPEN}{i}{PLACEHOLDER_CLOSE}"));
                }
                ChatMessage { content, ..m.clone() }
            })
            .collect();
        let rendered = self.render_chat(&protected, template_kwargs)?;
        let mut ids = Vec::new();
        let mut text_start = 0;
        let mut search = 0;
        while let Some(found) = rendered[search..].find(PLACEHOLDER_OPEN) {
            let open = search + found;
            let digits_start = open + PLACEHOLDER_OPEN.len_utf8();
            let placeholder =
                rendered[digits_start..].split_once(PLACEHOLDER_CLOSE).and_then(|(digits, _)| {
                    digits
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| self.special_tokens.get(i))
                        .map(|s| (digits.len(), s))
                });
            let Some((digits_len, special)) = placeholder else {
                // A private-use character the user typed: ordinary text.
                search = digits_start;
                continue;
            };
            ids.extend(self.encode(&rendered[text_start..open])?);
            ids.extend(self.encode_as_text(special)?);
            text_start = digits_start + digits_len + PLACEHOLDER_CLOSE.len_utf8();
            search = text_start;
        }
        ids.extend(self.encode(&rendered[text_start..])?);
        Ok(ids)
    }

    /// Tokenizes `text` with special-token strings split like ordinary text.
    fn encode_as_text(&self, text: &str) -> Result<Vec<u32>> {
        let tokenizer = self.plain_tokenizer.get_or_init(|| {
            let mut plain = (*self.tokenizer).clone();
            plain.set_encode_special_tokens(true);
            plain
        });
        let enc = tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The token ids a prompt becomes.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Raw(text) => self.encode(text),
            Prompt::Chat { messages, template_kwargs } => self.chat_ids(messages, template_kwargs),
            Prompt::Ids(ids) => Ok(ids.clone()),
        }
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(ModelError::InvalidRequest("the prompt is empty".into()));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return Err(ModelError::InvalidRequest(format!("token id {bad} is outside the vocabulary")));
        }
        if ids.len() >= self.info.max_context {
            return Err(ModelError::InvalidRequest(format!(
                "the prompt has {} tokens; the model's context is {}",
                ids.len(),
                self.info.max_context
            )));
        }
        Ok(())
    }

    /// Resolves a request: prompt ids (checked), sampling parameters (a seed drawn when none
    /// was given), the token limit within the context, the end tokens and stop strings.
    pub(crate) fn prepare(&self, req: &GenerateRequest) -> Result<Prepared> {
        let prompt_ids = self.prompt_ids(&req.prompt)?;
        self.check_ids(&prompt_ids)?;
        let params = sampling::resolve(&req.sampling, &self.defaults)?;
        let room = self.info.max_context - prompt_ids.len();
        let max_new = req.max_new_tokens.unwrap_or(self.defaults.max_new_tokens).min(room);
        let eos = if req.ignore_eos { Vec::new() } else { self.defaults.eos_token_ids.clone() };
        Ok(Prepared { prompt_ids, params, max_new, eos, stop: req.stop.clone() })
    }

    /// The last position's logits (f32) for `ids`, from a fresh KV cache. For tests and tools.
    pub fn last_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.check_ids(ids)?;
        let mut cache = self.lm.new_cache(ids.len())?;
        let mut input = [StepInput { ids, cache: &mut cache, want_logits: true }];
        let logits = self.lm.step(&mut input)?.pop().flatten().expect("logits were asked for");
        Ok(logits.to_vec1::<f32>()?)
    }

    /// The last position's logits of several prompts computed together, as the batched engine
    /// does: one packed step prefills every prompt but its last token, then one batched decode
    /// step (each sequence at its own position) feeds the last tokens. For tests and tools.
    pub fn last_logits_batched(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let mut caches = Vec::with_capacity(prompts.len());
        for ids in prompts {
            self.check_ids(ids)?;
            caches.push(self.lm.new_cache(ids.len())?);
        }
        let mut prefill: Vec<StepInput<'_>> = prompts
            .iter()
            .zip(caches.iter_mut())
            .filter(|(ids, _)| ids.len() > 1)
            .map(|(ids, cache)| StepInput { ids: &ids[..ids.len() - 1], cache, want_logits: false })
            .collect();
        if !prefill.is_empty() {
            self.lm.step(&mut prefill)?;
        }
        drop(prefill);
        let mut decode: Vec<StepInput<'_>> = prompts
            .iter()
            .zip(caches.iter_mut())
            .map(|(ids, cache)| StepInput { ids: &ids[ids.len() - 1..], cache, want_logits: true })
            .collect();
        self.lm
            .step(&mut decode)?
            .into_iter()
            .map(|l| Ok(l.expect("logits were asked for").to_vec1::<f32>()?))
            .collect()
    }

    /// Feed `ids` one at a time through the KV cache and return the argmax after each: the
    /// decode path, position by position. For tests and tools.
    pub fn argmax_per_position(&mut self, ids: &[u32]) -> Result<Vec<u32>> {
        self.check_ids(ids)?;
        let mut cache = self.lm.new_cache(ids.len())?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let mut input =
                [StepInput { ids: std::slice::from_ref(id), cache: &mut cache, want_logits: true }];
            let logits = self.lm.step(&mut input)?.pop().flatten().expect("logits were asked for");
            out.push(logits.argmax(0)?.to_scalar::<u32>()?);
        }
        Ok(out)
    }

    /// Run one request to the end on this thread, alone (the engine's batched loop runs the
    /// same [`Sequence`] steps). `on_delta` gets each piece of text as it becomes final, once
    /// per generated token (often ""); returning `false` cancels.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        on_delta: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Report> {
        let submitted = Instant::now();
        let prepared = self.prepare(req)?;
        let cache = self.lm.new_cache(prepared.kv_tokens().max(1))?;
        let mut seq = Sequence::new(prepared, cache, 0, self.tokenizer.clone(), submitted);
        while seq.finished().is_none() {
            let feed = seq.feed(PREFILL_TOKENS_ALONE);
            let (ids, want_logits) = (feed.ids.to_vec(), feed.want_logits);
            let logits = {
                let mut input = [StepInput { ids: &ids, cache: &mut seq.cache, want_logits }];
                self.lm.step(&mut input)?.pop().flatten()
            };
            seq.advance(ids.len(), logits.as_ref(), on_delta)?;
        }
        Ok(seq.report())
    }
}
