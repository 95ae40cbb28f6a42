#include "server/grpc_services.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"
#include "storage/location.h"
#include "storage/object_store.h"
#include "storage/sha256.h"

namespace qaas::server {
namespace {

// Every caller's tenant when authentication is off.
constexpr char kDefaultTenant[] = "default";

grpc::Status Invalid(const std::string& msg) { return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg); }

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<Principal> Authorize(const AuthConfig& auth, grpc::ServerContext* ctx, Principal::Kind need) {
  const bool want_worker = need == Principal::Kind::kWorker;
  if (want_worker && auth.worker_certificates) {
    // The handshake verified any certificate the client presented against
    // the worker CA; its identity (subject CN or SAN) names the worker.
    auto auth_ctx = ctx->auth_context();
    if (auth_ctx && auth_ctx->IsPeerAuthenticated()) {
      Principal p{Principal::Kind::kWorker, "certificate"};
      auto cn = auth_ctx->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
      if (!cn.empty()) p.name = std::string(cn.front().data(), cn.front().size());
      return p;
    }
  }
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  const absl::string_view header = it == md.end() ? absl::string_view()
                                                  : absl::string_view(it->second.data(), it->second.size());
  absl::StatusOr<Principal> p;
  if (!auth.internal_worker_token.empty() && !header.empty() &&
      storage::Sha256Hex(std::string(header)) == storage::Sha256Hex("Bearer " + auth.internal_worker_token)) {
    p = Principal{Principal::Kind::kWorker, "embedded"};
  } else if (auth.tokens == nullptr) {
    if (want_worker && auth.worker_certificates) {
      return absl::UnauthenticatedError("WorkerService needs a worker client certificate (mTLS)");
    }
    return Principal{need, want_worker ? "worker" : kDefaultTenant};
  } else {
    p = auth.tokens->Authenticate(header);
  }
  if (!p.ok()) return p.status();
  if (p->kind != need) {
    return absl::PermissionDeniedError(absl::StrCat(
        "credential ", PrincipalString(*p), " may not call ", want_worker ? "WorkerService" : "JobService",
        want_worker ? " (it needs a worker credential)" : " (it needs a tenant token)"));
  }
  return p;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req, v1::Job* resp) {
  auto caller = Authorize(auth_, ctx, Principal::Kind::kTenant);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto job = scheduler_->Submit(caller->name, req->spec());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) {
  auto caller = Authorize(auth_, ctx, Principal::Kind::kTenant);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (req->id().empty()) return Invalid("id: required");
  auto job = scheduler_->Get(caller->name, req->id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                                      v1::ListJobsResponse* resp) {
  auto caller = Authorize(auth_, ctx, Principal::Kind::kTenant);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto page = scheduler_->List(caller->name, *req);
  if (!page.ok()) return ToGrpcStatus(page.status());
  *resp = *std::move(page);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::Job* resp) {
  auto caller = Authorize(auth_, ctx, Principal::Kind::kTenant);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (req->id().empty()) return Invalid("id: required");
  auto job = scheduler_->Cancel(caller->name, req->id(), req->reason());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *resp = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  auto caller = Authorize(auth_, ctx, Principal::Kind::kTenant);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (req->id().empty()) return Invalid("id: required");
  uint64_t version = scheduler_->Version();
  auto job = scheduler_->Get(caller->name, req->id());
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
    job = scheduler_->Get(caller->name, req->id());
    if (!job.ok()) return ToGrpcStatus(job.status());
  }
}

grpc::Status JobServiceImpl::GetReport(grpc::ServerContext* ctx, const v1::GetReportRequest* req,
                                       v1::GetReportResponse* resp) {
  auto caller = Authorize(auth_, ctx, Principal::Kind::kTenant);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (req->id().empty()) return Invalid("id: required");
  auto job = scheduler_->Get(caller->name, req->id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  if (job->state() != v1::JOB_STATE_SUCCEEDED) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("job '", req->id(), "' is ", v1::JobState_Name(job->state()),
                                     "; a report exists once it SUCCEEDED"));
  }
  // Read beneath the server's roots, and only while the object is still the
  // one this job wrote: a later job given `overwrite` on the same output
  // replaces it, and its report is not this job's.
  const v1::JobResult& result = job->result();
  const std::string& uri = result.report_uri();
  auto object = storage::OpenObject(uri, scheduler_->file_roots());
  if (!object.ok()) return ToGrpcStatus(object.status());
  auto text = object->location.store->Read(object->key);
  if (!text.ok()) {
    return ToGrpcStatus(Annotate(text.status(), absl::StrCat("report of job '", req->id(), "' at ", uri)));
  }
  if (!result.report_sha256().empty() && storage::Sha256Hex(*text) != result.report_sha256()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("the report at ", uri, " is no longer job '", req->id(),
                                     "''s: its output was overwritten after the job finished (by a later job given "
                                     "overwrite, or by hand)"));
  }
  resp->set_report_json(*std::move(text));
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                                               v1::RegisterWorkerResponse* resp) {
  if (auto caller = Authorize(auth_, ctx, Principal::Kind::kWorker); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  auto r = scheduler_->RegisterWorker(*req);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::LeaseJob(grpc::ServerContext* ctx, const v1::LeaseJobRequest* req,
                                         v1::LeaseJobResponse* resp) {
  if (auto caller = Authorize(auth_, ctx, Principal::Kind::kWorker); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
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

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                          v1::HeartbeatResponse* resp) {
  if (auto caller = Authorize(auth_, ctx, Principal::Kind::kWorker); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  auto r = scheduler_->Heartbeat(*req);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::CompleteJob(grpc::ServerContext* ctx, const v1::CompleteJobRequest* req,
                                            v1::CompleteJobResponse*) {
  if (auto caller = Authorize(auth_, ctx, Principal::Kind::kWorker); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  return ToGrpcStatus(scheduler_->CompleteJob(*req));
}

grpc::Status WorkerServiceImpl::FailJob(grpc::ServerContext* ctx, const v1::FailJobRequest* req,
                                        v1::FailJobResponse*) {
  if (auto caller = Authorize(auth_, ctx, Principal::Kind::kWorker); !caller.ok()) {
    return ToGrpcStatus(caller.status());
  }
  return ToGrpcStatus(scheduler_->FailJob(*req));
}

}  // namespace qaas::server
