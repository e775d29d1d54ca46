// The `kernels` suite on a GPU (device: cuda): per point (context x KV heads, the cell's batch),
// the time of one decode step of the paged decode kernel over a cache of random tokens in the
// method's paged format (kernels/; the block tables stay on the device, so a step is one
// launch), the bytes it must read (pages, rings, scales, q and the output) and the achieved
// GB/s against the device's copy bandwidth measured in the same cell; beside each point,
// PyTorch's scaled_dot_product_attention over an fp16 cache of the same shape (GQA), the peer
// the fp16 kernel must not lose to (libtorch 2.x; a 1.13 build records why it has none).
#pragma once

#include "kvbench/suites/suite.h"

namespace kvbench {

// The cell's records and summary; throws Error (the cell fails) for a method without a paged
// format or a build without the kernels.
CellOutput run_kernels_on_gpu(const CellContext& ctx);

// Peak device bytes of such a cell (the largest point's cache, or the copy buffers).
uint64_t estimate_kernels_on_gpu(const nlohmann::json& params, const nlohmann::json& method);

// "auto" contexts on a GPU: 1k, 2k, ..., 128k tokens (the range; a GPU's L2 is a few
// tens of MiB, so only the shortest points can be cache numbers, and each point says).
std::vector<int64_t> gpu_auto_contexts();

}  // namespace kvbench
