// qaas-worker: pulls jobs from a qaas-server and runs them.
#include <csignal>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "worker/worker.h"
#include "quant/util/allocator.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "scheduler address");
ABSL_FLAG(std::string, name, "", "worker name (default: host name)");
ABSL_FLAG(std::string, work_dir, "/tmp/qaas-worker", "scratch and cache directory");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int64_t, poll_wait_ms, 10000, "long-poll wait for a job");

namespace {
qaas::worker::Worker* g_worker = nullptr;
void OnSignal(int) {
  if (g_worker) g_worker->Stop();
}
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Runs qaas quantization jobs leased from a qaas-server.");
  absl::ParseCommandLine(argc, argv);
  qaas::quant::KeepTensorBuffersInTheHeap();
  qaas::worker::WorkerOptions o;
  o.name = absl::GetFlag(FLAGS_name);
  if (o.name.empty()) {
    char host[256] = "worker";
    gethostname(host, sizeof(host) - 1);
    o.name = host;
  }
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  o.device = absl::GetFlag(FLAGS_device);
  o.poll_wait_ms = absl::GetFlag(FLAGS_poll_wait_ms);
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  qaas::worker::Worker worker(channel, o);
  g_worker = &worker;
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::cerr << "qaas-worker " << o.name << ": serving jobs from " << absl::GetFlag(FLAGS_server) << "\n";
  worker.Run();
  std::cerr << "qaas-worker: stopped\n";
  return 0;
}
