//! `pipehost check`: loads every pipeline (and the plugins they use) and prints every error,
//! one per line as `file:line:col: message`; exit status 1 if there is any.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use crate::pipeline::{Registry, default_pipelines_dir};
use crate::plugin::{PluginRuntime, RuntimeConfig, default_plugins_dir};

/// Validate pipeline files.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pipelines folder (default: $PIPEHOST_PIPELINES_DIR, else ./pipelines).
    #[arg(long, value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
    /// The plugins folder (default: $PIPEHOST_PLUGINS_DIR, else plugins/dist).
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let pipelines = args.pipelines.unwrap_or_else(default_pipelines_dir);
    let plugins = args.plugins.unwrap_or_else(default_plugins_dir);
    if !pipelines.is_dir() {
        bail!("pipelines folder {} does not exist", pipelines.display());
    }
    let runtime = PluginRuntime::new(&RuntimeConfig::default())?;
    let registry = Registry::load(&pipelines, &plugins, runtime);
    let errors = registry.errors();
    for e in &errors {
        println!("{e}");
    }
    let names: Vec<String> = registry.list().into_iter().map(|p| p.name).collect();
    if errors.is_empty() {
        eprintln!("ok: {} pipeline(s): {}", names.len(), names.join(", "));
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} error(s); {} pipeline(s) valid", errors.len(), names.len());
        Ok(ExitCode::FAILURE)
    }
}
