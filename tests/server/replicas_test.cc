// Two qaas-server replicas over one PostgreSQL database, through gRPC: a job
// submitted to one is leased from the other and finished through the first;
// neither hands out a job the other leased.
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <set>

#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/pg_server.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using qaas::testing::PgServer;
using qaas::testing::ScopedTempDir;
using qaas::testing::WriteLocalFile;

class ReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = PgServer::Start();
    if (!pg.ok()) GTEST_SKIP() << "PostgreSQL replicas not tested: " << pg.status().message();
    pg_ = *std::move(pg);
    auto uri = pg_->NewDatabase("qaas");
    ASSERT_TRUE(uri.ok()) << uri.status();
    uri_ = *uri;
    std::filesystem::create_directories(dir_.path() + "/model");
    WriteLocalFile(dir_.path() + "/model/config.json", ::qaas::testing::kTestModelConfig);
  }
  std::unique_ptr<Server> Replica() {
    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.metrics_address = "";
    o.database_uri = uri_;
    o.scheduler.validation.file_roots = {dir_.path()};
    o.scheduler.default_output_uri = "file://" + dir_.path() + "/store";
    auto s = Server::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  static std::shared_ptr<grpc::Channel> To(Server& s) {
    return grpc::CreateChannel("127.0.0.1:" + std::to_string(s.port()), grpc::InsecureChannelCredentials());
  }

  ScopedTempDir dir_;
  std::unique_ptr<PgServer> pg_;
  std::string uri_;
};

TEST_F(ReplicasTest, ReplicasShareJobsAndNeverLeaseOneTwice) {
  auto r1 = Replica();
  auto r2 = Replica();
  ASSERT_TRUE(r1 && r2);
  auto jobs1 = v1::JobService::NewStub(To(*r1));
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    grpc::ClientContext ctx;
    v1::SubmitJobRequest req;
    req.mutable_spec()->set_model("file://" + dir_.path() + "/model");
    req.mutable_spec()->set_preset("rtn");
    req.mutable_spec()->mutable_scheme()->set_shorthand("W4A16");
    v1::Job job;
    ASSERT_TRUE(jobs1->SubmitJob(&ctx, req, &job).ok());
    ids.push_back(job.id());
  }
  // One worker on each replica, leasing alternately until the queue is empty.
  std::set<std::string> leased;
  std::vector<std::pair<std::string, std::string>> leases;  // job, lease
  for (Server* replica : {r1.get(), r2.get(), r1.get(), r2.get(), r1.get(), r2.get(), r1.get(), r2.get()}) {
    auto workers = v1::WorkerService::NewStub(To(*replica));
    grpc::ClientContext rctx;
    v1::RegisterWorkerRequest reg;
    reg.set_name("w");
    reg.mutable_capabilities()->add_devices("cpu");
    v1::RegisterWorkerResponse w;
    ASSERT_TRUE(workers->RegisterWorker(&rctx, reg, &w).ok());
    grpc::ClientContext lctx;
    v1::LeaseJobRequest lease;
    lease.set_worker_id(w.worker_id());
    v1::LeaseJobResponse got;
    ASSERT_TRUE(workers->LeaseJob(&lctx, lease, &got).ok());
    if (!got.has_job()) continue;
    EXPECT_TRUE(leased.insert(got.job().id()).second) << got.job().id() << " leased twice";
    leases.emplace_back(got.job().id(), got.lease_id());
  }
  EXPECT_EQ(leased, std::set<std::string>(ids.begin(), ids.end()));
  // Finished through the other replica than the one that leased it.
  auto workers1 = v1::WorkerService::NewStub(To(*r1));
  for (const auto& [job, lease] : leases) {
    grpc::ClientContext ctx;
    v1::CompleteJobRequest done;
    done.set_job_id(job);
    done.set_lease_id(lease);
    v1::CompleteJobResponse resp;
    ASSERT_TRUE(workers1->CompleteJob(&ctx, done, &resp).ok());
  }
  auto jobs2 = v1::JobService::NewStub(To(*r2));
  grpc::ClientContext ctx;
  v1::ListJobsRequest list;
  list.add_states(v1::JOB_STATE_SUCCEEDED);
  v1::ListJobsResponse page;
  ASSERT_TRUE(jobs2->ListJobs(&ctx, list, &page).ok());
  EXPECT_EQ(page.jobs_size(), 6);
}

TEST_F(ReplicasTest, AnUnreachableDatabaseIsNamedAtStart) {
  ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.database_uri = "postgresql://qaas@127.0.0.1:1/none?connect_timeout=2";
  auto s = Server::Start(o);
  QAAS_EXPECT_CODE(s, kUnavailable);
  EXPECT_NE(s.status().message().find("cannot connect to PostgreSQL"), std::string::npos) << s.status();
  o.database_uri = "mysql://x";
  QAAS_EXPECT_CODE(Server::Start(o), kInvalidArgument);
}

}  // namespace
}  // namespace qaas::server
