// GEAR on the GPU path. Three layers of checks:
//  - the ATen-op compression (gear_blocks.h, which runs where the cache lives) against the CPU
//    codec's store on the same block: the same reconstruction (same outliers, codes, scales,
//    factors), the same bytes held and by formula;
//  - the decode kernel's host reference (kernels/gear_decode.h) against an independent float64
//    reconstruction and attention over random blocks (tests/gpu/gear_case.h), so the kernel's
//    indexing of codes, groups, factors and both outlier layouts is checked anywhere;
//  - GearBlockCache against the compressed cache with the GEAR codec and the reference
//    backend, step by step: prefills, decode steps across several compressions, batched steps
//    with sequences at different phases of their buffers, on the CPU path, the kernel path
//    emulated on the CPU (the host reference in place of the kernel) and cuda where present.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <tuple>

#include "cache_compare.h"
#include "gear_case.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/gear_block_cache.h"
#include "kvbench/kv/gear_blocks.h"
#include "kvbench/kv/h2o_policy.h"
#include "kvbench/kv/method_registry.h"
#include "paged_device.h"

namespace kvbench {
namespace {

constexpr int64_t kLayers = 2, kKvHeads = 2, kHeads = 8, kDim = 64;

// Keys with a few large channels (as real keys have), rounded like the model hands them.
at::Tensor keys_like(int64_t heads, int64_t n, int64_t d, at::Generator& gen,
                     at::ScalarType dtype) {
  at::Tensor scale = at::ones({d});
  scale.index_put_({at::arange(0, d, 13)}, 4.0);
  return (at::randn({heads, n, d}, gen) * scale).to(dtype).to(at::kFloat);
}

std::shared_ptr<const GearCodec> gear_codec(const nlohmann::json& entry, at::ScalarType dtype) {
  auto codec =
      std::dynamic_pointer_cast<const GearCodec>(make_codec(resolve_method(entry, "m"), dtype));
  EXPECT_NE(codec, nullptr);
  return codec;
}

TEST(GearBlocksTest, CompressionMatchesTheCpuStore) {
  struct Case {
    const char* entry;
    at::ScalarType dtype;
    int64_t n;
    bool is_key;
  };
  for (const Case& c : {Case{R"({"name": "gear"})", at::kHalf, 128, true},
                        Case{R"({"name": "gear"})", at::kHalf, 128, false},
                        Case{R"({"name": "gear-4"})", at::kBFloat16, 100, true},
                        Case{R"({"name": "gear-4"})", at::kBFloat16, 100, false},
                        Case{R"({"name": "gear-8", "outlier_ratio": 0.1})", at::kHalf, 60, true},
                        Case{R"({"name": "gear", "rank_prefill": 0})", at::kHalf, 64, false}}) {
    SCOPED_TRACE(std::string(c.entry) + (c.is_key ? " keys" : " values"));
    const auto codec = gear_codec(nlohmann::json::parse(c.entry), c.dtype);
    const GearParams& p = codec->gear_params();
    ASSERT_EQ(c.n % p.buffer, 0);  // one block, nothing left in the buffer
    auto gen = at::detail::createCPUGenerator(3 + c.n);
    const at::Tensor x = keys_like(kKvHeads, c.n, kDim, gen, c.dtype);
    auto store =
        c.is_key ? codec->make_key_store(kKvHeads, kDim) : codec->make_value_store(kKvHeads, kDim);
    store->append(x);
    const int64_t rank = std::min({p.rank_prefill, c.n, kDim});
    const GearSideTensors side = gear_compress(p, c.dtype, c.is_key, x, rank, 0);
    const at::Tensor mine = gear_reconstruct(p, c.is_key, side);
    const at::Tensor want = store->dequantize();
    // The same codes, scales, outliers and factors (the same fp32 operations on the same
    // inputs); only L's sums run in another order. Measured: 0 to 1 ulp.
    EXPECT_LT((mine - want).abs().max().item<double>(), 1e-5 * x.abs().max().item<double>());
    // Not just matching noise: the reconstruction is within GEAR's error of x.
    EXPECT_LT(((mine - x).norm() / x.norm()).item<double>(),
              p.bits == 2 ? 0.5 : (p.bits == 4 ? 0.1 : 0.01));
    EXPECT_EQ(side.bytes().payload, store->bytes().payload);
    EXPECT_EQ(side.bytes().metadata, store->bytes().metadata);
    if (at::hasCUDA()) {
      // On a GPU: the same IEEE operations for codes, scales and outliers; the multiplies'
      // summation orders may move a factor by one 16-bit unit, and with it, rarely, a code by
      // one step.
      const GearSideTensors gpu = gear_compress(p, c.dtype, c.is_key, x.cuda(), rank, 0);
      const at::Tensor there = gear_reconstruct(p, c.is_key, gpu).cpu();
      EXPECT_LT(((there - want).norm() / want.norm()).item<double>(), 1e-3);
      EXPECT_EQ(gpu.bytes().payload, side.bytes().payload);
      EXPECT_EQ(gpu.bytes().metadata, side.bytes().metadata);
    }
    const StorageBytes formula =
        gear_block_nominal(p, c.dtype, c.is_key, c.n, rank, side.k, kKvHeads, kDim);
    EXPECT_EQ(formula.payload, store->history_nominal()->payload);
    EXPECT_EQ(formula.metadata, store->history_nominal()->metadata);
  }
}

TEST(GearBlocksTest, TiesAtTheExtremesBreakByPositionAsTheCpuStoreDoes) {
  // Coarse values: many equal extremes per channel and per token.
  const auto codec = gear_codec({{"name", "gear"}, {"outlier_ratio", 0.2}}, at::kHalf);
  auto gen = at::detail::createCPUGenerator(9);
  const at::Tensor x = at::randint(-3, 4, {kKvHeads, 64, kDim}, gen).to(at::kFloat);
  for (bool is_key : {true, false}) {
    auto store =
        is_key ? codec->make_key_store(kKvHeads, kDim) : codec->make_value_store(kKvHeads, kDim);
    store->append(x);
    const GearSideTensors side = gear_compress(codec->gear_params(), at::kHalf, is_key, x, 4, 0);
    EXPECT_LT((gear_reconstruct(codec->gear_params(), is_key, side) - store->dequantize())
                  .abs()
                  .max()
                  .item<double>(),
              1e-5)
        << (is_key ? "keys" : "values");
  }
}

// A negative step (the min-max rule's for a constant group whose value the stored dtype rounds
// up, methods.md; GEAR's groups hold model-dtype values, so only inputs outside that contract
// get one): its L is still clamped into a cell of half that step's size either way, not pinned
// to its lower edge. One value row of 32 channels: codes 0, min 1, step -0.01, L = 0.001
// everywhere (inside the cell), then 0.02 (past it).
TEST(GearBlocksTest, ANegativeStepClampsLIntoACellOfItsSize) {
  GearParams p;
  p.bits = 8, p.group = 32;
  for (const float l : {0.001f, 0.02f}) {
    GearSideTensors side;
    side.codes = at::zeros({1, 1, 32}, at::kByte);
    side.scales = at::full({1, 1, 1}, -0.01f);
    side.mins = at::ones({1, 1, 1});
    side.outlier_values = at::empty({1, 1, 0});
    side.outlier_index = at::empty({1, 1, 0}, at::kShort);
    side.q = at::ones({1, 1, 1});
    side.p = at::full({1, 1, 32}, l);
    const at::Tensor x = gear_reconstruct(p, /*is_key=*/false, side);
    EXPECT_TRUE(at::allclose(x, at::full({1, 1, 32}, 1.0f + std::min(l, 0.005f)), 0, 1e-7))
        << l << ": " << x[0][0][0].item<float>();
  }
}

// Groups whose fp16 min overflows (values below -65504 handed in fp32) store a NaN min and step
// and codes 0, in both stores, and read back NaN, as the CPU store's rule says
// (minmax_quant.cpp); the residual there is left out of the factors, so with a rank the rest of
// the head still reads back numbers, the same in both stores.
TEST(GearBlocksTest, AGroupOverflowingTheDtypeReadsBackNaNAsTheCpuStoreDoes) {
  for (const int64_t rank : {0, 4}) {
    const auto codec = gear_codec({{"name", "gear"}, {"rank_prefill", rank}}, at::kHalf);
    const GearParams& p = codec->gear_params();
    auto gen = at::detail::createCPUGenerator(17);
    for (bool is_key : {true, false}) {
      SCOPED_TRACE(std::string(is_key ? "keys" : "values") + ", rank " + std::to_string(rank));
      at::Tensor x = keys_like(kKvHeads, p.buffer, kDim, gen, at::kHalf);
      const double scale = x.abs().max().item<double>();
      // 8 tokens x 8 channels of head 1: each key group (a channel's G tokens) and value group
      // (a token's channels) they touch holds them beside its outliers.
      x[1].narrow(0, 0, 8).narrow(1, 0, 8).fill_(-70000.0f);
      auto store =
          is_key ? codec->make_key_store(kKvHeads, kDim) : codec->make_value_store(kKvHeads, kDim);
      store->append(x);
      const at::Tensor want = store->dequantize();
      const GearSideTensors side = gear_compress(p, at::kHalf, is_key, x, rank, 0);
      const at::Tensor got = gear_reconstruct(p, is_key, side);
      const at::Tensor nan = want.isnan();
      EXPECT_GT(nan.sum().item<int64_t>(), 0);
      // The filled block's groups only: head 1's others read back numbers (with a rank too).
      EXPECT_TRUE(at::isfinite(want[1]).any().item<bool>());
      EXPECT_TRUE(at::equal(got.isnan(), nan));
      EXPECT_FALSE(nan[0].any().item<bool>());
      const at::Tensor finite = at::isfinite(want);  // the outliers kept as fp16 -inf aside
      EXPECT_LT((got.masked_select(finite) - want.masked_select(finite)).abs().max().item<double>(),
                1e-5 * scale);
      // The stored min and step: NaN together, in some group; the codes there 0 (read through
      // a min of 0 and a step of 1).
      EXPECT_TRUE(side.mins.isnan().any().item<bool>());
      EXPECT_TRUE(at::equal(side.mins.isnan(), side.scales.isnan()));
      if (rank == 0) {
        GearSideTensors probe = side;
        probe.mins = side.mins.masked_fill(side.mins.isnan(), 0);
        probe.scales = side.scales.masked_fill(side.scales.isnan(), 1);
        const at::Tensor codes = gear_reconstruct(p, is_key, probe);
        EXPECT_EQ(codes.masked_select(nan).abs().max().item<double>(), 0.0);
      }
    }
  }
}

TEST(GearDecodeHostTest, MatchesFloat64) {
  for (const gpu_test::GearShape& s : gpu_test::gear_shapes()) {
    SCOPED_TRACE(s.name());
    const gpu_test::GearCase c = gpu_test::gear_case(s, 11);
    std::vector<float> got(c.want.size(), NAN), scratch(size_t(2 * s.d + 1) * size_t(c.max_len()));
    const kernels::GearProblem p = c.problem(got.data());
    ASSERT_STREQ(kernels::gear_check(p), "");
    kernels::gear_decode_host(p, scratch.data());
    // fp32 sums of the same 16-bit inputs. Measured: ~1e-7.
    EXPECT_LT(gpu_test::scaled_error(got, c.want), 1e-5);
  }
}

TEST(GearDecodeHostTest, RejectsWhatTheKernelCannotTake) {
  const gpu_test::GearCase c = gpu_test::gear_case(gpu_test::gear_shapes()[0], 1);
  std::vector<float> out(c.want.size());
  auto with = [&](const std::function<void(kernels::GearProblem&)>& change) {
    kernels::GearProblem p = c.problem(out.data());
    change(p);
    return std::string(kernels::gear_check(p));
  };
  EXPECT_EQ(with([](auto&) {}), "");
  EXPECT_NE(with([](auto& p) { p.head_dim = 256; }), "");
  EXPECT_NE(with([](auto& p) { p.q_heads = 18 * p.kv_heads; }), "");
  EXPECT_NE(with([](auto& p) { p.bits = 3; }), "");
  EXPECT_NE(with([](auto& p) { p.value_group = 48; }), "");
  EXPECT_NE(with([](auto& p) { p.seqs = nullptr; }), "");
}

using testing_support::Block;
Block random_block(int64_t n, at::Generator& gen) {
  auto round = [](at::Tensor x) { return x.to(at::kHalf).to(at::kFloat); };
  return {round(at::randn({kHeads, n, kDim}, gen) * 0.3),
          keys_like(kKvHeads, n, kDim, gen, at::kHalf), round(at::randn({kKvHeads, n, kDim}, gen))};
}

// The tolerance against the reference cache over the same blocks. CPU path and emulated: the
// same codes and factors, fp32 attention either way (measured 0 and ~2e-7). On cuda the
// prefill attends through SDPA in 16-bit (as the other paged caches' tests bound it), and
// the multiplies' summation orders can move a factor or a code by one 16-bit step.
double tolerance(const testing_support::PagedDevice& where, at::ScalarType dtype = at::kHalf) {
  if (!where.device.is_cuda()) return 2e-5;
  return dtype == at::kBFloat16 ? 8e-3 : 2e-3;
}

std::unique_ptr<GearBlockCache> gear_cache(const std::shared_ptr<const GearCodec>& codec,
                                           const testing_support::PagedDevice& where) {
  return std::make_unique<GearBlockCache>(codec, kLayers, kKvHeads, kDim, where.device, nullptr,
                                          where.emulated);
}

std::vector<testing_support::PagedDevice> gear_devices() {
  std::vector<testing_support::PagedDevice> out = {{at::kCPU, false}, {at::kCPU, true}};
  if (at::hasCUDA()) out.push_back({at::Device("cuda"), false});
  return out;
}

class GearBlockCacheTest : public ::testing::TestWithParam<const char*> {};

// Two interleaved sequences: prefills that leave the buffer part full, decode steps across
// several compressions (gear-4's buffer is 20), a late multi-token block; every output
// compared, then the bytes.
TEST_P(GearBlockCacheTest, AttendsLikeTheReferenceCache) {
  const nlohmann::json entry = nlohmann::json::parse(GetParam());
  const auto codec = gear_codec(entry, at::kHalf);
  for (const testing_support::PagedDevice& where : gear_devices()) {
    SCOPED_TRACE(where.device.str() + (where.emulated ? " emulated" : ""));
    auto cache = gear_cache(codec, where);
    auto ref = make_kv_cache(resolve_method(entry, "m"), codec, kLayers, kKvHeads, kDim, at::kHalf,
                             "reference");
    std::vector<std::pair<int, int64_t>> steps = {{0, 45}, {1, 7}};
    for (int i = 0; i < 70; ++i) steps.insert(steps.end(), {{0, 1}, {1, 1}});
    steps.push_back({1, 40});
    steps.push_back({0, 1});
    testing_support::compare_steps(*cache, *ref, kLayers, tolerance(where), 2, steps, random_block,
                                   31);
    EXPECT_EQ(cache->kept_tokens(0), std::vector<int64_t>(kLayers, 116));
    EXPECT_GE(cache->blocks(0, 1), 1);
    // The exact buffers' rows not in use are padding: a sequence of T tokens uses T mod buffer
    // (fp16 keys and values of every layer).
    const int64_t buffer = codec->gear_params().buffer;
    uint64_t idle = 0;
    for (int64_t seq : {0, 1})
      idle += uint64_t(2 * kLayers * (buffer - cache->length(seq) % buffer) * kKvHeads * kDim * 2);
    EXPECT_EQ(cache->storage().padding, idle);
    EXPECT_EQ(cache->storage().payload - idle, ref->storage().payload);
    EXPECT_EQ(cache->storage().metadata, ref->storage().metadata);
    EXPECT_EQ(cache->nominal().payload, ref->nominal().payload);
    EXPECT_EQ(cache->nominal().metadata, ref->nominal().metadata);
    EXPECT_EQ(cache->storage().total() - idle, cache->nominal().total());
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, GearBlockCacheTest,
                         ::testing::Values(R"({"name": "gear"})", R"({"name": "gear-4"})",
                                           R"({"name": "gear-8", "outlier_ratio": 0.1})",
                                           R"({"name": "gear", "rank_decode": 0, "buffer": 8})"));

// A packed batch: prefills together, decode steps of the whole batch in one call (one launch on
// the kernel path), a mixed step; each sequence's rows equal what the reference cache gives it
// alone, and the bytes are the reference's. Two plans: lengths at different phases of their
// buffers (each sequence compresses at its own step), and lengths whose blocks form alike
// (two equal prefills, then every decode block at the same step: compressed as one group).
// Sequences come and go (slots reused).
TEST(GearBlockBatchTest, BatchedStepsAttendLikeEachSequenceAlone) {
  const nlohmann::json entry = {{"name", "gear-4"}};
  const auto codec = gear_codec(entry, at::kHalf);
  for (const std::vector<int64_t>& prefill : {std::vector<int64_t>{50, 7, 33}, {40, 40, 60}})
    for (const testing_support::PagedDevice& where : gear_devices()) {
      SCOPED_TRACE(where.device.str() + (where.emulated ? " emulated" : "") + ", prefill " +
                   std::to_string(prefill[0]));
      auto cache = gear_cache(codec, where);
      auto ref = make_kv_cache(resolve_method(entry, "m"), codec, kLayers, kKvHeads, kDim,
                               at::kHalf, "reference");
      const int64_t gone = cache->add_sequence();
      ASSERT_EQ(ref->add_sequence(), gone);
      cache->remove_sequence(gone);
      ref->remove_sequence(gone);
      std::vector<int64_t> seqs;
      for (int i = 0; i < 3; ++i) {
        seqs.push_back(cache->add_sequence());
        ASSERT_EQ(ref->add_sequence(), seqs.back());
      }
      std::vector<std::vector<int64_t>> steps = {prefill};
      for (int i = 0; i < 25; ++i) steps.push_back({1, 1, 1});
      steps.push_back({1, 20, 1});
      for (int i = 0; i < 5; ++i) steps.push_back({1, 1, 1});
      testing_support::compare_batched_steps(*cache, *ref, kLayers, tolerance(where), seqs, steps,
                                             random_block, 37, where.device);
      EXPECT_EQ(cache->storage().total() - cache->storage().padding, ref->storage().total());
      EXPECT_EQ(cache->nominal().total(), ref->nominal().total());
      EXPECT_EQ(cache->blocks(seqs[0], 0), prefill[0] == 40 ? 2 : 3);
    }
}

TEST(GearBlockBatchTest, Bf16ModelsAttendLikeTheReferenceCache) {
  const nlohmann::json entry = {{"name", "gear"}, {"buffer", 16}};
  const auto codec = gear_codec(entry, at::kBFloat16);
  for (const testing_support::PagedDevice& where : gear_devices()) {
    auto cache = gear_cache(codec, where);
    auto ref = make_kv_cache(resolve_method(entry, "m"), codec, kLayers, kKvHeads, kDim,
                             at::kBFloat16, "reference");
    std::vector<std::pair<int, int64_t>> steps = {{0, 70}};
    for (int i = 0; i < 40; ++i) steps.push_back({0, 1});
    auto draw = [](int64_t n, at::Generator& gen) {
      auto round = [](at::Tensor x) { return x.to(at::kBFloat16).to(at::kFloat); };
      return Block{round(at::randn({kHeads, n, kDim}, gen) * 0.3),
                   keys_like(kKvHeads, n, kDim, gen, at::kBFloat16),
                   round(at::randn({kKvHeads, n, kDim}, gen))};
    };
    testing_support::compare_steps(*cache, *ref, kLayers, tolerance(where, at::kBFloat16), 1, steps,
                                   draw, 5);
  }
}

// Policies that select once after the prefill (SnapKV from window scores, PyramidKV's
// per-layer budgets, StreamingLLM evicting at the prefill from positions; H2O, TOVA and
// ScissorHands from the prefill's attention over the reconstructed keys): the prefill attends
// everything, then each layer is stored afresh from the kept tokens; the kept counts, every
// later output and the bytes equal the reference cache's (which rebuilds GEAR's store alike).
TEST(GearBlockRetentionTest, SelectsAfterThePrefillLikeTheReferenceCache) {
  for (const char* entry :
       {R"({"name": "snapkv", "budget": 48, "window": 8, "codec": "gear-4"})",
        R"({"name": "pyramidkv", "budget": 40, "window": 8, "codec": "gear"})",
        R"({"name": "streamingllm", "sinks": 4, "window": 30, "evict": "after_prefill",
            "codec": "gear-4"})",
        R"({"name": "h2o", "heavy": 24, "recent": 16, "evict": "after_prefill", "codec": "gear"})",
        R"({"name": "tova", "budget": 40, "evict": "after_prefill", "codec": "gear-4"})",
        R"({"name": "scissorhands", "budget": 44, "recent": 8, "history": 12,
            "evict": "after_prefill", "codec": "gear"})"}) {
    SCOPED_TRACE(entry);
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "m");
    const auto codec = std::dynamic_pointer_cast<const GearCodec>(make_codec(method, at::kHalf));
    for (const testing_support::PagedDevice& where : gear_devices()) {
      SCOPED_TRACE(where.device.str() + (where.emulated ? " emulated" : ""));
      auto cache =
          where.emulated
              ? std::make_unique<GearBlockCache>(codec, kLayers, kKvHeads, kDim, where.device,
                                                 make_policy(method), true)
              : make_paged_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, where.device);
      ASSERT_NE(dynamic_cast<GearBlockCache*>(cache.get()), nullptr);
      auto ref = make_kv_cache(method, codec, kLayers, kKvHeads, kDim, at::kHalf, "reference");
      std::vector<std::pair<int, int64_t>> steps = {{0, 90}, {1, 30}};
      for (int i = 0; i < 30; ++i) steps.insert(steps.end(), {{0, 1}, {1, 1}});
      testing_support::compare_steps(*cache, *ref, kLayers, tolerance(where), 2, steps,
                                     random_block, 17);
      EXPECT_EQ(cache->kept_tokens(0), ref->kept_tokens(0));
      EXPECT_EQ(cache->kept_tokens(1), ref->kept_tokens(1));
      EXPECT_LT(cache->kept_tokens(0)[0], 120);  // the prefill was over the budget
      EXPECT_EQ(cache->length(0), 120);
      EXPECT_EQ(cache->storage().total() - cache->storage().padding, ref->storage().total());
      EXPECT_EQ(cache->nominal().total(), ref->nominal().total());
      EXPECT_GT(cache->retention_seconds(), 0);
    }
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// A reservation sizes the exact-buffer pools to the live and coming sequences: adding them
// grows nothing, an idle cache's pools are made again at the size asked (smaller too), and
// without one they grow to 4 slots, then double. On the kernel path (emulated, so the decode
// tables are in use) the steps before and after each re-sizing attend bit for bit as an
// unreserved cache's.
TEST(GearBlockCacheReserveTest, ExactPoolsTakeTheSlotsReserved) {
  auto codec = gear_codec({{"name", "gear-4"}}, at::kHalf);
  auto make = [&] {
    return GearBlockCache(codec, kLayers, kKvHeads, kDim, at::kCPU, nullptr,
                          /*kernel_path_on_cpu=*/true);
  };
  GearBlockCache cache = make(), twin = make();
  const uint64_t slot = uint64_t(2 * kLayers * codec->gear_params().buffer * kKvHeads * kDim * 2);
  auto gen = at::detail::createCPUGenerator(47);
  // n new tokens of `seq` in `cache` and of `other` in `twin`, every layer, outputs compared.
  auto steps = [&](int64_t seq, int64_t other, std::vector<int64_t> counts) {
    for (int64_t n : counts)
      for (int64_t layer = 0; layer < kLayers; ++layer) {
        const at::Tensor q = at::randn({kHeads, n, kDim}, gen).to(at::kHalf);
        const at::Tensor k = keys_like(kKvHeads, n, kDim, gen, at::kHalf).to(at::kHalf);
        const at::Tensor v = at::randn({kKvHeads, n, kDim}, gen).to(at::kHalf);
        ASSERT_TRUE(at::equal(cache.append_and_attend(seq, layer, q, k, v),
                              twin.append_and_attend(other, layer, q, k, v)))
            << "at " << cache.length(seq) << " tokens, layer " << layer;
      }
  };
  const std::vector<int64_t> decode(30, 1);  // across a compression of the buffer
  EXPECT_EQ(cache.allocated_bytes(), 0u);
  cache.reserve({{10, 20}, {30, 40}, {5, 9}});
  EXPECT_EQ(cache.allocated_bytes(), 3 * slot);
  std::vector<int64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(cache.add_sequence());
  EXPECT_EQ(cache.allocated_bytes(), 3 * slot);
  const int64_t a = twin.add_sequence();
  steps(ids[0], a, {45});
  steps(ids[0], a, decode);
  cache.remove_sequence(ids[1]);
  const uint64_t before = cache.allocated_bytes();
  cache.reserve({{1, 2}, {1, 2}});  // one free slot and one more: the live pools grow
  EXPECT_EQ(cache.allocated_bytes() - before, slot);
  steps(ids[0], a, decode);
  for (int64_t id : {ids[0], ids[2]}) cache.remove_sequence(id);
  twin.remove_sequence(a);
  cache.reserve_pool(2, 1024, 16, 512);  // idle: made again at 2 slots
  EXPECT_EQ(cache.allocated_bytes(), 2 * slot);
  cache.reserve({{7, 37}});  // a request admitted: the pool is the budget and stays
  EXPECT_EQ(cache.allocated_bytes(), 2 * slot);
  const int64_t seq = cache.add_sequence(), b = twin.add_sequence();
  steps(seq, b, {7});
  steps(seq, b, decode);
  EXPECT_EQ(cache.length(seq), 37);
  GearBlockCache unreserved = make();
  unreserved.add_sequence();
  EXPECT_EQ(unreserved.allocated_bytes(), 4 * slot);
}

TEST(GearBlockCacheErrorsTest, SaysWhatThePagedPathCannotRun) {
  const auto fp32 = gear_codec({{"name", "gear"}}, at::kFloat);
  EXPECT_NE(error_of([&] { GearBlockCache(fp32, 1, 1, kDim); }).find("fp16 or bf16"),
            std::string::npos);
  const auto codec = gear_codec({{"name", "gear"}}, at::kHalf);
  // A policy that evicts during decode (a token cannot leave a block; method resolution
  // already refuses it with GEAR, the cache says so too).
  const auto decode_h2o = std::make_shared<H2oPolicy>(32, 32, false, EvictionTiming::kDecode);
  EXPECT_NE(error_of([&] {
              GearBlockCache(codec, 1, 1, kDim, at::kCPU, decode_h2o);
            }).find("run it with attention cpu or reference"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              GearBlockCache(codec, 1, 1, 256, at::kCPU, nullptr, true);
            }).find("head_dim <= 128"),
            std::string::npos);
  GearBlockCache wide(codec, 1, 1, kDim, at::kCPU, nullptr, true);
  wide.add_sequence();
  EXPECT_NE(error_of([&] {
              wide.append_and_attend(0, 0, at::randn({16, 1, kDim}), at::randn({1, 1, kDim}),
                                     at::randn({1, 1, kDim}));
            }).find("at most 8 query heads"),
            std::string::npos);
  // Batches checked before anything is stored: no sequence, one twice, a count below 1.
  const int64_t other = wide.add_sequence();
  auto rows = [](int64_t n) { return at::randn({n, 1, kDim}); };
  EXPECT_NE(error_of([&] {
              wide.append_and_attend_batch(0, {}, {}, rows(0), rows(0), rows(0));
            }).find("empty batch"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              wide.append_and_attend_batch(0, {other, other}, {1, 1}, rows(2), rows(2), rows(2));
            }).find("twice"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              wide.append_and_attend_batch(0, {other}, {0}, rows(0), rows(0), rows(0));
            }).find("brings 0 tokens"),
            std::string::npos);
  EXPECT_EQ(wide.length(other), 0);
  if (!at::hasCUDA()) {
    EXPECT_NE(error_of([&] { GearBlockCache(codec, 1, 1, kDim, at::Device("cuda")); }).find("cuda"),
              std::string::npos);
  }
  // The registry routes every GEAR preset (and GEAR under a composition's codec) here.
  for (const char* name : {"gear", "gear-4", "gear-8"}) {
    const nlohmann::json m = resolve_method({{"name", name}}, "m");
    auto cache = make_kv_cache(m, 1, 1, kDim, at::kHalf, "paged", at::Tensor(), at::kCPU);
    EXPECT_NE(dynamic_cast<GearBlockCache*>(cache.get()), nullptr) << name;
  }
}

}  // namespace
}  // namespace kvbench
