#include "server/sqlite_job_store.h"

#include <sqlite3.h>

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::server {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL,
  idempotency_key TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  lease_id TEXT NOT NULL DEFAULT '',
  lease_expire_ms INTEGER NOT NULL DEFAULT 0,
  job BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(tenant, idempotency_key)
  WHERE idempotency_key <> '';
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, seq);
)sql";

// A prepared statement that finalizes itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  sqlite3_stmt* get() { return s_; }
  void Bind(int i, const std::string& v) { sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  void BindBlob(int i, const std::string& v) { sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  int Step() { return sqlite3_step(s_); }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(s_, col);
    return p ? std::string(static_cast<const char*>(p), sqlite3_column_bytes(s_, col)) : "";
  }
  int64_t Int(int col) { return sqlite3_column_int64(s_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

absl::Status SqlError(sqlite3* db, absl::string_view what) {
  const int code = sqlite3_errcode(db);
  std::string msg = absl::StrCat("job store: ", what, ": ", sqlite3_errmsg(db));
  if (code == SQLITE_FULL) return absl::ResourceExhaustedError(msg);
  if (code == SQLITE_BUSY || code == SQLITE_LOCKED) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

absl::StatusOr<JobRow> RowFrom(Stmt& s, int first_col) {
  JobRow row;
  if (!row.job.ParseFromString(s.Text(first_col))) {
    return absl::DataLossError("job store: a stored job does not parse");
  }
  row.lease_id = s.Text(first_col + 1);
  row.lease_expire_ms = s.Int(first_col + 2);
  return row;
}

// Commits on destruction unless Rollback() or Commit() ran; BEGIN IMMEDIATE
// takes the write lock up front so read-modify-write cannot interleave.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (ok_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool ok() const { return ok_; }
  absl::Status Commit() {
    done_ = true;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      absl::Status st = SqlError(db_, "commit");
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return st;
    }
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("job store: cannot open ", path, ": ", msg));
  }
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db));
  sqlite3_busy_timeout(db, 5000);
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    QAAS_RETURN_IF_ERROR(store->Exec(pragma));
  }
  QAAS_RETURN_IF_ERROR(store->Exec(kSchema));
  return store;
}

SqliteJobStore::~SqliteJobStore() { sqlite3_close(db_); }

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("job store: ", msg));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> SqliteJobStore::Insert(const v1::Job& job, bool* created) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  const std::string& key = job.spec().idempotency_key();
  if (!key.empty()) {
    Stmt s(db_, "SELECT job, lease_id, lease_expire_ms FROM jobs WHERE tenant = ? AND idempotency_key = ?");
    s.Bind(1, job.tenant());
    s.Bind(2, key);
    if (s.Step() == SQLITE_ROW) {
      QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(s, 0));
      *created = false;
      return row.job;
    }
  }
  Stmt s(db_, "INSERT INTO jobs (id, tenant, idempotency_key, state, priority, job) VALUES (?, ?, ?, ?, ?, ?)");
  s.Bind(1, job.id());
  s.Bind(2, job.tenant());
  s.Bind(3, key);
  s.Bind(4, static_cast<int64_t>(job.state()));
  s.Bind(5, static_cast<int64_t>(job.spec().priority()));
  s.BindBlob(6, job.SerializeAsString());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "insert");
  QAAS_RETURN_IF_ERROR(tx.Commit());
  *created = true;
  return job;
}

absl::StatusOr<JobRow> SqliteJobStore::GetLocked(const std::string& id) {
  Stmt s(db_, "SELECT job, lease_id, lease_expire_ms FROM jobs WHERE id = ?");
  s.Bind(1, id);
  int rc = s.Step();
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
  if (rc != SQLITE_ROW) return SqlError(db_, "get");
  return RowFrom(s, 0);
}

absl::StatusOr<JobRow> SqliteJobStore::Get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetLocked(id);
}

absl::Status SqliteJobStore::WriteLocked(const JobRow& row) {
  Stmt s(db_, "UPDATE jobs SET state = ?, priority = ?, lease_id = ?, lease_expire_ms = ?, job = ? WHERE id = ?");
  s.Bind(1, static_cast<int64_t>(row.job.state()));
  s.Bind(2, static_cast<int64_t>(row.job.spec().priority()));
  s.Bind(3, row.lease_id);
  s.Bind(4, row.lease_expire_ms);
  s.BindBlob(5, row.job.SerializeAsString());
  s.Bind(6, row.job.id());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "update");
  return absl::OkStatus();
}

absl::StatusOr<JobRow> SqliteJobStore::Update(const std::string& id,
                                              const std::function<absl::Status(JobRow&)>& mutate) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  QAAS_ASSIGN_OR_RETURN(auto row, GetLocked(id));
  QAAS_RETURN_IF_ERROR(mutate(row));
  QAAS_RETURN_IF_ERROR(WriteLocked(row));
  QAAS_RETURN_IF_ERROR(tx.Commit());
  return row;
}

absl::StatusOr<std::optional<JobRow>> SqliteJobStore::ClaimNext(const Chooser& choose,
                                                                 const std::function<void(JobRow&)>& mutate) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);  // BEGIN IMMEDIATE: the only writer until it ends
  if (!tx.ok()) return SqlError(db_, "begin");
  std::vector<JobRow> rows;
  {
    Stmt s(db_,
           "SELECT job, lease_id, lease_expire_ms FROM (SELECT job, lease_id, lease_expire_ms, priority, seq, "
           "ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY priority DESC, seq ASC) AS rank FROM jobs WHERE state = ?) "
           "WHERE rank <= ? ORDER BY priority DESC, seq ASC");
    s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED));
    s.Bind(2, static_cast<int64_t>(kClaimWindow));
    for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) {
      QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(s, 0));
      rows.push_back(std::move(row));
    }
  }
  std::map<std::string, int> running;
  {
    Stmt s(db_, "SELECT tenant, COUNT(*) FROM jobs WHERE state = ? GROUP BY tenant");
    s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_RUNNING));
    for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) running[s.Text(0)] = static_cast<int>(s.Int(1));
  }
  std::vector<const v1::Job*> queued;
  for (const auto& r : rows) queued.push_back(&r.job);
  const int pick = choose(queued, running);
  std::optional<JobRow> chosen;
  if (pick < 0 || pick >= static_cast<int>(rows.size())) return chosen;
  chosen = std::move(rows[pick]);
  mutate(*chosen);
  QAAS_RETURN_IF_ERROR(WriteLocked(*chosen));
  QAAS_RETURN_IF_ERROR(tx.Commit());
  return chosen;
}

absl::StatusOr<ListPage> SqliteJobStore::List(const ListQuery& q) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t before = INT64_MAX;
  if (!q.page_token.empty() && (!absl::SimpleAtoi(q.page_token, &before) || before <= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("page_token '", q.page_token, "' is not valid"));
  }
  std::string sql = "SELECT seq, job, lease_id, lease_expire_ms FROM jobs WHERE seq < ?";
  if (!q.tenant.empty()) sql += " AND tenant = ?";
  if (!q.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < q.states.size(); ++i) sql += i ? ",?" : "?";
    sql += ")";
  }
  sql += " ORDER BY seq DESC";
  Stmt s(db_, sql.c_str());
  int arg = 1;
  s.Bind(arg++, before);
  if (!q.tenant.empty()) s.Bind(arg++, q.tenant);
  for (auto st : q.states) s.Bind(arg++, static_cast<int64_t>(st));
  ListPage page;
  const size_t limit = static_cast<size_t>(std::clamp(q.page_size, 1, 500));
  int64_t last_seq = 0;
  for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) {
    const int64_t seq = s.Int(0);
    QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(s, 1));
    if (!HasLabels(row.job, q.labels)) continue;
    if (page.jobs.size() == limit) {
      page.next_page_token = std::to_string(last_seq);
      break;
    }
    page.jobs.push_back(std::move(row.job));
    last_seq = seq;
  }
  return page;
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::ExpiredLeases(int64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT id FROM jobs WHERE state = ? AND lease_expire_ms < ?");
  s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_RUNNING));
  s.Bind(2, now_ms);
  std::vector<std::string> ids;
  for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) ids.push_back(s.Text(0));
  return ids;
}

absl::StatusOr<StateCounts> SqliteJobStore::CountStates() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt s(db_, "SELECT state, COUNT(*) FROM jobs WHERE state IN (?, ?) GROUP BY state");
  s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED));
  s.Bind(2, static_cast<int64_t>(v1::JOB_STATE_RUNNING));
  StateCounts c;
  for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) {
    if (s.Int(0) == v1::JOB_STATE_QUEUED) c.queued = s.Int(1);
    if (s.Int(0) == v1::JOB_STATE_RUNNING) c.running = s.Int(1);
  }
  return c;
}

}  // namespace qaas::server
