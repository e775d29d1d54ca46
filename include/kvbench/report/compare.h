// `kvbench compare`: two reports (or two sets of repeated runs) cell by cell, for CI regression
// checks. Timing metrics are judged on the raw samples of both sides: a regression is called
// only when the whole 95% bootstrap interval of the relative difference of medians lies beyond
// the threshold, so noise alone does not fail a build. Other metrics (KV bytes, KL, length ratio,
// ...) are point values compared against their thresholds. Thresholds are percentages of the
// baseline's value.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/stats.h"

namespace kvbench {

enum class Worse {
  kHigher,  // a larger value is a regression (times, bytes, KL)
  kLower,   // a smaller value is a regression (tokens/s, agreement)
  kEither,  // any change is (length ratio)
};

struct CompareMetric {
  std::string name;     // what --threshold takes: "tpot"
  std::string suite;    // where it is read
  bool timing = false;  // judged on raw samples with a bootstrap interval
  Worse worse = Worse::kHigher;
  double default_pct = 0;  // default threshold, percent of the baseline value
  // Point metrics: a change no larger than this in absolute terms is never a regression (KL of
  // the full cache is 0 in both reports; any relative change from 0 would be infinite).
  double abs_floor = 0;
  std::string description;
};

// Every metric compare knows, in the order it prints them.
const std::vector<CompareMetric>& compare_metrics();

// Default thresholds, overridden by "METRIC=PCT" (PCT a non-negative number) or "METRIC=off".
// Throws Error naming the argument and the valid metric names on a bad one.
std::map<std::string, double> parse_thresholds(const std::vector<std::string>& args);

struct CompareOptions {
  std::map<std::string, double> thresholds;  // metric -> percent; absent = not checked
  double confidence = 0.95;
  int resamples = 2000;
  uint64_t seed = 0;
  // A cell's {"method", "params"} resolved under this version's defaults, for matching cells
  // whose ids differ: a baseline from an older version lacks the parameters added since.
  // Unset, or throwing (a parameter since removed), the cell's own are used.
  std::function<nlohmann::json(const nlohmann::json& cell)> canonical;
};

struct MetricComparison {
  std::string cell;  // the baseline's cell id
  std::string metric;
  std::string point;  // "batch=1 prompt_tokens=16 new_tokens=4", or "" for the whole cell
  bool timing = false;
  double baseline = 0;  // the metric's value: a median (or rate from it) for timings
  double candidate = 0;
  double change = 0;   // relative change of the metric, (new - baseline) / baseline
  Interval change_ci;  // timing metrics: bootstrap interval of `change`
  double threshold_pct = 0;
  bool regressed = false;
  bool improved = false;  // beyond the threshold in the good direction
};

struct CompareResult {
  std::vector<MetricComparison> comparisons;
  std::vector<std::string> newly_failed;  // "<id>: <error>": ok in the baseline, failed now
  // Ok in the baseline, absent from the new report: cell ids, or "<id> <metric> <point>" for a
  // metric or point of a matched cell (a timing without raw samples counts as absent).
  std::vector<std::string> missing;
  std::vector<std::string> notes;  // cells or points that could not be compared
  size_t regressions() const;
};

// A note when either report's run started with other work competing for its cores
// (environment competing_threads >= 1), empty otherwise: timings judged across such runs may
// differ because of the machine.
std::string busy_machine_note(const nlohmann::json& baseline, const nlohmann::json& candidate);
// The same over several runs per side: the most any run of a side saw.
std::string busy_machine_note(const std::vector<nlohmann::json>& baseline,
                              const std::vector<nlohmann::json>& candidate);

// Matches cells by id, else (when both reports have the same attention, device and model
// shape) by suite + method + resolved params (ids change with the thread count or model path,
// which a CI machine may not keep). A baseline ok cell with no match, or a metric or point of
// it that the new cell lacks, counts as a regression (`missing`). Throws Error on malformed
// reports.
CompareResult compare_reports(const nlohmann::json& baseline, const nlohmann::json& candidate,
                              const CompareOptions& options);

// compare_reports over repeated runs: each side is one or more reports of one config (separate
// processes; Error unless every report of a side has the same cell ids). Cells are matched on
// the first report of each side. A cell is compared over the baseline runs where it is ok, and
// fails the gate when it failed in any new run; a point is there when every run has it. Timings
// compare the medians of each side's pooled samples, with the interval of
// bootstrap_median_change_ci_runs (runs drawn, then blocks within them), so the spread between
// runs, which one run cannot show, widens it; point values take the median over the runs.
// compare_reports is this with one report a side; with one run on either side and a timing
// compared, the last note says that its intervals cannot see the spread between runs.
CompareResult compare_runs(const std::vector<nlohmann::json>& baselines,
                           const std::vector<nlohmann::json>& candidates,
                           const CompareOptions& options);

}  // namespace kvbench
