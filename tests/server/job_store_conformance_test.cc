// One conformance suite for every JobStore: SQLite (a file) and PostgreSQL
// (a server the suite starts on 127.0.0.1). "Two replicas" are two stores
// opened on the same database.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "quant/util/status_macros.h"
#include "server/postgres_job_store.h"
#include "server/sqlite_job_store.h"
#include "tests/pg_server.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using ::qaas::testing::PgServer;
using ::qaas::testing::ScopedTempDir;

v1::Job MakeJob(const std::string& id, int priority = 0, const std::string& key = "",
                const std::string& tenant = "t") {
  v1::Job j;
  j.set_id(id);
  j.set_tenant(tenant);
  j.set_state(v1::JOB_STATE_QUEUED);
  j.mutable_spec()->set_model("file:///m");
  j.mutable_spec()->set_priority(priority);
  j.mutable_spec()->set_idempotency_key(key);
  return j;
}

// The suite's PostgreSQL server, started on first use and stopped at exit.
PgServer* SharedPg(std::string* why) {
  static absl::StatusOr<std::unique_ptr<PgServer>> pg = PgServer::Start();
  if (!pg.ok()) {
    *why = std::string(pg.status().message());
    return nullptr;
  }
  return pg->get();
}

JobStore::Chooser First() {
  return [](const std::vector<const v1::Job*>& q, const std::map<std::string, int>&) { return q.empty() ? -1 : 0; };
}

void Lease(JobRow& r) {
  r.job.set_state(v1::JOB_STATE_RUNNING);
  r.lease_id = "l";
  r.lease_expire_ms = 100;
}

class JobStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgres") {
      std::string why;
      PgServer* pg = SharedPg(&why);
      if (pg == nullptr) GTEST_SKIP() << "PostgreSQL store not tested: " << why;
      static int databases = 0;
      auto conninfo = pg->NewDatabase("jobs" + std::to_string(++databases));
      ASSERT_TRUE(conninfo.ok()) << conninfo.status();
      conninfo_ = *conninfo;
    }
    auto s = Open();
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = *std::move(s);
  }
  // A store on this test's database: a reopen, or a second replica.
  absl::StatusOr<std::unique_ptr<JobStore>> Open() {
    if (GetParam() == "postgres") {
      QAAS_ASSIGN_OR_RETURN(auto s, PostgresJobStore::Open(conninfo_));
      return std::unique_ptr<JobStore>(std::move(s));
    }
    QAAS_ASSIGN_OR_RETURN(auto s, SqliteJobStore::Open(dir_.path() + "/jobs.db"));
    return std::unique_ptr<JobStore>(std::move(s));
  }

  ScopedTempDir dir_;
  std::string conninfo_;
  std::unique_ptr<JobStore> store_;
};

INSTANTIATE_TEST_SUITE_P(Backends, JobStoreTest, ::testing::Values("sqlite", "postgres"),
                         [](const auto& info) { return info.param; });

TEST_P(JobStoreTest, InsertIsDurableAcrossReopen) {
  bool created = false;
  QAAS_ASSERT_OK(store_->Insert(MakeJob("a"), &created));
  EXPECT_TRUE(created);
  store_.reset();
  auto store = Open();
  QAAS_ASSERT_OK(store);
  auto row = (*store)->Get("a");
  QAAS_ASSERT_OK(row);
  EXPECT_EQ(row->job.spec().model(), "file:///m");
  QAAS_EXPECT_CODE((*store)->Get("missing"), kNotFound);
}

// Many writers at once (the SQLite store commits them in groups, each write
// a savepoint of a shared transaction): every acknowledged write survives a
// reopen, a write that fails (a duplicate id, a missing job) changes nothing
// and fails no other, and the per-state counts follow every transition.
TEST_P(JobStoreTest, ConcurrentWritesAreDurableAndAFailedOneLeavesTheOthers) {
  constexpr int kThreads = 8, kPerThread = 24;
  std::atomic<int> inserted{0}, running{0}, failed_as_expected{0}, unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::string id = "c" + std::to_string(t) + "-" + std::to_string(i);
        bool created = false;
        if (store_->Insert(MakeJob(id), &created).ok() && created) ++inserted;
        else ++unexpected;
        // The same id again: refused by the store, nothing else undone.
        if (store_->Insert(MakeJob(id), &created).ok()) ++unexpected;
        else ++failed_as_expected;
        auto missing = store_->Update("missing-" + id, [](JobRow&) { return absl::OkStatus(); });
        if (absl::IsNotFound(missing.status())) ++failed_as_expected;
        else ++unexpected;
        if (i % 3 == 0) {
          if (store_->Update(id, [](JobRow& r) { Lease(r); return absl::OkStatus(); }).ok()) ++running;
          else ++unexpected;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(inserted.load(), kThreads * kPerThread);
  EXPECT_EQ(failed_as_expected.load(), 2 * kThreads * kPerThread);
  auto counts = store_->CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, inserted.load() - running.load());
  EXPECT_EQ(counts->running, running.load());

  store_.reset();
  auto store = Open();
  QAAS_ASSERT_OK(store);
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      auto row = (*store)->Get("c" + std::to_string(t) + "-" + std::to_string(i));
      QAAS_ASSERT_OK(row);
      EXPECT_EQ(row->job.state(), i % 3 == 0 ? v1::JOB_STATE_RUNNING : v1::JOB_STATE_QUEUED);
    }
  }
  auto reopened = (*store)->CountStates();
  QAAS_ASSERT_OK(reopened);
  EXPECT_EQ(reopened->queued, counts->queued);
  EXPECT_EQ(reopened->running, counts->running);
}

TEST_P(JobStoreTest, IdempotencyKeyReturnsTheFirstJobPerTenant) {
  bool created = false;
  QAAS_ASSERT_OK(store_->Insert(MakeJob("a", 0, "k"), &created));
  auto again = store_->Insert(MakeJob("b", 0, "k"), &created);
  QAAS_ASSERT_OK(again);
  EXPECT_FALSE(created);
  EXPECT_EQ(again->id(), "a");
  // Another tenant with the same key gets its own job.
  auto other = store_->Insert(MakeJob("c", 0, "k", "u"), &created);
  QAAS_ASSERT_OK(other);
  EXPECT_TRUE(created);
  EXPECT_EQ(other->id(), "c");
}

TEST_P(JobStoreTest, ClaimTakesHighestPriorityThenOldest) {
  bool created;
  for (auto [id, prio] : std::vector<std::pair<std::string, int>>{{"low", 0}, {"high1", 5}, {"high2", 5}}) {
    QAAS_ASSERT_OK(store_->Insert(MakeJob(id, prio), &created));
  }
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {
    auto c = store_->ClaimNext(First(), Lease);
    QAAS_ASSERT_OK(c);
    if (c->has_value()) order.push_back((*c)->job.id());
  }
  EXPECT_EQ(order, (std::vector<std::string>{"high1", "high2", "low"}));
  auto expired = store_->ExpiredLeases(101);
  QAAS_ASSERT_OK(expired);
  EXPECT_EQ(expired->size(), 3u);
  auto none = store_->ExpiredLeases(100);
  QAAS_ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

TEST_P(JobStoreTest, ClaimSkipsIneligibleJobs) {
  bool created;
  QAAS_ASSERT_OK(store_->Insert(MakeJob("gpu", 9), &created));
  QAAS_ASSERT_OK(store_->Insert(MakeJob("cpu", 0), &created));
  auto c = store_->ClaimNext([](const std::vector<const v1::Job*>& q, const std::map<std::string, int>&) {
                                 for (size_t i = 0; i < q.size(); ++i) {
                                   if (q[i]->id() == "cpu") return static_cast<int>(i);
                                 }
                                 return -1;
                               },
                               [](JobRow& r) { r.job.set_state(v1::JOB_STATE_RUNNING); });
  QAAS_ASSERT_OK(c);
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->job.id(), "cpu");
  auto counts = store_->CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, 1);
  EXPECT_EQ(counts->running, 1);
}

TEST_P(JobStoreTest, UpdateAbortsWithoutWriting) {
  bool created;
  QAAS_ASSERT_OK(store_->Insert(MakeJob("a"), &created));
  auto r = store_->Update("a", [](JobRow& row) {
    row.job.set_state(v1::JOB_STATE_FAILED);
    return absl::FailedPreconditionError("no");
  });
  QAAS_EXPECT_CODE(r, kFailedPrecondition);
  EXPECT_EQ(store_->Get("a")->job.state(), v1::JOB_STATE_QUEUED);
  QAAS_EXPECT_CODE(store_->Update("zz", [](JobRow&) { return absl::OkStatus(); }), kNotFound);
}

TEST_P(JobStoreTest, ListPaginatesNewestFirstWithFilters) {
  bool created;
  for (int i = 0; i < 7; ++i) {
    v1::Job j = MakeJob("j" + std::to_string(i));
    (*j.mutable_spec()->mutable_labels())["team"] = i % 2 ? "odd" : "even";
    QAAS_ASSERT_OK(store_->Insert(j, &created));
  }
  QAAS_ASSERT_OK(store_->Insert(MakeJob("other-tenant", 0, "", "u"), &created));
  ListQuery q;
  q.tenant = "t";
  q.page_size = 3;
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    auto p = store_->List(q);
    QAAS_ASSERT_OK(p);
    for (const auto& j : p->jobs) seen.push_back(j.id());
    if (p->next_page_token.empty()) break;
    q.page_token = p->next_page_token;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"j6", "j5", "j4", "j3", "j2", "j1", "j0"}));
  ListQuery odd;
  odd.tenant = "t";
  odd.labels = {{"team", "odd"}};
  auto p = store_->List(odd);
  QAAS_ASSERT_OK(p);
  ASSERT_EQ(p->jobs.size(), 3u);
  EXPECT_EQ(p->jobs[0].id(), "j5");
  ListQuery bad;
  bad.page_token = "garbage";
  QAAS_EXPECT_CODE(store_->List(bad), kInvalidArgument);
}

TEST_P(JobStoreTest, TheChooserSeesTheQueueAndRunningJobsPerTenant) {
  bool created;
  int n = 0;
  for (const char* t : {"a", "a", "b"}) QAAS_ASSERT_OK(store_->Insert(MakeJob("j" + std::to_string(n++), 0, "", t), &created));
  QAAS_ASSERT_OK(store_->ClaimNext(First(), Lease));  // j0 of a runs
  std::vector<std::string> seen;
  std::map<std::string, int> running;
  auto c = store_->ClaimNext(
      [&](const std::vector<const v1::Job*>& q, const std::map<std::string, int>& r) {
        for (const auto* j : q) seen.push_back(j->id());
        running = r;
        return -1;  // nothing suits
      },
      Lease);
  QAAS_ASSERT_OK(c);
  EXPECT_FALSE(c->has_value());
  EXPECT_EQ(seen, (std::vector<std::string>{"j1", "j2"}));
  EXPECT_EQ(running, (std::map<std::string, int>{{"a", 1}}));
  auto counts = store_->CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, 2);  // a declined claim changes nothing
  EXPECT_EQ(counts->running, 1);
}

// Two replicas (two stores on one database), four threads each, claiming
// from 200 queued jobs at once: every job is claimed exactly once.
TEST_P(JobStoreTest, ConcurrentClaimsFromTwoReplicasNeverShareAJob) {
  auto replica = Open();
  QAAS_ASSERT_OK(replica);
  bool created;
  constexpr int kJobs = 200;
  for (int i = 0; i < kJobs; ++i) QAAS_ASSERT_OK(store_->Insert(MakeJob("j" + std::to_string(i)), &created));
  std::mutex mu;
  std::vector<std::string> claimed;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    JobStore* store = t % 2 ? replica->get() : store_.get();
    threads.emplace_back([&, store, t] {
      while (true) {
        auto c = store->ClaimNext(First(), [&](JobRow& r) {
          r.job.set_state(v1::JOB_STATE_RUNNING);
          r.lease_id = "replica-" + std::to_string(t);
        });
        if (!c.ok()) {
          ++errors;
          continue;  // busy: try again
        }
        if (!c->has_value()) return;
        std::lock_guard<std::mutex> lock(mu);
        claimed.push_back((*c)->job.id());
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> unique(claimed.begin(), claimed.end());
  EXPECT_EQ(claimed.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(unique.size(), static_cast<size_t>(kJobs));
  auto counts = store_->CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, 0);
  EXPECT_EQ(counts->running, kJobs);
  // Each job's stored lease is the one its claimer wrote.
  for (const auto& id : claimed) EXPECT_EQ(store_->Get(id)->job.state(), v1::JOB_STATE_RUNNING);
}

// SQL on the test's database from a connection of the test's own.
absl::Status Sql(const std::string& conninfo, const std::string& sql) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  absl::Status s = absl::OkStatus();
  if (PQstatus(c) != CONNECTION_OK) {
    s = absl::UnavailableError(PQerrorMessage(c));
  } else {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
      s = absl::InternalError(absl::StrCat(sql, ": ", PQresultErrorMessage(r)));
    }
    PQclear(r);
  }
  PQfinish(c);
  return s;
}

// A PostgreSQL store of one connection on the test's database, holding
// queued jobs "a" and "b": a call's failure then shows on the next call.
absl::StatusOr<std::unique_ptr<PostgresJobStore>> OneConnectionStoreWithTwoJobs(const std::string& conninfo) {
  QAAS_ASSIGN_OR_RETURN(auto store, PostgresJobStore::Open(conninfo, /*connections=*/1));
  bool created;
  for (const char* id : {"a", "b"}) QAAS_RETURN_IF_ERROR(store->Insert(MakeJob(id), &created).status());
  return store;
}

absl::Status LeaseById(JobStore& store, const std::string& id) {
  return store
      .Update(id,
              [](JobRow& r) {
                Lease(r);
                return absl::OkStatus();
              })
      .status();
}

// A claim and an update each send their statements in one round trip
// (pipelined): a statement of the batch that fails is the call's error,
// names the call, writes nothing, and leaves the store's only connection
// working for the next call.
TEST_P(JobStoreTest, AStatementThatFailsInABatchWritesNothingAndTheConnectionGoesOn) {
  if (GetParam() != "postgres") GTEST_SKIP() << "PostgreSQL's pipelined statements only";
  auto one = OneConnectionStoreWithTwoJobs(conninfo_);
  QAAS_ASSERT_OK(one);
  JobStore& store = **one;
  QAAS_ASSERT_OK(Sql(conninfo_, "ALTER TABLE jobs ADD CONSTRAINT no_bad_lease CHECK (lease_id <> 'bad')"));
  auto bad_lease = [](JobRow& r) {
    Lease(r);
    r.lease_id = "bad";
  };
  auto claim = store.ClaimNext(First(), bad_lease);
  EXPECT_EQ(claim.status().code(), absl::StatusCode::kInternal) << claim.status();
  EXPECT_NE(claim.status().message().find("claim"), std::string::npos) << claim.status();
  EXPECT_NE(claim.status().message().find("no_bad_lease"), std::string::npos) << claim.status();
  auto update = store.Update("b", [&](JobRow& r) {
    bad_lease(r);
    return absl::OkStatus();
  });
  EXPECT_EQ(update.status().code(), absl::StatusCode::kInternal) << update.status();
  EXPECT_NE(update.status().message().find("update"), std::string::npos) << update.status();
  auto counts = store.CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, 2);
  EXPECT_EQ(counts->running, 0);
  // The same connection: claims, updates and reads as before.
  auto claimed = store.ClaimNext(First(), Lease);
  QAAS_ASSERT_OK(claimed);
  ASSERT_TRUE(claimed->has_value());
  EXPECT_EQ((*claimed)->job.id(), "a");
  QAAS_ASSERT_OK(LeaseById(store, "b"));
  EXPECT_EQ(store.Get("b")->job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(store.Get("a")->lease_id, "l");
}

// The server ends the store's connection between calls: the next call fails
// as Unavailable (or succeeds if it reconnected first), nothing half-written,
// and the call after it works on a fresh connection.
TEST_P(JobStoreTest, AConnectionTheServerEndedFailsOneCallAndTheNextWorks) {
  if (GetParam() != "postgres") GTEST_SKIP() << "PostgreSQL's connections only";
  auto one = OneConnectionStoreWithTwoJobs(conninfo_);
  QAAS_ASSERT_OK(one);
  JobStore& store = **one;
  for (int round = 0; round < 2; ++round) {
    QAAS_ASSERT_OK(Sql(conninfo_,
                       "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()"));
    const absl::Status first = round == 0 ? store.ClaimNext(First(), Lease).status() : LeaseById(store, "b");
    EXPECT_TRUE(first.ok() || absl::IsUnavailable(first)) << first;
    if (!first.ok()) {  // then it wrote nothing, and the next call works
      EXPECT_EQ(store.Get(round == 0 ? "a" : "b")->job.state(), v1::JOB_STATE_QUEUED);
      QAAS_ASSERT_OK(round == 0 ? store.ClaimNext(First(), Lease).status() : LeaseById(store, "b"));
    }
  }
  auto counts = store.CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, 0);
  EXPECT_EQ(counts->running, 2);
}

// The same idempotency key submitted through both replicas at once: one job.
TEST_P(JobStoreTest, ConcurrentIdempotentSubmitsCreateOneJob) {
  auto replica = Open();
  QAAS_ASSERT_OK(replica);
  std::atomic<int> made{0};
  std::mutex mu;
  std::set<std::string> returned;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    JobStore* store = t % 2 ? replica->get() : store_.get();
    threads.emplace_back([&, store, t] {
      bool created = false;
      auto job = store->Insert(MakeJob("try-" + std::to_string(t), 0, "same-key"), &created);
      ASSERT_TRUE(job.ok()) << job.status();
      made += created;
      std::lock_guard<std::mutex> lock(mu);
      returned.insert(job->id());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(made.load(), 1);
  EXPECT_EQ(returned.size(), 1u);
  ListQuery all;
  auto page = store_->List(all);
  QAAS_ASSERT_OK(page);
  EXPECT_EQ(page->jobs.size(), 1u);
}

TEST_P(JobStoreTest, UpdatesFromTwoReplicasSerialize) {
  auto replica = Open();
  QAAS_ASSERT_OK(replica);
  bool created;
  QAAS_ASSERT_OK(store_->Insert(MakeJob("counter"), &created));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    JobStore* store = t % 2 ? replica->get() : store_.get();
    threads.emplace_back([store] {
      for (int i = 0; i < 25; ++i) {
        absl::Status st;
        do {
          st = store->Update("counter", [](JobRow& r) {
                      r.job.set_attempt(r.job.attempt() + 1);
                      return absl::OkStatus();
                    }).status();
        } while (absl::IsUnavailable(st) || absl::IsAborted(st));
        ASSERT_TRUE(st.ok()) << st;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(store_->Get("counter")->job.attempt(), 100);  // no lost update
}

// Tenant a's backlog is longer than the claim window; b's one job, newer and
// of lower priority than all of them, is still among what the chooser sees.
TEST_P(JobStoreTest, ALongBacklogDoesNotHideAnotherTenantsJobs) {
  bool created;
  for (int i = 0; i < JobStore::kClaimWindow + 20; ++i) {
    QAAS_ASSERT_OK(store_->Insert(MakeJob("a" + std::to_string(i), 5, "", "a"), &created));
  }
  QAAS_ASSERT_OK(store_->Insert(MakeJob("b0", 0, "", "b"), &created));
  size_t seen = 0;
  auto c = store_->ClaimNext(
      [&](const std::vector<const v1::Job*>& q, const std::map<std::string, int>&) {
        seen = q.size();
        for (size_t i = 0; i < q.size(); ++i) {
          if (q[i]->tenant() == "b") return static_cast<int>(i);
        }
        return -1;
      },
      Lease);
  QAAS_ASSERT_OK(c);
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->job.id(), "b0");
  EXPECT_EQ(seen, static_cast<size_t>(JobStore::kClaimProbe + 1));
}

// The chooser first sees each tenant's first kClaimProbe jobs; when it takes
// none of them it is asked again with the first kClaimWindow, so a job deep
// in a backlog (the only one this worker can run) is found; past the window
// it is not.
TEST_P(JobStoreTest, AChooserThatTakesNoneOfTheFirstJobsSeesTheWholeWindow) {
  bool created;
  for (int i = 0; i < JobStore::kClaimWindow + 20; ++i) {
    QAAS_ASSERT_OK(store_->Insert(MakeJob("a" + std::to_string(i), 0, "", "a"), &created));
  }
  auto want = [&](const std::string& id, std::vector<size_t>* sizes) {
    return [id, sizes](const std::vector<const v1::Job*>& q, const std::map<std::string, int>&) {
      sizes->push_back(q.size());
      for (size_t i = 0; i < q.size(); ++i) {
        if (q[i]->id() == id) return static_cast<int>(i);
      }
      return -1;
    };
  };
  std::vector<size_t> sizes;
  auto deep = store_->ClaimNext(want("a20", &sizes), Lease);
  QAAS_ASSERT_OK(deep);
  ASSERT_TRUE(deep->has_value());
  EXPECT_EQ((*deep)->job.id(), "a20");
  EXPECT_EQ(sizes, (std::vector<size_t>{JobStore::kClaimProbe, JobStore::kClaimWindow}));

  sizes.clear();
  auto beyond = store_->ClaimNext(want("a80", &sizes), Lease);
  QAAS_ASSERT_OK(beyond);
  EXPECT_FALSE(beyond->has_value());
  EXPECT_EQ(sizes, (std::vector<size_t>{JobStore::kClaimProbe, JobStore::kClaimWindow}));
}

}  // namespace
}  // namespace qaas::server
