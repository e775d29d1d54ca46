#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention as the peer of kvbench's fp16 decode kernel.

Same shapes as bench/gpu_decode_bench.cu (one Llama-3-8B layer: 32 query heads, 8 KV heads,
head_dim 128, one query token), contiguous fp16 caches [batch, kv_heads, context, head_dim],
enable_gqa=True, rotated among replicas so small caches are not served from L2. Reads the
kernel bench's JSON lines (--ours) and prints both side by side.

usage: gpu_sdpa_peer.py --ours decode_bench.jsonl [--out sdpa.jsonl]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def time_ms(fn, reps=10, iters=13):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for it in range(iters):
        start.record()
        for r in range(reps):
            fn(it * reps + r)
        end.record()
        end.synchronize()
        if it >= 3:
            samples.append(start.elapsed_time(end) / reps)
    return statistics.median(samples)


def copy_gbps():
    a = torch.empty(2 << 30, dtype=torch.uint8, device="cuda").fill_(1)
    b = torch.empty_like(a)
    ms = time_ms(lambda i: b.copy_(a), reps=1, iters=12)
    return 2 * a.numel() / (ms * 1e-3) / 1e9


def sdpa_case(batch, context, backend):
    hq, hkv, d = 32, 8, 128
    cache_bytes = 2 * batch * hkv * context * d * 2
    replicas = max(1, min(16, int(512e6 // cache_bytes)))
    ks = [torch.randn(batch, hkv, context, d, device="cuda", dtype=torch.float16) for _ in range(replicas)]
    vs = [torch.randn(batch, hkv, context, d, device="cuda", dtype=torch.float16) for _ in range(replicas)]
    q = torch.randn(batch, hq, 1, d, device="cuda", dtype=torch.float16)

    def step(i):
        return F.scaled_dot_product_attention(q, ks[i % replicas], vs[i % replicas], enable_gqa=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}
    try:
        if backends[backend] is None:
            ms = time_ms(step)
        else:
            with sdpa_kernel(backends[backend]):
                ms = time_ms(step)
    except RuntimeError as e:
        return None, str(e).splitlines()[0][:80]
    finally:
        del ks, vs
    return ms * 1e3, cache_bytes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    ours = []
    for line in open(args.ours):
        try:
            ours.append(json.loads(line))
        except json.JSONDecodeError:  # the bench was cut mid-line: keep what it finished
            print(f"skipping an unfinished line of {args.ours}")
    if not ours:
        raise SystemExit(f"{args.ours}: no rows")
    header, rows = ours[0], ours[1:]
    gbps = copy_gbps()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; torch copy bandwidth {gbps:.0f} GB/s "
          f"(kernel bench measured {header['copy_gbps']:.0f})")
    out = open(args.out, "w") if args.out else None
    print(f"{'batch':>5} {'context':>7} {'kvbench fp16 us':>15} {'sdpa us':>9} {'backend':>9} {'sdpa/ours':>9} {'sdpa %copy':>10}")
    for row in rows:
        if row["format"] != "fp16" or row.get("loop", "v2") != "v2":  # one SDPA run per shape
            continue
        best = None
        for backend in ("default", "flash", "efficient", "cudnn"):
            us, info = sdpa_case(row["batch"], row["context"], backend)
            rec = {"batch": row["batch"], "context": row["context"], "backend": backend, "us_per_step": us}
            if us is None:
                rec["error"] = info
            elif best is None or us < best[0]:
                best = (us, backend, info)
            if out:
                out.write(json.dumps(rec) + "\n")
        if best:
            us, backend, nbytes = best
            print(f"{row['batch']:>5} {row['context']:>7} {row['us_per_step']:>15.1f} {us:>9.1f} {backend:>9} "
                  f"{us / row['us_per_step']:>9.2f} {100 * nbytes / (us * 1e-6) / 1e9 / gbps:>9.0f}%")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
