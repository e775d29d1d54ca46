#include "kvbench/suites/kernels_suite.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "kv_format.h"
#include "kvbench/attention/cpu_attention.h"
#include "kvbench/attention/reference_attention.h"
#include "kvbench/core/error.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/kv/fused_kernels.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/quest_policy.h"
#include "kvbench/model/model_config.h"
#include "kvbench/suites/kernels_gpu.h"

namespace kvbench {
namespace {

using nlohmann::json;

constexpr int64_t kMaxContext = int64_t{1} << 24;
constexpr uint64_t kMinCopyBytes = uint64_t{64} << 20;

struct Shape {
  int64_t batch, kv_heads, group, head_dim, context;
  const Codec* codec;
  // GEAR takes its K/V in one append (fill): the fp32 input, its residual, a channel-major
  // copy and the factors' temporaries, about four fp32 copies of one store's tokens at once.
  uint64_t staging_bytes() const {
    return dynamic_cast<const GearCodec*>(codec) == nullptr
               ? 0
               : 4ull * kv_heads * context * head_dim * sizeof(float);
  }
  // K and V of all sequences by the codec's formula.
  uint64_t kv_bytes() const {
    return static_cast<uint64_t>(batch) * codec->nominal_bytes(context, kv_heads, head_dim).total();
  }
  // q read and the output written, fp32.
  uint64_t io_bytes() const { return 2ull * batch * kv_heads * group * head_dim * sizeof(float); }
};

// Fails the cell with a clear message instead of letting the allocator abort or swap.
void check_fits(uint64_t bytes, const std::string& what) {
  const uint64_t available = available_memory_bytes();
  if (available == 0) return;
  KVB_CHECK(bytes <= available / 10 * 8, "kernels: ", what, " needs ", format_bytes(bytes),
            " but only ", format_bytes(available), " of memory is available");
}

// Times `fn` `repeats` times after `warmup` untimed calls; returns seconds per call.
template <typename Fn>
std::vector<double> time_calls(int warmup, int repeats, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> samples;
  samples.reserve(repeats);
  for (int i = 0; i < repeats; ++i) {
    Stopwatch sw;
    fn();
    samples.push_back(sw.seconds());
  }
  return samples;
}

json copy_bandwidth_record(uint64_t bytes, int warmup, int repeats, uint64_t seed,
                           const std::string& phase) {
  check_fits(2 * bytes, "the copy-bandwidth buffers");
  auto n = static_cast<int64_t>(bytes / sizeof(float));
  at::Tensor src = at::rand({n}, at::detail::createCPUGenerator(seed), at::kFloat);
  at::Tensor dst = at::empty_like(src);
  auto samples = time_calls(warmup, repeats, [&] { dst.copy_(src); });
  Summary s = summarize(samples, seed);
  const uint64_t moved = 2 * bytes;  // read src + write dst
  return {{"kind", "copy_bandwidth"},      {"phase", phase},       {"bytes", bytes},
          {"bytes_moved", moved},          {"samples_s", samples}, {"time_s", to_json(s)},
          {"gbps", moved / s.median / 1e9}};
}

// Random K/V appended in slices, so the fp32 staging never exceeds a few MiB per slice; a store
// whose appends form blocks (GEAR: one block per append, with its own factors) takes one
// append, as a model's prefill gives it, so it stores what its formula counts.
void fill(TokenStore& store, int64_t kv_heads, int64_t tokens, int64_t head_dim, uint64_t seed,
          bool one_append) {
  auto gen = at::detail::createCPUGenerator(seed);
  if (one_append) {
    store.append(at::randn({kv_heads, tokens, head_dim}, gen, at::kFloat));
    return;
  }
  for (int64_t t = 0; t < tokens; t += 4096) {
    const int64_t n = std::min<int64_t>(4096, tokens - t);
    store.append(at::randn({kv_heads, n, head_dim}, gen, at::kFloat));
  }
}

json attention_record(const Shape& sh, AttentionBackend backend, int warmup, int repeats,
                      uint64_t seed, uint64_t llc) {
  // The reference backend also materialises an fp32 copy of K and V every step.
  const uint64_t fp32_copy = backend == AttentionBackend::kReference
                                 ? 2ull * sh.kv_heads * sh.context * sh.head_dim * sizeof(float)
                                 : 0;
  check_fits(sh.kv_bytes() + fp32_copy + sh.staging_bytes(),
             "context " + std::to_string(sh.context) + " x kv_heads " +
                 std::to_string(sh.kv_heads) + " (K and V)");
  std::vector<std::unique_ptr<TokenStore>> keys, values;
  std::vector<at::Tensor> queries;  // [heads, 1, head_dim] per sequence
  auto gen = at::detail::createCPUGenerator(seed);
  StorageBytes stored;
  for (int64_t b = 0; b < sh.batch; ++b) {
    keys.push_back(sh.codec->make_key_store(sh.kv_heads, sh.head_dim));
    values.push_back(sh.codec->make_value_store(sh.kv_heads, sh.head_dim));
    const bool blocks = sh.staging_bytes() > 0;
    fill(*keys.back(), sh.kv_heads, sh.context, sh.head_dim, seed + 2 * b + 1, blocks);
    fill(*values.back(), sh.kv_heads, sh.context, sh.head_dim, seed + 2 * b + 2, blocks);
    stored += keys.back()->bytes();
    stored += values.back()->bytes();
    queries.push_back(at::randn({sh.kv_heads * sh.group, 1, sh.head_dim}, gen, at::kFloat));
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(sh.head_dim));
  at::Tensor out;
  auto samples = time_calls(warmup, repeats, [&] {
    for (int64_t b = 0; b < sh.batch; ++b) {
      out = backend == AttentionBackend::kCpu
                ? cpu_decode_attention(queries[b], *keys[b], *values[b], sh.kv_heads, scale)
                : block_attention_reference(queries[b], keys[b]->dequantize(),
                                            values[b]->dequantize(), scale);
    }
  });
  KVB_CHECK(at::isfinite(out).all().item<bool>(), "kernels: non-finite attention output");
  Summary s = summarize(samples, seed);
  // Bytes any implementation must move per step: the stored K/V (codes and metadata), q in,
  // the output out.
  const uint64_t moved = stored.total() + sh.io_bytes();
  const double llc_multiple = llc ? static_cast<double>(stored.total()) / llc : 0.0;
  return {{"kind", "decode_attention"},
          {"backend", backend == AttentionBackend::kCpu ? "cpu" : "reference"},
          {"format", sh.codec->name()},
          {"format_params", sh.codec->params()},
          {"batch", sh.batch},
          {"kv_heads", sh.kv_heads},
          {"group_size", sh.group},
          {"head_dim", sh.head_dim},
          {"context", sh.context},
          {"working_set_bytes", stored.total()},
          {"nominal_bytes", sh.kv_bytes()},
          {"metadata_bytes", stored.metadata},
          {"llc_multiple", llc_multiple},
          {"bytes_moved", moved},
          {"samples_s", samples},
          {"time_s", to_json(s)},
          {"gbps", moved / s.median / 1e9}};
}

// Whether a policy works during decode (evicts or selects pages every step): what the
// retained-token benchmark times. Policies that act once after the prefill leave decode steps
// that are plain attention over the kept tokens.
bool acts_during_decode(const RetentionPolicy& p) {
  if (dynamic_cast<const QuestPolicy*>(&p)) return true;
  return dynamic_cast<const FullRetention*>(&p) == nullptr &&
         p.timing() == EvictionTiming::kDecode && p.needs() != RetentionNeeds::kWindowScores;
}

// Random q/k/v for `n` tokens of one sequence.
struct Tokens {
  at::Tensor q, k, v;
};
Tokens random_tokens(const Shape& sh, int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return {at::randn({sh.kv_heads * sh.group, n, sh.head_dim}, gen, at::kFloat),
          at::randn({sh.kv_heads, n, sh.head_dim}, gen, at::kFloat),
          at::randn({sh.kv_heads, n, sh.head_dim}, gen, at::kFloat)};
}

// Brings `layer` of a cache to `tokens` tokens. A policy that selects from what attention sees
// gets them through append_and_attend in blocks of 256 (a prefill, then chunks, evicting as it
// goes); the others store them unattended.
void feed(CompressedKVCache& cache, int64_t seq, int64_t layer, const Shape& sh, int64_t tokens,
          uint64_t seed) {
  const bool attended = cache.policy().needs() != RetentionNeeds::kQueryPages &&
                        dynamic_cast<const FullRetention*>(&cache.policy()) == nullptr;
  const int64_t block = attended ? 256 : 4096;
  for (int64_t t = 0; t < tokens; t += block) {
    const Tokens x = random_tokens(sh, std::min(block, tokens - t), seed + t);
    if (attended) {
      cache.append_and_attend(seq, layer, x.q, x.k, x.v);
    } else {
      cache.append_unattended(seq, layer, x.k, x.v);
    }
  }
}

// What to feed a cache first so that its timed steps centre on `tokens` entered: each call
// appends one, so that many less the warm-up and half the timed calls (at least one), and the
// timed steps hold tokens - repeats/2 + 1 .. tokens + repeats/2, not tokens + 1 .. tokens +
// warmup + repeats (with 100000 repeats far past `tokens`). The method and both baselines are
// fed alike, so each ratio compares steps at the same counts.
int64_t centred_feed(int64_t tokens, int warmup, int repeats) {
  return std::max<int64_t>(1, tokens - warmup - repeats / 2);
}

// Seconds per decode step (append one token, let the policy act, attend) of a cache fed with
// `tokens` tokens first. One layer is timed: the first one Quest reads sparsely (the layers
// before it stay empty), layer 0 otherwise.
std::vector<double> time_decode_steps(std::shared_ptr<const RetentionPolicy> policy,
                                      const Shape& sh, AttentionBackend backend, int64_t tokens,
                                      int warmup, int repeats, uint64_t seed, int64_t* kept) {
  const auto* quest = dynamic_cast<const QuestPolicy*>(policy.get());
  const int64_t layer = quest ? quest->dense_layers() : 0;
  CompressedKVCache cache(std::shared_ptr<const Codec>(sh.codec, [](const Codec*) {}), backend,
                          layer + 1, sh.kv_heads, sh.head_dim, std::move(policy));
  const int64_t seq = cache.add_sequence();
  feed(cache, seq, layer, sh, tokens, seed);
  const Tokens x = random_tokens(sh, warmup + repeats, seed + tokens);  // outside the timing
  int64_t i = 0;
  auto samples = time_calls(warmup, repeats, [&] {
    cache.append_and_attend(seq, layer, x.q.narrow(1, i, 1), x.k.narrow(1, i, 1),
                            x.v.narrow(1, i, 1));
    ++i;
  });
  if (kept) *kept = cache.kept_tokens(seq)[static_cast<size_t>(layer)];
  return samples;
}

// The retained-token benchmark: a decode step of the method at `context` tokens entered, beside
// the same codec keeping every token at the method's kept count and at the full context. A
// policy that reads its kept tokens in place tracks the first, not the second.
json retained_record(const Shape& sh, std::shared_ptr<const RetentionPolicy> policy,
                     AttentionBackend backend, int warmup, int repeats, uint64_t seed) {
  check_fits(sh.codec->nominal_bytes(sh.context, sh.kv_heads, sh.head_dim).total(),
             "retained-token decode at context " + std::to_string(sh.context));
  const std::string name = policy->name();
  const json params = policy->params();
  int64_t kept = 0;
  const std::vector<double> samples = time_decode_steps(
      policy, sh, backend, centred_feed(sh.context, warmup, repeats), warmup, repeats, seed, &kept);
  Summary method = summarize(samples, seed);
  // Quest keeps every token but reads its chosen pages: its baseline is a cache that size (what
  // its last timed step read).
  const auto* quest = dynamic_cast<const QuestPolicy*>(policy.get());
  const int64_t read = quest ? quest->tokens_read(kept) : kept;
  auto full_at = [&](int64_t tokens, uint64_t s) {
    return summarize(
        time_decode_steps(std::make_shared<FullRetention>(), sh, backend,
                          centred_feed(tokens, warmup, repeats), warmup, repeats, s, nullptr),
        seed);
  };
  const Summary at_kept = full_at(read, seed + 1), at_context = full_at(sh.context, seed + 2);
  return {{"kind", "retained_decode"},
          {"backend", backend == AttentionBackend::kCpu ? "cpu" : "reference"},
          {"policy", name},
          {"policy_params", params},
          {"format", sh.codec->name()},
          {"kv_heads", sh.kv_heads},
          {"group_size", sh.group},
          {"head_dim", sh.head_dim},
          {"context", sh.context},
          {"kept_tokens", kept},
          {"read_tokens", read},
          {"samples_s", samples},
          {"time_s", to_json(method)},
          {"full_at_kept_time_s", to_json(at_kept)},
          {"full_at_context_time_s", to_json(at_context)},
          {"ratio_to_full_at_kept", method.median / at_kept.median},
          {"ratio_to_full_at_context", method.median / at_context.median}};
}

}  // namespace

std::vector<ParamSpec> KernelsSuite::param_specs() {
  return {
      ParamSpec::int_list("contexts", "auto",
                          "context lengths (tokens); auto = 1024, 2048, ... until the largest "
                          "working set reaches min_llc_multiple x the last-level cache")
          .range(1, static_cast<double>(kMaxContext))
          .or_auto(),
      ParamSpec::int_list("kv_heads", json::array({2, 8}), "KV heads per layer").range(1, 256),
      ParamSpec::integer("group_size", 4, "query heads per KV head (GQA group)").range(1, 64),
      ParamSpec::integer("head_dim", 128, "head dimension").one_of({64, 128}),
      ParamSpec::integer("batch", 1, "sequences per decode step").range(1, 1024),
      ParamSpec::string("dtype", "float16",
                        "storage dtype of the uncompressed `full` method, and of KIVI's and "
                        "GEAR's scales and windows (other methods fix their own format)",
                        {"float32", "float16", "bfloat16"}),
      ParamSpec::integer("warmup", 3, "untimed calls before timing each point").range(0, 10000),
      ParamSpec::integer("repeats", 20, "timed calls per point (all kept)").range(1, 100000),
      ParamSpec::integer("llc_bytes", "auto",
                         "last-level cache size in bytes the plan targets; auto = detected (a "
                         "CPUID-only figure is capped, see the warning)")
          .range(1, 1e15)
          .or_auto(),
      ParamSpec::number("min_llc_multiple", 4.0,
                        "the largest working set must reach this multiple of the last-level "
                        "cache (auto contexts grow to it; a warning otherwise)")
          .range(0, 1024),
  };
}

KernelsSuite::CachePlan KernelsSuite::planned_llc(const json& llc_param, const Environment& env) {
  if (llc_param.is_number()) return {llc_param.get<uint64_t>(), "llc_bytes parameter", ""};
  if (env.llc_source != "cpuid") return {env.llc_bytes, env.llc_source, ""};
  const uint64_t cap = kCpuidLlcPerCore * static_cast<uint64_t>(std::max(1, env.cores));
  if (env.llc_bytes <= cap) return {env.llc_bytes, "cpuid", ""};
  return {cap, "cpuid (capped)",
          "CPUID reports a " + format_bytes(env.llc_bytes) +
              " last-level cache but the system reports no cache topology (as in many VMs); "
              "planned with " +
              format_bytes(cap) + " (" + format_bytes(kCpuidLlcPerCore) + " per core for " +
              std::to_string(std::max(1, env.cores)) + " cores); set llc_bytes to the real size"};
}

std::vector<int64_t> KernelsSuite::auto_contexts(const std::function<uint64_t(int64_t)>& bytes_at,
                                                 uint64_t llc_bytes, double llc_multiple) {
  const double target = llc_multiple * static_cast<double>(llc_bytes);
  std::vector<int64_t> contexts;
  for (int64_t c = 1024; c <= kMaxContext; c *= 2) {
    contexts.push_back(c);
    if (static_cast<double>(bytes_at(c)) >= target) break;
  }
  return contexts;
}

namespace {

// The grid and buffer sizes a cell will use, derived from its parameters, its method's codec
// and the cache size.
struct Plan {
  std::shared_ptr<const Codec> codec;
  std::shared_ptr<const RetentionPolicy> policy;
  bool retained = false;  // the policy acts during decode: time retained-token steps too
  std::vector<int64_t> contexts, kv_heads;
  Shape base;
  uint64_t largest = 0;     // K+V bytes of the biggest point
  uint64_t peak = 0;        // ... with what filling its stores takes beside them (GEAR's)
  uint64_t copy_bytes = 0;  // each of the two copy-bandwidth buffers
};

Plan make_plan(const json& p, const json& method, uint64_t llc) {
  Plan plan;
  plan.codec = make_codec(method, dtype_from_name(p["dtype"]));
  KVB_CHECK(!plan.codec->needs_preparation(), "kernels: codec '", plan.codec->name(),
            "' is fitted to a model in a prepare step (its bases depend on the model), which this "
            "model-free suite has none of; measure it with the latency or throughput suites");
  plan.policy = make_policy(method);
  // Its caches are fed in blocks with no prompt to take a fraction of.
  KVB_CHECK(!plan.policy->budget_needs_prompt(), "kernels: retention policy '", plan.policy->name(),
            "' sizes its budget as a fraction of the prompt, which this suite's synthetic "
            "contexts do not have; give its budget in tokens (h2o: heavy and recent)");
  plan.retained = acts_during_decode(*plan.policy);
  plan.kv_heads = p["kv_heads"].get<std::vector<int64_t>>();
  const int64_t max_heads = *std::max_element(plan.kv_heads.begin(), plan.kv_heads.end());
  // The stores check the method against the shape (a group that does not divide head_dim) here,
  // in the plan a dry run makes too, not after a copy-bandwidth measurement.
  plan.codec->make_key_store(max_heads, p["head_dim"]);
  plan.codec->make_value_store(max_heads, p["head_dim"]);
  plan.base = Shape{p["batch"], 0, p["group_size"], p["head_dim"], 0, plan.codec.get()};
  const double min_multiple = p["min_llc_multiple"];
  const auto bytes_at = [&](int64_t context) {
    Shape s = plan.base;
    s.kv_heads = max_heads;
    s.context = context;
    return s.kv_bytes();
  };
  plan.contexts = p["contexts"] == "auto" ? KernelsSuite::auto_contexts(bytes_at, llc, min_multiple)
                                          : p["contexts"].get<std::vector<int64_t>>();
  for (int64_t c : plan.contexts) {
    Shape s = plan.base;
    s.kv_heads = max_heads, s.context = c;
    plan.largest = std::max(plan.largest, bytes_at(c));
    plan.peak = std::max(plan.peak, bytes_at(c) + s.staging_bytes());
  }
  // Each copy buffer at least the LLC (the points' own beyond-cache line, max(multiple, 1)), so
  // the copy reads and writes memory, not the cache, whatever min_llc_multiple says.
  plan.copy_bytes = std::max<uint64_t>(
      kMinCopyBytes, static_cast<uint64_t>(std::max(min_multiple, 1.0) * static_cast<double>(llc)));
  return plan;
}

}  // namespace

void KernelsSuite::check_method(const json& params, const json& method, const std::string& device) {
  if (device != "cuda") {
    make_plan(params, method, 0);
    return;
  }
  // The decode kernels' query heads per KV head (kernels/kv_format.h): refused when the config
  // is resolved, not at the first launch.
  if (params["group_size"].get<int64_t>() > kernels::kDecodeMaxQPerKv)
    throw ConfigError("group_size", "at most " + std::to_string(kernels::kDecodeMaxQPerKv) +
                                        " on cuda (the decode kernels' GQA groups), got " +
                                        params["group_size"].dump());
}

std::vector<int64_t> KernelsSuite::planned_contexts(const json& params, const json& method,
                                                    uint64_t llc_bytes) {
  return make_plan(params, method, llc_bytes).contexts;
}

uint64_t KernelsSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (ctx.gpu) return estimate_kernels_on_gpu(ctx.params, ctx.method);
  const Plan plan =
      make_plan(ctx.params, ctx.method, planned_llc(ctx.params["llc_bytes"], ctx.env).bytes);
  uint64_t peak = plan.peak;
  // The reference backend attends an fp32 copy of a sequence's K/V, made beside the cache (one
  // sequence at a time), as attention_record checks it.
  if (ctx.reference_attention) {
    const auto& heads = plan.kv_heads;
    const auto& contexts = plan.contexts;
    peak += static_cast<uint64_t>(*std::max_element(heads.begin(), heads.end())) *
            static_cast<uint64_t>(*std::max_element(contexts.begin(), contexts.end())) *
            static_cast<uint64_t>(plan.base.head_dim) * 2 * sizeof(float);
  }
  return std::max(peak, 2 * plan.copy_bytes);
}

std::string KernelsSuite::spread_warning(const std::vector<json>& records) {
  constexpr double kSpread = 3;  // p90 / median, as the throughput suite's decode steps
  size_t wide = 0, timed = 0;
  const json* worst = nullptr;
  double worst_spread = 0;
  for (const json& r : records) {
    if (!r.contains("time_s")) continue;
    ++timed;
    const double median = r["time_s"]["median"].get<double>();
    const double spread = median > 0 ? r["time_s"]["p90"].get<double>() / median : 0.0;
    if (!(spread > kSpread)) continue;
    ++wide;
    if (spread > worst_spread) worst_spread = spread, worst = &r;
  }
  if (worst == nullptr) return "";
  const json& t = (*worst)["time_s"];
  const std::string point =
      (*worst)["kind"] == "copy_bandwidth"
          ? "copy bandwidth (" + (*worst)["phase"].get<std::string>() + ")"
          : std::string((*worst)["kind"] == "decode_attention" ? "" : "retained tokens, ") +
                "context " + std::to_string((*worst).value("context", int64_t{0})) + ", kv_heads " +
                std::to_string((*worst).value("kv_heads", int64_t{0}));
  return std::to_string(wide) + " of " + std::to_string(timed) +
         " timed points spread widely (worst: " + point + ", samples " +
         format_fixed(t["min"].get<double>() * 1e6, 1) + " to " +
         format_fixed(t["max"].get<double>() * 1e6, 1) + " us, p90 " +
         format_fixed(worst_spread, 1) +
         "x the median): the machine was busy or warmup was too short; rerun on a quiet machine "
         "or raise warmup";
}

CellOutput KernelsSuite::run(const CellContext& ctx) {
  if (ctx.spec.device == "cuda") return run_kernels_on_gpu(ctx);
  const json& p = ctx.params;
  const CachePlan cache = planned_llc(p["llc_bytes"], ctx.env);
  const uint64_t llc = cache.bytes;
  const double min_multiple = p["min_llc_multiple"];
  const Plan plan = make_plan(p, ctx.method, llc);
  KVB_CHECK(ctx.spec.attention != "paged",
            "kernels: attention 'paged' is the GPU path's storage with reference attention, "
            "not a kernel to time; use cpu or reference");
  const AttentionBackend backend = attention_backend_from_name(ctx.spec.attention);
  const std::vector<int64_t>& contexts = plan.contexts;
  const std::vector<int64_t>& kv_heads = plan.kv_heads;
  const Shape& base = plan.base;
  const uint64_t largest = plan.largest, copy_bytes = plan.copy_bytes;
  const int warmup = p["warmup"], repeats = p["repeats"];

  CellOutput out;
  if (!cache.warning.empty()) out.warnings.push_back(cache.warning);
  const size_t points = contexts.size() * kv_heads.size();
  ctx.progress.begin(ctx.cell_id, points * (plan.retained ? 2 : 1) + 2);
  out.records.push_back(copy_bandwidth_record(copy_bytes, warmup, repeats, ctx.seed, "before"));
  ctx.progress.advance("copy bandwidth");
  for (int64_t c : contexts) {
    for (int64_t h : kv_heads) {
      Shape sh = base;
      sh.context = c;
      sh.kv_heads = h;
      out.records.push_back(attention_record(sh, backend, warmup, repeats, ctx.seed, llc));
      ctx.progress.advance("context " + std::to_string(c) + ", kv_heads " + std::to_string(h));
    }
  }
  // Batch 1: the retained-token steps go through the cache, one sequence at a time.
  for (int64_t c : plan.retained ? contexts : std::vector<int64_t>{}) {
    for (int64_t h : kv_heads) {
      Shape sh = base;
      sh.context = c;
      sh.kv_heads = h;
      out.records.push_back(retained_record(sh, plan.policy, backend, warmup, repeats, ctx.seed));
      ctx.progress.advance("retained tokens, context " + std::to_string(c));
    }
  }
  out.records.push_back(copy_bandwidth_record(copy_bytes, warmup, repeats, ctx.seed + 1, "after"));
  ctx.progress.advance("copy bandwidth");
  ctx.progress.end();

  // Summary: copy bandwidth over both phases; attention against it.
  const CopyBandwidth bandwidth = copy_bandwidth(out.records);
  const double copy = bandwidth.gbps;
  if (!bandwidth.drift_warning.empty()) out.warnings.push_back(bandwidth.drift_warning);
  // Beyond the cache means at least one LLC's worth, whatever min_llc_multiple allows.
  const double beyond = std::max(min_multiple, 1.0);
  std::optional<double> best_fraction;  // none when no point reaches beyond the cache
  for (auto& r : out.records) {
    if (r["kind"] != "decode_attention") continue;
    r["fraction_of_copy_bandwidth"] = r["gbps"].get<double>() / copy;
    if (r["llc_multiple"].get<double>() >= beyond) {
      best_fraction =
          std::max(best_fraction.value_or(0.0), r["fraction_of_copy_bandwidth"].get<double>());
    }
  }
  if (best_fraction && *best_fraction > 1.5) {
    // Reads alone may beat a copy (no write traffic) by some, not by half again: the machine's
    // speed changed between the measurements, or the working sets still fit a cache.
    out.warnings.push_back("a point beyond the last-level cache reached " +
                           format_fixed(100 * *best_fraction, 1) +
                           "% of the copy bandwidth measured in the same run: the machine's "
                           "load changed between measurements (rerun on a quiet machine), or "
                           "the cache is larger than llc_bytes says");
  }
  if (const std::string w = spread_warning(out.records); !w.empty()) out.warnings.push_back(w);
  const double max_multiple = llc ? static_cast<double>(largest) / llc : 0.0;
  if (llc == 0) {
    out.warnings.push_back("last-level cache size unknown; cannot tell cache from DRAM numbers");
  } else if (max_multiple < min_multiple) {
    out.warnings.push_back("largest working set is " + format_fixed(max_multiple, 2) +
                           "x the last-level cache, below min_llc_multiple " +
                           format_fixed(min_multiple, 2) + ": these may be cache numbers");
  }
  out.summary = {{"copy_bandwidth_gbps", copy},
                 {"llc_bytes", llc},
                 {"llc_source", cache.source},
                 {"max_working_set_bytes", largest},
                 {"max_llc_multiple", max_multiple},
                 {"best_fraction_of_copy_bandwidth_beyond_llc",
                  best_fraction ? json(*best_fraction) : json(nullptr)},
                 {"threads", ctx.env.threads},
                 {"kernel_isa", simd::kernel_isa()},
                 {"contexts", contexts},
                 {"points", contexts.size() * kv_heads.size()}};
  return out;
}

KernelsSuite::CopyBandwidth KernelsSuite::copy_bandwidth(const std::vector<json>& records) {
  std::vector<double> all, phase_median;  // all samples; each record's median
  for (const auto& r : records) {
    if (r["kind"] != "copy_bandwidth") continue;
    std::vector<double> phase;
    for (double t : r["samples_s"]) phase.push_back(r["bytes_moved"].get<double>() / t / 1e9);
    all.insert(all.end(), phase.begin(), phase.end());
    phase_median.push_back(median(phase));
  }
  KVB_CHECK(!all.empty(), "kernels: no copy-bandwidth samples");
  return {median(all), copy_drift_warning(phase_median.front(), phase_median.back())};
}

std::string KernelsSuite::copy_drift_warning(double before_gbps, double after_gbps) {
  constexpr double kCopyDrift = 0.2;
  const double slow = std::min(before_gbps, after_gbps), fast = std::max(before_gbps, after_gbps);
  if (!(fast > (1 + kCopyDrift) * slow)) return "";
  return "copy bandwidth moved from " + format_fixed(before_gbps, 1) +
         " GB/s before the points to " + format_fixed(after_gbps, 1) +
         " GB/s after them: the machine's speed changed during the cell, so the fractions of "
         "copy bandwidth are uncertain by as much (rerun on a quiet machine)";
}

Table KernelsSuite::summary_table(const CellOutput& output) const {
  Table t;
  t.columns = {"format",    "context", "kv_heads", "K+V",       "xLLC",
               "median us", "p90 us",  "GB/s",     "% copy BW", "vs full"};
  for (const auto& r : output.records) {
    if (r["kind"] == "retained_decode") {
      // Step time against the same codec keeping every token: at the tokens the method reads
      // (its kept count; Quest's chosen pages) and at the context.
      const int64_t kept = r["kept_tokens"], read = r.value("read_tokens", kept);
      const std::string reads = read == kept ? "" : ", reads " + std::to_string(read);
      t.rows.push_back({r["policy"].get<std::string>() + "+" + r["format"].get<std::string>() +
                            " (keeps " + std::to_string(kept) + reads + ")",
                        std::to_string(r["context"].get<int64_t>()),
                        std::to_string(r["kv_heads"].get<int64_t>()), "", "",
                        format_fixed(r["time_s"]["median"].get<double>() * 1e6, 1),
                        format_fixed(r["time_s"]["p90"].get<double>() * 1e6, 1), "", "",
                        format_fixed(r["ratio_to_full_at_kept"].get<double>(), 2) + "x @read, " +
                            format_fixed(r["ratio_to_full_at_context"].get<double>(), 2) +
                            "x @context"});
      continue;
    }
    if (r["kind"] != "decode_attention") continue;
    // On a GPU: no LLC multiple; the last column is the time against PyTorch's SDPA.
    const bool gpu = r["backend"] == "cuda";
    t.rows.push_back({r["format"].get<std::string>() + " (" + r["backend"].get<std::string>() + ")",
                      std::to_string(r["context"].get<int64_t>()),
                      std::to_string(r["kv_heads"].get<int64_t>()),
                      format_bytes(r["working_set_bytes"].get<double>()),
                      gpu ? "" : format_fixed(r["llc_multiple"].get<double>(), 2),
                      format_fixed(r["time_s"]["median"].get<double>() * 1e6, 1),
                      format_fixed(r["time_s"]["p90"].get<double>() * 1e6, 1),
                      format_fixed(r["gbps"].get<double>(), 2),
                      format_fixed(100 * r["fraction_of_copy_bandwidth"].get<double>(), 1),
                      r.contains("ratio_to_sdpa")
                          ? format_fixed(r["ratio_to_sdpa"].get<double>(), 2) + "x SDPA time"
                          : ""});
  }
  if (output.summary.contains("copy_bandwidth_gbps")) {
    t.rows.push_back({"copy", "", "", "", "", "", "",
                      format_fixed(output.summary["copy_bandwidth_gbps"].get<double>(), 2), "100.0",
                      ""});
  }
  // The last column compares retained steps with the full cache, or a GPU kernel with SDPA; a
  // codec's CPU points have neither.
  const bool compared = std::any_of(t.rows.begin(), t.rows.end(),
                                    [](const auto& row) { return !row.back().empty(); });
  if (!compared) {
    t.columns.pop_back();
    for (auto& row : t.rows) row.pop_back();
  }
  return t;
}

}  // namespace kvbench
