#include "kvbench/report/report_tables.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "kvbench/core/error.h"
#include "kvbench/core/machine_probe.h"
#include "kvbench/core/text.h"

namespace kvbench {
namespace {

using json = nlohmann::json;

// The value at a dotted path ("ttft_s.median", "seed_controls.0.length_ratio": a part of
// digits indexes an array), or null when a part is missing (a const json's [] on a missing key
// is undefined).
const json& at(const json& j, const std::string& path) {
  static const json none;
  const json* cur = &j;
  size_t start = 0;
  for (;;) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? dot : dot - start);
    if (cur->is_array() && !key.empty() && key.size() < 10 &&
        key.find_first_not_of("0123456789") == std::string::npos) {
      const size_t i = std::stoul(key);
      if (i >= cur->size()) return none;
      cur = &(*cur)[i];
    } else {
      if (!cur->is_object()) return none;
      const auto it = cur->find(key);
      if (it == cur->end()) return none;
      cur = &*it;
    }
    if (dot == std::string::npos) return *cur;
    start = dot + 1;
  }
}

json number_at(const json& j, const std::string& path) {
  const json& v = at(j, path);
  return v.is_number() ? v : json();
}

// "model.preset" -> value; arrays and scalars are kept whole.
void flatten(const json& j, const std::string& prefix, std::map<std::string, json>& out) {
  if (j.is_object() && !j.empty()) {
    for (const auto& [k, v] : j.items()) flatten(v, prefix.empty() ? k : prefix + "." + k, out);
    return;
  }
  out[prefix] = j;
}

// Flattened keys whose value differs between some of the objects (or is missing in some).
std::vector<std::string> varying_keys(const std::vector<json>& objects) {
  std::vector<std::map<std::string, json>> flat(objects.size());
  std::set<std::string> keys;
  for (size_t i = 0; i < objects.size(); ++i) {
    flatten(objects[i], "", flat[i]);
    for (const auto& kv : flat[i]) keys.insert(kv.first);
  }
  std::vector<std::string> out;
  for (const std::string& k : keys) {
    if (k.empty()) continue;
    for (size_t i = 1; i < flat.size(); ++i) {
      auto a = flat[0].find(k), b = flat[i].find(k);
      const bool differ = (a == flat[0].end()) != (b == flat[i].end()) ||
                          (a != flat[0].end() && a->second != b->second);
      if (differ) {
        out.push_back(k);
        break;
      }
    }
  }
  return out;
}

std::string plain(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// "k=v, k=v" of the given flattened keys.
std::string describe(const json& obj, const std::vector<std::string>& keys) {
  std::map<std::string, json> flat;
  flatten(obj, "", flat);
  std::vector<std::string> parts;
  for (const std::string& k : keys) {
    // A key this method lacks (another codec's parameter) is left out: the present ones
    // already tell the methods apart.
    auto it = flat.find(k);
    if (it != flat.end()) parts.push_back(k + "=" + plain(it->second));
  }
  return join(parts, ", ");
}

json without(json obj, const std::vector<std::string>& keys) {
  for (const std::string& k : keys) obj.erase(k);
  return obj;
}

// One measured point of a cell: its key columns and one value per metric of the suite.
struct Point {
  json key = json::object();
  std::vector<json> values;
};

struct Metric {
  std::string name;
  bool ratio;  // gets a "<name>/<baseline>" column
};

struct SuiteSpec {
  std::string suite;
  std::string title;
  std::vector<std::string> point_columns;
  std::vector<std::string> point_params;  // suite parameters the points stand for
  std::vector<Metric> metrics;
  std::function<std::vector<Point>(const json& cell)> points;
  std::string table =
      {};  // the table's name when it differs from the suite's (a suite's 2nd table)
};

json kv_bytes_of(const json& holder, const char* fallback) {
  json v = number_at(holder, "kv_memory.measured.total");
  return v.is_null() ? number_at(holder, fallback) : v;
}

// A cell's summary, null when it has none.
const json& summary_of(const json& cell) { return at(cell, "summary"); }

std::vector<Point> records_of_kind(const json& cell, const std::string& kind,
                                   const std::vector<std::string>& key_fields,
                                   const std::function<std::vector<json>(const json&)>& values) {
  std::vector<Point> out;
  for (const json& r : cell.value("records", json::array())) {
    if (r.value("kind", "") != kind) continue;
    Point p;
    for (const std::string& f : key_fields) p.key[f] = at(r, f);
    p.values = values(r);
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<Point> summary_point(const json& cell, const std::vector<std::string>& paths) {
  Point p;
  for (const std::string& path : paths) p.values.push_back(number_at(summary_of(cell), path));
  return {p};
}

const std::vector<SuiteSpec>& suite_specs() {
  static const std::vector<SuiteSpec> specs = {
      {"latency",
       "latency: seconds per request (median and p99 over requests), KV cache at its peak",
       {},
       {},
       {{"ttft_median_s", true},
        {"ttft_p99_s", false},
        {"tpot_median_s", true},
        {"tpot_p99_s", false},
        {"retention_prefill_share", false},
        {"retention_decode_share", false},
        {"kv_bytes", true},
        {"retention_bytes", false},
        {"bits_per_value", false},
        {"ratio_to_fp16", false}},
       [](const json& c) {
         const json& s = summary_of(c);
         Point p;
         p.values = {number_at(s, "ttft_s.median"),
                     number_at(s, "ttft_s.p99"),
                     number_at(s, "tpot_s.median"),
                     number_at(s, "tpot_s.p99"),
                     number_at(s, "retention.prefill_share"),
                     number_at(s, "retention.decode_share"),
                     kv_bytes_of(s, "kv_bytes_peak"),
                     number_at(s, "kv_memory.retention_bytes"),
                     number_at(s, "kv_memory.bits_per_value"),
                     number_at(s, "kv_memory.ratio_to_fp16")};
         return std::vector<Point>{p};
       }},
      {"throughput",
       "throughput: tokens per second per point (prefill: batch x prompt / median prefill; "
       "decode: batch / median step; host_share: the share of a step the host spent issuing "
       "it, near 1 on a GPU = bound by launches, not bytes; ~1 on the CPU by construction)",
       {"batch", "prompt_tokens", "new_tokens"},
       {"batch", "prompt_tokens", "new_tokens"},
       {{"prefill_tok_s", true},
        {"decode_tok_s", true},
        {"host_share", false},
        {"retention_prefill_share", false},
        {"retention_decode_share", false},
        {"kv_bytes", true},
        {"retention_bytes", false},
        {"bits_per_value", false},
        {"ratio_to_fp16", false}},
       [](const json& c) {
         return records_of_kind(
             c, "throughput", {"batch", "prompt_tokens", "new_tokens"}, [](const json& r) {
               return std::vector<json>{number_at(r, "prefill_tok_s"),
                                        number_at(r, "decode_tok_s"),
                                        number_at(r, "decode_host_share"),
                                        number_at(r, "retention.prefill_share"),
                                        number_at(r, "retention.decode_share"),
                                        kv_bytes_of(r, "kv_bytes"),
                                        number_at(r, "kv_memory.retention_bytes"),
                                        number_at(r, "kv_memory.bits_per_value"),
                                        number_at(r, "kv_memory.ratio_to_fp16")};
             });
       }},
      {"throughput",
       "phases: where a decode step goes, seconds per step (medians over the last warmup "
       "generation's steps; CUDA events on a GPU, so a phase the host issues slowly counts "
       "the device's wait): attend = the KV cache's append and attention, the method's whole "
       "work; the rest is the model's; step_s = the phases' sum",
       {"batch", "prompt_tokens", "new_tokens"},
       {"batch", "prompt_tokens", "new_tokens"},
       {{"step_s", true},
        {"attend_s", true},
        {"attend_share", false},
        {"mlp_s", false},
        {"qkv_rope_s", false},
        {"o_proj_s", false},
        {"norm_s", false},
        {"lm_head_s", false},
        {"embed_s", false},
        {"sample_s", false}},
       [](const json& c) {
         // Points without phases (no warmup generation, older reports) have no row.
         std::vector<Point> points = records_of_kind(
             c, "throughput", {"batch", "prompt_tokens", "new_tokens"}, [](const json& r) {
               const json s = at(r, "phases.decode_step_s");
               auto of = [&](const char* k) { return number_at(s, k); };
               return std::vector<json>{number_at(r, "phases.decode_total_s"),
                                        of("attend"),
                                        number_at(r, "phases.decode_share.attend"),
                                        of("mlp"),
                                        of("qkv_rope"),
                                        of("o_proj"),
                                        of("norm"),
                                        of("lm_head"),
                                        of("embed"),
                                        of("sample")};
             });
         points.erase(std::remove_if(points.begin(), points.end(),
                                     [](const Point& p) { return p.values[0].is_null(); }),
                      points.end());
         return points;
       },
       "phases"},
      {"throughput",
       "capacity: per method, the largest batch whose KV bytes and retention bookkeeping (the "
       "method's formula at the context, one prompt entering in full) fit the budget, and decode "
       "tokens/s measured at that batch (or at max_batch)",
       {"context"},
       {"capacity_context"},
       {{"kv_budget_bytes", false},
        {"bytes_per_sequence", true},
        {"prefill_bytes_per_sequence", false},
        {"retention_bytes_per_sequence", false},
        {"max_batch_fit", true},
        {"batch", false},
        {"capped", false},
        {"decode_tok_s", true}},
       [](const json& c) {
         return records_of_kind(c, "capacity", {"context"}, [](const json& r) {
           return std::vector<json>{number_at(r, "kv_budget_bytes"),
                                    number_at(r, "bytes_per_sequence"),
                                    number_at(r, "prefill_bytes_per_sequence"),
                                    number_at(r, "retention_bytes_per_sequence"),
                                    number_at(r, "max_batch_fit"),
                                    number_at(r, "batch"),
                                    at(r, "capped"),
                                    number_at(r, "decode_tok_s")};
         });
       },
       "capacity"},
      {"predictor",
       "predictor: decode step time interpolated from a batch x context profile; accuracy "
       "1 - |pred - true| / true on held-out points (mean and min), and the noise of the "
       "measurements (median spread of a point's repeats)",
       {},
       {},
       {{"accuracy_mean", false},
        {"accuracy_min", false},
        {"bilinear_accuracy_mean", false},
        {"least_squares_accuracy_mean", false},
        {"noise", false},
        {"heldout_points", false}},
       [](const json& c) {
         const json& s = summary_of(c);
         Point p;
         p.values = {number_at(s, "accuracy_mean"),
                     number_at(s, "accuracy_min"),
                     number_at(s, "models.bilinear.heldout_accuracy.mean"),
                     number_at(s, "models.least_squares.heldout_accuracy.mean"),
                     number_at(s, "noise"),
                     s.contains("heldout_points") ? json(s["heldout_points"].size()) : json()};
         return std::vector<Point>{p};
       }},
      {"predictor",
       "routing: simulated replicas with the method's predicted step times; end-to-end latency "
       "(simulated seconds) per routing policy",
       {"policy"},
       {},
       {{"e2e_mean_s", false},
        {"e2e_p99_s", false},
        {"ttft_mean_s", false},
        {"rate", false},
        {"replicas", false}},
       [](const json& c) {
         return records_of_kind(c, "routing", {"policy"}, [](const json& r) {
           return std::vector<json>{number_at(r, "e2e_s.mean"), number_at(r, "e2e_s.p99"),
                                    number_at(r, "ttft_s.mean"), number_at(r, "rate"),
                                    number_at(r, "replicas")};
         });
       },
       "routing"},
      {"output_length",
       "length_shift: per method and task, mean and median generated length against the full "
       "cache's on the same prompts (ratio > 1: the method talks longer)",
       {"task"},
       {},
       {{"samples", false},
        {"mean_length_full", false},
        {"mean_length", false},
        {"length_ratio", false},
        {"median_length_full", false},
        {"median_length", false},
        {"median_length_ratio", false},
        {"share_longer_50", false}},
       [](const json& c) {
         std::vector<Point> out;
         const json& tasks = at(c, "summary.tasks");
         if (!tasks.is_array()) return out;
         for (const json& t : tasks) {
           Point p;
           p.key["task"] = t.value("task", "");
           p.values = {number_at(t, "samples"),
                       number_at(t, "mean_length_baseline"),
                       number_at(t, "mean_length"),
                       number_at(t, "length_ratio"),
                       number_at(t, "median_length_baseline"),
                       number_at(t, "median_length"),
                       number_at(t, "median_length_ratio"),
                       number_at(t, "share_longer_50")};
           out.push_back(std::move(p));
         }
         return out;
       },
       "length_shift"},
      {"kernels",
       "kernels: one decode-attention step per context (median seconds, GB/s and the fraction "
       "of the copy bandwidth measured in the same cell)",
       {"context", "kv_heads"},
       {"contexts", "kv_heads"},
       {{"step_median_s", true},
        {"gbps", false},
        {"fraction_of_copy_bandwidth", false},
        {"working_set_bytes", true}},
       [](const json& c) {
         return records_of_kind(c, "decode_attention", {"context", "kv_heads"}, [](const json& r) {
           return std::vector<json>{number_at(r, "time_s.median"), number_at(r, "gbps"),
                                    number_at(r, "fraction_of_copy_bandwidth"),
                                    number_at(r, "working_set_bytes")};
         });
       }},
      {"fidelity",
       "fidelity: teacher-forced KL(full || method) in nats, top-1 agreement and perplexity "
       "ratio, already against the full cache",
       {},
       {},
       {{"kl_mean", false}, {"kl_p99", false}, {"top1_agreement", false}, {"ppl_ratio", false}},
       [](const json& c) {
         return summary_point(c, {"kl_mean", "kl_p99", "top1_agreement", "ppl_ratio"});
       }},
      {"output_length",
       "output_length: generated length against the full cache on the same prompts (paired p: "
       "Wilcoxon signed-rank; seed control: the full cache with another sampling seed, the "
       "noise floor of the ratio)",
       {},
       {},
       {{"mean_length", false},
        {"length_ratio", false},
        {"wilcoxon_p_value", false},
        {"seed_control_length_ratio", false},
        {"share_longer_50", false},
        {"share_shorter_50", false},
        {"runaway_rate", false},
        {"runaway_rate_full", false}},
       [](const json& c) {
         return summary_point(
             c, {"mean_length", "length_ratio", "wilcoxon_p_value", "seed_controls.0.length_ratio",
                 "share_longer_50", "share_shorter_50", "runaway_rate", "runaway_rate_full"});
       }},
      {"serving",
       "serving: per request rate, latency percentiles over requests (seconds; from each "
       "request's send), the client's wait before a send under max_concurrency, throughput, "
       "goodput under the cell's SLOs, KV pool peak and preemptions",
       {"rate"},
       {"rates"},
       {{"ttft_p50_s", true},
        {"ttft_p99_s", false},
        {"tpot_p50_s", true},
        {"tpot_p99_s", false},
        {"e2e_p99_s", false},
        {"client_wait_p99_s", false},
        {"token_throughput", true},
        {"goodput_per_s", true},
        {"kv_pool_bytes_peak", false},
        {"retention_bytes_peak", false},
        {"preemptions", false}},
       [](const json& c) {
         return records_of_kind(c, "serving", {"rate"}, [](const json& r) {
           return std::vector<json>{number_at(r, "ttft_s.p50"),
                                    number_at(r, "ttft_s.p99"),
                                    number_at(r, "tpot_s.p50"),
                                    number_at(r, "tpot_s.p99"),
                                    number_at(r, "e2e_s.p99"),
                                    number_at(r, "client_wait_s.p99"),  // max_concurrency only
                                    number_at(r, "token_throughput"),
                                    number_at(r, "goodput.requests_per_s"),
                                    number_at(r, "kv.pool_bytes_peak"),
                                    number_at(r, "kv.retention_bytes_peak"),
                                    number_at(r, "preemptions")};
         });
       }},
      {"accuracy",
       "accuracy: mean per-sample score of the method and of the full cache on the same samples",
       {},
       {},
       {{"mean_score", false},
        {"mean_score_full", false},
        {"score_difference", false},
        {"token_agreement", false},
        {"negative_samples", false}},
       [](const json& c) {
         return summary_point(c, {"mean_score", "mean_score_full", "score_difference",
                                  "token_agreement", "negative_samples"});
       }},
  };
  return specs;
}

std::string method_name(const json& cell) { return cell["method"].value("name", "?"); }

}  // namespace

std::map<std::string, std::string> method_labels(const std::vector<json>& methods) {
  // A retention method over a codec other than the full cache is named with it, as the
  // registry's composed names are ("snapkv+palu"), alone or not.
  auto base = [](const json& m) {
    std::string name = m.value("name", "?");
    if (m.contains("codec") && m["codec"].is_object()) {
      const std::string codec = m["codec"].value("name", "full");
      if (codec != "full") name += "+" + codec;
    }
    return name;
  };
  std::map<std::string, std::vector<json>> by_name;
  for (const json& m : methods) by_name[base(m)].push_back(m);
  std::map<std::string, std::string> labels;  // method JSON dump -> label
  for (const auto& [name, same] : by_name) {
    std::vector<std::string> keys = varying_keys(same);
    keys.erase(std::remove(keys.begin(), keys.end(), "codec.name"), keys.end());
    for (const json& method : same) {
      labels[method.dump()] = keys.empty() ? name : name + "(" + describe(method, keys) + ")";
    }
  }
  return labels;
}

namespace {

std::map<std::string, std::string> method_labels(const std::vector<MergedCell>& cells) {
  std::vector<json> methods;
  for (const MergedCell& m : cells) methods.push_back(m.cell["method"]);
  return kvbench::method_labels(methods);
}

struct Context {
  std::string baseline;
  std::map<std::string, std::string> labels;
  std::vector<std::string> notes;
  std::string label(const json& cell) const { return labels.at(cell["method"].dump()); }
};

ResultTable suite_table(const SuiteSpec& spec, const std::vector<const MergedCell*>& cells,
                        Context& ctx) {
  std::vector<json> setups, params;
  for (const MergedCell* m : cells) {
    setups.push_back(m->setup);
    params.push_back(without(m->cell.value("params", json::object()), spec.point_params));
  }
  const std::vector<std::string> setup_keys = varying_keys(setups);
  const std::vector<std::string> param_keys = varying_keys(params);

  struct Row {
    const MergedCell* cell;
    json params;
    Point point;
    std::string group;  // setup + params + point: rows of one group are compared
    bool is_baseline;
  };
  std::vector<Row> rows;
  std::vector<std::string> group_order;
  std::map<std::string, const Row*> baseline_of;
  for (size_t i = 0; i < cells.size(); ++i) {
    for (Point& p : spec.points(cells[i]->cell)) {
      Row r{cells[i], params[i], std::move(p), "", false};
      r.group = cells[i]->setup.dump() + "|" + r.params.dump() + "|" + r.point.key.dump();
      r.is_baseline = !ctx.baseline.empty() && ctx.label(cells[i]->cell) == ctx.baseline;
      if (std::find(group_order.begin(), group_order.end(), r.group) == group_order.end()) {
        group_order.push_back(r.group);
      }
      rows.push_back(std::move(r));
    }
  }
  // A group holding two baseline rows (cells of other ids with the same setup and parameters:
  // another checkpoint or data file at the same path, merged from older reports) has no one
  // baseline: its ratios stay empty rather than divide by whichever came first.
  std::set<std::string> ambiguous;
  for (const Row& r : rows) {
    if (!r.is_baseline) continue;
    if (baseline_of.count(r.group))
      ambiguous.insert(r.group);
    else
      baseline_of[r.group] = &r;
  }
  for (const std::string& g : ambiguous) baseline_of.erase(g);

  ResultTable t;
  t.name = spec.table.empty() ? spec.suite : spec.table;
  t.title = spec.title;
  t.columns.push_back("method");
  if (!setup_keys.empty()) t.columns.push_back("setup");
  // A varying parameter named like a column of the table's own (the capacity table's `batch`,
  // length_shift's `samples`) is told apart: CSV and JSON rows are keyed by column name.
  std::vector<std::string> own = spec.point_columns;  // the columns after the parameters
  for (const Metric& m : spec.metrics) {
    own.push_back(m.name);
    if (m.ratio && !ctx.baseline.empty()) own.push_back(m.name + "/" + ctx.baseline);
  }
  own.push_back("cell");
  std::set<std::string> taken(own.begin(), own.end());
  taken.insert({"method", "setup"});
  for (const std::string& k : param_keys) t.columns.push_back(taken.count(k) ? "param." + k : k);
  t.columns.insert(t.columns.end(), own.begin(), own.end());

  size_t without_baseline = 0;
  for (const std::string& group : group_order) {
    for (int pass = 0; pass < 2; ++pass) {  // the baseline's row first in its group
      for (const Row& r : rows) {
        if (r.group != group || r.is_baseline != (pass == 0)) continue;
        const auto base = baseline_of.find(group);
        if (!ctx.baseline.empty() && base == baseline_of.end() && pass == 1 &&
            !ambiguous.count(group))
          ++without_baseline;
        std::vector<json> row = {ctx.label(r.cell->cell)};
        if (!setup_keys.empty()) row.push_back(describe(r.cell->setup, setup_keys));
        std::map<std::string, json> flat;
        flatten(r.params, "", flat);
        for (const std::string& k : param_keys) row.push_back(flat.count(k) ? flat[k] : json());
        for (const std::string& k : spec.point_columns) row.push_back(r.point.key.value(k, json()));
        for (size_t i = 0; i < spec.metrics.size(); ++i) {
          const json& v = r.point.values[i];
          row.push_back(v);
          if (!spec.metrics[i].ratio || ctx.baseline.empty()) continue;
          json ratio;
          if (base != baseline_of.end()) {
            const json& b = base->second->point.values[i];
            if (v.is_number() && b.is_number() && b.get<double>() != 0) {
              ratio = v.get<double>() / b.get<double>();
            }
          }
          row.push_back(ratio);
        }
        row.push_back(r.cell->cell["id"]);
        t.rows.push_back(std::move(row));
      }
    }
  }
  if (!ambiguous.empty()) {
    ctx.notes.push_back(spec.suite + ": " + std::to_string(ambiguous.size()) +
                        " group(s) of one setup, parameters and point hold several " +
                        ctx.baseline +
                        " rows (cells of other ids: another checkpoint or data file, merged from "
                        "other reports); their ratios are empty");
  }
  if (without_baseline > 0) {
    ctx.notes.push_back(spec.suite + ": " + std::to_string(without_baseline) + " row(s) have no " +
                        ctx.baseline +
                        " row with the same setup, parameters and point; their ratios are empty");
  }
  return t;
}

// label -> (key -> value) reduced to label -> mean (geometric or arithmetic) over the keys that
// every label having any value shares, so that each method is summarised on the same points.
std::map<std::string, double> over_common_keys(
    const std::map<std::string, std::map<std::string, double>>& by_label, bool geometric) {
  std::map<std::string, double> out;
  if (by_label.empty()) return out;
  std::set<std::string> common;
  for (const auto& kv : by_label.begin()->second) common.insert(kv.first);
  for (const auto& [label, values] : by_label) {
    std::set<std::string> keep;
    for (const std::string& k : common) {
      if (values.count(k)) keep.insert(k);
    }
    common = keep;
  }
  if (common.empty()) return out;
  for (const auto& [label, values] : by_label) {
    double acc = 0;
    for (const std::string& k : common) acc += geometric ? std::log(values.at(k)) : values.at(k);
    acc /= static_cast<double>(common.size());
    out[label] = geometric ? std::exp(acc) : acc;
  }
  return out;
}

// Accuracy samples (task + id) that every compressed method of one setup scores 0 on, with the
// full cache's score beside them: failures no method in the comparison avoids. Setups (models,
// backends) are kept apart: one model's sample is not another's.
ResultTable failed_by_every_method(const std::vector<MergedCell>& cells, const Context& ctx) {
  struct Seen {
    std::set<std::string> methods;
    bool all_zero = true;
    json score_full;
  };
  struct Setup {
    json setup;
    std::set<std::string> methods;
    std::map<std::pair<std::string, std::string>, Seen> samples;
  };
  std::vector<std::string> order;
  std::map<std::string, Setup> setups;
  for (const MergedCell& m : cells) {
    const json& c = m.cell;
    if (c.value("status", "") != "ok" || c.value("suite", "") != "accuracy") continue;
    const std::string label = ctx.label(c);
    // The baseline is no compared method; nor is the full cache when no baseline was chosen
    // (several configurations of it).
    if (label == ctx.baseline || (ctx.baseline.empty() && method_name(c) == "full")) continue;
    const std::string key = m.setup.dump();
    if (!setups.count(key)) order.push_back(key), setups[key].setup = m.setup;
    Setup& setup = setups[key];
    setup.methods.insert(label);
    for (const json& r : c.value("records", json::array())) {
      if (!r.contains("id") || !r.contains("score")) continue;
      Seen& s = setup.samples[{r.value("task", ""), r["id"].get<std::string>()}];
      s.methods.insert(label);
      s.all_zero &= r["score"].get<double>() == 0.0;
      if (r.contains("score_full")) s.score_full = r["score_full"];
    }
  }
  std::vector<json> all;
  for (const std::string& key : order) all.push_back(setups[key].setup);
  const std::vector<std::string> setup_keys = varying_keys(all);
  ResultTable t;
  t.name = "failed_by_every_method";
  t.title =
      "accuracy samples every compared method scores 0 on (score_full: the full cache's score)";
  if (!setup_keys.empty()) t.columns.push_back("setup");
  for (const char* c : {"task", "id", "methods", "score_full"}) t.columns.push_back(c);
  for (const std::string& key : order) {
    const Setup& setup = setups[key];
    for (const auto& [sample, s] : setup.samples) {
      if (!s.all_zero || s.methods.size() != setup.methods.size()) continue;
      std::vector<json> row;
      if (!setup_keys.empty()) row.push_back(describe(setup.setup, setup_keys));
      for (json v : {json(sample.first), json(sample.second),
                     json(static_cast<int64_t>(setup.methods.size())), s.score_full})
        row.push_back(std::move(v));
      t.rows.push_back(std::move(row));
    }
  }
  return t;
}

ResultTable pareto_table(const std::vector<MergedCell>& cells, Context& ctx) {
  // Only the model suites: kernels cells have no model and no decode tokens/s.
  std::vector<std::string> setup_order;
  std::map<std::string, std::vector<const MergedCell*>> by_setup;
  std::vector<json> setups;
  for (const MergedCell& m : cells) {
    if (m.cell.value("status", "") != "ok" || m.cell.value("suite", "") == "kernels") continue;
    const std::string s = m.setup.dump();
    if (!by_setup.count(s)) setup_order.push_back(s), setups.push_back(m.setup);
    by_setup[s].push_back(&m);
  }
  const std::vector<std::string> setup_keys = varying_keys(setups);
  ResultTable t;
  t.name = "pareto";
  t.title =
      "pareto: methods on the front of (lower KV bits per value, higher decode tokens/s, lower "
      "KL mean, higher accuracy), over the dimensions every method of the setup has";
  if (!setup_keys.empty()) t.columns.push_back("setup");
  for (const char* c : {"method", "bits_per_value", "decode_tok_s", "decode_from", "kl_mean",
                        "accuracy", "on_front", "dimensions"}) {
    t.columns.push_back(c);
  }
  for (const std::string& s : setup_order) {
    std::vector<std::string> labels;
    std::map<std::string, std::vector<double>> bits;
    std::map<std::string, std::map<std::string, double>> thr, lat, kl, acc;
    for (const MergedCell* m : by_setup[s]) {
      const json& c = m->cell;
      const std::string label = ctx.label(c), suite = c["suite"];
      if (std::find(labels.begin(), labels.end(), label) == labels.end()) labels.push_back(label);
      const std::string pkey = suite + "|" + c.value("params", json::object()).dump();
      const json& sum = summary_of(c);
      // The latency summaries' bits (throughput records' below), not fidelity's: its cache holds
      // a window's tokens, not the timed generations'.
      if (json b = number_at(sum, "kv_memory.bits_per_value"); suite == "latency" && !b.is_null())
        bits[label].push_back(b.get<double>());
      if (json a = number_at(sum, suite == "accuracy" ? "mean_score" : "accuracy"); !a.is_null()) {
        acc[label][pkey] = a.get<double>();
      }
      if (suite == "fidelity") {
        if (json k = number_at(sum, "kl_mean"); !k.is_null()) kl[label][pkey] = k.get<double>();
      } else if (suite == "latency") {
        const json tpot = number_at(sum, "tpot_s.median"), batch = number_at(sum, "batch");
        if (tpot.is_number() && batch.is_number() && tpot.get<double>() > 0) {
          lat[label][pkey] = batch.get<double>() / tpot.get<double>();
        }
      } else if (suite == "throughput") {
        for (const json& r : c.value("records", json::array())) {
          if (r.value("kind", "") != "throughput") continue;
          if (json b = number_at(r, "kv_memory.bits_per_value"); !b.is_null()) {
            bits[label].push_back(b.get<double>());
          }
          const json d = number_at(r, "decode_tok_s");
          if (d.is_number() && d.get<double>() > 0) {
            const std::string key = pkey + "|" + std::to_string(r.value("batch", 0)) + "," +
                                    std::to_string(r.value("prompt_tokens", 0)) + "," +
                                    std::to_string(r.value("new_tokens", 0));
            thr[label][key] = d.get<double>();
          }
        }
      }
    }
    const bool from_thr = !thr.empty();
    const auto decode = over_common_keys(from_thr ? thr : lat, true);
    const auto kl_mean = over_common_keys(kl, false);
    const auto accuracy = over_common_keys(acc, false);
    // Dimensions every method of this setup has, oriented so that larger is better.
    struct Dim {
      std::string name;
      std::function<json(const std::string&)> get;
      double sign;
    };
    auto from_map = [](const std::map<std::string, double>& m) {
      return [&m](const std::string& l) { return m.count(l) ? json(m.at(l)) : json(); };
    };
    auto mean_bits = [&bits](const std::string& l) {
      if (!bits.count(l)) return json();
      double sum = 0;
      for (double b : bits.at(l)) sum += b;
      return json(sum / static_cast<double>(bits.at(l).size()));
    };
    const std::vector<Dim> dims = {{"bits_per_value", mean_bits, -1},
                                   {"decode_tok_s", from_map(decode), 1},
                                   {"kl_mean", from_map(kl_mean), -1},
                                   {"accuracy", from_map(accuracy), 1}};
    std::vector<const Dim*> used;
    for (const Dim& d : dims) {
      bool all = true;
      for (const std::string& l : labels) all = all && d.get(l).is_number();
      if (all) used.push_back(&d);
    }
    std::vector<std::vector<double>> values;
    for (const std::string& l : labels) {
      std::vector<double> v;
      for (const Dim* d : used) v.push_back(d->sign * d->get(l).get<double>());
      values.push_back(v);
    }
    const std::vector<bool> front =
        used.empty() ? std::vector<bool>(labels.size(), false) : pareto_front(values);
    std::vector<std::string> used_names;
    for (const Dim* d : used) used_names.push_back(d->name);
    for (size_t i = 0; i < labels.size(); ++i) {
      std::vector<json> row;
      if (!setup_keys.empty()) row.push_back(describe(json::parse(s), setup_keys));
      row.push_back(labels[i]);
      for (const Dim& d : dims) {
        row.push_back(d.get(labels[i]));
        if (d.name == "decode_tok_s") {
          row.push_back(decode.count(labels[i])
                            ? json(from_thr ? "throughput (geomean over shared points)"
                                            : "latency (batch / TPOT median)")
                            : json());
        }
      }
      // No shared dimension: nothing was compared, so no method is on or off the front.
      row.push_back(used.empty() ? json() : json(front[i]));
      row.push_back(join(used_names, ", "));
      t.rows.push_back(std::move(row));
    }
    const std::string where =
        setup_keys.empty() ? "" : " (" + describe(json::parse(s), setup_keys) + ")";
    // An eviction method's bits per value fall as the context grows past its budget: cells at
    // other lengths give other values, and the column is their mean.
    for (const std::string& l : labels) {
      if (!bits.count(l)) continue;
      const auto [lo, hi] = std::minmax_element(bits.at(l).begin(), bits.at(l).end());
      if (*hi > 1.1 * *lo)
        ctx.notes.push_back("pareto" + where + ": " + l + "'s bits_per_value differs across its " +
                            "cells (" + format_fixed(*lo, 2) + " to " + format_fixed(*hi, 2) +
                            ": other context lengths or backends); the column is their mean");
    }
    if (used.empty()) {
      ctx.notes.push_back("pareto" + where +
                          ": no dimension is present for every method, so on_front is empty");
    } else if (std::none_of(used.begin(), used.end(), [](const Dim* d) {
                 return d->name == "kl_mean" || d->name == "accuracy";
               })) {
      ctx.notes.push_back("pareto" + where +
                          ": no quality dimension (kl_mean, accuracy) is shared, so a lossy "
                          "method can be on the front by bits and speed alone; add a fidelity or "
                          "accuracy suite");
    }
  }
  return t;
}

}  // namespace

std::vector<bool> pareto_front(const std::vector<std::vector<double>>& values) {
  std::vector<bool> front(values.size(), true);
  for (size_t i = 0; i < values.size(); ++i) {
    for (size_t j = 0; j < values.size() && front[i]; ++j) {
      if (i == j) continue;
      bool all_ge = true, some_gt = false;
      for (size_t d = 0; d < values[i].size(); ++d) {
        all_ge = all_ge && values[j][d] >= values[i][d];
        some_gt = some_gt || values[j][d] > values[i][d];
      }
      if (all_ge && some_gt) front[i] = false;
    }
  }
  return front;
}

namespace {

// Per report: when its ok cells' machine probes (read speed before and after each) spread by more
// than kProbeTolerance, the machine moved during the run, and timings of different cells, or
// their ratios, may carry that.
std::vector<std::string> machine_probe_notes(const std::vector<MergedCell>& cells) {
  std::map<std::string, std::pair<double, double>> range;  // source -> lowest, highest
  for (const MergedCell& m : cells) {
    const json probe = m.cell.value("machine_probe", json());
    if (m.cell.value("status", "") != "ok" || !probe.is_object()) continue;
    for (const char* key : {"read_gbps_before", "read_gbps_after"}) {
      const double v = probe.value(key, 0.0);
      if (!(v > 0)) continue;
      auto [it, fresh] = range.emplace(m.source, std::make_pair(v, v));
      if (!fresh) it->second = {std::min(it->second.first, v), std::max(it->second.second, v)};
    }
  }
  std::vector<std::string> out;
  for (const auto& [source, r] : range) {
    if (probe_spread(r.first, r.second) <= kProbeTolerance) continue;
    out.push_back(source + ": the machine's read speed ranged " + format_fixed(r.first, 1) + " - " +
                  format_fixed(r.second, 1) +
                  " GB/s across its cells (machine_probe): timings of different cells, and "
                  "the ratios between them, may differ by the machine, not the method; repeat "
                  "the run (docs/report-and-compare.md)");
  }
  return out;
}

// The label of the rows ratios are taken against. `asked` is a label ("kivi(bits=2)",
// "snapkv+palu") or a method name whose ok cells all have one label; "" means "full" when it
// names one label, else none. Rows are matched by label: a method name shared by several labels
// (snapkv and snapkv+palu, two kivi bit widths) would give a group two baseline rows.
std::string baseline_label(const std::vector<MergedCell>& cells, Context& ctx,
                           const std::string& asked) {
  std::set<std::string> ok_labels;
  std::map<std::string, std::set<std::string>> labels_of_name;
  for (const MergedCell& m : cells) {
    if (m.cell.value("status", "") != "ok") continue;
    ok_labels.insert(ctx.label(m.cell));
    labels_of_name[method_name(m.cell)].insert(ctx.label(m.cell));
  }
  const std::string name = asked.empty() ? "full" : asked;
  if (ok_labels.count(name)) return name;
  const auto named = labels_of_name.find(name);
  if (named != labels_of_name.end() && named->second.size() == 1) return *named->second.begin();
  if (named != labels_of_name.end()) {
    const std::string several = join({named->second.begin(), named->second.end()}, ", ");
    KVB_CHECK(asked.empty(), "--baseline: method '", asked,
              "' has several configurations here; name one of these labels: ", several);
    ctx.notes.push_back("no ratio columns: method full has several configurations (" + several +
                        "); pick one with --baseline");
    return "";
  }
  KVB_CHECK(asked.empty(), "--baseline: no ok cell has method or label '", asked,
            "' (labels: ", join({ok_labels.begin(), ok_labels.end()}, ", "), ")");
  return "";
}

}  // namespace

ReportTables build_report_tables(const MergedReports& merged, const std::string& baseline) {
  Context ctx;
  ctx.labels = method_labels(merged.cells);
  ctx.baseline = baseline_label(merged.cells, ctx, baseline);
  if (!merged.random_weights.empty())
    ctx.notes.push_back("random model weights in " + join(merged.random_weights, ", ") +
                        ": speed and memory there are real; accuracy, output lengths and "
                        "fidelity rankings mean nothing");
  for (std::string& note : machine_probe_notes(merged.cells)) ctx.notes.push_back(std::move(note));
  ReportTables out;
  std::set<std::string> known;
  for (const SuiteSpec& spec : suite_specs()) {
    known.insert(spec.suite);
    std::vector<const MergedCell*> cells;
    for (const MergedCell& m : merged.cells) {
      if (m.cell.value("status", "") == "ok" && m.cell.value("suite", "") == spec.suite) {
        cells.push_back(&m);
      }
    }
    if (cells.empty()) continue;
    ResultTable t = suite_table(spec, cells, ctx);
    // A suite's second table (capacity, routing, length_shift) only when it has rows.
    if (spec.table.empty() || !t.rows.empty()) out.tables.push_back(std::move(t));
  }
  std::set<std::string> unknown;
  for (const MergedCell& m : merged.cells) {
    const std::string suite = m.cell.value("suite", "");
    if (m.cell.value("status", "") == "ok" && !known.count(suite)) unknown.insert(suite);
  }
  for (const std::string& s : unknown) {
    ctx.notes.push_back("suite '" + s + "' has no report table in this kvbench; its cells skipped");
  }

  ResultTable pareto = pareto_table(merged.cells, ctx);
  if (!pareto.rows.empty()) out.tables.push_back(std::move(pareto));

  ResultTable every = failed_by_every_method(merged.cells, ctx);
  if (!every.rows.empty()) out.tables.push_back(std::move(every));

  ResultTable failed;
  failed.name = "failed";
  failed.title = "failed cells, with the first line of their error";
  failed.columns = {"source", "cell", "suite", "method", "error"};
  for (const MergedCell& m : merged.cells) {
    if (m.cell.value("status", "") == "ok") continue;
    failed.rows.push_back(
        {m.source, m.cell["id"], m.cell["suite"], ctx.label(m.cell), m.cell.value("error", "")});
  }
  if (!failed.rows.empty()) out.tables.push_back(std::move(failed));
  out.baseline = ctx.baseline;
  out.notes = std::move(ctx.notes);
  return out;
}

}  // namespace kvbench
