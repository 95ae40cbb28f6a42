// A throwaway PostgreSQL server on 127.0.0.1 for tests and benchmarks:
// initdb into a temporary directory, pg_ctl start on a free port, stop and
// remove on destruction. As root it runs the server as `nobody` (PostgreSQL
// refuses to run as root).
#ifndef QAAS_TESTS_PG_SERVER_H_
#define QAAS_TESTS_PG_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace qaas::testing {

class PgServer {
 public:
  // NotFound when no PostgreSQL server binaries are installed (the caller
  // skips, saying so); Internal with the server's log when it does not start.
  static absl::StatusOr<std::unique_ptr<PgServer>> Start();
  ~PgServer();

  // The postgresql:// uri of a new database `name`.
  absl::StatusOr<std::string> NewDatabase(const std::string& name);
  int port() const { return port_; }
  // Stops the server (pg_ctl stop -m immediate when `crash`), and starts it
  // again on the same port and data.
  absl::Status Stop(bool crash = false);
  absl::Status Restart();

 private:
  PgServer() = default;
  absl::Status Run(const std::string& command) const;  // as the server's user

  std::string bindir_;
  std::string dir_;
  std::string as_user_;  // "" or a setpriv prefix
  int port_ = 0;
  bool running_ = false;
};

}  // namespace qaas::testing

#endif  // QAAS_TESTS_PG_SERVER_H_
