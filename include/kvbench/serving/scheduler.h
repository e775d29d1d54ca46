// Continuous batching over a BlockPool, as pure logic: requests join between steps and leave
// when they reach their output length. Each step decodes one token for every running request
// (oldest first) and then admits waiting requests in FIFO order while the step's token budget
// (max_batch_tokens), the sequence limit and the pool allow. A request is admitted when the pool
// has blocks for its whole context (prompt, plus the tokens generated before a preemption)
// and, if others are running, one spare block for decode growth. When a decode needs a block and
// the pool is empty, the most recently admitted request is preempted: its blocks are freed and
// it goes back to the front of the queue, to be recomputed (prefill of prompt + generated)
// later. The oldest running request is never preempted while others run, so every request
// completes. With chunked prefill, a prefill longer than the step's remaining token budget (or
// than prefill_chunk_tokens) is split over several steps: each step first decodes the running
// requests, then continues unfinished prefills (admission order), then admits new ones with
// whatever budget is left; a request's first token comes out at the end of its last chunk. A
// chunked request holds blocks for its whole context from admission, so its own chunks never
// need a block (it can still be the victim of an older request's decode growth). No clock here: the
// caller executes each plan and commits it (serving_loop.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
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
  // Set when the budget depends on the prompt (H2O's fractions of it): the budget of a sequence
  // whose last (re)prefill entered this many tokens, replacing retention_budget.
  std::function<int64_t(int64_t prefill)> retention_budget_of;
  bool evict_during_decode = true;
  // Set when the cache compacts what a policy evicting during decode keeps (a paged cache:
  // CacheLayout::compacting_page): each decoded token then takes a new slot until the free
  // ones reach this many past the budget (recompaction_slack), when it compacts again. A
  // sequence is charged min(its compacted prefill and decoded tokens, budget + that); with
  // chunked prefill (chunks after the first leave free slots too) the bound.
  std::function<int64_t(int64_t budget)> compaction_slack;
  // Split prefills into chunks of at most prefill_chunk_tokens (and the step's remaining token
  // budget), so a long prompt does not stall the decodes of running requests; a context may
  // then exceed max_batch_tokens.
  bool chunked_prefill = false;
  int64_t prefill_chunk_tokens = 512;
  // Blocks every running sequence holds beyond ceil(held / block_size): a format's
  // per-sequence full-precision window (KIVI's residual), so the pool's charge covers its bytes.
  int64_t window_blocks = 0;

  // Tokens a sequence is charged at `context` tokens under the retention budget (all of them
  // without one), its last (re)prefill having entered `prefill` tokens (0: none has ended
  // yet, its budget then that of its `prompt`).
  int64_t held_tokens(int64_t prefill, int64_t prompt, int64_t context) const;
};

// One prefill (or one chunk of it) in a step. Without chunking, start = 0 and tokens = context.
struct PrefillItem {
  int64_t id = 0;
  int64_t tokens = 0;   // tokens fed in this step: context[start, start + tokens)
  int64_t start = 0;    // tokens of the context already in the KV (0: a new sequence)
  int64_t context = 0;  // the whole context: prompt + tokens generated before a preemption
  bool last() const { return start + tokens == context; }  // the request emits its first token
};

struct StepPlan {
  std::vector<int64_t> preempted;  // dropped before this step; recomputed later
  std::vector<int64_t> decodes;    // one token each, oldest admission first
  // Continued chunks (admission order), then the requests admitted this step (FIFO order).
  std::vector<PrefillItem> prefills;
  int64_t batch_tokens = 0;
  bool empty() const { return decodes.empty() && prefills.empty(); }
};

struct StepOutcome {
  // Requests that produced a token (decodes, then prefills whose last chunk ran).
  std::vector<int64_t> emitted;
  std::vector<int64_t> finished;  // requests that reached their output length
};

class Scheduler {
 public:
  // The pool must outlive the scheduler. Throws Error on a bad config.
  Scheduler(BlockPool& pool, SchedulerConfig config);

  // Queues a request (in arrival order). Throws Error when it could never run, even alone: its
  // context exceeds the pool's blocks or (without chunked prefill) max_batch_tokens, or it asks
  // for no tokens.
  void submit(const ServingRequest& request);
  // submit()'s check alone, its errors starting with `subject` (e.g. "scheduler: request 3"),
  // so a workload can be checked before any of it is served.
  void check_admissible(const ServingRequest& request, const std::string& subject) const;
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
  // Tokens the request's KV holds now by the retention rule (0 when not running; during a
  // chunked prefill, the tokens prefilled so far).
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
    int64_t prefilled = 0;    // tokens of the current prefill already fed (chunked prefill)
    bool prefilling = false;  // admitted, its last prefill chunk not yet run
    int64_t preemptions = 0;
    bool running = false;
    bool done = false;
  };
  int64_t held(const State& s, int64_t context) const;
  // Blocks a running sequence holding `tokens` tokens needs (0 for none).
  int64_t blocks_needed(int64_t tokens) const;
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
