#!/usr/bin/env python3
"""From an accuracy report with full, an eviction method A (e.g. StreamingLLM) and a method B
(e.g. SnapKV) on the same prompts, paired by budget (B's budget = A's sinks + window): per task
and length, the samples the full cache solves, those
A fails (for StreamingLLM: the needle fell outside its sinks + window), and how many of A's
failures B solves. Also the accuracy of each method by needle depth (the sample id's depth).

    scripts/eviction_recovery.py REPORT.json [--a streamingllm] [--b snapkv]
"""
import argparse
import collections
import json
import re


def label(method, b):
    """B's variants at one budget (e.g. SnapKV's pooling kernel) get one row each."""
    if method["name"] != b:
        return method["name"]
    extra = [f"{k} {method[k]}" for k in ("window", "kernel", "pooling") if k in method]
    return f"{b} ({', '.join(extra)})" if extra else b


def variants(m, b):
    natural = lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)]
    return sorted((k for k in m if k == b or k.startswith(b + " (")), key=natural)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--a", default="streamingllm")
    ap.add_argument("--b", default="snapkv")
    args = ap.parse_args()
    report = json.load(open(args.report))
    by = collections.defaultdict(dict)  # (task, target) -> method -> {sample id: record}
    for c in report["cells"]:
        if c["suite"] != "accuracy" or c["status"] != "ok":
            continue
        m = c["method"]
        budget = m.get("budget") or (m.get("sinks", 0) + m.get("window", 0))
        key = (c["params"]["task"], c["params"]["target_tokens"], budget)
        by[key][label(m, args.b)] = {r["id"]: r for r in c["records"]}
    print(f"| task | prompt tokens | budget | samples | full | {args.a} | {args.b} | full-solved, {args.a} fails "
          f"| of those, {args.b} solves |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (task, target, budget), m in sorted(by.items()):
        if args.a not in m:
            continue
        for bname in variants(m, args.b):
            ids = list(m[args.a])
            full = {i: m[args.a][i]["score_full"] for i in ids}
            a = {i: m[args.a][i]["score"] for i in ids}
            b = {i: m[bname][i]["score"] for i in ids}
            lost = [i for i in ids if full[i] == 1 and a[i] < 1]
            rec = sum(1 for i in lost if b[i] == 1)
            mean = lambda d: sum(d.values()) / len(d)
            share = f"{rec}/{len(lost)} ({100 * rec / len(lost):.0f}%)" if lost else "-"
            print(f"| {task} | {target} | {budget} | {len(ids)} | {mean(full):.2f} | {mean(a):.2f} "
                  f"| {mean(b):.2f} {bname[len(args.b):].strip()} | {len(lost)} | {share} |")
    print()
    print(f"Accuracy by needle depth (full / {args.a} / {args.b}; where {args.b} has several "
          "variants at a budget, the last row of that budget above):")
    print()
    print("| task | prompt tokens | budget | depth | full | " + args.a + " | " + args.b + " |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for (task, target, budget), m in sorted(by.items()):
        if args.a not in m or not variants(m, args.b) or task in ("common_words",):
            continue
        bname = variants(m, args.b)[-1]
        buckets = collections.defaultdict(list)
        for i, r in m[args.a].items():
            depth = float(i.rsplit("-", 1)[1])
            buckets[min(int(depth * 4), 3)].append(i)
        for k in sorted(buckets):
            ids = buckets[k]
            f = sum(m[args.a][i]["score_full"] for i in ids) / len(ids)
            a = sum(m[args.a][i]["score"] for i in ids) / len(ids)
            b = sum(m[bname][i]["score"] for i in ids) / len(ids)
            print(f"| {task} | {target} | {budget} | {k / 4:.2f}–{(k + 1) / 4:.2f} | {f:.2f} | {a:.2f} | {b:.2f} |")


if __name__ == "__main__":
    main()
