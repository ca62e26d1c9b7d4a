//! `pipehost dev ...`: developer tools (test and benchmark inputs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::model::{self, DTypeChoice, Qwen3Shape, RandomWeights};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write a random-weight Qwen3 model folder of a real shape (for benchmarks without
    /// downloads).
    RandomModel(RandomModelArgs),
    /// Write the tiny self-made test model (trained BPE tokenizer, random weights, ~100 KB).
    TinyModel {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RandomModelArgs {
    /// qwen3-0.6b or qwen3-4b.
    #[arg(long)]
    pub shape: Qwen3Shape,
    /// f32, bf16 or f16 (the dtype stored in model.safetensors).
    #[arg(long, default_value = "f32")]
    pub dtype: DTypeChoice,
    /// A folder with the tokenizer to copy (tokenizer.json, tokenizer_config.json), e.g. a real
    /// Qwen3 model folder or shared/reference/tiny-qwen3.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: PathBuf,
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cmd: DevCommand) -> Result<ExitCode> {
    match cmd {
        DevCommand::RandomModel(a) => {
            let weights = RandomWeights { seed: a.seed, dtype: a.dtype, ..RandomWeights::default() };
            eprintln!(
                "writing a random {} model ({} parameters) to {}",
                a.dtype_label(),
                a.shape.parameters(),
                a.out.display()
            );
            model::write_random_model(&a.shape, &weights, &a.tokenizer, &a.out)
                .with_context(|| format!("writing {}", a.out.display()))?;
        }
        DevCommand::TinyModel { out } => {
            model::fixture::write_tiny_model(&out).with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl RandomModelArgs {
    fn dtype_label(&self) -> &'static str {
        match self.dtype {
            DTypeChoice::Bf16 => "bf16",
            DTypeChoice::F16 => "f16",
            _ => "f32",
        }
    }
}
