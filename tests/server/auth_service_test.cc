// Authentication and tenant isolation through the real gRPC server: every
// JobService and WorkerService call, plaintext and TLS with worker client
// certificates.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "server/grpc_security.h"
#include "server/server.h"
#include "storage/sha256.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using qaas::testing::ScopedTempDir;
using qaas::testing::WriteLocalFile;

std::string Line(const std::string& token, const std::string& principal) {
  return storage::Sha256Hex(token) + " " + principal + "\n";
}

class AuthServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.path() + "/model");
    WriteLocalFile(dir_.path() + "/model/config.json", ::qaas::testing::kTestModelConfig);
    tokens_ = dir_.path() + "/tokens";
    WriteLocalFile(tokens_, Line("tok-a", "tenant:a") + Line("tok-b", "tenant:b") + Line("tok-w", "worker:pool"));
  }

  void Start(ServerTlsOptions tls = {}) {
    ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.metrics_address = "";
    o.db_path = dir_.path() + "/jobs.db";
    o.tokens_path = tokens_;
    o.tls = tls;
    o.reaper_interval_ms = 20;
    o.auth_reload_ms = 40;
    o.scheduler.validation.file_roots = {dir_.path()};
    o.scheduler.default_output_uri = "file://" + dir_.path() + "/store";
    auto s = Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    target_ = "127.0.0.1:" + std::to_string(server_->port());
  }

  std::shared_ptr<grpc::Channel> Channel(ClientSecurityOptions o) {
    auto c = MakeChannel(target_, o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *c;
  }
  std::shared_ptr<grpc::Channel> Plain(const std::string& token) {
    ClientSecurityOptions o;
    o.token = token;
    return Channel(o);
  }
  std::unique_ptr<v1::JobService::Stub> Jobs(const std::string& token) {
    return v1::JobService::NewStub(Plain(token));
  }
  std::unique_ptr<v1::WorkerService::Stub> Workers(const std::string& token) {
    return v1::WorkerService::NewStub(Plain(token));
  }

  v1::SubmitJobRequest Request(const std::string& key = "") {
    v1::SubmitJobRequest r;
    r.mutable_spec()->set_model("file://" + dir_.path() + "/model");
    r.mutable_spec()->set_preset("rtn");
    r.mutable_spec()->mutable_scheme()->set_shorthand("W4A16g128");
    r.mutable_spec()->set_idempotency_key(key);
    return r;
  }

  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return c;
  }

  // Every JobService call with `jobs` on job `id`; their status codes.
  std::vector<grpc::StatusCode> EveryJobCall(v1::JobService::Stub& jobs, const std::string& id) {
    std::vector<grpc::StatusCode> codes;
    v1::Job job;
    codes.push_back(jobs.SubmitJob(Ctx().get(), Request(), &job).error_code());
    v1::GetJobRequest get;
    get.set_id(id);
    codes.push_back(jobs.GetJob(Ctx().get(), get, &job).error_code());
    v1::ListJobsResponse list;
    codes.push_back(jobs.ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).error_code());
    v1::CancelJobRequest cancel;
    cancel.set_id(id);
    codes.push_back(jobs.CancelJob(Ctx().get(), cancel, &job).error_code());
    v1::WatchJobRequest watch;
    watch.set_id(id);
    auto ctx = Ctx();
    auto reader = jobs.WatchJob(ctx.get(), watch);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
    }
    codes.push_back(reader->Finish().error_code());
    v1::GetReportRequest report;
    report.set_id(id);
    v1::GetReportResponse rr;
    codes.push_back(jobs.GetReport(Ctx().get(), report, &rr).error_code());
    return codes;
  }

  std::vector<grpc::StatusCode> EveryWorkerCall(v1::WorkerService::Stub& workers) {
    std::vector<grpc::StatusCode> codes;
    v1::RegisterWorkerRequest reg;
    reg.set_name("w");
    v1::RegisterWorkerResponse regr;
    codes.push_back(workers.RegisterWorker(Ctx().get(), reg, &regr).error_code());
    v1::LeaseJobRequest lease;
    lease.set_worker_id("w-1");
    v1::LeaseJobResponse leaser;
    codes.push_back(workers.LeaseJob(Ctx().get(), lease, &leaser).error_code());
    v1::HeartbeatRequest hb;
    v1::HeartbeatResponse hbr;
    codes.push_back(workers.Heartbeat(Ctx().get(), hb, &hbr).error_code());
    v1::CompleteJobRequest done;
    v1::CompleteJobResponse doner;
    codes.push_back(workers.CompleteJob(Ctx().get(), done, &doner).error_code());
    v1::FailJobRequest fail;
    v1::FailJobResponse failr;
    codes.push_back(workers.FailJob(Ctx().get(), fail, &failr).error_code());
    return codes;
  }

  v1::Job SubmitAs(const std::string& token, const std::string& key = "") {
    v1::Job job;
    grpc::Status s = Jobs(token)->SubmitJob(Ctx().get(), Request(key), &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  ScopedTempDir dir_;
  std::string tokens_;
  std::unique_ptr<Server> server_;
  std::string target_;
};

TEST_F(AuthServiceTest, MissingOrWrongTokenIsUnauthenticatedOnEveryCall) {
  Start();
  const v1::Job job = SubmitAs("tok-a");
  const std::vector<grpc::StatusCode> unauth_jobs(6, grpc::StatusCode::UNAUTHENTICATED);
  const std::vector<grpc::StatusCode> unauth_workers(5, grpc::StatusCode::UNAUTHENTICATED);
  for (const std::string token : {"", "tok-x"}) {
    EXPECT_EQ(EveryJobCall(*Jobs(token), job.id()), unauth_jobs) << "token '" << token << "'";
    EXPECT_EQ(EveryWorkerCall(*Workers(token)), unauth_workers) << "token '" << token << "'";
  }
  v1::Job got;
  v1::GetJobRequest get;
  get.set_id(job.id());
  grpc::Status s = Jobs("tok-x")->GetJob(Ctx().get(), get, &got);
  EXPECT_EQ(s.error_message(), "unknown or revoked token");
  s = Jobs("")->GetJob(Ctx().get(), get, &got);
  EXPECT_NE(s.error_message().find("authorization: Bearer"), std::string::npos) << s.error_message();
}

TEST_F(AuthServiceTest, TenantsSeeWatchAndCancelOnlyTheirOwnJobs) {
  Start();
  const v1::Job a = SubmitAs("tok-a", "same-key");
  EXPECT_EQ(a.tenant(), "a");
  // B cannot get, watch, cancel or read the report of A's job, and its list
  // is empty (its own submit is the first call of EveryJobCall).
  auto b = Jobs("tok-b");
  const std::vector<grpc::StatusCode> codes = EveryJobCall(*b, a.id());
  EXPECT_EQ(codes, (std::vector<grpc::StatusCode>{grpc::StatusCode::OK, grpc::StatusCode::NOT_FOUND,
                                                  grpc::StatusCode::OK, grpc::StatusCode::NOT_FOUND,
                                                  grpc::StatusCode::NOT_FOUND, grpc::StatusCode::NOT_FOUND}));
  v1::ListJobsResponse list;
  ASSERT_TRUE(b->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_EQ(list.jobs(0).tenant(), "b");
  // Nor find it through an idempotency key: B gets a job of its own.
  const v1::Job b_same = SubmitAs("tok-b", "same-key");
  EXPECT_NE(b_same.id(), a.id());
  EXPECT_EQ(b_same.tenant(), "b");

  // A's job is untouched and A still controls it.
  auto jobs_a = Jobs("tok-a");
  v1::GetJobRequest get;
  get.set_id(a.id());
  v1::Job got;
  ASSERT_TRUE(jobs_a->GetJob(Ctx().get(), get, &got).ok());
  EXPECT_EQ(got.state(), v1::JOB_STATE_QUEUED);
  EXPECT_FALSE(got.cancel_requested());
  ASSERT_TRUE(jobs_a->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_EQ(list.jobs(0).id(), a.id());
  v1::CancelJobRequest cancel;
  cancel.set_id(a.id());
  ASSERT_TRUE(jobs_a->CancelJob(Ctx().get(), cancel, &got).ok());
  EXPECT_EQ(got.state(), v1::JOB_STATE_CANCELLED);
}

TEST_F(AuthServiceTest, EachCredentialOpensOnlyItsService) {
  Start();
  const v1::Job a = SubmitAs("tok-a");
  const std::vector<grpc::StatusCode> denied_jobs(6, grpc::StatusCode::PERMISSION_DENIED);
  const std::vector<grpc::StatusCode> denied_workers(5, grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(EveryJobCall(*Jobs("tok-w"), a.id()), denied_jobs);
  EXPECT_EQ(EveryWorkerCall(*Workers("tok-a")), denied_workers);

  // The worker credential serves every tenant's jobs.
  auto workers = Workers("tok-w");
  v1::RegisterWorkerRequest reg;
  reg.set_name("gpu-0");
  reg.mutable_capabilities()->add_devices("cpu");
  v1::RegisterWorkerResponse regr;
  ASSERT_TRUE(workers->RegisterWorker(Ctx().get(), reg, &regr).ok());
  v1::LeaseJobRequest lease;
  lease.set_worker_id(regr.worker_id());
  v1::LeaseJobResponse leased;
  ASSERT_TRUE(workers->LeaseJob(Ctx().get(), lease, &leased).ok());
  EXPECT_EQ(leased.job().id(), a.id());

  // The embedded worker's in-process channel is a worker, not a tenant.
  auto inproc = server_->InProcessChannel();
  ASSERT_TRUE(v1::WorkerService::NewStub(inproc)->RegisterWorker(Ctx().get(), reg, &regr).ok());
  v1::ListJobsResponse list;
  EXPECT_EQ(v1::JobService::NewStub(inproc)->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(AuthServiceTest, RotatedTokensTakeEffectWithoutARestart) {
  Start();
  SubmitAs("tok-b");
  WriteLocalFile(tokens_ + ".new", Line("tok-a", "tenant:a") + Line("tok-c", "tenant:b") + Line("tok-w", "worker"));
  std::filesystem::rename(tokens_ + ".new", tokens_);
  auto b = Jobs("tok-b");
  auto c = Jobs("tok-c");
  v1::ListJobsResponse list;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (b->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).error_code() != grpc::StatusCode::UNAUTHENTICATED &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(b->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The new token of the same tenant sees the tenant's job.
  ASSERT_TRUE(c->ListJobs(Ctx().get(), v1::ListJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 1);
}

TEST_F(AuthServiceTest, StartRefusesABadTokensFileOrTlsFiles) {
  ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.db_path = dir_.path() + "/jobs.db";
  o.tokens_path = dir_.path() + "/missing-tokens";
  QAAS_EXPECT_CODE(Server::Start(o), kNotFound);
  o.tokens_path = "";
  o.tls.cert_file = dir_.path() + "/missing.pem";
  o.tls.key_file = dir_.path() + "/missing.key";
  auto s = Server::Start(o);
  QAAS_EXPECT_CODE(s, kInvalidArgument);
  EXPECT_NE(s.status().message().find("missing.pem"), std::string::npos) << s.status();
}

// TLS for everyone, and client certificates from the worker CA as the
// workers' credential. Certificates are made by the openssl command.
class TlsTest : public AuthServiceTest {
 protected:
  void SetUp() override {
    AuthServiceTest::SetUp();
    if (std::system("command -v openssl >/dev/null") != 0) GTEST_SKIP() << "no openssl command to make certificates";
    pki_ = dir_.path() + "/pki";
    ASSERT_EQ(std::system((std::string(QAAS_SOURCE_DIR) + "/tests/make_test_pki " + pki_).c_str()), 0)
        << "openssl failed";
    Start({pki_ + "/server.pem", pki_ + "/server.key", pki_ + "/worker-ca.pem"});
  }

  ClientSecurityOptions Tls(const std::string& token, const std::string& cert = "") {
    ClientSecurityOptions o;
    o.token = token;
    o.ca_file = pki_ + "/server-ca.pem";
    if (!cert.empty()) {
      o.cert_file = pki_ + "/" + cert + ".pem";
      o.key_file = pki_ + "/" + cert + ".key";
    }
    return o;
  }

  grpc::StatusCode Register(const ClientSecurityOptions& o) {
    v1::RegisterWorkerRequest reg;
    reg.set_name("w");
    v1::RegisterWorkerResponse r;
    return v1::WorkerService::NewStub(Channel(o))->RegisterWorker(Ctx().get(), reg, &r).error_code();
  }

  std::string pki_;
};

TEST_F(TlsTest, TenantsUseTokensOverTls) {
  v1::Job job;
  ASSERT_TRUE(v1::JobService::NewStub(Channel(Tls("tok-a")))->SubmitJob(Ctx().get(), Request(), &job).ok());
  EXPECT_EQ(job.tenant(), "a");
  // Plaintext to a TLS port does not get through.
  EXPECT_EQ(Jobs("tok-a")->SubmitJob(Ctx().get(), Request(), &job).error_code(), grpc::StatusCode::UNAVAILABLE);
  // A worker certificate is no tenant credential.
  EXPECT_EQ(v1::JobService::NewStub(Channel(Tls("", "worker")))->SubmitJob(Ctx().get(), Request(), &job).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TlsTest, WorkersAuthenticateWithTheirCertificate) {
  EXPECT_EQ(Register(Tls("", "worker")), grpc::StatusCode::OK);
  EXPECT_EQ(Register(Tls("tok-w")), grpc::StatusCode::OK);  // or a worker token
  EXPECT_EQ(Register(Tls("")), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Register(Tls("tok-a")), grpc::StatusCode::PERMISSION_DENIED);
  // A certificate from another CA fails the handshake.
  EXPECT_EQ(Register(Tls("", "rogue")), grpc::StatusCode::UNAVAILABLE);
  // The server's name is checked: the certificate names 127.0.0.1 and
  // localhost, not other.example.
  ClientSecurityOptions wrong_name = Tls("", "worker");
  wrong_name.server_name = "other.example";
  EXPECT_EQ(Register(wrong_name), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace qaas::server
