#include "kvbench/report/compare.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/report/report_reader.h"

namespace kvbench {
namespace {

using json = nlohmann::json;

// What one metric reads from one point of a cell: raw samples (timings) or a value.
struct Series {
  std::vector<double> samples;
  double value = 0;
  double rate_scale = 0;  // > 0: the metric is rate_scale / median(samples) (tokens/s)
  size_t block = 1;       // samples come in correlated runs of this many (bootstrap_median_ci)
  bool moving = false;    // ... in moving blocks of this many (SampleRun::moving)
  double floor = -1;      // >= 0: this point's absolute floor, in place of the metric's
};
using Points = std::map<std::string, Series>;  // point label -> series
using Extract = std::function<Points(const json& cell)>;

struct MetricImpl {
  CompareMetric spec;
  Extract extract;
};

std::vector<double> samples_of(const json& r, const char* key) {
  std::vector<double> out;
  for (const json& v : r.value(key, json::array())) {
    if (v.is_number()) out.push_back(v.get<double>());
  }
  return out;
}

std::string point_label(const json& r, const std::vector<std::string>& keys) {
  std::vector<std::string> parts;
  for (const std::string& k : keys) parts.push_back(k + "=" + r.value(k, json()).dump());
  return join(parts, " ");
}

// Samples of one latency generation move together (its batch shares every step; a request's
// ITL gaps share its context), so they are resampled as one unit: the record's
// samples_per_generation, or for older reports samples / (requests / batch) from the summary;
// single samples when that does not divide them.
size_t generation_block(const json& cell, const json& record, size_t samples) {
  if (samples == 0) return 1;  // (no samples: "missing", judged elsewhere)
  const json given = record.value("samples_per_generation", json());
  size_t block = 1;
  if (given.is_number_integer() && given.get<int64_t>() > 0) {
    block = given.get<size_t>();
  } else {
    const json& s = cell.value("summary", json::object());
    const json requests = s.value("requests", json()), batch = s.value("batch", json(1));
    if (requests.is_number_integer() && batch.is_number_integer() && batch.get<int64_t>() > 0 &&
        requests.get<int64_t>() > 0 && requests.get<int64_t>() % batch.get<int64_t>() == 0) {
      const size_t generations = size_t(requests.get<int64_t>() / batch.get<int64_t>());
      if (samples % generations == 0) block = samples / generations;
    }
  }
  return block > 0 && samples % block == 0 ? block : 1;
}

// A record's own samples_per_generation when it divides its `samples` (throughput's decode
// steps), else 1 (reports from before the key).
size_t declared_block(const json& record, size_t samples) {
  const json given = record.value("samples_per_generation", json());
  if (!given.is_number_integer() || given.get<int64_t>() <= 0) return 1;
  const size_t block = given.get<size_t>();
  return samples % block == 0 ? block : 1;
}

// A latency record kind ("tpot") as one timing series for the cell.
Extract latency_kind(const std::string& kind) {
  return [kind](const json& cell) {
    Points out;
    for (const json& r : cell.value("records", json::array())) {
      if (r.value("kind", "") != kind) continue;
      Series s{samples_of(r, "samples_s")};
      s.block = generation_block(cell, r, s.samples.size());
      out[""] = s;
    }
    return out;
  };
}

using Label = std::function<std::string(const json& record)>;

// Records of `kind`, one series per point named by `label`; `make` builds the series.
Extract per_record(const std::string& kind, Label label,
                   std::function<bool(const json&, Series&)> make) {
  return [kind, label, make](const json& cell) {
    Points out;
    for (const json& r : cell.value("records", json::array())) {
      Series s;
      if (r.value("kind", "") == kind && make(r, s)) out[label(r)] = s;
    }
    return out;
  };
}

Extract per_record(const std::string& kind, const std::vector<std::string>& keys,
                   std::function<bool(const json&, Series&)> make) {
  return per_record(
      kind, [keys](const json& r) { return point_label(r, keys); }, std::move(make));
}

Extract summary_value(const std::string& key) {
  return [key](const json& cell) {
    Points out;
    const json& s = cell.value("summary", json::object());
    if (s.contains(key) && s[key].is_number()) out[""].value = s[key].get<double>();
    return out;
  };
}

const std::vector<std::string> kThroughputPoint = {"batch", "prompt_tokens", "new_tokens"};
const std::vector<std::string> kKernelPoint = {"context", "kv_heads"};
// A trace's rate is measured from its arrivals, so a trace run's one record is its point.
// Records before 2026-11-30 have no "arrivals": all were Poisson then.
std::string serving_point(const json& r) {
  const json keyed = {{"rate", r.value("rate", json())},
                      {"arrivals", r.value("arrivals", std::string("poisson"))}};
  if (keyed["arrivals"] == "trace") return point_label(keyed, {"arrivals"});
  return point_label(keyed, {"rate", "arrivals"});
}
// Serving's kv_bytes: the format's bytes per block (point ""), and what the budget charges per
// block once the retention policy's bookkeeping is counted. The second is its own point so that
// a baseline written before retention_bytes_per_block still compares the first (the second is
// then noted as only in the new report) rather than reading every evicting method as grown.
constexpr const char* kServingChargePoint = "charged_per_block";

Points serving_block_bytes(const json& cell) {
  Points out = summary_value("bytes_per_block")(cell);
  const json& s = cell.value("summary", json::object());
  const auto retention = s.find("retention_bytes_per_block");
  if (out.count("") && retention != s.end() && retention->is_number())
    out[kServingChargePoint].value = out[""].value + retention->get<double>();
  return out;
}

const std::vector<std::string> kPredictorPoint = {"role", "batch", "context"};

// A number inside a record (`goodput.fraction`), when present.
std::function<bool(const json&, Series&)> record_value(const json::json_pointer& at) {
  return [at](const json& r, Series& s) {
    if (!r.contains(at) || !r[at].is_number()) return false;
    s.value = r[at].get<double>();
    return true;
  };
}

// A serving record's goodput fraction, with a floor of two of its requests.
bool goodput_fraction(const json& r, Series& s) {
  if (!record_value(json::json_pointer("/goodput/fraction"))(r, s)) return false;
  if (r.contains("requests") && r["requests"].is_number() && r["requests"].get<double>() > 0)
    s.floor = 2.0 / r["requests"].get<double>();
  return true;
}

std::function<bool(const json&, Series&)> record_samples(const char* key) {
  return [key](const json& r, Series& s) {
    s.samples = samples_of(r, key);
    return true;
  };
}

// A serving record's per-request samples, in arrival order: one request's queueing delays the
// next, so they are resampled in moving blocks (SampleRun::moving), not as independent draws,
// which would make the interval too narrow.
std::function<bool(const json&, Series&)> request_samples(const char* key) {
  return [key](const json& r, Series& s) {
    s.samples = samples_of(r, key);
    s.block = moving_block_length(s.samples.size());
    s.moving = true;
    return true;
  };
}

// A max_concurrency serving record's TTFT as its client sees it: each request's wait before
// the send plus its TTFT (requests_detail), resampled as request_samples'. A record without the
// limit has no wait, and serving_ttft already judges it.
bool client_ttft_samples(const json& r, Series& s) {
  if (!r.contains("max_concurrency") || !r.contains("requests_detail")) return false;
  for (const json& q : r["requests_detail"]) {
    if (!q.is_object()) return false;
    const json wait = q.value("client_wait_s", json()), ttft = q.value("ttft_s", json());
    if (!wait.is_number() || !ttft.is_number()) return false;
    s.samples.push_back(wait.get<double>() + ttft.get<double>());
  }
  s.block = moving_block_length(s.samples.size());
  s.moving = true;
  return !s.samples.empty();
}

// record_samples resampled by the record's generations (declared_block): the decode steps of
// one generation share its batch and context.
std::function<bool(const json&, Series&)> record_samples_by_generation(const char* key) {
  return [key](const json& r, Series& s) {
    s.samples = samples_of(r, key);
    s.block = declared_block(r, s.samples.size());
    return true;
  };
}

const std::vector<MetricImpl>& metric_impls() {
  static const std::vector<MetricImpl> impls = {
      {{"ttft", "latency", true, Worse::kHigher, 10, 0, "time to first token (ttft records)"},
       latency_kind("ttft")},
      {{"tpot", "latency", true, Worse::kHigher, 5, 0, "time per output token (tpot records)"},
       latency_kind("tpot")},
      {{"itl", "latency", true, Worse::kHigher, 10, 0, "inter-token latency (itl records)"},
       latency_kind("itl")},
      {{"e2e", "latency", true, Worse::kHigher, 5, 0, "end-to-end request latency (e2e records)"},
       latency_kind("e2e")},
      {{"decode_tok_s", "throughput", true, Worse::kLower, 5, 0,
        "decode tokens/s per point: batch / decode step times (samples_s)"},
       per_record("throughput", kThroughputPoint,
                  [](const json& r, Series& s) {
                    s.rate_scale = r.value("batch", 1.0);
                    return record_samples_by_generation("samples_s")(r, s);
                  })},
      {{"prefill_tok_s", "throughput", true, Worse::kLower, 10, 0,
        "prefill tokens/s per point: batch x prompt_tokens / prefill times (prefill_samples_s)"},
       per_record("throughput", kThroughputPoint,
                  [](const json& r, Series& s) {
                    s.samples = samples_of(r, "prefill_samples_s");
                    s.rate_scale = r.value("batch", 1.0) * r.value("prompt_tokens", 1.0);
                    return true;
                  })},
      {{"attention_step", "kernels", true, Worse::kHigher, 10, 0,
        "decode-attention step time per context x kv_heads (decode_attention samples_s)"},
       per_record("decode_attention", kKernelPoint, record_samples("samples_s"))},
      {{"kv_bytes", "latency", false, Worse::kHigher, 1, 0,
        "measured KV bytes: latency kv_bytes_peak"},
       summary_value("kv_bytes_peak")},
      {{"kv_bytes", "throughput", false, Worse::kHigher, 1, 0,
        "measured KV bytes: throughput kv_bytes per point"},
       per_record("throughput", kThroughputPoint,
                  [](const json& r, Series& s) {
                    s.value = r.value("kv_bytes", 0.0);
                    return r.contains("kv_bytes");
                  })},
      {{"kv_bytes", "kernels", false, Worse::kHigher, 1, 0,
        "measured KV bytes: kernels working_set_bytes per point"},
       per_record("decode_attention", kKernelPoint,
                  [](const json& r, Series& s) {
                    s.value = r.value("working_set_bytes", 0.0);
                    return r.contains("working_set_bytes");
                  })},
      {{"kv_bytes", "serving", false, Worse::kHigher, 1, 0,
        "KV bytes per pool block: serving bytes_per_block (the format's, not the timing-dependent "
        "peak), and the budget's charge per block with the retention bookkeeping (point " +
            std::string(kServingChargePoint) + ": bytes_per_block + retention_bytes_per_block)"},
       serving_block_bytes},
      {{"serving_ttft", "serving", true, Worse::kHigher, 10, 0,
        "time to first token per rate, the server's queueing included (a max_concurrency client's "
        "wait before the send is not; serving ttft_samples_s)"},
       per_record("serving", serving_point, request_samples("ttft_samples_s"))},
      {{"serving_client_ttft", "serving", true, Worse::kHigher, 10, 0,
        "with max_concurrency: time to first token from each request's arrival, the client's "
        "wait for a free slot included (serving requests_detail client_wait_s + ttft_s)"},
       per_record("serving", serving_point, client_ttft_samples)},
      {{"serving_e2e", "serving", true, Worse::kHigher, 10, 0,
        "end-to-end request latency per rate (serving samples_s)"},
       per_record("serving", serving_point, request_samples("samples_s"))},
      // Measured from timings but without samples: the floor keeps two requests that cross an
      // SLO from failing a build (2 / requests of the record; 0.1 where it has no count).
      {{"goodput", "serving", false, Worse::kLower, 10, 0.1,
        "share of requests meeting the SLOs per rate (serving goodput.fraction); changes of at "
        "most two requests are within the floor"},
       per_record("serving", serving_point, goodput_fraction)},
      {{"predictor_step", "predictor", true, Worse::kHigher, 10, 0,
        "decode step time per batch x context (step_profile samples_s)"},
       per_record("step_profile", kPredictorPoint, record_samples_by_generation("samples_s"))},
      {{"predictor_accuracy", "predictor", false, Worse::kLower, 5, 0.05,
        "held-out accuracy of the chosen step-time predictor (summary accuracy_mean)"},
       summary_value("accuracy_mean")},
      {{"kl_mean", "fidelity", false, Worse::kHigher, 20, 1e-6, "mean KL(full || method) in nats"},
       summary_value("kl_mean")},
      {{"top1_agreement", "fidelity", false, Worse::kLower, 5, 0,
        "share of steps whose argmax agrees with the full cache"},
       summary_value("top1_agreement")},
      {{"ppl_ratio", "fidelity", false, Worse::kHigher, 5, 0, "perplexity ratio method / full"},
       summary_value("ppl_ratio")},
      {{"length_ratio", "output_length", false, Worse::kEither, 10, 0,
        "mean output length ratio method / full (a change either way)"},
       summary_value("length_ratio")},
      {{"mean_score", "accuracy", false, Worse::kLower, 5, 0.01,
        "accuracy suite: mean per-sample score"},
       summary_value("mean_score")},
      {{"runaway_rate", "output_length", false, Worse::kHigher, 50, 0.05,
        "share of generations that hit the length cap"},
       summary_value("runaway_rate")},
  };
  return impls;
}

// Why two matched cells were given different prompts, or "": scores and lengths from other
// prompts are not one measurement. An accuracy cell's `chat_format: auto` is in its id, but what
// it resolved to (the summary's chat_format, since session 60) depends on the checkpoint's
// template; and records name each sample's prompt by its ids' hash (prompt_hash), which another
// tokenizer, a prompt cut to another length or another wrapper changes.
std::string prompts_differ(const json& base, const json& cand) {
  const json fb = base.value("summary", json::object()).value("chat_format", json());
  const json fc = cand.value("summary", json::object()).value("chat_format", json());
  if (fb.is_string() && fc.is_string() && fb != fc)
    return "scored with chat format " + fb.get<std::string>() + " in the baseline and " +
           fc.get<std::string>() + " in the new report";
  auto hashes = [](const json& cell) {
    std::map<std::string, std::string> out;
    for (const json& r : cell.value("records", json::array())) {
      if (!r.is_object()) continue;
      const json id = r.value("id", json()), hash = r.value("prompt_hash", json());
      if (id.is_string() && hash.is_string()) out[id.get<std::string>()] = hash.get<std::string>();
    }
    return out;
  };
  const std::map<std::string, std::string> hb = hashes(base), hc = hashes(cand);
  size_t shared = 0, differ = 0;
  for (const auto& [id, hash] : hb) {
    const auto it = hc.find(id);
    if (it == hc.end()) continue;
    ++shared;
    differ += it->second != hash;
  }
  if (differ == 0) return "";
  return "the prompts of " + std::to_string(differ) + " of " + std::to_string(shared) +
         " samples differ (prompt_hash: another tokenizer, chat format or prompt cut)";
}

std::set<std::string> metric_names() {
  std::set<std::string> names;
  for (const MetricImpl& m : metric_impls()) names.insert(m.spec.name);
  return names;
}

std::string match_key(const json& cell, const CompareOptions& options) {
  json parts = {{"method", cell["method"]}, {"params", cell.value("params", json::object())}};
  if (options.canonical) {
    try {
      parts = options.canonical(cell);
    } catch (const std::exception&) {
      // A parameter this version no longer knows: the cell matches only its like.
    }
  }
  return cell.value("suite", "") + "|" + parts["method"].dump() + "|" + parts["params"].dump();
}

double relative(double base, double cand) {
  if (base != 0) return (cand - base) / std::fabs(base);
  if (cand == base) return 0;
  return cand > base ? std::numeric_limits<double>::infinity()
                     : -std::numeric_limits<double>::infinity();
}

// Whether an interval of relative change lies entirely beyond the threshold on the bad side
// (regressed) or on the good side (improved).
void judge(MetricComparison& c, Worse worse) {
  const double t = c.threshold_pct / 100;
  const bool up = c.change_ci.low > t, down = c.change_ci.high < -t;
  switch (worse) {
    case Worse::kHigher:
      c.regressed = up, c.improved = down;
      break;
    case Worse::kLower:
      c.regressed = down, c.improved = up;
      break;
    case Worse::kEither:
      c.regressed = up || down;
      break;
  }
}

// Below this many samples a side, a bootstrap interval is a few order statistics.
constexpr size_t kFewSamples = 10;

// With one run a side (or one where a cell is ok), a timing's interval holds the noise within
// that run only.
constexpr const char* kOneRunNote =
    "one run on a side: timing intervals hold the noise within a run, not between runs, and "
    "separate runs of one binary can differ by more than the thresholds (the 2-core CI machine "
    "shifts between speeds 1.45x apart: docs/report-and-compare.md); to gate on timings give "
    "each side a directory of repeated runs, interleaved with the other side's";

// One point of one side: its series in every run of that side (one report per run).
using RunSeries = std::vector<Series>;

std::vector<double> pooled_samples(const RunSeries& runs) {
  std::vector<double> out;
  for (const Series& s : runs) out.insert(out.end(), s.samples.begin(), s.samples.end());
  return out;
}

double median_value(const RunSeries& runs) {
  std::vector<double> values;
  for (const Series& s : runs) values.push_back(s.value);
  return median(values);
}

std::vector<SampleRun> sample_runs(const RunSeries& runs) {
  std::vector<SampleRun> out;
  for (const Series& s : runs) out.push_back({s.samples, s.block, s.moving});
  return out;
}

// Timings: the medians of each side's samples pooled over its runs, and the interval of
// bootstrap_median_change_ci_runs drawing runs, then blocks within them. Point values: the median
// over the runs (one run: its value).
MetricComparison compare_series(const CompareMetric& m, const RunSeries& b, const RunSeries& n,
                                const CompareOptions& opt) {
  MetricComparison c;
  c.metric = m.name;
  c.timing = m.timing;
  c.threshold_pct = opt.thresholds.at(m.name);
  if (!m.timing) {
    c.baseline = median_value(b), c.candidate = median_value(n);
    c.change = relative(c.baseline, c.candidate);
    c.change_ci = {c.change, c.change};
    judge(c, m.worse);
    // A point's own floor (two of its requests), the widest any run of either side gives;
    // the metric's where none does.
    double floor = -1;
    for (const RunSeries* side : {&b, &n})
      for (const Series& s : *side) floor = std::max(floor, s.floor);
    if (floor < 0) floor = m.abs_floor;
    // With rounding slack: fractions written as good / n differ by a hair more than 2 / n when
    // two requests changed (0.9 - 0.7 > 2 / 10 in doubles).
    if (std::fabs(c.candidate - c.baseline) <= floor * (1 + 1e-9)) c.regressed = c.improved = false;
    return c;
  }
  const double mb = median(pooled_samples(b)), mn = median(pooled_samples(n));
  const Interval d = bootstrap_median_change_ci_runs(sample_runs(b), sample_runs(n), opt.confidence,
                                                     opt.resamples, opt.seed);
  const double x = (mn - mb) / mb, lo = d.low, hi = d.high;  // relative time change
  if (b[0].rate_scale > 0) {
    // A rate r = scale / t changes by 1 / (1 + x) - 1 when t changes by x; decreasing in x.
    c.baseline = b[0].rate_scale / mb, c.candidate = n[0].rate_scale / mn;
    c.change = 1 / (1 + x) - 1;
    c.change_ci = {1 / (1 + hi) - 1, 1 / (1 + lo) - 1};
  } else {
    c.baseline = mb, c.candidate = mn;
    c.change = x;
    c.change_ci = {lo, hi};
  }
  judge(c, m.worse);
  return c;
}

}  // namespace

const std::vector<CompareMetric>& compare_metrics() {
  static const std::vector<CompareMetric> specs = [] {
    std::vector<CompareMetric> out;
    for (const MetricImpl& m : metric_impls()) out.push_back(m.spec);
    return out;
  }();
  return specs;
}

std::map<std::string, double> parse_thresholds(const std::vector<std::string>& args) {
  std::map<std::string, double> t;
  for (const MetricImpl& m : metric_impls()) t[m.spec.name] = m.spec.default_pct;
  const std::set<std::string> names = metric_names();
  const std::string valid = join({names.begin(), names.end()}, ", ");
  for (const std::string& a : args) {
    const size_t eq = a.find('=');
    KVB_CHECK(eq != std::string::npos, "--threshold ", a, ": expected METRIC=PCT or METRIC=off");
    const std::string name = a.substr(0, eq), value = a.substr(eq + 1);
    KVB_CHECK(names.count(name), "--threshold ", a, ": unknown metric '", name,
              "' (metrics: ", valid, ")");
    if (value == "off") {
      t.erase(name);
      continue;
    }
    size_t used = 0;
    double pct = -1;
    // A plain decimal number (std::stod alone would take " 5", "0x10" and "1e3").
    const bool decimal = !value.empty() &&
                         value.find_first_not_of("0123456789.") == std::string::npos &&
                         std::count(value.begin(), value.end(), '.') <= 1 && value != ".";
    try {
      if (decimal) pct = std::stod(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    KVB_CHECK(used == value.size() && used > 0 && std::isfinite(pct) && pct >= 0, "--threshold ", a,
              ": expected a percentage >= 0 or off, got '", value, "'");
    t[name] = pct;
  }
  return t;
}

size_t CompareResult::regressions() const {
  size_t n = newly_failed.size() + missing.size();
  for (const MetricComparison& c : comparisons) n += c.regressed;
  return n;
}

namespace {

// What two reports' cells must share to be matched when their ids differ (ids also change with
// the thread count or the model's path, which a CI machine may not keep): the attention
// backend, the device, and the model's shape and dtypes.
json report_setup(const json& doc) {
  const json config = doc.value("config", json::object());
  const json model = doc.value("model", json::object());
  return {{"attention", config.value("attention", json())},
          {"device", config.value("device", json())},
          {"model", model.value("config", json())},
          {"compute_dtype", model.value("compute_dtype", json())},
          {"kv_dtype", model.value("kv_dtype", json())}};
}

// What two reports' configs differ in among what their cells' ids hash (the thread count, the
// model's entry: its path, say; the code path's variables), leaf by leaf: what cells matched by
// parameters with differing ids stand on. With those alike the ids differ by the inputs'
// contents (a checkpoint's or data file's fingerprint, which the reports do not hold).
std::string config_difference(const json& baseline, const json& candidate) {
  const json b = baseline.value("config", json::object()),
             n = candidate.value("config", json::object());
  auto shown = [](const json* v) {
    const std::string d = v == nullptr || v->is_null() ? std::string("(none)") : v->dump();
    return d.size() > 80 ? d.substr(0, 77) + "..." : d;
  };
  std::vector<std::string> differ;
  for (const char* key : {"threads", "device", "attention", "model"}) {
    const json bv = b.value(key, json()), nv = n.value(key, json());
    if (bv == nv) continue;
    if (!bv.is_object() || !nv.is_object()) {
      differ.push_back(std::string(key) + " " + shown(&bv) + " vs " + shown(&nv));
      continue;
    }
    std::set<std::string> paths;  // the leaves that differ ("/path", "/rope_scaling/factor")
    for (const json& op : json::diff(bv, nv)) paths.insert(op["path"].get<std::string>());
    for (const std::string& path : paths) {
      const json::json_pointer at(path);
      const json* from = bv.contains(at) ? &bv[at] : nullptr;
      const json* to = nv.contains(at) ? &nv[at] : nullptr;
      differ.push_back(std::string(key) + replace_all(path, "/", ".") + " " + shown(from) + " vs " +
                       shown(to));
    }
  }
  // The code path (the environment variables that choose it on the run's device and attention)
  // enters ids too: the cells matched may have run other code, which the note names.
  const json bo = report_code_path(baseline), no = report_code_path(candidate);
  if (bo != no) {
    std::set<std::string> keys;
    for (const auto& [k, v] : bo.items()) keys.insert(k);
    for (const auto& [k, v] : no.items()) keys.insert(k);
    for (const std::string& k : keys) {
      const json* from = bo.contains(k) ? &bo[k] : nullptr;
      const json* to = no.contains(k) ? &no[k] : nullptr;
      if (from == nullptr || to == nullptr || *from != *to)
        differ.push_back("environment.overrides." + k + " " + shown(from) + " vs " + shown(to));
    }
  }
  if (differ.empty())
    return "the configs and code paths are alike: the model's or data files' contents differ";
  return join(differ, "; ");
}

// Other work competing for the cores when a report's run started (environment
// competing_threads), or a negative value when the report does not say.
double competing_threads(const json& doc) {
  const json t = doc.value("environment", json::object()).value("competing_threads", json());
  return t.is_number() ? t.get<double>() : -1;
}

// A side's runs, one report each, read where they are (reports can be large: no copies).
using Runs = std::vector<const json*>;

Runs runs_of(const std::vector<json>& docs) {
  Runs out;
  for (const json& doc : docs) out.push_back(&doc);
  return out;
}

// The most competing threads any run of a side saw (negative when none says).
double competing_threads(const Runs& runs) {
  double most = -1;
  for (const json* doc : runs) most = std::max(most, competing_threads(*doc));
  return most;
}

std::string busy_note(double b, double n) {
  if (b < 1 && n < 1) return "";
  auto say = [](double t) { return t < 0 ? std::string("unknown") : format_fixed(t, 1); };
  return "other work competed for the cores (threads runnable at the start: baseline " + say(b) +
         ", new " + say(n) + "): timing changes may come from the machine, not the change";
}

// Each run of a side must repeat one config: the same cell ids as its first run.
void check_same_cells(const Runs& runs, const char* side) {
  KVB_CHECK(!runs.empty(), "compare: no ", side, " report");
  std::set<std::string> first;
  for (const json& c : (*runs[0])["cells"]) first.insert(c["id"].get<std::string>());
  for (size_t r = 1; r < runs.size(); ++r) {
    std::set<std::string> ids;
    for (const json& c : (*runs[r])["cells"]) ids.insert(c["id"].get<std::string>());
    KVB_CHECK(ids == first, "compare: the ", side, " reports are not runs of one config: report ",
              r + 1, " of ", runs.size(), " has ", ids.size(), " cell(s), not the ", first.size(),
              " of report 1 (or other ids); repeated runs must use the same config and setup");
  }
}

// The cell with `id` in every run of a side (each run has it: check_same_cells).
std::vector<const json*> cells_with_id(const Runs& runs, const std::string& id) {
  std::vector<const json*> out;
  for (const json* doc : runs)
    for (const json& c : (*doc)["cells"])
      if (c["id"] == id) {
        out.push_back(&c);
        break;
      }
  return out;
}

// The first run of a side whose cell is not ok, or -1.
int first_failed(const std::vector<const json*>& cells) {
  for (size_t r = 0; r < cells.size(); ++r)
    if (cells[r]->value("status", "") != "ok") return int(r);
  return -1;
}

std::vector<const json*> ok_cells(const std::vector<const json*>& cells) {
  std::vector<const json*> out;
  for (const json* c : cells)
    if (c->value("status", "") == "ok") out.push_back(c);
  return out;
}

// A note when the runs of a side come from different builds, empty otherwise: a stale run left
// in a side's directory would mix them silently. A cell's build is its `measured_by` (a cell
// reused by run --resume), else its report's kvbench.git_revision.
std::string mixed_builds_note(const Runs& runs, const char* side) {
  std::set<std::string> revisions;
  for (const json* doc : runs) {
    const std::string own =
        doc->value("kvbench", json::object()).value("git_revision", std::string("unknown"));
    const auto cells = doc->find("cells");  // by reference: reports can be large
    if (cells == doc->end() || !cells->is_array() || cells->empty()) {
      revisions.insert(own);
      continue;
    }
    for (const json& c : *cells) {
      const auto by = c.find("measured_by");
      revisions.insert(by != c.end() && by->is_string() ? by->get<std::string>() : own);
    }
  }
  if (revisions.size() < 2) return "";
  return std::string("the ") + side + " runs come from " + std::to_string(revisions.size()) +
         " builds (git revisions " + join({revisions.begin(), revisions.end()}, ", ") +
         "): a side's runs should repeat one build";
}

// A metric's points in the runs of a side, each with its series from every run that has it.
// `every_run`: only the points every run has (the new side: a run that lacks a point fails
// the gate as a missing point); otherwise those of any run (the baseline: a point one run
// lacks is still what the others measured).
std::map<std::string, RunSeries> run_points(const MetricImpl& m,
                                            const std::vector<const json*>& cells, bool every_run) {
  std::map<std::string, RunSeries> out;
  for (const json* cell : cells)
    for (const auto& [point, series] : m.extract(*cell)) out[point].push_back(series);
  if (every_run)
    for (auto it = out.begin(); it != out.end();)
      it = it->second.size() < cells.size() ? out.erase(it) : std::next(it);
  return out;
}

size_t units(const RunSeries& runs) {
  size_t n = 0;
  for (const Series& s : runs) n += s.samples.size() / s.block;
  return n;
}

bool min_sample_positive(const RunSeries& runs) {
  for (const Series& s : runs)
    if (*std::min_element(s.samples.begin(), s.samples.end()) <= 0) return false;
  return true;
}

bool any_empty(const RunSeries& runs) {
  return std::any_of(runs.begin(), runs.end(), [](const Series& s) { return s.samples.empty(); });
}

}  // namespace

std::string busy_machine_note(const json& baseline, const json& candidate) {
  return busy_note(competing_threads(baseline), competing_threads(candidate));
}

std::string busy_machine_note(const std::vector<json>& baseline,
                              const std::vector<json>& candidate) {
  return busy_note(competing_threads(runs_of(baseline)), competing_threads(runs_of(candidate)));
}

namespace {

CompareResult compare_sides(const Runs& baselines, const Runs& candidates,
                            const CompareOptions& options);

}  // namespace

CompareResult compare_reports(const json& baseline, const json& candidate,
                              const CompareOptions& options) {
  return compare_sides({&baseline}, {&candidate}, options);
}

CompareResult compare_runs(const std::vector<json>& baselines, const std::vector<json>& candidates,
                           const CompareOptions& options) {
  return compare_sides(runs_of(baselines), runs_of(candidates), options);
}

namespace {

CompareResult compare_sides(const Runs& baselines, const Runs& candidates,
                            const CompareOptions& options) {
  check_same_cells(baselines, "baseline");
  check_same_cells(candidates, "new");
  const json &baseline = *baselines[0], &candidate = *candidates[0];
  CompareResult out;
  if (std::string busy = busy_note(competing_threads(baselines), competing_threads(candidates));
      !busy.empty())
    out.notes.push_back(busy);
  for (const auto& [runs, side] : {std::pair{&baselines, "baseline"}, {&candidates, "new"}})
    if (std::string mixed = mixed_builds_note(*runs, side); !mixed.empty())
      out.notes.push_back(mixed);
  const json base_setup = report_setup(baseline), cand_setup = report_setup(candidate);
  const bool same_setup = base_setup == cand_setup;
  if (!same_setup)
    out.notes.push_back("the reports differ in setup (" + base_setup.dump() + " vs " +
                        cand_setup.dump() + "): only cells with equal ids are compared");
  std::map<std::string, const json*> by_id;
  std::multimap<std::string, const json*> by_key;
  for (const json& c : candidate["cells"]) {
    by_id[c["id"].get<std::string>()] = &c;
    by_key.emplace(match_key(c, options), &c);
  }
  // Which run a failure came from, when a side has several.
  auto of_runs = [](int r, size_t runs) {
    return runs > 1 ? " (run " + std::to_string(r + 1) + " of " + std::to_string(runs) + ")"
                    : std::string();
  };
  bool one_run_timing = false;  // a timing compared over one (ok) run on a side
  std::set<const json*> matched;
  for (const json& b : baseline["cells"]) {
    const std::string id = b["id"].get<std::string>();
    const json* n = nullptr;
    if (auto it = by_id.find(id); it != by_id.end()) {
      n = it->second;
    } else if (same_setup) {
      const auto range = by_key.equal_range(match_key(b, options));
      for (auto it2 = range.first; it2 != range.second && !n; ++it2) {
        if (!matched.count(it2->second)) n = it2->second;
      }
      if (n)
        out.notes.push_back(id + ": matched to " + (*n)["id"].get<std::string>() +
                            " by suite, method and parameters (the ids differ: " +
                            config_difference(baseline, candidate) + ")");
    }
    // The baseline is what its ok runs measured: a cell that failed in one of several runs (a
    // flaky out-of-memory) still holds the new side to the others, as one failed new run fails
    // the gate.
    const std::vector<const json*> all_base = cells_with_id(baselines, id),
                                   base_cells = ok_cells(all_base);
    const std::string base_failed =
        base_cells.size() == all_base.size() ? std::string()
        : baselines.size() == 1              ? std::string(" in the baseline")
        : base_cells.empty()                 ? std::string(" in every baseline run")
                             : " in baseline" + of_runs(first_failed(all_base), baselines.size());
    if (!n) {
      // An ok cell the new run did not measure is a regression of the gate itself: a run that
      // silently drops cells must not pass.
      if (!base_cells.empty())
        out.missing.push_back(id);
      else
        out.notes.push_back(id + ": failed" + base_failed + " and not in the new report");
      continue;
    }
    matched.insert(n);
    if (base_cells.empty()) {
      out.notes.push_back(id + ": failed" + base_failed + "; not compared");
      continue;
    }
    if (!base_failed.empty())
      out.notes.push_back(id + ": failed" + base_failed + "; compared over the " +
                          std::to_string(base_cells.size()) + " baseline runs where it is ok");
    const std::vector<const json*> new_cells =
        cells_with_id(candidates, (*n)["id"].get<std::string>());
    if (const int r = first_failed(new_cells); r >= 0) {
      out.newly_failed.push_back(
          id + ": " + new_cells[size_t(r)]->value("error", std::string("failed")) +
          of_runs(r, candidates.size()) +
          (base_failed.empty() ? std::string()
                               : "; ok in " + std::to_string(base_cells.size()) + " of " +
                                     std::to_string(all_base.size()) + " baseline runs"));
      continue;
    }
    std::string why;
    for (const json* bc : base_cells)
      for (const json* nc : new_cells)
        if (why.empty()) why = prompts_differ(*bc, *nc);
    if (!why.empty()) {
      out.notes.push_back(id + ": " + why + "; not compared");
      continue;
    }
    for (const MetricImpl& m : metric_impls()) {
      if (m.spec.suite != b.value("suite", "") || !options.thresholds.count(m.spec.name)) continue;
      const std::map<std::string, RunSeries> pb = run_points(m, base_cells, false),
                                             pn = run_points(m, new_cells, true);
      for (const auto& [point, sn] : pn)
        if (!pb.count(point))
          out.notes.push_back(id + " " + m.spec.name + (point.empty() ? "" : " " + point) +
                              ": only in the new report; not compared");
      // A kernels cell sizing its contexts from the machine's cache ("auto") plans other
      // contexts on another machine: a point whose context the new cell did not plan (its
      // summary.contexts) is noted, not a regression; one it planned and lacks is missing.
      const bool auto_contexts =
          m.spec.suite == "kernels" &&
          b.value("params", json::object()).value("contexts", json()) == json("auto");
      auto not_planned_now = [&](const std::string& point) {
        if (!auto_contexts) return false;
        const json planned = n->value("summary", json::object()).value("contexts", json::array());
        for (const json* cell : base_cells)  // (a point only some baseline runs planned)
          for (const json& r : cell->value("records", json::array()))
            if (r.value("kind", "") == "decode_attention" && point_label(r, kKernelPoint) == point)
              return std::find(planned.begin(), planned.end(), r.value("context", json())) ==
                     planned.end();
        return false;
      };
      for (const auto& [point, all_sb] : pb) {
        auto it = pn.find(point);
        const std::string where = id + " " + m.spec.name + (point.empty() ? "" : " " + point);
        // A point or metric the baseline measured and the new run lacks fails the gate, as a
        // missing cell does: a run that stops measuring something must not pass.
        if (it == pn.end()) {
          if (not_planned_now(point))
            out.notes.push_back(where +
                                ": not measured now (contexts \"auto\" follow the "
                                "machine's cache); not compared");
          else if (point == kServingChargePoint)  // a new side from before the field
            out.notes.push_back(where +
                                ": no retention_bytes_per_block in the new report; not compared "
                                "(bytes_per_block is)");
          else
            out.missing.push_back(where);
          continue;
        }
        if (all_sb.size() < base_cells.size())
          out.notes.push_back(where + ": in " + std::to_string(all_sb.size()) + " of " +
                              std::to_string(base_cells.size()) +
                              " baseline runs; compared over those");
        // A timing is compared over the baseline runs that kept its raw samples (a report from
        // before they were written has none).
        RunSeries sb;
        for (const Series& s : all_sb)
          if (!m.spec.timing || !s.samples.empty()) sb.push_back(s);
        if (sb.empty()) {
          out.notes.push_back(where + ": no raw samples in the baseline; not compared");
          continue;
        }
        if (sb.size() < all_sb.size())
          out.notes.push_back(where + ": raw samples in " + std::to_string(sb.size()) + " of " +
                              std::to_string(all_sb.size()) +
                              " baseline runs; compared over those");
        if (m.spec.timing && any_empty(it->second)) {
          out.missing.push_back(where + " (no raw samples now)");
          continue;
        }
        if (m.spec.timing && !min_sample_positive(sb)) {
          out.notes.push_back(where + ": baseline has a sample <= 0; not compared");
          continue;
        }
        MetricComparison c = compare_series(m.spec, sb, it->second, options);
        c.cell = id;
        c.point = point;
        out.comparisons.push_back(c);
        one_run_timing =
            one_run_timing || (m.spec.timing && std::min(sb.size(), it->second.size()) == 1);
        // Resampled units: samples, or whole generations when those are drawn together.
        const size_t units_b = units(sb), units_n = units(it->second);
        if (m.spec.timing && std::min(units_b, units_n) < kFewSamples) {
          auto unit = [](const RunSeries& runs) {
            if (runs[0].block == 1) return " samples";
            return runs[0].moving ? " request blocks" : " generations";
          };
          out.notes.push_back(where + ": " + std::to_string(units_b) + " baseline" + unit(sb) +
                              " and " + std::to_string(units_n) + " new" + unit(it->second) +
                              "; an interval from fewer than 10 understates the noise" +
                              (std::min(sb.size(), it->second.size()) == 1
                                   ? " (and none sees drift between runs)"
                                   : "") +
                              ": raise " + (m.spec.suite == "serving" ? "requests" : "repeats"));
        }
      }
    }
  }
  for (const json& c : candidate["cells"]) {
    if (!matched.count(&c)) {
      // A cell that failed says so (with its error): an id that changed with its parameters
      // leaves the baseline's cell "missing" and this one's failure would otherwise hide.
      const bool failed = c.value("status", "") != "ok";
      out.notes.push_back(c["id"].get<std::string>() + ": only in the new report" +
                          (failed ? ", where it failed (" + c.value("error", std::string("?")) + ")"
                                  : std::string()) +
                          "; not compared");
    }
  }
  if (one_run_timing) out.notes.push_back(kOneRunNote);
  return out;
}

}  // namespace

}  // namespace kvbench
