// Continuous batching over a BlockPool, as pure logic: requests join between steps and leave
// when they reach their output length. Each step decodes one token for every running request
// (oldest first) and then admits waiting requests in FIFO order while the step's token budget
// (max_batch_tokens), the sequence limit and the pool allow. A request is admitted when the pool
// has blocks for its whole context (prompt, plus the tokens generated before a preemption)
// and, if others are running, one spare block for decode growth. When a decode needs a block and
// the pool is empty, the most recently admitted request is preempted: its blocks are freed and
// it goes back to the front of the queue, to be recomputed (prefill of prompt + generated)
// later. The oldest running request is never preempted while others run, so every request
// completes. No clock here: the caller executes each plan and commits it (serving_loop.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <vector>

#include "kvbench/serving/block_pool.h"

namespace kvbench {

struct ServingRequest {
  int64_t id = 0;
  double arrival_s = 0;
  int64_t prompt_tokens = 1;
  int64_t output_tokens = 1;  // tokens to generate (EOS ignored)
};

struct SchedulerConfig {
  int64_t max_batch_tokens = 2048;  // tokens entering the model per step (prefill + decode)
  int64_t max_running = 256;        // sequences in the running set
  // Retention methods hold at most `retention_budget` tokens per sequence (0: every token):
  // evicting during decode keeps min(context, budget); evicting once after the prefill keeps
  // min(prefill, budget) and grows by one per decode step.
  int64_t retention_budget = 0;
  bool evict_during_decode = true;
};

struct PrefillItem {
  int64_t id = 0;
  int64_t tokens = 0;  // context fed: prompt + tokens generated before a preemption
};

struct StepPlan {
  std::vector<int64_t> preempted;     // dropped before this step; recomputed later
  std::vector<int64_t> decodes;       // one token each, oldest admission first
  std::vector<PrefillItem> prefills;  // admitted this step, FIFO order
  int64_t batch_tokens = 0;
  bool empty() const { return decodes.empty() && prefills.empty(); }
};

struct StepOutcome {
  std::vector<int64_t> emitted;   // requests that produced a token (decodes, then prefills)
  std::vector<int64_t> finished;  // requests that reached their output length
};

class Scheduler {
 public:
  // The pool must outlive the scheduler. Throws Error on a bad config.
  Scheduler(BlockPool& pool, SchedulerConfig config);

  // Queues a request (in arrival order). Throws Error when it could never run, even alone: its
  // context exceeds max_batch_tokens or the pool's blocks, or it asks for no tokens.
  void submit(const ServingRequest& request);
  // The next step. Decode block growth and preemptions are applied to the pool here; the
  // caller must execute the plan and then commit() it before scheduling again.
  StepPlan schedule();
  StepOutcome commit(const StepPlan& plan);

  const BlockPool& pool() const { return pool_; }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  size_t waiting() const { return waiting_.size(); }
  size_t running() const { return running_.size(); }
  int64_t total_preemptions() const { return preemptions_; }
  int64_t preemptions(int64_t id) const;
  int64_t generated(int64_t id) const;
  // Tokens the request's KV holds now by the retention rule (0 when not running).
  int64_t held_tokens(int64_t id) const;
  const std::vector<int64_t>& admission_order() const { return admissions_; }
  // Throws Error when the pool's tables disagree with the running set (a leak or a block
  // owned by a request that is not running, or too few blocks for a running request).
  void check_invariants() const;

 private:
  struct State {
    ServingRequest req;
    int64_t generated = 0;
    int64_t prefill_len = 0;  // context of the last (re)prefill
    int64_t preemptions = 0;
    bool running = false;
    bool done = false;
  };
  int64_t held(const State& s, int64_t context) const;
  void preempt(int64_t id, StepPlan& plan);

  BlockPool& pool_;
  SchedulerConfig config_;
  std::map<int64_t, State> states_;
  std::deque<int64_t> waiting_;
  std::vector<int64_t> running_;  // admission order, oldest first
  std::vector<int64_t> admissions_;
  int64_t preemptions_ = 0;
};

}  // namespace kvbench
