#include "kvbench/kv/kv_cache.h"

#include "kvbench/core/error.h"

namespace kvbench {

at::Tensor KVCache::append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                            const std::vector<int64_t>& counts, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v) {
  KVB_CHECK(seqs.size() == counts.size(), "KV cache: ", seqs.size(), " sequences but ",
            counts.size(), " token counts");
  std::vector<at::Tensor> outputs;
  int64_t offset = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto block = [&](const at::Tensor& t) {
      return t.narrow(0, offset, counts[i]).transpose(0, 1).contiguous();
    };
    outputs.push_back(
        append_and_attend(seqs[i], layer, block(q), block(k), block(v)).transpose(0, 1));
    offset += counts[i];
  }
  KVB_CHECK(offset == q.size(0), "KV cache: token counts sum to ", offset, ", the batch has ",
            q.size(0), " rows");
  return at::cat(outputs, 0);
}

}  // namespace kvbench
