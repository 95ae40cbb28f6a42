// A whole job through S3: the model and the data in a bucket of the loopback
// Swift (fixture S3Swift, $QAAS_TEST_SWIFT_DIR), the artifact, checkpoints and
// report written back to it, the report served by the scheduler from S3.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/server.h"
#include "storage/s3_store.h"
#include "tests/test_util.h"
#include "tests/worker/job_polling.h"
#include "worker/worker.h"

namespace qaas {
namespace {

using testing::ReadLocalFile;
using testing::ScopedTempDir;

TEST(S3JobTest, AJobReadsAndWritesS3) {
  const char* swift_dir = std::getenv("QAAS_TEST_SWIFT_DIR");
  if (!swift_dir || !testing::LocalPathExists(std::string(swift_dir) + "/port")) {
    GTEST_SKIP() << "no loopback Swift (run through ctest, which starts one: fixture S3Swift)";
  }
  storage::S3Config c;
  c.endpoint = "http://127.0.0.1:" + ReadLocalFile(std::string(swift_dir) + "/port");
  while (!c.endpoint.empty() && c.endpoint.back() == '\n') c.endpoint.pop_back();
  c.path_style = true;
  c.access_key = "test:tester";
  c.secret_key = "testing";
  storage::SetDefaultS3Config(c);
  const std::string bucket = "qaas-job-" + std::to_string(::getpid());
  auto store = storage::S3Store::Create(bucket, "", c);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateBucket().ok());
  const std::string model = std::string(QAAS_SOURCE_DIR) + "/tests/data/tiny-opt";
  for (const auto& e : std::filesystem::directory_iterator(model)) {
    ASSERT_TRUE((*store)->WriteFromFile("models/tiny-opt/" + e.path().filename().string(), e.path()).ok());
  }
  std::string text;
  for (int i = 0; i < 300; ++i) text += "the cat sat on a mat and the dog ran to the park with a big red ball.\n";
  ASSERT_TRUE((*store)->Write("data/text.txt", text).ok());

  ScopedTempDir dir;
  server::ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.db_path = dir.path() + "/jobs.db";
  o.scheduler.default_output_uri = "s3://" + bucket + "/jobs";
  auto srv = server::Server::Start(o);
  ASSERT_TRUE(srv.ok()) << srv.status();
  worker::WorkerOptions wo;
  wo.name = "s3";
  wo.work_dir = dir.path() + "/worker";
  wo.poll_wait_ms = 200;
  worker::Worker w((*srv)->InProcessChannel(), wo);
  std::thread runner([&] { w.Run(); });

  auto jobs = v1::JobService::NewStub((*srv)->InProcessChannel());
  v1::SubmitJobRequest req;
  v1::JobSpec* spec = req.mutable_spec();
  spec->set_model("s3://" + bucket + "/models/tiny-opt");
  spec->set_preset("gptq");
  spec->mutable_scheme()->set_shorthand("W4A16g32");
  spec->mutable_calibration()->set_dataset("s3://" + bucket + "/data/text.txt");
  spec->mutable_calibration()->set_num_samples(4);
  spec->mutable_calibration()->set_seq_len(32);
  auto* e = spec->add_evaluation();
  e->set_dataset("s3://" + bucket + "/data/text.txt");
  e->set_seq_len(64);
  v1::Job job;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(jobs->SubmitJob(&ctx, req, &job).ok());
  }
  const v1::Job end = testing::PollJob(jobs.get(), job.id(), testing::IsFinalJob, 60);
  w.Stop();
  runner.join();
  ASSERT_EQ(end.state(), v1::JOB_STATE_SUCCEEDED) << end.error();
  EXPECT_EQ(end.result().artifact_uri(), "s3://" + bucket + "/jobs/jobs/" + job.id() + "/artifact");
  const std::string prefix = "jobs/jobs/" + job.id() + "/";
  auto listed = (*store)->List(prefix);
  ASSERT_TRUE(listed.ok());
  std::vector<std::string> keys;
  for (const auto& i : *listed) keys.push_back(i.key.substr(prefix.size()));
  for (const char* want : {"artifact/model.safetensors", "artifact/config.json", "artifact/qaas_manifest.json",
                           "checkpoints/layer-0.safetensors", "checkpoints/state-1.safetensors", "report.json"}) {
    EXPECT_NE(std::find(keys.begin(), keys.end(), want), keys.end()) << want;
  }
  grpc::ClientContext ctx;
  v1::GetReportRequest rr;
  rr.set_id(job.id());
  v1::GetReportResponse report;
  ASSERT_TRUE(jobs->GetReport(&ctx, rr, &report).ok());
  EXPECT_EQ(nlohmann::json::parse(report.report_json())["scheme"], "W4A16g32");
}

}  // namespace
}  // namespace qaas
