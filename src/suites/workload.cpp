#include "kvbench/suites/workload.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/codec.h"
#include "kvbench/kv/latent_pages_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/quest_policy.h"
#include "kvbench/model/transformer.h"
#include "kvbench/suites/capacity.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/preparation.h"

namespace kvbench {

std::vector<std::vector<int64_t>> synthetic_prompts(int64_t count, int64_t tokens, int64_t vocab,
                                                    uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(count));
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(tokens));
    for (auto& id : p) id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
  }
  return prompts;
}

void require_device_support(const CellContext& ctx, const std::string& suite) {
  KVB_CHECK(ctx.spec.device == "cpu" || ctx.spec.attention == "paged", suite, ": device '",
            ctx.spec.device,
            "' needs attention 'paged' (on a GPU the KV cache is paged and attention runs in "
            "the paged kernels)");
}

std::unique_ptr<KVCache> make_cell_cache(const CellContext& ctx) {
  require_device_support(
      ctx, ctx.cell_id.substr(0, ctx.cell_id.find('.')));  // "<suite>.<method>.<hash>"
  const ModelConfig& c = ctx.model.get().config();
  std::shared_ptr<const Codec> codec = make_codec(ctx.method, ctx.model.kv_dtype());
  // Codecs fitted to the model are prepared here (once per run), before anything is timed.
  if (codec->needs_preparation()) codec = ctx.model.prepared_codec(ctx.method).codec;
  if (ctx.spec.attention == "paged")
    return make_paged_cache(ctx.method, codec, c.num_layers, c.num_kv_heads, c.head_dim,
                            ctx.model.kv_dtype(), at::Device(ctx.spec.device));
  return make_kv_cache(ctx.method, codec, c.num_layers, c.num_kv_heads, c.head_dim,
                       ctx.model.kv_dtype(), ctx.spec.attention, rope_inverse_frequencies(c));
}

std::unique_ptr<KVCache> make_baseline_cache(const CellContext& ctx) {
  const ModelConfig& c = ctx.model.get().config();
  return make_kv_cache(resolve_method({{"name", "full"}}, "baseline"), c.num_layers, c.num_kv_heads,
                       c.head_dim, ctx.model.kv_dtype(), ctx.spec.attention, at::Tensor(),
                       at::Device(ctx.spec.device));
}

double baseline_bytes_per_token(const CellContext& ctx) {
  const ModelConfig& c = ctx.model.get().config();
  return full_cache_bytes_per_token(c) / sizeof(float) * at::elementSize(ctx.model.kv_dtype());
}

double full_cache_bytes_per_token(const ModelConfig& c) {
  return 2.0 * static_cast<double>(c.num_layers * c.num_kv_heads * c.head_dim) * sizeof(float);
}

namespace {

std::string hex_hash(const std::string& bytes) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(fnv1a64(bytes)));
  return hex;
}

}  // namespace

std::string prompt_hash(const std::vector<int64_t>& tokens) {
  std::string bytes;
  for (int64_t t : tokens) bytes += std::to_string(t) + ",";
  return hex_hash(bytes);
}

std::string prompts_hash(const std::vector<std::vector<int64_t>>& prompts) {
  std::string bytes;
  for (const auto& p : prompts) {
    for (int64_t t : p) bytes += std::to_string(t) + ",";
    bytes += ";";
  }
  return hex_hash(bytes);
}

void check_memory_fits(uint64_t bytes, const std::string& what) {
  const uint64_t available = available_memory_bytes();
  if (available == 0) return;
  if (bytes > available / 10 * 8)
    throw MemoryFitError(detail::concat(what, " needs ", format_bytes(bytes), " but only ",
                                        format_bytes(available), " of memory is available"));
}

void RetentionTimes::add(const GenerationResult& r) {
  prefill_s.push_back(r.prefill_s);
  prefill_retention_s.push_back(r.prefill_retention_s);
  step_s.insert(step_s.end(), r.decode_step_s.begin(), r.decode_step_s.end());
  step_retention_s.insert(step_retention_s.end(), r.decode_step_retention_s.begin(),
                          r.decode_step_retention_s.end());
}

nlohmann::json RetentionTimes::to_json() const {
  auto median_ms = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return (n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) * 1e3;
  };
  auto share = [](const std::vector<double>& part, const std::vector<double>& whole) {
    double p = 0, w = 0;
    for (double x : part) p += x;
    for (double x : whole) w += x;
    return w > 0 ? p / w : 0.0;
  };
  return {{"prefill_ms", median_ms(prefill_retention_s)},
          {"decode_step_ms", median_ms(step_retention_s)},
          {"prefill_share", share(prefill_retention_s, prefill_s)},
          {"decode_share", share(step_retention_s, step_s)}};
}

nlohmann::json kv_memory_json(const GenerationResult& r, const ModelConfig& c) {
  const double tokens = static_cast<double>(std::max<int64_t>(r.peak_tokens, 1));
  const double values = tokens * 2.0 * c.num_layers * c.num_kv_heads * c.head_dim;
  const double fp16 = values * 2.0;
  // The rates describe the format: whole pages' empty slots (paged attention) are memory the
  // cache occupied, counted in `measured.total`, but no token's bytes.
  const double held = static_cast<double>(r.peak_storage.held());
  const double nominal = static_cast<double>(r.peak_nominal.total());
  // Kept tokens per KV head per layer (all KV heads of a layer keep the same count).
  int64_t kept_sum = 0, kept_min = 0, kept_max = 0;
  for (size_t l = 0; l < r.peak_kept_tokens.size(); ++l) {
    const int64_t k = r.peak_kept_tokens[l];
    kept_sum += k;
    kept_min = l == 0 ? k : std::min(kept_min, k);
    kept_max = std::max(kept_max, k);
  }
  const double layers = static_cast<double>(std::max<size_t>(r.peak_kept_tokens.size(), 1));
  const double kept_values =
      static_cast<double>(std::max<int64_t>(kept_sum, 1)) * 2.0 * c.num_kv_heads * c.head_dim;
  return {{"tokens", r.peak_tokens},
          {"kept_tokens",
           {{"per_layer", r.peak_kept_tokens},
            {"min", kept_min},
            {"max", kept_max},
            {"mean", static_cast<double>(kept_sum) / layers},
            {"fraction", static_cast<double>(kept_sum) / layers / tokens}}},
          {"bits_per_kept_value", held * 8.0 / kept_values},
          {"measured", r.peak_storage.to_json()},
          // What the cache's storage occupied: free pool pages, spare buffer rows included.
          {"allocated_bytes", r.peak_allocated_bytes},
          // The policy's positions, scores and histories: not K/V state, not in `measured`.
          {"retention_bytes", r.peak_retention_bytes},
          {"nominal", r.peak_nominal.to_json()},
          {"bytes_per_token", held / tokens},
          {"bits_per_value", held * 8.0 / values},
          {"ratio_to_fp16", held / fp16},
          // Beyond rounding (1%) and allocation units (whole pages, a ring's empty rows): the
          // stored tensors do not match what the method claims.
          {"nominal_mismatch", std::abs(held - nominal) > 0.01 * std::max(nominal, 1.0)}};
}

std::string nominal_mismatch_warning(const nlohmann::json& m) {
  if (!m.is_object() || !m.value("nominal_mismatch", false) || !m.contains("measured") ||
      !m.contains("nominal"))
    return "";
  const double padding = m["measured"].value("padding", 0.0);
  const double measured = m["measured"].value("total", 0.0) - padding,
               nominal = m["nominal"].value("total", 0.0);
  std::string w = "measured KV bytes differ from the method's formula by more than 1%: " +
                  format_bytes(measured) + " held" +
                  (padding > 0 ? " (not counting " + format_bytes(padding) + " of empty slots)"
                               : std::string()) +
                  ", " + format_bytes(nominal) + " by the formula (" +
                  (nominal > 0 ? (measured >= nominal ? "+" : "") +
                                     format_fixed(100.0 * (measured - nominal) / nominal, 1) + "%"
                               : std::string("no formula bytes")) +
                  ")";
  const double kept = m.contains("kept_tokens") ? m["kept_tokens"].value("fraction", 1.0) : 1.0;
  if (kept < 1.0 && measured > nominal)
    w += "; the formula counts kept tokens, while a page holding an evicted token is freed only "
         "once no layer and no KV head keeps a token in it, and a policy evicting during decode "
         "takes a new slot per token until its slots are compacted again (and latent rows "
         "padded to whole 32-value blocks count as held)";
  return w;
}

std::string nothing_evicted_warning(const nlohmann::json& method, const nlohmann::json& m) {
  if (!m.is_object() || !m.contains("kept_tokens") || !m.contains("tokens")) return "";
  if (m["kept_tokens"].value("fraction", 0.0) < 1.0) return "";
  return nothing_evicted_warning(method);
}

bool kept_every_token(const GenerationResult& r) {
  return std::all_of(r.peak_kept_tokens.begin(), r.peak_kept_tokens.end(),
                     [&](int64_t kept) { return kept >= r.peak_tokens; });
}

std::string nothing_evicted_warning(const nlohmann::json& method) {
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(method);
  if (!policy || policy->needs() == RetentionNeeds::kQueryPages ||
      dynamic_cast<const FullRetention*>(policy.get()) != nullptr)
    return "";
  return "retention policy '" + policy->name() +
         "' evicted nothing: every layer kept every token at the peak (its budget covers these "
         "prompts), so this cell measures its codec alone; use prompts longer than the budget to "
         "measure eviction";
}

std::string kv_memory_note(const nlohmann::json& m) {
  if (!m.is_object() || !m.contains("measured") || !m.contains("tokens")) return "";
  std::string note = "KV cache at peak: " + format_bytes(m["measured"].value("total", 0.0)) +
                     " for " + std::to_string(m["tokens"].get<int64_t>()) + " tokens (" +
                     format_fixed(m.value("bits_per_value", 0.0), 2) + " bits/value, " +
                     format_fixed(m.value("ratio_to_fp16", 0.0), 2) + "x fp16";
  const double kept = m.contains("kept_tokens") ? m["kept_tokens"].value("fraction", 1.0) : 1.0;
  if (kept < 1.0) note += ", " + format_fixed(kept * 100.0, 1) + "% of tokens kept";
  // Whole pages (and a KIVI ring's empty rows) of short prompts can be much of the total: say how
  // much, as the rates leave them out.
  const double padding = m["measured"].value("padding", 0.0),
               total = m["measured"].value("total", 0.0);
  if (total > 0 && padding > 0.05 * total)
    note += ", of which " + format_bytes(padding) + " empty slots, not in the bits/value";
  // Storage grown by doubling holds more than its tokens need: say what the device paid.
  const double allocated = m.value("allocated_bytes", 0.0);
  if (allocated > 1.1 * total)
    note += "; its storage occupied " + format_bytes(allocated) +
            " with free pool pages and spare rows";
  return note + ")";
}

uint64_t model_weight_bytes(const ModelConfig& config, at::ScalarType dtype) {
  uint64_t elements = 0;
  for (const auto& [name, shape] : Transformer::expected_tensors(config)) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    elements += n;
  }
  return elements * at::elementSize(dtype);
}

namespace {
// The memory of the GPU `device` names (the first when it names none); 0 when unknown.
uint64_t gpu_memory_bytes(const at::Device& device) {
  const CudaInfo cuda = query_cuda();
  const size_t index = device.has_index() ? device.index() : 0;
  return index < cuda.devices.size() ? cuda.devices[index].memory_bytes : 0;
}
}  // namespace

void check_fits_on(const ModelPlacement& placement, uint64_t bytes, const std::string& what) {
  if (placement.device.is_cpu()) return check_memory_fits(bytes, what);
  const uint64_t total = gpu_memory_bytes(placement.device);
  if (total == 0) return;
  if (bytes > total / 10 * 8)
    throw MemoryFitError(detail::concat(what, " needs ", format_bytes(bytes), " but ",
                                        placement.device.str(), " has ", format_bytes(total)));
}

uint64_t kv_budget_base_bytes(const at::Device& device, uint64_t weight_bytes, bool once_per_run) {
  if (device.is_cpu()) {
    if (!once_per_run) return available_memory_bytes();
    // Per model (its weight bytes): a grid's runs in one process may load another.
    static std::mutex m;
    static std::map<uint64_t, uint64_t> first;  // absent or 0 (unknown): read (again)
    std::lock_guard<std::mutex> lock(m);
    uint64_t& reading = first[weight_bytes];
    if (reading == 0) reading = available_memory_bytes();
    return reading;
  }
  const uint64_t total = gpu_memory_bytes(device);
  return total > weight_bytes ? total - weight_bytes : 0;
}

namespace {
// An estimate in bytes, at most 2^60: past any machine, with room below 2^64 for the few terms
// callers add to it (the weights, shared state).
uint64_t clamped_bytes(double bytes) {
  return bytes >= 0x1p60 ? uint64_t{1} << 60 : static_cast<uint64_t>(bytes);
}
}  // namespace

uint64_t generation_bytes(const ModelConfig& c, double kv_bytes_per_token, int64_t batch,
                          int64_t prompt, int64_t new_tokens, at::ScalarType compute_dtype,
                          int64_t prefill_group) {
  // In double: at the config caps and the suites' largest batches and contexts the product
  // passes 2^64, and the sum is clamped (any such request fails the fit check all the same).
  const double b = static_cast<double>(batch), p = static_cast<double>(prompt);
  const double total = p + static_cast<double>(new_tokens);
  const double kv = b * total * kv_bytes_per_token;
  // The packed prefill's hidden states, norms, q/k/v/o and MLP intermediates in the compute
  // dtype; fp32 logits for each sequence's last token only (the suites never ask for all).
  const double width = 6.0 * static_cast<double>(c.hidden_size) +
                       4.0 * static_cast<double>(c.intermediate_size) +
                       4.0 * static_cast<double>(c.num_heads * c.head_dim);
  const double entering = prefill_group > 0 ? std::min(b, static_cast<double>(prefill_group)) : b;
  const double activations =
      entering * p * width * static_cast<double>(at::elementSize(compute_dtype)) +
      b * static_cast<double>(c.vocab_size) * sizeof(float);
  const double scores = 3.0 * static_cast<double>(c.num_heads) * p * p * sizeof(float);
  const double kv_fp32 =
      2.0 * static_cast<double>(c.num_kv_heads * c.head_dim) * total * sizeof(float);
  return clamped_bytes(kv + activations + scores + kv_fp32);
}

double method_kv_bytes_per_token(const nlohmann::json& method, const ModelConfig& c,
                                 at::ScalarType dtype, bool paged, bool kernel_path,
                                 int64_t context) {
  auto codec = make_codec(method, dtype);
  // Building the stores checks the method against the model (e.g. group vs head_dim); codecs
  // that need preparation check it in their formula (their stores need the fitted bases), and
  // their calibration here, before any cell loads the weights.
  check_calibration_fits(codec->calibration(), c);
  if (!codec->needs_preparation()) {
    codec->make_key_store(c.num_kv_heads, c.head_dim);
    codec->make_value_store(c.num_kv_heads, c.head_dim);
  }
  // One token: formats with an exact window (KIVI) are at their most expensive per token.
  const double formula =
      static_cast<double>(codec->nominal_bytes(1, c.num_kv_heads, c.head_dim).total()) *
      static_cast<double>(c.num_layers) *
      (paged ? paged_storage_factor(*codec, c.head_dim, kernel_path) : 1.0);
  if (!paged || context <= 0) return formula;
  const CacheLayout layout = CacheLayout::for_method(method, dtype, c.head_dim, true, kernel_path);
  if (layout.exact_buffer > 0)  // GEAR: each sequence's whole buffers, at most one buffer idle
    return formula + static_cast<double>(layout.idle_buffer_bytes(0, c.num_kv_heads)) *
                         static_cast<double>(c.num_layers) / static_cast<double>(context);
  if (layout.latent_page > 0)  // latent rows in whole pages of slots
    return formula *
           static_cast<double>((context + layout.latent_page - 1) / layout.latent_page *
                               layout.latent_page) /
           static_cast<double>(context);
  const PagedSequenceBytes& pages = layout.pages;
  if (pages.page == 0) return formula;
  return std::max(formula, static_cast<double>(pages.of(context)) *
                               static_cast<double>(c.num_kv_heads * c.num_layers) /
                               static_cast<double>(context));
}

uint64_t method_shared_bytes(const nlohmann::json& method, const ModelConfig& c,
                             at::ScalarType dtype, bool paged, bool kernel_path) {
  const std::shared_ptr<const Codec> codec = make_codec(method, dtype);
  const auto* lowrank = dynamic_cast<const LowRankCodec*>(codec.get());
  if (lowrank == nullptr) return 0;
  const uint64_t heads_layers = uint64_t(c.num_layers * c.num_kv_heads);
  return lowrank->shared_nominal_for(c.num_layers, c.num_kv_heads, c.head_dim).total() +
         (paged ? heads_layers * latent_bases_bytes(*codec, c.head_dim, dtype, kernel_path) : 0);
}

double EstimateContext::kv_bytes_per_token_at(int64_t context) const {
  if (!paged || model == nullptr) return kv_bytes_per_token;
  return std::max(kv_bytes_per_token,
                  method_kv_bytes_per_token(method, *model, kv_dtype, true,
                                            CacheLayout::kernel_path(gpu), context));
}

void check_generation_fits(const CellContext& ctx, int64_t batch, int64_t prompt,
                           int64_t new_tokens, const std::string& suite, int64_t prefill_group,
                           double baseline_bytes_per_token) {
  require_device_support(ctx, suite);
  const ModelConfig& c = ctx.model.get().config();
  auto warn_once = [&](const std::string& w) {
    if (ctx.warnings != nullptr &&
        std::find(ctx.warnings->begin(), ctx.warnings->end(), w) == ctx.warnings->end())
      ctx.warnings->push_back(w);
  };
  // Past the trained context a real model's outputs (and so accuracy, fidelity and output
  // lengths) mean little; speed is still measured. The last new token is sampled, never fed:
  // the positions are 0 .. prompt + new_tokens - 2.
  if (c.max_position_embeddings > 0 && prompt + new_tokens - 1 > c.max_position_embeddings)
    warn_once(suite + ": " + std::to_string(prompt) + " prompt + " + std::to_string(new_tokens) +
              " new tokens take positions past the model's max_position_embeddings (" +
              std::to_string(c.max_position_embeddings) + ")");
  // kvbench attends every token: past a sliding window, the full cache's memory, speed and
  // outputs are full attention's, not the served model's (Mistral-7B: 4096), random weights or
  // not.
  if (c.sliding_window && prompt + new_tokens - 1 > *c.sliding_window)
    warn_once(suite + ": " + std::to_string(prompt) + " prompt + " + std::to_string(new_tokens) +
              " new tokens pass the model's sliding_window (" + std::to_string(*c.sliding_window) +
              "), which kvbench does not apply: the full cache holds and reads every token, as "
              "full attention would, not the window the model is served with");
  // Quest never evicts, so "evicted nothing" cannot tell; dense layers covering the model can.
  const auto policy = make_policy(ctx.method);
  if (const auto* quest = dynamic_cast<const QuestPolicy*>(policy.get());
      quest != nullptr && quest->dense_layers() >= c.num_layers)
    warn_once("quest: dense_layers " + std::to_string(quest->dense_layers()) +
              " covers all of the model's " + std::to_string(c.num_layers) +
              " layers: every layer reads every token, so this cell measures the full cache");
  const double per_token =
      baseline_bytes_per_token +
      method_kv_bytes_per_token(ctx.method, c, ctx.model.kv_dtype(), ctx.spec.attention == "paged",
                                CacheLayout::kernel_path(ctx.spec.device == "cuda"),
                                prompt + new_tokens);
  const ModelPlacement placement = ctx.model.placement();
  const uint64_t bytes =
      generation_bytes(c, per_token, batch, prompt, new_tokens, placement.dtype, prefill_group);
  const std::string what = suite + ": batch " + std::to_string(batch) + " x " +
                           std::to_string(prompt) + "+" + std::to_string(new_tokens) + " tokens";
  // On the CPU the weights are already out of MemAvailable; a GPU's total holds them too.
  check_fits_on(placement, bytes + (placement.device.is_cpu() ? 0 : ctx.model.get().weight_bytes()),
                what);
}

}  // namespace kvbench
