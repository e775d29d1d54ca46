#include "kvbench/kv/quest_policy.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/simd.h"

namespace kvbench {
namespace {

// The next fp16 value towards +inf (up) or -inf, by stepping the bit pattern.
at::Half half_step(at::Half h, bool up) {
  uint16_t b = h.x;
  if ((b & 0x7fff) == 0) {
    b = up ? 0x0001 : 0x8001;  // the smallest subnormal of the needed sign
  } else if (!(b & 0x8000)) {
    b = up ? b + 1 : b - 1;
  } else {
    b = up ? b - 1 : b + 1;
  }
  return at::Half(b, at::Half::from_bits());
}

// x rounded to fp16 downwards (down) or upwards, so the result bounds x.
at::Half half_bound(float x, bool down) {
  at::Half h(x);
  const float back = static_cast<float>(h);
  if (down && back > x) return half_step(h, false);
  if (!down && back < x) return half_step(h, true);
  return h;
}

}  // namespace

// The nearest fp16, stepped one code when it overshoots (half_bound's rule, on tensors).
at::Tensor half_bounds(const at::Tensor& x, bool down) {
  const at::Tensor h = x.to(at::kHalf);
  const at::Tensor bits = h.view(at::kShort);  // sign and magnitude
  const at::Tensor zero = bits.bitwise_and(0x7fff).eq(0), negative = bits.lt(0);
  // Away from zero on the side of the step, towards it on the other; from zero, the smallest
  // subnormal of the needed sign (0x8001 is -32767 as int16).
  const at::Tensor stepped =
      at::where(zero, at::full_like(bits, down ? -32767 : 1),
                at::where(down ? negative : negative.logical_not(), bits + 1, bits - 1));
  const at::Tensor back = h.to(at::kFloat);
  const at::Tensor over = down ? back.gt(x) : back.lt(x);
  return at::where(over, stepped, bits).view(at::kHalf);
}

QuestPolicy::QuestPolicy(int64_t budget, int64_t page_size, int64_t dense_layers)
    : budget_(budget), page_(page_size), dense_layers_(dense_layers) {
  KVB_CHECK(budget >= 1 && page_size >= 1 && dense_layers >= 0,
            "quest: budget and page_size must be >= 1 and dense_layers >= 0");
  // A step reads whole pages: any other budget would read more or fewer tokens than it says.
  const int64_t below = budget / page_size * page_size, above = below + page_size;
  KVB_CHECK(
      budget % page_size == 0, "quest: budget ", budget, " is not a multiple of page_size ",
      page_size, " (a step reads budget / page_size whole pages); use ",
      below > 0 ? std::to_string(below) + " or " + std::to_string(above) : std::to_string(above));
}

nlohmann::json QuestPolicy::params() const {
  return {{"budget", budget_}, {"page_size", page_}, {"dense_layers", dense_layers_}};
}

at::Tensor QuestPolicy::select(const RetentionInput& in) const {
  const int64_t held = in.positions.size(1);  // never evicts: every token stays
  return at::arange(held, at::kLong).expand({in.positions.size(0), held}).contiguous();
}

at::Tensor QuestPolicy::select_pages(const at::Tensor& bounds) const {
  KVB_CHECK(bounds.dim() == 2 && bounds.size(1) >= 1, "quest: bounds ", bounds.sizes());
  const int64_t pages = bounds.size(1), n = std::min(pages_to_read(), pages);
  // The newest page holds the current token: it is always read, and the others are the top
  // n - 1 of the rest (it is masked out of their choice rather than forced to +inf, which a
  // NaN score would outrank).
  at::Tensor b = bounds.scalar_type() == at::kFloat ? bounds.clone() : bounds.to(at::kFloat);
  b.select(1, pages - 1).fill_(-std::numeric_limits<float>::infinity());
  const at::Tensor newest = at::full({bounds.size(0), 1}, pages - 1, b.options().dtype(at::kLong));
  return at::cat({top_tokens(b, n - 1), newest}, 1);
}

at::Tensor QuestPolicy::select_pages(const at::Tensor& bounds, const at::Tensor& pages) const {
  KVB_CHECK(bounds.dim() == 3 && bounds.size(2) >= pages_to_read() && pages.dim() == 1 &&
                pages.size(0) == bounds.size(0),
            "quest: bounds ", bounds.sizes(), " for pages ", pages.sizes());
  // select_pages' rule per row: its newest page, then the top of the pages before it (past
  // them nothing is read; a candidate scored -inf still ranks before them, being earlier).
  const at::Tensor page = at::arange(bounds.size(2), pages.options()).view({1, 1, -1});
  const at::Tensor newest = pages.view({-1, 1, 1}) - 1;
  const at::Tensor b =
      bounds.to(at::kFloat).masked_fill(page.ge(newest), -std::numeric_limits<double>::infinity());
  return at::cat({top_tokens(b, pages_to_read() - 1), newest.expand({-1, b.size(1), 1})}, 2);
}

QuestPages::QuestPages(int64_t kv_heads, int64_t head_dim, int64_t page_size)
    : kv_heads_(kv_heads),
      head_dim_(head_dim),
      page_(page_size),
      mins_(kv_heads, head_dim, at::kHalf),
      maxs_(kv_heads, head_dim, at::kHalf) {}

void QuestPages::append(const TokenStore& keys, int64_t n) {
  const int64_t first = keys.size() - n, d = head_dim_;
  KVB_CHECK(first == tokens_, "quest pages: ", tokens_, " tokens indexed, the store holds ",
            keys.size(), " after appending ", n);
  const int64_t pages_after = (tokens_ + n + page_ - 1) / page_;
  if (pages_after > pages()) {
    const int64_t extra = pages_after - pages();
    mins_.append(extra).fill_(std::numeric_limits<float>::infinity());
    maxs_.append(extra).fill_(-std::numeric_limits<float>::infinity());
  }
  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t h = 0; h < kv_heads_; ++h) {
    for (int64_t t = first; t < first + n; ++t) {
      keys.decode_rows(h, t, t + 1, row.data());
      at::Half* mn = mins_.mutable_row<at::Half>(h, t / page_);
      at::Half* mx = maxs_.mutable_row<at::Half>(h, t / page_);
      for (int64_t i = 0; i < d; ++i) {
        if (row[i] < static_cast<float>(mn[i])) mn[i] = half_bound(row[i], true);
        if (row[i] > static_cast<float>(mx[i])) mx[i] = half_bound(row[i], false);
      }
    }
  }
  tokens_ += n;
}

at::Tensor QuestPages::bounds(const at::Tensor& q) const {
  const int64_t heads = q.size(0), d = head_dim_, group = heads / kv_heads_, n = pages();
  KVB_CHECK(q.dim() == 2 && q.size(1) == d && heads % kv_heads_ == 0 && q.is_contiguous() &&
                q.scalar_type() == at::kFloat,
            "quest pages: q ", q.sizes());
  // max(q_i min_i, q_i max_i) is q_i max_i for q_i >= 0 and q_i min_i otherwise, so the
  // group's mean bound is two dot products with the group's mean positive and negative parts:
  // U = sum_i P_i max_i + N_i min_i, P = mean_r max(q_r, 0), N = mean_r min(q_r, 0).
  const at::Tensor qg = q.view({kv_heads_, group, d});
  const at::Tensor pos = qg.clamp_min(0).mean(1).contiguous();  // [kv_heads, d]
  const at::Tensor neg = qg.clamp_max(0).mean(1).contiguous();
  at::Tensor out = at::empty({kv_heads_, n}, at::kFloat);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, kv_heads_ * n, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> mn(static_cast<size_t>(d)), mx(static_cast<size_t>(d));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / n, p = task % n;
      simd::to_float(mins_.row<at::Half>(h, p), mn.data(), d);
      simd::to_float(maxs_.row<at::Half>(h, p), mx.data(), d);
      const float* ph = pos.data_ptr<float>() + h * d;
      const float* nh = neg.data_ptr<float>() + h * d;
      float u = 0;
      for (int64_t i = 0; i < d; ++i) u += ph[i] * mx[i] + nh[i] * mn[i];
      o[task] = u;
    }
  });
  return out;
}

uint64_t QuestPages::nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim,
                                   int64_t page_size) {
  const int64_t pages = (tokens + page_size - 1) / page_size;
  return 2ull * static_cast<uint64_t>(pages * kv_heads * head_dim) * sizeof(at::Half);
}

}  // namespace kvbench
