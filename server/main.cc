// qaas-server: the scheduler. With --embedded it also runs an in-process
// worker and keeps everything (SQLite database, file:// object store, worker
// scratch) under one --data_dir, so a newcomer needs no other server.
#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "storage/s3_flags.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/server.h"
#include "storage/uri.h"
#include "worker/worker.h"
#include "quant/util/allocator.h"
#include "quant/util/device.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address (port 0 = any free port)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464", "Prometheus /metrics address (\"\" = off)");
ABSL_FLAG(std::string, data_dir, "./qaas-data", "database, object store and worker scratch");
ABSL_FLAG(std::string, database, "",
          "postgres://user@host/db: the PostgreSQL job store (several replicas may share it); "
          "\"\" = SQLite in --data_dir (one replica). The password may come from $PGPASSWORD or ~/.pgpass");
ABSL_FLAG(bool, embedded, false, "also run a worker in this process");
ABSL_FLAG(std::string, file_roots, "", "comma-separated extra directories that file:// uris may name");
ABSL_FLAG(std::string, task_data, "",
          "uri prefix of the zero-shot task files (piqa.validation.jsonl, ...) for jobs whose tasks.data is empty; "
          "\"\" = jobs must name it");
ABSL_FLAG(int64_t, lease_seconds, 30, "lease duration; a worker silent this long loses its job");
ABSL_FLAG(int32_t, max_attempts, 3, "leases per job before it FAILS");
ABSL_FLAG(std::string, device, "auto", "the embedded worker's device: cpu, cuda, cuda:N, or auto (cuda where visible)");
ABSL_FLAG(int64_t, staged_forward_mb, 2048,
          "embedded worker: "
          "calibration activations GPTQ-like jobs may hold so that each layer's forward runs once, not once per sequential group (MiB; 0 = least memory, recompute)");
ABSL_FLAG(int, threads, 0, "CPU threads for quantization and evaluation (ATen and OpenBLAS pools; 0 = the cores available to the process)");
ABSL_FLAG(std::string, auth_tokens, "",
          "bearer tokens file or directory (a mounted Secret) of '<sha256> tenant:NAME|worker[:NAME]' lines; "
          "\"\" = no authentication (every caller is tenant 'default')");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_worker_ca, "", "PEM CA of worker client certificates (mTLS for workers)");
ABSL_FLAG(int32_t, max_running_per_tenant, 0, "running jobs per tenant at most (0 = no limit)");
ABSL_FLAG(std::string, tenant_max_running, "", "per-tenant overrides of --max_running_per_tenant: acme=8,globex=2");
ABSL_FLAG(int64_t, infeasible_after_seconds, 600,
          "a job that no live worker can fit (device, memory) FAILS after waiting this long");
ABSL_FLAG(std::string, port_file, "", "write the bound gRPC port here (for scripts and tests)");

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

int main(int argc, char** argv) {
  qaas::quant::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::SetProgramUsageMessage("qaas scheduler (qaas.v1.JobService / WorkerService).");
  // --help lists our flags (Abseil's default looks for a file named qaas-server.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server/main.cc") || absl::EndsWith(file, "storage/s3_flags.cc");
  };
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  // The tensor-buffer malloc settings (one arena among them) are for
  // computing: a scheduler alone keeps glibc's defaults for its RPC threads.
  if (absl::GetFlag(FLAGS_embedded)) qaas::quant::KeepTensorBuffersInTheHeap();
  qaas::quant::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  if (absl::GetFlag(FLAGS_embedded)) {
    if (auto device = qaas::quant::ResolveDevice(absl::GetFlag(FLAGS_device)); !device.ok()) {
      std::cerr << "qaas-server: --device: " << device.status() << "\n";
      return 1;
    }
  }
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string data_dir = fs::absolute(absl::GetFlag(FLAGS_data_dir)).lexically_normal().string();
  const std::string store_dir = data_dir + "/store";
  fs::create_directories(store_dir, ec);
  if (ec) {
    std::cerr << "qaas-server: cannot create " << store_dir << ": " << ec.message() << "\n";
    return 1;
  }
  qaas::server::ServerOptions o;
  o.listen_address = absl::GetFlag(FLAGS_listen);
  o.metrics_address = absl::GetFlag(FLAGS_metrics_listen);
  o.db_path = data_dir + "/jobs.db";
  o.database_uri = absl::GetFlag(FLAGS_database);
  o.tokens_path = absl::GetFlag(FLAGS_auth_tokens);
  o.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls.worker_ca_file = absl::GetFlag(FLAGS_tls_worker_ca);
  o.scheduler.lease_duration_ms = absl::GetFlag(FLAGS_lease_seconds) * 1000;
  o.scheduler.heartbeat_interval_ms = std::max<int64_t>(1000, o.scheduler.lease_duration_ms / 6);
  o.scheduler.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  o.scheduler.placement.max_running_per_tenant = absl::GetFlag(FLAGS_max_running_per_tenant);
  o.scheduler.placement.infeasible_after_ms = absl::GetFlag(FLAGS_infeasible_after_seconds) * 1000;
  for (auto kv : absl::StrSplit(absl::GetFlag(FLAGS_tenant_max_running), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    int limit = 0;
    if (p.first.empty() || !absl::SimpleAtoi(p.second, &limit) || limit < 0) {
      std::cerr << "qaas-server: --tenant_max_running: expected tenant=N, got '" << kv << "'\n";
      return 1;
    }
    o.scheduler.placement.tenant_max_running[p.first] = limit;
  }
  o.scheduler.default_output_uri = "file://" + store_dir;
  o.scheduler.validation.file_roots.push_back(store_dir);
  for (auto root : absl::StrSplit(absl::GetFlag(FLAGS_file_roots), ',', absl::SkipEmpty())) {
    o.scheduler.validation.file_roots.push_back(
        fs::weakly_canonical(fs::absolute(std::string(root))).string());
  }
  o.scheduler.validation.default_task_data = absl::GetFlag(FLAGS_task_data);
  if (auto st = qaas::storage::ConfigureS3FromFlags(); !st.ok()) {
    std::cerr << "qaas-server: " << st << "\n";
    return 1;
  }
  auto server = qaas::server::Server::Start(o);
  if (!server.ok()) {
    std::cerr << "qaas-server: " << server.status() << "\n";
    return 1;
  }
  std::cerr << "qaas-server: gRPC on port " << (*server)->port() << ", metrics on port "
            << (*server)->metrics_port() << ", data in " << data_dir << "\n";
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_port_file)) << (*server)->port() << "\n";
  }
  std::unique_ptr<qaas::worker::Worker> worker;
  std::thread worker_thread;
  if (absl::GetFlag(FLAGS_embedded)) {
    qaas::worker::WorkerOptions wo;
    wo.name = "embedded";
    wo.work_dir = data_dir + "/worker";
    wo.device = absl::GetFlag(FLAGS_device);
    wo.poll_wait_ms = 1000;
    wo.staged_forward_bytes =
        static_cast<uint64_t>(std::max<int64_t>(0, absl::GetFlag(FLAGS_staged_forward_mb))) << 20;
    wo.registry = &(*server)->registry();
    worker = std::make_unique<qaas::worker::Worker>((*server)->InProcessChannel(), wo);
    worker_thread = std::thread([&] { worker->Run(); });
  }
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::cerr << "qaas-server: shutting down\n";
  if (worker) {
    worker->Stop();
    worker_thread.join();
  }
  (*server)->Shutdown();
  return 0;
}
