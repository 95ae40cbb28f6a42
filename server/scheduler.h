// The scheduler: the job state machine (README: Job states) over a JobStore,
// with leases, cancellation, idempotency and change notification. A plain
// object that the gRPC services call (and tests call directly, with an
// injected clock: no sleeps needed).
//
//   QUEUED --lease--> RUNNING --> SUCCEEDED | FAILED
//     ^                  | lease expired, attempts left
//     +------------------+
//   QUEUED/RUNNING --cancel--> CANCELLED (RUNNING: at the worker's next layer)
//
// Thread-safe. Methods that wait say so.
#ifndef QAAS_SERVER_SCHEDULER_H_
#define QAAS_SERVER_SCHEDULER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qaas/v1/job_service.pb.h"
#include "qaas/v1/worker_service.pb.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/placement.h"
#include "server/spec_validation.h"

namespace qaas::server {

struct SchedulerOptions {
  int64_t lease_duration_ms = 30000;
  int64_t heartbeat_interval_ms = 5000;
  int max_attempts = 3;
  ValidationOptions validation;
  PlacementPolicy placement;
  std::string default_output_uri;  // jobs without spec.output go to <this>/jobs/<id>
  std::function<int64_t()> now_ms;  // unix ms; defaults to the system clock
};

class Scheduler {
 public:
  // `store` is owned; `metrics` must outlive the scheduler.
  Scheduler(std::unique_ptr<JobStore> store, SchedulerOptions options, Metrics* metrics);

  // JobService. `tenant` scopes every call: other tenants' jobs are NotFound.
  absl::StatusOr<v1::Job> Submit(const std::string& tenant, v1::JobSpec spec);
  absl::StatusOr<v1::Job> Get(const std::string& tenant, const std::string& id);
  absl::StatusOr<v1::ListJobsResponse> List(const std::string& tenant, const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> Cancel(const std::string& tenant, const std::string& id, const std::string& reason);

  // WorkerService.
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(const v1::RegisterWorkerRequest& request);
  // Blocks up to request.wait_ms (bounded by the scheduler's shutdown) for a
  // job that server/placement.h gives this worker. Jobs placement finds
  // infeasible on every live worker FAIL with its reason.
  absl::StatusOr<v1::LeaseJobResponse> LeaseJob(const v1::LeaseJobRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::Status CompleteJob(const v1::CompleteJobRequest& request);
  // Fails the job, or with request.release requeues it (see the proto).
  absl::Status FailJob(const v1::FailJobRequest& request);

  // Requeues (or fails, when out of attempts) RUNNING jobs whose lease
  // expired. Returns how many. Called periodically by the server, which also
  // refreshes the active-workers gauge here.
  absl::StatusOr<int> ExpireLeases();

  // Change notification for WatchJob (LeaseJob waits on offers of work
  // instead): Version() increases on every change;
  // WaitForChange blocks until it passes `seen` or `timeout_ms` passes.
  uint64_t Version() const { return version_.load(); }
  uint64_t WaitForChange(uint64_t seen, int64_t timeout_ms);

  // Wakes every waiter; later waits return at once.
  void Shutdown();
  bool shutting_down() const { return shutdown_.load(); }
  // The allowed file roots, as the server was configured (reports are read
  // beneath them).
  const std::vector<std::string>& file_roots() const { return options_.validation.file_roots; }

 private:
  // An explicit output must not overlap the job's inputs, the server's store
  // or a queued or running job's output, and must be empty unless
  // spec.overwrite. InvalidArgument naming what it overlaps.
  absl::Status CheckOutput(const std::string& tenant, const v1::JobSpec& spec);
  // Whether `tenant` already has a job submitted with `key` (a retry).
  absl::StatusOr<bool> HasIdempotencyKey(const std::string& tenant, const std::string& key);
  struct WorkerInfo {
    v1::WorkerCapabilities capabilities;
    std::string name;
    int64_t last_seen_ms = 0;  // last RegisterWorker, LeaseJob or Heartbeat
    int polling = 0;           // LeaseJob calls now waiting
  };
  // Records that `worker_id` was heard from (polling: +1 entering a long
  // poll, -1 leaving it) and refreshes the active-workers gauge.
  void SawWorker(const std::string& worker_id, int polling_delta);
  void RefreshWorkerGauge();  // takes mu_
  int64_t Now() const { return options_.now_ms(); }
  void Notify();
  // A change that may let a queued job run (a submit, a requeue, a job that
  // ended and so freed its tenant's slot): wakes one waiting LeaseJob call.
  void OfferWork();
  // Wakes the longest-waiting LeaseJob call that has not looked at the queue
  // since the latest offer, if any. Takes mu_ held.
  void WakeNextPollerLocked();
  // The queue-depth and running gauges from the store's counts. Concurrent
  // calls share counts: one caller counts while the others mark the gauges
  // stale, and it counts once more if they did, so a burst of leases costs
  // the store two counts, not one per lease. A change that even the second
  // count misses stays marked stale for the next call or the reaper's.
  void RefreshGauges();
  void RecordFinish(const v1::Job& job);
  // Capabilities of the workers heard from within a lease.
  std::vector<v1::WorkerCapabilities> LiveWorkers();
  // FAILS a still-QUEUED job that placement found infeasible.
  void FailInfeasible(const std::string& job_id, const std::string& reason);
  absl::Status Release(const v1::FailJobRequest& request);
  absl::StatusOr<JobRow> UpdateLeased(const std::string& job_id, const std::string& lease_id,
                                      const std::function<void(JobRow&)>& mutate);
  // Ends a leased job with the outcome `set_outcome` writes (state, result or error).
  absl::Status FinishLeased(const std::string& job_id, const std::string& lease_id,
                            const std::function<void(JobRow&)>& set_outcome);

  std::unique_ptr<JobStore> store_;
  SchedulerOptions options_;
  Metrics* metrics_;
  std::atomic<uint64_t> version_{0};
  std::atomic<bool> shutdown_{false};
  std::mutex mu_;  // guards workers_ and the condition variable
  std::mutex gauge_mu_;  // guards the two below
  bool gauge_counting_ = false;  // a RefreshGauges call is counting
  bool gauge_stale_ = false;     // the store changed after that count began
  // Serializes an explicit output's checks with the job's insert, so two
  // submits racing to one empty output cannot both pass (one server; several
  // servers on one PostgreSQL would need the database to arbitrate).
  std::mutex submit_mu_;
  std::condition_variable changed_;
  // Long-polling LeaseJob calls, longest-waiting first. A new job wakes one
  // of them, not all: one that finds nothing it can take (another worker's
  // device, a tenant at its limit) passes the wake to the next that has not
  // looked since the offer, so a job any poller can run is taken after one
  // wake, and one nobody can run costs each poller one look. Guarded by mu_.
  struct Poller {
    std::condition_variable cv;
    uint64_t looked_at = 0;  // offers_ when it last read the queue
    bool woken = false;
  };
  std::list<Poller*> pollers_;
  uint64_t offers_ = 0;
  std::map<std::string, WorkerInfo> workers_;
  // When each tenant last got a job from this scheduler (fair share's round
  // robin; per replica).
  std::map<std::string, int64_t> last_served_;  // an assignment sequence number, not a time
  int64_t assignments_ = 0;
};

// "j-" + 16 random hex digits (also used for worker and lease ids).
std::string RandomId(const std::string& prefix);
bool IsFinal(v1::JobState state);

}  // namespace qaas::server

#endif  // QAAS_SERVER_SCHEDULER_H_
