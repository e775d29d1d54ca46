#!/usr/bin/env python3
"""Turns kvbench reports into the seed paper's figure types, as PNG and PDF.

usage: scripts/figures.py REPORT.json [REPORT.json ...] --out DIR

Figures (each written only when the reports hold the suite it needs):
  throughput_vs_batch     decode tokens/s against batch, one line per method and prompt length
  throughput_vs_length    decode tokens/s against prompt length, one line per method and batch
  decode_speedup          decode tokens/s of each method over the full cache, bars per point
  length_shift            histograms of the per-sample length shift D (output_length suite)
  accuracy_scatter        per-sample score, full cache against method (accuracy suite)
  negative_samples        negative samples per method and task (accuracy suite)
  latency_cdf             CDF of end-to-end request latency per method (latency suite; the
                          serving suite's CDFs join when it lands)
  fidelity_kl             mean and p99 KL divergence per method (fidelity suite)
Later files win for cells with the same id. Methods are labelled by name (and params when
two cells share a name). Needs python3-matplotlib (installed by scripts/setup.sh).
"""
import argparse
import collections
import json
import pathlib
import sys

import os

try:
    import matplotlib
except ImportError:
    # Debian's python3-matplotlib serves the system interpreter; a pyenv or venv python3
    # first on PATH does not see it, so run again under the system one.
    system = "/usr/bin/python3"
    if os.path.realpath(sys.executable) != os.path.realpath(system) and os.path.exists(system):
        os.execv(system, [system] + sys.argv)
    sys.exit("figures: matplotlib is missing; install python3-matplotlib (scripts/setup.sh does)")

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402


def load_cells(paths):
    cells = {}
    for path in paths:
        report = json.loads(pathlib.Path(path).read_text())
        if report.get("schema_version") != 2:
            sys.exit(f"figures: {path}: schema_version {report.get('schema_version')} (expected 2)")
        for cell in report["cells"]:
            if cell.get("status") == "ok":
                cells[cell["id"]] = cell
    return list(cells.values())


def label(cell, names):
    m = cell["method"]
    if names[m["name"]] <= 1:
        return m["name"]
    extra = ",".join(f"{k}={v}" for k, v in sorted(m.items()) if k != "name")
    return f"{m['name']}({extra})" if extra else m["name"]


def save(fig, out, name, written):
    fig.tight_layout()
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)


def throughput_figures(cells, names, out, written):
    pts = collections.defaultdict(list)  # label -> [(batch, prompt, decode, prefill)]
    for c in cells:
        if c["suite"] != "throughput":
            continue
        for r in c["records"]:
            pts[label(c, names)].append((r["batch"], r["prompt_tokens"], r["decode_tok_s"], r["prefill_tok_s"]))
    if not pts:
        return
    for x_index, other_index, name, xlabel, other in ((0, 1, "throughput_vs_batch", "batch", "prompt"),
                                                      (1, 0, "throughput_vs_length", "prompt tokens", "batch")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for lab, rows in sorted(pts.items()):
            for fixed in sorted({r[other_index] for r in rows}):
                sel = sorted((r[x_index], r[2]) for r in rows if r[other_index] == fixed)
                ax.plot([s[0] for s in sel], [s[1] for s in sel], marker="o", label=f"{lab} ({other} {fixed})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("decode tokens/s")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        ax.set_title("Decode throughput")
        save(fig, out, name, written)
    base = {(r[0], r[1]): r[2] for lab, rows in pts.items() if lab == "full" for r in rows}
    if base:
        fig, ax = plt.subplots(figsize=(6, 4))
        keys = sorted(base)
        methods = [lab for lab in sorted(pts) if lab != "full"]
        width = 0.8 / max(len(methods), 1)
        for i, lab in enumerate(methods):
            got = {(r[0], r[1]): r[2] for r in pts[lab]}
            ax.bar([k + i * width for k in range(len(keys))],
                   [got.get(key, 0) / base[key] for key in keys], width, label=lab)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([k + width * (len(methods) - 1) / 2 for k in range(len(keys))])
        ax.set_xticklabels([f"b{b}\np{p}" for b, p in keys], fontsize=7)
        ax.set_ylabel("decode speed-up over full")
        ax.legend(fontsize=7)
        save(fig, out, "decode_speedup", written)


def length_shift(cells, names, out, written):
    ds = {label(c, names): [r["d"] for r in c["records"]] for c in cells if c["suite"] == "output_length"}
    if not ds:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, d in sorted(ds.items()):
        ax.hist(d, bins=20, alpha=0.5, label=lab)
    ax.set_xlabel("D = (L_full - L_method) / L_full x 100 (negative: longer)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)
    ax.set_title("Output length shift")
    save(fig, out, "length_shift", written)


def accuracy_figures(cells, names, out, written):
    acc = [c for c in cells if c["suite"] == "accuracy"]
    if not acc:
        return
    fig, ax = plt.subplots(figsize=(5, 5))
    for c in acc:
        ax.scatter([r["score_full"] for r in c["records"]], [r["score"] for r in c["records"]], s=12,
                   alpha=0.6, label=label(c, names))
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("score, full cache")
    ax.set_ylabel("score, method")
    ax.legend(fontsize=7)
    ax.set_title("Per-sample accuracy")
    save(fig, out, "accuracy_scatter", written)
    counts = collections.Counter()
    for c in acc:
        counts[label(c, names)] += c["summary"]["negative_samples"]
    fig, ax = plt.subplots(figsize=(6, 4))
    labs = sorted(counts)
    ax.bar(labs, [counts[lab] for lab in labs])
    ax.set_ylabel("negative samples")
    ax.set_title("Negative samples (theta as configured)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    save(fig, out, "negative_samples", written)


def latency_cdf(cells, names, out, written):
    e2e = collections.defaultdict(list)
    for c in cells:
        if c["suite"] != "latency":
            continue
        for r in c["records"]:
            if r["kind"] == "e2e":
                e2e[label(c, names)].extend(r["samples_s"])
    if not e2e:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, xs in sorted(e2e.items()):
        xs = sorted(xs)
        ax.step([x * 1e3 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=lab)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.legend(fontsize=7)
    ax.set_title("Request latency CDF")
    save(fig, out, "latency_cdf", written)


def fidelity_kl(cells, names, out, written):
    fid = {label(c, names): c["summary"] for c in cells if c["suite"] == "fidelity"}
    if not fid:
        return
    labs = sorted(fid)
    fig, ax = plt.subplots(figsize=(6, 4))
    x = range(len(labs))
    ax.bar([i - 0.2 for i in x], [fid[lab]["kl_mean"] for lab in labs], 0.4, label="mean")
    ax.bar([i + 0.2 for i in x], [fid[lab]["kl_p99"] for lab in labs], 0.4, label="p99")
    ax.set_xticks(list(x))
    ax.set_xticklabels(labs, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("KL(full || method), nats")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.legend(fontsize=7)
    ax.set_title("Next-token KL divergence against the full cache")
    save(fig, out, "fidelity_kl", written)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(args.reports)
    names = collections.Counter()
    seen = set()
    for c in cells:
        key = json.dumps(c["method"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            names[c["method"]["name"]] += 1
    written = []
    for fn in (throughput_figures, length_shift, accuracy_figures, latency_cdf, fidelity_kl):
        fn(cells, names, out, written)
    if not written:
        sys.exit("figures: the reports hold no ok cell of a suite with a figure")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
