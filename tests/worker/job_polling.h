// Waiting for a job through the JobService, for the worker-level tests.
// Header-only.
#ifndef QAAS_TESTS_WORKER_JOB_POLLING_H_
#define QAAS_TESTS_WORKER_JOB_POLLING_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "qaas/v1/job_service.grpc.pb.h"
#include "server/scheduler.h"

namespace qaas::testing {

// GetJob of `id` into *job.
inline grpc::Status CallGetJob(v1::JobService::StubInterface* jobs, const std::string& id, v1::Job* job) {
  grpc::ClientContext ctx;
  v1::GetJobRequest req;
  req.set_id(id);
  return jobs->GetJob(&ctx, req, job);
}

// The job as GetJob returns it; a failed call is a test failure (and an
// empty job).
inline v1::Job GetJob(v1::JobService::StubInterface* jobs, const std::string& id) {
  v1::Job job;
  grpc::Status s = CallGetJob(jobs, id, &job);
  EXPECT_TRUE(s.ok()) << "GetJob " << id << ": " << s.error_message();
  return job;
}

inline bool IsFinalJob(const v1::Job& j) { return server::IsFinal(j.state()); }

// Polls GetJob every 50 ms until `done(job)` or the timeout; returns the last
// job seen. A failed call is a test failure and ends the wait.
inline v1::Job PollJob(v1::JobService::StubInterface* jobs, const std::string& id,
                       const std::function<bool(const v1::Job&)>& done, int timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  v1::Job job;
  for (;;) {
    grpc::Status s = CallGetJob(jobs, id, &job);
    if (!s.ok()) {
      ADD_FAILURE() << "GetJob " << id << ": " << s.error_message();
      return job;
    }
    if (done(job) || std::chrono::steady_clock::now() >= deadline) return job;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace qaas::testing

#endif  // QAAS_TESTS_WORKER_JOB_POLLING_H_
