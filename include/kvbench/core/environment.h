// What the numbers were measured on: CPU, caches, memory, BLAS, libtorch, threads, CUDA.
// Captured once per run and written into every report.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

struct BlasInfo {
  std::string name;        // "OpenBLAS", "reference BLAS", "MKL", "unknown"
  std::string detail;      // e.g. OpenBLAS's build config string
  std::string library;     // path of the loaded shared library
  bool reference = false;  // Debian's netlib reference BLAS: 20-35x slower than OpenBLAS
};

struct GpuInfo {
  std::string name;
  int compute_major = 0, compute_minor = 0;
  int sm_count = 0;
  int sm_clock_mhz = 0, memory_clock_mhz = 0, memory_bus_bits = 0;
  uint64_t memory_bytes = 0;
};

struct CudaInfo {
  bool built = false;      // kvbench was compiled with the kernels/ target
  int device_count = 0;    // devices visible now
  std::string error;       // why none is visible, when none is
  int driver_version = 0;  // e.g. 13000
  int runtime_version = 0;
  std::vector<GpuInfo> devices;
  // CUDA_VISIBLE_DEVICES as this process saw it (nullopt: unset). Cells on "cuda" run on
  // CUDA's current device, 0, the first visible: this says which physical GPU that was.
  std::optional<std::string> visible_devices;
};

struct Environment {
  std::string hostname, os, compiler, cpu_model;
  int cores = 0;
  int threads = 0;  // intra-op threads in use (at::get_num_threads)
  uint64_t llc_bytes = 0;
  // Where llc_bytes came from: "sysfs" (the kernel's cache topology), "cpuid" (glibc's sysconf
  // reading CPUID's legacy leaf: what a VM without cache topology reports, possibly synthesized
  // by the hypervisor) or "unknown".
  std::string llc_source = "unknown";
  uint64_t memory_bytes = 0, memory_available_bytes = 0;
  // The host's 1-minute load average when this process first captured the environment, before
  // any cell ran (/proc/loadavg; -1: unknown): other work competing for the cores makes every
  // timing slower and noisier.
  double load_average = -1;
  // Other runnable threads at that moment (/proc/stat's procs_running less this thread, the
  // mean of 5 samples 20 ms apart; -1: unknown): unlike the load average, which lags a minute
  // behind, work that competes now.
  double competing_threads = -1;
  std::string libtorch;
  BlasInfo blas;
  CudaInfo cuda;
  // The variables that change which code paths kvbench takes (KVBENCH_DECODE_LOOP,
  // KVBENCH_MODEL_OPS, KVBENCH_PAGED_PATH, KVBENCH_SIMD), as set when the environment was
  // captured: the report says which kernels its timings came from.
  std::map<std::string, std::string> overrides;
};

Environment capture_environment();
nlohmann::json to_json(const Environment& env);
// Environment::overrides as this process sees them now.
std::map<std::string, std::string> code_path_overrides();
// Those of `overrides` that choose the code a run on `device` with `attention` takes, at values
// other than their defaults: the GPU's decode loop, retained-token width and model ops; the
// CPU's SIMD level and, outside paged attention (whose paged_path says it), the host kernels'
// model ops; the model's GEMM on both. A cell's id carries them, and the report's setups.
std::map<std::string, std::string> applicable_code_path(
    const std::map<std::string, std::string>& overrides, const std::string& device,
    const std::string& attention);

BlasInfo detect_blas();
CudaInfo query_cuda();
// Size of the largest (last-level) data/unified cache, from sysfs; 0 if unknown.
uint64_t last_level_cache_bytes();
// MemAvailable from /proc/meminfo; 0 if unknown.
uint64_t available_memory_bytes();
// The 1-minute load average from /proc/loadavg; -1 if unknown.
double load_average_1m();
// Other runnable threads now (see Environment::competing_threads); -1 if unknown.
double competing_threads_now();
// A warning when `env` shows other work competing for the cores (other runnable threads plus
// this run's threads beyond the cores); "" on a quiet machine or when unknown.
std::string busy_machine_warning(const Environment& env);
// Cores this process may run on.
int available_cores();
// Sets libtorch's intra-op thread count (and OpenMP's); n >= 1.
void set_thread_count(int n);

}  // namespace kvbench
