#include "kvbench/kv/palu_paged_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <string>
#include <tuple>

#include "kvbench/core/error.h"
#include "kvbench/core/time.h"
#include "kvbench/model/rope.h"
#include "paged_cache_cuda.h"
#include "palu_decode.h"
#include "steady_eviction.h"

namespace kvbench {
namespace {

// The inner cache's format: 16-bit pages of `rank` latents, attended by this cache's kernel.
PagedFormat latent_format(at::ScalarType dtype) {
  KVB_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "paged cache: method 'palu' stores ",
            c10::toString(dtype),
            " latents, which have no paged format (model dtype fp16 or bf16)");
  PagedFormat f = paged_format_16bit(dtype);
  f.own_attention = true;
  return f;
}

// The stored width of the codec's rank r (r rounded up to whole 32-value blocks, zero-padded),
// once the pair (codec, cache) is known to fit the kernel.
int64_t checked_width(const std::shared_ptr<const LowRankCodec>& codec, int64_t head_dim,
                      bool kernel_path) {
  KVB_CHECK(codec != nullptr && codec->kind() == LowRankKind::kPalu,
            "palu paged cache: expects a palu codec");
  KVB_CHECK(!codec->needs_preparation(), "palu paged cache: codec '", codec->name(),
            "' is not prepared (its bases come from the SVD of W_k and W_v in the prepare step)");
  const int64_t r = codec->rank_for(head_dim),
                width = latent_row_width(LowRankKind::kPalu, r, kernel_path);
  KVB_CHECK(!kernel_path || ((width <= 128) && (head_dim == 64 || head_dim == 128)),
            "paged cache: palu rank ", r, " at head_dim ", head_dim,
            ": the GPU kernel takes ranks up to 128 (stored in rows of 32, 64, 96 or 128) at "
            "head_dim 64 or 128");
  return width;
}

// The policy the cache runs (null: every token stays), once it is one the paged path takes.
std::shared_ptr<const RetentionPolicy> checked_policy(
    std::shared_ptr<const RetentionPolicy> policy) {
  check_palu_paged_policy(policy.get());
  if (policy == nullptr || dynamic_cast<const FullRetention*>(policy.get()) != nullptr)
    return nullptr;
  return policy;
}

// The pages' heads: one latent per group of the codec's `group` KV heads.
int64_t latent_heads(const std::shared_ptr<const LowRankCodec>& codec, int64_t kv_heads) {
  KVB_CHECK(codec != nullptr, "palu paged cache: expects a palu codec");
  KVB_CHECK(codec->group() >= 1 && kv_heads % codec->group() == 0, "palu paged cache: group ",
            codec->group(), " does not divide ", kv_heads, " KV heads");
  return kv_heads / codec->group();
}

}  // namespace

void check_palu_paged_policy(const RetentionPolicy* policy) {
  if (policy == nullptr || dynamic_cast<const FullRetention*>(policy) != nullptr) return;
  check_paged_policy(policy);
  const std::string where = "paged cache: palu under retention policy '" + policy->name() + "': ";
  KVB_CHECK(policy->needs() != RetentionNeeds::kQueryPages, where,
            "Quest bounds pages of the stored keys, and palu stores latents of keys before "
            "RoPE; run it with attention cpu or reference");
}

PaluPagedCache::PaluPagedCache(std::shared_ptr<const LowRankCodec> codec,
                               at::ScalarType latent_dtype, int64_t num_layers,
                               int64_t num_kv_heads, int64_t head_dim, PagedCapacity capacity,
                               at::Device device, std::shared_ptr<const RetentionPolicy> policy,
                               bool kernel_path_on_cpu)
    : LatentPagesCache(codec, codec ? codec->rank_for(head_dim) : 0,
                       checked_width(codec, head_dim, device.is_cuda() || kernel_path_on_cpu),
                       latent_format(latent_dtype), num_layers, latent_heads(codec, num_kv_heads),
                       capacity, device, nullptr, kernel_path_on_cpu),
      policy_(checked_policy(std::move(policy))),
      group_(codec->group()),
      latent_dtype_(latent_dtype),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      kernel_path_(device.is_cuda() || kernel_path_on_cpu) {
  inv_freq_ = codec_->rope_inv_freq().to(latent_.device(), at::kDouble).contiguous();
  KVB_CHECK(inv_freq_.numel() == head_dim_ / 2, "palu paged cache: RoPE frequencies for head_dim ",
            2 * inv_freq_.numel(), ", the cache has ", head_dim_);
  for (int64_t l = 0; l < num_layers; ++l) {
    const at::Tensor &key = codec_->key_basis(l), &value = codec_->value_basis(l);
    KVB_CHECK(key.numel() == num_kv_heads_ * head_dim_ * rank_ && value.sizes() == key.sizes(),
              "palu paged cache: bases of layer ", l, " have shape ", key.sizes(), ", expected ",
              num_kv_heads_, " x ", head_dim_, " x ", rank_, " values");
    // The codec's [groups, g * head_dim, r] is, head-major, [kv_heads, head_dim, r]: head j's
    // rows are its block L_j of its group's basis.
    Bases b;
    b.key = stored_basis(key.reshape({num_kv_heads_, head_dim_, rank_}));
    b.value = stored_basis(value.reshape({num_kv_heads_, head_dim_, rank_}));
    if (kernel_path_) b.key16 = b.key.to(latent_dtype_).contiguous();  // the kernel's operand
    bases_.push_back(std::move(b));
  }
  extra_metadata_ = copies_bytes();
  // The inner cache's step ends at the last layer's append, before this cache's selections
  // there: this cache copies the lists back and frees pages after them (attend).
  if (policy_) latent_.defer_settling();
}

at::Tensor PaluPagedCache::latents(const at::Tensor& x, const at::Tensor& basis,
                                   const at::Tensor& positions) {
  at::Tensor rows = x.to(basis.device(), at::kFloat);  // [n, kv_heads, d]
  if (positions.defined()) {
    // The inverse rotation: the pre-RoPE key, which lies in W_k's column space.
    const auto [cos, sin] = rope_rows(0);
    rows = apply_rope(rows, cos.index_select(0, positions), sin.index_select(0, positions).neg());
  }
  // Each token's g heads side by side: [groups, n, g * d] @ [groups, g * d, r].
  const int64_t n = rows.size(0), groups = num_kv_heads_ / group_;
  return at::bmm(rows.reshape({n, groups, group_ * head_dim_}).transpose(0, 1),
                 basis.reshape({groups, group_ * head_dim_, width_}))
      .transpose(0, 1);  // [n, groups, r]
}

std::pair<at::Tensor, at::Tensor> PaluPagedCache::fused_latents(const at::Tensor& k,
                                                                const at::Tensor& v,
                                                                const Bases& bases,
                                                                const at::Tensor& positions) {
  const at::Device where = latent_.device();
  auto here = [&](const at::Tensor& t) { return on_device(t, where) ? t : t.to(where); };
  const int64_t n = k.size(0), groups = num_kv_heads_ / group_, in = group_ * head_dim_;
  // Each token's g heads side by side through its group's basis, as latents() multiplies them;
  // the keys rotated back from RoPE on the way in.
  paged_cuda::Projection keys{here(k).reshape({n, groups, in}),
                              bases.key.view({groups, in, width_}), latent_dtype_};
  keys.rope_cos = rope_cos_, keys.rope_sin = rope_sin_, keys.positions = positions;
  const std::vector<at::Tensor> out = paged_cuda::head_project(
      {keys,
       {here(v).reshape({n, groups, in}), bases.value.view({groups, in, width_}), latent_dtype_}});
  return {out[0], out[1]};
}

std::pair<at::Tensor, at::Tensor> PaluPagedCache::rope_rows(int64_t tokens, bool exact) {
  const int64_t have = rope_cos_.defined() ? rope_cos_.size(0) : 0;
  if (tokens > have) {
    // Built where the pools are (no host work, no copy that waits for the device), with
    // headroom so that a decode step after a prefill rarely grows it.
    const int64_t grown = exact ? tokens : std::max<int64_t>({tokens + tokens / 4, 2 * have, 256});
    std::tie(rope_cos_, rope_sin_) = rope_cos_sin(
        at::arange(grown, at::TensorOptions().dtype(at::kLong).device(latent_.device())),
        inv_freq_);
  }
  return {rope_cos_, rope_sin_};
}

const at::Tensor& PaluPagedCache::step_positions(const std::vector<int64_t>& positions) {
  if (positions != positions_ || !positions_device_.defined()) {
    const at::Tensor host = at::tensor(positions, at::kLong);
    positions_device_ = latent_.device().is_cuda()
                            ? host.pin_memory().to(latent_.device(), /*non_blocking=*/true)
                            : host;
    positions_ = positions;
  }
  return positions_device_;
}

std::pair<at::Tensor, at::Tensor> PaluPagedCache::reconstruct(const PagedKVCache::StepPages& pages,
                                                              int64_t b, const Bases& bases,
                                                              int64_t tokens) {
  const int64_t groups = num_kv_heads_ / group_;
  const auto [k_lat, v_lat] =
      paged_cuda::dequantize(pages.store, pages.table[b], groups, width_, 0, tokens);
  // [groups, t, r] @ [groups, r, g * d], then each group's heads apart: [kv_heads, t, d].
  auto up = [&](const at::Tensor& lat, const at::Tensor& basis) {
    return at::bmm(lat, basis.reshape({groups, group_ * head_dim_, width_}).transpose(1, 2))
        .reshape({groups, tokens, group_, head_dim_})
        .permute({0, 2, 1, 3})
        .reshape({num_kv_heads_, tokens, head_dim_});
  };
  const at::Tensor pre = up(k_lat, bases.key);
  const auto [cos, sin] = rope_rows(tokens);
  const at::Tensor keys =
      apply_rope(pre.transpose(0, 1), cos.narrow(0, 0, tokens), sin.narrow(0, 0, tokens))
          .transpose(0, 1);
  return {keys, up(v_lat, bases.value)};
}

void PaluPagedCache::cover(int64_t tokens, bool exact) {
  const int64_t tiles = (tokens + kernels::kPaluTile - 1) / kernels::kPaluTile;
  if (tiles <= rope_tiles_) return;
  const int64_t grown = exact ? tiles : std::max<int64_t>({tiles + tiles / 4, 2 * rope_tiles_, 64});
  // palu_rope_tables' layout, built where the pools are: [rows, 2, head_dim / 2], cos then sin
  // of position * inv_freq in float64, rounded to fp32.
  auto table = [&](const at::Tensor& positions) {
    const at::Tensor angles = at::outer(positions.to(at::kDouble), inv_freq_);
    return at::stack({angles.cos(), angles.sin()}, 1).to(at::kFloat).contiguous();
  };
  const auto longs = at::TensorOptions().dtype(at::kLong).device(latent_.device());
  rope_coarse_ = table(at::arange(grown, longs) * kernels::kPaluTile);
  rope_fine_ = table(at::arange(kernels::kPaluTile, longs));
  rope_tiles_ = grown;
}

PaluPagedCache::StepLists PaluPagedCache::step_lists(int64_t layer,
                                                     const std::vector<int64_t>& seqs,
                                                     const PagedKVCache::StepPages& pages,
                                                     int64_t& attended) {
  const int64_t B = int64_t(seqs.size());
  int64_t most = 1;
  ListTable table(B, latent_.device());  // one copy up
  bool any = false;
  // A list travels once per selection (the inner cache forgets its copy where the pools are
  // when a selection replaces the list; a steady-state eviction writes the new one there
  // itself); the step's new lists travel together.
  std::vector<int64_t> fresh;
  std::vector<at::Tensor> hosts;
  for (int64_t b = 0; b < B; ++b) {
    const PagedKVCache::ListState l = latent_.list_state(seqs[size_t(b)], layer);
    if (l.count == 0 || l.device.buffer.defined()) continue;
    fresh.push_back(b);
    hosts.push_back(latent_.listed_positions(seqs[size_t(b)], layer).first);
  }
  const std::vector<UploadedList> up = upload_lists(hosts, latent_.device());
  for (size_t i = 0; i < fresh.size(); ++i)
    latent_.set_device_list(seqs[size_t(fresh[i])], layer, up[i]);
  for (int64_t b = 0; b < B; ++b) {
    const PagedKVCache::ListState l = latent_.list_state(seqs[size_t(b)], layer);
    const int64_t length = pages.old_lengths[size_t(b)] + 1;
    if (!l.selected) {  // nothing evicted there: no list, tail 0
      most = std::max(most, length);
      continue;
    }
    any = true;
    most = std::max(most, l.count + length - l.tail);
    table.set(b, l.count > 0 ? l.device : UploadedList{}, l.count, l.tail);
  }
  if (!any) return {};
  attended = most;
  const auto [addresses, counts_tails] = table.on(latent_.device());
  return {addresses, counts_tails};
}

at::Tensor PaluPagedCache::decode(const PagedKVCache::StepPages& pages, const Bases& bases,
                                  const at::Tensor& q_in, int64_t layer,
                                  const std::vector<int64_t>& seqs, at::Tensor* scores,
                                  at::Tensor* tails) {
  cover(pages.max_len);
  // Queries in the latents' dtype cross the kernel as they are, and so do its outputs.
  const bool sixteen = q_in.scalar_type() == latent_dtype_;
  const at::Tensor q = q_in.to(latent_.device(), sixteen ? latent_dtype_ : at::kFloat).contiguous();
  at::Tensor out = at::empty_like(q);
  kernels::PaluProblem p;
  p.batch = int(q.size(0)), p.q_heads = int(q.size(1)), p.kv_heads = int(num_kv_heads_);
  p.head_dim = int(head_dim_), p.rank = int(width_), p.bf16 = latent_dtype_ == at::kBFloat16;
  p.group = int(group_);
  p.page_size = pages.store.page_size, p.max_pages_per_seq = int(pages.table.size(1));
  p.block_table = pages.table.data_ptr<int>(), p.seq_lens = pages.lengths.data_ptr<int>();
  p.k_latent = pages.store.k_data, p.v_latent = pages.store.v_data;
  p.k_basis = bases.key16.data_ptr(), p.v_basis = bases.value.data_ptr<float>();
  p.rope_coarse = rope_coarse_.data_ptr<float>(), p.rope_tiles = int(rope_tiles_);
  p.rope_fine = rope_fine_.data_ptr<float>();
  p.softmax_scale = float(1.0 / std::sqrt(double(head_dim_)));
  if (sixteen) {
    p.q16 = static_cast<const uint16_t*>(q.data_ptr());
    p.out16 = static_cast<uint16_t*>(out.data_ptr());
  } else {
    p.q = q.data_ptr<float>(), p.out = out.data_ptr<float>();
  }
  int64_t attended = pages.max_len;  // the most tokens a sequence attends: what splits cover
  const StepLists lists = policy_ ? step_lists(layer, seqs, pages, attended) : StepLists{};
  if (lists.addresses.defined()) {
    p.kept_lists = reinterpret_cast<const int* const*>(lists.addresses.data_ptr<int64_t>());
    p.kept_counts = lists.counts_tails.data_ptr<int>();
    p.tail_start = p.kept_counts + q.size(0);
    if (tails != nullptr) *tails = lists.counts_tails.narrow(0, q.size(0), q.size(0));
  }
  if (scores != nullptr) {  // entries past a sequence's count are never written nor read
    *scores = at::empty({q.size(0), q.size(1), attended}, q.options().dtype(at::kFloat));
    p.scores = scores->data_ptr<float>(), p.score_stride = int(attended);
  }
  paged_cuda::palu(p, attended, q);
  return out;
}

at::Tensor PaluPagedCache::retained(int64_t seq, int64_t layer, int64_t length) const {
  if (!latent_.listed_positions(seq, layer).first.defined())
    return at::arange(length, at::kLong).expand({num_kv_heads_, length});
  // Per latent head (its new rows in the tail), each row for its group's heads.
  const at::Tensor kept = latent_.kept_positions(seq, layer, length);
  return group_ == 1 ? kept : kept.repeat_interleave(group_, 0);
}

void PaluPagedCache::fill_window_scores(RetentionInput& in, const at::Tensor& qb,
                                        const at::Tensor& kb) {
  if (policy_->needs() != RetentionNeeds::kWindowScores) return;  // positions only
  KVB_CHECK(in.prefill, "retention policy '", policy_->name(),
            "' needs window scores, which exist only at the prefill");
  Stopwatch watch;
  const at::Device where = latent_.device();  // from the full-precision keys
  in.window_attention =
      prefill_window_attention(qb.to(where, at::kFloat), kb.to(where, at::kFloat),
                               std::min(policy_->observation_window(), qb.size(1)));
  retention_s_ += watch.seconds();
}

void PaluPagedCache::select(int64_t layer, const std::vector<int64_t>& seqs,
                            const std::vector<RetentionInput*>& inputs) {
  Stopwatch watch;
  double waited = 0;  // for the layer's queued work, at the choices' read-back
  const std::vector<RetentionChoice> chosen = choose_retained(*policy_, inputs, &waited);
  std::vector<AttentionRecord*> records;
  std::vector<at::Tensor> wheres;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const RetentionInput& in = *inputs[i];
    const at::Tensor& c = chosen[i].host;
    KVB_CHECK(c.dim() == 2 && c.size(0) == num_kv_heads_ && c.size(1) <= in.held(),
              "retention policy '", policy_->name(), "' returned a selection of shape ", c.sizes(),
              " for ", num_kv_heads_, " heads holding ", in.held(), " tokens");
    // The kept positions per latent head, by a loop over the host copies (this runs per
    // sequence, layer and step). One latent per group: its heads must keep the same tokens
    // (the reference's store says the same).
    auto longs = [](const at::Tensor& t) {
      return t.scalar_type() == at::kLong && t.is_contiguous() ? t : t.to(at::kLong).contiguous();
    };
    const at::Tensor pos = longs(in.positions), choice = longs(c);
    KVB_CHECK(pos.is_cpu() && choice.is_cpu(),
              "palu paged cache: positions and choices must be "
              "on the host");
    KVB_CHECK(pos.dim() == 2 && pos.size(0) == num_kv_heads_, "palu paged cache: positions ",
              pos.sizes(), " for ", num_kv_heads_, " KV heads");
    const int64_t held = pos.size(1), n = choice.size(1);
    const int64_t* p = pos.data_ptr<int64_t>();
    const int64_t* choices = choice.data_ptr<int64_t>();
    at::Tensor kept = at::empty({num_kv_heads_ / group_, n}, at::kLong);
    int64_t* k = kept.data_ptr<int64_t>();
    for (int64_t h = 0; h < num_kv_heads_; ++h)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t index = choices[h * n + j];
        KVB_CHECK(index >= 0 && index < held, "retention policy '", policy_->name(),
                  "' chose index ", index, " of ", held, " held tokens");
        int64_t& slot = k[(h / group_) * n + j];
        if (h % group_ == 0)
          slot = p[h * held + index];
        else
          KVB_CHECK(slot == p[h * held + index],
                    "palu: the retention policy kept different tokens for KV heads that share one "
                    "latent (group ",
                    group_,
                    "); use \"group\": 1 or a policy that keeps the same tokens for every head "
                    "(streamingllm, tova)");
      }
    // A policy dropping its lowest score keeps a tail of at most its window, so that the
    // next steps can drop from the list where the pools are (evict_steady).
    latent_.retain(seqs[i], layer, kept, in.length, policy_->drops_lowest(in.prompt).value_or(-1));
    const auto record = records_.find({seqs[i], layer});
    if (record == records_.end()) continue;
    records.push_back(&record->second);
    wheres.push_back(chosen[i].where);
  }
  AttentionRecord::keep_batch(records, wheres);
  retention_s_ += watch.seconds() - waited;
  waited_s_ += waited;
}

at::Tensor PaluPagedCache::attend(int64_t layer, const std::vector<int64_t>& seqs,
                                  const std::vector<int64_t>& counts,
                                  const PagedKVCache::StepPages& pages, const Bases& bases,
                                  const at::Tensor& q, const at::Tensor& k) {
  const int64_t B = int64_t(seqs.size());
  // As the reference cache orders it: a decode token of a decode-timing policy that selects
  // by positions is appended, the policy evicts, then the token attends what stays; a block
  // (the prefill), or any step of a policy that selects by attention, attends everything held,
  // its attention is recorded, then the policy evicts.
  // A step that stopped before its last layer left some lists on the device only.
  if (policy_) latent_.refresh(seqs, layer);
  const bool by_attention = selects_by_attention(policy_.get());
  const bool single = std::all_of(counts.begin(), counts.end(), [](int64_t n) { return n == 1; });
  const bool kernel_step = kernel_path_ && single;
  std::vector<RetentionInput> inputs(static_cast<size_t>(B));
  std::vector<bool> evict_after(size_t(B), false), recording(size_t(B), false);
  std::vector<int64_t> held(size_t(B), 0);  // tokens per head each sequence holds
  for (int64_t i = 0; i < B; ++i) {
    RetentionInput& in = inputs[size_t(i)];
    const int64_t n = counts[size_t(i)];
    in.layer = layer, in.num_layers = int64_t(bases_.size());
    in.length = pages.old_lengths[size_t(i)] + n;
    in.prefill = pages.old_lengths[size_t(i)] == 0;
    // Only a prefill, or any step of a decode-timing policy, may evict: the others skip the
    // positions (host work per sequence, layer and step).
    if (!policy_ || !(in.prefill || policy_->timing() == EvictionTiming::kDecode)) continue;
    // The latent cache's appender (appended below) sets it on a sequence's first block.
    in.prompt = in.prefill ? n : latent_.prompt(seqs[size_t(i)]);
    held[size_t(i)] = latent_.held(seqs[size_t(i)], layer, in.length);
    recording[size_t(i)] = by_attention;
    // The kernel reads the lists as they are and records from its own scores: the positions
    // are made only where read (a selection below; the CPU's attention and records).
    if (!(kernel_step && by_attention)) in.positions = retained(seqs[size_t(i)], layer, in.length);
    const bool over = held[size_t(i)] > policy_->budget(in);
    if (over && n == 1 && !in.prefill && !by_attention)
      select(layer, {seqs[size_t(i)]}, {&in});
    else
      evict_after[size_t(i)] = over;
  }
  const bool record_any = std::find(recording.begin(), recording.end(), true) != recording.end();
  std::vector<at::Tensor> newest(static_cast<size_t>(B));  // TOVA's, per sequence
  at::Tensor out;
  if (kernel_step) {
    at::Tensor scores, tails;
    out = decode(pages, bases, q, layer, seqs, record_any ? &scores : nullptr, &tails);
    // The sequences in the steady state of a policy dropping its lowest score: their records'
    // update and their drop are one kernel (evict_steady), after the others' records.
    const SteadyGroups steady =
        scores.defined() && tails.defined()
            ? steady_served(layer, seqs, inputs, held, evict_after, scores.size(1))
            : SteadyGroups();
    Stopwatch watch;
    std::vector<AttentionRecord*> records(size_t(B), nullptr);
    for (int64_t i = 0; i < B; ++i)
      if (recording[size_t(i)] && !steady.contains(size_t(i)))
        records[size_t(i)] = &records_[{seqs[size_t(i)], layer}];
    // The kernel read the listed positions, then the tail up to the new token: the held
    // tokens, in the order the records' rows follow.
    if (record_any)
      AttentionRecord::add_scores_batch(*policy_, records, scores, held, num_kv_heads_,
                                        pages.old_lengths, newest);
    retention_s_ += watch.seconds();
    for (size_t g = 0; g < steady.groups().size(); ++g)
      evict_steady(layer, seqs, steady.groups()[g], g, pages.old_lengths, scores, tails,
                   evict_after);
  } else {
    // Prefill (or the CPU's decode): per sequence, over its reconstructed tokens (those it
    // retains).
    const double scale = 1.0 / std::sqrt(double(head_dim_));
    std::vector<at::Tensor> parts;
    for (int64_t i = 0, row = 0; i < B; row += counts[size_t(i)], ++i) {
      const RetentionInput& in = inputs[size_t(i)];
      auto [keys, values] = reconstruct(pages, i, bases, in.length);
      if (policy_ && latent_.listed_positions(seqs[size_t(i)], layer).first.defined()) {
        const at::Tensor index = retained(seqs[size_t(i)], layer, in.length)
                                     .to(keys.device())
                                     .unsqueeze(-1)
                                     .expand({num_kv_heads_, -1, head_dim_});
        keys = keys.gather(1, index), values = values.gather(1, index);
      }
      const at::Tensor qb =
          q.narrow(0, row, counts[size_t(i)]).transpose(0, 1).to(keys.device(), at::kFloat);
      parts.push_back(paged_block_attention(qb, keys, values, scale).transpose(0, 1));
      if (recording[size_t(i)]) {
        Stopwatch watch;
        records_[{seqs[size_t(i)], layer}].add_block(
            *policy_, qb, keys, in.positions, pages.old_lengths[size_t(i)], newest[size_t(i)]);
        retention_s_ += watch.seconds();
      }
    }
    out = at::cat(parts, 0);
  }
  // The over-budget sequences' selections, in one read-back.
  std::vector<int64_t> evicted;
  std::vector<RetentionInput*> evicting;
  std::vector<const AttentionRecord*> records;
  std::vector<at::Tensor> newest_evicting;
  for (int64_t i = 0, row = 0; i < B; row += counts[size_t(i)], ++i) {
    if (!evict_after[size_t(i)]) continue;
    const int64_t n = counts[size_t(i)];
    RetentionInput& in = inputs[size_t(i)];
    if (!in.positions.defined()) in.positions = retained(seqs[size_t(i)], layer, in.length);
    if (by_attention) {
      const auto record = records_.find({seqs[size_t(i)], layer});
      KVB_CHECK(record != records_.end(), "palu paged cache: no attention recorded for sequence ",
                seqs[size_t(i)], " at layer ", layer, " before its selection");
      records.push_back(&record->second);
      newest_evicting.push_back(newest[size_t(i)]);
    } else {
      fill_window_scores(inputs[size_t(i)], q.narrow(0, row, n).transpose(0, 1),
                         k.narrow(0, row, n).transpose(0, 1));
    }
    evicted.push_back(seqs[size_t(i)]);
    evicting.push_back(&inputs[size_t(i)]);
  }
  if (by_attention && !evicting.empty()) {
    Stopwatch watch;
    AttentionRecord::fill_batch(*policy_, records, newest_evicting, evicting);
    retention_s_ += watch.seconds();
  }
  if (!evicting.empty()) select(layer, evicted, evicting);
  // A policy that evicts after the prefill selects no more: its records go.
  if (record_any && policy_->timing() == EvictionTiming::kAfterPrefill)
    for (int64_t i = 0; i < B; ++i) records_.erase({seqs[size_t(i)], layer});
  // After the last layer: the lists evicted on the device come back in one copy, and pages no
  // layer keeps go back to the pool (the inner cache leaves both to this cache: its step ends
  // before this layer's selections).
  if (policy_ && layer == int64_t(bases_.size()) - 1) latent_.settle(seqs);
  // fp32 in, fp32 out; the latents' dtype in, the same out (a decode step's kernel wrote it so).
  return out.to(q.device(), q.scalar_type() == latent_dtype_ ? latent_dtype_ : at::kFloat);
}

SteadyGroups PaluPagedCache::steady_served(int64_t layer, const std::vector<int64_t>& seqs,
                                           const std::vector<RetentionInput>& inputs,
                                           const std::vector<int64_t>& held,
                                           const std::vector<bool>& evict_after,
                                           int64_t query_heads) const {
  SteadyGroups served;
  // One latent per group of KV heads would need every head of the group to drop one token;
  // the kernel drops per head. (A layer too wide for its blocks selects too.)
  if (group_ != 1 || !kernels::steady_evict_fits(steady_rule(*policy_), int(num_kv_heads_),
                                                 int(query_heads / num_kv_heads_)))
    return served;
  // As PagedKVCache::steady_served: budget + 1 held, the tail its `recent` newest and the new
  // token, the records covering the others, the lists on the device; one launch per list
  // length and held count.
  for (size_t b = 0; b < seqs.size(); ++b) {
    if (!evict_after[b] || inputs[b].prefill) continue;
    const std::optional<int64_t> recent = policy_->drops_lowest(inputs[b].prompt);
    if (!recent) continue;
    const PagedKVCache::ListState l = latent_.list_state(seqs[b], layer);
    const auto record = records_.find({seqs[b], layer});
    if (held[b] != policy_->budget(inputs[b]) + 1 || !l.selected ||
        l.count != held[b] - *recent - 1 || record == records_.end() ||
        !record->second.steady_ready(*policy_, held[b]) ||
        (l.count > 0 && !l.device.buffer.defined()))
      continue;
    served.add(b, l.count, held[b]);
  }
  return served;
}

void PaluPagedCache::evict_steady(int64_t layer, const std::vector<int64_t>& seqs,
                                  const std::vector<size_t>& served, size_t group,
                                  const std::vector<int64_t>& old_lengths, const at::Tensor& logits,
                                  const at::Tensor& tails, std::vector<bool>& evict_after) {
  Stopwatch watch;
  const int64_t H = num_kv_heads_, E = int64_t(served.size());
  SteadyEviction e;
  e.policy = policy_.get(), e.logits = logits, e.tails = tails, e.kv_heads = H;
  e.count = latent_.list_state(seqs[served[0]], layer).count;
  e.held = latent_.held(seqs[served[0]], layer, old_lengths[served[0]] + 1);
  // Each record's row, then its ring column's offset from its tail (ScissorHands): positions
  // are slots here, and position and tail move on together.
  const int window = steady_rule(*policy_) == kernels::SteadyRule::kLowCounts
                         ? int(policy_->observation_window())
                         : 0;
  std::vector<int> steps;
  for (const size_t b : served) steps.push_back(int(b));
  std::vector<UploadedList> lists;
  for (const size_t b : served) {
    const PagedKVCache::ListState l = latent_.list_state(seqs[b], layer);
    const int64_t ahead = old_lengths[b] - l.tail;
    steps.push_back(window > 0 ? int((ahead % window + window) % window) : 0);
    lists.push_back(l.device);
    e.records.push_back(&records_[{seqs[b], layer}]);
  }
  // Both kept between layers and steps: the steps go up again only once they change.
  e.steps = steady_.steps(layer, group, steps, logits.device());
  if (e.count > 0) e.lists = join_lists(lists, H * e.count);
  e.workspace = steady_.workspace(E * H * (e.held + 1), logits.device());
  const at::Tensor lists_out = evict_steady_records(e);
  const int64_t count = e.count;
  for (int64_t j = 0; j < E; ++j) {
    const size_t b = served[size_t(j)];
    latent_.evicted_on_device(seqs[b], layer,
                              count > 0 ? UploadedList{lists_out, j * H * count} : UploadedList{});
    evict_after[b] = false;
  }
  retention_s_ += watch.seconds();
}

at::Tensor PaluPagedCache::append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                                   const std::vector<int64_t>& counts,
                                                   const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v) {
  check_batch_block(layer, int64_t(bases_.size()), q, k, v, num_kv_heads_, head_dim_);
  KVB_CHECK(seqs.size() == counts.size(), "paged cache: ", seqs.size(), " sequences, ",
            counts.size(), " counts");
  KVB_CHECK(!kernel_path_ || q.size(1) / num_kv_heads_ <= kernels::kPaluMaxQPerKv,
            "paged cache: palu on the GPU path takes at most ", kernels::kPaluMaxQPerKv,
            " query heads per KV head; the model has ", q.size(1) / num_kv_heads_);
  const Bases& b = bases_[size_t(layer)];
  // Each new key's position: its sequence's length before it, onwards.
  std::vector<int64_t> positions;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t start = latent_.length(seqs[i]);
    for (int64_t t = 0; t < counts[i]; ++t) positions.push_back(start + t);
  }
  KVB_CHECK(!positions.empty() && int64_t(positions.size()) == k.size(0),
            "paged cache: ", k.size(0), " new rows for counts summing to ", positions.size());
  rope_rows(*std::max_element(positions.begin(), positions.end()) + 1);
  const at::Tensor& where = step_positions(positions);
  at::Tensor k_latents, v_latents;
  if (kernel_path_ && k.size(0) <= kProjectedRows &&
      group_ * head_dim_ <= kernels::kHeadProjectMaxIn) {
    std::tie(k_latents, v_latents) = fused_latents(k, v, b, where);
  } else {
    k_latents = latents(k, b.key, where), v_latents = latents(v, b.value, at::Tensor());
  }
  const PagedKVCache::StepPages pages =
      latent_.append_pages(layer, seqs, counts, k_latents, v_latents);
  return attend(layer, seqs, counts, pages, b, q, k);
}

void PaluPagedCache::reserve(const std::vector<SequenceTokens>& seqs) {
  if (!policy_) {
    latent_.reserve(seqs);
  } else {
    std::vector<SequenceTokens> prompts = seqs;
    for (SequenceTokens& s : prompts) s.total = s.prompt;
    latent_.reserve(prompts);
  }
  int64_t most = 0;
  for (const SequenceTokens& s : seqs) most = std::max(most, s.total);
  reserve_rope(most);
}

void PaluPagedCache::reserve_pool(int64_t sequences, int64_t tokens, int64_t block,
                                  int64_t longest) {
  LatentPagesCache::reserve_pool(sequences, tokens, block, longest);
  reserve_rope(longest);
}

void PaluPagedCache::reserve_rope(int64_t tokens) {
  if (tokens == 0) return;
  rope_rows(tokens, /*exact=*/true);
  if (kernel_path_) cover(tokens, /*exact=*/true);
}

void PaluPagedCache::remove_sequence(int64_t seq) {
  latent_.remove_sequence(seq);
  for (auto it = records_.begin(); it != records_.end();)
    it = it->first.first == seq ? records_.erase(it) : std::next(it);
}

uint64_t PaluPagedCache::retention_bytes() const {
  uint64_t bytes = latent_.retention_bytes();
  for (const auto& [key, record] : records_) bytes += record.bytes();
  return bytes;
}

uint64_t PaluPagedCache::copies_bytes() const {
  uint64_t bytes = 0;
  for (size_t l = 0; l < bases_.size(); ++l) {
    const Bases& b = bases_[l];
    bytes += own_bases_bytes(int64_t(l), b.key, b.value);
    if (b.key16.defined()) bytes += uint64_t(b.key16.numel() * b.key16.element_size());
  }
  return bytes;
}

}  // namespace kvbench
