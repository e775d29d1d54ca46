#!/usr/bin/env python3
"""Writes tests/fixtures/stats/wilcoxon.json: paired samples with the Wilcoxon signed-rank
statistic and two-sided p-value scipy.stats.wilcoxon gives, for tests/unit/stats_test.cpp.

kvbench's rule (core/stats.h): scipy's zero_method "wilcox" and no continuity correction,
and for up to 50 nonzero pairs the exact null of their signs, ties included. scipy 1.10's own
rule differs (it falls back to the approximation when any pair is zero, and stays "exact" for
tied ranks, where its table does not hold), so each case is asked of the scipy routine that
computes kvbench's answer:
- up to 50 nonzero pairs, no ties: scipy.stats.wilcoxon(method="exact") on the nonzero pairs;
- up to 16 nonzero pairs with ties: scipy.stats.permutation_test over every sign pattern
  (permutation_type="samples", all 2^n of them), the statistic W+ over scipy's rankdata;
- more than 50: scipy.stats.wilcoxon(method="approx").
Debian's python3-scipy has what this needs:

    apt-get install python3-scipy && /usr/bin/python3 scripts/stats_fixtures.py

The file records the scipy version it was made with.
"""
import json
import random
import warnings
from pathlib import Path

import numpy as np
import scipy
from scipy.stats import permutation_test, rankdata, wilcoxon

warnings.simplefilter("ignore")  # scipy's "sample size too small for normal approximation"

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stats" / "wilcoxon.json"


def w_plus(d):
    d = np.asarray(d, dtype=float)
    nonzero = d[d != 0]
    return float(rankdata(np.abs(nonzero))[nonzero > 0].sum())


def case(x, y):
    pairs = [(a, b) for a, b in zip(x, y) if a != b]
    d = [b - a for a, b in pairs]
    magnitudes = [abs(v) for v in d]
    tied = len(set(magnitudes)) < len(magnitudes)
    exact = len(d) <= 50
    if exact and not tied:
        r = wilcoxon([a for a, _ in pairs], [b for _, b in pairs], method="exact")
        statistic, p = float(r.statistic), float(r.pvalue)
    elif exact:
        assert len(d) <= 16, "the permutation test enumerates 2^n sign patterns"
        plus = w_plus(d)
        statistic = min(plus, len(d) * (len(d) + 1) / 2 - plus)
        r = permutation_test((np.array([a for a, _ in pairs], float),
                              np.array([b for _, b in pairs], float)),
                             lambda a, b: w_plus(b - a), permutation_type="samples",
                             vectorized=False, n_resamples=np.inf, alternative="two-sided")
        p = float(r.pvalue)
    else:
        r = wilcoxon(x, y, method="approx")
        statistic, p = float(r.statistic), float(r.pvalue)
    return {"x": x, "y": y, "statistic": statistic, "p_value": p, "exact": exact}


def lengths(rng, n, cap):
    """Generation lengths: integers, some at the cap."""
    return [min(cap, int(rng.expovariate(1 / (cap / 3))) + 1) for _ in range(n)]


def main():
    rng = random.Random(20261207)
    cases = [case([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [2, 1, 5, 3, 9, 4, 10, 12, 3, 15]),
             case([10, 20, 30], [11, 18, 34]),
             case([5.0], [7.0]),
             case([1, 2, 3, 4], [1, 2, 3, 9])]
    for n in [2, 5, 8, 13, 20, 30, 50, 51, 80]:
        # Continuous differences: no ties, exact up to 50 pairs.
        x = [round(rng.uniform(1, 100), 6) for _ in range(n)]
        cases.append(case(x, [round(v + rng.gauss(2, 10), 6) for v in x]))
    # Lengths to EOS with a cap: zeros and ties. Up to 16 nonzero pairs exact, above 50 the
    # normal approximation.
    for n in [6, 10, 14, 80, 120, 200, 300, 500]:
        for cap in [16, 256]:
            x = lengths(rng, n, cap)
            y = [v if rng.random() < 0.3 else min(cap, max(1, v + rng.randint(-cap // 4, cap // 3)))
                 for v in x]
            if 0 < sum(a != b for a, b in zip(x, y)) <= 16 or sum(a != b for a, b in zip(x, y)) > 50:
                cases.append(case(x, y))
    # Few tied pairs, where the approximation would be far off: d = {1, 1} has p = 0.5.
    cases += [case([1, 1], [2, 2]), case([1, 1, 1], [2, 2, 2]), case([5] * 6, [8] * 6),
              case([3, 3, 3, 3, 3], [5, 5, 5, 5, 2])]
    # 60 pairs of which 30 differ, untied: exact, counted over the nonzero pairs only.
    x = [float(i) for i in range(60)]
    cases.append(case(x, [v + (0 if i % 2 else (1 if i % 6 else -1) * (1 + i / 7))
                        for i, v in enumerate(x)]))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"scipy": scipy.__version__, "cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()
