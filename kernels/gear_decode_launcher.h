// Launches GEAR's decode attention (gear_decode.h) on the GPU: blocks per (split of the
// sequence's tokens, KV head, sequence) of four warps, which rebuild 32 tokens at a time in
// shared memory (codes, scales, clamped low-rank term, outliers; the exact buffer as stored)
// and attend over them with an online softmax on CUDA cores; a second kernel merges the
// splits. All pointers are device pointers; `workspace` holds plan.workspace_bytes.
#pragma once

#include <cuda_runtime_api.h>

#include "gear_decode.h"

namespace kvbench::kernels {

struct GearPlan {
  int splits = 1;              // blocks per (sequence, KV head)
  int tokens_per_split = 32;   // a multiple of kGearTile; splits cover the longest sequence
  size_t workspace_bytes = 0;  // split partials: (max, sum, head_dim sums) per query head
};

// cudaErrorInvalidValue when the problem is invalid (gear_check() says why). max_len must be
// >= every seq_lens entry.
cudaError_t gear_plan(const GearProblem& problem, int max_len, int sm_count, GearPlan* plan);
cudaError_t gear_decode(const GearProblem& problem, const GearPlan& plan, void* workspace,
                        cudaStream_t stream);

}  // namespace kvbench::kernels
