//! A tiny self-made Qwen3 model folder for fast tests that need no shared data: a byte-level
//! BPE tokenizer trained here (Qwen's pre-tokenizer, a few hundred tokens, ChatML specials)
//! and random weights (hidden 32, 2 layers). Deterministic: same files every time.

use std::path::Path;

use serde_json::json;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, TokenizerBuilder, TokenizerImpl,
};

use super::error::{ModelError, Result};
use super::loader::DTypeChoice;
use super::random_model::{Qwen3Shape, RandomWeights, write_random_model};

/// Qwen2/Qwen3's pre-tokenizer regex (from the real tokenizer.json).
const QWEN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Special tokens, in id order from 0.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A plain ChatML template (the fixture is not Qwen; the real template is tested against the
/// reference data).
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + \
message.content + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const VOCAB: usize = 400;

fn corpus() -> Vec<String> {
    let english = [
        "The quick brown fox jumps over the lazy dog.",
        "Autumn nights are long, and the wind is cold.",
        "We said goodbye at the station, under the yellow lamps.",
        "Write a short poem about parting on an autumn night!",
        "Tokens, bytes, and characters are not the same thing; remember that.",
        "What is 17 * 23? It is 391.",
    ];
    let chinese = ["秋夜离别", "写一首关于秋夜离别的短诗。", "你好，世界！", "请用三句话介绍一下长城。"];
    let mut out = Vec::new();
    for i in 0..200 {
        out.push(format!("{} {} ({i})", english[i % english.len()], english[(i * 7 + 3) % english.len()]));
        // Chinese only rarely: most of its characters stay split into byte tokens, which is
        // what the incremental-detokenization tests need.
        if i % 50 == 0 {
            out.push(chinese[i / 50 % chinese.len()].to_string());
        }
    }
    out
}

/// Train the fixture tokenizer and save it as `dir/tokenizer.json`.
pub fn write_tokenizer(dir: &Path) -> Result<()> {
    let err = |e: tokenizers::Error| ModelError::Tokenizer(e.to_string());
    let split = Split::new(SplitPattern::Regex(QWEN_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(err)?;
    let pre = Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]);
    let mut tok: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(Some(NFC.into()))
        .with_pre_tokenizer(Some(pre.into()))
        .with_post_processor(Some(ByteLevel::new(false, false, false).into()))
        .with_decoder(Some(ByteLevel::new(false, false, false).into()))
        .build()
        .map_err(err)?;
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(VOCAB)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials.clone())
        .build();
    tok.train(&mut trainer, corpus().into_iter()).map_err(err)?;
    tok.add_special_tokens(specials).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    tok.save(dir.join("tokenizer.json"), false).map_err(err)?;
    let config = json!({
        "chat_template": CHATML_TEMPLATE,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": null,
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap_or_default())
        .map_err(|e| ModelError::io(&path, e))
}

/// The fixture's model shape: vocabulary of the trained tokenizer, everything else tiny.
pub fn shape() -> Qwen3Shape {
    Qwen3Shape {
        vocab_size: VOCAB,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        tie_word_embeddings: true,
        max_position_embeddings: 512,
        rope_theta: 1_000_000.0,
    }
}

/// Write the whole fixture model folder into `dir`.
pub fn write_tiny_model(dir: &Path) -> Result<()> {
    write_tokenizer(dir)?;
    // Large-ish weights (like the reference's std 0.2) give peaked, varied distributions, so
    // sampling tests see different tokens for different seeds.
    let weights = RandomWeights { std: 0.3, norm_std: 0.1, seed: 20_240_601, dtype: DTypeChoice::F32 };
    write_random_model(&shape(), &weights, dir, dir)?;
    // The fixture ends on <|im_end|> (id 2) only; `<|endoftext|>` is a pad token here.
    let gen_config =
        json!({"do_sample": true, "eos_token_id": [2], "temperature": 0.7, "top_k": 20, "top_p": 0.8});
    let path = dir.join("generation_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&gen_config).unwrap_or_default())
        .map_err(|e| ModelError::io(&path, e))
}
