// Paged KV accounting: a pool of fixed-size blocks (block_size tokens each) sized from a byte
// budget and the method's bytes per block, and one block table per sequence. Compressed
// formats take fewer bytes per block, so the same budget holds more blocks. The pool is the
// admission/preemption accountant of the serving scheduler; the method's own KV cache holds
// the data (see docs/serving.md).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

namespace kvbench {

class BlockPool {
 public:
  // Throws Error for num_blocks < 1 or block_size < 1.
  BlockPool(int64_t num_blocks, int64_t block_size);

  // Blocks a budget of `budget_bytes` holds at `bytes_per_block` each; throws Error naming both
  // when not even one block fits (an impossible budget) or bytes_per_block is 0.
  static int64_t capacity(double budget_bytes, double bytes_per_block);

  int64_t num_blocks() const { return static_cast<int64_t>(owner_.size()); }
  int64_t block_size() const { return block_size_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return num_blocks() - free_blocks(); }
  int64_t peak_used_blocks() const { return peak_used_; }
  // Blocks needed to hold `tokens` tokens.
  int64_t blocks_for(int64_t tokens) const;

  // Appends `n` blocks to `seq`'s table, all or nothing: false (and nothing changes) when fewer
  // than n are free.
  bool allocate(int64_t seq, int64_t n);
  // Frees the blocks of `seq`'s table beyond the first `keep`.
  void shrink(int64_t seq, int64_t keep);
  // Frees every block of `seq` and forgets its table; returns how many were freed.
  int64_t free_all(int64_t seq);
  int64_t blocks_of(int64_t seq) const;
  // `seq`'s block ids in token order (empty for an unknown sequence).
  const std::vector<int32_t>& table(int64_t seq) const;
  // Sequences holding at least one block.
  std::vector<int64_t> owners() const;

  // Throws Error unless every block is either free or in exactly one table, exactly once.
  void check_invariants() const;

 private:
  int64_t block_size_;
  std::vector<int32_t> free_;                       // stack of free block ids
  std::vector<int64_t> owner_;                      // per block: owning sequence or -1
  std::map<int64_t, std::vector<int32_t>> tables_;  // sequence -> block ids
  int64_t peak_used_ = 0;
};

}  // namespace kvbench
