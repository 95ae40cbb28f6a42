// End to end over a real gRPC server on a loopback port: JobService clients,
// workers in this process or as separate qaas-worker processes, the file://
// store, and the Prometheus endpoint scraped over HTTP.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <set>
#include <functional>
#include <fstream>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>
#include "absl/strings/ascii.h"
#include "nlohmann/json.hpp"
#include <prometheus/registry.h>
#include "qaas/v1/job_service.grpc.pb.h"
#include "quant/model/random_model.h"
#include "quant/pipeline.h"
#include "quant/util/device.h"
#include "server/server.h"
#include "storage/sha256.h"
#include "tests/test_util.h"
#include "tests/worker/job_polling.h"
#include "worker/worker.h"

namespace qaas {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::SharedDir;
using ::qaas::testing::WriteLocalFile;
namespace fs = std::filesystem;

std::string HttpGet(int port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  ::send(fd, req.data(), req.size(), 0);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// Text with enough variety for a tokenizer and many evaluation windows.
std::string SyntheticText(size_t words, unsigned seed) {
  static const char* kWords[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to",
                                 "park", "with", "big", "red", "ball", "she", "said", "hello", "sun", "was"};
  std::mt19937 rng(seed);
  std::string s;
  for (size_t i = 0; i < words; ++i) {
    s += kWords[rng() % 20];
    s += (i % 12 == 11) ? ".\n" : " ";
  }
  return s;
}

class EndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path();
    server::ServerOptions o;
    o.listen_address = "127.0.0.1:0";
    o.metrics_address = "127.0.0.1:0";
    o.db_path = root_ + "/jobs.db";
    o.scheduler.lease_duration_ms = 1500;
    o.scheduler.heartbeat_interval_ms = 300;
    o.scheduler.default_output_uri = "file://" + root_ + "/store";
    o.scheduler.validation.file_roots = {root_};
    if (!SharedDir().empty()) o.scheduler.validation.file_roots.push_back(SharedDir());
    o.reaper_interval_ms = 100;
    auto s = server::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    jobs_ = v1::JobService::NewStub(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
    WriteLocalFile(root_ + "/text.txt", SyntheticText(20000, 1));
  }
  void TearDown() override {
    StopWorker();
    if (server_) server_->Shutdown(1000);
  }

  // A random LLaMA under root_/<name>.
  std::string MakeModel(const std::string& name, int layers, int hidden, int context) {
    quant::RandomModelOptions m;
    m.num_layers = layers;
    m.hidden_size = hidden;
    m.intermediate_size = hidden * 2;
    m.num_heads = 4;
    m.num_kv_heads = 2;
    m.vocab_size = 320;
    m.max_position_embeddings = context;
    m.tokenizer_text = SyntheticText(5000, 2);
    const std::string dir = root_ + "/" + name;
    auto st = quant::WriteRandomLlama(m, dir);
    EXPECT_TRUE(st.ok()) << st;
    return dir;
  }

  void StartWorker(prometheus::Registry* registry = nullptr) {
    worker::WorkerOptions wo;
    wo.name = "test";
    wo.work_dir = root_ + "/worker";
    wo.poll_wait_ms = 200;
    wo.registry = registry;
    worker_ = std::make_unique<worker::Worker>(grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()), wo);
    worker_thread_ = std::thread([this] { worker_->Run(); });
  }
  void StopWorker() {
    if (!worker_) return;
    worker_->Stop();
    worker_thread_.join();
    worker_.reset();
  }

  // A qaas-worker process serving this server, scratch under root_/<name>.
  pid_t SpawnWorker(const std::string& name, std::vector<std::string> flags = {}) {
    flags.insert(flags.begin(), {QAAS_WORKER_BIN, "--server=" + address_, "--work_dir=" + root_ + "/" + name,
                                 "--name=" + name, "--poll_wait_ms=200", "--metrics_listen="});
    pid_t pid = fork();
    if (pid == 0) {
      std::vector<char*> argv;
      for (auto& f : flags) argv.push_back(f.data());
      argv.push_back(nullptr);
      execv(QAAS_WORKER_BIN, argv.data());
      _exit(127);
    }
    return pid;
  }
  // Waits up to `timeout_s` for `pid` to exit; its wait status, or -1.
  static int Reap(pid_t pid, int timeout_s) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid, &status, WNOHANG) == pid) return status;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return -1;
  }

  grpc::Status Submit(const v1::JobSpec& spec, v1::Job* job) {
    grpc::ClientContext ctx;
    v1::SubmitJobRequest req;
    *req.mutable_spec() = spec;
    return jobs_->SubmitJob(&ctx, req, job);
  }
  v1::Job Get(const std::string& id) { return testing::GetJob(jobs_.get(), id); }
  // Polls until `done(job)` or the timeout; returns the last job seen.
  // Runs `spec` with 4 calibration windows of 64 tokens of text.txt on a
  // worker; the report of the job, or null (with a test failure) when it did
  // not succeed. `submitted`, when given, receives the job as submitted.
  nlohmann::json RunCalibrated(v1::JobSpec spec, v1::Job* submitted = nullptr) {
    spec.mutable_calibration()->set_dataset("file://" + root_ + "/text.txt");
    spec.mutable_calibration()->set_num_samples(4);
    spec.mutable_calibration()->set_seq_len(64);
    v1::Job job;
    grpc::Status s = Submit(spec, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) return nullptr;
    if (submitted != nullptr) *submitted = job;
    StartWorker();
    v1::Job done = WaitFor(job.id(), Final);
    EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
    if (done.state() != v1::JOB_STATE_SUCCEEDED) return nullptr;
    return nlohmann::json::parse(ReadLocalFile(root_ + "/store/jobs/" + job.id() + "/report.json"));
  }
  v1::Job WaitFor(const std::string& id, const std::function<bool(const v1::Job&)>& done, int timeout_s = 120) {
    return testing::PollJob(jobs_.get(), id, done, timeout_s);
  }
  static bool Final(const v1::Job& j) { return testing::IsFinalJob(j); }
  // Streams WatchJob for `id` until the stream ends, handing each event's job
  // to `on_event`; returns the stream's status.
  grpc::Status Watch(const std::string& id, const std::function<void(const v1::Job&)>& on_event = nullptr) {
    grpc::ClientContext ctx;
    v1::WatchJobRequest req;
    req.set_id(id);
    auto reader = jobs_->WatchJob(&ctx, req);
    v1::JobEvent ev;
    while (reader->Read(&ev)) {
      if (on_event) on_event(ev.job());
    }
    return reader->Finish();
  }

  v1::JobSpec Spec(const std::string& model_dir, const std::string& scheme = "W4A16g128") {
    v1::JobSpec s;
    s.set_model("file://" + model_dir);
    s.set_preset("rtn");
    s.mutable_scheme()->set_shorthand(scheme);
    return s;
  }
  // A job that takes a few seconds: a deep random model evaluated on every
  // window of the synthetic text, so a test can act while it runs.
  v1::JobSpec SlowSpec(int layers) {
    v1::JobSpec s = Spec(MakeModel("deep", layers, 64, 256));
    auto* e = s.add_evaluation();
    e->set_dataset("file://" + root_ + "/text.txt");
    e->set_seq_len(256);
    return s;
  }

  ScopedTempDir dir_;
  // Outlives the worker (members are destroyed after TearDown stops it): the
  // worker thread updates its metrics until it is joined.
  prometheus::Registry worker_registry_;
  std::string root_;
  std::unique_ptr<server::Server> server_;
  std::string address_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<worker::Worker> worker_;
  std::thread worker_thread_;
};

TEST_F(EndToEndTest, JobRunsThroughTheServiceAndWatchSeesEveryState) {
  // The real model when ../shared is there; a random one otherwise.
  std::string model = SharedDir().empty() ? MakeModel("model", 2, 64, 256) : SharedDir() + "/models/stories260k";
  std::string text = SharedDir().empty() ? root_ + "/text.txt" : SharedDir() + "/data/tinystories/valid-sample.txt";
  v1::JobSpec spec = Spec(model);
  spec.mutable_calibration()->set_dataset("file://" + text);
  spec.mutable_calibration()->set_num_samples(8);
  spec.mutable_calibration()->set_seq_len(128);
  auto* eval = spec.add_evaluation();
  eval->set_dataset("file://" + text);
  eval->set_seq_len(256);
  eval->set_max_windows(8);
  v1::Job job;
  ASSERT_TRUE(Submit(spec, &job).ok());

  // Watch from before a worker exists, so QUEUED, RUNNING and SUCCEEDED all pass by.
  std::vector<v1::JobState> states;
  int max_layer_seen = 0;
  std::thread watcher([&] {
    EXPECT_TRUE(Watch(job.id(), [&](const v1::Job& j) {
                  if (states.empty() || states.back() != j.state()) states.push_back(j.state());
                  max_layer_seen = std::max(max_layer_seen, j.progress().layer());
                }).ok());
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  StartWorker();
  watcher.join();

  ASSERT_GE(states.size(), 3u);
  EXPECT_EQ(states.front(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(states[1], v1::JOB_STATE_RUNNING);
  EXPECT_EQ(states.back(), v1::JOB_STATE_SUCCEEDED) << Get(job.id()).error();
  EXPECT_GE(max_layer_seen, 1);

  v1::Job done = Get(job.id());
  const std::string out = root_ + "/store/jobs/" + job.id();
  EXPECT_EQ(done.result().artifact_uri(), "file://" + out + "/artifact");
  for (const char* f : {"artifact/model.safetensors", "artifact/config.json", "artifact/qaas_manifest.json",
                        "artifact/tokenizer.model", "report.json", "report.md"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  auto report = nlohmann::json::parse(ReadLocalFile(out + "/report.json"));
  EXPECT_EQ(report["scheme"], "W4A16g128");
  ASSERT_EQ(report["evaluations"].size(), 1u);
  EXPECT_EQ(report["evaluations"][0]["windows"], 8);
  EXPECT_GT(report["evaluations"][0]["perplexity_quantized"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(report["evaluations"][0]["perplexity_original"].get<double>(), done.result().perplexity_original());

  grpc::ClientContext ctx;
  v1::GetReportRequest rr;
  rr.set_id(job.id());
  v1::GetReportResponse resp;
  ASSERT_TRUE(jobs_->GetReport(&ctx, rr, &resp).ok());
  EXPECT_EQ(nlohmann::json::parse(resp.report_json()), report);

  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("qaas_jobs_submitted_total{method=\"rtn\"} 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("qaas_jobs_finished_total{method=\"rtn\",status=\"succeeded\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("qaas_job_duration_seconds_count{method=\"rtn\",status=\"succeeded\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.find("qaas_job_perplexity_increase_ratio_count{method=\"rtn\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("qaas_workers_active 1"), std::string::npos);
  EXPECT_NE(metrics.find("qaas_jobs_running 0"), std::string::npos);
}

// A transform recipe with options and an activation/KV scheme reaches the
// pipeline through the API: the report shows the options were applied.
TEST_F(EndToEndTest, RptqRecipeWithOptionsRunsOverTheApi) {
  v1::JobSpec spec = Spec(MakeModel("model", 2, 64, 256), "W4A4KV4");
  spec.clear_preset();
  auto* rptq = spec.add_recipe();
  rptq->set_method("rptq");
  for (int c : {8, 4, 2, 8, 6}) rptq->mutable_rptq()->add_clusters(c);
  auto* gptq = spec.add_recipe();
  gptq->set_method("gptq");
  gptq->mutable_gptq()->set_damp(0.05);
  const nlohmann::json report = RunCalibrated(spec);
  ASSERT_FALSE(report.is_null());
  EXPECT_EQ(report["scheme"], "W4A4KV4");
  EXPECT_EQ(report["recipe"], nlohmann::json({"rptq", "gptq"}));
  const auto& clusters = report["blocks"][0]["transforms"]["rptq"]["clusters"];
  EXPECT_EQ(clusters["attn_in"], 8);
  EXPECT_EQ(clusters["attn_out"], 2);  // R3, the third count
  EXPECT_EQ(clusters["mlp_hidden"], 6);
  EXPECT_EQ(report["layers"][0]["details"]["damp"].get<double>() > 0, true);
}

// OmniQuant's options reach the pipeline: the report shows the epochs ran
// and LET trained (activations are quantized).
TEST_F(EndToEndTest, OmniQuantWithOptionsRunsOverTheApi) {
  v1::JobSpec spec = Spec(MakeModel("model", 2, 64, 256), "W4A8KV4");
  spec.clear_preset();
  auto* step = spec.add_recipe();
  step->set_method("omniquant");
  step->mutable_omniquant()->set_epochs(3);
  step->mutable_omniquant()->set_lwc_lr(0.02);
  const nlohmann::json report = RunCalibrated(spec);
  ASSERT_FALSE(report.is_null());
  EXPECT_EQ(report["recipe"], nlohmann::json({"omniquant"}));
  for (const auto& block : report["blocks"]) {
    const auto& omni = block["transforms"]["omniquant"];
    EXPECT_EQ(omni["epochs"], 3);
    EXPECT_EQ(omni["loss"].size(), 3u);
    EXPECT_TRUE(omni.contains("let")) << omni;  // activations are quantized: LET ran
  }
  EXPECT_EQ(report["layers"][0]["method"], "omniquant");
}

// The artifact options reach the worker: the server resolves "auto" to
// compressed-tensors for W8A8_sym and stores it in the job, and the worker
// writes that format, sharded at the job's max_shard_bytes.
TEST_F(EndToEndTest, ArtifactFormatAndShardsReachTheWorker) {
  v1::JobSpec spec = Spec(MakeModel("model", 2, 64, 256), "W8A8_sym");
  spec.set_preset("smoothquant-rtn");
  spec.mutable_artifact()->set_max_shard_bytes(30000);
  v1::Job job;
  const nlohmann::json report = RunCalibrated(spec, &job);
  ASSERT_FALSE(report.is_null());
  EXPECT_EQ(job.spec().artifact().format(), "compressed-tensors");
  const std::string artifact = root_ + "/store/jobs/" + job.id() + "/artifact";
  const nlohmann::json config = nlohmann::json::parse(ReadLocalFile(artifact + "/config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "compressed-tensors");
  EXPECT_EQ(config["quantization_config"]["format"], "int-quantized");
  EXPECT_EQ(report["artifact_format"], "compressed-tensors");
  const nlohmann::json index = nlohmann::json::parse(ReadLocalFile(artifact + "/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& entry : index["weight_map"].items()) shards.insert(entry.value().get<std::string>());
  EXPECT_GE(shards.size(), 2u);
  for (const std::string& f : shards) EXPECT_TRUE(std::filesystem::exists(artifact + "/" + f)) << f;

  // What the format cannot store is refused at submit, naming why.
  v1::JobSpec rptq = Spec(MakeModel("model2", 1, 64, 256), "W4A4");
  rptq.set_preset("rptq");
  rptq.mutable_artifact()->set_format("compressed-tensors");
  rptq.mutable_calibration()->set_dataset("file://" + root_ + "/text.txt");
  v1::Job refused;
  const grpc::Status s = Submit(rptq, &refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("artifact.format"), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("RPTQ"), std::string::npos) << s.error_message();
}

// Zero-shot tasks over the API: the task files staged from the job's
// tasks.data, scored before and after, in report.json, report.md and the
// job's result; a request longer than max_length + 1 tokens truncated and
// counted; an unknown task refused at submit naming it; a task file with a
// missing field fails the job naming the file, line and field.
TEST_F(EndToEndTest, ZeroShotTasksRunOverTheApiAndBadTaskInputIsNamed) {
  fs::create_directories(root_ + "/tasks");
  std::string piqa, wino, lambada;
  for (int i = 0; i < 6; ++i) {
    // The last goal is long: with max_length 48 its requests are cut from the left.
    const std::string goal = i == 5 ? SyntheticText(400, 7) : "how do you open a door";
    piqa += nlohmann::json({{"goal", goal}, {"sol1", "push it"}, {"sol2", "sing to it"}, {"label", i % 2}}).dump() + "\n";
    wino += nlohmann::json({{"sentence", "The cat sat on the mat because _ was tired."},
                            {"option1", "the cat"}, {"option2", "the mat"}, {"answer", i % 2 ? "2" : "1"}})
                .dump() +
            "\n";
    lambada += nlohmann::json({{"text", "once upon a time there was a little girl who liked to play"}}).dump() + "\n";
  }
  WriteLocalFile(root_ + "/tasks/piqa.validation.jsonl", piqa);
  WriteLocalFile(root_ + "/tasks/winogrande.validation.jsonl", wino);
  WriteLocalFile(root_ + "/tasks/lambada_openai.test.jsonl", lambada);
  v1::JobSpec spec = Spec(MakeModel("model", 2, 64, 256));
  for (const char* t : {"piqa", "winogrande", "lambada_openai"}) spec.mutable_tasks()->add_names(t);
  spec.mutable_tasks()->set_data("file://" + root_ + "/tasks");
  spec.mutable_tasks()->set_max_length(48);
  v1::Job job;
  const nlohmann::json report = RunCalibrated(spec, &job);
  ASSERT_FALSE(report.is_null());
  const nlohmann::json& tasks = report["tasks"];
  EXPECT_EQ(tasks["max_length"], 48);
  ASSERT_EQ(tasks["results"].size(), 3u);
  EXPECT_GT(tasks["tokens_per_second"].get<double>(), 0);
  for (const auto& r : tasks["results"]) {
    EXPECT_EQ(r["docs"], 6) << r;
    EXPECT_TRUE(r["metrics"].contains("acc")) << r;
    for (const auto& [name, m] : r["metrics"].items()) {
      EXPECT_TRUE(m["original"].is_number() && m["quantized"].is_number()) << r;
    }
  }
  EXPECT_EQ(tasks["results"][0]["task"], "piqa");
  EXPECT_EQ(tasks["results"][0]["data"], "file://" + root_ + "/tasks/piqa.validation.jsonl");
  EXPECT_TRUE(tasks["results"][0]["metrics"].contains("acc_norm"));
  EXPECT_EQ(tasks["results"][0]["truncated_docs"], 1);
  EXPECT_EQ(tasks["results"][0]["truncated_requests"], 2);
  EXPECT_EQ(tasks["results"][1]["truncated_requests"], 0);
  EXPECT_TRUE(tasks["results"][2]["metrics"].contains("perplexity"));
  const std::string md = ReadLocalFile(root_ + "/store/jobs/" + job.id() + "/report.md");
  EXPECT_NE(md.find("| piqa | 6 | acc_norm |"), std::string::npos) << md;
  EXPECT_NE(md.find("piqa: 2 requests of 1 documents were longer than max_length + 1 tokens"), std::string::npos) << md;
  const v1::Job done = Get(job.id());
  ASSERT_EQ(done.result().tasks_size(), 3);
  EXPECT_EQ(done.result().tasks(1).task(), "winogrande");
  EXPECT_EQ(done.result().tasks(1).docs(), 6);
  EXPECT_DOUBLE_EQ(done.result().tasks(1).acc_original(),
                   tasks["results"][1]["metrics"]["acc"]["original"].get<double>());

  // An unknown task: refused at submit, naming it.
  v1::JobSpec unknown = Spec(root_ + "/model");
  unknown.mutable_tasks()->add_names("squad");
  unknown.mutable_tasks()->set_data("file://" + root_ + "/tasks");
  v1::Job refused;
  grpc::Status st = Submit(unknown, &refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("tasks.names[0]: unknown task 'squad'"), std::string::npos) << st.error_message();
  // A task whose file is not there: refused at submit, naming the file.
  unknown.mutable_tasks()->set_names(0, "boolq");
  st = Submit(unknown, &refused);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("boolq.validation.jsonl"), std::string::npos) << st.error_message();

  // A document without a field: the job fails naming the file, line and field.
  fs::create_directories(root_ + "/badtasks");
  WriteLocalFile(root_ + "/badtasks/piqa.validation.jsonl",
                 piqa.substr(0, piqa.find('\n') + 1) + R"({"goal": "g", "sol1": "a", "label": 0})" "\n");
  v1::JobSpec bad = Spec(root_ + "/model");
  bad.mutable_tasks()->add_names("piqa");
  bad.mutable_tasks()->set_data("file://" + root_ + "/badtasks/");
  v1::Job failing;
  ASSERT_TRUE(Submit(bad, &failing).ok());
  const v1::Job end = WaitFor(failing.id(), Final);
  EXPECT_EQ(end.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(end.error().find("file://" + root_ + "/badtasks/piqa.validation.jsonl line 2: field 'sol2' is missing"),
            std::string::npos)
      << end.error();
}

// The calibration's expert options reach the pipeline: a minimum above the
// calibration's token count sends every linear to the RTN fallback, and the
// report records both options.
TEST_F(EndToEndTest, CalibrationTokenMinimumAndExpertCalibrationReachThePipeline) {
  v1::JobSpec spec = Spec(MakeModel("model", 1, 64, 256), "W4A16g32");
  spec.set_preset("gptq");
  spec.mutable_calibration()->set_min_calibration_tokens(1000000);
  spec.mutable_calibration()->set_expert_calibration("all_tokens");
  const nlohmann::json report = RunCalibrated(spec);
  ASSERT_FALSE(report.is_null());
  EXPECT_EQ(report["calibration"]["min_calibration_tokens"], 1000000);
  EXPECT_EQ(report["calibration"]["expert_calibration"], "all_tokens");
  ASSERT_FALSE(report["layers"].empty());
  for (const auto& l : report["layers"]) {
    EXPECT_EQ(l["method"], "rtn") << l;
    EXPECT_TRUE(l["details"].contains("fallback")) << l;
  }
}

// A mixture of experts' layer advances the job's progress expert by expert
// and names the expert in the step; OmniQuant's epochs likewise.
TEST(DescribeProgressTest, ExpertsAndEpochsAdvanceTheFractionWithinALayer) {
  quant::PipelineProgress p{1, 4, "quantizing"};
  const v1::Progress layer = worker::DescribeProgress(p);
  EXPECT_EQ(layer.step(), "quantizing");
  EXPECT_DOUBLE_EQ(layer.fraction(), 0.05 + 0.85 * 1 / 4);
  EXPECT_EQ(layer.num_experts(), 0);
  p.expert = 5;
  p.num_experts = 8;
  const v1::Progress expert = worker::DescribeProgress(p);
  EXPECT_EQ(expert.step(), "quantizing (expert 5/8)");
  EXPECT_EQ(expert.expert(), 5);
  EXPECT_EQ(expert.num_experts(), 8);
  EXPECT_EQ(expert.layer(), 1);
  EXPECT_DOUBLE_EQ(expert.fraction(), 0.05 + 0.85 * (1 + 4.0 / 8) / 4);
  quant::PipelineProgress t{2, 4, "training", 3, 10, 0.5};
  const v1::Progress epoch = worker::DescribeProgress(t);
  EXPECT_EQ(epoch.step(), "training (epoch 3/10, loss 0.5)");
  EXPECT_DOUBLE_EQ(epoch.fraction(), 0.05 + 0.85 * 2.3 / 4);
}

TEST_F(EndToEndTest, BadRequestsAreRejectedAtSubmitNamingTheProblem) {
  const std::string model = MakeModel("model", 1, 32, 128);
  struct Case {
    std::function<void(v1::JobSpec&)> edit;
    grpc::StatusCode code;
    std::string mention;
  };
  std::vector<Case> cases = {
      {[](v1::JobSpec& s) { s.mutable_scheme()->set_shorthand("W4A16x9"); }, grpc::INVALID_ARGUMENT, "x9"},
      {[&](v1::JobSpec& s) { s.set_model("file://" + root_ + "/missing"); }, grpc::INVALID_ARGUMENT, "does not exist"},
      {[&](v1::JobSpec& s) { s.set_model("file://" + root_ + "/../../etc"); }, grpc::INVALID_ARGUMENT, "outside"},
      {[](v1::JobSpec& s) {
         s.clear_preset();
         s.add_recipe()->set_method("omniquant");
       },
       grpc::INVALID_ARGUMENT, "omniquant calibrates"},
      {[](v1::JobSpec& s) { s.set_preset("gptq"); }, grpc::INVALID_ARGUMENT, "calibration.dataset"},
      {[](v1::JobSpec& s) { s.set_model(""); }, grpc::INVALID_ARGUMENT, "model"},
  };
  for (const auto& c : cases) {
    v1::JobSpec spec = Spec(model);
    c.edit(spec);
    v1::Job job;
    grpc::Status st = Submit(spec, &job);
    EXPECT_EQ(st.error_code(), c.code) << st.error_message();
    EXPECT_NE(st.error_message().find(c.mention), std::string::npos) << st.error_message();
  }
  grpc::ClientContext ctx;
  v1::ListJobsRequest req;
  v1::ListJobsResponse resp;
  ASSERT_TRUE(jobs_->ListJobs(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 0);  // nothing was stored
}

TEST_F(EndToEndTest, BadModelsAndDataFailTheJobWithAReadableReason) {
  const std::string good = MakeModel("good", 1, 32, 128);
  // Truncated weights.
  fs::copy(good, root_ + "/truncated", fs::copy_options::recursive);
  fs::resize_file(root_ + "/truncated/model.safetensors", fs::file_size(good + "/model.safetensors") - 100);
  // A header that lies about a tensor's size.
  fs::copy(good, root_ + "/lying", fs::copy_options::recursive);
  {
    std::string bytes = ReadLocalFile(good + "/model.safetensors");
    const size_t at = bytes.find("\"shape\":[32]");
    ASSERT_NE(at, std::string::npos);
    bytes.replace(at, 12, "\"shape\":[31]");
    WriteLocalFile(root_ + "/lying/model.safetensors", bytes);
  }
  // config.json that disagrees with the stored shapes.
  fs::copy(good, root_ + "/mismatch", fs::copy_options::recursive);
  {
    auto config = nlohmann::json::parse(ReadLocalFile(good + "/config.json"));
    config["intermediate_size"] = 80;
    WriteLocalFile(root_ + "/mismatch/config.json", config.dump());
  }
  WriteLocalFile(root_ + "/empty.txt", "\n\n");
  StartWorker();

  struct Case {
    v1::JobSpec spec;
    std::string mention;
  };
  std::vector<Case> cases;
  cases.push_back({Spec(root_ + "/truncated"), "truncated"});
  cases.push_back({Spec(root_ + "/lying"), "model.layers.0"});
  cases.push_back({Spec(root_ + "/mismatch"), "config.json implies"});
  {
    v1::JobSpec s = Spec(good);
    s.mutable_calibration()->set_dataset("file://" + root_ + "/empty.txt");
    cases.push_back({s, "empty"});
  }
  {
    // Knowable at submit: refused there, before any worker sees it.
    v1::JobSpec s = Spec(good);
    auto* e = s.add_evaluation();
    e->set_dataset("file://" + root_ + "/text.txt");
    e->set_seq_len(4096);
    v1::Job refused;
    const grpc::Status st = Submit(s, &refused);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("exceeds the model's context"), std::string::npos) << st.error_message();
  }
  for (const auto& c : cases) {
    v1::Job job;
    ASSERT_TRUE(Submit(c.spec, &job).ok());
    v1::Job end = WaitFor(job.id(), Final);
    EXPECT_EQ(end.state(), v1::JOB_STATE_FAILED) << c.mention;
    EXPECT_NE(end.error().find(c.mention), std::string::npos) << "want '" << c.mention << "' in: " << end.error();
  }
  // The service keeps serving: a good job still succeeds.
  v1::Job ok;
  ASSERT_TRUE(Submit(Spec(good), &ok).ok());
  EXPECT_EQ(WaitFor(ok.id(), Final).state(), v1::JOB_STATE_SUCCEEDED);
}

// qaasctl: options given with a preset apply to its steps (they were once
// dropped silently), a preset and a recipe together are refused before any
// call, and errors name the status as docs/api.md does.
TEST_F(EndToEndTest, QaasctlAppliesPresetOptionsAndRefusesConflicts) {
  const std::string model = MakeModel("cli", 2, 64, 256);
  auto run = [&](const std::string& args, std::string* out) {
    const std::string cmd = std::string(QAASCTL_BIN) + " --server=" + address_ + " submit --model file://" + model +
                            " --scheme W4A16g128 --calib file://" + root_ + "/text.txt " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    out->clear();
    while (size_t n = fread(buf, 1, sizeof buf, p)) out->append(buf, n);
    return WEXITSTATUS(pclose(p));
  };
  std::string out;
  ASSERT_EQ(run("--preset gptq --damp 0.05 --act_order", &out), 0) << out;
  const size_t id_at = out.find("\"id\": \"");
  ASSERT_NE(id_at, std::string::npos) << out;
  const std::string id = out.substr(id_at + 7, out.find('"', id_at + 7) - id_at - 7);
  const v1::JobSpec spec = Get(id).spec();
  ASSERT_EQ(spec.recipe_size(), 1) << spec.DebugString();
  EXPECT_EQ(spec.recipe(0).method(), "gptq");
  EXPECT_DOUBLE_EQ(spec.recipe(0).gptq().damp(), 0.05);
  EXPECT_TRUE(spec.recipe(0).gptq().act_order());

  EXPECT_EQ(run("--preset gptq --recipe rtn", &out), 2);
  EXPECT_NE(out.find("give --preset or --recipe, not both"), std::string::npos) << out;
  EXPECT_EQ(run("--preset rtn --damp 0.05", &out), 2);
  EXPECT_NE(out.find("no step of the preset 'rtn' takes it"), std::string::npos) << out;
  EXPECT_EQ(run("--preset rtn --scheme Wbogus", &out), 2);
  EXPECT_NE(out.find("qaasctl: INVALID_ARGUMENT: "), std::string::npos) << out;
  // A non-empty output: refused unless --overwrite.
  fs::create_directories(root_ + "/taken");
  WriteLocalFile(root_ + "/taken/report.json", "{}");
  EXPECT_EQ(run("--preset rtn --output " + root_ + "/taken", &out), 2);
  EXPECT_NE(out.find("already holds 1 objects"), std::string::npos) << out;
  EXPECT_EQ(run("--preset rtn --output " + root_ + "/taken --overwrite", &out), 0) << out;

  // `list` pages with the token it prints, takes states in any case and
  // shows each job's methods. Two jobs are queued here (no worker runs).
  auto ctl = [&](const std::string& args, std::string* out) {
    const std::string cmd = std::string(QAASCTL_BIN) + " --server=" + address_ + " " + args + " 2>&1";
    FILE* p = popen(cmd.c_str(), "r");
    char buf[4096];
    out->clear();
    while (size_t n = fread(buf, 1, sizeof buf, p)) out->append(buf, n);
    return WEXITSTATUS(pclose(p));
  };
  ASSERT_EQ(ctl("list --state Queued,job_state_RUNNING --page_size 1", &out), 0) << out;
  const std::string marker = "--page_token ";
  const size_t token_at = out.find(marker);
  ASSERT_NE(token_at, std::string::npos) << out;
  const std::string token = out.substr(token_at + marker.size(), out.find(',', token_at) - token_at - marker.size());
  const std::string first_page = out;
  ASSERT_EQ(ctl("list --state queued --page_size 1 --page_token " + token, &out), 0) << out;
  EXPECT_EQ(out.find(marker), std::string::npos) << out;  // the last page
  const std::string both = first_page + out;
  EXPECT_NE(both.find(id), std::string::npos) << both;
  EXPECT_NE(both.find(" gptq "), std::string::npos) << both;
  EXPECT_NE(both.find(" rtn "), std::string::npos) << both;
  ASSERT_EQ(ctl("list --state failed", &out), 0) << out;
  EXPECT_EQ(out.find("QUEUED"), std::string::npos) << out;
  EXPECT_EQ(ctl("list --state finished", &out), 2) << out;
  EXPECT_NE(out.find("unknown --state 'finished'"), std::string::npos) << out;
}

// An output replaced by a later job given `overwrite`: nothing the first job
// left stays in it, and the first job's report is no longer returned as if
// it were its own (it would be the second job's).
TEST_F(EndToEndTest, OverwriteReplacesTheOutputAndReportsStayTheirJobs) {
  const std::string model = MakeModel("m", 2, 64, 256);
  const std::string out = root_ + "/shared-out";
  auto report_of = [&](const std::string& id, std::string* json) {
    grpc::ClientContext ctx;
    v1::GetReportRequest req;
    req.set_id(id);
    v1::GetReportResponse resp;
    grpc::Status s = jobs_->GetReport(&ctx, req, &resp);
    *json = resp.report_json();
    return s;
  };
  v1::JobSpec spec = Spec(model, "W4A16g128");
  spec.set_output("file://" + out);
  v1::Job first;
  ASSERT_TRUE(Submit(spec, &first).ok());
  StartWorker();
  ASSERT_EQ(WaitFor(first.id(), Final).state(), v1::JOB_STATE_SUCCEEDED);
  std::string json;
  ASSERT_TRUE(report_of(first.id(), &json).ok());
  EXPECT_EQ(json, ReadLocalFile(out + "/report.json"));
  WriteLocalFile(out + "/artifact/left-over.bin", "from an earlier run");

  spec.mutable_scheme()->set_shorthand("W8A16");
  v1::Job second;
  grpc::Status refused = Submit(spec, &second);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << refused.error_message();
  spec.set_overwrite(true);
  ASSERT_TRUE(Submit(spec, &second).ok());
  ASSERT_EQ(WaitFor(second.id(), Final).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(fs::exists(out + "/artifact/left-over.bin"));
  ASSERT_TRUE(report_of(second.id(), &json).ok());
  EXPECT_EQ(json, ReadLocalFile(out + "/report.json"));
  EXPECT_NE(json.find("W8A16"), std::string::npos);
  const grpc::Status gone = report_of(first.id(), &json);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(gone.error_message().find("no longer job '" + first.id() + "''s"), std::string::npos)
      << gone.error_message();
}

// Live progress: WatchJob events carry layer i of N, the step, elapsed time
// and an ETA while the job runs, and `qaasctl watch` shows them.
TEST_F(EndToEndTest, WatchShowsLiveProgressWithAnEta) {
  v1::Job job;
  ASSERT_TRUE(Submit(SlowSpec(16), &job).ok());
  const std::string cmd = std::string(QAASCTL_BIN) + " --server=" + address_ + " watch " + job.id() + " 2>&1";
  std::string watch_output;
  int watch_status = -1;
  std::thread cli([&] {
    FILE* p = popen(cmd.c_str(), "r");
    ASSERT_NE(p, nullptr);
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, p)) watch_output.append(buf, n);
    watch_status = pclose(p);
  });
  std::vector<v1::Progress> running;
  std::thread watcher([&] {
    Watch(job.id(), [&](const v1::Job& j) {
      if (j.state() == v1::JOB_STATE_RUNNING) running.push_back(j.progress());
    });
  });
  StartWorker();
  watcher.join();
  cli.join();
  ASSERT_FALSE(running.empty());
  bool mid_layer_with_eta = false;
  for (size_t i = 0; i < running.size(); ++i) {
    const v1::Progress& p = running[i];
    if (p.num_layers() == 16 && p.layer() > 0 && p.layer() < 16 && p.eta_ms() > 0 && !p.step().empty()) {
      mid_layer_with_eta = true;
    }
    if (i > 0) {
      EXPECT_GE(p.fraction(), running[i - 1].fraction()) << "progress went backwards";
      EXPECT_GE(p.elapsed_ms(), running[i - 1].elapsed_ms());
    }
  }
  EXPECT_TRUE(mid_layer_with_eta) << running.size() << " RUNNING events, none mid-run with an ETA";
  EXPECT_EQ(WEXITSTATUS(watch_status), 0) << watch_output;
  EXPECT_NE(watch_output.find("/16"), std::string::npos) << watch_output;  // "layer 7/16"
  EXPECT_NE(watch_output.find(" eta "), std::string::npos) << watch_output;
  EXPECT_NE(watch_output.find("\"state\": \"JOB_STATE_SUCCEEDED\""), std::string::npos) << watch_output;
}

TEST_F(EndToEndTest, CancelStopsARunningJobAtALayerBoundary) {
  v1::JobSpec spec = SlowSpec(24);
  v1::Job job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  StartWorker();
  v1::Job running = WaitFor(job.id(), [](const v1::Job& j) { return j.progress().layer() >= 1 || Final(j); });
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING);
  grpc::ClientContext ctx;
  v1::CancelJobRequest req;
  req.set_id(job.id());
  v1::Job after;
  ASSERT_TRUE(jobs_->CancelJob(&ctx, req, &after).ok());
  v1::Job end = WaitFor(job.id(), Final);
  EXPECT_EQ(end.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_LT(end.progress().layer(), 24);
}

// A qaas-worker process killed mid-job: its lease expires, the job goes back
// to QUEUED, and a new worker completes it.
TEST_F(EndToEndTest, KilledWorkerProcessJobIsRequeuedAndFinishedByAnother) {
  v1::JobSpec spec = SlowSpec(16);
  v1::Job job;
  ASSERT_TRUE(Submit(spec, &job).ok());

  pid_t pid = SpawnWorker("proc-worker");
  ASSERT_GT(pid, 0);
  v1::Job mid = WaitFor(job.id(), [](const v1::Job& j) { return j.progress().layer() >= 1 || Final(j); });
  ASSERT_EQ(mid.state(), v1::JOB_STATE_RUNNING) << mid.error();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));

  v1::Job requeued = WaitFor(job.id(), [](const v1::Job& j) { return j.state() != v1::JOB_STATE_RUNNING; }, 30);
  EXPECT_EQ(requeued.state(), v1::JOB_STATE_QUEUED);
  EXPECT_NE(requeued.progress().step().find("worker lost"), std::string::npos) << requeued.progress().step();

  StartWorker();
  v1::Job end = WaitFor(job.id(), Final);
  EXPECT_EQ(end.state(), v1::JOB_STATE_SUCCEEDED) << end.error();
  EXPECT_EQ(end.attempt(), 2);
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("qaas_lease_expirations_total 1"), std::string::npos) << metrics;
}

// A qaas-worker process SIGKILLed at a random layer: the next worker resumes
// from the per-layer checkpoints the first one uploaded, and the artifact is
// byte-identical to an uninterrupted run of the same spec.
TEST_F(EndToEndTest, KilledWorkerJobResumesFromItsCheckpointsByteIdentical) {
  constexpr int kLayers = 16;
  v1::JobSpec spec = SlowSpec(kLayers);
  spec.set_preset("gptq");
  spec.mutable_scheme()->set_shorthand("W4A16g32");
  spec.mutable_calibration()->set_dataset("file://" + root_ + "/text.txt");
  spec.mutable_calibration()->set_num_samples(8);
  spec.mutable_calibration()->set_seq_len(128);
  spec.mutable_calibration()->set_seed(11);

  // The uninterrupted run, in its own output prefix.
  v1::JobSpec whole_spec = spec;
  whole_spec.set_output("file://" + root_ + "/uninterrupted");
  v1::Job whole;
  ASSERT_TRUE(Submit(whole_spec, &whole).ok());
  StartWorker();
  ASSERT_EQ(WaitFor(whole.id(), Final).state(), v1::JOB_STATE_SUCCEEDED);
  StopWorker();

  std::random_device rd;
  const int kill_at = 2 + static_cast<int>(rd() % (kLayers - 6));  // layers finished when killed
  SCOPED_TRACE("killed after layer " + std::to_string(kill_at));
  v1::Job job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  pid_t pid = SpawnWorker("doomed");
  ASSERT_GT(pid, 0);
  v1::Job mid = WaitFor(job.id(), [&](const v1::Job& j) { return j.progress().layer() >= kill_at || Final(j); });
  ASSERT_EQ(mid.state(), v1::JOB_STATE_RUNNING) << mid.error();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  ::waitpid(pid, nullptr, 0);
  const int killed_at = Get(job.id()).progress().layer();
  v1::Job requeued = WaitFor(job.id(), [](const v1::Job& j) { return j.state() != v1::JOB_STATE_RUNNING; }, 30);
  ASSERT_EQ(requeued.state(), v1::JOB_STATE_QUEUED);

  StartWorker();
  v1::Job end = WaitFor(job.id(), Final);
  ASSERT_EQ(end.state(), v1::JOB_STATE_SUCCEEDED) << end.error();
  EXPECT_EQ(end.attempt(), 2);
  const std::string out = root_ + "/store/jobs/" + job.id();
  const auto report = nlohmann::json::parse(ReadLocalFile(out + "/report.json"));
  // Every layer the killed worker reported finished was resumed, not redone.
  EXPECT_GE(report.value("resumed_layers", 0), killed_at);
  EXPECT_LT(report.value("resumed_layers", 0), kLayers);
  std::printf("killed after layer %d (progress said %d); resumed %d of %d layers\n", kill_at, killed_at,
              report.value("resumed_layers", 0), kLayers);
  for (const char* f : {"model.safetensors", "config.json"}) {
    auto a = storage::Sha256File(root_ + "/uninterrupted/artifact/" + f);
    auto b = storage::Sha256File(out + "/artifact/" + f);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << f;
  }
  // The manifest differs only in the job id it records.
  auto manifest_a = nlohmann::json::parse(ReadLocalFile(root_ + "/uninterrupted/artifact/qaas_manifest.json"));
  auto manifest_b = nlohmann::json::parse(ReadLocalFile(out + "/artifact/qaas_manifest.json"));
  manifest_a.erase("job_id");
  manifest_b.erase("job_id");
  EXPECT_EQ(manifest_a, manifest_b);
  EXPECT_EQ(report["evaluations"].dump(), nlohmann::json::parse(ReadLocalFile(root_ + "/uninterrupted/report.json"))["evaluations"].dump());
}

// SIGTERM without a drain (a pod deleted with a short grace period): the
// worker stops at a layer boundary and hands the job back at once, not a lease
// later, without using one of its attempts.
TEST_F(EndToEndTest, StoppedWorkerProcessReleasesItsJobAtOnce) {
  v1::Job job;
  ASSERT_TRUE(Submit(SlowSpec(16), &job).ok());
  pid_t pid = SpawnWorker("leaving");
  ASSERT_GT(pid, 0);
  v1::Job mid = WaitFor(job.id(), [](const v1::Job& j) { return j.progress().layer() >= 1 || Final(j); });
  ASSERT_EQ(mid.state(), v1::JOB_STATE_RUNNING) << mid.error();
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  const int status = Reap(pid, 30);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  v1::Job back = Get(job.id());  // the worker released it before exiting
  EXPECT_EQ(back.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(back.attempt(), 0);
  EXPECT_NE(back.progress().step().find("released it (worker 'leaving' stopping after layer"), std::string::npos)
      << back.progress().step();

  StartWorker();
  v1::Job end = WaitFor(job.id(), Final);
  EXPECT_EQ(end.state(), v1::JOB_STATE_SUCCEEDED) << end.error();
  EXPECT_EQ(end.attempt(), 1);
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("qaas_lease_releases_total 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("qaas_lease_expirations_total 0"), std::string::npos) << metrics;
}

// A qaas-worker process re-executes itself once, keeping its pid, with the
// CPU runtime settings its libraries read when they load
// (quant/util/device.h, PrepareCpuRuntime): OpenMP threads that sleep rather
// than spin, and OpenBLAS kernels chosen by the CPU's features where the
// library falls back to its generic ones (on CPUs newer than it knows).
TEST_F(EndToEndTest, WorkerProcessRunsWithTheCpuRuntimeSettings) {
  // Whether OpenBLAS falls back here: this test process was started (or
  // re-executed itself) the same way, so it either runs the generic kernels
  // or set OPENBLAS_CORETYPE to this CPU's core.
  const std::string core = quant::BlasCoreForThisCpu();
  const char* own = std::getenv("OPENBLAS_CORETYPE");
  const bool falls_back = !core.empty() && ((own != nullptr && own == core) ||
                                            absl::AsciiStrToLower(quant::OpenBlasCore()) == "prescott");
  unsetenv("OMP_WAIT_POLICY");
  unsetenv("OPENBLAS_CORETYPE");
  std::map<std::string, std::string> expected = {{"OMP_WAIT_POLICY", "PASSIVE"}};
  if (falls_back) expected["OPENBLAS_CORETYPE"] = core;
  pid_t pid = SpawnWorker("runtime");
  ASSERT_GT(pid, 0);
  std::map<std::string, std::string> seen;
  for (int i = 0; i < 400; ++i) {  // up to 20 s
    std::ifstream f("/proc/" + std::to_string(pid) + "/environ");
    std::string entry;
    seen.clear();
    while (std::getline(f, entry, '\0')) {
      const size_t eq = entry.find('=');
      if (eq != std::string::npos && expected.count(entry.substr(0, eq))) seen[entry.substr(0, eq)] = entry.substr(eq + 1);
    }
    if (seen == expected) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(seen, expected);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  const int status = Reap(pid, 30);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
}

// SIGTERM with a drain: the current job finishes, the next one stays queued.
TEST_F(EndToEndTest, DrainingWorkerProcessFinishesItsJobAndTakesNoOther) {
  v1::Job first, second;
  ASSERT_TRUE(Submit(SlowSpec(12), &first).ok());
  pid_t pid = SpawnWorker("draining", {"--drain_seconds=120"});
  ASSERT_GT(pid, 0);
  v1::Job mid = WaitFor(first.id(), [](const v1::Job& j) { return j.progress().layer() >= 1 || Final(j); });
  ASSERT_EQ(mid.state(), v1::JOB_STATE_RUNNING) << mid.error();
  ASSERT_TRUE(Submit(Spec(MakeModel("small", 1, 32, 128)), &second).ok());
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  const int status = Reap(pid, 120);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(Get(first.id()).state(), v1::JOB_STATE_SUCCEEDED) << Get(first.id()).error();
  v1::Job waiting = Get(second.id());
  EXPECT_EQ(waiting.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(waiting.attempt(), 0);
}

// The worker's own metrics: outcomes and the bytes it moved (a second job on
// the same inputs reads nothing: the cache serves it).
TEST_F(EndToEndTest, WorkerMetricsCountJobsAndStorageBytes) {
  const std::string model = MakeModel("model", 2, 32, 128);
  StartWorker(&worker_registry_);
  auto value = [&](const std::string& name, const std::string& label, const std::string& value) {
    for (const auto& f : worker_registry_.Collect()) {
      if (f.name != name) continue;
      for (const auto& m : f.metric) {
        for (const auto& l : m.label) {
          if (l.name == label && l.value == value) {
            return f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
          }
        }
      }
    }
    return -1.0;
  };
  auto dir_bytes = [](const std::string& dir) {
    uint64_t n = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir)) n += e.is_regular_file() ? e.file_size() : 0;
    return static_cast<double>(n);
  };
  v1::JobSpec spec = Spec(model);
  spec.add_evaluation()->set_dataset("file://" + root_ + "/text.txt");
  spec.mutable_evaluation(0)->set_max_windows(2);
  v1::Job a, b;
  ASSERT_TRUE(Submit(spec, &a).ok());
  ASSERT_EQ(WaitFor(a.id(), Final).state(), v1::JOB_STATE_SUCCEEDED);
  const double model_and_text = dir_bytes(model) + static_cast<double>(fs::file_size(root_ + "/text.txt"));
  const double artifact = dir_bytes(root_ + "/store/jobs/" + a.id());
  EXPECT_EQ(value("qaas_worker_storage_bytes_total", "direction", "read"), model_and_text);
  EXPECT_EQ(value("qaas_worker_storage_bytes_total", "direction", "write"), artifact);
  ASSERT_TRUE(Submit(spec, &b).ok());
  ASSERT_EQ(WaitFor(b.id(), Final).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(value("qaas_worker_storage_bytes_total", "direction", "read"), model_and_text);
  EXPECT_EQ(value("qaas_worker_storage_bytes_total", "direction", "write"),
            artifact + dir_bytes(root_ + "/store/jobs/" + b.id()));
  // Outcomes are counted once the server has the result: wait for it.
  auto eventually = [&](const std::string& outcome, double want) {
    for (int i = 0; i < 100 && value("qaas_worker_jobs_total", "outcome", outcome) != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return value("qaas_worker_jobs_total", "outcome", outcome);
  };
  EXPECT_EQ(eventually("succeeded", 2), 2);
  v1::JobSpec broken = spec;
  WriteLocalFile(root_ + "/blank.txt", "\n\n");  // no text: fails on the worker
  broken.mutable_evaluation(0)->set_dataset("file://" + root_ + "/blank.txt");
  v1::Job c;
  ASSERT_TRUE(Submit(broken, &c).ok());
  ASSERT_EQ(WaitFor(c.id(), Final).state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(eventually("failed", 1), 1);
}

TEST_F(EndToEndTest, HealthAndReflectionAreServed) {
  auto channel = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);

  // Reflection: list the services. The messages come from the descriptors that
  // libgrpc++_reflection registered; the call goes through a generic stub.
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  const auto* req_type = pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionRequest");
  const auto* resp_type = pool->FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionResponse");
  ASSERT_NE(req_type, nullptr);
  ASSERT_NE(resp_type, nullptr);
  google::protobuf::DynamicMessageFactory factory(pool);
  std::unique_ptr<google::protobuf::Message> list(factory.GetPrototype(req_type)->New());
  list->GetReflection()->SetString(list.get(), req_type->FindFieldByName("list_services"), "");
  std::string bytes = list->SerializeAsString();
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;

  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext rctx;
  auto call = generic.PrepareCall(&rctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](auto&& start) {
    void* tag;
    bool ok = false;
    start();
    return cq.Next(&tag, &ok) && ok;
  };
  ASSERT_TRUE(step([&] { call->StartCall(reinterpret_cast<void*>(1)); }));
  ASSERT_TRUE(step([&] { call->Write(request, reinterpret_cast<void*>(2)); }));
  ASSERT_TRUE(step([&] { call->Read(&response, reinterpret_cast<void*>(3)); }));
  ASSERT_TRUE(step([&] { call->WritesDone(reinterpret_cast<void*>(4)); }));
  grpc::Status status;
  ASSERT_TRUE(step([&] { call->Finish(&status, reinterpret_cast<void*>(5)); }));
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string resp_bytes;
  for (const auto& sl : slices) resp_bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  std::unique_ptr<google::protobuf::Message> listed(factory.GetPrototype(resp_type)->New());
  ASSERT_TRUE(listed->ParseFromString(resp_bytes));
  const auto* services_field = resp_type->FindFieldByName("list_services_response");
  const auto& services = listed->GetReflection()->GetMessage(*listed, services_field);
  const auto* service_list = services.GetDescriptor()->FindFieldByName("service");
  std::vector<std::string> names;
  for (int i = 0; i < services.GetReflection()->FieldSize(services, service_list); ++i) {
    const auto& svc = services.GetReflection()->GetRepeatedMessage(services, service_list, i);
    names.push_back(svc.GetReflection()->GetString(svc, svc.GetDescriptor()->FindFieldByName("name")));
  }
  EXPECT_NE(std::find(names.begin(), names.end(), "qaas.v1.JobService"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "qaas.v1.WorkerService"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "grpc.health.v1.Health"), names.end());
}

// Shutdown wakes long polls and watches instead of waiting them out, and
// what was acknowledged before is still there after a restart.
TEST_F(EndToEndTest, GracefulShutdownEndsLongCallsAndKeepsJobs) {
  const std::string model = MakeModel("model", 1, 32, 128);
  v1::Job job;
  ASSERT_TRUE(Submit(Spec(model), &job).ok());
  std::atomic<bool> watch_ended{false};
  std::thread watcher([&] {
    Watch(job.id());
    watch_ended = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown(/*grace_ms=*/5000);
  watcher.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(watch_ended);
  EXPECT_LT(seconds, 4.0);  // not the 5 s grace: the watch was woken

  server::ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.db_path = root_ + "/jobs.db";
  o.scheduler.validation.file_roots = {root_};
  auto again = server::Server::Start(o);
  ASSERT_TRUE(again.ok()) << again.status();
  auto stored = (*again)->scheduler().Get("", job.id());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->state(), v1::JOB_STATE_QUEUED);
  (*again)->Shutdown(1000);
}

}  // namespace
}  // namespace qaas
