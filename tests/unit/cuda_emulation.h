// CUDA's names as the kernels' device headers use them, emulated on the CPU, so that a unit
// test runs a kernel's own device code (kernels/gear_rebuild.h, kernels/retained_decode_device.h)
// wherever the tests run: a block's threads are std::threads meeting at each __syncthreads (a
// condition-variable barrier), a warp's 32 lanes exchange __shfl_xor_sync values through a slot
// each between two barriers of their own, blocks run one after another (so `__shared__` is a
// function's static), and the 16-bit conversions are the host's (_Float16, a shift), not
// encode::half_value's bit arithmetic the host references use. Include it after the standard
// and gtest headers, before the device header; nothing else may follow that needs CUDA's
// names undefined.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define KVB_GEAR_EMULATED 1
#define KVB_KERNEL_EMULATED 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

struct EmulatedIndex {
  unsigned x = 0;
};
inline thread_local EmulatedIndex threadIdx;
inline EmulatedIndex blockIdx;  // one block at a time

// The last of `count` threads to arrive releases the others. A GPU goes on past threads that
// have exited; here every thread must reach every barrier, so a kernel where one does not
// would hang: after a minute the test process aborts, saying so, instead of stalling CI.
class EmulatedBarrier {
 public:
  explicit EmulatedBarrier(int count) : count_(count) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0, ++generation_;
      released_.notify_all();
    } else {
      if (!released_.wait_for(lock, std::chrono::seconds(60),
                              [&] { return generation_ != generation; })) {
        std::fprintf(stderr,
                     "emulated CUDA: %d of %d threads waited a minute at a barrier the others "
                     "never reached (an exited thread or a divergent warp shuffle)\n",
                     arrived_, count_);
        std::abort();
      }
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  int count_, arrived_ = 0;
  long generation_ = 0;
};

struct EmulatedWarp {
  EmulatedBarrier barrier{32};
  float slots[32] = {};
};
inline thread_local EmulatedBarrier* emulated_block = nullptr;
inline thread_local EmulatedWarp* emulated_warp = nullptr;

inline void __syncthreads() { emulated_block->arrive_and_wait(); }

// Every lane of the warp must call it, as on the GPU (the kernels' shuffles are warp-uniform).
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  EmulatedWarp& warp = *emulated_warp;
  const unsigned lane = threadIdx.x % 32;
  warp.slots[lane] = value;
  warp.barrier.arrive_and_wait();
  const float other = warp.slots[lane ^ unsigned(lane_mask)];
  warp.barrier.arrive_and_wait();
  return other;
}

struct alignas(8) uint2 {  // CUDA's layout
  unsigned x, y;
};
struct EmulatedBits16 {
  uint16_t bits;
};
inline EmulatedBits16 __ushort_as_half(uint16_t b) { return {b}; }
inline EmulatedBits16 __ushort_as_bfloat16(uint16_t b) { return {b}; }
inline float __half2float(EmulatedBits16 h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return float(f);
}
inline float __bfloat162float(EmulatedBits16 h) {
  const uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Runs `body` (what every thread of a block runs) as `blocks` blocks of `threads` threads (a
// multiple of 32), one block after another, blockIdx.x and threadIdx.x set.
template <class Body>
void launch_emulated(int blocks, int threads, const Body& body) {
  for (int block = 0; block < blocks; ++block) {
    blockIdx.x = unsigned(block);
    EmulatedBarrier barrier(threads);
    std::vector<std::unique_ptr<EmulatedWarp>> warps;
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<EmulatedWarp>());
    std::vector<std::thread> running;
    for (int x = 0; x < threads; ++x)
      running.emplace_back([&, x] {
        threadIdx.x = unsigned(x);
        emulated_block = &barrier;
        emulated_warp = warps[size_t(x / 32)].get();
        body();
      });
    for (std::thread& t : running) t.join();
  }
}
