#include "kvbench/serving/block_pool.h"

#include <algorithm>
#include <cmath>

#include "kvbench/core/error.h"

namespace kvbench {

BlockPool::BlockPool(int64_t num_blocks, int64_t block_size) : block_size_(block_size) {
  KVB_CHECK(num_blocks >= 1, "block pool: num_blocks must be >= 1, got ", num_blocks);
  KVB_CHECK(block_size >= 1, "block pool: block_size must be >= 1, got ", block_size);
  KVB_CHECK(num_blocks <= INT32_MAX, "block pool: num_blocks ", num_blocks, " is too large");
  owner_.assign(static_cast<size_t>(num_blocks), -1);
  free_.reserve(static_cast<size_t>(num_blocks));
  // Lowest ids on top of the stack, so allocation order is deterministic and readable.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int64_t BlockPool::capacity(double budget_bytes, double bytes_per_block) {
  KVB_CHECK(bytes_per_block > 0, "block pool: bytes per block must be > 0, got ", bytes_per_block);
  KVB_CHECK(budget_bytes >= bytes_per_block, "block pool: a KV budget of ", budget_bytes,
            " bytes holds no block of ", bytes_per_block,
            " bytes; raise the budget (kv_budget_bytes or kv_budget_fraction)");
  const double n = std::floor(budget_bytes / bytes_per_block);
  KVB_CHECK(n <= static_cast<double>(INT32_MAX), "block pool: a KV budget of ", budget_bytes,
            " bytes gives ", n, " blocks, more than ", INT32_MAX);
  return static_cast<int64_t>(n);
}

int64_t BlockPool::blocks_for(int64_t tokens) const {
  return tokens <= 0 ? 0 : (tokens + block_size_ - 1) / block_size_;
}

bool BlockPool::allocate(int64_t seq, int64_t n) {
  KVB_CHECK(n >= 0, "block pool: cannot allocate ", n, " blocks");
  if (n > free_blocks()) return false;
  if (n == 0) return true;
  auto& table = tables_[seq];
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = free_.back();
    free_.pop_back();
    KVB_CHECK(owner_[static_cast<size_t>(b)] == -1, "block pool: free block ", b,
              " is owned by sequence ", owner_[static_cast<size_t>(b)]);
    owner_[static_cast<size_t>(b)] = seq;
    table.push_back(b);
  }
  peak_used_ = std::max(peak_used_, used_blocks());
  return true;
}

void BlockPool::shrink(int64_t seq, int64_t keep) {
  KVB_CHECK(keep >= 0, "block pool: cannot keep ", keep, " blocks");
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  auto& table = it->second;
  while (static_cast<int64_t>(table.size()) > keep) {
    const int32_t b = table.back();
    table.pop_back();
    KVB_CHECK(owner_[static_cast<size_t>(b)] == seq, "block pool: block ", b,
              " in the table of sequence ", seq, " is owned by ", owner_[static_cast<size_t>(b)]);
    owner_[static_cast<size_t>(b)] = -1;
    free_.push_back(b);
  }
  if (table.empty()) tables_.erase(it);
}

int64_t BlockPool::free_all(int64_t seq) {
  const int64_t n = blocks_of(seq);
  shrink(seq, 0);
  return n;
}

int64_t BlockPool::blocks_of(int64_t seq) const {
  auto it = tables_.find(seq);
  return it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size());
}

const std::vector<int32_t>& BlockPool::table(int64_t seq) const {
  static const std::vector<int32_t> empty;
  auto it = tables_.find(seq);
  return it == tables_.end() ? empty : it->second;
}

std::vector<int64_t> BlockPool::owners() const {
  std::vector<int64_t> out;
  for (const auto& [seq, table] : tables_) out.push_back(seq);
  return out;
}

void BlockPool::check_invariants() const {
  std::vector<int> seen(owner_.size(), 0);
  for (int32_t b : free_) {
    KVB_CHECK(b >= 0 && static_cast<size_t>(b) < owner_.size(), "block pool: bad free id ", b);
    KVB_CHECK(owner_[static_cast<size_t>(b)] == -1, "block pool: block ", b,
              " is free and owned by ", owner_[static_cast<size_t>(b)]);
    ++seen[static_cast<size_t>(b)];
  }
  for (const auto& [seq, table] : tables_) {
    KVB_CHECK(!table.empty(), "block pool: sequence ", seq, " has an empty table");
    for (int32_t b : table) {
      KVB_CHECK(b >= 0 && static_cast<size_t>(b) < owner_.size(), "block pool: bad id ", b);
      KVB_CHECK(owner_[static_cast<size_t>(b)] == seq, "block pool: block ", b,
                " is in the table of sequence ", seq, " but owned by ",
                owner_[static_cast<size_t>(b)]);
      ++seen[static_cast<size_t>(b)];
    }
  }
  for (size_t b = 0; b < seen.size(); ++b) {
    KVB_CHECK(seen[b] == 1, "block pool: block ", b, " appears ", seen[b],
              " times among the free list and the tables");
  }
}

}  // namespace kvbench
