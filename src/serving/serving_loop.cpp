#include "kvbench/serving/serving_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/stats.h"

namespace kvbench {

namespace {
double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

SkippingWallClock::SkippingWallClock() : start_(steady_seconds()) {}

double SkippingWallClock::now() const { return steady_seconds() - start_ + skipped_; }

void SkippingWallClock::skip_to(double t) {
  const double n = now();
  if (t > n) skipped_ += t - n;
}

void SkippingWallClock::exclude_since(double from) {
  const double n = now();
  if (n > from) skipped_ -= n - from;
}

ServingTrace run_serving(std::vector<ServingRequest> requests, Scheduler& scheduler,
                         StepExecutor& executor, ServingClock& clock, bool check,
                         int64_t max_concurrency) {
  KVB_CHECK(max_concurrency >= 0, "serving: max_concurrency must be >= 0, got ", max_concurrency);
  // A NaN arrival never comes (the loop would wait for it forever), nor sorts.
  for (const auto& r : requests)
    KVB_CHECK(std::isfinite(r.arrival_s), "serving: request ", r.id, " arrives at ", r.arrival_s,
              " s; arrivals must be finite");
  std::stable_sort(
      requests.begin(), requests.end(),
      [](const ServingRequest& a, const ServingRequest& b) { return a.arrival_s < b.arrival_s; });
  ServingTrace trace;
  std::map<int64_t, size_t> index;
  for (const auto& r : requests) {
    KVB_CHECK(index.emplace(r.id, trace.requests.size()).second, "serving: request id ", r.id,
              " appears twice");
    trace.requests.push_back({r, {}, 0});
  }
  trace.max_concurrency = max_concurrency;
  const size_t cap = max_concurrency > 0 ? static_cast<size_t>(max_concurrency)
                                         : std::numeric_limits<size_t>::max();
  // When each finished request's last token came: steps end in time order, so this is sorted.
  std::vector<double> finish_times;
  const double t0 = clock.now();
  size_t next = 0;
  size_t done = 0;
  // The arrival an idle scheduler skipped to: (t0 + a) - t0 can round a hair below a, and a
  // clock that only skips (ManualClock) would then never reach it.
  double skipped_to = 0;
  while (done < requests.size()) {
    const double now = std::max(clock.now() - t0, skipped_to);
    // Requests go in arrival order (FIFO), at most `cap` in flight (sent, not finished), as a
    // client's semaphore lets them. One that found every slot taken is sent when the slot it
    // takes freed: when the (next - cap + 1)-th of the requests before it finished.
    while (next < requests.size() && requests[next].arrival_s <= now && next - done < cap) {
      if (next >= cap) {
        trace.requests[next].client_wait_s =
            std::max(finish_times[next - cap] - requests[next].arrival_s, 0.0);
      }
      scheduler.submit(requests[next++]);
    }
    if (scheduler.idle()) {
      KVB_CHECK(next < requests.size(), "serving: scheduler idle with requests unfinished");
      clock.skip_to(t0 + requests[next].arrival_s);
      skipped_to = requests[next].arrival_s;
      continue;
    }
    StepTrace st;
    st.start_s = clock.now() - t0;
    StepPlan plan = scheduler.schedule();
    st.used_blocks = scheduler.pool().used_blocks();
    KVB_CHECK(!plan.empty(), "serving: the scheduler planned an empty step with ",
              scheduler.waiting(), " waiting and ", scheduler.running(), " running requests");
    executor.execute(plan);
    StepOutcome out = scheduler.commit(plan);
    st.end_s = clock.now() - t0;
    for (int64_t id : out.emitted) trace.requests[index.at(id)].token_times_s.push_back(st.end_s);
    // Reading the memory counters and showing progress are the benchmark's work, not
    // serving: off the clock.
    const double counters_from = clock.now();
    st.kv_bytes = executor.kv_bytes();
    st.allocated_bytes = executor.allocated_bytes();
    st.retention_bytes = executor.retention_bytes();
    executor.report(out.finished);
    clock.exclude_since(counters_from);
    executor.finished(out.finished);
    done += out.finished.size();
    finish_times.insert(finish_times.end(), out.finished.size(), st.end_s);
    st.decodes = static_cast<int64_t>(plan.decodes.size());
    st.prefills = static_cast<int64_t>(plan.prefills.size());
    st.preempted = static_cast<int64_t>(plan.preempted.size());
    st.batch_tokens = plan.batch_tokens;
    trace.steps.push_back(st);
    if (check) scheduler.check_invariants();
  }
  // The last token's time: releasing the finished sequences after it is not serving time.
  trace.end_s = trace.steps.empty() ? clock.now() - t0 : trace.steps.back().end_s;
  trace.preemptions = scheduler.total_preemptions();
  for (auto& r : trace.requests) r.preemptions = scheduler.preemptions(r.request.id);
  return trace;
}

ArrivalGaps::ArrivalGaps(double rate, double burstiness, uint64_t seed)
    : rate_(rate), burstiness_(burstiness), rng_(seed) {
  KVB_CHECK(rate > 0 && std::isfinite(rate), "serving: an arrival rate must be > 0, got ", rate);
  KVB_CHECK(burstiness > 0 && std::isfinite(burstiness),
            "serving: burstiness must be a finite number > 0, got ", burstiness);
}

double ArrivalGaps::next() {
  // Exponential gap by inversion (the draws kvbench made before burstiness existed); 1 - u is
  // in (0, 1], so the log is finite.
  if (burstiness_ == 1) return -std::log(1.0 - rng_.uniform()) / rate_;
  // Gamma(k, 1/(k rate)): mean 1/rate, squared coefficient of variation 1/k.
  return gamma(burstiness_) / (burstiness_ * rate_);
}

// A Gamma(k, 1) draw: Marsaglia and Tsang's method (2000) for k >= 1; for k < 1, a Gamma(k + 1)
// draw times U^(1/k).
double ArrivalGaps::gamma(double k) {
  if (k < 1) {
    // Two statements: the operands of one product would draw from rng_ in an unspecified order.
    const double g = gamma(k + 1);
    return g * std::pow(1.0 - rng_.uniform(), 1.0 / k);
  }
  const double d = k - 1.0 / 3, c = 1 / std::sqrt(9 * d);
  while (true) {
    // Box-Muller; 1 - u is in (0, 1], so the log is finite.
    const double u1 = 1.0 - rng_.uniform(), u2 = rng_.uniform();
    const double x = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    const double v = std::pow(1 + c * x, 3);
    if (v <= 0) continue;
    const double u = 1.0 - rng_.uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

std::vector<double> poisson_arrivals(int64_t count, double rate, uint64_t seed, double burstiness) {
  KVB_CHECK(count >= 0, "serving: request count must be >= 0, got ", count);
  KVB_CHECK(rate >= 0 && std::isfinite(rate), "serving: rate must be a finite number >= 0, got ",
            rate);
  std::vector<double> t(static_cast<size_t>(count), 0.0);
  if (rate == 0) return t;
  ArrivalGaps gaps(rate, burstiness, seed);
  for (size_t i = 1; i < t.size(); ++i) t[i] = t[i - 1] + gaps.next();
  return t;
}

namespace {

nlohmann::json latency_json(const std::vector<double>& x) {
  if (x.empty()) return nullptr;
  return {{"p50", percentile(x, 50)},
          {"p90", percentile(x, 90)},
          {"p99", percentile(x, 99)},
          {"mean", mean(x)},
          {"max", *std::max_element(x.begin(), x.end())},
          {"n", x.size()}};
}

}  // namespace

nlohmann::json serving_metrics(const ServingTrace& trace, const SloThresholds& slo,
                               double bytes_per_block, double shared_bytes) {
  std::vector<double> ttft, tpot, itl, e2e, wait;
  int64_t tokens = 0, good = 0, prompt_tokens = 0;
  for (const auto& r : trace.requests) {
    const auto& t = r.token_times_s;
    KVB_CHECK(!t.empty(), "serving: request ", r.request.id, " produced no token");
    tokens += static_cast<int64_t>(t.size());
    prompt_tokens += r.request.prompt_tokens;
    // From the send, as a client measures (vLLM's benchmark times a request from when its
    // semaphore lets it go); the wait before it is reported beside.
    const double first = t.front() - r.sent_s();
    const double total = t.back() - r.sent_s();
    wait.push_back(r.client_wait_s);
    ttft.push_back(first);
    e2e.push_back(total);
    double per_token = 0;
    if (t.size() > 1) {
      per_token = (t.back() - t.front()) / static_cast<double>(t.size() - 1);
      tpot.push_back(per_token);
      for (size_t i = 1; i < t.size(); ++i) itl.push_back(t[i] - t[i - 1]);
    }
    const bool ok = (slo.ttft_s <= 0 || first <= slo.ttft_s) &&
                    (slo.tpot_s <= 0 || per_token <= slo.tpot_s) &&
                    (slo.e2e_s <= 0 || total <= slo.e2e_s);
    good += ok ? 1 : 0;
  }
  // From the first arrival to the last token (the suite's arrivals start at 0; a direct
  // caller's need not).
  double first_arrival = trace.end_s;
  for (const auto& r : trace.requests) first_arrival = std::min(first_arrival, r.request.arrival_s);
  const double duration = std::max(trace.end_s - std::max(first_arrival, 0.0), 1e-12);
  const double n = static_cast<double>(trace.requests.size());
  double weighted_blocks = 0, weighted_bytes = 0, busy = 0, peak_bytes = 0, peak_allocated = 0,
         peak_retention = 0;
  int64_t peak_blocks = 0;
  for (const auto& s : trace.steps) {
    const double dt = s.end_s - s.start_s;
    weighted_blocks += dt * static_cast<double>(s.used_blocks);
    weighted_bytes += dt * s.kv_bytes;
    busy += dt;
    peak_blocks = std::max(peak_blocks, s.used_blocks);
    peak_bytes = std::max(peak_bytes, s.kv_bytes);
    peak_allocated = std::max(peak_allocated, s.allocated_bytes);
    peak_retention = std::max(peak_retention, s.retention_bytes);
  }
  const double mean_blocks = busy > 0 ? weighted_blocks / busy : 0;
  nlohmann::json m = {
      {"requests", trace.requests.size()},
      {"output_tokens", tokens},
      {"prompt_tokens", prompt_tokens},
      {"duration_s", duration},
      {"busy_s", busy},
      {"steps", trace.steps.size()},
      {"ttft_s", latency_json(ttft)},
      {"tpot_s", latency_json(tpot)},
      {"itl_s", latency_json(itl)},
      {"e2e_s", latency_json(e2e)},
      {"request_throughput", n / duration},
      {"token_throughput", static_cast<double>(tokens) / duration},
      // Prompt and generated tokens, as vLLM's "total token throughput".
      {"total_token_throughput", static_cast<double>(prompt_tokens + tokens) / duration},
      {"goodput",
       {{"slo", {{"ttft_s", slo.ttft_s}, {"tpot_s", slo.tpot_s}, {"e2e_s", slo.e2e_s}}},
        {"requests_meeting_slo", good},
        {"fraction", n > 0 ? static_cast<double>(good) / n : 0.0},
        {"requests_per_s", static_cast<double>(good) / duration}}},
      {"preemptions", trace.preemptions},
      {"kv",
       {{"blocks_peak", peak_blocks},
        {"blocks_mean", mean_blocks},
        {"pool_bytes_peak", shared_bytes + static_cast<double>(peak_blocks) * bytes_per_block},
        {"pool_bytes_mean", shared_bytes + mean_blocks * bytes_per_block},
        {"measured_bytes_peak", peak_bytes},
        {"measured_bytes_mean", busy > 0 ? weighted_bytes / busy : 0.0},
        {"allocated_bytes_peak", peak_allocated},
        {"retention_bytes_peak", peak_retention}}},
  };
  if (trace.max_concurrency > 0) {
    m["max_concurrency"] = trace.max_concurrency;
    m["client_wait_s"] = latency_json(wait);
  }
  return m;
}

}  // namespace kvbench
