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
  EXPECT_GE(env.load_average, 0.0);  // Linux always has /proc/loadavg
  EXPECT_EQ(j["load_average"], env.load_average);
  EXPECT_GE(env.competing_threads, 0.0);  // and /proc/stat's procs_running
  EXPECT_EQ(j["competing_threads"], env.competing_threads);
  set_thread_count(available_cores());
}

TEST(Environment, WarnsWhenOtherWorkCompetesForTheCores) {
  Environment env;
  env.cores = 2, env.threads = 2;
  env.load_average = 1.8;  // lags: only the threads runnable now count
  env.competing_threads = 0.2;
  EXPECT_EQ(busy_machine_warning(env), "");  // quiet now
  env.competing_threads = 2.0;
  EXPECT_NE(busy_machine_warning(env).find("the machine is busy: 2.0 other runnable thread(s) on "
                                           "2 core(s) beside this run's 2 (1-minute load "
                                           "average 1.8)"),
            std::string::npos)
      << busy_machine_warning(env);
  env.threads = 1, env.cores = 16;
  EXPECT_EQ(busy_machine_warning(env), "");  // room to spare
  env.competing_threads = -1;
  EXPECT_EQ(busy_machine_warning(env), "");  // unknown
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
