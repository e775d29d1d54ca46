#include "kvbench/kv/latent_pages_cache.h"

namespace kvbench {

LatentPagesCache::LatentPagesCache(std::shared_ptr<const LowRankCodec> codec, int64_t rank,
                                   PagedFormat format, int64_t num_layers, int64_t latent_heads,
                                   PagedCapacity capacity, at::Device device,
                                   std::shared_ptr<const RetentionPolicy> policy,
                                   bool kernel_path_on_cpu)
    : codec_(std::move(codec)),
      rank_(rank),
      latent_(format, num_layers, latent_heads, rank, capacity, device, std::move(policy),
              kernel_path_on_cpu) {}

StorageBytes LatentPagesCache::storage() const {
  StorageBytes b = latent_.storage();
  b += codec_->shared_bytes();
  b.metadata += extra_metadata();
  return b;
}

StorageBytes LatentPagesCache::nominal() const {
  StorageBytes b = latent_.nominal();
  b += codec_->shared_nominal();
  b.metadata += extra_metadata();
  return b;
}

}  // namespace kvbench
