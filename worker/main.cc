// qaas-worker: pulls jobs from a qaas-server and runs them.
//
// Shutdown (SIGTERM, SIGINT): the worker takes no new job and lets the
// current one run for up to --drain_seconds; then it stops the job at its
// next layer boundary and releases it to the queue. A second signal skips
// the rest of the drain. Set the pod's terminationGracePeriodSeconds above
// --drain_seconds plus one layer's time.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "storage/s3_flags.h"
#include "quant/util/allocator.h"
#include "quant/util/device.h"
#include "server/grpc_security.h"
#include "server/metrics_http.h"
#include "worker/worker.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "scheduler address");
ABSL_FLAG(std::string, name, "", "worker name (default: host name)");
ABSL_FLAG(std::string, work_dir, "/tmp/qaas-worker", "scratch and cache directory");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda, cuda:N, or auto (cuda where a CUDA device is visible, else cpu)");
ABSL_FLAG(int, threads, 0, "CPU threads for quantization and evaluation (ATen and OpenBLAS pools; 0 = the cores available to the process)");
ABSL_FLAG(int64_t, staged_forward_mb, 2048,
          "calibration activations GPTQ-like jobs may hold so that each layer's forward runs once, not once per sequential group (MiB; 0 = least memory, recompute)");
ABSL_FLAG(int64_t, poll_wait_ms, 10000, "long-poll wait for a job");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9465", "Prometheus /metrics and /healthz address (\"\" = off)");
ABSL_FLAG(std::string, token_file, "",
          "file holding this worker's bearer token (a mounted Secret); default: $QAAS_TOKEN, else none");
ABSL_FLAG(bool, tls, false, "connect with TLS (system roots unless --tls_ca)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that signed the server's certificate (implies --tls)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate for mTLS (implies --tls)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "", "name to verify in the server's certificate (default: its host)");
ABSL_FLAG(int64_t, drain_seconds, 0,
          "on SIGTERM, let the current job run this long before stopping it at a layer boundary");

namespace {
std::atomic<int> g_signals{0};
void OnSignal(int) { g_signals.fetch_add(1); }
}  // namespace

int main(int argc, char** argv) {
  qaas::quant::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::SetProgramUsageMessage("Runs qaas quantization jobs leased from a qaas-server.");
  // --help lists our flags (Abseil's default looks for a file named qaas-worker.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "worker/main.cc") || absl::EndsWith(file, "storage/s3_flags.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  qaas::quant::KeepTensorBuffersInTheHeap();
  qaas::quant::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  if (auto device = qaas::quant::ResolveDevice(absl::GetFlag(FLAGS_device)); !device.ok()) {
    std::cerr << "qaas-worker: --device: " << device.status() << "\n";
    return 1;
  }
  if (auto st = qaas::storage::ConfigureS3FromFlags(); !st.ok()) {
    std::cerr << "qaas-worker: " << st << "\n";
    return 1;
  }
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
  o.staged_forward_bytes = static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_staged_forward_mb))) << 20;
  prometheus::Registry registry;
  std::unique_ptr<qaas::server::MetricsHttpServer> http;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto started = qaas::server::MetricsHttpServer::Start(absl::GetFlag(FLAGS_metrics_listen), &registry);
    if (!started.ok()) {
      std::cerr << "qaas-worker: metrics: " << started.status() << "\n";
      return 1;
    }
    http = *std::move(started);
    o.registry = &registry;
  }
  qaas::server::ClientSecurityOptions security;
  auto token = qaas::server::TokenFromFileOrEnvironment(absl::GetFlag(FLAGS_token_file));
  if (!token.ok()) {
    std::cerr << "qaas-worker: " << token.status() << "\n";
    return 1;
  }
  security.token = *token;
  security.tls = absl::GetFlag(FLAGS_tls);
  security.ca_file = absl::GetFlag(FLAGS_tls_ca);
  security.cert_file = absl::GetFlag(FLAGS_tls_cert);
  security.key_file = absl::GetFlag(FLAGS_tls_key);
  security.server_name = absl::GetFlag(FLAGS_tls_server_name);
  auto channel = qaas::server::MakeChannel(absl::GetFlag(FLAGS_server), security);
  if (!channel.ok()) {
    std::cerr << "qaas-worker: " << channel.status() << "\n";
    return 1;
  }
  qaas::worker::Worker worker(*channel, o);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::cerr << "qaas-worker " << o.name << ": serving jobs from " << absl::GetFlag(FLAGS_server);
  if (http) std::cerr << ", metrics on port " << http->port();
  std::cerr << "\n";

  std::atomic<bool> ran_out{false};
  std::thread runner([&] {
    worker.Run();
    ran_out = true;
  });
  using Clock = std::chrono::steady_clock;
  while (g_signals.load() == 0 && !ran_out) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int64_t drain_s = absl::GetFlag(FLAGS_drain_seconds);
  if (drain_s > 0) {
    std::cerr << "qaas-worker: draining (up to " << drain_s << " s for the current job)\n";
    worker.Drain();
    const auto deadline = Clock::now() + std::chrono::seconds(drain_s);
    while (!ran_out && g_signals.load() < 2 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  worker.Stop();
  runner.join();
  std::cerr << "qaas-worker: stopped\n";
  return 0;
}
