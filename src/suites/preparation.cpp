#include "kvbench/suites/preparation.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <tuple>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/suites/workload.h"
#include "kvbench/workloads/word_lists.h"

namespace kvbench {
namespace {

// A full fp32 cache that also keeps every layer's incoming keys and values.
class CapturingCache final : public CompressedKVCache {
 public:
  explicit CapturingCache(const ModelConfig& c)
      : CompressedKVCache(std::make_shared<IdentityCodec>(at::kFloat), AttentionBackend::kReference,
                          c.num_layers, c.num_kv_heads, c.head_dim),
        keys(static_cast<size_t>(c.num_layers)),
        values(static_cast<size_t>(c.num_layers)) {}

  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override {
    keys[static_cast<size_t>(layer)].push_back(k.to(at::kFloat).clone());
    values[static_cast<size_t>(layer)].push_back(v.to(at::kFloat).clone());
    return CompressedKVCache::append_and_attend(seq, layer, q, k, v);
  }

  std::vector<std::vector<at::Tensor>> keys, values;
};

// Seeded sentences of the project's word lists ("the quiet river is near a brave lamp."),
// long enough to give `tokens` ids once tokenized.
std::vector<int64_t> text_prompt(const Tokenizer& tokenizer, int64_t tokens, Rng& rng) {
  const auto& adjectives = adjective_words();
  const auto& nouns = noun_words();
  static const char* const kLinks[] = {" is near ", " follows ",   " sees ",
                                       " holds ",   " waits for ", " is like "};
  auto pick = [&](const std::vector<std::string>& words) {
    return words[static_cast<size_t>(rng.below(words.size()))];
  };
  std::string text;
  std::vector<int32_t> ids;
  // Sentences added 32 at first, then as many as the text holds: each round re-tokenizes the
  // whole text, so doubling keeps a long prompt linear in its length.
  for (int sentences = 0, more = 32; static_cast<int64_t>(ids.size()) < tokens;
       sentences += more, more = sentences) {
    for (int i = 0; i < more; ++i) {
      text += "The " + pick(adjectives) + " " + pick(nouns) + kLinks[rng.below(6)] + "a " +
              pick(adjectives) + " " + pick(nouns) + ". ";
    }
    ids = tokenizer.encode(text);
  }
  return std::vector<int64_t>(ids.begin(), ids.begin() + tokens);
}

}  // namespace

std::vector<std::vector<int64_t>> calibration_prompts(const CalibrationSpec& spec, int64_t vocab,
                                                      const Tokenizer* tokenizer) {
  KVB_CHECK(spec.prompts > 0 && spec.tokens > 0, "calibration: prompts and tokens must be > 0");
  Rng rng(spec.seed);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < spec.prompts; ++i) {
    if (spec.source == "random") {
      std::vector<int64_t> p(static_cast<size_t>(spec.tokens));
      for (auto& id : p) id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
      prompts.push_back(std::move(p));
    } else {
      KVB_CHECK(spec.source == "text", "calibration: unknown calib_source '", spec.source,
                "' (known: text, random)");
      KVB_CHECK(tokenizer != nullptr,
                "calibration: calib_source \"text\" needs the model's "
                "tokenizer; none is available (use \"random\")");
      prompts.push_back(text_prompt(*tokenizer, spec.tokens, rng));
      for (int64_t& id : prompts.back()) {
        KVB_CHECK(id >= 0 && id < vocab, "calibration: token id ", id, " outside the vocabulary");
      }
    }
  }
  return prompts;
}

std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> capture_kv(
    const Transformer& model, const std::vector<std::vector<int64_t>>& prompts) {
  CapturingCache cache(model.config());
  for (const auto& p : prompts) {
    const int64_t seq = cache.add_sequence();
    model.forward({{seq, p}}, cache);
    cache.remove_sequence(seq);
  }
  std::vector<at::Tensor> keys, values;
  for (size_t l = 0; l < cache.keys.size(); ++l) {
    keys.push_back(at::cat(cache.keys[l], 1));
    values.push_back(at::cat(cache.values[l], 1));
  }
  return {keys, values};
}

void check_calibration_fits(const CalibrationSpec& spec, const ModelConfig& c) {
  KVB_CHECK(spec.prompts == 0 || c.max_position_embeddings <= 0 ||
                spec.tokens <= c.max_position_embeddings,
            "calibration: calib_tokens ", spec.tokens,
            " is more than the model's max_position_embeddings (", c.max_position_embeddings,
            "); calibration prompts must fit the model");
}

uint64_t calibration_capture_bytes(const CalibrationSpec& spec, const ModelConfig& c) {
  if (spec.prompts <= 0) return 0;
  const double values = 2.0 * static_cast<double>(spec.prompts) * static_cast<double>(spec.tokens) *
                        static_cast<double>(c.num_layers) *
                        static_cast<double>(c.num_kv_heads * c.head_dim);
  return static_cast<uint64_t>(std::min(2.0 * values * sizeof(float), 1.8e19));
}

PreparedCodec prepare_codec(std::shared_ptr<const Codec> codec, const Transformer& model,
                            const Tokenizer* tokenizer) {
  if (!codec->needs_preparation()) return {std::move(codec), nullptr};
  Stopwatch sw;
  const ModelConfig& c = model.config();
  PreparationInput in;
  in.num_layers = c.num_layers;
  in.kv_heads = c.num_kv_heads;
  in.head_dim = c.head_dim;
  in.rope_inv_freq = rope_inverse_frequencies(c);
  for (const auto& w : model.weights().layers) {
    in.k_proj.push_back(w.k_proj);
    in.v_proj.push_back(w.v_proj);
  }
  const CalibrationSpec spec = codec->calibration();
  nlohmann::json calibration = nullptr;
  check_calibration_fits(spec, c);
  if (spec.prompts > 0) {
    // Refused by name before the capture, not by running out of memory in it (on a GPU beside
    // the weights there, as check_fits_on measures the device's whole memory).
    const bool gpu = !model.placement().device.is_cpu();
    check_fits_on(
        model.placement(), calibration_capture_bytes(spec, c) + (gpu ? model.weight_bytes() : 0),
        "calibration of " + codec->name() + " (" + std::to_string(spec.prompts) + " prompts of " +
            std::to_string(spec.tokens) + " tokens, fp32 keys and values of every layer)");
    const auto prompts = calibration_prompts(spec, c.vocab_size, tokenizer);
    std::tie(in.keys, in.values) = capture_kv(model, prompts);
    calibration = {{"prompts", spec.prompts},
                   {"tokens_per_prompt", spec.tokens},
                   {"tokens", spec.prompts * spec.tokens},
                   {"source", spec.source},
                   {"seed", spec.seed}};
  }
  PreparedCodec out{codec->prepare(in), nullptr};
  const double seconds = sw.seconds();
  out.report = {{"codec", codec->name()},
                {"timed", false},
                {"duration_s", seconds},
                {"inputs", spec.prompts > 0 ? "calibration keys (RoPE applied) and values"
                                            : "the model's W_k and W_v"},
                {"calibration", calibration}};
  spdlog::info("prepare: codec {} fitted in {:.2f} s (not timed)", codec->name(), seconds);
  return out;
}

}  // namespace kvbench
