// Durable storage of jobs. One interface so that the SQLite store (embedded,
// single scheduler) and a PostgreSQL store (several scheduler replicas) are
// interchangeable and pass one conformance suite.
//
// A job is kept as its qaas.v1.Job message plus the columns the scheduler
// queries: state, priority, tenant, idempotency key, and the current lease.
// Every method is atomic and durable when it returns OK. Thread-safe.
#ifndef QAAS_SERVER_JOB_STORE_H_
#define QAAS_SERVER_JOB_STORE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qaas/v1/job.pb.h"

namespace qaas::server {

struct JobRow {
  v1::Job job;
  std::string lease_id;         // "" when not leased
  int64_t lease_expire_ms = 0;  // unix ms
};

struct ListQuery {
  std::string tenant;                   // "" = every tenant
  std::vector<v1::JobState> states;     // empty = all
  std::vector<std::pair<std::string, std::string>> labels;  // all must match
  int page_size = 50;
  std::string page_token;               // opaque, from the previous page
};

struct ListPage {
  std::vector<v1::Job> jobs;  // newest first
  std::string next_page_token;
};

struct StateCounts {
  int64_t queued = 0;
  int64_t running = 0;
};

// Whether `job` carries every label pair of `labels` (ListQuery's filter).
inline bool HasLabels(const v1::Job& job, const std::vector<std::pair<std::string, std::string>>& labels) {
  for (const auto& [k, v] : labels) {
    auto it = job.spec().labels().find(k);
    if (it == job.spec().labels().end() || it->second != v) return false;
  }
  return true;
}

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts `job` (its id, tenant and spec set). When the tenant already has a
  // job with the same non-empty spec.idempotency_key, returns that job and
  // `*created = false` instead.
  virtual absl::StatusOr<v1::Job> Insert(const v1::Job& job, bool* created) = 0;
  // NotFound naming the id.
  virtual absl::StatusOr<JobRow> Get(const std::string& id) = 0;
  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;
  // Read-modify-write of one job in a transaction: `mutate` edits the row and
  // returns OK to commit or an error to abort (returned as is).
  virtual absl::StatusOr<JobRow> Update(const std::string& id,
                                        const std::function<absl::Status(JobRow&)>& mutate) = 0;
  // What ClaimNext's chooser sees: each tenant's first kClaimProbe QUEUED
  // jobs (highest priority, then oldest; so a tenant's long backlog never
  // hides another tenant's jobs), in that order overall, and RUNNING jobs
  // per tenant. When it picks none of those and a tenant has more, it is
  // asked again with each tenant's first kClaimWindow: most claims read
  // (and on PostgreSQL lock) a few rows per tenant, and a job deep in a
  // backlog that only this worker can run is still found.
  using Chooser = std::function<int(const std::vector<const v1::Job*>& queued,
                                    const std::map<std::string, int>& running_by_tenant)>;
  static constexpr int kClaimProbe = 8;
  static constexpr int kClaimWindow = 64;
  // Atomically lets `choose` pick a QUEUED job (an index into `queued`, or -1
  // for none) and `mutate` turn it into a leased RUNNING row. Concurrent
  // claims (other threads, other scheduler replicas) never get the same job.
  // nullopt when `choose` picked none.
  virtual absl::StatusOr<std::optional<JobRow>> ClaimNext(const Chooser& choose,
                                                          const std::function<void(JobRow&)>& mutate) = 0;
  // Ids of RUNNING jobs whose lease expired before `now_ms`.
  virtual absl::StatusOr<std::vector<std::string>> ExpiredLeases(int64_t now_ms) = 0;
  virtual absl::StatusOr<StateCounts> CountStates() = 0;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_JOB_STORE_H_
