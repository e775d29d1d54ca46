#!/usr/bin/env python3
"""Prints KVBENCH_DECODE_LOOP's per-format value from gpu_decode_bench's JSON lines: each
format's fastest main loop (v2, v2b, v3 or v3h) at batch 16 x 32k tokens, the shape of issue 11's
kernel acceptance ("fp16=v2,int4=v3h,..."); nothing when the bench has no such line. A cut
(truncated) line is skipped. Used by scripts/gpu_session.sh for the suites it runs after the
bench, whose reports record the choice (environment.overrides)."""
import json
import sys


def best_loops(lines, batch=16, context=32768):
    best = {}
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("batch") != batch or r.get("context") != context:
            continue
        if r.get("loop") not in ("v2", "v2b", "v3", "v3h") or "us_per_step" not in r:
            continue
        f = r["format"]
        if r["loop"] == "v2b" and f.startswith("kivi"):
            continue  # not built for KIVI (kivi-2=v2b is refused)
        if f not in best or r["us_per_step"] < best[f][1]:
            best[f] = (r["loop"], r["us_per_step"])
    return ",".join(f"{f}={loop}" for f, (loop, _) in sorted(best.items()))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(best_loops(f))
