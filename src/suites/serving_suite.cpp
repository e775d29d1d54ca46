#include "kvbench/suites/serving_suite.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/memory.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/text.h"
#include "kvbench/engine/sampler.h"
#include "kvbench/kv/codec.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/latent_pages_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/kv/quest_policy.h"
#include "kvbench/serving/request_source.h"
#include "kvbench/serving/serving_loop.h"
#include "kvbench/suites/capacity.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> ServingSuite::param_specs() {
  return {
      ParamSpec::number_list("rates", json::array({1.0, 4.0, 16.0}),
                             "request arrival rates (requests per second; Poisson, or gamma with "
                             "burstiness); 0 = every "
                             "request at time 0. One record per rate")
          .range(0, 1e6),
      ParamSpec::number("burstiness", 1.0,
                        "shape of the gamma gaps between arrivals at each rate (mean 1/rate, "
                        "squared coefficient of variation 1/burstiness): 1 = Poisson, < 1 "
                        "bursts, > 1 steadier (vLLM's --burstiness)")
          .range(0.01, 100),
      ParamSpec::integer("requests", 32, "requests per rate (not with duration_s or trace_file)")
          .range(1, 1000000),
      ParamSpec::number("duration_s", 0.0,
                        "stop arrivals at this many seconds instead of after `requests` "
                        "(rates > 0; cuts a trace); 0 = use `requests`")
          .range(0, 1e7),
      ParamSpec::path("trace_file", "",
                      "JSONL of requests {arrival_s, prompt | prompt_tokens, output_tokens}; "
                      "replaces rates and the length parameters"),
      ParamSpec::path("sharegpt_file", "",
                      "ShareGPT-style conversations (JSON list or JSONL): prompt = first user "
                      "turn, output length = its reply's tokens; arrivals at each rate"),
      ParamSpec::string("sharegpt_output", "clamp",
                        "sharegpt_file: a reply's token count outside output_tokens_min..max is "
                        "clamped into it (clamp) or its conversation skipped (filter, as vLLM's "
                        "benchmark does)",
                        {"clamp", "filter"}),
      ParamSpec::string("length_distribution", "uniform",
                        "distribution of synthetic prompt and output lengths",
                        {"uniform", "lognormal"}),
      ParamSpec::integer("prompt_tokens_min", 32, "shortest prompt").range(1, 1 << 20),
      ParamSpec::integer("prompt_tokens_max", 256, "longest prompt").range(1, 1 << 20),
      ParamSpec::number("prompt_tokens_mean", 0.0,
                        "lognormal: mean prompt length; 0 = midpoint of min and max")
          .range(0, 1 << 20),
      ParamSpec::number("prompt_tokens_sigma", 0.5, "lognormal: sigma of log(prompt length)")
          .range(0.001, 10),
      ParamSpec::integer("output_tokens_min", 8, "fewest generated tokens (EOS ignored)")
          .range(1, 1 << 20),
      ParamSpec::integer("output_tokens_max", 64, "most generated tokens").range(1, 1 << 20),
      ParamSpec::number("output_tokens_mean", 0.0,
                        "lognormal: mean output length; 0 = midpoint of min and max")
          .range(0, 1 << 20),
      ParamSpec::number("output_tokens_sigma", 0.5, "lognormal: sigma of log(output length)")
          .range(0.001, 10),
      ParamSpec::boolean("chunked_prefill", false,
                         "split long prefills over steps so running requests keep decoding"),
      ParamSpec::integer("prefill_chunk_tokens", 512,
                         "chunked_prefill: most prompt tokens of one request per step")
          .range(1, 1 << 24),
      ParamSpec::integer("block_size", 64, "tokens per KV block").range(1, 1 << 16),
      ParamSpec::integer("kv_budget_bytes", 0,
                         "KV pool budget in bytes; 0 = kv_budget_fraction of available memory "
                         "(on a GPU: its memory less the weights)")
          .range(0, 1e15),
      ParamSpec::number("kv_budget_fraction", 0.1,
                        "KV pool budget as a fraction of the memory available at the run's "
                        "first such cell, read once per run (on a GPU: its memory less the "
                        "weights), when kv_budget_bytes is 0")
          .range(1e-6, 0.9),
      ParamSpec::integer("max_batch_tokens", 2048,
                         "tokens entering the model per step (prefills + one per decode)")
          .range(1, 1 << 24),
      ParamSpec::integer("max_running", 64,
                         "requests running at once (prefilling or decoding); with slot bytes "
                         "(KIVI's rings, fp8's scales) at most the slots the budget holds")
          .range(1, 1 << 16),
      ParamSpec::integer("max_concurrency", 0,
                         "requests in flight at once from the client (vLLM's "
                         "--max-concurrency): an arrival finding them all busy waits before "
                         "it is sent, outside TTFT (in client_wait_s); 0 = no limit")
          .range(0, 1 << 20),
      ParamSpec::number("slo_ttft_s", 2.0, "goodput: TTFT threshold in seconds (0 = unchecked)")
          .range(0, 1e6),
      ParamSpec::number("slo_tpot_s", 0.2, "goodput: TPOT threshold in seconds (0 = unchecked)")
          .range(0, 1e6),
      ParamSpec::number("slo_e2e_s", 0.0,
                        "goodput: end-to-end threshold in seconds (0 = unchecked)")
          .range(0, 1e6),
  };
}

namespace {

std::shared_ptr<const Codec> checked_codec(const json& method, const ModelConfig& c,
                                           at::ScalarType dtype) {
  auto codec = make_codec(method, dtype);
  // Building the stores checks the method against the model (e.g. group vs head_dim); codecs
  // that need preparation check it in their formula (their stores need the fitted bases).
  if (!codec->needs_preparation()) {
    codec->make_key_store(c.num_kv_heads, c.head_dim);
    codec->make_value_store(c.num_kv_heads, c.head_dim);
  }
  return codec;
}

// Quest's page bounds for `tokens` tokens of one sequence over its sparse layers, which every
// cache stores beside K and V (0 for other policies).
double quest_bounds_bytes(const RetentionPolicy& policy, const ModelConfig& c, int64_t tokens) {
  const auto* quest = dynamic_cast<const QuestPolicy*>(&policy);
  if (quest == nullptr) return 0;
  const int64_t sparse = c.num_layers - std::min(c.num_layers, quest->dense_layers());
  return static_cast<double>(sparse) * static_cast<double>(QuestPages::nominal_bytes(
                                           tokens, c.num_kv_heads, c.head_dim, quest->page_size()));
}

// The formula's bytes for `tokens` tokens of one sequence over all layers, Quest's bounds too.
double formula_bytes(const Codec& codec, const RetentionPolicy& policy, const ModelConfig& c,
                     int64_t tokens, int64_t first) {
  return static_cast<double>(
             codec.sequence_nominal_bytes(first, tokens, c.num_kv_heads, c.head_dim).total()) *
             static_cast<double>(c.num_layers) +
         quest_bounds_bytes(policy, c, tokens);
}

}  // namespace

double method_block_bytes(const json& method, const ModelConfig& c, at::ScalarType dtype,
                          int64_t block_size, bool paged, bool kernel_path) {
  auto codec = checked_codec(method, c, dtype);
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(method);
  // The cost of `span` more tokens after `span` tokens: long enough that a fixed window (and
  // group rounding) is the same at both ends, or negligible against the span.
  const int64_t span = 4096 * block_size;
  // The more of two histories: all in one append, or one token at a time (GEAR's decode blocks
  // cost more per token than a prefill's; any history's growth after its prefill is the
  // latter's).
  double grow = 0;
  for (int64_t first : {2 * span, int64_t(1)})
    grow = std::max(grow, formula_bytes(*codec, *policy, c, 2 * span, std::min(first, 2 * span)) -
                              formula_bytes(*codec, *policy, c, span, std::min(first, span)));
  return grow / static_cast<double>(span) * static_cast<double>(block_size) *
         (paged ? paged_storage_factor(*codec, c.head_dim, kernel_path) : 1.0);
}

namespace {

// A policy's bookkeeping per context token over all layers (retention_bytes_per_token): as
// held, and while a layer attends a prompt.
struct RetentionRates {
  uint64_t held = 0, entering = 0;
};

RetentionRates retention_rates(const json& method, const ModelConfig& c, at::ScalarType dtype,
                               bool paged, bool kernel_path) {
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(method);
  const CacheLayout index = CacheLayout::for_method(method, dtype, c.head_dim, paged, kernel_path);
  return {retention_bytes_per_token(*policy, c, index, false),
          retention_bytes_per_token(*policy, c, index, true)};
}

}  // namespace

double method_retention_block_bytes(const json& method, const ModelConfig& c, at::ScalarType dtype,
                                    int64_t block_size, bool paged, bool kernel_path) {
  const uint64_t held = retention_rates(method, c, dtype, paged, kernel_path).held;
  return static_cast<double>(held) * static_cast<double>(c.num_layers * block_size);
}

double method_prefill_retention_bytes(const json& method, const ModelConfig& c,
                                      at::ScalarType dtype, bool paged, bool kernel_path) {
  const RetentionRates r = retention_rates(method, c, dtype, paged, kernel_path);
  return r.entering > r.held ? static_cast<double>(r.entering - r.held) : 0.0;
}

int64_t method_window_blocks(const json& method, const ModelConfig& c, at::ScalarType dtype,
                             int64_t block_size, double bytes_per_block, int64_t longest,
                             bool paged, double slot) {
  auto codec = make_codec(method, dtype);
  KVB_CHECK(bytes_per_block > 0, "serving: bytes per block must be > 0");
  // The pages as the capacity view counts them (the row widths, unused here, aside).
  const CacheLayout layout = CacheLayout::for_method(method, dtype, c.head_dim, paged, false);
  const PagedSequenceBytes& pages = layout.pages;
  const int64_t latent_page = layout.latent_page;
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(method);
  // What the sequence's slot holds (`slot`) is charged per slot.
  // GEAR's block cache on the paged path: the formula's exact rows (t mod buffer, in the model
  // dtype) are in its slot's buffer (CacheLayout::exact_buffer: 0 for every other format).
  auto gear_exact = [&](int64_t t) {
    if (slot <= 0 || layout.exact_buffer == 0) return 0.0;
    return static_cast<double>(uint64_t(t % layout.exact_buffer) * layout.exact_row_bytes *
                               uint64_t(c.num_kv_heads * c.num_layers));
  };
  // The formula at t tokens, the most over how a request's tokens arrived (a prefill of any
  // length, then decode steps): GEAR's bytes depend on it. Called once per t, in increasing
  // order (it keeps the worst prefill seen). Two such
  // histories differ by the same bytes at every length both reach (the tokens after their
  // prefills form the same blocks), so the worst prefill so far stays the worst: each length
  // compares it with a prefill of every token.
  int64_t worst_first = 1;
  auto most_formula = [&](int64_t t) {
    const double all = formula_bytes(*codec, *policy, c, t, t),
                 worst = formula_bytes(*codec, *policy, c, t, worst_first);
    if (all <= worst) return worst;
    worst_first = t;
    return all;
  };
  auto stored = [&](int64_t t) {
    if (latent_page > 0)  // each slot at bytes_per_block's rate: coefficients grow linearly
      return static_cast<double>((t + latent_page - 1) / latent_page * latent_page) *
                 bytes_per_block / static_cast<double>(block_size) -
             slot;
    if (pages.page == 0) return most_formula(t) - gear_exact(t);
    return static_cast<double>(pages.of(t)) * static_cast<double>(c.num_kv_heads * c.num_layers) +
           quest_bounds_bytes(*policy, c, t) - slot;
  };
  int64_t window = 0;
  for (int64_t t = 1; t <= longest; ++t) {
    const double blocks = static_cast<double>((t + block_size - 1) / block_size);
    const double over = stored(t) - blocks * bytes_per_block;
    // A relative tolerance keeps rounding in bytes_per_block from adding a block.
    if (over > 1e-9 * bytes_per_block) {
      window = std::max(window, static_cast<int64_t>(std::ceil(over / bytes_per_block - 1e-9)));
    }
  }
  return window;
}

namespace {

// The slots a paged pool reserves (every sequence that can run at once) and the blocks the
// budget holds beside them.
struct PoolSizing {
  int64_t slots = 1, blocks = 0;
};
// `budget` less the shared state; each slot takes `slot_bytes` first, each block `per_block`,
// each running sequence its blocks and `window_blocks`; at most `most` slots. Slots that cost
// nothing: as many as could run holding a block each. Slots that cost bytes take them from the
// blocks: as many as the blocks left can run at the workload's mean request (`mean_blocks`
// blocks at its end), the fewest where more would run no more.
PoolSizing size_pool(double budget, double slot_bytes, double per_block, int64_t window_blocks,
                     int64_t most, double mean_blocks) {
  auto blocks_with = [&](int64_t slots) {
    const double left = budget - static_cast<double>(slots) * slot_bytes;
    // (One slot: capacity's own error where no block fits.)
    return left >= per_block || slots == 1 ? BlockPool::capacity(left, per_block) : int64_t(0);
  };
  PoolSizing out;
  most = std::max<int64_t>(most, 1);
  if (slot_bytes <= 0) {
    out.blocks = blocks_with(1);
    out.slots = std::max<int64_t>(1, std::min(most, out.blocks / (1 + window_blocks)));
    return out;
  }
  double best = -1;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t blocks = blocks_with(s);
    if (blocks == 0) break;  // more slots leave fewer still
    const double running = std::min(static_cast<double>(s),
                                    std::floor(static_cast<double>(blocks) /
                                               (mean_blocks + static_cast<double>(window_blocks))));
    if (running > best) best = running, out = {s, blocks};
  }
  return out;
}

// The requests of a cell, the same for every method and rate: request i has prompt ids
// prompts[i] and generates output_len[i] tokens. A trace also fixes the arrivals.
struct Workload {
  std::string source;  // "synthetic", "sharegpt" or "trace"
  std::vector<std::vector<int64_t>> prompts;
  std::vector<int64_t> output_len;
  std::vector<double> trace_arrivals;    // trace only
  std::vector<std::string> trace_lines;  // trace only: each request's file:line
  int64_t conversations = 0;             // sharegpt: usable conversations
  int64_t skipped = 0;                   // sharegpt: entries without a reply or out of range
  // Blocks of `block_size` tokens a request is charged at its end under `sched`'s retention
  // budget (every token without one), on average over the requests. Its last token is sampled,
  // never entered: it holds at most prompt + output - 1, as the scheduler charges.
  double mean_blocks(int64_t block_size, const SchedulerConfig& sched) const {
    double sum = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int64_t prompt = static_cast<int64_t>(prompts[i].size());
      const int64_t held = sched.held_tokens(prompt, prompt, prompt + output_len[i] - 1);
      sum += static_cast<double>((held + block_size - 1) / block_size);
    }
    return prompts.empty() ? 1.0 : sum / static_cast<double>(prompts.size());
  }
  // A bound on any request's context: one past the most it holds (the RoPE tables and the
  // caches' per-sequence reserves are sized by it, and one token to spare costs nothing).
  int64_t longest() const {
    int64_t m = 1;
    for (size_t i = 0; i < prompts.size(); ++i) {
      m = std::max(m, static_cast<int64_t>(prompts[i].size()) + output_len[i]);
    }
    return m;
  }
};

LengthDistribution distribution(const json& p, const std::string& what) {
  LengthDistribution d;
  d.name = p["length_distribution"];
  d.min = p[what + "_min"];
  d.max = p[what + "_max"];
  d.mean = p[what + "_mean"];
  d.sigma = p[what + "_sigma"];
  check_length_distribution(d, what);
  return d;
}

// The spec's default of `key`, to tell a parameter the config sets from one it leaves.
const json& default_of(const std::string& key) {
  static const std::vector<ParamSpec> specs = ServingSuite::param_specs();
  for (const auto& s : specs) {
    if (s.name == key) return s.default_value;
  }
  throw Error("serving: no parameter " + key);
}

}  // namespace

void check_serving_params(const json& p, const json& given) {
  // Set in the config: named there, or (without the config) other than its default.
  const auto set = [&](const char* key) {
    return given.is_object() ? given.contains(key) : p[key] != default_of(key);
  };
  const std::string trace = p["trace_file"], sharegpt = p["sharegpt_file"];
  KVB_CHECK(trace.empty() || sharegpt.empty(),
            "serving: give at most one of trace_file and sharegpt_file");
  KVB_CHECK(!sharegpt.empty() || !set("sharegpt_output"),
            "serving: sharegpt_output applies to sharegpt_file only; remove it");
  if (!trace.empty()) {
    KVB_CHECK(!set("rates"),
              "serving: rates and trace_file exclude each other (the trace's arrival_s are the "
              "arrivals); remove rates");
    KVB_CHECK(!set("requests"),
              "serving: requests and trace_file exclude each other (every line of the trace is "
              "a request; duration_s cuts it); remove requests");
    KVB_CHECK(!set("burstiness"),
              "serving: burstiness and trace_file exclude each other (the trace's arrival_s are "
              "the arrivals); remove burstiness");
  } else {
    KVB_CHECK(!p["rates"].empty(), "serving: rates must list at least one arrival rate");
    std::vector<double> rates = p["rates"];
    std::sort(rates.begin(), rates.end());
    const auto twice = std::adjacent_find(rates.begin(), rates.end());
    KVB_CHECK(twice == rates.end(), "serving: rates lists ", json(*twice).dump(),
              " twice (each rate is one point of the report)");
    distribution(p, "prompt_tokens");
    distribution(p, "output_tokens");
  }
  if (p["duration_s"].get<double>() > 0) {
    KVB_CHECK(!set("requests"), "serving: give requests or duration_s, not both");
    if (trace.empty()) {
      for (double r : p["rates"].get<std::vector<double>>()) {
        KVB_CHECK(r > 0,
                  "serving: duration_s needs every rate > 0 (rate 0 puts every request "
                  "at time 0), got rates ",
                  p["rates"].dump());
      }
    }
  }
  KVB_CHECK(p["kv_budget_bytes"].get<double>() >= 0, "serving: kv_budget_bytes must be >= 0");
  // A request is (re)prefilled whole with the tokens it has generated (a preempted one is
  // recomputed), so without chunks the longest must fit one step's token budget. A trace's
  // lengths are known only when it is read.
  const int64_t longest = p["prompt_tokens_max"].get<int64_t>() +
                          p["output_tokens_max"].get<int64_t>() - 1,
                budget = p["max_batch_tokens"];
  KVB_CHECK(!trace.empty() || p["chunked_prefill"].get<bool>() || longest <= budget,
            "serving: prompt_tokens_max + output_tokens_max - 1 = ", longest,
            " tokens can be one request's prefill (a preempted request is recomputed with its "
            "output), more than max_batch_tokens = ",
            budget, "; raise max_batch_tokens or set chunked_prefill true");
}

namespace {

std::vector<int64_t> widen(const std::vector<int32_t>& ids) { return {ids.begin(), ids.end()}; }

// Synthetic requests: lengths from the distributions, prompts of uniformly random ids.
void synthetic_workload(Workload& w, const json& p, int64_t count, int64_t vocab, Rng& rng) {
  const LengthDistribution prompt = distribution(p, "prompt_tokens");
  const LengthDistribution output = distribution(p, "output_tokens");
  for (int64_t i = 0; i < count; ++i) {
    const int64_t plen = prompt.draw(rng);
    w.output_len.push_back(output.draw(rng));
    std::vector<int64_t> ids(static_cast<size_t>(plen));
    for (auto& id : ids) id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
    w.prompts.push_back(std::move(ids));
  }
}

// ShareGPT requests: conversations whose tokenized first user turn has prompt_tokens_min..max
// tokens, in a seeded random order (cycled when more requests are needed than there are);
// output length = the reply's token count, clamped to output_tokens_min..max or (sharegpt_output
// "filter") its conversation skipped when outside.
void sharegpt_workload(Workload& w, const json& p, int64_t count, const Tokenizer& tok, Rng& rng) {
  const std::string path = p["sharegpt_file"];
  const ShareGptData data = load_sharegpt(path);
  const int64_t pmin = p["prompt_tokens_min"], pmax = p["prompt_tokens_max"];
  const int64_t omin = p["output_tokens_min"], omax = p["output_tokens_max"];
  const bool filter = p["sharegpt_output"] == "filter";
  std::vector<std::pair<std::vector<int64_t>, int64_t>> usable;
  for (const auto& c : data.conversations) {
    std::vector<int64_t> ids = widen(tok.encode(c.prompt, true));
    const auto n = static_cast<int64_t>(ids.size());
    if (n < pmin || n > pmax) continue;
    const auto reply = static_cast<int64_t>(tok.encode(c.reply, false).size());
    if (filter && (reply < omin || reply > omax)) continue;
    usable.emplace_back(std::move(ids), std::clamp(reply, omin, omax));
  }
  KVB_CHECK(!usable.empty(), "serving: sharegpt_file ", path, ": none of its ",
            data.conversations.size(),
            " conversations has a prompt of prompt_tokens_min..max = ", pmin, "..", pmax, " tokens",
            filter ? " and a reply of output_tokens_min..max = " + std::to_string(omin) + ".." +
                         std::to_string(omax) + " tokens"
                   : std::string());
  w.conversations = static_cast<int64_t>(usable.size());
  w.skipped = data.entries - w.conversations;
  std::vector<size_t> order(usable.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  for (int64_t i = 0; i < count; ++i) {
    const auto& u = usable[order[static_cast<size_t>(i) % order.size()]];
    w.prompts.push_back(u.first);
    w.output_len.push_back(u.second);
  }
}

// Trace requests: every line (before duration_s, when set), text prompts tokenized, prompt
// lengths as random ids.
void trace_workload(Workload& w, const json& p, int64_t vocab, ModelProvider* model, Rng& rng) {
  const std::string path = p["trace_file"];
  const double duration = p["duration_s"];
  const std::vector<TraceRequest> trace = load_request_trace(path);
  for (const TraceRequest& r : trace) {
    // Replay starts at the first arrival, so the cut is timed from it too.
    if (duration > 0 && r.arrival_s - trace.front().arrival_s >= duration) break;
    if (r.prompt.empty()) {
      std::vector<int64_t> ids(static_cast<size_t>(r.prompt_tokens));
      for (auto& id : ids) id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
      w.prompts.push_back(std::move(ids));
    } else {
      KVB_CHECK(model != nullptr, "serving: ", r.where, ": a text prompt needs a tokenizer");
      w.prompts.push_back(widen(model->tokenizer().encode(r.prompt, true)));
    }
    w.output_len.push_back(r.output_tokens);
    w.trace_arrivals.push_back(r.arrival_s);
    w.trace_lines.push_back(r.where);
  }
  KVB_CHECK(!w.prompts.empty(), "serving: trace_file ", path,
            " has no request before duration_s = ", duration);
}

// The same requests for every method and rate: seeded by the run seed, not the cell seed.
// `count`: requests to make (synthetic and sharegpt).
Workload make_workload(const json& p, int64_t count, int64_t vocab, uint64_t seed,
                       ModelProvider* model) {
  Rng rng(seed ^ 0x5e7e1a9d5eedull);
  Workload w;
  if (!p["trace_file"].get<std::string>().empty()) {
    w.source = "trace";
    trace_workload(w, p, vocab, model, rng);
  } else if (!p["sharegpt_file"].get<std::string>().empty()) {
    w.source = "sharegpt";
    KVB_CHECK(model != nullptr, "serving: sharegpt_file needs the model's tokenizer");
    sharegpt_workload(w, p, count, model->tokenizer(), rng);
  } else {
    w.source = "synthetic";
    synthetic_workload(w, p, count, vocab, rng);
  }
  return w;
}

// Runs each planned step on the model: preempted sequences leave the cache, admitted ones are
// prefilled from every token they know (prompt + generated: the recompute), chunk by chunk
// with chunked prefill (a continued chunk appends to the sequence's cache), running ones
// decode their latest token. Greedy sampling, EOS ignored; a request samples its first token
// after its last chunk.
class ModelExecutor final : public StepExecutor {
 public:
  ModelExecutor(const Transformer& model, KVCache& cache, const Workload& w, Progress& progress)
      : model_(model), cache_(cache), progress_(progress), tokens_(w.prompts) {
    seq_.assign(tokens_.size(), -1);
    for (size_t i = 0; i < w.prompts.size(); ++i)
      // (The last output token is sampled, never entered.)
      totals_.push_back(static_cast<int64_t>(w.prompts[i].size()) + w.output_len[i] - 1);
  }
  void execute(const StepPlan& plan) override {
    for (int64_t id : plan.preempted) drop(id);
    std::vector<SequenceStep> batch;
    std::vector<int64_t> ids;  // per batch row: the request that samples, or -1
    for (int64_t id : plan.decodes) {
      KVB_CHECK(seq_[id] >= 0, "serving: decode of request ", id, " without a cache sequence");
      batch.push_back({seq_[id], {tokens_[id].back()}});
      ids.push_back(id);
    }
    for (const PrefillItem& p : plan.prefills) {
      const auto& known = tokens_[p.id];
      KVB_CHECK(static_cast<int64_t>(known.size()) == p.context, "serving: request ", p.id,
                " knows ", known.size(), " tokens but the scheduler prefills ", p.context);
      if (p.start == 0) {
        KVB_CHECK(seq_[p.id] < 0, "serving: prefill of request ", p.id, " that is running");
        // Its first step's tokens and what it will hold at most: storage kept per sequence
        // (the CPU caches' stores) is sized once; a pool reserved for the budget stays.
        cache_.reserve({{p.tokens, std::max(p.context, totals_[p.id])}});
        seq_[p.id] = cache_.add_sequence();
      } else {
        KVB_CHECK(seq_[p.id] >= 0 && cache_.length(seq_[p.id]) == p.start, "serving: chunk at ",
                  p.start, " of request ", p.id, " does not continue its cache");
      }
      batch.push_back({seq_[p.id], std::vector<int64_t>(known.begin() + p.start,
                                                        known.begin() + p.start + p.tokens)});
      ids.push_back(p.last() ? p.id : -1);
    }
    // Greedy: each row's argmax (greedy_ids: -1 for logits that are not finite) is all that
    // comes back to the host, not [rows, vocab] fp32 logits.
    const at::Tensor next = greedy_ids(model_.forward(batch, cache_));
    for (size_t r = 0; r < ids.size(); ++r) {
      if (ids[r] < 0) continue;
      const int64_t token = next.data_ptr<int64_t>()[r];
      KVB_CHECK(token >= 0, "serving: the logits of request ", ids[r],
                " are not finite (NaN or inf): NaN weights or inputs, or an overflow");
      tokens_[ids[r]].push_back(token);
    }
  }
  void finished(const std::vector<int64_t>& ids) override {
    for (int64_t id : ids) drop(id);
  }
  void report(const std::vector<int64_t>& finished) override {
    for (int64_t id : finished) progress_.advance("request " + std::to_string(id));
  }
  double kv_bytes() const override { return static_cast<double>(cache_.bytes()); }
  double allocated_bytes() const override { return static_cast<double>(cache_.allocated_bytes()); }
  double retention_bytes() const override { return static_cast<double>(cache_.retention_bytes()); }

 private:
  void drop(int64_t id) {
    if (seq_[id] >= 0) cache_.remove_sequence(seq_[id]);
    seq_[id] = -1;
  }
  const Transformer& model_;
  KVCache& cache_;
  Progress& progress_;
  std::vector<std::vector<int64_t>> tokens_;  // prompt + generated, per request
  std::vector<int64_t> totals_;  // tokens a request enters at most (prompt + output - 1)
  std::vector<int64_t> seq_;     // cache sequence id, -1 when not running
};

// A chunk after the first is no longer "the prefill" to the cache: a policy that evicts once
// after the prefill would never evict, and codes spanning tokens cannot be rebuilt.
void check_chunkable(const json& method, const RetentionPolicy& policy, at::ScalarType dtype) {
  KVB_CHECK(!policy.budget_needs_prompt(), "serving: chunked_prefill: method '",
            method.value("name", std::string("?")), "' (retention policy '", policy.name(),
            "') sizes its budget as a fraction of the whole prompt, which chunks would split; set "
            "chunked_prefill false for it or give its budget in tokens");
  const bool chunkable =
      policy.timing() == EvictionTiming::kDecode && make_codec(method, dtype)->can_drop_tokens();
  KVB_CHECK(chunkable, "serving: chunked_prefill: method '", method.value("name", std::string("?")),
            "' (retention policy '", policy.name(), "', evicting ",
            eviction_timing_name(policy.timing()),
            ") selects its tokens from the whole prefill, which chunks would split; set "
            "chunked_prefill false for it");
}

SchedulerConfig scheduler_config(const json& p, const json& method, int64_t num_layers,
                                 int64_t longest, at::ScalarType dtype, bool paged) {
  SchedulerConfig s;
  s.max_batch_tokens = p["max_batch_tokens"];
  s.max_running = p["max_running"];
  s.chunked_prefill = p["chunked_prefill"];
  s.prefill_chunk_tokens = p["prefill_chunk_tokens"];
  auto policy = make_policy(method);
  // One cap per sequence: the largest layer budget at the longest context the cell can see
  // (budgets may differ per layer and grow with the length); none for a policy that never evicts.
  // A budget that depends on the prompt is asked per sequence, from its last prefill.
  auto budget_at = [policy, num_layers, longest](int64_t prompt) {
    int64_t budget = 0;
    RetentionInput in;
    in.num_layers = num_layers;
    in.length = longest;
    in.prompt = prompt;
    for (int64_t l = 0; l < num_layers; ++l) {
      in.layer = l;
      budget = std::max(budget, policy->budget(in));
    }
    return budget;
  };
  const int64_t budget = budget_at(longest);
  if (budget == INT64_MAX) return s;
  if (s.chunked_prefill) check_chunkable(method, *policy, dtype);
  const PagedRetention held = paged ? paged_retention_of(method, dtype) : PagedRetention{};
  // A paged cache listing in place (KIVI's pages, Palu's) frees a page only once no head of any
  // layer keeps a token in it: a selection per head, not a span, may keep every page it
  // entered, so the pool charges every token; a span holds its prefix's pages and every page
  // from its newest tokens' first on, so up to a page less one past either end beyond its
  // budget (capacity's listed_slots).
  int64_t straddled = 0;
  if (held.listing_page > 0) {
    RetentionInput probe;
    probe.num_layers = num_layers, probe.length = longest, probe.prompt = longest;
    const std::optional<RetentionSpan> span = policy->span(probe);
    if (!span) return s;
    const int64_t page = held.listing_page;
    straddled = (span->prefix + page - 1) / page * page - span->prefix + page - 1;
  }
  s.retention_budget = budget + straddled;
  if (policy->budget_needs_prompt())
    s.retention_budget_of = [budget_at, straddled](int64_t prefill) {
      return budget_at(prefill) + straddled;
    };
  s.evict_during_decode = policy->timing() == EvictionTiming::kDecode;
  // A paged cache compacting during decode holds free slots past the budget between
  // compactions: charged, so that the pool's bytes hold what the cache measures.
  const int64_t page = held.compacting_page;
  if (page > 0 && s.evict_during_decode)
    s.compaction_slack = [page](int64_t b) { return recompaction_slack(page, b); };
  return s;
}

// `device`, `weight_bytes`: where the cell runs and its model's weights (kv_budget_base_bytes).
double budget_bytes(const json& p, const at::Device& device, uint64_t weight_bytes) {
  const double bytes = p["kv_budget_bytes"].get<double>();
  if (bytes > 0) return bytes;
  const uint64_t available = kv_budget_base_bytes(device, weight_bytes, /*once_per_run=*/true);
  KVB_CHECK(available > 0,
            "serving: the available memory is unknown; set kv_budget_bytes explicitly");
  return p["kv_budget_fraction"].get<double>() * static_cast<double>(available);
}

// The arrival rate the requests actually had, what a rate's few seeded gaps give rather than
// the nominal rate: the arrivals after the first (at 0) over duration_s when it cuts them,
// else n - 1 gaps over the span from the first arrival to the last. Null below two requests
// or for rate 0.
json offered_rate(const std::vector<double>& arrivals, double rate, double duration_s) {
  if (rate == 0 || arrivals.size() < 2) return nullptr;
  if (duration_s > 0) return static_cast<double>(arrivals.size() - 1) / duration_s;
  if (!(arrivals.back() > arrivals.front())) return nullptr;
  return static_cast<double>(arrivals.size() - 1) / (arrivals.back() - arrivals.front());
}

// With few requests the seeded gaps can average far from 1 / rate. One warning per cell, for
// the rate furthest off past 25% (with `requests`, every rate scales the same draws and sits
// off by the same factor; with duration_s, the lowest rates have the fewest arrivals).
void warn_off_rate(const json& per_rate, std::vector<std::string>& warnings) {
  const json* worst = nullptr;
  double worst_off = 0.25;
  for (const json& r : per_rate) {
    if (r["rate"].get<double>() == 0 || !r["offered_rate"].is_number()) continue;
    const double off = std::fabs(r["offered_rate"].get<double>() / r["rate"].get<double>() - 1);
    if (off > worst_off) worst = &r, worst_off = off;
  }
  if (worst == nullptr) return;
  const double rate = (*worst)["rate"], offered = (*worst)["offered_rate"];
  warnings.push_back("rate " + format_fixed(rate, 2) + ": its " +
                     std::to_string((*worst)["requests"].get<int64_t>()) +
                     " seeded arrivals came at " + format_fixed(offered, 2) + "/s (" +
                     format_fixed(offered / rate, 2) +
                     "x the nominal rate; see arrived/s); more requests or a longer duration_s "
                     "bring them closer");
}

// Requests per rate: `requests`, or with duration_s the Poisson arrivals before it.
std::vector<std::vector<double>> rate_arrivals(const json& p, const std::vector<double>& rates,
                                               uint64_t seed) {
  std::vector<std::vector<double>> out;
  const double duration = p["duration_s"], burstiness = p["burstiness"];
  for (double rate : rates) {
    out.push_back(duration > 0
                      ? poisson_arrivals_until(duration, rate, seed, 1000000, burstiness)
                      : poisson_arrivals(p["requests"].get<int64_t>(), rate, seed, burstiness));
  }
  return out;
}

}  // namespace

uint64_t ServingSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const json& p = ctx.params;
  const uint64_t weights = model_weight_bytes(*ctx.model, ctx.weight_dtype);
  const double budget =
      p["kv_budget_bytes"].get<double>() > 0
          ? p["kv_budget_bytes"].get<double>()
          : p["kv_budget_fraction"].get<double>() *
                static_cast<double>(kv_budget_base_bytes(ctx.gpu ? at::kCUDA : at::kCPU, weights));
  // Weights, the pool, and the activations of the largest step (one sequence of
  // max_batch_tokens bounds the attention scores).
  return weights + static_cast<uint64_t>(budget) +
         generation_bytes(*ctx.model, 0, 1, p["max_batch_tokens"], 0);
}

CellOutput ServingSuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  require_device_support(ctx, "serving");
  check_serving_params(p);
  const Transformer& model = ctx.model.get();
  const ModelConfig& c = model.config();
  const int64_t block_size = p["block_size"];
  const double block_bytes = method_block_bytes(
      ctx.method, c, ctx.model.kv_dtype(), block_size, ctx.spec.attention == "paged",
      CacheLayout::kernel_path(ctx.spec.device == "cuda"));
  // The policy's bookkeeping lives outside the cache's blocks but inside the budget.
  const double retention_block_bytes = method_retention_block_bytes(
      ctx.method, c, ctx.model.kv_dtype(), block_size, ctx.spec.attention == "paged",
      CacheLayout::kernel_path(ctx.spec.device == "cuda"));
  const ModelPlacement placement = ctx.model.placement();
  const double budget = budget_bytes(p, placement.device, model.weight_bytes());
  // On the CPU the weights are already out of what is available; a GPU's total holds them too.
  check_fits_on(placement,
                static_cast<uint64_t>(budget) +
                    generation_bytes(c, 0, 1, p["max_batch_tokens"], 0) +
                    (placement.device.is_cpu() ? 0 : model.weight_bytes()),
                "serving: a KV budget of " + format_bytes(budget) +
                    (p["kv_budget_bytes"].get<double>() > 0 || !placement.device.is_cpu()
                         ? std::string()
                         : " (kv_budget_fraction of the memory available at the run's first "
                           "budgeted cell; lower the fraction)"));
  const bool from_trace = !p["trace_file"].get<std::string>().empty();
  // Arrivals per rate (the same seed for every rate, so rates differ only in their gaps), or
  // the trace's own.
  std::vector<double> rates = p["rates"].get<std::vector<double>>();
  KVB_CHECK(!rates.empty(), "serving: rates is empty");
  std::vector<std::vector<double>> arrivals;
  int64_t count = 0;
  if (!from_trace) {
    arrivals = rate_arrivals(p, rates, ctx.spec.seed + 1);
    for (const auto& a : arrivals) count = std::max(count, static_cast<int64_t>(a.size()));
  }
  if (!from_trace) {
    // The prompts' ids are held twice (the workload, and the running copy, which grows by each
    // request's output): refused before they are drawn when they could not fit, instead of
    // failing to allocate mid-draw.
    const int64_t pmax = p["prompt_tokens_max"], omax = p["output_tokens_max"];
    const double ids_bytes =
        static_cast<double>(count) * static_cast<double>(2 * pmax + omax) * sizeof(int64_t);
    const uint64_t available = available_memory_bytes();
    const bool by_duration = p["duration_s"].get<double>() > 0;
    KVB_CHECK(available == 0 || ids_bytes <= static_cast<double>(available), "serving: ", count,
              " requests of up to ", pmax, " prompt and ", omax, " output tokens hold up to ",
              format_bytes(ids_bytes),
              " of token ids (the workload and its running copy), more than the ",
              format_bytes(static_cast<double>(available)), " available; lower ",
              by_duration ? "rates or duration_s" : "requests", " or prompt_tokens_max");
  }
  const Workload w = make_workload(p, count, c.vocab_size, ctx.spec.seed, &ctx.model);
  if (from_trace) {
    // Replayed from its first arrival: the lead-in before it is not serving time, and every
    // time reported is from the first arrival (a trace's may start at 100 s).
    arrivals = {w.trace_arrivals};
    for (double& a : arrivals[0]) a -= w.trace_arrivals.front();
    const double span = w.trace_arrivals.back() - w.trace_arrivals.front();
    // The trace's mean arrival rate, reported as its record's rate (0: all at once).
    rates = {span > 0 ? static_cast<double>(w.trace_arrivals.size() - 1) / span : 0.0};
  }
  SchedulerConfig sched = scheduler_config(p, ctx.method, c.num_layers, w.longest(),
                                           ctx.model.kv_dtype(), ctx.spec.attention == "paged");
  auto cache = make_cell_cache(ctx);
  // What the cache holds for each slot beside the pages (KIVI's rings, fp8's scales, GEAR's
  // exact buffers, a last page past the blocks), as its pool reserves it.
  const double slot_bytes = static_cast<double>(cache->slot_bytes(block_size));
  // The format's per-sequence window (KIVI's residual off the paged cache), charged to every
  // running sequence.
  sched.window_blocks =
      method_window_blocks(ctx.method, c, ctx.model.kv_dtype(), block_size, block_bytes,
                           w.longest(), ctx.spec.attention == "paged", slot_bytes);
  SloThresholds slo;
  slo.ttft_s = p["slo_ttft_s"];
  slo.tpot_s = p["slo_tpot_s"];
  slo.e2e_s = p["slo_e2e_s"];
  // What the cache holds before any sequence (a low-rank codec's fitted bases) the budget holds
  // once, and what it holds for each slot once per slot, before its blocks.
  const double shared = static_cast<double>(cache->bytes());
  const double per_block = block_bytes + retention_block_bytes;
  // What the layers being prefilled keep beyond their held rate (the record of a policy that
  // selects once after the prefill), per context token, for the most tokens a step prefills:
  // set aside once, as a paged pool's pages are all reserved for blocks.
  const double prefill_retention = method_prefill_retention_bytes(
      ctx.method, c, ctx.model.kv_dtype(), ctx.spec.attention == "paged",
      CacheLayout::kernel_path(ctx.spec.device == "cuda"));
  const int64_t running_at_most = std::min<int64_t>(sched.max_running, w.prompts.size());
  const double prefill_reserve =
      prefill_retention *
      static_cast<double>(std::min(sched.max_batch_tokens, w.longest() * running_at_most));
  std::vector<std::string> beside;
  if (shared > 0) beside.push_back("shared state (" + format_bytes(shared) + ": its fitted bases)");
  if (slot_bytes > 0)
    beside.push_back("what one sequence's slot holds beside its blocks (" +
                     format_bytes(slot_bytes) + ")");
  if (prefill_reserve > 0)
    beside.push_back("what a step's prefills record (" + format_bytes(prefill_reserve) + ")");
  KVB_CHECK(beside.empty() || budget - shared - slot_bytes - prefill_reserve >= per_block,
            "serving: a KV budget of ", format_bytes(budget), " holds, beside the method's ",
            join(beside, " and "), ", no block of ", format_bytes(per_block),
            "; raise kv_budget_bytes or kv_budget_fraction");
  const PoolSizing sizing =
      size_pool(budget - shared - prefill_reserve, slot_bytes, per_block, sched.window_blocks,
                running_at_most, w.mean_blocks(block_size, sched));
  const int64_t num_blocks = sizing.blocks;
  // Every request is checked before any is served or the pool reserved: one that could never
  // run, even alone, fails the cell now, naming its trace line, not when it arrives.
  {
    BlockPool pool(num_blocks, block_size);
    const Scheduler s(pool, sched);
    for (size_t i = 0; i < w.prompts.size(); ++i)
      s.check_admissible({static_cast<int64_t>(i), 0.0, static_cast<int64_t>(w.prompts[i].size()),
                          w.output_len[i]},
                         w.trace_lines.empty() ? "serving: request " + std::to_string(i)
                                               : "serving: trace_file: " + w.trace_lines[i]);
  }
  // Sequences beyond the slots would hold rings the budget has no room for.
  if (slot_bytes > 0) sched.max_running = std::min(sched.max_running, sizing.slots);
  const double reserved = shared + prefill_reserve + static_cast<double>(sizing.slots) * slot_bytes;
  // The pool's tokens and a slot for every sequence that can run at once, reserved before any
  // runs: a paged pool holds the budget's pages from the start (as vLLM sizes its pool once)
  // instead of growing while requests arrive.
  // (A running request holds at least one block and its window's, which pay for what is not
  // its tokens' pages: Quest's bounds past a block. A last page past its blocks is its slot's,
  // which reserve_pool adds.)
  cache->reserve_pool(sizing.slots,
                      std::max<int64_t>(num_blocks - sched.window_blocks, 1) * block_size,
                      block_size, w.longest());

  // Warm-up (untimed): one short request through the same path, so first-call costs
  // (allocator, thread pool) stay out of the first rate's numbers.
  {
    BlockPool pool(num_blocks, block_size);
    Scheduler s(pool, sched);
    Workload one;  // request 0 alone: not a copy of every prompt
    one.prompts = {w.prompts[0]};
    one.output_len = {w.output_len[0]};
    NullProgress quiet;
    ModelExecutor ex(model, *cache, one, quiet);
    ManualClock clock;
    run_serving({{0, 0.0, static_cast<int64_t>(w.prompts[0].size()),
                  std::min<int64_t>(w.output_len[0], 4)}},
                s, ex, clock);
  }

  CellOutput out;
  // GEAR compresses a block at every chunk that fills its buffer, each with its own factors:
  // the charge bounds a prefill then decode steps, not chunks (measured_bytes_peak says).
  if (sched.chunked_prefill &&
      dynamic_cast<const GearCodec*>(make_codec(ctx.method, ctx.model.kv_dtype()).get()))
    out.warnings.push_back(
        "serving: " + ctx.method.value("name", std::string("gear")) +
        " with chunked_prefill forms a block per chunk, which the pool's charge (a prefill, then "
        "decode steps) does not bound: compare kv.measured_bytes_peak with kv.pool_bytes_peak");
  json per_rate = json::array();
  size_t total = 0;
  for (const auto& a : arrivals) total += a.size();
  ctx.progress.begin(ctx.cell_id, total);
  for (size_t ri = 0; ri < rates.size(); ++ri) {
    const double rate = rates[ri];
    std::vector<ServingRequest> reqs;
    for (size_t i = 0; i < arrivals[ri].size(); ++i) {
      reqs.push_back({static_cast<int64_t>(i), arrivals[ri][i],
                      static_cast<int64_t>(w.prompts[i].size()), w.output_len[i]});
    }
    BlockPool pool(num_blocks, block_size);
    Scheduler s(pool, sched);
    ModelExecutor ex(model, *cache, w, ctx.progress);
    SkippingWallClock clock;
    ServingTrace trace =
        run_serving(reqs, s, ex, clock, false, p["max_concurrency"].get<int64_t>());
    KVB_CHECK(pool.free_blocks() == pool.num_blocks(), "serving: ", pool.used_blocks(),
              " blocks still held after every request finished");
    json m = serving_metrics(trace, slo, block_bytes, reserved);
    std::vector<double> ttft, e2e;
    json per_request = json::array();
    for (const auto& r : trace.requests) {
      ttft.push_back(r.token_times_s.front() - r.sent_s());
      e2e.push_back(r.token_times_s.back() - r.sent_s());
      per_request.push_back({{"id", r.request.id},
                             {"arrival_s", r.request.arrival_s},
                             {"client_wait_s", r.client_wait_s},
                             {"prompt_tokens", r.request.prompt_tokens},
                             {"output_tokens", r.request.output_tokens},
                             {"ttft_s", ttft.back()},
                             {"e2e_s", e2e.back()},
                             {"preemptions", r.preemptions}});
    }
    // (At rate 0 every request comes at time 0: no gaps drawn, whatever the burstiness.)
    const bool gamma = p["burstiness"].get<double>() != 1 && rate > 0;
    const std::string arrivals_kind = from_trace ? "trace" : gamma ? "gamma" : "poisson";
    m["offered_rate"] = from_trace
                            ? (rate > 0 ? json(rate) : json())
                            : offered_rate(arrivals[ri], rate, p["duration_s"].get<double>());
    json record = {{"kind", "serving"}, {"rate", rate},           {"arrivals", arrivals_kind},
                   {"samples_s", e2e},  {"ttft_samples_s", ttft}, {"requests_detail", per_request}};
    record.update(m);
    out.records.push_back(record);
    json row = m;
    row["rate"] = rate;
    row["arrivals"] = arrivals_kind;
    per_rate.push_back(row);
    if (m["preemptions"].get<int64_t>() > 0) {
      out.warnings.push_back("rate " + format_fixed(rate, 2) + ": " +
                             std::to_string(m["preemptions"].get<int64_t>()) +
                             " preemptions (KV pool exhausted; requests recomputed)");
    }
  }
  ctx.progress.end();
  if (!from_trace) warn_off_rate(per_rate, out.warnings);

  out.summary = {{"rates", rates},
                 {"requests", w.prompts.size()},
                 {"source", w.source},
                 {"duration_s", p["duration_s"]},
                 {"block_size", block_size},
                 {"bytes_per_block", block_bytes},
                 {"retention_bytes_per_block", retention_block_bytes},
                 {"prefill_retention_bytes_per_token", prefill_retention},
                 {"prefill_retention_reserve_bytes", prefill_reserve},
                 {"kv_budget_bytes", budget},
                 {"shared_bytes", shared},
                 {"slot_bytes", slot_bytes},
                 {"slots", sizing.slots},
                 {"num_blocks", num_blocks},
                 {"pool_tokens", num_blocks * block_size},
                 {"retention_budget", sched.retention_budget},
                 {"window_blocks", sched.window_blocks},
                 {"max_batch_tokens", sched.max_batch_tokens},
                 {"max_running", sched.max_running},
                 {"max_concurrency", p["max_concurrency"]},
                 {"chunked_prefill", sched.chunked_prefill},
                 {"prefill_chunk_tokens", sched.prefill_chunk_tokens},
                 {"per_rate", per_rate}};
  if (w.source == "sharegpt") {
    out.summary["sharegpt_conversations"] = w.conversations;
    out.summary["sharegpt_skipped"] = w.skipped;
  }
  return out;
}

Table ServingSuite::summary_table(const CellOutput& output) const {
  Table t;
  // rate/s: nominal ("burst": every request at 0); arrived/s: what the seeded arrivals gave;
  // out tok/s: generated tokens; pool tokens: what the method's KV budget holds.
  t.columns = {"rate/s",    "arrived/s",       "req/s",           "out tok/s",
               "goodput/s", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "e2e p50/p99 s",
               "KV peak",   "pool tokens",     "preempt"};
  auto pair_ms = [](const json& s) {
    if (s.is_null()) return std::string("-");
    return format_fixed(s["p50"].get<double>() * 1e3, 1) + " / " +
           format_fixed(s["p99"].get<double>() * 1e3, 1);
  };
  // Under a client limit, the waits before each send (outside TTFT) get their column.
  const bool limited = output.summary.value("max_concurrency", int64_t{0}) > 0;
  if (limited) t.columns.insert(t.columns.begin() + 5, "wait p50/p99 ms");
  for (const auto& r : output.summary["per_rate"]) {
    const double rate = r["rate"].get<double>();
    t.rows.push_back({rate == 0 ? std::string("burst") : format_fixed(rate, 2),
                      r.value("offered_rate", json()).is_number()
                          ? format_fixed(r["offered_rate"].get<double>(), 2)
                          : std::string("-"),
                      format_fixed(r["request_throughput"].get<double>(), 2),
                      format_fixed(r["token_throughput"].get<double>(), 1),
                      format_fixed(r["goodput"]["requests_per_s"].get<double>(), 2),
                      pair_ms(r["ttft_s"]), pair_ms(r["tpot_s"]),
                      format_fixed(r["e2e_s"]["p50"].get<double>(), 2) + " / " +
                          format_fixed(r["e2e_s"]["p99"].get<double>(), 2),
                      format_bytes(r["kv"]["pool_bytes_peak"].get<double>()),
                      std::to_string(output.summary["pool_tokens"].get<int64_t>()),
                      std::to_string(r["preemptions"].get<int64_t>())});
    if (limited) t.rows.back().insert(t.rows.back().begin() + 5, pair_ms(r["client_wait_s"]));
  }
  return t;
}

void check_serving_method(const json& params, const json& method, const std::string&) {
  if (!params["chunked_prefill"].get<bool>()) return;
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(method);
  RetentionInput in;  // the run asks at the longest context; a policy that never evicts is fine
  in.num_layers = 1;
  in.length =
      params["prompt_tokens_max"].get<int64_t>() + params["output_tokens_max"].get<int64_t>();
  in.prompt = params["prompt_tokens_max"].get<int64_t>();
  if (policy->budget(in) == INT64_MAX) return;
  check_chunkable(method, *policy, at::kFloat);  // whether codes span tokens: any dtype
}

}  // namespace kvbench
