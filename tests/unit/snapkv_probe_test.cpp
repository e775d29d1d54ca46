// A measurement, not a test (DISABLED_, run with --gtest_also_run_disabled_tests): why does
// SnapKV keep or lose the needle in the shipped retrieval model? For held-out passkey prompts it
// prints, per layer and KV head, the best rank of the needle's key digits in SnapKV's scores
// and in every decode step's attention (where the layer really looks), and it generates with
// eviction variants that isolate the cause: SnapKV in some layers only, and an oracle that keeps
// the needle sentence plus the recent window at the same budget.
//   KVBENCH_PROBE_MODEL=dir (default: the shipped model), KVBENCH_PROBE_SAMPLES=n (default 10)
#include <gtest/gtest.h>

#include <c10/core/GradMode.h>  // NoGradGuard: ATen.h no longer brings it in PyTorch 2.x

#include <cstdio>
#include <cstdlib>
#include <set>

#include "kvbench/engine/generator.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/snapkv_policy.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/model/transformer.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {
namespace {

using nlohmann::json;

// SnapKV restricted to some layers; the others keep every token. With `oracle` set it keeps
// the given positions (the needle) plus the recent window instead of SnapKV's choice.
class ProbePolicy final : public RetentionPolicy {
 public:
  ProbePolicy(int64_t budget, int64_t window, int64_t kernel, std::set<int64_t> layers,
              std::vector<int64_t> oracle = {})
      : budget_(budget),
        window_(window),
        kernel_(kernel),
        layers_(std::move(layers)),
        oracle_(std::move(oracle)) {}
  std::string name() const override { return "probe"; }
  json params() const override { return json::object(); }
  RetentionNeeds needs() const override { return RetentionNeeds::kWindowScores; }
  EvictionTiming timing() const override { return EvictionTiming::kAfterPrefill; }
  int64_t observation_window() const override { return window_; }
  int64_t budget(const RetentionInput& in) const override {
    return layers_.count(in.layer) ? budget_ : INT64_MAX;
  }
  at::Tensor select(const RetentionInput& in) const override {
    if (oracle_.empty()) return snapkv_select(in, budget_, window_, kernel_, "max", "probe");
    const int64_t held = in.held(), kv = in.positions.size(0);
    std::set<int64_t> keep;
    for (int64_t p : oracle_) keep.insert(p);
    for (int64_t p = held - 1; static_cast<int64_t>(keep.size()) < budget_; --p) keep.insert(p);
    std::vector<int64_t> idx(keep.begin(), keep.end());
    return at::tensor(idx, at::kLong).expand({kv, static_cast<int64_t>(idx.size())}).contiguous();
  }

 private:
  int64_t budget_, window_, kernel_;
  std::set<int64_t> layers_;
  std::vector<int64_t> oracle_;
};

// Keeps all but the first token, only to see the window attention of every layer.
class CapturePolicy final : public RetentionPolicy {
 public:
  explicit CapturePolicy(int64_t window) : window_(window) {}
  std::string name() const override { return "capture"; }
  json params() const override { return json::object(); }
  RetentionNeeds needs() const override { return RetentionNeeds::kWindowScores; }
  EvictionTiming timing() const override { return EvictionTiming::kAfterPrefill; }
  int64_t observation_window() const override { return window_; }
  int64_t budget(const RetentionInput& in) const override { return in.length - 1; }
  at::Tensor select(const RetentionInput& in) const override {
    captured.push_back(in.window_attention.clone());
    const int64_t kv = in.positions.size(0);
    return at::arange(1, in.held(), at::kLong).expand({kv, in.held() - 1}).contiguous();
  }
  mutable std::vector<at::Tensor> captured;

 private:
  int64_t window_;
};

// Records, at every decode step, each layer's attention of the new query over the held tokens
// (mean over each KV head's query group); drops the least-attended token to stay within the
// prompt's length (TOVA's rule: the smallest change a decode-time policy can make).
class DecodeCapturePolicy final : public RetentionPolicy {
 public:
  explicit DecodeCapturePolicy(int64_t prompt) : prompt_(prompt) {}
  std::string name() const override { return "decode-capture"; }
  json params() const override { return json::object(); }
  RetentionNeeds needs() const override { return RetentionNeeds::kLastQueryScores; }
  EvictionTiming timing() const override { return EvictionTiming::kDecode; }
  int64_t budget(const RetentionInput&) const override { return prompt_; }
  at::Tensor select(const RetentionInput& in) const override {
    steps.push_back({in.layer, in.positions.clone(), in.current.clone()});
    return top_tokens(in.current, prompt_);
  }
  struct Step {
    int64_t layer;
    at::Tensor positions, attention;  // [kv_heads, held]
  };
  mutable std::vector<Step> steps;

 private:
  int64_t prompt_;
};

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoll(v) : fallback;
}

std::string run(const Transformer& model, const Tokenizer& tok, const std::vector<int64_t>& ids,
                std::shared_ptr<const RetentionPolicy> policy) {
  const ModelConfig& c = model.config();
  CompressedKVCache cache(make_codec(resolve_method({{"name", "full"}}, "p"), at::kFloat),
                          AttentionBackend::kReference, c.num_layers, c.num_kv_heads, c.head_dim,
                          std::move(policy));
  GenerationConfig g;
  g.max_new_tokens = 8;
  g.eos_token_ids = c.eos_token_ids;
  const GenerationResult r = generate(model, cache, {ids}, g);
  std::vector<int32_t> gen;
  for (int64_t t : r.sequences.front().tokens) {
    if (t == c.eos_token_ids.front()) break;
    gen.push_back(static_cast<int32_t>(t));
  }
  return tok.decode(gen, true);
}

TEST(SnapKvProbe, DISABLED_NeedleRanksAndLayerVariants) {
  c10::NoGradGuard no_grad;
  const char* dir = std::getenv("KVBENCH_PROBE_MODEL");
  const std::string path =
      dir ? dir : std::string(KVBENCH_SOURCE_DIR) + "/assets/models/kvbench-retrieval-1m";
  const std::string task =
      std::getenv("KVBENCH_PROBE_TASK") ? std::getenv("KVBENCH_PROBE_TASK") : "passkey";
  const Transformer model = Transformer::load(path);
  const Tokenizer tok = Tokenizer::load(path);
  const ModelConfig& c = model.config();
  const int64_t samples = env_int("KVBENCH_PROBE_SAMPLES", 10);
  const int64_t budget = env_int("KVBENCH_PROBE_BUDGET", 64);
  const int64_t window = env_int("KVBENCH_PROBE_WINDOW", budget / 4);
  const int64_t kernel = env_int("KVBENCH_PROBE_KERNEL", 7);
  struct Variant {
    std::string name;
    std::set<int64_t> layers;
    bool oracle;
  };
  std::vector<Variant> variants = {{"full", {}, false}};
  std::set<int64_t> all;
  for (int64_t l = 0; l < c.num_layers; ++l) all.insert(l);
  variants.push_back({"snapkv all", all, false});
  for (int64_t l = 0; l < c.num_layers; ++l)
    variants.push_back({"snapkv L" + std::to_string(l), {l}, false});
  variants.push_back({"snapkv L2-3", {2, 3}, false});
  variants.push_back({"oracle all", all, true});
  std::vector<int> solved(variants.size(), 0);
  for (int64_t i = 0; i < samples; ++i) {
    json params = {{"target_tokens", 1024},
                   {"seed", i},
                   {"depth", (static_cast<double>(i) + 0.5) / static_cast<double>(samples)}};
    const TaskSample s = make_task_sample(task, tok, params, "probe");
    const auto enc = tok.encode(s.prompt, true);
    const std::vector<int64_t> ids(enc.begin(), enc.end());
    const std::string& key = s.answers.front();
    // Byte-level tokenizer with BOS: the token of byte b is at b + 1.
    const size_t at = s.prompt.find(key);
    std::vector<int64_t> needle;
    for (size_t b = at; b < at + key.size(); ++b) needle.push_back(static_cast<int64_t>(b) + 1);
    std::vector<int64_t> sentence;  // the key with 8 tokens either side
    for (int64_t p = needle.front() - 8; p <= needle.back() + 8; ++p) sentence.push_back(p);
    // Ranks of the key digits in each layer's SnapKV scores.
    auto capture = std::make_shared<CapturePolicy>(window);
    run(model, tok, ids, capture);
    std::printf("sample %lld depth %.2f key %s at token %lld of %zu\n", static_cast<long long>(i),
                s.needle_depth, key.c_str(), static_cast<long long>(needle.front()), ids.size());
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const at::Tensor scores =
          snapkv_scores(capture->captured[static_cast<size_t>(l)], c.num_kv_heads, kernel, "max");
      for (int64_t h = 0; h < c.num_kv_heads; ++h) {
        const at::Tensor order = scores[h].argsort(0, /*descending=*/true);
        const at::Tensor rank = at::empty_like(order);
        rank.index_put_({order}, at::arange(order.size(0), at::kLong));
        int64_t best = INT64_MAX, kept = 0;
        for (int64_t p : needle) {
          const int64_t r = rank[p].item<int64_t>();
          best = std::min(best, r);
          kept += r < budget - window;
        }
        std::string top;
        for (int64_t j = 0; j < 6; ++j) {
          const int64_t p = order[j].item<int64_t>();
          top += std::to_string(p) + "'" +
                 s.prompt.substr(static_cast<size_t>(std::max<int64_t>(p - 3, 0)), 4) + "' ";
        }
        std::printf("  L%lld kv%lld: best key-digit rank %lld, digits kept %lld/%zu; top: %s\n",
                    static_cast<long long>(l), static_cast<long long>(h),
                    static_cast<long long>(best), static_cast<long long>(kept), needle.size(),
                    top.c_str());
      }
    }
    // Where each layer looks while the key is generated: the best rank of the key's digits in
    // the new query's attention at each of the first key.size() decode steps.
    auto decode = std::make_shared<DecodeCapturePolicy>(static_cast<int64_t>(ids.size()));
    run(model, tok, ids, decode);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      std::string line;
      for (const auto& st : decode->steps) {
        if (st.layer != l) continue;
        for (int64_t h = 0; h < c.num_kv_heads; ++h) {
          const at::Tensor order = st.attention[h].argsort(0, /*descending=*/true);
          const at::Tensor pos = st.positions[h].index_select(0, order);
          int64_t best = -1;
          for (int64_t r = 0; r < pos.size(0) && best < 0; ++r)
            for (int64_t p : needle) best = pos[r].item<int64_t>() == p ? r : best;
          line += std::to_string(best) + (h + 1 < c.num_kv_heads ? "/" : " ");
        }
      }
      std::printf("  decode L%lld: key-digit rank per step (kv heads /): %s\n",
                  static_cast<long long>(l), line.c_str());
    }
    for (size_t v = 0; v < variants.size(); ++v) {
      const auto& var = variants[v];
      std::shared_ptr<const RetentionPolicy> p;
      if (!var.layers.empty())
        p = std::make_shared<ProbePolicy>(budget, window, kernel, var.layers,
                                          var.oracle ? sentence : std::vector<int64_t>{});
      const std::string out = run(model, tok, ids, p);
      const bool ok = score_task_sample(task, out, s) >= 1.0;
      solved[v] += ok;
      std::printf("  %-12s -> '%s' %s\n", var.name.c_str(), out.c_str(), ok ? "ok" : "MISS");
    }
  }
  for (size_t v = 0; v < variants.size(); ++v)
    std::printf("%-12s %d/%lld\n", variants[v].name.c_str(), solved[v],
                static_cast<long long>(samples));
}

}  // namespace
}  // namespace kvbench
