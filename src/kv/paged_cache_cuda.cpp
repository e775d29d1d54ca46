#include "paged_cache_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "kv_paged_decode.h"
#include "kvbench/core/act_dtype.h"
#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/retention_policy.h"
#include "retained_decode.h"
#include "summed_attention.h"

#ifdef KVBENCH_HAVE_CUDA
#include "decode_attention.h"
#include "device_query.h"
#include "gear_decode_launcher.h"
#include "head_project_launcher.h"
#include "kv_append_launcher.h"
#include "kv_paged_decode_launcher.h"
#include "palu_decode_launcher.h"
#include "quest_score_launcher.h"
#include "retained_decode_launcher.h"
#include "steady_evict_launcher.h"
#include "summed_attention_launcher.h"
#include "thin_qr_launcher.h"
#endif

namespace kvbench::paged_cuda {

// The retained-index kernel's queries and outputs: fp32, or q's own 16-bit dtype (out alike).
static void set_queries(kernels::RetainedProblem& pr, const at::Tensor& q, const at::Tensor& out) {
  KVB_CHECK(q.is_contiguous() && out.is_contiguous() && out.scalar_type() == q.scalar_type(),
            "paged cache: retained decode: contiguous q and out of one dtype expected");
  switch (q.scalar_type()) {
    case at::kFloat:
      pr.q = q.data_ptr<float>(), pr.out = out.data_ptr<float>();
      return;
    case at::kHalf:
    case at::kBFloat16:
      pr.q16 = static_cast<const uint16_t*>(q.data_ptr());
      pr.out16 = static_cast<uint16_t*>(out.data_ptr());
      pr.bf16_io = q.scalar_type() == at::kBFloat16;
      return;
    default:
      KVB_CHECK(false, "paged cache: retained decode: q must be fp32, fp16 or bf16, not ",
                q.scalar_type());
  }
}

#ifdef KVBENCH_HAVE_CUDA

namespace {

void check(cudaError_t err, const char* what, const char* reason) {
  KVB_CHECK(err == cudaSuccess, "paged cache: ", what, ": ", kernels::error_name(err),
            reason && *reason ? std::string(" (") + reason + ")" : std::string());
}

// The decode kernel's main loop for `format`, from KVBENCH_DECODE_LOOP (decode_loop_for), read
// once for every format (not once per launch).
const std::string& decode_loop(kernels::KvFormat format) {
  static const std::vector<std::string> loops = [] {
    const char* env = std::getenv("KVBENCH_DECODE_LOOP");
    std::vector<std::string> per_format;
    for (int f = 0; f <= int(kernels::KvFormat::kInt2); ++f)
      per_format.push_back(decode_loop_for(env ? env : "", kernels::KvFormat(f)));
    return per_format;
  }();
  return loops[size_t(format)];
}

// The retained-index kernel's tokens per step, from KVBENCH_RETAINED_TOKENS, read once.
int retained_tokens() {
  static const int tokens = [] {
    const char* env = std::getenv("KVBENCH_RETAINED_TOKENS");
    return retained_tokens_for(env ? env : "");
  }();
  return tokens;
}

// Per device, asked once: the full property query costs far more than a decode step.
int sm_count(const at::Tensor& on) {
  static std::mutex mutex;
  static std::map<int, int> counts;
  std::lock_guard<std::mutex> lock(mutex);
  const int device = on.get_device();
  auto it = counts.find(device);
  if (it != counts.end()) return it->second;
  kernels::DeviceInfo info;
  check(kernels::device_info(device, &info), "device query", nullptr);
  return counts[device] = info.sm_count;
}

// torch's current stream where `on` lives: kernels queue behind the ops that wrote their inputs.
cudaStream_t stream_of(const at::Device& on) {
  return static_cast<cudaStream_t>(current_cuda_stream(on));
}

}  // namespace

std::string unavailable_reason() {
  if (!at::hasCUDA())
    return "this libtorch has no CUDA support (Debian's is CPU-only; build against a PyTorch "
           "with CUDA)";
  return "";
}

void append(const kernels::AppendProblem& problem, const kernels::PagedKvStore& store,
            const at::Device& device) {
  // The call first: its reason is read after it has set it (argument order is unspecified).
  const cudaError_t err = kernels::append_kv(problem, store, stream_of(device));
  check(err, "append", kernels::append_last_error());
}

static at::Tensor device_decode(const kernels::PagedKvStore& store, const DecodeBatch& batch,
                                int64_t kv_heads, const at::Tensor& q) {
  at::Tensor out = at::empty_like(q);
  kernels::DecodeProblem pr;
  pr.batch = int(q.size(0)), pr.q_heads = int(q.size(1)), pr.kv_heads = int(kv_heads);
  pr.head_dim = int(q.size(2));
  pr.max_pages_per_seq = int(batch.table.size(1)), pr.max_seq_len = int(batch.max_len);
  pr.block_table = batch.table.data_ptr<int>(), pr.seq_lens = batch.seq_lens.data_ptr<int>();
  pr.seq_rows = batch.seq_rows.data_ptr<int>();
  pr.softmax_scale = float(1.0 / std::sqrt(double(pr.head_dim)));
  pr.q = q.data_ptr(), pr.out = out.data_ptr();
  kernels::PagedKv kv;
  kv.format = store.format, kv.page_size = store.page_size, kv.residual = store.residual;
  kv.k_data = store.k_data, kv.v_data = store.v_data;
  kv.k_meta = store.k_meta, kv.v_meta = store.v_meta;
  kv.k_head_scale = store.k_head_scale, kv.v_head_scale = store.v_head_scale;
  kv.k_residual = store.k_residual, kv.v_residual = store.v_residual;
  kernels::DecodePlan plan;
  const std::string& loop = decode_loop(store.format);
  plan.multi_tile = loop == "v3" || loop == "v3h", plan.tiles_per_step = loop == "v3h" ? 2 : 0;
  plan.min_blocks = loop == "v2b" ? 4 : 0;
  plan.staged = loop == "v4";
  cudaError_t err = kernels::decode_plan(pr, kv, sm_count(q), 0, &plan);
  check(err, "decode plan", kernels::decode_last_error());  // read after the call has set it
  at::Tensor workspace = at::empty({int64_t(plan.workspace_bytes)}, q.options().dtype(at::kByte));
  err = kernels::decode_attention(
      pr, kv, plan, plan.workspace_bytes ? workspace.data_ptr() : nullptr, stream_of(q.device()));
  check(err, "decode attention", kernels::decode_last_error());
  return out;
}

static at::Tensor device_retained(const kernels::PagedKvStore& store, const DecodeBatch& batch,
                                  int64_t kv_heads, const at::Tensor& lists,
                                  const at::Tensor& counts_tails, const at::Tensor& q,
                                  const at::Tensor& scores) {
  at::Tensor out = at::empty_like(q);
  kernels::RetainedProblem pr;
  pr.batch = int(q.size(0)), pr.q_heads = int(q.size(1)), pr.kv_heads = int(kv_heads);
  pr.head_dim = int(q.size(2)), pr.max_pages_per_seq = int(batch.table.size(1));
  pr.block_table = batch.table.data_ptr<int>(), pr.seq_lens = batch.seq_lens.data_ptr<int>();
  pr.seq_rows = batch.seq_rows.data_ptr<int>();
  const int64_t B = q.size(0);
  pr.kept_lists = reinterpret_cast<const int* const*>(lists.data_ptr<int64_t>());
  pr.kept_counts = counts_tails.data_ptr<int>(), pr.tail_start = pr.kept_counts + B;
  pr.softmax_scale = float(1.0 / std::sqrt(double(pr.head_dim)));
  set_queries(pr, q, out);
  pr.tokens_per_step = retained_tokens();
  if (scores.defined()) {
    KVB_CHECK(scores.is_contiguous() && scores.scalar_type() == at::kFloat && scores.dim() == 3 &&
                  scores.size(0) == B && scores.size(1) == q.size(1),
              "paged cache: retained-decode scores must be contiguous fp32 [batch, heads, n]");
    pr.scores = scores.data_ptr<float>(), pr.score_stride = int(scores.size(2));
  }
  check(kernels::retained_decode(pr, store, stream_of(q.device())), "retained decode",
        kernels::retained_check(pr, store));
  return out;
}

static std::pair<at::Tensor, at::Tensor> device_dequantize(const kernels::PagedKvStore& store,
                                                           const at::Tensor& pages,
                                                           int64_t kv_heads, int64_t head_dim,
                                                           int seq_row, int64_t tokens) {
  const auto opts = pages.options().dtype(at::kFloat);
  at::Tensor k = at::empty({kv_heads, tokens, head_dim}, opts), v = at::empty_like(k);
  check(kernels::dequantize_paged(store, pages.data_ptr<int>(), int(kv_heads), int(head_dim),
                                  seq_row, int(tokens), k.data_ptr<float>(), v.data_ptr<float>(),
                                  stream_of(pages.device())),
        "dequantize", nullptr);
  return {k, v};
}

// A kernel with a plan and a workspace (Palu's, GEAR's): plan for `max_len`, then launch where
// `on` is. `why` names what the problem breaks when a call fails.
template <class Plan, class Problem, class PlanFn, class LaunchFn, class WhyFn>
void planned_launch(const char* what, const Problem& problem, int64_t max_len, const at::Tensor& on,
                    PlanFn plan_fn, LaunchFn launch_fn, WhyFn why) {
  Plan plan;
  check(plan_fn(problem, int(max_len), sm_count(on), &plan), what, why(problem));
  at::Tensor workspace = at::empty({int64_t(plan.workspace_bytes)}, on.options().dtype(at::kByte));
  check(launch_fn(problem, plan, workspace.data_ptr(), stream_of(on.device())), what, why(problem));
}

static void device_palu(const kernels::PaluProblem& problem, int64_t max_len,
                        const at::Tensor& on) {
  planned_launch<kernels::PaluPlan>("palu decode", problem, max_len, on, kernels::palu_plan,
                                    kernels::palu_decode, kernels::palu_check);
}

static void device_quest(const kernels::QuestScoreProblem& problem, const at::Tensor& on) {
  check(kernels::quest_score(problem, stream_of(on.device())), "quest page scores",
        kernels::quest_score_check(problem));
}

static void device_quest_select(const kernels::QuestSelectProblem& problem, const at::Tensor& on) {
  check(kernels::quest_select(problem, stream_of(on.device())), "quest page choice",
        kernels::quest_select_check(problem));
}

static void device_thin_qr(const kernels::ThinQrProblem& problem, const at::Tensor& on) {
  check(kernels::thin_qr(problem, stream_of(on.device())), "thin qr",
        kernels::thin_qr_check(problem));
}

static void device_quest_fold(const kernels::QuestFoldProblem& problem, const at::Tensor& on) {
  check(kernels::quest_fold(problem, stream_of(on.device())), "quest bound folding",
        kernels::quest_fold_check(problem));
}

static void device_steady(const kernels::SteadyEvictProblem& problem, const at::Tensor& on) {
  check(kernels::steady_evict(problem, stream_of(on.device())), "steady-state eviction",
        kernels::steady_evict_check(problem));
}

static void device_project(const kernels::HeadProjectProblem& problem, const at::Tensor& on) {
  check(kernels::head_project(problem, stream_of(on.device())), "head projection",
        kernels::head_project_check(problem));
}

static void device_summed(const kernels::SummedAttentionProblem& problem, const at::Tensor& on) {
  check(kernels::summed_attention(problem, stream_of(on.device())), "summed attention",
        kernels::summed_attention_check(problem));
}

static void device_gear(const kernels::GearProblem& problem, int64_t max_len,
                        const at::Tensor& on) {
  planned_launch<kernels::GearPlan>("gear decode", problem, max_len, on, kernels::gear_plan,
                                    kernels::gear_decode, kernels::gear_check);
}

#else  // built without the CUDA kernels

namespace {
[[noreturn]] void unavailable() { throw Error("paged cache: " + unavailable_reason()); }
}  // namespace

std::string unavailable_reason() {
  return "kvbench was built without the CUDA kernels (no nvcc found; KVBENCH_CUDA)";
}
void append(const kernels::AppendProblem&, const kernels::PagedKvStore&, const at::Device&) {
  unavailable();
}
static at::Tensor device_decode(const kernels::PagedKvStore&, const DecodeBatch&, int64_t,
                                const at::Tensor&) {
  unavailable();
}
static at::Tensor device_retained(const kernels::PagedKvStore&, const DecodeBatch&, int64_t,
                                  const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const at::Tensor&) {
  unavailable();
}
static std::pair<at::Tensor, at::Tensor> device_dequantize(const kernels::PagedKvStore&,
                                                           const at::Tensor&, int64_t, int64_t, int,
                                                           int64_t) {
  unavailable();
}
static void device_palu(const kernels::PaluProblem&, int64_t, const at::Tensor&) { unavailable(); }
static void device_gear(const kernels::GearProblem&, int64_t, const at::Tensor&) { unavailable(); }
static void device_quest(const kernels::QuestScoreProblem&, const at::Tensor&) { unavailable(); }
static void device_quest_select(const kernels::QuestSelectProblem&, const at::Tensor&) {
  unavailable();
}
static void device_thin_qr(const kernels::ThinQrProblem&, const at::Tensor&) { unavailable(); }
static void device_quest_fold(const kernels::QuestFoldProblem&, const at::Tensor&) {
  unavailable();
}
static void device_summed(const kernels::SummedAttentionProblem&, const at::Tensor&) {
  unavailable();
}
static void device_project(const kernels::HeadProjectProblem&, const at::Tensor&) { unavailable(); }
static void device_steady(const kernels::SteadyEvictProblem&, const at::Tensor&) { unavailable(); }

#endif

std::string decode_loop_for(const std::string& spec, kernels::KvFormat format) {
  auto loop = [&](const std::string& v) {
    KVB_CHECK(v == "v2" || v == "v2b" || v == "v3" || v == "v3h" || v == "v4",
              "KVBENCH_DECODE_LOOP='", spec, "': loop '", v, "' (expected v2, v2b, v3, v3h or v4)");
    return v;
  };
  // v2b (v2 at four blocks per multiprocessor) is not built for KIVI, v4 (staged) not for the
  // 16-bit formats: one loop named for every format leaves those on v2; named for one of them
  // in a list, it is refused below.
  auto built = [](const std::string& v, kernels::KvFormat f) {
    return !(v == "v2b" && kernels::is_kivi(f)) && !(v == "v4" && kernels::format_bits(f) == 16);
  };
  if (spec.empty()) return "v2";
  if (spec.find('=') == std::string::npos) return built(loop(spec), format) ? spec : "v2";
  std::string chosen = "v2";
  std::stringstream items(spec);
  for (std::string item; std::getline(items, item, ',');) {
    const size_t eq = item.find('=');
    KVB_CHECK(eq != std::string::npos, "KVBENCH_DECODE_LOOP='", spec, "': '", item,
              "' is not FORMAT=LOOP");
    const std::string name = item.substr(0, eq), value = loop(item.substr(eq + 1));
    int known = -1;
    for (int f = 0; f <= int(kernels::KvFormat::kInt2); ++f)
      if (name == kernels::format_name(kernels::KvFormat(f))) known = f;
    KVB_CHECK(known >= 0, "KVBENCH_DECODE_LOOP='", spec, "': unknown format '", name,
              "' (fp16, bf16, int8, int4, fp8, kivi-2, kivi-4, int4-asym, int2)");
    KVB_CHECK(built(value, kernels::KvFormat(known)), "KVBENCH_DECODE_LOOP='", spec, "': ", name,
              " has no ", value, " loop (",
              value == "v2b" ? "KIVI's v2 loop spills at four blocks per multiprocessor"
                             : "v4 stages quantized formats only",
              ")");
    if (known == int(format)) chosen = value;
  }
  return chosen;
}

int retained_tokens_for(const std::string& spec) {
  if (spec.empty()) return 1;
  KVB_CHECK(spec == "1" || spec == "2" || spec == "4", "KVBENCH_RETAINED_TOKENS='", spec,
            "': expected 1, 2 or 4 (the retained-index kernel's tokens loaded per step)");
  return std::stoi(spec);
}

// ---- On CPU tensors: the kernels' host references (the GPU path's code run on the CPU) ----

namespace {

// The retained-index problem of a batch over host pointers; no lists: every token.
kernels::RetainedProblem host_problem(const DecodeBatch& batch, int64_t kv_heads,
                                      const at::Tensor& q, const at::Tensor& out) {
  kernels::RetainedProblem pr;
  pr.batch = int(q.size(0)), pr.q_heads = int(q.size(1)), pr.kv_heads = int(kv_heads);
  pr.head_dim = int(q.size(2)), pr.max_pages_per_seq = int(batch.table.size(1));
  pr.block_table = batch.table.data_ptr<int>(), pr.seq_lens = batch.seq_lens.data_ptr<int>();
  pr.seq_rows = batch.seq_rows.data_ptr<int>();
  pr.softmax_scale = float(1.0 / std::sqrt(double(pr.head_dim)));
  set_queries(pr, q, out);
  return pr;
}

void check_host(const kernels::RetainedProblem& pr, const kernels::PagedKvStore& store) {
  const char* why = kernels::retained_check(pr, store);
  KVB_CHECK(why[0] == '\0', "paged cache: host decode: ", why);
}

// A kernel's host twin on a problem over host pointers, checked as its launcher checks it.
template <class Problem>
void run_host_twin(const Problem& p, const char* (*check)(const Problem&),
                   void (*twin)(const Problem&), const char* what) {
  const char* why = check(p);
  KVB_CHECK(why[0] == '\0', "paged cache: host ", what, ": ", why);
  twin(p);
}

}  // namespace

at::Tensor decode(const kernels::PagedKvStore& store, const DecodeBatch& batch, int64_t kv_heads,
                  const at::Tensor& q) {
  if (q.is_cuda()) return device_decode(store, batch, kv_heads, q);
  // The dense kernel's attention is the retained one's over every token; its output comes
  // back in q's dtype, as the kernel writes it. Its limits hold here too, so that the CPU
  // tests of the GPU path meet them.
  KVB_CHECK(q.size(1) / kv_heads <= kernels::kDecodeMaxQPerKv,
            "paged cache: decode attention: unsupported GQA group: ", q.size(1) / kv_heads,
            " (at most ", kernels::kDecodeMaxQPerKv, ")");
  const at::Tensor qf = q.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(qf);
  const int B = int(q.size(0));
  const std::vector<const int*> lists(size_t(B), nullptr);
  const std::vector<int> zeros(size_t(2 * B), 0);
  kernels::RetainedProblem pr = host_problem(batch, kv_heads, qf, out);
  pr.kept_lists = lists.data(), pr.kept_counts = zeros.data(), pr.tail_start = zeros.data() + B;
  check_host(pr, store);
  kernels::retained_decode_host(pr, store);
  return out.to(q.scalar_type());
}

at::Tensor retained(const kernels::PagedKvStore& store, const DecodeBatch& batch, int64_t kv_heads,
                    const at::Tensor& lists, const at::Tensor& counts_tails, const at::Tensor& q,
                    const at::Tensor& scores) {
  if (q.is_cuda()) return device_retained(store, batch, kv_heads, lists, counts_tails, q, scores);
  at::Tensor out = at::empty_like(q);
  kernels::RetainedProblem pr = host_problem(batch, kv_heads, q, out);
  pr.kept_lists = reinterpret_cast<const int* const*>(lists.data_ptr<int64_t>());
  pr.kept_counts = counts_tails.data_ptr<int>(), pr.tail_start = pr.kept_counts + q.size(0);
  if (scores.defined()) {
    KVB_CHECK(scores.is_contiguous() && scores.scalar_type() == at::kFloat && scores.dim() == 3 &&
                  scores.size(0) == q.size(0) && scores.size(1) == q.size(1),
              "paged cache: retained-decode scores must be contiguous fp32 [batch, heads, n]");
    pr.scores = scores.data_ptr<float>(), pr.score_stride = int(scores.size(2));
    // Poisoned, as the tests of the GPU path run here: an entry the kernel's code leaves
    // unwritten reads NaN downstream, not whatever the allocation held (no operator: the
    // host-operator counts stay the GPU's).
    std::fill(pr.scores, pr.scores + scores.numel(), std::numeric_limits<float>::quiet_NaN());
  }
  check_host(pr, store);
  kernels::retained_decode_host(pr, store);
  return out;
}

void palu(const kernels::PaluProblem& problem, int64_t max_len, const at::Tensor& on) {
  if (on.is_cuda()) return device_palu(problem, max_len, on);
  const char* why = kernels::palu_check(problem);
  KVB_CHECK(why[0] == '\0', "paged cache: host palu decode: ", why);
  std::vector<float> scratch(size_t(2 * problem.head_dim + problem.rank + max_len));
  kernels::palu_decode_host(problem, scratch.data());
}

void gear(const kernels::GearProblem& problem, int64_t max_len, const at::Tensor& on) {
  if (on.is_cuda()) return device_gear(problem, max_len, on);
  const char* why = kernels::gear_check(problem);
  KVB_CHECK(why[0] == '\0', "paged cache: host gear decode: ", why);
  std::vector<float> scratch(size_t(2 * problem.head_dim + 1) * size_t(max_len));
  kernels::gear_decode_host(problem, scratch.data());
}

void quest_score(const kernels::QuestScoreProblem& problem, const at::Tensor& on) {
  if (on.is_cuda()) return device_quest(problem, on);
  run_host_twin(problem, kernels::quest_score_check, kernels::quest_score_host,
                "quest page scores");
}

void quest_select(const kernels::QuestSelectProblem& problem, const at::Tensor& on) {
  if (on.is_cuda()) return device_quest_select(problem, on);
  run_host_twin(problem, kernels::quest_select_check, kernels::quest_select_host,
                "quest page choice");
}

void thin_qr(const kernels::ThinQrProblem& problem, const at::Tensor& on) {
  if (on.is_cuda()) return device_thin_qr(problem, on);
  run_host_twin(problem, kernels::thin_qr_check, kernels::thin_qr_host, "thin qr");
}

void quest_fold(const kernels::QuestFoldProblem& problem, const at::Tensor& on) {
  if (on.is_cuda()) return device_quest_fold(problem, on);
  run_host_twin(problem, kernels::quest_fold_check, kernels::quest_fold_host,
                "quest bound folding");
}

void steady_evict(const kernels::SteadyEvictProblem& problem, const at::Tensor& on) {
  if (on.is_cuda()) return device_steady(problem, on);
  run_host_twin(problem, kernels::steady_evict_check, kernels::steady_evict_host,
                "steady-state eviction");
}

std::vector<at::Tensor> head_project(const std::vector<Projection>& jobs) {
  KVB_CHECK(!jobs.empty() && jobs.size() <= size_t(kernels::kHeadProjectMaxJobs),
            "paged cache: 1 to ", kernels::kHeadProjectMaxJobs, " head projections per launch");
  const at::Tensor& on = jobs[0].x;
  kernels::HeadProjectProblem p;
  p.rows = int(on.size(0)), p.jobs = int(jobs.size());
  std::vector<at::Tensor> outs, held;      // held: the contiguous inputs, alive until the launch
  if (on.dim() >= 1 && on.size(0) == 0) {  // no rows: nothing to launch (and null data pointers)
    for (const Projection& job : jobs)
      outs.push_back(
          at::empty({0, job.x.size(1), job.basis.size(2)}, job.x.options().dtype(job.out_dtype)));
    return outs;
  }
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Projection& job = jobs[j];
    KVB_CHECK(job.x.dim() == 3 && job.basis.dim() == 3 && job.x.size(0) == on.size(0) &&
                  job.x.size(2) == job.basis.size(1) && job.basis.scalar_type() == at::kFloat &&
                  job.x.device() == on.device() && job.basis.device() == on.device(),
              "paged cache: head projection ", j, ": x ", job.x.sizes(), " and fp32 basis ",
              job.basis.sizes(),
              " on one device expected ([n, heads, in], [basis_heads, in, out])");
    kernels::HeadProjectJob& a = p.job[j];
    held.push_back(job.x.contiguous()), held.push_back(job.basis.contiguous());
    const at::Tensor &x = held[held.size() - 2], &basis = held.back();
    outs.push_back(
        at::empty({x.size(0), x.size(1), basis.size(2)}, x.options().dtype(job.out_dtype)));
    a.heads = int(x.size(1)), a.basis_heads = int(basis.size(0));
    a.in_dim = int(x.size(2)), a.out_dim = int(basis.size(2));
    a.x_dtype = act_dtype(x.scalar_type(), "paged cache", "a head projection's input");
    a.out_dtype = act_dtype(job.out_dtype, "paged cache", "a head projection's output");
    a.x = x.data_ptr(), a.basis = basis.data_ptr<float>(), a.out = outs.back().data_ptr();
    if (job.rope_cos.defined()) {
      const at::Tensor &cos = job.rope_cos, &sin = job.rope_sin, &pos = job.positions;
      KVB_CHECK(cos.dim() == 2 && cos.is_contiguous() && cos.scalar_type() == at::kFloat &&
                    sin.defined() && sin.sizes() == cos.sizes() && sin.is_contiguous() &&
                    sin.scalar_type() == at::kFloat && pos.defined() && pos.dim() == 1 &&
                    pos.size(0) == x.size(0) && pos.scalar_type() == at::kLong &&
                    pos.is_contiguous() && cos.device() == on.device() &&
                    sin.device() == on.device() && pos.device() == on.device(),
                "paged cache: head projection ", j,
                ": contiguous fp32 RoPE tables [positions, head_dim] and int64 positions [n] "
                "beside x expected");
      a.rope_cos = cos.data_ptr<float>(), a.rope_sin = sin.data_ptr<float>();
      a.positions = pos.data_ptr<int64_t>(), a.rope_dim = int(cos.size(1));
    }
  }
  if (on.is_cuda())
    device_project(p, on);
  else
    run_host_twin(p, kernels::head_project_check, kernels::head_project_host, "head projection");
  return outs;
}

namespace {
// `t` in 16-bit `type`, contiguous, at a 16-byte aligned address (the kernels' loads).
at::Tensor aligned16(const at::Tensor& t, at::ScalarType type, const at::Device& device) {
  at::Tensor out = t.to(device, type).contiguous();
  return reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0 ? out : out.clone();
}

// H2O's sums by kernels/summed_attention.h: q and keys in `type`, or (split) q in fp16 and
// each key as two fp16 parts, k = hi + lo * 2^-11.
at::Tensor summed_by_kernels(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                             int64_t start, bool split) {
  const int64_t heads = q.size(0), n = q.size(1), kv_heads = keys.size(0), held = keys.size(1);
  const int64_t head_dim = keys.size(2);
  if (keys.is_cuda() && !kernels::summed_attention_gpu_shape(int(head_dim)))
    return kvbench::summed_attention(q, keys, key_pos, start);
  const at::ScalarType type =
      !split && q.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kHalf;
  const at::Device device = keys.device();
  const at::Tensor q16 = aligned16(q, type, device);
  at::Tensor k16, k_lo;
  if (split) {
    // hi = fp16(k), lo = fp16((k - hi) * 2^11): the remainder is exact in fp32, and scaled up
    // fp16 keeps its 11 bits. Keys past fp16's range (a dequantized code whose scale rounded
    // up) saturate instead of turning every sum of the head into NaN (inf - inf).
    constexpr double kMax = 65504.0;
    const at::Tensor k32 = keys.to(at::kFloat);
    k16 = aligned16(k32.clamp(-kMax, kMax), at::kHalf, device);
    k_lo = aligned16(
        k32.sub(k16.to(at::kFloat)).mul_(1.0 / kernels::kSummedLoScale).clamp_(-kMax, kMax),
        at::kHalf, device);
  } else {
    k16 = aligned16(keys, type, device);
  }
  at::Tensor lse = at::empty({heads, n}, keys.options().dtype(at::kFloat));
  at::Tensor out = at::empty({kv_heads, held}, lse.options());
  kernels::SummedAttentionProblem p;
  p.heads = int(heads), p.kv_heads = int(kv_heads), p.head_dim = int(head_dim);
  p.n = int(n), p.held = int(held), p.bf16 = type == at::kBFloat16;
  p.scale = float(1.0 / std::sqrt(double(head_dim)));
  p.q = static_cast<const uint16_t*>(q16.data_ptr());
  p.k = static_cast<const uint16_t*>(k16.data_ptr());
  if (split) p.k_lo = static_cast<const uint16_t*>(k_lo.data_ptr());
  p.lse = lse.data_ptr<float>(), p.out = out.data_ptr<float>();
  if (keys.is_cuda())
    device_summed(p, keys);
  else
    run_host_twin(p, kernels::summed_attention_check, kernels::summed_attention_host,
                  "summed attention");
  return out;
}

}  // namespace

at::Tensor summed_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                            int64_t start) {
  return summed_by_kernels(q, keys, key_pos, start, false);
}

at::Tensor summed_attention_split(const at::Tensor& q, const at::Tensor& keys,
                                  const at::Tensor& key_pos, int64_t start) {
  return summed_by_kernels(q, keys, key_pos, start, true);
}

std::pair<at::Tensor, at::Tensor> dequantize(const kernels::PagedKvStore& store,
                                             const at::Tensor& pages, int64_t kv_heads,
                                             int64_t head_dim, int seq_row, int64_t tokens) {
  if (pages.is_cuda()) return device_dequantize(store, pages, kv_heads, head_dim, seq_row, tokens);
  at::Tensor k = at::empty({kv_heads, tokens, head_dim}, at::kFloat), v = at::empty_like(k);
  const int* table = pages.data_ptr<int>();
  for (int key = 0; key < 2; ++key) {
    float* o = (key ? k : v).data_ptr<float>();
    for (int64_t h = 0; h < kv_heads; ++h)
      for (int64_t t = 0; t < tokens; ++t)
        kernels::decode_paged_token(store, table, int(kv_heads), int(head_dim), seq_row, key == 1,
                                    int(h), int(t), int(tokens), o + (h * tokens + t) * head_dim);
  }
  return {k, v};
}

}  // namespace kvbench::paged_cuda
