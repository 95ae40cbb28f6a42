// gRPC adapters: each handler validates the request shape, calls the
// Scheduler, and converts its absl::Status with ToGrpcStatus. No logic here.
#ifndef QAAS_SERVER_GRPC_SERVICES_H_
#define QAAS_SERVER_GRPC_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "qaas/v1/job_service.grpc.pb.h"
#include "qaas/v1/worker_service.grpc.pb.h"
#include "server/scheduler.h"

namespace qaas::server {

// absl and gRPC status codes share their numbering (both are google.rpc.Code).
grpc::Status ToGrpcStatus(const absl::Status& status);

class JobServiceImpl final : public v1::JobService::Service {
 public:
  explicit JobServiceImpl(Scheduler* scheduler) : scheduler_(scheduler) {}

  grpc::Status SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req, v1::Job* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::Job* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status GetReport(grpc::ServerContext* ctx, const v1::GetReportRequest* req,
                         v1::GetReportResponse* resp) override;

 private:
  Scheduler* scheduler_;  // not owned
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(Scheduler* scheduler) : scheduler_(scheduler) {}

  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override;
  grpc::Status LeaseJob(grpc::ServerContext* ctx, const v1::LeaseJobRequest* req,
                        v1::LeaseJobResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override;
  grpc::Status CompleteJob(grpc::ServerContext* ctx, const v1::CompleteJobRequest* req,
                           v1::CompleteJobResponse* resp) override;
  grpc::Status FailJob(grpc::ServerContext* ctx, const v1::FailJobRequest* req,
                       v1::FailJobResponse* resp) override;

 private:
  Scheduler* scheduler_;  // not owned
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_GRPC_SERVICES_H_
