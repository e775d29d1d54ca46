#include "kvbench/core/act_dtype.h"

#include <string>

#include "kvbench/core/error.h"

namespace kvbench {

kernels::ActDtype act_dtype(at::ScalarType type, const char* who, const char* what) {
  switch (type) {
    case at::kFloat:
      return kernels::ActDtype::kF32;
    case at::kHalf:
      return kernels::ActDtype::kF16;
    case at::kBFloat16:
      return kernels::ActDtype::kBf16;
    default:
      throw Error(std::string(who) + ": " + what + " in " + c10::toString(type) +
                  " (expected float32, float16 or bfloat16)");
  }
}

}  // namespace kvbench
