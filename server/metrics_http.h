// A minimal HTTP/1.1 endpoint for Prometheus scrapes: GET /metrics answers
// the registry in the text exposition format (prometheus-cpp's serializer),
// GET /healthz answers "ok". One accept thread, one request per connection.
//
// Why not prometheus-cpp's Exposer: its civetweb server fails to start in any
// process that also links Debian's libtorch (mg_start2 returns null after
// binding), and qaas-server --embedded must link libtorch. See docs/decisions.md.
#ifndef QAAS_SERVER_METRICS_HTTP_H_
#define QAAS_SERVER_METRICS_HTTP_H_

#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace qaas::server {

class MetricsHttpServer {
 public:
  // Binds "host:port" (port 0 = any free port) and starts serving.
  // Unavailable when the address cannot be bound. `registry` must outlive it.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                  prometheus::Registry* registry);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  void Serve();
  void Handle(int fd);

  prometheus::Registry* registry_ = nullptr;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_METRICS_HTTP_H_
