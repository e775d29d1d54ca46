#!/usr/bin/env python3
"""Turns kvbench reports into the seed paper's figure types, as PNG and PDF.

usage: scripts/figures.py REPORT.json [REPORT.json ...] --out DIR

Figures (each written only when the reports hold the suite it needs; the ones skipped are
listed on stderr):
  throughput_vs_batch     decode tokens/s against batch, one line per method and prompt length
  throughput_vs_length    decode tokens/s against prompt length, one line per method and batch
  decode_speedup          decode tokens/s of each method over the full cache, bars per point
  length_shift            histograms of the per-sample length shift D (output_length suite)
  accuracy_scatter        per-sample score, full cache (x) against method (y), per method and
                          task; marker area and the number beside it count the samples at a
                          point (accuracy suite; the full cache against itself is left out)
  negative_samples        negative samples per method and task, with theta (accuracy suite)
  latency_cdf             CDF of end-to-end request latency per method (latency suite)
  serving_cdf             CDFs of TTFT and end-to-end latency per method and request rate
                          (serving suite)
  fidelity_kl             mean and p99 KL divergence per method (fidelity suite)
Later files win for cells with the same id. Methods are labelled by name (and the params that
differ when two methods share a name). When a report holds several configurations of one suite
(two fidelity suites with prefix_tokens 100 and 900, say), each is its own series, labelled by
the suite params that differ between them ("[prefix_tokens=100]"); so are cells run on
different setups (model, device, threads, attention: "[model.preset=tiny-qwen3]"), as
`kvbench report`'s setup column keeps them apart, and each method's speed-up is over the full
cache of its own setup; no cell is merged away.
Needs python3-matplotlib (installed by scripts/setup.sh).
"""
import argparse
import collections
import json
import os
import pathlib
import sys

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
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def load_cells(paths):
    cells, not_ok = {}, {}
    for path in paths:
        try:
            report = json.loads(pathlib.Path(path).read_text())
        except OSError as e:
            sys.exit(f"figures: {path}: cannot read: {e.strerror or e}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            sys.exit(f"figures: {path}: not a JSON report: {e}")
        if not isinstance(report, dict) or report.get("schema") != "kvbench.report":
            sys.exit(f"figures: {path}: not a kvbench report (no \"schema\": \"kvbench.report\")")
        if report.get("schema_version") != 2:
            sys.exit(f"figures: {path}: schema_version {report.get('schema_version')} (expected 2)")
        if not isinstance(report.get("cells", []), list) or not all(
                isinstance(c, dict) and isinstance(c.get("id"), str) for c in report.get("cells", [])):
            sys.exit(f"figures: {path}: cells must be a list of objects, each with a string id")
        for cell in report.get("cells", []):
            if cell.get("status") == "ok":
                cells[cell["id"]] = dict(cell, _setup=setup_of(report, cell))
                not_ok.pop(cell["id"], None)
            else:
                not_ok[cell["id"]] = cell.get("status")
                cells.pop(cell["id"], None)
    if not_ok:
        print(f"figures: left out {len(not_ok)} cell(s) not ok: " + ", ".join(sorted(not_ok)),
              file=sys.stderr)
    return list(cells.values())


def code_path_of(report, device, attention):
    """The code path a run took, as `kvbench report` reads it (cell_setup,
    src/report/report_reader.cpp, after applicable_code_path in src/core/environment.cpp): the
    environment.overrides that choose the code on this device and attention, at values other
    than their defaults."""
    env = report.get("environment", {})
    overrides = env.get("overrides", {}) if isinstance(env, dict) else {}
    if not isinstance(overrides, dict):
        return {}
    path = {}
    for name, value in overrides.items():
        if not isinstance(value, str) or not value:
            continue
        gpu_only = name in ("KVBENCH_DECODE_LOOP", "KVBENCH_RETAINED_TOKENS", "KVBENCH_MODEL_OPS")
        cpu_only = name in ("KVBENCH_SIMD", "KVBENCH_PAGED_PATH")
        if ((gpu_only and device != "cuda") or (cpu_only and device != "cpu")
                or (name == "KVBENCH_MODEL_GEMM" and value == "aten")
                or (name == "KVBENCH_PAGED_PATH" and attention == "paged")):
            continue
        path[name] = value
    # Under paged attention on the CPU the variable picks the GPU path's code: another setup.
    if attention == "paged" and device == "cpu" and overrides.get("KVBENCH_PAGED_PATH") == "kernels":
        path["KVBENCH_PAGED_PATH"] = "kernels"
    return path


def setup_of(report, cell):
    """What a cell ran on, as `kvbench report` names it (its `setup` column): attention, device,
    threads, but for the kernels suite the model's keys (dotted: model.preset), and the code path
    (dotted: code_path.KVBENCH_SIMD) when the run chose one."""
    cfg = report.get("config", {})
    setup = {"attention": cfg.get("attention", "cpu"), "device": cfg.get("device", "cpu"),
             "threads": cfg.get("threads")}
    if cell.get("suite") != "kernels" and isinstance(cfg.get("model"), dict):
        setup.update({f"model.{k}": v for k, v in cfg["model"].items()})
    path = code_path_of(report, setup["device"], setup["attention"])
    setup.update({f"code_path.{k}": v for k, v in path.items()})
    return setup


def labelled_params(cell):
    """The cell's suite params with its setup: cells of two models or devices never share a
    series (the setup keys that differ join the label, as params do)."""
    return {**cell.get("_setup", {}), **cell.get("params", {})}


def fmt(v):
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def differing(dicts, skip=()):
    """Keys whose values differ between the given dicts (missing counts as different)."""
    keys = sorted({k for d in dicts for k in d} - set(skip))
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1]


class Labels:
    """Method labels (name, plus the params that differ between methods of that name) and
    suite-configuration labels (the params that differ between the cells of that suite)."""

    def __init__(self, cells):
        methods = collections.defaultdict(dict)
        self.params = collections.defaultdict(dict)
        for c in cells:
            methods[c["method"]["name"]][json.dumps(c["method"], sort_keys=True)] = c["method"]
            p = labelled_params(c)
            self.params[c["suite"]][json.dumps(p, sort_keys=True)] = p
        self.method_keys = {n: differing(list(ms.values()), skip=("name",)) for n, ms in methods.items()}

    def method(self, cell):
        m = cell["method"]
        extra = ",".join(f"{k}={fmt(m.get(k))}" for k in self.method_keys[m["name"]])
        return f"{m['name']}({extra})" if extra else m["name"]

    def config(self, cell, skip=(), within=None):
        """The suite params that differ between the suite's cells; with `within`, only between
        the cells whose param `within` (e.g. "task") has this cell's value."""
        p = labelled_params(cell)
        peers = [q for q in self.params[cell["suite"]].values()
                 if within is None or q.get(within) == p.get(within)]
        return ",".join(f"{k}={fmt(p.get(k))}" for k in differing(peers, skip))

    def series(self, cell, skip=()):
        conf = self.config(cell, skip)
        return f"{self.method(cell)} [{conf}]" if conf else self.method(cell)


def save(fig, out, name, written):
    fig.tight_layout()
    for ext in ("png", "pdf"):
        path = out / f"{name}.{ext}"
        fig.savefig(path, dpi=120)
        written.append(path)
    plt.close(fig)


def of_suite(cells, suite):
    return [c for c in cells if c["suite"] == suite]


def throughput_figures(cells, lab, out, written, skipped):
    names = ("throughput_vs_batch", "throughput_vs_length", "decode_speedup")
    cs = of_suite(cells, "throughput")
    if not cs:
        skipped.append((", ".join(names), "no throughput cells"))
        return
    # series -> [(batch, prompt, new_tokens, decode)]: new_tokens is a grid axis too.
    pts = collections.defaultdict(list)
    conf_of, is_full = {}, {}
    for c in cs:
        s = lab.series(c)
        conf_of[s], is_full[s] = lab.config(c), c["method"]["name"] == "full"
        for r in c["records"]:
            if r.get("kind") == "throughput":  # not the capacity view's record
                pts[s].append((r["batch"], r["prompt_tokens"], r.get("new_tokens"),
                               r["decode_tok_s"]))
    several_news = len({r[2] for rows in pts.values() for r in rows}) > 1
    for x_index, other_index, name, xlabel, other in ((0, 1, names[0], "batch", "prompt"),
                                                      (1, 0, names[1], "prompt tokens", "batch")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for s, rows in sorted(pts.items()):
            # One line per value of the other axis and of new_tokens (a line mixing two
            # new_tokens would zigzag between them).
            for fixed, news in sorted({(r[other_index], r[2]) for r in rows},
                                      key=lambda k: (k[0], -1 if k[1] is None else k[1])):
                sel = sorted((r[x_index], r[3]) for r in rows
                             if r[other_index] == fixed and r[2] == news)
                label = f"{s} ({other} {fixed}" + (f", new {news}" if several_news else "") + ")"
                ax.plot([p[0] for p in sel], [p[1] for p in sel], marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("decode tokens/s")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        ax.set_title("Decode throughput")
        save(fig, out, name, written)
    # Each method against the full cache of the same suite configuration and point.
    base = {}
    for s, rows in pts.items():
        if is_full[s]:
            for r in rows:
                base[(conf_of[s], r[0], r[1], r[2])] = r[3]
    methods = [s for s in sorted(pts) if not is_full[s]]
    if not base or not methods:
        skipped.append((names[2], "no throughput cells of both full and another method"))
        return
    keys = sorted(base, key=lambda k: (k[0], k[1], k[2], -1 if k[3] is None else k[3]))
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(methods)
    for i, s in enumerate(methods):
        got = {(conf_of[s], r[0], r[1], r[2]): r[3] for r in pts[s]}
        ax.bar([k + i * width for k in range(len(keys))],
               # A point the method lacks (a failed cell, another grid) is a gap, not 0x.
               # (a full cache that measured 0 tok/s gives no ratio either)
               [got.get(key, float("nan")) / base[key] if base[key] else float("nan")
                for key in keys], width, label=s)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([k + width * (len(methods) - 1) / 2 for k in range(len(keys))])
    ax.set_xticklabels([f"b{b}\np{p}" + (f"\nn{n}" if several_news else "") +
                        (f"\n{conf}" if conf else "") for conf, b, p, n in keys], fontsize=7)
    ax.set_ylabel("decode speed-up over full")
    ax.legend(fontsize=7)
    save(fig, out, names[2], written)


def length_shift(cells, lab, out, written, skipped):
    ds = collections.defaultdict(list)
    for c in of_suite(cells, "output_length"):
        ds[lab.series(c)].extend(r["d"] for r in c["records"])
    if not ds:
        skipped.append(("length_shift", "no output_length cells"))
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, d in sorted(ds.items()):
        ax.hist(d, bins=20, alpha=0.5, label=s)
    ax.set_xlabel("D = (L_full - L_method) / L_full x 100 (negative: longer)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)
    ax.set_title("Output length shift")
    save(fig, out, "length_shift", written)


def accuracy_figures(cells, lab, out, written, skipped):
    acc = of_suite(cells, "accuracy")
    if not acc:
        skipped.append(("accuracy_scatter, negative_samples", "no accuracy cells"))
        return
    methods = [c for c in acc if c["method"]["name"] != "full"]
    if not methods:
        skipped.append(("accuracy_scatter, negative_samples", "no accuracy cells of a method other than full"))
        return
    # Series: method x task (the record's task: the synthetic task or the data set) x the
    # other suite params that differ; theta and threshold only matter to negative_samples.
    points = collections.defaultdict(collections.Counter)  # series -> (full, method) -> n
    negatives = collections.defaultdict(lambda: [0, 0])  # (task group, method) -> [neg, n]
    thetas = {(fmt(c.get("params", {}).get("theta")), c.get("params", {}).get("threshold")) for c in methods}
    for c in methods:
        p = c.get("params", {})
        conf = lab.config(c, skip=("task", "theta", "threshold"), within="task")
        if len(thetas) > 1:  # the rule of each series and bar group, when the cells differ in it
            conf = ",".join(filter(None, [conf, f"theta={fmt(p.get('theta'))}",
                                          f"threshold={p.get('threshold')}"]))
        neg_conf = conf
        for r in c["records"]:
            task = r.get("task") or p.get("task") or "?"
            s = f"{lab.method(c)} · {task}" + (f" [{conf}]" if conf else "")
            points[s][(r["score_full"], r["score"])] += 1
            group = task + (f"\n{neg_conf}" if neg_conf else "")
            negatives[(group, lab.method(c))][0] += bool(r["negative"])
            negatives[(group, lab.method(c))][1] += 1

    if not points:
        skipped.append(("accuracy_scatter, negative_samples", "no per-sample records"))
        return
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    series = sorted(points)
    # Series side by side around each point, so pass/fail scores of several series do not
    # hide each other at (1, 1) and (1, 0); the area and the number give the count.
    step = min(0.05, 0.3 / len(series))
    peak = max(n for pts in points.values() for n in pts.values())
    for i, s in enumerate(series):
        dx = (i - (len(series) - 1) / 2) * step
        xy = sorted(points[s].items())
        xs = [k[0] + dx for k, _ in xy]
        ys = [k[1] for k, _ in xy]
        ax.scatter(xs, ys, s=[15 + 185 * n / peak for _, n in xy], alpha=0.6, label=s)
        for x, y, (_, n) in zip(xs, ys, xy):
            if n > 1:
                ax.annotate(str(n), (x, y), fontsize=6, ha="center", va="center")
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
    margin = 0.08 + step * len(series) / 2
    ax.set_xlim(-margin, 1 + margin)
    ax.set_ylim(-0.08, 1.08)
    ax.set_xlabel("score, full cache (series offset side by side)")
    ax.set_ylabel("score, method")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), title="method · task",
              title_fontsize=7)
    ax.set_title("Per-sample accuracy (marker area, number: samples)")
    save(fig, out, "accuracy_scatter", written)

    groups = sorted({g for g, _ in negatives})
    mlabels = sorted({m for _, m in negatives})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 3), 4))
    width = 0.8 / len(mlabels)
    top = 0
    for i, m in enumerate(mlabels):
        xs = [g_i + (i - (len(mlabels) - 1) / 2) * width for g_i in range(len(groups))]
        vals = [negatives.get((g, m), [0, 0]) for g in groups]
        bars = ax.bar(xs, [v[0] for v in vals], width, label=m)
        for bar, (neg, n) in zip(bars, vals):
            if n:
                ax.annotate(f"{neg}/{n}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            fontsize=6, ha="center", va="bottom")
        top = max([top] + [v[0] for v in vals])
    ax.set_xticks(list(range(len(groups))))
    ax.set_xticklabels(groups, fontsize=7)
    ax.set_ylim(0, max(top, 1) * 1.3)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("negative samples (of the task's samples)")
    ax.legend(fontsize=7)
    rule = "; ".join(f"theta = {t}, {th} threshold" for t, th in sorted(thetas, key=str))
    ax.set_title(f"Negative samples per task ({rule})", fontsize=9)
    save(fig, out, "negative_samples", written)


def cdf(ax, xs, **kw):
    xs = sorted(xs)
    ax.step([x * 1e3 for x in xs], [(i + 1) / len(xs) for i in range(len(xs))], where="post", **kw)


def latency_cdf(cells, lab, out, written, skipped):
    e2e = collections.defaultdict(list)
    for c in of_suite(cells, "latency"):
        for r in c["records"]:
            if r["kind"] == "e2e":
                e2e[lab.series(c)].extend(r["samples_s"])
    if not e2e:
        skipped.append(("latency_cdf", "no latency cells"))
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, xs in sorted(e2e.items()):
        cdf(ax, xs, label=s)
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.legend(fontsize=7)
    ax.set_title("Request latency CDF")
    save(fig, out, "latency_cdf", written)


def serving_cdf(cells, lab, out, written, skipped):
    runs = collections.defaultdict(dict)  # series -> rate label -> (ttft samples, e2e samples)
    for c in of_suite(cells, "serving"):
        for r in c["records"]:
            if r.get("kind") != "serving":
                continue
            rate = f"{fmt(r['rate'])}/s" + (" (trace)" if r.get("arrivals") == "trace" else "")
            runs[lab.series(c)][rate] = (r["ttft_samples_s"], r["samples_s"])
    if not runs:
        skipped.append(("serving_cdf", "no serving cells"))
        return
    series = sorted(runs)
    rates = sorted({rt for v in runs.values() for rt in v}, key=lambda t: float(t.split("/")[0]))
    colors = {s: f"C{i % 10}" for i, s in enumerate(series)}
    styles = ["-", "--", ":", "-."]
    style = {rt: styles[i % len(styles)] for i, rt in enumerate(rates)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, which, title in ((axes[0], 0, "time to first token"), (axes[1], 1, "end-to-end latency")):
        for s in series:
            for rt, samples in sorted(runs[s].items()):
                if samples[which]:
                    cdf(ax, samples[which], color=colors[s], linestyle=style[rt])
        ax.set_xlabel(f"{title} (ms)")
        ax.set_title(f"Serving: {title}")
    axes[0].set_ylabel("fraction of requests")
    handles = [Line2D([], [], color=colors[s], label=s) for s in series]
    handles += [Line2D([], [], color="gray", linestyle=style[rt], label=f"rate {rt}") for rt in rates]
    axes[1].legend(handles=handles, fontsize=7)
    save(fig, out, "serving_cdf", written)


def fidelity_kl(cells, lab, out, written, skipped):
    fid = {}
    for c in of_suite(cells, "fidelity"):
        fid[(lab.config(c), lab.method(c))] = c["summary"]
    if not fid:
        skipped.append(("fidelity_kl", "no fidelity cells"))
        return
    keys = sorted(fid)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(keys) + 2), 4))
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], [fid[k]["kl_mean"] for k in keys], 0.4, label="mean")
    ax.bar([i + 0.2 for i in x], [fid[k]["kl_p99"] for k in keys], 0.4, label="p99")
    ax.set_xticks(list(x))
    ax.set_xticklabels([m + (f"\n[{conf}]" if conf else "") for conf, m in keys], rotation=30,
                       ha="right", fontsize=7)
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
    cells = load_cells(args.reports)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lab = Labels(cells)
    written, skipped, failed = [], [], []
    for fn in (throughput_figures, length_shift, accuracy_figures, latency_cdf, serving_cdf, fidelity_kl):
        try:
            fn(cells, lab, out, written, skipped)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # A hand-edited or truncated report: one line per figure, not a traceback, and the
            # other figures are still drawn.
            failed.append(f"figures: {fn.__name__}: a report field is missing or of the wrong type "
                          f"({type(e).__name__}: {e})")
    for path in written:
        print(path)
    for what, why in skipped:
        print(f"figures: skipped {what}: {why}", file=sys.stderr)
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        sys.exit(1)
    if not written:
        sys.exit("figures: the reports hold no ok cell of a suite with a figure")


if __name__ == "__main__":
    main()
