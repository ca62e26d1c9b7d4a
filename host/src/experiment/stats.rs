//! Per-variant results of an experiment, from what the store logged.
//!
//! - Means with 95% intervals: for `thumbs` (0/1) the equal-tailed interval of the Beta(1 + ups,
//!   1 + downs) posterior (uniform prior); for other names the Student-t interval
//!   `mean ± t(0.975, n-1) · s / √n`.
//! - Probability of being best (thumbs): `P(p_i > p_j for all j)` under independent Beta
//!   posteriors, by numerical integration of `f_i(x) · Π_j F_j(x)` (Simpson's rule over each
//!   posterior's ±12 sd window).
//! - Lift against the first variant: `(m_v - m_0) / m_0` with a 95% interval from the delta
//!   method, `Var ≈ Var(m_v)/m_0² + m_v²·Var(m_0)/m_0⁴`, `Var(m) = s²/n` (`p(1-p)/n` for thumbs).
//! - Pairwise win rate: `(wins + ties/2) / comparisons` with a Wilson 95% interval.
//! - Latency and completion tokens: medians.
//!
//! No winner is named until every variant has [`MIN_THUMBS`] thumbs and one variant's
//! probability of being best reaches [`WIN_PROBABILITY`].

use std::collections::BTreeMap;

use serde::Serialize;
use statrs::distribution::{Beta, Continuous, ContinuousCDF, StudentsT};

use super::Experiment;
use crate::store::ExperimentData;

/// Thumbs per variant before a winner may be named.
pub const MIN_THUMBS: u64 = 30;
/// The probability of being best that names a winner.
pub const WIN_PROBABILITY: f64 = 0.95;
/// The 97.5% quantile of the standard normal.
const Z: f64 = 1.959_963_984_540_054;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub experiment: String,
    /// The variant lifts are measured against (the first in the file).
    pub baseline: Option<String>,
    pub variants: Vec<VariantReport>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantReport {
    pub name: String,
    /// From the experiment file, when it is known.
    pub pipeline: Option<String>,
    pub weight: Option<f64>,
    pub requests: u64,
    pub users: u64,
    /// By feedback name.
    pub feedback: BTreeMap<String, MetricReport>,
    /// Thumbs: the probability that this variant's rate is the highest.
    pub prob_best: Option<f64>,
    pub pairwise: Option<PairwiseReport>,
    pub latency_ms_p50: Option<f64>,
    pub completion_tokens_p50: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricReport {
    pub n: u64,
    pub mean: f64,
    /// 95%; none with fewer than two values (and no prior to lean on).
    pub interval: Option<[f64; 2]>,
    /// Against the baseline; none for the baseline itself or when it cannot be computed.
    pub lift: Option<Lift>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lift {
    /// Relative: 0.1 is 10% better than the baseline.
    pub estimate: f64,
    pub interval: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairwiseReport {
    pub comparisons: u64,
    pub wins: u64,
    pub losses: u64,
    pub ties: u64,
    /// (wins + ties / 2) / comparisons.
    pub win_rate: f64,
    pub interval: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// `not_enough_data`, `no_winner_yet` or `winner`.
    pub status: &'static str,
    pub winner: Option<String>,
    pub message: String,
}

/// The Beta(1 + ups, 1 + downs) posterior of a thumbs rate.
fn posterior(n: u64, ups: f64) -> Beta {
    Beta::new(1.0 + ups, 1.0 + (n as f64 - ups)).expect("positive shapes")
}

/// 95% equal-tailed interval of the thumbs posterior.
pub fn thumbs_interval(n: u64, ups: f64) -> [f64; 2] {
    let b = posterior(n, ups);
    [b.inverse_cdf(0.025), b.inverse_cdf(0.975)]
}

/// 95% Student-t interval of a mean (n ≥ 2).
pub fn t_interval(n: u64, mean: f64, sd: f64) -> Option<[f64; 2]> {
    if n < 2 {
        return None;
    }
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).ok()?.inverse_cdf(0.975);
    let half = t * sd / (n as f64).sqrt();
    Some([mean - half, mean + half])
}

/// Wilson score interval for `k` successes in `n`.
pub fn wilson(k: f64, n: u64) -> [f64; 2] {
    let n = n as f64;
    let p = k / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// `P(rate_i is the highest)` for each posterior (n, ups).
pub fn prob_best(arms: &[(u64, f64)]) -> Vec<f64> {
    let betas: Vec<Beta> = arms.iter().map(|&(n, ups)| posterior(n, ups)).collect();
    let mut probs: Vec<f64> = (0..betas.len())
        .map(|i| {
            let b = &betas[i];
            let (a, c) = (b.shape_a(), b.shape_b());
            let mean = a / (a + c);
            let sd = (a * c / ((a + c) * (a + c) * (a + c + 1.0))).sqrt();
            let (lo, hi) = ((mean - 12.0 * sd).max(0.0), (mean + 12.0 * sd).min(1.0));
            let f = |x: f64| {
                let others: f64 =
                    betas.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, bj)| bj.cdf(x)).product();
                let d = b.pdf(x);
                if d.is_finite() { d * others } else { 0.0 }
            };
            simpson(f, lo, hi, 2000)
        })
        .collect();
    // Remove the integration error's drift from 1.
    let total: f64 = probs.iter().sum();
    if total > 0.0 {
        for p in &mut probs {
            *p /= total;
        }
    }
    probs
}

fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, n: usize) -> f64 {
    let h = (b - a) / n as f64;
    let mut sum = f(a) + f(b);
    for k in 1..n {
        sum += f(a + k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    sum * h / 3.0
}

/// The relative lift of `(m, var)` over the baseline `(m0, var0)`, with its delta-method interval.
pub fn lift(m: f64, var: f64, m0: f64, var0: f64) -> Option<Lift> {
    if m0 == 0.0 || !var.is_finite() || !var0.is_finite() {
        return None;
    }
    let estimate = (m - m0) / m0;
    let se = (var / (m0 * m0) + m * m * var0 / m0.powi(4)).sqrt();
    Some(Lift { estimate, interval: [estimate - Z * se, estimate + Z * se] })
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 })
}

/// (mean, variance of the mean) of a feedback metric.
fn moments(name: &str, n: u64, sum: f64, sum_sq: f64) -> (f64, f64) {
    let nf = n as f64;
    let mean = sum / nf;
    let var = if name == "thumbs" {
        mean * (1.0 - mean) / nf
    } else if n >= 2 {
        ((sum_sq - nf * mean * mean) / (nf - 1.0)).max(0.0) / nf
    } else {
        f64::NAN
    };
    (mean, var)
}

/// The report of experiment `name`. `experiment` (its file), when known, gives the variants'
/// order, pipelines and weights; otherwise variants are ordered by when they were first logged.
pub fn report(name: &str, experiment: Option<&Experiment>, data: &ExperimentData) -> Report {
    let mut order: Vec<String> = match experiment {
        Some(e) => e.variants.iter().map(|v| v.name.clone()).collect(),
        None => Vec::new(),
    };
    let mut logged = data.variants.clone();
    logged.sort_by(|a, b| a.first_ms.cmp(&b.first_ms).then(a.variant.cmp(&b.variant)));
    for v in &logged {
        if !order.contains(&v.variant) {
            order.push(v.variant.clone());
        }
    }
    let mut variants: Vec<VariantReport> = order
        .iter()
        .map(|name| {
            let def = experiment.and_then(|e| e.variant(name));
            let counts = data.variants.iter().find(|v| &v.variant == name);
            let samples = data.samples.iter().filter(|s| &s.0 == name);
            VariantReport {
                name: name.clone(),
                pipeline: def.map(|d| d.pipeline.clone()),
                weight: def.map(|d| d.weight),
                requests: counts.map_or(0, |c| c.requests),
                users: counts.map_or(0, |c| c.users),
                feedback: BTreeMap::new(),
                prob_best: None,
                pairwise: None,
                latency_ms_p50: median(samples.clone().map(|s| s.1).collect()),
                completion_tokens_p50: median(samples.map(|s| s.2).collect()),
            }
        })
        .collect();
    let baseline = order.first().cloned();
    // Feedback means, intervals and lifts.
    let names: std::collections::BTreeSet<&String> = data.feedback.iter().map(|f| &f.name).collect();
    for metric in names {
        let of = |v: &str| data.feedback.iter().find(|f| f.variant == v && &f.name == metric);
        let base = baseline.as_deref().and_then(of).map(|f| moments(metric, f.n, f.sum, f.sum_sq));
        for vr in &mut variants {
            let Some(f) = of(&vr.name) else { continue };
            let (mean, var) = moments(metric, f.n, f.sum, f.sum_sq);
            let interval = if metric == "thumbs" {
                Some(thumbs_interval(f.n, f.sum))
            } else {
                t_interval(f.n, mean, (var * f.n as f64).sqrt())
            };
            let lift = match base {
                Some((m0, var0)) if Some(&vr.name) != baseline.as_ref() => lift(mean, var, m0, var0),
                _ => None,
            };
            vr.feedback.insert(metric.clone(), MetricReport { n: f.n, mean, interval, lift });
        }
    }
    // Probability of being best on thumbs (variants without thumbs have the prior).
    let arms: Vec<(u64, f64)> = variants
        .iter()
        .map(|v| v.feedback.get("thumbs").map_or((0, 0.0), |m| (m.n, m.mean * m.n as f64)))
        .collect();
    let any_thumbs = arms.iter().any(|a| a.0 > 0);
    if any_thumbs && variants.len() >= 2 {
        for (v, p) in variants.iter_mut().zip(prob_best(&arms)) {
            v.prob_best = Some(p);
        }
    }
    // Pairwise.
    for vr in &mut variants {
        let (mut wins, mut losses, mut ties) = (0u64, 0u64, 0u64);
        for (a, b, winner) in &data.pairs {
            let side = if *a == vr.name {
                0
            } else if *b == vr.name {
                1
            } else {
                continue;
            };
            match winner {
                None => ties += 1,
                Some(w) if *w == side => wins += 1,
                Some(_) => losses += 1,
            }
        }
        let n = wins + losses + ties;
        if n > 0 {
            let k = wins as f64 + ties as f64 / 2.0;
            vr.pairwise = Some(PairwiseReport {
                comparisons: n,
                wins,
                losses,
                ties,
                win_rate: k / n as f64,
                interval: wilson(k, n),
            });
        }
    }
    let verdict = verdict(&variants, &arms);
    Report { experiment: name.to_owned(), baseline, variants, verdict }
}

fn verdict(variants: &[VariantReport], arms: &[(u64, f64)]) -> Verdict {
    let not_enough = |message: String| Verdict { status: "not_enough_data", winner: None, message };
    if variants.len() < 2 {
        return not_enough("fewer than two variants have answered: nothing to compare yet".into());
    }
    if let Some((v, (n, _))) = variants.iter().zip(arms).find(|(_, (n, _))| *n < MIN_THUMBS) {
        return not_enough(format!(
            "not enough data: variant `{}` has {n} thumbs; at least {MIN_THUMBS} per variant are needed before naming a winner",
            v.name
        ));
    }
    let (best, p) = variants
        .iter()
        .filter_map(|v| v.prob_best.map(|p| (v, p)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("every variant has thumbs");
    if p >= WIN_PROBABILITY {
        Verdict {
            status: "winner",
            winner: Some(best.name.clone()),
            message: format!("`{}` is best with probability {:.3} (thumbs)", best.name, p),
        }
    } else {
        Verdict {
            status: "no_winner_yet",
            winner: None,
            message: format!(
                "no winner yet: the leader `{}` is best with probability {:.3} (a winner needs {WIN_PROBABILITY}); keep collecting",
                best.name, p
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FeedbackSums, VariantCounts};

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tolerance {tol})");
    }

    /// Reference values from SciPy 1.x (scripts/stats-reference.py prints them): an independent
    /// implementation of the same formulas.
    #[test]
    fn against_scipy() {
        // beta.ppf([0.025, 0.975], 1 + 42, 1 + 58)
        let [lo, hi] = thumbs_interval(100, 42.0);
        close(lo, REF_THUMBS_LO, 1e-9);
        close(hi, REF_THUMBS_HI, 1e-9);
        // mean ± t.ppf(0.975, 19) * sd / sqrt(20)
        let [lo, hi] = t_interval(20, 3.7, 1.1).unwrap();
        close(lo, REF_T_LO, 1e-9);
        close(hi, REF_T_HI, 1e-9);
        // quad(lambda x: beta.pdf(x, a1, b1) * beta.cdf(x, a2, b2) * beta.cdf(x, a3, b3), 0, 1)
        let p = prob_best(&[(200, 90.0), (210, 110.0), (50, 20.0)]);
        close(p[0], REF_BEST[0], 1e-6);
        close(p[1], REF_BEST[1], 1e-6);
        close(p[2], REF_BEST[2], 1e-6);
        // Narrow posteriors (a million thumbs each) still integrate.
        let p = prob_best(&[(1_000_000, 500_000.0), (1_000_000, 501_000.0)]);
        close(p[1], REF_BEST_NARROW, 1e-6);
    }

    const REF_THUMBS_LO: f64 = 0.3278698795531057;
    const REF_THUMBS_HI: f64 = 0.5181817956713333;
    const REF_T_LO: f64 = 3.1851841529380884;
    const REF_T_HI: f64 = 4.214815847061912;
    const REF_BEST: [f64; 3] = [0.0613593690246738, 0.8836136382401638, 0.05502699273216342];
    const REF_BEST_NARROW: f64 = 0.9213504051218234;

    /// Worked by hand: the Wilson interval, the delta-method lift, the median.
    #[test]
    fn hand_worked() {
        // 8 of 10: p = 0.8, z² = 3.8415; centre = (0.8 + 0.19207) / 1.38415 = 0.71674;
        // half = 1.95996 / 1.38415 · √(0.016 + 0.0096037) = 0.22665.
        let [lo, hi] = wilson(8.0, 10);
        close(lo, 0.71674 - 0.22665, 1e-4);
        close(hi, 0.71674 + 0.22665, 1e-4);
        // m0 = 0.5 (var 0.0025), m = 0.6 (var 0.0024): lift 0.2,
        // se = √(0.0024/0.25 + 0.36·0.0025/0.0625) = √(0.0096 + 0.0144) = 0.15492.
        let l = lift(0.6, 0.0024, 0.5, 0.0025).unwrap();
        close(l.estimate, 0.2, 1e-12);
        close(l.interval[0], 0.2 - Z * 0.154_919_3, 1e-6);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    fn data(thumbs: &[(&str, u64, f64)]) -> ExperimentData {
        ExperimentData {
            variants: thumbs
                .iter()
                .enumerate()
                .map(|(i, (v, n, _))| VariantCounts {
                    variant: (*v).into(),
                    requests: *n,
                    users: *n,
                    first_ms: i as i64,
                })
                .collect(),
            feedback: thumbs
                .iter()
                .map(|(v, n, ups)| FeedbackSums {
                    variant: (*v).into(),
                    name: "thumbs".into(),
                    n: *n,
                    sum: *ups,
                    sum_sq: *ups,
                })
                .collect(),
            samples: vec![("a".into(), 10.0, 5.0), ("a".into(), 30.0, 7.0), ("b".into(), 20.0, 6.0)],
            pairs: vec![
                ("a".into(), "b".into(), Some(0)),
                ("b".into(), "a".into(), None),
                ("a".into(), "b".into(), Some(1)),
            ],
        }
    }

    #[test]
    fn verdicts() {
        let r = report("e", None, &data(&[("a", 10, 9.0), ("b", 10, 1.0)]));
        assert_eq!(r.verdict.status, "not_enough_data", "{:?}", r.verdict);
        assert!(r.verdict.message.contains("10 thumbs"), "{}", r.verdict.message);
        assert!(r.variants[0].prob_best.unwrap() > 0.99);
        let r = report("e", None, &data(&[("a", 100, 70.0), ("b", 100, 50.0)]));
        assert_eq!((r.verdict.status, r.verdict.winner.as_deref()), ("winner", Some("a")));
        let r = report("e", None, &data(&[("a", 100, 51.0), ("b", 100, 50.0)]));
        assert_eq!(r.verdict.status, "no_winner_yet");
        assert_eq!(r.baseline.as_deref(), Some("a"));
        let b = &r.variants[1];
        close(b.feedback["thumbs"].lift.as_ref().unwrap().estimate, 0.50 / 0.51 - 1.0, 1e-12);
        assert!(r.variants[0].feedback["thumbs"].lift.is_none());
        // Pairwise: a won once, lost once, tied once.
        let pa = r.variants[0].pairwise.as_ref().unwrap();
        assert_eq!((pa.wins, pa.losses, pa.ties, pa.comparisons), (1, 1, 1, 3));
        close(pa.win_rate, 0.5, 1e-12);
        assert_eq!(r.variants[0].latency_ms_p50, Some(20.0));
        assert_eq!(r.variants[1].completion_tokens_p50, Some(6.0));
        let r = report("e", None, &ExperimentData::default());
        assert_eq!(r.verdict.status, "not_enough_data");
    }
}
