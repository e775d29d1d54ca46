#!/usr/bin/env python3
"""Summarise a `kvbench train` log (train_log.jsonl): a markdown table of the training curve
(loss, answer loss, learning rate, s/step every N steps, and every held-out evaluation), and
optionally a PNG figure.

    scripts/train_curve.py docs/models/kvbench-retrieval-1m.train_log.jsonl --every 50
    scripts/train_curve.py LOG --png docs/models/kvbench-retrieval-1m.png
"""
import argparse
import json
import pathlib


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--every", type=int, default=50, help="loss rows every N steps")
    ap.add_argument("--png", help="also write a figure (needs matplotlib)")
    args = ap.parse_args()
    rows = [json.loads(l) for l in pathlib.Path(args.log).read_text().splitlines() if l.strip()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval" in r]
    print("| step | loss | answer loss | lr | s/step |")
    print("|---:|---:|---:|---:|---:|")
    for r in steps:
        if r["step"] % args.every == 0 or r is steps[-1]:
            print(f"| {r['step']} | {r['loss']:.3f} | {r['answer_loss']:.3f} | {r['lr']:.2e} | "
                  f"{r['step_s']:.2f} |")
    if evals:
        cols = [f"{e['task']}@{e['target_tokens']}" for e in evals[0]["eval"]]
        print()
        print("| step | " + " | ".join(cols) + " |")
        print("|---:|" + "---:|" * len(cols))
        for r in evals:
            print(f"| {r['step']} | " + " | ".join(f"{e['score']:.2f}" for e in r["eval"]) + " |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        a.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="all tokens")
        a.plot([r["step"] for r in steps], [r["answer_loss"] for r in steps], label="answer tokens")
        a.set_xlabel("step"), a.set_ylabel("loss (nats/token)"), a.set_yscale("log"), a.legend()
        for i, name in enumerate(cols if evals else []):
            b.plot([r["step"] for r in evals], [r["eval"][i]["score"] for r in evals], "o-",
                   label=name)
        b.set_xlabel("step"), b.set_ylabel("held-out accuracy (full cache)"), b.set_ylim(-0.02, 1.02)
        b.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.png, dpi=90)


if __name__ == "__main__":
    main()
