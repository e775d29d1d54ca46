#!/usr/bin/env python3
"""What PyTorch's own matrix multiplies take for the weights of a Llama-3-8B decode step, the
part of kvbench's end-to-end step that is not attention.

The e2e suite (configs/gpu-e2e.json) decodes batch 16 over Llama-3-8B shapes with random fp16
weights: per layer four projections (fused q/k/v, o, fused gate/up, down), then the head over
the vocabulary. kvbench multiplies them as at::mm(x, w.t()) with w [out, in]
(src/model/transformer.cpp). The H200's full-cache step took 11.5 ms, ~4.3 of them in the
attention kernels: the rest, ~15 GB of weights (all but the embedding table), ran at
~2.1 TB/s. This times the same
multiplies alone, over 32 layers' own weights (nothing served from L2), against the device's
copy rate measured in the same process, to tell whether that gap is cuBLAS's or kvbench's.

usage: gpu_model_peer.py [--batch 1 16 64] [--out model_peer.jsonl]
"""
import argparse
import json
import statistics

import torch

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS = 4096, 14336, 32, 8, 128, 128256, 32
PROJECTIONS = {  # name: (out, in), as kvbench fuses them
    "qkv": ((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN),
    "o": (HIDDEN, HEADS * HEAD_DIM),
    "gate_up": (2 * INTER, HIDDEN),
    "down": (HIDDEN, INTER),
}
PROJECTIONS_NAMES = list(PROJECTIONS)


def time_ms(fn, reps=5, iters=8):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for it in range(iters):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        if it >= 2:
            samples.append(start.elapsed_time(end) / reps)
    return statistics.median(samples)


def copy_gbps():
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").fill_(1)
    b = torch.empty_like(a)
    ms = time_ms(lambda: b.copy_(a), reps=1, iters=12)
    del a, b
    return 2 * (2 << 30) / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--out")
    args = ap.parse_args()
    gbps = copy_gbps()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; copy {gbps:.0f} GB/s")
    gen = torch.Generator(device="cuda").manual_seed(5)

    def weights(out, inp, n):
        return [torch.randn(out, inp, device="cuda", dtype=torch.float16, generator=gen) * 0.02
                for _ in range(n)]

    layers = {name: weights(o, i, LAYERS) for name, (o, i) in PROJECTIONS.items()}
    head = weights(VOCAB, HIDDEN, 1)[0]
    out = open(args.out, "w") if args.out else None
    print(f"{'batch':>5} {'matmul':>8} {'us':>9} {'GB/s':>7} {'%copy':>6}")
    for batch in args.batch:
        rows = {}
        for name, ws in list(layers.items()) + [("head", [head])]:
            x = torch.randn(batch, ws[0].shape[1], device="cuda", dtype=torch.float16, generator=gen)
            nbytes = ws[0].numel() * 2 + x.numel() * 2 + batch * ws[0].shape[0] * 2
            # All layers' weights in turn, as a step reads them: one timing over every copy.
            # mm_t_graph replays the same multiplies from a CUDA graph: Python's launch cost
            # (several us a call, as long as a 4096-wide multiply at batch 16) left out, as in
            # kvbench's C++ step, whose host keeps ahead of the device.
            step = {"mm_t": lambda ws=ws, x=x: [torch.mm(x, w.t()) for w in ws],
                    "linear": lambda ws=ws, x=x: [torch.nn.functional.linear(x, w) for w in ws]}
            graphed = as_graph(step["mm_t"])
            if graphed:
                step["mm_t_graph"] = graphed
            for how, fn in step.items():
                us = time_ms(fn) * 1e3 / len(ws)
                rec = {"batch": batch, "matmul": name, "how": how, "us": us, "bytes": nbytes,
                       "gbps": nbytes / (us * 1e-6) / 1e9, "copy_fraction": nbytes / (us * 1e-6) / 1e9 / gbps}
                rows[(name, how)] = rec
                if out:
                    out.write(json.dumps(rec) + "\n")
            r = rows[(name, "mm_t")]
            g = rows.get((name, "mm_t_graph"))
            print(f"{batch:>5} {name:>8} {r['us']:>9.1f} {r['gbps']:>7.0f} {100 * r['copy_fraction']:>5.0f}%"
                  f"  (linear {rows[(name, 'linear')]['us']:.1f} us"
                  + (f", graph {g['us']:.1f} us)" if g else ")"))
        for how in ("mm_t", "mm_t_graph"):
            if (PROJECTIONS_NAMES[0], how) not in rows or ("head", how) not in rows:
                continue
            step_us = sum(rows[(n, how)]["us"] for n in PROJECTIONS) * LAYERS + rows[("head", how)]["us"]
            step_bytes = sum(rows[(n, how)]["bytes"] for n in PROJECTIONS) * LAYERS + rows[("head", how)]["bytes"]
            summary = {"batch": batch, "matmul": "step", "how": how, "us": step_us, "bytes": step_bytes,
                       "gbps": step_bytes / (step_us * 1e-6) / 1e9}
            summary["copy_fraction"] = summary["gbps"] / gbps
            print(f"{batch:>5} {'step':>8} {step_us:>9.1f} {summary['gbps']:>7.0f} {100 * summary['copy_fraction']:>5.0f}%"
                  f"  ({how}: a decode step's weights, {LAYERS} layers and the head)")
            if out:
                out.write(json.dumps(summary) + "\n")


def as_graph(fn):
    """fn captured in a CUDA graph, as a function replaying it; None where capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # warm-up off the capture (cuBLAS picks and allocates its workspace here)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay
    except Exception as e:  # noqa: BLE001 - a timing left out, not a failed run
        print(f"CUDA graph capture failed ({e}); mm_t_graph left out")
        return None

if __name__ == "__main__":
    main()
