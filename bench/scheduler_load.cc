// Scheduler load: submissions per second, and LeaseJob latency with many
// polling workers, on the SQLite and the PostgreSQL job store. Everything on
// 127.0.0.1: a qaas-server in this process, a PostgreSQL started for the run.
//
//   scheduler_load [--store sqlite|postgres|both] [--jobs 2000] [--workers 100] [--submitters 8]
//                  [--job_ms 0]
//
// Phase 1: `submitters` threads submit `jobs` jobs over gRPC (each its own
// channel); prints submissions/s and SubmitJob p50/p99.
// Phase 2: `workers` threads (each its own channel, as separate processes
// would be) register and long-poll LeaseJob, completing each job at once,
// until every job is done; prints LeaseJob p50/p99 over the calls that got
// a job, and completed jobs/s. With --job_ms 0 the job does no work: the
// workers lease back to back, so the figures are the scheduler's and the
// store's throughput and the queueing behind it (on a 2-core machine the
// clients share the cores with the server, and with PostgreSQL's processes).
// --job_ms N holds each job N ms before completing it, as a worker running
// jobs would: LeaseJob's latency at that load.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "server/server.h"
#include "tests/pg_server.h"
#include "tests/test_util.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = qaas::v1;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

std::shared_ptr<grpc::Channel> OwnChannel(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args);
}

int Run(const std::string& store, int jobs, int workers, int submitters, int job_ms) {
  qaas::testing::ScopedTempDir dir;
  std::filesystem::create_directories(dir.path() + "/model");
  std::ofstream(dir.path() + "/model/config.json") << qaas::testing::kTestModelConfig;
  std::unique_ptr<qaas::testing::PgServer> pg;
  qaas::server::ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";
  o.db_path = dir.path() + "/jobs.db";
  o.scheduler.validation.file_roots = {dir.path()};
  o.scheduler.default_output_uri = "file://" + dir.path() + "/store";
  o.scheduler.lease_duration_ms = 600'000;
  if (store == "postgres") {
    auto started = qaas::testing::PgServer::Start();
    if (!started.ok()) {
      std::fprintf(stderr, "postgres: %s\n", std::string(started.status().message()).c_str());
      return 1;
    }
    pg = *std::move(started);
    auto uri = pg->NewDatabase("load");
    if (!uri.ok()) return 1;
    o.database_uri = *uri;
    o.database_connections = 16;
  }
  auto server = qaas::server::Server::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const int port = (*server)->port();

  // Phase 1: submissions.
  std::mutex mu;
  std::vector<double> submit_ms;
  std::atomic<int> next{0}, submit_errors{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int s = 0; s < submitters; ++s) {
    threads.emplace_back([&] {
      auto stub = v1::JobService::NewStub(OwnChannel(port));
      std::vector<double> mine;
      for (int i = next++; i < jobs; i = next++) {
        v1::SubmitJobRequest req;
        req.mutable_spec()->set_model("file://" + dir.path() + "/model");
        req.mutable_spec()->set_preset("rtn");
        req.mutable_spec()->mutable_scheme()->set_shorthand("W4A16g128");
        req.mutable_spec()->set_idempotency_key("load-" + std::to_string(i));
        grpc::ClientContext ctx;
        v1::Job job;
        const auto t = Clock::now();
        if (!stub->SubmitJob(&ctx, req, &job).ok()) ++submit_errors;
        mine.push_back(Ms(Clock::now() - t));
      }
      std::lock_guard<std::mutex> lock(mu);
      submit_ms.insert(submit_ms.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  const double submit_s = Ms(Clock::now() - t0) / 1000;

  // Phase 2: workers.
  std::vector<double> lease_ms;
  std::atomic<int> done{0}, lease_errors{0};
  const auto t1 = Clock::now();
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      auto stub = v1::WorkerService::NewStub(OwnChannel(port));
      v1::RegisterWorkerRequest reg;
      reg.set_name("load-" + std::to_string(w));
      reg.mutable_capabilities()->add_devices("cpu");
      v1::RegisterWorkerResponse id;
      grpc::ClientContext rctx;
      if (!stub->RegisterWorker(&rctx, reg, &id).ok()) {
        ++lease_errors;
        return;
      }
      std::vector<double> mine;
      while (done.load() < jobs) {
        v1::LeaseJobRequest req;
        req.set_worker_id(id.worker_id());
        req.set_wait_ms(500);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
        v1::LeaseJobResponse got;
        const auto t = Clock::now();
        if (!stub->LeaseJob(&ctx, req, &got).ok()) {
          ++lease_errors;
          continue;
        }
        if (!got.has_job()) continue;
        mine.push_back(Ms(Clock::now() - t));
        if (job_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(job_ms));
        v1::CompleteJobRequest c;
        c.set_job_id(got.job().id());
        c.set_lease_id(got.lease_id());
        grpc::ClientContext cctx;
        v1::CompleteJobResponse cr;
        if (stub->CompleteJob(&cctx, c, &cr).ok()) ++done;
      }
      std::lock_guard<std::mutex> lock(mu);
      lease_ms.insert(lease_ms.end(), mine.begin(), mine.end());
    });
  }
  for (auto& t : threads) t.join();
  const double work_s = Ms(Clock::now() - t1) / 1000;
  (*server)->Shutdown();

  std::printf("%-8s submit: %d jobs by %d clients in %.2f s = %.0f submissions/s, SubmitJob p50 %.2f ms p99 %.2f ms "
              "(%d errors)\n",
              store.c_str(), jobs, submitters, submit_s, jobs / submit_s, Percentile(submit_ms, 0.5),
              Percentile(submit_ms, 0.99), submit_errors.load());
  std::printf("%-8s lease:  %d workers polling, jobs of %d ms, %d jobs leased+completed in %.2f s = %.0f jobs/s, "
              "LeaseJob p50 %.2f ms p99 %.2f ms (%d errors)\n",
              store.c_str(), workers, job_ms, done.load(), work_s, done.load() / work_s, Percentile(lease_ms, 0.5),
              Percentile(lease_ms, 0.99), lease_errors.load());
  return submit_errors.load() == 0 && lease_errors.load() == 0 && done.load() == jobs ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string store = "both";
  int jobs = 2000, workers = 100, submitters = 8, job_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--store")) store = argv[i + 1];
    else if (!std::strcmp(argv[i], "--jobs")) jobs = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--workers")) workers = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--submitters")) submitters = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--job_ms")) job_ms = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: scheduler_load [--store sqlite|postgres|both] [--jobs N] [--workers N] [--submitters N] [--job_ms N]\n");
      return 2;
    }
  }
  int rc = 0;
  for (const std::string s : {"sqlite", "postgres"}) {
    if (store == s || store == "both") rc |= Run(s, jobs, workers, submitters, job_ms);
  }
  return rc;
}
