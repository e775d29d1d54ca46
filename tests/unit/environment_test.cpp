#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include "kvbench/core/environment.h"

namespace kvbench {
namespace {

TEST(Environment, DetectsTheBlasLibTorchCalls) {
  BlasInfo blas = detect_blas();
  EXPECT_FALSE(blas.name.empty());
  EXPECT_FALSE(blas.library.empty()) << "libtorch links a BLAS providing sgemm_";
}

TEST(Environment, CapturesThreadsCachesAndMemory) {
  set_thread_count(1);
  Environment env = capture_environment();
  EXPECT_EQ(env.threads, 1);
  EXPECT_EQ(env.threads, at::get_num_threads());
  EXPECT_GE(env.cores, 1);
  EXPECT_GT(env.llc_bytes, 0u);
  EXPECT_TRUE(env.llc_source == "sysfs" || env.llc_source == "cpuid") << env.llc_source;
  EXPECT_GT(env.memory_available_bytes, 0u);
  EXPECT_FALSE(env.libtorch.empty());
  auto j = to_json(env);
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["llc_source"], env.llc_source);
  EXPECT_TRUE(j["cuda"].contains("built"));
  set_thread_count(available_cores());
}

TEST(Environment, NoGpuMeansAReasonNotACrash) {
  CudaInfo cuda = query_cuda();
  if (cuda.device_count == 0) {
    EXPECT_FALSE(cuda.error.empty());
  } else {
    EXPECT_FALSE(cuda.devices.empty());
    EXPECT_FALSE(cuda.devices[0].name.empty());
  }
}

}  // namespace
}  // namespace kvbench
