// Palu on the GPU path. Two layers of checks:
//  - the decode kernel's host reference (kernels/palu_decode.h) against float64 on random
//    paged problems (fp16 and bf16, head_dim 64 and 128, ranks 32 to 128, lengths across tiles
//    and pages): both round keys and queries to 16-bit, so what is left is fp32 arithmetic and
//    the composed RoPE tables, plus the odd 16-bit rounding that lands on the other side;
//  - PaluPagedCache against the compressed cache with the same prepared codec and the
//    reference backend (which stores the same fp16 latents, reconstructs every token and
//    attends in fp32): on the CPU path within fp32 rounding; on the kernel path (emulated:
//    the host reference in place of the kernel) within the 16-bit rounding of keys and queries.
//    At full rank the basis is orthonormal and square: the cache is the fp16 cache up to rounding.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <array>
#include <functional>
#include <string>
#include <tuple>

#include "cache_compare.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/palu_paged_cache.h"
#include "op_counter.h"
#include "paged_device.h"
#include "palu_case.h"
#include "preparation_helpers.h"

namespace kvbench {
namespace {

TEST(PaluDecodeHostTest, MatchesFloat64) {
  struct Shape {
    int kv, per, d, r;
    bool bf16;
    int group;
    int page = 32;
  };
  for (const bool evict : {false, true})
    for (const Shape& s : {Shape{2, 4, 128, 96, false, 1}, Shape{2, 4, 128, 128, true, 1},
                           Shape{1, 8, 64, 32, false, 1}, Shape{2, 2, 64, 64, true, 1},
                           Shape{4, 2, 128, 128, false, 4}, Shape{4, 2, 64, 64, true, 2},
                           Shape{4, 2, 64, 64, true, 2, 16}, Shape{2, 3, 64, 96, false, 1, 48}}) {
      // With `evict`: every token, a list and a tail, a tail alone, every token.
      const gpu_test::PaluCase c = gpu_test::palu_case(
          s.kv, s.per, s.d, s.r, s.bf16, {1, 17, 100, 250}, 5 + s.r, s.page, s.group, evict);
      std::vector<float> got(c.want.size(), NAN),
          scratch(size_t(2 * c.head_dim + c.rank + c.max_len())), scores(c.want_scores.size(), NAN);
      kernels::PaluProblem p = c.problem(got.data());
      p.scores = scores.data(), p.score_stride = c.max_len();
      ASSERT_STREQ(kernels::palu_check(p), "");
      if (evict) {
        ASSERT_GT(c.counts[1], 0);  // a list and a tail
        ASSERT_LT(c.attended(1), c.lens[1]);
        ASSERT_EQ(c.counts[2], 0);  // a tail alone
        ASSERT_LT(c.attended(2), c.lens[2]);
      }
      kernels::palu_decode_host(p, scratch.data());
      // Measured: ~1e-7 (fp16) and ~1e-6 (bf16); a key element that rounds to the neighbouring
      // 16-bit value moves its score by one unit in the last place of that value.
      EXPECT_LT(gpu_test::scaled_error(got, c.want), s.bf16 ? 2e-4 : 2e-5)
          << "d " << s.d << " r " << s.r << " g " << s.group << " page " << s.page
          << (s.bf16 ? " bf16" : " fp16") << (evict ? " evicted" : "");
      // The scores it softmaxes, where a policy's record reads them: each attended token's,
      // nothing past a count. A key element rounded to the neighbouring 16-bit value moves a
      // score by |q_c| times that value's step, which the output averages away but a score shows
      // whole: measured up to 7e-5 (fp16) and 2.2e-4 (bf16).
      std::vector<float> written;
      std::vector<double> expected;
      for (size_t i = 0; i < scores.size(); ++i) {
        if (std::isnan(c.want_scores[i])) {
          EXPECT_TRUE(std::isnan(scores[i])) << "written past a count at " << i;
          continue;
        }
        written.push_back(scores[i]), expected.push_back(c.want_scores[i]);
      }
      EXPECT_LT(gpu_test::scaled_error(written, expected), s.bf16 ? 2e-3 : 3e-4)
          << "d " << s.d << " r " << s.r << " g " << s.group << " page " << s.page
          << (s.bf16 ? " bf16" : " fp16") << (evict ? " evicted" : "");
    }
}

// The kept lists are read as listed: a list that names other positions attends other tokens
// (the reference does not fall back to every token or the slots in order).
TEST(PaluDecodeHostTest, ReadsTheKeptTokensOnly) {
  gpu_test::PaluCase c = gpu_test::palu_case(2, 4, 64, 32, false, {60, 60}, 9, 32, 1, true);
  std::vector<float> got(c.want.size(), NAN), scratch(size_t(2 * 64 + 32 + 60));
  kernels::palu_decode_host(c.problem(got.data()), scratch.data());
  ASSERT_LT(gpu_test::scaled_error(got, c.want), 2e-5);
  std::swap(c.lists[1][0], c.lists[1][size_t(c.counts[1]) - 1]);  // head 0: other order
  kernels::palu_decode_host(c.problem(got.data()), scratch.data());
  EXPECT_LT(gpu_test::scaled_error(got, c.want), 2e-5);
  c.lists[1][0] = c.tails[1] - 1 == c.lists[1][0] ? 0 : c.tails[1] - 1;  // another token
  for (int x : c.lists[1]) ASSERT_LT(x, c.tails[1]);
  kernels::palu_decode_host(c.problem(got.data()), scratch.data());
  EXPECT_GT(gpu_test::scaled_error(got, c.want), 1e-4);
}

TEST(PaluDecodeHostTest, RejectsWhatTheKernelCannotTake) {
  const gpu_test::PaluCase c = gpu_test::palu_case(2, 4, 64, 32, false, {5}, 1);
  std::vector<float> out(c.q.size());
  auto with = [&](const std::function<void(kernels::PaluProblem&)>& change) {
    kernels::PaluProblem p = c.problem(out.data());
    change(p);
    return std::string(kernels::palu_check(p));
  };
  EXPECT_EQ(with([](auto&) {}), "");
  EXPECT_NE(with([](auto& p) { p.rank = 48; }), "");
  EXPECT_NE(with([](auto& p) { p.head_dim = 96; }), "");
  EXPECT_NE(with([](auto& p) { p.q_heads = 32; }), "");  // 16 per KV head
  EXPECT_NE(with([](auto& p) { p.page_size = 24; }), "");
  EXPECT_NE(with([](auto& p) { p.rope_fine = nullptr; }), "");
  EXPECT_NE(with([](auto& p) { p.group = 3; }), "");  // does not divide 2 KV heads
  // A grid's y and z (and the combine's x and y).
  EXPECT_EQ(with([](auto& p) { p.batch = 65536; }), "at most 65535 sequences and KV heads");
  EXPECT_EQ(with([](auto& p) { p.kv_heads = 65536, p.q_heads = 65536, p.group = 1; }),
            "at most 65535 sequences and KV heads");
  static const int counts[1] = {0}, tails[1] = {0};
  EXPECT_NE(with([](auto& p) { p.kept_counts = counts; }), "");  // lists without the rest
  EXPECT_EQ(with([&](auto& p) { p.scores = out.data(); }), "scores need a positive score_stride");
  // fp32 queries and outputs, or 16-bit both.
  std::vector<uint16_t> q16(c.q.size()), out16(out.size());
  const std::string io = "queries and outputs: fp32 q and out, or 16-bit q16 and out16";
  EXPECT_EQ(with([&](auto& p) { p.q = nullptr, p.out = nullptr, p.q16 = q16.data(); }), io);
  EXPECT_EQ(with([&](auto& p) { p.out16 = out16.data(); }), io);
  EXPECT_EQ(with([&](auto& p) { p.q = nullptr, p.q16 = q16.data(), p.out16 = out16.data(); }), io);
  EXPECT_EQ(with([&](auto& p) {
              p.q = nullptr, p.out = nullptr, p.q16 = q16.data(), p.out16 = out16.data();
            }),
            "");
  EXPECT_EQ(with([](auto& p) {
              static const int* const lists[1] = {nullptr};
              p.kept_lists = lists, p.kept_counts = counts, p.tail_start = tails;
            }),
            "");
}

constexpr int64_t kLayers = 2, kKvHeads = 2, kHeads = 8, kDim = 128;
// The CPU path against the reference cache: fp32 products summed in the order of the BLAS
// kernels the CPU selects (2.3e-5 relative seen on an AVX-512 machine, under 2e-5 on others).
constexpr double kCpuTolerance = 5e-5;

using testing_support::Block;
// Keys with a few large channels (as real keys have), fp16-rounded like the model hands them.
Block random_block(int64_t n, at::Generator& gen) {
  at::Tensor scale = at::ones({kDim});
  scale.index_put_({at::arange(0, kDim, 13)}, 4.0);
  auto round = [](at::Tensor x) { return x.to(at::kHalf).to(at::kFloat); };
  return {round(at::randn({kHeads, n, kDim}, gen) * 0.3),
          round(at::randn({kKvHeads, n, kDim}, gen) * scale),
          round(at::randn({kKvHeads, n, kDim}, gen))};
}

// Two interleaved sequences: prefills around the page size, decode steps across pages and
// tiles, a late block; every output compared.
void run_steps(KVCache& paged, KVCache& ref, double tolerance) {
  std::vector<std::pair<int, int64_t>> steps = {{0, 45}, {1, 7}};
  for (int i = 0; i < 30; ++i) steps.insert(steps.end(), {{0, 1}, {1, 1}});
  steps.push_back({1, 40});
  steps.push_back({0, 1});
  testing_support::compare_steps(paged, ref, kLayers, tolerance, 2, steps, random_block, 31);
}

struct Caches {
  std::unique_ptr<KVCache> paged, reference;
  std::string unsupported;
  double tolerance = 0;
};
Caches make_caches(const std::string& entry, const testing_support::PagedDevice& where) {
  if (where.device.is_cuda() && !at::hasCUDA()) return {nullptr, nullptr, "libtorch has no CUDA"};
  const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "methods[0]");
  auto codec = testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim);
  std::unique_ptr<KVCache> paged;
  // (Codec entries: no policy.) The registry's caches take the kernel path on the CPU only by
  // the environment (KVBENCH_PAGED_PATH=kernels); the cpu and emulated cases are built directly.
  if (where.device.is_cpu() && (where.emulated || paged_kernel_path_on_cpu()))
    paged = std::make_unique<PaluPagedCache>(std::dynamic_pointer_cast<const LowRankCodec>(codec),
                                             at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{},
                                             at::kCPU, nullptr, where.emulated);
  else
    paged = make_paged_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, where.device);
  return {std::move(paged),
          make_kv_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, "reference"), "",
          // CPU: the same fp16 latents, fp32 reconstruction either way. Kernel path: keys and
          // queries rounded to fp16 for the tensor cores (relative 2^-11 each; measured
          // ~3e-4 emulated), probabilities too on the GPU.
          where.kernel_path() ? 3e-3 : kCpuTolerance};
}

class PaluPagedCacheTest : public ::testing::TestWithParam<std::tuple<const char*, const char*>> {};

TEST_P(PaluPagedCacheTest, AttendsLikeTheReferenceCacheOverTheSameLatents) {
  const auto [entry, device_name] = GetParam();
  const testing_support::PagedDevice where = testing_support::paged_device(device_name);
  Caches c = make_caches(entry, where);
  if (!c.unsupported.empty()) GTEST_SKIP() << c.unsupported;
  ASSERT_NE(dynamic_cast<PaluPagedCache*>(c.paged.get()), nullptr);
  run_steps(*c.paged, *c.reference, c.tolerance);
  EXPECT_EQ(c.paged->kept_tokens(0), std::vector<int64_t>(kLayers, 76));
  // The reference also stores each key's position (int32 per token and group of heads); the
  // pages do not (positions are slots). Otherwise the same latents.
  // The cache's copies of the bases (fp32 at the stored width unless they are the codec's, the
  // 16-bit key bases on the kernel path) are counted in both.
  auto& palu = dynamic_cast<PaluPagedCache&>(*c.paged);
  const int64_t group =
      resolve_method(nlohmann::json::parse(entry), "m").value("group", int64_t(1));
  const uint64_t positions = (76ull + 77) * (kKvHeads / group) * kLayers * sizeof(int32_t);
  // Rows are stored r rounded up to 32 wide (zero-padded), the 16-bit bases as wide.
  const int64_t r = palu.rank(), w = palu.width();
  EXPECT_EQ(w, (r + 31) / 32 * 32);
  const uint64_t copies =
      uint64_t(kLayers) * kKvHeads *
      latent_bases_bytes(*make_codec(resolve_method(nlohmann::json::parse(entry), "m"), at::kHalf),
                         kDim, at::kHalf, where.kernel_path());
  EXPECT_EQ(copies, uint64_t(kLayers) * kKvHeads * kDim * w *
                        ((w != r ? 2 * 4 : 0) + (where.kernel_path() ? 2 : 0)));
  EXPECT_EQ(c.paged->nominal().total() + positions, c.reference->nominal().total() + copies);
  const uint64_t page = 2ull * 32 * kKvHeads * w * 2;  // keys and values, one layer
  const uint64_t padding = palu.latent().nominal().payload * uint64_t(w - r) / uint64_t(w);
  EXPECT_GE(c.paged->storage().total(), c.paged->nominal().total() + padding);
  EXPECT_LE(c.paged->storage().total(), c.paged->nominal().total() + padding + 2 * kLayers * page);
}

INSTANTIATE_TEST_SUITE_P(
    Ranks, PaluPagedCacheTest,
    ::testing::Combine(::testing::Values(R"({"name": "palu", "rank": 96})",
                                         R"({"name": "palu", "rank": 32})",
                                         R"({"name": "palu"})",  // 90: rows of 96
                                         R"({"name": "palu", "rank": 40, "group": 2})",
                                         R"({"name": "palu", "rank_ratio": 0.5})",
                                         R"({"name": "palu", "rank": 128, "group": 2})"),
                       ::testing::Values("cpu", "cuda", "emulated")),
    [](const auto& i) { return testing_support::paged_case_name(i, "_p"); });

// A packed batch of sequences at different lengths: prefills together, decode steps of the
// whole batch in one call (one kernel launch on the kernel path), a mixed step; each
// sequence's rows equal what the reference cache gives it alone (positions per sequence,
// block-table rows, lengths).
// The devices a test runs Palu's paged cache on: the CPU path, the kernel path emulated on the
// CPU, and cuda where libtorch has it.
std::vector<testing_support::PagedDevice> palu_devices() {
  std::vector<testing_support::PagedDevice> out = {{at::kCPU, false}, {at::kCPU, true}};
  if (at::hasCUDA()) out.push_back({at::Device("cuda"), false});
  return out;
}

TEST(PaluPagedBatchTest, BatchedStepsAttendLikeEachSequenceAlone) {
  const nlohmann::json method = resolve_method({{"name", "palu"}, {"rank", 96}}, "m");
  auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
      testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim));
  for (const testing_support::PagedDevice& where : palu_devices()) {
    const bool kernel_path = where.kernel_path();
    PaluPagedCache paged(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, where.device,
                         nullptr, where.emulated);
    auto ref = make_kv_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, "reference");
    const std::vector<int64_t> seqs = {paged.add_sequence(), paged.add_sequence(),
                                       paged.add_sequence()};
    for (int64_t id : seqs) ASSERT_EQ(ref->add_sequence(), id);
    std::vector<std::vector<int64_t>> steps = {{50, 7, 33}};
    for (int i = 0; i < 12; ++i) steps.push_back({1, 1, 1});
    steps.push_back({1, 20, 1});
    steps.push_back({1, 1, 1});
    SCOPED_TRACE(kernel_path ? "kernel path" : "cpu path");
    testing_support::compare_batched_steps(paged, *ref, kLayers, kernel_path ? 3e-3 : kCpuTolerance,
                                           seqs, steps, random_block, 37, where.device);
  }
}

// Past a thousand tokens (the RoPE tables grow during decode steps), in fp16 and bf16 latents:
// a prefill of 1030 tokens, then decode steps across the next tiles.
TEST(PaluPagedLongTest, TablesGrowAndBf16LatentsAttendLikeTheReference) {
  for (const at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    const nlohmann::json method = resolve_method({{"name", "palu"}, {"rank", 64}}, "m");
    auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
        testing_support::ready(make_codec(method, dtype), kLayers, kKvHeads, kDim));
    for (const testing_support::PagedDevice& where : palu_devices()) {
      if (!where.kernel_path()) continue;  // the CPU path has no tables
      PaluPagedCache paged(codec, dtype, kLayers, kKvHeads, kDim, PagedCapacity{}, where.device,
                           nullptr, where.emulated);
      auto ref = make_kv_cache(method, codec, kLayers, kKvHeads, kDim, dtype, "reference");
      auto gen = at::detail::createCPUGenerator(41);
      const int64_t seq = paged.add_sequence();
      ASSERT_EQ(ref->add_sequence(), seq);
      for (int64_t n : {1030, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
        for (int64_t layer = 0; layer < kLayers; ++layer) {
          const Block x = random_block(n, gen);
          const at::Tensor got = paged.append_and_attend(seq, layer, x.q, x.k, x.v);
          const at::Tensor want = ref->append_and_attend(seq, layer, x.q, x.k, x.v);
          const double rel = ((got - want).norm() / want.norm()).item<double>();
          // Keys and queries rounded to the latents' dtype, 2^-11 (fp16) or 2^-8 (bf16):
          // measured 1e-4 and 1e-3.
          ASSERT_LT(rel, dtype == at::kHalf ? 1e-3 : 5e-3)
              << c10::toString(dtype) << " at " << paged.length(seq) << " tokens, layer " << layer;
        }
    }
  }
}

// A reservation builds the RoPE tables for the longest total at once, exactly: the steps up to
// it grow nothing, and attend bit for bit as an unreserved cache (whose tables grow) does.
TEST(PaluPagedLongTest, ReservedTablesCoverTheTotalAndAttendTheSame) {
  const nlohmann::json method = resolve_method({{"name", "palu"}, {"rank", 64}}, "m");
  auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
      testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim));
  for (const testing_support::PagedDevice& where : palu_devices()) {
    if (where.device.is_cuda() && !at::hasCUDA()) continue;
    PaluPagedCache reserved(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{},
                            where.device, nullptr, where.emulated);
    PaluPagedCache grown(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, where.device,
                         nullptr, where.emulated);
    reserved.reserve({{300, 309}, {20, 40}});
    const int64_t tiles =
        where.kernel_path() ? (309 + kernels::kPaluTile - 1) / kernels::kPaluTile : 0;
    EXPECT_EQ(reserved.rope_positions(), 309);
    EXPECT_EQ(reserved.rope_tiles(), tiles);
    auto gen = at::detail::createCPUGenerator(43);
    const int64_t seq = reserved.add_sequence();
    ASSERT_EQ(grown.add_sequence(), seq);
    for (int64_t n : {300, 1, 1, 1, 1, 1, 1, 1, 1, 1})
      for (int64_t layer = 0; layer < kLayers; ++layer) {
        const Block x = random_block(n, gen);
        const at::Tensor a = reserved.append_and_attend(seq, layer, x.q, x.k, x.v);
        const at::Tensor b = grown.append_and_attend(seq, layer, x.q, x.k, x.v);
        ASSERT_TRUE(at::equal(a.cpu(), b.cpu()))
            << where.device << (where.emulated ? " emulated" : "") << " at "
            << reserved.length(seq);
      }
    EXPECT_EQ(reserved.rope_positions(), 309);
    EXPECT_EQ(reserved.rope_tiles(), tiles);
    EXPECT_GT(grown.rope_positions(), 309);  // headroom
  }
}

// A pool reserved for a serving budget: the latent pages once, the RoPE tables for the longest
// request, and an admitted request's reserve() changes neither.
TEST(PaluPagedLongTest, APoolReservedForABudgetCoversTheLongestRequest) {
  const nlohmann::json method = resolve_method({{"name", "palu"}, {"rank", 64}}, "m");
  auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
      testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim));
  for (const bool kernel_path : {false, true}) {
    PaluPagedCache cache(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, at::kCPU,
                         nullptr, kernel_path);
    cache.reserve_pool(3, 640, 32, 300);
    const uint64_t pool = cache.allocated_bytes();
    const int64_t tiles = kernel_path ? (300 + kernels::kPaluTile - 1) / kernels::kPaluTile : 0;
    EXPECT_EQ(cache.rope_positions(), 300);
    EXPECT_EQ(cache.rope_tiles(), tiles);
    cache.reserve({{20, 40}});  // idle, shorter: nothing made again
    EXPECT_EQ(cache.allocated_bytes(), pool);
    EXPECT_EQ(cache.rope_positions(), 300);
    PaluPagedCache small(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, at::kCPU,
                         nullptr, kernel_path);
    small.reserve_pool(1, 64, 32, 300);
    EXPECT_LT(small.allocated_bytes(), pool);  // the pool follows the budget's tokens
  }
}

// At full rank the basis is square and orthonormal: the latent pages hold the pre-RoPE keys in
// another basis, and the cache attends as the fp16 cache does up to the rounding of the latents
// (instead of the keys) to fp16 — on the CPU path and on the kernel path.
TEST(PaluPagedCacheFullRankTest, IsTheFp16CacheUpToRounding) {
  const nlohmann::json method = resolve_method({{"name", "palu"}, {"rank", 128}}, "m");
  auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
      testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim));
  for (const bool kernel_path : {false, true}) {
    PaluPagedCache paged(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, at::kCPU,
                         nullptr, kernel_path);
    auto fp16 = make_kv_cache(resolve_method({{"name", "fp16"}}, "m"), kLayers, kKvHeads, kDim,
                              at::kHalf, "reference");
    run_steps(paged, *fp16, 5e-3);
  }
}

// A method's Palu codec (its own, or its retention method's), prepared for the test shape.
std::shared_ptr<const LowRankCodec> prepared_palu(const nlohmann::json& method) {
  return std::dynamic_pointer_cast<const LowRankCodec>(
      testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim));
}

// The paged cache of a retention method over Palu on `where` (built directly: the emulated
// kernel path is not the registry's), and the reference cache over the same codec.
std::pair<std::unique_ptr<PaluPagedCache>, std::unique_ptr<KVCache>> policy_caches(
    const nlohmann::json& method, const std::shared_ptr<const LowRankCodec>& codec,
    const testing_support::PagedDevice& where) {
  return {
      std::make_unique<PaluPagedCache>(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{},
                                       where.device, make_policy(method), where.emulated),
      make_kv_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, "reference")};
}

// Under retention policies: the same kept tokens, outputs and bytes as the reference cache
// over the same latents (prefills past the budget, then decode steps; StreamingLLM evicting at
// every decode step too), on the CPU path, the emulated kernel path (the kernel's host
// reference reading the kept lists) and cuda where there is one.
TEST(PaluPagedRetentionTest, KeepsAndAttendsLikeTheReferenceCache) {
  for (const char* entry :
       {R"({"name": "snapkv", "budget": 48, "window": 8, "codec": {"name": "palu", "rank": 64}})",
        R"({"name": "pyramidkv", "budget": 40, "window": 8, "codec": "palu"})",
        R"({"name": "streamingllm", "sinks": 4, "window": 30,
            "codec": {"name": "palu", "rank": 96}})",
        R"({"name": "streamingllm", "sinks": 4, "window": 30, "evict": "after_prefill",
            "codec": {"name": "palu", "rank": 64, "group": 2}})",
        R"({"name": "h2o", "heavy": 24, "recent": 16, "evict": "after_prefill",
            "codec": {"name": "palu", "rank": 64}})",
        R"({"name": "tova", "budget": 40, "evict": "after_prefill",
            "codec": {"name": "palu", "rank": 32, "group": 2}})",
        R"({"name": "scissorhands", "budget": 44, "recent": 8, "history": 12,
            "evict": "after_prefill", "codec": {"name": "palu", "rank": 64}})",
        // Selecting by attention at every step over budget: decode steps record the kernel's
        // scores (its host reference on the emulated path).
        R"({"name": "h2o", "heavy": 24, "recent": 16, "codec": {"name": "palu", "rank": 64}})",
        // Budgets from each prompt: 18 + 18 of 90 tokens, 6 + 6 of 30.
        R"({"name": "h2o", "heavy_ratio": 0.2, "recent_ratio": 0.2,
            "codec": {"name": "palu", "rank": 64}})",
        R"({"name": "tova", "budget": 40, "codec": {"name": "palu", "rank": 32, "group": 2}})",
        R"({"name": "scissorhands", "budget": 44, "recent": 8, "history": 12,
            "codec": {"name": "palu", "rank": 96}})"}) {
    SCOPED_TRACE(entry);
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
    const auto codec = prepared_palu(method);
    for (const testing_support::PagedDevice& where : palu_devices()) {
      SCOPED_TRACE(where.device.str() + (where.emulated ? " emulated" : ""));
      auto [cache, ref] = policy_caches(method, codec, where);
      PaluPagedCache& paged = *cache;
      std::vector<std::pair<int, int64_t>> steps = {{0, 90}, {1, 30}};
      for (int i = 0; i < 30; ++i) steps.insert(steps.end(), {{0, 1}, {1, 1}});
      testing_support::compare_steps(paged, *ref, kLayers,
                                     where.kernel_path() ? 3e-3 : kCpuTolerance, 2, steps,
                                     random_block, 17);
      for (int64_t seq : {0, 1}) {
        EXPECT_EQ(paged.kept_tokens(seq), ref->kept_tokens(seq)) << "sequence " << seq;
        EXPECT_EQ(paged.length(seq), ref->length(seq));
      }
      EXPECT_LT(paged.kept_tokens(0)[0], 120);  // the prefill was over the budget
      EXPECT_GT(paged.retention_seconds(), 0);
      // Bytes: the pages' nominal count is the reference's less its stored positions (int32 per
      // kept token and latent head), plus the cache's copies of the bases.
      const int64_t group = codec->group(), w = paged.width();
      uint64_t positions = 0;
      for (int64_t seq : {0, 1})
        for (int64_t kept : ref->kept_tokens(seq))
          positions += uint64_t(kept) * uint64_t(kKvHeads / group) * sizeof(int32_t);
      const uint64_t copies = uint64_t(kLayers) * kKvHeads *
                              latent_bases_bytes(*codec, kDim, at::kHalf, where.kernel_path());
      EXPECT_EQ(paged.nominal().total() + positions, ref->nominal().total() + copies);
      // Pages go back once no layer and no head keeps a token in them: StreamingLLM's window,
      // moving at every decode step, leaves the pages behind it.
      const uint64_t page = 2ull * 32 * uint64_t(kKvHeads / group) * uint64_t(w) * 2 * kLayers;
      const uint64_t all_pages = (4 + 2) * page + paged.storage().metadata;  // 120 and 60 tokens
      if (method["name"] == "streamingllm" && method["evict"] == "decode")
        EXPECT_LT(paged.storage().total(), all_pages);
      else
        EXPECT_LE(paged.storage().total(), all_pages);
    }
  }
}

// A packed batch under StreamingLLM and H2O (evicting at every decode step) and SnapKV:
// sequences at different lengths, some over the budget and some not, decode steps of the whole
// batch in one call (one kernel launch reading kept lists for some sequences and every token
// for others, and writing the scores H2O records).
TEST(PaluPagedRetentionTest, BatchedStepsKeepLikeEachSequenceAlone) {
  for (
      const char* entry :
      {R"({"name": "streamingllm", "sinks": 4, "window": 40, "codec": {"name": "palu", "rank": 96}})",
       R"({"name": "snapkv", "budget": 48, "window": 8, "codec": {"name": "palu", "rank": 64}})",
       R"({"name": "h2o", "heavy": 24, "recent": 16, "codec": {"name": "palu", "rank": 64}})"}) {
    SCOPED_TRACE(entry);
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
    const auto codec = prepared_palu(method);
    for (const testing_support::PagedDevice& where : palu_devices()) {
      SCOPED_TRACE(where.device.str() + (where.emulated ? " emulated" : ""));
      auto [cache, ref] = policy_caches(method, codec, where);
      PaluPagedCache& paged = *cache;
      const std::vector<int64_t> seqs = {paged.add_sequence(), paged.add_sequence(),
                                         paged.add_sequence()};
      for (int64_t id : seqs) ASSERT_EQ(ref->add_sequence(), id);
      std::vector<std::vector<int64_t>> steps = {{70, 9, 50}};
      for (int i = 0; i < 20; ++i) steps.push_back({1, 1, 1});
      testing_support::compare_batched_steps(paged, *ref, kLayers,
                                             where.kernel_path() ? 3e-3 : kCpuTolerance, seqs,
                                             steps, random_block, 43, where.device);
      for (int64_t seq : seqs) EXPECT_EQ(paged.kept_tokens(seq), ref->kept_tokens(seq));
      EXPECT_EQ(paged.kept_tokens(seqs[1]), std::vector<int64_t>(kLayers, 29));  // under budget
    }
  }
}

// Under H2O, TOVA and ScissorHands evicting during decode, on the kernel path: once a layer
// holds its budget + 1 (from the first decode step after the prefill's choice, whose tail is
// capped at the window), each step drops one token per head where the pools are, as the plain
// paged cache does (kernels/steady_evict.h): no sort (the policy's choice), no value read on
// the host, and one copy of the step's lists back after its last layer, instead of one
// read-back per layer. Every step attends and keeps as the reference cache does.
TEST(PaluPagedHostOpsTest, SteadyStateEvictsWithoutSortingOrReadingBack) {
  testing_support::OpCounter ops;
  for (const char* entry :
       {R"({"name": "h2o", "heavy": 24, "recent": 16, "codec": {"name": "palu", "rank": 64}})",
        R"({"name": "tova", "budget": 40, "codec": {"name": "palu", "rank": 32}})",
        // Each prompt length its own window and held count (24 + 16, 21 + 14, 27 + 18): a
        // launch each, the one of 70-token prompts over two sequences.
        R"({"name": "h2o", "heavy_ratio": 0.3, "recent_ratio": 0.2,
            "codec": {"name": "palu", "rank": 64}})",
        R"({"name": "scissorhands", "budget": 44, "recent": 8, "history": 12,
            "codec": {"name": "palu", "rank": 96}})"}) {
    SCOPED_TRACE(entry);
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
    const auto codec = prepared_palu(method);
    auto [cache, ref] = policy_caches(method, codec, {at::kCPU, /*emulated=*/true});
    PaluPagedCache& paged = *cache;
    const std::vector<int64_t> seqs = {paged.add_sequence(), paged.add_sequence(),
                                       paged.add_sequence(), paged.add_sequence()};
    for (int64_t id : seqs) ASSERT_EQ(ref->add_sequence(), id);
    auto gen = at::detail::createCPUGenerator(53);
    for (int step = 0; step < 7; ++step) {
      const std::vector<int64_t> counts =
          step == 0 ? std::vector<int64_t>{80, 70, 90, 70} : std::vector<int64_t>(4, 1);
      const testing_support::PackedStep x = testing_support::packed_step(
          kLayers, counts, [](int64_t n, at::Generator& g) { return random_block(n, g); }, gen,
          at::kHalf);
      ops.clear();
      std::vector<at::Tensor> got;
      for (int64_t l = 0; l < kLayers; ++l) {
        const auto& [q, k, v] = x.packed[size_t(l)];
        got.push_back(paged.append_and_attend_batch(l, seqs, counts, q, k, v));
      }
      if (step > 0) {
        EXPECT_EQ(ops["aten::sort"], 0) << "step " << step;
        EXPECT_EQ(ops["aten::item"] + ops["aten::_local_scalar_dense"], 0) << "step " << step;
        // The lists and the records' states: a join per layer at most, and the copy back;
        // after the first steady step they lie in one buffer per layer (views, no join).
        EXPECT_LE(ops["aten::cat"], step == 1 ? kLayers + 1 : 1) << "step " << step;
      }
      testing_support::expect_rows_like_reference(*ref, seqs, counts, x, got, 3e-3,
                                                  "step " + std::to_string(step));
      for (const int64_t seq : seqs) {
        EXPECT_EQ(paged.kept_tokens(seq), ref->kept_tokens(seq)) << "step " << step;
        for (int64_t l = 0; l < kLayers; ++l)  // (one latent per KV head: group 1)
          EXPECT_TRUE(at::equal(paged.latent().kept_positions(seq, l),
                                dynamic_cast<CompressedKVCache&>(*ref).kept_positions(seq, l)))
              << "step " << step << ", layer " << l;
      }
    }
    // A step stopped after its first layer (an error upstream) leaves that layer's lists on
    // the device only; the next step, a prefill beside decodes (the reference attention, which
    // reads the lists on the host), copies them back first.
    const auto one = [&](int64_t n, int64_t h) {
      return at::randn({n, h, kDim}, gen).to(at::kHalf);
    };
    paged.append_and_attend_batch(0, seqs, {1, 1, 1, 1}, one(4, kHeads), one(4, kKvHeads),
                                  one(4, kKvHeads));
    std::vector<int64_t> next = seqs;
    next.push_back(paged.add_sequence());
    for (int64_t l = 0; l < kLayers; ++l)
      EXPECT_NO_THROW(paged.append_and_attend_batch(l, next, {1, 1, 1, 1, 50}, one(54, kHeads),
                                                    one(54, kKvHeads), one(54, kKvHeads)));
  }
}

// The model's own 16-bit dtype in (what the engine hands on a GPU, attend_dtype()): every
// output comes back in it, and equals, bit for bit, what the same values in fp32 give rounded
// once (a decode step's kernel takes q16 and writes out16; prefills convert their fp32
// output), with and without a policy evicting during decode (its steady state included).
TEST(PaluPagedSixteenBitTest, TheLatentsDtypeInGivesTheFp32OutputsRounded) {
  for (const char* entry :
       {R"({"name": "palu", "rank": 64})",
        R"({"name": "h2o", "heavy": 24, "recent": 16, "codec": {"name": "palu", "rank": 96}})"}) {
    SCOPED_TRACE(entry);
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
    const auto codec = prepared_palu(method);
    const std::shared_ptr<const RetentionPolicy> policy =
        method.contains("codec") ? make_policy(method) : nullptr;
    auto cache = [&] {
      return std::make_unique<PaluPagedCache>(codec, at::kHalf, kLayers, kKvHeads, kDim,
                                              PagedCapacity{}, at::kCPU, policy,
                                              /*kernel_path_on_cpu=*/true);
    };
    const auto fp32 = cache(), fp16 = cache();
    EXPECT_EQ(fp16->attend_dtype(), at::kFloat);  // on the CPU the engine hands fp32
    const std::vector<int64_t> seqs = {fp32->add_sequence(), fp32->add_sequence()};
    for (const int64_t id : seqs) ASSERT_EQ(fp16->add_sequence(), id);
    auto gen = at::detail::createCPUGenerator(61);
    for (int step = 0; step < 6; ++step) {
      const std::vector<int64_t> counts =
          step == 0 ? std::vector<int64_t>{70, 50} : std::vector<int64_t>(2, 1);
      const int64_t n = counts[0] + counts[1];
      for (int64_t l = 0; l < kLayers; ++l) {
        const Block x = random_block(n, gen);  // fp16 values
        const at::Tensor q = x.q.transpose(0, 1).contiguous(), k = x.k.transpose(0, 1).contiguous(),
                         v = x.v.transpose(0, 1).contiguous();
        const at::Tensor want = fp32->append_and_attend_batch(l, seqs, counts, q, k, v);
        const at::Tensor got = fp16->append_and_attend_batch(l, seqs, counts, q.to(at::kHalf),
                                                             k.to(at::kHalf), v.to(at::kHalf));
        ASSERT_EQ(want.scalar_type(), at::kFloat);
        ASSERT_EQ(got.scalar_type(), at::kHalf) << "step " << step << ", layer " << l;
        EXPECT_TRUE(at::equal(got, want.to(at::kHalf))) << "step " << step << ", layer " << l;
      }
      for (const int64_t seq : seqs) EXPECT_EQ(fp16->kept_tokens(seq), fp32->kept_tokens(seq));
    }
  }
}

TEST(PaluPagedCacheErrorsTest, SaysWhatCannotRunOnLatentPages) {
  auto message = [](const std::string& entry, at::ScalarType dtype, bool kernel_path,
                    int64_t dim = kDim) {
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "methods[0]");
    try {
      auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
          testing_support::ready(make_codec(method, dtype), kLayers, kKvHeads, dim));
      PaluPagedCache cache(codec, dtype, kLayers, kKvHeads, dim, PagedCapacity{}, at::kCPU,
                           make_policy(method), kernel_path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message(R"({"name": "palu", "group": 2, "rank": 64})", at::kHalf, true), "no error");
  // 0.7 * 128 = 90: stored in rows of 96. Above 128 the kernel refuses.
  EXPECT_EQ(message(R"({"name": "palu"})", at::kHalf, true), "no error");
  EXPECT_NE(message(R"({"name": "palu", "rank": 160, "group": 2})", at::kHalf, true)
                .find("ranks up to 128"),
            std::string::npos);
  EXPECT_NE(message(R"({"name": "palu", "rank": 64})", at::kFloat, false).find("no paged format"),
            std::string::npos);
  EXPECT_NE(message(R"({"name": "palu", "rank": 64})", at::kHalf, true, 96).find("head_dim 96"),
            std::string::npos);
  // Policies: any but Quest (those that select by each step's attention during decode too:
  // the kernel writes the scores); with a group, the heads of a latent keep the same tokens.
  EXPECT_EQ(message(R"({"name": "streamingllm", "sinks": 4, "window": 60,
                       "codec": {"name": "palu", "rank": 64}})",
                    at::kHalf, true),
            "no error");
  EXPECT_EQ(message(R"({"name": "h2o", "heavy": 24, "recent": 16,
                       "codec": {"name": "palu", "rank": 64}})",
                    at::kHalf, true),
            "no error");
  EXPECT_NE(message(R"({"name": "quest", "codec": {"name": "palu", "rank": 64}})", at::kHalf, false)
                .find("Quest bounds pages"),
            std::string::npos);
  {
    // Method resolution refuses a per-head policy over a G-LRD group; the cache checks the
    // selections it gets too (here a group-2 codec under a policy resolved beside group 1).
    try {
      resolve_method(nlohmann::json::parse(R"({"name": "snapkv", "budget": 16, "window": 4,
                                  "codec": {"name": "palu", "rank": 64, "group": 2}})"),
                     "m");
      ADD_FAILURE() << "no error";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("m.codec.group: palu's group 2 shares one latent"),
                std::string::npos)
          << e.what();
    }
    const nlohmann::json method =
        resolve_method(nlohmann::json::parse(R"({"name": "snapkv", "budget": 16, "window": 4,
                                  "codec": {"name": "palu", "rank": 64}})"),
                       "m");
    auto codec = std::dynamic_pointer_cast<const LowRankCodec>(testing_support::ready(
        make_codec(resolve_method({{"name", "palu"}, {"rank", 64}, {"group", 2}}, "c"), at::kHalf),
        kLayers, kKvHeads, kDim));
    PaluPagedCache cache(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, at::kCPU,
                         make_policy(method), false);
    const int64_t seq = cache.add_sequence();
    auto gen = at::detail::createCPUGenerator(3);
    const Block x = random_block(40, gen);
    try {
      cache.append_and_attend(seq, 0, x.q, x.k, x.v);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("share one latent"), std::string::npos) << e.what();
    }
  }
  // The kernel takes at most 8 query heads per KV head: said at the first step.
  {
    const nlohmann::json method = resolve_method({{"name", "palu"}, {"rank", 64}}, "m");
    auto codec = std::dynamic_pointer_cast<const LowRankCodec>(
        testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim));
    PaluPagedCache cache(codec, at::kHalf, kLayers, kKvHeads, kDim, PagedCapacity{}, at::kCPU,
                         nullptr, /*kernel_path_on_cpu=*/true);
    const int64_t seq = cache.add_sequence();
    try {
      cache.append_and_attend(seq, 0, at::randn({9 * kKvHeads, 1, kDim}),
                              at::randn({kKvHeads, 1, kDim}), at::randn({kKvHeads, 1, kDim}));
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("at most 8 query heads"), std::string::npos) << e.what();
    }
  }
  // Without its bases there is nothing to page.
  try {
    make_kv_cache(resolve_method({{"name", "palu"}}, "m"), kLayers, kKvHeads, kDim, at::kHalf,
                  "paged");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("prepared codec"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvbench
