#include "quest_score_device.h"
#include "quest_score_launcher.h"

namespace kvbench::kernels {
namespace {

namespace qd = quest_device;

__global__ void quest_score_kernel(QuestScoreProblem p) { qd::score_body(p); }
__global__ void quest_fold_kernel(QuestFoldProblem p) { qd::fold_body(p); }
__global__ void quest_select_kernel(QuestSelectProblem p) { qd::select_body(p); }

}  // namespace

cudaError_t quest_score(const QuestScoreProblem& problem, cudaStream_t stream) {
  if (quest_score_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid((problem.most + qd::kWarps - 1) / qd::kWarps, problem.batch);
  quest_score_kernel<<<grid, 32 * qd::kWarps, 0, stream>>>(problem);
  return cudaGetLastError();
}

cudaError_t quest_fold(const QuestFoldProblem& problem, cudaStream_t stream) {
  if (quest_fold_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid((problem.kv_heads * problem.head_dim + qd::kFoldThreads - 1) / qd::kFoldThreads,
                  problem.batch);
  quest_fold_kernel<<<grid, qd::kFoldThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

cudaError_t quest_select(const QuestSelectProblem& problem, cudaStream_t stream) {
  if (quest_select_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid(problem.kv_heads, problem.batch);
  quest_select_kernel<<<grid, qd::kSelectThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
