// Launches Quest's page scoring (quest_score.h) on the GPU: one warp per (sequence, page),
// its lanes over channels, every KV head in turn. All pointers in the problem are device
// pointers.
#pragma once

#include <cuda_runtime_api.h>

#include "quest_score.h"

namespace kvbench::kernels {

cudaError_t quest_score(const QuestScoreProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
