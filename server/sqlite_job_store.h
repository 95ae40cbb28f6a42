// JobStore on SQLite: WAL journal, synchronous=FULL (a commit is on disk before
// a submit is acknowledged), one connection guarded by a mutex.
#ifndef QAAS_SERVER_SQLITE_JOB_STORE_H_
#define QAAS_SERVER_SQLITE_JOB_STORE_H_

#include <memory>
#include <mutex>
#include <string>

#include "server/job_store.h"

struct sqlite3;

namespace qaas::server {

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
  absl::StatusOr<JobRow> GetLocked(const std::string& id);
  absl::Status WriteLocked(const JobRow& row);

  std::mutex mu_;
  sqlite3* db_;
};

}  // namespace qaas::server

#endif  // QAAS_SERVER_SQLITE_JOB_STORE_H_
