// kvbench's kernels launch on torch's current CUDA stream (core/cuda_stream.h). A caller that
// makes a pool stream current (one created non-blocking: it does not wait for the legacy
// default stream, nor the default stream for it) must get the same results as on the default
// stream; a kernel launched on the wrong stream would race the uploads and copies torch queued
// on the current one.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/fused_ops.h"
#include "preparation_helpers.h"

#ifdef KVBENCH_TORCH_CUDA
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace kvbench {
namespace {

TEST(CudaStreamTest, IsTheLegacyDefaultStreamOffTheGpu) {
  EXPECT_EQ(current_cuda_stream(at::Device(at::kCPU)), nullptr);
  if (!follows_torch_streams())
    EXPECT_EQ(current_cuda_stream(at::Device(at::kCUDA, 0)), nullptr)
        << "a libtorch without CUDA has only the default stream to name";
}

// The wait a retention timer takes out: none off the GPU; on it, at least the work queued.
TEST(CudaStreamTest, WaitForDeviceWaitsForTheQueuedWork) {
  EXPECT_EQ(wait_for_device(at::Device(at::kCPU)), 0.0);
#ifdef KVBENCH_TORCH_CUDA
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU is visible";
  wait_for_device(at::Device("cuda"));
  at::cuda::sleep(200'000'000);  // ~0.1 s at 2 GHz
  EXPECT_GT(wait_for_device(at::Device("cuda")), 0.02);
  EXPECT_LT(wait_for_device(at::Device("cuda")), 0.02);  // nothing left
#endif
}

TEST(DeviceTimerTest, RefusesADeviceThatIsNotAGpu) {
  EXPECT_THROW(DeviceTimer(at::Device(at::kCPU)), Error);
}

// Device time of copies: positive, longer for four times the bytes, and under a bandwidth no
// GPU reaches (a timer that read the host clock or a wrong event would fail one of these).
TEST(DeviceTimerTest, TimesCopiesOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA (or no GPU is visible)";
  const at::Device device(at::kCUDA, 0);
  const auto bytes = at::TensorOptions().dtype(at::kByte).device(device);
  at::Tensor src = at::full({int64_t{1} << 30}, 7, bytes), dst = at::empty_like(src);
  DeviceTimer timer(device);
  auto time_copy = [&](int64_t n) {
    dst.narrow(0, 0, n).copy_(src.narrow(0, 0, n));  // warm
    timer.start();
    dst.narrow(0, 0, n).copy_(src.narrow(0, 0, n));
    return timer.stop_seconds();
  };
  const double small = time_copy(int64_t{1} << 28), large = time_copy(int64_t{1} << 30);
  EXPECT_GT(small, 0);
  EXPECT_GT(large, 2 * small);
  EXPECT_LT(2.0 * double(int64_t{1} << 30) / large, 20e12) << "bytes moved per second";
}

#ifdef KVBENCH_TORCH_CUDA

constexpr int64_t kLayers = 2, kHeads = 8, kKvHeads = 2, kDim = 128;

// Every output of a prefill and decode steps (random inputs from a seeded CPU generator, so
// two runs see the same ones), read back to the host. Each step's inputs are copied on the
// current stream behind a ~1 ms spin kernel, so a kernel launched on another stream would
// read them unwritten. Palu's codec is prepared first (its bases from a random model's SVD).
std::vector<at::Tensor> run_steps(const std::string& entry, const at::Device& device) {
  const nlohmann::json method = resolve_method(nlohmann::json::parse(entry), "methods[0]");
  std::unique_ptr<KVCache> cache =
      method.value("name", "") == "palu"
          ? make_paged_cache(
                method,
                testing_support::ready(make_codec(method, at::kHalf), kLayers, kKvHeads, kDim),
                kLayers, kKvHeads, kDim, at::kHalf, device)
          : make_kv_cache(method, kLayers, kKvHeads, kDim, at::kHalf, "paged", at::Tensor(),
                          device);
  auto gen = at::detail::createCPUGenerator(41);
  const int64_t seq = cache->add_sequence();
  std::vector<at::Tensor> outs;
  std::vector<int64_t> steps = {300};
  steps.insert(steps.end(), 70, 1);
  for (int64_t n : steps)
    for (int64_t layer = 0; layer < kLayers; ++layer) {
      auto draw = [&](int64_t heads) {
        return at::randn({n, heads, kDim}, gen).to(device, cache->attend_dtype());
      };
      const at::Tensor qs = draw(kHeads), ks = draw(kKvHeads), vs = draw(kKvHeads);
      at::cuda::sleep(2'000'000);
      const at::Tensor q = qs.clone(), k = ks.clone(), v = vs.clone();
      outs.push_back(cache->append_and_attend_batch(layer, {seq}, {n}, q, k, v).to(at::kCPU));
    }
  return outs;
}

TEST(CudaStreamTest, PagedCachesGiveTheSameOutputsOnAPoolStream) {
  if (!at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA (or no GPU is visible)";
  const at::Device device(at::kCUDA, 0);
  // The dense decode kernel with its ring, the appender, retained-index decode with kernel
  // scores (H2O), and the GEAR and Palu caches' own kernels.
  for (const char* entry : {R"({"name": "fp16"})", R"({"name": "kivi-2"})", R"({"name": "int4"})",
                            R"({"name": "h2o", "heavy": 32, "recent": 32})",
                            R"({"name": "gear-4"})", R"({"name": "palu", "rank": 64})"}) {
    SCOPED_TRACE(entry);
    const std::vector<at::Tensor> want = run_steps(entry, device);
    const c10::cuda::CUDAStream pool = c10::cuda::getStreamFromPool(false, device.index());
    std::vector<at::Tensor> got;
    {
      const c10::cuda::CUDAStreamGuard guard(pool);
      EXPECT_EQ(current_cuda_stream(device), static_cast<void*>(pool.stream()));
      got = run_steps(entry, device);
    }
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const double rel =
          ((got[i].to(at::kFloat) - want[i].to(at::kFloat)).norm() / want[i].to(at::kFloat).norm())
              .item<double>();
      // The same kernels on the same inputs; a race would read stale or unwritten memory.
      ASSERT_LT(rel, 1e-3) << "output " << i;
    }
  }
}

TEST(CudaStreamTest, ModelOpsGiveTheSameOutputsOnAPoolStream) {
  if (!at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA (or no GPU is visible)";
  const at::Device device(at::kCUDA, 0);
  auto gen = at::detail::createCPUGenerator(43);
  const at::Tensor x = at::randn({64, 4096}, gen).to(device, at::kHalf);
  const at::Tensor r = at::randn({64, 4096}, gen).to(device, at::kHalf);
  const at::Tensor w = at::randn({4096}, gen).to(device, at::kHalf);
  const at::Tensor gu = at::randn({64, 2 * 4096}, gen).to(device, at::kHalf);
  auto ops = [&] {
    at::cuda::sleep(2'000'000);  // the clone below lands late on the current stream
    at::Tensor xs = x.clone();
    const at::Tensor norm = add_rms_norm(xs, r, w, 1e-5);
    return std::vector<at::Tensor>{norm.cpu(), xs.cpu(), silu_mul(gu.clone()).cpu()};
  };
  const std::vector<at::Tensor> want = ops();
  const c10::cuda::CUDAStream pool = c10::cuda::getStreamFromPool(false, device.index());
  std::vector<at::Tensor> got;
  {
    const c10::cuda::CUDAStreamGuard guard(pool);
    got = ops();
  }
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(at::equal(got[i], want[i])) << i;
}

#endif  // KVBENCH_TORCH_CUDA

}  // namespace
}  // namespace kvbench
