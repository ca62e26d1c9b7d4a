//! `pipehost replay --pipeline FILE`: runs the logged raw model texts of a pipeline through
//! FILE's post-processors, with no model, and reports how many final texts change, a sample
//! of the changes and each stage's time. Exits 1 when a stage fails.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use crate::pipeline::load::{load_file, name_from_path};
use crate::pipeline::{BackendNames, Executor, PluginCache};
use crate::plugin::{PluginRuntime, RuntimeConfig, default_plugins_dir};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The changed pipeline file whose post-processors run.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// Whose logged answers to replay [default: FILE's name].
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Only answers logged since then: YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][Z] (UTC), or an age
    /// such as 7d, 24h, 30m [default: all].
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// At most this many answers, newest first.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub limit: u64,
    /// The store [default: sqlite:pipehost.db beside the pipelines folder].
    #[arg(long, env = "PIPEHOST_DB", value_name = "URL")]
    pub db: Option<String>,
    /// The pipelines folder (locates the default store) [default: ./pipelines].
    #[arg(long, env = "PIPEHOST_PIPELINES_DIR", value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
    /// The plugins folder [default: plugins/dist].
    #[arg(long, env = "PIPEHOST_PLUGINS_DIR", value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// How many changed answers to show.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub diffs: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct StageTime {
    stage: String,
    plugin: String,
    calls: usize,
    total_ms: f64,
    p50_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Change {
    id: String,
    before: String,
    after: String,
    /// The changed part with a little context: `…same[-old-]{+new+}same…`.
    diff: String,
}

#[derive(Debug, Serialize)]
struct Failure {
    id: String,
    error: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    file: PathBuf,
    sha256: String,
    source: String,
    since_ms: i64,
    replayed: usize,
    changed: usize,
    unchanged: usize,
    failed: usize,
    stages: Vec<StageTime>,
    changes: Vec<Change>,
    failures: Vec<Failure>,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `--since`: a UTC date or time, or an age (`7d`, `24h`, `30m`), as Unix milliseconds.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64> {
    let s = s.trim();
    let bad = || {
        anyhow::anyhow!("--since {s:?}: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][Z] or an age like 7d, 24h, 30m")
    };
    if let Some(unit) = s.chars().last().filter(|c| matches!(c, 'd' | 'h' | 'm')) {
        let n: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let ms = match unit {
            'd' => 86_400_000,
            'h' => 3_600_000,
            _ => 60_000,
        };
        return Ok(now_ms - n * ms);
    }
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00"));
    let d: Vec<i64> = date.split('-').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_>>()?;
    let t: Vec<i64> = time.split(':').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_>>()?;
    let [y, mo, day] = d[..] else { return Err(bad()) };
    let (h, mi, sec) = match t[..] {
        [h, mi] => (h, mi, 0),
        [h, mi, sec] => (h, mi, sec),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo)
        || !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || !(0..61).contains(&sec)
    {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + sec) * 1000)
}

/// The changed part of `before` → `after`, with up to 24 characters of context each side.
fn inline_diff(before: &str, after: &str) -> String {
    let (b, a): (Vec<char>, Vec<char>) = (before.chars().collect(), after.chars().collect());
    let prefix = b.iter().zip(&a).take_while(|(x, y)| x == y).count();
    let suffix = b[prefix..].iter().rev().zip(a[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let ctx = 24;
    let start = prefix.saturating_sub(ctx);
    let s = |v: &[char]| v.iter().collect::<String>();
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(&s(&b[start..prefix]));
    out.push_str(&format!(
        "[-{}-]{{+{}+}}",
        s(&b[prefix..b.len() - suffix]),
        s(&a[prefix..a.len() - suffix])
    ));
    let tail = &b[b.len() - suffix..];
    out.push_str(&s(&tail[..tail.len().min(ctx)]));
    if tail.len() > ctx {
        out.push('…');
    }
    out
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn run(args: ReplayArgs) -> Result<ExitCode> {
    let plugins_dir = args.plugins.clone().unwrap_or_else(default_plugins_dir);
    let runtime = PluginRuntime::new(&RuntimeConfig::default()).context("starting the plugin runtime")?;
    let cache = PluginCache::new(runtime, plugins_dir);
    let pipeline =
        load_file(&args.pipeline, &cache, &BackendNames::AnyKnown, &HashMap::new()).map_err(|errors| {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::anyhow!("{} does not load", args.pipeline.display())
        })?;
    let source = args.source.clone().unwrap_or_else(|| name_from_path(&args.pipeline));
    let since_ms = match &args.since {
        Some(s) => parse_since(s, crate::store::now_ms())?,
        None => 0,
    };
    let store = super::experiments::open_store(args.db.as_deref(), args.pipelines.as_ref())?;
    let rows = store.replay_rows(&source, since_ms, args.limit)?;
    if rows.is_empty() && !args.json {
        eprintln!(
            "no logged answers of `{source}` with their texts (since {since_ms} ms); nothing to replay"
        );
    }
    let mut times: BTreeMap<usize, (String, String, Vec<f64>)> = BTreeMap::new();
    let mut summary = Summary {
        file: args.pipeline.clone(),
        sha256: pipeline.sha256.clone(),
        source: source.clone(),
        since_ms,
        replayed: rows.len(),
        changed: 0,
        unchanged: 0,
        failed: 0,
        stages: Vec::new(),
        changes: Vec::new(),
        failures: Vec::new(),
    };
    for row in &rows {
        match Executor::post_process(&pipeline, &format!("replay-{}", row.id), row.raw_text.clone()) {
            Ok((text, reports)) => {
                for (i, r) in reports.iter().enumerate() {
                    times
                        .entry(i)
                        .or_insert_with(|| (r.stage.clone(), r.plugin.clone(), Vec::new()))
                        .2
                        .push(r.ms);
                }
                if text == row.text {
                    summary.unchanged += 1;
                } else {
                    summary.changed += 1;
                    if summary.changes.len() < args.diffs {
                        summary.changes.push(Change {
                            id: row.id.clone(),
                            diff: inline_diff(&row.text, &text),
                            before: row.text.clone(),
                            after: text,
                        });
                    }
                }
            }
            Err(e) => {
                summary.failed += 1;
                if summary.failures.len() < 20 {
                    summary.failures.push(Failure { id: row.id.clone(), error: e.to_string() });
                }
            }
        }
    }
    summary.stages = times
        .into_values()
        .map(|(stage, plugin, mut ms)| {
            ms.sort_by(f64::total_cmp);
            StageTime {
                stage,
                plugin,
                calls: ms.len(),
                total_ms: ms.iter().sum(),
                p50_ms: percentile(&ms, 0.5),
                max_ms: ms.last().copied().unwrap_or(0.0),
            }
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_text(&summary);
    }
    if summary.failed > 0 {
        if !args.json {
            eprintln!("error: {} of {} answers failed a stage", summary.failed, summary.replayed);
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(s: &Summary) {
    println!(
        "replayed {} logged answers of `{}` through {} (sha256 {}):",
        s.replayed,
        s.source,
        s.file.display(),
        s.sha256.get(..12).unwrap_or(&s.sha256)
    );
    println!("  changed {}, unchanged {}, failed {}", s.changed, s.unchanged, s.failed);
    if !s.stages.is_empty() {
        println!("\n  stage          plugin         calls   total ms    p50 ms    max ms");
        for t in &s.stages {
            println!(
                "  {:<14} {:<14} {:>5} {:>10.2} {:>9.3} {:>9.3}",
                t.stage, t.plugin, t.calls, t.total_ms, t.p50_ms, t.max_ms
            );
        }
    }
    if !s.changes.is_empty() {
        println!("\n  changes ({} of {}):", s.changes.len(), s.changed);
        for c in &s.changes {
            println!("  {}  {}", c.id, c.diff);
        }
    }
    for f in &s.failures {
        println!("  failed {}: {}", f.id, f.error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_dates_and_ages() {
        assert_eq!(parse_since("1970-01-02", 0).unwrap(), 86_400_000);
        assert_eq!(parse_since("2026-12-03T10:30Z", 0).unwrap(), 1_796_293_800_000);
        assert_eq!(parse_since("2000-03-01 00:00:01", 0).unwrap(), 951_868_801_000);
        assert_eq!(parse_since("7d", 10 * 86_400_000).unwrap(), 3 * 86_400_000);
        assert_eq!(parse_since("30m", 3_600_000).unwrap(), 1_800_000);
        for bad in ["yesterday", "2026-13-01", "2026-12", "5y", "2026-12-03T25:00"] {
            assert!(parse_since(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn diffs_show_the_change_in_context() {
        assert_eq!(inline_diff("abc, def", "abc，def"), "abc[-, -]{+，+}def");
        assert_eq!(inline_diff("same", "same!"), "same[--]{+!+}");
        let long = "x".repeat(40);
        assert_eq!(
            inline_diff(&format!("{long}a{long}"), &format!("{long}b{long}")),
            format!("…{}[-a-]{{+b+}}{}…", "x".repeat(24), "x".repeat(24))
        );
    }
}
