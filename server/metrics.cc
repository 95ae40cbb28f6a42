#include "server/metrics.h"

#include <cmath>

namespace qaas::server {
namespace {

const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400};
  return *kBuckets;
}

// Relative perplexity increase: 0.1% (lossless in practice) to 100x (broken).
const prometheus::Histogram::BucketBoundaries& IncreaseBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 100};
  return *kBuckets;
}

// Zero-shot accuracy change (quantized - original), in accuracy points / 100:
// a 20-point loss to a 5-point gain.
const prometheus::Histogram::BucketBoundaries& AccuracyChangeBuckets() {
  static const auto* kBuckets = new prometheus::Histogram::BucketBoundaries{
      -0.2, -0.1, -0.05, -0.02, -0.01, -0.005, 0, 0.005, 0.01, 0.02, 0.05};
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

std::string MethodLabel(const v1::JobSpec& spec) {
  std::string label;
  for (const auto& step : spec.recipe()) {
    if (!label.empty()) label += '+';
    label += step.method();
  }
  if (label.empty()) label = spec.preset().empty() ? "none" : spec.preset();
  return label;
}

Metrics::Metrics(prometheus::Registry& r)
    : submitted_(prometheus::BuildCounter()
                     .Name("qaas_jobs_submitted_total")
                     .Help("Jobs accepted by SubmitJob (idempotent repeats not counted), by method.")
                     .Register(r)),
      finished_(prometheus::BuildCounter()
                    .Name("qaas_jobs_finished_total")
                    .Help("Jobs that reached a final state, by status and method.")
                    .Register(r)),
      duration_(prometheus::BuildHistogram()
                    .Name("qaas_job_duration_seconds")
                    .Help("Run time of finished jobs, from the first lease to the final state, by status and method.")
                    .Register(r)),
      perplexity_increase_(prometheus::BuildHistogram()
                               .Name("qaas_job_perplexity_increase_ratio")
                               .Help("Succeeded jobs' perplexity_quantized / perplexity_original - 1 (first "
                                     "evaluation), by method.")
                               .Register(r)),
      accuracy_change_(prometheus::BuildHistogram()
                           .Name("qaas_job_task_accuracy_change")
                           .Help("Succeeded jobs' zero-shot accuracy change (acc quantized - acc original), by "
                                 "method and task.")
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
      lease_releases_(prometheus::BuildCounter()
                          .Name("qaas_lease_releases_total")
                          .Help("Leases a stopping worker handed back (job requeued at once).")
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
                   .Add({})),
      workers_active_(prometheus::BuildGauge()
                          .Name("qaas_workers_active")
                          .Help("Registered workers heard from (poll or heartbeat) within one lease duration.")
                          .Register(r)
                          .Add({})) {}

void Metrics::JobFinished(v1::JobState state, const std::string& method, double run_seconds) {
  const std::string status = StatusLabel(state);
  finished_.Add({{"status", status}, {"method", method}}).Increment();
  if (run_seconds >= 0) {
    duration_.Add({{"status", status}, {"method", method}}, DurationBuckets()).Observe(run_seconds);
  }
}

void Metrics::QualityMeasured(const std::string& method, double original, double quantized) {
  if (!(original > 0) || !(quantized > 0) || !std::isfinite(original) || !std::isfinite(quantized)) return;
  perplexity_increase_.Add({{"method", method}}, IncreaseBuckets()).Observe(quantized / original - 1.0);
}

void Metrics::TaskAccuracyMeasured(const std::string& method, const std::string& task, double original,
                                   double quantized) {
  if (!std::isfinite(original) || !std::isfinite(quantized)) return;
  accuracy_change_.Add({{"method", method}, {"task", task}}, AccuracyChangeBuckets()).Observe(quantized - original);
}

}  // namespace qaas::server
