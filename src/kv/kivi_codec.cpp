#include "kvbench/kv/kivi_codec.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/minmax_quant.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/kv/simd.h"
#include "kvbench/model/model_config.h"

namespace kvbench {
namespace {

// What both stores share: packed codes (a buffer row holds code_tokens tokens), scale/min rows
// (a row serves scale_tokens tokens), and the exact window.
class KiviStoreBase : public TokenStore {
 public:
  KiviStoreBase(int bits, int64_t group, int64_t residual, at::ScalarType dtype, int64_t kv_heads,
                int64_t head_dim, int64_t code_tokens, int64_t scale_width, int64_t scale_tokens)
      : bits_(bits),
        group_(group),
        residual_(residual),
        dtype_(dtype),
        kv_heads_(kv_heads),
        head_dim_(head_dim),
        code_tokens_(code_tokens),
        scale_tokens_(scale_tokens),
        codes_(kv_heads, code_tokens * head_dim * bits / 8, at::kByte),
        scales_(kv_heads, scale_width, dtype),
        mins_(kv_heads, scale_width, dtype),
        window_(at::empty({kv_heads, 0, head_dim}, at::kFloat)) {}

  int64_t size() const override { return quantized_ + window_.size(1); }

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

  // The buffers' bytes per token (row bytes over the tokens a row holds) times the quantized
  // tokens: the unfilled slots of a last, partial row are capacity for tokens to come.
  StorageBytes bytes() const override {
    const uint64_t window = static_cast<uint64_t>(window_.numel()) * at::elementSize(dtype_);
    const uint64_t q = static_cast<uint64_t>(quantized_);
    return {codes_.row_bytes() * q / code_tokens_ + window,
            (scales_.row_bytes() + mins_.row_bytes()) * q / scale_tokens_};
  }
  // The rows that the tokens quantized by then need: their codes, scales and mins grow no
  // further up to `tokens` tokens (the window stays a tensor of its own).
  void reserve(int64_t, int64_t tokens) override {
    const int64_t q = quantized_by(tokens);
    codes_.reserve((q + code_tokens_ - 1) / code_tokens_);
    scales_.reserve((q + scale_tokens_ - 1) / scale_tokens_);
    mins_.reserve((q + scale_tokens_ - 1) / scale_tokens_);
  }
  // The window counted in the model dtype, as bytes() counts it (fp32 here only to compute).
  uint64_t allocated_bytes() const override {
    return codes_.allocated_bytes() + scales_.allocated_bytes() + mins_.allocated_bytes() +
           static_cast<uint64_t>(window_.numel()) * at::elementSize(dtype_);
  }

 protected:
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
    const int64_t quantized = quantized_;
    if (t >= quantized) {
      const float* w =
          window_.data_ptr<float>() + (h * window_.size(1) + (t - quantized)) * head_dim_;
      std::copy(w, w + head_dim_, out);
      return;
    }
    decode(h, t, out);
  }
  virtual void decode(int64_t h, int64_t t, float* out) const = 0;
  // How many of `tokens` appended tokens are quantized (the rest are the window).
  virtual int64_t quantized_by(int64_t tokens) const = 0;

  // Appends to the exact window, stored rounded to the model dtype like the cache it replaces.
  void push_window(const at::Tensor& x) {
    window_ = at::cat({window_, x.to(dtype_).to(at::kFloat)}, 1);
  }
  at::Tensor take_window(int64_t n) {  // removes and returns the oldest n window tokens
    at::Tensor taken = window_.narrow(1, 0, n).contiguous();
    window_ = window_.narrow(1, n, window_.size(1) - n).contiguous();
    return taken;
  }

  // The kernels' name for a stored float dtype (scales and mins are in the model dtype).
  static simd::RowType row_type(at::ScalarType dtype) {
    return dtype == at::kHalf       ? simd::RowType::kFloat16
           : dtype == at::kBFloat16 ? simd::RowType::kBFloat16
                                    : simd::RowType::kFloat32;
  }
  // Grows a buffer to `rows` rows, new rows zeroed (tokens are placed into them slot by slot).
  static void grow(RowBuffer& buffer, int64_t rows) {
    if (rows > buffer.size()) buffer.append(rows - buffer.size()).zero_();
  }

  int bits_;
  int64_t group_, residual_;
  at::ScalarType dtype_;
  int64_t kv_heads_, head_dim_;
  int64_t code_tokens_, scale_tokens_;
  int64_t quantized_ = 0;  // tokens in codes_ (the rest are in the window)
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
      // one row of codes_ per tile of kKeyTile tokens when tiled (simd::KiviKeyTiles)
      : KiviStoreBase(bits, group, residual, dtype, kv_heads, head_dim,
                      head_dim * bits % 32 == 0 ? simd::kKeyTile : 1, head_dim, group),
        id_(next_id()),
        query_int8_(query_int8 && head_dim % simd::kQ8Block == 0),
        words_(head_dim * bits % 32 == 0 ? head_dim * bits / 32 : 0) {}

  void append(const at::Tensor& x) override {
    push_window(x.to(at::kFloat));
    while (window_.size(1) >= residual_) quantize_block(take_window(residual_));
  }
  int64_t quantized_by(int64_t tokens) const override { return tokens / residual_ * residual_; }

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

 public:
  // Fused key read on the codes: within a token group every channel c has one scale s_c and
  // min m_c, so q . k_t = sum_c (q_c s_c) code_tc + sum_c q_c m_c (the scaled query once per
  // group, the codes read in registers; with query_int8 the scaled query quantized to int8
  // blocks of 32 and the codes scored as integers). Tiled codes: simd::kivi_key_tile_scores,
  // which reads the scale and min rows in the model dtype; rows: simd::channel_scores on the
  // rows converted to fp32 once per call. The exact window is read as fp32 rows.
  void dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1, float* scores,
           int64_t stride) const override {
    const int64_t quantized = quantized_, mid = std::clamp(quantized, t0, t1), n = head_dim_;
    if (mid > t0 && tiled() && simd::kivi_key_tile_supported(bits_, group_, n, query_int8_)) {
      simd::kivi_key_tile_scores({codes_.row<uint8_t>(head, 0), scales_.raw_row(head, 0),
                                  mins_.raw_row(head, 0), row_type(dtype_), bits_, group_, n},
                                 t0, mid, q, rows, scores, stride, query_int8_);
    } else if (mid > t0) {  // token rows (copied out of the tiles when tiled)
      const int64_t g0 = t0 / group_, g1 = (mid - 1) / group_ + 1;
      float* s = scratch(static_cast<size_t>(2 * (g1 - g0) * n));
      float* m = s + (g1 - g0) * n;
      scales_.rows_as_float(head, g0, g1, s);
      mins_.rows_as_float(head, g0, g1, m);
      // the next chunk's rows (the fused attention walks a head's chunks in order)
      scales_.prefetch_rows(head, g1, g1 + (g1 - g0));
      mins_.prefetch_rows(head, g1, g1 + (g1 - g0));
      const uint8_t* codes = tiled() ? nullptr : codes_.row<uint8_t>(head, t0);
      if (tiled()) {
        thread_local std::vector<uint8_t> untiled;
        untiled.resize(static_cast<size_t>((mid - t0) * words_ * 4));
        simd::untile_key_rows(codes_.row<uint8_t>(head, 0), words_, t0, mid, untiled.data());
        codes = untiled.data();
      }
      simd::channel_scores({codes, s, m, bits_, group_, n, t0 % group_}, mid - t0, q, rows, scores,
                           stride, query_int8_);
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
};

// Values: a sliding exact window of R tokens; older tokens per token in groups of G channels.
// Layout (head_dim a multiple of 128 / bits): codes in quads of 4 tokens and scales/mins in
// tiles of 16 tokens as simd::KiviValueTiles says, so the int8-weight kernel loads 4 tokens'
// codes for 64 (2-bit) or 32 (4-bit) channels at once and needs no transposes; other head_dims
// keep one packed row per token. Tokens fill the quads and tiles slot by slot.
class KiviValueStore final : public KiviStoreBase {
 public:
  KiviValueStore(int bits, int64_t group, int64_t residual, at::ScalarType dtype, int64_t kv_heads,
                 int64_t head_dim, bool value_int8)
      : KiviStoreBase(bits, group, residual, dtype, kv_heads, head_dim,
                      tiled(bits, head_dim) ? simd::kValueQuad : 1,
                      head_dim / group * (tiled(bits, head_dim) ? simd::kValueMetaTile : 1),
                      tiled(bits, head_dim) ? simd::kValueMetaTile : 1),
        tiled_(tiled(bits, head_dim)),
        value_int8_(value_int8) {}

  void append(const at::Tensor& x) override {
    push_window(x.to(at::kFloat));
    if (window_.size(1) > residual_) quantize_tokens(take_window(window_.size(1) - residual_));
  }
  int64_t quantized_by(int64_t tokens) const override {
    return std::max<int64_t>(0, tokens - residual_);
  }

 private:
  static bool tiled(int bits, int64_t head_dim) { return head_dim % (128 / bits) == 0; }
  int64_t row_bytes() const { return head_dim_ * bits_ / 8; }

  void quantize_tokens(const at::Tensor& tokens) {  // [kv_heads, m, head_dim]
    const int64_t m = tokens.size(1), first = quantized_, groups = head_dim_ / group_;
    grow(codes_, (first + m + code_tokens_ - 1) / code_tokens_);
    grow(scales_, (first + m + scale_tokens_ - 1) / scale_tokens_);
    grow(mins_, (first + m + scale_tokens_ - 1) / scale_tokens_);
    std::vector<uint8_t> rows(static_cast<size_t>(m * row_bytes()));
    std::vector<float> s(static_cast<size_t>(m * groups)), z(s.size());
    for (int64_t h = 0; h < kv_heads_; ++h) {
      std::fill(rows.begin(), rows.end(), 0);
      minmax::quantize_per_token(tokens.data_ptr<float>() + h * m * head_dim_, m, head_dim_, group_,
                                 bits_, dtype_, nullptr, rows.data(), row_bytes(), s.data(),
                                 z.data());
      for (int64_t t = 0; t < m; ++t) {
        place_codes(h, first + t, rows.data() + t * row_bytes());
        for (int64_t g = 0; g < groups; ++g) {
          scales_.set_float(h, meta_row(first + t), meta_index(first + t, g), s[t * groups + g]);
          mins_.set_float(h, meta_row(first + t), meta_index(first + t, g), z[t * groups + g]);
        }
      }
    }
    quantized_ += m;
  }

  // Where token t's scale of group g lives: row and element of scales_ / mins_.
  int64_t meta_row(int64_t t) const { return t / scale_tokens_; }
  int64_t meta_index(int64_t t, int64_t g) const {
    return tiled_ ? g * simd::kValueMetaTile + t % simd::kValueMetaTile : g;
  }
  // A quad and a packed row hold the same codes transposed: for a run of 16 (8 / bits)
  // channels, dword i of the quad holds in byte j the fields f = channel 16 f + i of token j,
  // while the row's byte k holds consecutive channels. Per 4 (2-bit) or 2 (4-bit) dwords the
  // move is a 4x4 / 2x2 transpose of code fields, done by delta swaps in a register (its own
  // inverse).
  static uint32_t transpose_fields(uint32_t x, int bits) {
    if (bits == 4) {  // 2x2 nibbles in 16 bits: (0,1) <-> (1,0)
      const uint32_t t = ((x >> 4) ^ x) & 0x00F0u;
      return x ^ t ^ (t << 4);
    }
    uint32_t t = ((x >> 12) ^ x) & 0x0000F0F0u;  // 4x4 crumbs: the off-diagonal 2x2 blocks,
    x ^= t ^ (t << 12);
    t = ((x >> 6) ^ x) & 0x00CC00CCu;  // then within each block
    return x ^ t ^ (t << 6);
  }
  // Token j of a quad <-> its packed row, per 64-byte quad vector w: byte j of dword 16 w + i
  // sits at quad + 64 w + 4 i + j; the 4 (2-bit) or 2 (4-bit) dwords 16 w + count a + e pair
  // with row bytes 16 w + (16 / count) e + a through transpose_fields.
  void tile_token(uint8_t* quad, int64_t j, const uint8_t* row) const {
    const int count = 8 / bits_, units = 16 / count;
    for (int64_t w = 0; w < head_dim_ * bits_ / 128; ++w) {
      uint8_t* q = quad + 64 * w + j;
      const uint8_t* r = row + 16 * w;
      for (int a = 0; a < units; ++a) {
        uint32_t x = 0;
        for (int e = 0; e < count; ++e) x |= static_cast<uint32_t>(r[units * e + a]) << (8 * e);
        x = transpose_fields(x, bits_);
        for (int e = 0; e < count; ++e) q[4 * (count * a + e)] = static_cast<uint8_t>(x >> (8 * e));
      }
    }
  }
  void untile_token(const uint8_t* quad, int64_t j, uint8_t* row) const {
    if (bits_ == 2) return untile_token_bits<2>(quad, j, row);
    untile_token_bits<4>(quad, j, row);
  }
  // Compile-time field counts: the fallback kernels un-tile every token they read.
  template <int kBits>
  void untile_token_bits(const uint8_t* quad, int64_t j, uint8_t* row) const {
    constexpr int kCount = 8 / kBits, kUnits = 16 / kCount;
    for (int64_t w = 0; w < head_dim_ * kBits / 128; ++w) {
      const uint8_t* q = quad + 64 * w + j;
      uint8_t* r = row + 16 * w;
      for (int a = 0; a < kUnits; ++a) {
        uint32_t x = 0;
        for (int e = 0; e < kCount; ++e)
          x |= static_cast<uint32_t>(q[4 * (kCount * a + e)]) << (8 * e);
        x = transpose_fields(x, kBits);
        for (int e = 0; e < kCount; ++e) r[kUnits * e + a] = static_cast<uint8_t>(x >> (8 * e));
      }
    }
  }
  int64_t quad_bytes() const { return simd::kValueQuad * row_bytes(); }

  void place_codes(int64_t h, int64_t t, const uint8_t* row) {
    if (!tiled_) {
      std::copy(row, row + row_bytes(), codes_.mutable_row<uint8_t>(h, t));
      return;
    }
    tile_token(codes_.mutable_row<uint8_t>(h, t / simd::kValueQuad), t % simd::kValueQuad, row);
  }
  // Token t's codes as one packed row (the per-token layout): out [row_bytes].
  void token_codes(int64_t h, int64_t t, uint8_t* out) const {
    if (!tiled_) {
      const uint8_t* row = codes_.row<uint8_t>(h, t);
      std::copy(row, row + row_bytes(), out);
      return;
    }
    untile_token(codes_.row<uint8_t>(h, t / simd::kValueQuad), t % simd::kValueQuad, out);
  }

 public:
  // Fused value read: the quantized tokens straight from the codes, then the exact window.
  void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                  int64_t stride, float* out) const override {
    const int64_t mid = std::clamp(quantized_, t0, t1);
    if (mid > t0) {
      if (tiled_ && simd::kivi_value_sum_supported(bits_, group_, head_dim_)) {
        accumulate_tiles(head, p, rows, t0, mid, stride, out);
      } else {
        accumulate_rows(head, p, rows, t0, mid, stride, out);
      }
    }
    if (t1 > mid) {
      simd::rows_weighted_sum(simd::RowType::kFloat32, window_row(head, mid - quantized_), t1 - mid,
                              head_dim_, p + (mid - t0), rows, stride, out);
    }
  }

 private:
  // The tiled kernels (int8 or exact weights), which convert scales and mins in registers and
  // prefetch them with the codes.
  void accumulate_tiles(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                        int64_t stride, float* out) const {
    simd::kivi_value_sum({codes_.row<uint8_t>(head, 0), scales_.raw_row(head, 0),
                          mins_.raw_row(head, 0), row_type(dtype_), bits_, group_, head_dim_},
                         t0, t1, p, rows, stride, out, value_int8_);
  }

  // Every other case (other instruction sets and shapes): the range as packed
  // token rows and [token][group] fp32 scales for the per-token kernels. With int8 weights the
  // call is split at the first multiple of kValueTile, so its tiles are the tiled kernel's.
  void accumulate_rows(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                       int64_t stride, float* out) const {
    const int64_t len = t1 - t0, groups = head_dim_ / group_;
    thread_local std::vector<uint8_t> codes;
    const uint8_t* rows_at = codes_.row<uint8_t>(head, t0 / code_tokens_);
    float* s = scratch(static_cast<size_t>(2 * len * groups));
    if (tiled_) {  // token rows from the quads, [token][group] scales from the tiles
      codes.resize(static_cast<size_t>(len * row_bytes()));
      for (int64_t t = t0; t < t1; ++t) {
        untile_token(rows_at + (t / simd::kValueQuad - t0 / simd::kValueQuad) * quad_bytes(),
                     t % simd::kValueQuad, codes.data() + (t - t0) * row_bytes());
      }
      rows_at = codes.data();
      const int64_t j0 = t0 / simd::kValueMetaTile, j1 = (t1 - 1) / simd::kValueMetaTile + 1;
      thread_local std::vector<float> tiles;
      tiles.resize(static_cast<size_t>(2 * (j1 - j0) * groups * simd::kValueMetaTile));
      float* m = tiles.data() + (j1 - j0) * groups * simd::kValueMetaTile;
      scales_.rows_as_float(head, j0, j1, tiles.data());
      mins_.rows_as_float(head, j0, j1, m);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t at = (t / simd::kValueMetaTile - j0) * groups * simd::kValueMetaTile +
                           t % simd::kValueMetaTile;
        for (int64_t g = 0; g < groups; ++g) {
          s[(t - t0) * groups + g] = tiles[at + g * simd::kValueMetaTile];
          s[(len + t - t0) * groups + g] = m[at + g * simd::kValueMetaTile];
        }
      }
    } else {
      scales_.rows_as_float(head, t0, t1, s);
      mins_.rows_as_float(head, t0, t1, s + len * groups);
    }
    const simd::CodeRows v{rows_at, s, s + len * groups, bits_, 0, group_, head_dim_};
    if (!value_int8_) return simd::codes_weighted_sum(v, len, p, rows, stride, out);
    const int64_t split =
        std::min(t1, (t0 + simd::kValueTile - 1) / simd::kValueTile * simd::kValueTile);
    simd::codes_weighted_sum_int8(v, split - t0, p, rows, stride, out);
    if (t1 > split) {
      const int64_t k = split - t0;
      simd::codes_weighted_sum_int8({rows_at + k * row_bytes(), s + k * groups,
                                     s + (len + k) * groups, bits_, 0, group_, head_dim_},
                                    t1 - split, p + k, rows, stride, out);
    }
  }

  void decode(int64_t h, int64_t t, float* out) const override {
    const int64_t groups = head_dim_ / group_;
    thread_local std::vector<uint8_t> codes;
    thread_local std::vector<float> s, m;  // no allocation per token
    codes.resize(static_cast<size_t>(row_bytes()));
    s.resize(static_cast<size_t>(groups));
    m.resize(static_cast<size_t>(groups));
    token_codes(h, t, codes.data());
    for (int64_t g = 0; g < groups; ++g) {
      s[g] = scales_.get_float(h, meta_row(t), meta_index(t, g));
      m[g] = mins_.get_float(h, meta_row(t), meta_index(t, g));
    }
    minmax::dequantize_per_token(codes.data(), s.data(), m.data(), head_dim_, group_, bits_, out);
  }

  const bool tiled_;
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
  // A token's codes fill whole bytes (a partial byte would spill into the next token's row).
  KVB_CHECK(head_dim * bits_ % 8 == 0, "kivi: head_dim ", head_dim, " x ", bits_,
            " bits is not a whole number of bytes");
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
