// CUDA's names as the kernels' device headers use them, emulated on the CPU, so that a unit
// test runs a kernel's own device code (kernels/*_device.h, kernels/gear_rebuild.h) wherever
// the tests run: a block's threads are fibers on one OS thread meeting at each __syncthreads,
// run in a pseudo-random order per block; a warp's 32 lanes exchange shuffled values, mma
// fragments and ldmatrix addresses through slots of their own between two barriers of the
// warp; cp.async lands only at the wait that retires it (its destination reads NaN until
// then); dynamic shared memory starts as NaN; a misaligned cp.async or ldmatrix address, or a
// barrier some threads never reach, stops the test with a message. Blocks run one after
// another, so `__shared__` is a function's static: it is not poisoned and keeps what the
// last block left (a read of unwritten static shared memory is not caught), and neither are
// timing, coalescing or races that any one order of the threads hides.
//
// Two ways with the 16-bit types. By default this header gives the few the GEAR and retained
// kernels use, with the host's conversions (_Float16, a shift), not encode::half_value's bit
// arithmetic the host references use, so it builds without CUDA. A test that defines
// KVB_EMULATE_WITH_CUDA_TYPES first includes CUDA's own cuda_fp16.h, cuda_bf16.h and
// cuda_fp8.h (host-includable: their arithmetic runs on the host in fp32 and rounds as the
// GPU's does for one operation), and this header adds what they leave to the device: __hfma2
// (one rounding, as HFMA2), PRMT, and warp-level mma.m16n8k16 (kernels/mma_sm80.cuh), whose
// products are summed in double and rounded once into the fp32 accumulator.
//
// Include it after the standard, gtest and (with KVB_EMULATE_WITH_CUDA_TYPES) CUDA headers,
// before the device header; nothing else may follow that needs CUDA's names undefined.
#pragma once

#if defined(KVB_EMULATE_WITH_CUDA_TYPES)
#include <cuda_bf16.h>  // before CUDA's qualifiers are redefined below
#include <cuda_fp16.h>
#endif
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#define KVB_GEAR_EMULATED 1
#define KVB_KERNEL_EMULATED 1
#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#undef __align__
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct EmulatedIndex {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmulatedIndex threadIdx;
inline EmulatedIndex blockIdx, blockDim, gridDim;  // one block at a time

class EmulatedBlock;
inline thread_local EmulatedBlock* emulated_running = nullptr;  // the block being run

// The last of `count` threads to arrive releases the others; the others wait as fibers
// (EmulatedBlock). Every thread must reach every barrier (a GPU goes on past threads that have
// exited): a kernel where one does not stops the test at once, saying so.
class EmulatedBarrier {
 public:
  explicit EmulatedBarrier(int count) : count_(count) {}
  inline void arrive_and_wait();
  long generation() const { return generation_; }
  int arrived() const { return arrived_; }
  int count() const { return count_; }

 private:
  int count_, arrived_ = 0;
  long generation_ = 0;
};

struct EmulatedWarp {
  EmulatedBarrier barrier{32};
  float slots[32] = {};
  uint32_t words[32][6] = {};  // mma fragments: A's four registers, then B's two
  const void* rows[32] = {};   // ldmatrix: each lane's row address
};
inline thread_local EmulatedBarrier* emulated_block = nullptr;
inline thread_local EmulatedWarp* emulated_warp = nullptr;

// A block's threads as fibers (ucontext) on the calling thread: each runs until it waits at a
// barrier, then another that can go on runs, picked pseudo-randomly from the block's index
// (the same every run). One OS thread and a context switch per wait, where OS threads cost a
// futex wake-up per thread and barrier.
class EmulatedBlock {
 public:
  // `seed` picks the order in which threads that can go on are run (blockIdx by default), so
  // a kernel that reads another thread's write without a barrier between them sees it late in
  // some blocks and early in others.
  template <class Body>
  void run(int threads, const Body& body, uint32_t seed) {
    if (threads < 32 || threads % 32 != 0) {
      std::fprintf(stderr, "emulated CUDA: a block of %d threads (whole warps only)\n", threads);
      std::abort();
    }
    order_ = seed * 2654435761u + 1;
    barrier_ = std::make_unique<EmulatedBarrier>(threads);
    warps_.clear();
    for (int w = 0; w < threads / 32; ++w) warps_.push_back(std::make_unique<EmulatedWarp>());
    body_ = [&body] { body(); };
    fibers_.assign(size_t(threads), Fiber{});
    copies_.assign(size_t(threads), Copies{});
    std::vector<std::unique_ptr<char[]>>& stacks = fiber_stacks();
    while (stacks.size() < fibers_.size())  // not zeroed: pages are touched only as used
      stacks.push_back(std::unique_ptr<char[]>(new char[kStack]));
    for (size_t i = 0; i < fibers_.size(); ++i) {
      ucontext_t& c = fibers_[i].ctx;
      getcontext(&c);
      c.uc_stack.ss_sp = stacks[i].get(), c.uc_stack.ss_size = kStack, c.uc_link = nullptr;
      makecontext(&c, &EmulatedBlock::entry, 0);
    }
    EmulatedBlock* outer = emulated_running;
    emulated_running = this;
    enter(0);
    swapcontext(&main_, &fibers_[0].ctx);
    emulated_running = outer;
  }

  // A thread's cp.async copies: the bytes read at issue, written at the wait that retires their
  // group (kernels/mma_sm80.cuh's cp_async_*).
  struct Copy {
    unsigned char* dst;
    unsigned char bytes[16];
  };
  struct Copies {
    std::vector<std::vector<Copy>> committed;  // oldest first
    std::vector<Copy> open;                    // not yet committed
  };
  Copies& copies() { return copies_[size_t(current_)]; }

  // The running thread waits until `barrier` leaves generation `generation`.
  void wait(const EmulatedBarrier* barrier, long generation) {
    Fiber& f = fibers_[size_t(current_)];
    f.waits = barrier, f.generation = generation;
    leave(current_);
    f.waits = nullptr;
  }

 private:
  static constexpr size_t kStack = 256 * 1024;
  struct Fiber {
    ucontext_t ctx;
    const EmulatedBarrier* waits = nullptr;
    long generation = 0;
    bool done = false;
  };

  // The fibers' stacks, kept from block to block (one set for every kernel).
  static std::vector<std::unique_ptr<char[]>>& fiber_stacks() {
    static thread_local std::vector<std::unique_ptr<char[]>> stacks;
    return stacks;
  }

  static void entry() {
    EmulatedBlock& b = *emulated_running;
    b.body_();
    Copies& c = b.copies();  // what a thread leaves in flight still lands
    c.committed.push_back(std::move(c.open));
    for (const std::vector<Copy>& group : c.committed)
      for (const Copy& x : group) std::memcpy(x.dst, x.bytes, 16);
    b.fibers_[size_t(b.current_)].done = true;
    b.leave(b.current_);
  }
  bool can_run(const Fiber& f) const {
    return !f.done && (!f.waits || f.waits->generation() != f.generation);
  }
  void enter(int i) {
    current_ = i;
    threadIdx = EmulatedIndex{unsigned(i), 0, 0};
    emulated_block = barrier_.get();
    emulated_warp = warps_[size_t(i / 32)].get();
  }
  // Thread i cannot go on: switch to one that can (scanning from a pseudo-random start), or
  // back to run() when all are done.
  void leave(int i) {
    const int n = int(fibers_.size());
    order_ ^= order_ << 13, order_ ^= order_ >> 17, order_ ^= order_ << 5;  // xorshift32
    const int start = int(order_ % uint32_t(n));
    for (int k = 0; k < n; ++k) {
      const int j = (start + k) % n;
      if (!can_run(fibers_[size_t(j)])) continue;
      if (j == i) return;
      enter(j);
      swapcontext(&fibers_[size_t(i)].ctx, &fibers_[size_t(j)].ctx);
      return;
    }
    for (const Fiber& f : fibers_)
      if (!f.done) {
        const EmulatedBarrier* b = f.waits;
        std::fprintf(stderr,
                     "emulated CUDA: threads wait at a barrier (%d of %d arrived) that the others "
                     "never reach (an exited thread or a divergent warp shuffle)\n",
                     b ? b->arrived() : -1, b ? b->count() : -1);
        std::abort();
      }
    setcontext(&main_);
  }

  std::vector<Fiber> fibers_;
  std::vector<Copies> copies_;
  std::vector<std::unique_ptr<EmulatedWarp>> warps_;
  std::unique_ptr<EmulatedBarrier> barrier_;
  std::function<void()> body_;
  ucontext_t main_;
  int current_ = 0;
  uint32_t order_ = 1;
};

void EmulatedBarrier::arrive_and_wait() {
  if (++arrived_ == count_) {
    arrived_ = 0, ++generation_;
    return;
  }
  emulated_running->wait(this, generation_);
}

inline void __syncthreads() { emulated_block->arrive_and_wait(); }
inline void __syncwarp() { emulated_warp->barrier.arrive_and_wait(); }

// The value lane `src` holds. Every lane of the warp must call it, as on the GPU (the kernels'
// shuffles are warp-uniform).
inline float emulated_shuffle(float value, unsigned src) {
  EmulatedWarp& warp = *emulated_warp;
  const unsigned lane = threadIdx.x % 32;
  warp.slots[lane] = value;
  warp.barrier.arrive_and_wait();
  const float other = warp.slots[src % 32];
  warp.barrier.arrive_and_wait();
  return other;
}
inline float __shfl_xor_sync(unsigned, float value, int lane_mask) {
  return emulated_shuffle(value, (threadIdx.x % 32) ^ unsigned(lane_mask));
}
inline float __shfl_sync(unsigned, float value, int src_lane) {
  return emulated_shuffle(value, unsigned(src_lane));
}

template <class T>
T __ldg(const T* p) {
  return *p;
}
// Fibers switch only at barriers, so a read-modify-write is atomic here as on the GPU.
inline int atomicAdd(int* address, int value) {
  const int old = *address;
  *address = value + old;
  return old;
}
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }

// PRMT: byte i of the result is byte (s >> 4i) & 7 of {y, x} (x the low word); with bit 3 of
// that nibble set, the selected byte's sign bit repeated.
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t bytes = uint64_t(x) | (uint64_t(y) << 32);
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t sel = (s >> (4 * i)) & 0xf;
    uint32_t b = uint32_t(bytes >> (8 * (sel & 7))) & 0xff;
    if (sel & 8) b = (b & 0x80) ? 0xff : 0;
    r |= b << (8 * i);
  }
  return r;
}

inline void emulated_aligned16(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "emulated CUDA: %s at %p, not 16-byte aligned (a GPU faults)\n", what, p);
    std::abort();
  }
}

namespace kvbench::kernels::mma {

// ldmatrix.x4 (optionally .trans) over the warp: lanes 8i .. 8i + 7 give the row addresses of
// 8 x 8 matrix i; lane l receives (row l / 4, columns 2 (l % 4) and + 1) of each, or of its
// transpose (rows 2 (l % 4) and + 1 of column l / 4).
template <bool kTrans = false>
void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  EmulatedWarp& warp = *emulated_warp;
  const int lane = int(threadIdx.x % 32);
  emulated_aligned16(smem, "ldmatrix row");
  warp.rows[lane] = smem;
  warp.barrier.arrive_and_wait();
  auto at = [&](int matrix, int row, int col) {
    uint16_t v;
    std::memcpy(&v, static_cast<const char*>(warp.rows[8 * matrix + row]) + 2 * col, 2);
    return uint32_t(v);
  };
  for (int i = 0; i < 4; ++i) {
    const int a = lane / 4, b = 2 * (lane % 4);
    r[i] = kTrans ? at(i, b, a) | (at(i, b + 1, a) << 16) : at(i, a, b) | (at(i, a, b + 1) << 16);
  }
  warp.barrier.arrive_and_wait();
}

// cp.async lands late: its destination reads 0xff (NaN in every float format) from the issue
// until the cp_async_wait that retires its group, so a kernel that reads a stage before waiting
// for it, or refills one that a lane still reads, computes with NaNs.
inline void cp_async16(void* smem, const void* global) {
  emulated_aligned16(smem, "cp.async destination");
  emulated_aligned16(global, "cp.async source");
  EmulatedBlock::Copy c;
  c.dst = static_cast<unsigned char*>(smem);
  std::memcpy(c.bytes, global, 16);
  std::memset(smem, 0xff, 16);
  emulated_running->copies().open.push_back(c);
}
inline void cp_async_commit() {
  EmulatedBlock::Copies& c = emulated_running->copies();
  c.committed.push_back(std::move(c.open));
  c.open.clear();
}
// Lands every committed group but the newest N.
template <int N>
void cp_async_wait() {
  EmulatedBlock::Copies& c = emulated_running->copies();
  while (c.committed.size() > size_t(N)) {
    for (const EmulatedBlock::Copy& x : c.committed.front()) std::memcpy(x.dst, x.bytes, 16);
    c.committed.erase(c.committed.begin());
  }
}

}  // namespace kvbench::kernels::mma

#if !defined(KVB_EMULATE_WITH_CUDA_TYPES)
#if !defined(__VECTOR_TYPES_H__)  // CUDA's runtime headers not included before
struct alignas(8) uint2 {         // CUDA's layout
  unsigned x, y;
};
#endif
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
#else
// One rounding, as HFMA2: the product of two halves and their sum are exact in double but for
// far-apart exponents, then one rounding to half.
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  const float2 x = __half22float2(a), y = __half22float2(b), z = __half22float2(c);
  return __halves2half2(__double2half(std::fma(double(x.x), double(y.x), double(z.x))),
                        __double2half(std::fma(double(x.y), double(y.y), double(z.y))));
}

namespace kvbench::kernels::mma {

inline double emulated_element(uint32_t word, int half, bool bf16) {
  const uint16_t bits = uint16_t(word >> (16 * half));
  if (bf16) {
    __nv_bfloat16_raw r;
    r.x = bits;
    return double(__bfloat162float(__nv_bfloat16(r)));
  }
  __half_raw r;
  r.x = bits;
  return double(__half2float(__half(r)));
}

// mma.m16n8k16 (row.col, fp32 accumulators) over the warp: each lane posts its fragments
// (layouts in kernels/mma_sm80.cuh), then computes its own four accumulators from all of them.
template <bool kBf16>
void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  EmulatedWarp& warp = *emulated_warp;
  const int lane = int(threadIdx.x % 32), g = lane / 4, m = lane % 4;
  uint32_t* mine = warp.words[lane];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0, mine[5] = b1;
  warp.barrier.arrive_and_wait();
  // A(row, k) sits in lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half
  // k % 2; B(k, n) in lane 4 n + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
  auto A = [&](int row, int k) {
    return emulated_element(warp.words[4 * (row % 8) + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)],
                            k % 2, kBf16);
  };
  auto B = [&](int k, int n) {
    return emulated_element(warp.words[4 * n + (k % 8) / 2][4 + (k >= 8)], k % 2, kBf16);
  };
  float d[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * m + i % 2;
    double sum = c[i];
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    d[i] = float(sum);
  }
  warp.barrier.arrive_and_wait();
  for (int i = 0; i < 4; ++i) c[i] = d[i];
}

}  // namespace kvbench::kernels::mma
#endif  // KVB_EMULATE_WITH_CUDA_TYPES

// The dynamic shared memory of the launch being run (KVB_DYNAMIC_SMEM in kernels/dynamic_smem.h).
struct alignas(16) EmulatedSmemChunk {
  unsigned char bytes[16];
};
inline std::vector<EmulatedSmemChunk> emulated_smem;
inline unsigned char* emulated_dynamic_smem() {
  return reinterpret_cast<unsigned char*>(emulated_smem.data());
}

// One block of `threads` threads running `body`, blockIdx already set; its dynamic shared
// memory filled with 0xff first (NaN as fp16, bf16 and fp32), so a read of what no thread
// wrote shows.
template <class Body>
void emulate_block(int threads, const Body& body) {
  for (EmulatedSmemChunk& c : emulated_smem) std::memset(c.bytes, 0xff, sizeof c.bytes);
  EmulatedBlock block;
  block.run(threads, body, blockIdx.x + 977u * blockIdx.y + 7919u * blockIdx.z);
}

// Runs `body` (what every thread of a block runs) as a grid of `grid` blocks of `threads`
// threads (a multiple of 32) with `smem_bytes` of dynamic shared memory, one block after
// another, blockIdx, gridDim, blockDim and threadIdx.x set.
template <class Body>
void launch_emulated(EmulatedIndex grid, int threads, const Body& body, size_t smem_bytes = 0) {
  gridDim = grid, blockDim = EmulatedIndex{unsigned(threads), 1, 1};
  emulated_smem.assign((smem_bytes + 15) / 16 + 1, EmulatedSmemChunk{});
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = EmulatedIndex{x, y, z};
        emulate_block(threads, body);
      }
}
template <class Body>
void launch_emulated(int blocks, int threads, const Body& body) {
  launch_emulated(EmulatedIndex{unsigned(blocks), 1, 1}, threads, body);
}
