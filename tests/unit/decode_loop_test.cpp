// KVBENCH_DECODE_LOOP's reading (paged_cuda::decode_loop_for): one loop for every format, or a
// loop per format (what scripts/gpu_session.sh writes from the decode bench), and clear errors;
// KVBENCH_RETAINED_TOKENS' (paged_cuda::retained_tokens_for).
#include <gtest/gtest.h>

#include <string>

#include "../../src/kv/paged_cache_cuda.h"  // the paged cache's GPU calls (private to src/kv)
#include "kvbench/core/error.h"

namespace kvbench {
namespace {

using kernels::KvFormat;

TEST(DecodeLoopTest, OneLoopOrALoopPerFormat) {
  EXPECT_EQ(paged_cuda::decode_loop_for("", KvFormat::kInt4), "v2");
  EXPECT_EQ(paged_cuda::decode_loop_for("v3", KvFormat::kFp16), "v3");
  EXPECT_EQ(paged_cuda::decode_loop_for("v3h", KvFormat::kKivi4), "v3h");
  const std::string spec = "fp16=v2,int4=v3h,kivi-4=v3";
  EXPECT_EQ(paged_cuda::decode_loop_for(spec, KvFormat::kFp16), "v2");
  EXPECT_EQ(paged_cuda::decode_loop_for(spec, KvFormat::kInt4), "v3h");
  EXPECT_EQ(paged_cuda::decode_loop_for(spec, KvFormat::kKivi4), "v3");
  EXPECT_EQ(paged_cuda::decode_loop_for(spec, KvFormat::kKivi2), "v2");  // unlisted
  EXPECT_EQ(paged_cuda::decode_loop_for("int4-asym=v3", KvFormat::kInt4Asym), "v3");
  // v2b (v2 at four blocks per multiprocessor) exists for every format but KIVI's: named for
  // all formats, KIVI stays on v2.
  EXPECT_EQ(paged_cuda::decode_loop_for("v2b", KvFormat::kInt4), "v2b");
  EXPECT_EQ(paged_cuda::decode_loop_for("v2b", KvFormat::kKivi2), "v2");
  EXPECT_EQ(paged_cuda::decode_loop_for("fp16=v2b,kivi-4=v3", KvFormat::kFp16), "v2b");
  // v4 (staged through shared memory) exists for the quantized formats: named for all, fp16
  // and bf16 stay on v2.
  EXPECT_EQ(paged_cuda::decode_loop_for("v4", KvFormat::kKivi2), "v4");
  EXPECT_EQ(paged_cuda::decode_loop_for("v4", KvFormat::kFp16), "v2");
  EXPECT_EQ(paged_cuda::decode_loop_for("v4", KvFormat::kBf16), "v2");
  EXPECT_EQ(paged_cuda::decode_loop_for("fp16=v2b,int4=v4", KvFormat::kInt4), "v4");
}

TEST(DecodeLoopTest, SaysWhatItCannotRead) {
  auto message = [](const std::string& spec) {
    try {
      paged_cuda::decode_loop_for(spec, KvFormat::kInt4);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("v5").find("loop 'v5' (expected v2, v2b, v3, v3h or v4)"), std::string::npos);
  EXPECT_NE(message("kivi-2=v2b").find("kivi-2 has no v2b loop"), std::string::npos);
  EXPECT_NE(message("int4=v4,bf16=v4").find("bf16 has no v4 loop"), std::string::npos);
  EXPECT_NE(message("int5=v3").find("unknown format 'int5'"), std::string::npos);
  EXPECT_NE(message("int4=v3,kivi").find("'kivi' is not FORMAT=LOOP"), std::string::npos);
  EXPECT_NE(message("fp16=fast").find("loop 'fast'"), std::string::npos);
}

TEST(DecodeLoopTest, RetainedTokensPerStep) {
  EXPECT_EQ(paged_cuda::retained_tokens_for(""), 1);
  EXPECT_EQ(paged_cuda::retained_tokens_for("1"), 1);
  EXPECT_EQ(paged_cuda::retained_tokens_for("2"), 2);
  EXPECT_EQ(paged_cuda::retained_tokens_for("4"), 4);
  for (const char* bad : {"3", "8", "0", "four", "4 "}) {
    try {
      paged_cuda::retained_tokens_for(bad);
      ADD_FAILURE() << "'" << bad << "' accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("KVBENCH_RETAINED_TOKENS='" + std::string(bad) + "'"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("expected 1, 2 or 4"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace kvbench
