#include "server/placement.h"

#include <algorithm>
#include <climits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace qaas::server {
namespace {

std::string GiB(uint64_t bytes) { return absl::StrFormat("%.1f GiB", bytes / double(1ull << 30)); }

// The device the worker would run `job` on: the one the job names, else the
// worker's first.
std::string DeviceFor(const v1::Job& job, const v1::WorkerCapabilities& worker) {
  if (!job.spec().resources().device().empty()) return job.spec().resources().device();
  return worker.devices().empty() ? "cpu" : worker.devices(0);
}

// Queue order within a tenant: higher priority, then older.
bool Before(const v1::Job& a, const v1::Job& b) {
  return std::make_tuple(-a.spec().priority(), a.create_time_ms(), a.id()) <
         std::make_tuple(-b.spec().priority(), b.create_time_ms(), b.id());
}

}  // namespace

uint64_t MemoryNeed(const v1::Job& job) {
  const uint64_t explicit_need = job.spec().resources().min_gpu_memory_bytes();
  return explicit_need > 0 ? explicit_need : job.memory_estimate_bytes();
}

Decision Fit(const v1::Job& job, const v1::WorkerCapabilities& worker) {
  const std::string& want = job.spec().resources().device();
  if (!want.empty() && std::find(worker.devices().begin(), worker.devices().end(), want) == worker.devices().end()) {
    return {Verdict::kInfeasible,
            absl::StrCat("needs device ", want, "; the worker has ", absl::StrJoin(worker.devices(), ", "))};
  }
  const std::string device = DeviceFor(job, worker);
  const uint64_t need = MemoryNeed(job);
  const uint64_t have = device == "cpu" ? worker.host_memory_bytes() : worker.gpu_memory_bytes();
  if (need > 0 && have > 0 && need > have) {
    return {Verdict::kInfeasible, absl::StrCat("needs about ", GiB(need), " of ", device,
                                               " memory; the worker has ", GiB(have))};
  }
  return {Verdict::kAssign, ""};
}

int TenantLimit(const PlacementPolicy& policy, const std::string& tenant) {
  auto it = policy.tenant_max_running.find(tenant);
  return it != policy.tenant_max_running.end() ? it->second : policy.max_running_per_tenant;
}

Decision Decide(const PlacementPolicy& policy, const PlacementInput& in, const v1::Job& job) {
  Decision fit = Fit(job, in.worker);
  if (fit.verdict != Verdict::kAssign) {
    // Not on this worker; infeasible only if no live worker can run it and it
    // waited long enough for the cluster to grow a bigger one.
    for (const auto& w : in.live_workers) {
      if (Fit(job, w).verdict == Verdict::kAssign) return {Verdict::kRetryLater, fit.reason};
    }
    if (in.live_workers.empty() || in.now_ms - job.create_time_ms() < policy.infeasible_after_ms) {
      return {Verdict::kRetryLater, fit.reason};
    }
    return {Verdict::kInfeasible,
            absl::StrCat("infeasible: ", fit.reason == "" ? "no worker fits" : fit.reason, " (none of the ",
                         in.live_workers.size(), " live workers can run it after ",
                         policy.infeasible_after_ms / 1000, " s)")};
  }
  const int limit = TenantLimit(policy, job.tenant());
  auto running = in.running_by_tenant.find(job.tenant());
  const int n = running == in.running_by_tenant.end() ? 0 : running->second;
  if (limit > 0 && n >= limit) {
    return {Verdict::kRetryLater, absl::StrCat("tenant ", job.tenant(), " runs ", n, " jobs (its limit)")};
  }
  return {Verdict::kAssign, ""};
}

PlacementResult Place(const PlacementPolicy& policy, const PlacementInput& in) {
  PlacementResult result;
  // Per tenant, its first assignable job in queue order.
  std::map<std::string, int> best;
  for (int i = 0; i < static_cast<int>(in.queued.size()); ++i) {
    const v1::Job& job = *in.queued[i];
    const Decision d = Decide(policy, in, job);
    if (d.verdict == Verdict::kInfeasible) {
      result.infeasible.emplace_back(i, d.reason);
      continue;
    }
    if (d.verdict != Verdict::kAssign) continue;
    auto it = best.find(job.tenant());
    if (it == best.end() || Before(job, *in.queued[it->second])) best[job.tenant()] = i;
  }
  // Fair share: the tenant running the fewest jobs, then the one served
  // least recently, then queue order.
  auto rank = [&](int index) {
    const v1::Job& job = *in.queued[index];
    auto r = in.running_by_tenant.find(job.tenant());
    auto l = in.last_served.find(job.tenant());
    return std::make_pair(r == in.running_by_tenant.end() ? 0 : r->second,
                          l == in.last_served.end() ? INT64_MIN : l->second);
  };
  for (const auto& [tenant, index] : best) {
    if (result.assigned < 0 || rank(index) < rank(result.assigned) ||
        (rank(index) == rank(result.assigned) && Before(*in.queued[index], *in.queued[result.assigned]))) {
      result.assigned = index;
    }
  }
  return result;
}

uint64_t EstimatePipelineMemory(const MemoryEstimateInput& in) {
  const double f32 = 4;
  const double h = in.hidden_size, ffn = in.intermediate_size > 0 ? in.intermediate_size : 4 * in.hidden_size;
  // Attention (q, k, v, o: at most 4 h^2) and MLP (at most 3 h ffn) weights;
  // a mixture of experts holds every expert's.
  double mlp_width = ffn, hessian_width = ffn;
  if (in.num_experts > 0) {
    mlp_width = double(in.num_experts) * in.expert_intermediate_size + in.shared_expert_intermediate_size;
    hessian_width = double(std::max(in.expert_intermediate_size, in.shared_expert_intermediate_size));
  }
  const double layer_weights = (4 * h * h + 3 * h * mlp_width) * f32;
  // GPTQ Hessians, one per distinct linear input (h for q/k/v and gate/up, h
  // for o, ffn for down); experts are quantized one at a time.
  const double hessians = (2 * h * h + hessian_width * hessian_width) * f32;
  const double embeddings = 2 * static_cast<double>(in.vocab_size) * h * f32;  // input table and head
  const double calibration = (in.omniquant ? 3 : 2) * static_cast<double>(in.calibration_tokens) * h * f32;
  const double evaluation = 2 * static_cast<double>(in.evaluation_tokens) * h * f32;
  const double logits = static_cast<double>(in.batch_size) * in.evaluation_seq_len * in.vocab_size * f32;
  const double total = 1.25 * (layer_weights + hessians + embeddings + calibration + evaluation + logits);
  return static_cast<uint64_t>(total);
}

}  // namespace qaas::server
