#include "kvbench/kv/latent_paged_cache.h"

#include <cmath>
#include <string>

#include "kvbench/core/error.h"
#include "paged_cache_cuda.h"

namespace kvbench {
namespace {

// The stored width of the codec's rank r (zero-padded up to whole 32-value blocks; on a GPU to
// the decode kernels' head_dim 64 or 128), once the pair (codec, cache shape) is known to fit.
int64_t checked_width(const std::shared_ptr<const LowRankCodec>& codec, at::ScalarType coef_dtype,
                      int64_t num_kv_heads, int64_t head_dim, at::Device device, bool kernel_path) {
  KVB_CHECK(codec != nullptr, "latent paged cache: no codec");
  KVB_CHECK(codec->kind() == LowRankKind::kProjection, "latent paged cache: method '",
            codec->name(),
            "' stores keys before RoPE, which scores in latent space cannot rotate; its pages are "
            "PaluPagedCache's (make_paged_cache)");
  KVB_CHECK(!codec->needs_preparation(), "latent paged cache: codec '", codec->name(),
            "' is not prepared (its bases are fitted in the prepare step)");
  KVB_CHECK(coef_dtype == at::kHalf || coef_dtype == at::kBFloat16, "paged cache: method '",
            codec->name(), "' stores ", c10::toString(coef_dtype),
            " coefficients, which have no paged format (model dtype fp16 or bf16)");
  const int64_t g = codec->group(), r = codec->rank_for(head_dim);
  KVB_CHECK(num_kv_heads % g == 0, "paged cache: ", codec->name(), " group ", g,
            " does not divide ", num_kv_heads, " KV heads");
  KVB_CHECK(!kernel_path || r <= 128, "paged cache: ", codec->name(), " rank ", r, " on ",
            device.str(),
            ": the GPU decode kernels take latent widths 64 and 128 (ranks up to 128, "
            "zero-padded)");
  return latent_row_width(LowRankKind::kProjection, r, kernel_path);
}

}  // namespace

LatentPagedCache::LatentPagedCache(std::shared_ptr<const LowRankCodec> codec,
                                   at::ScalarType coef_dtype, int64_t num_layers,
                                   int64_t num_kv_heads, int64_t head_dim, PagedCapacity capacity,
                                   at::Device device, std::shared_ptr<const RetentionPolicy> policy,
                                   bool kernel_path_on_cpu)
    : LatentPagesCache(codec, codec ? codec->rank_for(head_dim) : 0,
                       checked_width(codec, coef_dtype, num_kv_heads, head_dim, device,
                                     device.is_cuda() || kernel_path_on_cpu),
                       paged_format_16bit(coef_dtype), num_layers,
                       num_kv_heads / (codec ? codec->group() : 1), capacity, device,
                       std::move(policy), kernel_path_on_cpu),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      group_(codec_->group()),
      coef_dtype_(coef_dtype) {
  const int64_t groups = num_kv_heads_ / group_;
  // The inner cache scales scores by 1 / sqrt(width); the model's is 1 / sqrt(head_dim).
  const double query_scale = std::sqrt(double(width_) / double(head_dim_));
  for (int64_t l = 0; l < num_layers; ++l) {
    const at::Tensor &key = codec_->key_basis(l), &value = codec_->value_basis(l);
    KVB_CHECK(key.dim() == 3 && key.size(0) == groups && key.size(1) == group_ * head_dim_ &&
                  key.size(2) == rank_ && value.sizes() == key.sizes(),
              "latent paged cache: ", codec_->name(), " bases of layer ", l, " have shape ",
              key.sizes(), ", expected [", groups, ", ", group_ * head_dim_, ", ", rank_, "]");
    Bases b;
    b.key = stored_basis(key), b.value = stored_basis(value);
    // A group's rows are its KV heads' [head_dim, r] blocks in order.
    b.query = (b.key.reshape({num_kv_heads_, head_dim_, width_}) * query_scale).contiguous();
    b.output = b.value.reshape({num_kv_heads_, head_dim_, width_}).transpose(1, 2).contiguous();
    bases_.push_back(std::move(b));
  }
  extra_metadata_ = copies_bytes();
}

at::Tensor LatentPagedCache::coefficients(const at::Tensor& x, const at::Tensor& basis) const {
  const int64_t n = x.size(0), groups = basis.size(0);
  // [groups, n, g * head_dim] @ [groups, g * head_dim, r] -> [groups, n, r]
  const at::Tensor rows = x.to(basis.device(), at::kFloat).reshape({n, groups, -1}).transpose(0, 1);
  return at::bmm(rows, basis).transpose(0, 1).contiguous();
}

at::Tensor LatentPagedCache::per_head(const at::Tensor& rows, const at::Tensor& m) {
  const int64_t n = rows.size(0), kv = rows.size(1), per = rows.size(2);
  const at::Tensor a = rows.permute({1, 0, 2, 3}).reshape({kv, n * per, rows.size(3)});
  return at::bmm(a, m).view({kv, n, per, m.size(2)}).permute({1, 0, 2, 3});
}

at::Tensor LatentPagedCache::append_and_attend_batch(int64_t layer,
                                                     const std::vector<int64_t>& seqs,
                                                     const std::vector<int64_t>& counts,
                                                     const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v) {
  check_batch_block(layer, int64_t(bases_.size()), q, k, v, num_kv_heads_, head_dim_);
  // fp32 in, fp32 out; the coefficients' dtype in (attend_dtype()), the same out.
  const at::ScalarType out_dtype = q.scalar_type() == coef_dtype_ ? coef_dtype_ : at::kFloat;
  // (The fused projections take up to 512 channels in: every real head_dim.)
  const bool fits =
      group_ * head_dim_ <= kernels::kHeadProjectMaxIn && width_ <= kernels::kHeadProjectMaxIn;
  if (latent_.kernel_path() && fits && q.size(0) <= kProjectedRows)
    return attend_projected(layer, seqs, counts, q, k, v, out_dtype);
  const Bases& b = bases_[size_t(layer)];
  const int64_t n = q.size(0), heads = q.size(1), per = heads / num_kv_heads_;
  const at::Tensor q_rows = q.to(b.query.device(), at::kFloat).reshape({n, num_kv_heads_, per, -1});
  const at::Tensor q_latent = per_head(q_rows, b.query).reshape({n, heads, width_});
  const at::Tensor out_latent = latent_.append_and_attend_batch(
      layer, seqs, counts, q_latent, coefficients(k, b.key), coefficients(v, b.value));
  const at::Tensor out_rows = out_latent.to(b.output.device()).reshape({n, num_kv_heads_, per, -1});
  return per_head(out_rows, b.output).reshape({n, heads, head_dim_}).to(q.device(), out_dtype);
}

at::Tensor LatentPagedCache::attend_projected(int64_t layer, const std::vector<int64_t>& seqs,
                                              const std::vector<int64_t>& counts,
                                              const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, at::ScalarType out_dtype) {
  const Bases& b = bases_[size_t(layer)];
  const at::Device where = b.query.device();
  auto here = [&](const at::Tensor& t) { return t.device() == where ? t : t.to(where); };
  const int64_t n = q.size(0), groups = num_kv_heads_ / group_;
  // The inner cache takes 16-bit queries straight to its kernels; under a policy, fp32 (its
  // scores are the policy's), unless it keeps a ring, which is read as the full cache is.
  const at::ScalarType q_dtype = latent_.retains() && !latent_.rings() ? at::kFloat : coef_dtype_;
  const std::vector<at::Tensor> in = paged_cuda::head_project(
      {{here(q), b.query, q_dtype},
       {here(k).reshape({n, groups, group_ * head_dim_}), b.key, coef_dtype_},
       {here(v).reshape({n, groups, group_ * head_dim_}), b.value, coef_dtype_}});
  const at::Tensor out_latent =
      latent_.append_and_attend_batch(layer, seqs, counts, in[0], in[1], in[2]);
  const at::Tensor out = paged_cuda::head_project({{out_latent, b.output, out_dtype}})[0];
  return out.device() == q.device() ? out : out.to(q.device());
}

uint64_t LatentPagedCache::copies_bytes() const {
  uint64_t bytes = 0;
  for (size_t l = 0; l < bases_.size(); ++l) {
    const Bases& b = bases_[l];
    bytes += own_bases_bytes(int64_t(l), b.key, b.value);
    for (const at::Tensor* t : {&b.query, &b.output})
      bytes += uint64_t(t->numel()) * uint64_t(t->element_size());
  }
  return bytes;
}

}  // namespace kvbench
