// The shell shared by the low-rank codecs' caches on the GPU path (LatentPagedCache: kvproj,
// PaluPagedCache: Palu): a prepared codec and an inner PagedKVCache whose pages hold the
// latents, r values per token and latent head. Sequences, lengths, kept tokens, retention time
// and the device are the inner cache's; the bytes are the pages', plus the codec's bases (once
// per cache), plus what a subclass holds besides (extra_metadata_: its own copies of the bases,
// where the pools are and at the stored width; latent_bases_bytes counts them for the plans).
//
// Rows are stored `width` values wide: the codec's rank r rounded up to what the pages and the
// kernels take (whole 32-value blocks; the GPU kernels' widths), the extra columns of the
// bases zero, so the extra coefficients are exact zeros and every score and output is the
// rank-r one. storage() measures the padded pages; nominal() counts the pages by the method's
// formula at r (a subclass's extra_metadata_, e.g. Palu's 16-bit kernel bases, is what it
// holds, in both).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/lowrank_codec.h"
#include "kvbench/kv/paged_cache.h"

namespace kvbench {

// Values per stored row of a rank-r latent on the paged path: r rounded up to whole 32-value
// blocks; kvproj on the kernel path (a GPU) to the decode kernels' head_dim 64 or 128 (r > 128:
// returned as the 32-block rounding; the cache refuses it there).
int64_t latent_row_width(LowRankKind kind, int64_t rank, bool kernel_path);
// Stored over nominal bytes of `method` on the paged path (for kvproj and Palu: their
// coefficients at the stored width over the formula's, whose Palu key positions the pages do
// not store; 1 for every other method): what memory plans multiply the formula's bytes by.
double paged_storage_factor(const Codec& codec, int64_t head_dim, bool kernel_path);
// Bytes per layer and KV head that a latent pages cache of `codec` (a prepared low-rank codec;
// 0 for any other) on a model of `head_dim` stored as `dtype` holds besides its pages and the
// codec's bases: its fp32 key and value bases at the stored width where the pools are (none
// at a width equal to the rank: they are then the codec's own tensors, which the prepare step
// fits where the model's weights are, the cache's device),
// kvproj's pre-scaled query and transposed output bases, Palu's 16-bit key basis on the kernel
// path. What storage() and nominal() count as extra_metadata_, per layer and KV head.
uint64_t latent_bases_bytes(const Codec& codec, int64_t head_dim, at::ScalarType dtype,
                            bool kernel_path);

class LatentPagesCache : public KVCache {
 public:
  int64_t add_sequence() override { return latent_.add_sequence(); }
  void remove_sequence(int64_t seq) override { latent_.remove_sequence(seq); }
  int64_t length(int64_t seq) const override { return latent_.length(seq); }
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override {
    return attend_as_batch_of_one(*this, seq, layer, q, k, v);
  }
  std::vector<int64_t> kept_tokens(int64_t seq) const override { return latent_.kept_tokens(seq); }
  StorageBytes storage() const override;
  StorageBytes nominal() const override;
  // storage() with the latent pages' pools whole (PagedKVCache::allocated_bytes).
  uint64_t allocated_bytes() const override {
    return latent_.allocated_bytes() + codec_shared_and_extra().total();
  }
  void reserve(const std::vector<SequenceTokens>& seqs) override { latent_.reserve(seqs); }
  void reserve_pool(int64_t sequences, int64_t tokens, int64_t block, int64_t longest) override {
    latent_.reserve_pool(sequences, tokens, block, longest);
  }
  uint64_t slot_bytes(int64_t block) const override { return latent_.slot_bytes(block); }
  double retention_seconds() const override { return latent_.retention_seconds(); }
  uint64_t retention_bytes() const override { return latent_.retention_bytes(); }
  double device_wait_seconds() const override { return latent_.device_wait_seconds(); }
  at::Device device() const override { return latent_.device(); }

  // The paged cache of latents (latent heads of width width()).
  const PagedKVCache& latent() const { return latent_; }
  int64_t rank() const { return rank_; }    // the codec's r
  int64_t width() const { return width_; }  // stored values per row, >= r

  // Blocks of at most this many rows (decode steps, small prefill chunks) take the fused
  // projections (kernels/head_project.h) on the kernel path; longer blocks batched matmuls,
  // whose launches are spread over many rows.
  static constexpr int64_t kProjectedRows = 1024;

 protected:
  // The inner cache: `latent_heads` heads of `width` (>= the codec's `rank`) in `format`;
  // the rest as PagedKVCache's constructor takes them.
  LatentPagesCache(std::shared_ptr<const LowRankCodec> codec, int64_t rank, int64_t width,
                   PagedFormat format, int64_t num_layers, int64_t latent_heads,
                   PagedCapacity capacity, at::Device device,
                   std::shared_ptr<const RetentionPolicy> policy, bool kernel_path_on_cpu);
  // The codec's `basis` [..., r] as the cache keeps it: fp32 where the pools are, with zero
  // columns appended up to width() (else the codec's tensor itself, where it is already there).
  at::Tensor stored_basis(const at::Tensor& basis) const;
  // The bytes of layer `layer`'s stored key and value bases, but for either that is the codec's
  // tensor itself (stored_basis kept it).
  uint64_t own_bases_bytes(int64_t layer, const at::Tensor& key, const at::Tensor& value) const;
  // Metadata bytes a subclass holds besides the pages and the codec's bases (in both
  // storage() and nominal()): latent_bases_bytes, measured once its constructor has made them.
  uint64_t extra_metadata_ = 0;
  // What storage() adds to the latent pages: the codec's bases and extra_metadata_.
  StorageBytes codec_shared_and_extra() const;

  std::shared_ptr<const LowRankCodec> codec_;
  int64_t rank_, width_;
  PagedKVCache latent_;
};

}  // namespace kvbench
