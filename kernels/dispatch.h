// The one place where run-time shapes become template arguments. Only compiled variants are
// dispatched; anything else falls through and the caller's error stands (decode_plan() has
// already rejected it with a message).
#pragma once

#include "kv_format.h"

#define KVB_CASE_FORMAT(F, NAME, ...) \
  case F: {                           \
    constexpr KvFormat NAME = F;      \
    __VA_ARGS__;                      \
    break;                            \
  }

#define KVB_DISPATCH_FORMAT(value, NAME, ...)               \
  switch (value) {                                          \
    KVB_CASE_FORMAT(KvFormat::kFp16, NAME, __VA_ARGS__)     \
    KVB_CASE_FORMAT(KvFormat::kBf16, NAME, __VA_ARGS__)     \
    KVB_CASE_FORMAT(KvFormat::kInt8, NAME, __VA_ARGS__)     \
    KVB_CASE_FORMAT(KvFormat::kInt4, NAME, __VA_ARGS__)     \
    KVB_CASE_FORMAT(KvFormat::kFp8, NAME, __VA_ARGS__)      \
    KVB_CASE_FORMAT(KvFormat::kKivi2, NAME, __VA_ARGS__)    \
    KVB_CASE_FORMAT(KvFormat::kKivi4, NAME, __VA_ARGS__)    \
    KVB_CASE_FORMAT(KvFormat::kInt4Asym, NAME, __VA_ARGS__) \
    KVB_CASE_FORMAT(KvFormat::kInt2, NAME, __VA_ARGS__)     \
  }

// head_dim: 64 and 128 (the shapes of every supported model preset).
#define KVB_DISPATCH_HEAD_DIM(value, NAME, ...) \
  if ((value) == 64) {                          \
    constexpr int NAME = 64;                    \
    __VA_ARGS__;                                \
  } else if ((value) == 128) {                  \
    constexpr int NAME = 128;                   \
    __VA_ARGS__;                                \
  }
