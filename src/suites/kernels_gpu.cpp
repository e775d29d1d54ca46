#include "kvbench/suites/kernels_gpu.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "kvbench/attention/torch_sdpa.h"
#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/model/model_config.h"
#include "kvbench/suites/kernels_suite.h"

namespace kvbench {
namespace {

using nlohmann::json;

constexpr int64_t kCopyBytes = int64_t{1} << 30;  // far beyond any GPU's L2
constexpr int kLaunchesPerSample = 10;            // back to back between two CUDA events

// Waits for the queued work on the tensor's device by reading one value back (libtorch has no
// device-synchronize call outside its CUDA headers).
void wait_for(const at::Tensor& t) { (void)t.reshape({-1})[0].item<float>(); }

// Seconds per call of `fn` (which returns a tensor its work writes): each sample is the device
// time (CUDA events on torch's current stream) of kLaunchesPerSample calls queued back to
// back, so host launch cost overlaps the device's work except at the smallest points, and no
// read-back's latency is in it.
template <typename Fn>
std::vector<double> time_launches(const at::Device& device, int warmup, int repeats, Fn&& fn) {
  for (int i = 0; i < warmup; ++i) wait_for(fn());
  DeviceTimer timer(device);
  std::vector<double> samples;
  for (int i = 0; i < repeats; ++i) {
    timer.start();
    for (int j = 0; j < kLaunchesPerSample; ++j) fn();
    samples.push_back(timer.stop_seconds() / kLaunchesPerSample);
  }
  return samples;
}

json copy_record(const at::Device& device, int warmup, int repeats, uint64_t seed,
                 const std::string& phase) {
  const auto bytes = at::TensorOptions().dtype(at::kByte).device(device);
  at::Tensor src = at::full({kCopyBytes}, static_cast<int64_t>(seed % 251), bytes);
  at::Tensor dst = at::empty_like(src);
  const auto samples = time_launches(device, warmup, repeats, [&] { return dst.copy_(src); });
  const Summary s = summarize(samples, seed);
  const uint64_t moved = 2 * uint64_t(kCopyBytes);
  return {{"kind", "copy_bandwidth"}, {"phase", phase},
          {"device", device.str()},   {"bytes", kCopyBytes},
          {"bytes_moved", moved},     {"samples_s", samples},
          {"time_s", to_json(s)},     {"gbps", moved / s.median / 1e9}};
}

struct Point {
  int64_t batch, kv_heads, group, head_dim, context;
};

// The paged cache of one point: `batch` sequences of `context` random tokens on the device.
std::unique_ptr<PagedKVCache> filled_cache(const PagedFormat& format, const Point& pt,
                                           const at::Device& device, at::Generator& gen,
                                           std::vector<int64_t>& seqs) {
  const int64_t pages_per_seq = (pt.context + format.page_size - 1) / format.page_size;
  auto cache = std::make_unique<PagedKVCache>(
      format, 1, pt.kv_heads, pt.head_dim,
      PagedCapacity{pt.batch * pages_per_seq + pt.batch, 0, pt.batch}, device);
  for (int64_t b = 0; b < pt.batch; ++b) seqs.push_back(cache->add_sequence());
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  for (int64_t t = 0; t < pt.context; t += 4096) {
    const int64_t n = std::min<int64_t>(4096, pt.context - t);
    const at::Tensor k = at::randn({pt.batch * n, pt.kv_heads, pt.head_dim}, gen, opts);
    const at::Tensor v = at::randn({pt.batch * n, pt.kv_heads, pt.head_dim}, gen, opts);
    cache->append_batch(0, seqs, std::vector<int64_t>(size_t(pt.batch), n), k, v);
  }
  return cache;
}

// PyTorch's SDPA on an fp16 cache of the point's shape, one query per sequence, GQA in place.
json sdpa_record(const Point& pt, const at::Device& device, at::Generator& gen, int warmup,
                 int repeats, uint64_t seed) {
  if (!torch_sdpa_available()) return json();
  // Drawn in fp16: an fp32 draw then a cast would hold twice the cache at its peak, past what
  // the suite's memory estimate allows for.
  const auto fp16 = at::TensorOptions().dtype(at::kHalf).device(device);
  const at::Tensor q = at::randn({pt.batch, pt.kv_heads * pt.group, 1, pt.head_dim}, gen, fp16);
  const at::Tensor k = at::randn({pt.batch, pt.kv_heads, pt.context, pt.head_dim}, gen, fp16);
  const at::Tensor v = at::randn(k.sizes(), gen, fp16);
  const auto samples =
      time_launches(device, warmup, repeats, [&] { return torch_sdpa(q, k, v, /*causal=*/false); });
  const Summary s = summarize(samples, seed);
  const uint64_t moved = uint64_t(k.numel() + v.numel()) * 2 + 2 * uint64_t(q.numel()) * 2;
  return {{"samples_s", samples},
          {"time_s", to_json(s)},
          {"bytes_moved", moved},
          {"gbps", moved / s.median / 1e9}};
}

json point_record(const PagedFormat& format, const Point& pt, const at::Device& device, int warmup,
                  int repeats, uint64_t seed) {
  auto gen = at::globalContext().defaultGenerator(device);
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  std::vector<int64_t> seqs;
  auto cache = filled_cache(format, pt, device, gen, seqs);
  const at::Tensor q =
      at::randn({pt.batch, pt.kv_heads * pt.group, pt.head_dim}, gen,
                at::TensorOptions().dtype(at::kFloat).device(device))
          .to(format.format == kernels::KvFormat::kBf16 ? at::kBFloat16 : at::kHalf);
  at::Tensor out;
  const auto samples = time_launches(device, warmup, repeats, [&] {
    out = cache->attend_batch(0, seqs, q);
    return out;
  });
  KVB_CHECK(at::isfinite(out).all().item<bool>(), "kernels: non-finite attention output");
  const Summary s = summarize(samples, seed);
  const StorageBytes stored = cache->storage();
  // What any implementation must read and write: the pages, rings and scales holding tokens,
  // q in and the output out (fp16). A page's or ring's empty slots are never loaded (the
  // kernel masks them): counted, they overstated the rate (kivi-2 at 1024 tokens by ~31%:
  // an empty key ring).
  const uint64_t moved = stored.held() + 2 * uint64_t(q.numel()) * 2;
  json r = {{"kind", "decode_attention"},
            {"backend", "cuda"},
            {"device", device.str()},
            {"format", kernels::format_name(format.format)},
            {"batch", pt.batch},
            {"kv_heads", pt.kv_heads},
            {"group_size", pt.group},
            {"head_dim", pt.head_dim},
            {"context", pt.context},
            {"working_set_bytes", stored.total()},
            {"padding_bytes", stored.padding},
            {"nominal_bytes", cache->nominal().total()},
            {"metadata_bytes", stored.metadata},
            {"bytes_moved", moved},
            {"samples_s", samples},
            {"time_s", to_json(s)},
            {"gbps", moved / s.median / 1e9}};
  cache.reset();  // the peer's fp16 cache takes its place
  const json sdpa = sdpa_record(pt, device, gen, warmup, repeats, seed + 1);
  r["sdpa"] = sdpa;
  if (!sdpa.is_null()) r["ratio_to_sdpa"] = s.median / sdpa["time_s"]["median"].get<double>();
  return r;
}

}  // namespace

std::vector<int64_t> gpu_auto_contexts() {
  std::vector<int64_t> contexts;
  for (int64_t c = 1024; c <= 131072; c *= 2) contexts.push_back(c);
  return contexts;
}

uint64_t estimate_kernels_on_gpu(const nlohmann::json& p, const nlohmann::json& method) {
  if (method.contains("codec")) return 0;  // refused when it runs
  const std::vector<int64_t> contexts =
      p["contexts"] == "auto" ? gpu_auto_contexts() : p["contexts"].get<std::vector<int64_t>>();
  const std::vector<int64_t> heads = p["kv_heads"];
  const uint64_t tokens = uint64_t(p["batch"].get<int64_t>()) *
                          uint64_t(*std::max_element(contexts.begin(), contexts.end()));
  const uint64_t per_token = 2ull * uint64_t(*std::max_element(heads.begin(), heads.end())) *
                             uint64_t(p["head_dim"].get<int64_t>()) * 2;  // fp16 K and V
  // The paged cache (at most fp16-sized, plus a page per sequence) and then the peer's fp16
  // cache, never both; the copy buffers before them.
  return std::max<uint64_t>(tokens * per_token * 9 / 8, 2 * uint64_t(kCopyBytes));
}

CellOutput run_kernels_on_gpu(const CellContext& ctx) {
  const json& p = ctx.params;
  KVB_CHECK(at::hasCUDA(),
            "kernels: device cuda needs a libtorch with CUDA (this one is CPU-only)");
  KVB_CHECK(!ctx.method.contains("codec"),
            "kernels: on cuda the suite times the decode kernels "
            "per format; retention methods' steps are measured by "
            "the latency and throughput suites (attention paged)");
  const PagedFormat format = paged_format_for(ctx.method, dtype_from_name(p["dtype"]));
  const at::Device device("cuda");
  const std::vector<int64_t> contexts =
      p["contexts"] == "auto" ? gpu_auto_contexts() : p["contexts"].get<std::vector<int64_t>>();
  const std::vector<int64_t> kv_heads = p["kv_heads"];
  const int warmup = p["warmup"], repeats = p["repeats"];
  CellOutput out;
  ctx.progress.begin(ctx.cell_id, contexts.size() * kv_heads.size() + 2);
  out.records.push_back(copy_record(device, warmup, repeats, ctx.seed, "before"));
  ctx.progress.advance("copy bandwidth");
  for (int64_t c : contexts)
    for (int64_t h : kv_heads) {
      const Point pt{p["batch"], h, p["group_size"], p["head_dim"], c};
      out.records.push_back(point_record(format, pt, device, warmup, repeats, ctx.seed + c + h));
      ctx.progress.advance("context " + std::to_string(c) + ", kv_heads " + std::to_string(h));
    }
  out.records.push_back(copy_record(device, warmup, repeats, ctx.seed + 1, "after"));
  ctx.progress.advance("copy bandwidth");
  ctx.progress.end();

  // As on the CPU: a device whose speed moved during the cell (clocks, another job) is said.
  const KernelsSuite::CopyBandwidth bandwidth = KernelsSuite::copy_bandwidth(out.records);
  const double copy = bandwidth.gbps;
  if (!bandwidth.drift_warning.empty()) out.warnings.push_back(bandwidth.drift_warning);
  if (std::string w = KernelsSuite::spread_warning(out.records); !w.empty())
    out.warnings.push_back(w);
  double best = 0;
  for (auto& r : out.records) {
    if (r["kind"] != "decode_attention") continue;
    r["fraction_of_copy_bandwidth"] = r["gbps"].get<double>() / copy;
    best = std::max(best, r["fraction_of_copy_bandwidth"].get<double>());
  }
  if (!torch_sdpa_available())
    out.warnings.push_back(
        "no scaled_dot_product_attention in this libtorch (1.x): no PyTorch peer timed");
  const std::string gpu = ctx.env.cuda.devices.empty() ? "" : ctx.env.cuda.devices[0].name;
  out.summary = {{"copy_bandwidth_gbps", copy},
                 {"device", gpu},
                 {"best_fraction_of_copy_bandwidth", best},
                 {"contexts", contexts},
                 {"points", contexts.size() * kv_heads.size()},
                 {"sdpa_peer", torch_sdpa_available()}};
  return out;
}

}  // namespace kvbench
