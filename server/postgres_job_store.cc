#include "server/postgres_job_store.h"

#include <libpq-fe.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::server {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  seq BIGSERIAL PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  tenant TEXT NOT NULL,
  idempotency_key TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  lease_id TEXT NOT NULL DEFAULT '',
  lease_expire_ms BIGINT NOT NULL DEFAULT 0,
  job BYTEA NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(tenant, idempotency_key) WHERE idempotency_key <> '';
-- jobs_claim serves every lookup by state (jobs_queue, by state and priority, did before it).
DROP INDEX IF EXISTS jobs_queue;
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(tenant, seq);
CREATE INDEX IF NOT EXISTS jobs_claim ON jobs(state, tenant, priority DESC, seq);
)sql";

// Serializes schema creation across replicas starting together.
constexpr const char* kSchemaLock = "SELECT pg_advisory_xact_lock(7461626173)";  // "qaas"

struct Param {
  std::string value;
  bool binary = false;
};
Param Text(const std::string& v) { return {v, false}; }
Param Int(int64_t v) { return {std::to_string(v), false}; }
Param Bytes(const std::string& v) { return {v, true}; }

class Result {
 public:
  explicit Result(PGresult* r) : r_(r) {}
  Result(Result&& o) noexcept : r_(o.r_) { o.r_ = nullptr; }
  Result& operator=(Result&& o) noexcept {
    std::swap(r_, o.r_);
    return *this;
  }
  Result(const Result&) = delete;
  ~Result() { PQclear(r_); }
  PGresult* get() const { return r_; }
  int rows() const { return PQntuples(r_); }
  std::string Str(int row, int col) const {
    return std::string(PQgetvalue(r_, row, col), PQgetlength(r_, row, col));
  }
  int64_t Int(int row, int col) const {
    int64_t v = 0;
    (void)absl::SimpleAtoi(Str(row, col), &v);
    return v;
  }
  // A BYTEA column in text format.
  std::string Bytea(int row, int col) const {
    size_t n = 0;
    unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(PQgetvalue(r_, row, col)), &n);
    std::string out(reinterpret_cast<char*>(raw), n);
    PQfreemem(raw);
    return out;
  }

 private:
  PGresult* r_;
};

absl::Status PgError(PGconn* c, const PGresult* r, const std::string& what) {
  const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
  std::string msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  msg = absl::StrCat("job store: ", what, ": ", msg);
  if (PQstatus(c) != CONNECTION_OK) return absl::UnavailableError(absl::StrCat(msg, " (connection lost)"));
  const std::string code = state ? state : "";
  if (code == "53100") return absl::ResourceExhaustedError(msg);               // disk_full
  if (code == "40001" || code == "40P01") return absl::AbortedError(msg);      // serialization, deadlock
  if (code.rfind("08", 0) == 0 || code.rfind("57P", 0) == 0) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

// The statements each connection has prepared, by SQL text (the store's
// statements are fixed strings): prepared on a connection's first use of
// one, so PostgreSQL parses and plans it once, not per call. A connection
// that is reset loses them (ForgetPrepared).
class PreparedStatements {
 public:
  // The name `sql` is prepared under on `c`, preparing it now if need be;
  // empty when it cannot be (the caller sends it unprepared).
  std::string NameFor(PGconn* c, const char* sql, int params) {
    std::string name;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& names = by_connection_[c];
      auto it = names.find(sql);
      if (it != names.end()) return it->second;
      name = absl::StrCat("qaas_", ++next_);
    }
    Result r(PQprepare(c, name.c_str(), sql, params, nullptr));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) return "";
    std::lock_guard<std::mutex> lock(mu_);
    by_connection_[c][sql] = name;
    return name;
  }
  void ForgetPrepared(PGconn* c) {
    std::lock_guard<std::mutex> lock(mu_);
    by_connection_.erase(c);
  }

 private:
  std::mutex mu_;
  std::map<PGconn*, std::unordered_map<std::string, std::string>> by_connection_;
  uint64_t next_ = 0;
};

PreparedStatements& Prepared() {
  static PreparedStatements* p = new PreparedStatements();
  return *p;
}

absl::StatusOr<Result> Exec(PGconn* c, const std::string& what, const char* sql, const std::vector<Param>& params = {}) {
  std::vector<const char*> values;
  std::vector<int> lengths, formats;
  for (const auto& p : params) {
    values.push_back(p.value.data());
    lengths.push_back(static_cast<int>(p.value.size()));
    formats.push_back(p.binary ? 1 : 0);
  }
  const int n = static_cast<int>(params.size());
  const std::string name = Prepared().NameFor(c, sql, n);
  Result r(name.empty() ? PQexecParams(c, sql, n, nullptr, values.data(), lengths.data(), formats.data(), 0)
                        : PQexecPrepared(c, name.c_str(), n, values.data(), lengths.data(), formats.data(), 0));
  const ExecStatusType st = PQresultStatus(r.get());
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(c, r.get(), what);
  return r;
}

struct Statement {
  const char* sql;
  std::vector<Param> params;
};

// Runs `statements` in one round trip (libpq's pipeline mode: all sent, then
// all answered) and returns their results in order. On a loaded scheduler a
// round trip is two wake-ups queued behind everything else on the cores, so
// a claim that takes two instead of five answers sooner. The first statement
// that fails is the error, named `what`; PostgreSQL skips those after it.
absl::StatusOr<std::vector<Result>> ExecPipelined(PGconn* c, const std::string& what,
                                                  const std::vector<Statement>& statements) {
  std::vector<std::string> names;  // prepared outside the pipeline (PQprepare waits for its answer)
  for (const Statement& s : statements) names.push_back(Prepared().NameFor(c, s.sql, static_cast<int>(s.params.size())));
  if (PQenterPipelineMode(c) != 1) return PgError(c, nullptr, what);
  bool sent = true;
  for (size_t i = 0; i < statements.size() && sent; ++i) {
    std::vector<const char*> values;
    std::vector<int> lengths, formats;
    for (const auto& p : statements[i].params) {
      values.push_back(p.value.data());
      lengths.push_back(static_cast<int>(p.value.size()));
      formats.push_back(p.binary ? 1 : 0);
    }
    const int n = static_cast<int>(values.size());
    sent = (names[i].empty() ? PQsendQueryParams(c, statements[i].sql, n, nullptr, values.data(), lengths.data(),
                                                 formats.data(), 0)
                             : PQsendQueryPrepared(c, names[i].c_str(), n, values.data(), lengths.data(),
                                                   formats.data(), 0)) == 1;
  }
  sent = PQpipelineSync(c) == 1 && sent;
  absl::Status status = sent ? absl::OkStatus() : PgError(c, nullptr, what);
  std::vector<Result> results;
  // Each statement's result, then the NULL that ends it; then the sync.
  // What a failed send left unsent is never answered: read only to the sync.
  for (bool ended = false; PQstatus(c) == CONNECTION_OK;) {
    Result r(PQgetResult(c));
    if (r.get() == nullptr) {  // the end of one statement's results; twice: nothing more will come
      if (ended) break;
      ended = true;
      continue;
    }
    ended = false;
    const ExecStatusType st = PQresultStatus(r.get());
    if (st == PGRES_PIPELINE_SYNC) break;
    if (status.ok() && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) status = PgError(c, r.get(), what);
    results.push_back(std::move(r));
  }
  if (PQexitPipelineMode(c) != 1) {
    // Answers still pending: the connection cannot serve another call as it
    // is. A fresh one (the statements it prepared are gone with it).
    if (status.ok()) status = PgError(c, nullptr, what);
    Prepared().ForgetPrepared(c);
    PQreset(c);
  }
  if (status.ok() && (PQstatus(c) != CONNECTION_OK || results.size() != statements.size())) {
    status = PgError(c, nullptr, what);
  }
  if (!status.ok()) return status;
  return results;
}

// BEGIN ... COMMIT; rolls back unless committed.
class Tx {
 public:
  explicit Tx(PGconn* c) : c_(c) {}
  ~Tx() {
    if (open_) PQclear(PQexec(c_, "ROLLBACK"));
  }
  absl::Status Begin() {
    auto r = Exec(c_, "begin", "BEGIN");
    open_ = r.ok();
    return r.status();
  }
  // BEGIN and then `first`, in one round trip: their results after BEGIN's.
  absl::StatusOr<std::vector<Result>> BeginWith(const std::string& what, std::vector<Statement> first) {
    first.insert(first.begin(), Statement{"BEGIN", {}});
    open_ = true;  // a ROLLBACK is harmless if BEGIN did not run
    QAAS_ASSIGN_OR_RETURN(auto results, ExecPipelined(c_, what, first));
    results.erase(results.begin());
    return results;
  }
  absl::Status Commit() {
    auto r = Exec(c_, "commit", "COMMIT");
    open_ = false;
    return r.status();
  }
  // `last` and then COMMIT, in one round trip.
  absl::Status CommitWith(const std::string& what, std::vector<Statement> last) {
    last.push_back(Statement{"COMMIT", {}});
    auto r = ExecPipelined(c_, what, last);
    open_ = !r.ok();  // a failed statement left the transaction open (aborted): roll it back
    return r.status();
  }

 private:
  PGconn* c_;
  bool open_ = false;
};

constexpr const char* kRowColumns = "job, lease_id, lease_expire_ms";

absl::StatusOr<JobRow> RowFrom(const Result& r, int row, int first_col) {
  JobRow out;
  if (!out.job.ParseFromString(r.Bytea(row, first_col))) {
    return absl::DataLossError("job store: a stored job does not parse");
  }
  out.lease_id = r.Str(row, first_col + 1);
  out.lease_expire_ms = r.Int(row, first_col + 2);
  return out;
}

// The UPDATE that stores `row` (Tx::CommitWith sends it with the COMMIT).
Statement Write(const JobRow& row) {
  return {"UPDATE jobs SET state = $1, priority = $2, lease_id = $3, lease_expire_ms = $4, job = $5 WHERE id = $6",
          {Int(row.job.state()), Int(row.job.spec().priority()), Text(row.lease_id), Int(row.lease_expire_ms),
           Bytes(row.job.SerializeAsString()), Text(row.job.id())}};
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostgresJobStore>> PostgresJobStore::Open(const std::string& conninfo,
                                                                         int connections) {
  std::unique_ptr<PostgresJobStore> s(new PostgresJobStore());
  s->conninfo_ = conninfo;
  for (int i = 0; i < std::max(1, connections); ++i) {
    PGconn* c = PQconnectdb(conninfo.c_str());
    if (PQstatus(c) != CONNECTION_OK) {
      std::string msg = PQerrorMessage(c);
      while (!msg.empty() && msg.back() == '\n') msg.pop_back();
      PQfinish(c);
      return absl::UnavailableError(absl::StrCat("job store: cannot connect to PostgreSQL: ", msg));
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    s->all_.push_back(c);
    s->free_.push_back(c);
  }
  PGconn* c = s->all_.front();
  Tx tx(c);
  QAAS_RETURN_IF_ERROR(tx.Begin());
  if (auto r = Exec(c, "schema lock", kSchemaLock); !r.ok()) return r.status();
  Result schema(PQexec(c, kSchema));
  if (PQresultStatus(schema.get()) != PGRES_COMMAND_OK) return PgError(c, schema.get(), "schema");
  QAAS_RETURN_IF_ERROR(tx.Commit());
  return s;
}

PostgresJobStore::~PostgresJobStore() {
  for (PGconn* c : all_) {
    Prepared().ForgetPrepared(c);  // a later connection may get the same address
    PQfinish(c);
  }
}

PGconn* PostgresJobStore::Acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  free_cv_.wait(lock, [&] { return !free_.empty(); });
  PGconn* c = free_.back();
  free_.pop_back();
  return c;
}

void PostgresJobStore::Return(PGconn* c) {
  // A connection that broke is reset now, so the next call finds it working
  // (or fails fast with the reason).
  if (PQstatus(c) != CONNECTION_OK) {
    Prepared().ForgetPrepared(c);
    PQreset(c);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(c);
  }
  free_cv_.notify_one();
}

template <typename T, typename F>
absl::StatusOr<T> PostgresJobStore::WithConnection(F fn) {
  PGconn* c = Acquire();
  absl::StatusOr<T> r = fn(c);
  Return(c);
  return r;
}

absl::StatusOr<v1::Job> PostgresJobStore::Insert(const v1::Job& job, bool* created) {
  return WithConnection<v1::Job>([&](PGconn* c) -> absl::StatusOr<v1::Job> {
    const std::string& key = job.spec().idempotency_key();
    // ON CONFLICT on the idempotency index: a concurrent submit with the same
    // key (another replica) waits for ours and then returns nothing.
    QAAS_ASSIGN_OR_RETURN(
        auto ins,
        Exec(c, "insert",
             "INSERT INTO jobs (id, tenant, idempotency_key, state, priority, job) VALUES ($1, $2, $3, $4, $5, $6) "
             "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key <> '' DO NOTHING RETURNING seq",
             {Text(job.id()), Text(job.tenant()), Text(key), Int(job.state()), Int(job.spec().priority()),
              Bytes(job.SerializeAsString())}));
    if (ins.rows() == 1) {
      *created = true;
      return job;
    }
    QAAS_ASSIGN_OR_RETURN(
        auto existing,
        Exec(c, "insert", "SELECT job, lease_id, lease_expire_ms FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
             {Text(job.tenant()), Text(key)}));
    if (existing.rows() != 1) return absl::AbortedError("job store: insert: the conflicting job vanished; retry");
    QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(existing, 0, 0));
    *created = false;
    return row.job;
  });
}

absl::StatusOr<JobRow> PostgresJobStore::Get(const std::string& id) {
  return WithConnection<JobRow>([&](PGconn* c) -> absl::StatusOr<JobRow> {
    QAAS_ASSIGN_OR_RETURN(auto r,
                          Exec(c, "get", "SELECT job, lease_id, lease_expire_ms FROM jobs WHERE id = $1", {Text(id)}));
    if (r.rows() == 0) return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
    return RowFrom(r, 0, 0);
  });
}

absl::StatusOr<ListPage> PostgresJobStore::List(const ListQuery& q) {
  int64_t before = INT64_MAX;
  if (!q.page_token.empty() && (!absl::SimpleAtoi(q.page_token, &before) || before <= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("page_token '", q.page_token, "' is not valid"));
  }
  return WithConnection<ListPage>([&](PGconn* c) -> absl::StatusOr<ListPage> {
    std::string sql = "SELECT seq, job, lease_id, lease_expire_ms FROM jobs WHERE seq < $1";
    std::vector<Param> params = {Int(before)};
    if (!q.tenant.empty()) {
      params.push_back(Text(q.tenant));
      absl::StrAppend(&sql, " AND tenant = $", params.size());
    }
    if (!q.states.empty()) {
      sql += " AND state IN (";
      for (size_t i = 0; i < q.states.size(); ++i) {
        params.push_back(Int(q.states[i]));
        absl::StrAppend(&sql, i ? ",$" : "$", params.size());
      }
      sql += ")";
    }
    const size_t limit = static_cast<size_t>(std::clamp(q.page_size, 1, 500));
    ListPage page;
    int64_t last_seq = 0;
    // Label filters run here, so read in chunks until the page is full.
    for (int64_t cursor = before;;) {
      params[0] = Int(cursor);
      QAAS_ASSIGN_OR_RETURN(auto r, Exec(c, "list", (sql + " ORDER BY seq DESC LIMIT 500").c_str(), params));
      for (int i = 0; i < r.rows(); ++i) {
        const int64_t seq = r.Int(i, 0);
        cursor = seq;
        QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(r, i, 1));
        if (!HasLabels(row.job, q.labels)) continue;
        if (page.jobs.size() == limit) {
          page.next_page_token = std::to_string(last_seq);
          return page;
        }
        page.jobs.push_back(std::move(row.job));
        last_seq = seq;
      }
      if (r.rows() < 500) return page;
    }
  });
}

absl::StatusOr<JobRow> PostgresJobStore::Update(const std::string& id,
                                                const std::function<absl::Status(JobRow&)>& mutate) {
  return WithConnection<JobRow>([&](PGconn* c) -> absl::StatusOr<JobRow> {
    // Two round trips: BEGIN with the locking read, the write with COMMIT.
    Tx tx(c);
    QAAS_ASSIGN_OR_RETURN(
        auto r, tx.BeginWith("update", {{"SELECT job, lease_id, lease_expire_ms FROM jobs WHERE id = $1 FOR UPDATE",
                                         {Text(id)}}}));
    if (r[0].rows() == 0) return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
    QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(r[0], 0, 0));
    QAAS_RETURN_IF_ERROR(mutate(row));
    QAAS_RETURN_IF_ERROR(tx.CommitWith("update", {Write(row)}));
    return row;
  });
}

absl::StatusOr<std::optional<JobRow>> PostgresJobStore::ClaimNext(const Chooser& choose,
                                                                  const std::function<void(JobRow&)>& mutate) {
  return WithConnection<std::optional<JobRow>>([&](PGconn* c) -> absl::StatusOr<std::optional<JobRow>> {
    // Each tenant's first `window` rows that no other claim holds, through
    // jobs_claim, locked. The skip is inside each tenant's window: concurrent
    // claims (other connections, other replicas) lock disjoint windows and go
    // on at once, where one window locked whole would leave every other claim
    // of that moment with nothing. Tenants are found by a skip-scan (one index
    // probe per tenant, not a read of the queue). Locking a row writes it, so
    // the first look locks few.
    constexpr const char* kClaim =
        "WITH RECURSIVE t(tenant) AS ("
        "(SELECT tenant FROM jobs WHERE state = $1 ORDER BY tenant LIMIT 1) UNION ALL "
        "SELECT (SELECT tenant FROM jobs WHERE state = $1 AND tenant > t.tenant ORDER BY tenant LIMIT 1) "
        "FROM t WHERE t.tenant IS NOT NULL) "
        "SELECT w.job, w.lease_id, w.lease_expire_ms FROM t CROSS JOIN LATERAL ("
        "SELECT job, lease_id, lease_expire_ms, priority, seq FROM jobs "
        "WHERE state = $1 AND tenant = t.tenant ORDER BY priority DESC, seq LIMIT $2 "
        "FOR UPDATE SKIP LOCKED) AS w WHERE t.tenant IS NOT NULL ORDER BY w.priority DESC, w.seq ASC";
    // Two round trips for most claims: BEGIN, the first look and the running
    // counts the chooser weighs tenants by; then the lease's write and COMMIT.
    Tx tx(c);
    QAAS_ASSIGN_OR_RETURN(
        std::vector<Result> looks,
        tx.BeginWith("claim", {{kClaim, {Int(v1::JOB_STATE_QUEUED), Int(kClaimProbe)}},
                               {"SELECT tenant, COUNT(*) FROM jobs WHERE state = $1 GROUP BY tenant",
                                {Int(v1::JOB_STATE_RUNNING)}}}));
    std::map<std::string, int> running;
    for (int i = 0; i < looks[1].rows(); ++i) running[looks[1].Str(i, 0)] = static_cast<int>(looks[1].Int(i, 1));
    looks.pop_back();
    std::optional<JobRow> chosen;
    for (const int window : {kClaimProbe, kClaimWindow}) {
      if (window != kClaimProbe) {
        QAAS_ASSIGN_OR_RETURN(auto wider, Exec(c, "claim", kClaim, {Int(v1::JOB_STATE_QUEUED), Int(window)}));
        looks.push_back(std::move(wider));
      }
      const Result& r = looks.back();
      std::vector<JobRow> rows;
      std::map<std::string, int> per_tenant;
      for (int i = 0; i < r.rows(); ++i) {
        QAAS_ASSIGN_OR_RETURN(auto row, RowFrom(r, i, 0));
        ++per_tenant[row.job.tenant()];
        rows.push_back(std::move(row));
      }
      if (!rows.empty()) {
        std::vector<const v1::Job*> queued;
        for (const auto& row : rows) queued.push_back(&row.job);
        const int pick = choose(queued, running);
        if (pick >= 0 && pick < static_cast<int>(rows.size())) {
          chosen = std::move(rows[pick]);
          mutate(*chosen);
          QAAS_RETURN_IF_ERROR(tx.CommitWith("claim", {Write(*chosen)}));
          return chosen;
        }
      }
      // The wider look only where this one may have missed rows: a tenant
      // filled its window, or other claims hold the rows it would see.
      bool more = rows.empty();
      for (const auto& [tenant, n] : per_tenant) more |= n == window;
      if (!more) break;
    }
    return chosen;
  });
}

absl::StatusOr<std::vector<std::string>> PostgresJobStore::ExpiredLeases(int64_t now_ms) {
  return WithConnection<std::vector<std::string>>([&](PGconn* c) -> absl::StatusOr<std::vector<std::string>> {
    QAAS_ASSIGN_OR_RETURN(auto r,
                          Exec(c, "expired leases", "SELECT id FROM jobs WHERE state = $1 AND lease_expire_ms < $2",
                               {Int(v1::JOB_STATE_RUNNING), Int(now_ms)}));
    std::vector<std::string> ids;
    for (int i = 0; i < r.rows(); ++i) ids.push_back(r.Str(i, 0));
    return ids;
  });
}

absl::StatusOr<StateCounts> PostgresJobStore::CountStates() {
  return WithConnection<StateCounts>([&](PGconn* c) -> absl::StatusOr<StateCounts> {
    QAAS_ASSIGN_OR_RETURN(auto r,
                          Exec(c, "count", "SELECT state, COUNT(*) FROM jobs WHERE state IN ($1, $2) GROUP BY state",
                               {Int(v1::JOB_STATE_QUEUED), Int(v1::JOB_STATE_RUNNING)}));
    StateCounts counts;
    for (int i = 0; i < r.rows(); ++i) {
      if (r.Int(i, 0) == v1::JOB_STATE_QUEUED) counts.queued = r.Int(i, 1);
      if (r.Int(i, 0) == v1::JOB_STATE_RUNNING) counts.running = r.Int(i, 1);
    }
    return counts;
  });
}

}  // namespace qaas::server
