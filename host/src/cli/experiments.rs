//! `pipehost experiments report NAME`: an experiment's results from the store, as tables (or
//! the JSON of `GET /v1/experiments/{name}`'s `results`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::experiment::stats::{self, Report};
use crate::experiment::{Experiment, default_experiments_dir, load};
use crate::store::{DbUrl, Store, StoreOptions};

#[derive(Debug, Subcommand)]
pub enum ExperimentsCommand {
    /// Per-variant results: requests, users, feedback means with 95% intervals, probability of
    /// being best, lift against the first variant, pairwise win rate, p50 latency and tokens.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The experiment (its file's name without `.yaml`).
    pub name: String,
    /// The store [default: sqlite:pipehost.db beside the pipelines folder].
    #[arg(long, env = "PIPEHOST_DB", value_name = "URL")]
    pub db: Option<String>,
    /// The pipelines folder (locates the default store) [default: ./pipelines].
    #[arg(long, env = "PIPEHOST_PIPELINES_DIR", value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
    /// The experiments folder: the file gives the variants' order, pipelines and weights
    /// [default: `experiments` beside the pipelines folder].
    #[arg(long, env = "PIPEHOST_EXPERIMENTS_DIR", value_name = "DIR")]
    pub experiments: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: ExperimentsCommand) -> Result<ExitCode> {
    match cmd {
        ExperimentsCommand::Report(args) => report(args),
    }
}

/// Opens the store named by `--db` (or the default beside the pipelines folder).
pub(crate) fn open_store(db: Option<&str>, pipelines: Option<&PathBuf>) -> Result<Store> {
    let pipelines = pipelines.cloned().unwrap_or_else(crate::pipeline::default_pipelines_dir);
    let url = DbUrl::parse(&db.map(str::to_owned).unwrap_or_else(|| super::serve::default_db(&pipelines)))?;
    if url == DbUrl::None {
        anyhow::bail!("--db none: there is no store to read");
    }
    if let DbUrl::Sqlite(path) = &url
        && !path.exists()
    {
        anyhow::bail!("{} does not exist (is --db the store `pipehost serve` writes?)", path.display());
    }
    Store::open(&url, StoreOptions::default()).with_context(|| format!("opening {}", url.display()))
}

/// The experiment's file, read without checking its pipelines (they need not be loaded here).
fn definition(dir: &std::path::Path, name: &str) -> Option<Experiment> {
    let file = dir.join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&file).ok()?;
    let spec = load::parse(&file, &text).ok()?;
    let pipelines: HashMap<String, PathBuf> =
        spec.variants.value.iter().map(|v| (v.pipeline.value.clone(), PathBuf::new())).collect();
    load::build(&file, String::new(), spec, &pipelines).ok()
}

fn report(args: ReportArgs) -> Result<ExitCode> {
    let store = open_store(args.db.as_deref(), args.pipelines.as_ref())?;
    let pipelines = args.pipelines.clone().unwrap_or_else(crate::pipeline::default_pipelines_dir);
    let dir = args.experiments.clone().unwrap_or_else(|| default_experiments_dir(&pipelines));
    let experiment = definition(&dir, &args.name);
    let variant_pipelines: Vec<(String, String)> = experiment
        .iter()
        .flat_map(|e| e.variants.iter().map(|v| (v.name.clone(), v.pipeline.clone())))
        .collect();
    let data = store.experiment_data(&args.name, &variant_pipelines)?;
    if experiment.is_none() && data.variants.is_empty() {
        anyhow::bail!("no experiment `{}`: no file in {} and nothing logged", args.name, dir.display());
    }
    let report = stats::report(&args.name, experiment.as_ref(), &data);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn interval(i: Option<[f64; 2]>) -> String {
    i.map_or_else(|| "–".into(), |[lo, hi]| format!("[{}, {}]", num(lo), num(hi)))
}

fn percent_interval(i: [f64; 2]) -> String {
    format!("[{:+.1}%, {:+.1}%]", i[0] * 100.0, i[1] * 100.0)
}

/// Rows as aligned columns.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The report as text tables: variants, then one table per feedback name, then pairwise.
pub fn table(r: &Report) -> String {
    let mut out =
        format!("experiment {} (lifts against {})\n\n", r.experiment, r.baseline.as_deref().unwrap_or("–"));
    let mut rows = vec![
        ["variant", "pipeline", "weight", "requests", "users", "p50 latency ms", "p50 tokens"]
            .map(String::from)
            .to_vec(),
    ];
    for v in &r.variants {
        rows.push(vec![
            v.name.clone(),
            v.pipeline.clone().unwrap_or_else(|| "–".into()),
            v.weight.map_or("–".into(), num),
            v.requests.to_string(),
            v.users.to_string(),
            v.latency_ms_p50.map_or("–".into(), num),
            v.completion_tokens_p50.map_or("–".into(), num),
        ]);
    }
    out.push_str(&columns(&rows));
    let names: std::collections::BTreeSet<&String> =
        r.variants.iter().flat_map(|v| v.feedback.keys()).collect();
    for name in names {
        let thumbs = name == "thumbs";
        let mut header = vec![name.clone(), "n".into(), "mean".into(), "95% interval".into()];
        if thumbs {
            header.push("P(best)".into());
        }
        header.push("lift".into());
        header.push("lift 95%".into());
        let mut rows = vec![header];
        for v in &r.variants {
            let Some(m) = v.feedback.get(name) else { continue };
            let mut row = vec![v.name.clone(), m.n.to_string(), num(m.mean), interval(m.interval)];
            if thumbs {
                row.push(v.prob_best.map_or("–".into(), |p| format!("{p:.3}")));
            }
            match &m.lift {
                Some(l) => {
                    row.push(format!("{:+.1}%", l.estimate * 100.0));
                    row.push(percent_interval(l.interval));
                }
                None => row.extend(["–".to_string(), "–".to_string()]),
            }
            rows.push(row);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    if r.variants.iter().any(|v| v.pairwise.is_some()) {
        let mut rows = vec![
            ["pairwise", "comparisons", "wins", "losses", "ties", "win rate", "95% interval"]
                .map(String::from)
                .to_vec(),
        ];
        for v in &r.variants {
            let Some(p) = &v.pairwise else { continue };
            rows.push(vec![
                v.name.clone(),
                p.comparisons.to_string(),
                p.wins.to_string(),
                p.losses.to_string(),
                p.ties.to_string(),
                num(p.win_rate),
                interval(Some(p.interval)),
            ]);
        }
        out.push('\n');
        out.push_str(&columns(&rows));
    }
    out.push_str(&format!("\n{}: {}\n", r.verdict.status, r.verdict.message));
    out
}
