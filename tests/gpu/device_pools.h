// A host paged cache's pools, rings and fp8 scales copied to the device, with the store over
// the copies: what every GPU test of a kernel that reads or writes the pools starts from.
#pragma once

#include "append_schedule.h"
#include "device_buffer.h"

namespace kvbench::gpu_test {

struct DevicePools {
  DeviceBuffer k_data, v_data, k_meta, v_meta, k_ring, v_ring, k_scale, v_scale;

  // Uploads `host`'s pools and sets *store to the store over the device copies. Returns the
  // first CUDA error.
  cudaError_t upload(HostPagedCache& host, kernels::PagedKvStore* store) {
    cudaError_t e = cudaSuccess;
    auto up = [&](DeviceBuffer& d, const auto& v) {
      if (e == cudaSuccess) e = d.upload(v);
    };
    up(k_data, host.k_data), up(v_data, host.v_data), up(k_meta, host.k_meta);
    up(v_meta, host.v_meta), up(k_ring, host.k_residual), up(v_ring, host.v_residual);
    up(k_scale, host.k_head_scale), up(v_scale, host.v_head_scale);
    *store = store_of(host);
    store->k_data = k_data.ptr, store->v_data = v_data.ptr;
    store->k_meta = k_meta.ptr, store->v_meta = v_meta.ptr;
    store->k_residual = k_ring.ptr, store->v_residual = v_ring.ptr;
    store->k_head_scale = static_cast<const float*>(k_scale.ptr);
    store->v_head_scale = static_cast<const float*>(v_scale.ptr);
    return e;
  }

  // Copies the pools and rings back into `host` (the scales are never written on the device).
  cudaError_t download(HostPagedCache& host) const {
    cudaError_t e = cudaSuccess;
    auto down = [&](const DeviceBuffer& d, auto& v) {
      if (e == cudaSuccess) e = d.download(v);
    };
    down(k_data, host.k_data), down(v_data, host.v_data), down(k_meta, host.k_meta);
    down(v_meta, host.v_meta), down(k_ring, host.k_residual), down(v_ring, host.v_residual);
    return e;
  }
};

}  // namespace kvbench::gpu_test
