#!/usr/bin/env python3
"""Prints KVBENCH_DECODE_LOOP's per-format value from gpu_decode_bench's JSON lines: each
format's fastest main loop (v2, v2b, v3, v3h or v4) at batch 16 x 32k tokens, the shape of
issue 11's kernel acceptance ("fp16=v2,int4=v3h,..."); nothing when the bench has no such line. A cut
(truncated) line is skipped. Used by scripts/gpu_session.sh for the suites it runs after the
bench, whose reports record the choice (environment.overrides).

With --retained: KVBENCH_RETAINED_TOKENS' value instead, "4" where the retained-index kernel
with four tokens' loads in flight per warp (rows kept-512-t4, kept-2k-t4) beats the one-token
loop (kept-512, kept-2k) at both kept sizes, "1" where it does not; nothing without those rows."""
import json
import sys


def rows_at(lines, batch, context):
    """The bench's rows at batch x context that carry a time; cut lines skipped."""
    for line in lines:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("batch") == batch and r.get("context") == context and "us_per_step" in r:
            yield r


def best_loops(lines, batch=16, context=32768):
    best = {}
    for r in rows_at(lines, batch, context):
        if r.get("loop") not in ("v2", "v2b", "v3", "v3h", "v4"):
            continue
        f = r["format"]
        if r["loop"] == "v2b" and f.startswith("kivi"):
            continue  # not built for KIVI (kivi-2=v2b is refused)
        if r["loop"] == "v4" and f in ("fp16", "bf16"):
            continue  # not built for the 16-bit formats (fp16=v4 is refused)
        if f not in best or r["us_per_step"] < best[f][1]:
            best[f] = (r["loop"], r["us_per_step"])
    return ",".join(f"{f}={loop}" for f, (loop, _) in sorted(best.items()))


def best_retained_tokens(lines, batch=16, context=32768):
    times = {r.get("format"): r["us_per_step"] for r in rows_at(lines, batch, context)}
    rows = ("kept-512", "kept-2k")
    if not all(n in times and n + "-t4" in times for n in rows):
        return ""
    return "4" if all(times[n + "-t4"] < times[n] for n in rows) else "1"


if __name__ == "__main__":
    retained = sys.argv[1] == "--retained"
    with open(sys.argv[-1]) as f:
        print(best_retained_tokens(f) if retained else best_loops(f))
