#include "retained_decode_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kLanes = 32;

// Block = one warp = one (sequence, query head). Lane l attends kept tokens l, l + 32, ...;
// then lane l merges channel d = l, l + 32, ... of all 32 partials against their common max.
// Each lane decodes whole token rows (decode_paged_token), so a first version that reads the
// formats exactly as the host reference does; the tensor-core kernel (decode_attention.cu)
// remains the fast path for uncompressed-order caches.
__global__ void retained_decode_kernel(RetainedProblem pr, PagedKvStore s) {
  __shared__ RetainedPartial parts[kLanes];
  const int b = blockIdx.x / pr.q_heads, qh = blockIdx.x % pr.q_heads, lane = threadIdx.x;
  retained_partial(pr, s, b, qh, lane, kLanes, parts[lane]);
  __syncthreads();
  float m = -INFINITY;
  for (int l = 0; l < kLanes; ++l) m = fmaxf(m, parts[l].max);
  float sum = 0.f;
  for (int l = 0; l < kLanes; ++l) sum += parts[l].sum * expf(parts[l].max - m);
  float* out = pr.out + (size_t(b) * pr.q_heads + qh) * pr.head_dim;
  for (int d = lane; d < pr.head_dim; d += kLanes) {
    float acc = 0.f;
    for (int l = 0; l < kLanes; ++l) acc += parts[l].acc[d] * expf(parts[l].max - m);
    out[d] = acc / sum;
  }
}

}  // namespace

cudaError_t retained_decode(const RetainedProblem& problem, const PagedKvStore& store,
                            cudaStream_t stream) {
  if (retained_check(problem, store)[0] != '\0') return cudaErrorInvalidValue;
  retained_decode_kernel<<<problem.batch * problem.q_heads, kLanes, 0, stream>>>(problem, store);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
