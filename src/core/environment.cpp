#include "kvbench/core/environment.h"
#include "kvbench/core/memory.h"

#include <dlfcn.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#ifdef KVBENCH_HAVE_CUDA
#include "device_query.h"
#endif

namespace kvbench {
namespace {

namespace fs = std::filesystem;

std::string read_first_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// "32K", "2048K", "32M" as written in sysfs cache size files.
uint64_t parse_cache_size(const std::string& text) {
  if (text.empty()) return 0;
  uint64_t value = std::strtoull(text.c_str(), nullptr, 10);
  switch (text.back()) {
    case 'K':
      return value << 10;
    case 'M':
      return value << 20;
    case 'G':
      return value << 30;
    default:
      return value;
  }
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

std::string os_name() {
  std::string pretty;
  std::ifstream in("/etc/os-release");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("PRETTY_NAME=", 0) == 0) {
      pretty = line.substr(12);
      if (pretty.size() >= 2 && pretty.front() == '"') pretty = pretty.substr(1, pretty.size() - 2);
    }
  }
  utsname u{};
  uname(&u);
  return (pretty.empty() ? std::string(u.sysname) : pretty) + " (kernel " + u.release + ")";
}

std::string compiler_name() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "g++ " __VERSION__;
#else
  return "unknown";
#endif
}

std::string host_name() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

}  // namespace

struct CacheSize {
  uint64_t bytes = 0;
  const char* source = "unknown";
};

CacheSize last_level_cache() {
  int best_level = -1;
  uint64_t best_size = 0;
  const fs::path base = "/sys/devices/system/cpu/cpu0/cache";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(base, ec)) {
    if (entry.path().filename().string().rfind("index", 0) != 0) continue;
    if (read_first_line(entry.path() / "type") == "Instruction") continue;
    int level = std::atoi(read_first_line(entry.path() / "level").c_str());
    uint64_t size = parse_cache_size(read_first_line(entry.path() / "size"));
    if (level > best_level || (level == best_level && size > best_size)) {
      best_level = level;
      best_size = size;
    }
  }
  if (best_size > 0) return {best_size, "sysfs"};
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const long size = l3 > 0 ? l3 : l2;
  if (size > 0) return {static_cast<uint64_t>(size), "cpuid"};
  return {};
}

uint64_t available_memory_bytes() { return proc_kb_field("/proc/meminfo", "MemAvailable"); }

double load_average_1m() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  if (!(in >> load)) return -1;
  return load;
}

namespace {
// /proc/stat's "procs_running N" (runnable threads, this one included); 0 if unreadable.
int64_t procs_running() {
  std::ifstream in("/proc/stat");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("procs_running ", 0) == 0) return std::strtoll(line.c_str() + 14, nullptr, 10);
  }
  return 0;
}
}  // namespace

double competing_threads_now() {
  double sum = 0;
  constexpr int kSamples = 5;
  for (int i = 0; i < kSamples; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const int64_t running = procs_running();
    if (running <= 0) return -1;  // it counts this thread: 0 means unreadable
    sum += static_cast<double>(running - 1);
  }
  // procs_running counts the whole host; a process pinned to some CPUs competes for its share.
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  const double share = online > 0 ? std::min(1.0, double(available_cores()) / double(online)) : 1.0;
  return share * sum / kSamples;
}

std::string busy_machine_warning(const Environment& env) {
  if (env.competing_threads < 0.5 || env.cores < 1) return "";
  if (env.competing_threads + env.threads <= env.cores + 0.25) return "";
  char text[360];
  std::snprintf(text, sizeof(text),
                "the machine is busy: %.1f other runnable thread(s) on %d core(s) beside this "
                "run's %d (1-minute load average %.1f); timings will be slower and noisier than "
                "on a quiet machine (recorded as environment.competing_threads)",
                env.competing_threads, env.cores, env.threads, env.load_average);
  return text;
}

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void set_thread_count(int n) { at::set_num_threads(n); }

BlasInfo detect_blas() {
  // The BLAS in use is whichever library the dynamic linker resolves sgemm_ to for libtorch.
  BlasInfo info;
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info dl{};
  if (sgemm && dladdr(sgemm, &dl) && dl.dli_fname) {
    std::error_code ec;
    fs::path real = fs::canonical(dl.dli_fname, ec);
    info.library = ec ? dl.dli_fname : real.string();
  }
  const std::string& lib = info.library;
  using ConfigFn = char* (*)();
  auto openblas_config = reinterpret_cast<ConfigFn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (lib.find("openblas") != std::string::npos) {
    info.name = "OpenBLAS";
    if (lib.find("openblas-openmp") != std::string::npos) info.name += " (OpenMP)";
    if (lib.find("openblas-pthread") != std::string::npos) info.name += " (pthreads)";
    if (openblas_config) info.detail = openblas_config();
  } else if (lib.find("mkl") != std::string::npos) {
    info.name = "MKL";
  } else if (lib.find("/blas/") != std::string::npos ||
             lib.find("libblas.so") != std::string::npos) {
    info.name = "reference BLAS";
    info.reference = true;
  } else {
    info.name = lib.empty() ? "unknown (no sgemm_ symbol loaded)" : "unknown";
  }
  return info;
}

CudaInfo query_cuda() {
  CudaInfo info;
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) info.visible_devices = visible;
#ifdef KVBENCH_HAVE_CUDA
  info.built = true;
  kernels::runtime_version(&info.runtime_version);
  int count = 0;
  cudaError_t err = kernels::device_count(&count);
  if (err != cudaSuccess) {
    info.error = kernels::error_name(err);
    return info;
  }
  kernels::driver_version(&info.driver_version);
  info.device_count = count;
  for (int d = 0; d < count; ++d) {
    kernels::DeviceInfo di{};
    if (kernels::device_info(d, &di) != cudaSuccess) continue;
    GpuInfo g;
    g.name = di.name;
    g.compute_major = di.compute_major;
    g.compute_minor = di.compute_minor;
    g.sm_count = di.sm_count;
    g.sm_clock_mhz = di.sm_clock_khz / 1000;
    g.memory_clock_mhz = di.memory_clock_khz / 1000;
    g.memory_bus_bits = di.memory_bus_bits;
    g.memory_bytes = di.memory_bytes;
    info.devices.push_back(g);
  }
  if (count == 0) info.error = "no CUDA device";
#else
  info.error = "kvbench was built without CUDA support";
#endif
  return info;
}

Environment capture_environment() {
  Environment env;
  env.hostname = host_name();
  env.os = os_name();
  env.compiler = compiler_name();
  env.cpu_model = cpu_model();
  env.cores = available_cores();
  env.threads = at::get_num_threads();
  const CacheSize llc = last_level_cache();
  env.llc_bytes = llc.bytes;
  env.llc_source = llc.source;
  env.memory_bytes = proc_kb_field("/proc/meminfo", "MemTotal");
  env.memory_available_bytes = available_memory_bytes();
  // Sampled once, before this process ran anything: a grid's later runs would otherwise read
  // the load of its own earlier cells.
  static const double load_before_any_cell = load_average_1m();
  static const double competing_before_any_cell = competing_threads_now();
  env.load_average = load_before_any_cell;
  env.competing_threads = competing_before_any_cell;
  env.libtorch = TORCH_VERSION;
  env.blas = detect_blas();
  env.cuda = query_cuda();
  env.overrides = code_path_overrides();
  return env;
}

std::map<std::string, std::string> code_path_overrides() {
  std::map<std::string, std::string> out;
  for (const char* name : {"KVBENCH_DECODE_LOOP", "KVBENCH_RETAINED_TOKENS", "KVBENCH_MODEL_OPS",
                           "KVBENCH_MODEL_GEMM", "KVBENCH_PAGED_PATH", "KVBENCH_SIMD"})
    if (const char* value = std::getenv(name)) out[name] = value;
  return out;
}

std::map<std::string, std::string> applicable_code_path(
    const std::map<std::string, std::string>& overrides, const std::string& device,
    const std::string& attention) {
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : overrides) {
    const bool gpu_only = name == "KVBENCH_DECODE_LOOP" || name == "KVBENCH_RETAINED_TOKENS" ||
                          name == "KVBENCH_MODEL_OPS";
    const bool cpu_only = name == "KVBENCH_SIMD" || name == "KVBENCH_PAGED_PATH";
    if (value.empty() || (gpu_only && device != "cuda") || (cpu_only && device != "cpu") ||
        (name == "KVBENCH_MODEL_GEMM" && value == "aten") ||
        (name == "KVBENCH_PAGED_PATH" && attention == "paged"))
      continue;
    out[name] = value;
  }
  return out;
}

nlohmann::json to_json(const Environment& env) {
  nlohmann::json gpus = nlohmann::json::array();
  for (const auto& g : env.cuda.devices) {
    gpus.push_back({{"name", g.name},
                    {"compute_capability",
                     std::to_string(g.compute_major) + "." + std::to_string(g.compute_minor)},
                    {"sm_count", g.sm_count},
                    {"sm_clock_mhz", g.sm_clock_mhz},
                    {"memory_clock_mhz", g.memory_clock_mhz},
                    {"memory_bus_bits", g.memory_bus_bits},
                    {"memory_bytes", g.memory_bytes}});
  }
  nlohmann::json cuda = {{"built", env.cuda.built},
                         {"device_count", env.cuda.device_count},
                         {"driver_version", env.cuda.driver_version},
                         {"runtime_version", env.cuda.runtime_version},
                         {"devices", gpus}};
  if (!env.cuda.error.empty()) cuda["error"] = env.cuda.error;
  cuda["visible_devices"] =
      env.cuda.visible_devices ? nlohmann::json(*env.cuda.visible_devices) : nlohmann::json();
  return {{"hostname", env.hostname},
          {"os", env.os},
          {"compiler", env.compiler},
          {"cpu_model", env.cpu_model},
          {"cores", env.cores},
          {"threads", env.threads},
          {"llc_bytes", env.llc_bytes},
          {"llc_source", env.llc_source},
          {"memory_bytes", env.memory_bytes},
          {"memory_available_bytes", env.memory_available_bytes},
          {"load_average", env.load_average},
          {"competing_threads", env.competing_threads},
          {"libtorch", env.libtorch},
          {"blas",
           {{"name", env.blas.name},
            {"detail", env.blas.detail},
            {"library", env.blas.library},
            {"reference", env.blas.reference}}},
          {"cuda", cuda},
          {"overrides", env.overrides}};
}

}  // namespace kvbench
