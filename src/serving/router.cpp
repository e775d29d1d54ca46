#include "kvbench/serving/router.h"

#include <algorithm>
#include <cmath>
#include <deque>

#include "kvbench/core/error.h"

namespace kvbench {

namespace {

struct Live {
  size_t index = 0;  // into the request list
  double arrival_s = 0;
  int64_t prompt = 0;
  int64_t output = 0;  // tokens to generate (true, or as the router assumes)
  int64_t generated = 0;
};

// One replica's state; copied to predict what adding a request would do.
struct Replica {
  double clock = 0;  // end of its last step
  std::deque<Live> waiting;
  std::vector<Live> running;  // admission order
  int64_t steps = 0;

  bool busy() const { return !waiting.empty() || !running.empty(); }

  // One step; calls done(live, first_token_s, last_token_s) for requests that finish, and
  // first(live, t) for every first token.
  template <class First, class Done>
  void step(int64_t max_batch, const StepCostModel& cost, First&& first, Done&& done) {
    std::vector<int64_t> contexts, prompts;
    for (const Live& r : running) contexts.push_back(r.prompt + r.generated - 1);
    const size_t decoding = running.size();
    while (!waiting.empty() && static_cast<int64_t>(running.size()) < max_batch) {
      prompts.push_back(waiting.front().prompt);
      running.push_back(waiting.front());
      waiting.pop_front();
    }
    const double dt = cost.step_s(contexts, prompts);
    KVB_CHECK(std::isfinite(dt) && dt > 0, "routing: the step-cost model gave ", dt,
              " s for a step of ", contexts.size(), " decodes and ", prompts.size(),
              " prefills; step times must be positive");
    clock += dt;
    ++steps;
    std::vector<Live> still;
    for (size_t i = 0; i < running.size(); ++i) {
      Live& r = running[i];
      ++r.generated;
      if (i >= decoding) first(r, clock);
      if (r.generated >= r.output) {
        done(r, clock);
      } else {
        still.push_back(r);
      }
    }
    running = std::move(still);
  }

  // Runs steps that start before `t`; an idle replica waits until `t`.
  template <class First, class Done>
  void advance_to(double t, int64_t max_batch, const StepCostModel& cost, First&& first,
                  Done&& done) {
    while (busy() && clock < t) step(max_batch, cost, first, done);
    if (!busy()) clock = std::max(clock, t);
  }
};

}  // namespace

RoutingResult simulate_routing(const std::vector<RoutedRequest>& requests,
                               const RoutingConfig& config, const StepCostModel& cost) {
  KVB_CHECK(config.replicas >= 1, "routing: replicas must be >= 1, got ", config.replicas);
  KVB_CHECK(config.max_batch >= 1, "routing: max_batch must be >= 1, got ", config.max_batch);
  KVB_CHECK(config.assumed_output_tokens >= 0, "routing: assumed_output_tokens must be >= 0");
  for (size_t i = 0; i < requests.size(); ++i) {
    const RoutedRequest& r = requests[i];
    KVB_CHECK(r.prompt_tokens >= 1 && r.output_tokens >= 1, "routing: request ", r.id,
              " needs a prompt and at least one output token");
    KVB_CHECK(i == 0 || requests[i - 1].arrival_s <= r.arrival_s,
              "routing: requests must be sorted by arrival (request ", r.id, ")");
  }
  const size_t n = requests.size();
  RoutingResult out;
  out.replica.assign(n, -1);
  out.ttft_s.assign(n, 0);
  out.e2e_s.assign(n, 0);
  std::vector<Replica> replicas(static_cast<size_t>(config.replicas));
  auto first = [&](const Live& r, double t) { out.ttft_s[r.index] = t - r.arrival_s; };
  auto done = [&](const Live& r, double t) {
    out.e2e_s[r.index] = t - r.arrival_s;
    out.end_s = std::max(out.end_s, t);
  };
  auto ignore = [](const Live&, double) {};
  size_t rr_next = 0;
  const bool guess = config.assumed_output_tokens > 0;
  auto assumed = [&](const Live& r) {
    if (!guess) return r.output;
    const int64_t a = static_cast<int64_t>(std::llround(config.assumed_output_tokens));
    return std::max<int64_t>(std::max<int64_t>(a, 1), r.generated + 1);
  };
  for (size_t i = 0; i < n; ++i) {
    const RoutedRequest& req = requests[i];
    Live live{i, req.arrival_s, req.prompt_tokens, req.output_tokens, 0};
    for (Replica& rep : replicas)
      rep.advance_to(req.arrival_s, config.max_batch, cost, first, done);
    size_t chosen = rr_next;
    if (config.policy == RoutingPolicy::kLeastPredicted) {
      double best = INFINITY;
      for (size_t k = 0; k < replicas.size(); ++k) {
        const size_t r = (rr_next + k) % replicas.size();
        Replica copy = replicas[r];
        for (Live& l : copy.waiting) l.output = assumed(l);
        for (Live& l : copy.running) l.output = assumed(l);
        Live mine = live;
        mine.output = assumed(mine);
        copy.waiting.push_back(mine);
        double finish = -1;
        auto mark = [&](const Live& l, double t) {
          if (l.index == i) finish = t;
        };
        while (finish < 0) copy.step(config.max_batch, cost, ignore, mark);
        // Strictly better only: ties keep the earlier replica in round-robin order.
        if (finish < best * (1 - 1e-12)) {
          best = finish;
          chosen = r;
        }
      }
    }
    rr_next = (chosen + 1) % replicas.size();
    out.replica[i] = static_cast<int64_t>(chosen);
    replicas[chosen].waiting.push_back(live);
  }
  for (Replica& rep : replicas) {
    while (rep.busy()) rep.step(config.max_batch, cost, first, done);
    out.steps += rep.steps;
  }
  return out;
}

}  // namespace kvbench
