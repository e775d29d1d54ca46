// Test helper: feeds the same blocks to a cache under test and a reference cache, step by
// step, and compares every output (relative Frobenius error). Used by the latent-page caches'
// tests, whose blocks and step plans differ but whose comparison does not.
#pragma once

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <functional>
#include <utility>
#include <vector>

#include "kvbench/kv/kv_cache.h"

namespace kvbench::testing_support {

struct Block {
  at::Tensor q, k, v;  // [heads, n, d], [kv_heads, n, d], [kv_heads, n, d]
};

// `sequences` sequences are added to both caches; step i appends steps[i].second tokens to
// sequence steps[i].first at every layer (blocks from `draw(n, gen)`, gen seeded with `seed`),
// asserting the outputs agree within `tolerance`; `after_step(seq)` runs after each step.
inline void compare_steps(KVCache& cache, KVCache& ref, int64_t layers, double tolerance,
                          int sequences, const std::vector<std::pair<int, int64_t>>& steps,
                          const std::function<Block(int64_t n, at::Generator& gen)>& draw,
                          uint64_t seed, const std::function<void(int64_t seq)>& after_step = {}) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<int64_t> ids;
  for (int s = 0; s < sequences; ++s) {
    ids.push_back(cache.add_sequence());
    ASSERT_EQ(ref.add_sequence(), ids.back());
  }
  for (const auto& [index, n] : steps) {
    const int64_t seq = ids[size_t(index)];
    for (int64_t layer = 0; layer < layers; ++layer) {
      const Block x = draw(n, gen);
      const at::Tensor got = cache.append_and_attend(seq, layer, x.q, x.k, x.v);
      const at::Tensor want = ref.append_and_attend(seq, layer, x.q, x.k, x.v);
      ASSERT_EQ(got.sizes(), want.sizes());
      ASSERT_EQ(got.device(), x.q.device());
      const double rel = ((got - want).norm() / want.norm()).item<double>();
      ASSERT_LT(rel, tolerance) << "sequence " << seq << " at " << cache.length(seq) << " tokens, "
                                << n << " new, layer " << layer;
    }
    if (after_step) after_step(seq);
  }
}

}  // namespace kvbench::testing_support
