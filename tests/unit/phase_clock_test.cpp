// PhaseClock splits a step into phases: each phase's intervals sum, a step ends at finish(),
// and on a GPU the device's time between marks is what counts (not the host's issuing).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <chrono>
#include <thread>

#include "kvbench/core/error.h"
#include "kvbench/core/phase_clock.h"

#ifdef KVBENCH_TORCH_CUDA
#include <ATen/cuda/Sleep.h>
#endif

namespace kvbench {
namespace {

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

TEST(PhaseClockTest, SumsEachPhasesIntervalsAndStartsOverAfterFinish) {
  PhaseClock clock(at::Device(at::kCPU), {"a", "b", "c"});
  clock.mark(0);
  sleep_ms(20);
  clock.mark(1);
  sleep_ms(5);
  clock.mark(0);  // a phase marked again adds to its sum
  sleep_ms(10);
  const std::vector<double> s = clock.finish();
  ASSERT_EQ(s.size(), 3u);
  EXPECT_GE(s[0], 0.030);
  EXPECT_GE(s[1], 0.005);
  EXPECT_EQ(s[2], 0.0);  // never marked
  EXPECT_LT(s[0] + s[1], 5.0);
  EXPECT_EQ(clock.finish(), std::vector<double>(3, 0.0)) << "finish() starts a new step";
  clock.mark(2);
  sleep_ms(2);
  const std::vector<double> next = clock.finish();
  EXPECT_EQ(next[0], 0.0);
  EXPECT_GE(next[2], 0.002);
}

TEST(PhaseClockTest, RefusesPhasesOutsideItsNames) {
  EXPECT_THROW(PhaseClock(at::Device(at::kCPU), {}), Error);
  PhaseClock clock(at::Device(at::kCPU), {"a"});
  EXPECT_THROW(clock.mark(1), Error);
  EXPECT_THROW(clock.mark(-1), Error);
}

// A step abandoned half way (its forward threw) leaves nothing behind once reset, and a mark
// that throws leaves the step as it was.
TEST(PhaseClockTest, AnAbandonedStepLeavesNothingBehind) {
  PhaseClock clock(at::Device(at::kCPU), {"a", "b"});
  clock.mark(0);
  sleep_ms(30);
  clock.reset();
  clock.mark(1);
  EXPECT_THROW(clock.mark(2), Error);
  sleep_ms(2);
  const std::vector<double> s = clock.finish();
  EXPECT_EQ(s[0], 0.0);
  EXPECT_GE(s[1], 0.002);
  EXPECT_LT(s[1], 0.030) << "the abandoned step's 30 ms were counted";
}

// Without a GPU, timing one is a clear error (at the first mark when the kernels are built,
// at construction when they are not), never a clock that reads zero.
TEST(PhaseClockTest, ACudaDeviceWithoutAGpuIsAnError) {
  if (at::hasCUDA()) GTEST_SKIP() << "a GPU is visible";
  EXPECT_THROW(
      {
        PhaseClock clock(at::Device(at::kCUDA, 0), {"a"});
        clock.mark(0);
      },
      Error);
}

// On a GPU the phases are the device's: a kernel that sleeps on the device while the host
// returns at once lands in the phase that queued it.
TEST(PhaseClockTest, OnAGpuTheDevicesTimeIsCounted) {
#ifdef KVBENCH_TORCH_CUDA
  if (!at::hasCUDA()) GTEST_SKIP() << "no GPU is visible";
  PhaseClock clock(at::Device("cuda"), {"quick", "slow"});
  for (int step = 0; step < 2; ++step) {  // the second reuses the first's events
    clock.mark(0);
    clock.mark(1);
    at::cuda::sleep(200'000'000);  // ~0.1 s at 2 GHz, queued in no time
    clock.mark(0);
    const std::vector<double> s = clock.finish();
    EXPECT_GT(s[1], 0.02) << "step " << step;
    EXPECT_LT(s[0], 0.01) << "step " << step;
  }
#else
  GTEST_SKIP() << "this libtorch has no CUDA";
#endif
}

}  // namespace
}  // namespace kvbench
