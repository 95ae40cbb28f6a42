// Prometheus metrics of the scheduler, registered on a registry the caller
// owns (no globals). Names follow Prometheus conventions: qaas_ prefix, base
// units, _total counters, no job ids in labels. `method` is the job's recipe
// ("gptq", "smoothquant+rtn", ...): a small, fixed set of values.
#ifndef QAAS_SERVER_METRICS_H_
#define QAAS_SERVER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

#include "qaas/v1/job.pb.h"

namespace qaas::server {

// The `method` label of a job: its recipe's methods joined by '+'.
std::string MethodLabel(const v1::JobSpec& spec);

class Metrics {
 public:
  explicit Metrics(prometheus::Registry& registry);

  void JobSubmitted(const std::string& method) { submitted_.Add({{"method", method}}).Increment(); }
  // A job reached SUCCEEDED, FAILED or CANCELLED. `run_seconds` is the time
  // from its first lease to the end; negative when it never ran.
  void JobFinished(v1::JobState state, const std::string& method, double run_seconds);
  // A succeeded job's evaluation: observes perplexity_quantized / original - 1.
  void QualityMeasured(const std::string& method, double perplexity_original, double perplexity_quantized);
  // A succeeded job's zero-shot task: observes acc quantized - acc original.
  void TaskAccuracyMeasured(const std::string& method, const std::string& task, double acc_original,
                            double acc_quantized);
  void JobStarted(double queue_wait_seconds) { queue_wait_.Observe(queue_wait_seconds); }
  void LeaseExpired() { lease_expirations_.Increment(); }
  void LeaseReleased() { lease_releases_.Increment(); }
  void WorkerRegistered() { workers_registered_.Increment(); }
  void SetQueueDepth(double n) { queued_.Set(n); }
  void SetRunning(double n) { running_.Set(n); }
  void SetActiveWorkers(double n) { workers_active_.Set(n); }

 private:
  prometheus::Family<prometheus::Counter>& submitted_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Histogram>& perplexity_increase_;
  prometheus::Family<prometheus::Histogram>& accuracy_change_;
  prometheus::Histogram& queue_wait_;
  prometheus::Counter& lease_expirations_;
  prometheus::Counter& lease_releases_;
  prometheus::Counter& workers_registered_;
  prometheus::Gauge& queued_;
  prometheus::Gauge& running_;
  prometheus::Gauge& workers_active_;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_METRICS_H_
