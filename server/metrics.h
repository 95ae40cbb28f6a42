// Prometheus metrics of the scheduler, registered on a registry the caller
// owns (no globals). Names follow Prometheus conventions: qaas_ prefix, base
// units, _total counters, no job ids in labels.
#ifndef QAAS_SERVER_METRICS_H_
#define QAAS_SERVER_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "qaas/v1/job.pb.h"

namespace qaas::server {

class Metrics {
 public:
  explicit Metrics(prometheus::Registry& registry);

  void JobSubmitted() { submitted_.Increment(); }
  // A job reached SUCCEEDED, FAILED or CANCELLED after `seconds` since submit.
  void JobFinished(v1::JobState state, double seconds);
  void JobStarted(double queue_wait_seconds) { queue_wait_.Observe(queue_wait_seconds); }
  void LeaseExpired() { lease_expirations_.Increment(); }
  void WorkerRegistered() { workers_registered_.Increment(); }
  void SetQueueDepth(double n) { queued_.Set(n); }
  void SetRunning(double n) { running_.Set(n); }

 private:
  prometheus::Counter& submitted_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Histogram& queue_wait_;
  prometheus::Counter& lease_expirations_;
  prometheus::Counter& workers_registered_;
  prometheus::Gauge& queued_;
  prometheus::Gauge& running_;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_METRICS_H_
