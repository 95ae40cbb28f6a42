#include "server/sqlite_job_store.h"

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace qaas::server {
namespace {

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

TEST(SqliteJobStore, InsertIsDurableAcrossReopen) {
  ScopedTempDir dir;
  const std::string db = dir.path() + "/jobs.db";
  {
    auto store = SqliteJobStore::Open(db);
    QAAS_ASSERT_OK(store);
    bool created = false;
    QAAS_ASSERT_OK((*store)->Insert(MakeJob("a"), &created));
    EXPECT_TRUE(created);
  }
  auto store = SqliteJobStore::Open(db);
  QAAS_ASSERT_OK(store);
  auto row = (*store)->Get("a");
  QAAS_ASSERT_OK(row);
  EXPECT_EQ(row->job.spec().model(), "file:///m");
  QAAS_EXPECT_CODE((*store)->Get("missing"), kNotFound);
}

TEST(SqliteJobStore, IdempotencyKeyReturnsTheFirstJobPerTenant) {
  ScopedTempDir dir;
  auto store = SqliteJobStore::Open(dir.path() + "/jobs.db");
  QAAS_ASSERT_OK(store);
  bool created = false;
  QAAS_ASSERT_OK((*store)->Insert(MakeJob("a", 0, "k"), &created));
  auto again = (*store)->Insert(MakeJob("b", 0, "k"), &created);
  QAAS_ASSERT_OK(again);
  EXPECT_FALSE(created);
  EXPECT_EQ(again->id(), "a");
  // Another tenant with the same key gets its own job.
  auto other = (*store)->Insert(MakeJob("c", 0, "k", "u"), &created);
  QAAS_ASSERT_OK(other);
  EXPECT_TRUE(created);
  EXPECT_EQ(other->id(), "c");
}

TEST(SqliteJobStore, ClaimTakesHighestPriorityThenOldest) {
  ScopedTempDir dir;
  auto store = SqliteJobStore::Open(dir.path() + "/jobs.db");
  QAAS_ASSERT_OK(store);
  bool created;
  for (auto [id, prio] : std::vector<std::pair<std::string, int>>{{"low", 0}, {"high1", 5}, {"high2", 5}}) {
    QAAS_ASSERT_OK((*store)->Insert(MakeJob(id, prio), &created));
  }
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {
    auto c = (*store)->ClaimNext([](const std::vector<const v1::Job*>& q, const std::map<std::string, int>&) {
                                   return q.empty() ? -1 : 0;
                                 },
                                 [](JobRow& r) {
                                   r.job.set_state(v1::JOB_STATE_RUNNING);
                                   r.lease_id = "l";
                                   r.lease_expire_ms = 100;
                                 });
    QAAS_ASSERT_OK(c);
    if (c->has_value()) order.push_back((*c)->job.id());
  }
  EXPECT_EQ(order, (std::vector<std::string>{"high1", "high2", "low"}));
  auto expired = (*store)->ExpiredLeases(101);
  QAAS_ASSERT_OK(expired);
  EXPECT_EQ(expired->size(), 3u);
  auto none = (*store)->ExpiredLeases(100);
  QAAS_ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

TEST(SqliteJobStore, ClaimSkipsIneligibleJobs) {
  ScopedTempDir dir;
  auto store = SqliteJobStore::Open(dir.path() + "/jobs.db");
  QAAS_ASSERT_OK(store);
  bool created;
  QAAS_ASSERT_OK((*store)->Insert(MakeJob("gpu", 9), &created));
  QAAS_ASSERT_OK((*store)->Insert(MakeJob("cpu", 0), &created));
  auto c = (*store)->ClaimNext([](const std::vector<const v1::Job*>& q, const std::map<std::string, int>&) {
                                 for (size_t i = 0; i < q.size(); ++i) {
                                   if (q[i]->id() == "cpu") return static_cast<int>(i);
                                 }
                                 return -1;
                               },
                               [](JobRow& r) { r.job.set_state(v1::JOB_STATE_RUNNING); });
  QAAS_ASSERT_OK(c);
  ASSERT_TRUE(c->has_value());
  EXPECT_EQ((*c)->job.id(), "cpu");
  auto counts = (*store)->CountStates();
  QAAS_ASSERT_OK(counts);
  EXPECT_EQ(counts->queued, 1);
  EXPECT_EQ(counts->running, 1);
}

TEST(SqliteJobStore, UpdateAbortsWithoutWriting) {
  ScopedTempDir dir;
  auto store = SqliteJobStore::Open(dir.path() + "/jobs.db");
  QAAS_ASSERT_OK(store);
  bool created;
  QAAS_ASSERT_OK((*store)->Insert(MakeJob("a"), &created));
  auto r = (*store)->Update("a", [](JobRow& row) {
    row.job.set_state(v1::JOB_STATE_FAILED);
    return absl::FailedPreconditionError("no");
  });
  QAAS_EXPECT_CODE(r, kFailedPrecondition);
  EXPECT_EQ((*store)->Get("a")->job.state(), v1::JOB_STATE_QUEUED);
  QAAS_EXPECT_CODE((*store)->Update("zz", [](JobRow&) { return absl::OkStatus(); }), kNotFound);
}

TEST(SqliteJobStore, ListPaginatesNewestFirstWithFilters) {
  ScopedTempDir dir;
  auto store = SqliteJobStore::Open(dir.path() + "/jobs.db");
  QAAS_ASSERT_OK(store);
  bool created;
  for (int i = 0; i < 7; ++i) {
    v1::Job j = MakeJob("j" + std::to_string(i));
    (*j.mutable_spec()->mutable_labels())["team"] = i % 2 ? "odd" : "even";
    QAAS_ASSERT_OK((*store)->Insert(j, &created));
  }
  QAAS_ASSERT_OK((*store)->Insert(MakeJob("other-tenant", 0, "", "u"), &created));
  ListQuery q;
  q.tenant = "t";
  q.page_size = 3;
  std::vector<std::string> seen;
  for (int page = 0; page < 5; ++page) {
    auto p = (*store)->List(q);
    QAAS_ASSERT_OK(p);
    for (const auto& j : p->jobs) seen.push_back(j.id());
    if (p->next_page_token.empty()) break;
    q.page_token = p->next_page_token;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"j6", "j5", "j4", "j3", "j2", "j1", "j0"}));
  ListQuery odd;
  odd.tenant = "t";
  odd.labels = {{"team", "odd"}};
  auto p = (*store)->List(odd);
  QAAS_ASSERT_OK(p);
  ASSERT_EQ(p->jobs.size(), 3u);
  EXPECT_EQ(p->jobs[0].id(), "j5");
  ListQuery bad;
  bad.page_token = "garbage";
  QAAS_EXPECT_CODE((*store)->List(bad), kInvalidArgument);
}

}  // namespace
}  // namespace qaas::server
