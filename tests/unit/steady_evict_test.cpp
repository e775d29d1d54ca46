// The steady-state eviction kernel's host reference (kernels/steady_evict.h: what the paged
// cache's kernel path runs on the CPU, and what the CUDA kernel and its emulation are tested
// against) against the torch formulation it replaces: AttentionRecord::add_scores_batch (the
// step's scores into each record) then drop_lowest_batch (itself checked against each
// policy's select() by RetentionSteadyState), and the lists' update as the paged cache made
// it (the tail's first token appended, the dropped entry gathered out). H2O, TOVA and
// ScissorHands; random scores, scores in three integer values so that most heads tie (the
// later token goes in both), and equal scores that put ScissorHands' probabilities on its
// threshold; NaN scores, which rank above every finite score; the kernel's logits in a wider
// tensor, the records' rows in another order.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/h2o_policy.h"
#include "kvbench/kv/scissorhands_policy.h"
#include "kvbench/kv/tova_policy.h"
#include "steady_evict.h"

namespace kvbench {
namespace {

struct Oracle {
  std::shared_ptr<RetentionPolicy> policy;
  kernels::SteadyRule rule;
};

TEST(SteadyEvictHost, MatchesTheTorchFormulation) {
  auto gen = at::detail::createCPUGenerator(77);
  const int64_t E = 4, H = 3, G = 2, window = 3;
  using R = kernels::SteadyRule;
  const std::vector<Oracle> oracles = {
      {std::make_shared<H2oPolicy>(20, 25, false, EvictionTiming::kDecode), R::kSummed},
      {std::make_shared<H2oPolicy>(0, 45, false, EvictionTiming::kDecode), R::kSummed},
      // 20 + 25 as fractions of the 100-token prompt below.
      {std::make_shared<H2oPolicy>(9, 9, false, EvictionTiming::kDecode, H2oRatios{0.2, 0.25}),
       R::kSummed},
      {std::make_shared<TovaPolicy>(45, EvictionTiming::kDecode), R::kNewest},
      {std::make_shared<ScissorHandsPolicy>(45, 20, window, EvictionTiming::kDecode),
       R::kLowCounts}};
  for (const Oracle& o : oracles) {
    const RetentionPolicy& p = *o.policy;
    RetentionInput sizing;
    sizing.prompt = 100;
    const int64_t held = p.budget(sizing) + 1, count = held - *p.drops_lowest(sizing.prompt) - 1;
    // Random scores; scores in three integer values (ties); ScissorHands: a step whose scores
    // are all equal, so each probability is the flag's threshold 1 / held itself (not below).
    for (const char* mode : {"random", "ties", "flat", "nan"}) {
      const bool ties = std::string(mode) == "ties", flat = std::string(mode) == "flat";
      const bool nans = std::string(mode) == "nan";
      if (flat && o.rule != R::kLowCounts) continue;
      SCOPED_TRACE(p.name() + ", count " + std::to_string(count) + ", " + mode);
      // Scores for `cols` tokens: tied ones alike over each group (TOVA: over every head).
      const int64_t alike = o.rule == R::kNewest ? H * G : G;
      auto scores = [&](int64_t rows, int64_t cols) {
        return ties ? at::randint(0, 3, {rows, H * G / alike, cols}, gen)
                          .to(at::kFloat)
                          .repeat_interleave(alike, 1)
                    : at::randn({rows, H * G, cols}, gen).mul_(2);
      };
      // Records holding held - 1 tokens: H2O two steps' sums, ScissorHands a full ring.
      std::vector<AttentionRecord> records(E);
      std::vector<AttentionRecord*> pointers;
      std::vector<at::Tensor> newest(E);
      const int64_t before = o.rule == R::kLowCounts ? window : o.rule == R::kSummed ? 2 : 0;
      const int64_t length = 60;  // the step's query's position
      for (int64_t e = 0; e < E; ++e) {
        const at::Tensor past = scores(before, held - 1);
        for (int64_t t = 0; t < before; ++t)
          records[e].add_scores(p, past[t], H, length - before + t, newest[e]);
        EXPECT_TRUE(records[e].steady_ready(p, held));
        pointers.push_back(&records[e]);
      }
      const at::Tensor logits = flat ? at::full({E, H * G, held}, 0.7f) : scores(E, held);
      // NaN scores (a NaN ranks above every finite score): the last record's first query's row (its
      // head's scores, TOVA's every head's, none but NaNs) and two of H2O's sums in record 0.
      if (nans) {
        logits[E - 1][0][0] = NAN;
        if (o.rule == R::kSummed)
          records[0].summed()[0].index_fill_(0, at::tensor({0, 2}, at::kLong), NAN);
      }
      // The kernel's copy: records in reverse rows of a wider tensor, a spare row, NaN padding.
      const int64_t stride = held + 5;
      const at::Tensor rows = at::full({E + 1, H * G, stride}, NAN);
      for (int64_t e = 0; e < E; ++e) rows[E - 1 - e].narrow(1, 0, held).copy_(logits[e]);
      const at::Tensor lists = at::randint(0, 1000, {E, H, count}, gen).to(at::kInt);
      // Tails whose ring offsets from the query (below) differ: 0, 2, 1 and 0.
      const std::vector<int> tails = {900, 902, 907, 903};
      // The host reference over copies of the states.
      kernels::SteadyEvictProblem k;
      k.rule = o.rule, k.records = int(E), k.kv_heads = int(H), k.group = int(G);
      k.held = int(held), k.count = int(count), k.window = int(window);
      k.logits = rows.data_ptr<float>(), k.logit_stride = stride, k.logit_row = H * G * stride;
      // Rows, then each ring column's offset from the tail: the column the torch formulation
      // writes at length + e. Tails by row, the spare row's never read.
      std::vector<int> steps, tail_of_row(size_t(E) + 1, -7);
      for (int e = 0; e < E; ++e) steps.push_back(int(E) - 1 - e);
      for (int e = 0; e < E; ++e)
        steps.push_back(int(((length + e - tails[size_t(e)]) % window + window) % window));
      for (int e = 0; e < E; ++e) tail_of_row[size_t(E - 1 - e)] = tails[size_t(e)];
      k.steps = steps.data(), k.tails = tail_of_row.data();
      const at::Tensor states = AttentionRecord::steady_states(p, pointers);
      at::Tensor states_out = states.defined() ? at::full_like(states, 7) : at::Tensor();
      if (o.rule == R::kSummed)
        k.summed = states.data_ptr<float>(), k.summed_out = states_out.data_ptr<float>();
      if (o.rule == R::kLowCounts)
        k.low = reinterpret_cast<const uint8_t*>(states.data_ptr<bool>()),
        k.low_out = reinterpret_cast<uint8_t*>(states_out.data_ptr<bool>());
      at::Tensor scores_ws = at::empty({E, H, held}), dropped = at::full({E, H}, -1, at::kInt);
      at::Tensor lists_out = at::full({E, H, count}, -1, at::kInt);
      k.lists = lists.data_ptr<int>(), k.lists_out = lists_out.data_ptr<int>();
      k.scores = scores_ws.data_ptr<float>(), k.dropped = dropped.data_ptr<int>();
      ASSERT_STREQ(kernels::steady_evict_check(k), "");
      kernels::steady_evict_host(k);
      // The torch formulation (each record's query at length + e, so its ring column).
      std::vector<int64_t> held_all(E, held), starts;
      for (int64_t e = 0; e < E; ++e) starts.push_back(length + e);
      AttentionRecord::add_scores_batch(p, pointers, logits, held_all, H, starts, newest);
      const at::Tensor want = AttentionRecord::drop_lowest_batch(p, pointers, newest, count + 1);
      EXPECT_TRUE(at::equal(dropped.to(at::kLong), want)) << dropped << want;
      const at::Tensor tail = at::tensor(std::vector<int>(tails), at::kInt).view({E, 1, 1});
      const at::Tensor i = at::arange(count).view({1, 1, count});
      const at::Tensor lists_want =
          at::cat({lists, tail.expand({E, H, 1})}, 2).gather(2, i.add(i.ge(want.unsqueeze(2))));
      EXPECT_TRUE(at::equal(lists_out, lists_want));
      for (int64_t e = 0; e < E; ++e) {
        if (o.rule == R::kSummed)
          EXPECT_TRUE(at::allclose(states_out[e], records[e].summed(), 1e-5, 1e-7, true)) << e;
        if (o.rule == R::kLowCounts)
          EXPECT_TRUE(at::equal(states_out[e], records[e].low_history())) << e;
      }
      if (flat)  // the step's column: no flag (p == 1 / held is not below it)
        for (int64_t e = 0; e < E; ++e)
          EXPECT_FALSE(states_out[e].select(3, (length + e) % window).any().item<bool>()) << e;
      if (nans && o.rule != R::kLowCounts) {  // the rule seen: all NaN or a number goes
        const at::Tensor first = scores_ws.narrow(2, 0, count + 1);
        const at::Tensor all_nan = first.isnan().all(2);
        EXPECT_TRUE(all_nan[E - 1][0].item<bool>());
        EXPECT_TRUE(at::equal(dropped.to(at::kLong).masked_select(all_nan),
                              at::full({all_nan.sum().item<int64_t>()}, count, at::kLong)));
        const at::Tensor at_drop = first.gather(2, dropped.to(at::kLong).unsqueeze(2)).squeeze(2);
        EXPECT_FALSE(at_drop.isnan().logical_and(all_nan.logical_not()).any().item<bool>());
        if (o.rule == R::kSummed) EXPECT_TRUE(first[0][0].isnan().any().item<bool>());
      }
      if (ties && count > 0) {  // a case of ties: several tokens share some heads' lowest
        const at::Tensor first = scores_ws.narrow(2, 0, count + 1);
        EXPECT_GE(first.eq(first.amin(2, true)).sum(2).gt(1).sum().item<int64_t>(), 3);
      }
    }
  }
}

}  // namespace
}  // namespace kvbench
