#!/usr/bin/env python3
"""Which weight multiply the suites' model should run, from one GPU session's own timings:
kvbench's small-batch kernel (bench/small_gemm_bench.cu's JSON lines) or cuBLAS (libtorch's
matmul, timed by scripts/gpu_model_peer.py on the same shapes, the faster of its Python-launched
and CUDA-graph timings), compared on a decode step's
weights (32 layers' projections and the head) at the e2e batch. Prints the value for
KVBENCH_MODEL_GEMM: the kernel's fastest block width ("kvbench": the launcher's choice,
"kvbench:16" or "kvbench:32") when its step is at least 2% faster than cuBLAS's, else "aten";
the reason goes to stderr. A file or record missing: "aten".

usage: best_model_gemm.py MODEL_PEER.jsonl SMALL_GEMM.jsonl [--batch 16]
"""
import argparse
import json
import sys


def step_us(path, batch, how):
    try:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("batch") == batch and r.get("matmul") == "step" and r.get("how") == how:
                    return float(r["us"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_peer")
    ap.add_argument("small_gemm")
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    # cuBLAS at its best: launched from Python or replayed from a CUDA graph (no launch cost).
    timed = [t for t in (step_us(a.model_peer, a.batch, h) for h in ("mm_t", "mm_t_graph"))
             if t is not None]
    cublas = min(timed) if timed else None
    widths = {"kvbench": "small_gemm", "kvbench:16": "small_gemm_c16",
              "kvbench:32": "small_gemm_c32"}
    timed = {k: step_us(a.small_gemm, a.batch, how) for k, how in widths.items()}
    timed = {k: t for k, t in timed.items() if t is not None}
    if cublas is None or not timed:
        print(f"model gemm: no step timing at batch {a.batch} (cuBLAS {cublas}, kvbench {timed})",
              file=sys.stderr)
        print("aten")
        return
    best = min(timed, key=timed.get)
    ours = timed[best]
    pick = best if ours < 0.98 * cublas else "aten"
    print(f"model gemm: a decode step's weights at batch {a.batch}: {best} {ours:.0f} us, "
          f"cuBLAS {cublas:.0f} us -> {pick}", file=sys.stderr)
    print(pick)


if __name__ == "__main__":
    main()
