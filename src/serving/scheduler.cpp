#include "kvbench/serving/scheduler.h"

#include <algorithm>

#include "kvbench/core/error.h"

namespace kvbench {

Scheduler::Scheduler(BlockPool& pool, SchedulerConfig config) : pool_(pool), config_(config) {
  KVB_CHECK(config_.max_batch_tokens >= 1, "scheduler: max_batch_tokens must be >= 1, got ",
            config_.max_batch_tokens);
  KVB_CHECK(config_.max_running >= 1, "scheduler: max_running must be >= 1, got ",
            config_.max_running);
  KVB_CHECK(config_.retention_budget >= 0, "scheduler: retention_budget must be >= 0");
  KVB_CHECK(config_.window_blocks >= 0, "scheduler: window_blocks must be >= 0, got ",
            config_.window_blocks);
  KVB_CHECK(!config_.chunked_prefill || config_.prefill_chunk_tokens >= 1,
            "scheduler: prefill_chunk_tokens must be >= 1, got ", config_.prefill_chunk_tokens);
}

int64_t Scheduler::blocks_needed(int64_t tokens) const {
  return tokens <= 0 ? 0 : pool_.blocks_for(tokens) + config_.window_blocks;
}

int64_t SchedulerConfig::held_tokens(int64_t prefill, int64_t prompt, int64_t context) const {
  // Before its first prefill ends a sequence's budget is its prompt's.
  const int64_t budget =
      retention_budget_of ? retention_budget_of(prefill > 0 ? prefill : prompt) : retention_budget;
  if (budget == 0) return context;
  const int64_t compacted = std::min(prefill, budget) + (context - prefill);
  if (!evict_during_decode) return compacted;
  if (compaction_slack) {
    // A whole prefill is compacted to the budget; chunks after the first enter as decode tokens
    // do, leaving free slots the next compaction takes back: then only the bound is known.
    const int64_t bound = budget + compaction_slack(budget);
    return std::min({context, chunked_prefill ? bound : compacted, bound});
  }
  return std::min(context, budget);
}

int64_t Scheduler::held(const State& s, int64_t context) const {
  return config_.held_tokens(s.prefill_len, s.req.prompt_tokens, context);
}

void Scheduler::check_admissible(const ServingRequest& r, const std::string& subject) const {
  KVB_CHECK(r.prompt_tokens >= 1 && r.output_tokens >= 1, subject,
            " needs prompt_tokens >= 1 and output_tokens >= 1, got ", r.prompt_tokens, " and ",
            r.output_tokens);
  // The longest context it can be (re)prefilled with, and the most it ever holds.
  const int64_t longest = r.prompt_tokens + r.output_tokens - 1;
  KVB_CHECK(config_.chunked_prefill || longest <= config_.max_batch_tokens, subject, " (",
            r.prompt_tokens, " prompt + ", r.output_tokens,
            " output tokens) can need a prefill of ", longest,
            " tokens, more than max_batch_tokens = ", config_.max_batch_tokens,
            " (chunked_prefill would split it)");
  KVB_CHECK(blocks_needed(longest) <= pool_.num_blocks(), subject, " (", r.prompt_tokens,
            " prompt + ", r.output_tokens, " output tokens) can need ", blocks_needed(longest),
            " blocks of ", pool_.block_size(), " tokens but the KV pool has only ",
            pool_.num_blocks(), "; raise the KV budget");
}

void Scheduler::submit(const ServingRequest& r) {
  KVB_CHECK(states_.count(r.id) == 0, "scheduler: request ", r.id, " submitted twice");
  check_admissible(r, "scheduler: request " + std::to_string(r.id));
  states_[r.id].req = r;
  waiting_.push_back(r.id);
}

void Scheduler::preempt(int64_t id, StepPlan& plan) {
  State& s = states_.at(id);
  pool_.free_all(id);
  s.running = false;
  s.prefilling = false;
  s.prefilled = 0;
  ++s.preemptions;
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), id));
  plan.decodes.erase(std::remove(plan.decodes.begin(), plan.decodes.end(), id), plan.decodes.end());
  plan.preempted.push_back(id);
  // Victims go newest first, each to the front, so the older of them ends up first.
  waiting_.push_front(id);
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  // 1. One decode token per running request, oldest first, growing blocks at block boundaries.
  std::vector<int64_t> order = running_;
  for (int64_t id : order) {
    State& s = states_.at(id);
    if (!s.running) continue;    // preempted earlier in this loop
    if (s.prefilling) continue;  // holds blocks for its whole context; continues below
    // The decode feeds the latest generated token: the context becomes prompt + generated.
    const int64_t target = blocks_needed(held(s, s.req.prompt_tokens + s.generated));
    bool self_preempted = false;
    while (pool_.blocks_of(id) < target) {
      if (pool_.allocate(id, 1)) continue;
      const int64_t victim = running_.back();
      preempt(victim, plan);
      if (victim == id) {
        self_preempted = true;
        break;
      }
    }
    if (!self_preempted) plan.decodes.push_back(id);
  }
  plan.batch_tokens = static_cast<int64_t>(plan.decodes.size());
  // The next chunk of a prefill of `context` tokens with `done` fed: at most
  // prefill_chunk_tokens and the step's remaining budget (the whole rest without chunking).
  auto chunk_of = [&](int64_t context, int64_t done) {
    const int64_t budget = config_.max_batch_tokens - plan.batch_tokens;
    if (!config_.chunked_prefill) return context - done <= budget ? context - done : int64_t{0};
    return std::max<int64_t>(0, std::min({context - done, config_.prefill_chunk_tokens, budget}));
  };
  // 2. Continue unfinished (chunked) prefills, oldest admission first.
  for (int64_t id : running_) {
    State& s = states_.at(id);
    if (!s.prefilling) continue;
    const int64_t context = s.req.prompt_tokens + s.generated;
    const int64_t chunk = chunk_of(context, s.prefilled);
    if (chunk == 0) break;
    plan.prefills.push_back({id, chunk, s.prefilled, context});
    plan.batch_tokens += chunk;
  }
  // 3. Admit waiting requests in FIFO order (not in a step that had to preempt).
  while (plan.preempted.empty() && !waiting_.empty()) {
    const int64_t id = waiting_.front();
    State& s = states_.at(id);
    const int64_t context = s.req.prompt_tokens + s.generated;
    const int64_t need = blocks_needed(context);
    const int64_t reserve = running_.empty() ? 0 : 1;
    if (static_cast<int64_t>(running_.size()) >= config_.max_running) break;
    const int64_t chunk = chunk_of(context, 0);
    if (chunk == 0) break;
    if (need + reserve > pool_.free_blocks()) break;
    KVB_CHECK(pool_.allocate(id, need), "scheduler: allocation of ", need, " blocks failed");
    waiting_.pop_front();
    s.running = true;
    s.prefilling = true;
    s.prefilled = 0;
    running_.push_back(id);
    admissions_.push_back(id);
    plan.prefills.push_back({id, chunk, 0, context});
    plan.batch_tokens += chunk;
  }
  return plan;
}

StepOutcome Scheduler::commit(const StepPlan& plan) {
  StepOutcome out;
  auto emit = [&](int64_t id) {
    State& s = states_.at(id);
    KVB_CHECK(s.running && !s.done, "scheduler: request ", id, " is not running");
    ++s.generated;
    out.emitted.push_back(id);
    if (s.generated == s.req.output_tokens) {
      s.done = true;
      s.running = false;
      pool_.free_all(id);
      running_.erase(std::find(running_.begin(), running_.end(), id));
      out.finished.push_back(id);
    }
  };
  for (int64_t id : plan.decodes) emit(id);
  for (const PrefillItem& p : plan.prefills) {
    State& s = states_.at(p.id);
    KVB_CHECK(s.running && s.prefilling && p.start == s.prefilled && p.tokens >= 1 &&
                  p.start + p.tokens <= p.context,
              "scheduler: prefill chunk [", p.start, ", ", p.start + p.tokens, ") of request ",
              p.id, " does not follow its ", s.prefilled, " prefilled tokens");
    s.prefilled += p.tokens;
    if (!p.last()) continue;
    s.prefilling = false;
    s.prefill_len = p.context;
    // Retention evicts after the prefill: the blocks beyond what stays go back to the pool.
    pool_.shrink(p.id, blocks_needed(held(s, p.context)));
    emit(p.id);
  }
  return out;
}

int64_t Scheduler::preemptions(int64_t id) const { return states_.at(id).preemptions; }
int64_t Scheduler::generated(int64_t id) const { return states_.at(id).generated; }

int64_t Scheduler::held_tokens(int64_t id) const {
  const State& s = states_.at(id);
  if (!s.running) return 0;
  if (s.prefilling) return s.prefilled;
  // After a step the KV holds the context up to (not including) the latest generated token.
  return held(s, s.req.prompt_tokens + s.generated - 1);
}

void Scheduler::check_invariants() const {
  pool_.check_invariants();
  for (int64_t owner : pool_.owners()) {
    auto it = states_.find(owner);
    KVB_CHECK(it != states_.end() && it->second.running, "scheduler: blocks owned by request ",
              owner, ", which is not running");
  }
  for (int64_t id : running_) {
    const State& s = states_.at(id);
    // A prefilling request holds blocks for its whole context until its last chunk has run.
    const int64_t need =
        blocks_needed(s.prefilling ? s.req.prompt_tokens + s.generated : held_tokens(id));
    KVB_CHECK(pool_.blocks_of(id) >= need, "scheduler: running request ", id, " holds ",
              pool_.blocks_of(id), " blocks but needs ", need);
  }
  for (int64_t id : waiting_) {
    KVB_CHECK(pool_.blocks_of(id) == 0, "scheduler: waiting request ", id, " holds blocks");
  }
}

}  // namespace kvbench
