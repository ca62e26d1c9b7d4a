//! `pipehost schema`: the JSON Schema of pipeline files, for editors.

use std::process::ExitCode;

use anyhow::Result;

pub fn run() -> Result<ExitCode> {
    println!("{}", crate::pipeline::json_schema());
    Ok(ExitCode::SUCCESS)
}
