#include "kvbench/suites/runner.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "kvbench/core/error.h"
#include "kvbench/core/machine_probe.h"
#include "kvbench/core/memory.h"
#include "kvbench/core/text.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/capacity.h"
#include "kvbench/suites/preparation.h"
#include "kvbench/suites/suite_registry.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

Runner::Runner(SuiteFactory factory, Probe probe)
    : factory_(std::move(factory)), probe_(std::move(probe)) {
  if (!factory_) {
    factory_ = [](const std::string& name) { return find_suite(name).make(); };
  }
  if (!probe_) probe_ = [] { return probe_read_gbps(); };
}

std::vector<CellResult> Runner::run(const RunSpec& spec, const std::vector<Cell>& cells,
                                    const Environment& env, Progress& progress,
                                    ModelProvider& model, const AfterCell& after_cell) const {
  std::vector<CellResult> results;
  // A probe that fails (no memory left to map) leaves its rate at 0, not probed: the run goes on.
  auto read_probe = [this](std::string& failure) {
    try {
      return probe_();
    } catch (const std::exception& e) {
      failure = e.what();
      return 0.0;
    }
  };
  for (size_t i = 0; i < cells.size(); ++i) {
    CellResult r;
    r.cell = cells[i];
    r.started = now_rfc3339();
    spdlog::info("cell {}/{}: {}", i + 1, cells.size(), r.cell.id);
    // The machine's read speed at both ends of the cell (a GPU's timings do not ride on it),
    // outside its peak memory and its duration.
    const bool probe = spec.device == "cpu";
    std::string probe_failure;
    if (probe) r.probe_before_gbps = read_probe(probe_failure);
    r.peak_rss_reset = reset_peak_rss();
    Stopwatch sw;
    try {
      model.set_current_cell(r.cell.id);
      auto suite = factory_(r.cell.suite);
      std::vector<std::string> shared_warnings;
      CellContext ctx{r.cell.id,   spec,     env,   r.cell.method,   r.cell.params,
                      r.cell.seed, progress, model, &shared_warnings};
      r.output = suite->run(ctx);
      for (const std::string& w : shared_warnings)
        if (std::find(r.output.warnings.begin(), r.output.warnings.end(), w) ==
            r.output.warnings.end())
          r.output.warnings.push_back(w);
      r.ok = true;
    } catch (const Error& e) {
      r.error = e.what();
      if (!e.where().empty()) spdlog::debug("raised at {}", e.where());
    } catch (const std::exception& e) {
      r.error = e.what();
    }
    r.duration_s = sw.seconds();
    r.preparation = model.preparation(r.cell.method);
    r.peak_rss_bytes = peak_rss_bytes();
    if (probe) {
      r.probe_after_gbps = read_probe(probe_failure);
      std::string w = probe_failure.empty()
                          ? probe_drift_warning(r.probe_before_gbps, r.probe_after_gbps)
                          : "machine probe failed (" + probe_failure + "): not probed";
      if (!probe_failure.empty()) r.probe_before_gbps = r.probe_after_gbps = 0;
      if (r.ok && !w.empty()) r.output.warnings.push_back(std::move(w));
    }
    if (!r.ok) {
      progress.end();  // a suite that threw may have left its task open
      // Keep the report and the log to one line even when a library error spans several.
      r.error = r.error.substr(0, r.error.find('\n'));
      if (r.error.empty()) r.error = "unknown error (empty message)";
      spdlog::error("cell {} failed: {}", r.cell.id, r.error);
    }
    for (const auto& w : r.output.warnings) spdlog::warn("cell {}: {}", r.cell.id, w);
    results.push_back(std::move(r));
    if (after_cell) after_cell(results);
  }
  return results;
}

std::vector<uint64_t> estimate_cells(const std::vector<Cell>& cells, ModelProvider& model,
                                     const Environment& env, bool paged, bool reference_attention) {
  std::vector<uint64_t> out;
  for (const auto& c : cells) {
    const bool needs_model = find_suite(c.suite).needs_model;
    const ModelConfig* config = needs_model ? model.config_only() : nullptr;
    double per_token = 0;
    uint64_t shared = 0;
    at::ScalarType kv_dtype = at::kFloat;
    if (config) {
      try {
        kv_dtype = model.kv_dtype();
        const bool kernel_path = CacheLayout::kernel_path(model.placement().device.is_cuda());
        per_token = method_kv_bytes_per_token(c.method, *config, kv_dtype, paged, kernel_path);
        shared = method_shared_bytes(c.method, *config, kv_dtype, paged, kernel_path);
      } catch (const Error& e) {
        throw Error("plan: cell " + c.id + ": " + e.what());
      }
    }
    const ModelPlacement placement = model.placement();
    EstimateContext ctx{c.params,
                        c.method,
                        config,
                        per_token,
                        env,
                        placement.dtype,
                        placement.device.is_cuda(),
                        kv_dtype,
                        paged,
                        shared,
                        reference_attention};
    uint64_t bytes = find_suite(c.suite).make()->estimate_bytes(ctx);
    // A calibrating codec's capture runs before the cell, beside the weights alone.
    if (config)
      bytes = std::max(bytes, model_weight_bytes(*config, placement.dtype) +
                                  calibration_capture_bytes(
                                      make_codec(c.method, kv_dtype)->calibration(), *config));
    out.push_back(bytes);
  }
  return out;
}

uint64_t plan_memory_bytes(const RunSpec& spec, const Environment& env) {
  if (spec.device != "cuda") return env.memory_available_bytes;
  return env.cuda.devices.empty() ? 0 : env.cuda.devices.front().memory_bytes;
}

void refuse_oversized_plan(const std::vector<Cell>& cells, const std::vector<uint64_t>& estimates,
                           uint64_t available) {
  if (available == 0) return;
  for (size_t i = 0; i < cells.size(); ++i) {
    if (estimates[i] <= available / 10 * 8) continue;
    // A model's weights are often most of it: their dtype is the other lever.
    const bool model = find_suite(cells[i].suite).needs_model;
    KVB_CHECK(false, "plan: cell ", cells[i].id, " needs about ",
              format_bytes(static_cast<double>(estimates[i])), " but only ",
              format_bytes(static_cast<double>(available)),
              " of memory is available; reduce its batch, lengths or contexts",
              model ? " (its model's weights count too: model.compute_dtype \"bfloat16\" halves "
                      "fp32 weights)"
                    : "");
  }
}

size_t count_failed(const std::vector<CellResult>& results) {
  size_t n = 0;
  for (const auto& r : results) n += r.ok ? 0 : 1;
  return n;
}

}  // namespace kvbench
