// The paged cache (the GPU path's storage and oracle, run on the CPU) against the compressed
// cache with the reference backend, method by method: the same tokens, appended as prefills
// and decode steps of two interleaved sequences, must give the same attention outputs (the two
// store the same values: the paged formats decode like the CPU codecs) and the same nominal
// bytes; what the pages hold beyond that is paging overhead, bounded by a page per sequence
// and layer plus the rings.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <string>
#include <tuple>

#include "kvbench/core/error.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/paged_cache.h"

namespace kvbench {
namespace {

// (method entry, device): on cuda the pools live on the GPU and the kernels of kernels/ append,
// decode and dequantize; skipped where libtorch has no CUDA.
class PagedCacheTest : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

constexpr int64_t kLayers = 2, kKvHeads = 2, kHeads = 4, kDim = 64;

// Random q/k/v of one block rounded to the paged input dtype, so both caches see the same
// numbers (the paged path rounds its input, the CPU codecs may not).
struct Block {
  at::Tensor q, k, v;
};
Block random_block(int64_t n, at::ScalarType dtype, at::Generator& gen) {
  at::Tensor scale = at::ones({kDim});
  scale.index_put_({at::arange(0, kDim, 13)}, 6.0);  // outlier key channels
  auto round = [&](at::Tensor x) { return x.to(dtype).to(at::kFloat); };
  return {round(at::randn({kHeads, n, kDim}, gen)),
          round(at::randn({kKvHeads, n, kDim}, gen) * scale),
          round(at::randn({kKvHeads, n, kDim}, gen))};
}

TEST_P(PagedCacheTest, AttendsLikeTheReferenceCacheOverTheSameStoredValues) {
  const auto [entry, device_name] = GetParam();
  const at::Device device(device_name);
  if (device.is_cuda() && !at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA";
  const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "methods[0]");
  const PagedFormat format = paged_format_for(method, at::kHalf);
  // Pools of 2 pages and 1 slot: they grow several times on the way (copying what they hold).
  PagedKVCache paged(format, kLayers, kKvHeads, kDim, PagedCapacity{2, 0, 1}, device);
  const bool bf16 = format.format == kernels::KvFormat::kBf16;
  // The same values attended: fp32 rounding on the CPU; the GPU decode kernel's fp16 (bf16)
  // output and fast exp2 (its own tests' bounds).
  const double tolerance = device.is_cpu() ? 1e-5 : (bf16 ? 8e-3 : 2e-3);
  auto ref = make_kv_cache(method, kLayers, kKvHeads, kDim, at::kHalf, "reference");
  const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kHalf;
  auto gen = at::detail::createCPUGenerator(17);

  const int64_t a = paged.add_sequence(), b = paged.add_sequence();
  ASSERT_EQ(ref->add_sequence(), a);
  ASSERT_EQ(ref->add_sequence(), b);
  // Prefills around the window and page sizes, then decode steps crossing several of both.
  std::vector<std::pair<int64_t, int64_t>> steps = {{a, 150}, {b, 7}};
  for (int i = 0; i < 70; ++i) steps.insert(steps.end(), {{a, 1}, {b, 1}});
  steps.push_back({b, 45});
  for (const auto& [seq, n] : steps)
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      const Block x = random_block(n, dtype, gen);
      const at::Tensor got = paged.append_and_attend(seq, layer, x.q, x.k, x.v);
      const at::Tensor want = ref->append_and_attend(seq, layer, x.q, x.k, x.v);
      ASSERT_EQ(got.sizes(), want.sizes());
      const double rel = ((got - want).norm() / want.norm()).item<double>();
      ASSERT_LT(rel, tolerance) << "sequence " << seq << " at " << paged.length(seq) << " tokens, "
                                << n << " new, layer " << layer;
    }
  EXPECT_EQ(paged.length(a), 220);
  EXPECT_EQ(paged.kept_tokens(b), std::vector<int64_t>(kLayers, 122));
  EXPECT_EQ(paged.nominal().total(), ref->nominal().total());
  EXPECT_EQ(paged.nominal().metadata, ref->nominal().metadata);
  // Paging overhead: at most one partly filled page per sequence and layer, plus the rings.
  const uint64_t page =
      kernels::bytes_per_token(format.format, format.page_size, kDim) * format.page_size * kKvHeads;
  const uint64_t rings = 2 * 2 * kKvHeads * format.residual * kDim * 2;
  EXPECT_GE(paged.storage().total(), paged.nominal().total());
  EXPECT_LE(paged.storage().total(), paged.nominal().total() + kLayers * (2 * page + rings));
}

INSTANTIATE_TEST_SUITE_P(
    Methods, PagedCacheTest,
    ::testing::Combine(::testing::Values(R"({"name": "full"})", R"({"name": "fp16"})",
                                         R"({"name": "bf16"})", R"({"name": "int8"})",
                                         R"({"name": "int4", "symmetric": true})",
                                         R"({"name": "fp8"})",
                                         R"({"name": "fp8", "granularity": "layer"})",
                                         R"({"name": "kivi-2", "group": 32, "residual": 64})",
                                         R"({"name": "kivi-4", "group": 16, "residual": 32})",
                                         R"({"name": "kivi-2"})"),
                       ::testing::Values("cpu", "cuda")),
    [](const auto& i) {
      return std::string(std::get<1>(i.param)) + "_m" + std::to_string(i.index / 2);
    });

TEST(PagedCacheErrorsTest, CudaWithoutCudaSaysWhy) {
  if (at::hasCUDA()) GTEST_SKIP() << "libtorch has CUDA here";
  try {
    PagedKVCache cache(PagedFormat{}, 1, kKvHeads, kDim, PagedCapacity{}, at::Device("cuda"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("paged cache: device cuda"), std::string::npos)
        << e.what();
  }
}

TEST(PagedCacheErrorsTest, MethodsWithoutAPagedFormatSayWhatExists) {
  auto why = [](const char* entry, at::ScalarType dtype = at::kHalf) {
    try {
      paged_format_for(resolve_method(nlohmann::json::parse(entry), "methods[0]"), dtype);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(why(R"({"name": "int4"})").find("q4_1"), std::string::npos);
  EXPECT_NE(why(R"({"name": "snapkv"})").find("evicts"), std::string::npos);
  EXPECT_NE(why(R"({"name": "full"})", at::kFloat).find("Float"), std::string::npos);
  EXPECT_NE(why(R"({"name": "gear"})").find("paged formats: full/fp16/bf16"), std::string::npos);
  EXPECT_NE(why(R"({"name": "kivi-4", "group": 8, "residual": 64})").find("group"),
            std::string::npos);
}

TEST(PagedCacheErrorsTest, RunningOutOfALimitedPoolSaysHowManyPagesWereNeeded) {
  PagedFormat f;  // fp16, pages of 16 tokens
  PagedKVCache cache(f, 1, kKvHeads, kDim, PagedCapacity{4, 4, 1});
  auto gen = at::detail::createCPUGenerator(3);
  const int64_t s = cache.add_sequence();
  const Block x = random_block(60, at::kHalf, gen);
  cache.append_and_attend(s, 0, x.q, x.k, x.v);  // 4 pages
  EXPECT_EQ(cache.free_pages(), 0);
  const Block y = random_block(5, at::kHalf, gen);
  try {
    cache.append_and_attend(s, 0, y.q, y.k, y.v);
    FAIL() << "expected an out-of-pages error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 5 pages"), std::string::npos) << e.what();
  }
  cache.remove_sequence(s);
  EXPECT_EQ(cache.free_pages(), 4);                  // pages come back
  for (int i = 0; i < 3; ++i) cache.add_sequence();  // slots grow past the first one
}

}  // namespace
}  // namespace kvbench
