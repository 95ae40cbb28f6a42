// qaas-worker as a library: registers with the scheduler, long-polls for a
// job, stages its inputs, runs the quantization pipeline while heartbeating
// progress, uploads the artifact and report, and completes or fails the job.
// A cancel seen at a heartbeat stops the job at the next layer boundary.
//
// Shutdown has two speeds (a Kubernetes pod termination uses both): Drain()
// takes no new job and lets the current one finish; Stop() also stops the
// current job at its next layer boundary and releases it to the queue at once.
#ifndef QAAS_WORKER_WORKER_H_
#define QAAS_WORKER_WORKER_H_

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "qaas/v1/worker_service.grpc.pb.h"
#include "worker/stager.h"

namespace qaas::quant {
struct PipelineProgress;
}  // namespace qaas::quant

namespace qaas::worker {

// A pipeline progress report as the job's Progress shows it (fraction,
// step, layer, expert; not the clock fields): the layers span 5% to 90% of
// the job (staging before, uploading after), and OmniQuant's epochs or a
// mixture of experts' experts advance it within a layer and name
// themselves in the step, e.g. "quantizing (expert 3/8)".
v1::Progress DescribeProgress(const quant::PipelineProgress& p);

struct WorkerOptions {
  std::string name = "worker";
  std::string work_dir;  // scratch space: <work_dir>/jobs/<id>, <work_dir>/cache
  std::string device = "cpu";
  uint64_t staged_forward_bytes = 2ull << 30;  // PipelineOptions::staged_forward_bytes
  int64_t poll_wait_ms = 10000;
  int64_t rpc_timeout_ms = 30000;
  // Where the worker's metrics go (qaas_worker_*); null = not recorded. Must
  // outlive the worker.
  prometheus::Registry* registry = nullptr;
};

class Worker {
 public:
  Worker(std::shared_ptr<grpc::Channel> channel, WorkerOptions options);

  // Leases and runs jobs until Drain() or Stop(). Server errors are retried
  // with backoff.
  void Run();
  // Makes Run() return once the current job (if any) has ended; no new job
  // is leased. Thread-safe.
  void Drain();
  // Makes Run() return after the current job stops at its next layer
  // boundary; the job is released: requeued at once, its attempt not counted.
  // Thread-safe.
  void Stop();

  // Registers if needed, leases at most one job (waiting up to poll_wait_ms)
  // and runs it. True when a job ran (whatever its outcome).
  absl::StatusOr<bool> RunOnce();

 private:
  absl::Status Register();
  // Runs one leased job to its end and reports the outcome to the server.
  // `file_roots`: the lease's allowed file roots, which every file:// uri of
  // the job is opened beneath (stager.h).
  void RunJob(const v1::Job& job, const std::string& lease_id, const FileRoots& file_roots);
  // Hands a leased job back to the queue (FailJob with release).
  void Release(const v1::Job& job, const std::string& lease_id, const std::string& why);
  // FailJob, logging (not returning) an error: the lease then runs out.
  void SendFailJob(const v1::FailJobRequest& request);
  void CountJob(const std::string& outcome);

  struct Metrics {
    explicit Metrics(prometheus::Registry& r);
    prometheus::Gauge& running;
    prometheus::Family<prometheus::Counter>& jobs;
    prometheus::Family<prometheus::Counter>& storage_bytes;
    prometheus::Counter& bytes_read;
    prometheus::Counter& bytes_written;
  };

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::unique_ptr<Metrics> metrics_;  // null without options.registry
  WorkerOptions options_;
  std::string worker_id_;
  int64_t heartbeat_interval_ms_ = 2000;  // the server's, from RegisterWorker
  std::atomic<bool> stop_{false};
  std::atomic<bool> draining_{false};
  std::mutex mu_;
  std::condition_variable stop_cv_;
};

}  // namespace qaas::worker

#endif  // QAAS_WORKER_WORKER_H_
