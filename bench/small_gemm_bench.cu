// Times kvbench's small-batch weight multiply (kernels/small_gemm.h) over a Llama-3-8B decode
// step's weights, in the same records as scripts/gpu_model_peer.py's cuBLAS timings, so the two
// compare line by line: per projection (fused QKV, o, fused gate/up, down, the head) and batch,
// the microseconds per multiply over all 32 layers' own weights in turn (nothing served from
// L2), the bytes it must move (weights, x, y) and their rate against the device's copy rate
// measured in this process; then a "step" record summing a decode step's multiplies. "how" is
// small_gemm (the launcher's block width), small_gemm_c16 or small_gemm_c32. fp16, random values
// (time does not depend on them). scripts/best_model_gemm.py picks the faster path for the
// suites.
//
// usage: small_gemm_bench [--batch 1 16 32] [--out FILE.jsonl]
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_check.h"
#include "small_gemm_launcher.h"

namespace k = kvbench::kernels;

namespace {

constexpr int kHidden = 4096, kInter = 14336, kVocab = 128256, kLayers = 32;

struct Projection {
  const char* name;
  int out, in, copies;
};
const Projection kProjections[] = {{"qkv", 6144, kHidden, kLayers},
                                   {"o", kHidden, kHidden, kLayers},
                                   {"gate_up", 2 * kInter, kHidden, kLayers},
                                   {"down", kHidden, kInter, kLayers},
                                   {"head", kVocab, kHidden, 1}};

// Median milliseconds of `run` over 6 timed rounds after 2 warm-ups.
template <class Run>
double median_ms(Run run) {
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < 8; ++r) {
    CHECK(cudaEventRecord(a));
    run();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, a, b));
    if (r >= 2) ms.push_back(t);
  }
  cudaEventDestroy(a), cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

double copy_gbps() {
  const size_t n = size_t(2) << 30;
  void *a, *b;
  CHECK(cudaMalloc(&a, n));
  CHECK(cudaMalloc(&b, n));
  CHECK(cudaMemset(a, 1, n));
  const double ms = median_ms([&] { CHECK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice)); });
  cudaFree(a), cudaFree(b);
  return 2.0 * n / (ms * 1e-3) / 1e9;
}

// Random fp16 values in [-0.05, 0.05) by a hash: the same on every run.
__global__ void fill(__half* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    p[i] = __float2half((float(h & 0xffff) / 65536.f - 0.5f) * 0.1f);
  }
}

}  // namespace

int main(int argc, char** argv) {
  FILE* out = nullptr;
  std::vector<int> batches;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
      out = std::fopen(argv[++i], "w");
    } else if (std::strcmp(argv[i], "--batch") == 0) {
      while (i + 1 < argc && argv[i + 1][0] != '-') batches.push_back(std::atoi(argv[++i]));
    }
  }
  if (batches.empty()) batches = {1, 16, 32};
  const double gbps = copy_gbps();
  std::printf("copy %.0f GB/s\n%5s %8s %15s %9s %7s %6s\n", gbps, "batch", "matmul", "how", "us",
              "GB/s", "%copy");
  std::vector<std::vector<__half*>> weights;
  unsigned seed = 1;
  for (const Projection& p : kProjections) {
    weights.emplace_back();
    for (int c = 0; c < p.copies; ++c) {
      __half* w;
      CHECK(cudaMalloc(&w, size_t(p.out) * p.in * 2));
      fill<<<1024, 256>>>(w, size_t(p.out) * p.in, seed++);
      weights.back().push_back(w);
    }
  }
  __half *x, *y;
  CHECK(cudaMalloc(&x, size_t(32) * kInter * 2));
  CHECK(cudaMalloc(&y, size_t(32) * kVocab * 2));
  fill<<<64, 256>>>(x, size_t(32) * kInter, 99);
  CHECK(cudaDeviceSynchronize());
  for (int batch : batches) {
    for (const std::string how : {"small_gemm", "small_gemm_c16", "small_gemm_c32"}) {
      double step_us = 0, step_bytes = 0;
      for (size_t j = 0; j < std::size(kProjections); ++j) {
        const Projection& pr = kProjections[j];
        k::SmallGemmProblem p;
        p.rows = batch, p.in = pr.in, p.out = pr.out, p.dtype = k::ActDtype::kF16;
        p.x = x, p.y = y, p.columns = how == "small_gemm" ? 0 : (how == "small_gemm_c16" ? 16 : 32);
        const double ms = median_ms([&] {
          for (__half* w : weights[j]) {
            p.w = w;
            CHECK(k::small_gemm(p, nullptr));
          }
        });
        const double us = ms * 1e3 / pr.copies;
        const double bytes = 2.0 * (double(pr.out) * pr.in + double(batch) * (pr.in + pr.out));
        const double rate = bytes / (us * 1e-6) / 1e9;
        step_us += us * pr.copies, step_bytes += bytes * pr.copies;
        char line[512];
        std::snprintf(line, sizeof line,
                      "{\"batch\": %d, \"matmul\": \"%s\", \"how\": \"%s\", \"us\": %.3f, "
                      "\"bytes\": %.0f, \"gbps\": %.1f, \"copy_fraction\": %.4f}\n",
                      batch, pr.name, how.c_str(), us, bytes, rate, rate / gbps);
        if (out) std::fputs(line, out);
        std::printf("%5d %8s %15s %9.1f %7.0f %5.0f%%\n", batch, pr.name, how.c_str(), us, rate,
                    100 * rate / gbps);
      }
      const double rate = step_bytes / (step_us * 1e-6) / 1e9;
      char line[512];
      std::snprintf(line, sizeof line,
                    "{\"batch\": %d, \"matmul\": \"step\", \"how\": \"%s\", \"us\": %.3f, "
                    "\"bytes\": %.0f, \"gbps\": %.1f, \"copy_fraction\": %.4f}\n",
                    batch, how.c_str(), step_us, step_bytes, rate, rate / gbps);
      if (out) std::fputs(line, out), std::fflush(out);
      std::printf("%5d %8s %15s %9.1f %7.0f %5.0f%%  (a decode step's weights)\n", batch, "step",
                  how.c_str(), step_us, rate, 100 * rate / gbps);
    }
  }
  if (out) std::fclose(out);
  return 0;
}
