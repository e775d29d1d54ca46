// Serving: the block pool's accounting, the continuous-batching scheduler (FIFO admission,
// preemption and recompute, completion exactly once, chunked prefill) over an injected clock
// and a step-cost model, Poisson arrivals, request sources (trace, ShareGPT, length
// distributions) and the report metrics.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/stats.h"
#include "kvbench/kv/codec.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/transformer.h"
#include "kvbench/serving/block_pool.h"
#include "kvbench/serving/request_source.h"
#include "kvbench/serving/scheduler.h"
#include "kvbench/serving/serving_loop.h"
#include "kvbench/suites/serving_suite.h"
#include "preparation_helpers.h"

namespace kvbench {
namespace {

// --- BlockPool --------------------------------------------------------------------------------

TEST(BlockPool, CapacityFromBudget) {
  EXPECT_EQ(BlockPool::capacity(1000, 100), 10);
  EXPECT_EQ(BlockPool::capacity(1099, 100), 10);
  EXPECT_EQ(BlockPool::capacity(100, 100), 1);
  // A compressed format (fewer bytes per block) fits more blocks in the same budget.
  EXPECT_GT(BlockPool::capacity(1 << 20, 64 * 40.0), BlockPool::capacity(1 << 20, 64 * 128.0));
  try {
    BlockPool::capacity(99, 100);
    FAIL() << "an impossible budget must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_budget_bytes"), std::string::npos) << e.what();
  }
  EXPECT_THROW(BlockPool::capacity(1000, 0), Error);
  EXPECT_THROW(BlockPool(0, 64), Error);
  EXPECT_THROW(BlockPool(4, 0), Error);
}

TEST(BlockPool, AllocateShrinkFreeAccounting) {
  BlockPool pool(5, 4);
  EXPECT_EQ(pool.blocks_for(0), 0);
  EXPECT_EQ(pool.blocks_for(1), 1);
  EXPECT_EQ(pool.blocks_for(4), 1);
  EXPECT_EQ(pool.blocks_for(5), 2);
  EXPECT_TRUE(pool.allocate(7, 3));
  EXPECT_EQ(pool.free_blocks(), 2);
  EXPECT_FALSE(pool.allocate(8, 3));  // all or nothing
  EXPECT_EQ(pool.free_blocks(), 2);
  EXPECT_EQ(pool.blocks_of(8), 0);
  EXPECT_TRUE(pool.allocate(8, 2));
  EXPECT_EQ(pool.free_blocks(), 0);
  EXPECT_EQ(pool.peak_used_blocks(), 5);
  pool.check_invariants();
  pool.shrink(7, 1);
  EXPECT_EQ(pool.blocks_of(7), 1);
  EXPECT_EQ(pool.free_blocks(), 2);
  EXPECT_EQ(pool.free_all(8), 2);
  EXPECT_EQ(pool.free_all(7), 1);
  EXPECT_EQ(pool.free_blocks(), 5);
  EXPECT_TRUE(pool.owners().empty());
  pool.check_invariants();
}

// Random allocate/shrink/free against a reference count per owner: no block is ever in two
// tables, counts match, and freeing everything returns the whole pool.
TEST(BlockPool, RandomOperationsNeverLeakOrShareBlocks) {
  Rng rng(42);
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = 1 + static_cast<int64_t>(rng.below(40));
    BlockPool pool(n, 16);
    std::map<int64_t, int64_t> ref;
    for (int op = 0; op < 400; ++op) {
      const int64_t seq = static_cast<int64_t>(rng.below(6));
      const uint64_t what = rng.below(3);
      if (what == 0) {
        const int64_t k = static_cast<int64_t>(rng.below(5));
        const bool ok = pool.allocate(seq, k);
        int64_t used = 0;
        for (auto& [s, c] : ref) used += c;
        EXPECT_EQ(ok, k <= n - used);
        if (ok) ref[seq] += k;
      } else if (what == 1) {
        const int64_t keep = static_cast<int64_t>(rng.below(4));
        pool.shrink(seq, keep);
        ref[seq] = std::min(ref[seq], keep);
      } else {
        EXPECT_EQ(pool.free_all(seq), ref[seq]);
        ref[seq] = 0;
      }
      pool.check_invariants();
      std::set<int32_t> seen;
      int64_t used = 0;
      for (auto& [s, c] : ref) {
        ASSERT_EQ(pool.blocks_of(s), c);
        used += c;
        for (int32_t b : pool.table(s)) ASSERT_TRUE(seen.insert(b).second) << "block " << b;
      }
      ASSERT_EQ(pool.used_blocks(), used);
    }
    for (auto& [s, c] : ref) pool.free_all(s);
    EXPECT_EQ(pool.free_blocks(), n);
  }
}

// --- Scheduler --------------------------------------------------------------------------------

// A step-cost model over a manual clock that also checks what the scheduler asks for: a
// prefill only for a request with no live KV, a decode only for one with live KV, a
// preemption only of a live one, and the step's token budget.
class CostModelExecutor final : public StepExecutor {
 public:
  CostModelExecutor(ManualClock& clock, const Scheduler& scheduler, int64_t max_batch_tokens)
      : clock_(clock), scheduler_(scheduler), max_batch_tokens_(max_batch_tokens) {}
  void execute(const StepPlan& plan) override {
    if (++steps > 100000) throw Error("no progress after 100000 steps");
    for (int64_t id : plan.preempted) ASSERT_EQ(live_.erase(id), 1u) << "preempted " << id;
    for (int64_t id : plan.decodes) ASSERT_TRUE(live_.count(id)) << "decode of " << id;
    int64_t tokens = static_cast<int64_t>(plan.decodes.size());
    for (const auto& p : plan.prefills) {
      if (p.start == 0) {
        ASSERT_TRUE(live_.insert(p.id).second) << "prefill of live " << p.id;
        prefill_tokens[p.id].push_back(p.context);
      } else {
        ASSERT_TRUE(live_.count(p.id)) << "continued prefill of " << p.id;
      }
      ASSERT_GE(p.tokens, 1);
      ASSERT_LE(p.start + p.tokens, p.context);
      ASSERT_LE(p.tokens, max_chunk);
      tokens += p.tokens;
      chunks[p.id].push_back(p.tokens);
    }
    ASSERT_EQ(tokens, plan.batch_tokens);
    ASSERT_LE(tokens, max_batch_tokens_);
    max_used_blocks = std::max(max_used_blocks, scheduler_.pool().used_blocks());
    max_in_flight = std::max(max_in_flight, scheduler_.waiting() + scheduler_.running());
    clock_.advance(0.01 + 0.001 * static_cast<double>(tokens));
  }
  void finished(const std::vector<int64_t>& ids) override {
    for (int64_t id : ids) {
      ASSERT_EQ(live_.erase(id), 1u) << "finished " << id;
      ASSERT_TRUE(done.insert(id).second) << id << " finished twice";
    }
    clock_.advance(release_s);
  }
  double kv_bytes() const override {
    clock_.advance(counter_read_s);
    return 0;
  }
  int steps = 0;
  double release_s = 0;       // what releasing finished sequences costs (after their last token)
  double counter_read_s = 0;  // what reading the KV bytes after a step costs
  int64_t max_chunk = INT64_MAX;  // no prefill item may feed more tokens
  int64_t max_used_blocks = 0;
  size_t max_in_flight = 0;  // requests the scheduler held (waiting or running) at a step
  std::set<int64_t> done;
  std::map<int64_t, std::vector<int64_t>> prefill_tokens;  // context of each (re)prefill
  std::map<int64_t, std::vector<int64_t>> chunks;          // tokens of each prefill item
  size_t live() const { return live_.size(); }

 private:
  ManualClock& clock_;
  const Scheduler& scheduler_;
  int64_t max_batch_tokens_;
  std::set<int64_t> live_;
};

TEST(Scheduler, AdmitsInFifoOrderUnderTheSequenceLimit) {
  BlockPool pool(100, 4);
  SchedulerConfig cfg;
  cfg.max_running = 2;
  Scheduler s(pool, cfg);
  std::vector<ServingRequest> reqs;
  for (int64_t i = 0; i < 8; ++i) reqs.push_back({i, 0.0, 3 + i % 3, 2 + i % 4});
  ManualClock clock;
  CostModelExecutor ex(clock, s, cfg.max_batch_tokens);
  ServingTrace t = run_serving(reqs, s, ex, clock, true);
  EXPECT_EQ(s.admission_order(), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(ex.done.size(), 8u);
  EXPECT_EQ(t.preemptions, 0);
  for (const auto& r : t.requests) {
    EXPECT_EQ(static_cast<int64_t>(r.token_times_s.size()), r.request.output_tokens);
  }
  EXPECT_EQ(pool.free_blocks(), 100);
}

// The run ends at its last token: releasing the finished sequences after it is not serving.
TEST(Scheduler, DurationEndsAtTheLastToken) {
  BlockPool pool(100, 4);
  Scheduler s(pool, SchedulerConfig{});
  ManualClock clock;
  CostModelExecutor ex(clock, s, SchedulerConfig{}.max_batch_tokens);
  ex.release_s = 0.5;
  ServingTrace t = run_serving({{0, 0.0, 3, 2}, {1, 0.0, 5, 4}}, s, ex, clock, true);
  double last = 0;
  for (const auto& r : t.requests) last = std::max(last, r.token_times_s.back());
  EXPECT_DOUBLE_EQ(t.end_s, last);
}

// A clock that does not start at 0: 0.3 + 0.6 - 0.3 rounds below 0.6, and the loop, once idle,
// must still send the request it skipped to (it used to wait for it for ever).
TEST(Scheduler, AnIdleLoopSendsTheArrivalItSkippedToOnAnyClock) {
  BlockPool pool(100, 4);
  Scheduler s(pool, SchedulerConfig{});
  ManualClock clock;
  clock.advance(0.3);
  ASSERT_LT((0.3 + 0.6) - 0.3, 0.6);
  CostModelExecutor ex(clock, s, SchedulerConfig{}.max_batch_tokens);
  ServingTrace t = run_serving({{0, 0.6, 3, 2}}, s, ex, clock, true);
  ASSERT_EQ(t.requests.size(), 1u);
  EXPECT_EQ(t.requests[0].token_times_s.size(), 2u);
  EXPECT_GE(t.requests[0].token_times_s.front(), 0.6 - 1e-12);
}

// An arrival that is not a number would never come: the loop refuses it instead of waiting.
TEST(Scheduler, ANonFiniteArrivalIsRefused) {
  BlockPool pool(100, 4);
  Scheduler s(pool, SchedulerConfig{});
  ManualClock clock;
  CostModelExecutor ex(clock, s, SchedulerConfig{}.max_batch_tokens);
  try {
    run_serving({{0, 0.0, 3, 2}, {1, std::nan(""), 5, 4}}, s, ex, clock, true);
    FAIL() << "a NaN arrival must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("request 1 arrives at nan"), std::string::npos)
        << e.what();
  }
}

// Reading the memory counters after each step is the benchmark's work: however long it takes,
// every token comes out at the same time.
TEST(Scheduler, ReadingTheCountersIsOffTheClock) {
  auto token_times = [](double counter_read_s) {
    BlockPool pool(100, 4);
    Scheduler s(pool, SchedulerConfig{});
    ManualClock clock;
    CostModelExecutor ex(clock, s, SchedulerConfig{}.max_batch_tokens);
    ex.counter_read_s = counter_read_s;
    std::vector<ServingRequest> reqs;
    for (int64_t i = 0; i < 5; ++i) reqs.push_back({i, 0.02 * double(i), 3 + i, 2 + i % 3});
    const ServingTrace t = run_serving(reqs, s, ex, clock, true);
    std::vector<std::vector<double>> out;
    for (const auto& r : t.requests) out.push_back(r.token_times_s);
    return out;
  };
  EXPECT_EQ(token_times(0.0), token_times(0.5));
}

// The wall clock drops an excluded span: 50 ms slept, then excluded, are not in now().
TEST(Scheduler, TheWallClockDropsAnExcludedSpan) {
  SkippingWallClock clock;
  const double from = clock.now();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double slept = clock.now() - from;
  clock.exclude_since(from);
  const double after = clock.now() - from;
  EXPECT_GE(after, 0);
  EXPECT_LT(after, slept);
  EXPECT_GE(slept, 0.05);
}

// The hand-traced case: two requests fill a 4-block pool; at the 4th step the older one needs a
// third block, so the newer one is preempted, waits, and is recomputed from prompt + generated.
TEST(Scheduler, PreemptsTheNewestAndRecomputesIt) {
  BlockPool pool(4, 2);
  Scheduler s(pool, SchedulerConfig{});
  s.submit({0, 0, 2, 5});
  s.submit({1, 0, 2, 5});
  std::vector<StepPlan> plans;
  std::vector<StepOutcome> outs;
  while (!s.idle()) {
    plans.push_back(s.schedule());
    outs.push_back(s.commit(plans.back()));
    s.check_invariants();
    ASSERT_LT(plans.size(), 20u);
  }
  ASSERT_EQ(plans.size(), 7u);
  // Step 1: both admitted (1 block each; the second with a spare block free).
  ASSERT_EQ(plans[0].prefills.size(), 2u);
  EXPECT_EQ(plans[0].prefills[0].tokens, 2);
  // Step 4: request 0's context reaches 5 tokens = 3 blocks; request 1 is the victim.
  EXPECT_TRUE(plans[2].preempted.empty());
  EXPECT_EQ(plans[3].preempted, std::vector<int64_t>{1});
  EXPECT_EQ(plans[3].decodes, std::vector<int64_t>{0});
  EXPECT_TRUE(plans[3].prefills.empty());  // no admission in a step that preempted
  // Step 5: request 1 (context 2 + 3 generated = 3 blocks, + a spare) does not fit yet.
  EXPECT_TRUE(plans[4].prefills.empty());
  EXPECT_EQ(outs[4].finished, std::vector<int64_t>{0});
  // Step 6: recompute of request 1 from its 5 known tokens; step 7 finishes it.
  ASSERT_EQ(plans[5].prefills.size(), 1u);
  EXPECT_EQ(plans[5].prefills[0].id, 1);
  EXPECT_EQ(plans[5].prefills[0].tokens, 5);
  EXPECT_EQ(outs[6].finished, std::vector<int64_t>{1});
  EXPECT_EQ(s.preemptions(1), 1);
  EXPECT_EQ(s.preemptions(0), 0);
  EXPECT_EQ(s.generated(0), 5);
  EXPECT_EQ(s.generated(1), 5);
  EXPECT_EQ(pool.free_blocks(), 4);
  EXPECT_EQ(s.admission_order(), (std::vector<int64_t>{0, 1, 1}));
}

// A budget that depends on the prompt (H2O's fractions of it) is each request's own, from its
// prefill: 8 and 12 tokens, half kept.
TEST(Scheduler, RetentionBudgetFromEachPrompt) {
  BlockPool pool(20, 2);
  SchedulerConfig cfg;
  cfg.retention_budget = 100;  // the cap at the longest prompt; replaced per request
  cfg.retention_budget_of = [](int64_t prefill) { return prefill / 2; };
  Scheduler s(pool, cfg);
  s.submit({0, 0, 8, 6});
  s.submit({1, 0, 12, 6});
  s.commit(s.schedule());
  EXPECT_EQ(s.held_tokens(0), 4);
  EXPECT_EQ(s.held_tokens(1), 6);
  EXPECT_EQ(pool.used_blocks(), 2 + 3);
}

TEST(Scheduler, RetentionReturnsBlocksAfterThePrefill) {
  // 8-token prompt, budget 4 tokens (2 blocks), evicting during decode: after the prefill the
  // request holds 2 blocks and never more.
  BlockPool pool(7, 2);
  SchedulerConfig cfg;
  cfg.retention_budget = 4;
  Scheduler s(pool, cfg);
  s.submit({0, 0, 8, 6});
  StepPlan p = s.schedule();
  EXPECT_EQ(pool.used_blocks(), 4);  // the prefill holds the whole prompt
  s.commit(p);
  EXPECT_EQ(pool.used_blocks(), 2);
  while (!s.idle()) {
    s.commit(s.schedule());
    if (!s.idle()) {
      EXPECT_EQ(pool.used_blocks(), 2);
    }
  }
  EXPECT_EQ(pool.free_blocks(), 7);

  // Evicting once after the prefill: 4 tokens kept, then one more per decode step.
  BlockPool pool2(7, 2);
  cfg.evict_during_decode = false;
  Scheduler s2(pool2, cfg);
  s2.submit({0, 0, 8, 6});
  s2.commit(s2.schedule());
  EXPECT_EQ(s2.held_tokens(0), 4);
  s2.commit(s2.schedule());
  EXPECT_EQ(s2.held_tokens(0), 5);
  EXPECT_EQ(pool2.used_blocks(), 3);
}

// A cache compacting during decode (the paged cache under H2O) holds each decoded token in a
// new slot until the free slots reach the slack, then compacts back to the budget: charged as
// its compacted prompt plus decoded tokens, at most budget + slack. With chunked prefill only
// the bound is known.
TEST(Scheduler, CompactionSlackIsChargedUntilTheBound) {
  for (const bool chunked : {false, true}) {
    BlockPool pool(20, 2);
    SchedulerConfig cfg;
    cfg.retention_budget = 4;
    cfg.compaction_slack = [](int64_t budget) { return budget / 2; };
    cfg.chunked_prefill = chunked;
    cfg.prefill_chunk_tokens = 64;
    Scheduler s(pool, cfg);
    s.submit({0, 0, 8, 6});
    s.commit(s.schedule());
    std::vector<int64_t> held = {s.held_tokens(0)};
    while (s.generated(0) < 5) {
      s.commit(s.schedule());
      held.push_back(s.held_tokens(0));
    }
    const std::vector<int64_t> want =
        chunked ? std::vector<int64_t>{6, 6, 6, 6, 6} : std::vector<int64_t>{4, 5, 6, 6, 6};
    EXPECT_EQ(held, want) << (chunked ? "chunked" : "whole prefill");
    EXPECT_EQ(pool.used_blocks(), 3);
  }
}

TEST(Scheduler, RejectsRequestsThatCanNeverRun) {
  BlockPool pool(3, 4);
  SchedulerConfig cfg;
  cfg.max_batch_tokens = 16;
  Scheduler s(pool, cfg);
  try {
    s.submit({0, 0, 10, 8});  // 17 tokens > max_batch_tokens
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_batch_tokens"), std::string::npos) << e.what();
  }
  cfg.max_batch_tokens = 100;
  Scheduler s2(pool, cfg);
  try {
    s2.submit({0, 0, 10, 8});  // 17 tokens = 5 blocks > 3
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV budget"), std::string::npos) << e.what();
  }
  EXPECT_THROW(s2.submit({1, 0, 0, 3}), Error);
  s2.submit({2, 0, 4, 3});
  EXPECT_THROW(s2.submit({2, 0, 4, 3}), Error);  // id twice
}

// What a random-mix test draws, in this order from one Rng per trial sequence, so that a test's
// mixes stay the same: the block size, the limits, a retention budget in a third of the mixes,
// the request count, Poisson arrivals (or all at time 0), each request's lengths, the pool size.
struct RandomMixes {
  uint64_t seed;          // the Rng's
  uint64_t arrival_seed;  // the Poisson arrivals' seed is this + the trial number
  int64_t max_requests;
  std::function<void(Rng&, SchedulerConfig&)> limits;  // max_batch_tokens, max_running, chunking
  std::function<std::pair<int64_t, int64_t>(Rng&, const SchedulerConfig&)>
      lengths;  // prompt, output
};

// Runs 60 seeded random mixes over small pools (from just enough for the largest request alone
// to a comfortable pool) and checks what every mix must hold: the executor's invariants after
// every step (with chunking, no prefill item above the chunk size), every request completes
// exactly once with its output length, its tokens in time order from its arrival on, each
// (re)prefill feeds the prompt first, first admissions follow arrival order, the pool is empty
// at the end. `check` adds the test's own checks of a mix; `preemptions` sums over the mixes.
void run_random_mixes(
    const RandomMixes& m,
    const std::function<void(const ServingTrace&, const CostModelExecutor&)>& check,
    int64_t& preemptions) {
  Rng rng(m.seed);
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t bs = 1 + static_cast<int64_t>(rng.below(8));
    SchedulerConfig cfg;
    m.limits(rng, cfg);
    if (rng.below(3) == 0) {
      cfg.retention_budget = 1 + static_cast<int64_t>(rng.below(16));
      cfg.evict_during_decode = rng.below(2) == 0;
    }
    const int64_t n = 1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(m.max_requests)));
    std::vector<ServingRequest> reqs;
    int64_t largest = 1;
    const double rate = rng.below(2) == 0 ? 0.0 : 5.0 + static_cast<double>(rng.below(200));
    std::vector<double> arrivals = poisson_arrivals(n, rate, m.arrival_seed + trial);
    for (int64_t i = 0; i < n; ++i) {
      const auto [prompt, output] = m.lengths(rng, cfg);
      ServingRequest r{i, arrivals[static_cast<size_t>(i)], prompt, output};
      largest = std::max(largest, (r.prompt_tokens + r.output_tokens - 1 + bs - 1) / bs);
      reqs.push_back(r);
    }
    BlockPool pool(largest + static_cast<int64_t>(rng.below(static_cast<uint64_t>(3 * largest))),
                   bs);
    Scheduler s(pool, cfg);
    ManualClock clock;
    CostModelExecutor ex(clock, s, cfg.max_batch_tokens);
    if (cfg.chunked_prefill) ex.max_chunk = cfg.prefill_chunk_tokens;
    ServingTrace t = run_serving(reqs, s, ex, clock, true);
    ASSERT_EQ(static_cast<int64_t>(ex.done.size()), n) << "trial " << trial;
    EXPECT_EQ(ex.live(), 0u);
    EXPECT_EQ(pool.free_blocks(), pool.num_blocks());
    EXPECT_LE(ex.max_used_blocks, pool.num_blocks());
    for (const auto& r : t.requests) {
      ASSERT_EQ(static_cast<int64_t>(r.token_times_s.size()), r.request.output_tokens);
      EXPECT_GE(r.token_times_s.front(), r.request.arrival_s);
      EXPECT_TRUE(std::is_sorted(r.token_times_s.begin(), r.token_times_s.end()));
      // A recompute feeds the prompt plus every token generated before it.
      const auto& fed = ex.prefill_tokens.at(r.request.id);
      EXPECT_EQ(static_cast<int64_t>(fed.size()), r.preemptions + 1);
      EXPECT_EQ(fed.front(), r.request.prompt_tokens);
    }
    // FIFO: first admissions follow arrival order (ids are in arrival order here).
    std::vector<int64_t> first;
    std::set<int64_t> seen;
    for (int64_t id : s.admission_order()) {
      if (seen.insert(id).second) first.push_back(id);
    }
    std::vector<int64_t> expected(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) expected[static_cast<size_t>(i)] = i;
    EXPECT_EQ(first, expected) << "trial " << trial;
    check(t, ex);
    preemptions += t.preemptions;
  }
}

// Seeded random mixes over small pools: invariants after every step, every request completes
// exactly once with its output length, first admissions in arrival order, pool empty at the end.
TEST(Scheduler, RandomMixesCompleteExactlyOnceWithoutLeaks) {
  RandomMixes m{7, 100, 25,
                [](Rng& rng, SchedulerConfig& cfg) {
                  cfg.max_batch_tokens = 64 + static_cast<int64_t>(rng.below(64));
                  cfg.max_running = 1 + static_cast<int64_t>(rng.below(12));
                },
                [](Rng& rng, const SchedulerConfig&) {
                  const int64_t prompt = 1 + static_cast<int64_t>(rng.below(30));
                  return std::pair{prompt, 1 + static_cast<int64_t>(rng.below(30))};
                }};
  int64_t total_preemptions = 0;
  ASSERT_NO_FATAL_FAILURE(run_random_mixes(
      m, [](const ServingTrace&, const CostModelExecutor&) {}, total_preemptions));
  // The mixes include tight pools: preemption paths ran.
  EXPECT_GT(total_preemptions, 0);
}

// No starvation under overload: a flood of requests arriving faster than they are served
// still completes every one, and the oldest waiting request is always the next admitted.
TEST(Scheduler, OverloadStillCompletesEveryRequest) {
  BlockPool pool(12, 4);
  SchedulerConfig cfg;
  cfg.max_batch_tokens = 64;
  Scheduler s(pool, cfg);
  std::vector<ServingRequest> reqs;
  std::vector<double> arrivals = poisson_arrivals(200, 1000.0, 3);
  for (int64_t i = 0; i < 200; ++i) {
    reqs.push_back({i, arrivals[static_cast<size_t>(i)], 4 + i % 13, 3 + (i * 7) % 17});
  }
  ManualClock clock;
  CostModelExecutor ex(clock, s, cfg.max_batch_tokens);
  ServingTrace t = run_serving(reqs, s, ex, clock, true);
  EXPECT_EQ(ex.done.size(), 200u);
  EXPECT_GT(t.preemptions, 0);
  EXPECT_EQ(pool.free_blocks(), 12);
}

// --- Client concurrency -------------------------------------------------------------------

// One slot: six requests arriving at once go one after another. Each is sent when the one
// before it produced its last token, and its TTFT counts from that send (its wait beside).
TEST(MaxConcurrency, OneSlotSendsEachRequestAtThePreviousOnesLastToken) {
  BlockPool pool(100, 4);
  Scheduler s(pool, SchedulerConfig{});
  std::vector<ServingRequest> reqs;
  for (int64_t i = 0; i < 6; ++i) reqs.push_back({i, 0.0, 3 + i, 2 + i % 3});
  ManualClock clock;
  CostModelExecutor ex(clock, s, SchedulerConfig{}.max_batch_tokens);
  ex.release_s = 0.25;  // after the last token: the next send is not at the release's end
  const ServingTrace t = run_serving(reqs, s, ex, clock, true, 1);
  EXPECT_EQ(ex.max_in_flight, 1u);
  EXPECT_EQ(t.max_concurrency, 1);
  EXPECT_EQ(t.requests[0].client_wait_s, 0);
  for (size_t i = 1; i < t.requests.size(); ++i) {
    EXPECT_DOUBLE_EQ(t.requests[i].sent_s(), t.requests[i - 1].token_times_s.back()) << i;
    EXPECT_GT(t.requests[i].client_wait_s, 0) << i;
    // Submitted at once after the release: its TTFT is the release and its prefill step alone,
    // neither early (before the slot freed) nor late.
    EXPECT_NEAR(t.requests[i].token_times_s.front() - t.requests[i].sent_s(),
                0.25 + 0.01 + 0.001 * double(reqs[i].prompt_tokens), 1e-12)
        << i;
  }
  const nlohmann::json m = serving_metrics(t, SloThresholds{}, 1.0);
  EXPECT_EQ(m["max_concurrency"], 1);
  std::vector<double> ttft, wait;
  for (const auto& r : t.requests) {
    ttft.push_back(r.token_times_s.front() - r.sent_s());
    wait.push_back(r.client_wait_s);
  }
  EXPECT_DOUBLE_EQ(m["ttft_s"]["max"], *std::max_element(ttft.begin(), ttft.end()));
  EXPECT_DOUBLE_EQ(m["client_wait_s"]["max"], *std::max_element(wait.begin(), wait.end()));
  EXPECT_DOUBLE_EQ(m["client_wait_s"]["mean"], mean(wait));
  // Serialized, each TTFT is its own prefill's cost alone: under the first's waiting for none.
  EXPECT_LT(m["ttft_s"]["max"].get<double>(), m["client_wait_s"]["max"].get<double>());
}

// Poisson arrivals into 3 slots, checked from the trace alone. Requests are sent first come
// first sent, so request i can go once at most 2 of the i before it are unfinished: at its send,
// at least i - 2 of them have their last token out; and one that waited could not go a moment
// earlier: fewer had finished before its send.
TEST(MaxConcurrency, SendsFollowTheDefinitionUnderRandomArrivals) {
  for (uint64_t seed : {1, 2, 3}) {
    BlockPool pool(40, 4);
    SchedulerConfig cfg;
    cfg.max_batch_tokens = 48;
    Scheduler s(pool, cfg);
    std::vector<ServingRequest> reqs;
    const std::vector<double> arrivals = poisson_arrivals(60, 40.0, seed);
    for (int64_t i = 0; i < 60; ++i) {
      reqs.push_back({i, arrivals[static_cast<size_t>(i)], 2 + (i * 5) % 11, 1 + (i * 3) % 9});
    }
    ManualClock clock;
    CostModelExecutor ex(clock, s, cfg.max_batch_tokens);
    const ServingTrace t = run_serving(reqs, s, ex, clock, true, 3);
    EXPECT_EQ(ex.max_in_flight, 3u);  // the limit holds, and binds
    int waited = 0;
    for (size_t i = 0; i < t.requests.size(); ++i) {
      const double sent = t.requests[i].sent_s();
      int64_t finished_by = 0, finished_before = 0;
      for (size_t j = 0; j < i; ++j) {
        finished_by += t.requests[j].token_times_s.back() <= sent;
        finished_before += t.requests[j].token_times_s.back() < sent;
      }
      const int64_t needed = static_cast<int64_t>(i) - 2;
      EXPECT_GE(finished_by, needed) << "seed " << seed << " request " << i;
      EXPECT_GE(t.requests[i].client_wait_s, 0);
      if (t.requests[i].client_wait_s > 0) {
        ++waited;
        EXPECT_LT(finished_before, needed) << "seed " << seed << " request " << i;
      }
    }
    EXPECT_GT(waited, 0) << "seed " << seed << ": the arrivals never filled the slots";
    EXPECT_EQ(ex.done.size(), 60u);
  }
}

// A limit no arrival pattern reaches changes nothing: the same steps, tokens and latencies as
// without one, and no wait.
TEST(MaxConcurrency, AnUnreachedLimitChangesNothing) {
  auto run = [](int64_t limit) {
    BlockPool pool(40, 4);
    Scheduler s(pool, SchedulerConfig{});
    std::vector<ServingRequest> reqs;
    const std::vector<double> arrivals = poisson_arrivals(20, 30.0, 5);
    for (int64_t i = 0; i < 20; ++i) reqs.push_back({i, arrivals[size_t(i)], 3 + i % 7, 2 + i % 5});
    ManualClock clock;
    CostModelExecutor ex(clock, s, SchedulerConfig{}.max_batch_tokens);
    return run_serving(reqs, s, ex, clock, true, limit);
  };
  const ServingTrace free = run(0), limited = run(20);
  ASSERT_EQ(free.requests.size(), limited.requests.size());
  for (size_t i = 0; i < free.requests.size(); ++i) {
    EXPECT_EQ(free.requests[i].token_times_s, limited.requests[i].token_times_s) << i;
    EXPECT_EQ(limited.requests[i].client_wait_s, 0) << i;
  }
  const nlohmann::json a = serving_metrics(free, SloThresholds{}, 1.0),
                       b = serving_metrics(limited, SloThresholds{}, 1.0);
  EXPECT_FALSE(a.contains("client_wait_s"));
  EXPECT_EQ(b["client_wait_s"]["max"], 0.0);
  EXPECT_EQ(a["ttft_s"], b["ttft_s"]);
  EXPECT_EQ(a["e2e_s"], b["e2e_s"]);
  EXPECT_THROW(run(-1), Error);
}

// --- Chunked prefill ----------------------------------------------------------------------

// A 100-token prompt in chunks of 30: four prefill steps of 30, 30, 30 and 10 tokens, the first
// token at the end of the last one, so TTFT is the four steps' modelled cost.
TEST(ChunkedPrefill, SplitsAPromptAndEmitsAfterTheLastChunk) {
  BlockPool pool(100, 8);
  SchedulerConfig cfg;
  cfg.max_batch_tokens = 64;
  cfg.chunked_prefill = true;
  cfg.prefill_chunk_tokens = 30;
  Scheduler s(pool, cfg);
  ManualClock clock;
  CostModelExecutor ex(clock, s, cfg.max_batch_tokens);
  ex.max_chunk = 30;
  // Without chunking this request (100 + 3 - 1 tokens > 64) could never run.
  ServingTrace t = run_serving({{0, 0.5, 100, 3}}, s, ex, clock, true);
  EXPECT_EQ(ex.chunks.at(0), (std::vector<int64_t>{30, 30, 30, 10}));
  ASSERT_EQ(t.requests[0].token_times_s.size(), 3u);
  const double prefill_cost = 3 * (0.01 + 0.030) + (0.01 + 0.010);
  EXPECT_NEAR(t.requests[0].token_times_s.front() - 0.5, prefill_cost, 1e-12);
  EXPECT_NEAR(t.requests[0].token_times_s.back() - 0.5, prefill_cost + 2 * (0.01 + 0.001), 1e-12);
  EXPECT_EQ(t.steps.size(), 6u);  // 4 chunks + 2 decodes
  EXPECT_EQ(t.steps[0].prefills, 1);
  // The request held blocks for its whole context (13 blocks) from its first chunk.
  EXPECT_EQ(t.steps[0].used_blocks, 13);
  EXPECT_EQ(pool.free_blocks(), 100);

  BlockPool pool2(100, 8);
  cfg.chunked_prefill = false;
  Scheduler s2(pool2, cfg);
  EXPECT_THROW(s2.submit({0, 0, 100, 3}), Error);
}

// The point of chunking: a long prompt arriving while a request decodes no longer stalls it.
// Without chunking the decode waits behind a 400-token step; with chunks of 32, no gap between
// its tokens exceeds one step of 32 prefill tokens plus its own decode.
TEST(ChunkedPrefill, DecodesAreNotStalledBehindALongPrefill) {
  double gap[2] = {0, 0};
  for (int chunked = 0; chunked < 2; ++chunked) {
    BlockPool pool(200, 8);
    SchedulerConfig cfg;
    cfg.max_batch_tokens = 1024;
    cfg.chunked_prefill = chunked == 1;
    cfg.prefill_chunk_tokens = 32;
    Scheduler s(pool, cfg);
    ManualClock clock;
    CostModelExecutor ex(clock, s, cfg.max_batch_tokens);
    ServingTrace t = run_serving({{0, 0.0, 4, 40}, {1, 0.05, 400, 2}}, s, ex, clock, true);
    const auto& times = t.requests[0].token_times_s;
    ASSERT_EQ(times.size(), 40u);
    for (size_t i = 1; i < times.size(); ++i)
      gap[chunked] = std::max(gap[chunked], times[i] - times[i - 1]);
    EXPECT_EQ(ex.done.size(), 2u);
    if (chunked == 1) {
      EXPECT_EQ(ex.chunks.at(1).size(), 13u);  // ceil(400 / 32)
    }
  }
  EXPECT_NEAR(gap[0], 0.01 + 0.001 * 401, 1e-12);
  EXPECT_LE(gap[1], 0.01 + 0.001 * 33 + 1e-12);
}

// Under a tight token budget the step's leftover budget goes to unfinished prefills first
// (oldest first), then to new admissions: FIFO, and the batch never exceeds max_batch_tokens.
TEST(ChunkedPrefill, ChunksFillTheLeftoverBudgetInFifoOrder) {
  BlockPool pool(100, 4);
  SchedulerConfig cfg;
  cfg.max_batch_tokens = 16;
  cfg.chunked_prefill = true;
  cfg.prefill_chunk_tokens = 10;
  Scheduler s(pool, cfg);
  s.submit({0, 0, 25, 2});
  s.submit({1, 0, 12, 2});
  StepPlan p1 = s.schedule();
  ASSERT_EQ(p1.prefills.size(), 2u);
  EXPECT_EQ(p1.prefills[0].id, 0);
  EXPECT_EQ(p1.prefills[0].tokens, 10);
  EXPECT_EQ(p1.prefills[1].id, 1);
  EXPECT_EQ(p1.prefills[1].tokens, 6);  // the leftover budget
  EXPECT_EQ(p1.batch_tokens, 16);
  EXPECT_TRUE(s.commit(p1).emitted.empty());
  StepPlan p2 = s.schedule();
  ASSERT_EQ(p2.prefills.size(), 2u);
  EXPECT_EQ(p2.prefills[0].start, 10);
  EXPECT_EQ(p2.prefills[0].tokens, 10);
  EXPECT_EQ(p2.prefills[1].start, 6);
  EXPECT_EQ(p2.prefills[1].tokens, 6);  // its last chunk
  EXPECT_TRUE(p2.prefills[1].last());
  EXPECT_EQ(s.commit(p2).emitted, std::vector<int64_t>{1});
  StepPlan p3 = s.schedule();
  EXPECT_EQ(p3.decodes, std::vector<int64_t>{1});
  ASSERT_EQ(p3.prefills.size(), 1u);
  EXPECT_EQ(p3.prefills[0].tokens, 5);
  StepOutcome o3 = s.commit(p3);
  EXPECT_EQ(o3.emitted, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(o3.finished, std::vector<int64_t>{1});
  s.check_invariants();
}

// The random mixes again with chunked prefill, contexts up to twice max_batch_tokens and tiny
// token budgets: invariants after every step, no item above the chunk size or the step above
// max_batch_tokens (checked by the executor), every request completes exactly once with its
// output length, chunks of one prefill cover its context in order, first admissions FIFO.
TEST(ChunkedPrefill, RandomMixesCompleteExactlyOnceWithoutLeaks) {
  RandomMixes m{
      17, 300, 20,
      [](Rng& rng, SchedulerConfig& cfg) {
        cfg.max_batch_tokens = 8 + static_cast<int64_t>(rng.below(40));
        cfg.max_running = 1 + static_cast<int64_t>(rng.below(8));
        cfg.chunked_prefill = true;
        cfg.prefill_chunk_tokens = 1 + static_cast<int64_t>(rng.below(20));
      },
      [](Rng& rng, const SchedulerConfig& cfg) {
        const int64_t prompt =
            1 + static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * cfg.max_batch_tokens)));
        return std::pair{prompt, 1 + static_cast<int64_t>(rng.below(20))};
      }};
  int64_t total_preemptions = 0, split = 0;
  ASSERT_NO_FATAL_FAILURE(run_random_mixes(
      m,
      [&](const ServingTrace& t, const CostModelExecutor& ex) {
        // Without preemption the chunks add up to the prompt exactly.
        for (const auto& r : t.requests) {
          if (r.preemptions > 0) continue;
          const auto& c = ex.chunks.at(r.request.id);
          int64_t sum = 0;
          for (int64_t x : c) sum += x;
          EXPECT_EQ(sum, r.request.prompt_tokens);
          split += c.size() > 1 ? 1 : 0;
        }
      },
      total_preemptions));
  EXPECT_GT(total_preemptions, 0);
  EXPECT_GT(split, 0);
}

// A policy evicting during decode (StreamingLLM, 4 sinks + 28 recent) evicts after every
// chunk of a chunked prefill: the cache holds min(fed, 32) tokens per layer after each chunk,
// as the scheduler's retention rule (evict_during_decode) charges, and the logits of the first
// chunk, before any eviction, equal the full cache's.
TEST(ChunkedPrefill, StreamingCacheEvictsAfterEachChunk) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny");
  const Transformer model = Transformer::random(c, 3);
  const nlohmann::json m =
      resolve_method({{"name", "streamingllm"}, {"sinks", 4}, {"window", 28}}, "m");
  CompressedKVCache cache(make_codec(m, at::kFloat), AttentionBackend::kReference, c.num_layers,
                          c.num_kv_heads, c.head_dim, make_policy(m), rope_inverse_frequencies(c));
  FullKVCache full(c.num_layers, c.num_kv_heads, c.head_dim, at::kFloat);
  const int64_t seq = cache.add_sequence(), fseq = full.add_sequence();
  Rng rng(2);
  std::vector<int64_t> prompt(100);
  for (auto& t : prompt) t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(c.vocab_size)));
  BlockPool pool(100, 8);
  SchedulerConfig cfg;
  cfg.retention_budget = 32;
  cfg.chunked_prefill = true;
  cfg.prefill_chunk_tokens = 30;
  Scheduler s(pool, cfg);
  s.submit({0, 0, 100, 2});
  int64_t fed = 0;
  while (fed < 100) {
    StepPlan plan = s.schedule();
    ASSERT_EQ(plan.prefills.size(), 1u);
    const PrefillItem& p = plan.prefills[0];
    ASSERT_EQ(p.start, fed);
    std::vector<int64_t> chunk(prompt.begin() + p.start, prompt.begin() + p.start + p.tokens);
    at::Tensor got = model.forward({{seq, chunk}}, cache);
    at::Tensor want = model.forward({{fseq, chunk}}, full);
    if (fed == 0) {
      EXPECT_LT((got - want).abs().max().item<double>(), 1e-4);
    }
    fed += p.tokens;
    s.commit(plan);
    EXPECT_EQ(cache.length(seq), fed);
    for (int64_t kept : cache.kept_tokens(seq)) EXPECT_EQ(kept, std::min<int64_t>(fed, 32));
    // The pool holds the whole context until the last chunk, then what the policy keeps.
    EXPECT_EQ(pool.blocks_of(0), fed < 100 ? 13 : 4);
  }
}

// --- Arrivals and metrics ---------------------------------------------------------------------

TEST(Serving, PoissonArrivalsAreSeededWithTheRightMeanGap) {
  auto a = poisson_arrivals(20000, 4.0, 11);
  EXPECT_EQ(a, poisson_arrivals(20000, 4.0, 11));
  EXPECT_NE(a, poisson_arrivals(20000, 4.0, 12));
  EXPECT_EQ(a.front(), 0.0);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  // Mean gap 1/rate = 0.25; its standard error over 19999 gaps is 0.25/sqrt(19999) = 0.0018.
  EXPECT_NEAR(a.back() / 19999.0, 0.25, 0.01);
  for (double t : poisson_arrivals(5, 0.0, 1)) EXPECT_EQ(t, 0.0);
  EXPECT_THROW(poisson_arrivals(5, -1.0, 1), Error);
}

// Gamma gaps (vLLM's burstiness k): mean 1/rate at every k, squared coefficient of variation
// 1/k; k = 1 draws exactly the exponential gaps of before, cut by duration_s the same way.
TEST(Serving, BurstinessShapesTheGapsButNotTheirMean) {
  EXPECT_EQ(poisson_arrivals(500, 4.0, 11, 1.0), poisson_arrivals(500, 4.0, 11));
  for (const double k : {0.25, 0.5, 1.0, 4.0, 20.0}) {
    const auto a = poisson_arrivals(40001, 4.0, 11, k);
    EXPECT_EQ(a, poisson_arrivals(40001, 4.0, 11, k)) << k;
    std::vector<double> gaps;
    for (size_t i = 1; i < a.size(); ++i) gaps.push_back(a[i] - a[i - 1]);
    ASSERT_GE(*std::min_element(gaps.begin(), gaps.end()), 0.0) << k;
    const double m = mean(gaps), sd = stddev(gaps), cv2 = sd * sd / (m * m);
    // Standard errors over 40000 gaps: the mean's 0.25 / sqrt(40000 k) <= 0.0025; cv^2's
    // below 4% of 1/k for these k.
    EXPECT_NEAR(m, 0.25, 0.01) << k;
    EXPECT_NEAR(cv2 * k, 1.0, 0.12) << k;
    const auto cut = poisson_arrivals_until(100.0, 4.0, 11, 1000000, k);
    const auto all = poisson_arrivals(static_cast<int64_t>(cut.size()) + 1, 4.0, 11, k);
    EXPECT_TRUE(std::equal(cut.begin(), cut.end(), all.begin())) << k;
    EXPECT_GE(all.back(), 100.0) << k;
  }
  EXPECT_THROW(poisson_arrivals(5, 1.0, 1, 0.0), Error);
  EXPECT_THROW(poisson_arrivals(5, 1.0, 1, -1.0), Error);
}

TEST(Serving, MetricsFromAHandBuiltTrace) {
  ServingTrace t;
  t.requests.push_back({{0, 0.0, 4, 3}, {1.0, 1.5, 2.5}, 0});  // ttft 1, tpot 0.75, e2e 2.5
  t.requests.push_back({{1, 1.0, 4, 1}, {3.0}, 1});            // ttft 2, e2e 2
  t.end_s = 4.0;
  t.preemptions = 1;
  t.steps.push_back({0.0, 1.0, 0, 1, 0, 4, 2, 100.0});
  t.steps.push_back({1.0, 4.0, 1, 0, 0, 1, 4, 300.0});
  SloThresholds slo;
  slo.ttft_s = 1.5;
  nlohmann::json m = serving_metrics(t, slo, 10.0);
  EXPECT_DOUBLE_EQ(m["ttft_s"]["p50"], 1.5);
  EXPECT_DOUBLE_EQ(m["ttft_s"]["max"], 2.0);
  EXPECT_DOUBLE_EQ(m["tpot_s"]["mean"], 0.75);
  EXPECT_EQ(m["tpot_s"]["n"], 1);
  EXPECT_EQ(m["itl_s"]["n"], 2);
  EXPECT_DOUBLE_EQ(m["itl_s"]["max"], 1.0);
  EXPECT_DOUBLE_EQ(m["e2e_s"]["mean"], 2.25);
  EXPECT_DOUBLE_EQ(m["request_throughput"], 0.5);
  EXPECT_DOUBLE_EQ(m["token_throughput"], 1.0);
  EXPECT_EQ(m["prompt_tokens"], 8);
  EXPECT_DOUBLE_EQ(m["total_token_throughput"], (8 + 4) / 4.0);
  EXPECT_EQ(m["goodput"]["requests_meeting_slo"], 1);
  EXPECT_DOUBLE_EQ(m["goodput"]["requests_per_s"], 0.25);
  EXPECT_EQ(m["kv"]["blocks_peak"], 4);
  EXPECT_DOUBLE_EQ(m["kv"]["blocks_mean"], (2.0 * 1 + 4.0 * 3) / 4.0);
  EXPECT_DOUBLE_EQ(m["kv"]["pool_bytes_peak"], 40.0);
  EXPECT_DOUBLE_EQ(m["kv"]["measured_bytes_mean"], (100.0 + 900.0) / 4.0);
  EXPECT_EQ(m["preemptions"], 1);
  // A shared state (fitted bases) is in the pool's bytes at every step.
  m = serving_metrics(t, slo, 10.0, 7.0);
  EXPECT_DOUBLE_EQ(m["kv"]["pool_bytes_peak"], 47.0);
  EXPECT_DOUBLE_EQ(m["kv"]["pool_bytes_mean"], 7.0 + 10.0 * (2.0 * 1 + 4.0 * 3) / 4.0);
  EXPECT_FALSE(m.contains("client_wait_s"));
  // Under a client limit, latencies count from the send: the second request waited 0.5 s.
  t.max_concurrency = 1;
  t.requests[1].client_wait_s = 0.5;
  m = serving_metrics(t, slo, 10.0);
  EXPECT_DOUBLE_EQ(m["ttft_s"]["max"], 1.5);
  EXPECT_DOUBLE_EQ(m["e2e_s"]["mean"], (2.5 + 1.5) / 2);
  EXPECT_DOUBLE_EQ(m["client_wait_s"]["max"], 0.5);
  EXPECT_DOUBLE_EQ(m["client_wait_s"]["p50"], 0.25);
  EXPECT_EQ(m["goodput"]["requests_meeting_slo"], 2);
  EXPECT_DOUBLE_EQ(m["request_throughput"], 0.5);  // still from the first arrival
}

// Throughputs count from the first arrival to the last token: the loop's lead-in before a
// first arrival at 10 s is not serving time.
TEST(Serving, ThroughputCountsFromTheFirstArrival) {
  ServingTrace t;
  t.requests.push_back({{0, 10.0, 4, 2}, {10.5, 11.0}, 0});
  t.end_s = 11.0;
  t.steps.push_back({10.0, 10.5, 1, 0, 0, 4, 1, 0.0});
  t.steps.push_back({10.5, 11.0, 0, 1, 0, 1, 1, 0.0});
  const nlohmann::json m = serving_metrics(t, SloThresholds{}, 10.0);
  EXPECT_DOUBLE_EQ(m["request_throughput"], 1.0);
  EXPECT_DOUBLE_EQ(m["token_throughput"], 2.0);
  EXPECT_DOUBLE_EQ(m["duration_s"], 1.0);  // the throughputs' divisor, as the schema says
}

}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

// Bytes per block from the method's formula: the full cache's is exactly block_size tokens of
// K and V over every layer in the model's dtype; kivi-4's is its steady cost (4-bit codes, fp16
// scale and min per group of 32: 1.25 bytes per element against 4), its 128-token residual
// left to the window blocks, so the same budget holds more than three times the blocks; a
// retention method's codec decides.
TEST(Serving, BlockBytesFollowTheMethodsFormula) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny");
  const double full =
      method_block_bytes(resolve_method({{"name", "full"}}, "m"), c, at::kBFloat16, 64);
  EXPECT_DOUBLE_EQ(full, 64.0 * 2 * c.num_layers * c.num_kv_heads * c.head_dim * 2);
  const double kivi =
      method_block_bytes(resolve_method({{"name", "kivi-4"}}, "m"), c, at::kBFloat16, 64);
  EXPECT_NEAR(kivi / full, 1.25 / 4, 1e-3);
  EXPECT_GE(BlockPool::capacity(1 << 21, kivi), 3 * BlockPool::capacity(1 << 21, full));
  EXPECT_DOUBLE_EQ(
      method_block_bytes(resolve_method({{"name", "stream-512"}}, "m"), c, at::kBFloat16, 64),
      full);
}

// The bookkeeping a retention policy keeps beside a block's K and V, charged to the pool on
// top (tiny-llama: 4 layers, 2 KV heads, GQA group 2; blocks of 64): the CPU cache's int64
// positions, H2O's fp32 sums, ScissorHands' 2 x 32 bools; the paged bound of 4 + 8 (+ 4 on the
// kernel path); nothing without an evicting policy.
TEST(Serving, RetentionBookkeepingIsChargedPerBlock) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny");
  auto per_block = [&](const char* name, bool paged, bool kernel_path) {
    return method_retention_block_bytes(resolve_method({{"name", name}}, "m"), c, at::kHalf, 64,
                                        paged, kernel_path);
  };
  const double tokens = 64.0 * 4 * 2;  // a block's tokens x layers x KV heads
  EXPECT_EQ(per_block("full", false, false), 0.0);
  EXPECT_EQ(per_block("quest", true, true), 0.0);
  EXPECT_EQ(per_block("kivi-4", false, false), 0.0);
  EXPECT_EQ(per_block("stream-512", false, false), tokens * 8);
  EXPECT_EQ(per_block("h2o-512", false, false), tokens * (8 + 4));
  EXPECT_EQ(per_block("scissorhands-512", false, false), tokens * (8 + 64));
  EXPECT_EQ(per_block("scissorhands-512", true, false), tokens * (4 + 8 + 64));
  EXPECT_EQ(per_block("scissorhands-512", true, true), tokens * (4 + 4 + 8 + 64));
  // StreamingLLM's ring on the paged cache lists nothing; selecting once after the prefill
  // (KIVI's codes take no other) it lists its kept tokens as the other policies do.
  EXPECT_EQ(per_block("stream-512", true, false), 0.0);
  EXPECT_EQ(per_block("stream-512", true, true), 0.0);
  EXPECT_EQ(method_retention_block_bytes(
                resolve_method(
                    {{"name", "stream-512"}, {"codec", "kivi-2"}, {"evict", "after_prefill"}}, "m"),
                c, at::kHalf, 64, true, true),
            tokens * (4 + 4 + 8));
  // A policy selecting once after the prefill records only while a layer's prompt enters,
  // one layer at a time: its blocks are charged the positions, and the budget sets aside its
  // record for one layer per token a step prefills (method_prefill_retention_bytes).
  for (const char* name : {"h2o-512", "scissorhands-512"}) {
    const nlohmann::json once = resolve_method({{"name", name}, {"evict", "after_prefill"}}, "m");
    const double record = std::string(name) == "h2o-512" ? 4 : 64;
    EXPECT_EQ(method_retention_block_bytes(once, c, at::kHalf, 64), tokens * 8) << name;
    EXPECT_EQ(method_prefill_retention_bytes(once, c, at::kHalf), 2 * record) << name;
    EXPECT_EQ(method_retention_block_bytes(once, c, at::kHalf, 64, true, true),
              tokens * (4 + 4 + 8))
        << name;
    EXPECT_EQ(method_prefill_retention_bytes(once, c, at::kHalf, true, true), 2 * record) << name;
    // Evicting during decode it records every step: all in the blocks' charge.
    EXPECT_EQ(method_prefill_retention_bytes(resolve_method({{"name", name}}, "m"), c, at::kHalf),
              0.0)
        << name;
  }
  // The same budget holds fewer ScissorHands blocks than full-cache ones of equal K/V bytes.
  const double kv =
      method_block_bytes(resolve_method({{"name", "full"}}, "m"), c, at::kBFloat16, 64);
  EXPECT_LT(BlockPool::capacity(1 << 22, kv + per_block("scissorhands-512", false, false)),
            BlockPool::capacity(1 << 22, kv));
}

// Whether `w` window blocks of `bpb` bytes on top of a request's blocks of `bs` tokens cover
// `bytes(t)` at every length t up to 1500 (a failure per length that they do not); returns
// whether one block fewer would fall short somewhere.
bool window_covers(int64_t bs, int64_t w, double bpb, const std::function<double(int64_t)>& bytes,
                   const std::string& what) {
  bool tight = false;
  for (int64_t t = 1; t <= 1500; ++t) {
    const double blocks = static_cast<double>((t + bs - 1) / bs);
    EXPECT_GE((blocks + static_cast<double>(w)) * bpb * (1 + 1e-9), bytes(t))
        << what << " bs " << bs << " t " << t;
    if ((blocks + static_cast<double>(w) - 1) * bpb < bytes(t)) tight = true;
  }
  return tight;
}

// The window blocks make the pool's charge cover the formula at every length, and are the
// fewest that do: none for the full cache and StreamingLLM (bytes linear in tokens), some for
// kivi-4's full-precision residual (up to 2 x 128 tokens of fp16 keys and values).
TEST(Serving, WindowBlocksCoverTheFormulaAtEveryLength) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny");
  for (int64_t bs : {16, 64}) {
    for (const char* name : {"full", "stream-512", "kivi-4", "kivi-2"}) {
      const nlohmann::json m = resolve_method({{"name", name}}, "m");
      const double bpb = method_block_bytes(m, c, at::kBFloat16, bs);
      const int64_t w = method_window_blocks(m, c, at::kBFloat16, bs, bpb, 1500);
      auto codec = make_codec(m, at::kBFloat16);
      auto formula = [&](int64_t t) {
        return static_cast<double>(codec->nominal_bytes(t, c.num_kv_heads, c.head_dim).total()) *
               static_cast<double>(c.num_layers);
      };
      const bool tight = window_covers(bs, w, bpb, formula, std::string(name));
      if (std::string(name).rfind("kivi", 0) == 0) {
        EXPECT_GE(w, 1) << name;
        EXPECT_TRUE(tight) << name << ": one block fewer would still cover every length";
      } else {
        EXPECT_EQ(w, 0) << name;
      }
    }
  }
}

// GEAR's bytes depend on how a request's tokens arrived: decode steps form a block of `buffer`
// tokens at a time, each with its own factors (rank x (buffer + head_dim)) and key groups, which
// at Llama-3-8B's head_dim of 128 cost ~19% more per token than a prefill's one block. The pool's
// charge, per block and window, covers a request of any prompt (a prefill, then decode steps) at
// every length, on both caches.
TEST(Serving, GearChargesCoverAPrefillThenDecodeSteps) {
  const ModelConfig c = parse_model_config(find_model_preset("llama-3-8b").config, "llama");
  // gear-4; a prefill rank past the buffer, whose worst prompt is in between (16 of 8-token
  // buffers); key groups and outliers rounding in opposite directions (worst prompt: 9).
  for (const char* entry :
       {R"({"name": "gear-4"})",
        R"({"name": "gear", "buffer": 8, "rank_prefill": 16, "rank_decode": 2, "bits": 4,
            "group": 32})",
        R"({"name": "gear", "buffer": 3, "group": 8, "outlier_ratio": 0.13})"}) {
    const nlohmann::json m = resolve_method(nlohmann::json::parse(entry), "m");
    const auto codec = make_codec(m, at::kHalf);
    const int64_t buffer = std::dynamic_pointer_cast<const GearCodec>(codec)->gear_params().buffer;
    const double row = 2.0 * 128 * 2 * 8 * double(c.num_layers);  // a key and a value, all heads
    for (int64_t bs : {16, 64}) {
      for (bool paged : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << entry << ", blocks of " << bs << (paged ? ", paged" : ", cpu"));
        const double bpb = method_block_bytes(m, c, at::kHalf, bs, paged);
        if (std::string(entry).find("gear-4") != std::string::npos) {
          // A prefill's one block grows at less than that.
          const double one_append = double(codec->nominal_bytes(2 * 4096 * bs, 8, 128).total() -
                                           codec->nominal_bytes(4096 * bs, 8, 128).total()) *
                                    double(c.num_layers) / 4096.0;
          EXPECT_GT(bpb, 1.1 * one_append);
        }
        // The paged cache's slot holds the exact buffers (the formula's t mod buffer rows).
        const double slot = paged ? double(buffer) * row : 0.0;
        const int64_t w = method_window_blocks(m, c, at::kHalf, bs, bpb, 400, paged, slot);
        for (int64_t prompt = 1; prompt <= 400; ++prompt)
          for (int64_t t = prompt; t <= 400; ++t) {
            const double exact = paged ? double(t % buffer) * row : 0;
            const double bytes = double(codec->sequence_nominal_bytes(prompt, t, 8, 128).total()) *
                                     double(c.num_layers) -
                                 exact;
            ASSERT_LE(bytes, (double((t + bs - 1) / bs) + double(w)) * bpb * (1 + 1e-9))
                << "prompt " << prompt << ", " << t << " tokens";
          }
      }
    }
  }
}

// A method's paged cache on tiny-llama's shape, its codec prepared where it needs it.
std::unique_ptr<KVCache> tiny_paged_cache(const nlohmann::json& m, const ModelConfig& c) {
  return make_paged_cache(
      m, testing_support::ready(make_codec(m, at::kHalf), c.num_layers, c.num_kv_heads, c.head_dim),
      c.num_layers, c.num_kv_heads, c.head_dim, at::kHalf);
}

// On the paged cache the window blocks and the slot (KVCache::slot_bytes: KIVI's two fp16 rings
// of its residual, fp8's scales, and a last page past the blocks where pages of 32 do not tile
// them) cover what it stores at every length: whole pages of every token (KIVI's group, 32
// tokens otherwise) and Quest's page bounds; at block sizes that are and are not multiples of
// the page. Whole pages need no window block. (PagedCacheTest checks those bytes against the
// cache's storage().)
TEST(Serving, PagedWindowBlocksCoverWhatThePagesStoreAtEveryLength) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny");
  for (int64_t bs : {16, 48, 64}) {
    for (const char* name : {"full", "int8", "fp8", "kivi-4", "kivi-2", "quest-1024"}) {
      const nlohmann::json m = resolve_method({{"name", name}}, "m");
      const double bpb = method_block_bytes(m, c, at::kHalf, bs, true);
      const double slot = double(tiny_paged_cache(m, c)->slot_bytes(bs));
      const int64_t w = method_window_blocks(m, c, at::kHalf, bs, bpb, 1500, true, slot);
      const PagedSequenceBytes plan = paged_sequence_bytes_of(m, at::kHalf, c.head_dim);
      ASSERT_GT(plan.page, 0) << name;
      const bool quest = std::string(name) == "quest-1024";
      auto stored = [&](int64_t t) {
        // Quest: an fp16 min and max per page of 16 tokens, channel and KV head, past its 2
        // dense layers.
        const double bounds =
            quest
                ? double((c.num_layers - 2) * ((t + 15) / 16) * 2 * c.num_kv_heads * c.head_dim * 2)
                : 0.0;
        return double(plan.of(t)) * double(c.num_kv_heads * c.num_layers) + bounds - slot;
      };
      window_covers(bs, w, bpb, stored, std::string(name));
      EXPECT_EQ(w, 0) << name << " bs " << bs;
      // The slot: KIVI's rings (2 x 128 rows of 32 fp16 channels), fp8's two fp32 scales, per
      // KV head and layer, and a page where blocks are not whole pages.
      const std::string n = name;
      const double reserve = n.rfind("kivi", 0) == 0 ? 2.0 * 128 * 32 * 2 : n == "fp8" ? 8.0 : 0.0;
      EXPECT_EQ(double(plan.reserve), reserve) << name;
      EXPECT_EQ(slot, (reserve + (bs % plan.page ? double(plan.page_bytes) : 0.0)) *
                          double(c.num_kv_heads * c.num_layers))
          << name << " bs " << bs;
    }
  }
  // Latent pages of 32 slots: a page at bytes_per_block's rate where blocks do not tile them.
  const nlohmann::json palu = resolve_method({{"name", "palu"}}, "m");
  const auto palu_cache = tiny_paged_cache(palu, c);
  for (int64_t bs : {16, 48, 64}) {
    const double bpb = method_block_bytes(palu, c, at::kHalf, bs, true);
    const double slot = double(palu_cache->slot_bytes(bs));
    EXPECT_DOUBLE_EQ(slot, bs % 32 ? 32 * bpb / double(bs) : 0.0) << bs;
    EXPECT_EQ(method_window_blocks(palu, c, at::kHalf, bs, bpb, 1500, true, slot), 0) << bs;
  }
}

// What a cache says a slot costs (KVCache::slot_bytes) is what its pool allocates for one more
// sequence that can run at once beside the same tokens, for every paged format, GEAR's block
// cache and the latent caches, at blocks that are and are not whole pages; nothing off the
// paged path.
TEST(Serving, SlotBytesAreWhatAPoolAllocatesPerSequence) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny");
  for (const char* name : {"full", "int8", "int4", "fp8", "kivi-4", "kivi-2", "quest-1024",
                           "gear-4", "palu", "kvproj"}) {
    const nlohmann::json m = resolve_method({{"name", name}}, "m");
    const auto cache = tiny_paged_cache(m, c);
    for (int64_t bs : {16, 48, 64}) {
      auto allocated = [&](int64_t sequences) {
        cache->reserve_pool(sequences, 4096, bs, 1500);  // idle: made again at this size
        return cache->allocated_bytes();
      };
      const uint64_t two = allocated(2), three = allocated(3);
      EXPECT_EQ(three - two, cache->slot_bytes(bs)) << name << " bs " << bs;
    }
    const std::string n = name;
    if (n == "full" || n == "int8" || n == "int4" || n == "quest-1024" || n == "palu" ||
        n == "kvproj")
      EXPECT_EQ(cache->slot_bytes(64), 0u) << name << ": pages of 32 tile blocks of 64";
    else
      EXPECT_GT(cache->slot_bytes(64), 0u) << name;
    if (n != "palu" && n != "kvproj")  // (a prepared codec, which the registry's cache takes)
      EXPECT_EQ(make_kv_cache(m, c.num_layers, c.num_kv_heads, c.head_dim, at::kHalf, "cpu")
                    ->slot_bytes(48),
                0u)
          << name;
  }
}

// Every running sequence holds its window blocks on top of its tokens' blocks, from admission
// to completion, and a request that cannot fit with them is rejected.
TEST(Scheduler, WindowBlocksAreChargedPerSequence) {
  BlockPool pool(10, 4);
  SchedulerConfig cfg;
  cfg.window_blocks = 2;
  Scheduler s(pool, cfg);
  s.submit({0, 0, 3, 3});  // 3..5 tokens: 1-2 blocks + 2
  s.submit({1, 0, 4, 1});  // 4 tokens: 1 block + 2
  StepPlan p = s.schedule();
  EXPECT_EQ(p.prefills.size(), 2u);
  EXPECT_EQ(pool.blocks_of(0), 3);
  EXPECT_EQ(pool.blocks_of(1), 3);
  s.commit(p);  // request 1 is done
  EXPECT_EQ(pool.used_blocks(), 3);
  s.check_invariants();
  s.commit(s.schedule());  // request 0 now holds 4 tokens
  EXPECT_EQ(pool.blocks_of(0), 3);
  StepPlan last = s.schedule();  // its context reaches 5 tokens: a second token block
  EXPECT_EQ(pool.blocks_of(0), 4);
  s.commit(last);
  EXPECT_TRUE(s.idle());
  EXPECT_EQ(pool.free_blocks(), 10);
  // 33 tokens: 9 blocks + 2 > 10.
  EXPECT_THROW(s.submit({2, 0, 30, 4}), Error);
}

}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

// --- Request sources ------------------------------------------------------------------------

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("kvbench_serving_" + name);
  std::ofstream(path) << text;
  return path.string();
}

// The error message of fn(), or "" when it does not throw.
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(RequestTrace, ReadsTextAndLengthPromptsInOrder) {
  const std::string path =
      write_temp("trace_ok.jsonl",
                 "{\"arrival_s\": 0, \"prompt\": \"hello\", \"output_tokens\": 4}\n"
                 "\n"
                 "{\"arrival_s\": 0.5, \"prompt_tokens\": 12, \"output_tokens\": 2, "
                 "\"note\": \"ignored\"}\n"
                 "{\"arrival_s\": 0.5, \"prompt_tokens\": 3, \"output_tokens\": 1}\n");
  const auto rows = load_request_trace(path);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].prompt, "hello");
  EXPECT_EQ(rows[0].prompt_tokens, 0);
  EXPECT_EQ(rows[0].output_tokens, 4);
  EXPECT_DOUBLE_EQ(rows[1].arrival_s, 0.5);
  EXPECT_TRUE(rows[1].prompt.empty());
  EXPECT_EQ(rows[1].prompt_tokens, 12);
  EXPECT_EQ(rows[1].where, path + ":3");
  EXPECT_EQ(rows[2].output_tokens, 1);
}

// Every bad line is named by file:line and the key at fault.
TEST(RequestTrace, BadLinesNameFileLineAndKey) {
  struct Case {
    std::string line, fragment;
  };
  const std::vector<Case> cases = {
      {"{\"prompt_tokens\": 3, \"output_tokens\": 1}",
       "\"arrival_s\": missing (expected seconds from the trace's start, in [0, 1e7])"},
      {"{\"arrival_s\": -1, \"prompt_tokens\": 3, \"output_tokens\": 1}",
       "\"arrival_s\": expected"},
      {"{\"arrival_s\": \"0\", \"prompt_tokens\": 3, \"output_tokens\": 1}",
       "\"arrival_s\": expected"},
      // Past 1e7 s a request's latencies would lose their precision (1e308: exactly zero).
      {"{\"arrival_s\": 1e308, \"prompt_tokens\": 3, \"output_tokens\": 1}",
       "\"arrival_s\": expected"},
      {"{\"arrival_s\": 1, \"output_tokens\": 1}", "exactly one of \"prompt\""},
      {"{\"arrival_s\": 1, \"prompt\": \"x\", \"prompt_tokens\": 3, \"output_tokens\": 1}",
       "exactly one of \"prompt\""},
      {"{\"arrival_s\": 1, \"prompt\": \"\", \"output_tokens\": 1}", "\"prompt\": expected"},
      {"{\"arrival_s\": 1, \"prompt_tokens\": 0, \"output_tokens\": 1}",
       "\"prompt_tokens\": expected"},
      {"{\"arrival_s\": 1, \"prompt_tokens\": 2.5, \"output_tokens\": 1}",
       "\"prompt_tokens\": expected"},
      {"{\"arrival_s\": 1, \"prompt_tokens\": 3}",
       "\"output_tokens\": missing (expected an integer in [1, 16777216])"},
      {"{\"arrival_s\": 1, \"prompt_tokens\": 3, \"output_tokens\": 0}",
       "\"output_tokens\": expected"},
      // A length no model takes: refused before a prompt of that many ids is made.
      {"{\"arrival_s\": 1, \"prompt_tokens\": 1000000000, \"output_tokens\": 1}",
       "\"prompt_tokens\": expected an integer in [1, 16777216], got 1000000000"},
      {"{\"arrival_s\": 1, \"prompt_tokens\": 3, \"output_tokens\": 16777217}",
       "\"output_tokens\": expected"},
      {"{\"arrival_s\": 0.5, \"prompt_tokens\": 3, \"output_tokens\": 1}", "before the previous"},
      {"[1, 2]", "expected a JSON object"},
      {"{not json", "not JSON"},
  };
  for (const auto& c : cases) {
    const std::string path = write_temp(
        "trace_bad.jsonl",
        "{\"arrival_s\": 1, \"prompt_tokens\": 3, \"output_tokens\": 1}\n" + c.line + "\n");
    const std::string err = error_of([&] { load_request_trace(path); });
    EXPECT_NE(err.find(path + ":2"), std::string::npos) << c.line << " -> " << err;
    EXPECT_NE(err.find(c.fragment), std::string::npos) << c.line << " -> " << err;
  }
  EXPECT_NE(error_of([&] {
              load_request_trace(write_temp("trace_empty.jsonl", "\n"));
            }).find("no requests"),
            std::string::npos);
  EXPECT_NE(error_of([] { load_request_trace("/nonexistent/trace.jsonl"); }).find("cannot read"),
            std::string::npos);
}

TEST(ShareGpt, ReadsAListOrJsonlAndSkipsEntriesWithoutAReply) {
  const std::string list =
      write_temp("sharegpt.json",
                 R"([{"id": "a", "conversations": [{"from": "system", "value": "be nice"},
                                       {"from": "human", "value": "What is 2+2?"},
                                       {"from": "gpt", "value": "4."},
                                       {"from": "human", "value": "And 3+3?"},
                                       {"from": "gpt", "value": "6."}]},
          {"conversations": [{"from": "gpt", "value": "orphan reply"},
                             {"from": "human", "value": "unanswered"}]},
          {"conversations": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello there"}]}])");
  const ShareGptData d = load_sharegpt(list);
  EXPECT_EQ(d.entries, 3);
  EXPECT_EQ(d.skipped, 1);
  ASSERT_EQ(d.conversations.size(), 2u);
  EXPECT_EQ(d.conversations[0].prompt, "What is 2+2?");  // the first user turn
  EXPECT_EQ(d.conversations[0].reply, "4.");             // the first reply after it
  EXPECT_EQ(d.conversations[1].prompt, "Hi");
  EXPECT_EQ(d.conversations[1].reply, "Hello there");

  const std::string lines = write_temp("sharegpt.jsonl",
                                       "{\"conversations\": [{\"from\": \"human\", \"value\": "
                                       "\"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}\n"
                                       "\n"
                                       "{\"conversations\": [{\"from\": \"human\", \"value\": "
                                       "\"c\"}, {\"from\": \"chatgpt\", \"value\": \"d\"}]}\n");
  const ShareGptData e = load_sharegpt(lines);
  ASSERT_EQ(e.conversations.size(), 2u);
  EXPECT_EQ(e.conversations[1].reply, "d");

  // A list saved with a UTF-8 byte-order mark is still a list.
  const std::string bom = write_temp("sharegpt_bom.json",
                                     "\xEF\xBB\xBF\n[{\"conversations\": [{\"from\": \"human\", "
                                     "\"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}]");
  const ShareGptData f = load_sharegpt(bom);
  ASSERT_EQ(f.conversations.size(), 1u);
  EXPECT_EQ(f.conversations[0].reply, "b");
}

TEST(ShareGpt, MalformedEntriesNameTheirPlace) {
  const std::string a =
      write_temp("sharegpt_bad.json", R"([{"conversations": [{"from": "human"}]}])");
  std::string err = error_of([&] { load_sharegpt(a); });
  EXPECT_NE(err.find(a + ": entry 0: turn 0"), std::string::npos) << err;
  const std::string b =
      write_temp("sharegpt_bad.jsonl", "{\"conversations\": []}\n{\"turns\": []}\n");
  err = error_of([&] { load_sharegpt(b); });
  EXPECT_NE(err.find(b + ":2"), std::string::npos) << err;
  EXPECT_NE(err.find("\"conversations\""), std::string::npos) << err;
  const std::string c = write_temp(
      "sharegpt_none.jsonl", "{\"conversations\": [{\"from\": \"human\", \"value\": \"q\"}]}\n");
  err = error_of([&] { load_sharegpt(c); });
  EXPECT_NE(err.find("none of its 1 entries"), std::string::npos) << err;
  const std::string d = write_temp("sharegpt_broken.json", "[{\"conversations\": ");
  EXPECT_NE(error_of([&] { load_sharegpt(d); }).find("not JSON"), std::string::npos);
}

// Uniform draws are the suite's original ones (same generator calls), so earlier workloads are
// unchanged; lognormal draws stay in range with the requested mean (wide range: no clamping to
// speak of) and the median exp(mu) below it.
TEST(LengthDistribution, UniformAsBeforeAndLognormalWithItsMean) {
  LengthDistribution u;
  u.min = 5;
  u.max = 9;
  Rng a(3), b(3);
  for (int i = 0; i < 100; ++i) {
    const int64_t want = 5 + static_cast<int64_t>(b.below(5));
    EXPECT_EQ(u.draw(a), want);
  }
  LengthDistribution l;
  l.name = "lognormal";
  l.min = 1;
  l.max = 1 << 20;
  l.mean = 200;
  l.sigma = 0.6;
  check_length_distribution(l, "prompt_tokens");
  Rng r(5);
  std::vector<double> x;
  for (int i = 0; i < 20000; ++i) {
    const int64_t v = l.draw(r);
    ASSERT_GE(v, l.min);
    ASSERT_LE(v, l.max);
    x.push_back(static_cast<double>(v));
  }
  double m = 0;
  for (double v : x) m += v;
  m /= static_cast<double>(x.size());
  // sd of a lognormal with mean 200, sigma 0.6: 200 * sqrt(exp(0.36) - 1) = 130; the mean's
  // standard error over 20000 draws is about 0.9.
  EXPECT_NEAR(m, 200.0, 5.0);
  std::sort(x.begin(), x.end());
  EXPECT_NEAR(x[x.size() / 2], 200.0 * std::exp(-0.18), 5.0);
  // A narrow range clamps: every draw lies in it, and both ends occur.
  l.min = 150;
  l.max = 250;
  l.mean = 0;  // the midpoint
  std::set<int64_t> seen;
  for (int i = 0; i < 2000; ++i) seen.insert(l.draw(r));
  EXPECT_EQ(*seen.begin(), 150);
  EXPECT_EQ(*seen.rbegin(), 250);
}

TEST(LengthDistribution, BadSettingsNameTheKey) {
  LengthDistribution d;
  d.name = "zipf";
  d.min = 1;
  d.max = 10;
  std::string err = error_of([&] { check_length_distribution(d, "prompt_tokens"); });
  EXPECT_NE(err.find("\"zipf\""), std::string::npos) << err;
  EXPECT_NE(err.find("uniform, lognormal"), std::string::npos) << err;
  d.name = "uniform";
  d.min = 11;
  err = error_of([&] { check_length_distribution(d, "output_tokens"); });
  EXPECT_NE(err.find("output_tokens_max (10) must be >= output_tokens_min (11)"), std::string::npos)
      << err;
  d.name = "lognormal";
  d.min = 1;
  d.mean = 20;
  err = error_of([&] { check_length_distribution(d, "prompt_tokens"); });
  EXPECT_NE(err.find("prompt_tokens_mean"), std::string::npos) << err;
  d.mean = 5;
  d.sigma = 0;
  err = error_of([&] { check_length_distribution(d, "prompt_tokens"); });
  EXPECT_NE(err.find("prompt_tokens_sigma"), std::string::npos) << err;
}

TEST(Serving, PoissonArrivalsUntilADurationArePrefixesOfTheCountedOnes) {
  const auto cut = poisson_arrivals_until(50.0, 4.0, 9, 1000000);
  const auto all = poisson_arrivals(static_cast<int64_t>(cut.size()) + 1, 4.0, 9);
  ASSERT_GT(cut.size(), 100u);
  for (size_t i = 0; i < cut.size(); ++i) EXPECT_EQ(cut[i], all[i]);
  EXPECT_LT(cut.back(), 50.0);
  EXPECT_GE(all.back(), 50.0);  // the next arrival is past the duration
  // About rate × duration = 200 arrivals (Poisson sd 14).
  EXPECT_NEAR(static_cast<double>(cut.size()), 200.0, 60.0);
  EXPECT_THROW(poisson_arrivals_until(10.0, 0.0, 1, 100), Error);
  EXPECT_THROW(poisson_arrivals_until(0.0, 1.0, 1, 100), Error);
  EXPECT_NE(error_of([] { poisson_arrivals_until(100.0, 100.0, 1, 50); }).find("more than 50"),
            std::string::npos);
}

}  // namespace
}  // namespace kvbench
