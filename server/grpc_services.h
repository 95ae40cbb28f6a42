// gRPC adapters: each handler validates the request shape, calls the
// Scheduler, and converts its absl::Status with ToGrpcStatus. No logic here.
#ifndef QAAS_SERVER_GRPC_SERVICES_H_
#define QAAS_SERVER_GRPC_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "qaas/v1/job_service.grpc.pb.h"
#include "qaas/v1/worker_service.grpc.pb.h"
#include "server/auth.h"
#include "server/scheduler.h"

namespace qaas::server {

// absl and gRPC status codes share their numbering (both are google.rpc.Code).
grpc::Status ToGrpcStatus(const absl::Status& status);

// Who may call (docs/api.md "Authentication").
struct AuthConfig {
  // Bearer tokens; null = authentication off: every JobService caller is the
  // tenant "default" and WorkerService is open (loopback, embedded use).
  TokenAuthenticator* tokens = nullptr;  // not owned
  // A client certificate the worker CA verified identifies a worker (mTLS).
  bool worker_certificates = false;
  // A worker token known only to this process (the embedded worker's
  // in-process channel); "" = none.
  std::string internal_worker_token;
};

// The caller of `ctx` if it may call a service for principals of kind
// `need`: Unauthenticated without valid credentials, PermissionDenied for a
// credential of the other kind.
absl::StatusOr<Principal> Authorize(const AuthConfig& auth, grpc::ServerContext* ctx, Principal::Kind need);

class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(Scheduler* scheduler, AuthConfig auth) : scheduler_(scheduler), auth_(auth) {}

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
  AuthConfig auth_;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Scheduler* scheduler, AuthConfig auth) : scheduler_(scheduler), auth_(auth) {}

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
  AuthConfig auth_;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_GRPC_SERVICES_H_
