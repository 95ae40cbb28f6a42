#include "server/sqlite_job_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <exception>
#include <map>
#include <string>
#include <vector>

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
-- jobs_claim serves every lookup by state (jobs_queue, by state and priority, did before it).
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(state, tenant, priority DESC, seq);
-- Jobs per state, kept by triggers in the writes' own transactions, so the
-- gauges read two rows instead of counting the queue on every change. Rebuilt
-- from jobs whenever the store opens.
CREATE TABLE IF NOT EXISTS state_counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN
  INSERT INTO state_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN
  UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
  INSERT INTO state_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN
  UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
END;
BEGIN IMMEDIATE;
DELETE FROM state_counts;
INSERT INTO state_counts (state, n) SELECT state, COUNT(*) FROM jobs GROUP BY state;
COMMIT;
)sql";

// A prepared statement, from the store's cache: prepared once per SQL text
// and reset for the next use when this goes. A statement still in use (the
// same text in a nested scope) gets a fresh one, finalized when this goes.
class Stmt {
 public:
  Stmt(sqlite3* db, StatementCache* cache, const std::string& sql) {
    auto it = cache->find(sql);
    if (it == cache->end()) {
      sqlite3_stmt* fresh = nullptr;
      rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &fresh, nullptr);
      if (rc_ != SQLITE_OK) {
        s_ = fresh;  // finalized by the destructor
        return;
      }
      it = cache->emplace(sql, CachedStatement{fresh, false}).first;
    }
    if (it->second.in_use) {
      rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr);
      return;
    }
    cached_ = &it->second;  // unordered_map: stays put as the cache grows
    cached_->in_use = true;
    s_ = cached_->stmt;
  }
  ~Stmt() {
    if (cached_) {
      sqlite3_reset(s_);
      sqlite3_clear_bindings(s_);
      cached_->in_use = false;
    } else {
      sqlite3_finalize(s_);
    }
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
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
  CachedStatement* cached_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
  int rc_ = SQLITE_OK;
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
  if (sqlite3_open_v2(path.c_str(), &store->reader_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    return absl::UnavailableError(absl::StrCat("job store: cannot open ", path, " for reading: ",
                                               store->reader_ ? sqlite3_errmsg(store->reader_) : "out of memory"));
  }
  sqlite3_busy_timeout(store->reader_, 5000);
  return store;
}

SqliteJobStore::~SqliteJobStore() {
  for (auto& [sql, st] : statements_) sqlite3_finalize(st.stmt);
  for (auto& [sql, st] : reader_statements_) sqlite3_finalize(st.stmt);
  sqlite3_close(reader_);  // a no-op on nullptr
  sqlite3_close(db_);
}

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("job store: ", msg));
  }
  return absl::OkStatus();
}

absl::Status SqliteJobStore::Write(const std::function<absl::Status()>& op) {
  PendingWrite me{&op};
  std::unique_lock<std::mutex> lock(group_mu_);
  queued_.push_back(&me);
  while (!me.done) {
    if (committing_) {  // the leader of the group committing now; ours may be the next
      group_cv_.wait(lock);
      continue;
    }
    committing_ = true;
    std::vector<PendingWrite*> group;
    group.swap(queued_);
    lock.unlock();
    RunGroup(group);
    lock.lock();
    for (PendingWrite* p : group) p->done = true;
    committing_ = false;
    group_cv_.notify_all();
  }
  return me.result;
}

void SqliteJobStore::RunGroup(const std::vector<PendingWrite*>& group) {
  std::lock_guard<std::mutex> lock(mu_);
  // Prepared once: a group runs 2 + 2 per write of these.
  auto run = [&](const char* sql) {
    Stmt s(db_, &statements_, sql);
    return s.ok() && s.Step() == SQLITE_DONE;
  };
  // BEGIN IMMEDIATE takes the write lock up front, so read-modify-write
  // cannot interleave with another connection's.
  if (!run("BEGIN IMMEDIATE")) {
    const absl::Status st = SqlError(db_, "begin");
    for (PendingWrite* p : group) p->result = st;
    return;
  }
  for (PendingWrite* p : group) {
    if (!run("SAVEPOINT w")) {
      p->result = SqlError(db_, "savepoint");
      continue;
    }
    try {
      p->result = (*p->op)();
    } catch (const std::exception& e) {  // never past the group: the others' writes, and committing_, go on
      p->result = absl::InternalError(absl::StrCat("job store: a write failed: ", e.what()));
    }
    if (!p->result.ok()) run("ROLLBACK TO w");
    run("RELEASE w");
  }
  if (!run("COMMIT")) {
    const absl::Status st = SqlError(db_, "commit");
    run("ROLLBACK");
    for (PendingWrite* p : group) {
      if (p->result.ok()) p->result = st;
    }
  }
}

absl::StatusOr<v1::Job> SqliteJobStore::Insert(const v1::Job& job, bool* created) {
  v1::Job stored;
  QAAS_RETURN_IF_ERROR(Write([&]() -> absl::Status {
    const std::string& key = job.spec().idempotency_key();
    if (!key.empty()) {
      Stmt s(db_, &statements_, "SELECT job, lease_id, lease_expire_ms FROM jobs WHERE tenant = ? AND idempotency_key = ?");
      s.Bind(1, job.tenant());
      s.Bind(2, key);
      if (s.Step() == SQLITE_ROW) {
        QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(s, 0));
        *created = false;
        stored = std::move(row.job);
        return absl::OkStatus();
      }
    }
    Stmt s(db_, &statements_, "INSERT INTO jobs (id, tenant, idempotency_key, state, priority, job) VALUES (?, ?, ?, ?, ?, ?)");
    s.Bind(1, job.id());
    s.Bind(2, job.tenant());
    s.Bind(3, key);
    s.Bind(4, static_cast<int64_t>(job.state()));
    s.Bind(5, static_cast<int64_t>(job.spec().priority()));
    s.BindBlob(6, job.SerializeAsString());
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "insert");
    *created = true;
    stored = job;
    return absl::OkStatus();
  }));
  return stored;
}

absl::StatusOr<JobRow> SqliteJobStore::GetOn(sqlite3* db, StatementCache* statements, const std::string& id) {
  Stmt s(db, statements, "SELECT job, lease_id, lease_expire_ms FROM jobs WHERE id = ?");
  s.Bind(1, id);
  int rc = s.Step();
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
  if (rc != SQLITE_ROW) return SqlError(db, "get");
  return RowFrom(s, 0);
}

absl::StatusOr<JobRow> SqliteJobStore::Get(const std::string& id) {
  std::lock_guard<std::mutex> lock(reader_mu_);
  return GetOn(reader_, &reader_statements_, id);
}

absl::Status SqliteJobStore::WriteLocked(const JobRow& row) {
  Stmt s(db_, &statements_, "UPDATE jobs SET state = ?, priority = ?, lease_id = ?, lease_expire_ms = ?, job = ? WHERE id = ?");
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
  JobRow row;
  QAAS_RETURN_IF_ERROR(Write([&]() -> absl::Status {
    QAAS_ASSIGN_OR_RETURN(row, GetOn(db_, &statements_, id));
    QAAS_RETURN_IF_ERROR(mutate(row));
    return WriteLocked(row);
  }));
  return row;
}

absl::StatusOr<std::optional<JobRow>> SqliteJobStore::ClaimNext(const Chooser& choose,
                                                                 const std::function<void(JobRow&)>& mutate) {
  std::optional<JobRow> chosen;
  QAAS_RETURN_IF_ERROR(Write([&]() -> absl::Status {
    QAAS_ASSIGN_OR_RETURN(chosen, ClaimLocked(choose, mutate));
    return absl::OkStatus();
  }));
  return chosen;
}

absl::StatusOr<std::optional<JobRow>> SqliteJobStore::ClaimLocked(const Chooser& choose,
                                                                   const std::function<void(JobRow&)>& mutate) {
  // The distinct tenants by skip-scan (one index seek per tenant, not a pass
  // over the queue), then each tenant's first `window` queued jobs by
  // (priority desc, seq) through jobs_claim, in that order across tenants.
  std::vector<std::string> tenants;
  {
    Stmt s(db_, &statements_,
           "WITH RECURSIVE t(tenant) AS (SELECT MIN(tenant) FROM jobs WHERE state = ?1 UNION ALL "
           "SELECT (SELECT MIN(tenant) FROM jobs WHERE state = ?1 AND tenant > t.tenant) FROM t "
           "WHERE t.tenant IS NOT NULL) SELECT tenant FROM t WHERE tenant IS NOT NULL");
    s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED));
    for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) tenants.push_back(s.Text(0));
  }
  std::optional<JobRow> chosen;
  if (tenants.empty()) return chosen;
  std::map<std::string, int> running;
  {
    Stmt s(db_, &statements_, "SELECT tenant, COUNT(*) FROM jobs WHERE state = ? GROUP BY tenant");
    s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_RUNNING));
    for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) running[s.Text(0)] = static_cast<int>(s.Int(1));
  }
  struct Candidate {
    int64_t priority, seq;
    JobRow row;
  };
  for (const int window : {kClaimProbe, kClaimWindow}) {
    std::vector<Candidate> candidates;
    bool more = false;  // a tenant has more queued jobs than the window shows
    for (const std::string& tenant : tenants) {
      Stmt s(db_, &statements_,
             "SELECT job, lease_id, lease_expire_ms, priority, seq FROM jobs WHERE state = ? AND tenant = ? "
             "ORDER BY priority DESC, seq ASC LIMIT ?");
      s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_QUEUED));
      s.Bind(2, tenant);
      s.Bind(3, static_cast<int64_t>(window));
      int n = 0;
      for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step(), ++n) {
        QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(s, 0));
        candidates.push_back({s.Int(3), s.Int(4), std::move(row)});
      }
      more |= n == window;
    }
    std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
      return a.priority != b.priority ? a.priority > b.priority : a.seq < b.seq;
    });
    std::vector<const v1::Job*> queued;
    for (const auto& c : candidates) queued.push_back(&c.row.job);
    const int pick = choose(queued, running);
    if (pick >= 0 && pick < static_cast<int>(candidates.size())) {
      chosen = std::move(candidates[pick].row);
      mutate(*chosen);
      QAAS_RETURN_IF_ERROR(WriteLocked(*chosen));
      return chosen;
    }
    if (!more) break;
  }
  return chosen;
}

absl::StatusOr<ListPage> SqliteJobStore::List(const ListQuery& q) {
  std::lock_guard<std::mutex> lock(reader_mu_);
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
  Stmt s(reader_, &reader_statements_, sql.c_str());
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
  std::lock_guard<std::mutex> lock(reader_mu_);
  Stmt s(reader_, &reader_statements_, "SELECT id FROM jobs WHERE state = ? AND lease_expire_ms < ?");
  s.Bind(1, static_cast<int64_t>(v1::JOB_STATE_RUNNING));
  s.Bind(2, now_ms);
  std::vector<std::string> ids;
  for (int rc = s.Step(); rc == SQLITE_ROW; rc = s.Step()) ids.push_back(s.Text(0));
  return ids;
}

absl::StatusOr<StateCounts> SqliteJobStore::CountStates() {
  std::lock_guard<std::mutex> lock(reader_mu_);
  Stmt s(reader_, &reader_statements_, "SELECT state, n FROM state_counts WHERE state IN (?, ?)");
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
