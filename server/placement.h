// Placement: which queued job a polling worker gets. Pure functions of their
// arguments (no clock, no store), so every rule is tested on its own.
//
//   - Fair share across tenants: the job goes to the tenant with the fewest
//     running jobs among those with a job this worker can take; ties go to
//     the tenant served least recently (round robin), then to queue order.
//     A tenant that submits a thousand jobs delays another tenant's next job
//     by at most one job per tenant, even with a single worker.
//   - Priority, then age, orders jobs within a tenant.
//   - Per-tenant limits on running jobs: a tenant at its limit waits.
//   - Fit: the job's device and memory need (spec.resources, or the estimate
//     from its model's config.json) against the worker's capabilities.
//
// A job no live worker can ever fit, waiting longer than
// infeasible_after_ms, is infeasible: the scheduler FAILS it with the reason
// instead of letting it wait forever. With no live worker at all nothing is
// infeasible (workers may be scaled to zero).
#ifndef QAAS_SERVER_PLACEMENT_H_
#define QAAS_SERVER_PLACEMENT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qaas/v1/job.pb.h"
#include "qaas/v1/worker_service.pb.h"

namespace qaas::server {

struct PlacementPolicy {
  int max_running_per_tenant = 0;                  // 0 = no limit
  std::map<std::string, int> tenant_max_running;   // overrides per tenant (0 = no limit)
  int64_t infeasible_after_ms = 10 * 60 * 1000;
};

enum class Verdict { kAssign, kRetryLater, kInfeasible };

struct Decision {
  Verdict verdict = Verdict::kRetryLater;
  std::string reason;  // why not kAssign
};

// The memory `job` needs on `worker`'s device: spec.resources.min_gpu_memory_bytes
// when set, else the job's estimate (0 = unknown: fits anywhere).
uint64_t MemoryNeed(const v1::Job& job);

// Whether `worker` can run `job` at all (device and memory), ignoring limits
// and other jobs: kAssign or kInfeasible with the reason.
Decision Fit(const v1::Job& job, const v1::WorkerCapabilities& worker);

struct PlacementInput {
  std::vector<const v1::Job*> queued;             // QUEUED jobs, any order
  std::map<std::string, int> running_by_tenant;   // RUNNING jobs per tenant
  // Orders tenants by when they last got a job (larger = later; absent: never).
  std::map<std::string, int64_t> last_served;
  v1::WorkerCapabilities worker;                  // the worker asking
  std::vector<v1::WorkerCapabilities> live_workers;  // every live worker, the asking one included
  int64_t now_ms = 0;
};

struct PlacementResult {
  int assigned = -1;  // index into queued, or -1
  // Indices into queued that no live worker can run, with the reason.
  std::vector<std::pair<int, std::string>> infeasible;
};

// The limit that applies to `tenant` (0 = none).
int TenantLimit(const PlacementPolicy& policy, const std::string& tenant);

// The verdict for one job on the asking worker, given what is running.
Decision Decide(const PlacementPolicy& policy, const PlacementInput& input, const v1::Job& job);

PlacementResult Place(const PlacementPolicy& policy, const PlacementInput& input);

// The peak memory (bytes) the layer-wise pipeline needs for a model, from
// its config.json shape: one decoder layer's fp32 weights and GPTQ Hessians,
// the embeddings and output head, the calibration stream (twice, in and
// out; three times for OmniQuant's float stream), both evaluation streams,
// one evaluation batch's logits, and 25% for temporaries.
struct MemoryEstimateInput {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  // A mixture of experts: its experts' MLP width each, and the shared
  // expert's (0: none); num_experts 0: dense.
  int64_t num_experts = 0;
  int64_t expert_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t calibration_tokens = 0;  // num_samples x seq_len
  int64_t evaluation_tokens = 0;   // over every evaluation set
  int64_t evaluation_seq_len = 0;
  int batch_size = 8;
  bool omniquant = false;
};
uint64_t EstimatePipelineMemory(const MemoryEstimateInput& in);

}  // namespace qaas::server

#endif  // QAAS_SERVER_PLACEMENT_H_
