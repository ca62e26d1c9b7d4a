//! The experiment file format and its checks. An experiment's name is its file's stem; it
//! must not also be a pipeline's name, and every variant must name a loaded pipeline.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};

use crate::pipeline::load::{name_from_path, validate_pipeline_name};
use crate::pipeline::{LoadError, MAX_FILE_BYTES};

/// How users are split between variants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignBy {
    /// Sticky: a hash of the experiment and the user picks the variant (per request when the
    /// request names no user).
    #[default]
    User,
    /// A fresh random pick for every request.
    Request,
}

/// `experiments/NAME.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub assign_by: AssignBy,
    pub variants: Spanned<Vec<VariantSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// The pipeline that answers this variant's users.
    pub pipeline: Spanned<String>,
    /// The variant's name in results and logs, and its key in the assignment hash. Default: the
    /// pipeline's name.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Relative share of users (> 0). Default 1.
    #[serde(default)]
    pub weight: Option<Spanned<f64>>,
}

/// A checked variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    pub name: String,
    pub pipeline: String,
    pub weight: f64,
}

/// A loaded experiment: immutable; a reload builds a new one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub sha256: String,
    pub assign_by: AssignBy,
    /// In file order; the first is the baseline that lifts are measured against.
    pub variants: Vec<Variant>,
}

impl Experiment {
    pub fn variant(&self, name: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.name == name)
    }
}

pub fn parse(file: &Path, text: &str) -> Result<ExperimentSpec, LoadError> {
    crate::pipeline::load::parse_yaml(file, text)
}

fn loc<T>(s: &Spanned<T>) -> Option<Location> {
    Some(s.referenced)
}

/// Reads and checks one experiment file. `pipelines` are the loaded pipelines' names, mapped
/// to their files (an experiment may not take a pipeline's name).
pub fn load_file(file: &Path, pipelines: &HashMap<String, PathBuf>) -> Result<Experiment, Vec<LoadError>> {
    let at = |loc: Option<Location>, m: String| LoadError::at(file, loc, m);
    let meta = std::fs::metadata(file).map_err(|e| vec![at(None, format!("cannot read: {e}"))])?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(vec![at(
            None,
            format!("file is {} bytes; experiment files are limited to {MAX_FILE_BYTES} bytes", meta.len()),
        )]);
    }
    let bytes = std::fs::read(file).map_err(|e| vec![at(None, format!("cannot read: {e}"))])?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let text = String::from_utf8(bytes).map_err(|e| vec![at(None, format!("not UTF-8: {e}"))])?;
    let spec = parse(file, &text).map_err(|e| vec![e])?;
    build(file, sha256, spec, pipelines)
}

pub fn build(
    file: &Path,
    sha256: String,
    spec: ExperimentSpec,
    pipelines: &HashMap<String, PathBuf>,
) -> Result<Experiment, Vec<LoadError>> {
    let at = |loc: Option<Location>, m: String| LoadError::at(file, loc, m);
    let mut errs = Vec::new();
    let name = name_from_path(file);
    if let Err(m) = validate_pipeline_name(&name) {
        errs.push(at(
            None,
            format!("experiment name (the file name): {}", m.replace("pipeline name", "name")),
        ));
    }
    if let Some(other) = pipelines.get(&name) {
        errs.push(at(
            None,
            format!(
                "experiment name `{name}` is also the name of the pipeline in {}; clients could not tell them apart: rename one",
                other.display()
            ),
        ));
    }
    if spec.variants.value.is_empty() {
        errs.push(at(loc(&spec.variants), "`variants`: list at least one variant".into()));
    }
    let mut variants = Vec::new();
    let mut names = BTreeSet::new();
    for (i, v) in spec.variants.value.iter().enumerate() {
        let field = format!("variants[{i}]");
        let pipeline = v.pipeline.value.clone();
        if !pipelines.contains_key(&pipeline) {
            let mut known: Vec<&String> = pipelines.keys().collect();
            known.sort();
            let hint = known
                .iter()
                .map(|k| (strsim::jaro_winkler(&pipeline, k), k))
                .filter(|(s, _)| *s >= 0.8)
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, k)| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            errs.push(at(
                loc(&v.pipeline),
                format!("`{field}.pipeline`: no pipeline named `{pipeline}` is loaded{hint}"),
            ));
        }
        let (vname, vloc) = match &v.name {
            Some(n) => (n.value.clone(), loc(n)),
            None => (pipeline.clone(), loc(&v.pipeline)),
        };
        if let Err(m) = validate_pipeline_name(&vname) {
            errs.push(at(vloc, format!("`{field}.name`: {}", m.replace("pipeline name", "variant name"))));
        }
        if !names.insert(vname.clone()) {
            errs.push(at(
                vloc,
                format!(
                    "`{field}`: variant name `{vname}` is used twice; give the variant a distinct `name:`"
                ),
            ));
        }
        let weight = match &v.weight {
            Some(w) if !(w.value.is_finite() && w.value > 0.0) => {
                errs.push(at(
                    loc(w),
                    format!("`{field}.weight`: must be a number greater than 0, got {}", w.value),
                ));
                continue;
            }
            Some(w) => w.value,
            None => 1.0,
        };
        variants.push(Variant { name: vname, pipeline, weight });
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Experiment {
        name,
        description: spec.description,
        file: file.to_owned(),
        sha256,
        assign_by: spec.assign_by,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Experiment, Vec<LoadError>> {
        let file = Path::new("experiments/ab.yaml");
        let pipelines: HashMap<String, PathBuf> =
            [("poem", "p/poem.yaml"), ("poem-warm", "p/poem-warm.yaml")]
                .into_iter()
                .map(|(n, f)| (n.to_owned(), PathBuf::from(f)))
                .collect();
        let spec = parse(file, text).map_err(|e| vec![e])?;
        build(file, "x".into(), spec, &pipelines)
    }

    fn first_error(text: &str) -> String {
        check(text).unwrap_err()[0].to_string()
    }

    #[test]
    fn a_good_file() {
        let e = check(
            "description: d\nvariants:\n  - pipeline: poem\n    weight: 50\n  - pipeline: poem-warm\n    name: warm\n    weight: 50\n",
        )
        .unwrap();
        assert_eq!(e.name, "ab");
        assert_eq!(e.assign_by, AssignBy::User);
        assert_eq!(
            e.variants[1],
            Variant { name: "warm".into(), pipeline: "poem-warm".into(), weight: 50.0 }
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        assert_eq!(
            first_error("variants:\n  - pipeline: poem\n    wieght: 2\n"),
            "experiments/ab.yaml:3:5: unknown field `wieght`, expected one of pipeline, name, weight; did you mean `weight`?"
        );
        assert_eq!(
            first_error("variants:\n  - pipeline: poem\n    weight: 0\n"),
            "experiments/ab.yaml:3:13: `variants[0].weight`: must be a number greater than 0, got 0"
        );
        assert_eq!(
            first_error("variants:\n  - pipeline: pome\n"),
            "experiments/ab.yaml:2:15: `variants[0].pipeline`: no pipeline named `pome` is loaded; did you mean `poem`?"
        );
        let e = first_error("variants:\n  - pipeline: poem\n  - pipeline: poem\n");
        assert!(e.starts_with("experiments/ab.yaml:3:15:") && e.contains("used twice"), "{e}");
        assert!(first_error("assign_by: users\nvariants: []\n").contains("unknown variant `users`"));
        assert!(first_error("variants: []\n").contains("at least one variant"));
        assert!(first_error("variants:\n  - pipeline: poem\n    weight: -3\n").contains("greater than 0"));
    }

    #[test]
    fn a_pipelines_name_is_taken() {
        let pipelines: HashMap<String, PathBuf> =
            [("poem".to_owned(), PathBuf::from("p/poem.yaml"))].into_iter().collect();
        let file = Path::new("experiments/poem.yaml");
        let spec = parse(file, "variants:\n  - pipeline: poem\n").unwrap();
        let e = build(file, "x".into(), spec, &pipelines).unwrap_err();
        assert!(e[0].to_string().contains("also the name of the pipeline in p/poem.yaml"), "{}", e[0]);
    }
}
