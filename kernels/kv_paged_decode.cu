#include "kv_paged_decode.h"
#include "kv_paged_decode_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kThreads = 128;

// One thread per (token, KV head, key or value). Prefill-only: a row of head_dim values
// per thread is plenty at these sizes.
__global__ void dequantize_paged_kernel(PagedKvStore s, const int* pages, int kv_heads,
                                        int head_dim, int seq_row, int tokens, float* k_out,
                                        float* v_out) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long rows = (long long)tokens * kv_heads;
  if (i >= 2 * rows) return;
  const bool key = i < rows;
  const int r = int(key ? i : i - rows), h = r / tokens, t = r % tokens;
  float* out = (key ? k_out : v_out) + ((size_t)h * tokens + t) * head_dim;
  decode_paged_token(s, pages, kv_heads, head_dim, seq_row, key, h, t, tokens, out);
}

}  // namespace

cudaError_t dequantize_paged(const PagedKvStore& store, const int* pages, int kv_heads,
                             int head_dim, int seq_row, int tokens, float* k_out, float* v_out,
                             cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  const long long threads = 2LL * tokens * kv_heads;
  const unsigned blocks = unsigned((threads + kThreads - 1) / kThreads);
  dequantize_paged_kernel<<<blocks, kThreads, 0, stream>>>(store, pages, kv_heads, head_dim,
                                                           seq_row, tokens, k_out, v_out);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
