#!/usr/bin/env python3
"""Writes tests/fixtures/stats/wilcoxon.json: paired samples with the Wilcoxon signed-rank
statistic and two-sided p-value scipy.stats.wilcoxon gives, for tests/unit/stats_test.cpp.

kvbench's rule (core/stats.h) is scipy's defaults (zero_method "wilcox", no continuity
correction) with two choices made explicit: the exact null distribution only when no |d| ties
(scipy 1.10 uses it with tied ranks too, where it does not hold), so tied cases are asked of
scipy with method="approx"; and when exact, it is the null of the nonzero pairs (scipy
switches to the approximation when any pair is zero), so those are asked of scipy alone. Debian's python3-scipy has what this needs:

    apt-get install python3-scipy && /usr/bin/python3 scripts/stats_fixtures.py

The file records the scipy version it was made with.
"""
import json
import random
import warnings
from pathlib import Path

import scipy
from scipy.stats import wilcoxon

warnings.simplefilter("ignore")  # scipy's "sample size too small for normal approximation"

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stats" / "wilcoxon.json"


def case(x, y):
    d = [b - a for a, b in zip(x, y) if b != a]
    magnitudes = [abs(v) for v in d]
    exact = len(d) <= 50 and len(set(magnitudes)) == len(magnitudes)
    if exact:
        # Asked of the nonzero pairs: scipy falls back to the approximation when zeros are
        # present, though the exact null of the pairs that remain holds.
        pairs = [(a, b) for a, b in zip(x, y) if a != b]
        r = wilcoxon([a for a, _ in pairs], [b for _, b in pairs], method="exact")
    else:
        r = wilcoxon(x, y, method="approx")
    return {"x": x, "y": y, "statistic": float(r.statistic), "p_value": float(r.pvalue),
            "exact": exact}


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
    for n in [6, 12, 25, 40, 64, 120]:
        # Lengths to EOS with a cap: zeros and ties, the normal approximation.
        for cap in [16, 256]:
            x = lengths(rng, n, cap)
            y = [v if rng.random() < 0.3 else min(cap, max(1, v + rng.randint(-cap // 4, cap // 3)))
                 for v in x]
            if any(a != b for a, b in zip(x, y)):
                cases.append(case(x, y))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"scipy": scipy.__version__, "cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases -> {OUT}")


if __name__ == "__main__":
    main()
