#include "kvbench/kv/paged_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <tuple>

#include "kv_append.h"
#include "kv_paged_decode.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/attention/torch_sdpa.h"
#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/quest_policy.h"
#include "paged_cache_cuda.h"
#include "steady_eviction.h"

namespace kvbench {

std::vector<int64_t> pack_lists(const std::vector<at::Tensor>& hosts, int* to) {
  std::vector<int64_t> offsets;
  int64_t used = 0;
  for (const at::Tensor& h : hosts) {
    KVB_CHECK(h.is_cpu() && (h.scalar_type() == at::kInt || h.scalar_type() == at::kLong),
              "pack_lists: a list must be int32 or int64 on the host, not ", h.scalar_type(),
              " on ", h.device().str());
    offsets.push_back(used);
    const at::Tensor list = h.is_contiguous() ? h : h.contiguous();
    const int64_t n = list.numel();
    if (list.scalar_type() == at::kInt) {
      if (n > 0) std::memcpy(to + used, list.data_ptr<int>(), size_t(n) * sizeof(int));
    } else {  // int64 (Quest's tokens): converted here, no tensor operator
      const int64_t* from = list.data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) to[used + i] = int(from[i]);
    }
    used += n;
  }
  return offsets;
}

std::vector<UploadedList> upload_lists(const std::vector<at::Tensor>& hosts,
                                       const at::Device& device) {
  std::vector<UploadedList> out;
  int64_t total = 0;
  for (const at::Tensor& h : hosts) {
    KVB_CHECK(h.is_cpu(), "upload_lists: a list to upload is not on the host");
    total += h.numel();
  }
  if (!device.is_cuda()) {
    for (const at::Tensor& h : hosts)
      out.push_back(
          {h.scalar_type() == at::kInt && h.is_contiguous() ? h : h.to(at::kInt).contiguous(), 0});
    return out;
  }
  if (total == 0) return std::vector<UploadedList>(hosts.size());  // nothing to read there
  // Written straight into pinned memory, so the one copy is queued behind the device's work
  // instead of waiting for it.
  const at::Tensor pinned =
      at::empty({total}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
  const std::vector<int64_t> offsets = pack_lists(hosts, pinned.data_ptr<int>());
  const at::Tensor buffer = pinned.to(at::TensorOptions().device(device), /*non_blocking=*/true);
  for (const int64_t offset : offsets) out.push_back({buffer, offset});
  return out;
}

ListTable::ListTable(int64_t batch, const at::Device& device, int64_t layers)
    : batch_(batch),
      layers_(layers),
      // Written in pinned memory for a GPU, so that upload() is one queued copy.
      packed_(at::empty({2 * batch * layers},
                        at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()))),
      words_(packed_.data_ptr<int64_t>()) {
  std::fill(words_, words_ + 2 * batch * layers, int64_t{0});
}

int64_t ListTable::address_of(const UploadedList& list) {
  return list.buffer.defined()
             ? reinterpret_cast<int64_t>(list.buffer.data_ptr<int>() + list.offset)
             : 0;
}

void ListTable::set(int64_t b, const UploadedList& list, int64_t count, int64_t tail,
                    int64_t layer) {
  KVB_CHECK(b >= 0 && b < batch_ && layer >= 0 && layer < layers_, "list table: sequence ", b,
            " of ", batch_, ", table ", layer, " of ", layers_);
  int64_t* words = words_ + 2 * batch_ * layer;
  words[b] = address_of(list);
  int* counts_tails = reinterpret_cast<int*>(words + batch_);
  counts_tails[b] = int(count), counts_tails[batch_ + b] = int(tail);
}

bool ListTable::holds(int64_t b, const UploadedList& list, int64_t count, int64_t tail,
                      int64_t layer) const {
  const int64_t* words = words_ + 2 * batch_ * layer;
  const int* counts_tails = reinterpret_cast<const int*>(words + batch_);
  return words[b] == address_of(list) && counts_tails[b] == int(count) &&
         counts_tails[batch_ + b] == int(tail);
}

at::Tensor ListTable::upload(const at::Device& device) const {
  return device.is_cuda() ? packed_.to(device, /*non_blocking=*/true) : packed_;
}

std::pair<at::Tensor, at::Tensor> ListTable::of_layer(const at::Tensor& uploaded, int64_t batch,
                                                      int64_t layer) {
  const int64_t at = 2 * batch * layer;
  return {uploaded.narrow(0, at, batch), uploaded.narrow(0, at + batch, batch).view(at::kInt)};
}

using kernels::KvFormat;

namespace {

constexpr int kPageSize = 32;  // tokens per page of the per-token formats

const char* kPagedMethods =
    "full/fp16/bf16 (model dtype fp16 or bf16), int8, int4 (q4_1, or q4_0 with symmetric: "
    "true) and int2 (group 32), fp8, kivi-2 and kivi-4 (group 16, 32 or 64), kvproj (latent pages "
    "of its coefficients, rows zero-padded to 32-value blocks, on a GPU to 64 or 128), palu "
    "(latent pages: any group, rows zero-padded to 32-value blocks, rank <= 128 on a GPU), gear, "
    "gear-4 and gear-8 (blocks read in place: model dtype fp16 or bf16, head_dim <= 128 on a GPU; "
    "policies selecting after the prefill only)";

}  // namespace

// Reference attention of a block's queries q [heads, n, D] over keys/values [kv_heads, L, D]
// whose last n are the block's own, a chunk of queries at a time: a chunk ending at query c1
// sees keys [0, L - n + c1), so the scores held are [heads, chunk, L], not [heads, n, L]
// (8k-token prefills on a GPU: 1 GiB per layer instead of 8).
//
// A fresh prefill on a GPU (the queries are all the keys) goes through PyTorch's fused SDPA in
// fp16 instead where libtorch has it: fp16 pages are fp16-exact, the result differs from the
// fp32 reference by fp16 rounding of q and the softmax (tests bound it by 2e-3); bf16 pages
// are rounded to fp16 too (values past 65504 would overflow: real keys and values stay far
// below). SDPA's own scale is 1/sqrt(d): another `scale` takes the reference path.
at::Tensor paged_block_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 double scale) {
  constexpr int64_t kChunk = 1024;
  const int64_t n = q.size(1), L = k.size(1);
  const bool default_scale = std::abs(scale * std::sqrt(double(q.size(2))) - 1.0) < 1e-12;
  if (q.is_cuda() && n == L && n > 1 && default_scale && torch_sdpa_available())
    return torch_sdpa(q.unsqueeze(0).to(at::kHalf), k.unsqueeze(0).to(at::kHalf),
                      v.unsqueeze(0).to(at::kHalf), /*causal=*/true)
        .squeeze(0)
        .to(at::kFloat);
  if (n <= kChunk) return block_attention_reference(q, k, v, scale);
  std::vector<at::Tensor> parts;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c1 = std::min(n, c0 + kChunk), seen = L - n + c1;
    parts.push_back(block_attention_reference(q.narrow(1, c0, c1 - c0), k.narrow(1, 0, seen),
                                              v.narrow(1, 0, seen), scale));
  }
  return at::cat(parts, 1);
}

std::optional<SinksAndWindow> paged_ring(const PagedFormat& format, const RetentionPolicy* policy) {
  if (policy == nullptr || kernels::is_kivi(format.format) || format.own_attention)
    return std::nullopt;
  return policy->sinks_and_window();
}

bool paged_compacts(const PagedFormat& format, const RetentionPolicy* policy) {
  return policy != nullptr && dynamic_cast<const FullRetention*>(policy) == nullptr &&
         dynamic_cast<const QuestPolicy*>(policy) == nullptr && !paged_ring(format, policy) &&
         !kernels::is_kivi(format.format) && !format.own_attention;
}

CompactedSlots compacted_slots(int64_t page_size, const RetentionPolicy& policy, int64_t num_layers,
                               int64_t prompt, int64_t total) {
  RetentionInput in;
  in.num_layers = num_layers, in.length = prompt, in.prefill = true, in.prompt = prompt;
  int64_t compacted = 0;
  for (in.layer = 0; in.layer < num_layers; ++in.layer)
    compacted = std::max(compacted, std::min(prompt, policy.budget(in)));
  compacted += total - prompt;
  if (policy.timing() != EvictionTiming::kDecode) return {compacted, false};
  in.length = total, in.prefill = false;
  int64_t most = 0;
  for (in.layer = 0; in.layer < num_layers; ++in.layer)
    most = std::max(most, std::min(total, policy.budget(in)));
  const int64_t bound = most + recompaction_slack(page_size, most);
  return {std::min(compacted, bound), compacted >= bound};
}

StorageBytes paged_page_bytes(const PagedFormat& format, int64_t head_dim) {
  const auto k = kernels::page_bytes(format.format, true, format.page_size, int(head_dim)),
             v = kernels::page_bytes(format.format, false, format.page_size, int(head_dim));
  StorageBytes b;
  b.payload = k.data + v.data;
  b.metadata = k.meta + v.meta;
  return b;
}

StorageBytes paged_sequence_reserve(const PagedFormat& format, int64_t head_dim) {
  StorageBytes b;
  if (kernels::is_kivi(format.format))  // keys' and values' rings, fp16
    b.payload = 2 * uint64_t(format.residual) * uint64_t(head_dim) * sizeof(at::Half);
  if (format.format == KvFormat::kFp8) b.metadata = 2 * sizeof(float);  // keys' and values' scale
  return b;
}

PagedFormat paged_format_for(const nlohmann::json& method, at::ScalarType model_dtype) {
  const std::string name = method.at("name");
  auto fail = [&](const std::string& why) {
    return Error("paged cache: method '" + name + "' " + why + "; paged formats: " + kPagedMethods);
  };
  if (method.contains("codec")) return paged_format_for(method["codec"], model_dtype);
  PagedFormat f;
  f.page_size = kPageSize;
  f.computed_dtype = model_dtype;
  if (name == "full" || name == "fp16" || name == "bf16") {
    const at::ScalarType dtype =
        name == "fp16" ? at::kHalf : (name == "bf16" ? at::kBFloat16 : model_dtype);
    if (dtype != at::kHalf && dtype != at::kBFloat16)
      throw fail("stores " + std::string(c10::toString(dtype)) + ", which has no paged format");
    f.format = dtype == at::kHalf ? KvFormat::kFp16 : KvFormat::kBf16;
    return f;
  }
  if (name == "int8" || name == "int4" || name == "int2") {
    if (method.at("group").get<int>() != 32)
      throw fail("has group != 32 (the paged blocks are 32 channels)");
    if (name == "int8") f.format = KvFormat::kInt8;
    if (name == "int4")
      f.format = method.at("symmetric").get<bool>() ? KvFormat::kInt4 : KvFormat::kInt4Asym;
    if (name == "int2") f.format = KvFormat::kInt2;
    return f;
  }
  if (name == "fp8") {
    f.format = KvFormat::kFp8;
    f.fp8_amax = method.at("scale") == "amax";
    f.fp8_scale_value = method.at("scale_value");
    f.fp8_key_amax_divisor = method.at("key_amax_divisor");
    f.fp8_value_amax_divisor = method.at("value_amax_divisor");
    f.fp8_per_head = method.at("granularity") == "head";
    return f;
  }
  if (name == "kivi-2" || name == "kivi-4") {
    const int group = method.at("group"), residual = method.at("residual");
    if (group != 16 && group != 32 && group != 64) throw fail("has a group the kernels lack");
    if (residual % group != 0) throw fail("has a residual that is not a multiple of its group");
    f.format = name == "kivi-2" ? KvFormat::kKivi2 : KvFormat::kKivi4;
    f.page_size = group;
    f.residual = residual;
    return f;
  }
  if (name == "kvproj" || name == "palu")
    throw fail(
        "stores coefficients in bases fitted to the model: its pages (LatentPagedCache, "
        "PaluPagedCache) are built from the prepared codec, not a fixed format");
  if (name.rfind("gear", 0) == 0)
    throw fail(
        "stores blocks whose codes span tokens: its cache (GearBlockCache) is built from the "
        "codec, not a fixed page format");
  throw fail("has no paged format");
}

void check_paged_policy(const RetentionPolicy* policy) {
  if (policy == nullptr || dynamic_cast<const FullRetention*>(policy) != nullptr) return;
  KVB_CHECK(!policy->cache_positions(), "paged cache: retention policy '", policy->name(),
            "' gives kept tokens cache positions, which would rewrite their keys in the pages; "
            "use positions: original");
}

PagedKVCache::PagedKVCache(PagedFormat format, int64_t num_layers, int64_t num_kv_heads,
                           int64_t head_dim, PagedCapacity capacity, at::Device device,
                           std::shared_ptr<const RetentionPolicy> policy, bool kernel_path_on_cpu)
    : format_(format),
      device_(device),
      kernel_path_(device.is_cuda() || kernel_path_on_cpu),
      num_layers_(num_layers),
      num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      max_pages_(capacity.max_pages > 0 ? capacity.max_pages : int64_t{1} << 30),
      layers_(size_t(num_layers)) {
  check_paged_policy(policy.get());
  if (policy && dynamic_cast<const FullRetention*>(policy.get()) == nullptr)
    policy_ = std::move(policy);
  quest_ = dynamic_cast<const QuestPolicy*>(policy_.get());
  ring_ = paged_ring(format_, policy_.get());
  if (ring_) {  // the ring is the policy's choice only if its budget and span say the same
    RetentionInput in;
    in.num_layers = num_layers_, in.length = ring_->sinks + ring_->window + 1;
    const std::optional<RetentionSpan> span = policy_->span(in);
    for (in.layer = 0; in.layer < num_layers_; ++in.layer)
      KVB_CHECK(ring_->sinks >= 0 && ring_->window >= 1 &&
                    policy_->budget(in) == ring_->sinks + ring_->window && span &&
                    span->prefix == ring_->sinks && span->newest == in.length - ring_->window,
                "paged cache: retention policy '", policy_->name(), "' keeps ", ring_->sinks,
                " sinks and a window of ", ring_->window,
                " by its sinks_and_window(), which its budget or span contradicts");
  }
  KVB_CHECK(!quest_ || !kernels::is_kivi(format_.format),
            "paged cache: quest bounds pages by their keys as stored, but KIVI's keys are "
            "quantized per channel over groups that the window still changes; use a per-token "
            "format");
  KVB_CHECK(head_dim % 32 == 0, "paged cache: head_dim ", head_dim, " is not a multiple of 32");
  KVB_CHECK(device.is_cpu() || device.is_cuda(), "paged cache: device ", device.str(),
            " (expected cpu or cuda)");
  if (device.is_cuda()) {
    const std::string why = paged_cuda::unavailable_reason();
    KVB_CHECK(why.empty(), "paged cache: device ", device.str(), ": ", why);
  }
  if (kernel_path_ && !format_.own_attention) {
    KVB_CHECK(head_dim == 64 || head_dim == 128, "paged cache: device ", device.str(),
              device.is_cpu() ? " (the GPU path on the CPU: KVBENCH_PAGED_PATH=kernels)" : "",
              ": unsupported head_dim: ", head_dim, " (the GPU decode kernels take 64 and 128)");
  }
  KVB_CHECK(!kernels::is_kivi(format_.format) || head_dim % format_.page_size == 0,
            "paged cache: KIVI group ", format_.page_size, " does not divide head_dim ", head_dim);
  KVB_CHECK(capacity.pages >= 1 && capacity.pages <= max_pages_ && capacity.sequences >= 1,
            "paged cache: expected 1 <= pages <= max_pages and sequences >= 1");
  grow_pages(capacity.pages);
  grow_slots(capacity.sequences);
}

void PagedKVCache::grow_pages(int64_t pages) {
  const int P = format_.page_size, D = int(head_dim_);
  const auto k = kernels::page_bytes(format_.format, true, P, D),
             v = kernels::page_bytes(format_.format, false, P, D);
  // One pool at a time, each old one freed as its copy replaces it (the peak is the pools plus
  // one copy); each grows by what it lacks, so a growth that ran out of memory midway and is
  // tried again leaves every pool the same size.
  auto extend = [&](at::Tensor& pool, size_t per_head) {
    const int64_t have = pool.defined() ? pool.size(0) : 0;
    if (per_head == 0 || have >= pages) return;
    at::Tensor more = at::full({pages - have, num_kv_heads_, int64_t(per_head)}, 0xff,
                               at::TensorOptions().dtype(at::kByte).device(device_));
    pool = pool.defined() ? at::cat({pool, more}, 0) : more;
  };
  for (Layer& layer : layers_) {
    extend(layer.k_data, k.data), extend(layer.v_data, v.data);
    extend(layer.k_meta, k.meta), extend(layer.v_meta, v.meta);
  }
  std::vector<int> fresh;  // popped from the back: old free pages first, then ascending
  for (int64_t p = pages - 1; p >= pages_; --p) fresh.push_back(int(p));
  free_.insert(free_.begin(), fresh.begin(), fresh.end());
  pages_ = pages;
}

void PagedKVCache::reserve(const std::vector<SequenceTokens>& seqs) {
  const bool evicts = policy_ && !quest_;  // Quest reads pages and keeps every token
  int64_t pages = 0;
  for (const SequenceTokens& s : seqs) {
    KVB_CHECK(s.prompt >= 0 && s.total >= s.prompt, "paged cache: cannot reserve room for a ",
              s.prompt, "-token prompt of a ", s.total, "-token sequence");
    // A ring holds its prompt, then its sinks and window; a compacting policy its prompt, then
    // slots_needed; other evicting policies (KIVI's) stay within their prompts' pages.
    const int64_t tokens =
        !evicts ? s.total
        : ring_ ? std::max(s.prompt, std::min(s.total, ring_->sinks + ring_->window))
                : std::max(s.prompt, compacts() ? slots_needed(s.prompt, s.total) : s.prompt);
    pages += (tokens + format_.page_size - 1) / format_.page_size;
  }
  // Quest's bounds, made on a sequence's first step, take room for its total at once.
  quest_rooms_.clear();
  if (quest_)
    for (const SequenceTokens& s : seqs)
      quest_rooms_.push_back((s.total + quest_->page_size() - 1) / quest_->page_size());
  if (!pooled_) size_pools(pages, int64_t(seqs.size()));
}

void PagedKVCache::reserve_pool(int64_t sequences, int64_t tokens, int64_t block, int64_t longest) {
  KVB_CHECK(sequences >= 0 && tokens >= 0 && block >= 1 && longest >= 0,
            "paged cache: cannot reserve room for ", sequences, " sequences of ", tokens,
            " tokens in blocks of ", block, ", none past ", longest, " tokens");
  // A sequence's last page reaches past its last block unless pages tile blocks: a page each,
  // beside the whole pages of the blocks' tokens.
  const int64_t P = format_.page_size;
  size_pools(spill_pages(block) == 0 ? (tokens + P - 1) / P : tokens / P + sequences, sequences);
  pooled_ = true;  // from now on the budget, which reserve() leaves as it is
}

int64_t PagedKVCache::spill_pages(int64_t block) const {
  return block % format_.page_size == 0 ? 0 : 1;
}

uint64_t PagedKVCache::slot_bytes(int64_t block) const {
  const uint64_t per_head =
      paged_sequence_reserve(format_, head_dim_).total() +
      uint64_t(spill_pages(block)) * paged_page_bytes(format_, head_dim_).total();
  return per_head * uint64_t(num_kv_heads_ * num_layers_);
}

void PagedKVCache::size_pools(int64_t more_pages, int64_t more_slots) {
  const int64_t pages =
      std::min(std::max<int64_t>(pages_ - int64_t(free_.size()) + more_pages, 1), max_pages_);
  const int64_t slots = std::max<int64_t>(int64_t(sequences_.size()) + more_slots, 1);
  if (sequences_.empty()) {  // nothing to keep: the pools start again at the exact size
    if (pages != pages_) {
      for (Layer& layer : layers_)
        layer.k_data = layer.v_data = layer.k_meta = layer.v_meta = at::Tensor();
      free_.clear();
      pages_ = 0;
      grow_pages(pages);
    }
    if (slots != slots_) {
      for (Layer& layer : layers_) {
        layer.k_ring = layer.v_ring = layer.k_scale = layer.v_scale = at::Tensor();
        layer.calibrated.clear();
      }
      free_slots_.clear();
      slots_ = 0;
      grow_slots(slots);
    }
    return;
  }
  if (pages > pages_) grow_pages(pages);
  if (slots > slots_) grow_slots(slots);
}

uint64_t PagedKVCache::retention_bytes() const {
  auto bytes_of = [](const at::Tensor& t) { return t.defined() ? uint64_t(t.nbytes()) : 0; };
  uint64_t bytes = 0;
  for (const auto& [id, s] : sequences_) {
    for (const Retained& r : s.kept) {
      bytes += bytes_of(r.host) + bytes_of(r.origin);
      // The kernels' copy where the pools are (a part of a shared upload buffer): the same size.
      if (r.device.buffer.defined()) bytes += bytes_of(r.host);
    }
    for (const AttentionRecord& a : s.scores) bytes += a.bytes();
  }
  return bytes;
}

uint64_t PagedKVCache::allocated_bytes() const {
  uint64_t bytes = 0;
  for (const Layer& layer : layers_)
    for (const at::Tensor* t : {&layer.k_data, &layer.v_data, &layer.k_meta, &layer.v_meta,
                                &layer.k_ring, &layer.v_ring, &layer.k_scale, &layer.v_scale})
      if (t->defined()) bytes += uint64_t(t->nbytes());
  for (const auto& [id, s] : sequences_)  // Quest's page bounds, room for pages to come too
    for (const QuestBounds& qb : s.quest)
      if (qb.mins.defined()) bytes += uint64_t(qb.mins.nbytes() + qb.maxs.nbytes());
  return bytes;
}

void PagedKVCache::grow_slots(int64_t slots) {
  // As grow_pages: each tensor by what it lacks.
  auto extend = [&](at::Tensor& t, at::IntArrayRef row, at::ScalarType dtype) {
    const int64_t have = t.defined() ? t.size(0) : 0;
    if (have >= slots) return;
    std::vector<int64_t> shape = {slots - have};
    shape.insert(shape.end(), row.begin(), row.end());
    at::Tensor more =
        at::full(shape, std::nan(""), at::TensorOptions().dtype(dtype).device(device_));
    t = t.defined() ? at::cat({t, more}, 0) : more;
  };
  for (Layer& layer : layers_) {
    if (kernels::is_kivi(format_.format))
      for (at::Tensor* ring : {&layer.k_ring, &layer.v_ring})
        extend(*ring, {num_kv_heads_, format_.residual, head_dim_}, at::kHalf);
    if (format_.format == KvFormat::kFp8) {
      extend(layer.k_scale, {num_kv_heads_}, at::kFloat);
      extend(layer.v_scale, {num_kv_heads_}, at::kFloat);
    }
  }
  if (format_.format == KvFormat::kFp8)
    for (Layer& layer : layers_) layer.calibrated.resize(size_t(slots), false);
  std::vector<int> fresh;
  for (int64_t r = slots - 1; r >= slots_; --r) fresh.push_back(int(r));
  free_slots_.insert(free_slots_.begin(), fresh.begin(), fresh.end());
  slots_ = slots;
}

int64_t PagedKVCache::add_sequence() {
  if (free_slots_.empty()) grow_slots(std::max<int64_t>(2 * slots_, 1));
  Sequence s;
  s.kept.resize(size_t(num_layers_));
  s.scores.resize(size_t(num_layers_));
  s.quest.resize(size_t(num_layers_));
  if (!quest_rooms_.empty()) s.quest_room = quest_rooms_.front(), quest_rooms_.pop_front();
  s.slot = free_slots_.back();
  free_slots_.pop_back();
  for (Layer& layer : layers_)
    if (!layer.calibrated.empty()) layer.calibrated[size_t(s.slot)] = false;
  const int64_t id = next_id_++;
  sequences_[id] = std::move(s);
  return id;
}

void PagedKVCache::remove_sequence(int64_t seq) {
  Sequence& s = sequence(seq);
  attend_seqs_.clear(), step_seqs_.clear();  // their tables may name this sequence
  for (auto p = s.pages.rbegin(); p != s.pages.rend(); ++p)
    if (*p >= 0) free_.push_back(*p);  // pages eviction freed are already free
  free_slots_.push_back(s.slot);
  sequences_.erase(seq);
  if (sequences_.empty()) step_lists_ = {};  // (its tables would hold nothing any more)
}

PagedKVCache::Sequence& PagedKVCache::sequence(int64_t seq) {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "paged cache: unknown sequence ", seq);
  return it->second;
}

const PagedKVCache::Sequence& PagedKVCache::sequence(int64_t seq) const {
  auto it = sequences_.find(seq);
  KVB_CHECK(it != sequences_.end(), "paged cache: unknown sequence ", seq);
  return it->second;
}

int64_t PagedKVCache::length(int64_t seq) const { return sequence(seq).length; }

int64_t PagedKVCache::prompt(int64_t seq) const { return sequence(seq).prompt; }

std::vector<int64_t> PagedKVCache::kept_tokens(int64_t seq) const {
  const Sequence& s = sequence(seq);
  std::vector<int64_t> kept;
  for (const Retained& r : s.kept) kept.push_back(r.held(stored(s)));
  return kept;
}

int64_t PagedKVCache::stored_length(int64_t seq) const { return stored(sequence(seq)); }

at::Tensor PagedKVCache::kept_positions(int64_t seq, int64_t layer, int64_t length) const {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  const Sequence& s = sequence(seq);
  if (length < 0) length = s.length;
  if (ring_) {  // its sinks and newest window, whatever slots they sit in
    KVB_CHECK(length >= s.length, "paged cache: sequence ", seq, " has ", s.length,
              " tokens; asked for the positions of ", length);
    const int64_t sinks = std::min(length, ring_->sinks),
                  from = std::max(ring_->sinks, length - ring_->window);
    const at::Tensor row = at::cat(
        {at::arange(sinks, at::kLong), at::arange(std::min(from, length), length, at::kLong)});
    return row.expand({num_kv_heads_, row.size(0)}).contiguous();
  }
  const int64_t slots = length - s.dropped;
  KVB_CHECK(length >= s.length && slots <= int64_t(s.pages.size()) * format_.page_size,
            "paged cache: sequence ", seq, " has ", s.length, " tokens and room for ",
            int64_t(s.pages.size()) * format_.page_size + s.dropped,
            "; asked for the positions of ", length);
  KVB_CHECK(slots >= s.kept[size_t(layer)].tail, "paged cache: layer ", layer, " of sequence ", seq,
            " selected among ", s.kept[size_t(layer)].tail + s.dropped,
            " tokens this step; pass the step's length to read its positions");
  const Retained& r = s.kept[size_t(layer)];
  return logical_positions(s, r, positions_of(r, slots));
}

at::Tensor PagedKVCache::logical_positions(const Sequence& s, const Retained& r,
                                           at::Tensor slots) const {
  if (!r.origin.defined()) return s.dropped == 0 ? slots : slots + s.dropped;
  KVB_CHECK(r.origin.is_cpu(), "paged cache: a compacted layer's positions were read mid-step");
  const int64_t n = slots.size(1), kept = r.origin.size(1);
  const at::Tensor origin = r.origin.contiguous();
  const int64_t* o = origin.data_ptr<int64_t>();
  slots = slots.contiguous();
  int64_t* p = slots.data_ptr<int64_t>();  // positions_of made it: ours to overwrite
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t i = 0; i < n; ++i) {
      int64_t& t = p[h * n + i];
      t = t < kept ? o[h * kept + t] : t + s.dropped;
    }
  return slots;
}

std::pair<at::Tensor, int64_t> PagedKVCache::listed_positions(int64_t seq, int64_t layer) const {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  const Retained& r = sequence(seq).kept[size_t(layer)];
  KVB_CHECK(!r.host_stale, "paged cache: layer ", layer, " of sequence ", seq,
            " evicted on the device this step; read its list after the step's last layer");
  return {r.host, r.tail};
}

void PagedKVCache::assign_pages(Sequence& s, int64_t tokens) {
  const size_t need = size_t((tokens + format_.page_size - 1) / format_.page_size);
  if (s.pages.size() >= need) return;
  const int64_t missing = int64_t(need - s.pages.size());
  if (missing > int64_t(free_.size())) {
    const int64_t want = pages_ + missing - int64_t(free_.size());
    KVB_CHECK(want <= max_pages_, "paged cache: out of pages: a sequence of ", tokens,
              " tokens needs ", need, " pages of ", format_.page_size, " tokens, ", free_.size(),
              " of the pool's ", pages_, " are free and the pool may not grow past ", max_pages_,
              "; size the pool for the batch's longest contexts");
    // A quarter more than the step needs (at least): a reserved pool that a step outgrows
    // (serving's pages past its blocks) grows by little, an unreserved one geometrically.
    grow_pages(std::min(max_pages_, std::max(want, pages_ + pages_ / 4)));
  }
  for (int64_t i = 0; i < missing; ++i) {
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
}

// The fp8 codec's rule: per head (or layer) amax of the sequence's first tokens / divisor; a
// head of zeros keeps scale 1.
void PagedKVCache::calibrate(Layer& layer, int slot, const at::Tensor& k,
                             const at::Tensor& v) const {
  auto scale = [&](const at::Tensor& x, double divisor) {
    if (!format_.fp8_amax) return at::full({num_kv_heads_}, format_.fp8_scale_value, at::kFloat);
    at::Tensor amax =
        x.abs().amax(format_.fp8_per_head ? at::IntArrayRef{1, 2} : at::IntArrayRef{0, 1, 2});
    at::Tensor s = at::where(amax == 0, at::ones_like(amax), amax / divisor);  // NaN stays NaN
    return s.reshape({-1}).expand({num_kv_heads_}).contiguous();
  };
  layer.k_scale[slot].copy_(scale(k.to(at::kFloat), format_.fp8_key_amax_divisor));
  layer.v_scale[slot].copy_(scale(v.to(at::kFloat), format_.fp8_value_amax_divisor));
  layer.calibrated[size_t(slot)] = true;
}

at::Tensor attend_as_batch_of_one(KVCache& cache, int64_t seq, int64_t layer, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v) {
  KVB_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
            "paged cache: expected q [heads, n, head_dim], k and v [kv_heads, n, head_dim]");
  return cache
      .append_and_attend_batch(layer, {seq}, {k.size(1)}, q.transpose(0, 1), k.transpose(0, 1),
                               v.transpose(0, 1))
      .transpose(0, 1);
}

void check_batch_block(int64_t layer, int64_t num_layers, const at::Tensor& q, const at::Tensor& k,
                       const at::Tensor& v, int64_t kv_heads, int64_t head_dim) {
  KVB_CHECK(layer >= 0 && layer < num_layers, "paged cache: layer ", layer, " outside [0, ",
            num_layers, ")");
  KVB_CHECK(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes() && q.size(0) == k.size(0) &&
                k.size(1) == kv_heads && k.size(2) == head_dim && q.size(2) == head_dim &&
                q.size(1) % kv_heads == 0,
            "paged cache: expected q [n, heads, ", head_dim, "], k and v [n, ", kv_heads, ", ",
            head_dim, "]");
}

at::Tensor PagedKVCache::append_and_attend(int64_t seq, int64_t layer_index, const at::Tensor& q,
                                           const at::Tensor& k, const at::Tensor& v) {
  return attend_as_batch_of_one(*this, seq, layer_index, q, k, v);
}

at::Tensor PagedKVCache::append_and_attend_batch(int64_t layer_index,
                                                 const std::vector<int64_t>& seqs,
                                                 const std::vector<int64_t>& counts,
                                                 const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v) {
  check_batch(layer_index, seqs, counts, k, v);
  KVB_CHECK(q.dim() == 3 && q.size(0) == k.size(0) && q.size(2) == head_dim_ &&
                q.size(1) % num_kv_heads_ == 0,
            "paged cache: expected q [n, heads, ", head_dim_, "] beside k and v [n, ",
            num_kv_heads_, ", ", head_dim_, "]");
  Layer& layer = layers_[size_t(layer_index)];
  const Step& step = step_for(layer_index, seqs, counts);
  const kernels::PagedKvStore store = store_of(layer);
  append_rows(layer, step, counts, k, v, store);
  at::Tensor out;
  if (quest_) {
    out = attend_quest(layer_index, step, counts, q, k, v, store);
  } else if (ring_) {  // the slots hold what the policy keeps: the dense path
    out = attend_dense(step, counts, q, k, v, store);
    if (step.ring_from.defined()) {
      Stopwatch watch;
      move_rows(layer_index, step.ring_from, step.ring_to);
      retention_s_ += watch.seconds();
    }
  } else if (policy_) {
    out = attend_retaining(layer_index, step.batch, counts, q, k, v, store, step.table, step.ints,
                           step.max_len);
  } else {
    out = attend_dense(step, counts, q, k, v, store);
  }
  end_step(layer_index, step, counts);
  // fp32 in, fp32 out; the kernels' dtype in (attend_dtype()), the same out.
  return out.to(q.device(), q.scalar_type() == input_dtype() ? q.scalar_type() : at::kFloat);
}

bool PagedKVCache::attends_computed(const Sequence& s, int64_t n) const {
  // 16-bit pages of the model's dtype hold the tokens as computed: read as stored.
  const bool exact_pages = (format_.format == KvFormat::kFp16 && computed_dtype() == at::kHalf) ||
                           (format_.format == KvFormat::kBf16 && computed_dtype() == at::kBFloat16);
  return s.length == 0 && n > 1 && !format_.prefill_reads_stored && !exact_pages;
}

at::Tensor PagedKVCache::attend_computed(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, int64_t row, int64_t n) const {
  // Keys and values in the model's dtype (PagedFormat::computed_dtype), as the full cache of
  // that dtype stores them, not as the format stores them.
  auto block = [&](const at::Tensor& x, at::ScalarType as) {
    return x.narrow(0, row, n).transpose(0, 1).to(device_, as).to(at::kFloat);
  };
  const double scale = 1.0 / std::sqrt(double(head_dim_));
  return paged_block_attention(block(q, at::kFloat), block(k, computed_dtype()),
                               block(v, computed_dtype()), scale)
      .transpose(0, 1);
}

at::Tensor PagedKVCache::attend_dense(const Step& step, const std::vector<int64_t>& counts,
                                      const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const kernels::PagedKvStore& store) {
  const std::vector<Sequence*>& batch = step.batch;
  const int B = int(batch.size());
  if (kernel_path_ &&
      step.max_new == 1) {  // one decode step for the whole batch, reading the formats in place
    paged_cuda::DecodeBatch d{step.table, step.ints.narrow(0, 3 * B + 1, B),
                              step.ints.narrow(0, 2 * B + 1, B), step.max_len};
    return paged_cuda::decode(store, d, num_kv_heads_, q.to(device_, input_dtype()).contiguous());
  }
  // Prefill (or a mixed batch): per sequence, reference attention over its tokens.
  const double scale = 1.0 / std::sqrt(double(head_dim_));
  std::vector<at::Tensor> parts;
  for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
    const Sequence& s = *batch[size_t(b)];
    if (attends_computed(s, counts[size_t(b)])) {
      parts.push_back(attend_computed(q, k, v, row, counts[size_t(b)]));
      continue;
    }
    const int64_t t1 = slots_after(s, counts[size_t(b)]);
    at::Tensor keys, values;
    if (kernel_path_) {
      std::tie(keys, values) =
          paged_cuda::dequantize(store, step.table[b], num_kv_heads_, head_dim_, s.slot, t1);
    } else {
      keys = decode(store, s, true, t1), values = decode(store, s, false, t1);
    }
    const at::Tensor qb = q.narrow(0, row, counts[size_t(b)]).transpose(0, 1);
    parts.push_back(
        paged_block_attention(qb.to(device_, at::kFloat), keys, values, scale).transpose(0, 1));
  }
  return at::cat(parts, 0);
}

void PagedKVCache::fold_quest_bounds(Sequence& s, int64_t layer, const kernels::PagedKvStore& store,
                                     const at::Tensor& table_row, int64_t n) {
  const int64_t P = quest_->page_size(), t0 = s.length, t1 = s.length + n;
  const int64_t first = t0 / P, last = (t1 - 1) / P, pages = last - first + 1;
  const at::Tensor keys = new_keys(store, s, table_row, t0, t1);
  // The new keys padded to whole pages, so each page's min and max is one reduction.
  auto padded = [&](double fill) {
    const auto opts = keys.options();
    return at::cat({at::full({num_kv_heads_, t0 - first * P, head_dim_}, fill, opts), keys,
                    at::full({num_kv_heads_, (last + 1) * P - t1, head_dim_}, fill, opts)},
                   1)
        .view({num_kv_heads_, pages, P, head_dim_});
  };
  const double inf = std::numeric_limits<double>::infinity();
  // [pages, kv_heads, d], the bounds' layout.
  const at::Tensor lo = half_bounds(std::get<0>(padded(inf).min(2)).transpose(0, 1), true);
  const at::Tensor hi = half_bounds(std::get<0>(padded(-inf).max(2)).transpose(0, 1), false);
  grow_quest_bounds(s, layer, last + 1);
  QuestBounds& qb = s.quest[size_t(layer)];
  at::Tensor mins = qb.mins.narrow(0, first, pages), maxs = qb.maxs.narrow(0, first, pages);
  // (The new keys are where the pools are, as the bounds.)
  mins.copy_(at::minimum(mins, lo));
  maxs.copy_(at::maximum(maxs, hi));
}

std::vector<int64_t> PagedKVCache::quest_key_pages(const std::vector<Sequence*>& seqs,
                                                   int64_t layer) {
  std::vector<int64_t> pages;
  for (Sequence* s : seqs) {
    pages.push_back(s->length / quest_->page_size());
    grow_quest_bounds(*s, layer, pages.back() + 1);
  }
  return pages;
}

void PagedKVCache::fold_quest_keys(const std::vector<Sequence*>& seqs, int64_t layer,
                                   const at::Tensor& keys, const std::vector<int64_t>& pages) {
  // One new key is its page's update as it is. Each page's bounds are one contiguous
  // [kv_heads, d] row, so the batch's updates are one foreach operator each.
  const at::Tensor lo = half_bounds(keys, true).contiguous(),
                   hi = half_bounds(keys, false).contiguous();
  std::vector<at::Tensor> mins, maxs;
  for (size_t j = 0; j < seqs.size(); ++j) {
    const QuestBounds& qb = seqs[j]->quest[size_t(layer)];
    mins.push_back(qb.mins[pages[j]]), maxs.push_back(qb.maxs[pages[j]]);
  }
  at::_foreach_minimum_(mins, lo.unbind(0));
  at::_foreach_maximum_(maxs, hi.unbind(0));
}

void PagedKVCache::pack_quest_bounds(std::vector<int64_t>& packed,
                                     const std::vector<Sequence*>& seqs, int64_t layer) const {
  for (at::Tensor QuestBounds::*bound : {&QuestBounds::mins, &QuestBounds::maxs})
    for (const Sequence* s : seqs)
      packed.push_back(int64_t(reinterpret_cast<uintptr_t>(quest_bound_data(*s, layer, bound))));
}

at::Tensor PagedKVCache::quest_kernels(const QuestKernelStep& k, int64_t layer,
                                       const at::Tensor& q) const {
  // The fold's and the scores' tables go up in one copy per layer:
  // [mins S1][maxs S1][page S1] for the folded keys, then
  // [mins S2][maxs S2][pages S2][rows S2] for the scored sequences. (Addresses are taken
  // after every bound has grown: a growth moves them.)
  const int64_t S1 = int64_t(k.folded.size()), S2 = int64_t(k.scored.size());
  std::vector<int64_t> packed;
  pack_quest_bounds(packed, k.folded, layer);
  packed.insert(packed.end(), k.key_pages.begin(), k.key_pages.end());
  pack_quest_bounds(packed, k.scored, layer);
  const std::vector<int64_t> pages = quest_page_counts(k.scored, layer);
  packed.insert(packed.end(), pages.begin(), pages.end());
  packed.insert(packed.end(), k.rows.begin(), k.rows.end());
  const at::Tensor up = upload(at::tensor(packed, at::kLong));
  if (S1 > 0) launch_quest_fold(up.narrow(0, 0, 3 * S1), k.keys);
  if (S2 == 0) return at::Tensor();
  if (quest_->pages_to_read() == 1)  // the newest page only: nothing to score or choose
    return at::empty({S2, num_kv_heads_, 0}, up.options().dtype(at::kInt));
  return quest_choice_kernels(up.narrow(0, 3 * S1, 4 * S2), q,
                              *std::max_element(pages.begin(), pages.end()));
}

void PagedKVCache::launch_quest_fold(const at::Tensor& table, const at::Tensor& keys) const {
  // The kernel rounds and folds every element (no per-sequence views, no rounding operators).
  const int64_t S = table.size(0) / 3;
  const at::Tensor x = keys.to(at::kFloat).contiguous();
  KVB_CHECK(x.dim() == 3 && x.size(0) == S && x.size(1) == num_kv_heads_ &&
                x.size(2) == head_dim_ && on_device(x, device_),
            "paged cache: Quest's new keys must be [sequences, kv_heads, head_dim] on ",
            device_.str());
  kernels::QuestFoldProblem pr;
  pr.batch = int(S), pr.kv_heads = int(num_kv_heads_), pr.head_dim = int(head_dim_);
  int64_t* base = table.data_ptr<int64_t>();
  pr.mins = reinterpret_cast<uint16_t* const*>(base);
  pr.maxs = reinterpret_cast<uint16_t* const*>(base + S);
  pr.page = base + 2 * S;
  pr.keys = x.data_ptr<float>();
  paged_cuda::quest_fold(pr, x);
}

uint16_t* PagedKVCache::quest_bound_data(const Sequence& s, int64_t layer,
                                         at::Tensor QuestBounds::*bound) const {
  const at::Tensor& t = s.quest[size_t(layer)].*bound;
  KVB_CHECK(t.is_contiguous() && t.scalar_type() == at::kHalf,
            "paged cache: Quest's page bounds must be contiguous fp16");
  return reinterpret_cast<uint16_t*>(t.data_ptr());
}

void PagedKVCache::grow_quest_bounds(Sequence& s, int64_t layer, int64_t pages) const {
  QuestBounds& qb = s.quest[size_t(layer)];
  if (pages <= qb.pages) return;
  const int64_t have = qb.mins.defined() ? qb.mins.size(0) : 0;
  if (pages > have) {
    const int64_t room =
        have == 0 ? std::max(pages, s.quest_room) : std::max(pages, have + have / 4 + 1);
    const double inf = std::numeric_limits<double>::infinity();
    const auto opts = at::TensorOptions().dtype(at::kHalf).device(device_);
    const at::Tensor more_lo = at::full({room - have, num_kv_heads_, head_dim_}, inf, opts);
    const at::Tensor more_hi = at::full({room - have, num_kv_heads_, head_dim_}, -inf, opts);
    qb.mins = qb.mins.defined() ? at::cat({qb.mins, more_lo}, 0) : more_lo;
    qb.maxs = qb.maxs.defined() ? at::cat({qb.maxs, more_hi}, 0) : more_hi;
  }
  qb.pages = pages;
}

at::Tensor PagedKVCache::new_keys(const kernels::PagedKvStore& store, const Sequence& s,
                                  const at::Tensor& table_row, int64_t t0, int64_t t1) const {
  const int64_t n = t1 - t0;
  if (!kernel_path_)
    return decode_at(store, s, true, at::arange(t0, t1, at::kLong).expand({num_kv_heads_, n}), t1);
  // The pages holding [t0, t1) only (per-token formats: a token decodes from its page alone).
  const int64_t P = format_.page_size, p0 = t0 / P;
  const at::Tensor pages = table_row.narrow(0, p0, (t1 - 1) / P - p0 + 1);
  const at::Tensor keys =
      paged_cuda::dequantize(store, pages, num_kv_heads_, head_dim_, s.slot, t1 - p0 * P).first;
  return keys.narrow(1, t0 - p0 * P, n);
}

std::vector<int64_t> PagedKVCache::quest_page_counts(const std::vector<Sequence*>& seqs,
                                                     int64_t layer) const {
  std::vector<int64_t> pages;
  for (const Sequence* s : seqs) {
    pages.push_back(s->quest[size_t(layer)].pages);
    KVB_CHECK(pages.back() >= quest_->pages_to_read(), "paged cache: a sparse Quest step over ",
              pages.back(), " pages, fewer than the ", quest_->pages_to_read(), " it reads");
  }
  return pages;
}

std::pair<at::Tensor, at::Tensor> PagedKVCache::quest_query_parts(const at::Tensor& q) const {
  // U = sum_i P_i max_i + N_i min_i with the group's mean positive and negative query parts.
  const int64_t group = q.size(1) / num_kv_heads_;
  const at::Tensor qg = q.to(device_, at::kFloat).reshape({q.size(0), num_kv_heads_, group, -1});
  return {qg.clamp_min(0).mean(2), qg.clamp_max(0).mean(2)};
}

at::Tensor PagedKVCache::quest_pages(const std::vector<Sequence*>& seqs, int64_t layer,
                                     const at::Tensor& q, const std::vector<int64_t>& rows) const {
  const int64_t S = int64_t(seqs.size());
  const auto [pos, neg] = quest_query_parts(q);  // [rows, kv_heads, d]
  // The sequences' pages side by side ([pages in all, kv_heads, d]), each page beside its
  // query's parts: one product for the batch, whatever each sequence's page count.
  const std::vector<int64_t> pages = quest_page_counts(seqs, layer);
  std::vector<int64_t> owner, place;  // per page: its query's row; its padded column
  std::vector<at::Tensor> maxs, mins;
  for (const Sequence* s : seqs) {
    const QuestBounds& qb = s->quest[size_t(layer)];
    maxs.push_back(qb.maxs.narrow(0, 0, qb.pages)), mins.push_back(qb.mins.narrow(0, 0, qb.pages));
  }
  const int64_t most = *std::max_element(pages.begin(), pages.end());
  for (int64_t j = 0; j < S; ++j)
    for (int64_t t = 0; t < pages[size_t(j)]; ++t)
      owner.push_back(rows[size_t(j)]), place.push_back(j * most + t);
  const int64_t all = int64_t(owner.size());
  owner.insert(owner.end(), place.begin(), place.end());
  owner.insert(owner.end(), pages.begin(), pages.end());
  const at::Tensor index = upload(at::tensor(owner, at::kLong));  // one copy up
  const at::Tensor who = index.narrow(0, 0, all), where = index.narrow(0, all, all);
  // In place where it can be: at long contexts each [pages in all, kv_heads, d] fp32 tensor
  // is ~100 MB.
  const at::Tensor u = at::cat(maxs, 0)
                           .to(at::kFloat)
                           .mul_(pos.index_select(0, who))
                           .addcmul_(at::cat(mins, 0).to(at::kFloat), neg.index_select(0, who))
                           .sum(2);  // [pages in all, kv_heads]
  const at::Tensor bounds =
      at::zeros({S * most, num_kv_heads_}, u.options())
          .index_copy_(0, where, u)
          .view({S, most, num_kv_heads_})
          .permute({0, 2, 1});  // [S, kv_heads, most]; padding masked by select_pages
  return quest_->select_pages(bounds, index.narrow(0, 2 * all, S));
}

at::Tensor PagedKVCache::quest_choice_kernels(const at::Tensor& table, const at::Tensor& q,
                                              int64_t most) const {
  // The bounds stay where each sequence keeps them and the kernel reads every bound once; the
  // queries are read as they came, in the model's dtype.
  const int64_t S = table.size(0) / 4, read = quest_->pages_to_read(), P = quest_->page_size();
  const at::Tensor queries = q.to(device_).contiguous();
  KVB_CHECK(
      queries.dim() == 3 && queries.size(1) % num_kv_heads_ == 0 && queries.size(2) == head_dim_,
      "paged cache: Quest's queries must be [rows, heads, ", head_dim_, "], not ", queries.sizes());
  const at::ScalarType dtype = queries.scalar_type();
  KVB_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
            "paged cache: Quest scores fp32, fp16 or bf16 queries, not ", dtype);
  at::Tensor tokens =
      at::empty({S, num_kv_heads_, (read - 1) * P}, table.options().dtype(at::kInt));
  at::Tensor scores = at::empty({S, num_kv_heads_, most}, table.options().dtype(at::kFloat));
  kernels::QuestScoreProblem pr;
  pr.batch = int(S), pr.kv_heads = int(num_kv_heads_), pr.head_dim = int(head_dim_);
  pr.most = int(most);
  const int64_t* base = table.data_ptr<int64_t>();
  pr.mins = reinterpret_cast<const uint16_t* const*>(base);
  pr.maxs = reinterpret_cast<const uint16_t* const*>(base + S);
  pr.pages = base + 2 * S;
  pr.q = queries.data_ptr();
  pr.q_format = dtype == at::kFloat  ? kernels::QuestQuery::kFp32
                : dtype == at::kHalf ? kernels::QuestQuery::kFp16
                                     : kernels::QuestQuery::kBf16;
  pr.group = int(queries.size(1) / num_kv_heads_), pr.rows = base + 3 * S;
  pr.out = scores.data_ptr<float>();
  paged_cuda::quest_score(pr, scores);
  kernels::QuestSelectProblem choice;
  choice.batch = int(S), choice.kv_heads = int(num_kv_heads_), choice.most = int(most);
  choice.read = int(read), choice.page_size = int(P);
  choice.scores = pr.out, choice.pages = pr.pages, choice.tokens = tokens.data_ptr<int32_t>();
  paged_cuda::quest_select(choice, scores);
  return tokens;
}

at::Tensor PagedKVCache::quest_page_tokens(const at::Tensor& chosen) const {
  const int64_t S = chosen.size(0), n = chosen.size(2), P = quest_->page_size();
  return chosen
      .narrow(2, 0, n - 1)  // (one page read: [S, kv_heads, 0])
      .to(at::kInt)
      .mul(int(P))
      .unsqueeze(3)
      .add(at::arange(int(P), chosen.options().dtype(at::kInt)))
      .view({S, num_kv_heads_, (n - 1) * P});
}

at::Tensor PagedKVCache::quest_tokens(const at::Tensor& tokens, int64_t j, int64_t held) const {
  // A loop over the host copy: this runs per sequence, layer and decode step.
  const int64_t P = quest_->page_size(), n = tokens.size(2), tail = (held - 1) / P * P;
  KVB_CHECK(tokens.is_cpu() && tokens.scalar_type() == at::kInt && tokens.is_contiguous(),
            "paged cache: Quest's chosen tokens must be contiguous int32 on the host");
  const int32_t* listed = tokens.data_ptr<int32_t>() + j * num_kv_heads_ * n;
  at::Tensor positions = at::empty({num_kv_heads_, n + held - tail}, at::kLong);
  int64_t* t = positions.data_ptr<int64_t>();
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    for (int64_t i = 0; i < n; ++i) *t++ = listed[h * n + i];
    for (int64_t i = tail; i < held; ++i) *t++ = i;
  }
  return positions;
}

std::vector<PagedKVCache::ListedRows> PagedKVCache::quest_lists(
    const at::Tensor& tokens, const std::vector<Sequence*>& seqs) const {
  // Each head's chosen pages ascend, so the newest (always chosen, partly filled) is the last:
  // the others' tokens are the list, and the newest page is the tail up to the new token.
  KVB_CHECK(tokens.dim() == 3 && tokens.size(0) == int64_t(seqs.size()) &&
                tokens.size(1) == num_kv_heads_ && tokens.scalar_type() == at::kInt,
            "paged cache: Quest chose tokens of shape ", tokens.sizes(), " for ", seqs.size(),
            " sequences");
  const int64_t n = tokens.size(2), P = quest_->page_size();
  std::vector<ListedRows> out(seqs.size());
  for (size_t j = 0; j < seqs.size(); ++j) {
    const int64_t held = seqs[j]->length + 1;
    out[j] = {n > 0 ? UploadedList{tokens, int64_t(j) * num_kv_heads_ * n} : UploadedList{}, n,
              (held - 1) / P * P};
  }
  return out;
}

at::Tensor PagedKVCache::attend_quest(int64_t layer, const Step& step,
                                      const std::vector<int64_t>& counts, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v,
                                      const kernels::PagedKvStore& store) {
  const std::vector<Sequence*>& batch = step.batch;
  const int B = int(batch.size());
  if (layer < quest_->dense_layers()) return attend_dense(step, counts, q, k, v, store);
  Stopwatch watch;
  // The new keys into the page bounds: a block (the prefill) per sequence, single keys (decode
  // tokens) together. A decode step over a 16-bit format takes them as they came: the format
  // stores them exactly (in its dtype), so no page is decoded.
  const bool exact_keys =
      (format_.format == KvFormat::kFp16 || format_.format == KvFormat::kBf16) &&
      std::all_of(counts.begin(), counts.end(), [](int64_t n) { return n == 1; });
  std::vector<Sequence*> singles, sparse;
  std::vector<at::Tensor> keys;
  std::vector<int64_t> sparse_rows;
  std::vector<int> sparse_b;
  for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
    Sequence& s = *batch[size_t(b)];
    const int64_t n = counts[size_t(b)];
    if (n == 1) {
      singles.push_back(&s);
      if (!exact_keys) keys.push_back(new_keys(store, s, step.table[b], s.length, s.length + 1));
    } else {
      fold_quest_bounds(s, layer, store, step.table[b], n);
    }
    // A decode token of a layer holding more than the budget reads the chosen pages only.
    if (n == 1 && s.length > 0 && quest_->sparse(layer, s.length + 1))
      sparse.push_back(&s), sparse_rows.push_back(row), sparse_b.push_back(b);
  }
  QuestKernelStep ks{singles, quest_key_pages(singles, layer), {}, sparse, sparse_rows};
  if (!singles.empty())
    ks.keys =
        exact_keys ? k.to(device_, input_dtype()).to(at::kFloat) : at::cat(keys, 1).transpose(0, 1);
  at::Tensor chosen;  // [sparse, kv_heads, listed] the tokens of the chosen pages but the newest
  if (kernel_path_) {
    if (!singles.empty()) chosen = quest_kernels(ks, layer, q);  // (prefills only: nothing)
  } else {
    if (!singles.empty()) fold_quest_keys(singles, layer, ks.keys, ks.key_pages);
    if (!sparse.empty()) chosen = quest_page_tokens(quest_pages(sparse, layer, q, sparse_rows));
  }
  if (sparse.empty()) {
    retention_s_ += watch.seconds();
    return attend_dense(step, counts, q, k, v, store);
  }
  if (kernel_path_ && step.max_new == 1) {
    // The chosen pages become the retained-index kernel's lists where they are: nothing comes
    // back to the host, so the host keeps launching ahead of the device.
    std::vector<ListedRows> lists(static_cast<size_t>(B));  // default: every token
    const std::vector<ListedRows> chosen_rows = quest_lists(chosen, sparse);
    for (size_t j = 0; j < sparse.size(); ++j) lists[size_t(sparse_b[j])] = chosen_rows[j];
    retention_s_ += watch.seconds();
    paged_cuda::DecodeBatch d{step.table, step.ints.narrow(0, 3 * B + 1, B),
                              step.ints.narrow(0, 2 * B + 1, B), step.max_len};
    return decode_lists(lists, d, store, q, at::Tensor());
  }
  // The reference rows take positions on the host: the sparse sequences' chosen tokens in one
  // read-back, then their newest pages'.
  const double waited = wait_for_device(chosen.device());  // for the layer's queued work
  const at::Tensor listed = chosen.to(at::kCPU).contiguous();
  std::vector<at::Tensor> positions(static_cast<size_t>(B));  // undefined: every token
  for (size_t j = 0; j < sparse.size(); ++j)
    positions[size_t(sparse_b[j])] = quest_tokens(listed, int64_t(j), sparse[j]->length + 1);
  retention_s_ += watch.seconds() - waited;
  waited_s_ += waited;
  std::vector<at::Tensor> parts;
  for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
    const Sequence& s = *batch[size_t(b)];
    const int64_t n = counts[size_t(b)];
    if (attends_computed(s, n)) {  // a prompt batched with sparse decode tokens
      parts.push_back(attend_computed(q, k, v, row, n));
      continue;
    }
    const at::Tensor all = at::arange(s.length + n, at::kLong).expand({num_kv_heads_, -1});
    const at::Tensor& pos = positions[size_t(b)].defined() ? positions[size_t(b)] : all;
    const Rows rows = rows_at(store, s, step.table[b], pos, s.length + n, true);
    parts.push_back(attend_rows(rows, q.narrow(0, row, n).transpose(0, 1)).transpose(0, 1));
  }
  return at::cat(parts, 0);
}

PagedKVCache::Step PagedKVCache::begin_step(int64_t layer, const std::vector<int64_t>& seqs,
                                            const std::vector<int64_t>& counts) {
  Step step;
  const int B = int(seqs.size());
  int max_pages = 1;
  for (int b = 0; b < B; ++b) {
    Sequence& s = sequence(seqs[size_t(b)]);
    // Its first block is its prompt, on every path (a policy's, or another cache appending:
    // Palu's latents), for every layer of the step.
    if (s.length == 0 && counts[size_t(b)] > 0) s.prompt = counts[size_t(b)];
    const int64_t t1 = slots_after(s, counts[size_t(b)]);  // the pages' slots
    KVB_CHECK(t1 < (int64_t{1} << 31), "paged cache: more than 2^31 tokens in a sequence");
    if (layer == 0) assign_pages(s, t1);
    step.batch.push_back(&s);
    max_pages = std::max(max_pages, int(s.pages.size()));
    step.max_new = std::max(step.max_new, int(counts[size_t(b)]));
    step.max_len = std::max(step.max_len, t1);
  }
  // Block tables (rows padded with page 0, never read; so are pages eviction freed, which the
  // GPU dequantizer may read but nothing attends), then per sequence its old length, the
  // offsets of its new rows, its ring/scale row and its new length: host arrays, or their
  // device copies.
  std::vector<int> table(size_t(B) * max_pages, 0), ints;
  for (int b = 0; b < B; ++b)
    std::transform(step.batch[size_t(b)]->pages.begin(), step.batch[size_t(b)]->pages.end(),
                   table.begin() + size_t(b) * max_pages, [](int p) { return std::max(p, 0); });
  for (int b = 0; b < B; ++b)  // [0, B): old lengths (where the new rows go)
    ints.push_back(int(write_slot(*step.batch[size_t(b)], counts[size_t(b)])));
  ints.push_back(0);  // [B, 2B]: new-row offsets
  for (int64_t n : counts) ints.push_back(ints.back() + int(n));
  for (Sequence* s : step.batch) ints.push_back(s->slot);  // [2B + 1, 3B + 1): ring/scale rows
  for (int b = 0; b < B; ++b)                              // [3B + 1, 4B + 1): new lengths
    ints.push_back(int(slots_after(*step.batch[size_t(b)], counts[size_t(b)])));
  // Both in one copy up.
  const int64_t cells = int64_t(table.size());
  table.insert(table.end(), ints.begin(), ints.end());
  const at::Tensor up = upload(at::tensor(table, at::kInt));
  step.table = up.narrow(0, 0, cells).view({B, max_pages});
  step.ints = up.narrow(0, cells, int64_t(ints.size()));
  if (ring_) plan_ring_moves(step, counts);
  return step;
}

void PagedKVCache::plan_ring_moves(Step& step, const std::vector<int64_t>& counts) const {
  // A block of n tokens from position L was written at slots [stored, stored + n), after the
  // ring (or, in a ring not yet full, at their own positions). Of them the policy keeps the
  // sinks and the newest `window`; each moves to its ring slot, which holds a token the block
  // pushed out of the window (or is its own). Sources lie at or past sinks + window and
  // destinations below, so no row is both.
  const int64_t P = format_.page_size, H = num_kv_heads_, W = ring_->window;
  std::vector<int64_t> from, to;
  for (size_t b = 0; b < step.batch.size(); ++b) {
    const int64_t n = counts[b];
    if (n <= 1) continue;  // a single token is written at its ring slot
    const Sequence& s = *step.batch[b];
    const int64_t L = s.length, first = stored(s);
    for (int64_t p = L; p < L + n; ++p) {
      if (p >= ring_->sinks && p < L + n - W) continue;  // out of the window already
      const int64_t src = first + p - L, dst = ring_slot(p);
      if (src == dst) continue;
      for (int64_t h = 0; h < H; ++h) {
        from.push_back((s.pages[size_t(src / P)] * H + h) * P + src % P);
        to.push_back((s.pages[size_t(dst / P)] * H + h) * P + dst % P);
      }
    }
  }
  if (from.empty()) return;
  const int64_t moves = int64_t(from.size());
  from.insert(from.end(), to.begin(), to.end());
  const at::Tensor up = upload(at::tensor(from, at::kLong));
  step.ring_from = up.narrow(0, 0, moves), step.ring_to = up.narrow(0, moves, moves);
}

void PagedKVCache::free_ring_pages(Sequence& s) {
  const size_t need = size_t((stored(s) + format_.page_size - 1) / format_.page_size);
  for (; s.pages.size() > need; s.pages.pop_back()) free_.push_back(s.pages.back());
}

const PagedKVCache::Step& PagedKVCache::step_for(int64_t layer, const std::vector<int64_t>& seqs,
                                                 const std::vector<int64_t>& counts) {
  std::vector<int64_t> lengths;
  for (int64_t id : seqs) lengths.push_back(sequence(id).length);
  // Every layer of a step shares the block tables (pages serve all layers): built at layer 0,
  // or whenever a call does not continue the step.
  if (layer == 0 || step_seqs_ != seqs || step_counts_ != counts || step_lengths_ != lengths) {
    step_ = begin_step(layer, seqs, counts);
    step_seqs_ = seqs, step_counts_ = counts, step_lengths_ = lengths;
  }
  return step_;
}

at::Tensor PagedKVCache::upload(const at::Tensor& host) const {
  if (!device_.is_cuda()) return host;
  // From pinned memory the copy is queued behind the step's kernels instead of waiting for
  // them, so the host keeps launching ahead of the device.
  return host.contiguous().pin_memory().to(at::TensorOptions().device(device_),
                                           /*non_blocking=*/true);
}

void PagedKVCache::append_rows(Layer& layer, const Step& step, const std::vector<int64_t>& counts,
                               const at::Tensor& k, const at::Tensor& v,
                               const kernels::PagedKvStore& store) {
  const int B = int(step.batch.size());
  // fp8: sequences seen for the first time calibrate on their new tokens.
  for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b)
    if (format_.format == KvFormat::kFp8 && !layer.calibrated[size_t(step.batch[size_t(b)]->slot)])
      calibrate(layer, step.batch[size_t(b)]->slot,
                k.narrow(0, row, counts[size_t(b)]).transpose(0, 1),
                v.narrow(0, row, counts[size_t(b)]).transpose(0, 1));
  // fp8 scales were just written: the store's pointers are the same tensors'.
  // New rows as the transformer packs them ([n, kv_heads, head_dim]) in the kernels' input
  // dtype, where the pools are.
  const at::Tensor k_rows = k.to(device_, input_dtype()).contiguous();
  const at::Tensor v_rows = v.to(device_, input_dtype()).contiguous();
  const int* ints = step.ints.data_ptr<int>();
  kernels::AppendProblem p;
  p.batch = B, p.kv_heads = int(num_kv_heads_), p.head_dim = int(head_dim_);
  p.max_pages_per_seq = int(step.table.size(1)), p.block_table = step.table.data_ptr<int>();
  p.old_lens = ints, p.cu_new = ints + B, p.seq_rows = ints + 2 * B + 1;
  p.max_new = step.max_new, p.k = k_rows.data_ptr(), p.v = v_rows.data_ptr();
  const std::string why = kernels::append_check(p, store);
  KVB_CHECK(why.empty(), "paged cache: ", why);
  if (device_.is_cuda())
    paged_cuda::append(p, store, device_);
  else
    kernels::append_kv_host(p, store);
}

void PagedKVCache::end_step(int64_t layer, const Step& step, const std::vector<int64_t>& counts) {
  if (layer != num_layers_ - 1) return;
  // After the last layer's kernels are queued: the one wait of a step evicting on the device
  // (a caller that settles does it after its own last layer).
  if (!defer_settling_) refresh_lists(step.batch, -1);
  for (size_t b = 0; b < step.batch.size(); ++b) step.batch[b]->length += counts[b];
  settle_compactions(step.batch);
  recompact(step.batch);
  for (Sequence* s : step.batch) {
    if (ring_) free_ring_pages(*s);
    if (s->evicted && !defer_settling_) free_evicted_pages(*s);
  }
}

void PagedKVCache::append_batch(int64_t layer_index, const std::vector<int64_t>& seqs,
                                const std::vector<int64_t>& counts, const at::Tensor& k,
                                const at::Tensor& v) {
  KVB_CHECK(!policy_,
            "paged cache: append_batch stores tokens unattended, which a retention "
            "policy cannot select from");
  check_batch(layer_index, seqs, counts, k, v);
  Layer& layer = layers_[size_t(layer_index)];
  const Step step = begin_step(layer_index, seqs, counts);
  append_rows(layer, step, counts, k, v, store_of(layer));
  end_step(layer_index, step, counts);
}

PagedKVCache::StepPages PagedKVCache::append_pages(int64_t layer_index,
                                                   const std::vector<int64_t>& seqs,
                                                   const std::vector<int64_t>& counts,
                                                   const at::Tensor& k, const at::Tensor& v) {
  KVB_CHECK(!policy_,
            "paged cache: append_pages stores tokens for another cache's attention, "
            "which a retention policy cannot select from");
  check_batch(layer_index, seqs, counts, k, v);
  Layer& layer = layers_[size_t(layer_index)];
  const Step& step = step_for(layer_index, seqs, counts);
  StepPages out;
  out.store = store_of(layer);
  append_rows(layer, step, counts, k, v, out.store);
  const int64_t B = int64_t(seqs.size());
  out.table = step.table, out.lengths = step.ints.narrow(0, 3 * B + 1, B);
  // New tokens join the tail of what an earlier selection kept: nothing to do here.
  for (const Sequence* s : step.batch) out.old_lengths.push_back(s->length);
  out.max_len = step.max_len;
  end_step(layer_index, step, counts);
  return out;
}

void PagedKVCache::retain(int64_t seq, int64_t layer, const at::Tensor& kept, int64_t length,
                          int64_t max_tail) {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  KVB_CHECK(!policy_, "paged cache: retain takes another cache's selection; this one has policy '",
            policy_ ? policy_->name() : "", "'");
  Sequence& s = sequence(seq);
  KVB_CHECK(kept.dim() == 2 && kept.size(0) == num_kv_heads_ && kept.device().is_cpu() &&
                kept.size(1) <= length && length >= s.length &&
                length <= int64_t(s.pages.size()) * format_.page_size,
            "paged cache: a selection of shape ", kept.sizes(), " on ", kept.device().str(),
            " for ", num_kv_heads_, " heads of a sequence of ", length, " tokens");
  const at::Tensor positions = kept.scalar_type() == at::kLong && kept.is_contiguous()
                                   ? kept
                                   : kept.to(at::kLong).contiguous();
  // One pass over the host copy (a decode-timing policy selects at every step and layer: no
  // tensor ops here).
  const int64_t held = positions.size(1);
  const int64_t* p = positions.data_ptr<int64_t>();
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t i = 0; i < held; ++i) {
      const int64_t t = p[h * held + i];
      KVB_CHECK(t >= 0 && t < length, "paged cache: a selection outside the sequence's ", length,
                " tokens");
      KVB_CHECK(i == 0 || t > p[h * held + i - 1],
                "paged cache: a selection's positions must ascend per head");
    }
  s.lists_changed |= keep_positions(s.kept[size_t(layer)], p, held, length, s.prompt, max_tail);
  s.evicted = true;
  // After the step's last layer its length is final: free now (else at the step's end, or at
  // the caller's settle()).
  if (s.length == length && !defer_settling_) free_evicted_pages(s);
}

PagedKVCache::ListState PagedKVCache::list_state(int64_t seq, int64_t layer) const {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  const Retained& r = sequence(seq).kept[size_t(layer)];
  return {r.selected(), r.count(), r.tail, r.device};
}

int64_t PagedKVCache::held(int64_t seq, int64_t layer, int64_t length) const {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  const Sequence& s = sequence(seq);
  return s.kept[size_t(layer)].held(length - s.dropped);
}

void PagedKVCache::set_device_list(int64_t seq, int64_t layer, const UploadedList& list) {
  Retained& r = sequence(seq).kept[size_t(layer)];
  KVB_CHECK(r.count() > 0 && !r.host_stale, "paged cache: layer ", layer, " of sequence ", seq,
            " has no host list to stand for");
  r.device = list;
}

void PagedKVCache::evicted_on_device(int64_t seq, int64_t layer, const UploadedList& list) {
  Sequence& s = sequence(seq);
  Retained& r = s.kept[size_t(layer)];
  KVB_CHECK(r.selected(), "paged cache: layer ", layer, " of sequence ", seq,
            " lists nothing to evict from");
  if (r.count() > 0) r.device = list;
  r.tail += 1;
  r.host_stale = r.count() > 0;
  s.lists_changed = s.evicted = true;
}

void PagedKVCache::refresh(const std::vector<int64_t>& seqs, int64_t layer) {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  std::vector<Sequence*> batch;
  for (const int64_t id : seqs) batch.push_back(&sequence(id));
  refresh_lists(batch, layer);
}

void PagedKVCache::settle(const std::vector<int64_t>& seqs) {
  std::vector<Sequence*> batch;
  for (const int64_t id : seqs) batch.push_back(&sequence(id));
  refresh_lists(batch, -1);
  for (Sequence* s : batch)
    if (s->evicted) free_evicted_pages(*s);
}

at::Tensor PagedKVCache::attend_batch(int64_t layer_index, const std::vector<int64_t>& seqs,
                                      const at::Tensor& q) {
  KVB_CHECK(!policy_, "paged cache: attend_batch reads every stored token; not with a policy");
  KVB_CHECK(layer_index >= 0 && layer_index < num_layers_ && !seqs.empty() && q.dim() == 3 &&
                q.size(0) == int64_t(seqs.size()) && q.size(2) == head_dim_ &&
                q.size(1) % num_kv_heads_ == 0,
            "paged cache: attend_batch expects a layer in range and q [batch, heads, ", head_dim_,
            "]");
  std::vector<int64_t> lengths;
  for (int64_t id : seqs) {
    lengths.push_back(sequence(id).length);
    KVB_CHECK(lengths.back() >= 1, "paged cache: sequence ", id, " holds no tokens");
  }
  // An unchanged batch reuses its tables: a repeated call is the decode kernel alone.
  if (attend_seqs_ != seqs || attend_lengths_ != lengths) {
    attend_step_ = begin_step(-1, seqs, std::vector<int64_t>(seqs.size(), 0));
    attend_seqs_ = seqs, attend_lengths_ = lengths;
  }
  const Step& step = attend_step_;
  const kernels::PagedKvStore store = store_of(layers_[size_t(layer_index)]);
  const int B = int(seqs.size());
  if (kernel_path_) {
    paged_cuda::DecodeBatch d{step.table, step.ints.narrow(0, 3 * B + 1, B),
                              step.ints.narrow(0, 2 * B + 1, B), step.max_len};
    const at::Tensor out =
        paged_cuda::decode(store, d, num_kv_heads_, q.to(device_, input_dtype()).contiguous());
    // A query already where and as the kernel takes it gets the kernel's output as it is: the
    // kernels suite times one launch, not a launch and a cast.
    if (on_device(q, device_) && q.scalar_type() == input_dtype()) return out;
    return out.to(q.device(), at::kFloat);
  }
  const double scale = 1.0 / std::sqrt(double(head_dim_));
  std::vector<at::Tensor> parts;
  for (int b = 0; b < B; ++b) {
    const Sequence& s = *step.batch[size_t(b)];
    parts.push_back(block_attention_reference(q[b].unsqueeze(1).to(at::kFloat),
                                              decode(store, s, true, s.length),
                                              decode(store, s, false, s.length), scale)
                        .squeeze(1));
  }
  return at::stack(parts).to(q.device());
}

void PagedKVCache::check_batch(int64_t layer, const std::vector<int64_t>& seqs,
                               const std::vector<int64_t>& counts, const at::Tensor& k,
                               const at::Tensor& v) const {
  KVB_CHECK(layer >= 0 && layer < num_layers_, "paged cache: layer ", layer, " outside [0, ",
            num_layers_, ")");
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  KVB_CHECK(!seqs.empty() && seqs.size() == counts.size() && k.dim() == 3 && k.size(0) == rows &&
                k.size(1) == num_kv_heads_ && k.size(2) == head_dim_ && v.sizes() == k.sizes(),
            "paged cache: expected k and v [n, ", num_kv_heads_, ", ", head_dim_,
            "] with n the sum of the sequences' new tokens");
  for (size_t b = 0; b < counts.size(); ++b)
    KVB_CHECK(counts[b] >= 1, "paged cache: sequence ", seqs[b], " has no new tokens");
  // A sequence twice in one step would append and update its state twice at once.
  std::vector<int64_t> sorted = seqs;
  std::sort(sorted.begin(), sorted.end());
  const auto twice = std::adjacent_find(sorted.begin(), sorted.end());
  KVB_CHECK(twice == sorted.end(), "paged cache: sequence ", twice == sorted.end() ? 0 : *twice,
            " appears twice in one batch");
}

at::Tensor PagedKVCache::attend_retaining(int64_t layer, const std::vector<Sequence*>& batch,
                                          const std::vector<int64_t>& counts, const at::Tensor& q,
                                          const at::Tensor& k, const at::Tensor& v,
                                          const kernels::PagedKvStore& store,
                                          const at::Tensor& table, const at::Tensor& ints,
                                          int64_t max_len) {
  const int B = int(batch.size());
  // A decode token of a decode-timing policy is appended, the policy evicts, then the token
  // attends what stays; a block (the prefill) attends everything, then the policy evicts.
  // Policies that select by attention see every step's attention first: the new tokens attend
  // everything held, their attention is recorded, then the layer shrinks (H2O's order).
  // The retained lists and tails are read as they are: on the kernel path, a decode step that
  // neither selects nor records makes no positions tensor. A record serves a selection to
  // come: every step under a decode-timing policy, the prefill only under one that selects
  // once after it (its decode steps then read the compacted slots with the dense kernel).
  const bool by_attention = selects_by_attention(policy_.get());
  const bool decode_timing = policy_->timing() == EvictionTiming::kDecode;
  std::vector<bool> records_now(size_t(B), false);
  bool any_records = false;
  std::vector<RetentionInput> inputs(static_cast<size_t>(B));
  std::vector<bool> evict_after(size_t(B), false);
  // Each sequence's slots with its new tokens: its length (in.length, what the policy reads)
  // less the tokens out of the slots as of its last compaction.
  std::vector<int64_t> slots(static_cast<size_t>(B));
  refresh_lists(batch, layer);  // a step that stopped before its end left some on the device
  bool all_single = true, any_kept = false;
  for (int b = 0; b < B; ++b) {
    Sequence& s = *batch[size_t(b)];
    const int64_t n = counts[size_t(b)];
    RetentionInput& in = inputs[size_t(b)];
    in.layer = layer, in.num_layers = num_layers_, in.length = s.length + n;
    in.prefill = s.length == 0;
    in.prompt = s.prompt;  // set by begin_step
    slots[size_t(b)] = stored(s) + n;
    const bool over = (in.prefill || decode_timing) &&
                      s.kept[size_t(layer)].held(slots[size_t(b)]) > policy_->budget(in);
    records_now[size_t(b)] = by_attention && (in.prefill || decode_timing);
    any_records = any_records || records_now[size_t(b)];
    if (over && n == 1 && !in.prefill && !by_attention)
      select(s, layer, in);
    else
      evict_after[size_t(b)] = over;
    all_single = all_single && n == 1;
    any_kept = any_kept || s.kept[size_t(layer)].selected();
  }
  // What each sequence attends (after a selection above), made only where it is read.
  std::vector<at::Tensor> positions(static_cast<size_t>(B));
  auto attended = [&](int b) -> const at::Tensor& {
    at::Tensor& p = positions[size_t(b)];
    if (!p.defined()) p = positions_of(batch[size_t(b)]->kept[size_t(layer)], slots[size_t(b)]);
    return p;
  };
  at::Tensor out, logits, tails;
  std::vector<at::Tensor> keys(static_cast<size_t>(B));  // the held keys, where gathered
  if (kernel_path_ && all_single) {
    paged_cuda::DecodeBatch d{table, ints.narrow(0, 3 * B + 1, B), ints.narrow(0, 2 * B + 1, B),
                              max_len};
    if (any_kept || any_records) {
      // The kernel writes each held token's score for the policy; the records read each
      // row's held entries only: nothing to fill first.
      if (any_records) {
        int64_t most = 1;
        for (int b = 0; b < B; ++b)
          most = std::max(most, batch[size_t(b)]->kept[size_t(layer)].held(slots[size_t(b)]));
        logits =
            at::empty({B, q.size(1), most}, at::TensorOptions().dtype(at::kFloat).device(device_));
      }
      out = decode_retained(layer, batch, d, store, q, logits, &tails);
    } else {  // nothing evicted yet at this layer: the dense decode kernel
      out = paged_cuda::decode(store, d, num_kv_heads_, q.to(device_, input_dtype()).contiguous());
    }
  } else {
    std::vector<at::Tensor> parts;
    for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
      const Sequence& s = *batch[size_t(b)];
      if (attends_computed(s, counts[size_t(b)])) {  // (a record gathers its keys itself)
        parts.push_back(attend_computed(q, k, v, row, counts[size_t(b)]));
        continue;
      }
      const Rows rows = rows_at(store, s, table[b], attended(b), slots[size_t(b)], true);
      if (records_now[size_t(b)]) keys[size_t(b)] = rows.keys;  // the policy's scores reuse them
      const at::Tensor qb = q.narrow(0, row, counts[size_t(b)]).transpose(0, 1);
      parts.push_back(attend_rows(rows, qb).transpose(0, 1));
    }
    out = at::cat(parts, 0);
  }
  std::vector<at::Tensor> newest(static_cast<size_t>(B));  // TOVA's, per sequence
  // The sequences in the steady state of a policy dropping its lowest score: their records'
  // update and their drop are one kernel (evict_steady), after the others' records.
  const SteadyGroups steady =
      logits.defined() ? steady_served(layer, batch, inputs, slots, evict_after, logits.size(1))
                       : SteadyGroups();
  if (any_records) {
    Stopwatch watch;
    if (logits.defined()) {  // one query per sequence, scored by the kernel: batched
      std::vector<AttentionRecord*> records;
      std::vector<int64_t> held, starts;
      for (int b = 0; b < B; ++b) {
        Sequence& s = *batch[size_t(b)];
        const bool fused = steady.contains(size_t(b));
        records.push_back(records_now[size_t(b)] && !fused ? &s.scores[size_t(layer)] : nullptr);
        held.push_back(s.kept[size_t(layer)].held(slots[size_t(b)]));
        starts.push_back(s.length);
      }
      AttentionRecord::add_scores_batch(*policy_, records, logits, held, num_kv_heads_, starts,
                                        newest);
    } else {
      for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
        if (!records_now[size_t(b)]) continue;
        const int64_t n = counts[size_t(b)];
        Sequence& s = *batch[size_t(b)];
        record_scores(s, layer, q, row, n, s.kept[size_t(layer)].held(slots[size_t(b)]), store,
                      table[b], positions[size_t(b)], keys[size_t(b)], newest[size_t(b)]);
      }
    }
    retention_s_ += watch.seconds();
  }
  // The steady state of H2O, TOVA and ScissorHands stays where the pools are; the other
  // over-budget sequences' policy inputs, then their choices in one read-back.
  for (size_t g = 0; g < steady.groups().size(); ++g)
    evict_steady(layer, batch, steady.groups()[g], g, slots, logits, tails, evict_after);
  std::vector<RetentionInput*> evicting;
  std::vector<Sequence*> evicted;
  std::vector<const AttentionRecord*> records;
  std::vector<at::Tensor> newest_evicting;
  for (int b = 0, row = 0; b < B; row += int(counts[size_t(b)]), ++b) {
    if (!evict_after[size_t(b)]) continue;
    const int64_t n = counts[size_t(b)];
    RetentionInput& in = inputs[size_t(b)];
    in.positions = policy_positions(*batch[size_t(b)], layer, attended(b));
    if (by_attention) {
      records.push_back(&batch[size_t(b)]->scores[size_t(layer)]);
      newest_evicting.push_back(newest[size_t(b)]);
    } else {
      fill_window_scores(q, k, row, n, in);
    }
    evicting.push_back(&in);
    evicted.push_back(batch[size_t(b)]);
  }
  // After the prefill of a policy that selects once, no record is read again.
  auto forget_records = [&] {
    if (decode_timing) return;
    for (int b = 0; b < B; ++b)
      if (records_now[size_t(b)]) batch[size_t(b)]->scores[size_t(layer)] = AttentionRecord();
  };
  if (evicting.empty()) {
    forget_records();
    return out;
  }
  Stopwatch watch;
  double waited = 0;  // for the layer's queued work, at the choices' read-back
  if (by_attention) AttentionRecord::fill_batch(*policy_, records, newest_evicting, evicting);
  // A compacted prefill's choice moves the slots where it was made: nothing comes back to the
  // host until the step's end. The other choices (decode steps, later blocks) come back.
  std::vector<size_t> compacted, applied;
  for (size_t i = 0; i < evicting.size(); ++i)
    (compacts() && evicting[i]->prefill ? compacted : applied).push_back(i);
  std::vector<RetentionChoice> chosen(evicting.size());
  for (const bool compacting : {true, false}) {
    const std::vector<size_t>& part = compacting ? compacted : applied;
    if (part.empty()) continue;
    std::vector<RetentionInput*> inputs_part;
    for (const size_t i : part) inputs_part.push_back(evicting[i]);
    std::vector<RetentionChoice> got =
        choose_retained(*policy_, inputs_part, &waited, /*read_back=*/!compacting);
    for (size_t j = 0; j < part.size(); ++j) chosen[part[j]] = std::move(got[j]);
  }
  retention_s_ += watch.seconds() - waited;
  waited_s_ += waited;
  if (!compacted.empty()) {
    watch = Stopwatch();
    std::vector<Sequence*> seqs;
    std::vector<int64_t> lengths;
    std::vector<at::Tensor> kept;
    for (const size_t i : compacted)
      seqs.push_back(evicted[i]), lengths.push_back(evicting[i]->length),
          kept.push_back(chosen[i].where);
    compact(layer, seqs, lengths, kept);
    retention_s_ += watch.seconds();
  }
  // (apply_choice times itself.)
  for (const size_t i : applied) apply_choice(*evicted[i], layer, *evicting[i], chosen[i]);
  watch = Stopwatch();
  // A decode-timing policy's records keep the chosen tokens' rows, in the order they are held
  // (a compacted head's slots follow its choice's order).
  if (decode_timing) {
    std::vector<AttentionRecord*> kept_records;
    std::vector<at::Tensor> wheres;
    for (size_t i = 0; i < evicting.size(); ++i) {
      kept_records.push_back(&evicted[i]->scores[size_t(layer)]);
      wheres.push_back(chosen[i].where);
    }
    AttentionRecord::keep_batch(kept_records, wheres);
  }
  forget_records();
  retention_s_ += watch.seconds();
  return out;
}

at::Tensor PagedKVCache::decode_retained(int64_t layer, const std::vector<Sequence*>& batch,
                                         const paged_cuda::DecodeBatch& d,
                                         const kernels::PagedKvStore& store, const at::Tensor& q,
                                         const at::Tensor& logits, at::Tensor* tails) {
  // Each sequence's lists stay on the device; only their addresses, counts and tails travel
  // (a sequence nothing was evicted from: no list, tail 0), every layer's from this one on in
  // one copy when this layer's differ from what last went up (once per step for the
  // registered policies, whose selections and evictions come after their layer attends). The
  // kernel reads the listed positions, then the tail up to the new token: the held positions
  // in order, which the step's scores are aligned with.
  if (!step_lists_hold(layer, batch)) build_step_lists(layer, batch);
  const auto [lists, counts_tails] =
      ListTable::of_layer(step_lists_.tables, int64_t(batch.size()), layer - step_lists_.first);
  return launch_retained(lists, counts_tails, d, store, q, logits, tails);
}

PagedKVCache::ListedRows PagedKVCache::listed_rows(const Retained& r) {
  if (!r.selected()) return {};
  return {r.count() > 0 ? r.device : UploadedList{}, r.count(), r.tail};
}

void PagedKVCache::build_step_lists(int64_t layer, const std::vector<Sequence*>& batch) {
  const int64_t B = int64_t(batch.size()), layers = num_layers_ - layer;
  ListTable table(B, device_, layers);
  for (int64_t l = layer; l < num_layers_; ++l) {
    std::vector<Retained*> stale;
    std::vector<at::Tensor> hosts;
    for (Sequence* s : batch) {
      Retained& r = s->kept[size_t(l)];
      if (r.count() > 0 && !r.device.buffer.defined()) stale.push_back(&r), hosts.push_back(r.host);
    }
    if (!stale.empty()) {
      const std::vector<UploadedList> up = upload_lists(hosts, device_);
      for (size_t i = 0; i < stale.size(); ++i) stale[i]->device = up[i];
    }
    for (int64_t b = 0; b < B; ++b) {
      const ListedRows row = listed_rows(batch[size_t(b)]->kept[size_t(l)]);
      table.set(b, row.list, row.count, row.tail, l - layer);
    }
  }
  const at::Tensor tables = table.upload(device_);
  step_lists_ = {layer, layers, B, std::move(table), tables, current_stream()};
  ++list_tables_;
}

void* PagedKVCache::current_stream() const {
  return device_.is_cuda() ? current_cuda_stream(device_) : nullptr;
}

bool PagedKVCache::step_lists_hold(int64_t layer, const std::vector<Sequence*>& batch) const {
  const StepLists& s = step_lists_;
  if (!s.host || s.batch != int64_t(batch.size()) || layer < s.first ||
      layer >= s.first + s.layers || s.stream != current_stream())
    return false;
  for (size_t b = 0; b < batch.size(); ++b) {
    const Retained& r = batch[b]->kept[size_t(layer)];
    if (r.count() > 0 && !r.device.buffer.defined()) return false;  // changed, not uploaded
    const ListedRows row = listed_rows(r);
    if (!s.host->holds(int64_t(b), row.list, row.count, row.tail, layer - s.first)) return false;
  }
  return true;
}

at::Tensor PagedKVCache::decode_lists(const std::vector<ListedRows>& rows,
                                      const paged_cuda::DecodeBatch& d,
                                      const kernels::PagedKvStore& store, const at::Tensor& q,
                                      const at::Tensor& logits, at::Tensor* tails) {
  const int64_t B = int64_t(rows.size());
  ListTable table(B, device_);
  for (size_t b = 0; b < rows.size(); ++b)
    table.set(int64_t(b), rows[b].list, rows[b].count, rows[b].tail);
  const auto [lists, counts_tails] = table.on(device_);
  return launch_retained(lists, counts_tails, d, store, q, logits, tails);
}

at::Tensor PagedKVCache::launch_retained(const at::Tensor& lists, const at::Tensor& counts_tails,
                                         const paged_cuda::DecodeBatch& d,
                                         const kernels::PagedKvStore& store, const at::Tensor& q,
                                         const at::Tensor& logits, at::Tensor* tails) {
  const int64_t B = lists.size(0);
  if (tails) *tails = counts_tails.narrow(0, B, B);
  // The kernel reads the kernels' 16-bit q as it is and writes its dtype (no conversions);
  // other queries in fp32.
  const at::ScalarType dtype = q.scalar_type() == input_dtype() ? input_dtype() : at::kFloat;
  return paged_cuda::retained(store, d, num_kv_heads_, lists, counts_tails,
                              q.to(device_, dtype).contiguous(), logits);
}

void PagedKVCache::fill_window_scores(const at::Tensor& q, const at::Tensor& k, int64_t row,
                                      int64_t n, RetentionInput& in) {
  if (policy_->needs() != RetentionNeeds::kWindowScores) return;  // positions only
  KVB_CHECK(in.prefill, "retention policy '", policy_->name(),
            "' needs window scores, which exist only at the prefill");
  Stopwatch watch;
  in.window_attention = prefill_window_attention(q.narrow(0, row, n).transpose(0, 1),
                                                 k.narrow(0, row, n).transpose(0, 1),
                                                 std::min(policy_->observation_window(), n));
  retention_s_ += watch.seconds();
}

at::Tensor PagedKVCache::positions_of(const Retained& r, int64_t length) const {
  KVB_CHECK(!r.host_stale, "paged cache: a list evicted on the device was read mid-step");
  const int64_t count = r.count(), held = r.held(length), tail = r.tail;
  at::Tensor out = at::empty({num_kv_heads_, held}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  const int* listed = count > 0 ? r.host.data_ptr<int>() : nullptr;
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    for (int64_t i = 0; i < count; ++i) *o++ = listed[h * count + i];
    for (int64_t t = tail; t < length; ++t) *o++ = t;
  }
  return out;
}

at::Tensor PagedKVCache::policy_positions(const Sequence& s, int64_t layer,
                                          const at::Tensor& slots) const {
  const Retained& r = s.kept[size_t(layer)];
  if (!r.origin.defined() && s.dropped == 0) return slots;
  return logical_positions(s, r, slots.clone());
}

void PagedKVCache::select(Sequence& s, int64_t layer, RetentionInput& in) {
  Stopwatch watch;
  Retained& r = s.kept[size_t(layer)];
  // A span is of positions, which are slots until a compaction (after which a span policy,
  // StreamingLLM's after the prefill, selects nothing more).
  const bool slots_are_positions = s.dropped == 0 && !r.origin.defined();
  if (const std::optional<RetentionSpan> span =
          slots_are_positions ? policy_->span(in) : std::nullopt) {
    s.lists_changed |= keep_span(r, *span, in.length, in.prompt);
    s.evicted = true;
    retention_s_ += watch.seconds();
    return;
  }
  in.positions = policy_positions(s, layer, positions_of(r, in.length - s.dropped));
  double waited = 0;
  const RetentionChoice chosen = choose_retained(*policy_, {&in}, &waited)[0];
  retention_s_ += watch.seconds() - waited;
  waited_s_ += waited;
  apply_choice(s, layer, in, chosen);
  s.scores[size_t(layer)].keep(chosen.where);  // nothing recorded for these policies: a no-op
}

void PagedKVCache::apply_choice(Sequence& s, int64_t layer, const RetentionInput& in,
                                const RetentionChoice& choice) {
  Stopwatch watch;
  Retained& r = s.kept[size_t(layer)];
  // Policies see logical positions (policy_positions) and choose indices of the held tokens,
  // which are the listed slots, then the tail's: after a compaction, slots.
  const int64_t slots = in.length - s.dropped, held = r.held(slots);
  KVB_CHECK(
      choice.host.dim() == 2 && choice.host.size(0) == num_kv_heads_ && choice.host.size(1) <= held,
      "retention policy '", policy_->name(), "' returned a selection of shape ",
      choice.host.sizes(), " for ", num_kv_heads_, " heads holding ", held, " tokens");
  const at::Tensor chosen = choice.host.scalar_type() == at::kLong && choice.host.is_contiguous()
                                ? choice.host
                                : choice.host.to(at::kLong).contiguous();
  // Index i of a head's held tokens is its i-th listed position, then the tail's.
  const int64_t kept = chosen.size(1), count = r.count(), tail = r.tail;
  const int64_t* c = chosen.data_ptr<int64_t>();
  check_choice(c, kept, held);
  const int* listed = count > 0 ? r.host.data_ptr<int>() : nullptr;
  scratch_.resize(size_t(num_kv_heads_ * kept));
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t i = 0; i < kept; ++i) {
      const int64_t at = c[h * kept + i];
      scratch_[size_t(h * kept + i)] = at < count ? listed[h * count + at] : tail + at - count;
    }
  s.lists_changed |= keep_positions(r, scratch_.data(), kept, slots, s.prompt);
  s.evicted = true;
  retention_s_ += watch.seconds();
}

void PagedKVCache::check_choice(const int64_t* chosen, int64_t kept, int64_t held) const {
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t i = 0; i < kept; ++i) {
      const int64_t at = chosen[h * kept + i];
      KVB_CHECK(at >= 0 && at < held && (i == 0 || at > chosen[h * kept + i - 1]),
                "retention policy '", policy_->name(),
                "' returned indices that are not ascending indices of the ", held, " held tokens");
    }
}

bool PagedKVCache::keep_positions(Retained& r, const int64_t* kept, int64_t held, int64_t length,
                                  int64_t prompt, int64_t max_tail) {
  // The tail: the longest run of the newest tokens that every head keeps.
  int64_t run = held;
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    int64_t n = 0;
    while (n < held && kept[h * held + held - 1 - n] == length - 1 - n) ++n;
    run = std::min(run, n);
  }
  // Under a policy dropping its lowest score (H2O, TOVA, ScissorHands), a tail of at most its
  // window keeps the steady state evict_steady serves from the next step on.
  if (const std::optional<int64_t> recent = policy_ ? policy_->drops_lowest(prompt) : std::nullopt)
    run = std::min(run, *recent);
  if (max_tail >= 0) run = std::min(run, max_tail);
  r.tail = length - run;
  const int64_t count = held - run;
  // An unchanged list (StreamingLLM's sinks after every selection): nothing made or uploaded.
  bool same = r.selected() && r.count() == count;
  const int* old = same && count > 0 ? r.host.data_ptr<int>() : nullptr;
  for (int64_t h = 0; same && h < num_kv_heads_; ++h)
    for (int64_t i = 0; same && i < count; ++i) same = old[h * count + i] == kept[h * held + i];
  if (same) return false;
  r.host = at::empty({num_kv_heads_, count}, at::kInt);
  int* list = r.host.data_ptr<int>();
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t i = 0; i < count; ++i) list[h * count + i] = int(kept[h * held + i]);
  r.device = UploadedList{};
  return true;
}

bool PagedKVCache::keep_span(Retained& r, const RetentionSpan& span, int64_t length,
                             int64_t prompt) {
  // Of the tail [tail, length): [tail, prefix) and [newest, length), one run when they meet.
  const int64_t tail = r.tail, count = r.count();
  const int64_t newest = std::min(length, std::max(tail, span.newest));
  const int* listed = count > 0 ? r.host.data_ptr<int>() : nullptr;
  // The steady state (StreamingLLM's window sliding on past its sinks, at every decode step
  // of every layer and sequence): the list lies below the prefix and the tail already starts
  // past it, so only the tail moves. What the general path below would find (the same list,
  // the tail at `newest`) without building and comparing kv_heads x held positions. Not when
  // a head's last listed position adjoins the new tail (the general path folds it in).
  if (r.selected() && tail >= span.prefix) {
    bool only_tail = true;
    for (int64_t h = 0; only_tail && h < num_kv_heads_ && count > 0; ++h) {
      const int64_t last = listed[h * count + count - 1];
      only_tail = last < span.prefix && last + 1 < newest;
    }
    if (only_tail) {
      r.tail = newest;
      return false;
    }
  }
  const int64_t prefix_end = std::max(tail, std::min(span.prefix, newest));
  // Each head's listed positions the span covers, then the tail's prefix part, then the tail.
  int64_t kept = -1;
  scratch_.clear();
  for (int64_t h = 0; h < num_kv_heads_; ++h) {
    const size_t before = scratch_.size();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t p = listed[h * count + i];
      if (p < span.prefix || p >= span.newest) scratch_.push_back(p);
    }
    for (int64_t t = tail; t < prefix_end; ++t) scratch_.push_back(t);
    for (int64_t t = newest; t < length; ++t) scratch_.push_back(t);
    const int64_t n = int64_t(scratch_.size() - before);
    KVB_CHECK(kept < 0 || n == kept, "retention policy '", policy_->name(),
              "': its span keeps different numbers of tokens in different heads");
    kept = n;
  }
  return keep_positions(r, scratch_.data(), kept, length, prompt);
}
kernels::SteadyRule steady_rule(const RetentionPolicy& policy) {
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      return kernels::SteadyRule::kSummed;
    case RetentionNeeds::kLastQueryScores:
      return kernels::SteadyRule::kNewest;
    default:
      return kernels::SteadyRule::kLowCounts;
  }
}

SteadyGroups PagedKVCache::steady_served(int64_t layer, const std::vector<Sequence*>& batch,
                                         const std::vector<RetentionInput>& inputs,
                                         const std::vector<int64_t>& slots,
                                         const std::vector<bool>& evict_after,
                                         int64_t query_heads) const {
  SteadyGroups served;
  // (A layer too wide for the kernel's blocks evicts by select().)
  if (!kernels::steady_evict_fits(steady_rule(*policy_), int(num_kv_heads_),
                                  int(query_heads / num_kv_heads_)))
    return served;
  // Budget + 1 held, the tail its `recent` newest and one more, the records covering the
  // others, the lists on the device; one launch per list length and held count.
  for (size_t b = 0; b < batch.size(); ++b) {
    if (!evict_after[b] || inputs[b].prefill) continue;
    const std::optional<int64_t> recent = policy_->drops_lowest(inputs[b].prompt);
    if (!recent) continue;
    const Retained& r = batch[b]->kept[size_t(layer)];
    const int64_t held = r.held(slots[b]);
    if (held != policy_->budget(inputs[b]) + 1 || !r.selected() ||
        r.count() != held - *recent - 1 ||
        !batch[b]->scores[size_t(layer)].steady_ready(*policy_, held) ||
        (r.count() > 0 && !r.device.buffer.defined()))
      continue;
    served.add(b, r.count(), held);
  }
  return served;
}

at::Tensor PagedKVCache::joined_lists(int64_t layer, const std::vector<Sequence*>& batch,
                                      const std::vector<size_t>& served, int64_t count) const {
  std::vector<UploadedList> lists;
  for (const size_t b : served) lists.push_back(batch[b]->kept[size_t(layer)].device);
  return join_lists(lists, num_kv_heads_ * count);
}

std::vector<int> PagedKVCache::steady_steps(int64_t layer, const std::vector<Sequence*>& batch,
                                            const std::vector<size_t>& served, int window) const {
  std::vector<int> steps;
  for (const size_t b : served) steps.push_back(int(b));
  for (const size_t b : served) {  // ScissorHands' ring column is (tail + this) mod window
    const int64_t ahead = batch[b]->length - batch[b]->kept[size_t(layer)].tail;
    steps.push_back(window > 0 ? int((ahead % window + window) % window) : 0);
  }
  return steps;
}

void PagedKVCache::evict_steady(int64_t layer, const std::vector<Sequence*>& batch,
                                const std::vector<size_t>& served, size_t group,
                                const std::vector<int64_t>& slots, const at::Tensor& logits,
                                const at::Tensor& tails, std::vector<bool>& evict_after) {
  Stopwatch watch;
  const int64_t H = num_kv_heads_, E = int64_t(served.size());
  const Retained& first = batch[served[0]]->kept[size_t(layer)];
  SteadyEviction e;
  e.policy = policy_.get(), e.logits = logits, e.tails = tails, e.kv_heads = H;
  e.held = first.held(slots[served[0]]), e.count = first.count();
  for (const size_t b : served) e.records.push_back(&batch[b]->scores[size_t(layer)]);
  KVB_CHECK(tails.defined() && tails.numel() == int64_t(batch.size()),
            "paged cache: the steady state needs the step's tails, one per sequence");
  const int window = steady_rule(*policy_) == kernels::SteadyRule::kLowCounts
                         ? int(policy_->observation_window())
                         : 0;
  e.steps =
      steady_.steps(layer, group, steady_steps(layer, batch, served, window), logits.device());
  if (e.count > 0) e.lists = joined_lists(layer, batch, served, e.count);
  // Scores then dropped indices, both floats' size (no allocation per layer).
  e.workspace = steady_.workspace(E * H * (e.held + 1), logits.device());
  const at::Tensor lists_out = evict_steady_records(e);
  const int64_t count = e.count;
  for (int64_t j = 0; j < E; ++j) {
    Sequence& s = *batch[served[size_t(j)]];
    Retained& r = s.kept[size_t(layer)];
    if (count > 0) r.device = {lists_out, j * H * count};
    r.tail += 1;
    r.host_stale = count > 0;
    s.lists_changed = s.evicted = true;
    evict_after[served[size_t(j)]] = false;
  }
  retention_s_ += watch.seconds();
}

void PagedKVCache::refresh_lists(const std::vector<Sequence*>& seqs, int64_t layer) {
  // The stale lists, runs of them that lie one after another in one buffer (a layer's, as
  // evict_steady writes them) read as one view each.
  std::vector<Retained*> stale;
  struct Run {
    at::Tensor buffer;
    int64_t begin, end;
  };
  std::vector<Run> runs;
  const int64_t from = layer < 0 ? 0 : layer, to = layer < 0 ? num_layers_ : layer + 1;
  for (int64_t l = from; l < to; ++l)
    for (Sequence* s : seqs) {
      Retained& r = s->kept[size_t(l)];
      if (!r.host_stale) continue;
      stale.push_back(&r);
      const int64_t n = r.host.numel();
      if (!runs.empty() && runs.back().buffer.is_same(r.device.buffer) &&
          runs.back().end == r.device.offset)
        runs.back().end += n;
      else
        runs.push_back({r.device.buffer, r.device.offset, r.device.offset + n});
    }
  if (stale.empty()) return;
  Stopwatch watch;
  std::vector<at::Tensor> views;
  for (const Run& run : runs)
    views.push_back(run.buffer.view({-1}).narrow(0, run.begin, run.end - run.begin));
  const at::Tensor lists = at::cat(views);
  const double waited = device_.is_cuda() ? wait_for_device(device_) : 0.0;  // the queued layers
  // One copy back; each host list a view of it (lists are replaced, never written in place).
  const auto all = std::make_shared<at::Tensor>(lists.to(at::kCPU).contiguous());
  int* next = all->data_ptr<int>();
  for (Retained* r : stale) {
    const std::vector<int64_t> shape = r->host.sizes().vec();
    r->host = at::from_blob(
        next, shape, [all](void*) {}, at::TensorOptions().dtype(at::kInt));
    next += r->host.numel();
    r->host_stale = false;
  }
  retention_s_ += watch.seconds() - waited;
  waited_s_ += waited;
}

bool PagedKVCache::compacts() const {
  // A decode-timing policy over a per-token format either rings (StreamingLLM) or selects by
  // attention (H2O, TOVA, ScissorHands): the latter's prefill choice is compacted too, and
  // its decode choices list slots from then on.
  return paged_compacts(format_, policy_.get());
}

int64_t PagedKVCache::slots_needed(int64_t prompt, int64_t total) const {
  return compacted_slots(format_.page_size, *policy_, num_layers_, prompt, total).slots;
}

void PagedKVCache::compact(int64_t layer, const std::vector<Sequence*>& seqs,
                           const std::vector<int64_t>& lengths,
                           const std::vector<at::Tensor>& kept) {
  const int64_t P = format_.page_size, H = num_kv_heads_;
  // A pool viewed as rows [pages * kv_heads * P, row bytes]: slot t of head h of a sequence is
  // row (page of t * kv_heads + h) * P + t mod P (kernels/kv_format.h: per-token formats keep
  // a token's codes, and its scales in the meta pool, in one row each). Sequences keeping as
  // many tokens go together: their block tables in one upload, their rows in a few operators.
  std::map<int64_t, std::vector<size_t>> by_width;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = *seqs[i];
    const Retained& r = s.kept[size_t(layer)];
    const at::Tensor& c = kept[i];
    KVB_CHECK(s.dropped == 0 && s.length == 0 && !r.selected(),
              "paged cache: only a prefill that selected nothing yet is compacted");
    KVB_CHECK(c.dim() == 2 && c.size(0) == H && c.size(1) <= lengths[i], "retention policy '",
              policy_->name(), "' returned a selection of shape ", c.sizes(), " for ", H,
              " heads holding ", lengths[i], " tokens");
    by_width[c.size(1)].push_back(i);
  }
  std::vector<at::Tensor> from, to;
  for (const auto& [n, group] : by_width) {
    const int64_t G = int64_t(group.size());
    size_t most = 0;
    for (const size_t i : group) most = std::max(most, seqs[i]->pages.size());
    std::vector<int64_t> table(size_t(G) * most, 0);
    for (size_t g = 0; g < group.size(); ++g)
      std::copy(seqs[group[g]]->pages.begin(), seqs[group[g]]->pages.end(),
                table.begin() + int64_t(g * most));
    const at::Tensor pages = upload(at::tensor(table, at::kLong)).view({G, int64_t(most)});
    const at::Tensor heads = at::arange(H, pages.options()).view({1, H, 1});
    std::vector<at::Tensor> parts;  // a choice made on the host goes up from pinned memory
    for (const size_t i : group)
      parts.push_back(kept[i].is_cpu() ? upload(kept[i].to(at::kLong)) : kept[i].to(at::kLong));
    const at::Tensor chosen = at::stack(parts);  // [G, H, n] positions = slots until now
    // Clamped to the table, so that a defective choice (checked at the step's end, after the
    // move: settle_compaction names the policy) cannot index outside it on the device.
    const at::Tensor page_of =
        pages.gather(1, chosen.view({G, H * n}).div(P, "trunc").clamp(0, int64_t(most) - 1));
    from.push_back(
        page_of.view({G, H, n}).mul(H).add(heads).mul(P).add(chosen.remainder(P)).view(-1));
    const at::Tensor slots = at::arange(n, pages.options());
    const at::Tensor slot_pages = pages.index_select(1, slots.div(P, "trunc")).view({G, 1, n});
    to.push_back(slot_pages.mul(H).add(heads).mul(P).add(slots.remainder(P)).view(-1));
    for (size_t g = 0; g < group.size(); ++g) {
      const size_t i = group[g];
      Sequence& s = *seqs[i];
      Retained& r = s.kept[size_t(layer)];
      // Slots [0, n) of every head, the tail empty until the step's end settles the slots.
      r.origin = chosen[int64_t(g)];
      r.host = at::arange(n, at::kInt).expand({H, n}).contiguous();
      r.device = UploadedList{};
      r.tail = lengths[i];
      s.compacting = s.lists_changed = s.evicted = true;
    }
  }
  move_rows(layer, from.size() == 1 ? from[0] : at::cat(from),
            to.size() == 1 ? to[0] : at::cat(to));
}

void PagedKVCache::move_rows(int64_t layer, const at::Tensor& from, const at::Tensor& to) {
  const int64_t P = format_.page_size;
  Layer& pools = layers_[size_t(layer)];
  for (at::Tensor* pool : {&pools.k_data, &pools.v_data, &pools.k_meta, &pools.v_meta}) {
    if (!pool->defined() || pool->numel() == 0) continue;
    KVB_CHECK(pool->dim() == 3 && pool->size(2) % P == 0 && pool->is_contiguous(),
              "paged cache: a pool of shape ", pool->sizes(), " has no rows of ", P, " tokens");
    // Gathered first (index_select copies), so a slot read and a slot written may coincide.
    const at::Tensor rows = pool->view({-1, pool->size(2) / P});
    rows.index_copy_(0, to, rows.index_select(0, from));
  }
}

void PagedKVCache::settle_compactions(const std::vector<Sequence*>& batch) {
  Stopwatch watch;
  double waited = 0;  // for the step's queued work, at the read-back
  // Every compacted layer's choice, in one copy back (the one wait of a compacting prefill).
  std::vector<Retained*> device;
  std::vector<at::Tensor> parts;
  for (Sequence* s : batch)
    if (s->compacting)
      for (Retained& r : s->kept)
        if (r.origin.defined() && !r.origin.is_cpu())
          device.push_back(&r), parts.push_back(r.origin.reshape({-1}));
  if (!parts.empty()) {
    const at::Tensor all = at::cat(parts);
    waited = wait_for_device(all.device());
    const at::Tensor host = all.to(at::kCPU);
    int64_t offset = 0;
    for (Retained* r : device) {
      const int64_t n = r->origin.numel();
      r->origin = host.narrow(0, offset, n).view(r->origin.sizes());
      offset += n;
    }
  }
  for (Sequence* s : batch)
    if (s->compacting) settle_compaction(*s);
  retention_s_ += watch.seconds() - waited;
  waited_s_ += waited;
}

void PagedKVCache::settle_compaction(Sequence& s) {
  s.compacting = false;
  int64_t slots = 0;  // the longest layer's kept tokens (a layer that kept all: every token)
  for (Retained& r : s.kept) {
    if (!r.origin.defined()) {
      slots = s.length;
      continue;
    }
    // What apply_choice checks of other selections before using them: each head's positions
    // ascending, within the prompt (a policy's defect, caught after the move but before any
    // position is reported). Its own copy: not a view keeping the batch's read-back alive.
    r.origin = r.origin.clone(at::MemoryFormat::Contiguous);
    check_choice(r.origin.data_ptr<int64_t>(), r.origin.size(1), s.length);
    slots = std::max(slots, r.origin.size(1));
  }
  for (Retained& r : s.kept)
    if (r.origin.defined()) list_compacted(r, r.origin.size(1), slots, s.prompt);
  s.dropped = s.length - slots;
  const size_t need = size_t((slots + format_.page_size - 1) / format_.page_size);
  for (; s.pages.size() > need; s.pages.pop_back())
    if (s.pages.back() >= 0) free_.push_back(s.pages.back());
}

void PagedKVCache::list_compacted(Retained& r, int64_t held, int64_t slots, int64_t prompt) {
  r.device = UploadedList{};
  // A layer keeping fewer than the longest lists its newest tokens too, so a policy dropping
  // its lowest score would select in full there at every step: only PyramidKV's layers keep
  // different counts, and it selects once.
  if (held < slots) {  // its slots listed, then the tokens to come
    r.host = at::arange(held, at::kInt).expand({num_kv_heads_, held}).contiguous();
    r.tail = slots;
  } else if (policy_->drops_lowest(prompt)) {
    // A policy dropping its lowest score at every decode step (H2O, TOVA, ScissorHands) goes
    // on from its steady state: its slots listed but its newest `recent`, which every head
    // keeps (what apply_choice makes of an uncompacted choice).
    scratch_.resize(size_t(num_kv_heads_ * slots));
    for (int64_t h = 0; h < num_kv_heads_; ++h)
      std::iota(scratch_.begin() + h * slots, scratch_.begin() + (h + 1) * slots, int64_t{0});
    keep_positions(r, scratch_.data(), slots, slots, prompt);
  } else {
    r.host = at::Tensor(), r.tail = 0;  // every slot: the dense kernel
  }
}

bool PagedKVCache::recompaction_due(const Sequence& s, int64_t* slots) const {
  if (s.compacting || s.kept.empty()) return false;
  int64_t most = 0;
  for (const Retained& r : s.kept) {
    if (!r.selected() || r.host_stale) return false;  // a layer holding every slot, or mid-step
    most = std::max(most, r.held(stored(s)));
  }
  *slots = most;
  // Rows move once the slots no head keeps fill a page or an eighth of what is kept: at most
  // one move of the kept rows per `page_size` decode steps, memory within max(page, 12.5%).
  return stored(s) - most >= recompaction_slack(format_.page_size, most);
}

void PagedKVCache::recompact(const std::vector<Sequence*>& batch) {
  if (!compacts() || policy_->timing() != EvictionTiming::kDecode) return;
  const int64_t P = format_.page_size, H = num_kv_heads_;
  std::vector<std::pair<Sequence*, int64_t>> due;  // and the slots it keeps
  for (Sequence* s : batch)
    if (int64_t slots = 0; recompaction_due(*s, &slots)) due.emplace_back(s, slots);
  if (due.empty()) return;
  Stopwatch watch;
  // Per layer, the pool rows that move (from, to) of every sequence due, in one upload.
  std::vector<std::vector<int64_t>> from(static_cast<size_t>(num_layers_)),
      to(static_cast<size_t>(num_layers_));
  for (auto& [s, slots] : due) {
    // Slots [0, slots) go to the first pages still held (eviction may have freed some below):
    // a head keeping `slots` tokens has them in at least that many pages' worth.
    std::vector<int> pages;
    for (const int page : s->pages)
      if (page >= 0) pages.push_back(page);
    const size_t need = size_t((slots + P - 1) / P);
    KVB_CHECK(pages.size() >= need, "paged cache: ", slots, " kept slots in ", pages.size(),
              " pages");
    for (int64_t l = 0; l < num_layers_; ++l) {
      Retained& r = s->kept[size_t(l)];
      const at::Tensor held = positions_of(r, stored(*s));  // [H, n] ascending slots
      const int64_t n = held.size(1);
      const int64_t* at = held.data_ptr<int64_t>();
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < n; ++i) {
          const int64_t slot = at[h * n + i];
          if (slot == i && s->pages[size_t(slot / P)] == pages[size_t(i / P)]) continue;
          from[size_t(l)].push_back((s->pages[size_t(slot / P)] * H + h) * P + slot % P);
          to[size_t(l)].push_back((pages[size_t(i / P)] * H + h) * P + i % P);
        }
      r.origin = logical_positions(*s, r, held.clone());  // read before `dropped` changes
    }
    for (size_t i = need; i < pages.size(); ++i) free_.push_back(pages[i]);
    pages.resize(need);
    s->pages = std::move(pages);
  }
  std::vector<int64_t> all;
  for (int64_t l = 0; l < num_layers_; ++l)
    all.insert(all.end(), from[size_t(l)].begin(), from[size_t(l)].end());
  for (int64_t l = 0; l < num_layers_; ++l)
    all.insert(all.end(), to[size_t(l)].begin(), to[size_t(l)].end());
  const at::Tensor up = upload(at::tensor(all, at::kLong));
  const int64_t half = int64_t(all.size() / 2);
  for (int64_t l = 0, offset = 0; l < num_layers_; ++l) {
    const int64_t n = int64_t(from[size_t(l)].size());
    if (n > 0) move_rows(l, up.narrow(0, offset, n), up.narrow(0, half + offset, n));
    offset += n;
  }
  for (auto& [s, slots] : due) {
    for (Retained& r : s->kept) list_compacted(r, r.origin.size(1), slots, s->prompt);
    s->dropped = s->length - slots;
    s->lists_changed = true, s->looked_below = 0;
  }
  retention_s_ += watch.seconds();
}

void PagedKVCache::free_evicted_pages(Sequence& s) {
  // A list evicted on the device is not yet on the host: judged once it is (refresh_lists).
  for (const Retained& r : s.kept)
    if (r.host_stale) return;
  s.evicted = false;
  const int P = format_.page_size, T = int(stored(s));
  int64_t settled = T / P;  // pages no later append writes
  if (kernels::is_kivi(format_.format))
    settled = std::min(kernels::append::key_pages_end(T, format_.residual),
                       kernels::append::value_pages_end(T, format_.residual)) /
              P;
  if (settled <= 0) return;
  // Every page from the lowest tail's on is held (by that layer's tail), so only pages below
  // `below` can be free, and only those no list names. With the lists unchanged and `below`
  // not past where the last look reached, nothing new can be free: a StreamingLLM step moves
  // its tails within a page 15 times out of 16, and the look costs every listed position.
  int64_t below = settled;
  for (const Retained& r : s.kept) {
    if (!r.selected()) return;  // a layer that still holds every token
    below = std::min(below, r.tail / P);
  }
  if (!s.lists_changed && below <= s.looked_below) return;
  s.lists_changed = false, s.looked_below = below;
  std::vector<bool> used(size_t(settled), false);
  for (const Retained& r : s.kept) {
    const int* p = r.count() > 0 ? r.host.data_ptr<int>() : nullptr;
    for (int64_t i = 0; i < r.host.numel(); ++i)
      if (p[i] / P < settled) used[size_t(p[i] / P)] = true;
    for (int64_t page = r.tail / P; page < settled; ++page) used[size_t(page)] = true;
  }
  for (int64_t page = 0; page < settled; ++page)
    if (!used[size_t(page)] && s.pages[size_t(page)] >= 0) {
      free_.push_back(s.pages[size_t(page)]);
      s.pages[size_t(page)] = -1;
    }
}

AttentionRecord::SummedFn PagedKVCache::summed_kernels(const at::Tensor& q) const {
  // The kernels read 16-bit q and keys. Where the pages store q's own dtype (fp16 with fp16
  // q, bf16 with bf16) those are the values the fp32 formula reads; other keys (code times
  // scale) split in two fp16 parts for fp16 q. Either way the sums agree with the formula's
  // up to the order of addition, so H2O keeps what it keeps with the reference cache. Other
  // queries (fp32; bf16 over quantized pages) take the formula.
  if (!kernel_path_) return nullptr;
  const at::ScalarType t = q.scalar_type();
  if ((format_.format == kernels::KvFormat::kFp16 && t == at::kHalf) ||
      (format_.format == kernels::KvFormat::kBf16 && t == at::kBFloat16))
    return &paged_cuda::summed_attention;
  return t == at::kHalf ? &paged_cuda::summed_attention_split : nullptr;
}

void PagedKVCache::record_scores(Sequence& s, int64_t layer, const at::Tensor& q, int64_t row,
                                 int64_t n, int64_t held, const kernels::PagedKvStore& store,
                                 const at::Tensor& table_row, at::Tensor positions, at::Tensor keys,
                                 at::Tensor& newest) {
  // The queries' logical position (ScissorHands' window column; a block's causal mask), and
  // the held tokens' slots.
  const int64_t start = s.length, heads = q.size(1), slots = stored(s) + n;
  if (!positions.defined() && (n > 1 || !keys.defined()))
    positions = positions_of(s.kept[size_t(layer)], slots);
  if (!keys.defined()) keys = rows_at(store, s, table_row, positions, slots, false).keys;
  AttentionRecord& record = s.scores[size_t(layer)];
  // A block's causal mask compares logical positions (slots are not, after a compaction).
  if (n > 1)
    return record.add_block(*policy_, q.narrow(0, row, n).transpose(0, 1), keys,
                            policy_positions(s, layer, positions), start, newest,
                            summed_kernels(q));
  // One decode query (at position `start`), which sees every held token: the product over
  // the pages' keys (the kernel path hands its scores to add_scores_batch instead).
  const at::Tensor scores =
      at::bmm(
          q[row].to(keys.device(), at::kFloat).reshape({num_kv_heads_, heads / num_kv_heads_, -1}),
          keys.transpose(1, 2))
          .mul_(1.0 / std::sqrt(double(head_dim_)))
          .view({heads, held});
  record.add_scores(*policy_, scores, num_kv_heads_, start, newest);
}

PagedKVCache::Rows PagedKVCache::rows_at(const kernels::PagedKvStore& store, const Sequence& s,
                                         const at::Tensor& table_row, const at::Tensor& positions,
                                         int64_t tokens, bool values) const {
  if (!kernel_path_)
    return {decode_at(store, s, true, positions, tokens),
            values ? decode_at(store, s, false, positions, tokens) : at::Tensor()};
  // The dequantizer writes keys and values of every token; the positions are gathered.
  const auto [k, v] =
      paged_cuda::dequantize(store, table_row, num_kv_heads_, head_dim_, s.slot, tokens);
  // Ascending positions below `tokens`, `tokens` of them, are every token in order (a
  // prefill, or a layer nothing was evicted from yet): no gather, and no positions to upload.
  if (positions.size(1) == tokens) return {k, values ? v : at::Tensor()};
  // From pinned memory: a pageable copy would wait for the layer's queued work (once per
  // sequence and layer of a prefill under a policy).
  const at::Tensor index = upload(positions).unsqueeze(2).expand({-1, -1, head_dim_});
  return {k.gather(1, index), values ? v.gather(1, index) : at::Tensor()};
}

at::Tensor PagedKVCache::attend_rows(const Rows& rows, const at::Tensor& qb) const {
  const double scale = 1.0 / std::sqrt(double(head_dim_));
  return paged_block_attention(qb.to(device_, at::kFloat), rows.keys, rows.values, scale);
}

// The layer's pools as the appender and the decoders see them: rings and fp8 scales whole,
// each sequence's at the row of its slot.
kernels::PagedKvStore PagedKVCache::store_of(const Layer& layer) const {
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; };
  kernels::PagedKvStore s;
  s.format = format_.format, s.page_size = format_.page_size, s.residual = format_.residual;
  s.k_data = ptr(layer.k_data), s.v_data = ptr(layer.v_data);
  s.k_meta = ptr(layer.k_meta), s.v_meta = ptr(layer.v_meta);
  s.k_residual = ptr(layer.k_ring), s.v_residual = ptr(layer.v_ring);
  if (layer.k_scale.defined()) {
    s.k_head_scale = layer.k_scale.data_ptr<float>();
    s.v_head_scale = layer.v_scale.data_ptr<float>();
  }
  return s;
}

// [kv_heads, tokens, head_dim] fp32: what the sequence's first `tokens` tokens decode to
// (host pools).
at::Tensor PagedKVCache::decode(const kernels::PagedKvStore& store, const Sequence& s, bool key,
                                int64_t tokens) const {
  at::Tensor out = at::empty({num_kv_heads_, tokens, head_dim_}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t t = 0; t < tokens; ++t)
      kernels::decode_paged_token(store, s.pages.data(), int(num_kv_heads_), int(head_dim_), s.slot,
                                  key, int(h), int(t), int(tokens),
                                  o + (h * tokens + t) * head_dim_);
  return out;
}

at::Tensor PagedKVCache::decode_at(const kernels::PagedKvStore& store, const Sequence& s, bool key,
                                   const at::Tensor& positions, int64_t tokens) const {
  const at::Tensor pos = positions.contiguous();
  const int64_t held = pos.size(1);
  at::Tensor out = at::empty({num_kv_heads_, held, head_dim_}, at::kFloat);
  const int64_t* p = pos.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  for (int64_t h = 0; h < num_kv_heads_; ++h)
    for (int64_t i = 0; i < held; ++i)
      kernels::decode_paged_token(store, s.pages.data(), int(num_kv_heads_), int(head_dim_), s.slot,
                                  key, int(h), int(p[h * held + i]), int(tokens),
                                  o + (h * held + i) * head_dim_);
  return out;
}

StorageBytes PagedKVCache::storage() const {
  const StorageBytes page = paged_page_bytes(format_, head_dim_),
                     reserve = paged_sequence_reserve(format_, head_dim_);
  const uint64_t pages = uint64_t(pages_) - free_.size(), sequences = sequences_.size(),
                 per_head_layer = uint64_t(num_kv_heads_) * uint64_t(num_layers_);
  StorageBytes b;
  b.payload = (pages * page.payload + sequences * reserve.payload) * per_head_layer;
  b.metadata = (pages * page.metadata + sequences * reserve.metadata) * per_head_layer;
  b.padding = padding_bytes();
  for (const auto& [id, s] : sequences_)  // Quest's page bounds of the held pages
    for (const QuestBounds& qb : s.quest)
      b.metadata += uint64_t(2 * qb.pages * num_kv_heads_ * head_dim_) * sizeof(at::Half);
  return b;
}

uint64_t PagedKVCache::padding_bytes() const {
  const int64_t P = format_.page_size, R = format_.residual, D = head_dim_;
  const auto k = kernels::page_bytes(format_.format, true, int(P), int(D)),
             v = kernels::page_bytes(format_.format, false, int(P), int(D));
  const double key_token = double(k.data + k.meta) / double(P),
               value_token = double(v.data + v.meta) / double(P);
  double slots = 0;  // bytes per KV head and layer
  for (const auto& [id, s] : sequences_) {
    const int64_t T = stored(s), pages = (T + P - 1) / P;  // assign_pages()'s pages for T tokens
    if (!kernels::is_kivi(format_.format)) {
      slots += double(pages * P - T) * (key_token + value_token);
      continue;
    }
    // Pages cover T positions, their keys and values filled up to the quantized ends only;
    // each ring holds R rows of which the window fills T - end.
    const int64_t keys = kernels::append::key_pages_end(int(T), int(R)),
                  values = kernels::append::value_pages_end(int(T), int(R));
    slots += double(pages * P - keys) * key_token + double(pages * P - values) * value_token;
    slots += double((R - (T - keys)) + (R - (T - values))) * double(D) * 2.0;
  }
  return uint64_t(std::llround(slots * double(num_kv_heads_) * double(num_layers_)));
}

StorageBytes PagedKVCache::nominal() const {
  const int P = format_.page_size, R = format_.residual, D = int(head_dim_);
  const auto k = kernels::page_bytes(format_.format, true, P, D),
             v = kernels::page_bytes(format_.format, false, P, D);
  const uint64_t heads = uint64_t(num_kv_heads_);
  StorageBytes b;
  for (const auto& [id, s] : sequences_) {
    if (!kernels::is_kivi(format_.format)) {  // per layer: the tokens it retains
      uint64_t held = 0;
      for (int64_t kept : kept_tokens(id)) held += uint64_t(kept);
      b.payload += held * heads * (k.data + v.data) / P / uint64_t(num_layers_);
      b.metadata += held * heads * (k.meta + v.meta) / P / uint64_t(num_layers_);
      continue;
    }
    // KIVI: per layer, the method's groups and window for the tokens it retains (all T
    // before an eviction), as the reference counts its re-quantized kept tokens; the pages
    // still hold every token of a group some head keeps, which `storage` shows.
    for (const int64_t held : kept_tokens(id)) {
      const int64_t key_pages = kernels::append::key_pages_end(int(held), R) / P;
      const int64_t values = kernels::append::value_pages_end(int(held), R);
      b.payload += heads * (uint64_t(key_pages) * k.data + uint64_t(values) * v.data / P);
      b.metadata += heads * (uint64_t(key_pages) * k.meta + uint64_t(values) * v.meta / P);
      b.payload += heads * uint64_t((held - key_pages * P) + (held - values)) * D * 2;  // window
    }
  }
  if (format_.format == KvFormat::kFp8)  // the method counts one scale per layer when it has one
    b.metadata += sequences_.size() * 2 * (format_.fp8_per_head ? heads : 1) * sizeof(float);
  // Per layer so far, except KIVI's, summed over its layers above.
  const uint64_t layers = kernels::is_kivi(format_.format) ? 1 : uint64_t(num_layers_);
  b.payload *= layers;
  b.metadata *= layers;
  if (quest_)  // the page bounds of every layer past the dense ones, as the method counts them
    for (const auto& [id, s] : sequences_)
      b.metadata +=
          uint64_t(num_layers_ - std::min(num_layers_, quest_->dense_layers())) *
          QuestPages::nominal_bytes(s.length, num_kv_heads_, head_dim_, quest_->page_size());
  return b;
}

}  // namespace kvbench
