//! `pipehost generate`: one prompt through the model engine, streamed to stdout
//! (or one JSON object with `--json`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::model::{
    self, ChatMessage, DEFAULT_MODEL, DTypeChoice, DeviceChoice, Engine, Event, GenerateRequest, ModelSpec,
    Prompt, QuantChoice, SamplingParams,
};

/// Which model to load and where: shared by `generate` and `bench model`.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A local HuggingFace model folder, a hub id fetched into the HuggingFace cache
    /// (honours HF_HOME, HF_HUB_OFFLINE, HF_TOKEN), or a Qwen3 `.gguf` file (CPU).
    #[arg(long, value_name = "DIR|HUB_ID|FILE.gguf", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// auto (CUDA if compiled in and present, else CPU), cpu, cuda[:N] or metal[:N].
    #[arg(long, value_name = "D", default_value = "auto")]
    pub device: DeviceChoice,
    /// auto (bf16 on GPU, f32 on CPU), f32, bf16 or f16.
    #[arg(long, value_name = "T", default_value = "auto")]
    pub dtype: DTypeChoice,
    /// Quantize the weights as they load (CPU, f32 activations): auto (the CPU default when
    /// --dtype is auto, see docs/performance.md; none on GPUs), none, q8_0 or q4_k.
    #[arg(long, value_name = "Q", default_value = "auto")]
    pub quantize: QuantChoice,
}

impl ModelArgs {
    /// Load the model and say what was loaded on stderr.
    pub fn load(&self) -> Result<model::Model> {
        let mut spec = ModelSpec::new(&self.model);
        spec.device = self.device;
        spec.dtype = self.dtype;
        spec.quantize = self.quantize;
        let model = model::load(&spec).with_context(|| format!("loading {}", self.model))?;
        eprintln!("{}", model.info());
        Ok(model)
    }
}

/// Generate text from a prompt.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user message (or, with --raw, the whole prompt). Read from stdin when absent and
    /// --messages is not given.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// A system message before the prompt.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["raw", "messages"])]
    pub system: Option<String>,
    /// A JSON array of {"role", "content"} messages, rendered with the chat template.
    #[arg(long, value_name = "FILE.json", conflicts_with_all = ["raw", "prompt"])]
    pub messages: Option<PathBuf>,
    /// Tokenize the prompt as-is (special tokens in it are recognised), no chat template.
    #[arg(long)]
    pub raw: bool,
    /// Extra chat-template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long, value_name = "JSON")]
    pub template_kwargs: Option<String>,
    /// Most tokens to generate (default: the model's generation_config, else 512).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// 0 is greedy (default: the model's generation_config).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// 0 disables top-k.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    /// HuggingFace semantics, over prompt and generated tokens.
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f32>,
    /// OpenAI semantics, over generated tokens.
    #[arg(long, value_name = "X")]
    pub presence_penalty: Option<f32>,
    /// OpenAI semantics, over generated tokens.
    #[arg(long, value_name = "X")]
    pub frequency_penalty: Option<f32>,
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable); it is not printed.
    #[arg(long, value_name = "STR")]
    pub stop: Vec<String>,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object (ids, text, finish reason, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

impl GenerateArgs {
    fn prompt(&self) -> Result<Prompt> {
        let kwargs = match &self.template_kwargs {
            Some(s) => match serde_json::from_str(s).context("--template-kwargs")? {
                serde_json::Value::Object(m) => m,
                _ => bail!("--template-kwargs must be a JSON object"),
            },
            None => serde_json::Map::new(),
        };
        if let Some(path) = &self.messages {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let messages: Vec<ChatMessage> = serde_json::from_str(&text).with_context(|| {
                format!("{}: expected a JSON array of {{\"role\", \"content\"}}", path.display())
            })?;
            return Ok(Prompt::Chat { messages, template_kwargs: kwargs });
        }
        let text = match &self.prompt {
            Some(p) => p.clone(),
            None => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the prompt from stdin")?;
                s
            }
        };
        if self.raw {
            return Ok(Prompt::Raw(text));
        }
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::new("user", text));
        Ok(Prompt::Chat { messages, template_kwargs: kwargs })
    }

    fn request(&self) -> Result<GenerateRequest> {
        let mut req = GenerateRequest::new(self.prompt()?);
        req.sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        };
        req.max_new_tokens = self.max_tokens;
        req.stop = self.stop.clone();
        req.ignore_eos = self.ignore_eos;
        Ok(req)
    }
}

/// `--json` output; a struct so the keys keep the documented order.
#[derive(serde::Serialize)]
struct JsonOutput<'a> {
    prompt_ids: &'a [u32],
    token_ids: &'a [u32],
    text: &'a str,
    finish_reason: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    prefill_ms: f64,
    decode_tokens_per_s: f64,
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let request = args.request()?;
    let model = args.model.load()?;
    let engine = Engine::start(model, 1);
    let events = engine.submit_blocking(request)?;
    let mut text = String::new();
    let mut stdout = std::io::stdout().lock();
    for event in events {
        match event {
            Event::Delta(delta) => {
                if !args.json {
                    // A closed pipe (e.g. `| head`) ends the run quietly.
                    if stdout.write_all(delta.as_bytes()).and_then(|_| stdout.flush()).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                text.push_str(&delta);
            }
            Event::Error(e) => return Err(e).context("generating"),
            Event::Done(r) => {
                if args.json {
                    let out = JsonOutput {
                        prompt_ids: &r.prompt_ids,
                        token_ids: &r.token_ids,
                        text: &text,
                        finish_reason: r.finish_reason.as_str(),
                        prompt_tokens: r.prompt_tokens,
                        completion_tokens: r.completion_tokens,
                        prefill_ms: r.prefill_ms,
                        decode_tokens_per_s: r.decode_tokens_per_s,
                    };
                    let _ = writeln!(stdout, "{}", serde_json::to_string(&out)?);
                } else {
                    let _ = writeln!(stdout);
                    eprintln!(
                        "[{} prompt tokens, {} generated, finish: {}, prefill {:.0} ms, decode {:.2} tokens/s, seed {}]",
                        r.prompt_tokens,
                        r.completion_tokens,
                        r.finish_reason.as_str(),
                        r.prefill_ms,
                        r.decode_tokens_per_s,
                        r.seed
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    bail!("the model engine stopped without finishing the request")
}
