// Warp-level tensor-core and register helpers shared by the decode kernels: mma.m16n8k16 with
// fp32 accumulators, ldmatrix, cp.async, bit casts, LOP3 and the fast exp2. Built by nvcc; a
// host test that runs device code on the CPU (KVB_KERNEL_EMULATED) gets the per-thread helpers
// in plain C++ here and the warp-collective ones (mma, ldmatrix, cp.async) from its emulation
// (tests/unit/cuda_emulation.h).
// Fragment layouts (PTX ISA, "mma.m16n8k16"): lane l = 4 * g + m holds
//   A (16 x 16, row-major): (g, 2m..2m+1), (g+8, 2m..), (g, 8+2m..), (g+8, 8+2m..)
//   B (16 x 8, "col"):      (k 2m..2m+1, n g), (k 8+2m.., n g)
//   C (16 x 8, fp32):       (g, 2m), (g, 2m+1), (g+8, 2m), (g+8, 2m+1)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "dynamic_smem.h"  // KVB_DYNAMIC_SMEM

namespace kvbench::kernels::mma {

__device__ __forceinline__ float fast_exp2(float x) {
#if defined(KVB_KERNEL_EMULATED)
  return exp2f(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// (a & mask) | bits in one instruction.
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t mask, uint32_t bits) {
#if defined(KVB_KERNEL_EMULATED)
  return (a & mask) | bits;
#else
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(a), "r"(mask), "r"(bits));
  return r;
#endif
}

template <class T2>
__device__ __forceinline__ uint32_t as_u32(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ __half2 u32_as_h2(uint32_t v) { return *reinterpret_cast<__half2*>(&v); }

// Two floats as a 16-bit pair (x in the low half), fp16 or bf16, rounded to nearest.
template <bool kBf16>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  if constexpr (kBf16)
    return as_u32(__floats2bfloat162_rn(x, y));
  else
    return as_u32(__floats2half2_rn(x, y));
}

#if !defined(KVB_KERNEL_EMULATED)
template <bool kBf16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// The asm below clobbers "memory" so that the compiler keeps ordinary shared-memory stores and
// loads on their side of it.
// Four 8 x 8 16-bit matrices from shared memory; lanes 8i..8i+7 give the row addresses of
// matrix i, and lane l receives (row l / 4, columns 2(l % 4), +1) of each (with .trans: of
// its transpose).
template <bool kTrans = false>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
}

// 16 bytes global -> shared without passing through registers; completes at cp_async_wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* global) {
  const uint32_t a = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(global) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#endif  // !KVB_KERNEL_EMULATED

}  // namespace kvbench::kernels::mma
