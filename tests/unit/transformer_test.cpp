// The transformer against a naive float64 reference written from the published equations,
// and decode through the KV cache against recomputing the whole sequence.
//
// Conventions the reference states explicitly (as in Hugging Face transformers):
//  - RMSNorm: x / sqrt(mean(x^2) + eps) * w.
//  - RoPE, rotate_half layout: dimension i pairs with i + d/2 (not i with i+1);
//    out_i = x_i cos(p f_i) - x_{i+d/2} sin(p f_i), out_{i+d/2} = x_{i+d/2} cos + x_i sin,
//    f_i = inverse frequency i (with the config's scaling).
//  - Qwen3 qk-norm: RMSNorm over head_dim of each q/k head, after projection, before RoPE.
//  - GQA: query head h reads KV head h / (heads / kv_heads).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/transformer.h"

namespace kvbench {
namespace {

using Vec = std::vector<double>;

Vec to_vec(const at::Tensor& t) {
  at::Tensor d = t.to(at::kDouble).contiguous();
  return Vec(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

struct Dense {  // a weight matrix [rows, cols] in float64
  Vec w;
  int64_t rows = 0, cols = 0;
  Vec b;
  Dense() = default;
  Dense(const at::Tensor& weight, const at::Tensor& bias)
      : w(to_vec(weight)), rows(weight.size(0)), cols(weight.size(1)) {
    if (bias.defined()) b = to_vec(bias);
  }
  Vec operator()(const Vec& x) const {
    Vec y(rows, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double acc = b.empty() ? 0.0 : b[r];
      for (int64_t c = 0; c < cols; ++c) acc += w[r * cols + c] * x[c];
      y[r] = acc;
    }
    return y;
  }
};

Vec rms(const Vec& x, const Vec& w, double eps, size_t off = 0, size_t n = 0) {
  if (n == 0) n = x.size();
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[off + i] * x[off + i];
  const double inv = 1.0 / std::sqrt(ss / n + eps);
  Vec y(n);
  for (size_t i = 0; i < n; ++i) y[i] = x[off + i] * inv * w[i];
  return y;
}

// Logits [tokens][vocab] for every position of `ids`, token by token.
std::vector<Vec> naive_forward(const Transformer& model, const std::vector<int64_t>& ids) {
  const ModelConfig& c = model.config();
  const ModelWeights& W = model.weights();
  const int64_t H = c.num_heads, KV = c.num_kv_heads, D = c.head_dim, G = H / KV;
  const Vec inv_freq = to_vec(rope_inverse_frequencies(c));
  const Vec embed = to_vec(W.embed);
  auto rope = [&](Vec& v, int64_t head, int64_t pos) {
    for (int64_t i = 0; i < D / 2; ++i) {
      const double a = pos * inv_freq[i], x1 = v[head * D + i], x2 = v[head * D + i + D / 2];
      v[head * D + i] = x1 * std::cos(a) - x2 * std::sin(a);
      v[head * D + i + D / 2] = x2 * std::cos(a) + x1 * std::sin(a);
    }
  };
  std::vector<Vec> xs;
  for (int64_t id : ids)
    xs.emplace_back(embed.begin() + id * c.hidden_size, embed.begin() + (id + 1) * c.hidden_size);
  const int64_t T = static_cast<int64_t>(ids.size());
  for (const LayerWeights& L : W.layers) {
    Dense q(L.q_proj, L.q_bias), k(L.k_proj, L.k_bias), v(L.v_proj, L.v_bias),
        o(L.o_proj, L.o_bias);
    Dense gate(L.gate_proj, L.gate_bias), up(L.up_proj, L.up_bias), down(L.down_proj, L.down_bias);
    const Vec in_norm = to_vec(L.input_norm), post_norm = to_vec(L.post_norm);
    std::vector<Vec> Q(T), K(T), V(T);
    for (int64_t t = 0; t < T; ++t) {
      Vec h = rms(xs[t], in_norm, c.rms_norm_eps);
      Q[t] = q(h), K[t] = k(h), V[t] = v(h);
      if (c.qk_norm) {
        const Vec qn = to_vec(L.q_norm), kn = to_vec(L.k_norm);
        for (int64_t hd = 0; hd < H; ++hd) {
          Vec r = rms(Q[t], qn, c.rms_norm_eps, hd * D, D);
          std::copy(r.begin(), r.end(), Q[t].begin() + hd * D);
        }
        for (int64_t hd = 0; hd < KV; ++hd) {
          Vec r = rms(K[t], kn, c.rms_norm_eps, hd * D, D);
          std::copy(r.begin(), r.end(), K[t].begin() + hd * D);
        }
      }
      for (int64_t hd = 0; hd < H; ++hd) rope(Q[t], hd, t);
      for (int64_t hd = 0; hd < KV; ++hd) rope(K[t], hd, t);
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec attn(H * D, 0.0);
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t kvh = hd / G;
        Vec s(t + 1);
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += Q[t][hd * D + d] * K[j][kvh * D + d];
          s[j] = dot / std::sqrt(double(D));
          mx = std::max(mx, s[j]);
        }
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t d = 0; d < D; ++d) attn[hd * D + d] += s[j] / sum * V[j][kvh * D + d];
      }
      Vec out = o(attn);
      for (int64_t i = 0; i < c.hidden_size; ++i) xs[t][i] += out[i];
      Vec h = rms(xs[t], post_norm, c.rms_norm_eps);
      Vec g = gate(h), u = up(h);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      Vec m = down(g);
      for (int64_t i = 0; i < c.hidden_size; ++i) xs[t][i] += m[i];
    }
  }
  Dense head(W.lm_head, at::Tensor());
  const Vec final_norm = to_vec(W.norm);
  std::vector<Vec> logits;
  for (const auto& x : xs) logits.push_back(head(rms(x, final_norm, c.rms_norm_eps)));
  return logits;
}

Transformer preset_model(const std::string& name, uint64_t seed = 3) {
  return Transformer::random(parse_model_config(find_model_preset(name).config, name), seed);
}

FullKVCache cache_for(const Transformer& m, at::ScalarType dtype = at::kFloat) {
  const ModelConfig& c = m.config();
  return FullKVCache(c.num_layers, c.num_kv_heads, c.head_dim, dtype);
}

double rel_error(const at::Tensor& got, const at::Tensor& want) {
  return ((got.to(at::kDouble) - want.to(at::kDouble)).norm() / want.to(at::kDouble).norm())
      .item<double>();
}

const std::vector<int64_t> kIds = {1, 17, 300, 42, 42, 511, 7, 128, 3};

class PerArchitecture : public ::testing::TestWithParam<std::string> {};

// Oracle (a): fp32 libtorch forward against float64 loops; fp32 rounding over 4 layers stays
// far below 1e-4 relative error.
TEST_P(PerArchitecture, ForwardMatchesNaiveFloat64Reference) {
  Transformer m = preset_model(GetParam());
  FullKVCache cache = cache_for(m);
  const int64_t seq = cache.add_sequence();
  at::Tensor got = m.forward({{seq, kIds}}, cache, /*all_logits=*/true);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{int64_t(kIds.size()), m.config().vocab_size}));
  std::vector<Vec> want = naive_forward(m, kIds);
  at::Tensor want_t = at::empty({int64_t(want.size()), m.config().vocab_size}, at::kDouble);
  for (size_t t = 0; t < want.size(); ++t)
    for (size_t v = 0; v < want[t].size(); ++v) want_t[t][v] = want[t][v];
  EXPECT_LT(rel_error(got, want_t), 1e-4) << GetParam();
  EXPECT_GT(want_t.std().item<double>(), 1e-3);  // logits are not trivially flat
}

// Oracle (b): decoding token by token through the cache equals recomputing the whole
// sequence from scratch at every step (fp32 cache: 1e-5; bf16 cache: 1e-3, because OpenBLAS
// sums a block of 8 rows in another order than a single row, so the two paths' fp32 keys and
// values can differ in the last bit and a few of them round to neighbouring bf16 values,
// each a 2^-9 relative change; measured 2.8e-4 on tiny-qwen3).
TEST_P(PerArchitecture, CachedDecodeEqualsRecomputation) {
  Transformer m = preset_model(GetParam());
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    FullKVCache cache = cache_for(m, dtype);
    const int64_t seq = cache.add_sequence();
    std::vector<int64_t> prompt(kIds.begin(), kIds.begin() + 4);
    m.forward({{seq, prompt}}, cache);
    for (size_t t = 4; t < kIds.size(); ++t) {
      at::Tensor step = m.forward({{seq, {kIds[t]}}}, cache);
      FullKVCache fresh = cache_for(m, dtype);
      const int64_t s2 = fresh.add_sequence();
      std::vector<int64_t> prefix(kIds.begin(), kIds.begin() + t + 1);
      at::Tensor full = m.forward({{s2, prefix}}, fresh);
      EXPECT_LT(rel_error(step, full), dtype == at::kFloat ? 1e-5 : 1e-3)
          << GetParam() << " step " << t << " dtype " << dtype_name(dtype);
    }
    EXPECT_EQ(cache.length(seq), int64_t(kIds.size()));
  }
}

// Packing sequences of different lengths into one step gives each the logits it gets alone.
TEST_P(PerArchitecture, BatchedSequencesMatchSingleRuns) {
  Transformer m = preset_model(GetParam());
  const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7}, {9}, {100, 200, 300, 400, 5}};
  FullKVCache batched = cache_for(m);
  std::vector<SequenceStep> steps;
  for (const auto& p : prompts) steps.push_back({batched.add_sequence(), p});
  at::Tensor together = m.forward(steps, batched);
  at::Tensor next = m.forward({{steps[0].seq, {1}}, {steps[2].seq, {2}}}, batched);
  for (size_t i = 0; i < prompts.size(); ++i) {
    FullKVCache alone = cache_for(m);
    const int64_t s = alone.add_sequence();
    at::Tensor one = m.forward({{s, prompts[i]}}, alone);
    EXPECT_LT(rel_error(together[int64_t(i)], one[0]), 1e-5);
    if (i != 1) {
      at::Tensor one_next = m.forward({{s, {i == 0 ? 1 : 2}}}, alone);
      EXPECT_LT(rel_error(next[i == 0 ? 0 : 1], one_next[0]), 1e-5);
    }
  }
}

// Chunked prefill (the serving scheduler's): a prompt fed in chunks, each appended to a cache
// that already holds the earlier ones, and packed with another sequence's decode, gives the
// logits of a one-shot prefill at every position (1e-4 relative and absolute; fp32 and bf16
// caches: both paths read the same stored K/V).
TEST_P(PerArchitecture, ChunkedPrefillEqualsOneShotPrefill) {
  Transformer m = preset_model(GetParam());
  Rng rng(11);
  std::vector<int64_t> prompt(150);
  for (auto& t : prompt)
    t = static_cast<int64_t>(rng.below(static_cast<uint64_t>(m.config().vocab_size)));
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    FullKVCache one = cache_for(m, dtype);
    const int64_t s1 = one.add_sequence();
    at::Tensor want = m.forward({{s1, prompt}}, one, /*all_logits=*/true);
    FullKVCache chunked = cache_for(m, dtype);
    const int64_t other = chunked.add_sequence();
    m.forward({{other, {5, 6, 7}}}, chunked);
    const int64_t s2 = chunked.add_sequence();
    std::vector<at::Tensor> parts;
    size_t pos = 0;
    for (size_t len : {37u, 1u, 64u, 48u}) {
      std::vector<int64_t> chunk(prompt.begin() + static_cast<long>(pos),
                                 prompt.begin() + static_cast<long>(pos + len));
      // The other sequence decodes in the same step, as in a serving step.
      at::Tensor got = m.forward({{other, {9}}, {s2, chunk}}, chunked, /*all_logits=*/true);
      parts.push_back(got.narrow(0, 1, static_cast<int64_t>(len)));
      pos += len;
    }
    ASSERT_EQ(pos, prompt.size());
    EXPECT_EQ(chunked.length(s2), 150);
    at::Tensor got = at::cat(parts, 0);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(rel_error(got, want), 1e-4) << GetParam() << " " << dtype_name(dtype);
    EXPECT_LT((got - want).abs().max().item<double>(), 1e-4)
        << GetParam() << " " << dtype_name(dtype);
    // And decoding after either gives the same next logits.
    at::Tensor a = m.forward({{s1, {3}}}, one), b = m.forward({{s2, {3}}}, chunked);
    EXPECT_LT((a - b).abs().max().item<double>(), 1e-4);
  }
}

TEST_P(PerArchitecture, CheckpointRoundTrip) {
  const ModelPreset& preset = find_model_preset(GetParam());
  auto dir = std::filesystem::temp_directory_path() / ("kvbench_ckpt_" + GetParam());
  std::filesystem::remove_all(dir);
  write_preset_checkpoint(preset, dir.string(), 5);
  Transformer loaded = Transformer::load(dir.string());
  // The written weights are the random ones rounded to the preset's storage dtype.
  Transformer original = preset_model(GetParam(), 5);
  const at::ScalarType dtype = dtype_from_name(preset.config["torch_dtype"]);
  EXPECT_TRUE(at::equal(loaded.weights().embed, original.weights().embed.to(dtype).to(at::kFloat)));
  EXPECT_TRUE(at::equal(loaded.weights().layers[3].down_proj,
                        original.weights().layers[3].down_proj.to(dtype).to(at::kFloat)));
  EXPECT_EQ(loaded.config().eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(loaded.weight_bytes(), original.weight_bytes());
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Presets, PerArchitecture,
                         ::testing::Values("tiny-llama", "tiny-mistral", "tiny-qwen2",
                                           "tiny-qwen3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

TEST(Transformer, ADecodeStepReadsOnlyItsBatchsRowsOfAnUntiedEmbedding) {
  for (const char* name : {"tiny-llama", "tiny-qwen2"}) {
    const Transformer m =
        Transformer::random(parse_model_config(find_model_preset(name).config, name), 1);
    const ModelConfig& c = m.config();
    const uint64_t row = uint64_t(c.hidden_size) * 4;  // fp32 on the CPU
    for (int64_t batch : {1, 7}) {
      const uint64_t expected = c.tie_word_embeddings
                                    ? m.weight_bytes()  // the lm_head reads the whole matrix
                                    : m.weight_bytes() - uint64_t(c.vocab_size - batch) * row;
      EXPECT_EQ(m.decode_step_weight_bytes(batch), expected) << name << " batch " << batch;
    }
  }
  // One of each kind: the test covers both branches.
  EXPECT_FALSE(parse_model_config(find_model_preset("tiny-llama").config, "l").tie_word_embeddings);
  EXPECT_TRUE(parse_model_config(find_model_preset("tiny-qwen2").config, "q").tie_word_embeddings);
}

TEST(Transformer, RejectsTokensOutsideTheVocabulary) {
  Transformer m = preset_model("tiny-llama");
  FullKVCache cache = cache_for(m);
  const int64_t s = cache.add_sequence();
  EXPECT_THROW(m.forward({{s, {512}}}, cache), Error);
  EXPECT_THROW(m.forward({{s, {}}}, cache), Error);
}

TEST(Transformer, CheckpointWithWrongShapeIsRejected) {
  auto dir = std::filesystem::temp_directory_path() / "kvbench_ckpt_wrong_shape";
  std::filesystem::remove_all(dir);
  nlohmann::json config = find_model_preset("tiny-llama").config;
  write_checkpoint(preset_model("tiny-llama"), config, dir.string());
  config["intermediate_size"] = 320;  // the config no longer matches the tensors
  std::ofstream(dir / "config.json") << config.dump();
  try {
    Transformer::load(dir.string());
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("mlp.gate_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [320, 128]"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

// A bf16 weight past float16's range would become inf when a GPU run computes in fp16: the load
// names the tensor instead of every output turning NaN. (fp16 compute is refused on the CPU.)
TEST(Transformer, AWeightPastFloat16sRangeIsNamedAtAnFp16Load) {
  if (!at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA (or no GPU is visible)";
  auto dir = std::filesystem::temp_directory_path() / "kvbench_ckpt_fp16_range";
  std::filesystem::remove_all(dir);
  const nlohmann::json config = find_model_preset("tiny-llama").config;
  Transformer m = preset_model("tiny-llama");
  m.weights().layers[0].q_proj.view(-1)[0] = 1e5;  // bf16 holds it; fp16 does not
  write_checkpoint(m, config, dir.string());
  try {
    Transformer::load(dir.string(), ModelPlacement{at::Device(at::kCUDA, 0), at::kHalf});
    FAIL() << "a weight past fp16's range loaded as fp16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("past float16's range"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// The generation config carries the model's own ids as its config has them (an EOS list, no
// BOS), never invented ones, which would win at load; a config the parser accepts is written.
TEST(Transformer, ACheckpointKeepsItsConfigsOwnTokenIds) {
  auto dir = std::filesystem::temp_directory_path() / "kvbench_ckpt_ids";
  std::filesystem::remove_all(dir);
  nlohmann::json config = find_model_preset("tiny-llama").config;
  config.erase("bos_token_id");
  config["eos_token_id"] = {2, 3};
  const Transformer model = Transformer::random(parse_model_config(config, "ids"), 1);
  write_checkpoint(model, config, dir.string());
  const nlohmann::json generation =
      nlohmann::json::parse(std::ifstream(dir / "generation_config.json"));
  EXPECT_FALSE(generation.contains("bos_token_id")) << generation.dump();
  EXPECT_EQ(generation["eos_token_id"], nlohmann::json({2, 3}));
  const ModelConfig back = load_model_config(dir.string());
  EXPECT_EQ(back.eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_FALSE(back.bos_token_id.has_value());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvbench
