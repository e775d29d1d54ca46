// Launches Quest's page scoring, page choice and bound folding (quest_score.h) on the GPU. Scoring:
// one warp per (sequence, page), its lanes over channels, every KV head in turn. All pointers in
// the problem are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include "quest_score.h"

namespace kvbench::kernels {

cudaError_t quest_score(const QuestScoreProblem& problem, cudaStream_t stream);

// The step's new keys into their pages' bounds (QuestFoldProblem): a thread per element.
cudaError_t quest_fold(const QuestFoldProblem& problem, cudaStream_t stream);

// The pages each (sequence, KV head) reads, as the tokens of all but the newest
// (QuestSelectProblem): a block of 256 threads per (KV head, sequence).
cudaError_t quest_select(const QuestSelectProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
