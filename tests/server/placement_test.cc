#include "server/placement.h"

#include <prometheus/registry.h>

#include <deque>
#include <filesystem>

#include "gtest/gtest.h"
#include "server/scheduler.h"
#include "server/spec_validation.h"
#include "server/sqlite_job_store.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using qaas::testing::ScopedTempDir;
using qaas::testing::WriteLocalFile;

constexpr uint64_t kGiB = 1ull << 30;

v1::Job MakeJob(const std::string& id, const std::string& tenant, int64_t created, int priority = 0) {
  v1::Job j;
  j.set_id(id);
  j.set_tenant(tenant);
  j.set_create_time_ms(created);
  j.mutable_spec()->set_priority(priority);
  j.set_state(v1::JOB_STATE_QUEUED);
  return j;
}

v1::WorkerCapabilities Cpu(uint64_t host = 64 * kGiB) {
  v1::WorkerCapabilities w;
  w.add_devices("cpu");
  w.set_host_memory_bytes(host);
  return w;
}

v1::WorkerCapabilities Gpu(uint64_t gpu) {
  v1::WorkerCapabilities w;
  w.add_devices("cuda");
  w.set_gpu_memory_bytes(gpu);
  w.set_host_memory_bytes(128 * kGiB);
  return w;
}

PlacementInput Input(const std::vector<v1::Job>& jobs, v1::WorkerCapabilities worker = Cpu()) {
  PlacementInput in;
  for (const auto& j : jobs) in.queued.push_back(&j);
  in.worker = worker;
  in.live_workers = {worker};
  in.now_ms = 1000;
  return in;
}

std::string Assigned(const PlacementInput& in, const PlacementPolicy& policy = {}) {
  const int i = Place(policy, in).assigned;
  return i < 0 ? "" : in.queued[i]->id();
}

TEST(Placement, WithinATenantPriorityThenAge) {
  std::vector<v1::Job> jobs = {MakeJob("old-low", "a", 1), MakeJob("new-high", "a", 5, 9),
                               MakeJob("old-high", "a", 2, 9)};
  EXPECT_EQ(Assigned(Input(jobs)), "old-high");
}

TEST(Placement, TheTenantRunningFewerJobsGoesFirstWhateverItsPriority) {
  std::vector<v1::Job> jobs = {MakeJob("a1", "a", 1, 100), MakeJob("b1", "b", 9, 0)};
  PlacementInput in = Input(jobs);
  in.running_by_tenant = {{"a", 2}, {"b", 1}};
  EXPECT_EQ(Assigned(in), "b1");
  in.running_by_tenant = {{"a", 1}, {"b", 1}};
  EXPECT_EQ(Assigned(in), "a1");  // tie, neither served yet: queue order
  in.last_served = {{"a", 7}, {"b", 3}};
  EXPECT_EQ(Assigned(in), "b1");  // tie: b was served less recently
}

// One worker running one job at a time: tenant a queued 50 jobs before b
// submitted 5. b's jobs are served every other turn, not after a's 50.
TEST(Placement, NoTenantStarvesAnotherEvenOnOneWorker) {
  std::vector<v1::Job> jobs;
  for (int i = 0; i < 50; ++i) jobs.push_back(MakeJob("a" + std::to_string(i), "a", i));
  for (int i = 0; i < 5; ++i) jobs.push_back(MakeJob("b" + std::to_string(i), "b", 100 + i));
  std::vector<std::string> order;
  std::map<std::string, int64_t> last;
  for (int turn = 0; turn < 12; ++turn) {
    PlacementInput in = Input(jobs);
    in.last_served = last;
    const int i = Place({}, in).assigned;
    ASSERT_GE(i, 0);
    order.push_back(jobs[i].id());
    last[jobs[i].tenant()] = turn + 1;
    jobs.erase(jobs.begin() + i);  // ran and finished
  }
  EXPECT_EQ(order, (std::vector<std::string>{"a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4", "a5", "a6"}));
}

TEST(Placement, ATenantAtItsLimitWaitsAndOthersProceed) {
  std::vector<v1::Job> jobs = {MakeJob("a1", "a", 1), MakeJob("b1", "b", 2)};
  PlacementPolicy policy;
  policy.max_running_per_tenant = 2;
  policy.tenant_max_running = {{"b", 1}};
  PlacementInput in = Input(jobs);
  in.running_by_tenant = {{"a", 2}, {"b", 0}};
  EXPECT_EQ(Assigned(in, policy), "b1");
  in.running_by_tenant = {{"a", 2}, {"b", 1}};
  EXPECT_EQ(Assigned(in, policy), "");
  const Decision d = Decide(policy, in, jobs[1]);
  EXPECT_EQ(d.verdict, Verdict::kRetryLater);
  EXPECT_EQ(d.reason, "tenant b runs 1 jobs (its limit)");
  policy.tenant_max_running["a"] = 0;  // 0 = no limit for a
  EXPECT_EQ(Assigned(in, policy), "a1");
}

TEST(Placement, MemoryAndDeviceFit) {
  v1::Job big = MakeJob("big", "a", 1);
  big.set_memory_estimate_bytes(30 * kGiB);
  EXPECT_EQ(Fit(big, Gpu(80 * kGiB)).verdict, Verdict::kAssign);
  const Decision small = Fit(big, Gpu(24 * kGiB));
  EXPECT_EQ(small.verdict, Verdict::kInfeasible);
  EXPECT_EQ(small.reason, "needs about 30.0 GiB of cuda memory; the worker has 24.0 GiB");
  EXPECT_EQ(Fit(big, Cpu(16 * kGiB)).verdict, Verdict::kInfeasible);  // host memory for a cpu worker
  EXPECT_EQ(Fit(big, Cpu(0)).verdict, Verdict::kAssign);              // unknown capacity: try
  // An explicit requirement overrides the estimate.
  big.mutable_spec()->mutable_resources()->set_min_gpu_memory_bytes(10 * kGiB);
  EXPECT_EQ(Fit(big, Gpu(24 * kGiB)).verdict, Verdict::kAssign);
  v1::Job cuda = MakeJob("cuda", "a", 1);
  cuda.mutable_spec()->mutable_resources()->set_device("cuda");
  EXPECT_EQ(Fit(cuda, Cpu()).reason, "needs device cuda; the worker has cpu");
}

TEST(Placement, AJobNoLiveWorkerFitsIsInfeasibleAfterTheGracePeriod) {
  std::vector<v1::Job> jobs = {MakeJob("huge", "a", 0), MakeJob("ok", "a", 5)};
  jobs[0].set_memory_estimate_bytes(200 * kGiB);
  PlacementPolicy policy;
  policy.infeasible_after_ms = 60'000;
  PlacementInput in = Input(jobs, Gpu(80 * kGiB));
  in.now_ms = 59'999;
  PlacementResult r = Place(policy, in);
  EXPECT_EQ(jobs[r.assigned].id(), "ok");  // the big job does not block the queue
  EXPECT_TRUE(r.infeasible.empty());       // the cluster may still grow a bigger worker
  in.now_ms = 60'000;
  r = Place(policy, in);
  ASSERT_EQ(r.infeasible.size(), 1u);
  EXPECT_EQ(r.infeasible[0].first, 0);
  EXPECT_EQ(r.infeasible[0].second,
            "infeasible: needs about 200.0 GiB of cuda memory; the worker has 80.0 GiB (none of the 1 live workers "
            "can run it after 60 s)");
  // Another live worker that fits: the job waits for it instead.
  in.live_workers.push_back(Gpu(256 * kGiB));
  EXPECT_TRUE(Place(policy, in).infeasible.empty());
  // No live worker at all (scaled to zero): never infeasible.
  in.live_workers.clear();
  EXPECT_TRUE(Place(policy, in).infeasible.empty());
}

TEST(MemoryEstimate, FollowsTheStreamsThePipelineKeeps) {
  MemoryEstimateInput llama7b;
  llama7b.hidden_size = 4096;
  llama7b.intermediate_size = 11008;
  llama7b.vocab_size = 32000;
  llama7b.calibration_tokens = 128 * 2048;
  const uint64_t base = EstimatePipelineMemory(llama7b);
  // 128 x 2048 calibration tokens of 4096 floats, twice, are 8 GiB alone.
  EXPECT_GT(base, 8 * kGiB);
  EXPECT_LT(base, 16 * kGiB);
  MemoryEstimateInput omni = llama7b;
  omni.omniquant = true;  // one more calibration stream
  EXPECT_NEAR(double(EstimatePipelineMemory(omni) - base), 1.25 * 128 * 2048 * 4096 * 4, 1e3);
  MemoryEstimateInput eval = llama7b;
  eval.evaluation_tokens = 300'000;
  eval.evaluation_seq_len = 2048;
  EXPECT_GT(EstimatePipelineMemory(eval), base + 2 * 300'000ull * 4096 * 4);
  // Mixtral-8x7B's layer: 8 experts of 14336 (weights 8x one MLP's), their
  // Hessians one expert at a time.
  MemoryEstimateInput mixtral = llama7b;
  mixtral.intermediate_size = 14336;
  MemoryEstimateInput dense = mixtral;
  mixtral.num_experts = 8;
  mixtral.expert_intermediate_size = 14336;
  EXPECT_NEAR(double(EstimatePipelineMemory(mixtral) - EstimatePipelineMemory(dense)),
              1.25 * 7 * 3 * 4096.0 * 14336 * 4, 1e3);
}

TEST(MemoryEstimate, SubmitEstimatesFromTheModelConfig) {
  ScopedTempDir dir;
  std::filesystem::copy(std::string(QAAS_SOURCE_DIR) + "/tests/data/tiny-opt", dir.path() + "/m",
                        std::filesystem::copy_options::recursive);
  WriteLocalFile(dir.path() + "/eval.txt", std::string(4000, 'x'));
  v1::JobSpec spec;
  spec.set_model("file://" + dir.path() + "/m");
  spec.mutable_calibration()->set_dataset("file://" + dir.path() + "/eval.txt");
  spec.mutable_calibration()->set_num_samples(4);
  spec.mutable_calibration()->set_seq_len(64);
  const uint64_t calib_only = EstimateJobMemory(spec, {dir.path()});
  EXPECT_GT(calib_only, 0u);
  auto* e = spec.add_evaluation();
  e->set_dataset("file://" + dir.path() + "/eval.txt");
  e->set_seq_len(64);
  EXPECT_GT(EstimateJobMemory(spec, {dir.path()}), calib_only);
  spec.set_model("file://" + dir.path() + "/missing");
  EXPECT_EQ(EstimateJobMemory(spec, {dir.path()}), 0u);  // unknown: placed anywhere; the worker reports the error
  spec.set_model("file://" + dir.path() + "/m");
  EXPECT_EQ(EstimateJobMemory(spec, {dir.path() + "/elsewhere"}), 0u);  // outside the roots: not read
}

// Through the scheduler and its store.
class SchedulerPlacementTest : public ::testing::Test {
 protected:
  void Start(PlacementPolicy policy) {
    std::filesystem::create_directories(dir_.path() + "/model");
    WriteLocalFile(dir_.path() + "/model/config.json", ::qaas::testing::kTestModelConfig);
    auto store = SqliteJobStore::Open(dir_.path() + "/jobs.db");
    ASSERT_TRUE(store.ok());
    metrics_ = std::make_unique<Metrics>(registry_);
    SchedulerOptions o;
    o.lease_duration_ms = 60'000;
    o.validation.file_roots = {dir_.path()};
    o.default_output_uri = "file://" + dir_.path() + "/out";
    o.placement = policy;
    o.now_ms = [this] { return now_; };
    scheduler_ = std::make_unique<Scheduler>(*std::move(store), o, metrics_.get());
  }
  std::string Register(v1::WorkerCapabilities caps) {
    v1::RegisterWorkerRequest r;
    r.set_name("w");
    *r.mutable_capabilities() = caps;
    auto w = scheduler_->RegisterWorker(r);
    EXPECT_TRUE(w.ok());
    return w->worker_id();
  }
  std::string Submit(const std::string& tenant, const std::string& device = "") {
    v1::JobSpec s;
    s.set_model("file://" + dir_.path() + "/model");
    s.set_preset("rtn");
    s.mutable_scheme()->set_shorthand("W4A16");
    s.mutable_resources()->set_device(device);
    auto job = scheduler_->Submit(tenant, s);
    EXPECT_TRUE(job.ok()) << job.status();
    ++now_;
    return job.ok() ? job->id() : "";
  }
  // The id of the job leased, "" for none.
  std::pair<std::string, std::string> Lease(const std::string& worker) {
    v1::LeaseJobRequest r;
    r.set_worker_id(worker);
    auto resp = scheduler_->LeaseJob(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return {resp->job().id(), resp->lease_id()};
  }

  ScopedTempDir dir_;
  prometheus::Registry registry_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Scheduler> scheduler_;
  int64_t now_ = 1'000'000;
};

TEST_F(SchedulerPlacementTest, TenantsShareWorkersFairlyWithinTheirLimits) {
  PlacementPolicy policy;
  policy.tenant_max_running = {{"a", 2}};
  Start(policy);
  const std::string w = Register(Cpu());
  std::vector<std::string> a, b;
  for (int i = 0; i < 5; ++i) a.push_back(Submit("a"));
  for (int i = 0; i < 2; ++i) b.push_back(Submit("b"));
  const auto a0 = Lease(w);
  EXPECT_EQ(a0.first, a[0]);
  EXPECT_EQ(Lease(w).first, b[0]);  // a runs one, b none
  EXPECT_EQ(Lease(w).first, a[1]);
  EXPECT_EQ(Lease(w).first, b[1]);
  EXPECT_EQ(Lease(w).first, "");    // a is at its limit of 2, b has nothing queued
  v1::CompleteJobRequest done;
  done.set_job_id(a0.first);
  done.set_lease_id(a0.second);
  ASSERT_TRUE(scheduler_->CompleteJob(done).ok());
  EXPECT_EQ(Lease(w).first, a[2]);  // a slot of a's freed
  EXPECT_EQ(Lease(w).first, "");
}

TEST_F(SchedulerPlacementTest, AJobNoWorkerCanRunFailsWithTheReason) {
  PlacementPolicy policy;
  policy.infeasible_after_ms = 30'000;
  Start(policy);
  const std::string cpu = Register(Cpu());
  const std::string gpu_job = Submit("a", "cuda");
  const std::string cpu_job = Submit("a");
  EXPECT_EQ(Lease(cpu).first, cpu_job);
  EXPECT_EQ(Lease(cpu).first, "");
  auto waiting = scheduler_->Get("a", gpu_job);
  ASSERT_TRUE(waiting.ok());
  EXPECT_EQ(waiting->state(), v1::JOB_STATE_QUEUED);
  now_ += 30'000;
  EXPECT_EQ(Lease(cpu).first, "");
  auto failed = scheduler_->Get("a", gpu_job);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->error(),
            "infeasible: needs device cuda; the worker has cpu (none of the 1 live workers can run it after 30 s)");
}

TEST_F(SchedulerPlacementTest, AFittingWorkerKeepsTheJobAlive) {
  PlacementPolicy policy;
  policy.infeasible_after_ms = 30'000;
  Start(policy);
  const std::string cpu = Register(Cpu());
  const std::string gpu = Register(Gpu(80 * kGiB));
  const std::string gpu_job = Submit("a", "cuda");
  now_ += 31'000;                   // past the grace period, within the gpu worker's lease
  EXPECT_EQ(Lease(cpu).first, "");  // the gpu worker is live: wait for it
  auto job = scheduler_->Get("a", gpu_job);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(Lease(gpu).first, gpu_job);
}

}  // namespace
}  // namespace qaas::server
