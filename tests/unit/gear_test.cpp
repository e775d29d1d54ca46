// GEAR's own invariants (../shared/reference/methods.md): s = 0 and r = 0 is KIVI; the
// power-iteration fit never increases the residual; full rank reconstructs; outliers come back
// exactly; bytes by hand. The registry-parametrised tests in codec_test.cpp cover gear, gear-4
// and gear-8 too (bounds, bytes, fused vs reference, end-to-end generation).
#include <gtest/gtest.h>

#include "kvbench/core/error.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/kivi_codec.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/method_registry.h"
#include "random_kv.h"

namespace kvbench {
namespace {

using testing_support::kv_like;

GearParams params(int bits, double outliers, int64_t rank, int64_t buffer) {
  GearParams p;
  p.bits = bits;
  p.group = 32;
  p.outlier_ratio = outliers;
  p.rank_prefill = rank;
  p.rank_decode = rank;
  p.buffer = buffer;
  return p;
}

// A prefill of `prefill` tokens, then single-token decode steps up to x's length.
void feed(TokenStore& store, const at::Tensor& x, int64_t prefill) {
  store.append(x.narrow(1, 0, prefill));
  for (int64_t t = prefill; t < x.size(1); ++t) store.append(x.narrow(1, t, 1));
}

TEST(Gear, NoOutliersAndRankZeroIsKivi) {
  // Keys: the same blocks of R = buffer tokens, so the whole store equals KIVI's. Values: GEAR
  // compresses whole blocks where KIVI slides its window, so each value GEAR compressed must
  // equal KIVI's per-token quantization of it (KIVI fed 64 more tokens quantizes all of them),
  // and the rest equal the exact bf16 buffer.
  const int64_t tokens = 230, prefill = 150, buffer = 64;
  const int64_t compressed = tokens - tokens % buffer;
  for (int bits : {2, 4}) {
    GearCodec gear(params(bits, 0.0, 0, buffer), at::kBFloat16);
    KiviCodec kivi(bits, 32, buffer, at::kBFloat16);
    IdentityCodec exact(at::kBFloat16);
    at::Tensor x = kv_like(2, tokens + buffer, 64, 11);
    at::Tensor head = x.narrow(1, 0, tokens);

    auto gk = gear.make_key_store(2, 64), kk = kivi.make_key_store(2, 64);
    feed(*gk, head, prefill);
    feed(*kk, head, prefill);
    EXPECT_TRUE(at::equal(gk->dequantize(), kk->dequantize())) << bits;

    auto gv = gear.make_value_store(2, 64), kv = kivi.make_value_store(2, 64);
    auto ev = exact.make_value_store(2, 64);
    feed(*gv, head, prefill);
    kv->append(x);
    ev->append(head);
    at::Tensor g = gv->dequantize();
    EXPECT_TRUE(at::equal(g.narrow(1, 0, compressed), kv->dequantize().narrow(1, 0, compressed)))
        << bits;
    EXPECT_TRUE(at::equal(g.narrow(1, compressed, tokens - compressed),
                          ev->dequantize().narrow(1, compressed, tokens - compressed)))
        << bits;
  }
}

TEST(Gear, PowerIterationNeverIncreasesTheResidual) {
  for (uint64_t seed : {1, 2, 3}) {
    for (auto [n, d] : {std::pair<int64_t, int64_t>{50, 64}, {200, 32}, {7, 128}}) {
      at::Tensor e = at::randn({3, n, d}, at::detail::createCPUGenerator(seed));
      for (int64_t rank : {int64_t{1}, int64_t{2}, std::min<int64_t>(8, n)}) {
        for (int64_t iters : {1, 3}) {
          auto [q, p] = gear_low_rank(e, rank, iters, seed + 100);
          at::Tensor before = e.flatten(1).norm(2, 1);
          at::Tensor after = (e - at::bmm(q, p.transpose(1, 2))).flatten(1).norm(2, 1);
          EXPECT_TRUE((after < before).all().item<bool>())
              << n << "x" << d << " rank " << rank << " iters " << iters;
          // Q's columns are orthonormal, so L = Q Q^T E is a projection.
          at::Tensor eye = at::eye(rank).expand({3, rank, rank});
          EXPECT_LT((at::bmm(q.transpose(1, 2), q) - eye).abs().max().item<float>(), 1e-4);
        }
      }
    }
  }
}

// Frobenius norm of x - x^ over a store's first `tokens` tokens.
double store_error(const GearCodec& codec, bool is_key, const at::Tensor& x, int64_t prefill) {
  auto store = is_key ? codec.make_key_store(x.size(0), x.size(2))
                      : codec.make_value_store(x.size(0), x.size(2));
  feed(*store, x, prefill);
  return (store->dequantize() - x.to(at::kBFloat16).to(at::kFloat)).norm().item<double>();
}

TEST(Gear, LowRankNeverIncreasesTheStoredError) {
  // The same D and S with and without L: L (clamped into each value's quantization cell) can
  // only reduce the error, in a prefill block and in decode blocks alike.
  at::Tensor x = kv_like(2, 300, 64, 21);
  for (int bits : {2, 4, 8}) {
    for (bool is_key : {true, false}) {
      const double without =
          store_error(GearCodec(params(bits, 0.02, 0, 20), at::kBFloat16), is_key, x, 200);
      const double with =
          store_error(GearCodec(params(bits, 0.02, 4, 20), at::kBFloat16), is_key, x, 200);
      EXPECT_LE(with, without) << bits << (is_key ? " keys" : " values");
      EXPECT_GT(without, 0.0);
    }
  }
}

TEST(Gear, FullRankReconstructsTheResidual) {
  // rank >= min(n, d): Q spans E's columns, so D + L = X up to float rounding (fp32 storage, so
  // factors, scales and the buffer are not rounded). Tolerance: 1e-5 of the largest value.
  for (auto [tokens, dim] : {std::pair<int64_t, int64_t>{40, 64}, {128, 64}}) {
    GearParams p = params(2, 0.02, 64, tokens);
    at::Tensor x = kv_like(2, tokens, dim, 31);
    for (bool is_key : {true, false}) {
      GearCodec codec(p, at::kFloat);
      auto store = is_key ? codec.make_key_store(2, dim) : codec.make_value_store(2, dim);
      store->append(x);
      const double err = (store->dequantize() - x).abs().max().item<double>();
      EXPECT_LT(err, 1e-5 * x.abs().max().item<double>())
          << tokens << " tokens" << (is_key ? " keys" : " values");
      GearCodec rank_zero(params(2, 0.02, 0, tokens), at::kFloat);
      auto plain = is_key ? rank_zero.make_key_store(2, dim) : rank_zero.make_value_store(2, dim);
      plain->append(x);
      EXPECT_GT((plain->dequantize() - x).abs().max().item<double>(), 100 * err);
    }
  }
}

TEST(Gear, OutliersReconstructExactly) {
  // s = 0.1: keys keep round(0.1 * 60 / 2) = 3 tokens per side of each channel of the 60-token
  // block, values round(0.1 * 64 / 2) = 3 channels per side of each token; they come back as
  // the exact stored (model-dtype) values. Values tied with the 4th-largest (smallest) may or
  // may not be chosen, so only those strictly beyond it are checked.
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    GearCodec codec(params(2, 0.1, 2, 60), dtype);
    at::Tensor x = kv_like(2, 60, 64, 41);
    at::Tensor exact = x.to(dtype).to(at::kFloat);
    for (bool is_key : {true, false}) {
      auto store = is_key ? codec.make_key_store(2, 64) : codec.make_value_store(2, 64);
      store->append(x);
      at::Tensor back = store->dequantize();
      const int64_t axis = is_key ? 1 : 2;  // keys: along tokens per channel; values: channels
      at::Tensor high = std::get<0>(exact.topk(4, axis, true)).narrow(axis, 3, 1);
      at::Tensor low = std::get<0>(exact.topk(4, axis, false)).narrow(axis, 3, 1);
      at::Tensor outlier = (exact > high) | (exact < low);
      EXPECT_GE(outlier.sum().item<int64_t>(), (is_key ? 2 * 64 : 2 * 60) * 4)  // mostly 6 each
          << (is_key ? "keys" : "values");
      EXPECT_TRUE(at::equal(back.masked_select(outlier), exact.masked_select(outlier)))
          << (is_key ? "keys " : "values ") << dtype;
      // Everything else is quantized: not all of it comes back exactly.
      EXPECT_FALSE(at::equal(back, exact));
    }
  }
}

TEST(Gear, DecodeRowsAgreesWithDequantizeOnAnyRange) {
  // Blocks of different lengths (a 100-token prefill block, decode blocks of 20), key outliers
  // in every block (s = 0.1), ranges that start and end inside blocks and in the buffer.
  GearCodec codec(params(4, 0.1, 3, 20), at::kBFloat16);
  at::Tensor x = kv_like(2, 157, 64, 51);
  for (bool is_key : {true, false}) {
    auto store = is_key ? codec.make_key_store(2, 64) : codec.make_value_store(2, 64);
    feed(*store, x, 100);
    at::Tensor all = store->dequantize();
    for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, 157},
                          {5, 37},
                          {99, 121},
                          {118, 157},
                          {140, 141},
                          {150, 157}}) {
      at::Tensor rows = at::empty({t1 - t0, 64}, at::kFloat);
      store->decode_rows(1, t0, t1, rows.data_ptr<float>());
      EXPECT_TRUE(at::equal(rows, all[1].narrow(0, t0, t1 - t0))) << t0 << ".." << t1;
    }
  }
}

TEST(Gear, BytesByHand) {
  // One head, d = 64, G = 32, 4-bit, s = 0.02, rank 4, buffer 20, bf16; 45 tokens in one append:
  // a 40-token block and 5 exact tokens per side.
  //   payload per side: 40 * 32 B codes + 5 * 128 B buffer = 1920
  //   keys:   2 groups x 64 channels x (scale + min) x 2 B = 512; round(0.4) = 0 outliers
  //   values: 40 tokens x 2 groups x 2 x 2 B = 320; 1 + 1 outliers x (2 B + int16) x 40 = 320
  //   factors: (40 + 64) x 4 x 2 B = 832 per side
  GearCodec codec(params(4, 0.02, 4, 20), at::kBFloat16);
  auto keys = codec.make_key_store(1, 64), values = codec.make_value_store(1, 64);
  at::Tensor x = kv_like(1, 45, 64, 61);
  keys->append(x);
  values->append(x);
  EXPECT_EQ(keys->bytes().payload, 1920u);
  EXPECT_EQ(keys->bytes().metadata, 512u + 832u);
  EXPECT_EQ(values->bytes().metadata, 640u + 832u);
  const StorageBytes nominal = codec.nominal_bytes(45, 1, 64);
  EXPECT_EQ(nominal.payload, 3840u);
  EXPECT_EQ(nominal.metadata, 512u + 640u + 2 * 832u);
  // 15 decode steps fill the buffer: a 20-token decode block at rank 4 adds (20 + 64) x 4 x 2 B
  // of factors and one key group row pair per side, which the one-append formula for 60 tokens
  // does not have (it counts one 60-token block instead).
  for (int64_t t = 0; t < 15; ++t) {
    keys->append(x.narrow(1, 44, 1));
    values->append(x.narrow(1, 44, 1));
  }
  EXPECT_EQ(keys->bytes().payload, 60u * 32);
  EXPECT_EQ(keys->bytes().metadata, 512u + 832u + 256u + 672u);
  // The store's own formula follows its blocks, so the cache compares like with like.
  EXPECT_EQ(keys->history_nominal()->metadata, keys->bytes().metadata);
  EXPECT_EQ(keys->history_nominal()->payload, keys->bytes().payload);
}

// The formula of a prefill followed by decode steps (sequence_nominal_bytes: what the capacity
// view plans) is what the stores hold after each step, at prefills shorter and longer than the
// buffer, of one token (a decode step's rank), and at different prefill and decode ranks; a
// whole sequence in one append is nominal_bytes.
TEST(Gear, SequenceNominalIsWhatAPrefillThenDecodeStepsStore) {
  GearParams p = params(4, 0.1, 6, 20);
  p.rank_decode = 3;
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    GearCodec codec(p, dtype);
    for (int64_t first : {1, 7, 20, 45}) {
      SCOPED_TRACE(testing::Message() << "first " << first);
      auto keys = codec.make_key_store(2, 64), values = codec.make_value_store(2, 64);
      const int64_t total = first + 70;
      at::Tensor x = kv_like(2, total, 64, 90 + first);
      keys->append(x.narrow(1, 0, first));
      values->append(x.narrow(1, 0, first));
      for (int64_t t = first;; ++t) {
        StorageBytes held = keys->bytes();
        held += values->bytes();
        const StorageBytes formula = codec.sequence_nominal_bytes(first, t, 2, 64);
        ASSERT_EQ(formula.payload, held.payload) << t;
        ASSERT_EQ(formula.metadata, held.metadata) << t;
        if (t == total) break;
        keys->append(x.narrow(1, t, 1));
        values->append(x.narrow(1, t, 1));
      }
      const StorageBytes one = codec.nominal_bytes(first, 2, 64),
                         same = codec.sequence_nominal_bytes(first, first, 2, 64);
      EXPECT_EQ(one.payload, same.payload);
      EXPECT_EQ(one.metadata, same.metadata);
    }
  }
  EXPECT_THROW(GearCodec(p, at::kHalf).sequence_nominal_bytes(10, 9, 2, 64), Error);
}

// A store reserved for a prompt and a total sizes every row buffer exactly: after the prompt's
// block and the decode blocks up to the total, it occupies what it holds (unreserved, its
// buffers double), and reads back the same. Blocks of 20 (not a whole number of key groups)
// and of 64.
TEST(Gear, ReservedStoresSizeTheirRowsExactly) {
  for (int64_t buffer : {20, 64}) {
    GearCodec codec(params(4, 0.1, 2, buffer), at::kHalf);
    const int64_t prompt = 45, total = 350;
    at::Tensor x = kv_like(2, total, 64, 62);
    for (bool is_key : {true, false}) {
      SCOPED_TRACE(testing::Message() << "buffer " << buffer << (is_key ? ", keys" : ", values"));
      auto make = [&] {
        return is_key ? codec.make_key_store(2, 64) : codec.make_value_store(2, 64);
      };
      auto reserved = make(), grown = make();
      reserved->reserve(prompt, total);
      feed(*reserved, x, prompt);
      feed(*grown, x, prompt);
      EXPECT_EQ(reserved->allocated_bytes(), reserved->bytes().total());
      EXPECT_GT(grown->allocated_bytes(), grown->bytes().total());
      EXPECT_TRUE(at::equal(reserved->dequantize(), grown->dequantize()));
    }
  }
}

// A long generation after a short prompt: many decode blocks, each with its own factors. The
// cache's nominal (from the blocks' token counts) must equal what the tensors hold, so no
// false "compression did not happen" flag is raised.
TEST(Gear, CacheNominalFollowsTheBlocksOverLongGenerations) {
  for (const char* name : {"gear", "gear-4", "gear-8"}) {
    auto cache = make_kv_cache(resolve_method({{"name", name}, {"outlier_ratio", 0.1}}, "m"), 2, 2,
                               64, at::kHalf, "reference");
    const int64_t seq = cache->add_sequence();
    auto step = [&](int64_t n, uint64_t seed) {
      for (int64_t layer = 0; layer < 2; ++layer) {
        at::Tensor q = kv_like(4, n, 64, seed), k = kv_like(2, n, 64, seed + 1),
                   v = kv_like(2, n, 64, seed + 2);
        cache->append_and_attend(seq, layer, q, k, v);
      }
    };
    step(100, 1);
    for (int64_t t = 0; t < 300; ++t) step(1, 10 + t);
    EXPECT_EQ(cache->nominal().payload, cache->storage().payload) << name;
    EXPECT_EQ(cache->nominal().metadata, cache->storage().metadata) << name;
    EXPECT_GT(cache->storage().metadata, 0u);
  }
}

TEST(Gear, PresetsAndParameterErrors) {
  auto resolve = [](const nlohmann::json& j) { return resolve_method(j, "methods[0]"); };
  const nlohmann::json g4 = make_codec(resolve({{"name", "gear-4"}}), at::kHalf)->params();
  EXPECT_EQ(g4["bits"], 4);
  EXPECT_EQ(g4["group"], 32);
  EXPECT_EQ(g4["outlier_ratio"], 0.02);
  EXPECT_EQ(g4["rank_prefill"], 4);
  EXPECT_EQ(g4["rank_decode"], 2);
  EXPECT_EQ(g4["power_iters"], 3);
  EXPECT_EQ(g4["buffer"], 20);
  EXPECT_EQ(make_codec(resolve({{"name", "gear-8"}}), at::kHalf)->params()["bits"], 8);
  const nlohmann::json g = make_codec(resolve({{"name", "gear"}}), at::kHalf)->params();
  EXPECT_EQ(g["bits"], 2);
  EXPECT_EQ(g["group"], 64);
  EXPECT_EQ(g["buffer"], 64);
  // Presets take overrides, except the bits their name fixes.
  EXPECT_EQ(
      make_codec(resolve({{"name", "gear-4"}, {"buffer", 64}}), at::kHalf)->params()["buffer"], 64);
  EXPECT_THROW(resolve({{"name", "gear-4"}, {"bits", 2}}), ConfigError);
  try {
    resolve({{"name", "gear"}, {"bits", 3}});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: methods[0].bits: expected integer in {2, 4, 8}, got 3");
  }
  EXPECT_THROW(resolve({{"name", "gear"}, {"outlier_ratio", 1.5}}), ConfigError);
  EXPECT_THROW(resolve({{"name", "gear"}, {"power_iters", 0}}), ConfigError);
  EXPECT_THROW(resolve({{"name", "gear"}, {"rank_decode", -1}}), ConfigError);
  // A rank past head_dim would silently be the full rank: refused where head_dim is known.
  GearCodec too_high(params(4, 0.02, 65, 20), at::kHalf);
  EXPECT_THROW(too_high.make_key_store(1, 64), Error);
  EXPECT_THROW(too_high.make_value_store(1, 64), Error);
  EXPECT_THROW(too_high.nominal_bytes(100, 1, 64), Error);
  EXPECT_NO_THROW(too_high.nominal_bytes(100, 1, 128));
  EXPECT_THROW(resolve({{"name", "gear"}, {"ranks", 2}}), ConfigError);
  GearParams bad;
  bad.power_iters = 0;
  EXPECT_THROW(GearCodec(bad, at::kHalf), Error);
  GearCodec wide(GearParams{}, at::kHalf);  // G = 64 does not divide head_dim 96
  EXPECT_THROW(wide.make_value_store(1, 96), Error);
}

}  // namespace
}  // namespace kvbench
