// Retention policies (StreamingLLM, SnapKV) and their composition with every codec: a budget
// covering every token is bitwise the full cache; StreamingLLM keeps exactly its sinks and
// window; SnapKV's selection against a float64 reference of its scores; decode-time eviction
// keeps storage bounded and equals attention over exactly the kept tokens; presets and
// composition errors; the tiny model generating past every budget.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>

#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "kvbench/engine/generator.h"
#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/block_quant_codec.h"
#include "kvbench/kv/fp8_codec.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/h2o_policy.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/kv/pyramidkv_policy.h"
#include "kvbench/kv/scissorhands_policy.h"
#include "kvbench/kv/snapkv_policy.h"
#include "kvbench/kv/streaming_llm_policy.h"
#include "kvbench/kv/tova_policy.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/transformer.h"
#include "kvbench/suites/workload.h"

namespace kvbench {
namespace {

using nlohmann::json;

json resolve(const json& entry) { return resolve_method(entry, "methods[0]"); }
// The config error resolving `entry` gives ("no error" when it resolves).
std::string resolve_error(const json& entry) {
  try {
    resolve(entry);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

at::Tensor rand(std::vector<int64_t> shape, uint64_t seed) {
  return at::randn(shape, at::detail::createCPUGenerator(seed), at::kFloat);
}

Transformer tiny_model() {
  const ModelPreset& preset = find_model_preset("tiny-llama");
  return Transformer::random(parse_model_config(preset.config, preset.name), 2);
}

std::unique_ptr<KVCache> cache_for(const json& method, const ModelConfig& mc,
                                   const std::string& backend = "cpu") {
  return make_kv_cache(method, mc.num_layers, mc.num_kv_heads, mc.head_dim, at::kBFloat16, backend,
                       rope_inverse_frequencies(mc));
}

std::vector<int64_t> prompt_of(int64_t tokens, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  at::Tensor ids = at::randint(3, 512, {tokens}, gen, at::kLong);
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + tokens);
}

// Greedy decoding by hand, returning every step's logits.
std::vector<at::Tensor> decode_logits(const Transformer& model, KVCache& cache,
                                      const std::vector<int64_t>& prompt, int64_t steps) {
  const int64_t seq = cache.add_sequence();
  std::vector<at::Tensor> out;
  at::Tensor logits = model.forward({{seq, prompt}}, cache);
  out.push_back(logits);
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t next = logits[0].argmax().item<int64_t>();
    logits = model.forward({{seq, {next}}}, cache);
    out.push_back(logits);
  }
  return out;
}

// Passes everything to another cache and keeps the keys layer 0 receives: a layer-0 key depends
// only on the token and its RoPE position, so equal keys for the same token mean equal positions.
class KeySpy final : public KVCache {
 public:
  explicit KeySpy(std::unique_ptr<KVCache> inner) : inner_(std::move(inner)) {}
  int64_t add_sequence() override { return inner_->add_sequence(); }
  void remove_sequence(int64_t seq) override { inner_->remove_sequence(seq); }
  int64_t length(int64_t seq) const override { return inner_->length(seq); }
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override {
    if (layer == 0) keys.push_back(k.clone());
    return inner_->append_and_attend(seq, layer, q, k, v);
  }
  std::vector<int64_t> kept_tokens(int64_t seq) const override { return inner_->kept_tokens(seq); }
  StorageBytes storage() const override { return inner_->storage(); }
  StorageBytes nominal() const override { return inner_->nominal(); }
  std::vector<at::Tensor> keys;

 private:
  std::unique_ptr<KVCache> inner_;
};

// After eviction a new token takes its logical position (tokens entered), not the number held.
TEST(Retention, NewTokensAfterEvictionUseTheirLogicalPositions) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  const std::vector<int64_t> prompt = prompt_of(40, 3);
  for (const json& method :
       {json{{"name", "streamingllm"}, {"sinks", 2}, {"window", 6}},
        json{{"name", "snapkv"}, {"budget", 36}},
        json{{"name", "h2o"}, {"heavy", 4}, {"recent", 4}}, json{{"name", "tova"}, {"budget", 12}},
        json{{"name", "scissorhands"}, {"budget", 12}, {"recent", 4}, {"history", 4}},
        json{{"name", "pyramidkv"}, {"budget", 16}}}) {
    KeySpy full(cache_for(resolve({{"name", "fp32"}}), mc)),
        evicting(cache_for(resolve(method), mc));
    // The same continuation is fed to both, so the tokens are equal whatever the outputs.
    for (KeySpy* c : {&full, &evicting}) {
      const int64_t seq = c->add_sequence();
      model.forward({{seq, prompt}}, *c);
      for (int64_t t : {7, 8, 9}) model.forward({{seq, {t}}}, *c);
    }
    ASSERT_LT(evicting.kept_tokens(0)[0], 43) << method.dump();  // it did evict
    ASSERT_EQ(full.keys.size(), evicting.keys.size());
    for (size_t i = 1; i < full.keys.size(); ++i) {
      EXPECT_TRUE(at::allclose(evicting.keys[i], full.keys[i], 0, 0)) << method.dump() << " " << i;
    }
  }
}

// Sequences of different prompts sharing one evicting CPU cache (a packed prefill, then decode
// steps over both) each keep the tokens and give the logits they would alone: a policy's scores,
// budgets and positions are per sequence. Logits within 1e-4 (a packed matmul may sum in
// another order); kept tokens exact.
TEST(Retention, SequencesSharingAnEvictingCacheAreEachAsAlone) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  const std::vector<std::vector<int64_t>> prompts = {prompt_of(30, 5), prompt_of(45, 6)};
  for (const json& method :
       {json{{"name", "streamingllm"}, {"sinks", 2}, {"window", 10}},
        json{{"name", "snapkv"}, {"budget", 20}, {"window", 4}},
        json{{"name", "pyramidkv"}, {"budget", 20}, {"window", 4}},
        json{{"name", "h2o"}, {"heavy", 6}, {"recent", 6}}, json{{"name", "tova"}, {"budget", 14}},
        json{{"name", "scissorhands"}, {"budget", 14}, {"recent", 4}, {"history", 4}}}) {
    SCOPED_TRACE(method.dump());
    // Alone: each prompt in a cache of its own, 6 greedy steps.
    std::vector<std::vector<at::Tensor>> alone;
    std::vector<std::vector<int64_t>> alone_kept;
    for (const auto& p : prompts) {
      auto cache = cache_for(resolve(method), mc);
      alone.push_back(decode_logits(model, *cache, p, 6));
      alone_kept.push_back(cache->kept_tokens(0));
    }
    // Together: one packed prefill, then steps over both, each fed its own greedy token.
    auto cache = cache_for(resolve(method), mc);
    const int64_t a = cache->add_sequence(), b = cache->add_sequence();
    at::Tensor logits = model.forward({{a, prompts[0]}, {b, prompts[1]}}, *cache);
    for (int64_t step = 0; step <= 6; ++step) {
      for (int64_t s = 0; s < 2; ++s) {
        const at::Tensor& want = alone[size_t(s)][size_t(step)][0];
        EXPECT_TRUE(at::allclose(logits[s], want, 0, 1e-4))
            << "sequence " << s << " step " << step << ": "
            << (logits[s] - want).abs().max().item<float>();
      }
      if (step == 6) break;
      logits = model.forward(
          {{a, {logits[0].argmax().item<int64_t>()}}, {b, {logits[1].argmax().item<int64_t>()}}},
          *cache);
    }
    ASSERT_LT(alone_kept[1][0], 51);  // it evicted
    EXPECT_EQ(cache->kept_tokens(a), alone_kept[0]);
    EXPECT_EQ(cache->kept_tokens(b), alone_kept[1]);
  }
}

// Budget >= length: every policy, with several codecs, is bitwise the codec's full cache.
TEST(Retention, BudgetCoveringEveryTokenIsTheFullCache) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  const std::vector<int64_t> prompt = prompt_of(40, 1);
  const std::vector<json> policies = {
      {{"name", "streamingllm"}, {"sinks", 4}, {"window", 60}},  // 64 >= 40 + 20
      {{"name", "streamingllm"}, {"sinks", 4}, {"window", 36}, {"evict", "after_prefill"}},
      {{"name", "stream-512"}},
      {{"name", "snapkv"}, {"budget", 40}},  // the prompt exactly
      {{"name", "snapkv-2048"}},
      {{"name", "h2o"}, {"heavy", 30}, {"recent", 30}},
      {{"name", "h2o-512"}, {"normalize", true}},
      {{"name", "tova"}, {"budget", 60}},
      {{"name", "quest"}, {"budget", 64}, {"page_size", 8}, {"dense_layers", 0}},
      {{"name", "streamingllm"}, {"sinks", 4}, {"window", 60}, {"positions", "rerotated"}},
      {{"name", "pyramidkv"}, {"budget", 40}},  // the prompt exactly
      {{"name", "pyramidkv-2048"}},
      {{"name", "scissorhands"}, {"budget", 60}, {"recent", 8}, {"history", 4}}};
  for (const char* codec : {"full", "int8", "int4", "fp8", "kivi-2", "gear-4"}) {
    for (const char* backend : {"cpu", "reference"}) {
      auto full = cache_for(resolve({{"name", codec}}), mc, backend);
      const std::vector<at::Tensor> want = decode_logits(model, *full, prompt, 20);
      for (json p : policies) {
        p["codec"] = codec;
        const bool per_token = make_codec(resolve({{"name", codec}}), at::kHalf)->can_drop_tokens();
        const std::string name = p["name"];
        if (!per_token && name == "quest") continue;  // needs per-token codes
        if (!per_token && name.rfind("snapkv", 0) != 0 && name.rfind("pyramidkv", 0) != 0) {
          p["evict"] = "after_prefill";
        }
        auto cache = cache_for(resolve(p), mc, backend);
        const std::vector<at::Tensor> got = decode_logits(model, *cache, prompt, 20);
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_TRUE(at::equal(got[i], want[i])) << p.dump() << " " << backend << " step " << i;
        }
        // Quest adds its page bounds as metadata; the tokens stored are the same.
        EXPECT_EQ(cache->storage().payload, full->storage().payload) << p.dump();
        if (p["name"] != "quest") {
          EXPECT_EQ(cache->storage().total(), full->storage().total()) << p.dump();
        }
        EXPECT_EQ(cache->kept_tokens(0), std::vector<int64_t>(4, 60)) << p.dump();
      }
    }
  }
}

// A layer holding exactly its budget is not over it; one token more is. (Selecting `budget`
// of `budget` tokens keeps them all, so the full-cache test above cannot tell a > from a >=.)
TEST(Retention, OverBudgetStartsOneTokenPastTheBudget) {
  for (const json& entry : std::vector<json>{{{"name", "stream-512"}},
                                             {{"name", "snapkv-1024"}},
                                             {{"name", "pyramidkv-2048"}},
                                             {{"name", "h2o-512"}},
                                             {{"name", "tova"}, {"budget", 60}},
                                             {{"name", "scissorhands-512"}}}) {
    const auto policy = make_policy(resolve(entry));
    RetentionInput in;
    in.num_layers = 4, in.layer = 1, in.length = in.prompt = 5000;
    const int64_t budget = policy->budget(in);
    ASSERT_LT(budget, in.length) << entry.dump();
    in.positions = at::arange(budget, at::kLong).expand({2, budget});
    EXPECT_FALSE(policy->over_budget(in)) << entry.dump();
    in.positions = at::arange(budget + 1, at::kLong).expand({2, budget + 1});
    EXPECT_TRUE(policy->over_budget(in)) << entry.dump();
  }
}

// A one-layer cache over random q/k/v: GQA 4:2, head_dim 16.
struct Layer1 {
  static constexpr int64_t kHeads = 4, kKv = 2, kDim = 16;
  const double scale = 0.25;
};

// The selection over host positions (a loop, no tensor operators) and over others (tensor
// operators) agree on random ascending positions per head: sinks and window overlapping or not,
// held sets with gaps (after earlier selections) and without.
TEST(StreamingLlm, HostSelectionMatchesTheTensorOne) {
  auto gen = at::detail::createCPUGenerator(11);
  for (const auto& [sinks, window] : {std::pair<int64_t, int64_t>{4, 16}, {0, 8}, {30, 40}}) {
    const StreamingLlmPolicy policy(sinks, window, EvictionTiming::kDecode);
    for (int trial = 0; trial < 20; ++trial) {
      const int64_t length = 40 + trial * 7, heads = 3;
      // Every head holds the same positions, a random subset (ascending) of [0, length).
      const at::Tensor keep = at::rand({length}, gen).lt(0.7);
      keep[length - 1] = true;
      const at::Tensor held = at::nonzero(keep).squeeze(1);
      RetentionInput in;
      in.length = length;
      in.positions = held.expand({heads, held.size(0)}).contiguous();
      const at::Tensor fast = policy.select(in);
      in.positions = in.positions.t().contiguous().t();  // not contiguous: the tensor path
      ASSERT_FALSE(in.positions.is_contiguous());
      const at::Tensor slow = policy.select(in);
      ASSERT_TRUE(at::equal(fast, slow))
          << "sinks " << sinks << " window " << window << " length " << length;
    }
  }
}

// The newest tokens counted on the host copy (a loop) and on the positions themselves (tensor
// operators) agree on random held sets whose heads hold different positions; heads with
// different numbers of tokens past `first` are refused by name.
TEST(Retention, NewestIndicesOnTheHostMatchTheTensorOnes) {
  auto gen = at::detail::createCPUGenerator(13);
  for (int trial = 0; trial < 30; ++trial) {
    const int64_t heads = 3, length = 30 + trial, first = length - 1 - trial % 9, held = 12;
    // Each head: `held` ascending positions, the newest length - first of them shared.
    std::vector<at::Tensor> rows;
    for (int64_t h = 0; h < heads; ++h) {
      const at::Tensor older =
          std::get<0>(at::randperm(first, gen).narrow(0, 0, held - (length - first)).sort());
      rows.push_back(at::cat({older, at::arange(first, length, at::kLong)}));
    }
    RetentionInput in;
    in.length = length;
    in.positions = at::stack(rows);
    const at::Tensor slow = newest_indices(in, first);
    in.host_positions = in.positions;
    ASSERT_TRUE(at::equal(newest_indices(in, first), slow)) << "trial " << trial;
    ASSERT_EQ(slow.size(1), length - first);
  }
  RetentionInput uneven;
  uneven.positions = at::tensor({0, 5, 6, 1, 2, 6}, at::kLong).view({2, 3});
  uneven.host_positions = uneven.positions;
  EXPECT_THROW(newest_indices(uneven, 5), Error);
}

// A batch's selection (one set of operators for the over-budget sequences of a step) is each
// input's own select(): H2O with and without normalization, ScissorHands and TOVA, on random
// positions (heads and inputs holding different older tokens), scores with ties, inputs of
// different lengths; a batch of another shape falls back to select() per input.
TEST(Retention, BatchedSelectionsAreEachInputsOwn) {
  auto gen = at::detail::createCPUGenerator(14);
  const int64_t heads = 3, recent = 8;
  auto input = [&](int64_t length, int64_t held) {
    RetentionInput in;
    in.length = length;
    std::vector<at::Tensor> rows;
    for (int64_t h = 0; h < heads; ++h) {
      const at::Tensor older =
          std::get<0>(at::randperm(length - recent, gen).narrow(0, 0, held - recent).sort());
      rows.push_back(at::cat({older, at::arange(length - recent, length, at::kLong)}));
    }
    in.positions = at::stack(rows);
    in.host_positions = in.positions;
    // Scores in tenths: ties among them.
    in.accumulated = at::rand({heads, held}, gen).mul(10).round().div(10);
    in.current = at::rand({heads, held}, gen).mul(10).round().div(10);
    in.low_counts = at::randint(0, 4, {heads, held}, gen).to(at::kFloat);
    return in;
  };
  {  // as many held tokens, one recent token fewer in one input: not one batch
    std::vector<RetentionInput> inputs = {input(60, 40), input(70, 40)};
    inputs[1].positions = inputs[1].positions.clone();
    inputs[1].positions.select(1, 40 - recent).sub_(40);  // was length - recent: now older
    inputs[1].positions = std::get<0>(inputs[1].positions.sort(1));
    inputs[1].host_positions = inputs[1].positions;
    EXPECT_FALSE(
        newest_batch({&inputs[0], &inputs[1]}, recent, &RetentionInput::accumulated).has_value());
    // int32 and non-contiguous host positions batch as int64 ones do
    inputs = {input(60, 40), input(70, 40)};
    inputs[0].host_positions = inputs[0].positions.to(at::kInt);
    inputs[1].host_positions = inputs[1].positions.t().contiguous().t();
    const auto b = newest_batch({&inputs[0], &inputs[1]}, recent, &RetentionInput::accumulated);
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->newest, recent);
    EXPECT_TRUE(at::equal(b->positions, at::stack({inputs[0].positions, inputs[1].positions})));
  }
  const H2oPolicy h2o(10, recent, false, EvictionTiming::kDecode);
  const H2oPolicy normalized(10, recent, true, EvictionTiming::kDecode);
  const ScissorHandsPolicy scissors(20, recent, 4, EvictionTiming::kDecode);
  const TovaPolicy tova(20, EvictionTiming::kDecode);
  for (const RetentionPolicy* policy :
       std::vector<const RetentionPolicy*>{&h2o, &normalized, &scissors, &tova})
    for (const bool rectangular : {true, false}) {
      std::vector<RetentionInput> inputs;
      for (int e = 0; e < 5; ++e)
        inputs.push_back(input(60 + 9 * e, rectangular || e != 2 ? 40 : 33));
      std::vector<const RetentionInput*> batch;
      for (const RetentionInput& in : inputs) batch.push_back(&in);
      // The batch path is taken exactly for the rectangular batch.
      ASSERT_EQ(newest_batch(batch, recent, &RetentionInput::accumulated).has_value(), rectangular);
      const std::vector<at::Tensor> got = policy->select_batch(batch);
      ASSERT_EQ(got.size(), inputs.size());
      for (size_t e = 0; e < inputs.size(); ++e)
        ASSERT_TRUE(at::equal(got[e], policy->select(inputs[e])))
            << policy->name() << " input " << e << (rectangular ? "" : " (mixed shapes)");
    }
}

// A decode step's attention records updated together (add_scores_batch, fill_batch,
// keep_batch: one set of operators for the records of one shape) are each record's own, bitwise
// (states and policy inputs): five sequences, two of which hold other token counts (one record
// of its own shape, one still growing), beside a sequence that records nothing (null); and four
// that always hold as many (the whole batch as one group); over steps that select (random kept
// rows) and steps that do not, scores padded with -inf past each record's tokens, as the decode
// kernel writes them.
// H2O's accumulated scores against a float64 softmax per query: a block of 600 queries (three
// chunks) after 70 held keys in shuffled order (what eviction leaves), GQA group 3. Each chunk
// reads only the keys it can see; a key it skipped that a query sees would be missing here.
TEST(Retention, SummedAttentionMatchesAFloat64Reference) {
  auto gen = at::detail::createCPUGenerator(21);
  const int64_t kv_heads = 2, group = 3, heads = kv_heads * group, dim = 16, n = 600, before = 70,
                start = 1000, held = before + n;
  const at::Tensor q = at::randn({heads, n, dim}, gen, at::kFloat);
  const at::Tensor keys = at::randn({kv_heads, held, dim}, gen, at::kFloat);
  // Earlier positions: distinct, below start, a different shuffle per head.
  at::Tensor pos = at::empty({kv_heads, held}, at::kLong);
  for (int64_t h = 0; h < kv_heads; ++h) {
    pos[h].narrow(0, 0, before).copy_(at::randperm(start, gen, at::kLong).narrow(0, 0, before));
    pos[h].narrow(0, before, n).copy_(at::arange(start, start + n, at::kLong));
  }
  const at::Tensor got = summed_attention(q, keys, pos, start);
  const at::Tensor qd = q.to(at::kDouble), kd = keys.to(at::kDouble);
  at::Tensor want = at::zeros({kv_heads, held}, at::kDouble);
  for (int64_t hq = 0; hq < heads; ++hq) {
    const int64_t h = hq / group;
    at::Tensor s = at::matmul(qd[hq], kd[h].t()).div_(std::sqrt(double(dim)));  // [n, held]
    const at::Tensor seen = pos[h].unsqueeze(0).le(at::arange(start, start + n).unsqueeze(1));
    s.masked_fill_(seen.logical_not(), -INFINITY);
    want[h].add_(at::softmax(s, -1).sum(0).div_(double(group)));
  }
  EXPECT_TRUE(at::allclose(got.to(at::kDouble), want, 1e-5, 1e-4))
      << "max difference " << (got.to(at::kDouble) - want).abs().max().item<double>();
}

TEST(Retention, BatchedAttentionRecordsAreEachRecordsOwn) {
  auto gen = at::detail::createCPUGenerator(15);
  const int64_t kv_heads = 2, group = 3, heads = kv_heads * group, dim = 16, budget = 24;
  const H2oPolicy h2o(12, 8, false, EvictionTiming::kDecode);
  const TovaPolicy tova(budget, EvictionTiming::kDecode);
  const ScissorHandsPolicy scissors(budget, 8, 5, EvictionTiming::kDecode);
  auto same = [](const at::Tensor& a, const at::Tensor& b) {
    return a.defined() == b.defined() && (!a.defined() || at::equal(a, b));
  };
  for (const RetentionPolicy* policy : std::vector<const RetentionPolicy*>{&h2o, &tova, &scissors})
    for (const std::vector<int64_t>& prompts :
         {std::vector<int64_t>{30, 30, 41, 0, 30, 9}, std::vector<int64_t>{30, 30, 30, 30}}) {
      SCOPED_TRACE(policy->name() + (prompts.size() == 4 ? " (one group)" : " (mixed)"));
      const size_t B = prompts.size();  // a prompt of 0: a sequence that records nothing
      std::vector<AttentionRecord> together(B), alone(B);
      std::vector<int64_t> held = prompts, length = prompts;
      for (size_t i = 0; i < B; ++i) {  // the prefills, as a cache records them
        if (prompts[i] == 0) continue;
        const at::Tensor q = at::randn({heads, prompts[i], dim}, gen),
                         k = at::randn({kv_heads, prompts[i], dim}, gen);
        const at::Tensor pos = at::arange(prompts[i], at::kLong).expand({kv_heads, -1});
        at::Tensor unused;
        together[i].add_block(*policy, q, k, pos, 0, unused);
        alone[i].add_block(*policy, q, k, pos, 0, unused);
      }
      for (int step = 0; step < 12; ++step) {
        for (size_t i = 0; i < B; ++i) ++held[i];
        const int64_t most = *std::max_element(held.begin(), held.end());
        at::Tensor logits = at::randn({int64_t(B), heads, most}, gen);
        for (size_t i = 0; i < B; ++i)
          logits[int64_t(i)].narrow(1, held[i], most - held[i]).fill_(-INFINITY);
        std::vector<AttentionRecord*> records;
        std::vector<const AttentionRecord*> readers;
        std::vector<RetentionInput> in(B), in_alone(B);
        std::vector<RetentionInput*> inputs;
        std::vector<at::Tensor> newest(B), newest_alone(B), newest_read;
        for (size_t i = 0; i < B; ++i) {
          records.push_back(prompts[i] > 0 ? &together[i] : nullptr);
          if (prompts[i] == 0) continue;
          readers.push_back(&together[i]), inputs.push_back(&in[i]);
          alone[i].add_scores(*policy, logits[int64_t(i)].narrow(1, 0, held[i]), kv_heads,
                              length[i], newest_alone[i]);
          alone[i].fill(*policy, newest_alone[i], in_alone[i]);
        }
        AttentionRecord::add_scores_batch(*policy, records, logits, held, kv_heads, length, newest);
        for (size_t i = 0; i < B; ++i)
          if (prompts[i] > 0) newest_read.push_back(newest[i]);
        AttentionRecord::fill_batch(*policy, readers, newest_read, inputs);
        for (size_t i = 0; i < B; ++i) {
          if (prompts[i] == 0) {
            ASSERT_FALSE(newest[i].defined()) << "a null record got scores";
            continue;
          }
          ASSERT_TRUE(same(together[i].summed(), alone[i].summed())) << i << " at " << step;
          ASSERT_TRUE(same(together[i].low_history(), alone[i].low_history()))
              << i << " at " << step;
          for (const auto member : {&RetentionInput::accumulated, &RetentionInput::current,
                                    &RetentionInput::low_counts})
            ASSERT_TRUE(same(in[i].*member, in_alone[i].*member)) << i << " at " << step;
        }
        // Every other step, those over the budget keep `budget` random rows (ascending per
        // head).
        std::vector<AttentionRecord*> kept;
        std::vector<at::Tensor> wheres;
        for (size_t i = 0; i < B; ++i) {
          ++length[i];
          if (prompts[i] == 0 || step % 2 == 1 || held[i] <= budget) continue;
          std::vector<at::Tensor> rows;
          for (int64_t h = 0; h < kv_heads; ++h)
            rows.push_back(std::get<0>(at::randperm(held[i], gen).narrow(0, 0, budget).sort()));
          kept.push_back(&together[i]), wheres.push_back(at::stack(rows));
          alone[i].keep(wheres.back());
          held[i] = budget;
        }
        AttentionRecord::keep_batch(kept, wheres);
      }
    }
}

// The steady state applied where the states are (drop_lowest_batch, the torch formulation of
// what the paged cache's kernel path runs at budget + 1 held tokens, kernels/steady_evict.h,
// whose host reference steady_evict_test.cpp checks against it) drops the token select() drops, for
// H2O's sums, TOVA's head-averaged newest-query attention and ScissorHands' low-attention counts,
// in every head of every record, with ties to the later token (scores rounded to a few values, so
// most heads tie), and each record keeps the other rows of its state in order. H2O's normalized
// sums and choices made once have no such rule.
TEST(RetentionSteadyState, DroppingTheLowestIsWhatSelectKeeps) {
  auto gen = at::detail::createCPUGenerator(41);
  const int64_t kv_heads = 3, group = 2, length = 50, history = 3;
  const std::vector<std::shared_ptr<RetentionPolicy>> policies = {
      std::make_shared<H2oPolicy>(6, 4, false, EvictionTiming::kDecode),
      std::make_shared<TovaPolicy>(10, EvictionTiming::kDecode),
      std::make_shared<ScissorHandsPolicy>(10, 4, history, EvictionTiming::kDecode),
      // H2O's 6 + 4 as fractions of a 40-token prompt.
      std::make_shared<H2oPolicy>(50, 50, false, EvictionTiming::kDecode, H2oRatios{0.15, 0.1})};
  const int64_t prompt = 40;
  EXPECT_EQ(policies[0]->drops_lowest(prompt), 4);
  EXPECT_EQ(policies[1]->drops_lowest(prompt), 0);
  EXPECT_EQ(policies[2]->drops_lowest(prompt), 4);
  EXPECT_EQ(policies[3]->drops_lowest(prompt), 4);
  EXPECT_EQ(policies[3]->drops_lowest(100), 10);  // the window is the prompt's
  EXPECT_FALSE(policies[3]->drops_lowest(0));     // no prompt, no window
  EXPECT_FALSE(H2oPolicy(6, 4, true, EvictionTiming::kDecode).drops_lowest(prompt));
  EXPECT_FALSE(H2oPolicy(6, 4, false, EvictionTiming::kAfterPrefill).drops_lowest(prompt));
  EXPECT_FALSE(TovaPolicy(10, EvictionTiming::kAfterPrefill).drops_lowest(prompt));
  EXPECT_FALSE(
      ScissorHandsPolicy(10, 4, history, EvictionTiming::kAfterPrefill).drops_lowest(prompt));
  for (const std::shared_ptr<RetentionPolicy>& policy : policies) {
    const RetentionPolicy& p = *policy;
    const int64_t recent = *p.drops_lowest(prompt);
    RetentionInput sizing;
    sizing.prompt = prompt;
    const int64_t held = p.budget(sizing) + 1, candidates = held - recent;
    // ScissorHands counts over its history: that many queries, the last at length - 1.
    const int64_t queries = p.needs() == RetentionNeeds::kLowAttentionCounts ? history : 1;
    for (const char* mode : {"distinct", "tied", "nan"}) {
      const bool ties = std::string(mode) == "tied", nans = std::string(mode) == "nan";
      // ScissorHands' counts of flags are never NaN (a NaN probability is not below anything).
      if (nans && p.needs() == RetentionNeeds::kLowAttentionCounts) continue;
      SCOPED_TRACE(p.name() + ", " + mode + " scores");
      std::vector<AttentionRecord> records(5);
      std::vector<AttentionRecord*> pointers;
      std::vector<at::Tensor> newest(records.size());
      std::vector<RetentionInput> inputs(records.size());
      std::vector<at::Tensor> sums, rings;
      for (size_t i = 0; i < records.size(); ++i) {
        for (int64_t t = 0; t < queries; ++t) {
          // Tied: every query of a group scores alike, in a few values, so its probabilities
          // (and the group's mean) are equal wherever its scores are; for TOVA, which averages
          // over heads, every head alike.
          const int64_t alike = p.same_tokens_every_head() ? kv_heads * group : group;
          const at::Tensor scores = ties ? at::randint(0, 3, {kv_heads * group / alike, held}, gen)
                                               .to(at::kFloat)
                                               .repeat_interleave(alike, 0)
                                         : at::randn({kv_heads * group, held}, gen);
          records[i].add_scores(p, scores, kv_heads, length - queries + t, newest[i]);
        }
        // NaN scores: record 1 a few among numbers, record 2 none but NaNs in head 1 (TOVA's
        // heads share their tokens' scores: every head).
        const at::Tensor& state = records[i].summed().defined() ? records[i].summed() : newest[i];
        if (nans && i == 1) state[0].index_fill_(0, at::tensor({0, 2, 3}, at::kLong), NAN);
        if (nans && i == 2) state[1].fill_(NAN);
        records[i].fill(p, newest[i], inputs[i]);
        sums.push_back(records[i].summed().defined() ? records[i].summed().clone() : at::Tensor());
        rings.push_back(records[i].low_history().defined() ? records[i].low_history().clone()
                                                           : at::Tensor());
        ASSERT_TRUE(records[i].covers(p, newest[i], held));
        EXPECT_FALSE(records[i].covers(p, newest[i], held + 1));
        pointers.push_back(&records[i]);
      }
      const at::Tensor dropped =
          AttentionRecord::drop_lowest_batch(p, pointers, newest, candidates);
      ASSERT_EQ(dropped.sizes(), (std::vector<int64_t>{5, kv_heads}));
      int64_t tied = 0;
      for (size_t i = 0; i < records.size(); ++i) {
        RetentionInput& in = inputs[i];
        in.length = length;
        in.prompt = prompt;
        // Held: scattered positions, the tail's first (non-recent) token, the window.
        in.positions = at::cat({at::arange(0, 2 * (candidates - 1), 2, at::kLong),
                                at::arange(length - recent - 1, length, at::kLong)})
                           .expand({kv_heads, held})
                           .contiguous();
        const at::Tensor kept = p.select(in);  // [kv_heads, held - 1] ascending indices
        const at::Tensor state = in.accumulated.defined() ? in.accumulated
                                 : in.current.defined()   ? in.current
                                                          : in.low_counts;
        const at::Tensor scores = p.steady_scores(state.unsqueeze(0))[0];
        for (int64_t h = 0; h < kv_heads; ++h) {
          const int64_t d = dropped[int64_t(i)][h].item<int64_t>();
          const at::Tensor expect =
              at::cat({at::arange(d, at::kLong), at::arange(d + 1, held, at::kLong)});
          EXPECT_TRUE(at::equal(kept[h], expect)) << "record " << i << " head " << h;
          const at::Tensor first = scores[h].narrow(0, 0, candidates);
          tied += first.eq(first.min()).sum().item<int64_t>() > 1;
          // A NaN ranks above every finite score: of none but NaNs, the last candidate goes.
          if (nans && first.isnan().all().item<bool>())
            EXPECT_EQ(d, candidates - 1) << "record " << i << " head " << h;
          else if (nans)
            EXPECT_FALSE(std::isnan(first[d].item<float>())) << "record " << i << " head " << h;
        }
        if (nans && i == 1) EXPECT_TRUE(scores.isnan().any().item<bool>());
        if (sums[i].defined())
          EXPECT_TRUE(at::allclose(records[i].summed(), sums[i].gather(1, kept), 0, 0, true));
        if (rings[i].defined()) {
          const at::Tensor rows =
              kept.view({kv_heads, held - 1, 1, 1}).expand({-1, -1, group, history});
          EXPECT_TRUE(at::equal(records[i].low_history(), rings[i].gather(1, rows)));
        }
      }
      if (ties) EXPECT_GT(tied, 5) << "the tied case has few ties";
    }
  }
}

// The span a cache may apply without asking select() covers exactly the held tokens select()
// keeps, on random held sets (with gaps, sinks and window overlapping or not).
TEST(StreamingLlm, SpanCoversWhatTheSelectionKeeps) {
  auto gen = at::detail::createCPUGenerator(12);
  for (const auto& [sinks, window] : {std::pair<int64_t, int64_t>{4, 16}, {0, 8}, {30, 10}}) {
    const StreamingLlmPolicy policy(sinks, window, EvictionTiming::kDecode);
    for (int trial = 0; trial < 20; ++trial) {
      const int64_t length = 40 + trial * 7;
      const at::Tensor keep = at::rand({length}, gen).lt(0.7);
      keep[length - 1] = true;
      RetentionInput in;
      in.length = length;
      in.positions = at::nonzero(keep).squeeze(1).expand({2, -1}).contiguous();
      const std::optional<RetentionSpan> span = policy.span(in);
      ASSERT_TRUE(span.has_value());
      const at::Tensor pos = in.positions;
      const at::Tensor covered = pos.lt(span->prefix).logical_or(pos.ge(span->newest));
      const at::Tensor selected = pos.gather(1, policy.select(in));
      ASSERT_TRUE(at::equal(selected, pos.masked_select(covered).view({2, -1})))
          << "sinks " << sinks << " window " << window << " length " << length;
    }
  }
  // A policy without a span: the cache asks select().
  EXPECT_FALSE(FullRetention().span(RetentionInput{}).has_value());
}

TEST(StreamingLlm, KeepsExactlyTheSinksAndTheWindowAfterPrefill) {
  auto policy = std::make_shared<StreamingLlmPolicy>(4, 16, EvictionTiming::kAfterPrefill);
  CompressedKVCache cache(std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kCpu, 1,
                          Layer1::kKv, Layer1::kDim, policy);
  const int64_t seq = cache.add_sequence(), T = 50;
  at::Tensor q = rand({4, T, 16}, 1), k = rand({2, T + 1, 16}, 2), v = rand({2, T + 1, 16}, 3);
  at::Tensor out = cache.append_and_attend(seq, 0, q, k.narrow(1, 0, T), v.narrow(1, 0, T));
  // The prefill itself attends every prompt token.
  EXPECT_TRUE(at::allclose(
      out, block_attention_reference(q, k.narrow(1, 0, T), v.narrow(1, 0, T), 0.25), 1e-6, 1e-6));
  EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{20});
  std::vector<int64_t> want;
  for (int64_t p = 0; p < 4; ++p) want.push_back(p);
  for (int64_t p = T - 16; p < T; ++p) want.push_back(p);
  at::Tensor kept = at::tensor(want, at::kLong);
  EXPECT_TRUE(at::equal(cache.kept_positions(seq, 0), kept.expand({2, 20})));
  EXPECT_EQ(cache.storage().total(), 2u * 20 * 2 * 16 * 4);
  EXPECT_EQ(cache.storage().total(), cache.nominal().total());
  // A decode token (position 50) attends exactly the kept tokens plus itself.
  at::Tensor q1 = rand({4, 1, 16}, 4);
  at::Tensor got = cache.append_and_attend(seq, 0, q1, k.narrow(1, T, 1), v.narrow(1, T, 1));
  at::Tensor idx = at::cat({kept, at::tensor({T}, at::kLong)});
  at::Tensor ref =
      block_attention_reference(q1, k.index_select(1, idx), v.index_select(1, idx), 0.25);
  EXPECT_LT(((got - ref).norm() / ref.norm()).item<double>(), 1e-6);
  EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{21});  // after_prefill: grows again
}

// Decode-time eviction: storage stays at S + W tokens, every step equals attention over
// exactly [0, S) U [T - W, T) of the codec's stored tokens, for each per-token codec.
TEST(StreamingLlm, DecodeEvictionIsBoundedAndEqualsReattendingTheKeptTokens) {
  const std::vector<std::shared_ptr<const Codec>> codecs = {
      std::make_shared<IdentityCodec>(at::kFloat),
      std::make_shared<IdentityCodec>(at::kHalf),
      std::make_shared<BlockQuantCodec>(8, true, 16),
      std::make_shared<BlockQuantCodec>(4, false, 16),
      std::make_shared<BlockQuantCodec>(2, false, 16),
      std::make_shared<Fp8Codec>("amax", 1.0, 448.0, 448.0, "head")};
  const int64_t S = 4, W = 12, prefill = 30, steps = 100, total = prefill + steps;
  at::Tensor q = rand({4, total, 16}, 5), k = rand({2, total, 16}, 6), v = rand({2, total, 16}, 7);
  for (const auto& codec : codecs) {
    for (auto backend : {AttentionBackend::kCpu, AttentionBackend::kReference}) {
      auto policy = std::make_shared<StreamingLlmPolicy>(S, W, EvictionTiming::kDecode);
      CompressedKVCache cache(codec, backend, 1, 2, 16, policy);
      // The oracle: the same codec keeping every token, read back at the kept positions.
      auto all_k = codec->make_key_store(2, 16), all_v = codec->make_value_store(2, 16);
      const int64_t seq = cache.add_sequence();
      cache.append_and_attend(seq, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                              v.narrow(1, 0, prefill));
      all_k->append(k.narrow(1, 0, prefill));
      all_v->append(v.narrow(1, 0, prefill));
      const StorageBytes bound = codec->nominal_bytes(S + W, 2, 16);
      for (int64_t t = prefill; t < total; ++t) {
        at::Tensor qt = q.narrow(1, t, 1);
        at::Tensor got = cache.append_and_attend(seq, 0, qt, k.narrow(1, t, 1), v.narrow(1, t, 1));
        all_k->append(k.narrow(1, t, 1));
        all_v->append(v.narrow(1, t, 1));
        std::vector<int64_t> want;
        for (int64_t p = 0; p <= t; ++p) {
          if (p < S || p > t - W) want.push_back(p);
        }
        at::Tensor idx = at::tensor(want, at::kLong);
        ASSERT_TRUE(at::equal(cache.kept_positions(seq, 0), idx.expand({2, S + W})))
            << codec->name() << " step " << t;
        ASSERT_EQ(cache.storage().total(), bound.total()) << codec->name();
        ASSERT_EQ(cache.nominal().total(), bound.total()) << codec->name();
        at::Tensor ref = block_attention_reference(qt, all_k->dequantize().index_select(1, idx),
                                                   all_v->dequantize().index_select(1, idx), 0.25);
        ASSERT_LT(((got - ref).norm() / ref.norm()).item<double>(), codec->fused_tolerance())
            << codec->name() << " step " << t;
      }
    }
  }
}

TEST(RowMoves, KeepExactlyTheKeptRowsAndMoveNoMoreThanTheDropped) {
  auto gen = at::detail::createCPUGenerator(11);
  for (int64_t rows : {1, 2, 7, 64, 300}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, rows / 2, rows - 1, rows}) {
      if (n < 0) continue;
      // Each head keeps a different random subset, in random order.
      at::Tensor kept = at::stack({at::randperm(rows, gen, at::kLong).narrow(0, 0, n),
                                   at::randperm(rows, gen, at::kLong).narrow(0, 0, n),
                                   at::randperm(rows, gen, at::kLong).narrow(0, 0, n)});
      const RowMoves m = row_moves(kept, rows);
      ASSERT_EQ(m.size, n);
      // Rows labelled by their index: afterwards the first n rows hold exactly the kept labels.
      at::Tensor labels = at::arange(rows, at::kLong).repeat({3, 1}).contiguous();
      at::Tensor after = apply_row_moves(labels, m);
      for (int64_t h = 0; h < 3; ++h) {
        std::vector<int64_t> got(after[h].data_ptr<int64_t>(), after[h].data_ptr<int64_t>() + n);
        std::vector<int64_t> want(kept[h].data_ptr<int64_t>(), kept[h].data_ptr<int64_t>() + n);
        std::sort(got.begin(), got.end());
        std::sort(want.begin(), want.end());
        ASSERT_EQ(got, want) << rows << " rows, keep " << n << ", head " << h;
        // A kept row below n never moves, and at most rows - n rows move.
        const int64_t moved = m.offsets[h + 1] - m.offsets[h];
        EXPECT_LE(moved, std::min(n, rows - n));
        for (int64_t i = m.offsets[h]; i < m.offsets[h + 1]; ++i) EXPECT_GE(m.from[i], n);
      }
    }
  }
  // One token dropped per head (a decode step's eviction) moves at most one row per head.
  const RowMoves one = row_moves(at::tensor({0, 1, 3, 4}, at::kLong).view({1, 4}), 5);
  EXPECT_EQ(one.moved(), 1);
  EXPECT_THROW(row_moves(at::tensor({0, 0}, at::kLong).view({1, 2}), 5), Error);
  EXPECT_THROW(row_moves(at::tensor({0, 5}, at::kLong).view({1, 2}), 5), Error);
}

// SnapKV's scores in float64 loops: sum over the window queries of the causal softmax rows,
// pooled along tokens (max ignores the padding, avg divides by the kernel), averaged over
// each KV head's query group. q: [H, T, d], k: [Hkv, T, d].
std::vector<std::vector<double>> snapkv_reference(const at::Tensor& q, const at::Tensor& k,
                                                  int64_t w, int64_t kernel, bool max_pool) {
  const int64_t H = q.size(0), T = q.size(1), d = q.size(2), Hkv = k.size(0), P = T - w;
  const int64_t group = H / Hkv;
  at::Tensor qd = q.to(at::kDouble).contiguous(), kd = k.to(at::kDouble).contiguous();
  auto Q = qd.accessor<double, 3>();
  auto K = kd.accessor<double, 3>();
  std::vector<std::vector<double>> out(Hkv, std::vector<double>(P, 0.0));
  for (int64_t h = 0; h < H; ++h) {
    std::vector<double> votes(P, 0.0);
    for (int64_t i = 0; i < w; ++i) {
      const int64_t qp = T - w + i;
      std::vector<double> s(qp + 1);
      double m = -INFINITY, z = 0;
      for (int64_t j = 0; j <= qp; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += Q[h][qp][c] * K[h / group][j][c];
        s[j] = dot / std::sqrt(static_cast<double>(d));
        m = std::max(m, s[j]);
      }
      for (int64_t j = 0; j <= qp; ++j) z += std::exp(s[j] - m);
      for (int64_t j = 0; j < P; ++j) votes[j] += std::exp(s[j] - m) / z;
    }
    for (int64_t j = 0; j < P; ++j) {
      double acc = max_pool ? -INFINITY : 0.0;
      for (int64_t o = -kernel / 2; o <= kernel / 2; ++o) {
        if (j + o < 0 || j + o >= P) continue;
        acc = max_pool ? std::max(acc, votes[j + o]) : acc + votes[j + o];
      }
      out[h / group][j] += (max_pool ? acc : acc / kernel) / group;
    }
  }
  return out;
}

TEST(SnapKv, SelectionMatchesAFloat64ReferenceOfTheScores) {
  const int64_t T = 120, w = 8, budget = 40, kernel = 7;
  for (const char* pooling : {"max", "avg"}) {
    for (uint64_t seed : {11, 12, 13}) {
      at::Tensor q = rand({4, T, 16}, seed) * 2, k = rand({2, T, 16}, seed + 100);
      at::Tensor v = rand({2, T, 16}, seed + 200);
      auto policy = std::make_shared<SnapKvPolicy>(budget, w, kernel, pooling);
      CompressedKVCache cache(std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kCpu,
                              1, 2, 16, policy);
      const int64_t seq = cache.add_sequence();
      cache.append_and_attend(seq, 0, q, k, v);
      ASSERT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{budget});
      const auto ref = snapkv_reference(q, k, w, kernel, std::string(pooling) == "max");
      at::Tensor kept = cache.kept_positions(seq, 0);
      for (int64_t h = 0; h < 2; ++h) {
        std::set<int64_t> chosen;
        for (int64_t i = 0; i < budget; ++i) chosen.insert(kept[h][i].item<int64_t>());
        ASSERT_EQ(static_cast<int64_t>(chosen.size()), budget);
        for (int64_t p = T - w; p < T; ++p) EXPECT_TRUE(chosen.count(p)) << "window " << p;
        // A valid top-(C - w): every chosen prefix token scores at least every other one.
        double lowest_chosen = INFINITY, highest_other = -INFINITY;
        for (int64_t p = 0; p < T - w; ++p) {
          if (chosen.count(p)) {
            lowest_chosen = std::min(lowest_chosen, ref[h][p]);
          } else {
            highest_other = std::max(highest_other, ref[h][p]);
          }
        }
        EXPECT_GE(lowest_chosen, highest_other - 1e-6) << pooling << " seed " << seed;
      }
      // The scores themselves, from the engine's fp32 window attention.
      at::Tensor probs = at::softmax(
          at::bmm(q.narrow(1, T - w, w).reshape({2, 2 * w, 16}), k.transpose(1, 2)).mul_(0.25) +
              at::ones({w, T}).triu(T - w + 1).mul_(-1e30).repeat({2, 1}),
          -1);
      at::Tensor scores = snapkv_scores(probs.reshape({4, w, T}), 2, kernel, pooling);
      for (int64_t h = 0; h < 2; ++h) {
        for (int64_t p = 0; p < T - w; ++p) {
          ASSERT_NEAR(scores[h][p].item<double>(), ref[h][p], 1e-5) << pooling << " " << p;
        }
      }
    }
  }
}

// Max pooling makes plateaus of equal scores, so the cut at C - w often falls on a tie: it goes
// to the earlier tokens (docs/methods.md), on every backend alike. One spike at 9 pooled with
// kernel 3 ties 8, 9 and 10; the zeros elsewhere tie too.
TEST(SnapKv, TiesAtTheCutGoToTheEarlierTokens) {
  const int64_t T = 20, w = 2;
  RetentionInput in;
  in.length = T, in.prefill = true, in.prompt = T;
  in.positions = at::arange(T, at::kLong).view({1, T});
  in.window_attention = at::zeros({2, w, T}, at::kFloat);  // 2 query heads on 1 KV head
  in.window_attention.select(2, 9).fill_(0.5f);
  auto kept = [&](int64_t keep) {
    const at::Tensor k = snapkv_select(in, keep, w, 3, "max", "snapkv");
    return std::vector<int64_t>(k.data_ptr<int64_t>(), k.data_ptr<int64_t>() + k.numel());
  };
  EXPECT_EQ(kept(4), (std::vector<int64_t>{8, 9, 18, 19}));
  EXPECT_EQ(kept(6), (std::vector<int64_t>{0, 8, 9, 10, 18, 19}));
}

TEST(SnapKv, ComposesWithKiviAndGearAfterThePrefill) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  for (const char* codec : {"kivi-2", "gear-4", "int4", "fp8"}) {
    auto cache = cache_for(resolve({{"name", "snapkv"}, {"budget", 64}, {"codec", codec}}), mc);
    GenerationConfig g;
    g.max_new_tokens = 10;
    GenerationResult r = generate(model, *cache, {prompt_of(200, 3)}, g);
    EXPECT_EQ(r.sequences[0].tokens.size(), 10u);
    // Peak: after the last step, 64 kept at the prefill + 9 decode tokens.
    EXPECT_EQ(r.peak_kept_tokens, std::vector<int64_t>(4, 73)) << codec;
    EXPECT_EQ(r.peak_storage.total(), r.peak_nominal.total()) << codec;
  }
}

TEST(MethodRegistry, RetentionMethodsResolveWithTheirCodec) {
  const json a = resolve({{"name", "snapkv"}, {"budget", 2048}, {"codec", "kivi-4"}});
  EXPECT_EQ(a["codec"], json({{"name", "kivi-4"},
                              {"group", 32},
                              {"residual", 128},
                              {"query_int8", true},
                              {"value_int8", true}}));
  EXPECT_EQ(a["window"], 32);
  EXPECT_EQ(a["kernel"], 7);
  EXPECT_EQ(a["pooling"], "max");
  EXPECT_EQ(resolve({{"name", "snapkv-2048+kivi-4"}}),
            resolve({{"name", "snapkv-2048"}, {"codec", {{"name", "kivi-4"}}}}));
  EXPECT_EQ(resolve({{"name", "snapkv-2048"}})["codec"], json({{"name", "full"}}));
  const json s = resolve({{"name", "stream-512"}});
  EXPECT_EQ(s["sinks"], 64);
  EXPECT_EQ(s["window"], 448);
  EXPECT_EQ(s["evict"], "decode");
  EXPECT_EQ(resolve({{"name", "streamingllm"}})["sinks"], 4);
  EXPECT_EQ(resolve({{"name", "stream-512"},
                     {"codec", {{"name", "int4"}, {"symmetric", true}}}})["codec"]["symmetric"],
            true);
  EXPECT_EQ(make_codec(a, at::kHalf)->name(), "kivi");
  EXPECT_EQ(make_policy(a)->name(), "snapkv");
  EXPECT_EQ(make_policy(resolve({{"name", "int4"}}))->name(), "full");
  EXPECT_EQ(
      resolve({{"name", "stream-512"}, {"codec", "kivi-4"}, {"evict", "after_prefill"}})["evict"],
      "after_prefill");

  const std::string unknown = resolve_error({{"name", "snapkv"}, {"codec", "kivi"}});
  EXPECT_NE(unknown.find("methods[0].codec.name: unknown codec 'kivi'"), std::string::npos)
      << unknown;
  EXPECT_NE(unknown.find("codecs: full, fp32"), std::string::npos) << unknown;
  const std::string decode = resolve_error({{"name", "stream-512"}, {"codec", "kivi-4"}});
  EXPECT_NE(decode.find("methods[0].evict"), std::string::npos) << decode;
  EXPECT_NE(decode.find("'kivi-4'"), std::string::npos) << decode;
  EXPECT_NE(decode.find("after_prefill"), std::string::npos) << decode;
  EXPECT_NE(resolve_error({{"name", "streamingllm"}, {"codec", "gear"}}).find("'gear'"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "snapkv"}, {"codec", "stream-512"}}).find("retention method"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "snapkv"}, {"budget", 16}}).find("observation window"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "snapkv"}, {"kernel", 4}}).find("odd"), std::string::npos);
  EXPECT_NE(resolve_error({{"name", "snapkv"}, {"codec", 3}}).find("expected a codec name"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "int4"}, {"codec", "int8"}}).find("unknown key"),
            std::string::npos);
  EXPECT_NE(
      resolve_error({{"name", "snapkv-2048+int4"}, {"codec", "int8"}}).find("give the codec once"),
      std::string::npos);
  // The cache itself refuses decode eviction over a codec that cannot drop tokens.
  EXPECT_THROW(CompressedKVCache(
                   make_codec(resolve({{"name", "kivi-2"}}), at::kHalf), AttentionBackend::kCpu, 1,
                   2, 32, std::make_shared<StreamingLlmPolicy>(4, 8, EvictionTiming::kDecode)),
               Error);
}

// The presets on the tiny model, prompts longer than the budget, with a codec each way.
// H2O against a float64 simulation of its rule on random q/k/v: scores are the attention each
// held token received from every query so far (averaged over the query group), the recent
// window is always kept, the heavy hitters are the top others, and evicted tokens never return.
// The same counts given as fractions of the 7-token prompt (floor(0.43 * 7) = 3, floor(0.3 * 7)
// = 2; the counts given beside them unused) keep the same tokens. Evicting after the prefill
// only: the prompt's tokens chosen by the same rule over the prompt's attention, then every
// new token kept.
TEST(H2o, KeptTokensMatchAFloat64Simulation) {
  constexpr int64_t kHeads = 4, kKv = 2, kDim = 8, kGroup = kHeads / kKv, kHeavy = 3, kRecent = 2;
  for (int variant = 0; variant < 6; ++variant) {
    const bool ratio = variant == 2 || variant == 3, normalize = variant % 2 == 1;
    const bool after_prefill = variant >= 4;
    const EvictionTiming timing =
        after_prefill ? EvictionTiming::kAfterPrefill : EvictionTiming::kDecode;
    SCOPED_TRACE(std::string(ratio ? "ratios" : "counts") +
                 (after_prefill ? ", after prefill" : ""));
    CompressedKVCache cache(
        std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kReference, 1, kKv, kDim,
        ratio ? std::make_shared<H2oPolicy>(50, 50, normalize, timing, H2oRatios{0.43, 0.3})
              : std::make_shared<H2oPolicy>(kHeavy, kRecent, normalize, timing));
    const int64_t seq = cache.add_sequence();
    struct Token {
      int64_t pos;
      std::vector<double> key;
      double score = 0;
    };
    std::vector<std::vector<Token>> held(kKv);
    std::vector<std::set<int64_t>> before(kKv);  // the cache's kept positions after each block
    int64_t length = 0;
    // Blocks of several tokens after the prompt too (a chunked prefill's later chunks): each
    // of their queries scores what it sees, and the layer shrinks after the block.
    const std::vector<int64_t> blocks = {7, 1, 3, 1, 1, 4, 1};
    for (size_t b = 0; b < blocks.size(); ++b) {
      const int64_t n = blocks[b];
      at::Tensor q = rand({kHeads, n, kDim}, 100 + b), k = rand({kKv, n, kDim}, 200 + b),
                 v = rand({kKv, n, kDim}, 300 + b);
      cache.append_and_attend(seq, 0, q, k, v);
      for (int64_t h = 0; h < kKv; ++h)
        for (int64_t i = 0; i < n; ++i) {
          Token t{length + i, std::vector<double>(kDim)};
          for (int64_t d = 0; d < kDim; ++d) t.key[d] = k[h][i][d].item<float>();
          held[h].push_back(t);
        }
      for (int64_t qh = 0; qh < kHeads; ++qh) {
        auto& tokens = held[qh / kGroup];
        for (int64_t i = 0; i < n; ++i) {
          std::vector<double> logits;
          double mx = -INFINITY;
          for (const Token& t : tokens) {
            double dot = 0;
            for (int64_t d = 0; d < kDim; ++d) dot += double(q[qh][i][d].item<float>()) * t.key[d];
            logits.push_back(t.pos <= length + i ? dot / std::sqrt(double(kDim)) : -INFINITY);
            mx = std::max(mx, logits.back());
          }
          double sum = 0;
          for (double& l : logits) sum += (l = std::exp(l - mx));
          for (size_t j = 0; j < tokens.size(); ++j) tokens[j].score += logits[j] / sum / kGroup;
        }
      }
      length += n;
      for (auto& tokens : held) {
        if (int64_t(tokens.size()) <= kHeavy + kRecent || (after_prefill && b > 0)) continue;
        std::vector<size_t> others;
        for (size_t j = 0; j < tokens.size(); ++j)
          if (tokens[j].pos < length - kRecent) others.push_back(j);
        auto key = [&](size_t j) {
          return normalize ? tokens[j].score / double(length - tokens[j].pos) : tokens[j].score;
        };
        std::stable_sort(others.begin(), others.end(),
                         [&](size_t a, size_t c) { return key(a) > key(c); });
        std::set<size_t> keep(others.begin(), others.begin() + kHeavy);
        std::vector<Token> kept;
        for (size_t j = 0; j < tokens.size(); ++j)
          if (keep.count(j) || tokens[j].pos >= length - kRecent) kept.push_back(tokens[j]);
        tokens = kept;
      }
      const at::Tensor got = cache.kept_positions(seq, 0);
      for (int64_t h = 0; h < kKv; ++h) {
        ASSERT_EQ(got.size(1), int64_t(held[h].size())) << "block " << b;
        for (size_t j = 0; j < held[h].size(); ++j)
          EXPECT_EQ(got[h][j].item<int64_t>(), held[h][j].pos)
              << "normalize " << normalize << " block " << b << " head " << h;
        // The recent window is always there.
        EXPECT_EQ(got[h][got.size(1) - 1].item<int64_t>(), length - 1);
        // An evicted token never returns: every position held was held before or is new.
        std::set<int64_t> now;
        for (int64_t j = 0; j < got.size(1); ++j) {
          const int64_t pos = got[h][j].item<int64_t>();
          EXPECT_TRUE(pos >= length - n || before[h].count(pos)) << "block " << b << " " << pos;
          now.insert(pos);
        }
        before[h] = now;
      }
    }
    const int64_t news =
        after_prefill ? std::accumulate(blocks.begin() + 1, blocks.end(), int64_t{0}) : 0;
    EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{kHeavy + kRecent + news});
  }
}

// TOVA against a float64 simulation: on every step over budget, the newest query's attention
// averaged over all heads of the layer picks the same `budget` tokens for every head. After the
// prefill only: the prompt's last query picks them once, then every new token is kept.
TEST(Tova, KeptTokensMatchAFloat64Simulation) {
  constexpr int64_t kHeads = 4, kKv = 2, kDim = 8, kGroup = kHeads / kKv, kBudget = 4;
  for (const bool after_prefill : {false, true}) {
    SCOPED_TRACE(after_prefill ? "after prefill" : "decode");
    CompressedKVCache cache(
        std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kReference, 1, kKv, kDim,
        std::make_shared<TovaPolicy>(
            kBudget, after_prefill ? EvictionTiming::kAfterPrefill : EvictionTiming::kDecode));
    const int64_t seq = cache.add_sequence();
    std::vector<int64_t> kept_pos;                            // the same for every head
    std::vector<std::vector<std::vector<double>>> keys(kKv);  // [kv head][held][dim]
    int64_t length = 0;
    // A block of several tokens after the prompt (a later prefill chunk) picks with its last
    // query, as the prompt does.
    for (int64_t n : {7, 1, 3, 1, 4, 1}) {
      at::Tensor q = rand({kHeads, n, kDim}, 400 + length), k = rand({kKv, n, kDim}, 500 + length),
                 v = rand({kKv, n, kDim}, 600 + length);
      cache.append_and_attend(seq, 0, q, k, v);
      for (int64_t i = 0; i < n; ++i) {
        kept_pos.push_back(length + i);
        for (int64_t h = 0; h < kKv; ++h) {
          std::vector<double> row(kDim);
          for (int64_t d = 0; d < kDim; ++d) row[d] = k[h][i][d].item<float>();
          keys[h].push_back(row);
        }
      }
      length += n;
      if (int64_t(kept_pos.size()) > kBudget && !(after_prefill && length > 7)) {
        std::vector<double> score(kept_pos.size(), 0.0);
        for (int64_t qh = 0; qh < kHeads; ++qh) {
          const auto& kh = keys[qh / kGroup];
          std::vector<double> l(kh.size());
          double mx = -INFINITY, sum = 0;
          for (size_t j = 0; j < kh.size(); ++j) {
            double dot = 0;
            for (int64_t d = 0; d < kDim; ++d)
              dot += double(q[qh][n - 1][d].item<float>()) * kh[j][d];
            l[j] = dot / std::sqrt(double(kDim));
            mx = std::max(mx, l[j]);
          }
          for (double& x : l) sum += (x = std::exp(x - mx));
          for (size_t j = 0; j < l.size(); ++j) score[j] += l[j] / sum / kHeads;
        }
        std::vector<size_t> order(score.size());
        for (size_t j = 0; j < order.size(); ++j) order[j] = j;
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return score[a] > score[b]; });
        std::vector<size_t> keep(order.begin(), order.begin() + kBudget);
        std::sort(keep.begin(), keep.end());
        std::vector<int64_t> pos;
        std::vector<std::vector<std::vector<double>>> kk(kKv);
        for (size_t j : keep) {
          pos.push_back(kept_pos[j]);
          for (int64_t h = 0; h < kKv; ++h) kk[h].push_back(keys[h][j]);
        }
        kept_pos = pos, keys = kk;
      }
      const at::Tensor got = cache.kept_positions(seq, 0);
      for (int64_t h = 0; h < kKv; ++h) {
        ASSERT_EQ(got.size(1), int64_t(kept_pos.size()));
        for (size_t j = 0; j < kept_pos.size(); ++j)
          EXPECT_EQ(got[h][j].item<int64_t>(), kept_pos[j]) << "step " << length;
      }
    }
    EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{kBudget + (after_prefill ? 10 : 0)});
  }
}

// Budgets as fractions of the prompt: floor(ratio * prompt), the window at least 1, each count
// replaced only where its ratio is above 0; fixed by the prompt, not the length; a cache that
// gives no prompt is an error; the steady-state shortcut and the rectangular batch (one window
// for every input) are off, and a batch of different prompts selects as each input alone.
TEST(H2o, RatioBudgetsAreFractionsOfThePrompt) {
  const H2oPolicy both(256, 256, false, EvictionTiming::kDecode, {0.1, 0.1});
  const H2oPolicy heavy_only(256, 7, false, EvictionTiming::kDecode, {0.2, 0});
  const H2oPolicy counts(256, 7, false, EvictionTiming::kDecode);
  RetentionInput in;
  in.length = 5000;
  for (const auto& [prompt, want] :
       std::vector<std::pair<int64_t, int64_t>>{{100, 20}, {109, 20}, {110, 22}, {5, 1}, {1, 1}}) {
    in.prompt = prompt;
    EXPECT_EQ(both.budget(in), want) << "prompt " << prompt;
  }
  in.prompt = 50;
  EXPECT_EQ(heavy_only.budget(in), 10 + 7);
  in.prompt = 0;
  EXPECT_THROW(both.budget(in), Error);
  EXPECT_EQ(counts.budget(in), 256 + 7);  // counts need no prompt
  EXPECT_TRUE(both.budget_needs_prompt());
  EXPECT_TRUE(heavy_only.budget_needs_prompt());
  EXPECT_FALSE(counts.budget_needs_prompt());
  EXPECT_EQ(both.drops_lowest(100), 10);  // each sequence's window
  EXPECT_FALSE(both.drops_lowest(0).has_value());
  EXPECT_EQ(counts.drops_lowest(0), 7);
  EXPECT_EQ(both.params(), json({{"heavy_ratio", 0.1},
                                 {"recent_ratio", 0.1},
                                 {"normalize", false},
                                 {"evict", "decode"}}));
  EXPECT_EQ(heavy_only.params()["recent"], 7);
  EXPECT_FALSE(heavy_only.params().contains("heavy"));

  // Selections: the newest floor(0.1 * prompt) and as many others by score, per input.
  auto gen = at::detail::createCPUGenerator(31);
  auto input = [&](int64_t prompt, int64_t length, int64_t held) {
    RetentionInput r;
    r.prompt = prompt, r.length = length;
    r.positions = at::arange(length - held, length, at::kLong).expand({2, held}).contiguous();
    r.host_positions = r.positions;
    r.accumulated = at::rand({2, held}, gen);
    return r;
  };
  const std::vector<RetentionInput> inputs = {input(200, 260, 60), input(300, 320, 70)};
  std::vector<const RetentionInput*> batch;
  for (const RetentionInput& r : inputs) batch.push_back(&r);
  const std::vector<at::Tensor> got = both.select_batch(batch);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const RetentionInput& r = inputs[i];
    const int64_t part = r.prompt / 10, held = r.held();
    ASSERT_TRUE(at::equal(got[i], both.select(r))) << "input " << i;
    ASSERT_EQ(got[i].size(1), 2 * part) << "input " << i;
    // The window: the last `part` held tokens; the heavy: the top `part` scores before it.
    EXPECT_TRUE(at::equal(got[i].narrow(1, part, part),
                          at::arange(held - part, held, at::kLong).expand({2, part})));
    const at::Tensor older = r.accumulated.narrow(1, 0, held - part);
    const at::Tensor top = std::get<0>(std::get<1>(older.topk(part, 1)).sort(1));
    EXPECT_TRUE(at::equal(got[i].narrow(1, 0, part), top)) << "input " << i;
  }
}

// A count given replaces its ratio; both given (the ratio above 0) is an error; the resolved
// entry leaves out the count a ratio replaces, and resolves to itself.
TEST(MethodRegistry, H2oCountsReplaceItsRatios) {
  const json plain = resolve({{"name", "h2o"}});
  EXPECT_EQ(plain["heavy_ratio"], 0.1);
  EXPECT_EQ(plain["recent_ratio"], 0.1);
  EXPECT_FALSE(plain.contains("heavy"));
  EXPECT_FALSE(plain.contains("recent"));
  EXPECT_EQ(resolve(plain), plain);
  EXPECT_TRUE(make_policy(plain)->budget_needs_prompt());
  const json heavy = resolve({{"name", "h2o"}, {"heavy", 64}});
  EXPECT_EQ(heavy["heavy"], 64);
  EXPECT_EQ(heavy["heavy_ratio"], 0.0);
  EXPECT_EQ(heavy["recent_ratio"], 0.1);
  EXPECT_FALSE(heavy.contains("recent"));
  EXPECT_EQ(resolve(heavy), heavy);
  const json counts = resolve({{"name", "h2o"}, {"heavy", 64}, {"recent", 32}});
  EXPECT_FALSE(make_policy(counts)->budget_needs_prompt());
  EXPECT_EQ(resolve({{"name", "h2o"}, {"heavy", 64}, {"heavy_ratio", 0}})["heavy"], 64);
  const json preset = resolve({{"name", "h2o-512"}});
  EXPECT_EQ(preset["heavy"], 256);
  EXPECT_EQ(preset["recent"], 256);
  EXPECT_EQ(preset["heavy_ratio"], 0.0);
  EXPECT_FALSE(make_policy(preset)->budget_needs_prompt());
  EXPECT_TRUE(
      make_policy(resolve({{"name", "h2o-512"}, {"recent_ratio", 0.05}}))->budget_needs_prompt());
  EXPECT_NE(resolve_error({{"name", "h2o"}, {"heavy", 64}, {"heavy_ratio", 0.2}})
                .find("methods[0].heavy_ratio"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "h2o"}, {"recent_ratio", 1.5}}).find("recent_ratio"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "h2o"}, {"heavy", 64}, {"heavy_ratio", "x"}}).find("number"),
            std::string::npos);
}

TEST(H2o, NeedsAPerTokenCodecToEvictDuringDecode) {
  try {
    resolve({{"name", "h2o-512"}, {"codec", "kivi-4"}});
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("after_prefill"), std::string::npos) << e.what();
  }
  EXPECT_EQ(
      resolve({{"name", "h2o-512"}, {"codec", "kivi-4"}, {"evict", "after_prefill"}})["heavy"],
      256);
}

TEST(Retention, TinyModelGeneratesPastEveryBudget) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  struct Case {
    json method;
    int64_t prompt, kept_at_end;
  };
  const std::vector<Case> cases = {
      {{{"name", "stream-512"}}, 700, 512},
      {{{"name", "stream-512"}, {"codec", "int4"}}, 700, 512},
      {{{"name", "h2o-512"}}, 700, 512},
      {{{"name", "h2o"}}, 700, 140},  // 10% of the prompt each for heavy and recent
      {{{"name", "tova-512"}}, 700, 512},
      {{{"name", "quest-1024"}}, 1500, 1500 + 7},  // keeps everything, reads 1024 per step
      {{{"name", "snapkv-2048"}}, 2200, 2048 + 7},
      {{{"name", "scissorhands-512"}}, 700, 512},
      {{{"name", "scissorhands-512"}, {"codec", "int8"}}, 700, 512},
      {{{"name", "stream-512"}, {"positions", "rerotated"}}, 700, 512},
      {{{"name", "stream-512"}, {"positions", "rerotated"}, {"codec", "fp8"}}, 700, 512},
      {{{"name", "snapkv-2048"}, {"codec", "kivi-4"}}, 2200, 2048 + 7}};
  for (const Case& c : cases) {
    auto cache = cache_for(resolve(c.method), mc);
    GenerationConfig g;
    g.max_new_tokens = 8;
    GenerationResult r = generate(model, *cache, {prompt_of(c.prompt, 4)}, g);
    EXPECT_EQ(r.sequences[0].tokens.size(), 8u);
    EXPECT_EQ(r.peak_tokens, c.prompt + 7) << c.method.dump();
    EXPECT_EQ(r.peak_kept_tokens, std::vector<int64_t>(4, c.kept_at_end)) << c.method.dump();
    EXPECT_EQ(r.peak_storage.total(), r.peak_nominal.total()) << c.method.dump();
    // H2O's bookkeeping at the peak, apart from the K/V bytes: every layer's kept positions
    // (int64) and scores (fp32) per KV head.
    if (c.method["name"] == "h2o-512" || c.method["name"] == "h2o")
      EXPECT_EQ(r.peak_retention_bytes,
                uint64_t(mc.num_layers * mc.num_kv_heads * c.kept_at_end) * (8 + 4));
  }
}

// The policies' bookkeeping, measured apart from the K/V state (KVCache::retention_bytes): the
// CPU cache's positions (int64), H2O's scores (fp32) and ScissorHands' history (one bool per
// query head, held token and history slot); none without a policy; gone with the sequence.
// The paged cache's lists and records count too.
TEST(Retention, BookkeepingBytesAreMeasuredApartFromTheCache) {
  constexpr int64_t kLayers = 2, kHeads = 4, kKv = 2, kDim = 8, kHistory = 4;
  struct Case {
    std::shared_ptr<const RetentionPolicy> policy;
    int64_t held, per_token;  // bytes per held token and KV head
  };
  const std::vector<Case> cases = {
      {std::make_shared<FullRetention>(), 10, 0},
      {std::make_shared<H2oPolicy>(3, 2, false, EvictionTiming::kDecode), 5, 8 + 4},
      // Selecting once: after the prefill only the positions stay (5 kept, then 3 decoded).
      {std::make_shared<H2oPolicy>(3, 2, false, EvictionTiming::kAfterPrefill), 8, 8},
      {std::make_shared<ScissorHandsPolicy>(6, 2, kHistory, EvictionTiming::kAfterPrefill), 9, 8},
      {std::make_shared<ScissorHandsPolicy>(6, 2, kHistory, EvictionTiming::kDecode), 6,
       8 + (kHeads / kKv) * kHistory}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.policy->name());
    CompressedKVCache cache(std::make_shared<IdentityCodec>(at::kFloat),
                            AttentionBackend::kReference, kLayers, kKv, kDim, c.policy);
    const int64_t seq = cache.add_sequence();
    for (int64_t n : {7, 1, 1, 1})
      for (int64_t l = 0; l < kLayers; ++l)
        cache.append_and_attend(seq, l, rand({kHeads, n, kDim}, 10 + n + l),
                                rand({kKv, n, kDim}, 20 + n + l), rand({kKv, n, kDim}, 30 + n + l));
    EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>(kLayers, c.held));
    EXPECT_EQ(cache.retention_bytes(), uint64_t(kLayers * kKv * c.held * c.per_token));
    cache.remove_sequence(seq);
    EXPECT_EQ(cache.retention_bytes(), 0u);
  }
  // The paged cache: the kept lists (int32), the positions a compaction moved (int64) and
  // H2O's sums (fp32) at least, nothing once the sequence goes; on the kernel path the lists'
  // uploaded copies as well.
  uint64_t plain = 0;
  for (const bool kernel_path : {false, true}) {
    SCOPED_TRACE(kernel_path ? "kernel path" : "plain path");
    PagedKVCache paged(
        paged_format_for({{"name", "fp16"}}, at::kHalf), kLayers, kKv, 64, PagedCapacity{},
        at::kCPU, std::make_shared<H2oPolicy>(24, 16, false, EvictionTiming::kDecode), kernel_path);
    EXPECT_EQ(paged.retention_bytes(), 0u);
    const int64_t seq = paged.add_sequence();
    for (int64_t n : {80, 1, 1})
      for (int64_t l = 0; l < kLayers; ++l) {
        const at::Tensor q = rand({kHeads, n, 64}, 40 + n + l);
        paged.append_and_attend(seq, l, kernel_path ? q.to(at::kHalf) : q,
                                rand({kKv, n, 64}, 50 + n + l).to(at::kHalf),
                                rand({kKv, n, 64}, 60 + n + l).to(at::kHalf));
      }
    EXPECT_EQ(paged.kept_tokens(seq), std::vector<int64_t>(kLayers, 40));
    if (!kernel_path) {
      plain = paged.retention_bytes();
      EXPECT_GE(plain, uint64_t(kLayers * kKv * 40) * 4);  // the sums alone
      EXPECT_LE(plain, uint64_t(kLayers * kKv * 41) * (4 + 4 + 8));
    } else {
      EXPECT_GT(paged.retention_bytes(), plain);  // the same state, its lists twice
      EXPECT_LE(paged.retention_bytes(), 2 * plain);
    }
    paged.remove_sequence(seq);
    EXPECT_EQ(paged.retention_bytes(), 0u);
  }
}

// PyramidKV on the tiny model (4 layers): each layer keeps its own budget after the prefill, and
// the report's kept_tokens.per_layer shows the differing counts.
TEST(PyramidKv, TinyModelLayersKeepFallingBudgets) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  auto cache = cache_for(resolve({{"name", "pyramidkv-2048"}}), mc);
  GenerationConfig g;
  g.max_new_tokens = 8;
  GenerationResult r = generate(model, *cache, {prompt_of(2200, 4)}, g);
  // T = 2200: max = T - w = 2192, min = 2 * 2040 - 2192 = 1888, step 304 / 3; + w, + 7 decoded.
  const std::vector<int64_t> want = {2200 + 7, 2091 + 8 + 7, 1989 + 8 + 7, 1888 + 8 + 7};
  EXPECT_EQ(r.peak_kept_tokens, want);
  const json mem = kv_memory_json(r, mc);
  EXPECT_EQ(mem["kept_tokens"]["per_layer"], json(want));
  EXPECT_EQ(mem["kept_tokens"]["min"], 1903);
  EXPECT_EQ(mem["kept_tokens"]["max"], 2207);
  EXPECT_EQ(r.peak_storage.total(), r.peak_nominal.total());
  // Its window attention and selection are timed as retention, within the prefill.
  EXPECT_GT(r.prefill_retention_s, 0.0);
  EXPECT_LE(r.prefill_retention_s, r.prefill_s);
}

// A long generation with decode eviction: the cache never holds more than S + W tokens.
TEST(StreamingLlm, LongGenerationKeepsStorageBounded) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  auto cache =
      cache_for(resolve({{"name", "streamingllm"}, {"window", 28}, {"codec", "int8"}}), mc);
  GenerationConfig g;
  g.max_new_tokens = 300;
  g.ignore_eos = true;
  GenerationResult r = generate(model, *cache, {prompt_of(20, 5)}, g);
  EXPECT_EQ(r.sequences[0].tokens.size(), 300u);
  const auto codec = make_codec(resolve({{"name", "int8"}}), at::kBFloat16);
  EXPECT_EQ(r.peak_kv_bytes, codec->nominal_bytes(32, mc.num_kv_heads, mc.head_dim).total() *
                                 static_cast<uint64_t>(mc.num_layers));
  EXPECT_EQ(r.peak_kept_tokens, std::vector<int64_t>(4, 32));
}

// PyramidKV's per-layer budgets: methods.md's worked example (C = 128, w = 8, L = 32) under the
// chosen rule (exact step, rounded: layer 0 keeps 234 + 8, layer 31 keeps 6 + 8, L C in all),
// the clamp when the first layer would exceed the prompt, and non-increasing budgets.
TEST(PyramidKv, LayerBudgetsFollowTheExactStepRule) {
  const std::vector<int64_t> example = {242, 235, 227, 220, 213, 205, 198, 191, 183, 176, 168,
                                        161, 154, 146, 139, 132, 124, 117, 110, 102, 95,  88,
                                        80,  73,  65,  58,  51,  43,  36,  29,  21,  14};
  int64_t total = 0;
  for (int64_t l = 0; l < 32; ++l) {
    const int64_t b = pyramidkv_layer_budget(128, 8, 20.0, l, 32, 10000);
    EXPECT_EQ(b, example[static_cast<size_t>(l)]) << "layer " << l;
    total += b;
  }
  EXPECT_EQ(total, 32 * 128);
  // T = 200: max = T - w = 192, min = 2 (C - w) - max = 48.
  const std::vector<int64_t> clamped = {200, 195, 191, 186, 181, 177, 172, 167, 163, 158, 154,
                                        149, 144, 140, 135, 130, 126, 121, 116, 112, 107, 102,
                                        98,  93,  89,  84,  79,  75,  70,  65,  61,  56};
  for (int64_t l = 0; l < 32; ++l) {
    EXPECT_EQ(pyramidkv_layer_budget(128, 8, 20.0, l, 32, 200), clamped[static_cast<size_t>(l)]);
  }
  EXPECT_EQ(pyramidkv_layer_budget(128, 8, 20.0, 5, 32, 128), 128);  // T <= C: kept whole
  EXPECT_EQ(pyramidkv_layer_budget(128, 8, 20.0, 0, 32, 100), 100);
  EXPECT_EQ(pyramidkv_layer_budget(128, 8, 20.0, 0, 1, 1000), 128);  // one layer: C
  for (int64_t C : {16, 100, 2048})
    for (int64_t L : {2, 3, 28, 32, 80})
      for (int64_t T : {C + 1, C + 50, 3 * C, 100 * C})
        for (double beta : {1.0, 3.5, 20.0}) {
          int64_t prev = INT64_MAX;
          for (int64_t l = 0; l < L; ++l) {
            const int64_t b = pyramidkv_layer_budget(C, 8, beta, l, L, T);
            ASSERT_LE(b, prev) << C << " " << L << " " << T << " " << beta << " layer " << l;
            ASSERT_GE(b, 8);
            ASSERT_LE(b, T);
            prev = b;
          }
        }
}

// On a 4-layer cache every layer keeps its own budget, chosen exactly as SnapKV with that
// budget would (the same window attention, pooling and window).
TEST(PyramidKv, EachLayerKeepsSnapKvSelectionAtItsBudget) {
  constexpr int64_t L = 4, T = 150, C = 48, w = 8;
  auto pyramid = std::make_shared<PyramidKvPolicy>(C, w, 7, "max", 20.0);
  CompressedKVCache cache(std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kCpu, L, 2,
                          16, pyramid);
  const int64_t seq = cache.add_sequence();
  std::vector<at::Tensor> qs, ks, vs;
  for (int64_t l = 0; l < L; ++l) {
    qs.push_back(rand({4, T, 16}, 40 + l) * 2);
    ks.push_back(rand({2, T, 16}, 50 + l));
    vs.push_back(rand({2, T, 16}, 60 + l));
    cache.append_and_attend(seq, l, qs.back(), ks.back(), vs.back());
  }
  std::vector<int64_t> want;
  for (int64_t l = 0; l < L; ++l) want.push_back(pyramidkv_layer_budget(C, w, 20.0, l, L, T));
  EXPECT_EQ(cache.kept_tokens(seq), want);
  EXPECT_GT(want.front(), want.back());
  for (int64_t l = 0; l < L; ++l) {
    CompressedKVCache snap(std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kCpu, 1,
                           2, 16, std::make_shared<SnapKvPolicy>(want[l], w, 7, "max"));
    const int64_t s1 = snap.add_sequence();
    snap.append_and_attend(s1, 0, qs[l], ks[l], vs[l]);
    EXPECT_TRUE(at::equal(cache.kept_positions(seq, l), snap.kept_positions(s1, 0))) << l;
  }
  EXPECT_GT(cache.retention_seconds(), 0.0);
}

// ScissorHands against a float64 simulation: each query marks the held tokens it saw and gave
// less than 1/t (t: tokens it attended); a token's count is its marks from the last `history`
// query positions, averaged over the query group; the newest `recent` are protected and the
// budget - recent others with the fewest marks stay (ties to the earlier token). After the
// prefill only: the prompt's marks choose once, then every new token is kept.
TEST(ScissorHands, KeptTokensMatchAFloat64Simulation) {
  constexpr int64_t kHeads = 4, kKv = 2, kDim = 8, kGroup = kHeads / kKv;
  constexpr int64_t kBudget = 6, kRecent = 2, kHistory = 6;
  for (int variant = 0; variant < 3; ++variant) {
    const auto backend = variant == 0 ? AttentionBackend::kReference : AttentionBackend::kCpu;
    const bool after_prefill = variant == 2;
    SCOPED_TRACE(variant);
    CompressedKVCache cache(
        std::make_shared<IdentityCodec>(at::kFloat), backend, 1, kKv, kDim,
        std::make_shared<ScissorHandsPolicy>(
            kBudget, kRecent, kHistory,
            after_prefill ? EvictionTiming::kAfterPrefill : EvictionTiming::kDecode));
    const int64_t seq = cache.add_sequence();
    struct Token {
      int64_t pos;
      std::vector<double> key;
      std::vector<std::vector<int64_t>> low;  // per query head: positions of marking queries
    };
    std::vector<std::vector<Token>> held(kKv);
    int64_t length = 0;
    // Blocks of several tokens after the prompt (a chunked prefill's later chunks): the ring
    // holds the last `history` query positions, whichever blocks they came in.
    const std::vector<int64_t> blocks = {9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 4, 1};
    int evictions = 0, evictions_with_ties = 0;
    for (size_t b = 0; b < blocks.size(); ++b) {
      const int64_t n = blocks[b];
      at::Tensor q = rand({kHeads, n, kDim}, 700 + b) * 2, k = rand({kKv, n, kDim}, 800 + b),
                 v = rand({kKv, n, kDim}, 900 + b);
      cache.append_and_attend(seq, 0, q, k, v);
      for (int64_t h = 0; h < kKv; ++h)
        for (int64_t i = 0; i < n; ++i) {
          Token t{length + i, std::vector<double>(kDim), std::vector<std::vector<int64_t>>(kGroup)};
          for (int64_t d = 0; d < kDim; ++d) t.key[d] = k[h][i][d].item<float>();
          held[h].push_back(t);
        }
      for (int64_t qh = 0; qh < kHeads; ++qh) {
        auto& tokens = held[qh / kGroup];
        for (int64_t i = 0; i < n; ++i) {
          const int64_t qpos = length + i;
          std::vector<double> p;
          double mx = -INFINITY, sum = 0;
          int64_t seen = 0;
          for (const Token& t : tokens) {
            double dot = 0;
            for (int64_t d = 0; d < kDim; ++d) dot += double(q[qh][i][d].item<float>()) * t.key[d];
            p.push_back(t.pos <= qpos ? dot / std::sqrt(double(kDim)) : -INFINITY);
            mx = std::max(mx, p.back());
            seen += t.pos <= qpos;
          }
          for (double& x : p) sum += (x = std::exp(x - mx));
          for (size_t j = 0; j < tokens.size(); ++j)
            if (tokens[j].pos <= qpos && p[j] / sum < 1.0 / double(seen))
              tokens[j].low[qh % kGroup].push_back(qpos);
        }
      }
      length += n;
      for (auto& tokens : held) {
        if (int64_t(tokens.size()) <= kBudget || (after_prefill && b > 0)) continue;
        ++evictions;
        auto count = [&](const Token& t) {
          double c = 0;
          for (const auto& marks : t.low)
            for (int64_t qp : marks) c += qp >= length - kHistory ? 1.0 / kGroup : 0.0;
          return c;
        };
        std::vector<size_t> others;
        for (size_t j = 0; j < tokens.size(); ++j)
          if (tokens[j].pos < length - kRecent) others.push_back(j);
        std::stable_sort(others.begin(), others.end(),
                         [&](size_t a, size_t c) { return count(tokens[a]) < count(tokens[c]); });
        if (count(tokens[others[kBudget - kRecent - 1]]) ==
            count(tokens[others[kBudget - kRecent]]))
          ++evictions_with_ties;
        std::set<size_t> keep(others.begin(), others.begin() + (kBudget - kRecent));
        std::vector<Token> kept;
        for (size_t j = 0; j < tokens.size(); ++j)
          if (keep.count(j) || tokens[j].pos >= length - kRecent) kept.push_back(tokens[j]);
        tokens = kept;
      }
      const at::Tensor got = cache.kept_positions(seq, 0);
      for (int64_t h = 0; h < kKv; ++h) {
        ASSERT_EQ(got.size(1), int64_t(held[h].size())) << "block " << b;
        for (size_t j = 0; j < held[h].size(); ++j)
          EXPECT_EQ(got[h][j].item<int64_t>(), held[h][j].pos)
              << "block " << b << " head " << h << " slot " << j;
        EXPECT_EQ(got[h][got.size(1) - 1].item<int64_t>(), length - 1);  // recent kept
      }
    }
    const int64_t news =
        after_prefill ? std::accumulate(blocks.begin() + 1, blocks.end(), int64_t{0}) : 0;
    EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{kBudget + news});
    // Most evictions are decided by the counts, not a tie-break (a history of 6 queries, so
    // counts in steps of 1/2 up to 6; measured over the single-token steps alone: 6 of 26 tie).
    if (!after_prefill) EXPECT_LT(evictions_with_ties, evictions / 3);
    EXPECT_GT(cache.retention_seconds(), 0.0);
  }
}

// RoPE in float64 (Hugging Face rotate_half layout): x [d] rotated to position p.
std::vector<double> rope64(const std::vector<double>& x, double p, const at::Tensor& inv_freq) {
  const size_t half = x.size() / 2;
  std::vector<double> out(x.size());
  for (size_t i = 0; i < half; ++i) {
    const double a = p * inv_freq[static_cast<int64_t>(i)].item<double>();
    out[i] = x[i] * std::cos(a) - x[i + half] * std::sin(a);
    out[i + half] = x[i + half] * std::cos(a) + x[i] * std::sin(a);
  }
  return out;
}

// StreamingLLM with re-rotated positions against a float64 simulation that really re-rotates:
// pre-RoPE keys kept, every kept key rotated to its rank among the kept tokens and the query to
// its own rank, softmax in float64. The cache gets keys rotated at logical positions (as the
// transformer gives them) and never re-encodes one.
TEST(StreamingLlm, RerotatedPositionsMatchAFloat64ReRotation) {
  constexpr int64_t H = 4, Hkv = 2, d = 16, S = 3, W = 7, prefill = 20, steps = 30;
  constexpr int64_t total = prefill + steps;
  at::Tensor inv_freq = at::empty({d / 2}, at::kDouble);
  for (int64_t i = 0; i < d / 2; ++i) inv_freq[i] = std::pow(10000.0, -2.0 * i / d);
  at::Tensor q_pre = rand({H, total, d}, 21) * 2, k_pre = rand({Hkv, total, d}, 22) * 2;
  at::Tensor v = rand({Hkv, total, d}, 23);
  // Logical-position RoPE for the cache's inputs, through the transformer's code.
  const auto [cos, sin] = rope_cos_sin(at::arange(total, at::kLong), inv_freq);
  at::Tensor q = apply_rope(q_pre.transpose(0, 1), cos, sin).transpose(0, 1).contiguous();
  at::Tensor k = apply_rope(k_pre.transpose(0, 1), cos, sin).transpose(0, 1).contiguous();
  auto vec = [](const at::Tensor& t) {  // [d] -> float64 vector
    at::Tensor c = t.to(at::kDouble).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  for (auto timing : {EvictionTiming::kDecode, EvictionTiming::kAfterPrefill}) {
    for (auto backend : {AttentionBackend::kCpu, AttentionBackend::kReference}) {
      auto policy = std::make_shared<StreamingLlmPolicy>(S, W, timing, /*rerotated=*/true);
      CompressedKVCache cache(std::make_shared<IdentityCodec>(at::kFloat), backend, 1, Hkv, d,
                              policy, inv_freq);
      const int64_t seq = cache.add_sequence();
      cache.append_and_attend(seq, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                              v.narrow(1, 0, prefill));
      double worst = 0;
      for (int64_t t = prefill; t < total; ++t) {
        at::Tensor got = cache.append_and_attend(seq, 0, q.narrow(1, t, 1), k.narrow(1, t, 1),
                                                 v.narrow(1, t, 1));
        // The kept set: sinks plus a run ending at t.
        std::vector<int64_t> kept;
        const int64_t run = timing == EvictionTiming::kDecode ? t - W + 1 : prefill - W;
        for (int64_t p = 0; p <= t; ++p)
          if (p < S || p >= run) kept.push_back(p);
        ASSERT_TRUE(at::equal(cache.kept_positions(seq, 0)[0], at::tensor(kept, at::kLong)));
        const double qrank = static_cast<double>(kept.size() - 1);
        for (int64_t h = 0; h < H; ++h) {
          const std::vector<double> qr = rope64(vec(q_pre[h][t]), qrank, inv_freq);
          std::vector<double> logits;
          double mx = -INFINITY;
          for (size_t j = 0; j < kept.size(); ++j) {
            const std::vector<double> kr = rope64(vec(k_pre[h / 2][kept[j]]), double(j), inv_freq);
            double dot = 0;
            for (int64_t c = 0; c < d; ++c) dot += qr[c] * kr[c];
            logits.push_back(dot / std::sqrt(double(d)));
            mx = std::max(mx, logits.back());
          }
          double z = 0;
          for (double& l : logits) z += (l = std::exp(l - mx));
          for (int64_t c = 0; c < d; ++c) {
            double o = 0;
            for (size_t j = 0; j < kept.size(); ++j)
              o += logits[j] / z * v[h / 2][kept[j]][c].item<float>();
            worst = std::max(worst, std::abs(o - got[h][0][c].item<float>()));
          }
        }
      }
      EXPECT_LT(worst, 2e-5) << "timing " << eviction_timing_name(timing) << " backend "
                             << (backend == AttentionBackend::kCpu ? "cpu" : "reference");
      // The original-position variant differs on the same inputs: the test can fail.
      CompressedKVCache plain(std::make_shared<IdentityCodec>(at::kFloat), backend, 1, Hkv, d,
                              std::make_shared<StreamingLlmPolicy>(S, W, timing));
      CompressedKVCache rerot(std::make_shared<IdentityCodec>(at::kFloat), backend, 1, Hkv, d,
                              policy, inv_freq);
      const int64_t a = plain.add_sequence(), b = rerot.add_sequence();
      plain.append_and_attend(a, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                              v.narrow(1, 0, prefill));
      rerot.append_and_attend(b, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                              v.narrow(1, 0, prefill));
      at::Tensor o1 = plain.append_and_attend(a, 0, q.narrow(1, prefill, 1),
                                              k.narrow(1, prefill, 1), v.narrow(1, prefill, 1));
      at::Tensor o2 = rerot.append_and_attend(b, 0, q.narrow(1, prefill, 1),
                                              k.narrow(1, prefill, 1), v.narrow(1, prefill, 1));
      EXPECT_GT((o1 - o2).abs().max().item<double>(), 1e-3);
    }
  }
  // Over a quantized store the fused path (rotated query on the sinks) equals the reference
  // path (every dequantized key rotated) within the codec's fused tolerance.
  for (const auto& codec : std::vector<std::shared_ptr<const Codec>>{
           std::make_shared<BlockQuantCodec>(8, true, 16),
           std::make_shared<BlockQuantCodec>(4, false, 16),
           std::make_shared<Fp8Codec>("amax", 1.0, 448.0, 448.0, "head")}) {
    auto policy = std::make_shared<StreamingLlmPolicy>(S, W, EvictionTiming::kDecode, true);
    CompressedKVCache fused(codec, AttentionBackend::kCpu, 1, Hkv, d, policy, inv_freq);
    CompressedKVCache ref(codec, AttentionBackend::kReference, 1, Hkv, d, policy, inv_freq);
    const int64_t a = fused.add_sequence(), b = ref.add_sequence();
    fused.append_and_attend(a, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                            v.narrow(1, 0, prefill));
    ref.append_and_attend(b, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                          v.narrow(1, 0, prefill));
    for (int64_t t = prefill; t < total; ++t) {
      at::Tensor x =
          fused.append_and_attend(a, 0, q.narrow(1, t, 1), k.narrow(1, t, 1), v.narrow(1, t, 1));
      at::Tensor y =
          ref.append_and_attend(b, 0, q.narrow(1, t, 1), k.narrow(1, t, 1), v.narrow(1, t, 1));
      ASSERT_LT(((x - y).norm() / y.norm()).item<double>(), codec->fused_tolerance())
          << codec->name() << " step " << t;
    }
  }
  // Without the model's RoPE frequencies the cache refuses the policy, by name.
  try {
    CompressedKVCache(std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kCpu, 1, 2, 16,
                      std::make_shared<StreamingLlmPolicy>(S, W, EvictionTiming::kDecode, true));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("RoPE"), std::string::npos) << e.what();
  }
}

// The time spent on retention work is accumulated by the cache (and zero without a policy).
TEST(Retention, CacheAccumulatesRetentionTime) {
  Transformer model = tiny_model();
  const ModelConfig& mc = model.config();
  auto full = cache_for(resolve({{"name", "full"}}), mc);
  auto h2o = cache_for(resolve({{"name", "h2o"}, {"heavy", 8}, {"recent", 8}}), mc);
  decode_logits(model, *full, prompt_of(30, 6), 3);
  decode_logits(model, *h2o, prompt_of(30, 6), 3);
  EXPECT_EQ(full->retention_seconds(), 0.0);
  EXPECT_GT(h2o->retention_seconds(), 0.0);
}

TEST(MethodRegistry, NewRetentionMethodsResolve) {
  const json p = resolve({{"name", "pyramidkv-2048"}});
  EXPECT_EQ(p["budget"], 2048);
  EXPECT_EQ(p["window"], 8);
  EXPECT_EQ(p["kernel"], 7);
  EXPECT_EQ(p["pooling"], "max");
  EXPECT_EQ(p["beta"], 20.0);
  EXPECT_EQ(make_policy(p)->name(), "pyramidkv");
  const json s = resolve({{"name", "scissorhands-512"}, {"codec", "int4"}});
  EXPECT_EQ(s["budget"], 512);
  EXPECT_EQ(s["evict"], "decode");
  EXPECT_EQ(make_policy(s)->params()["history"], 32);
  EXPECT_EQ(resolve({{"name", "stream-512"}})["positions"], "original");
  EXPECT_TRUE(make_policy(resolve({{"name", "streamingllm"}, {"positions", "rerotated"}}))
                  ->cache_positions());
  EXPECT_NE(resolve_error({{"name", "stream-512"}, {"positions", "cache"}}).find("rerotated"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "pyramidkv"}, {"budget", 8}}).find("observation window"),
            std::string::npos);
  EXPECT_NE(resolve_error({{"name", "pyramidkv"}, {"beta", 0.5}}).find("beta"), std::string::npos);
  EXPECT_NE(
      resolve_error({{"name", "scissorhands"}, {"budget", 16}, {"recent", 16}}).find("recent"),
      std::string::npos);
  EXPECT_NE(
      resolve_error({{"name", "scissorhands-512"}, {"codec", "kivi-2"}}).find("after_prefill"),
      std::string::npos);
}

}  // namespace
}  // namespace kvbench
