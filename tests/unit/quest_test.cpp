// Quest: the page bound is an upper bound of q.k for every stored key of the page; pages are
// chosen by it with the newest page always read; decode attention over the chosen pages (fused,
// read in place, and the reference gather) matches a float64 oracle of the rule; page bounds
// are counted as metadata exactly as the formula says.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kvbench/core/error.h"
#include "kvbench/kv/block_quant_codec.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/identity_codec.h"
#include "kvbench/kv/kivi_codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/quest_policy.h"

namespace kvbench {
namespace {

at::Tensor rand(std::vector<int64_t> shape, uint64_t seed) {
  return at::randn(shape, at::detail::createCPUGenerator(seed), at::kFloat);
}

TEST(Quest, PageBoundIsAtLeastEveryKeysScore) {
  for (int64_t group : {1, 3}) {
    const int64_t kv = 2, d = 32, page = 8, tokens = 45;  // a partial last page
    for (auto codec : std::vector<std::shared_ptr<const Codec>>{
             std::make_shared<IdentityCodec>(at::kHalf),
             std::make_shared<BlockQuantCodec>(4, false, 16)}) {
      auto keys = codec->make_key_store(kv, d);
      QuestPages pages(kv, d, page);
      // Appended in uneven blocks, the way prefill and decode steps arrive.
      at::Tensor k = rand({kv, tokens, d}, 3).mul_(3.0);
      for (int64_t t0 = 0, n = 13; t0 < tokens; t0 += n, n = std::max<int64_t>(1, n - 4)) {
        const int64_t m = std::min(n, tokens - t0);
        keys->append(k.narrow(1, t0, m));
        pages.append(*keys, m);
      }
      ASSERT_EQ(pages.pages(), 6);
      const at::Tensor stored = keys->dequantize().to(at::kDouble);  // [kv, tokens, d]
      for (uint64_t seed = 0; seed < 20; ++seed) {
        at::Tensor q = rand({kv * group, d}, 100 + seed);
        at::Tensor u = pages.bounds(q);
        // Each KV head's bound is the mean over its group, so compare with the mean score.
        at::Tensor scores = at::bmm(q.to(at::kDouble).view({kv, group, d}), stored.transpose(1, 2))
                                .mean(1);  // [kv, tokens]
        for (int64_t h = 0; h < kv; ++h) {
          for (int64_t t = 0; t < tokens; ++t) {
            ASSERT_GE(u[h][t / page].item<double>(), scores[h][t].item<double>() - 1e-9)
                << codec->name() << " group " << group << " head " << h << " token " << t;
          }
        }
        EXPECT_TRUE(at::isfinite(u).all().item<bool>());
      }
      EXPECT_EQ(pages.bytes(), QuestPages::nominal_bytes(tokens, kv, d, page));
    }
  }
}

// half_bounds (the tensor rounding the paged cache keeps its page bounds with) is the
// closest fp16 on the bound's side: below (down) or above x, and no fp16 lies between it and
// x; exact values stay. Signs, zeros, subnormals and values near fp16 spacing.
TEST(Quest, HalfBoundsRoundOutwardsToTheNearestFp16) {
  auto gen = at::detail::createCPUGenerator(5);
  const at::Tensor x = at::cat({at::randn({4000}, gen) * 3, at::randn({500}, gen) * 1e-6,
                                at::tensor({0.f, -0.f, 1.f, -2.5f, 65504.f, 6e-8f, -6e-8f})});
  auto value = [](uint16_t b) { return static_cast<float>(at::Half(b, at::Half::from_bits())); };
  // The next fp16 code towards +inf (up) or -inf.
  auto step = [](uint16_t b, bool up) -> uint16_t {
    if ((b & 0x7fff) == 0) return up ? 0x0001 : 0x8001;
    return (b & 0x8000) ? (up ? b - 1 : b + 1) : (up ? b + 1 : b - 1);
  };
  for (bool down : {true, false}) {
    const at::Tensor r = half_bounds(x, down);
    ASSERT_EQ(r.scalar_type(), at::kHalf);
    const at::Tensor bits = r.view(at::kShort).contiguous();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const float xi = x[i].item<float>();
      const uint16_t b = static_cast<uint16_t>(bits[i].item<int16_t>());
      const float got = value(b);
      if (got == xi) continue;  // exact (what x.to(half) keeps)
      // On the bound's side, and one code further is past x: the nearest such fp16.
      ASSERT_TRUE(down ? got < xi : got > xi)
          << xi << " -> " << got << (down ? " (down)" : " (up)");
      const float further = value(step(b, down));
      ASSERT_TRUE(down ? further > xi : further < xi)
          << xi << " -> " << got << ", next " << further;
    }
  }
}

TEST(Quest, SelectsTheTopPagesAndAlwaysTheNewest) {
  QuestPolicy policy(/*budget=*/40, /*page=*/8, /*dense=*/0);  // 5 pages a step
  ASSERT_EQ(policy.pages_to_read(), 5);
  at::Tensor bounds = rand({3, 12}, 9);
  bounds[1][11] = -100;  // the newest page ranks last, yet is read
  at::Tensor got = policy.select_pages(bounds);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{3, 5}));
  for (int64_t h = 0; h < 3; ++h) {
    std::vector<int64_t> order(11);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return bounds[h][a].item<float>() > bounds[h][b].item<float>();
    });
    std::vector<int64_t> want(order.begin(), order.begin() + 4);
    want.push_back(11);
    std::sort(want.begin(), want.end());
    std::vector<int64_t> have(got[h].data_ptr<int64_t>(), got[h].data_ptr<int64_t>() + 5);
    EXPECT_EQ(have, want) << "head " << h;
  }
  // Fewer pages than the budget: every page.
  EXPECT_EQ(policy.select_pages(rand({1, 3}, 2)).size(1), 3);
}

// The batch's choice (rows of several sequences' bounds, each valid up to its page count, the
// rest garbage) is each row's own select_pages, ties included.
TEST(Quest, BatchedPageChoicesAreEachRowsOwn) {
  QuestPolicy policy(/*budget=*/40, /*page=*/8, /*dense=*/0);  // 5 pages a step
  const std::vector<int64_t> pages = {12, 6, 9, 12};
  at::Tensor bounds = rand({4, 3, 12}, 10).mul(4).round();  // ties among whole numbers
  bounds[1].narrow(1, 6, 6).fill_(1e6);                     // past row 1's pages: must not be read
  const at::Tensor got = policy.select_pages(bounds, at::tensor(pages, at::kLong));
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{4, 3, 5}));
  for (int64_t r = 0; r < 4; ++r)
    EXPECT_TRUE(at::equal(got[r], policy.select_pages(bounds[r].narrow(1, 0, pages[size_t(r)]))))
        << "row " << r;
}

// The rule in float64: bounds from the stored keys, top pages (+ the newest), softmax over them.
at::Tensor quest_oracle(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t page,
                        int64_t read) {
  const int64_t heads = q.size(0), kv = k.size(0), T = k.size(1), d = k.size(2);
  const int64_t group = heads / kv, pages = (T + page - 1) / page;
  at::Tensor qd = q.to(at::kDouble).view({kv, group, d});
  at::Tensor out = at::zeros({heads, 1, d}, at::kDouble);
  for (int64_t h = 0; h < kv; ++h) {
    std::vector<double> u(pages);
    for (int64_t p = 0; p < pages; ++p) {
      at::Tensor kp = k[h].narrow(0, p * page, std::min(page, T - p * page)).to(at::kDouble);
      at::Tensor mn = std::get<0>(kp.min(0)), mx = std::get<0>(kp.max(0));
      u[p] = at::maximum(qd[h] * mn, qd[h] * mx).sum(1).mean().item<double>();
    }
    std::vector<int64_t> order(pages - 1);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return u[a] > u[b]; });
    std::vector<int64_t> idx;
    order.resize(std::min<int64_t>(read - 1, pages - 1));
    order.push_back(pages - 1);
    for (int64_t p : order) {
      for (int64_t t = p * page; t < std::min(T, (p + 1) * page); ++t) idx.push_back(t);
    }
    at::Tensor sel = at::tensor(idx, at::kLong);
    at::Tensor ks = k[h].index_select(0, sel).to(at::kDouble);
    at::Tensor vs = v[h].index_select(0, sel).to(at::kDouble);
    at::Tensor p = at::softmax(at::mm(qd[h], ks.t()) / std::sqrt(static_cast<double>(d)), -1);
    out.narrow(0, h * group, group).copy_(at::mm(p, vs).unsqueeze(1));
  }
  return out;
}

TEST(Quest, DecodeReadsExactlyTheChosenPages) {
  const int64_t heads = 4, kv = 2, d = 16, page = 8, prefill = 37, steps = 30;
  const int64_t T = prefill + steps;
  at::Tensor q = rand({heads, T, d}, 1), k = rand({kv, T, d}, 2).mul_(2.0), v = rand({kv, T, d}, 3);
  for (auto codec :
       std::vector<std::shared_ptr<const Codec>>{std::make_shared<IdentityCodec>(at::kFloat),
                                                 std::make_shared<BlockQuantCodec>(8, true, 16)}) {
    for (auto backend : {AttentionBackend::kCpu, AttentionBackend::kReference}) {
      auto policy = std::make_shared<QuestPolicy>(/*budget=*/24, page, /*dense=*/0);
      CompressedKVCache cache(codec, backend, 1, kv, d, policy);
      auto all_k = codec->make_key_store(kv, d), all_v = codec->make_value_store(kv, d);
      const int64_t seq = cache.add_sequence();
      cache.append_and_attend(seq, 0, q.narrow(1, 0, prefill), k.narrow(1, 0, prefill),
                              v.narrow(1, 0, prefill));
      all_k->append(k.narrow(1, 0, prefill));
      all_v->append(v.narrow(1, 0, prefill));
      for (int64_t t = prefill; t < T; ++t) {
        at::Tensor got = cache.append_and_attend(seq, 0, q.narrow(1, t, 1), k.narrow(1, t, 1),
                                                 v.narrow(1, t, 1));
        all_k->append(k.narrow(1, t, 1));
        all_v->append(v.narrow(1, t, 1));
        // The oracle reads what the codec stored, so only the rule and summation differ.
        at::Tensor want = quest_oracle(q.narrow(1, t, 1).squeeze(1), all_k->dequantize(),
                                       all_v->dequantize(), page, 3);
        ASSERT_LT(((got.to(at::kDouble) - want).norm() / want.norm()).item<double>(), 1e-5)
            << codec->name() << " step " << t;
      }
      EXPECT_EQ(cache.kept_tokens(seq), std::vector<int64_t>{T});  // nothing is evicted
      EXPECT_EQ(cache.storage().total(), cache.nominal().total());
      EXPECT_EQ(cache.storage().metadata - all_k->bytes().metadata - all_v->bytes().metadata,
                QuestPages::nominal_bytes(T, kv, d, page));
    }
  }
}

TEST(Quest, DenseLayersAndShortContextsReadEverything) {
  QuestPolicy policy(64, 16, 2);
  EXPECT_FALSE(policy.sparse(0, 10000));
  EXPECT_FALSE(policy.sparse(1, 10000));
  EXPECT_FALSE(policy.sparse(2, 64));
  EXPECT_TRUE(policy.sparse(2, 65));
  // Up to the budget every token; past it 3 whole pages and the newest page's tokens.
  EXPECT_EQ(policy.tokens_read(64), 64);
  EXPECT_EQ(policy.tokens_read(65), 3 * 16 + 1);
  EXPECT_EQ(policy.tokens_read(80), 3 * 16 + 16);
  EXPECT_EQ(policy.tokens_read(10000), 3 * 16 + 16);
  EXPECT_EQ(policy.tokens_read(10001), 3 * 16 + 1);
}

TEST(Quest, NeedsAPerTokenCodecAndValidParams) {
  auto policy = std::make_shared<QuestPolicy>(64, 16, 0);
  EXPECT_THROW(CompressedKVCache(std::make_shared<KiviCodec>(2, 32, 128, at::kHalf),
                                 AttentionBackend::kCpu, 1, 2, 32, policy),
               Error);
  EXPECT_THROW(QuestPolicy(0, 16, 0), Error);
  // A step reads whole pages: a budget of 8 or 40 tokens over pages of 16 would read 16 or 32.
  for (int64_t budget : {8, 40}) {  // "use 16", "use 32 or 48"
    try {
      resolve_method(nlohmann::json{{"name", "quest"}, {"budget", budget}}, "methods[0]");
      ADD_FAILURE() << budget << " accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("not a multiple of page_size 16"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW(resolve_method(nlohmann::json{{"name", "quest"}, {"page_size", 0}}, "methods[0]"),
               ConfigError);
  const auto resolved = resolve_method(nlohmann::json{{"name", "quest-1024+int8"}}, "methods[0]");
  EXPECT_EQ(resolved["budget"], 1024);
  EXPECT_EQ(resolved["page_size"], 16);
}

}  // namespace
}  // namespace kvbench
