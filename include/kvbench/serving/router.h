// The routing simulation of the `predictor` suite (seed paper, tool 4): N simulated replicas,
// each a continuous-batching queue whose step times come from a step-cost model (the fitted
// throughput predictor of the method), fed by requests arriving over time. A router sends each
// request, when it arrives, to one replica:
//
//  - round robin: request i to replica i mod N;
//  - least predicted completion: to the replica where the request would finish first, found by
//    simulating that replica forward with the request added (no later arrivals) on the same
//    cost model. The router knows each request's prompt length; its output length either
//    exactly (an oracle length predictor) or only as an assumed number of tokens for every
//    request (no length predictor). Ties go to the next replica in round-robin order.
//
// A replica: each step, requests waiting on it are admitted in FIFO order while fewer than
// max_batch run; every running request decodes one token and every admitted one is prefilled
// and emits its first token at the end of the step; a request leaves after its last token. A
// request that arrives during a step joins at the next one. The step's time is the cost
// model's for its decodes (their contexts) and prefills (their prompts). Pure logic and
// deterministic: no clock, no randomness.
#pragma once

#include <cstdint>
#include <vector>

namespace kvbench {

class StepCostModel {
 public:
  virtual ~StepCostModel() = default;
  // Seconds of one step that decodes one token for each sequence whose context (tokens held
  // before the step) is in `decode_contexts` and prefills each prompt in `prefill_prompts`.
  virtual double step_s(const std::vector<int64_t>& decode_contexts,
                        const std::vector<int64_t>& prefill_prompts) const = 0;
};

struct RoutedRequest {
  int64_t id = 0;
  double arrival_s = 0;
  int64_t prompt_tokens = 1;
  int64_t output_tokens = 1;  // tokens to generate, the first one at the end of the prefill
};

enum class RoutingPolicy { kRoundRobin, kLeastPredicted };

struct RoutingConfig {
  int64_t replicas = 4;
  int64_t max_batch = 8;  // sequences a replica runs at once
  RoutingPolicy policy = RoutingPolicy::kRoundRobin;
  // kLeastPredicted: 0 = the router knows every request's output length; > 0 = it assumes this
  // many output tokens for every request (a request that has already generated more is assumed
  // to emit one more).
  double assumed_output_tokens = 0;
};

struct RoutingResult {
  // Per request, in the order given: replica, first-token and last-token times.
  std::vector<int64_t> replica;
  std::vector<double> ttft_s, e2e_s;
  double end_s = 0;  // when the last request finished
  int64_t steps = 0;
};

// Throws Error on a bad config (replicas or max_batch < 1), a request with no output token or
// no prompt, or requests not sorted by arrival.
RoutingResult simulate_routing(const std::vector<RoutedRequest>& requests,
                               const RoutingConfig& config, const StepCostModel& cost);

}  // namespace kvbench
