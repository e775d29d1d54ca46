#include "quest_score_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kWarps = 4;

// Warp w of block (x, b) scores page 4x + w of sequence b for every KV head: the lanes read
// consecutive channels of a bound row (coalesced), sum their share and reduce with shuffles.
// The same arithmetic as quest_page_partial() over strided channels, in another order.
__global__ void quest_score_kernel(QuestScoreProblem p) {
  const int b = blockIdx.y, lane = threadIdx.x % 32;
  const int page = blockIdx.x * kWarps + threadIdx.x / 32;
  if (page >= p.most) return;
  const bool held = page < p.pages[b];
  for (int h = 0; h < p.kv_heads; ++h) {
    float u = held ? quest_page_partial(p, b, h, page, lane, 32) : 0.f;
    for (int o = 16; o > 0; o /= 2) u += __shfl_xor_sync(0xffffffffu, u, o);
    if (lane == 0) p.out[(size_t(b) * p.kv_heads + h) * p.most + page] = u;
  }
}

__global__ void quest_fold_kernel(QuestFoldProblem p) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e < p.kv_heads * p.head_dim) quest_fold_element(p, blockIdx.y, e);
}

}  // namespace

cudaError_t quest_score(const QuestScoreProblem& problem, cudaStream_t stream) {
  if (quest_score_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid((problem.most + kWarps - 1) / kWarps, problem.batch);
  quest_score_kernel<<<grid, 32 * kWarps, 0, stream>>>(problem);
  return cudaGetLastError();
}

cudaError_t quest_fold(const QuestFoldProblem& problem, cudaStream_t stream) {
  if (quest_fold_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  constexpr int kThreads = 256;
  const dim3 grid((problem.kv_heads * problem.head_dim + kThreads - 1) / kThreads, problem.batch);
  quest_fold_kernel<<<grid, kThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
