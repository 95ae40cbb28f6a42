// Fault tests with real processes on loopback, bounded in time:
//   - qaas-server SIGKILLed while clients submit concurrently: every job whose
//     submit was acknowledged exists after a restart (SQLite and PostgreSQL);
//   - a worker whose disk fills up: the job FAILS saying so.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "qaas/v1/job_service.grpc.pb.h"
#include "server/server.h"
#include "tests/pg_server.h"
#include "tests/test_util.h"
#include "tests/worker/job_polling.h"

namespace qaas {
namespace {

using testing::PgServer;
using testing::ReadLocalFile;
using testing::ScopedTempDir;
using testing::WriteLocalFile;

pid_t Spawn(std::vector<std::string> argv, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "a", stderr);
    (void)f;
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Starts qaas-server on data_dir; returns its pid and fills *port.
pid_t StartServer(const std::string& data_dir, const std::vector<std::string>& extra, int* port) {
  const std::string port_file = data_dir + ".port";
  std::filesystem::remove(port_file);
  std::vector<std::string> argv = {QAAS_SERVER_BIN, "--data_dir=" + data_dir, "--listen=127.0.0.1:0",
                                   "--metrics_listen=", "--port_file=" + port_file};
  argv.insert(argv.end(), extra.begin(), extra.end());
  pid_t pid = Spawn(argv, data_dir + ".log");
  for (int i = 0; i < 600 && *port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (std::filesystem::exists(port_file)) *port = std::atoi(ReadLocalFile(port_file).c_str());
  }
  return pid;
}

class ServerKillTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ServerKillTest, EveryAcknowledgedSubmitSurvivesASigkill) {
  ScopedTempDir dir;
  std::unique_ptr<PgServer> pg;
  std::vector<std::string> flags = {"--file_roots=" + dir.path()};
  if (GetParam() == "postgres") {
    auto started = PgServer::Start();
    if (!started.ok()) GTEST_SKIP() << "PostgreSQL not tested: " << started.status().message();
    pg = *std::move(started);
    auto uri = pg->NewDatabase("qaas");
    ASSERT_TRUE(uri.ok()) << uri.status();
    flags.push_back("--database=" + *uri);
  }
  std::filesystem::create_directories(dir.path() + "/model");
  WriteLocalFile(dir.path() + "/model/config.json", ::qaas::testing::kTestModelConfig);
  const std::string data = dir.path() + "/data";
  int port = 0;
  pid_t server = StartServer(data, flags, &port);
  ASSERT_GT(port, 0) << ReadLocalFile(data + ".log");

  // Eight clients submit as fast as they can; the server is killed once 150
  // submits were acknowledged, with more in flight.
  std::mutex mu;
  std::map<std::string, std::string> acked;  // idempotency key -> job id
  std::atomic<int> n_acked{0};
  std::atomic<bool> dead{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::JobService::NewStub(
          grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
      for (int i = 0; !dead; ++i) {
        v1::SubmitJobRequest req;
        req.mutable_spec()->set_model("file://" + dir.path() + "/model");
        req.mutable_spec()->set_preset("rtn");
        req.mutable_spec()->mutable_scheme()->set_shorthand("W4A16");
        const std::string key = "c" + std::to_string(c) + "-" + std::to_string(i);
        req.mutable_spec()->set_idempotency_key(key);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        v1::Job job;
        if (stub->SubmitJob(&ctx, req, &job).ok()) {
          std::lock_guard<std::mutex> lock(mu);
          acked[key] = job.id();
          ++n_acked;
        }
      }
    });
  }
  for (int i = 0; i < 600 && n_acked < 150; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(::kill(server, SIGKILL), 0);
  ::waitpid(server, nullptr, 0);
  dead = true;
  for (auto& t : clients) t.join();
  ASSERT_GE(acked.size(), 150u);

  port = 0;
  server = StartServer(data, flags, &port);
  ASSERT_GT(port, 0) << ReadLocalFile(data + ".log");
  auto stub = v1::JobService::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  int missing = 0;
  for (const auto& [key, id] : acked) {
    grpc::ClientContext ctx;
    v1::GetJobRequest get;
    get.set_id(id);
    v1::Job job;
    grpc::Status s = stub->GetJob(&ctx, get, &job);
    if (!s.ok() || job.state() != v1::JOB_STATE_QUEUED || job.spec().idempotency_key() != key) ++missing;
  }
  EXPECT_EQ(missing, 0) << "of " << acked.size() << " acknowledged jobs";
  // Retrying an acknowledged submit (same key) finds the stored job.
  const auto& [key, id] = *acked.begin();
  v1::SubmitJobRequest again;
  again.mutable_spec()->set_model("file://" + dir.path() + "/model");
  again.mutable_spec()->set_preset("rtn");
  again.mutable_spec()->mutable_scheme()->set_shorthand("W4A16");
  again.mutable_spec()->set_idempotency_key(key);
  grpc::ClientContext ctx;
  v1::Job job;
  ASSERT_TRUE(stub->SubmitJob(&ctx, again, &job).ok());
  EXPECT_EQ(job.id(), id);
  std::printf("%s: %zu submits acknowledged before SIGKILL, all present after restart\n", GetParam().c_str(),
              acked.size());
  ::kill(server, SIGTERM);
  ::waitpid(server, nullptr, 0);
}

INSTANTIATE_TEST_SUITE_P(Stores, ServerKillTest, ::testing::Values("sqlite", "postgres"),
                         [](const auto& info) { return info.param; });

// The worker's scratch is a 700 KiB tmpfs: the model and data stage, the
// checkpoints do not fit. The job FAILS naming the full disk; the worker
// stays up and the server keeps every job.
TEST(FullDiskTest, AJobThatFillsTheWorkersDiskFailsSayingSo) {
  ScopedTempDir dir;
  const std::string scratch = dir.path() + "/scratch";
  std::filesystem::create_directories(scratch);
  const bool root = geteuid() == 0;
  const std::string probe = std::string(root ? "unshare --mount" : "unshare --user --map-root-user --mount") +
                            " sh -c 'mount -t tmpfs -o size=64k tmpfs " + scratch + "' 2>/dev/null";
  if (std::system(probe.c_str()) != 0) GTEST_SKIP() << "cannot mount a small tmpfs here (needs root or user namespaces)";

  server::ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.db_path = dir.path() + "/jobs.db";
  o.scheduler.validation.file_roots = {dir.path(), std::string(QAAS_SOURCE_DIR) + "/tests/data"};
  o.scheduler.default_output_uri = "file://" + dir.path() + "/store";
  auto srv = server::Server::Start(o);
  ASSERT_TRUE(srv.ok()) << srv.status();
  const std::string address = "127.0.0.1:" + std::to_string((*srv)->port());
  std::string text;
  for (int i = 0; i < 400; ++i) text += "the cat sat on a mat and the dog ran to the park with a big red ball. ";
  WriteLocalFile(dir.path() + "/text.txt", text);

  const std::string cmd = std::string(root ? "exec unshare --mount" : "exec unshare --user --map-root-user --mount") +
                          " sh -c 'mount -t tmpfs -o size=700k tmpfs " + scratch + " && exec " + QAAS_WORKER_BIN +
                          " --server=" + address + " --work_dir=" + scratch +
                          " --name=cramped --poll_wait_ms=200 --metrics_listen='";
  pid_t worker = Spawn({"sh", "-c", cmd}, dir.path() + "/worker.log");

  auto stub = v1::JobService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::SubmitJobRequest req;
  req.mutable_spec()->set_model(std::string("file://") + QAAS_SOURCE_DIR + "/tests/data/tiny-opt");
  req.mutable_spec()->set_preset("gptq");
  req.mutable_spec()->mutable_scheme()->set_shorthand("W4A16g32");
  req.mutable_spec()->mutable_calibration()->set_dataset("file://" + dir.path() + "/text.txt");
  req.mutable_spec()->mutable_calibration()->set_num_samples(4);
  req.mutable_spec()->mutable_calibration()->set_seq_len(32);
  v1::Job job;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->SubmitJob(&ctx, req, &job).ok());
  }
  const v1::Job end = testing::PollJob(stub.get(), job.id(), testing::IsFinalJob, 60);
  EXPECT_EQ(end.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(end.error().find("RESOURCE_EXHAUSTED"), std::string::npos) << end.error();
  EXPECT_TRUE(end.error().find("disk full") != std::string::npos ||
              end.error().find("No space left") != std::string::npos)
      << end.error();
  std::printf("full disk: job %s FAILED: %s\n", job.id().c_str(), end.error().c_str());
  EXPECT_EQ(::waitpid(worker, nullptr, WNOHANG), 0) << "the worker exited: " << ReadLocalFile(dir.path() + "/worker.log");
  ::kill(worker, SIGKILL);
  ::waitpid(worker, nullptr, 0);
}

}  // namespace
}  // namespace qaas
