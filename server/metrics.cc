#include "server/metrics.h"

namespace qaas::server {
namespace {

const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400};
  return *kBuckets;
}

std::string StatusLabel(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_SUCCEEDED: return "succeeded";
    case v1::JOB_STATE_FAILED: return "failed";
    case v1::JOB_STATE_CANCELLED: return "cancelled";
    default: return "other";
  }
}

}  // namespace

Metrics::Metrics(prometheus::Registry& r)
    : submitted_(prometheus::BuildCounter()
                     .Name("qaas_jobs_submitted_total")
                     .Help("Jobs accepted by SubmitJob (idempotent repeats not counted).")
                     .Register(r)
                     .Add({})),
      finished_(prometheus::BuildCounter()
                    .Name("qaas_jobs_finished_total")
                    .Help("Jobs that reached a final state, by status.")
                    .Register(r)),
      duration_(prometheus::BuildHistogram()
                    .Name("qaas_job_duration_seconds")
                    .Help("Time from submit to a final state, by status.")
                    .Register(r)),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("qaas_job_queue_wait_seconds")
                      .Help("Time a job waited in QUEUED before a worker leased it.")
                      .Register(r)
                      .Add({}, DurationBuckets())),
      lease_expirations_(prometheus::BuildCounter()
                             .Name("qaas_lease_expirations_total")
                             .Help("Leases that expired without a heartbeat (worker lost).")
                             .Register(r)
                             .Add({})),
      workers_registered_(prometheus::BuildCounter()
                              .Name("qaas_workers_registered_total")
                              .Help("RegisterWorker calls.")
                              .Register(r)
                              .Add({})),
      queued_(prometheus::BuildGauge()
                  .Name("qaas_jobs_queued")
                  .Help("Jobs waiting in QUEUED.")
                  .Register(r)
                  .Add({})),
      running_(prometheus::BuildGauge()
                   .Name("qaas_jobs_running")
                   .Help("Jobs RUNNING on a worker.")
                   .Register(r)
                   .Add({})) {
  for (auto s : {v1::JOB_STATE_SUCCEEDED, v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}) {
    finished_.Add({{"status", StatusLabel(s)}});  // so every series exists from the start
    duration_.Add({{"status", StatusLabel(s)}}, DurationBuckets());
  }
}

void Metrics::JobFinished(v1::JobState state, double seconds) {
  finished_.Add({{"status", StatusLabel(state)}}).Increment();
  duration_.Add({{"status", StatusLabel(state)}}, DurationBuckets()).Observe(seconds);
}

}  // namespace qaas::server
