//! `pipehost quantize`: a safetensors Qwen3 checkpoint written as a quantized GGUF file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::model::{self, ModelSpec, QuantChoice};

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A local HuggingFace model folder or a hub id (safetensors).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,
    /// q8_0 or q4_k (see docs/model.md for which tensors stay q8_0 or f32).
    #[arg(long, value_name = "TYPE")]
    pub to: QuantChoice,
    /// The GGUF file to write (llama.cpp-compatible metadata, arch qwen3).
    #[arg(long, value_name = "FILE.gguf")]
    pub out: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<ExitCode> {
    if !matches!(args.to, QuantChoice::Q8_0 | QuantChoice::Q4K) {
        anyhow::bail!("--to must be q8_0 or q4_k");
    }
    let started = Instant::now();
    let spec = ModelSpec::new(&args.model);
    let report = model::write_gguf(&spec, args.to, &args.out)
        .with_context(|| format!("quantizing {} into {}", args.model, args.out.display()))?;
    let types: Vec<String> = report.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "wrote {} ({} tensors: {}; {:.1} MB) in {:.1} s",
        args.out.display(),
        report.tensors,
        types.join(", "),
        report.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
