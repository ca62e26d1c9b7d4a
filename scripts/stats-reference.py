#!/usr/bin/env python3
"""Reference values for host/src/experiment/stats.rs's `against_scipy` test, from SciPy (an
independent implementation). Run:

    python3 -m venv target/stats-venv && target/stats-venv/bin/pip install scipy
    target/stats-venv/bin/python scripts/stats-reference.py
"""
from math import sqrt

from scipy import integrate, stats

lo, hi = stats.beta.ppf([0.025, 0.975], 1 + 42, 1 + 58)
print(f"const REF_THUMBS_LO: f64 = {float(lo)!r};")
print(f"const REF_THUMBS_HI: f64 = {float(hi)!r};")
t = stats.t.ppf(0.975, 19)
print(f"const REF_T_LO: f64 = {float(3.7 - t * 1.1 / sqrt(20))!r};")
print(f"const REF_T_HI: f64 = {float(3.7 + t * 1.1 / sqrt(20))!r};")


def prob_best(arms):
    betas = [stats.beta(1 + ups, 1 + n - ups) for n, ups in arms]
    out = []
    for i, b in enumerate(betas):
        others = [bj for j, bj in enumerate(betas) if j != i]
        lo, hi = b.ppf(1e-12), b.ppf(1 - 1e-12)

        def f(x):
            p = b.pdf(x)
            for o in others:
                p *= o.cdf(x)
            return p

        out.append(integrate.quad(f, lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200)[0])
    return out


best = prob_best([(200, 90), (210, 110), (50, 20)])
print(f"const REF_BEST: [f64; 3] = [{best[0]!r}, {best[1]!r}, {best[2]!r}];")
print(f"const REF_BEST_NARROW: f64 = {prob_best([(1_000_000, 500_000), (1_000_000, 501_000)])[1]!r};")
