// The host's share of a GPU decode step, counted on the CPU: the top-level ATen operators a
// paged cache issues per layer for one decode step of a batch, per method. On a GPU every
// operator costs the host a few microseconds (a launch, or a dispatch over a small host
// tensor) while the device streams the cache, so a method whose step issues hundreds per layer
// is host-bound there whatever its kernels do (docs/perf-notes.md, "A decode step's host
// cost"). The counts do not depend on the machine: a change that batches per-sequence work
// shows here before any GPU run.
//
//   KVBENCH_PAGED_PATH=kernels build/host_ops_bench [batch] [prompt] [layers] [top] [method]
//
// One JSON line per method (or only `method`, e.g. "h2o" or "h2o+palu": a retention method over a
// codec other than full): {"method", "batch", "ops_per_layer",
// "ops_per_layer_and_sequence", "top": the `top` (5) most frequent operators per layer}. With
// KVBENCH_PAGED_PATH=kernels the cache takes the GPU path's branches with the kernels' host
// references in place of the kernels; what differs on a GPU: the kernels themselves are not ATen
// operators (one launch each, not counted here), and each upload from the host adds a pin_memory
// and a copy there (on the CPU it is free). Without the variable the CPU path's reference attention
// is counted.
#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/kv/method_registry.h"
#include "preparation_helpers.h"  // tests/unit: bases fitted on synthetic data (palu, kvproj)

namespace {

// Top-level operators of the calling thread only (those a caller issued, not their internals
// nor what intra-op worker threads run), by name.
struct Counter {
  bool on = false;
  std::map<std::string, int64_t> names;
  int64_t total = 0;
};
Counter counter;
thread_local int depth = 0;
const std::thread::id main_thread = std::this_thread::get_id();

void install_counter() {
  at::addGlobalCallback(
      at::RecordFunctionCallback(
          [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
            if (depth++ == 0 && counter.on && std::this_thread::get_id() == main_thread) {
              ++counter.total;
              ++counter.names[fn.name()];
            }
            return nullptr;
          },
          [](const at::RecordFunction&, at::ObserverContext*) { --depth; })
          .scopes({at::RecordScope::FUNCTION}));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvbench;
  const int64_t batch = argc > 1 ? std::atoll(argv[1]) : 16;
  const int64_t prompt = argc > 2 ? std::atoll(argv[2]) : 600;
  const int64_t layers = argc > 3 ? std::atoll(argv[3]) : 4;
  const size_t shown = argc > 4 ? size_t(std::atoll(argv[4])) : 5;
  const std::string only = argc > 5 ? argv[5] : "";
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
    auto cache = make_paged_cache(method, codec, layers, kv_heads, head_dim, at::kHalf, at::kCPU);
    std::vector<int64_t> seqs, prompts(size_t(batch), prompt), ones(size_t(batch), 1);
    for (int64_t b = 0; b < batch; ++b) seqs.push_back(cache->add_sequence());
    auto gen = at::detail::createCPUGenerator(7);
    auto rows = [&](int64_t n, int64_t h) {
      return at::randn({n, h, head_dim}, gen).to(at::kHalf);
    };
    for (int64_t l = 0; l < layers; ++l)
      cache->append_and_attend_batch(l, seqs, prompts, rows(batch * prompt, heads),
                                     rows(batch * prompt, kv_heads),
                                     rows(batch * prompt, kv_heads));
    // One untimed step (lists uploaded, states grown), then the counted one.
    for (int step = 0; step < 2; ++step) {
      const at::Tensor q = rows(batch, heads), k = rows(batch, kv_heads), v = rows(batch, kv_heads);
      counter = Counter{};
      counter.on = step == 1;
      for (int64_t l = 0; l < layers; ++l) cache->append_and_attend_batch(l, seqs, ones, q, k, v);
    }
    std::vector<std::pair<int64_t, std::string>> top;
    for (const auto& [name, n] : counter.names) top.emplace_back(n, name);
    std::sort(top.rbegin(), top.rend());
    nlohmann::json most = nlohmann::json::object();
    for (size_t i = 0; i < std::min(shown, top.size()); ++i)
      most[top[i].second] = double(top[i].first) / double(layers);
    const double per_layer = double(counter.total) / double(layers);
    std::cout << nlohmann::json{{"method", label},
                                {"batch", batch},
                                {"ops_per_layer", per_layer},
                                {"ops_per_layer_and_sequence", per_layer / double(batch)},
                                {"top", most}}
                     .dump()
              << std::endl;
  }
  return 0;
}
