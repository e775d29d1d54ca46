// Times H2O's prefill-block sums (kernels/summed_attention.h: an lse pass and a column pass
// over tensor-core scores) at a Llama-3-8B layer's shape (32 query heads, 8 KV heads,
// head_dim 128), one sequence's whole prefill of n tokens, fp16. Prints one JSON line per n:
// the median time of both passes, the tensor-core rate they reach (two passes of the causal
// score products), and what an e2e prefill of configs/gpu-e2e.json (16 sequences x 32 layers)
// spends in them. Values are random (time does not depend on them).
//
// usage: summed_attention_bench [--out FILE.jsonl]
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "bench_check.h"
#include "summed_attention_launcher.h"

namespace k = kvbench::kernels;

int main(int argc, char** argv) {
  FILE* out = nullptr;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) out = std::fopen(argv[++i], "w");
  const int heads = 32, kv_heads = 8, D = 128;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int n : {2048, 8192, 16384}) {
    std::vector<__half> q(size_t(heads) * n * D), kk(size_t(kv_heads) * n * D);
    for (auto& x : q) x = __float2half(normal(rng));
    for (auto& x : kk) x = __float2half(normal(rng));
    void *dq, *dk, *dlse, *dout;
    CHECK(cudaMalloc(&dq, q.size() * 2));
    CHECK(cudaMalloc(&dk, kk.size() * 2));
    CHECK(cudaMalloc(&dlse, size_t(heads) * n * 4));
    CHECK(cudaMalloc(&dout, size_t(kv_heads) * n * 4));
    CHECK(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dk, kk.data(), kk.size() * 2, cudaMemcpyHostToDevice));
    k::SummedAttentionProblem p;
    p.heads = heads, p.kv_heads = kv_heads, p.head_dim = D, p.n = n, p.held = n;
    p.scale = 1.f / std::sqrt(float(D));
    p.q = static_cast<const uint16_t*>(dq), p.k = static_cast<const uint16_t*>(dk);
    p.lse = static_cast<float*>(dlse), p.out = static_cast<float*>(dout);
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    std::vector<float> times;
    for (int r = 0; r < 12; ++r) {
      CHECK(cudaEventRecord(e0));
      CHECK(k::summed_attention(p, nullptr));
      CHECK(cudaEventRecord(e1));
      CHECK(cudaEventSynchronize(e1));
      float ms = 0.f;
      CHECK(cudaEventElapsedTime(&ms, e0, e1));
      if (r >= 2) times.push_back(ms);  // two warm-ups
    }
    std::sort(times.begin(), times.end());
    const double ms = times[times.size() / 2];
    // Each pass multiplies every (query, key it sees) pair: n (n + 1) / 2 per head, 2 D flops.
    const double flops = 2.0 * 2.0 * D * heads * (double(n) * (n + 1) / 2);
    char line[512];
    std::snprintf(line, sizeof line,
                  "{\"bench\": \"summed_attention\", \"n\": %d, \"heads\": %d, \"kv_heads\": %d, "
                  "\"head_dim\": %d, \"ms\": %.4f, \"tflops\": %.1f, "
                  "\"e2e_prefill_s\": %.3f}\n",
                  n, heads, kv_heads, D, ms, flops / (ms * 1e-3) / 1e12, ms * 1e-3 * 16 * 32);
    std::fputs(line, stdout);
    if (out) std::fputs(line, out), std::fflush(out);
    cudaFree(dq), cudaFree(dk), cudaFree(dlse), cudaFree(dout);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
  }
  if (out) std::fclose(out);
  return 0;
}
