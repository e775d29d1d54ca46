// Launches Palu's decode attention (palu_decode.h) on the GPU: blocks per (split of the
// sequence's tiles, KV head, sequence), four warps each taking 16-token tiles: the tile's key
// latents times the head's key basis on tensor cores (mma.m16n8k16), RoPE on the fp32
// fragments, scores against the query group, online softmax, the value latents summed on
// tensor cores; then a second kernel merges the splits and projects the latent sums back
// through the value basis. All pointers are device pointers; `workspace` holds
// plan.workspace_bytes.
#pragma once

#include <cuda_runtime_api.h>

#include "palu_decode.h"

namespace kvbench::kernels {

struct PaluPlan {
  int splits = 1;              // blocks per (sequence, KV head)
  int tiles_per_split = 1;     // 16-token tiles of a split (splits cover the longest sequence)
  size_t workspace_bytes = 0;  // split partials: (max, sum, rank latent sums) per query head
};

// cudaErrorInvalidValue when the problem is invalid (palu_check() says why) or the RoPE tables
// do not cover max_len. max_len must be >= the tokens every sequence attends (its seq_lens
// entry, or with kept lists its kept count): the splits cover that many, and a longer
// sequence's last tiles would be left out. The RoPE tables must cover every position read
// (every seq_lens entry), which with kept lists the caller ensures.
cudaError_t palu_plan(const PaluProblem& problem, int max_len, int sm_count, PaluPlan* plan);
cudaError_t palu_decode(const PaluProblem& problem, const PaluPlan& plan, void* workspace,
                        cudaStream_t stream);

}  // namespace kvbench::kernels
