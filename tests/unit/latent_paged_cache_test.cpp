// kvproj on the paged cache (latent coefficient pages, attention in the latent space) against
// the compressed cache with the same prepared codec and the reference backend (which
// reconstructs every token, U c, and attends in fp32): both store the same fp16 coefficients,
// so the outputs agree to fp32 rounding on the CPU; retention keeps the same positions; the
// nominal bytes are the same. At full rank the latent cache is the fp16 cache up to rounding.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <tuple>

#include "cache_compare.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/latent_paged_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/palu_paged_cache.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/presets.h"
#include "kvbench/suites/workload.h"
#include "paged_device.h"
#include "preparation_helpers.h"

namespace kvbench {
namespace {

constexpr int64_t kLayers = 2, kKvHeads = 2, kHeads = 4, kDim = 64;

using testing_support::Block;
// Keys with a few large channels (as real keys have), fp16-rounded like the model hands them.
Block random_block(int64_t n, at::Generator& gen) {
  at::Tensor scale = at::ones({kDim});
  scale.index_put_({at::arange(0, kDim, 13)}, 6.0);
  auto round = [](at::Tensor x) { return x.to(at::kHalf).to(at::kFloat); };
  return {round(at::randn({kHeads, n, kDim}, gen)),
          round(at::randn({kKvHeads, n, kDim}, gen) * scale),
          round(at::randn({kKvHeads, n, kDim}, gen))};
}

struct Caches {
  std::unique_ptr<KVCache> paged, reference;
  std::string unsupported;  // why the case cannot run here (then no caches)
  // CPU: the same fp16 coefficients, fp32 attention in another order (latent scores, values
  // projected once) than the reference's (reconstructed rows). GPU path: the decode kernel's
  // fp16 query and output and fast exp2 (its own tests' bound).
  double tolerance = 2e-5;
};
Caches make_caches(const std::string& entry, const at::Device& device, bool emulated = false,
                   at::ScalarType dtype = at::kHalf) {
  const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "methods[0]");
  auto codec = testing_support::ready(make_codec(method, dtype), kLayers, kKvHeads, kDim);
  auto lowrank = std::dynamic_pointer_cast<const LowRankCodec>(codec);
  return {
      std::make_unique<LatentPagedCache>(lowrank, dtype, kLayers, kKvHeads, kDim, PagedCapacity{},
                                         device, make_policy(method), emulated),
      make_kv_cache(method, codec, kLayers, kKvHeads, kDim, dtype, "reference"), "",
      device.is_cuda() || emulated ? 2e-3 : 2e-5};
}

// The caches of a (method entry, device) test parameter.
Caches param_caches(const std::tuple<const char*, const char*>& param) {
  const auto [entry, device_name] = param;
  const testing_support::PagedDevice where = testing_support::paged_device(device_name);
  if (where.device.is_cuda() && !at::hasCUDA()) return {nullptr, nullptr, "libtorch has no CUDA"};
  return make_caches(entry, where.device, where.emulated);
}

// Two interleaved sequences: prefills around the page size, decode steps across pages, a late
// block; every output compared.
void run_steps(KVCache& paged, KVCache& ref, double tolerance, int64_t first_prefill,
               const std::function<void(int64_t seq)>& after_step = {}) {
  std::vector<std::pair<int, int64_t>> steps = {{0, first_prefill}, {1, 7}};
  for (int i = 0; i < 40; ++i) steps.insert(steps.end(), {{0, 1}, {1, 1}});
  steps.push_back({1, 45});
  testing_support::compare_steps(paged, ref, kLayers, tolerance, 2, steps, random_block, 29,
                                 after_step);
}

// The bytes the cache's copies of the bases take at every layer (latent_bases_bytes).
uint64_t bases_copies(const char* entry, bool kernel_path) {
  const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
  return uint64_t(kLayers) * kKvHeads *
         latent_bases_bytes(*make_codec(method, at::kHalf), kDim, at::kHalf, kernel_path);
}

// (method entry, device): on cuda the latent pages live on the GPU and the paged decode
// kernel reads them; skipped where libtorch has no CUDA.
class LatentPagedCacheTest : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {
};

TEST_P(LatentPagedCacheTest, AttendsLikeTheReferenceCacheOverTheSameCoefficients) {
  Caches c = param_caches(GetParam());
  if (!c.unsupported.empty()) GTEST_SKIP() << c.unsupported;
  auto& latent = dynamic_cast<LatentPagedCache&>(*c.paged);
  run_steps(*c.paged, *c.reference, c.tolerance, 150);
  EXPECT_EQ(latent.latent().format().format, kernels::KvFormat::kFp16);
  EXPECT_EQ(c.paged->kept_tokens(0), std::vector<int64_t>(kLayers, 190));
  // Same coefficients, same bases: the formula's bytes agree (r values per row) but for the
  // cache's copies of the bases (counted in both: fp32 at the stored width, the key and value
  // bases unless they are the codec's tensors, the query's and output's always); the pages hold
  // rows zero-padded to the stored width (CPU: whole 32-value blocks; GPU path: 64 or 128) and
  // at most a partly filled page per sequence and layer more.
  const int64_t r = latent.rank(), w = latent.width();
  const bool kernel_path = std::string(std::get<1>(GetParam())) != "cpu";
  EXPECT_EQ(w, kernel_path ? (r <= 64 ? 64 : 128) : (r + 31) / 32 * 32);
  const uint64_t copies = bases_copies(std::get<0>(GetParam()), kernel_path);
  EXPECT_EQ(copies, uint64_t(kLayers) * kKvHeads * kDim * w * 4 * (w != r ? 4 : 2));
  EXPECT_EQ(c.paged->nominal().total(), c.reference->nominal().total() + copies);
  const uint64_t page = 2ull * 32 * kKvHeads * w * 2;
  const uint64_t padding = latent.latent().nominal().payload * uint64_t(w - r) / uint64_t(w);
  EXPECT_GE(c.paged->storage().total(), c.paged->nominal().total() + padding);
  EXPECT_LE(c.paged->storage().total(), c.paged->nominal().total() + padding + 2 * kLayers * page);
}

INSTANTIATE_TEST_SUITE_P(Ranks, LatentPagedCacheTest,
                         ::testing::Combine(::testing::Values(R"({"name": "kvproj"})",
                                                              R"({"name": "kvproj", "rank": 64})",
                                                              R"({"name": "kvproj", "rank": 48})"),
                                            ::testing::Values("cpu", "cuda", "emulated")),
                         [](const auto& i) { return testing_support::paged_case_name(i, "_p"); });

// At full rank the basis is square and orthonormal: the latent cache attends as the fp16 cache
// does, up to the rounding of the coefficients (instead of the values) to fp16.
TEST(LatentPagedCacheFullRankTest, IsTheFp16CacheUpToRounding) {
  Caches c = make_caches(R"({"name": "kvproj", "rank": 64})", at::kCPU);
  auto fp16 = make_kv_cache(resolve_method({{"name", "fp16"}}, "m"), kLayers, kKvHeads, kDim,
                            at::kHalf, "reference");
  run_steps(*c.paged, *fp16, 3e-3, 150);
}

// On a GPU the engine hands q, k and v in the model's fp16 (attend_dtype()) and takes fp16
// back. The emulated GPU path given fp16 agrees with the reference given the same values in
// fp32: batched decode steps and a short prefill through the fused projections
// (kernels/head_project.h), and a block past kProjectedRows through the batched matmuls.
TEST(LatentPagedCacheDtypeTest, TakesAndGivesTheModelsDtypeOnTheKernelPath) {
  for (const char* entry : {R"({"name": "kvproj"})", R"({"name": "kvproj", "rank": 64})",
                            R"({"name": "streamingllm", "sinks": 4, "window": 60,
                                "codec": "kvproj"})",
                            "bf16"}) {
    SCOPED_TRACE(entry);
    // A bf16 model: bf16 coefficients, activations and output (its rounding: 2^-9).
    const bool bf16 = std::string(entry) == "bf16";
    Caches c = make_caches(bf16 ? R"({"name": "kvproj"})" : entry, at::kCPU, true,
                           bf16 ? at::kBFloat16 : at::kHalf);
    std::vector<int64_t> seqs;
    for (int i = 0; i < 3; ++i) {
      seqs.push_back(c.paged->add_sequence());
      ASSERT_EQ(c.reference->add_sequence(), seqs.back());
    }
    const int64_t long_block = LatentPagedCache::kProjectedRows + 40;
    std::vector<std::vector<int64_t>> steps = {{30, long_block, 5}};
    for (int i = 0; i < 6; ++i) steps.push_back({1, 1, 1});
    steps.push_back({1, 9, 1});
    testing_support::compare_batched_steps(*c.paged, *c.reference, kLayers, bf16 ? 2e-2 : 3e-3,
                                           seqs, steps, random_block, 41, at::kCPU,
                                           bf16 ? at::kBFloat16 : at::kHalf);
  }
}

// Retention over latent pages: the inner paged cache's retained-index path, so the same
// positions as the reference cache (StreamingLLM: by position; SnapKV at full rank: scores of
// the stored latent keys equal the exact keys' up to rounding), and StreamingLLM frees pages.
class LatentPagedRetentionTest
    : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

TEST_P(LatentPagedRetentionTest, KeepsWhatTheReferenceKeeps) {
  Caches c = param_caches(GetParam());
  if (!c.unsupported.empty()) GTEST_SKIP() << c.unsupported;
  auto& latent = dynamic_cast<LatentPagedCache&>(*c.paged);
  auto& reference = dynamic_cast<CompressedKVCache&>(*c.reference);
  run_steps(*c.paged, *c.reference, c.tolerance, 400, [&](int64_t seq) {
    for (int64_t l = 0; l < kLayers; ++l)
      ASSERT_TRUE(
          at::equal(latent.latent().kept_positions(seq, l), reference.kept_positions(seq, l)))
          << "sequence " << seq << " layer " << l << " at " << latent.length(seq);
  });
  EXPECT_EQ(c.paged->kept_tokens(0), c.reference->kept_tokens(0));
  EXPECT_LT(c.paged->kept_tokens(0)[0], c.paged->length(0));  // the policy did evict
  const bool kernel_path = std::string(std::get<1>(GetParam())) != "cpu";
  EXPECT_EQ(c.paged->nominal().total(),
            c.reference->nominal().total() + bases_copies(std::get<0>(GetParam()), kernel_path));
  EXPECT_GT(c.paged->retention_seconds(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(
    Policies, LatentPagedRetentionTest,
    ::testing::Combine(::testing::Values(R"({"name": "streamingllm", "sinks": 4, "window": 60,
                              "codec": "kvproj"})",
                                         R"({"name": "snapkv", "budget": 64, "window": 8,
                              "codec": {"name": "kvproj", "rank": 64}})"),
                       ::testing::Values("cpu", "cuda", "emulated")),
    [](const auto& i) { return testing_support::paged_case_name(i, "_p"); });

TEST(LatentPagedRetentionMemoryTest, StreamingLlmFreesLatentPagesBehindItsWindow) {
  const char* entry = R"({"name": "streamingllm", "sinks": 4, "window": 60, "codec": "kvproj"})";
  Caches c = make_caches(entry, at::kCPU);
  auto& latent = dynamic_cast<LatentPagedCache&>(*c.paged);
  const int64_t seq = c.paged->add_sequence();
  auto gen = at::detail::createCPUGenerator(3);
  for (int64_t step = 0; step < 470; ++step)
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      const Block x = random_block(1, gen);
      c.paged->append_and_attend(seq, layer, x.q, x.k, x.v);
    }
  // The sink page, the window's (at most 3 pages of 32) and nothing else; besides the pages, the
  // codec's bases and the cache's copies of them.
  const uint64_t page = 2ull * 32 * kKvHeads * latent.width() * 2 * kLayers;
  const uint64_t bases = c.paged->storage().total() - latent.latent().storage().total();
  EXPECT_LE(latent.latent().storage().total(), 4 * page);
  EXPECT_EQ(bases, 2ull * kLayers * kKvHeads * kDim * latent.rank() * sizeof(float) +
                       bases_copies(entry, false));
}

// Memory plans (dry-run estimates, generation fits, the serving pool, the capacity view)
// charge the padded rows, and not Palu's key positions, which its pages hold as their slots:
// per token and latent head the formula counts 2 x 90 fp16 coefficients and an int32 position
// (364 bytes), the pages 2 x 96 coefficients (384).
TEST(LatentStorageFactorTest, MemoryPlansCountThePaddedRows) {
  auto factor = [](const char* entry, int64_t dim, bool gpu) {
    auto codec = make_codec(resolve_method(nlohmann::json::parse(entry), "m"), at::kHalf);
    return paged_storage_factor(*codec, dim, gpu);
  };
  EXPECT_DOUBLE_EQ(factor(R"({"name": "palu"})", 128, true), 384.0 / 364);
  EXPECT_DOUBLE_EQ(factor(R"({"name": "palu"})", 128, false), 384.0 / 364);
  EXPECT_DOUBLE_EQ(factor(R"({"name": "kvproj", "rank": 72})", 128, true), 128.0 / 72);
  EXPECT_DOUBLE_EQ(factor(R"({"name": "kvproj", "rank": 72})", 128, false), 96.0 / 72);
  EXPECT_DOUBLE_EQ(factor(R"({"name": "kvproj", "rank": 64})", 128, true), 1.0);
  EXPECT_DOUBLE_EQ(factor(R"({"name": "int4"})", 128, true), 1.0);
  // The cache's copies of the bases per layer and KV head at head_dim 128: fp32 [128, width] each
  // (kvproj: key, value, query, output; Palu: key and value, and its 16-bit key basis on the
  // kernel path); none of the key and value bases where they are the codec's own tensors (at
  // width = rank).
  auto copies = [](const char* entry, bool kernel_path) {
    auto codec = make_codec(resolve_method(nlohmann::json::parse(entry), "m"), at::kHalf);
    return latent_bases_bytes(*codec, 128, at::kHalf, kernel_path);
  };
  EXPECT_EQ(copies(R"({"name": "kvproj", "rank": 72})", false), 4u * 128 * 96 * 4);
  EXPECT_EQ(copies(R"({"name": "kvproj", "rank": 72})", true), 4u * 128 * 128 * 4);
  EXPECT_EQ(copies(R"({"name": "kvproj", "rank": 64})", false), 2u * 128 * 64 * 4);
  EXPECT_EQ(copies(R"({"name": "palu"})", false), 2u * 128 * 96 * 4);
  EXPECT_EQ(copies(R"({"name": "palu"})", true), 2u * 128 * 96 * 4 + 128 * 96 * 2);
  EXPECT_EQ(copies(R"({"name": "palu", "rank": 64})", false), 0u);
  EXPECT_EQ(copies(R"({"name": "int4"})", true), 0u);
  const ModelConfig config =
      parse_model_config(find_model_preset("llama-3-8b").config, "llama-3-8b");
  const nlohmann::json palu = resolve_method({{"name", "palu"}}, "m");
  EXPECT_DOUBLE_EQ(method_kv_bytes_per_token(palu, config, at::kHalf, true, true),
                   method_kv_bytes_per_token(palu, config, at::kHalf) * 384.0 / 364);
  // At a context of 10 tokens a sequence holds a whole page of 32 latent slots: the bound per
  // token there (dry-run estimates, the generation guard) is 3.2 times the rate.
  EXPECT_DOUBLE_EQ(method_kv_bytes_per_token(palu, config, at::kHalf, true, true, 10),
                   method_kv_bytes_per_token(palu, config, at::kHalf, true, true) * 32 / 10);
  EXPECT_DOUBLE_EQ(method_kv_bytes_per_token(palu, config, at::kHalf, true, true, 64),
                   method_kv_bytes_per_token(palu, config, at::kHalf, true, true));
}

// What a low-rank cache holds before any sequence (the codec's bases and, on latent pages, the
// cache's copies of them) is what method_shared_bytes plans for the dry-run estimates: on the
// CPU and on the emulated kernel path (the key and value bases at a width equal to the rank
// are the codec's own tensors), and for the CPU caches (the codec's bases alone).
TEST(LatentStorageFactorTest, SharedBytesPlanWhatAnEmptyCacheHolds) {
  ModelConfig config;
  config.num_layers = kLayers, config.num_kv_heads = kKvHeads, config.num_heads = kHeads;
  config.head_dim = kDim;
  for (const char* entry : {R"({"name": "kvproj"})", R"({"name": "kvproj", "rank": 64})",
                            R"({"name": "palu"})", R"({"name": "palu", "rank": 32})"}) {
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
    auto codec = testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim);
    auto lowrank = std::dynamic_pointer_cast<const LowRankCodec>(codec);
    for (bool emulated : {false, true}) {
      std::unique_ptr<KVCache> paged;
      if (lowrank->kind() == LowRankKind::kPalu)
        paged = std::make_unique<PaluPagedCache>(lowrank, at::kHalf, kLayers, kKvHeads, kDim,
                                                 PagedCapacity{}, at::kCPU, nullptr, emulated);
      else
        paged = std::make_unique<LatentPagedCache>(lowrank, at::kHalf, kLayers, kKvHeads, kDim,
                                                   PagedCapacity{}, at::kCPU, nullptr, emulated);
      EXPECT_EQ(paged->storage().total(),
                method_shared_bytes(method, config, at::kHalf, true, emulated))
          << entry << (emulated ? " emulated" : "");
    }
    auto cpu = make_kv_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, "cpu");
    EXPECT_EQ(cpu->storage().total(), method_shared_bytes(method, config, at::kHalf, false, false))
        << entry;
    EXPECT_GT(method_shared_bytes(method, config, at::kHalf, false, false), 0u) << entry;
  }
  EXPECT_EQ(
      method_shared_bytes(resolve_method({{"name", "kivi-4"}}, "m"), config, at::kHalf, true, true),
      0u);
}

TEST(LatentPagedCacheErrorsTest, SaysWhatCannotRunOnLatentPages) {
  auto message = [](const std::string& entry, const at::Device& device,
                    at::ScalarType dtype = at::kHalf, int64_t dim = kDim) {
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "methods[0]");
    auto codec = testing_support::ready(make_codec(method, dtype), kLayers, kKvHeads, dim);
    try {
      make_paged_cache(method, codec, kLayers, kKvHeads, dim, dtype, device);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Palu's keys are stored before RoPE: its pages have their own cache and kernel.
  EXPECT_NE(message(R"({"name": "palu", "rank": 32})", at::kCPU).find("no error"),
            std::string::npos);
  // Ranks off the pages' 32-value blocks are zero-padded, not refused; above the kernels' 128
  // on a GPU they are.
  EXPECT_EQ(message(R"({"name": "kvproj", "rank": 48})", at::kCPU), "no error");
  EXPECT_NE(message(R"({"name": "kvproj", "rank": 160})", at::Device("cuda"), at::kHalf, 256)
                .find("widths 64 and 128"),
            std::string::npos);
  EXPECT_NE(message(R"({"name": "kvproj"})", at::kCPU, at::kFloat).find("no paged format"),
            std::string::npos);
  // Without its fitted bases kvproj has no fixed format to page.
  try {
    make_kv_cache(resolve_method({{"name", "kvproj"}}, "m"), kLayers, kKvHeads, kDim, at::kHalf,
                  "paged");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prepared codec"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvbench
