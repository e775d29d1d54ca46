#include "kvbench/kv/kivi_codec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/minmax_quant.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/kv/simd.h"
#include "kvbench/model/model_config.h"

namespace kvbench {
namespace {

// What both stores share: packed codes per token row, scale/min rows, and the exact window.
class KiviStoreBase : public TokenStore {
 public:
  KiviStoreBase(int bits, int64_t group, int64_t residual, at::ScalarType dtype, int64_t kv_heads,
                int64_t head_dim, int64_t scale_width)
      : bits_(bits),
        group_(group),
        residual_(residual),
        dtype_(dtype),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        codes_(kv_heads, head_dim * bits / 8, at::kByte),
        scales_(kv_heads, scale_width, dtype),
        mins_(kv_heads, scale_width, dtype),
        window_(at::empty({kv_heads, 0, head_dim}, at::kFloat)) {}

  int64_t size() const override { return quantized() + window_.size(1); }

  at::Tensor dequantize() const override {
    at::Tensor out = at::empty({kv_heads_, size(), head_dim_}, at::kFloat);
    for (int64_t h = 0; h < kv_heads_; ++h) {
      for (int64_t t = 0; t < size(); ++t) {
        row(h, t, out.data_ptr<float>() + (h * size() + t) * head_dim_);
      }
    }
    return out;
  }

  int64_t head_dim() const override { return head_dim_; }
  void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const override {
    for (int64_t t = t0; t < t1; ++t) row(head, t, out + (t - t0) * head_dim_);
  }

  StorageBytes bytes() const override {
    const uint64_t window = static_cast<uint64_t>(window_.numel()) * at::elementSize(dtype_);
    return {codes_bytes() + window, scales_.bytes() + mins_.bytes()};
  }

 protected:
  // Tokens held as codes (the rest are in the window), and the bytes of their codes.
  virtual int64_t quantized() const { return codes_.size(); }
  virtual uint64_t codes_bytes() const { return codes_.bytes(); }
  // Row j of head h's exact window: [head_dim] fp32.
  const float* window_row(int64_t h, int64_t j) const {
    return window_.data_ptr<float>() + (h * window_.size(1) + j) * head_dim_;
  }
  // Per-thread fp32 scratch for the fused kernels (scales, mins, the scaled query).
  static float* scratch(size_t floats) {
    thread_local std::vector<float> buffer;
    if (buffer.size() < floats) buffer.resize(floats);
    return buffer.data();
  }

  // Token t of head h, reconstructed into out[head_dim].
  void row(int64_t h, int64_t t, float* out) const {
    const int64_t quantized = this->quantized();
    if (t >= quantized) {
      const float* w =
          window_.data_ptr<float>() + (h * window_.size(1) + (t - quantized)) * head_dim_;
      std::copy(w, w + head_dim_, out);
      return;
    }
    decode(h, t, out);
  }
  virtual void decode(int64_t h, int64_t t, float* out) const = 0;

  // Appends to the exact window, stored rounded to the model dtype like the cache it replaces.
  void push_window(const at::Tensor& x) {
    window_ = at::cat({window_, x.to(dtype_).to(at::kFloat)}, 1);
  }
  at::Tensor take_window(int64_t n) {  // removes and returns the oldest n window tokens
    at::Tensor taken = window_.narrow(1, 0, n).contiguous();
    window_ = window_.narrow(1, n, window_.size(1) - n).contiguous();
    return taken;
  }

  int bits_;
  int64_t group_, residual_;
  at::ScalarType dtype_;
  int64_t kv_heads_, head_dim_;
  RowBuffer codes_, scales_, mins_;
  at::Tensor window_;  // [kv_heads, w, head_dim] fp32 holding model-dtype values
};

// Keys: blocks of R tokens, each channel quantized over groups of G tokens.
class KiviKeyStore final : public KiviStoreBase {
 public:
  static uint64_t next_id() {
    static std::atomic<uint64_t> counter{0};
    return ++counter;
  }
  KiviKeyStore(int bits, int64_t group, int64_t residual, at::ScalarType dtype, int64_t kv_heads,
               int64_t head_dim, bool query_int8)
      : KiviStoreBase(bits, group, residual, dtype, kv_heads, head_dim, head_dim),
        id_(next_id()),
        query_int8_(query_int8 && head_dim % simd::kQ8Block == 0),
        words_(head_dim * bits % 32 == 0 ? head_dim * bits / 32 : 0) {
    // one row of codes_ per tile of kKeyTile tokens (simd::KiviKeyTiles)
    if (tiled()) codes_ = RowBuffer(kv_heads, simd::kKeyTile * head_dim * bits / 8, at::kByte);
  }

  void append(const at::Tensor& x) override {
    push_window(x.to(at::kFloat));
    while (window_.size(1) >= residual_) quantize_block(take_window(residual_));
  }

 private:
  bool tiled() const { return words_ > 0; }

  // block: [kv_heads, R, head_dim]; scale rows: one per group of G tokens, one value per channel.
  // Tiled, the codes are quantized as token rows into a staging buffer and then copied into
  // their slots: the block need not start or end on a tile (R % 16 != 0).
  void quantize_block(const at::Tensor& block) {
    const int64_t start = quantized_, groups = residual_ / group_,
                  row_bytes = head_dim_ * bits_ / 8;
    at::Tensor staging;  // [kv_heads, R, row_bytes]
    if (tiled()) {
      staging = at::zeros({kv_heads_, residual_, row_bytes}, at::kByte);
      const int64_t tiles = (start + residual_ + simd::kKeyTile - 1) / simd::kKeyTile;
      if (tiles > codes_.size()) codes_.append(tiles - codes_.size()).zero_();
    } else {
      codes_.append(residual_).zero_();
    }
    at::Tensor scales = at::empty({kv_heads_, groups, head_dim_}, at::kFloat);
    at::Tensor mins = at::empty({kv_heads_, groups, head_dim_}, at::kFloat);
    for (int64_t h = 0; h < kv_heads_; ++h) {
      uint8_t* rows =
          tiled() ? staging[h].data_ptr<uint8_t>() : codes_.mutable_row<uint8_t>(h, start);
      minmax::quantize_per_channel(block.data_ptr<float>() + h * residual_ * head_dim_, residual_,
                                   head_dim_, group_, bits_, dtype_, nullptr, rows, row_bytes,
                                   scales[h].data_ptr<float>(), mins[h].data_ptr<float>());
      if (tiled()) {
        simd::tile_key_rows(rows, words_, start, start + residual_,
                            codes_.mutable_row<uint8_t>(h, 0));
      }
    }
    quantized_ += residual_;
    scales_.append(groups).copy_(scales);
    mins_.append(groups).copy_(mins);
  }

  int64_t quantized() const override { return quantized_; }
  // The quantized tokens' bytes, not whole tiles': a partial last tile's free slots are
  // capacity for the next tokens (like a RowBuffer's spare rows), so bytes() stays the
  // method's nominal size. Codes are bytes (element size 1).
  uint64_t codes_bytes() const override {
    const int64_t tokens_per_row = tiled() ? simd::kKeyTile : 1;
    return static_cast<uint64_t>(kv_heads_ * quantized_ * codes_.width() / tokens_per_row);
  }

 public:
  // Fused key read on the codes: within a token group every channel c has one scale s_c and
  // min m_c, so q . k_t = sum_c (q_c s_c) code_tc + sum_c q_c m_c (simd::channel_scores: the
  // scaled query once per group, the codes read in registers; with query_int8 the scaled query
  // quantized to int8 blocks of 32 and the codes scored as integers; simd::kivi_key_tile_scores
  // on tiled codes). The groups' scale and min rows are converted to fp32 once per call; the
  // exact window is read as fp32 rows.
  void dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1, float* scores,
           int64_t stride) const override {
    const int64_t quantized = quantized_, mid = std::clamp(quantized, t0, t1), n = head_dim_;
    if (mid > t0) {
      const int64_t g0 = t0 / group_, g1 = (mid - 1) / group_ + 1;
      float* s = scratch(static_cast<size_t>(2 * (g1 - g0) * n));
      float* m = s + (g1 - g0) * n;
      scales_.rows_as_float(head, g0, g1, s);
      mins_.rows_as_float(head, g0, g1, m);
      // the next chunk's rows (the fused attention walks a head's chunks in order)
      scales_.prefetch_rows(head, g1, g1 + (g1 - g0));
      mins_.prefetch_rows(head, g1, g1 + (g1 - g0));
      if (tiled()) {
        simd::kivi_key_tile_scores({codes_.row<uint8_t>(head, 0), s, m, bits_, group_, n, g0}, t0,
                                   mid, q, rows, scores, stride, query_int8_);
      } else {
        simd::channel_scores({codes_.row<uint8_t>(head, t0), s, m, bits_, group_, n, t0 % group_},
                             mid - t0, q, rows, scores, stride, query_int8_);
      }
    }
    if (t1 > mid) {
      simd::rows_scores(simd::RowType::kFloat32, window_row(head, mid - quantized), t1 - mid, n, q,
                        rows, scores + (mid - t0), stride);
    }
  }

 private:
  void decode(int64_t h, int64_t t, float* out) const override {
    // One scale/min row serves G consecutive tokens: convert it once per group, not per token
    // (decode_rows walks tokens in order).
    // Keyed by a process-unique store id, not the address: a new store may reuse a freed one's.
    thread_local struct {
      uint64_t owner = 0;
      int64_t head = -1, group = -1;
      std::vector<float> s, m;
    } cache;
    if (cache.owner != id_ || cache.head != h || cache.group != t / group_) {
      cache.s.resize(static_cast<size_t>(head_dim_));
      cache.m.resize(static_cast<size_t>(head_dim_));
      scales_.row_as_float(h, t / group_, cache.s.data());
      mins_.row_as_float(h, t / group_, cache.m.data());
      cache.owner = id_;
      cache.head = h;
      cache.group = t / group_;
    }
    const float* s = cache.s.data();
    const float* m = cache.m.data();
    minmax::dequantize_per_channel(token_codes(h, t), s, m, head_dim_, bits_, out);
  }
  // Token t's packed codes as a row (copied out of its tile when tiled).
  const uint8_t* token_codes(int64_t h, int64_t t) const {
    if (!tiled()) return codes_.row<uint8_t>(h, t);
    thread_local std::vector<uint8_t> row;
    row.resize(static_cast<size_t>(words_ * 4));
    simd::untile_key_rows(codes_.row<uint8_t>(h, 0), words_, t, t + 1, row.data());
    return row.data();
  }

  const uint64_t id_;
  const bool query_int8_;
  // dwords per token row when a row is whole dwords (head_dim * bits % 32 == 0): the codes are
  // then tiled (simd::KiviKeyTiles, codes_ holds [kv_heads, tiles, 16 rows' bytes]); 0: token
  // rows, as the value store keeps them
  const int64_t words_;
  int64_t quantized_ = 0;  // tokens quantized per head (the last tile may be partial)
};

// Values: a sliding exact window of R tokens; older tokens per token in groups of G channels.
class KiviValueStore final : public KiviStoreBase {
 public:
  KiviValueStore(int bits, int64_t group, int64_t residual, at::ScalarType dtype, int64_t kv_heads,
                 int64_t head_dim, bool value_int8)
      : KiviStoreBase(bits, group, residual, dtype, kv_heads, head_dim, head_dim / group),
        value_int8_(value_int8) {}

  void append(const at::Tensor& x) override {
    push_window(x.to(at::kFloat));
    if (window_.size(1) > residual_) quantize_tokens(take_window(window_.size(1) - residual_));
  }

 private:
  void quantize_tokens(const at::Tensor& tokens) {  // [kv_heads, n, head_dim]
    const int64_t n = tokens.size(1), start = codes_.size(), groups = head_dim_ / group_;
    codes_.append(n).zero_();
    at::Tensor scales = at::empty({kv_heads_, n, groups}, at::kFloat);
    at::Tensor mins = at::empty({kv_heads_, n, groups}, at::kFloat);
    for (int64_t h = 0; h < kv_heads_; ++h) {
      minmax::quantize_per_token(tokens.data_ptr<float>() + h * n * head_dim_, n, head_dim_, group_,
                                 bits_, dtype_, nullptr, codes_.mutable_row<uint8_t>(h, start),
                                 head_dim_ * bits_ / 8, scales[h].data_ptr<float>(),
                                 mins[h].data_ptr<float>());
    }
    scales_.append(n).copy_(scales);
    mins_.append(n).copy_(mins);
  }

 public:
  // Fused value read: per-token groups straight from the codes, then the exact window.
  void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                  int64_t stride, float* out) const override {
    const int64_t quantized = codes_.size(), mid = std::clamp(quantized, t0, t1);
    if (mid > t0) {
      const int64_t n = (mid - t0) * (head_dim_ / group_);
      float* s = scratch(static_cast<size_t>(2 * n));
      scales_.rows_as_float(head, t0, mid, s);
      mins_.rows_as_float(head, t0, mid, s + n);
      scales_.prefetch_rows(head, mid, mid + (mid - t0));  // the next chunk's
      mins_.prefetch_rows(head, mid, mid + (mid - t0));
      const simd::CodeRows v{codes_.row<uint8_t>(head, t0), s, s + n, bits_, 0, group_, head_dim_};
      if (value_int8_) {
        simd::codes_weighted_sum_int8(v, mid - t0, p, rows, stride, out);
      } else {
        simd::codes_weighted_sum(v, mid - t0, p, rows, stride, out);
      }
    }
    if (t1 > mid) {
      simd::rows_weighted_sum(simd::RowType::kFloat32, window_row(head, mid - quantized), t1 - mid,
                              head_dim_, p + (mid - t0), rows, stride, out);
    }
  }

 private:
  void decode(int64_t h, int64_t t, float* out) const override {
    const uint8_t* codes = codes_.row<uint8_t>(h, t);
    const int64_t groups = head_dim_ / group_;
    thread_local std::vector<float> s, m;  // no allocation per token
    s.resize(static_cast<size_t>(groups));
    m.resize(static_cast<size_t>(groups));
    scales_.row_as_float(h, t, s.data());
    mins_.row_as_float(h, t, m.data());
    minmax::dequantize_per_token(codes, s.data(), m.data(), head_dim_, group_, bits_, out);
  }

  const bool value_int8_;
};

}  // namespace

KiviCodec::KiviCodec(int bits, int64_t group, int64_t residual, at::ScalarType model_dtype,
                     bool query_int8, bool value_int8)
    : bits_(bits),
      group_(group),
      residual_(residual),
      dtype_(model_dtype),
      query_int8_(query_int8),
      value_int8_(value_int8) {
  KVB_CHECK(bits == 2 || bits == 4, "kivi: bits must be 2 or 4");
  KVB_CHECK(group > 0 && residual >= group && residual % group == 0, "kivi: residual (", residual,
            ") must be a positive multiple of group (", group, ")");
}

nlohmann::json KiviCodec::params() const {
  return {{"bits", bits_},
          {"group", group_},
          {"residual", residual_},
          {"scale_dtype", dtype_name(dtype_)},
          {"query_int8", query_int8_},
          {"value_int8", value_int8_}};
}

std::unique_ptr<TokenStore> KiviCodec::make_key_store(int64_t kv_heads, int64_t head_dim) const {
  return std::make_unique<KiviKeyStore>(bits_, group_, residual_, dtype_, kv_heads, head_dim,
                                        query_int8_);
}

std::unique_ptr<TokenStore> KiviCodec::make_value_store(int64_t kv_heads, int64_t head_dim) const {
  KVB_CHECK(head_dim % group_ == 0, "kivi: group ", group_, " does not divide head_dim ", head_dim);
  return std::make_unique<KiviValueStore>(bits_, group_, residual_, dtype_, kv_heads, head_dim,
                                          value_int8_);
}

StorageBytes KiviCodec::nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const {
  const uint64_t e = at::elementSize(dtype_), h = kv_heads, d = head_dim;
  const uint64_t kq = tokens - tokens % residual_;                  // quantized keys
  const uint64_t vq = tokens > residual_ ? tokens - residual_ : 0;  // quantized values
  const uint64_t payload =
      h * ((kq + vq) * d * bits_ / 8 + (tokens - kq) * d * e + (tokens - vq) * d * e);
  const uint64_t metadata = h * 2 * e * (kq / group_ * d + vq * (d / group_));
  return {payload, metadata};
}

at::Tensor KiviCodec::max_error(const at::Tensor& row, bool is_key, double store_amax) const {
  // Keys share a group with other tokens, so their step is bounded by the store's range
  // (2 amax / (2^b - 1)); values by their own group's range. Plus rounding of scale and min
  // (and of the exact window) in the model dtype.
  const double unit = dtype_ == at::kFloat ? 0x1.0p-23 : dtype_ == at::kHalf ? 0x1.0p-10 : 0x1.0p-7;
  const double levels = (1 << bits_) - 1;
  if (is_key) {
    return at::full_like(row, store_amax / levels + store_amax * unit * (levels + 2));
  }
  at::Tensor groups = row.view({-1, group_});
  at::Tensor range = std::get<0>(groups.max(1)) - std::get<0>(groups.min(1));
  at::Tensor amax = groups.abs().amax(1);
  at::Tensor bound = range / levels / 2 + amax * unit * (levels + 2);
  return bound.unsqueeze(1).expand({groups.size(0), group_}).reshape(row.sizes());
}

}  // namespace kvbench
