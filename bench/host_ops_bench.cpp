// The host's share of a GPU decode step: the top-level ATen operators a paged cache issues per
// layer for one decode step of a batch, per method, and the host time they take. On a GPU
// every operator costs the host a few microseconds (a launch, or a dispatch over a small host
// tensor) while the device streams the cache, so a method whose step issues hundreds per layer
// is host-bound there whatever its kernels do (docs/perf-notes.md, "A decode step's host
// cost"). The counts do not depend on the machine: a change that batches per-sequence work
// shows here before any GPU run. The times do: on a GPU they say where a host-bound step's
// time goes (an operator that waits for the device shows as a long one).
//
//   KVBENCH_PAGED_PATH=kernels build/host_ops_bench [batch] [prompt] [layers] [top] [method]
//       [device] [steps]
//
// One JSON line per method (or only `method`, e.g. "h2o" or "h2o+palu": a retention method over
// a codec other than full; "all": every one): {"method", "batch", "device", "steps",
// "ops_per_layer", "ops_per_layer_and_sequence", "top": the `top` (5) most frequent operators
// per layer, "host_us_per_layer": the host's wall time issuing a layer, "in_ops_us_per_layer":
// the part of it inside top-level operators, "top_us": the `top` operators by host time per
// layer, "step_ms": a whole step until the device has finished it}, averaged over `steps`
// (1) counted decode steps after one uncounted one. With KVBENCH_HOST_OPS_TRACE set, "last_layer"
// lists the last counted layer's operators in the order they were issued. `device`: cpu (default)
// or cuda (the kernels themselves; KVBENCH_PAGED_PATH is then not read). With
// KVBENCH_PAGED_PATH=kernels on the CPU the cache takes the GPU path's branches with the kernels'
// host references in place of the kernels; what differs on a GPU: the kernels themselves are not
// ATen operators (one launch each, not counted here), and each upload from the host adds a
// copy there, most of them a pin_memory first (the retained lists' table is written pinned;
// on the CPU both are free). Without the variable the CPU path's
// reference attention is counted. The observer costs each operator (nested ones too) well under a
// microsecond.
#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/kv/method_registry.h"
#include "preparation_helpers.h"  // tests/unit: bases fitted on synthetic data (palu, kvproj)

namespace {

// Top-level operators of the calling thread only (those a caller issued, not their internals
// nor what intra-op worker threads run), by name: how many, and their host time.
struct Counter {
  bool on = false;
  std::map<std::string, int64_t> names;
  std::map<std::string, double> seconds;
  int64_t total = 0;
  double in_ops = 0;
  std::vector<std::string> order;  // every counted operator in turn (KVBENCH_HOST_OPS_TRACE)
};
Counter counter;
thread_local int depth = 0;
const bool trace = std::getenv("KVBENCH_HOST_OPS_TRACE") != nullptr;
const std::thread::id main_thread = std::this_thread::get_id();

using Clock = std::chrono::steady_clock;

// A counted operator's start.
struct Started : at::ObserverContext {
  explicit Started(Clock::time_point t) : at(t) {}
  Clock::time_point at;
};

void install_counter() {
  at::addGlobalCallback(
      at::RecordFunctionCallback(
          [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
            if (depth++ == 0 && counter.on && std::this_thread::get_id() == main_thread) {
              ++counter.total;
              ++counter.names[fn.name()];
              if (trace) counter.order.emplace_back(fn.name());
              return std::make_unique<Started>(Clock::now());
            }
            return nullptr;
          },
          [](const at::RecordFunction& fn, at::ObserverContext* context) {
            --depth;
            if (context == nullptr) return;
            const double s =
                std::chrono::duration<double>(Clock::now() - static_cast<Started*>(context)->at)
                    .count();
            counter.seconds[fn.name()] += s;
            counter.in_ops += s;
          })
          .scopes({at::RecordScope::FUNCTION}));
}

// The `shown` largest entries of `values`, each divided by `per`.
template <typename T>
nlohmann::json largest(const std::map<std::string, T>& values, size_t shown, double per) {
  std::vector<std::pair<T, std::string>> top;
  for (const auto& [name, v] : values) top.emplace_back(v, name);
  std::sort(top.rbegin(), top.rend());
  nlohmann::json most = nlohmann::json::object();
  for (size_t i = 0; i < std::min(shown, top.size()); ++i)
    most[top[i].second] = double(top[i].first) / per;
  return most;
}

// The benchmark; main() turns its errors into a message.
int run(int argc, char** argv) {
  using namespace kvbench;
  const int64_t batch = argc > 1 ? std::atoll(argv[1]) : 16;
  const int64_t prompt = argc > 2 ? std::atoll(argv[2]) : 600;
  const int64_t layers = argc > 3 ? std::atoll(argv[3]) : 4;
  const size_t shown = argc > 4 ? size_t(std::atoll(argv[4])) : 5;
  const std::string only = argc > 5 && std::string(argv[5]) != "all" ? argv[5] : "";
  const at::Device device(argc > 6 ? argv[6] : "cpu");
  const int64_t steps = argc > 7 ? std::max<int64_t>(1, std::atoll(argv[7])) : 1;
  // Llama-3-8B's attention shape; budgets below the prompt, so every policy evicts each step.
  const int64_t kv_heads = 8, heads = 32, head_dim = 128;
  install_counter();
  for (const char* entry :
       {R"({"name": "full"})", R"({"name": "int4"})", R"({"name": "kivi-4"})",
        R"({"name": "streamingllm", "sinks": 4, "window": 508})",
        R"({"name": "snapkv", "budget": 512})", R"({"name": "h2o", "heavy": 256, "recent": 256})",
        R"({"name": "tova", "budget": 512})",
        R"({"name": "scissorhands", "budget": 512, "recent": 64, "history": 64})",
        R"({"name": "quest", "budget": 256, "dense_layers": 0})", R"({"name": "kvproj"})",
        R"({"name": "palu"})", R"({"name": "h2o", "heavy": 256, "recent": 256, "codec": "palu"})",
        R"({"name": "gear-4"})"}) {
    const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "method");
    // "h2o+palu": a retention method over a codec other than full.
    std::string label = method["name"];
    if (method.contains("codec") && method["codec"].value("name", "full") != "full")
      label += "+" + method["codec"]["name"].get<std::string>();
    if (!only.empty() && label != only) continue;
    const auto codec =
        testing_support::ready(make_codec(method, at::kHalf), layers, kv_heads, head_dim);
    auto cache = make_paged_cache(method, codec, layers, kv_heads, head_dim, at::kHalf, device);
    std::vector<int64_t> seqs, prompts(size_t(batch), prompt), ones(size_t(batch), 1);
    for (int64_t b = 0; b < batch; ++b) seqs.push_back(cache->add_sequence());
    auto gen = at::detail::createCPUGenerator(7);
    at::manual_seed(7);  // a GPU's rows: the same for every method of one run too
    // On a GPU drawn there: a 16 x 8k prefill's rows would take the CPU longer than the step.
    auto rows = [&](int64_t n, int64_t h) {
      return device.is_cpu()
                 ? at::randn({n, h, head_dim}, gen).to(at::kHalf)
                 : at::randn({n, h, head_dim}, at::TensorOptions().dtype(at::kHalf).device(device));
    };
    for (int64_t l = 0; l < layers; ++l)
      cache->append_and_attend_batch(l, seqs, prompts, rows(batch * prompt, heads),
                                     rows(batch * prompt, kv_heads),
                                     rows(batch * prompt, kv_heads));
    // One untimed step (lists uploaded, states grown), then the counted ones.
    counter = Counter{};
    double host_s = 0, step_s = 0;
    size_t last_layer_from = 0;  // the last counted layer's first operator in counter.order
    for (int64_t step = 0; step <= steps; ++step) {
      const at::Tensor q = rows(batch, heads), k = rows(batch, kv_heads), v = rows(batch, kv_heads);
      wait_for_device(device);  // the step starts with nothing queued
      counter.on = step > 0;
      const Clock::time_point t0 = Clock::now();
      for (int64_t l = 0; l < layers; ++l) {
        last_layer_from = counter.order.size();
        cache->append_and_attend_batch(l, seqs, ones, q, k, v);
      }
      const Clock::time_point t1 = Clock::now();
      counter.on = false;
      wait_for_device(device);
      if (step == 0) continue;
      host_s += std::chrono::duration<double>(t1 - t0).count();
      step_s += std::chrono::duration<double>(Clock::now() - t0).count();
    }
    const double per = double(layers * steps), per_layer = double(counter.total) / per;
    nlohmann::json line{{"method", label},
                        {"batch", batch},
                        {"device", device.str()},
                        {"steps", steps},
                        {"ops_per_layer", per_layer},
                        {"ops_per_layer_and_sequence", per_layer / double(batch)},
                        {"top", largest(counter.names, shown, per)},
                        {"host_us_per_layer", host_s * 1e6 / per},
                        {"in_ops_us_per_layer", counter.in_ops * 1e6 / per},
                        {"top_us", largest(counter.seconds, shown, per / 1e6)},
                        {"step_ms", step_s * 1e3 / double(steps)}};
    if (trace)
      line["last_layer"] =
          std::vector<std::string>(counter.order.begin() + last_layer_from, counter.order.end());
    std::cout << line.dump() << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {  // a device name libtorch cannot read
    std::cerr << "host_ops_bench: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {  // a device without support, a bad method: say so
    std::cerr << "host_ops_bench: " << e.what() << std::endl;
  }
  return 1;
}
