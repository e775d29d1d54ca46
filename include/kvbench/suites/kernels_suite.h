// The `kernels` suite: decode-attention microbenchmarks against the machine's memory
// bandwidth. Decode attention reads the whole KV cache once per step and does little
// arithmetic per byte, so its floor is memory bandwidth; this suite reports achieved bytes/s
// beside a copy bandwidth measured in the same run. Working sets grow to a multiple of the
// last-level cache so the numbers are DRAM numbers, not cache numbers. On the CPU it times the
// fused or reference attention over each method's stored format; on cuda, the paged kernels
// (kernels_gpu.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

class KernelsSuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "decode attention time, bytes moved and GB/s per context and KV heads, beside the copy "
      "bandwidth measured in the same run";
  static std::vector<ParamSpec> param_specs();

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;

  // "auto" contexts: powers of two from 1024 until the working set at the largest point reaches
  // `llc_multiple` x `llc_bytes` (at least one entry, at most 2^24 tokens).
  // The warning of a cell whose copy bandwidth before and after its points differ by more than
  // 20%: every fraction divides by their pooled median, so a machine whose speed changed
  // during the cell (another job, a frequency change) makes them depend on when each point
  // ran. Empty otherwise.
  static std::string copy_drift_warning(double before_gbps, double after_gbps);
  // The copy bandwidth of a cell's copy_bandwidth records (before and after its points): the
  // median GB/s over all their samples, and the warning copy_drift_warning gives for the two
  // records' own medians.
  struct CopyBandwidth {
    double gbps = 0;
    std::string drift_warning;
  };
  static CopyBandwidth copy_bandwidth(const std::vector<nlohmann::json>& records);

  // `bytes_at(context)`: the working set at that context by the method's formula, not a rate
  // per token (KIVI's window and GEAR's buffer make one token as large as fp16's).
  static std::vector<int64_t> auto_contexts(const std::function<uint64_t(int64_t)>& bytes_at,
                                            uint64_t llc_bytes, double llc_multiple);
  // The contexts a cell with resolved `params` runs `method` at, planning with `llc_bytes`.
  static std::vector<int64_t> planned_contexts(const nlohmann::json& params,
                                               const nlohmann::json& method, uint64_t llc_bytes);

  // The last-level cache size a cell plans with: the `llc_bytes` parameter when it is a number,
  // else the detected size. CPUID's figure, all a VM without cache topology offers, can exceed
  // any cache its cores share (508 MiB on a 2-core EPYC guest), which would grow "auto"
  // contexts to gigabytes; it is capped at kCpuidLlcPerCore per core (at least one core's
  // worth) and `warning` says so.
  static constexpr uint64_t kCpuidLlcPerCore = uint64_t{32} << 20;
  struct CachePlan {
    uint64_t bytes = 0;
    std::string source;   // "sysfs", "cpuid", "cpuid (capped)", "llc_bytes parameter", "unknown"
    std::string warning;  // empty unless the detected size was capped
  };
  static CachePlan planned_llc(const nlohmann::json& llc_param, const Environment& env);

  // One warning for a cell's timed records (copy bandwidth and attention points) whose samples
  // spread widely (p90 above 3x the median: other work took the cores, or the warmup did not
  // reach the steady state), naming how many and the worst; "" when none did.
  static std::string spread_warning(const std::vector<nlohmann::json>& records);

  // Throws Error when a CPU cell of `method` cannot be planned with these parameters (a codec
  // fitted to a model; a group that does not divide head_dim): checked at validation. GPU cells
  // plan differently and are not checked here.
  static void check_method(const nlohmann::json& params, const nlohmann::json& method,
                           const std::string& device);
};

}  // namespace kvbench
