#include "server/grpc_services.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "storage/object_store.h"

namespace qaas::server {
namespace {

// Until bearer-token auth lands every caller is this tenant.
constexpr char kDefaultTenant[] = "default";

grpc::Status Invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext*, const v1::SubmitJobRequest* req, v1::Job* resp) {
  auto job = scheduler_->Submit(kDefaultTenant, req->spec());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext*, const v1::GetJobRequest* req, v1::Job* resp) {
  if (req->id().empty()) return Invalid("id: required");
  auto job = scheduler_->Get(kDefaultTenant, req->id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext*, const v1::ListJobsRequest* req,
                                      v1::ListJobsResponse* resp) {
  auto page = scheduler_->List(kDefaultTenant, *req);
  if (!page.ok()) return ToGrpcStatus(page.status());
  *resp = *std::move(page);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext*, const v1::CancelJobRequest* req, v1::Job* resp) {
  if (req->id().empty()) return Invalid("id: required");
  auto job = scheduler_->Cancel(kDefaultTenant, req->id(), req->reason());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  if (req->id().empty()) return Invalid("id: required");
  uint64_t version = scheduler_->Version();
  auto job = scheduler_->Get(kDefaultTenant, req->id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  std::string last;
  while (true) {
    std::string now = job->SerializeAsString();
    if (now != last) {
      v1::JobEvent event;
      *event.mutable_job() = *job;
      event.set_time_ms(NowMs());
      if (!writer->Write(event)) return grpc::Status::OK;  // client went away
      last = std::move(now);
    }
    if (IsFinal(job->state())) return grpc::Status::OK;
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
    if (scheduler_->shutting_down()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server shutting down");
    version = scheduler_->WaitForChange(version, 500);
    job = scheduler_->Get(kDefaultTenant, req->id());
    if (!job.ok()) return ToGrpcStatus(job.status());
  }
}

grpc::Status JobServiceImpl::GetReport(grpc::ServerContext*, const v1::GetReportRequest* req,
                                       v1::GetReportResponse* resp) {
  if (req->id().empty()) return Invalid("id: required");
  auto job = scheduler_->Get(kDefaultTenant, req->id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("job '", req->id(), "' is ", v1::JobState_Name(job->state()),
                                     "; a report exists once it SUCCEEDED"));
  }
  const std::string& uri = job->result().report_uri();
  const size_t slash = uri.rfind('/');
  auto store = storage::OpenObjectStore(uri.substr(0, slash));
  if (!store.ok()) return ToGrpcStatus(store.status());
  auto text = (*store)->Read(uri.substr(slash + 1));
  if (!text.ok()) return ToGrpcStatus(text.status());
  resp->set_report_json(*std::move(text));
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::RegisterWorker(grpc::ServerContext*, const v1::RegisterWorkerRequest* req,
                                               v1::RegisterWorkerResponse* resp) {
  auto r = scheduler_->RegisterWorker(*req);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::LeaseJob(grpc::ServerContext* ctx, const v1::LeaseJobRequest* req,
                                         v1::LeaseJobResponse* resp) {
  v1::LeaseJobRequest bounded = *req;
  // Never wait past the client's deadline (minus a margin to answer in time).
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        ctx->deadline() - std::chrono::system_clock::now())
                        .count() - 200;
  bounded.set_wait_ms(std::clamp<int64_t>(std::min<int64_t>(req->wait_ms(), left), 0, 60000));
  auto r = scheduler_->LeaseJob(bounded);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                                          v1::HeartbeatResponse* resp) {
  auto r = scheduler_->Heartbeat(*req);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::CompleteJob(grpc::ServerContext*, const v1::CompleteJobRequest* req,
                                            v1::CompleteJobResponse*) {
  return ToGrpcStatus(scheduler_->CompleteJob(*req));
}

grpc::Status WorkerServiceImpl::FailJob(grpc::ServerContext*, const v1::FailJobRequest* req,
                                        v1::FailJobResponse*) {
  return ToGrpcStatus(scheduler_->FailJob(*req));
}

}  // namespace qaas::server
