// A kernel's dynamic shared memory (the launch's third argument) as `unsigned char name[]`:
// CUDA's extern __shared__ array, or under emulation (KVB_KERNEL_EMULATED,
// tests/unit/cuda_emulation.h) the buffer of the block being run.
#pragma once

#if defined(KVB_KERNEL_EMULATED)
#define KVB_DYNAMIC_SMEM(name) unsigned char* name = emulated_dynamic_smem()
#else
#define KVB_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif
