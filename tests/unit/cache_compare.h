// Test helpers: feed the same blocks to a cache under test and a reference cache, step by
// step (one sequence at a time, or packed batches), and compare every output (relative
// Frobenius error). Used by the latent-page and GEAR caches' tests, whose blocks and step plans
// differ but whose comparison does not.
#pragma once

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <string>
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

// Packed batches: `seqs` (already added to both caches) take step after step, step i bringing
// steps[i][b] tokens to seqs[b], every layer in one append_and_attend_batch call of `cache`
// (inputs on `device`, in `dtype`); each sequence's rows must equal what `ref` gives it alone
// (inputs in fp32), within `tolerance`; `cache` answers in `dtype`.
inline void compare_batched_steps(KVCache& cache, KVCache& ref, int64_t layers, double tolerance,
                                  const std::vector<int64_t>& seqs,
                                  const std::vector<std::vector<int64_t>>& steps,
                                  const std::function<Block(int64_t n, at::Generator& gen)>& draw,
                                  uint64_t seed, at::Device device,
                                  at::ScalarType dtype = at::kFloat) {
  auto gen = at::detail::createCPUGenerator(seed);
  for (const std::vector<int64_t>& counts : steps)
    for (int64_t layer = 0; layer < layers; ++layer) {
      std::vector<Block> blocks;
      std::vector<at::Tensor> q, k, v;
      for (int64_t n : counts) {
        blocks.push_back(draw(n, gen));
        q.push_back(blocks.back().q.transpose(0, 1));
        k.push_back(blocks.back().k.transpose(0, 1));
        v.push_back(blocks.back().v.transpose(0, 1));
      }
      const at::Tensor got =
          cache.append_and_attend_batch(layer, seqs, counts, at::cat(q).to(device, dtype),
                                        at::cat(k).to(device, dtype), at::cat(v).to(device, dtype));
      ASSERT_EQ(got.scalar_type(), dtype);
      for (size_t b = 0, row = 0; b < seqs.size(); row += size_t(counts[b]), ++b) {
        const Block& x = blocks[b];
        const at::Tensor want = ref.append_and_attend(seqs[b], layer, x.q, x.k, x.v);
        const at::Tensor mine =
            got.narrow(0, int64_t(row), counts[b]).transpose(0, 1).to(at::kCPU, at::kFloat);
        const double rel = ((mine - want).norm() / want.norm()).item<double>();
        ASSERT_LT(rel, tolerance) << "sequence " << b << " at " << cache.length(seqs[b])
                                  << " tokens, " << counts[b] << " new, layer " << layer;
      }
    }
}

// One packed step, drawn before any cache runs it (so that counting a cache's operators sees
// that cache's only): per layer, each sequence's block and the q, k, v of all of them as one
// append_and_attend_batch call takes them ([tokens, heads, d] in `dtype`).
struct PackedStep {
  std::vector<std::vector<Block>> blocks;         // [layer][sequence]
  std::vector<std::array<at::Tensor, 3>> packed;  // [layer]: q, k, v
};
inline PackedStep packed_step(int64_t layers, const std::vector<int64_t>& counts,
                              const std::function<Block(int64_t n, at::Generator& gen)>& draw,
                              at::Generator& gen, at::ScalarType dtype) {
  PackedStep out;
  for (int64_t l = 0; l < layers; ++l) {
    out.blocks.emplace_back();
    std::vector<at::Tensor> q, k, v;
    for (const int64_t n : counts) {
      out.blocks.back().push_back(draw(n, gen));
      const Block& x = out.blocks.back().back();
      q.push_back(x.q.transpose(0, 1)), k.push_back(x.k.transpose(0, 1)),
          v.push_back(x.v.transpose(0, 1));
    }
    out.packed.push_back({at::cat(q).to(dtype), at::cat(k).to(dtype), at::cat(v).to(dtype)});
  }
  return out;
}

// Each sequence's rows of `got` (per layer, a batch call's output for `step`) against what `ref`
// gives it alone, within `tolerance` (relative Frobenius error); `label` names the step.
inline void expect_rows_like_reference(KVCache& ref, const std::vector<int64_t>& seqs,
                                       const std::vector<int64_t>& counts, const PackedStep& step,
                                       const std::vector<at::Tensor>& got, double tolerance,
                                       const std::string& label) {
  for (size_t l = 0; l < got.size(); ++l)
    for (size_t b = 0, row = 0; b < seqs.size(); row += size_t(counts[b]), ++b) {
      const Block& x = step.blocks[l][b];
      const at::Tensor want = ref.append_and_attend(seqs[b], int64_t(l), x.q, x.k, x.v);
      const at::Tensor mine =
          got[l].narrow(0, int64_t(row), counts[b]).transpose(0, 1).to(at::kCPU, at::kFloat);
      EXPECT_LT(((mine - want).norm() / want.norm()).item<double>(), tolerance)
          << label << ", layer " << l << ", sequence " << b;
    }
}

}  // namespace kvbench::testing_support
