// JobStore on SQLite: WAL journal, synchronous=FULL (a commit is on disk before
// a submit is acknowledged), writes in group commits on one connection,
// reads on a second.
#ifndef QAAS_SERVER_SQLITE_JOB_STORE_H_
#define QAAS_SERVER_SQLITE_JOB_STORE_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "server/job_store.h"

struct sqlite3;
struct sqlite3_stmt;

namespace qaas::server {

// Prepared statements by SQL text (sqlite_job_store.cc: Stmt).
struct CachedStatement {
  sqlite3_stmt* stmt = nullptr;
  bool in_use = false;
};
using StatementCache = std::unordered_map<std::string, CachedStatement>;

class SqliteJobStore : public JobStore {
 public:
  // Opens or creates the database file and its schema.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path);
  ~SqliteJobStore() override;

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
  explicit SqliteJobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const char* sql);
  // On either connection, its mutex held.
  static absl::StatusOr<JobRow> GetOn(sqlite3* db, StatementCache* statements, const std::string& id);
  absl::Status WriteLocked(const JobRow& row);
  absl::StatusOr<std::optional<JobRow>> ClaimLocked(const Chooser& choose, const std::function<void(JobRow&)>& mutate);

  // Group commit: a write runs as a savepoint of a transaction it shares
  // with the writes that queued while the previous transaction committed;
  // one COMMIT (one fsync under synchronous=FULL) makes them all durable, and
  // each caller returns after it, so an answered write is on disk. A write
  // that fails rolls back to its savepoint alone; a failed COMMIT fails all.
  absl::Status Write(const std::function<absl::Status()>& op);
  struct PendingWrite {
    const std::function<absl::Status()>* op;
    absl::Status result;
    bool done = false;
  };
  void RunGroup(const std::vector<PendingWrite*>& group);

  std::mutex mu_;  // the writing connection and its statements
  sqlite3* db_;
  StatementCache statements_;
  // Reads (Get, List, counts, expired leases) go through a second
  // connection: under WAL they see the last commit and need not wait for a
  // group's COMMIT (its fsync) on the writing one.
  std::mutex reader_mu_;
  sqlite3* reader_ = nullptr;
  StatementCache reader_statements_;
  std::mutex group_mu_;
  std::condition_variable group_cv_;
  std::vector<PendingWrite*> queued_;  // guarded by group_mu_
  bool committing_ = false;            // guarded by group_mu_
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_SQLITE_JOB_STORE_H_
