#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <memory>
#include <numeric>
#include <thread>
#include <utility>

#include "kvbench/core/error.h"
#include "kvbench/core/phase_clock.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/time.h"
#include "kvbench/engine/generator.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/model/presets.h"

namespace kvbench {
namespace {

TEST(Sampler, GreedyPicksTheArgmaxAndLowestIdOnTies) {
  Sampler s({0.0, 1.0, 0});
  EXPECT_EQ(s.next(at::tensor({0.1f, 2.0f, -1.0f, 2.0f})), 1);
}

TEST(Sampler, TinyTopPIsGreedy) {
  Sampler s({1.0, 1e-6, 3});
  at::Tensor logits = at::tensor({0.0f, 1.0f, 3.0f, 2.0f});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.next(logits), 2);
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  // probabilities 0.5, 0.3, 0.2: top_p 0.75 keeps {0, 1} (0.5 < 0.75, 0.8 >= 0.75).
  at::Tensor logits = at::log(at::tensor({0.5, 0.3, 0.2})).to(at::kFloat);
  Sampler s({1.0, 0.75, 11});
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 4000; ++i) ++counts[s.next(logits)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 4000.0, 0.5 / 0.8, 0.03);  // renormalised over the kept set
}

TEST(Sampler, TemperatureSamplingFollowsTheDistributionAndIsSeeded) {
  at::Tensor logits = at::log(at::tensor({0.1, 0.2, 0.7})).to(at::kFloat);
  Sampler a({1.0, 1.0, 5}), b({1.0, 1.0, 5});
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 5000; ++i) {
    int64_t x = a.next(logits);
    EXPECT_EQ(x, b.next(logits));
    ++counts[x];
  }
  EXPECT_NEAR(counts[2] / 5000.0, 0.7, 0.03);
  EXPECT_NEAR(counts[0] / 5000.0, 0.1, 0.02);
  EXPECT_THROW(Sampler({-1.0, 1.0, 0}), Error);
  EXPECT_THROW(Sampler({1.0, 0.0, 0}), Error);
}

// At top_p 1 a draw walks the ids in order (no sort of the vocabulary): ids 0, 2 and 3 of
// probabilities 0.1, 0.2 and 0.7 (id 1 suppressed: -inf, never drawn) give id 0 for u < 0.1, 2
// for u < 0.3, 3 above.
TEST(Sampler, AtTopPOneADrawWalksTheIdsInOrder) {
  const at::Tensor logits = at::log(at::tensor({0.1, 0.0, 0.2, 0.7})).to(at::kFloat);  // id 1: -inf
  Sampler s({1.0, 1.0, 17});
  Rng reference(17);
  for (int i = 0; i < 500; ++i) {
    const double u = reference.uniform();
    const int64_t want = u < 0.1 - 1e-6 ? 0 : u < 0.3 - 1e-6 ? 2 : 3;
    if (std::fabs(u - 0.1) < 1e-6 || std::fabs(u - 0.3) < 1e-6) {
      s.next(logits);  // too close to a boundary for float32 logits
      continue;
    }
    EXPECT_EQ(s.next(logits), want) << u;
  }
}

TEST(Sampler, NoTokenFromLogitsWhoseGreatestIsNotFinite) {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  for (const double temperature : {0.0, 1.0}) {
    Sampler s({temperature, 1.0, 0});
    EXPECT_EQ(s.next(at::tensor({0.1f, nan, 2.0f})), -1);
    EXPECT_EQ(s.next(at::tensor({0.1f, inf, 2.0f})), -1);
    EXPECT_EQ(s.next(at::tensor({-inf, -inf})), -1);
    EXPECT_EQ(s.next(at::tensor({-inf, 1.0f})), 1);  // a masked id is fine
  }
}

// Tied probabilities are ordered by id (a stable sort), so each uniform draw maps to one token
// on every machine: with 64 equal logits the i-th draw picks floor(u_i x 64).
TEST(Sampler, TiesAreOrderedByIdSoDrawsAreReproducible) {
  const at::Tensor logits = at::zeros({64}, at::kFloat);
  Sampler s({1.0, 1.0, 21});
  Rng reference(21);
  for (int i = 0; i < 200; ++i)
    EXPECT_EQ(s.next(logits), static_cast<int64_t>(reference.uniform() * 64)) << i;
  // Ties at the top-p boundary: four tokens of 0.25 with top_p 0.5 keep ids 0 and 1.
  Sampler half({1.0, 0.5, 3});
  for (int i = 0; i < 200; ++i) EXPECT_LT(half.next(at::zeros({4}, at::kFloat)), 2);
}

// greedy_ids, the path greedy generation takes: the argmax, the lowest id on ties, -1 for a row
// whose greatest logit is not finite.
TEST(Sampler, GreedyIdsTakeTheLowestTiedIdAndRefuseNonFiniteRows) {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  const at::Tensor rows = at::tensor({0.5f, 2.0f, 2.0f, -1.0f,  // tie: 1
                                      0.1f, nan,  3.0f, 0.0f,   // NaN: -1
                                      0.0f, inf,  1.0f, 2.0f,   // +inf: -1
                                      -inf, -inf, -inf, -inf,   // all -inf: -1
                                      -inf, 1.0f, -inf, 0.5f})  // masked ids: 1
                              .view({5, 4});
  const at::Tensor ids = greedy_ids(rows);
  EXPECT_EQ(std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 5),
            (std::vector<int64_t>{1, -1, -1, -1, 1}));
}

struct Fixture {
  Transformer model =
      Transformer::random(parse_model_config(find_model_preset("tiny-qwen2").config, "q2"), 9);
  FullKVCache cache{4, 2, 32, at::kFloat};
};

TEST(Generate, StopsAtMaxNewTokensAndTimesEveryStep) {
  Fixture f;
  GenerationConfig g;
  g.max_new_tokens = 6;
  auto r = generate(f.model, f.cache, {{1, 2, 3}, {4, 5}}, g);
  ASSERT_EQ(r.sequences.size(), 2u);
  for (const auto& s : r.sequences) {
    EXPECT_EQ(s.tokens.size(), 6u);
    EXPECT_EQ(s.stop_reason, "length");
    EXPECT_EQ(s.token_times_s.size(), 6u);
    EXPECT_TRUE(std::is_sorted(s.token_times_s.begin(), s.token_times_s.end()));
  }
  // One step's tokens leave together: a row's time does not count the rows sampled before it.
  EXPECT_EQ(r.sequences[0].token_times_s, r.sequences[1].token_times_s);
  EXPECT_EQ(r.decode_step_s.size(), 5u);
  EXPECT_EQ(r.decode_step_batch, std::vector<int64_t>(5, 2));
  EXPECT_EQ(r.prompt_tokens, 5);
  EXPECT_GT(r.prefill_s, 0);
  // Peak: 3 + 2 prompt tokens + 5 generated each (the 6th is never fed back), 4 layers, fp32.
  EXPECT_EQ(r.peak_kv_bytes, (5u + 10u) * 4 * 2 * 2 * 32 * 4);
  EXPECT_EQ(f.cache.bytes(), 0u);  // sequences removed afterwards
}

// A suppressed id cannot be the first token (the first step takes the next-best logit), and
// may come later; as a stop id it then ends the generation (LongBench's samsum settings). With
// temperature sampling too.
TEST(Generate, FirstTokenSuppressionHoldsForTheFirstTokenOnly) {
  Fixture f;
  GenerationConfig g;
  g.max_new_tokens = 6;
  const auto plain = generate(f.model, f.cache, {{1, 2, 3}, {4, 5}}, g);
  const int64_t seq = f.cache.add_sequence();
  const at::Tensor logits = f.model.forward({{seq, {1, 2, 3}}}, f.cache);
  f.cache.remove_sequence(seq);
  const int64_t best = logits.argmax(-1).item<int64_t>();
  ASSERT_EQ(plain.sequences[0].tokens[0], best);
  at::Tensor rest = logits.clone();
  rest.index_put_({0, best}, -std::numeric_limits<float>::infinity());
  const int64_t second = rest.argmax(-1).item<int64_t>();
  g.first_token_suppressed = {best};
  const auto kept = generate(f.model, f.cache, {{1, 2, 3}}, g);
  EXPECT_EQ(kept.sequences[0].tokens[0], second);
  // A stop id that would be the first token stops the generation at once; suppressed first,
  // it can only end a later step.
  g.eos_token_ids = {best};
  g.first_token_suppressed.clear();
  EXPECT_EQ(generate(f.model, f.cache, {{1, 2, 3}}, g).sequences[0].tokens.size(), 1u);
  g.first_token_suppressed = {best};
  const auto later = generate(f.model, f.cache, {{1, 2, 3}}, g);
  EXPECT_EQ(later.sequences[0].tokens[0], second);
  EXPECT_EQ(later.sequences[0].stop_reason == "eos", later.sequences[0].tokens.back() == best);
  g.sampling.temperature = 1.0;
  g.eos_token_ids.clear();
  for (uint64_t seed = 0; seed < 20; ++seed) {
    g.sampling.seed = seed;
    g.first_token_suppressed = {best, second};
    const auto sampled = generate(f.model, f.cache, {{1, 2, 3}}, g);
    EXPECT_NE(sampled.sequences[0].tokens[0], best);
    EXPECT_NE(sampled.sequences[0].tokens[0], second);
  }
  g.first_token_suppressed = {f.model.config().vocab_size};
  EXPECT_THROW(generate(f.model, f.cache, {{1, 2, 3}}, g), Error);
}

// NaN weights would otherwise run every generation to its cap on an arbitrary token, and the
// suites would report those outputs as the method's.
TEST(Generate, LogitsThatAreNotFiniteFailTheGeneration) {
  for (const double temperature : {0.0, 0.7}) {
    Fixture f;
    f.model.weights().lm_head[3][0].fill_(std::numeric_limits<float>::quiet_NaN());
    GenerationConfig g;
    g.max_new_tokens = 3;
    g.sampling.temperature = temperature;
    try {
      generate(f.model, f.cache, {{1, 2, 3}}, g);
      FAIL() << "temperature " << temperature << ": NaN logits gave tokens";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("logits of sequence 0 are not finite"),
                std::string::npos)
          << e.what();
    }
    // The failed generation's sequences are gone: a suite that goes on after a failed sample
    // does not carry its tokens.
    EXPECT_EQ(f.cache.storage().total(), 0u);
  }
}

// With a phase clock every step is split into the forward's phases, and the phases account
// for the step: their sum is the step's time but for the few instructions outside the marks.
TEST(Generate, SplitsEveryStepIntoTheForwardsPhases) {
  Fixture f;
  GenerationConfig g;
  g.max_new_tokens = 5;
  PhaseClock clock(at::Device(at::kCPU), forward_phase_names());
  g.phases = &clock;
  auto r = generate(f.model, f.cache, {{1, 2, 3}, {4, 5}}, g);
  ASSERT_EQ(r.prefill_phase_s.size(), forward_phase_names().size());
  ASSERT_EQ(r.decode_phase_s.size(), r.decode_step_s.size());
  for (size_t i = 0; i < r.decode_phase_s.size(); ++i) {
    const std::vector<double>& p = r.decode_phase_s[i];
    ASSERT_EQ(p.size(), forward_phase_names().size());
    double sum = 0;
    for (double s : p) {
      EXPECT_GE(s, 0.0);
      sum += s;
    }
    for (ForwardPhase ph :
         {ForwardPhase::kEmbed, ForwardPhase::kNorm, ForwardPhase::kQkvRope, ForwardPhase::kAttend,
          ForwardPhase::kOutProj, ForwardPhase::kMlp, ForwardPhase::kHead, ForwardPhase::kSample})
      EXPECT_GT(p[static_cast<size_t>(ph)], 0.0) << forward_phase_names()[size_t(ph)];
    const double step = r.decode_step_s[i];
    EXPECT_GT(sum, 0.8 * step - 2e-4) << "step " << i;
    EXPECT_LT(sum, 1.2 * step + 5e-3) << "step " << i;
  }
  g.phases = nullptr;  // without a clock nothing is split
  auto plain = generate(f.model, f.cache, {{1, 2, 3}}, g);
  EXPECT_TRUE(plain.prefill_phase_s.empty());
  EXPECT_TRUE(plain.decode_phase_s.empty());
}

// Passes everything to a full cache (4 layers, 2 KV heads, head_dim 32); the caches below
// override what they watch.
class ForwardingCache : public KVCache {
 public:
  ForwardingCache() : inner_(4, 2, 32, at::kFloat) {}
  int64_t add_sequence() override { return inner_.add_sequence(); }
  void remove_sequence(int64_t seq) override { inner_.remove_sequence(seq); }
  int64_t length(int64_t seq) const override { return inner_.length(seq); }
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override {
    return inner_.append_and_attend(seq, layer, q, k, v);
  }
  std::vector<int64_t> kept_tokens(int64_t seq) const override { return inner_.kept_tokens(seq); }
  StorageBytes storage() const override { return inner_.storage(); }
  StorageBytes nominal() const override { return inner_.nominal(); }

 protected:
  FullKVCache inner_;
};

// Passes everything to a full cache, sleeping 3 ms in each attention call: a step's attend
// phase must then hold those milliseconds, and no other phase. With `as_device_wait` the
// sleep is reported as a wait for the device (what a read-back inside a cache is on a GPU).
class SlowAttention final : public ForwardingCache {
 public:
  explicit SlowAttention(bool as_device_wait = false) : as_device_wait_(as_device_wait) {}
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override {
    Stopwatch wait;
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    waits.push_back(wait.seconds());
    if (as_device_wait_) waited_ += waits.back();
    return inner_.append_and_attend(seq, layer, q, k, v);
  }
  std::vector<double> waits;  // each call's sleep as it took, in call order
  double device_wait_seconds() const override { return waited_; }

 private:
  bool as_device_wait_;
  double waited_ = 0;
};

TEST(Generate, TheAttendPhaseHoldsTheCachesWork) {
  Fixture f;
  SlowAttention slow;
  GenerationConfig g;
  g.max_new_tokens = 3;
  PhaseClock clock(at::Device(at::kCPU), forward_phase_names());
  g.phases = &clock;
  auto r = generate(f.model, slow, {{1, 2, 3}, {4, 5}}, g);
  const size_t attend = static_cast<size_t>(ForwardPhase::kAttend);
  for (const std::vector<double>& p : r.decode_phase_s) {
    EXPECT_GE(p[attend], 4 * 2 * 0.003);  // 4 layers x 2 sequences x 3 ms
    double rest = 0;
    for (size_t i = 0; i < p.size(); ++i) rest += i == attend ? 0.0 : p[i];
    EXPECT_LT(rest, p[attend]) << "another phase took the attention's time";
  }
  // A clock on another device than the model's is refused before anything runs.
  std::unique_ptr<PhaseClock> gpu;
  try {
    gpu = std::make_unique<PhaseClock>(at::Device(at::kCUDA, 0), forward_phase_names());
  } catch (const Error&) {  // built without the CUDA kernels: refused at construction
  }
  if (gpu) {
    g.phases = gpu.get();
    EXPECT_THROW(generate(f.model, f.cache, {{1, 2}}, g), Error);
  }
}

// A cache's waits for the device are the device's time: a step's host time leaves them out,
// its step time keeps them.
TEST(Generate, AStepsHostTimeLeavesOutTheCachesWaitsForTheDevice) {
  Fixture f;
  SlowAttention waiting(/*as_device_wait=*/true), slow;
  GenerationConfig g;
  g.max_new_tokens = 4;
  const auto w = generate(f.model, waiting, {{1, 2, 3}, {4, 5}}, g);
  const auto s = generate(f.model, slow, {{1, 2, 3}, {4, 5}}, g);
  ASSERT_EQ(w.decode_step_host_s.size(), 3u);
  const double slept = 4 * 2 * 0.003;  // 4 layers x 2 sequences x 3 ms per step
  // 8 calls (4 layers x 2 sequences) for the prefill, then 8 per decode step. The bounds use the
  // sleeps as they took (a loaded machine oversleeps), not the 3 ms asked.
  ASSERT_EQ(waiting.waits.size(), 32u);
  const auto waited = [&](size_t from) {
    return std::accumulate(waiting.waits.begin() + static_cast<std::ptrdiff_t>(from),
                           waiting.waits.begin() + static_cast<std::ptrdiff_t>(from + 8), 0.0);
  };
  const double prefill_waits = waited(0);
  for (size_t i = 0; i < w.decode_step_host_s.size(); ++i) {
    const double own = waited(8 * (i + 1));
    EXPECT_GE(w.decode_step_s[i], own) << "step " << i;  // the step still took it
    EXPECT_LE(w.decode_step_host_s[i] + own, w.decode_step_s[i] + 1e-9) << "step " << i;
    // Only this step's waits: the host's own time stays (not the prefill's waits too, which
    // would take at least as much again).
    EXPECT_GE(w.decode_step_host_s[i], 0.0) << "step " << i;
    EXPECT_GT(w.decode_step_host_s[i] + own, w.decode_step_s[i] - 0.5 * prefill_waits)
        << "step " << i;
    EXPECT_GE(s.decode_step_host_s[i], slept) << "step " << i;  // sleeping is host time
  }
}

// A full cache that lists its attention calls, (sequence, layer) in order.
class CallOrder final : public ForwardingCache {
 public:
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override {
    calls.emplace_back(seq, layer);
    return inner_.append_and_attend(seq, layer, q, k, v);
  }
  std::vector<std::pair<int64_t, int64_t>> calls;
};

// prefill_group n prefills n sequences through every layer before the next n enter, with the
// same tokens as the packed prefill.
TEST(Generate, APrefillInGroupsTakesTheGroupsInTurn) {
  Fixture f;
  GenerationConfig g;
  g.max_new_tokens = 3;
  const std::vector<std::vector<int64_t>> prompts = {
      {1, 2, 3, 4, 5, 6}, {7, 8, 9}, {2, 4, 6, 8, 10}};
  CallOrder packed, grouped, ones;
  const auto a = generate(f.model, packed, prompts, g);
  g.prefill_group = 2;
  const auto b = generate(f.model, grouped, prompts, g);
  g.prefill_group = 1;
  const auto c = generate(f.model, ones, prompts, g);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(a.sequences[i].tokens, b.sequences[i].tokens) << i;
    EXPECT_EQ(a.sequences[i].tokens, c.sequences[i].tokens) << i;
  }
  // The prefill's 12 calls: by layer for all three, then (0, 1) by layer before 2, then one at
  // a time.
  auto prefill_calls = [](const CallOrder& o) {
    return std::vector<std::pair<int64_t, int64_t>>(o.calls.begin(), o.calls.begin() + 12);
  };
  using Calls = std::vector<std::pair<int64_t, int64_t>>;
  auto expected = [](const std::vector<std::vector<int64_t>>& groups) {
    Calls out;
    for (const auto& group : groups)
      for (int64_t layer = 0; layer < 4; ++layer)
        for (int64_t seq : group) out.emplace_back(seq, layer);
    return out;
  };
  EXPECT_EQ(prefill_calls(packed), expected({{0, 1, 2}}));
  EXPECT_EQ(prefill_calls(grouped), expected({{0, 1}, {2}}));
  EXPECT_EQ(prefill_calls(ones), expected({{0}, {1}, {2}}));
  EXPECT_EQ(c.decode_step_batch, (std::vector<int64_t>{3, 3}));  // decoded together all the same
  g.prefill_group = -1;
  EXPECT_THROW(generate(f.model, f.cache, prompts, g), Error);
}

// A full cache whose storage() (the generator's per-step memory bookkeeping) takes 40 ms.
class SlowBookkeeping final : public ForwardingCache {
 public:
  StorageBytes storage() const override {
    std::this_thread::sleep_for(std::chrono::milliseconds(40));
    return inner_.storage();
  }
};

// Token times (TTFT, ITL, e2e) are the steps' times: the generator's memory bookkeeping between
// steps, whose cost differs between caches, is left out, as decode_step_s leaves it out.
TEST(Generate, TokenTimesLeaveOutTheMemoryBookkeeping) {
  Fixture f;
  SlowBookkeeping slow;
  GenerationConfig g;
  g.max_new_tokens = 5;
  const auto r = generate(f.model, slow, {{1, 2, 3}}, g);
  const std::vector<double>& t = r.sequences[0].token_times_s;
  ASSERT_EQ(t.size(), 5u);
  ASSERT_EQ(r.decode_step_s.size(), 4u);
  for (size_t k = 1; k < t.size(); ++k) {
    const double gap = t[k] - t[k - 1];
    EXPECT_GE(gap, r.decode_step_s[k - 1] - 1e-3) << k;  // a busy machine's jitter
    // Not the 40 ms storage() took (a margin of half of it for a busy machine).
    EXPECT_LT(gap, r.decode_step_s[k - 1] + 0.02) << k;
  }
}

TEST(Generate, ReservesAPagedPoolForItsPromptsAndReportsWhatItOccupied) {
  Fixture f;
  // fp16 pages of 16 tokens, 4 layers, 2 KV heads of 32. The pool starts at 64 pages and
  // would double when full.
  PagedKVCache paged(PagedFormat{}, 4, 2, 32);
  const uint64_t page = 2 * 16 * 2 * 32 * 2 * 4;  // K and V of 2 heads, every layer
  EXPECT_EQ(paged.allocated_bytes(), 64 * page);
  GenerationConfig g;
  g.max_new_tokens = 6;
  // 40 and 3 prompt tokens + 5 fed back: 45 and 8 tokens, 3 + 1 pages.
  // Settings refused before the pool is touched: it stays as it was.
  GenerationConfig bad = g;
  bad.sampling.temperature = 1;
  bad.sampling.top_p = 0;
  EXPECT_THROW(generate(f.model, paged, {std::vector<int64_t>(400, 7)}, bad), Error);
  EXPECT_EQ(paged.allocated_bytes(), 64 * page);
  auto r = generate(f.model, paged, {std::vector<int64_t>(40, 7), {1, 2, 3}}, g);
  EXPECT_EQ(r.peak_allocated_bytes, 4 * page);
  EXPECT_EQ(r.peak_storage.total(), 4 * page);  // whole pages, as allocated
  EXPECT_EQ(paged.allocated_bytes(), 4 * page);
  // A longer prompt: the idle pool is made again at its size, not doubled.
  auto longer = generate(f.model, paged, {std::vector<int64_t>(200, 5)}, g);
  EXPECT_EQ(longer.peak_allocated_bytes, 13 * page);  // 205 tokens
  // Without eviction the pages held are the pages reserved.
  EXPECT_EQ(longer.peak_storage.total(), longer.peak_allocated_bytes);
  // The CPU cache's row buffers are sized for the sequence too: they occupy what they hold.
  auto cpu = generate(f.model, f.cache, {std::vector<int64_t>(40, 7)}, g);
  EXPECT_EQ(cpu.peak_allocated_bytes, cpu.peak_storage.total());
  EXPECT_EQ(cpu.peak_storage.total(), 45u * 4 * 2 * 2 * 32 * 4);
  // Unreserved, they double: 40 rows, then 80 for the 41st token.
  const int64_t s = f.cache.add_sequence();
  auto gen = at::detail::createCPUGenerator(1);
  for (int64_t n : {40, 1})
    for (int64_t l = 0; l < 4; ++l)
      f.cache.append_and_attend(s, l, at::randn({4, n, 32}, gen), at::randn({2, n, 32}, gen),
                                at::randn({2, n, 32}, gen));
  EXPECT_EQ(f.cache.storage().total(), 41u * 4 * 2 * 2 * 32 * 4);
  EXPECT_EQ(f.cache.allocated_bytes(), 80u * 4 * 2 * 2 * 32 * 4);
}

TEST(Generate, PerSequenceEosStopAndBatchConsistency) {
  Fixture f;
  GenerationConfig g;
  g.max_new_tokens = 8;
  auto alone = generate(f.model, f.cache, {{7, 8, 9}}, g);
  auto other = generate(f.model, f.cache, {{10, 11}}, g);
  // Make the 3rd token of the first sequence an EOS id.
  const int64_t eos = alone.sequences[0].tokens[2];
  auto it = std::find(other.sequences[0].tokens.begin(), other.sequences[0].tokens.end(), eos);
  g.eos_token_ids = {eos};
  auto both = generate(f.model, f.cache, {{7, 8, 9}, {10, 11}}, g);
  const auto& first = both.sequences[0];
  const size_t stop =
      std::find(alone.sequences[0].tokens.begin(), alone.sequences[0].tokens.end(), eos) -
      alone.sequences[0].tokens.begin();
  EXPECT_EQ(first.stop_reason, "eos");
  EXPECT_EQ(first.tokens.size(), stop + 1);
  EXPECT_TRUE(
      std::equal(first.tokens.begin(), first.tokens.end(), alone.sequences[0].tokens.begin()));
  const auto& second = both.sequences[1];
  const size_t second_len = it == other.sequences[0].tokens.end()
                                ? 8
                                : static_cast<size_t>(it - other.sequences[0].tokens.begin()) + 1;
  EXPECT_EQ(second.tokens.size(), second_len);
  EXPECT_TRUE(
      std::equal(second.tokens.begin(), second.tokens.end(), other.sequences[0].tokens.begin()));
  // ignore_eos runs to the cap regardless.
  g.ignore_eos = true;
  auto fixed = generate(f.model, f.cache, {{7, 8, 9}}, g);
  EXPECT_EQ(fixed.sequences[0].tokens.size(), 8u);
  EXPECT_EQ(fixed.sequences[0].stop_reason, "length");
}

TEST(Generate, SeededSamplingIsReproducible) {
  Fixture f;
  GenerationConfig g;
  g.max_new_tokens = 10;
  g.sampling = {1.0, 0.9, 42};
  auto a = generate(f.model, f.cache, {{1, 2}, {3}}, g);
  auto b = generate(f.model, f.cache, {{1, 2}, {3}}, g);
  EXPECT_EQ(a.sequences[0].tokens, b.sequences[0].tokens);
  EXPECT_EQ(a.sequences[1].tokens, b.sequences[1].tokens);
  g.sampling.seed = 43;
  auto c = generate(f.model, f.cache, {{1, 2}, {3}}, g);
  EXPECT_NE(a.sequences[0].tokens, c.sequences[0].tokens);
}

}  // namespace
}  // namespace kvbench
