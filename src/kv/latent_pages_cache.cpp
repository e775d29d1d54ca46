#include "kvbench/kv/latent_pages_cache.h"

#include "kvbench/core/error.h"

namespace kvbench {

namespace {

// Latent pages attend as stored in a prefill too: the method's keys are the reconstruction.
PagedFormat reading_stored(PagedFormat format) {
  format.prefill_reads_stored = true;
  return format;
}

}  // namespace

int64_t latent_row_width(LowRankKind kind, int64_t rank, bool kernel_path) {
  if (kind == LowRankKind::kProjection && kernel_path && rank <= 128) return rank <= 64 ? 64 : 128;
  return (rank + 31) / 32 * 32;
}

double paged_storage_factor(const Codec& codec, int64_t head_dim, bool kernel_path) {
  const auto* lowrank = dynamic_cast<const LowRankCodec*>(&codec);
  if (lowrank == nullptr) return 1.0;
  const int64_t r = lowrank->rank_for(head_dim);
  if (r < 1) return 1.0;
  // One token of one latent head: the pages keep its key and value coefficients in rows of the
  // stored width, zero-padded past the rank; the formula's metadata (Palu's key positions) are
  // the pages' slots there, not stored.
  const StorageBytes one = codec.nominal_bytes(1, lowrank->group(), head_dim);
  const double stored = static_cast<double>(one.payload) *
                        static_cast<double>(latent_row_width(lowrank->kind(), r, kernel_path)) /
                        static_cast<double>(r);
  return stored / static_cast<double>(one.total());
}

uint64_t latent_bases_bytes(const Codec& codec, int64_t head_dim, at::ScalarType dtype,
                            bool kernel_path) {
  const auto* lowrank = dynamic_cast<const LowRankCodec*>(&codec);
  if (lowrank == nullptr) return 0;
  const int64_t r = lowrank->rank_for(head_dim);
  if (r < 1) return 0;
  const uint64_t width = uint64_t(latent_row_width(lowrank->kind(), r, kernel_path));
  const uint64_t fp32 = uint64_t(head_dim) * width * sizeof(float);  // one basis of one head
  uint64_t bytes = width != uint64_t(r) ? 2 * fp32 : 0;              // keys' and values'
  if (lowrank->kind() == LowRankKind::kProjection) return bytes + 2 * fp32;  // query, output
  if (kernel_path) bytes += uint64_t(head_dim) * width * uint64_t(at::elementSize(dtype));
  return bytes;
}

LatentPagesCache::LatentPagesCache(std::shared_ptr<const LowRankCodec> codec, int64_t rank,
                                   int64_t width, PagedFormat format, int64_t num_layers,
                                   int64_t latent_heads, PagedCapacity capacity, at::Device device,
                                   std::shared_ptr<const RetentionPolicy> policy,
                                   bool kernel_path_on_cpu)
    : codec_(std::move(codec)),
      rank_(rank),
      width_(width),
      latent_(reading_stored(format), num_layers, latent_heads, width, capacity, device,
              std::move(policy), kernel_path_on_cpu) {
  KVB_CHECK(rank >= 1 && width >= rank, "latent pages: width ", width, " below rank ", rank);
}

at::Tensor LatentPagesCache::stored_basis(const at::Tensor& basis) const {
  KVB_CHECK(basis.size(-1) == rank_, "latent pages: a basis of ", basis.size(-1),
            " columns, expected rank ", rank_);
  const auto where = at::TensorOptions().dtype(at::kFloat).device(latent_.device());
  at::Tensor b = basis.to(where);
  if (width_ != rank_) b = at::constant_pad_nd(b, {0, width_ - rank_});
  return b.contiguous();
}

uint64_t LatentPagesCache::own_bases_bytes(int64_t layer, const at::Tensor& key,
                                           const at::Tensor& value) const {
  auto own = [](const at::Tensor& t, const at::Tensor& codec_basis) {
    return t.is_alias_of(codec_basis) ? 0 : uint64_t(t.numel()) * uint64_t(t.element_size());
  };
  return own(key, codec_->key_basis(layer)) + own(value, codec_->value_basis(layer));
}

StorageBytes LatentPagesCache::storage() const {
  StorageBytes b = latent_.storage();
  b += codec_shared_and_extra();
  return b;
}

StorageBytes LatentPagesCache::codec_shared_and_extra() const {
  StorageBytes b = codec_->shared_bytes();
  b.metadata += extra_metadata_;
  return b;
}

StorageBytes LatentPagesCache::nominal() const {
  StorageBytes b = latent_.nominal();
  // The formula stores r of every row's width values.
  b.payload = b.payload * uint64_t(rank_) / uint64_t(width_);
  b += codec_->shared_nominal();
  b.metadata += extra_metadata_;
  return b;
}

}  // namespace kvbench
