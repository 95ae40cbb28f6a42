// qaas-worker as a library: registers with the scheduler, long-polls for a
// job, stages its inputs, runs the quantization pipeline while heartbeating
// progress, uploads the artifact and report, and completes or fails the job.
// A cancel seen at a heartbeat stops the job at the next layer boundary.
#ifndef QAAS_WORKER_WORKER_H_
#define QAAS_WORKER_WORKER_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "qaas/v1/worker_service.grpc.pb.h"

namespace qaas::worker {

struct WorkerOptions {
  std::string name = "worker";
  std::string work_dir;  // scratch space: <work_dir>/jobs/<id>, <work_dir>/cache
  std::string device = "cpu";
  int64_t poll_wait_ms = 10000;
  int64_t rpc_timeout_ms = 30000;
};

class Worker {
 public:
  Worker(std::shared_ptr<grpc::Channel> channel, WorkerOptions options);

  // Leases and runs jobs until Stop(). Server errors are retried with backoff.
  void Run();
  // Makes Run() return after the current job stops at its next layer boundary
  // (the job's lease then expires and it is requeued). Thread-safe.
  void Stop();

  // Registers if needed, leases at most one job (waiting up to poll_wait_ms)
  // and runs it. True when a job ran (whatever its outcome).
  absl::StatusOr<bool> RunOnce();

 private:
  absl::Status Register();
  // Runs one leased job to its end and reports the outcome to the server.
  void RunJob(const v1::Job& job, const std::string& lease_id);

  std::unique_ptr<v1::WorkerService::Stub> stub_;
  WorkerOptions options_;
  std::string worker_id_;
  int64_t heartbeat_interval_ms_ = 2000;  // the server's, from RegisterWorker
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable stop_cv_;
};

}  // namespace qaas::worker

#endif  // QAAS_WORKER_WORKER_H_
