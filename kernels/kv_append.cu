#include "kv_append_launcher.h"

#include <string>

namespace kvbench::kernels {
namespace {

thread_local std::string g_last_error;

// Appending is a few rows per sequence and layer, latency- not bandwidth-bound, so one kernel
// switches on the format at run time rather than compiling a variant per format.
__global__ void append_phase(AppendProblem p, PagedKvStore s, int phase) {
  append::run_thread(p, s, phase, blockIdx.z, blockIdx.y, blockIdx.x * blockDim.x + threadIdx.x,
                     gridDim.x * blockDim.x);
}

}  // namespace

cudaError_t append_kv(const AppendProblem& problem, const PagedKvStore& store,
                      cudaStream_t stream) {
  g_last_error = append_check(problem, store);
  if (!g_last_error.empty()) return cudaErrorInvalidValue;
  if (problem.batch > 65535 || problem.kv_heads > 65535) {
    g_last_error = "batch and kv_heads must be <= 65535";
    return cudaErrorInvalidValue;
  }
  for (int phase = 0; phase < 2; ++phase) {
    const int blocks = append::blocks_x(problem, store, phase);
    if (blocks == 0) continue;
    const dim3 grid(blocks, problem.kv_heads, problem.batch);
    append_phase<<<grid, append::kThreads, 0, stream>>>(problem, store, phase);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

const char* append_last_error() { return g_last_error.c_str(); }

}  // namespace kvbench::kernels
