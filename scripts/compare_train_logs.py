#!/usr/bin/env python3
"""Compares two `kvbench train` logs line by line, ignoring wall-clock time (step_s) and the
recipe line: a retrained model from the same recipe must log the same losses, gradient norms,
learning rates and evaluations, bit for bit, at every step both logs reached.
Usage: compare_train_logs.py ORIGINAL RETRAINED  (exit 1 at the first difference)"""
import json
import sys


def entries(path):
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    out = []
    for e in lines:
        if "recipe" in e:
            continue
        e.pop("step_s", None)
        out.append(e)
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = entries(sys.argv[1]), entries(sys.argv[2])
    for x, y in zip(a, b):
        if x != y:
            print(f"differ at step {x.get('step')}:\n  {x}\n  {y}")
            sys.exit(1)
    n = min(len(a), len(b))
    last = b[n - 1].get("step") if n else 0
    print(f"{n} log entries identical (up to step {last}; the logs have {len(a)} and {len(b)})")


if __name__ == "__main__":
    main()
