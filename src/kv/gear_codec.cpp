#include "kvbench/kv/gear_codec.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/gear_blocks.h"
#include "kvbench/kv/minmax_quant.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/model/model_config.h"
#include "paged_cache_cuda.h"

namespace kvbench {
namespace {

// Positions of the k smallest and k largest of x[0, len) (2k <= len), in ascending order.
// Ties break by position, so the choice is deterministic. NaN ranks above every number (as
// ATen's sort puts it last, which the GPU store uses), so a NaN is an outlier and kept as one;
// a comparison that NaN breaks would not be an ordering at all (undefined behaviour).
void extremes(const float* x, int64_t len, int64_t k, std::vector<int32_t>& out) {
  thread_local std::vector<int32_t> order;
  order.resize(static_cast<size_t>(len));
  std::iota(order.begin(), order.end(), 0);
  auto less = [&](int32_t a, int32_t b) {
    const float va = x[a], vb = x[b];
    const bool na = std::isnan(va), nb = std::isnan(vb);
    if (na || nb) return na == nb ? a < b : nb;
    return va < vb || (va == vb && a < b);
  };
  std::nth_element(order.begin(), order.begin() + k, order.end(), less);
  std::nth_element(order.begin() + k, order.end() - k, order.end(), less);
  out.assign(order.begin(), order.begin() + k);
  out.insert(out.end(), order.end() - k, order.end());
  std::sort(out.begin(), out.end());
}

// Rows of a model-dtype RowBuffer read one element at a time (outlier values).
struct DtypeRow {
  at::ScalarType dtype;
  const void* base;
  DtypeRow(const RowBuffer& buf, at::ScalarType type, int64_t h, int64_t row) : dtype(type) {
    switch (dtype) {
      case at::kHalf:
        base = buf.row<at::Half>(h, row);
        break;
      case at::kBFloat16:
        base = buf.row<at::BFloat16>(h, row);
        break;
      default:
        base = buf.row<float>(h, row);
    }
  }
  float operator[](int64_t i) const {
    switch (dtype) {
      case at::kHalf:
        return static_cast<float>(static_cast<const at::Half*>(base)[i]);
      case at::kBFloat16:
        return static_cast<float>(static_cast<const at::BFloat16*>(base)[i]);
      default:
        return static_cast<const float*>(base)[i];
    }
  }
};

// One side (keys or values) of one layer: compressed blocks (codes, scales/mins, outliers,
// low-rank factors) followed by the exact buffer of the newest tokens.
class GearStore final : public TokenStore {
 public:
  GearStore(const GearParams& p, at::ScalarType dtype, bool is_key, int64_t kv_heads,
            int64_t head_dim)
      : p_(p),
        dtype_(dtype),
        is_key_(is_key),
        kv_heads_(kv_heads),
        d_(head_dim),
        group_(is_key ? p.group : std::min(p.group, head_dim)),
        value_k_(is_key ? 0 : gear_outliers_per_side(p.outlier_ratio, head_dim)),
        codes_(kv_heads, head_dim * p.bits / 8, at::kByte),
        scales_(kv_heads, scale_width(), dtype),
        mins_(kv_heads, scale_width(), dtype),
        outlier_values_(kv_heads, is_key ? head_dim : 2 * value_k_, dtype),
        outlier_index_(kv_heads, is_key ? head_dim : 2 * value_k_, is_key ? at::kInt : at::kShort),
        buffer_(at::empty({kv_heads, 0, head_dim}, at::kFloat)) {}

  void append(const at::Tensor& x) override {
    // Stored rounded to the model dtype like the cache it replaces; blocks compress from it.
    buffer_ = at::cat({buffer_, x.to(at::kFloat).to(dtype_).to(at::kFloat)}, 1);
    const int64_t held = buffer_.size(1), ready = held - held % p_.buffer;
    if (ready == 0) return;
    at::Tensor block = buffer_.narrow(1, 0, ready).contiguous();
    buffer_ = buffer_.narrow(1, ready, held - ready).contiguous();
    compress(block, x.size(1) > 1 ? p_.rank_prefill : p_.rank_decode);
  }

  int64_t size() const override { return codes_.size() + buffer_.size(1); }

  // The prompt compresses as one block of its whole buffers' tokens, then every `buffer`
  // tokens form a block: the rows those blocks take, so no buffer grows up to `total`.
  void reserve(int64_t prompt, int64_t total) override {
    const int64_t B = p_.buffer, first = prompt / B * B, more = (total / B * B - first) / B;
    codes_.reserve(first + more * B);
    const auto rows = [&](auto per_block) {
      return (first > 0 ? per_block(first) : 0) + more * per_block(B);
    };
    const int64_t scale_rows =
        is_key_ ? rows([&](int64_t n) { return (n + group_ - 1) / group_; }) : first + more * B;
    const int64_t outlier_rows =
        is_key_ ? rows([&](int64_t n) { return 2 * gear_outliers_per_side(p_.outlier_ratio, n); })
                : (value_k_ > 0 ? first + more * B : 0);
    scales_.reserve(scale_rows), mins_.reserve(scale_rows);
    if (outlier_rows > 0)
      outlier_values_.reserve(outlier_rows), outlier_index_.reserve(outlier_rows);
  }

  at::Tensor dequantize() const override {
    at::Tensor out = at::empty({kv_heads_, size(), d_}, at::kFloat);
    for (int64_t h = 0; h < kv_heads_; ++h) {
      decode_rows(h, 0, size(), out.data_ptr<float>() + h * size() * d_);
    }
    return out;
  }

  int64_t head_dim() const override { return d_; }

  void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const override {
    const int64_t compressed = codes_.size();
    int64_t t = t0;
    if (t < std::min(t1, compressed)) {
      auto it = std::upper_bound(blocks_.begin(), blocks_.end(), t,
                                 [](int64_t v, const Block& b) { return v < b.start; }) -
                1;
      for (; t < std::min(t1, compressed); ++it) {
        const int64_t e = std::min(t1, it->start + it->n);
        decode_block(*it, head, t, e, out + (t - t0) * d_);
        t = e;
      }
    }
    for (; t < t1; ++t) {
      const float* w = buffer_.data_ptr<float>() + (head * buffer_.size(1) + (t - compressed)) * d_;
      std::copy(w, w + d_, out + (t - t0) * d_);
    }
  }

  StorageBytes bytes() const override {
    const uint64_t e = at::elementSize(dtype_);
    uint64_t factors = 0;
    for (const Block& b : blocks_) factors += b.q.numel() + b.p.numel();
    return {codes_.bytes() + static_cast<uint64_t>(buffer_.numel()) * e,
            scales_.bytes() + mins_.bytes() + outlier_values_.bytes() + outlier_index_.bytes() +
                factors * e};
  }
  // The exact buffer and factors counted in the model dtype, as bytes() counts them.
  uint64_t allocated_bytes() const override {
    const StorageBytes held = bytes();
    return held.total() - codes_.bytes() - scales_.bytes() - mins_.bytes() -
           outlier_values_.bytes() - outlier_index_.bytes() + codes_.allocated_bytes() +
           scales_.allocated_bytes() + mins_.allocated_bytes() + outlier_values_.allocated_bytes() +
           outlier_index_.allocated_bytes();
  }

  // Per block: codes, scales and mins by group, 2k outliers (value + index) per vector, and
  // the factors Q [n, r] and P [r, d]; then the exact buffer. Token counts only.
  std::optional<StorageBytes> history_nominal() const override {
    const uint64_t e = at::elementSize(dtype_), d = d_, g = group_, h = kv_heads_;
    const uint64_t index_bytes = is_key_ ? 4 : 2;
    StorageBytes s;
    for (const Block& b : blocks_) {
      const uint64_t n = b.n, k = b.k, r = b.rank;
      s.payload += n * d * p_.bits / 8;
      const uint64_t scale_rows = is_key_ ? (n + g - 1) / g : n;
      s.metadata += scale_rows * scale_width() * 2 * e;
      s.metadata += (is_key_ ? 2 * k * d : n * 2 * k) * (e + index_bytes);
      s.metadata += r * (n + d) * e;
    }
    s.payload += static_cast<uint64_t>(buffer_.size(1)) * d * e;
    return StorageBytes{s.payload * h, s.metadata * h};
  }

 private:
  struct Block {
    int64_t start, n, rank;
    int64_t scale_row;    // first row of scales_/mins_ (keys: one per token group)
    int64_t outlier_row;  // first row of outlier_values_/outlier_index_ (keys: 2k rows)
    int64_t k;            // outliers per side of each vector
    at::Tensor q;         // [kv_heads, n, rank] fp32 holding model-dtype values
    at::Tensor p;         // [kv_heads, rank, head_dim] fp32 holding model-dtype values (P^T)
  };

  int64_t scale_width() const { return is_key_ ? d_ : d_ / group_; }

  // x: [kv_heads, n, head_dim] fp32 (model-dtype values), appended as one block.
  void compress(const at::Tensor& x, int64_t rank) {
    const int64_t n = x.size(1), d = d_, g = group_;
    Block b;
    b.start = codes_.size();
    b.n = n;
    b.rank = std::min({rank, n, d});
    b.scale_row = is_key_ ? scales_.size() : b.start;
    b.outlier_row = is_key_ ? outlier_values_.size() : b.start;
    b.k = is_key_ ? gear_outliers_per_side(p_.outlier_ratio, n) : value_k_;
    const int64_t scale_rows = is_key_ ? (n + g - 1) / g : n;
    const int64_t outlier_rows = is_key_ ? 2 * b.k : n;
    const int64_t outlier_width = is_key_ ? d : 2 * value_k_;

    codes_.append(n).zero_();
    at::Tensor scales = at::empty({kv_heads_, scale_rows, scale_width()}, at::kFloat);
    at::Tensor mins = at::empty_like(scales);
    // [kv_heads, rows, width]: keys row j = each channel's j-th outlier (ascending token);
    // values row t = token t's outliers (ascending channel).
    at::Tensor values = at::zeros({kv_heads_, outlier_rows, outlier_width}, at::kFloat);
    at::Tensor index = at::zeros({kv_heads_, outlier_rows, outlier_width}, at::kInt);
    at::Tensor residual = at::zeros({kv_heads_, n, d}, at::kFloat);  // E
    std::vector<uint8_t> skip(static_cast<size_t>(n * d));
    std::vector<int32_t> picked;
    std::vector<float> row(static_cast<size_t>(d));
    for (int64_t h = 0; h < kv_heads_; ++h) {
      const float* xh = x.data_ptr<float>() + h * n * d;
      float* ov = values.data_ptr<float>() + h * outlier_rows * outlier_width;
      int32_t* oi = index.data_ptr<int32_t>() + h * outlier_rows * outlier_width;
      std::fill(skip.begin(), skip.end(), 0);
      if (b.k > 0) {
        // Keys select along tokens: from a channel-major copy, so each selection reads one
        // contiguous vector.
        const at::Tensor channels = is_key_ ? x[h].t().contiguous() : at::Tensor();
        for (int64_t v = 0; v < (is_key_ ? d : n); ++v) {  // a channel or a token
          const float* start = is_key_ ? channels.data_ptr<float>() + v * n : xh + v * d;
          extremes(start, is_key_ ? n : d, b.k, picked);
          for (int64_t j = 0; j < 2 * b.k; ++j) {
            const int32_t i = picked[static_cast<size_t>(j)];
            const int64_t t = is_key_ ? i : v, c = is_key_ ? v : i;
            const int64_t slot = is_key_ ? j * d + v : v * outlier_width + j;
            ov[slot] = xh[t * d + c];
            oi[slot] = i;
            skip[static_cast<size_t>(t * d + c)] = 1;
          }
        }
      }
      uint8_t* codes = codes_.mutable_row<uint8_t>(h, b.start);
      const int64_t stride = d * p_.bits / 8;
      float* s = scales[h].data_ptr<float>();
      float* m = mins[h].data_ptr<float>();
      if (is_key_) {
        minmax::quantize_per_channel(xh, n, d, g, p_.bits, dtype_, skip.data(), codes, stride, s,
                                     m);
      } else {
        minmax::quantize_per_token(xh, n, d, g, p_.bits, dtype_, skip.data(), codes, stride, s, m);
      }
      float* e = residual.data_ptr<float>() + h * n * d;
      for (int64_t t = 0; t < n; ++t) {
        if (is_key_) {
          minmax::dequantize_per_channel(codes + t * stride, s + t / g * d, m + t / g * d, d,
                                         p_.bits, row.data());
        } else {
          minmax::dequantize_per_token(codes + t * stride, s + t * (d / g), m + t * (d / g), d, g,
                                       p_.bits, row.data());
        }
        // E is zero at outliers and in groups stored NaN (the group reads back NaN anyway; its
        // NaN would spread through the factors into the head's every value).
        for (int64_t c = 0; c < d; ++c) {
          e[t * d + c] = skip[static_cast<size_t>(t * d + c)] || !std::isfinite(row[c])
                             ? 0.0f
                             : xh[t * d + c] - row[c];
        }
      }
    }
    scales_.append(scale_rows).copy_(scales);
    mins_.append(scale_rows).copy_(mins);
    if (outlier_rows > 0 && outlier_width > 0) {
      outlier_values_.append(outlier_rows).copy_(values);
      outlier_index_.append(outlier_rows).copy_(index);
    }
    if (b.rank > 0) {
      auto [q, p] =
          gear_low_rank(residual, b.rank, p_.power_iters, gear_block_seed(p_, blocks_.size()));
      b.q = q.to(dtype_).to(at::kFloat).contiguous();
      b.p = p.transpose(1, 2).to(dtype_).to(at::kFloat).contiguous();  // rows along head_dim
      // Rounding the factors to the model dtype could, for a residual the projection barely
      // captures, make L worse than nothing: such a head stores zero factors instead.
      at::Tensor after = (residual - at::bmm(b.q, b.p)).square().sum({1, 2});
      at::Tensor before = residual.square().sum({1, 2});
      for (int64_t h = 0; h < kv_heads_; ++h) {
        if (after[h].item<float>() > before[h].item<float>()) {
          b.q[h].zero_();
          b.p[h].zero_();
        }
      }
    } else {
      b.q = at::empty({kv_heads_, n, 0}, at::kFloat);
      b.p = at::empty({kv_heads_, 0, d}, at::kFloat);
    }
    blocks_.push_back(std::move(b));
  }

  // Rows [ta, tb) of block b, head h, into out [tb - ta, head_dim].
  void decode_block(const Block& b, int64_t h, int64_t ta, int64_t tb, float* out) const {
    const int64_t d = d_, g = group_, r = b.rank;
    thread_local std::vector<float> s, m, l;  // scale/min row (converted once), L's row
    s.resize(static_cast<size_t>(scale_width()));
    m.resize(static_cast<size_t>(scale_width()));
    l.resize(static_cast<size_t>(d));
    int64_t loaded = -1;
    const float* q = r > 0 ? b.q.data_ptr<float>() + h * b.n * r : nullptr;
    const float* p = r > 0 ? b.p.data_ptr<float>() + h * r * d : nullptr;
    for (int64_t t = ta; t < tb; ++t) {
      float* o = out + (t - ta) * d;
      const int64_t scale_row = is_key_ ? b.scale_row + (t - b.start) / g : t;
      if (scale_row != loaded) {
        scales_.row_as_float(h, scale_row, s.data());
        mins_.row_as_float(h, scale_row, m.data());
        loaded = scale_row;
      }
      const uint8_t* codes = codes_.row<uint8_t>(h, t);
      if (is_key_) {
        minmax::dequantize_per_channel(codes, s.data(), m.data(), d, p_.bits, o);
      } else {
        minmax::dequantize_per_token(codes, s.data(), m.data(), d, g, p_.bits, o);
      }
      if (r > 0) {
        // L's row: l = sum_j Q[t, j] P^T[j, :], then clamped into the quantization cell.
        const float* qt = q + (t - b.start) * r;
        std::fill(l.begin(), l.end(), 0.0f);
        for (int64_t j = 0; j < r; ++j) {
          const float a = qt[j];
          const float* pj = p + j * d;
          for (int64_t c = 0; c < d; ++c) l[c] += a * pj[c];
        }
        if (is_key_) {
          for (int64_t c = 0; c < d; ++c) {
            const float half = 0.5f * std::fabs(s[c]);  // a step may be negative (methods.md)
            o[c] += std::min(std::max(l[c], -half), half);
          }
        } else {
          for (int64_t c0 = 0; c0 < d; c0 += g) {
            const float half = 0.5f * std::fabs(s[c0 / g]);
            for (int64_t c = c0; c < c0 + g; ++c) o[c] += std::min(std::max(l[c], -half), half);
          }
        }
      }
      if (!is_key_ && value_k_ > 0) {
        const int16_t* idx = outlier_index_.row<int16_t>(h, t);
        const DtypeRow values(outlier_values_, dtype_, h, t);
        for (int64_t j = 0; j < 2 * value_k_; ++j) o[idx[j]] = values[j];
      }
    }
    if (is_key_ && b.k > 0) {
      // Each channel's outliers are sorted by token: find the first inside [ta, tb).
      const int32_t lo = static_cast<int32_t>(ta - b.start),
                    hi = static_cast<int32_t>(tb - b.start);
      // The block's 2k rows are consecutive: row j of channel c at j * d + c.
      const int32_t* index = outlier_index_.row<int32_t>(h, b.outlier_row);
      const DtypeRow values(outlier_values_, dtype_, h, b.outlier_row);
      const int64_t rows = 2 * b.k;
      for (int64_t c = 0; c < d; ++c) {
        int64_t a = 0, z = rows;
        while (a < z) {
          const int64_t mid = (a + z) / 2;
          if (index[mid * d + c] < lo) {
            a = mid + 1;
          } else {
            z = mid;
          }
        }
        for (int64_t j = a; j < rows && index[j * d + c] < hi; ++j) {
          out[(index[j * d + c] - lo) * d + c] = values[j * d + c];
        }
      }
    }
  }

  GearParams p_;
  at::ScalarType dtype_;
  bool is_key_;
  int64_t kv_heads_, d_;
  int64_t group_;    // keys: G tokens; values: min(G, head_dim) channels
  int64_t value_k_;  // outliers per side of each value token
  RowBuffer codes_;  // [kv_heads, compressed, head_dim * bits / 8]
  // keys: [kv_heads, token groups, head_dim]; values: [kv_heads, compressed, head_dim / G]
  RowBuffer scales_, mins_;
  // keys: [kv_heads, 2k rows per block, head_dim] (int32 token within the block);
  // values: [kv_heads, compressed, 2k] (int16 channel)
  RowBuffer outlier_values_, outlier_index_;
  std::vector<Block> blocks_;  // in token order
  at::Tensor buffer_;          // [kv_heads, w < buffer, head_dim] fp32 holding model-dtype values
};

// L's rank is at most head_dim (a block's rank is min(rank, its tokens, head_dim)): a larger
// setting would silently mean full rank, whose factors outweigh the cache they correct.
void check_gear_rank(const GearParams& p, int64_t head_dim) {
  for (const auto& [key, rank] : {std::pair<const char*, int64_t>{"rank_prefill", p.rank_prefill},
                                  {"rank_decode", p.rank_decode}})
    KVB_CHECK(rank <= head_dim, "gear: ", key, " ", rank, " exceeds head_dim = ", head_dim,
              " (the full rank)");
}

}  // namespace

int64_t gear_outliers_per_side(double ratio, int64_t length) {
  return std::min<int64_t>(std::llround(ratio * static_cast<double>(length) / 2), length / 2);
}

uint64_t gear_block_seed(const GearParams& params, uint64_t block_index) {
  return params.seed * 0x9E3779B97F4A7C15ull + block_index;
}

at::Tensor gear_random_start(int64_t batch, int64_t d, int64_t rank, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randn({batch, d, rank}, gen, at::kFloat);
}

std::pair<at::Tensor, at::Tensor> gear_low_rank(const at::Tensor& e, int64_t rank, int64_t iters,
                                                uint64_t seed) {
  KVB_CHECK(e.dim() == 3 && e.scalar_type() == at::kFloat,
            "gear: residual must be [batch, n, d] "
            "fp32");
  KVB_CHECK(rank >= 1 && rank <= std::min(e.size(1), e.size(2)), "gear: rank ", rank,
            " must be in [1, min(n, d)] for a ", e.size(1), " x ", e.size(2), " residual");
  return gear_low_rank(e, gear_random_start(e.size(0), e.size(2), rank, seed).to(e.device()),
                       iters);
}

std::pair<at::Tensor, at::Tensor> gear_low_rank(const at::Tensor& e, const at::Tensor& start,
                                                int64_t iters) {
  KVB_CHECK(iters >= 1, "gear: power_iters must be >= 1, got ", iters);
  KVB_CHECK(start.dim() == 3 && start.size(0) == e.size(0) && start.size(1) == e.size(2) &&
                start.size(2) >= 1 && start.size(2) <= std::min(e.size(1), e.size(2)),
            "gear: random start ", start.sizes(), " does not fit a residual ", e.sizes());
  at::Tensor p = start;  // [batch, d, r]
  at::Tensor q;          // [batch, n, r]
  for (int64_t i = 0; i < iters; ++i) {
    q = at::bmm(e, p);  // a new fp32 tensor: made orthonormal in place
    orthonormalize(q);
    p = at::bmm(e.transpose(1, 2), q);
  }
  return {q, p};
}

at::Tensor orthonormal_columns(const at::Tensor& y) {
  at::Tensor q = y.to(at::kFloat).contiguous();
  if (q.is_same(y)) q = q.clone();  // the caller's tensor stays as it was
  orthonormalize(q);
  return q;
}

void orthonormalize(at::Tensor& q) {
  KVB_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous() &&
                q.size(2) <= q.size(1) && q.size(0) <= (int64_t{1} << 31) - 1 &&
                q.size(1) * q.size(2) < (int64_t{1} << 31),
            "gear: cannot orthonormalize a ", q.sizes(), " ", q.scalar_type(), " batch");
  kernels::ThinQrProblem problem;
  problem.batch = int(q.size(0)), problem.rows = int(q.size(1)), problem.cols = int(q.size(2));
  problem.x = q.data_ptr<float>();
  if (q.numel() > 0) paged_cuda::thin_qr(problem, q);
}

GearCodec::GearCodec(const GearParams& params, at::ScalarType model_dtype)
    : p_(params), dtype_(model_dtype) {
  KVB_CHECK(p_.bits == 2 || p_.bits == 4 || p_.bits == 8, "gear: bits must be 2, 4 or 8, got ",
            p_.bits);
  KVB_CHECK(p_.group > 0, "gear: group must be positive, got ", p_.group);
  KVB_CHECK(p_.outlier_ratio >= 0 && p_.outlier_ratio <= 1,
            "gear: outlier_ratio must be in "
            "[0, 1], got ",
            p_.outlier_ratio);
  KVB_CHECK(p_.rank_prefill >= 0 && p_.rank_decode >= 0, "gear: ranks must be >= 0, got ",
            p_.rank_prefill, " and ", p_.rank_decode);
  KVB_CHECK(p_.power_iters >= 1, "gear: power_iters must be >= 1, got ", p_.power_iters);
  KVB_CHECK(p_.buffer >= 1, "gear: buffer must be >= 1, got ", p_.buffer);
}

nlohmann::json GearCodec::params() const {
  return {{"bits", p_.bits},
          {"group", p_.group},
          {"outlier_ratio", p_.outlier_ratio},
          {"rank_prefill", p_.rank_prefill},
          {"rank_decode", p_.rank_decode},
          {"power_iters", p_.power_iters},
          {"buffer", p_.buffer},
          {"seed", p_.seed},
          {"scale_dtype", dtype_name(dtype_)}};
}

std::unique_ptr<TokenStore> GearCodec::make_key_store(int64_t kv_heads, int64_t head_dim) const {
  check_gear_rank(p_, head_dim);
  KVB_CHECK(head_dim * p_.bits % 8 == 0, "gear: head_dim ", head_dim, " does not pack into ",
            p_.bits, "-bit codes");
  return std::make_unique<GearStore>(p_, dtype_, true, kv_heads, head_dim);
}

std::unique_ptr<TokenStore> GearCodec::make_value_store(int64_t kv_heads, int64_t head_dim) const {
  check_gear_rank(p_, head_dim);
  // A value group never spans more than one token: G > head_dim means one group per token.
  KVB_CHECK(head_dim % std::min(p_.group, head_dim) == 0, "gear: group ", p_.group,
            " does not divide head_dim ", head_dim);
  KVB_CHECK(head_dim <= 32767, "gear: head_dim ", head_dim, " exceeds the int16 outlier index");
  return std::make_unique<GearStore>(p_, dtype_, false, kv_heads, head_dim);
}

StorageBytes GearCodec::nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const {
  check_gear_rank(p_, head_dim);
  // All tokens in one append: one block of T - T mod N tokens, the rest in the exact buffer.
  const uint64_t e = at::elementSize(dtype_), h = kv_heads, d = head_dim, g = p_.group;
  const uint64_t value_g = std::min<uint64_t>(g, d);
  const int64_t block = tokens - tokens % p_.buffer;
  const uint64_t c = block, w = tokens - block;
  const uint64_t rank =
      block > 0
          ? std::min<int64_t>({tokens > 1 ? p_.rank_prefill : p_.rank_decode, block, head_dim})
          : 0;
  const uint64_t factors = 2 * rank * (c + d) * e;  // Q and P, for K and for V
  const uint64_t key_k = block > 0 ? gear_outliers_per_side(p_.outlier_ratio, block) : 0;
  const uint64_t value_k = gear_outliers_per_side(p_.outlier_ratio, head_dim);
  const uint64_t key_meta = (c + g - 1) / g * d * 2 * e + 2 * key_k * d * (e + 4);
  const uint64_t value_meta = c * (d / value_g) * 2 * e + c * 2 * value_k * (e + 2);
  const uint64_t payload = 2 * (c * d * p_.bits / 8 + w * d * e);
  return {h * payload, h * (key_meta + value_meta + factors)};
}

StorageBytes GearCodec::sequence_nominal_bytes(int64_t first, int64_t tokens, int64_t kv_heads,
                                               int64_t head_dim) const {
  KVB_CHECK(first >= 0 && tokens >= first, "gear: a sequence of ", tokens,
            " tokens cannot have begun with ", first);
  check_gear_rank(p_, head_dim);
  const int64_t B = p_.buffer, prefill_block = first - first % B;
  const int64_t value_k = gear_outliers_per_side(p_.outlier_ratio, head_dim);
  auto block = [&](int64_t n, int64_t rank) {
    rank = std::min({rank, n, head_dim});
    StorageBytes b = gear_block_nominal(
        p_, dtype_, true, n, rank, gear_outliers_per_side(p_.outlier_ratio, n), kv_heads, head_dim);
    b += gear_block_nominal(p_, dtype_, false, n, rank, value_k, kv_heads, head_dim);
    return b;
  };
  StorageBytes s;
  // (A first append of one token is a decode step's.)
  if (prefill_block > 0) s = block(prefill_block, first > 1 ? p_.rank_prefill : p_.rank_decode);
  // Every decode block is alike: B tokens at rank_decode.
  const uint64_t decode_blocks = uint64_t((tokens - prefill_block) / B);
  if (decode_blocks > 0) {
    const StorageBytes one = block(B, p_.rank_decode);
    s.payload += decode_blocks * one.payload;
    s.metadata += decode_blocks * one.metadata;
  }
  const uint64_t exact = uint64_t(tokens % B);  // keys and values in the model dtype
  s.payload += 2 * exact * uint64_t(head_dim * kv_heads) * at::elementSize(dtype_);
  return s;
}

at::Tensor GearCodec::max_error(const at::Tensor& row, bool is_key, double store_amax) const {
  // D's half step plus L clamped to another half step: one quantization step, plus (as for
  // KIVI) the rounding of scale and min, and of the exact buffer and outliers, in the model
  // dtype. Outliers only shrink a group's range, so the full row's range bounds the step.
  const double unit = dtype_ == at::kFloat ? 0x1.0p-23 : dtype_ == at::kHalf ? 0x1.0p-10 : 0x1.0p-7;
  const double levels = (1 << p_.bits) - 1;
  if (is_key) {
    return at::full_like(row, 2 * store_amax / levels + store_amax * unit * (levels + 2));
  }
  const int64_t group = std::min<int64_t>(p_.group, row.numel());
  at::Tensor groups = row.view({-1, group});
  at::Tensor range = std::get<0>(groups.max(1)) - std::get<0>(groups.min(1));
  at::Tensor amax = groups.abs().amax(1);
  at::Tensor bound = range / levels + amax * unit * (levels + 2);
  return bound.unsqueeze(1).expand({groups.size(0), group}).reshape(row.sizes());
}

}  // namespace kvbench
