#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "quant/util/status_macros.h"
#include "server/postgres_job_store.h"
#include "server/sqlite_job_store.h"

namespace qaas::server {

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  std::unique_ptr<JobStore> store;
  if (absl::StartsWith(options.database_uri, "postgres://") || absl::StartsWith(options.database_uri, "postgresql://")) {
    QAAS_ASSIGN_OR_RETURN(store, PostgresJobStore::Open(options.database_uri, options.database_connections));
  } else if (!options.database_uri.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("database '", options.database_uri,
                                                   "': expected a postgres:// uri (or none, for SQLite)"));
  } else {
    QAAS_ASSIGN_OR_RETURN(store, SqliteJobStore::Open(options.db_path));
  }
  s->registry_ = std::make_shared<prometheus::Registry>();
  s->metrics_ = std::make_unique<Metrics>(*s->registry_);
  if (!options.metrics_address.empty()) {
    QAAS_ASSIGN_OR_RETURN(s->metrics_http_, MetricsHttpServer::Start(options.metrics_address, s->registry_.get()));
    s->metrics_port_ = s->metrics_http_->port();
  }
  if (!options.tokens_path.empty()) {
    QAAS_ASSIGN_OR_RETURN(s->tokens_, TokenAuthenticator::Load(options.tokens_path));
    s->auth_.tokens = s->tokens_.get();
  }
  s->auth_.worker_certificates = !options.tls.worker_ca_file.empty();
  if (s->auth_.tokens || s->auth_.worker_certificates) {
    QAAS_ASSIGN_OR_RETURN(s->auth_.internal_worker_token, NewToken());
  }
  QAAS_ASSIGN_OR_RETURN(auto creds, MakeServerCredentials(options.tls));
  s->scheduler_ = std::make_unique<Scheduler>(std::move(store), options.scheduler, s->metrics_.get());
  s->job_service_ = std::make_unique<JobServiceImpl>(s->scheduler_.get(), s->auth_);
  s->worker_service_ = std::make_unique<WorkerServiceImpl>(s->scheduler_.get(), s->auth_);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, creds, &s->port_);
  builder.RegisterService(s->job_service_.get());
  builder.RegisterService(s->worker_service_.get());
  s->grpc_server_ = builder.BuildAndStart();
  if (!s->grpc_server_ || s->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen_address));
  }
  s->reaper_ = std::thread([srv = s.get()] {
    int64_t since_reload = 0;
    std::string reload_error;
    while (!srv->stopped_) {
      auto expired = srv->scheduler_->ExpireLeases();
      if (!expired.ok()) std::cerr << "qaas-server: lease reaper: " << expired.status() << "\n";
      if (srv->tokens_ && (since_reload += srv->options_.reaper_interval_ms) >= srv->options_.auth_reload_ms) {
        since_reload = 0;
        bool changed = false;
        absl::Status st = srv->tokens_->Reload(&changed);
        // Say it once per distinct problem; the previous tokens stay in force.
        if (!st.ok() && st.ToString() != reload_error) {
          std::cerr << "qaas-server: keeping the previous tokens: " << st << "\n";
        }
        if (changed) std::cerr << "qaas-server: tokens reloaded (" << srv->tokens_->size() << " tokens)\n";
        reload_error = st.ok() ? "" : st.ToString();
      }
      for (int64_t waited = 0; waited < srv->options_.reaper_interval_ms && !srv->stopped_; waited += 20) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  });
  return s;
}

Server::~Server() { Shutdown(); }

std::shared_ptr<grpc::Channel> Server::InProcessChannel() {
  return grpc_server_->experimental().InProcessChannelWithInterceptors(
      grpc::ChannelArguments(), BearerTokenInterceptors(auth_.internal_worker_token));
}

void Server::Shutdown(int64_t grace_ms) {
  if (stopped_.exchange(true)) return;
  if (scheduler_) scheduler_->Shutdown();  // wakes long polls and watches first
  if (grpc_server_) {
    grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
  }
  if (reaper_.joinable()) reaper_.join();
  metrics_http_.reset();
}

void Server::Wait() { grpc_server_->Wait(); }

}  // namespace qaas::server
