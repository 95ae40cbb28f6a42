// qaas-server as a library: the gRPC server (JobService, WorkerService,
// grpc.health.v1, reflection), the Prometheus /metrics endpoint, the SQLite job
// store (SQLite or PostgreSQL) and the lease reaper, started together and shut down gracefully.
#ifndef QAAS_SERVER_SERVER_H_
#define QAAS_SERVER_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/auth.h"
#include "server/grpc_security.h"
#include "server/grpc_services.h"
#include "server/metrics_http.h"
#include "server/scheduler.h"

namespace qaas::server {

struct ServerOptions {
  std::string listen_address = "127.0.0.1:50051";  // port 0 picks a free port
  std::string metrics_address = "127.0.0.1:9464";  // "" = no /metrics endpoint
  std::string db_path;                             // SQLite file
  // A postgres:// or postgresql:// uri (libpq's syntax): the PostgreSQL job
  // store, shared by every scheduler replica, instead of db_path.
  std::string database_uri;
  int database_connections = 8;
  // Bearer tokens file or directory (server/auth.h); "" = authentication
  // off. Re-read every auth_reload_ms.
  std::string tokens_path;
  int64_t auth_reload_ms = 10000;
  ServerTlsOptions tls;
  SchedulerOptions scheduler;
  int64_t reaper_interval_ms = 1000;
};

class Server {
 public:
  // Opens the store, binds both ports and starts serving. Unavailable when a
  // port cannot be bound; the store's errors as they are.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);
  ~Server();  // Shutdown()

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  Scheduler& scheduler() { return *scheduler_; }
  prometheus::Registry& registry() { return *registry_; }
  // A channel to this server that bypasses the network (the embedded
  // worker's), carrying a worker credential known only to this process.
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // Stops accepting calls, wakes long polls and watches, waits up to
  // `grace_ms` for in-flight calls, stops the reaper. Idempotent.
  void Shutdown(int64_t grace_ms = 5000);
  // Blocks until Shutdown() ran.
  void Wait();

 private:
  Server() = default;
  ServerOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<MetricsHttpServer> metrics_http_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<TokenAuthenticator> tokens_;
  AuthConfig auth_;
  std::unique_ptr<JobServiceImpl> job_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::thread reaper_;
  std::atomic<bool> stopped_{false};
  int port_ = 0;
  int metrics_port_ = 0;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_SERVER_H_
