// Launches latent-space decode attention (latent_decode.h) on the GPU: one block per
// (sequence, query head); threads over tokens for the scores, over rank for the latent value
// sum, over head_dim for the projection back. All pointers are device pointers; `workspace`
// holds latent_workspace_bytes(problem) (the softmax weights of every block).
#pragma once

#include <cuda_runtime_api.h>

#include "latent_decode.h"

namespace kvbench::kernels {

inline size_t latent_workspace_bytes(const LatentProblem& p) {
  return size_t(p.batch) * p.q_heads * p.max_tokens * sizeof(float);
}

cudaError_t latent_decode(const LatentProblem& problem, void* workspace, cudaStream_t stream);

}  // namespace kvbench::kernels
