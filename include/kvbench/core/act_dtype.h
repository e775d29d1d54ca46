// The kernels' activation dtype (kernels/model_ops.h) of a torch dtype, shared by the wrappers
// that hand activations to kernels/ (the model's fused ops, the paged cache's projections).
#pragma once

#include <ATen/ATen.h>

#include "model_ops.h"

namespace kvbench {

// fp32, fp16 or bf16; any other dtype throws Error "<who>: <what> in <dtype> (expected ...)".
kernels::ActDtype act_dtype(at::ScalarType type, const char* who, const char* what);

}  // namespace kvbench
