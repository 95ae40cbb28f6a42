// JobStore on PostgreSQL (libpq), for several scheduler replicas sharing one
// database. Claims lock the queued window with FOR UPDATE SKIP LOCKED, so
// replicas claiming at once take different jobs without waiting on each
// other; read-modify-write takes the row lock (SELECT ... FOR UPDATE).
// A small pool of connections; a broken connection is reset and the call
// retried once. Every write commits before the method returns
// (synchronous_commit as the server is configured).
#ifndef QAAS_SERVER_POSTGRES_JOB_STORE_H_
#define QAAS_SERVER_POSTGRES_JOB_STORE_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "server/job_store.h"

typedef struct pg_conn PGconn;

namespace qaas::server {

class PostgresJobStore : public JobStore {
 public:
  // `conninfo`: a libpq connection string or postgres:// uri. Creates the
  // schema if missing (under an advisory lock: replicas may start together).
  // Unavailable naming the server when it cannot connect.
  static absl::StatusOr<std::unique_ptr<PostgresJobStore>> Open(const std::string& conninfo, int connections = 4);
  ~PostgresJobStore() override;

  absl::StatusOr<v1::Job> Insert(const v1::Job& job, bool* created) override;
  absl::StatusOr<JobRow> Get(const std::string& id) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<JobRow> Update(const std::string& id,
                                const std::function<absl::Status(JobRow&)>& mutate) override;
  absl::StatusOr<std::optional<JobRow>> ClaimNext(const Chooser& choose,
                                                  const std::function<void(JobRow&)>& mutate) override;
  absl::StatusOr<std::vector<std::string>> ExpiredLeases(int64_t now_ms) override;
  absl::StatusOr<StateCounts> CountStates() override;

 private:
  class Lease;  // a pooled connection, returned on destruction
  PostgresJobStore() = default;
  PGconn* Acquire();
  void Return(PGconn* c);
  // Runs `fn` on a pooled connection; when the connection turns out broken,
  // resets it and runs `fn` once more.
  template <typename T, typename F>
  absl::StatusOr<T> WithConnection(F fn);

  std::string conninfo_;
  std::mutex mu_;
  std::condition_variable free_cv_;
  std::vector<PGconn*> free_;
  std::vector<PGconn*> all_;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_POSTGRES_JOB_STORE_H_
