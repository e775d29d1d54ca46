// Random keys and values for codec and kernel tests, shaped like real ones: a per-channel
// offset and one hot channel (8x), never all zero; seeded.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>

namespace kvbench::testing_support {

inline at::Tensor kv_like(int64_t heads, int64_t tokens, int64_t dim, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  at::Tensor x = at::randn({heads, tokens, dim}, gen, at::kFloat);
  x += at::randn({heads, 1, dim}, gen, at::kFloat) * 2;
  x.select(2, 3).mul_(8);
  return x;
}

}  // namespace kvbench::testing_support
