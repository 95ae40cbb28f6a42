#include "server/scheduler.h"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <thread>
#include <vector>

#include "server/sqlite_job_store.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

double Value(prometheus::Registry& r, const std::string& name, const std::string& status = "") {
  for (const auto& family : r.Collect()) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      bool match = status.empty();
      for (const auto& l : m.label) match |= l.name == "status" && l.value == status;
      if (!match) continue;
      if (family.type == prometheus::MetricType::Counter) return m.counter.value;
      if (family.type == prometheus::MetricType::Gauge) return m.gauge.value;
      if (family.type == prometheus::MetricType::Histogram) return m.histogram.sample_count;
    }
  }
  return -1;
}

// The one series of `name` whose labels include every pair of `labels`.
const prometheus::ClientMetric* Series(const std::vector<prometheus::MetricFamily>& families, const std::string& name,
                                       const std::map<std::string, std::string>& labels) {
  for (const auto& family : families) {
    if (family.name != name) continue;
    for (const auto& m : family.metric) {
      size_t matched = 0;
      for (const auto& l : m.label) matched += labels.count(l.name) && labels.at(l.name) == l.value;
      if (matched == labels.size()) return &m;
    }
  }
  return nullptr;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.path() + "/model");
    WriteLocalFile(dir_.path() + "/model/config.json", ::qaas::testing::kTestModelConfig);
    auto store = SqliteJobStore::Open(dir_.path() + "/jobs.db");
    ASSERT_TRUE(store.ok());
    metrics_ = std::make_unique<Metrics>(registry_);
    SchedulerOptions o;
    o.lease_duration_ms = 1000;
    o.max_attempts = 2;
    o.validation.file_roots = {dir_.path()};
    o.default_output_uri = "file://" + dir_.path() + "/out";
    o.now_ms = [this] { return now_; };
    scheduler_ = std::make_unique<Scheduler>(*std::move(store), o, metrics_.get());
    auto w = scheduler_->RegisterWorker(Worker("w1"));
    ASSERT_TRUE(w.ok());
    worker_ = w->worker_id();
  }
  static v1::RegisterWorkerRequest Worker(const std::string& name) {
    v1::RegisterWorkerRequest r;
    r.set_name(name);
    r.mutable_capabilities()->add_devices("cpu");
    return r;
  }
  v1::JobSpec Spec() {
    v1::JobSpec s;
    s.set_model("file://" + dir_.path() + "/model");
    s.set_preset("rtn");
    s.mutable_scheme()->set_shorthand("W4A16");
    return s;
  }
  v1::LeaseJobResponse Lease(const std::string& worker) {
    v1::LeaseJobRequest r;
    r.set_worker_id(worker);
    auto resp = scheduler_->LeaseJob(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : v1::LeaseJobResponse();
  }

  ScopedTempDir dir_;
  prometheus::Registry registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  std::string worker_;
  int64_t now_ = 1'000'000;
};

TEST_F(SchedulerTest, SubmitLeaseHeartbeatComplete) {
  auto job = scheduler_->Submit("t", Spec());
  QAAS_ASSERT_OK(job);
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job->spec().output(), "file://" + dir_.path() + "/out/jobs/" + job->id());
  EXPECT_EQ(Value(registry_, "qaas_jobs_submitted_total"), 1);
  EXPECT_EQ(Value(registry_, "qaas_jobs_queued"), 1);

  auto lease = Lease(worker_);
  ASSERT_TRUE(lease.has_job());
  EXPECT_EQ(lease.job().state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(lease.job().attempt(), 1);
  EXPECT_EQ(Value(registry_, "qaas_jobs_running"), 1);

  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker_);
  hb.set_job_id(job->id());
  hb.set_lease_id(lease.lease_id());
  hb.mutable_progress()->set_layer(2);
  hb.mutable_progress()->set_num_layers(5);
  auto hbr = scheduler_->Heartbeat(hb);
  QAAS_ASSERT_OK(hbr);
  EXPECT_FALSE(hbr->cancel_requested());
  EXPECT_EQ(scheduler_->Get("t", job->id())->progress().layer(), 2);

  v1::CompleteJobRequest done;
  done.set_job_id(job->id());
  done.set_lease_id(lease.lease_id());
  done.mutable_result()->set_artifact_uri("file:///x");
  now_ += 5000;
  QAAS_ASSERT_OK(scheduler_->CompleteJob(done));
  auto final_job = scheduler_->Get("t", job->id());
  EXPECT_EQ(final_job->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(final_job->result().artifact_uri(), "file:///x");
  EXPECT_EQ(Value(registry_, "qaas_jobs_finished_total", "succeeded"), 1);
  EXPECT_EQ(Value(registry_, "qaas_job_duration_seconds", "succeeded"), 1);
  EXPECT_EQ(Value(registry_, "qaas_jobs_running"), 0);
  // The lease is gone: a late heartbeat or completion is refused.
  QAAS_EXPECT_CODE(scheduler_->Heartbeat(hb), kFailedPrecondition);
  QAAS_EXPECT_CODE(scheduler_->CompleteJob(done), kFailedPrecondition);
}

TEST_F(SchedulerTest, ExpiredLeaseRequeuesThenFailsAfterMaxAttempts) {
  auto job = scheduler_->Submit("t", Spec());
  QAAS_ASSERT_OK(job);
  auto first = Lease(worker_);
  ASSERT_TRUE(first.has_job());
  now_ += 999;
  EXPECT_EQ(*scheduler_->ExpireLeases(), 0);  // not yet
  now_ += 2;
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(scheduler_->Get("t", job->id())->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Value(registry_, "qaas_lease_expirations_total"), 1);

  auto second = Lease(worker_);
  ASSERT_TRUE(second.has_job());
  EXPECT_EQ(second.job().attempt(), 2);
  // The first worker's lease no longer counts.
  v1::HeartbeatRequest stale;
  stale.set_job_id(job->id());
  stale.set_lease_id(first.lease_id());
  QAAS_EXPECT_CODE(scheduler_->Heartbeat(stale), kFailedPrecondition);

  now_ += 1001;
  EXPECT_EQ(*scheduler_->ExpireLeases(), 1);
  auto failed = scheduler_->Get("t", job->id());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(failed->error().find("2 attempts"), std::string::npos) << failed->error();
  EXPECT_EQ(Value(registry_, "qaas_jobs_finished_total", "failed"), 1);
}

TEST_F(SchedulerTest, CancelQueuedAtOnceRunningAtTheWorker) {
  auto queued = scheduler_->Submit("t", Spec());
  QAAS_ASSERT_OK(queued);
  auto c = scheduler_->Cancel("t", queued->id(), "changed my mind");
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->state(), v1::JOB_STATE_CANCELLED);
  QAAS_EXPECT_CODE(scheduler_->Cancel("t", queued->id(), ""), kFailedPrecondition);

  auto running = scheduler_->Submit("t", Spec());
  auto lease = Lease(worker_);
  ASSERT_TRUE(lease.has_job());
  EXPECT_EQ(lease.job().id(), running->id());
  QAAS_ASSERT_OK(scheduler_->Cancel("t", running->id(), ""));
  EXPECT_EQ(scheduler_->Get("t", running->id())->state(), v1::JOB_STATE_RUNNING);
  v1::HeartbeatRequest hb;
  hb.set_job_id(running->id());
  hb.set_lease_id(lease.lease_id());
  EXPECT_TRUE(scheduler_->Heartbeat(hb)->cancel_requested());
  v1::FailJobRequest stop;
  stop.set_job_id(running->id());
  stop.set_lease_id(lease.lease_id());
  stop.set_cancelled(true);
  stop.set_reason("stopped at layer 2");
  QAAS_ASSERT_OK(scheduler_->FailJob(stop));
  EXPECT_EQ(scheduler_->Get("t", running->id())->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(Value(registry_, "qaas_jobs_finished_total", "cancelled"), 2);
}

TEST_F(SchedulerTest, TenantsSeeOnlyTheirJobs) {
  auto job = scheduler_->Submit("a", Spec());
  QAAS_ASSERT_OK(job);
  QAAS_EXPECT_CODE(scheduler_->Get("b", job->id()), kNotFound);
  QAAS_EXPECT_CODE(scheduler_->Cancel("b", job->id(), ""), kNotFound);
  v1::ListJobsRequest list;
  EXPECT_EQ(scheduler_->List("b", list)->jobs_size(), 0);
  EXPECT_EQ(scheduler_->List("a", list)->jobs_size(), 1);
}

TEST_F(SchedulerTest, IdempotentSubmitCountsOnce) {
  v1::JobSpec s = Spec();
  s.set_idempotency_key("nightly-42");
  auto a = scheduler_->Submit("t", s);
  auto b = scheduler_->Submit("t", s);
  QAAS_ASSERT_OK(a);
  QAAS_ASSERT_OK(b);
  EXPECT_EQ(a->id(), b->id());
  EXPECT_EQ(Value(registry_, "qaas_jobs_submitted_total"), 1);
}

TEST_F(SchedulerTest, LeaseMatchesDeviceAndKnowsWorkers) {
  v1::JobSpec s = Spec();
  s.mutable_resources()->set_device("cuda");
  QAAS_ASSERT_OK(scheduler_->Submit("t", s));
  EXPECT_FALSE(Lease(worker_).has_job());  // a cpu worker cannot take it
  v1::RegisterWorkerRequest gpu = Worker("g1");
  gpu.mutable_capabilities()->add_devices("cuda");
  auto g = scheduler_->RegisterWorker(gpu);
  QAAS_ASSERT_OK(g);
  EXPECT_TRUE(Lease(g->worker_id()).has_job());
  v1::LeaseJobRequest unknown;
  unknown.set_worker_id("nobody");
  QAAS_EXPECT_CODE(scheduler_->LeaseJob(unknown), kFailedPrecondition);
}

// Counts the claims a scheduler makes (each LeaseJob look at the queue).
class CountingStore : public JobStore {
 public:
  CountingStore(std::unique_ptr<JobStore> inner, std::atomic<int>* claims)
      : inner_(std::move(inner)), claims_(claims) {}
  absl::StatusOr<v1::Job> Insert(const v1::Job& job, bool* created) override { return inner_->Insert(job, created); }
  absl::StatusOr<JobRow> Get(const std::string& id) override { return inner_->Get(id); }
  absl::StatusOr<ListPage> List(const ListQuery& q) override { return inner_->List(q); }
  absl::StatusOr<JobRow> Update(const std::string& id, const std::function<absl::Status(JobRow&)>& m) override {
    return inner_->Update(id, m);
  }
  absl::StatusOr<std::optional<JobRow>> ClaimNext(const Chooser& c, const std::function<void(JobRow&)>& m) override {
    ++*claims_;
    return inner_->ClaimNext(c, m);
  }
  absl::StatusOr<std::vector<std::string>> ExpiredLeases(int64_t now_ms) override {
    return inner_->ExpiredLeases(now_ms);
  }
  absl::StatusOr<StateCounts> CountStates() override { return inner_->CountStates(); }

 private:
  std::unique_ptr<JobStore> inner_;
  std::atomic<int>* claims_;
};

// Long-polling LeaseJob calls: a new job wakes one of them, not all; one that
// cannot take it (a CPU worker, a CUDA job) passes the wake on until a poller
// that can does. The others stay asleep: the claims counted are the pollers'
// first looks plus the ones the job caused.
TEST(SchedulerPollingTest, ANewJobWakesOnePollerAndIsPassedToOneThatCanRunIt) {
  ScopedTempDir dir;
  std::filesystem::create_directories(dir.path() + "/model");
  WriteLocalFile(dir.path() + "/model/config.json", ::qaas::testing::kTestModelConfig);
  auto sqlite = SqliteJobStore::Open(dir.path() + "/jobs.db");
  QAAS_ASSERT_OK(sqlite);
  std::atomic<int> claims{0};
  prometheus::Registry registry;
  Metrics metrics(registry);
  SchedulerOptions o;
  o.validation.file_roots = {dir.path()};
  o.default_output_uri = "file://" + dir.path() + "/out";
  Scheduler scheduler(std::make_unique<CountingStore>(*std::move(sqlite), &claims), o, &metrics);
  auto spec = [&](const std::string& device) {
    v1::JobSpec s;
    s.set_model("file://" + dir.path() + "/model");
    s.set_preset("rtn");
    s.mutable_scheme()->set_shorthand("W4A16");
    s.mutable_resources()->set_device(device);
    return s;
  };
  // Eight CPU pollers, then one CUDA poller (the last to wait).
  constexpr int kCpu = 8;
  std::vector<std::string> ids;
  for (int i = 0; i <= kCpu; ++i) {
    v1::RegisterWorkerRequest r;
    r.set_name("w" + std::to_string(i));
    r.mutable_capabilities()->add_devices(i < kCpu ? "cpu" : "cuda");
    auto w = scheduler.RegisterWorker(r);
    QAAS_ASSERT_OK(w);
    ids.push_back(w->worker_id());
  }
  std::vector<std::string> leased(kCpu + 1);
  std::vector<std::thread> pollers;
  for (int i = 0; i <= kCpu; ++i) {
    pollers.emplace_back([&, i] {
      v1::LeaseJobRequest r;
      r.set_worker_id(ids[i]);
      r.set_wait_ms(20000);
      auto got = scheduler.LeaseJob(r);
      if (got.ok() && got->has_job()) leased[i] = got->job().id();
    });
    // Each looks once at the empty queue before it waits; in this order.
    while (claims.load() < i + 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto wait_for_claims = [&](int n) {
    for (int k = 0; k < 2000 && claims.load() < n; ++k) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // room for extra, wrong wakes
  };

  // A CPU job: the longest-waiting CPU poller takes it, with one look.
  auto cpu_job = scheduler.Submit("t", spec("cpu"));
  QAAS_ASSERT_OK(cpu_job);
  wait_for_claims(kCpu + 2);
  EXPECT_EQ(claims.load(), kCpu + 2);
  pollers[0].join();
  EXPECT_EQ(leased[0], cpu_job->id());

  // A CUDA job: each remaining CPU poller looks once and passes it on, then
  // the CUDA poller takes it; nobody looks twice.
  auto cuda_job = scheduler.Submit("t", spec("cuda"));
  QAAS_ASSERT_OK(cuda_job);
  pollers[kCpu].join();  // well before its 20 s wait ends
  EXPECT_EQ(leased[kCpu], cuda_job->id());
  wait_for_claims(kCpu + 2 + kCpu);
  EXPECT_EQ(claims.load(), kCpu + 2 + (kCpu - 1) + 1);

  scheduler.Shutdown();  // ends the other waits at once
  for (int i = 1; i < kCpu; ++i) {
    pollers[i].join();
    EXPECT_TRUE(leased[i].empty()) << i;
  }
}

TEST_F(SchedulerTest, FailJobKeepsTheReason) {
  auto job = scheduler_->Submit("t", Spec());
  auto lease = Lease(worker_);
  v1::FailJobRequest f;
  f.set_job_id(job->id());
  f.set_lease_id(lease.lease_id());
  f.set_reason("INVALID_ARGUMENT: tensor 'x' has shape [2] but config.json implies [3]");
  QAAS_ASSERT_OK(scheduler_->FailJob(f));
  auto failed = scheduler_->Get("t", job->id());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->error(), f.reason());
}

TEST_F(SchedulerTest, MetricsCarryTheMethodRunTimeAndQuality) {
  v1::JobSpec s = Spec();
  s.clear_preset();
  s.add_recipe()->set_method("smoothquant");
  s.add_recipe()->set_method("rtn");
  s.mutable_scheme()->set_shorthand("W8A8");
  WriteLocalFile(dir_.path() + "/calib.txt", "some text");
  s.mutable_calibration()->set_dataset("file://" + dir_.path() + "/calib.txt");
  auto job = scheduler_->Submit("t", s);
  QAAS_ASSERT_OK(job);
  now_ += 7000;  // queued 7 s: not part of the run time
  auto lease = Lease(worker_);
  ASSERT_TRUE(lease.has_job());
  now_ += 5000;
  v1::CompleteJobRequest done;
  done.set_job_id(job->id());
  done.set_lease_id(lease.lease_id());
  done.mutable_result()->set_perplexity_original(10.0);
  done.mutable_result()->set_perplexity_quantized(10.5);
  QAAS_ASSERT_OK(scheduler_->CompleteJob(done));
  // A cancelled queued job never ran: counted, but no run time.
  auto never = scheduler_->Submit("t", Spec());
  QAAS_ASSERT_OK(scheduler_->Cancel("t", never->id(), ""));

  const auto families = registry_.Collect();
  const auto* submitted = Series(families, "qaas_jobs_submitted_total", {{"method", "smoothquant+rtn"}});
  ASSERT_NE(submitted, nullptr);
  EXPECT_EQ(submitted->counter.value, 1);
  const auto* finished =
      Series(families, "qaas_jobs_finished_total", {{"method", "smoothquant+rtn"}, {"status", "succeeded"}});
  ASSERT_NE(finished, nullptr);
  EXPECT_EQ(finished->counter.value, 1);
  const auto* run = Series(families, "qaas_job_duration_seconds", {{"method", "smoothquant+rtn"}});
  ASSERT_NE(run, nullptr);
  EXPECT_EQ(run->histogram.sample_count, 1u);
  EXPECT_DOUBLE_EQ(run->histogram.sample_sum, 5.0);
  const auto* wait = Series(families, "qaas_job_queue_wait_seconds", {});
  ASSERT_NE(wait, nullptr);
  EXPECT_DOUBLE_EQ(wait->histogram.sample_sum, 7.0);
  const auto* quality = Series(families, "qaas_job_perplexity_increase_ratio", {{"method", "smoothquant+rtn"}});
  ASSERT_NE(quality, nullptr);
  EXPECT_EQ(quality->histogram.sample_count, 1u);
  EXPECT_NEAR(quality->histogram.sample_sum, 0.05, 1e-12);
  const auto* cancelled = Series(families, "qaas_jobs_finished_total", {{"method", "rtn"}, {"status", "cancelled"}});
  ASSERT_NE(cancelled, nullptr);
  EXPECT_EQ(cancelled->counter.value, 1);
  EXPECT_EQ(Series(families, "qaas_job_duration_seconds", {{"method", "rtn"}}), nullptr);
}

TEST_F(SchedulerTest, ActiveWorkersFollowPollsAndHeartbeats) {
  EXPECT_EQ(Value(registry_, "qaas_workers_active"), 1);  // just registered
  now_ += 1001;                                           // silent for longer than a lease
  QAAS_ASSERT_OK(scheduler_->ExpireLeases());
  EXPECT_EQ(Value(registry_, "qaas_workers_active"), 0);
  auto job = scheduler_->Submit("t", Spec());
  auto lease = Lease(worker_);  // polling counts as alive
  ASSERT_TRUE(lease.has_job());
  EXPECT_EQ(Value(registry_, "qaas_workers_active"), 1);
  now_ += 900;
  v1::HeartbeatRequest hb;
  hb.set_worker_id(worker_);
  hb.set_job_id(job->id());
  hb.set_lease_id(lease.lease_id());
  QAAS_ASSERT_OK(scheduler_->Heartbeat(hb));
  now_ += 900;  // 1.8 s after the poll but 0.9 s after the heartbeat
  QAAS_ASSERT_OK(scheduler_->ExpireLeases());
  EXPECT_EQ(Value(registry_, "qaas_workers_active"), 1);
}

TEST_F(SchedulerTest, ReleasedJobIsRequeuedAtOnceWithoutUsingAnAttempt) {
  auto job = scheduler_->Submit("t", Spec());
  auto lease = Lease(worker_);
  ASSERT_TRUE(lease.has_job());
  v1::FailJobRequest release;
  release.set_job_id(job->id());
  release.set_lease_id(lease.lease_id());
  release.set_release(true);
  release.set_reason("worker shutting down at layer 3 of 8");
  QAAS_ASSERT_OK(scheduler_->FailJob(release));
  auto queued = scheduler_->Get("t", job->id());
  EXPECT_EQ(queued->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(queued->attempt(), 0);
  EXPECT_TRUE(queued->worker_id().empty());
  EXPECT_NE(queued->progress().step().find("worker shutting down"), std::string::npos) << queued->progress().step();
  EXPECT_EQ(Value(registry_, "qaas_lease_releases_total"), 1);
  EXPECT_EQ(Value(registry_, "qaas_jobs_queued"), 1);
  QAAS_EXPECT_CODE(scheduler_->FailJob(release), kFailedPrecondition);  // the lease is gone
  // Releases never exhaust max_attempts (2 here): the job still runs.
  for (int i = 0; i < 3; ++i) {
    auto again = Lease(worker_);
    ASSERT_TRUE(again.has_job());
    EXPECT_EQ(again.job().attempt(), 1);
    release.set_lease_id(again.lease_id());
    QAAS_ASSERT_OK(scheduler_->FailJob(release));
  }
  // A job whose cancel was asked for ends CANCELLED instead of going back.
  auto last = Lease(worker_);
  QAAS_ASSERT_OK(scheduler_->Cancel("t", job->id(), ""));
  release.set_lease_id(last.lease_id());
  QAAS_ASSERT_OK(scheduler_->FailJob(release));
  EXPECT_EQ(scheduler_->Get("t", job->id())->state(), v1::JOB_STATE_CANCELLED);
}

}  // namespace
// An explicit output cannot clobber: not the job's inputs, not the server's
// store (another job's prefix), not a queued job's output, not a non-empty
// location unless overwrite. (Each was accepted once.)
TEST_F(SchedulerTest, OutputsThatWouldClobberAreRefusedAtSubmit) {
  auto refused = [&](const v1::JobSpec& spec, const std::string& needle) {
    auto job = scheduler_->Submit("t", spec);
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument) << job.status();
    EXPECT_NE(job.status().message().find(needle), absl::string_view::npos) << job.status();
  };
  v1::JobSpec s = Spec();
  s.set_output(s.model() + "/artifact-parent/..");  // the model directory itself
  refused(s, "overlaps the model");
  s.set_output("file://" + dir_.path());  // holds the model
  refused(s, "overlaps the model");
  s.set_output("file://" + dir_.path() + "/out/jobs/j-someone-else");
  refused(s, "lies in the server's own store");
  s.set_output("file://" + dir_.path() + "/results/a");
  auto first = scheduler_->Submit("t", s);
  ASSERT_TRUE(first.ok()) << first.status();
  s.set_output("file://" + dir_.path() + "/results/a/sub");
  refused(s, "overlaps the output of job " + first->id());
  // A finished job's output holds its files: refused unless overwrite.
  std::filesystem::create_directories(dir_.path() + "/done/artifact");
  WriteLocalFile(dir_.path() + "/done/artifact/config.json", "{}");
  s.set_output("file://" + dir_.path() + "/done");
  refused(s, "already holds 1 objects (artifact/config.json");
  s.set_overwrite(true);
  EXPECT_TRUE(scheduler_->Submit("t", s).ok());
}

// Submits racing to one empty output: exactly one is accepted (the check and
// the insert are one step).
TEST_F(SchedulerTest, SubmitsRacingToOneOutputAcceptOnlyOne) {
  v1::JobSpec s = Spec();
  s.set_output("file://" + dir_.path() + "/results/raced");
  constexpr int kSubmits = 8;
  std::vector<absl::Status> results(kSubmits);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSubmits; ++i) {
    threads.emplace_back([&, i] { results[i] = scheduler_->Submit("t", s).status(); });
  }
  for (auto& t : threads) t.join();
  int accepted = 0;
  for (const absl::Status& st : results) {
    if (st.ok()) {
      ++accepted;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
      EXPECT_NE(st.message().find("overlaps the output of job"), absl::string_view::npos) << st;
    }
  }
  EXPECT_EQ(accepted, 1);
}

TEST_F(SchedulerTest, AnIdempotencyKeyIsBoundToItsSpec) {
  v1::JobSpec s = Spec();
  s.set_idempotency_key("k1");
  auto first = scheduler_->Submit("t", s);
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = scheduler_->Submit("t", s);  // a retry: the same job
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), first->id());
  s.set_priority(7);
  auto other = scheduler_->Submit("t", s);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kAlreadyExists) << other.status();
  EXPECT_NE(other.status().message().find(first->id()), absl::string_view::npos) << other.status();
}

}  // namespace qaas::server
