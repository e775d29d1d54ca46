# Decides whether the kernels/ target is built (KVBENCH_HAVE_CUDA) and builds it.
# kernels/ is plain CUDA with no libtorch, so it compiles wherever nvcc exists, GPU or not.
set(KVBENCH_HAVE_CUDA OFF)
if(NOT KVBENCH_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "KVBENCH_CUDA must be AUTO, ON or OFF, got '${KVBENCH_CUDA}'")
endif()
if(NOT KVBENCH_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # Explicit architecture flags (sm_90a: Hopper, incl. its arch-specific instructions).
    set(CMAKE_CUDA_ARCHITECTURES OFF)
    enable_language(CUDA)
    set(KVBENCH_HAVE_CUDA ON)
  elseif(KVBENCH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KVBENCH_CUDA=ON but no CUDA compiler was found (set CUDACXX)")
  endif()
endif()

if(KVBENCH_HAVE_CUDA)
  find_package(CUDAToolkit REQUIRED)
  add_library(kvbench_kernels STATIC kernels/decode_attention.cu kernels/device_query.cu
    kernels/kv_append.cu kernels/kv_paged_decode.cu kernels/model_ops.cu kernels/retained_decode.cu
    kernels/latent_decode.cu kernels/palu_decode.cu kernels/gear_decode.cu kernels/quest_score.cu
    kernels/summed_attention.cu kernels/head_project.cu kernels/small_gemm.cu
    kernels/steady_evict.cu kernels/thin_qr.cu)
  target_include_directories(kvbench_kernels PUBLIC kernels)
  set_target_properties(kvbench_kernels PROPERTIES
    CUDA_ARCHITECTURES OFF POSITION_INDEPENDENT_CODE ON CUDA_STANDARD 17)
  target_compile_options(kvbench_kernels PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a>)
  target_link_libraries(kvbench_kernels PUBLIC CUDA::cudart)

  # The decode benchmark (bench/): kernels only, no libtorch; see docs/perf-notes.md.
  add_executable(gpu_decode_bench bench/gpu_decode_bench.cu)
  target_link_libraries(gpu_decode_bench PRIVATE kvbench_kernels)
  set_target_properties(gpu_decode_bench PROPERTIES CUDA_ARCHITECTURES OFF CUDA_STANDARD 17)
  target_compile_options(gpu_decode_bench PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a>)
  # The small-batch weight multiply over a Llama-3-8B decode step's weights (docs/perf-notes.md).
  add_executable(small_gemm_bench bench/small_gemm_bench.cu)
  target_link_libraries(small_gemm_bench PRIVATE kvbench_kernels)
  set_target_properties(small_gemm_bench PROPERTIES CUDA_ARCHITECTURES OFF CUDA_STANDARD 17)
  target_compile_options(small_gemm_bench PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a>)
  # H2O's prefill sums at a Llama-3-8B layer's shape (docs/perf-notes.md).
  add_executable(summed_attention_bench bench/summed_attention_bench.cu)
  target_link_libraries(summed_attention_bench PRIVATE kvbench_kernels)
  set_target_properties(summed_attention_bench PROPERTIES CUDA_ARCHITECTURES OFF CUDA_STANDARD 17)
  target_compile_options(summed_attention_bench PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a>)
endif()
