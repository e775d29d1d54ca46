#include "kvbench/kv/lowrank_codec.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/kv/simd.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/rope.h"

namespace kvbench {
namespace {

constexpr int64_t kBlock = 32;  // latent rows decoded at a time (as TokenStore's default)

// Per-thread scratch buffers, reused so the fused hot path never allocates.
float* scratch(int slot, int64_t floats) {
  thread_local std::vector<float> buffers[3];
  std::vector<float>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < floats) b.resize(static_cast<size_t>(floats));
  return b.data();
}

}  // namespace

// cos and sin of the RoPE angles of positions [0, n), as rope_cos_sin computes them (angle in
// float64, then rounded to fp32): row p holds head_dim / 2 cosines then head_dim / 2 sines.
// One table for every layer and sequence of a codec (like vLLM's cos_sin_cache), grown on
// demand under a lock; a store keeps a snapshot covering the positions it holds, so the fused
// readers never lock. A model constant, not KV state: not counted in the cache's bytes.
class RopeTable {
 public:
  explicit RopeTable(const at::Tensor& inv_freq) {
    const at::Tensor f = inv_freq.to(at::kDouble).contiguous();
    freq_.assign(f.data_ptr<double>(), f.data_ptr<double>() + f.numel());
  }
  // A table covering at least positions [0, n).
  std::shared_ptr<const std::vector<float>> upto(int64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t h = static_cast<int64_t>(freq_.size());
    const int64_t have = table_ ? static_cast<int64_t>(table_->size()) / (2 * h) : 0;
    if (have >= n) return table_;
    const int64_t rows = std::max<int64_t>({n, 2 * have, 256});
    auto t = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * 2 * h));
    if (have > 0) std::copy(table_->begin(), table_->end(), t->begin());
    for (int64_t p = have; p < rows; ++p) {
      float* row = t->data() + p * 2 * h;
      for (int64_t i = 0; i < h; ++i) {
        const double angle = static_cast<double>(p) * freq_[static_cast<size_t>(i)];
        row[i] = static_cast<float>(std::cos(angle));
        row[h + i] = static_cast<float>(std::sin(angle));
      }
    }
    table_ = std::move(t);
    return table_;
  }

 private:
  std::mutex mu_;
  std::vector<double> freq_;
  std::shared_ptr<const std::vector<float>> table_;
};

namespace {

// Coefficients of every token in the layer's basis. `basis`: [groups, g * d, r] fp32, shared
// with the codec (and every other sequence); the rows of head h = G * g + j are the contiguous
// block [h * d, (h + 1) * d) of it: U_h [d, r]. `inv_freq` defined: Palu keys (un-rotate on
// append, rotate on read; positions kept per group).
class LatentStore final : public TokenStore {
 public:
  LatentStore(at::Tensor basis, int64_t group, int64_t head_dim, at::ScalarType dtype,
              at::Tensor inv_freq, std::shared_ptr<RopeTable> table)
      : basis_(std::move(basis)),
        inv_freq_(std::move(inv_freq)),
        rope_table_(std::move(table)),
        group_(group),
        head_dim_(head_dim),
        rank_(basis_.size(2)),
        groups_(basis_.size(0)),
        latent_(groups_, rank_, dtype),
        positions_(groups_, 1, at::kInt) {}

  void append(const at::Tensor& x_in) override {
    const int64_t heads = groups_ * group_, n = x_in.size(1);
    KVB_CHECK(x_in.dim() == 3 && x_in.size(0) == heads && x_in.size(2) == head_dim_,
              "low-rank store: expected [", heads, ", n, ", head_dim_, "], got ", x_in.sizes());
    at::Tensor x = x_in.to(at::kFloat);
    if (rope()) {
      at::Tensor pos = at::arange(next_, next_ + n, at::kLong);
      const auto [cos, sin] = rope_cos_sin(pos, inv_freq_);
      // The inverse rotation: the pre-RoPE key, which lies in W_k's column space.
      x = apply_rope(x.transpose(0, 1), cos, sin.neg()).transpose(0, 1);
      positions_.append(n).copy_(pos.to(at::kInt).view({1, n, 1}).expand({groups_, n, 1}));
      cos_sin_ = rope_table_->upto(next_ + n);
    }
    // [heads, n, d] -> [groups, n, g * d], each token's g heads side by side.
    at::Tensor xg = x.reshape({groups_, group_, n, head_dim_})
                        .permute({0, 2, 1, 3})
                        .reshape({groups_, n, group_ * head_dim_});
    latent_.append(n).copy_(at::bmm(xg, basis_));
    next_ += n;
  }

  int64_t size() const override { return latent_.size(); }

  void retain(const RowMoves& moves) override {
    const int64_t heads = groups_ * group_;
    KVB_CHECK(static_cast<int64_t>(moves.offsets.size()) == heads + 1, "low-rank store: moves for ",
              moves.offsets.size() - 1, " KV heads, the store has ", heads);
    // One latent per group: every head of a group must keep (and so move) the same rows.
    RowMoves per_group;
    per_group.size = moves.size;
    per_group.offsets.push_back(0);
    for (int64_t g = 0; g < groups_; ++g) {
      const int64_t h0 = g * group_, b0 = moves.offsets[h0], e0 = moves.offsets[h0 + 1];
      for (int64_t j = 1; j < group_; ++j) {
        const int64_t b = moves.offsets[h0 + j], e = moves.offsets[h0 + j + 1];
        KVB_CHECK(e - b == e0 - b0 &&
                      std::equal(moves.from.begin() + b, moves.from.begin() + e,
                                 moves.from.begin() + b0) &&
                      std::equal(moves.to.begin() + b, moves.to.begin() + e, moves.to.begin() + b0),
                  "palu: the retention policy kept different tokens for KV heads that share one "
                  "latent (group ",
                  group_,
                  "); use \"group\": 1 or a policy that keeps the same tokens for every head "
                  "(streamingllm, tova)");
      }
      per_group.from.insert(per_group.from.end(), moves.from.begin() + b0, moves.from.begin() + e0);
      per_group.to.insert(per_group.to.end(), moves.to.begin() + b0, moves.to.begin() + e0);
      per_group.offsets.push_back(static_cast<int64_t>(per_group.from.size()));
    }
    latent_.retain(per_group);
    if (rope()) positions_.retain(per_group);  // positions move with their tokens
  }

  at::Tensor dequantize() const override {
    const int64_t heads = groups_ * group_, t = size();
    at::Tensor out = at::empty({heads, t, head_dim_}, at::kFloat);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t b = 0; b < t; b += kBlock) {
        const int64_t e = std::min(t, b + kBlock);
        decode_rows(h, b, e, out.data_ptr<float>() + (h * t + b) * head_dim_);
      }
    }
    return out;
  }

  int64_t head_dim() const override { return head_dim_; }

  void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const override {
    const int64_t g = head / group_, m = t1 - t0;
    float* lat = scratch(0, m * rank_);
    for (int64_t t = t0; t < t1; ++t) latent_.row_as_float(g, t, lat + (t - t0) * rank_);
    // out[i, :] = U_h lat[i]: the rows of U_h as "keys", the latents as "queries".
    simd::scores_tile(head_basis(head), lat, m, head_dim_, rank_, out, head_dim_);
    if (!rope()) return;
    const int64_t half = head_dim_ / 2;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t pos = *positions_.row<int32_t>(g, t);
      const float* cs = cos_sin_->data() + pos * head_dim_;  // half cosines, half sines
      float* x = out + (t - t0) * head_dim_;
      for (int64_t i = 0; i < half; ++i) {
        const float c = cs[i], s = cs[half + i];
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * c + -x2 * s;
        x[i + half] = x2 * c + x1 * s;
      }
    }
  }

  // Scores in latent space: (U_h^T q) . c_t, never reconstructing a key. Palu's keys carry
  // RoPE, which depends on the position, so they are reconstructed block by block instead.
  void dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1, float* scores,
           int64_t stride) const override {
    if (rope()) return TokenStore::dot(head, q, rows, t0, t1, scores, stride);
    const int64_t g = head / group_;
    float* qt = scratch(1, rows * rank_);
    project(head, q, rows, qt);
    float* lat = scratch(0, kBlock * rank_);
    for (int64_t b = t0; b < t1; b += kBlock) {
      const int64_t e = std::min(t1, b + kBlock);
      for (int64_t t = b; t < e; ++t) latent_.row_as_float(g, t, lat + (t - b) * rank_);
      simd::scores_tile(lat, qt, rows, e - b, rank_, scores + (b - t0), stride);
    }
  }

  // Values summed in latent space, then projected back once: out += U_h (sum_t p_t c_t).
  void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                  int64_t stride, float* out) const override {
    KVB_CHECK(!rope(), "low-rank store: values carry no RoPE");
    const int64_t g = head / group_;
    float* acc = scratch(1, rows * rank_);
    std::fill(acc, acc + rows * rank_, 0.0f);
    float* lat = scratch(0, std::max(kBlock * rank_, rows * head_dim_));
    for (int64_t b = t0; b < t1; b += kBlock) {
      const int64_t e = std::min(t1, b + kBlock);
      for (int64_t t = b; t < e; ++t) latent_.row_as_float(g, t, lat + (t - b) * rank_);
      simd::weighted_sum_tile(lat, p + (b - t0), rows, e - b, rank_, stride, acc);
    }
    float* back = scratch(2, rows * head_dim_);
    simd::scores_tile(head_basis(head), acc, rows, head_dim_, rank_, back, head_dim_);
    for (int64_t i = 0; i < rows * head_dim_; ++i) out[i] += back[i];
  }

  StorageBytes bytes() const override { return {latent_.bytes(), rope() ? positions_.bytes() : 0}; }
  uint64_t allocated_bytes() const override {
    return latent_.allocated_bytes() + (rope() ? positions_.allocated_bytes() : 0);
  }
  void reserve(int64_t, int64_t tokens) override {
    latent_.reserve(tokens);
    if (rope()) positions_.reserve(tokens);
  }
  void fit(int64_t tokens) override {
    latent_.fit(tokens);
    if (rope()) positions_.fit(tokens);
  }

 private:
  bool rope() const { return inv_freq_.defined(); }
  const float* head_basis(int64_t head) const {
    return basis_.data_ptr<float>() + head * head_dim_ * rank_;
  }
  // qt[r, :] = U_h^T q[r, :] for r < rows.
  void project(int64_t head, const float* q, int64_t rows, float* qt) const {
    std::fill(qt, qt + rows * rank_, 0.0f);
    const float* u = head_basis(head);
    for (int64_t i = 0; i < head_dim_; ++i) {
      simd::axpy_rows(u + i * rank_, q + i, rows, head_dim_, qt, rank_);
    }
  }

  at::Tensor basis_, inv_freq_;
  std::shared_ptr<RopeTable> rope_table_;
  std::shared_ptr<const std::vector<float>> cos_sin_;  // covers every position appended
  int64_t group_, head_dim_, rank_, groups_;
  RowBuffer latent_;     // [groups, tokens, r] in the model dtype
  RowBuffer positions_;  // [groups, tokens, 1] int32 (Palu keys only)
  int64_t next_ = 0;     // position of the next appended token
};

// The top-`rank` eigenvectors of the symmetric PSD `gram` (float64), as fp32 columns [n, rank],
// largest eigenvalue first.
at::Tensor top_eigenvectors(const at::Tensor& gram, int64_t rank) {
  auto [values, vectors] = at::linalg_eigh(gram);  // ascending
  return vectors.flip({1}).narrow(1, 0, rank).to(at::kFloat).contiguous();
}

const char* kind_name(LowRankKind kind) { return kind == LowRankKind::kPalu ? "palu" : "kvproj"; }

}  // namespace

LowRankCodec::LowRankCodec(const LowRankParams& params, at::ScalarType dtype)
    : p_(params), dtype_(dtype) {
  KVB_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, kind_name(p_.kind),
            ": dtype must be float32, float16 or bfloat16");
  KVB_CHECK(p_.group >= 1, kind_name(p_.kind), ": group must be at least 1");
  KVB_CHECK(p_.rank > 0 || (p_.rank_ratio > 0 && p_.rank_ratio <= 1), kind_name(p_.kind),
            ": rank_ratio must be in (0, 1]");
}

std::string LowRankCodec::name() const { return kind_name(p_.kind); }

nlohmann::json LowRankCodec::params() const {
  nlohmann::json j = {{"rank", p_.rank},
                      {"rank_ratio", p_.rank_ratio},
                      {"group", p_.group},
                      {"dtype", dtype_name(dtype_)}};
  if (p_.kind == LowRankKind::kProjection) {
    j["calib_prompts"] = p_.calibration.prompts;
    j["calib_tokens"] = p_.calibration.tokens;
    j["calib_seed"] = p_.calibration.seed;
    j["calib_source"] = p_.calibration.source;
  }
  return j;
}

int64_t LowRankCodec::rank_for(int64_t head_dim) const {
  const int64_t width = p_.group * head_dim;
  const int64_t r =
      p_.rank > 0 ? p_.rank
                  : std::max<int64_t>(1, std::llround(p_.rank_ratio * static_cast<double>(width)));
  KVB_CHECK(r <= width, name(), ": rank ", r, " exceeds ",
            p_.group > 1 ? "group * head_dim = " + std::to_string(p_.group) + " * " +
                               std::to_string(head_dim) + " = "
                         : std::string("head_dim = "),
            width, " (the full rank)");
  return r;
}

CalibrationSpec LowRankCodec::calibration() const {
  return p_.kind == LowRankKind::kProjection ? p_.calibration : CalibrationSpec{};
}

void LowRankCodec::check_prepared(int64_t layer, int64_t kv_heads, int64_t head_dim) const {
  KVB_CHECK(prepared_, "codec '", name(), "' needs preparation before use (",
            p_.kind == LowRankKind::kPalu ? "SVD of the model's W_k and W_v"
                                          : "bases fitted on calibration prompts",
            "); it must run through the prepare step (suites/preparation.h), not uncompressed");
  KVB_CHECK(kv_heads == kv_heads_ && head_dim == head_dim_, name(), ": prepared for ", kv_heads_,
            " KV heads of dim ", head_dim_, ", asked for ", kv_heads, " of dim ", head_dim);
  KVB_CHECK(layer >= 0 && layer < num_layers_, name(), ": layer ", layer, " outside the ",
            num_layers_, " prepared layers");
}

std::unique_ptr<TokenStore> LowRankCodec::make_key_store(int64_t, int64_t) const {
  throw Error("codec '" + name() +
              "' fits its bases per layer: its stores are made per layer (make_layer_key_store)");
}

std::unique_ptr<TokenStore> LowRankCodec::make_value_store(int64_t, int64_t) const {
  throw Error("codec '" + name() +
              "' fits its bases per layer: its stores are made per layer (make_layer_value_store)");
}

std::unique_ptr<TokenStore> LowRankCodec::make_layer_key_store(int64_t layer, int64_t kv_heads,
                                                               int64_t head_dim) const {
  check_prepared(layer, kv_heads, head_dim);
  return std::make_unique<LatentStore>(key_basis_[static_cast<size_t>(layer)], p_.group, head_dim,
                                       dtype_, inv_freq_, rope_table_);
}

std::unique_ptr<TokenStore> LowRankCodec::make_layer_value_store(int64_t layer, int64_t kv_heads,
                                                                 int64_t head_dim) const {
  check_prepared(layer, kv_heads, head_dim);
  return std::make_unique<LatentStore>(value_basis_[static_cast<size_t>(layer)], p_.group, head_dim,
                                       dtype_, at::Tensor(), nullptr);
}

StorageBytes LowRankCodec::nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const {
  KVB_CHECK(kv_heads % p_.group == 0, name(), ": group ", p_.group,
            " must divide the model's KV heads (", kv_heads, ")");
  const uint64_t groups = static_cast<uint64_t>(kv_heads / p_.group);
  const uint64_t r = static_cast<uint64_t>(rank_for(head_dim));
  const uint64_t t = static_cast<uint64_t>(tokens);
  StorageBytes b;
  b.payload = 2 * groups * t * r * at::elementSize(dtype_);
  if (p_.kind == LowRankKind::kPalu) b.metadata = groups * t * sizeof(int32_t);  // key positions
  return b;
}

at::Tensor LowRankCodec::max_error(const at::Tensor& row, bool, double) const {
  const double unit = dtype_ == at::kFloat ? 0x1.0p-24 : dtype_ == at::kHalf ? 0x1.0p-11 : 0x1.0p-8;
  const double norm = row.norm().item<double>();
  // A coefficient rounded by unit * |c| moves each reconstructed value by at most
  // |U_i| * unit * |c| <= unit * |x|; fp32 products and sums of the projection (and RoPE) add
  // well under 1e-4 |x|. Below full rank the dropped part |x - U U^T x| <= |x| comes on top.
  const bool full = kv_heads_ > 0 ? rank_for(head_dim_) == p_.group * head_dim_
                                  : rank_for(row.size(-1)) == p_.group * row.size(-1);
  const double bound = norm * (unit + 1e-4 + (full ? 0.0 : 1.0)) + 1e-30;
  return at::full_like(row, bound);
}

std::shared_ptr<const Codec> LowRankCodec::prepare(const PreparationInput& in) const {
  KVB_CHECK(!prepared_, name(), ": already prepared");
  KVB_CHECK(in.num_layers > 0 && in.kv_heads > 0 && in.head_dim > 0, name(),
            ": preparation input without model dimensions");
  nominal_bytes(0, in.kv_heads, in.head_dim);  // validates group and rank against the model
  auto out = std::make_shared<LowRankCodec>(*this);
  out->prepared_ = true;
  out->num_layers_ = in.num_layers;
  out->kv_heads_ = in.kv_heads;
  out->head_dim_ = in.head_dim;
  const int64_t d = in.head_dim, g = p_.group, groups = in.kv_heads / g, r = rank_for(d);
  const size_t layers = static_cast<size_t>(in.num_layers);
  if (p_.kind == LowRankKind::kPalu) {
    KVB_CHECK(in.k_proj.size() == layers && in.v_proj.size() == layers, name(),
              ": needs W_k and W_v of every layer");
    KVB_CHECK(in.rope_inv_freq.defined() && in.rope_inv_freq.numel() == d / 2, name(),
              ": needs the model's RoPE frequencies ([head_dim / 2])");
    out->inv_freq_ = in.rope_inv_freq.to(at::kDouble).contiguous();
    out->rope_table_ = std::make_shared<RopeTable>(out->inv_freq_);
    // L = U_r: the top-r left singular vectors of each group's W, i.e. the top eigenvectors of
    // W W^T (g * d square, whatever the hidden size).
    auto fit = [&](const at::Tensor& w) {
      KVB_CHECK(w.dim() == 2 && w.size(0) == in.kv_heads * d, name(), ": projection of shape ",
                w.sizes(), " for ", in.kv_heads, " KV heads of dim ", d);
      std::vector<at::Tensor> bases;
      for (int64_t G = 0; G < groups; ++G) {
        at::Tensor wg = w.narrow(0, G * g * d, g * d).to(at::kDouble);
        bases.push_back(top_eigenvectors(at::mm(wg, wg.t()), r));
      }
      return at::stack(bases).contiguous();  // [groups, g * d, r]
    };
    for (size_t l = 0; l < layers; ++l) {
      out->key_basis_.push_back(fit(in.k_proj[l]));
      out->value_basis_.push_back(fit(in.v_proj[l]));
    }
  } else {
    KVB_CHECK(in.keys.size() == layers && in.values.size() == layers, name(),
              ": needs calibration keys and values of every layer (calibration prompts > 0)");
    // Per KV head: the top-r right singular vectors of the calibration rows X [tokens, d],
    // i.e. the top eigenvectors of X^T X (uncentred: the store keeps no mean).
    auto fit = [&](const at::Tensor& x) {
      KVB_CHECK(x.dim() == 3 && x.size(0) == in.kv_heads && x.size(2) == d && x.size(1) > 0, name(),
                ": calibration data of shape ", x.sizes(), " for ", in.kv_heads,
                " KV heads of dim ", d);
      std::vector<at::Tensor> bases;
      for (int64_t h = 0; h < in.kv_heads; ++h) {
        at::Tensor xh = x[h].to(at::kDouble);
        bases.push_back(top_eigenvectors(at::mm(xh.t(), xh), r));
      }
      return at::stack(bases).contiguous();  // [kv_heads, d, r]
    };
    for (size_t l = 0; l < layers; ++l) {
      out->key_basis_.push_back(fit(in.keys[l]));
      out->value_basis_.push_back(fit(in.values[l]));
    }
  }
  return out;
}

StorageBytes LowRankCodec::shared_bytes() const {
  StorageBytes b;
  for (const auto& t : key_basis_) b.metadata += t.numel() * t.element_size();
  for (const auto& t : value_basis_) b.metadata += t.numel() * t.element_size();
  return b;
}

StorageBytes LowRankCodec::shared_nominal() const {
  if (!prepared_) return {};
  return shared_nominal_for(num_layers_, kv_heads_, head_dim_);
}

StorageBytes LowRankCodec::shared_nominal_for(int64_t num_layers, int64_t kv_heads,
                                              int64_t head_dim) const {
  // Keys' and values' bases: [g * head_dim, r] per group of g heads, head_dim x r per head.
  const uint64_t per_basis = static_cast<uint64_t>(kv_heads * head_dim * rank_for(head_dim));
  return {0, 2 * static_cast<uint64_t>(num_layers) * per_basis * sizeof(float)};
}

const at::Tensor& LowRankCodec::key_basis(int64_t layer) const {
  check_prepared(layer, kv_heads_, head_dim_);
  return key_basis_[static_cast<size_t>(layer)];
}

const at::Tensor& LowRankCodec::value_basis(int64_t layer) const {
  check_prepared(layer, kv_heads_, head_dim_);
  return value_basis_[static_cast<size_t>(layer)];
}

}  // namespace kvbench
