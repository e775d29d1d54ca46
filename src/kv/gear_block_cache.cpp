#include "kvbench/kv/gear_block_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>

#include "gear_decode.h"
#include "kvbench/core/error.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/paged_cache.h"
#include "paged_cache_cuda.h"

namespace kvbench {
namespace {

const std::shared_ptr<const GearCodec>& checked(const std::shared_ptr<const GearCodec>& codec,
                                                const RetentionPolicy* policy, at::Device device,
                                                int64_t head_dim, bool kernel_path) {
  KVB_CHECK(codec != nullptr, "gear cache: no codec");
  const at::ScalarType dtype = codec->model_dtype();
  KVB_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "paged cache: method 'gear' stores ",
            c10::toString(dtype),
            " scales, outliers and factors, which the GPU path lacks (model dtype fp16 or bf16)");
  KVB_CHECK(policy == nullptr || dynamic_cast<const FullRetention*>(policy) != nullptr ||
                (policy->timing() == EvictionTiming::kAfterPrefill && !policy->cache_positions() &&
                 policy->needs() != RetentionNeeds::kQueryPages),
            "paged cache: gear's codes span tokens, so on the paged path it takes only policies "
            "that select once after the prefill (SnapKV, PyramidKV, or H2O, TOVA, ScissorHands "
            "and StreamingLLM with \"evict\": \"after_prefill\"); with retention policy '",
            policy ? policy->name() : "", "' run it with attention cpu or reference");
  KVB_CHECK(device.is_cpu() || device.is_cuda(), "paged cache: device ", device.str(),
            " (expected cpu or cuda)");
  if (device.is_cuda()) {
    const std::string why = paged_cuda::unavailable_reason();
    KVB_CHECK(why.empty(), "paged cache: device ", device.str(), ": ", why);
  }
  KVB_CHECK(!kernel_path || head_dim <= kernels::kGearMaxHeadDim, "paged cache: gear at head_dim ",
            head_dim, ": the GPU kernel takes head_dim <= ", kernels::kGearMaxHeadDim);
  // The codec's own checks of the head size (codes pack into bytes, groups divide head_dim).
  codec->make_key_store(1, head_dim);
  codec->make_value_store(1, head_dim);
  return codec;
}

kernels::GearSide side_view(const GearSideTensors& t) {
  kernels::GearSide s;
  s.codes = static_cast<const uint8_t*>(t.codes.data_ptr());
  s.scales = static_cast<const uint16_t*>(t.scales.data_ptr());
  s.mins = static_cast<const uint16_t*>(t.mins.data_ptr());
  s.outlier_values = static_cast<const uint16_t*>(t.outlier_values.data_ptr());
  s.outlier_index = t.outlier_index.data_ptr();
  s.q = static_cast<const uint16_t*>(t.q.data_ptr());
  s.p = static_cast<const uint16_t*>(t.p.data_ptr());
  return s;
}

}  // namespace

GearBlockCache::GearBlockCache(std::shared_ptr<const GearCodec> codec, int64_t num_layers,
                               int64_t num_kv_heads, int64_t head_dim, at::Device device,
                               std::shared_ptr<const RetentionPolicy> policy,
                               bool kernel_path_on_cpu)
    : codec_(
          checked(codec, policy.get(), device, head_dim, device.is_cuda() || kernel_path_on_cpu)),
      params_(codec_->gear_params()),
      dtype_(codec_->model_dtype()),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      device_(device),
      kernel_path_(device.is_cuda() || kernel_path_on_cpu),
      value_k_(gear_outliers_per_side(params_.outlier_ratio, head_dim)),
      policy_(policy && dynamic_cast<const FullRetention*>(policy.get()) == nullptr
                  ? std::move(policy)
                  : nullptr) {
  KVB_CHECK(num_layers >= 1 && num_kv_heads >= 1, "gear cache: ", num_layers, " layers and ",
            num_kv_heads, " KV heads");
  const auto where = at::TensorOptions().dtype(dtype_).device(device_);
  for (int64_t l = 0; l < num_layers_; ++l) {
    exact_k_.push_back(at::empty({0, params_.buffer, num_kv_heads_, head_dim_}, where));
    exact_v_.push_back(at::empty({0, params_.buffer, num_kv_heads_, head_dim_}, where));
  }
  tables_.resize(size_t(num_layers_));
}

int64_t GearBlockCache::add_sequence() {
  Sequence s;
  if (!free_slots_.empty()) {
    s.slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    reserve_slots(slots_ + 1);  // first: a failed allocation leaves the cache as it was
    s.slot = slots_++;
  }
  s.layers.resize(size_t(num_layers_));
  seqs_.emplace(next_id_, std::move(s));
  return next_id_++;
}

void GearBlockCache::remove_sequence(int64_t seq) {
  free_slots_.push_back(sequence(seq).slot);
  seqs_.erase(seq);
}

GearBlockCache::Sequence& GearBlockCache::sequence(int64_t seq) {
  auto it = seqs_.find(seq);
  KVB_CHECK(it != seqs_.end(), "gear cache: unknown sequence ", seq);
  return it->second;
}
const GearBlockCache::Sequence& GearBlockCache::sequence(int64_t seq) const {
  auto it = seqs_.find(seq);
  KVB_CHECK(it != seqs_.end(), "gear cache: unknown sequence ", seq);
  return it->second;
}

int64_t GearBlockCache::length(int64_t seq) const { return sequence(seq).layers.back().length; }

std::vector<int64_t> GearBlockCache::kept_tokens(int64_t seq) const {
  std::vector<int64_t> kept;
  for (const Layer& l : sequence(seq).layers) kept.push_back(l.held);
  return kept;
}

int64_t GearBlockCache::blocks(int64_t seq, int64_t layer) const {
  return int64_t(sequence(seq).layers.at(size_t(layer)).blocks.size());
}

void GearBlockCache::reserve(const std::vector<SequenceTokens>& seqs) {
  if (!pooled_) reserve_sequences(int64_t(seqs.size()));
}

void GearBlockCache::reserve_pool(int64_t sequences, int64_t tokens, int64_t block,
                                  int64_t longest) {
  (void)tokens, (void)block, (void)longest;  // blocks are allocated as they form
  reserve_sequences(sequences);
  pooled_ = true;
}

uint64_t GearBlockCache::slot_bytes(int64_t block) const {
  (void)block;  // the buffers are the slot's whatever the blocks
  return 2 * uint64_t(params_.buffer * num_kv_heads_ * head_dim_ * num_layers_) *
         at::elementSize(dtype_);
}

void GearBlockCache::reserve_sequences(int64_t sequences) {
  KVB_CHECK(sequences >= 0, "gear cache: cannot reserve room for ", sequences, " sequences");
  if (seqs_.empty() && exact_k_[0].size(0) != sequences) {  // idle: made again at that size
    const auto where = at::TensorOptions().dtype(dtype_).device(device_);
    for (std::vector<at::Tensor>* side : {&exact_k_, &exact_v_})
      for (at::Tensor& pool : *side)
        pool = at::Tensor(), pool = at::empty({0, params_.buffer, num_kv_heads_, head_dim_}, where);
    free_slots_.clear();
    slots_ = 0;
    tables_.assign(size_t(num_layers_), Tables{});
  }
  const int64_t taken = std::max<int64_t>(0, sequences - int64_t(free_slots_.size()));
  reserve_slots(slots_ + taken, /*exact=*/true);
}

void GearBlockCache::reserve_slots(int64_t slots, bool exact) {
  const int64_t have = exact_k_[0].size(0);
  if (slots <= have) return;
  const int64_t grown = exact ? slots : std::max<int64_t>({slots, 2 * have, 4});
  // Every layer's new pools before any is swapped in, so that running out of memory midway
  // leaves every layer at the old size.
  std::vector<at::Tensor> bigger[2];
  for (int side = 0; side < 2; ++side)
    for (const at::Tensor& pool : side == 0 ? exact_k_ : exact_v_) {
      bigger[side].push_back(
          at::empty({grown, params_.buffer, num_kv_heads_, head_dim_}, pool.options()));
      bigger[side].back().narrow(0, 0, have).copy_(pool);
    }
  exact_k_ = std::move(bigger[0]);
  exact_v_ = std::move(bigger[1]);
}

namespace {

// Rows [j * heads, (j + 1) * heads) of every tensor of a group's side: sequence j's block, in
// its own memory when the group has others (so that its bytes go when it does).
GearSideTensors member(const GearSideTensors& group, int64_t j, int64_t heads, bool alone) {
  auto part = [&](const at::Tensor& t) {
    const at::Tensor rows = t.narrow(0, j * heads, heads);
    return alone ? rows : rows.clone();
  };
  GearSideTensors out;
  out.codes = part(group.codes), out.scales = part(group.scales), out.mins = part(group.mins);
  out.outlier_values = part(group.outlier_values), out.outlier_index = part(group.outlier_index);
  out.q = part(group.q), out.p = part(group.p), out.k = group.k;
  return out;
}

}  // namespace

void GearBlockCache::append_with_blocks(int64_t layer, const std::vector<Pending>& pending) {
  struct Plan {
    Sequence* s;
    int64_t n, held, ready;
    at::Tensor all[2];  // [held, kv_heads, head_dim]: the buffered rows, then the new ones
  };
  std::vector<Plan> plans;
  // Sequences whose blocks form alike (token count, rank, block number) compress together: the
  // ops work per head, so a group of G sequences is one compression of G * kv_heads heads,
  // whose blocks are those each sequence would form alone (on the CPU to the bit; a GPU's
  // batched QR may differ from a smaller batch's in the last unit).
  std::map<std::tuple<int64_t, int64_t, uint64_t>, std::vector<size_t>> groups;
  for (const Pending& p : pending) {
    Layer& ly = p.seq->layers[size_t(layer)];
    Plan x{p.seq, p.k.size(0), 0, 0, {}};
    x.held = ly.held - ly.compressed + x.n;
    x.ready = x.held - x.held % params_.buffer;
    const at::Tensor* rows[2] = {&p.k, &p.v};
    for (int side = 0; side < 2; ++side) {
      const at::Tensor& pool = (side == 0 ? exact_k_ : exact_v_)[size_t(layer)];
      x.all[side] = at::cat({pool[p.seq->slot].narrow(0, 0, x.held - x.n), *rows[side]});
    }
    if (x.ready > 0) {
      const int64_t rank =
          std::min({x.n > 1 ? params_.rank_prefill : params_.rank_decode, x.ready, head_dim_});
      groups[{x.ready, rank, ly.blocks.size()}].push_back(plans.size());
    }
    plans.push_back(std::move(x));
  }
  for (const auto& [key, members] : groups) {
    const auto [ready, rank, index] = key;
    const int64_t count = int64_t(members.size());
    GearSideTensors sides[2];
    for (int side = 0; side < 2; ++side) {
      std::vector<at::Tensor> blocks;
      for (size_t i : members)
        blocks.push_back(plans[i].all[side].narrow(0, 0, ready).transpose(0, 1));
      const at::Tensor start =
          rank > 0 ? random_start(index, rank).repeat({count, 1, 1}) : at::Tensor();
      sides[side] =
          gear_compress(params_, dtype_, side == 0, at::cat(blocks, 0).to(at::kFloat).contiguous(),
                        rank, index, start);
    }
    for (int64_t j = 0; j < count; ++j) {
      Layer& ly = plans[members[size_t(j)]].s->layers[size_t(layer)];
      Block b;
      b.start = ly.compressed, b.n = ready, b.rank = rank;
      b.key = member(sides[0], j, num_kv_heads_, count == 1);
      b.value = member(sides[1], j, num_kv_heads_, count == 1);
      ly.blocks.push_back(std::move(b));
      ly.compressed += ready;
    }
  }
  for (Plan& x : plans) {
    for (int side = 0; side < 2; ++side) {
      at::Tensor pool = (side == 0 ? exact_k_ : exact_v_)[size_t(layer)][x.s->slot];
      pool.narrow(0, 0, x.held - x.ready).copy_(x.all[side].narrow(0, x.ready, x.held - x.ready));
    }
    x.s->layers[size_t(layer)].held += x.n;
  }
}

at::Tensor GearBlockCache::append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q,
                                             const at::Tensor& k, const at::Tensor& v) {
  return attend_as_batch_of_one(*this, seq, layer, q, k, v);
}

at::Tensor GearBlockCache::append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                                   const std::vector<int64_t>& counts,
                                                   const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v) {
  check_batch_block(layer, num_layers_, q, k, v, num_kv_heads_, head_dim_);
  KVB_CHECK(seqs.size() == counts.size(), "paged cache: ", seqs.size(), " sequences, ",
            counts.size(), " counts");
  KVB_CHECK(!kernel_path_ || q.size(1) / num_kv_heads_ <= kernels::kGearMaxQPerKv,
            "paged cache: gear on the GPU path takes at most ", kernels::kGearMaxQPerKv,
            " query heads per KV head; the model has ", q.size(1) / num_kv_heads_);
  // Everything checked before any state changes: known, distinct sequences, positive counts.
  KVB_CHECK(!seqs.empty(), "paged cache: an empty batch");
  int64_t rows = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    sequence(seqs[i]);
    KVB_CHECK(counts[i] >= 1, "paged cache: sequence ", seqs[i], " brings ", counts[i], " tokens");
    KVB_CHECK(std::count(seqs.begin(), seqs.end(), seqs[i]) == 1, "paged cache: sequence ", seqs[i],
              " appears twice in one batch");
    rows += counts[i];
  }
  KVB_CHECK(rows == k.size(0), "paged cache: ", k.size(0), " new rows for counts summing to ",
            rows);
  const at::Tensor k16 = k.to(device_, dtype_), v16 = v.to(device_, dtype_);
  // Rows that only join the exact buffer go in with one index_copy per side; a sequence whose
  // buffer fills compresses a block on its own (once every `buffer` decode steps).
  std::vector<int64_t> source, dest;
  std::vector<Pending> filling;
  std::vector<bool> first;  // the sequence's first block: a prefill the policy may shrink
  for (size_t i = 0, row = 0; i < seqs.size(); row += size_t(counts[i]), ++i) {
    Sequence& s = sequence(seqs[i]);
    Layer& ly = s.layers[size_t(layer)];
    const int64_t held = ly.held - ly.compressed;
    first.push_back(ly.length == 0);
    ly.length += counts[i];
    if (held + counts[i] >= params_.buffer) {
      filling.push_back(
          {&s, k16.narrow(0, int64_t(row), counts[i]), v16.narrow(0, int64_t(row), counts[i])});
      continue;
    }
    for (int64_t t = 0; t < counts[i]; ++t) {
      source.push_back(int64_t(row) + t);
      dest.push_back(s.slot * params_.buffer + held + t);
    }
    ly.held += counts[i];
  }
  if (!dest.empty()) {
    const bool all = int64_t(source.size()) == rows;
    const at::Tensor to = upload(dest_, dest);
    const at::Tensor from = all ? at::Tensor() : upload(source_, source);
    for (int side = 0; side < 2; ++side) {
      at::Tensor& pool = (side == 0 ? exact_k_ : exact_v_)[size_t(layer)];
      const at::Tensor& x = side == 0 ? k16 : v16;
      pool.view({-1, num_kv_heads_, head_dim_})
          .index_copy_(0, to, all ? x : x.index_select(0, from));
    }
  }
  if (!filling.empty()) append_with_blocks(layer, filling);
  const bool single = std::all_of(counts.begin(), counts.end(), [](int64_t n) { return n == 1; });
  at::Tensor out;
  if (kernel_path_ && single) {
    out = decode(layer, seqs, q);
  } else {
    // Prefill (or the CPU's decode): per sequence, over its reconstructed tokens; a prompt's
    // prefill (a first block of more than one token) over its keys and values as computed, as
    // GEAR's reference code attends before it compresses.
    const double scale = 1.0 / std::sqrt(double(head_dim_));
    std::vector<at::Tensor> parts;
    for (size_t i = 0, row = 0; i < seqs.size(); row += size_t(counts[i]), ++i) {
      auto block = [&](const at::Tensor& x) {
        return x.narrow(0, int64_t(row), counts[i]).transpose(0, 1).to(device_, at::kFloat);
      };
      if (first[i] && counts[i] > 1) {  // (in the model's dtype, as CompressedKVCache's)
        parts.push_back(
            paged_block_attention(block(q), block(k16), block(v16), scale).transpose(0, 1));
        continue;
      }
      const auto [keys, values] = reconstruct(sequence(seqs[i]), layer);
      parts.push_back(paged_block_attention(block(q), keys, values, scale).transpose(0, 1));
    }
    out = at::cat(parts, 0);
  }
  if (policy_) evict_after_prefill(layer, seqs, counts, first, q, k, v);
  return out.to(q.device());
}

void GearBlockCache::evict_after_prefill(int64_t layer, const std::vector<int64_t>& seqs,
                                         const std::vector<int64_t>& counts,
                                         const std::vector<bool>& first, const at::Tensor& q,
                                         const at::Tensor& k, const at::Tensor& v) {
  Stopwatch watch;
  std::vector<Pending> rebuilt;
  for (size_t i = 0, row = 0; i < seqs.size(); row += size_t(counts[i]), ++i) {
    if (!first[i]) continue;
    const int64_t n = counts[i];
    RetentionInput in;
    in.layer = layer, in.num_layers = num_layers_, in.length = n, in.prefill = true;
    in.prompt = n;
    in.positions = at::arange(n, at::kLong).expand({num_kv_heads_, n});
    if (!policy_->over_budget(in)) continue;
    // Selection from the prefill's full-precision queries and keys, as the CPU cache does.
    auto rows_of = [&](const at::Tensor& x) {
      return x.narrow(0, int64_t(row), n).transpose(0, 1).to(device_, at::kFloat);
    };
    const at::Tensor kb = rows_of(k), vb = rows_of(v);  // [kv_heads, n, head_dim]
    in.host_positions = in.positions;
    in.positions = device_.is_cuda()
                       ? in.positions.contiguous().pin_memory().to(device_, /*non_blocking=*/true)
                       : in.positions;
    select_inputs(in, sequence(seqs[i]), layer, rows_of(q), kb);
    const at::Tensor kept = policy_->select(in).to(device_);  // [kv_heads, kept], ascending
    KVB_CHECK(kept.dim() == 2 && kept.size(0) == num_kv_heads_, "retention policy '",
              policy_->name(), "' selected ", kept.sizes(), " for ", num_kv_heads_, " KV heads");
    const at::Tensor index = kept.unsqueeze(-1).expand({num_kv_heads_, kept.size(1), head_dim_});
    // Codes that span tokens cannot lose one: the layer is stored afresh from the kept tokens
    // (its blocks form over them alone, the block numbers from 0), as the CPU store is.
    Sequence& s = sequence(seqs[i]);
    Layer& ly = s.layers[size_t(layer)];
    ly.blocks.clear();
    ly.compressed = 0, ly.held = 0;
    rebuilt.push_back({&s, kb.gather(1, index).transpose(0, 1).to(dtype_),
                       vb.gather(1, index).transpose(0, 1).to(dtype_)});
  }
  if (!rebuilt.empty()) append_with_blocks(layer, rebuilt);
  retention_s_ += watch.seconds();
}

void GearBlockCache::select_inputs(RetentionInput& in, const Sequence& s, int64_t layer,
                                   const at::Tensor& q, const at::Tensor& k) const {
  const int64_t n = k.size(1);
  switch (policy_->needs()) {
    case RetentionNeeds::kPositions:
    case RetentionNeeds::kQueryPages:
      return;
    case RetentionNeeds::kWindowScores:  // from the full-precision keys, as the CPU cache does
      in.window_attention =
          prefill_window_attention(q, k, std::min(policy_->observation_window(), n));
      return;
    default:
      break;
  }
  // The per-step policies score the prefill's attention as the CPU cache records it: over the
  // keys as stored, the layer's reconstructed blocks and its exact buffer (the prefill itself
  // attended them as computed).
  const at::Tensor keys = reconstruct(s, layer).first;  // [kv_heads, n, head_dim] fp32
  AttentionRecord record;
  at::Tensor newest;
  record.add_block(*policy_, q, keys, in.positions, 0, newest);
  record.fill(*policy_, newest, in);
}

std::pair<at::Tensor, at::Tensor> GearBlockCache::reconstruct(const Sequence& s,
                                                              int64_t layer) const {
  const Layer& ly = s.layers[size_t(layer)];
  std::vector<at::Tensor> keys, values;
  for (const Block& b : ly.blocks) {
    keys.push_back(gear_reconstruct(params_, true, b.key));
    values.push_back(gear_reconstruct(params_, false, b.value));
  }
  const int64_t held = ly.held - ly.compressed;
  keys.push_back(exact_k_[size_t(layer)][s.slot].narrow(0, 0, held).transpose(0, 1).to(at::kFloat));
  values.push_back(
      exact_v_[size_t(layer)][s.slot].narrow(0, 0, held).transpose(0, 1).to(at::kFloat));
  return {at::cat(keys, 1), at::cat(values, 1)};
}

const at::Tensor& GearBlockCache::tables(int64_t layer, const std::vector<int64_t>& seqs) {
  Tables& t = tables_[size_t(layer)];
  std::vector<int64_t> key = {
      int64_t(reinterpret_cast<uintptr_t>(exact_k_[size_t(layer)].data_ptr())),
      int64_t(reinterpret_cast<uintptr_t>(exact_v_[size_t(layer)].data_ptr()))};
  int64_t blocks = 0;
  for (int64_t id : seqs) {
    const Layer& ly = sequence(id).layers[size_t(layer)];
    key.insert(key.end(), {id, int64_t(ly.blocks.size())});
    blocks += int64_t(ly.blocks.size());
  }
  if (t.bytes.defined() && key == t.key) return t.bytes;
  // GearSequence rows, then every sequence's GearBlock rows (both 8-byte aligned structs of
  // pointers and ints), addressed where the table will live.
  const size_t seq_bytes = seqs.size() * sizeof(kernels::GearSequence);
  const size_t total = seq_bytes + size_t(blocks) * sizeof(kernels::GearBlock);
  at::Tensor table =
      at::empty({int64_t(total)}, at::TensorOptions().dtype(at::kByte).device(device_));
  std::vector<uint8_t> host(total);
  const uintptr_t base = reinterpret_cast<uintptr_t>(table.data_ptr());
  size_t next_block = seq_bytes;
  const int64_t row = num_kv_heads_ * head_dim_;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = sequence(seqs[i]);
    const Layer& ly = s.layers[size_t(layer)];
    kernels::GearSequence gs;
    gs.blocks = reinterpret_cast<const kernels::GearBlock*>(base + next_block);
    gs.num_blocks = int(ly.blocks.size());
    gs.compressed = int(ly.compressed);
    gs.exact_k = static_cast<const uint16_t*>(exact_k_[size_t(layer)].data_ptr()) +
                 s.slot * params_.buffer * row;
    gs.exact_v = static_cast<const uint16_t*>(exact_v_[size_t(layer)].data_ptr()) +
                 s.slot * params_.buffer * row;
    gs.exact_stride = row;
    std::memcpy(host.data() + i * sizeof(gs), &gs, sizeof(gs));
    for (const Block& b : ly.blocks) {
      kernels::GearBlock gb;
      gb.start = int(b.start), gb.n = int(b.n), gb.rank = int(b.rank), gb.key_k = int(b.key.k);
      gb.key = side_view(b.key);
      gb.value = side_view(b.value);
      std::memcpy(host.data() + next_block, &gb, sizeof(gb));
      next_block += sizeof(gb);
    }
  }
  const at::Tensor staged = at::from_blob(host.data(), {int64_t(total)}, at::kByte);
  if (device_.is_cuda()) {
    table.copy_(staged.pin_memory(), /*non_blocking=*/true);
  } else {
    table.copy_(staged);
  }
  t.key = std::move(key);
  t.bytes = table;
  return t.bytes;
}

const at::Tensor& GearBlockCache::random_start(uint64_t block_index, int64_t rank) {
  at::Tensor& start = starts_[{block_index, rank}];
  if (!start.defined()) {
    // Drawn on the CPU (the CPU store's generator); uploaded without waiting for the device.
    const at::Tensor host =
        gear_random_start(num_kv_heads_, head_dim_, rank, gear_block_seed(params_, block_index));
    start = device_.is_cuda() ? host.pin_memory().to(device_, /*non_blocking=*/true) : host;
  }
  return start;
}

template <class T>
const at::Tensor& GearBlockCache::upload(Uploaded<T>& cached, const std::vector<T>& values) {
  if (values != cached.host || !cached.device.defined()) {
    const at::Tensor host = at::tensor(values, c10::CppTypeToScalarType<T>::value);
    cached.device = device_.is_cuda() ? host.pin_memory().to(device_, /*non_blocking=*/true) : host;
    cached.host = values;
  }
  return cached.device;
}

at::Tensor GearBlockCache::decode(int64_t layer, const std::vector<int64_t>& seqs,
                                  const at::Tensor& q_in) {
  std::vector<int> lengths;
  for (int64_t id : seqs) lengths.push_back(int(sequence(id).layers[size_t(layer)].held));
  const at::Tensor& table = tables(layer, seqs);
  const at::Tensor& lens = upload(lengths_, lengths);
  const at::Tensor q = q_in.to(device_, at::kFloat).contiguous();
  at::Tensor out = at::empty_like(q);
  kernels::GearProblem p;
  p.batch = int(q.size(0)), p.q_heads = int(q.size(1)), p.kv_heads = int(num_kv_heads_);
  p.head_dim = int(head_dim_), p.bits = params_.bits, p.key_group = int(params_.group);
  p.value_group = int(std::min(params_.group, head_dim_)), p.value_k = int(value_k_);
  p.bf16 = dtype_ == at::kBFloat16;
  p.seqs = static_cast<const kernels::GearSequence*>(table.data_ptr());
  p.seq_lens = lens.data_ptr<int>();
  p.softmax_scale = float(1.0 / std::sqrt(double(head_dim_)));
  p.q = q.data_ptr<float>(), p.out = out.data_ptr<float>();
  paged_cuda::gear(p, *std::max_element(lengths.begin(), lengths.end()), q);
  return out;
}

StorageBytes GearBlockCache::total(const std::function<StorageBytes(const Block&)>& block,
                                   bool whole_buffers) const {
  StorageBytes sum;
  const uint64_t row = uint64_t(num_kv_heads_ * head_dim_) * at::elementSize(dtype_);
  for (const auto& [id, s] : seqs_)
    for (const Layer& ly : s.layers) {
      for (const Block& b : ly.blocks) sum += block(b);
      const int64_t exact = ly.held - ly.compressed;  // rows in the exact buffers
      sum.payload += 2 * uint64_t(exact) * row;
      if (whole_buffers) {
        const uint64_t idle = 2 * uint64_t(std::max<int64_t>(params_.buffer - exact, 0)) * row;
        sum.payload += idle, sum.padding += idle;
      }
    }
  return sum;
}

StorageBytes GearBlockCache::storage() const {
  // Each sequence's whole buffers are its own from its first token, as a paged cache's pages and
  // KIVI's rings are: the rows not in use are padding.
  return total(
      [](const Block& b) {
        StorageBytes s = b.key.bytes();
        s += b.value.bytes();
        return s;
      },
      true);
}

uint64_t GearBlockCache::allocated_bytes() const {
  StorageBytes blocks;
  for (const auto& [id, s] : seqs_)
    for (const Layer& ly : s.layers)
      for (const Block& b : ly.blocks) {
        blocks += b.key.bytes();
        blocks += b.value.bytes();
      }
  uint64_t pools = 0;
  for (const std::vector<at::Tensor>* side : {&exact_k_, &exact_v_})
    for (const at::Tensor& pool : *side) pools += uint64_t(pool.nbytes());
  return blocks.total() + pools;
}

StorageBytes GearBlockCache::nominal() const {
  return total(
      [&](const Block& b) {
        StorageBytes s = gear_block_nominal(params_, dtype_, true, b.n, b.rank,
                                            gear_outliers_per_side(params_.outlier_ratio, b.n),
                                            num_kv_heads_, head_dim_);
        s += gear_block_nominal(params_, dtype_, false, b.n, b.rank, value_k_, num_kv_heads_,
                                head_dim_);
        return s;
      },
      false);
}

}  // namespace kvbench
