// The serving loop: requests arrive over time, the scheduler plans each step, an executor runs
// it (the model in the `serving` suite, a cost model in tests) and a clock says when tokens
// came out. Clock and executor are injected, so scheduling tests are deterministic. Arrivals:
// a seeded Poisson (or gamma) process, fixed times or a trace's; lengths from the workload
// (uniform or lognormal ranges, ShareGPT, a trace).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/rng.h"
#include "kvbench/serving/scheduler.h"

namespace kvbench {

class ServingClock {
 public:
  virtual ~ServingClock() = default;
  virtual double now() const = 0;
  // Called when nothing can run before the next arrival at `t` (> now()).
  virtual void skip_to(double t) = 0;
  // The time since `from` (an earlier now()) stops counting: the benchmark's own bookkeeping
  // between steps (reading the memory counters), which a server would not do.
  virtual void exclude_since(double from) = 0;
};

// Measured time with idle gaps skipped instead of slept: a stopwatch plus the skipped time.
// Steps take their real compute time; waiting for an arrival with nothing to do costs nothing.
class SkippingWallClock final : public ServingClock {
 public:
  SkippingWallClock();
  double now() const override;
  void skip_to(double t) override;
  void exclude_since(double from) override;

 private:
  double start_;
  double skipped_ = 0;
};

// Time that only moves when told: the executor advances it by a step's modelled cost.
class ManualClock final : public ServingClock {
 public:
  double now() const override { return now_; }
  void skip_to(double t) override { now_ = std::max(now_, t); }
  void exclude_since(double from) override { now_ = std::min(now_, from); }
  void advance(double dt) { now_ += dt; }

 private:
  double now_ = 0;
};

class StepExecutor {
 public:
  virtual ~StepExecutor() = default;
  // Runs one planned step: drops the KV of plan.preempted, prefills plan.prefills and decodes
  // plan.decodes. `outcome` is not known yet; the loop commits the plan afterwards.
  virtual void execute(const StepPlan& plan) = 0;
  // Called after commit: requests in `finished` are done and their KV can go.
  virtual void finished(const std::vector<int64_t>& ids) { (void)ids; }
  // Called after each step with the requests that finished in it, off the serving clock: the
  // benchmark's own reporting (a progress bar), which a server would not do.
  virtual void report(const std::vector<int64_t>& finished) { (void)finished; }
  // KV bytes the executor holds now (measured); 0 when it holds none (a cost model).
  virtual double kv_bytes() const { return 0; }
  // Bytes its KV storage occupies now, in use or not (KVCache::allocated_bytes); 0 for none.
  virtual double allocated_bytes() const { return 0; }
  // Bytes of the retention policy's bookkeeping it holds now (KVCache::retention_bytes: kept
  // positions or lists, H2O's sums, ScissorHands' history), beside kv_bytes; 0 for none.
  virtual double retention_bytes() const { return 0; }
};

struct RequestTrace {
  ServingRequest request;
  std::vector<double> token_times_s;  // since the loop started (as arrival_s), one per token
  int64_t preemptions = 0;
  // How long it waited after arriving before the client sent it: with max_concurrency, until
  // a slot freed when every slot was taken at its arrival; else 0. Latencies count from the
  // send (sent_s()).
  double client_wait_s = 0;
  double sent_s() const { return request.arrival_s + client_wait_s; }
};

struct StepTrace {
  double start_s = 0, end_s = 0;
  int64_t decodes = 0, prefills = 0, preempted = 0, batch_tokens = 0;
  int64_t used_blocks = 0;     // during the step (after scheduling, before finished ones go)
  double kv_bytes = 0;         // executor's measured bytes after the step (before finished go)
  double allocated_bytes = 0;  // what its storage occupied then (free pool pages included)
  double retention_bytes = 0;  // the retention policy's bookkeeping then
};

struct ServingTrace {
  std::vector<RequestTrace> requests;  // in submission order
  std::vector<StepTrace> steps;
  double end_s = 0;  // since the loop started
  int64_t preemptions = 0;
  int64_t max_concurrency = 0;  // 0: none
};

// Runs every request (sorted by arrival) to completion. After each step it checks the
// scheduler's invariants when `check` is set (tests; cheap enough for small pools).
// `max_concurrency` > 0 holds at most that many requests in flight, as a benchmark client with
// that many connections (vLLM's --max-concurrency): an arrival finding them all busy waits,
// first come first sent, outside the server (not in its TTFT; in client_wait_s).
ServingTrace run_serving(std::vector<ServingRequest> requests, Scheduler& scheduler,
                         StepExecutor& executor, ServingClock& clock, bool check = false,
                         int64_t max_concurrency = 0);

// Seeded gaps between arrivals at `rate` (> 0) requests per second with `burstiness` k (> 0),
// as vLLM's benchmark draws them: Gamma with shape k and mean 1/rate, so the squared
// coefficient of variation of a gap is 1/k. k = 1 is the Poisson process (exponential gaps);
// k < 1 brings bursts and lulls, k > 1 a steadier stream.
class ArrivalGaps {
 public:
  ArrivalGaps(double rate, double burstiness, uint64_t seed);
  double next();

 private:
  double gamma(double k);
  double rate_, burstiness_;
  Rng rng_;
};

// Arrival times of `count` requests: ArrivalGaps's process (Poisson at burstiness 1; first
// arrival at time 0), or all at time 0 when rate is 0.
std::vector<double> poisson_arrivals(int64_t count, double rate, uint64_t seed,
                                     double burstiness = 1.0);

struct SloThresholds {
  double ttft_s = 0;  // 0: not checked
  double tpot_s = 0;
  double e2e_s = 0;
};

// Report metrics of a trace: TTFT, TPOT, ITL and e2e latency (p50/p90/p99/mean/max; TTFT and
// e2e from each request's send), with max_concurrency the client-side wait before it, request
// and token throughput, goodput (requests meeting every threshold, per second, and fraction),
// KV blocks and bytes (peak and step-time-weighted mean), preemptions, steps.
// `bytes_per_block` converts blocks to pool bytes, on top of `shared_bytes`: what the budget
// holds before any block (a low-rank codec's fitted bases, the paged slots' rings, scales and
// buffers), in every step's pool bytes.
nlohmann::json serving_metrics(const ServingTrace& trace, const SloThresholds& slo,
                               double bytes_per_block, double shared_bytes = 0);

}  // namespace kvbench
